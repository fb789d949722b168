/*
 * keel reactor framework: reactors, lightweight threads, messages, pollers,
 * I/O devices and channels, the blocking-work pool, statistics and memory pools.
 *
 * Model
 * -----
 * A reactor is one pinned OS thread (named "reactor_N") per CPU of the CPU list.
 * Reactor 0 is the main reactor and runs on the OS thread that called
 * keel_reactors_start(). A reactor runs any number of lightweight keel threads.
 * Every piece of state belongs to one keel thread; other threads reach it by
 * message only (keel_thread_send_msg, keel_for_each_channel, keel_for_each_thread).
 *
 * The thread layer (keel_thread_*, pollers, channels) also works without reactors:
 * keel_thread_lib_init() followed by keel_thread_create() on an unplaced thread, and
 * the embedder calls keel_thread_poll() itself. The deterministic test harness
 * (tests/common/ut_threads.h) runs several keel threads on one OS thread this way.
 *
 * Conventions
 * -----------
 * Every int return is 0 or a negative errno. Async calls take cb_fn, cb_arg last;
 * a 0 return means the callback runs exactly once, later, never inside the call; a
 * negative return means it never runs.
 */
#ifndef KEEL_REACTOR_H
#define KEEL_REACTOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_thread;
struct keel_poller;
struct keel_io_channel;
struct keel_io_channel_iter;
struct keel_mempool;
struct keel_mempool_cache;

/** Index meaning "no particular reactor": the framework picks (round robin). */
#define KEEL_REACTOR_ANY UINT32_MAX

/* ------------------------------------------------------------------------------ */
/* Reactors                                                                        */
/* ------------------------------------------------------------------------------ */

enum keel_reactor_mode {
	/** Poll while pollers report work, sleep in epoll after a short idle spin. */
	KEEL_REACTOR_MODE_ADAPTIVE = 0,
	/** Busy loop; never sleeps. Lowest latency, burns the core. */
	KEEL_REACTOR_MODE_POLL = 1,
	/** Sleep in epoll_wait whenever an iteration found no work. */
	KEEL_REACTOR_MODE_INTERRUPT = 2,
};

/** Parse "adaptive", "poll", "interrupt". \return 0 or -EINVAL. */
int keel_reactor_mode_parse(const char *name, enum keel_reactor_mode *mode);
/** Static name of a mode ("adaptive", ...). */
const char *keel_reactor_mode_name(enum keel_reactor_mode mode);

struct keel_reactor_opts {
	/** CPU list such as "0-3,6"; NULL means every online CPU. */
	const char *cpus;
	/** Initial mode of every reactor (default adaptive). */
	enum keel_reactor_mode mode;
	/** Watchdog threshold in milliseconds; 0 disables the watchdog (default 1000). */
	uint32_t watchdog_ms;
	/** Number of blocking-work pool threads (default 2). */
	uint32_t blocking_threads;
	/** Message ring entries per keel thread, a power of two (default 16384). */
	uint32_t msg_ring_size;
	/** Idle spin in adaptive mode before sleeping, in microseconds (default 200). */
	uint32_t adaptive_spin_us;
	/** Do not pin reactors to CPUs (tests on busy machines). Default false. */
	bool no_pin;
	/**
	 * Called on every reactor OS thread before its loop starts (e.g. prctl flags
	 * that must be set per OS thread). May be NULL.
	 */
	void (*reactor_thread_init)(uint32_t reactor_idx);
};

/** Fill \p opts with the defaults documented above. */
void keel_reactor_opts_init(struct keel_reactor_opts *opts);

/**
 * Parse a CPU list ("0-3,6") into a sorted, de-duplicated array.
 * \return number of CPUs (> 0), -EINVAL for a malformed list or a CPU that is not
 * online, -E2BIG if more than \p max CPUs are listed.
 */
int keel_cpulist_parse(const char *list, uint32_t *cpus, uint32_t max);

