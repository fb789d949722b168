/*
 * keel block devices: the consumer API.
 *
 * A bdev is a named block device (AIO file, RAM, null, error wrapper, nexus ...).
 * Consumers open a descriptor, get a per-thread I/O channel and submit I/O.
 *
 * Threading
 * ---------
 * Registration, lookup, open and close happen on keel threads. A descriptor belongs
 * to the thread that opened it: its event callback runs there and it must be closed
 * there. I/O is submitted on any keel thread through that thread's channel
 * (keel_bdev_get_io_channel on that thread); completions run on the submitting
 * thread, never inside the submit call.
 *
 * Errors
 * ------
 * Submit functions return 0 (cb_fn runs exactly once, later) or a negative errno
 * (cb_fn never runs):
 *   -EINVAL  out-of-range or misaligned offset/length, zero length, bad iovec;
 *   -EBADF   descriptor opened read-only and the request writes;
 *   -ENOTSUP the bdev does not support this I/O type (and it cannot be emulated);
 *   -ENODEV  the bdev is being removed.
 * A pool that runs dry never fails a submit: the request waits inside the channel
 * and is submitted when a bdev_io frees up.
 * The completion's \p status is 0 or a negative errno (-EIO, -ENOSPC, ...).
 */
#ifndef KEEL_BDEV_H
#define KEEL_BDEV_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "keel/reactor.h"
#include "keel/uuid.h"

