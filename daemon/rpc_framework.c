/*
 * Framework RPC methods: method listing, version, reactor and thread statistics,
 * reactor mode. Statistics are gathered with keel_for_each_thread because a thread's
 * poller statistics may only be read on that thread.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "keel/log.h"
#include "keel/reactor.h"
#include "keel/rpc.h"
#include "proc_stat.h"
#include "rpc_compat.h"
#include "rpc_internal.h"
#include "rpc_methods.h"

#ifndef KEEL_VERSION
#define KEEL_VERSION "0.0.0"
#endif

#define RPC_MAX_POLLERS_SHOWN 64
/* Pollers that woke a reactor most, per reactor ("(message)" competes with them). */
#define RPC_WAKERS_SHOWN 5
/* CPUs a cpumask can name (SPDK's default build allows 1024 too). */
#define RPC_CPUMASK_MAX_CPUS 1024u
/* /proc/stat of a machine with 1024 CPUs is about 100 KiB; cpu lines come first. */
#define RPC_PROC_STAT_MAX (128u << 10)

/* ------------------------------------------------------------------------------ */

struct rpc_get_methods_params {
	bool include_help;
};

struct rpc_methods_ctx {
	bool include_help;
	json_t *arr;
};

static void rpc_collect_method(const char *name, const char *help, void *ctx)
{
	struct rpc_methods_ctx *mc = ctx;

	if (mc->include_help) {
		json_array_append_new(mc->arr, json_pack("{s:s,s:s}", "name", name, "help", help));
	} else {
		json_array_append_new(mc->arr, json_string(name));
	}
}

static void rpc_get_methods(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"include_help", KEEL_RPC_PARAM_BOOL,
		 offsetof(struct rpc_get_methods_params, include_help), true},
	};
	/* SPDK: lib/rpc/rpc.c; rpc.py sends both, false unless -c / -i is given. */
	static const struct rpc_compat_param spdk[] = {
		{"current", KEEL_RPC_PARAM_BOOL, RPC_COMPAT_ANY, "false",
		 "every keel method is callable whenever keeld answers", NULL},
		{"include_aliases", KEEL_RPC_PARAM_BOOL, RPC_COMPAT_ANY, "false",
		 "keel has no deprecated method aliases", NULL},
	};
	struct rpc_get_methods_params p = {.include_help = false};
	struct rpc_methods_ctx mc;

	if (!rpc_compat_decode(req, params, table, 1, &p, spdk, 2)) {
		return;
	}
	mc.include_help = p.include_help;
	mc.arr = json_array();
	rpc_method_foreach(rpc_collect_method, &mc);
	keel_rpc_send_result(req, mc.arr);
}

static void rpc_keel_get_version(struct keel_rpc_request *req, json_t *params)
{
	unsigned major = 0, minor = 0, patch = 0;

	if (!keel_rpc_decode_params(req, params, NULL, 0, NULL)) {
		return;
	}
	sscanf(KEEL_VERSION, "%u.%u.%u", &major, &minor, &patch);
	keel_rpc_send_result(req,
			     json_pack("{s:s,s:{s:i,s:i,s:i}}", "version", "keel v" KEEL_VERSION,
				       "fields", "major", major, "minor", minor, "patch", patch));
}

/* ------------------------------------------------------------------------------ */
/* Thread statistics (one thread at a time via keel_for_each_thread)               */
/* ------------------------------------------------------------------------------ */

struct rpc_stats_ctx {
	struct keel_rpc_request *req;
	bool reactors; /* framework_get_reactors rather than thread_get_stats */
	json_t *threads;
	char *proc_stat; /* /proc/stat text (framework_get_reactors), or NULL */
};

