/*
 * keelctl: command-line client of keeld. A plain blocking program: one connection,
 * one request, one response read until a newline-terminated complete JSON value.
 * This file holds the global options and the command groups; each group lives in
 * keelctl_GROUP.c, the connection in keelctl_transport.c, the option parsing in
 * keelctl_args.c and the tables in keelctl_table.c.
 *
 * Exit status: 0 success, 1 the daemon refused or could not be reached (its message
 * is printed), 2 a usage mistake (the message names the option or argument).
 */
#include <stdio.h>
#include <string.h>

#include "keelctl_commands.h"
#include "keelctl_transport.h"
#include "paths.h"

#ifndef KEEL_VERSION
#define KEEL_VERSION "0.0.0"
#endif

enum {
	MAIN_OPT_SOCKET = 's',
	MAIN_OPT_JSON = 256,
	MAIN_OPT_TIMEOUT,
	MAIN_OPT_VERSION,
};

static const char g_help_top[] =
	"Usage: keelctl [-s SOCKET] [--json] [--timeout SEC] NOUN VERB [ARGS...]\n"
	"Control a running keeld.\n"
	"\n"
	"Commands:\n"
	"  bdev create aio NAME FILE [--block-size N]     AIO bdev on a file or block device\n"
	"  bdev create uring NAME FILE [--block-size N]   io_uring bdev on a file or block device\n"
	"  bdev create malloc NAME SIZE [--block-size N]  RAM disk (SIZE like 64M, 1G)\n"
	"  bdev create null NAME SIZE [--block-size N]    null disk (writes vanish, reads zeroes)\n"
	"  bdev delete NAME                               delete any bdev\n"
	"  bdev list                                      list bdevs\n"
	"  volume create NAME --size SIZE --replica PATH [--replica PATH ...] [--force]\n"
	"                                                 replicated volume over replica files\n"
	"  volume destroy NAME [--wipe]                   stop a volume (its files stay)\n"
	"  volume list                                    list volumes\n"
	"  volume show NAME                               state, replicas and exports of a volume\n"
	"  replica add|remove|fault VOLUME PATH           change a volume's replicas\n"
	"  rebuild status [VOLUME] [--watch]              rebuild progress, rate and ETA\n"
	"  rebuild start|stop|pause|resume VOLUME REPLICA steer a rebuild\n"
	"  rebuild history VOLUME                         past rebuilds of a volume\n"
	"  export start BDEV --socket PATH [--name NAME] [--tcp HOST:PORT] [--read-only]\n"
	"  export start BDEV --nbd [/dev/nbdN] [--read-only]  serve BDEV as a kernel device\n"
	"                                                 (or --nbd-device /dev/nbdN)\n"
	"  export stop NAME|/dev/nbdN                     stop an NBD export or kernel device\n"
	"  export list                                    list NBD exports and kernel devices\n"
	"  reactor stats [--interval MS]                  reactors, wake-ups and keel threads\n"
	"  reactor mode MODE [--reactor N]                adaptive, poll or interrupt\n"
	"  rpc METHOD [JSON-PARAMS]                       send any JSON-RPC method\n"
	"\n"
	"Options:\n"
	"  -s, --socket PATH  keeld's RPC socket (default: %s)\n"
	"  --json             print the daemon's JSON result instead of tables\n"
	"  --timeout SEC      give up waiting for keeld after SEC seconds (default 60)\n"
	"  -h, --help         help; also 'keelctl NOUN --help', 'keelctl NOUN VERB --help'\n"
	"  --version          print keelctl's version\n"
	"\n"
	"'keelctl rpc rpc_get_methods' lists every method keeld knows.\n";

static const struct {
	const char *name;
	int (*main)(const struct keelctl_ctx *ctx, int argc, char **argv);
} g_groups[] = {
	{"bdev", keelctl_bdev_main},       {"export", keelctl_export_main},
	{"volume", keelctl_volume_main},   {"replica", keelctl_replica_main},
	{"rebuild", keelctl_rebuild_main}, {"reactor", keelctl_reactor_main},
	{"rpc", keelctl_rpc_main},
};

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{"socket", required_argument, NULL, MAIN_OPT_SOCKET},
		{"json", no_argument, NULL, MAIN_OPT_JSON},
		{"timeout", required_argument, NULL, MAIN_OPT_TIMEOUT},
		{"version", no_argument, NULL, MAIN_OPT_VERSION},
		KEELCTL_HELP_OPTION,
		{0},
	};
	struct keelctl_ctx ctx = {.json = false};
	char socket[108], help[sizeof(g_help_top) + sizeof(socket)];
	struct keelctl_getopt g;
	int timeout_s = 60;
	size_t i;
	int c;

	if (keel_path_default_socket(socket, sizeof(socket)) != 0) {
		socket[0] = '\0';
	}
	snprintf(help, sizeof(help), g_help_top, socket);
	/* Global options come before the command: stop at its name. */
	keelctl_getopt_init(&g, argc, argv, options, help, true);
	while ((c = keelctl_getopt_next(&g)) != -1) {
		switch (c) {
		case MAIN_OPT_SOCKET:
			if (strlen(g.value) >= sizeof(socket)) {
				keelctl_die(KEELCTL_EXIT_USAGE, "socket path too long: %s",
					    g.value);
			}
			snprintf(socket, sizeof(socket), "%s", g.value);
			break;
		case MAIN_OPT_JSON:
			ctx.json = true;
			break;
		case MAIN_OPT_TIMEOUT:
			timeout_s = (int)keelctl_parse_u32(g.value, "--timeout");
			if (timeout_s == 0 || timeout_s > 86400) {
				keelctl_die(KEELCTL_EXIT_USAGE,
					    "--timeout must be 1 to 86400 seconds");
			}
			break;
		case MAIN_OPT_VERSION:
			printf("keelctl %s\n", KEEL_VERSION);
			return 0;
		default:
			break;
		}
	}
	if (g.npos == 0) {
		fputs(help, stderr);
		return KEELCTL_EXIT_USAGE;
	}
	if (strcmp(g.pos[0], "help") == 0) {
		keelctl_help(help);
	}
	for (i = 0; i < sizeof(g_groups) / sizeof(g_groups[0]); i++) {
		if (strcmp(g.pos[0], g_groups[i].name) == 0) {
			break;
		}
	}
	if (i == sizeof(g_groups) / sizeof(g_groups[0])) {
		keelctl_die_usage(help, "unknown command '%s'\n", g.pos[0]);
	}
	if (socket[0] == '\0') {
		keelctl_die(KEELCTL_EXIT_USAGE,
			    "no default socket could be worked out: give -s PATH");
	}
	keelctl_transport_configure(socket, timeout_s);
	return g_groups[i].main(&ctx, g.npos, g.pos);
}
