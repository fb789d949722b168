/*
 * The store of keeld's documents (see store.h). Every document is a small JSON file
 * that keeld rewrites whole, so one writer serves them all: a queue of waiters per
 * document, one write in flight, the snapshot taken when a write starts.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <unistd.h>

#include "keel/file.h"
#include "keel/log.h"
#include "keel/reactor.h"
#include "paths.h"
#include "store.h"

struct store_waiter {
	keeld_store_done_cb cb_fn;
	void *cb_arg;
	TAILQ_ENTRY(store_waiter) link;
};

TAILQ_HEAD(store_waiter_list, store_waiter);

struct store_doc {
	const char *what;      /* for log lines: "state", "rebuild history" */
	const char *file_what; /* for read errors: "state file" */
	enum keel_state_file file;
	char path[PATH_MAX];
	keeld_store_snapshot_fn snapshot_fn;
	void *snapshot_ctx;
	struct store_waiter_list waiting; /* requests the next write covers */
	bool anon_pending;                /* a save without a waiter still needs a write */
	bool writing;
	char last_error[3 * PATH_MAX];
};

/* One write: its text and the requests it answers. */
struct store_write {
	struct store_doc *doc;
	char *text;
	size_t len;
	struct store_waiter_list waiters;
	int rc;
	char err[3 * PATH_MAX];
};

static struct store_doc g_docs[KEELD_DOC_COUNT] = {
	[KEELD_DOC_STATE] = {.what = "state",
			     .file_what = "state file",
			     .file = KEEL_STATE_FILE_STATE},
	[KEELD_DOC_REBUILD_HISTORY] = {.what = "rebuild history",
				       .file_what = "rebuild history file",
				       .file = KEEL_STATE_FILE_REBUILD_HISTORY},
	[KEELD_DOC_NBD_DISKS] = {.what = "kernel devices",
				 .file_what = "kernel device file",
				 .file = KEEL_STATE_FILE_NBD_DISKS},
	[KEELD_DOC_UBLK_DISKS] = {.what = "ublk devices",
				  .file_what = "ublk device file",
				  .file = KEEL_STATE_FILE_UBLK_DISKS},
};

int keeld_store_init(const char *state_dir)
{
	int rc;

	for (size_t i = 0; i < KEELD_DOC_COUNT; i++) {
		struct store_doc *doc = &g_docs[i];

		TAILQ_INIT(&doc->waiting);
		doc->anon_pending = false;
		doc->last_error[0] = '\0';
		/* Room for keel_file_write_atomic's ".tmp". */
		rc = keel_path_state_file(state_dir, doc->file, doc->path, sizeof(doc->path) - 8);
		if (rc != 0) {
			doc->path[0] = '\0';
			return rc;
		}
	}
	return 0;
}

const char *keeld_store_path(enum keeld_doc doc)
{
	return g_docs[doc].path;
}

int keeld_store_read(enum keeld_doc id, json_t **out, char *err, size_t errlen)
{
	struct store_doc *doc = &g_docs[id];
	json_error_t jerr;
	struct stat st;
	int rc;

	*out = NULL;
	if (stat(doc->path, &st) != 0) {
		rc = -errno;
		if (rc == -ENOENT) {
			return 0;
		}
		snprintf(err, errlen, "cannot read %s %s: %s", doc->file_what, doc->path,
			 strerror(-rc));
		return rc;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "%s %s is not a regular file", doc->file_what, doc->path);
		return -EINVAL;
	}
	*out = json_load_file(doc->path, KEELD_STORE_JSON_FLAGS, &jerr);
	if (*out != NULL) {
		return 0;
	}
	/* jansson says only "unable to open": ask the kernel why. */
	if (jerr.position == 0 && st.st_size != 0 && access(doc->path, R_OK) != 0) {
		rc = -errno;
		snprintf(err, errlen, "cannot read %s %s: %s", doc->file_what, doc->path,
			 strerror(-rc));
		return rc;
	}
	snprintf(err, errlen, "%s %s is corrupt (not JSON: %s at line %d)", doc->file_what,
		 doc->path, jerr.text, jerr.line);
	return -EINVAL;
}

const char *keeld_store_last_error(enum keeld_doc doc)
{
	return g_docs[doc].last_error;
}

void keeld_store_set_snapshot(enum keeld_doc doc, keeld_store_snapshot_fn fn, void *ctx)
{
	g_docs[doc].snapshot_fn = fn;
	g_docs[doc].snapshot_ctx = ctx;
}

