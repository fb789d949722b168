/*
 * Unit tests of the ublk device records (ublk_disk_records_parse), which a restarted
 * keeld reads from ublk-disks.json: well-formed entries are handed on, malformed ones
 * skipped, a document of another shape refused. No kernel driver needed.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include <jansson.h>

#include "keel/log.h"
#include "ublk/ublk_internal.h"
#include "ut_cunit.h"

struct seen {
	uint32_t id[8];
	char bdev[8][64];
	int n;
};

static void seen_cb(uint32_t id, const char *bdev, void *ctx)
{
	struct seen *s = ctx;

	if (s->n < 8) {
		s->id[s->n] = id;
		snprintf(s->bdev[s->n], sizeof(s->bdev[s->n]), "%s", bdev);
	}
	s->n++;
}

static int parse(const char *text, struct seen *s)
{
	json_t *doc = json_loads(text, 0, NULL);
	int rc;

	memset(s, 0, sizeof(*s));
	CU_ASSERT_PTR_NOT_NULL_FATAL(doc);
	rc = ublk_disk_records_parse(doc, seen_cb, s);
	json_decref(doc);
	return rc;
}

static void test_records_valid(void)
{
	struct seen s;

	CU_ASSERT_EQUAL(parse("{\"version\":1,\"disks\":[{\"ublk_id\":0,\"bdev_name\":\"v\"},"
			      "{\"ublk_id\":1048575,\"bdev_name\":\"w\"}]}",
			      &s),
			2);
	CU_ASSERT_EQUAL(s.n, 2);
	CU_ASSERT_EQUAL(s.id[0], 0);
	CU_ASSERT_STRING_EQUAL(s.bdev[0], "v");
	CU_ASSERT_EQUAL(s.id[1], 1048575);
	CU_ASSERT_STRING_EQUAL(s.bdev[1], "w");
	CU_ASSERT_EQUAL(parse("{\"version\":1,\"disks\":[]}", &s), 0);
	CU_ASSERT_EQUAL(ublk_disk_records_parse(NULL, seen_cb, &s), 0);
}

static void test_records_malformed(void)
{
	char long_name[200];
	char doc[400];
	struct seen s;

	/* Each bad entry is skipped; the good one in the middle survives. */
	CU_ASSERT_EQUAL(parse("{\"version\":1,\"disks\":[{\"ublk_id\":-1,\"bdev_name\":\"a\"},"
			      "{\"ublk_id\":1048576,\"bdev_name\":\"b\"},"
			      "{\"ublk_id\":\"3\",\"bdev_name\":\"c\"},"
			      "{\"ublk_id\":4,\"bdev_name\":\"good\"},"
			      "{\"ublk_id\":5},{\"ublk_id\":6,\"bdev_name\":7},"
			      "{\"ublk_id\":7,\"bdev_name\":\"\"},42,null,[]]}",
			      &s),
			1);
	CU_ASSERT_EQUAL(s.n, 1);
	CU_ASSERT_EQUAL(s.id[0], 4);
	CU_ASSERT_STRING_EQUAL(s.bdev[0], "good");
	memset(long_name, 'x', 64);
	long_name[64] = '\0'; /* one more than a bdev name may have */
	snprintf(doc, sizeof(doc),
		 "{\"version\":1,\"disks\":[{\"ublk_id\":1,\"bdev_name\":\"%s\"}]}", long_name);
	CU_ASSERT_EQUAL(parse(doc, &s), 0);
	CU_ASSERT_EQUAL(s.n, 0);
}

static void test_records_wrong_shape(void)
{
	struct seen s;

	CU_ASSERT_EQUAL(parse("{\"version\":2,\"disks\":[]}", &s), -EINVAL);
	CU_ASSERT_EQUAL(parse("{\"disks\":[]}", &s), -EINVAL);
	CU_ASSERT_EQUAL(parse("{\"version\":1,\"disks\":{}}", &s), -EINVAL);
	CU_ASSERT_EQUAL(parse("[]", &s), -EINVAL);
	CU_ASSERT_EQUAL(s.n, 0);
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"records_valid", test_records_valid},
		{"records_malformed", test_records_malformed},
		{"records_wrong_shape", test_records_wrong_shape},
		{NULL, NULL},
	};

	keel_log_set_level(KEEL_LOG_ERROR);
	return ut_cunit_run("ublk_parse", tests);
}
