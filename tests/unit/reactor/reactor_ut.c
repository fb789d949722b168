/*
 * Real reactors on CPUs 0-1: start/stop, cross-reactor messages in every mode,
 * wake-ups by message, timer and fd, event pollers woken only by their fd, no
 * adaptive spin after an idle wake-up, mode switches under load, watchdog, shutdown
 * with a leaked poller, blocking pool, statistics.
 *
 * Only reactor 0 (the test's own OS thread) calls CU_ASSERT; code running on
 * reactor 1 records into atomics that reactor 0 checks. Timeouts are generous: the
 * machine may be loaded and these tests also run under TSan.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "keel/log.h"
#include "keel/reactor.h"
#include "ut_cunit.h"

#define GUARD_TIMEOUT_S 40

/* ------------------------------------------------------------------------------ */
/* Harness: run reactors with a guard that stops them if a test hangs              */
/* ------------------------------------------------------------------------------ */

static pthread_mutex_t g_guard_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_guard_cond = PTHREAD_COND_INITIALIZER;
static bool g_guard_done;
static _Atomic bool g_guard_fired;

static void *guard_main(void *arg)
{
	struct timespec ts;

	(void)arg;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += GUARD_TIMEOUT_S;
	pthread_mutex_lock(&g_guard_lock);
	while (!g_guard_done) {
		if (pthread_cond_timedwait(&g_guard_cond, &g_guard_lock, &ts) == ETIMEDOUT) {
			atomic_store(&g_guard_fired, true);
			keel_reactors_stop();
			break;
		}
	}
	pthread_mutex_unlock(&g_guard_lock);
	return NULL;
}

static int run_reactors(const struct keel_reactor_opts *opts, keel_msg_fn start_fn, void *ctx)
{
	pthread_t guard;
	int rc;

	rc = keel_reactors_init(opts);
	CU_ASSERT_EQUAL_FATAL(rc, 0);
	g_guard_done = false;
	atomic_store(&g_guard_fired, false);
	pthread_create(&guard, NULL, guard_main, NULL);
	rc = keel_reactors_start(start_fn, ctx);
	pthread_mutex_lock(&g_guard_lock);
	g_guard_done = true;
	pthread_cond_signal(&g_guard_cond);
	pthread_mutex_unlock(&g_guard_lock);
	pthread_join(guard, NULL);
	keel_reactors_fini();
	CU_ASSERT_FALSE(atomic_load(&g_guard_fired));
	return rc;
}

static void opts_for(struct keel_reactor_opts *opts, enum keel_reactor_mode mode)
{
	keel_reactor_opts_init(opts);
	opts->cpus = "0-1";
	opts->mode = mode;
	opts->msg_ring_size = 1024;
}

static uint64_t now_ms(void)
{
	return keel_now_ns() / 1000000;
}

static void stop_msg(void *arg)
{
	(void)arg;
	keel_reactors_stop();
}

/* ------------------------------------------------------------------------------ */
/* Start / stop and placement                                                      */
/* ------------------------------------------------------------------------------ */

struct basic_ctx {
	bool on_main;
	uint32_t main_reactor;
	uint32_t count;
	_Atomic uint32_t t1_reactor;
	_Atomic bool t1_name_ok;
	struct keel_thread *t1;
	bool bad_idx_null;
	uint32_t on_cpus_reactor;
	int set_mode_bad;
	int start_calls;
};

static void basic_reply(void *arg)
{
	(void)arg;
	keel_reactors_stop();
	keel_reactors_stop(); /* idempotent */
}

static void basic_on_t1(void *arg)
{
	struct basic_ctx *ctx = arg;
	char name[16] = "";

	atomic_store(&ctx->t1_reactor, keel_reactor_current());
	pthread_getname_np(pthread_self(), name, sizeof(name));
	atomic_store(&ctx->t1_name_ok, strcmp(name, "reactor_1") == 0);
	keel_thread_exit(keel_thread_get_current());
	keel_thread_send_msg(keel_thread_get_main(), basic_reply, ctx);
}

static void basic_start(void *arg)
{
	struct basic_ctx *ctx = arg;
	struct keel_thread *t;

	ctx->start_calls++;
	ctx->on_main = keel_thread_get_current() == keel_thread_get_main() &&
		       strcmp(keel_thread_get_name(keel_thread_get_current()), "main") == 0;
	ctx->main_reactor = keel_reactor_current();
	ctx->count = keel_reactor_count();
	ctx->bad_idx_null = keel_thread_create("bad", 7) == NULL;
	t = keel_thread_create_on_cpus("oncpu1", 1ULL << keel_reactor_cpu(1));
	ctx->on_cpus_reactor = t ? keel_thread_get_reactor(t) : UINT32_MAX;
	ctx->set_mode_bad = keel_reactor_set_mode(9, KEEL_REACTOR_MODE_POLL);
	ctx->t1 = keel_thread_create("t1", 1);
	keel_thread_send_msg(ctx->t1, basic_on_t1, ctx);
}

static void test_start_stop(void)
{
	struct keel_reactor_opts opts;
	struct basic_ctx ctx = {0};
	struct keel_reactor_stats st;

	opts_for(&opts, KEEL_REACTOR_MODE_ADAPTIVE);
	CU_ASSERT_EQUAL(run_reactors(&opts, basic_start, &ctx), 0);
	CU_ASSERT_EQUAL(ctx.start_calls, 1);
	CU_ASSERT_TRUE(ctx.on_main);
	CU_ASSERT_EQUAL(ctx.main_reactor, 0);
	CU_ASSERT_EQUAL(ctx.count, 2);
	CU_ASSERT_EQUAL(atomic_load(&ctx.t1_reactor), 1);
	CU_ASSERT_TRUE(atomic_load(&ctx.t1_name_ok));
	CU_ASSERT_TRUE(ctx.bad_idx_null);
	CU_ASSERT_EQUAL(ctx.on_cpus_reactor, 1);
	CU_ASSERT_EQUAL(ctx.set_mode_bad, -EINVAL);
	/* After fini everything is gone; init again works (tests reuse the process). */
	CU_ASSERT_EQUAL(keel_reactor_count(), 0);
	CU_ASSERT_EQUAL(keel_reactor_get_stats(0, &st), -EINVAL);
	CU_ASSERT_EQUAL(keel_reactors_init(NULL), 0);
	CU_ASSERT_EQUAL(keel_reactors_init(NULL), -EALREADY);
	keel_reactors_fini();
}

/* ------------------------------------------------------------------------------ */
/* Cross-reactor message flood in each mode, with a concurrent stats reader        */
/* ------------------------------------------------------------------------------ */

#define FLOOD_MSGS 100000

struct flood_ctx {
	struct keel_thread *t1;
	struct keel_poller *pump;
	uint64_t sent;
	uint64_t enomem;
	_Atomic uint64_t received;
	_Atomic bool reader_stop;
	uint64_t reader_loops;
	pthread_t reader;
};

