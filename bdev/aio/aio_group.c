/*
 * aio bdev: one io_context per keel thread, shared by every aio bdev channel of that
 * thread (the model is in aio_group.h).
 *
 * Why shared: io_setup takes its depth from the system-wide fs.aio-max-nr (65536 by
 * default) and pins a completion ring. A context per (bdev, thread) channel made the
 * number of volumes one daemon can hold a function of that sysctl (126 volumes of two
 * replicas on two reactors); a context per thread is a constant per thread. One poller
 * per thread also means an idle bdev costs no CPU: there is nothing per bdev to poll.
 *
 * Submission: queues with pending iocbs sit on the group's ready list. A submit walks
 * it once, taking from each queue up to that queue's cap and the context's free
 * slots, and hands the batch to the kernel with one io_submit. A queue that was
 * served and still has work moves to the back, so one busy bdev cannot starve the
 * others when the context is full. -EAGAIN or a partial submission leaves the rest
 * queued: nothing is failed for lack of room.
 *
 * Completions are copied from the ring the kernel maps at the context address (magic
 * 0xa10a10a1, incompat_features 0): acquire-load tail, copy, release-store head. No
 * syscall. io_getevents with a zero timeout is the fallback for an unknown layout.
 *
 * Waking: every iocb signals the group's eventfd, which is tied to the poller, except
 * iocbs the poller itself submits in pure poll mode (nothing sleeps there, and the
 * signal costs a kernel spinlock per completion); the poller reports busy while such
 * iocbs are in flight. A request queued while the poller's last run reported idle
 * (it may be parked until its fd is ready) schedules one flush message to this
 * thread, which submits everything queued by then: batching is kept, and no request
 * waits for a poller that will not run. The poller is thus correct whether the
 * reactor runs fd pollers on every iteration or only when their fd is ready.
 */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "keel/log.h"
#include "keel/reactor.h"

#include "aio_group.h"

#define AIO_RING_MAGIC 0xa10a10a1u
#define AIO_IOCB_FLAG_RESFD \
	(1u << 0) /* linux/aio_abi.h IOCB_FLAG_RESFD, as io_set_eventfd sets it */
#define AIO_MAX_DEPTH 4096u
/* Events taken per poll and iocbs per io_submit: bound the stack and one poll's time. */
#define AIO_REAP_BATCH 128
#define AIO_SUBMIT_BATCH 256

/*
 * The header of the completion ring the kernel maps at the address io_setup returns
 * (fs/aio.c, struct aio_ring). Stable since 2.6; the magic and incompat_features tell
 * us whether this is still the layout.
 */
struct aio_user_ring {
	uint32_t id;
	uint32_t nr;
	uint32_t head;
	uint32_t tail;
	uint32_t magic;
	uint32_t compat_features;
	uint32_t incompat_features;
	uint32_t header_length;
	struct io_event events[];
};

struct aio_group {
	io_context_t ctx;
	struct aio_user_ring *ring; /* NULL: use io_getevents */
	int efd;
	uint32_t depth; /* io_setup(depth): what it takes of fs.aio-max-nr */
	uint32_t inflight;
	uint32_t inflight_silent; /* of which submitted without the eventfd */
	uint32_t queues;
	uint32_t reactor_idx; /* KEEL_REACTOR_ANY: unplaced thread (harness) */
	bool kernel_full;     /* the last io_submit hit the kernel's limit */
	bool stalled;         /* what is queued waits for a completion to make room */
	bool in_poll;
	bool awake; /* the poller's last run reported busy: it runs again */
	bool flush_scheduled;
	bool dead;        /* destroyed; freed by the poll or flush that holds it */
	uint64_t reaped;  /* completions taken, for the eventfd drain rule */
	uint64_t drained; /* eventfd counts read */
	struct keel_thread *thread;
	struct keel_poller *poller;
	TAILQ_HEAD(, aio_queue) ready; /* queues with pending iocbs */
	TAILQ_ENTRY(aio_group) link;
};

/* Groups of every thread: taken only when a thread's channel is created or released. */
static pthread_mutex_t g_groups_lock = PTHREAD_MUTEX_INITIALIZER;
static TAILQ_HEAD(, aio_group) g_groups = TAILQ_HEAD_INITIALIZER(g_groups);

