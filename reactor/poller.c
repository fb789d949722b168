/*
 * Pollers.
 *
 * Three dispatch structures, each a contiguous array:
 * - active: pollers without period and without an event fd run every iteration, a
 *   tight loop over pointers;
 * - heap: pollers with a deadline (periodic, or armed with keel_poller_arm) in a
 *   4-ary min-heap whose entries hold the deadline inline: checking "is anything due"
 *   touches one cache line, and a dispatch is one sift-down of the top (the four
 *   children of a node share a cache line);
 * - runq: event pollers (an fd registered with keel_poller_register_fd) that have a
 *   reason to run: their fd was reported ready, they were woken or their timer fired,
 *   or (without a period) their last run reported busy. An event poller whose run
 *   reports idle leaves the runq and is "parked": nothing runs it until its fd is
 *   ready again. Parked pollers cost nothing per iteration, so a thousand idle
 *   sockets on a reactor cost no more than one.
 *
 * Structural changes (register, pause, resume, unregister, arm) made while the thread
 * is being polled only set state and mark the thread dirty; krt_poller_fixup() applies
 * them after the dispatch loops. That is what makes unregistering or pausing a poller
 * from inside any poller callback (including its own) safe, and keeps the loops free
 * of bookkeeping. Outside a poll the fixup runs at once. Queueing on the runq (fd
 * ready, keel_poller_wake) is not structural: it is an append to an array reserved
 * at registration, so it never fails and never waits for a fixup.
 */
#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reactor_internal.h"

#define HEAP_ARITY 4

/* ------------------------------------------------------------------------------ */
/* Heap                                                                            */
/* ------------------------------------------------------------------------------ */

static void heap_sift_up(struct poller_heap_entry *heap, uint32_t i)
{
	struct poller_heap_entry e = heap[i];

	while (i > 0) {
		uint32_t parent = (i - 1) / HEAP_ARITY;

		if (heap[parent].deadline <= e.deadline) {
			break;
		}
		heap[i] = heap[parent];
		i = parent;
	}
	heap[i] = e;
}

/* Place \p e at index \p i and move it down to where it belongs. */
static void heap_sift_down(struct poller_heap_entry *heap, uint32_t count, uint32_t i,
			   struct poller_heap_entry e)
{
	for (;;) {
		uint32_t child = i * HEAP_ARITY + 1;
		uint32_t best, end;

		if (child >= count) {
			break;
		}
		best = child;
		end = child + HEAP_ARITY < count ? child + HEAP_ARITY : count;
		for (uint32_t j = child + 1; j < end; j++) {
			if (heap[j].deadline < heap[best].deadline) {
				best = j;
			}
		}
		if (heap[best].deadline >= e.deadline) {
			break;
		}
		heap[i] = heap[best];
		i = best;
	}
	heap[i] = e;
}

static void heap_pop(struct keel_thread *thread)
{
	thread->heap_count--;
	if (thread->heap_count > 0) {
		heap_sift_down(thread->heap, thread->heap_count, 0,
			       thread->heap[thread->heap_count]);
	}
}

static void heap_heapify(struct poller_heap_entry *heap, uint32_t count)
{
	if (count < 2) {
		return;
	}
	for (uint32_t i = (count - 2) / HEAP_ARITY + 1; i-- > 0;) {
		heap_sift_down(heap, count, i, heap[i]);
	}
}

/* ------------------------------------------------------------------------------ */
/* Run queue and parking                                                           */
/* ------------------------------------------------------------------------------ */

/* Without period and without an event fd: runs on every iteration. */
static inline bool poller_is_always(const struct keel_poller *poller)
{
	return poller->period_ns == 0 && poller->fd_mode != POLLER_FD_EVENT;
}

static void poller_park(struct keel_thread *thread, struct keel_poller *poller)
{
	poller->parked = true;
	thread->parked++;
	if (thread->reactor != NULL) {
		reactor_fd_parked_add(thread->reactor, 1);
	}
}

