/*
 * Volumes in keeld (daemon/rpc_volume.c): the registry of volumes (name, size,
 * replica files), their RPC methods, and the link to the state file: restoring volumes
 * and their exports at startup and saving them after every change.
 *
 * Threading: everything runs on the main keel thread, except keeld_volumes_load()
 * which main() calls before the reactors start.
 */
#ifndef KEEL_DAEMON_VOLUME_H
#define KEEL_DAEMON_VOLUME_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

/**
 * Volume name rules: 1..63 printable ASCII characters, no '/' and no whitespace.
 * \return true, or false with \p why (for a message) filled.
 */
bool keeld_volume_name_valid(const char *name, char *why, size_t len);

/**
 * Take the volumes and exports of a checked state document (keeld_state_read) into
 * the registry, not yet assembled. \p doc may be NULL (no state file).
 * \return 0 or -ENOMEM.
 */
int keeld_volumes_load(json_t *doc);

typedef void (*keeld_volumes_done_cb)(void *cb_arg);

/**
 * Bring the loaded volumes up: open each replica file as an aio bdev, assemble each
 * volume from its labels, start its saved exports; then watch the exports so the
 * state file follows nbd_start_export/nbd_stop_export. Failures are logged and shown
 * by volume_get; they never stop keeld. \p cb_fn runs once, later.
 */
void keeld_volumes_restore(keeld_volumes_done_cb cb_fn, void *cb_arg);

/**
 * Shutdown, before the exports are stopped: stop watching the exports and write the
 * state one last time (so exports started in the last moment are kept), then
 * \p cb_fn, later.
 */
void keeld_volumes_shutdown(keeld_volumes_done_cb cb_fn, void *cb_arg);

/** Free the registry (after the reactors stopped). */
void keeld_volumes_fini(void);

/**
 * Exports changed (an export was started or stopped): save the state. The export
 * watcher calls this within a second anyway; rpc_nbd.c may call it on success to
 * make the save immediate.
 */
void keeld_volumes_exports_changed(void);

#endif /* KEEL_DAEMON_VOLUME_H */
