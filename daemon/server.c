/*
 * JSON-RPC unix socket server: non-blocking listen socket and connections, each
 * driven by an event poller on the main keel thread: it runs when its fd is ready or
 * when the engine says a request ended (a handler that answered later), and at no
 * other time, so an idle server never wakes its reactor. The protocol lives in rpc.c;
 * this file moves bytes and decides who gets a connection and for how long.
 *
 * - Each run of a connection's poller reads at most one chunk and lets the engine
 *   handle at most its budget of requests, so a large batch or pipeline is served a
 *   slice at a time while the other connections (and NBD on the same reactor) run.
 *   A connection with work left after its slice gets its next turn RPC_TURN_US later
 *   (the poller's period, armed only while such work waits), not at once.
 * - At the connection limit a new client still gets in: the connection idle the
 *   longest is told why and closed. Only when every connection is handling a request
 *   is the new one answered with an error naming the limit and closed.
 * - Idle connections are closed by one timed poller armed for the earliest deadline;
 *   it exists only while connections do.
 * - When accept4() fails for lack of fds or memory the listener is paused with a
 *   doubling back-off (a waiting connection keeps the socket readable, so retrying
 *   would spin) and the warning is rate limited.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "keel/backoff.h"
#include "keel/log.h"
#include "keel/reactor.h"
#include "rpc_internal.h"
#include "server.h"

/*
 * The control plane shares reactor 0 with the data path. A connection with a long
 * batch or pipeline takes one slice (the engine's budget, at most about a millisecond)
 * per turn, and its turns are this far apart, so the data path keeps most of the
 * reactor meanwhile. The pacing timer is armed only while such work is left over: an
 * idle connection, or one waiting for its client or a handler, has no timer at all.
 */
#define RPC_TURN_US 1000

/* One read per connection per run: with the engine's budget, a slice of bounded size. */
#define RPC_READ_CHUNK 65536
/* Connections accepted per listener run, so a connect storm cannot hold the reactor. */
#define RPC_ACCEPT_BATCH 16
/* Listener pause after accept4() fails for lack of fds or memory: doubling, capped. */
#define RPC_ACCEPT_BACKOFF_MIN_US 10000
#define RPC_ACCEPT_BACKOFF_MAX_US 1000000
/* At most one line per this interval for what a client can make repeat. */
#define RPC_LOG_INTERVAL_MS 10000

struct rpc_sock_conn {
	int fd;
	uint32_t id;
	struct rpc_conn *conn;
	struct keel_poller *poller;
	uint32_t events;
	bool eof;                /* peer finished sending (or protocol error): flush, then close */
	bool paced;              /* work left after a slice: its next turn is armed */
	uint64_t last_active_ns; /* last byte moved or request handled */
	struct rpc_sock_conn *next;
};

static struct keel_rpc_server_opts g_opts;
static int g_listen_fd = -1;
static struct keel_poller *g_listen_poller;
static struct keel_poller_backoff *g_listen_backoff;
static bool g_listen_starved;             /* accept4() failed for lack of a resource */
static struct keel_poller *g_idle_poller; /* with a timeout; armed while connections exist */
static bool g_idle_armed;
static char g_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static struct rpc_sock_conn *g_conns;
static uint32_t g_conn_count;
static uint32_t g_next_conn_id;

void keel_rpc_server_opts_init(struct keel_rpc_server_opts *opts)
{
	memset(opts, 0, sizeof(*opts));
	opts->max_connections = KEEL_RPC_DEFAULT_MAX_CONNECTIONS;
	opts->idle_timeout_ms = KEEL_RPC_DEFAULT_IDLE_TIMEOUT_MS;
	opts->max_batch = KEEL_RPC_DEFAULT_MAX_BATCH;
	opts->max_response = KEEL_RPC_DEFAULT_MAX_RESPONSE;
}

int rpc_socket_address(const char *path, struct sockaddr_un *addr)
{
	if (path == NULL || path[0] == '\0') {
		return -EINVAL;
	}
	if (strlen(path) >= sizeof(addr->sun_path)) {
		return -ENAMETOOLONG;
	}
	memset(addr, 0, sizeof(*addr));
	addr->sun_family = AF_UNIX;
	memcpy(addr->sun_path, path, strlen(path) + 1);
	return 0;
}