static void poller_unpark(struct keel_thread *thread, struct keel_poller *poller)
{
	if (!poller->parked) {
		return;
	}
	poller->parked = false;
	thread->parked--;
	if (thread->reactor != NULL) {
		reactor_fd_parked_add(thread->reactor, -1);
	}
}

/* Capacity for every live poller was reserved at registration: this cannot fail. */
static void poller_queue(struct keel_thread *thread, struct keel_poller *poller)
{
	if (poller->queued) {
		return;
	}
	poller_unpark(thread, poller);
	poller->queued = true;
	assert(thread->runq_count < thread->poller_cap);
	thread->runq[thread->runq_count++] = poller;
}

void krt_poller_fd_ready(struct keel_poller *poller)
{
	if (poller->fd_mode == POLLER_FD_EVENT && poller->state == POLLER_ACTIVE) {
		poller_queue(poller->thread, poller);
	}
}

static void poller_poll_batch(struct keel_thread *thread, struct pollfd *fds,
			      struct keel_poller **who, uint32_t n)
{
	if (poll(fds, n, 0) <= 0) {
		return; /* nothing ready, or EINTR: the next poll looks again */
	}
	for (uint32_t i = 0; i < n; i++) {
		if (fds[i].revents != 0) {
			poller_queue(thread, who[i]);
		}
	}
}

void krt_poller_check_parked_fds(struct keel_thread *thread)
{
	struct pollfd fds[64];
	struct keel_poller *who[64];
	struct keel_poller *poller;
	uint32_t n = 0;

	TAILQ_FOREACH(poller, &thread->pollers, link) {
		if (!poller->parked) {
			continue;
		}
		/* The EPOLL* bits below 0x10000 have the values of their POLL* twins. */
		fds[n].fd = poller->fd;
		fds[n].events = (short)(poller->fd_events &
					(POLLIN | POLLPRI | POLLOUT | POLLRDHUP));
		fds[n].revents = 0;
		who[n++] = poller;
		if (n == 64) {
			poller_poll_batch(thread, fds, who, n);
			n = 0;
		}
	}
	if (n > 0) {
		poller_poll_batch(thread, fds, who, n);
	}
}

/* ------------------------------------------------------------------------------ */
/* Dispatch                                                                        */
/* ------------------------------------------------------------------------------ */

/*
 * One run of a due poller, counted for the stats. Its name is published first so the
 * watchdog can name a poller that hangs. \return 1 if it did work, else 0.
 */
static inline int poller_call(struct reactor *reactor, struct keel_poller *poller)
{
	int rc;

	if (reactor != NULL) {
		atomic_store_explicit(&reactor->hb_poller, poller->name, memory_order_release);
	}
	rc = poller->fn(poller->arg);
	poller->run_count++;
	poller->busy_count += rc > 0;
	return rc > 0;
}

int krt_poller_run_active(struct keel_thread *thread)
{
	struct reactor *reactor = thread->reactor;
	uint32_t n = thread->active_count;
	int busy = 0;

	if (reactor != NULL) {
		atomic_store_explicit(&reactor->hb_thread, thread->name, memory_order_release);
	}
	/* The array is not modified during the loop: changes are deferred to the fixup. */
	for (uint32_t i = 0; i < n; i++) {
		struct keel_poller *poller = thread->active[i];

		if (keel_unlikely(poller->state != POLLER_ACTIVE)) {
			continue;
		}
		busy += poller_call(reactor, poller);
	}
	return busy;
}

/* Drop the heap top: the fixup re-inserts it if it is still armed and active. */
static void poller_heap_drop_top(struct keel_thread *thread, struct keel_poller *poller)
{
	heap_pop(thread);
	poller->where = POLLER_IN_NONE;
}

