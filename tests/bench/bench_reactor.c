/*
 * keel-bench reactor: message rates, round trip, poller dispatch cost, idle CPU.
 *
 * Every measurement starts its own set of reactors (init/start/fini), runs for a
 * fixed wall time and stops from a timed poller. Rates divide by the measured wall
 * time of the run, so a loaded machine shows up as lower numbers, not as errors.
 */
#include <errno.h>
#include <getopt.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <time.h>

#include "bench.h"
#include "keel/log.h"
#include "keel/reactor.h"

#define CROSS_INFLIGHT 128
#define POLLER_COUNT 1000

static uint64_t g_duration_ms = 1000;
static uint64_t g_idle_ms = 2000;
static const char *g_only; /* run one measurement group only (debugging) */

static bool bench_selected(const char *name)
{
	return g_only == NULL || strcmp(g_only, name) == 0;
}

/* CPU time of the calling OS thread: the cost of work while actually on a core. */
static uint64_t cpu_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* A rate or cost measured against wall time and against the reactors' CPU time. */
struct bench_result {
	double wall;
	double cpu;
};

static int bench_run(const char *cpus, enum keel_reactor_mode mode, keel_msg_fn start_fn,
		     void *ctx)
{
	struct keel_reactor_opts opts;
	int rc;

	keel_reactor_opts_init(&opts);
	opts.cpus = cpus;
	opts.mode = mode;
	opts.watchdog_ms = 0; /* the bench deliberately runs long iterations */
	rc = keel_reactors_init(&opts);
	if (rc != 0) {
		fprintf(stderr, "keel-bench reactor: init failed: %s\n", strerror(-rc));
		return rc;
	}
	rc = keel_reactors_start(start_fn, ctx);
	keel_reactors_fini();
	return rc;
}

/* A timed poller that ends a run: calls fn(ctx) once, then stops the reactors. */
struct bench_timer {
	struct keel_poller *poller;
	void (*fn)(void *ctx);
	void *ctx;
};

static int bench_timer_fn(void *arg)
{
	struct bench_timer *t = arg;

	keel_poller_unregister(&t->poller);
	t->fn(t->ctx);
	keel_reactors_stop();
	return KEEL_POLLER_BUSY;
}

static void bench_timer_arm(struct bench_timer *t, uint64_t ms, void (*fn)(void *), void *ctx)
{
	t->fn = fn;
	t->ctx = ctx;
	t->poller = keel_poller_register(bench_timer_fn, t, ms * 1000, "bench_timer");
}

/* ------------------------------------------------------------------------------ */
/* Same-thread messages                                                            */
/* ------------------------------------------------------------------------------ */

struct same_ctx {
	struct bench_timer timer;
	struct keel_thread *self;
	uint64_t count;
	uint64_t start_ns, end_ns;
	uint64_t cpu_start, cpu_end;
	bool stop;
};

static void same_msg(void *arg)
{
	struct same_ctx *ctx = arg;

	ctx->count++;
	if (!ctx->stop) {
		keel_thread_send_msg(ctx->self, same_msg, ctx);
	}
}

static void same_end(void *arg)
{
	struct same_ctx *ctx = arg;

	ctx->end_ns = keel_now_ns();
	ctx->cpu_end = cpu_now_ns();
	ctx->stop = true;
}

static void same_start(void *arg)
{
	struct same_ctx *ctx = arg;

	ctx->self = keel_thread_get_current();
	ctx->start_ns = keel_now_ns();
	ctx->cpu_start = cpu_now_ns();
	bench_timer_arm(&ctx->timer, g_duration_ms, same_end, ctx);
	keel_thread_send_msg(ctx->self, same_msg, ctx);
}

static struct bench_result bench_same_thread(enum keel_reactor_mode mode)
{
	struct same_ctx ctx = {0};
	struct bench_result r = {0, 0};

