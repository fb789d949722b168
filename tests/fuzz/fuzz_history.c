/*
 * Fuzz the rebuild history file: any bytes parsed as the store parses it, adopted by
 * keeld_rebuild_history_from_doc() as keeld does at start, then every volume's list
 * read back as rebuild_get_history does.
 */
#include <jansson.h>
#include <stdlib.h>

#include "fuzz_common.h"
#include "rebuild_history.h"
#include "store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_error_t jerr;
	json_t *doc, *history, *list;
	const char *volume;
	const char *why = NULL;

	fuzz_quiet_logs();
	doc = json_loadb((const char *)data, size, KEELD_STORE_JSON_FLAGS, &jerr);
	history = keeld_rebuild_history_from_doc(doc, &why);
	if (history == NULL || !json_is_object(history)) {
		abort();
	}
	json_object_foreach(history, volume, list) {
		json_t *copy = json_deep_copy(list);

		json_decref(copy);
	}
	json_decref(history);
	return 0;
}
