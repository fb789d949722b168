/*
 * bdev RPC methods: listing, statistics, create/delete of the built-in modules and
 * error injection. Names and parameters follow SPDK where the operation is the same.
 *
 * Every failure from the bdev layer is sent as its negative errno with a message that
 * says what to do, because the message is what keelctl prints to a person.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/bdev.h"
#include "keel/bdev_module.h"
#include "keel/bdev_nbd_client.h"
#include "keel/bdev_uring.h"
#include "keel/log.h"
#include "keel/reactor.h"
#include "keel/rpc.h"
#include "keel/uuid.h"
#include "rpc_compat.h"
#include "rpc_methods.h"

#define RPC_BLOCK_SIZE_MIN 512u
#define RPC_BLOCK_SIZE_MAX 65536u

/* ------------------------------------------------------------------------------ */
/* Shared checks and messages                                                      */
/* ------------------------------------------------------------------------------ */

/* Mirrors keel_bdev_register's rules so the person learns which rule they broke. */
static bool rpc_bdev_check_name(struct keel_rpc_request *req, const char *param, const char *name)
{
	size_t i, len = strlen(name);

	if (len == 0 || len > KEEL_BDEV_NAME_MAX) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "%s: a bdev name has 1 to %d characters", param,
				    KEEL_BDEV_NAME_MAX);
		return false;
	}
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)name[i];

		if (c == '/' || c <= ' ' || c == 0x7f) {
			keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
					    "%s: '%s' is not a valid bdev name: no '/', spaces "
					    "or control characters",
					    param, name);
			return false;
		}
	}
	return true;
}

static bool rpc_bdev_check_geometry(struct keel_rpc_request *req, uint64_t num_blocks,
				    uint32_t block_size)
{
	if (block_size < RPC_BLOCK_SIZE_MIN || block_size > RPC_BLOCK_SIZE_MAX ||
	    (block_size & (block_size - 1)) != 0) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "block_size: %u is not a power of two from 512 to 65536",
				    block_size);
		return false;
	}
	if (num_blocks == 0) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "num_blocks: must be greater than 0");
		return false;
	}
	if (num_blocks > UINT64_MAX / block_size) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "num_blocks: %llu blocks of %u bytes overflow 64 bits",
				    (unsigned long long)num_blocks, block_size);
		return false;
	}
	return true;
}

static void rpc_bdev_send_create_error(struct keel_rpc_request *req, const char *module,
				       const char *name, int rc)
{
	switch (rc) {
	case -EEXIST:
		keel_rpc_send_error(req, rc,
				    "bdev '%s' already exists: choose another name or "
				    "delete it first",
				    name);
		break;
	case -ENOMEM:
		keel_rpc_send_error(req, rc,
				    "not enough memory for %s bdev '%s': make it "
				    "smaller or free memory",
				    module, name);
		break;
	case -EINVAL:
		keel_rpc_send_error(req, rc,
				    "invalid parameters for %s bdev '%s': check the "
				    "name, size and block size",
				    module, name);
		break;
	default:
		keel_rpc_send_error(req, rc, "cannot create %s bdev '%s': %s", module, name,
				    strerror(-rc));
		break;
	}
}

static void rpc_bdev_send_not_found(struct keel_rpc_request *req, const char *name)
{
	keel_rpc_send_error(req, -ENODEV,
			    "bdev '%s' not found: bdev_get_bdevs (keelctl bdev "
			    "list) shows the bdevs",
			    name);
}

/* ------------------------------------------------------------------------------ */
/* bdev_get_bdevs                                                                  */
/* ------------------------------------------------------------------------------ */

static json_t *rpc_bdev_info(struct keel_bdev *bdev)
{
	json_t *obj, *types, *driver;
	const char *owner = keel_bdev_get_claim_owner(bdev);
	int t;

	types = json_object();
	for (t = 0; t < KEEL_BDEV_IO_NUM_TYPES; t++) {
		json_object_set_new(
			types, keel_bdev_io_type_name((enum keel_bdev_io_type)t),
			json_boolean(keel_bdev_io_type_supported(bdev, (enum keel_bdev_io_type)t)));
	}
	driver = json_object();
	if (bdev->fn_table != NULL && bdev->fn_table->dump_info_json != NULL) {
		bdev->fn_table->dump_info_json(bdev->ctxt, driver);
	}
	obj = json_pack("{s:s,s:[],s:s,s:s,s:i,s:I,s:s,s:i,s:i,s:i,s:b,s:b,s:b}", "name",
			keel_bdev_get_name(bdev), "aliases", "product_name",
			bdev->product_name != NULL ? bdev->product_name : "", "module",
			keel_bdev_get_module_name(bdev), "block_size",
			(int)keel_bdev_get_block_size(bdev), "num_blocks",
			(json_int_t)keel_bdev_get_num_blocks(bdev), "uuid",
			keel_bdev_get_uuid_str(bdev), "required_alignment",
			(int)keel_bdev_get_buf_align(bdev), "optimal_io_boundary",
			(int)keel_bdev_get_optimal_io_boundary(bdev), "max_transfer_blocks",
			(int)keel_bdev_get_max_transfer_blocks(bdev), "write_cache",
			keel_bdev_has_write_cache(bdev), "multi_conn_safe",
			keel_bdev_is_multi_conn_safe(bdev), "claimed", owner != NULL);
	if (obj == NULL) {
		json_decref(types);
		json_decref(driver);
		return NULL;
	}
	if (owner != NULL) {
		json_object_set_new(obj, "claim_owner", json_string(owner));
		/* SPDK's name for the one kind of claim keel has: one writer, no other. */
		json_object_set_new(obj, "claim_type", json_string("exclusive_write"));
	}
	/* SPDK's QoS limits (0: unlimited; keel has no QoS) and zoned (never). */
	json_object_set_new(obj, "assigned_rate_limits",
			    json_pack("{s:i,s:i,s:i,s:i}", "rw_ios_per_sec", 0, "rw_mbytes_per_sec",
				      0, "r_mbytes_per_sec", 0, "w_mbytes_per_sec", 0));
	json_object_set_new(obj, "zoned", json_false());
	json_object_set_new(obj, "supported_io_types", types);
	json_object_set_new(obj, "driver_specific", driver);
	return obj;
}

