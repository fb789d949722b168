/*
 * The steps the volume manager's operations are made of: the replica targets'
 * blocking work (through the backend, replica_backend.h), opening and closing the
 * replica bdevs one at a time, learning the label UUIDs, stopping a volume's exports.
 * Each step records a failure in the operation and continues with op->next or the
 * given step, so an operation reads as a list of steps (volume_ops.c).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/bdev.h"
#include "keel/log.h"
#include "keel/nexus.h"
#include "keel/reactor.h"
#include "replica_probe.h"
#include "volume_internal.h"
#include "keel/nbd.h"

/* ------------------------------------------------------------------------------ */
/* Replica targets (blocking pool)                                                 */
/* ------------------------------------------------------------------------------ */

struct vol_files_job {
	struct vol_op *op;
	const struct keeld_replica_backend *backend;
	bool unprepare;
	vol_step_fn done;
	struct keeld_replica_prep prep;
};

static void vol_files_job_free(struct vol_files_job *job)
{
	if (job->prep.locators != NULL) {
		for (size_t i = 0; i < job->prep.n; i++) {
			free(job->prep.locators[i]);
		}
	}
	free(job->prep.locators);
	free(job->prep.created);
	keeld_replica_set_free(job->prep.in_use);
	free(job);
}

static int vol_files_job_fn(void *arg)
{
	struct vol_files_job *job = arg;

	if (job->unprepare) {
		job->backend->unprepare(&job->prep);
		return 0;
	}
	return job->backend->prepare(&job->prep);
}

/* The targets of \p op, in the volume's order: op->rep, or every replica with a path. */
static bool vol_files_target(const struct vol_op *op, const struct vol_replica *r)
{
	return r->path != NULL && (op->rep == NULL || r == op->rep);
}

static void vol_files_job_done(void *cb_arg, int rc)
{
	struct vol_files_job *job = cb_arg;
	struct vol_op *op = job->op;
	vol_step_fn done = job->done;
	struct vol_replica *r;
	size_t i = 0;

	if (rc != 0) {
		vol_op_fail(op, rc, "%s", job->prep.err[0] ? job->prep.err : strerror(-rc));
	}
	/* Pass the created flags back to the replica records, in the same order. */
	TAILQ_FOREACH(r, &op->vol->replicas, link) {
		if (!vol_files_target(op, r)) {
			continue;
		}
		if (i < job->prep.n) {
			r->created_file = job->prep.created[i];
		}
		i++;
	}
	vol_files_job_free(job);
	done(op);
}

/* Every replica path of every volume but the targets of \p op, so the blocking job
 * finds a target that is one of them under another name. NULL: out of memory. */
static struct keeld_replica_set *vol_replicas_in_use(const struct vol_op *op)
{
	struct keeld_replica_set *set = keeld_replica_set_new();
	struct keeld_volume *v;
	struct vol_replica *r;

	if (set == NULL) {
		return NULL;
	}
	for (v = keeld_volume_first(); v != NULL; v = keeld_volume_next(v)) {
		TAILQ_FOREACH(r, &v->replicas, link) {
			if (r->path == NULL || r == op->rep || (v == op->vol && op->rep == NULL)) {
				continue;
			}
			if (keeld_replica_set_add(set, r->path, v->name) != 0) {
				keeld_replica_set_free(set);
				return NULL;
			}
		}
	}
	return set;
}

void vol_files(struct vol_op *op, bool unprepare, vol_step_fn done)
{
	struct vol_files_job *job = calloc(1, sizeof(*job));
	struct keeld_replica_prep *prep;
	struct vol_replica *r;
	uint32_t n = vol_replica_count(op->vol);
	int rc = -ENOMEM;

	if (job == NULL) {
		goto out_fail;
	}
	prep = &job->prep;
	prep->locators = calloc(n + 1, sizeof(char *));
	prep->created = calloc(n + 1, sizeof(bool));
	if (prep->locators == NULL || prep->created == NULL) {
		goto out_free_job;
	}
	TAILQ_FOREACH(r, &op->vol->replicas, link) {
		if (!vol_files_target(op, r)) {
			continue;
		}
		prep->locators[prep->n] = strdup(r->path);
		if (prep->locators[prep->n] == NULL) {
			goto out_free_job;
		}
		prep->created[prep->n++] = r->created_file;
	}
	prep->need = op->vol->size + KEEL_NEXUS_DATA_OFFSET;
	prep->force = op->force;
	if (op->rep != NULL) {
		snprintf(prep->volume_uuid, sizeof(prep->volume_uuid), "%s", op->vol->uuid);
	}
	if (!unprepare && (prep->in_use = vol_replicas_in_use(op)) == NULL) {
		goto out_free_job;
	}
	job->op = op;
	/* The targets of one operation share a backend: a new volume's, or op->rep's. */
	job->backend = vol_backend_of(op->rep != NULL ? op->rep->backend : op->vol->backend);
	job->unprepare = unprepare;
	job->done = done;
	rc = keel_spawn_blocking(vol_files_job_fn, job, vol_files_job_done, job);
	if (rc == 0) {
		return;
	}
	vol_op_fail(op, rc, "cannot run file work on the blocking pool: %s", strerror(-rc));

out_free_job:
	vol_files_job_free(job);
out_fail:
	vol_op_fail(op, rc, "out of memory");
	done(op);
}

