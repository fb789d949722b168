/*
 * The volume manager's changes, each a state machine of steps (volume_steps.c) that
 * continue in callbacks: create, destroy, add (or re-add in place), remove and fault
 * a replica. The entry points check what needs the registry, reserve what the change
 * needs (the busy mark, a new volume's name and paths) before returning, and start the
 * first step from a message.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/bdev.h"
#include "keel/log.h"
#include "keel/nexus.h"
#include "keel/reactor.h"
#include "volume_internal.h"

/* ------------------------------------------------------------------------------ */
/* Create                                                                          */
/* ------------------------------------------------------------------------------ */

static void vol_create_undone(struct vol_op *op)
{
	struct keeld_volume *v = op->vol;

	vol_unregister(v);
	op->vol = NULL;
	vol_free(v);
	vol_op_answer_error(op);
}

static void vol_create_bdevs_closed(struct vol_op *op)
{
	struct vol_replica *r;
	bool any = false;

	TAILQ_FOREACH(r, &op->vol->replicas, link) {
		any |= r->created_file;
	}
	if (any) {
		vol_files(op, true, vol_create_undone);
		return;
	}
	vol_create_undone(op);
}

/* Undo a failed create in reverse order: the bdevs, then the targets it created. */
static void vol_create_rollback(struct vol_op *op)
{
	vol_close_replicas(op, vol_create_bdevs_closed);
}

static void vol_create_nexus_done(void *cb_arg, int status, const char *errmsg,
				  struct keel_nexus *nexus)
{
	struct vol_op *op = cb_arg;
	struct keeld_volume *v = op->vol;

	(void)nexus;
	if (status != 0) {
		vol_op_fail_nexus(op, status, errmsg);
		vol_create_rollback(op);
		return;
	}
	v->status = VOL_READY;
	vol_learn_uuids(v);
	KEEL_NOTICELOG("volume %s: created (%llu bytes, %u replicas)", v->name,
		       (unsigned long long)v->size, vol_replica_count(v));
	vol_save_then_answer(op);
}

static void vol_create_replicas_open(struct vol_op *op)
{
	struct keeld_volume *v = op->vol;
	const char *names[KEEL_NEXUS_MAX_REPLICAS];
	struct keel_nexus_create_opts opts = {0};
	struct vol_replica *r;
	uint32_t n = 0;
	int rc;

	if (op->status != 0) {
		vol_create_rollback(op);
		return;
	}
	TAILQ_FOREACH(r, &v->replicas, link) {
		names[n++] = r->bdev;
	}
	opts.name = v->name;
	opts.replicas = names;
	opts.num_replicas = n;
	opts.size_bytes = v->size;
	opts.force = op->force;
	rc = keel_nexus_create(&opts, vol_create_nexus_done, op);
	if (rc != 0) {
		vol_op_fail(op, rc, "volume %s: the nexus refused the volume: %s", v->name,
			    strerror(-rc));
		vol_create_rollback(op);
	}
}

static void vol_create_files_ready(struct vol_op *op)
{
	if (op->status != 0) {
		/* The backend removed what it created before failing. */
		vol_create_undone(op);
		return;
	}
	vol_open_replicas(op, vol_create_replicas_open);
}

static void vol_create_start(struct vol_op *op)
{
	if (op->vol->transient) {
		vol_create_replicas_open(op);
	} else {
		vol_files(op, false, vol_create_files_ready);
	}
}