/**
 * Prepare the reactors (and the thread library, log, blocking pool and watchdog).
 * Must be called once, from the OS thread that will call keel_reactors_start().
 * \return 0, -EINVAL for bad options, -ENOMEM, -EALREADY if already initialised.
 */
int keel_reactors_init(const struct keel_reactor_opts *opts);

typedef void (*keel_msg_fn)(void *arg);

/**
 * Start every reactor. The calling OS thread becomes reactor 0. \p start_fn runs
 * once on a keel thread "main" of reactor 0 when all reactors run. Blocks until
 * keel_reactors_stop() was called and every reactor has exited.
 * \return 0 after a clean stop, or a negative errno if a reactor failed to start
 * (nothing keeps running in that case).
 */
int keel_reactors_start(keel_msg_fn start_fn, void *arg);

/**
 * Ask every reactor to exit. Every keel thread is asked to exit; threads that still
 * hold pollers or channels after a grace period (1 s) are named in a warning with
 * their pollers and destroyed anyway, so a leak never hangs the exit.
 * Callable from any OS thread (also a signal-safe flag write), any number of times.
 */
void keel_reactors_stop(void);

/** Release everything keel_reactors_init() set up. Call after start returned. */
void keel_reactors_fini(void);

/** Number of reactors (0 before init). */
uint32_t keel_reactor_count(void);
/** Index of the reactor running the caller, or KEEL_REACTOR_ANY when not on one. */
uint32_t keel_reactor_current(void);
/** CPU that reactor \p idx is pinned to. */
uint32_t keel_reactor_cpu(uint32_t idx);
/** The main keel thread of reactor 0 (exists once start_fn runs). */
struct keel_thread *keel_thread_get_main(void);

/**
 * Switch reactor \p idx (or all with KEEL_REACTOR_ANY) to \p mode at run time.
 * Takes effect at the reactor's next loop iteration; nothing in flight is lost.
 * Callable from any thread. \return 0 or -EINVAL for a bad index.
 */
int keel_reactor_set_mode(uint32_t idx, enum keel_reactor_mode mode);
enum keel_reactor_mode keel_reactor_get_mode(uint32_t idx);

struct keel_reactor_stats {
	uint32_t idx;
	uint32_t cpu;
	int numa_node;
	uint64_t tid; /**< Linux thread id of the reactor's OS thread */
	enum keel_reactor_mode mode;
	bool sleeping;
	uint64_t busy_ns;  /**< time in iterations where something did work */
	uint64_t idle_ns;  /**< time in idle iterations and sleeping */
	uint64_t sleep_ns; /**< the part of idle_ns spent asleep in epoll_wait */
	uint64_t loops;    /**< loop iterations */
	uint64_t wakeups;  /**< returns from a sleeping (blocking) epoll_wait */
	/* Reasons of those wake-ups; one wake-up may have several (the sum may exceed it). */
	uint64_t wakeups_msg;   /**< the eventfd: a message, a mode change, a stop, a thread */
	uint64_t wakeups_timer; /**< the timerfd: a poller's deadline */
	uint64_t wakeups_fd;    /**< a poller's fd (per poller: keel_poller_stats.wakeups) */
	uint64_t wakeups_other; /**< none of these (a bounded sleep while threads exit) */
	uint64_t fd_polls;      /**< non-blocking readiness checks made while awake */
	uint32_t fd_waiting;    /**< event pollers parked until their fd is ready */
	uint64_t msgs;          /**< messages handled by this reactor's threads */
	uint32_t thread_count;
};

/**
 * Read reactor statistics. Safe from any thread (counters are read atomically,
 * each counter is consistent on its own). \return 0 or -EINVAL.
 */
int keel_reactor_get_stats(uint32_t idx, struct keel_reactor_stats *stats);

/* ------------------------------------------------------------------------------ */
/* Watchdog                                                                        */
/* ------------------------------------------------------------------------------ */

/**
 * Called by the watchdog (a non-reactor pthread) when a reactor did not finish a
 * loop iteration within the threshold. \p thread_name and \p poller_name name what
 * was running (poller_name is "(message)" when a message handler was running).
 * Called once per stuck episode. The default handler logs a warning.
 */