int rpc_socket_probe(const char *path)
{
	struct sockaddr_un addr;
	struct stat st;
	int fd, rc;

	rc = rpc_socket_address(path, &addr);
	if (rc != 0) {
		return rc;
	}
	if (lstat(path, &st) != 0) {
		return errno == ENOENT ? 0 : -errno;
	}
	if (!S_ISSOCK(st.st_mode)) {
		return -EEXIST;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		return -errno;
	}
	rc = connect(fd, (struct sockaddr *)&addr, sizeof(addr));
	rc = rc == 0 ? -EADDRINUSE : (errno == ECONNREFUSED || errno == ENOENT) ? 1 : -errno;
	close(fd);
	return rc;
}

static void rpc_sock_conn_close(struct rpc_sock_conn *sc)
{
	struct rpc_sock_conn **pp;

	for (pp = &g_conns; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == sc) {
			*pp = sc->next;
			break;
		}
	}
	g_conn_count--;
	KEEL_DEBUGLOG("rpc: connection %u closed (%u replies still pending are dropped)", sc->id,
		      rpc_conn_pending(sc->conn));
	keel_poller_unregister(&sc->poller);
	close(sc->fd);
	rpc_conn_close(sc->conn);
	free(sc);
	if (g_conn_count == 0 && g_idle_armed) {
		keel_poller_disarm(g_idle_poller);
		g_idle_armed = false;
	}
}

static void rpc_sock_conn_set_events(struct rpc_sock_conn *sc, uint32_t events)
{
	if (events != sc->events && keel_poller_modify_fd(sc->poller, events) == 0) {
		sc->events = events;
	}
}

/* \return -1 when the connection is gone, else whether anything moved. */
static int rpc_sock_conn_flush(struct rpc_sock_conn *sc)
{
	const char *out;
	size_t len;
	ssize_t n;
	int moved = 0;

	for (;;) {
		out = rpc_conn_output(sc->conn, &len);
		if (len == 0) {
			return moved;
		}
		n = send(sc->fd, out, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR) {
				continue;
			}
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				return moved;
			}
			KEEL_DEBUGLOG("rpc: connection %u: send failed: %s", sc->id,
				      strerror(errno));
			rpc_sock_conn_close(sc);
			return -1;
		}
		rpc_conn_consume_output(sc->conn, (size_t)n);
		sc->last_active_ns = keel_now_ns();
		moved = 1;
	}
}

/* Tell the client why (when the stream allows it), send what can go now, close. */
static void rpc_sock_conn_end(struct rpc_sock_conn *sc, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void rpc_sock_conn_end(struct rpc_sock_conn *sc, int code, const char *fmt, ...)
{
	char msg[300];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (rpc_conn_notice(sc->conn, code, msg) && rpc_sock_conn_flush(sc) < 0) {
		return; /* the flush found the peer gone and closed it */
	}
	rpc_sock_conn_close(sc);
}

/*
 * Arm the next turn while the engine has work left after its slice (nothing else
 * would run the poller for it: the input it needs is already buffered), and cancel
 * it once there is none. A busy poller with a period is not run again before its
 * deadline, which is what spaces the turns.
 */
static void rpc_sock_conn_pace(struct rpc_sock_conn *sc)
{
	bool more = rpc_conn_has_work(sc->conn);

	if (more && !sc->paced) {
		sc->paced = keel_poller_arm(sc->poller, RPC_TURN_US) == 0;
	} else if (!more && sc->paced) {
		keel_poller_disarm(sc->poller);
		sc->paced = false;
	}
}

/*
 * Whether the peer closed its socket altogether, not just its sending side. A unix
 * socket reports a hang-up only then; epoll reports it whatever the event mask, so a
 * connection waiting for slow replies after its client vanished would otherwise be
 * woken again and again until they come.
 */
static bool rpc_sock_peer_gone(int fd)
{
	struct pollfd pfd = {.fd = fd, .events = 0, .revents = 0};

	return poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLHUP | POLLERR)) != 0;
}

