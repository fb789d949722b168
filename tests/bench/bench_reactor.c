/*
 * keel-bench reactor: message rates, round trip, poller dispatch cost and idle CPU of
 * bare reactors, each row next to the SPDK tool that measures the same thing.
 *
 * Like with like. SPDK's reactor_perf pushes every event through the reactor's event
 * ring, so the comparable keel row sends through a thread's message ring (two keel
 * threads on one reactor); keel's same-thread local queue (no ring, no atomics) is an
 * extra row. event_perf keeps 4 events in flight per core, so the comparable
 * cross-core row does too. poller_perf's pollers report busy and it divides busy
 * time by runs, so keel's pollers report busy too. Verdicts divide by wall-clock
 * time, as SPDK's tools do; per CPU-second of the reactor threads is an extra column
 * (it discounts time the reactors lost to other work on a shared machine).
 *
 * SPDK's figures are constants measured on another machine of the same kind
 * (g_spdk_origin says which), not in this run: compare ratios with care, and
 * re-measure SPDK when the machine changes.
 *
 * Every measurement starts its own set of reactors (init/start/fini), warms up for
 * 100 ms where messages are involved, runs for a fixed wall time and stops from a
 * timed poller. The idle rows measure bare reactors; keeld as started by default is
 * measured by tests/bench/idle.sh.
 */
#include <errno.h>
#include <getopt.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "bench.h"
#include "keel/log.h"
#include "keel/reactor.h"

#define POLLER_COUNT 1000
#define WARMUP_US (100 * 1000)

static const char g_spdk_origin[] =
	"SPDK figures are constants, not measured in this run: SPDK 26.09-pre built against\n"
	"Debian's DPDK 22.11, on a 2 vCPU AMD EPYC guest at 2.1 GHz, kernel 6.18, 5 s runs,\n"
	"ranges over repeated runs (2026-12; recorded in docs/performance.md). Absolute\n"
	"figures do not carry between machines.\n";

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

/* Message handler: the CPU time of the OS thread running it, into *arg. */
static void cpu_sample(void *arg)
{
	_Atomic uint64_t *out = arg;

	atomic_store(out, cpu_now_ns());
}

/* A rate or cost measured against wall time and against the reactors' CPU time. */
struct bench_result {
	double wall;
	double cpu; /* < 0: not measured */
};

static int bench_run(const char *cpus, enum keel_reactor_mode mode, keel_msg_fn start_fn, void *ctx)
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
	bool stop_reactors;
};

static int bench_timer_fn(void *arg)
{
	struct bench_timer *t = arg;

	keel_poller_unregister(&t->poller);
	t->fn(t->ctx);
	if (t->stop_reactors) {
		keel_reactors_stop();
	}
	return KEEL_POLLER_BUSY;
}

static void bench_timer_arm(struct bench_timer *t, uint64_t us, void (*fn)(void *), void *ctx,
			    bool stop_reactors)
{
	t->fn = fn;
	t->ctx = ctx;
	t->stop_reactors = stop_reactors;
	t->poller = keel_poller_register(bench_timer_fn, t, us, "bench_timer");
}

/* ------------------------------------------------------------------------------ */
/* Messages between two keel threads                                               */
/* ------------------------------------------------------------------------------ */

/*
 * Two sides, each living on a keel thread, bounce messages to each other: every
 * message received is sent back to the other side. Side 0 lives on the start thread
 * (reactor 0). Side 1 lives on
 *   - the same thread (peer == MSG_PEER_SELF): keel's local queue, no ring;
 *   - a second keel thread on reactor 0 (MSG_PEER_SAME_REACTOR): every message goes
 *     through the receiving thread's MPSC ring, like an SPDK event;
 *   - a keel thread on reactor 1 (MSG_PEER_OTHER_REACTOR): cross-core.
 */
enum msg_peer {
	MSG_PEER_SELF,
	MSG_PEER_SAME_REACTOR,
	MSG_PEER_OTHER_REACTOR,
};

struct msg_side {
	struct keel_thread *peer_thread;
	struct msg_side *peer;
	uint32_t prime; /* messages this side sends at the start */
	_Atomic uint64_t received;
	_Atomic bool stop;
};

