/*
 * keelctl reactor: stats (per-reactor busy/idle/asleep time, wake-ups and loops per
 * second over an interval, the pollers that woke each reactor, the keel threads) and
 * mode (adaptive, poll or interrupt at run time).
 */
#include <stdio.h>
#include <unistd.h>

#include <keel/reactor.h>

#include "keelctl_commands.h"
#include "keelctl_table.h"
#include "keelctl_transport.h"

enum {
	REACTOR_OPT_INTERVAL = 256,
	REACTOR_OPT_REACTOR,
};

static const char g_help_reactor[] =
	"Usage: keelctl reactor VERB ...\n"
	"  stats [--interval MS]     per reactor: busy, idle and asleep time, wake-ups and\n"
	"                            loops per second over MS milliseconds (default 1000;\n"
	"                            0: one sample, averages since start), the pollers\n"
	"                            that woke it most (total counts); then keel threads\n"
	"  mode MODE [--reactor N]   switch all reactors (or reactor N) to adaptive, poll\n"
	"                            or interrupt mode at run time\n";

static const char *fmt_pct(char *buf, size_t len, json_t *obj)
{
	double busy = (double)json_integer_value(json_object_get(obj, "busy"));
	double idle = (double)json_integer_value(json_object_get(obj, "idle"));

	snprintf(buf, len, "%.1f%%", busy + idle > 0 ? 100.0 * busy / (busy + idle) : 0.0);
	return buf;
}

/* Counter \p key of \p now minus the same counter of \p before (0 without one). */
static double reactor_delta(json_t *now, json_t *before, const char *key)
{
	json_int_t b = before != NULL ? json_integer_value(json_object_get(before, key)) : 0;

	return (double)(json_integer_value(json_object_get(now, key)) - b);
}

/*
 * Add per-second and percent figures to each reactor of \p now: over the \p elapsed_ns
 * since \p then (two samples), or since the reactor started when \p then is NULL (its
 * busy + idle time is its age). The counters keep their names; the rates are new keys.
 */
static void reactor_rates(json_t *now, json_t *then, uint64_t elapsed_ns)
{
	json_t *r;
	size_t i;

	json_array_foreach(json_object_get(now, "reactors"), i, r) {
		json_t *before = then != NULL ? json_array_get(json_object_get(then, "reactors"), i)
					      : NULL;
		double busy = reactor_delta(r, before, "busy");
		double sleep = reactor_delta(r, before, "sleep");
		double secs = then != NULL ? (double)elapsed_ns / 1e9
					   : (busy + reactor_delta(r, NULL, "idle")) / 1e9;

		if (secs <= 0) {
			secs = 1e-9;
		}
		/* A sleeping reactor publishes its idle time when it wakes: derive idle. */
		busy = busy / 1e9 / secs * 100.0;
		sleep = sleep / 1e9 / secs * 100.0;
		busy = busy > 100.0 ? 100.0 : busy;
		sleep = sleep > 100.0 - busy ? 100.0 - busy : sleep;
		json_object_set_new(r, "busy_pct", json_real(busy));
		json_object_set_new(r, "idle_pct", json_real(100.0 - busy));
		json_object_set_new(r, "sleep_pct", json_real(sleep));
		json_object_set_new(r, "wakeups_per_sec",
				    json_real(reactor_delta(r, before, "wakeups") / secs));
		json_object_set_new(r, "loops_per_sec",
				    json_real(reactor_delta(r, before, "loops") / secs));
	}
	json_object_set_new(now, "interval_ms",
			    json_integer(then != NULL ? (json_int_t)(elapsed_ns / 1000000) : 0));
}

static void reactor_print_reactors(json_t *reactors)
{
	struct keelctl_table t = {.ncols = 9};
	json_t *r;
	size_t i;

	keelctl_table_row(&t, "REACTOR", "CPU", "MODE", "BUSY", "IDLE", "ASLEEP", "WAKE/S",
			  "LOOPS/S", "THREADS");
	json_array_foreach(json_object_get(reactors, "reactors"), i, r) {
		char idx[16], cpu[16], busy[16], idle[16], sleep[16], wake[24], loops[24], nthr[16];

		snprintf(nthr, sizeof(nthr), "%zu",
			 json_array_size(json_object_get(r, "lw_threads")));
		keelctl_table_row(
			&t, keelctl_fmt_int(idx, sizeof(idx), json_object_get(r, "reactor")),
			keelctl_fmt_int(cpu, sizeof(cpu), json_object_get(r, "lcore")),
			json_string_value(json_object_get(r, "mode")),
			keelctl_fmt_real(busy, sizeof(busy), json_object_get(r, "busy_pct"), "%"),
			keelctl_fmt_real(idle, sizeof(idle), json_object_get(r, "idle_pct"), "%"),
			keelctl_fmt_real(sleep, sizeof(sleep), json_object_get(r, "sleep_pct"),
					 "%"),
			keelctl_fmt_real(wake, sizeof(wake), json_object_get(r, "wakeups_per_sec"),
					 ""),
			keelctl_fmt_real(loops, sizeof(loops), json_object_get(r, "loops_per_sec"),
					 ""),
			nthr);
	}
	keelctl_table_print(&t);
}

