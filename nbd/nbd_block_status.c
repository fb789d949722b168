/*
 * NBD_CMD_BLOCK_STATUS for the base:allocation context: ask the bdev which parts of
 * the range are allocated (keel_bdev_get_allocation) and answer one BLOCK_STATUS chunk
 * (nbd_reply.c) with NBD_STATE_HOLE / NBD_STATE_ZERO descriptors.
 *
 * The extents go into a buffer from the payload cache: the bdev writes its 16-byte
 * runs there and the completion packs them in place into 8-byte wire descriptors. At
 * most NBD_MAX_EXTENTS per reply (1 with NBD_CMD_FLAG_REQ_ONE), which bounds the
 * buffer at 32 KiB; the client asks again from where the answer ended. A bdev that
 * cannot tell gets the whole range reported as data, which the spec allows.
 *
 * With extended headers the descriptors are the 16-byte BLOCK_STATUS_EXT ones, the
 * same size as the bdev's runs, so they are converted in place one for one and the
 * request length may exceed 32 bits.
 *
 * Who calls it: nbd_transmission.c (request handling, submission and completion), on
 * the connection's thread.
 */
#include <endian.h>
#include <errno.h>

#include "keel/bdev.h"
#include "nbd/nbd_conn_internal.h"

uint32_t nbd_block_status_max(const struct nbd_req *req)
{
	return (req->flags & NBD_CMD_FLAG_REQ_ONE) ? 1u : NBD_MAX_EXTENTS;
}

/* Answer "all data" for the whole range: one descriptor with no flags. */
static void nbd_block_status_all_data(struct nbd_req *req)
{
	struct nbd_block_descriptor *d = req->buf;

	if (req->conn->extended) {
		struct nbd_block_descriptor_ext *e = req->buf;

		e->length = htobe64(req->len);
		e->flags = 0;
		req->rdata_len = sizeof(*e);
		return;
	}
	d->length = htobe32((uint32_t)req->len);
	d->flags = 0;
	req->rdata_len = sizeof(*d);
}

static uint32_t nbd_state_of(uint32_t extent_flags)
{
	uint32_t state = 0;

	if (extent_flags & KEEL_BDEV_EXTENT_HOLE) {
		state |= NBD_STATE_HOLE;
	}
	if (extent_flags & KEEL_BDEV_EXTENT_ZERO) {
		state |= NBD_STATE_ZERO;
	}
	return state;
}

int nbd_block_status_encode(struct nbd_req *req, int status)
{
	const struct keel_bdev_extent *ext = req->buf;
	struct nbd_block_descriptor *d = req->buf;
	struct nbd_block_descriptor_ext *e = req->buf;
	bool extended = req->conn->extended;
	uint32_t max = nbd_block_status_max(req);
	uint64_t covered = 0;
	uint32_t n = 0;

	if (status == -ENOTSUP) {
		nbd_block_status_all_data(req);
		return 0;
	}
	if (status != 0) {
		return status;
	}
	/*
	 * Descriptor i (8 bytes at 8i) only overwrites runs before run i (16 bytes at
	 * 16i), which are already read: packing in place is safe.
	 */
	for (uint32_t i = 0; i < max && ext[i].length != 0 && covered < req->len; i++) {
		uint64_t length = ext[i].length;
		uint32_t state = nbd_state_of(ext[i].flags);

		if (length > req->len - covered) {
			length = req->len - covered; /* never past what was asked */
		}
		covered += length;
		if (extended) {
			/* run i is read whole before descriptor i, same place, is written */
			e[n].length = htobe64(length);
			e[n].flags = htobe64(state);
		} else {
			d[n].length = htobe32((uint32_t)length);
			d[n].flags = htobe32(state);
		}
		n++;
	}
	if (n == 0) {
		nbd_block_status_all_data(req); /* a module that said nothing: data */
		return 0;
	}
	req->rdata_len = n * (uint32_t)(extended ? sizeof(*e) : sizeof(*d));
	return 0;
}

int nbd_block_status_submit(struct nbd_req *req)
{
	struct nbd_conn *conn = req->conn;
	uint32_t bytes = nbd_block_status_max(req) * (uint32_t)sizeof(struct keel_bdev_extent);

	req->buf = nbd_buf_get(bytes, 16, &req->buf_class);
	if (req->buf == NULL) {
		req->errmsg = "no memory for the block status reply";
		return NBD_ENOMEM;
	}
	req->buf_len = bytes;
	conn->buf_bytes += bytes;
	if (!keel_bdev_io_type_supported(keel_bdev_desc_get_bdev(conn->desc),
					 KEEL_BDEV_IO_GET_ALLOCATION)) {
		nbd_block_status_all_data(req);
		nbd_req_reply(req, 0);
		return 0;
	}
	req->op = NBD_OP_BLOCK_STATUS;
	nbd_req_submit(req);
	return 0;
}