struct msg_ctx {
	enum msg_peer peer;
	struct bench_timer warmup;
	struct bench_timer timer;
	struct msg_side side[2];
	struct keel_thread *t0, *t1;
	uint64_t start_ns, end_ns;
	uint64_t recv_start, recv_end;
	uint64_t cpu0_start, cpu0_end;
	_Atomic uint64_t cpu1_start, cpu1_end;
};

static void msg_recv(void *arg);

static void msg_send(struct msg_side *from)
{
	/* -ENOMEM (ring full) only when the peer's 16384-entry ring holds more than this
	 * benchmark ever has in flight, i.e. never on one reactor, where spinning could
	 * not drain it; across cores the peer drains it. */
	while (keel_thread_send_msg(from->peer_thread, msg_recv, from->peer) == -ENOMEM) {
	}
}

static void msg_recv(void *arg)
{
	struct msg_side *s = arg; /* the receiving side */

	atomic_store_explicit(&s->received,
			      atomic_load_explicit(&s->received, memory_order_relaxed) + 1,
			      memory_order_relaxed);
	if (atomic_load_explicit(&s->stop, memory_order_relaxed)) {
		return;
	}
	msg_send(s);
}

static void msg_prime(void *arg)
{
	struct msg_side *s = arg; /* runs on this side's thread */

	for (uint32_t i = 0; i < s->prime; i++) {
		msg_send(s);
	}
}

static uint64_t msg_received(struct msg_ctx *ctx)
{
	return atomic_load(&ctx->side[0].received) + atomic_load(&ctx->side[1].received);
}

static void msg_end(void *arg)
{
	struct msg_ctx *ctx = arg;

	ctx->end_ns = keel_now_ns();
	ctx->cpu0_end = cpu_now_ns();
	ctx->recv_end = msg_received(ctx);
	if (ctx->peer == MSG_PEER_OTHER_REACTOR) {
		keel_thread_send_msg(ctx->t1, cpu_sample, &ctx->cpu1_end);
	}
	atomic_store(&ctx->side[0].stop, true);
	atomic_store(&ctx->side[1].stop, true);
}

static void msg_begin(void *arg)
{
	struct msg_ctx *ctx = arg;

	/* Warm-up done: measure from here. */
	ctx->start_ns = keel_now_ns();
	ctx->cpu0_start = cpu_now_ns();
	ctx->recv_start = msg_received(ctx);
	if (ctx->peer == MSG_PEER_OTHER_REACTOR) {
		keel_thread_send_msg(ctx->t1, cpu_sample, &ctx->cpu1_start);
	}
	bench_timer_arm(&ctx->timer, g_duration_ms * 1000, msg_end, ctx, true);
}

static void msg_start(void *arg)
{
	struct msg_ctx *ctx = arg;

	ctx->t0 = keel_thread_get_current();
	switch (ctx->peer) {
	case MSG_PEER_SELF:
		ctx->t1 = ctx->t0;
		break;
	case MSG_PEER_SAME_REACTOR:
		ctx->t1 = keel_thread_create("bench_peer", 0);
		break;
	case MSG_PEER_OTHER_REACTOR:
		ctx->t1 = keel_thread_create("bench_peer", 1);
		break;
	}
	if (ctx->t1 == NULL) {
		fprintf(stderr, "keel-bench reactor: cannot create the peer thread\n");
		keel_reactors_stop();
		return;
	}
	ctx->side[0].peer_thread = ctx->t1; /* side 0 lives on t0, sends to t1 */
	ctx->side[0].peer = &ctx->side[1];
	ctx->side[1].peer_thread = ctx->t0;
	ctx->side[1].peer = &ctx->side[0];
	msg_prime(&ctx->side[0]);
	if (ctx->t1 == ctx->t0) {
		msg_prime(&ctx->side[1]);
	} else {
		keel_thread_send_msg(ctx->t1, msg_prime, &ctx->side[1]);
	}
	bench_timer_arm(&ctx->warmup, WARMUP_US, msg_begin, ctx, false);
}

