/*
 * The volume manager's core: the registry of volumes, the checks of arguments, and the
 * lifetime of an operation (begin, refuse, answer, save then answer). The operations
 * themselves are in volume_ops.c, their steps in volume_steps.c, restore and shutdown
 * in volume_restore.c, rendering in volume_json.c, replica targets in the backend
 * (replica_backend.h). See volume_manager.h for the rules they keep.
 *
 * Every operation starts from a message, even a refusal, so its callback never runs
 * inside the call that started it, and whatever the call reserved (the volume's busy
 * mark, a new volume's name and paths) is reserved before the call returns.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/bdev.h"
#include "keel/bdev_nbd_client.h"
#include "keel/log.h"
#include "keel/nexus.h"
#include "keel/reactor.h"
#include "bdev_persist.h"
#include "replica_probe.h"
#include "store.h"
#include "volume_internal.h"
#include "keel/nbd.h"

static TAILQ_HEAD(, keeld_volume) g_vols = TAILQ_HEAD_INITIALIZER(g_vols);
static uint32_t g_ops_in_flight;

/* ------------------------------------------------------------------------------ */
/* Registry                                                                        */
/* ------------------------------------------------------------------------------ */

bool keeld_volume_name_valid(const char *name, char *why, size_t len)
{
	char rule[128];

	if (keel_nexus_name_valid(name, rule, sizeof(rule))) {
		return true;
	}
	if (why != NULL && len > 0) {
		/* The name is not repeated: it may hold what a log must not print. */
		if (name != NULL && name[0] != '\0' &&
		    strnlen(name, KEEL_NEXUS_NAME_MAX + 1) <= KEEL_NEXUS_NAME_MAX) {
			snprintf(why, len, "not a valid volume name: %s", rule);
		} else {
			snprintf(why, len, "%s", rule);
		}
	}
	return false;
}

struct keeld_volume *keeld_volume_first(void)
{
	return TAILQ_FIRST(&g_vols);
}

struct keeld_volume *keeld_volume_next(struct keeld_volume *vol)
{
	return vol != NULL ? TAILQ_NEXT(vol, link) : NULL;
}

const char *keeld_volume_get_name(const struct keeld_volume *vol)
{
	return vol->name;
}

struct keeld_volume *keeld_volume_find(const char *name, char *err, size_t errlen)
{
	struct keeld_volume *v;

	TAILQ_FOREACH(v, &g_vols, link) {
		if (strcmp(v->name, name) == 0) {
			return v;
		}
	}
	if (err != NULL && errlen > 0) {
		snprintf(err, errlen, "volume '%.64s' not found: volume_list shows the volumes",
			 name);
	}
	return NULL;
}

struct keeld_volume *vol_find_replica_owner(const char *path, const char *bdev,
					    struct vol_replica **rep_out)
{
	struct keeld_volume *v;
	struct vol_replica *r;

	TAILQ_FOREACH(v, &g_vols, link) {
		TAILQ_FOREACH(r, &v->replicas, link) {
			if ((path != NULL && r->path != NULL && strcmp(r->path, path) == 0) ||
			    (bdev != NULL && r->bdev[0] != '\0' && strcmp(r->bdev, bdev) == 0)) {
				if (rep_out != NULL) {
					*rep_out = r;
				}
				return v;
			}
		}
	}
	return NULL;
}

struct vol_replica *vol_find_replica(struct keeld_volume *v, const char *id)
{
	struct vol_replica *r;

	TAILQ_FOREACH(r, &v->replicas, link) {
		if ((r->path != NULL && strcmp(r->path, id) == 0) ||
		    (r->bdev[0] != '\0' && strcmp(r->bdev, id) == 0)) {
			return r;
		}
	}
	return NULL;
}

struct keeld_volume *vol_new(const char *name, uint64_t size)
{
	struct keeld_volume *v = calloc(1, sizeof(*v));

	if (v == NULL) {
		return NULL;
	}
	snprintf(v->name, sizeof(v->name), "%s", name);
	v->size = size;
	v->backend = KEELD_BACKEND_AIO;
	TAILQ_INIT(&v->replicas);
	return v;
}

void vol_register(struct keeld_volume *v)
{
	TAILQ_INSERT_TAIL(&g_vols, v, link);
}

