/*
 * Plain bdevs (aio, uring, NBD client) kept across a restart in the state document's
 * "bdevs" array (daemon/bdev_persist.c). Main keel thread only; keeld_bdevs_load also
 * in main() before the reactors.
 */
#ifndef KEEL_DAEMON_BDEV_PERSIST_H
#define KEEL_DAEMON_BDEV_PERSIST_H

#include <stdbool.h>

#include <jansson.h>

/** Whether bdev \p name exists and is kept: aio, uring or nbd_client, not a replica. */
bool keeld_bdevs_is_persisted(const char *name);
/** The "bdevs" array of the state document (new reference), or NULL on out of memory. */
json_t *keeld_bdevs_state(void);
/** Keep the "bdevs" of \p doc (the state document) for keeld_bdevs_restore. */
void keeld_bdevs_load(json_t *doc);
/** Create the loaded bdevs again; \p done_fn(arg) on this thread once each answered. */
void keeld_bdevs_restore(void (*done_fn)(void *arg), void *arg);
/**
 * Keep \p export (its state record) if \p bdev is a kept bdev that could not be made
 * again yet: it stays in the state file (keeld_bdevs_held_exports) and is started
 * through the back hook once the bdev is back. \return whether it was kept.
 */
bool keeld_bdevs_hold_export(const char *bdev, json_t *export);
/** The held exports (borrowed; may be NULL). */
json_t *keeld_bdevs_held_exports(void);
/** \p fn(export) starts a held export once its bdev is back. */
void keeld_bdevs_set_back_hook(void (*fn)(json_t *export));
/** Shutdown began: from now on keeld_bdevs_state() answers the list as it is now, so
 * the last saves still list the bdevs the shutdown deletes. */
void keeld_bdevs_freeze(void);
/** Free what load and failed restores kept. */
void keeld_bdevs_fini(void);

#endif /* KEEL_DAEMON_BDEV_PERSIST_H */
