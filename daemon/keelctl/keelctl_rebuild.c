/*
 * keelctl rebuild: status [VOLUME] [--watch] [--json], start|stop|pause|resume
 * VOLUME REPLICA, history VOLUME. The methods live in daemon/rpc_rebuild.c.
 *
 * Status on a terminal draws one progress bar per job with rate and ETA (redrawn
 * in place with --watch); otherwise plain lines, one per job, so scripts and logs
 * read it; --json prints the RPC result.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "keelctl_commands.h"
#include "keelctl_table.h"
#include "keelctl_transport.h"

enum {
	REBUILD_OPT_WATCH = 'w',
	REBUILD_OPT_JSON = 256,
};

static const char g_help[] =
	"Usage: keelctl rebuild VERB ...\n"
	"  status [VOLUME] [--watch|-w] [--json]\n"
	"        progress, rate and ETA of each rebuild job (of VOLUME); --watch redraws\n"
	"        every second until no job is running, pending or paused\n"
	"  start|stop|pause|resume VOLUME REPLICA [--json]\n"
	"        steer the rebuild of replica REPLICA (its path) of VOLUME\n"
	"  history VOLUME [--json]\n"
	"        past rebuilds of VOLUME: end time, result, bytes and duration\n";

static const char *jstr(json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));

	return s ? s : "";
}

static double jnum(json_t *o, const char *k)
{
	return json_number_value(json_object_get(o, k));
}

static void fmt_eta(double s, char *buf, size_t len)
{
	if (s < 0) {
		snprintf(buf, len, "--");
	} else if (s >= 3600) {
		snprintf(buf, len, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
	} else {
		snprintf(buf, len, "%dm%02ds", (int)(s / 60), (int)s % 60);
	}
}

static void print_job(json_t *j, bool tty)
{
	double pct = jnum(j, "progress_pct");
	double bs = jnum(j, "block_size");
	double done = jnum(j, "blocks_done") * bs / (1024.0 * 1024.0);
	double total = jnum(j, "blocks_total") * bs / (1024.0 * 1024.0);
	char eta[32];

	fmt_eta(jnum(j, "eta_s"), eta, sizeof(eta));
	if (tty) {
		char bar[41];
		int fill = (int)(pct * 40 / 100);

		for (int i = 0; i < 40; i++) {
			bar[i] = i < fill ? '#' : '.';
		}
		bar[40] = '\0';
		printf("%s/%s <- %s %-9s [%s] %3.0f%% %.0f/%.0f MiB %.1f MiB/s ETA %s%s%s\n",
		       jstr(j, "volume"), jstr(j, "target"), jstr(j, "source"), jstr(j, "state"),
		       bar, pct, done, total, jnum(j, "rate_mib_s"), eta,
		       json_is_true(json_object_get(j, "is_partial")) ? " (partial)" : "",
		       jstr(j, "error")[0] ? " error: " : "");
		if (jstr(j, "error")[0]) {
			printf("    %s\n", jstr(j, "error"));
		}
	} else {
		printf("volume=%s target=%s source=%s state=%s progress=%.0f%% done_mib=%.1f "
		       "total_mib=%.1f rate_mib_s=%.1f eta=%s partial=%s error=\"%s\"\n",
		       jstr(j, "volume"), jstr(j, "target"), jstr(j, "source"), jstr(j, "state"),
		       pct, done, total, jnum(j, "rate_mib_s"), eta,
		       json_is_true(json_object_get(j, "is_partial")) ? "yes" : "no",
		       jstr(j, "error"));
	}
}

static bool any_active(json_t *arr)
{
	size_t i;
	json_t *j;

	json_array_foreach(arr, i, j) {
		const char *st = jstr(j, "state");

		if (strcmp(st, "running") == 0 || strcmp(st, "pending") == 0 ||
		    strcmp(st, "paused") == 0) {
			return true;
		}
	}
	return false;
}

static int cmd_status(const char *volume, bool watch, bool json)
{
	bool tty = isatty(STDOUT_FILENO);
	size_t lines = 0;

	for (;;) {
		json_t *params = json_object();
		json_t *res, *j;
		size_t i;

		if (volume != NULL) {
			json_object_set_new(params, "volume", json_string(volume));
		}
		res = keelctl_call("rebuild_get_status", params);
		if (json) {
			keelctl_print_json(res);
		} else {
			if (tty && watch && lines > 0) {
				printf("\033[%zuA\033[J", lines); /* redraw in place */
			}
			lines = 0;
			if (json_array_size(res) == 0) {
				printf("no rebuild jobs\n");
				lines++;
			}
			json_array_foreach(res, i, j) {
				print_job(j, tty);
				lines += (tty && jstr(j, "error")[0]) ? 2 : 1;
			}
		}
		fflush(stdout);
		if (!watch || !any_active(res)) {
			json_decref(res);
			return 0;
		}
		json_decref(res);
		sleep(1);
	}
}

