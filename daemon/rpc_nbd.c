/*
 * NBD RPC methods: socket exports (nbd_start_export, nbd_stop_export,
 * nbd_get_exports) and kernel devices (nbd_start_disk, nbd_stop_disk, nbd_get_disks;
 * SPDK's names and parameters).
 *
 * Every failure is sent as its negative errno with a message that says what to do,
 * because the message is what keelctl prints to a person.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
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
	const char *tls;
	const char *tls_psk_file;
	const char *tls_certs_dir;
	bool tls_verify_client;
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
	if (async && keel_nbd_export_start_error() != NULL) {
		keel_rpc_send_error(
			req, rc,
			"cannot load the TLS credentials: %s; make a key with 'psktool "
			"-u USER -p FILE' or certificates with certtool (see docs/nbd.md)",
			keel_nbd_export_start_error());
		return;
	}
	if (rc == -EACCES && !async) {
		keel_rpc_send_error(
			req, rc,
			"%s is not a loopback address: serving a disk to the network "
			"needs TLS (tls \"require\" with tls_psk_file or tls_certs_dir), "
			"or tls \"off\" given explicitly to serve it in plaintext",
			where);
		return;
	}
	if (rc == -EEXIST && async) {
		keel_rpc_send_error(req, rc,
				    "%s exists and is not a socket: remove it or choose "
				    "another path",
				    where);
		return;
	}
	switch (rc) {
	case -ENODEV:
		keel_rpc_send_error(req, rc,
				    "bdev '%s' not found (or removed while starting): "
				    "create it first, see bdev list",
				    bdev_name);
		break;
	case -EEXIST:
		keel_rpc_send_error(req, rc,
				    "export '%s' already exists: choose another name "
				    "or stop it first",
				    name);
		break;
	case -EADDRINUSE:
		keel_rpc_send_error(req, rc,
				    "%s is already in use by another server or export: "
				    "stop it or choose another address",
				    where);
		break;
	case -EPERM:
		keel_rpc_send_error(req, rc,
				    "bdev '%s' is claimed by a module and cannot be "
				    "opened for writing: export it with read_only",
				    bdev_name);
		break;
	case -EINVAL:
		keel_rpc_send_error(req, rc,
				    "invalid export: the name must have 1-256 printable "
				    "characters without spaces or '/', socket paths at most 107 "
				    "bytes, tcp HOST:PORT with a numeric host; tls on/require need "
				    "tls_psk_file or tls_certs_dir, tls off takes neither, "
				    "tls_verify_client needs tls_certs_dir");
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
		{"bdev_name", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_nbd_start, bdev_name),
		 false},
		{"name", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_nbd_start, name), true},
		{"socket", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_nbd_start, socket), true},
		{"tcp", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_nbd_start, tcp), true},
		{"read_only", KEEL_RPC_PARAM_BOOL, offsetof(struct rpc_nbd_start, read_only), true},
		{"tls", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_nbd_start, tls), true},
		{"tls_psk_file", KEEL_RPC_PARAM_STRING,
		 offsetof(struct rpc_nbd_start, tls_psk_file), true},
		{"tls_certs_dir", KEEL_RPC_PARAM_STRING,
		 offsetof(struct rpc_nbd_start, tls_certs_dir), true},
		{"tls_verify_client", KEEL_RPC_PARAM_BOOL,
		 offsetof(struct rpc_nbd_start, tls_verify_client), true},
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
	if (p.tls != NULL && !keel_nbd_tls_mode_parse(p.tls, &opts.tls)) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "tls: '%.32s' is not a TLS mode: use off, on or require",
				    p.tls);
		return;
	}
	name = (p.name != NULL && p.name[0] != '\0') ? p.name : p.bdev_name;
	if (!keel_nbd_export_name_is_valid(name)) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "name: '%.64s' is not a valid export name: 1-256 printable "
				    "characters without spaces or '/'",
				    name);
		return;
	}
	ctx = rpc_ctx_calloc(req, sizeof(*ctx));
	if (ctx == NULL) {
		return;
	}
	ctx->req = req;
	snprintf(ctx->name, sizeof(ctx->name), "%s", name);
	snprintf(ctx->bdev_name, sizeof(ctx->bdev_name), "%s", p.bdev_name);
	snprintf(ctx->where, sizeof(ctx->where), "%s%s%s%s%s", p.socket ? "socket " : "",
		 p.socket ? p.socket : "", p.socket && p.tcp ? " / " : "", p.tcp ? "tcp " : "",
		 p.tcp ? p.tcp : "");
	opts.bdev_name = p.bdev_name;
	opts.name = name;
	opts.socket_path = p.socket;
	opts.tcp = p.tcp;
	opts.read_only = p.read_only;
	opts.tls_psk_file = p.tls_psk_file;
	opts.tls_certs_dir = p.tls_certs_dir;
	opts.tls_verify_client = p.tls_verify_client;
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
		keel_rpc_send_error(req, status, "stopping the export failed: %s",
				    strerror(-status));
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
		keel_rpc_send_error(req, rc,
				    "export '%s' not found (or already stopping): see "
				    "nbd_get_exports",
				    name);
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
		uint64_t bytes_in, bytes_out;
		json_t *o;

		if (name != NULL && strcmp(name, keel_nbd_export_get_name(exp)) != 0) {
			continue;
		}
		keel_nbd_export_get_traffic(exp, &bytes_in, &bytes_out);
		o = json_pack("{s:s, s:s, s:o, s:o, s:b, s:I, s:I, s:I}", "name",
			      keel_nbd_export_get_name(exp), "bdev_name",
			      keel_nbd_export_get_bdev_name(exp), "socket",
			      rpc_nbd_string_or_null(keel_nbd_export_get_socket_path(exp)), "tcp",
			      rpc_nbd_string_or_null(keel_nbd_export_get_tcp(exp)), "read_only",
			      keel_nbd_export_is_read_only(exp), "connections",
			      (json_int_t)keel_nbd_export_get_connection_count(exp), "bytes_in",
			      (json_int_t)bytes_in, "bytes_out", (json_int_t)bytes_out);
		json_object_set_new(
			o, "tls",
			json_string(keel_nbd_tls_mode_name(keel_nbd_export_get_tls(exp))));
		json_object_set_new(o, "tls_psk_file",
				    rpc_nbd_string_or_null(keel_nbd_export_get_tls_psk_file(exp)));
		json_object_set_new(o, "tls_certs_dir",
				    rpc_nbd_string_or_null(keel_nbd_export_get_tls_certs_dir(exp)));
		json_object_set_new(o, "tls_verify_client",
				    json_boolean(keel_nbd_export_get_tls_verify_client(exp)));
		json_array_append_new(arr, o);
	}
	keel_rpc_send_result(req, arr);
}

/* ------------------------------------------------------------------------------ */
/* Kernel devices (/dev/nbdN)                                                      */
/* ------------------------------------------------------------------------------ */

