/*
 * Watchdog: a plain pthread that notices a reactor stuck in one loop iteration.
 *
 * Each reactor publishes the start time of its current iteration and the names of
 * the thread and poller it is running (reactor.c, poller.c). A sleeping reactor is
 * never reported. Reading the names races with the reactor freeing a poller, so the
 * watchdog raises wd_reading around the copy and the reactor waits for it to drop
 * before freeing anything whose name may be published (krt_reactor_hb_quiesce).
 *
 * Liveness (keel_watchdog_set_liveness) is a stronger, active proof for a supervisor:
 * each period the thread notes every reactor's loop counter and pokes its eventfd, so
 * the reactor must finish one more iteration, asleep or awake; at the next period a
 * counter that did not move means that reactor is stuck or no longer wakes. Only then
 * does the watchdog wake reactors: without a liveness hook an idle reactor stays
 * asleep.
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
/* Liveness hook: set under g_wd_lock, called from the watchdog thread without it. */
static keel_liveness_fn g_wd_live_fn;
static void *g_wd_live_ctx;
static uint64_t g_wd_live_period_ns;
static bool g_wd_live_changed; /* the thread must forget its last probe */
/* Held across a call of the hook, so turning it off waits for a call in progress. */
static pthread_mutex_t g_wd_live_call_lock = PTHREAD_MUTEX_INITIALIZER;

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

int keel_watchdog_set_liveness(uint64_t period_us, keel_liveness_fn fn, void *ctx)
{
	bool on = fn != NULL && period_us != 0;

	if (on && period_us < 10000) {
		return -EINVAL;
	}
	if (!g_wd_running) {
		return on ? -ENOTSUP : 0;
	}
	pthread_mutex_lock(&g_wd_lock);
	g_wd_live_fn = on ? fn : NULL;
	g_wd_live_ctx = on ? ctx : NULL;
	g_wd_live_period_ns = on ? period_us * 1000 : 0;
	g_wd_live_changed = true;
	pthread_cond_signal(&g_wd_cond); /* the next deadline may be sooner */
	pthread_mutex_unlock(&g_wd_lock);
	/* A call that began before the change ends before we return. */
	pthread_mutex_lock(&g_wd_live_call_lock);
	pthread_mutex_unlock(&g_wd_live_call_lock);
	return 0;
}

struct wd_live {
	uint64_t *loops;  /* each reactor's loop counter at the last probe */
	bool probed;      /* a probe was sent since liveness was (re)configured */
	uint64_t next_ns; /* when the next check and probe are due; 0: not on */
};

/*
 * One liveness period: did every reactor loop since the last probe? Then probe again.
 * The counter is read before the poke, so the iteration that moves it began after
 * the read: a reactor that passes has looped within the last period.
 */
static bool watchdog_live_check(struct wd_live *live, uint32_t count)
{
	bool all = live->probed;

	for (uint32_t i = 0; i < count; i++) {
		struct reactor *reactor = krt_reactor_get(i);
		uint64_t loops;

		if (reactor == NULL) {
			all = false;
			continue;
		}
		loops = krt_reactor_loops(reactor);
		if (!live->probed || loops == live->loops[i]) {
			all = false;
		}
		live->loops[i] = loops;
		krt_reactor_poke(reactor);
	}
	live->probed = true;
	return all;
}

static void watchdog_live_run(struct wd_live *live, uint32_t count, uint64_t now)
{
	keel_liveness_fn fn;
	void *ctx;

	/* Under g_wd_lock. */
	if (g_wd_live_changed) {
		g_wd_live_changed = false;
		live->probed = false;
		live->next_ns = g_wd_live_fn != NULL ? now : 0;
	}
	if (live->next_ns == 0 || now < live->next_ns) {
		return;
	}
	live->next_ns = now + g_wd_live_period_ns;
	fn = g_wd_live_fn;
	ctx = g_wd_live_ctx;
	pthread_mutex_lock(&g_wd_live_call_lock);
	pthread_mutex_unlock(&g_wd_lock);
	if (watchdog_live_check(live, count)) {
		fn(ctx);
	}
	pthread_mutex_unlock(&g_wd_live_call_lock);
	pthread_mutex_lock(&g_wd_lock);
}

static void *watchdog_main(void *arg)
{
	uint32_t count = keel_reactor_count();
	uint64_t threshold_ns = (uint64_t)g_wd_threshold_ms * 1000000;
	uint64_t period_ns = threshold_ns / 4;
	struct wd_live live = {0};
	uint64_t last_check = 0;
	uint64_t *reported;

	(void)arg;
	pthread_setname_np(pthread_self(), "keel_watchdog");
	if (period_ns < 5000000) {
		period_ns = 5000000;
	}
	reported = calloc(count ? count : 1, sizeof(*reported));
	live.loops = calloc(count ? count : 1, sizeof(*live.loops));
	pthread_mutex_lock(&g_wd_lock);
	while (!g_wd_stop) {
		uint64_t now = krt_clock_monotonic_ns();
		uint64_t deadline = now + period_ns;
		struct timespec ts;

		if (reported == NULL || live.loops == NULL) {
			deadline = UINT64_MAX / 2; /* out of memory at start: only wait for stop */
		}
		if (live.next_ns != 0 && live.next_ns < deadline) {
			deadline = live.next_ns;
		}
		ts.tv_sec = (time_t)(deadline / 1000000000ULL);
		ts.tv_nsec = (long)(deadline % 1000000000ULL);
		pthread_cond_timedwait(&g_wd_cond, &g_wd_lock, &ts);
		if (g_wd_stop || reported == NULL || live.loops == NULL) {
			continue;
		}
		now = krt_clock_monotonic_ns();
		if (now >= last_check + period_ns) {
			last_check = now;
			pthread_mutex_unlock(&g_wd_lock);
			for (uint32_t i = 0; i < count; i++) {
				struct reactor *reactor = krt_reactor_get(i);

				if (reactor != NULL) {
					watchdog_check(reactor, &reported[i], threshold_ns);
				}
			}
			pthread_mutex_lock(&g_wd_lock);
		}
		watchdog_live_run(&live, count, krt_clock_monotonic_ns());
	}
	pthread_mutex_unlock(&g_wd_lock);
	free(live.loops);
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
	g_wd_live_fn = NULL;
	g_wd_live_ctx = NULL;
	g_wd_live_period_ns = 0;
	g_wd_live_changed = false;
}
