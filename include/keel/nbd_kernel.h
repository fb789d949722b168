/**
 * \file
 * keel kernel NBD control: configure /dev/nbdN through the kernel's "nbd" generic netlink
 * family (drivers/block/nbd.c, Linux >= 4.12).
 *
 * This module only talks to the kernel's control plane. It hands the kernel one connected
 * stream socket per queue (unix socketpair or TCP); the other end of each socket is served
 * by an NBD transmission loop (nbd/), which must already be able to answer requests when
 * keel_nbd_kernel_connect() is called: the device goes live (capacity, uevent, partition
 * scan) inside CONNECT, before the call returns.
 *
 * Threading: every function except keel_nbd_kernel_monitor_fd() and
 * keel_nbd_kernel_monitor_dispatch() BLOCKS in netlink system calls (the kernel runs the
 * command synchronously inside sendmsg; DISCONNECT flushes the device's workqueue and
 * RECONFIGURE with a new size freezes the queue until in-flight I/O completes). Never call
 * them on a reactor, and never on a thread that serves the device's sockets: run them
 * through keel_spawn_blocking(). Each call opens and closes its own netlink socket, so calls
 * from different OS threads may run concurrently.
 *
 * Errors: every int return is 0 or a negative errno. When \p err is not NULL, a failure also
 * writes a one-line explanation (NUL-terminated, truncated to \p err_len) meant for logs and
 * RPC replies, e.g. "nbd netlink family not found: the nbd kernel module is not loaded
 * (modprobe nbd); socket exports work without it".
 *
 *  - -ENODEV: the nbd module is not loaded (family missing), or no such /dev/nbdN (STATUS).
 *  - -EPERM:  CONNECT, DISCONNECT and RECONFIGURE need root or CAP_SYS_ADMIN.
 *  - -EBUSY:  CONNECT to an index that already has a configuration.
 *  - -EINVAL: invalid options (checked before anything is sent), or refused by the kernel.
 */
#ifndef KEEL_NBD_KERNEL_H
#define KEEL_NBD_KERNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Block size sent when the caller leaves it 0 (the kernel's own default is 1024). */
#define KEEL_NBD_KERNEL_DEFAULT_BLOCK_SIZE 4096u

/** Most sockets (queues) one device may get; the kernel has no fixed limit. */
#define KEEL_NBD_KERNEL_MAX_SOCKETS 64u

/** A good size for the \p err buffers of this API. */
#define KEEL_NBD_KERNEL_ERRLEN 256

/** Kernel client flags (NBD_ATTR_CLIENT_FLAGS); values are the kernel's. */
#define KEEL_NBD_KERNEL_CFLAG_DESTROY_ON_DISCONNECT (1ull << 0)
#define KEEL_NBD_KERNEL_CFLAG_DISCONNECT_ON_CLOSE (1ull << 1)

/** Options of keel_nbd_kernel_connect(). Initialise with keel_nbd_kernel_connect_opts_init(). */
struct keel_nbd_kernel_connect_opts {
	/** Device number N of /dev/nbdN, or -1 (default) to let the kernel pick a free one. */
	int32_t index;
	/** Export size in bytes (required, > 0; the kernel uses size >> 9 sectors). */
	uint64_t size_bytes;
	/**
	 * Logical = physical block size: a power of two, 512 .. 65536 (the kernel may refuse
	 * sizes above the page size). 0 means KEEL_NBD_KERNEL_DEFAULT_BLOCK_SIZE. Always sent.
	 */
	uint32_t block_size;
	/**
	 * NBD transmission flags the kernel should assume (NBD_FLAG_* of the protocol:
	 * READ_ONLY, SEND_FLUSH, SEND_FUA, SEND_TRIM, SEND_WRITE_ZEROES, CAN_MULTI_CONN, ...).
	 * More than one socket requires CAN_MULTI_CONN (bit 8). Without SEND_FLUSH the kernel
	 * treats the device as write-through and never sends FLUSH or FUA.
	 */
	uint64_t server_flags;
	/** KEEL_NBD_KERNEL_CFLAG_* (default 0). */
	uint64_t client_flags;
	/**
	 * Per-request timeout in seconds (NBD_ATTR_TIMEOUT); 0 = not sent (kernel default: with
	 * one socket it waits forever, with more a 30 s stall marks the socket dead).
	 */
	uint64_t timeout_s;
	/**
	 * Seconds that I/O waits for keel_nbd_kernel_reconfigure() once every socket is dead
	 * (NBD_ATTR_DEAD_CONN_TIMEOUT); 0 = not sent (I/O fails at once).
	 */
	uint64_t dead_conn_timeout_s;
	/** Connected stream sockets, one per hardware queue (1 .. KEEL_NBD_KERNEL_MAX_SOCKETS). */
	const int *sock_fds;
	uint32_t num_sock_fds;
	/**
	 * Optional string shown in /sys/block/nbdN/backend (Linux >= 5.14; older kernels ignore
	 * it). Once set, every RECONFIGURE must carry the same string. NULL = not sent.
	 */
	const char *backend_id;
};

