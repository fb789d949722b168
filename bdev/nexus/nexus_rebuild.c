/*
 * Rebuild engine: copy a volume from a healthy replica to a rebuilding one while
 * the volume serves I/O.
 *
 * A job per target replica. Its copy loop runs on a keel thread of its own (on the
 * owner thread when there are no reactors: the unit-test harness), with up to
 * `tasks` segments in flight. Each segment: take a range lock on every nexus
 * channel (keel_for_each_channel: user writes overlapping the range wait in their
 * channel, writes already in flight there finish before the lock is granted),
 * read the source, write the target, unlock. User writes also reach the target
 * (it is a writer from the moment it joined), so every block behind the copy
 * stays in sync, and a block under copy cannot change between read and write.
 *
 * Control and bookkeeping live on the owner (management) thread; the job thread
 * owns the copy loop. They talk by message only; what the owner reads for status
 * while the job runs is atomic (counters, state, the running-time clock), and the
 * job thread's failure reason is written once and then published by an atomic
 * flag, before the state says failed. Membership changes settle the jobs while the channels are
 * frozen (nexus_rebuild_sync): a job whose source left drains and switches to
 * another healthy replica before any write could miss the old source; a job whose
 * target left drains and fails. Nothing reads a replica's descriptor after the
 * job acknowledged, so the nexus may release it.
 *
 * Foreground first: the job samples the volume's user I/O counters each ms and,
 * while there is user I/O, keeps one segment in flight and leaves the disk idle
 * as long as each segment used it, unless the copy fell below RB_FG_MIN_BPS
 * (a CPU-bound volume, where backing off only stretches the rebuild).
 *
 * Completion goes through the nexus's membership path (NEXUS_OP_REBUILD_DONE):
 * full bitmap image to the target, target healthy, generation bumped, labels
 * rewritten.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "keel/log.h"

#include "nexus_internal.h"

#define RB_MAX_TASKS 32u
/* Tasks a job keeps in flight while the volume serves user I/O (adaptive
 * back-off): enough to keep the copy moving, few enough that user requests do
 * not queue behind megabytes of copy on the disk (docs/rebuild.md). */
#define RB_FG_TASKS 1u
/* Foreground counts as present this long after the last user I/O seen. */
#define RB_FG_HOLD_NS (2u * 1000u * 1000u)
/* The back-off never starves the copy: over each window the job falls below
 * this rate (the volume is CPU-bound rather than disk-bound, segments are slow
 * for reasons the back-off does not help), it runs all its tasks again. */
#define RB_FG_MIN_BPS (32ull * 1024 * 1024)
#define RB_FG_WINDOW_NS (100ull * 1000 * 1000)
#define RB_RETRY_MAX RB_MAX_TASKS

enum rb_req {
	RB_REQ_NONE = 0,
	RB_REQ_PAUSE,
	RB_REQ_STOP,
	RB_REQ_FAIL,
};

struct rb_task {
	struct nexus_rebuild_job *job;
	uint8_t *buf;
	uint64_t seg;
	uint64_t off; /* volume bytes */
	uint32_t len;
	uint64_t start_ns;
	struct nexus_lock_range lock;
	int status;
	bool busy;
};

struct nexus_rebuild_job {
	struct nexus *n;
	unsigned target;
	unsigned source;
	char target_name[KEEL_BDEV_NAME_MAX + 1];
	char target_uuid[KEEL_UUID_STR_LEN];
	char source_name[KEEL_BDEV_NAME_MAX + 1]; /* owner's view */
	struct keel_thread *thread;
	bool own_thread;
	bool started;
	bool ended; /* owner: ended message handled */
	uint32_t acks_outstanding;
	/* Fixed at start. */
	uint32_t seg_size;
	uint32_t ntasks;
	uint64_t nsegs;
	uint32_t block_size;
	bool partial;
	uint8_t *map; /* partial: one byte per bitmap region */
	uint64_t map_region;
	uint32_t map_bits;
	/* Job thread. */
	struct keel_bdev_desc *src_desc;
	struct keel_bdev_desc *dst_desc;
	struct keel_io_channel *src_ch;
	struct keel_io_channel *dst_ch;
	uint64_t next_seg;
	uint64_t retry[RB_RETRY_MAX];
	uint32_t n_retry;
	bool source_lost;
	bool sync_waiting; /* a sync arrived; apply when drained */
	struct keel_bdev_desc *sync_src;
	unsigned sync_src_slot;
	bool sync_cancel;
	bool finishing;
	uint64_t bytes_started; /* rate limit accounting, since run_base_ns */
	uint64_t run_base_ns;
	uint64_t run_ns;       /* running time before the current run */
	uint64_t run_since_ns; /* 0 when not running */
	/* Why the job failed, from the job thread: written once, then job_error_set
	 * (release); the owner reads it only after seeing the flag. */
	char job_error[160];
	struct keel_poller *poller;
	uint64_t fg_ios;     /* nexus_user_ios at the last sample */
	uint64_t fg_seen_ns; /* last sample that saw user I/O */
	bool fg_active;      /* back off to RB_FG_TASKS */
	bool fg_boost;       /* ... unless the copy fell below RB_FG_MIN_BPS */
	uint64_t fg_next_ns; /* back-off: no new segment before this */
	uint64_t fg_win_ns;  /* rate window start, and blocks_done then */
	uint64_t fg_win_blocks;
	struct rb_task tasks[RB_MAX_TASKS];
	/* Shared. */
	_Atomic int state; /* enum keel_rebuild_state */
	_Atomic int req;   /* enum rb_req */
	_Atomic uint64_t blocks_total;
	_Atomic uint64_t blocks_done;
	_Atomic uint64_t blocks_transferred;
	atomic_uint tasks_active;
	_Atomic uint64_t rate_limit_bps;
	/* Running time for the owner in one word, so it never pairs two values from
	 * different moments: RUN_CLOCK_ON | (keel_now_ns() at which the running time
	 * would have been 0) while running, else the running time in ns. */
	_Atomic uint64_t run_clock;
	atomic_bool job_error_set;
	_Atomic uint64_t start_ms;
	_Atomic uint64_t end_ms;
	char error[160];                      /* owner thread only */
	uint64_t run_ns_shown;                /* owner: the running time last reported */
	TAILQ_ENTRY(nexus_rebuild_job) link;  /* n->jobs (active) */
	TAILQ_ENTRY(nexus_rebuild_job) glink; /* g_jobs (all kept) */
};

