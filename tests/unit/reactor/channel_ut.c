/*
 * I/O devices and channels under the deterministic harness.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "reactor/reactor_internal.h"
#include "ut_cunit.h"
#include "ut_threads.h"

static int g_dev_a, g_dev_b;
static int g_creates, g_destroys, g_unregistered;
static int g_create_rc;
static void *g_last_ctx;

struct dev_ctx {
	uint64_t magic;
	struct keel_thread *thread;
	struct keel_io_channel *child; /* hierarchy test: channel to dev b */
};

static int create_cb(void *io_device, void *ctx_buf)
{
	struct dev_ctx *ctx = ctx_buf;

	if (g_create_rc != 0) {
		return g_create_rc;
	}
	CU_ASSERT_PTR_NOT_NULL(io_device);
	CU_ASSERT_EQUAL(ctx->magic, 0); /* zeroed */
	ctx->magic = 0xfeed;
	ctx->thread = keel_thread_get_current();
	g_creates++;
	g_last_ctx = ctx_buf;
	return 0;
}

static void destroy_cb(void *io_device, void *ctx_buf)
{
	struct dev_ctx *ctx = ctx_buf;

	(void)io_device;
	CU_ASSERT_EQUAL(ctx->magic, 0xfeed);
	CU_ASSERT_PTR_EQUAL(ctx->thread, keel_thread_get_current());
	if (ctx->child != NULL) {
		keel_put_io_channel(ctx->child);
	}
	g_destroys++;
}

static int parent_create_cb(void *io_device, void *ctx_buf)
{
	struct dev_ctx *ctx = ctx_buf;
	int rc = create_cb(io_device, ctx_buf);

	if (rc == 0) {
		ctx->child = keel_get_io_channel(&g_dev_b);
		if (ctx->child == NULL) {
			return -ENODEV;
		}
	}
	return rc;
}

static void unregister_cb(void *io_device)
{
	CU_ASSERT_PTR_EQUAL(io_device, &g_dev_a);
	g_unregistered++;
}

static void reset(void)
{
	g_creates = g_destroys = g_unregistered = 0;
	g_create_rc = 0;
	g_last_ctx = NULL;
}

static void test_channel_lifecycle(void)
{
	struct keel_io_channel *ch, *ch2;

	reset();
	CU_ASSERT_EQUAL_FATAL(ut_threads_init(2), 0);
	CU_ASSERT_EQUAL(keel_io_device_register(&g_dev_a, create_cb, destroy_cb,
						sizeof(struct dev_ctx), "dev_a"),
			0);
	CU_ASSERT_EQUAL(keel_io_device_register(&g_dev_a, create_cb, destroy_cb,
						sizeof(struct dev_ctx), "dev_a"),
			-EEXIST);
	CU_ASSERT_PTR_NULL(keel_get_io_channel(&g_dev_b)); /* unknown device */

	ut_set_thread(0);
	ch = keel_get_io_channel(&g_dev_a);
	CU_ASSERT_PTR_NOT_NULL_FATAL(ch);
	CU_ASSERT_EQUAL(g_creates, 1);
	CU_ASSERT_PTR_EQUAL(keel_io_channel_get_ctx(ch), g_last_ctx);
	CU_ASSERT_PTR_EQUAL(keel_io_channel_from_ctx(g_last_ctx), ch);
	CU_ASSERT_PTR_EQUAL(keel_io_channel_get_thread(ch), ut_thread(0));
	CU_ASSERT_PTR_EQUAL(keel_io_channel_get_io_device(ch), &g_dev_a);
	CU_ASSERT_EQUAL((uintptr_t)keel_io_channel_get_ctx(ch) % 16, 0);
	ch2 = keel_get_io_channel(&g_dev_a);
	CU_ASSERT_PTR_EQUAL(ch2, ch);
	CU_ASSERT_EQUAL(g_creates, 1);

	/* Another thread gets its own channel. */
	ut_set_thread(1);
	ch2 = keel_get_io_channel(&g_dev_a);
	CU_ASSERT_PTR_NOT_EQUAL(ch2, ch);
	CU_ASSERT_EQUAL(g_creates, 2);
	keel_put_io_channel(ch2);

	ut_set_thread(0);
	keel_put_io_channel(ch);
	CU_ASSERT_EQUAL(g_destroys, 0);
	keel_put_io_channel(ch);
	CU_ASSERT_EQUAL(g_destroys, 0); /* deferred */
	/* Revived before the deferred destroy runs: same channel, no create. */
	ch2 = keel_get_io_channel(&g_dev_a);
	CU_ASSERT_PTR_EQUAL(ch2, ch);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_destroys, 1); /* only thread 1's */
	CU_ASSERT_EQUAL(g_creates, 2);
	ut_set_thread(0);
	keel_put_io_channel(ch2);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_destroys, 2);

	/* Failing create: NULL, no destroy. */
	g_create_rc = -EIO;
	ut_set_thread(0);
	CU_ASSERT_PTR_NULL(keel_get_io_channel(&g_dev_a));
	g_create_rc = 0;
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_destroys, 2);

	ut_set_thread(0);
	keel_io_device_unregister(&g_dev_a, unregister_cb);
	CU_ASSERT_EQUAL(g_unregistered, 0); /* never inside the call */
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_unregistered, 1);
	ut_threads_fini();
}