typedef void (*keel_watchdog_fn)(uint32_t reactor_idx, const char *thread_name,
				 const char *poller_name, uint64_t stuck_ms, void *ctx);
/** Add a report hook (in addition to the warning). NULL removes it. */
void keel_watchdog_set_hook(keel_watchdog_fn fn, void *ctx);
/** Number of stuck reports so far (tests). */
uint64_t keel_watchdog_report_count(void);

/** Called on the watchdog thread each time every reactor proved it makes progress. */
typedef void (*keel_liveness_fn)(void *ctx);

/**
 * Liveness for an outside supervisor (systemd's WatchdogSec). Every \p period_us the
 * watchdog thread checks that each reactor finished a loop iteration since the
 * previous check, then wakes every reactor once, so that a sleeping reactor too must
 * show that it still wakes up and loops. When every reactor passed, fn(ctx) runs on
 * the watchdog thread (it must not block for long). A reactor stuck in one iteration,
 * or one that no longer wakes, stops the calls within two periods; so do reactors
 * that have not started yet or have stopped.
 *
 * Without a liveness hook the watchdog wakes no reactor: the proof costs a wake-up
 * per reactor per period only while it is asked for.
 *
 * Callable from any thread after keel_reactors_init(); \p fn NULL or \p period_us 0
 * turns it off (a call in progress may still finish). The hook lives until
 * keel_reactors_fini() or the next call.
 * \return 0; -EINVAL for a period below 10 ms; -ENOTSUP when the watchdog does not
 * run (keel_reactor_opts.watchdog_ms 0, or before keel_reactors_init()).
 */
int keel_watchdog_set_liveness(uint64_t period_us, keel_liveness_fn fn, void *ctx);

/* ------------------------------------------------------------------------------ */
/* Lightweight threads                                                             */
/* ------------------------------------------------------------------------------ */

/**
 * Create a keel thread on reactor \p reactor_idx (KEEL_REACTOR_ANY: round robin).
 * Without reactors (keel_thread_lib_init only) the thread is unplaced and the
 * embedder polls it with keel_thread_poll().
 * \return the thread, or NULL (bad index, out of memory). Callable from any thread.
 * Lifetime: until keel_thread_exit() completes or the reactors stop.
 */
struct keel_thread *keel_thread_create(const char *name, uint32_t reactor_idx);

/**
 * Create a keel thread on the first reactor whose CPU is in \p cpumask (bit N =
 * CPU N, CPUs >= 64 not addressable here). \return NULL if none matches.
 */
struct keel_thread *keel_thread_create_on_cpus(const char *name, uint64_t cpumask);

/** The keel thread running the caller, or NULL outside keel threads. */
struct keel_thread *keel_thread_get_current(void);

const char *keel_thread_get_name(const struct keel_thread *thread);
/** Unique id, monotonically increasing from 1. */
uint64_t keel_thread_get_id(const struct keel_thread *thread);
/** Reactor index of the thread, KEEL_REACTOR_ANY when unplaced. */
uint32_t keel_thread_get_reactor(const struct keel_thread *thread);

/**
 * Ask the thread to exit. Must be called on \p thread itself. The thread keeps
 * running its pollers and messages until every poller is unregistered and every
 * channel is put, then it is destroyed; after a grace period (1 s) leftovers are
 * named in a warning and the thread is destroyed anyway.
 */
void keel_thread_exit(struct keel_thread *thread);
bool keel_thread_is_exited(const struct keel_thread *thread);

/**
 * Queue fn(arg) to run on \p thread. Callable from any OS thread, including
 * non-reactor threads. FIFO per sending thread. Never blocks, never allocates on
 * the hot path (the message lives in a preallocated slot of the receiver's ring),
 * never aborts.
 *
 * \return 0: fn will run exactly once on \p thread.
 *         -ENOMEM: the receiver's ring is full. Nothing was queued. This is
 *           backpressure: the caller keeps the work and retries from its next
 *           completion, or uses keel_thread_send_msg_reliable().
 *         -ESHUTDOWN: \p thread has exited or is being destroyed.
 */