static void *stats_reader(void *arg);

static void flood_done(void *arg)
{
	struct flood_ctx *ctx = arg;

	keel_poller_unregister(&ctx->pump);
	/* Statistics are readable while reactors exist: stop reading before they go. */
	atomic_store(&ctx->reader_stop, true);
	pthread_join(ctx->reader, NULL);
	keel_reactors_stop();
}

static void flood_recv(void *arg)
{
	struct flood_ctx *ctx = arg;

	/* Single writer (thread t1); relaxed is enough, the reader only wants the count. */
	uint64_t n = atomic_load_explicit(&ctx->received, memory_order_relaxed) + 1;

	atomic_store_explicit(&ctx->received, n, memory_order_relaxed);
	if (n == FLOOD_MSGS) {
		keel_thread_exit(keel_thread_get_current());
		keel_thread_send_msg(keel_thread_get_main(), flood_done, ctx);
	}
}

static int flood_pump(void *arg)
{
	struct flood_ctx *ctx = arg;
	int n = 0;

	while (ctx->sent < FLOOD_MSGS && n < 256) {
		int rc = keel_thread_send_msg(ctx->t1, flood_recv, ctx);

		if (rc == -ENOMEM) {
			ctx->enomem++;
			break; /* back-pressure: retry on the next iteration */
		}
		ctx->sent++;
		n++;
	}
	/*
	 * Unsent work counts as busy: a full ring wakes nobody when it drains, so a
	 * poller that stopped on -ENOMEM must keep its reactor polling (interrupt mode).
	 */
	return ctx->sent < FLOOD_MSGS ? KEEL_POLLER_BUSY : KEEL_POLLER_IDLE;
}

static void flood_start(void *arg)
{
	struct flood_ctx *ctx = arg;

	ctx->t1 = keel_thread_create("t1", 1);
	ctx->pump = keel_poller_register(flood_pump, ctx, 0, "pump");
	pthread_create(&ctx->reader, NULL, stats_reader, ctx);
}

static void *stats_reader(void *arg)
{
	struct flood_ctx *ctx = arg;
	struct keel_reactor_stats st;

	do {
		for (uint32_t i = 0; i < keel_reactor_count(); i++) {
			keel_reactor_get_stats(i, &st);
		}
		ctx->reader_loops++;
		usleep(500);
	} while (!atomic_load(&ctx->reader_stop));
	return NULL;
}

static void flood_mode(enum keel_reactor_mode mode)
{
	struct keel_reactor_opts opts;
	struct flood_ctx ctx = {0};

	opts_for(&opts, mode);
	CU_ASSERT_EQUAL(run_reactors(&opts, flood_start, &ctx), 0);
	CU_ASSERT_TRUE(ctx.reader_loops > 0);
	CU_ASSERT_EQUAL(ctx.sent, FLOOD_MSGS);
	CU_ASSERT_EQUAL(atomic_load(&ctx.received), FLOOD_MSGS);
}

static void test_flood_poll(void)
{
	flood_mode(KEEL_REACTOR_MODE_POLL);
}

static void test_flood_interrupt(void)
{
	flood_mode(KEEL_REACTOR_MODE_INTERRUPT);
}

static void test_flood_adaptive(void)
{
	flood_mode(KEEL_REACTOR_MODE_ADAPTIVE);
}

/* ------------------------------------------------------------------------------ */
/* Wake-ups of a sleeping reactor: message, timer, fd                              */
/* ------------------------------------------------------------------------------ */

struct wake_ctx {
	enum keel_reactor_mode mode;
	struct keel_thread *t1;
	struct keel_poller *driver;
	int phase;
	uint64_t phase_start_ms;
	int pipe[2];
	/* Written on reactor 1. */
	_Atomic int msg_seen;
	_Atomic int timer_runs;
	_Atomic int fd_bytes;
	struct keel_poller *t1_timer;
	struct keel_poller *t1_fd;
	/* Results checked by the test. */
	bool slept_before_msg;
	bool msg_ok;
	bool slept_before_timer;
	int timer_runs_seen;
	uint64_t timer_window_ms;
	uint64_t wakeups_timer;
	bool slept_before_fd;
	bool fd_ok;
	bool timeout;
};

static void wake_msg(void *arg)
{
	struct wake_ctx *ctx = arg;

	atomic_store(&ctx->msg_seen, 1);
}

static int wake_timer_fn(void *arg)
{
	struct wake_ctx *ctx = arg;

	atomic_fetch_add(&ctx->timer_runs, 1);
	return KEEL_POLLER_BUSY;
}

static int wake_fd_fn(void *arg)
{
	struct wake_ctx *ctx = arg;
	char buf[16];
	ssize_t n = read(ctx->pipe[0], buf, sizeof(buf));

	if (n > 0) {
		atomic_fetch_add(&ctx->fd_bytes, (int)n);
		return KEEL_POLLER_BUSY;
	}
	return KEEL_POLLER_IDLE;
}

static void wake_t1_start_timer(void *arg)
{
	struct wake_ctx *ctx = arg;

	ctx->t1_timer = keel_poller_register(wake_timer_fn, ctx, 20000, "t1_timer");
}

static void wake_t1_stop_timer_start_fd(void *arg)
{
	struct wake_ctx *ctx = arg;

	keel_poller_unregister(&ctx->t1_timer);
	ctx->t1_fd = keel_poller_register(wake_fd_fn, ctx, 0, "t1_fd");
	keel_poller_register_fd(ctx->t1_fd, ctx->pipe[0], EPOLLIN);
}

static void wake_t1_cleanup(void *arg)
{
	struct wake_ctx *ctx = arg;

	keel_poller_unregister(&ctx->t1_fd);
	keel_thread_exit(keel_thread_get_current());
}

static bool reactor1_sleeping(void)
{
	struct keel_reactor_stats st;

	keel_reactor_get_stats(1, &st);
	return st.sleeping;
}

static uint64_t reactor1_wakeups(void)
{
	struct keel_reactor_stats st;

	keel_reactor_get_stats(1, &st);
	return st.wakeups;
}