void vol_unregister(struct keeld_volume *v)
{
	TAILQ_REMOVE(&g_vols, v, link);
}

struct vol_replica *vol_add_replica_rec(struct keeld_volume *v, const char *path, const char *bdev)
{
	struct vol_replica *r = calloc(1, sizeof(*r));

	if (r == NULL) {
		return NULL;
	}
	if (path != NULL) {
		r->path = strdup(path);
		if (r->path == NULL) {
			free(r);
			return NULL;
		}
	}
	if (bdev != NULL) {
		snprintf(r->bdev, sizeof(r->bdev), "%s", bdev);
	}
	r->backend = v->backend;
	TAILQ_INSERT_TAIL(&v->replicas, r, link);
	return r;
}

void vol_replica_free(struct keeld_volume *v, struct vol_replica *r)
{
	TAILQ_REMOVE(&v->replicas, r, link);
	free(r->path);
	free(r);
}

void vol_free(struct keeld_volume *v)
{
	struct vol_replica *r;

	while ((r = TAILQ_FIRST(&v->replicas)) != NULL) {
		vol_replica_free(v, r);
	}
	json_decref(v->pending_exports);
	free(v);
}

uint32_t vol_replica_count(const struct keeld_volume *v)
{
	const struct vol_replica *r;
	uint32_t n = 0;

	TAILQ_FOREACH(r, &v->replicas, link) {
		n++;
	}
	return n;
}

void keeld_volumes_fini(void)
{
	struct keeld_volume *v;

	while ((v = TAILQ_FIRST(&g_vols)) != NULL) {
		TAILQ_REMOVE(&g_vols, v, link);
		vol_free(v);
	}
	vol_restore_fini();
	keeld_bdevs_fini();
}

/* Whether some replica record of any volume reserved \p name (its bdev may not be
 * registered yet while it is being opened). */
static bool vol_bdev_name_reserved(const char *name)
{
	return keel_bdev_get_by_name(name) != NULL ||
	       vol_find_replica_owner(NULL, name, NULL) != NULL;
}

int vol_pick_bdev_name(const char *vol_name, char *out, size_t len)
{
	unsigned idx;

	for (idx = 0; idx < 4096; idx++) {
		char suffix[16], name[KEEL_BDEV_NAME_MAX + 1];
		int keep;

		snprintf(suffix, sizeof(suffix), ".r%u", idx);
		keep = KEEL_BDEV_NAME_MAX - (int)strlen(suffix);
		snprintf(name, sizeof(name), "%.*s%s", keep, vol_name, suffix);
		if (!vol_bdev_name_reserved(name)) {
			snprintf(out, len, "%s", name);
			return 0;
		}
	}
	return -EEXIST;
}

/* ------------------------------------------------------------------------------ */
/* Checks that need no registry                                                    */
/* ------------------------------------------------------------------------------ */

