/*
 * error module: claims its base, passes I/O through, and injects failures by rule
 * (count, every Nth, errno, latency, clear), at run time; follows base removal.
 */
#include <jansson.h>

#include "bdev_ut_common.h"

#define BS 512

static struct keel_bdev_desc *g_desc;
static struct keel_io_channel *g_ch;
static int g_events[2];

static void open_err(const char *base_name)
{
	struct keel_bdev *base, *err;

	CU_ASSERT_EQUAL_FATAL(keel_bdev_malloc_create(base_name, NULL, 256, BS, &base), 0);
	CU_ASSERT_EQUAL_FATAL(keel_bdev_error_create("err0", base_name, &err), 0);
	memset(g_events, 0, sizeof(g_events));
	CU_ASSERT_EQUAL_FATAL(keel_bdev_open_ext("err0", true, ut_event_cb, g_events, &g_desc), 0);
	g_ch = keel_bdev_get_io_channel(g_desc);
	CU_ASSERT_PTR_NOT_NULL_FATAL(g_ch);
}

static void close_err(void)
{
	keel_put_io_channel(g_ch);
	keel_bdev_close(g_desc);
	ut_poll_threads();
}

static int rd(uint64_t lba, void *buf)
{
	return UT_SYNC(keel_bdev_read(g_desc, g_ch, buf, lba * BS, BS, ut_io_done, res));
}

static void test_create_and_claim(void)
{
	struct keel_bdev *err, *base;
	struct keel_bdev_desc *d;
	uint8_t w[4 * BS], r[4 * BS];

	ut_bdev_setup(1);
	CU_ASSERT_EQUAL(keel_bdev_error_create("e", "missing", &err), -ENODEV);
	CU_ASSERT_EQUAL(keel_bdev_error_create(NULL, "missing", &err), -EINVAL);
	/* Failing registration undoes the claim and the open. */
	CU_ASSERT_EQUAL_FATAL(keel_bdev_malloc_create("pre", NULL, 16, BS, &base), 0);
	CU_ASSERT_EQUAL(keel_bdev_error_create("pre", "pre", &err), -EEXIST);
	CU_ASSERT_EQUAL(keel_bdev_error_create("bad/name", "pre", &err), -EINVAL);
	ut_poll_threads();
	CU_ASSERT_PTR_NULL(keel_bdev_get_claim_owner(base));
	CU_ASSERT_EQUAL(keel_bdev_open_ext("pre", true, ut_event_cb, NULL, &d), 0);
	keel_bdev_close(d);
	open_err("base0");
	base = keel_bdev_get_by_name("base0");
	CU_ASSERT_STRING_EQUAL(keel_bdev_get_claim_owner(base), "error");
	/* The base is claimed: no other writer, and no second error bdev on it. */
	CU_ASSERT_EQUAL(keel_bdev_open_ext("base0", true, ut_event_cb, NULL, &d), -EPERM);
	CU_ASSERT_EQUAL(keel_bdev_error_create("err1", "base0", &err), -EPERM);
	CU_ASSERT_EQUAL(keel_bdev_get_num_blocks(keel_bdev_get_by_name("err0")), 256);
	/* Pass-through integrity for every type. */
	for (int i = 0; i < 4 * BS; i++) {
		w[i] = (uint8_t)(i * 31);
	}
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_write(g_desc, g_ch, w, 8 * BS, 4 * BS, ut_io_done, res)),
			0);
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_read(g_desc, g_ch, r, 8 * BS, 4 * BS, ut_io_done, res)),
			0);
	CU_ASSERT(memcmp(w, r, sizeof(w)) == 0);
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_unmap(g_desc, g_ch, 8 * BS, BS, ut_io_done, res)), 0);
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_write_zeroes(g_desc, g_ch, 9 * BS, BS, ut_io_done, res)),
			0);
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_flush(g_desc, g_ch, 0, BS, ut_io_done, res)), 0);
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_reset(g_desc, g_ch, ut_io_done, res)), 0);
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_read(g_desc, g_ch, r, 8 * BS, 4 * BS, ut_io_done, res)),
			0);
	for (int i = 0; i < 2 * BS; i++) {
		CU_ASSERT_EQUAL_FATAL(r[i], 0);
	}
	CU_ASSERT(memcmp(w + 2 * BS, r + 2 * BS, 2 * BS) == 0);
	close_err();
	/* Deleting the error bdev releases the claim. */
	g_ut_sub_done = 0;
	CU_ASSERT_EQUAL(keel_bdev_error_delete("err0", ut_sub_done, NULL), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_ut_sub_done, 1);
	CU_ASSERT_PTR_NULL(keel_bdev_get_claim_owner(base));
	CU_ASSERT_EQUAL(keel_bdev_error_delete("base0", ut_sub_done, NULL), -ENODEV);
	ut_bdev_teardown();
}

