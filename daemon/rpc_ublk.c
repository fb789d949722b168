/*
 * ublk RPC methods with SPDK's names and parameters: ublk_create_target {cpumask?},
 * ublk_destroy_target, ublk_start_disk {bdev_name, ublk_id?, num_queues?, queue_depth?},
 * ublk_stop_disk {ublk_id}, ublk_recover_disk {bdev_name, ublk_id}, ublk_get_disks
 * {ublk_id?}. Decode, call include/keel/ublk.h, encode.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "keel/reactor.h"
#include "keel/rpc.h"
#include "keel/ublk.h"
#include "rpc_methods.h"

/* A cpumask is SPDK's hex ("0x3") or a CPU list ("[0-1]", "0,2"). */
static int rpc_ublk_parse_cpumask(const char *s, uint64_t *mask)
{
	uint32_t cpus[64];
	char list[128];
	size_t len = strlen(s);
	char *end;
	int n;

	if (strncmp(s, "0x", 2) == 0 || strncmp(s, "0X", 2) == 0) {
		errno = 0;
		*mask = strtoull(s + 2, &end, 16);
		return errno == 0 && *end == '\0' && end != s + 2 && *mask != 0 ? 0 : -EINVAL;
	}
	if (len >= 2 && s[0] == '[' && s[len - 1] == ']') {
		s++;
		len -= 2;
	}
	if (len == 0 || len >= sizeof(list)) {
		return -EINVAL;
	}
	memcpy(list, s, len);
	list[len] = '\0';
	n = keel_cpulist_parse(list, cpus, 64);
	if (n <= 0) {
		return -EINVAL;
	}
	*mask = 0;
	for (int i = 0; i < n; i++) {
		if (cpus[i] >= 64) {
			return -EINVAL;
		}
		*mask |= 1ull << cpus[i];
	}
	return 0;
}

static void rpc_ublk_true_done(void *cb_arg, int status, const char *err)
{
	struct keel_rpc_request *req = cb_arg;

	if (status != 0) {
		keel_rpc_send_error(req, status, "%s", err);
		return;
	}
	keel_rpc_send_result(req, json_true());
}

static void rpc_ublk_create_target(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"cpumask", KEEL_RPC_PARAM_STRING, 0, true},
	};
	const char *cpumask = NULL;
	uint64_t mask = 0;
	int rc;

	if (!keel_rpc_decode_params(req, params, table, 1, &cpumask)) {
		return;
	}
	if (cpumask != NULL && rpc_ublk_parse_cpumask(cpumask, &mask) != 0) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "cpumask '%.64s': give hex (0x3) or a CPU list ([0-1])",
				    cpumask);
		return;
	}
	rc = keel_ublk_target_create(mask, rpc_ublk_true_done, req);
	if (rc == -EEXIST) {
		keel_rpc_send_error(req, rc, "the ublk target already exists");
	} else if (rc != 0) {
		keel_rpc_send_error(req, rc, "cannot create the ublk target: %s", strerror(-rc));
	}
}

static void rpc_ublk_destroy_target(struct keel_rpc_request *req, json_t *params)
{
	int rc;

	if (!keel_rpc_decode_params(req, params, NULL, 0, NULL)) {
		return;
	}
	rc = keel_ublk_target_destroy(rpc_ublk_true_done, req);
	if (rc == -ENOENT) {
		keel_rpc_send_error(req, rc, "there is no ublk target (ublk_create_target)");
	} else if (rc != 0) {
		keel_rpc_send_error(req, rc, "cannot destroy the ublk target: %s", strerror(-rc));
	}
}

static void rpc_ublk_started(void *cb_arg, int status, uint32_t id, const char *err)
{
	struct keel_rpc_request *req = cb_arg;

	if (status != 0) {
		keel_rpc_send_error(req, status, "%s", err);
		return;
	}
	keel_rpc_send_result(req, json_integer(id));
}

struct rpc_ublk_start {
	const char *bdev_name;
	int64_t ublk_id;
	uint32_t num_queues;
	uint32_t queue_depth;
};

static void rpc_ublk_start_disk(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"bdev_name", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_ublk_start, bdev_name),
		 false},
		{"ublk_id", KEEL_RPC_PARAM_INT64, offsetof(struct rpc_ublk_start, ublk_id), true},
		{"num_queues", KEEL_RPC_PARAM_UINT32, offsetof(struct rpc_ublk_start, num_queues),
		 true},
		{"queue_depth", KEEL_RPC_PARAM_UINT32, offsetof(struct rpc_ublk_start, queue_depth),
		 true},
	};
	struct rpc_ublk_start p = {.ublk_id = -1};
	struct keel_ublk_disk_opts opts;
	char err[512];
	int rc;

	if (!keel_rpc_decode_params(req, params, table, sizeof(table) / sizeof(table[0]), &p)) {
		return;
	}
	if (json_object_get(params, "queue_depth") != NULL && p.queue_depth == 0) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS, "queue_depth 0: must be 1..%u",
				    KEEL_UBLK_MAX_QUEUE_DEPTH);
		return;
	}
	if (json_object_get(params, "num_queues") != NULL && p.num_queues == 0) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "num_queues 0: must be at least 1");
		return;
	}
	keel_ublk_disk_opts_init(&opts);
	opts.bdev_name = p.bdev_name;
	opts.ublk_id = p.ublk_id;
	opts.num_queues = p.num_queues;
	opts.queue_depth = p.queue_depth;
	rc = keel_ublk_disk_start(&opts, rpc_ublk_started, req, err, sizeof(err));
	if (rc != 0) {
		keel_rpc_send_error(req, rc == -EINVAL ? KEEL_RPC_INVALID_PARAMS : rc, "%s", err);
	}
}

