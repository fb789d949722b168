/*
 * Threads, messages and pollers under the deterministic harness.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "keel/log.h"
#include "reactor/reactor_internal.h"
#include "ut_cunit.h"
#include "ut_threads.h"

static char g_log[256];
static size_t g_log_len;

static void log_char(char c)
{
	if (g_log_len < sizeof(g_log) - 1) {
		g_log[g_log_len++] = c;
		g_log[g_log_len] = '\0';
	}
}

static void log_reset(void)
{
	g_log_len = 0;
	g_log[0] = '\0';
}

/* ------------------------------------------------------------------------------ */

static uint32_t g_order[1000];
static uint32_t g_order_n;

static void order_msg(void *arg)
{
	g_order[g_order_n++] = (uint32_t)(uintptr_t)arg;
}

static void test_msg_fifo(void)
{
	CU_ASSERT_EQUAL_FATAL(ut_threads_init(2), 0);
	g_order_n = 0;
	ut_set_thread(0);
	for (uintptr_t i = 0; i < 100; i++) {
		CU_ASSERT_EQUAL(keel_thread_send_msg(ut_thread(1), order_msg, (void *)i), 0);
	}
	/* Nothing runs inside send_msg. */
	CU_ASSERT_EQUAL(g_order_n, 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_order_n, 100);
	for (uint32_t i = 0; i < g_order_n; i++) {
		CU_ASSERT_EQUAL(g_order[i], i);
	}
	/* Same-thread sends: FIFO too. */
	g_order_n = 0;
	ut_set_thread(1);
	for (uintptr_t i = 0; i < 100; i++) {
		CU_ASSERT_EQUAL(keel_thread_send_msg(ut_thread(1), order_msg, (void *)i), 0);
	}
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_order_n, 100);
	for (uint32_t i = 0; i < g_order_n; i++) {
		CU_ASSERT_EQUAL(g_order[i], i);
	}
	CU_ASSERT_PTR_EQUAL(keel_thread_get_current(), ut_thread(1));
	ut_threads_fini();
}

static int g_repost_left;

static void repost_msg(void *arg)
{
	(void)arg;
	if (--g_repost_left > 0) {
		CU_ASSERT_EQUAL(keel_thread_send_msg(keel_thread_get_current(), repost_msg, NULL),
				0);
	}
}

static void test_msg_repost_batched(void)
{
	CU_ASSERT_EQUAL_FATAL(ut_threads_init(1), 0);
	g_repost_left = 100;
	CU_ASSERT_EQUAL(keel_thread_send_msg(ut_thread(0), repost_msg, NULL), 0);
	/* A self-reposting message is bounded by the batch: one poll does 32. */
	CU_ASSERT_EQUAL(ut_poll_thread(0), THREAD_MSG_BATCH);
	CU_ASSERT_EQUAL(g_repost_left, 100 - THREAD_MSG_BATCH);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_repost_left, 0);
	ut_threads_fini();
}

static void current_msg(void *arg)
{
	struct keel_thread **out = arg;

	*out = keel_thread_get_current();
}

static void test_thread_basics(void)
{
	struct keel_thread *seen = NULL;

	CU_ASSERT_EQUAL_FATAL(ut_threads_init(3), 0);
	CU_ASSERT_STRING_EQUAL(keel_thread_get_name(ut_thread(2)), "ut_thread_2");
	CU_ASSERT_EQUAL(keel_thread_get_id(ut_thread(0)), 1);
	CU_ASSERT_EQUAL(keel_thread_get_id(ut_thread(2)), 3);
	CU_ASSERT_EQUAL(keel_thread_get_reactor(ut_thread(1)), KEEL_REACTOR_ANY);
	CU_ASSERT_PTR_EQUAL(keel_thread_get_current(), ut_thread(0));
	ut_set_thread(0);
	keel_thread_send_msg(ut_thread(2), current_msg, &seen);
	ut_poll_threads();
	CU_ASSERT_PTR_EQUAL(seen, ut_thread(2));
	/* Polling restores the previously current thread. */
	CU_ASSERT_PTR_EQUAL(keel_thread_get_current(), ut_thread(0));
	ut_set_thread(UT_THREAD_NONE);
	CU_ASSERT_PTR_NULL(keel_thread_get_current());
	CU_ASSERT_EQUAL(keel_thread_lib_init(0), -EALREADY);
	ut_threads_fini();
}

/* ------------------------------------------------------------------------------ */
/* Pollers                                                                         */
/* ------------------------------------------------------------------------------ */

