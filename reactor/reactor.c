/*
 * Reactors: one pinned OS thread per CPU of the list, each running its keel threads
 * in a loop, and sleeping in epoll when the mode allows and nothing is due.
 *
 * Sleep/wake-up handshake (no syscall while the receiver is awake):
 *   reactor: store sleeping = 1 (seq_cst); re-check every thread's ring head, the
 *            incoming list, the stop flag and the mode (seq_cst loads); then
 *            epoll_wait.
 *   sender:  claim a ring slot with a seq_cst CAS on the ring head (ring.c), then a
 *            seq_cst load of sleeping; if set, the first sender to flip "notified"
 *            writes the eventfd.
 * All four accesses are seq_cst, so in their single total order either the
 * reactor's re-check sees the claimed slot, or the sender sees sleeping == 1.
 * "notified" is cleared whenever sleeping is cleared; while it is 1 an eventfd
 * write is pending or on its way, so later senders can skip theirs.
 *
 * In interrupt mode active pollers without an fd only run when something wakes the
 * reactor (a message, a timer, an fd, a mode change): modules must complete work by
 * message or through an fd registered with keel_poller_register_fd(), and a poller
 * holding work it could not hand on (e.g. -ENOMEM from a full ring) must report
 * KEEL_POLLER_BUSY so the reactor keeps polling instead of sleeping on it.
 *
 * Adaptive mode polls while any poller or message reports work; after
 * adaptive_spin_us without work it sleeps exactly like interrupt mode. During the
 * idle spin the loop backs off with exponentially more pause instructions between
 * iterations (up to 64), which frees the sibling hyperthread and the memory bus
 * while still reacting within about a microsecond. Only work starts the spin: a
 * wake-up whose iteration finds nothing to do (a timer with nothing to do, a stray
 * eventfd write) goes straight back to sleep, so a periodic poller on an idle
 * reactor costs one iteration per period, not a spin window.
 *
 * Event pollers (an fd registered with keel_poller_register_fd) that are parked wait
 * for epoll. A sleeping reactor learns of them from its blocking epoll_wait. An awake
 * one collects readiness with a non-blocking epoll_wait, and only while some event
 * poller is parked: on every idle iteration (nothing else to do, so the syscall
 * displaces nothing), and at most every REACTOR_FD_POLL_BUSY_NS while iterations are
 * busy, so a busy data path pays one epoll_wait per interval, not a syscall per
 * iteration, and a busy poller (which stays queued) pays nothing at all.
 *
 * Every return from a blocking epoll_wait is a wake-up, and each reason present is
 * counted: the eventfd as a message, the timerfd for the pollers whose deadline is
 * due, and each ready fd for its poller.
 *
 * Accounting: the clock is read once per iteration; with one keel thread on the
 * reactor (the common case) that read also closes the previous iteration's busy or
 * idle time for the thread. With several threads each poll is timed separately.
 */
#include <assert.h>
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "reactor_internal.h"

#define REACTOR_MAX 1024
#define REACTOR_EPOLL_BATCH 64
/* While busy, parked event pollers' fds are checked at most this often. */
#define REACTOR_FD_POLL_BUSY_NS 20000ULL
#define REACTOR_EPOLL_TAG_EVENT ((uint64_t)1)
#define REACTOR_EPOLL_TAG_TIMER ((uint64_t)2)
/* Sleep bound while exits are pending or sends are retried, so they make progress. */
#define REACTOR_PENDING_TIMEOUT_MS 5
/* Longest pause burst between idle spins in adaptive mode. */
#define REACTOR_SPIN_BACKOFF_MAX 64

const char krt_reactor_msg_name[] = "(message)";

static struct reactor **g_reactors;
static _Atomic uint32_t g_reactor_count;
static struct keel_reactor_opts g_opts;
static bool g_reactors_init;
static bool g_reactors_started;
static _Atomic bool g_stop;
static _Atomic uint32_t g_reactors_running;
static _Atomic(struct keel_thread *) g_main_thread;
static __thread struct reactor *tls_reactor;

static const char *const g_mode_names[] = {
	[KEEL_REACTOR_MODE_ADAPTIVE] = "adaptive",
	[KEEL_REACTOR_MODE_POLL] = "poll",
	[KEEL_REACTOR_MODE_INTERRUPT] = "interrupt",
};

