/*
 * One NBD connection: a non-blocking socket served by one poller on one keel thread.
 *
 * The same state machine runs the fixed-newstyle handshake and the transmission
 * phase, so the handshake never blocks a reactor and the kernel frontend can start a
 * connection directly in transmission (nbd_conn_create_transmission).
 *
 * Why it is shaped like this: on a small machine the NBD client and keel share the
 * CPUs, so the server's CPU cost per request decides throughput. Each poll reads as
 * many queued requests as fit into one large receive buffer with one recv(), submits
 * them all, and sends every reply that completed with one sendmsg() (header and read
 * data as iovecs, no copy). Requests come from a preallocated per-connection array;
 * payload buffers from a cache per thread by power-of-two size class (nbd_buf_cache.c),
 * so the steady state does not allocate.
 *
 * Every client is bounded in memory and time (nbd_limits.c): payload bytes come out of a
 * daemon-wide budget (over it, the connection stops reading requests until buffers
 * free), and one deadline on the connection's own poller ends a handshake that takes
 * too long and a client that stops reading replies or sending a payload. The deadline is
 * armed only while something waits on the client: an idle connection has no timer.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "keel/bdev.h"
#include "keel/log.h"
#include "keel/reactor.h"
#include "nbd/nbd_internal.h"
#include "nbd/nbd_proto.h"

/* Requests a connection keeps in flight; the kernel sends up to 128, nbdcopy 64. */
#define NBD_CONN_MAX_REQS 256u
/* Big enough for 32 queued 4 KiB writes with their headers in one recv(). */
#define NBD_CONN_RBUF_SIZE (256u * 1024u)
#define NBD_CONN_IOV_MAX 1024u
/* Payload tails at least this long go straight from the socket into the buffer. */
#define NBD_DIRECT_RECV_MIN (16u * 1024u)
/* Bytes read into the receive buffer behind a direct payload receive. */
#define NBD_DIRECT_RECV_TAIL 4096u
/* recv() calls per poll at most, so one busy connection cannot starve the thread. */
#define NBD_RX_ROUNDS 4
/* Stop parsing options while this many handshake reply bytes wait to be sent. */
#define NBD_HS_WBUF_HIGH (64u * 1024u)
/*
 * Reply bytes one NBD_OPT_INFO/GO may produce. Each info type is answered once, so
 * the replies are small by construction; the cap also bounds the description, the
 * one string whose length is not fixed by the protocol.
 */
#define NBD_INFO_REPLY_MAX 4096u
/* Longest NAME/DESCRIPTION string sent: all four info replies then fit the cap. */
#define NBD_INFO_STRING_MAX 2048u

/* A connection waiting for the buffer budget looks again this often (microseconds). */
#define NBD_BUDGET_RETRY_US 1000u
/*
 * Payload bytes a connection may hold at once. Without a cap, 256 requests of 32 MiB
 * would be 8 GiB of buffers for one client; the kernel and nbdcopy keep about 16 MiB in
 * flight. Past the cap, parsing pauses until replies free buffers.
 */
#define NBD_CONN_MAX_BUF_BYTES (64u << 20)

enum nbd_phase {
	NBD_PHASE_HANDSHAKE,
	NBD_PHASE_TRANSMISSION,
};

enum nbd_hs_state {
	NBD_HS_CFLAGS,
	NBD_HS_OPT,
	NBD_HS_OPT_SKIP,
};

enum nbd_rx_state {
	NBD_RX_HEADER,
	NBD_RX_PAYLOAD,
	NBD_RX_DISCARD,
};

/* What a request does against the bdev; FUA emulation turns trims into flushes. */
enum nbd_op {
	NBD_OP_NONE,
	NBD_OP_READ,
	NBD_OP_WRITE,
	NBD_OP_FLUSH,
	NBD_OP_UNMAP,
	NBD_OP_WRITE_ZEROES,
};

struct nbd_req {
	struct nbd_conn *conn;
	TAILQ_ENTRY(nbd_req) link;
	struct nbd_simple_reply reply; /* wire bytes */
	uint64_t offset;
	uint32_t len;
	uint32_t got;   /* payload bytes received so far */
	uint16_t type;  /* NBD_CMD_* */
	uint16_t flags; /* NBD_CMD_FLAG_* */
	enum nbd_op op;
	bool flush_after; /* FUA on trim / write_zeroes: flush the range after it */
	bool in_bdev;
	int buf_class;   /* -1: allocated for this request only */
	uint32_t budget; /* bytes of the buffer budget this request holds */
	void *buf;
	struct iovec iov;
};

TAILQ_HEAD(nbd_req_list, nbd_req);

struct nbd_conn {
	int fd;
	struct keel_poller *poller;
	uint32_t events;
	const struct nbd_export_info *exp;
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	uint64_t size;
	uint32_t block_size;
	size_t buf_align;
	uint16_t tflags;
	char label[300];
	nbd_conn_done_fn done_fn;
	void *done_ctx;

	enum nbd_phase phase;
	enum nbd_hs_state hs;
	bool no_zeroes;
	uint32_t skip_option;
	uint32_t skip_remaining;

	/* receive side */
	uint8_t *rbuf;
	size_t rpos;
	size_t rlen;
	enum nbd_rx_state rx;
	struct nbd_req *rx_req;
	uint64_t discard_remaining;
	bool rx_stop;    /* no more reading (DISC, EOF, ABORT, error) */
	bool rx_stalled; /* no free request: wait for one */

	/* send side */
	uint8_t *wbuf; /* handshake bytes */
	size_t wlen;
	size_t wsent;
	size_t wcap;
	struct nbd_req_list replies;
	size_t reply_sent; /* bytes of the first reply already sent */
	bool tx_blocked;   /* last send hit EAGAIN */
	bool tx_dead;      /* peer gone or hard close: replies are dropped */
	bool close_after_flush;

	struct nbd_req_list nomem;
	struct nbd_req *reqs;
	struct nbd_req **free_reqs;
	uint32_t nfree;
	uint32_t in_bdev;
	uint64_t buf_bytes; /* payload bytes held by requests */
	uint32_t reserved;  /* budget taken for the request being parsed */
	bool budget_wait;   /* the next request waits for the buffer budget */
	bool cache_ref;     /* holds a reference on this thread's buffer cache */

	bool closing;
	bool shut;
	uint64_t created_ns;
	/* deadlines: when the client started keeping us waiting (0: it does not) */
	uint64_t tx_wait_since_ns; /* replies it does not read */
	uint64_t rx_wait_since_ns; /* a write payload it does not send */
	uint64_t timer_due_ns;     /* when the poller's timer fires (0: not armed) */
	char *refuse;              /* refuse the first option with this message */

	struct iovec iov[NBD_CONN_IOV_MAX];
};

static int nbd_conn_poll(void *arg);
static void nbd_req_submit(struct nbd_req *req);

/* ------------------------------------------------------------------------------ */
/* Helpers                                                                         */
/* ------------------------------------------------------------------------------ */

uint16_t nbd_tflags_for_bdev(struct keel_bdev *bdev, bool read_only)
{
	/* FLUSH is always advertised: with no write cache the core completes it at once,
	 * and clients that only trust FLUSH (qemu, the kernel) then still work. */
	uint16_t flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_WRITE_ZEROES;

	if (keel_bdev_has_write_cache(bdev)) {
		flags |= NBD_FLAG_SEND_FUA;
	}
	if (keel_bdev_io_type_supported(bdev, KEEL_BDEV_IO_UNMAP)) {
		flags |= NBD_FLAG_SEND_TRIM;
	}
	if (keel_bdev_is_multi_conn_safe(bdev)) {
		flags |= NBD_FLAG_CAN_MULTI_CONN;
	}
	if (read_only) {
		flags |= NBD_FLAG_READ_ONLY;
	}
	return flags;
}

