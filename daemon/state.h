/*
 * keeld's state file: what keeld must remember across restarts (volumes with their
 * replica paths, and the NBD exports of those volumes), as JSON in the state
 * directory. See docs/volumes.md for the format.
 *
 * Threading: keeld_state_read() runs in main() before the reactors start (plain
 * process setup, where blocking is allowed), after keeld_store_init() said where the
 * file lives. The volume manager writes the file through the store
 * (KEELD_DOC_STATE, daemon/store.h), on the blocking-work pool.
 */
#ifndef KEEL_DAEMON_STATE_H
#define KEEL_DAEMON_STATE_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

/** Format version written into the file; other versions are refused. */
#define KEELD_STATE_VERSION 1

/**
 * Read and check the state file. \p *out is the parsed document (caller owns it), or
 * NULL when there is no file yet (a first start).
 * \return 0, or a negative errno with \p err saying what is wrong and naming the file
 * (unreadable, not JSON, or not a valid keeld state document).
 */
int keeld_state_read(json_t **out, char *err, size_t errlen);

/**
 * Check a parsed state document against the format. \return true, or false with
 * \p err naming the first offending field ("volumes[1].replicas[0].path: ...").
 */
bool keeld_state_validate(json_t *doc, char *err, size_t errlen);

#endif /* KEEL_DAEMON_STATE_H */
