/*
 * Unit tests of the JSON-RPC socket server (daemon/server.c): fair slices between
 * clients, the connection limit with eviction and refusal, the idle timeout, the
 * listener's back-off when accept4() runs out of file descriptors, and that an idle
 * server runs nothing until a socket or a late reply gives it a reason.
 *
 * The server runs on a harness thread (tests/common/ut_threads.h) with the mock
 * clock, so every timed poller runs exactly when the test advances time; the sockets
 * are real unix sockets, whose bytes move at once inside the kernel.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <jansson.h>

#include "keel/log.h"
#include "keel/reactor.h"
#include "keel/rpc.h"
#include "rpc_internal.h"
#include "ut_cunit.h"
#include "ut_threads.h"

static char g_dir[64];
static char g_sock[100];
static struct keel_rpc_request *g_later[16];
static int g_later_count;

static void ut_echo(struct keel_rpc_request *req, json_t *params)
{
	keel_rpc_send_result(req, params != NULL ? json_incref(params) : NULL);
}

static void ut_later(struct keel_rpc_request *req, json_t *params)
{
	CU_ASSERT_FATAL(g_later_count < 16);
	g_later[g_later_count++] = req;
}

/* ------------------------------------------------------------------------------ */
/* Helpers                                                                         */
/* ------------------------------------------------------------------------------ */

static void ut_server_start(const struct keel_rpc_server_opts *opts)
{
	CU_ASSERT_FATAL(ut_threads_init(1) == 0);
	ut_set_thread(0);
	CU_ASSERT_FATAL(keel_rpc_server_start(g_sock, opts) == 0);
	g_later_count = 0;
}

static void ut_server_stop(void)
{
	ut_set_thread(0);
	keel_rpc_server_stop();
	ut_threads_fini();
}

/* One run of every poller that is due after \p ms of mock time. */
static void ut_step_ms(uint64_t ms)
{
	ut_time_advance_us(ms * 1000);
	ut_poll_threads();
}

static int ut_connect(void)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

	CU_ASSERT_FATAL(fd >= 0);
	snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", g_sock);
	CU_ASSERT_FATAL(connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0);
	return fd;
}

static void ut_send(int fd, const char *text)
{
	size_t len = strlen(text), off = 0;

	while (off < len) {
		ssize_t n = send(fd, text + off, len - off, MSG_NOSIGNAL);

		if (n < 0 && errno == EAGAIN) {
			ut_step_ms(1); /* the server reads as the test goes on */
			continue;
		}
		CU_ASSERT_FATAL(n > 0);
		off += (size_t)n;
	}
}

/*
 * Everything the server sent so far, without waiting. \p *eof tells whether the
 * server closed (EOF or a reset after the data).
 */
static char *ut_recv_all(int fd, bool *eof)
{
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap + 1);

	*eof = false;
	for (;;) {
		ssize_t n;

		if (len == cap) {
			cap *= 2;
			buf = realloc(buf, cap + 1);
		}
		n = recv(fd, buf + len, cap - len, MSG_DONTWAIT);
		if (n > 0) {
			len += (size_t)n;
			continue;
		}
		if (n == 0 || (n < 0 && errno == ECONNRESET)) {
			*eof = true;
		}
		break;
	}
	buf[len] = '\0';
	return buf;
}

/* The one JSON line the server sent (NULL when nothing complete came). */
static json_t *ut_recv_line(int fd, bool *eof)
{
	char *text = ut_recv_all(fd, eof);
	json_t *v = NULL;

	if (strchr(text, '\n') != NULL) {
		v = json_loads(text, JSON_DECODE_ANY | JSON_DISABLE_EOF_CHECK, NULL);
	}
	free(text);
	return v;
}

static int ut_code(json_t *resp)
{
	return (int)json_integer_value(json_object_get(json_object_get(resp, "error"), "code"));
}

static const char *ut_message(json_t *resp)
{
	const char *m = json_string_value(
		json_object_get(json_object_get(resp, "error"), "message"));
	return m != NULL ? m : "";
}

/* The closing notice: an error with id null that names \p substr, then EOF. */
static void ut_expect_closed(int fd, int code, const char *substr)
{
	bool eof;
	json_t *resp = ut_recv_line(fd, &eof);

	CU_ASSERT_FATAL(resp != NULL);
	CU_ASSERT_EQUAL(ut_code(resp), code);
	CU_ASSERT(json_is_null(json_object_get(resp, "id")));
	if (strstr(ut_message(resp), substr) == NULL) {
		fprintf(stderr, "\nmessage '%s' lacks '%s'\n", ut_message(resp), substr);
		CU_FAIL("closing message");
	}
	CU_ASSERT(eof);
	json_decref(resp);
}

