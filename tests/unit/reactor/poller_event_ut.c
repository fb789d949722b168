/*
 * Event pollers (an fd tied with keel_poller_register_fd), wake-ups and armed
 * deadlines under the deterministic harness: which poll runs which poller, by count.
 * Without reactors keel_thread_poll() checks parked pollers' fds with poll(2), so a
 * pipe written by the test is "ready" at the very next poll.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "keel/reactor.h"
#include "reactor/reactor_internal.h"
#include "ut_cunit.h"
#include "ut_threads.h"

struct evp {
	struct keel_poller *poller;
	int fd;    /* the watched fd (read end of a pipe) */
	int wfd;   /* its write end */
	bool lazy; /* do not read: the fd stays readable */
	int runs;
	int bytes;
	int pause_at; /* pause self on this run */
	int unregister_at;
	struct keel_poller **victim;    /* unregister this one on the first run */
	struct keel_poller *wake_other; /* wake this one on every run */
};

static int evp_fn(void *arg)
{
	struct evp *e = arg;
	char buf[64];
	ssize_t n;
	int busy = KEEL_POLLER_IDLE;

	e->runs++;
	while (!e->lazy && (n = read(e->fd, buf, sizeof(buf))) > 0) {
		e->bytes += (int)n;
		busy = KEEL_POLLER_BUSY;
	}
	if (e->victim != NULL && *e->victim != NULL) {
		keel_poller_unregister(e->victim);
	}
	if (e->wake_other != NULL) {
		keel_poller_wake(e->wake_other);
	}
	if (e->pause_at == e->runs) {
		keel_poller_pause(e->poller);
	}
	if (e->unregister_at == e->runs) {
		keel_poller_unregister(&e->poller);
	}
	return busy;
}