/** Fill \p opts with the defaults (index -1, everything else 0/NULL). */
void keel_nbd_kernel_connect_opts_init(struct keel_nbd_kernel_connect_opts *opts);

/**
 * Bind sockets to a device and start it (NBD_CMD_CONNECT). Blocking; see the file comment.
 *
 * The kernel takes its own reference on every socket; the caller may close its copies of
 * \p opts->sock_fds once this returns (the serving ends stay with the NBD server). The
 * device stays configured after the calling process exits, until
 * keel_nbd_kernel_disconnect().
 *
 * \param opts  options; sock_fds and size_bytes are required.
 * \param index receives N of /dev/nbdN (the kernel's choice when opts->index is -1).
 * \return 0; -EINVAL (bad options, or refused by the kernel, e.g. more than one socket
 *         without CAN_MULTI_CONN, a socket type without shutdown), -EBUSY (index in use),
 *         -ENODEV (nbd module not loaded), -EPERM (needs root or CAP_SYS_ADMIN), -ENOMEM,
 *         or another negative errno from the kernel.
 */
int keel_nbd_kernel_connect(const struct keel_nbd_kernel_connect_opts *opts, uint32_t *index,
			    char *err, size_t err_len);

/**
 * Tear a device down (NBD_CMD_DISCONNECT): the kernel sends NBD_CMD_DISC on every socket,
 * shuts them down and fails requests still in flight with EIO without waiting for their
 * replies, so unmount/sync first. Returns 0 for an existing but unconfigured device.
 * Blocking.
 * \return 0, -EINVAL (no such device), -ENODEV, -EPERM, or another negative errno.
 */
int keel_nbd_kernel_disconnect(uint32_t index, char *err, size_t err_len);

/** Options of keel_nbd_kernel_reconfigure(). Initialise with keel_nbd_kernel_reconfigure_opts_init(). */
struct keel_nbd_kernel_reconfigure_opts {
	/**
	 * New sockets; each replaces one socket the kernel has marked dead. Sockets beyond the
	 * number of dead slots are dropped by the kernel without an error. May be empty.
	 */
	const int *sock_fds;
	uint32_t num_sock_fds;
	/**
	 * New size; 0 = unchanged (not sent). A changed size freezes the queue until in-flight
	 * requests complete: never resize from a thread that serves those requests.
	 */
	uint64_t size_bytes;
	/** New block size; 0 = unchanged (not sent). */
	uint32_t block_size;
	/** New per-request timeout in seconds; -1 (default) = unchanged. */
	int64_t timeout_s;
	/** New dead-connection timeout in seconds; -1 (default) = unchanged. */
	int64_t dead_conn_timeout_s;
	/** New client flags (set and cleared as given); -1 (default) = unchanged. */
	int64_t client_flags;
	/** Must equal the CONNECT's backend_id when one was given; NULL = not sent. */
	const char *backend_id;
};

