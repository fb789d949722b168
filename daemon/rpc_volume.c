/*
 * Volumes: replicated nexus volumes over replica files, as keeld manages them.
 *
 * A volume is a name, a size and a list of replica paths. Each path is opened as an
 * aio bdev named "<volume>.r<N>" (bdev names cannot contain '/', and the suffix keeps
 * them recognisable in bdev_get_bdevs); the nexus bdev over them carries the volume's
 * name, so nbd_start_export {bdev_name: VOLUME} exports the volume.
 *
 * keeld persists only what it cannot learn from the disks: which files belong to which
 * volume (and the exports). Membership and which replica is in sync live in the
 * replicas' labels, which the nexus reads at assembly, so a replica that missed
 * writes is found stale there and never read from.
 *
 * Every operation on a volume marks it busy until it has replied: a second change
 * to the same volume meanwhile gets -EBUSY instead of interleaving with the first.
 * Anything that can block (creating, sizing and removing files) runs on the blocking
 * pool. A create that fails half-way undoes what it did, in reverse order: the aio
 * bdevs it made are deleted and the files it created are removed.
 *
 * Test hook: volume_create also takes replica_bdevs (existing bdevs, e.g. error
 * bdevs over aio bdevs) instead of paths. Such a volume is transient: keeld cannot
 * recreate those bdevs, so it is not written to the state file.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <unistd.h>

#include "keel/bdev.h"
#include "keel/bdev_module.h"
#include "keel/file.h"
#include "keel/log.h"
#include "keel/nexus.h"
#include "keel/reactor.h"
#include "keel/rpc.h"
#include "replica_probe.h"
#include "rpc_methods.h"
#include "state.h"
#include "store.h"
#include "volume.h"
#ifdef KEEL_HAVE_NBD
#include "keel/nbd.h"
#endif

/* Sizes are whole 4 KiB blocks so any block size up to 4 KiB (and O_DIRECT) fits. */
#define VOL_SIZE_ALIGN 4096u
#define VOL_EXPORT_WATCH_US 1000000u

enum vol_status {
	VOL_CREATING,    /* volume_create in progress: not in the state file yet */
	VOL_READY,       /* assembled (the nexus may still be degraded or faulted) */
	VOL_UNASSEMBLED, /* from the state file, assembly failed: see error */
	VOL_DESTROYING,
};

struct vol_replica {
	char *path;                             /* NULL: a given bdev (test hook) */
	char bdev[KEEL_BDEV_NAME_MAX + 1];      /* "" while it has no bdev */
	char uuid[KEEL_UUID_STR_LEN];           /* replica UUID from its label, "" unknown */
	bool owned;                             /* keeld made the aio bdev: keeld deletes it */
	bool created_file;                      /* this operation created the file */
	int open_error;                         /* why the file could not be opened (restore) */
	TAILQ_ENTRY(vol_replica) link;
};

TAILQ_HEAD(vol_replica_list, vol_replica);

struct vol {
	char name[KEEL_NEXUS_NAME_MAX + 1];
	char uuid[KEEL_UUID_STR_LEN];
	uint64_t size;
	enum vol_status status;
	bool busy;
	bool transient;
	char error[600];          /* why it is unassembled */
	json_t *pending_exports;  /* saved exports of an unassembled volume, kept verbatim */
	struct vol_replica_list replicas;
	TAILQ_ENTRY(vol) link;
};

static TAILQ_HEAD(, vol) g_vols = TAILQ_HEAD_INITIALIZER(g_vols);
static json_t *g_loaded_exports;   /* exports from the state file, until restored */
static struct keel_poller *g_export_watcher;
static char *g_saved_exports_text; /* exports as last handed to the state file */
static bool g_shutting_down;

struct vol_op;
typedef void (*vol_step_fn)(struct vol_op *op);

/* One volume operation in flight (an RPC, or the restore of one volume). */
struct vol_op {
	struct keel_rpc_request *req; /* NULL during restore */
	struct vol *vol;
	struct vol_replica *rep;      /* the replica a replica operation is about */
	struct vol_replica *cur;      /* iteration cursor */
	bool force;
	bool wipe;
	bool new_vol;                 /* create: the volume is removed on failure */
	int status;
	char errmsg[1024];
	vol_step_fn next;             /* where an undo sequence continues */
	json_t *result;               /* reply held until the state is saved */
	char **names;                 /* exports to stop */
	size_t nnames;
	size_t idx;
	/* restore */
	keeld_volumes_done_cb restore_cb;
	void *restore_arg;
};

static void vol_save_then_reply(struct vol_op *op, json_t *result);

/* ------------------------------------------------------------------------------ */
/* Registry                                                                        */
/* ------------------------------------------------------------------------------ */

bool keeld_volume_name_valid(const char *name, char *why, size_t len)
{
	size_t i, n = strlen(name);

	if (n == 0 || n > KEEL_NEXUS_NAME_MAX) {
		snprintf(why, len, "a volume name has 1 to %d characters", KEEL_NEXUS_NAME_MAX);
		return false;
	}
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)name[i];

		if (c == '/' || c <= ' ' || c >= 0x7f) {
			snprintf(why, len, "'%.*s' is not a valid volume name: printable characters "
				 "only, no '/' and no spaces", KEEL_NEXUS_NAME_MAX, name);
			return false;
		}
	}
	return true;
}

static struct vol *vol_find(const char *name)
{
	struct vol *v;

	TAILQ_FOREACH(v, &g_vols, link) {
		if (strcmp(v->name, name) == 0) {
			return v;
		}
	}
	return NULL;
}

/* The volume (and replica) a path or bdev name already belongs to. */
static struct vol *vol_find_replica_owner(const char *path, const char *bdev,
					  struct vol_replica **rep_out)
{
	struct vol *v;
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

static struct vol_replica *vol_find_replica(struct vol *v, const char *id)
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

static struct vol *vol_new(const char *name, uint64_t size)
{
	struct vol *v = calloc(1, sizeof(*v));

	if (v == NULL) {
		return NULL;
	}
	snprintf(v->name, sizeof(v->name), "%s", name);
	v->size = size;
	TAILQ_INIT(&v->replicas);
	return v;
}

static struct vol_replica *vol_add_replica_rec(struct vol *v, const char *path,
					       const char *bdev)
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
	TAILQ_INSERT_TAIL(&v->replicas, r, link);
	return r;
}

static void vol_replica_free(struct vol *v, struct vol_replica *r)
{
	TAILQ_REMOVE(&v->replicas, r, link);
	free(r->path);
	free(r);
}

static void vol_free(struct vol *v)
{
	struct vol_replica *r;

	while ((r = TAILQ_FIRST(&v->replicas)) != NULL) {
		vol_replica_free(v, r);
	}
	json_decref(v->pending_exports);
	free(v);
}

static uint32_t vol_replica_count(const struct vol *v)
{
	const struct vol_replica *r;
	uint32_t n = 0;

	TAILQ_FOREACH(r, &v->replicas, link) {
		n++;
	}
	return n;
}

/* Whether some replica record of any volume reserved \p name (its aio bdev may not
 * be registered yet while it is being opened). */
static bool vol_bdev_name_reserved(const char *name)
{
	return keel_bdev_get_by_name(name) != NULL ||
	       vol_find_replica_owner(NULL, name, NULL) != NULL;
}

/* "<volume>.r<N>" with the lowest free N; the volume part is cut to fit 63 bytes. */
static int vol_pick_bdev_name(const char *vol_name, char *out, size_t len)
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
/* Operations: lifetime and replies                                                */
/* ------------------------------------------------------------------------------ */

static struct vol_op *vol_op_new(struct keel_rpc_request *req, struct vol *v)
{
	struct vol_op *op = rpc_ctx_calloc(req, sizeof(*op));

	if (op == NULL) {
		return NULL;
	}
	op->req = req;
	op->vol = v;
	return op;
}

static void vol_op_free(struct vol_op *op)
{
	size_t i;

	for (i = 0; i < op->nnames; i++) {
		free(op->names[i]);
	}
	free(op->names);
	json_decref(op->result);
	free(op);
}