static void test_rules(void)
{
	struct keel_bdev_error_rule rule = {0};
	uint8_t buf[BS];
	int fails = 0;

	ut_bdev_setup(1);
	open_err("base1");
	/* Invalid rules and names. */
	rule.io_type = KEEL_BDEV_IO_READ;
	rule.error = 0;
	CU_ASSERT_EQUAL(keel_bdev_error_inject("err0", &rule), -EINVAL); /* no effect */
	rule.error = 5;
	CU_ASSERT_EQUAL(keel_bdev_error_inject("err0", &rule), -EINVAL); /* positive errno */
	rule.error = -ENOMEM;
	CU_ASSERT_EQUAL(keel_bdev_error_inject("err0", &rule), -EINVAL); /* endless retry */
	rule.error = -EIO;
	rule.io_type = KEEL_BDEV_IO_NUM_TYPES + 1;
	CU_ASSERT_EQUAL(keel_bdev_error_inject("err0", &rule), -EINVAL);
	rule.io_type = KEEL_BDEV_IO_READ;
	CU_ASSERT_EQUAL(keel_bdev_error_inject("base1", &rule), -ENODEV);
	CU_ASSERT_EQUAL(keel_bdev_error_inject("nope", &rule), -ENODEV);
	CU_ASSERT_EQUAL(keel_bdev_error_inject("err0", NULL), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_error_clear("nope"), -ENODEV);

	/* count: the next 2 reads fail with -EIO, then reads pass again. */
	rule.count = 2;
	CU_ASSERT_EQUAL(keel_bdev_error_inject("err0", &rule), 0);
	CU_ASSERT_EQUAL(rd(0, buf), -EIO);
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_write(g_desc, g_ch, buf, 0, BS, ut_io_done, res)), 0);
	CU_ASSERT_EQUAL(rd(1, buf), -EIO);
	CU_ASSERT_EQUAL(rd(2, buf), 0);

	/* every Nth, with a chosen errno, unlimited until cleared. */
	rule.count = 0;
	rule.every_nth = 3;
	rule.error = -ENOSPC;
	CU_ASSERT_EQUAL(keel_bdev_error_inject("err0", &rule), 0);
	for (int i = 1; i <= 9; i++) {
		int rc = rd(i, buf);

		if (i % 3 == 0) {
			CU_ASSERT_EQUAL(rc, -ENOSPC);
			fails++;
		} else {
			CU_ASSERT_EQUAL(rc, 0);
		}
	}
	CU_ASSERT_EQUAL(fails, 3);
	CU_ASSERT_EQUAL(keel_bdev_error_clear("err0"), 0);
	for (int i = 0; i < 6; i++) {
		CU_ASSERT_EQUAL(rd(i, buf), 0);
	}

	/* A type rule beats the all-types rule. */
	rule.io_type = KEEL_BDEV_IO_NUM_TYPES;
	rule.every_nth = 0;
	rule.error = -EIO;
	CU_ASSERT_EQUAL(keel_bdev_error_inject("err0", &rule), 0);
	rule.io_type = KEEL_BDEV_IO_WRITE;
	rule.error = -EROFS;
	CU_ASSERT_EQUAL(keel_bdev_error_inject("err0", &rule), 0);
	CU_ASSERT_EQUAL(rd(0, buf), -EIO);
	{
		json_t *o = json_object(), *e;

		CU_ASSERT_EQUAL(keel_bdev_dump_info_json(keel_bdev_get_by_name("err0"), o), 0);
		e = json_object_get(json_object_get(o, "driver_specific"), "error");
		CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(e, "base_bdev")), "base1");
		CU_ASSERT_EQUAL(json_array_size(json_object_get(e, "rules")), 2);
		CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(o, "module")), "error");
		json_decref(o);
	}
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_write(g_desc, g_ch, buf, 0, BS, ut_io_done, res)),
			-EROFS);
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_unmap(g_desc, g_ch, 0, BS, ut_io_done, res)), -EIO);
	CU_ASSERT_EQUAL(keel_bdev_error_clear("err0"), 0);
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_write(g_desc, g_ch, buf, 0, BS, ut_io_done, res)), 0);

	/* -ENOMEM for a limited count: the core retries, the caller sees success. */
	rule.io_type = KEEL_BDEV_IO_READ;
	rule.error = -ENOMEM;
	rule.count = 2;
	CU_ASSERT_EQUAL(keel_bdev_error_inject("err0", &rule), 0);
	{
		struct ut_res r = {0};

		CU_ASSERT_EQUAL(keel_bdev_read(g_desc, g_ch, buf, 0, BS, ut_io_done, &r), 0);
		for (int i = 0; i < 10 && !r.done; i++) {
			ut_time_advance_us(200);
			ut_poll_threads();
		}
		CU_ASSERT_EQUAL(r.done, 1);
		CU_ASSERT_EQUAL(r.status, 0);
	}
	close_err();
	ut_bdev_teardown();
}