int keel_reactor_mode_parse(const char *name, enum keel_reactor_mode *mode)
{
	if (name == NULL) {
		return -EINVAL;
	}
	for (int m = 0; m < 3; m++) {
		if (strcmp(name, g_mode_names[m]) == 0) {
			*mode = (enum keel_reactor_mode)m;
			return 0;
		}
	}
	return -EINVAL;
}

const char *keel_reactor_mode_name(enum keel_reactor_mode mode)
{
	if ((unsigned)mode > KEEL_REACTOR_MODE_INTERRUPT) {
		return "unknown";
	}
	return g_mode_names[mode];
}

void keel_reactor_opts_init(struct keel_reactor_opts *opts)
{
	memset(opts, 0, sizeof(*opts));
	opts->cpus = NULL;
	opts->mode = KEEL_REACTOR_MODE_ADAPTIVE;
	opts->watchdog_ms = 1000;
	opts->blocking_threads = 2;
	opts->msg_ring_size = THREAD_DEFAULT_RING_SIZE;
	opts->adaptive_spin_us = 200;
	opts->no_pin = false;
	opts->reactor_thread_init = NULL;
}

uint32_t keel_reactor_count(void)
{
	return atomic_load_explicit(&g_reactor_count, memory_order_acquire);
}

struct reactor *krt_reactor_get(uint32_t idx)
{
	if (idx >= keel_reactor_count()) {
		return NULL;
	}
	return g_reactors[idx];
}

uint32_t keel_reactor_current(void)
{
	return tls_reactor != NULL ? tls_reactor->idx : KEEL_REACTOR_ANY;
}

uint32_t keel_reactor_cpu(uint32_t idx)
{
	struct reactor *reactor = krt_reactor_get(idx);

	return reactor != NULL ? reactor->cpu : UINT32_MAX;
}

struct keel_thread *keel_thread_get_main(void)
{
	return atomic_load(&g_main_thread);
}

/* ------------------------------------------------------------------------------ */
/* epoll / eventfd helpers                                                         */
/* ------------------------------------------------------------------------------ */

static void reactor_eventfd_write(int fd)
{
	uint64_t one = 1;

	/* EAGAIN means the counter is saturated: it is readable, which is all we need. */
	while (write(fd, &one, sizeof(one)) < 0 && errno == EINTR) {
	}
}

void krt_reactor_notify_slow(struct reactor *reactor)
{
	if (atomic_exchange(&reactor->notified, 1) == 0) {
		reactor_eventfd_write(reactor->evfd);
	}
}

void krt_reactor_poke(struct reactor *reactor)
{
	/* Not through "notified": an awake reactor must not sleep through this either, and
	 * a readable eventfd ends its next epoll_wait at once. */
	reactor_eventfd_write(reactor->evfd);
}

uint64_t krt_reactor_loops(struct reactor *reactor)
{
	return atomic_load_explicit(&reactor->st_loops, memory_order_relaxed);
}

int krt_reactor_epoll_add(struct reactor *reactor, int fd, uint32_t events,
			  struct keel_poller *poller)
{
	struct epoll_event ev = {.events = events, .data.ptr = poller};

	if (epoll_ctl(reactor->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
		return -errno;
	}
	return 0;
}

int krt_reactor_epoll_mod(struct reactor *reactor, int fd, uint32_t events,
			  struct keel_poller *poller)
{
	struct epoll_event ev = {.events = events, .data.ptr = poller};