/*
 * \return messages received per second per reactor (wall) and per CPU-second of the
 * reactor threads. prime0/prime1: messages each side starts with.
 */
static struct bench_result bench_msgs(enum msg_peer peer, uint32_t prime0, uint32_t prime1,
				      enum keel_reactor_mode mode)
{
	struct msg_ctx ctx = {.peer = peer};
	struct bench_result r = {0, -1};
	double recv, cpu, reactors = peer == MSG_PEER_OTHER_REACTOR ? 2 : 1;

	ctx.side[0].prime = prime0;
	ctx.side[1].prime = prime1;
	if (bench_run(peer == MSG_PEER_OTHER_REACTOR ? "0-1" : "0", mode, msg_start, &ctx) != 0 ||
	    ctx.end_ns <= ctx.start_ns) {
		return r;
	}
	recv = (double)(ctx.recv_end - ctx.recv_start);
	r.wall = recv / reactors * 1e9 / (double)(ctx.end_ns - ctx.start_ns);
	cpu = (double)(ctx.cpu0_end - ctx.cpu0_start);
	if (peer == MSG_PEER_OTHER_REACTOR) {
		if (atomic_load(&ctx.cpu1_end) <= atomic_load(&ctx.cpu1_start)) {
			return r; /* the peer's end sample did not run: no CPU figure */
		}
		cpu += (double)(atomic_load(&ctx.cpu1_end) - atomic_load(&ctx.cpu1_start));
	}
	if (cpu > 0) {
		r.cpu = recv * 1e9 / cpu;
	}
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
	bench_timer_arm(&ctx->timer, g_duration_ms * 1000, rtt_end, ctx, true);
	keel_thread_send_msg(ctx->t1, rtt_ping, ctx);
}

static struct bench_result bench_round_trip(enum keel_reactor_mode mode)
{
	struct rtt_ctx ctx = {0};
	struct bench_result r = {0, -1};

	if (bench_run("0-1", mode, rtt_start, &ctx) == 0 && ctx.trips > 0) {
		r.wall = (double)(ctx.end_ns - ctx.start_ns) / (double)ctx.trips;
	}
	return r;
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

/* Reports work done, as poller_perf's pollers do (SPDK counts busy time per run). */
static int nop_poller(void *arg)
{
	(void)arg;
	return KEEL_POLLER_BUSY;
}

static void poller_end(void *arg)
{
	struct poller_ctx *ctx = arg;
	struct keel_poller_stats *ps = calloc(POLLER_COUNT + 1, sizeof(*ps));
	uint32_t n;

	ctx->end_ns = keel_now_ns();
	ctx->cpu_end = cpu_now_ns();
	n = ps ? keel_thread_get_stats(keel_thread_get_current(), NULL, ps, POLLER_COUNT + 1) : 0;
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
	bench_timer_arm(&ctx->timer, g_duration_ms * 1000, poller_end, ctx, true);
}

static struct bench_result bench_pollers(uint64_t period_us)
{
	struct poller_ctx *ctx = calloc(1, sizeof(*ctx));
	struct bench_result r = {0, -1};

	if (ctx == NULL) {
		return r;
	}
	ctx->period_us = period_us;
	if (bench_run("0", KEEL_REACTOR_MODE_POLL, poller_start, ctx) == 0 && ctx->runs > 0) {
		r.wall = (double)(ctx->end_ns - ctx->start_ns) / (double)ctx->runs;
		r.cpu = (double)(ctx->cpu_end - ctx->cpu_start) / (double)ctx->runs;
	}
	free(ctx);
	return r;
}

/* ------------------------------------------------------------------------------ */
/* Idle CPU of bare reactors                                                       */
/* ------------------------------------------------------------------------------ */

struct idle_ctx {
	struct bench_timer timer;
	struct keel_thread *probe;
	uint64_t wall_start, wall_end;
	uint64_t cpu0_start, cpu0_end;
	_Atomic uint64_t cpu1_start, cpu1_end;
};

static void idle_probe_end(void *arg)
{
	struct idle_ctx *ctx = arg;

	cpu_sample(&ctx->cpu1_end);
	keel_thread_exit(keel_thread_get_current());
}

static void idle_end(void *arg)
{
	struct idle_ctx *ctx = arg;

	ctx->wall_end = keel_now_ns();
	ctx->cpu0_end = cpu_now_ns();
	keel_thread_send_msg(ctx->probe, idle_probe_end, ctx);
}

static void idle_start(void *arg)
{
	struct idle_ctx *ctx = arg;

	ctx->probe = keel_thread_create("idle_probe", 1);
	keel_thread_send_msg(ctx->probe, cpu_sample, &ctx->cpu1_start);
	ctx->wall_start = keel_now_ns();
	ctx->cpu0_start = cpu_now_ns();
	bench_timer_arm(&ctx->timer, g_idle_ms * 1000, idle_end, ctx, true);
}

/* \return the busier of the two reactors, in percent of one core (wall: -1 on failure). */
static struct bench_result bench_idle(enum keel_reactor_mode mode)
{
	struct idle_ctx ctx = {0};
	struct bench_result r = {-1, -1};
	double wall, r0, r1;