static void rpc_stats_visit(void *arg)
{
	struct rpc_stats_ctx *ctx = arg;
	struct keel_thread *thread = keel_thread_get_current();
	struct keel_poller_stats pollers[RPC_MAX_POLLERS_SHOWN];
	struct keel_thread_stats st;
	json_t *obj, *plist;
	uint32_t n, i;

	if (thread == NULL) {
		return;
	}
	memset(&st, 0, sizeof(st));
	n = keel_thread_get_stats(thread, &st, pollers, RPC_MAX_POLLERS_SHOWN);
	if (n > RPC_MAX_POLLERS_SHOWN) {
		n = RPC_MAX_POLLERS_SHOWN;
	}
	obj = json_pack(
		"{s:s,s:I,s:i,s:I,s:I,s:I,s:I,s:i,s:i,s:i,s:i}", "name", st.name, "id",
		(json_int_t)st.id, "reactor", st.reactor == KEEL_REACTOR_ANY ? -1 : (int)st.reactor,
		"busy", (json_int_t)st.busy_ns, "idle", (json_int_t)st.idle_ns, "msgs",
		(json_int_t)st.msgs, "polls", (json_int_t)st.polls, "active_pollers_count",
		(int)st.active_pollers, "timed_pollers_count", (int)st.timed_pollers,
		"paused_pollers_count", (int)st.paused_pollers, "io_channels", (int)st.io_channels);
	if (obj == NULL) {
		return;
	}
	if (ctx->reactors) {
		/* Candidates for the reactor's "wakers"; rpc_reactors_json merges them. */
		n = keel_thread_get_wakers(thread, pollers, RPC_WAKERS_SHOWN);
	}
	plist = json_array();
	for (i = 0; i < n; i++) {
		json_array_append_new(
			plist,
			json_pack("{s:s,s:I,s:I,s:I,s:I,s:b,s:I}", "name", pollers[i].name,
				  "period_us", (json_int_t)pollers[i].period_us, "run_count",
				  (json_int_t)pollers[i].run_count, "busy_count",
				  (json_int_t)pollers[i].busy_count, "wakeups",
				  (json_int_t)pollers[i].wakeups, "paused", pollers[i].paused,
				  "instances", (json_int_t)pollers[i].instances));
	}
	json_object_set_new(obj, "pollers", plist);
	json_array_append_new(ctx->threads, obj);
}

static int rpc_waker_cmp(const void *a, const void *b)
{
	json_int_t wa = json_integer_value(json_object_get(*(json_t *const *)a, "wakeups"));
	json_int_t wb = json_integer_value(json_object_get(*(json_t *const *)b, "wakeups"));

	return wa < wb ? 1 : wa > wb ? -1 : 0;
}

/*
 * The pollers of reactor \p idx that woke it most, from each thread's own top list,
 * with "(message)" (the eventfd) as one more contender. Sorted, most first.
 */
static json_t *rpc_reactor_wakers(json_t *threads, uint32_t idx, uint64_t msg_wakeups)
{
	json_t *cand[RPC_WAKERS_SHOWN * 64 + 1];
	json_t *wakers = json_array(), *t, *p;
	size_t j, k, n = 0;

	if (msg_wakeups > 0) {
		cand[n++] = json_pack("{s:s,s:n,s:I,s:i}", "name", "(message)", "thread", "wakeups",
				      (json_int_t)msg_wakeups, "instances", 1);
	}
	json_array_foreach(threads, j, t) {
		if (json_integer_value(json_object_get(t, "reactor")) != (json_int_t)idx) {
			continue;
		}
		json_array_foreach(json_object_get(t, "pollers"), k, p) {
			if (n == sizeof(cand) / sizeof(cand[0])) {
				break;
			}
			cand[n++] = json_pack("{s:O,s:O,s:O,s:O}", "name",
					      json_object_get(p, "name"), "thread",
					      json_object_get(t, "name"), "wakeups",
					      json_object_get(p, "wakeups"), "instances",
					      json_object_get(p, "instances"));
		}
	}
	qsort(cand, n, sizeof(cand[0]), rpc_waker_cmp);
	for (j = 0; j < n; j++) {
		if (j < RPC_WAKERS_SHOWN && cand[j] != NULL) {
			json_array_append_new(wakers, cand[j]);
		} else {
			json_decref(cand[j]);
		}
	}
	return wakers;
}

/*
 * The CPUs a thread may run on in SPDK's cpumask form: hex digits without "0x"
 * ("1", "3", "20"). A placed thread runs on its reactor's CPU, an unplaced one on any
 * reactor's.
 */
static json_t *rpc_cpumask_json(json_int_t reactor)
{
	uint8_t nibbles[RPC_CPUMASK_MAX_CPUS / 4];
	char text[RPC_CPUMASK_MAX_CPUS / 4 + 1];
	uint32_t i, count = keel_reactor_count();
	size_t n = 0, top = 0;

	memset(nibbles, 0, sizeof(nibbles));
	for (i = 0; i < count; i++) {
		struct keel_reactor_stats rs;

		if ((reactor >= 0 && (json_int_t)i != reactor) ||
		    keel_reactor_get_stats(i, &rs) != 0 || rs.cpu >= RPC_CPUMASK_MAX_CPUS) {
			continue;
		}
		nibbles[rs.cpu / 4] |= (uint8_t)(1u << (rs.cpu % 4));
		if (rs.cpu / 4 + 1 > top) {
			top = rs.cpu / 4 + 1;
		}
	}
	if (top == 0) {
		return json_string("0");
	}
	while (top > 0) {
		text[n++] = "0123456789abcdef"[nibbles[--top]];
	}
	text[n] = '\0';
	return json_string(text);
}

