/*
 * keelctl volume (create, destroy, list, show) and keelctl replica (add, remove,
 * fault): replicated volumes over replica files. The methods live in
 * daemon/rpc_volume.c; replica paths are sent absolute because keeld runs in /.
 */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "keelctl_commands.h"
#include "keelctl_table.h"
#include "keelctl_transport.h"

#define VOLUME_MAX_REPLICAS 16

enum {
	VOLUME_OPT_SIZE = 256,
	VOLUME_OPT_REPLICA,
	VOLUME_OPT_FORCE,
	VOLUME_OPT_WIPE,
	VOLUME_OPT_BACKEND,
};

static const char g_help_volume[] =
	"Usage: keelctl volume VERB ...\n"
	"  create NAME --size SIZE --replica PATH [--replica PATH ...] [--force]\n"
	"         [--backend aio|uring]\n"
	"        create a volume of SIZE bytes (K, M, G, T suffixes; a multiple of 4K)\n"
	"        mirrored on every replica file; missing files are created with SIZE\n"
	"        plus 1 MiB for the labels. An existing file or device must be empty\n"
	"        (zeros at both ends): --force overwrites data, a filesystem, a partition\n"
	"        table or another volume's label. One file is never two replicas.\n"
	"        --backend: the replica files go through Linux AIO or io_uring (default:\n"
	"        keeld's --volume-backend, aio unless set); kept across restarts\n"
	"  destroy NAME [--wipe]   stop the volume's exports and the volume; the replica\n"
	"                          files stay (--wipe erases their labels)\n"
	"  list                    table of volumes\n"
	"  show NAME               state, size, replicas and exports of one volume\n"
	"Export a volume with: keelctl export start NAME --socket PATH\n"
	"NAME: 1 to 63 printable characters, no '/' or spaces.\n";

static const char g_help_replica[] =
	"Usage: keelctl replica VERB VOLUME PATH\n"
	"  add VOLUME PATH [--force] [--backend aio|uring]\n"
	"                             add replica file PATH (created if missing); it takes\n"
	"                             writes but is not read until rebuilt in sync;\n"
	"                             --force overwrites what PATH holds (see volume --help);\n"
	"                             --backend: this replica's, instead of the volume's\n"
	"  remove VOLUME PATH         take replica PATH out of the volume (not the last\n"
	"                             healthy one); the file stays\n"
	"  fault VOLUME PATH          mark replica PATH faulted: no more I/O to it\n";

/* The backend of a volume or replica object: "aio", or "aio (uring requested)" when a
 * restore fell back from the one asked for (io_uring refused on this machine). */
static const char *volume_backend_text(json_t *o, char *buf, size_t len)
{
	json_t *req = json_object_get(o, "backend_requested");

	if (!json_is_string(req)) {
		return keelctl_str_or_dash(json_object_get(o, "backend"));
	}
	snprintf(buf, len, "%s (%s requested)", keelctl_str_or_dash(json_object_get(o, "backend")),
		 json_string_value(req));
	return buf;
}

/* --backend VALUE: one keeld knows, checked here so a typo is a usage error (exit 2). */
static const char *volume_backend_arg(const char *value)
{
	if (strcmp(value, "aio") != 0 && strcmp(value, "uring") != 0) {
		keelctl_die(KEELCTL_EXIT_USAGE, "--backend '%s': use aio or uring", value);
	}
	return value;
}

