/*
 * keel NBD internals shared by the connection (nbd_conn.c and the files named in
 * nbd_conn_internal.h), nbd_server.c (exports, listeners, NBD threads), nbd_disk.c, the
 * unit tests and the fuzz harnesses.
 */
#ifndef KEEL_NBD_INTERNAL_H
#define KEEL_NBD_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/types.h>

#include "keel/bdev.h"
#include "keel/nbd.h"

struct nbd_conn;
struct nbd_tls_creds;
struct keel_thread;

/**
 * Bytes an export's connections received and sent on their sockets (NBD headers and
 * payloads, the handshake included), for keel_nbd_export_get_traffic(). Each NBD thread
 * adds with one relaxed atomic per recv()/send() call, which already batches many
 * requests; the main thread reads.
 */
struct nbd_export_traffic {
	uint64_t bytes_in;
	uint64_t bytes_out;
};

/** Count the \p n bytes of a recv()/send() result into \p counter (nothing for n <= 0). */
static inline void nbd_traffic_add(uint64_t *counter, ssize_t n)
{
	if (n > 0) {
		__atomic_fetch_add(counter, (uint64_t)n, __ATOMIC_RELAXED);
	}
}

/**
 * What a handshake needs to know about an export. Immutable while any connection
 * uses it, so NBD threads read it without messages (traffic points at counters they
 * add to).
 */
struct nbd_export_info {
	char name[257];
	const char *description; /* may be NULL */
	uint64_t size;           /* bytes */
	uint32_t block_size;
	uint16_t tflags; /* transmission flags incl. NBD_FLAG_HAS_FLAGS */
	struct keel_bdev_desc *desc;
	struct nbd_export_traffic *traffic;    /* NULL: nothing counts */
	enum keel_nbd_tls_mode tls_mode;       /* OFF, ON or REQUIRE (never UNSET here) */
	const struct nbd_tls_creds *tls_creds; /* NULL when tls_mode is OFF */
};

/**
 * Called on the connection's thread once it is fully gone (fd closed, I/O done,
 * memory freed): \p conn is only an identity then, never dereference it.
 */
typedef void (*nbd_conn_done_fn)(void *ctx, struct nbd_conn *conn);

/*
 * Limits in force (nbd_limits.c, set by keel_nbd_set_options): any thread reads them.
 */
uint64_t nbd_handshake_timeout_ns(void);
uint64_t nbd_stall_timeout_ns(void);
uint32_t nbd_max_connections(void);
uint32_t nbd_max_export_connections(void);
/** Open socket connections, for keel_nbd_get_stats (main thread sets it). */
void nbd_connections_set(uint32_t n);

/**
 * Take \p len bytes of the daemon-wide buffer budget. \return false when they do not
 * fit (the caller waits and retries); true when they fit or nothing else holds any.
 * Any thread.
 */
bool nbd_budget_reserve(uint64_t len);
/** Give back what nbd_budget_reserve() took. Any thread. */
void nbd_budget_release(uint64_t len);

enum nbd_stat {
	NBD_STAT_REFUSED,
	NBD_STAT_BUFFER_WAITS,
	NBD_STAT_HANDSHAKE_TIMEOUTS,
	NBD_STAT_STALL_TIMEOUTS,
	NBD_STAT_TLS_HANDSHAKES,
	NBD_STAT_TLS_FAILURES,
	NBD_STAT_COUNT,
};

/** Count one event for keel_nbd_get_stats. Any thread. */
void nbd_stat_inc(enum nbd_stat stat);

/*
 * Payload buffers (nbd_buf_cache.c): a cache per OS thread shared by its connections.
 * Each connection holds a reference while it lives; the last one frees the cache.
 */
/** A buffer of at least \p len bytes aligned to \p align; *classp says how to put it. */
void *nbd_buf_get(uint32_t len, size_t align, int *classp);
/** Return a buffer of class \p c (from nbd_buf_get) to the cache or free it. */
void nbd_buf_put(void *buf, int c);
void nbd_buf_cache_ref(void);
void nbd_buf_cache_unref(void);
/** Idle bytes in every thread's cache. Any thread. */
uint64_t nbd_buf_cached_bytes(void);