bool keeld_store_busy(enum keeld_doc id)
{
	struct store_doc *doc = &g_docs[id];

	return doc->writing || !TAILQ_EMPTY(&doc->waiting) || doc->anon_pending;
}

static int store_write_job(void *arg)
{
	struct store_write *w = arg;

	return keel_file_write_atomic(w->doc->path, w->text, w->len, w->err, sizeof(w->err));
}

static void store_start_write(struct store_doc *doc);

static void store_finish(struct store_write *w, int rc)
{
	struct store_doc *doc = w->doc;
	struct store_waiter *waiter;

	if (rc != 0) {
		snprintf(doc->last_error, sizeof(doc->last_error), "%s",
			 w->err[0] ? w->err : strerror(-rc));
		KEEL_ERRLOG("keeld: saving %s: %s", doc->what, doc->last_error);
	} else {
		doc->last_error[0] = '\0';
	}
	while ((waiter = TAILQ_FIRST(&w->waiters)) != NULL) {
		TAILQ_REMOVE(&w->waiters, waiter, link);
		if (waiter->cb_fn != NULL) {
			waiter->cb_fn(waiter->cb_arg, rc);
		}
		free(waiter);
	}
	free(w->text);
	free(w);
}

static void store_write_done(void *cb_arg, int rc)
{
	struct store_write *w = cb_arg;
	struct store_doc *doc = w->doc;

	doc->writing = false;
	store_finish(w, rc);
	if (!TAILQ_EMPTY(&doc->waiting) || doc->anon_pending) {
		store_start_write(doc);
	}
}

static void store_fail_msg(void *arg)
{
	struct store_write *w = arg;

	store_write_done(w, w->rc);
}

/* The document as the file holds it: indented, keys in the owner's order, a final
 * newline. NULL on out of memory. */
static char *store_render(json_t *content, size_t *len)
{
	char *text = json_dumps(content, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	char *grown;

	if (text == NULL) {
		return NULL;
	}
	*len = strlen(text);
	grown = realloc(text, *len + 2);
	if (grown == NULL) {
		free(text);
		return NULL;
	}
	grown[(*len)++] = '\n';
	grown[*len] = '\0';
	return grown;
}

static void store_start_write(struct store_doc *doc)
{
	struct store_write *w;
	json_t *content = NULL;
	int rc;

	w = calloc(1, sizeof(*w));
	if (w == NULL) {
		/* The waiters stay queued: the next save request tries again. */
		KEEL_ERRLOG("keeld: saving %s: out of memory", doc->what);
		return;
	}
	w->doc = doc;
	TAILQ_INIT(&w->waiters);
	TAILQ_CONCAT(&w->waiters, &doc->waiting, link);
	doc->anon_pending = false;
	if (doc->snapshot_fn == NULL) {
		rc = -ENODATA;
		snprintf(w->err, sizeof(w->err), "nothing provides the content of %s", doc->path);
		goto out_fail;
	}
	content = doc->snapshot_fn(doc->snapshot_ctx);
	if (content != NULL) {
		w->text = store_render(content, &w->len);
		json_decref(content);
	}
	if (w->text == NULL) {
		rc = -ENOMEM;
		snprintf(w->err, sizeof(w->err), "out of memory building %s", doc->path);
		goto out_fail;
	}
	rc = keel_spawn_blocking(store_write_job, w, store_write_done, w);
	if (rc != 0) {
		snprintf(w->err, sizeof(w->err), "cannot queue the write of %s: %s", doc->path,
			 strerror(-rc));
		goto out_fail;
	}
	doc->writing = true;
	return;

out_fail:
	/* Callbacks never run inside keeld_store_save: report from a message. */
	w->rc = rc;
	doc->writing = true;
	if (keel_thread_send_msg(keel_thread_get_current(), store_fail_msg, w) != 0) {
		doc->writing = false;
		store_finish(w, rc);
	}
}

int keeld_store_save(enum keeld_doc id, keeld_store_done_cb cb_fn, void *cb_arg)
{
	struct store_doc *doc = &g_docs[id];
	struct store_waiter *waiter = calloc(1, sizeof(*waiter));

	if (waiter == NULL) {
		if (cb_fn != NULL) {
			return -ENOMEM;
		}
		doc->anon_pending = true;
	} else {
		waiter->cb_fn = cb_fn;
		waiter->cb_arg = cb_arg;
		TAILQ_INSERT_TAIL(&doc->waiting, waiter, link);
	}
	if (!doc->writing) {
		store_start_write(doc);
	}
	return 0;
}