static uint32_t g_context_depth = BDEV_AIO_DEFAULT_CONTEXT_DEPTH;
/* Test seams (bdev_aio_internal.h): the kernel's answers, as a test wants them. */
static bdev_aio_io_setup_fn g_io_setup = io_setup;
static bdev_aio_io_submit_fn g_io_submit = io_submit;
static struct bdev_aio_module_stats g_stats; /* relaxed atomics */

static inline void aio_counter_add(uint64_t *counter, uint64_t n)
{
	if (n != 0) {
		__atomic_fetch_add(counter, n, __ATOMIC_RELAXED);
	}
}

/* ------------------------------------------------------------------------------ */
/* Closing on the blocking pool                                                    */
/* ------------------------------------------------------------------------------ */

struct aio_close_req {
	int fd;
	int efd;
	io_context_t ctx;
	bool has_ctx;
};

/*
 * The job frees its own request: the thread that queued it may be gone by the time
 * it finishes (a channel destroyed during thread exit).
 */
static int aio_close_job(void *arg)
{
	struct aio_close_req *req = arg;

	if (req->has_ctx) {
		io_destroy(req->ctx);
	}
	if (req->efd >= 0) {
		close(req->efd);
	}
	if (req->fd >= 0) {
		close(req->fd);
	}
	free(req);
	return 0;
}

static void aio_close_job_done(void *cb_arg, int rc)
{
}

void bdev_aio_close_async(int fd, int efd, io_context_t ctx, bool has_ctx)
{
	struct aio_close_req *req = calloc(1, sizeof(*req));

	if (req == NULL) {
		if (has_ctx) {
			io_destroy(ctx);
		}
		if (efd >= 0) {
			close(efd);
		}
		if (fd >= 0) {
			close(fd);
		}
		return;
	}
	req->fd = fd;
	req->efd = efd;
	req->ctx = ctx;
	req->has_ctx = has_ctx;
	if (keel_thread_get_current() == NULL ||
	    keel_spawn_blocking(aio_close_job, req, aio_close_job_done, NULL) != 0) {
		aio_close_job(req);
	}
}

/* ------------------------------------------------------------------------------ */
/* Submission                                                                      */
/* ------------------------------------------------------------------------------ */

static inline struct iocb *aio_io_iocb(struct keel_bdev_io *io)
{
	return &((struct aio_req *)keel_bdev_io_get_ctx(io))->iocb;
}

static inline struct aio_queue *aio_iocb_queue(struct iocb *iocb)
{
	return ((struct aio_req *)iocb)->queue;
}

static void aio_ready_remove(struct aio_group *g, struct aio_queue *q)
{
	TAILQ_REMOVE(&g->ready, q, ready_link);
	q->ready = false;
}

/* \p q had its turn in a batch: off the list when drained, else to the back. */
static void aio_queue_served(struct aio_group *g, struct aio_queue *q)
{
	TAILQ_REMOVE(&g->ready, q, ready_link);
	if (TAILQ_EMPTY(&q->pending)) {
		q->ready = false;
	} else {
		TAILQ_INSERT_TAIL(&g->ready, q, ready_link);
	}
}

/*
 * One io_submit for what the queues may send now. \return iocbs taken (1 for a
 * request the kernel refused outright, which was answered). Sets g->stalled when
 * what stays queued can only go after a completion.
 */