/** Fill \p opts with the defaults (nothing changes). */
void keel_nbd_kernel_reconfigure_opts_init(struct keel_nbd_kernel_reconfigure_opts *opts);

/**
 * Change a running device (NBD_CMD_RECONFIGURE), typically to hand it new sockets after a
 * LINK_DEAD notification. Blocking.
 * \return 0, -EINVAL (device not configured by netlink, backend_id mismatch, bad options),
 *         -ENODEV, -EPERM, or another negative errno.
 */
int keel_nbd_kernel_reconfigure(uint32_t index, const struct keel_nbd_kernel_reconfigure_opts *opts,
				char *err, size_t err_len);

/**
 * Ask whether /dev/nbd\p index has a configuration (NBD_CMD_STATUS; needs no privilege).
 * "Connected" is the kernel's notion: the device has a config, which a mere open() of an
 * unconfigured device also creates for a moment; it does not mean the sockets are alive.
 * Blocking.
 * \return 0 with *connected set, -ENODEV (no such device, or nbd module not loaded; the
 *         message tells which), or another negative errno.
 */
int keel_nbd_kernel_status(uint32_t index, bool *connected, char *err, size_t err_len);

/** Called once per device by keel_nbd_kernel_status_all(), in the kernel's order. */
typedef void (*keel_nbd_kernel_status_fn)(uint32_t index, bool connected, void *ctx);

/**
 * List every nbd device the kernel has (NBD_CMD_STATUS without an index). Blocking.
 * \return the number of devices reported (>= 0), or a negative errno.
 */
int keel_nbd_kernel_status_all(keel_nbd_kernel_status_fn fn, void *ctx, char *err, size_t err_len);

/**
 * Check that the nbd generic netlink family exists (the module is loaded). Blocking.
 * \return 0, or -ENODEV with the explanation in \p err.
 */
int keel_nbd_kernel_probe(char *err, size_t err_len);

/* ------------------------------------------------------------------------------------ */
/* LINK_DEAD notifications                                                              */
/* ------------------------------------------------------------------------------------ */

/**
 * A subscription to the "nbd_mc_group" multicast group, on which the kernel announces
 * NBD_CMD_LINK_DEAD (a socket of /dev/nbdN failed: EOF, error, or request timeout).
 */
struct keel_nbd_kernel_monitor;

/** Called for each LINK_DEAD message with the device's index. */
typedef void (*keel_nbd_kernel_link_dead_fn)(uint32_t index, void *ctx);

/**
 * Open a non-blocking netlink socket subscribed to the nbd multicast group. Blocking (it
 * resolves the family); the returned monitor is then used without blocking.
 * \return 0 with *monitor set, -ENODEV (nbd module not loaded), -ENOMEM, or a negative errno.
 */
int keel_nbd_kernel_monitor_open(struct keel_nbd_kernel_monitor **monitor, char *err,
				 size_t err_len);

/**
 * The monitor's file descriptor: it polls readable when notifications are pending. Add it
 * to a reactor's fd group (EPOLLIN) and call keel_nbd_kernel_monitor_dispatch() then.
 * Owned by the monitor.
 */
int keel_nbd_kernel_monitor_fd(const struct keel_nbd_kernel_monitor *monitor);

/**
 * Read every pending notification without blocking and call \p fn for each LINK_DEAD.
 * Safe on a reactor. Use the monitor from one thread at a time.
 * \return the number of LINK_DEAD messages handled (0 when none was pending); -ENOBUFS when
 *         the kernel dropped notifications because the socket buffer was full (the caller
 *         should resynchronise with keel_nbd_kernel_status(); the monitor stays usable); or
 *         another negative errno.
 */
int keel_nbd_kernel_monitor_dispatch(struct keel_nbd_kernel_monitor *monitor,
				     keel_nbd_kernel_link_dead_fn fn, void *ctx);

/** Close the monitor (NULL is allowed). */
void keel_nbd_kernel_monitor_close(struct keel_nbd_kernel_monitor *monitor);

#ifdef __cplusplus
}
#endif

#endif /* KEEL_NBD_KERNEL_H */
