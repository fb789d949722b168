/*
 * One NBD connection's lifetime: creation, the poller that drives it, soft and hard
 * close, and the deadlines that end a client keeping us waiting.
 *
 * A connection is a non-blocking socket served by one poller on one keel thread. The
 * same poller runs the fixed-newstyle handshake (nbd_handshake.c) and the transmission
 * phase (nbd_transmission.c) over the socket code in nbd_sock.c, so the handshake never
 * blocks a reactor and the kernel frontend can start a connection directly in
 * transmission (nbd_conn_create_transmission).
 *
 * Every client is bounded in memory and time (nbd_limits.c): payload bytes come out of a
 * daemon-wide budget (over it, the connection stops reading requests until buffers
 * free), and one deadline on the connection's own poller ends a handshake that takes
 * too long and a client that stops reading replies or sending a payload. The deadline is
 * armed only while something waits on the client: an idle connection has no timer.
 *
 * Who calls what: nbd_server.c, nbd_disk.c, the unit tests and the fuzz harness use the
 * nbd_conn_* functions of nbd_internal.h; the other connection pieces use the close
 * functions through nbd_conn_internal.h. Owning thread only.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include "keel/bdev.h"
#include "keel/log.h"
#include "keel/reactor.h"
#include "nbd/nbd_conn_internal.h"
#include "nbd/nbd_tls.h"

/* A connection waiting for the buffer budget looks again this often (microseconds). */
#define NBD_BUDGET_RETRY_US 1000u

/* ------------------------------------------------------------------------------ */
/* Closing                                                                        */
/* ------------------------------------------------------------------------------ */

/* Soft close: stop reading, deliver the replies of requests in flight, then close. */
void nbd_conn_close_soft(struct nbd_conn *conn)
{
	if (conn->closing) {
		return;
	}
	conn->closing = true;
	conn->rx_stop = true;
}

/* Hard close: nothing more is read or sent; requests in flight still finish. */
void nbd_conn_abort(struct nbd_conn *conn)
{
	struct nbd_req *req;

	nbd_conn_close_soft(conn);
	conn->tx_dead = true;
	while ((req = TAILQ_FIRST(&conn->replies)) != NULL) {
		TAILQ_REMOVE(&conn->replies, req, link);
		nbd_req_put(req);
	}
	conn->reply_sent = 0;
	if (!conn->shut) {
		shutdown(conn->fd, SHUT_RDWR);
		conn->shut = true;
	}
}

void nbd_conn_close(struct nbd_conn *conn)
{
	KEEL_INFOLOG("%s: closing on request", conn->label);
	nbd_conn_abort(conn);
	keel_poller_wake(conn->poller); /* the poller finishes the close */
}

bool nbd_conn_in_transmission(const struct nbd_conn *conn)
{
	return conn->phase == NBD_PHASE_TRANSMISSION;
}

static void nbd_conn_free(struct nbd_conn *conn)
{
	keel_poller_unregister(&conn->poller);
	nbd_tls_conn_free(conn);
	if (conn->fd >= 0) {
		close(conn->fd);
	}
	if (conn->ch != NULL) {
		keel_put_io_channel(conn->ch);
	}
	if (conn->reqs != NULL) {
		for (uint32_t i = 0; i < NBD_CONN_MAX_REQS; i++) {
			nbd_req_free_buf(&conn->reqs[i]);
		}
	}
	if (conn->reserved != 0) {
		nbd_budget_release(conn->reserved);
	}
	if (conn->cache_ref) {
		nbd_buf_cache_unref();
	}
	free(conn->refuse);
	free(conn->reqs);
	free(conn->free_reqs);
	free(conn->rbuf);
	free(conn->wbuf);
	free(conn);
}