int krt_poller_run_timed(struct keel_thread *thread, uint64_t now)
{
	struct reactor *reactor = thread->reactor;
	int busy = 0;

	if (reactor != NULL) {
		atomic_store_explicit(&reactor->hb_thread, thread->name, memory_order_release);
	}
	while (thread->heap_count != 0 && thread->heap[0].deadline <= now) {
		struct keel_poller *poller = thread->heap[0].poller;
		uint64_t next;

		if (keel_unlikely(poller->state != POLLER_ACTIVE || poller->timer_dirty)) {
			/* Paused, unregistered or re-armed by a callback: the fixup owns it now. */
			poller_heap_drop_top(thread, poller);
			continue;
		}
		if (poller->fd_mode == POLLER_FD_EVENT) {
			/* Its deadline is one more reason to run: the queued pass runs it. */
			poller_queue(thread, poller);
		} else {
			busy += poller_call(reactor, poller);
			if (keel_unlikely(poller->state != POLLER_ACTIVE || poller->timer_dirty)) {
				poller_heap_drop_top(thread, poller);
				continue;
			}
		}
		if (poller->period_ns == 0) {
			/* One-shot deadline from keel_poller_arm(). */
			poller->armed = false;
			poller_heap_drop_top(thread, poller);
			continue;
		}
		/* Anchored to the previous deadline so no drift accumulates. */
		next = thread->heap[0].deadline + poller->period_ns;
		if (keel_unlikely(next <= now)) {
			/* More than a period behind: skip to the next future deadline, no burst. */
			next += ((now - next) / poller->period_ns + 1) * poller->period_ns;
		}
		poller->deadline = next;
		heap_sift_down(thread->heap, thread->heap_count, 0,
			       (struct poller_heap_entry){.deadline = next, .poller = poller});
	}
	return busy;
}

int krt_poller_run_queued(struct keel_thread *thread)
{
	struct reactor *reactor = thread->reactor;
	uint32_t n = thread->runq_count, kept = 0;
	int busy = 0;

	if (reactor != NULL) {
		atomic_store_explicit(&reactor->hb_thread, thread->name, memory_order_release);
	}
	/*
	 * Only the first n entries run now: a poller queued by a callback during this pass
	 * runs at the next one, so two pollers waking each other cannot hold the loop.
	 * Callbacks that register pollers may reallocate the array: it is re-read on
	 * every step.
	 */
	for (uint32_t i = 0; i < n; i++) {
		struct keel_poller *poller = thread->runq[i];
		int rc;

		if (keel_unlikely(poller->state != POLLER_ACTIVE)) {
			poller->queued = false;
			continue;
		}
		rc = poller_call(reactor, poller);
		busy += rc;
		if (poller->state != POLLER_ACTIVE) {
			poller->queued = false;
		} else if (rc > 0 && poller->period_ns == 0) {
			/* Busy: it runs again next iteration, without waiting for its fd. A
			 * poller with a period is paced by it instead: busy or not, it waits
			 * for its fd or its next deadline. */
			thread->runq[kept++] = poller;
		} else {
			poller->queued = false;
			poller_park(thread, poller);
		}
	}
	if (kept != n) {
		memmove(&thread->runq[kept], &thread->runq[n],
			(thread->runq_count - n) * sizeof(*thread->runq));
		thread->runq_count -= n - kept;
	}
	return busy;
}

uint64_t krt_poller_next_deadline(struct keel_thread *thread)
{
	return thread->heap_count != 0 ? thread->heap[0].deadline : UINT64_MAX;
}

/* ------------------------------------------------------------------------------ */
/* Structure changes                                                               */
/* ------------------------------------------------------------------------------ */

/*
 * Every dispatch array can hold every live poller of the thread, so inserting into
 * one (fixup, wake, fd readiness) never allocates and never fails.
 */