static void vol_op_fail(struct vol_op *op, int status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Remember the first failure; undo steps must not overwrite it. */
static void vol_op_fail(struct vol_op *op, int status, const char *fmt, ...)
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

/* Reply with the recorded failure and end the operation. */
static void vol_op_reply_error(struct vol_op *op)
{
	if (op->vol != NULL) {
		op->vol->busy = false;
	}
	if (op->vol != NULL && strncmp(op->errmsg, "volume ", 7) != 0) {
		KEEL_WARNLOG("volume %s: %s", op->vol->name, op->errmsg);
	} else {
		KEEL_WARNLOG("%s", op->errmsg);
	}
	if (op->req != NULL) {
		keel_rpc_send_error(op->req, op->status, "%s", op->errmsg);
	}
	vol_op_free(op);
}

static void vol_send_early(struct keel_rpc_request *req, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void vol_send_early(struct keel_rpc_request *req, int code, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	keel_rpc_send_error(req, code, "%s", msg);
}

/* A volume that can take a change now, or NULL after an error reply. */
static struct vol *vol_get_for_change(struct keel_rpc_request *req, const char *name,
				      bool need_assembled)
{
	struct vol *v = vol_find(name);

	if (v == NULL || v->status == VOL_CREATING || v->status == VOL_DESTROYING) {
		if (v != NULL) {
			vol_send_early(req, -EBUSY, "volume '%s' is being %s: try again when that "
				       "finished", name, v->status == VOL_CREATING ? "created" :
				       "destroyed");
			return NULL;
		}
		vol_send_early(req, -ENOENT, "volume '%s' not found: volume_list shows the "
			       "volumes", name);
		return NULL;
	}
	if (v->busy) {
		vol_send_early(req, -EBUSY, "volume '%s' is busy with another change: try again "
			       "when it finished", name);
		return NULL;
	}
	if (need_assembled && (v->status != VOL_READY || keel_nexus_get_by_name(name) == NULL)) {
		vol_send_early(req, -ENODEV, "volume '%s' is not assembled%s%s: only "
			       "volume_destroy works on it", name, v->error[0] ? ": " : "",
			       v->error);
		return NULL;
	}
	return v;
}

/* ------------------------------------------------------------------------------ */
/* Files (blocking pool)                                                           */
/* ------------------------------------------------------------------------------ */

struct vol_files_job {
	struct vol_op *op;
	char **paths;
	bool *created;
	size_t n;
	uint64_t need;      /* bytes each replica file needs */
	bool unlink;        /* remove the created files instead */
	bool force;         /* overwrite targets that hold data or another label */
	char volume_uuid[KEEL_UUID_STR_LEN]; /* add: a label of this volume is welcome */
	struct keeld_replica_set *in_use;    /* replicas of every volume, by identity */
	vol_step_fn done;
	char err[2 * PATH_MAX + 256];
};

static int vol_prepare_file(struct vol_files_job *job, size_t i)
{
	const char *path = job->paths[i];
	struct keeld_replica_probe probe;
	struct keeld_replica_id id;
	int fd, rc;

	/* Never write over data by mistake: see daemon/replica_probe.h. */
	rc = keeld_replica_probe(path, &probe, job->err, sizeof(job->err));
	if (rc == 0) {
		rc = keeld_replica_set_check(job->in_use, path, &probe.id, job->err,
					     sizeof(job->err));
		if (rc == 0) {
			rc = keeld_replica_probe_check(&probe, path, job->volume_uuid[0] != '\0' ?
						       job->volume_uuid : NULL, job->force,
						       job->err, sizeof(job->err));
		}
		if (rc == 0 && !probe.id.blockdev && probe.size < job->need) {
			/* Files only: the nexus checks that a block device is large enough. */
			snprintf(job->err, sizeof(job->err), "replica file %s has %llu bytes, the "
				 "volume needs %llu (its size plus %u bytes of labels): remove the "
				 "file to let keeld create it, or grow it", path,
				 (unsigned long long)probe.size, (unsigned long long)job->need,
				 KEEL_NEXUS_DATA_OFFSET);
			rc = -ENOSPC;
		}
		return rc != 0 ? rc : keeld_replica_set_add_target(job->in_use, path, &probe.id);
	}
	if (rc != -ENOENT) {
		return rc;
	}
	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		rc = -errno;
		snprintf(job->err, sizeof(job->err), "cannot create replica file %s: %s%s", path,
			 strerror(-rc), rc == -ENOENT ? " (its directory does not exist)" : "");
		return rc;
	}
	job->created[i] = true;
	if (ftruncate(fd, (off_t)job->need) != 0) {
		rc = -errno;
		snprintf(job->err, sizeof(job->err), "cannot size replica file %s to %llu bytes: "
			 "%s", path, (unsigned long long)job->need, strerror(-rc));
		goto out_close;
	}
	/* Reserve the space now so the volume does not run out of it under writes;
	 * filesystems without fallocate (some FUSE ones) keep a sparse file. */
	if (fallocate(fd, 0, 0, (off_t)job->need) != 0 && errno != EOPNOTSUPP) {
		rc = -errno;
		snprintf(job->err, sizeof(job->err), "cannot allocate %llu bytes for replica file "
			 "%s: %s", (unsigned long long)job->need, path, strerror(-rc));
		goto out_close;
	}
	if (fsync(fd) != 0) {
		rc = -errno;
		snprintf(job->err, sizeof(job->err), "cannot fsync replica file %s: %s", path,
			 strerror(-rc));
		goto out_close;
	}
	/* A later target of this request may name the file just made (a//x after a/x). */
	rc = keeld_replica_id_of_fd(fd, &id);
	if (rc == 0) {
		rc = keeld_replica_set_add_target(job->in_use, path, &id);
	}
	if (rc != 0) {
		snprintf(job->err, sizeof(job->err), "cannot note replica file %s: %s", path,
			 strerror(-rc));
		goto out_close;
	}
	close(fd);
	return keel_fsync_parent_dir(path);

out_close:
	close(fd);
	return rc;
}

static int vol_files_job_fn(void *arg)
{
	struct vol_files_job *job = arg;
	size_t i;
	int rc = 0;

	if (!job->unlink) {
		keeld_replica_set_stat(job->in_use);
		for (i = 0; i < job->n && rc == 0; i++) {
			rc = vol_prepare_file(job, i);
		}
		if (rc == 0) {
			return 0;
		}
	}
	/* Undo: remove what this operation created, nothing else. */
	for (i = 0; i < job->n; i++) {
		if (job->created[i]) {
			if (unlink(job->paths[i]) != 0 && errno != ENOENT) {
				KEEL_WARNLOG("volume: cannot remove replica file %s: %s",
					     job->paths[i], strerror(errno));
			}
			(void)keel_fsync_parent_dir(job->paths[i]);
			job->created[i] = false;
		}
	}
	return rc;
}

static void vol_files_job_done(void *cb_arg, int rc)
{
	struct vol_files_job *job = cb_arg;
	struct vol_op *op = job->op;
	struct vol_replica *r;
	size_t i = 0;

	if (rc != 0) {
		vol_op_fail(op, rc, "%s", job->err[0] ? job->err : strerror(-rc));
	}
	/* Pass the created flags back to the replica records, in the same order. */
	TAILQ_FOREACH(r, &op->vol->replicas, link) {
		if (r->path == NULL || (op->rep != NULL && r != op->rep)) {
			continue;
		}
		if (i < job->n) {
			r->created_file = job->created[i];
		}
		i++;
	}
	for (i = 0; i < job->n; i++) {
		free(job->paths[i]);
	}
	free(job->paths);
	free(job->created);
	keeld_replica_set_free(job->in_use);
	job->done(op);
	free(job);
}

/* Every replica path of every volume but the targets of \p op, so the blocking job
 * finds a target that is one of them under another name. NULL: out of memory. */
static struct keeld_replica_set *vol_replicas_in_use(const struct vol_op *op)
{
	struct keeld_replica_set *set = keeld_replica_set_new();
	struct vol_replica *r;
	struct vol *v;

	if (set == NULL) {
		return NULL;
	}
	TAILQ_FOREACH(v, &g_vols, link) {
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

/*
 * Prepare (or, with \p unlink, remove the created) replica files of op->rep, or of
 * every replica of op->vol when op->rep is NULL. Then \p done(op).
 */
static void vol_files(struct vol_op *op, bool unlink, vol_step_fn done)
{
	struct vol_files_job *job = calloc(1, sizeof(*job));
	struct vol_replica *r;
	size_t n = 0;
	int rc;

	if (job == NULL) {
		goto out_nomem;
	}
	TAILQ_FOREACH(r, &op->vol->replicas, link) {
		n++;
	}
	job->paths = calloc(n + 1, sizeof(char *));
	job->created = calloc(n + 1, sizeof(bool));
	if (job->paths == NULL || job->created == NULL) {
		goto out_free;
	}
	TAILQ_FOREACH(r, &op->vol->replicas, link) {
		if (r->path == NULL || (op->rep != NULL && r != op->rep)) {
			continue;
		}
		job->paths[job->n] = strdup(r->path);
		if (job->paths[job->n] == NULL) {
			goto out_free;
		}
		job->created[job->n] = r->created_file;
		job->n++;
	}
	job->op = op;
	job->need = op->vol->size + KEEL_NEXUS_DATA_OFFSET;
	job->unlink = unlink;
	job->force = op->force;
	if (op->rep != NULL) {
		snprintf(job->volume_uuid, sizeof(job->volume_uuid), "%s", op->vol->uuid);
	}
	if (!unlink && (job->in_use = vol_replicas_in_use(op)) == NULL) {
		goto out_free;
	}
	job->done = done;
	rc = keel_spawn_blocking(vol_files_job_fn, job, vol_files_job_done, job);
	if (rc == 0) {
		return;
	}
	vol_op_fail(op, rc, "cannot run file work on the blocking pool: %s", strerror(-rc));
	goto out_free_paths;

out_free:
	vol_op_fail(op, -ENOMEM, "out of memory");
out_free_paths:
	if (job->paths != NULL) {
		for (n = 0; n < job->n; n++) {
			free(job->paths[n]);
		}
	}
	free(job->paths);
	free(job->created);
	keeld_replica_set_free(job->in_use);
	free(job);
	done(op);
	return;
out_nomem:
	vol_op_fail(op, -ENOMEM, "out of memory");
	done(op);
}

/* ------------------------------------------------------------------------------ */
/* aio bdevs of replicas                                                           */
/* ------------------------------------------------------------------------------ */

static const char *vol_aio_error_text(int rc)
{
	switch (rc) {
	case -ENOENT:
		return "file does not exist";
	case -EACCES:
	case -EPERM:
		return "permission denied";
	case -EINVAL:
		return "its size is not a multiple of the block size, or the device refuses it";
	default:
		return strerror(-rc);
	}
}

static void vol_open_next(struct vol_op *op);

static void vol_open_done(void *cb_arg, int status, struct keel_bdev *bdev)
{
	struct vol_op *op = cb_arg;
	struct vol_replica *r = op->cur;

	if (status != 0) {
		r->open_error = status;
		r->bdev[0] = '\0';
		if (op->req != NULL) {
			vol_op_fail(op, status, "volume %s: cannot open replica %s: %s",
				    op->vol->name, r->path, vol_aio_error_text(status));
		} else {
			KEEL_WARNLOG("volume %s: replica %s: cannot open: %s", op->vol->name,
				     r->path, vol_aio_error_text(status));
		}
	} else {
		r->owned = true;
		r->open_error = 0;
	}
	op->cur = TAILQ_NEXT(r, link);
	vol_open_next(op);
}

/*
 * Open an aio bdev for every replica path of op->vol that has none (only op->rep
 * when set), one at a time, then op->next(op). An RPC stops at the first failure;
 * a restore opens what it can.
 */
static void vol_open_next(struct vol_op *op)
{
	struct vol_replica *r;
	int rc;

	for (r = op->cur; r != NULL; r = TAILQ_NEXT(r, link)) {
		if (r->path == NULL || r->bdev[0] != '\0' || (op->rep != NULL && r != op->rep)) {
			continue;
		}
		if (op->req != NULL && op->status != 0) {
			break;
		}
		op->cur = r;
		rc = vol_pick_bdev_name(op->vol->name, r->bdev, sizeof(r->bdev));
		if (rc == 0) {
			rc = keel_bdev_aio_create(r->bdev, r->path, 0, vol_open_done, op);
		}
		if (rc != 0) {
			vol_open_done(op, rc, NULL);
		}
		return;
	}
	op->cur = NULL;
	op->next(op);
}

static void vol_open_replicas(struct vol_op *op, vol_step_fn next)
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
		KEEL_WARNLOG("volume %s: deleting aio bdev %s of replica %s: %s", op->vol->name,
			     r->bdev, r->path, strerror(-status));
	}
	r->bdev[0] = '\0';
	r->owned = false;
	op->cur = TAILQ_NEXT(r, link);
	vol_close_next(op);
}

/* Delete the aio bdevs keeld made for op->vol (only op->rep's when set). */
static void vol_close_next(struct vol_op *op)
{
	struct vol_replica *r;

	for (r = op->cur; r != NULL; r = TAILQ_NEXT(r, link)) {
		if (!r->owned || r->bdev[0] == '\0' || (op->rep != NULL && r != op->rep)) {
			continue;
		}
		op->cur = r;
		if (keel_bdev_aio_delete(r->bdev, vol_close_done, op) != 0) {
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

static void vol_close_replicas(struct vol_op *op, vol_step_fn next)
{
	op->cur = TAILQ_FIRST(&op->vol->replicas);
	op->next = next;
	vol_close_next(op);
}

/* Remember each replica's label UUID: it names an offline replica later. */
static void vol_learn_uuids(struct vol *v)
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
			if (r->bdev[0] != '\0' && strcmp(info->replicas[i].bdev_name, r->bdev) == 0) {
				snprintf(r->uuid, sizeof(r->uuid), "%s", info->replicas[i].uuid);
			}
		}
	}
	free(info);
}

/* ------------------------------------------------------------------------------ */
/* Describing a volume                                                             */
/* ------------------------------------------------------------------------------ */

static json_t *vol_str_or_null(const char *s)
{
	return s != NULL && s[0] != '\0' ? json_string(s) : json_null();
}

static json_t *vol_exports_json(const struct vol *v)
{
	json_t *arr = json_array();
#ifdef KEEL_HAVE_NBD
	struct keel_nbd_export *e;

	for (e = keel_nbd_export_first(); e != NULL; e = keel_nbd_export_next(e)) {
		if (strcmp(keel_nbd_export_get_bdev_name(e), v->name) != 0) {
			continue;
		}
		json_array_append_new(arr, json_pack("{s:s, s:o, s:o, s:b, s:I}",
			"name", keel_nbd_export_get_name(e),
			"socket", vol_str_or_null(keel_nbd_export_get_socket_path(e)),
			"tcp", vol_str_or_null(keel_nbd_export_get_tcp(e)),
			"read_only", keel_nbd_export_is_read_only(e),
			"connections", (json_int_t)keel_nbd_export_get_connection_count(e)));
	}
#endif
	return arr;
}

static json_t *vol_replica_json(const struct vol_replica *r,
				const struct keel_nexus_replica_info *ri)
{
	json_t *o = json_object();
	char detail[400];

	json_object_set_new(o, "path", vol_str_or_null(r != NULL ? r->path : NULL));
	json_object_set_new(o, "bdev", vol_str_or_null(ri != NULL && ri->bdev_name[0] ?
						       ri->bdev_name :
						       (r != NULL ? r->bdev : NULL)));
	json_object_set_new(o, "uuid", vol_str_or_null(ri != NULL ? ri->uuid :
						       (r != NULL ? r->uuid : NULL)));
	detail[0] = '\0';
	if (r != NULL && r->open_error != 0) {
		snprintf(detail, sizeof(detail), "%s: %s", r->open_error == -ENOENT ?
			 "missing" : "cannot open", vol_aio_error_text(r->open_error));
	} else if (ri != NULL) {
		snprintf(detail, sizeof(detail), "%s", ri->detail);
	} else if (r != NULL && r->bdev[0] == '\0') {
		snprintf(detail, sizeof(detail), "not opened");
	}
	if (ri != NULL) {
		json_object_set_new(o, "state",
				    json_string(keel_nexus_replica_state_name(ri->state)));
		json_object_set_new(o, "reason", json_string(r != NULL && r->open_error == -ENOENT ?
			"missing" : keel_nexus_fault_reason_name(ri->reason)));
		json_object_set_new(o, "generation", json_integer((json_int_t)ri->generation));
	} else {
		json_object_set_new(o, "state", json_string(r != NULL && r->open_error != 0 ?
							     "offline" : "unknown"));
		json_object_set_new(o, "reason", json_string(r != NULL && r->open_error == -ENOENT ?
							     "missing" : r != NULL && r->open_error ?
							     "cant_open" : "none"));
		json_object_set_new(o, "generation", json_null());
	}
	json_object_set_new(o, "detail", json_string(detail));
	return o;
}

static void vol_rebuild_append(void *ctx, const struct keel_rebuild_stats *st)
{
	json_t *o = keel_rebuild_stats_to_json(st);

	if (o != NULL) {
		json_array_append_new(ctx, o);
	}
}

/* The rebuild jobs the nexus keeps for this volume: every active one and the last
 * ended one per replica (the same objects rebuild_get_status returns), so `volume
 * show` answers "is it rebuilding, how far, how fast" without a second call. */
static json_t *vol_rebuilds_json(const char *name)
{
	json_t *arr = json_array();

	if (arr != NULL) {
		keel_rebuild_list(name, vol_rebuild_append, arr);
	}
	return arr;
}

static json_t *vol_to_json(struct vol *v)
{
	struct keel_nexus *nx = v->status == VOL_READY ? keel_nexus_get_by_name(v->name) : NULL;
	struct keel_nexus_info *info = NULL;
	bool matched[KEEL_NEXUS_MAX_REPLICAS] = {false};
	json_t *o, *reps;
	struct vol_replica *r;
	uint32_t i;

	o = json_object();
	reps = json_array();
	if (o == NULL || reps == NULL) {
		json_decref(o);
		json_decref(reps);
		return NULL;
	}
	if (nx != NULL) {
		info = calloc(1, sizeof(*info));
		if (info != NULL) {
			keel_nexus_get_info(nx, info);
		}
	}
	json_object_set_new(o, "name", json_string(v->name));
	json_object_set_new(o, "uuid", vol_str_or_null(info != NULL ? info->uuid : v->uuid));
	if (info != NULL) {
		json_object_set_new(o, "state", json_string(keel_nexus_state_name(info->state)));
		json_object_set_new(o, "state_detail", json_string(info->state_detail));
		json_object_set_new(o, "size", json_integer((json_int_t)info->size_bytes));
		json_object_set_new(o, "block_size", json_integer(info->block_size));
		json_object_set_new(o, "generation", json_integer((json_int_t)info->generation));
		json_object_set_new(o, "unclean_shutdown", json_boolean(info->unclean_shutdown));
	} else {
		const char *state = v->status == VOL_CREATING ? "creating" :
				    v->status == VOL_DESTROYING ? "destroying" :
				    v->status == VOL_UNASSEMBLED ? "unassembled" : "stopped";
		const char *detail = v->status == VOL_UNASSEMBLED ? v->error :
				     v->status == VOL_READY ? "the volume bdev was deleted "
				     "outside volume_destroy: destroy the volume" : "";

		json_object_set_new(o, "state", json_string(state));
		json_object_set_new(o, "state_detail", json_string(detail));
		json_object_set_new(o, "size", json_integer((json_int_t)v->size));
		json_object_set_new(o, "block_size", json_null());
		json_object_set_new(o, "generation", json_null());
		json_object_set_new(o, "unclean_shutdown", json_false());
	}
	json_object_set_new(o, "persistent", json_boolean(!v->transient));

	/* Match each recorded replica to the nexus's view: by bdev, else by label UUID. */
	TAILQ_FOREACH(r, &v->replicas, link) {
		const struct keel_nexus_replica_info *ri = NULL;

		for (i = 0; info != NULL && i < info->num_replicas && ri == NULL; i++) {
			const struct keel_nexus_replica_info *c = &info->replicas[i];

			if (matched[i]) {
				continue;
			}
			if ((r->bdev[0] != '\0' && strcmp(c->bdev_name, r->bdev) == 0) ||
			    (r->uuid[0] != '\0' && strcmp(c->uuid, r->uuid) == 0)) {
				matched[i] = true;
				ri = c;
			}
		}
		/* Without a recorded UUID, a missing file is the next unclaimed offline member. */
		for (i = 0; info != NULL && i < info->num_replicas && ri == NULL &&
			    r->bdev[0] == '\0'; i++) {
			if (!matched[i] && info->replicas[i].state == KEEL_NEXUS_REPLICA_OFFLINE) {
				matched[i] = true;
				ri = &info->replicas[i];
			}
		}
		json_array_append_new(reps, vol_replica_json(r, ri));
	}
	for (i = 0; info != NULL && i < info->num_replicas; i++) {
		if (!matched[i]) {
			json_array_append_new(reps, vol_replica_json(NULL, &info->replicas[i]));
		}
	}
	json_object_set_new(o, "replicas", reps);
	json_object_set_new(o, "exports", vol_exports_json(v));
	if (nx != NULL) {
		uint64_t rs, ec;
		uint32_t nbits, set;

		json_object_set_new(o, "rebuilds", vol_rebuilds_json(v->name));
		/* The write-intent bitmap: how much a returning replica would need. */
		if (keel_nexus_bitmap_info(nx, &rs, &nbits, &set, &ec) == 0) {
			json_object_set_new(o, "bitmap", json_pack("{s:I,s:i,s:i,s:I}",
				"region_size", (json_int_t)rs, "bits", (int)nbits,
				"bits_set", (int)set, "events_cleared",
				(json_int_t)(ec == UINT64_MAX ? -1 : (int64_t)ec)));
		} else {
			json_object_set_new(o, "bitmap", json_null());
		}
	}
	free(info);
	return o;
}

/* ------------------------------------------------------------------------------ */
/* State file                                                                      */
/* ------------------------------------------------------------------------------ */

static bool vol_is_persisted_volume(const char *name)
{
	struct vol *v = vol_find(name);

	return v != NULL && !v->transient && v->status != VOL_CREATING;
}

/* Exports of persisted volumes, as the state file keeps them. */
static json_t *vol_exports_state(void)
{
	json_t *arr = json_array();
	struct vol *v;
	json_t *e;
	size_t i;

	if (arr == NULL) {
		return NULL;
	}
#ifdef KEEL_HAVE_NBD
	{
		struct keel_nbd_export *x;

		for (x = keel_nbd_export_first(); x != NULL; x = keel_nbd_export_next(x)) {
			if (!vol_is_persisted_volume(keel_nbd_export_get_bdev_name(x))) {
				continue;
			}
			json_array_append_new(arr, json_pack("{s:s, s:s, s:o, s:o, s:b}",
				"name", keel_nbd_export_get_name(x),
				"bdev", keel_nbd_export_get_bdev_name(x),
				"socket", vol_str_or_null(keel_nbd_export_get_socket_path(x)),
				"tcp", vol_str_or_null(keel_nbd_export_get_tcp(x)),
				"read_only", keel_nbd_export_is_read_only(x)));
		}
	}
#endif
	/* An unassembled volume keeps the exports it had, for when it comes back. */
	TAILQ_FOREACH(v, &g_vols, link) {
		if (v->status == VOL_UNASSEMBLED && v->pending_exports != NULL) {
			json_array_foreach(v->pending_exports, i, e) {
				json_array_append(arr, e);
			}
		}
	}
	return arr;
}

static json_t *vol_state_snapshot(void *ctx)
{
	json_t *doc, *vols, *exports;
	struct vol *v;
	struct vol_replica *r;

	doc = json_object();
	vols = json_array();
	/* Shutting down stops the exports; the file must still list them. */
	exports = g_shutting_down && g_saved_exports_text != NULL ?
		  json_loads(g_saved_exports_text, 0, NULL) : vol_exports_state();
	if (doc == NULL || vols == NULL || exports == NULL) {
		goto out_nomem;
	}
	TAILQ_FOREACH(v, &g_vols, link) {
		json_t *reps, *o;

		if (v->transient || v->status == VOL_CREATING) {
			continue;
		}
		reps = json_array();
		TAILQ_FOREACH(r, &v->replicas, link) {
			json_array_append_new(reps, json_pack("{s:s, s:o}", "path", r->path,
							      "uuid", vol_str_or_null(r->uuid)));
		}
		o = json_pack("{s:s, s:o, s:I, s:o}", "name", v->name, "uuid",
			      vol_str_or_null(v->uuid), "size", (json_int_t)v->size,
			      "replicas", reps);
		if (o == NULL) {
			goto out_nomem;
		}
		json_array_append_new(vols, o);
	}
	free(g_saved_exports_text);
	g_saved_exports_text = json_dumps(exports, JSON_COMPACT);
	json_object_set_new(doc, "version", json_integer(KEELD_STATE_VERSION));
	json_object_set_new(doc, "volumes", vols);
	json_object_set_new(doc, "exports", exports);
	return doc;

out_nomem:
	json_decref(doc);
	json_decref(vols);
	json_decref(exports);
	return NULL;
}

void keeld_volumes_exports_changed(void)
{
	if (!g_shutting_down) {
		keeld_store_save(KEELD_DOC_STATE, NULL, NULL);
	}
}

/* Exports are started and stopped by rpc_nbd.c, which knows nothing of volumes:
 * notice the change here and save. */
static int vol_export_watch(void *arg)
{
	json_t *exports;
	char *text;
	bool changed;

	if (g_shutting_down || keeld_store_busy(KEELD_DOC_STATE)) {
		return KEEL_POLLER_IDLE;
	}
	exports = vol_exports_state();
	text = exports != NULL ? json_dumps(exports, JSON_COMPACT) : NULL;
	json_decref(exports);
	if (text == NULL) {
		return KEEL_POLLER_IDLE;
	}
	changed = g_saved_exports_text == NULL || strcmp(text, g_saved_exports_text) != 0;
	free(text);
	if (changed) {
		keeld_store_save(KEELD_DOC_STATE, NULL, NULL);
		return KEEL_POLLER_BUSY;
	}
	return KEEL_POLLER_IDLE;
}

static void vol_saved(void *cb_arg, int status)
{
	struct vol_op *op = cb_arg;
	json_t *result = op->result;

	op->result = NULL;
	if (op->req != NULL) {
		if (status != 0) {
			json_decref(result);
			keel_rpc_send_error(op->req, status, "the change was made, but keeld could "
					    "not save it to %s (%s): it will be forgotten at the next "
					    "restart unless a later save works",
					    keeld_store_path(KEELD_DOC_STATE),
					    keeld_store_last_error(KEELD_DOC_STATE));
		} else {
			keel_rpc_send_result(op->req, result);
		}
	} else {
		json_decref(result);
	}
	vol_op_free(op);
}

/* Reply only once the change is on disk: a success means it survives a restart. */
static void vol_save_then_reply(struct vol_op *op, json_t *result)
{
	op->result = result;
	if (op->vol != NULL) {
		op->vol->busy = false;
	}
	if (keeld_store_save(KEELD_DOC_STATE, vol_saved, op) != 0) {
		vol_saved(op, -ENOMEM);
	}
}

/* ------------------------------------------------------------------------------ */
/* volume_create                                                                   */
/* ------------------------------------------------------------------------------ */

struct vol_create_params {
	const char *name;
	uint64_t size;
	json_t *replicas;
	json_t *replica_bdevs;
	bool force;
};

static void vol_create_undone(struct vol_op *op)
{
	struct vol *v = op->vol;

	TAILQ_REMOVE(&g_vols, v, link);
	op->vol = NULL;
	vol_free(v);
	vol_op_reply_error(op);
}

static void vol_create_files_removed(struct vol_op *op)
{
	vol_create_undone(op);
}

static void vol_create_bdevs_deleted(struct vol_op *op)
{
	struct vol_replica *r;
	bool any = false;

	TAILQ_FOREACH(r, &op->vol->replicas, link) {
		any |= r->created_file;
	}
	if (any) {
		vol_files(op, true, vol_create_files_removed);
		return;
	}
	vol_create_undone(op);
}

/* Undo a failed create in reverse order: aio bdevs, then the files it created. */
static void vol_create_rollback(struct vol_op *op)
{
	vol_close_replicas(op, vol_create_bdevs_deleted);
}

static void vol_create_nexus_done(void *cb_arg, int status, const char *errmsg,
				  struct keel_nexus *nexus)
{
	struct vol_op *op = cb_arg;
	struct vol *v = op->vol;

	if (status != 0) {
		if (status == -EEXIST && errmsg != NULL && strstr(errmsg, "label") != NULL &&
		    strstr(errmsg, "force") == NULL) {
			vol_op_fail(op, status, "%s; pass force (keelctl --force) to overwrite it",
				    errmsg);
		} else {
			vol_op_fail(op, status, "%s", errmsg != NULL ? errmsg : strerror(-status));
		}
		vol_create_rollback(op);
		return;
	}
	v->status = VOL_READY;
	vol_learn_uuids(v);
	KEEL_NOTICELOG("volume %s: created (%llu bytes, %u replicas)", v->name,
		       (unsigned long long)v->size, vol_replica_count(v));
	vol_save_then_reply(op, vol_to_json(v));
}

static void vol_create_replicas_open(struct vol_op *op)
{
	struct vol *v = op->vol;
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
		/* The file job removed what it created before failing. */
		vol_create_undone(op);
		return;
	}
	vol_open_replicas(op, vol_create_replicas_open);
}

