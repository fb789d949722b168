/*
 * NBD exports: listeners, NBD threads and the lifetime of connections.
 *
 * Ownership: exports and listeners belong to the main keel thread (the one that
 * runs RPC handlers; the bdev descriptor is opened and closed there, and its hot
 * remove event arrives there). Connections belong to one NBD thread each ("nbd_N",
 * one per reactor), chosen round robin at accept. The main thread counts an
 * export's connections; an NBD thread tells it by message when one is gone, and an
 * export is freed only once its count reached zero, so NBD threads may read the
 * export's immutable nbd_export_info without messages.
 *
 * Nothing here blocks a reactor: socket files are stat'ed, bound and unlinked on
 * the blocking-work pool; TCP hosts must be numeric (no DNS).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "keel/bdev.h"
#include "keel/log.h"
#include "keel/nbd.h"
#include "keel/reactor.h"
#include "nbd/nbd_internal.h"
#include "nbd/nbd_proto.h"
#include "nbd/nbd_tls.h"

#define NBD_ACCEPT_BATCH 16
/*
 * An fd poller runs on every loop iteration of an awake reactor, and accept4() on
 * an empty queue still allocates a socket inode in the kernel: measured at several
 * percent of a busy reactor. So a listener tries at most once per this interval; a
 * sleeping reactor woken by a new connection accepts at once because the last try
 * is older than that.
 */
#define NBD_ACCEPT_INTERVAL_NS (1000u * 1000u)
#define NBD_LISTEN_BACKLOG 128
/*
 * Connections over a limit that are being told why (greeting, one error reply, close).
 * Past this many at once, more are closed at accept without a word: telling costs an
 * fd and a little memory each, and a flood must not turn that into a new way in.
 */
#define NBD_MAX_REFUSING 16u
/* At most one "connection refused" warning per this interval; the rest are counted. */
#define NBD_REFUSE_LOG_INTERVAL_NS (1000ull * 1000 * 1000)

enum nbd_export_state {
	NBD_EXPORT_STARTING,
	NBD_EXPORT_RUNNING,
	NBD_EXPORT_STOPPING,
};

struct nbd_listener {
	struct keel_nbd_export *exp;
	int fd;
	bool tcp;
	struct keel_poller *poller;
	uint64_t last_try_ns;
};

struct keel_nbd_export {
	TAILQ_ENTRY(keel_nbd_export) link;
	uint64_t id; /* names the export in messages that may outlive it */
	struct nbd_export_info info;
	char description[128];
	char *bdev_name;
	char *socket_path;
	char *tcp;
	bool read_only;
	char *tls_psk_file;
	char *tls_certs_dir;
	bool tls_verify_client;
	struct nbd_tls_creds *tls_creds; /* info.tls_creds, owned here */
	char tls_err[512];               /* why loading the credentials failed */
	enum nbd_export_state state;
	bool stop_requested; /* stop (or hot remove) arrived while starting */
	bool listeners_gone; /* socket file removed, connections told to close */
	struct nbd_listener listeners[2];
	uint32_t nlisteners;
	uint32_t num_conns;    /* every open connection, refused ones included */
	uint32_t num_refusing; /* those only being told they are over a limit */
	keel_nbd_done_cb start_cb;
	void *start_arg;
	/* written by the blocking-work job, read after it completed */
	int unix_fd;
	int tcp_fd;
	struct nbd_waiter_list waiters;
	struct nbd_export_traffic traffic; /* info.traffic points here */
};

struct nbd_worker {
	struct keel_thread *thread;
	TAILQ_HEAD(, nbd_srv_conn) conns; /* owned by thread */
};

struct nbd_srv_conn {
	int fd;
	char *refuse; /* over a limit: why, told to the client; else NULL */
	struct keel_nbd_export *exp;
	struct nbd_worker *worker;
	struct nbd_conn *conn;
	TAILQ_ENTRY(nbd_srv_conn) link;
};

static TAILQ_HEAD(, keel_nbd_export) g_exports = TAILQ_HEAD_INITIALIZER(g_exports);
static struct nbd_worker *g_workers;
static uint32_t g_num_workers;
static uint32_t g_next_worker;
static struct keel_thread *g_main_thread;
static bool g_shutdown;
static uint64_t g_next_export_id = 1;
static uint32_t g_num_conns;    /* served socket connections, all exports */
static uint32_t g_num_refusing; /* connections being refused, all exports */
static uint64_t g_refuse_logged_ns;
static uint64_t g_refuse_unlogged;
static const char *g_start_error; /* keel_nbd_export_start_error(), inside a start cb */
static keel_nbd_export_listener_fn g_export_listener;
static void *g_export_listener_ctx;

static void nbd_export_try_finish(struct keel_nbd_export *exp);
static void nbd_export_begin_stop(struct keel_nbd_export *exp);

int nbd_waiter_add(struct nbd_waiter_list *list, keel_nbd_done_cb cb_fn, void *cb_arg)
{
	struct nbd_waiter *w = calloc(1, sizeof(*w));

	if (w == NULL) {
		return -ENOMEM;
	}
	w->cb_fn = cb_fn;
	w->cb_arg = cb_arg;
	TAILQ_INSERT_TAIL(list, w, link);
	return 0;
}

