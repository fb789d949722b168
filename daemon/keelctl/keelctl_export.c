/*
 * keelctl export: serve a bdev over NBD (unix socket, TCP) or to this machine's kernel
 * as /dev/nbdN or /dev/ublkbN, stop and list exports. The methods live in
 * daemon/rpc_nbd.c and daemon/rpc_ublk.c.
 *
 * The kernel device of `export start BDEV --nbd` is never guessed from the next word:
 * --nbd is a flag, and the device is either the second positional argument
 * (`--nbd /dev/nbd0`, the documented spelling), --nbd-device DEV or --nbd=DEV.
 */
#include <stdio.h>
#include <string.h>

#include "keelctl_commands.h"
#include "keelctl_table.h"
#include "keelctl_transport.h"

enum {
	EXPORT_OPT_SOCKET = 256,
	EXPORT_OPT_NAME,
	EXPORT_OPT_TCP,
	EXPORT_OPT_READ_ONLY,
	EXPORT_OPT_NBD,
	EXPORT_OPT_NBD_DEVICE,
	EXPORT_OPT_IO_TIMEOUT,
	EXPORT_OPT_DEAD_TIMEOUT,
	EXPORT_OPT_TLS,
	EXPORT_OPT_TLS_PSK,
	EXPORT_OPT_TLS_CERTS,
	EXPORT_OPT_TLS_VERIFY_CLIENT,
	EXPORT_OPT_UBLK,
	EXPORT_OPT_QUEUES,
	EXPORT_OPT_QUEUE_DEPTH,
};

static const char g_help_export[] =
	"Usage: keelctl export VERB ...\n"
	"  start BDEV --socket PATH [--name NAME] [--tcp HOST:PORT] [--read-only]\n"
	"        serve BDEV (a bdev or volume) over NBD on unix socket PATH (and TCP if\n"
	"        given); the export name defaults to the bdev name\n"
	"        [--tls off|on|require] [--tls-psk FILE] [--tls-certs DIR]: NBD over TLS\n"
	"        with a psktool key file or a directory with server-cert.pem and\n"
	"        server-key.pem; credentials alone mean --tls require. TCP on an address\n"
	"        other than loopback needs TLS, or --tls off to serve plaintext anyway.\n"
	"        [--tls-verify-client]: certificate clients must present a certificate\n"
	"        signed by the directory's ca-cert.pem\n"
	"  start BDEV --nbd [/dev/nbdN] [--read-only] [--io-timeout SEC] [--dead-timeout SEC]\n"
	"        serve BDEV to this machine's kernel as /dev/nbdN (root, nbd module loaded);\n"
	"        without a device the kernel picks a free one. The device may also be given\n"
	"        as --nbd-device /dev/nbdN or --nbd=/dev/nbdN. --dead-timeout (default 60):\n"
	"        how long the kernel holds I/O for a restarted keeld to reattach.\n"
	"  start BDEV --ublk [ID] [--queues N] [--queue-depth N]\n"
	"        serve BDEV to this machine's kernel as /dev/ublkbID (root, ublk_drv module\n"
	"        loaded); without ID the kernel picks one. One queue per reactor by default.\n"
	"  stop NAME     stop export NAME (clients are disconnected)\n"
	"  stop /dev/nbdN  disconnect the kernel device (unmount it first)\n"
	"  stop /dev/ublkbN  stop and delete the ublk device (unmount it first)\n"
	"  list          list exports and kernel devices (nbd and ublk)\n";

struct export_start_args {
	const char *bdev;
	const char *socket;
	const char *name;
	const char *tcp;
	const char *nbd_device;
	const char *io_timeout;
	const char *dead_timeout;
	const char *tls;
	const char *tls_psk;
	const char *tls_certs;
	const char *ublk_id;
	const char *queues;
	const char *queue_depth;
	bool ublk;
	bool nbd;
	bool read_only;
	bool tls_verify_client;
};

