/*
 * The handshake options that turn on structured replies and meta contexts:
 * NBD_OPT_STRUCTURED_REPLY, NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT, and
 * the transmission flags they change (NBD_FLAG_SEND_DF only with structured replies).
 *
 * keel knows one meta context, "base:allocation" (id NBD_META_ID_BASE_ALLOCATION). The
 * rules applied, from the protocol document:
 *  - both meta context options need structured replies first (NBD_REP_ERR_INVALID);
 *  - the export name in the option must name this connection's export (empty: the
 *    default, which is it), else NBD_REP_ERR_UNKNOWN;
 *  - LIST with no queries lists every context, and "base:" every context of that
 *    namespace; SET takes exact names only, and with no queries selects nothing;
 *  - SET replaces the previous selection (a refused SET leaves nothing selected);
 *  - unknown namespaces and names are not errors: they just match nothing.
 *
 * Who calls it: nbd_handle_option (nbd_handshake.c), on the connection's thread.
 */
#include <endian.h>
#include <stdio.h>
#include <string.h>

#include "keel/log.h"
#include "nbd/nbd_conn_internal.h"

uint16_t nbd_conn_tflags(const struct nbd_conn *conn)
{
	uint16_t flags = conn->exp->tflags;

	if (conn->structured) {
		flags |= NBD_FLAG_SEND_DF;
	}
	return flags;
}

static void nbd_opt_refuse(struct nbd_conn *conn, uint32_t option, uint32_t type, const char *msg)
{
	if (nbd_send_opt_error(conn, option, type, msg) != 0) {
		nbd_conn_abort(conn);
	}
}

void nbd_opt_structured_reply(struct nbd_conn *conn, uint32_t len)
{
	if (len != 0) {
		nbd_opt_refuse(conn, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ERR_INVALID,
			       "NBD_OPT_STRUCTURED_REPLY takes no data");
		return;
	}
	if (conn->extended) {
		nbd_opt_refuse(conn, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ERR_EXT_HEADER_REQD,
			       "extended headers are negotiated: they carry structured replies");
		return;
	}
	if (conn->structured) {
		nbd_opt_refuse(conn, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ERR_INVALID,
			       "structured replies are already negotiated");
		return;
	}
	conn->structured = true;
	if (nbd_send_opt_reply(conn, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, NULL, 0) != 0) {
		nbd_conn_abort(conn);
	}
}

/* Whether \p query (\p len bytes) asks for base:allocation. LIST also takes "base:". */
static bool nbd_meta_query_matches(const uint8_t *query, uint32_t len, bool list)
{
	static const char name[] = NBD_META_BASE_ALLOCATION;
	static const char ns[] = "base:";

	if (len == sizeof(name) - 1 && memcmp(query, name, len) == 0) {
		return true;
	}
	return list && len == sizeof(ns) - 1 && memcmp(query, ns, len) == 0;
}

static int nbd_send_meta_context(struct nbd_conn *conn, uint32_t option, uint32_t id)
{
	uint8_t buf[4 + sizeof(NBD_META_BASE_ALLOCATION) - 1];
	uint32_t be_id = htobe32(id);

	memcpy(buf, &be_id, 4);
	memcpy(buf + 4, NBD_META_BASE_ALLOCATION, sizeof(NBD_META_BASE_ALLOCATION) - 1);
	return nbd_send_opt_reply(conn, option, NBD_REP_META_CONTEXT, buf, sizeof(buf));
}

void nbd_opt_meta_context(struct nbd_conn *conn, uint32_t option, const uint8_t *data, uint32_t len)
{
	bool set = option == NBD_OPT_SET_META_CONTEXT;
	uint32_t name_len, nqueries, pos;
	bool match = false;
	char msg[320];

	if (set) {
		conn->meta_allocation = false; /* replaced, or nothing if refused */
	}
	if (!conn->structured) {
		nbd_opt_refuse(conn, option, NBD_REP_ERR_INVALID,
			       "meta contexts need NBD_OPT_STRUCTURED_REPLY first");
		return;
	}
	if (len < 8) {
		nbd_opt_refuse(conn, option, NBD_REP_ERR_INVALID, "option data too short");
		return;
	}
	memcpy(&name_len, data, 4);
	name_len = be32toh(name_len);
	if (name_len > len - 8) {
		nbd_opt_refuse(conn, option, NBD_REP_ERR_INVALID,
			       "export name length exceeds the option");
		return;
	}
	memcpy(&nqueries, data + 4 + name_len, 4);
	nqueries = be32toh(nqueries);
	pos = 8 + name_len;
	/* Check the whole list before answering anything: a malformed option gets one
	 * error, never some contexts and then an error. */
	for (uint32_t i = 0; i < nqueries; i++) {
		uint32_t qlen;

		if (len - pos < 4) {
			nbd_opt_refuse(conn, option, NBD_REP_ERR_INVALID,
				       "number of queries does not match the option length");
			return;
		}
		memcpy(&qlen, data + pos, 4);
		qlen = be32toh(qlen);
		if (qlen > len - pos - 4) {
			nbd_opt_refuse(conn, option, NBD_REP_ERR_INVALID,
				       "query length exceeds the option");
			return;
		}
		if (nbd_meta_query_matches(data + pos + 4, qlen, !set)) {
			match = true;
		}
		pos += 4 + qlen;
	}
	if (pos != len) {
		nbd_opt_refuse(conn, option, NBD_REP_ERR_INVALID,
			       "trailing bytes after the last query");
		return;
	}
	if (!nbd_name_matches(conn, data + 4, name_len)) {
		snprintf(msg, sizeof(msg), "export '%.*s' not found",
			 (int)(name_len > 256 ? 256 : name_len), (const char *)data + 4);
		nbd_opt_refuse(conn, option, NBD_REP_ERR_UNKNOWN, msg);
		return;
	}
	if (!set && nqueries == 0) {
		match = true; /* LIST without queries: every context */
	}
	if (match &&
	    nbd_send_meta_context(conn, option, set ? NBD_META_ID_BASE_ALLOCATION : 0) != 0) {
		nbd_conn_abort(conn);
		return;
	}
	if (set) {
		conn->meta_allocation = match;
		KEEL_DEBUGLOG("%s: base:allocation %s", conn->label,
			      match ? "selected" : "not selected");
	}
	if (nbd_send_opt_reply(conn, option, NBD_REP_ACK, NULL, 0) != 0) {
		nbd_conn_abort(conn);
	}
}