struct rpc_name_param {
	const char *name;
};

static const struct keel_rpc_param g_required_name[] = {
	{"name", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_name_param, name), false},
};

/*
 * SPDK's timeout: how long bdev_get_bdevs {name} waits for the bdev to appear. Looked
 * for every RPC_BDEV_WAIT_POLL_US by a timed poller that exists only while a request
 * waits; a client holds at most its pending-request limit of them.
 */
#define RPC_BDEV_WAIT_POLL_US 10000u
#define RPC_BDEV_WAIT_MAX_MS 3600000u

struct rpc_bdev_wait_ctx {
	struct keel_rpc_request *req;
	struct keel_poller *poller;
	uint64_t deadline_ns;
	char name[KEEL_BDEV_NAME_MAX + 1];
};

/* The client went away (or keeld stops): the reply is dropped, the wait ends. */
static void rpc_bdev_wait_abandoned(void *arg)
{
	struct rpc_bdev_wait_ctx *ctx = arg;

	keel_rpc_send_error(ctx->req, -ECANCELED, "the client went away");
	keel_poller_unregister(&ctx->poller);
	free(ctx);
}

static int rpc_bdev_wait_poll(void *arg)
{
	struct rpc_bdev_wait_ctx *ctx = arg;
	struct keel_bdev *bdev = keel_bdev_get_by_name(ctx->name);

	if (bdev == NULL && keel_now_ns() < ctx->deadline_ns) {
		return KEEL_POLLER_IDLE;
	}
	if (bdev != NULL) {
		json_t *arr = json_array();

		json_array_append_new(arr, rpc_bdev_info(bdev));
		keel_rpc_send_result(ctx->req, arr);
	} else {
		rpc_bdev_send_not_found(ctx->req, ctx->name);
	}
	keel_poller_unregister(&ctx->poller);
	free(ctx);
	return KEEL_POLLER_BUSY;
}

struct rpc_get_bdevs_params {
	const char *name;
	uint64_t timeout_ms;
};

static void rpc_bdev_get_bdevs(struct keel_rpc_request *req, json_t *params)
{
	/* SPDK: lib/bdev/bdev_rpc.c; rpc.py sends timeout only with -t (milliseconds). */
	static const struct keel_rpc_param table[] = {
		{"name", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_get_bdevs_params, name), true},
		{"timeout", KEEL_RPC_PARAM_UINT64,
		 offsetof(struct rpc_get_bdevs_params, timeout_ms), true},
	};
	struct rpc_get_bdevs_params p = {NULL, 0};
	struct rpc_bdev_wait_ctx *ctx;
	struct keel_bdev *bdev;
	json_t *arr;

	if (!keel_rpc_decode_params(req, params, table, 2, &p)) {
		return;
	}
	if (p.timeout_ms > RPC_BDEV_WAIT_MAX_MS) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "timeout: at most %u ms (an hour)", RPC_BDEV_WAIT_MAX_MS);
		return;
	}
	if (p.name != NULL && p.timeout_ms > 0 && keel_bdev_get_by_name(p.name) == NULL) {
		if (!rpc_bdev_check_name(req, "name", p.name)) {
			return;
		}
		ctx = rpc_ctx_calloc(req, sizeof(*ctx));
		if (ctx == NULL) {
			return;
		}
		ctx->req = req;
		ctx->deadline_ns = keel_now_ns() + p.timeout_ms * 1000000u;
		snprintf(ctx->name, sizeof(ctx->name), "%s", p.name);
		ctx->poller = keel_poller_register(rpc_bdev_wait_poll, ctx, RPC_BDEV_WAIT_POLL_US,
						   "bdev_get_bdevs_wait");
		if (ctx->poller == NULL) {
			free(ctx);
			keel_rpc_send_error(req, -ENOMEM, "out of memory");
			return;
		}
		if (keel_rpc_request_on_abandon(req, rpc_bdev_wait_abandoned, ctx) != 0) {
			rpc_bdev_wait_abandoned(ctx);
		}
		return;
	}
	arr = json_array();
	if (p.name != NULL) {
		bdev = keel_bdev_get_by_name(p.name);
		if (bdev == NULL) {
			json_decref(arr);
			rpc_bdev_send_not_found(req, p.name);
			return;
		}
		json_array_append_new(arr, rpc_bdev_info(bdev));
	} else {
		for (bdev = keel_bdev_first(); bdev != NULL; bdev = keel_bdev_next(bdev)) {
			json_array_append_new(arr, rpc_bdev_info(bdev));
		}
	}
	keel_rpc_send_result(req, arr);
}

/* ------------------------------------------------------------------------------ */
/* bdev_get_iostat: one bdev at a time, each summed over its channels              */
/* ------------------------------------------------------------------------------ */

struct rpc_iostat_ctx {
	struct keel_rpc_request *req;
	json_t *names; /* bdev names still to visit */
	size_t next;
	json_t *result;
};

static void rpc_iostat_step(struct rpc_iostat_ctx *ctx);

/*
 * SPDK's flat counters for what keel counts: bytes and ops per kind, latency sums and
 * maxima in ticks (tick_rate is 1e9: nanoseconds). keel keeps no minimum latency and
 * does no copy I/O (its copy counters stay 0).
 */
