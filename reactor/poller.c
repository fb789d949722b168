/*
 * Pollers.
 *
 * Active pollers sit in a contiguous array so dispatch is a tight loop over
 * pointers. Timed pollers sit in a 4-ary min-heap whose entries hold the deadline
 * inline: checking "is anything due" touches one cache line, and a dispatch is one
 * sift-down of the top (the four children of a node share a cache line).
 *
 * Structural changes (register, pause, resume, unregister) made while the thread is
 * being polled only set state and mark the thread dirty; poller_fixup() applies them
 * after the dispatch loops. That is what makes unregistering or pausing a poller
 * from inside any poller callback (including its own) safe, and keeps the loops free
 * of bookkeeping. Outside a poll the fixup runs at once.
 */
#include <assert.h>
#include <errno.h>
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
		heap_sift_down(thread->heap, thread->heap_count, 0, thread->heap[thread->heap_count]);
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

int poller_run_active(struct keel_thread *thread)
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

int poller_run_timed(struct keel_thread *thread, uint64_t now)
{
	struct reactor *reactor = thread->reactor;
	int busy = 0;

	if (reactor != NULL) {
		atomic_store_explicit(&reactor->hb_thread, thread->name, memory_order_release);
	}
	while (thread->heap_count != 0 && thread->heap[0].deadline <= now) {
		struct keel_poller *poller = thread->heap[0].poller;
		uint64_t next;

		if (keel_unlikely(poller->state != POLLER_ACTIVE)) {
			/* Paused or unregistered by another callback: the fixup owns it now. */
			heap_pop(thread);
			poller->where = POLLER_IN_NONE;
			continue;
		}
		busy += poller_call(reactor, poller);
		if (keel_unlikely(poller->state != POLLER_ACTIVE)) {
			heap_pop(thread);
			poller->where = POLLER_IN_NONE;
			continue;
		}
		/* Anchored to the previous deadline so no drift accumulates. */
		next = thread->heap[0].deadline + poller->period_ns;
		if (keel_unlikely(next <= now)) {
			/* More than a period behind: skip to the next future deadline, no burst. */
			next += ((now - next) / poller->period_ns + 1) * poller->period_ns;
		}
		heap_sift_down(thread->heap, thread->heap_count, 0,
			       (struct poller_heap_entry){.deadline = next, .poller = poller});
	}
	return busy;
}

uint64_t poller_next_deadline(struct keel_thread *thread)
{
	return thread->heap_count != 0 ? thread->heap[0].deadline : UINT64_MAX;
}

/* ------------------------------------------------------------------------------ */
/* Structure changes                                                               */
/* ------------------------------------------------------------------------------ */

static int poller_insert(struct keel_thread *thread, struct keel_poller *poller, uint64_t now)
{
	if (poller->period_ns == 0) {
		if (thread->active_count == thread->active_cap) {
			uint32_t cap = thread->active_cap ? thread->active_cap * 2 : 16;
			struct keel_poller **a = realloc(thread->active, cap * sizeof(*a));

			if (a == NULL) {
				return -ENOMEM;
			}
			thread->active = a;
			thread->active_cap = cap;
		}
		thread->active[thread->active_count++] = poller;
		poller->where = POLLER_IN_ACTIVE;
	} else {
		if (thread->heap_count == thread->heap_cap) {
			uint32_t cap = thread->heap_cap ? thread->heap_cap * 2 : 16;
			struct poller_heap_entry *h = realloc(thread->heap, cap * sizeof(*h));

			if (h == NULL) {
				return -ENOMEM;
			}
			thread->heap = h;
			thread->heap_cap = cap;
		}
		thread->heap[thread->heap_count] =
			(struct poller_heap_entry){.deadline = now + poller->period_ns, .poller = poller};
		heap_sift_up(thread->heap, thread->heap_count++);
		poller->where = POLLER_IN_HEAP;
	}
	return 0;
}

static void poller_destroy(struct keel_thread *thread, struct keel_poller *poller)
{
	TAILQ_REMOVE(&thread->pollers, poller, link);
	thread->poller_count--;
	if (poller->fd >= 0 && thread->reactor != NULL) {
		reactor_epoll_del(thread->reactor, poller->fd);
	}
	if (thread->reactor != NULL) {
		reactor_hb_quiesce(thread->reactor);
	}
	free(poller);
}

void poller_fixup(struct keel_thread *thread, uint64_t now)
{
	struct keel_poller *poller, *tmp;
	uint32_t i, j;

	assert(!thread->polling);
	thread->dirty = false;

	for (i = 0, j = 0; i < thread->active_count; i++) {
		poller = thread->active[i];
		if (poller->state == POLLER_ACTIVE) {
			thread->active[j++] = poller;
		} else {
			poller->where = POLLER_IN_NONE;
		}
	}
	thread->active_count = j;

	for (i = 0, j = 0; i < thread->heap_count; i++) {
		poller = thread->heap[i].poller;
		if (poller->state == POLLER_ACTIVE) {
			thread->heap[j++] = thread->heap[i];
		} else {
			poller->where = POLLER_IN_NONE;
		}
	}
	if (j != thread->heap_count) {
		thread->heap_count = j;
		heap_heapify(thread->heap, j);
	}

	/* Registration order is kept: new and resumed pollers join in list order. */
	TAILQ_FOREACH_SAFE(poller, &thread->pollers, link, tmp) {
		if (poller->where != POLLER_IN_NONE) {
			continue;
		}
		if (poller->state == POLLER_UNREGISTERED) {
			poller_destroy(thread, poller);
		} else if (poller->state == POLLER_ACTIVE) {
			if (poller_insert(thread, poller, now) != 0) {
				/* Keep it pending; the next poll tries again. */
				thread->dirty = true;
			}
		}
	}
}