/* Timed poller on main driving the phases; every wait has a generous deadline. */
static int wake_driver(void *arg)
{
	struct wake_ctx *ctx = arg;
	uint64_t now = now_ms();
	uint64_t waited = now - ctx->phase_start_ms;

	if (waited > 10000) {
		ctx->timeout = true;
		ctx->phase = 100;
	}
	switch (ctx->phase) {
	case 0: /* wait until reactor 1 sleeps, then message it */
		if (!reactor1_sleeping()) {
			break;
		}
		ctx->slept_before_msg = true;
		keel_thread_send_msg(ctx->t1, wake_msg, ctx);
		ctx->phase = 1;
		ctx->phase_start_ms = now;
		break;
	case 1:
		if (atomic_load(&ctx->msg_seen)) {
			ctx->msg_ok = true;
			keel_thread_send_msg(ctx->t1, wake_t1_start_timer, ctx);
			ctx->phase = 2;
			ctx->phase_start_ms = now;
			ctx->wakeups_timer = reactor1_wakeups();
		}
		break;
	case 2: /* 20 ms timer on t1 for ~300 ms; reactor 1 sleeps between runs */
		if (reactor1_sleeping()) {
			ctx->slept_before_timer = true;
		}
		if (waited >= 300) {
			ctx->timer_runs_seen = atomic_load(&ctx->timer_runs);
			ctx->timer_window_ms = waited;
			ctx->wakeups_timer = reactor1_wakeups() - ctx->wakeups_timer;
			keel_thread_send_msg(ctx->t1, wake_t1_stop_timer_start_fd, ctx);
			ctx->phase = 3;
			ctx->phase_start_ms = now;
		}
		break;
	case 3: /* let the fd poller settle and reactor 1 fall asleep, then write */
		if (waited < 50 || !reactor1_sleeping()) {
			break;
		}
		ctx->slept_before_fd = true;
		(void)!write(ctx->pipe[1], "x", 1);
		ctx->phase = 4;
		ctx->phase_start_ms = now;
		break;
	case 4:
		if (atomic_load(&ctx->fd_bytes) == 1) {
			ctx->fd_ok = true;
			ctx->phase = 100;
		}
		break;
	default:
		break;
	}
	if (ctx->phase == 100) {
		keel_thread_send_msg(ctx->t1, wake_t1_cleanup, ctx);
		keel_poller_unregister(&ctx->driver);
		keel_thread_send_msg(keel_thread_get_current(), stop_msg, NULL);
	}
	return KEEL_POLLER_IDLE;
}

static void wake_start(void *arg)
{
	struct wake_ctx *ctx = arg;

	ctx->t1 = keel_thread_create("t1", 1);
	ctx->phase_start_ms = now_ms();
	ctx->driver = keel_poller_register(wake_driver, ctx, 5000, "driver");
}

static void wake_mode(enum keel_reactor_mode mode)
{
	struct keel_reactor_opts opts;
	struct wake_ctx ctx = {.mode = mode};

	CU_ASSERT_EQUAL_FATAL(pipe2(ctx.pipe, O_NONBLOCK), 0);
	opts_for(&opts, mode);
	opts.adaptive_spin_us = 100;
	CU_ASSERT_EQUAL(run_reactors(&opts, wake_start, &ctx), 0);
	CU_ASSERT_FALSE(ctx.timeout);
	CU_ASSERT_TRUE(ctx.slept_before_msg);
	CU_ASSERT_TRUE(ctx.msg_ok);
	CU_ASSERT_TRUE(ctx.slept_before_timer);
	/*
	 * >= 300 ms of a 20 ms timer: ~15 runs. The window is what the 5 ms driver
	 * poller measured, which a loaded machine stretches, so the upper bound (no
	 * runaway timer) follows the real window rather than the nominal 300 ms.
	 */
	CU_ASSERT_TRUE(ctx.timer_runs_seen >= 5);
	CU_ASSERT_TRUE((uint64_t)ctx.timer_runs_seen <= ctx.timer_window_ms / 20 + 5);
	CU_ASSERT_TRUE(ctx.wakeups_timer >= 5);
	CU_ASSERT_TRUE(ctx.slept_before_fd);
	CU_ASSERT_TRUE(ctx.fd_ok);
	close(ctx.pipe[0]);
	close(ctx.pipe[1]);
}

static void test_wake_interrupt(void)
{
	wake_mode(KEEL_REACTOR_MODE_INTERRUPT);
}

static void test_wake_adaptive(void)
{
	wake_mode(KEEL_REACTOR_MODE_ADAPTIVE);
}

/* ------------------------------------------------------------------------------ */
/* Event pollers: an idle reactor is woken by the fd alone                         */
/* ------------------------------------------------------------------------------ */

struct evw_ctx {
	struct keel_thread *t1;
	struct keel_poller *driver;
	int phase;
	int round;
	int pings_sent;
	uint64_t phase_start_ms;
	int pipe[2];
	/* Written on reactor 1. */
	struct keel_poller *ev;
	_Atomic int runs;
	_Atomic int bytes;
	_Atomic int pings;
	_Atomic int lazy;             /* do not read: the fd stays readable */
	_Atomic int pause_self;       /* pause from inside the callback */
	_Atomic int unreg_self;       /* unregister from inside the callback */
	_Atomic uint64_t own_wakeups; /* the poller's wake-up count, as it reads it */
	/* Snapshots taken on reactor 0 (the driver). */
	struct keel_reactor_stats base;
	int base_runs;
	/* Results. */
	int silent_rounds_ok;
	bool paused_silent;
	bool resumed_ran;
	bool unregistered_silent;
	uint64_t fd_wakeups_seen;
	bool timeout;
};

static int evw_fn(void *arg)
{
	struct evw_ctx *ctx = arg;
	struct keel_poller_stats ps;
	char buf[64];
	ssize_t n;
	int busy = KEEL_POLLER_IDLE;

	atomic_fetch_add(&ctx->runs, 1);
	if (keel_thread_get_wakers(keel_thread_get_current(), &ps, 1) == 1) {
		atomic_store(&ctx->own_wakeups, ps.wakeups);
	}
	if (atomic_load(&ctx->unreg_self)) {
		keel_poller_unregister(&ctx->ev);
		return KEEL_POLLER_BUSY;
	}
	if (atomic_load(&ctx->pause_self)) {
		atomic_store(&ctx->pause_self, 0);
		keel_poller_pause(ctx->ev);
		return KEEL_POLLER_IDLE;
	}
	while (!atomic_load(&ctx->lazy) && (n = read(ctx->pipe[0], buf, sizeof(buf))) > 0) {
		atomic_fetch_add(&ctx->bytes, (int)n);
		busy = KEEL_POLLER_BUSY;
	}
	return busy;
}

static void evw_t1_setup(void *arg)
{
	struct evw_ctx *ctx = arg;

	ctx->ev = keel_poller_register(evw_fn, ctx, 0, "evw_fd");
	if (ctx->ev == NULL || keel_poller_register_fd(ctx->ev, ctx->pipe[0], EPOLLIN) != 0) {
		keel_poller_unregister(&ctx->ev);
	}
}

static void evw_t1_ping(void *arg)
{
	struct evw_ctx *ctx = arg;

	atomic_fetch_add(&ctx->pings, 1);
}

static void evw_t1_resume(void *arg)
{
	struct evw_ctx *ctx = arg;

	atomic_store(&ctx->lazy, 0);
	keel_poller_resume(ctx->ev);
}

static void evw_t1_cleanup(void *arg)
{
	struct evw_ctx *ctx = arg;

	keel_poller_unregister(&ctx->ev);
	keel_thread_exit(keel_thread_get_current());
}

static struct keel_reactor_stats reactor1_stats(void)
{
	struct keel_reactor_stats st;