/* Check a list of replica paths or bdev names; \return false after an error reply. */
static bool vol_check_replica_list(struct keel_rpc_request *req, json_t *list, bool paths,
				   const char *param)
{
	json_t *e, *f;
	size_t i, j;

	if (!json_is_array(list) || json_array_size(list) == 0) {
		vol_send_early(req, KEEL_RPC_INVALID_PARAMS, "%s: expected a non-empty array of "
			       "%s", param, paths ? "absolute file paths" : "bdev names");
		return false;
	}
	if (json_array_size(list) > KEEL_NEXUS_MAX_REPLICAS) {
		vol_send_early(req, KEEL_RPC_INVALID_PARAMS, "%s: at most %d replicas", param,
			       KEEL_NEXUS_MAX_REPLICAS);
		return false;
	}
	json_array_foreach(list, i, e) {
		const char *s = json_string_value(e);
		struct vol *owner;

		if (s == NULL || s[0] == '\0') {
			vol_send_early(req, KEEL_RPC_INVALID_PARAMS, "%s[%zu]: expected a "
				       "non-empty string", param, i);
			return false;
		}
		if (paths && (s[0] != '/' || strlen(s) >= PATH_MAX)) {
			vol_send_early(req, KEEL_RPC_INVALID_PARAMS, "%s[%zu]: '%.200s' is not an "
				       "absolute path (keeld does not share your working "
				       "directory)", param, i, s);
			return false;
		}
		if (!paths && strlen(s) > KEEL_BDEV_NAME_MAX) {
			vol_send_early(req, KEEL_RPC_INVALID_PARAMS, "%s[%zu]: bdev names have at "
				       "most %d characters", param, i, KEEL_BDEV_NAME_MAX);
			return false;
		}
		json_array_foreach(list, j, f) {
			if (j < i && json_equal(e, f)) {
				vol_send_early(req, KEEL_RPC_INVALID_PARAMS, "%s: '%.200s' is given "
					       "twice", param, s);
				return false;
			}
		}
		owner = vol_find_replica_owner(paths ? s : NULL, paths ? NULL : s, NULL);
		if (owner != NULL) {
			vol_send_early(req, -EEXIST, "%s '%.200s' is already a replica of volume "
				       "'%s'", paths ? "file" : "bdev", s, owner->name);
			return false;
		}
		if (!paths && keel_bdev_get_by_name(s) == NULL) {
			vol_send_early(req, -ENODEV, "bdev '%.64s' not found: create it first (see "
				       "bdev_get_bdevs)", s);
			return false;
		}
	}
	return true;
}

