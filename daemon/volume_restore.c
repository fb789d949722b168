/*
 * What of the volumes survives a restart: loading the state document, the snapshot
 * the store writes, bringing the volumes and their exports back at startup, following
 * the exports while keeld runs, and the last save at shutdown.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/bdev_module.h"
#include "keel/log.h"
#include "keel/nexus.h"
#include "keel/reactor.h"
#include "bdev_persist.h"
#include "store.h"
#include "volume_internal.h"
#include "keel/nbd.h"

static json_t *g_loaded_exports; /* exports from the state file, until restored */
static bool g_restored;          /* restore ran: the registry is worth writing */
static bool g_stopping;          /* shutdown began: no new operation */
static json_t *g_final_exports;  /* exports when shutdown began, for the last saves */
static keeld_volumes_done_cb g_shutdown_cb;
static void *g_shutdown_arg;
static bool g_shutdown_waiting; /* for the operations in flight to end */

/* Exports being restored; restore finishes when the last one answered, so an export
 * that was there before a restart is there again when keeld says ready. */
static uint32_t g_restoring_exports;
/*
 * Restore brings up RESTORE_LANES volumes at a time: each volume waits on file opens
 * and label and bitmap I/O, so one at a time left the disk and the blocking pool idle
 * (1000 volumes took 6.5 s to serve again). Each lane takes the next volume from the
 * cursor; the exports start when the last lane ends.
 */
#define RESTORE_LANES 16
static struct keeld_volume *g_restore_cursor;
static uint32_t g_restore_lanes;
static keeld_volumes_done_cb g_restore_done_fn;
static void *g_restore_done_arg;

/* ------------------------------------------------------------------------------ */
/* The state document                                                              */
/* ------------------------------------------------------------------------------ */

static json_t *vol_snapshot(void *ctx)
{
	json_t *exports;

	(void)ctx;
	/* Shutting down stops the exports; the file must still list them. */
	exports = g_final_exports != NULL ? json_incref(g_final_exports) : vol_exports_state();
	return vol_state_document(exports);
}

static void (*g_change_fn)(void *ctx);
static void *g_change_ctx;

void keeld_volumes_set_change_listener(void (*fn)(void *ctx), void *ctx)
{
	g_change_fn = fn;
	g_change_ctx = ctx;
}

int vol_state_save(void (*cb_fn)(void *cb_arg, int status), void *cb_arg)
{
	/* Every change is saved: this is where listeners learn of them. */
	if (g_change_fn != NULL) {
		g_change_fn(g_change_ctx);
	}
	return keeld_store_save(KEELD_DOC_STATE, cb_fn, cb_arg);
}

bool vol_stopping(void)
{
	return g_stopping;
}

/* Exports are started and stopped by rpc_nbd.c (or stop when their bdev goes), which
 * knows nothing of volumes: the NBD server says when, and the state is saved. */
static void vol_exports_changed(void *ctx)
{
	(void)ctx;
	if (!g_stopping) {
		vol_state_save(NULL, NULL);
	}
}

/* ------------------------------------------------------------------------------ */
/* Load (main(), before the reactors)                                              */
/* ------------------------------------------------------------------------------ */

/* The "backend" of a checked volume or replica object, or \p absent without one. */
static enum keeld_backend vol_load_backend(json_t *obj, enum keeld_backend absent)
{
	enum keeld_backend b;

	if (keeld_backend_parse(json_string_value(json_object_get(obj, "backend")), &b, NULL, 0)) {
		return b;
	}
	return absent;
}

