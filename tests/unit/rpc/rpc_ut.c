/*
 * Unit tests of the JSON-RPC protocol engine (daemon/rpc.c): framing, batches,
 * validation, errors, parameter decoding, late replies and the limits (batch length,
 * response size, unread replies, work per call). The engine is driven through
 * rpc_conn_feed() and rpc_conn_process() without sockets or reactors.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>
#include <jansson.h>

#include "keel/rpc.h"
#include "rpc_compat.h"
#include "rpc_internal.h"
#include "rpc_methods.h"
#include "ut_threads.h"

/* ------------------------------------------------------------------------------ */
/* Test methods                                                                    */
/* ------------------------------------------------------------------------------ */

static struct keel_rpc_request *g_later[8];
static int g_later_count;
static int g_echo_calls;

static void ut_echo(struct keel_rpc_request *req, json_t *params)
{
	g_echo_calls++;
	keel_rpc_send_result(req, params != NULL ? json_incref(params) : NULL);
}

static void ut_later(struct keel_rpc_request *req, json_t *params)
{
	CU_ASSERT_FATAL(g_later_count < 8);
	g_later[g_later_count++] = req;
}

static int g_slow_calls;

/* A request that costs 600 us (of mock time). */
static void ut_slow(struct keel_rpc_request *req, json_t *params)
{
	g_slow_calls++;
	ut_time_advance_us(600);
	keel_rpc_send_result(req, NULL);
}

static void ut_fail(struct keel_rpc_request *req, json_t *params)
{
	keel_rpc_send_error(req, -EEXIST, "bdev '%s' already exists", "x");
}

struct ut_typed {
	const char *s;
	uint64_t u64;
	uint32_t u32;
	bool b;
	int64_t i64;
	double d;
	json_t *j;
};

static struct ut_typed g_typed;

static void ut_typed(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"s", KEEL_RPC_PARAM_STRING, offsetof(struct ut_typed, s), false},
		{"u64", KEEL_RPC_PARAM_UINT64, offsetof(struct ut_typed, u64), true},
		{"u32", KEEL_RPC_PARAM_UINT32, offsetof(struct ut_typed, u32), true},
		{"b", KEEL_RPC_PARAM_BOOL, offsetof(struct ut_typed, b), true},
		{"i64", KEEL_RPC_PARAM_INT64, offsetof(struct ut_typed, i64), true},
		{"d", KEEL_RPC_PARAM_DOUBLE, offsetof(struct ut_typed, d), true},
		{"j", KEEL_RPC_PARAM_JSON, offsetof(struct ut_typed, j), true},
	};

	memset(&g_typed, 0, sizeof(g_typed));
	g_typed.u32 = 77; /* default that an absent parameter must keep */
	if (!keel_rpc_decode_params(req, params, table, 7, &g_typed)) {
		return;
	}
	keel_rpc_send_result(req,
			     json_pack("{s:s,s:I,s:i,s:b,s:I,s:f}", "s", g_typed.s, "u64",
				       (json_int_t)g_typed.u64, "u32", (int)g_typed.u32, "b",
				       g_typed.b, "i64", (json_int_t)g_typed.i64, "d", g_typed.d));
}

static struct keel_rpc_request *g_waiter;
static int g_abandoned;

static void ut_waiter_abandoned(void *arg)
{
	CU_ASSERT_PTR_EQUAL(arg, &g_waiter);
	g_abandoned++;
	keel_rpc_send_error(g_waiter, -ECANCELED, "gone");
	g_waiter = NULL;
}

/* Waits for an event that never comes, until replied to or abandoned. */
static void ut_waiter(struct keel_rpc_request *req, json_t *params)
{
	g_waiter = req;
	CU_ASSERT_EQUAL(keel_rpc_request_on_abandon(req, ut_waiter_abandoned, &g_waiter), 0);
}

struct ut_compat {
	const char *name;
	uint32_t bs;
};

/* SPDK-style parameters: md only at 0, pbs at 0 or equal to bs, flag at any value. */
static void ut_compat(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"name", KEEL_RPC_PARAM_STRING, offsetof(struct ut_compat, name), false},
		{"bs", KEEL_RPC_PARAM_UINT32, offsetof(struct ut_compat, bs), true},
	};
	static const struct rpc_compat_param compat[] = {
		RPC_ZERO_ONLY("md", KEEL_RPC_PARAM_UINT32, "metadata is not supported"),
		{"pbs", KEEL_RPC_PARAM_UINT32, RPC_COMPAT_DEFAULT_ONLY, "0", "one block size",
		 "bs"},
		{"flag", KEEL_RPC_PARAM_BOOL, RPC_COMPAT_ANY, "false", "same either way", NULL},
		{"id", KEEL_RPC_PARAM_STRING, RPC_COMPAT_DEFAULT_ONLY, NULL, "no ids", NULL},
	};
	struct ut_compat p = {NULL, 512};

	if (!rpc_compat_decode(req, params, table, 2, &p, compat, 4)) {
		return;
	}
	keel_rpc_send_result(req, json_pack("{s:s,s:i}", "name", p.name, "bs", (int)p.bs));
}

/* ------------------------------------------------------------------------------ */
/* Helpers                                                                         */
/* ------------------------------------------------------------------------------ */

static struct rpc_conn *g_conn;

/* Take every queued line from the connection as a JSON array of responses. */
static json_t *ut_take(struct rpc_conn *conn)
{
	json_t *all = json_array();
	size_t len, i, start = 0;
	const char *out = rpc_conn_output(conn, &len);
	char *copy = malloc(len + 1);

	memcpy(copy, out, len);
	copy[len] = '\0';
	rpc_conn_consume_output(conn, len);
	for (i = 0; i < len; i++) {
		if (copy[i] == '\n') {
			json_error_t err;
			json_t *v = json_loadb(copy + start, i - start, JSON_DECODE_ANY, &err);

			CU_ASSERT_PTR_NOT_NULL(v);
			if (v != NULL) {
				json_array_append_new(all, v);
			}
			start = i + 1;
		}
	}
	CU_ASSERT_EQUAL(start, len); /* every response ends with a newline */
	free(copy);
	return all;
}

static int ut_feed(const char *text)
{
	return rpc_conn_feed(g_conn, text, strlen(text));
}