	if (epoll_ctl(reactor->epfd, EPOLL_CTL_MOD, fd, &ev) != 0) {
		return -errno;
	}
	return 0;
}

void krt_reactor_epoll_del(struct reactor *reactor, int fd)
{
	/* ENOENT/EBADF: the caller closed it early; nothing left to undo. */
	(void)epoll_ctl(reactor->epfd, EPOLL_CTL_DEL, fd, NULL);
}

void krt_reactor_hb_quiesce(struct reactor *reactor)
{
	/*
	 * seq_cst stores then a seq_cst load, against the watchdog's seq_cst store of
	 * wd_reading then seq_cst loads of the names: either it sees NULL, or we see it
	 * reading and wait. (Plain seq_cst operations rather than fences: TSan does not
	 * model fences.)
	 */
	atomic_store(&reactor->hb_thread, NULL);
	atomic_store(&reactor->hb_poller, NULL);
	while (atomic_load(&reactor->wd_reading)) {
		keel_cpu_relax();
	}
}

/* ------------------------------------------------------------------------------ */
/* Threads on reactors                                                             */
/* ------------------------------------------------------------------------------ */

int krt_reactor_add_thread(struct reactor *reactor, struct keel_thread *thread)
{
	pthread_mutex_lock(&reactor->incoming_lock);
	if (reactor->exited) {
		pthread_mutex_unlock(&reactor->incoming_lock);
		return -ESHUTDOWN;
	}
	TAILQ_INSERT_TAIL(&reactor->incoming, thread, rlink);
	atomic_store(&reactor->has_incoming, true);
	pthread_mutex_unlock(&reactor->incoming_lock);
	reactor_notify(reactor);
	return 0;
}

static void reactor_adopt(struct reactor *reactor, bool stopping)
{
	struct keel_thread_list list = TAILQ_HEAD_INITIALIZER(list);
	struct keel_thread *thread;

	pthread_mutex_lock(&reactor->incoming_lock);
	TAILQ_CONCAT(&list, &reactor->incoming, rlink);
	atomic_store(&reactor->has_incoming, false);
	pthread_mutex_unlock(&reactor->incoming_lock);
	while ((thread = TAILQ_FIRST(&list)) != NULL) {
		TAILQ_REMOVE(&list, thread, rlink);
		TAILQ_INSERT_TAIL(&reactor->threads, thread, rlink);
		atomic_fetch_add(&reactor->thread_count, 1);
		if (stopping) {
			krt_thread_request_exit(thread);
		}
	}
}

/* \return true when no thread can join any more (the reactor may exit). */
static bool reactor_close_incoming(struct reactor *reactor)
{
	bool closed = false;

	pthread_mutex_lock(&reactor->incoming_lock);
	if (TAILQ_EMPTY(&reactor->incoming)) {
		reactor->exited = true;
		closed = true;
	}
	pthread_mutex_unlock(&reactor->incoming_lock);
	return closed;
}

/* ------------------------------------------------------------------------------ */
/* The loop                                                                        */
/* ------------------------------------------------------------------------------ */

static void reactor_arm_timer(struct reactor *reactor, uint64_t deadline)
{
	struct itimerspec its = {0};

	if (deadline == reactor->timer_armed) {
		return;
	}
	if (deadline != UINT64_MAX) {
		its.it_value.tv_sec = (time_t)(deadline / 1000000000ULL);
		its.it_value.tv_nsec = (long)(deadline % 1000000000ULL);
		if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) {
			its.it_value.tv_nsec = 1; /* all-zero would disarm */
		}
	}
	if (timerfd_settime(reactor->tfd, TFD_TIMER_ABSTIME, &its, NULL) == 0) {
		reactor->timer_armed = deadline;
	}
}

static void reactor_count(_Atomic uint64_t *counter)
{
	/* Single writer: a plain load and store, no locked instruction. */
	atomic_store_explicit(counter, atomic_load_explicit(counter, memory_order_relaxed) + 1,
			      memory_order_relaxed);
}

/*
 * Hand the events of an epoll_wait to their owners: drain the eventfd and timerfd,
 * queue event pollers whose fd is ready. \p woke: this ended a sleep, so count the
 * reasons.
 */