static bool vol_why(char *why, size_t len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Fill \p why (may be NULL) and \return false, for the checks below. */
static bool vol_why(char *why, size_t len, const char *fmt, ...)
{
	va_list ap;

	if (why != NULL && len > 0) {
		va_start(ap, fmt);
		vsnprintf(why, len, fmt, ap);
		va_end(ap);
	}
	return false;
}

/* A list of replica paths (or bdev names) as the field \p field of a request. */
static bool vol_replica_list_valid(const char *const *list, uint32_t n, bool paths,
				   const char *field, char *why, size_t len)
{
	uint32_t i, j;

	if (list == NULL || n == 0) {
		return vol_why(why, len, "%s: expected a non-empty array of %s", field,
			       paths ? "absolute file paths" : "bdev names");
	}
	if (n > KEEL_NEXUS_MAX_REPLICAS) {
		return vol_why(why, len, "%s: at most %d replicas", field, KEEL_NEXUS_MAX_REPLICAS);
	}
	for (i = 0; i < n; i++) {
		const char *s = list[i];

		if (s == NULL || s[0] == '\0') {
			return vol_why(why, len, "%s[%u]: expected a non-empty string", field, i);
		}
		if (paths && !keel_bdev_nbd_client_is_uri(s) &&
		    (s[0] != '/' || strlen(s) >= PATH_MAX)) {
			return vol_why(why, len,
				       "%s[%u]: '%.200s' is neither an absolute path (keeld "
				       "does not share your working directory) nor an NBD URI",
				       field, i, s);
		}
		if (!paths && strlen(s) > KEEL_BDEV_NAME_MAX) {
			return vol_why(why, len, "%s[%u]: bdev names have at most %d characters",
				       field, i, KEEL_BDEV_NAME_MAX);
		}
		for (j = 0; j < i; j++) {
			if (list[j] != NULL && strcmp(list[j], s) == 0) {
				return vol_why(why, len, "%s: '%.200s' is given twice", field, s);
			}
		}
	}
	return true;
}

/* A backend a request names: a known one, and none for replicas given as bdevs. */
static bool vol_backend_request_valid(enum keeld_backend backend, bool by_path, char *why,
				      size_t len)
{
	if (backend != KEELD_BACKEND_DEFAULT && backend != KEELD_BACKEND_AIO &&
	    backend != KEELD_BACKEND_URING) {
		return vol_why(why, len, "backend: not a replica backend: use aio or uring");
	}
	if (!by_path && backend != KEELD_BACKEND_DEFAULT) {
		return vol_why(why, len,
			       "backend: only for replica files (a replica bdev is open already)");
	}
	return true;
}

bool keeld_volume_create_opts_valid(const struct keeld_volume_create_opts *opts, char *why,
				    size_t len)
{
	char rule[160];
	bool by_path;

	if (opts == NULL) {
		return vol_why(why, len, "no options");
	}
	if (!keeld_volume_name_valid(opts->name, rule, sizeof(rule))) {
		return vol_why(why, len, "name: %s", rule);
	}
	if ((opts->replicas == NULL) == (opts->replica_bdevs == NULL)) {
		return vol_why(why, len, "give replicas (the replica file paths)%s",
			       opts->replicas != NULL ? ", not also replica_bdevs" : "");
	}
	by_path = opts->replicas != NULL;
	if (!vol_backend_request_valid(opts->backend, by_path, why, len)) {
		return false;
	}
	if (!vol_replica_list_valid(by_path ? opts->replicas : opts->replica_bdevs,
				    opts->num_replicas, by_path,
				    by_path ? "replicas" : "replica_bdevs", why, len)) {
		return false;
	}
	if ((by_path || opts->size != 0) &&
	    (opts->size == 0 || opts->size % KEELD_VOLUME_SIZE_ALIGN != 0 ||
	     opts->size > (uint64_t)INT64_MAX - KEEL_NEXUS_DATA_OFFSET)) {
		return vol_why(why, len,
			       "size: %llu is not a usable volume size: a positive "
			       "multiple of %u bytes",
			       (unsigned long long)opts->size, KEELD_VOLUME_SIZE_ALIGN);
	}
	return true;
}

bool keeld_volume_add_replica_valid(const char *name, const char *replica, const char *replica_bdev,
				    enum keeld_backend backend, char *why, size_t len)
{
	struct keeld_volume *v;
	bool by_path = replica != NULL;

	if (!vol_backend_request_valid(backend, replica_bdev == NULL, why, len)) {
		return false;
	}

	if ((replica == NULL) == (replica_bdev == NULL)) {
		return vol_why(why, len, "give replica (the path of the replica file)%s",
			       replica != NULL ? ", not also replica_bdev" : "");
	}
	if (!vol_replica_list_valid(by_path ? &replica : &replica_bdev, 1, by_path,
				    by_path ? "replica" : "replica_bdev", why, len)) {
		return false;
	}
	v = name != NULL ? keeld_volume_find(name, NULL, 0) : NULL;
	if (v != NULL && by_path == v->transient) {
		return vol_why(why, len, "volume '%s' was made from %s: add a replica as %s",
			       v->name, v->transient ? "bdevs" : "files",
			       v->transient ? "replica_bdev" : "replica (a path)");
	}
	return true;
}

/* ------------------------------------------------------------------------------ */
/* Operations: lifetime and answers                                                */
/* ------------------------------------------------------------------------------ */

struct vol_op *vol_op_new(struct keeld_volume *v, keeld_volume_op_cb cb_fn, void *cb_arg)
{
	struct vol_op *op = calloc(1, sizeof(*op));

	if (op == NULL) {
		return NULL;
	}
	op->vol = v;
	op->cb_fn = cb_fn;
	op->cb_arg = cb_arg;
	g_ops_in_flight++;
	return op;
}

void vol_op_free(struct vol_op *op)
{
	size_t i;

	for (i = 0; i < op->nnames; i++) {
		free(op->names[i]);
	}
	free(op->names);
	free(op);
	g_ops_in_flight--;
	vol_shutdown_kick();
}

bool vol_ops_idle(void)
{
	return g_ops_in_flight == 0;
}

void vol_op_fail(struct vol_op *op, int status, const char *fmt, ...)
{
	va_list ap;

	if (op->status != 0) {
		return;
	}
	op->status = status;
	va_start(ap, fmt);
	vsnprintf(op->errmsg, sizeof(op->errmsg), fmt, ap);
	va_end(ap);
}

void vol_op_answer(struct vol_op *op)
{
	if (op->vol != NULL) {
		op->vol->busy = false;
	}
	op->cb_fn(op->cb_arg, op->status, op->status != 0 ? op->errmsg : NULL, op->vol);
	vol_op_free(op);
}

void vol_op_answer_error(struct vol_op *op)
{
	if (op->vol != NULL && strncmp(op->errmsg, "volume ", 7) != 0) {
		KEEL_WARNLOG("volume %s: %s", op->vol->name, op->errmsg);
	} else {
		KEEL_WARNLOG("%s", op->errmsg);
	}
	vol_op_answer(op);
}

static void vol_op_run_msg(void *arg)
{
	struct vol_op *op = arg;

	op->next(op);
}

int vol_op_start(struct vol_op *op, vol_step_fn first)
{
	op->next = first;
	return keel_thread_send_msg(keel_thread_get_current(), vol_op_run_msg, op);
}

int vol_op_begin(keeld_volume_op_cb cb_fn, void *cb_arg, struct vol_op **opp)
{
	if (cb_fn == NULL) {
		return -EINVAL;
	}
	if (vol_stopping()) {
		return -ESHUTDOWN;
	}
	*opp = vol_op_new(NULL, cb_fn, cb_arg);
	return *opp != NULL ? 0 : -ENOMEM;
}

int vol_op_launch(struct vol_op *op, vol_step_fn first)
{
	int rc = vol_op_start(op, first);

	if (rc != 0) {
		vol_op_free(op);
		return rc;
	}
	op->vol->busy = true;
	return 0;
}

int vol_op_refuse(struct vol_op *op)
{
	int rc;

	op->vol = NULL;
	rc = vol_op_start(op, vol_op_answer);
	if (rc != 0) {
		vol_op_free(op);
	}
	return rc;
}

struct keeld_volume *vol_get_for_change(struct vol_op *op, const char *name, bool need_assembled)
{
	struct keeld_volume *v = keeld_volume_find(name, op->errmsg, sizeof(op->errmsg));

	if (v == NULL) {
		op->status = -ENOENT;
		return NULL;
	}
	if (v->status == VOL_CREATING || v->status == VOL_DESTROYING) {
		vol_op_fail(op, -EBUSY, "volume '%s' is being %s: try again when that finished",
			    name, v->status == VOL_CREATING ? "created" : "destroyed");
		return NULL;
	}
	if (v->busy) {
		vol_op_fail(op, -EBUSY,
			    "volume '%s' is busy with another change: try again when "
			    "it finished",
			    name);
		return NULL;
	}
	if (need_assembled && (v->status != VOL_READY || keel_nexus_get_by_name(name) == NULL)) {
		vol_op_fail(op, -ENODEV,
			    "volume '%s' is not assembled%s%s: only volume_destroy "
			    "works on it",
			    name, v->error[0] ? ": " : "", v->error);
		return NULL;
	}
	return v;
}

static void vol_saved(void *cb_arg, int status)
{
	struct vol_op *op = cb_arg;

	if (status != 0) {
		op->status = status;
		snprintf(op->errmsg, sizeof(op->errmsg),
			 "the change was made, but keeld could "
			 "not save it to %s (%s): it will be forgotten at the next restart unless "
			 "a later save works",
			 keeld_store_path(KEELD_DOC_STATE),
			 keeld_store_last_error(KEELD_DOC_STATE));
	}
	vol_op_answer(op);
}

void vol_save_then_answer(struct vol_op *op)
{
	if (vol_state_save(vol_saved, op) != 0) {
		vol_saved(op, -ENOMEM);
	}
}