/* Feed \p text, expect exactly one response and return it. */
static json_t *ut_one(const char *text)
{
	json_t *all, *one;

	ut_feed(text);
	all = ut_take(g_conn);
	CU_ASSERT_EQUAL_FATAL(json_array_size(all), 1);
	one = json_incref(json_array_get(all, 0));
	json_decref(all);
	return one;
}

static int ut_error_code(json_t *resp)
{
	return (int)json_integer_value(json_object_get(json_object_get(resp, "error"), "code"));
}

static const char *ut_error_message(json_t *resp)
{
	const char *m = json_string_value(
		json_object_get(json_object_get(resp, "error"), "message"));
	return m != NULL ? m : "";
}

static void ut_expect_error(const char *text, int code, const char *substr, bool id_null)
{
	json_t *resp = ut_one(text);

	CU_ASSERT_EQUAL(ut_error_code(resp), code);
	if (strstr(ut_error_message(resp), substr) == NULL) {
		fprintf(stderr, "\nmessage '%s' lacks '%s'\n", ut_error_message(resp), substr);
		CU_FAIL("error message");
	}
	CU_ASSERT(json_is_string(json_object_get(resp, "jsonrpc")) &&
		  strcmp(json_string_value(json_object_get(resp, "jsonrpc")), "2.0") == 0);
	if (id_null) {
		CU_ASSERT(json_is_null(json_object_get(resp, "id")));
	}
	json_decref(resp);
}

static int ut_setup(void)
{
	g_conn = rpc_conn_create();
	g_later_count = 0;
	g_echo_calls = 0;
	return g_conn == NULL;
}

static int ut_teardown(void)
{
	rpc_conn_close(g_conn);
	g_conn = NULL;
	return 0;
}

/* ------------------------------------------------------------------------------ */
/* Tests                                                                           */
/* ------------------------------------------------------------------------------ */

static void test_register(void)
{
	CU_ASSERT_EQUAL(keel_rpc_register_method("echo", ut_echo, "again"), -EEXIST);
	CU_ASSERT_EQUAL(keel_rpc_register_method(NULL, ut_echo, "x"), -EINVAL);
	CU_ASSERT_EQUAL(keel_rpc_register_method("x", NULL, "x"), -EINVAL);
}

static void test_single(void)
{
	json_t *resp;
	char *text;

	ut_setup();
	ut_feed("{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"params\":{\"a\":1},\"id\":7}");
	{
		size_t len;
		const char *out = rpc_conn_output(g_conn, &len);

		/* compact JSON followed by exactly one newline */
		CU_ASSERT(len > 0 && out[len - 1] == '\n');
		CU_ASSERT(memchr(out, ' ', len) == NULL);
	}
	resp = ut_take(g_conn);
	text = json_dumps(json_array_get(resp, 0), JSON_COMPACT | JSON_SORT_KEYS);
	CU_ASSERT_STRING_EQUAL(text, "{\"id\":7,\"jsonrpc\":\"2.0\",\"result\":{\"a\":1}}");
	free(text);
	json_decref(resp);
	/* string ids come back as they were; absent params give true */
	resp = ut_one("{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":\"abc\"}");
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(resp, "id")), "abc");
	CU_ASSERT(json_is_true(json_object_get(resp, "result")));
	json_decref(resp);
	ut_teardown();
}

static const char g_stream[] =
	"{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"params\":{\"s\":\"}{][\\\"\\\\\"},\"id\":1}"
	"  \n\t{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"params\":[1,[2,{\"x\":[]}]],\"id\":2}"
	"[{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":3},"
	"{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"params\":{\"k\":\"\\u00e9{\"}}]"
	"{\"jsonrpc\":\"2.0\",\"method\":\"nope\",\"id\":4}\n";

static char *ut_stream_expected(void)
{
	char *text;
	json_t *all;

	ut_setup();
	CU_ASSERT_EQUAL(ut_feed(g_stream), 0);
	all = ut_take(g_conn);
	CU_ASSERT_EQUAL(json_array_size(all), 4);
	text = json_dumps(all, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(all);
	ut_teardown();
	return text;
}

static void test_back_to_back(void)
{
	json_t *all;

	ut_setup();
	CU_ASSERT_EQUAL(ut_feed(g_stream), 0);
	all = ut_take(g_conn);
	CU_ASSERT_EQUAL_FATAL(json_array_size(all), 4);
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(
				       json_object_get(json_array_get(all, 0), "result"), "s")),
			       "}{][\"\\");
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_array_get(all, 1), "id")), 2);
	/* the batch answers once, as an array, without the notification */
	CU_ASSERT(json_is_array(json_array_get(all, 2)));
	CU_ASSERT_EQUAL(json_array_size(json_array_get(all, 2)), 1);
	CU_ASSERT_EQUAL(ut_error_code(json_array_get(all, 3)), KEEL_RPC_METHOD_NOT_FOUND);
	CU_ASSERT_EQUAL(g_echo_calls, 4);
	json_decref(all);
	ut_teardown();
}

static void test_split_every_byte(void)
{
	size_t n = strlen(g_stream), k;
	char *expected = ut_stream_expected();

	for (k = 0; k <= n; k++) {
		char *got;
		json_t *all;

		ut_setup();
		CU_ASSERT_EQUAL(rpc_conn_feed(g_conn, g_stream, k), 0);
		CU_ASSERT_EQUAL(rpc_conn_feed(g_conn, g_stream + k, n - k), 0);
		all = ut_take(g_conn);
		got = json_dumps(all, JSON_COMPACT | JSON_SORT_KEYS);
		if (strcmp(got, expected) != 0) {
			fprintf(stderr, "\nsplit at %zu: %s\n", k, got);
			CU_FAIL("split changed the responses");
		}
		free(got);
		json_decref(all);
		ut_teardown();
	}

	/* one byte at a time */
	{
		char *got;
		json_t *all;

		ut_setup();
		for (k = 0; k < n; k++) {
			CU_ASSERT_EQUAL(rpc_conn_feed(g_conn, g_stream + k, 1), 0);
		}
		all = ut_take(g_conn);
		got = json_dumps(all, JSON_COMPACT | JSON_SORT_KEYS);
		CU_ASSERT_STRING_EQUAL(got, expected);
		free(got);
		json_decref(all);
		ut_teardown();
	}
	free(expected);
}