static int aio_group_submit(struct aio_group *g)
{
	struct iocb *iocbs[AIO_SUBMIT_BATCH];
	uint32_t room = g->depth - g->inflight;
	bool cut_by_batch = false, cut_by_room = false, signal;
	struct keel_bdev_io *io;
	struct aio_queue *q;
	uint64_t run = 0;
	int n = 0, rc, i;

	g->stalled = false;
	if (TAILQ_EMPTY(&g->ready)) {
		return 0;
	}
	/* After EAGAIN, wait for a completion to free a slot instead of asking again. */
	if (g->kernel_full && g->inflight > 0) {
		g->stalled = true;
		return 0;
	}
	g->kernel_full = false;
	/* Each queue's part of the batch is a prefix of its pending list, contiguous. */
	TAILQ_FOREACH(q, &g->ready, ready_link) {
		uint32_t q_room = q->depth - q->inflight;

		TAILQ_FOREACH(io, &q->pending, module_link) {
			if (q_room == 0) {
				break;
			}
			if (room == 0 || n == AIO_SUBMIT_BATCH) {
				cut_by_room = room == 0;
				cut_by_batch = !cut_by_room;
				goto out_built;
			}
			iocbs[n++] = aio_io_iocb(io);
			q_room--;
			room--;
		}
	}
out_built:
	if (n == 0) {
		/* Every queue is at its cap or the context is full: completions make room. */
		g->stalled = true;
		return 0;
	}

	/*
	 * Outside the poller the poller may be parked, so the completion must wake it. In
	 * pure poll mode the poller's own submissions skip the eventfd: it keeps running
	 * while they are in flight.
	 */
	signal = !g->in_poll || g->reactor_idx == KEEL_REACTOR_ANY ||
		 keel_reactor_get_mode(g->reactor_idx) != KEEL_REACTOR_MODE_POLL;
	for (i = 0; i < n; i++) {
		if (signal) {
			io_set_eventfd(iocbs[i], g->efd);
		} else {
			iocbs[i]->u.c.flags &= ~AIO_IOCB_FLAG_RESFD;
		}
	}

	rc = __atomic_load_n(&g_io_submit, __ATOMIC_ACQUIRE)(g->ctx, n, iocbs);
	aio_counter_add(&g_stats.io_submit_calls, 1);
	if (rc == -EAGAIN || rc == -EINTR || rc == 0) {
		/* Kernel out of resources: everything stays queued. */
		aio_counter_add(&aio_iocb_queue(iocbs[0])->counters->submit_eagain, 1);
		aio_counter_add(&aio_iocb_queue(iocbs[0])->counters->io_submit_calls, 1);
		g->kernel_full = true;
		g->stalled = g->inflight > 0;
		return 0;
	}
	if (rc < 0) {
		io = iocbs[0]->data;
		q = aio_iocb_queue(iocbs[0]);
		aio_counter_add(&q->counters->io_submit_calls, 1);
		TAILQ_REMOVE(&q->pending, io, module_link);
		if (TAILQ_EMPTY(&q->pending)) {
			aio_ready_remove(g, q);
		}
		bdev_aio_refused(io, rc);
		return 1;
	}
	if (rc < n) {
		aio_counter_add(&aio_iocb_queue(iocbs[rc])->counters->submit_eagain, 1);
		g->kernel_full = true;
	} else if (cut_by_room) {
		aio_counter_add(&g_stats.context_full, 1);
	}
	for (i = 0; i < rc; i++) {
		io = iocbs[i]->data;
		q = aio_iocb_queue(iocbs[i]);
		TAILQ_REMOVE(&q->pending, io, module_link);
		q->inflight++;
		run++;
		if (i + 1 == rc || aio_iocb_queue(iocbs[i + 1]) != q) {
			aio_counter_add(&q->counters->iocbs_submitted, run);
			aio_counter_add(&q->counters->io_submit_calls, 1);
			run = 0;
			aio_queue_served(g, q);
		}
	}
	g->inflight += (uint32_t)rc;
	if (!signal) {
		g->inflight_silent += (uint32_t)rc;
	}
	/* Only a full batch leaves work that could go right now. */
	g->stalled = g->kernel_full || !cut_by_batch;
	return rc;
}

static void aio_group_flush(void *arg);

/*
 * Work was queued. If the poller's last run found nothing, it may be parked until
 * its fd is ready: submit from a message at the end of what this thread is doing,
 * so every request queued meanwhile goes in the same io_submit.
 */
static void aio_group_kick(struct aio_group *g)
{
	if (g->in_poll || g->awake || g->flush_scheduled) {
		return;
	}
	if (keel_thread_send_msg(g->thread, aio_group_flush, g) == 0) {
		g->flush_scheduled = true;
		return;
	}
	/* Our own message queue is full: submit now, unbatched, rather than wait. */
	aio_group_submit(g);
}

/* ------------------------------------------------------------------------------ */
/* Completion                                                                      */
/* ------------------------------------------------------------------------------ */