static bool nbd_conn_try_finish(struct nbd_conn *conn)
{
	nbd_conn_done_fn done_fn;
	void *done_ctx;
	struct nbd_req *req;

	if (!conn->closing || conn->in_bdev > 0) {
		return false;
	}
	/* A clean close (DISC, EOF) still delivers the replies of finished requests. */
	if (!conn->tx_dead && (conn->wsent < conn->wlen || !TAILQ_EMPTY(&conn->replies))) {
		return false;
	}
	while ((req = TAILQ_FIRST(&conn->nomem)) != NULL) {
		TAILQ_REMOVE(&conn->nomem, req, link);
		nbd_req_put(req);
	}
	KEEL_INFOLOG("%s: closed", conn->label);
	done_fn = conn->done_fn;
	done_ctx = conn->done_ctx;
	nbd_conn_free(conn);
	done_fn(done_ctx, conn);
	return true;
}

/* ------------------------------------------------------------------------------ */
/* Deadlines and the poller                                                       */
/* ------------------------------------------------------------------------------ */

/* Close a client whose deadline passed: the handshake, or a stall in transmission. */
static void nbd_conn_expire(struct nbd_conn *conn)
{
	uint64_t now = keel_now_ns();
	uint64_t stall = nbd_stall_timeout_ns();

	if (conn->tx_dead) {
		return; /* already closing hard: only the bdev is waited for */
	}
	if (conn->phase == NBD_PHASE_HANDSHAKE) {
		if (now - conn->created_ns >= nbd_handshake_timeout_ns()) {
			KEEL_WARNLOG("%s: no export chosen within %lu ms (handshake timeout), "
				     "closing",
				     conn->label,
				     (unsigned long)(nbd_handshake_timeout_ns() / 1000000ull));
			nbd_stat_inc(NBD_STAT_HANDSHAKE_TIMEOUTS);
			nbd_conn_abort(conn);
		}
		return;
	}
	if (conn->tx_wait_since_ns != 0 && now - conn->tx_wait_since_ns >= stall) {
		KEEL_WARNLOG("%s: client has not read its replies for %lu ms (stall timeout), "
			     "closing",
			     conn->label, (unsigned long)(stall / 1000000ull));
		nbd_stat_inc(NBD_STAT_STALL_TIMEOUTS);
		nbd_conn_abort(conn);
	} else if (conn->rx_wait_since_ns != 0 && now - conn->rx_wait_since_ns >= stall) {
		KEEL_WARNLOG("%s: client stopped sending a write payload for %lu ms (stall "
			     "timeout), closing",
			     conn->label, (unsigned long)(stall / 1000000ull));
		nbd_stat_inc(NBD_STAT_STALL_TIMEOUTS);
		nbd_conn_abort(conn);
	}
}

/*
 * Arm the poller's one timer for the earliest thing that waits on the client. Lazy: a
 * timer already due earlier is left alone (when it fires, nbd_conn_expire finds nothing
 * and this arms the next), so a busy connection does not re-arm on every poll, and a
 * connection with nothing waiting has no timer at all.
 */
static void nbd_conn_update_deadline(struct nbd_conn *conn)
{
	uint64_t now = 0, want = UINT64_MAX;
	bool tx_wait, rx_wait;

	if (conn->tx_dead || conn->poller == NULL) {
		return;
	}
	if (conn->phase == NBD_PHASE_HANDSHAKE) {
		want = conn->created_ns + nbd_handshake_timeout_ns();
	} else {
		tx_wait = conn->tx_blocked &&
			  (!TAILQ_EMPTY(&conn->replies) || conn->wsent < conn->wlen);
		rx_wait = !conn->rx_stop &&
			  (conn->rx == NBD_RX_PAYLOAD || conn->rx == NBD_RX_DISCARD);
		if (!tx_wait) {
			conn->tx_wait_since_ns = 0;
		} else if (conn->tx_wait_since_ns == 0) {
			conn->tx_wait_since_ns = now = keel_now_ns();
		}
		if (!rx_wait) {
			conn->rx_wait_since_ns = 0;
		} else if (conn->rx_wait_since_ns == 0) {
			conn->rx_wait_since_ns = now = now ? now : keel_now_ns();
		}
		if (conn->tx_wait_since_ns != 0) {
			want = conn->tx_wait_since_ns + nbd_stall_timeout_ns();
		}
		if (conn->rx_wait_since_ns != 0 &&
		    conn->rx_wait_since_ns + nbd_stall_timeout_ns() < want) {
			want = conn->rx_wait_since_ns + nbd_stall_timeout_ns();
		}
	}
	if (conn->budget_wait) {
		now = now ? now : keel_now_ns();
		if (now + NBD_BUDGET_RETRY_US * 1000ull < want) {
			want = now + NBD_BUDGET_RETRY_US * 1000ull;
		}
	}
	if (want == UINT64_MAX || (conn->timer_due_ns != 0 && conn->timer_due_ns <= want)) {
		return;
	}
	now = now ? now : keel_now_ns();
	if (keel_poller_arm(conn->poller, want > now ? (want - now) / 1000 + 1 : 1) == 0) {
		conn->timer_due_ns = want;
	}
}

