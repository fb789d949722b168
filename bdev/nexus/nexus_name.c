/*
 * The one rule for volume names, wherever a name comes from (create, open, an
 * on-disk label, an RPC): a name ends up in logs, bdev names and file paths, so
 * it is printable ASCII without spaces or '/', and a refusal never repeats it.
 */
#include <stdio.h>
#include <string.h>

#include "keel/nexus.h"

bool keel_nexus_name_valid(const char *name, char *why, size_t whylen)
{
	size_t len;

	if (name == NULL || (len = strnlen(name, KEEL_NEXUS_NAME_MAX + 1)) == 0 ||
	    len > KEEL_NEXUS_NAME_MAX) {
		if (why != NULL && whylen > 0) {
			snprintf(why, whylen, "a volume name has 1 to %d characters",
				 KEEL_NEXUS_NAME_MAX);
		}
		return false;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)name[i];

		if (c <= ' ' || c >= 0x7f || c == '/') {
			if (why != NULL && whylen > 0) {
				snprintf(why, whylen,
					 "a volume name has printable ASCII characters "
					 "only, no spaces and no '/' (byte %zu is 0x%02x)",
					 i, c);
			}
			return false;
		}
	}
	return true;
}