void nbd_waiters_wake(struct nbd_waiter_list *list)
{
	struct nbd_waiter *w;

	while ((w = TAILQ_FIRST(list)) != NULL) {
		TAILQ_REMOVE(list, w, link);
		w->cb_fn(w->cb_arg, 0);
		free(w);
	}
}

/* ------------------------------------------------------------------------------ */
/* NBD threads                                                                     */
/* ------------------------------------------------------------------------------ */

int nbd_workers_ensure(void)
{
	uint32_t count = keel_reactor_count();

	if (g_workers != NULL) {
		return 0;
	}
	g_workers = calloc(count > 0 ? count : 1, sizeof(*g_workers));
	if (g_workers == NULL) {
		return -ENOMEM;
	}
	if (count == 0) {
		/* Thread library without reactors (tests): serve on the calling thread. */
		g_workers[0].thread = keel_thread_get_current();
		TAILQ_INIT(&g_workers[0].conns);
		g_num_workers = 1;
		return 0;
	}
	for (uint32_t i = 0; i < count; i++) {
		char name[32];

		snprintf(name, sizeof(name), "nbd_%u", i);
		g_workers[i].thread = keel_thread_create(name, i);
		if (g_workers[i].thread == NULL) {
			KEEL_ERRLOG("nbd: cannot create thread %s", name);
			/* The threads made so far are kept; accept uses what exists. */
			break;
		}
		TAILQ_INIT(&g_workers[i].conns);
		g_num_workers++;
	}
	if (g_num_workers == 0) {
		free(g_workers);
		g_workers = NULL;
		return -ENOMEM;
	}
	return 0;
}

uint32_t nbd_worker_count(void)
{
	return g_num_workers;
}

struct keel_thread *nbd_worker_thread(uint32_t i)
{
	return g_workers[i % g_num_workers].thread;
}

static struct nbd_worker *nbd_worker_current(void)
{
	struct keel_thread *thread = keel_thread_get_current();

	for (uint32_t i = 0; i < g_num_workers; i++) {
		if (g_workers[i].thread == thread) {
			return &g_workers[i];
		}
	}
	return NULL;
}

/* Undo nbd_conn_admit: the connection is gone (or never started). */
static void nbd_conn_unadmit(struct keel_nbd_export *exp, struct nbd_srv_conn *sc)
{
	if (sc->refuse != NULL) {
		exp->num_refusing--;
		g_num_refusing--;
		free(sc->refuse);
		sc->refuse = NULL;
	} else {
		g_num_conns--;
		nbd_connections_set(g_num_conns);
	}
}

static void nbd_main_conn_gone(void *arg)
{
	struct nbd_srv_conn *sc = arg;
	struct keel_nbd_export *exp = sc->exp;

	nbd_conn_unadmit(exp, sc);
	free(sc);
	exp->num_conns--;
	nbd_export_try_finish(exp);
}

static void nbd_worker_conn_done(void *ctx, struct nbd_conn *conn)
{
	struct nbd_srv_conn *sc = ctx;

	TAILQ_REMOVE(&sc->worker->conns, sc, link);
	if (keel_thread_send_msg_reliable(g_main_thread, nbd_main_conn_gone, sc, NULL) != 0) {
		KEEL_ERRLOG("nbd export %s: lost track of a closed connection", sc->exp->info.name);
	}
}

static void nbd_worker_conn_start(void *arg)
{
	struct nbd_srv_conn *sc = arg;
	int rc;

	TAILQ_INSERT_TAIL(&sc->worker->conns, sc, link);
	rc = nbd_conn_create_handshake(sc->fd, &sc->exp->info, nbd_worker_conn_done, sc, &sc->conn);
	if (rc == 0 && sc->refuse != NULL) {
		nbd_conn_refuse(sc->conn, sc->refuse);
	}
	if (rc != 0) {
		KEEL_WARNLOG("nbd export %s: cannot serve a new connection: %s", sc->exp->info.name,
			     strerror(-rc));
		close(sc->fd);
		nbd_worker_conn_done(sc, NULL);
	}
}

/*
 * \p arg is the export's id, not its pointer: an export without connections on this
 * thread may be freed (and its memory reused) before this message runs.
 */
static void nbd_worker_close_export(void *arg)
{
	uint64_t id = (uint64_t)(uintptr_t)arg;
	struct nbd_worker *worker = nbd_worker_current();
	struct nbd_srv_conn *sc;

	if (worker == NULL) {
		return;
	}
	TAILQ_FOREACH(sc, &worker->conns, link) {
		if (sc->exp->id == id) {
			nbd_conn_close(sc->conn);
		}
	}
}

/* ------------------------------------------------------------------------------ */
/* Listeners                                                                       */
/* ------------------------------------------------------------------------------ */

/*
 * Count a new connection against the limits. Over one, \p sc carries the reason to tell
 * the client (refusing it costs a connection for a moment), or, with too many refusals
 * in progress, \return false: close it at once. A warning names the limit, at most once
 * a second; the refusals are counted in keel_nbd_get_stats either way.
 */
