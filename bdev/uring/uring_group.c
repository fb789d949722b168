/*
 * uring bdev: one io_uring per keel thread, shared by every uring bdev channel of that
 * thread (see uring_group.h for the contract).
 *
 * The group is the channel of a module-wide io_device, so the io_channel machinery
 * gives "one per thread, created on first use, released with the last user" for free.
 *
 * Completions are taken from the mapped completion ring (no syscall). The ring's
 * eventfd wakes a sleeping reactor; the kernel signals it once per batch of posted
 * completions, and the poller reads it (one syscall) only when it goes idle after
 * having reaped something, then looks at the ring once more: a completion posted
 * between the last reap and that read is never slept through.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

#include "keel/log.h"
#include "keel/reactor.h"

#include "uring_group.h"

/* Completions taken per pass; bounds the stack array. A poll makes up to four passes. */
#define URING_REAP_BATCH 128
#define URING_REAP_PASSES 4
/* Largest registered-file table per ring: slots beyond it use the plain fd. */
#define URING_MAX_FILE_SLOTS 4096u
#define URING_MIN_FILE_SLOTS 64u
#define URING_MAX_SQ_ENTRIES 4096u
#define URING_MAX_CQ_ENTRIES 65536u

struct uring_group {
	struct io_uring ring;
	int efd;
	struct keel_poller *poller;
	struct keel_thread *thread;
	uint32_t depth_cap;          /* completion ring entries: most requests held at once */
	uint32_t inflight;           /* placed in the ring, completion not yet reaped */
	uint64_t reaped_since_drain; /* completions that may have left counts in the eventfd */
	bool in_poll;                /* the poller runs: it submits at its end */
	bool flush_scheduled;        /* a message to this thread will submit */
	bool dead;                   /* destroyed while that message was queued: it frees */
	bool enter_error_logged;
	TAILQ_HEAD(, keel_bdev_io) waiting; /* no room in the ring yet: FIFO across bdevs */
	uint32_t file_slots;                /* registered-file table size (0: none) */
	uint64_t *slot_used;                /* bitmap of file_slots bits */
	TAILQ_ENTRY(uring_group) link;
};

/* The io_device whose per-thread channel is the thread's group. */
static char g_uring_groups;
static bool g_groups_registered;

static pthread_mutex_t g_groups_lock = PTHREAD_MUTEX_INITIALIZER;
static TAILQ_HEAD(, uring_group) g_groups = TAILQ_HEAD_INITIALIZER(g_groups);

/* Knobs (bdev_uring_internal.h), read when a ring is created. */
static uint32_t g_sq_entries = BDEV_URING_DEFAULT_SQ_ENTRIES;
static uint32_t g_cq_entries = BDEV_URING_DEFAULT_CQ_ENTRIES;
static bool g_register_files = true;
static enum bdev_uring_taskrun g_taskrun = BDEV_URING_TASKRUN_DEFAULT;
static bdev_uring_ring_init_fn g_ring_init; /* NULL: io_uring_queue_init_params */

/* The availability probe's answer, made once (bdev_uring_probe). */
static pthread_mutex_t g_probe_lock = PTHREAD_MUTEX_INITIALIZER;
static bool g_probed;
static int g_probe_rc;
static char g_probe_why[200];

static struct bdev_uring_module_stats g_stats; /* relaxed atomics */

static inline void uring_stat_add(uint64_t *counter, uint64_t n)
{
	__atomic_fetch_add(counter, n, __ATOMIC_RELAXED);
}

