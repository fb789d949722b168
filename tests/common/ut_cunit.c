/*
 * CUnit runner, see ut_cunit.h.
 */
#include <stdlib.h>
#include <string.h>

#include "ut_cunit.h"

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
	return failures == 0 ? 0 : 1;

out_cleanup:
	CU_cleanup_registry();
	return 1;
}
