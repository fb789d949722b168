/*
 * Rebuild RPCs: status, control, options, history (kept by daemon/rebuild_history.c).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "keel/nexus.h"
#include "keel/rpc.h"

#include "rebuild_history.h"
#include "rpc_methods.h"

/* ------------------------------------------------------------------------------ */
/* Methods                                                                         */
/* ------------------------------------------------------------------------------ */

static void append_job(void *ctx, const struct keel_rebuild_stats *st)
{
	json_t *arr = ctx;
	json_t *o = keel_rebuild_stats_to_json(st);

	if (o != NULL) {
		json_array_append_new(arr, o);
	}
}

static void rpc_rebuild_get_status(struct keel_rpc_request *req, json_t *params)
{
	struct {
		const char *volume;
	} p = {NULL};
	static const struct keel_rpc_param table[] = {
		{"volume", KEEL_RPC_PARAM_STRING, 0, true},
	};
	json_t *arr;

	if (!keel_rpc_decode_params(req, params, table, 1, &p)) {
		return;
	}
	if (p.volume != NULL && keel_nexus_get_by_name(p.volume) == NULL) {
		keel_rpc_send_error(req, -ENODEV, "volume %s: no such volume", p.volume);
		return;
	}
	arr = json_array();
	keel_rebuild_list(p.volume, append_job, arr);
	keel_rpc_send_result(req, arr);
}

struct vr_params {
	const char *volume;
	const char *replica;
};

static const struct keel_rpc_param g_vr_table[] = {
	{"volume", KEEL_RPC_PARAM_STRING, offsetof(struct vr_params, volume), false},
	{"replica", KEEL_RPC_PARAM_STRING, offsetof(struct vr_params, replica), false},
};

static void control(struct keel_rpc_request *req, json_t *params,
		    int (*fn)(const char *, const char *), const char *what)
{
	struct vr_params p = {0};
	int rc;

	if (!keel_rpc_decode_params(req, params, g_vr_table, 2, &p)) {
		return;
	}
	rc = fn(p.volume, p.replica);
	switch (rc) {
	case 0:
		keel_rpc_send_result(req, NULL);
		return;
	case -ENODEV:
		keel_rpc_send_error(req, rc, "volume %s: no such volume, replica or job (%s)",
				    p.volume, p.replica);
		return;
	case -EINVAL:
		keel_rpc_send_error(req, rc,
				    "volume %s: replica %s: cannot %s in this state "
				    "(see rebuild_get_status)",
				    p.volume, p.replica, what);
		return;
	case -EBUSY:
		keel_rpc_send_error(req, rc, "volume %s: replica %s: a rebuild is already active",
				    p.volume, p.replica);
		return;
	case -EALREADY:
		keel_rpc_send_error(req, rc, "volume %s: replica %s: no active rebuild to stop",
				    p.volume, p.replica);
		return;
	case -EIO:
		keel_rpc_send_error(req, rc, "volume %s: no healthy replica to copy from",
				    p.volume);
		return;
	default:
		keel_rpc_send_error(req, rc, "volume %s: replica %s: %s failed: %s", p.volume,
				    p.replica, what, strerror(-rc));
	}
}

static void rpc_rebuild_start(struct keel_rpc_request *req, json_t *params)
{
	control(req, params, keel_rebuild_start, "start");
}

static void rpc_rebuild_stop(struct keel_rpc_request *req, json_t *params)
{
	control(req, params, keel_rebuild_stop, "stop");
}

static void rpc_rebuild_pause(struct keel_rpc_request *req, json_t *params)
{
	control(req, params, keel_rebuild_pause, "pause");
}

static void rpc_rebuild_resume(struct keel_rpc_request *req, json_t *params)
{
	control(req, params, keel_rebuild_resume, "resume");
}