	if (bench_run("0-1", mode, idle_start, &ctx) != 0 || ctx.wall_end <= ctx.wall_start) {
		return r;
	}
	wall = (double)(ctx.wall_end - ctx.wall_start);
	r0 = (double)(ctx.cpu0_end - ctx.cpu0_start) * 100 / wall;
	r1 = (double)(atomic_load(&ctx.cpu1_end) - atomic_load(&ctx.cpu1_start)) * 100 / wall;
	r.wall = r0 > r1 ? r0 : r1;
	return r;
}

/* ------------------------------------------------------------------------------ */
/* Rows and report                                                                 */
/* ------------------------------------------------------------------------------ */

enum row_kind {
	ROW_RATE, /* messages/s: higher is better, target is a minimum */
	ROW_COST, /* ns: lower is better, target is a maximum */
	ROW_PCT,  /* % of one core: lower is better, target is a maximum */
};

enum row_measure {
	MEASURE_MSGS,
	MEASURE_RTT,
	MEASURE_POLLERS,
	MEASURE_IDLE,
};

/* One measurement and what both sides ran with. */
struct bench_row {
	const char *group;
	const char *what;
	enum row_measure measure;
	/* MEASURE_MSGS: where the peer lives, messages each side starts with;
	 * MEASURE_POLLERS: arg0 is the poller period in us. */
	enum msg_peer peer;
	uint32_t arg0, arg1;
	enum keel_reactor_mode mode;
	enum row_kind kind;
	double target;    /* 0: no target (an extra row) */
	bool verdict;     /* false: the target is judged elsewhere (see keel) */
	const char *keel; /* what keel ran with */
	const char *spdk; /* the SPDK tool and what it ran with; NULL: no anchor */
	const char *spdk_result;
};

static const struct bench_row g_rows[] = {
	{"same", "msgs/s, one reactor, ring, 1 in flight", MEASURE_MSGS, MSG_PEER_SAME_REACTOR, 1,
	 0, KEEL_REACTOR_MODE_POLL, ROW_RATE, 40e6, true,
	 "2 keel threads on reactor 0 (CPU 0, pinned) bounce 1 message through their "
	 "MPSC rings",
	 "reactor_perf -t 5: 1 event re-posting itself through the reactor's event ring, "
	 "core 0, poll",
	 "15.5-17.5M"},
	{"same", "msgs/s, one reactor, ring, 1 in flight", MEASURE_MSGS, MSG_PEER_SAME_REACTOR, 1,
	 0, KEEL_REACTOR_MODE_ADAPTIVE, ROW_RATE, 40e6, true, "as above, adaptive mode",
	 "as above (SPDK polls)", "15.5-17.5M"},
	{"same", "msgs/s, one reactor, ring, 128 in flight", MEASURE_MSGS, MSG_PEER_SAME_REACTOR,
	 64, 64, KEEL_REACTOR_MODE_POLL, ROW_RATE, 0, true,
	 "2 keel threads on reactor 0 (CPU 0, pinned), 64 messages started by each, "
	 "through their MPSC rings",
	 "reactor_perf -t 5 -q 128: 128 events re-posting themselves, core 0, poll", "31.4-38.0M"},
	{"same", "msgs/s, same thread, local queue", MEASURE_MSGS, MSG_PEER_SELF, 1, 0,
	 KEEL_REACTOR_MODE_POLL, ROW_RATE, 0, true,
	 "1 keel thread on reactor 0 (CPU 0) re-posting 1 message to itself: local FIFO, no "
	 "ring, no atomics (extra row: SPDK has no such path)",
	 NULL, NULL},
	{"cross", "msgs/s per core, cross-core, 4 in flight", MEASURE_MSGS, MSG_PEER_OTHER_REACTOR,
	 4, 4, KEEL_REACTOR_MODE_POLL, ROW_RATE, 6e6, true,
	 "keel threads on reactors 0 and 1 (CPUs 0-1, pinned), 4 messages started by "
	 "each side, every message received is sent back",
	 "event_perf -m 0x3 -t 5: 4 events started per core, every event received posts one "
	 "to the other core, poll",
	 "1.89-1.94M"},
	{"cross", "msgs/s per core, cross-core, 4 in flight", MEASURE_MSGS, MSG_PEER_OTHER_REACTOR,
	 4, 4, KEEL_REACTOR_MODE_ADAPTIVE, ROW_RATE, 6e6, true, "as above, adaptive mode",
	 "as above (SPDK polls)", "1.89-1.94M"},
	{"cross", "msgs/s per core, cross-core, 128 in flight", MEASURE_MSGS,
	 MSG_PEER_OTHER_REACTOR, 128, 128, KEEL_REACTOR_MODE_POLL, ROW_RATE, 0, true,
	 "as above with 128 messages started by each side (extra row: event_perf "
	 "keeps 4)",
	 NULL, NULL},
	{"rtt", "cross-core round trip", MEASURE_RTT, MSG_PEER_OTHER_REACTOR, 0, 0,
	 KEEL_REACTOR_MODE_POLL, ROW_COST, 0, true,
	 "keel threads on reactors 0 and 1 (CPUs 0-1), 1 message ping-pong, wall time per "
	 "round trip",
	 NULL, NULL},
	{"rtt", "cross-core round trip", MEASURE_RTT, MSG_PEER_OTHER_REACTOR, 0, 0,
	 KEEL_REACTOR_MODE_ADAPTIVE, ROW_COST, 0, true, "as above, adaptive mode", NULL, NULL},
	{"pollers", "active poller run, 1000 pollers", MEASURE_POLLERS, MSG_PEER_SELF, 0, 0,
	 KEEL_REACTOR_MODE_POLL, ROW_COST, 3.0, true,
	 "1000 pollers with period 0 on reactor 0 (CPU 0), each returns busy; wall time / "
	 "runs",
	 "poller_perf -b 1000 -l 0 -t 5: busy time / runs, core 0", "5.2-5.3 ns"},
	{"pollers", "timed poller run, 1000 x 1 us", MEASURE_POLLERS, MSG_PEER_SELF, 1, 0,
	 KEEL_REACTOR_MODE_POLL, ROW_COST, 22.0, true,
	 "1000 pollers with a 1 us period on reactor 0 (CPU 0), each returns busy; wall "
	 "time / runs",
	 "poller_perf -b 1000 -l 1 -t 5: busy time / runs, core 0", "44-46 ns"},
	{"idle", "idle CPU of a bare reactor", MEASURE_IDLE, MSG_PEER_OTHER_REACTOR, 0, 0,
	 KEEL_REACTOR_MODE_INTERRUPT, ROW_PCT, 1.0, false,
	 "2 reactors (CPUs 0-1), no daemon, busier of the two (extra row: the target is "
	 "judged on keeld, tests/bench/idle.sh)",
	 NULL, NULL},
	{"idle", "idle CPU of a bare reactor", MEASURE_IDLE, MSG_PEER_OTHER_REACTOR, 0, 0,
	 KEEL_REACTOR_MODE_ADAPTIVE, ROW_PCT, 1.0, false, "as above, adaptive mode", NULL, NULL},
};

#define ROW_COUNT (sizeof(g_rows) / sizeof(g_rows[0]))

static struct {
	struct bench_result r;
	bool measured;
} g_results[ROW_COUNT];

static struct bench_result bench_measure(const struct bench_row *row)
{
	switch (row->measure) {
	case MEASURE_MSGS:
		return bench_msgs(row->peer, row->arg0, row->arg1, row->mode);
	case MEASURE_RTT:
		return bench_round_trip(row->mode);
	case MEASURE_POLLERS:
		return bench_pollers(row->arg0);
	default:
		return bench_idle(row->mode);
	}
}

/* "ok", "MISS", or "-" when the row has no target or is judged elsewhere. */
static const char *row_verdict(size_t i)
{
	const struct bench_row *row = &g_rows[i];
	double wall = g_results[i].r.wall;
	bool ok;

	if (row->target == 0 || !row->verdict || !g_results[i].measured) {
		return "-";
	}
	switch (row->kind) {
	case ROW_RATE:
		ok = wall >= row->target;
		break;
	default:
		ok = wall >= 0 && wall <= row->target;
		break;
	}
	return ok ? "ok" : "MISS";
}

static void row_value(size_t i, double v, char *buf, size_t len)
{
	const struct bench_row *row = &g_rows[i];

	if (v < 0 || !g_results[i].measured) {
		snprintf(buf, len, "-");
		return;
	}
	switch (row->kind) {
	case ROW_RATE:
		snprintf(buf, len, "%.2fM", v / 1e6);
		break;
	case ROW_COST:
		snprintf(buf, len, "%.2f ns", v);
		break;
	case ROW_PCT:
		snprintf(buf, len, "%.3f%%", v);
		break;
	}
}

static void row_target(const struct bench_row *row, char *buf, size_t len)
{
	if (row->target == 0) {
		snprintf(buf, len, "-");
	} else if (row->kind == ROW_RATE) {
		snprintf(buf, len, ">= %.0fM", row->target / 1e6);
	} else if (row->kind == ROW_COST) {
		snprintf(buf, len, "<= %.0f ns", row->target);
	} else {
		snprintf(buf, len, "< %.0f%%", row->target);
	}
}

static void machine_line(FILE *out, double load)
{
	char line[256], model[128] = "unknown CPU", mhz[32] = "?";
	FILE *f = fopen("/proc/cpuinfo", "r");
	long cpus = 0;

	while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
		if (strncmp(line, "model name", 10) == 0 && strchr(line, ':') != NULL) {
			snprintf(model, sizeof(model), "%s", strchr(line, ':') + 2);
			model[strcspn(model, "\n")] = '\0';
			cpus++;
		} else if (strncmp(line, "cpu MHz", 7) == 0 && strchr(line, ':') != NULL) {
			snprintf(mhz, sizeof(mhz), "%s", strchr(line, ':') + 2);
			mhz[strcspn(mhz, ".\n")] = '\0';
		}
	}
	if (f != NULL) {
		fclose(f);
	}
	fprintf(out, "this run: %s, %ld CPUs at %s MHz, load average %.2f%s\n", model, cpus, mhz,
		load,
		load > 1.0 ? " (other work shares these cores: wall-clock figures are "
			     "pessimistic)"
			   : "");
}

