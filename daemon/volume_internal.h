/*
 * Internals shared by the files of the volume manager: volume_manager.c (registry,
 * argument checks, the lifetime of an operation), volume_steps.c (the steps operations
 * are made of), volume_ops.c (create, destroy, add, remove, fault), volume_restore.c
 * (load, restore, the state document, shutdown), volume_json.c (rendering),
 * volume_backend.c (backends by name). Nothing else includes this.
 *
 * Everything here runs on the main keel thread.
 */
#ifndef KEEL_DAEMON_VOLUME_INTERNAL_H
#define KEEL_DAEMON_VOLUME_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include <jansson.h>

#include "keel/bdev.h"
#include "keel/nexus.h"
#include "replica_backend.h"
#include "volume_manager.h"

enum vol_status {
	VOL_CREATING,    /* keeld_volume_create in progress: not in the state file yet */
	VOL_READY,       /* assembled (the nexus may still be degraded or faulted) */
	VOL_UNASSEMBLED, /* from the state file, assembly failed: see error */
	VOL_DESTROYING,
};

struct vol_replica {
	char *path;                        /* NULL: a given bdev (test hook) */
	char bdev[KEEL_BDEV_NAME_MAX + 1]; /* "" while it has no bdev */
	char uuid[KEEL_UUID_STR_LEN];      /* replica UUID from its label, "" unknown */
	bool owned;                        /* the backend opened the bdev: keeld closes it */
	enum keeld_backend backend;        /* what opens the file (persisted); not DEFAULT */
	/* What opened the bdev (or tried last): closes it and words its errors. Differs
	 * from backend's when a restore fell back to aio. NULL: nothing tried yet. */
	const struct keeld_replica_backend *opened_by;
	bool created_file; /* this operation created the target */
	int open_error;    /* why the target could not be opened (restore) */
	TAILQ_ENTRY(vol_replica) link;
};

TAILQ_HEAD(vol_replica_list, vol_replica);

struct keeld_volume {
	char name[KEEL_NEXUS_NAME_MAX + 1];
	char uuid[KEEL_UUID_STR_LEN];
	uint64_t size;
	enum vol_status status;
	bool busy;                  /* an operation owns the volume until it answered */
	bool transient;             /* made from replica_bdevs: never saved */
	enum keeld_backend backend; /* of replicas added without one; not DEFAULT */
	char error[600];            /* why it is unassembled */
	json_t *pending_exports;    /* saved exports of an unassembled volume, kept verbatim */
	struct vol_replica_list replicas;
	TAILQ_ENTRY(keeld_volume) link;
};

struct vol_op;
typedef void (*vol_step_fn)(struct vol_op *op);

/* One operation in flight: a change to one volume, or the restore of them all. */
struct vol_op {
	struct keeld_volume *vol;
	struct vol_replica *rep; /* the replica a replica operation is about */
	struct vol_replica *cur; /* iteration cursor */
	bool force;
	bool wipe;
	bool restoring; /* open what can be opened instead of stopping */
	int status;
	char errmsg[1024];
	vol_step_fn next; /* where a sequence of steps continues */
	char **names;     /* exports to stop */
	size_t nnames;
	size_t idx;
	keeld_volume_op_cb cb_fn;
	void *cb_arg;
	keeld_volumes_done_cb done_fn; /* restore */
	void *done_arg;
};

/* Registry (volume_manager.c). */
struct keeld_volume *vol_new(const char *name, uint64_t size);
void vol_free(struct keeld_volume *v);
void vol_register(struct keeld_volume *v);
void vol_unregister(struct keeld_volume *v);
struct vol_replica *vol_add_replica_rec(struct keeld_volume *v, const char *path, const char *bdev);
void vol_replica_free(struct keeld_volume *v, struct vol_replica *r);
uint32_t vol_replica_count(const struct keeld_volume *v);
/* The volume (and replica) a path or bdev name already belongs to, or NULL. */
struct keeld_volume *vol_find_replica_owner(const char *path, const char *bdev,
					    struct vol_replica **rep_out);
/* Replica of \p v named by its path or bdev name, or NULL. */
struct vol_replica *vol_find_replica(struct keeld_volume *v, const char *id);
/* "<volume>.r<N>" with the lowest free N; the volume part is cut to fit 63 bytes. */
int vol_pick_bdev_name(const char *vol_name, char *out, size_t len);

/* Backends by name (volume_backend.c). */
/* What opens replicas of \p kind (the test hook's when set). */
const struct keeld_replica_backend *vol_backend_of(enum keeld_backend kind);
/* \p kind, or the daemon's default for KEELD_BACKEND_DEFAULT. */
enum keeld_backend vol_backend_resolve(enum keeld_backend kind);
/* The backend that opened \p r's bdev (or tried last): its recorded one unless a
 * restore fell back to aio. */
