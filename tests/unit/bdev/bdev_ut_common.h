/*
 * Helpers shared by the module tests (malloc_ut, error_ut): harness setup with the
 * bdev subsystem, synchronous-looking wrappers that submit and poll to completion.
 */
#ifndef KEEL_BDEV_UT_COMMON_H
#define KEEL_BDEV_UT_COMMON_H

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "keel/bdev.h"
#include "keel/bdev_module.h"
#include "keel/log.h"
#include "ut_cunit.h"
#include "ut_threads.h"

struct ut_res {
	int done;
	int status;
};

static inline void ut_io_done(void *arg, int status)
{
	struct ut_res *r = arg;

	r->done++;
	r->status = status;
}

static int g_ut_sub_done;
static int g_ut_sub_status;

static inline void ut_sub_done(void *arg, int status)
{
	g_ut_sub_done++;
	g_ut_sub_status = status;
}

static inline void ut_event_cb(enum keel_bdev_event_type type, struct keel_bdev *bdev, void *ctx)
{
	int *events = ctx;

	if (events) {
		events[type]++;
	}
}

static inline void ut_bdev_setup(uint32_t nthreads)
{
	ut_threads_init(nthreads);
	ut_set_thread(0);
	keel_bdev_module_register(&keel_bdev_malloc_module);
	keel_bdev_module_register(&keel_bdev_null_module);
	keel_bdev_module_register(&keel_bdev_error_module);
	g_ut_sub_done = 0;
	CU_ASSERT_EQUAL(keel_bdev_subsystem_init(ut_sub_done, NULL), 0);
	CU_ASSERT_EQUAL(g_ut_sub_done, 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_ut_sub_done, 1);
	CU_ASSERT_EQUAL(g_ut_sub_status, 0);
}

static inline void ut_bdev_teardown(void)
{
	ut_set_thread(0);
	g_ut_sub_done = 0;
	keel_bdev_subsystem_fini(ut_sub_done, NULL);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_ut_sub_done, 1);
	CU_ASSERT_PTR_NULL(keel_bdev_first());
	ut_threads_fini();
}

/* Run to completion; \return the submit rc if it failed, else the completion status. */
#define UT_SYNC(call_with_res)                        \
	({                                            \
		struct ut_res __r = {0, 0};           \
		struct ut_res *res = &__r;            \
		int __rc = (call_with_res);           \
		if (__rc == 0) {                      \
			CU_ASSERT_EQUAL(__r.done, 0); \
			ut_poll_threads();            \
			CU_ASSERT_EQUAL(__r.done, 1); \
			__rc = __r.status;            \
		}                                     \
		__rc;                                 \
	})

#endif /* KEEL_BDEV_UT_COMMON_H */