static void report_table(double load)
{
	printf("keel-bench reactor: verdicts on wall-clock time, as SPDK's tools report; per "
	       "CPU-second of the reactor threads as an extra column\n");
	printf("%s", g_spdk_origin);
	machine_line(stdout, load);
	printf("\n%-43s %-9s %11s %11s %10s %7s %s\n", "measurement", "mode", "wall-clock",
	       "per CPU-s", "target", "verdict", "SPDK (not this run)");
	for (size_t i = 0; i < ROW_COUNT; i++) {
		const struct bench_row *row = &g_rows[i];
		char wall[32], cpu[32], tgt[32];

		if (!bench_selected(row->group)) {
			continue;
		}
		row_value(i, g_results[i].r.wall, wall, sizeof(wall));
		row_value(i, g_results[i].r.cpu, cpu, sizeof(cpu));
		row_target(row, tgt, sizeof(tgt));
		printf("%-43s %-9s %11s %11s %10s %7s %s\n", row->what,
		       keel_reactor_mode_name(row->mode), wall, cpu, tgt, row_verdict(i),
		       row->spdk_result ? row->spdk_result : "-");
		printf("    keel: %s\n", row->keel);
		if (row->spdk != NULL) {
			printf("    SPDK: %s\n", row->spdk);
		}
	}
}