static void ut_expect_open(int fd)
{
	bool eof;
	char *text = ut_recv_all(fd, &eof);

	CU_ASSERT_STRING_EQUAL(text, "");
	CU_ASSERT_FALSE(eof);
	free(text);
}

/* Send one echo request and expect its answer after one step. */
static void ut_expect_served(int fd, int id)
{
	char req[128];
	bool eof;
	json_t *resp;

	snprintf(req, sizeof(req), "{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":%d}", id);
	ut_send(fd, req);
	ut_step_ms(1);
	resp = ut_recv_line(fd, &eof);
	CU_ASSERT_FATAL(resp != NULL);
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(resp, "id")), id);
	CU_ASSERT(json_is_true(json_object_get(resp, "result")));
	json_decref(resp);
}

static const char g_later_req[] = "{\"jsonrpc\":\"2.0\",\"method\":\"later\",\"id\":99}";

/* ------------------------------------------------------------------------------ */
/* Tests                                                                           */
/* ------------------------------------------------------------------------------ */

/*
 * A client with a long batch is served a slice per run: another client's request is
 * answered while the batch's array is still open.
 */
static void test_fair_slices(void)
{
	char *batch, *text;
	size_t cap = 128 * 80, len = 0;
	bool eof, other_answered_first = false;
	int a, b, steps = 0;
	json_t *resp;

	batch = malloc(cap);
	batch[len++] = '[';
	for (int i = 0; i < 128; i++) {
		len += (size_t)snprintf(batch + len, cap - len,
					"%s{\"jsonrpc\":\"2.0\",\"method\":"
					"\"echo\",\"id\":%d}",
					i > 0 ? "," : "", i);
	}
	batch[len++] = ']';
	batch[len] = '\0';

	ut_server_start(NULL);
	a = ut_connect();
	b = ut_connect();
	ut_step_ms(1);
	ut_send(a, batch);
	ut_send(b, "{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":\"b\"}");
	ut_step_ms(1);
	resp = ut_recv_line(b, &eof);
	CU_ASSERT_FATAL(resp != NULL);
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(resp, "id")), "b");
	json_decref(resp);
	text = ut_recv_all(a, &eof);
	other_answered_first = strchr(text, '\n') == NULL;
	CU_ASSERT(other_answered_first);
	/* the rest of the batch follows in later runs, one array in all */
	len = strlen(text);
	while (strchr(text, '\n') == NULL && steps++ < 1000) {
		char *more;

		ut_step_ms(1);
		more = ut_recv_all(a, &eof);
		text = realloc(text, len + strlen(more) + 1);
		strcpy(text + len, more);
		len += strlen(more);
		free(more);
	}
	resp = json_loads(text, 0, NULL);
	CU_ASSERT_EQUAL(json_array_size(resp), 128);
	json_decref(resp);
	free(text);
	close(a);
	close(b);
	ut_server_stop();
	free(batch);
}

/*
 * At the limit the connection idle the longest makes room; when every connection is
 * handling a request, the new one gets an error naming the limit and is closed.
 */
static void test_connection_limit(void)
{
	struct keel_rpc_server_opts opts;
	bool eof;
	int c[6];

	keel_rpc_server_opts_init(&opts);
	opts.max_connections = 3;
	opts.idle_timeout_ms = 0;
	ut_server_start(&opts);
	for (int i = 0; i < 3; i++) {
		c[i] = ut_connect();
		ut_step_ms(1);
	}
	ut_expect_served(c[1], 1); /* c[0] is now the one idle the longest */
	c[3] = ut_connect();
	ut_step_ms(1);
	ut_expect_closed(c[0], -EUSERS, "allows 3 RPC connections (keeld --rpc-max-connections)");
	ut_expect_open(c[1]);
	ut_expect_open(c[2]);
	ut_expect_served(c[3], 3);

	/* every connection busy: refused at once, nobody else disturbed */
	for (int i = 1; i < 4; i++) {
		ut_send(c[i], g_later_req); /* one at a time: g_later[i - 1] is c[i]'s */
		ut_step_ms(1);
	}
	CU_ASSERT_EQUAL_FATAL(g_later_count, 3);
	c[4] = ut_connect();
	ut_step_ms(1);
	ut_expect_closed(c[4], -EUSERS,
			 "its limit (keeld --rpc-max-connections), and every one "
			 "is handling a request");
	for (int i = 1; i < 4; i++) {
		ut_expect_open(c[i]);
	}

	/* once one answered, it can make room again */
	keel_rpc_send_result(g_later[0], NULL);
	ut_step_ms(1);
	json_decref(ut_recv_line(c[1], &eof)); /* its answer */
	c[5] = ut_connect();
	ut_step_ms(1);
	ut_expect_closed(c[1], -EUSERS, "idle the longest");
	ut_expect_served(c[5], 5);
	keel_rpc_send_result(g_later[1], NULL);
	keel_rpc_send_result(g_later[2], NULL);
	for (int i = 0; i < 6; i++) {
		close(c[i]);
	}
	ut_server_stop();
}