static void reactor_print_wakers(json_t *reactors)
{
	struct keelctl_table t = {.ncols = 4};
	json_t *r, *w;
	size_t i, j;

	keelctl_table_row(&t, "REACTOR", "WOKEN BY", "THREAD", "WAKE-UPS");
	json_array_foreach(json_object_get(reactors, "reactors"), i, r) {
		json_array_foreach(json_object_get(r, "wakers"), j, w) {
			char idx[16], count[24], name[96];
			json_t *thr = json_object_get(w, "thread");
			json_int_t inst = json_integer_value(json_object_get(w, "instances"));

			/* Many pollers of one name (a timer per volume) are one row. */
			if (inst > 1) {
				snprintf(name, sizeof(name), "%s (x%lld)",
					 json_string_value(json_object_get(w, "name")),
					 (long long)inst);
			} else {
				snprintf(name, sizeof(name), "%s",
					 json_string_value(json_object_get(w, "name")));
			}
			keelctl_table_row(
				&t,
				keelctl_fmt_int(idx, sizeof(idx), json_object_get(r, "reactor")),
				name, json_is_string(thr) ? json_string_value(thr) : "-",
				keelctl_fmt_int(count, sizeof(count),
						json_object_get(w, "wakeups")));
		}
	}
	keelctl_table_print(&t);
}

static void reactor_print_threads(json_t *threads)
{
	struct keelctl_table t = {.ncols = 7};
	json_t *th;
	size_t i;

	keelctl_table_row(&t, "THREAD", "ID", "REACTOR", "BUSY", "ACTIVE", "TIMED", "PAUSED");
	json_array_foreach(json_object_get(threads, "threads"), i, th) {
		char id[24], re[16], pct[16], ac[16], ti[16], pa[16];

		keelctl_table_row(
			&t, json_string_value(json_object_get(th, "name")),
			keelctl_fmt_int(id, sizeof(id), json_object_get(th, "id")),
			keelctl_fmt_int(re, sizeof(re), json_object_get(th, "reactor")),
			fmt_pct(pct, sizeof(pct), th),
			keelctl_fmt_int(ac, sizeof(ac),
					json_object_get(th, "active_pollers_count")),
			keelctl_fmt_int(ti, sizeof(ti), json_object_get(th, "timed_pollers_count")),
			keelctl_fmt_int(pa, sizeof(pa),
					json_object_get(th, "paused_pollers_count")));
	}
	keelctl_table_print(&t);
}

static int reactor_stats(const struct keelctl_ctx *ctx, int argc, char **argv)
{
	static const struct option options[] = {
		{"interval", required_argument, NULL, REACTOR_OPT_INTERVAL},
		KEELCTL_HELP_OPTION,
		{0},
	};
	struct keelctl_getopt g;
	json_t *reactors, *first = NULL, *threads;
	uint32_t interval_ms = 1000;
	uint64_t start = 0;

	keelctl_getopt_init(&g, argc, argv, options, g_help_reactor, false);
	while (keelctl_getopt_next(&g) != -1) {
		/* --interval is the only option */
		interval_ms = keelctl_parse_u32(g.value, "--interval");
		if (interval_ms > 3600 * 1000) {
			keelctl_die(KEELCTL_EXIT_USAGE,
				    "--interval %s is more than an hour: give "
				    "milliseconds",
				    g.value);
		}
	}
	keelctl_need_pos(&g, 0, 0);
	if (interval_ms > 0) {
		first = keelctl_call("framework_get_reactors", NULL);
		start = keel_now_ns();
		usleep((useconds_t)interval_ms * 1000);
	}
	reactors = keelctl_call("framework_get_reactors", NULL);
	reactor_rates(reactors, first, keel_now_ns() - start);
	json_decref(first);
	threads = keelctl_call("thread_get_stats", NULL);
	if (ctx->json) {
		json_t *both = json_pack("{s:o,s:o}", "reactors", reactors, "threads", threads);

		keelctl_print_json(both);
		json_decref(both);
		return 0;
	}
	if (interval_ms > 0) {
		printf("over %u ms:\n", interval_ms);
	} else {
		printf("averages since each reactor started:\n");
	}
	reactor_print_reactors(reactors);
	printf("\n");
	reactor_print_wakers(reactors);
	printf("\n");
	reactor_print_threads(threads);
	json_decref(reactors);
	json_decref(threads);
	return 0;
}

static int reactor_mode(const struct keelctl_ctx *ctx, int argc, char **argv)
{
	static const struct option options[] = {
		{"reactor", required_argument, NULL, REACTOR_OPT_REACTOR},
		KEELCTL_HELP_OPTION,
		{0},
	};
	struct keelctl_getopt g;
	const char *reactor = NULL;
	json_t *params, *result;

	keelctl_getopt_init(&g, argc, argv, options, g_help_reactor, false);
	while (keelctl_getopt_next(&g) != -1) {
		reactor = g.value; /* --reactor is the only option */
	}
	keelctl_need_pos(&g, 1, 1);
	params = json_pack("{s:s}", "mode", g.pos[0]);
	if (reactor != NULL) {
		json_object_set_new(params, "reactor",
				    json_integer(keelctl_parse_u32(reactor, "--reactor")));
	}
	result = keelctl_call("framework_set_reactor_mode", params);
	if (ctx->json) {
		keelctl_print_json(result);
	} else {
		printf("reactor %s now in %s mode\n", reactor != NULL ? reactor : "(all)",
		       g.pos[0]);
	}
	json_decref(result);
	return 0;
}

int keelctl_reactor_main(const struct keelctl_ctx *ctx, int argc, char **argv)
{
	static const struct keelctl_verb verbs[] = {
		{"stats", NULL, reactor_stats},
		{"mode", NULL, reactor_mode},
	};

	return keelctl_dispatch(ctx, argc, argv, verbs, sizeof(verbs) / sizeof(verbs[0]),
				g_help_reactor);
}
