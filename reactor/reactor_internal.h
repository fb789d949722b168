/*
 * Private layouts and cross-file functions of the reactor library.
 * Not an API: only the reactor sources, the unit tests and the test harness include it.
 */
#ifndef KEEL_REACTOR_INTERNAL_H
#define KEEL_REACTOR_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include "keel/log.h"
#include "keel/reactor.h"
#include "keel/util.h"
#include "ring.h"

/* glibc's sys/queue.h lacks the _SAFE variant (BSD has it). */
#ifndef TAILQ_FOREACH_SAFE
#define TAILQ_FOREACH_SAFE(var, head, field, tvar)                                             \
	for ((var) = TAILQ_FIRST(head); (var) != NULL && ((tvar) = TAILQ_NEXT(var, field), 1); \
	     (var) = (tvar))
#endif

#define KEEL_CACHE_LINE 64
#define KEEL_NAME_MAX 64

/** Messages run per poll from each source (local FIFO, ring). */
#define THREAD_MSG_BATCH 32
#define THREAD_DEFAULT_RING_SIZE 16384
/** Grace period for a thread asked to exit before leftovers are torn down. */
#define THREAD_EXIT_GRACE_NS 1000000000ULL

static inline void keel_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ volatile("yield" ::: "memory");
#endif
}

/* ------------------------------------------------------------------------------ */
/* Time (clock.c)                                                                  */
/* ------------------------------------------------------------------------------ */

/** Raw CLOCK_MONOTONIC, whatever keel_now_ns() reads (used by reactors). */
uint64_t krt_clock_monotonic_ns(void);
/**
 * Test seam: the clock keel_now_ns() reads (and so timed pollers and
 * keel_thread_poll()), CLOCK_MONOTONIC unless a test installs its own: the
 * deterministic harness installs a clock it advances by hand, so timed pollers run
 * without sleeping. NULL puts CLOCK_MONOTONIC back. \p now must be callable from any
 * thread. Install and remove it while no keel thread runs on a reactor.
 */
typedef uint64_t (*krt_clock_fn)(void);
void krt_clock_set_source(krt_clock_fn now);

/* ------------------------------------------------------------------------------ */
/* Pollers (poller.c)                                                              */
/* ------------------------------------------------------------------------------ */

enum poller_state {
	POLLER_ACTIVE = 0,
	POLLER_PAUSED,
	POLLER_UNREGISTERED,
};

/** Which of the two fixed dispatch structures holds the poller (fixup-managed). */
enum poller_where {
	POLLER_IN_NONE = 0,
	POLLER_IN_ACTIVE,
	POLLER_IN_HEAP,
};

/** How the poller's fd (if any) schedules it. */
enum poller_fd_mode {
	POLLER_FD_NONE = 0,
	POLLER_FD_EVENT,  /* keel_poller_register_fd: runs when the fd is ready */
	POLLER_FD_WAKEUP, /* keel_poller_register_wakeup_fd: the fd only wakes the reactor */
};

struct keel_poller {
	/* Dispatch fields first: one cache line per poller on the hot loop. */
	keel_poller_fn fn;
	void *arg;
	uint64_t run_count;
	uint64_t busy_count;
	uint8_t state;     /* enum poller_state: what the owner asked for */
	uint8_t where;     /* enum poller_where: active array or timer heap */
	uint8_t fd_mode;   /* enum poller_fd_mode */
	bool queued;       /* in thread->runq: runs at the next pass over it */
	bool parked;       /* event poller waiting for its fd (counted in thread->parked) */
	bool armed;        /* has a deadline (periodic, or one-shot from keel_poller_arm) */
	bool timer_dirty;  /* armed or deadline changed: the fixup re-places the heap entry */
	bool period_start; /* deadline = one period after the fixup that places it */
	uint64_t deadline;
	uint64_t period_ns;
	uint64_t period_us;
	uint64_t wake_count; /* times it was a reason its sleeping reactor woke */
	struct keel_thread *thread;
	int fd;
	uint32_t fd_events;
	TAILQ_ENTRY(keel_poller) link; /* thread->pollers: every live poller */
	char name[KEEL_NAME_MAX];
};