	if (bench_run("0", mode, same_start, &ctx) != 0 || ctx.end_ns <= ctx.start_ns ||
	    ctx.cpu_end <= ctx.cpu_start) {
		return r;
	}
	r.wall = (double)ctx.count * 1e9 / (double)(ctx.end_ns - ctx.start_ns);
	r.cpu = (double)ctx.count * 1e9 / (double)(ctx.cpu_end - ctx.cpu_start);
	return r;
}

/* ------------------------------------------------------------------------------ */
/* Cross-reactor messages, both directions busy                                    */
/* ------------------------------------------------------------------------------ */

struct cross_side {
	struct keel_thread *peer_thread;
	struct cross_side *peer;
	_Atomic uint64_t received;
	uint64_t enomem;
	_Atomic bool stop;
};

struct cross_ctx {
	struct bench_timer timer;
	struct cross_side side[2];
	struct keel_thread *t1;
	uint64_t start_ns, end_ns;
	uint64_t recv_start[2], recv_end[2];
	uint64_t cpu0_start, cpu0_end;
	_Atomic uint64_t cpu1_start, cpu1_end;
};

static void cross_sample_t1_start(void *arg)
{
	struct cross_ctx *ctx = arg;

	atomic_store(&ctx->cpu1_start, cpu_now_ns());
}

static void cross_sample_t1_end(void *arg)
{
	struct cross_ctx *ctx = arg;

	atomic_store(&ctx->cpu1_end, cpu_now_ns());
}

static void cross_msg(void *arg)
{
	struct cross_side *s = arg; /* the receiving side */

	atomic_store_explicit(&s->received,
			      atomic_load_explicit(&s->received, memory_order_relaxed) + 1,
			      memory_order_relaxed);
	if (atomic_load_explicit(&s->stop, memory_order_relaxed)) {
		return;
	}
	/* Bounce it back: each core keeps receiving and sending. */
	while (keel_thread_send_msg(s->peer_thread, cross_msg, s->peer) == -ENOMEM) {
		s->enomem++;
	}
}

static void cross_prime(void *arg)
{
	struct cross_side *s = arg; /* runs on this side's thread */

	for (int i = 0; i < CROSS_INFLIGHT; i++) {
		keel_thread_send_msg(s->peer_thread, cross_msg, s->peer);
	}
}

static void cross_end(void *arg)
{
	struct cross_ctx *ctx = arg;

	ctx->end_ns = keel_now_ns();
	ctx->cpu0_end = cpu_now_ns();
	keel_thread_send_msg(ctx->t1, cross_sample_t1_end, ctx);
	for (int i = 0; i < 2; i++) {
		ctx->recv_end[i] = atomic_load(&ctx->side[i].received);
	}
	atomic_store(&ctx->side[0].stop, true);
	atomic_store(&ctx->side[1].stop, true);
}

static void cross_begin(void *arg)
{
	struct cross_ctx *ctx = arg;

	/* Warm-up done: measure from here. */
	ctx->start_ns = keel_now_ns();
	ctx->cpu0_start = cpu_now_ns();
	keel_thread_send_msg(ctx->t1, cross_sample_t1_start, ctx);
	for (int i = 0; i < 2; i++) {
		ctx->recv_start[i] = atomic_load(&ctx->side[i].received);
	}
	bench_timer_arm(&ctx->timer, g_duration_ms, cross_end, ctx);
}

static struct bench_timer g_warmup;

static int cross_warmup_fn(void *arg)
{
	keel_poller_unregister(&g_warmup.poller);
	cross_begin(arg);
	return KEEL_POLLER_BUSY;
}

