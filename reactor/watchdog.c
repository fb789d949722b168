/*
 * Watchdog: a plain pthread that notices a reactor stuck in one loop iteration.
 *
 * Each reactor publishes the start time of its current iteration and the names of
 * the thread and poller it is running (reactor.c, poller.c). A sleeping reactor is
 * never reported. Reading the names races with the reactor freeing a poller, so the
 * watchdog raises wd_reading around the copy and the reactor waits for it to drop
 * before freeing anything whose name may be published (krt_reactor_hb_quiesce).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "reactor_internal.h"

static pthread_t g_wd_thread;
static bool g_wd_running;
static pthread_mutex_t g_wd_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_wd_cond;
static bool g_wd_stop;
static uint32_t g_wd_threshold_ms;
static _Atomic uint64_t g_wd_reports;
/* Hook: set rarely from any thread, called from the watchdog thread. */
static pthread_mutex_t g_wd_hook_lock = PTHREAD_MUTEX_INITIALIZER;
static keel_watchdog_fn g_wd_hook;
static void *g_wd_hook_ctx;

void keel_watchdog_set_hook(keel_watchdog_fn fn, void *ctx)
{
	pthread_mutex_lock(&g_wd_hook_lock);
	g_wd_hook = fn;
	g_wd_hook_ctx = ctx;
	pthread_mutex_unlock(&g_wd_hook_lock);
}

uint64_t keel_watchdog_report_count(void)
{
	return atomic_load(&g_wd_reports);
}

static void watchdog_check(struct reactor *reactor, uint64_t *reported, uint64_t threshold_ns)
{
	char tname[KEEL_NAME_MAX], pname[KEEL_NAME_MAX];
	const char *t, *p;
	uint64_t start, now, stuck_ms;

	if (atomic_load(&reactor->sleeping)) {
		return;
	}
	start = atomic_load_explicit(&reactor->hb_start_ns, memory_order_relaxed);
	if (start == 0 || start == *reported) {
		return;
	}
	now = krt_clock_monotonic_ns();
	if (now <= start || now - start < threshold_ns) {
		return;
	}

	/* Pairs with krt_reactor_hb_quiesce(): all seq_cst, see there. */
	atomic_store(&reactor->wd_reading, 1);
	t = atomic_load(&reactor->hb_thread);
	p = atomic_load(&reactor->hb_poller);
	snprintf(tname, sizeof(tname), "%s", t != NULL ? t : "(none)");
	snprintf(pname, sizeof(pname), "%s", p != NULL ? p : "(none)");
	atomic_store(&reactor->wd_reading, 0);

	/* The iteration may have ended while we looked, or the reactor went to sleep. */
	if (atomic_load_explicit(&reactor->hb_start_ns, memory_order_relaxed) != start ||
	    atomic_load(&reactor->sleeping)) {
		return;
	}
	*reported = start;
	stuck_ms = (now - start) / 1000000;
	atomic_fetch_add(&g_wd_reports, 1);
	KEEL_WARNLOG("reactor %u: stuck for %llu ms in one iteration: thread %s, poller %s",
		     reactor->idx, (unsigned long long)stuck_ms, tname, pname);
	pthread_mutex_lock(&g_wd_hook_lock);
	if (g_wd_hook != NULL) {
		g_wd_hook(reactor->idx, tname, pname, stuck_ms, g_wd_hook_ctx);
	}
	pthread_mutex_unlock(&g_wd_hook_lock);
}

static void *watchdog_main(void *arg)
{
	uint32_t count = keel_reactor_count();
	uint64_t threshold_ns = (uint64_t)g_wd_threshold_ms * 1000000;
	uint64_t period_ns = threshold_ns / 4;
	uint64_t *reported;

	(void)arg;
	pthread_setname_np(pthread_self(), "keel_watchdog");
	if (period_ns < 5000000) {
		period_ns = 5000000;
	}
	reported = calloc(count ? count : 1, sizeof(*reported));
	pthread_mutex_lock(&g_wd_lock);
	while (!g_wd_stop) {
		uint64_t deadline = krt_clock_monotonic_ns() + period_ns;
		struct timespec ts;

		ts.tv_sec = (time_t)(deadline / 1000000000ULL);
		ts.tv_nsec = (long)(deadline % 1000000000ULL);
		pthread_cond_timedwait(&g_wd_cond, &g_wd_lock, &ts);
		if (g_wd_stop || reported == NULL) {
			continue;
		}
		pthread_mutex_unlock(&g_wd_lock);
		for (uint32_t i = 0; i < count; i++) {
			struct reactor *reactor = krt_reactor_get(i);

			if (reactor != NULL) {
				watchdog_check(reactor, &reported[i], threshold_ns);
			}
		}
		pthread_mutex_lock(&g_wd_lock);
	}
	pthread_mutex_unlock(&g_wd_lock);
	free(reported);
	return NULL;
}

int krt_watchdog_start(uint32_t threshold_ms)
{
	pthread_condattr_t attr;
	int rc;

	if (g_wd_running) {
		return 0;
	}
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&g_wd_cond, &attr);
	pthread_condattr_destroy(&attr);
	g_wd_threshold_ms = threshold_ms;
	g_wd_stop = false;
	rc = pthread_create(&g_wd_thread, NULL, watchdog_main, NULL);
	if (rc != 0) {
		pthread_cond_destroy(&g_wd_cond);
		return -rc;
	}
	g_wd_running = true;
	return 0;
}

void krt_watchdog_stop(void)
{
	if (!g_wd_running) {
		return;
	}
	pthread_mutex_lock(&g_wd_lock);
	g_wd_stop = true;
	pthread_cond_signal(&g_wd_cond);
	pthread_mutex_unlock(&g_wd_lock);
	pthread_join(g_wd_thread, NULL);
	pthread_cond_destroy(&g_wd_cond);
	g_wd_running = false;
}
