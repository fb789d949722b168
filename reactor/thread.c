/*
 * Lightweight keel threads: creation, messages, the poll iteration, exit.
 *
 * A thread is polled by exactly one OS thread at a time (its reactor, or the test
 * harness), so everything below the ring's producer line is owner-only and needs
 * no atomics. Other OS threads only enqueue into the ring.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "reactor_internal.h"

__thread struct keel_thread *krt_thread_tls_current;

static bool g_thread_lib_init;
static uint32_t g_thread_ring_size = THREAD_DEFAULT_RING_SIZE;
static _Atomic uint64_t g_thread_next_id = 1;
/* Protects g_threads; never held on the data path. */
static pthread_mutex_t g_threads_lock = PTHREAD_MUTEX_INITIALIZER;
static struct keel_thread_list g_threads = TAILQ_HEAD_INITIALIZER(g_threads);
static uint32_t g_thread_count;
/*
 * Destroyed threads keep their (closed) struct until keel_thread_lib_fini(): a late
 * sender holding a stale pointer, typical during shutdown, then gets -ESHUTDOWN
 * instead of writing into freed memory. Only the struct stays; rings and arrays are
 * freed at destruction.
 */
static struct keel_thread_list g_zombies = TAILQ_HEAD_INITIALIZER(g_zombies);

int keel_thread_lib_init(uint32_t msg_ring_size)
{
	if (g_thread_lib_init) {
		return -EALREADY;
	}
	if (msg_ring_size == 0) {
		msg_ring_size = THREAD_DEFAULT_RING_SIZE;
	}
	if (msg_ring_size < 2 || (msg_ring_size & (msg_ring_size - 1)) != 0) {
		return -EINVAL;
	}
	g_thread_ring_size = msg_ring_size;
	atomic_store(&g_thread_next_id, 1);
	g_thread_lib_init = true;
	return 0;
}

static void thread_free(struct keel_thread *thread);
static void thread_free_buffers(struct keel_thread *thread, bool keep_ring);

void keel_thread_lib_fini(void)
{
	struct keel_thread *thread;

	if (!g_thread_lib_init) {
		return;
	}
	krt_blocking_pool_stop();
	/* Leftover unplaced threads: the embedder never finished them. */
	pthread_mutex_lock(&g_threads_lock);
	while ((thread = TAILQ_FIRST(&g_threads)) != NULL) {
		TAILQ_REMOVE(&g_threads, thread, glink);
		g_thread_count--;
		pthread_mutex_unlock(&g_threads_lock);
		KEEL_WARNLOG("thread %s: still alive at thread library fini, freeing it",
			     thread->name);
		krt_poller_free_all(thread);
		krt_io_channel_thread_teardown(thread);
		thread_free(thread);
		pthread_mutex_lock(&g_threads_lock);
	}
	while ((thread = TAILQ_FIRST(&g_zombies)) != NULL) {
		TAILQ_REMOVE(&g_zombies, thread, glink);
		krt_msg_ring_fini(&thread->ring); /* kept by a forced destroy, else a no-op */
		keel_numa_free(thread, sizeof(*thread));
	}
	pthread_mutex_unlock(&g_threads_lock);
	krt_io_device_lib_fini();
	g_thread_lib_init = false;
}

uint32_t krt_thread_lib_thread_count(void)
{
	uint32_t n;

	pthread_mutex_lock(&g_threads_lock);
	n = g_thread_count;
	pthread_mutex_unlock(&g_threads_lock);
	return n;
}

/*
 * \p keep_ring: leave the message ring's slots for thread_free. A forced destroy with
 * blocking jobs still running keeps them: each job's worker will send its completion,
 * and a producer that read the ring's head just before it was closed still touches
 * its slot before the closed ring turns it away. The zombie keeps them until
 * keel_thread_lib_fini, which stops the blocking pool first.
 */
static void thread_free_buffers(struct keel_thread *thread, bool keep_ring)
{
	free(thread->active);
	thread->active = NULL;
	free(thread->heap);
	thread->heap = NULL;
	free(thread->runq);
	thread->runq = NULL;
	thread->runq_count = 0;
	thread->poller_cap = 0;
	keel_numa_free(thread->local_q,
		       (size_t)(thread->local_mask + 1) * sizeof(struct local_msg));
	thread->local_q = NULL;
	if (!keep_ring) {
		krt_msg_ring_fini(&thread->ring);
	}
}