	keel_reactor_get_stats(1, &st);
	return st;
}

static void evw_next(struct evw_ctx *ctx, int phase)
{
	ctx->phase = phase;
	ctx->phase_start_ms = now_ms();
}

/*
 * Send pings to t1 one at a time, each after the previous one was handled and
 * reactor 1 went back to sleep. \return true once \p total were handled.
 */
static bool evw_pinged(struct evw_ctx *ctx, int total)
{
	if (atomic_load(&ctx->pings) != ctx->pings_sent) {
		return false;
	}
	if (ctx->pings_sent == total) {
		return true;
	}
	keel_thread_send_msg(ctx->t1, evw_t1_ping, ctx);
	ctx->pings_sent++;
	return false;
}

/*
 * Phases (the driver is a timed poller on reactor 0; nothing else runs on reactor 1):
 * 0  t1's poller made its first run and reactor 1 sleeps: snapshot, write one byte.
 * 1  the poller read it (busy), ran once more (idle) and reactor 1 sleeps again: it
 *    woke exactly once, for the fd, and the poller ran exactly twice. Three rounds.
 * 2  the next byte makes the poller pause itself without reading; two pings later
 *    (each handled, reactor asleep in between) the readable fd has not woken it.
 * 3  a message resumes it: it runs, reads, parks.
 * 4  the next byte makes it unregister itself without reading; two pings later the
 *    still readable fd has woken nothing.
 */
static int evw_driver(void *arg)
{
	struct evw_ctx *ctx = arg;
	struct keel_reactor_stats st = reactor1_stats();
	int runs = atomic_load(&ctx->runs);

	if (now_ms() - ctx->phase_start_ms > 10000) {
		ctx->timeout = true;
		ctx->phase = 100;
	}
	switch (ctx->phase) {
	case 0:
		if (runs < 1 || !st.sleeping) {
			break;
		}
		ctx->base = st;
		ctx->base_runs = runs;
		(void)!write(ctx->pipe[1], "x", 1);
		evw_next(ctx, 1);
		break;
	case 1:
		if (runs < ctx->base_runs + 2 || !st.sleeping) {
			break;
		}
		if (runs == ctx->base_runs + 2 && st.wakeups == ctx->base.wakeups + 1 &&
		    st.wakeups_fd == ctx->base.wakeups_fd + 1 &&
		    st.wakeups_msg == ctx->base.wakeups_msg &&
		    st.wakeups_timer == ctx->base.wakeups_timer && st.fd_waiting == 1) {
			ctx->silent_rounds_ok++;
		}
		if (++ctx->round < 3) {
			evw_next(ctx, 0);
			break;
		}
		ctx->fd_wakeups_seen = atomic_load(&ctx->own_wakeups);
		ctx->base = st;
		ctx->base_runs = runs;
		atomic_store(&ctx->lazy, 1);
		atomic_store(&ctx->pause_self, 1);
		(void)!write(ctx->pipe[1], "y", 1);
		evw_next(ctx, 2);
		break;
	case 2:
		/* Paused with a readable fd; ping twice, waiting for each. */
		if (runs < ctx->base_runs + 1 || !st.sleeping) {
			break;
		}
		if (evw_pinged(ctx, 2)) {
			/* One wake-up for the byte, none since: pausing took the fd out of epoll. */
			ctx->paused_silent = runs == ctx->base_runs + 1 &&
					     st.wakeups_fd == ctx->base.wakeups_fd + 1;
			ctx->base_runs = runs;
			keel_thread_send_msg(ctx->t1, evw_t1_resume, ctx);
			evw_next(ctx, 3);
		}
		break;
	case 3:
		/* Resume runs it once: it reads "y" (busy), runs again (idle), parks. */
		if (runs < ctx->base_runs + 2 || !st.sleeping) {
			break;
		}
		ctx->resumed_ran = runs == ctx->base_runs + 2 && atomic_load(&ctx->bytes) == 4;
		ctx->base = st;
		ctx->base_runs = runs;
		atomic_store(&ctx->lazy, 1);
		atomic_store(&ctx->unreg_self, 1);
		(void)!write(ctx->pipe[1], "z", 1);
		evw_next(ctx, 4);
		break;
	case 4:
		if (runs < ctx->base_runs + 1 || !st.sleeping) {
			break;
		}
		if (evw_pinged(ctx, 4)) {
			/* One wake-up for the byte, none since: unregistering took the fd out. */
			ctx->unregistered_silent = runs == ctx->base_runs + 1 &&
						   st.wakeups_fd == ctx->base.wakeups_fd + 1 &&
						   st.fd_waiting == 0;
			ctx->phase = 100;
		}
		break;
	default:
		break;
	}
	if (ctx->phase == 100) {
		keel_thread_send_msg(ctx->t1, evw_t1_cleanup, ctx);
		keel_poller_unregister(&ctx->driver);
		keel_thread_send_msg(keel_thread_get_current(), stop_msg, NULL);
	}
	return KEEL_POLLER_IDLE;
}

static void evw_start(void *arg)
{
	struct evw_ctx *ctx = arg;

	ctx->t1 = keel_thread_create("t1", 1);
	keel_thread_send_msg(ctx->t1, evw_t1_setup, ctx);
	ctx->phase_start_ms = now_ms();
	ctx->driver = keel_poller_register(evw_driver, ctx, 2000, "driver");
}

static void event_wake_mode(enum keel_reactor_mode mode)
{
	struct keel_reactor_opts opts;
	struct evw_ctx ctx = {0};

	CU_ASSERT_EQUAL_FATAL(pipe2(ctx.pipe, O_NONBLOCK), 0);
	opts_for(&opts, mode);
	CU_ASSERT_EQUAL(run_reactors(&opts, evw_start, &ctx), 0);
	CU_ASSERT_FALSE(ctx.timeout);
	CU_ASSERT_EQUAL(ctx.silent_rounds_ok, 3);
	CU_ASSERT_EQUAL(ctx.fd_wakeups_seen, 3);
	CU_ASSERT_TRUE(ctx.paused_silent);
	CU_ASSERT_TRUE(ctx.resumed_ran);
	CU_ASSERT_TRUE(ctx.unregistered_silent);
	close(ctx.pipe[0]);
	close(ctx.pipe[1]);
}

static void test_event_wake_interrupt(void)
{
	event_wake_mode(KEEL_REACTOR_MODE_INTERRUPT);
}

static void test_event_wake_adaptive(void)
{
	event_wake_mode(KEEL_REACTOR_MODE_ADAPTIVE);
}

/* ------------------------------------------------------------------------------ */
/* Adaptive mode: no spin after a wake-up that found no work                       */
/* ------------------------------------------------------------------------------ */

struct nospin_ctx {
	struct keel_thread *t1;
	struct keel_poller *driver;
	struct keel_poller *tick; /* on t1: a 2 ms timer that never finds work */
	_Atomic int ticks;
	int phase;
	int base_ticks;
	uint64_t start_ms;
	struct keel_reactor_stats base;
	uint64_t loops;
	uint64_t wakeups;
	bool timeout;
};