static void export_start_parse(int argc, char **argv, struct export_start_args *a)
{
	static const struct option options[] = {
		{"socket", required_argument, NULL, EXPORT_OPT_SOCKET},
		{"name", required_argument, NULL, EXPORT_OPT_NAME},
		{"tcp", required_argument, NULL, EXPORT_OPT_TCP},
		{"read-only", no_argument, NULL, EXPORT_OPT_READ_ONLY},
		{"nbd", optional_argument, NULL, EXPORT_OPT_NBD},
		{"nbd-device", required_argument, NULL, EXPORT_OPT_NBD_DEVICE},
		{"io-timeout", required_argument, NULL, EXPORT_OPT_IO_TIMEOUT},
		{"dead-timeout", required_argument, NULL, EXPORT_OPT_DEAD_TIMEOUT},
		{"tls", required_argument, NULL, EXPORT_OPT_TLS},
		{"tls-psk", required_argument, NULL, EXPORT_OPT_TLS_PSK},
		{"tls-certs", required_argument, NULL, EXPORT_OPT_TLS_CERTS},
		{"tls-verify-client", no_argument, NULL, EXPORT_OPT_TLS_VERIFY_CLIENT},
		{"ublk", optional_argument, NULL, EXPORT_OPT_UBLK},
		{"queues", required_argument, NULL, EXPORT_OPT_QUEUES},
		{"queue-depth", required_argument, NULL, EXPORT_OPT_QUEUE_DEPTH},
		KEELCTL_HELP_OPTION,
		{0},
	};
	struct keelctl_getopt g;
	int c;

	memset(a, 0, sizeof(*a));
	keelctl_getopt_init(&g, argc, argv, options, g_help_export, false);
	while ((c = keelctl_getopt_next(&g)) != -1) {
		switch (c) {
		case EXPORT_OPT_SOCKET:
			a->socket = g.value;
			break;
		case EXPORT_OPT_NAME:
			a->name = g.value;
			break;
		case EXPORT_OPT_TCP:
			a->tcp = g.value;
			break;
		case EXPORT_OPT_READ_ONLY:
			a->read_only = true;
			break;
		case EXPORT_OPT_IO_TIMEOUT:
			a->io_timeout = g.value;
			break;
		case EXPORT_OPT_DEAD_TIMEOUT:
			a->dead_timeout = g.value;
			break;
		case EXPORT_OPT_TLS:
			a->tls = g.value;
			break;
		case EXPORT_OPT_TLS_PSK:
			a->tls_psk = g.value;
			break;
		case EXPORT_OPT_TLS_CERTS:
			a->tls_certs = g.value;
			break;
		case EXPORT_OPT_TLS_VERIFY_CLIENT:
			a->tls_verify_client = true;
			break;
		case EXPORT_OPT_UBLK:
			a->ublk = true;
			a->ublk_id = g.value;
			break;
		case EXPORT_OPT_QUEUES:
			a->queues = g.value;
			break;
		case EXPORT_OPT_QUEUE_DEPTH:
			a->queue_depth = g.value;
			break;
		case EXPORT_OPT_NBD:
		case EXPORT_OPT_NBD_DEVICE:
			a->nbd = true;
			if (g.value != NULL) {
				a->nbd_device = g.value;
			}
			break;
		default:
			break;
		}
	}
	keelctl_need_pos(&g, 1, a->nbd || a->ublk ? 2 : 1);
	a->bdev = g.pos[0];
	if (a->ublk) {
		if (a->nbd || a->socket != NULL || a->tcp != NULL || a->name != NULL ||
		    a->read_only || a->io_timeout != NULL || a->dead_timeout != NULL) {
			keelctl_die(KEELCTL_EXIT_USAGE,
				    "--ublk takes only an id, --queues and --queue-depth");
		}
		if (g.npos == 2 && a->ublk_id != NULL) {
			keelctl_die_usage(g_help_export, "the id is given twice: '%s' and '%s'",
					  a->ublk_id, g.pos[1]);
		}
		if (g.npos == 2) {
			a->ublk_id = g.pos[1];
		}
		return;
	}
	if (a->queues != NULL || a->queue_depth != NULL) {
		keelctl_die(KEELCTL_EXIT_USAGE, "--queues and --queue-depth are for --ublk");
	}
	if (g.npos == 2 && a->nbd_device != NULL) {
		keelctl_die_usage(g_help_export, "the device is given twice: '%s' and '%s'",
				  a->nbd_device, g.pos[1]);
	}
	if (g.npos == 2) {
		a->nbd_device = g.pos[1];
	}
	if (a->nbd && (a->socket != NULL || a->tcp != NULL || a->name != NULL)) {
		keelctl_die(KEELCTL_EXIT_USAGE, "--nbd cannot be combined with --socket, --tcp "
						"or --name: a kernel device is named /dev/nbdN");
	}
	if (a->nbd && (a->tls != NULL || a->tls_psk != NULL || a->tls_certs != NULL ||
		       a->tls_verify_client)) {
		keelctl_die(KEELCTL_EXIT_USAGE, "--tls, --tls-psk, --tls-certs and "
						"--tls-verify-client are for socket "
						"exports: the kernel device is local");
	}
	if (a->tls != NULL && strcmp(a->tls, "off") != 0 && strcmp(a->tls, "on") != 0 &&
	    strcmp(a->tls, "require") != 0) {
		keelctl_die_usage(g_help_export, "--tls takes off, on or require, not '%s'",
				  a->tls);
	}
	if (!a->nbd && (a->io_timeout != NULL || a->dead_timeout != NULL)) {
		keelctl_die(KEELCTL_EXIT_USAGE, "--io-timeout and --dead-timeout are for --nbd");
	}
	if (!a->nbd && a->socket == NULL && a->tcp == NULL) {
		keelctl_die(KEELCTL_EXIT_USAGE,
			    "export start needs --socket PATH (or --tcp "
			    "HOST:PORT, or --nbd [/dev/nbdN] for a kernel device)");
	}
}