/* Targets of a new volume that are taken, or bdevs that do not exist. */
static bool vol_create_targets_free(struct vol_op *op, const struct keeld_volume_create_opts *opts)
{
	bool by_path = opts->replicas != NULL;

	for (uint32_t i = 0; i < opts->num_replicas; i++) {
		const char *s = by_path ? opts->replicas[i] : opts->replica_bdevs[i];
		struct keeld_volume *owner;

		owner = vol_find_replica_owner(by_path ? s : NULL, by_path ? NULL : s, NULL);
		if (owner != NULL) {
			vol_op_fail(op, -EEXIST, "%s '%.200s' is already a replica of volume '%s'",
				    by_path ? "file" : "bdev", s, owner->name);
			return false;
		}
		if (!by_path && keel_bdev_get_by_name(s) == NULL) {
			vol_op_fail(op, -ENODEV,
				    "bdev '%.64s' not found: create it first (see "
				    "bdev_get_bdevs)",
				    s);
			return false;
		}
	}
	if (keeld_volume_find(opts->name, NULL, 0) != NULL) {
		vol_op_fail(op, -EEXIST,
			    "volume '%s' already exists: choose another name or "
			    "destroy it first",
			    opts->name);
		return false;
	}
	if (keel_bdev_get_by_name(opts->name) != NULL) {
		vol_op_fail(op, -EEXIST,
			    "a bdev named '%s' exists and the volume's bdev would take "
			    "that name: choose another volume name",
			    opts->name);
		return false;
	}
	return true;
}

int keeld_volume_create(const struct keeld_volume_create_opts *opts, keeld_volume_op_cb cb_fn,
			void *cb_arg)
{
	enum keeld_backend backend;
	bool by_path;
	struct keeld_volume *v;
	struct vol_op *op;
	int rc;

	if (!keeld_volume_create_opts_valid(opts, NULL, 0)) {
		return -EINVAL;
	}
	rc = vol_op_begin(cb_fn, cb_arg, &op);
	if (rc != 0) {
		return rc;
	}
	by_path = opts->replicas != NULL;
	backend = vol_backend_resolve(opts->backend);
	if (!vol_create_targets_free(op, opts) ||
	    (by_path && vol_backend_refuse_unavailable(op, backend))) {
		return vol_op_refuse(op);
	}
	v = vol_new(opts->name, opts->size);
	if (v == NULL) {
		goto out_nomem;
	}
	v->backend = backend;
	for (uint32_t i = 0; i < opts->num_replicas; i++) {
		if (vol_add_replica_rec(v, by_path ? opts->replicas[i] : NULL,
					by_path ? NULL : opts->replica_bdevs[i]) == NULL) {
			vol_free(v);
			goto out_nomem;
		}
	}
	v->status = VOL_CREATING;
	v->transient = !by_path;
	op->vol = v;
	op->force = opts->force;
	rc = vol_op_launch(op, vol_create_start);
	if (rc != 0) {
		vol_free(v);
		return rc;
	}
	/* Listed from now on, so the name and paths are taken while files are made. */
	vol_register(v);
	KEEL_NOTICELOG("volume %s: creating (%llu bytes, %u replicas%s%s%s)", v->name,
		       (unsigned long long)v->size, vol_replica_count(v), by_path ? ", " : "",
		       by_path ? keeld_backend_name(v->backend) : "", opts->force ? ", force" : "");
	return 0;

out_nomem:
	vol_op_free(op);
	return -ENOMEM;
}

/* ------------------------------------------------------------------------------ */
/* Destroy                                                                         */
/* ------------------------------------------------------------------------------ */

static void vol_destroy_bdevs_closed(struct vol_op *op)
{
	struct keeld_volume *v = op->vol;

	KEEL_NOTICELOG("volume %s: destroyed%s", v->name, op->wipe ? " (labels wiped)" : "");
	vol_unregister(v);
	vol_free(v);
	op->vol = NULL;
	vol_save_then_answer(op);
}

static void vol_destroy_nexus_done(void *cb_arg, int status, const char *errmsg,
				   struct keel_nexus *nexus)
{
	struct vol_op *op = cb_arg;

	(void)nexus;
	if (status != 0) {
		/* The volume is gone either way; say what went wrong in the log. */
		KEEL_WARNLOG("volume %s: destroy: %s", op->vol->name,
			     errmsg != NULL ? errmsg : strerror(-status));
	}
	vol_close_replicas(op, vol_destroy_bdevs_closed);
}

