/*
 * NBD RPC methods: socket exports (nbd_start_export, nbd_stop_export,
 * nbd_get_exports) and the kernel-device methods (nbd_*_disk), which answer that the
 * kernel frontend is not built yet.
 *
 * Every failure is sent as its negative errno with a message that says what to do,
 * because the message is what keelctl prints to a person.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/log.h"
#include "keel/nbd.h"
#include "keel/rpc.h"
#include "rpc_methods.h"

struct rpc_nbd_start {
	const char *bdev_name;
	const char *name;
	const char *socket;
	const char *tcp;
	bool read_only;
};

struct rpc_nbd_start_ctx {
	struct keel_rpc_request *req;
	char name[KEEL_NBD_EXPORT_NAME_MAX + 1];
	char bdev_name[KEEL_NBD_EXPORT_NAME_MAX + 1];
	char where[512];
};

static void rpc_nbd_send_start_error(struct keel_rpc_request *req, const char *name,
				     const char *bdev_name, const char *where, int rc, bool async)
{
	if (rc == -EEXIST && async) {
		keel_rpc_send_error(req, rc, "%s exists and is not a socket: remove it or choose "
				    "another path", where);
		return;
	}
	switch (rc) {
	case -ENODEV:
		keel_rpc_send_error(req, rc, "bdev '%s' not found (or removed while starting): "
				    "create it first, see bdev list", bdev_name);
		break;
	case -EEXIST:
		keel_rpc_send_error(req, rc, "export '%s' already exists: choose another name "
				    "or stop it first", name);
		break;
	case -EADDRINUSE:
		keel_rpc_send_error(req, rc, "%s is already in use by another server or export: "
				    "stop it or choose another address", where);
		break;
	case -EPERM:
		keel_rpc_send_error(req, rc, "bdev '%s' is claimed by a module and cannot be "
				    "opened for writing: export it with read_only", bdev_name);
		break;
	case -EINVAL:
		keel_rpc_send_error(req, rc, "invalid export: the name must have 1-256 printable "
				    "characters without spaces or '/', socket paths at most 107 "
				    "bytes, tcp HOST:PORT with a numeric host");
		break;
	case -ESHUTDOWN:
		keel_rpc_send_error(req, rc, "keeld is shutting down");
		break;
	default:
		keel_rpc_send_error(req, rc, "cannot export '%s' on %s: %s", bdev_name, where,
				    strerror(-rc));
		break;
	}
}

static void rpc_nbd_start_done(void *cb_arg, int status)
{
	struct rpc_nbd_start_ctx *ctx = cb_arg;

	if (status != 0) {
		rpc_nbd_send_start_error(ctx->req, ctx->name, ctx->bdev_name, ctx->where, status,
					 true);
	} else {
		keel_rpc_send_result(ctx->req, json_string(ctx->name));
	}
	free(ctx);
}

static void rpc_nbd_start_export(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"bdev_name", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_nbd_start, bdev_name), false},
		{"name", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_nbd_start, name), true},
		{"socket", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_nbd_start, socket), true},
		{"tcp", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_nbd_start, tcp), true},
		{"read_only", KEEL_RPC_PARAM_BOOL, offsetof(struct rpc_nbd_start, read_only), true},
	};
	struct rpc_nbd_start p = {0};
	struct keel_nbd_export_opts opts = {0};
	struct rpc_nbd_start_ctx *ctx;
	const char *name;
	int rc;

	if (!keel_rpc_decode_params(req, params, table, sizeof(table) / sizeof(table[0]), &p)) {
		return;
	}
	if ((p.socket == NULL || p.socket[0] == '\0') && (p.tcp == NULL || p.tcp[0] == '\0')) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "give socket (a unix socket path) or tcp (HOST:PORT), or both");
		return;
	}
	name = (p.name != NULL && p.name[0] != '\0') ? p.name : p.bdev_name;
	if (!keel_nbd_export_name_is_valid(name)) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "name: '%.64s' is not a valid export name: 1-256 printable "
				    "characters without spaces or '/'", name);
		return;
	}
	ctx = calloc(1, sizeof(*ctx));
	if (ctx == NULL) {
		keel_rpc_send_error(req, -ENOMEM, "out of memory");
		return;
	}
	ctx->req = req;
	snprintf(ctx->name, sizeof(ctx->name), "%s", name);
	snprintf(ctx->bdev_name, sizeof(ctx->bdev_name), "%s", p.bdev_name);
	snprintf(ctx->where, sizeof(ctx->where), "%s%s%s%s%s",
		 p.socket ? "socket " : "", p.socket ? p.socket : "",
		 p.socket && p.tcp ? " / " : "", p.tcp ? "tcp " : "", p.tcp ? p.tcp : "");
	opts.bdev_name = p.bdev_name;
	opts.name = name;
	opts.socket_path = p.socket;
	opts.tcp = p.tcp;
	opts.read_only = p.read_only;
	rc = keel_nbd_export_start(&opts, rpc_nbd_start_done, ctx);
	if (rc != 0) {
		rpc_nbd_send_start_error(req, ctx->name, ctx->bdev_name, ctx->where, rc, false);
		free(ctx);
	}
}

static void rpc_nbd_stop_done(void *cb_arg, int status)
{
	struct keel_rpc_request *req = cb_arg;

	if (status != 0) {
		keel_rpc_send_error(req, status, "stopping the export failed: %s", strerror(-status));
		return;
	}
	keel_rpc_send_result(req, NULL);
}

static void rpc_nbd_stop_export(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"name", KEEL_RPC_PARAM_STRING, 0, false},
	};
	const char *name = NULL;
	int rc;

	if (!keel_rpc_decode_params(req, params, table, 1, &name)) {
		return;
	}
	rc = keel_nbd_export_stop(name, rpc_nbd_stop_done, req);
	if (rc == -ENOENT) {
		keel_rpc_send_error(req, rc, "export '%s' not found (or already stopping): see "
				    "nbd_get_exports", name);
	} else if (rc != 0) {
		keel_rpc_send_error(req, rc, "cannot stop export '%s': %s", name, strerror(-rc));
	}
}

static json_t *rpc_nbd_string_or_null(const char *s)
{
	return s != NULL ? json_string(s) : json_null();
}

static void rpc_nbd_get_exports(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"name", KEEL_RPC_PARAM_STRING, 0, true},
	};
	const char *name = NULL;
	struct keel_nbd_export *exp;
	json_t *arr;

	if (!keel_rpc_decode_params(req, params, table, 1, &name)) {
		return;
	}
	if (name != NULL && keel_nbd_export_find(name) == NULL) {
		keel_rpc_send_error(req, -ENOENT, "export '%s' not found", name);
		return;
	}
	arr = json_array();
	for (exp = keel_nbd_export_first(); exp != NULL; exp = keel_nbd_export_next(exp)) {
		if (name != NULL && strcmp(name, keel_nbd_export_get_name(exp)) != 0) {
			continue;
		}
		json_array_append_new(arr, json_pack("{s:s, s:s, s:o, s:o, s:b, s:I}",
			"name", keel_nbd_export_get_name(exp),
			"bdev_name", keel_nbd_export_get_bdev_name(exp),
			"socket", rpc_nbd_string_or_null(keel_nbd_export_get_socket_path(exp)),
			"tcp", rpc_nbd_string_or_null(keel_nbd_export_get_tcp(exp)),
			"read_only", keel_nbd_export_is_read_only(exp),
			"connections", (json_int_t)keel_nbd_export_get_connection_count(exp)));
	}
	keel_rpc_send_result(req, arr);
}

/* The kernel frontend (/dev/nbdN over netlink) is a later step. */
static void rpc_nbd_disk_unavailable(struct keel_rpc_request *req, json_t *params)
{
	keel_rpc_send_error(req, -ENODEV, "the kernel NBD frontend is not built yet; use "
			    "nbd_start_export for socket exports");
}

static void rpc_nbd_get_disks(struct keel_rpc_request *req, json_t *params)
{
	keel_rpc_send_result(req, json_array());
}

void rpc_nbd_register(void)
{
	keel_rpc_register_method("nbd_start_export", rpc_nbd_start_export,
				 "export a bdev over NBD: {bdev_name, name?, socket?, tcp?, read_only?}");
	keel_rpc_register_method("nbd_stop_export", rpc_nbd_stop_export,
				 "stop an NBD export and close its connections: {name}");
	keel_rpc_register_method("nbd_get_exports", rpc_nbd_get_exports,
				 "list NBD exports: {name?}");
	keel_rpc_register_method("nbd_start_disk", rpc_nbd_disk_unavailable,
				 "attach a bdev to /dev/nbdN (not built yet)");
	keel_rpc_register_method("nbd_stop_disk", rpc_nbd_disk_unavailable,
				 "detach /dev/nbdN (not built yet)");
	keel_rpc_register_method("nbd_get_disks", rpc_nbd_get_disks,
				 "list kernel NBD devices (none until the kernel frontend exists)");
}