static void test_latency(void)
{
	struct keel_bdev_error_rule rule = {0};
	struct ut_res r1 = {0}, r2 = {0}, r3 = {0};
	uint8_t buf[BS];

	ut_bdev_setup(1);
	open_err("base2");
	rule.io_type = KEEL_BDEV_IO_READ;
	rule.delay_us = 1000;
	CU_ASSERT_EQUAL(keel_bdev_error_inject("err0", &rule), 0);
	CU_ASSERT_EQUAL(keel_bdev_read(g_desc, g_ch, buf, 0, BS, ut_io_done, &r1), 0);
	CU_ASSERT_EQUAL(keel_bdev_write(g_desc, g_ch, buf, 0, BS, ut_io_done, &r2), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(r1.done, 0); /* delayed */
	CU_ASSERT_EQUAL(r2.done, 1); /* other type passes at once */
	ut_time_advance_us(500);
	ut_poll_threads();
	CU_ASSERT_EQUAL(r1.done, 0);
	ut_time_advance_us(600);
	ut_poll_threads();
	CU_ASSERT_EQUAL(r1.done, 1);
	CU_ASSERT_EQUAL(r1.status, 0);
	/* Delay plus error. */
	rule.error = -ETIMEDOUT;
	rule.count = 1;
	CU_ASSERT_EQUAL(keel_bdev_error_inject("err0", &rule), 0);
	CU_ASSERT_EQUAL(keel_bdev_read(g_desc, g_ch, buf, 0, BS, ut_io_done, &r3), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(r3.done, 0);
	ut_time_advance_us(1100);
	ut_poll_threads();
	CU_ASSERT_EQUAL(r3.done, 1);
	CU_ASSERT_EQUAL(r3.status, -ETIMEDOUT);
	CU_ASSERT_EQUAL(rd(0, buf), 0); /* count exhausted */
	close_err();
	ut_bdev_teardown();
}

static void test_base_hot_remove(void)
{
	struct ut_res r = {0};
	uint8_t buf[BS];

	ut_bdev_setup(1);
	open_err("base3");
	CU_ASSERT_EQUAL(keel_bdev_read(g_desc, g_ch, buf, 0, BS, ut_io_done, &r), 0);
	g_ut_sub_done = 0;
	CU_ASSERT_EQUAL(keel_bdev_malloc_delete("base3", ut_sub_done, NULL), 0);
	ut_poll_threads();
	/* The error bdev followed its base: our desc got REMOVE. */
	CU_ASSERT_EQUAL(r.done, 1);
	CU_ASSERT_EQUAL(g_events[KEEL_BDEV_EVENT_REMOVE], 1);
	CU_ASSERT_PTR_NULL(keel_bdev_get_by_name("err0"));
	CU_ASSERT_EQUAL(g_ut_sub_done, 0); /* base waits for the error bdev's desc */
	CU_ASSERT_EQUAL(keel_bdev_read(g_desc, g_ch, buf, 0, BS, ut_io_done, &r), -ENODEV);
	close_err();
	CU_ASSERT_EQUAL(g_ut_sub_done, 1);
	CU_ASSERT_PTR_NULL(keel_bdev_get_by_name("base3"));
	ut_bdev_teardown();
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"create_and_claim", test_create_and_claim},
		{"rules", test_rules},
		{"latency", test_latency},
		{"base_hot_remove", test_base_hot_remove},
		{NULL, NULL},
	};

	keel_log_set_level(KEEL_LOG_WARN);
	return ut_cunit_run("bdev_error", tests);
}