static int cmd_history(const char *volume, bool json)
{
	json_t *params = json_object();
	json_t *res, *j;
	size_t i;

	json_object_set_new(params, "volume", json_string(volume));
	res = keelctl_call("rebuild_get_history", params);
	if (json) {
		keelctl_print_json(res);
		json_decref(res);
		return 0;
	}
	printf("%-20s %-16s %-16s %-10s %-8s %12s %10s %s\n", "END", "TARGET", "SOURCE", "RESULT",
	       "PARTIAL", "BYTES", "DURATION", "ERROR");
	json_array_foreach(res, i, j) {
		char when[32] = "-";
		time_t t = (time_t)(jnum(j, "end_time") / 1000);
		struct tm tm;

		if (t > 0 && localtime_r(&t, &tm) != NULL) {
			strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
		}
		printf("%-20s %-16s %-16s %-10s %-8s %12.0f %9.1fs %s\n", when, jstr(j, "target"),
		       jstr(j, "source"), jstr(j, "state"),
		       json_is_true(json_object_get(j, "is_partial")) ? "yes" : "no",
		       jnum(j, "bytes"), jnum(j, "duration_ms") / 1000.0, jstr(j, "error"));
	}
	json_decref(res);
	return 0;
}

static const struct option g_status_options[] = {
	{"watch", no_argument, NULL, REBUILD_OPT_WATCH},
	{"json", no_argument, NULL, REBUILD_OPT_JSON},
	KEELCTL_HELP_OPTION,
	{0},
};

/* Parse a verb's options (--json, and --watch for status) and min..max positionals. */
static void rebuild_parse(struct keelctl_getopt *g, int argc, char **argv, bool status, int min,
			  int max, bool *watch, bool *json)
{
	int c;

	/* Only status watches: the others see a table without --watch. */
	keelctl_getopt_init(g, argc, argv, status ? g_status_options : g_status_options + 1, g_help,
			    false);
	while ((c = keelctl_getopt_next(g)) != -1) {
		if (c == REBUILD_OPT_WATCH) {
			*watch = true;
		} else {
			*json = true;
		}
	}
	keelctl_need_pos(g, min, max);
}

static int rebuild_status(const struct keelctl_ctx *ctx, int argc, char **argv)
{
	struct keelctl_getopt g;
	bool watch = false, json = ctx->json;

	rebuild_parse(&g, argc, argv, true, 0, 1, &watch, &json);
	return cmd_status(g.npos == 1 ? g.pos[0] : NULL, watch, json);
}

static int rebuild_history(const struct keelctl_ctx *ctx, int argc, char **argv)
{
	struct keelctl_getopt g;
	bool watch = false, json = ctx->json;

	rebuild_parse(&g, argc, argv, false, 1, 1, &watch, &json);
	return cmd_history(g.pos[0], json);
}

/* start, stop, pause and resume: rebuild_VERB with the volume and the replica. */
static int rebuild_steer(const struct keelctl_ctx *ctx, int argc, char **argv)
{
	struct keelctl_getopt g;
	bool watch = false, json = ctx->json;
	char method[32];
	json_t *params, *res;

	rebuild_parse(&g, argc, argv, false, 2, 2, &watch, &json);
	params = json_object();
	json_object_set_new(params, "volume", json_string(g.pos[0]));
	json_object_set_new(params, "replica", json_string(g.pos[1]));
	snprintf(method, sizeof(method), "rebuild_%s", argv[0]);
	res = keelctl_call(method, params);
	json_decref(res);
	if (!json) {
		printf("rebuild of %s/%s: %s requested\n", g.pos[0], g.pos[1], argv[0]);
	}
	return 0;
}

int keelctl_rebuild_main(const struct keelctl_ctx *ctx, int argc, char **argv)
{
	static const struct keelctl_verb verbs[] = {
		{"status", "list", rebuild_status}, {"history", NULL, rebuild_history},
		{"start", NULL, rebuild_steer},     {"stop", NULL, rebuild_steer},
		{"pause", NULL, rebuild_steer},     {"resume", NULL, rebuild_steer},
	};

	return keelctl_dispatch(ctx, argc, argv, verbs, sizeof(verbs) / sizeof(verbs[0]), g_help);
}
