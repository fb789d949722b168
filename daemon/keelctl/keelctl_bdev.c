/* keelctl bdev: create (aio, uring, malloc, null, remote), delete and list bdevs. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keelctl_commands.h"
#include "keelctl_table.h"
#include "keelctl_transport.h"

enum {
	BDEV_OPT_BLOCK_SIZE = 256,
	BDEV_OPT_TIMEOUT_MS,
};

static const char g_help_bdev[] =
	"Usage: keelctl bdev VERB ...\n"
	"  create aio NAME FILE [--block-size N]     AIO bdev on FILE (a file or block device);\n"
	"                                            block size defaults to the device's (512 for "
	"files)\n"
	"  create uring NAME FILE [--block-size N]   the same through io_uring (needs a kernel "
	"and\n"
	"                                            container that allow io_uring)\n"
	"  create malloc NAME SIZE [--block-size N]  RAM disk of SIZE bytes (K, M, G, T suffixes)\n"
	"  create null NAME SIZE [--block-size N]    null disk of SIZE bytes\n"
	"  create remote NAME URI [--timeout-ms N]   an export of an NBD server (nbd://HOST/EXP,\n"
	"                                            nbds://..., nbd+unix:///EXP?socket=PATH)\n"
	"  delete NAME                               delete a bdev (its I/O drains first)\n"
	"  list                                      table of bdevs (--json: bdev_get_bdevs)\n";

static const char g_help_bdev_create[] =
	"Usage: keelctl bdev create TYPE NAME ARG [--block-size N]\n"
	"  aio NAME FILE      FILE is an existing file or block device; its size must be a\n"
	"                     multiple of the block size\n"
	"  uring NAME FILE    the same, driven through io_uring\n"
	"  malloc NAME SIZE   RAM disk; SIZE is bytes with an optional K, M, G or T suffix\n"
	"                     (powers of 1024), e.g. 64M\n"
	"  null NAME SIZE     null disk of SIZE bytes\n"
	"  remote NAME URI    an NBD export as libnbd parses URIs; --timeout-ms N: request\n"
	"                     timeout (default 5000)\n"
	"  --block-size N     512 (default for malloc/null) up to 65536, a power of two\n"
	"NAME: up to 63 characters, no '/' or spaces.\n";

/* keeld runs in / : send an absolute path, with symbolic links resolved when the file
 * exists (keeld reports a missing one). */
static json_t *bdev_file_path(const char *file)
{
	char abs[PATH_MAX];

	if (file[0] != '/' && realpath(file, abs) != NULL) {
		return json_string(abs);
	}
	return keelctl_abs_path(file);
}

static json_t *bdev_create_params(const char *type, const char *name, const char *arg,
				  uint32_t block_size)
{
	uint64_t size;

	if (strcmp(type, "aio") == 0 || strcmp(type, "uring") == 0) {
		json_t *params = json_pack("{s:s,s:o}", "name", name, "filename",
					   bdev_file_path(arg));

		if (block_size != 0) {
			json_object_set_new(params, "block_size", json_integer(block_size));
		}
		return params;
	}
	if (strcmp(type, "malloc") != 0 && strcmp(type, "null") != 0) {
		keelctl_die_usage(g_help_bdev_create, "unknown bdev type '%s'", type);
	}
	if (keelctl_parse_size(arg, &size) != 0) {
		keelctl_die(KEELCTL_EXIT_USAGE,
			    "bad size '%s': use a number of bytes with an "
			    "optional K, M, G or T suffix, e.g. 64M",
			    arg);
	}
	if (block_size == 0) {
		block_size = 512;
	}
	if (block_size < 512 || block_size > 65536 || (block_size & (block_size - 1)) != 0) {
		keelctl_die(KEELCTL_EXIT_USAGE,
			    "--block-size %u: block_size must be a power of "
			    "two from 512 to 65536",
			    block_size);
	}
	if (size % block_size != 0) {
		keelctl_die(KEELCTL_EXIT_USAGE, "size %s is not a multiple of the block size %u",
			    arg, block_size);
	}
	return json_pack("{s:s,s:I,s:i}", "name", name, "num_blocks",
			 (json_int_t)(size / block_size), "block_size", (int)block_size);
}

