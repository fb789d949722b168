/*
 * The HTTP side of keeld's metrics endpoint: libmicrohttpd on its internal thread.
 *
 * Each GET /metrics asks the main keel thread for a snapshot by message and waits on a
 * condition variable, at most the timeout; the answer is rendered here, off the
 * reactors. At most one snapshot is being gathered at a time: a scrape that comes while
 * an earlier one (that timed out) is still being gathered waits for that one instead of
 * queueing more work on a daemon that is already slow. A snapshot that comes after its
 * scrape gave up is dropped, never served stale.
 *
 * What a client can make this hold is bounded: connections (libmicrohttpd's limit;
 * more wait in the backlog), the bytes of a request's headers (431 beyond), the time an
 * idle connection stays open, and request bodies, which are never read into memory:
 * only GET and HEAD are answered, before any body.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <microhttpd.h>

#include "keel/log.h"
#include "keel/reactor.h"
#include "metrics.h"
#include "metrics_internal.h"

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond; /* a snapshot came, or stop */
	bool cond_ready;     /* cond was set up with CLOCK_MONOTONIC */
	bool stopping;       /* waits end at once with 503 */
	bool in_flight;      /* a snapshot was asked for and has not come yet */
	bool waiting;        /* a scrape waits for it (else it is dropped) */
	bool have_result;    /* result is the answer for the waiting scrape */
	json_t *result;      /* NULL with have_result: gathering failed */
	uint32_t timeout_ms;
	int (*ask_fn)(void);
	struct MHD_Daemon *mhd; /* owned by the thread that started it */
	uint16_t port;
} g_m = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* ------------------------------------------------------------------------------ */
/* Addresses                                                                       */
/* ------------------------------------------------------------------------------ */

static void metrics_why(char *why, size_t len, const char *msg)
{
	if (why != NULL && len > 0) {
		snprintf(why, len, "%s", msg);
	}
}

static int metrics_parse_port(const char *text, uint16_t *port)
{
	unsigned long v;
	char *end;

	if (text[0] < '0' || text[0] > '9') {
		return -EINVAL;
	}
	errno = 0;
	v = strtoul(text, &end, 10);
	if (*end != '\0' || errno != 0 || v > 65535) {
		return -EINVAL;
	}
	*port = (uint16_t)v;
	return 0;
}

int keeld_metrics_addr_parse(const char *text, struct sockaddr_storage *addr, socklen_t *len,
			     char *why, size_t whylen)
{
	char host[KEELD_METRICS_ADDR_MAX + 1];
	const char *colon, *port_text;
	uint16_t port;

	memset(addr, 0, sizeof(*addr));
	if (text == NULL || text[0] == '\0' || strlen(text) > KEELD_METRICS_ADDR_MAX) {
		metrics_why(why, whylen, "expected PORT, HOST:PORT or [IPV6]:PORT");
		return -EINVAL;
	}
	if (text[0] == '[') {
		const char *close = strchr(text, ']');

		if (close == NULL || close[1] != ':') {
			metrics_why(why, whylen, "an IPv6 address goes in brackets: [::1]:9560");
			return -EINVAL;
		}
		snprintf(host, sizeof(host), "%.*s", (int)(close - text - 1), text + 1);
		port_text = close + 2;
	} else if ((colon = strrchr(text, ':')) != NULL) {
		snprintf(host, sizeof(host), "%.*s", (int)(colon - text), text);
		port_text = colon + 1;
	} else {
		snprintf(host, sizeof(host), "127.0.0.1"); /* a port alone: loopback */
		port_text = text;
	}
	if (metrics_parse_port(port_text, &port) != 0) {
		metrics_why(why, whylen, "the port must be a number from 0 to 65535");
		return -EINVAL;
	}
	if (strcmp(host, "localhost") == 0) {
		snprintf(host, sizeof(host), "127.0.0.1");
	}
	if (text[0] != '[') {
		struct sockaddr_in *sin = (struct sockaddr_in *)addr;

		if (inet_pton(AF_INET, host, &sin->sin_addr) != 1) {
			metrics_why(why, whylen,
				    "the host must be a numeric IPv4 address, [IPv6] or localhost "
				    "(no name lookup)");
			return -EINVAL;
		}
		sin->sin_family = AF_INET;
		sin->sin_port = htons(port);
		*len = sizeof(*sin);
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)addr;

		if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1) {
			metrics_why(why, whylen, "not a numeric IPv6 address in the brackets");
			return -EINVAL;
		}
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(port);
		*len = sizeof(*sin6);
	}
	return 0;
}

bool keeld_metrics_addr_is_loopback(const struct sockaddr_storage *addr)
{
	if (addr->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)addr;

		return (ntohl(sin->sin_addr.s_addr) >> 24) == 127;
	}
	if (addr->ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)addr;

		return IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr);
	}
	return false;
}

/* ------------------------------------------------------------------------------ */
/* Snapshot hand-over                                                              */
/* ------------------------------------------------------------------------------ */

