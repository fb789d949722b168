/*
 * daemon/metrics_*.c without a daemon: listen addresses, the Prometheus text of a
 * hand-made snapshot, and the HTTP server with a test hook in place of the main
 * keel thread: a daemon that never answers gets 503 after the timeout, one snapshot
 * is asked for at a time, a late snapshot is not served stale, wrong paths and
 * methods get 404 and 405, and stop frees a waiting scrape. Everything the real
 * collection gathers is covered end to end by tests/e2e/test_metrics.sh.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "keel/reactor.h"
#include "metrics.h"
#include "metrics_internal.h"
#include "ut_cunit.h"

/* ------------------------------------------------------------------------------ */
/* Addresses                                                                       */
/* ------------------------------------------------------------------------------ */

static void test_addr_parse(void)
{
	static const struct {
		const char *text;
		int family; /* 0: refused */
		uint16_t port;
		bool loopback;
	} cases[] = {
		{"9560", AF_INET, 9560, true},
		{"127.0.0.1:9560", AF_INET, 9560, true},
		{"localhost:1", AF_INET, 1, true},
		{"0.0.0.0:9560", AF_INET, 9560, false},
		{"192.0.2.7:0", AF_INET, 0, false},
		{"[::1]:9560", AF_INET6, 9560, true},
		{"[::]:9560", AF_INET6, 9560, false},
		{"", 0, 0, false},
		{"example.com:9560", 0, 0, false},
		{"127.0.0.1:65536", 0, 0, false},
		{"127.0.0.1:", 0, 0, false},
		{"127.0.0.1:-1", 0, 0, false},
		{"::1:9560", 0, 0, false},
		{"[::1]9560", 0, 0, false},
		{"[zz]:9560", 0, 0, false},
		{"1.2.3.4:80x", 0, 0, false},
	};
	struct sockaddr_storage ss;
	socklen_t len;
	char why[128];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int rc;

		why[0] = '\0';
		rc = keeld_metrics_addr_parse(cases[i].text, &ss, &len, why, sizeof(why));
		if (cases[i].family == 0) {
			CU_ASSERT_EQUAL(rc, -EINVAL);
			CU_ASSERT(why[0] != '\0');
			continue;
		}
		CU_ASSERT_EQUAL_FATAL(rc, 0);
		CU_ASSERT_EQUAL(ss.ss_family, cases[i].family);
		CU_ASSERT_EQUAL(ntohs(((struct sockaddr_in *)&ss)->sin_port), cases[i].port);
		CU_ASSERT_EQUAL(keeld_metrics_addr_is_loopback(&ss), cases[i].loopback);
	}
}

/* ------------------------------------------------------------------------------ */
/* Rendering                                                                       */
/* ------------------------------------------------------------------------------ */

static char *render(json_t *snapshot)
{
	struct metrics_process proc = {.have_rss = true, .rss_bytes = 4096};
	char *buf = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&buf, &len);

	CU_ASSERT_PTR_NOT_NULL_FATAL(out);
	CU_ASSERT_EQUAL(keeld_metrics_render(out, snapshot, &proc), 0);
	fclose(out);
	return buf;
}

static int count_lines(const char *text, const char *prefix)
{
	int n = 0;

	for (const char *p = text; p != NULL && *p != '\0';
	     p = strchr(p, '\n'), p = p ? p + 1 : p) {
		n += strncmp(p, prefix, strlen(prefix)) == 0;
	}
	return n;
}