static int nbd_conn_poll(void *arg)
{
	struct nbd_conn *conn = arg;
	int work = 0;

	if (!TAILQ_EMPTY(&conn->nomem)) {
		work |= nbd_conn_retry_nomem(conn);
	}
	/*
	 * Replies that completed since the last poll go out first: at low queue depth
	 * that is the whole latency budget, and the recv() below usually finds nothing.
	 * Replies produced while parsing (refused requests) go out right after.
	 */
	if (!TAILQ_EMPTY(&conn->replies) || conn->wsent < conn->wlen) {
		work |= nbd_conn_tx(conn);
	}
	if (conn->timer_due_ns != 0 && keel_now_ns() >= conn->timer_due_ns) {
		conn->timer_due_ns = 0;
		nbd_conn_expire(conn);
	}
	if (conn->budget_wait) {
		conn->rx_stalled = false; /* look at the budget again */
	}
	if (!conn->rx_stop) {
		work |= nbd_conn_rx(conn);
	}
	if (!conn->tx_blocked &&
	    (!TAILQ_EMPTY(&conn->replies) || conn->wsent < conn->wlen || conn->close_after_flush)) {
		work |= nbd_conn_tx(conn);
	}
	if (conn->closing) {
		if (!conn->shut && conn->in_bdev == 0 && conn->tx_dead) {
			shutdown(conn->fd, SHUT_RDWR);
			conn->shut = true;
		}
		if (nbd_conn_try_finish(conn)) {
			return KEEL_POLLER_BUSY;
		}
	}
	nbd_conn_update_deadline(conn);
	nbd_conn_update_events(conn);
	/* Requests waiting for memory are retried on every iteration until they go. */
	if (!TAILQ_EMPTY(&conn->nomem)) {
		return KEEL_POLLER_BUSY;
	}
	/*
	 * Run again at once only for work that is there now: replies left unsent with
	 * room in the socket, or a socket that may hold more (the last recv filled the
	 * buffer). A socket that came back short or empty is epoll's to report (level
	 * triggered) and completions wake us: rerunning would cost an empty recv, which
	 * at QD1 was 2-3 of keeld's ~19 system calls per request in the kernel-path VM.
	 */
	if (!conn->tx_blocked && !conn->tx_dead && !TAILQ_EMPTY(&conn->replies)) {
		return KEEL_POLLER_BUSY;
	}
	if (!work) {
		return KEEL_POLLER_IDLE;
	}
	/* A stalled receive (STARTTLS, no free request) is released by a rerun, as before. */
	if (conn->rx_stalled || conn->tls_pending != NULL) {
		return KEEL_POLLER_BUSY;
	}
	return !conn->rx_drained && !conn->rx_stop ? KEEL_POLLER_BUSY : KEEL_POLLER_IDLE;
}

/* ------------------------------------------------------------------------------ */
/* Creation                                                                       */
/* ------------------------------------------------------------------------------ */