/* "/dev/nbdN" or "nbdN" -> N. \return 0 or -EINVAL. */
static int rpc_nbd_parse_device(const char *dev, uint32_t *index)
{
	unsigned long v;
	char *end;

	if (strncmp(dev, "/dev/", 5) == 0) {
		dev += 5;
	}
	if (strncmp(dev, "nbd", 3) != 0 || dev[3] < '0' || dev[3] > '9') {
		return -EINVAL;
	}
	errno = 0;
	v = strtoul(dev + 3, &end, 10);
	if (errno != 0 || *end != '\0' || v > INT32_MAX) {
		return -EINVAL;
	}
	*index = (uint32_t)v;
	return 0;
}

struct rpc_nbd_start_disk {
	const char *bdev_name;
	const char *nbd_device;
	uint32_t io_timeout_s;
	uint32_t dead_conn_timeout_s;
	bool read_only;
};

static void rpc_nbd_start_disk_done(void *cb_arg, int status, uint32_t index, const char *err)
{
	struct keel_rpc_request *req = cb_arg;
	char dev[32];

	if (status != 0) {
		keel_rpc_send_error(req, status, "%s", err);
		return;
	}
	snprintf(dev, sizeof(dev), "/dev/nbd%u", index);
	keel_rpc_send_result(req, json_string(dev));
}

