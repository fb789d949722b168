/*
 * Descriptor lifetime when an event cannot be delivered: the thread that opened a
 * descriptor is gone (shutdown, a connection thread that exited without closing)
 * when the bdev is removed, so the REMOVE event has nowhere to go. The descriptor
 * is still closed later (from another thread, at teardown) and must then be freed:
 * run under ASan (KEEL_SANITIZE=address), whose leak check fails the binary if not.
 */
#include "bdev_ut_common.h"

static void test_event_to_exited_thread(void)
{
	struct keel_bdev *b;
	struct keel_bdev_desc *desc;
	int events[KEEL_BDEV_EVENT_RESIZE + 1] = {0};

	ut_bdev_setup(2);
	CU_ASSERT_EQUAL_FATAL(keel_bdev_malloc_create("ev", NULL, 64, 512, &b), 0);
	ut_set_thread(1);
	CU_ASSERT_EQUAL_FATAL(keel_bdev_open_ext("ev", false, ut_event_cb, events, &desc), 0);
	keel_thread_exit(ut_thread(1));
	for (int i = 0; i < 100 && ut_thread(1) != NULL; i++) {
		ut_poll_thread(1);
	}
	CU_ASSERT_FATAL(ut_thread(1) == NULL);
	/* The REMOVE event for desc cannot reach thread 1 any more. */
	ut_set_thread(0);
	g_ut_sub_done = 0;
	CU_ASSERT_EQUAL(keel_bdev_malloc_delete("ev", ut_sub_done, NULL), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_ut_sub_done, 0); /* still open */
	CU_ASSERT_EQUAL(events[KEEL_BDEV_EVENT_REMOVE], 0);
	/* Closed from the thread that remains (an error is logged: wrong thread). */
	keel_bdev_close(desc);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_ut_sub_done, 1);
	CU_ASSERT_PTR_NULL(keel_bdev_get_by_name("ev"));
	ut_bdev_teardown();
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"event_to_exited_thread", test_event_to_exited_thread},
		{NULL, NULL},
	};

	keel_log_set_level(KEEL_LOG_ERROR + 0);
	return ut_cunit_run("bdev_desc", tests);
}