#define RUN_CLOCK_ON (1ull << 63)

static TAILQ_HEAD(, nexus_rebuild_job) g_jobs = TAILQ_HEAD_INITIALIZER(g_jobs);
static struct keel_rebuild_opts g_opts = {
	.segment_size = 128 * 1024,
	.tasks = 16,
	.rate_limit_mib_s = 0,
	.max_concurrent = 4,
	.auto_rebuild = true,
	.bitmap = true,
	.bitmap_region_size = 2 * 1024 * 1024,
	.bitmap_clear_ms = 5000,
};
static keel_rebuild_end_fn g_end_fn;
static void *g_end_ctx;

const char *keel_rebuild_state_name(enum keel_rebuild_state state)
{
	switch (state) {
	case KEEL_REBUILD_PENDING:
		return "pending";
	case KEEL_REBUILD_RUNNING:
		return "running";
	case KEEL_REBUILD_PAUSED:
		return "paused";
	case KEEL_REBUILD_STOPPED:
		return "stopped";
	case KEEL_REBUILD_FAILED:
		return "failed";
	case KEEL_REBUILD_COMPLETED:
		return "completed";
	}
	return "unknown";
}

void keel_rebuild_get_opts(struct keel_rebuild_opts *opts)
{
	*opts = g_opts;
}

/* The limit becomes an integer byte rate: a value out of range (or NaN, which
 * fails every comparison) would make that conversion undefined. */
static bool rate_valid(double mib_s)
{
	return mib_s >= 0 && mib_s <= KEEL_REBUILD_RATE_MAX_MIB_S;
}

static uint64_t rate_bps(double mib_s)
{
	return (uint64_t)(mib_s * 1024 * 1024);
}

int keel_rebuild_set_opts(const struct keel_rebuild_opts *opts)
{
	uint64_t rs = opts->bitmap_region_size;

	if (opts->segment_size == 0 || opts->segment_size % 4096 != 0 ||
	    opts->segment_size > 4u * 1024 * 1024 || opts->tasks == 0 ||
	    opts->tasks > RB_MAX_TASKS || !rate_valid(opts->rate_limit_mib_s) || rs < 64 * 1024 ||
	    (rs & (rs - 1)) != 0) {
		return -EINVAL;
	}
	g_opts = *opts;
	return 0;
}

void keel_rebuild_set_end_hook(keel_rebuild_end_fn fn, void *ctx)
{
	g_end_fn = fn;
	g_end_ctx = ctx;
}

static uint64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ------------------------------------------------------------------------------ */
/* Job thread: the copy loop                                                       */
/* ------------------------------------------------------------------------------ */

static void job_pump(struct nexus_rebuild_job *job);

static void job_run_stop_clock(struct nexus_rebuild_job *job)
{
	if (job->run_since_ns != 0) {
		job->run_ns += keel_now_ns() - job->run_since_ns;
		job->run_since_ns = 0;
	}
	atomic_store(&job->run_clock, job->run_ns);
}

static void job_run_start_clock(struct nexus_rebuild_job *job)
{
	job->run_since_ns = keel_now_ns();
	job->run_base_ns = job->run_since_ns;
	job->bytes_started = 0;
	/* run_ns <= run_since_ns: it is a sum of earlier intervals of this clock. */
	atomic_store(&job->run_clock, RUN_CLOCK_ON | (job->run_since_ns - job->run_ns));
}

/* Job thread: record why the job fails; the first reason stays. */
__attribute__((format(printf, 2, 3))) static void job_set_error(struct nexus_rebuild_job *job,
								const char *fmt, ...)
{
	va_list ap;

	if (atomic_load_explicit(&job->job_error_set, memory_order_relaxed)) {
		return;
	}
	va_start(ap, fmt);
	vsnprintf(job->job_error, sizeof(job->job_error), fmt, ap);
	va_end(ap);
	atomic_store_explicit(&job->job_error_set, true, memory_order_release);
}

/* Owner: the job thread's reason (the first cause: a write that failed comes
 * before the fault that takes its target out), else the owner's own. */
static const char *job_error_text(const struct nexus_rebuild_job *job)
{
	if (atomic_load_explicit(&job->job_error_set, memory_order_acquire)) {
		return job->job_error;
	}
	return job->error;
}

static void job_owner_msg(struct nexus_rebuild_job *job, keel_msg_fn fn)
{
	keel_thread_send_msg_reliable(job->n->owner, fn, job, NULL);
}

static void job_ended_msg(void *arg);
static void job_ack_msg(void *arg);

static void job_put_channels(struct nexus_rebuild_job *job)
{
	if (job->src_ch != NULL) {
		keel_put_io_channel(job->src_ch);
		job->src_ch = NULL;
	}
	if (job->dst_ch != NULL) {
		keel_put_io_channel(job->dst_ch);
		job->dst_ch = NULL;
	}
	job->src_desc = NULL;
	job->dst_desc = NULL;
}

static void job_finish(struct nexus_rebuild_job *job, enum keel_rebuild_state st)
{
	job->finishing = true;
	job_run_stop_clock(job);
	if (job->poller != NULL) {
		keel_poller_unregister(&job->poller);
	}
	job_put_channels(job);
	atomic_store(&job->end_ms, wall_ms());
	atomic_store(&job->state, st);
	job_owner_msg(job, job_ended_msg);
}