static void reactor_dispatch(struct reactor *reactor, struct epoll_event *events, int n, bool woke)
{
	bool msg = false, timer = false, fd = false;
	struct keel_thread *thread;

	for (int i = 0; i < n; i++) {
		uint64_t val;

		if (events[i].data.u64 == REACTOR_EPOLL_TAG_EVENT) {
			(void)!read(reactor->evfd, &val, sizeof(val));
			msg = true;
		} else if (events[i].data.u64 == REACTOR_EPOLL_TAG_TIMER) {
			(void)!read(reactor->tfd, &val, sizeof(val));
			reactor->timer_armed = UINT64_MAX; /* one-shot: it disarmed itself */
			timer = true;
		} else {
			struct keel_poller *poller = events[i].data.ptr;

			/* A fd in epoll belongs to a live, unpaused poller of this reactor:
			 * unregister and pause remove it before anything can free the poller. */
			krt_poller_fd_ready(poller);
			if (woke) {
				poller->wake_count++;
				fd = true;
			}
		}
	}
	if (!woke) {
		return;
	}
	reactor_count(&reactor->st_wakeups);
	if (msg) {
		reactor_count(&reactor->st_wake_msg);
	}
	if (fd) {
		reactor_count(&reactor->st_wake_fd);
	}
	if (timer) {
		uint64_t now = krt_clock_monotonic_ns();

		reactor_count(&reactor->st_wake_timer);
		/* The poller at the top of each heap is the one the timer was armed for. */
		TAILQ_FOREACH(thread, &reactor->threads, rlink) {
			if (thread->heap_count != 0 && thread->heap[0].deadline <= now) {
				thread->heap[0].poller->wake_count++;
			}
		}
	}
	if (!msg && !timer && !fd) {
		reactor_count(&reactor->st_wake_other);
	}
}

/* Readiness of parked event pollers' fds, without sleeping. */
static void reactor_fd_poll(struct reactor *reactor)
{
	struct epoll_event events[REACTOR_EPOLL_BATCH];
	int n = epoll_wait(reactor->epfd, events, REACTOR_EPOLL_BATCH, 0);

	reactor_count(&reactor->st_fd_polls);
	if (n > 0) {
		reactor_dispatch(reactor, events, n, false);
	}
}

/*
 * Sleep in epoll unless the re-check finds something to do.
 * \return true when it slept (and so collected fd readiness on the way out).
 */
static bool reactor_sleep(struct reactor *reactor, bool stopping)
{
	struct epoll_event events[REACTOR_EPOLL_BATCH];
	uint64_t deadline = UINT64_MAX, start;
	struct keel_thread *thread;
	bool slept = false;
	int timeout = -1;
	int n;

	atomic_store(&reactor->sleeping, 1);
	TAILQ_FOREACH(thread, &reactor->threads, rlink) {
		uint64_t d;

		if (krt_thread_has_pending(thread)) {
			goto out_awake;
		}
		d = krt_poller_next_deadline(thread);
		if (d < deadline) {
			deadline = d;
		}
		if (atomic_load_explicit(&thread->state, memory_order_relaxed) != THREAD_RUNNING) {
			timeout = REACTOR_PENDING_TIMEOUT_MS;
		}
	}
	if (atomic_load(&reactor->has_incoming) || atomic_load(&g_stop) != stopping ||
	    atomic_load(&reactor->mode) == KEEL_REACTOR_MODE_POLL) {
		goto out_awake;
	}
	if (stopping) {
		timeout = REACTOR_PENDING_TIMEOUT_MS;
	}
	reactor_arm_timer(reactor, deadline);

	start = krt_clock_monotonic_ns();
	n = epoll_wait(reactor->epfd, events, REACTOR_EPOLL_BATCH, timeout);
	atomic_store_explicit(&reactor->st_sleep_ns,
			      atomic_load_explicit(&reactor->st_sleep_ns, memory_order_relaxed) +
				      (krt_clock_monotonic_ns() - start),
			      memory_order_relaxed);
	if (n >= 0) {
		reactor_dispatch(reactor, events, n, true);
		slept = true;
	}
out_awake:
	atomic_store(&reactor->sleeping, 0);
	atomic_store(&reactor->notified, 0);
	return slept;
}

static void reactor_publish(_Atomic uint64_t *counter, uint64_t value)
{
	atomic_store_explicit(counter, value, memory_order_relaxed);
}