struct tpoller {
	char tag;
	int runs;
	int unregister_at; /* unregister self on this run */
	int pause_at;      /* pause self on this run */
	struct keel_poller *poller;
	struct keel_poller **victim; /* unregister this one on first run */
	int ret;
};

static int tpoller_fn(void *arg)
{
	struct tpoller *t = arg;

	t->runs++;
	log_char(t->tag);
	if (t->victim != NULL && *t->victim != NULL) {
		keel_poller_unregister(t->victim);
	}
	if (t->unregister_at == t->runs) {
		keel_poller_unregister(&t->poller);
	}
	if (t->pause_at == t->runs) {
		keel_poller_pause(t->poller);
	}
	return t->ret;
}

static void test_active_order(void)
{
	struct tpoller a = {.tag = 'a', .ret = KEEL_POLLER_BUSY};
	struct tpoller b = {.tag = 'b'};
	struct tpoller c = {.tag = 'c'};
	struct keel_poller_stats ps[4];
	struct keel_thread_stats ts;

	CU_ASSERT_EQUAL_FATAL(ut_threads_init(1), 0);
	log_reset();
	a.poller = keel_poller_register(tpoller_fn, &a, 0, "a");
	b.poller = keel_poller_register(tpoller_fn, &b, 0, "b");
	c.poller = keel_poller_register(tpoller_fn, &c, 0, "c");
	CU_ASSERT_PTR_NOT_NULL_FATAL(c.poller);
	CU_ASSERT_EQUAL(ut_poll_thread(0), 1); /* only a reports busy */
	CU_ASSERT_EQUAL(ut_poll_thread(0), 1);
	CU_ASSERT_STRING_EQUAL(g_log, "abcabc");
	CU_ASSERT_EQUAL(keel_thread_get_stats(ut_thread(0), &ts, ps, 4), 3);
	CU_ASSERT_EQUAL(ts.active_pollers, 3);
	CU_ASSERT_EQUAL(ts.timed_pollers, 0);
	CU_ASSERT_STRING_EQUAL(ps[0].name, "a");
	CU_ASSERT_EQUAL(ps[0].run_count, 2);
	CU_ASSERT_EQUAL(ps[0].busy_count, 2);
	CU_ASSERT_EQUAL(ps[1].busy_count, 0);
	keel_poller_unregister(&a.poller);
	keel_poller_unregister(&b.poller);
	keel_poller_unregister(&c.poller);
	CU_ASSERT_PTR_NULL(a.poller);
	keel_poller_unregister(&a.poller); /* NULL: no-op */
	CU_ASSERT_EQUAL(ut_poll_thread(0), 0);
	ut_threads_fini();
}

static void test_poller_self_unregister_pause(void)
{
	struct tpoller a = {.tag = 'a', .unregister_at = 2};
	struct tpoller b = {.tag = 'b', .pause_at = 1};
	struct tpoller c = {.tag = 'c'};
	struct keel_thread_stats ts;

	CU_ASSERT_EQUAL_FATAL(ut_threads_init(1), 0);
	log_reset();
	a.poller = keel_poller_register(tpoller_fn, &a, 0, "a");
	b.poller = keel_poller_register(tpoller_fn, &b, 0, "b");
	c.poller = keel_poller_register(tpoller_fn, &c, 0, "c");
	for (int i = 0; i < 4; i++) {
		ut_poll_thread(0);
	}
	CU_ASSERT_EQUAL(a.runs, 2);
	CU_ASSERT_PTR_NULL(a.poller);
	CU_ASSERT_EQUAL(b.runs, 1);
	CU_ASSERT_EQUAL(c.runs, 4);
	CU_ASSERT_STRING_EQUAL(g_log, "abcaccc");
	keel_thread_get_stats(ut_thread(0), &ts, NULL, 0);
	CU_ASSERT_EQUAL(ts.paused_pollers, 1);
	CU_ASSERT_EQUAL(ts.active_pollers, 1);
	/* Resume from outside: runs again after c (resumed pollers rejoin at the end). */
	log_reset();
	keel_poller_resume(b.poller);
	ut_poll_thread(0);
	CU_ASSERT_STRING_EQUAL(g_log, "cb");
	keel_poller_unregister(&b.poller);
	keel_poller_unregister(&c.poller);
	ut_threads_fini();
}

