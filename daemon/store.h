/*
 * keeld's documents on disk: one store for every JSON file keeld rewrites in its state
 * directory (the volume state, the rebuild history, the kernel devices). Each document
 * has one reader and one writer here, so the rules hold for all of them:
 *
 * - Atomic: a write replaces the file through keel_file_write_atomic() (temporary file,
 *   fsync, rename, fsync of the directory), on the blocking-work pool.
 * - Debounced: one write per document in flight at a time; the saves requested while
 *   it runs are folded into the next write, whose content is taken (the snapshot
 *   function runs) when that write starts. So an older document never replaces a
 *   newer one, and a burst of changes costs at most two writes.
 * - The owner of a document hands the store its content (a snapshot function); the
 *   store alone knows paths (computed once, from daemon/paths.c), reads and writes
 *   files. Libraries (the NBD kernel devices) hand the daemon their snapshot and are
 *   told theirs at restart; they write no file.
 *
 * Threading: keeld_store_init(), keeld_store_path() and keeld_store_read() run in
 * main() before the reactors start (keeld_store_read blocks); everything else runs on the main keel thread (the one that runs the
 * RPC handlers), and callbacks run there too.
 *
 * Errors: int returns are 0 or a negative errno.
 */
#ifndef KEEL_DAEMON_STORE_H
#define KEEL_DAEMON_STORE_H

#include <stdbool.h>

#include <jansson.h>

/** The documents keeld keeps. */
enum keeld_doc {
	KEELD_DOC_STATE,           /**< volumes and their exports (daemon/state.h) */
	KEELD_DOC_REBUILD_HISTORY, /**< ended rebuild jobs per volume */
	KEELD_DOC_NBD_DISKS,       /**< kernel devices to reattach (keel_nbd_disk_snapshot) */
	KEELD_DOC_UBLK_DISKS,      /**< ublk devices to re-attach (keel_ublk_disk_snapshot) */
	KEELD_DOC_COUNT,
};

/**
 * Compute the path of every document inside \p state_dir. Call once before any other
 * function; again (unit tests) only when no write is in flight.
 * \return 0 or -ENAMETOOLONG.
 */
int keeld_store_init(const char *state_dir);

/** Full path of \p doc ("" before keeld_store_init). Lifetime: until the next init. */
const char *keeld_store_path(enum keeld_doc doc);

/** How every document is parsed (keeld_store_read): one object per key, so a file
 * edited by hand cannot say one thing twice. The fuzz harnesses parse the same way. */
#define KEELD_STORE_JSON_FLAGS JSON_REJECT_DUPLICATES

/**
 * Read \p doc as the last write left it. \p *out is the parsed document (the caller owns
 * it), or NULL when there is no file yet. Blocks: main() only, before the reactors.
 * \return 0, or a negative errno with \p err naming the document and its file: cannot
 * be read (-errno of stat or open), not a regular file or not JSON (-EINVAL). Whether
 * the content is what the owner expects is the owner's check.
 */
int keeld_store_read(enum keeld_doc doc, json_t **out, char *err, size_t errlen);

/**
 * Builds the content of a document: a new reference (the store releases it), or NULL
 * when out of memory (the write fails with -ENOMEM and says so).
 */
typedef json_t *(*keeld_store_snapshot_fn)(void *ctx);

/** Set the function that produces \p doc's content; NULL: saves fail with -ENODATA. */
void keeld_store_set_snapshot(enum keeld_doc doc, keeld_store_snapshot_fn fn, void *ctx);

typedef void (*keeld_store_done_cb)(void *cb_arg, int status);

/**
 * Write \p doc (see the rules above). \p cb_fn (may be NULL) runs once, later, with 0
 * or the negative errno of the write that covered this request; the message is in the
 * log and in keeld_store_last_error().
 * \return 0, or -ENOMEM (only with a callback; \p cb_fn never runs). A save without a
 * callback never fails: when even its bookkeeping cannot be allocated, the next write
 * still happens.
 */
int keeld_store_save(enum keeld_doc doc, keeld_store_done_cb cb_fn, void *cb_arg);

/** Whether a write of \p doc is running or requested. */
bool keeld_store_busy(enum keeld_doc doc);

/** Why the last write of \p doc failed ("" when it worked). */
const char *keeld_store_last_error(enum keeld_doc doc);

#endif /* KEEL_DAEMON_STORE_H */