static void cross_start(void *arg)
{
	struct cross_ctx *ctx = arg;
	struct keel_thread *t0 = keel_thread_get_current();

	ctx->t1 = keel_thread_create("bench_peer", 1);
	ctx->side[0].peer_thread = ctx->t1; /* side 0 lives on t0, sends to t1 */
	ctx->side[0].peer = &ctx->side[1];
	ctx->side[1].peer_thread = t0;
	ctx->side[1].peer = &ctx->side[0];
	cross_prime(&ctx->side[0]);
	keel_thread_send_msg(ctx->t1, cross_prime, &ctx->side[1]);
	g_warmup.poller = keel_poller_register(cross_warmup_fn, ctx, 100 * 1000, "warmup");
}

static struct bench_result bench_cross_core(enum keel_reactor_mode mode)
{
	struct cross_ctx ctx = {0};
	struct bench_result r = {0, 0};
	double recv, cpu;

	if (bench_run("0-1", mode, cross_start, &ctx) != 0 || ctx.end_ns <= ctx.start_ns) {
		return r;
	}
	recv = (double)(ctx.recv_end[0] - ctx.recv_start[0]) +
	       (double)(ctx.recv_end[1] - ctx.recv_start[1]);
	/* Per core: what the two reactors received, over two cores' worth of time. */
	r.wall = recv / 2 * 1e9 / (double)(ctx.end_ns - ctx.start_ns);
	cpu = (double)(ctx.cpu0_end - ctx.cpu0_start) +
	      (double)(atomic_load(&ctx.cpu1_end) - atomic_load(&ctx.cpu1_start));
	r.cpu = cpu > 0 ? recv * 1e9 / cpu : 0;
	return r;
}

/* ------------------------------------------------------------------------------ */
/* Round trip                                                                      */
/* ------------------------------------------------------------------------------ */

struct rtt_ctx {
	struct bench_timer timer;
	struct keel_thread *t0, *t1;
	uint64_t trips;
	uint64_t start_ns, end_ns;
	bool stop;
};

static void rtt_ping(void *arg);

static void rtt_pong(void *arg)
{
	struct rtt_ctx *ctx = arg;

	ctx->trips++;
	if (!ctx->stop) {
		keel_thread_send_msg(ctx->t1, rtt_ping, ctx);
	}
}

static void rtt_ping(void *arg)
{
	struct rtt_ctx *ctx = arg;

	keel_thread_send_msg(ctx->t0, rtt_pong, ctx);
}

static void rtt_end(void *arg)
{
	struct rtt_ctx *ctx = arg;

	ctx->end_ns = keel_now_ns();
	ctx->stop = true;
}

static void rtt_start(void *arg)
{
	struct rtt_ctx *ctx = arg;

	ctx->t0 = keel_thread_get_current();
	ctx->t1 = keel_thread_create("bench_pong", 1);
	ctx->start_ns = keel_now_ns();
	bench_timer_arm(&ctx->timer, g_duration_ms, rtt_end, ctx);
	keel_thread_send_msg(ctx->t1, rtt_ping, ctx);
}

static double bench_round_trip(enum keel_reactor_mode mode)
{
	struct rtt_ctx ctx = {0};

	if (bench_run("0-1", mode, rtt_start, &ctx) != 0 || ctx.trips == 0) {
		return 0;
	}
	return (double)(ctx.end_ns - ctx.start_ns) / (double)ctx.trips;
}

/* ------------------------------------------------------------------------------ */
/* Poller dispatch                                                                 */
/* ------------------------------------------------------------------------------ */

struct poller_ctx {
	struct bench_timer timer;
	struct keel_poller *pollers[POLLER_COUNT];
	uint64_t period_us;
	uint64_t start_ns, end_ns;
	uint64_t cpu_start, cpu_end;
	uint64_t runs;
};

static int nop_poller(void *arg)
{
	(void)arg;
	return KEEL_POLLER_IDLE;
}