static int volume_create(const struct keelctl_ctx *ctx, int argc, char **argv)
{
	static const struct option options[] = {
		{"size", required_argument, NULL, VOLUME_OPT_SIZE},
		{"replica", required_argument, NULL, VOLUME_OPT_REPLICA},
		{"force", no_argument, NULL, VOLUME_OPT_FORCE},
		{"backend", required_argument, NULL, VOLUME_OPT_BACKEND},
		KEELCTL_HELP_OPTION,
		{0},
	};
	struct keelctl_getopt g;
	const char *size_text = NULL, *backend = NULL;
	json_t *replicas = json_array();
	json_t *params, *result;
	bool force = false;
	uint64_t size;
	int c;

	keelctl_getopt_init(&g, argc, argv, options, g_help_volume, false);
	while ((c = keelctl_getopt_next(&g)) != -1) {
		switch (c) {
		case VOLUME_OPT_SIZE:
			size_text = g.value;
			break;
		case VOLUME_OPT_REPLICA:
			if (json_array_size(replicas) == VOLUME_MAX_REPLICAS) {
				keelctl_die(KEELCTL_EXIT_USAGE, "at most %d --replica options",
					    VOLUME_MAX_REPLICAS);
			}
			json_array_append_new(replicas, keelctl_abs_path(g.value));
			break;
		case VOLUME_OPT_FORCE:
			force = true;
			break;
		case VOLUME_OPT_BACKEND:
			backend = volume_backend_arg(g.value);
			break;
		default:
			break;
		}
	}
	keelctl_need_pos(&g, 1, 1);
	if (size_text == NULL) {
		keelctl_die(KEELCTL_EXIT_USAGE, "volume create needs --size SIZE (e.g. 1G)");
	}
	if (json_array_size(replicas) == 0) {
		keelctl_die(KEELCTL_EXIT_USAGE, "volume create needs at least one --replica PATH");
	}
	if (keelctl_parse_size(size_text, &size) != 0) {
		keelctl_die(KEELCTL_EXIT_USAGE,
			    "bad size '%s': use a number of bytes with an "
			    "optional K, M, G or T suffix, e.g. 1G",
			    size_text);
	}
	params = json_pack("{s:s,s:I,s:o}", "name", g.pos[0], "size", (json_int_t)size, "replicas",
			   replicas);
	if (force) {
		json_object_set_new(params, "force", json_true());
	}
	if (backend != NULL) {
		json_object_set_new(params, "backend", json_string(backend));
	}
	result = keelctl_call("volume_create", params);
	if (ctx->json) {
		keelctl_print_json(result);
	} else {
		printf("created volume %s\n", g.pos[0]);
	}
	json_decref(result);
	return 0;
}

static int volume_destroy(const struct keelctl_ctx *ctx, int argc, char **argv)
{
	static const struct option options[] = {
		{"wipe", no_argument, NULL, VOLUME_OPT_WIPE},
		KEELCTL_HELP_OPTION,
		{0},
	};
	struct keelctl_getopt g;
	json_t *params, *result;
	bool wipe = false;

	keelctl_getopt_init(&g, argc, argv, options, g_help_volume, false);
	while (keelctl_getopt_next(&g) != -1) {
		wipe = true; /* --wipe is the only option */
	}
	keelctl_need_pos(&g, 1, 1);
	params = json_pack("{s:s}", "name", g.pos[0]);
	if (wipe) {
		json_object_set_new(params, "wipe", json_true());
	}
	result = keelctl_call("volume_destroy", params);
	if (ctx->json) {
		keelctl_print_json(result);
	} else {
		printf("destroyed volume %s%s\n", g.pos[0], wipe ? " (labels wiped)" : "");
	}
	json_decref(result);
	return 0;
}

static void volume_counts(json_t *vol, int *healthy, int *total)
{
	json_t *r;
	size_t i;

	*healthy = 0;
	*total = 0;
	json_array_foreach(json_object_get(vol, "replicas"), i, r) {
		(*total)++;
		if (strcmp(keelctl_str_or_dash(json_object_get(r, "state")), "healthy") == 0) {
			(*healthy)++;
		}
	}
}

static int volume_list(const struct keelctl_ctx *ctx, int argc, char **argv)
{
	struct keelctl_table t = {.ncols = 6};
	struct keelctl_getopt g;
	json_t *result, *v;
	size_t i;

	keelctl_getopt_positionals(&g, argc, argv, g_help_volume, 0, 0);
	result = keelctl_call("volume_list", NULL);
	if (keelctl_print_json_if(ctx->json, result)) {
		return 0;
	}
	keelctl_table_row(&t, "NAME", "STATE", "SIZE", "HEALTHY/REPLICAS", "EXPORTS", "BACKEND");
	json_array_foreach(result, i, v) {
		char size[32], reps[32], exps[16], backend[64];
		int healthy, total;

		volume_counts(v, &healthy, &total);
		keelctl_human_size((uint64_t)json_integer_value(json_object_get(v, "size")), size,
				   sizeof(size));
		snprintf(reps, sizeof(reps), "%d/%d", healthy, total);
		snprintf(exps, sizeof(exps), "%zu", json_array_size(json_object_get(v, "exports")));
		keelctl_table_row(&t, keelctl_str_or_dash(json_object_get(v, "name")),
				  keelctl_str_or_dash(json_object_get(v, "state")), size, reps,
				  exps, volume_backend_text(v, backend, sizeof(backend)));
	}
	keelctl_table_print_or(&t, "no volumes (create one with: keelctl volume create NAME "
				   "--size 1G --replica FILE1 --replica FILE2)");
	json_decref(result);
	return 0;
}

/* One line per rebuild job volume_get reports (active ones, and the last ended one
 * per replica); nothing when there is none. */