void keeld_metrics_snapshot_ready(json_t *snapshot)
{
	json_t *drop = NULL;

	pthread_mutex_lock(&g_m.lock);
	g_m.in_flight = false;
	if (g_m.waiting && !g_m.stopping) {
		g_m.result = snapshot;
		g_m.have_result = true;
		pthread_cond_broadcast(&g_m.cond);
	} else {
		drop = snapshot; /* its scrape gave up: never served stale */
	}
	pthread_mutex_unlock(&g_m.lock);
	json_decref(drop);
}

static int metrics_ask_main_thread(void)
{
	struct keel_thread *main_thread = keel_thread_get_main();

	if (main_thread == NULL) {
		return -EAGAIN;
	}
	/* -ENOMEM (a full ring) is backpressure: this scrape gets 503, the next retries. */
	return keel_thread_send_msg(main_thread, keeld_metrics_collect, NULL);
}

/*
 * Get a snapshot for this scrape. \return 0 with \p *out (owned by the caller),
 * -ETIMEDOUT, -ESHUTDOWN, -EIO (gathering failed) or the ask's error.
 */
static int metrics_wait_snapshot(json_t **out)
{
	struct timespec deadline;
	bool ask;
	int rc = 0;

	pthread_mutex_lock(&g_m.lock);
	if (g_m.stopping) {
		pthread_mutex_unlock(&g_m.lock);
		return -ESHUTDOWN;
	}
	ask = !g_m.in_flight;
	g_m.in_flight = true;
	g_m.waiting = true;
	g_m.have_result = false;
	pthread_mutex_unlock(&g_m.lock);

	if (ask) {
		rc = g_m.ask_fn();
	}

	pthread_mutex_lock(&g_m.lock);
	if (rc != 0) {
		g_m.in_flight = false;
	} else {
		clock_gettime(CLOCK_MONOTONIC, &deadline);
		deadline.tv_sec += g_m.timeout_ms / 1000;
		deadline.tv_nsec += (long)(g_m.timeout_ms % 1000) * 1000000L;
		if (deadline.tv_nsec >= 1000000000L) {
			deadline.tv_sec++;
			deadline.tv_nsec -= 1000000000L;
		}
		while (!g_m.have_result && !g_m.stopping) {
			if (pthread_cond_timedwait(&g_m.cond, &g_m.lock, &deadline) == ETIMEDOUT) {
				break;
			}
		}
		if (g_m.have_result) {
			*out = g_m.result;
			rc = g_m.result != NULL ? 0 : -EIO;
		} else {
			rc = g_m.stopping ? -ESHUTDOWN : -ETIMEDOUT;
		}
	}
	g_m.waiting = false;
	g_m.have_result = false;
	g_m.result = NULL;
	pthread_mutex_unlock(&g_m.lock);
	return rc;
}

/* ------------------------------------------------------------------------------ */
/* HTTP                                                                            */
/* ------------------------------------------------------------------------------ */

static enum MHD_Result metrics_send_text(struct MHD_Connection *conn, unsigned int status,
					 const char *text, const char *allow)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;

	resp = MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
	if (resp == NULL) {
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
	if (allow != NULL) {
		MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
	}
	ret = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

static enum MHD_Result metrics_serve(struct MHD_Connection *conn)
{
	struct metrics_process proc;
	struct MHD_Response *resp;
	json_t *snapshot = NULL;
	uint64_t t0, waited_ns;
	enum MHD_Result ret;
	char *buf = NULL;
	size_t len = 0;
	FILE *out;
	int rc;

	t0 = keel_now_ns();
	rc = metrics_wait_snapshot(&snapshot);
	waited_ns = keel_now_ns() - t0;
	if (rc == -ETIMEDOUT) {
		/* A stuck daemon is scraped every few seconds: one line a minute is enough. */
		KEEL_WARNLOG_RATELIMITED(60000,
					 "metrics: the main thread did not answer a scrape within "
					 "%u ms; answered 503",
					 g_m.timeout_ms);
		return metrics_send_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE,
					 "keeld did not answer in time\n", NULL);
	}
	if (rc != 0) {
		return metrics_send_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE,
					 rc == -ESHUTDOWN ? "keeld is stopping\n"
							  : "keeld cannot gather metrics now\n",
					 NULL);
	}
	keeld_metrics_process_read(&proc);
	proc.collect_seconds = (double)waited_ns / 1e9;
	out = open_memstream(&buf, &len);
	if (out == NULL) {
		json_decref(snapshot);
		return metrics_send_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n",
					 NULL);
	}
	rc = keeld_metrics_render(out, snapshot, &proc);
	json_decref(snapshot);
	if (fclose(out) != 0 || rc != 0) {
		free(buf);
		return metrics_send_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n",
					 NULL);
	}
	resp = MHD_create_response_from_buffer(len, buf, MHD_RESPMEM_MUST_FREE);
	if (resp == NULL) {
		free(buf);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, METRICS_CONTENT_TYPE);
	ret = MHD_queue_response(conn, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return ret;
}

