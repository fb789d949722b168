/*
 * The history of ended rebuild jobs, keeld's own (the nexus keeps only the last job
 * per target): every job that ends is appended to its volume's list (at most
 * KEELD_REBUILD_HISTORY_MAX records each, oldest dropped) and the lists are saved in
 * the store (KEELD_DOC_REBUILD_HISTORY), so `rebuild_get_history` survives restarts.
 *
 * Threading: keeld_rebuild_history_init() runs in main() after keeld_store_init(),
 * before the reactors start (it reads the file: plain process setup, where blocking is
 * allowed); keeld_rebuild_history_get() and the nexus's end hook run on the main keel
 * thread; keeld_rebuild_history_fini() after the reactors stopped.
 */
#ifndef KEEL_DAEMON_REBUILD_HISTORY_H
#define KEEL_DAEMON_REBUILD_HISTORY_H

#include <jansson.h>

/** Records kept per volume. */
#define KEELD_REBUILD_HISTORY_MAX 64

/**
 * Read the saved history (an unreadable file is logged and replaced by an empty
 * history: it is a record, not something keeld needs to run) and hook the nexus so
 * every ended job is recorded and saved.
 */
void keeld_rebuild_history_init(void);

/**
 * The history held in a document as read from the store (\p doc may be NULL: no
 * file): \p doc itself (the reference passes to the result) when it is a JSON object,
 * else an empty history, with \p *why (may be NULL) saying why the document was
 * dropped. Pure (fuzz target). \return the history, or NULL on out of memory.
 */
json_t *keeld_rebuild_history_from_doc(json_t *doc, const char **why);

/** The ended jobs of \p volume, oldest first: a new reference (an empty array when
 * there are none), or NULL on out of memory. */
json_t *keeld_rebuild_history_get(const char *volume);

/** Forget the history in memory. */
void keeld_rebuild_history_fini(void);

#endif /* KEEL_DAEMON_REBUILD_HISTORY_H */
