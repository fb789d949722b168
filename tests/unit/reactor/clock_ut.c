/*
 * The tick clock (keel_ticks): its one calibration converts tick intervals to the
 * nanoseconds CLOCK_MONOTONIC measures around them.
 */
#include <stdint.h>
#include <unistd.h>

#include "keel/reactor.h"
#include "ut_cunit.h"

static void test_ticks_calibrated(void)
{
	double per_us = keel_ticks_per_us();

	CU_ASSERT(per_us >= 1.0);
	CU_ASSERT(keel_ticks_per_us() == per_us); /* measured once */
	CU_ASSERT(keel_ticks_to_ns(0) == 0);
}

/*
 * The tick interval lies between two clock intervals: the inner one (clock read
 * after the first tick and before the second) and the outer one. Preemption on a
 * loaded machine widens the outer bracket, never inverts it, so only the
 * calibration error is checked, not how long anything took.
 */
static void test_ticks_to_ns_brackets(void)
{
	for (int round = 0; round < 3; round++) {
		uint64_t a = keel_now_ns();
		uint64_t t0 = keel_ticks();
		uint64_t b = keel_now_ns();
		uint64_t c, d, t1, ns;

		usleep(20000);
		c = keel_now_ns();
		t1 = keel_ticks();
		d = keel_now_ns();
		CU_ASSERT_FATAL(t1 >= t0);
		ns = keel_ticks_to_ns(t1 - t0);
		CU_ASSERT((double)ns >= (double)(c - b) * 0.99);
		CU_ASSERT((double)ns <= (double)(d - a) * 1.01);
	}
}

static void test_ticks_monotonic(void)
{
	uint64_t prev = keel_ticks();

	for (int i = 0; i < 100000; i++) {
		uint64_t now = keel_ticks();

		CU_ASSERT_FATAL(now >= prev);
		prev = now;
	}
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"ticks_calibrated", test_ticks_calibrated},
		{"ticks_to_ns_brackets", test_ticks_to_ns_brackets},
		{"ticks_monotonic", test_ticks_monotonic},
		{NULL, NULL},
	};

	return ut_cunit_run("clock", tests);
}