#ifdef __cplusplus
extern "C" {
#endif

struct keel_bdev;
struct keel_bdev_desc;

#define KEEL_BDEV_NAME_MAX 63

enum keel_bdev_io_type {
	KEEL_BDEV_IO_READ = 0,
	KEEL_BDEV_IO_WRITE,
	KEEL_BDEV_IO_FLUSH,
	KEEL_BDEV_IO_UNMAP,
	KEEL_BDEV_IO_WRITE_ZEROES,
	KEEL_BDEV_IO_RESET,
	KEEL_BDEV_IO_GET_ALLOCATION, /**< keel_bdev_get_allocation: which ranges hold data */
	KEEL_BDEV_IO_NUM_TYPES,
};

/** Static name of an I/O type ("read", "write", ...). */
const char *keel_bdev_io_type_name(enum keel_bdev_io_type type);

/** Per-request flags. */
#define KEEL_BDEV_IO_FLAG_FUA (1u << 0) /**< write reaches stable storage before completion */
/** write_zeroes: the range may be deallocated (a hole in a file) as long as it reads zeroes */
#define KEEL_BDEV_IO_FLAG_UNMAP (1u << 1)
/** write_zeroes: fail with -ENOTSUP instead of emulating with writes of zero buffers */
#define KEEL_BDEV_IO_FLAG_NO_EMULATE (1u << 2)

enum keel_bdev_event_type {
	/** The bdev is going away: close the descriptor (on its thread) soon. */
	KEEL_BDEV_EVENT_REMOVE = 0,
	/** The block count changed. */
	KEEL_BDEV_EVENT_RESIZE,
};

typedef void (*keel_bdev_event_cb)(enum keel_bdev_event_type type, struct keel_bdev *bdev,
				   void *event_ctx);

/**
 * I/O completion. \p status is 0 or a negative errno. Runs on the submitting thread.
 * Buffers passed to the request may be reused once this runs.
 */
typedef void (*keel_bdev_io_cb)(void *cb_arg, int status);

/* ------------------------------------------------------------------------------ */
/* Lookup and properties                                                           */
/* ------------------------------------------------------------------------------ */

/** Find by name. \return NULL if none. Keel threads only; do not keep the pointer
 * beyond the current message without opening a descriptor. */
struct keel_bdev *keel_bdev_get_by_name(const char *name);
/** Find by UUID string (any case). \return NULL if none. */
struct keel_bdev *keel_bdev_get_by_uuid(const char *uuid);

/** Iterate registered bdevs in registration order: first(NULL) then next(bdev). */
struct keel_bdev *keel_bdev_first(void);
struct keel_bdev *keel_bdev_next(struct keel_bdev *prev);

const char *keel_bdev_get_name(const struct keel_bdev *bdev);
/** The module's name ("aio", "malloc", "null", "error", "nexus"). */
const char *keel_bdev_get_module_name(const struct keel_bdev *bdev);
/** Canonical lower-case UUID string. */
const char *keel_bdev_get_uuid_str(const struct keel_bdev *bdev);
const uint8_t *keel_bdev_get_uuid(const struct keel_bdev *bdev); /* 16 bytes */
uint32_t keel_bdev_get_block_size(const struct keel_bdev *bdev);
uint64_t keel_bdev_get_num_blocks(const struct keel_bdev *bdev);
/** Required buffer alignment in bytes (1 = none). */
uint32_t keel_bdev_get_buf_align(const struct keel_bdev *bdev);
/** Optimal I/O boundary in blocks (0 = none); I/O crossing it is split. */
uint32_t keel_bdev_get_optimal_io_boundary(const struct keel_bdev *bdev);
/** Largest single request the module takes, in blocks (0 = unlimited); larger ones are split. */
uint32_t keel_bdev_get_max_transfer_blocks(const struct keel_bdev *bdev);
/** Whether this bdev accepts \p type (write_zeroes is always true: emulated if needed). */
bool keel_bdev_io_type_supported(struct keel_bdev *bdev, enum keel_bdev_io_type type);
/** Whether the module has a volatile write cache (flush and FUA mean something). */
bool keel_bdev_has_write_cache(const struct keel_bdev *bdev);
/** Whether the module is safe for several connections writing at once (multi-conn). */
bool keel_bdev_is_multi_conn_safe(const struct keel_bdev *bdev);

/* ------------------------------------------------------------------------------ */
/* Descriptors and channels                                                        */
/* ------------------------------------------------------------------------------ */

/**
 * Open the bdev named \p name. \p event_cb (required) runs on this thread on hot
 * remove or resize. \return 0 and *desc, -ENODEV (no such bdev or being removed),
 * -EPERM (\p write and the bdev is claimed by a module; the log names the owner),
 * -ENOMEM, -EINVAL.
 */
int keel_bdev_open_ext(const char *name, bool write, keel_bdev_event_cb event_cb, void *event_ctx,
		       struct keel_bdev_desc **desc);

/** Close on the thread that opened it. Channels from it must already be put. */
void keel_bdev_close(struct keel_bdev_desc *desc);

struct keel_bdev *keel_bdev_desc_get_bdev(struct keel_bdev_desc *desc);

/**
 * This thread's I/O channel for the descriptor's bdev. Put with keel_put_io_channel.
 * \return NULL on failure (not a keel thread, out of memory, bdev going away).
 */
struct keel_io_channel *keel_bdev_get_io_channel(struct keel_bdev_desc *desc);

/* ------------------------------------------------------------------------------ */
/* I/O (offsets and lengths in bytes, multiples of the block size)                 */
/* ------------------------------------------------------------------------------ */

int keel_bdev_read(struct keel_bdev_desc *desc, struct keel_io_channel *ch, void *buf,
		   uint64_t offset, uint64_t nbytes, keel_bdev_io_cb cb_fn, void *cb_arg);
int keel_bdev_readv(struct keel_bdev_desc *desc, struct keel_io_channel *ch, struct iovec *iov,
		    int iovcnt, uint64_t offset, uint64_t nbytes, keel_bdev_io_cb cb_fn,
		    void *cb_arg);
int keel_bdev_write(struct keel_bdev_desc *desc, struct keel_io_channel *ch, void *buf,
		    uint64_t offset, uint64_t nbytes, keel_bdev_io_cb cb_fn, void *cb_arg);
/** \p flags: KEEL_BDEV_IO_FLAG_FUA. */
int keel_bdev_writev(struct keel_bdev_desc *desc, struct keel_io_channel *ch, struct iovec *iov,
		     int iovcnt, uint64_t offset, uint64_t nbytes, uint32_t flags,
		     keel_bdev_io_cb cb_fn, void *cb_arg);
int keel_bdev_flush(struct keel_bdev_desc *desc, struct keel_io_channel *ch, uint64_t offset,
		    uint64_t nbytes, keel_bdev_io_cb cb_fn, void *cb_arg);
int keel_bdev_unmap(struct keel_bdev_desc *desc, struct keel_io_channel *ch, uint64_t offset,
		    uint64_t nbytes, keel_bdev_io_cb cb_fn, void *cb_arg);
int keel_bdev_write_zeroes(struct keel_bdev_desc *desc, struct keel_io_channel *ch, uint64_t offset,
			   uint64_t nbytes, keel_bdev_io_cb cb_fn, void *cb_arg);
/** One run of blocks that share an allocation state (keel_bdev_get_allocation). */
struct keel_bdev_extent {
	uint64_t length; /**< bytes, a multiple of the block size; 0 ends the list */
	uint32_t flags;  /**< KEEL_BDEV_EXTENT_* (0: allocated data) */
	uint32_t reserved;
};
#define KEEL_BDEV_EXTENT_HOLE (1u << 0) /**< not allocated in the backing store */
#define KEEL_BDEV_EXTENT_ZERO (1u << 1) /**< reads back as zeroes */

/**
 * Ask which parts of [\p offset, \p offset + \p nbytes) are allocated. On status 0,
 * \p extents[0..n) (1 <= n <= \p max_extents) describe consecutive runs starting at
 * \p offset, together at most \p nbytes (the module may stop early: ask again from where
 * the list ends); when n < \p max_extents, extents[n].length is 0. Allowed on read-only
 * descriptors; never split. The answer is a snapshot: writes racing with it may or
 * may not show. \p extents must stay valid until cb_fn runs.
 * Errors as for the other submit functions; -ENOTSUP when the bdev cannot tell
 * (keel_bdev_io_type_supported(KEEL_BDEV_IO_GET_ALLOCATION) is false): treat the range
 * as data. A module may also complete with -ENOTSUP (a replica that cannot tell).
 */
int keel_bdev_get_allocation(struct keel_bdev_desc *desc, struct keel_io_channel *ch,
			     uint64_t offset, uint64_t nbytes, struct keel_bdev_extent *extents,
			     uint32_t max_extents, keel_bdev_io_cb cb_fn, void *cb_arg);

/**
 * write_zeroes with \p flags: KEEL_BDEV_IO_FLAG_UNMAP lets a file-backed module punch
 * a hole instead of allocating zeroed blocks; KEEL_BDEV_IO_FLAG_NO_EMULATE completes
 * with -ENOTSUP where the module cannot zero natively (what a "fast zero" needs).
 * Errors as keel_bdev_write_zeroes, and -EINVAL for other flags.
 */
int keel_bdev_write_zeroes_ext(struct keel_bdev_desc *desc, struct keel_io_channel *ch,
			       uint64_t offset, uint64_t nbytes, uint32_t flags,
			       keel_bdev_io_cb cb_fn, void *cb_arg);

/** Abort nothing, but wait until every request submitted before it has completed
 * on every channel, then let the module reset. */
int keel_bdev_reset(struct keel_bdev_desc *desc, struct keel_io_channel *ch, keel_bdev_io_cb cb_fn,
		    void *cb_arg);

/* ------------------------------------------------------------------------------ */
/* Statistics                                                                      */
/* ------------------------------------------------------------------------------ */

#define KEEL_BDEV_LAT_BUCKETS 32 /**< bucket i counts latencies in [2^i, 2^(i+1)) us; 0 is < 2 us */

struct keel_bdev_io_stats {
	uint64_t ops[KEEL_BDEV_IO_NUM_TYPES];
	uint64_t bytes[KEEL_BDEV_IO_NUM_TYPES];
	uint64_t errors[KEEL_BDEV_IO_NUM_TYPES];
	uint64_t lat_sum_ns[KEEL_BDEV_IO_NUM_TYPES];
	uint64_t lat_max_ns[KEEL_BDEV_IO_NUM_TYPES];
	/** Latency histogram per I/O type (log2 of microseconds, see KEEL_BDEV_LAT_BUCKETS):
	 * lat_hist[type] sums to ops[type]. */
	uint64_t lat_hist[KEEL_BDEV_IO_NUM_TYPES][KEEL_BDEV_LAT_BUCKETS];
};

typedef void (*keel_bdev_stats_cb)(struct keel_bdev *bdev, const struct keel_bdev_io_stats *stats,
				   void *cb_arg, int status);

/**
 * Sum the statistics of every channel of \p bdev (channels that closed are included)
 * and call \p cb_fn on this thread. \return 0 or -ENOMEM. Keel threads only.
 */
int keel_bdev_get_io_stats(struct keel_bdev *bdev, keel_bdev_stats_cb cb_fn, void *cb_arg);

#ifdef __cplusplus
}
#endif

#endif /* KEEL_BDEV_H */