static void volume_print_rebuilds(json_t *jobs)
{
	json_t *j;
	size_t i;

	if (json_array_size(jobs) == 0) {
		return;
	}
	printf("rebuild:\n");
	json_array_foreach(jobs, i, j) {
		const char *state = keelctl_str_or_dash(json_object_get(j, "state"));
		double bs = json_number_value(json_object_get(j, "block_size"));
		double done = json_number_value(json_object_get(j, "blocks_done")) * bs / 1048576.0;
		double total = json_number_value(json_object_get(j, "blocks_total")) * bs /
			       1048576.0;
		long long eta = (long long)json_integer_value(json_object_get(j, "eta_s"));
		const char *err = keelctl_str_or_dash(json_object_get(j, "error"));
		bool has_err = err[0] != '\0' && strcmp(err, "-") != 0;
		char eta_s[32];

		if (eta < 0) {
			snprintf(eta_s, sizeof(eta_s), "-");
		} else {
			snprintf(eta_s, sizeof(eta_s), "%lldm%02llds", eta / 60, eta % 60);
		}
		printf("  %s <- %s: %s%s, %lld%% (%.1f of %.1f MiB), %.1f MiB/s, eta %s%s%s\n",
		       keelctl_str_or_dash(json_object_get(j, "target")),
		       keelctl_str_or_dash(json_object_get(j, "source")), state,
		       json_is_true(json_object_get(j, "is_partial")) ? " (partial)" : "",
		       (long long)json_integer_value(json_object_get(j, "progress_pct")), done,
		       total, json_number_value(json_object_get(j, "rate_mib_s")), eta_s,
		       has_err ? ": " : "", has_err ? err : "");
	}
}

static void volume_print_replicas(json_t *vol)
{
	struct keelctl_table t = {.ncols = 7};
	json_t *r, *g;
	size_t i;

	printf("replicas:\n");
	keelctl_table_row(&t, "  PATH", "BACKEND", "BDEV", "STATE", "REASON", "GEN", "DETAIL");
	json_array_foreach(json_object_get(vol, "replicas"), i, r) {
		const char *reason = keelctl_str_or_dash(json_object_get(r, "reason"));
		char path[PATH_MAX + 4], gen[24], backend[64];

		snprintf(path, sizeof(path), "  %s",
			 keelctl_str_or_dash(json_object_get(r, "path")));
		g = json_object_get(r, "generation");
		if (json_is_integer(g)) {
			snprintf(gen, sizeof(gen), "%lld", (long long)json_integer_value(g));
		} else {
			snprintf(gen, sizeof(gen), "-");
		}
		keelctl_table_row(&t, path, volume_backend_text(r, backend, sizeof(backend)),
				  keelctl_str_or_dash(json_object_get(r, "bdev")),
				  keelctl_str_or_dash(json_object_get(r, "state")),
				  strcmp(reason, "none") == 0 ? "-" : reason, gen,
				  keelctl_str_or_dash(json_object_get(r, "detail")));
	}
	keelctl_table_print(&t);
}

static void volume_print_exports(json_t *vol)
{
	struct keelctl_table t = {.ncols = 5};
	json_t *e;
	size_t i;

	printf("exports:\n");
	if (json_array_size(json_object_get(vol, "exports")) == 0) {
		printf("  none (export it with: keelctl export start %s --socket PATH)\n",
		       keelctl_str_or_dash(json_object_get(vol, "name")));
		return;
	}
	keelctl_table_row(&t, "  NAME", "SOCKET", "TCP", "READ-ONLY", "CLIENTS");
	json_array_foreach(json_object_get(vol, "exports"), i, e) {
		char name[300], conns[16];

		snprintf(name, sizeof(name), "  %s",
			 keelctl_str_or_dash(json_object_get(e, "name")));
		keelctl_table_row(
			&t, name, keelctl_str_or_dash(json_object_get(e, "socket")),
			keelctl_str_or_dash(json_object_get(e, "tcp")),
			json_is_true(json_object_get(e, "read_only")) ? "yes" : "no",
			keelctl_fmt_int(conns, sizeof(conns), json_object_get(e, "connections")));
	}
	keelctl_table_print(&t);
}