static void rpc_nbd_start_disk(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"bdev_name", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_nbd_start_disk, bdev_name),
		 false},
		{"nbd_device", KEEL_RPC_PARAM_STRING,
		 offsetof(struct rpc_nbd_start_disk, nbd_device), true},
		{"io_timeout_s", KEEL_RPC_PARAM_UINT32,
		 offsetof(struct rpc_nbd_start_disk, io_timeout_s), true},
		{"dead_conn_timeout_s", KEEL_RPC_PARAM_UINT32,
		 offsetof(struct rpc_nbd_start_disk, dead_conn_timeout_s), true},
		{"read_only", KEEL_RPC_PARAM_BOOL, offsetof(struct rpc_nbd_start_disk, read_only),
		 true},
	};
	struct rpc_nbd_start_disk p = {0};
	struct keel_nbd_disk_opts opts;
	uint32_t index;
	int rc;

	keel_nbd_disk_opts_init(&opts);
	p.dead_conn_timeout_s = opts.dead_conn_timeout_s;
	if (!keel_rpc_decode_params(req, params, table, sizeof(table) / sizeof(table[0]), &p)) {
		return;
	}
	if (p.io_timeout_s > KEEL_NBD_DISK_MAX_TIMEOUT_S ||
	    p.dead_conn_timeout_s > KEEL_NBD_DISK_MAX_TIMEOUT_S) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "io_timeout_s and "
				    "dead_conn_timeout_s must be at most %u seconds (7 days)",
				    KEEL_NBD_DISK_MAX_TIMEOUT_S);
		return;
	}
	opts.bdev_name = p.bdev_name;
	opts.io_timeout_s = p.io_timeout_s;
	opts.dead_conn_timeout_s = p.dead_conn_timeout_s;
	opts.read_only = p.read_only;
	if (p.nbd_device != NULL && p.nbd_device[0] != '\0') {
		if (rpc_nbd_parse_device(p.nbd_device, &index) != 0) {
			keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
					    "nbd_device: '%.64s' is not "
					    "an nbd device: give /dev/nbdN",
					    p.nbd_device);
			return;
		}
		opts.index = (int32_t)index;
	}
	rc = keel_nbd_disk_start(&opts, rpc_nbd_start_disk_done, req);
	switch (rc) {
	case 0:
		break;
	case -ENODEV:
		keel_rpc_send_error(req, rc, "bdev '%s' not found: create it first, see bdev list",
				    p.bdev_name);
		break;
	case -EBUSY:
		keel_rpc_send_error(req, rc,
				    "%s is already served by this keeld: stop it first "
				    "(nbd_stop_disk) or choose another device",
				    p.nbd_device);
		break;
	case -EPERM:
		keel_rpc_send_error(req, rc,
				    "bdev '%s' is claimed by a module and cannot be "
				    "opened for writing: use read_only",
				    p.bdev_name);
		break;
	case -ESHUTDOWN:
		keel_rpc_send_error(req, rc, "keeld is shutting down");
		break;
	default:
		keel_rpc_send_error(req, rc, "cannot serve bdev '%s' as a kernel device: %s",
				    p.bdev_name, strerror(-rc));
		break;
	}
}

static void rpc_nbd_stop_disk(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"nbd_device", KEEL_RPC_PARAM_STRING, 0, false},
	};
	const char *dev = NULL;
	uint32_t index;
	int rc;

	if (!keel_rpc_decode_params(req, params, table, 1, &dev)) {
		return;
	}
	if (rpc_nbd_parse_device(dev, &index) != 0) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "nbd_device: '%.64s' is not an "
				    "nbd device: give /dev/nbdN",
				    dev);
		return;
	}
	rc = keel_nbd_disk_stop(index, rpc_nbd_stop_done, req);
	if (rc == -ENOENT) {
		keel_rpc_send_error(req, rc,
				    "/dev/nbd%u is not served by this keeld (or already "
				    "stopping): see nbd_get_disks",
				    index);
	} else if (rc != 0) {
		keel_rpc_send_error(req, rc, "cannot stop /dev/nbd%u: %s", index, strerror(-rc));
	}
}

static void rpc_nbd_get_disks(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"nbd_device", KEEL_RPC_PARAM_STRING, 0, true},
	};
	const char *dev = NULL;
	struct keel_nbd_disk *disk;
	uint32_t index = 0;
	json_t *arr;

	if (!keel_rpc_decode_params(req, params, table, 1, &dev)) {
		return;
	}
	if (dev != NULL && rpc_nbd_parse_device(dev, &index) != 0) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "nbd_device: '%.64s' is not an "
				    "nbd device: give /dev/nbdN",
				    dev);
		return;
	}
	arr = json_array();
	for (disk = keel_nbd_disk_first(); disk != NULL; disk = keel_nbd_disk_next(disk)) {
		int32_t idx = keel_nbd_disk_get_index(disk);
		char name[32];

		if (dev != NULL && idx != (int32_t)index) {
			continue;
		}
		if (idx >= 0) {
			snprintf(name, sizeof(name), "/dev/nbd%d", idx);
		}
		json_array_append_new(
			arr, json_pack("{s:o, s:s, s:s, s:b, s:I, s:s}", "nbd_device",
				       idx >= 0 ? json_string(name) : json_null(), "bdev_name",
				       keel_nbd_disk_get_bdev_name(disk), "state",
				       keel_nbd_disk_get_state(disk), "read_only",
				       keel_nbd_disk_is_read_only(disk), "connections",
				       (json_int_t)keel_nbd_disk_get_connection_count(disk),
				       "backend_id", keel_nbd_disk_get_backend_id(disk)));
	}
	if (dev != NULL && json_array_size(arr) == 0) {
		json_decref(arr);
		keel_rpc_send_error(req, -ENOENT, "/dev/nbd%u is not served by this keeld", index);
		return;
	}
	keel_rpc_send_result(req, arr);
}