static void test_batch(void)
{
	json_t *resp, *e;
	size_t i;

	ut_setup();
	resp = ut_one("[{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"params\":[1],\"id\":1},"
		      "{\"jsonrpc\":\"2.0\",\"method\":\"echo\"},"
		      "5,"
		      "{\"jsonrpc\":\"2.0\",\"method\":\"missing\",\"id\":2},"
		      "{\"jsonrpc\":\"2.0\",\"id\":3}]");
	CU_ASSERT_EQUAL_FATAL(json_array_size(resp), 4);
	json_array_foreach(resp, i, e) {
		CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(e, "jsonrpc")), "2.0");
	}
	CU_ASSERT(json_is_array(json_object_get(json_array_get(resp, 0), "result")));
	CU_ASSERT_EQUAL(ut_error_code(json_array_get(resp, 1)), KEEL_RPC_INVALID_REQUEST);
	CU_ASSERT_EQUAL(ut_error_code(json_array_get(resp, 2)), KEEL_RPC_METHOD_NOT_FOUND);
	CU_ASSERT_EQUAL(ut_error_code(json_array_get(resp, 3)), KEEL_RPC_INVALID_REQUEST);
	json_decref(resp);

	/* a batch of notifications only: no reply at all */
	CU_ASSERT_EQUAL(ut_feed("[{\"jsonrpc\":\"2.0\",\"method\":\"echo\"},"
				"{\"jsonrpc\":\"2.0\",\"method\":\"unknown\"}]"),
			0);
	resp = ut_take(g_conn);
	CU_ASSERT_EQUAL(json_array_size(resp), 0);
	json_decref(resp);

	ut_expect_error("[]", KEEL_RPC_INVALID_REQUEST, "empty batch", true);
	ut_teardown();
}

/* The output queued so far, as a string (not consumed). */
static char *ut_peek(struct rpc_conn *conn)
{
	size_t len;
	const char *out = rpc_conn_output(conn, &len);

	return strndup(out, len);
}

static void test_batch_async(void)
{
	json_t *resp;
	char *raw;

	ut_setup();
	ut_feed("[{\"jsonrpc\":\"2.0\",\"method\":\"later\",\"id\":1},"
		"{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":2}]");
	/* responses stream in completion order: the array is open, not closed */
	raw = ut_peek(g_conn);
	CU_ASSERT(raw[0] == '[');
	CU_ASSERT(strstr(raw, "\"id\":2") != NULL);
	CU_ASSERT(strchr(raw, '\n') == NULL);
	free(raw);
	CU_ASSERT_EQUAL(rpc_conn_pending(g_conn), 1);
	CU_ASSERT_EQUAL_FATAL(g_later_count, 1);
	keel_rpc_send_result(g_later[0], json_string("late"));
	resp = ut_one("");
	CU_ASSERT_EQUAL_FATAL(json_array_size(resp), 2);
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_array_get(resp, 0), "id")), 2);
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_array_get(resp, 1), "id")), 1);
	CU_ASSERT_EQUAL(rpc_conn_pending(g_conn), 0);
	json_decref(resp);
	ut_teardown();
}

static void test_parse_error(void)
{
	json_t *resp;

	ut_setup();
	ut_feed("{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":1}{\"jsonrpc\" 2.0}"
		"{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":2}");
	resp = ut_take(g_conn);
	/* the request before the garbage is answered, nothing after it */
	CU_ASSERT_EQUAL_FATAL(json_array_size(resp), 2);
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_array_get(resp, 0), "id")), 1);
	CU_ASSERT_EQUAL(ut_error_code(json_array_get(resp, 1)), KEEL_RPC_PARSE_ERROR);
	CU_ASSERT(strstr(ut_error_message(json_array_get(resp, 1)), "Parse error") != NULL);
	CU_ASSERT(json_is_null(json_object_get(json_array_get(resp, 1), "id")));
	json_decref(resp);
	CU_ASSERT(rpc_conn_is_broken(g_conn));
	CU_ASSERT_EQUAL(ut_feed("{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":3}"), -EPROTO);
	resp = ut_take(g_conn);
	CU_ASSERT_EQUAL(json_array_size(resp), 0);
	json_decref(resp);
	ut_teardown();

	/* stray closing bracket, bare word, invalid UTF-8 */
	ut_setup();
	CU_ASSERT_EQUAL(ut_feed("}"), -EPROTO);
	json_decref(ut_take(g_conn));
	ut_teardown();
	ut_setup();
	ut_expect_error("hello ", KEEL_RPC_PARSE_ERROR, "Parse error", true);
	ut_teardown();
	ut_setup();
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"\xff\xfe\",\"id\":1}",
			KEEL_RPC_PARSE_ERROR, "Parse error", true);
	ut_teardown();
}

static void test_invalid_shapes(void)
{
	ut_setup();
	ut_expect_error("1 ", KEEL_RPC_INVALID_REQUEST, "expected a JSON object", true);
	ut_expect_error("\"str\"", KEEL_RPC_INVALID_REQUEST, "expected a JSON object", true);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"id\":1}", KEEL_RPC_INVALID_REQUEST,
			"\"method\" must be a string", false);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":5,\"id\":1}", KEEL_RPC_INVALID_REQUEST,
			"\"method\" must be a string", false);
	ut_expect_error("{\"jsonrpc\":\"1.0\",\"method\":\"echo\",\"id\":1}",
			KEEL_RPC_INVALID_REQUEST, "\"jsonrpc\" must be \"2.0\"", false);
	ut_expect_error("{\"method\":\"echo\",\"id\":1}", KEEL_RPC_INVALID_REQUEST,
			"\"jsonrpc\" must be \"2.0\"", false);
	ut_expect_error("{\"jsonrpc\":2.0,\"method\":\"echo\",\"id\":1}", KEEL_RPC_INVALID_REQUEST,
			"\"jsonrpc\" must be \"2.0\"", false);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":{}}",
			KEEL_RPC_INVALID_REQUEST, "\"id\" must be", true);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":[1]}",
			KEEL_RPC_INVALID_REQUEST, "\"id\" must be", true);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":true}",
			KEEL_RPC_INVALID_REQUEST, "\"id\" must be", true);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"params\":\"x\",\"id\":1}",
			KEEL_RPC_INVALID_REQUEST, "\"params\" must be", false);
	/* the connection survives request-shape errors */
	CU_ASSERT_FALSE(rpc_conn_is_broken(g_conn));
	CU_ASSERT_EQUAL(g_echo_calls, 0);
	ut_teardown();
}

