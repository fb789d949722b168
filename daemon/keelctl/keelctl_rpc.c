/* keelctl rpc METHOD [JSON-PARAMS]: any JSON-RPC method, the result printed as JSON. */
#include <stdio.h>

#include "keelctl_commands.h"
#include "keelctl_table.h"
#include "keelctl_transport.h"

static const char g_help_rpc[] = "Usage: keelctl rpc METHOD [JSON-PARAMS]\n"
				 "Send one JSON-RPC request and print the result as JSON, e.g.\n"
				 "  keelctl rpc bdev_get_bdevs '{\"name\": \"m0\"}'\n"
				 "  keelctl rpc rpc_get_methods '{\"include_help\": true}'\n";

int keelctl_rpc_main(const struct keelctl_ctx *ctx, int argc, char **argv)
{
	static const struct option options[] = {KEELCTL_HELP_OPTION, {0}};
	struct keelctl_getopt g;
	json_t *params = NULL, *result;
	json_error_t err;

	(void)ctx; /* the result is JSON either way */
	/* Options end at METHOD: the parameters may be a negative number. */
	keelctl_getopt_init(&g, argc, argv, options, g_help_rpc, true);
	while (keelctl_getopt_next(&g) != -1) {
		/* only --help, which does not return */
	}
	if (g.npos == 0) {
		fputs(g_help_rpc, stderr);
		return KEELCTL_EXIT_USAGE;
	}
	if (g.npos > 2) {
		keelctl_die_usage(g_help_rpc, "rpc takes METHOD and at most one JSON argument "
					      "(quote it)");
	}
	if (g.npos == 2) {
		params = json_loads(g.pos[1], JSON_DECODE_ANY, &err);
		if (params == NULL) {
			keelctl_die(KEELCTL_EXIT_USAGE,
				    "params are not valid JSON: %s (at character "
				    "%d)",
				    err.text, err.position);
		}
	}
	result = keelctl_call(g.pos[0], params);
	keelctl_print_json(result);
	json_decref(result);
	return 0;
}
