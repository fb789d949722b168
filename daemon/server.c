/*
 * JSON-RPC unix socket server: non-blocking listen socket and connections, each
 * driven by an fd poller on the main keel thread. The protocol lives in rpc.c; this
 * file only moves bytes.
 *
 * Pollers are active (period 0) with their fd registered, so a sleeping reactor wakes
 * on readiness and a reply that a handler sends later from a message is flushed on the
 * next iteration without any extra signalling.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "keel/log.h"
#include "keel/reactor.h"
#include "rpc_internal.h"
#include "server.h"

/*
 * The control plane shares reactor 0 with the data path. An active poller would call
 * accept4/recv on every loop of a busy reactor (measured: a quarter of keeld's CPU in
 * a 4k NBD benchmark), so RPC pollers run at most once per millisecond; their fds
 * still wake a sleeping reactor.
 */
#define RPC_POLL_PERIOD_US 1000

/* Stop reading from a client that does not read its replies. */
#define RPC_OUTPUT_HIGH_WATER (8u << 20)
#define RPC_MAX_CONNECTIONS 64

struct rpc_sock_conn {
	int fd;
	uint32_t id;
	struct rpc_conn *conn;
	struct keel_poller *poller;
	uint32_t events;
	bool eof;       /* peer finished sending (or protocol error): flush, then close */
	struct rpc_sock_conn *next;
};

static int g_listen_fd = -1;
static struct keel_poller *g_listen_poller;
static char g_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static struct rpc_sock_conn *g_conns;
static uint32_t g_conn_count;
static uint32_t g_next_conn_id;

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
	KEEL_DEBUGLOG("rpc: connection %u closed (%u replies still pending are dropped)",
		      sc->id, rpc_conn_pending(sc->conn));
	keel_poller_unregister(&sc->poller);
	close(sc->fd);
	rpc_conn_close(sc->conn);
	free(sc);
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
		moved = 1;
	}
}

static int rpc_sock_conn_poll(void *arg)
{
	struct rpc_sock_conn *sc = arg;
	char buf[65536];
	size_t pending_out;
	uint32_t events;
	int busy = 0;
	ssize_t n;
	int rc;

	rpc_conn_output(sc->conn, &pending_out);
	if (!sc->eof && pending_out < RPC_OUTPUT_HIGH_WATER) {
		n = recv(sc->fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n > 0) {
			busy = 1;
			rc = rpc_conn_feed(sc->conn, buf, (size_t)n);
			if (rc == -ENOMEM) {
				KEEL_ERRLOG("rpc: connection %u: out of memory; closing", sc->id);
				rpc_sock_conn_close(sc);
				return KEEL_POLLER_BUSY;
			}
			if (rc != 0) {
				sc->eof = true; /* error reply queued; close once it is out */
			}
		} else if (n == 0) {
			busy = 1;
			sc->eof = true;
		} else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
			rpc_sock_conn_close(sc);
			return KEEL_POLLER_BUSY;
		}
	}

	rc = rpc_sock_conn_flush(sc);
	if (rc < 0) {
		return KEEL_POLLER_BUSY;
	}
	busy |= rc;

	rpc_conn_output(sc->conn, &pending_out);
	if (sc->eof && pending_out == 0 &&
	    (rpc_conn_pending(sc->conn) == 0 || rpc_conn_is_broken(sc->conn))) {
		rpc_sock_conn_close(sc);
		return KEEL_POLLER_BUSY;
	}
	/* Level-triggered: only ask for what this connection can act on now. */
	events = 0;
	if (!sc->eof && pending_out < RPC_OUTPUT_HIGH_WATER) {
		events |= EPOLLIN;
	}
	if (pending_out > 0) {
		events |= EPOLLOUT;
	}
	rpc_sock_conn_set_events(sc, events);
	return busy ? KEEL_POLLER_BUSY : KEEL_POLLER_IDLE;
}

static void rpc_accept_one(int fd)
{
	struct rpc_sock_conn *sc;
	char name[48];

	if (g_conn_count >= RPC_MAX_CONNECTIONS) {
		KEEL_WARNLOG("rpc: %u connections open; refusing another", g_conn_count);
		close(fd);
		return;
	}
	sc = calloc(1, sizeof(*sc));
	if (sc == NULL) {
		goto out_close_fd;
	}
	sc->fd = fd;
	sc->id = ++g_next_conn_id;
	sc->conn = rpc_conn_create();
	if (sc->conn == NULL) {
		goto out_free_sc;
	}
	snprintf(name, sizeof(name), "rpc_conn_%u", sc->id);
	sc->poller = keel_poller_register(rpc_sock_conn_poll, sc, RPC_POLL_PERIOD_US, name);
	if (sc->poller == NULL) {
		goto out_close_conn;
	}
	sc->events = EPOLLIN;
	if (keel_poller_register_fd(sc->poller, fd, EPOLLIN) != 0) {
		goto out_unregister;
	}
	sc->next = g_conns;
	g_conns = sc;
	g_conn_count++;
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
	int i;

	/* Bounded so a connect storm cannot starve the reactor. */
	for (i = 0; i < 16; i++) {
		int fd = accept4(g_listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
			    errno != ECONNABORTED) {
				KEEL_WARNLOG("rpc: accept on %s failed: %s", g_path,
					     strerror(errno));
			}
			break;
		}
		busy = KEEL_POLLER_BUSY;
		rpc_accept_one(fd);
	}
	return busy;
}

int keel_rpc_server_start(const char *path)
{
	struct sockaddr_un addr;
	mode_t old_mask;
	int rc, fd;

	if (g_listen_fd >= 0) {
		return -EALREADY;
	}
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
	g_listen_poller = keel_poller_register(rpc_listen_poll, NULL, RPC_POLL_PERIOD_US, "rpc_listen");
	if (g_listen_poller == NULL) {
		rc = -ENOMEM;
		goto out_unlink;
	}
	rc = keel_poller_register_fd(g_listen_poller, fd, EPOLLIN);
	if (rc != 0) {
		goto out_unregister;
	}
	g_listen_fd = fd;
	snprintf(g_path, sizeof(g_path), "%s", path);
	KEEL_NOTICELOG("rpc: listening on %s", path);
	return 0;

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
	if (g_listen_fd < 0) {
		return;
	}
	keel_poller_unregister(&g_listen_poller);
	close(g_listen_fd);
	g_listen_fd = -1;
	if (unlink(g_path) != 0 && errno != ENOENT) {
		KEEL_WARNLOG("rpc: cannot remove socket %s: %s", g_path, strerror(errno));
	}
	KEEL_NOTICELOG("rpc: stopped listening on %s", g_path);
}