static void rpc_rebuild_set_options(struct keel_rpc_request *req, json_t *params)
{
	struct keel_rebuild_opts o;
	struct {
		double rate;
		uint32_t max_concurrent;
		uint32_t segment_size;
		uint32_t tasks;
		bool auto_rebuild;
	} p;
	static const struct keel_rpc_param table[] = {
		{"rate_limit_mib_s", KEEL_RPC_PARAM_DOUBLE, 0, true},
		{"max_concurrent", KEEL_RPC_PARAM_UINT32, sizeof(double), true},
		{"segment_size", KEEL_RPC_PARAM_UINT32, sizeof(double) + 4, true},
		{"tasks", KEEL_RPC_PARAM_UINT32, sizeof(double) + 8, true},
		{"auto_rebuild", KEEL_RPC_PARAM_BOOL, sizeof(double) + 12, true},
	};
	json_t *res;

	keel_rebuild_get_opts(&o);
	p.rate = o.rate_limit_mib_s;
	p.max_concurrent = o.max_concurrent;
	p.segment_size = o.segment_size;
	p.tasks = o.tasks;
	p.auto_rebuild = o.auto_rebuild;
	if (!keel_rpc_decode_params(req, params, table, 5, &p)) {
		return;
	}
	/* Negated so NaN is refused too (JSON cannot carry it, the API can). */
	if (!(p.rate >= 0 && p.rate <= KEEL_REBUILD_RATE_MAX_MIB_S)) {
		keel_rpc_send_error(
			req, KEEL_RPC_INVALID_PARAMS,
			"rate_limit_mib_s: %g is out of range: 0 (no limit) to %.0f MiB/s", p.rate,
			KEEL_REBUILD_RATE_MAX_MIB_S);
		return;
	}
	o.rate_limit_mib_s = p.rate;
	o.max_concurrent = p.max_concurrent;
	o.segment_size = p.segment_size;
	o.tasks = p.tasks;
	o.auto_rebuild = p.auto_rebuild;
	if (keel_rebuild_set_opts(&o) != 0) {
		keel_rpc_send_error(
			req, KEEL_RPC_INVALID_PARAMS,
			"segment_size must be a multiple of 4096 up to 4194304 (4 MiB), "
			"tasks 1..32, rate_limit_mib_s 0 (no limit) to %.0f",
			KEEL_REBUILD_RATE_MAX_MIB_S);
		return;
	}
	res = json_object();
	json_object_set_new(res, "rate_limit_mib_s", json_real(o.rate_limit_mib_s));
	json_object_set_new(res, "max_concurrent", json_integer(o.max_concurrent));
	json_object_set_new(res, "segment_size", json_integer(o.segment_size));
	json_object_set_new(res, "tasks", json_integer(o.tasks));
	json_object_set_new(res, "auto_rebuild", json_boolean(o.auto_rebuild));
	keel_rpc_send_result(req, res);
}

static void rpc_rebuild_get_history(struct keel_rpc_request *req, json_t *params)
{
	struct {
		const char *volume;
	} p = {NULL};
	static const struct keel_rpc_param table[] = {
		{"volume", KEEL_RPC_PARAM_STRING, 0, false},
	};
	json_t *list;

	if (!keel_rpc_decode_params(req, params, table, 1, &p)) {
		return;
	}
	list = keeld_rebuild_history_get(p.volume);
	if (list == NULL) {
		keel_rpc_send_error(req, -ENOMEM, "out of memory");
		return;
	}
	keel_rpc_send_result(req, list);
}

void rpc_rebuild_register(void)
{
	keel_rpc_register_method("rebuild_get_status", rpc_rebuild_get_status,
				 "rebuild jobs {volume?}: state, progress, rate, ETA");
	keel_rpc_register_method("rebuild_start", rpc_rebuild_start,
				 "start a rebuild {volume, replica}");
	keel_rpc_register_method("rebuild_stop", rpc_rebuild_stop,
				 "stop a rebuild {volume, replica}");
	keel_rpc_register_method("rebuild_pause", rpc_rebuild_pause,
				 "pause a rebuild {volume, replica}");
	keel_rpc_register_method("rebuild_resume", rpc_rebuild_resume,
				 "resume a rebuild {volume, replica}");
	keel_rpc_register_method("rebuild_set_options", rpc_rebuild_set_options,
				 "{rate_limit_mib_s?, max_concurrent?, segment_size?, tasks?, "
				 "auto_rebuild?}");
	keel_rpc_register_method("rebuild_get_history", rpc_rebuild_get_history,
				 "ended rebuilds of {volume} (kept across restarts)");
}
