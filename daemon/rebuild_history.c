/*
 * Rebuild history: a JSON object {volume: [records...]} kept in memory and handed to
 * the store, which writes it.
 */
#include <limits.h>

#include "keel/log.h"
#include "keel/nexus.h"
#include "rebuild_history.h"
#include "store.h"

static json_t *g_history; /* {volume: [records...]} */

static json_t *history_snapshot(void *ctx)
{
	(void)ctx;
	return json_incref(g_history);
}

static void history_job_ended(void *ctx, const struct keel_rebuild_stats *st)
{
	json_t *list, *rec;

	(void)ctx;
	list = json_object_get(g_history, st->volume);
	if (list == NULL) {
		list = json_array();
		json_object_set_new(g_history, st->volume, list);
	}
	rec = keel_rebuild_stats_to_json(st);
	if (rec == NULL) {
		return;
	}
	json_object_set_new(rec, "bytes",
			    json_integer((json_int_t)(st->blocks_transferred * st->block_size)));
	json_array_append_new(list, rec);
	while (json_array_size(list) > KEELD_REBUILD_HISTORY_MAX) {
		json_array_remove(list, 0);
	}
	keeld_store_save(KEELD_DOC_REBUILD_HISTORY, NULL, NULL);
}

json_t *keeld_rebuild_history_from_doc(json_t *doc, const char **why)
{
	if (doc != NULL && !json_is_object(doc)) {
		if (why != NULL) {
			*why = "is not a JSON object";
		}
		json_decref(doc);
		doc = NULL;
	}
	return doc != NULL ? doc : json_object();
}

void keeld_rebuild_history_init(void)
{
	char err[PATH_MAX + 256];
	json_t *doc = NULL;
	const char *why = NULL;

	json_decref(g_history);
	g_history = NULL;
	if (keeld_store_read(KEELD_DOC_REBUILD_HISTORY, &doc, err, sizeof(err)) != 0) {
		KEEL_WARNLOG("keeld: %s; starting with an empty rebuild history", err);
	}
	g_history = keeld_rebuild_history_from_doc(doc, &why);
	if (why != NULL) {
		KEEL_WARNLOG("keeld: rebuild history file %s %s; starting with an empty rebuild "
			     "history",
			     keeld_store_path(KEELD_DOC_REBUILD_HISTORY), why);
	}
	keeld_store_set_snapshot(KEELD_DOC_REBUILD_HISTORY, history_snapshot, NULL);
	keel_rebuild_set_end_hook(history_job_ended, NULL);
}

json_t *keeld_rebuild_history_get(const char *volume)
{
	json_t *list = json_object_get(g_history, volume);

	return list != NULL ? json_deep_copy(list) : json_array();
}

void keeld_rebuild_history_fini(void)
{
	keel_rebuild_set_end_hook(NULL, NULL);
	json_decref(g_history);
	g_history = NULL;
}
