/*
 * Volume RPCs: decode the parameters, call the volume manager
 * (daemon/volume_manager.h), encode its answer (daemon/volume_json.h). The rules,
 * the checks and the state machines are the manager's.
 *
 * Test hook: volume_create also takes replica_bdevs (existing bdevs, e.g. error bdevs
 * over aio bdevs) instead of paths, and volume_add_replica a replica_bdev.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/rpc.h"
#include "rpc_methods.h"
#include "volume_json.h"
#include "volume_manager.h"

/* The manager's answer as the RPC's: a volume as JSON, or true after a destroy. */
static void rpc_volume_done(void *cb_arg, int status, const char *errmsg, struct keeld_volume *vol)
{
	struct keel_rpc_request *req = cb_arg;
	json_t *o;

	if (status != 0) {
		keel_rpc_send_error(req, status, "%s", errmsg);
		return;
	}
	if (vol == NULL) {
		keel_rpc_send_result(req, json_true());
		return;
	}
	o = keeld_volume_to_json(vol);
	if (o == NULL) {
		keel_rpc_send_error(req, -ENOMEM, "out of memory");
		return;
	}
	keel_rpc_send_result(req, o);
}

/* A call that did not start: its callback never runs, so answer here. */
static void rpc_volume_not_started(struct keel_rpc_request *req, int rc)
{
	if (rc == 0) {
		return;
	}
	keel_rpc_send_error(req, rc, "%s",
			    rc == -ENOMEM      ? "out of memory"
			    : rc == -ESHUTDOWN ? "keeld is shutting down"
					       : strerror(-rc));
}

/*
 * A JSON list of replicas as C strings for the manager, which checks them. Entries
 * that are not strings become NULL; a value that is not an array becomes an empty
 * list. \return the list (free() it; the strings belong to \p list), or NULL on out
 * of memory.
 */
static const char **rpc_volume_strings(json_t *list, uint32_t *n)
{
	size_t count = json_is_array(list) ? json_array_size(list) : 0;
	const char **out = calloc(count + 1, sizeof(*out));
	json_t *e;
	size_t i;

	if (out == NULL) {
		return NULL;
	}
	json_array_foreach(list, i, e) {
		out[i] = json_string_value(e);
	}
	*n = count > UINT32_MAX ? UINT32_MAX : (uint32_t)count;
	return out;
}

/*
 * The optional "backend" parameter. \return true with \p *out (KEELD_BACKEND_DEFAULT
 * when absent), or false after answering with the error.
 */
static bool rpc_volume_backend(struct keel_rpc_request *req, const char *text,
			       enum keeld_backend *out)
{
	char why[128];

	*out = KEELD_BACKEND_DEFAULT;
	if (text == NULL) {
		return true;
	}
	if (!keeld_backend_parse(text, out, why, sizeof(why))) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS, "backend: %s", why);
		return false;
	}
	return true;
}

struct rpc_create_params {
	const char *name;
	uint64_t size;
	json_t *replicas;
	json_t *replica_bdevs;
	bool force;
	const char *backend;
};

static void rpc_volume_create(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"name", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_create_params, name), false},
		{"size", KEEL_RPC_PARAM_UINT64, offsetof(struct rpc_create_params, size), true},
		{"replicas", KEEL_RPC_PARAM_JSON, offsetof(struct rpc_create_params, replicas),
		 true},
		{"replica_bdevs", KEEL_RPC_PARAM_JSON,
		 offsetof(struct rpc_create_params, replica_bdevs), true},
		{"force", KEEL_RPC_PARAM_BOOL, offsetof(struct rpc_create_params, force), true},
		{"backend", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_create_params, backend),
		 true},
	};
	struct rpc_create_params p = {0};
	struct keeld_volume_create_opts opts = {0};
	const char **list = NULL;
	json_t *size;
	char why[1024];

	if (!keel_rpc_decode_params(req, params, table, sizeof(table) / sizeof(table[0]), &p) ||
	    !rpc_volume_backend(req, p.backend, &opts.backend)) {
		return;
	}
	if (json_is_null(p.replicas)) {
		p.replicas = NULL;
	}
	if (json_is_null(p.replica_bdevs)) {
		p.replica_bdevs = NULL;
	}
	if (p.replicas != NULL || p.replica_bdevs != NULL) {
		list = rpc_volume_strings(p.replicas != NULL ? p.replicas : p.replica_bdevs,
					  &opts.num_replicas);
		if (list == NULL) {
			keel_rpc_send_error(req, -ENOMEM, "out of memory");
			return;
		}
	}
	opts.name = p.name;
	opts.size = p.size;
	opts.replicas = p.replicas != NULL ? list : NULL;
	opts.replica_bdevs = p.replica_bdevs != NULL ? list : NULL;
	opts.force = p.force;
	size = json_object_get(params, "size");
	if (p.replicas != NULL && (size == NULL || json_is_null(size))) {
		/* Everything else is checked first, with a size that passes. */
		opts.size = KEELD_VOLUME_SIZE_ALIGN;
		if (keeld_volume_create_opts_valid(&opts, why, sizeof(why))) {
			snprintf(why, sizeof(why), "missing parameter 'size' (bytes)");
		}
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS, "%s", why);
	} else if (!keeld_volume_create_opts_valid(&opts, why, sizeof(why))) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS, "%s", why);
	} else {
		rpc_volume_not_started(req, keeld_volume_create(&opts, rpc_volume_done, req));
	}
	free(list);
}