/* The NBD protocol has its own small errno set; anything unexpected is EIO. */
static uint32_t nbd_wire_errno(int status)
{
	switch (-status) {
	case 0:
		return 0;
	case EPERM:
	case EBADF:
	case EROFS:
	case EACCES:
		return NBD_EPERM;
	case ENOMEM:
		return NBD_ENOMEM;
	case EINVAL:
	case ENOTSUP:
		return NBD_EINVAL;
	case ENOSPC:
	case EDQUOT:
	case EFBIG:
		return NBD_ENOSPC;
	case EOVERFLOW:
		return NBD_EOVERFLOW;
	case ENODEV:
	case ESHUTDOWN:
		return NBD_ESHUTDOWN;
	default:
		return NBD_EIO;
	}
}

static int nbd_req_alloc_buf(struct nbd_req *req)
{
	struct nbd_conn *conn = req->conn;

	req->buf = nbd_buf_get(req->len, conn->buf_align, &req->buf_class);
	if (req->buf == NULL) {
		return -ENOMEM;
	}
	conn->buf_bytes += req->len;
	req->budget = conn->reserved; /* taken when its header was parsed */
	conn->reserved = 0;
	return 0;
}

static void nbd_req_free_buf(struct nbd_req *req)
{
	if (req->buf != NULL) {
		nbd_buf_put(req->buf, req->buf_class);
		req->buf = NULL;
		req->conn->buf_bytes -= req->len;
	}
	if (req->budget != 0) {
		nbd_budget_release(req->budget);
		req->budget = 0;
	}
}

static struct nbd_req *nbd_req_get(struct nbd_conn *conn)
{
	struct nbd_req *req;

	if (conn->nfree == 0) {
		return NULL;
	}
	req = conn->free_reqs[--conn->nfree];
	req->got = 0;
	req->buf = NULL;
	req->buf_class = -1;
	req->budget = 0;
	req->op = NBD_OP_NONE;
	req->flush_after = false;
	req->in_bdev = false;
	req->reply.magic = htobe32(NBD_SIMPLE_REPLY_MAGIC);
	req->reply.error = 0;
	return req;
}

static void nbd_req_put(struct nbd_req *req)
{
	struct nbd_conn *conn = req->conn;

	nbd_req_free_buf(req);
	conn->free_reqs[conn->nfree++] = req;
	conn->rx_stalled = false;
}

static size_t nbd_req_reply_len(const struct nbd_req *req)
{
	size_t len = sizeof(req->reply);

	if (req->type == NBD_CMD_READ && req->reply.error == 0) {
		len += req->len;
	}
	return len;
}

/* Queue the reply of \p req with \p nbd_err (a wire errno). */
static void nbd_req_reply(struct nbd_req *req, uint32_t nbd_err)
{
	struct nbd_conn *conn = req->conn;

	req->reply.error = htobe32(nbd_err);
	if (conn->tx_dead) {
		nbd_req_put(req);
		return;
	}
	TAILQ_INSERT_TAIL(&conn->replies, req, link);
}

/* ------------------------------------------------------------------------------ */
/* Closing                                                                         */
/* ------------------------------------------------------------------------------ */

static void nbd_conn_update_events(struct nbd_conn *conn)
{
	uint32_t events = 0;

	if (conn->poller == NULL) {
		return;
	}
	if (!conn->rx_stop && !conn->rx_stalled) {
		events |= EPOLLIN;
	}
	if (conn->tx_blocked && !conn->tx_dead) {
		events |= EPOLLOUT;
	}
	if (events != conn->events) {
		if (keel_poller_modify_fd(conn->poller, events) == 0) {
			conn->events = events;
		}
	}
}

/* Soft close: stop reading, deliver the replies of requests in flight, then close. */
static void nbd_conn_close_soft(struct nbd_conn *conn)
{
	if (conn->closing) {
		return;
	}
	conn->closing = true;
	conn->rx_stop = true;
}

/* Hard close: nothing more is read or sent; requests in flight still finish. */
static void nbd_conn_abort(struct nbd_conn *conn)
{
	struct nbd_req *req;

	nbd_conn_close_soft(conn);
	conn->tx_dead = true;
	while ((req = TAILQ_FIRST(&conn->replies)) != NULL) {
		TAILQ_REMOVE(&conn->replies, req, link);
		nbd_req_put(req);
	}
	conn->reply_sent = 0;
	if (!conn->shut) {
		shutdown(conn->fd, SHUT_RDWR);
		conn->shut = true;
	}
}

void nbd_conn_close(struct nbd_conn *conn)
{
	KEEL_INFOLOG("%s: closing on request", conn->label);
	nbd_conn_abort(conn);
	keel_poller_wake(conn->poller); /* the poller finishes the close */
}

bool nbd_conn_in_transmission(const struct nbd_conn *conn)
{
	return conn->phase == NBD_PHASE_TRANSMISSION;
}

static void nbd_conn_free(struct nbd_conn *conn)
{
	keel_poller_unregister(&conn->poller);
	if (conn->fd >= 0) {
		close(conn->fd);
	}
	if (conn->ch != NULL) {
		keel_put_io_channel(conn->ch);
	}
	if (conn->reqs != NULL) {
		for (uint32_t i = 0; i < NBD_CONN_MAX_REQS; i++) {
			nbd_req_free_buf(&conn->reqs[i]);
		}
	}
	if (conn->reserved != 0) {
		nbd_budget_release(conn->reserved);
	}
	if (conn->cache_ref) {
		nbd_buf_cache_unref();
	}
	free(conn->refuse);
	free(conn->reqs);
	free(conn->free_reqs);
	free(conn->rbuf);
	free(conn->wbuf);
	free(conn);
}

static bool nbd_conn_try_finish(struct nbd_conn *conn)
{
	nbd_conn_done_fn done_fn;
	void *done_ctx;
	struct nbd_req *req;

	if (!conn->closing || conn->in_bdev > 0) {
		return false;
	}
	/* A clean close (DISC, EOF) still delivers the replies of finished requests. */
	if (!conn->tx_dead && (conn->wsent < conn->wlen || !TAILQ_EMPTY(&conn->replies))) {
		return false;
	}
	while ((req = TAILQ_FIRST(&conn->nomem)) != NULL) {
		TAILQ_REMOVE(&conn->nomem, req, link);
		nbd_req_put(req);
	}
	KEEL_INFOLOG("%s: closed", conn->label);
	done_fn = conn->done_fn;
	done_ctx = conn->done_ctx;
	nbd_conn_free(conn);
	done_fn(done_ctx, conn);
	return true;
}

/* ------------------------------------------------------------------------------ */
/* Sending                                                                         */
/* ------------------------------------------------------------------------------ */

static int nbd_wbuf_reserve(struct nbd_conn *conn, size_t more)
{
	size_t need = conn->wlen + more;
	uint8_t *nbuf;
	size_t ncap;

	if (conn->wsent > 0 && conn->wsent == conn->wlen) {
		conn->wsent = conn->wlen = 0;
		need = more;
	}
	if (need <= conn->wcap) {
		return 0;
	}
	ncap = conn->wcap ? conn->wcap : 512;
	while (ncap < need) {
		ncap *= 2;
	}
	nbuf = realloc(conn->wbuf, ncap);
	if (nbuf == NULL) {
		return -ENOMEM;
	}
	conn->wbuf = nbuf;
	conn->wcap = ncap;
	return 0;
}

static int nbd_wbuf_append(struct nbd_conn *conn, const void *data, size_t len)
{
	int rc = nbd_wbuf_reserve(conn, len);

	if (rc != 0) {
		return rc;
	}
	if (len > 0) {
		memcpy(conn->wbuf + conn->wlen, data, len);
	}
	conn->wlen += len;
	return 0;
}