static int rpc_sock_conn_poll(void *arg)
{
	struct rpc_sock_conn *sc = arg;
	char buf[RPC_READ_CHUNK];
	size_t pending_out;
	uint32_t events;
	int busy = 0;
	ssize_t n = -1;
	int rc;

	if (sc->eof && rpc_conn_pending(sc->conn) > 0 && rpc_sock_peer_gone(sc->fd)) {
		/* Nobody reads the replies: drop them, and let waiting requests stop. */
		rpc_sock_conn_close(sc);
		return KEEL_POLLER_BUSY;
	}
	if (!sc->eof && rpc_conn_wants_input(sc->conn)) {
		n = recv(sc->fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n == 0) {
			busy = 1;
			sc->eof = true;
		} else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
			rpc_sock_conn_close(sc);
			return KEEL_POLLER_BUSY;
		}
	}
	if (n > 0) {
		busy = 1;
		sc->last_active_ns = keel_now_ns();
		rc = rpc_conn_feed(sc->conn, buf, (size_t)n);
	} else {
		/* Work left from an earlier run: the engine's budget, or a reply came. */
		rc = rpc_conn_process(sc->conn);
		if (rc > 0) {
			busy = 1;
			sc->last_active_ns = keel_now_ns();
			rc = 0;
		}
	}
	if (rc == -ENOMEM) {
		KEEL_ERRLOG("rpc: connection %u: out of memory; closing", sc->id);
		rpc_sock_conn_close(sc);
		return KEEL_POLLER_BUSY;
	}
	if (rc != 0) {
		sc->eof = true; /* error reply queued; close once it is out */
	}

	rc = rpc_sock_conn_flush(sc);
	if (rc < 0) {
		return KEEL_POLLER_BUSY;
	}
	busy |= rc;

	rpc_conn_output(sc->conn, &pending_out);
	if (pending_out == 0 &&
	    (rpc_conn_is_broken(sc->conn) ||
	     (sc->eof && rpc_conn_pending(sc->conn) == 0 && !rpc_conn_has_work(sc->conn)))) {
		rpc_sock_conn_close(sc);
		return KEEL_POLLER_BUSY;
	}
	/* Level-triggered: only ask for what this connection can act on now. */
	events = 0;
	if (!sc->eof && rpc_conn_wants_input(sc->conn)) {
		events |= EPOLLIN;
	}
	if (pending_out > 0) {
		events |= EPOLLOUT;
	}
	rpc_sock_conn_set_events(sc, events);
	rpc_sock_conn_pace(sc);
	return busy ? KEEL_POLLER_BUSY : KEEL_POLLER_IDLE;
}

/* A request ended, maybe long after the run that started it: have a look. */
static void rpc_sock_conn_wake(void *arg)
{
	struct rpc_sock_conn *sc = arg;

	keel_poller_wake(sc->poller);
}

/* ------------------------------------------------------------------------------ */
/* Idle connections                                                                */
/* ------------------------------------------------------------------------------ */

static int rpc_idle_poll(void *arg);

/*
 * Arm the one idle timer for the earliest idle deadline of any connection, or disarm
 * it when there is no connection. A connection handling a request cannot expire
 * before the request ends plus the timeout, so "now + timeout" is a safe stand-in for
 * it. Activity does not move the timer: when it fires early it re-arms for the new
 * earliest deadline, so a busy server pays one timer per timeout, not per request.
 */
static void rpc_idle_arm(uint64_t now)
{
	uint64_t timeout = (uint64_t)g_opts.idle_timeout_ms * 1000000u;
	uint64_t next = UINT64_MAX;
	struct rpc_sock_conn *sc;

	if (g_idle_poller == NULL) {
		return; /* no idle timeout */
	}
	for (sc = g_conns; sc != NULL; sc = sc->next) {
		uint64_t d = rpc_conn_pending(sc->conn) > 0 ? now + timeout
							    : sc->last_active_ns + timeout;

		next = d < next ? d : next;
	}
	if (next == UINT64_MAX) {
		keel_poller_disarm(g_idle_poller);
		g_idle_armed = false;
		return;
	}
	g_idle_armed = keel_poller_arm(g_idle_poller, next > now ? (next - now + 999) / 1000 : 0) ==
		       0;
}

static int rpc_idle_poll(void *arg)
{
	uint64_t timeout = (uint64_t)g_opts.idle_timeout_ms * 1000000u;
	uint64_t now = keel_now_ns();
	struct rpc_sock_conn *sc, *next;

	for (sc = g_conns; sc != NULL; sc = next) {
		next = sc->next;
		if (rpc_conn_pending(sc->conn) == 0 && now - sc->last_active_ns >= timeout) {
			KEEL_INFOLOG("rpc: connection %u idle for %u ms; closing it", sc->id,
				     g_opts.idle_timeout_ms);
			rpc_sock_conn_end(sc, -ETIMEDOUT,
					  "connection closed after %u ms without "
					  "a request (keeld --rpc-idle-timeout)",
					  g_opts.idle_timeout_ms);
		}
	}
	rpc_idle_arm(now);
	return KEEL_POLLER_BUSY;
}

/* ------------------------------------------------------------------------------ */
/* Accepting                                                                       */
/* ------------------------------------------------------------------------------ */

/* The connection idle the longest, among those handling no request. */
static struct rpc_sock_conn *rpc_evict_candidate(void)
{
	struct rpc_sock_conn *sc, *best = NULL;