static void test_unknown_method(void)
{
	json_t *resp;

	ut_setup();
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"no_such\",\"id\":9}",
			KEEL_RPC_METHOD_NOT_FOUND, "no_such", false);
	/* a notification never gets a reply, not even "not found" */
	CU_ASSERT_EQUAL(ut_feed("{\"jsonrpc\":\"2.0\",\"method\":\"no_such\"}"), 0);
	resp = ut_take(g_conn);
	CU_ASSERT_EQUAL(json_array_size(resp), 0);
	json_decref(resp);
	ut_teardown();
}

static void test_errno_error(void)
{
	json_t *resp;

	ut_setup();
	resp = ut_one("{\"jsonrpc\":\"2.0\",\"method\":\"fail\",\"id\":1}");
	CU_ASSERT_EQUAL(ut_error_code(resp), -EEXIST);
	CU_ASSERT_STRING_EQUAL(ut_error_message(resp), "bdev 'x' already exists");
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(resp, "id")), 1);
	json_decref(resp);
	ut_teardown();
}

static void test_params(void)
{
	json_t *resp, *r;

	ut_setup();
	resp = ut_one("{\"jsonrpc\":\"2.0\",\"method\":\"typed\",\"id\":1,\"params\":{\"s\":\"hi\","
		      "\"u64\":18446744073709551,\"b\":true,\"i64\":-5,\"d\":2,\"j\":[1]}}");
	r = json_object_get(resp, "result");
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r, "s")), "hi");
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "u64")), 18446744073709551LL);
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "u32")), 77); /* default kept */
	CU_ASSERT(json_is_true(json_object_get(r, "b")));
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "i64")), -5);
	CU_ASSERT_DOUBLE_EQUAL(json_real_value(json_object_get(r, "d")), 2.0, 1e-9);
	json_decref(resp);

	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"typed\",\"id\":1}",
			KEEL_RPC_INVALID_PARAMS, "missing parameter 's'", false);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"typed\",\"id\":1,\"params\":{}}",
			KEEL_RPC_INVALID_PARAMS, "missing parameter 's'", false);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"typed\",\"id\":1,\"params\":{\"s\":1}}",
			KEEL_RPC_INVALID_PARAMS, "s: expected a string", false);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"typed\",\"id\":1,\"params\":"
			"{\"s\":\"a\",\"u64\":-1}}",
			KEEL_RPC_INVALID_PARAMS, "u64: expected an integer >= 0", false);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"typed\",\"id\":1,\"params\":"
			"{\"s\":\"a\",\"u64\":1.5}}",
			KEEL_RPC_INVALID_PARAMS, "u64:", false);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"typed\",\"id\":1,\"params\":"
			"{\"s\":\"a\",\"u32\":4294967296}}",
			KEEL_RPC_INVALID_PARAMS, "u32: expected an integer from 0 to 4294967295",
			false);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"typed\",\"id\":1,\"params\":"
			"{\"s\":\"a\",\"b\":\"yes\"}}",
			KEEL_RPC_INVALID_PARAMS, "b: expected true or false", false);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"typed\",\"id\":1,\"params\":"
			"{\"s\":\"a\",\"d\":\"1\"}}",
			KEEL_RPC_INVALID_PARAMS, "d: expected a number", false);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"typed\",\"id\":1,\"params\":"
			"{\"s\":\"a\",\"foo\":1}}",
			KEEL_RPC_INVALID_PARAMS, "unknown parameter 'foo'", false);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"typed\",\"id\":1,\"params\":[\"a\"]}",
			KEEL_RPC_INVALID_PARAMS, "params must be an object", false);
	/* null for an optional parameter means "not given" */
	resp = ut_one("{\"jsonrpc\":\"2.0\",\"method\":\"typed\",\"id\":1,\"params\":{\"s\":\"x\","
		      "\"u32\":null}}");
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_object_get(resp, "result"), "u32")),
			77);
	json_decref(resp);
	ut_teardown();
}

static void test_compat_params(void)
{
	json_t *resp, *r;

	ut_setup();
	/* at SPDK's default, equal to the same_as parameter, any value of an ANY one */
	resp = ut_one("{\"jsonrpc\":\"2.0\",\"method\":\"compat\",\"id\":1,\"params\":"
		      "{\"name\":\"n\",\"bs\":4096,\"md\":0,\"pbs\":4096,\"flag\":true,"
		      "\"id\":null}}");
	r = json_object_get(resp, "result");
	CU_ASSERT_PTR_NOT_NULL_FATAL(r);
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r, "name")), "n");
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "bs")), 4096);
	json_decref(resp);
	resp = ut_one("{\"jsonrpc\":\"2.0\",\"method\":\"compat\",\"id\":1,\"params\":"
		      "{\"name\":\"n\",\"pbs\":0,\"flag\":false}}");
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_object_get(resp, "result"), "bs")),
			512);
	json_decref(resp);
	/* other values: named, with the reason and what is accepted */
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"compat\",\"id\":1,\"params\":"
			"{\"name\":\"n\",\"md\":8}}",
			KEEL_RPC_INVALID_PARAMS,
			"md: metadata is not supported (only 0 is accepted)", false);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"compat\",\"id\":1,\"params\":"
			"{\"name\":\"n\",\"pbs\":4096}}",
			KEEL_RPC_INVALID_PARAMS,
			"pbs: one block size (only 0 or the value of bs is accepted)", false);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"compat\",\"id\":1,\"params\":"
			"{\"name\":\"n\",\"id\":\"x\"}}",
			KEEL_RPC_INVALID_PARAMS, "id: no ids (leave it out)", false);
	/* the type is checked first, and unknown names stay unknown */
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"compat\",\"id\":1,\"params\":"
			"{\"name\":\"n\",\"flag\":\"yes\"}}",
			KEEL_RPC_INVALID_PARAMS, "flag: expected true or false", false);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"compat\",\"id\":1,\"params\":"
			"{\"name\":\"n\",\"md\":-1}}",
			KEEL_RPC_INVALID_PARAMS, "md: expected an integer from 0", false);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"compat\",\"id\":1,\"params\":"
			"{\"name\":\"n\",\"md\":0,\"colour\":1}}",
			KEEL_RPC_INVALID_PARAMS, "unknown parameter 'colour'", false);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"compat\",\"id\":1,\"params\":"
			"{\"md\":0}}",
			KEEL_RPC_INVALID_PARAMS, "missing parameter 'name'", false);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"compat\",\"id\":1,\"params\":[1]}",
			KEEL_RPC_INVALID_PARAMS, "params must be an object", false);
	ut_teardown();
}