static int nbd_send_opt_reply(struct nbd_conn *conn, uint32_t option, uint32_t type,
			      const void *data, size_t len)
{
	struct nbd_opt_reply rep = {
		.magic = htobe64(NBD_REP_MAGIC),
		.option = htobe32(option),
		.type = htobe32(type),
		.len = htobe32((uint32_t)len),
	};
	int rc;

	rc = nbd_wbuf_append(conn, &rep, sizeof(rep));
	if (rc == 0) {
		rc = nbd_wbuf_append(conn, data, len);
	}
	return rc;
}

static int nbd_send_opt_error(struct nbd_conn *conn, uint32_t option, uint32_t type,
			      const char *msg)
{
	KEEL_INFOLOG("%s: option %u refused: %s", conn->label, option, msg);
	return nbd_send_opt_reply(conn, option, type, msg, strlen(msg));
}

static int nbd_conn_tx(struct nbd_conn *conn)
{
	int work = 0;

	if (conn->tx_dead) {
		return 0;
	}
	conn->tx_blocked = false;
	while (conn->wsent < conn->wlen) {
		ssize_t n = send(conn->fd, conn->wbuf + conn->wsent, conn->wlen - conn->wsent,
				 MSG_DONTWAIT | MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR) {
				continue;
			}
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				conn->tx_blocked = true;
				return work;
			}
			KEEL_INFOLOG("%s: send failed: %s", conn->label, strerror(errno));
			nbd_conn_abort(conn);
			return 1;
		}
		conn->wsent += (size_t)n;
		conn->tx_wait_since_ns = 0;
		work = 1;
	}
	if (conn->close_after_flush) {
		nbd_conn_close_soft(conn);
		return work;
	}

	while (!TAILQ_EMPTY(&conn->replies)) {
		struct nbd_req *req;
		uint32_t iovcnt = 0;
		size_t total = 0;
		size_t skip = conn->reply_sent;
		struct msghdr msg = {0};
		ssize_t n;

		TAILQ_FOREACH(req, &conn->replies, link) {
			if (iovcnt + 2 > NBD_CONN_IOV_MAX) {
				break;
			}
			if (skip < sizeof(req->reply)) {
				conn->iov[iovcnt].iov_base = (uint8_t *)&req->reply + skip;
				conn->iov[iovcnt].iov_len = sizeof(req->reply) - skip;
				total += conn->iov[iovcnt++].iov_len;
				skip = 0;
			} else {
				skip -= sizeof(req->reply);
			}
			if (req->type == NBD_CMD_READ && req->reply.error == 0 && req->len > 0) {
				conn->iov[iovcnt].iov_base = (uint8_t *)req->buf + skip;
				conn->iov[iovcnt].iov_len = req->len - skip;
				total += conn->iov[iovcnt++].iov_len;
			}
			skip = 0;
		}
		msg.msg_iov = conn->iov;
		msg.msg_iovlen = iovcnt;
		n = sendmsg(conn->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR) {
				continue;
			}
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				conn->tx_blocked = true;
				break;
			}
			KEEL_INFOLOG("%s: send failed: %s", conn->label, strerror(errno));
			nbd_conn_abort(conn);
			return 1;
		}
		work = 1;
		conn->tx_wait_since_ns = 0;
		/* Retire every reply that went out completely. */
		{
			size_t left = (size_t)n + conn->reply_sent;

			while ((req = TAILQ_FIRST(&conn->replies)) != NULL) {
				size_t rlen = nbd_req_reply_len(req);

				if (left < rlen) {
					break;
				}
				left -= rlen;
				TAILQ_REMOVE(&conn->replies, req, link);
				nbd_req_put(req);
			}
			conn->reply_sent = left;
		}
		if ((size_t)n < total) {
			conn->tx_blocked = true;
			break;
		}
	}
	return work;
}

/* ------------------------------------------------------------------------------ */
/* Transmission                                                                    */
/* ------------------------------------------------------------------------------ */

static void nbd_req_done(void *cb_arg, int status)
{
	struct nbd_req *req = cb_arg;
	struct nbd_conn *conn = req->conn;

	req->in_bdev = false;
	conn->in_bdev--;
	/* The connection's poller is parked while its socket is quiet: a completion is
	 * a reason to run (a reply to send, a retry, a read to resume, a close to end). */
	keel_poller_wake(conn->poller);
	if (status == -ENOMEM && !conn->closing) {
		TAILQ_INSERT_TAIL(&conn->nomem, req, link);
		return;
	}
	if (status == 0 && req->flush_after) {
		req->flush_after = false;
		req->op = NBD_OP_FLUSH;
		nbd_req_submit(req);
		return;
	}
	if (status != 0) {
		KEEL_DEBUGLOG("%s: cmd %u at %lu len %u failed: %s", conn->label, req->type,
			      (unsigned long)req->offset, req->len, strerror(-status));
	}
	nbd_req_reply(req, nbd_wire_errno(status));
}

static int nbd_req_do_submit(struct nbd_req *req)
{
	struct nbd_conn *conn = req->conn;

	switch (req->op) {
	case NBD_OP_READ:
		return keel_bdev_read(conn->desc, conn->ch, req->buf, req->offset, req->len,
				      nbd_req_done, req);
	case NBD_OP_WRITE:
		req->iov.iov_base = req->buf;
		req->iov.iov_len = req->len;
		return keel_bdev_writev(conn->desc, conn->ch, &req->iov, 1, req->offset, req->len,
					(req->flags & NBD_CMD_FLAG_FUA) ? KEEL_BDEV_IO_FLAG_FUA : 0,
					nbd_req_done, req);
	case NBD_OP_FLUSH:
		if (req->type == NBD_CMD_FLUSH) {
			return keel_bdev_flush(conn->desc, conn->ch, 0, conn->size, nbd_req_done,
					       req);
		}
		return keel_bdev_flush(conn->desc, conn->ch, req->offset, req->len, nbd_req_done,
				       req);
	case NBD_OP_UNMAP:
		return keel_bdev_unmap(conn->desc, conn->ch, req->offset, req->len, nbd_req_done,
				       req);
	case NBD_OP_WRITE_ZEROES:
		return keel_bdev_write_zeroes(conn->desc, conn->ch, req->offset, req->len,
					      nbd_req_done, req);
	case NBD_OP_NONE:
		break;
	}
	return -EINVAL;
}

static void nbd_req_submit(struct nbd_req *req)
{
	struct nbd_conn *conn = req->conn;
	int rc;

	if (req->op == NBD_OP_NONE) {
		nbd_req_reply(req, 0);
		return;
	}
	rc = nbd_req_do_submit(req);
	if (rc == 0) {
		req->in_bdev = true;
		conn->in_bdev++;
		return;
	}
	if (rc == -ENOMEM) {
		TAILQ_INSERT_TAIL(&conn->nomem, req, link);
		return;
	}
	nbd_req_reply(req, nbd_wire_errno(rc));
}

static int nbd_conn_retry_nomem(struct nbd_conn *conn)
{
	struct nbd_req *req;
	int work = 0;

	while ((req = TAILQ_FIRST(&conn->nomem)) != NULL) {
		int rc;

		TAILQ_REMOVE(&conn->nomem, req, link);
		rc = nbd_req_do_submit(req);
		if (rc == -ENOMEM) {
			TAILQ_INSERT_HEAD(&conn->nomem, req, link);
			break;
		}
		work = 1;
		if (rc == 0) {
			req->in_bdev = true;
			conn->in_bdev++;
		} else {
			nbd_req_reply(req, nbd_wire_errno(rc));
		}
	}
	return work;
}

static bool nbd_range_ok(const struct nbd_conn *conn, uint64_t offset, uint32_t len)
{
	return len <= conn->size && offset <= conn->size - len;
}

