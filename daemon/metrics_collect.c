/*
 * The metrics snapshot, gathered on the main keel thread with the calls the RPC
 * methods use (one way to read each figure): volumes as volume_get renders them
 * (keeld_volume_to_json: state, replicas, rebuild jobs), bdev counters as
 * bdev_get_iostat sums them (keel_bdev_get_io_stats: one bdev at a time, each a walk
 * over its channels by message), reactors as framework_get_reactors reads them and
 * exports as nbd_get_exports lists them. Rendering happens on the HTTP thread, so a
 * scrape costs the reactors only these reads.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "keel/bdev.h"
#include "keel/log.h"
#include "keel/nbd.h"
#include "keel/reactor.h"
#include "metrics_internal.h"
#include "volume_json.h"
#include "volume_manager.h"

/* One bdev whose counters go into an object of the snapshot under "io". */
struct metrics_io_target {
	json_t *obj; /* borrowed from the snapshot */
	char bdev[KEEL_BDEV_NAME_MAX + 1];
};

struct metrics_collect_ctx {
	json_t *snapshot;
	struct metrics_io_target *targets;
	size_t num_targets;
	size_t cap_targets;
	size_t next;
};

static void metrics_collect_step(struct metrics_collect_ctx *ctx);

static json_t *metrics_iostat_json(const struct keel_bdev_io_stats *st)
{
	json_t *io = json_object();

	for (int t = 0; io != NULL && t < KEEL_BDEV_IO_NUM_TYPES; t++) {
		json_t *hist = json_array();

		for (int b = 0; hist != NULL && b < KEEL_BDEV_LAT_BUCKETS; b++) {
			json_array_append_new(hist, json_integer((json_int_t)st->lat_hist[t][b]));
		}
		json_object_set_new(
			io, keel_bdev_io_type_name((enum keel_bdev_io_type)t),
			json_pack("{s:I,s:I,s:I,s:I,s:o*}", "ops", (json_int_t)st->ops[t], "bytes",
				  (json_int_t)st->bytes[t], "errors", (json_int_t)st->errors[t],
				  "lat_sum_ns", (json_int_t)st->lat_sum_ns[t], "lat_hist", hist));
	}
	return io;
}

static void metrics_iostat_done(struct keel_bdev *bdev, const struct keel_bdev_io_stats *stats,
				void *cb_arg, int status)
{
	struct metrics_collect_ctx *ctx = cb_arg;

	if (status == 0) {
		json_object_set_new(ctx->targets[ctx->next - 1].obj, "io",
				    metrics_iostat_json(stats));
	}
	metrics_collect_step(ctx);
}

static void metrics_collect_finish(struct metrics_collect_ctx *ctx)
{
	json_t *snapshot = ctx->snapshot;

	free(ctx->targets);
	free(ctx);
	keeld_metrics_snapshot_ready(snapshot);
}

static void metrics_collect_step(struct metrics_collect_ctx *ctx)
{
	while (ctx->next < ctx->num_targets) {
		struct metrics_io_target *t = &ctx->targets[ctx->next++];
		struct keel_bdev *bdev = keel_bdev_get_by_name(t->bdev);
		int rc;

		if (bdev == NULL) {
			continue; /* deleted since the volume was read: no counters */
		}
		rc = keel_bdev_get_io_stats(bdev, metrics_iostat_done, ctx);
		if (rc == 0) {
			return;
		}
		KEEL_WARNLOG("metrics: bdev %s: cannot read statistics: %s", t->bdev,
			     strerror(-rc));
	}
	metrics_collect_finish(ctx);
}

static int metrics_add_target(struct metrics_collect_ctx *ctx, json_t *obj, const char *bdev)
{
	struct metrics_io_target *t;

	if (bdev == NULL || bdev[0] == '\0' || strlen(bdev) > KEEL_BDEV_NAME_MAX) {
		return 0;
	}
	if (ctx->num_targets == ctx->cap_targets) {
		size_t cap = ctx->cap_targets ? ctx->cap_targets * 2 : 16;

		t = realloc(ctx->targets, cap * sizeof(*t));
		if (t == NULL) {
			return -ENOMEM;
		}
		ctx->targets = t;
		ctx->cap_targets = cap;
	}
	t = &ctx->targets[ctx->num_targets++];
	t->obj = obj;
	memcpy(t->bdev, bdev, strlen(bdev) + 1);
	return 0;
}