static void test_method_params(void)
{
	/* the daemon's own tables name the parameter too (no bdev layer needed) */
	ut_setup();
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"bdev_malloc_create\",\"id\":1,"
			"\"params\":{\"name\":\"m\"}}",
			KEEL_RPC_INVALID_PARAMS, "missing parameter 'num_blocks'", false);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"bdev_malloc_create\",\"id\":1,"
			"\"params\":{\"name\":\"m\",\"num_blocks\":8,\"block_size\":1000}}",
			KEEL_RPC_INVALID_PARAMS, "block_size: 1000 is not a power of two", false);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"bdev_null_create\",\"id\":1,"
			"\"params\":{\"name\":\"a/b\",\"num_blocks\":8}}",
			KEEL_RPC_INVALID_PARAMS, "name: 'a/b' is not a valid bdev name", false);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"bdev_null_create\",\"id\":1,"
			"\"params\":{\"name\":\"n\",\"num_blocks\":0}}",
			KEEL_RPC_INVALID_PARAMS, "num_blocks: must be greater than 0", false);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"bdev_aio_create\",\"id\":1,"
			"\"params\":{\"name\":\"a\",\"filename\":\"rel/path\"}}",
			KEEL_RPC_INVALID_PARAMS, "filename: 'rel/path' is not an absolute path",
			false);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"framework_set_reactor_mode\",\"id\":1,"
			"\"params\":{\"mode\":\"turbo\"}}",
			KEEL_RPC_INVALID_PARAMS, "mode: unknown mode 'turbo'", false);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"keel_get_version\",\"id\":1,"
			"\"params\":{\"x\":1}}",
			KEEL_RPC_INVALID_PARAMS, "unknown parameter 'x'", false);
	ut_teardown();
}

static void test_rebuild_rate_range(void)
{
	/* The rate becomes an integer byte rate: out of range is refused with the range
	 * (1e300 would overflow that conversion), and the options are not changed. */
	ut_setup();
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"rebuild_set_options\",\"id\":1,"
			"\"params\":{\"rate_limit_mib_s\":1e300}}",
			KEEL_RPC_INVALID_PARAMS,
			"rate_limit_mib_s: 1e+300 is out of range: 0 (no limit) to 1048576 MiB/s",
			false);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"rebuild_set_options\",\"id\":1,"
			"\"params\":{\"rate_limit_mib_s\":-1}}",
			KEEL_RPC_INVALID_PARAMS, "rate_limit_mib_s: -1 is out of range", false);
	ut_expect_error("{\"jsonrpc\":\"2.0\",\"method\":\"rebuild_set_options\",\"id\":1,"
			"\"params\":{\"tasks\":0}}",
			KEEL_RPC_INVALID_PARAMS, "tasks 1..32", false);
	{
		json_t *resp = ut_one("{\"jsonrpc\":\"2.0\",\"method\":\"rebuild_set_options\","
				      "\"id\":1,\"params\":{\"rate_limit_mib_s\":1048576}}");
		json_t *res = json_object_get(resp, "result");

		CU_ASSERT_PTR_NOT_NULL(res);
		CU_ASSERT(json_real_value(json_object_get(res, "rate_limit_mib_s")) == 1048576.0);
		json_decref(resp);
		resp = ut_one("{\"jsonrpc\":\"2.0\",\"method\":\"rebuild_set_options\",\"id\":1,"
			      "\"params\":{\"rate_limit_mib_s\":0}}");
		json_decref(resp);
	}
	ut_teardown();
}

static void test_get_methods(void)
{
	json_t *resp, *r;
	size_t i;
	bool found = false;

	ut_setup();
	resp = ut_one("{\"jsonrpc\":\"2.0\",\"method\":\"rpc_get_methods\",\"id\":1}");
	r = json_object_get(resp, "result");
	CU_ASSERT(json_array_size(r) > 5);
	for (i = 0; i < json_array_size(r); i++) {
		if (strcmp(json_string_value(json_array_get(r, i)), "bdev_get_bdevs") == 0) {
			found = true;
		}
	}
	CU_ASSERT(found);
	json_decref(resp);
	resp = ut_one("{\"jsonrpc\":\"2.0\",\"method\":\"rpc_get_methods\",\"id\":1,"
		      "\"params\":{\"include_help\":true}}");
	r = json_array_get(json_object_get(resp, "result"), 0);
	CU_ASSERT(json_is_string(json_object_get(r, "name")));
	CU_ASSERT(json_is_string(json_object_get(r, "help")));
	json_decref(resp);
	resp = ut_one("{\"jsonrpc\":\"2.0\",\"method\":\"keel_get_version\",\"id\":1}");
	CU_ASSERT(strncmp(json_string_value(
				  json_object_get(json_object_get(resp, "result"), "version")),
			  "keel v", 6) == 0);
	json_decref(resp);
	ut_teardown();
}

static void test_oversized(void)
{
	size_t big = KEEL_RPC_MAX_REQUEST + 16;
	char *buf = malloc(big + 64);
	json_t *resp;
	int rc;

	/* an unterminated request that grows past the limit */
	strcpy(buf, "{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"params\":{\"s\":\"");
	memset(buf + strlen(buf), 'a', big - strlen(buf));
	ut_setup();
	rc = rpc_conn_feed(g_conn, buf, big / 2);
	CU_ASSERT_EQUAL(rc, 0);
	rc = rpc_conn_feed(g_conn, buf + big / 2, big - big / 2);
	CU_ASSERT_EQUAL(rc, -EMSGSIZE);
	resp = ut_take(g_conn);
	CU_ASSERT_EQUAL_FATAL(json_array_size(resp), 1);
	CU_ASSERT_EQUAL(ut_error_code(json_array_get(resp, 0)), KEEL_RPC_INVALID_REQUEST);
	CU_ASSERT(strstr(ut_error_message(json_array_get(resp, 0)), "limit") != NULL);
	json_decref(resp);
	CU_ASSERT(rpc_conn_is_broken(g_conn));
	ut_teardown();

	/* a complete request over the limit in one read */
	buf[big - 3] = '"';
	buf[big - 2] = '}';
	buf[big - 1] = '}';
	ut_setup();
	CU_ASSERT_EQUAL(rpc_conn_feed(g_conn, buf, big), -EMSGSIZE);
	CU_ASSERT_EQUAL(g_echo_calls, 0);
	json_decref(ut_take(g_conn));
	ut_teardown();

	/* just under the limit works */
	{
		size_t ok = KEEL_RPC_MAX_REQUEST - 64;
		char *small = malloc(ok + 64);
		size_t n;

		n = (size_t)sprintf(small, "{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":1,"
					   "\"params\":{\"s\":\"");
		memset(small + n, 'b', ok - n);
		strcpy(small + ok, "\"}}");
		ut_setup();
		CU_ASSERT_EQUAL(rpc_conn_feed(g_conn, small, strlen(small)), 0);
		CU_ASSERT_EQUAL(g_echo_calls, 1);
		json_decref(ut_take(g_conn));
		ut_teardown();
		free(small);
	}
	free(buf);
}