static void thread_free(struct keel_thread *thread)
{
	thread_free_buffers(thread, false);
	keel_numa_free(thread, sizeof(*thread));
}

struct keel_thread *krt_thread_create(const char *name, struct reactor *reactor)
{
	int numa_node = reactor != NULL ? reactor->numa_node : -1;
	struct keel_thread *thread;

	if (!g_thread_lib_init) {
		return NULL;
	}
	thread = keel_numa_zalloc(sizeof(*thread), numa_node);
	if (thread == NULL) {
		return NULL;
	}
	if (krt_msg_ring_init(&thread->ring, g_thread_ring_size, numa_node) != 0) {
		goto out_free_thread;
	}
	thread->local_q = keel_numa_zalloc((size_t)g_thread_ring_size * sizeof(struct local_msg),
					   numa_node);
	if (thread->local_q == NULL) {
		goto out_fini_ring;
	}
	thread->local_mask = g_thread_ring_size - 1;
	TAILQ_INIT(&thread->pollers);
	TAILQ_INIT(&thread->channels);
	TAILQ_INIT(&thread->retries);
	krt_thread_reliable_init(thread);
	atomic_init(&thread->state, THREAD_RUNNING);
	thread->id = atomic_fetch_add(&g_thread_next_id, 1);
	thread->reactor = reactor;
	thread->reactor_idx = reactor != NULL ? reactor->idx : KEEL_REACTOR_ANY;
	thread->numa_node = numa_node;
	if (name == NULL || name[0] == '\0') {
		snprintf(thread->name, sizeof(thread->name), "thread_%llu",
			 (unsigned long long)thread->id);
	} else {
		snprintf(thread->name, sizeof(thread->name), "%s", name);
	}

	pthread_mutex_lock(&g_threads_lock);
	TAILQ_INSERT_TAIL(&g_threads, thread, glink);
	g_thread_count++;
	pthread_mutex_unlock(&g_threads_lock);

	if (reactor != NULL && krt_reactor_add_thread(reactor, thread) != 0) {
		goto out_unlink;
	}
	return thread;

out_unlink:
	pthread_mutex_lock(&g_threads_lock);
	TAILQ_REMOVE(&g_threads, thread, glink);
	g_thread_count--;
	pthread_mutex_unlock(&g_threads_lock);
	keel_numa_free(thread->local_q, (size_t)g_thread_ring_size * sizeof(struct local_msg));
out_fini_ring:
	krt_msg_ring_fini(&thread->ring);
out_free_thread:
	keel_numa_free(thread, sizeof(*thread));
	return NULL;
}

struct keel_thread *keel_thread_create(const char *name, uint32_t reactor_idx)
{
	static _Atomic uint32_t rr;
	uint32_t count = keel_reactor_count();
	struct reactor *reactor = NULL;

	if (count > 0) {
		if (reactor_idx == KEEL_REACTOR_ANY) {
			reactor_idx = atomic_fetch_add_explicit(&rr, 1, memory_order_relaxed) %
				      count;
		}
		reactor = krt_reactor_get(reactor_idx);
		if (reactor == NULL) {
			return NULL;
		}
	}
	return krt_thread_create(name, reactor);
}

struct keel_thread *keel_thread_create_on_cpus(const char *name, uint64_t cpumask)
{
	uint32_t count = keel_reactor_count();

	if (count == 0) {
		return krt_thread_create(name, NULL);
	}
	for (uint32_t i = 0; i < count; i++) {
		uint32_t cpu = keel_reactor_cpu(i);

		if (cpu < 64 && (cpumask & (1ULL << cpu))) {
			return krt_thread_create(name, krt_reactor_get(i));
		}
	}
	return NULL;
}

struct keel_thread *keel_thread_get_current(void)
{
	return krt_thread_tls_current;
}

void keel_set_current_thread(struct keel_thread *thread)
{
	krt_thread_tls_current = thread;
}

const char *keel_thread_get_name(const struct keel_thread *thread)
{
	return thread->name;
}

uint64_t keel_thread_get_id(const struct keel_thread *thread)
{
	return thread->id;
}

uint32_t keel_thread_get_reactor(const struct keel_thread *thread)
{
	return thread->reactor_idx;
}