static void rpc_iostat_spdk_fields(json_t *obj, const struct keel_bdev_io_stats *st)
{
	static const struct {
		enum keel_bdev_io_type type;
		const char *bytes;
		const char *ops;
		const char *lat;
		const char *max_lat;
	} kinds[] = {
		{KEEL_BDEV_IO_READ, "bytes_read", "num_read_ops", "read_latency_ticks",
		 "max_read_latency_ticks"},
		{KEEL_BDEV_IO_WRITE, "bytes_written", "num_write_ops", "write_latency_ticks",
		 "max_write_latency_ticks"},
		{KEEL_BDEV_IO_UNMAP, "bytes_unmapped", "num_unmap_ops", "unmap_latency_ticks",
		 "max_unmap_latency_ticks"},
	};
	size_t i;

	for (i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		json_object_set_new(obj, kinds[i].bytes,
				    json_integer((json_int_t)st->bytes[kinds[i].type]));
		json_object_set_new(obj, kinds[i].ops,
				    json_integer((json_int_t)st->ops[kinds[i].type]));
		json_object_set_new(obj, kinds[i].lat,
				    json_integer((json_int_t)st->lat_sum_ns[kinds[i].type]));
		json_object_set_new(obj, kinds[i].max_lat,
				    json_integer((json_int_t)st->lat_max_ns[kinds[i].type]));
	}
	json_object_set_new(obj, "bytes_copied", json_integer(0));
	json_object_set_new(obj, "num_copy_ops", json_integer(0));
}

static void rpc_iostat_done(struct keel_bdev *bdev, const struct keel_bdev_io_stats *stats,
			    void *cb_arg, int status)
{
	struct rpc_iostat_ctx *ctx = cb_arg;
	json_t *obj, *io, *hist;
	int t;

	if (status == 0) {
		io = json_object();
		for (t = 0; t < KEEL_BDEV_IO_NUM_TYPES; t++) {
			json_object_set_new(
				io, keel_bdev_io_type_name((enum keel_bdev_io_type)t),
				json_pack("{s:I,s:I,s:I,s:I,s:I}", "ops", (json_int_t)stats->ops[t],
					  "bytes", (json_int_t)stats->bytes[t], "errors",
					  (json_int_t)stats->errors[t], "lat_sum_ns",
					  (json_int_t)stats->lat_sum_ns[t], "lat_max_ns",
					  (json_int_t)stats->lat_max_ns[t]));
		}
		hist = json_array();
		for (t = 0; t < KEEL_BDEV_LAT_BUCKETS; t++) {
			json_int_t sum = 0;

			for (int op = 0; op < KEEL_BDEV_IO_NUM_TYPES; op++) {
				sum += (json_int_t)stats->lat_hist[op][t];
			}
			json_array_append_new(hist, json_integer(sum));
		}
		obj = json_pack("{s:s,s:o,s:o}", "name", keel_bdev_get_name(bdev), "io", io,
				"lat_hist_log2_us", hist);
		if (obj != NULL) {
			rpc_iostat_spdk_fields(obj, stats);
			json_array_append_new(ctx->result, obj);
		}
	}
	rpc_iostat_step(ctx);
}

static void rpc_iostat_step(struct rpc_iostat_ctx *ctx)
{
	while (ctx->next < json_array_size(ctx->names)) {
		const char *name = json_string_value(json_array_get(ctx->names, ctx->next++));
		struct keel_bdev *bdev = keel_bdev_get_by_name(name);
		int rc;

		if (bdev == NULL) {
			continue; /* deleted while we walked */
		}
		rc = keel_bdev_get_io_stats(bdev, rpc_iostat_done, ctx);
		if (rc == 0) {
			return;
		}
		KEEL_WARNLOG("rpc: bdev %s: cannot read statistics: %s", name, strerror(-rc));
	}
	keel_rpc_send_result(ctx->req,
			     json_pack("{s:I,s:I,s:o}", "tick_rate", (json_int_t)1000000000,
				       "ticks", (json_int_t)keel_now_ns(), "bdevs", ctx->result));
	json_decref(ctx->names);
	free(ctx);
}

struct rpc_iostat_params {
	const char *name;
	json_t *names;
};

/* \return whether \p names is an array of names of existing bdevs; replied if not. */
static bool rpc_iostat_check_names(struct keel_rpc_request *req, json_t *names)
{
	json_t *v;
	size_t i;

	if (!json_is_array(names)) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "names: expected an array of bdev names");
		return false;
	}
	json_array_foreach(names, i, v) {
		if (!json_is_string(v)) {
			keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
					    "names: element %zu is not a string", i);
			return false;
		}
		if (keel_bdev_get_by_name(json_string_value(v)) == NULL) {
			rpc_bdev_send_not_found(req, json_string_value(v));
			return false;
		}
	}
	return true;
}

static void rpc_bdev_get_iostat(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"name", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_iostat_params, name), true},
		{"names", KEEL_RPC_PARAM_JSON, offsetof(struct rpc_iostat_params, names), true},
	};
	/* SPDK: lib/bdev/bdev_rpc.c; rpc.py always sends per_channel (false unless -c). */
	static const struct rpc_compat_param spdk[] = {
		{"per_channel", KEEL_RPC_PARAM_BOOL, RPC_COMPAT_DEFAULT_ONLY, "false",
		 "keel reports each bdev's statistics summed over its channels", NULL},
		{"reset_mode", KEEL_RPC_PARAM_STRING, RPC_COMPAT_DEFAULT_ONLY, "\"none\"",
		 "keel does not reset I/O statistics", NULL},
	};
	struct rpc_iostat_params p = {NULL, NULL};
	struct rpc_iostat_ctx *ctx;
	struct keel_bdev *bdev;

	if (!rpc_compat_decode(req, params, table, 2, &p, spdk, 2)) {
		return;
	}
	if (p.names != NULL && json_is_null(p.names)) {
		p.names = NULL;
	}
	if (p.name != NULL && p.names != NULL) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "names: give name or names, not both");
		return;
	}
	if (p.names != NULL && !rpc_iostat_check_names(req, p.names)) {
		return;
	}
	if (p.name != NULL && keel_bdev_get_by_name(p.name) == NULL) {
		rpc_bdev_send_not_found(req, p.name);
		return;
	}
	ctx = rpc_ctx_calloc(req, sizeof(*ctx));
	if (ctx == NULL) {
		return;
	}
	ctx->req = req;
	ctx->names = p.names != NULL ? json_copy(p.names) : json_array();
	ctx->result = json_array();
	if (p.name != NULL) {
		json_array_append_new(ctx->names, json_string(p.name));
	} else if (p.names == NULL) {
		for (bdev = keel_bdev_first(); bdev != NULL; bdev = keel_bdev_next(bdev)) {
			json_array_append_new(ctx->names, json_string(keel_bdev_get_name(bdev)));
		}
	}
	rpc_iostat_step(ctx);
}