static bool nbd_conn_admit(struct keel_nbd_export *exp, struct nbd_srv_conn *sc)
{
	char why[400];
	uint64_t now;

	if (exp->num_conns - exp->num_refusing >= nbd_max_export_connections()) {
		snprintf(why, sizeof(why),
			 "export %s has reached its limit of %u connections "
			 "(nbd max_export_connections)",
			 exp->info.name, nbd_max_export_connections());
	} else if (g_num_conns >= nbd_max_connections()) {
		snprintf(why, sizeof(why),
			 "keeld has reached its limit of %u NBD connections "
			 "(nbd max_connections)",
			 nbd_max_connections());
	} else {
		g_num_conns++;
		nbd_connections_set(g_num_conns);
		return true;
	}
	nbd_stat_inc(NBD_STAT_REFUSED);
	now = keel_now_ns();
	if (now - g_refuse_logged_ns >= NBD_REFUSE_LOG_INTERVAL_NS) {
		KEEL_WARNLOG("nbd: connection refused: %s (%lu more refused since the last "
			     "warning)",
			     why, (unsigned long)g_refuse_unlogged);
		g_refuse_logged_ns = now;
		g_refuse_unlogged = 0;
	} else {
		g_refuse_unlogged++;
	}
	if (g_num_refusing >= NBD_MAX_REFUSING) {
		return false;
	}
	sc->refuse = strdup(why);
	if (sc->refuse == NULL) {
		return false;
	}
	exp->num_refusing++;
	g_num_refusing++;
	return true;
}

static int nbd_listener_poll(void *arg)
{
	struct nbd_listener *l = arg;
	struct keel_nbd_export *exp = l->exp;
	int work = KEEL_POLLER_IDLE;
	uint64_t now = keel_now_ns();

	if (now - l->last_try_ns < NBD_ACCEPT_INTERVAL_NS) {
		return KEEL_POLLER_IDLE;
	}
	l->last_try_ns = now;
	for (int i = 0; i < NBD_ACCEPT_BATCH; i++) {
		struct nbd_srv_conn *sc;
		int fd, rc;

		fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED) {
				continue;
			}
			if (errno != EAGAIN && errno != EWOULDBLOCK) {
				KEEL_WARNLOG("nbd export %s: accept failed: %s", exp->info.name,
					     strerror(errno));
			}
			break;
		}
		work = KEEL_POLLER_BUSY;
		if (l->tcp) {
			int one = 1;

			setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		}
		sc = calloc(1, sizeof(*sc));
		if (sc == NULL) {
			KEEL_WARNLOG("nbd export %s: out of memory, connection refused",
				     exp->info.name);
			close(fd);
			continue;
		}
		sc->fd = fd;
		sc->exp = exp;
		if (!nbd_conn_admit(exp, sc)) {
			close(fd);
			free(sc);
			continue;
		}
		sc->worker = &g_workers[g_next_worker++ % g_num_workers];
		/* Not retried: refusing a connection under backpressure is fine, and the
		 * export's close message must never overtake a connection start. */
		rc = keel_thread_send_msg(sc->worker->thread, nbd_worker_conn_start, sc);
		if (rc != 0) {
			KEEL_WARNLOG("nbd export %s: connection refused: NBD thread busy (%s)",
				     exp->info.name, strerror(-rc));
			close(fd);
			nbd_conn_unadmit(exp, sc);
			free(sc);
			continue;
		}
		exp->num_conns++;
	}
	return work;
}

static void nbd_listeners_close(struct keel_nbd_export *exp)
{
	for (uint32_t i = 0; i < exp->nlisteners; i++) {
		keel_poller_unregister(&exp->listeners[i].poller);
		close(exp->listeners[i].fd);
		exp->listeners[i].fd = -1;
	}
	exp->nlisteners = 0;
}

static int nbd_listeners_register(struct keel_nbd_export *exp)
{
	int fds[2] = {exp->unix_fd, exp->tcp_fd};
	int rc;

	for (int i = 0; i < 2; i++) {
		struct nbd_listener *l;

		if (fds[i] < 0) {
			continue;
		}
		l = &exp->listeners[exp->nlisteners];
		l->exp = exp;
		l->fd = fds[i];
		l->tcp = i == 1;
		exp->nlisteners++;
		if (i == 0) {
			exp->unix_fd = -1;
		} else {
			exp->tcp_fd = -1;
		}
		l->poller = keel_poller_register(nbd_listener_poll, l, 0, "nbd_listener");
		if (l->poller == NULL) {
			return -ENOMEM;
		}
		rc = keel_poller_register_fd(l->poller, l->fd, EPOLLIN);
		if (rc != 0) {
			return rc;
		}
	}
	return 0;
}

/* Parse "host:port", "[v6]:port" or "localhost:port" without DNS. */
static int nbd_parse_tcp(const char *spec, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[64];
	const char *colon, *hstart = spec, *hend, *port_str;
	char *end;
	unsigned long port;
	size_t hlen;

	if (spec == NULL || spec[0] == '\0') {
		return -EINVAL;
	}
	if (spec[0] == '[') {
		hstart = spec + 1;
		hend = strchr(spec, ']');
		if (hend == NULL || hend[1] != ':') {
			return -EINVAL;
		}
		colon = hend + 1;
		port_str = colon + 1;
	} else {
		colon = strrchr(spec, ':');
		if (colon == NULL) {
			/* A bare port listens on loopback only: exposing a disk to the
			 * network must be asked for with an explicit host. */
			port_str = spec;
			hend = spec;
		} else {
			hend = colon;
			port_str = colon + 1;
		}
	}
	hlen = (size_t)(hend - hstart);
	if (hlen >= sizeof(host)) {
		return -EINVAL;
	}
	memcpy(host, hstart, hlen);
	host[hlen] = '\0';
	if (hlen == 0) {
		strcpy(host, "127.0.0.1");
	}
	errno = 0;
	port = strtoul(port_str, &end, 10);
	if (errno != 0 || *end != '\0' || port_str[0] == '\0' || port > 65535) {
		return -EINVAL;
	}
	memset(ss, 0, sizeof(*ss));
	if (strcmp(host, "localhost") == 0) {
		strcpy(host, "127.0.0.1");
	}
	{
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

		if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
			sin->sin_family = AF_INET;
			sin->sin_port = htons((uint16_t)port);
			*len = sizeof(*sin);
			return 0;
		}
		if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
			sin6->sin6_family = AF_INET6;
			sin6->sin6_port = htons((uint16_t)port);
			*len = sizeof(*sin6);
			return 0;
		}
	}
	return -EINVAL;
}