/*
 * Take completed events from the user-mapped ring: the kernel publishes tail after
 * writing the event (so acquire it), and reads head when it checks for room (so
 * release our new head only after the events were copied out).
 */
static int aio_ring_reap(struct aio_user_ring *ring, struct io_event *events, int max)
{
	uint32_t head = __atomic_load_n(&ring->head, __ATOMIC_RELAXED);
	uint32_t tail = __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE);
	uint32_t nr = ring->nr;
	int n = 0;

	while (head != tail && n < max) {
		events[n++] = ring->events[head];
		head = head + 1 == nr ? 0 : head + 1;
	}
	if (n > 0) {
		__atomic_store_n(&ring->head, head, __ATOMIC_RELEASE);
	}
	return n;
}

static int aio_group_reap(struct aio_group *g)
{
	struct io_event events[AIO_REAP_BATCH];
	struct bdev_aio_counters *run_counters = NULL;
	struct aio_queue *run_q = NULL;
	uint64_t run = 0;
	int n, i;

	if (g->inflight == 0) {
		return 0;
	}
	if (g->ring != NULL) {
		n = aio_ring_reap(g->ring, events, AIO_REAP_BATCH);
	} else {
		struct timespec zero = {0, 0};

		n = io_getevents(g->ctx, 0, AIO_REAP_BATCH, events, &zero);
		if (n < 0) {
			if (n != -EINTR) {
				KEEL_ERRLOG("aio: thread %s: io_getevents: %s",
					    keel_thread_get_name(g->thread), strerror(-n));
			}
			return 0;
		}
	}
	assert((uint32_t)n <= g->inflight);
	g->inflight -= (uint32_t)n;
	if (n > 0) {
		g->kernel_full = false;
	}
	g->reaped += (uint64_t)n;
	for (i = 0; i < n; i++) {
		struct iocb *iocb = events[i].obj;
		struct aio_queue *q = aio_iocb_queue(iocb);

		if (!(iocb->u.c.flags & AIO_IOCB_FLAG_RESFD)) {
			g->inflight_silent--;
		}
		assert(q->inflight > 0);
		q->inflight--;
		/* Count per run of one bdev's events: one atomic per run, not per event. */
		if (q != run_q) {
			if (run_counters != NULL) {
				aio_counter_add(g->ring != NULL ? &run_counters->ring_reaps
								: &run_counters->getevents_reaps,
						run);
			}
			run_q = q;
			run_counters = q->counters;
			run = 0;
		}
		run++;
		bdev_aio_event(iocb->data, (long)events[i].res);
	}
	if (run_counters != NULL) {
		aio_counter_add(g->ring != NULL ? &run_counters->ring_reaps
						: &run_counters->getevents_reaps,
				run);
	}
	return n;
}

/*
 * Drain the eventfd only when it holds counts for completions we already took, and
 * only on a run that found nothing: a busy thread makes no read() syscalls, and the
 * reap that follows the drain closes the race with a completion that arrived in
 * between, so a sleeping reactor never misses one.
 */
static int aio_group_drain_eventfd(struct aio_group *g)
{
	uint64_t count;

	if ((int64_t)(g->reaped - g->drained) <= 0) {
		return 0;
	}
	if (read(g->efd, &count, sizeof(count)) == (ssize_t)sizeof(count)) {
		g->drained += count;
	} else {
		g->drained = g->reaped; /* EAGAIN: already zero */
	}
	return aio_group_reap(g);
}

/* ------------------------------------------------------------------------------ */
/* The poller and the flush message                                                */
/* ------------------------------------------------------------------------------ */

static void aio_group_free(struct aio_group *g)
{
	bdev_aio_close_async(-1, g->efd, g->ctx, true);
	free(g);
}

static int aio_group_poll(void *arg)
{
	struct aio_group *g = arg;
	int submitted, reaped;
	bool busy;

	g->in_poll = true;
	submitted = aio_group_submit(g);
	reaped = aio_group_reap(g);
	if (reaped == 0 && !g->dead) {
		reaped = aio_group_drain_eventfd(g);
	}
	g->in_poll = false;
	if (g->dead) {
		if (!g->flush_scheduled) {
			aio_group_free(g);
		}
		return KEEL_POLLER_IDLE;
	}
	/*
	 * Busy while it did work, while iocbs no eventfd will announce are in flight, or
	 * while queued work could go now. Work that waits for room waits for a signalled
	 * completion, which the eventfd announces.
	 */
	busy = submitted + reaped > 0 || g->inflight_silent > 0 ||
	       (!TAILQ_EMPTY(&g->ready) && !g->stalled);
	g->awake = busy;
	return busy ? KEEL_POLLER_BUSY : KEEL_POLLER_IDLE;
}