/** Timed pollers live in a 4-ary min-heap whose entries carry the deadline inline. */
struct poller_heap_entry {
	uint64_t deadline;
	struct keel_poller *poller;
};

TAILQ_HEAD(poller_list, keel_poller);

/** Run active, expired timed and queued pollers. \return pollers that reported busy. */
int krt_poller_run_active(struct keel_thread *thread);
int krt_poller_run_timed(struct keel_thread *thread, uint64_t now);
int krt_poller_run_queued(struct keel_thread *thread);
/** Apply pause/resume/unregister/register/arm requests deferred during a poll. */
void krt_poller_fixup(struct keel_thread *thread, uint64_t now);
/** Earliest timed poller deadline of the thread, UINT64_MAX if none. */
uint64_t krt_poller_next_deadline(struct keel_thread *thread);
/** Free every poller of the thread (forced exit). */
void krt_poller_free_all(struct keel_thread *thread);
/**
 * The poller's fd was reported ready (epoll on a reactor, poll(2) without one): an
 * event poller is queued to run. Owner OS thread only.
 */
void krt_poller_fd_ready(struct keel_poller *poller);
/** Without a reactor: check the fds of parked event pollers with poll(2), no wait. */
void krt_poller_check_parked_fds(struct keel_thread *thread);

/* ------------------------------------------------------------------------------ */
/* Threads (thread.c)                                                              */
/* ------------------------------------------------------------------------------ */

enum thread_state {
	THREAD_RUNNING = 0,
	THREAD_EXITING,
	THREAD_EXITED,
};

struct local_msg {
	keel_msg_fn fn;
	void *arg;
};

/** Work a thread must retry from its poll loop (message ring back-pressure). */
struct thread_retry {
	void (*fn)(void *arg);
	void *arg;
	bool queued;
	TAILQ_ENTRY(thread_retry) link;
};
TAILQ_HEAD(thread_retry_list, thread_retry);

struct reactor;
struct keel_io_channel;
TAILQ_HEAD(io_channel_list, keel_io_channel);

struct keel_thread {
	/* Remote producers write ring.head; it sits on its own cache line. */
	struct msg_ring ring;

	/* Owner-only from here on. */
	_Alignas(KEEL_CACHE_LINE) struct local_msg *local_q;
	uint32_t local_mask;
	uint32_t local_head;
	uint32_t local_tail;
	bool local_closed;
	bool polling; /* inside keel_thread_poll: poller changes are deferred */
	bool dirty;   /* deferred poller changes wait for krt_poller_fixup() */

	struct keel_poller **active;
	uint32_t active_count;
	struct poller_heap_entry *heap;
	uint32_t heap_count;
	struct keel_poller **runq; /* event pollers to run: fd ready, woken, or still busy */
	uint32_t runq_count;
	uint32_t parked;     /* event pollers waiting for their fd */
	uint32_t poller_cap; /* capacity of active, heap and runq: >= poller_count */
	struct poller_list pollers;
	uint32_t poller_count;

	struct io_channel_list channels;
	uint32_t channel_count;
	uint32_t for_each_count;     /* iterations started here, not completed */
	uint32_t pending_unregister; /* io_device unregisters waiting to call back */
	uint32_t pending_blocking;   /* blocking jobs whose done_cb is outstanding */
	struct thread_retry_list retries;
	/* keel_thread_send_msg_reliable: messages waiting for room, in send order, and
	 * the retry that re-sends them from the poll loop (msg_reliable.c). */
	TAILQ_HEAD(, reliable_msg) reliable;
	struct thread_retry reliable_retry;

	uint64_t exit_start_ns;
	uint64_t last_ns;
	uint64_t busy_ns;
	uint64_t idle_ns;
	uint64_t msgs;
	uint64_t polls;