void keel_thread_exit(struct keel_thread *thread)
{
	assert(thread == krt_thread_tls_current);
	if (atomic_load_explicit(&thread->state, memory_order_relaxed) != THREAD_RUNNING) {
		return;
	}
	thread->exit_start_ns = keel_now_ns();
	atomic_store(&thread->state, THREAD_EXITING);
}

void krt_thread_request_exit(struct keel_thread *thread)
{
	struct keel_thread *prev = krt_thread_tls_current;

	krt_thread_tls_current = thread;
	keel_thread_exit(thread);
	krt_thread_tls_current = prev;
}

bool keel_thread_is_exited(const struct keel_thread *thread)
{
	return atomic_load(&thread->state) != THREAD_RUNNING;
}

int keel_thread_send_msg(struct keel_thread *thread, keel_msg_fn fn, void *arg)
{
	struct reactor *reactor;
	int rc;

	if (thread == krt_thread_tls_current) {
		/* Sender is the receiver: a plain FIFO, no atomics, no wake-up needed. */
		if (keel_unlikely(thread->local_tail - thread->local_head > thread->local_mask)) {
			return -ENOMEM;
		}
		if (keel_unlikely(thread->local_closed)) {
			return -ESHUTDOWN;
		}
		thread->local_q[thread->local_tail & thread->local_mask] = (struct local_msg){
			.fn = fn, .arg = arg};
		thread->local_tail++;
		return 0;
	}
	/* Read before enqueueing: once queued, the receiver may run it and exit. */
	reactor = thread->reactor;
	rc = krt_msg_ring_enqueue(&thread->ring, fn, arg);
	if (keel_likely(rc == 0) && reactor != NULL) {
		reactor_notify(reactor);
	}
	return rc;
}

/* ------------------------------------------------------------------------------ */
/* Reliable sends and retries                                                      */
/* ------------------------------------------------------------------------------ */

void krt_thread_retry_queue(struct thread_retry *retry)
{
	struct keel_thread *thread = krt_thread_tls_current;

	assert(thread != NULL);
	if (!retry->queued) {
		retry->queued = true;
		TAILQ_INSERT_TAIL(&thread->retries, retry, link);
	}
}

static int thread_run_retries(struct keel_thread *thread)
{
	struct thread_retry_list list = TAILQ_HEAD_INITIALIZER(list);
	struct thread_retry *retry;
	int n = 0;

	/* Retries that fail again re-queue themselves on the (now empty) thread list. */
	TAILQ_CONCAT(&list, &thread->retries, link);
	while ((retry = TAILQ_FIRST(&list)) != NULL) {
		TAILQ_REMOVE(&list, retry, link);
		retry->queued = false;
		retry->fn(retry->arg);
		n++;
	}
	return n;
}

/* ------------------------------------------------------------------------------ */
/* Poll iteration                                                                  */
/* ------------------------------------------------------------------------------ */

static int thread_run_msgs(struct keel_thread *thread)
{
	struct reactor *reactor = thread->reactor;
	keel_msg_fn fn;
	void *arg;
	int n = 0, k = 0;

	if (thread->local_head != thread->local_tail) {
		if (reactor != NULL) {
			reactor_hb_set(reactor, thread->name, krt_reactor_msg_name);
		}
		/* Messages posted by these handlers to this thread run in the same batch. */
		do {
			struct local_msg *m =
				&thread->local_q[thread->local_head & thread->local_mask];

			thread->local_head++;
			m->fn(m->arg);
		} while (++n < THREAD_MSG_BATCH && thread->local_head != thread->local_tail);
	}
	if (msg_ring_pop(&thread->ring, &fn, &arg)) {
		if (reactor != NULL) {
			reactor_hb_set(reactor, thread->name, krt_reactor_msg_name);
		}
		do {
			fn(arg);
		} while (++k < THREAD_MSG_BATCH && msg_ring_pop(&thread->ring, &fn, &arg));
	}
	thread->msgs += (uint64_t)(n + k);
	return n + k;
}

bool krt_thread_has_pending(struct keel_thread *thread)
{
	return thread->local_head != thread->local_tail || !msg_ring_empty(&thread->ring) ||
	       !TAILQ_EMPTY(&thread->retries) || thread->dirty || thread->runq_count != 0;
}