static void test_poller_unregister_other(void)
{
	struct tpoller a = {.tag = 'a'};
	struct tpoller b = {.tag = 'b'};
	struct tpoller t1 = {.tag = '1'};
	struct tpoller t2 = {.tag = '2'};

	CU_ASSERT_EQUAL_FATAL(ut_threads_init(1), 0);
	log_reset();
	a.poller = keel_poller_register(tpoller_fn, &a, 0, "a");
	b.poller = keel_poller_register(tpoller_fn, &b, 0, "b");
	a.victim = &b.poller; /* a removes b before b's turn in the same loop */
	t1.poller = keel_poller_register(tpoller_fn, &t1, 100, "t1");
	t2.poller = keel_poller_register(tpoller_fn, &t2, 100, "t2");
	t1.victim = &t2.poller; /* same deadline: whichever runs first removes the other */
	t2.victim = &t1.poller;
	ut_time_advance_us(100);
	ut_poll_thread(0);
	CU_ASSERT_EQUAL(b.runs, 0);
	CU_ASSERT_EQUAL(t1.runs + t2.runs, 1);
	ut_time_advance_us(100);
	ut_poll_thread(0);
	CU_ASSERT_EQUAL(b.runs, 0);
	CU_ASSERT_EQUAL(t1.runs + t2.runs, 2);
	keel_poller_unregister(&a.poller);
	keel_poller_unregister(&t1.poller);
	keel_poller_unregister(&t2.poller);
	ut_threads_fini();
}

static struct keel_poller *g_child;
static int g_child_runs;

static int child_fn(void *arg)
{
	(void)arg;
	g_child_runs++;
	return KEEL_POLLER_IDLE;
}

static int parent_fn(void *arg)
{
	(void)arg;
	if (g_child == NULL) {
		g_child = keel_poller_register(child_fn, NULL, 0, "child");
	}
	return KEEL_POLLER_BUSY;
}

static void test_poller_register_inside(void)
{
	struct keel_poller *parent;

	CU_ASSERT_EQUAL_FATAL(ut_threads_init(1), 0);
	g_child = NULL;
	g_child_runs = 0;
	parent = keel_poller_register(parent_fn, NULL, 0, "parent");
	ut_poll_thread(0);
	CU_ASSERT_PTR_NOT_NULL(g_child);
	CU_ASSERT_EQUAL(g_child_runs, 0);
	ut_poll_thread(0);
	CU_ASSERT_EQUAL(g_child_runs, 1);
	keel_poller_unregister(&parent);
	keel_poller_unregister(&g_child);
	/* Outside a keel thread there is nothing to register on. */
	ut_set_thread(UT_THREAD_NONE);
	CU_ASSERT_PTR_NULL(keel_poller_register(child_fn, NULL, 0, "orphan"));
	ut_threads_fini();
}

static void test_timed_pollers(void)
{
	struct tpoller slow = {.tag = 's'};
	struct tpoller fast = {.tag = 'f'};
	struct keel_thread_stats ts;

	CU_ASSERT_EQUAL_FATAL(ut_threads_init(1), 0);
	log_reset();
	slow.poller = keel_poller_register(tpoller_fn, &slow, 300, "slow");
	fast.poller = keel_poller_register(tpoller_fn, &fast, 100, "fast");
	keel_thread_get_stats(ut_thread(0), &ts, NULL, 0);
	CU_ASSERT_EQUAL(ts.timed_pollers, 2);
	ut_poll_thread(0);
	CU_ASSERT_STRING_EQUAL(g_log, "");
	ut_time_advance_us(99);
	ut_poll_thread(0);
	CU_ASSERT_STRING_EQUAL(g_log, "");
	ut_time_advance_us(1); /* t=100 */
	ut_poll_thread(0);
	CU_ASSERT_STRING_EQUAL(g_log, "f");
	ut_time_advance_us(150); /* t=250: fast due at 200 */
	ut_poll_thread(0);
	CU_ASSERT_STRING_EQUAL(g_log, "ff");
	ut_time_advance_us(50); /* t=300: fast (300) and slow (300); deadline order, ties any */
	ut_poll_thread(0);
	CU_ASSERT_EQUAL(slow.runs, 1);
	CU_ASSERT_EQUAL(fast.runs, 3);
	/* No drift: fast's next deadline is 400, not 300+100 from "late" runs. */
	ut_time_advance_us(100); /* t=400 */
	ut_poll_thread(0);
	CU_ASSERT_EQUAL(fast.runs, 4);
	/* Far behind: one run, no burst, then back on the 100 us grid. */
	ut_time_advance_us(1050); /* t=1450 */
	ut_poll_thread(0);
	CU_ASSERT_EQUAL(fast.runs, 5);
	CU_ASSERT_EQUAL(slow.runs, 2);
	ut_poll_thread(0);
	CU_ASSERT_EQUAL(fast.runs, 5);
	ut_time_advance_us(50); /* t=1500: next grid point */
	ut_poll_thread(0);
	CU_ASSERT_EQUAL(fast.runs, 6);
	/* Pause and resume a timed poller. */
	keel_poller_pause(fast.poller);
	ut_time_advance_us(1000);
	ut_poll_thread(0);
	CU_ASSERT_EQUAL(fast.runs, 6);
	keel_poller_resume(fast.poller);
	ut_time_advance_us(100);
	ut_poll_thread(0);
	CU_ASSERT_EQUAL(fast.runs, 7);
	keel_poller_unregister(&slow.poller);
	keel_poller_unregister(&fast.poller);
	ut_threads_fini();
}

