/*
 * The volume manager's JSON: a volume as volume_get shows it (the registry's record
 * matched with the nexus's view and the NBD exports) and the state document keeld
 * saves (docs/volumes.md). Only rendering: nothing here changes a volume.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/nexus.h"
#include "state.h"
#include "keel/bdev_nbd_client.h"
#include "bdev_persist.h"
#include "volume_internal.h"
#include "volume_json.h"
#include "keel/nbd.h"

/* ------------------------------------------------------------------------------ */
/* A volume                                                                        */
/* ------------------------------------------------------------------------------ */

static json_t *vol_str_or_null(const char *s)
{
	return s != NULL && s[0] != '\0' ? json_string(s) : json_null();
}

static json_t *vol_exports_json(const struct keeld_volume *v)
{
	json_t *arr = json_array();
	struct keel_nbd_export *e;

	for (e = keel_nbd_export_first(); e != NULL; e = keel_nbd_export_next(e)) {
		if (strcmp(keel_nbd_export_get_bdev_name(e), v->name) != 0) {
			continue;
		}
		json_array_append_new(
			arr,
			json_pack("{s:s, s:o, s:o, s:b, s:I}", "name", keel_nbd_export_get_name(e),
				  "socket", vol_str_or_null(keel_nbd_export_get_socket_path(e)),
				  "tcp", vol_str_or_null(keel_nbd_export_get_tcp(e)), "read_only",
				  keel_nbd_export_is_read_only(e), "connections",
				  (json_int_t)keel_nbd_export_get_connection_count(e)));
	}
	return arr;
}

static json_t *vol_replica_json(const struct vol_replica *r,
				const struct keel_nexus_replica_info *ri)
{
	json_t *o = json_object();
	char detail[400];

	json_object_set_new(o, "path", vol_str_or_null(r != NULL ? r->path : NULL));
	/* What serves the replica now; what was asked for (and is kept in the state file)
	 * only when a restore had to fall back from it. */
	if (r != NULL && r->path != NULL && keel_bdev_nbd_client_is_uri(r->path)) {
		/* an export on a server, whatever the volume's file backend */
		json_object_set_new(o, "backend", json_string("nbd"));
	} else {
		json_object_set_new(
			o, "backend",
			vol_str_or_null(r != NULL && r->path != NULL
						? keeld_backend_name(vol_replica_backend_in_use(r))
						: NULL));
	}
	if (r != NULL && r->path != NULL && !keel_bdev_nbd_client_is_uri(r->path) &&
	    vol_replica_backend_in_use(r) != r->backend) {
		json_object_set_new(o, "backend_requested",
				    json_string(keeld_backend_name(r->backend)));
	}
	json_object_set_new(o, "bdev",
			    vol_str_or_null(ri != NULL && ri->bdev_name[0]
						    ? ri->bdev_name
						    : (r != NULL ? r->bdev : NULL)));
	json_object_set_new(o, "uuid",
			    vol_str_or_null(ri != NULL ? ri->uuid : (r != NULL ? r->uuid : NULL)));
	detail[0] = '\0';
	if (r != NULL && r->open_error != 0) {
		snprintf(detail, sizeof(detail), "%s: %s",
			 r->open_error == -ENOENT ? "missing" : "cannot open",
			 (r->opened_by != NULL ? r->opened_by : vol_backend_of(r->backend))
				 ->open_error_text(r->open_error));
	} else if (ri != NULL) {
		snprintf(detail, sizeof(detail), "%s", ri->detail);
	} else if (r != NULL && r->bdev[0] == '\0') {
		snprintf(detail, sizeof(detail), "not opened");
	}
	if (ri != NULL) {
		json_object_set_new(o, "state",
				    json_string(keel_nexus_replica_state_name(ri->state)));
		json_object_set_new(
			o, "reason",
			json_string(r != NULL && r->open_error == -ENOENT
					    ? "missing"
					    : keel_nexus_fault_reason_name(ri->reason)));
		json_object_set_new(o, "generation", json_integer((json_int_t)ri->generation));
		json_object_set_new(o, "read_errors_repaired",
				    json_integer((json_int_t)ri->read_errors_repaired));
	} else {
		json_object_set_new(
			o, "state",
			json_string(r != NULL && r->open_error != 0 ? "offline" : "unknown"));
		json_object_set_new(o, "reason",
				    json_string(r != NULL && r->open_error == -ENOENT ? "missing"
						: r != NULL && r->open_error          ? "cant_open"
										      : "none"));
		json_object_set_new(o, "generation", json_null());
	}
	json_object_set_new(o, "detail", json_string(detail));
	return o;
}