static void test_idle_timeout(void)
{
	struct keel_rpc_server_opts opts;
	int quiet, busy, chatty;
	bool eof;
	json_t *resp;

	keel_rpc_server_opts_init(&opts);
	opts.idle_timeout_ms = 1000;
	ut_server_start(&opts);
	quiet = ut_connect();
	busy = ut_connect();
	chatty = ut_connect();
	ut_step_ms(1);
	ut_send(busy, g_later_req);
	ut_step_ms(1);
	CU_ASSERT_EQUAL_FATAL(g_later_count, 1);

	ut_step_ms(600);
	ut_expect_served(chatty, 1);
	ut_step_ms(300); /* 902 ms */
	ut_expect_open(quiet);
	ut_step_ms(200);
	ut_expect_closed(quiet, -ETIMEDOUT, "without a request (keeld --rpc-idle-timeout)");
	/* a connection whose request is being handled is not idle */
	ut_expect_open(busy);
	ut_step_ms(300); /* chatty's last request was 900 ms ago */
	ut_expect_served(chatty, 2);
	ut_step_ms(2000);
	ut_expect_open(busy);
	keel_rpc_send_result(g_later[0], NULL);
	ut_step_ms(1);
	resp = ut_recv_line(busy, &eof);
	CU_ASSERT(resp != NULL && json_integer_value(json_object_get(resp, "id")) == 99);
	json_decref(resp);
	ut_step_ms(1100);
	ut_expect_closed(busy, -ETIMEDOUT, "keeld --rpc-idle-timeout");
	ut_expect_closed(chatty, -ETIMEDOUT, "keeld --rpc-idle-timeout");
	close(quiet);
	close(busy);
	close(chatty);
	ut_server_stop();
}

/* Runs of every poller of the server's thread, summed. */
static uint64_t ut_total_runs(void)
{
	struct keel_poller_stats ps[64];
	struct keel_thread_stats ts;
	uint32_t n = keel_thread_get_stats(ut_thread(0), &ts, ps, 64);
	uint64_t runs = 0;

	CU_ASSERT_FATAL(n < 64);
	for (uint32_t i = 0; i < n; i++) {
		runs += ps[i].run_count;
	}
	return runs;
}

/*
 * Idle means idle: with connections open (one waiting for a handler) and time
 * passing, no poller runs; a request runs its connection and a late reply wakes its
 * own without any time passing; with no connection the idle timer is not armed.
 */
static void test_idle_runs_nothing(void)
{
	struct keel_rpc_server_opts opts;
	uint64_t runs;
	int quiet, waiting, chatty;
	bool eof;
	json_t *resp;

	keel_rpc_server_opts_init(&opts);
	opts.idle_timeout_ms = 60000;
	ut_server_start(&opts);
	quiet = ut_connect();
	waiting = ut_connect();
	chatty = ut_connect();
	ut_step_ms(1);
	ut_send(waiting, g_later_req);
	ut_step_ms(1);
	CU_ASSERT_EQUAL_FATAL(g_later_count, 1);
	ut_expect_served(chatty, 1);

	runs = ut_total_runs();
	for (int i = 0; i < 10000; i++) {
		ut_step_ms(1); /* 10 s, a millisecond at a time */
	}
	CU_ASSERT_EQUAL(ut_total_runs(), runs);

	/* A request: answered with no time passing (its fd alone ran it). */
	ut_send(chatty, "{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":2}");
	ut_poll_threads();
	resp = ut_recv_line(chatty, &eof);
	CU_ASSERT(resp != NULL && json_integer_value(json_object_get(resp, "id")) == 2);
	json_decref(resp);
	/* A late reply: sent with no time passing (the reply woke its connection). */
	keel_rpc_send_result(g_later[0], NULL);
	ut_poll_threads();
	resp = ut_recv_line(waiting, &eof);
	CU_ASSERT(resp != NULL && json_integer_value(json_object_get(resp, "id")) == 99);
	json_decref(resp);
	ut_expect_open(quiet);

	/* Without connections even the idle timer rests: 10 minutes run nothing. */
	close(quiet);
	close(waiting);
	close(chatty);
	ut_poll_threads();
	runs = ut_total_runs();
	ut_step_ms(600000);
	ut_step_ms(600000);
	CU_ASSERT_EQUAL(ut_total_runs(), runs);
	ut_server_stop();
}

