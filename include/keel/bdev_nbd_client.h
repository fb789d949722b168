/*
 * The NBD client bdev (bdev/nbd_client): a block device whose data lives in an export
 * of an NBD server on this or another host, reached through libnbd. It is how a
 * volume keeps a replica on another machine (docs/remote-replicas.md).
 *
 * Each keel thread that uses the bdev has its own connection (its I/O channel owns one
 * libnbd handle, driven only by that thread: the handle's fd sits in the thread's
 * epoll, completions run there) when the server advertises multi-conn; otherwise the
 * creating thread's channel holds the only connection and the other threads forward
 * their requests to it by message (completions come back the same way). Connecting (DNS, TCP, TLS handshake, NBD handshake)
 * runs on the blocking-work pool, never on a reactor.
 *
 * Failures: every request has a deadline (timeout_ms). A request that misses it, or a
 * connection that dies, drops that channel's connection and fails everything in flight
 * on it with -EIO at once, so a nexus above faults the replica and goes on. A channel
 * without a connection fails new requests with -EIO and reconnects in the background
 * with a doubling back-off (a timer armed only while it is disconnected).
 */
#ifndef KEEL_BDEV_NBD_CLIENT_H
#define KEEL_BDEV_NBD_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/bdev_module.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Request timeout when the creator gives none. */
#define KEEL_NBD_CLIENT_TIMEOUT_MS_DEFAULT 5000u
/** Shortest and longest accepted timeouts. */
#define KEEL_NBD_CLIENT_TIMEOUT_MS_MIN 10u
#define KEEL_NBD_CLIENT_TIMEOUT_MS_MAX 3600000u

extern struct keel_bdev_module keel_bdev_nbd_client_module;

struct keel_bdev_nbd_client_opts {
	const char *name; /**< bdev name */
	/**
	 * An NBD URI as libnbd parses it: nbd://HOST[:PORT]/EXPORT, nbds://... (TLS),
	 * nbd+unix:///EXPORT?socket=PATH, nbds+unix://USER@/EXPORT?socket=PATH&tls-psk-file=F.
	 * Local files named in the URI (socket, tls-psk-file) are allowed: URIs come from
	 * the administrator.
	 */
	const char *uri;
	uint32_t timeout_ms; /**< per request and per connect attempt; 0 = the default */
};

/**
 * Whether \p text looks like an NBD URI this module takes (scheme nbd, nbds,
 * nbd+unix or nbds+unix followed by "://"). Pure; any thread.
 */
bool keel_bdev_nbd_client_is_uri(const char *text);

/**
 * Connect to opts->uri on the blocking-work pool, read the export's size, block size and
 * flags, and register the bdev. \p cb_fn(cb_arg, status, bdev) runs on this thread:
 * status 0, -EINVAL (bad URI, block size or size), -EEXIST (name taken),
 * -ECONNREFUSED / -ETIMEDOUT / -EIO / -EPERM (TLS refused) from connecting, -ENOMEM.
 * keel_bdev_nbd_client_last_error() then holds libnbd's words for a person.
 * \return 0 (cb runs) or a negative errno (-EINVAL for missing fields, -ENOMEM; cb never
 * runs). Keel threads only.
 */
int keel_bdev_nbd_client_create(const struct keel_bdev_nbd_client_opts *opts,
				keel_bdev_create_cb cb_fn, void *cb_arg);

/**
 * The reason the last failed create on this keel thread failed (one line, "" when none).
 * Valid until the next create on this thread completes.
 */
const char *keel_bdev_nbd_client_last_error(void);

/** Delete by name. \return 0 (cb runs) or -ENODEV (no such NBD client bdev). */
int keel_bdev_nbd_client_delete(const char *name, keel_bdev_done_cb cb_fn, void *cb_arg);

/**
 * Connect to \p uri, read the export's size and its first \p len bytes (fewer when the
 * export is smaller: *got says how many), and disconnect. For looking at a replica target
 * before it becomes a bdev (the volume manager's probe). BLOCKS: blocking-work pool only.
 * \return 0, or a negative errno with \p err (one line) saying why.
 */
int keel_bdev_nbd_client_read_head(const char *uri, uint32_t timeout_ms, void *buf, size_t len,
				   size_t *got, uint64_t *size, char *err, size_t errlen);

/** Counters of one NBD client bdev, summed over its channels. */
struct keel_bdev_nbd_client_stats {
	uint64_t connects;       /**< connections made (first ones and reconnects) */
	uint64_t connect_errors; /**< attempts that failed */
	uint64_t timeouts;       /**< requests that missed their deadline */
	uint64_t disconnects;    /**< connections dropped (dead, timed out) */
	uint32_t channels_up;    /**< channels connected now */
	uint32_t channels_down;  /**< channels without a connection now */
};

/** \return 0 or -ENODEV. Any keel thread (counters are atomics: a snapshot). */
int keel_bdev_nbd_client_get_stats(const char *name, struct keel_bdev_nbd_client_stats *st);

#ifdef __cplusplus
}
#endif

#endif /* KEEL_BDEV_NBD_CLIENT_H */
