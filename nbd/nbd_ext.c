/*
 * Extended headers (NBD_OPT_EXTENDED_HEADERS, option 11): the option, the 32-byte
 * request header with a 64-bit length, and the 32-byte reply chunk header every reply
 * uses once they are on.
 *
 * The rules applied (NBD protocol document as of its extended-headers revision; the
 * facts were taken from libnbd's lib/nbd-protocol.h and qemu's nbd/server.c, see
 * docs/nbd.md):
 *  - the option carries no data (else NBD_REP_ERR_INVALID); asking twice is
 *    NBD_REP_ERR_INVALID; it implies structured replies, so STRUCTURED_REPLY asked
 *    afterwards gets NBD_REP_ERR_EXT_HEADER_REQD, while EXTENDED_HEADERS after
 *    STRUCTURED_REPLY upgrades the connection;
 *  - requests then carry magic NBD_EXTENDED_REQUEST_MAGIC; anything else (a compact
 *    request included) is a broken stream and the connection is closed;
 *  - simple replies are no longer sent: a success without data is a NONE chunk, errors
 *    are ERROR chunks, block status is BLOCK_STATUS_EXT; each header's offset field
 *    echoes the request's offset;
 *  - TRIM, WRITE_ZEROES and BLOCK_STATUS lengths may exceed 32 bits; READ and WRITE stay
 *    within the advertised maximum payload (nbd_transmission.c);
 *  - NBD_CMD_FLAG_PAYLOAD_LEN is accepted on WRITE (where the length is the payload's
 *    anyway) and refused elsewhere, after reading and dropping the payload it announces
 *    (nbd_transmission.c).
 *
 * Who calls it: nbd_handshake.c (the option), nbd_transmission.c (request headers) and
 * nbd_reply.c (reply headers), on the connection's thread.
 */
#include <endian.h>
#include <stddef.h>
#include <string.h>

#include "keel/log.h"
#include "nbd/nbd_conn_internal.h"

_Static_assert(offsetof(struct nbd_simple_reply, cookie) ==
		       offsetof(struct nbd_extended_reply, cookie),
	       "the extended reply keeps the parsed cookie in place too");

void nbd_opt_extended_headers(struct nbd_conn *conn, uint32_t len)
{
	const char *why = NULL;
	int rc;

	if (len != 0) {
		why = "NBD_OPT_EXTENDED_HEADERS takes no data";
	} else if (conn->extended) {
		why = "extended headers are already negotiated";
	}
	if (why != NULL) {
		rc = nbd_send_opt_error(conn, NBD_OPT_EXTENDED_HEADERS, NBD_REP_ERR_INVALID, why);
	} else {
		conn->extended = true;
		conn->structured = true; /* extended headers imply structured replies */
		rc = nbd_send_opt_reply(conn, NBD_OPT_EXTENDED_HEADERS, NBD_REP_ACK, NULL, 0);
	}
	if (rc != 0) {
		nbd_conn_abort(conn);
	}
}

size_t nbd_req_hdr_size(const struct nbd_conn *conn)
{
	return conn->extended ? sizeof(struct nbd_extended_request) : sizeof(struct nbd_request);
}

void nbd_req_hdr_decode(const struct nbd_conn *conn, const uint8_t *wire, struct nbd_req_hdr *hdr)
{
	if (conn->extended) {
		struct nbd_extended_request ext;

		memcpy(&ext, wire, sizeof(ext));
		hdr->magic = be32toh(ext.magic);
		hdr->magic_ok = hdr->magic == NBD_EXTENDED_REQUEST_MAGIC;
		hdr->flags = be16toh(ext.flags);
		hdr->type = be16toh(ext.type);
		hdr->cookie = ext.cookie;
		hdr->offset = be64toh(ext.offset);
		hdr->len = be64toh(ext.len);
	} else {
		struct nbd_request req;

		memcpy(&req, wire, sizeof(req));
		hdr->magic = be32toh(req.magic);
		hdr->magic_ok = hdr->magic == NBD_REQUEST_MAGIC;
		hdr->flags = be16toh(req.flags);
		hdr->type = be16toh(req.type);
		hdr->cookie = req.cookie;
		hdr->offset = be64toh(req.offset);
		hdr->len = be32toh(req.len);
	}
}

void nbd_reply_ext_header(struct nbd_req *req, uint16_t type, uint64_t length)
{
	struct nbd_extended_reply *hdr = &req->rhdr.ext;

	/* the cookie at bytes 8..15 was stored when the request was parsed */
	hdr->magic = htobe32(NBD_EXTENDED_REPLY_MAGIC);
	hdr->flags = htobe16(NBD_REPLY_FLAG_DONE);
	hdr->type = htobe16(type);
	hdr->offset = htobe64(req->offset);
	hdr->length = htobe64(length);
}
