/*
 * JSON-RPC 2.0 protocol engine: method table, framing of back-to-back JSON values,
 * request validation, dispatch, batches, replies and parameter decoding.
 *
 * Framing: a small scanner tracks nesting depth and string state across reads, so a
 * value split at any byte is found in O(total bytes) and jansson only ever parses one
 * complete value. There is no resync point after malformed JSON, so a parse error
 * answers -32700 and ends the connection (the caller closes it after flushing).
 *
 * Lifetime: a connection is reference counted. The socket layer holds one reference,
 * each request (or batch) waiting for its handler holds one. A reply that comes after
 * the socket closed is dropped and releases its reference; the last one frees.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/log.h"
#include "rpc_internal.h"
#include "rpc_methods.h"

struct rpc_method {
	const char *name;
	const char *help;
	keel_rpc_handler_fn fn;
	struct rpc_method *next; /* sorted by name */
};

static struct rpc_method *g_methods;

struct rpc_conn {
	uint32_t refs;
	bool closed;  /* the socket layer let go; output is discarded */
	bool broken;  /* protocol error: input is ignored from now on */

	char *in;
	size_t in_len;
	size_t in_cap;

	/* scanner state for the value being assembled, offsets into in */
	bool started;
	size_t start;
	size_t pos;
	int depth;
	bool in_str;
	bool esc;
	char kind; /* '{' container, '"' top-level string, 't' other token */

	char *out;
	size_t out_off; /* first unwritten byte */
	size_t out_len;
	size_t out_cap;

	uint32_t pending;
};

struct rpc_batch {
	struct rpc_conn *conn;
	json_t *responses;
	uint32_t outstanding; /* requests not answered, plus one while dispatching */
};

struct keel_rpc_request {
	struct rpc_conn *conn;
	struct rpc_batch *batch; /* NULL for a single request */
	json_t *id;              /* NULL for a notification */
	char method[64];         /* for log lines */
};

/* ------------------------------------------------------------------------------ */
/* Method table                                                                    */
/* ------------------------------------------------------------------------------ */

int keel_rpc_register_method(const char *name, keel_rpc_handler_fn fn, const char *help)
{
	struct rpc_method **pp, *m;

	if (name == NULL || name[0] == '\0' || fn == NULL) {
		return -EINVAL;
	}
	for (pp = &g_methods; *pp != NULL; pp = &(*pp)->next) {
		int cmp = strcmp((*pp)->name, name);

		if (cmp == 0) {
			return -EEXIST;
		}
		if (cmp > 0) {
			break;
		}
	}
	m = calloc(1, sizeof(*m));
	if (m == NULL) {
		return -ENOMEM;
	}
	m->name = name;
	m->help = help != NULL ? help : "";
	m->fn = fn;
	m->next = *pp;
	*pp = m;
	return 0;
}

static struct rpc_method *rpc_method_find(const char *name)
{
	struct rpc_method *m;

	for (m = g_methods; m != NULL; m = m->next) {
		if (strcmp(m->name, name) == 0) {
			return m;
		}
	}
	return NULL;
}

void rpc_method_foreach(void (*fn)(const char *name, const char *help, void *ctx), void *ctx)
{
	struct rpc_method *m;

	for (m = g_methods; m != NULL; m = m->next) {
		fn(m->name, m->help, ctx);
	}
}

void rpc_methods_clear(void)
{
	while (g_methods != NULL) {
		struct rpc_method *m = g_methods;

		g_methods = m->next;
		free(m);
	}
}

/* ------------------------------------------------------------------------------ */
/* Connection buffers                                                              */
/* ------------------------------------------------------------------------------ */

struct rpc_conn *rpc_conn_create(void)
{
	struct rpc_conn *conn = calloc(1, sizeof(*conn));

	if (conn != NULL) {
		conn->refs = 1;
	}
	return conn;
}

static void rpc_conn_get(struct rpc_conn *conn)
{
	conn->refs++;
}

static void rpc_conn_put(struct rpc_conn *conn)
{
	if (--conn->refs > 0) {
		return;
	}
	free(conn->in);
	free(conn->out);
	free(conn);
}

void rpc_conn_close(struct rpc_conn *conn)
{
	if (conn == NULL) {
		return;
	}
	conn->closed = true;
	/* Nobody will read these any more; pending replies only release references. */
	free(conn->out);
	conn->out = NULL;
	conn->out_off = conn->out_len = conn->out_cap = 0;
	rpc_conn_put(conn);
}