static void test_timed_many(void)
{
	enum {
		N = 200
	};
	static struct tpoller tp[N];
	int total = 0;

	CU_ASSERT_EQUAL_FATAL(ut_threads_init(1), 0);
	for (int i = 0; i < N; i++) {
		tp[i] = (struct tpoller){.tag = 'x'};
		tp[i].poller = keel_poller_register(tpoller_fn, &tp[i], 10 + (uint64_t)(i % 17) * 7,
						    "tp");
	}
	for (int step = 0; step < 1000; step++) {
		ut_time_advance_us(3);
		ut_poll_thread(0);
		/* Heap invariant spot check: the top is never later than a child. */
		struct keel_thread *t = ut_thread(0);
		for (uint32_t k = 1; k < t->heap_count; k++) {
			CU_ASSERT_TRUE(t->heap[(k - 1) / 4].deadline <= t->heap[k].deadline);
			if (t->heap[(k - 1) / 4].deadline > t->heap[k].deadline) {
				break;
			}
		}
		if (step == 500) {
			/* Remove every third one mid-run. */
			for (int i = 0; i < N; i += 3) {
				keel_poller_unregister(&tp[i].poller);
			}
		}
	}
	for (int i = 0; i < N; i++) {
		uint64_t period = 10 + (uint64_t)(i % 17) * 7;
		uint64_t expect = (i % 3 == 0) ? 1503 / period : 3000 / period;

		total += tp[i].runs;
		/* Within one run of the exact count: no drift, no burst, none missed. */
		CU_ASSERT_TRUE(tp[i].runs + 1 >= (int)expect && tp[i].runs <= (int)expect + 1);
		keel_poller_unregister(&tp[i].poller);
	}
	CU_ASSERT_TRUE(total > 0);
	ut_threads_fini();
}

static void test_poller_fd_unplaced(void)
{
	struct tpoller a = {.tag = 'a'};
	int fds[2];

	CU_ASSERT_EQUAL_FATAL(ut_threads_init(1), 0);
	CU_ASSERT_EQUAL_FATAL(pipe(fds), 0);
	a.poller = keel_poller_register(tpoller_fn, &a, 0, "fdpoller");
	CU_ASSERT_EQUAL(keel_poller_modify_fd(a.poller, 1), -ENOENT);
	CU_ASSERT_EQUAL(keel_poller_register_fd(a.poller, fds[0], 1), 0);
	CU_ASSERT_EQUAL(keel_poller_register_fd(a.poller, fds[0], 1), -EEXIST);
	CU_ASSERT_EQUAL(keel_poller_modify_fd(a.poller, 1), 0);
	keel_poller_unregister(&a.poller);
	close(fds[0]);
	close(fds[1]);
	ut_threads_fini();
}

/* ------------------------------------------------------------------------------ */
/* Exit, for_each_thread, blocking pool                                            */
/* ------------------------------------------------------------------------------ */

static char g_warn[1024];
static int g_warns;

static void warn_hook(enum keel_log_level level, const char *line, void *ctx)
{
	(void)ctx;
	if (level == KEEL_LOG_WARN) {
		g_warns++;
		snprintf(g_warn, sizeof(g_warn), "%s", line);
	}
}

