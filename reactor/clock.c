/*
 * Monotonic time, and the one calibration of the fast tick clock (keel_ticks).
 * keel_now_ns() reads its clock through a pointer so the deterministic harness can
 * install one it advances by hand (timed pollers without sleeping); reactors always
 * read the real clock.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "reactor_internal.h"

/* Long enough that the error of the two end readings (tens of ns) stays ~1e-5. */
#define TICKS_CALIBRATE_NS 2000000ull
/* Readings per end of the calibration; the tightest pair is kept. */
#define TICKS_SAMPLE_TRIES 8

static _Atomic krt_clock_fn g_now_source = krt_clock_monotonic_ns;

static pthread_once_t g_ticks_once = PTHREAD_ONCE_INIT;
static double g_ticks_per_us = 1000.0;
static double g_ns_per_tick = 1.0;

uint64_t krt_clock_monotonic_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

uint64_t keel_now_ns(void)
{
	return atomic_load_explicit(&g_now_source, memory_order_relaxed)();
}

void krt_clock_set_source(krt_clock_fn now)
{
	atomic_store(&g_now_source, now != NULL ? now : krt_clock_monotonic_ns);
}

#if defined(__x86_64__)
/* A (CLOCK_MONOTONIC, tick) pair read as close together as we can get them: of a
 * few tries, the tick reading with the narrowest clock bracket around it, so a
 * preemption between two reads cannot skew the calibration. */
static void ticks_sample(uint64_t *ns, uint64_t *ticks)
{
	uint64_t best = UINT64_MAX;

	for (int i = 0; i < TICKS_SAMPLE_TRIES; i++) {
		uint64_t a = krt_clock_monotonic_ns();
		uint64_t t = keel_ticks();
		uint64_t b = krt_clock_monotonic_ns();

		if (b - a < best) {
			best = b - a;
			*ns = a + (b - a) / 2;
			*ticks = t;
		}
	}
}
#endif

/* Against the raw clock: keel_now_ns() may be mocked under the test harness. */
static void ticks_calibrate(void)
{
	double per_us = 1000.0;
#if defined(__x86_64__)
	uint64_t ns0 = 0, t0 = 0, ns1 = 0, t1 = 0;

	ticks_sample(&ns0, &t0);
	do {
		ticks_sample(&ns1, &t1);
	} while (ns1 - ns0 < TICKS_CALIBRATE_NS);
	if (t1 > t0) {
		per_us = (double)(t1 - t0) * 1000.0 / (double)(ns1 - ns0);
	}
#endif
	if (per_us < 1.0) {
		per_us = 1.0;
	}
	g_ticks_per_us = per_us;
	g_ns_per_tick = 1000.0 / per_us;
}

double keel_ticks_per_us(void)
{
	pthread_once(&g_ticks_once, ticks_calibrate);
	return g_ticks_per_us;
}

uint64_t keel_ticks_to_ns(uint64_t ticks)
{
	pthread_once(&g_ticks_once, ticks_calibrate);
	return (uint64_t)((double)ticks * g_ns_per_tick);
}
