/*
 * aio bdev: knobs shared between bdev_aio.c and its unit test. Not a public API.
 */
#ifndef KEEL_BDEV_AIO_INTERNAL_H
#define KEEL_BDEV_AIO_INTERNAL_H

#include <libaio.h>
#include <stdbool.h>
#include <stdint.h>

struct keel_bdev;

/**
 * Default cap on the iocbs one (file, thread) channel keeps in the kernel: more wait
 * in the channel, so one busy bdev cannot take a whole thread's context.
 */
#define BDEV_AIO_DEFAULT_QUEUE_DEPTH 256

/**
 * Default depth of the io_context that every aio bdev on a keel thread shares: what
 * each such thread takes of the system-wide fs.aio-max-nr.
 */
#define BDEV_AIO_DEFAULT_CONTEXT_DEPTH 1024

/**
 * Per-channel cap of bdevs created from now on (1..4096). Tests shrink it to force
 * the "queue full, retry on the next poll" path. \return 0 or -EINVAL.
 */
int bdev_aio_set_queue_depth(uint32_t depth);

/**
 * Depth of the thread contexts created from now on (1..4096); a context is created
 * with the first aio channel of a thread. \return 0 or -EINVAL.
 */
int bdev_aio_set_context_depth(uint32_t depth);

/**
 * Test seam: the call that sets up every thread context, libaio's io_setup unless a
 * test points it at a function that answers, say, -EAGAIN: the "fs.aio-max-nr is
 * exhausted" path without exhausting it. NULL puts io_setup back. Read when a context
 * is created; any thread. Not a production switch: nothing else changes behaviour.
 */
typedef int (*bdev_aio_io_setup_fn)(int nr_events, io_context_t *ctx);
void bdev_aio_set_io_setup(bdev_aio_io_setup_fn fn);

/**
 * Test seam: the call that hands every batch of iocbs to the kernel, libaio's io_submit
 * unless a test points it at a function that answers -EAGAIN or takes only part of a
 * batch, as the kernel does when its own queue is full: the "keep the rest queued"
 * path on demand. NULL puts io_submit back. Called on the threads doing aio, so a
 * replacement must be thread-safe; set it while no aio channel is open.
 */
typedef int (*bdev_aio_io_submit_fn)(io_context_t ctx, long nr, struct iocb **iocbs);
void bdev_aio_set_io_submit(bdev_aio_io_submit_fn fn);

/**
 * Pretend the kernel refused the aio fdsync command (\p native false) or RWF_DSYNC
 * (\p fua_native false) on \p bdev, so the fdatasync-on-the-pool and write-then-sync
 * fallbacks run. \return 0 or -EINVAL when \p bdev is not an aio bdev.
 */
int bdev_aio_set_native_sync(struct keel_bdev *bdev, bool fdsync_native, bool fua_native);

/**
 * Make creates from now on behave as if the filesystem refused O_DIRECT with EINVAL
 * (tmpfs did before Linux 6.6; ramfs and some FUSE filesystems still do), so the
 * buffered fallback can be tested on any machine.
 */
void bdev_aio_set_refuse_direct(bool refuse);

/** Counters of one aio bdev, summed over every channel that existed. */
struct bdev_aio_counters {
	uint64_t io_submit_calls; /**< io_submit syscalls that carried iocbs of this bdev */
	uint64_t iocbs_submitted;
	uint64_t submit_eagain;   /**< io_submit answered -EAGAIN or took only part */
	uint64_t ring_reaps;      /**< events taken from the user-mapped ring */
	uint64_t getevents_reaps; /**< events taken with io_getevents */
	uint64_t pool_ops;        /**< requests run on the blocking-work pool */
};

/** Read the counters (relaxed atomics; any thread). \return 0 or -EINVAL. */
int bdev_aio_get_counters(struct keel_bdev *bdev, struct bdev_aio_counters *out);

/** The module as a whole (relaxed atomics; any thread). */
struct bdev_aio_module_stats {
	uint32_t contexts;        /**< live io_contexts: one per keel thread doing aio */
	uint64_t context_events;  /**< their depths summed: what keel takes of fs.aio-max-nr */
	uint32_t queues;          /**< live (bdev, thread) channels */
	uint64_t context_full;    /**< io_submit batches the context's size cut short */
	uint64_t io_submit_calls; /**< io_submit syscalls, all bdevs together */
};

void bdev_aio_get_module_stats(struct bdev_aio_module_stats *out);

/** Whether \p bdev was opened with O_DIRECT. */
bool bdev_aio_is_direct(struct keel_bdev *bdev);

#endif /* KEEL_BDEV_AIO_INTERNAL_H */