static int poller_reserve(struct keel_thread *thread, uint32_t need)
{
	struct poller_heap_entry *heap;
	struct keel_poller **a;
	uint32_t cap = thread->poller_cap ? thread->poller_cap : 16;

	if (need <= thread->poller_cap) {
		return 0;
	}
	while (cap < need) {
		cap *= 2;
	}
	a = realloc(thread->active, cap * sizeof(*a));
	if (a == NULL) {
		return -ENOMEM;
	}
	thread->active = a;
	heap = realloc(thread->heap, cap * sizeof(*heap));
	if (heap == NULL) {
		return -ENOMEM;
	}
	thread->heap = heap;
	a = realloc(thread->runq, cap * sizeof(*a));
	if (a == NULL) {
		return -ENOMEM;
	}
	thread->runq = a;
	thread->poller_cap = cap;
	return 0;
}

static void poller_insert(struct keel_thread *thread, struct keel_poller *poller, uint64_t now)
{
	if (poller_is_always(poller)) {
		thread->active[thread->active_count++] = poller;
		poller->where = POLLER_IN_ACTIVE;
	} else if (poller->armed) {
		if (poller->period_start) {
			/* Pollers placed by one fixup share their first deadline. */
			poller->period_start = false;
			poller->deadline = now + poller->period_ns;
		}
		thread->heap[thread->heap_count] = (struct poller_heap_entry){
			.deadline = poller->deadline, .poller = poller};
		heap_sift_up(thread->heap, thread->heap_count++);
		poller->where = POLLER_IN_HEAP;
	}
}

static void poller_destroy(struct keel_thread *thread, struct keel_poller *poller)
{
	TAILQ_REMOVE(&thread->pollers, poller, link);
	thread->poller_count--;
	poller_unpark(thread, poller);
	if (poller->fd >= 0 && thread->reactor != NULL) {
		krt_reactor_epoll_del(thread->reactor, poller->fd);
	}
	if (thread->reactor != NULL) {
		krt_reactor_hb_quiesce(thread->reactor);
	}
	free(poller);
}

void krt_poller_fixup(struct keel_thread *thread, uint64_t now)
{
	struct keel_poller *poller, *tmp;
	uint32_t i, j;

	assert(!thread->polling);
	thread->dirty = false;

	for (i = 0, j = 0; i < thread->active_count; i++) {
		poller = thread->active[i];
		if (poller->state == POLLER_ACTIVE && poller_is_always(poller)) {
			thread->active[j++] = poller;
		} else {
			poller->where = POLLER_IN_NONE;
		}
	}
	thread->active_count = j;

	for (i = 0, j = 0; i < thread->heap_count; i++) {
		poller = thread->heap[i].poller;
		if (poller->state == POLLER_ACTIVE && poller->armed && !poller->timer_dirty) {
			thread->heap[j++] = thread->heap[i];
		} else {
			poller->where = POLLER_IN_NONE;
		}
	}
	if (j != thread->heap_count) {
		thread->heap_count = j;
		heap_heapify(thread->heap, j);
	}

	for (i = 0, j = 0; i < thread->runq_count; i++) {
		poller = thread->runq[i];
		if (poller->state == POLLER_ACTIVE) {
			thread->runq[j++] = poller;
		} else {
			poller->queued = false;
		}
	}
	thread->runq_count = j;

	/* Registration order is kept: new and resumed pollers join in list order. */
	TAILQ_FOREACH_SAFE(poller, &thread->pollers, link, tmp) {
		poller->timer_dirty = false; /* its stale heap entry, if any, is gone above */
		if (poller->where != POLLER_IN_NONE) {
			continue;
		}
		if (poller->state == POLLER_UNREGISTERED) {
			poller_destroy(thread, poller);
		} else if (poller->state == POLLER_ACTIVE) {
			poller_insert(thread, poller, now);
		}
	}
}

void krt_poller_free_all(struct keel_thread *thread)
{
	struct keel_poller *poller;

	while ((poller = TAILQ_FIRST(&thread->pollers)) != NULL) {
		poller_destroy(thread, poller);
	}
	thread->active_count = 0;
	thread->heap_count = 0;
	thread->runq_count = 0;
	thread->dirty = false;
}