/* Apply a sync from the owner once nothing is in flight. */
static void job_apply_sync(struct nexus_rebuild_job *job)
{
	job->sync_waiting = false;
	if (job->sync_cancel) {
		/* The owner recorded why (nexus_rebuild_sync). */
		job_owner_msg(job, job_ack_msg);
		job_finish(job, KEEL_REBUILD_FAILED);
		return;
	}
	if (job->sync_src != NULL && job->sync_src != job->src_desc) {
		if (job->src_ch != NULL) {
			keel_put_io_channel(job->src_ch);
		}
		job->src_desc = job->sync_src;
		job->source = job->sync_src_slot;
		job->src_ch = keel_bdev_get_io_channel(job->src_desc);
		job->source_lost = false;
		if (job->src_ch == NULL) {
			job_set_error(job, "no I/O channel on the new source");
			job_owner_msg(job, job_ack_msg);
			job_finish(job, KEEL_REBUILD_FAILED);
			return;
		}
	}
	job_owner_msg(job, job_ack_msg);
	job_pump(job);
}

static void task_done(struct rb_task *t)
{
	struct nexus_rebuild_job *job = t->job;

	t->busy = false;
	atomic_fetch_sub(&job->tasks_active, 1);
	if (job->fg_active && !job->fg_boost) {
		/* Leave the disk to the foreground for as long as this segment held
		 * it: at most half of the disk's time goes to the copy. */
		uint64_t now = keel_now_ns();

		job->fg_next_ns = now + (now - t->start_ns);
	}
	job_pump(job);
}

static void task_unlocked(struct keel_io_channel_iter *iter, int status)
{
	struct rb_task *t = (struct rb_task *)((uint8_t *)keel_io_channel_iter_get_ctx(iter) -
					       offsetof(struct rb_task, lock));

	(void)status;
	task_done(t);
}

static void task_unlock(struct rb_task *t)
{
	keel_for_each_channel(t->job->n, nexus_channel_unlock, &t->lock, task_unlocked);
}

static void task_seg_ok(struct rb_task *t, bool transferred)
{
	struct nexus_rebuild_job *job = t->job;
	uint64_t blocks = t->len / job->block_size;

	atomic_fetch_add(&job->blocks_done, blocks);
	if (transferred) {
		atomic_fetch_add(&job->blocks_transferred, blocks);
	}
}

static void task_retry_later(struct rb_task *t)
{
	struct nexus_rebuild_job *job = t->job;

	if (job->n_retry < RB_RETRY_MAX) {
		job->retry[job->n_retry++] = t->seg;
	}
}

static void task_written(void *arg, int status)
{
	struct rb_task *t = arg;
	struct nexus_rebuild_job *job = t->job;

	if (status != 0) {
		job_set_error(job, "target %s: write at %lu failed: %s", job->target_name,
			      (unsigned long)t->off, strerror(-status));
		nexus_request_fault(job->n, job->target, status);
		atomic_store(&job->req, RB_REQ_FAIL);
	} else {
		task_seg_ok(t, true);
	}
	task_unlock(t);
}

static void task_read(void *arg, int status)
{
	struct rb_task *t = arg;
	struct nexus_rebuild_job *job = t->job;
	int rc;

	if (status != 0) {
		KEEL_WARNLOG("volume %s: rebuild of %s: source read at %lu failed: %s",
			     job->n->name, job->target_name, (unsigned long)t->off,
			     strerror(-status));
		/* The fault reaches the owner, whose membership step gives us another
		 * source (or cancels us); this segment is copied again then. */
		nexus_request_fault(job->n, job->source, status);
		job->source_lost = true;
		task_retry_later(t);
		task_unlock(t);
		return;
	}
	rc = keel_bdev_write(job->dst_desc, job->dst_ch, t->buf, t->off + job->n->data_offset,
			     t->len, task_written, t);
	if (rc != 0) {
		task_written(t, rc);
	}
}

static void task_locked(struct keel_io_channel_iter *iter, int status)
{
	struct rb_task *t = (struct rb_task *)((uint8_t *)keel_io_channel_iter_get_ctx(iter) -
					       offsetof(struct rb_task, lock));
	struct nexus_rebuild_job *job = t->job;
	int rc;

	(void)status;
	t->start_ns = keel_now_ns(); /* the disk's share starts now, not the lock's */
	if (job->source_lost || job->sync_waiting || job->src_desc == NULL) {
		task_retry_later(t);
		task_unlock(t);
		return;
	}
	rc = keel_bdev_read(job->src_desc, job->src_ch, t->buf, t->off + job->n->data_offset,
			    t->len, task_read, t);
	if (rc != 0) {
		task_read(t, rc);
	}
}

/* Next segment to copy, or false when none is left. */
static bool job_next_seg(struct nexus_rebuild_job *job, uint64_t *seg)
{
	if (job->n_retry > 0) {
		*seg = job->retry[--job->n_retry];
		return true;
	}
	while (job->next_seg < job->nsegs) {
		uint64_t s = job->next_seg++;

		if (job->partial) {
			uint64_t off = s * job->seg_size;
			uint32_t r = (uint32_t)(off / job->map_region);

			if (!job->map[r]) {
				continue;
			}
		}
		*seg = s;
		return true;
	}
	return false;
}

static bool job_throttled(struct nexus_rebuild_job *job)
{
	uint64_t bps = atomic_load(&job->rate_limit_bps);
	double allowed;

	if (bps == 0) {
		return false;
	}
	/* In double throughout: bytes allowed after a long run at a high limit do not
	 * fit an integer conversion. */
	allowed = (double)(keel_now_ns() - job->run_base_ns) * (double)bps / 1e9;
	return (double)job->bytes_started >= allowed + job->seg_size;
}

static void task_start(struct nexus_rebuild_job *job, struct rb_task *t, uint64_t seg)
{
	uint64_t vol = job->n->volume_size;

	t->busy = true;
	t->seg = seg;
	t->off = seg * job->seg_size;
	t->len = (uint32_t)(vol - t->off < job->seg_size ? vol - t->off : job->seg_size);
	t->lock.start = t->off;
	t->lock.end = t->off + t->len;
	t->lock.owner = t;
	job->bytes_started += t->len;
	atomic_fetch_add(&job->tasks_active, 1);
	keel_for_each_channel(job->n, nexus_channel_lock, &t->lock, task_locked);
}