static void test_reply_after_close(void)
{
	json_t *resp;

	ut_setup();
	ut_feed("{\"jsonrpc\":\"2.0\",\"method\":\"later\",\"id\":1}"
		"[{\"jsonrpc\":\"2.0\",\"method\":\"later\",\"id\":2},"
		"{\"jsonrpc\":\"2.0\",\"method\":\"later\",\"id\":3}]"
		"{\"jsonrpc\":\"2.0\",\"method\":\"later\"}");
	/* the batch waits for the request before it, so their replies cannot mix */
	CU_ASSERT_EQUAL(g_later_count, 1);
	CU_ASSERT_FALSE(rpc_conn_has_work(g_conn));
	/* a late reply on a live connection shows up */
	keel_rpc_send_result(g_later[0], NULL);
	resp = ut_take(g_conn);
	CU_ASSERT_EQUAL(json_array_size(resp), 1);
	json_decref(resp);
	CU_ASSERT(rpc_conn_has_work(g_conn));
	CU_ASSERT(rpc_conn_process(g_conn) > 0);
	/* the notification after the batch waits for the batch */
	CU_ASSERT_EQUAL(g_later_count, 3);
	CU_ASSERT_EQUAL(rpc_conn_pending(g_conn), 2);
	/* the client goes away; the other replies are dropped without harm (ASan checks) */
	rpc_conn_close(g_conn);
	g_conn = NULL;
	keel_rpc_send_error(g_later[1], -EIO, "too late");
	keel_rpc_send_result(g_later[2], json_string("nobody listens"));
	CU_ASSERT_EQUAL(g_later_count, 3); /* the notification never ran */
}

static void test_abandon(void)
{
	json_t *resp;

	/* replied normally: the hook is gone and never runs */
	ut_setup();
	g_abandoned = 0;
	ut_feed("{\"jsonrpc\":\"2.0\",\"method\":\"waiter\",\"id\":1}");
	CU_ASSERT_PTR_NOT_NULL_FATAL(g_waiter);
	keel_rpc_send_result(g_waiter, NULL);
	g_waiter = NULL;
	resp = ut_take(g_conn);
	CU_ASSERT_EQUAL(json_array_size(resp), 1);
	json_decref(resp);
	rpc_conn_close(g_conn);
	g_conn = NULL;
	CU_ASSERT_EQUAL(g_abandoned, 0);

	/* the client goes away: every waiting request is told, once (ASan: nothing leaks) */
	g_conn = rpc_conn_create();
	ut_feed("{\"jsonrpc\":\"2.0\",\"method\":\"waiter\",\"id\":2}");
	CU_ASSERT_PTR_NOT_NULL_FATAL(g_waiter);
	rpc_conn_close(g_conn);
	g_conn = NULL;
	CU_ASSERT_EQUAL(g_abandoned, 1);
	CU_ASSERT_PTR_NULL(g_waiter);
}

/* A batch (or stream) of \p n copies of \p member with ids 0..n-1 ("%d" in member). */
static char *ut_repeat(const char *member, int n, bool batch)
{
	size_t cap = (strlen(member) + 16) * (size_t)n + 8, len = 0;
	char *buf = malloc(cap);
	int i;

	CU_ASSERT_FATAL(buf != NULL);
	if (batch) {
		buf[len++] = '[';
	}
	for (i = 0; i < n; i++) {
		if (batch && i > 0) {
			buf[len++] = ',';
		}
		len += (size_t)snprintf(buf + len, cap - len, member, i);
	}
	if (batch) {
		buf[len++] = ']';
	}
	buf[len] = '\0';
	return buf;
}

static void test_batch_limit(void)
{
	char *text;
	json_t *resp;

	rpc_set_limits(4, 0);
	ut_setup();
	text = ut_repeat("{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":%d}", 5, true);
	ut_expect_error(text, KEEL_RPC_INVALID_REQUEST,
			"a batch of 5 requests is over the limit "
			"of 4 (keeld --rpc-max-batch)",
			true);
	free(text);
	CU_ASSERT_EQUAL(g_echo_calls, 0);
	CU_ASSERT_FALSE(rpc_conn_is_broken(g_conn));
	/* at the limit it runs, on the same connection */
	text = ut_repeat("{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":%d}", 4, true);
	resp = ut_one(text);
	free(text);
	CU_ASSERT_EQUAL(json_array_size(resp), 4);
	CU_ASSERT_EQUAL(g_echo_calls, 4);
	json_decref(resp);
	ut_teardown();
	rpc_set_limits(0, 0);
}

/*
 * The reproduction: a 4 MiB batch of 48,000 rpc_get_methods{include_help}.
 * It used to cost ~2 GB and stall the reactor for ~27 s; now it is refused from the
 * scanner's count, before anything is parsed or run.
 */
static void test_huge_batch(void)
{
	char *text = ut_repeat("{\"jsonrpc\":\"2.0\",\"method\":\"rpc_get_methods\",\"id\":%d,"
			       "\"params\":{\"include_help\":true}}",
			       48000, true);
	size_t len;

	CU_ASSERT(strlen(text) < KEEL_RPC_MAX_REQUEST);
	ut_setup();
	ut_expect_error(text, KEEL_RPC_INVALID_REQUEST,
			"a batch of 48000 requests is over the "
			"limit of 128",
			true);
	rpc_conn_output(g_conn, &len);
	CU_ASSERT_EQUAL(len, 0);
	CU_ASSERT_FALSE(rpc_conn_has_work(g_conn));
	ut_teardown();
	free(text);
}

