/*
 * aio bdev: the completion context that every aio bdev on one keel thread shares.
 * Module-private (bdev/aio only).
 *
 * One io_context, one eventfd and one poller per keel thread, whatever the number of
 * aio bdevs with a channel on that thread. Each (bdev, thread) channel owns an
 * aio_queue: its own pending list and in-flight count, attached to the thread's
 * group. The group's poller submits the queued iocbs of every queue with one
 * io_submit and reaps every completion from the one ring, handing each to
 * bdev_aio_event() (bdev_aio.c) through iocb->data.
 *
 * Threading: a group and its queues belong to one keel thread; every call below is
 * made on that thread.
 */
#ifndef KEEL_BDEV_AIO_GROUP_H
#define KEEL_BDEV_AIO_GROUP_H

#include <libaio.h>
#include <stdbool.h>
#include <stdint.h>

#include "keel/bdev_module.h"

#include "bdev_aio_internal.h"

struct aio_group;

/*
 * The start of every request's module context: what the group needs to submit and
 * complete it. iocb.data points back to the keel_bdev_io.
 */
struct aio_req {
	struct iocb iocb;
	struct aio_queue *queue;
};

/* One (bdev, thread) channel's share of its thread's group. Embedded in the channel. */
struct aio_queue {
	struct aio_group *group;
	struct bdev_aio_counters *counters; /* the bdev's, relaxed atomics */
	uint32_t depth;                     /* iocbs of this queue the kernel may hold */
	uint32_t inflight;
	uint64_t submit_gen;                /* last io_submit that carried our iocbs */
	bool ready;                         /* on the group's ready list */
	TAILQ_HEAD(, keel_bdev_io) pending; /* prepared, not yet submitted */
	TAILQ_ENTRY(aio_queue) ready_link;
};

/**
 * Attach \p q to the current keel thread's group, creating the group (io_setup,
 * eventfd, poller) for the thread's first queue. \p name names the bdev in errors.
 * \return 0, -EAGAIN when fs.aio-max-nr is exhausted (logged with what to do),
 * -ENOMEM or another -errno of io_setup/eventfd/epoll.
 */
int bdev_aio_queue_init(struct aio_queue *q, uint32_t depth, struct bdev_aio_counters *counters,
			const char *name);

/**
 * Detach \p q; the thread's last queue destroys the group (io_destroy and close on
 * the blocking pool). The bdev core drains a channel before it releases ours, so
 * nothing is pending or in flight here. Never call it from a completion callback
 * of the group's poller (channels are released by message, which satisfies this).
 */
void bdev_aio_queue_fini(struct aio_queue *q);

/**
 * Queue a prepared iocb (inside \p io's aio_req) at the tail of \p q, or at the head
 * with \p front (a request refused at io_submit and retried in another form). It
 * goes to the kernel with the next batch of the thread: a request never fails
 * because the context is full, it waits.
 */
void bdev_aio_queue_push(struct aio_queue *q, struct keel_bdev_io *io, bool front);

/*
 * Implemented by bdev_aio.c: the kernel's answer for one request (res: bytes or
 * -errno), and a request io_submit refused outright (rc < 0).
 */
void bdev_aio_event(struct keel_bdev_io *io, long res);
void bdev_aio_refused(struct keel_bdev_io *io, int rc);

/*
 * Close an fd and/or destroy an io_context on the blocking pool (io_destroy waits
 * for an RCU grace period). -1 / has_ctx false skip that part. Without a pool it
 * happens right here: better a stall than a leak.
 */
void bdev_aio_close_async(int fd, int efd, io_context_t ctx, bool has_ctx);

#endif /* KEEL_BDEV_AIO_GROUP_H */