static void rpc_volume_create(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"name", KEEL_RPC_PARAM_STRING, offsetof(struct vol_create_params, name), false},
		{"size", KEEL_RPC_PARAM_UINT64, offsetof(struct vol_create_params, size), true},
		{"replicas", KEEL_RPC_PARAM_JSON, offsetof(struct vol_create_params, replicas),
		 true},
		{"replica_bdevs", KEEL_RPC_PARAM_JSON,
		 offsetof(struct vol_create_params, replica_bdevs), true},
		{"force", KEEL_RPC_PARAM_BOOL, offsetof(struct vol_create_params, force), true},
	};
	struct vol_create_params p = {0};
	bool by_path, have_size = false;
	char why[160];
	struct vol *v;
	struct vol_op *op;
	json_t *e;
	size_t i;

	if (!keel_rpc_decode_params(req, params, table, sizeof(table) / sizeof(table[0]), &p)) {
		return;
	}
	if (json_is_null(p.replicas)) {
		p.replicas = NULL;
	}
	if (json_is_null(p.replica_bdevs)) {
		p.replica_bdevs = NULL;
	}
	have_size = json_object_get(params, "size") != NULL &&
		    !json_is_null(json_object_get(params, "size"));
	if (!keeld_volume_name_valid(p.name, why, sizeof(why))) {
		vol_send_early(req, KEEL_RPC_INVALID_PARAMS, "name: %s", why);
		return;
	}
	if ((p.replicas == NULL) == (p.replica_bdevs == NULL)) {
		vol_send_early(req, KEEL_RPC_INVALID_PARAMS, "give replicas (the replica file "
			       "paths)%s", p.replicas != NULL ? ", not also replica_bdevs" : "");
		return;
	}
	by_path = p.replicas != NULL;
	if (!vol_check_replica_list(req, by_path ? p.replicas : p.replica_bdevs, by_path,
				    by_path ? "replicas" : "replica_bdevs")) {
		return;
	}
	if (by_path && !have_size) {
		vol_send_early(req, KEEL_RPC_INVALID_PARAMS, "missing parameter 'size' (bytes)");
		return;
	}
	if (have_size && (p.size == 0 || p.size % VOL_SIZE_ALIGN != 0 ||
			  p.size > (uint64_t)INT64_MAX - KEEL_NEXUS_DATA_OFFSET)) {
		vol_send_early(req, KEEL_RPC_INVALID_PARAMS, "size: %llu is not a usable volume "
			       "size: a positive multiple of %u bytes", (unsigned long long)p.size,
			       VOL_SIZE_ALIGN);
		return;
	}
	if (vol_find(p.name) != NULL) {
		vol_send_early(req, -EEXIST, "volume '%s' already exists: choose another name or "
			       "destroy it first", p.name);
		return;
	}
	if (keel_bdev_get_by_name(p.name) != NULL) {
		vol_send_early(req, -EEXIST, "a bdev named '%s' exists and the volume's bdev "
			       "would take that name: choose another volume name", p.name);
		return;
	}
	v = vol_new(p.name, p.size);
	if (v == NULL) {
		keel_rpc_send_error(req, -ENOMEM, "out of memory");
		return;
	}
	v->status = VOL_CREATING;
	v->busy = true;
	v->transient = !by_path;
	json_array_foreach(by_path ? p.replicas : p.replica_bdevs, i, e) {
		if (vol_add_replica_rec(v, by_path ? json_string_value(e) : NULL,
					by_path ? NULL : json_string_value(e)) == NULL) {
			vol_free(v);
			keel_rpc_send_error(req, -ENOMEM, "out of memory");
			return;
		}
	}
	op = vol_op_new(req, v);
	if (op == NULL) {
		vol_free(v);
		return;
	}
	op->force = p.force;
	op->new_vol = true;
	/* Listed from now on, so the name and paths are taken while files are made. */
	TAILQ_INSERT_TAIL(&g_vols, v, link);
	KEEL_NOTICELOG("volume %s: creating (%llu bytes, %u replicas%s)", v->name,
		       (unsigned long long)v->size, vol_replica_count(v), p.force ? ", force" : "");
	if (by_path) {
		vol_files(op, false, vol_create_files_ready);
	} else {
		vol_create_replicas_open(op);
	}
}