static json_t *rpc_nbd_options_json(void)
{
	struct keel_nbd_options o;

	keel_nbd_get_options(&o);
	return json_pack("{s:I, s:I, s:I, s:I, s:I}", "buffer_budget", (json_int_t)o.buffer_budget,
			 "max_connections", (json_int_t)o.max_connections, "max_export_connections",
			 (json_int_t)o.max_export_connections, "handshake_timeout_ms",
			 (json_int_t)o.handshake_timeout_ms, "stall_timeout_ms",
			 (json_int_t)o.stall_timeout_ms);
}

static void rpc_nbd_set_options(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"buffer_budget", KEEL_RPC_PARAM_UINT64,
		 offsetof(struct keel_nbd_options, buffer_budget), true},
		{"max_connections", KEEL_RPC_PARAM_UINT32,
		 offsetof(struct keel_nbd_options, max_connections), true},
		{"max_export_connections", KEEL_RPC_PARAM_UINT32,
		 offsetof(struct keel_nbd_options, max_export_connections), true},
		{"handshake_timeout_ms", KEEL_RPC_PARAM_UINT32,
		 offsetof(struct keel_nbd_options, handshake_timeout_ms), true},
		{"stall_timeout_ms", KEEL_RPC_PARAM_UINT32,
		 offsetof(struct keel_nbd_options, stall_timeout_ms), true},
	};
	struct keel_nbd_options o;
	char err[200];

	keel_nbd_get_options(&o); /* what is not given stays */
	if (!keel_rpc_decode_params(req, params, table, sizeof(table) / sizeof(table[0]), &o)) {
		return;
	}
	if (keel_nbd_set_options(&o, err, sizeof(err)) != 0) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS, "%s", err);
		return;
	}
	keel_rpc_send_result(req, rpc_nbd_options_json());
}

static void rpc_nbd_get_options(struct keel_rpc_request *req, json_t *params)
{
	if (!keel_rpc_decode_params(req, params, NULL, 0, NULL)) {
		return;
	}
	keel_rpc_send_result(req, rpc_nbd_options_json());
}

static void rpc_nbd_get_stats(struct keel_rpc_request *req, json_t *params)
{
	struct keel_nbd_stats st;
	json_t *res;

	if (!keel_rpc_decode_params(req, params, NULL, 0, NULL)) {
		return;
	}
	keel_nbd_get_stats(&st);
	res = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "connections",
			(json_int_t)st.connections, "connections_refused",
			(json_int_t)st.connections_refused, "buffer_bytes",
			(json_int_t)st.buffer_bytes, "buffer_waits", (json_int_t)st.buffer_waits,
			"handshake_timeouts", (json_int_t)st.handshake_timeouts, "stall_timeouts",
			(json_int_t)st.stall_timeouts, "cached_buffer_bytes",
			(json_int_t)st.cached_buffer_bytes);
	json_object_set_new(res, "tls_handshakes", json_integer((json_int_t)st.tls_handshakes));
	json_object_set_new(res, "tls_failures", json_integer((json_int_t)st.tls_failures));
	keel_rpc_send_result(req, res);
}

void rpc_nbd_register(void)
{
	keel_rpc_register_method(
		"nbd_start_export", rpc_nbd_start_export,
		"export a bdev over NBD: {bdev_name, name?, socket?, tcp?, read_only?, tls?, "
		"tls_psk_file?, tls_certs_dir?, tls_verify_client?}");
	keel_rpc_register_method("nbd_stop_export", rpc_nbd_stop_export,
				 "stop an NBD export and close its connections: {name}");
	keel_rpc_register_method("nbd_get_exports", rpc_nbd_get_exports,
				 "list NBD exports: {name?}");
	keel_rpc_register_method(
		"nbd_start_disk", rpc_nbd_start_disk,
		"serve a bdev as a kernel device /dev/nbdN: {bdev_name, nbd_device?, "
		"io_timeout_s?, dead_conn_timeout_s?, read_only?}");
	keel_rpc_register_method("nbd_stop_disk", rpc_nbd_stop_disk,
				 "disconnect /dev/nbdN and close its bdev: {nbd_device}");
	keel_rpc_register_method("nbd_get_disks", rpc_nbd_get_disks,
				 "list kernel NBD devices: {nbd_device?}");
	keel_rpc_register_method(
		"nbd_set_options", rpc_nbd_set_options,
		"set NBD limits, each optional: {buffer_budget?, max_connections?, "
		"max_export_connections?, handshake_timeout_ms?, stall_timeout_ms?}");
	keel_rpc_register_method("nbd_get_options", rpc_nbd_get_options, "the NBD limits in force");
	keel_rpc_register_method("nbd_get_stats", rpc_nbd_get_stats,
				 "NBD connections, buffers and what the limits refused or closed");
}
