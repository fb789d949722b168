/*
 * keeld's state file. Forgetting a volume is worse than not starting, so a file that
 * cannot be read or does not match the format stops keeld with a message naming the
 * file and the field; nothing here guesses or repairs.
 *
 * Writes are serialised: one write in flight at a time, and requests that arrive
 * meanwhile share the next write, whose document is built when it starts. So an
 * older document can never be renamed over a newer one.
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
#include "keel/nexus.h"
#include "keel/reactor.h"
#include "state.h"
#include "volume.h"

struct state_waiter {
	keeld_state_done_cb cb_fn;
	void *cb_arg;
	TAILQ_ENTRY(state_waiter) link;
};

TAILQ_HEAD(state_waiter_list, state_waiter);

struct state_write_job {
	char *text;
	size_t len;
	struct state_waiter_list waiters;
	int rc;
	char err[3 * PATH_MAX];
};

static char g_path[PATH_MAX + 32];
static keeld_state_snapshot_fn g_snapshot_fn;
static struct state_waiter_list g_waiting = TAILQ_HEAD_INITIALIZER(g_waiting);
/* A save without a callback whose waiter could not be allocated still needs a write. */
static bool g_anon_pending;
static bool g_writing;
static char g_last_error[3 * PATH_MAX];

int keeld_state_init(const char *state_dir)
{
	if (strlen(state_dir) >= PATH_MAX ||
	    (size_t)snprintf(g_path, sizeof(g_path), "%s/%s", state_dir, KEELD_STATE_FILE) >=
		    sizeof(g_path)) {
		return -ENAMETOOLONG;
	}
	return 0;
}

const char *keeld_state_path(void)
{
	return g_path;
}

const char *keeld_state_last_error(void)
{
	return g_last_error;
}

/* ------------------------------------------------------------------------------ */
/* Format check                                                                    */
/* ------------------------------------------------------------------------------ */

static bool state_opt_string(json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);

	return v == NULL || json_is_null(v) || json_is_string(v);
}

static bool state_check_volume(json_t *vol, size_t i, json_t *seen_names, json_t *seen_paths,
			       char *err, size_t errlen)
{
	json_t *name = json_object_get(vol, "name");
	json_t *size = json_object_get(vol, "size");
	json_t *replicas = json_object_get(vol, "replicas");
	json_t *rep;
	char why[128];
	size_t j;

	if (!json_is_object(vol)) {
		snprintf(err, errlen, "volumes[%zu]: expected an object", i);
		return false;
	}
	if (!json_is_string(name)) {
		snprintf(err, errlen, "volumes[%zu].name: expected a string", i);
		return false;
	}
	if (!keeld_volume_name_valid(json_string_value(name), why, sizeof(why))) {
		snprintf(err, errlen, "volumes[%zu].name: %s", i, why);
		return false;
	}
	if (json_object_get(seen_names, json_string_value(name)) != NULL) {
		snprintf(err, errlen, "volumes[%zu].name: volume '%s' is listed twice", i,
			 json_string_value(name));
		return false;
	}
	json_object_set_new(seen_names, json_string_value(name), json_true());
	if (!json_is_integer(size) || json_integer_value(size) <= 0) {
		snprintf(err, errlen, "volumes[%zu].size: expected an integer > 0", i);
		return false;
	}
	if (!state_opt_string(vol, "uuid")) {
		snprintf(err, errlen, "volumes[%zu].uuid: expected a string", i);
		return false;
	}
	if (!json_is_array(replicas) || json_array_size(replicas) == 0 ||
	    json_array_size(replicas) > KEEL_NEXUS_MAX_REPLICAS) {
		snprintf(err, errlen, "volumes[%zu].replicas: expected an array of 1 to %d "
			 "replicas", i, KEEL_NEXUS_MAX_REPLICAS);
		return false;
	}
	json_array_foreach(replicas, j, rep) {
		json_t *path = json_object_get(rep, "path");

		if (!json_is_object(rep) || !json_is_string(path) ||
		    json_string_value(path)[0] != '/' ||
		    strlen(json_string_value(path)) >= PATH_MAX) {
			snprintf(err, errlen, "volumes[%zu].replicas[%zu].path: expected an "
				 "absolute path", i, j);
			return false;
		}
		if (!state_opt_string(rep, "uuid")) {
			snprintf(err, errlen, "volumes[%zu].replicas[%zu].uuid: expected a string",
				 i, j);
			return false;
		}
		if (json_object_get(seen_paths, json_string_value(path)) != NULL) {
			snprintf(err, errlen, "volumes[%zu].replicas[%zu].path: %s is listed "
				 "twice", i, j, json_string_value(path));
			return false;
		}
		json_object_set_new(seen_paths, json_string_value(path), json_true());
	}
	return true;
}