/* ------------------------------------------------------------------------------ */
/* volume_destroy                                                                  */
/* ------------------------------------------------------------------------------ */

static void vol_destroy_bdevs_deleted(struct vol_op *op)
{
	struct vol *v = op->vol;

	KEEL_NOTICELOG("volume %s: destroyed%s", v->name, op->wipe ? " (labels wiped)" : "");
	TAILQ_REMOVE(&g_vols, v, link);
	vol_free(v);
	op->vol = NULL;
	vol_save_then_reply(op, json_true());
}

static void vol_destroy_nexus_done(void *cb_arg, int status, const char *errmsg,
				   struct keel_nexus *nexus)
{
	struct vol_op *op = cb_arg;

	if (status != 0) {
		/* The volume is gone either way; say what went wrong in the log. */
		KEEL_WARNLOG("volume %s: destroy: %s", op->vol->name,
			     errmsg != NULL ? errmsg : strerror(-status));
	}
	vol_close_replicas(op, vol_destroy_bdevs_deleted);
}

static void vol_destroy_nexus(struct vol_op *op)
{
	int rc;

	if (keel_nexus_get_by_name(op->vol->name) == NULL) {
		vol_close_replicas(op, vol_destroy_bdevs_deleted);
		return;
	}
	rc = keel_nexus_destroy(op->vol->name, op->wipe, vol_destroy_nexus_done, op);
	if (rc != 0) {
		vol_destroy_nexus_done(op, rc, NULL, NULL);
	}
}