static void job_pump(struct nexus_rebuild_job *job)
{
	int req;

	if (job->finishing) {
		return;
	}
	req = atomic_load(&job->req);
	if (job->sync_waiting) {
		if (atomic_load(&job->tasks_active) == 0) {
			job_apply_sync(job);
		}
		return;
	}
	if (req == RB_REQ_NONE && !job->source_lost) {
		if (atomic_load(&job->state) == KEEL_REBUILD_PAUSED) {
			atomic_store(&job->state, KEEL_REBUILD_RUNNING);
			job_run_start_clock(job);
		}
		bool back_off = job->fg_active && !job->fg_boost;
		uint32_t limit = back_off && job->ntasks > RB_FG_TASKS ? RB_FG_TASKS : job->ntasks;

		for (uint32_t i = 0; i < job->ntasks; i++) {
			struct rb_task *t = &job->tasks[i];
			uint64_t seg;

			if (t->busy) {
				continue;
			}
			if (atomic_load(&job->tasks_active) >= limit ||
			    (back_off && keel_now_ns() < job->fg_next_ns)) {
				break; /* the poller pumps again within a ms */
			}
			if (job_throttled(job) || !job_next_seg(job, &seg)) {
				break;
			}
			task_start(job, t, seg);
		}
	}
	if (atomic_load(&job->tasks_active) > 0) {
		return;
	}
	switch (req) {
	case RB_REQ_PAUSE:
		if (atomic_load(&job->state) != KEEL_REBUILD_PAUSED) {
			job_run_stop_clock(job);
			atomic_store(&job->state, KEEL_REBUILD_PAUSED);
		}
		return;
	case RB_REQ_STOP:
		job_finish(job, KEEL_REBUILD_STOPPED);
		return;
	case RB_REQ_FAIL:
		job_finish(job, KEEL_REBUILD_FAILED);
		return;
	default:
		break;
	}
	if (job->source_lost) {
		return; /* waiting for the owner's sync */
	}
	if (job->n_retry == 0 && job->next_seg >= job->nsegs) {
		job_finish(job, KEEL_REBUILD_COMPLETED);
	}
}

/* Sample the volume's user I/O counters (once per poll, not per segment: the
 * sum takes the channel-list lock). */
static void job_sample_fg(struct nexus_rebuild_job *job)
{
	uint64_t ios = nexus_user_ios(job->n);
	uint64_t now = keel_now_ns();

	if (ios != job->fg_ios) {
		job->fg_ios = ios;
		job->fg_seen_ns = now;
	}
	job->fg_active = job->fg_seen_ns != 0 && now - job->fg_seen_ns < RB_FG_HOLD_NS;
	if (now - job->fg_win_ns >= RB_FG_WINDOW_NS) {
		uint64_t done = atomic_load(&job->blocks_done);
		uint64_t bytes = (done - job->fg_win_blocks) * job->block_size;

		job->fg_boost = job->fg_active &&
				(double)bytes * 1e9 / (double)(now - job->fg_win_ns) <
					RB_FG_MIN_BPS;
		job->fg_win_ns = now;
		job->fg_win_blocks = done;
	}
}

static int job_poll(void *arg)
{
	struct nexus_rebuild_job *job = arg;

	job_sample_fg(job);

	/* Rate limit pacing; also picks up requests whose kick message was lost to
	 * a full ring (never: they are sent reliably) or raced a drain. */
	if (atomic_load(&job->state) == KEEL_REBUILD_RUNNING && !job->finishing) {
		job_pump(job);
	}
	return KEEL_POLLER_IDLE;
}

static void job_kick_msg(void *arg)
{
	job_pump(arg);
}

static void job_run_msg(void *arg)
{
	struct nexus_rebuild_job *job = arg;

	job->src_ch = keel_bdev_get_io_channel(job->src_desc);
	job->dst_ch = keel_bdev_get_io_channel(job->dst_desc);
	job->poller = keel_poller_register(job_poll, job, 1000, "rebuild");
	if (job->src_ch == NULL || job->dst_ch == NULL || job->poller == NULL) {
		job_set_error(job, "cannot get I/O channels");
		job_finish(job, KEEL_REBUILD_FAILED);
		return;
	}
	atomic_store(&job->state, KEEL_REBUILD_RUNNING);
	job_run_start_clock(job);
	job->fg_ios = nexus_user_ios(job->n);
	job->fg_win_ns = keel_now_ns();
	job->fg_win_blocks = atomic_load(&job->blocks_done);
	job_pump(job);
}

static void job_sync_msg(void *arg)
{
	struct nexus_rebuild_job *job = arg;

	if (job->finishing) {
		job_owner_msg(job, job_ack_msg);
		return;
	}
	job->sync_waiting = true;
	job_pump(job);
}

/*
 * Runs on the job's own thread. It must not touch the job: the owner may free an
 * ended job (forget_older, shutdown) before this message is delivered.
 */
static void job_exit_msg(void *arg)
{
	keel_thread_exit(keel_thread_get_current());
}

/* ------------------------------------------------------------------------------ */
/* Owner thread                                                                    */
/* ------------------------------------------------------------------------------ */

