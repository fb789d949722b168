/*
 * Fuzz the kernel devices file (the NBD devices keeld reattaches after a restart): any
 * bytes parsed as the store parses it, then the records taken as
 * keel_nbd_disk_restore() takes them.
 */
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>

#include "fuzz_common.h"
#include "nbd_internal.h"
#include "store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_error_t jerr;
	json_t *doc;
	int rc;

	fuzz_quiet_logs();
	doc = json_loadb((const char *)data, size, KEELD_STORE_JSON_FLAGS, &jerr);
	if (doc == NULL) {
		return 0;
	}
	rc = nbd_disk_records_parse(doc);
	if (rc < 0 && rc != -EINVAL && rc != -ENOMEM) {
		abort();
	}
	json_decref(doc);
	return 0;
}
