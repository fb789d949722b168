/*
 * CUnit runner, see ut_cunit.h.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ut_cunit.h"

static unsigned g_skipped;

void ut_skip(const char *fmt, ...)
{
	CU_pTest test = CU_get_current_test();
	va_list ap;

	g_skipped++;
	printf("\n  SKIP: %s: ", test != NULL ? test->pName : "?");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

int ut_cunit_exit_code(unsigned failures)
{
	if (failures != 0) {
		return 1;
	}
	if (g_skipped != 0) {
		printf("\n%u test(s) skipped: exit %d (ctest: skipped)\n", g_skipped, UT_EXIT_SKIP);
		return UT_EXIT_SKIP;
	}
	return 0;
}

int ut_cunit_run(const char *suite_name, const struct ut_test *tests)
{
	const char *filter = getenv("UT_FILTER");
	CU_pSuite suite;
	unsigned failures;

	if (CU_initialize_registry() != CUE_SUCCESS) {
		return 1;
	}
	suite = CU_add_suite(suite_name, NULL, NULL);
	if (suite == NULL) {
		goto out_cleanup;
	}
	for (const struct ut_test *t = tests; t->name != NULL; t++) {
		if (filter != NULL && strstr(t->name, filter) == NULL) {
			continue;
		}
		if (CU_add_test(suite, t->name, t->fn) == NULL) {
			goto out_cleanup;
		}
	}
	CU_basic_set_mode(CU_BRM_VERBOSE);
	CU_basic_run_tests();
	failures = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
	CU_cleanup_registry();
	return ut_cunit_exit_code(failures);

out_cleanup:
	CU_cleanup_registry();
	return 1;
}