const char *rpc_conn_output(struct rpc_conn *conn, size_t *len)
{
	*len = conn->out_len - conn->out_off;
	return conn->out != NULL ? conn->out + conn->out_off : "";
}

void rpc_conn_consume_output(struct rpc_conn *conn, size_t n)
{
	conn->out_off += n;
	if (conn->out_off >= conn->out_len) {
		conn->out_off = conn->out_len = 0;
	}
}

uint32_t rpc_conn_pending(const struct rpc_conn *conn)
{
	return conn->pending;
}

bool rpc_conn_is_broken(const struct rpc_conn *conn)
{
	return conn->broken;
}

static int rpc_buf_reserve(char **buf, size_t *cap, size_t need)
{
	size_t ncap;
	char *nbuf;

	if (need <= *cap) {
		return 0;
	}
	ncap = *cap != 0 ? *cap : 4096;
	while (ncap < need) {
		ncap *= 2;
	}
	nbuf = realloc(*buf, ncap);
	if (nbuf == NULL) {
		return -ENOMEM;
	}
	*buf = nbuf;
	*cap = ncap;
	return 0;
}

/* Queue one JSON value as a compact line. Dropped when the socket is gone. */
static void rpc_conn_send_json(struct rpc_conn *conn, json_t *value)
{
	char *text;
	size_t len;

	if (conn->closed) {
		return;
	}
	text = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY);
	if (text == NULL) {
		KEEL_ERRLOG("rpc: out of memory encoding a reply; reply dropped");
		return;
	}
	len = strlen(text);
	if (conn->out_off > 0 && conn->out_off == conn->out_len) {
		conn->out_off = conn->out_len = 0;
	}
	if (rpc_buf_reserve(&conn->out, &conn->out_cap, conn->out_len + len + 1) != 0) {
		KEEL_ERRLOG("rpc: out of memory queueing a reply of %zu bytes; reply dropped", len);
		free(text);
		return;
	}
	memcpy(conn->out + conn->out_len, text, len);
	conn->out[conn->out_len + len] = '\n';
	conn->out_len += len + 1;
	free(text);
}

/* ------------------------------------------------------------------------------ */
/* Replies                                                                         */
/* ------------------------------------------------------------------------------ */

static json_t *rpc_error_object(int code, const char *message)
{
	return json_pack("{s:i,s:s}", "code", code, "message", message);
}

/* Build {"jsonrpc":"2.0","id":id,("result"|"error"):payload}; steals payload. */
static json_t *rpc_response(json_t *id, const char *key, json_t *payload)
{
	json_t *resp = json_object();

	if (resp == NULL) {
		json_decref(payload);
		return NULL;
	}
	json_object_set_new(resp, "jsonrpc", json_string("2.0"));
	json_object_set(resp, "id", id != NULL ? id : json_null());
	json_object_set_new(resp, key, payload != NULL ? payload : json_null());
	return resp;
}

/* A response that belongs to \p batch (or is sent on its own when batch is NULL). */
static void rpc_emit(struct rpc_conn *conn, struct rpc_batch *batch, json_t *resp)
{
	if (resp == NULL) {
		KEEL_ERRLOG("rpc: out of memory building a reply; reply dropped");
		return;
	}
	if (batch != NULL) {
		json_array_append_new(batch->responses, resp);
	} else {
		rpc_conn_send_json(conn, resp);
		json_decref(resp);
	}
}

static void rpc_batch_put(struct rpc_batch *batch)
{
	if (--batch->outstanding > 0) {
		return;
	}
	/* A batch of notifications only gets no reply at all (JSON-RPC 2.0 section 6). */
	if (json_array_size(batch->responses) > 0) {
		rpc_conn_send_json(batch->conn, batch->responses);
	}
	json_decref(batch->responses);
	batch->conn->pending--;
	rpc_conn_put(batch->conn);
	free(batch);
}

static void rpc_request_finish(struct keel_rpc_request *req, const char *key, json_t *payload)
{
	struct rpc_conn *conn = req->conn;

	if (req->id != NULL) {
		rpc_emit(conn, req->batch, rpc_response(req->id, key, payload));
	} else {
		json_decref(payload);
	}
	json_decref(req->id);
	if (req->batch != NULL) {
		rpc_batch_put(req->batch);
	} else {
		conn->pending--;
		rpc_conn_put(conn);
	}
	free(req);
}

void keel_rpc_send_result(struct keel_rpc_request *req, json_t *result)
{
	rpc_request_finish(req, "result", result != NULL ? result : json_true());
}