static void reactor_run(struct reactor *reactor)
{
	uint64_t spin_ns = (uint64_t)g_opts.adaptive_spin_us * 1000;
	uint64_t now, last, last_work;
	uint64_t busy_ns = 0, idle_ns = 0, loops = 0, msgs = 0;
	struct keel_thread *acct_thread = NULL; /* single thread: charged at the next start */
	uint64_t last_fd_poll = 0;
	uint32_t backoff = 1;
	bool stopping = false;
	bool prev_busy = false;
	bool fd_fresh = false; /* readiness was just collected by a sleep */

	last = krt_clock_monotonic_ns();
	last_work = last;
	for (;;) {
		struct keel_thread *thread, *tmp;
		uint64_t elapsed;
		int work = 0;
		int mode;

		now = krt_clock_monotonic_ns();
		elapsed = now - last;
		last = now;
		if (prev_busy) {
			busy_ns += elapsed;
		} else {
			idle_ns += elapsed;
		}
		if (acct_thread != NULL) {
			if (prev_busy) {
				acct_thread->busy_ns += elapsed;
			} else {
				acct_thread->idle_ns += elapsed;
			}
		}
		atomic_store_explicit(&reactor->hb_start_ns, now, memory_order_relaxed);

		if (keel_unlikely(atomic_load_explicit(&g_stop, memory_order_relaxed)) &&
		    !stopping) {
			stopping = true;
			TAILQ_FOREACH(thread, &reactor->threads, rlink) {
				krt_thread_request_exit(thread);
			}
		}
		if (keel_unlikely(
			    atomic_load_explicit(&reactor->has_incoming, memory_order_relaxed))) {
			reactor_adopt(reactor, stopping);
		}
		if (atomic_load_explicit(&reactor->fd_parked, memory_order_relaxed) != 0 &&
		    !fd_fresh && (!prev_busy || now - last_fd_poll >= REACTOR_FD_POLL_BUSY_NS)) {
			reactor_fd_poll(reactor);
			last_fd_poll = now;
		}
		fd_fresh = false;

		thread = TAILQ_FIRST(&reactor->threads);
		if (thread != NULL && TAILQ_NEXT(thread, rlink) == NULL) {
			/* The common case: one clock read per iteration. */
			bool destroyed;
			uint64_t before = thread->msgs;

			work = krt_thread_poll(thread, now, &destroyed);
			if (!destroyed) {
				msgs += thread->msgs - before;
				acct_thread = thread;
			} else {
				msgs += (uint64_t)work; /* approximate: the thread is gone */
				acct_thread = NULL;
			}
		} else {
			uint64_t t_start = now;

			acct_thread = NULL;
			TAILQ_FOREACH_SAFE(thread, &reactor->threads, rlink, tmp) {
				uint64_t before = thread->msgs, t_end;
				bool destroyed;
				int w = krt_thread_poll(thread, t_start, &destroyed);

				work += w;
				t_end = krt_clock_monotonic_ns();
				if (!destroyed) {
					msgs += thread->msgs - before;
					if (w > 0) {
						thread->busy_ns += t_end - t_start;
					} else {
						thread->idle_ns += t_end - t_start;
					}
				}
				t_start = t_end;
			}
		}
		loops++;
		reactor_publish(&reactor->st_busy_ns, busy_ns);
		reactor_publish(&reactor->st_idle_ns, idle_ns);
		reactor_publish(&reactor->st_loops, loops);
		reactor_publish(&reactor->st_msgs, msgs);

		if (keel_unlikely(stopping) && TAILQ_EMPTY(&reactor->threads) &&
		    reactor_close_incoming(reactor)) {
			break;
		}
		if (work > 0) {
			prev_busy = true;
			last_work = now;
			backoff = 1;
			continue;
		}
		prev_busy = false;
		mode = atomic_load_explicit(&reactor->mode, memory_order_relaxed);
		if (mode == KEEL_REACTOR_MODE_POLL) {
			continue;
		}
		if (mode == KEEL_REACTOR_MODE_ADAPTIVE && now - last_work < spin_ns) {
			/* Idle spin with exponential pause back-off: cheaper on the sibling
			 * hyperthread and the bus, still well under a microsecond to react. */
			for (uint32_t i = 0; i < backoff; i++) {
				keel_cpu_relax();
			}
			if (backoff < REACTOR_SPIN_BACKOFF_MAX) {
				backoff *= 2;
			}
			continue;
		}
		/* No spin window after this: only an iteration that does work starts one. */
		fd_fresh = reactor_sleep(reactor, stopping);
		backoff = 1;
	}
	atomic_store_explicit(&reactor->hb_start_ns, 0, memory_order_relaxed);
}

/* ------------------------------------------------------------------------------ */
/* Reactor OS threads                                                              */
/* ------------------------------------------------------------------------------ */