static int nospin_tick(void *arg)
{
	struct nospin_ctx *ctx = arg;

	atomic_fetch_add(&ctx->ticks, 1);
	return KEEL_POLLER_IDLE;
}

static void nospin_t1_setup(void *arg)
{
	struct nospin_ctx *ctx = arg;

	ctx->tick = keel_poller_register(nospin_tick, ctx, 2000, "idle_tick");
}

static void nospin_t1_cleanup(void *arg)
{
	struct nospin_ctx *ctx = arg;

	keel_poller_unregister(&ctx->tick);
	keel_thread_exit(keel_thread_get_current());
}

static int nospin_driver(void *arg)
{
	struct nospin_ctx *ctx = arg;
	struct keel_reactor_stats st = reactor1_stats();
	int ticks = atomic_load(&ctx->ticks);

	if (now_ms() - ctx->start_ms > 20000) {
		ctx->timeout = true;
		ctx->phase = 100;
	}
	if (ctx->phase == 0 && ticks >= 3) {
		ctx->base = st;
		ctx->base_ticks = ticks;
		ctx->phase = 1;
	} else if (ctx->phase == 1 && ticks >= ctx->base_ticks + 30) {
		ctx->loops = st.loops - ctx->base.loops;
		ctx->wakeups = st.wakeups - ctx->base.wakeups;
		ctx->phase = 100;
	}
	if (ctx->phase == 100) {
		keel_thread_send_msg(ctx->t1, nospin_t1_cleanup, ctx);
		keel_poller_unregister(&ctx->driver);
		keel_thread_send_msg(keel_thread_get_current(), stop_msg, NULL);
	}
	return KEEL_POLLER_IDLE;
}

static void nospin_start(void *arg)
{
	struct nospin_ctx *ctx = arg;

	ctx->t1 = keel_thread_create("t1", 1);
	keel_thread_send_msg(ctx->t1, nospin_t1_setup, ctx);
	ctx->start_ms = now_ms();
	ctx->driver = keel_poller_register(nospin_driver, ctx, 7000, "driver");
}

static void test_adaptive_no_spin_after_idle_wake(void)
{
	struct keel_reactor_opts opts;
	struct nospin_ctx ctx = {0};

	opts_for(&opts, KEEL_REACTOR_MODE_ADAPTIVE);
	opts.adaptive_spin_us = 1000; /* a spin would be hundreds of loops per wake-up */
	CU_ASSERT_EQUAL(run_reactors(&opts, nospin_start, &ctx), 0);
	CU_ASSERT_FALSE(ctx.timeout);
	/* Every tick is a timer wake-up, and nothing else wakes reactor 1. */
	CU_ASSERT_TRUE(ctx.wakeups >= 25);
	/* One loop per wake-up; the margin covers the two snapshots' edges. */
	CU_ASSERT_TRUE(ctx.loops <= ctx.wakeups + 4);
	if (ctx.loops > ctx.wakeups + 4) {
		fprintf(stderr, "adaptive idle wake-ups: %llu loops for %llu wake-ups\n",
			(unsigned long long)ctx.loops, (unsigned long long)ctx.wakeups);
	}
}

/* ------------------------------------------------------------------------------ */
/* Wakers: pollers of one name add up                                              */
/* ------------------------------------------------------------------------------ */

#define GRP_POLLERS 3

struct grp_ctx {
	struct keel_thread *t1;
	struct keel_poller *grp[GRP_POLLERS];
	struct keel_poller *solo;
	int ticks;
	bool done;
	/* Results, taken on t1 at one moment. */
	struct keel_poller_stats wakers[KEEL_THREAD_WAKERS_MAX];
	uint32_t nwakers;
	uint64_t grp_sum;
};

static int grp_tick(void *arg)
{
	struct grp_ctx *ctx = arg;
	struct keel_poller_stats all[8];
	uint32_t n, i;

	/* The 30th tick: enough for each poller to have woken reactor 1 a few times. */
	if (ctx->done || ++ctx->ticks < 30) {
		return KEEL_POLLER_IDLE;
	}
	ctx->done = true;
	ctx->nwakers = keel_thread_get_wakers(keel_thread_get_current(), ctx->wakers,
					      KEEL_THREAD_WAKERS_MAX);
	n = keel_thread_get_stats(keel_thread_get_current(), NULL, all, 8);
	for (i = 0; i < n && i < 8; i++) {
		if (strcmp(all[i].name, "grp_tick") == 0) {
			ctx->grp_sum += all[i].wakeups;
		}
	}
	for (i = 0; i < GRP_POLLERS; i++) {
		keel_poller_unregister(&ctx->grp[i]);
	}
	keel_poller_unregister(&ctx->solo);
	keel_thread_exit(keel_thread_get_current());
	keel_thread_send_msg(keel_thread_get_main(), stop_msg, NULL);
	return KEEL_POLLER_BUSY;
}

static void grp_t1_setup(void *arg)
{
	struct grp_ctx *ctx = arg;
	int i;

	for (i = 0; i < GRP_POLLERS; i++) {
		ctx->grp[i] = keel_poller_register(grp_tick, ctx, 2000 + 700 * i, "grp_tick");
	}
	ctx->solo = keel_poller_register(grp_tick, ctx, 5000, "solo_tick");
}

static void grp_start(void *arg)
{
	struct grp_ctx *ctx = arg;

	ctx->t1 = keel_thread_create("t1", 1);
	keel_thread_send_msg(ctx->t1, grp_t1_setup, ctx);
}

static void test_wakers_grouped_by_name(void)
{
	struct keel_reactor_opts opts;
	struct grp_ctx ctx = {0};
	bool seen_grp = false, seen_solo = false;
	uint32_t i;

	opts_for(&opts, KEEL_REACTOR_MODE_INTERRUPT);
	CU_ASSERT_EQUAL(run_reactors(&opts, grp_start, &ctx), 0);
	CU_ASSERT_TRUE(ctx.done);
	for (i = 0; i < ctx.nwakers; i++) {
		if (strcmp(ctx.wakers[i].name, "grp_tick") == 0) {
			CU_ASSERT_FALSE(seen_grp); /* one entry for the three */
			seen_grp = true;
			CU_ASSERT_EQUAL(ctx.wakers[i].instances, GRP_POLLERS);
			CU_ASSERT_EQUAL(ctx.wakers[i].wakeups, ctx.grp_sum);
			CU_ASSERT_TRUE(ctx.wakers[i].wakeups > 0);
		} else if (strcmp(ctx.wakers[i].name, "solo_tick") == 0) {
			seen_solo = true;
			CU_ASSERT_EQUAL(ctx.wakers[i].instances, 1);
		}
		if (i > 0) {
			CU_ASSERT_TRUE(ctx.wakers[i - 1].wakeups >= ctx.wakers[i].wakeups);
		}
	}
	CU_ASSERT_TRUE(seen_grp);
	(void)seen_solo; /* it may have been due with a grp_tick each time it woke */
}

