/*
 * keel NBD server: export bdevs to NBD clients over unix and TCP sockets.
 *
 * An export serves one bdev under one name on its own listeners (a unix socket
 * path and/or a TCP "host:port"; the two cannot be shared between exports). Clients
 * negotiate with the fixed-newstyle handshake (NBD_OPT_GO/INFO/EXPORT_NAME/LIST/
 * ABORT) and get simple replies. Each accepted connection lives on one NBD keel
 * thread; there is one such thread per reactor ("nbd_N") and connections are spread
 * over them round robin.
 *
 * Threading: every function here must be called on the main keel thread (the one
 * that runs RPC handlers); callbacks run there too.
 * Conventions: int returns are 0 or a negative errno; async calls take cb_fn, cb_arg
 * last and, when they return 0, run the callback exactly once, later, never inside
 * the call.
 */
#ifndef KEEL_NBD_H
#define KEEL_NBD_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_nbd_export;

/** Longest export name in bytes. */
#define KEEL_NBD_EXPORT_NAME_MAX 256

struct keel_nbd_export_opts {
	/** Bdev to export (required). */
	const char *bdev_name;
	/**
	 * Export name (NULL or "" = the bdev name). 1..256 bytes of printable ASCII
	 * without spaces or '/'. Clients asking for the empty (default) name get it too.
	 */
	const char *name;
	/** Unix socket path to listen on (mode 0600), or NULL. */
	const char *socket_path;
	/**
	 * TCP "host:port" with a numeric IPv4 host, "[v6]:port" or "localhost:port";
	 * "port" or ":port" alone listen on 127.0.0.1. NULL: no TCP listener.
	 */
	const char *tcp;
	/** Answer writes, trims and write-zeroes with EPERM and open the bdev read-only. */
	bool read_only;
};

typedef void (*keel_nbd_done_cb)(void *cb_arg, int status);

/**
 * Start an export. The bdev is opened at once; the listeners are created on the
 * blocking-work pool (socket files are stat'ed and unlinked there), then \p cb_fn
 * runs with 0 or: -EADDRINUSE (a server answers on the path/port), -EEXIST (the path
 * exists and is not a socket), -errno from socket/bind/listen.
 * \return 0 (cb_fn runs later), -EINVAL (bad name, no listener, malformed tcp),
 * -EEXIST (export name taken), -EADDRINUSE (another export uses that path or tcp),
 * -ENODEV (no such bdev), -EPERM (bdev claimed and not read_only), -ENOMEM,
 * -ESHUTDOWN (keel_nbd_stop_all ran).
 * Lifetime: \p opts strings are copied.
 */
int keel_nbd_export_start(const struct keel_nbd_export_opts *opts, keel_nbd_done_cb cb_fn,
			  void *cb_arg);

/**
 * Stop an export: stop listening, remove the socket file, close every connection
 * (each waits for its requests in flight), close the bdev, then \p cb_fn(cb_arg, 0).
 * \return 0 (cb_fn runs later) or -ENOENT (no such export, or already stopping).
 */
int keel_nbd_export_stop(const char *name, keel_nbd_done_cb cb_fn, void *cb_arg);

/** Stop every export and the NBD threads (keeld shutdown). \p cb_fn always runs later. */
void keel_nbd_stop_all(keel_nbd_done_cb cb_fn, void *cb_arg);

/** Iterate running exports (those still starting or stopping are skipped). */
struct keel_nbd_export *keel_nbd_export_first(void);
struct keel_nbd_export *keel_nbd_export_next(struct keel_nbd_export *prev);
/** Find a running export by name. \return NULL if none. */
struct keel_nbd_export *keel_nbd_export_find(const char *name);

const char *keel_nbd_export_get_name(const struct keel_nbd_export *exp);
const char *keel_nbd_export_get_bdev_name(const struct keel_nbd_export *exp);
/** Unix socket path, or NULL. */
const char *keel_nbd_export_get_socket_path(const struct keel_nbd_export *exp);
/** TCP address as given ("host:port"), or NULL. */
const char *keel_nbd_export_get_tcp(const struct keel_nbd_export *exp);
bool keel_nbd_export_is_read_only(const struct keel_nbd_export *exp);
/** Number of open client connections (handshake or transmission). */
uint32_t keel_nbd_export_get_connection_count(const struct keel_nbd_export *exp);

/** Whether \p name is a valid export name (see keel_nbd_export_opts.name). */
bool keel_nbd_export_name_is_valid(const char *name);

#ifdef __cplusplus
}
#endif

#endif /* KEEL_NBD_H */