static void vol_destroy_nexus(struct vol_op *op)
{
	int rc;

	if (keel_nexus_get_by_name(op->vol->name) == NULL) {
		vol_close_replicas(op, vol_destroy_bdevs_closed);
		return;
	}
	rc = keel_nexus_destroy(op->vol->name, op->wipe, vol_destroy_nexus_done, op);
	if (rc != 0) {
		vol_destroy_nexus_done(op, rc, NULL, NULL);
	}
}

static void vol_destroy_start(struct vol_op *op)
{
	vol_stop_exports(op, vol_destroy_nexus);
}

int keeld_volume_destroy(const char *name, bool wipe, keeld_volume_op_cb cb_fn, void *cb_arg)
{
	struct keeld_volume *v;
	struct vol_op *op;
	int rc;

	if (name == NULL) {
		return -EINVAL;
	}
	rc = vol_op_begin(cb_fn, cb_arg, &op);
	if (rc != 0) {
		return rc;
	}
	v = vol_get_for_change(op, name, false);
	if (v == NULL) {
		return vol_op_refuse(op);
	}
	op->vol = v;
	op->wipe = wipe;
	rc = vol_op_launch(op, vol_destroy_start);
	if (rc != 0) {
		return rc;
	}
	v->status = VOL_DESTROYING;
	KEEL_NOTICELOG("volume %s: destroying%s", v->name, wipe ? " and wiping labels" : "");
	return 0;
}

/* ------------------------------------------------------------------------------ */
/* Add a replica                                                                   */
/* ------------------------------------------------------------------------------ */

static void vol_add_undone(struct vol_op *op)
{
	vol_replica_free(op->vol, op->rep);
	op->rep = NULL;
	vol_op_answer_error(op);
}

static void vol_add_bdev_closed(struct vol_op *op)
{
	if (op->rep->created_file) {
		vol_files(op, true, vol_add_undone);
		return;
	}
	vol_add_undone(op);
}

static void vol_add_nexus_done(void *cb_arg, int status, const char *errmsg,
			       struct keel_nexus *nexus)
{
	struct vol_op *op = cb_arg;

	(void)nexus;
	if (status != 0) {
		vol_op_fail_nexus(op, status, errmsg);
		vol_close_replicas(op, vol_add_bdev_closed);
		return;
	}
	vol_learn_uuids(op->vol);
	KEEL_NOTICELOG("volume %s: replica %s added%s%s", op->vol->name,
		       op->rep->path != NULL ? op->rep->path : op->rep->bdev,
		       op->rep->path != NULL ? " through " : "",
		       op->rep->path != NULL ? keeld_backend_name(op->rep->backend) : "");
	vol_save_then_answer(op);
}

static void vol_add_opened(struct vol_op *op)
{
	int rc;

	if (op->status != 0) {
		vol_close_replicas(op, vol_add_bdev_closed);
		return;
	}
	rc = keel_nexus_add_replica(op->vol->name, op->rep->bdev, op->force, vol_add_nexus_done,
				    op);
	if (rc != 0) {
		vol_add_nexus_done(op, rc, NULL, NULL);
	}
}

static void vol_add_file_ready(struct vol_op *op)
{
	if (op->status != 0) {
		vol_add_undone(op);
		return;
	}
	vol_open_replicas(op, vol_add_opened);
}

static void vol_add_start(struct vol_op *op)
{
	if (op->rep->path == NULL) {
		vol_add_opened(op);
	} else {
		vol_files(op, false, vol_add_file_ready);
	}
}

