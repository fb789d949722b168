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

/**
 * Run \p tests (NULL-terminated) as one suite. Setting UT_FILTER in the
 * environment runs only tests whose name contains it.
 * \return process exit code: 0 when every test passed, 1 otherwise.
 */
int ut_cunit_run(const char *suite_name, const struct ut_test *tests);

#endif /* KEEL_UT_CUNIT_H */