static void volume_print(json_t *vol)
{
	const char *detail = keelctl_str_or_dash(json_object_get(vol, "state_detail"));
	bool has_detail = strcmp(detail, "-") != 0;
	char size[32];
	json_t *g;

	keelctl_human_size((uint64_t)json_integer_value(json_object_get(vol, "size")), size,
			   sizeof(size));
	printf("volume %s\n", keelctl_str_or_dash(json_object_get(vol, "name")));
	printf("  state:       %s%s%s%s\n", keelctl_str_or_dash(json_object_get(vol, "state")),
	       has_detail ? " (" : "", has_detail ? detail : "", has_detail ? ")" : "");
	printf("  size:        %s (%lld bytes)\n", size,
	       (long long)json_integer_value(json_object_get(vol, "size")));
	printf("  uuid:        %s\n", keelctl_str_or_dash(json_object_get(vol, "uuid")));
	g = json_object_get(vol, "generation");
	if (json_is_integer(g)) {
		printf("  generation:  %lld%s\n", (long long)json_integer_value(g),
		       json_is_true(json_object_get(vol, "unclean_shutdown"))
			       ? " (last stop was not clean)"
			       : "");
	}
	if (json_is_false(json_object_get(vol, "persistent"))) {
		printf("  persistent:  no (made from bdevs: forgotten when keeld stops)\n");
	} else {
		char backend[64];

		printf("  backend:     %s\n", volume_backend_text(vol, backend, sizeof(backend)));
	}
	volume_print_replicas(vol);
	volume_print_rebuilds(json_object_get(vol, "rebuilds"));
	volume_print_exports(vol);
}

static int volume_show(const struct keelctl_ctx *ctx, int argc, char **argv)
{
	struct keelctl_getopt g;
	json_t *result;

	keelctl_getopt_positionals(&g, argc, argv, g_help_volume, 1, 1);
	result = keelctl_call("volume_get", json_pack("{s:s}", "name", g.pos[0]));
	if (ctx->json) {
		keelctl_print_json(result);
	} else {
		volume_print(result);
	}
	json_decref(result);
	return 0;
}

int keelctl_volume_main(const struct keelctl_ctx *ctx, int argc, char **argv)
{
	static const struct keelctl_verb verbs[] = {
		{"create", NULL, volume_create},
		{"destroy", NULL, volume_destroy},
		{"list", "ls", volume_list},
		{"show", "get", volume_show},
	};

	return keelctl_dispatch(ctx, argc, argv, verbs, sizeof(verbs) / sizeof(verbs[0]),
				g_help_volume);
}

/* add, remove and fault differ only in method, wording and add's --force. */
static int replica_change(const struct keelctl_ctx *ctx, int argc, char **argv)
{
	static const struct option add_options[] = {
		{"force", no_argument, NULL, VOLUME_OPT_FORCE},
		{"backend", required_argument, NULL, VOLUME_OPT_BACKEND},
		KEELCTL_HELP_OPTION,
		{0},
	};
	static const struct option other_options[] = {KEELCTL_HELP_OPTION, {0}};
	bool add = strcmp(argv[0], "add") == 0;
	bool fault = strcmp(argv[0], "fault") == 0;
	struct keelctl_getopt g;
	json_t *params, *result;
	const char *backend = NULL;
	bool force = false;
	int c;

	keelctl_getopt_init(&g, argc, argv, add ? add_options : other_options, g_help_replica,
			    false);
	while ((c = keelctl_getopt_next(&g)) != -1) {
		if (c == VOLUME_OPT_FORCE) {
			force = true;
		} else if (c == VOLUME_OPT_BACKEND) {
			backend = volume_backend_arg(g.value);
		}
	}
	keelctl_need_pos(&g, 2, 2);
	params = json_pack("{s:s,s:o}", "name", g.pos[0], "replica", keelctl_abs_path(g.pos[1]));
	if (force) {
		json_object_set_new(params, "force", json_true());
	}
	if (backend != NULL) {
		json_object_set_new(params, "backend", json_string(backend));
	}
	result = keelctl_call(add     ? "volume_add_replica"
			      : fault ? "volume_fault_replica"
				      : "volume_remove_replica",
			      params);
	if (ctx->json) {
		keelctl_print_json(result);
	} else {
		printf("%s replica %s of volume %s\n",
		       add     ? "added"
		       : fault ? "faulted"
			       : "removed",
		       g.pos[1], g.pos[0]);
	}
	json_decref(result);
	return 0;
}

int keelctl_replica_main(const struct keelctl_ctx *ctx, int argc, char **argv)
{
	static const struct keelctl_verb verbs[] = {
		{"add", NULL, replica_change},
		{"remove", "rm", replica_change},
		{"fault", NULL, replica_change},
	};

	return keelctl_dispatch(ctx, argc, argv, verbs, sizeof(verbs) / sizeof(verbs[0]),
				g_help_replica);
}