static int nbd_listen_unix(const char *path, int *fdp)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	struct stat st;
	int fd, rc;

	if (strlen(path) >= sizeof(sun.sun_path)) {
		return -ENAMETOOLONG;
	}
	strcpy(sun.sun_path, path);
	if (lstat(path, &st) == 0) {
		int probe;

		if (!S_ISSOCK(st.st_mode)) {
			return -EEXIST;
		}
		/* A socket file nobody answers on is left over from a crash: reuse it. */
		probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (probe < 0) {
			return -errno;
		}
		rc = connect(probe, (struct sockaddr *)&sun, sizeof(sun));
		close(probe);
		if (rc == 0) {
			return -EADDRINUSE;
		}
		unlink(path);
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		return -errno;
	}
	/*
	 * The file bind() creates takes its mode from the socket's inode (minus the
	 * umask), so it is born 0600: no window where others may connect, and no chmod of
	 * the path after bind, which would follow a symlink swapped in meanwhile. The
	 * umask is process-wide and other threads create files: it is left alone.
	 */
	if (fchmod(fd, 0600) != 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
		rc = -errno;
		goto out_close_fd;
	}
	if (listen(fd, NBD_LISTEN_BACKLOG) != 0) {
		rc = -errno;
		unlink(path);
		goto out_close_fd;
	}
	*fdp = fd;
	return 0;

out_close_fd:
	close(fd);
	return rc;
}

static int nbd_listen_tcp(const char *spec, int *fdp)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fd, rc, one = 1;

	rc = nbd_parse_tcp(spec, &ss, &len);
	if (rc != 0) {
		return rc;
	}
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		return -errno;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, NBD_LISTEN_BACKLOG) != 0) {
		rc = -errno;
		close(fd);
		return rc;
	}
	*fdp = fd;
	return 0;
}

/* Blocking-work pool: read the TLS credentials, create the listening sockets. */
static int nbd_listen_blocking(void *arg)
{
	struct keel_nbd_export *exp = arg;
	int rc;

	if (exp->info.tls_mode != KEEL_NBD_TLS_OFF) {
		rc = nbd_tls_creds_load(exp->tls_psk_file, exp->tls_certs_dir, &exp->tls_creds,
					exp->tls_err, sizeof(exp->tls_err));
		if (rc == 0 && exp->tls_verify_client) {
			rc = nbd_tls_creds_require_client_cert(exp->tls_creds, exp->tls_err,
							       sizeof(exp->tls_err));
		}
		if (rc != 0) {
			return rc;
		}
		exp->info.tls_creds = exp->tls_creds;
	}

	if (exp->socket_path != NULL) {
		rc = nbd_listen_unix(exp->socket_path, &exp->unix_fd);
		if (rc != 0) {
			return rc;
		}
	}
	if (exp->tcp != NULL) {
		rc = nbd_listen_tcp(exp->tcp, &exp->tcp_fd);
		if (rc != 0) {
			if (exp->unix_fd >= 0) {
				close(exp->unix_fd);
				exp->unix_fd = -1;
				unlink(exp->socket_path);
			}
			return rc;
		}
	}
	return 0;
}

static int nbd_unlink_blocking(void *arg)
{
	struct keel_nbd_export *exp = arg;

	if (exp->socket_path != NULL && unlink(exp->socket_path) != 0 && errno != ENOENT) {
		return -errno;
	}
	return 0;
}

/* ------------------------------------------------------------------------------ */
/* Export lifetime                                                                 */
/* ------------------------------------------------------------------------------ */

static void nbd_export_free(struct keel_nbd_export *exp)
{
	nbd_tls_creds_free(exp->tls_creds);
	free(exp->tls_psk_file);
	free(exp->tls_certs_dir);
	free(exp->bdev_name);
	free(exp->socket_path);
	free(exp->tcp);
	free(exp);
}

static void nbd_export_try_finish(struct keel_nbd_export *exp)
{
	if (exp->state != NBD_EXPORT_STOPPING || !exp->listeners_gone || exp->num_conns > 0) {
		return;
	}
	if (exp->info.desc != NULL) {
		keel_bdev_close(exp->info.desc);
		exp->info.desc = NULL;
	}
	TAILQ_REMOVE(&g_exports, exp, link);
	KEEL_NOTICELOG("nbd export %s: stopped", exp->info.name);
	nbd_waiters_wake(&exp->waiters);
	nbd_export_free(exp);
}