static int export_start_disk(const struct keelctl_ctx *ctx, const struct export_start_args *a)
{
	json_t *params = json_pack("{s:s}", "bdev_name", a->bdev);
	json_t *result;

	if (a->nbd_device != NULL) {
		json_object_set_new(params, "nbd_device", json_string(a->nbd_device));
	}
	if (a->io_timeout != NULL) {
		json_object_set_new(params, "io_timeout_s",
				    json_integer(keelctl_parse_u32(a->io_timeout, "--io-timeout")));
	}
	if (a->dead_timeout != NULL) {
		json_object_set_new(
			params, "dead_conn_timeout_s",
			json_integer(keelctl_parse_u32(a->dead_timeout, "--dead-timeout")));
	}
	if (a->read_only) {
		json_object_set_new(params, "read_only", json_true());
	}
	result = keelctl_call("nbd_start_disk", params);
	if (ctx->json) {
		keelctl_print_json(result);
	} else {
		printf("serving %s as %s\n", a->bdev,
		       json_is_string(result) ? json_string_value(result) : "?");
	}
	json_decref(result);
	return 0;
}

static int export_start_ublk(const struct keelctl_ctx *ctx, const struct export_start_args *a)
{
	json_t *params = json_pack("{s:s}", "bdev_name", a->bdev);
	json_t *result;

	if (a->ublk_id != NULL) {
		const char *id = strncmp(a->ublk_id, "/dev/ublkb", 10) == 0 ? a->ublk_id + 10
									    : a->ublk_id;

		json_object_set_new(params, "ublk_id",
				    json_integer(keelctl_parse_u32(id, "--ublk")));
	}
	if (a->queues != NULL) {
		json_object_set_new(params, "num_queues",
				    json_integer(keelctl_parse_u32(a->queues, "--queues")));
	}
	if (a->queue_depth != NULL) {
		json_object_set_new(
			params, "queue_depth",
			json_integer(keelctl_parse_u32(a->queue_depth, "--queue-depth")));
	}
	result = keelctl_call("ublk_start_disk", params);
	if (ctx->json) {
		keelctl_print_json(result);
	} else {
		printf("serving %s as /dev/ublkb%lld\n", a->bdev,
		       (long long)json_integer_value(result));
	}
	json_decref(result);
	return 0;
}

static int export_start(const struct keelctl_ctx *ctx, int argc, char **argv)
{
	struct export_start_args a;
	json_t *params, *result;

	export_start_parse(argc, argv, &a);
	if (a.ublk) {
		return export_start_ublk(ctx, &a);
	}
	if (a.nbd) {
		return export_start_disk(ctx, &a);
	}
	params = json_pack("{s:s}", "bdev_name", a.bdev);
	if (a.socket != NULL) {
		json_object_set_new(params, "socket", keelctl_abs_path(a.socket));
	}
	if (a.name != NULL) {
		json_object_set_new(params, "name", json_string(a.name));
	}
	if (a.tcp != NULL) {
		json_object_set_new(params, "tcp", json_string(a.tcp));
	}
	if (a.read_only) {
		json_object_set_new(params, "read_only", json_true());
	}
	if (a.tls != NULL) {
		json_object_set_new(params, "tls", json_string(a.tls));
	}
	if (a.tls_psk != NULL) {
		json_object_set_new(params, "tls_psk_file", keelctl_abs_path(a.tls_psk));
	}
	if (a.tls_certs != NULL) {
		json_object_set_new(params, "tls_certs_dir", keelctl_abs_path(a.tls_certs));
	}
	if (a.tls_verify_client) {
		json_object_set_new(params, "tls_verify_client", json_true());
	}
	result = keelctl_call("nbd_start_export", params);
	if (ctx->json) {
		keelctl_print_json(result);
	} else {
		printf("exporting %s as %s\n", a.bdev,
		       json_is_string(result) ? json_string_value(result)
					      : (a.name != NULL ? a.name : a.bdev));
	}
	json_decref(result);
	return 0;
}