enum keeld_backend vol_replica_backend_in_use(const struct vol_replica *r);
/* Whether \p kind can open replicas here; false fills \p why. */
bool vol_backend_available(enum keeld_backend kind, char *why, size_t len);
/* When \p kind is unavailable here, record -ENOTSUP in \p op with why and what to do
 * instead and \return true. */
bool vol_backend_refuse_unavailable(struct vol_op *op, enum keeld_backend kind);

/* Operations: lifetime and answers (volume_manager.c). */
struct vol_op *vol_op_new(struct keeld_volume *v, keeld_volume_op_cb cb_fn, void *cb_arg);
void vol_op_free(struct vol_op *op);
bool vol_ops_idle(void);
/* A new operation for an entry point. \return 0 with *opp, -EINVAL (no callback),
 * -ESHUTDOWN, -ENOMEM. */
int vol_op_begin(keeld_volume_op_cb cb_fn, void *cb_arg, struct vol_op **opp);
/* Run \p first(op) from a message. \return 0 or the send's errno (nothing ran). */
int vol_op_start(struct vol_op *op, vol_step_fn first);
/* vol_op_start, then mark op->vol busy. \return 0, or the send's errno (op freed). */
int vol_op_launch(struct vol_op *op, vol_step_fn first);
/* Refuse with the recorded failure, later (the callback never runs inside the call);
 * the operation never owned a volume. \return 0, or the send's errno (op freed, its
 * callback never runs). */
int vol_op_refuse(struct vol_op *op);
/* Record a failure; the first one stays (undo steps must not overwrite it). */
void vol_op_fail(struct vol_op *op, int status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Answer with the operation's status and end it; the volume is free again. */
void vol_op_answer(struct vol_op *op);
/* The same, for a failure: logged with the volume's name first. */
void vol_op_answer_error(struct vol_op *op);
/* Answer once the change is on disk (a success survives a restart). The volume stays
 * busy until then, so the answer describes the volume as saved. */
void vol_save_then_answer(struct vol_op *op);
/* A volume that can take a change now (exists, not busy, assembled when
 * \p need_assembled), or NULL with the failure recorded in \p op. */
struct keeld_volume *vol_get_for_change(struct vol_op *op, const char *name, bool need_assembled);

/* Steps (volume_steps.c): each continues with \p next/\p done, a failure recorded. */
/* Prepare the targets of \p op (op->rep, or every replica with a path) through the
 * backend on the blocking pool, or with \p unprepare remove those it created. */
void vol_files(struct vol_op *op, bool unprepare, vol_step_fn done);

/* Replicas on other hosts re-added once their server answers (volume_remote.c): started
 * with the restore, stopped with the shutdown. Main keel thread. */
void vol_remote_start(void);
void vol_remote_stop(void);
/* Open a bdev for every replica of op->vol that has none (only op->rep when set). */
void vol_open_replicas(struct vol_op *op, vol_step_fn next);
/* Close the bdevs keeld opened for op->vol (only op->rep's when set). */
void vol_close_replicas(struct vol_op *op, vol_step_fn next);
/* Stop every NBD export of op->vol. */
void vol_stop_exports(struct vol_op *op, vol_step_fn next);
/* Remember the volume's and each replica's label UUID: it names an offline replica. */
void vol_learn_uuids(struct keeld_volume *v);
/* Record a nexus failure; a refused label gets the hint to pass force. */
void vol_op_fail_nexus(struct vol_op *op, int status, const char *errmsg);

/* JSON (volume_json.c). */
/* Exports of persisted volumes as the state document keeps them, live from the NBD
 * server plus those kept for unassembled volumes; NULL on out of memory. */
json_t *vol_exports_state(void);
/* The state document with \p exports (reference stolen); NULL on out of memory. */
json_t *vol_state_document(json_t *exports);

/* State document (volume_restore.c). */
/* Save the state, then \p cb_fn (0 or the save's errno). \return 0 or -ENOMEM. */
int vol_state_save(void (*cb_fn)(void *cb_arg, int status), void *cb_arg);
/* An operation ended: a waiting shutdown may go on. */
void vol_shutdown_kick(void);
/* Whether keeld_volumes_shutdown ran: no new operation starts. */
bool vol_stopping(void);
/* Forget what load, restore and shutdown kept (keeld_volumes_fini). */
void vol_restore_fini(void);

#endif /* KEEL_DAEMON_VOLUME_INTERNAL_H */
