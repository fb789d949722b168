/*
 * Fuzz keeld's state file: any bytes parsed as the store parses it, then checked by
 * keeld_state_validate(), which stands between the file and volume restore. A refusal
 * must name a field (a non-empty message).
 */
#include <jansson.h>
#include <stdlib.h>

#include "fuzz_common.h"
#include "state.h"
#include "store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[512] = "";
	json_error_t jerr;
	json_t *doc;

	fuzz_quiet_logs();
	doc = json_loadb((const char *)data, size, KEELD_STORE_JSON_FLAGS, &jerr);
	if (doc == NULL) {
		return 0;
	}
	if (!keeld_state_validate(doc, err, sizeof(err)) && err[0] == '\0') {
		abort();
	}
	json_decref(doc);
	return 0;
}
