/*
 * keelctl rebuild: status [VOLUME] [--watch] [--json], start|stop|pause|resume
 * VOLUME REPLICA, history VOLUME.
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

#include "keelctl_rebuild.h"

static const char g_help[] =
	"usage: keelctl rebuild status [VOLUME] [--watch] [--json]\n"
	"       keelctl rebuild start|stop|pause|resume VOLUME REPLICA\n"
	"       keelctl rebuild history VOLUME [--json]\n";

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

static int cmd_status(const struct keelctl_rebuild_ctx *ctx, const char *volume, bool watch,
		      bool json)
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
		res = ctx->call("rebuild_get_status", params);
		if (json) {
			char *s = json_dumps(res, JSON_INDENT(2));

			printf("%s\n", s ? s : "[]");
			free(s);
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

static int cmd_history(const struct keelctl_rebuild_ctx *ctx, const char *volume, bool json)
{
	json_t *params = json_object();
	json_t *res, *j;
	size_t i;

	json_object_set_new(params, "volume", json_string(volume));
	res = ctx->call("rebuild_get_history", params);
	if (json) {
		char *s = json_dumps(res, JSON_INDENT(2));

		printf("%s\n", s ? s : "[]");
		free(s);
		json_decref(res);
		return 0;
	}
	printf("%-20s %-16s %-16s %-10s %-8s %12s %10s %s\n", "END", "TARGET", "SOURCE",
	       "RESULT", "PARTIAL", "BYTES", "DURATION", "ERROR");
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

int keelctl_rebuild_main(const struct keelctl_rebuild_ctx *ctx, int argc, char **argv)
{
	const char *pos[3] = {NULL, NULL, NULL};
	int npos = 0;
	bool watch = false, json = ctx->json;
	const char *verb;

	if (argc < 1 || strcmp(argv[0], "-h") == 0 || strcmp(argv[0], "--help") == 0 ||
	    strcmp(argv[0], "help") == 0) {
		fputs(g_help, argc < 1 ? stderr : stdout);
		return argc < 1 ? 2 : 0;
	}
	verb = argv[0];
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--watch") == 0 || strcmp(argv[i], "-w") == 0) {
			watch = true;
		} else if (strcmp(argv[i], "--json") == 0) {
			json = true;
		} else if (argv[i][0] == '-') {
			fprintf(stderr, "keelctl rebuild: unknown option %s\n%s", argv[i], g_help);
			return 2;
		} else if (npos < 3) {
			pos[npos++] = argv[i];
		}
	}
	if (strcmp(verb, "status") == 0 || strcmp(verb, "list") == 0) {
		return cmd_status(ctx, pos[0], watch, json);
	}
	if (strcmp(verb, "history") == 0) {
		if (npos != 1) {
			fputs(g_help, stderr);
			return 2;
		}
		return cmd_history(ctx, pos[0], json);
	}
	if (strcmp(verb, "start") == 0 || strcmp(verb, "stop") == 0 ||
	    strcmp(verb, "pause") == 0 || strcmp(verb, "resume") == 0) {
		char method[32];
		json_t *params, *res;

		if (npos != 2) {
			fputs(g_help, stderr);
			return 2;
		}
		params = json_object();
		json_object_set_new(params, "volume", json_string(pos[0]));
		json_object_set_new(params, "replica", json_string(pos[1]));
		snprintf(method, sizeof(method), "rebuild_%s", verb);
		res = ctx->call(method, params);
		json_decref(res);
		if (!json) {
			printf("rebuild of %s/%s: %s requested\n", pos[0], pos[1], verb);
		}
		return 0;
	}
	fprintf(stderr, "keelctl rebuild: unknown verb %s\n%s", verb, g_help);
	return 2;
}
