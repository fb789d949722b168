/*
 * Deterministic harness, see ut_threads.h.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "reactor/reactor_internal.h"
#include "ut_threads.h"

#define UT_MAX_ROUNDS 1000000
#define UT_MOCK_START_NS 1000000000ULL

static struct keel_thread **g_ut_threads;
static uint32_t g_ut_count;
static _Atomic uint64_t g_ut_now; /* the clock of keel_now_ns() while the harness runs */

static uint64_t ut_clock_now(void)
{
	return atomic_load_explicit(&g_ut_now, memory_order_relaxed);
}

int ut_threads_init_ring(uint32_t n, uint32_t msg_ring_size)
{
	char name[32];
	int rc;

	atomic_store(&g_ut_now, UT_MOCK_START_NS);
	krt_clock_set_source(ut_clock_now);
	rc = keel_thread_lib_init(msg_ring_size);
	if (rc != 0) {
		goto out_restore_clock;
	}
	g_ut_threads = calloc(n ? n : 1, sizeof(*g_ut_threads));
	if (g_ut_threads == NULL) {
		rc = -ENOMEM;
		goto out_fini_lib;
	}
	g_ut_count = n;
	for (uint32_t i = 0; i < n; i++) {
		snprintf(name, sizeof(name), "ut_thread_%u", i);
		g_ut_threads[i] = keel_thread_create(name, KEEL_REACTOR_ANY);
		if (g_ut_threads[i] == NULL) {
			rc = -ENOMEM;
			goto out_fini_lib;
		}
	}
	ut_set_thread(0);
	return 0;

out_fini_lib:
	keel_set_current_thread(NULL);
	keel_thread_lib_fini(); /* frees the threads created so far */
	free(g_ut_threads);
	g_ut_threads = NULL;
	g_ut_count = 0;
out_restore_clock:
	krt_clock_set_source(NULL);
	return rc;
}

int ut_threads_init(uint32_t n)
{
	return ut_threads_init_ring(n, 0);
}

struct keel_thread *ut_thread(uint32_t i)
{
	return i < g_ut_count ? g_ut_threads[i] : NULL;
}

uint32_t ut_threads_count(void)
{
	return g_ut_count;
}

void ut_set_thread(uint32_t i)
{
	keel_set_current_thread(ut_thread(i));
}

int ut_poll_thread(uint32_t i)
{
	struct keel_thread *thread = ut_thread(i);
	bool destroyed;
	int work;

	if (thread == NULL) {
		return 0;
	}
	work = krt_thread_poll(thread, keel_now_ns(), &destroyed);
	if (destroyed) {
		g_ut_threads[i] = NULL;
		if (keel_thread_get_current() == thread) {
			keel_set_current_thread(NULL);
		}
	}
	return work;
}

int ut_poll_threads(void)
{
	int total = 0;

	for (int round = 0; round < UT_MAX_ROUNDS; round++) {
		int work = 0;

		for (uint32_t i = 0; i < g_ut_count; i++) {
			work += ut_poll_thread(i);
		}
		total += work;
		if (work == 0) {
			break;
		}
	}
	return total;
}

void ut_time_advance_us(uint64_t us)
{
	atomic_fetch_add(&g_ut_now, us * 1000);
}

uint64_t ut_time_now_ns(void)
{
	return ut_clock_now();
}

static bool ut_threads_all_gone(void)
{
	for (uint32_t i = 0; i < g_ut_count; i++) {
		if (g_ut_threads[i] != NULL) {
			return false;
		}
	}
	return true;
}

void ut_threads_fini(void)
{
	for (uint32_t i = 0; i < g_ut_count; i++) {
		struct keel_thread *thread = g_ut_threads[i];

		if (thread != NULL && !keel_thread_is_exited(thread)) {
			keel_set_current_thread(thread);
			keel_thread_exit(thread);
		}
	}
	keel_set_current_thread(NULL);
	/* Threads with leftovers are destroyed after the grace period: jump past it. */
	for (int attempt = 0; attempt < 3 && !ut_threads_all_gone(); attempt++) {
		ut_poll_threads();
		if (!ut_threads_all_gone()) {
			ut_time_advance_us(THREAD_EXIT_GRACE_NS / 1000 + 1000);
			ut_poll_threads();
		}
	}
	keel_set_current_thread(NULL);
	keel_thread_lib_fini();
	free(g_ut_threads);
	g_ut_threads = NULL;
	g_ut_count = 0;
	krt_clock_set_source(NULL);
}