	/* Set at creation, read by other threads. */
	_Atomic int state;
	uint64_t id;
	struct reactor *reactor; /* NULL when unplaced */
	uint32_t reactor_idx;
	int numa_node;
	char name[KEEL_NAME_MAX];
	TAILQ_ENTRY(keel_thread) glink; /* g_threads, under the thread lib lock */
	TAILQ_ENTRY(keel_thread) rlink; /* reactor's list (owner reactor only) */
};

TAILQ_HEAD(keel_thread_list, keel_thread);

extern __thread struct keel_thread *krt_thread_tls_current;

/** Create a thread bound to \p reactor (may be NULL: unplaced). */
struct keel_thread *krt_thread_create(const char *name, struct reactor *reactor);
/**
 * One iteration of \p thread at time \p now. *destroyed tells whether the thread
 * finished exiting during this call: its rings and arrays are freed and the closed
 * struct is parked until keel_thread_lib_fini() (late senders get -ESHUTDOWN).
 */
int krt_thread_poll(struct keel_thread *thread, uint64_t now, bool *destroyed);
/** True when the thread has queued messages or work that must run before sleeping. */
bool krt_thread_has_pending(struct keel_thread *thread);
/** Request exit on behalf of the thread (reactor shutdown); runs as the thread. */
void krt_thread_request_exit(struct keel_thread *thread);
/** Queue \p retry on the current thread's retry list (message back-pressure). */
void krt_thread_retry_queue(struct thread_retry *retry);
/** Set up the waiting list of keel_thread_send_msg_reliable (msg_reliable.c). */
void krt_thread_reliable_init(struct keel_thread *thread);
/** Exit grace expired: drop (drop_fn or log) every message still waiting. */
void krt_thread_reliable_drop_all(struct keel_thread *thread);
/** Number of live threads (tests). */
uint32_t krt_thread_lib_thread_count(void);

/* ------------------------------------------------------------------------------ */
/* I/O channels (io_channel.c)                                                     */
/* ------------------------------------------------------------------------------ */

/** Forced teardown of every channel a thread still holds (exit grace expired). */
void krt_io_channel_thread_teardown(struct keel_thread *thread);
/** Name the channels a thread holds, into \p buf. */
void krt_io_channel_thread_describe(struct keel_thread *thread, char *buf, size_t len);
void krt_io_device_lib_fini(void);

/* ------------------------------------------------------------------------------ */
/* Reactors (reactor.c)                                                            */
/* ------------------------------------------------------------------------------ */

struct reactor {
	/* Cross-thread wake-up state, on its own line. */
	_Alignas(KEEL_CACHE_LINE) _Atomic int sleeping;
	_Atomic int notified;
	int evfd;

	/* Statistics and heartbeat: single writer (the reactor), any reader. */
	_Alignas(KEEL_CACHE_LINE) _Atomic uint64_t st_busy_ns;
	_Atomic uint64_t st_idle_ns;
	_Atomic uint64_t st_sleep_ns; /* part of idle spent in a blocking epoll_wait */
	_Atomic uint64_t st_loops;
	_Atomic uint64_t st_wakeups;
	_Atomic uint64_t st_wake_msg;   /* wake-ups with the eventfd (messages, mode, stop) */
	_Atomic uint64_t st_wake_timer; /* wake-ups with the timerfd */
	_Atomic uint64_t st_wake_fd;    /* wake-ups with at least one poller fd */
	_Atomic uint64_t st_wake_other; /* wake-ups with none of these (timeouts) */
	_Atomic uint64_t st_fd_polls;   /* non-blocking readiness checks while awake */
	_Atomic uint64_t st_msgs;
	_Atomic uint64_t hb_start_ns; /* start of the current iteration, 0 = asleep */
	_Atomic(const char *) hb_thread;
	_Atomic(const char *) hb_poller;
	_Atomic int wd_reading; /* watchdog is dereferencing hb_* names */