int keel_thread_send_msg(struct keel_thread *thread, keel_msg_fn fn, void *arg);

/**
 * Queue fn(arg) to run on \p thread, for a message that must not be lost to a full
 * ring (a completion, a fault, a teardown step). When the ring is full, the message
 * waits on the calling keel thread and its poll loop sends it again: the caller never
 * sleeps or spins, and its other work goes on meanwhile. The reliable messages of
 * one keel thread are sent in the order of the calls. Called off a keel thread (a
 * blocking-pool worker, a test's main), it waits in the call until the ring has room.
 *
 * \param drop_fn  NULL, or run with \p arg on the calling thread when \p thread
 *                 exits before a waiting message could be sent (then it releases
 *                 what the message held). The loss is logged either way.
 * \return 0: fn will run on \p thread, or drop_fn here if \p thread exits first.
 *         -ESHUTDOWN: \p thread has exited; nothing was queued, drop_fn is not run.
 * Aborts the process if it cannot allocate the 48 bytes a waiting message needs:
 * losing the message instead could lose data.
 */
int keel_thread_send_msg_reliable(struct keel_thread *thread, keel_msg_fn fn, void *arg,
				  keel_msg_fn drop_fn);

/* ------------------------------------------------------------------------------ */
/* Embedding and the deterministic harness                                         */
/* ------------------------------------------------------------------------------ */

/**
 * Initialise only the thread layer (no reactors), for tests and embedders.
 * \p msg_ring_size 0 means the default. \return 0, -EALREADY, -ENOMEM.
 */
int keel_thread_lib_init(uint32_t msg_ring_size);
void keel_thread_lib_fini(void);

/**
 * Run one iteration of \p thread on the calling OS thread: up to a batch of
 * messages, every active poller, every expired timed poller, every queued event
 * poller; destroys the thread if its exit completed. Sets keel_thread_get_current()
 * for the duration. Without a reactor there is no epoll: each call first checks the
 * fds of parked event pollers with poll(2) (no wait), so event pollers follow the same
 * rules as on a reactor, with readiness looked at once per call.
 * \return number of units of work done (0 = idle); a poller woken during the call
 * (it runs at the next call) counts as one, so "poll until 0" runs it.
 * Threading: only the embedder (the reactor, or the test harness) calls this; a
 * thread must never be polled by two OS threads at once.
 */
int keel_thread_poll(struct keel_thread *thread);

/** Make \p thread current on the calling OS thread (harness only). */
void keel_set_current_thread(struct keel_thread *thread);

/* ------------------------------------------------------------------------------ */
/* Pollers                                                                         */
/* ------------------------------------------------------------------------------ */

#define KEEL_POLLER_IDLE 0
#define KEEL_POLLER_BUSY 1

/** A poller returns KEEL_POLLER_BUSY when it did work, else KEEL_POLLER_IDLE. */
typedef int (*keel_poller_fn)(void *arg);