static void test_thread_exit(void)
{
	struct tpoller a = {.tag = 'a'};
	struct keel_thread *t1;

	CU_ASSERT_EQUAL_FATAL(ut_threads_init(2), 0);
	t1 = ut_thread(1);
	CU_ASSERT_EQUAL(krt_thread_lib_thread_count(), 2);
	ut_set_thread(1);
	a.poller = keel_poller_register(tpoller_fn, &a, 0, "a");
	keel_thread_exit(ut_thread(1));
	CU_ASSERT_TRUE(keel_thread_is_exited(ut_thread(1)));
	ut_poll_threads();
	/* Still holds a poller: keeps running. */
	CU_ASSERT_PTR_NOT_NULL(ut_thread(1));
	CU_ASSERT_TRUE(a.runs > 0);
	ut_set_thread(1);
	keel_poller_unregister(&a.poller);
	ut_set_thread(0);
	ut_poll_threads();
	CU_ASSERT_PTR_NULL(ut_thread(1));
	CU_ASSERT_EQUAL(krt_thread_lib_thread_count(), 1);
	/* A late sender with a stale pointer gets -ESHUTDOWN, not a use-after-free. */
	CU_ASSERT_EQUAL(keel_thread_send_msg(t1, order_msg, NULL), -ESHUTDOWN);
	ut_threads_fini();
}

static void test_thread_exit_leak_warns(void)
{
	struct tpoller a = {.tag = 'a'};

	CU_ASSERT_EQUAL_FATAL(ut_threads_init(2), 0);
	g_warns = 0;
	g_warn[0] = '\0';
	keel_log_set_hook(warn_hook, NULL);
	ut_set_thread(1);
	a.poller = keel_poller_register(tpoller_fn, &a, 0, "leaky_poller");
	keel_thread_exit(ut_thread(1));
	ut_poll_threads();
	CU_ASSERT_PTR_NOT_NULL(ut_thread(1));
	CU_ASSERT_EQUAL(g_warns, 0);
	ut_time_advance_us(1100000);
	ut_poll_threads();
	CU_ASSERT_PTR_NULL(ut_thread(1));
	CU_ASSERT_EQUAL(g_warns, 1);
	CU_ASSERT_PTR_NOT_NULL(strstr(g_warn, "ut_thread_1"));
	CU_ASSERT_PTR_NOT_NULL(strstr(g_warn, "leaky_poller"));
	CU_ASSERT_PTR_NOT_NULL(strstr(g_warn, "keel[WARN]"));
	keel_log_set_hook(NULL, NULL);
	ut_threads_fini();
}

static uint64_t g_visits[8];
static uint32_t g_nvisits;
static struct keel_thread *g_cpl_thread;

static void visit_fn(void *ctx)
{
	(void)ctx;
	g_visits[g_nvisits++] = keel_thread_get_id(keel_thread_get_current());
}

static void visit_cpl(void *ctx)
{
	*(int *)ctx = 1;
	g_cpl_thread = keel_thread_get_current();
}