static void report_json(double load)
{
	bool first = true;

	printf("{\"load_average\": %.2f, \"spdk_origin\": \"SPDK 26.09-pre, DPDK 22.11, 2 vCPU "
	       "AMD EPYC 2.1 GHz, kernel 6.18, 2026-12: constants, not this run\", \"rows\": [",
	       load);
	for (size_t i = 0; i < ROW_COUNT; i++) {
		const struct bench_row *row = &g_rows[i];

		if (!bench_selected(row->group)) {
			continue;
		}
		printf("%s\n  {\"group\": \"%s\", \"what\": \"%s\", \"mode\": \"%s\", "
		       "\"unit\": \"%s\", \"wall\": %.3f, \"per_cpu_s\": %.3f, \"target\": %.3f, "
		       "\"verdict\": \"%s\", \"keel\": \"%s\", \"spdk\": \"%s\", "
		       "\"spdk_result\": \"%s\"}",
		       first ? "" : ",", row->group, row->what, keel_reactor_mode_name(row->mode),
		       row->kind == ROW_RATE   ? "msgs/s"
		       : row->kind == ROW_COST ? "ns"
					       : "%",
		       g_results[i].measured ? g_results[i].r.wall : -1,
		       g_results[i].measured ? g_results[i].r.cpu : -1, row->target, row_verdict(i),
		       row->keel, row->spdk ? row->spdk : "",
		       row->spdk_result ? row->spdk_result : "");
		first = false;
	}
	printf("\n]}\n");
}

