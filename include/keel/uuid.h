/*
 * UUIDs: the one implementation keel uses (bdev UUIDs, volume and replica UUIDs in
 * nexus labels), on top of libuuid. A UUID is 16 bytes in the order of its text form;
 * that is how nexus labels store them, so the on-disk format does not depend on this
 * code. No state: every function is safe from any thread and never blocks on a
 * reactor (libuuid reads getrandom(), which does not block once the kernel's pool is
 * seeded, long before keeld starts).
 */
#ifndef KEEL_UUID_H
#define KEEL_UUID_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KEEL_UUID_LEN 16     /**< bytes */
#define KEEL_UUID_STR_LEN 37 /**< 36 characters and the NUL */

/** Fill \p uuid with a random (version 4, RFC 4122 variant) UUID. Cannot fail. */
void keel_uuid_generate(uint8_t uuid[KEEL_UUID_LEN]);

/**
 * Format \p uuid as "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" in lower case into \p buf,
 * which has room for KEEL_UUID_STR_LEN bytes.
 */
void keel_uuid_fmt(const uint8_t uuid[KEEL_UUID_LEN], char *buf);

/**
 * Parse the 36-character text form (hex digits in either case) of \p str into \p uuid.
 * \return 0, or -EINVAL when \p str is NULL or not exactly that form (\p uuid is then
 * unspecified).
 */
int keel_uuid_parse(const char *str, uint8_t uuid[KEEL_UUID_LEN]);

/** True when all 16 bytes of \p uuid are zero (the "no UUID" value). */
bool keel_uuid_is_null(const uint8_t uuid[KEEL_UUID_LEN]);

#ifdef __cplusplus
}
#endif

#endif /* KEEL_UUID_H */