/* ------------------------------------------------------------------------------ */
/* Deletes (asynchronous: the bdev goes once its descriptors are closed)           */
/* ------------------------------------------------------------------------------ */

struct rpc_delete_ctx {
	struct keel_rpc_request *req;
	char name[KEEL_BDEV_NAME_MAX + 1];
};

static void rpc_bdev_delete_done(void *cb_arg, int status)
{
	struct rpc_delete_ctx *ctx = cb_arg;

	if (status != 0) {
		keel_rpc_send_error(ctx->req, status, "deleting bdev '%s' failed: %s", ctx->name,
				    strerror(-status));
	} else {
		KEEL_NOTICELOG("rpc: bdev %s deleted", ctx->name);
		keel_rpc_send_result(ctx->req, NULL);
	}
	free(ctx);
}

typedef int (*rpc_delete_fn)(const char *name, keel_bdev_done_cb cb_fn, void *cb_arg);

static void rpc_bdev_delete_with(struct keel_rpc_request *req, const char *module, rpc_delete_fn fn,
				 const char *name)
{
	struct keel_bdev *bdev = keel_bdev_get_by_name(name);
	struct rpc_delete_ctx *ctx;
	int rc;

	if (bdev == NULL) {
		rpc_bdev_send_not_found(req, name);
		return;
	}
	/* An aio create may hand a file that refuses O_DIRECT to io_uring: still "aio". */
	if (strcmp(keel_bdev_get_module_name(bdev), module) != 0 &&
	    !(strcmp(module, "aio") == 0 && keel_bdev_aio_created(bdev))) {
		keel_rpc_send_error(req, -ENODEV,
				    "bdev '%s' is a %s bdev, not %s: use "
				    "bdev_delete or bdev_%s_delete",
				    name, keel_bdev_get_module_name(bdev), module,
				    keel_bdev_get_module_name(bdev));
		return;
	}
	if (keel_bdev_get_claim_owner(bdev) != NULL) {
		keel_rpc_send_error(req, -EBUSY,
				    "bdev '%s' is claimed by module '%s': delete the "
				    "bdev built on it first",
				    name, keel_bdev_get_claim_owner(bdev));
		return;
	}
	ctx = rpc_ctx_calloc(req, sizeof(*ctx));
	if (ctx == NULL) {
		return;
	}
	ctx->req = req;
	snprintf(ctx->name, sizeof(ctx->name), "%s", name);
	rc = fn(name, rpc_bdev_delete_done, ctx);
	if (rc != 0) {
		free(ctx);
		if (rc == -ENODEV) {
			rpc_bdev_send_not_found(req, name);
		} else {
			keel_rpc_send_error(req, rc, "cannot delete bdev '%s': %s", name,
					    strerror(-rc));
		}
	}
}

#define RPC_DELETE_METHOD(module)                                                            \
	static void rpc_bdev_##module##_delete(struct keel_rpc_request *req, json_t *params) \
	{                                                                                    \
		struct rpc_name_param p = {NULL};                                            \
		if (!keel_rpc_decode_params(req, params, g_required_name, 1, &p)) {          \
			return;                                                              \
		}                                                                            \
		rpc_bdev_delete_with(req, #module, keel_bdev_##module##_delete, p.name);     \
	}

RPC_DELETE_METHOD(malloc)
RPC_DELETE_METHOD(null)
RPC_DELETE_METHOD(aio)
RPC_DELETE_METHOD(uring)
RPC_DELETE_METHOD(error)

static const struct {
	const char *module;
	rpc_delete_fn fn;
} g_deleters[] = {
	{"malloc", keel_bdev_malloc_delete}, {"null", keel_bdev_null_delete},
	{"aio", keel_bdev_aio_delete},       {"uring", keel_bdev_uring_delete},
	{"error", keel_bdev_error_delete},   {"nbd_client", keel_bdev_nbd_client_delete},
};

/* keelctl's "bdev delete NAME" does not know the module; this finds it. */
static void rpc_bdev_delete(struct keel_rpc_request *req, json_t *params)
{
	struct rpc_name_param p = {NULL};
	struct keel_bdev *bdev;
	const char *module;
	size_t i;

	if (!keel_rpc_decode_params(req, params, g_required_name, 1, &p)) {
		return;
	}
	bdev = keel_bdev_get_by_name(p.name);
	if (bdev == NULL) {
		rpc_bdev_send_not_found(req, p.name);
		return;
	}
	module = keel_bdev_get_module_name(bdev);
	for (i = 0; i < sizeof(g_deleters) / sizeof(g_deleters[0]); i++) {
		if (strcmp(g_deleters[i].module, module) == 0) {
			rpc_bdev_delete_with(req, module, g_deleters[i].fn, p.name);
			return;
		}
	}
	keel_rpc_send_error(req, -ENOTSUP,
			    "bdev '%s' is a %s bdev: delete it with that "
			    "module's method",
			    p.name, module);
}

/* ------------------------------------------------------------------------------ */
/* Creates                                                                         */
/* ------------------------------------------------------------------------------ */

struct rpc_geom_params {
	const char *name;
	uint64_t num_blocks;
	uint32_t block_size;
	const char *uuid;
};

/* name is optional for malloc (SPDK names it MallocN), required for null. */
static const struct keel_rpc_param g_geom_table[] = {
	{"name", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_geom_params, name), true},
	{"num_blocks", KEEL_RPC_PARAM_UINT64, offsetof(struct rpc_geom_params, num_blocks), false},
	{"block_size", KEEL_RPC_PARAM_UINT32, offsetof(struct rpc_geom_params, block_size), true},
	{"uuid", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_geom_params, uuid), true},
};