static bool thread_is_idle_for_exit(struct keel_thread *thread)
{
	return thread->poller_count == 0 && thread->channel_count == 0 &&
	       thread->for_each_count == 0 && thread->pending_unregister == 0 &&
	       thread->pending_blocking == 0 && TAILQ_EMPTY(&thread->retries) &&
	       thread->local_head == thread->local_tail && msg_ring_empty(&thread->ring);
}

static void thread_warn_leftovers(struct keel_thread *thread)
{
	char pollers[512] = "";
	char channels[512] = "";
	struct keel_poller *poller;
	size_t off = 0;

	TAILQ_FOREACH(poller, &thread->pollers, link) {
		int n = snprintf(pollers + off, sizeof(pollers) - off, "%s%s", off ? ", " : "",
				 poller->name);

		if (n < 0 || (size_t)n >= sizeof(pollers) - off) {
			break;
		}
		off += (size_t)n;
	}
	krt_io_channel_thread_describe(thread, channels, sizeof(channels));
	KEEL_WARNLOG("thread %s: still busy %llu ms after exit was requested, destroying it "
		     "anyway: pollers [%s] channels [%s] iterations %u unregisters %u "
		     "blocking jobs %u retries %s messages %s",
		     thread->name, (unsigned long long)(THREAD_EXIT_GRACE_NS / 1000000), pollers,
		     channels, thread->for_each_count, thread->pending_unregister,
		     thread->pending_blocking, TAILQ_EMPTY(&thread->retries) ? "no" : "yes",
		     (msg_ring_empty(&thread->ring) && thread->local_head == thread->local_tail)
			     ? "no"
			     : "yes");
}

static void thread_destroy(struct keel_thread *thread, bool forced)
{
	struct reactor *reactor = thread->reactor;
	uint64_t end;
	keel_msg_fn fn;
	void *arg;

	/* No new producer can claim a slot after this; run what was claimed before. */
	end = krt_msg_ring_close(&thread->ring);
	thread->local_closed = true;
	while (thread->ring.tail != end) {
		if (msg_ring_pop(&thread->ring, &fn, &arg)) {
			fn(arg);
		} else {
			keel_cpu_relax(); /* a producer is between its claim and its publish */
		}
	}
	while (thread->local_head != thread->local_tail) {
		struct local_msg *m = &thread->local_q[thread->local_head & thread->local_mask];

		thread->local_head++;
		m->fn(m->arg);
	}
	/* Messages were drained first: pending channel destroys must not see freed memory. */
	if (thread->poller_count != 0 || thread->channel_count != 0) {
		if (!forced) {
			KEEL_WARNLOG("thread %s: late pollers or channels at destruction, "
				     "freeing them",
				     thread->name);
		}
		krt_poller_free_all(thread);
		krt_io_channel_thread_teardown(thread);
	}
	atomic_store(&thread->state, THREAD_EXITED);
	if (reactor != NULL) {
		TAILQ_REMOVE(&reactor->threads, thread, rlink);
		atomic_fetch_sub(&reactor->thread_count, 1);
		krt_reactor_hb_quiesce(reactor);
	}
	KEEL_DEBUGLOG("thread %s: destroyed", thread->name);
	thread_free_buffers(thread, forced && thread->pending_blocking != 0);

	pthread_mutex_lock(&g_threads_lock);
	TAILQ_REMOVE(&g_threads, thread, glink);
	g_thread_count--;
	TAILQ_INSERT_TAIL(&g_zombies, thread, glink);
	pthread_mutex_unlock(&g_threads_lock);
}

/* \return true when the thread was destroyed. */
static bool thread_exit_check(struct keel_thread *thread, uint64_t now)
{
	if (!thread_is_idle_for_exit(thread)) {
		/* exit_start may be later than this iteration's clock read: not expired. */
		if (now < thread->exit_start_ns ||
		    now - thread->exit_start_ns < THREAD_EXIT_GRACE_NS) {
			return false;
		}
		thread_warn_leftovers(thread);
		/* Retries refer to work that can no longer finish here. */
		TAILQ_INIT(&thread->retries);
		krt_thread_reliable_drop_all(thread);
		thread_destroy(thread, true);
		return true;
	}
	thread_destroy(thread, false);
	return true;
}