/*
 * The volume's backend: its setting (the default of replicas added later), unless its
 * replicas all run on another one because a restore fell back (io_uring refused here):
 * then that one, and the setting as backend_requested, so nobody reads "uring" while
 * every I/O goes through aio.
 */
static void vol_backend_json(json_t *o, const struct keeld_volume *v)
{
	const struct vol_replica *r;
	enum keeld_backend used = KEELD_BACKEND_DEFAULT;
	bool fell_back = false, same = true;

	if (v->transient) {
		json_object_set_new(o, "backend", json_null());
		return;
	}
	TAILQ_FOREACH(r, &v->replicas, link) {
		enum keeld_backend b;

		if (r->path == NULL || r->opened_by == NULL) {
			continue;
		}
		b = vol_replica_backend_in_use(r);
		fell_back = fell_back || b != r->backend;
		same = same && (used == KEELD_BACKEND_DEFAULT || used == b);
		used = b;
	}
	if (!fell_back || !same || used == v->backend) {
		json_object_set_new(o, "backend", json_string(keeld_backend_name(v->backend)));
		return;
	}
	json_object_set_new(o, "backend", json_string(keeld_backend_name(used)));
	json_object_set_new(o, "backend_requested", json_string(keeld_backend_name(v->backend)));
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

json_t *keeld_volume_to_json(struct keeld_volume *v)
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
		const char *state = v->status == VOL_CREATING      ? "creating"
				    : v->status == VOL_DESTROYING  ? "destroying"
				    : v->status == VOL_UNASSEMBLED ? "unassembled"
								   : "stopped";
		const char *detail = v->status == VOL_UNASSEMBLED ? v->error
				     : v->status == VOL_READY
					     ? "the volume bdev was deleted "
					       "outside volume_destroy: destroy the volume"
					     : "";

		json_object_set_new(o, "state", json_string(state));
		json_object_set_new(o, "state_detail", json_string(detail));
		json_object_set_new(o, "size", json_integer((json_int_t)v->size));
		json_object_set_new(o, "block_size", json_null());
		json_object_set_new(o, "generation", json_null());
		json_object_set_new(o, "unclean_shutdown", json_false());
	}
	json_object_set_new(o, "persistent", json_boolean(!v->transient));
	vol_backend_json(o, v);

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
		for (i = 0;
		     info != NULL && i < info->num_replicas && ri == NULL && r->bdev[0] == '\0';
		     i++) {
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
			json_object_set_new(
				o, "bitmap",
				json_pack("{s:I,s:i,s:i,s:I}", "region_size", (json_int_t)rs,
					  "bits", (int)nbits, "bits_set", (int)set,
					  "events_cleared",
					  (json_int_t)(ec == UINT64_MAX ? -1 : (int64_t)ec)));
		} else {
			json_object_set_new(o, "bitmap", json_null());
		}
	}
	free(info);
	return o;
}

/* ------------------------------------------------------------------------------ */
/* The state document                                                              */
/* ------------------------------------------------------------------------------ */

static bool vol_is_persisted_volume(const char *name)
{
	struct keeld_volume *v = keeld_volume_find(name, NULL, 0);

	return v != NULL && !v->transient && v->status != VOL_CREATING;
}