/* Why keel takes some SPDK parameters of a RAM or null disk only at their defaults. */
#define RPC_NO_METADATA "metadata is not supported by keel"
#define RPC_NO_DIF "protection information (DIF/DIX) is not supported by keel"
/* physical_block_size: SPDK's 0 means "the block size". */
#define RPC_PHYSICAL_BLOCK_SIZE                                                             \
	{                                                                                   \
		"physical_block_size", KEEL_RPC_PARAM_UINT32, RPC_COMPAT_DEFAULT_ONLY, "0", \
			"keel bdevs have a single block size", "block_size"                 \
	}

/*
 * SPDK: module/bdev/malloc/bdev_malloc_rpc.c. rpc.py always sends md_interleave and
 * dif_is_head_of_md (false unless -i / -d), the others only when given.
 */
static const struct rpc_compat_param g_malloc_compat[] = {
	RPC_PHYSICAL_BLOCK_SIZE,
	RPC_ZERO_ONLY("optimal_io_boundary", KEEL_RPC_PARAM_UINT32,
		      "keel's malloc bdev does not split I/O at a boundary"),
	RPC_ZERO_ONLY("md_size", KEEL_RPC_PARAM_UINT32, RPC_NO_METADATA),
	RPC_FALSE_ONLY("md_interleave", RPC_NO_METADATA),
	RPC_ZERO_ONLY("dif_type", KEEL_RPC_PARAM_INT64, RPC_NO_DIF),
	RPC_FALSE_ONLY("dif_is_head_of_md", RPC_NO_DIF),
	RPC_ZERO_ONLY("dif_pi_format", KEEL_RPC_PARAM_UINT32, RPC_NO_DIF),
};

/*
 * SPDK: module/bdev/null/bdev_null_rpc.c. rpc.py always sends dif_is_head_of_md (false
 * unless -d), the others only when given.
 */
#define RPC_NO_HINTS "keel bdevs do not advertise preferred write or unmap geometry"
static const struct rpc_compat_param g_null_compat[] = {
	RPC_PHYSICAL_BLOCK_SIZE,
	RPC_ZERO_ONLY("md_size", KEEL_RPC_PARAM_UINT32, RPC_NO_METADATA),
	RPC_ZERO_ONLY("dif_type", KEEL_RPC_PARAM_INT64, RPC_NO_DIF),
	RPC_FALSE_ONLY("dif_is_head_of_md", RPC_NO_DIF),
	RPC_ZERO_ONLY("dif_pi_format", KEEL_RPC_PARAM_UINT32, RPC_NO_DIF),
	RPC_ZERO_ONLY("preferred_write_alignment", KEEL_RPC_PARAM_UINT32, RPC_NO_HINTS),
	RPC_ZERO_ONLY("preferred_write_granularity", KEEL_RPC_PARAM_UINT32, RPC_NO_HINTS),
	RPC_ZERO_ONLY("optimal_write_size", KEEL_RPC_PARAM_UINT32, RPC_NO_HINTS),
	RPC_ZERO_ONLY("preferred_unmap_alignment", KEEL_RPC_PARAM_UINT32, RPC_NO_HINTS),
	RPC_ZERO_ONLY("preferred_unmap_granularity", KEEL_RPC_PARAM_UINT32, RPC_NO_HINTS),
};

typedef int (*rpc_create_fn)(const char *name, const uint8_t *uuid, uint64_t num_blocks,
			     uint32_t block_size, struct keel_bdev **bdev);

struct rpc_geom_module {
	const char *module;
	rpc_create_fn fn;
	const struct rpc_compat_param *compat;
	size_t compat_count;
	const char
		*default_prefix; /* name given when none is: "Malloc" -> Malloc0; NULL: required */
};

/* The first free <prefix>N, as SPDK names a malloc bdev created without a name. */
static void rpc_bdev_default_name(const char *prefix, char *buf, size_t size)
{
	unsigned i;

	for (i = 0;; i++) {
		snprintf(buf, size, "%s%u", prefix, i);
		if (keel_bdev_get_by_name(buf) == NULL) {
			return;
		}
	}
}

static void rpc_bdev_create_geom(struct keel_rpc_request *req, json_t *params,
				 const struct rpc_geom_module *m)
{
	struct rpc_geom_params p = {.name = NULL, .num_blocks = 0, .block_size = 512, .uuid = NULL};
	const char *module = m->module;
	char name[32];
	uint8_t uuid[KEEL_UUID_LEN];
	struct keel_bdev *bdev = NULL;
	int rc;

	if (!rpc_compat_decode(req, params, g_geom_table, 4, &p, m->compat, m->compat_count)) {
		return;
	}
	if (p.name == NULL && m->default_prefix == NULL) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS, "missing parameter 'name'");
		return;
	}
	if (p.name == NULL) {
		rpc_bdev_default_name(m->default_prefix, name, sizeof(name));
		p.name = name;
	}
	if (!rpc_bdev_check_name(req, "name", p.name) ||
	    !rpc_bdev_check_geometry(req, p.num_blocks, p.block_size)) {
		return;
	}
	if (p.uuid != NULL && keel_uuid_parse(p.uuid, uuid) != 0) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "uuid: '%.64s' is not a UUID "
				    "(xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)",
				    p.uuid);
		return;
	}
	if (p.uuid != NULL && keel_bdev_get_by_uuid(p.uuid) != NULL) {
		keel_rpc_send_error(req, -EEXIST, "uuid: a bdev with UUID %s already exists",
				    p.uuid);
		return;
	}
	if (keel_bdev_get_by_name(p.name) != NULL) {
		rpc_bdev_send_create_error(req, module, p.name, -EEXIST);
		return;
	}
	rc = m->fn(p.name, p.uuid != NULL ? uuid : NULL, p.num_blocks, p.block_size, &bdev);
	if (rc != 0) {
		rpc_bdev_send_create_error(req, module, p.name, rc);
		return;
	}
	KEEL_NOTICELOG("rpc: %s bdev %s created (%llu blocks of %u bytes)", module, p.name,
		       (unsigned long long)p.num_blocks, p.block_size);
	keel_rpc_send_result(req, json_string(p.name));
}