static bool nbd_aligned(const struct nbd_conn *conn, uint64_t offset, uint32_t len)
{
	return ((offset | len) & (conn->block_size - 1)) == 0;
}

static const char *nbd_cmd_name(uint16_t type)
{
	static const char *names[] = {"read", "write", "disc",         "flush",
				      "trim", "cache", "write_zeroes", "block_status"};

	return type < sizeof(names) / sizeof(names[0]) ? names[type] : "unknown";
}

/*
 * Validate one request. \return 0 (ok) or the wire errno to answer with.
 * Checked in the order the spec implies: command, flags, permission, size, range,
 * alignment.
 */
static uint32_t nbd_req_check(struct nbd_conn *conn, struct nbd_req *req)
{
	uint16_t allowed = NBD_CMD_FLAG_FUA;
	bool read_only = conn->tflags & NBD_FLAG_READ_ONLY;

	switch (req->type) {
	case NBD_CMD_READ:
	case NBD_CMD_WRITE:
	case NBD_CMD_FLUSH:
		break;
	case NBD_CMD_TRIM:
		if (!(conn->tflags & NBD_FLAG_SEND_TRIM)) {
			return NBD_EINVAL;
		}
		break;
	case NBD_CMD_WRITE_ZEROES:
		allowed |= NBD_CMD_FLAG_NO_HOLE;
		break;
	default:
		return NBD_EINVAL;
	}
	if (req->flags & ~allowed) {
		return NBD_EINVAL;
	}
	if (read_only && req->type != NBD_CMD_READ && req->type != NBD_CMD_FLUSH) {
		return NBD_EPERM;
	}
	if (req->type == NBD_CMD_FLUSH) {
		return 0;
	}
	if ((req->type == NBD_CMD_READ || req->type == NBD_CMD_WRITE) &&
	    req->len > NBD_MAX_PAYLOAD) {
		return NBD_EINVAL;
	}
	if (!nbd_range_ok(conn, req->offset, req->len)) {
		return (req->type == NBD_CMD_WRITE || req->type == NBD_CMD_WRITE_ZEROES)
			       ? NBD_ENOSPC
			       : NBD_EINVAL;
	}
	if (!nbd_aligned(conn, req->offset, req->len)) {
		return NBD_EINVAL;
	}
	return 0;
}

/* Handle one parsed header. Sets the receive state for a following payload. */
static void nbd_handle_request(struct nbd_conn *conn, const struct nbd_request *wire)
{
	struct nbd_req *req;
	uint32_t err;

	if (be32toh(wire->magic) != NBD_REQUEST_MAGIC) {
		KEEL_WARNLOG("%s: bad request magic 0x%08x, closing the connection", conn->label,
			     be32toh(wire->magic));
		nbd_conn_abort(conn);
		return;
	}
	req = nbd_req_get(conn);
	req->reply.cookie = wire->cookie; /* opaque: echoed byte for byte */
	req->type = be16toh(wire->type);
	req->flags = be16toh(wire->flags);
	req->offset = be64toh(wire->offset);
	req->len = be32toh(wire->len);

	if (req->type == NBD_CMD_DISC) {
		KEEL_INFOLOG("%s: client disconnects", conn->label);
		nbd_req_put(req);
		nbd_conn_close_soft(conn);
		return;
	}

	err = nbd_req_check(conn, req);
	if (req->type == NBD_CMD_WRITE) {
		if (err != 0 && req->len > NBD_MAX_DISCARD_PAYLOAD) {
			KEEL_WARNLOG("%s: write of %u bytes at %lu is beyond any sane payload, "
				     "closing the connection",
				     conn->label, req->len, (unsigned long)req->offset);
			nbd_req_put(req);
			nbd_conn_abort(conn);
			return;
		}
		if (err == 0 && req->len > 0 && nbd_req_alloc_buf(req) != 0) {
			err = NBD_ENOMEM;
		}
		if (err != 0) {
			KEEL_INFOLOG(
				"%s: write at %lu len %u refused (error %u), payload discarded",
				conn->label, (unsigned long)req->offset, req->len, err);
			req->reply.error = htobe32(err);
			if (req->len == 0) {
				nbd_req_reply(req, err);
				return;
			}
			conn->rx_req = req;
			conn->discard_remaining = req->len;
			conn->rx = NBD_RX_DISCARD;
			return;
		}
		req->op = req->len > 0 ? NBD_OP_WRITE : NBD_OP_NONE;
		if (req->len == 0) {
			nbd_req_submit(req);
			return;
		}
		conn->rx_req = req;
		conn->rx = NBD_RX_PAYLOAD;
		return;
	}
	if (err != 0) {
		KEEL_INFOLOG("%s: %s at %lu len %u flags 0x%x refused (error %u)", conn->label,
			     nbd_cmd_name(req->type), (unsigned long)req->offset, req->len,
			     req->flags, err);
		nbd_req_reply(req, err);
		return;
	}
	switch (req->type) {
	case NBD_CMD_READ:
		if (req->len > 0) {
			if (nbd_req_alloc_buf(req) != 0) {
				nbd_req_reply(req, NBD_ENOMEM);
				return;
			}
			req->op = NBD_OP_READ;
		}
		break;
	case NBD_CMD_FLUSH:
		/* A read-only export wrote nothing and holds a read-only descriptor, which
		 * the bdev layer refuses flushes on: nothing to make durable. */
		req->op = (conn->tflags & NBD_FLAG_READ_ONLY) ? NBD_OP_NONE : NBD_OP_FLUSH;
		break;
	case NBD_CMD_TRIM:
	case NBD_CMD_WRITE_ZEROES:
		if (req->len > 0) {
			/* Both with and without NO_HOLE keel asks for write_zeroes: the
			 * core guarantees the range reads back as zeroes, which is all
			 * NO_HOLE requires; whether space is freed is the module's call. */
			req->op = req->type == NBD_CMD_TRIM ? NBD_OP_UNMAP : NBD_OP_WRITE_ZEROES;
			req->flush_after = (req->flags & NBD_CMD_FLAG_FUA) &&
					   (conn->tflags & NBD_FLAG_SEND_FUA);
		}
		break;
	default:
		break;
	}
	nbd_req_submit(req);
}

/* Whether a valid-looking header will take a payload buffer (for the memory cap). */
static bool nbd_req_needs_buf(const struct nbd_request *wire)
{
	uint16_t type = be16toh(wire->type);

	return (type == NBD_CMD_READ || type == NBD_CMD_WRITE) &&
	       be32toh(wire->len) <= NBD_MAX_PAYLOAD;
}

/*
 * Payload bytes for the request whose header is next: within the connection's own cap
 * and the daemon-wide budget, or the connection stops reading (rx_stalled) until its
 * own replies free buffers or, for the budget, until a retry finds room.
 */
static bool nbd_conn_take_budget(struct nbd_conn *conn, uint32_t len)
{
	if (conn->buf_bytes > 0 && conn->buf_bytes + len > NBD_CONN_MAX_BUF_BYTES) {
		conn->rx_stalled = true;
		return false;
	}
	if (!nbd_budget_reserve(len)) {
		if (!conn->budget_wait) {
			nbd_stat_inc(NBD_STAT_BUFFER_WAITS);
			KEEL_DEBUGLOG("%s: waiting for the NBD buffer budget", conn->label);
		}
		conn->budget_wait = true;
		conn->rx_stalled = true;
		return false;
	}
	conn->budget_wait = false;
	conn->reserved = len;
	return true;
}

