/*
 * The transmission phase of one NBD connection: parse and check each request, take its
 * payload buffer (nbd_buf_cache.c) within the connection's cap and the daemon-wide
 * budget, submit it to the bdev, turn the completion into a reply on the connection's
 * reply queue (nbd_sock.c sends it), and retry submissions the bdev refused for memory.
 *
 * Who calls it: the receive path (nbd_sock.c) through nbd_parse_transmission and
 * nbd_req_submit; the poller and close (nbd_conn.c) for retries and returning requests;
 * the handshake (nbd_handshake.c) and nbd_conn_create_transmission to enter the phase;
 * nbd_server.c and nbd_disk.c (main thread) for nbd_tflags_for_bdev. The rest runs on
 * the connection's own thread only.
 */
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "keel/bdev.h"
#include "keel/log.h"
#include "keel/reactor.h"
#include "nbd/nbd_conn_internal.h"

/*
 * Payload bytes a connection may hold at once. Without a cap, 256 requests of 32 MiB
 * would be 8 GiB of buffers for one client; the kernel and nbdcopy keep about 16 MiB in
 * flight. Past the cap, parsing pauses until replies free buffers.
 */
#define NBD_CONN_MAX_BUF_BYTES (64u << 20)

/* ------------------------------------------------------------------------------ */
/* Requests                                                                       */
/* ------------------------------------------------------------------------------ */

