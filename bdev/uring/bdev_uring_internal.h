/*
 * uring bdev: knobs and counters shared between the module and its unit test, and the
 * test seam for a kernel that refuses io_uring. Not a public API.
 */
#ifndef KEEL_BDEV_URING_INTERNAL_H
#define KEEL_BDEV_URING_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "keel/bdev_module.h"

struct keel_bdev;
struct io_uring;
struct io_uring_params;

/** Default submission ring entries of a thread's ring (one io_uring_enter takes up to this). */
#define BDEV_URING_DEFAULT_SQ_ENTRIES 512
/**
 * Default completion ring entries of a thread's ring: also the most requests the ring
 * holds at once (submitted, in the kernel or completed and not yet reaped), so the
 * completion ring can never overflow. More wait in the ring's FIFO, across bdevs.
 */
#define BDEV_URING_DEFAULT_CQ_ENTRIES 4096

/**
 * Sizes of the rings created from now on (a ring is created with the first uring
 * channel of a keel thread). \p sq_entries 1..4096 and \p cq_entries sq..65536, both
 * powers of two. Tests shrink them to force the "ring full, wait" paths.
 * \return 0 or -EINVAL.
 */
int bdev_uring_set_ring_size(uint32_t sq_entries, uint32_t cq_entries);

/** How completions that need the submitting thread reach it (see uring_group.c). */
enum bdev_uring_taskrun {
	BDEV_URING_TASKRUN_IPI,   /**< the kernel's default: an interrupt per batch */
	BDEV_URING_TASKRUN_COOP,  /**< at the reactor's next syscall; the poller makes one */
	BDEV_URING_TASKRUN_DEFER, /**< only when the poller asks, in one batch */
};
#define BDEV_URING_TASKRUN_DEFAULT BDEV_URING_TASKRUN_COOP

/**
 * Mode of the rings created from now on (a kernel without it gets the next best).
 * The benchmark compares them. \return 0 or -EINVAL.
 */
int bdev_uring_set_taskrun(enum bdev_uring_taskrun mode);

/**
 * Whether rings created from now on register each bdev's file with the ring (fixed
 * files: the kernel skips the per-request file lookup). Default on; the benchmark
 * compares both.
 */
void bdev_uring_set_register_files(bool on);

/**
 * Make creates from now on behave as if the filesystem refused O_DIRECT, so the
 * buffered path (asynchronous through io_uring) is tested on any filesystem.
 */
void bdev_uring_set_refuse_direct(bool refuse);

/**
 * Pretend the kernel refused RWF_DSYNC on \p bdev (\p fua_native false), so FUA
 * writes become write + fsync. \return 0 or -EINVAL when \p bdev is not a uring bdev.
 */
int bdev_uring_set_native_fua(struct keel_bdev *bdev, bool fua_native);

/**
 * Test seam: the function that sets up every ring (the availability probe's too).
 * Defaults to liburing's io_uring_queue_init_params; a test points it at a function
 * that fails with -EPERM or -ENOSYS to walk the "kernel refuses io_uring" path, and
 * back with bdev_uring_set_ring_init(NULL). Any thread; not a production switch.
 */
typedef int (*bdev_uring_ring_init_fn)(unsigned entries, struct io_uring *ring,
				       struct io_uring_params *p);
void bdev_uring_set_ring_init(bdev_uring_ring_init_fn fn);

/** Counters of one uring bdev, summed over every channel it had (relaxed atomics). */
struct bdev_uring_counters {
	uint64_t sqes;            /**< requests placed in a submission ring */
	uint64_t cqes;            /**< completions reaped */
	uint64_t waited;          /**< requests that waited for room in their thread's ring */
	uint64_t fixed_file_sqes; /**< of sqes, those that used a registered file */
};

/** Read the counters (any thread). \return 0 or -EINVAL. */
int bdev_uring_get_counters(struct keel_bdev *bdev, struct bdev_uring_counters *out);

/** The module as a whole (relaxed atomics; any thread). */
struct bdev_uring_module_stats {
	uint32_t rings;            /**< live rings: one per keel thread doing uring I/O */
	uint32_t queues;           /**< live (bdev, thread) channels */
	uint32_t registered_files; /**< bdev files registered with a ring right now */
	uint64_t enter_calls;      /**< io_uring_enter syscalls that submitted */
	uint64_t sqes;             /**< requests they carried */
	uint64_t eventfd_reads;    /**< eventfd drains (one per busy-to-idle switch) */
	uint64_t getevents_calls;  /**< syscalls made only to run completion task work */
};

void bdev_uring_get_module_stats(struct bdev_uring_module_stats *out);

/** Whether \p bdev was opened with O_DIRECT. */
bool bdev_uring_is_direct(struct keel_bdev *bdev);

/**
 * For the aio module: create uring bdev \p name over a file whose filesystem refused
 * O_DIRECT (buffered I/O, which io_uring keeps off the reactor, where aio would perform
 * it inside io_submit). Same contract as keel_bdev_uring_create(); the bdev is opened
 * buffered whatever the filesystem says now, its info says "requested_as": "aio", and
 * keel_bdev_aio_delete() deletes it.
 */
int bdev_uring_create_for_aio(const char *name, const char *filename, uint32_t block_size,
			      keel_bdev_create_cb cb_fn, void *cb_arg);

/** Whether \p bdev is a uring bdev made by bdev_uring_create_for_aio(). Any thread. */
bool bdev_uring_is_for_aio(struct keel_bdev *bdev);

/**
 * The eventfd of the current keel thread's ring, or -1 without one (tests check that
 * it turns readable when a completion lands, and is drained once the ring goes idle).
 */
int bdev_uring_thread_eventfd(void);

/**
 * The poller of the current keel thread's ring, or NULL without one (tests pause it to
 * look at the eventfd before the poller reaps).
 */
struct keel_poller *bdev_uring_thread_poller(void);

#endif /* KEEL_BDEV_URING_INTERNAL_H */