#ifdef KEEL_HAVE_NBD
static void vol_stop_next_export(struct vol_op *op);

static void vol_export_stopped(void *cb_arg, int status)
{
	struct vol_op *op = cb_arg;

	if (status != 0) {
		KEEL_WARNLOG("volume %s: stopping export %s: %s", op->vol->name,
			     op->names[op->idx], strerror(-status));
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
#endif

/* Stop every export of op->vol, then \p next(op). */
static void vol_stop_exports(struct vol_op *op, vol_step_fn next)
{
	op->next = next;
#ifdef KEEL_HAVE_NBD
	{
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
		return;
	}
#else
	next(op);
#endif
}

struct vol_name_params {
	const char *name;
	bool flag;
};

static void rpc_volume_destroy(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"name", KEEL_RPC_PARAM_STRING, offsetof(struct vol_name_params, name), false},
		{"wipe", KEEL_RPC_PARAM_BOOL, offsetof(struct vol_name_params, flag), true},
	};
	struct vol_name_params p = {0};
	struct vol_op *op;
	struct vol *v;

	if (!keel_rpc_decode_params(req, params, table, 2, &p)) {
		return;
	}
	v = vol_get_for_change(req, p.name, false);
	if (v == NULL) {
		return;
	}
	op = vol_op_new(req, v);
	if (op == NULL) {
		return;
	}
	op->wipe = p.flag;
	v->busy = true;
	v->status = VOL_DESTROYING;
	KEEL_NOTICELOG("volume %s: destroying%s", v->name, p.flag ? " and wiping labels" : "");
	vol_stop_exports(op, vol_destroy_nexus);
}

/* ------------------------------------------------------------------------------ */
/* volume_list, volume_get                                                         */
/* ------------------------------------------------------------------------------ */

static void rpc_volume_list(struct keel_rpc_request *req, json_t *params)
{
	json_t *arr = json_array();
	struct vol *v;

	if (!keel_rpc_decode_params(req, params, NULL, 0, NULL)) {
		json_decref(arr);
		return;
	}
	TAILQ_FOREACH(v, &g_vols, link) {
		json_array_append_new(arr, vol_to_json(v));
	}
	keel_rpc_send_result(req, arr);
}

static void rpc_volume_get(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"name", KEEL_RPC_PARAM_STRING, 0, false},
	};
	const char *name = NULL;
	struct vol *v;
	json_t *o;

	if (!keel_rpc_decode_params(req, params, table, 1, &name)) {
		return;
	}
	v = vol_find(name);
	if (v == NULL) {
		keel_rpc_send_error(req, -ENOENT, "volume '%.64s' not found: volume_list shows the "
				    "volumes", name);
		return;
	}
	o = vol_to_json(v);
	if (o == NULL) {
		keel_rpc_send_error(req, -ENOMEM, "out of memory");
		return;
	}
	keel_rpc_send_result(req, o);
}

/* ------------------------------------------------------------------------------ */
/* Replicas: add, remove, fault                                                    */
/* ------------------------------------------------------------------------------ */

struct vol_replica_params {
	const char *name;
	const char *replica;
	const char *replica_bdev;
	bool force;
};

static void vol_add_undone(struct vol_op *op)
{
	vol_replica_free(op->vol, op->rep);
	op->rep = NULL;
	vol_op_reply_error(op);
}

static void vol_add_bdev_deleted(struct vol_op *op)
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

	if (status != 0) {
		if (status == -EEXIST && errmsg != NULL && strstr(errmsg, "label") != NULL &&
		    strstr(errmsg, "force") == NULL) {
			vol_op_fail(op, status, "%s; pass force (keelctl --force) to overwrite it",
				    errmsg);
		} else {
			vol_op_fail(op, status, "%s", errmsg != NULL ? errmsg : strerror(-status));
		}
		vol_close_replicas(op, vol_add_bdev_deleted);
		return;
	}
	vol_learn_uuids(op->vol);
	KEEL_NOTICELOG("volume %s: replica %s added", op->vol->name,
		       op->rep->path != NULL ? op->rep->path : op->rep->bdev);
	vol_save_then_reply(op, vol_to_json(op->vol));
}

static void vol_add_opened(struct vol_op *op)
{
	int rc;

	if (op->status != 0) {
		vol_close_replicas(op, vol_add_bdev_deleted);
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

/*
 * Re-add in place: `replica add VOL PATH` of a replica this volume still lists as
 * faulted or offline. The record stays; its aio bdev is made anew (a fresh fd:
 * the file or the device under it may have been replaced or reattached), and the
 * nexus recognises the label (this volume, its member UUID) and rejoins it,
 * partial rebuild when the bitmap covers its absence.
 */
static enum keel_nexus_replica_state vol_replica_nexus_state(struct vol *v,
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

static void vol_readd_nexus_done(void *cb_arg, int status, const char *errmsg,
				 struct keel_nexus *nexus)
{
	struct vol_op *op = cb_arg;

	(void)nexus;
	if (status != 0) {
		vol_op_fail(op, status, "volume %s: re-adding replica %s: %s", op->vol->name,
			    op->rep->path, errmsg != NULL ? errmsg : strerror(-status));
		/* The record stays (still listed as faulted); its new bdev stays open
		 * for the next try and is deleted with the volume. */
		vol_op_reply_error(op);
		return;
	}
	vol_learn_uuids(op->vol);
	KEEL_NOTICELOG("volume %s: replica %s re-added in place", op->vol->name, op->rep->path);
	vol_save_then_reply(op, vol_to_json(op->vol));
}

static void vol_readd_opened(struct vol_op *op)
{
	int rc;

	if (op->status != 0) {
		vol_op_reply_error(op);
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

static void vol_readd(struct keel_rpc_request *req, struct vol *v, struct vol_replica *r,
		      bool force)
{
	struct vol_op *op = vol_op_new(req, v);

	if (op == NULL) {
		return;
	}
	op->rep = r;
	op->force = force;
	v->busy = true;
	KEEL_NOTICELOG("volume %s: re-adding faulted replica %s in place", v->name, r->path);
	vol_close_replicas(op, vol_readd_closed);
}

static void rpc_volume_add_replica(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"name", KEEL_RPC_PARAM_STRING, offsetof(struct vol_replica_params, name), false},
		{"replica", KEEL_RPC_PARAM_STRING, offsetof(struct vol_replica_params, replica),
		 true},
		{"replica_bdev", KEEL_RPC_PARAM_STRING,
		 offsetof(struct vol_replica_params, replica_bdev), true},
		{"force", KEEL_RPC_PARAM_BOOL, offsetof(struct vol_replica_params, force), true},
	};
	struct vol_replica_params p = {0};
	struct vol_op *op;
	struct vol *v;
	json_t *list;
	bool by_path;

	if (!keel_rpc_decode_params(req, params, table, 4, &p)) {
		return;
	}
	if ((p.replica == NULL) == (p.replica_bdev == NULL)) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS, "give replica (the path of the "
				    "replica file)%s", p.replica != NULL ? ", not also "
				    "replica_bdev" : "");
		return;
	}
	by_path = p.replica != NULL;
	if (by_path) {
		struct vol_replica *r = NULL;
		struct vol *owner = vol_find_replica_owner(p.replica, NULL, &r);

		if (owner != NULL && strcmp(owner->name, p.name) == 0) {
			enum keel_nexus_replica_state st;

			v = vol_get_for_change(req, p.name, true);
			if (v == NULL) {
				return;
			}
			st = vol_replica_nexus_state(v, r);
			if (st == KEEL_NEXUS_REPLICA_FAULTED || st == KEEL_NEXUS_REPLICA_OFFLINE) {
				vol_readd(req, v, r, p.force);
				return;
			}
			keel_rpc_send_error(req, -EEXIST, "file '%.200s' is already a %s replica of "
					    "volume '%s'", p.replica,
					    st == KEEL_NEXUS_REPLICA_REBUILDING ? "rebuilding" :
					    "healthy", v->name);
			return;
		}
	}
	list = json_pack("[s]", by_path ? p.replica : p.replica_bdev);
	if (list == NULL) {
		keel_rpc_send_error(req, -ENOMEM, "out of memory");
		return;
	}
	if (!vol_check_replica_list(req, list, by_path, by_path ? "replica" : "replica_bdev")) {
		json_decref(list);
		return;
	}
	json_decref(list);
	v = vol_get_for_change(req, p.name, true);
	if (v == NULL) {
		return;
	}
	if (by_path == v->transient) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS, "volume '%s' was made from %s: "
				    "add a replica as %s", v->name, v->transient ? "bdevs" : "files",
				    v->transient ? "replica_bdev" : "replica (a path)");
		return;
	}
	if (vol_replica_count(v) >= KEEL_NEXUS_MAX_REPLICAS) {
		keel_rpc_send_error(req, -ENOSPC, "volume '%s' has the most replicas a volume can "
				    "have (%d): remove one first", v->name, KEEL_NEXUS_MAX_REPLICAS);
		return;
	}
	op = vol_op_new(req, v);
	if (op == NULL) {
		return;
	}
	op->rep = vol_add_replica_rec(v, p.replica, p.replica_bdev);
	if (op->rep == NULL) {
		vol_op_free(op);
		keel_rpc_send_error(req, -ENOMEM, "out of memory");
		return;
	}
	op->force = p.force;
	v->busy = true;
	if (by_path) {
		vol_files(op, false, vol_add_file_ready);
	} else {
		vol_add_opened(op);
	}
}