static bool state_check_export(json_t *exp, size_t i, char *err, size_t errlen)
{
	json_t *socket = json_object_get(exp, "socket");
	json_t *tcp = json_object_get(exp, "tcp");
	json_t *ro = json_object_get(exp, "read_only");

	if (!json_is_object(exp)) {
		snprintf(err, errlen, "exports[%zu]: expected an object", i);
		return false;
	}
	if (!json_is_string(json_object_get(exp, "name"))) {
		snprintf(err, errlen, "exports[%zu].name: expected a string", i);
		return false;
	}
	if (!json_is_string(json_object_get(exp, "bdev"))) {
		snprintf(err, errlen, "exports[%zu].bdev: expected a string", i);
		return false;
	}
	if (!state_opt_string(exp, "socket") || !state_opt_string(exp, "tcp")) {
		snprintf(err, errlen, "exports[%zu]: socket and tcp must be strings or null", i);
		return false;
	}
	if (!json_is_string(socket) && !json_is_string(tcp)) {
		snprintf(err, errlen, "exports[%zu]: needs a socket or a tcp address", i);
		return false;
	}
	if (ro != NULL && !json_is_boolean(ro)) {
		snprintf(err, errlen, "exports[%zu].read_only: expected true or false", i);
		return false;
	}
	return true;
}

bool keeld_state_validate(json_t *doc, char *err, size_t errlen)
{
	json_t *version, *volumes, *exports, *v, *names, *paths;
	bool ok = true;
	size_t i;

	if (!json_is_object(doc)) {
		snprintf(err, errlen, "expected a JSON object");
		return false;
	}
	version = json_object_get(doc, "version");
	if (!json_is_integer(version)) {
		snprintf(err, errlen, "version: expected an integer");
		return false;
	}
	if (json_integer_value(version) != KEELD_STATE_VERSION) {
		snprintf(err, errlen, "version %lld is not %d: written by another keel version",
			 (long long)json_integer_value(version), KEELD_STATE_VERSION);
		return false;
	}
	volumes = json_object_get(doc, "volumes");
	exports = json_object_get(doc, "exports");
	if (volumes != NULL && !json_is_array(volumes)) {
		snprintf(err, errlen, "volumes: expected an array");
		return false;
	}
	if (exports != NULL && !json_is_array(exports)) {
		snprintf(err, errlen, "exports: expected an array");
		return false;
	}
	names = json_object();
	paths = json_object();
	if (names == NULL || paths == NULL) {
		snprintf(err, errlen, "out of memory");
		ok = false;
		goto out_free;
	}
	json_array_foreach(volumes, i, v) {
		if (!state_check_volume(v, i, names, paths, err, errlen)) {
			ok = false;
			goto out_free;
		}
	}
	json_array_foreach(exports, i, v) {
		if (!state_check_export(v, i, err, errlen)) {
			ok = false;
			goto out_free;
		}
	}
out_free:
	json_decref(names);
	json_decref(paths);
	return ok;
}

/* ------------------------------------------------------------------------------ */
/* Reading (main(), before the reactors)                                           */
/* ------------------------------------------------------------------------------ */

int keeld_state_read(json_t **out, char *err, size_t errlen)
{
	static const char hint[] = "keeld will not start without its volumes: fix the file, or "
				   "move it aside to start with no volumes";
	json_error_t jerr;
	char why[256];
	json_t *doc;
	struct stat st;

	*out = NULL;
	if (stat(g_path, &st) != 0) {
		if (errno == ENOENT) {
			return 0;
		}
		snprintf(err, errlen, "cannot read state file %s: %s; %s", g_path,
			 strerror(errno), hint);
		return -errno;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "state file %s is not a regular file; %s", g_path, hint);
		return -EINVAL;
	}
	doc = json_load_file(g_path, JSON_REJECT_DUPLICATES, &jerr);
	if (doc == NULL) {
		if (jerr.position == 0 && st.st_size != 0 && access(g_path, R_OK) != 0) {
			snprintf(err, errlen, "cannot read state file %s: %s; %s", g_path,
				 strerror(errno), hint);
			return -EACCES;
		}
		snprintf(err, errlen, "state file %s is corrupt (not JSON: %s at line %d); %s",
			 g_path, jerr.text, jerr.line, hint);
		return -EINVAL;
	}
	if (!keeld_state_validate(doc, why, sizeof(why))) {
		snprintf(err, errlen, "state file %s is invalid: %s; %s", g_path, why, hint);
		json_decref(doc);
		return -EINVAL;
	}
	*out = doc;
	return 0;
}