static void reactor_os_thread_setup(struct reactor *reactor)
{
	char name[16];

	tls_reactor = reactor;
	atomic_store(&reactor->tid, (uint64_t)gettid());
	snprintf(name, sizeof(name), "reactor_%u", reactor->idx);
	pthread_setname_np(pthread_self(), name);
	if (!g_opts.no_pin) {
		cpu_set_t set;

		CPU_ZERO(&set);
		CPU_SET(reactor->cpu, &set);
		if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set) != 0) {
			/* cpusets may forbid it; run unpinned rather than not at all. */
			KEEL_WARNLOG("reactor %u: cannot pin to cpu %u, running unpinned",
				     reactor->idx, reactor->cpu);
		}
	}
	if (g_opts.reactor_thread_init != NULL) {
		g_opts.reactor_thread_init(reactor->idx);
	}
}

static void *reactor_os_thread_main(void *arg)
{
	struct reactor *reactor = arg;

	reactor_os_thread_setup(reactor);
	atomic_fetch_add(&g_reactors_running, 1);
	reactor_run(reactor);
	tls_reactor = NULL;
	return NULL;
}

static void reactor_free(struct reactor *reactor)
{
	if (reactor == NULL) {
		return;
	}
	if (reactor->tfd >= 0) {
		close(reactor->tfd);
	}
	if (reactor->evfd >= 0) {
		close(reactor->evfd);
	}
	if (reactor->epfd >= 0) {
		close(reactor->epfd);
	}
	pthread_mutex_destroy(&reactor->incoming_lock);
	keel_numa_free(reactor, sizeof(*reactor));
}

static struct reactor *reactor_alloc(uint32_t idx, uint32_t cpu, enum keel_reactor_mode mode)
{
	int numa_node = krt_numa_node_of_cpu_safe(cpu);
	struct epoll_event ev = {.events = EPOLLIN};
	struct reactor *reactor;

	reactor = keel_numa_zalloc(sizeof(*reactor), numa_node);
	if (reactor == NULL) {
		return NULL;
	}
	reactor->idx = idx;
	reactor->cpu = cpu;
	reactor->numa_node = numa_node;
	reactor->timer_armed = UINT64_MAX;
	reactor->epfd = -1;
	reactor->evfd = -1;
	reactor->tfd = -1;
	atomic_init(&reactor->mode, (int)mode);
	TAILQ_INIT(&reactor->threads);
	TAILQ_INIT(&reactor->incoming);
	pthread_mutex_init(&reactor->incoming_lock, NULL);

	reactor->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (reactor->epfd < 0) {
		goto out_free_reactor;
	}
	reactor->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (reactor->evfd < 0) {
		goto out_free_reactor;
	}
	reactor->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (reactor->tfd < 0) {
		goto out_free_reactor;
	}
	ev.data.u64 = REACTOR_EPOLL_TAG_EVENT;
	if (epoll_ctl(reactor->epfd, EPOLL_CTL_ADD, reactor->evfd, &ev) != 0) {
		goto out_free_reactor;
	}
	ev.data.u64 = REACTOR_EPOLL_TAG_TIMER;
	if (epoll_ctl(reactor->epfd, EPOLL_CTL_ADD, reactor->tfd, &ev) != 0) {
		goto out_free_reactor;
	}
	return reactor;

out_free_reactor:
	KEEL_ERRLOG("reactor %u: setup failed: %s", idx, strerror(errno));
	reactor_free(reactor);
	return NULL;
}

static void reactors_free_all(void)
{
	uint32_t count = keel_reactor_count();

	atomic_store(&g_reactor_count, 0);
	for (uint32_t i = 0; i < count; i++) {
		reactor_free(g_reactors[i]);
	}
	free(g_reactors);
	g_reactors = NULL;
}