static int metrics_collect_volumes(struct metrics_collect_ctx *ctx, json_t *arr)
{
	struct keeld_volume *v;

	for (v = keeld_volume_first(); v != NULL; v = keeld_volume_next(v)) {
		json_t *obj = keeld_volume_to_json(v), *r;
		size_t i;

		if (obj == NULL || json_array_append_new(arr, obj) != 0) {
			return -ENOMEM;
		}
		/* The volume's bdev carries its name (docs/volumes.md). */
		if (metrics_add_target(ctx, obj, keeld_volume_get_name(v)) != 0) {
			return -ENOMEM;
		}
		json_array_foreach(json_object_get(obj, "replicas"), i, r) {
			if (metrics_add_target(
				    ctx, r, json_string_value(json_object_get(r, "bdev"))) != 0) {
				return -ENOMEM;
			}
		}
	}
	return 0;
}

static json_t *metrics_collect_exports(void)
{
	json_t *arr = json_array();
	struct keel_nbd_export *e;

	for (e = keel_nbd_export_first(); arr != NULL && e != NULL; e = keel_nbd_export_next(e)) {
		uint64_t in, out;

		keel_nbd_export_get_traffic(e, &in, &out);
		json_array_append_new(
			arr, json_pack("{s:s,s:s,s:I,s:I,s:I}", "name", keel_nbd_export_get_name(e),
				       "bdev", keel_nbd_export_get_bdev_name(e), "connections",
				       (json_int_t)keel_nbd_export_get_connection_count(e),
				       "bytes_in", (json_int_t)in, "bytes_out", (json_int_t)out));
	}
	return arr;
}

/* The daemon-wide NBD counters nbd_get_stats returns. */
static json_t *metrics_collect_nbd(void)
{
	struct keel_nbd_stats st;

	keel_nbd_get_stats(&st);
	return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I}", "connections", (json_int_t)st.connections,
			 "connections_refused", (json_int_t)st.connections_refused, "buffer_bytes",
			 (json_int_t)st.buffer_bytes, "buffer_waits", (json_int_t)st.buffer_waits,
			 "handshake_timeouts", (json_int_t)st.handshake_timeouts, "stall_timeouts",
			 (json_int_t)st.stall_timeouts);
}

static json_t *metrics_collect_reactors(void)
{
	json_t *arr = json_array();
	uint32_t i, count = keel_reactor_count();

	for (i = 0; arr != NULL && i < count; i++) {
		struct keel_reactor_stats rs;

		if (keel_reactor_get_stats(i, &rs) != 0) {
			continue;
		}
		json_array_append_new(
			arr, json_pack("{s:i,s:i,s:s,s:I,s:I,s:I}", "reactor", (int)i, "cpu",
				       (int)rs.cpu, "mode", keel_reactor_mode_name(rs.mode),
				       "busy_ns", (json_int_t)rs.busy_ns, "idle_ns",
				       (json_int_t)rs.idle_ns, "wakeups", (json_int_t)rs.wakeups));
	}
	return arr;
}

void keeld_metrics_collect(void *arg)
{
	struct metrics_collect_ctx *ctx = calloc(1, sizeof(*ctx));
	json_t *volumes = json_array();

	(void)arg;
	if (ctx == NULL || volumes == NULL) {
		goto out_nomem;
	}
	ctx->snapshot = json_pack("{s:o,s:o,s:o,s:O}", "exports", metrics_collect_exports(), "nbd",
				  metrics_collect_nbd(), "reactors", metrics_collect_reactors(),
				  "volumes", volumes);
	if (ctx->snapshot == NULL || metrics_collect_volumes(ctx, volumes) != 0) {
		json_decref(ctx->snapshot);
		goto out_nomem;
	}
	json_decref(volumes);
	metrics_collect_step(ctx);
	return;

out_nomem:
	KEEL_WARNLOG("metrics: out of memory gathering a snapshot");
	json_decref(volumes);
	if (ctx != NULL) {
		free(ctx->targets);
		free(ctx);
	}
	keeld_metrics_snapshot_ready(NULL);
}