/* An event poller on a fresh pipe, with a period when \p period_us is not 0. */
static void evp_open_period(struct evp *e, uint64_t period_us, const char *name)
{
	int fds[2];

	CU_ASSERT_EQUAL_FATAL(pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
	e->fd = fds[0];
	e->wfd = fds[1];
	e->poller = keel_poller_register(evp_fn, e, period_us, name);
	CU_ASSERT_PTR_NOT_NULL_FATAL(e->poller);
	CU_ASSERT_EQUAL_FATAL(keel_poller_register_fd(e->poller, e->fd, EPOLLIN), 0);
}

static void evp_open(struct evp *e)
{
	evp_open_period(e, 0, "evp");
}

static void evp_close(struct evp *e)
{
	keel_poller_unregister(&e->poller);
	close(e->fd);
	close(e->wfd);
}

static void evp_write(struct evp *e, const char *s)
{
	CU_ASSERT_EQUAL(write(e->wfd, s, strlen(s)), (ssize_t)strlen(s));
}

static void poll_n(int n)
{
	for (int i = 0; i < n; i++) {
		ut_poll_thread(0);
	}
}

/* Runs once when registered, then only for its fd; busy keeps it running, idle parks. */
static void test_event_runs_on_fd_only(void)
{
	struct keel_thread_stats ts;
	struct evp e = {0};

	CU_ASSERT_EQUAL_FATAL(ut_threads_init(1), 0);
	evp_open(&e);
	CU_ASSERT_EQUAL(e.runs, 0); /* nothing runs inside register */
	poll_n(10);
	CU_ASSERT_EQUAL(e.runs, 1); /* the first run after registration, then parked */
	CU_ASSERT_EQUAL(ut_poll_thread(0), 0);
	keel_thread_get_stats(ut_thread(0), &ts, NULL, 0);
	CU_ASSERT_EQUAL(ts.active_pollers, 1); /* period 0: counted as active, as SPDK does */

	evp_write(&e, "abc");
	CU_ASSERT_EQUAL(ut_poll_thread(0), 1);
	CU_ASSERT_EQUAL(e.runs, 2);
	CU_ASSERT_EQUAL(e.bytes, 3);
	/* Busy: it runs again without any readiness, finds nothing, and parks. */
	CU_ASSERT_EQUAL(ut_poll_thread(0), 0);
	CU_ASSERT_EQUAL(e.runs, 3);
	poll_n(10);
	CU_ASSERT_EQUAL(e.runs, 3);

	/* Data that arrives while it is still busy needs no readiness check at all. */
	evp_write(&e, "d");
	poll_n(1);
	CU_ASSERT_EQUAL(e.runs, 4);
	evp_write(&e, "e");
	poll_n(1);
	CU_ASSERT_EQUAL(e.runs, 5);
	CU_ASSERT_EQUAL(e.bytes, 5);
	poll_n(10);
	CU_ASSERT_EQUAL(e.runs, 6);
	/* Parked pollers are counted (the reactor polls epoll only while some are). */
	CU_ASSERT_EQUAL(ut_thread(0)->parked, 1);
	evp_close(&e);
	CU_ASSERT_EQUAL(ut_thread(0)->parked, 0);
	ut_threads_fini();
}

/*
 * Idle means no deadline: a thread whose only poller waits on an fd gives its reactor
 * nothing to wake for (the next deadline is "never"), and time passing runs nothing;
 * the fd alone does. The same holds for an event poller whose pacing period is
 * disarmed until it has work (the RPC server's connections), until it is armed.
 */
static void test_event_idle_no_deadline(void)
{
	struct evp e = {0}, paced = {0};

	CU_ASSERT_EQUAL_FATAL(ut_threads_init(1), 0);
	evp_open(&e);
	evp_open_period(&paced, 1000, "paced");
	keel_poller_disarm(paced.poller);
	poll_n(3);
	CU_ASSERT_EQUAL(e.runs, 1);
	CU_ASSERT_EQUAL(paced.runs, 1);
	CU_ASSERT_EQUAL(krt_poller_next_deadline(ut_thread(0)), UINT64_MAX);
	for (int i = 0; i < 10000; i++) {
		ut_time_advance_us(1000); /* 10 s, a millisecond at a time */
		CU_ASSERT_EQUAL(ut_poll_thread(0), 0);
	}
	CU_ASSERT_EQUAL(e.runs, 1);
	CU_ASSERT_EQUAL(paced.runs, 1);
	evp_write(&e, "x");
	poll_n(3);
	CU_ASSERT_EQUAL(e.runs, 3); /* read (busy), one idle run, parked */
	CU_ASSERT_EQUAL(paced.runs, 1);
	CU_ASSERT_EQUAL(krt_poller_next_deadline(ut_thread(0)), UINT64_MAX);
	/* Armed, the paced one has a deadline and runs at it, every period. */
	CU_ASSERT_EQUAL(keel_poller_arm(paced.poller, 1000), 0);
	CU_ASSERT_NOT_EQUAL(krt_poller_next_deadline(ut_thread(0)), UINT64_MAX);
	ut_time_advance_us(1000);
	poll_n(1);
	CU_ASSERT_EQUAL(paced.runs, 2);
	ut_time_advance_us(1000);
	poll_n(1);
	CU_ASSERT_EQUAL(paced.runs, 3);
	keel_poller_disarm(paced.poller);
	CU_ASSERT_EQUAL(krt_poller_next_deadline(ut_thread(0)), UINT64_MAX);
	evp_close(&paced);
	evp_close(&e);
	ut_threads_fini();
}

/* Level triggered: an fd the poller does not drain keeps it running; modify_fd stops it. */
static void test_event_level_and_modify(void)
{
	struct evp e = {.lazy = true};
	int sv[2];

	CU_ASSERT_EQUAL_FATAL(ut_threads_init(1), 0);
	CU_ASSERT_EQUAL_FATAL(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
	e.poller = keel_poller_register(evp_fn, &e, 0, "lazy");
	CU_ASSERT_EQUAL(keel_poller_register_fd(e.poller, sv[0], 0), 0);
	poll_n(3);
	CU_ASSERT_EQUAL(e.runs, 1);
	CU_ASSERT_EQUAL(write(sv[1], "x", 1), 1);
	poll_n(3);
	CU_ASSERT_EQUAL(e.runs, 1); /* no EPOLLIN asked: readable data is not a reason */
	CU_ASSERT_EQUAL(keel_poller_modify_fd(e.poller, EPOLLIN), 0);
	poll_n(3);
	CU_ASSERT_EQUAL(e.runs, 4); /* still readable at every check */
	CU_ASSERT_EQUAL(keel_poller_modify_fd(e.poller, 0), 0);
	poll_n(3);
	CU_ASSERT_EQUAL(e.runs, 4);
	keel_poller_unregister(&e.poller);
	close(sv[0]);
	close(sv[1]);
	ut_threads_fini();
}

static void wake_msg(void *arg)
{
	keel_poller_wake(arg);
}

/* keel_poller_wake: one run at the next poll; ignored while paused; resume runs once. */
static void test_event_wake(void)
{
	struct evp e = {0};

	CU_ASSERT_EQUAL_FATAL(ut_threads_init(2), 0);
	ut_set_thread(0);
	evp_open(&e);
	poll_n(3);
	CU_ASSERT_EQUAL(e.runs, 1);
	keel_poller_wake(e.poller);
	keel_poller_wake(e.poller); /* already queued: still one run */
	CU_ASSERT_EQUAL(e.runs, 1); /* never inside the call */
	poll_n(3);
	CU_ASSERT_EQUAL(e.runs, 2);
	/* From a message on the owning thread (how a completion arrives). */
	ut_set_thread(1);
	CU_ASSERT_EQUAL(keel_thread_send_msg(ut_thread(0), wake_msg, e.poller), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(e.runs, 3);
	ut_set_thread(0);
	keel_poller_pause(e.poller);
	CU_ASSERT_EQUAL(ut_thread(0)->parked, 0);
	keel_poller_wake(e.poller);
	evp_write(&e, "x");
	poll_n(3);
	CU_ASSERT_EQUAL(e.runs, 3);
	keel_poller_resume(e.poller);
	poll_n(3);
	CU_ASSERT_EQUAL(e.runs, 5); /* one run for the resume (reads "x", busy), one idle */
	CU_ASSERT_EQUAL(e.bytes, 1);
	evp_close(&e);
	ut_threads_fini();
}

/*
 * Two pollers waking each other never hold one poll: a poller woken during the pass
 * runs at the next poll, and keel_thread_poll() counts it as work meanwhile.
 */
static void test_event_wake_ping_pong(void)
{
	struct evp a = {0}, b = {0};

	CU_ASSERT_EQUAL_FATAL(ut_threads_init(1), 0);
	evp_open(&a);
	evp_open(&b);
	poll_n(2);
	CU_ASSERT_EQUAL(a.runs + b.runs, 2);
	a.wake_other = b.poller;
	b.wake_other = a.poller;
	keel_poller_wake(a.poller);
	CU_ASSERT_EQUAL(ut_poll_thread(0), 1); /* a ran (idle) and woke b */
	CU_ASSERT_EQUAL(a.runs, 2);
	CU_ASSERT_EQUAL(b.runs, 1);
	CU_ASSERT_EQUAL(ut_poll_thread(0), 1);
	CU_ASSERT_EQUAL(b.runs, 2);
	CU_ASSERT_EQUAL(a.runs, 2);
	a.wake_other = NULL;
	b.wake_other = NULL;
	poll_n(3);
	CU_ASSERT_EQUAL(a.runs, 3);
	CU_ASSERT_EQUAL(b.runs, 2);
	evp_close(&a);
	evp_close(&b);
	ut_threads_fini();
}

/* Pause, unregister of self and of another queued poller, from inside callbacks. */
static void test_event_inside_callbacks(void)
{
	struct evp a = {0}, b = {0}, c = {0};

	CU_ASSERT_EQUAL_FATAL(ut_threads_init(1), 0);
	evp_open(&a);
	evp_open(&b);
	evp_open(&c);
	poll_n(2);
	CU_ASSERT_EQUAL(a.runs + b.runs + c.runs, 3);

	/* a pauses itself while its fd stays readable: not run until resumed. */
	a.pause_at = 2;
	a.lazy = true;
	evp_write(&a, "x");
	poll_n(3);
	CU_ASSERT_EQUAL(a.runs, 2);
	keel_poller_resume(a.poller);
	a.lazy = false;
	poll_n(3);
	CU_ASSERT_EQUAL(a.runs, 4); /* resumed run reads (busy), then one idle run */
	CU_ASSERT_EQUAL(a.bytes, 1);

	/* c runs before b in one pass (woken first) and unregisters b: b never runs. */
	c.victim = &b.poller;
	keel_poller_wake(c.poller);
	evp_write(&b, "b");
	poll_n(3);
	CU_ASSERT_PTR_NULL(b.poller);
	CU_ASSERT_EQUAL(b.runs, 1);
	CU_ASSERT_EQUAL(c.runs, 2);

	/* c unregisters itself while readable: its fd leaves at once, nothing runs it. */
	c.victim = NULL;
	c.unregister_at = 3;
	c.lazy = true;
	evp_write(&c, "c");
	poll_n(3);
	CU_ASSERT_PTR_NULL(c.poller);
	CU_ASSERT_EQUAL(c.runs, 3);
	poll_n(3);
	CU_ASSERT_EQUAL(c.runs, 3);
	evp_close(&b);
	evp_close(&c);
	evp_close(&a);
	ut_threads_fini();
}

/* keel_poller_arm on an event poller: one run at the deadline, not before; disarm. */
static void test_event_arm(void)
{
	struct evp e = {0};

	CU_ASSERT_EQUAL_FATAL(ut_threads_init(1), 0);
	evp_open(&e);
	poll_n(2);
	CU_ASSERT_EQUAL(e.runs, 1);
	CU_ASSERT_EQUAL(keel_poller_arm(e.poller, 100), 0);
	ut_time_advance_us(99);
	poll_n(3);
	CU_ASSERT_EQUAL(e.runs, 1);
	ut_time_advance_us(1);
	poll_n(3);
	CU_ASSERT_EQUAL(e.runs, 2);
	ut_time_advance_us(1000);
	poll_n(3);
	CU_ASSERT_EQUAL(e.runs, 2); /* one-shot */
	/* Re-arming replaces the deadline; disarm cancels it. */
	CU_ASSERT_EQUAL(keel_poller_arm(e.poller, 50), 0);
	CU_ASSERT_EQUAL(keel_poller_arm(e.poller, 500), 0);
	ut_time_advance_us(100);
	poll_n(3);
	CU_ASSERT_EQUAL(e.runs, 2);
	keel_poller_disarm(e.poller);
	ut_time_advance_us(1000);
	poll_n(3);
	CU_ASSERT_EQUAL(e.runs, 2);
	/* The fd still works while armed. */
	CU_ASSERT_EQUAL(keel_poller_arm(e.poller, 1000), 0);
	evp_write(&e, "x");
	poll_n(3);
	CU_ASSERT_EQUAL(e.runs, 4);
	ut_time_advance_us(1000);
	poll_n(3);
	CU_ASSERT_EQUAL(e.runs, 5);
	evp_close(&e);
	ut_threads_fini();
}

/* An fd and a period: readiness runs it at once, busy waits for the next deadline. */
static void test_event_with_period(void)
{
	struct evp e = {0};

	CU_ASSERT_EQUAL_FATAL(ut_threads_init(1), 0);
	evp_open_period(&e, 1000, "paced");
	poll_n(3);
	CU_ASSERT_EQUAL(e.runs, 1); /* the run after registration */
	evp_write(&e, "ab");
	poll_n(3);
	CU_ASSERT_EQUAL(e.runs, 2); /* readiness: at once, long before the deadline */
	CU_ASSERT_EQUAL(e.bytes, 2);
	poll_n(3);
	CU_ASSERT_EQUAL(e.runs, 2); /* it was busy, yet the period paces it */
	ut_time_advance_us(1000);
	poll_n(3);
	CU_ASSERT_EQUAL(e.runs, 3); /* the deadline */
	ut_time_advance_us(1000);
	poll_n(3);
	CU_ASSERT_EQUAL(e.runs, 4);
	evp_close(&e);
	ut_threads_fini();
}

static int g_timed_runs;

static int timed_fn(void *arg)
{
	(void)arg;
	g_timed_runs++;
	return KEEL_POLLER_IDLE;
}

/* Timed pollers: disarm stops them, arm restarts them at the given delay. */
static void test_timed_arm_disarm(void)
{
	struct keel_poller *t, *active;

	CU_ASSERT_EQUAL_FATAL(ut_threads_init(1), 0);
	g_timed_runs = 0;
	t = keel_poller_register(timed_fn, NULL, 100, "t");
	active = keel_poller_register(timed_fn, NULL, 0, "active");
	CU_ASSERT_EQUAL(keel_poller_arm(active, 10), -EINVAL);
	keel_poller_unregister(&active);
	ut_time_advance_us(100);
	poll_n(1);
	CU_ASSERT_EQUAL(g_timed_runs, 1);
	keel_poller_disarm(t);
	keel_poller_disarm(t); /* no-op */
	ut_time_advance_us(1000);
	poll_n(2);
	CU_ASSERT_EQUAL(g_timed_runs, 1);
	CU_ASSERT_EQUAL(keel_poller_arm(t, 30), 0);
	ut_time_advance_us(29);
	poll_n(1);
	CU_ASSERT_EQUAL(g_timed_runs, 1);
	ut_time_advance_us(1);
	poll_n(1);
	CU_ASSERT_EQUAL(g_timed_runs, 2);
	ut_time_advance_us(100); /* the period continues from the armed run */
	poll_n(1);
	CU_ASSERT_EQUAL(g_timed_runs, 3);
	/* Wake on a timed poller: one run at the next poll, then the period goes on. */
	keel_poller_wake(t);
	poll_n(1);
	CU_ASSERT_EQUAL(g_timed_runs, 4);
	ut_time_advance_us(99);
	poll_n(1);
	CU_ASSERT_EQUAL(g_timed_runs, 4);
	ut_time_advance_us(1);
	poll_n(1);
	CU_ASSERT_EQUAL(g_timed_runs, 5);
	keel_poller_unregister(&t);
	ut_threads_fini();
}

/* An fd only for wake-ups leaves the poller active: it runs every poll regardless. */
static void test_wakeup_fd_stays_active(void)
{
	struct evp e = {0};
	int fds[2];

	CU_ASSERT_EQUAL_FATAL(ut_threads_init(1), 0);
	CU_ASSERT_EQUAL_FATAL(pipe2(fds, O_NONBLOCK), 0);
	e.fd = fds[0];
	e.wfd = fds[1];
	e.poller = keel_poller_register(evp_fn, &e, 0, "ring");
	CU_ASSERT_EQUAL(keel_poller_register_wakeup_fd(e.poller, fds[0], EPOLLIN), 0);
	CU_ASSERT_EQUAL(keel_poller_register_fd(e.poller, fds[0], EPOLLIN), -EEXIST);
	poll_n(5);
	CU_ASSERT_EQUAL(e.runs, 5);
	evp_close(&e);
	ut_threads_fini();
}

/* Many event pollers on one thread: only those whose fd was written run. */
static void test_event_many(void)
{
	enum {
		N = 200
	};
	static struct evp e[N];
	int runs = 0;

	CU_ASSERT_EQUAL_FATAL(ut_threads_init(1), 0);
	for (int i = 0; i < N; i++) {
		e[i] = (struct evp){0};
		evp_open(&e[i]);
	}
	poll_n(2);
	for (int i = 0; i < N; i += 7) {
		evp_write(&e[i], "x");
	}
	poll_n(3);
	for (int i = 0; i < N; i++) {
		runs += e[i].runs;
		CU_ASSERT_EQUAL(e[i].bytes, i % 7 == 0 ? 1 : 0);
	}
	CU_ASSERT_EQUAL(runs, N + 2 * ((N + 6) / 7));
	for (int i = 0; i < N; i++) {
		evp_close(&e[i]);
	}
	ut_threads_fini();
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"event_runs_on_fd_only", test_event_runs_on_fd_only},
		{"event_idle_no_deadline", test_event_idle_no_deadline},
		{"event_level_and_modify", test_event_level_and_modify},
		{"event_wake", test_event_wake},
		{"event_wake_ping_pong", test_event_wake_ping_pong},
		{"event_inside_callbacks", test_event_inside_callbacks},
		{"event_arm", test_event_arm},
		{"event_with_period", test_event_with_period},
		{"timed_arm_disarm", test_timed_arm_disarm},
		{"wakeup_fd_stays_active", test_wakeup_fd_stays_active},
		{"event_many", test_event_many},
		{NULL, NULL},
	};

	return ut_cunit_run("poller_event", tests);
}
