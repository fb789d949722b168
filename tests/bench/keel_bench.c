/*
 * keel-bench: dispatch to a benchmark subcommand.
 */
#include <stdio.h>
#include <string.h>

#include "bench.h"

struct bench_cmd {
	const char *name;
	int (*main_fn)(int argc, char **argv);
	const char *help;
};

static const struct bench_cmd g_cmds[] = {
	{"reactor", bench_reactor_main, "messages, pollers, wake-ups and idle CPU of the reactor"},
	{"bdev", bench_bdev_main, "bdev stack throughput and latency"},
};

static void usage(FILE *out)
{
	fprintf(out, "usage: keel-bench <subcommand> [options]\n\nsubcommands:\n");
	for (size_t i = 0; i < sizeof(g_cmds) / sizeof(g_cmds[0]); i++) {
		fprintf(out, "  %-10s %s\n", g_cmds[i].name, g_cmds[i].help);
	}
	fprintf(out, "\n'keel-bench <subcommand> --help' describes its options.\n");
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		usage(stdout);
		return 0;
	}
	for (size_t i = 0; i < sizeof(g_cmds) / sizeof(g_cmds[0]); i++) {
		if (strcmp(argv[1], g_cmds[i].name) == 0) {
			return g_cmds[i].main_fn(argc - 1, argv + 1);
		}
	}
	fprintf(stderr, "keel-bench: unknown subcommand '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