	/* Settings any thread may change. */
	_Alignas(KEEL_CACHE_LINE) _Atomic int mode;
	_Atomic uint32_t thread_count;
	_Atomic uint64_t tid;

	/* Threads handed over by other OS threads, adopted by the loop. */
	pthread_mutex_t incoming_lock;
	struct keel_thread_list incoming;
	_Atomic bool has_incoming;
	bool exited; /* under incoming_lock: no more adoptions */

	/* Reactor-private. */
	_Alignas(KEEL_CACHE_LINE) struct keel_thread_list threads;
	uint32_t idx;
	uint32_t cpu;
	int numa_node;
	int epfd;
	int tfd;
	uint64_t timer_armed; /* absolute deadline the timerfd is armed for, UINT64_MAX = none */
	_Atomic uint32_t fd_parked; /* event pollers of its threads waiting for their fd */
	pthread_t pthread;
	bool pthread_started;
	int start_rc;
};

/** Reactor for index, NULL if out of range. */
struct reactor *krt_reactor_get(uint32_t idx);
/** Hand a new thread to its reactor (any thread). \return 0 or -ESHUTDOWN. */
int krt_reactor_add_thread(struct reactor *reactor, struct keel_thread *thread);
/** Wake the reactor if it sleeps; called after a message was queued. */
void krt_reactor_notify_slow(struct reactor *reactor);
/** Make the reactor run one more loop iteration soon, asleep or not (watchdog). */
void krt_reactor_poke(struct reactor *reactor);
/** Loop iterations the reactor finished so far (any thread). */
uint64_t krt_reactor_loops(struct reactor *reactor);
static inline void reactor_notify(struct reactor *reactor)
{
	/* seq_cst load: pairs with the reactor's seq_cst store of sleeping. */
	if (keel_unlikely(atomic_load(&reactor->sleeping))) {
		krt_reactor_notify_slow(reactor);
	}
}
/** Count event pollers that park (+1) or leave parking (-1). Reactor OS thread only. */
static inline void reactor_fd_parked_add(struct reactor *reactor, int delta)
{
	/* Single writer: a plain load and store, no locked instruction. */
	uint32_t v = atomic_load_explicit(&reactor->fd_parked, memory_order_relaxed);

	atomic_store_explicit(&reactor->fd_parked, v + (uint32_t)delta, memory_order_relaxed);
}
/** Heartbeat names: set what runs now (relaxed-cost release stores). */
static inline void reactor_hb_set(struct reactor *reactor, const char *thread, const char *poller)
{
	atomic_store_explicit(&reactor->hb_thread, thread, memory_order_release);
	atomic_store_explicit(&reactor->hb_poller, poller, memory_order_release);
}
/**
 * Clear the heartbeat names and wait until the watchdog no longer reads them:
 * called before freeing a poller or thread whose name may be published.
 */
void krt_reactor_hb_quiesce(struct reactor *reactor);
int krt_reactor_epoll_add(struct reactor *reactor, int fd, uint32_t events,
			  struct keel_poller *poller);
int krt_reactor_epoll_mod(struct reactor *reactor, int fd, uint32_t events,
			  struct keel_poller *poller);
void krt_reactor_epoll_del(struct reactor *reactor, int fd);

extern const char krt_reactor_msg_name[]; /* "(message)" */

/* ------------------------------------------------------------------------------ */
/* Watchdog, blocking pool, NUMA, log                                              */
/* ------------------------------------------------------------------------------ */

int krt_watchdog_start(uint32_t threshold_ms);
void krt_watchdog_stop(void);

int krt_blocking_pool_start(uint32_t nthreads);
void krt_blocking_pool_stop(void);

int krt_numa_node_of_cpu_safe(uint32_t cpu);
/** Online CPUs in ascending order. \return count or -ENODEV. */
int krt_cpulist_online(uint32_t *cpus, uint32_t max);

/** Current thread's display name for logs (keel thread name or OS thread name). */
void krt_log_thread_name(char *buf, size_t len);

#endif /* KEEL_REACTOR_INTERNAL_H */