int krt_thread_poll(struct keel_thread *thread, uint64_t now, bool *destroyed)
{
	struct keel_thread *prev = krt_thread_tls_current;
	int work;

	*destroyed = false;
	/* No reactor and no epoll: parked event pollers learn of their fd from poll(2). */
	if (thread->reactor == NULL && thread->parked != 0) {
		krt_poller_check_parked_fds(thread);
	}
	krt_thread_tls_current = thread;
	thread->polling = true;
	work = thread_run_msgs(thread);
	if (thread->active_count != 0) {
		work += krt_poller_run_active(thread);
	}
	if (thread->heap_count != 0 && thread->heap[0].deadline <= now) {
		work += krt_poller_run_timed(thread, now);
	}
	if (thread->runq_count != 0) {
		work += krt_poller_run_queued(thread);
	}
	thread->polling = false;
	if (keel_unlikely(thread->dirty)) {
		krt_poller_fixup(thread, now);
	}
	if (keel_unlikely(!TAILQ_EMPTY(&thread->retries))) {
		work += thread_run_retries(thread);
	}
	if (thread->reactor == NULL && work == 0 && thread->runq_count != 0) {
		/* Whoever polls until idle must come back for a poller woken meanwhile (a
		 * reactor does: it never sleeps on a queued poller). */
		work = 1;
	}
	thread->polls++;
	if (keel_unlikely(atomic_load_explicit(&thread->state, memory_order_relaxed) ==
			  THREAD_EXITING)) {
		if (thread_exit_check(thread, now)) {
			*destroyed = true;
		}
	}
	krt_thread_tls_current = prev;
	return work;
}

int keel_thread_poll(struct keel_thread *thread)
{
	uint64_t start = keel_now_ns();
	bool destroyed;
	int work;

	work = krt_thread_poll(thread, start, &destroyed);
	if (!destroyed) {
		uint64_t ns = keel_now_ns() - start;

		if (work > 0) {
			thread->busy_ns += ns;
		} else {
			thread->idle_ns += ns;
		}
	}
	return work;
}

/* ------------------------------------------------------------------------------ */
/* Statistics                                                                      */
/* ------------------------------------------------------------------------------ */

static void thread_poller_stats(struct keel_poller_stats *ps, const struct keel_poller *poller)
{
	memset(ps, 0, sizeof(*ps));
	snprintf(ps->name, sizeof(ps->name), "%s", poller->name);
	ps->period_us = poller->period_us;
	ps->run_count = poller->run_count;
	ps->busy_count = poller->busy_count;
	ps->wakeups = poller->wake_count;
	ps->paused = poller->state == POLLER_PAUSED;
	ps->instances = 1;
}

uint32_t keel_thread_get_stats(struct keel_thread *thread, struct keel_thread_stats *stats,
			       struct keel_poller_stats *pollers, uint32_t max_pollers)
{
	struct keel_poller *poller;
	uint32_t n = 0;

	assert(thread == krt_thread_tls_current);
	if (stats != NULL) {
		memset(stats, 0, sizeof(*stats));
		snprintf(stats->name, sizeof(stats->name), "%s", thread->name);
		stats->id = thread->id;
		stats->reactor = thread->reactor_idx;
		stats->busy_ns = thread->busy_ns;
		stats->idle_ns = thread->idle_ns;
		stats->msgs = thread->msgs;
		stats->polls = thread->polls;
		stats->io_channels = thread->channel_count;
	}
	TAILQ_FOREACH(poller, &thread->pollers, link) {
		if (poller->state == POLLER_UNREGISTERED) {
			continue;
		}
		if (stats != NULL) {
			if (poller->state == POLLER_PAUSED) {
				stats->paused_pollers++;
			} else if (poller->period_ns == 0) {
				stats->active_pollers++;
			} else {
				stats->timed_pollers++;
			}
		}
		if (pollers != NULL && n < max_pollers) {
			thread_poller_stats(&pollers[n++], poller);
		}
	}
	return n;
}

/* Distinct poller names keel_thread_get_wakers() groups; the rest are left out. */
#define THREAD_WAKER_GROUPS_MAX 64

