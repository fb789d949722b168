/*
 * malloc and null modules through the bdev core: data integrity for every I/O
 * type, scatter/gather, large requests, JSON info, create/delete errors.
 */
#include <jansson.h>

#include "bdev_ut_common.h"

#define BS 4096
#define NBLK 1024

static void fill(uint8_t *p, size_t n, uint32_t seed)
{
	for (size_t i = 0; i < n; i++) {
		p[i] = (uint8_t)((i * 2654435761u) >> 13 ^ seed);
	}
}

static bool all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (p[i]) {
			return false;
		}
	}
	return true;
}

static void test_malloc_create_errors(void)
{
	struct keel_bdev *b, *b2;
	uint8_t uuid[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

	ut_bdev_setup(1);
	CU_ASSERT_EQUAL(keel_bdev_malloc_create("m0", NULL, 0, 512, &b), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_malloc_create("m0", NULL, 8, 1000, &b), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_malloc_create("m0", NULL, 8, 256, &b), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_malloc_create("m0", NULL, 8, 131072, &b), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_malloc_create(NULL, NULL, 8, 512, &b), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_malloc_create("bad name", NULL, 8, 512, &b), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_malloc_create("m0", NULL, UINT64_MAX / 2, 4096, &b), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_malloc_create("m0", uuid, 8, 512, &b), 0);
	CU_ASSERT_STRING_EQUAL(keel_bdev_get_uuid_str(b), "01020304-0506-0708-090a-0b0c0d0e0f10");
	CU_ASSERT_EQUAL(keel_bdev_malloc_create("m0", NULL, 8, 512, &b2), -EEXIST);
	CU_ASSERT_EQUAL(keel_bdev_null_create("n0", uuid, 8, 512, &b2), -EEXIST);
	CU_ASSERT_EQUAL(keel_bdev_null_create("n0", NULL, 0, 512, &b2), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_null_create("n0", NULL, 8, 512, &b2), 0);
	/* Delete checks the module. */
	CU_ASSERT_EQUAL(keel_bdev_null_delete("m0", ut_sub_done, NULL), -ENODEV);
	CU_ASSERT_EQUAL(keel_bdev_malloc_delete("n0", ut_sub_done, NULL), -ENODEV);
	CU_ASSERT_EQUAL(keel_bdev_malloc_delete("nope", ut_sub_done, NULL), -ENODEV);
	g_ut_sub_done = 0;
	CU_ASSERT_EQUAL(keel_bdev_malloc_delete("m0", ut_sub_done, NULL), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_ut_sub_done, 1);
	CU_ASSERT_PTR_NULL(keel_bdev_get_by_name("m0"));
	ut_bdev_teardown(); /* removes n0 */
}

static void test_malloc_integrity(void)
{
	struct keel_bdev *b;
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	uint8_t *w = aligned_alloc(4096, 64 * BS), *r = aligned_alloc(4096, 64 * BS);
	uint8_t *s1 = malloc(3000), *s2 = malloc(64 * BS);
	struct iovec iov[3];

	ut_bdev_setup(1);
	CU_ASSERT_EQUAL_FATAL(keel_bdev_malloc_create("mal", NULL, NBLK, BS, &b), 0);
	CU_ASSERT_EQUAL_FATAL(keel_bdev_open_ext("mal", true, ut_event_cb, NULL, &desc), 0);
	ch = keel_bdev_get_io_channel(desc);
	CU_ASSERT_PTR_NOT_NULL_FATAL(ch);

	/* Fresh disk reads zeroes. */
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_read(desc, ch, r, 0, 16 * BS, ut_io_done, res)), 0);
	CU_ASSERT_TRUE(all_zero(r, 16 * BS));
	/* write / read */
	fill(w, 64 * BS, 1);
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_write(desc, ch, w, 10 * BS, 64 * BS, ut_io_done, res)),
			0);
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_read(desc, ch, r, 10 * BS, 64 * BS, ut_io_done, res)), 0);
	CU_ASSERT(memcmp(w, r, 64 * BS) == 0);
	/* writev gather with odd pieces / readv scatter */
	fill(s1, 3000, 2);
	fill(s2, 64 * BS, 3);
	iov[0].iov_base = s1;
	iov[0].iov_len = 3000;
	iov[1].iov_base = s2;
	iov[1].iov_len = 2 * BS - 3000;
	iov[2].iov_base = s2 + 10000;
	iov[2].iov_len = 2 * BS;
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_writev(desc, ch, iov, 3, 100 * BS, 4 * BS,
						 KEEL_BDEV_IO_FLAG_FUA, ut_io_done, res)),
			0);
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_read(desc, ch, r, 100 * BS, 4 * BS, ut_io_done, res)), 0);
	CU_ASSERT(memcmp(r, s1, 3000) == 0);
	CU_ASSERT(memcmp(r + 3000, s2, 2 * BS - 3000) == 0);
	CU_ASSERT(memcmp(r + 2 * BS, s2 + 10000, 2 * BS) == 0);
	memset(s1, 0, 3000);
	memset(s2, 0, 64 * BS);
	CU_ASSERT_EQUAL(
		UT_SYNC(keel_bdev_readv(desc, ch, iov, 3, 100 * BS, 4 * BS, ut_io_done, res)), 0);
	CU_ASSERT(memcmp(r, s1, 3000) == 0);
	CU_ASSERT(memcmp(r + 2 * BS, s2 + 10000, 2 * BS) == 0);
	/* unmap / write_zeroes read back zeroes; neighbours intact */
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_unmap(desc, ch, 12 * BS, 4 * BS, ut_io_done, res)), 0);
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_write_zeroes(desc, ch, 20 * BS, 8 * BS, ut_io_done, res)),
			0);
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_read(desc, ch, r, 10 * BS, 64 * BS, ut_io_done, res)), 0);
	CU_ASSERT(memcmp(r, w, 2 * BS) == 0);
	CU_ASSERT_TRUE(all_zero(r + 2 * BS, 4 * BS));
	CU_ASSERT(memcmp(r + 6 * BS, w + 6 * BS, 4 * BS) == 0);
	CU_ASSERT_TRUE(all_zero(r + 10 * BS, 8 * BS));
	CU_ASSERT(memcmp(r + 18 * BS, w + 18 * BS, 46 * BS) == 0);
	/* flush and reset succeed and change nothing */
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_flush(desc, ch, 0, NBLK * BS, ut_io_done, res)), 0);
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_reset(desc, ch, ut_io_done, res)), 0);
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_read(desc, ch, r, 28 * BS, 8 * BS, ut_io_done, res)), 0);
	CU_ASSERT(memcmp(r, w + 18 * BS, 8 * BS) == 0);
	/* last block, and one past the end */
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_write(desc, ch, w, (NBLK - 1) * BS, BS, ut_io_done, res)),
			0);
	CU_ASSERT_EQUAL(keel_bdev_write(desc, ch, w, NBLK * BS, BS, ut_io_done, NULL), -EINVAL);

	keel_put_io_channel(ch);
	keel_bdev_close(desc);
	free(w);
	free(r);
	free(s1);
	free(s2);
	ut_bdev_teardown();
}