static void rpc_ublk_recover_disk(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"bdev_name", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_ublk_start, bdev_name),
		 false},
		{"ublk_id", KEEL_RPC_PARAM_INT64, offsetof(struct rpc_ublk_start, ublk_id), false},
	};
	struct rpc_ublk_start p = {0};
	char err[512];
	int rc;

	if (!keel_rpc_decode_params(req, params, table, 2, &p)) {
		return;
	}
	if (p.ublk_id < 0 || p.ublk_id > UINT32_MAX) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS, "ublk_id %lld: out of range",
				    (long long)p.ublk_id);
		return;
	}
	rc = keel_ublk_disk_recover(p.bdev_name, (uint32_t)p.ublk_id, rpc_ublk_started, req, err,
				    sizeof(err));
	if (rc != 0) {
		keel_rpc_send_error(req, rc == -EINVAL ? KEEL_RPC_INVALID_PARAMS : rc, "%s", err);
	}
}

static void rpc_ublk_stop_disk(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"ublk_id", KEEL_RPC_PARAM_INT64, 0, false},
	};
	int64_t id = -1;
	int rc;

	if (!keel_rpc_decode_params(req, params, table, 1, &id)) {
		return;
	}
	if (id < 0 || id > UINT32_MAX) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS, "ublk_id %lld: out of range",
				    (long long)id);
		return;
	}
	rc = keel_ublk_disk_stop((uint32_t)id, rpc_ublk_true_done, req);
	if (rc == -ENOENT) {
		keel_rpc_send_error(req, rc,
				    "/dev/ublkb%lld is not served by this keeld (or already "
				    "stopping): see ublk_get_disks",
				    (long long)id);
	} else if (rc != 0) {
		keel_rpc_send_error(req, rc, "cannot stop /dev/ublkb%lld: %s", (long long)id,
				    strerror(-rc));
	}
}

static void rpc_ublk_get_disks(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"ublk_id", KEEL_RPC_PARAM_INT64, 0, true},
	};
	struct keel_ublk_disk *d;
	int64_t id = -1;
	json_t *arr;

	if (!keel_rpc_decode_params(req, params, table, 1, &id)) {
		return;
	}
	arr = json_array();
	for (d = keel_ublk_disk_first(); d != NULL; d = keel_ublk_disk_next(d)) {
		int64_t did = keel_ublk_disk_get_id(d);
		char dev[32];

		if (id >= 0 && did != id) {
			continue;
		}
		snprintf(dev, sizeof(dev), "/dev/ublkb%lld", (long long)did);
		json_array_append_new(
			arr, json_pack("{s:o, s:o, s:I, s:I, s:s, s:s}", "ublk_device",
				       did >= 0 ? json_string(dev) : json_null(), "id",
				       did >= 0 ? json_integer(did) : json_null(), "queue_depth",
				       (json_int_t)keel_ublk_disk_get_queue_depth(d), "num_queues",
				       (json_int_t)keel_ublk_disk_get_num_queues(d), "bdev_name",
				       keel_ublk_disk_get_bdev_name(d), "state",
				       keel_ublk_disk_get_state(d)));
	}
	if (id >= 0 && json_array_size(arr) == 0) {
		json_decref(arr);
		keel_rpc_send_error(req, -ENOENT, "/dev/ublkb%lld is not served by this keeld",
				    (long long)id);
		return;
	}
	keel_rpc_send_result(req, arr);
}

void rpc_ublk_register(void)
{
	keel_rpc_register_method("ublk_create_target", rpc_ublk_create_target,
				 "create the ublk target (needs the ublk_drv module): {cpumask?}");
	keel_rpc_register_method("ublk_destroy_target", rpc_ublk_destroy_target,
				 "stop every ublk device and drop the target");
	keel_rpc_register_method("ublk_start_disk", rpc_ublk_start_disk,
				 "serve a bdev as /dev/ublkbN: {bdev_name, ublk_id?, "
				 "num_queues?, queue_depth?}");
	keel_rpc_register_method("ublk_stop_disk", rpc_ublk_stop_disk,
				 "stop and delete /dev/ublkbN: {ublk_id}");
	keel_rpc_register_method("ublk_recover_disk", rpc_ublk_recover_disk,
				 "re-attach /dev/ublkbN left by a keeld that died: {bdev_name, "
				 "ublk_id}");
	keel_rpc_register_method("ublk_get_disks", rpc_ublk_get_disks,
				 "list ublk devices: {ublk_id?}");
}