static void test_for_each_thread(void)
{
	int done = 0;

	CU_ASSERT_EQUAL_FATAL(ut_threads_init(3), 0);
	g_nvisits = 0;
	ut_set_thread(1);
	keel_for_each_thread(visit_fn, &done, visit_cpl);
	CU_ASSERT_EQUAL(g_nvisits, 0);
	CU_ASSERT_EQUAL(done, 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(done, 1);
	CU_ASSERT_PTR_EQUAL(g_cpl_thread, ut_thread(1));
	CU_ASSERT_EQUAL_FATAL(g_nvisits, 3);
	CU_ASSERT_EQUAL(g_visits[0], 1);
	CU_ASSERT_EQUAL(g_visits[1], 2);
	CU_ASSERT_EQUAL(g_visits[2], 3);
	ut_threads_fini();
}

struct blk_ctx {
	pthread_t caller;
	bool fn_off_thread;
	bool fn_no_keel_thread;
	struct keel_thread *done_thread;
	int rc;
	int done;
};

static int blk_fn(void *arg)
{
	struct blk_ctx *ctx = arg;

	ctx->fn_off_thread = !pthread_equal(pthread_self(), ctx->caller);
	ctx->fn_no_keel_thread = keel_thread_get_current() == NULL;
	usleep(1000);
	return -EIO;
}

static void blk_done(void *cb_arg, int rc)
{
	struct blk_ctx *ctx = cb_arg;

	ctx->done_thread = keel_thread_get_current();
	ctx->rc = rc;
	ctx->done++;
}

static void test_blocking_lazy_pool(void)
{
	struct blk_ctx ctx = {.caller = pthread_self()};

	CU_ASSERT_EQUAL_FATAL(ut_threads_init(2), 0);
	ut_set_thread(1);
	CU_ASSERT_EQUAL(keel_spawn_blocking(blk_fn, &ctx, blk_done, &ctx), 0);
	ut_set_thread(UT_THREAD_NONE);
	CU_ASSERT_EQUAL(keel_spawn_blocking(blk_fn, &ctx, blk_done, &ctx), -EINVAL);
	for (int i = 0; i < 5000 && !ctx.done; i++) {
		if (ut_poll_threads() == 0) {
			usleep(1000);
		}
	}
	CU_ASSERT_EQUAL(ctx.done, 1);
	CU_ASSERT_EQUAL(ctx.rc, -EIO);
	CU_ASSERT_TRUE(ctx.fn_off_thread);
	CU_ASSERT_TRUE(ctx.fn_no_keel_thread);
	CU_ASSERT_PTR_EQUAL(ctx.done_thread, ut_thread(1));
	ut_threads_fini();
}

/*
 * A thread force-destroyed after the exit grace while its blocking job still runs:
 * the worker's completion finds the thread gone. It must be dropped with an error
 * naming the thread (never run, never crash), and the job must not leak (ASan).
 */
static atomic_bool g_blk_release;
static atomic_int g_blk_errs;
static char g_blk_err[256];

static int blk_gated_fn(void *arg)
{
	(void)arg;
	while (!atomic_load(&g_blk_release)) {
		usleep(100);
	}
	return 0;
}

static void blk_err_hook(enum keel_log_level level, const char *line, void *ctx)
{
	(void)ctx;
	if (level == KEEL_LOG_ERROR && strstr(line, "blocking job") != NULL) {
		snprintf(g_blk_err, sizeof(g_blk_err), "%s", line);
		atomic_fetch_add(&g_blk_errs, 1);
	}
}

static void test_blocking_thread_destroyed(void)
{
	struct blk_ctx ctx = {.caller = pthread_self()};

	CU_ASSERT_EQUAL_FATAL(ut_threads_init(2), 0);
	atomic_store(&g_blk_release, false);
	atomic_store(&g_blk_errs, 0);
	g_warns = 0;
	keel_log_set_hook(warn_hook, NULL);
	ut_set_thread(1);
	CU_ASSERT_EQUAL(keel_spawn_blocking(blk_gated_fn, NULL, blk_done, &ctx), 0);
	keel_thread_exit(ut_thread(1));
	ut_poll_threads();
	CU_ASSERT_PTR_NOT_NULL(ut_thread(1)); /* waits for its job within the grace */
	ut_time_advance_us(THREAD_EXIT_GRACE_NS / 1000 + 1000);
	ut_poll_threads();
	CU_ASSERT_PTR_NULL(ut_thread(1));
	CU_ASSERT_EQUAL(g_warns, 1);
	CU_ASSERT_PTR_NOT_NULL(strstr(g_warn, "blocking jobs 1"));

	keel_log_set_hook(blk_err_hook, NULL);
	atomic_store(&g_blk_release, true);
	for (int i = 0; i < 5000 && atomic_load(&g_blk_errs) == 0; i++) {
		usleep(1000);
	}
	keel_log_set_hook(NULL, NULL);
	CU_ASSERT_EQUAL(atomic_load(&g_blk_errs), 1);
	CU_ASSERT_PTR_NOT_NULL(strstr(g_blk_err, "ut_thread_1"));
	ut_poll_threads();
	CU_ASSERT_EQUAL(ctx.done, 0);
	ut_threads_fini();
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"msg_fifo", test_msg_fifo},
		{"msg_repost_batched", test_msg_repost_batched},
		{"thread_basics", test_thread_basics},
		{"active_order", test_active_order},
		{"poller_self_unregister_pause", test_poller_self_unregister_pause},
		{"poller_unregister_other", test_poller_unregister_other},
		{"poller_register_inside", test_poller_register_inside},
		{"timed_pollers", test_timed_pollers},
		{"timed_many", test_timed_many},
		{"poller_fd_unplaced", test_poller_fd_unplaced},
		{"thread_exit", test_thread_exit},
		{"thread_exit_leak_warns", test_thread_exit_leak_warns},
		{"for_each_thread", test_for_each_thread},
		{"blocking_lazy_pool", test_blocking_lazy_pool},
		{"blocking_thread_destroyed", test_blocking_thread_destroyed},
		{NULL, NULL},
	};

	return ut_cunit_run("thread", tests);
}
