/*
 * keel NBD server: export bdevs to NBD clients over unix and TCP sockets.
 *
 * An export serves one bdev under one name on its own listeners (a unix socket
 * path and/or a TCP "host:port"; the two cannot be shared between exports). Clients
 * negotiate with the fixed-newstyle handshake (NBD_OPT_GO/INFO/EXPORT_NAME/LIST/
 * ABORT, and STARTTLS on exports with TLS) and get simple replies. Each accepted connection lives on one NBD keel
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

#include <jansson.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_nbd_export;

/** Longest export name in bytes. */
#define KEEL_NBD_EXPORT_NAME_MAX 256

/**
 * TLS policy of an export (NBD_OPT_STARTTLS). UNSET is what a caller that says nothing
 * gets: OFF on unix sockets and loopback TCP, REQUIRE when credentials are given, and a
 * refusal (-EACCES) for TCP on any other address: a disk goes to the network in plaintext
 * only when OFF is asked for explicitly.
 */
enum keel_nbd_tls_mode {
	KEEL_NBD_TLS_UNSET = 0,
	/** No TLS: STARTTLS is answered NBD_REP_ERR_UNSUP. */
	KEEL_NBD_TLS_OFF,
	/** Plaintext and TLS clients are both served. */
	KEEL_NBD_TLS_ON,
	/**
	 * Before STARTTLS every option but STARTTLS and ABORT is answered
	 * NBD_REP_ERR_TLS_REQD (NBD_OPT_EXPORT_NAME, which has no error reply, closes).
	 */
	KEEL_NBD_TLS_REQUIRE,
};

/** "off", "on", "require" (and "unset"). */
const char *keel_nbd_tls_mode_name(enum keel_nbd_tls_mode mode);
/** Parse "off", "on" or "require". \return false for anything else. */
bool keel_nbd_tls_mode_parse(const char *s, enum keel_nbd_tls_mode *mode);

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
	/** TLS policy; see enum keel_nbd_tls_mode. */
	enum keel_nbd_tls_mode tls;
	/**
	 * psktool key file (lines "username:hexkey", as `psktool -u USER -p FILE` writes),
	 * read once at start; or NULL.
	 */
	const char *tls_psk_file;
	/**
	 * Directory with server-cert.pem and server-key.pem (ca-cert.pem optional), as
	 * qemu and nbdkit name them; read once at start; or NULL.
	 */
	const char *tls_certs_dir;
	/**
	 * Certificate clients must present a certificate signed by tls_certs_dir's
	 * ca-cert.pem, or the handshake fails (PSK clients authenticate with the key).
	 */
	bool tls_verify_client;
};

typedef void (*keel_nbd_done_cb)(void *cb_arg, int status);

/**
 * Start an export. The bdev is opened at once; TLS credentials are read and the
 * listeners created on the blocking-work pool (socket files are stat'ed and unlinked
 * there), then \p cb_fn runs with 0 or: -EADDRINUSE (a server answers on the
 * path/port), -EEXIST (the path exists and is not a socket), -errno from
 * socket/bind/listen; for TLS credentials -ENOENT (file or directory missing), -EACCES
 * (unreadable), -EKEYREJECTED (malformed key file or certificate; the log says which
 * line or file). Nothing is left behind on failure.
 * \return 0 (cb_fn runs later), -EINVAL (bad name, no listener, malformed tcp, tls
 * on/require without credentials, credentials with tls off, tls_verify_client without
 * tls_certs_dir), -EACCES (TCP on an
 * address other than loopback with tls UNSET),
 * -EEXIST (export name taken), -EADDRINUSE (another export uses that path or tcp),
 * -ENODEV (no such bdev), -EPERM (bdev claimed and not read_only), -ENOMEM,
 * -ESHUTDOWN (keel_nbd_stop_all ran).
 * Lifetime: \p opts strings are copied.
 */
int keel_nbd_export_start(const struct keel_nbd_export_opts *opts, keel_nbd_done_cb cb_fn,
			  void *cb_arg);

/**
 * Inside the callback of a keel_nbd_export_start() that failed: a one-line explanation
 * when there is more to say than the errno (which TLS credential file or line is bad),
 * else NULL. Valid only during that callback. Main keel thread.
 */