static void rpc_bdev_malloc_create(struct keel_rpc_request *req, json_t *params)
{
	static const struct rpc_geom_module m = {
		"malloc", keel_bdev_malloc_create, g_malloc_compat,
		sizeof(g_malloc_compat) / sizeof(g_malloc_compat[0]), "Malloc"};

	rpc_bdev_create_geom(req, params, &m);
}

static void rpc_bdev_null_create(struct keel_rpc_request *req, json_t *params)
{
	static const struct rpc_geom_module m = {"null", keel_bdev_null_create, g_null_compat,
						 sizeof(g_null_compat) / sizeof(g_null_compat[0]),
						 NULL};

	rpc_bdev_create_geom(req, params, &m);
}

/* aio and uring: a bdev over a file or block device, created on the blocking pool. */
typedef int (*rpc_file_create_fn)(const char *name, const char *filename, uint32_t block_size,
				  keel_bdev_create_cb cb_fn, void *cb_arg);

struct rpc_file_params {
	const char *name;
	const char *filename;
	uint32_t block_size;
};

struct rpc_file_ctx {
	struct keel_rpc_request *req;
	const char *module;
	char *name;
	char *filename;
};

static void rpc_bdev_file_created(void *cb_arg, int status, struct keel_bdev *bdev)
{
	struct rpc_file_ctx *ctx = cb_arg;
	struct keel_rpc_request *req = ctx->req;
	char why[200];

	switch (status) {
	case 0:
		KEEL_NOTICELOG("rpc: %s bdev %s created on %s", ctx->module, ctx->name,
			       ctx->filename);
		keel_rpc_send_result(req, json_string(ctx->name));
		break;
	case -ENOENT:
		keel_rpc_send_error(req, status,
				    "file '%s' does not exist: create it first "
				    "(e.g. truncate -s 1G %s) or fix the path",
				    ctx->filename, ctx->filename);
		break;
	case -EACCES:
	case -EPERM:
		keel_rpc_send_error(req, status,
				    "keeld may not open '%s': check its "
				    "permissions",
				    ctx->filename);
		break;
	case -EINVAL:
		keel_rpc_send_error(req, status,
				    "cannot use '%s' for %s bdev '%s': its size "
				    "must be a non-zero multiple of the block size, and the block "
				    "size a power of two >= 512 that the device supports",
				    ctx->filename, ctx->module, ctx->name);
		break;
	case -EISDIR:
		keel_rpc_send_error(req, status,
				    "'%s' is a directory: give a file or a block "
				    "device",
				    ctx->filename);
		break;
	case -ENOTSUP:
		/* Only uring says this: the kernel or a filter refused io_uring. */
		keel_bdev_uring_available(why, sizeof(why));
		keel_rpc_send_error(req, status,
				    "io_uring is unavailable to keeld: %s; create "
				    "an aio bdev instead (bdev_aio_create, keelctl bdev create "
				    "aio)",
				    why[0] != '\0' ? why : "see keeld's log");
		break;
	default:
		rpc_bdev_send_create_error(req, ctx->module, ctx->name, status);
		break;
	}
	free(ctx->name);
	free(ctx->filename);
	free(ctx);
}

static void rpc_bdev_file_create(struct keel_rpc_request *req, json_t *params, const char *module,
				 rpc_file_create_fn fn, const struct rpc_compat_param *compat,
				 size_t compat_count)
{
	static const struct keel_rpc_param table[] = {
		{"name", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_file_params, name), false},
		{"filename", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_file_params, filename),
		 false},
		{"block_size", KEEL_RPC_PARAM_UINT32, offsetof(struct rpc_file_params, block_size),
		 true},
	};
	struct rpc_file_params p = {.name = NULL, .filename = NULL, .block_size = 0};
	struct rpc_file_ctx *ctx;
	int rc;

	if (!rpc_compat_decode(req, params, table, 3, &p, compat, compat_count)) {
		return;
	}
	if (!rpc_bdev_check_name(req, "name", p.name)) {
		return;
	}
	if (p.filename[0] != '/') {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "filename: '%s' is not an "
				    "absolute path (keeld does not share your working "
				    "directory)",
				    p.filename);
		return;
	}
	if (p.block_size != 0 &&
	    (p.block_size < RPC_BLOCK_SIZE_MIN || p.block_size > RPC_BLOCK_SIZE_MAX ||
	     (p.block_size & (p.block_size - 1)) != 0)) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "block_size: %u is not a "
				    "power of two from 512 to 65536 (or 0 for automatic)",
				    p.block_size);
		return;
	}
	if (keel_bdev_get_by_name(p.name) != NULL) {
		rpc_bdev_send_create_error(req, module, p.name, -EEXIST);
		return;
	}
	ctx = calloc(1, sizeof(*ctx));
	if (ctx == NULL) {
		goto out_nomem;
	}
	ctx->req = req;
	ctx->module = module;
	ctx->name = strdup(p.name);
	ctx->filename = strdup(p.filename);
	if (ctx->name == NULL || ctx->filename == NULL) {
		goto out_free_ctx;
	}
	rc = fn(p.name, p.filename, p.block_size, rpc_bdev_file_created, ctx);
	if (rc != 0) {
		/* Same messages as an asynchronous failure. */
		rpc_bdev_file_created(ctx, rc, NULL);
	}
	return;

out_free_ctx:
	free(ctx->name);
	free(ctx->filename);
	free(ctx);
out_nomem:
	keel_rpc_send_error(req, -ENOMEM, "out of memory");
}

#define RPC_NO_FILE_UUID "keel gives a file bdev a random UUID of its own"

