/*
 * One NBD connection's socket I/O: recv()/recvmsg() into the receive buffer and straight
 * into write payload buffers, send() of handshake bytes, sendmsg() of the reply queue,
 * and the epoll events (EPOLLOUT only while a send is blocked).
 *
 * Why it is shaped like this: on a small machine the NBD client and keel share the
 * CPUs, so the server's CPU cost per request decides throughput. Each poll reads as
 * many queued requests as fit into one large receive buffer with one recv(), submits
 * them all, and sends every reply that completed with one sendmsg() (header and read
 * data as iovecs, no copy). Requests come from a preallocated per-connection array;
 * payload buffers from a cache per thread by power-of-two size class (nbd_buf_cache.c),
 * so the steady state does not allocate.
 *
 * Who calls it: the connection's poller (nbd_conn.c), through nbd_conn_internal.h, on
 * the connection's thread. What it reads goes to the phase's parser (nbd_handshake.c,
 * nbd_transmission.c); a socket error or EOF closes the connection through nbd_conn.c.
 */
#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "keel/log.h"
#include "keel/reactor.h"
#include "nbd/nbd_conn_internal.h"
#include "nbd/nbd_tls.h"

/* Payload tails at least this long go straight from the socket into the buffer. */
#define NBD_DIRECT_RECV_MIN (16u * 1024u)
/* Bytes read into the receive buffer behind a direct payload receive. */
#define NBD_DIRECT_RECV_TAIL 4096u
/* recv() calls per poll at most, so one busy connection cannot starve the thread. */
#define NBD_RX_ROUNDS 4

/* ------------------------------------------------------------------------------ */
/* Sending                                                                        */
/* ------------------------------------------------------------------------------ */

static size_t nbd_req_reply_len(const struct nbd_req *req)
{
	return (size_t)req->rhdr_len + req->rdata_len;
}

/*
 * The iovecs of one sendmsg() of replies. Filled and used within one nbd_conn_tx call
 * on the connection's own thread, so one array per thread serves all its connections
 * (16 KiB each once, locked in memory like everything of keeld's).
 */
static __thread struct iovec g_tx_iov[NBD_CONN_IOV_MAX];

int nbd_conn_tx(struct nbd_conn *conn)
{
	int work = 0;

	if (conn->tx_dead) {
		return 0;
	}
	conn->tx_blocked = false;
	while (conn->wsent < conn->wlen) {
		ssize_t n;

		if (conn->tls != NULL) {
			struct iovec iov = {conn->wbuf + conn->wsent, conn->wlen - conn->wsent};

			n = nbd_tls_sendv(conn, &iov, 1);
		} else {
			n = send(conn->fd, conn->wbuf + conn->wsent, conn->wlen - conn->wsent,
				 MSG_DONTWAIT | MSG_NOSIGNAL);
		}

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
		nbd_conn_count_out(conn, n);
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
			if (skip < req->rhdr_len) {
				g_tx_iov[iovcnt].iov_base = req->rhdr.bytes + skip;
				g_tx_iov[iovcnt].iov_len = req->rhdr_len - skip;
				total += g_tx_iov[iovcnt++].iov_len;
				skip = 0;
			} else {
				skip -= req->rhdr_len;
			}
			if (req->rdata_len > 0) {
				g_tx_iov[iovcnt].iov_base = (uint8_t *)req->rdata + skip;
				g_tx_iov[iovcnt].iov_len = req->rdata_len - skip;
				total += g_tx_iov[iovcnt++].iov_len;
			}
			skip = 0;
		}
		msg.msg_iov = g_tx_iov;
		msg.msg_iovlen = iovcnt;
		n = conn->tls != NULL ? nbd_tls_sendv(conn, g_tx_iov, (int)iovcnt)
				      : sendmsg(conn->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
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
		nbd_conn_count_out(conn, n);
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
/* Receiving                                                                      */
/* ------------------------------------------------------------------------------ */

static void nbd_parse(struct nbd_conn *conn)
{
	if (conn->phase == NBD_PHASE_HANDSHAKE) {
		nbd_parse_handshake(conn);
	}
	if (conn->phase == NBD_PHASE_TRANSMISSION) {
		nbd_parse_transmission(conn);
	}
}

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

/*
 * A recv() filled the receive buffer: the client has more queued. Grow it once to the
 * full size; without memory the small buffer still works, a few requests per recv().
 */
static void nbd_rbuf_grow(struct nbd_conn *conn)
{
	uint8_t *bigger;

	if (conn->rbuf_size >= NBD_CONN_RBUF_MAX) {
		return;
	}
	bigger = realloc(conn->rbuf, NBD_CONN_RBUF_MAX);
	if (bigger != NULL) {
		conn->rbuf = bigger;
		conn->rbuf_size = NBD_CONN_RBUF_MAX;
	}
}

int nbd_conn_rx(struct nbd_conn *conn)
{
	int work = 0;

	conn->rx_drained = false;
	if (conn->phase == NBD_PHASE_HANDSHAKE) {
		if (conn->tls_pending != NULL) {
			/* GnuTLS drives its own reads: rerun after any progress, as before. */
			return nbd_tls_handshake_poll(conn);
		}
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
		 * following large write lands mostly in its own buffer, not here. Under TLS
		 * records are decrypted into the receive buffer (a copy either way).
		 */
		if (conn->phase == NBD_PHASE_TRANSMISSION && conn->rx == NBD_RX_PAYLOAD &&
		    conn->tls == NULL && conn->rpos == conn->rlen &&
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
			nbd_conn_count_in(conn, n);
			if (n > 0) {
				work = 1;
				conn->rx_wait_since_ns = 0;
				if ((size_t)n < pay) {
					req->got += (uint32_t)n;
					conn->rx_drained = true;
					break;
				}
				req->got = req->len;
				conn->rlen = (size_t)n - pay;
				conn->rx_req = NULL;
				conn->rx = NBD_RX_HEADER;
				nbd_req_submit(req);
				nbd_parse(conn);
				if ((size_t)n < want) {
					conn->rx_drained = true;
					break;
				}
				continue;
			}
		} else {
			if (conn->rpos == conn->rlen) {
				conn->rpos = conn->rlen = 0;
			} else if (conn->rpos > 0 && conn->rlen == conn->rbuf_size) {
				memmove(conn->rbuf, conn->rbuf + conn->rpos,
					conn->rlen - conn->rpos);
				conn->rlen -= conn->rpos;
				conn->rpos = 0;
			}
			want = conn->rbuf_size - conn->rlen;
			if (want == 0) {
				break;
			}
			n = conn->tls != NULL
				    ? nbd_tls_recv(conn, conn->rbuf + conn->rlen, want)
				    : recv(conn->fd, conn->rbuf + conn->rlen, want, MSG_DONTWAIT);
			nbd_conn_count_in(conn, n);
			if (n > 0) {
				work = 1;
				conn->rx_wait_since_ns = 0;
				conn->rlen += (size_t)n;
				nbd_parse(conn);
				if ((size_t)n < want) {
					conn->rx_drained = true;
					break;
				}
				nbd_rbuf_grow(conn);
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
		conn->rx_drained = true;
		break;
	}
	return work;
}

/* ------------------------------------------------------------------------------ */
/* Readiness                                                                      */
/* ------------------------------------------------------------------------------ */

void nbd_conn_update_events(struct nbd_conn *conn)
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