/* What the nexus knows the replica by: its bdev, else (missing file) its UUID. */
static const char *vol_replica_nexus_id(const struct vol_replica *r)
{
	return r->bdev[0] != '\0' ? r->bdev : r->uuid[0] != '\0' ? r->uuid : NULL;
}

static void vol_remove_bdev_deleted(struct vol_op *op)
{
	KEEL_NOTICELOG("volume %s: replica %s removed", op->vol->name,
		       op->rep->path != NULL ? op->rep->path : op->rep->bdev);
	vol_replica_free(op->vol, op->rep);
	op->rep = NULL;
	vol_save_then_reply(op, vol_to_json(op->vol));
}

static void vol_remove_nexus_done(void *cb_arg, int status, const char *errmsg,
				  struct keel_nexus *nexus)
{
	struct vol_op *op = cb_arg;

	if (status == -ENODEV && op->rep->bdev[0] == '\0') {
		/* Never part of the assembled volume (its file was missing and its UUID
		 * unknown): forgetting the path is all there is to do. */
		status = 0;
	}
	if (status != 0) {
		if (status == -EBUSY) {
			vol_op_fail(op, status, "%s (destroy the volume instead)",
				    errmsg != NULL ? errmsg : "the last healthy replica cannot be "
				    "removed");
		} else {
			vol_op_fail(op, status, "%s", errmsg != NULL ? errmsg : strerror(-status));
		}
		vol_op_reply_error(op);
		return;
	}
	op->next = vol_remove_bdev_deleted;
	op->cur = op->rep;
	vol_close_next(op);
}

static void vol_fault_nexus_done(void *cb_arg, int status, const char *errmsg,
				 struct keel_nexus *nexus)
{
	struct vol_op *op = cb_arg;

	if (status != 0) {
		if (status == -EALREADY) {
			vol_op_fail(op, status, "replica %s of volume %s is not healthy or "
				    "rebuilding: nothing to fault", op->rep->path != NULL ?
				    op->rep->path : op->rep->bdev, op->vol->name);
		} else if (status == -EBUSY) {
			vol_op_fail(op, status, "%s", errmsg != NULL ? errmsg :
				    "the last healthy replica cannot be faulted");
		} else {
			vol_op_fail(op, status, "%s", errmsg != NULL ? errmsg : strerror(-status));
		}
		vol_op_reply_error(op);
		return;
	}
	KEEL_NOTICELOG("volume %s: replica %s faulted by the administrator", op->vol->name,
		       op->rep->path != NULL ? op->rep->path : op->rep->bdev);
	op->vol->busy = false;
	keel_rpc_send_result(op->req, vol_to_json(op->vol));
	vol_op_free(op);
}

static void vol_replica_change(struct keel_rpc_request *req, json_t *params, bool remove)
{
	static const struct keel_rpc_param table[] = {
		{"name", KEEL_RPC_PARAM_STRING, offsetof(struct vol_replica_params, name), false},
		{"replica", KEEL_RPC_PARAM_STRING, offsetof(struct vol_replica_params, replica),
		 false},
	};
	struct vol_replica_params p = {0};
	struct vol_replica *r;
	struct vol_op *op;
	const char *id;
	struct vol *v;
	int rc;

	if (!keel_rpc_decode_params(req, params, table, 2, &p)) {
		return;
	}
	v = vol_get_for_change(req, p.name, true);
	if (v == NULL) {
		return;
	}
	r = vol_find_replica(v, p.replica);
	if (r == NULL) {
		keel_rpc_send_error(req, -ENOENT, "volume '%s' has no replica '%.200s': volume_get "
				    "lists its replicas by path", v->name, p.replica);
		return;
	}
	op = vol_op_new(req, v);
	if (op == NULL) {
		return;
	}
	op->rep = r;
	v->busy = true;
	id = vol_replica_nexus_id(r);
	if (remove) {
		rc = id != NULL ? keel_nexus_remove_replica(v->name, id, vol_remove_nexus_done, op) :
				  -ENODEV;
		if (rc != 0) {
			vol_remove_nexus_done(op, rc, NULL, NULL);
		}
	} else {
		rc = id != NULL ? keel_nexus_fault_replica(v->name, id, vol_fault_nexus_done, op) :
				  -ENODEV;
		if (rc == -ENODEV) {
			vol_op_fail(op, rc, "replica %s of volume %s is not in the assembled "
				    "volume (missing file?): nothing to fault", p.replica, v->name);
			vol_op_reply_error(op);
		} else if (rc != 0) {
			vol_fault_nexus_done(op, rc, NULL, NULL);
		}
	}
}

static void rpc_volume_remove_replica(struct keel_rpc_request *req, json_t *params)
{
	vol_replica_change(req, params, true);
}

static void rpc_volume_fault_replica(struct keel_rpc_request *req, json_t *params)
{
	vol_replica_change(req, params, false);
}

/* ------------------------------------------------------------------------------ */
/* Startup: load, restore; shutdown                                                */
/* ------------------------------------------------------------------------------ */

int keeld_volumes_load(json_t *doc)
{
	json_t *vols = json_object_get(doc, "volumes");
	json_t *jv, *jr;
	size_t i, j;

	json_array_foreach(vols, i, jv) {
		struct vol *v = vol_new(json_string_value(json_object_get(jv, "name")),
					(uint64_t)json_integer_value(json_object_get(jv, "size")));

		if (v == NULL) {
			return -ENOMEM;
		}
		v->status = VOL_UNASSEMBLED;
		snprintf(v->error, sizeof(v->error), "not assembled yet");
		if (json_is_string(json_object_get(jv, "uuid"))) {
			snprintf(v->uuid, sizeof(v->uuid), "%s",
				 json_string_value(json_object_get(jv, "uuid")));
		}
		TAILQ_INSERT_TAIL(&g_vols, v, link);
		json_array_foreach(json_object_get(jv, "replicas"), j, jr) {
			struct vol_replica *r = vol_add_replica_rec(
				v, json_string_value(json_object_get(jr, "path")), NULL);

			if (r == NULL) {
				return -ENOMEM;
			}
			if (json_is_string(json_object_get(jr, "uuid"))) {
				snprintf(r->uuid, sizeof(r->uuid), "%s",
					 json_string_value(json_object_get(jr, "uuid")));
			}
		}
	}
	json_decref(g_loaded_exports);
	g_loaded_exports = json_object_get(doc, "exports");
	json_incref(g_loaded_exports);
	return 0;
}

static void vol_restore_next(struct vol_op *op);

/* Exports being restored; restore finishes when the last one answered, so an
 * export that was there before a restart is there again when keeld says ready. */
static uint32_t g_restoring_exports;
static struct vol_op *g_restore_op;

static void vol_restore_complete(void)
{
	struct vol_op *op = g_restore_op;
	keeld_volumes_done_cb cb = op->restore_cb;
	void *arg = op->restore_arg;

	g_restore_op = NULL;
	vol_op_free(op);
	g_export_watcher = keel_poller_register(vol_export_watch, NULL, VOL_EXPORT_WATCH_US,
						"keeld_export_watch");
	if (g_export_watcher == NULL) {
		KEEL_WARNLOG("keeld: cannot watch exports: exports are saved only with volume "
			     "changes");
	}
	/* Saves the UUIDs learnt and drops exports that could not be kept. */
	keeld_store_save(KEELD_DOC_STATE, NULL, NULL);
	cb(arg);
}

