/*
 * JSON-RPC 2.0 protocol engine: method table, framing of back-to-back JSON values,
 * request validation, dispatch, batches, replies and parameter decoding.
 *
 * Framing: a small scanner tracks nesting depth and string state across reads, so a
 * value split at any byte is found in O(total bytes) and jansson only ever parses one
 * complete value. There is no resync point after malformed JSON, so a parse error
 * answers -32700 and ends the connection (the caller closes it after flushing).
 *
 * Bounded work per call: rpc_conn_process() handles at most RPC_CONN_BUDGET requests
 * (batch members count one each), and stops early once RPC_CONN_SLICE_NS have passed,
 * then returns; so one client with a large batch or a long pipeline holds the main
 * reactor for about one request plus a millisecond at a time; the socket layer calls
 * it again on its next run. Nothing new is dispatched while the client leaves RPC_OUTPUT_PAUSE
 * bytes of replies unread or max_batch requests are still being handled: a client
 * that does not read stops being served instead of being buffered for.
 *
 * Batches are never held as one JSON tree. The scanner records where the top-level
 * commas of an array are; the batch is parsed once to check it is valid JSON (and
 * freed at once), then each member is parsed from its own bytes when its turn comes.
 * Responses are streamed: "[" before the first, "," between, "]\n" after the last, so
 * a batch is one array on the wire but never one tree or one string in memory. While
 * a batch's array is open nothing else may be written on the connection, so a batch
 * starts only once every earlier request was answered, and nothing after it starts
 * before its last member answered.
 *
 * Every response is encoded straight into the output buffer with a size limit: one
 * over max_response bytes, or one that would leave more than max_response +
 * RPC_OUTPUT_PAUSE bytes unread, is replaced by a short error naming the limit.
 *
 * Lifetime: a connection is reference counted. The socket layer holds one reference,
 * each request waiting for its handler holds one. A reply that comes after the socket
 * closed is dropped and releases its reference; the last one frees. Batch members not
 * started when the socket closes are never run.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/log.h"
#include "keel/reactor.h"
#include "rpc_internal.h"
#include "rpc_methods.h"

/* Requests (or batch members) handled per rpc_conn_process() call, and its time. */
#define RPC_CONN_BUDGET 16
#define RPC_CONN_SLICE_NS 1000000u
/* Stop dispatching while this many reply bytes wait for the client to read them. */
#define RPC_OUTPUT_PAUSE (256u << 10)
/* Buffers larger than this are freed when they empty, so idle connections stay small. */
#define RPC_BUF_KEEP (64u << 10)

struct rpc_method {
	const char *name;
	const char *help;
	keel_rpc_handler_fn fn;
	struct rpc_method *next; /* sorted by name */
};

static struct rpc_method *g_methods;

static uint32_t g_max_batch = KEEL_RPC_DEFAULT_MAX_BATCH;
static uint32_t g_max_response = KEEL_RPC_DEFAULT_MAX_RESPONSE;

/* The one batch a connection may be answering. */
struct rpc_batch {
	bool active;
	bool opened;          /* "[" was written */
	uint32_t count;       /* members */
	uint32_t next;        /* next member to dispatch */
	uint32_t outstanding; /* dispatched members whose handler has not replied */
};

struct rpc_conn {
	uint32_t refs;
	bool closed; /* the socket layer let go; output is discarded */
	bool broken; /* protocol error: input is ignored from now on */

	char *in;
	size_t in_len;
	size_t in_cap;

	/* scanner state for the value being assembled, offsets into in */
	bool started;
	bool complete; /* in[start, pos) is one whole value that was not handled yet */
	size_t start;
	size_t pos;
	int depth;
	bool in_str;
	bool esc;
	char kind;      /* '{' object, '[' array, '"' top-level string, 't' other token */
	uint32_t nseps; /* top-level commas of an array value (members - 1) */
	uint32_t *seps; /* offsets from start of the first seps_cap of them */
	uint32_t seps_cap;

	struct rpc_batch batch;

	char *out;
	size_t out_off; /* first unwritten byte */
	size_t out_len;
	size_t out_cap;

