/*
 * Tests on real reactors (several OS threads): start them the same way in every
 * such test, and count violations seen on reactor threads, where CUnit's asserts
 * must not run (CUnit is not thread-safe); the test asserts the count once the
 * reactors stopped.
 */
#ifndef KEEL_UT_MT_H
#define KEEL_UT_MT_H

#include <stdatomic.h>
#include <stdbool.h>

#include "keel/reactor.h"

/** Violations counted by UT_MT_ERR() and the line of the first one. */
extern atomic_int ut_mt_errors;
extern atomic_int ut_mt_first_err_line;

/* Count a violation and remember where the first one happened. */
#define UT_MT_ERR()                                                                       \
	do {                                                                              \
		int __zero = 0;                                                           \
		atomic_fetch_add(&ut_mt_errors, 1);                                       \
		atomic_compare_exchange_strong(&ut_mt_first_err_line, &__zero, __LINE__); \
	} while (0)

/**
 * Two reactors on CPUs 0-1, unpinned, no watchdog, adaptive mode; run \p start_fn
 * on the first one until keel_reactors_stop(), then keel_reactors_fini().
 * The two reactors are the point of these tests (and what TSan checks), so there
 * is no fallback to one: with fewer than 2 online CPUs the test is skipped
 * (ut_skip), and a failure to set up 2 reactors on a machine that has them fails it.
 * \return true when the reactors ran; false (skipped or failed): assert nothing more.
 */
bool ut_mt_run_reactors(keel_msg_fn start_fn, void *arg);

#endif /* KEEL_UT_MT_H */