struct rpc_name_params {
	const char *name;
	bool wipe;
};

static void rpc_volume_destroy(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"name", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_name_params, name), false},
		{"wipe", KEEL_RPC_PARAM_BOOL, offsetof(struct rpc_name_params, wipe), true},
	};
	struct rpc_name_params p = {0};

	if (!keel_rpc_decode_params(req, params, table, 2, &p)) {
		return;
	}
	rpc_volume_not_started(req, keeld_volume_destroy(p.name, p.wipe, rpc_volume_done, req));
}

static void rpc_volume_list(struct keel_rpc_request *req, json_t *params)
{
	struct keeld_volume *v;
	json_t *arr;

	if (!keel_rpc_decode_params(req, params, NULL, 0, NULL)) {
		return;
	}
	arr = json_array();
	for (v = keeld_volume_first(); v != NULL; v = keeld_volume_next(v)) {
		json_array_append_new(arr, keeld_volume_to_json(v));
	}
	keel_rpc_send_result(req, arr);
}

static void rpc_volume_get(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"name", KEEL_RPC_PARAM_STRING, 0, false},
	};
	const char *name = NULL;
	struct keeld_volume *v;
	char err[256];
	json_t *o;

	if (!keel_rpc_decode_params(req, params, table, 1, &name)) {
		return;
	}
	v = keeld_volume_find(name, err, sizeof(err));
	if (v == NULL) {
		keel_rpc_send_error(req, -ENOENT, "%s", err);
		return;
	}
	o = keeld_volume_to_json(v);
	if (o == NULL) {
		keel_rpc_send_error(req, -ENOMEM, "out of memory");
		return;
	}
	keel_rpc_send_result(req, o);
}

struct rpc_replica_params {
	const char *name;
	const char *replica;
	const char *replica_bdev;
	bool force;
	const char *backend;
};

static void rpc_volume_add_replica(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"name", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_replica_params, name), false},
		{"replica", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_replica_params, replica),
		 true},
		{"replica_bdev", KEEL_RPC_PARAM_STRING,
		 offsetof(struct rpc_replica_params, replica_bdev), true},
		{"force", KEEL_RPC_PARAM_BOOL, offsetof(struct rpc_replica_params, force), true},
		{"backend", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_replica_params, backend),
		 true},
	};
	struct rpc_replica_params p = {0};
	enum keeld_backend backend;
	char why[1024];

	if (!keel_rpc_decode_params(req, params, table, sizeof(table) / sizeof(table[0]), &p) ||
	    !rpc_volume_backend(req, p.backend, &backend)) {
		return;
	}
	if (!keeld_volume_add_replica_valid(p.name, p.replica, p.replica_bdev, backend, why,
					    sizeof(why))) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS, "%s", why);
		return;
	}
	rpc_volume_not_started(req,
			       keeld_volume_add_replica(p.name, p.replica, p.replica_bdev, backend,
							p.force, rpc_volume_done, req));
}

static const struct keel_rpc_param g_replica_table[] = {
	{"name", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_replica_params, name), false},
	{"replica", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_replica_params, replica), false},
};

static void rpc_volume_remove_replica(struct keel_rpc_request *req, json_t *params)
{
	struct rpc_replica_params p = {0};

	if (!keel_rpc_decode_params(req, params, g_replica_table, 2, &p)) {
		return;
	}
	rpc_volume_not_started(
		req, keeld_volume_remove_replica(p.name, p.replica, rpc_volume_done, req));
}

static void rpc_volume_fault_replica(struct keel_rpc_request *req, json_t *params)
{
	struct rpc_replica_params p = {0};

	if (!keel_rpc_decode_params(req, params, g_replica_table, 2, &p)) {
		return;
	}
	rpc_volume_not_started(req,
			       keeld_volume_fault_replica(p.name, p.replica, rpc_volume_done, req));
}

void rpc_volume_register(void)
{
	keel_rpc_register_method("volume_create", rpc_volume_create,
				 "create a replicated volume {name, size, replicas: [paths], "
				 "force?, backend?: aio|uring} (or replica_bdevs: [bdevs], a "
				 "test hook)");
	keel_rpc_register_method("volume_destroy", rpc_volume_destroy,
				 "stop a volume's exports and the volume {name, wipe?}; the files "
				 "stay");
	keel_rpc_register_method("volume_list", rpc_volume_list, "list volumes");
	keel_rpc_register_method("volume_get", rpc_volume_get,
				 "one volume: state, size, replicas, exports {name}");
	keel_rpc_register_method("volume_add_replica", rpc_volume_add_replica,
				 "add a replica file {name, replica, force?, backend?: "
				 "aio|uring}");
	keel_rpc_register_method("volume_remove_replica", rpc_volume_remove_replica,
				 "remove a replica {name, replica (its path)}");
	keel_rpc_register_method("volume_fault_replica", rpc_volume_fault_replica,
				 "take a replica out of service {name, replica (its path)}");
}