#ifdef KEEL_HAVE_NBD
static void vol_restore_export_done(void *cb_arg, int status)
{
	char *name = cb_arg;

	if (status != 0) {
		KEEL_ERRLOG("keeld: export %s not restored: %s", name, strerror(-status));
	} else {
		KEEL_NOTICELOG("keeld: export %s restored", name);
	}
	free(name);
	if (--g_restoring_exports == 0) {
		vol_restore_complete();
	}
}
#endif

/* Start the saved exports of assembled volumes; keep those of unassembled ones. */
static void vol_restore_exports(void)
{
	json_t *e;
	size_t i;

	g_restoring_exports = 1; /* held until every start is issued */
	json_array_foreach(g_loaded_exports, i, e) {
		const char *name = json_string_value(json_object_get(e, "name"));
		const char *bdev = json_string_value(json_object_get(e, "bdev"));
		struct vol *v = vol_find(bdev);

		if (v == NULL) {
			KEEL_WARNLOG("keeld: export %s of '%s' not restored: no such volume", name,
				     bdev);
			continue;
		}
		if (v->status != VOL_READY) {
			if (v->pending_exports == NULL) {
				v->pending_exports = json_array();
			}
			json_array_append(v->pending_exports, e);
			KEEL_WARNLOG("keeld: export %s not started: volume %s is not assembled",
				     name, bdev);
			continue;
		}
#ifdef KEEL_HAVE_NBD
		{
			struct keel_nbd_export_opts opts = {0};
			char *ctx = strdup(name);
			int rc;

			opts.bdev_name = bdev;
			opts.name = name;
			opts.socket_path = json_string_value(json_object_get(e, "socket"));
			opts.tcp = json_string_value(json_object_get(e, "tcp"));
			opts.read_only = json_is_true(json_object_get(e, "read_only"));
			rc = ctx == NULL ? -ENOMEM :
			     keel_nbd_export_start(&opts, vol_restore_export_done, ctx);
			if (rc != 0) {
				KEEL_ERRLOG("keeld: export %s not restored: %s", name, strerror(-rc));
				free(ctx);
			} else {
				g_restoring_exports++;
			}
		}
#else
		KEEL_WARNLOG("keeld: export %s not restored: built without NBD", name);
#endif
	}
	json_decref(g_loaded_exports);
	g_loaded_exports = NULL;
	if (--g_restoring_exports == 0) {
		vol_restore_complete();
	}
}

static void vol_restore_finish(struct vol_op *op)
{
	g_restore_op = op;
	vol_restore_exports();
}

static void vol_restore_closed(struct vol_op *op)
{
	op->vol->busy = false;
	op->vol = TAILQ_NEXT(op->vol, link);
	vol_restore_next(op);
}

static void vol_restore_opened(void *cb_arg, int status, const char *errmsg,
			       struct keel_nexus *nexus)
{
	struct vol_op *op = cb_arg;
	struct vol *v = op->vol;

	if (status != 0) {
		v->status = VOL_UNASSEMBLED;
		snprintf(v->error, sizeof(v->error), "%s", errmsg != NULL ? errmsg :
			 strerror(-status));
		KEEL_ERRLOG("volume %s: not assembled: %s", v->name, v->error);
		vol_close_replicas(op, vol_restore_closed);
		return;
	}
	v->status = VOL_READY;
	v->error[0] = '\0';
	vol_learn_uuids(v);
	KEEL_NOTICELOG("volume %s: assembled", v->name);
	vol_restore_closed(op);
}

static void vol_restore_assemble(struct vol_op *op)
{
	struct vol *v = op->vol;
	const char *names[KEEL_NEXUS_MAX_REPLICAS];
	struct keel_nexus_open_opts opts = {0};
	struct vol_replica *r;
	uint32_t n = 0, missing = 0, unopened = 0;
	int rc;

	TAILQ_FOREACH(r, &v->replicas, link) {
		if (r->bdev[0] != '\0') {
			names[n++] = r->bdev;
		} else if (r->open_error == -ENOENT) {
			missing++;
		} else {
			unopened++;
		}
	}
	if (n == 0) {
		v->status = VOL_UNASSEMBLED;
		snprintf(v->error, sizeof(v->error), "none of its replica files could be opened "
			 "(see volume_get for each)");
		KEEL_ERRLOG("volume %s: not assembled: %s", v->name, v->error);
		vol_restore_closed(op);
		return;
	}
	opts.name = v->name;
	opts.replicas = names;
	opts.num_replicas = n;
	/*
	 * A replica whose file no longer exists will never come back with newer data,
	 * so waiting for it gains nothing: assemble from the replicas present (degraded).
	 * A file that exists but cannot be opened might, so then the nexus decides (it
	 * keeps the volume faulted rather than guess). See docs/volumes.md.
	 */
	opts.force = missing > 0 && unopened == 0;
	if (opts.force) {
		KEEL_WARNLOG("volume %s: %u replica file(s) missing: assembling from the %u "
			     "present", v->name, missing, n);
	}
	rc = keel_nexus_open(&opts, vol_restore_opened, op);
	if (rc != 0) {
		vol_restore_opened(op, rc, NULL, NULL);
	}
}

static void vol_restore_next(struct vol_op *op)
{
	while (op->vol != NULL && op->vol->status != VOL_UNASSEMBLED) {
		op->vol = TAILQ_NEXT(op->vol, link);
	}
	if (op->vol == NULL) {
		vol_restore_finish(op);
		return;
	}
	op->vol->busy = true;
	op->status = 0;
	op->errmsg[0] = '\0';
	vol_open_replicas(op, vol_restore_assemble);
}

void keeld_volumes_restore(keeld_volumes_done_cb cb_fn, void *cb_arg)
{
	struct vol_op *op = calloc(1, sizeof(*op));

	keeld_store_set_snapshot(KEELD_DOC_STATE, vol_state_snapshot, NULL);
	if (op == NULL) {
		KEEL_ERRLOG("keeld: out of memory restoring volumes");
		cb_fn(cb_arg);
		return;
	}
	op->restore_cb = cb_fn;
	op->restore_arg = cb_arg;
	op->vol = TAILQ_FIRST(&g_vols);
	vol_restore_next(op);
}

struct vol_shutdown_ctx {
	keeld_volumes_done_cb cb_fn;
	void *cb_arg;
};

static void vol_shutdown_saved(void *cb_arg, int status)
{
	struct vol_shutdown_ctx *ctx = cb_arg;

	ctx->cb_fn(ctx->cb_arg);
	free(ctx);
}

static void vol_shutdown_msg(void *arg)
{
	vol_shutdown_saved(arg, 0);
}

void keeld_volumes_shutdown(keeld_volumes_done_cb cb_fn, void *cb_arg)
{
	struct vol_shutdown_ctx *ctx = calloc(1, sizeof(*ctx));

	keel_poller_unregister(&g_export_watcher);
	if (ctx == NULL) {
		g_shutting_down = true;
		cb_fn(cb_arg);
		return;
	}
	ctx->cb_fn = cb_fn;
	ctx->cb_arg = cb_arg;
	/* Only once restore ran is the registry worth writing. */
	if (g_saved_exports_text != NULL &&
	    keeld_store_save(KEELD_DOC_STATE, vol_shutdown_saved, ctx) == 0) {
		g_shutting_down = true;
		return;
	}
	g_shutting_down = true;
	if (keel_thread_send_msg(keel_thread_get_current(), vol_shutdown_msg, ctx) != 0) {
		vol_shutdown_saved(ctx, 0);
	}
}

void keeld_volumes_fini(void)
{
	struct vol *v;

	while ((v = TAILQ_FIRST(&g_vols)) != NULL) {
		TAILQ_REMOVE(&g_vols, v, link);
		vol_free(v);
	}
	json_decref(g_loaded_exports);
	g_loaded_exports = NULL;
	free(g_saved_exports_text);
	g_saved_exports_text = NULL;
}

void rpc_volume_register(void)
{
	keel_rpc_register_method("volume_create", rpc_volume_create,
				 "create a replicated volume {name, size, replicas: [paths], "
				 "force?} (or replica_bdevs: [bdevs], a test hook)");
	keel_rpc_register_method("volume_destroy", rpc_volume_destroy,
				 "stop a volume's exports and the volume {name, wipe?}; the files "
				 "stay");
	keel_rpc_register_method("volume_list", rpc_volume_list, "list volumes");
	keel_rpc_register_method("volume_get", rpc_volume_get,
				 "one volume: state, size, replicas, exports {name}");
	keel_rpc_register_method("volume_add_replica", rpc_volume_add_replica,
				 "add a replica file {name, replica, force?}");
	keel_rpc_register_method("volume_remove_replica", rpc_volume_remove_replica,
				 "remove a replica {name, replica (its path)}");
	keel_rpc_register_method("volume_fault_replica", rpc_volume_fault_replica,
				 "take a replica out of service {name, replica (its path)}");
}