static void aio_group_flush(void *arg)
{
	struct aio_group *g = arg;

	g->flush_scheduled = false;
	if (g->dead) {
		aio_group_free(g);
		return;
	}
	aio_group_submit(g);
	/* A full batch left work the parked poller would not see: once more. */
	if (!TAILQ_EMPTY(&g->ready) && !g->stalled) {
		aio_group_kick(g);
	}
}

/* ------------------------------------------------------------------------------ */
/* Groups and queues                                                               */
/* ------------------------------------------------------------------------------ */

static struct aio_group *aio_group_find(struct keel_thread *thread)
{
	struct aio_group *g;

	pthread_mutex_lock(&g_groups_lock);
	TAILQ_FOREACH(g, &g_groups, link) {
		if (g->thread == thread) {
			break;
		}
	}
	pthread_mutex_unlock(&g_groups_lock);
	return g;
}

static int aio_group_create(struct keel_thread *thread, const char *name, struct aio_group **out)
{
	struct aio_user_ring *ring;
	struct aio_group *g;
	int rc;

	g = calloc(1, sizeof(*g));
	if (g == NULL) {
		return -ENOMEM;
	}
	g->thread = thread;
	g->reactor_idx = keel_reactor_current();
	g->depth = __atomic_load_n(&g_context_depth, __ATOMIC_RELAXED);
	g->efd = -1;
	TAILQ_INIT(&g->ready);

	rc = __atomic_load_n(&g_io_setup, __ATOMIC_ACQUIRE)((int)g->depth, &g->ctx);
	if (rc < 0) {
		if (rc == -EAGAIN) {
			KEEL_ERRLOG(
				"aio bdev %s: cannot set up the I/O context of thread %s: "
				"io_setup(%u) found the system-wide AIO limit reached; raise it "
				"with sysctl fs.aio-max-nr (each keel thread doing aio takes %u)",
				name, keel_thread_get_name(thread), g->depth, g->depth);
		} else {
			KEEL_ERRLOG("aio bdev %s: io_setup(%u) for thread %s failed: %s", name,
				    g->depth, keel_thread_get_name(thread), strerror(-rc));
		}
		free(g);
		return rc;
	}
	ring = (struct aio_user_ring *)g->ctx;
	if (ring->magic == AIO_RING_MAGIC && ring->incompat_features == 0) {
		g->ring = ring;
	} else {
		KEEL_NOTICELOG(
			"aio: unknown aio ring layout (magic %#x), reaping with io_getevents",
			ring->magic);
	}

	g->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (g->efd < 0) {
		rc = -errno;
		KEEL_ERRLOG("aio bdev %s: eventfd: %s", name, strerror(-rc));
		goto out_destroy_ctx;
	}
	g->poller = keel_poller_register(aio_group_poll, g, 0, "aio");
	if (g->poller == NULL) {
		rc = -ENOMEM;
		goto out_destroy_ctx;
	}
	rc = keel_poller_register_fd(g->poller, g->efd, EPOLLIN);
	if (rc != 0) {
		KEEL_ERRLOG("aio bdev %s: cannot watch the completion eventfd: %s", name,
			    strerror(-rc));
		goto out_unregister_poller;
	}

	pthread_mutex_lock(&g_groups_lock);
	TAILQ_INSERT_TAIL(&g_groups, g, link);
	pthread_mutex_unlock(&g_groups_lock);
	__atomic_fetch_add(&g_stats.contexts, 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&g_stats.context_events, g->depth, __ATOMIC_RELAXED);
	KEEL_DEBUGLOG("aio: thread %s: io_context of %u events", keel_thread_get_name(thread),
		      g->depth);
	*out = g;
	return 0;

out_unregister_poller:
	keel_poller_unregister(&g->poller);
out_destroy_ctx: /* and the eventfd, if any */
	aio_group_free(g);
	return rc;
}