static uint64_t g_visit_ids[8];
static uint32_t g_nvisits;
static int g_cpl_status;
static int g_cpls;
static struct keel_thread *g_cpl_thread;
static int g_stop_status;

static void visit_fn(struct keel_io_channel_iter *it)
{
	struct keel_io_channel *ch = keel_io_channel_iter_get_channel(it);

	CU_ASSERT_PTR_EQUAL(keel_io_channel_get_thread(ch), keel_thread_get_current());
	CU_ASSERT_PTR_EQUAL(keel_io_channel_iter_get_io_device(it), &g_dev_a);
	CU_ASSERT_PTR_EQUAL(keel_io_channel_iter_get_ctx(it), &g_nvisits);
	g_visit_ids[g_nvisits++] = keel_thread_get_id(keel_thread_get_current());
	keel_for_each_channel_continue(it, g_stop_status);
}

static void visit_cpl(struct keel_io_channel_iter *it, int status)
{
	(void)it;
	g_cpl_status = status;
	g_cpls++;
	g_cpl_thread = keel_thread_get_current();
}

static void iter_reset(void)
{
	g_nvisits = 0;
	g_cpls = 0;
	g_cpl_status = 12345;
	g_cpl_thread = NULL;
	g_stop_status = 0;
}

static void test_for_each_channel(void)
{
	struct keel_io_channel *ch0, *ch2, *ch3;

	reset();
	iter_reset();
	CU_ASSERT_EQUAL_FATAL(ut_threads_init(4), 0);
	keel_io_device_register(&g_dev_a, create_cb, destroy_cb, sizeof(struct dev_ctx), "dev_a");
	/* Channels on threads 3, 0 and 2 (creation order differs from id order). */
	ut_set_thread(3);
	ch3 = keel_get_io_channel(&g_dev_a);
	ut_set_thread(0);
	ch0 = keel_get_io_channel(&g_dev_a);
	ut_set_thread(2);
	ch2 = keel_get_io_channel(&g_dev_a);

	ut_set_thread(1);
	keel_for_each_channel(&g_dev_a, visit_fn, &g_nvisits, visit_cpl);
	CU_ASSERT_EQUAL(g_nvisits, 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_cpls, 1);
	CU_ASSERT_EQUAL(g_cpl_status, 0);
	CU_ASSERT_PTR_EQUAL(g_cpl_thread, ut_thread(1));
	CU_ASSERT_EQUAL_FATAL(g_nvisits, 3);
	CU_ASSERT_EQUAL(g_visit_ids[0], keel_thread_get_id(ut_thread(0)));
	CU_ASSERT_EQUAL(g_visit_ids[1], keel_thread_get_id(ut_thread(2)));
	CU_ASSERT_EQUAL(g_visit_ids[2], keel_thread_get_id(ut_thread(3)));

	/* A non-zero status stops the walk. */
	iter_reset();
	g_stop_status = -EIO;
	ut_set_thread(1);
	keel_for_each_channel(&g_dev_a, visit_fn, &g_nvisits, visit_cpl);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_nvisits, 1);
	CU_ASSERT_EQUAL(g_cpls, 1);
	CU_ASSERT_EQUAL(g_cpl_status, -EIO);

	/* A holder whose channel disappears before its turn is skipped. */
	iter_reset();
	ut_set_thread(1);
	keel_for_each_channel(&g_dev_a, visit_fn, &g_nvisits, visit_cpl);
	ut_poll_thread(0); /* visits 0, forwards to 2 */
	CU_ASSERT_EQUAL(g_nvisits, 1);
	ut_set_thread(2);
	keel_put_io_channel(ch2); /* deferred destroy queued before the hop runs */
	ut_poll_thread(2);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_cpls, 1);
	CU_ASSERT_EQUAL_FATAL(g_nvisits, 2);
	CU_ASSERT_EQUAL(g_visit_ids[1], keel_thread_get_id(ut_thread(3)));

	/* Unregister is deferred while an iteration is in flight and channels exist. */
	iter_reset();
	ut_set_thread(1);
	keel_for_each_channel(&g_dev_a, visit_fn, &g_nvisits, visit_cpl);
	keel_io_device_unregister(&g_dev_a, unregister_cb);
	CU_ASSERT_PTR_NULL(keel_get_io_channel(&g_dev_a)); /* fails at once */
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_cpls, 1);
	CU_ASSERT_EQUAL(g_nvisits, 2);
	CU_ASSERT_EQUAL(g_unregistered, 0);
	ut_set_thread(0);
	keel_put_io_channel(ch0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_unregistered, 0);
	ut_set_thread(3);
	keel_put_io_channel(ch3);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_unregistered, 1);
	CU_ASSERT_EQUAL(g_destroys, 3);
	/* Unknown device: completes with no visit. */
	iter_reset();
	ut_set_thread(1);
	keel_for_each_channel(&g_dev_a, visit_fn, &g_nvisits, visit_cpl);
	CU_ASSERT_EQUAL(g_cpls, 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_cpls, 1);
	CU_ASSERT_EQUAL(g_nvisits, 0);
	ut_threads_fini();
}