static void test_batch_incremental(void)
{
	char *text = ut_repeat("{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"params\":[%d],\"id\":1}",
			       100, true);
	bool seen[100] = {false};
	json_t *all, *arr, *e;
	int loops = 0, n;
	size_t i;

	ut_setup();
	/* a request after the batch must wait for the whole array */
	CU_ASSERT_EQUAL(ut_feed(text), 0);
	CU_ASSERT_EQUAL(ut_feed("{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":\"after\"}"), 0);
	CU_ASSERT(g_echo_calls > 0 && g_echo_calls < 100);
	CU_ASSERT(rpc_conn_has_work(g_conn));
	CU_ASSERT_FALSE(rpc_conn_wants_input(g_conn));
	while (rpc_conn_has_work(g_conn)) {
		n = rpc_conn_process(g_conn);
		CU_ASSERT(n > 0 && n < 100);
		if (n <= 0 || ++loops > 100) {
			break;
		}
	}
	CU_ASSERT(loops >= 2);
	CU_ASSERT_EQUAL(g_echo_calls, 101);
	all = ut_take(g_conn);
	CU_ASSERT_EQUAL_FATAL(json_array_size(all), 2);
	arr = json_array_get(all, 0);
	CU_ASSERT_EQUAL_FATAL(json_array_size(arr), 100);
	json_array_foreach(arr, i, e) {
		json_int_t v = json_integer_value(json_array_get(json_object_get(e, "result"), 0));

		CU_ASSERT(v >= 0 && v < 100 && !seen[v]);
		if (v >= 0 && v < 100) {
			seen[v] = true;
		}
	}
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_array_get(all, 1), "id")),
			       "after");
	json_decref(all);
	CU_ASSERT(rpc_conn_wants_input(g_conn));
	ut_teardown();

	/* a client that goes away mid-batch: the members not started never run */
	ut_setup();
	CU_ASSERT_EQUAL(ut_feed(text), 0);
	n = g_echo_calls;
	CU_ASSERT(n < 100);
	ut_teardown();
	CU_ASSERT_EQUAL(g_echo_calls, n);
	free(text);
}

/* A client that does not read its replies stops being served, it is not buffered for. */
static void test_unread_output(void)
{
	char *big = malloc(40000), *text;
	size_t len, before;
	int answered = 0, rounds = 0, calls;

	memset(big, 'x', 32768);
	big[32768] = '\0';
	text = malloc(20 * 33000);
	text[0] = '\0';
	for (int i = 0; i < 20; i++) {
		sprintf(text + strlen(text),
			"{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":%d,"
			"\"params\":[\"%s\"]}",
			i, big);
	}
	ut_setup();
	CU_ASSERT_EQUAL(ut_feed(text), 0);
	calls = g_echo_calls;
	CU_ASSERT(calls > 0 && calls < 20);
	rpc_conn_output(g_conn, &len);
	CU_ASSERT(len >= (256u << 10) && len < (256u << 10) + 40000);
	CU_ASSERT_FALSE(rpc_conn_has_work(g_conn));
	CU_ASSERT_FALSE(rpc_conn_wants_input(g_conn));
	CU_ASSERT_EQUAL(rpc_conn_process(g_conn), 0);
	CU_ASSERT_EQUAL(g_echo_calls, calls);
	/* reading lets it go on */
	while (answered < 20 && rounds++ < 100) {
		json_t *got = ut_take(g_conn);

		answered += (int)json_array_size(got);
		json_decref(got);
		before = (size_t)g_echo_calls;
		rpc_conn_process(g_conn);
		CU_ASSERT(answered == 20 || (size_t)g_echo_calls > before);
	}
	CU_ASSERT_EQUAL(answered, 20);
	ut_teardown();
	free(text);
	free(big);
}

static void test_response_cap(void)
{
	char text[4096], big[2001];
	json_t *resp;

	memset(big, 'y', 2000);
	big[2000] = '\0';
	rpc_set_limits(0, 1024);
	ut_setup();
	snprintf(text, sizeof(text),
		 "{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":5,"
		 "\"params\":[\"%s\"]}",
		 big);
	resp = ut_one(text);
	CU_ASSERT_EQUAL(ut_error_code(resp), -EMSGSIZE);
	CU_ASSERT(strstr(ut_error_message(resp), "larger than the limit of 1024 bytes "
						 "(keeld --rpc-max-response)") != NULL);
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(resp, "id")), 5);
	json_decref(resp);
	/* small ones still go out, in a batch too */
	snprintf(text, sizeof(text),
		 "[{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":1,"
		 "\"params\":[\"%s\"]},{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":2}]",
		 big);
	resp = ut_one(text);
	CU_ASSERT_EQUAL_FATAL(json_array_size(resp), 2);
	CU_ASSERT_EQUAL(ut_error_code(json_array_get(resp, 0)), -EMSGSIZE);
	CU_ASSERT(json_is_true(json_object_get(json_array_get(resp, 1), "result")));
	json_decref(resp);
	ut_teardown();
	rpc_set_limits(0, 0);
}

/* Late replies that do not fit next to the unread ones become a short error. */
static void test_unread_cap(void)
{
	char *big = malloc(60001), *text = malloc(5 * 61000);
	json_t *all, *r1 = NULL, *r2 = NULL, *e;
	size_t i;

	memset(big, 'z', 60000);
	big[60000] = '\0';
	rpc_set_limits(0, 64u << 10); /* at most 64 KiB + 256 KiB unread */
	ut_setup();
	ut_feed("{\"jsonrpc\":\"2.0\",\"method\":\"later\",\"id\":1}"
		"{\"jsonrpc\":\"2.0\",\"method\":\"later\",\"id\":2}");
	text[0] = '\0';
	for (int k = 0; k < 5; k++) {
		sprintf(text + strlen(text),
			"{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":%d,"
			"\"params\":[\"%s\"]}",
			10 + k, big);
	}
	ut_feed(text);
	CU_ASSERT_EQUAL(g_echo_calls, 5); /* ~300 KB unread now */
	big[30000] = '\0';
	keel_rpc_send_result(g_later[0], json_string(big));
	keel_rpc_send_result(g_later[1], json_string("short"));
	all = ut_take(g_conn);
	json_array_foreach(all, i, e) {
		if (json_integer_value(json_object_get(e, "id")) == 1) {
			r1 = e;
		} else if (json_integer_value(json_object_get(e, "id")) == 2) {
			r2 = e;
		}
	}
	CU_ASSERT_FATAL(r1 != NULL && r2 != NULL);
	CU_ASSERT_EQUAL(ut_error_code(r1), -ENOBUFS);
	CU_ASSERT(strstr(ut_error_message(r1), "still unread") != NULL);
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r2, "result")), "short");
	json_decref(all);
	ut_teardown();
	rpc_set_limits(0, 0);
	free(text);
	free(big);
}