static void poller_end(void *arg)
{
	struct poller_ctx *ctx = arg;
	struct keel_poller_stats *ps = calloc(POLLER_COUNT + 1, sizeof(*ps));
	uint32_t n;

	ctx->end_ns = keel_now_ns();
	ctx->cpu_end = cpu_now_ns();
	n = keel_thread_get_stats(keel_thread_get_current(), NULL, ps, POLLER_COUNT + 1);
	for (uint32_t i = 0; i < n; i++) {
		if (strcmp(ps[i].name, "nop") == 0) {
			ctx->runs += ps[i].run_count;
		}
	}
	free(ps);
	for (int i = 0; i < POLLER_COUNT; i++) {
		keel_poller_unregister(&ctx->pollers[i]);
	}
}

static void poller_start(void *arg)
{
	struct poller_ctx *ctx = arg;

	for (int i = 0; i < POLLER_COUNT; i++) {
		ctx->pollers[i] = keel_poller_register(nop_poller, NULL, ctx->period_us, "nop");
	}
	ctx->start_ns = keel_now_ns();
	ctx->cpu_start = cpu_now_ns();
	bench_timer_arm(&ctx->timer, g_duration_ms, poller_end, ctx);
}

static struct bench_result bench_pollers(uint64_t period_us)
{
	struct poller_ctx *ctx = calloc(1, sizeof(*ctx));
	struct bench_result r = {0, 0};

	ctx->period_us = period_us;
	if (bench_run("0", KEEL_REACTOR_MODE_POLL, poller_start, ctx) == 0 && ctx->runs > 0) {
		r.wall = (double)(ctx->end_ns - ctx->start_ns) / (double)ctx->runs;
		r.cpu = (double)(ctx->cpu_end - ctx->cpu_start) / (double)ctx->runs;
	}
	free(ctx);
	return r;
}

/* ------------------------------------------------------------------------------ */
/* Idle CPU                                                                        */
/* ------------------------------------------------------------------------------ */

struct idle_ctx {
	struct bench_timer timer;
	struct keel_thread *probe;
	uint64_t wall_start, wall_end;
	uint64_t cpu0_start, cpu0_end;
	_Atomic uint64_t cpu1_start, cpu1_end;
	_Atomic int probes_done;
};

static uint64_t thread_cpu_ns(void)
{
	struct rusage ru;

	/* RUSAGE_THREAD: user + system time of this reactor's OS thread only. */
	getrusage(RUSAGE_THREAD, &ru);
	return ((uint64_t)ru.ru_utime.tv_sec + (uint64_t)ru.ru_stime.tv_sec) * 1000000000ULL +
	       ((uint64_t)ru.ru_utime.tv_usec + (uint64_t)ru.ru_stime.tv_usec) * 1000ULL;
}

static void idle_probe_start(void *arg)
{
	struct idle_ctx *ctx = arg;

	atomic_store(&ctx->cpu1_start, thread_cpu_ns());
}

static void idle_probe_end(void *arg)
{
	struct idle_ctx *ctx = arg;

	atomic_store(&ctx->cpu1_end, thread_cpu_ns());
	keel_thread_exit(keel_thread_get_current());
}

static void idle_end(void *arg)
{
	struct idle_ctx *ctx = arg;

	ctx->wall_end = keel_now_ns();
	ctx->cpu0_end = thread_cpu_ns();
	keel_thread_send_msg(ctx->probe, idle_probe_end, ctx);
}

static void idle_start(void *arg)
{
	struct idle_ctx *ctx = arg;

	ctx->probe = keel_thread_create("idle_probe", 1);
	keel_thread_send_msg(ctx->probe, idle_probe_start, ctx);
	ctx->wall_start = keel_now_ns();
	ctx->cpu0_start = thread_cpu_ns();
	bench_timer_arm(&ctx->timer, g_idle_ms, idle_end, ctx);
}