/*
 * Every request is answered on its first call, before any body is read: no body is
 * ever held, and libmicrohttpd closes a connection whose body was left unread.
 */
static enum MHD_Result metrics_access(void *cls, struct MHD_Connection *conn, const char *url,
				      const char *method, const char *version,
				      const char *upload_data, size_t *upload_data_size,
				      void **req_cls)
{
	(void)cls;
	(void)version;
	(void)upload_data;
	(void)upload_data_size;
	(void)req_cls;
	if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
		return metrics_send_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
					 "only GET /metrics is served here\n", "GET, HEAD");
	}
	if (strcmp(url, "/metrics") != 0) {
		return metrics_send_text(conn, MHD_HTTP_NOT_FOUND,
					 "not found: the metrics are at /metrics\n", NULL);
	}
	return metrics_serve(conn);
}

static void metrics_mhd_log(void *cls, const char *fmt, va_list ap)
{
	char msg[256];
	size_t n;

	(void)cls;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	n = strlen(msg);
	while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) {
		msg[--n] = '\0';
	}
	/* Mostly what clients got wrong: not worth more than info. */
	KEEL_INFOLOG("metrics: http: %s", msg);
}

int keeld_metrics_start(const struct keeld_metrics_opts *opts, char *err, size_t errlen)
{
	struct sockaddr_storage addr;
	pthread_condattr_t attr;
	const union MHD_DaemonInfo *info;
	unsigned int flags;
	socklen_t alen;
	char why[128];

	if (g_m.mhd != NULL) {
		snprintf(err, errlen, "the metrics endpoint runs already");
		return -EALREADY;
	}
	if (keeld_metrics_addr_parse(opts->listen, &addr, &alen, why, sizeof(why)) != 0) {
		snprintf(err, errlen, "--metrics-listen '%s': %s", opts->listen, why);
		return -EINVAL;
	}
	if (!g_m.cond_ready) {
		pthread_condattr_init(&attr);
		pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
		pthread_cond_init(&g_m.cond, &attr);
		pthread_condattr_destroy(&attr);
		g_m.cond_ready = true;
	}
	pthread_mutex_lock(&g_m.lock);
	g_m.stopping = false;
	g_m.timeout_ms = opts->timeout_ms ? opts->timeout_ms : KEELD_METRICS_DEFAULT_TIMEOUT_MS;
	g_m.ask_fn = opts->ask_fn ? opts->ask_fn : metrics_ask_main_thread;
	pthread_mutex_unlock(&g_m.lock);

	flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
	if (addr.ss_family == AF_INET6) {
		flags |= MHD_USE_IPv6;
	}
	errno = 0;
	g_m.mhd = MHD_start_daemon(
		flags, 0, NULL, NULL, metrics_access, NULL, MHD_OPTION_EXTERNAL_LOGGER,
		metrics_mhd_log, NULL, MHD_OPTION_SOCK_ADDR, &addr, MHD_OPTION_CONNECTION_LIMIT,
		(unsigned int)(opts->max_connections ? opts->max_connections
						     : KEELD_METRICS_DEFAULT_MAX_CONNECTIONS),
		MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)KEELD_METRICS_IDLE_TIMEOUT_S,
		MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)KEELD_METRICS_MAX_REQUEST_BYTES,
		MHD_OPTION_LISTEN_BACKLOG_SIZE, 16u, MHD_OPTION_END);
	if (g_m.mhd == NULL) {
		int rc = errno != 0 ? -errno : -EIO;

		snprintf(err, errlen, "cannot serve metrics on %s: %s", opts->listen,
			 rc == -EADDRINUSE ? "the address is in use" : strerror(-rc));
		return rc;
	}
	info = MHD_get_daemon_info(g_m.mhd, MHD_DAEMON_INFO_BIND_PORT);
	g_m.port = info != NULL ? info->port : 0;
	KEEL_NOTICELOG("metrics: serving http://%s/metrics (port %u)%s", opts->listen,
		       (unsigned)g_m.port,
		       keeld_metrics_addr_is_loopback(&addr)
			       ? ""
			       : "; this is not a loopback address: anyone who reaches it "
				 "can read the metrics");
	return 0;
}

void keeld_metrics_stop(void)
{
	if (g_m.mhd == NULL) {
		return;
	}
	pthread_mutex_lock(&g_m.lock);
	g_m.stopping = true;
	pthread_cond_broadcast(&g_m.cond);
	pthread_mutex_unlock(&g_m.lock);
	/* Joins the HTTP thread: a scrape waiting for a snapshot has just been let go. */
	MHD_stop_daemon(g_m.mhd);
	g_m.mhd = NULL;
	g_m.port = 0;
}

uint16_t keeld_metrics_port(void)
{
	return g_m.port;
}
