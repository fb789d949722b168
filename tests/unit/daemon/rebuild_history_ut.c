/*
 * Unit tests of the rebuild history file's adoption (daemon/rebuild_history.c,
 * keeld_rebuild_history_from_doc): what keeld keeps of a file it reads at start.
 */
#include <jansson.h>
#include <string.h>

#include "rebuild_history.h"
#include "ut_cunit.h"

static void test_object_kept(void)
{
	json_t *doc = json_loads("{\"v\": [{\"state\": \"done\"}]}", 0, NULL);
	const char *why = NULL;
	json_t *h = keeld_rebuild_history_from_doc(doc, &why);

	CU_ASSERT_PTR_EQUAL(h, doc);
	CU_ASSERT_PTR_NULL(why);
	CU_ASSERT_EQUAL(json_array_size(json_object_get(h, "v")), 1);
	json_decref(h);
}

static void test_other_dropped(void)
{
	const char *why = NULL;
	json_t *h = keeld_rebuild_history_from_doc(json_loads("[1]", 0, NULL), &why);

	CU_ASSERT_TRUE(json_is_object(h));
	CU_ASSERT_EQUAL(json_object_size(h), 0);
	CU_ASSERT_PTR_NOT_NULL(why);
	json_decref(h);
	why = NULL;
	h = keeld_rebuild_history_from_doc(NULL, &why); /* no file yet */
	CU_ASSERT_TRUE(json_is_object(h));
	CU_ASSERT_PTR_NULL(why);
	json_decref(h);
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"object_kept", test_object_kept},
		{"other_dropped", test_other_dropped},
		{NULL, NULL},
	};

	return ut_cunit_run("rebuild_history", tests);
}