/* The nexus's view of replica \p r: faulted or offline ones can be re-added in place. */
static enum keel_nexus_replica_state vol_replica_nexus_state(struct keeld_volume *v,
							     const struct vol_replica *r)
{
	struct keel_nexus *nx = keel_nexus_get_by_name(v->name);
	enum keel_nexus_replica_state st = KEEL_NEXUS_REPLICA_HEALTHY;
	struct keel_nexus_info *info;

	if (nx == NULL || (info = calloc(1, sizeof(*info))) == NULL) {
		return st; /* unknown: treat as present, refuse as before */
	}
	keel_nexus_get_info(nx, info);
	st = KEEL_NEXUS_REPLICA_OFFLINE; /* not listed at all: nothing attached */
	for (uint32_t i = 0; i < info->num_replicas; i++) {
		const struct keel_nexus_replica_info *ri = &info->replicas[i];

		if ((r->bdev[0] != '\0' && strcmp(ri->bdev_name, r->bdev) == 0) ||
		    (r->uuid[0] != '\0' && strcmp(ri->uuid, r->uuid) == 0)) {
			st = ri->state;
			break;
		}
	}
	free(info);
	return st;
}

/*
 * Re-add in place: the replica record stays; its bdev is made anew (a fresh fd: the
 * file or the device under it may have been replaced or reattached), and the nexus
 * recognises the label (this volume, its member UUID) and rejoins it.
 */
static void vol_readd_nexus_done(void *cb_arg, int status, const char *errmsg,
				 struct keel_nexus *nexus)
{
	struct vol_op *op = cb_arg;

	(void)nexus;
	if (status != 0) {
		vol_op_fail(op, status, "volume %s: re-adding replica %s: %s", op->vol->name,
			    op->rep->path, errmsg != NULL ? errmsg : strerror(-status));
		/* The record stays (still listed as faulted); its new bdev stays open
		 * for the next try and is closed with the volume. */
		vol_op_answer_error(op);
		return;
	}
	vol_learn_uuids(op->vol);
	KEEL_NOTICELOG("volume %s: replica %s re-added in place", op->vol->name, op->rep->path);
	vol_save_then_answer(op);
}

static void vol_readd_opened(struct vol_op *op)
{
	int rc;

	if (op->status != 0) {
		vol_op_answer_error(op);
		return;
	}
	rc = keel_nexus_add_replica(op->vol->name, op->rep->bdev, op->force, vol_readd_nexus_done,
				    op);
	if (rc != 0) {
		vol_readd_nexus_done(op, rc, NULL, NULL);
	}
}

static void vol_readd_closed(struct vol_op *op)
{
	vol_open_replicas(op, vol_readd_opened);
}

static void vol_readd_start(struct vol_op *op)
{
	vol_close_replicas(op, vol_readd_closed);
}

/*
 * \p path is already a replica of volume \p name: re-add it when the nexus lists it as
 * faulted or offline, else refuse. \return as keeld_volume_add_replica.
 */
static int vol_readd(struct vol_op *op, const char *name, struct vol_replica *r,
		     enum keeld_backend backend, bool force)
{
	enum keel_nexus_replica_state st;
	struct keeld_volume *v;
	int rc;

	v = vol_get_for_change(op, name, true);
	if (v == NULL) {
		return vol_op_refuse(op);
	}
	backend = backend != KEELD_BACKEND_DEFAULT ? backend : r->backend;
	if (vol_backend_refuse_unavailable(op, backend)) {
		return vol_op_refuse(op);
	}
	st = vol_replica_nexus_state(v, r);
	if (st != KEEL_NEXUS_REPLICA_FAULTED && st != KEEL_NEXUS_REPLICA_OFFLINE) {
		vol_op_fail(op, -EEXIST, "file '%.200s' is already a %s replica of volume '%s'",
			    r->path, st == KEEL_NEXUS_REPLICA_REBUILDING ? "rebuilding" : "healthy",
			    v->name);
		return vol_op_refuse(op);
	}
	op->vol = v;
	op->rep = r;
	op->force = force;
	rc = vol_op_launch(op, vol_readd_start);
	if (rc != 0) {
		return rc;
	}
	/* The fresh bdev is opened through the backend asked for; the record says so. */
	r->backend = backend;
	KEEL_NOTICELOG("volume %s: re-adding faulted replica %s in place (%s)", v->name, r->path,
		       keeld_backend_name(backend));
	return 0;
}