/* Consume what the receive buffer holds in transmission. */
static void nbd_parse_transmission(struct nbd_conn *conn)
{
	while (!conn->rx_stop) {
		size_t avail = conn->rlen - conn->rpos;

		switch (conn->rx) {
		case NBD_RX_HEADER: {
			struct nbd_request wire;

			if (avail < sizeof(wire)) {
				return;
			}
			if (conn->nfree == 0) {
				conn->rx_stalled = true;
				return;
			}
			memcpy(&wire, conn->rbuf + conn->rpos, sizeof(wire));
			if (nbd_req_needs_buf(&wire) &&
			    !nbd_conn_take_budget(conn, be32toh(wire.len))) {
				return;
			}
			conn->rpos += sizeof(wire);
			nbd_handle_request(conn, &wire);
			if (conn->reserved != 0) { /* refused, or no memory: no buffer took it */
				nbd_budget_release(conn->reserved);
				conn->reserved = 0;
			}
			break;
		}
		case NBD_RX_PAYLOAD: {
			struct nbd_req *req = conn->rx_req;
			size_t n = req->len - req->got;

			if (n > avail) {
				n = avail;
			}
			memcpy((uint8_t *)req->buf + req->got, conn->rbuf + conn->rpos, n);
			conn->rpos += n;
			req->got += (uint32_t)n;
			if (req->got < req->len) {
				return;
			}
			conn->rx_req = NULL;
			conn->rx = NBD_RX_HEADER;
			nbd_req_submit(req);
			break;
		}
		case NBD_RX_DISCARD: {
			size_t n = conn->discard_remaining < avail ? conn->discard_remaining
								   : avail;

			conn->rpos += n;
			conn->discard_remaining -= n;
			if (conn->discard_remaining > 0) {
				return;
			}
			conn->rx = NBD_RX_HEADER;
			if (conn->rx_req != NULL) {
				struct nbd_req *req = conn->rx_req;

				conn->rx_req = NULL;
				nbd_req_reply(req, be32toh(req->reply.error));
			}
			break;
		}
		}
	}
}

/* ------------------------------------------------------------------------------ */
/* Handshake                                                                       */
/* ------------------------------------------------------------------------------ */

static int nbd_conn_setup_transmission(struct nbd_conn *conn)
{
	struct keel_bdev *bdev = keel_bdev_desc_get_bdev(conn->desc);

	conn->size = keel_bdev_get_block_size(bdev) * keel_bdev_get_num_blocks(bdev);
	conn->block_size = keel_bdev_get_block_size(bdev);
	conn->buf_align = keel_bdev_get_buf_align(bdev);
	if (conn->buf_align < 4096) {
		conn->buf_align = 4096;
	}
	conn->ch = keel_bdev_get_io_channel(conn->desc);
	if (conn->ch == NULL) {
		return -ENODEV;
	}
	conn->reqs = calloc(NBD_CONN_MAX_REQS, sizeof(*conn->reqs));
	conn->free_reqs = calloc(NBD_CONN_MAX_REQS, sizeof(*conn->free_reqs));
	if (conn->reqs == NULL || conn->free_reqs == NULL) {
		goto out_put_channel;
	}
	for (uint32_t i = 0; i < NBD_CONN_MAX_REQS; i++) {
		conn->reqs[i].conn = conn;
		conn->free_reqs[NBD_CONN_MAX_REQS - 1 - i] = &conn->reqs[i];
	}
	conn->nfree = NBD_CONN_MAX_REQS;
	nbd_buf_cache_ref();
	conn->cache_ref = true;
	return 0;

out_put_channel:
	free(conn->reqs);
	free(conn->free_reqs);
	conn->reqs = NULL;
	conn->free_reqs = NULL;
	keel_put_io_channel(conn->ch);
	conn->ch = NULL;
	return -ENOMEM;
}

static void nbd_conn_enter_transmission(struct nbd_conn *conn)
{
	conn->phase = NBD_PHASE_TRANSMISSION;
	conn->rx = NBD_RX_HEADER;
	keel_poller_disarm(conn->poller); /* the handshake deadline no longer applies */
	conn->timer_due_ns = 0;
	KEEL_INFOLOG("%s: transmission (size %lu, flags 0x%x)", conn->label,
		     (unsigned long)conn->size, conn->tflags);
}

static bool nbd_name_matches(const struct nbd_conn *conn, const uint8_t *name, uint32_t len)
{
	return len == 0 ||
	       (len == strlen(conn->exp->name) && memcmp(name, conn->exp->name, len) == 0);
}

static void nbd_opt_export_name(struct nbd_conn *conn, const uint8_t *data, uint32_t len)
{
	struct nbd_export_name_reply rep;
	static const uint8_t zeroes[NBD_EXPORT_NAME_PAD];
	int rc;

	if (!nbd_name_matches(conn, data, len)) {
		/* EXPORT_NAME has no error reply: the spec demands a hard disconnect. */
		KEEL_INFOLOG("%s: NBD_OPT_EXPORT_NAME for unknown export '%.*s', closing",
			     conn->label, (int)(len > 64 ? 64 : len), (const char *)data);
		nbd_conn_abort(conn);
		return;
	}
	rc = nbd_conn_setup_transmission(conn);
	if (rc != 0) {
		KEEL_WARNLOG("%s: cannot serve the export: %s", conn->label, strerror(-rc));
		nbd_conn_abort(conn);
		return;
	}
	rep.size = htobe64(conn->size);
	rep.flags = htobe16(conn->tflags);
	rc = nbd_wbuf_append(conn, &rep, sizeof(rep));
	if (rc == 0 && !conn->no_zeroes) {
		rc = nbd_wbuf_append(conn, zeroes, sizeof(zeroes));
	}
	if (rc != 0) {
		nbd_conn_abort(conn);
		return;
	}
	nbd_conn_enter_transmission(conn);
}

static int nbd_send_info_export(struct nbd_conn *conn, uint32_t option)
{
	struct nbd_info_export info = {
		.type = htobe16(NBD_INFO_EXPORT),
		.size = htobe64(conn->exp->size),
		.flags = htobe16(conn->exp->tflags),
	};

	return nbd_send_opt_reply(conn, option, NBD_REP_INFO, &info, sizeof(info));
}

static int nbd_send_info_string(struct nbd_conn *conn, uint32_t option, uint16_t type,
				const char *str)
{
	uint8_t buf[2 + NBD_INFO_STRING_MAX];
	size_t len = strlen(str);

	if (len > NBD_INFO_STRING_MAX) {
		len = NBD_INFO_STRING_MAX;
	}
	type = htobe16(type);
	memcpy(buf, &type, 2);
	memcpy(buf + 2, str, len);
	return nbd_send_opt_reply(conn, option, NBD_REP_INFO, buf, 2 + len);
}

static int nbd_send_info_block_size(struct nbd_conn *conn, uint32_t option)
{
	uint32_t bs = conn->exp->block_size;
	struct nbd_info_block_size info = {
		.type = htobe16(NBD_INFO_BLOCK_SIZE),
		.min = htobe32(bs),
		.preferred = htobe32(bs > 4096 ? bs : 4096),
		.max = htobe32(NBD_MAX_PAYLOAD),
	};

	return nbd_send_opt_reply(conn, option, NBD_REP_INFO, &info, sizeof(info));
}