static void job_stats(struct nexus_rebuild_job *job, struct keel_rebuild_stats *st)
{
	uint64_t total = atomic_load(&job->blocks_total);
	uint64_t done = atomic_load(&job->blocks_done);
	uint64_t clock = atomic_load(&job->run_clock);
	uint64_t run_ns = clock & RUN_CLOCK_ON ? keel_now_ns() - (clock & ~RUN_CLOCK_ON) : clock;
	int state = atomic_load(&job->state);
	double secs;

	memset(st, 0, sizeof(*st));
	snprintf(st->volume, sizeof(st->volume), "%s", job->n ? job->n->name : "");
	snprintf(st->source, sizeof(st->source), "%s", job->source_name);
	snprintf(st->target, sizeof(st->target), "%s", job->target_name);
	snprintf(st->target_uuid, sizeof(st->target_uuid), "%s", job->target_uuid);
	st->state = (enum keel_rebuild_state)state;
	st->is_partial = job->partial;
	st->block_size = job->block_size;
	st->blocks_total = total;
	st->blocks_done = done;
	st->blocks_transferred = atomic_load(&job->blocks_transferred);
	st->progress_pct = total ? (uint32_t)(done * 100 / total)
				 : (state == KEEL_REBUILD_COMPLETED ? 100 : 0);
	st->start_time_ms = atomic_load(&job->start_ms);
	st->end_time_ms = atomic_load(&job->end_ms);
	/* A stop landing between the load and keel_now_ns() above would make the
	 * next report a hair shorter: the time shown never goes back. */
	if (run_ns < job->run_ns_shown) {
		run_ns = job->run_ns_shown;
	}
	job->run_ns_shown = run_ns;
	st->duration_ms = run_ns / 1000000ull;
	secs = (double)run_ns / 1e9;
	st->rate_mib_s = secs > 0 ? (double)(done * job->block_size) / (1024.0 * 1024.0) / secs : 0;
	st->eta_s = -1;
	if (st->rate_mib_s > 0 && state == KEEL_REBUILD_RUNNING) {
		st->eta_s = (int64_t)((double)((total - done) * job->block_size) /
				      (st->rate_mib_s * 1024 * 1024));
	} else if (state == KEEL_REBUILD_COMPLETED) {
		st->eta_s = 0;
	}
	st->tasks_active = atomic_load(&job->tasks_active);
	st->segment_size = job->seg_size;
	st->rate_limit_mib_s = (double)atomic_load(&job->rate_limit_bps) / (1024.0 * 1024.0);
	snprintf(st->error, sizeof(st->error), "%s", job_error_text(job));
}

static unsigned running_jobs(void)
{
	struct nexus_rebuild_job *job;
	unsigned c = 0;

	TAILQ_FOREACH(job, &g_jobs, glink) {
		if (job->started && !job->ended) {
			c++;
		}
	}
	return c;
}

static int pick_source(struct nexus *n, unsigned target, int avoid)
{
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct nexus_replica *r = &n->replicas[s];

		if (s != target && (int)s != avoid && nexus_replica_attached(r) &&
		    r->state == KEEL_NEXUS_REPLICA_HEALTHY && !atomic_load(&r->fault_requested)) {
			return (int)s;
		}
	}
	return -1;
}

static void job_end_owner(struct nexus_rebuild_job *job);

static void job_start(struct nexus_rebuild_job *job)
{
	struct nexus *n = job->n;
	int src = pick_source(n, job->target, -1);

	job->started = true;
	atomic_store(&job->start_ms, wall_ms());
	if (src < 0) {
		snprintf(job->error, sizeof(job->error), "no healthy source replica");
		atomic_store(&job->state, KEEL_REBUILD_FAILED);
		atomic_store(&job->end_ms, wall_ms());
		job_end_owner(job);
		return;
	}
	job->source = (unsigned)src;
	snprintf(job->source_name, sizeof(job->source_name), "%s", n->replicas[src].bdev_name);
	job->src_desc = n->replicas[src].desc;
	job->dst_desc = n->replicas[job->target].desc;
	if (keel_reactor_count() > 0) {
		char name[96];

		snprintf(name, sizeof(name), "rebuild_%.40s_%.40s", n->name, job->target_name);
		job->thread = keel_thread_create(name, KEEL_REACTOR_ANY);
		job->own_thread = job->thread != NULL;
	}
	if (job->thread == NULL) {
		job->thread = n->owner;
	}
	KEEL_NOTICELOG("volume %s: rebuild of %s from %s started (%s, %lu blocks)", n->name,
		       job->target_name, job->source_name, job->partial ? "partial" : "full",
		       (unsigned long)atomic_load(&job->blocks_total));
	keel_thread_send_msg_reliable(job->thread, job_run_msg, job, NULL);
}

static void schedule(void)
{
	struct nexus_rebuild_job *job;

	TAILQ_FOREACH(job, &g_jobs, glink) {
		if (g_opts.max_concurrent != 0 && running_jobs() >= g_opts.max_concurrent) {
			return;
		}
		if (!job->started && !job->ended &&
		    atomic_load(&job->state) == KEEL_REBUILD_PENDING) {
			job_start(job);
		}
	}
}

/* The copy buffers and the partial map: only a job that may still run needs them. */
static void job_free_buffers(struct nexus_rebuild_job *job)
{
	for (uint32_t i = 0; i < RB_MAX_TASKS; i++) {
		free(job->tasks[i].buf);
		job->tasks[i].buf = NULL;
	}
	free(job->map);
	job->map = NULL;
}

static void job_free(struct nexus_rebuild_job *job)
{
	TAILQ_REMOVE(&g_jobs, job, glink);
	job_free_buffers(job);
	free(job);
}

/* Drop ended jobs of the same target: the newest one per target is kept. */
static void forget_older(struct nexus_rebuild_job *keep)
{
	struct nexus_rebuild_job *job, *tmp;

	for (job = TAILQ_FIRST(&g_jobs); job != NULL; job = tmp) {
		tmp = TAILQ_NEXT(job, glink);
		if (job != keep && job->ended && job->acks_outstanding == 0 && job->n == keep->n &&
		    strcmp(job->target_uuid, keep->target_uuid) == 0) {
			job_free(job);
		}
	}
}

static void rebuild_sync_put(struct nexus *n)
{
	if (n->sync_pending > 0 && --n->sync_pending == 0 && n->sync_cont != NULL) {
		void (*cont)(struct nexus *n) = n->sync_cont;

		n->sync_cont = NULL;
		cont(n);
	}
}

static void job_ack_msg(void *arg)
{
	struct nexus_rebuild_job *job = arg;

	job->acks_outstanding--;
	rebuild_sync_put(job->n);
}