/*
 * Kinds of pollers, and what runs them
 * ------------------------------------
 * - Active (period 0, no fd): runs on every loop iteration of its thread. For work
 *   that has no fd and cannot say when it is due; keep such pollers rare, they keep
 *   an awake reactor busy checking.
 * - Timed (period > 0): runs at each deadline (keel_poller_register). The timer can be
 *   cancelled and re-armed (keel_poller_disarm, keel_poller_arm) so a poller whose
 *   deadline exists only some of the time costs nothing in between.
 * - Event (an fd tied with keel_poller_register_fd): runs when a reason exists: its
 *   fd is ready (level triggered), keel_poller_wake() was called, or its timer is due
 *   (a period, or a deadline set with keel_poller_arm). Once running it runs again on
 *   every iteration for as long as it returns KEEL_POLLER_BUSY (a busy socket costs no
 *   epoll round trip per request); the first KEEL_POLLER_IDLE parks it until the next
 *   reason. Parked pollers cost nothing per iteration.
 *   With a period as well, the period paces it: it runs at every deadline and, in
 *   between, once each time its fd is reported ready or it is woken; busy does not
 *   bring its next run forward (the daemon's RPC connections: prompt on a new
 *   request, a slice per millisecond for a long batch).
 *   Anything that gives an event poller work other than through its fd (a completion
 *   queueing a reply, an -ENOMEM retry list, a close request) must call
 *   keel_poller_wake(), or return BUSY while the work waits. A poller that cannot
 *   consume what makes its fd ready (e.g. it stopped reading at a high-water mark)
 *   must drop that event with keel_poller_modify_fd(), or it runs on every readiness
 *   check (level triggered).
 * - Wake-up fd (keel_poller_register_wakeup_fd): an active poller whose fd only wakes
 *   a sleeping reactor; it keeps running every iteration while the reactor is awake.
 *   For pollers whose own readiness check is cheaper than a syscall (a completion
 *   ring mapped in memory). The aio and uring bdevs no longer use it: they are event
 *   pollers on their thread's eventfd, so an idle reactor does not run them.
 *
 * An awake reactor learns of ready fds of parked event pollers from a non-blocking
 * epoll_wait: on every idle iteration, and at most every 20 us while iterations are
 * busy; a sleeping reactor from its blocking epoll_wait. Without a reactor
 * (keel_thread_poll by the harness or an embedder) each poll checks them with poll(2).
 *
 * Every pointer to a registered poller is valid on its owning thread until it is
 * unregistered; every call below except keel_poller_register must be made on that
 * thread, and all of them are safe from inside any poller callback of the thread
 * (including the poller's own).
 */

/**
 * Register a poller on the current keel thread. \p period_us 0 makes an active
 * poller; otherwise a timed poller that runs every period on a monotonic clock: the
 * next deadline is the previous deadline plus the period, so no drift accumulates (a
 * poller that fell more than a period behind skips to the next deadline in the future
 * rather than running a burst). The first deadline is one period from now.
 * In interrupt and adaptive modes a sleeping reactor wakes for the next deadline
 * (timerfd) and for fds registered with keel_poller_register_fd().
 * \return the poller, or NULL when not on a keel thread or out of memory.
 * \p name is copied (shown in statistics and watchdog reports).
 */
struct keel_poller *keel_poller_register(keel_poller_fn fn, void *arg, uint64_t period_us,
					 const char *name);

/**
 * Unregister and free the poller, set *ppoller = NULL. Must be called on the owning
 * thread; safe from inside the poller's own callback (the poller never runs again).
 * Its fd (if any) leaves epoll at once, so the caller may close it right after.
 * NULL or *ppoller == NULL is a no-op.
 */
void keel_poller_unregister(struct keel_poller **ppoller);

/**
 * Stop / restart running the poller. Owning thread only; safe from inside it. A paused
 * poller's fd leaves epoll, its wake-ups are ignored and its timer does not fire. On
 * resume a timed poller's period restarts from now, and an event poller runs once
 * (whatever happened while it was paused is looked at).
 */
void keel_poller_pause(struct keel_poller *poller);
void keel_poller_resume(struct keel_poller *poller);

/**
 * Make \p poller an event poller of \p fd's readiness (\p events: EPOLLIN, EPOLLOUT,
 * EPOLLRDHUP...; EPOLLERR and EPOLLHUP are always reported), level triggered. It runs
 * once at the next iteration (work queued at creation, such as a greeting to send,
 * needs no readiness), then by the rules above (a poller that also has a period
 * runs at each deadline, and busy does not make it run again before the next one).
 * One fd per poller; the fd stays owned by the caller, who must unregister the
 * poller before closing it. Owning thread only.
 * \return 0, -EINVAL for a negative fd, -EEXIST if the poller already has an fd,
 * -errno from epoll_ctl.
 */