static void nbd_export_unlink_done(void *cb_arg, int rc)
{
	struct keel_nbd_export *exp = cb_arg;

	if (rc != 0) {
		KEEL_WARNLOG("nbd export %s: cannot remove socket %s: %s", exp->info.name,
			     exp->socket_path, strerror(-rc));
	}
	exp->listeners_gone = true;
	for (uint32_t i = 0; i < g_num_workers; i++) {
		if (keel_thread_send_msg_reliable(g_workers[i].thread, nbd_worker_close_export,
						  (void *)(uintptr_t)exp->id, NULL) != 0) {
			KEEL_ERRLOG("nbd export %s: cannot reach thread %s to close connections",
				    exp->info.name, keel_thread_get_name(g_workers[i].thread));
		}
	}
	nbd_export_try_finish(exp);
}

void keel_nbd_set_export_listener(keel_nbd_export_listener_fn fn, void *ctx)
{
	g_export_listener = fn;
	g_export_listener_ctx = ctx;
}

/* The list of running exports changed: tell whoever persists it. */
static void nbd_exports_changed(void)
{
	if (g_export_listener != NULL) {
		g_export_listener(g_export_listener_ctx);
	}
}

static void nbd_export_begin_stop(struct keel_nbd_export *exp)
{
	exp->state = NBD_EXPORT_STOPPING;
	nbd_exports_changed();
	nbd_listeners_close(exp);
	if (exp->socket_path == NULL ||
	    keel_spawn_blocking(nbd_unlink_blocking, exp, nbd_export_unlink_done, exp) != 0) {
		nbd_export_unlink_done(exp, 0);
	}
}

static void nbd_export_event(enum keel_bdev_event_type type, struct keel_bdev *bdev, void *ctx)
{
	struct keel_nbd_export *exp = ctx;

	if (type != KEEL_BDEV_EVENT_REMOVE) {
		/* A resize is seen by new connections only: NBD has no way to tell a
		 * connected client (the resize extension is experimental). */
		return;
	}
	switch (exp->state) {
	case NBD_EXPORT_STARTING:
		exp->stop_requested = true;
		break;
	case NBD_EXPORT_RUNNING:
		KEEL_WARNLOG("nbd export %s: bdev %s was removed; closing %u connection(s) and "
			     "removing the export",
			     exp->info.name, exp->bdev_name, exp->num_conns);
		nbd_export_begin_stop(exp);
		break;
	case NBD_EXPORT_STOPPING:
		break;
	}
}

static void nbd_export_listen_done(void *cb_arg, int rc)
{
	struct keel_nbd_export *exp = cb_arg;
	keel_nbd_done_cb cb_fn = exp->start_cb;
	void *start_arg = exp->start_arg;

	if (rc == 0 && exp->stop_requested) {
		rc = -ENODEV;
	}
	if (rc == 0) {
		rc = nbd_listeners_register(exp);
	}
	if (rc != 0 && exp->tls_err[0] != '\0') {
		KEEL_ERRLOG("nbd export %s: cannot load TLS credentials: %s", exp->info.name,
			    exp->tls_err);
	} else if (rc != 0) {
		KEEL_ERRLOG("nbd export %s: cannot listen (socket %s, tcp %s): %s", exp->info.name,
			    exp->socket_path ? exp->socket_path : "-", exp->tcp ? exp->tcp : "-",
			    strerror(-rc));
	}
	if (rc != 0) {
		nbd_listeners_close(exp);
		if (exp->unix_fd >= 0) {
			close(exp->unix_fd);
		}
		if (exp->tcp_fd >= 0) {
			close(exp->tcp_fd);
		}
		/* Remove the socket file we bound, if any, on the way out. */
		if (exp->socket_path != NULL && rc != -EADDRINUSE && rc != -EEXIST) {
			exp->state = NBD_EXPORT_STOPPING;
			exp->listeners_gone = true;
			nbd_unlink_blocking(exp);
		}
		keel_bdev_close(exp->info.desc);
		TAILQ_REMOVE(&g_exports, exp, link);
		g_start_error = exp->tls_err[0] != '\0' ? exp->tls_err : NULL;
		cb_fn(start_arg, rc);
		g_start_error = NULL;
		/* A stop that arrived while starting is satisfied: the export is gone. */
		nbd_waiters_wake(&exp->waiters);
		nbd_export_free(exp);
		return;
	}
	exp->state = NBD_EXPORT_RUNNING;
	nbd_exports_changed();
	KEEL_NOTICELOG("nbd export %s: serving bdev %s (%lu bytes, block size %u%s, tls %s%s%s) "
		       "on%s%s%s%s",
		       exp->info.name, exp->bdev_name, (unsigned long)exp->info.size,
		       exp->info.block_size, exp->read_only ? ", read-only" : "",
		       keel_nbd_tls_mode_name(exp->info.tls_mode), exp->tls_creds ? " " : "",
		       exp->tls_creds ? nbd_tls_creds_kind(exp->tls_creds) : "",
		       exp->socket_path ? " unix:" : "", exp->socket_path ? exp->socket_path : "",
		       exp->tcp ? " tcp:" : "", exp->tcp ? exp->tcp : "");
	cb_fn(start_arg, 0);
}

const char *keel_nbd_export_start_error(void)
{
	return g_start_error;
}

