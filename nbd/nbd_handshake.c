/*
 * The fixed-newstyle handshake of one NBD connection: client flags, then options
 * (EXPORT_NAME, INFO, GO, LIST, ABORT, STARTTLS through nbd_tls.c, which also refuses
 * options before TLS on exports that require it; anything else is answered
 * NBD_REP_ERR_UNSUP),
 * refusals of a connection over a limit (nbd_conn_refuse), and the send buffer the
 * option replies are written to (nbd_sock.c sends it).
 *
 * Each option is parsed only once it is complete in the receive buffer; an option too
 * long to hold is skipped and answered NBD_REP_ERR_TOO_BIG. EXPORT_NAME and GO move the
 * connection to transmission (nbd_transmission.c).
 *
 * Who calls it: the receive path (nbd_sock.c) through nbd_parse_handshake, creation
 * (nbd_conn.c) for the greeting through nbd_wbuf_append, and nbd_server.c through
 * nbd_conn_refuse. Owning thread only.
 */
#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/log.h"
#include "keel/reactor.h"
#include "nbd/nbd_conn_internal.h"
#include "nbd/nbd_tls.h"

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

/* ------------------------------------------------------------------------------ */
/* Reply bytes                                                                    */
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

int nbd_wbuf_append(struct nbd_conn *conn, const void *data, size_t len)
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

int nbd_send_opt_reply(struct nbd_conn *conn, uint32_t option, uint32_t type, const void *data,
		       size_t len)
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

int nbd_send_opt_error(struct nbd_conn *conn, uint32_t option, uint32_t type, const char *msg)
{
	KEEL_INFOLOG("%s: option %u refused: %s", conn->label, option, msg);
	return nbd_send_opt_reply(conn, option, type, msg, strlen(msg));
}

/* ------------------------------------------------------------------------------ */
/* Options                                                                        */
/* ------------------------------------------------------------------------------ */

bool nbd_name_matches(const struct nbd_conn *conn, const uint8_t *name, uint32_t len)
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
	rep.flags = htobe16(nbd_conn_tflags(conn));
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
		.flags = htobe16(nbd_conn_tflags(conn)),
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
	if (!nbd_tls_option_allowed(conn, option)) {
		return; /* refused: TLS is required first */
	}

	switch (option) {
	case NBD_OPT_EXPORT_NAME:
		if (conn->extended) { /* forbidden then, and it has no error reply */
			KEEL_WARNLOG("%s: NBD_OPT_EXPORT_NAME after extended headers, closing",
				     conn->label);
			nbd_conn_abort(conn);
			return;
		}
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
	case NBD_OPT_STARTTLS:
		nbd_tls_opt_starttls(conn, len);
		return;
	case NBD_OPT_INFO:
	case NBD_OPT_GO:
		nbd_opt_info_go(conn, option, data, len);
		return;
	case NBD_OPT_STRUCTURED_REPLY: /* nbd_structured.c */
		nbd_opt_structured_reply(conn, len);
		return;
	case NBD_OPT_EXTENDED_HEADERS: /* nbd_ext.c */
		nbd_opt_extended_headers(conn, len);
		return;
	case NBD_OPT_LIST_META_CONTEXT:
	case NBD_OPT_SET_META_CONTEXT:
		nbd_opt_meta_context(conn, option, data, len);
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

/* ------------------------------------------------------------------------------ */
/* Parsing                                                                        */
/* ------------------------------------------------------------------------------ */

void nbd_parse_handshake(struct nbd_conn *conn)
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