static void test_null_reads_zeroes(void)
{
	struct keel_bdev *b;
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	uint8_t buf[8192];

	ut_bdev_setup(1);
	CU_ASSERT_EQUAL_FATAL(keel_bdev_null_create("nul", NULL, 1ull << 30, 512, &b), 0);
	CU_ASSERT_EQUAL_FATAL(keel_bdev_open_ext("nul", true, ut_event_cb, NULL, &desc), 0);
	ch = keel_bdev_get_io_channel(desc);
	memset(buf, 0x5a, sizeof(buf));
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_write(desc, ch, buf, 0, 8192, ut_io_done, res)), 0);
	/* Reads return zeroes: whatever the buffer held never reaches a reader. */
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_read(desc, ch, buf, 512, 8192, ut_io_done, res)), 0);
	for (size_t i = 0; i < sizeof(buf); i++) {
		CU_ASSERT_EQUAL_FATAL(buf[i], 0);
	}
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_unmap(desc, ch, 0, 1 << 20, ut_io_done, res)), 0);
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_write_zeroes(desc, ch, 0, 1 << 20, ut_io_done, res)), 0);
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_flush(desc, ch, 0, 512, ut_io_done, res)), 0);
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_reset(desc, ch, ut_io_done, res)), 0);
	CU_ASSERT_EQUAL(
		UT_SYNC(keel_bdev_read(desc, ch, buf, (512ull << 30) - 512, 512, ut_io_done, res)),
		0);
	/* Nothing is stored: the whole range is one hole that reads as zeroes. */
	{
		struct keel_bdev_extent ext[4];

		CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_get_allocation(desc, ch, 4096, 1 << 30, ext, 4,
								 ut_io_done, res)),
				0);
		CU_ASSERT_EQUAL(ext[0].length, 1 << 30);
		CU_ASSERT_EQUAL(ext[0].flags, KEEL_BDEV_EXTENT_HOLE | KEEL_BDEV_EXTENT_ZERO);
		CU_ASSERT_EQUAL(ext[1].length, 0);
	}
	keel_put_io_channel(ch);
	keel_bdev_close(desc);
	ut_bdev_teardown();
}