const char *keel_nbd_export_start_error(void);

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
/** TLS policy in force (never UNSET). */
enum keel_nbd_tls_mode keel_nbd_export_get_tls(const struct keel_nbd_export *exp);
/** PSK file / certificate directory as given, or NULL. */
const char *keel_nbd_export_get_tls_psk_file(const struct keel_nbd_export *exp);
const char *keel_nbd_export_get_tls_certs_dir(const struct keel_nbd_export *exp);
/** Whether certificate clients must present a certificate (tls_verify_client). */
bool keel_nbd_export_get_tls_verify_client(const struct keel_nbd_export *exp);
/** Number of open client connections (handshake or transmission). */
uint32_t keel_nbd_export_get_connection_count(const struct keel_nbd_export *exp);
/**
 * Bytes the export's socket connections received (\p bytes_in) and sent (\p bytes_out)
 * since it started, NBD headers and the handshake included. Main keel thread (the
 * export's lifetime); the counters themselves are read atomically.
 */
void keel_nbd_export_get_traffic(const struct keel_nbd_export *exp, uint64_t *bytes_in,
				 uint64_t *bytes_out);

/** Whether \p name is a valid export name (see keel_nbd_export_opts.name). */
bool keel_nbd_export_name_is_valid(const char *name);

/**
 * Called each time the list of running exports changes: an export started serving,
 * or one began to stop (for any reason: keel_nbd_export_stop, its bdev removed,
 * keel_nbd_stop_all), so it is no longer listed by keel_nbd_export_first(). Runs on
 * the main keel thread right after the change, possibly inside keel_nbd_export_stop()
 * or keel_nbd_stop_all(): it may read the exports but must not start or stop one.
 */
typedef void (*keel_nbd_export_listener_fn)(void *ctx);

/** Set the one listener (NULL: none). Main keel thread. */
void keel_nbd_set_export_listener(keel_nbd_export_listener_fn fn, void *ctx);

/* ------------------------------------------------------------------------------ */
/* Limits: what any client can make keeld hold (nbd/nbd_limits.c)                  */
/* ------------------------------------------------------------------------------ */

/** Defaults of struct keel_nbd_options. */
#define KEEL_NBD_DEFAULT_BUFFER_BUDGET (512ull << 20)
#define KEEL_NBD_DEFAULT_MAX_CONNECTIONS 1024u
#define KEEL_NBD_DEFAULT_MAX_EXPORT_CONNECTIONS 256u
#define KEEL_NBD_DEFAULT_HANDSHAKE_TIMEOUT_MS 30000u
#define KEEL_NBD_DEFAULT_STALL_TIMEOUT_MS 60000u

/** Accepted ranges (inclusive) of struct keel_nbd_options. */
#define KEEL_NBD_MIN_BUFFER_BUDGET (1ull << 20)
#define KEEL_NBD_MAX_BUFFER_BUDGET (1ull << 40)
#define KEEL_NBD_MAX_CONNECTIONS_LIMIT 65536u
#define KEEL_NBD_MIN_TIMEOUT_MS 10u
#define KEEL_NBD_MAX_TIMEOUT_MS (24u * 3600u * 1000u)

/**
 * Daemon-wide NBD limits. They apply to socket exports; the buffer budget and the stall
 * timeout also to kernel devices (/dev/nbdN), whose connections are NBD connections too.
 */
struct keel_nbd_options {
	/**
	 * Payload bytes all NBD connections together may hold for requests (read data
	 * waiting to be sent, write data being received or written). A connection that
	 * would go over it waits (its next request is not read) until buffers free; it is
	 * not dropped. A single request larger than the budget runs when nothing else
	 * holds buffers. 1 MiB .. 1 TiB, default 512 MiB.
	 */
	uint64_t buffer_budget;
	/** Open socket connections over all exports; 1..65536, default 1024. */
	uint32_t max_connections;
	/** Open socket connections per export; 1..65536, default 256. */
	uint32_t max_export_connections;
	/** From accept to NBD_OPT_GO/EXPORT_NAME; 10 ms .. 24 h, default 30 s. */
	uint32_t handshake_timeout_ms;
	/**
	 * How long a connection may wait on its client in transmission: replies it does
	 * not read (also after DISC or EOF), or a write payload it stops sending. Then it is
	 * closed. 10 ms .. 24 h, default 60 s.
	 */
	uint32_t stall_timeout_ms;
};

