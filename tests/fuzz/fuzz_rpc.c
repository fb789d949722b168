/*
 * Fuzz the JSON-RPC protocol engine (daemon/rpc.c) as a client drives it: the input
 * is a byte stream cut into chunks (sizes drawn from its first two bytes, so the
 * fuzzer explores where reads split requests), each fed with rpc_conn_feed() and
 * processed as the socket layer does, output taken after every step. Methods: echo,
 * fail, a typed-parameter decoder, one with SPDK-compatible parameters
 * (daemon/rpc_compat.c) and one that answers later (after the stream, as a slow bdev
 * would). Every byte sent back must be whole lines of JSON.
 */
#include <errno.h>
#include <jansson.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "keel/rpc.h"
#include "rpc_compat.h"
#include "rpc_internal.h"

#define LATER_MAX 64

static struct keel_rpc_request *g_later[LATER_MAX];
static int g_later_count;

struct typed_params {
	const char *s;
	uint64_t u64;
	uint32_t u32;
	bool b;
	int64_t i64;
	double d;
	json_t *j;
};

static void m_echo(struct keel_rpc_request *req, json_t *params)
{
	keel_rpc_send_result(req, params != NULL ? json_incref(params) : NULL);
}

static void m_fail(struct keel_rpc_request *req, json_t *params)
{
	(void)params;
	keel_rpc_send_error(req, -EEXIST, "bdev '%s' already exists", "x");
}

static void m_later(struct keel_rpc_request *req, json_t *params)
{
	(void)params;
	if (g_later_count < LATER_MAX) {
		g_later[g_later_count++] = req;
	} else {
		keel_rpc_send_result(req, NULL);
	}
}

static void m_typed(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"s", KEEL_RPC_PARAM_STRING, offsetof(struct typed_params, s), false},
		{"u64", KEEL_RPC_PARAM_UINT64, offsetof(struct typed_params, u64), true},
		{"u32", KEEL_RPC_PARAM_UINT32, offsetof(struct typed_params, u32), true},
		{"b", KEEL_RPC_PARAM_BOOL, offsetof(struct typed_params, b), true},
		{"i64", KEEL_RPC_PARAM_INT64, offsetof(struct typed_params, i64), true},
		{"d", KEEL_RPC_PARAM_DOUBLE, offsetof(struct typed_params, d), true},
		{"j", KEEL_RPC_PARAM_JSON, offsetof(struct typed_params, j), true},
	};
	struct typed_params p;

	memset(&p, 0, sizeof(p));
	if (!keel_rpc_decode_params(req, params, table, sizeof(table) / sizeof(table[0]), &p)) {
		return;
	}
	keel_rpc_send_result(req, json_pack("{s:s,s:I,s:i,s:b,s:I,s:f}", "s", p.s, "u64",
					    (json_int_t)p.u64, "u32", (int)p.u32, "b", p.b, "i64",
					    (json_int_t)p.i64, "d", p.d));
}

struct compat_params {
	const char *name;
	uint32_t block_size;
};

/* Shaped like bdev_malloc_create: SPDK parameters taken only at their defaults. */
static void m_compat(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"name", KEEL_RPC_PARAM_STRING, offsetof(struct compat_params, name), false},
		{"block_size", KEEL_RPC_PARAM_UINT32, offsetof(struct compat_params, block_size),
		 true},
	};
	static const struct rpc_compat_param compat[] = {
		RPC_ZERO_ONLY("md_size", KEEL_RPC_PARAM_UINT32, "metadata is not supported"),
		RPC_FALSE_ONLY("md_interleave", "metadata is not supported"),
		{"physical_block_size", KEEL_RPC_PARAM_UINT32, RPC_COMPAT_DEFAULT_ONLY, "0",
		 "one block size", "block_size"},
		{"reset_mode", KEEL_RPC_PARAM_STRING, RPC_COMPAT_DEFAULT_ONLY, "\"none\"",
		 "no reset", NULL},
		{"current", KEEL_RPC_PARAM_BOOL, RPC_COMPAT_ANY, "false", "always current", NULL},
		{"uuid", KEEL_RPC_PARAM_STRING, RPC_COMPAT_DEFAULT_ONLY, NULL, "random", NULL},
	};
	struct compat_params p = {NULL, 512};

	if (!rpc_compat_decode(req, params, table, 2, &p, compat,
			       sizeof(compat) / sizeof(compat[0]))) {
		return;
	}
	keel_rpc_send_result(
		req, json_pack("{s:s,s:i}", "name", p.name, "block_size", (int)p.block_size));
}