/* keel-bench's null bdevs: reads leave the buffer alone; only null bdevs can. */
static void test_null_leave_reads_untouched(void)
{
	struct keel_bdev *b, *m;
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	uint8_t buf[4096];
	json_t *info;

	ut_bdev_setup(1);
	CU_ASSERT_EQUAL_FATAL(keel_bdev_null_create("raw", NULL, 1024, 512, &b), 0);
	CU_ASSERT_EQUAL_FATAL(keel_bdev_malloc_create("ram", NULL, 16, 512, &m), 0);
	CU_ASSERT_EQUAL(keel_bdev_null_leave_reads_untouched(m), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_null_leave_reads_untouched(NULL), -EINVAL);
	g_ut_sub_done = 0;
	CU_ASSERT_EQUAL(keel_bdev_malloc_delete("ram", ut_sub_done, NULL), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_ut_sub_done, 1);
	CU_ASSERT_EQUAL(keel_bdev_null_leave_reads_untouched(b), 0);
	info = json_object();
	CU_ASSERT_EQUAL(keel_bdev_dump_info_json(b, info), 0);
	CU_ASSERT_TRUE(json_is_false(
		json_object_get(json_object_get(json_object_get(info, "driver_specific"), "null"),
				"reads_touch_memory")));
	json_decref(info);
	CU_ASSERT_EQUAL_FATAL(keel_bdev_open_ext("raw", false, ut_event_cb, NULL, &desc), 0);
	ch = keel_bdev_get_io_channel(desc);
	memset(buf, 0x5a, sizeof(buf));
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_read(desc, ch, buf, 0, 4096, ut_io_done, res)), 0);
	for (size_t i = 0; i < sizeof(buf); i++) {
		CU_ASSERT_EQUAL_FATAL(buf[i], 0x5a);
	}
	keel_put_io_channel(ch);
	keel_bdev_close(desc);
	ut_bdev_teardown();
}

/* RAM is allocated up front: every range is data. */
static void test_malloc_allocation(void)
{
	struct keel_bdev *b;
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	struct keel_bdev_extent ext[2];

	ut_bdev_setup(1);
	CU_ASSERT_EQUAL_FATAL(keel_bdev_malloc_create("ma", NULL, NBLK, BS, &b), 0);
	CU_ASSERT_EQUAL_FATAL(keel_bdev_open_ext("ma", false, ut_event_cb, NULL, &desc), 0);
	ch = keel_bdev_get_io_channel(desc);
	CU_ASSERT_TRUE(keel_bdev_io_type_supported(b, KEEL_BDEV_IO_GET_ALLOCATION));
	CU_ASSERT_EQUAL(
		UT_SYNC(keel_bdev_get_allocation(desc, ch, BS, 8 * BS, ext, 2, ut_io_done, res)),
		0);
	CU_ASSERT_EQUAL(ext[0].length, 8 * BS);
	CU_ASSERT_EQUAL(ext[0].flags, 0);
	CU_ASSERT_EQUAL(ext[1].length, 0);
	keel_put_io_channel(ch);
	keel_bdev_close(desc);
	ut_bdev_teardown();
}

static void test_dump_json(void)
{
	struct keel_bdev *m, *n;
	json_t *o = json_object();

	ut_bdev_setup(1);
	CU_ASSERT_EQUAL(keel_bdev_malloc_create("jm", NULL, 16, 512, &m), 0);
	CU_ASSERT_EQUAL(keel_bdev_null_create("jn", NULL, 16, 4096, &n), 0);
	CU_ASSERT_EQUAL(keel_bdev_dump_info_json(m, o), 0);
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(o, "name")), "jm");
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(o, "module")), "malloc");
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(o, "num_blocks")), 16);
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(
				json_object_get(json_object_get(o, "driver_specific"), "malloc"),
				"size_bytes")),
			8192);
	CU_ASSERT(json_is_null(json_object_get(o, "claimed_by")));
	json_decref(o);
	o = json_object();
	CU_ASSERT_EQUAL(keel_bdev_dump_info_json(n, o), 0);
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(o, "block_size")), 4096);
	CU_ASSERT_PTR_NOT_NULL(json_object_get(json_object_get(o, "driver_specific"), "null"));
	CU_ASSERT_EQUAL(json_array_size(json_object_get(o, "supported_io_types")), 7);
	CU_ASSERT_EQUAL(keel_bdev_dump_info_json(NULL, o), -EINVAL);
	json_decref(o);
	ut_bdev_teardown();
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"malloc_create_errors", test_malloc_create_errors},
		{"malloc_integrity", test_malloc_integrity},
		{"null_reads_zeroes", test_null_reads_zeroes},
		{"null_leave_reads_untouched", test_null_leave_reads_untouched},
		{"dump_json", test_dump_json},
		{"malloc_allocation", test_malloc_allocation},
		{NULL, NULL},
	};

	keel_log_set_level(KEEL_LOG_WARN);
	return ut_cunit_run("bdev_malloc", tests);
}
