/*
 * JSON-RPC methods of the NBD client bdev (bdev/nbd_client): create and delete a bdev
 * that is an export of an NBD server, here or on another host. Decode, call, encode.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "keel/bdev_nbd_client.h"
#include "keel/log.h"
#include "keel/rpc.h"
#include "rpc_methods.h"

struct rpc_nbdc_params {
	const char *name;
	const char *uri;
	uint32_t timeout_ms;
};

struct rpc_nbdc_ctx {
	struct keel_rpc_request *req;
	char *name;
};

static void rpc_nbdc_created(void *cb_arg, int status, struct keel_bdev *bdev)
{
	struct rpc_nbdc_ctx *ctx = cb_arg;

	if (status == 0) {
		KEEL_NOTICELOG("rpc: nbd_client bdev %s created", ctx->name);
		keel_rpc_send_result(ctx->req, json_string(ctx->name));
	} else {
		keel_rpc_send_error(ctx->req, status, "cannot connect nbd_client bdev '%s': %s",
				    ctx->name, keel_bdev_nbd_client_last_error());
	}
	free(ctx->name);
	free(ctx);
}

static void rpc_bdev_nbd_client_create(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"name", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_nbdc_params, name), false},
		{"uri", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_nbdc_params, uri), false},
		{"timeout_ms", KEEL_RPC_PARAM_UINT32, offsetof(struct rpc_nbdc_params, timeout_ms),
		 true},
	};
	struct rpc_nbdc_params p = {NULL, NULL, 0};
	struct keel_bdev_nbd_client_opts opts;
	struct rpc_nbdc_ctx *ctx;
	int rc;

	if (!keel_rpc_decode_params(req, params, table, 3, &p)) {
		return;
	}
	if (!keel_bdev_nbd_client_is_uri(p.uri)) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "uri: '%s' is not an NBD URI: use nbd://HOST[:PORT]/EXPORT, "
				    "nbds://..., or nbd+unix:///EXPORT?socket=PATH",
				    p.uri);
		return;
	}
	if (p.timeout_ms != 0 && (p.timeout_ms < KEEL_NBD_CLIENT_TIMEOUT_MS_MIN ||
				  p.timeout_ms > KEEL_NBD_CLIENT_TIMEOUT_MS_MAX)) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "timeout_ms: %u is out of range %u..%u (0: default %u)",
				    p.timeout_ms, KEEL_NBD_CLIENT_TIMEOUT_MS_MIN,
				    KEEL_NBD_CLIENT_TIMEOUT_MS_MAX,
				    KEEL_NBD_CLIENT_TIMEOUT_MS_DEFAULT);
		return;
	}
	if (p.name[0] == '\0' || strlen(p.name) > KEEL_BDEV_NAME_MAX || strpbrk(p.name, "/ \t\n")) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "name: a bdev name has 1 to %d characters, no '/' or spaces",
				    KEEL_BDEV_NAME_MAX);
		return;
	}
	if (keel_bdev_get_by_name(p.name) != NULL) {
		keel_rpc_send_error(req, -EEXIST,
				    "bdev '%s' already exists: choose another name or delete "
				    "it first",
				    p.name);
		return;
	}
	ctx = calloc(1, sizeof(*ctx));
	if (ctx == NULL || (ctx->name = strdup(p.name)) == NULL) {
		free(ctx);
		keel_rpc_send_error(req, -ENOMEM, "out of memory");
		return;
	}
	ctx->req = req;
	opts.name = p.name;
	opts.uri = p.uri;
	opts.timeout_ms = p.timeout_ms;
	rc = keel_bdev_nbd_client_create(&opts, rpc_nbdc_created, ctx);
	if (rc != 0) {
		keel_rpc_send_error(req, rc, "cannot create nbd_client bdev '%s': %s", p.name,
				    strerror(-rc));
		free(ctx->name);
		free(ctx);
	}
}

static void rpc_nbdc_deleted(void *cb_arg, int status)
{
	struct keel_rpc_request *req = cb_arg;

	if (status != 0) {
		keel_rpc_send_error(req, status, "delete failed: %s", strerror(-status));
		return;
	}
	keel_rpc_send_result(req, json_true());
}

static void rpc_bdev_nbd_client_delete(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"name", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_nbdc_params, name), false},
	};
	struct rpc_nbdc_params p = {NULL, NULL, 0};

	if (!keel_rpc_decode_params(req, params, table, 1, &p)) {
		return;
	}
	if (keel_bdev_nbd_client_delete(p.name, rpc_nbdc_deleted, req) != 0) {
		keel_rpc_send_error(req, -ENODEV, "no nbd_client bdev named '%s'", p.name);
	}
}

void rpc_nbd_client_register(void)
{
	keel_rpc_register_method("bdev_nbd_client_create", rpc_bdev_nbd_client_create,
				 "NBD client bdev {name, uri, timeout_ms?=5000}");
	keel_rpc_register_method("bdev_nbd_client_delete", rpc_bdev_nbd_client_delete,
				 "Delete NBD client bdev {name}");
}
