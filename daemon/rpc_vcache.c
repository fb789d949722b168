/*
 * JSON-RPC methods of the vcache fault device (bdev/vcache: a disk with a volatile
 * write cache, for power-cut tests): bdev_vcache_create, bdev_vcache_delete,
 * bdev_vcache_power_cut, bdev_vcache_get_stats. Decode, call the module, encode.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "keel/bdev_vcache.h"
#include "keel/log.h"
#include "keel/rpc.h"

#include "rpc_methods.h"

struct rpc_vcache_params {
	const char *name;
	const char *base_bdev_name;
	uint64_t max_dirty_bytes;
	const char *mode;
	uint64_t seed;
	uint64_t keep;
	bool keep_given;
};

static bool rpc_vcache_exists(struct keel_rpc_request *req, const char *name)
{
	struct keel_vcache_stats st;

	if (keel_bdev_vcache_get_stats(name, &st) != 0) {
		keel_rpc_send_error(req, -ENODEV, "'%s' is not a vcache bdev", name);
		return false;
	}
	return true;
}

static void rpc_vcache_create(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"name", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_vcache_params, name), false},
		{"base_bdev_name", KEEL_RPC_PARAM_STRING,
		 offsetof(struct rpc_vcache_params, base_bdev_name), false},
		{"max_dirty_bytes", KEEL_RPC_PARAM_UINT64,
		 offsetof(struct rpc_vcache_params, max_dirty_bytes), true},
	};
	struct rpc_vcache_params p = {0};
	struct keel_bdev *bdev;
	int rc;

	if (!keel_rpc_decode_params(req, params, table, 3, &p)) {
		return;
	}
	rc = keel_bdev_vcache_create(p.name, p.base_bdev_name, p.max_dirty_bytes, &bdev);
	switch (rc) {
	case 0:
		KEEL_NOTICELOG("rpc: vcache bdev %s created on %s", p.name, p.base_bdev_name);
		keel_rpc_send_result(req, json_string(p.name));
		break;
	case -ENODEV:
		keel_rpc_send_error(req, rc, "base bdev '%s' not found: create it first",
				    p.base_bdev_name);
		break;
	case -EPERM:
		keel_rpc_send_error(req, rc, "base bdev '%s' is already claimed", p.base_bdev_name);
		break;
	case -EEXIST:
		keel_rpc_send_error(req, rc, "bdev '%s' already exists", p.name);
		break;
	default:
		keel_rpc_send_error(req, rc, "cannot create vcache bdev '%s': %s", p.name,
				    strerror(-rc));
		break;
	}
}

struct rpc_vcache_ctx {
	struct keel_rpc_request *req;
	char name[KEEL_BDEV_NAME_MAX + 1];
	const char *what;
};

static void rpc_vcache_done(void *cb_arg, int status)
{
	struct rpc_vcache_ctx *ctx = cb_arg;

	if (status != 0) {
		keel_rpc_send_error(ctx->req, status, "%s of vcache bdev '%s' failed: %s",
				    ctx->what, ctx->name, strerror(-status));
	} else {
		KEEL_NOTICELOG("rpc: vcache bdev %s: %s done", ctx->name, ctx->what);
		keel_rpc_send_result(ctx->req, json_true());
	}
	free(ctx);
}

static struct rpc_vcache_ctx *rpc_vcache_ctx(struct keel_rpc_request *req, const char *name,
					     const char *what)
{
	struct rpc_vcache_ctx *ctx = rpc_ctx_calloc(req, sizeof(*ctx));

	if (ctx) {
		ctx->req = req;
		ctx->what = what;
		snprintf(ctx->name, sizeof(ctx->name), "%s", name);
	}
	return ctx;
}

static const struct keel_rpc_param g_name_only[] = {
	{"name", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_vcache_params, name), false},
};

static void rpc_vcache_delete(struct keel_rpc_request *req, json_t *params)
{
	struct rpc_vcache_params p = {0};
	struct rpc_vcache_ctx *ctx;
	int rc;

	if (!keel_rpc_decode_params(req, params, g_name_only, 1, &p) ||
	    !rpc_vcache_exists(req, p.name)) {
		return;
	}
	ctx = rpc_vcache_ctx(req, p.name, "delete");
	if (!ctx) {
		return;
	}
	rc = keel_bdev_vcache_delete(p.name, rpc_vcache_done, ctx);
	if (rc) {
		free(ctx);
		keel_rpc_send_error(req, rc, "cannot delete vcache bdev '%s': %s", p.name,
				    strerror(-rc));
	}
}

static void rpc_vcache_power_cut(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"name", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_vcache_params, name), false},
		{"mode", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_vcache_params, mode), false},
		{"seed", KEEL_RPC_PARAM_UINT64, offsetof(struct rpc_vcache_params, seed), true},
		{"keep", KEEL_RPC_PARAM_UINT64, offsetof(struct rpc_vcache_params, keep), true},
	};
	struct rpc_vcache_params p = {.keep = UINT64_MAX};
	enum keel_vcache_cut_mode mode;
	struct rpc_vcache_ctx *ctx;
	int rc;

	if (!keel_rpc_decode_params(req, params, table, 4, &p)) {
		return;
	}
	if (keel_vcache_cut_mode_parse(p.mode, &mode) != 0) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "mode: '%s' is not one of none, all, random, prefix", p.mode);
		return;
	}
	if (mode == KEEL_VCACHE_CUT_PREFIX && p.keep == UINT64_MAX) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "keep: mode prefix needs the number of cached writes to keep");
		return;
	}
	if (!rpc_vcache_exists(req, p.name)) {
		return;
	}
	ctx = rpc_vcache_ctx(req, p.name, "power cut");
	if (!ctx) {
		return;
	}
	rc = keel_bdev_vcache_power_cut(p.name, mode, p.seed, p.keep, rpc_vcache_done, ctx);
	if (rc) {
		free(ctx);
		keel_rpc_send_error(req, rc, "cannot cut the power of vcache bdev '%s': %s", p.name,
				    rc == -EALREADY ? "it was cut already: delete and create it "
						      "again to re-arm"
						    : strerror(-rc));
	}
}

static void rpc_vcache_get_stats(struct keel_rpc_request *req, json_t *params)
{
	struct rpc_vcache_params p = {0};
	struct keel_vcache_stats st;

	if (!keel_rpc_decode_params(req, params, g_name_only, 1, &p)) {
		return;
	}
	if (keel_bdev_vcache_get_stats(p.name, &st) != 0) {
		keel_rpc_send_error(req, -ENODEV, "'%s' is not a vcache bdev", p.name);
		return;
	}
	keel_rpc_send_result(
		req,
		json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b, s:I, s:I}", "name", p.name,
			  "dirty_writes", (json_int_t)st.dirty_writes, "dirty_bytes",
			  (json_int_t)st.dirty_bytes, "writes", (json_int_t)st.writes, "fua_writes",
			  (json_int_t)st.fua_writes, "flushes", (json_int_t)st.flushes,
			  "writebacks", (json_int_t)st.writebacks, "forced_writebacks",
			  (json_int_t)st.forced, "dead", st.dead, "cut_kept",
			  (json_int_t)st.cut_kept, "cut_dropped", (json_int_t)st.cut_dropped));
}

void rpc_vcache_register(void)
{
	keel_rpc_register_method("bdev_vcache_create", rpc_vcache_create,
				 "Create a volatile-cache fault bdev {name, base_bdev_name, "
				 "max_dirty_bytes?} over a base bdev");
	keel_rpc_register_method("bdev_vcache_delete", rpc_vcache_delete,
				 "Delete vcache bdev {name} (its cached writes are dropped)");
	keel_rpc_register_method(
		"bdev_vcache_power_cut", rpc_vcache_power_cut,
		"Cut the power of vcache bdev {name, mode: none|all|random|prefix, "
		"seed?, keep?}: keep some cached writes, then fail all I/O");
	keel_rpc_register_method("bdev_vcache_get_stats", rpc_vcache_get_stats,
				 "Counters of vcache bdev {name}: dirty writes and bytes, flushes, "
				 "power cut");
}