static void nbd_opt_info_go(struct nbd_conn *conn, uint32_t option, const uint8_t *data,
			    uint32_t len)
{
	uint32_t name_len;
	uint16_t nreq;
	const uint8_t *reqs;
	uint32_t answered = 1u << NBD_INFO_EXPORT;
	size_t reply_start;
	char msg[320];
	int rc;

	if (len < 6) {
		nbd_send_opt_error(conn, option, NBD_REP_ERR_INVALID, "option data too short");
		return;
	}
	memcpy(&name_len, data, 4);
	name_len = be32toh(name_len);
	if (name_len > len - 6) {
		nbd_send_opt_error(conn, option, NBD_REP_ERR_INVALID,
				   "export name length exceeds the option");
		return;
	}
	memcpy(&nreq, data + 4 + name_len, 2);
	nreq = be16toh(nreq);
	if ((uint64_t)4 + name_len + 2 + 2ull * nreq != len) {
		nbd_send_opt_error(
			conn, option, NBD_REP_ERR_INVALID,
			"number of information requests does not match the option length");
		return;
	}
	if (!nbd_name_matches(conn, data + 4, name_len)) {
		snprintf(msg, sizeof(msg), "export '%.*s' not found",
			 (int)(name_len > 256 ? 256 : name_len), (const char *)data + 4);
		nbd_send_opt_error(conn, option, NBD_REP_ERR_UNKNOWN, msg);
		return;
	}
	if (option == NBD_OPT_GO) {
		rc = nbd_conn_setup_transmission(conn);
		if (rc != 0) {
			snprintf(msg, sizeof(msg), "export '%s' cannot be served now: %s",
				 conn->exp->name, strerror(-rc));
			nbd_send_opt_error(conn, option, NBD_REP_ERR_SHUTDOWN, msg);
			return;
		}
	}
	if (conn->wsent == conn->wlen) {
		conn->wsent = conn->wlen = 0; /* so wlen only grows while this option is answered */
	}
	reply_start = conn->wlen;
	rc = nbd_send_info_export(conn, option);
	reqs = data + 4 + name_len + 2;
	/*
	 * A client may repeat an info type thousands of times in one 8 KiB option: each
	 * type is answered once (INFO_EXPORT always, first), so what one option costs is
	 * bounded by the info types keel knows, not by what the client asks.
	 */
	for (uint16_t i = 0; rc == 0 && i < nreq; i++) {
		uint16_t type;

		memcpy(&type, reqs + 2 * i, 2);
		type = be16toh(type);
		if (type >= 32 || (answered & (1u << type)) != 0) {
			continue; /* unknown or already answered */
		}
		answered |= 1u << type;
		switch (type) {
		case NBD_INFO_NAME:
			rc = nbd_send_info_string(conn, option, NBD_INFO_NAME, conn->exp->name);
			break;
		case NBD_INFO_DESCRIPTION:
			if (conn->exp->description != NULL) {
				rc = nbd_send_info_string(conn, option, NBD_INFO_DESCRIPTION,
							  conn->exp->description);
			}
			break;
		case NBD_INFO_BLOCK_SIZE:
			rc = nbd_send_info_block_size(conn, option);
			break;
		default:
			break; /* unknown information requests are ignored */
		}
	}
	if (rc == 0 &&
	    conn->wlen - reply_start > NBD_INFO_REPLY_MAX - sizeof(struct nbd_opt_reply)) {
		KEEL_ERRLOG("%s: info replies of %zu bytes exceed the cap", conn->label,
			    conn->wlen - reply_start);
		rc = -E2BIG;
	}
	if (rc == 0) {
		rc = nbd_send_opt_reply(conn, option, NBD_REP_ACK, NULL, 0);
	}
	if (rc != 0) {
		nbd_conn_abort(conn);
		return;
	}
	if (option == NBD_OPT_GO) {
		nbd_conn_enter_transmission(conn);
	}
}

static void nbd_opt_list(struct nbd_conn *conn, uint32_t len)
{
	uint32_t name_len = (uint32_t)strlen(conn->exp->name);
	uint8_t buf[4 + NBD_MAX_NAME_LEN];
	uint32_t be_len = htobe32(name_len);

	if (len != 0) {
		nbd_send_opt_error(conn, NBD_OPT_LIST, NBD_REP_ERR_INVALID,
				   "NBD_OPT_LIST takes no data");
		return;
	}
	memcpy(buf, &be_len, 4);
	memcpy(buf + 4, conn->exp->name, name_len);
	if (nbd_send_opt_reply(conn, NBD_OPT_LIST, NBD_REP_SERVER, buf, 4 + name_len) != 0 ||
	    nbd_send_opt_reply(conn, NBD_OPT_LIST, NBD_REP_ACK, NULL, 0) != 0) {
		nbd_conn_abort(conn);
	}
}

void nbd_conn_refuse(struct nbd_conn *conn, const char *why)
{
	free(conn->refuse);
	conn->refuse = strdup(why);
	if (conn->refuse == NULL) {
		nbd_conn_abort(conn); /* no memory for the message: refuse by closing */
		keel_poller_wake(conn->poller);
	}
}

/* A connection over a limit: every option gets the reason. */
static void nbd_refuse_option(struct nbd_conn *conn, uint32_t option)
{
	KEEL_INFOLOG("%s: refused: %s", conn->label, conn->refuse);
	if (option == NBD_OPT_EXPORT_NAME ||
	    nbd_send_opt_reply(conn, option, NBD_REP_ERR_POLICY, conn->refuse,
			       strlen(conn->refuse)) != 0) {
		nbd_conn_abort(conn); /* EXPORT_NAME has no error reply */
	}
	/* Every later option is refused too (clients pipeline them and read the replies
	 * after): the client ends with ABORT or a close, or the handshake timeout does. */
}

static void nbd_handle_option(struct nbd_conn *conn, uint32_t option, const uint8_t *data,
			      uint32_t len)
{
	char msg[96];

	if (conn->refuse != NULL && option != NBD_OPT_ABORT) {
		nbd_refuse_option(conn, option);
		return;
	}

	switch (option) {
	case NBD_OPT_EXPORT_NAME:
		nbd_opt_export_name(conn, data, len);
		return;
	case NBD_OPT_ABORT:
		KEEL_INFOLOG("%s: client aborted the handshake", conn->label);
		nbd_send_opt_reply(conn, option, NBD_REP_ACK, NULL, 0);
		conn->rx_stop = true;
		conn->close_after_flush = true;
		return;
	case NBD_OPT_LIST:
		nbd_opt_list(conn, len);
		return;
	case NBD_OPT_INFO:
	case NBD_OPT_GO:
		nbd_opt_info_go(conn, option, data, len);
		return;
	default:
		snprintf(msg, sizeof(msg), "option %u is not supported by keel", option);
		if (nbd_send_opt_reply(conn, option, NBD_REP_ERR_UNSUP, msg, strlen(msg)) != 0) {
			nbd_conn_abort(conn);
		}
		KEEL_DEBUGLOG("%s: %s", conn->label, msg);
		return;
	}
}

static void nbd_parse_handshake(struct nbd_conn *conn)
{
	while (!conn->rx_stop && conn->phase == NBD_PHASE_HANDSHAKE) {
		size_t avail = conn->rlen - conn->rpos;
		const uint8_t *p = conn->rbuf + conn->rpos;

		/* Backpressure for a client that sends options without reading replies. */
		if (conn->wlen - conn->wsent > NBD_HS_WBUF_HIGH) {
			conn->rx_stalled = true;
			return;
		}
		switch (conn->hs) {
		case NBD_HS_CFLAGS: {
			uint32_t cflags;

			if (avail < 4) {
				return;
			}
			memcpy(&cflags, p, 4);
			cflags = be32toh(cflags);
			conn->rpos += 4;
			if (cflags & ~NBD_FLAG_C_KNOWN) {
				KEEL_WARNLOG("%s: unknown client flags 0x%x, closing", conn->label,
					     cflags);
				nbd_conn_abort(conn);
				return;
			}
			conn->no_zeroes = cflags & NBD_FLAG_C_NO_ZEROES;
			conn->hs = NBD_HS_OPT;
			break;
		}
		case NBD_HS_OPT: {
			struct nbd_opt_hdr hdr;
			uint32_t option, len;

			if (avail < sizeof(hdr)) {
				return;
			}
			memcpy(&hdr, p, sizeof(hdr));
			option = be32toh(hdr.option);
			len = be32toh(hdr.len);
			if (be64toh(hdr.magic) != NBD_OPTS_MAGIC) {
				KEEL_WARNLOG("%s: bad option magic, closing", conn->label);
				nbd_conn_abort(conn);
				return;
			}
			if (len > NBD_MAX_OPT_LEN) {
				if (len > NBD_MAX_OPT_SKIP) {
					KEEL_WARNLOG("%s: option %u with %u bytes of data, closing",
						     conn->label, option, len);
					nbd_conn_abort(conn);
					return;
				}
				conn->rpos += sizeof(hdr);
				conn->skip_option = option;
				conn->skip_remaining = len;
				conn->hs = NBD_HS_OPT_SKIP;
				break;
			}
			if (avail < sizeof(hdr) + len) {
				return;
			}
			conn->rpos += sizeof(hdr) + len;
			nbd_handle_option(conn, option, p + sizeof(hdr), len);
			break;
		}
		case NBD_HS_OPT_SKIP: {
			size_t n = conn->skip_remaining < avail ? conn->skip_remaining : avail;

			conn->rpos += n;
			conn->skip_remaining -= (uint32_t)n;
			if (conn->skip_remaining > 0) {
				return;
			}
			conn->hs = NBD_HS_OPT;
			if (nbd_send_opt_error(conn, conn->skip_option, NBD_REP_ERR_TOO_BIG,
					       "option data too long") != 0) {
				nbd_conn_abort(conn);
			}
			break;
		}
		}
	}
}