void poller_free_all(struct keel_thread *thread)
{
	struct keel_poller *poller;

	while ((poller = TAILQ_FIRST(&thread->pollers)) != NULL) {
		poller_destroy(thread, poller);
	}
	thread->active_count = 0;
	thread->heap_count = 0;
	thread->dirty = false;
}

static void poller_changed(struct keel_thread *thread)
{
	thread->dirty = true;
	if (!thread->polling) {
		poller_fixup(thread, keel_now_ns());
	}
}

struct keel_poller *keel_poller_register(keel_poller_fn fn, void *arg, uint64_t period_us,
					 const char *name)
{
	struct keel_thread *thread = thread_tls_current;
	struct keel_poller *poller;

	if (thread == NULL) {
		KEEL_ERRLOG("poller %s: registered outside a keel thread", name ? name : "?");
		return NULL;
	}
	if (fn == NULL) {
		return NULL;
	}
	poller = aligned_alloc(KEEL_CACHE_LINE, (sizeof(*poller) + KEEL_CACHE_LINE - 1) / KEEL_CACHE_LINE * KEEL_CACHE_LINE);
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
	poller->thread = thread;
	poller->fd = -1;
	snprintf(poller->name, sizeof(poller->name), "%s", name ? name : "poller");
	TAILQ_INSERT_TAIL(&thread->pollers, poller, link);
	thread->poller_count++;
	poller_changed(thread);
	if (!thread->polling && poller->where == POLLER_IN_NONE) {
		/* Insert failed for lack of memory. */
		TAILQ_REMOVE(&thread->pollers, poller, link);
		thread->poller_count--;
		thread->dirty = false;
		free(poller);
		return NULL;
	}
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
	assert(thread == thread_tls_current);
	if (poller->state == POLLER_UNREGISTERED) {
		return;
	}
	/* The caller may close the fd right after this returns: drop it from epoll now. */
	if (poller->fd >= 0) {
		if (thread->reactor != NULL) {
			reactor_epoll_del(thread->reactor, poller->fd);
		}
		poller->fd = -1;
	}
	poller->state = POLLER_UNREGISTERED;
	poller_changed(thread);
}

void keel_poller_pause(struct keel_poller *poller)
{
	assert(poller->thread == thread_tls_current);
	if (poller->state != POLLER_ACTIVE) {
		return;
	}
	poller->state = POLLER_PAUSED;
	/* A ready level-triggered fd would keep waking a reactor that must not run it. */
	if (poller->fd >= 0 && poller->thread->reactor != NULL) {
		reactor_epoll_del(poller->thread->reactor, poller->fd);
	}
	poller_changed(poller->thread);
}

void keel_poller_resume(struct keel_poller *poller)
{
	assert(poller->thread == thread_tls_current);
	if (poller->state != POLLER_PAUSED) {
		return;
	}
	poller->state = POLLER_ACTIVE;
	if (poller->fd >= 0 && poller->thread->reactor != NULL &&
	    reactor_epoll_add(poller->thread->reactor, poller->fd, poller->fd_events, poller) != 0) {
		KEEL_ERRLOG("poller %s: cannot re-arm fd %d on resume", poller->name, poller->fd);
	}
	if (poller->where == POLLER_IN_NONE) {
		poller_changed(poller->thread);
	}
}

int keel_poller_register_fd(struct keel_poller *poller, int fd, uint32_t events)
{
	struct keel_thread *thread = poller->thread;
	int rc;

	assert(thread == thread_tls_current);
	if (fd < 0) {
		return -EINVAL;
	}
	if (poller->fd >= 0) {
		return -EEXIST;
	}
	if (thread->reactor != NULL && poller->state != POLLER_PAUSED) {
		rc = reactor_epoll_add(thread->reactor, fd, events, poller);
		if (rc != 0) {
			return rc;
		}
	}
	poller->fd = fd;
	poller->fd_events = events;
	return 0;
}

int keel_poller_modify_fd(struct keel_poller *poller, uint32_t events)
{
	struct keel_thread *thread = poller->thread;
	int rc;

	assert(thread == thread_tls_current);
	if (poller->fd < 0) {
		return -ENOENT;
	}
	if (thread->reactor != NULL && poller->state != POLLER_PAUSED) {
		rc = reactor_epoll_mod(thread->reactor, poller->fd, events, poller);
		if (rc != 0) {
			return rc;
		}
	}
	poller->fd_events = events;
	return 0;
}