/* ------------------------------------------------------------------------------ */
/* Replica bdevs                                                                   */
/* ------------------------------------------------------------------------------ */

static void vol_open_next(struct vol_op *op);

static void vol_open_done(void *cb_arg, int status, struct keel_bdev *bdev)
{
	struct vol_op *op = cb_arg;
	struct vol_replica *r = op->cur;

	(void)bdev;
	if (status != 0) {
		r->open_error = status;
		r->bdev[0] = '\0';
		if (!op->restoring) {
			vol_op_fail(op, status, "volume %s: cannot open replica %s: %s",
				    op->vol->name, r->path, r->opened_by->open_error_text(status));
		} else {
			KEEL_WARNLOG("volume %s: replica %s: cannot open: %s", op->vol->name,
				     r->path, r->opened_by->open_error_text(status));
		}
	} else {
		r->owned = true;
		r->open_error = 0;
	}
	op->cur = TAILQ_NEXT(r, link);
	vol_open_next(op);
}

/*
 * The backend that opens \p r: its own. At restore, a uring replica on a machine that
 * refuses io_uring now (a sysctl, a container's seccomp profile) opens through aio:
 * the file is the same either way, and a volume kept unassembled over a missing
 * feature helps nobody. The record keeps uring, so a later restart where io_uring
 * works uses it again.
 */
static const struct keeld_replica_backend *vol_open_backend(struct vol_op *op,
							    const struct vol_replica *r)
{
	char why[256];

	if (!op->restoring || r->backend == KEELD_BACKEND_AIO ||
	    vol_backend_available(r->backend, why, sizeof(why))) {
		return vol_backend_of(r->backend);
	}
	KEEL_WARNLOG("volume %s: replica %s: backend %s is unavailable (%s): opened through "
		     "aio instead",
		     op->vol->name, r->path, keeld_backend_name(r->backend), why);
	return vol_backend_of(KEELD_BACKEND_AIO);
}

/* One replica at a time: a change stops at the first failure; a restore opens what
 * it can. */
static void vol_open_next(struct vol_op *op)
{
	struct vol_replica *r;
	int rc;

	for (r = op->cur; r != NULL; r = TAILQ_NEXT(r, link)) {
		if (r->path == NULL || r->bdev[0] != '\0' || (op->rep != NULL && r != op->rep)) {
			continue;
		}
		if (!op->restoring && op->status != 0) {
			break;
		}
		op->cur = r;
		r->opened_by = vol_open_backend(op, r);
		rc = vol_pick_bdev_name(op->vol->name, r->bdev, sizeof(r->bdev));
		if (rc == 0) {
			rc = r->opened_by->open(r->bdev, r->path, vol_open_done, op);
		}
		if (rc != 0) {
			vol_open_done(op, rc, NULL);
		}
		return;
	}
	op->cur = NULL;
	op->next(op);
}

void vol_open_replicas(struct vol_op *op, vol_step_fn next)
{
	op->cur = TAILQ_FIRST(&op->vol->replicas);
	op->next = next;
	vol_open_next(op);
}

static void vol_close_next(struct vol_op *op);

static void vol_close_done(void *cb_arg, int status)
{
	struct vol_op *op = cb_arg;
	struct vol_replica *r = op->cur;

	if (status != 0) {
		KEEL_WARNLOG("volume %s: closing bdev %s of replica %s: %s", op->vol->name, r->bdev,
			     r->path, strerror(-status));
	}
	r->bdev[0] = '\0';
	r->owned = false;
	op->cur = TAILQ_NEXT(r, link);
	vol_close_next(op);
}

