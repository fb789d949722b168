/*
 * Monotonic time. The mock exists so the deterministic harness can drive timed
 * pollers without sleeping; reactors always read the real clock.
 */
#include <stdatomic.h>
#include <time.h>

#include "reactor_internal.h"

static _Atomic bool g_mock_enabled;
static _Atomic uint64_t g_mock_now;

uint64_t clock_monotonic_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

uint64_t keel_now_ns(void)
{
	if (keel_unlikely(atomic_load_explicit(&g_mock_enabled, memory_order_relaxed))) {
		return atomic_load_explicit(&g_mock_now, memory_order_relaxed);
	}
	return clock_monotonic_ns();
}

void clock_mock_enable(uint64_t now_ns)
{
	atomic_store(&g_mock_now, now_ns);
	atomic_store(&g_mock_enabled, true);
}

void clock_mock_disable(void)
{
	atomic_store(&g_mock_enabled, false);
}

void clock_mock_advance(uint64_t delta_ns)
{
	atomic_fetch_add(&g_mock_now, delta_ns);
}
