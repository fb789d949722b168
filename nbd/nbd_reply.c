/*
 * The bytes of one reply: a simple reply, or, once the client negotiated structured
 * replies or extended headers, one chunk with NBD_REPLY_FLAG_DONE (OFFSET_DATA for read data, BLOCK_STATUS
 * for extents, ERROR/ERROR_OFFSET with a message for failures, NONE for the rest).
 *
 * Why one chunk per request: keel reads a whole request into one buffer before it
 * replies, so the data always goes out as one OFFSET_DATA chunk; that also honours
 * NBD_CMD_FLAG_DF for free. The header and the fixed part of the payload sit together
 * in req->rhdr and the variable part (data, extents, message) is a second iovec, so a
 * structured read leaves in the same sendmsg() as a simple one (nbd_sock.c).
 *
 * Successful commands other than READ and BLOCK_STATUS keep the simple reply even with
 * structured replies (the spec allows it; libnbd, qemu and nbdkit's clients accept it):
 * it is 4 bytes shorter and what the kernel and the fast path already send.
 *
 * With extended headers (nbd_ext.c) every reply is an extended chunk: a success
 * without data is a NONE chunk and block status is BLOCK_STATUS_EXT.
 *
 * Who calls it: nbd_req_reply (nbd_transmission.c), on the connection's thread.
 */
#include <endian.h>
#include <stddef.h>
#include <string.h>

#include "nbd/nbd_conn_internal.h"

_Static_assert(offsetof(struct nbd_simple_reply, cookie) ==
		       offsetof(struct nbd_structured_reply, cookie),
	       "both reply headers keep the parsed cookie in place");

/* Longest error message sent; the spec wants them short and human-readable. */
#define NBD_ERRMSG_MAX 128u

static const char *nbd_wire_errmsg(uint32_t nbd_err)
{
	switch (nbd_err) {
	case NBD_EPERM:
		return "operation not permitted";
	case NBD_EIO:
		return "input/output error";
	case NBD_ENOMEM:
		return "out of memory";
	case NBD_EINVAL:
		return "invalid request";
	case NBD_ENOSPC:
		return "no space left on device";
	case NBD_EOVERFLOW:
		return "value too large";
	case NBD_ENOTSUP:
		return "operation not supported";
	case NBD_ESHUTDOWN:
		return "server is shutting down";
	default:
		return "error";
	}
}

/* Where the fixed part of a chunk's payload goes: after the negotiated header. */
static uint8_t *nbd_reply_fixed(struct nbd_req *req)
{
	return req->rhdr.bytes + (req->conn->extended ? sizeof(struct nbd_extended_reply)
						      : sizeof(struct nbd_structured_reply));
}

static void nbd_reply_chunk(struct nbd_req *req, uint16_t type, uint32_t fixed_len,
			    const void *data, uint32_t data_len)
{
	struct nbd_structured_reply *chunk = &req->rhdr.chunk;

	req->rdata = data;
	req->rdata_len = data_len;
	if (req->conn->extended) {
		nbd_reply_ext_header(req, type, (uint64_t)fixed_len + data_len);
		req->rhdr_len = (uint8_t)(sizeof(struct nbd_extended_reply) + fixed_len);
		return;
	}
	chunk->magic = htobe32(NBD_STRUCTURED_REPLY_MAGIC);
	chunk->flags = htobe16(NBD_REPLY_FLAG_DONE);
	chunk->type = htobe16(type);
	chunk->length = htobe32(fixed_len + data_len);
	req->rhdr_len = (uint8_t)(sizeof(*chunk) + fixed_len);
}

/*
 * An error chunk. A read that failed in the bdev says where (ERROR_OFFSET, the
 * request's offset: keel does not know a finer one); its buffer, no longer needed for
 * data, holds the message and the offset that follows it.
 */
static void nbd_reply_error(struct nbd_req *req, uint32_t nbd_err)
{
	const char *msg = req->errmsg != NULL ? req->errmsg : nbd_wire_errmsg(nbd_err);
	uint32_t be_err = htobe32(nbd_err);
	size_t full_len = strlen(msg);
	uint16_t msg_len = (uint16_t)(full_len < NBD_ERRMSG_MAX ? full_len : NBD_ERRMSG_MAX);
	uint16_t be_len = htobe16(msg_len);
	uint8_t *fixed = nbd_reply_fixed(req);

	memcpy(fixed, &be_err, 4);
	memcpy(fixed + 4, &be_len, 2);
	if (req->type == NBD_CMD_READ && req->buf != NULL && req->errmsg == NULL &&
	    req->len >= (uint64_t)msg_len + 8) {
		uint64_t be_off = htobe64(req->offset);
		uint8_t *tail = req->buf;

		memcpy(tail, msg, msg_len);
		memcpy(tail + msg_len, &be_off, 8);
		nbd_reply_chunk(req, NBD_REPLY_TYPE_ERROR_OFFSET, 6, tail, (uint32_t)msg_len + 8);
		return;
	}
	nbd_reply_chunk(req, NBD_REPLY_TYPE_ERROR, 6, msg, msg_len);
}

void nbd_reply_build(struct nbd_req *req, uint32_t nbd_err)
{
	struct nbd_conn *conn = req->conn;

	if (!conn->structured) {
		req->rhdr.simple.magic = htobe32(NBD_SIMPLE_REPLY_MAGIC);
		req->rhdr.simple.error = htobe32(nbd_err);
		req->rhdr_len = sizeof(req->rhdr.simple);
		req->rdata = req->buf;
		req->rdata_len = (nbd_err == 0 && req->type == NBD_CMD_READ) ? (uint32_t)req->len
									     : 0;
		return;
	}
	if (nbd_err != 0) {
		nbd_reply_error(req, nbd_err);
		return;
	}
	switch (req->type) {
	case NBD_CMD_READ:
		if (req->len > 0) {
			uint64_t be_off = htobe64(req->offset);

			memcpy(nbd_reply_fixed(req), &be_off, 8);
			nbd_reply_chunk(req, NBD_REPLY_TYPE_OFFSET_DATA, 8, req->buf,
					(uint32_t)req->len);
			return;
		}
		nbd_reply_chunk(req, NBD_REPLY_TYPE_NONE, 0, NULL, 0);
		return;
	case NBD_CMD_BLOCK_STATUS: {
		uint32_t be_id = htobe32(NBD_META_ID_BASE_ALLOCATION);
		uint8_t *fixed = nbd_reply_fixed(req);

		memcpy(fixed, &be_id, 4);
		if (conn->extended) {
			uint32_t be_count = htobe32(
				req->rdata_len / (uint32_t)sizeof(struct nbd_block_descriptor_ext));

			memcpy(fixed + 4, &be_count, 4);
			nbd_reply_chunk(req, NBD_REPLY_TYPE_BLOCK_STATUS_EXT, 8, req->buf,
					req->rdata_len);
			return;
		}
		nbd_reply_chunk(req, NBD_REPLY_TYPE_BLOCK_STATUS, 4, req->buf, req->rdata_len);
		return;
	}
	default:
		if (conn->extended) {
			nbd_reply_chunk(req, NBD_REPLY_TYPE_NONE, 0, NULL, 0);
			return;
		}
		req->rhdr.simple.magic = htobe32(NBD_SIMPLE_REPLY_MAGIC);
		req->rhdr.simple.error = 0;
		req->rhdr_len = sizeof(req->rhdr.simple);
		req->rdata = NULL;
		req->rdata_len = 0;
		return;
	}
}