static void job_end_owner(struct nexus_rebuild_job *job)
{
	struct nexus *n = job->n;
	struct keel_rebuild_stats st;
	int state = atomic_load(&job->state);

	job->ended = true;
	TAILQ_REMOVE(&n->jobs, job, link);
	/* The job thread finished with every task before it sent the end (job_finish
	 * runs with no task active); an ended job is kept for its statistics only, and
	 * keeping 2 MiB of buffers per rebuilt replica grew keeld without bound. */
	job_free_buffers(job);
	job_stats(job, &st);
	KEEL_NOTICELOG("volume %s: rebuild of %s %s: %lu of %lu blocks copied in %.1f s%s%s",
		       n->name, job->target_name, keel_rebuild_state_name(state),
		       (unsigned long)st.blocks_transferred, (unsigned long)st.blocks_total,
		       (double)st.duration_ms / 1000.0, st.error[0] ? ": " : "", st.error);
	if (g_end_fn != NULL) {
		g_end_fn(g_end_ctx, &st);
	}
	if (n->rb_shutdown) {
		rebuild_sync_put(n);
	} else if (state == KEEL_REBUILD_COMPLETED) {
		(void)nexus_queue_rebuild_done(n, job->target);
	}
	forget_older(job);
	schedule();
}

static void job_ended_msg(void *arg)
{
	struct nexus_rebuild_job *job = arg;

	if (job->own_thread) {
		keel_thread_send_msg_reliable(job->thread, job_exit_msg, NULL, NULL);
	}
	job_end_owner(job);
}

static int job_create(struct nexus *n, unsigned target, bool partial)
{
	struct nexus_replica *r = &n->replicas[target];
	struct nexus_rebuild_job *job = calloc(1, sizeof(*job));
	uint32_t align = 4096;

	if (job == NULL) {
		return -ENOMEM;
	}
	job->n = n;
	job->target = target;
	snprintf(job->target_name, sizeof(job->target_name), "%s", r->bdev_name);
	keel_uuid_fmt(r->uuid, job->target_uuid);
	job->seg_size = g_opts.segment_size;
	job->ntasks = g_opts.tasks;
	job->block_size = n->block_size;
	job->nsegs = (n->volume_size + job->seg_size - 1) / job->seg_size;
	atomic_store(&job->rate_limit_bps, rate_bps(g_opts.rate_limit_mib_s));
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct nexus_replica *m = &n->replicas[s];

		if (m->used && m->desc != NULL) {
			uint32_t a = keel_bdev_get_buf_align(keel_bdev_desc_get_bdev(m->desc));

			align = a > align ? a : align;
		}
	}
	for (uint32_t i = 0; i < job->ntasks; i++) {
		job->tasks[i].job = job;
		if (posix_memalign((void **)&job->tasks[i].buf, align, job->seg_size) != 0) {
			job->tasks[i].buf = NULL;
			goto out_free;
		}
	}
	if (partial && n->bm != NULL) {
		uint64_t blocks = 0;

		job->map = calloc(1, (n->volume_size / 65536) + 65536);
		if (job->map == NULL) {
			goto out_free;
		}
		(void)nexus_bitmap_snapshot(n, job->map, &job->map_region, &job->map_bits);
		/* Segments never straddle regions: regions are >= 64 KiB powers of two
		 * and segments a multiple of 4 KiB; use the smaller as the step. */
		if (job->map_region < job->seg_size) {
			job->seg_size = (uint32_t)job->map_region;
			job->nsegs = (n->volume_size + job->seg_size - 1) / job->seg_size;
		}
		for (uint32_t b = 0; b < job->map_bits; b++) {
			if (job->map[b]) {
				uint64_t start = (uint64_t)b * job->map_region;
				uint64_t end = start + job->map_region;

				end = end > n->volume_size ? n->volume_size : end;
				blocks += (end - start) / n->block_size;
			}
		}
		job->partial = true;
		atomic_store(&job->blocks_total, blocks);
	} else {
		atomic_store(&job->blocks_total, n->volume_size / n->block_size);
	}
	atomic_store(&job->state, KEEL_REBUILD_PENDING);
	TAILQ_INSERT_TAIL(&n->jobs, job, link);
	TAILQ_INSERT_TAIL(&g_jobs, job, glink);
	snprintf(r->detail, sizeof(r->detail), "out of sync: %s rebuild queued",
		 job->partial ? "partial" : "full");
	schedule();
	return 0;

out_free:
	job_free_buffers(job);
	free(job);
	return -ENOMEM;
}

/* A replica that comes back copies only what the bitmap marked when it was in sync
 * when it left and the bitmap has covered its absence since (md's events rule,
 * nexus_assemble_covers); anything else is copied whole. */
static bool rejoin_partial(const struct nexus *n, const struct nexus_replica *r)
{
	return r->rejoin && r->rejoin_in_sync && nexus_bitmap_covers(n, r->rejoin_generation);
}

static struct nexus_rebuild_job *active_job(struct nexus *n, unsigned target)
{
	struct nexus_rebuild_job *job;

	TAILQ_FOREACH(job, &n->jobs, link) {
		if (job->target == target) {
			return job;
		}
	}
	return NULL;
}

void nexus_rebuild_auto(struct nexus *n)
{
	if (n->destroying || n->rb_shutdown || n->state == KEEL_NEXUS_FAULTED) {
		return;
	}
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct nexus_replica *r = &n->replicas[s];

		if (r->used && r->desc == NULL && r->state == KEEL_NEXUS_REPLICA_FAULTED &&
		    r->reason == KEEL_NEXUS_REASON_STALE && r->bdev_name[0] != '\0' &&
		    !r->foreign && !r->rejoin_tried && g_opts.auto_rebuild) {
			r->rejoin_tried = true;
			KEEL_NOTICELOG("volume %s: replica %s is stale: re-adding it", n->name,
				       r->bdev_name);
			(void)nexus_queue_rejoin(n, s);
		}
	}
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct nexus_replica *r = &n->replicas[s];
		bool partial;

		if (!nexus_replica_attached(r) || r->state != KEEL_NEXUS_REPLICA_REBUILDING ||
		    r->rb_started || active_job(n, s) != NULL || !g_opts.auto_rebuild) {
			continue;
		}
		r->rb_started = true;
		partial = rejoin_partial(n, r);
		if (r->rejoin) {
			KEEL_NOTICELOG(
				"volume %s: replica %s rejoins at generation %lu (%s): %s rebuild",
				n->name, r->bdev_name, (unsigned long)r->rejoin_generation,
				r->rejoin_in_sync ? "was in sync" : "was out of sync",
				partial ? "partial" : "full");
		}
		if (job_create(n, s, partial) != 0) {
			KEEL_ERRLOG("volume %s: replica %s: cannot create a rebuild job", n->name,
				    r->bdev_name);
		}
	}
}