	uint32_t inflight; /* requests handed to handlers that have not replied */

	void (*wake_fn)(void *arg); /* a request ended: the socket layer has a look */
	void *wake_arg;

	/* pending requests with an abandon hook (keel_rpc_request_on_abandon) */
	struct keel_rpc_request *abandonable;
};

struct keel_rpc_request {
	struct rpc_conn *conn;
	bool in_batch;
	json_t *id;      /* NULL for a notification */
	char method[64]; /* for log lines */

	void (*abandon_fn)(void *arg); /* NULL: not in conn->abandonable */
	void *abandon_arg;
	struct keel_rpc_request *abandon_next;
	struct keel_rpc_request **abandon_pprev;
};

static void rpc_request_unhook(struct keel_rpc_request *req)
{
	if (req->abandon_fn == NULL) {
		return;
	}
	*req->abandon_pprev = req->abandon_next;
	if (req->abandon_next != NULL) {
		req->abandon_next->abandon_pprev = req->abandon_pprev;
	}
	req->abandon_fn = NULL;
}

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
/* Limits                                                                          */
/* ------------------------------------------------------------------------------ */

void rpc_set_limits(uint32_t max_batch, uint32_t max_response)
{
	g_max_batch = max_batch != 0 ? max_batch : KEEL_RPC_DEFAULT_MAX_BATCH;
	g_max_response = max_response != 0 ? max_response : KEEL_RPC_DEFAULT_MAX_RESPONSE;
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
	free(conn->seps);
	free(conn);
}

void rpc_conn_set_wake(struct rpc_conn *conn, void (*fn)(void *arg), void *arg)
{
	conn->wake_fn = fn;
	conn->wake_arg = arg;
}

static void rpc_conn_free_input(struct rpc_conn *conn)
{
	free(conn->in);
	conn->in = NULL;
	conn->in_len = conn->in_cap = conn->pos = conn->start = 0;
	conn->started = conn->complete = false;
	conn->batch.active = false;
}

void rpc_conn_close(struct rpc_conn *conn)
{
	if (conn == NULL) {
		return;
	}
	conn->closed = true;
	conn->wake_fn = NULL;
	/* Nobody will read these any more; pending replies only release references. */
	free(conn->out);
	conn->out = NULL;
	conn->out_off = conn->out_len = conn->out_cap = 0;
	rpc_conn_free_input(conn);
	/* Requests that wait for an event stop waiting; their replies are dropped. */
	while (conn->abandonable != NULL) {
		struct keel_rpc_request *req = conn->abandonable;
		void (*fn)(void *arg) = req->abandon_fn;

		rpc_request_unhook(req);
		fn(req->abandon_arg);
	}
	rpc_conn_put(conn);
}

static size_t rpc_out_pending(const struct rpc_conn *conn)
{
	return conn->out_len - conn->out_off;
}

const char *rpc_conn_output(struct rpc_conn *conn, size_t *len)
{
	*len = rpc_out_pending(conn);
	return conn->out != NULL ? conn->out + conn->out_off : "";
}

void rpc_conn_consume_output(struct rpc_conn *conn, size_t n)
{
	conn->out_off += n;
	if (conn->out_off < conn->out_len) {
		return;
	}
	conn->out_off = conn->out_len = 0;
	if (conn->out_cap > RPC_BUF_KEEP) {
		free(conn->out);
		conn->out = NULL;
		conn->out_cap = 0;
	}
}