int keeld_volume_add_replica(const char *name, const char *replica, const char *replica_bdev,
			     enum keeld_backend backend, bool force, keeld_volume_op_cb cb_fn,
			     void *cb_arg)
{
	const char *target = replica != NULL ? replica : replica_bdev;
	struct vol_replica *r = NULL;
	struct keeld_volume *v, *owner;
	struct vol_op *op;
	int rc;

	if (name == NULL ||
	    !keeld_volume_add_replica_valid(name, replica, replica_bdev, backend, NULL, 0)) {
		return -EINVAL;
	}
	rc = vol_op_begin(cb_fn, cb_arg, &op);
	if (rc != 0) {
		return rc;
	}
	owner = vol_find_replica_owner(replica, replica_bdev, &r);
	if (owner != NULL && replica != NULL && strcmp(owner->name, name) == 0) {
		return vol_readd(op, name, r, backend, force);
	}
	if (owner != NULL) {
		vol_op_fail(op, -EEXIST, "%s '%.200s' is already a replica of volume '%s'",
			    replica != NULL ? "file" : "bdev", target, owner->name);
		return vol_op_refuse(op);
	}
	if (replica_bdev != NULL && keel_bdev_get_by_name(replica_bdev) == NULL) {
		vol_op_fail(op, -ENODEV,
			    "bdev '%.64s' not found: create it first (see "
			    "bdev_get_bdevs)",
			    replica_bdev);
		return vol_op_refuse(op);
	}
	v = vol_get_for_change(op, name, true);
	if (v == NULL) {
		return vol_op_refuse(op);
	}
	if (vol_replica_count(v) >= KEEL_NEXUS_MAX_REPLICAS) {
		vol_op_fail(op, -ENOSPC,
			    "volume '%s' has the most replicas a volume can have "
			    "(%d): remove one first",
			    v->name, KEEL_NEXUS_MAX_REPLICAS);
		return vol_op_refuse(op);
	}
	backend = backend != KEELD_BACKEND_DEFAULT ? backend : v->backend;
	if (replica != NULL && vol_backend_refuse_unavailable(op, backend)) {
		return vol_op_refuse(op);
	}
	r = vol_add_replica_rec(v, replica, replica_bdev);
	if (r == NULL) {
		vol_op_free(op);
		return -ENOMEM;
	}
	r->backend = backend;
	op->vol = v;
	op->rep = r;
	op->force = force;
	rc = vol_op_launch(op, vol_add_start);
	if (rc != 0) {
		vol_replica_free(v, r);
	}
	return rc;
}

/* ------------------------------------------------------------------------------ */
/* Remove and fault a replica                                                      */
/* ------------------------------------------------------------------------------ */

/* What the nexus knows the replica by: its bdev, else (missing file) its UUID. */
static const char *vol_replica_nexus_id(const struct vol_replica *r)
{
	return r->bdev[0] != '\0' ? r->bdev : r->uuid[0] != '\0' ? r->uuid : NULL;
}

static void vol_remove_bdev_closed(struct vol_op *op)
{
	KEEL_NOTICELOG("volume %s: replica %s removed", op->vol->name,
		       op->rep->path != NULL ? op->rep->path : op->rep->bdev);
	vol_replica_free(op->vol, op->rep);
	op->rep = NULL;
	vol_save_then_answer(op);
}

static void vol_remove_nexus_done(void *cb_arg, int status, const char *errmsg,
				  struct keel_nexus *nexus)
{
	struct vol_op *op = cb_arg;