uint32_t keel_thread_get_wakers(struct keel_thread *thread, struct keel_poller_stats *pollers,
				uint32_t max_pollers)
{
	/*
	 * Grouped by name: a thousand volumes each with a 5 s timer wake the reactor 200
	 * times a second, yet no single poller of them would make a top list.
	 */
	struct keel_poller_stats groups[THREAD_WAKER_GROUPS_MAX];
	struct keel_poller *poller;
	uint32_t ngroups = 0, n = 0, i;

	assert(thread == krt_thread_tls_current);
	if (max_pollers > KEEL_THREAD_WAKERS_MAX) {
		max_pollers = KEEL_THREAD_WAKERS_MAX;
	}
	TAILQ_FOREACH(poller, &thread->pollers, link) {
		struct keel_poller_stats *g = NULL;

		if (poller->wake_count == 0 || poller->state == POLLER_UNREGISTERED) {
			continue;
		}
		for (i = 0; i < ngroups; i++) {
			if (strncmp(groups[i].name, poller->name, sizeof(groups[i].name) - 1) ==
			    0) {
				g = &groups[i];
				break;
			}
		}
		if (g == NULL) {
			if (ngroups == THREAD_WAKER_GROUPS_MAX) {
				continue;
			}
			g = &groups[ngroups++];
			thread_poller_stats(g, poller);
			continue;
		}
		g->run_count += poller->run_count;
		g->busy_count += poller->busy_count;
		g->wakeups += poller->wake_count;
		g->paused = g->paused && poller->state == POLLER_PAUSED;
		g->instances++;
	}
	/* Selection of the top max_pollers: max_pollers is a handful. */
	while (n < max_pollers && n < ngroups) {
		uint32_t best = n;

		for (i = n + 1; i < ngroups; i++) {
			if (groups[i].wakeups > groups[best].wakeups) {
				best = i;
			}
		}
		pollers[n] = groups[best];
		groups[best] = groups[n];
		n++;
	}
	return n;
}

/* ------------------------------------------------------------------------------ */
/* for_each_thread                                                                 */
/* ------------------------------------------------------------------------------ */

struct thread_iter {
	keel_msg_fn fn;
	void *ctx;
	keel_msg_fn cpl;
	struct keel_thread *orig;
	uint64_t last_id; /* id of the last thread visited */
	struct thread_retry retry;
};

static void thread_iter_next(void *arg);

static void thread_iter_done(void *arg)
{
	struct thread_iter *it = arg;

	it->cpl(it->ctx);
	it->orig->for_each_count--;
	free(it);
}

static void thread_iter_hop(void *arg)
{
	struct thread_iter *it = arg;

	it->fn(it->ctx);
	thread_iter_next(it);
}

/* Runs on the thread that visited last (or the origin): send to the next live one. */
static void thread_iter_next(void *arg)
{
	struct thread_iter *it = arg;
	struct keel_thread *thread;
	int rc;

	/* The send happens under the lock so the target cannot be freed in between. */
	pthread_mutex_lock(&g_threads_lock);
	TAILQ_FOREACH(thread, &g_threads, glink) {
		if (thread->id <= it->last_id || atomic_load(&thread->state) == THREAD_EXITED) {
			continue;
		}
		rc = keel_thread_send_msg(thread, thread_iter_hop, it);
		if (rc == 0) {
			it->last_id = thread->id;
			pthread_mutex_unlock(&g_threads_lock);
			return;
		}
		if (rc == -ENOMEM) {
			pthread_mutex_unlock(&g_threads_lock);
			krt_thread_retry_queue(&it->retry);
			return;
		}
		/* -ESHUTDOWN: being destroyed, skip it. */
	}
	pthread_mutex_unlock(&g_threads_lock);
	keel_thread_send_msg_reliable(it->orig, thread_iter_done, it, NULL);
}

void keel_for_each_thread(keel_msg_fn fn, void *ctx, keel_msg_fn cpl)
{
	struct keel_thread *orig = krt_thread_tls_current;
	struct thread_iter *it;

	assert(orig != NULL);
	if (orig == NULL) {
		KEEL_ERRLOG("keel_for_each_thread called outside a keel thread");
		return;
	}
	it = calloc(1, sizeof(*it));
	if (it == NULL) {
		/* The API has no error return: nothing sensible but to report it. */
		KEEL_ERRLOG("thread %s: for_each_thread: out of memory", orig->name);
		return;
	}
	it->fn = fn;
	it->ctx = ctx;
	it->cpl = cpl;
	it->orig = orig;
	it->retry.fn = thread_iter_next;
	it->retry.arg = it;
	orig->for_each_count++;
	thread_iter_next(it);
}