/** Transmission flags for \p bdev (\p read_only adds NBD_FLAG_READ_ONLY). */
uint16_t nbd_tflags_for_bdev(struct keel_bdev *bdev, bool read_only);

/**
 * Serve a freshly accepted socket: handshake for \p exp, then transmission.
 * Must be called on the keel thread that will own the connection. \p fd becomes
 * non-blocking and owned by the connection on success.
 * \return 0 (done_fn runs exactly once, later, on this thread), -ENOMEM, -EINVAL
 * (not on a keel thread), -errno from fcntl/epoll.
 */
int nbd_conn_create_handshake(int fd, const struct nbd_export_info *exp, nbd_conn_done_fn done_fn,
			      void *done_ctx, struct nbd_conn **connp);

/**
 * Serve \p fd with the transmission phase only (no handshake): for the kernel
 * frontend, which negotiated nothing and passes one end of a socketpair to nbd.ko.
 * \p desc serves the I/O on this thread's channel; \p tflags are the transmission
 * flags the peer was told (they decide READ_ONLY/TRIM handling). Same threading,
 * ownership and return values as nbd_conn_create_handshake.
 */
int nbd_conn_create_transmission(int fd, struct keel_bdev_desc *desc, uint16_t tflags,
				 nbd_conn_done_fn done_fn, void *done_ctx, struct nbd_conn **connp);

/**
 * Hard close (export stop, hot remove): shut the socket down so a client that
 * stopped reading cannot hold us, drop unsent replies, wait for the requests in
 * flight on the bdev, then done_fn. Owning thread only; idempotent.
 */
void nbd_conn_close(struct nbd_conn *conn);

/** Whether the connection reached transmission (tests, statistics). */
bool nbd_conn_in_transmission(const struct nbd_conn *conn);

/**
 * Serve \p conn (just created by nbd_conn_create_handshake) only to refuse it: every
 * option but ABORT is answered with NBD_REP_ERR_POLICY and \p why (EXPORT_NAME, which has
 * no error reply, with a close) until the client leaves or the handshake timeout ends
 * it. \p why is copied. Owning thread.
 */
void nbd_conn_refuse(struct nbd_conn *conn, const char *why);

/*
 * NBD threads shared by socket exports and kernel devices (nbd_server.c): one keel
 * thread "nbd_N" per reactor, created on first use. Main thread only.
 */
int nbd_workers_ensure(void);
uint32_t nbd_worker_count(void);
struct keel_thread *nbd_worker_thread(uint32_t i);

/*
 * Callers waiting for an export (nbd_server.c) or a kernel device (nbd_disk.c) to
 * be gone. Main thread only.
 */
struct nbd_waiter {
	keel_nbd_done_cb cb_fn;
	void *cb_arg;
	TAILQ_ENTRY(nbd_waiter) link;
};
TAILQ_HEAD(nbd_waiter_list, nbd_waiter);

/** Queue \p cb_fn(\p cb_arg, 0) for nbd_waiters_wake(). \return 0 or -ENOMEM. */
int nbd_waiter_add(struct nbd_waiter_list *list, keel_nbd_done_cb cb_fn, void *cb_arg);
/** Call every waiter with status 0, in order, and empty \p list. */
void nbd_waiters_wake(struct nbd_waiter_list *list);

/*
 * Kernel devices (nbd_disk.c): stop every one for keel_nbd_stop_all(); \p cb_fn runs
 * once, later, on this thread.
 */
void nbd_disk_stop_all(void (*cb_fn)(void *cb_arg, int status), void *cb_arg);

/**
 * Parse a kernel devices document (keel_nbd_disk_snapshot's format) the way
 * keel_nbd_disk_restore() does, and drop the records. Pure: no I/O, no devices, any
 * thread (fuzz target). \return the number of records kept (malformed ones are
 * skipped with a warning), -EINVAL (not such a document) or -ENOMEM.
 */
int nbd_disk_records_parse(const json_t *doc);

#endif /* KEEL_NBD_INTERNAL_H */