/* A slice also ends after about a millisecond of work, however few requests it had. */
static void test_slice_time(void)
{
	char *text = ut_repeat("{\"jsonrpc\":\"2.0\",\"method\":\"slow\",\"id\":%d}", 10, false);
	json_t *all;

	ut_setup();
	g_slow_calls = 0;
	CU_ASSERT_EQUAL(ut_feed(text), 0);
	CU_ASSERT_EQUAL(g_slow_calls, 2); /* 1.2 ms after the second */
	CU_ASSERT(rpc_conn_has_work(g_conn));
	CU_ASSERT_EQUAL(rpc_conn_process(g_conn), 2);
	CU_ASSERT_EQUAL(g_slow_calls, 4);
	while (rpc_conn_has_work(g_conn)) {
		rpc_conn_process(g_conn);
	}
	CU_ASSERT_EQUAL(g_slow_calls, 10);
	all = ut_take(g_conn);
	CU_ASSERT_EQUAL(json_array_size(all), 10);
	json_decref(all);
	ut_teardown();
	free(text);
}

static void test_notice(void)
{
	char line[256];
	json_t *resp;
	int n;

	ut_setup();
	CU_ASSERT(rpc_conn_notice(g_conn, -ETIMEDOUT, "closed: idle"));
	resp = ut_one("");
	CU_ASSERT_EQUAL(ut_error_code(resp), -ETIMEDOUT);
	CU_ASSERT_STRING_EQUAL(ut_error_message(resp), "closed: idle");
	CU_ASSERT(json_is_null(json_object_get(resp, "id")));
	json_decref(resp);
	/* never inside an open batch array */
	ut_feed("[{\"jsonrpc\":\"2.0\",\"method\":\"later\",\"id\":1},"
		"{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":2}]");
	CU_ASSERT_FALSE(rpc_conn_notice(g_conn, -ETIMEDOUT, "closed: idle"));
	keel_rpc_send_result(g_later[0], NULL);
	json_decref(ut_take(g_conn));
	ut_teardown();

	n = rpc_error_line(line, sizeof(line), -EUSERS, "too many \"clients\"");
	CU_ASSERT_FATAL(n > 0);
	CU_ASSERT_EQUAL(line[n - 1], '\n');
	resp = json_loadb(line, (size_t)n, 0, NULL);
	CU_ASSERT_EQUAL(ut_error_code(resp), -EUSERS);
	CU_ASSERT_STRING_EQUAL(ut_error_message(resp), "too many \"clients\"");
	json_decref(resp);
	CU_ASSERT_EQUAL(rpc_error_line(line, 10, -EUSERS, "too many clients"), -ENOSPC);
}

int main(void)
{
	CU_pSuite suite;
	unsigned failures;

	if (CU_initialize_registry() != CUE_SUCCESS) {
		return 1;
	}
	/* For the mock clock: time moves only when a test says, so slices are by count. */
	if (ut_threads_init(1) != 0) {
		return 1;
	}
	keel_rpc_register_method("echo", ut_echo, "echo params");
	keel_rpc_register_method("later", ut_later, "reply later");
	keel_rpc_register_method("fail", ut_fail, "fail with -EEXIST");
	keel_rpc_register_method("typed", ut_typed, "decode every type");
	keel_rpc_register_method("compat", ut_compat, "SPDK-compatible parameters");
	keel_rpc_register_method("waiter", ut_waiter, "wait until abandoned");
	keel_rpc_register_method("slow", ut_slow, "take 600 us of mock time");
	rpc_framework_register();
	rpc_bdev_register();
	rpc_rebuild_register();

	suite = CU_add_suite("rpc", NULL, NULL);
	CU_add_test(suite, "register", test_register);
	CU_add_test(suite, "single", test_single);
	CU_add_test(suite, "back_to_back", test_back_to_back);
	CU_add_test(suite, "split_every_byte", test_split_every_byte);
	CU_add_test(suite, "batch", test_batch);
	CU_add_test(suite, "batch_async", test_batch_async);
	CU_add_test(suite, "parse_error", test_parse_error);
	CU_add_test(suite, "invalid_shapes", test_invalid_shapes);
	CU_add_test(suite, "unknown_method", test_unknown_method);
	CU_add_test(suite, "errno_error", test_errno_error);
	CU_add_test(suite, "params", test_params);
	CU_add_test(suite, "compat_params", test_compat_params);
	CU_add_test(suite, "method_params", test_method_params);
	CU_add_test(suite, "rebuild_rate_range", test_rebuild_rate_range);
	CU_add_test(suite, "get_methods", test_get_methods);
	CU_add_test(suite, "oversized", test_oversized);
	CU_add_test(suite, "reply_after_close", test_reply_after_close);
	CU_add_test(suite, "abandon", test_abandon);
	CU_add_test(suite, "batch_limit", test_batch_limit);
	CU_add_test(suite, "huge_batch", test_huge_batch);
	CU_add_test(suite, "batch_incremental", test_batch_incremental);
	CU_add_test(suite, "unread_output", test_unread_output);
	CU_add_test(suite, "response_cap", test_response_cap);
	CU_add_test(suite, "unread_cap", test_unread_cap);
	CU_add_test(suite, "slice_time", test_slice_time);
	CU_add_test(suite, "notice", test_notice);

	CU_basic_set_mode(CU_BRM_VERBOSE);
	CU_basic_run_tests();
	failures = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
	CU_cleanup_registry();
	rpc_methods_clear();
	ut_threads_fini();
	return failures == 0 ? 0 : 1;
}