bool keel_nbd_export_name_is_valid(const char *name)
{
	size_t len;

	if (name == NULL) {
		return false;
	}
	len = strlen(name);
	if (len == 0 || len > KEEL_NBD_EXPORT_NAME_MAX) {
		return false;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)name[i];

		if (c <= 0x20 || c >= 0x7f || c == '/') {
			return false;
		}
	}
	return true;
}

static struct keel_nbd_export *nbd_export_find_any(const char *name)
{
	struct keel_nbd_export *exp;

	TAILQ_FOREACH(exp, &g_exports, link) {
		if (strcmp(exp->info.name, name) == 0) {
			return exp;
		}
	}
	return NULL;
}

const char *keel_nbd_tls_mode_name(enum keel_nbd_tls_mode mode)
{
	switch (mode) {
	case KEEL_NBD_TLS_OFF:
		return "off";
	case KEEL_NBD_TLS_ON:
		return "on";
	case KEEL_NBD_TLS_REQUIRE:
		return "require";
	case KEEL_NBD_TLS_UNSET:
		break;
	}
	return "unset";
}

bool keel_nbd_tls_mode_parse(const char *s, enum keel_nbd_tls_mode *mode)
{
	static const enum keel_nbd_tls_mode modes[] = {KEEL_NBD_TLS_OFF, KEEL_NBD_TLS_ON,
						       KEEL_NBD_TLS_REQUIRE};

	for (size_t i = 0; s != NULL && i < sizeof(modes) / sizeof(modes[0]); i++) {
		if (strcmp(s, keel_nbd_tls_mode_name(modes[i])) == 0) {
			*mode = modes[i];
			return true;
		}
	}
	return false;
}