/* What closes the bdev of \p r: what opened it. */
static const struct keeld_replica_backend *vol_replica_closer(const struct vol_replica *r)
{
	return r->opened_by != NULL ? r->opened_by : vol_backend_of(r->backend);
}

static void vol_close_next(struct vol_op *op)
{
	struct vol_replica *r;

	for (r = op->cur; r != NULL; r = TAILQ_NEXT(r, link)) {
		if (!r->owned || r->bdev[0] == '\0' || (op->rep != NULL && r != op->rep)) {
			continue;
		}
		op->cur = r;
		if (vol_replica_closer(r)->close(r->bdev, vol_close_done, op) != 0) {
			/* Already gone (deleted with bdev_delete): nothing to undo. */
			r->bdev[0] = '\0';
			r->owned = false;
			continue;
		}
		return;
	}
	op->cur = NULL;
	op->next(op);
}

void vol_close_replicas(struct vol_op *op, vol_step_fn next)
{
	op->cur = TAILQ_FIRST(&op->vol->replicas);
	op->next = next;
	vol_close_next(op);
}

void vol_learn_uuids(struct keeld_volume *v)
{
	struct keel_nexus *nx = keel_nexus_get_by_name(v->name);
	struct keel_nexus_info *info;
	struct vol_replica *r;
	uint32_t i;

	if (nx == NULL || (info = calloc(1, sizeof(*info))) == NULL) {
		return;
	}
	keel_nexus_get_info(nx, info);
	snprintf(v->uuid, sizeof(v->uuid), "%s", info->uuid);
	if (info->size_bytes != 0) {
		v->size = info->size_bytes; /* replica_bdevs without a size: the nexus chose */
	}
	TAILQ_FOREACH(r, &v->replicas, link) {
		for (i = 0; i < info->num_replicas; i++) {
			if (r->bdev[0] != '\0' &&
			    strcmp(info->replicas[i].bdev_name, r->bdev) == 0) {
				snprintf(r->uuid, sizeof(r->uuid), "%s", info->replicas[i].uuid);
			}
		}
	}
	free(info);
}

void vol_op_fail_nexus(struct vol_op *op, int status, const char *errmsg)
{
	if (status == -EEXIST && errmsg != NULL && strstr(errmsg, "label") != NULL &&
	    strstr(errmsg, "force") == NULL) {
		vol_op_fail(op, status, "%s; pass force (keelctl --force) to overwrite it", errmsg);
	} else {
		vol_op_fail(op, status, "%s", errmsg != NULL ? errmsg : strerror(-status));
	}
}

static void vol_stop_next_export(struct vol_op *op);

static void vol_export_stopped(void *cb_arg, int status)
{
	struct vol_op *op = cb_arg;

	if (status != 0) {
		KEEL_WARNLOG("volume %s: stopping export %s: %s", op->vol->name, op->names[op->idx],
			     strerror(-status));
	}
	op->idx++;
	vol_stop_next_export(op);
}

static void vol_stop_next_export(struct vol_op *op)
{
	while (op->idx < op->nnames) {
		KEEL_NOTICELOG("volume %s: stopping export %s", op->vol->name, op->names[op->idx]);
		if (keel_nbd_export_stop(op->names[op->idx], vol_export_stopped, op) == 0) {
			return;
		}
		op->idx++; /* already stopping or gone */
	}
	op->next(op);
}

void vol_stop_exports(struct vol_op *op, vol_step_fn next)
{
	op->next = next;
	struct keel_nbd_export *e;
	size_t n = 0;

	for (e = keel_nbd_export_first(); e != NULL; e = keel_nbd_export_next(e)) {
		n++;
	}
	op->names = calloc(n + 1, sizeof(char *));
	if (op->names != NULL) {
		for (e = keel_nbd_export_first(); e != NULL; e = keel_nbd_export_next(e)) {
			if (strcmp(keel_nbd_export_get_bdev_name(e), op->vol->name) == 0 &&
			    op->nnames < n) {
				op->names[op->nnames] = strdup(keel_nbd_export_get_name(e));
				if (op->names[op->nnames] != NULL) {
					op->nnames++;
				}
			}
		}
	}
	op->idx = 0;
	vol_stop_next_export(op);
}