/** Fill \p opts with the defaults. */
void keel_nbd_options_init(struct keel_nbd_options *opts);

/**
 * Set every limit at once (take keel_nbd_get_options() first to change one). New values
 * apply to new requests and connections, and to deadlines as they are next checked;
 * open connections over a lowered connection limit stay. Main keel thread.
 * \return 0, or -EINVAL with a one-line explanation naming the field and its range in
 * \p err (nothing changes then).
 */
int keel_nbd_set_options(const struct keel_nbd_options *opts, char *err, size_t err_len);

/** The limits in force. Any thread. */
void keel_nbd_get_options(struct keel_nbd_options *opts);

struct keel_nbd_stats {
	uint32_t connections;         /**< open socket connections (all exports) */
	uint64_t connections_refused; /**< refused because a connection limit was reached */
	uint64_t buffer_bytes;        /**< payload bytes requests hold now */
	uint64_t buffer_waits;        /**< times a connection waited for the buffer budget */
	uint64_t handshake_timeouts;  /**< connections closed for choosing no export in time */
	uint64_t stall_timeouts;      /**< connections closed for a stalled client */
	uint64_t cached_buffer_bytes; /**< idle buffers kept by the NBD threads' caches */
	uint64_t tls_handshakes;      /**< TLS handshakes completed (STARTTLS) */
	uint64_t tls_failures;        /**< TLS handshakes that failed (wrong key, bad client) */
};

/** Counters since start. Main keel thread (the counters are read without a lock). */
void keel_nbd_get_stats(struct keel_nbd_stats *stats);

/* ------------------------------------------------------------------------------ */
/* Kernel devices: a bdev as /dev/nbdN (nbd/nbd_disk.c)                            */
/* ------------------------------------------------------------------------------ */

/**
 * A bdev served to the local kernel's nbd driver as /dev/nbdN, configured over generic
 * netlink (include/keel/nbd_kernel.h). keel makes one socketpair per NBD thread (one per
 * reactor) when the bdev is multi-conn safe, else one; serves its ends with the
 * transmission phase of nbd_conn on those threads, then hands the other ends to the
 * kernel, so the kernel's hardware queues map onto the reactors. Same threading as the
 * exports: main keel thread only, callbacks there too.
 */
struct keel_nbd_disk;

/** Dead-connection timeout used when the caller gives none (seconds). */
#define KEEL_NBD_DISK_DEFAULT_DEAD_CONN_TIMEOUT_S 60u
/** Largest io_timeout_s and dead_conn_timeout_s accepted (7 days, in seconds). */
#define KEEL_NBD_DISK_MAX_TIMEOUT_S 604800u

struct keel_nbd_disk_opts {
	/** Bdev to serve (required). */
	const char *bdev_name;
	/** N of /dev/nbdN, or -1 (default) to let the kernel pick a free device. */
	int32_t index;
	/**
	 * Per-request timeout in seconds (NBD_ATTR_TIMEOUT); 0 (default) = kernel default.
	 * This and dead_conn_timeout_s are at most KEEL_NBD_DISK_MAX_TIMEOUT_S.
	 */
	uint32_t io_timeout_s;
	/**
	 * Seconds the kernel holds I/O once every socket is dead, waiting for a restarted keeld
	 * to hand it new sockets (default KEEL_NBD_DISK_DEFAULT_DEAD_CONN_TIMEOUT_S).
	 */
	uint32_t dead_conn_timeout_s;
	/** Open the bdev read-only and tell the kernel (NBD_FLAG_READ_ONLY). */
	bool read_only;
};

/** Fill \p opts with the defaults above. */
void keel_nbd_disk_opts_init(struct keel_nbd_disk_opts *opts);

/**
 * Result of keel_nbd_disk_start(): \p status 0 with \p index = N of /dev/nbdN, or a
 * negative errno with \p err, a one-line explanation for a person (never NULL):
 * -ENODEV (nbd module not loaded), -EPERM (needs root/CAP_SYS_ADMIN), -EBUSY (device in
 * use), -EINVAL (refused by the kernel, e.g. no such index), -ENODEV/-ESHUTDOWN (bdev
 * removed or keeld stopping meanwhile).
 */