static void rpc_bdev_aio_create(struct keel_rpc_request *req, json_t *params)
{
	/*
	 * SPDK: module/bdev/aio/bdev_aio_rpc.c. rpc.py always sends readonly and
	 * fallocate (false unless -r / --fallocate), uuid only with -u.
	 */
	static const struct rpc_compat_param spdk[] = {
		{"readonly", KEEL_RPC_PARAM_BOOL, RPC_COMPAT_DEFAULT_ONLY, "false",
		 "keel's aio bdev opens its file for writing: export it read-only instead "
		 "(nbd_start_export read_only)",
		 NULL},
		{"fallocate", KEEL_RPC_PARAM_BOOL, RPC_COMPAT_ANY, "false",
		 "keel's aio bdev always unmaps and zeroes with fallocate, off the reactor", NULL},
		{"uuid", KEEL_RPC_PARAM_STRING, RPC_COMPAT_DEFAULT_ONLY, NULL, RPC_NO_FILE_UUID,
		 NULL},
	};

	rpc_bdev_file_create(req, params, "aio", keel_bdev_aio_create, spdk, 3);
}

static void rpc_bdev_uring_create(struct keel_rpc_request *req, json_t *params)
{
	/* SPDK: module/bdev/uring/bdev_uring_rpc.c; rpc.py sends uuid only with -u. */
	static const struct rpc_compat_param spdk[] = {
		{"uuid", KEEL_RPC_PARAM_STRING, RPC_COMPAT_DEFAULT_ONLY, NULL, RPC_NO_FILE_UUID,
		 NULL},
	};

	rpc_bdev_file_create(req, params, "uring", keel_bdev_uring_create, spdk, 1);
}

/* ------------------------------------------------------------------------------ */
/* Error bdev                                                                      */
/* ------------------------------------------------------------------------------ */

struct rpc_error_create_params {
	const char *base_name;
	const char *name;
};

static void rpc_bdev_error_create(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"base_name", KEEL_RPC_PARAM_STRING,
		 offsetof(struct rpc_error_create_params, base_name), false},
		{"name", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_error_create_params, name),
		 true},
	};
	/* SPDK: module/bdev/error/vbdev_error_rpc.c; rpc.py sends uuid only with -u. */
	static const struct rpc_compat_param spdk[] = {
		{"uuid", KEEL_RPC_PARAM_STRING, RPC_COMPAT_DEFAULT_ONLY, NULL,
		 "keel gives an error bdev a random UUID of its own", NULL},
	};
	struct rpc_error_create_params p = {NULL, NULL};
	char name[KEEL_BDEV_NAME_MAX + 8];
	struct keel_bdev *bdev = NULL, *base;
	int rc;

	if (!rpc_compat_decode(req, params, table, 2, &p, spdk, 1)) {
		return;
	}
	/* SPDK names an error bdev EE_<base>; keep that default. */
	snprintf(name, sizeof(name), "%s", p.name != NULL ? p.name : "");
	if (p.name == NULL) {
		snprintf(name, sizeof(name), "EE_%.*s", KEEL_BDEV_NAME_MAX, p.base_name);
	}
	if (!rpc_bdev_check_name(req, p.name != NULL ? "name" : "base_name", name)) {
		return;
	}
	base = keel_bdev_get_by_name(p.base_name);
	if (base == NULL) {
		keel_rpc_send_error(req, -ENODEV, "base bdev '%s' not found: create it first",
				    p.base_name);
		return;
	}
	if (keel_bdev_get_claim_owner(base) != NULL) {
		keel_rpc_send_error(req, -EPERM, "base bdev '%s' is already claimed by %s",
				    p.base_name, keel_bdev_get_claim_owner(base));
		return;
	}
	if (keel_bdev_get_by_name(name) != NULL) {
		rpc_bdev_send_create_error(req, "error", name, -EEXIST);
		return;
	}
	rc = keel_bdev_error_create(name, p.base_name, &bdev);
	if (rc != 0) {
		rpc_bdev_send_create_error(req, "error", name, rc);
		return;
	}
	KEEL_NOTICELOG("rpc: error bdev %s created on %s", name, p.base_name);
	keel_rpc_send_result(req, json_string(name));
}

struct rpc_inject_params {
	const char *name;
	const char *io_type;
	const char *error_type;
	uint32_t num;
	uint32_t every_nth;
	int64_t err;
	uint32_t delay_us;
};