int keeld_volumes_load(json_t *doc)
{
	json_t *vols = json_object_get(doc, "volumes");
	json_t *jv, *jr;
	size_t i, j;

	json_array_foreach(vols, i, jv) {
		struct keeld_volume *v = vol_new(
			json_string_value(json_object_get(jv, "name")),
			(uint64_t)json_integer_value(json_object_get(jv, "size")));

		if (v == NULL) {
			return -ENOMEM;
		}
		v->status = VOL_UNASSEMBLED;
		snprintf(v->error, sizeof(v->error), "not assembled yet");
		/* Written before volumes had a backend: aio, which was the only one. */
		v->backend = vol_load_backend(jv, KEELD_BACKEND_AIO);
		if (json_is_string(json_object_get(jv, "uuid"))) {
			snprintf(v->uuid, sizeof(v->uuid), "%s",
				 json_string_value(json_object_get(jv, "uuid")));
		}
		vol_register(v);
		json_array_foreach(json_object_get(jv, "replicas"), j, jr) {
			struct vol_replica *r = vol_add_replica_rec(
				v, json_string_value(json_object_get(jr, "path")), NULL);

			if (r == NULL) {
				return -ENOMEM;
			}
			r->backend = vol_load_backend(jr, v->backend);
			if (json_is_string(json_object_get(jr, "uuid"))) {
				snprintf(r->uuid, sizeof(r->uuid), "%s",
					 json_string_value(json_object_get(jr, "uuid")));
			}
		}
	}
	keeld_bdevs_load(doc);
	json_decref(g_loaded_exports);
	g_loaded_exports = json_object_get(doc, "exports");
	json_incref(g_loaded_exports);
	return 0;
}

/* ------------------------------------------------------------------------------ */
/* Restore                                                                         */
/* ------------------------------------------------------------------------------ */

static void vol_restore_next(struct vol_op *op);

static void vol_restore_complete(void)
{
	keeld_volumes_done_cb cb = g_restore_done_fn;
	void *arg = g_restore_done_arg;

	g_restore_done_fn = NULL;
	g_restored = true;
	keel_nbd_set_export_listener(vol_exports_changed, NULL);
	/* Saves the UUIDs learnt and drops exports that could not be kept. */
	vol_state_save(NULL, NULL);
	cb(arg);
}

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

static void vol_restore_export(json_t *e, const char *name, const char *bdev)
{
	struct keel_nbd_export_opts opts = {0};
	char *ctx = strdup(name);
	int rc;

	opts.bdev_name = bdev;
	opts.name = name;
	opts.socket_path = json_string_value(json_object_get(e, "socket"));
	opts.tcp = json_string_value(json_object_get(e, "tcp"));
	opts.read_only = json_is_true(json_object_get(e, "read_only"));
	opts.tls_psk_file = json_string_value(json_object_get(e, "tls_psk_file"));
	opts.tls_certs_dir = json_string_value(json_object_get(e, "tls_certs_dir"));
	opts.tls_verify_client = json_is_true(json_object_get(e, "tls_verify_client"));
	/* Saved before TLS existed: it was served in plaintext then, so it stays so. */
	if (!keel_nbd_tls_mode_parse(json_string_value(json_object_get(e, "tls")), &opts.tls)) {
		opts.tls = KEEL_NBD_TLS_OFF;
	}
	rc = ctx == NULL ? -ENOMEM : keel_nbd_export_start(&opts, vol_restore_export_done, ctx);
	if (rc != 0) {
		KEEL_ERRLOG("keeld: export %s not restored: %s", name, strerror(-rc));
		free(ctx);
	} else {
		g_restoring_exports++;
	}
}

/* Start the saved exports of assembled volumes; keep those of unassembled ones. */
static void vol_restore_exports(void)
{
	json_t *e;
	size_t i;

	g_restoring_exports = 1; /* held until every start is issued */
	json_array_foreach(g_loaded_exports, i, e) {
		const char *name = json_string_value(json_object_get(e, "name"));
		const char *bdev = json_string_value(json_object_get(e, "bdev"));
		struct keeld_volume *v = keeld_volume_find(bdev, NULL, 0);

		if (v == NULL && bdev != NULL && keeld_bdevs_is_persisted(bdev)) {
			vol_restore_export(e, name, bdev); /* of a plain bdev restored before */
			continue;
		}
		if (v == NULL && keeld_bdevs_hold_export(bdev, e)) {
			KEEL_WARNLOG("keeld: export %s waits for its bdev %s", name, bdev);
			continue;
		}
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
		vol_restore_export(e, name, bdev);
	}
	json_decref(g_loaded_exports);
	g_loaded_exports = NULL;
	if (--g_restoring_exports == 0) {
		vol_restore_complete();
	}
}

