/*
 * uring bdev: the io_uring that every uring bdev on one keel thread shares.
 * Module-private (bdev/uring only).
 *
 * One ring, one eventfd and one poller per keel thread, whatever the number of uring
 * bdevs with a channel on that thread (1000 volumes x 2 replicas do not mean 2000
 * rings). Each (bdev, thread) channel owns a uring_queue attached to the thread's
 * group. A request carries a prepared SQE in its context; the group copies it into
 * the ring when there is room and hands every completion back to bdev_uring_cqe()
 * (bdev_uring.c) through user_data.
 *
 * Submission is batched: a request pushed by a completion callback goes out with the
 * poller's one io_uring_enter at the end of its run; a request pushed from anywhere
 * else (another poller, a message) schedules one message to this thread that submits
 * everything pushed until it runs. So the poller never needs to be told about new
 * work: it runs when the ring's eventfd says completions arrived, or while it reports
 * busy. That is correct both when pollers tied to an fd run on every iteration and
 * when they run only on readiness and park after an idle return.
 *
 * Threading: a group and its queues belong to one keel thread; every call below is
 * made on that thread.
 */
#ifndef KEEL_BDEV_URING_GROUP_H
#define KEEL_BDEV_URING_GROUP_H

#include <liburing.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/bdev_module.h"

#include "bdev_uring_internal.h"

struct uring_group;
struct uring_queue;

/*
 * The start of every request's module context: the SQE to submit (prepared with the
 * bdev's plain fd; the group switches it to the registered file) and the queue.
 */
struct uring_req {
	struct io_uring_sqe sqe;
	struct uring_queue *queue;
};

/* One (bdev, thread) channel's share of its thread's group. Embedded in the channel. */
struct uring_queue {
	struct uring_group *group;
	struct keel_io_channel *group_ch;     /* our reference on the thread's group */
	struct bdev_uring_counters *counters; /* the bdev's, relaxed atomics */
	int file_slot;                        /* registered file index, -1: the plain fd */
	uint32_t inflight;                    /* pushed, completion not yet handed back */
};

/**
 * Attach \p q (for the bdev file \p fd) to the current keel thread's group, creating
 * the group (ring, eventfd, poller) for the thread's first queue. \p name names the
 * bdev in errors. \return 0, or -ENOTSUP (io_uring unavailable: logged with why),
 * -ENOMEM, or another -errno of the ring set-up (logged).
 */
int bdev_uring_queue_init(struct uring_queue *q, int fd, struct bdev_uring_counters *counters,
			  const char *name);

/**
 * Detach \p q; the thread's last queue releases the group (the ring closes from a
 * message). The bdev core drains a channel before it releases ours, so nothing of
 * \p q is in flight here (an error is logged if something is).
 */
void bdev_uring_queue_fini(struct uring_queue *q);

/**
 * Hand \p io (its uring_req prepared) to the ring of \p q. It goes to the kernel with
 * the thread's next batch; when the ring is full it waits, in FIFO order with every
 * other bdev of the thread, and is never failed for lack of room.
 */
void bdev_uring_queue_push(struct uring_queue *q, struct keel_bdev_io *io);

/* Implemented by bdev_uring.c: the kernel's answer (res: bytes or -errno) for one request. */
void bdev_uring_cqe(struct keel_bdev_io *io, int res);

/** Module start and stop: the per-thread group registry. \return 0 or -errno. */
int bdev_uring_groups_init(void);
void bdev_uring_groups_fini(void);
/** Whether bdev_uring_groups_init() ran (the module is initialised). */
bool bdev_uring_groups_ready(void);

/**
 * Whether this kernel and process may use io_uring with every opcode the module needs.
 * The first call creates and closes a small ring (it may block briefly; module start
 * makes it on the blocking pool); later calls return the same answer at once.
 * \return 0, or -errno with a one-line reason in \p why (when \p len > 0).
 */
int bdev_uring_probe(char *why, size_t len);

#endif /* KEEL_BDEV_URING_GROUP_H */