/* SPDK's usr, sys and irq of a reactor: its core's times from /proc/stat (0 if unknown). */
static void rpc_reactor_cpu_times(json_t *obj, const char *proc_stat, uint32_t cpu)
{
	struct proc_cpu_times t = {0, 0, 0};

	if (proc_stat != NULL) {
		(void)keeld_proc_stat_cpu_times(proc_stat, cpu, &t);
	}
	json_object_set_new(obj, "irq", json_integer((json_int_t)t.irq));
	json_object_set_new(obj, "sys", json_integer((json_int_t)t.sys));
	json_object_set_new(obj, "usr", json_integer((json_int_t)t.usr));
}

static json_t *rpc_reactors_json(json_t *threads, const char *proc_stat)
{
	json_t *reactors = json_array();
	uint32_t i, count = keel_reactor_count();

	for (i = 0; i < count; i++) {
		struct keel_reactor_stats rs;
		json_t *lw = json_array(), *t, *obj;
		size_t j;

		if (keel_reactor_get_stats(i, &rs) != 0) {
			json_decref(lw);
			continue;
		}
		json_array_foreach(threads, j, t) {
			if (json_integer_value(json_object_get(t, "reactor")) == (json_int_t)i) {
				/* SPDK's elapsed: how long the thread has run, busy or idle. */
				json_array_append_new(
					lw,
					json_pack("{s:O,s:O,s:O,s:O,s:O,s:I}", "name",
						  json_object_get(t, "name"), "id",
						  json_object_get(t, "id"), "busy",
						  json_object_get(t, "busy"), "idle",
						  json_object_get(t, "idle"), "cpumask",
						  json_object_get(t, "cpumask"), "elapsed",
						  json_integer_value(json_object_get(t, "busy")) +
							  json_integer_value(
								  json_object_get(t, "idle"))));
			}
		}
		obj = json_pack(
			"{s:i,s:i,s:i,s:I,s:I,s:I,s:I,s:b,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,"
			"s:i,s:I,s:o,s:o}",
			"lcore", (int)rs.cpu, "reactor", (int)i, "numa_id", rs.numa_node, "tid",
			(json_int_t)rs.tid, "busy", (json_int_t)rs.busy_ns, "idle",
			(json_int_t)rs.idle_ns, "sleep", (json_int_t)rs.sleep_ns, "in_interrupt",
			rs.sleeping, "mode", keel_reactor_mode_name(rs.mode), "loops",
			(json_int_t)rs.loops, "wakeups", (json_int_t)rs.wakeups, "wakeups_msg",
			(json_int_t)rs.wakeups_msg, "wakeups_timer", (json_int_t)rs.wakeups_timer,
			"wakeups_fd", (json_int_t)rs.wakeups_fd, "wakeups_other",
			(json_int_t)rs.wakeups_other, "fd_polls", (json_int_t)rs.fd_polls,
			"fd_waiting", (int)rs.fd_waiting, "msgs", (json_int_t)rs.msgs, "wakers",
			rpc_reactor_wakers(threads, i, rs.wakeups_msg), "lw_threads", lw);
		if (obj != NULL) {
			rpc_reactor_cpu_times(obj, proc_stat, rs.cpu);
			json_array_append_new(reactors, obj);
		}
	}
	return reactors;
}

static void rpc_stats_reply(struct rpc_stats_ctx *ctx)
{
	json_t *result;

	if (ctx->reactors) {
		result = json_pack("{s:I,s:i,s:o}", "tick_rate", (json_int_t)1000000000, "pid",
				   (int)getpid(), "reactors",
				   rpc_reactors_json(ctx->threads, ctx->proc_stat));
	} else {
		result = json_pack("{s:I,s:O}", "tick_rate", (json_int_t)1000000000, "threads",
				   ctx->threads);
	}
	json_decref(ctx->threads);
	if (result == NULL) {
		keel_rpc_send_error(ctx->req, -ENOMEM, "out of memory building statistics");
	} else {
		keel_rpc_send_result(ctx->req, result);
	}
	free(ctx->proc_stat);
	free(ctx);
}

static int rpc_proc_stat_read(void *arg)
{
	struct rpc_stats_ctx *ctx = arg;

	return keeld_proc_stat_read(ctx->proc_stat, RPC_PROC_STAT_MAX);
}

static void rpc_proc_stat_done(void *cb_arg, int rc)
{
	struct rpc_stats_ctx *ctx = cb_arg;

	if (rc != 0) {
		KEEL_WARNLOG("rpc: cannot read /proc/stat: %s; usr, sys and irq read 0",
			     strerror(-rc));
		free(ctx->proc_stat);
		ctx->proc_stat = NULL;
	}
	rpc_stats_reply(ctx);
}