static void nbd_parse(struct nbd_conn *conn)
{
	if (conn->phase == NBD_PHASE_HANDSHAKE) {
		nbd_parse_handshake(conn);
	}
	if (conn->phase == NBD_PHASE_TRANSMISSION) {
		nbd_parse_transmission(conn);
	}
}

/* ------------------------------------------------------------------------------ */
/* Receiving                                                                       */
/* ------------------------------------------------------------------------------ */

static void nbd_conn_rx_eof(struct nbd_conn *conn)
{
	if (conn->phase == NBD_PHASE_HANDSHAKE) {
		KEEL_INFOLOG("%s: client closed during the handshake", conn->label);
	} else if (conn->rx != NBD_RX_HEADER || conn->rpos < conn->rlen) {
		KEEL_INFOLOG("%s: client closed in the middle of a request", conn->label);
	}
	nbd_conn_close_soft(conn);
}

static void nbd_conn_rx_error(struct nbd_conn *conn, int err)
{
	KEEL_INFOLOG("%s: receive failed: %s", conn->label, strerror(err));
	nbd_conn_abort(conn);
}

static int nbd_conn_rx(struct nbd_conn *conn)
{
	int work = 0;

	if (conn->phase == NBD_PHASE_HANDSHAKE) {
		conn->rx_stalled = false; /* re-evaluated against the reply backlog */
	}
	if (conn->rpos < conn->rlen && !conn->rx_stalled) {
		nbd_parse(conn);
	}
	for (int round = 0; round < NBD_RX_ROUNDS && !conn->rx_stop; round++) {
		ssize_t n;
		size_t want;

		if (conn->rx_stalled) {
			break;
		}
		/*
		 * A long payload tail goes straight into its buffer (no copy), and the
		 * same recvmsg() picks up what follows into the receive buffer: the next
		 * header, or a batch of small requests. The tail segment is short so a
		 * following large write lands mostly in its own buffer, not here.
		 */
		if (conn->phase == NBD_PHASE_TRANSMISSION && conn->rx == NBD_RX_PAYLOAD &&
		    conn->rpos == conn->rlen &&
		    conn->rx_req->len - conn->rx_req->got >= NBD_DIRECT_RECV_MIN) {
			struct nbd_req *req = conn->rx_req;
			struct iovec iov[2];
			struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 2};
			size_t pay = req->len - req->got;

			conn->rpos = conn->rlen = 0;
			iov[0].iov_base = (uint8_t *)req->buf + req->got;
			iov[0].iov_len = pay;
			iov[1].iov_base = conn->rbuf;
			iov[1].iov_len = NBD_DIRECT_RECV_TAIL;
			want = pay + NBD_DIRECT_RECV_TAIL;
			n = recvmsg(conn->fd, &msg, MSG_DONTWAIT);
			if (n > 0) {
				work = 1;
				conn->rx_wait_since_ns = 0;
				if ((size_t)n < pay) {
					req->got += (uint32_t)n;
					break; /* socket drained */
				}
				req->got = req->len;
				conn->rlen = (size_t)n - pay;
				conn->rx_req = NULL;
				conn->rx = NBD_RX_HEADER;
				nbd_req_submit(req);
				nbd_parse(conn);
				if ((size_t)n < want) {
					break;
				}
				continue;
			}
		} else {
			if (conn->rpos == conn->rlen) {
				conn->rpos = conn->rlen = 0;
			} else if (conn->rpos > 0 && conn->rlen == NBD_CONN_RBUF_SIZE) {
				memmove(conn->rbuf, conn->rbuf + conn->rpos,
					conn->rlen - conn->rpos);
				conn->rlen -= conn->rpos;
				conn->rpos = 0;
			}
			want = NBD_CONN_RBUF_SIZE - conn->rlen;
			if (want == 0) {
				break;
			}
			n = recv(conn->fd, conn->rbuf + conn->rlen, want, MSG_DONTWAIT);
			if (n > 0) {
				work = 1;
				conn->rx_wait_since_ns = 0;
				conn->rlen += (size_t)n;
				nbd_parse(conn);
				if ((size_t)n < want) {
					break;
				}
				continue;
			}
		}
		if (n == 0) {
			work = 1;
			nbd_conn_rx_eof(conn);
			break;
		}
		if (errno == EINTR) {
			continue;
		}
		if (errno != EAGAIN && errno != EWOULDBLOCK) {
			work = 1;
			nbd_conn_rx_error(conn, errno);
		}
		break;
	}
	return work;
}

/* Close a client whose deadline passed: the handshake, or a stall in transmission. */
static void nbd_conn_expire(struct nbd_conn *conn)
{
	uint64_t now = keel_now_ns();
	uint64_t stall = nbd_stall_timeout_ns();

	if (conn->tx_dead) {
		return; /* already closing hard: only the bdev is waited for */
	}
	if (conn->phase == NBD_PHASE_HANDSHAKE) {
		if (now - conn->created_ns >= nbd_handshake_timeout_ns()) {
			KEEL_WARNLOG("%s: no export chosen within %lu ms (handshake timeout), "
				     "closing",
				     conn->label,
				     (unsigned long)(nbd_handshake_timeout_ns() / 1000000ull));
			nbd_stat_inc(NBD_STAT_HANDSHAKE_TIMEOUTS);
			nbd_conn_abort(conn);
		}
		return;
	}
	if (conn->tx_wait_since_ns != 0 && now - conn->tx_wait_since_ns >= stall) {
		KEEL_WARNLOG("%s: client has not read its replies for %lu ms (stall timeout), "
			     "closing",
			     conn->label, (unsigned long)(stall / 1000000ull));
		nbd_stat_inc(NBD_STAT_STALL_TIMEOUTS);
		nbd_conn_abort(conn);
	} else if (conn->rx_wait_since_ns != 0 && now - conn->rx_wait_since_ns >= stall) {
		KEEL_WARNLOG("%s: client stopped sending a write payload for %lu ms (stall "
			     "timeout), closing",
			     conn->label, (unsigned long)(stall / 1000000ull));
		nbd_stat_inc(NBD_STAT_STALL_TIMEOUTS);
		nbd_conn_abort(conn);
	}
}

/*
 * Arm the poller's one timer for the earliest thing that waits on the client. Lazy: a
 * timer already due earlier is left alone (when it fires, nbd_conn_expire finds nothing
 * and this arms the next), so a busy connection does not re-arm on every poll, and a
 * connection with nothing waiting has no timer at all.
 */