uint16_t nbd_tflags_for_bdev(struct keel_bdev *bdev, bool read_only)
{
	/* FLUSH is always advertised: with no write cache the core completes it at once,
	 * and clients that only trust FLUSH (qemu, the kernel) then still work. CACHE is
	 * advisory: answered at once, keel has no cache to fill. */
	uint16_t flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_WRITE_ZEROES |
			 NBD_FLAG_SEND_CACHE;

	if (keel_bdev_has_write_cache(bdev)) {
		flags |= NBD_FLAG_SEND_FUA;
	}
	if (keel_bdev_io_type_supported(bdev, KEEL_BDEV_IO_UNMAP)) {
		/* Where unmap is native, so is write_zeroes (a file's fallocate, RAM, the
		 * nexus over such replicas): zeroing is a metadata operation, fast. */
		flags |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_FAST_ZERO;
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

	req->buf = nbd_buf_get((uint32_t)req->len, conn->buf_align, &req->buf_class);
	if (req->buf == NULL) {
		return -ENOMEM;
	}
	conn->buf_bytes += req->len;
	req->buf_len = (uint32_t)req->len;
	req->budget = conn->reserved; /* taken when its header was parsed */
	conn->reserved = 0;
	return 0;
}

void nbd_req_free_buf(struct nbd_req *req)
{
	if (req->buf != NULL) {
		nbd_buf_put(req->buf, req->buf_class);
		req->buf = NULL;
		req->conn->buf_bytes -= req->buf_len;
		req->buf_len = 0;
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
	req->buf_len = 0;
	req->buf_class = -1;
	req->budget = 0;
	req->op = NBD_OP_NONE;
	req->flush_after = false;
	req->in_bdev = false;
	req->err = 0;
	req->errmsg = NULL;
	req->rdata_len = 0;
	return req;
}

void nbd_req_put(struct nbd_req *req)
{
	struct nbd_conn *conn = req->conn;

	nbd_req_free_buf(req);
	conn->free_reqs[conn->nfree++] = req;
	conn->rx_stalled = false;
}

void nbd_req_reply(struct nbd_req *req, uint32_t nbd_err)
{
	struct nbd_conn *conn = req->conn;

	nbd_reply_build(req, nbd_err);
	if (conn->tx_dead) {
		nbd_req_put(req);
		return;
	}
	TAILQ_INSERT_TAIL(&conn->replies, req, link);
}

/* ------------------------------------------------------------------------------ */
/* Submission and completion                                                      */
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
	if (req->op == NBD_OP_BLOCK_STATUS) {
		status = nbd_block_status_encode(req, status);
	}
	if (status != 0) {
		KEEL_DEBUGLOG("%s: cmd %u at %lu len %lu failed: %s", conn->label, req->type,
			      (unsigned long)req->offset, (unsigned long)req->len,
			      strerror(-status));
	}
	if (status == -ENOTSUP && (req->flags & NBD_CMD_FLAG_FAST_ZERO)) {
		req->errmsg = "the export cannot zero this range fast";
		nbd_req_reply(req, NBD_ENOTSUP); /* the one place the spec allows ENOTSUP */
		return;
	}
	nbd_req_reply(req, nbd_wire_errno(status));
}

/*
 * Without NO_HOLE a zeroed range may become a hole (punched: less space, same zeroes);
 * FAST_ZERO forbids the slow way, zero buffers written, and gets ENOTSUP instead.
 */
static uint32_t nbd_req_zero_flags(const struct nbd_req *req)
{
	uint32_t flags = 0;

	if (!(req->flags & NBD_CMD_FLAG_NO_HOLE)) {
		flags |= KEEL_BDEV_IO_FLAG_UNMAP;
	}
	if (req->flags & NBD_CMD_FLAG_FAST_ZERO) {
		flags |= KEEL_BDEV_IO_FLAG_NO_EMULATE;
	}
	return flags;
}

static int nbd_req_do_submit(struct nbd_req *req)
{
	struct nbd_conn *conn = req->conn;

	switch (req->op) {
	case NBD_OP_READ:
		return keel_bdev_read(conn->desc, conn->ch, req->buf, req->offset,
				      (uint32_t)req->len, nbd_req_done, req);
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
		return keel_bdev_write_zeroes_ext(conn->desc, conn->ch, req->offset, req->len,
						  nbd_req_zero_flags(req), nbd_req_done, req);
	case NBD_OP_BLOCK_STATUS:
		return keel_bdev_get_allocation(conn->desc, conn->ch, req->offset, req->len,
						req->buf, nbd_block_status_max(req), nbd_req_done,
						req);
	case NBD_OP_NONE:
		break;
	}
	return -EINVAL;
}

void nbd_req_submit(struct nbd_req *req)
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

int nbd_conn_retry_nomem(struct nbd_conn *conn)
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

/* ------------------------------------------------------------------------------ */
/* Parsing                                                                        */
/* ------------------------------------------------------------------------------ */

static bool nbd_range_ok(const struct nbd_conn *conn, uint64_t offset, uint64_t len)
{
	return len <= conn->size && offset <= conn->size - len;
}

static bool nbd_aligned(const struct nbd_conn *conn, uint64_t offset, uint64_t len)
{
	return ((offset | len) & (conn->block_size - 1)) == 0;
}

static const char *nbd_cmd_name(uint16_t type)
{
	static const char *names[] = {"read", "write", "disc",         "flush",
				      "trim", "cache", "write_zeroes", "block_status"};

	return type < sizeof(names) / sizeof(names[0]) ? names[type] : "unknown";
}

/* Refuse \p req with wire errno \p err; \p why goes into a structured error chunk. */
static uint32_t nbd_req_refuse(struct nbd_req *req, uint32_t err, const char *why)
{
	req->errmsg = why;
	return err;
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
	bool writes = false;

	switch (req->type) {
	case NBD_CMD_READ:
		if (conn->structured) {
			allowed |= NBD_CMD_FLAG_DF; /* advertised only then */
		}
		break;
	case NBD_CMD_WRITE:
		if (conn->extended) {
			allowed |= NBD_CMD_FLAG_PAYLOAD_LEN; /* its length is the payload's */
		}
		writes = true;
		break;
	case NBD_CMD_FLUSH:
	case NBD_CMD_CACHE:
		break;
	case NBD_CMD_TRIM:
		if (!(conn->tflags & NBD_FLAG_SEND_TRIM)) {
			return nbd_req_refuse(req, NBD_EINVAL,
					      "trim is not supported by this export");
		}
		writes = true;
		break;
	case NBD_CMD_WRITE_ZEROES:
		allowed |= NBD_CMD_FLAG_NO_HOLE;
		if (conn->tflags & NBD_FLAG_SEND_FAST_ZERO) {
			allowed |= NBD_CMD_FLAG_FAST_ZERO;
		}
		writes = true;
		break;
	case NBD_CMD_BLOCK_STATUS:
		if (!conn->meta_allocation) {
			return nbd_req_refuse(req, NBD_EINVAL,
					      "block status without a meta context selected by "
					      "NBD_OPT_SET_META_CONTEXT");
		}
		allowed |= NBD_CMD_FLAG_REQ_ONE;
		break;
	default:
		return nbd_req_refuse(req, NBD_EINVAL, "unknown command");
	}
	if (req->flags & ~allowed) {
		return nbd_req_refuse(req, NBD_EINVAL, "command flag not valid for this command");
	}
	if (read_only && writes) {
		return nbd_req_refuse(req, NBD_EPERM, "the export is read-only");
	}
	if (req->type == NBD_CMD_FLUSH) {
		return 0;
	}
	if ((req->type == NBD_CMD_READ || req->type == NBD_CMD_WRITE) &&
	    req->len > NBD_MAX_PAYLOAD) {
		return nbd_req_refuse(req, NBD_EINVAL, "payload longer than the 32 MiB maximum");
	}
	if (req->type == NBD_CMD_BLOCK_STATUS && req->len == 0) {
		return nbd_req_refuse(req, NBD_EINVAL, "block status of zero length");
	}
	if (!nbd_range_ok(conn, req->offset, req->len)) {
		return nbd_req_refuse(
			req,
			(req->type == NBD_CMD_WRITE || req->type == NBD_CMD_WRITE_ZEROES)
				? NBD_ENOSPC
				: NBD_EINVAL,
			"request beyond the end of the export");
	}
	if (!nbd_aligned(conn, req->offset, req->len)) {
		return nbd_req_refuse(req, NBD_EINVAL,
				      "offset or length not a multiple of the block size");
	}
	return 0;
}

/* Whether \p req announces a payload although it is not a WRITE (extended headers). */
static bool nbd_req_stray_payload(const struct nbd_req *req)
{
	return req->type != NBD_CMD_WRITE && (req->flags & NBD_CMD_FLAG_PAYLOAD_LEN);
}

/* Handle one parsed header. Sets the receive state for a following payload. */
static void nbd_handle_request(struct nbd_conn *conn, const struct nbd_req_hdr *wire)
{
	struct nbd_req *req;
	uint32_t err;

	if (!wire->magic_ok) {
		KEEL_WARNLOG("%s: bad request magic 0x%08x (%s headers), closing the connection",
			     conn->label, wire->magic, conn->extended ? "extended" : "compact");
		nbd_conn_abort(conn);
		return;
	}
	req = nbd_req_get(conn);
	req->rhdr.simple.cookie = wire->cookie; /* opaque: echoed byte for byte, kept in place */
	req->type = wire->type;
	req->flags = wire->flags;
	req->offset = wire->offset;
	req->len = wire->len;

	if (req->type == NBD_CMD_DISC) {
		KEEL_INFOLOG("%s: client disconnects", conn->label);
		nbd_req_put(req);
		nbd_conn_close_soft(conn);
		return;
	}

	err = nbd_req_check(conn, req);
	if (conn->extended && nbd_req_stray_payload(req)) {
		/* keel takes no payload but a write's: drop it, refuse the request */
		err = nbd_req_refuse(req, NBD_EINVAL,
				     "NBD_CMD_FLAG_PAYLOAD_LEN is only supported on write");
	}
	if (req->type == NBD_CMD_WRITE || (conn->extended && nbd_req_stray_payload(req))) {
		if (err != 0 && req->len > NBD_MAX_DISCARD_PAYLOAD) {
			KEEL_WARNLOG("%s: write of %lu bytes at %lu is beyond any sane payload, "
				     "closing the connection",
				     conn->label, (unsigned long)req->len,
				     (unsigned long)req->offset);
			nbd_req_put(req);
			nbd_conn_abort(conn);
			return;
		}
		if (err == 0 && req->len > 0 && nbd_req_alloc_buf(req) != 0) {
			err = NBD_ENOMEM;
		}
		if (err != 0) {
			KEEL_INFOLOG("%s: %s at %lu len %lu refused (error %u), payload discarded",
				     conn->label, nbd_cmd_name(req->type),
				     (unsigned long)req->offset, (unsigned long)req->len, err);
			req->err = err;
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
		KEEL_INFOLOG("%s: %s at %lu len %lu flags 0x%x refused (error %u)", conn->label,
			     nbd_cmd_name(req->type), (unsigned long)req->offset,
			     (unsigned long)req->len, req->flags, err);
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
	case NBD_CMD_BLOCK_STATUS:
		err = (uint32_t)nbd_block_status_submit(req);
		if (err != 0) {
			nbd_req_reply(req, err);
		}
		return;
	case NBD_CMD_TRIM:
	case NBD_CMD_WRITE_ZEROES:
		if (req->len > 0) {
			/* write_zeroes reads back as zeroes either way; without NO_HOLE
			 * it may also free the space (nbd_req_zero_flags). */
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
static bool nbd_req_needs_buf(const struct nbd_req_hdr *wire)
{
	return (wire->type == NBD_CMD_READ || wire->type == NBD_CMD_WRITE) &&
	       wire->len <= NBD_MAX_PAYLOAD;
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
void nbd_parse_transmission(struct nbd_conn *conn)
{
	while (!conn->rx_stop) {
		size_t avail = conn->rlen - conn->rpos;

		switch (conn->rx) {
		case NBD_RX_HEADER: {
			struct nbd_req_hdr wire;
			size_t hdr_size = nbd_req_hdr_size(conn);

			if (avail < hdr_size) {
				return;
			}
			if (conn->nfree == 0) {
				conn->rx_stalled = true;
				return;
			}
			nbd_req_hdr_decode(conn, conn->rbuf + conn->rpos, &wire);
			if (nbd_req_needs_buf(&wire) &&
			    !nbd_conn_take_budget(conn, (uint32_t)wire.len)) {
				return;
			}
			conn->rpos += hdr_size;
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
				nbd_req_reply(req, req->err);
			}
			break;
		}
		}
	}
}

/* ------------------------------------------------------------------------------ */
/* Entering transmission                                                          */
/* ------------------------------------------------------------------------------ */

int nbd_conn_setup_transmission(struct nbd_conn *conn)
{
	struct keel_bdev *bdev = keel_bdev_desc_get_bdev(conn->desc);

	conn->size = keel_bdev_get_block_size(bdev) * keel_bdev_get_num_blocks(bdev);
	conn->block_size = keel_bdev_get_block_size(bdev);
	conn->buf_align = keel_bdev_get_buf_align(bdev);
	if (conn->buf_align < 4096) {
		conn->buf_align = 4096;
	}
	if (conn->structured) {
		conn->tflags |= NBD_FLAG_SEND_DF; /* what nbd_conn_tflags told the client */
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

void nbd_conn_enter_transmission(struct nbd_conn *conn)
{
	conn->phase = NBD_PHASE_TRANSMISSION;
	conn->rx = NBD_RX_HEADER;
	keel_poller_disarm(conn->poller); /* the handshake deadline no longer applies */
	conn->timer_due_ns = 0;
	KEEL_INFOLOG("%s: transmission (size %lu, flags 0x%x)", conn->label,
		     (unsigned long)conn->size, conn->tflags);
}