/* ------------------------------------------------------------------------------ */
/* Mode switches under load: nothing lost                                          */
/* ------------------------------------------------------------------------------ */

struct side {
	struct keel_thread *thread;
	struct keel_thread *peer;
	struct keel_poller *pump;
	_Atomic uint64_t sent;
	_Atomic uint64_t received;
	_Atomic bool pump_gone;
};

struct switch_ctx {
	struct side side[2];
	_Atomic bool sending;
	struct keel_poller *driver;
	uint64_t start_ms;
	uint32_t switches;
	bool drained;
};

static void side_recv(void *arg)
{
	struct side *s = arg;

	atomic_fetch_add_explicit(&s->received, 1, memory_order_relaxed);
}

static int side_pump(void *arg);

static struct switch_ctx *g_switch;

static int side_pump(void *arg)
{
	struct side *s = arg;
	struct side *peer = &g_switch->side[s == &g_switch->side[0] ? 1 : 0];
	int n = 0;

	if (!atomic_load(&g_switch->sending)) {
		keel_poller_unregister(&s->pump);
		atomic_store(&s->pump_gone, true);
		return KEEL_POLLER_IDLE;
	}
	while (n < 64) {
		if (keel_thread_send_msg(s->peer, side_recv, peer) != 0) {
			break;
		}
		atomic_fetch_add_explicit(&s->sent, 1, memory_order_relaxed);
		n++;
	}
	(void)n;
	return KEEL_POLLER_BUSY; /* always has more to send */
}

static void side_setup(void *arg)
{
	struct side *s = arg;

	s->pump = keel_poller_register(side_pump, s, 0, "pump");
}

static void side_exit(void *arg)
{
	(void)arg;
	keel_thread_exit(keel_thread_get_current());
}

static int switch_driver(void *arg)
{
	struct switch_ctx *ctx = arg;
	static const enum keel_reactor_mode modes[] = {
		KEEL_REACTOR_MODE_INTERRUPT, KEEL_REACTOR_MODE_POLL, KEEL_REACTOR_MODE_ADAPTIVE};
	uint64_t elapsed = now_ms() - ctx->start_ms;

	if (elapsed < 600) {
		uint32_t idx = ctx->switches % 3 == 0 ? KEEL_REACTOR_ANY : ctx->switches % 2;

		keel_reactor_set_mode(idx, modes[ctx->switches % 3]);
		ctx->switches++;
		return KEEL_POLLER_BUSY;
	}
	atomic_store(&ctx->sending, false);
	/* Drained: both pumps gone and every sent message received. */
	if (atomic_load(&ctx->side[0].pump_gone) && atomic_load(&ctx->side[1].pump_gone) &&
	    atomic_load(&ctx->side[0].sent) == atomic_load(&ctx->side[1].received) &&
	    atomic_load(&ctx->side[1].sent) == atomic_load(&ctx->side[0].received)) {
		ctx->drained = true;
	}
	if (ctx->drained || elapsed > 15000) {
		keel_poller_unregister(&ctx->driver);
		keel_thread_send_msg(ctx->side[1].thread, side_exit, NULL);
		keel_thread_send_msg(ctx->side[0].thread, side_exit, NULL);
		keel_thread_send_msg(keel_thread_get_current(), stop_msg, NULL);
	}
	return KEEL_POLLER_IDLE;
}

static void switch_start(void *arg)
{
	struct switch_ctx *ctx = arg;

	ctx->side[0].thread = keel_thread_create("side0", 0);
	ctx->side[1].thread = keel_thread_create("side1", 1);
	ctx->side[0].peer = ctx->side[1].thread;
	ctx->side[1].peer = ctx->side[0].thread;
	atomic_store(&ctx->sending, true);
	keel_thread_send_msg(ctx->side[0].thread, side_setup, &ctx->side[0]);
	keel_thread_send_msg(ctx->side[1].thread, side_setup, &ctx->side[1]);
	ctx->start_ms = now_ms();
	ctx->driver = keel_poller_register(switch_driver, ctx, 5000, "switcher");
}

static void test_mode_switch_under_load(void)
{
	struct keel_reactor_opts opts;
	struct switch_ctx *ctx = calloc(1, sizeof(*ctx));

	g_switch = ctx;
	opts_for(&opts, KEEL_REACTOR_MODE_ADAPTIVE);
	CU_ASSERT_EQUAL(run_reactors(&opts, switch_start, ctx), 0);
	CU_ASSERT_TRUE(ctx->drained);
	CU_ASSERT_TRUE(ctx->switches >= 10);
	CU_ASSERT_TRUE(atomic_load(&ctx->side[0].sent) > 0);
	CU_ASSERT_TRUE(atomic_load(&ctx->side[1].sent) > 0);
	CU_ASSERT_EQUAL(atomic_load(&ctx->side[0].sent), atomic_load(&ctx->side[1].received));
	CU_ASSERT_EQUAL(atomic_load(&ctx->side[1].sent), atomic_load(&ctx->side[0].received));
	free(ctx);
}

/* ------------------------------------------------------------------------------ */
/* Watchdog                                                                        */
/* ------------------------------------------------------------------------------ */

struct wd_ctx {
	pthread_mutex_t lock;
	int reports;
	uint32_t idx;
	char thread[64];
	char poller[64];
	uint64_t stuck_ms;
	struct keel_poller *stuck;
	struct keel_thread *t1;
};

static void wd_hook(uint32_t reactor_idx, const char *thread_name, const char *poller_name,
		    uint64_t stuck_ms, void *arg)
{
	struct wd_ctx *ctx = arg;

	pthread_mutex_lock(&ctx->lock);
	ctx->reports++;
	ctx->idx = reactor_idx;
	snprintf(ctx->thread, sizeof(ctx->thread), "%s", thread_name);
	snprintf(ctx->poller, sizeof(ctx->poller), "%s", poller_name);
	ctx->stuck_ms = stuck_ms;
	pthread_mutex_unlock(&ctx->lock);
}

static int wd_stuck_fn(void *arg)
{
	struct wd_ctx *ctx = arg;

	usleep(500 * 1000); /* deliberately stuck, well past the 100 ms threshold */
	keel_poller_unregister(&ctx->stuck);
	keel_thread_exit(keel_thread_get_current());
	return KEEL_POLLER_BUSY;
}

static void wd_t1_setup(void *arg)
{
	struct wd_ctx *ctx = arg;

	ctx->stuck = keel_poller_register(wd_stuck_fn, ctx, 0, "stuck_poller");
}

static struct keel_poller *g_wd_stopper;

static int wd_stopper(void *arg)
{
	(void)arg;
	keel_poller_unregister(&g_wd_stopper);
	keel_reactors_stop();
	return KEEL_POLLER_BUSY;
}