/* Whether a TCP listener on \p tcp is reachable from this machine only. */
static bool nbd_tcp_is_loopback(const char *tcp)
{
	struct sockaddr_storage ss;
	socklen_t len;

	if (nbd_parse_tcp(tcp, &ss, &len) != 0) {
		return false;
	}
	if (ss.ss_family == AF_INET) {
		return (ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) == 127;
	}
	if (ss.ss_family == AF_INET6) {
		const struct in6_addr *a = &((struct sockaddr_in6 *)&ss)->sin6_addr;

		return IN6_IS_ADDR_LOOPBACK(a) ||
		       (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
	}
	return false;
}

/*
 * The TLS policy an export gets: see enum keel_nbd_tls_mode. \return 0, -EINVAL
 * (credentials and mode do not fit) or -EACCES (network TCP without a word on TLS).
 */
static int nbd_export_tls_mode(const char *name, const struct keel_nbd_export_opts *opts,
			       enum keel_nbd_tls_mode *modep)
{
	bool creds = (opts->tls_psk_file != NULL && opts->tls_psk_file[0] != '\0') ||
		     (opts->tls_certs_dir != NULL && opts->tls_certs_dir[0] != '\0');
	enum keel_nbd_tls_mode mode = opts->tls;

	if (mode > KEEL_NBD_TLS_REQUIRE) {
		return -EINVAL;
	}
	if (mode == KEEL_NBD_TLS_UNSET) {
		if (creds) {
			mode = KEEL_NBD_TLS_REQUIRE;
		} else if (opts->tcp != NULL && opts->tcp[0] != '\0' &&
			   !nbd_tcp_is_loopback(opts->tcp)) {
			KEEL_ERRLOG("nbd export %s: tcp %s is not a loopback address: give TLS "
				    "credentials (tls require), or tls off to serve the disk to "
				    "the network in plaintext",
				    name, opts->tcp);
			return -EACCES;
		} else {
			mode = KEEL_NBD_TLS_OFF;
		}
	}
	if (mode != KEEL_NBD_TLS_OFF && !creds) {
		KEEL_ERRLOG("nbd export %s: tls %s needs a PSK file or a certificate directory",
			    name, keel_nbd_tls_mode_name(mode));
		return -EINVAL;
	}
	if (opts->tls_verify_client &&
	    (opts->tls_certs_dir == NULL || opts->tls_certs_dir[0] == '\0')) {
		KEEL_ERRLOG("nbd export %s: verifying client certificates needs a certificate "
			    "directory",
			    name);
		return -EINVAL;
	}
	if (mode == KEEL_NBD_TLS_OFF && creds) {
		KEEL_ERRLOG("nbd export %s: TLS credentials given with tls off", name);
		return -EINVAL;
	}
	*modep = mode;
	return 0;
}

static char *nbd_strdup_opt(const char *s, bool *failed)
{
	char *d;

	if (s == NULL || s[0] == '\0') {
		return NULL;
	}
	d = strdup(s);
	if (d == NULL) {
		*failed = true;
	}
	return d;
}

int keel_nbd_export_start(const struct keel_nbd_export_opts *opts, keel_nbd_done_cb cb_fn,
			  void *cb_arg)
{
	struct keel_nbd_export *exp, *other;
	struct keel_bdev *bdev;
	struct sockaddr_storage ss;
	socklen_t sslen;
	enum keel_nbd_tls_mode tls_mode;
	const char *name;
	bool oom = false;
	int rc;

	if (g_shutdown) {
		return -ESHUTDOWN;
	}
	if (opts == NULL || opts->bdev_name == NULL || cb_fn == NULL) {
		return -EINVAL;
	}
	name = (opts->name != NULL && opts->name[0] != '\0') ? opts->name : opts->bdev_name;
	if (!keel_nbd_export_name_is_valid(name)) {
		KEEL_ERRLOG("nbd: invalid export name '%.64s': use 1-256 printable characters "
			    "without spaces or '/'",
			    name);
		return -EINVAL;
	}
	if ((opts->socket_path == NULL || opts->socket_path[0] == '\0') &&
	    (opts->tcp == NULL || opts->tcp[0] == '\0')) {
		KEEL_ERRLOG("nbd export %s: give a socket path or a tcp address", name);
		return -EINVAL;
	}
	if (opts->socket_path != NULL &&
	    strlen(opts->socket_path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
		KEEL_ERRLOG("nbd export %s: socket path too long", name);
		return -EINVAL;
	}
	if (opts->tcp != NULL && opts->tcp[0] != '\0' &&
	    nbd_parse_tcp(opts->tcp, &ss, &sslen) != 0) {
		KEEL_ERRLOG(
			"nbd export %s: bad tcp address '%s': use HOST:PORT with a numeric host",
			name, opts->tcp);
		return -EINVAL;
	}
	rc = nbd_export_tls_mode(name, opts, &tls_mode);
	if (rc != 0) {
		return rc;
	}
	if (nbd_export_find_any(name) != NULL) {
		return -EEXIST;
	}
	TAILQ_FOREACH(other, &g_exports, link) {
		if ((opts->socket_path != NULL && other->socket_path != NULL &&
		     strcmp(opts->socket_path, other->socket_path) == 0) ||
		    (opts->tcp != NULL && other->tcp != NULL &&
		     strcmp(opts->tcp, other->tcp) == 0)) {
			KEEL_ERRLOG("nbd export %s: export %s already listens there", name,
				    other->info.name);
			return -EADDRINUSE;
		}
	}
	rc = nbd_workers_ensure();
	if (rc != 0) {
		return rc;
	}
	if (g_main_thread == NULL) {
		g_main_thread = keel_thread_get_current();
	}

	exp = calloc(1, sizeof(*exp));
	if (exp == NULL) {
		return -ENOMEM;
	}
	snprintf(exp->info.name, sizeof(exp->info.name), "%s", name);
	exp->id = g_next_export_id++;
	exp->bdev_name = nbd_strdup_opt(opts->bdev_name, &oom);
	exp->socket_path = nbd_strdup_opt(opts->socket_path, &oom);
	exp->tcp = nbd_strdup_opt(opts->tcp, &oom);
	exp->read_only = opts->read_only;
	exp->tls_psk_file = nbd_strdup_opt(opts->tls_psk_file, &oom);
	exp->tls_certs_dir = nbd_strdup_opt(opts->tls_certs_dir, &oom);
	exp->tls_verify_client = opts->tls_verify_client;
	exp->info.tls_mode = tls_mode;
	exp->unix_fd = -1;
	exp->tcp_fd = -1;
	exp->start_cb = cb_fn;
	exp->start_arg = cb_arg;
	TAILQ_INIT(&exp->waiters);
	if (oom) {
		rc = -ENOMEM;
		goto out_free_exp;
	}
	rc = keel_bdev_open_ext(opts->bdev_name, !opts->read_only, nbd_export_event, exp,
				&exp->info.desc);
	if (rc != 0) {
		KEEL_ERRLOG("nbd export %s: cannot open bdev %s: %s", name, opts->bdev_name,
			    strerror(-rc));
		goto out_free_exp;
	}
	bdev = keel_bdev_desc_get_bdev(exp->info.desc);
	exp->info.block_size = keel_bdev_get_block_size(bdev);
	exp->info.size = (uint64_t)exp->info.block_size * keel_bdev_get_num_blocks(bdev);
	exp->info.tflags = nbd_tflags_for_bdev(bdev, opts->read_only);
	snprintf(exp->description, sizeof(exp->description), "keel %s bdev %s",
		 keel_bdev_get_module_name(bdev), keel_bdev_get_name(bdev));
	exp->info.description = exp->description;
	exp->info.traffic = &exp->traffic;
	exp->state = NBD_EXPORT_STARTING;

	rc = keel_spawn_blocking(nbd_listen_blocking, exp, nbd_export_listen_done, exp);
	if (rc != 0) {
		goto out_close_desc;
	}
	TAILQ_INSERT_TAIL(&g_exports, exp, link);
	return 0;

out_close_desc:
	keel_bdev_close(exp->info.desc);
out_free_exp:
	nbd_export_free(exp);
	return rc;
}

int keel_nbd_export_stop(const char *name, keel_nbd_done_cb cb_fn, void *cb_arg)
{
	struct keel_nbd_export *exp = name ? nbd_export_find_any(name) : NULL;

	if (exp == NULL || exp->state == NBD_EXPORT_STOPPING || exp->stop_requested) {
		return -ENOENT;
	}
	if (nbd_waiter_add(&exp->waiters, cb_fn, cb_arg) != 0) {
		return -ENOMEM;
	}
	if (exp->state == NBD_EXPORT_STARTING) {
		/* The start then fails with -ENODEV and calls this waiter. */
		exp->stop_requested = true;
		return 0;
	}
	KEEL_NOTICELOG("nbd export %s: stopping (%u connection(s))", exp->info.name,
		       exp->num_conns);
	nbd_export_begin_stop(exp);
	return 0;
}

struct nbd_stop_all_ctx {
	keel_nbd_done_cb cb_fn;
	void *cb_arg;
	uint32_t pending;
};

static void nbd_stop_all_finish(void *arg)
{
	struct nbd_stop_all_ctx *ctx = arg;

	/*
	 * The NBD threads are left to keel_reactors_stop(): an explicit exit here raced
	 * with channel teardown still running on the blocking pool for them. g_workers
	 * stays allocated too: close messages may still be queued on those threads.
	 */
	if (ctx->cb_fn != NULL) {
		ctx->cb_fn(ctx->cb_arg, 0);
	}
	free(ctx);
}

static void nbd_stop_all_one_done(void *cb_arg, int status)
{
	struct nbd_stop_all_ctx *ctx = cb_arg;

	if (--ctx->pending == 0) {
		nbd_stop_all_finish(ctx);
	}
}

static void nbd_stop_all_release(void *arg)
{
	nbd_stop_all_one_done(arg, 0);
}

void keel_nbd_stop_all(keel_nbd_done_cb cb_fn, void *cb_arg)
{
	struct nbd_stop_all_ctx *ctx = calloc(1, sizeof(*ctx));
	struct keel_nbd_export *exp, *tmp;

	g_shutdown = true;
	if (ctx == NULL) {
		KEEL_ERRLOG("nbd: out of memory while stopping; exports are left running");
		return;
	}
	ctx->cb_fn = cb_fn;
	ctx->cb_arg = cb_arg;
	ctx->pending = 1; /* released below, so the callback never runs inside this call */
	for (exp = TAILQ_FIRST(&g_exports); exp != NULL; exp = tmp) {
		tmp = TAILQ_NEXT(exp, link);
		if (nbd_waiter_add(&exp->waiters, nbd_stop_all_one_done, ctx) != 0) {
			continue;
		}
		ctx->pending++;
		if (exp->state == NBD_EXPORT_RUNNING) {
			KEEL_NOTICELOG("nbd export %s: stopping for shutdown", exp->info.name);
			nbd_export_begin_stop(exp);
		} else if (exp->state == NBD_EXPORT_STARTING) {
			exp->stop_requested = true;
		}
	}
	/* Kernel devices hold bdev descriptors too: they go with the exports. */
	ctx->pending++;
	nbd_disk_stop_all(nbd_stop_all_one_done, ctx);
	if (keel_thread_send_msg_reliable(keel_thread_get_current(), nbd_stop_all_release, ctx,
					  NULL) != 0) {
		KEEL_ERRLOG("nbd: cannot queue the end of shutdown");
	}
}

/* ------------------------------------------------------------------------------ */
/* Listing                                                                         */
/* ------------------------------------------------------------------------------ */

static struct keel_nbd_export *nbd_export_running_from(struct keel_nbd_export *exp)
{
	while (exp != NULL && exp->state != NBD_EXPORT_RUNNING) {
		exp = TAILQ_NEXT(exp, link);
	}
	return exp;
}

struct keel_nbd_export *keel_nbd_export_first(void)
{
	return nbd_export_running_from(TAILQ_FIRST(&g_exports));
}

struct keel_nbd_export *keel_nbd_export_next(struct keel_nbd_export *prev)
{
	return prev ? nbd_export_running_from(TAILQ_NEXT(prev, link)) : NULL;
}

struct keel_nbd_export *keel_nbd_export_find(const char *name)
{
	struct keel_nbd_export *exp = name ? nbd_export_find_any(name) : NULL;

	return exp != NULL && exp->state == NBD_EXPORT_RUNNING ? exp : NULL;
}

const char *keel_nbd_export_get_name(const struct keel_nbd_export *exp)
{
	return exp->info.name;
}

const char *keel_nbd_export_get_bdev_name(const struct keel_nbd_export *exp)
{
	return exp->bdev_name;
}

const char *keel_nbd_export_get_socket_path(const struct keel_nbd_export *exp)
{
	return exp->socket_path;
}

const char *keel_nbd_export_get_tcp(const struct keel_nbd_export *exp)
{
	return exp->tcp;
}

bool keel_nbd_export_is_read_only(const struct keel_nbd_export *exp)
{
	return exp->read_only;
}

enum keel_nbd_tls_mode keel_nbd_export_get_tls(const struct keel_nbd_export *exp)
{
	return exp->info.tls_mode;
}

const char *keel_nbd_export_get_tls_psk_file(const struct keel_nbd_export *exp)
{
	return exp->tls_psk_file;
}

const char *keel_nbd_export_get_tls_certs_dir(const struct keel_nbd_export *exp)
{
	return exp->tls_certs_dir;
}

bool keel_nbd_export_get_tls_verify_client(const struct keel_nbd_export *exp)
{
	return exp->tls_verify_client;
}

uint32_t keel_nbd_export_get_connection_count(const struct keel_nbd_export *exp)
{
	return exp->num_conns - exp->num_refusing;
}

void keel_nbd_export_get_traffic(const struct keel_nbd_export *exp, uint64_t *bytes_in,
				 uint64_t *bytes_out)
{
	*bytes_in = __atomic_load_n(&exp->traffic.bytes_in, __ATOMIC_RELAXED);
	*bytes_out = __atomic_load_n(&exp->traffic.bytes_out, __ATOMIC_RELAXED);
}