/* ------------------------------------------------------------------------------ */
/* Writing (main keel thread, file I/O on the blocking pool)                       */
/* ------------------------------------------------------------------------------ */

void keeld_state_set_snapshot(keeld_state_snapshot_fn fn)
{
	g_snapshot_fn = fn;
}

bool keeld_state_busy(void)
{
	return g_writing || !TAILQ_EMPTY(&g_waiting) || g_anon_pending;
}

static int state_write_job_fn(void *arg)
{
	struct state_write_job *job = arg;

	return keel_file_write_atomic(g_path, job->text, job->len, job->err, sizeof(job->err));
}

static void state_start_write(void);

static void state_finish_job(struct state_write_job *job, int rc)
{
	struct state_waiter *w;

	if (rc != 0) {
		snprintf(g_last_error, sizeof(g_last_error), "%s", job->err[0] ? job->err :
			 strerror(-rc));
		KEEL_ERRLOG("keeld: saving state: %s", g_last_error);
	} else {
		g_last_error[0] = '\0';
	}
	while ((w = TAILQ_FIRST(&job->waiters)) != NULL) {
		TAILQ_REMOVE(&job->waiters, w, link);
		if (w->cb_fn != NULL) {
			w->cb_fn(w->cb_arg, rc);
		}
		free(w);
	}
	free(job->text);
	free(job);
}

static void state_write_done(void *cb_arg, int rc)
{
	g_writing = false;
	state_finish_job(cb_arg, rc);
	if (!TAILQ_EMPTY(&g_waiting) || g_anon_pending) {
		state_start_write();
	}
}

static void state_fail_msg(void *arg)
{
	struct state_write_job *job = arg;

	state_write_done(job, job->rc);
}

static void state_start_write(void)
{
	struct state_write_job *job;
	json_t *doc = NULL;
	int rc = -ENOMEM;

	job = calloc(1, sizeof(*job));
	if (job == NULL) {
		/* Nothing else to do: the waiters stay queued for the next save. */
		KEEL_ERRLOG("keeld: saving state: out of memory");
		return;
	}
	TAILQ_INIT(&job->waiters);
	TAILQ_CONCAT(&job->waiters, &g_waiting, link);
	g_anon_pending = false;
	if (g_snapshot_fn != NULL) {
		doc = g_snapshot_fn();
	}
	if (doc != NULL) {
		char *text = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);

		json_decref(doc);
		if (text != NULL) {
			/* Room for the trailing newline; json_dumps output is exact-sized. */
			size_t len = strlen(text);
			char *grown = malloc(len + 2);

			if (grown != NULL) {
				memcpy(grown, text, len);
				grown[len++] = '\n';
				grown[len] = '\0';
				job->text = grown;
				job->len = len;
			}
			free(text);
		}
	}
	if (job->text == NULL) {
		snprintf(job->err, sizeof(job->err), "out of memory building the state document");
		goto out_fail;
	}
	rc = keel_spawn_blocking(state_write_job_fn, job, state_write_done, job);
	if (rc != 0) {
		snprintf(job->err, sizeof(job->err), "cannot queue the write: %s", strerror(-rc));
		goto out_fail;
	}
	g_writing = true;
	return;

out_fail:
	/* Callbacks never run inside keeld_state_save: report from a message. */
	job->rc = rc;
	g_writing = true;
	if (keel_thread_send_msg(keel_thread_get_current(), state_fail_msg, job) != 0) {
		g_writing = false;
		state_finish_job(job, rc);
	}
}

int keeld_state_save(keeld_state_done_cb cb_fn, void *cb_arg)
{
	struct state_waiter *w = calloc(1, sizeof(*w));

	if (w == NULL) {
		if (cb_fn != NULL) {
			return -ENOMEM;
		}
		g_anon_pending = true;
	} else {
		w->cb_fn = cb_fn;
		w->cb_arg = cb_arg;
		TAILQ_INSERT_TAIL(&g_waiting, w, link);
	}
	if (!g_writing) {
		state_start_write();
	}
	return 0;
}
