/*
 * keeld's state file: what keeld must remember across restarts (volumes with their
 * replica paths, and the NBD exports of those volumes), as JSON in the state
 * directory. See docs/volumes.md for the format.
 *
 * Threading: keeld_state_read() runs in main() before the reactors start (plain
 * process setup, where blocking is allowed); everything else runs on the main keel
 * thread. The file is written on the blocking-work pool, never on a reactor.
 */
#ifndef KEEL_DAEMON_STATE_H
#define KEEL_DAEMON_STATE_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

/** File name inside the state directory. */
#define KEELD_STATE_FILE "state.json"
/** Format version written into the file; other versions are refused. */
#define KEELD_STATE_VERSION 1

/** Remember where the file lives. \return 0 or -ENAMETOOLONG. */
int keeld_state_init(const char *state_dir);

/** Full path of the state file (valid after keeld_state_init). */
const char *keeld_state_path(void);

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

/** Builds the document to write (a new reference), or NULL on out of memory. */
typedef json_t *(*keeld_state_snapshot_fn)(void);

/** Set the function that produces the document. Main thread. */
void keeld_state_set_snapshot(keeld_state_snapshot_fn fn);

typedef void (*keeld_state_done_cb)(void *cb_arg, int status);

/**
 * Write the current state: the document is built when the write starts, so a write
 * requested while another is in flight is folded into the next one (writes never
 * overtake each other). The file is replaced atomically (temporary file, fsync,
 * rename, fsync of the directory).
 * \p cb_fn (may be NULL) runs once, later, on this thread, with 0 or the negative
 * errno of the write that covered this request; its message is in the log.
 * \return 0, or -ENOMEM (cb never runs).
 */
int keeld_state_save(keeld_state_done_cb cb_fn, void *cb_arg);

/** Whether a write is running or queued. */
bool keeld_state_busy(void);

/** Text of the last write error ("" if the last write worked). */
const char *keeld_state_last_error(void);

#endif /* KEEL_DAEMON_STATE_H */