static int g_accept_warnings;
static int g_accept_again;

static void ut_log_hook(enum keel_log_level level, const char *line, void *ctx)
{
	if (strstr(line, "cannot accept a connection") != NULL) {
		g_accept_warnings++;
	}
	if (strstr(line, "accepting connections on") != NULL) {
		g_accept_again++;
	}
}

static uint64_t ut_listener_runs(bool *paused)
{
	struct keel_poller_stats ps[64];
	struct keel_thread_stats ts;
	uint32_t n = keel_thread_get_stats(ut_thread(0), &ts, ps, 64);

	for (uint32_t i = 0; i < n && i < 64; i++) {
		if (strcmp(ps[i].name, "rpc_listen") == 0) {
			*paused = ps[i].paused;
			return ps[i].run_count;
		}
	}
	CU_FAIL("no rpc_listen poller");
	return 0;
}

/*
 * Out of file descriptors: the listener pauses with a growing back-off instead of
 * retrying every millisecond, says so once, and accepts again when fds are back.
 */
static void test_accept_backoff(void)
{
	struct rlimit saved, low;
	uint64_t runs_before, runs_after;
	int c[4], spare;
	bool paused = false;

	ut_server_start(NULL);
	for (int i = 0; i < 4; i++) {
		c[i] = ut_connect(); /* waiting in the backlog */
	}
	CU_ASSERT_FATAL(getrlimit(RLIMIT_NOFILE, &saved) == 0);
	spare = open("/dev/null", O_RDONLY | O_CLOEXEC); /* the lowest free fd */
	CU_ASSERT_FATAL(spare >= 0);
	close(spare);
	low = saved;
	low.rlim_cur = (rlim_t)spare; /* every fd below is taken: accept4 gets EMFILE */
	g_accept_warnings = g_accept_again = 0;
	keel_log_set_hook(ut_log_hook, NULL);
	CU_ASSERT_FATAL(setrlimit(RLIMIT_NOFILE, &low) == 0);

	ut_step_ms(1);
	runs_before = ut_listener_runs(&paused);
	CU_ASSERT(paused);
	for (int i = 0; i < 3000; i++) {
		ut_step_ms(1);
	}
	runs_after = ut_listener_runs(&paused);
	/* 3 s at 1 ms would be 3000 tries; a back-off from 10 ms doubling is about 10 */
	CU_ASSERT(runs_after - runs_before <= 12);
	CU_ASSERT_EQUAL(g_accept_warnings, 1);
	CU_ASSERT_EQUAL(g_accept_again, 0);

	CU_ASSERT_FATAL(setrlimit(RLIMIT_NOFILE, &saved) == 0);
	for (int i = 0; i < 1100 && g_accept_again == 0; i++) {
		ut_step_ms(1);
	}
	CU_ASSERT_EQUAL(g_accept_again, 1);
	keel_log_set_hook(NULL, NULL);
	for (int i = 0; i < 4; i++) {
		ut_expect_served(c[i], i);
		close(c[i]);
	}
	ut_server_stop();
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"fair_slices", test_fair_slices},
		{"connection_limit", test_connection_limit},
		{"idle_timeout", test_idle_timeout},
		{"accept_backoff", test_accept_backoff},
		{"idle_runs_nothing", test_idle_runs_nothing},
		{NULL, NULL},
	};
	int rc;

	snprintf(g_dir, sizeof(g_dir), "/tmp/keel-rpc-ut.XXXXXX");
	if (mkdtemp(g_dir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(g_sock, sizeof(g_sock), "%s/rpc.sock", g_dir);
	keel_rpc_register_method("echo", ut_echo, "echo params");
	keel_rpc_register_method("later", ut_later, "reply later");
	rc = ut_cunit_run("rpc_server", tests);
	rpc_methods_clear();
	rmdir(g_dir);
	return rc;
}
