/*
 * keel's UUIDs are libuuid's: one well-tested generator (getrandom, with libuuid's own
 * fallbacks) and parser instead of hand-written copies. libuuid's uuid_t is the same
 * 16 bytes in text order that keel stores, so these are thin wrappers.
 */
#include <errno.h>
#include <stddef.h>

#include <uuid/uuid.h>

#include "keel/uuid.h"

_Static_assert(sizeof(uuid_t) == KEEL_UUID_LEN, "libuuid's uuid_t is 16 bytes");

void keel_uuid_generate(uint8_t uuid[KEEL_UUID_LEN])
{
	uuid_generate_random(uuid);
}

void keel_uuid_fmt(const uint8_t uuid[KEEL_UUID_LEN], char *buf)
{
	uuid_unparse_lower(uuid, buf);
}

int keel_uuid_parse(const char *str, uint8_t uuid[KEEL_UUID_LEN])
{
	if (str == NULL || uuid_parse(str, uuid) != 0) {
		return -EINVAL;
	}
	return 0;
}

bool keel_uuid_is_null(const uint8_t uuid[KEEL_UUID_LEN])
{
	return uuid_is_null(uuid) != 0;
}