static void wd_start(void *arg)
{
	struct wd_ctx *ctx = arg;

	ctx->t1 = keel_thread_create("stuck_thread", 1);
	keel_thread_send_msg(ctx->t1, wd_t1_setup, ctx);
	/* Main sleeps a long time meanwhile: a sleeping reactor is never reported. */
	g_wd_stopper = keel_poller_register(wd_stopper, NULL, 1200 * 1000, "stopper");
}

static void test_watchdog(void)
{
	struct keel_reactor_opts opts;
	struct wd_ctx ctx = {.lock = PTHREAD_MUTEX_INITIALIZER};
	uint64_t before = keel_watchdog_report_count();

	opts_for(&opts, KEEL_REACTOR_MODE_ADAPTIVE);
	opts.watchdog_ms = 100;
	keel_watchdog_set_hook(wd_hook, &ctx);
	CU_ASSERT_EQUAL(run_reactors(&opts, wd_start, &ctx), 0);
	keel_watchdog_set_hook(NULL, NULL);
	CU_ASSERT_EQUAL(ctx.reports, 1);
	CU_ASSERT_EQUAL(keel_watchdog_report_count() - before, 1);
	CU_ASSERT_EQUAL(ctx.idx, 1);
	CU_ASSERT_STRING_EQUAL(ctx.thread, "stuck_thread");
	CU_ASSERT_STRING_EQUAL(ctx.poller, "stuck_poller");
	CU_ASSERT_TRUE(ctx.stuck_ms >= 100);
}

/* ------------------------------------------------------------------------------ */
/* Liveness: calls while every reactor loops, none while one is stuck               */
/* ------------------------------------------------------------------------------ */

#define LIVE_PERIOD_US 20000

struct live_ctx {
	pthread_t controller;
	struct keel_thread *t1;
	_Atomic uint64_t calls;
	_Atomic bool stalled; /* the message on reactor 1 is blocking it */
	_Atomic bool release; /* let it go */
	uint64_t wakeups_before;
	uint64_t wakeups_unhooked;
	uint64_t calls_when_stalled;
	uint64_t calls_after_stall;
	bool resumed;
	int set_rc;
};

static void live_fn(void *ctx)
{
	struct live_ctx *live = ctx;

	atomic_fetch_add(&live->calls, 1);
}

static void live_stall_msg(void *arg)
{
	struct live_ctx *live = arg;

	atomic_store(&live->stalled, true);
	while (!atomic_load(&live->release)) {
		usleep(1000);
	}
	keel_thread_exit(keel_thread_get_current());
}

/* Waits on states; the only window is the one that shows calls stay away. */
static bool live_wait_calls(struct live_ctx *live, uint64_t n)
{
	for (int i = 0; i < GUARD_TIMEOUT_S * 1000; i++) {
		if (atomic_load(&live->calls) >= n) {
			return true;
		}
		usleep(1000);
	}
	return false;
}

static void *live_controller(void *arg)
{
	struct live_ctx *live = arg;

	struct keel_reactor_stats st;

	/* Without a liveness hook the watchdog (checking every 25 ms here) wakes nobody:
	 * the idle reactor 1 sleeps through ten of its checks. */
	do {
		usleep(1000);
		keel_reactor_get_stats(1, &st);
	} while (!st.sleeping || st.thread_count == 0);
	live->wakeups_before = st.wakeups;
	usleep(250 * 1000);
	keel_reactor_get_stats(1, &st);
	live->wakeups_unhooked = st.wakeups;

	live->set_rc = keel_watchdog_set_liveness(LIVE_PERIOD_US, live_fn, live);
	/* Both reactors are idle and asleep: the probes must wake them. */
	if (live->set_rc != 0 || !live_wait_calls(live, 3)) {
		goto out_stop;
	}
	keel_thread_send_msg(live->t1, live_stall_msg, live);
	while (!atomic_load(&live->stalled)) {
		usleep(1000);
	}
	live->calls_when_stalled = atomic_load(&live->calls);
	usleep(15 * LIVE_PERIOD_US);
	/* One check may still pass: it compared against a probe from before the stall. */
	live->calls_after_stall = atomic_load(&live->calls);
	atomic_store(&live->release, true);
	live->resumed = live_wait_calls(live, live->calls_after_stall + 2);
out_stop:
	atomic_store(&live->release, true);
	keel_watchdog_set_liveness(0, NULL, NULL);
	keel_reactors_stop();
	return NULL;
}

static void live_start(void *arg)
{
	struct live_ctx *live = arg;

	live->t1 = keel_thread_create("live_t1", 1);
	pthread_create(&live->controller, NULL, live_controller, live);
}

static void test_watchdog_liveness(void)
{
	struct keel_reactor_opts opts;
	struct live_ctx live = {0};

	CU_ASSERT_EQUAL(keel_watchdog_set_liveness(LIVE_PERIOD_US, live_fn, &live), -ENOTSUP);
	opts_for(&opts, KEEL_REACTOR_MODE_ADAPTIVE);
	opts.watchdog_ms = 100;
	CU_ASSERT_EQUAL(run_reactors(&opts, live_start, &live), 0);
	pthread_join(live.controller, NULL);
	CU_ASSERT_EQUAL(live.wakeups_unhooked, live.wakeups_before);
	CU_ASSERT_EQUAL(live.set_rc, 0);
	CU_ASSERT_TRUE(live.calls_when_stalled >= 3);
	CU_ASSERT_TRUE(live.calls_after_stall <= live.calls_when_stalled + 1);
	CU_ASSERT_TRUE(live.resumed);
}

/* ------------------------------------------------------------------------------ */
/* Shutdown with a leaked poller                                                   */
/* ------------------------------------------------------------------------------ */

static pthread_mutex_t g_leak_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_leak_warns;
static char g_leak_line[1024];

static void leak_hook(enum keel_log_level level, const char *line, void *ctx)
{
	(void)ctx;
	if (level == KEEL_LOG_WARN && strstr(line, "leaky_poller") != NULL) {
		pthread_mutex_lock(&g_leak_lock);
		g_leak_warns++;
		snprintf(g_leak_line, sizeof(g_leak_line), "%s", line);
		pthread_mutex_unlock(&g_leak_lock);
	}
}

static int leaky_fn(void *arg)
{
	(void)arg;
	return KEEL_POLLER_IDLE;
}

static void leak_t1_setup(void *arg)
{
	(void)arg;
	keel_poller_register(leaky_fn, NULL, 0, "leaky_poller"); /* never unregistered */
	keel_thread_send_msg(keel_thread_get_main(), stop_msg, NULL);
}

static void leak_start(void *arg)
{
	(void)arg;
	keel_thread_send_msg(keel_thread_create("leaker", 1), leak_t1_setup, NULL);
}

