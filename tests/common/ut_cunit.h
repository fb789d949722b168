/*
 * Tiny CUnit runner shared by the unit tests.
 *
 *   static const struct ut_test tests[] = {
 *       {"ring_fifo", test_ring_fifo},
 *       {NULL, NULL},
 *   };
 *   int main(void) { return ut_cunit_run("ring", tests); }
 */
#ifndef KEEL_UT_CUNIT_H
#define KEEL_UT_CUNIT_H

#include <CUnit/Basic.h>

struct ut_test {
	const char *name;
	CU_TestFunc fn;
};

/** Exit code that ctest reports as "skipped" (SKIP_RETURN_CODE of every unit test). */
#define UT_EXIT_SKIP 77

/**
 * Run \p tests (NULL-terminated) as one suite. Setting UT_FILTER in the
 * environment runs only tests whose name contains it.
 * \return process exit code: 1 when a test failed, else UT_EXIT_SKIP when a test
 * skipped (ut_skip), else 0.
 */
int ut_cunit_run(const char *suite_name, const struct ut_test *tests);

/**
 * Call from a test that cannot run here (not root, too few CPUs, no loop device),
 * then return from it: prints "SKIP: <test>: <why>" and makes the binary exit with
 * UT_EXIT_SKIP unless a test failed, so a part that did not run never reads as
 * passed. Only from the thread that runs the CUnit tests.
 */
void ut_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/** For binaries with their own CUnit runner: the exit code for \p failures, as above. */
int ut_cunit_exit_code(unsigned failures);

#endif /* KEEL_UT_CUNIT_H */
