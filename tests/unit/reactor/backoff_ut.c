/*
 * Unit tests of the small shared helpers for what a hostile client or an exhausted
 * resource can make repeat: the poller back-off (include/keel/backoff.h) and
 * rate-limited log lines (include/keel/log.h). Harness threads and the mock clock.
 */
#include <errno.h>
#include <string.h>

#include <CUnit/Basic.h>

#include "keel/backoff.h"
#include "keel/log.h"
#include "keel/reactor.h"
#include "ut_cunit.h"
#include "ut_threads.h"

static int g_runs;

static int count_poll(void *arg)
{
	g_runs++;
	return KEEL_POLLER_BUSY;
}

static void step_ms(uint64_t ms)
{
	ut_time_advance_us(ms * 1000);
	ut_poll_threads();
}

/* Pause now; \return after how many 1 ms steps the poller ran again. */
static int pause_and_wait(struct keel_poller_backoff *bo, uint64_t expect_us)
{
	int steps = 0;

	CU_ASSERT_EQUAL(keel_poller_backoff_pause(bo), expect_us);
	CU_ASSERT(keel_poller_backoff_is_paused(bo));
	g_runs = 0;
	while (g_runs == 0 && steps < 1000) {
		step_ms(1);
		steps++;
	}
	CU_ASSERT_FALSE(keel_poller_backoff_is_paused(bo));
	return steps;
}

static void test_backoff(void)
{
	struct keel_poller_backoff *bo;
	struct keel_poller *p;
	int steps;

	CU_ASSERT_FATAL(ut_threads_init(1) == 0);
	ut_set_thread(0);
	p = keel_poller_register(count_poll, NULL, 0, "counted");
	CU_ASSERT_FATAL(p != NULL);
	CU_ASSERT_PTR_NULL(keel_poller_backoff_create(NULL, 10, 20));
	CU_ASSERT_PTR_NULL(keel_poller_backoff_create(p, 0, 20));
	CU_ASSERT_PTR_NULL(keel_poller_backoff_create(p, 30, 20));
	bo = keel_poller_backoff_create(p, 10000, 40000);
	CU_ASSERT_FATAL(bo != NULL);

	/* 10, 20, 40, then capped at 40 ms; nothing runs in between */
	steps = pause_and_wait(bo, 10000);
	CU_ASSERT(steps >= 10 && steps <= 11);
	steps = pause_and_wait(bo, 20000);
	CU_ASSERT(steps >= 20 && steps <= 21);
	CU_ASSERT_EQUAL(keel_poller_backoff_pause(bo), 40000);
	CU_ASSERT_EQUAL(keel_poller_backoff_pause(bo), 40000); /* already paused: no change */
	g_runs = 0;
	step_ms(39);
	CU_ASSERT_EQUAL(g_runs, 0);
	step_ms(2);
	CU_ASSERT(g_runs > 0);
	steps = pause_and_wait(bo, 40000);
	CU_ASSERT(steps >= 40 && steps <= 41);
	/* success starts over */
	keel_poller_backoff_reset(bo);
	steps = pause_and_wait(bo, 10000);
	CU_ASSERT(steps >= 10 && steps <= 11);

	/* freed while paused: the resume is cancelled, the poller stays as it is */
	CU_ASSERT_EQUAL(keel_poller_backoff_pause(bo), 20000);
	keel_poller_backoff_free(&bo);
	CU_ASSERT_PTR_NULL(bo);
	g_runs = 0;
	step_ms(100);
	CU_ASSERT_EQUAL(g_runs, 0);
	keel_poller_resume(p);
	step_ms(1);
	CU_ASSERT(g_runs > 0);
	keel_poller_unregister(&p);
	keel_poller_backoff_free(&bo); /* NULL: no-op */
	ut_threads_fini();
}