static void noop_msg(void *arg)
{
	(void)arg;
}

static void test_for_each_channel_ring_full(void)
{
	struct keel_io_channel *ch0, *ch2;

	reset();
	iter_reset();
	CU_ASSERT_EQUAL_FATAL(ut_threads_init_ring(3, 16), 0);
	keel_io_device_register(&g_dev_a, create_cb, destroy_cb, sizeof(struct dev_ctx), "dev_a");
	ut_set_thread(0);
	ch0 = keel_get_io_channel(&g_dev_a);
	ut_set_thread(2);
	ch2 = keel_get_io_channel(&g_dev_a);
	/* Fill thread 2's ring so the hop from thread 0 meets -ENOMEM. */
	ut_set_thread(1);
	for (int i = 0; i < 16; i++) {
		CU_ASSERT_EQUAL(keel_thread_send_msg(ut_thread(2), noop_msg, NULL), 0);
	}
	keel_for_each_channel(&g_dev_a, visit_fn, &g_nvisits, visit_cpl);
	ut_poll_thread(0);
	ut_poll_thread(0); /* the hop retries while the ring is still full */
	CU_ASSERT_EQUAL(g_nvisits, 1);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_nvisits, 2);
	CU_ASSERT_EQUAL(g_cpls, 1);
	ut_set_thread(0);
	keel_put_io_channel(ch0);
	ut_set_thread(2);
	keel_put_io_channel(ch2);
	ut_set_thread(0);
	keel_io_device_unregister(&g_dev_a, NULL);
	ut_poll_threads();
	ut_threads_fini();
}

static void test_channel_hierarchy(void)
{
	struct keel_io_channel *ch;

	reset();
	CU_ASSERT_EQUAL_FATAL(ut_threads_init(1), 0);
	keel_io_device_register(&g_dev_b, create_cb, destroy_cb, sizeof(struct dev_ctx), "dev_b");
	keel_io_device_register(&g_dev_a, parent_create_cb, destroy_cb, sizeof(struct dev_ctx),
				"dev_a");
	ch = keel_get_io_channel(&g_dev_a);
	CU_ASSERT_PTR_NOT_NULL_FATAL(ch);
	CU_ASSERT_EQUAL(g_creates, 2);
	keel_put_io_channel(ch);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_destroys, 2);
	keel_io_device_unregister(&g_dev_a, unregister_cb);
	keel_io_device_unregister(&g_dev_b, NULL);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_unregistered, 1);
	ut_threads_fini();
}

static void test_exit_waits_for_channels(void)
{
	struct keel_io_channel *ch;

	reset();
	CU_ASSERT_EQUAL_FATAL(ut_threads_init(2), 0);
	keel_io_device_register(&g_dev_a, create_cb, destroy_cb, sizeof(struct dev_ctx), "dev_a");
	ut_set_thread(1);
	ch = keel_get_io_channel(&g_dev_a);
	keel_thread_exit(ut_thread(1));
	ut_poll_threads();
	CU_ASSERT_PTR_NOT_NULL(ut_thread(1));
	ut_set_thread(1);
	keel_put_io_channel(ch);
	ut_poll_threads();
	CU_ASSERT_PTR_NULL(ut_thread(1));
	CU_ASSERT_EQUAL(g_destroys, 1);
	ut_set_thread(0);
	keel_io_device_unregister(&g_dev_a, unregister_cb);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_unregistered, 1);
	ut_threads_fini();
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"channel_lifecycle", test_channel_lifecycle},
		{"for_each_channel", test_for_each_channel},
		{"for_each_channel_ring_full", test_for_each_channel_ring_full},
		{"channel_hierarchy", test_channel_hierarchy},
		{"exit_waits_for_channels", test_exit_waits_for_channels},
		{NULL, NULL},
	};

	return ut_cunit_run("channel", tests);
}