static void usage(void)
{
	printf("usage: keel-bench reactor [--json] [--duration MS] [--idle MS] [--only GROUP]\n"
	       "  --json          print one JSON object instead of a table\n"
	       "  --duration MS   length of each rate measurement (default 1000)\n"
	       "  --idle MS       length of each idle-CPU measurement (default 2000)\n"
	       "  --only GROUP    same, cross, rtt, pollers or idle\n"
	       "Runs reactors on CPUs 0-1 (one-reactor and poller rows on CPU 0). Each row\n"
	       "says what keel and the SPDK tool it is compared with ran with.\n");
}

int bench_reactor_main(int argc, char **argv)
{
	static const struct option long_opts[] = {
		{"json", no_argument, NULL, 'j'},       {"duration", required_argument, NULL, 'd'},
		{"idle", required_argument, NULL, 'i'}, {"only", required_argument, NULL, 'o'},
		{"help", no_argument, NULL, 'h'},       {NULL, 0, NULL, 0},
	};
	double load[1] = {0};
	bool json = false, failed = false;
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
	if (g_duration_ms == 0 || g_idle_ms == 0 ||
	    (g_only != NULL && strcmp(g_only, "same") != 0 && strcmp(g_only, "cross") != 0 &&
	     strcmp(g_only, "rtt") != 0 && strcmp(g_only, "pollers") != 0 &&
	     strcmp(g_only, "idle") != 0)) {
		usage();
		return 2;
	}
	keel_log_set_level(KEEL_LOG_WARN);
	getloadavg(load, 1);

	for (size_t i = 0; i < ROW_COUNT; i++) {
		if (!bench_selected(g_rows[i].group)) {
			continue;
		}
		g_results[i].r = bench_measure(&g_rows[i]);
		g_results[i].measured = g_results[i].r.wall > 0 ||
					(g_rows[i].kind == ROW_PCT && g_results[i].r.wall >= 0);
		if (!g_results[i].measured) {
			fprintf(stderr, "keel-bench reactor: %s (%s) could not be measured\n",
				g_rows[i].what, keel_reactor_mode_name(g_rows[i].mode));
			failed = true;
		}
	}
	if (json) {
		report_json(load[0]);
	} else {
		report_table(load[0]);
	}
	return failed ? 1 : 0;
}