int keel_poller_register_fd(struct keel_poller *poller, int fd, uint32_t events);

/**
 * Tie \p fd to \p poller only to wake its sleeping reactor (level triggered); the
 * poller keeps its kind (an active poller still runs on every iteration while the
 * reactor is awake). Same rules and errors as keel_poller_register_fd().
 */
int keel_poller_register_wakeup_fd(struct keel_poller *poller, int fd, uint32_t events);

/** Change the epoll events of the poller's fd. \return 0, -ENOENT without fd, -errno. */
int keel_poller_modify_fd(struct keel_poller *poller, uint32_t events);

/**
 * Give \p poller a reason to run at the next iteration of its thread: an event poller
 * is queued (then follows the rules above); a timed poller runs at the next iteration
 * and its period continues from there (as keel_poller_arm(poller, 0)); an active
 * poller runs anyway. Ignored for a paused poller. Owning thread only; never fails,
 * never allocates: cheap enough for every completion.
 */
void keel_poller_wake(struct keel_poller *poller);

/**
 * Set the poller's deadline to \p delay_us from now, replacing any earlier one. A
 * timed poller runs then and continues every period from that run. An event poller
 * runs once then (a one-shot timeout: a handshake deadline, a retry later), in
 * addition to its fd. Owning thread only; no allocation.
 * \return 0, or -EINVAL for an active poller (it runs on every iteration anyway).
 */
int keel_poller_arm(struct keel_poller *poller, uint64_t delay_us);

/**
 * Cancel the poller's deadline: a timed poller stops running until keel_poller_arm()
 * (or keel_poller_wake); an event poller keeps its fd. No-op when not armed.
 */
void keel_poller_disarm(struct keel_poller *poller);

struct keel_poller_stats {
	char name[64];
	uint64_t period_us;
	uint64_t run_count;
	uint64_t busy_count;
	uint64_t wakeups; /**< times it was a reason its sleeping reactor woke (fd or timer) */
	bool paused;
	uint32_t
		instances; /**< pollers summed in this entry (keel_thread_get_wakers groups by name) */
};

struct keel_thread_stats {
	char name[64];
	uint64_t id;
	uint32_t reactor;
	uint64_t busy_ns;
	uint64_t idle_ns;
	uint64_t msgs;
	uint64_t polls;
	uint32_t active_pollers;
	uint32_t timed_pollers;
	uint32_t paused_pollers;
	uint32_t io_channels;
};

/**
 * Statistics of the current thread and up to \p max_pollers of its pollers.
 * Must be called on \p thread (other threads read them by sending a message).
 * \return number of poller entries written.
 */
uint32_t keel_thread_get_stats(struct keel_thread *thread, struct keel_thread_stats *stats,
			       struct keel_poller_stats *pollers, uint32_t max_pollers);

/** Most entries keel_thread_get_wakers() returns. */
#define KEEL_THREAD_WAKERS_MAX 16

/**
 * The pollers of \p thread that woke its reactor most often (wakeups > 0), most
 * first, up to \p max_pollers (at most KEEL_THREAD_WAKERS_MAX). Pollers of the same
 * name are one entry, their counts summed and `instances` saying how many: many small
 * timers add up to a reason to wake. Only the first 64 distinct names are grouped.
 * Must be called on \p thread. \return number of entries written.
 */
uint32_t keel_thread_get_wakers(struct keel_thread *thread, struct keel_poller_stats *pollers,
				uint32_t max_pollers);

/* ------------------------------------------------------------------------------ */
/* I/O devices and channels                                                        */
/* ------------------------------------------------------------------------------ */

/** Create the per-thread context of \p io_device in \p ctx_buf. \return 0 or -errno. */
typedef int (*keel_io_channel_create_cb)(void *io_device, void *ctx_buf);
typedef void (*keel_io_channel_destroy_cb)(void *io_device, void *ctx_buf);
typedef void (*keel_io_device_unregister_cb)(void *io_device);