static void nbd_conn_update_deadline(struct nbd_conn *conn)
{
	uint64_t now = 0, want = UINT64_MAX;
	bool tx_wait, rx_wait;

	if (conn->tx_dead || conn->poller == NULL) {
		return;
	}
	if (conn->phase == NBD_PHASE_HANDSHAKE) {
		want = conn->created_ns + nbd_handshake_timeout_ns();
	} else {
		tx_wait = conn->tx_blocked &&
			  (!TAILQ_EMPTY(&conn->replies) || conn->wsent < conn->wlen);
		rx_wait = !conn->rx_stop &&
			  (conn->rx == NBD_RX_PAYLOAD || conn->rx == NBD_RX_DISCARD);
		if (!tx_wait) {
			conn->tx_wait_since_ns = 0;
		} else if (conn->tx_wait_since_ns == 0) {
			conn->tx_wait_since_ns = now = keel_now_ns();
		}
		if (!rx_wait) {
			conn->rx_wait_since_ns = 0;
		} else if (conn->rx_wait_since_ns == 0) {
			conn->rx_wait_since_ns = now = now ? now : keel_now_ns();
		}
		if (conn->tx_wait_since_ns != 0) {
			want = conn->tx_wait_since_ns + nbd_stall_timeout_ns();
		}
		if (conn->rx_wait_since_ns != 0 &&
		    conn->rx_wait_since_ns + nbd_stall_timeout_ns() < want) {
			want = conn->rx_wait_since_ns + nbd_stall_timeout_ns();
		}
	}
	if (conn->budget_wait) {
		now = now ? now : keel_now_ns();
		if (now + NBD_BUDGET_RETRY_US * 1000ull < want) {
			want = now + NBD_BUDGET_RETRY_US * 1000ull;
		}
	}
	if (want == UINT64_MAX || (conn->timer_due_ns != 0 && conn->timer_due_ns <= want)) {
		return;
	}
	now = now ? now : keel_now_ns();
	if (keel_poller_arm(conn->poller, want > now ? (want - now) / 1000 + 1 : 1) == 0) {
		conn->timer_due_ns = want;
	}
}

static int nbd_conn_poll(void *arg)
{
	struct nbd_conn *conn = arg;
	int work = 0;

	if (!TAILQ_EMPTY(&conn->nomem)) {
		work |= nbd_conn_retry_nomem(conn);
	}
	/*
	 * Replies that completed since the last poll go out first: at low queue depth
	 * that is the whole latency budget, and the recv() below usually finds nothing.
	 * Replies produced while parsing (refused requests) go out right after.
	 */
	if (!TAILQ_EMPTY(&conn->replies) || conn->wsent < conn->wlen) {
		work |= nbd_conn_tx(conn);
	}
	if (conn->timer_due_ns != 0 && keel_now_ns() >= conn->timer_due_ns) {
		conn->timer_due_ns = 0;
		nbd_conn_expire(conn);
	}
	if (conn->budget_wait) {
		conn->rx_stalled = false; /* look at the budget again */
	}
	if (!conn->rx_stop) {
		work |= nbd_conn_rx(conn);
	}
	if (!conn->tx_blocked &&
	    (!TAILQ_EMPTY(&conn->replies) || conn->wsent < conn->wlen || conn->close_after_flush)) {
		work |= nbd_conn_tx(conn);
	}
	if (conn->closing) {
		if (!conn->shut && conn->in_bdev == 0 && conn->tx_dead) {
			shutdown(conn->fd, SHUT_RDWR);
			conn->shut = true;
		}
		if (nbd_conn_try_finish(conn)) {
			return KEEL_POLLER_BUSY;
		}
	}
	nbd_conn_update_deadline(conn);
	nbd_conn_update_events(conn);
	/* Requests waiting for memory are retried on every iteration until they go. */
	return work || !TAILQ_EMPTY(&conn->nomem) ? KEEL_POLLER_BUSY : KEEL_POLLER_IDLE;
}

/* ------------------------------------------------------------------------------ */
/* Creation                                                                        */
/* ------------------------------------------------------------------------------ */

static int nbd_conn_alloc(int fd, nbd_conn_done_fn done_fn, void *done_ctx, struct nbd_conn **connp)
{
	struct nbd_conn *conn;
	int flags, rc;

	if (keel_thread_get_current() == NULL || done_fn == NULL) {
		return -EINVAL;
	}
	flags = fcntl(fd, F_GETFL);
	if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
		return -errno;
	}
	conn = calloc(1, sizeof(*conn));
	if (conn == NULL) {
		return -ENOMEM;
	}
	conn->fd = fd;
	conn->created_ns = keel_now_ns();
	conn->done_fn = done_fn;
	conn->done_ctx = done_ctx;
	TAILQ_INIT(&conn->replies);
	TAILQ_INIT(&conn->nomem);
	conn->rbuf = malloc(NBD_CONN_RBUF_SIZE);
	if (conn->rbuf == NULL) {
		rc = -ENOMEM;
		goto out_free_conn;
	}
	conn->poller = keel_poller_register(nbd_conn_poll, conn, 0, "nbd_conn");
	if (conn->poller == NULL) {
		rc = -ENOMEM;
		goto out_free_rbuf;
	}
	conn->events = EPOLLIN;
	rc = keel_poller_register_fd(conn->poller, fd, conn->events);
	if (rc != 0) {
		goto out_unregister;
	}
	*connp = conn;
	return 0;

out_unregister:
	keel_poller_unregister(&conn->poller);
out_free_rbuf:
	free(conn->rbuf);
out_free_conn:
	free(conn);
	return rc;
}

int nbd_conn_create_handshake(int fd, const struct nbd_export_info *exp, nbd_conn_done_fn done_fn,
			      void *done_ctx, struct nbd_conn **connp)
{
	struct nbd_greeting greeting = {
		.magic = htobe64(NBD_MAGIC),
		.opts_magic = htobe64(NBD_OPTS_MAGIC),
		.flags = htobe16(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES),
	};
	struct nbd_conn *conn;
	int rc;

	rc = nbd_conn_alloc(fd, done_fn, done_ctx, &conn);
	if (rc != 0) {
		return rc;
	}
	conn->exp = exp;
	conn->desc = exp->desc;
	conn->tflags = exp->tflags;
	conn->phase = NBD_PHASE_HANDSHAKE;
	conn->hs = NBD_HS_CFLAGS;
	snprintf(conn->label, sizeof(conn->label), "nbd export %s: connection fd %d", exp->name,
		 fd);
	rc = nbd_wbuf_append(conn, &greeting, sizeof(greeting));
	if (rc != 0) {
		conn->fd = -1; /* the caller still owns fd on failure */
		nbd_conn_free(conn);
		return rc;
	}
	/* The poller sleeps on the socket: its timer is what ends a silent handshake. */
	nbd_conn_update_deadline(conn);
	KEEL_INFOLOG("%s: accepted", conn->label);
	*connp = conn;
	return 0;
}

int nbd_conn_create_transmission(int fd, struct keel_bdev_desc *desc, uint16_t tflags,
				 nbd_conn_done_fn done_fn, void *done_ctx, struct nbd_conn **connp)
{
	struct nbd_conn *conn;
	int rc;

	rc = nbd_conn_alloc(fd, done_fn, done_ctx, &conn);
	if (rc != 0) {
		return rc;
	}
	conn->desc = desc;
	conn->tflags = tflags | NBD_FLAG_HAS_FLAGS;
	snprintf(conn->label, sizeof(conn->label), "nbd bdev %s: connection fd %d",
		 keel_bdev_get_name(keel_bdev_desc_get_bdev(desc)), fd);
	rc = nbd_conn_setup_transmission(conn);
	if (rc != 0) {
		conn->fd = -1;
		nbd_conn_free(conn);
		return rc;
	}
	nbd_conn_enter_transmission(conn);
	*connp = conn;
	return 0;
}