static int bdev_create(const struct keelctl_ctx *ctx, int argc, char **argv)
{
	static const struct option options[] = {
		{"block-size", required_argument, NULL, BDEV_OPT_BLOCK_SIZE},
		{"timeout-ms", required_argument, NULL, BDEV_OPT_TIMEOUT_MS},
		KEELCTL_HELP_OPTION,
		{0},
	};
	struct keelctl_getopt g;
	uint32_t block_size = 0, timeout_ms = 0;
	const char *type;
	char method[32];
	json_t *params, *result;
	int opt;

	keelctl_getopt_init(&g, argc, argv, options, g_help_bdev_create, false);

	while ((opt = keelctl_getopt_next(&g)) != -1) {
		if (opt == BDEV_OPT_TIMEOUT_MS) {
			timeout_ms = keelctl_parse_u32(g.value, "--timeout-ms");
		} else {
			block_size = keelctl_parse_u32(g.value, "--block-size");
		}
	}
	keelctl_need_pos(&g, 3, 3);
	type = g.pos[0];
	if (strcmp(type, "remote") == 0) {
		params = json_pack("{s:s,s:s}", "name", g.pos[1], "uri", g.pos[2]);
		if (timeout_ms != 0) {
			json_object_set_new(params, "timeout_ms", json_integer(timeout_ms));
		}
		snprintf(method, sizeof(method), "bdev_nbd_client_create");
	} else {
		params = bdev_create_params(type, g.pos[1], g.pos[2], block_size);
		snprintf(method, sizeof(method), "bdev_%s_create", type);
	}
	result = keelctl_call(method, params);
	if (ctx->json) {
		keelctl_print_json(result);
	} else {
		printf("created %s bdev %s\n", type,
		       json_string_value(result) != NULL ? json_string_value(result) : g.pos[1]);
	}
	json_decref(result);
	return 0;
}

static int bdev_list(const struct keelctl_ctx *ctx, int argc, char **argv)
{
	struct keelctl_table t = {.ncols = 7};
	struct keelctl_getopt g;
	json_t *result, *b;
	size_t i;

	keelctl_getopt_positionals(&g, argc, argv, g_help_bdev, 0, 0);
	result = keelctl_call("bdev_get_bdevs", NULL);
	if (keelctl_print_json_if(ctx->json, result)) {
		return 0;
	}
	keelctl_table_row(&t, "NAME", "MODULE", "SIZE", "BLOCK", "BLOCKS", "CLAIMED BY", "UUID");
	json_array_foreach(result, i, b) {
		char size[32], bs[24], nb[24];
		uint64_t block = (uint64_t)json_integer_value(json_object_get(b, "block_size"));
		uint64_t blocks = (uint64_t)json_integer_value(json_object_get(b, "num_blocks"));

		keelctl_human_size(block * blocks, size, sizeof(size));
		keelctl_table_row(&t, json_string_value(json_object_get(b, "name")),
				  json_string_value(json_object_get(b, "module")), size,
				  keelctl_fmt_int(bs, sizeof(bs), json_object_get(b, "block_size")),
				  keelctl_fmt_int(nb, sizeof(nb), json_object_get(b, "num_blocks")),
				  json_string_value(json_object_get(b, "claim_owner")),
				  json_string_value(json_object_get(b, "uuid")));
	}
	keelctl_table_print_or(&t, "no bdevs (create one with: keelctl bdev create malloc "
				   "NAME 64M)");
	json_decref(result);
	return 0;
}

static int bdev_delete(const struct keelctl_ctx *ctx, int argc, char **argv)
{
	struct keelctl_getopt g;
	json_t *result;

	keelctl_getopt_positionals(&g, argc, argv, g_help_bdev, 1, 1);
	result = keelctl_call("bdev_delete", json_pack("{s:s}", "name", g.pos[0]));
	if (ctx->json) {
		keelctl_print_json(result);
	} else {
		printf("deleted bdev %s\n", g.pos[0]);
	}
	json_decref(result);
	return 0;
}

int keelctl_bdev_main(const struct keelctl_ctx *ctx, int argc, char **argv)
{
	static const struct keelctl_verb verbs[] = {
		{"create", NULL, bdev_create},
		{"list", "ls", bdev_list},
		{"delete", "rm", bdev_delete},
	};

	return keelctl_dispatch(ctx, argc, argv, verbs, sizeof(verbs) / sizeof(verbs[0]),
				g_help_bdev);
}