struct out_buf {
	char *data;
	size_t len, cap;
};

/* Move the connection's output into \p out, as a socket write would. */
static void take_output(struct rpc_conn *conn, struct out_buf *out)
{
	size_t len;
	const char *p = rpc_conn_output(conn, &len);

	if (len == 0) {
		return;
	}
	if (out->len + len > out->cap) {
		out->cap = (out->len + len) * 2;
		out->data = realloc(out->data, out->cap);
		if (out->data == NULL) {
			abort();
		}
	}
	memcpy(out->data + out->len, p, len);
	out->len += len;
	rpc_conn_consume_output(conn, len);
}

static void run_until_idle(struct rpc_conn *conn, struct out_buf *out)
{
	while (rpc_conn_has_work(conn)) {
		if (rpc_conn_process(conn) < 0) {
			break;
		}
		take_output(conn, out);
	}
	take_output(conn, out);
}

/* Every response is one line of JSON. */
static void check_output(const struct out_buf *out)
{
	size_t start = 0;

	for (size_t i = 0; i < out->len; i++) {
		if (out->data[i] == '\n') {
			json_error_t err;
			json_t *v = json_loadb(out->data + start, i - start, JSON_DECODE_ANY, &err);

			if (v == NULL) {
				abort();
			}
			json_decref(v);
			start = i + 1;
		}
	}
	if (start != out->len) {
		abort(); /* a response without its newline */
	}
}

static void setup_once(void)
{
	static bool done;

	if (done) {
		return;
	}
	done = true;
	fuzz_quiet_logs();
	/* Small limits so batches and big responses reach them. */
	rpc_set_limits(16, 16384);
	keel_rpc_register_method("echo", m_echo, "echo params");
	keel_rpc_register_method("fail", m_fail, "fail with -EEXIST");
	keel_rpc_register_method("later", m_later, "reply after the stream");
	keel_rpc_register_method("typed", m_typed, "decode every parameter type");
	keel_rpc_register_method("compat", m_compat, "SPDK-compatible parameters");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct out_buf out = {0};
	struct rpc_conn *conn;
	uint32_t seed;
	size_t off;

	setup_once();
	if (size < 2) {
		return 0;
	}
	seed = (uint32_t)data[0] << 8 | data[1];
	data += 2;
	size -= 2;
	conn = rpc_conn_create();
	if (conn == NULL) {
		return 0;
	}
	g_later_count = 0;
	for (off = 0; off < size;) {
		/* Chunks of 1..64 bytes, or the rest when the seed's low bit says so. */
		size_t n = (seed & 1) != 0 ? size - off : 1 + (seed >> 1) % 64;

		seed = seed * 1103515245u + 12345u;
		if (n > size - off) {
			n = size - off;
		}
		if (rpc_conn_feed(conn, (const char *)data + off, n) < 0) {
			break;
		}
		off += n;
		run_until_idle(conn, &out);
	}
	run_until_idle(conn, &out);
	for (int i = 0; i < g_later_count; i++) {
		keel_rpc_send_result(g_later[i], json_integer(i));
		run_until_idle(conn, &out);
	}
	check_output(&out);
	rpc_conn_close(conn);
	free(out.data);
	return 0;
}