	(void)nexus;
	if (status == -ENODEV && op->rep->bdev[0] == '\0') {
		/* Never part of the assembled volume (its file was missing and its UUID
		 * unknown): forgetting the path is all there is to do. */
		status = 0;
	}
	if (status != 0) {
		if (status == -EBUSY) {
			vol_op_fail(op, status, "%s (destroy the volume instead)",
				    errmsg != NULL ? errmsg
						   : "the last healthy replica cannot be "
						     "removed");
		} else {
			vol_op_fail(op, status, "%s", errmsg != NULL ? errmsg : strerror(-status));
		}
		vol_op_answer_error(op);
		return;
	}
	vol_close_replicas(op, vol_remove_bdev_closed);
}

static void vol_remove_start(struct vol_op *op)
{
	const char *id = vol_replica_nexus_id(op->rep);
	int rc;

	rc = id != NULL ? keel_nexus_remove_replica(op->vol->name, id, vol_remove_nexus_done, op)
			: -ENODEV;
	if (rc != 0) {
		vol_remove_nexus_done(op, rc, NULL, NULL);
	}
}

static void vol_fault_nexus_done(void *cb_arg, int status, const char *errmsg,
				 struct keel_nexus *nexus)
{
	struct vol_op *op = cb_arg;
	const char *which = op->rep->path != NULL ? op->rep->path : op->rep->bdev;

	(void)nexus;
	if (status == -EALREADY) {
		vol_op_fail(op, status,
			    "replica %s of volume %s is not healthy or rebuilding: "
			    "nothing to fault",
			    which, op->vol->name);
	} else if (status == -EBUSY) {
		vol_op_fail(op, status, "%s",
			    errmsg != NULL ? errmsg : "the last healthy replica cannot be faulted");
	} else if (status != 0) {
		vol_op_fail(op, status, "%s", errmsg != NULL ? errmsg : strerror(-status));
	}
	if (status != 0) {
		vol_op_answer_error(op);
		return;
	}
	KEEL_NOTICELOG("volume %s: replica %s faulted by the administrator", op->vol->name, which);
	vol_op_answer(op);
}

static void vol_fault_start(struct vol_op *op)
{
	const char *id = vol_replica_nexus_id(op->rep);
	int rc;

	rc = id != NULL ? keel_nexus_fault_replica(op->vol->name, id, vol_fault_nexus_done, op)
			: -ENODEV;
	if (rc == -ENODEV) {
		vol_op_fail(op, rc,
			    "replica %s of volume %s is not in the assembled volume "
			    "(missing file?): nothing to fault",
			    op->rep->path != NULL ? op->rep->path : op->rep->bdev, op->vol->name);
		vol_op_answer_error(op);
	} else if (rc != 0) {
		vol_fault_nexus_done(op, rc, NULL, NULL);
	}
}

static int vol_replica_change(const char *name, const char *replica, vol_step_fn first,
			      keeld_volume_op_cb cb_fn, void *cb_arg)
{
	struct keeld_volume *v;
	struct vol_replica *r;
	struct vol_op *op;
	int rc;

	if (name == NULL || replica == NULL) {
		return -EINVAL;
	}
	rc = vol_op_begin(cb_fn, cb_arg, &op);
	if (rc != 0) {
		return rc;
	}
	v = vol_get_for_change(op, name, true);
	if (v == NULL) {
		return vol_op_refuse(op);
	}
	r = vol_find_replica(v, replica);
	if (r == NULL) {
		vol_op_fail(op, -ENOENT,
			    "volume '%s' has no replica '%.200s': volume_get lists "
			    "its replicas by path",
			    v->name, replica);
		return vol_op_refuse(op);
	}
	op->vol = v;
	op->rep = r;
	return vol_op_launch(op, first);
}

int keeld_volume_remove_replica(const char *name, const char *replica, keeld_volume_op_cb cb_fn,
				void *cb_arg)
{
	return vol_replica_change(name, replica, vol_remove_start, cb_fn, cb_arg);
}

int keeld_volume_fault_replica(const char *name, const char *replica, keeld_volume_op_cb cb_fn,
			       void *cb_arg)
{
	return vol_replica_change(name, replica, vol_fault_start, cb_fn, cb_arg);
}