static void vol_restore_closed(struct vol_op *op)
{
	op->vol->busy = false;
	/* Progress of a long restore (keeld tells systemd it is not stuck). */
	if (g_change_fn != NULL) {
		g_change_fn(g_change_ctx);
	}
	vol_restore_next(op);
}

static void vol_restore_opened(void *cb_arg, int status, const char *errmsg,
			       struct keel_nexus *nexus)
{
	struct vol_op *op = cb_arg;
	struct keeld_volume *v = op->vol;

	(void)nexus;
	if (status != 0) {
		v->status = VOL_UNASSEMBLED;
		snprintf(v->error, sizeof(v->error), "%s",
			 errmsg != NULL ? errmsg : strerror(-status));
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
	struct keeld_volume *v = op->vol;
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
		snprintf(v->error, sizeof(v->error),
			 "none of its replica files could be opened "
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
			     "present",
			     v->name, missing, n);
	}
	rc = keel_nexus_open(&opts, vol_restore_opened, op);
	if (rc != 0) {
		vol_restore_opened(op, rc, NULL, NULL);
	}
}

/* The next volume still to assemble, or NULL. Volumes are neither added nor removed
 * while restoring (the RPC socket opens afterwards). */
static struct keeld_volume *vol_restore_take(void)
{
	struct keeld_volume *v = g_restore_cursor;

	while (v != NULL && v->status != VOL_UNASSEMBLED) {
		v = TAILQ_NEXT(v, link);
	}
	g_restore_cursor = v != NULL ? TAILQ_NEXT(v, link) : NULL;
	return v;
}

static void vol_restore_next(struct vol_op *op)
{
	op->vol = vol_restore_take();
	if (op->vol == NULL) {
		vol_op_free(op);
		if (--g_restore_lanes == 0) {
			vol_restore_exports();
		}
		return;
	}
	op->vol->busy = true;
	op->status = 0;
	op->errmsg[0] = '\0';
	vol_open_replicas(op, vol_restore_assemble);
}

static void vol_late_export_done(void *cb_arg, int status)
{
	char *name = cb_arg;

	if (status != 0) {
		KEEL_ERRLOG("keeld: export %s not restored: %s", name, strerror(-status));
	} else {
		KEEL_NOTICELOG("keeld: export %s restored (its bdev is back)", name);
	}
	free(name);
}

/* A plain bdev that could not be made at start is back: start its held export. */
static void vol_start_held_export(json_t *e)
{
	struct keel_nbd_export_opts opts = {0};
	char *ctx;

	opts.bdev_name = json_string_value(json_object_get(e, "bdev"));
	opts.name = json_string_value(json_object_get(e, "name"));
	opts.socket_path = json_string_value(json_object_get(e, "socket"));
	opts.tcp = json_string_value(json_object_get(e, "tcp"));
	opts.read_only = json_is_true(json_object_get(e, "read_only"));
	ctx = opts.name != NULL ? strdup(opts.name) : NULL;
	if (ctx == NULL || g_stopping ||
	    keel_nbd_export_start(&opts, vol_late_export_done, ctx) != 0) {
		KEEL_ERRLOG("keeld: export %s not restored", opts.name != NULL ? opts.name : "?");
		free(ctx);
	}
}

/* A bdev joined or left: plain ones are part of the state document. */
static void vol_bdevs_changed(void *ctx)
{
	(void)ctx;
	if (g_restored && !g_stopping) {
		vol_state_save(NULL, NULL);
	}
}

static void vol_restore_volumes(void *arg);