static int nbd_conn_alloc(int fd, nbd_conn_done_fn done_fn, void *done_ctx, struct nbd_conn **connp)
{
	struct nbd_conn *conn;
	int flags, rc;

	if (keel_thread_get_current() == NULL || done_fn == NULL) {
		return -EINVAL;
	}
	flags = fcntl(fd, F_GETFL);
	if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
		return -errno;
	}
	conn = calloc(1, sizeof(*conn));
	if (conn == NULL) {
		return -ENOMEM;
	}
	conn->fd = fd;
	conn->created_ns = keel_now_ns();
	conn->done_fn = done_fn;
	conn->done_ctx = done_ctx;
	TAILQ_INIT(&conn->replies);
	TAILQ_INIT(&conn->nomem);
	conn->rbuf = malloc(NBD_CONN_RBUF_MIN);
	conn->rbuf_size = NBD_CONN_RBUF_MIN;
	if (conn->rbuf == NULL) {
		rc = -ENOMEM;
		goto out_free_conn;
	}
	conn->poller = keel_poller_register(nbd_conn_poll, conn, 0, "nbd_conn");
	if (conn->poller == NULL) {
		rc = -ENOMEM;
		goto out_free_rbuf;
	}
	conn->events = EPOLLIN;
	rc = keel_poller_register_fd(conn->poller, fd, conn->events);
	if (rc != 0) {
		goto out_unregister;
	}
	*connp = conn;
	return 0;

out_unregister:
	keel_poller_unregister(&conn->poller);
out_free_rbuf:
	free(conn->rbuf);
out_free_conn:
	free(conn);
	return rc;
}

int nbd_conn_create_handshake(int fd, const struct nbd_export_info *exp, nbd_conn_done_fn done_fn,
			      void *done_ctx, struct nbd_conn **connp)
{
	struct nbd_greeting greeting = {
		.magic = htobe64(NBD_MAGIC),
		.opts_magic = htobe64(NBD_OPTS_MAGIC),
		.flags = htobe16(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES),
	};
	struct nbd_conn *conn;
	int rc;

	rc = nbd_conn_alloc(fd, done_fn, done_ctx, &conn);
	if (rc != 0) {
		return rc;
	}
	conn->exp = exp;
	conn->desc = exp->desc;
	conn->tflags = exp->tflags;
	conn->phase = NBD_PHASE_HANDSHAKE;
	conn->hs = NBD_HS_CFLAGS;
	snprintf(conn->label, sizeof(conn->label), "nbd export %s: connection fd %d", exp->name,
		 fd);
	rc = nbd_wbuf_append(conn, &greeting, sizeof(greeting));
	if (rc != 0) {
		conn->fd = -1; /* the caller still owns fd on failure */
		nbd_conn_free(conn);
		return rc;
	}
	/* The poller sleeps on the socket: its timer is what ends a silent handshake. */
	nbd_conn_update_deadline(conn);
	KEEL_INFOLOG("%s: accepted", conn->label);
	*connp = conn;
	return 0;
}

int nbd_conn_create_transmission(int fd, struct keel_bdev_desc *desc, uint16_t tflags,
				 nbd_conn_done_fn done_fn, void *done_ctx, struct nbd_conn **connp)
{
	struct nbd_conn *conn;
	int rc;

	rc = nbd_conn_alloc(fd, done_fn, done_ctx, &conn);
	if (rc != 0) {
		return rc;
	}
	conn->desc = desc;
	conn->tflags = tflags | NBD_FLAG_HAS_FLAGS;
	snprintf(conn->label, sizeof(conn->label), "nbd bdev %s: connection fd %d",
		 keel_bdev_get_name(keel_bdev_desc_get_bdev(desc)), fd);
	rc = nbd_conn_setup_transmission(conn);
	if (rc != 0) {
		conn->fd = -1;
		nbd_conn_free(conn);
		return rc;
	}
	nbd_conn_enter_transmission(conn);
	*connp = conn;
	return 0;
}