static void aio_group_destroy(struct aio_group *g)
{
	pthread_mutex_lock(&g_groups_lock);
	TAILQ_REMOVE(&g_groups, g, link);
	pthread_mutex_unlock(&g_groups_lock);
	__atomic_fetch_sub(&g_stats.contexts, 1, __ATOMIC_RELAXED);
	__atomic_fetch_sub(&g_stats.context_events, g->depth, __ATOMIC_RELAXED);
	/* Safe from inside the poller: it never runs again. */
	keel_poller_unregister(&g->poller);
	if (g->in_poll || g->flush_scheduled) {
		g->dead = true;
		return;
	}
	aio_group_free(g);
}

int bdev_aio_queue_init(struct aio_queue *q, uint32_t depth, struct bdev_aio_counters *counters,
			const char *name)
{
	struct keel_thread *thread = keel_thread_get_current();
	struct aio_group *g;
	int rc;

	memset(q, 0, sizeof(*q));
	TAILQ_INIT(&q->pending);
	q->counters = counters;
	q->depth = depth;
	if (thread == NULL) {
		return -EINVAL;
	}
	/* Only this thread adds or removes its own group, so it cannot appear meanwhile. */
	g = aio_group_find(thread);
	if (g == NULL) {
		rc = aio_group_create(thread, name, &g);
		if (rc != 0) {
			return rc;
		}
	}
	g->queues++;
	q->group = g;
	__atomic_fetch_add(&g_stats.queues, 1, __ATOMIC_RELAXED);
	return 0;
}

void bdev_aio_queue_fini(struct aio_queue *q)
{
	struct aio_group *g = q->group;

	/* The core drains a channel before it releases ours: events could not find q. */
	assert(q->inflight == 0 && TAILQ_EMPTY(&q->pending));
	if (q->ready) {
		aio_ready_remove(g, q);
	}
	q->group = NULL;
	__atomic_fetch_sub(&g_stats.queues, 1, __ATOMIC_RELAXED);
	if (--g->queues == 0) {
		aio_group_destroy(g);
	}
}

void bdev_aio_queue_push(struct aio_queue *q, struct keel_bdev_io *io, bool front)
{
	struct aio_req *req = keel_bdev_io_get_ctx(io);
	struct aio_group *g = q->group;

	req->iocb.data = io;
	req->queue = q;
	if (front) {
		TAILQ_INSERT_HEAD(&q->pending, io, module_link);
	} else {
		TAILQ_INSERT_TAIL(&q->pending, io, module_link);
	}
	if (!q->ready) {
		q->ready = true;
		TAILQ_INSERT_TAIL(&g->ready, q, ready_link);
	}
	aio_group_kick(g);
}

/* ------------------------------------------------------------------------------ */
/* Knobs and statistics                                                            */
/* ------------------------------------------------------------------------------ */

void bdev_aio_set_io_submit(bdev_aio_io_submit_fn fn)
{
	__atomic_store_n(&g_io_submit, fn != NULL ? fn : io_submit, __ATOMIC_RELEASE);
}

void bdev_aio_set_io_setup(bdev_aio_io_setup_fn fn)
{
	__atomic_store_n(&g_io_setup, fn != NULL ? fn : io_setup, __ATOMIC_RELEASE);
}

int bdev_aio_set_context_depth(uint32_t depth)
{
	if (depth == 0 || depth > AIO_MAX_DEPTH) {
		return -EINVAL;
	}
	__atomic_store_n(&g_context_depth, depth, __ATOMIC_RELAXED);
	return 0;
}

void bdev_aio_get_module_stats(struct bdev_aio_module_stats *out)
{
	out->contexts = __atomic_load_n(&g_stats.contexts, __ATOMIC_RELAXED);
	out->context_events = __atomic_load_n(&g_stats.context_events, __ATOMIC_RELAXED);
	out->queues = __atomic_load_n(&g_stats.queues, __ATOMIC_RELAXED);
	out->context_full = __atomic_load_n(&g_stats.context_full, __ATOMIC_RELAXED);
	out->io_submit_calls = __atomic_load_n(&g_stats.io_submit_calls, __ATOMIC_RELAXED);
}