/**
 * Register any pointer as an io_device whose channels carry \p ctx_size bytes of
 * context. \p name is copied. Callable from any keel thread.
 * \return 0, -EEXIST if already registered, -ENOMEM.
 */
int keel_io_device_register(void *io_device, keel_io_channel_create_cb create_cb,
			    keel_io_channel_destroy_cb destroy_cb, uint32_t ctx_size,
			    const char *name);

/**
 * Unregister. New keel_get_io_channel() calls fail at once; \p unregister_cb (may be
 * NULL) runs on the calling thread once the last channel is destroyed and no
 * for_each_channel is in flight. Must be called on a keel thread.
 */
void keel_io_device_unregister(void *io_device, keel_io_device_unregister_cb unregister_cb);

/**
 * Get this thread's channel to \p io_device, creating it (create_cb on this thread)
 * on first use. Refcounted per thread: each get needs one put.
 * \return the channel, or NULL (not on a keel thread, unknown or unregistering
 * device, create_cb failed, out of memory).
 */
struct keel_io_channel *keel_get_io_channel(void *io_device);

/**
 * Drop one reference; at zero the channel is destroyed (destroy_cb on this thread)
 * from a message, so a get in the same iteration revives it. Owning thread only.
 */
void keel_put_io_channel(struct keel_io_channel *ch);

void *keel_io_channel_get_ctx(struct keel_io_channel *ch);
struct keel_io_channel *keel_io_channel_from_ctx(void *ctx);
struct keel_thread *keel_io_channel_get_thread(struct keel_io_channel *ch);
void *keel_io_channel_get_io_device(struct keel_io_channel *ch);

typedef void (*keel_channel_msg_fn)(struct keel_io_channel_iter *iter);
typedef void (*keel_channel_for_each_cpl)(struct keel_io_channel_iter *iter, int status);

/**
 * Visit every thread that holds a channel to \p io_device, one at a time, running
 * \p fn on that thread. \p fn must call keel_for_each_channel_continue() exactly
 * once (now or later, on that thread); a non-zero status stops the walk. Threads
 * whose channel went away before their turn are skipped. \p cpl then runs on the
 * calling thread with the last status. Must be called on a keel thread.
 * Message-ring backpressure is retried internally: the walk never loses a hop.
 */
void keel_for_each_channel(void *io_device, keel_channel_msg_fn fn, void *ctx,
			   keel_channel_for_each_cpl cpl);
void keel_for_each_channel_continue(struct keel_io_channel_iter *iter, int status);
void *keel_io_channel_iter_get_ctx(struct keel_io_channel_iter *iter);
struct keel_io_channel *keel_io_channel_iter_get_channel(struct keel_io_channel_iter *iter);
void *keel_io_channel_iter_get_io_device(struct keel_io_channel_iter *iter);

/**
 * Run \p fn(ctx) on every live keel thread, one at a time, then \p cpl(ctx) on the
 * calling thread. Must be called on a keel thread.
 */
void keel_for_each_thread(keel_msg_fn fn, void *ctx, keel_msg_fn cpl);

/* ------------------------------------------------------------------------------ */
/* Blocking-work pool                                                              */
/* ------------------------------------------------------------------------------ */

/** Runs on a pool pthread; may block. \return 0 or -errno, passed to done_cb. */
typedef int (*keel_blocking_fn)(void *arg);
typedef void (*keel_blocking_done_cb)(void *cb_arg, int rc);

/**
 * Run \p fn(arg) on a blocking-work pthread (fsync, fallocate, open, stat, ...),
 * then \p done_cb(cb_arg, rc) on the calling keel thread.
 * \return 0 (done_cb runs exactly once), -EINVAL when not called on a keel thread,
 * -ESHUTDOWN when the pool is stopped, -ENOMEM.
 * Without reactors (thread lib only) a pool is started lazily.
 */
int keel_spawn_blocking(keel_blocking_fn fn, void *arg, keel_blocking_done_cb done_cb,
			void *cb_arg);