void keeld_volumes_restore(keeld_volumes_done_cb cb_fn, void *cb_arg)
{
	keeld_store_set_snapshot(KEELD_DOC_STATE, vol_snapshot, NULL);
	g_restored = false; /* no save on each bdev the restore makes: one at its end */
	keel_bdev_set_registry_listener(vol_bdevs_changed, NULL);
	keeld_bdevs_set_back_hook(vol_start_held_export);
	vol_remote_start();
	g_restore_done_fn = cb_fn;
	g_restore_done_arg = cb_arg;
	/* Plain bdevs first: exports of them start with the volumes' exports. */
	keeld_bdevs_restore(vol_restore_volumes, NULL);
}

static void vol_restore_volumes(void *arg)
{
	uint32_t i;

	(void)arg;
	g_restore_cursor = keeld_volume_first();
	/* One lane is held until every lane is started, so none can finish the restore
	 * early; it ends through vol_restore_next like the others. */
	g_restore_lanes = 1;
	for (i = 0; i < RESTORE_LANES; i++) {
		struct vol_op *op = vol_op_new(NULL, NULL, NULL);

		if (op == NULL) {
			KEEL_ERRLOG("keeld: out of memory starting restore lane %u", i);
			break;
		}
		op->restoring = true;
		g_restore_lanes++;
		/* Later, never inside the call. */
		if (vol_op_start(op, vol_restore_next) != 0) {
			vol_restore_next(op);
		}
	}
	if (--g_restore_lanes == 0) {
		vol_restore_exports();
	}
}

/* ------------------------------------------------------------------------------ */
/* Shutdown                                                                        */
/* ------------------------------------------------------------------------------ */

static void vol_shutdown_saved(void *cb_arg, int status)
{
	keeld_volumes_done_cb cb = g_shutdown_cb;

	(void)cb_arg;
	(void)status; /* the store logged it */
	g_shutdown_cb = NULL;
	cb(g_shutdown_arg);
}

static void vol_shutdown_saved_msg(void *arg)
{
	vol_shutdown_saved(arg, 0);
}

/* Every operation ended: write the state one last time, with the exports as they are
 * now, which every later save (an export stopping) keeps too. */
static void vol_shutdown_save(void)
{
	if (g_restored) {
		g_final_exports = vol_exports_state();
		if (vol_state_save(vol_shutdown_saved, NULL) == 0) {
			return;
		}
	}
	/* Only once restore ran is the registry worth writing. */
	if (keel_thread_send_msg(keel_thread_get_current(), vol_shutdown_saved_msg, NULL) != 0) {
		vol_shutdown_saved(NULL, 0);
	}
}

void vol_shutdown_kick(void)
{
	if (!g_shutdown_waiting || !vol_ops_idle()) {
		return;
	}
	g_shutdown_waiting = false;
	vol_shutdown_save();
}

static void vol_shutdown_kick_msg(void *arg)
{
	(void)arg;
	vol_shutdown_kick();
}

void keeld_volumes_shutdown(keeld_volumes_done_cb cb_fn, void *cb_arg)
{
	keel_nbd_set_export_listener(NULL, NULL);
	keel_bdev_set_registry_listener(NULL, NULL);
	keeld_bdevs_freeze();
	vol_remote_stop();
	g_stopping = true;
	g_shutdown_cb = cb_fn;
	g_shutdown_arg = cb_arg;
	g_shutdown_waiting = true;
	if (!vol_ops_idle()) {
		KEEL_NOTICELOG("keeld: waiting for volume operations in flight");
	}
	/* Later, never inside the call; or when the last operation in flight ends. */
	if (keel_thread_send_msg(keel_thread_get_current(), vol_shutdown_kick_msg, NULL) != 0) {
		vol_shutdown_kick();
	}
}

void vol_restore_fini(void)
{
	json_decref(g_loaded_exports);
	g_loaded_exports = NULL;
	json_decref(g_final_exports);
	g_final_exports = NULL;
	g_restored = false;
	g_stopping = false;
	g_shutdown_waiting = false;
	keeld_store_set_snapshot(KEELD_DOC_STATE, NULL, NULL);
}