static void rpc_bdev_error_inject_error(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"name", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_inject_params, name), false},
		{"io_type", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_inject_params, io_type),
		 true},
		{"error_type", KEEL_RPC_PARAM_STRING,
		 offsetof(struct rpc_inject_params, error_type), true},
		{"num", KEEL_RPC_PARAM_UINT32, offsetof(struct rpc_inject_params, num), true},
		{"every_nth", KEEL_RPC_PARAM_UINT32, offsetof(struct rpc_inject_params, every_nth),
		 true},
		{"errno", KEEL_RPC_PARAM_INT64, offsetof(struct rpc_inject_params, err), true},
		{"delay_us", KEEL_RPC_PARAM_UINT32, offsetof(struct rpc_inject_params, delay_us),
		 true},
	};
	/*
	 * SPDK: module/bdev/error/vbdev_error_rpc.c. rpc.py sends num, queue_depth,
	 * corrupt_offset and corrupt_value only when given (-n, -q, -o, -v).
	 */
	static const struct rpc_compat_param spdk[] = {
		RPC_ZERO_ONLY("queue_depth", KEEL_RPC_PARAM_UINT64,
			      "keel's error bdev does not trigger at a queue depth"),
		RPC_ZERO_ONLY("corrupt_offset", KEEL_RPC_PARAM_UINT64,
			      "keel's error bdev does not corrupt data"),
		RPC_ZERO_ONLY("corrupt_value", KEEL_RPC_PARAM_UINT32,
			      "keel's error bdev does not corrupt data"),
		RPC_ZERO_ONLY("nvme_sct", KEEL_RPC_PARAM_UINT32,
			      "keel bdevs are not NVMe devices: use errno"),
		RPC_ZERO_ONLY("nvme_sc", KEEL_RPC_PARAM_UINT32,
			      "keel bdevs are not NVMe devices: use errno"),
	};
	struct rpc_inject_params p = {.name = NULL,
				      .io_type = "all",
				      .error_type = "failure",
				      .num = 1,
				      .every_nth = 0,
				      .err = EIO,
				      .delay_us = 0};
	struct keel_bdev_error_rule rule;
	struct keel_bdev *bdev;
	int t, rc;

	if (!rpc_compat_decode(req, params, table, 7, &p, spdk, sizeof(spdk) / sizeof(spdk[0]))) {
		return;
	}
	bdev = keel_bdev_get_by_name(p.name);
	if (bdev == NULL || strcmp(keel_bdev_get_module_name(bdev), "error") != 0) {
		keel_rpc_send_error(req, -ENODEV,
				    "error bdev '%s' not found: create one with "
				    "bdev_error_create",
				    p.name);
		return;
	}
	/* SPDK clears with io_type "clear"; keel also with error_type "clear". */
	if (strcmp(p.error_type, "clear") == 0 || strcmp(p.io_type, "clear") == 0) {
		rc = keel_bdev_error_clear(p.name);
		if (rc != 0) {
			keel_rpc_send_error(req, rc, "cannot clear the rules of '%s': %s", p.name,
					    strerror(-rc));
			return;
		}
		keel_rpc_send_result(req, NULL);
		return;
	}
	memset(&rule, 0, sizeof(rule));
	if (strcmp(p.io_type, "all") == 0) {
		rule.io_type = KEEL_BDEV_IO_NUM_TYPES;
	} else {
		for (t = 0; t < KEEL_BDEV_IO_NUM_TYPES; t++) {
			if (strcmp(p.io_type, keel_bdev_io_type_name((enum keel_bdev_io_type)t)) ==
			    0) {
				break;
			}
		}
		if (t == KEEL_BDEV_IO_NUM_TYPES) {
			keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
					    "io_type: unknown '%.32s': "
					    "use read, write, flush, unmap, write_zeroes, reset, "
					    "all or clear",
					    p.io_type);
			return;
		}
		rule.io_type = (enum keel_bdev_io_type)t;
	}
	if (p.err < 0) {
		p.err = -p.err; /* accept either sign; the rule wants a negative errno */
	}
	if (p.err == 0 || p.err > 4095) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "errno: %lld is not an errno value (e.g. 5 for EIO)",
				    (long long)p.err);
		return;
	}
	if (strcmp(p.error_type, "failure") == 0) {
		rule.error = -(int)p.err;
		rule.delay_us = p.delay_us;
	} else if (strcmp(p.error_type, "delay") == 0) {
		if (p.delay_us == 0) {
			keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
					    "delay_us: error_type 'delay' needs delay_us > 0");
			return;
		}
		rule.error = 0;
		rule.delay_us = p.delay_us;
	} else if (strcmp(p.error_type, "drop") == 0) {
		rule.error = 0;
		rule.delay_us = p.delay_us;
		rule.drop = true;
	} else if (strcmp(p.error_type, "pending") == 0 ||
		   strcmp(p.error_type, "corrupt_data") == 0 ||
		   strcmp(p.error_type, "nomem") == 0 ||
		   strcmp(p.error_type, "nvme_failure") == 0) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "error_type: '%s' (an SPDK error type) is not supported by "
				    "keel's error bdev: use failure, delay, drop or clear",
				    p.error_type);
		return;
	} else {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "error_type: unknown '%.32s': "
				    "use failure, delay, drop or clear",
				    p.error_type);
		return;
	}
	rule.count = p.num;
	rule.every_nth = p.every_nth;
	rc = keel_bdev_error_inject(p.name, &rule);
	if (rc != 0) {
		keel_rpc_send_error(req, rc, "cannot inject into '%s': %s", p.name, strerror(-rc));
		return;
	}
	KEEL_NOTICELOG("rpc: error bdev %s: %s rule on %s (num %u, every_nth %u)", p.name,
		       p.error_type, p.io_type, p.num, p.every_nth);
	keel_rpc_send_result(req, NULL);
}

void rpc_bdev_register(void)
{
	keel_rpc_register_method("bdev_get_bdevs", rpc_bdev_get_bdevs,
				 "List bdevs, or one with {name, timeout?: ms to wait for it}");
	keel_rpc_register_method("bdev_get_iostat", rpc_bdev_get_iostat,
				 "I/O statistics of every bdev, or {name} or {names: [...]}");
	keel_rpc_register_method("bdev_delete", rpc_bdev_delete,
				 "Delete bdev {name} whatever its module");
	keel_rpc_register_method("bdev_malloc_create", rpc_bdev_malloc_create,
				 "RAM disk {name?=MallocN, num_blocks, block_size?=512, uuid?}");
	keel_rpc_register_method("bdev_malloc_delete", rpc_bdev_malloc_delete,
				 "Delete RAM disk {name}");
	keel_rpc_register_method("bdev_null_create", rpc_bdev_null_create,
				 "Null disk {name, num_blocks, block_size?=512, uuid?}");
	keel_rpc_register_method("bdev_null_delete", rpc_bdev_null_delete,
				 "Delete null disk {name}");
	keel_rpc_register_method("bdev_aio_create", rpc_bdev_aio_create,
				 "AIO bdev {name, filename (absolute), block_size?}");
	keel_rpc_register_method("bdev_aio_delete", rpc_bdev_aio_delete, "Delete AIO bdev {name}");
	keel_rpc_register_method("bdev_uring_create", rpc_bdev_uring_create,
				 "io_uring bdev {name, filename (absolute), block_size?}");
	keel_rpc_register_method("bdev_uring_delete", rpc_bdev_uring_delete,
				 "Delete io_uring bdev {name}");
	keel_rpc_register_method("bdev_error_create", rpc_bdev_error_create,
				 "Error-injection bdev {base_name, name?=EE_<base_name>}");
	keel_rpc_register_method("bdev_error_delete", rpc_bdev_error_delete,
				 "Delete error bdev {name}");
	keel_rpc_register_method(
		"bdev_error_inject_error", rpc_bdev_error_inject_error,
		"{name, io_type?=all|read|...|clear, error_type?=failure|delay|clear, "
		"num?, every_nth?, errno?, delay_us?}");
}