void keel_rpc_send_error(struct keel_rpc_request *req, int code, const char *fmt, ...)
{
	char *msg = NULL;
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = vasprintf(&msg, fmt, ap);
	va_end(ap);
	if (rc < 0) {
		msg = NULL;
	}
	KEEL_INFOLOG("rpc: %s failed (%d): %s", req->method, code, msg != NULL ? msg : "?");
	rpc_request_finish(req, "error",
			   rpc_error_object(code, msg != NULL ? msg : "out of memory"));
	free(msg);
}

void *rpc_ctx_calloc(struct keel_rpc_request *req, size_t size)
{
	void *ctx = calloc(1, size);

	if (ctx == NULL) {
		keel_rpc_send_error(req, -ENOMEM, "out of memory");
	}
	return ctx;
}

/* An error for a message that never became a request (bad shape, unknown method). */
static void rpc_send_early_error(struct rpc_conn *conn, struct rpc_batch *batch, json_t *id,
				 int code, const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void rpc_send_early_error(struct rpc_conn *conn, struct rpc_batch *batch, json_t *id,
				 int code, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	rpc_emit(conn, batch, rpc_response(id, "error", rpc_error_object(code, msg)));
}

/* ------------------------------------------------------------------------------ */
/* Dispatch                                                                        */
/* ------------------------------------------------------------------------------ */

static void rpc_dispatch_one(struct rpc_conn *conn, struct rpc_batch *batch, json_t *msg)
{
	struct keel_rpc_request *req;
	struct rpc_method *m;
	json_t *version, *id, *method, *params;
	const char *name;

	if (!json_is_object(msg)) {
		rpc_send_early_error(conn, batch, NULL, KEEL_RPC_INVALID_REQUEST,
				     "Invalid request: expected a JSON object");
		return;
	}
	id = json_object_get(msg, "id");
	if (id != NULL && !json_is_string(id) && !json_is_number(id) && !json_is_null(id)) {
		rpc_send_early_error(conn, batch, NULL, KEEL_RPC_INVALID_REQUEST,
				     "Invalid request: \"id\" must be a string, a number or null");
		return;
	}
	version = json_object_get(msg, "jsonrpc");
	if (!json_is_string(version) || strcmp(json_string_value(version), "2.0") != 0) {
		rpc_send_early_error(conn, batch, id, KEEL_RPC_INVALID_REQUEST,
				     "Invalid request: \"jsonrpc\" must be \"2.0\"");
		return;
	}
	method = json_object_get(msg, "method");
	if (!json_is_string(method)) {
		rpc_send_early_error(conn, batch, id, KEEL_RPC_INVALID_REQUEST,
				     "Invalid request: \"method\" must be a string");
		return;
	}
	params = json_object_get(msg, "params");
	if (params != NULL && !json_is_object(params) && !json_is_array(params)) {
		rpc_send_early_error(conn, batch, id, KEEL_RPC_INVALID_REQUEST,
				     "Invalid request: \"params\" must be an object or an array");
		return;
	}
	name = json_string_value(method);
	m = rpc_method_find(name);
	if (m == NULL) {
		/* Notifications never get a reply, not even an error. */
		if (id != NULL) {
			rpc_send_early_error(conn, batch, id, KEEL_RPC_METHOD_NOT_FOUND,
					     "Method not found: '%.128s' (rpc_get_methods lists "
					     "the methods)", name);
		}
		return;
	}

	req = calloc(1, sizeof(*req));
	if (req == NULL) {
		if (id != NULL) {
			rpc_send_early_error(conn, batch, id, KEEL_RPC_INTERNAL_ERROR,
					     "Out of memory");
		}
		return;
	}
	req->conn = conn;
	req->batch = batch;
	req->id = id != NULL ? json_incref(id) : NULL;
	snprintf(req->method, sizeof(req->method), "%s", name);
	if (batch != NULL) {
		batch->outstanding++;
	} else {
		conn->pending++;
		rpc_conn_get(conn);
	}
	KEEL_DEBUGLOG("rpc: calling %s", name);
	m->fn(req, params);
}

static void rpc_dispatch(struct rpc_conn *conn, json_t *msg)
{
	struct rpc_batch *batch;
	size_t i;

	if (!json_is_array(msg)) {
		rpc_dispatch_one(conn, NULL, msg);
		return;
	}
	if (json_array_size(msg) == 0) {
		rpc_send_early_error(conn, NULL, NULL, KEEL_RPC_INVALID_REQUEST,
				     "Invalid request: empty batch");
		return;
	}
	batch = calloc(1, sizeof(*batch));
	if (batch == NULL || (batch->responses = json_array()) == NULL) {
		free(batch);
		rpc_send_early_error(conn, NULL, NULL, KEEL_RPC_INTERNAL_ERROR, "Out of memory");
		return;
	}
	batch->conn = conn;
	batch->outstanding = 1; /* dispatching; dropped below */
	conn->pending++;
	rpc_conn_get(conn);
	for (i = 0; i < json_array_size(msg); i++) {
		rpc_dispatch_one(conn, batch, json_array_get(msg, i));
	}
	rpc_batch_put(batch);
}

/* ------------------------------------------------------------------------------ */
/* Framing                                                                         */
/* ------------------------------------------------------------------------------ */

static bool rpc_is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static bool rpc_is_delim(char c)
{
	return rpc_is_space(c) || c == '{' || c == '}' || c == '[' || c == ']' || c == ',' ||
	       c == ':' || c == '"';
}

/*
 * Advance the scanner. \return true when in[start, pos) is one complete value.
 */
static bool rpc_scan(struct rpc_conn *conn)
{
	while (conn->pos < conn->in_len) {
		char c = conn->in[conn->pos];

		if (!conn->started) {
			if (rpc_is_space(c)) {
				conn->pos++;
				continue;
			}
			conn->started = true;
			conn->start = conn->pos;
			conn->depth = 0;
			conn->in_str = false;
			conn->esc = false;
			conn->pos++;
			if (c == '{' || c == '[') {
				conn->kind = '{';
				conn->depth = 1;
			} else if (c == '"') {
				conn->kind = '"';
				conn->in_str = true;
			} else if (c == '}' || c == ']' || c == ',' || c == ':') {
				return true; /* a stray delimiter: jansson names the error */
			} else {
				conn->kind = 't';
			}
			continue;
		}
		if (conn->kind == 't') {
			if (rpc_is_delim(c)) {
				return true;
			}
			conn->pos++;
			continue;
		}
		conn->pos++;
		if (conn->in_str) {
			if (conn->esc) {
				conn->esc = false;
			} else if (c == '\\') {
				conn->esc = true;
			} else if (c == '"') {
				conn->in_str = false;
				if (conn->kind == '"') {
					return true;
				}
			}
		} else if (c == '"') {
			conn->in_str = true;
		} else if (c == '{' || c == '[') {
			conn->depth++;
		} else if (c == '}' || c == ']') {
			if (--conn->depth == 0) {
				return true;
			}
		}
	}
	return false;
}

static void rpc_conn_compact_input(struct rpc_conn *conn)
{
	size_t keep_from = conn->started ? conn->start : conn->pos;

	if (keep_from == 0) {
		return;
	}
	memmove(conn->in, conn->in + keep_from, conn->in_len - keep_from);
	conn->in_len -= keep_from;
	conn->pos -= keep_from;
	if (conn->started) {
		conn->start = 0;
	}
}

static int rpc_conn_fail(struct rpc_conn *conn, int code, int rc, const char *msg)
{
	rpc_send_early_error(conn, NULL, NULL, code, "%s", msg);
	conn->broken = true;
	free(conn->in);
	conn->in = NULL;
	conn->in_len = conn->in_cap = conn->pos = conn->start = 0;
	conn->started = false;
	return rc;
}

static int rpc_conn_oversized(struct rpc_conn *conn)
{
	char msg[160];

	snprintf(msg, sizeof(msg), "Invalid request: larger than the limit of %u bytes; "
		 "the connection is closed", KEEL_RPC_MAX_REQUEST);
	KEEL_WARNLOG("rpc: request larger than %u bytes; closing the connection",
		     KEEL_RPC_MAX_REQUEST);
	return rpc_conn_fail(conn, KEEL_RPC_INVALID_REQUEST, -EMSGSIZE, msg);
}

int rpc_conn_feed(struct rpc_conn *conn, const char *data, size_t len)
{
	int rc = 0;

	if (conn->broken || conn->closed) {
		return conn->broken ? -EPROTO : 0;
	}
	if (len == 0) {
		return 0;
	}
	rpc_conn_compact_input(conn);
	if (rpc_buf_reserve(&conn->in, &conn->in_cap, conn->in_len + len) != 0) {
		return -ENOMEM;
	}
	memcpy(conn->in + conn->in_len, data, len);
	conn->in_len += len;

	/* Handlers may close the server (and this connection) from inside dispatch. */
	rpc_conn_get(conn);
	while (!conn->closed) {
		json_error_t err;
		json_t *msg;
		size_t vlen;

		if (!rpc_scan(conn)) {
			if (conn->started && conn->in_len - conn->start > KEEL_RPC_MAX_REQUEST) {
				rc = rpc_conn_oversized(conn);
			}
			break;
		}
		vlen = conn->pos - conn->start;
		if (vlen > KEEL_RPC_MAX_REQUEST) {
			rc = rpc_conn_oversized(conn);
			break;
		}
		msg = json_loadb(conn->in + conn->start, vlen, JSON_DECODE_ANY, &err);
		conn->started = false;
		if (msg == NULL) {
			char text[300];

			snprintf(text, sizeof(text), "Parse error: %s (at byte %d of the request); "
				 "the connection is closed", err.text, err.position);
			KEEL_INFOLOG("rpc: %s", text);
			rc = rpc_conn_fail(conn, KEEL_RPC_PARSE_ERROR, -EPROTO, text);
			break;
		}
		rpc_dispatch(conn, msg);
		json_decref(msg);
	}
	rpc_conn_put(conn);
	return rc;
}

/* ------------------------------------------------------------------------------ */
/* Parameter decoding                                                              */
/* ------------------------------------------------------------------------------ */

static const char *rpc_param_expected(enum keel_rpc_param_type type)
{
	switch (type) {
	case KEEL_RPC_PARAM_STRING:
		return "expected a string";
	case KEEL_RPC_PARAM_UINT64:
		return "expected an integer >= 0";
	case KEEL_RPC_PARAM_UINT32:
		return "expected an integer from 0 to 4294967295";
	case KEEL_RPC_PARAM_BOOL:
		return "expected true or false";
	case KEEL_RPC_PARAM_INT64:
		return "expected an integer";
	case KEEL_RPC_PARAM_DOUBLE:
		return "expected a number";
	case KEEL_RPC_PARAM_JSON:
		break;
	}
	return "expected a JSON value";
}

static bool rpc_param_store(const struct keel_rpc_param *p, json_t *v, void *out)
{
	char *dst = (char *)out + p->offset;

	switch (p->type) {
	case KEEL_RPC_PARAM_STRING:
		if (!json_is_string(v)) {
			return false;
		}
		*(const char **)dst = json_string_value(v);
		return true;
	case KEEL_RPC_PARAM_UINT64:
		if (!json_is_integer(v) || json_integer_value(v) < 0) {
			return false;
		}
		*(uint64_t *)dst = (uint64_t)json_integer_value(v);
		return true;
	case KEEL_RPC_PARAM_UINT32:
		if (!json_is_integer(v) || json_integer_value(v) < 0 ||
		    json_integer_value(v) > UINT32_MAX) {
			return false;
		}
		*(uint32_t *)dst = (uint32_t)json_integer_value(v);
		return true;
	case KEEL_RPC_PARAM_BOOL:
		if (!json_is_boolean(v)) {
			return false;
		}
		*(bool *)dst = json_is_true(v);
		return true;
	case KEEL_RPC_PARAM_INT64:
		if (!json_is_integer(v)) {
			return false;
		}
		*(int64_t *)dst = (int64_t)json_integer_value(v);
		return true;
	case KEEL_RPC_PARAM_DOUBLE:
		if (!json_is_number(v)) {
			return false;
		}
		*(double *)dst = json_number_value(v);
		return true;
	case KEEL_RPC_PARAM_JSON:
		*(json_t **)dst = v;
		return true;
	}
	return false;
}

bool keel_rpc_decode_params(struct keel_rpc_request *req, json_t *params,
			    const struct keel_rpc_param *table, size_t count, void *out)
{
	const char *key;
	json_t *v;
	size_t i;

	if (params != NULL && !json_is_object(params)) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "params must be an object with named parameters");
		return false;
	}
	if (params != NULL) {
		json_object_foreach(params, key, v) {
			for (i = 0; i < count; i++) {
				if (strcmp(table[i].name, key) == 0) {
					break;
				}
			}
			if (i == count) {
				keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
						    "unknown parameter '%.64s'", key);
				return false;
			}
		}
	}
	for (i = 0; i < count; i++) {
		const struct keel_rpc_param *p = &table[i];

		v = params != NULL ? json_object_get(params, p->name) : NULL;
		/* An explicit null reads as "not given" for optional parameters. */
		if (v == NULL || (json_is_null(v) && p->optional && p->type != KEEL_RPC_PARAM_JSON)) {
			if (!p->optional) {
				keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
						    "missing parameter '%s'", p->name);
				return false;
			}
			continue;
		}
		if (!rpc_param_store(p, v, out)) {
			keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS, "%s: %s", p->name,
					    rpc_param_expected(p->type));
			return false;
		}
	}
	return true;
}