static void rpc_stats_done(void *arg)
{
	struct rpc_stats_ctx *ctx = arg;
	json_t *t;
	size_t i;

	json_array_foreach(ctx->threads, i, t) {
		json_object_set_new(
			t, "cpumask",
			rpc_cpumask_json(json_integer_value(json_object_get(t, "reactor"))));
	}
	if (!ctx->reactors) {
		rpc_stats_reply(ctx);
		return;
	}
	/* /proc/stat is a file: read it off the reactor. */
	ctx->proc_stat = malloc(RPC_PROC_STAT_MAX);
	if (ctx->proc_stat == NULL ||
	    keel_spawn_blocking(rpc_proc_stat_read, ctx, rpc_proc_stat_done, ctx) != 0) {
		free(ctx->proc_stat);
		ctx->proc_stat = NULL;
		rpc_stats_reply(ctx);
	}
}

static void rpc_stats_start(struct keel_rpc_request *req, json_t *params, bool reactors)
{
	struct rpc_stats_ctx *ctx;

	if (!keel_rpc_decode_params(req, params, NULL, 0, NULL)) {
		return;
	}
	ctx = calloc(1, sizeof(*ctx));
	if (ctx == NULL || (ctx->threads = json_array()) == NULL) {
		free(ctx);
		keel_rpc_send_error(req, -ENOMEM, "out of memory");
		return;
	}
	ctx->req = req;
	ctx->reactors = reactors;
	keel_for_each_thread(rpc_stats_visit, ctx, rpc_stats_done);
}

static void rpc_framework_get_reactors(struct keel_rpc_request *req, json_t *params)
{
	rpc_stats_start(req, params, true);
}

static void rpc_thread_get_stats(struct keel_rpc_request *req, json_t *params)
{
	rpc_stats_start(req, params, false);
}

/* ------------------------------------------------------------------------------ */

struct rpc_set_mode_params {
	const char *mode;
	int64_t reactor;
};

static void rpc_framework_set_reactor_mode(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"mode", KEEL_RPC_PARAM_STRING, offsetof(struct rpc_set_mode_params, mode), false},
		{"reactor", KEEL_RPC_PARAM_INT64, offsetof(struct rpc_set_mode_params, reactor),
		 true},
	};
	struct rpc_set_mode_params p = {.mode = NULL, .reactor = -1};
	enum keel_reactor_mode mode;
	uint32_t idx;
	int rc;

	if (!keel_rpc_decode_params(req, params, table, 2, &p)) {
		return;
	}
	if (keel_reactor_mode_parse(p.mode, &mode) != 0) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "mode: unknown mode '%.32s': use adaptive, poll or interrupt",
				    p.mode);
		return;
	}
	if (p.reactor < -1 || p.reactor >= (int64_t)keel_reactor_count()) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "reactor: no reactor %lld: there are %u (0 to %u), or omit it "
				    "for all",
				    (long long)p.reactor, keel_reactor_count(),
				    keel_reactor_count() - 1);
		return;
	}
	idx = p.reactor < 0 ? KEEL_REACTOR_ANY : (uint32_t)p.reactor;
	rc = keel_reactor_set_mode(idx, mode);
	if (rc != 0) {
		keel_rpc_send_error(req, rc, "cannot set reactor mode: %s", strerror(-rc));
		return;
	}
	if (p.reactor < 0) {
		KEEL_NOTICELOG("rpc: every reactor set to %s mode", keel_reactor_mode_name(mode));
	} else {
		KEEL_NOTICELOG("rpc: reactor %u set to %s mode", idx, keel_reactor_mode_name(mode));
	}
	keel_rpc_send_result(req, NULL);
}

void rpc_framework_register(void)
{
	keel_rpc_register_method("rpc_get_methods", rpc_get_methods,
				 "List the methods; {include_help: true} adds a line of help");
	keel_rpc_register_method("keel_get_version", rpc_keel_get_version, "Version of keeld");
	keel_rpc_register_method("framework_get_reactors", rpc_framework_get_reactors,
				 "Reactors: CPU, NUMA node, busy/idle ns, mode, threads");
	keel_rpc_register_method("thread_get_stats", rpc_thread_get_stats,
				 "Keel threads: busy/idle ns, poller counts and poller stats");
	keel_rpc_register_method("framework_set_reactor_mode", rpc_framework_set_reactor_mode,
				 "Set {mode: adaptive|poll|interrupt, reactor?} at run time");
}