static void poller_changed(struct keel_thread *thread)
{
	thread->dirty = true;
	if (!thread->polling) {
		krt_poller_fixup(thread, keel_now_ns());
	}
}

/* now + delay, saturating: a huge delay means "never", not a deadline in the past. */
static uint64_t poller_deadline_after(uint64_t delay_ns)
{
	uint64_t now = keel_now_ns();

	return delay_ns > UINT64_MAX - now ? UINT64_MAX : now + delay_ns;
}

struct keel_poller *keel_poller_register(keel_poller_fn fn, void *arg, uint64_t period_us,
					 const char *name)
{
	struct keel_thread *thread = krt_thread_tls_current;
	struct keel_poller *poller;

	if (thread == NULL) {
		KEEL_ERRLOG("poller %s: registered outside a keel thread", name ? name : "?");
		return NULL;
	}
	if (fn == NULL || period_us > UINT64_MAX / 1000) {
		return NULL;
	}
	if (poller_reserve(thread, thread->poller_count + 1) != 0) {
		return NULL;
	}
	poller = aligned_alloc(KEEL_CACHE_LINE, (sizeof(*poller) + KEEL_CACHE_LINE - 1) /
							KEEL_CACHE_LINE * KEEL_CACHE_LINE);
	if (poller == NULL) {
		return NULL;
	}
	memset(poller, 0, sizeof(*poller));
	poller->fn = fn;
	poller->arg = arg;
	poller->state = POLLER_ACTIVE;
	poller->where = POLLER_IN_NONE;
	poller->period_us = period_us;
	poller->period_ns = period_us * 1000;
	if (poller->period_ns != 0) {
		poller->armed = true;
		poller->period_start = true;
	}
	poller->thread = thread;
	poller->fd = -1;
	snprintf(poller->name, sizeof(poller->name), "%s", name ? name : "poller");
	TAILQ_INSERT_TAIL(&thread->pollers, poller, link);
	thread->poller_count++;
	poller_changed(thread);
	return poller;
}

void keel_poller_unregister(struct keel_poller **ppoller)
{
	struct keel_poller *poller;
	struct keel_thread *thread;

	if (ppoller == NULL || *ppoller == NULL) {
		return;
	}
	poller = *ppoller;
	*ppoller = NULL;
	thread = poller->thread;
	assert(thread == krt_thread_tls_current);
	if (poller->state == POLLER_UNREGISTERED) {
		return;
	}
	/* The caller may close the fd right after this returns: drop it from epoll now. */
	if (poller->fd >= 0) {
		if (thread->reactor != NULL && poller->state != POLLER_PAUSED) {
			krt_reactor_epoll_del(thread->reactor, poller->fd);
		}
		poller->fd = -1;
	}
	poller_unpark(thread, poller);
	poller->state = POLLER_UNREGISTERED;
	poller_changed(thread);
}

void keel_poller_pause(struct keel_poller *poller)
{
	struct keel_thread *thread = poller->thread;

	assert(thread == krt_thread_tls_current);
	if (poller->state != POLLER_ACTIVE) {
		return;
	}
	poller->state = POLLER_PAUSED;
	/* A ready level-triggered fd would keep waking a reactor that must not run it. */
	if (poller->fd >= 0 && thread->reactor != NULL) {
		krt_reactor_epoll_del(thread->reactor, poller->fd);
	}
	poller_unpark(thread, poller);
	poller_changed(thread);
}