void nexus_rebuild_sync(struct nexus *n, void (*cont)(struct nexus *n))
{
	struct nexus_rebuild_job *job;

	n->sync_pending = 1;
	n->sync_cont = cont;
	TAILQ_FOREACH(job, &n->jobs, link) {
		struct nexus_replica *t = &n->replicas[job->target];
		struct nexus_replica *src;
		int ns;

		if (!job->started) {
			if (!nexus_replica_attached(t) ||
			    t->state != KEEL_NEXUS_REPLICA_REBUILDING) {
				atomic_store(&job->req, RB_REQ_FAIL);
			}
			continue;
		}
		src = &n->replicas[job->source];
		if (nexus_replica_attached(t) && t->state == KEEL_NEXUS_REPLICA_REBUILDING &&
		    nexus_replica_attached(src) && src->state == KEEL_NEXUS_REPLICA_HEALTHY &&
		    !(n->unreadable_mask & (1u << job->source))) {
			continue;
		}
		job->sync_cancel = false;
		/* NULL keeps the job's source: src_desc is the job thread's to read. */
		job->sync_src = NULL;
		if (!nexus_replica_attached(t) || t->state != KEEL_NEXUS_REPLICA_REBUILDING) {
			job->sync_cancel = true;
			snprintf(job->error, sizeof(job->error), "target %s left the volume (%s)",
				 job->target_name, keel_nexus_replica_state_name(t->state));
		} else if ((ns = pick_source(n, job->target, (int)job->source)) < 0 ||
			   (n->unreadable_mask & (1u << ns))) {
			job->sync_cancel = true;
			snprintf(job->error, sizeof(job->error),
				 "source %s failed and no other healthy replica is left",
				 job->source_name);
		} else {
			KEEL_WARNLOG("volume %s: rebuild of %s: source %s left, switching to %s",
				     n->name, job->target_name, job->source_name,
				     n->replicas[ns].bdev_name);
			job->sync_src = n->replicas[ns].desc;
			job->sync_src_slot = (unsigned)ns;
			snprintf(job->source_name, sizeof(job->source_name), "%s",
				 n->replicas[ns].bdev_name);
		}
		n->sync_pending++;
		job->acks_outstanding++;
		keel_thread_send_msg_reliable(job->thread, job_sync_msg, job, NULL);
	}
	/* Unstarted jobs that lost their target end here. */
	for (job = TAILQ_FIRST(&n->jobs); job != NULL;) {
		struct nexus_rebuild_job *next = TAILQ_NEXT(job, link);

		if (!job->started && atomic_load(&job->req) == RB_REQ_FAIL) {
			job->started = true;
			snprintf(job->error, sizeof(job->error), "target left the volume");
			atomic_store(&job->state, KEEL_REBUILD_FAILED);
			atomic_store(&job->end_ms, wall_ms());
			job_end_owner(job);
		}
		job = next;
	}
	rebuild_sync_put(n);
}

void nexus_rebuild_shutdown(struct nexus *n, void (*cont)(struct nexus *n))
{
	struct nexus_rebuild_job *job, *next;

	n->rb_shutdown = true;
	n->sync_pending = 1;
	n->sync_cont = cont;
	for (job = TAILQ_FIRST(&n->jobs); job != NULL; job = next) {
		next = TAILQ_NEXT(job, link);
		if (!job->started) {
			job->started = true;
			atomic_store(&job->state, KEEL_REBUILD_STOPPED);
			snprintf(job->error, sizeof(job->error), "volume stopped");
			atomic_store(&job->end_ms, wall_ms());
			n->sync_pending++;
			job_end_owner(job);
			continue;
		}
		n->sync_pending++;
		snprintf(job->error, sizeof(job->error), "volume stopped");
		atomic_store(&job->req, RB_REQ_STOP);
		keel_thread_send_msg_reliable(job->thread, job_kick_msg, job, NULL);
	}
	/* Ended jobs of this volume are forgotten with it (their records went to the
	 * end hook). */
	for (job = TAILQ_FIRST(&g_jobs); job != NULL; job = next) {
		next = TAILQ_NEXT(job, glink);
		if (job->n == n && job->ended && job->acks_outstanding == 0 &&
		    atomic_load(&job->state) != KEEL_REBUILD_PENDING) {
			job_free(job);
		}
	}
	rebuild_sync_put(n);
}

/* Called by nexus_free: the volume is gone, drop what is left of its jobs. */
void nexus_rebuild_forget(struct nexus *n)
{
	struct nexus_rebuild_job *job, *next;

	for (job = TAILQ_FIRST(&g_jobs); job != NULL; job = next) {
		next = TAILQ_NEXT(job, glink);
		if (job->n == n) {
			job_free(job);
		}
	}
}

void nexus_rebuild_forget_target(struct nexus *n, const uint8_t *uuid)
{
	struct nexus_rebuild_job *job, *next;
	char target[KEEL_UUID_STR_LEN];

	keel_uuid_fmt(uuid, target);
	for (job = TAILQ_FIRST(&g_jobs); job != NULL; job = next) {
		next = TAILQ_NEXT(job, glink);
		if (job->n == n && job->ended && job->acks_outstanding == 0 &&
		    strcmp(job->target_uuid, target) == 0) {
			job_free(job);
		}
	}
}

/* ------------------------------------------------------------------------------ */
/* Public control                                                                  */
/* ------------------------------------------------------------------------------ */