int keel_reactors_init(const struct keel_reactor_opts *user_opts)
{
	uint32_t *cpus;
	int n, rc;

	if (g_reactors_init) {
		return -EALREADY;
	}
	if (user_opts != NULL) {
		g_opts = *user_opts;
	} else {
		keel_reactor_opts_init(&g_opts);
	}
	if ((unsigned)g_opts.mode > KEEL_REACTOR_MODE_INTERRUPT) {
		return -EINVAL;
	}
	cpus = calloc(REACTOR_MAX, sizeof(*cpus));
	if (cpus == NULL) {
		return -ENOMEM;
	}
	if (g_opts.cpus != NULL) {
		n = keel_cpulist_parse(g_opts.cpus, cpus, REACTOR_MAX);
	} else {
		n = krt_cpulist_online(cpus, REACTOR_MAX);
	}
	if (n < 0) {
		rc = n == -E2BIG ? -EINVAL : n;
		goto out_free_cpus;
	}
	g_opts.cpus = NULL; /* the caller's string need not outlive init */

	rc = keel_thread_lib_init(g_opts.msg_ring_size);
	if (rc != 0) {
		goto out_free_cpus;
	}
	g_reactors = calloc((size_t)n, sizeof(*g_reactors));
	if (g_reactors == NULL) {
		rc = -ENOMEM;
		goto out_fini_lib;
	}
	for (int i = 0; i < n; i++) {
		g_reactors[i] = reactor_alloc((uint32_t)i, cpus[i], g_opts.mode);
		if (g_reactors[i] == NULL) {
			atomic_store(&g_reactor_count, (uint32_t)i);
			rc = -ENOMEM;
			goto out_free_reactors;
		}
	}
	atomic_store(&g_reactor_count, (uint32_t)n);
	atomic_store(&g_stop, false);
	atomic_store(&g_reactors_running, 0);

	rc = krt_blocking_pool_start(g_opts.blocking_threads);
	if (rc != 0) {
		goto out_free_reactors;
	}
	if (g_opts.watchdog_ms != 0) {
		rc = krt_watchdog_start(g_opts.watchdog_ms);
		if (rc != 0) {
			goto out_free_reactors;
		}
	}
	free(cpus);
	g_reactors_init = true;
	g_reactors_started = false;
	return 0;

out_free_reactors:
	reactors_free_all();
out_fini_lib:
	keel_thread_lib_fini();
out_free_cpus:
	free(cpus);
	return rc;
}

static void reactors_wake_all(void)
{
	uint32_t count = keel_reactor_count();

	for (uint32_t i = 0; i < count; i++) {
		reactor_eventfd_write(g_reactors[i]->evfd);
	}
}

int keel_reactors_start(keel_msg_fn start_fn, void *arg)
{
	uint32_t count = keel_reactor_count();
	struct reactor *r0;
	struct keel_thread *main_thread;
	char saved_name[16] = "";
	cpu_set_t saved_set;
	bool saved_affinity;
	uint32_t started = 1;
	int rc = 0;

	if (!g_reactors_init || g_reactors_started || count == 0) {
		return -EINVAL;
	}
	g_reactors_started = true;
	r0 = g_reactors[0];
	pthread_getname_np(pthread_self(), saved_name, sizeof(saved_name));
	saved_affinity = pthread_getaffinity_np(pthread_self(), sizeof(saved_set), &saved_set) == 0;

	reactor_os_thread_setup(r0);
	atomic_fetch_add(&g_reactors_running, 1);
	for (uint32_t i = 1; i < count; i++) {
		rc = -pthread_create(&g_reactors[i]->pthread, NULL, reactor_os_thread_main,
				     g_reactors[i]);
		if (rc != 0) {
			KEEL_ERRLOG("reactor %u: cannot start its OS thread: %s", i, strerror(-rc));
			goto out_stop_started;
		}
		g_reactors[i]->pthread_started = true;
		started++;
	}
	while (atomic_load(&g_reactors_running) < count) {
		usleep(100);
	}

	main_thread = krt_thread_create("main", r0);
	if (main_thread == NULL) {
		rc = -ENOMEM;
		goto out_stop_started;
	}
	atomic_store(&g_main_thread, main_thread);
	if (start_fn != NULL) {
		rc = keel_thread_send_msg(main_thread, start_fn, arg);
		if (rc != 0) {
			goto out_stop_started;
		}
	}
	reactor_run(r0);
	goto out_join;

out_stop_started:
	keel_reactors_stop();
	reactor_run(r0); /* lets threads created so far on reactor 0 exit */
out_join:
	for (uint32_t i = 1; i < started; i++) {
		pthread_join(g_reactors[i]->pthread, NULL);
		g_reactors[i]->pthread_started = false;
	}
	atomic_store(&g_main_thread, NULL);
	tls_reactor = NULL;
	if (saved_name[0] != '\0') {
		pthread_setname_np(pthread_self(), saved_name);
	}
	if (saved_affinity) {
		pthread_setaffinity_np(pthread_self(), sizeof(saved_set), &saved_set);
	}
	return rc;
}