typedef void (*keel_nbd_disk_start_cb)(void *cb_arg, int status, uint32_t index, const char *err);

/**
 * Serve a bdev as /dev/nbdN. The connections are being served before CONNECT is sent on
 * the blocking-work pool: the kernel reads (udev, partition scan) inside CONNECT.
 * \return 0 (cb_fn runs later), -EINVAL (bad options), -ENODEV (no such bdev), -EBUSY
 * (this keeld already serves that index), -EPERM (bdev claimed and not read_only),
 * -ENOMEM, -ESHUTDOWN.
 */
int keel_nbd_disk_start(const struct keel_nbd_disk_opts *opts, keel_nbd_disk_start_cb cb_fn,
			void *cb_arg);

/**
 * Stop /dev/nbd\p index: DISCONNECT on the blocking pool (the kernel fails requests still
 * in flight: unmount first), then wait until keel's requests in flight on the bdev
 * finished and every socket closed, close the bdev, then \p cb_fn(cb_arg, 0). A device
 * waiting for its bdev after a restart is disconnected too.
 * \return 0 (cb_fn runs later) or -ENOENT (this keeld does not serve that device, or it
 * is already stopping).
 */
int keel_nbd_disk_stop(uint32_t index, keel_nbd_done_cb cb_fn, void *cb_arg);

/**
 * Called when the records a restarted keeld needs (keel_nbd_disk_snapshot()) changed: a
 * device started or reattached, or one that was recorded is gone. Runs on the main keel
 * thread right after the change; it may take a snapshot but must not start or stop a
 * device. The library writes no file: the caller keeps the records (keeld saves them
 * in its state directory) and hands them to keel_nbd_disk_restore() after a restart.
 */
typedef void (*keel_nbd_disk_listener_fn)(void *ctx);

/** Set the one listener (NULL: none). Main keel thread. */
void keel_nbd_disk_set_listener(keel_nbd_disk_listener_fn fn, void *ctx);

/**
 * The devices a restarted keeld should reattach (running ones and those still waiting
 * for their bdev), as a versioned JSON document for keel_nbd_disk_restore(). Main keel
 * thread. \return a new reference, or NULL when out of memory.
 */
json_t *keel_nbd_disk_snapshot(void);

/**
 * Re-attach each device of \p doc (a keel_nbd_disk_snapshot() of an earlier keeld; NULL:
 * none) that the kernel still has configured (STATUS) with new sockets (RECONFIGURE,
 * checked by the kernel against the backend identifier given at CONNECT), so a mounted
 * filesystem survives a daemon restart within the dead-connection timeout. A device
 * whose bdev does not exist yet waits for it (checked every second). A document of
 * another format is logged and ignored; malformed entries (including timeouts that are
 * not integers in 0..KEEL_NBD_DISK_MAX_TIMEOUT_S) are skipped with a warning. Also subscribes
 * to LINK_DEAD notifications, which are logged. \p doc is read inside the call only.
 * \p cb_fn runs once, later, when the first attempts finished.
 */
void keel_nbd_disk_restore(const json_t *doc, keel_nbd_done_cb cb_fn, void *cb_arg);

/** Iterate devices (every state). */
struct keel_nbd_disk *keel_nbd_disk_first(void);
struct keel_nbd_disk *keel_nbd_disk_next(struct keel_nbd_disk *prev);
/** \return N of /dev/nbdN, or -1 while the kernel has not picked one yet. */
int32_t keel_nbd_disk_get_index(const struct keel_nbd_disk *disk);
const char *keel_nbd_disk_get_bdev_name(const struct keel_nbd_disk *disk);
/** "starting", "running", "waiting-for-bdev", "reattaching" or "stopping". */
const char *keel_nbd_disk_get_state(const struct keel_nbd_disk *disk);
/** Open socket connections to the kernel. */
uint32_t keel_nbd_disk_get_connection_count(const struct keel_nbd_disk *disk);
bool keel_nbd_disk_is_read_only(const struct keel_nbd_disk *disk);
/** The string given to the kernel as NBD_ATTR_BACKEND_IDENTIFIER. */
const char *keel_nbd_disk_get_backend_id(const struct keel_nbd_disk *disk);

#ifdef __cplusplus
}
#endif

#endif /* KEEL_NBD_H */
