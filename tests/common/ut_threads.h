/*
 * Deterministic harness: several keel threads driven by ONE OS thread.
 *
 * The threads are unplaced (no reactors), so nothing runs unless the test polls it,
 * and cross-thread races become ordinary, reproducible orderings. Time is mocked
 * while the harness is up: keel_now_ns() only moves with ut_time_advance_us(), so
 * timed pollers fire exactly when the test says.
 *
 * Typical use:
 *   ut_threads_init(3);
 *   ut_set_thread(0);                 // calls below run "on" thread 0
 *   keel_thread_send_msg(ut_thread(1), fn, arg);
 *   ut_poll_threads();                // runs everything to quiescence
 *   ut_threads_fini();
 */
#ifndef KEEL_UT_THREADS_H
#define KEEL_UT_THREADS_H

#include <stdbool.h>
#include <stdint.h>

#include "keel/reactor.h"

#define UT_THREAD_NONE UINT32_MAX

/**
 * keel_thread_lib_init() and \p n unplaced threads named "ut_thread_<i>"; enables
 * the mock clock. Thread 0 is made current. \return 0 or -errno.
 */
int ut_threads_init(uint32_t n);
/** Same with an explicit message ring size (power of two; 0 = default). */
int ut_threads_init_ring(uint32_t n, uint32_t msg_ring_size);
/** Exit every remaining thread, poll until destroyed, keel_thread_lib_fini(). */
void ut_threads_fini(void);

/** Thread \p i, or NULL once it was destroyed (after keel_thread_exit()). */
struct keel_thread *ut_thread(uint32_t i);
uint32_t ut_threads_count(void);
/** Make thread \p i current (UT_THREAD_NONE: no keel thread). */
void ut_set_thread(uint32_t i);
/** One iteration of thread \p i. \return units of work done. */
int ut_poll_thread(uint32_t i);
/**
 * Poll every thread round robin until a full round does no work.
 * \return total units of work done.
 */
int ut_poll_threads(void);

/** Advance the mock clock (also runs nothing by itself). */
void ut_time_advance_us(uint64_t us);
/** Current mock time in ns. */
uint64_t ut_time_now_ns(void);

#endif /* KEEL_UT_THREADS_H */