/* \return the busier of the two reactors, in percent of one core. */
static double bench_idle(enum keel_reactor_mode mode)
{
	struct idle_ctx ctx = {0};
	double wall, r0, r1;

	if (bench_run("0-1", mode, idle_start, &ctx) != 0 || ctx.wall_end <= ctx.wall_start) {
		return -1;
	}
	wall = (double)(ctx.wall_end - ctx.wall_start);
	r0 = (double)(ctx.cpu0_end - ctx.cpu0_start) * 100 / wall;
	r1 = (double)(atomic_load(&ctx.cpu1_end) - atomic_load(&ctx.cpu1_start)) * 100 / wall;
	return r0 > r1 ? r0 : r1;
}

/* ------------------------------------------------------------------------------ */
/* Report                                                                          */
/* ------------------------------------------------------------------------------ */

static void usage(void)
{
	printf("usage: keel-bench reactor [--json] [--duration MS] [--idle MS] [--only GROUP]\n"
	       "  --json          print one JSON object instead of a table\n"
	       "  --duration MS   length of each rate measurement (default 1000)\n"
	       "  --idle MS       length of each idle-CPU measurement (default 2000)\n"
	       "  --only GROUP    same, cross, rtt, pollers or idle\n"
	       "Runs reactors on CPUs 0-1 (same-thread and poller tests on CPU 0).\n");
}

static const char *verdict(bool ok)
{
	return ok ? "ok" : "MISS";
}

static void bench_line_rate(const char *what, const char *mode, struct bench_result r,
			    double target, const char *spdk)
{
	char buf[48], tgt[16];

	snprintf(buf, sizeof(buf), "%.2fM [%.2fM]", r.cpu / 1e6, r.wall / 1e6);
	snprintf(tgt, sizeof(tgt), ">= %.0fM", target / 1e6);
	printf("%-28s %-9s %22s %9s %7s %s\n", what, mode, buf, tgt, spdk,
	       verdict(r.cpu >= target));
}

static void bench_line_cost(const char *what, const char *mode, struct bench_result r,
			    double target, const char *spdk)
{
	char buf[48], tgt[16];

	snprintf(buf, sizeof(buf), "%.2fns [%.2fns]", r.cpu, r.wall);
	snprintf(tgt, sizeof(tgt), "<= %.0fns", target);
	printf("%-28s %-9s %22s %9s %7s %s\n", what, mode, buf, tgt, spdk,
	       verdict(r.cpu > 0 && r.cpu <= target));
}