	for (sc = g_conns; sc != NULL; sc = sc->next) {
		if (rpc_conn_pending(sc->conn) == 0 &&
		    (best == NULL || sc->last_active_ns < best->last_active_ns)) {
			best = sc;
		}
	}
	return best;
}

/* Answer a connection that gets no room with one error line, then close it. */
static void rpc_refuse(int fd)
{
	char msg[300], line[512];
	int n;

	snprintf(msg, sizeof(msg),
		 "keeld has %u RPC connections open, its limit (keeld "
		 "--rpc-max-connections), and every one is handling a request; retry when "
		 "one finishes",
		 g_conn_count);
	n = rpc_error_line(line, sizeof(line), -EUSERS, msg);
	if (n > 0) {
		/* A fresh socket has room for one line; the client may already be gone. */
		(void)!send(fd, line, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
	}
	close(fd);
}

static void rpc_accept_one(int fd)
{
	struct rpc_sock_conn *sc, *victim;
	char name[48];

	if (g_conn_count >= g_opts.max_connections) {
		victim = rpc_evict_candidate();
		if (victim == NULL) {
			KEEL_WARNLOG_RATELIMITED(RPC_LOG_INTERVAL_MS,
						 "rpc: %u connections open "
						 "(the limit), each handling a request; refusing a "
						 "new one",
						 g_conn_count);
			rpc_refuse(fd);
			return;
		}
		KEEL_LOG_RATELIMITED(
			KEEL_LOG_NOTICE, RPC_LOG_INTERVAL_MS,
			"rpc: %u connections open (the limit); closing connection %u, "
			"idle for %llu ms, to make room for a new one",
			g_conn_count, victim->id,
			(unsigned long long)((keel_now_ns() - victim->last_active_ns) / 1000000u));
		rpc_sock_conn_end(victim, -EUSERS,
				  "connection closed to make room for a new one: "
				  "keeld allows %u RPC connections (keeld --rpc-max-connections) "
				  "and this one was idle the longest",
				  g_opts.max_connections);
	}
	sc = calloc(1, sizeof(*sc));
	if (sc == NULL) {
		goto out_close_fd;
	}
	sc->fd = fd;
	sc->id = ++g_next_conn_id;
	sc->last_active_ns = keel_now_ns();
	sc->conn = rpc_conn_create();
	if (sc->conn == NULL) {
		goto out_free_sc;
	}
	snprintf(name, sizeof(name), "rpc_conn_%u", sc->id);
	/* The period spaces the turns of a long batch; it is armed only for them. */
	sc->poller = keel_poller_register(rpc_sock_conn_poll, sc, RPC_TURN_US, name);
	if (sc->poller == NULL) {
		goto out_close_conn;
	}
	keel_poller_disarm(sc->poller);
	sc->events = EPOLLIN;
	if (keel_poller_register_fd(sc->poller, fd, EPOLLIN) != 0) {
		goto out_unregister;
	}
	rpc_conn_set_wake(sc->conn, rpc_sock_conn_wake, sc);
	sc->next = g_conns;
	g_conns = sc;
	g_conn_count++;
	if (!g_idle_armed) {
		rpc_idle_arm(sc->last_active_ns);
	}
	KEEL_DEBUGLOG("rpc: connection %u accepted", sc->id);
	return;

out_unregister:
	keel_poller_unregister(&sc->poller);
out_close_conn:
	rpc_conn_close(sc->conn);
out_free_sc:
	free(sc);
out_close_fd:
	KEEL_ERRLOG("rpc: cannot set up a new connection (out of memory?); closing it");
	close(fd);
}

static int rpc_listen_poll(void *arg)
{
	int busy = KEEL_POLLER_IDLE;
	uint64_t delay_us;
	int i;

	for (i = 0; i < RPC_ACCEPT_BATCH; i++) {
		int fd = accept4(g_listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		int err = errno;

		if (fd < 0) {
			if (err == EAGAIN || err == EWOULDBLOCK) {
				break;
			}
			if (!keel_accept_should_back_off(err)) {
				continue;
			}
			/*
			 * Out of fds (or memory): a waiting connection keeps the socket
			 * readable, so retrying would spin. Pause until the back-off ends.
			 */
			delay_us = keel_poller_backoff_pause(g_listen_backoff);
			g_listen_starved = true;
			KEEL_WARNLOG_RATELIMITED(
				RPC_LOG_INTERVAL_MS,
				"rpc: cannot accept a "
				"connection on %s: %s; pausing the listener for %llu "
				"ms (raise the open file limit, ulimit -n, or close "
				"clients)",
				g_path, strerror(err), (unsigned long long)delay_us / 1000u);
			return KEEL_POLLER_BUSY;
		}
		if (g_listen_starved) {
			g_listen_starved = false;
			KEEL_NOTICELOG("rpc: accepting connections on %s again", g_path);
		}
		keel_poller_backoff_reset(g_listen_backoff);
		busy = KEEL_POLLER_BUSY;
		rpc_accept_one(fd);
	}
	return busy;
}

int keel_rpc_server_start(const char *path, const struct keel_rpc_server_opts *opts)
{
	struct sockaddr_un addr;
	mode_t old_mask;
	int rc, fd;

	if (g_listen_fd >= 0) {
		return -EALREADY;
	}
	keel_rpc_server_opts_init(&g_opts);
	if (opts != NULL) {
		g_opts.idle_timeout_ms = opts->idle_timeout_ms;
		if (opts->max_connections != 0) {
			g_opts.max_connections = opts->max_connections;
		}
		if (opts->max_batch != 0) {
			g_opts.max_batch = opts->max_batch;
		}
		if (opts->max_response != 0) {
			g_opts.max_response = opts->max_response;
		}
	}
	rpc_set_limits(g_opts.max_batch, g_opts.max_response);
	rc = rpc_socket_address(path, &addr);
	if (rc != 0) {
		return rc;
	}
	rc = rpc_socket_probe(path);
	if (rc < 0) {
		return rc;
	}
	if (rc == 1) {
		KEEL_NOTICELOG("rpc: removing stale socket %s", path);
		if (unlink(path) != 0 && errno != ENOENT) {
			return -errno;
		}
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		return -errno;
	}
	/* The mode of a unix socket file comes from the umask at bind time. */
	old_mask = umask(0177);
	rc = bind(fd, (struct sockaddr *)&addr, sizeof(addr));
	umask(old_mask);
	if (rc != 0) {
		rc = -errno;
		goto out_close_fd;
	}
	if (chmod(path, 0600) != 0 || listen(fd, 64) != 0) {
		rc = -errno;
		goto out_unlink;
	}
	/* An event poller: runs when a client waits in the backlog, at no other time. */
	g_listen_poller = keel_poller_register(rpc_listen_poll, NULL, 0, "rpc_listen");
	if (g_listen_poller == NULL) {
		rc = -ENOMEM;
		goto out_unlink;
	}
	g_listen_backoff = keel_poller_backoff_create(g_listen_poller, RPC_ACCEPT_BACKOFF_MIN_US,
						      RPC_ACCEPT_BACKOFF_MAX_US);
	if (g_listen_backoff == NULL) {
		rc = -ENOMEM;
		goto out_unregister;
	}
	rc = keel_poller_register_fd(g_listen_poller, fd, EPOLLIN);
	if (rc != 0) {
		goto out_free_backoff;
	}
	if (g_opts.idle_timeout_ms != 0) {
		/* A deadline only: armed while connections exist (rpc_idle_arm). */
		g_idle_poller = keel_poller_register(
			rpc_idle_poll, NULL, (uint64_t)g_opts.idle_timeout_ms * 1000u, "rpc_idle");
		if (g_idle_poller == NULL) {
			rc = -ENOMEM;
			goto out_free_backoff;
		}
		keel_poller_disarm(g_idle_poller);
	}
	g_idle_armed = false;
	g_listen_fd = fd;
	g_listen_starved = false;
	snprintf(g_path, sizeof(g_path), "%s", path);
	KEEL_NOTICELOG("rpc: listening on %s (at most %u connections, idle timeout %u ms, "
		       "batches of %u, responses of %u bytes)",
		       path, g_opts.max_connections, g_opts.idle_timeout_ms, g_opts.max_batch,
		       g_opts.max_response);
	return 0;

out_free_backoff:
	keel_poller_backoff_free(&g_listen_backoff);
out_unregister:
	keel_poller_unregister(&g_listen_poller);
out_unlink:
	unlink(path);
out_close_fd:
	close(fd);
	return rc;
}

void keel_rpc_server_stop(void)
{
	while (g_conns != NULL) {
		rpc_sock_conn_close(g_conns);
	}
	keel_poller_unregister(&g_idle_poller);
	g_idle_armed = false;
	if (g_listen_fd < 0) {
		return;
	}
	keel_poller_backoff_free(&g_listen_backoff);
	keel_poller_unregister(&g_listen_poller);
	close(g_listen_fd);
	g_listen_fd = -1;
	if (unlink(g_path) != 0 && errno != ENOENT) {
		KEEL_WARNLOG("rpc: cannot remove socket %s: %s", g_path, strerror(errno));
	}
	KEEL_NOTICELOG("rpc: stopped listening on %s", g_path);
}