static void test_accept_errors(void)
{
	CU_ASSERT(keel_accept_should_back_off(EMFILE));
	CU_ASSERT(keel_accept_should_back_off(ENFILE));
	CU_ASSERT(keel_accept_should_back_off(ENOBUFS));
	CU_ASSERT(keel_accept_should_back_off(ENOMEM));
	CU_ASSERT(keel_accept_should_back_off(EBADF));
	CU_ASSERT_FALSE(keel_accept_should_back_off(EAGAIN));
	CU_ASSERT_FALSE(keel_accept_should_back_off(EINTR));
	CU_ASSERT_FALSE(keel_accept_should_back_off(ECONNABORTED));
	CU_ASSERT_FALSE(keel_accept_should_back_off(EPROTO));
	CU_ASSERT_FALSE(keel_accept_should_back_off(EHOSTUNREACH));
}

static int g_lines;
static char g_last[1024];

static void log_hook(enum keel_log_level level, const char *line, void *ctx)
{
	g_lines++;
	snprintf(g_last, sizeof(g_last), "%s", line);
}

/* One call site, so one state for every call. */
static void warn_x(int i)
{
	KEEL_WARNLOG_RATELIMITED(5000, "listener x: accept failed (%d)", i);
}

static void test_ratelimit(void)
{
	struct keel_log_ratelimit rl = KEEL_LOG_RATELIMIT_INIT(1000);
	uint32_t suppressed = 99;

	CU_ASSERT_FATAL(ut_threads_init(1) == 0);
	CU_ASSERT(keel_log_ratelimit_pass(&rl, &suppressed));
	CU_ASSERT_EQUAL(suppressed, 0);
	CU_ASSERT_FALSE(keel_log_ratelimit_pass(&rl, &suppressed));
	step_ms(999);
	CU_ASSERT_FALSE(keel_log_ratelimit_pass(&rl, &suppressed));
	step_ms(1);
	CU_ASSERT(keel_log_ratelimit_pass(&rl, &suppressed));
	CU_ASSERT_EQUAL(suppressed, 2);

	/* the line says how many were not shown */
	g_lines = 0;
	keel_log_set_hook(log_hook, NULL);
	for (int i = 0; i < 50; i++) {
		warn_x(i);
	}
	CU_ASSERT_EQUAL(g_lines, 1);
	CU_ASSERT(strstr(g_last, "accept failed (0)") != NULL);
	step_ms(5000);
	warn_x(50);
	CU_ASSERT(strstr(g_last, "accept failed (50) (49 similar lines not shown)") != NULL);
	/* another call site has its own state */
	KEEL_WARNLOG_RATELIMITED(5000, "listener y: accept failed");
	CU_ASSERT_EQUAL(g_lines, 3);
	keel_log_set_hook(NULL, NULL);
	ut_threads_fini();
}

static void test_ratelimit_filtered(void)
{
	struct keel_log_ratelimit rl = KEEL_LOG_RATELIMIT_INIT(1000);
	uint32_t suppressed = 99;
	enum keel_log_level saved = keel_log_get_level();

	CU_ASSERT_FATAL(ut_threads_init(1) == 0);
	/* lines below the level are neither printed nor counted */
	keel_log_set_level(KEEL_LOG_WARN);
	keel_log_ratelimited(&rl, KEEL_LOG_INFO, __FILE__, __LINE__, "quiet");
	keel_log_ratelimited(&rl, KEEL_LOG_INFO, __FILE__, __LINE__, "quiet");
	CU_ASSERT(keel_log_ratelimit_pass(&rl, &suppressed));
	CU_ASSERT_EQUAL(suppressed, 0);
	keel_log_set_level(saved);
	ut_threads_fini();
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"backoff", test_backoff},
		{"accept_errors", test_accept_errors},
		{"ratelimit", test_ratelimit},
		{"ratelimit_filtered", test_ratelimit_filtered},
		{NULL, NULL},
	};

	return ut_cunit_run("backoff", tests);
}