static int find_target(const char *volume, const char *replica, struct nexus **pn)
{
	struct nexus *n = (struct nexus *)keel_nexus_get_by_name(volume);

	if (n == NULL || replica == NULL) {
		return -ENODEV;
	}
	*pn = n;
	return nexus_find_replica(n, replica);
}

int keel_rebuild_start(const char *volume, const char *replica)
{
	struct nexus *n;
	struct nexus_replica *r;
	int s = find_target(volume, replica, &n);

	if (s < 0) {
		return s;
	}
	r = &n->replicas[s];
	if (!nexus_replica_attached(r) || r->state != KEEL_NEXUS_REPLICA_REBUILDING) {
		return -EINVAL;
	}
	if (active_job(n, (unsigned)s) != NULL) {
		return -EBUSY;
	}
	if (pick_source(n, (unsigned)s, -1) < 0) {
		return -EIO;
	}
	r->rb_started = true;
	/* A restarted job copies everything: what the stopped one did is not known
	 * to be intact behind the writes that went on since (they did reach the
	 * target, but a partial map may have been consumed). */
	return job_create(n, (unsigned)s, rejoin_partial(n, r));
}

static int control(const char *volume, const char *replica, int req)
{
	struct nexus *n;
	struct nexus_rebuild_job *job;
	int s = find_target(volume, replica, &n);
	int state;

	if (s < 0) {
		return s;
	}
	job = active_job(n, (unsigned)s);
	if (job == NULL) {
		return req == RB_REQ_STOP ? -EALREADY : -ENODEV;
	}
	state = atomic_load(&job->state);
	switch (req) {
	case RB_REQ_PAUSE:
		if (!job->started) {
			atomic_store(&job->state, KEEL_REBUILD_PAUSED);
			return 0;
		}
		atomic_store(&job->req, RB_REQ_PAUSE);
		break;
	case RB_REQ_NONE: /* resume */
		if (!job->started) {
			if (state != KEEL_REBUILD_PAUSED) {
				return -EINVAL;
			}
			atomic_store(&job->state, KEEL_REBUILD_PENDING);
			schedule();
			return 0;
		}
		if (atomic_load(&job->req) != RB_REQ_PAUSE) {
			return -EINVAL;
		}
		atomic_store(&job->req, RB_REQ_NONE);
		break;
	case RB_REQ_STOP:
		if (!job->started) {
			job->started = true;
			atomic_store(&job->state, KEEL_REBUILD_STOPPED);
			atomic_store(&job->end_ms, wall_ms());
			job_end_owner(job);
			return 0;
		}
		atomic_store(&job->req, RB_REQ_STOP);
		break;
	default:
		return -EINVAL;
	}
	keel_thread_send_msg_reliable(job->thread, job_kick_msg, job, NULL);
	return 0;
}

int keel_rebuild_stop(const char *volume, const char *replica)
{
	return control(volume, replica, RB_REQ_STOP);
}

int keel_rebuild_pause(const char *volume, const char *replica)
{
	return control(volume, replica, RB_REQ_PAUSE);
}

int keel_rebuild_resume(const char *volume, const char *replica)
{
	return control(volume, replica, RB_REQ_NONE);
}

int keel_rebuild_set_rate(const char *volume, const char *replica, double mib_s)
{
	struct nexus *n;
	struct nexus_rebuild_job *job;
	int s = find_target(volume, replica, &n);

	if (s < 0) {
		return s;
	}
	if (!rate_valid(mib_s)) {
		return -EINVAL;
	}
	job = active_job(n, (unsigned)s);
	if (job == NULL) {
		return -ENODEV;
	}
	atomic_store(&job->rate_limit_bps, rate_bps(mib_s));
	return 0;
}

uint32_t keel_rebuild_list(const char *volume,
			   void (*fn)(void *ctx, const struct keel_rebuild_stats *st), void *ctx)
{
	struct nexus_rebuild_job *job;
	uint32_t c = 0;

	TAILQ_FOREACH(job, &g_jobs, glink) {
		struct keel_rebuild_stats st;

		if (volume != NULL && strcmp(job->n->name, volume) != 0) {
			continue;
		}
		job_stats(job, &st);
		fn(ctx, &st);
		c++;
	}
	return c;
}

struct json_t *keel_rebuild_stats_to_json(const struct keel_rebuild_stats *st)
{
	json_t *o = json_object();

	if (o == NULL) {
		return NULL;
	}
	json_object_set_new(o, "volume", json_string(st->volume));
	json_object_set_new(o, "source", json_string(st->source));
	json_object_set_new(o, "target", json_string(st->target));
	json_object_set_new(o, "target_uuid", json_string(st->target_uuid));
	json_object_set_new(o, "state", json_string(keel_rebuild_state_name(st->state)));
	json_object_set_new(o, "is_partial", json_boolean(st->is_partial));
	json_object_set_new(o, "block_size", json_integer(st->block_size));
	json_object_set_new(o, "blocks_total", json_integer((json_int_t)st->blocks_total));
	json_object_set_new(o, "blocks_done", json_integer((json_int_t)st->blocks_done));
	json_object_set_new(o, "blocks_transferred",
			    json_integer((json_int_t)st->blocks_transferred));
	json_object_set_new(o, "progress_pct", json_integer(st->progress_pct));
	json_object_set_new(o, "rate_mib_s", json_real(st->rate_mib_s));
	json_object_set_new(o, "eta_s", json_integer(st->eta_s));
	json_object_set_new(o, "start_time", json_integer((json_int_t)st->start_time_ms));
	json_object_set_new(o, "end_time", json_integer((json_int_t)st->end_time_ms));
	json_object_set_new(o, "duration_ms", json_integer((json_int_t)st->duration_ms));
	json_object_set_new(o, "tasks_active", json_integer(st->tasks_active));
	json_object_set_new(o, "segment_size", json_integer(st->segment_size));
	json_object_set_new(o, "rate_limit_mib_s", json_real(st->rate_limit_mib_s));
	json_object_set_new(o, "error", json_string(st->error));
	return o;
}