static int export_stop(const struct keelctl_ctx *ctx, int argc, char **argv)
{
	struct keelctl_getopt g;
	json_t *result;
	const char *what;

	keelctl_getopt_positionals(&g, argc, argv, g_help_export, 1, 1);
	what = g.pos[0];
	/* Export names cannot contain '/', so a path is always a kernel device. */
	if (strncmp(what, "/dev/ublkb", 10) == 0) {
		result = keelctl_call("ublk_stop_disk", json_pack("{s:I}", "ublk_id",
								  (json_int_t)keelctl_parse_u32(
									  what + 10, "device")));
	} else if (strncmp(what, "/dev/", 5) == 0) {
		result = keelctl_call("nbd_stop_disk", json_pack("{s:s}", "nbd_device", what));
	} else {
		result = keelctl_call("nbd_stop_export", json_pack("{s:s}", "name", what));
	}
	if (ctx->json) {
		keelctl_print_json(result);
	} else {
		printf("stopped %s%s\n", what[0] == '/' ? "" : "export ", what);
	}
	json_decref(result);
	return 0;
}

/* Kernel devices join the exports' array (so scripts that read exports keep working),
 * named by their device; "nbd_device" tells them apart. */
static void export_list_json(json_t *exports, json_t *disks, json_t *ublks)
{
	json_t *e;
	size_t i;

	json_array_foreach(ublks, i, e) {
		json_t *d = json_deep_copy(e);

		json_object_set(d, "name", json_object_get(e, "ublk_device"));
		json_array_append_new(exports, d);
	}

	json_array_foreach(disks, i, e) {
		json_t *d = json_deep_copy(e);

		json_object_set(d, "name", json_object_get(e, "nbd_device"));
		json_array_append_new(exports, d);
	}
	keelctl_print_json(exports);
}

static void export_list_table(json_t *exports, json_t *disks, json_t *ublks)
{
	struct keelctl_table t = {.ncols = 7};
	json_t *e;
	size_t i;

	if (json_array_size(exports) == 0 && json_array_size(disks) == 0 &&
	    json_array_size(ublks) == 0) {
		printf("no exports\n");
		return;
	}
	keelctl_table_row(&t, "NAME", "BDEV", "SOCKET", "TCP", "READ-ONLY", "CLIENTS", "TLS");
	json_array_foreach(exports, i, e) {
		char conns[16];

		keelctl_table_row(
			&t, json_string_value(json_object_get(e, "name")),
			json_string_value(json_object_get(e, "bdev_name")),
			keelctl_str_or_dash(json_object_get(e, "socket")),
			keelctl_str_or_dash(json_object_get(e, "tcp")),
			json_is_true(json_object_get(e, "read_only")) ? "yes" : "no",
			keelctl_fmt_int(conns, sizeof(conns), json_object_get(e, "connections")),
			keelctl_str_or_dash(json_object_get(e, "tls")));
	}
	/* Kernel devices in the same table: the kernel is the client, with one connection
	 * per queue; SOCKET says what state the device is in. */
	json_array_foreach(disks, i, e) {
		char conns[16], where[48];

		snprintf(where, sizeof(where), "kernel (%s)",
			 keelctl_str_or_dash(json_object_get(e, "state")));
		keelctl_table_row(
			&t, keelctl_str_or_dash(json_object_get(e, "nbd_device")),
			json_string_value(json_object_get(e, "bdev_name")), where, "-",
			json_is_true(json_object_get(e, "read_only")) ? "yes" : "no",
			keelctl_fmt_int(conns, sizeof(conns), json_object_get(e, "connections")),
			"-");
	}
	/* ublk devices: one "connection" per queue. */
	json_array_foreach(ublks, i, e) {
		char conns[16], where[48];

		snprintf(where, sizeof(where), "ublk (%s)",
			 keelctl_str_or_dash(json_object_get(e, "state")));
		keelctl_table_row(
			&t, keelctl_str_or_dash(json_object_get(e, "ublk_device")),
			json_string_value(json_object_get(e, "bdev_name")), where, "-", "no",
			keelctl_fmt_int(conns, sizeof(conns), json_object_get(e, "num_queues")));
	}
	keelctl_table_print(&t);
}

static int export_list(const struct keelctl_ctx *ctx, int argc, char **argv)
{
	struct keelctl_getopt g;
	json_t *exports, *disks, *ublks;

	keelctl_getopt_positionals(&g, argc, argv, g_help_export, 0, 0);
	exports = keelctl_call("nbd_get_exports", NULL);
	disks = keelctl_call("nbd_get_disks", NULL);
	ublks = keelctl_call("ublk_get_disks", NULL);
	if (ctx->json) {
		export_list_json(exports, disks, ublks);
	} else {
		export_list_table(exports, disks, ublks);
	}
	json_decref(ublks);
	json_decref(disks);
	json_decref(exports);
	return 0;
}

int keelctl_export_main(const struct keelctl_ctx *ctx, int argc, char **argv)
{
	static const struct keelctl_verb verbs[] = {
		{"start", NULL, export_start},
		{"stop", NULL, export_stop},
		{"list", "ls", export_list},
	};

	return keelctl_dispatch(ctx, argc, argv, verbs, sizeof(verbs) / sizeof(verbs[0]),
				g_help_export);
}