uint32_t rpc_conn_pending(const struct rpc_conn *conn)
{
	return conn->inflight;
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

/* Append to the output; the unread part moves to the front when it is short. */
static int rpc_out_append(struct rpc_conn *conn, const char *data, size_t len)
{
	size_t pending = rpc_out_pending(conn);

	if (conn->out_off > 0 && (pending == 0 || conn->out_off >= conn->out_cap / 2)) {
		memmove(conn->out, conn->out + conn->out_off, pending);
		conn->out_off = 0;
		conn->out_len = pending;
	}
	if (rpc_buf_reserve(&conn->out, &conn->out_cap, conn->out_len + len) != 0) {
		return -ENOMEM;
	}
	memcpy(conn->out + conn->out_len, data, len);
	conn->out_len += len;
	return 0;
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

struct rpc_dump {
	struct rpc_conn *conn;
	size_t written;
	size_t limit;
	bool over; /* stopped at the limit (not out of memory) */
};

static int rpc_dump_cb(const char *buf, size_t size, void *data)
{
	struct rpc_dump *d = data;

	if (d->written + size > d->limit) {
		d->over = true;
		return -1;
	}
	if (rpc_out_append(d->conn, buf, size) != 0) {
		return -1;
	}
	d->written += size;
	return 0;
}

/*
 * Encode \p value at the end of the output, at most \p limit bytes.
 * \return 0, -EMSGSIZE when it is longer (nothing is left in the output), -ENOMEM.
 */
static int rpc_out_value(struct rpc_conn *conn, json_t *value, size_t limit)
{
	struct rpc_dump d = {.conn = conn, .limit = limit};
	size_t keep = rpc_out_pending(conn);

	if (json_dump_callback(value, rpc_dump_cb, &d, JSON_COMPACT | JSON_ENCODE_ANY) == 0) {
		return 0;
	}
	/* Drop the partial value; appending may have moved the unread bytes to the front. */
	conn->out_len = conn->out_off + keep;
	return d.over ? -EMSGSIZE : -ENOMEM;
}

static void rpc_conn_consume_value(struct rpc_conn *conn)
{
	conn->started = false;
	conn->complete = false;
}

/* A batch whose members were all dispatched and answered closes its array. */
static void rpc_batch_maybe_end(struct rpc_conn *conn)
{
	struct rpc_batch *b = &conn->batch;

	if (!b->active || b->next < b->count || b->outstanding > 0) {
		return;
	}
	if (b->opened && !conn->closed && rpc_out_append(conn, "]\n", 2) != 0) {
		KEEL_ERRLOG("rpc: out of memory ending a batch reply; closing the connection");
		conn->broken = true;
	}
	memset(b, 0, sizeof(*b));
	rpc_conn_consume_value(conn);
}

/*
 * Write one response: a line of its own, or the next member of the open batch array.
 * A response over max_response bytes, or one that does not fit next to the replies the
 * client left unread, is replaced by an error for the same id that names the limit.
 * Steals \p payload. \p what names the method for log lines (NULL: no request).
 */
static void rpc_emit(struct rpc_conn *conn, bool in_batch, json_t *id, const char *key,
		     json_t *payload, const char *what)
{
	size_t keep = rpc_out_pending(conn);
	size_t hard = (size_t)g_max_response + RPC_OUTPUT_PAUSE;
	size_t limit = g_max_response;
	json_t *resp;
	int rc = 0;

	if (conn->closed) {
		json_decref(payload);
		return;
	}
	resp = rpc_response(id, key, payload);
	if (resp == NULL) {
		KEEL_ERRLOG("rpc: out of memory building a reply; reply dropped");
		return;
	}
	if (keep + limit > hard) {
		limit = keep < hard ? hard - keep : 0;
	}
	if (in_batch) {
		rc = rpc_out_append(conn, conn->batch.opened ? "," : "[", 1);
	}
	if (rc == 0) {
		rc = rpc_out_value(conn, resp, limit);
	}
	if (rc == -EMSGSIZE) {
		char msg[300];
		int code;

		if (limit == g_max_response) {
			code = -EMSGSIZE;
			snprintf(msg, sizeof(msg),
				 "the response is larger than the limit of %u "
				 "bytes (keeld --rpc-max-response); ask for less, for example one "
				 "object by name",
				 g_max_response);
		} else {
			code = -ENOBUFS;
			snprintf(msg, sizeof(msg),
				 "reply not sent: %zu bytes of earlier replies "
				 "on this connection are still unread and at most %zu may wait "
				 "(keeld --rpc-max-response + %u); read the replies before sending "
				 "more requests",
				 keep, hard, RPC_OUTPUT_PAUSE);
		}
		KEEL_WARNLOG_RATELIMITED(10000, "rpc: reply to %s not sent: %s",
					 what != NULL ? what : "an invalid request", msg);
		json_decref(resp);
		resp = rpc_response(id, "error", rpc_error_object(code, msg));
		/* A short error always goes out: at most one per request in flight. */
		rc = resp != NULL ? rpc_out_value(conn, resp, SIZE_MAX) : -ENOMEM;
	}
	if (rc == 0 && !in_batch) {
		rc = rpc_out_append(conn, "\n", 1);
	}
	json_decref(resp);
	if (rc != 0) {
		conn->out_len = conn->out_off + keep;
		KEEL_ERRLOG("rpc: out of memory writing the reply to %s; reply dropped",
			    what != NULL ? what : "an invalid request");
		return;
	}
	if (in_batch) {
		conn->batch.opened = true;
	}
}

static void rpc_request_finish(struct keel_rpc_request *req, const char *key, json_t *payload)
{
	struct rpc_conn *conn = req->conn;

	rpc_request_unhook(req);
	if (req->id != NULL) {
		rpc_emit(conn, req->in_batch, req->id, key, payload, req->method);
	} else {
		json_decref(payload);
	}
	json_decref(req->id);
	conn->inflight--;
	if (req->in_batch) {
		conn->batch.outstanding--;
		rpc_batch_maybe_end(conn);
	}
	free(req);
	if (conn->wake_fn != NULL) {
		conn->wake_fn(conn->wake_arg);
	}
	rpc_conn_put(conn);
}

int keel_rpc_request_on_abandon(struct keel_rpc_request *req, void (*fn)(void *arg), void *arg)
{
	struct rpc_conn *conn = req->conn;

	if (conn->closed) {
		return -ENOTCONN;
	}
	rpc_request_unhook(req);
	req->abandon_fn = fn;
	req->abandon_arg = arg;
	req->abandon_next = conn->abandonable;
	req->abandon_pprev = &conn->abandonable;
	if (conn->abandonable != NULL) {
		conn->abandonable->abandon_pprev = &req->abandon_next;
	}
	conn->abandonable = req;
	return 0;
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
static void rpc_send_early_error(struct rpc_conn *conn, bool in_batch, json_t *id, int code,
				 const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void rpc_send_early_error(struct rpc_conn *conn, bool in_batch, json_t *id, int code,
				 const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	rpc_emit(conn, in_batch, id, "error", rpc_error_object(code, msg), NULL);
}

bool rpc_conn_notice(struct rpc_conn *conn, int code, const char *msg)
{
	/* Inside an open batch array a line of its own would break the client's framing. */
	if (conn->closed || conn->batch.opened) {
		return false;
	}
	rpc_send_early_error(conn, false, NULL, code, "%s", msg);
	return true;
}

int rpc_error_line(char *buf, size_t size, int code, const char *msg)
{
	json_t *resp = rpc_response(NULL, "error", rpc_error_object(code, msg));
	size_t n;

	if (resp == NULL) {
		return -ENOMEM;
	}
	n = size > 1 ? json_dumpb(resp, buf, size - 1, JSON_COMPACT) : 0;
	json_decref(resp);
	if (n == 0 || n > size - 1) {
		return -ENOSPC;
	}
	buf[n] = '\n';
	return (int)n + 1;
}

/* ------------------------------------------------------------------------------ */
/* Dispatch                                                                        */
/* ------------------------------------------------------------------------------ */

static void rpc_dispatch_one(struct rpc_conn *conn, bool in_batch, json_t *msg)
{
	struct keel_rpc_request *req;
	struct rpc_method *m;
	json_t *version, *id, *method, *params;
	const char *name;

	if (!json_is_object(msg)) {
		rpc_send_early_error(conn, in_batch, NULL, KEEL_RPC_INVALID_REQUEST,
				     "Invalid request: expected a JSON object");
		return;
	}
	id = json_object_get(msg, "id");
	if (id != NULL && !json_is_string(id) && !json_is_number(id) && !json_is_null(id)) {
		rpc_send_early_error(conn, in_batch, NULL, KEEL_RPC_INVALID_REQUEST,
				     "Invalid request: \"id\" must be a string, a number or null");
		return;
	}
	version = json_object_get(msg, "jsonrpc");
	if (!json_is_string(version) || strcmp(json_string_value(version), "2.0") != 0) {
		rpc_send_early_error(conn, in_batch, id, KEEL_RPC_INVALID_REQUEST,
				     "Invalid request: \"jsonrpc\" must be \"2.0\"");
		return;
	}
	method = json_object_get(msg, "method");
	if (!json_is_string(method)) {
		rpc_send_early_error(conn, in_batch, id, KEEL_RPC_INVALID_REQUEST,
				     "Invalid request: \"method\" must be a string");
		return;
	}
	params = json_object_get(msg, "params");
	if (params != NULL && !json_is_object(params) && !json_is_array(params)) {
		rpc_send_early_error(conn, in_batch, id, KEEL_RPC_INVALID_REQUEST,
				     "Invalid request: \"params\" must be an object or an array");
		return;
	}
	name = json_string_value(method);
	m = rpc_method_find(name);
	if (m == NULL) {
		/* Notifications never get a reply, not even an error. */
		if (id != NULL) {
			rpc_send_early_error(conn, in_batch, id, KEEL_RPC_METHOD_NOT_FOUND,
					     "Method not found: '%.128s' (rpc_get_methods lists "
					     "the methods)",
					     name);
		}
		return;
	}

	req = calloc(1, sizeof(*req));
	if (req == NULL) {
		if (id != NULL) {
			rpc_send_early_error(conn, in_batch, id, KEEL_RPC_INTERNAL_ERROR,
					     "Out of memory");
		}
		return;
	}
	req->conn = conn;
	req->in_batch = in_batch;
	req->id = id != NULL ? json_incref(id) : NULL;
	snprintf(req->method, sizeof(req->method), "%s", name);
	conn->inflight++;
	if (in_batch) {
		conn->batch.outstanding++;
	}
	rpc_conn_get(conn);
	KEEL_DEBUGLOG("rpc: calling %s", name);
	m->fn(req, params);
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

/* Remember where a top-level comma of an array is: it ends a batch member. */
static void rpc_scan_sep(struct rpc_conn *conn)
{
	if (conn->nseps < conn->seps_cap) {
		conn->seps[conn->nseps] = (uint32_t)(conn->pos - 1 - conn->start);
	}
	if (conn->nseps < UINT32_MAX) {
		conn->nseps++;
	}
}

static void rpc_scan_begin_array(struct rpc_conn *conn)
{
	uint32_t *seps;

	conn->nseps = 0;
	if (conn->seps_cap >= g_max_batch) {
		return;
	}
	/* On failure nothing is recorded and the batch is refused as out of memory. */
	seps = realloc(conn->seps, (size_t)g_max_batch * sizeof(*seps));
	if (seps != NULL) {
		conn->seps = seps;
		conn->seps_cap = g_max_batch;
	}
}

/* Advance the scanner. \return true when in[start, pos) is one complete value. */
static bool rpc_scan_bytes(struct rpc_conn *conn)
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
				conn->kind = c;
				conn->depth = 1;
				if (c == '[') {
					rpc_scan_begin_array(conn);
				}
			} else if (c == '"') {
				conn->kind = '"';
				conn->in_str = true;
			} else if (c == '}' || c == ']' || c == ',' || c == ':') {
				conn->kind = 't';
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
		} else if (c == ',' && conn->depth == 1 && conn->kind == '[') {
			rpc_scan_sep(conn);
		}
	}
	return false;
}

static bool rpc_scan(struct rpc_conn *conn)
{
	if (!conn->complete && rpc_scan_bytes(conn)) {
		conn->complete = true;
	}
	return conn->complete;
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
	if (conn->in_len == 0 && conn->in_cap > RPC_BUF_KEEP) {
		free(conn->in);
		conn->in = NULL;
		conn->in_cap = 0;
	}
}

static int rpc_conn_fail(struct rpc_conn *conn, int code, int rc, const char *msg)
{
	rpc_send_early_error(conn, false, NULL, code, "%s", msg);
	conn->broken = true;
	rpc_conn_free_input(conn);
	return rc;
}

static int rpc_conn_oversized(struct rpc_conn *conn)
{
	char msg[160];

	snprintf(msg, sizeof(msg),
		 "Invalid request: larger than the limit of %u bytes; "
		 "the connection is closed",
		 KEEL_RPC_MAX_REQUEST);
	KEEL_WARNLOG("rpc: request larger than %u bytes; closing the connection",
		     KEEL_RPC_MAX_REQUEST);
	return rpc_conn_fail(conn, KEEL_RPC_INVALID_REQUEST, -EMSGSIZE, msg);
}

static int rpc_conn_parse_error(struct rpc_conn *conn, const json_error_t *err)
{
	char text[300];

	snprintf(text, sizeof(text),
		 "Parse error: %s (at byte %d of the request); "
		 "the connection is closed",
		 err->text, err->position);
	KEEL_INFOLOG("rpc: %s", text);
	return rpc_conn_fail(conn, KEEL_RPC_PARSE_ERROR, -EPROTO, text);
}

static bool rpc_conn_can_dispatch(const struct rpc_conn *conn)
{
	return !conn->closed && !conn->broken && rpc_out_pending(conn) < RPC_OUTPUT_PAUSE &&
	       conn->inflight < g_max_batch;
}

static int rpc_single_start(struct rpc_conn *conn)
{
	json_error_t err;
	json_t *msg;

	msg = json_loadb(conn->in + conn->start, conn->pos - conn->start, JSON_DECODE_ANY, &err);
	if (msg == NULL) {
		return rpc_conn_parse_error(conn, &err);
	}
	rpc_conn_consume_value(conn);
	rpc_dispatch_one(conn, false, msg);
	json_decref(msg);
	return 1;
}

static int rpc_batch_start(struct rpc_conn *conn)
{
	uint64_t members = (uint64_t)conn->nseps + 1;
	json_error_t err;
	json_t *msg;
	size_t n;

	/* Counted by the scanner: a batch over the limit costs no parsing at all. */
	if (members > g_max_batch) {
		rpc_conn_consume_value(conn);
		KEEL_WARNLOG_RATELIMITED(10000, "rpc: batch of %llu requests refused (limit %u)",
					 (unsigned long long)members, g_max_batch);
		rpc_send_early_error(conn, false, NULL, KEEL_RPC_INVALID_REQUEST,
				     "Invalid request: a batch of %llu requests is over the limit "
				     "of %u (keeld --rpc-max-batch); send smaller batches",
				     (unsigned long long)members, g_max_batch);
		return 1;
	}
	if (conn->inflight > 0) {
		return 0; /* their replies must not land inside the batch's array */
	}
	/* Checked whole so invalid JSON anywhere gets -32700 before any member runs. */
	msg = json_loadb(conn->in + conn->start, conn->pos - conn->start, JSON_DECODE_ANY, &err);
	if (msg == NULL) {
		return rpc_conn_parse_error(conn, &err);
	}
	n = json_array_size(msg);
	json_decref(msg);
	if (n == 0) {
		rpc_conn_consume_value(conn);
		rpc_send_early_error(conn, false, NULL, KEEL_RPC_INVALID_REQUEST,
				     "Invalid request: empty batch");
		return 1;
	}
	if (n != members || conn->nseps > conn->seps_cap) {
		rpc_conn_consume_value(conn);
		rpc_send_early_error(conn, false, NULL, KEEL_RPC_INTERNAL_ERROR, "Out of memory");
		return 1;
	}
	memset(&conn->batch, 0, sizeof(conn->batch));
	conn->batch.active = true;
	conn->batch.count = (uint32_t)n;
	return 1;
}

static void rpc_batch_dispatch_next(struct rpc_conn *conn)
{
	struct rpc_batch *b = &conn->batch;
	uint32_t i = b->next++;
	size_t from = i == 0 ? 1 : (size_t)conn->seps[i - 1] + 1;
	size_t to = i + 1 == b->count ? conn->pos - conn->start - 1 : conn->seps[i];
	json_error_t err;
	json_t *msg;

	msg = json_loadb(conn->in + conn->start + from, to - from, JSON_DECODE_ANY, &err);
	if (msg == NULL) {
		/* The whole batch parsed before: only memory can fail here. */
		rpc_send_early_error(conn, true, NULL, KEEL_RPC_INTERNAL_ERROR, "Out of memory");
	} else {
		rpc_dispatch_one(conn, true, msg);
		json_decref(msg);
	}
	rpc_batch_maybe_end(conn);
}

/* \return 1 when a request or batch member was handled, 0 when nothing can be done now. */
static int rpc_conn_step(struct rpc_conn *conn)
{
	if (conn->batch.active) {
		if (conn->batch.next == conn->batch.count || !rpc_conn_can_dispatch(conn)) {
			return 0;
		}
		rpc_batch_dispatch_next(conn);
		return 1;
	}
	if (!rpc_scan(conn)) {
		if (conn->started && conn->in_len - conn->start > KEEL_RPC_MAX_REQUEST) {
			return rpc_conn_oversized(conn);
		}
		return 0;
	}
	if (conn->pos - conn->start > KEEL_RPC_MAX_REQUEST) {
		return rpc_conn_oversized(conn);
	}
	if (!rpc_conn_can_dispatch(conn)) {
		return 0;
	}
	return conn->kind == '[' ? rpc_batch_start(conn) : rpc_single_start(conn);
}

int rpc_conn_process(struct rpc_conn *conn)
{
	int done = 0, rc = 0;
	uint64_t start;

	if (conn->broken) {
		return -EPROTO;
	}
	if (conn->closed) {
		return 0;
	}
	/* Handlers may close the server (and this connection) from inside dispatch. */
	rpc_conn_get(conn);
	start = keel_now_ns();
	while (done < RPC_CONN_BUDGET && !conn->closed && !conn->broken) {
		rc = rpc_conn_step(conn);
		if (rc <= 0) {
			break;
		}
		/* Requests can be costly (rpc_get_methods with help is ~4 ms under ASan). */
		if (++done < RPC_CONN_BUDGET && keel_now_ns() - start >= RPC_CONN_SLICE_NS) {
			break;
		}
	}
	rpc_conn_put(conn);
	return rc < 0 ? rc : done;
}

int rpc_conn_feed(struct rpc_conn *conn, const char *data, size_t len)
{
	int rc;

	if (conn->broken || conn->closed) {
		return conn->broken ? -EPROTO : 0;
	}
	if (len > 0) {
		rpc_conn_compact_input(conn);
		if (rpc_buf_reserve(&conn->in, &conn->in_cap, conn->in_len + len) != 0) {
			return -ENOMEM;
		}
		memcpy(conn->in + conn->in_len, data, len);
		conn->in_len += len;
	}
	rc = rpc_conn_process(conn);
	return rc < 0 ? rc : 0;
}

bool rpc_conn_wants_input(struct rpc_conn *conn)
{
	return !conn->closed && !conn->broken && !conn->batch.active && !rpc_scan(conn);
}

bool rpc_conn_has_work(struct rpc_conn *conn)
{
	if (!rpc_conn_can_dispatch(conn)) {
		return false;
	}
	if (conn->batch.active) {
		return conn->batch.next < conn->batch.count;
	}
	if (!rpc_scan(conn)) {
		return false;
	}
	return conn->kind != '[' || conn->inflight == 0 || conn->nseps >= g_max_batch;
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

bool rpc_param_type_ok(enum keel_rpc_param_type type, json_t *v, const char **expected)
{
	const struct keel_rpc_param p = {"", type, 0, true};
	union {
		const char *s;
		uint64_t u64;
		int64_t i64;
		double d;
		bool b;
		json_t *j;
	} scratch;

	*expected = rpc_param_expected(type);
	return rpc_param_store(&p, v, &scratch);
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
		if (v == NULL ||
		    (json_is_null(v) && p->optional && p->type != KEEL_RPC_PARAM_JSON)) {
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