json_t *vol_exports_state(void)
{
	json_t *arr = json_array();
	struct keeld_volume *v;
	json_t *e;
	size_t i;

	if (arr == NULL) {
		return NULL;
	}
	{
		struct keel_nbd_export *x;

		for (x = keel_nbd_export_first(); x != NULL; x = keel_nbd_export_next(x)) {
			if (!vol_is_persisted_volume(keel_nbd_export_get_bdev_name(x)) &&
			    !keeld_bdevs_is_persisted(keel_nbd_export_get_bdev_name(x))) {
				continue;
			}
			json_t *o = json_pack("{s:s, s:s, s:o, s:o, s:b}", "name",
					      keel_nbd_export_get_name(x), "bdev",
					      keel_nbd_export_get_bdev_name(x), "socket",
					      vol_str_or_null(keel_nbd_export_get_socket_path(x)),
					      "tcp", vol_str_or_null(keel_nbd_export_get_tcp(x)),
					      "read_only", keel_nbd_export_is_read_only(x));

			/* TLS as started (never "unset"), so a restart serves it the same way. */
			json_object_set_new(
				o, "tls",
				json_string(keel_nbd_tls_mode_name(keel_nbd_export_get_tls(x))));
			json_object_set_new(o, "tls_psk_file",
					    vol_str_or_null(keel_nbd_export_get_tls_psk_file(x)));
			json_object_set_new(o, "tls_certs_dir",
					    vol_str_or_null(keel_nbd_export_get_tls_certs_dir(x)));
			json_object_set_new(o, "tls_verify_client",
					    json_boolean(keel_nbd_export_get_tls_verify_client(x)));
			json_array_append_new(arr, o);
		}
	}
	/* A plain bdev not back yet keeps its exports too (daemon/bdev_persist.c). */
	json_array_foreach(keeld_bdevs_held_exports(), i, e) {
		json_array_append(arr, e);
	}
	/* An unassembled volume keeps the exports it had, for when it comes back. */
	for (v = keeld_volume_first(); v != NULL; v = keeld_volume_next(v)) {
		if (v->status == VOL_UNASSEMBLED && v->pending_exports != NULL) {
			json_array_foreach(v->pending_exports, i, e) {
				json_array_append(arr, e);
			}
		}
	}
	return arr;
}

json_t *vol_state_document(json_t *exports)
{
	json_t *doc, *vols;
	struct keeld_volume *v;
	struct vol_replica *r;

	doc = json_object();
	vols = json_array();
	if (doc == NULL || vols == NULL || exports == NULL) {
		goto out_nomem;
	}
	for (v = keeld_volume_first(); v != NULL; v = keeld_volume_next(v)) {
		json_t *reps, *o;

		if (v->transient || v->status == VOL_CREATING) {
			continue;
		}
		reps = json_array();
		TAILQ_FOREACH(r, &v->replicas, link) {
			json_array_append_new(reps,
					      json_pack("{s:s, s:o, s:s}", "path", r->path, "uuid",
							vol_str_or_null(r->uuid), "backend",
							keeld_backend_name(r->backend)));
		}
		o = json_pack("{s:s, s:o, s:I, s:s, s:o}", "name", v->name, "uuid",
			      vol_str_or_null(v->uuid), "size", (json_int_t)v->size, "backend",
			      keeld_backend_name(v->backend), "replicas", reps);
		if (o == NULL) {
			goto out_nomem;
		}
		json_array_append_new(vols, o);
	}
	json_object_set_new(doc, "version", json_integer(KEELD_STATE_VERSION));
	json_object_set_new(doc, "volumes", vols);
	json_object_set_new(doc, "exports", exports);
	json_object_set_new(doc, "bdevs", keeld_bdevs_state());
	return doc;

out_nomem:
	json_decref(doc);
	json_decref(vols);
	json_decref(exports);
	return NULL;
}