void keel_poller_resume(struct keel_poller *poller)
{
	struct keel_thread *thread = poller->thread;

	assert(thread == krt_thread_tls_current);
	if (poller->state != POLLER_PAUSED) {
		return;
	}
	poller->state = POLLER_ACTIVE;
	if (poller->fd >= 0 && thread->reactor != NULL &&
	    krt_reactor_epoll_add(thread->reactor, poller->fd, poller->fd_events, poller) != 0) {
		KEEL_ERRLOG("poller %s: cannot re-arm fd %d on resume", poller->name, poller->fd);
	}
	if (poller->period_ns != 0 && poller->armed) {
		/* The period restarts: a resumed poller does not run a missed deadline at once. */
		poller->period_start = true;
		poller->timer_dirty = true;
	}
	if (poller->fd_mode == POLLER_FD_EVENT) {
		/* Whatever happened while paused (wake-ups were ignored) is looked at once. */
		poller_queue(thread, poller);
	}
	poller_changed(thread);
}

static int poller_set_fd(struct keel_poller *poller, int fd, uint32_t events, uint8_t mode)
{
	struct keel_thread *thread = poller->thread;
	int rc;

	assert(thread == krt_thread_tls_current);
	if (fd < 0) {
		return -EINVAL;
	}
	if (poller->fd >= 0) {
		return -EEXIST;
	}
	if (thread->reactor != NULL && poller->state != POLLER_PAUSED) {
		rc = krt_reactor_epoll_add(thread->reactor, fd, events, poller);
		if (rc != 0) {
			return rc;
		}
	}
	poller->fd = fd;
	poller->fd_events = events;
	poller->fd_mode = mode;
	if (mode == POLLER_FD_EVENT) {
		/* It runs once now, then when the fd says so: work queued at creation
		 * (a greeting to send) must not wait for readiness that may never come. */
		if (poller->state == POLLER_ACTIVE) {
			poller_queue(thread, poller);
		}
		if (poller->where == POLLER_IN_ACTIVE) {
			poller_changed(thread); /* leaves the every-iteration array */
		}
	}
	return 0;
}

int keel_poller_register_fd(struct keel_poller *poller, int fd, uint32_t events)
{
	return poller_set_fd(poller, fd, events, POLLER_FD_EVENT);
}

int keel_poller_register_wakeup_fd(struct keel_poller *poller, int fd, uint32_t events)
{
	return poller_set_fd(poller, fd, events, POLLER_FD_WAKEUP);
}

int keel_poller_modify_fd(struct keel_poller *poller, uint32_t events)
{
	struct keel_thread *thread = poller->thread;
	int rc;

	assert(thread == krt_thread_tls_current);
	if (poller->fd < 0) {
		return -ENOENT;
	}
	if (thread->reactor != NULL && poller->state != POLLER_PAUSED) {
		rc = krt_reactor_epoll_mod(thread->reactor, poller->fd, events, poller);
		if (rc != 0) {
			return rc;
		}
	}
	poller->fd_events = events;
	return 0;
}

void keel_poller_wake(struct keel_poller *poller)
{
	assert(poller->thread == krt_thread_tls_current);
	if (poller->state != POLLER_ACTIVE) {
		return;
	}
	if (poller->fd_mode == POLLER_FD_EVENT) {
		poller_queue(poller->thread, poller);
	} else if (poller->period_ns != 0) {
		(void)keel_poller_arm(poller, 0);
	}
}

int keel_poller_arm(struct keel_poller *poller, uint64_t delay_us)
{
	assert(poller->thread == krt_thread_tls_current);
	if (poller_is_always(poller)) {
		return -EINVAL;
	}
	poller->armed = true;
	poller->period_start = false;
	poller->deadline = poller_deadline_after(delay_us > UINT64_MAX / 1000 ? UINT64_MAX
									      : delay_us * 1000);
	poller->timer_dirty = true;
	poller_changed(poller->thread);
	return 0;
}

void keel_poller_disarm(struct keel_poller *poller)
{
	assert(poller->thread == krt_thread_tls_current);
	if (!poller->armed) {
		return;
	}
	poller->armed = false;
	poller->timer_dirty = true;
	poller_changed(poller->thread);
}