void keel_reactors_stop(void)
{
	/* Async-signal-safe: one atomic store and eventfd writes. */
	atomic_store(&g_stop, true);
	if (g_reactors != NULL) {
		reactors_wake_all();
	}
}

void keel_reactors_fini(void)
{
	if (!g_reactors_init) {
		return;
	}
	krt_watchdog_stop();
	keel_thread_lib_fini(); /* stops the blocking pool first */
	reactors_free_all();
	g_reactors_init = false;
	g_reactors_started = false;
}

/* ------------------------------------------------------------------------------ */
/* Modes and statistics                                                            */
/* ------------------------------------------------------------------------------ */

int keel_reactor_set_mode(uint32_t idx, enum keel_reactor_mode mode)
{
	uint32_t count = keel_reactor_count();

	if ((unsigned)mode > KEEL_REACTOR_MODE_INTERRUPT) {
		return -EINVAL;
	}
	if (idx != KEEL_REACTOR_ANY && idx >= count) {
		return -EINVAL;
	}
	for (uint32_t i = 0; i < count; i++) {
		if (idx != KEEL_REACTOR_ANY && i != idx) {
			continue;
		}
		atomic_store(&g_reactors[i]->mode, (int)mode);
		/* The reactor re-reads the mode after announcing sleep: same handshake. */
		reactor_notify(g_reactors[i]);
	}
	return 0;
}

enum keel_reactor_mode keel_reactor_get_mode(uint32_t idx)
{
	struct reactor *reactor = krt_reactor_get(idx);

	if (reactor == NULL) {
		return KEEL_REACTOR_MODE_ADAPTIVE;
	}
	return (enum keel_reactor_mode)atomic_load_explicit(&reactor->mode, memory_order_relaxed);
}

int keel_reactor_get_stats(uint32_t idx, struct keel_reactor_stats *stats)
{
	struct reactor *reactor = krt_reactor_get(idx);

	if (reactor == NULL || stats == NULL) {
		return -EINVAL;
	}
	memset(stats, 0, sizeof(*stats));
	stats->idx = reactor->idx;
	stats->cpu = reactor->cpu;
	stats->numa_node = reactor->numa_node;
	stats->tid = atomic_load_explicit(&reactor->tid, memory_order_relaxed);
	stats->mode = (enum keel_reactor_mode)atomic_load_explicit(&reactor->mode,
								   memory_order_relaxed);
	stats->sleeping = atomic_load_explicit(&reactor->sleeping, memory_order_relaxed) != 0;
	stats->busy_ns = atomic_load_explicit(&reactor->st_busy_ns, memory_order_relaxed);
	stats->idle_ns = atomic_load_explicit(&reactor->st_idle_ns, memory_order_relaxed);
	stats->sleep_ns = atomic_load_explicit(&reactor->st_sleep_ns, memory_order_relaxed);
	stats->loops = atomic_load_explicit(&reactor->st_loops, memory_order_relaxed);
	stats->wakeups = atomic_load_explicit(&reactor->st_wakeups, memory_order_relaxed);
	stats->wakeups_msg = atomic_load_explicit(&reactor->st_wake_msg, memory_order_relaxed);
	stats->wakeups_timer = atomic_load_explicit(&reactor->st_wake_timer, memory_order_relaxed);
	stats->wakeups_fd = atomic_load_explicit(&reactor->st_wake_fd, memory_order_relaxed);
	stats->wakeups_other = atomic_load_explicit(&reactor->st_wake_other, memory_order_relaxed);
	stats->fd_polls = atomic_load_explicit(&reactor->st_fd_polls, memory_order_relaxed);
	stats->fd_waiting = atomic_load_explicit(&reactor->fd_parked, memory_order_relaxed);
	stats->msgs = atomic_load_explicit(&reactor->st_msgs, memory_order_relaxed);
	stats->thread_count = atomic_load_explicit(&reactor->thread_count, memory_order_relaxed);
	return 0;
}
