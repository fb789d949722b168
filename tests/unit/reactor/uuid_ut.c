/*
 * keel_uuid_*: generated UUIDs are random version-4 RFC 4122 UUIDs and distinct; the
 * text form round-trips and keeps the byte order nexus labels store (a known vector
 * pins it, so labels written before libuuid read the same); malformed text is refused.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "keel/uuid.h"
#include "ut_cunit.h"

#define UUID_SAMPLES 2000

static int uuid_cmp(const void *a, const void *b)
{
	return memcmp(a, b, KEEL_UUID_LEN);
}

static void test_generate_v4_and_distinct(void)
{
	uint8_t(*u)[KEEL_UUID_LEN] = calloc(UUID_SAMPLES, KEEL_UUID_LEN);
	int i;

	CU_ASSERT_FATAL(u != NULL);
	for (i = 0; i < UUID_SAMPLES; i++) {
		keel_uuid_generate(u[i]);
		CU_ASSERT_EQUAL(u[i][6] >> 4, 4);      /* version 4: random */
		CU_ASSERT_EQUAL(u[i][8] & 0xc0, 0x80); /* RFC 4122 variant */
		CU_ASSERT_FALSE(keel_uuid_is_null(u[i]));
	}
	qsort(u, UUID_SAMPLES, KEEL_UUID_LEN, uuid_cmp);
	for (i = 1; i < UUID_SAMPLES; i++) {
		CU_ASSERT(memcmp(u[i - 1], u[i], KEEL_UUID_LEN) != 0);
	}
	free(u);
}

static void test_known_vector(void)
{
	static const char text[] = "00010203-0405-0607-0809-0a0b0c0d0e0f";
	uint8_t u[KEEL_UUID_LEN], v[KEEL_UUID_LEN];
	char s[KEEL_UUID_STR_LEN];
	int i;

	for (i = 0; i < KEEL_UUID_LEN; i++) {
		u[i] = (uint8_t)i;
	}
	keel_uuid_fmt(u, s);
	CU_ASSERT_STRING_EQUAL(s, text);
	CU_ASSERT_EQUAL(keel_uuid_parse(text, v), 0);
	CU_ASSERT(memcmp(u, v, KEEL_UUID_LEN) == 0);
	/* Upper case parses to the same bytes; formatting is always lower case. */
	CU_ASSERT_EQUAL(keel_uuid_parse("A1B2C3D4-E5F6-4789-ABCD-EF0123456789", v), 0);
	keel_uuid_fmt(v, s);
	CU_ASSERT_STRING_EQUAL(s, "a1b2c3d4-e5f6-4789-abcd-ef0123456789");
}

static void test_roundtrip(void)
{
	uint8_t u[KEEL_UUID_LEN], v[KEEL_UUID_LEN];
	char s[KEEL_UUID_STR_LEN];
	int i;

	for (i = 0; i < 100; i++) {
		keel_uuid_generate(u);
		memset(s, 'x', sizeof(s));
		keel_uuid_fmt(u, s);
		CU_ASSERT_EQUAL(strlen(s), 36);
		CU_ASSERT_EQUAL(keel_uuid_parse(s, v), 0);
		CU_ASSERT(memcmp(u, v, KEEL_UUID_LEN) == 0);
	}
}

static void test_parse_refuses(void)
{
	static const char *const bad[] = {
		"",
		"not-a-uuid",
		"0123456789abcdef0123456789abcdef0123",  /* 36 characters, no dashes */
		"0123456z-89ab-cdef-0123-456789abcdef",  /* not hex */
		"01234567-89ab-cdef-0123-456789abcdef0", /* 37 characters */
		"01234567-89ab-cdef-0123-456789abcde",   /* 35 characters */
		"0123456-789ab-cdef-0123-456789abcdef",  /* dash one place early */
		" 1234567-89ab-cdef-0123-456789abcdef",
	};
	uint8_t v[KEEL_UUID_LEN];
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		CU_ASSERT_EQUAL(keel_uuid_parse(bad[i], v), -EINVAL);
	}
	CU_ASSERT_EQUAL(keel_uuid_parse(NULL, v), -EINVAL);
}

static void test_is_null(void)
{
	uint8_t u[KEEL_UUID_LEN] = {0};

	CU_ASSERT_TRUE(keel_uuid_is_null(u));
	u[15] = 1;
	CU_ASSERT_FALSE(keel_uuid_is_null(u));
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"generate_v4_and_distinct", test_generate_v4_and_distinct},
		{"known_vector", test_known_vector},
		{"roundtrip", test_roundtrip},
		{"parse_refuses", test_parse_refuses},
		{"is_null", test_is_null},
		{NULL, NULL},
	};

	return ut_cunit_run("uuid", tests);
}