static void test_render(void)
{
	json_t *hist = json_array(), *snap;
	char *text;

	for (int b = 0; b < 32; b++) {
		json_array_append_new(hist, json_integer(b == 3    ? 2
							 : b == 40 ? 9
							 : b == 31 ? 1
								   : 0));
	}
	snap = json_pack(
		"{s:[{s:s,s:s,s:I,s:[{s:s,s:s,s:{s:{s:I,s:I,s:I,s:I}}},{s:s,s:s}],"
		"s:[{s:s,s:s,s:I,s:I,s:I,s:f,s:I}],s:{s:{s:I,s:I,s:I,s:I,s:o}}}],"
		"s:[{s:s,s:s,s:I,s:I,s:I}],s:[{s:i,s:i,s:s,s:I,s:I,s:I}]}",
		"volumes", "name", "v\"1\\\n", "state", "degraded", "size", (json_int_t)1048576,
		"replicas", "bdev", "v.r0", "state", "healthy", "io", "read", "ops", (json_int_t)1,
		"bytes", (json_int_t)1, "errors", (json_int_t)2, "lat_sum_ns", (json_int_t)1,
		"uuid", "u-1", "state", "offline", "rebuilds", "target", "v.r2", "state", "running",
		"blocks_total", (json_int_t)100, "blocks_done", (json_int_t)25, "block_size",
		(json_int_t)512, "rate_mib_s", 2.0, "eta_s", (json_int_t)-1, "io", "write", "ops",
		(json_int_t)3, "bytes", (json_int_t)12288, "errors", (json_int_t)0, "lat_sum_ns",
		(json_int_t)1500000000, "lat_hist", hist, "exports", "name", "e1", "bdev", "v",
		"connections", (json_int_t)2, "bytes_in", (json_int_t)10, "bytes_out",
		(json_int_t)20, "reactors", "reactor", 0, "cpu", 3, "mode", "poll", "busy_ns",
		(json_int_t)1500000000, "idle_ns", (json_int_t)0, "wakeups", (json_int_t)7);
	CU_ASSERT_PTR_NOT_NULL_FATAL(snap);
	json_object_set_new(snap, "nbd",
			    json_pack("{s:I,s:I}", "connections", (json_int_t)4,
				      "connections_refused", (json_int_t)9));
	text = render(snap);
	/* Label values escaped: quote, backslash, newline. */
	CU_ASSERT_PTR_NOT_NULL(
		strstr(text, "keel_volume_state{volume=\"v\\\"1\\\\\\n\",state=\"degraded\"} 1\n"));
	CU_ASSERT_PTR_NOT_NULL(
		strstr(text, "keel_volume_state{volume=\"v\\\"1\\\\\\n\",state=\"online\"} 0\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(text, ",state=\"offline\"} 1\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "replica=\"v.r0\"} 2\n")); /* replica errors */
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "replica=\"u-1\",state=\"offline\"} 1\n"));
	/* Histogram: cumulative, the overflow bucket only in +Inf, count = +Inf. */
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "op=\"write\",le=\"8e-06\"} 0\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "op=\"write\",le=\"1.6e-05\"} 2\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "op=\"write\",le=\"134.217728\"} 2\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "op=\"write\",le=\"+Inf\"} 3\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "keel_volume_io_latency_seconds_count{volume="));
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "op=\"write\"} 1.5\n"));
	/* A volume without "io" read or flush histogram: no samples for them. */
	CU_ASSERT_PTR_NULL(strstr(text, "op=\"read\",le="));
	/* Rebuild: ratio, bytes, rate in bytes/s; no ETA while unknown. */
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "replica=\"v.r2\"} 0.25\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "keel_volume_rebuild_done_bytes{"));
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "replica=\"v.r2\"} 12800\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "replica=\"v.r2\"} 2097152\n"));
	CU_ASSERT_EQUAL(count_lines(text, "keel_volume_rebuild_eta_seconds{"), 0);
	CU_ASSERT_PTR_NOT_NULL(
		strstr(text, "keel_export_sent_bytes_total{export=\"e1\",bdev=\"v\"} 20\n"));
	CU_ASSERT_PTR_NOT_NULL(
		strstr(text, "keel_reactor_busy_seconds_total{reactor=\"0\",cpu=\"3\"} 1.5\n"));
	CU_ASSERT_PTR_NOT_NULL(
		strstr(text, "keel_reactor_mode{reactor=\"0\",cpu=\"3\",mode=\"poll\"} 1\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "process_resident_memory_bytes 4096\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "\nkeel_nbd_connections 4\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "\nkeel_nbd_connections_refused_total 9\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "\nkeel_nbd_stall_timeouts_total 0\n"));
	/* Every family once, HELP and TYPE together. */
	CU_ASSERT_EQUAL(count_lines(text, "# TYPE keel_volume_state gauge"), 1);
	CU_ASSERT_EQUAL(count_lines(text, "# TYPE keel_volume_io_latency_seconds histogram"), 1);
	CU_ASSERT_EQUAL(count_lines(text, "# HELP "), count_lines(text, "# TYPE "));
	CU_ASSERT_EQUAL(count_lines(text, "# TYPE process_open_fds"), 0); /* not read: absent */
	free(text);
	json_decref(snap);

	/* No snapshot at all: only the process families. */
	text = render(NULL);
	CU_ASSERT_EQUAL(count_lines(text, "keel_volume_state{"), 0);
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "keel_build_info{version="));
	free(text);
}