static inline void uring_stat_add32(uint32_t *counter, int32_t n)
{
	__atomic_fetch_add(counter, (uint32_t)n, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------------------ */
/* Setting up a ring, and saying why it could not be                               */
/* ------------------------------------------------------------------------------ */

static int uring_queue_init_call(unsigned entries, struct io_uring *ring, struct io_uring_params *p)
{
	bdev_uring_ring_init_fn fn = __atomic_load_n(&g_ring_init, __ATOMIC_ACQUIRE);

	return fn != NULL ? fn(entries, ring, p) : io_uring_queue_init_params(entries, ring, p);
}

/*
 * Ring flags, best first; a kernel that does not know one answers EINVAL and the next
 * set is tried.
 *  - SUBMIT_ALL (5.18): a request the kernel refuses at submission still gets its CQE
 *    and the rest of the batch goes on; without it the flush submits the rest on its
 *    next call.
 *  - How completions that need the submitting task (most: the CQE is posted from task
 *    work) reach it. By default the kernel interrupts the reactor with an IPI for each
 *    batch; under a hypervisor that is a VM exit. COOP_TASKRUN (5.19) does without: the
 *    work runs at the reactor's next syscall, and TASKRUN_FLAG tells the poller when it
 *    should make one (io_uring_get_events) because nothing else will. DEFER_TASKRUN
 *    (6.1, with SINGLE_ISSUER: only the ring's own thread submits, which holds for a
 *    ring per keel thread) runs it only when asked, in one batch.
 */
static int uring_ring_init(struct io_uring *ring, uint32_t sq_entries, uint32_t cq_entries)
{
	const uint32_t base = IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL;
	const uint32_t coop = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
	const uint32_t defer = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
			       IORING_SETUP_TASKRUN_FLAG;
	uint32_t tries[4];
	struct io_uring_params p;
	size_t n = 0, i;
	int rc = -EINVAL;

	switch (__atomic_load_n(&g_taskrun, __ATOMIC_RELAXED)) {
	case BDEV_URING_TASKRUN_DEFER:
		tries[n++] = base | defer;
		/* fall through */
	case BDEV_URING_TASKRUN_COOP:
		tries[n++] = base | coop;
		/* fall through */
	case BDEV_URING_TASKRUN_IPI:
		break;
	}
	tries[n++] = base;
	tries[n++] = IORING_SETUP_CQSIZE;
	for (i = 0; i < n && rc == -EINVAL; i++) {
		memset(&p, 0, sizeof(p));
		p.flags = tries[i];
		p.cq_entries = cq_entries;
		rc = uring_queue_init_call(sq_entries, ring, &p);
	}
	return rc;
}

/* Completions wait as task work that only a syscall of ours will run. */
static inline bool uring_taskrun_pending(const struct io_uring *ring)
{
	return (ring->flags & IORING_SETUP_TASKRUN_FLAG) &&
	       (IO_URING_READ_ONCE(*ring->sq.kflags) & IORING_SQ_TASKRUN);
}

/* What /proc/sys/kernel/io_uring_disabled says (-1: absent, before Linux 6.6). */
static int uring_sysctl_disabled(void)
{
	char buf[8] = "";
	int fd = open("/proc/sys/kernel/io_uring_disabled", O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0) {
		return -1;
	}
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	return n > 0 ? atoi(buf) : -1;
}

static void uring_explain(int rc, char *why, size_t len)
{
	switch (rc) {
	case -ENOSYS:
		snprintf(why, len,
			 "io_uring_setup is not available (ENOSYS): the kernel was "
			 "built without io_uring or a seccomp filter hides it");
		break;
	case -EPERM:
		switch (uring_sysctl_disabled()) {
		case 2:
			snprintf(why, len,
				 "io_uring is disabled by sysctl kernel.io_uring_disabled=2");
			break;
		case 1:
			snprintf(why, len,
				 "sysctl kernel.io_uring_disabled=1 allows io_uring only to "
				 "root and the group in kernel.io_uring_group");
			break;
		default:
			snprintf(why, len,
				 "the kernel refused io_uring_setup (EPERM): a seccomp "
				 "filter (e.g. a container runtime's default profile) or a "
				 "security module forbids it");
			break;
		}
		break;
	case -ENOMEM:
		snprintf(why, len,
			 "no memory for the ring (ENOMEM; on kernels before 5.12 "
			 "raise the locked-memory limit, ulimit -l)");
		break;
	case -EMFILE:
	case -ENFILE:
		snprintf(why, len, "out of file descriptors for the ring (%s)", strerror(-rc));
		break;
	default:
		snprintf(why, len, "io_uring_setup failed: %s", strerror(-rc));
		break;
	}
}

static const struct {
	int op;
	const char *name;
} g_needed_ops[] = {
	{IORING_OP_READ, "READ"},   {IORING_OP_WRITE, "WRITE"},
	{IORING_OP_READV, "READV"}, {IORING_OP_WRITEV, "WRITEV"},
	{IORING_OP_FSYNC, "FSYNC"}, {IORING_OP_FALLOCATE, "FALLOCATE"},
};

static int uring_probe_now(char *why, size_t len)
{
	struct io_uring_probe *probe;
	struct io_uring ring;
	struct io_uring_params p;
	size_t i;
	int rc;

	memset(&p, 0, sizeof(p));
	rc = uring_queue_init_call(4, &ring, &p);
	if (rc < 0) {
		uring_explain(rc, why, len);
		return rc;
	}
	probe = io_uring_get_probe_ring(&ring);
	if (probe == NULL) {
		snprintf(why, len,
			 "the kernel cannot list its io_uring opcodes (Linux 5.6 or "
			 "newer is needed)");
		rc = -ENOTSUP;
		goto out_exit_ring;
	}
	for (i = 0; i < sizeof(g_needed_ops) / sizeof(g_needed_ops[0]); i++) {
		if (!io_uring_opcode_supported(probe, g_needed_ops[i].op)) {
			snprintf(why, len,
				 "the kernel lacks IORING_OP_%s (Linux 5.6 or newer is "
				 "needed)",
				 g_needed_ops[i].name);
			rc = -ENOTSUP;
			break;
		}
	}
	io_uring_free_probe(probe);
out_exit_ring:
	io_uring_queue_exit(&ring);
	return rc;
}

/*
 * The first probe decides for the life of the process (module start makes it), so a
 * later caller, an RPC error path on a reactor included, gets the answer without a
 * syscall. A changed sysctl takes a restart.
 */
int bdev_uring_probe(char *why, size_t len)
{
	int rc;

	pthread_mutex_lock(&g_probe_lock);
	if (!g_probed) {
		g_probe_rc = uring_probe_now(g_probe_why, sizeof(g_probe_why));
		if (g_probe_rc == 0) {
			g_probe_why[0] = '\0';
		}
		g_probed = true;
	}
	rc = g_probe_rc;
	if (len > 0) {
		snprintf(why, len, "%s", g_probe_why);
	}
	pthread_mutex_unlock(&g_probe_lock);
	return rc;
}

/* ------------------------------------------------------------------------------ */
/* Submission                                                                      */
/* ------------------------------------------------------------------------------ */

/* Copy \p io's SQE into the ring. \return false when the ring has no room. */
static bool uring_group_place(struct uring_group *g, struct keel_bdev_io *io)
{
	struct uring_req *req = keel_bdev_io_get_ctx(io);
	struct uring_queue *q = req->queue;
	struct io_uring_sqe *sqe;

	if (g->inflight >= g->depth_cap) {
		return false;
	}
	sqe = io_uring_get_sqe(&g->ring);
	if (sqe == NULL) {
		return false;
	}
	*sqe = req->sqe;
	if (q->file_slot >= 0) {
		sqe->fd = q->file_slot;
		sqe->flags |= IOSQE_FIXED_FILE;
		__atomic_fetch_add(&q->counters->fixed_file_sqes, 1, __ATOMIC_RELAXED);
	}
	io_uring_sqe_set_data(sqe, io);
	g->inflight++;
	__atomic_fetch_add(&q->counters->sqes, 1, __ATOMIC_RELAXED);
	return true;
}

static void uring_group_place_waiting(struct uring_group *g)
{
	struct keel_bdev_io *io;

	while ((io = TAILQ_FIRST(&g->waiting)) != NULL && uring_group_place(g, io)) {
		TAILQ_REMOVE(&g->waiting, io, module_link);
	}
}

/*
 * Give the kernel everything placed, and what waited while there is room.
 * \return requests submitted.
 */
static int uring_group_flush(struct uring_group *g)
{
	int submitted = 0, rc;

	for (;;) {
		uring_group_place_waiting(g);
		if (io_uring_sq_ready(&g->ring) == 0) {
			break;
		}
		rc = io_uring_submit(&g->ring);
		if (rc <= 0) {
			/*
			 * EAGAIN/EBUSY/EINTR: the kernel is short of something for now; the
			 * requests stay in the ring and the next flush retries. Anything else
			 * is logged once: the ring is unusable and the requests wait.
			 */
			if (rc < 0 && rc != -EAGAIN && rc != -EBUSY && rc != -EINTR &&
			    !g->enter_error_logged) {
				g->enter_error_logged = true;
				KEEL_ERRLOG(
					"uring: thread %s: io_uring_enter failed: %s; %u requests "
					"wait",
					keel_thread_get_name(g->thread), strerror(-rc),
					io_uring_sq_ready(&g->ring));
			}
			break;
		}
		uring_stat_add(&g_stats.enter_calls, 1);
		uring_stat_add(&g_stats.sqes, (uint64_t)rc);
		submitted += rc;
		if (TAILQ_EMPTY(&g->waiting)) {
			break;
		}
	}
	return submitted;
}

static void uring_group_schedule_flush(struct uring_group *g);

/* A request was pushed outside the poller: submit everything pushed since. */
static void uring_group_flush_msg(void *arg)
{
	struct uring_group *g = arg;

	g->flush_scheduled = false;
	if (g->dead) {
		free(g);
		return;
	}
	uring_group_flush(g);
	/* The kernel took nothing (a transient refusal): try again with the next message. */
	if (io_uring_sq_ready(&g->ring) > 0) {
		uring_group_schedule_flush(g);
	}
}

static void uring_group_schedule_flush(struct uring_group *g)
{
	if (g->in_poll || g->flush_scheduled) {
		return;
	}
	/* A message to our own thread is a plain FIFO slot: no syscall, no allocation. */
	if (keel_thread_send_msg(g->thread, uring_group_flush_msg, g) == 0) {
		g->flush_scheduled = true;
		return;
	}
	/* The thread's queue is full or closing: submit now rather than lose the batch. */
	uring_group_flush(g);
}

void bdev_uring_queue_push(struct uring_queue *q, struct keel_bdev_io *io)
{
	struct uring_group *g = q->group;
	struct uring_req *req = keel_bdev_io_get_ctx(io);

	req->queue = q;
	q->inflight++;
	if (!TAILQ_EMPTY(&g->waiting) || !uring_group_place(g, io)) {
		TAILQ_INSERT_TAIL(&g->waiting, io, module_link);
		__atomic_fetch_add(&q->counters->waited, 1, __ATOMIC_RELAXED);
	}
	uring_group_schedule_flush(g);
}

/* ------------------------------------------------------------------------------ */
/* Completion                                                                      */
/* ------------------------------------------------------------------------------ */

static int uring_group_reap(struct uring_group *g)
{
	struct {
		struct keel_bdev_io *io;
		int res;
	} done[URING_REAP_BATCH];
	struct io_uring_cqe *cqe;
	unsigned head;
	int n, i, total = 0, pass;

	if (io_uring_cq_ready(&g->ring) == 0 && uring_taskrun_pending(&g->ring)) {
		io_uring_get_events(&g->ring);
		uring_stat_add(&g_stats.getevents_calls, 1);
	}
	for (pass = 0; pass < URING_REAP_PASSES; pass++) {
		n = 0;
		io_uring_for_each_cqe(&g->ring, head, cqe)
		{
			done[n].io = io_uring_cqe_get_data(cqe);
			done[n].res = cqe->res;
			if (++n == URING_REAP_BATCH) {
				break;
			}
		}
		if (n == 0) {
			break;
		}
		/* Copied out first: the callbacks below may fill the ring again. */
		io_uring_cq_advance(&g->ring, (unsigned)n);
		g->inflight -= (uint32_t)n;
		for (i = 0; i < n; i++) {
			struct uring_req *req = keel_bdev_io_get_ctx(done[i].io);
			struct uring_queue *q = req->queue;

			q->inflight--;
			__atomic_fetch_add(&q->counters->cqes, 1, __ATOMIC_RELAXED);
			bdev_uring_cqe(done[i].io, done[i].res);
		}
		total += n;
		if (n < URING_REAP_BATCH) {
			break;
		}
	}
	g->reaped_since_drain += (uint64_t)total;
	return total;
}

/*
 * Going idle after having reaped: read the eventfd so it does not wake a sleeping
 * reactor for completions already taken. \return true when a completion arrived
 * meanwhile (its signal may have been consumed by the read: take it now).
 */
static bool uring_group_drain_eventfd(struct uring_group *g)
{
	uint64_t count;
	ssize_t n;

	n = read(g->efd, &count, sizeof(count));
	(void)n; /* EAGAIN: nothing was counted */
	uring_stat_add(&g_stats.eventfd_reads, 1);
	g->reaped_since_drain = 0;
	return io_uring_cq_ready(&g->ring) > 0 || uring_taskrun_pending(&g->ring);
}

static int uring_group_poll(void *arg)
{
	struct uring_group *g = arg;
	int reaped, submitted;

	g->in_poll = true;
	reaped = uring_group_reap(g);
	/* Requests the callbacks pushed, and earlier pushes of this iteration, go now. */
	submitted = uring_group_flush(g);
	g->in_poll = false;
	if (reaped + submitted > 0 || io_uring_sq_ready(&g->ring) > 0 ||
	    (!TAILQ_EMPTY(&g->waiting) && g->inflight < g->depth_cap)) {
		return KEEL_POLLER_BUSY;
	}
	if (g->reaped_since_drain > 0 && uring_group_drain_eventfd(g)) {
		return KEEL_POLLER_BUSY;
	}
	return KEEL_POLLER_IDLE;
}

/* ------------------------------------------------------------------------------ */
/* Registered files                                                                */
/* ------------------------------------------------------------------------------ */

/*
 * A sparse table the size of the fd limit (at most URING_MAX_FILE_SLOTS): each bdev
 * channel of the thread takes a slot. Without a table, or when it is full, requests
 * use the plain fd; nothing fails for it.
 */
static void uring_group_files_init(struct uring_group *g)
{
	uint32_t n = URING_MAX_FILE_SLOTS;
	struct rlimit rl;

	if (!__atomic_load_n(&g_register_files, __ATOMIC_RELAXED)) {
		return;
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < n) {
		n = (uint32_t)rl.rlim_cur & ~(URING_MIN_FILE_SLOTS - 1);
	}
	while (n >= URING_MIN_FILE_SLOTS && io_uring_register_files_sparse(&g->ring, n) != 0) {
		n /= 2;
	}
	if (n < URING_MIN_FILE_SLOTS) {
		return;
	}
	g->slot_used = calloc(n / 64, sizeof(uint64_t));
	if (g->slot_used == NULL) {
		io_uring_unregister_files(&g->ring);
		return;
	}
	g->file_slots = n;
}

static void uring_queue_register_file(struct uring_queue *q, int fd)
{
	struct uring_group *g = q->group;
	uint32_t w, slot;

	for (w = 0; w < g->file_slots / 64; w++) {
		if (g->slot_used[w] != UINT64_MAX) {
			break;
		}
	}
	if (w == g->file_slots / 64) {
		return;
	}
	slot = w * 64 + (uint32_t)__builtin_ctzll(~g->slot_used[w]);
	if (io_uring_register_files_update(&g->ring, slot, &fd, 1) != 1) {
		return;
	}
	g->slot_used[w] |= 1ull << (slot % 64);
	q->file_slot = (int)slot;
	uring_stat_add32(&g_stats.registered_files, 1);
}

static void uring_queue_unregister_file(struct uring_queue *q)
{
	struct uring_group *g = q->group;
	uint32_t slot = (uint32_t)q->file_slot;
	int none = -1;

	if (q->file_slot < 0) {
		return;
	}
	/* Drops the ring's reference on the file, so a delete really closes it. */
	io_uring_register_files_update(&g->ring, slot, &none, 1);
	g->slot_used[slot / 64] &= ~(1ull << (slot % 64));
	q->file_slot = -1;
	uring_stat_add32(&g_stats.registered_files, -1);
}

/* ------------------------------------------------------------------------------ */
/* Groups: the per-thread channels of g_uring_groups                               */
/* ------------------------------------------------------------------------------ */

static int uring_group_create(void *io_device, void *ctx_buf)
{
	struct uring_group **slot = ctx_buf;
	struct keel_thread *thread = keel_thread_get_current();
	char name[80], why[200];
	struct uring_group *g;
	int rc;

	g = calloc(1, sizeof(*g));
	if (g == NULL) {
		return -ENOMEM;
	}
	g->thread = thread;
	g->efd = -1;
	TAILQ_INIT(&g->waiting);
	rc = uring_ring_init(&g->ring, __atomic_load_n(&g_sq_entries, __ATOMIC_RELAXED),
			     __atomic_load_n(&g_cq_entries, __ATOMIC_RELAXED));
	if (rc < 0) {
		uring_explain(rc, why, sizeof(why));
		KEEL_ERRLOG("uring: thread %s cannot set up its io_uring: %s",
			    keel_thread_get_name(thread), why);
		free(g);
		return rc;
	}
	g->depth_cap = g->ring.cq.ring_entries;
	g->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (g->efd < 0) {
		rc = -errno;
		KEEL_ERRLOG("uring: thread %s: eventfd: %s", keel_thread_get_name(thread),
			    strerror(-rc));
		goto out_exit_ring;
	}
	rc = io_uring_register_eventfd(&g->ring, g->efd);
	if (rc < 0) {
		KEEL_ERRLOG("uring: thread %s: cannot register the completion eventfd: %s",
			    keel_thread_get_name(thread), strerror(-rc));
		goto out_close_efd;
	}
	uring_group_files_init(g);
	snprintf(name, sizeof(name), "uring:%s", keel_thread_get_name(thread));
	g->poller = keel_poller_register(uring_group_poll, g, 0, name);
	if (g->poller == NULL) {
		rc = -ENOMEM;
		goto out_free_slots;
	}
	rc = keel_poller_register_fd(g->poller, g->efd, EPOLLIN);
	if (rc != 0) {
		KEEL_ERRLOG("uring: thread %s: cannot watch the completion eventfd: %s",
			    keel_thread_get_name(thread), strerror(-rc));
		goto out_unregister_poller;
	}
	pthread_mutex_lock(&g_groups_lock);
	TAILQ_INSERT_TAIL(&g_groups, g, link);
	pthread_mutex_unlock(&g_groups_lock);
	uring_stat_add32(&g_stats.rings, 1);
	KEEL_DEBUGLOG("uring: thread %s: ring of %u/%u entries, %u registered-file slots",
		      keel_thread_get_name(thread), g->ring.sq.ring_entries, g->depth_cap,
		      g->file_slots);
	*slot = g;
	return 0;

out_unregister_poller:
	keel_poller_unregister(&g->poller);
out_free_slots:
	free(g->slot_used);
out_close_efd:
	close(g->efd);
out_exit_ring:
	io_uring_queue_exit(&g->ring);
	free(g);
	return rc;
}

static void uring_group_destroy(void *io_device, void *ctx_buf)
{
	struct uring_group *g = *(struct uring_group **)ctx_buf;

	if (g->inflight != 0 || !TAILQ_EMPTY(&g->waiting)) {
		KEEL_ERRLOG("uring: thread %s: ring closed with %u requests in flight",
			    keel_thread_get_name(g->thread), g->inflight);
	}
	pthread_mutex_lock(&g_groups_lock);
	TAILQ_REMOVE(&g_groups, g, link);
	pthread_mutex_unlock(&g_groups_lock);
	uring_stat_add32(&g_stats.rings, -1);
	keel_poller_unregister(&g->poller);
	/*
	 * Closing the ring fd does not wait: the kernel cancels and frees the ring from a
	 * workqueue. So this may run on the reactor.
	 */
	io_uring_queue_exit(&g->ring);
	close(g->efd);
	free(g->slot_used);
	if (g->flush_scheduled) {
		g->dead = true; /* the queued flush message frees it */
	} else {
		free(g);
	}
}

int bdev_uring_queue_init(struct uring_queue *q, int fd, struct bdev_uring_counters *counters,
			  const char *name)
{
	memset(q, 0, sizeof(*q));
	q->file_slot = -1;
	q->counters = counters;
	if (!g_groups_registered) {
		KEEL_ERRLOG("uring bdev %s: the uring module is not initialised", name);
		return -ENODEV;
	}
	q->group_ch = keel_get_io_channel(&g_uring_groups);
	if (q->group_ch == NULL) {
		KEEL_ERRLOG("uring bdev %s: no io_uring on thread %s (see above)", name,
			    keel_thread_get_name(keel_thread_get_current()));
		return -ENOTSUP;
	}
	q->group = *(struct uring_group **)keel_io_channel_get_ctx(q->group_ch);
	if (q->group->file_slots != 0) {
		uring_queue_register_file(q, fd);
	}
	uring_stat_add32(&g_stats.queues, 1);
	return 0;
}

void bdev_uring_queue_fini(struct uring_queue *q)
{
	struct uring_group *g = q->group;
	struct keel_bdev_io *io, *tmp;

	if (q->inflight != 0) {
		/* The core drains first; forget this queue's waiters rather than point at it. */
		KEEL_ERRLOG("uring: thread %s: a bdev channel closed with %u requests in flight",
			    keel_thread_get_name(g->thread), q->inflight);
		for (io = TAILQ_FIRST(&g->waiting); io != NULL; io = tmp) {
			tmp = TAILQ_NEXT(io, module_link);
			if (((struct uring_req *)keel_bdev_io_get_ctx(io))->queue == q) {
				TAILQ_REMOVE(&g->waiting, io, module_link);
			}
		}
	}
	uring_queue_unregister_file(q);
	uring_stat_add32(&g_stats.queues, -1);
	keel_put_io_channel(q->group_ch);
	q->group_ch = NULL;
	q->group = NULL;
}

int bdev_uring_groups_init(void)
{
	int rc;

	if (g_groups_registered) {
		return 0;
	}
	rc = keel_io_device_register(&g_uring_groups, uring_group_create, uring_group_destroy,
				     sizeof(struct uring_group *), "uring_rings");
	if (rc != 0) {
		return rc;
	}
	g_groups_registered = true;
	return 0;
}

bool bdev_uring_groups_ready(void)
{
	return g_groups_registered;
}

void bdev_uring_groups_fini(void)
{
	if (!g_groups_registered) {
		return;
	}
	g_groups_registered = false;
	/* Rings still held close when their last (deferred) reference goes. */
	keel_io_device_unregister(&g_uring_groups, NULL);
}

/* ------------------------------------------------------------------------------ */
/* Knobs and statistics (bdev_uring_internal.h)                                    */
/* ------------------------------------------------------------------------------ */

static bool uring_is_pow2(uint32_t v)
{
	return v != 0 && (v & (v - 1)) == 0;
}

int bdev_uring_set_ring_size(uint32_t sq_entries, uint32_t cq_entries)
{
	if (!uring_is_pow2(sq_entries) || !uring_is_pow2(cq_entries) ||
	    sq_entries > URING_MAX_SQ_ENTRIES || cq_entries < sq_entries ||
	    cq_entries > URING_MAX_CQ_ENTRIES) {
		return -EINVAL;
	}
	__atomic_store_n(&g_sq_entries, sq_entries, __ATOMIC_RELAXED);
	__atomic_store_n(&g_cq_entries, cq_entries, __ATOMIC_RELAXED);
	return 0;
}

int bdev_uring_set_taskrun(enum bdev_uring_taskrun mode)
{
	if (mode != BDEV_URING_TASKRUN_IPI && mode != BDEV_URING_TASKRUN_COOP &&
	    mode != BDEV_URING_TASKRUN_DEFER) {
		return -EINVAL;
	}
	__atomic_store_n(&g_taskrun, mode, __ATOMIC_RELAXED);
	return 0;
}

void bdev_uring_set_register_files(bool on)
{
	__atomic_store_n(&g_register_files, on, __ATOMIC_RELAXED);
}

void bdev_uring_set_ring_init(bdev_uring_ring_init_fn fn)
{
	pthread_mutex_lock(&g_probe_lock);
	__atomic_store_n(&g_ring_init, fn, __ATOMIC_RELEASE);
	g_probed = false; /* the next probe asks the (pretend) kernel again */
	pthread_mutex_unlock(&g_probe_lock);
}

void bdev_uring_get_module_stats(struct bdev_uring_module_stats *out)
{
	out->rings = __atomic_load_n(&g_stats.rings, __ATOMIC_RELAXED);
	out->queues = __atomic_load_n(&g_stats.queues, __ATOMIC_RELAXED);
	out->registered_files = __atomic_load_n(&g_stats.registered_files, __ATOMIC_RELAXED);
	out->enter_calls = __atomic_load_n(&g_stats.enter_calls, __ATOMIC_RELAXED);
	out->sqes = __atomic_load_n(&g_stats.sqes, __ATOMIC_RELAXED);
	out->eventfd_reads = __atomic_load_n(&g_stats.eventfd_reads, __ATOMIC_RELAXED);
	out->getevents_calls = __atomic_load_n(&g_stats.getevents_calls, __ATOMIC_RELAXED);
}

/* The current keel thread's group (owning thread only). */
static struct uring_group *uring_group_current(void)
{
	struct keel_thread *thread = keel_thread_get_current();
	struct uring_group *g;

	pthread_mutex_lock(&g_groups_lock);
	TAILQ_FOREACH(g, &g_groups, link) {
		if (g->thread == thread) {
			break;
		}
	}
	pthread_mutex_unlock(&g_groups_lock);
	return g;
}

int bdev_uring_thread_eventfd(void)
{
	struct uring_group *g = uring_group_current();

	return g != NULL ? g->efd : -1;
}

struct keel_poller *bdev_uring_thread_poller(void)
{
	struct uring_group *g = uring_group_current();

	return g != NULL ? g->poller : NULL;
}