/* ------------------------------------------------------------------------------ */
/* Time                                                                            */
/* ------------------------------------------------------------------------------ */

/** Monotonic nanoseconds (CLOCK_MONOTONIC). */
uint64_t keel_now_ns(void);

/**
 * Fast timestamp for timing intervals on the I/O path (latency statistics): the TSC
 * on x86-64, keel_now_ns() elsewhere. Only the difference of two readings means
 * anything; keel_ticks_to_ns() converts it. Unlike keel_now_ns() it is not driven by
 * the unit-test mock clock on x86-64. Any thread.
 */
static inline uint64_t keel_ticks(void)
{
#if defined(__x86_64__)
	return __builtin_ia32_rdtsc();
#else
	return keel_now_ns();
#endif
}

/**
 * Ticks per microsecond (1000 where ticks are nanoseconds). The first call measures
 * it against CLOCK_MONOTONIC, spinning for about 2 ms: make it at start-up (the bdev
 * layer does, when its first bdev registers), not on a reactor's hot path. Any thread;
 * the value never changes afterwards.
 */
double keel_ticks_per_us(void);

/** A difference of keel_ticks() readings, in nanoseconds. Any thread. */
uint64_t keel_ticks_to_ns(uint64_t ticks);

/* ------------------------------------------------------------------------------ */
/* Memory                                                                          */
/* ------------------------------------------------------------------------------ */

/**
 * NUMA node of reactor \p idx's CPU, or of the current reactor with
 * KEEL_REACTOR_ANY; -1 when unknown or libnuma is unavailable.
 */
int keel_reactor_numa_node(uint32_t idx);

/**
 * Allocate \p size bytes, cache-line aligned and zeroed, on \p numa_node (-1: the
 * current reactor's node, or anywhere). Free with keel_numa_free(ptr, size).
 * \return NULL on failure.
 */
void *keel_numa_zalloc(size_t size, int numa_node);
void keel_numa_free(void *ptr, size_t size);

/**
 * A pool of up to \p count fixed-size objects of \p elt_size bytes (cache-line
 * aligned) on \p numa_node (-1: anywhere). 16 objects are allocated at creation; the
 * first get that finds the pool dry doubles what it holds (up to \p count), so a pool
 * costs what its busiest moment needed. Growing never fails a get that other objects
 * can serve; when memory runs out the get sees an empty pool. Memory stays with the
 * pool until keel_mempool_free. The shared free list is taken under a spinlock in
 * batches; the hot path uses a keel_mempool_cache.
 * \return NULL on bad arguments or allocation failure. Callable from any thread.
 */
struct keel_mempool *keel_mempool_create(const char *name, uint32_t count, uint32_t elt_size,
					 int numa_node);
/** Free the pool. Every object must have been returned (a warning names the pool if not). */
void keel_mempool_free(struct keel_mempool *pool);
/** Take one object from the shared list. \return NULL when empty. Any thread. */
void *keel_mempool_get(struct keel_mempool *pool);
void keel_mempool_put(struct keel_mempool *pool, void *obj);
/** Objects a get could still have: the shared free list (excludes those held by
 * caches) plus those not allocated yet. */
uint32_t keel_mempool_count(const struct keel_mempool *pool);

/**
 * A per-thread cache in front of \p pool holding up to \p size objects; refills and
 * drains in batches of size/2, at most 16. Owned by one thread (typically inside a channel).
 * \return NULL on allocation failure.
 */
struct keel_mempool_cache *keel_mempool_cache_create(struct keel_mempool *pool, uint32_t size);
/** Return every cached object to the pool and free the cache. */
void keel_mempool_cache_free(struct keel_mempool_cache *cache);
/** \return an object, or NULL when the cache and the pool are empty. */
void *keel_mempool_cache_get(struct keel_mempool_cache *cache);
void keel_mempool_cache_put(struct keel_mempool_cache *cache, void *obj);

#ifdef __cplusplus
}
#endif

#endif /* KEEL_REACTOR_H */