/* ------------------------------------------------------------------------------ */
/* HTTP with a test hook in place of the main thread                               */
/* ------------------------------------------------------------------------------ */

static int g_asks;
static bool g_answer; /* the hook answers at once; else never */

/* The answer comes a little later from another thread, as the main thread's would. */
static void *answer_thread(void *arg)
{
	(void)arg;
	usleep(20000);
	keeld_metrics_snapshot_ready(
		json_pack("{s:[],s:[],s:[]}", "volumes", "exports", "reactors"));
	return NULL;
}

static int ask_hook(void)
{
	pthread_t t;

	__atomic_fetch_add(&g_asks, 1, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&g_answer, __ATOMIC_SEQ_CST)) {
		CU_ASSERT_EQUAL_FATAL(pthread_create(&t, NULL, answer_thread, NULL), 0);
		pthread_detach(t);
	}
	return 0;
}

/* Send \p request to the server; \return the status code, 0 when closed without one. */
static int http(const char *request, char *body, size_t body_len)
{
	struct sockaddr_in sin = {.sin_family = AF_INET};
	char buf[65536];
	size_t got = 0;
	ssize_t n;
	int fd, code = 0;
	char *p;

	sin.sin_port = htons(keeld_metrics_port());
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	CU_ASSERT_FATAL(fd >= 0);
	CU_ASSERT_EQUAL_FATAL(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	CU_ASSERT_EQUAL(write(fd, request, strlen(request)), (ssize_t)strlen(request));
	while (got < sizeof(buf) - 1 && (n = read(fd, buf + got, sizeof(buf) - 1 - got)) > 0) {
		got += (size_t)n;
	}
	close(fd);
	buf[got] = '\0';
	sscanf(buf, "HTTP/1.%*d %d", &code);
	if (body != NULL) {
		p = strstr(buf, "\r\n\r\n");
		snprintf(body, body_len, "%s", p != NULL ? p + 4 : "");
	}
	return code;
}

static void start_server(uint32_t timeout_ms)
{
	struct keeld_metrics_opts opts = {
		.listen = "127.0.0.1:0", .timeout_ms = timeout_ms, .ask_fn = ask_hook};
	char err[256];

	CU_ASSERT_EQUAL_FATAL(keeld_metrics_start(&opts, err, sizeof(err)), 0);
	CU_ASSERT(keeld_metrics_port() != 0);
}

static void test_http_timeout(void)
{
	char body[256];
	uint64_t t0, ms;

	g_asks = 0;
	g_answer = false;
	start_server(200);
	t0 = keel_now_ns();
	CU_ASSERT_EQUAL(http("GET /metrics HTTP/1.0\r\n\r\n", body, sizeof(body)), 503);
	ms = (keel_now_ns() - t0) / 1000000;
	CU_ASSERT(ms >= 150);  /* it did wait for the daemon... */
	CU_ASSERT(ms < 10000); /* ...but not for ever */
	CU_ASSERT_PTR_NOT_NULL(strstr(body, "did not answer in time"));
	/* The first snapshot is still being gathered: no second ask piles on. */
	CU_ASSERT_EQUAL(http("GET /metrics HTTP/1.0\r\n\r\n", NULL, 0), 503);
	CU_ASSERT_EQUAL(g_asks, 1);
	/* It comes late: dropped, never served to a later scrape. */
	keeld_metrics_snapshot_ready(json_pack("{s:[{s:s}]}", "volumes", "name", "stale"));
	g_answer = true;
	CU_ASSERT_EQUAL(http("GET /metrics HTTP/1.0\r\n\r\n", body, sizeof(body)), 200);
	CU_ASSERT_EQUAL(g_asks, 2);
	CU_ASSERT_PTR_NULL(strstr(body, "stale"));
	keeld_metrics_stop();
	CU_ASSERT_EQUAL(keeld_metrics_port(), 0);
}

static void test_http_requests(void)
{
	char body[65536];
	int code;

	g_asks = 0;
	g_answer = true;
	start_server(2000);
	CU_ASSERT_EQUAL(http("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", body,
			     sizeof(body)),
			200);
	CU_ASSERT_PTR_NOT_NULL(strstr(body, "# TYPE keel_build_info gauge\n"));
	CU_ASSERT_EQUAL(http("HEAD /metrics HTTP/1.0\r\n\r\n", body, sizeof(body)), 200);
	CU_ASSERT_EQUAL(body[0], '\0');
	CU_ASSERT_EQUAL(http("GET /metrics?x=1 HTTP/1.0\r\n\r\n", NULL, 0), 200);
	CU_ASSERT_EQUAL(http("GET / HTTP/1.0\r\n\r\n", NULL, 0), 404);
	CU_ASSERT_EQUAL(http("GET /metricsx HTTP/1.0\r\n\r\n", NULL, 0), 404);
	CU_ASSERT_EQUAL(http("POST /metrics HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello", NULL, 0),
			405);
	CU_ASSERT_EQUAL(http("PUT /x HTTP/1.0\r\n\r\n", NULL, 0), 405);
	code = http("garbage\r\n\r\n", NULL, 0);
	CU_ASSERT(code == 0 || code / 100 == 4); /* refused or closed, never served */
	CU_ASSERT_EQUAL(g_asks, 3);              /* the two GETs and the HEAD */
	keeld_metrics_stop();
	keeld_metrics_stop(); /* idempotent */
}

static void *scrape_thread(void *arg)
{
	*(int *)arg = http("GET /metrics HTTP/1.0\r\n\r\n", NULL, 0);
	return NULL;
}

/* keeld stopping while a scrape waits: the scrape gets 503 at once, stop returns. */
static void test_http_stop_frees_waiter(void)
{
	pthread_t t;
	uint64_t t0;
	int code = -1;

	g_asks = 0;
	g_answer = false;
	start_server(60000);
	CU_ASSERT_EQUAL_FATAL(pthread_create(&t, NULL, scrape_thread, &code), 0);
	while (__atomic_load_n(&g_asks, __ATOMIC_SEQ_CST) == 0) {
		usleep(1000);
	}
	t0 = keel_now_ns();
	keeld_metrics_stop();
	pthread_join(t, NULL);
	CU_ASSERT((keel_now_ns() - t0) / 1000000 < 30000);
	CU_ASSERT(code == 503 || code == 0);
	keeld_metrics_snapshot_ready(NULL); /* the gathering ends after the stop: dropped */
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"addr_parse", test_addr_parse},
		{"render", test_render},
		{"http_timeout", test_http_timeout},
		{"http_requests", test_http_requests},
		{"http_stop_frees_waiter", test_http_stop_frees_waiter},
		{NULL, NULL},
	};

	return ut_cunit_run("metrics", tests);
}