static void test_shutdown_leak(void)
{
	struct keel_reactor_opts opts;
	uint64_t start = now_ms();

	opts_for(&opts, KEEL_REACTOR_MODE_ADAPTIVE);
	g_leak_warns = 0;
	keel_log_set_hook(leak_hook, NULL);
	CU_ASSERT_EQUAL(run_reactors(&opts, leak_start, NULL), 0);
	keel_log_set_hook(NULL, NULL);
	CU_ASSERT_EQUAL(g_leak_warns, 1);
	CU_ASSERT_PTR_NOT_NULL(strstr(g_leak_line, "leaker"));
	/* 1 s grace plus slack. */
	CU_ASSERT_TRUE(now_ms() - start < 10000);
}

/* ------------------------------------------------------------------------------ */
/* Blocking pool                                                                   */
/* ------------------------------------------------------------------------------ */

struct blk_ctx {
	_Atomic bool fn_on_pool;
	bool done_on_caller;
	int rc;
	int done;
	struct keel_thread *caller;
};

static int blk_fn(void *arg)
{
	struct blk_ctx *ctx = arg;
	char name[16] = "";

	pthread_getname_np(pthread_self(), name, sizeof(name));
	atomic_store(&ctx->fn_on_pool, keel_thread_get_current() == NULL &&
					       keel_reactor_current() == KEEL_REACTOR_ANY &&
					       strncmp(name, "keel_blk_", 9) == 0);
	usleep(10000);
	return 7;
}

static void blk_done(void *arg, int rc)
{
	struct blk_ctx *ctx = arg;

	ctx->done_on_caller = keel_thread_get_current() == ctx->caller;
	ctx->rc = rc;
	ctx->done++;
	keel_thread_exit(keel_thread_get_current());
	keel_thread_send_msg(keel_thread_get_main(), stop_msg, NULL);
}

static void blk_on_t1(void *arg)
{
	struct blk_ctx *ctx = arg;

	ctx->caller = keel_thread_get_current();
	if (keel_spawn_blocking(blk_fn, ctx, blk_done, ctx) != 0) {
		keel_thread_send_msg(keel_thread_get_main(), stop_msg, NULL);
	}
}

static void blk_start(void *arg)
{
	keel_thread_send_msg(keel_thread_create("blk_caller", 1), blk_on_t1, arg);
}

static void test_blocking_pool(void)
{
	struct keel_reactor_opts opts;
	struct blk_ctx ctx = {0};

	opts_for(&opts, KEEL_REACTOR_MODE_INTERRUPT);
	CU_ASSERT_EQUAL(run_reactors(&opts, blk_start, &ctx), 0);
	CU_ASSERT_EQUAL(ctx.done, 1);
	CU_ASSERT_EQUAL(ctx.rc, 7);
	CU_ASSERT_TRUE(atomic_load(&ctx.fn_on_pool));
	CU_ASSERT_TRUE(ctx.done_on_caller);
}

/* ------------------------------------------------------------------------------ */
/* Statistics                                                                      */
/* ------------------------------------------------------------------------------ */

struct stats_ctx {
	struct keel_poller *poller;
	int runs;
	struct keel_reactor_stats st0;
	struct keel_thread_stats ts;
	struct keel_poller_stats ps[2];
	uint32_t nps;
};

static int stats_poller(void *arg)
{
	struct stats_ctx *ctx = arg;

	if (++ctx->runs == 20) {
		keel_reactor_get_stats(0, &ctx->st0);
		ctx->nps = keel_thread_get_stats(keel_thread_get_current(), &ctx->ts, ctx->ps, 2);
		keel_poller_unregister(&ctx->poller);
		keel_reactors_stop();
	}
	return KEEL_POLLER_BUSY;
}

static void stats_start(void *arg)
{
	struct stats_ctx *ctx = arg;

	ctx->poller = keel_poller_register(stats_poller, ctx, 1000, "stats_poller");
}

static void test_stats(void)
{
	struct keel_reactor_opts opts;
	struct stats_ctx ctx = {0};

	opts_for(&opts, KEEL_REACTOR_MODE_INTERRUPT);
	CU_ASSERT_EQUAL(run_reactors(&opts, stats_start, &ctx), 0);
	CU_ASSERT_EQUAL(ctx.st0.idx, 0);
	CU_ASSERT_EQUAL(ctx.st0.mode, KEEL_REACTOR_MODE_INTERRUPT);
	CU_ASSERT_TRUE(ctx.st0.loops > 0);
	CU_ASSERT_TRUE(ctx.st0.wakeups > 0);
	CU_ASSERT_TRUE(ctx.st0.msgs >= 1); /* start_fn */
	CU_ASSERT_TRUE(ctx.st0.tid > 0);
	CU_ASSERT_TRUE(ctx.st0.busy_ns + ctx.st0.idle_ns > 0);
	CU_ASSERT_EQUAL(ctx.st0.thread_count, 1);
	CU_ASSERT_STRING_EQUAL(ctx.ts.name, "main");
	CU_ASSERT_EQUAL(ctx.ts.reactor, 0);
	CU_ASSERT_EQUAL(ctx.ts.timed_pollers, 1);
	CU_ASSERT_TRUE(ctx.ts.busy_ns + ctx.ts.idle_ns > 0);
	CU_ASSERT_EQUAL(ctx.nps, 1);
	CU_ASSERT_STRING_EQUAL(ctx.ps[0].name, "stats_poller");
	CU_ASSERT_EQUAL(ctx.ps[0].period_us, 1000);
	CU_ASSERT_EQUAL(ctx.ps[0].run_count, 19); /* counted after the callback returns */
	CU_ASSERT_EQUAL(ctx.ps[0].busy_count, 19);
	/* Interrupt mode, a 1 ms timer and nothing else: its deadlines woke the reactor. */
	CU_ASSERT_TRUE(ctx.ps[0].wakeups >= 1);
	CU_ASSERT_TRUE(ctx.ps[0].wakeups <= ctx.st0.wakeups_timer);
	CU_ASSERT_TRUE(ctx.st0.sleep_ns > 0);
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"start_stop", test_start_stop},
		{"flood_poll", test_flood_poll},
		{"flood_interrupt", test_flood_interrupt},
		{"flood_adaptive", test_flood_adaptive},
		{"wake_interrupt", test_wake_interrupt},
		{"wake_adaptive", test_wake_adaptive},
		{"event_wake_interrupt", test_event_wake_interrupt},
		{"event_wake_adaptive", test_event_wake_adaptive},
		{"adaptive_no_spin_after_idle_wake", test_adaptive_no_spin_after_idle_wake},
		{"wakers_grouped_by_name", test_wakers_grouped_by_name},
		{"mode_switch_under_load", test_mode_switch_under_load},
		{"watchdog", test_watchdog},
		{"watchdog_liveness", test_watchdog_liveness},
		{"shutdown_leak", test_shutdown_leak},
		{"blocking_pool", test_blocking_pool},
		{"stats", test_stats},
		{NULL, NULL},
	};

	return ut_cunit_run("reactor", tests);
}