int bench_reactor_main(int argc, char **argv)
{
	static const struct option long_opts[] = {
		{"json", no_argument, NULL, 'j'},
		{"duration", required_argument, NULL, 'd'},
		{"idle", required_argument, NULL, 'i'},
		{"only", required_argument, NULL, 'o'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct bench_result same_poll = {0, 0}, same_adapt = {0, 0}, cross_poll = {0, 0};
	struct bench_result cross_adapt = {0, 0}, active = {0, 0}, timed = {0, 0};
	double rtt_poll = 0, rtt_adapt = 0, idle_intr = -1, idle_adapt = -1;
	double load[1] = {0};
	bool json = false;
	int c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "jd:i:o:h", long_opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'd':
			g_duration_ms = strtoull(optarg, NULL, 10);
			break;
		case 'i':
			g_idle_ms = strtoull(optarg, NULL, 10);
			break;
		case 'o':
			g_only = optarg;
			break;
		case 'h':
			usage();
			return 0;
		default:
			usage();
			return 2;
		}
	}
	if (g_duration_ms == 0 || g_idle_ms == 0) {
		usage();
		return 2;
	}
	keel_log_set_level(KEEL_LOG_WARN);
	getloadavg(load, 1);

	if (bench_selected("same")) {
		same_poll = bench_same_thread(KEEL_REACTOR_MODE_POLL);
		same_adapt = bench_same_thread(KEEL_REACTOR_MODE_ADAPTIVE);
	}
	if (bench_selected("cross")) {
		cross_poll = bench_cross_core(KEEL_REACTOR_MODE_POLL);
		cross_adapt = bench_cross_core(KEEL_REACTOR_MODE_ADAPTIVE);
	}
	if (bench_selected("rtt")) {
		rtt_poll = bench_round_trip(KEEL_REACTOR_MODE_POLL);
		rtt_adapt = bench_round_trip(KEEL_REACTOR_MODE_ADAPTIVE);
	}
	if (bench_selected("pollers")) {
		active = bench_pollers(0);
		timed = bench_pollers(1);
	}
	if (bench_selected("idle")) {
		idle_intr = bench_idle(KEEL_REACTOR_MODE_INTERRUPT);
		idle_adapt = bench_idle(KEEL_REACTOR_MODE_ADAPTIVE);
	}

	if (json) {
		/* Headline keys are per CPU-second of the reactor threads (robust on a
		 * shared machine); *_wall keys divide by wall time instead. */
		printf("{\"same_thread_msgs_per_s\": %.0f, \"cross_core_msgs_per_s\": %.0f, "
		       "\"round_trip_ns\": %.0f, \"active_poller_ns\": %.2f, "
		       "\"timed_poller_ns\": %.2f, \"idle_cpu_pct_interrupt\": %.3f, "
		       "\"idle_cpu_pct_adaptive\": %.3f, "
		       "\"same_thread_msgs_per_s_adaptive\": %.0f, "
		       "\"cross_core_msgs_per_s_adaptive\": %.0f, "
		       "\"round_trip_ns_adaptive\": %.0f, "
		       "\"same_thread_msgs_per_s_wall\": %.0f, "
		       "\"cross_core_msgs_per_s_wall\": %.0f, "
		       "\"active_poller_ns_wall\": %.2f, \"timed_poller_ns_wall\": %.2f, "
		       "\"load_average\": %.2f}\n",
		       same_poll.cpu, cross_poll.cpu, rtt_poll, active.cpu, timed.cpu, idle_intr,
		       idle_adapt, same_adapt.cpu, cross_adapt.cpu, rtt_adapt, same_poll.wall,
		       cross_poll.wall, active.wall, timed.wall, load[0]);
		return 0;
	}
	printf("keel-bench reactor: results per CPU-second of the reactor threads "
	       "(wall-clock figure in brackets)\n");
	if (load[0] > 1.0) {
		printf("note: load average %.2f: other work shares these cores, wall-clock "
		       "figures are pessimistic\n", load[0]);
	}
	printf("%-28s %-9s %22s %9s %7s %s\n", "measurement", "mode", "result", "target", "SPDK",
	       "");
	bench_line_rate("same-thread msgs/s", "poll", same_poll, 40e6, "39.4M");
	bench_line_rate("same-thread msgs/s", "adaptive", same_adapt, 40e6, "39.4M");
	bench_line_rate("cross-core msgs/s per core", "poll", cross_poll, 6e6, "3.08M");
	bench_line_rate("cross-core msgs/s per core", "adaptive", cross_adapt, 6e6, "3.08M");
	printf("%-28s %-9s %20.0fns %9s %7s\n", "cross-core round trip", "poll", rtt_poll, "-", "-");
	printf("%-28s %-9s %20.0fns %9s %7s\n", "cross-core round trip", "adaptive", rtt_adapt,
	       "-", "-");
	bench_line_cost("active poller, 1000 idle", "poll", active, 3.0, "3ns");
	bench_line_cost("timed poller, 1000 x 1us", "poll", timed, 22.0, "22ns");
	printf("%-28s %-9s %21.3f%% %9s %7s %s\n", "idle CPU of a reactor", "interrupt",
	       idle_intr, "< 1%", "-", verdict(idle_intr >= 0 && idle_intr < 1.0));
	printf("%-28s %-9s %21.3f%% %9s %7s %s\n", "idle CPU of a reactor", "adaptive",
	       idle_adapt, "< 1%", "-", verdict(idle_adapt >= 0 && idle_adapt < 1.0));
	return 0;
}
