/**
 * \file
 * The uring bdev module: a regular file or block device driven through io_uring
 * (liburing). Same contract as the aio module (include/keel/bdev_module.h), with SPDK's
 * RPC names bdev_uring_create / bdev_uring_delete.
 *
 * Threading: create and delete on any keel thread; every callback runs on that thread.
 * Every uring bdev channel of a keel thread shares that thread's one ring.
 * Errors: every int return is 0 or a negative errno.
 */
#ifndef KEEL_BDEV_URING_H
#define KEEL_BDEV_URING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/bdev_module.h"

#ifdef __cplusplus
extern "C" {
#endif

/** The module; register it with keel_bdev_module_register() before subsystem init. */
extern struct keel_bdev_module keel_bdev_uring_module;

/**
 * uring bdev \p name over \p filename (a regular file or a block device).
 * \p block_size 0 = the device's logical block size (BLKSSZGET) or 512 for regular
 * files. O_DIRECT where the filesystem allows it, buffered otherwise (the log says
 * which); either way no request blocks the reactor.
 * The open runs on the blocking-work pool; \p cb_fn(cb_arg, status, bdev) runs on this
 * thread. status: 0, -ENOTSUP (io_uring is unavailable here: the log line, and
 * keel_bdev_uring_available(), say why; use an aio bdev), -ENOENT, -EACCES, -EISDIR,
 * -EINVAL (size not a multiple of the block size, bad block size, neither a file nor
 * a block device), -EEXIST, other -errno of open/ioctl.
 * \return 0 (cb runs later), or -EINVAL (bad arguments, not on a keel thread),
 * -EEXIST, -ENODEV (module not initialised), -ENOMEM (cb never runs).
 */
int keel_bdev_uring_create(const char *name, const char *filename, uint32_t block_size,
			   keel_bdev_create_cb cb_fn, void *cb_arg);

/**
 * Delete uring bdev \p name: descriptors get KEEL_BDEV_EVENT_REMOVE, requests in flight
 * complete, then the file is closed and \p cb_fn(cb_arg, 0) runs on this thread.
 * \return 0 (cb runs) or -ENODEV (no uring bdev of that name).
 */
int keel_bdev_uring_delete(const char *name, keel_bdev_done_cb cb_fn, void *cb_arg);

/**
 * Whether this kernel and process may use io_uring with every opcode the module needs
 * (a kernel without io_uring, sysctl kernel.io_uring_disabled, or a seccomp filter
 * refuse it). On false, \p why (when \p len > 0) holds one line saying why, fit for a
 * log or an RPC error; on true it is "". The daemon uses it to fall back to aio.
 * The first call decides for the life of the process (a changed sysctl takes a
 * restart): it sets up and closes a small ring, which module start does on the
 * blocking-work pool, so later calls, on a reactor too, answer without a syscall.
 * Any thread.
 */
bool keel_bdev_uring_available(char *why, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* KEEL_BDEV_URING_H */
