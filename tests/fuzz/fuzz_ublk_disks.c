/*
 * Fuzz the ublk devices file (the devices keeld re-attaches after a restart): any bytes
 * parsed as the store parses them, then the records decoded as the restore decodes them.
 * A record the callback sees must have a name, as the restore relies on it.
 */
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>

#include "fuzz_common.h"
#include "store.h"
#include "ublk_internal.h"

static void fuzz_ublk_record(uint32_t id, const char *bdev_name, void *ctx)
{
	(void)id;
	(void)ctx;
	if (bdev_name == NULL || bdev_name[0] == '\0') {
		abort();
	}
}

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
	rc = ublk_disk_records_parse(doc, fuzz_ublk_record, NULL);
	if (rc < 0 && rc != -EINVAL) {
		abort();
	}
	json_decref(doc);
	return 0;
}
