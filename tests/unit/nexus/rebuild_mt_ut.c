/*
 * Rebuild on real reactors (cpus 0-1, unpinned): the copy loop, the range locks and
 * the write-intent bitmap run on several OS threads at once, which the deterministic
 * harness of rebuild_ut cannot show (and TSan can only check here).
 *
 * 1. A 2-replica volume of malloc bdevs takes random writes of 4..64 KiB from two
 *    keel threads, one per reactor; a third replica is added (full rebuild) while
 *    they run. After the writers stop, the data regions of all replicas must be
 *    byte-identical: a write that raced a segment copy and lost would show here.
 *    Races are made, not hoped for: see "Racing the copy" below.
 * 2. Bits cleared (quiet volume), writers on the first 4 MiB only, a replica is
 *    faulted under load and re-added in place under load: the rebuild must be
 *    partial (only the regions written while it was out), the writers go over the
 *    whole volume during it, and the replicas are identical afterwards.
 *
 * Worker threads only count violations (CUnit is not thread-safe); the test asserts
 * after the reactors stopped.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/bdev.h"
#include "keel/bdev_module.h"
#include "keel/log.h"
#include "keel/nexus.h"
#include "keel/reactor.h"
#include "ut_cunit.h"
#include "ut_mt.h"

#define MB (1024ull * 1024ull)
#define BS 4096u
#define VOL_SIZE (32 * MB)
#define REP_BLOCKS ((VOL_SIZE + KEEL_NEXUS_DATA_OFFSET) / BS)
#define NWRITERS 2
#define WQD 8
#define WMAX (64 * 1024u)
#define CHUNK (48 * 1024u) /* write ownership unit, see writer_submit */
#define NSLOTS (NWRITERS * WQD + 1)
#define RACER_SLOT (NSLOTS - 1) /* the chunks of the racing writes, see race_msg */
#define REGION (1 * MB)
#define PARTIAL_LIMIT (4 * MB) /* writers' range while the replica is out */
#define CMP_CHUNK MB
#define PHASE_TIMEOUT_NS \
	(500ull * 1000 * 1000 * 1000) /* a hang guard: TSan on a loaded machine is slow */

struct wreq {
	struct writer *w;
	uint8_t *buf;
	bool busy;
};

struct writer {
	int idx;
	struct keel_thread *thread;
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	struct wreq reqs[WQD];
	uint64_t rng;
	uint32_t inflight;
	bool ended;
	uint64_t ios;
};

static struct writer g_writers[NWRITERS];
static struct keel_thread *g_main_thread;
static atomic_bool g_stop_writers;
static _Atomic uint64_t g_write_limit; /* bytes of the volume the writers may touch */
static atomic_int g_writers_running;
static atomic_int g_writers_ended;
static _Atomic uint64_t g_write_ios;

/* Main (management) thread state. */
enum phase {
	P_INIT,
	P_FULL_WAIT_LOAD,
	P_FULL_ADDING,
	P_FULL_REBUILDING,
	P_FULL_STOPPING,
	P_FULL_COMPARE,
	P_WAIT_CLEAR,
	P_PART_WAIT_LOAD,
	P_PART_FAULTING,
	P_PART_OUT,
	P_PART_ADDING,
	P_PART_REBUILDING,
	P_PART_STOPPING,
	P_PART_COMPARE,
	P_DESTROY,
	P_DONE,
};

static enum phase g_phase;
static uint64_t g_phase_start;
static struct keel_poller *g_main_poller;
static bool g_op_busy;
static uint64_t g_ios_mark;
static struct keel_rebuild_stats g_full_st, g_part_st;
static bool g_full_seen, g_part_seen;
static uint64_t g_compared_bytes[2];
static uint64_t g_ios_during_rebuild[2];
static unsigned g_races_seen[2];
static uint32_t g_bits_after_quiet = UINT32_MAX;

static const char *const g_reps[] = {"mt_r0", "mt_r1", "mt_r2"};

/* ------------------------------------------------------------------------------ */
/* Writers                                                                         */
/* ------------------------------------------------------------------------------ */

static uint64_t xrand(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void writer_submit(struct wreq *r);

static void writer_end(struct writer *w)
{
	if (w->ended) {
		return;
	}
	w->ended = true;
	keel_put_io_channel(w->ch);
	w->ch = NULL;
	keel_bdev_close(w->desc);
	w->desc = NULL;
	atomic_fetch_add(&g_writers_ended, 1);
}

static void writer_done(void *arg, int status)
{
	struct wreq *r = arg;
	struct writer *w = r->w;

	if (keel_thread_get_current() != w->thread || !r->busy) {
		UT_MT_ERR();
	}
	r->busy = false;
	w->inflight--;
	/* A healthy replica stays throughout: no write may fail. */
	if (status != 0) {
		UT_MT_ERR();
	}
	w->ios++;
	atomic_fetch_add(&g_write_ios, 1);
	if (atomic_load(&g_stop_writers)) {
		if (w->inflight == 0) {
			writer_end(w);
		}
		return;
	}
	writer_submit(r);
}

static void writer_submit(struct wreq *r)
{
	struct writer *w = r->w;
	uint64_t limit = atomic_load(&g_write_limit);
	uint64_t x = xrand(&w->rng);
	/* This request slot owns every NSLOTS-th chunk: overlapping writes in flight
	 * together may land in different orders on different replicas (undefined for
	 * any block device, md included), so the test never issues them. Chunks are
	 * not segment-aligned, so writes straddle segment boundaries. */
	uint64_t slot = (uint64_t)w->idx * WQD + (uint64_t)(r - w->reqs);
	uint64_t nchunks = limit / CHUNK;
	uint64_t per_slot = (nchunks - slot + NSLOTS - 1) / NSLOTS;
	uint64_t chunk = slot + ((x >> 32) % per_slot) * NSLOTS;
	uint64_t in = (x % (CHUNK / BS)) * BS;
	uint32_t len = (uint32_t)(((x >> 16) % ((CHUNK - in) / BS)) + 1) * BS;
	uint64_t off = chunk * CHUNK + in;
	int rc;

	/* New contents every time, so a stale copy cannot match by accident. */
	for (uint32_t i = 0; i < len; i += 8) {
		uint64_t v = xrand(&w->rng);

		memcpy(r->buf + i, &v, 8);
	}
	r->busy = true;
	w->inflight++;
	rc = keel_bdev_write(w->desc, w->ch, r->buf, off, len, writer_done, r);
	if (rc != 0) {
		/* -ENOMEM would be a retry; the bdev_io pool is sized for far more. */
		UT_MT_ERR();
		r->busy = false;
		w->inflight--;
		if (w->inflight == 0) {
			writer_end(w);
		}
	}
}

static void writer_event(enum keel_bdev_event_type type, struct keel_bdev *bdev, void *ctx)
{
}

/* ------------------------------------------------------------------------------ */
/* Racing the copy                                                                 */
/* ------------------------------------------------------------------------------ */

/*
 * Every replica is a malloc disk whose submit_request is wrapped (race_submit, a
 * seam of this test only). When the rebuild writes a segment to its target (a write
 * to the data area coming from neither a writer nor the main thread), the wrapper
 * holds that write back and has writer 0 write into the same range through the
 * volume: the copy has read the source and not written the target yet, the window
 * the range lock exists for. The racing write must be held by the lock: it may not
 * reach any replica while the copy's write is held, and it completes only after
 * that write was let go. Had it got through, the copy would put the old data over
 * it on the target, which the comparison at the end would also show.
 */
struct race {
	struct keel_io_channel *ch; /* the held copy write and its module channel */
	struct keel_bdev_io *io;
	struct keel_thread *job_thread;
	uint64_t vol_off;
	uint64_t len;
	uint32_t seq;
};

static struct race g_race;
static atomic_bool g_race_busy;          /* a copy write is held (one at a time) */
static _Atomic uint32_t g_race_released; /* seq of the last copy write let go */
static atomic_uint g_races;              /* racing writes the lock held back */
static struct keel_bdev_fn_table g_race_fn_table;
static void (*g_malloc_submit)(struct keel_io_channel *ch, struct keel_bdev_io *io);
/* Writer 0's thread only: its racing request, and what race_submit saw of it. */
static struct wreq g_racer;
static uint32_t g_racer_seq;
static bool g_racer_submitting;
static bool g_racer_reached;

static bool on_writer_thread(struct keel_thread *t)
{
	for (int i = 0; i < NWRITERS; i++) {
		if (g_writers[i].thread == t) {
			return true;
		}
	}
	return false;
}

static void racer_done(void *arg, int status)
{
	struct writer *w = &g_writers[0];

	if (status != 0) {
		UT_MT_ERR();
	}
	if (atomic_load(&g_race_released) < g_racer_seq) {
		fprintf(stderr, "rebuild_mt_ut: a racing write completed while the copy's "
				"write of its range was still held\n");
		UT_MT_ERR();
	}
	g_racer.busy = false;
	w->inflight--;
	if (atomic_load(&g_stop_writers) && w->inflight == 0) {
		writer_end(w);
	}
}

/* The racer's part of [vol_off, vol_off + len): chunks no other request writes. */
static bool racer_range(uint64_t vol_off, uint64_t len, uint64_t *off, uint64_t *end)
{
	uint64_t first = vol_off / CHUNK, last = (vol_off + len - 1) / CHUNK;

	for (uint64_t c = first; c <= last; c++) {
		if (c % NSLOTS != RACER_SLOT || (c + 1) * CHUNK > VOL_SIZE) {
			continue;
		}
		*off = c * CHUNK > vol_off ? c * CHUNK : vol_off;
		*end = (c + 1) * CHUNK < vol_off + len ? (c + 1) * CHUNK : vol_off + len;
		return true;
	}
	return false;
}

/* Job thread: let the held copy write go on to the target. */
static void race_release(void *arg)
{
	struct race *rc = arg;
	struct keel_io_channel *ch = rc->ch;
	struct keel_bdev_io *io = rc->io;

	atomic_store(&g_race_released, rc->seq);
	atomic_store(&g_race_busy, false);
	g_malloc_submit(ch, io);
}

/* Writer 0's thread: write into the range whose copy is held, then let the copy go. */
static void race_msg(void *arg)
{
	struct race *rc = arg;
	struct writer *w = &g_writers[0];
	uint64_t off, end;
	int rc_w;

	if (!w->ended && w->desc != NULL && !atomic_load(&g_stop_writers) && !g_racer.busy &&
	    racer_range(rc->vol_off, rc->len, &off, &end)) {
		for (uint64_t i = 0; i < end - off; i += 8) {
			uint64_t v = xrand(&w->rng);

			memcpy(g_racer.buf + i, &v, 8);
		}
		g_racer.busy = true;
		g_racer_seq = rc->seq;
		w->inflight++;
		g_racer_submitting = true;
		g_racer_reached = false;
		rc_w = keel_bdev_write(w->desc, w->ch, g_racer.buf, off, end - off, racer_done,
				       &g_racer);
		g_racer_submitting = false;
		if (rc_w != 0) {
			UT_MT_ERR();
			g_racer.busy = false;
			w->inflight--;
		} else if (g_racer_reached) {
			fprintf(stderr,
				"rebuild_mt_ut: a write to volume offset %lu reached the "
				"replicas while the copy of its segment was mid-way\n",
				(unsigned long)off);
			UT_MT_ERR();
		} else {
			atomic_fetch_add(&g_races, 1);
		}
	}
	if (keel_thread_send_msg(rc->job_thread, race_release, rc) != 0) {
		UT_MT_ERR();
	}
}

static void race_submit(struct keel_io_channel *ch, struct keel_bdev_io *io)
{
	struct keel_thread *cur = keel_thread_get_current();
	uint64_t off = keel_bdev_io_offset_bytes(io), roff, rend;

	if (cur == g_writers[0].thread && g_racer_submitting) {
		g_racer_reached = true; /* the racing write was not held back */
	}
	/* Hold only copy writes the racer has a chunk in. */
	if (io->type == KEEL_BDEV_IO_WRITE && off >= KEEL_NEXUS_DATA_OFFSET &&
	    cur != g_main_thread && !on_writer_thread(cur) &&
	    racer_range(off - KEEL_NEXUS_DATA_OFFSET, keel_bdev_io_num_bytes(io), &roff, &rend) &&
	    !atomic_exchange(&g_race_busy, true)) {
		g_race.ch = ch;
		g_race.io = io;
		g_race.job_thread = cur;
		g_race.vol_off = off - KEEL_NEXUS_DATA_OFFSET;
		g_race.len = keel_bdev_io_num_bytes(io);
		g_race.seq++;
		if (keel_thread_send_msg(g_writers[0].thread, race_msg, &g_race) == 0) {
			return;
		}
		atomic_store(&g_race_busy, false);
	}
	g_malloc_submit(ch, io);
}

/* Put race_submit in front of malloc's submit_request (before any channel exists). */
static void race_wrap(struct keel_bdev *b)
{
	if (g_malloc_submit == NULL) {
		g_race_fn_table = *b->fn_table;
		g_malloc_submit = b->fn_table->submit_request;
		g_race_fn_table.submit_request = race_submit;
	}
	b->fn_table = &g_race_fn_table;
}

static void writer_start(void *arg)
{
	struct writer *w = arg;

	if (keel_bdev_open_ext("mtv", true, writer_event, w, &w->desc) != 0) {
		UT_MT_ERR();
		w->ended = true;
		atomic_fetch_add(&g_writers_ended, 1);
		return;
	}
	w->ch = keel_bdev_get_io_channel(w->desc);
	if (w->ch == NULL) {
		UT_MT_ERR();
	}
	atomic_fetch_add(&g_writers_running, 1);
	for (int i = 0; i < WQD; i++) {
		w->reqs[i].w = w;
		writer_submit(&w->reqs[i]);
	}
}

static void writers_start(uint64_t limit)
{
	atomic_store(&g_stop_writers, false);
	atomic_store(&g_write_limit, limit);
	atomic_store(&g_writers_running, 0);
	atomic_store(&g_writers_ended, 0);
	for (int i = 0; i < NWRITERS; i++) {
		struct writer *w = &g_writers[i];
		char name[32];

		w->idx = i;
		w->ended = false;
		w->inflight = 0;
		w->rng = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1) + (uint64_t)g_phase;
		for (int k = 0; k < WQD; k++) {
			if (w->reqs[k].buf == NULL) {
				w->reqs[k].buf = aligned_alloc(4096, WMAX);
			}
		}
		if (w->thread == NULL) {
			snprintf(name, sizeof(name), "mt_writer_%d", i);
			/* One writer per reactor. */
			w->thread = keel_thread_create(name, (uint32_t)i % keel_reactor_count());
		}
		if (i == 0 && g_racer.buf == NULL) {
			g_racer.w = w;
			g_racer.buf = aligned_alloc(4096, CHUNK);
		}
		if (w->thread == NULL || keel_thread_send_msg(w->thread, writer_start, w) != 0) {
			UT_MT_ERR();
			atomic_fetch_add(&g_writers_ended, 1);
		}
	}
}

/* ------------------------------------------------------------------------------ */
/* Replica comparison (main thread)                                                */
/* ------------------------------------------------------------------------------ */

struct cmp_state {
	bool active;
	bool done;
	int nrep;
	struct keel_bdev_desc *desc[3];
	struct keel_io_channel *ch[3];
	uint8_t *buf[3];
	uint64_t off;
	int pending;
	uint64_t bytes;
	bool mismatch_logged;
};

static struct cmp_state g_cmp;

static void cmp_next(void);

static void cmp_read_done(void *arg, int status)
{
	if (status != 0) {
		UT_MT_ERR();
	}
	if (--g_cmp.pending > 0) {
		return;
	}
	for (int i = 1; i < g_cmp.nrep; i++) {
		if (memcmp(g_cmp.buf[0], g_cmp.buf[i], CMP_CHUNK) != 0) {
			UT_MT_ERR();
			if (!g_cmp.mismatch_logged) {
				g_cmp.mismatch_logged = true;
				fprintf(stderr,
					"rebuild_mt_ut: %s and %s differ in the MiB at "
					"replica offset %lu\n",
					g_reps[0], g_reps[i], (unsigned long)g_cmp.off);
			}
		}
	}
	g_cmp.bytes += CMP_CHUNK;
	g_cmp.off += CMP_CHUNK;
	cmp_next();
}

static void cmp_finish(void)
{
	for (int i = 0; i < g_cmp.nrep; i++) {
		if (g_cmp.ch[i] != NULL) {
			keel_put_io_channel(g_cmp.ch[i]);
		}
		if (g_cmp.desc[i] != NULL) {
			keel_bdev_close(g_cmp.desc[i]);
		}
		free(g_cmp.buf[i]);
	}
	g_cmp.active = false;
	g_cmp.done = true;
}

static void cmp_next(void)
{
	if (g_cmp.off >= KEEL_NEXUS_DATA_OFFSET + VOL_SIZE) {
		cmp_finish();
		return;
	}
	g_cmp.pending = g_cmp.nrep;
	for (int i = 0; i < g_cmp.nrep; i++) {
		if (keel_bdev_read(g_cmp.desc[i], g_cmp.ch[i], g_cmp.buf[i], g_cmp.off, CMP_CHUNK,
				   cmp_read_done, NULL) != 0) {
			UT_MT_ERR();
			g_cmp.pending--;
		}
	}
	if (g_cmp.pending == 0) {
		cmp_finish();
	}
}

/* Compare the data regions (after the 1 MiB label area: labels differ per replica). */
static void cmp_start(int nrep)
{
	memset(&g_cmp, 0, sizeof(g_cmp));
	g_cmp.active = true;
	g_cmp.nrep = nrep;
	g_cmp.off = KEEL_NEXUS_DATA_OFFSET;
	for (int i = 0; i < nrep; i++) {
		/* Read-only: the nexus holds the write claim. */
		if (keel_bdev_open_ext(g_reps[i], false, writer_event, NULL, &g_cmp.desc[i]) != 0 ||
		    (g_cmp.ch[i] = keel_bdev_get_io_channel(g_cmp.desc[i])) == NULL ||
		    (g_cmp.buf[i] = aligned_alloc(4096, CMP_CHUNK)) == NULL) {
			UT_MT_ERR();
			cmp_finish();
			return;
		}
	}
	cmp_next();
}

/* ------------------------------------------------------------------------------ */
/* Main thread: phases                                                             */
/* ------------------------------------------------------------------------------ */

static void set_phase(enum phase p)
{
	g_phase = p;
	g_phase_start = keel_now_ns();
}

static void op_done(void *cb_arg, int status, const char *errmsg, struct keel_nexus *nexus)
{
	if (status != 0) {
		fprintf(stderr, "rebuild_mt_ut: phase %d: %s\n", g_phase, errmsg ? errmsg : "?");
		UT_MT_ERR();
	}
	g_op_busy = false;
}

struct find_job {
	const char *target;
	struct keel_rebuild_stats st;
	bool found;
};

static void find_job_fn(void *ctx, const struct keel_rebuild_stats *st)
{
	struct find_job *f = ctx;

	if (strcmp(st->target, f->target) == 0) {
		f->st = *st;
		f->found = true;
	}
}

/* The job of \p target ended and the replica is healthy. */
static bool rebuilt(const char *target, struct keel_rebuild_stats *st, bool *seen)
{
	struct keel_nexus *n = keel_nexus_get_by_name("mtv");
	struct keel_nexus_info *info;
	struct find_job f = {.target = target};
	bool healthy = false;

	if (n == NULL) {
		UT_MT_ERR();
		return true;
	}
	keel_rebuild_list("mtv", find_job_fn, &f);
	if (!f.found || f.st.state != KEEL_REBUILD_COMPLETED) {
		if (f.found &&
		    (f.st.state == KEEL_REBUILD_FAILED || f.st.state == KEEL_REBUILD_STOPPED)) {
			fprintf(stderr, "rebuild_mt_ut: rebuild of %s ended %s: %s\n", target,
				keel_rebuild_state_name(f.st.state), f.st.error);
			UT_MT_ERR();
			return true;
		}
		return false;
	}
	info = calloc(1, sizeof(*info));
	if (info == NULL) {
		UT_MT_ERR();
		return true;
	}
	keel_nexus_get_info(n, info);
	for (uint32_t i = 0; i < info->num_replicas; i++) {
		if (strcmp(info->replicas[i].bdev_name, target) == 0) {
			healthy = info->replicas[i].state == KEEL_NEXUS_REPLICA_HEALTHY;
		}
	}
	free(info);
	if (healthy) {
		*st = f.st;
		*seen = true;
	}
	return healthy;
}

static void fini_done(void *arg, int status)
{
	keel_reactors_stop();
}

static int main_poll(void *arg)
{
	struct keel_nexus *n;
	uint64_t rs, ec;
	uint32_t nbits, set;

	if (g_op_busy || g_cmp.active) {
		return KEEL_POLLER_IDLE;
	}
	if (g_phase != P_DONE && keel_now_ns() - g_phase_start > PHASE_TIMEOUT_NS) {
		fprintf(stderr, "rebuild_mt_ut: phase %d timed out\n", g_phase);
		UT_MT_ERR();
		atomic_store(&g_stop_writers, true);
		if (atomic_load(&g_writers_ended) < NWRITERS && g_phase != P_DESTROY) {
			return KEEL_POLLER_IDLE;
		}
		set_phase(P_DESTROY);
	}
	switch (g_phase) {
	case P_FULL_WAIT_LOAD:
		if (atomic_load(&g_writers_running) == NWRITERS &&
		    atomic_load(&g_write_ios) > 2000) {
			g_ios_mark = atomic_load(&g_write_ios);
			g_op_busy = true;
			if (keel_nexus_add_replica("mtv", "mt_r2", false, op_done, NULL) != 0) {
				UT_MT_ERR();
				g_op_busy = false;
			}
			set_phase(P_FULL_REBUILDING);
		}
		break;
	case P_FULL_REBUILDING:
		if (rebuilt("mt_r2", &g_full_st, &g_full_seen)) {
			g_ios_during_rebuild[0] = atomic_load(&g_write_ios) - g_ios_mark;
			g_races_seen[0] = atomic_load(&g_races);
			atomic_store(&g_stop_writers, true);
			set_phase(P_FULL_STOPPING);
		}
		break;
	case P_FULL_STOPPING:
		if (atomic_load(&g_writers_ended) == NWRITERS) {
			set_phase(P_FULL_COMPARE);
			cmp_start(3);
		}
		break;
	case P_FULL_COMPARE:
		g_compared_bytes[0] = g_cmp.bytes;
		set_phase(P_WAIT_CLEAR);
		break;
	case P_WAIT_CLEAR:
		/* Quiet volume, every replica healthy: the lazy clear empties the bitmap,
		 * so what is set later was written while the replica was out. */
		n = keel_nexus_get_by_name("mtv");
		if (n == NULL || keel_nexus_bitmap_info(n, &rs, &nbits, &set, &ec) != 0) {
			UT_MT_ERR();
			set_phase(P_DESTROY);
			break;
		}
		/* Waits for the state, however slow the machine: bits left set would
		 * make the partial rebuild below prove nothing (the phase timeout
		 * ends a hang). */
		if (set == 0) {
			g_bits_after_quiet = set;
			writers_start(PARTIAL_LIMIT);
			set_phase(P_PART_WAIT_LOAD);
		}
		break;
	case P_PART_WAIT_LOAD:
		if (atomic_load(&g_writers_running) == NWRITERS &&
		    atomic_load(&g_write_ios) > g_ios_mark + 1000) {
			g_op_busy = true;
			if (keel_nexus_fault_replica("mtv", "mt_r1", op_done, NULL) != 0) {
				UT_MT_ERR();
				g_op_busy = false;
			}
			g_ios_mark = atomic_load(&g_write_ios);
			set_phase(P_PART_OUT);
		}
		break;
	case P_PART_OUT:
		/* Writes go on without mt_r1 for a while, then it comes back in place. */
		if (atomic_load(&g_write_ios) > g_ios_mark + 2000) {
			g_op_busy = true;
			if (keel_nexus_add_replica("mtv", "mt_r1", false, op_done, NULL) != 0) {
				UT_MT_ERR();
				g_op_busy = false;
			}
			set_phase(P_PART_ADDING);
		}
		break;
	case P_PART_ADDING:
		/* Added (the job is queued): from now on write anywhere, also behind and
		 * ahead of the copy. */
		atomic_store(&g_write_limit, VOL_SIZE);
		g_ios_mark = atomic_load(&g_write_ios);
		set_phase(P_PART_REBUILDING);
		break;
	case P_PART_REBUILDING:
		if (rebuilt("mt_r1", &g_part_st, &g_part_seen)) {
			g_ios_during_rebuild[1] = atomic_load(&g_write_ios) - g_ios_mark;
			g_races_seen[1] = atomic_load(&g_races) - g_races_seen[0];
			atomic_store(&g_stop_writers, true);
			set_phase(P_PART_STOPPING);
		}
		break;
	case P_PART_STOPPING:
		if (atomic_load(&g_writers_ended) == NWRITERS) {
			set_phase(P_PART_COMPARE);
			cmp_start(3);
		}
		break;
	case P_PART_COMPARE:
		g_compared_bytes[1] = g_cmp.bytes;
		set_phase(P_DESTROY);
		break;
	case P_DESTROY:
		g_op_busy = true;
		set_phase(P_DONE);
		if (keel_nexus_destroy("mtv", false, op_done, NULL) != 0) {
			UT_MT_ERR();
			g_op_busy = false;
		}
		break;
	case P_DONE:
		keel_poller_unregister(&g_main_poller);
		keel_bdev_subsystem_fini(fini_done, NULL);
		return KEEL_POLLER_BUSY;
	default:
		break;
	}
	return KEEL_POLLER_BUSY;
}

static void created(void *cb_arg, int status, const char *errmsg, struct keel_nexus *nexus)
{
	if (status != 0) {
		fprintf(stderr, "rebuild_mt_ut: create: %s\n", errmsg ? errmsg : "?");
		UT_MT_ERR();
		set_phase(P_DONE);
		return;
	}
	writers_start(VOL_SIZE);
	set_phase(P_FULL_WAIT_LOAD);
}

static void init_done(void *arg, int status)
{
	struct keel_nexus_create_opts o = {
		.name = "mtv",
		.replicas = g_reps,
		.num_replicas = 2,
	};
	struct keel_rebuild_opts ro;
	struct keel_bdev *b;

	if (status != 0) {
		UT_MT_ERR();
		keel_reactors_stop();
		return;
	}
	/* Small segments and regions: many segments and bits for 32 MiB; a short clear
	 * period so the quiet phase empties the bitmap quickly. */
	keel_rebuild_get_opts(&ro);
	ro.segment_size = 64 * 1024;
	ro.tasks = 8;
	ro.bitmap = true;
	ro.bitmap_region_size = REGION;
	ro.bitmap_clear_ms = 100;
	if (keel_rebuild_set_opts(&ro) != 0) {
		UT_MT_ERR();
	}
	g_main_thread = keel_thread_get_current();
	for (int i = 0; i < 3; i++) {
		if (keel_bdev_malloc_create(g_reps[i], NULL, REP_BLOCKS, BS, &b) != 0) {
			UT_MT_ERR();
			continue;
		}
		race_wrap(b);
	}
	g_main_poller = keel_poller_register(main_poll, NULL, 1000, "rebuild_mt_main");
	set_phase(P_INIT);
	if (g_main_poller == NULL || keel_nexus_create(&o, created, NULL) != 0) {
		UT_MT_ERR();
		set_phase(P_DONE);
	}
}

static void mt_start(void *arg)
{
	keel_bdev_module_register(&keel_bdev_malloc_module);
	keel_bdev_module_register(&keel_bdev_nexus_module);
	if (keel_bdev_subsystem_init(init_done, NULL) != 0) {
		UT_MT_ERR();
		keel_reactors_stop();
	}
}

static void test_rebuild_mt(void)
{
	if (!ut_mt_run_reactors(mt_start, NULL)) {
		return;
	}
	if (atomic_load(&ut_mt_errors) != 0) {
		fprintf(stderr, "rebuild_mt_ut: %d violations, first at line %d\n",
			atomic_load(&ut_mt_errors), atomic_load(&ut_mt_first_err_line));
	}
	printf("\nfull rebuild: %lu blocks in %lu ms (%.0f MiB/s), %lu writes during it, "
	       "%u held back by a segment being copied\n",
	       (unsigned long)g_full_st.blocks_transferred, (unsigned long)g_full_st.duration_ms,
	       g_full_st.rate_mib_s, (unsigned long)g_ios_during_rebuild[0], g_races_seen[0]);
	printf("partial rebuild: %lu of %lu blocks (total %lu) in %lu ms, %lu writes during it, "
	       "%u held back by a segment being copied\n",
	       (unsigned long)g_part_st.blocks_transferred, (unsigned long)(VOL_SIZE / BS),
	       (unsigned long)g_part_st.blocks_total, (unsigned long)g_part_st.duration_ms,
	       (unsigned long)g_ios_during_rebuild[1], g_races_seen[1]);
	CU_ASSERT_EQUAL(atomic_load(&ut_mt_errors), 0);
	CU_ASSERT_EQUAL(g_phase, P_DONE);
	/* Full rebuild: copied everything, under load. */
	CU_ASSERT(g_full_seen);
	CU_ASSERT(!g_full_st.is_partial);
	CU_ASSERT_EQUAL(g_full_st.blocks_transferred, VOL_SIZE / BS);
	CU_ASSERT(g_ios_during_rebuild[0] > 0);
	/* Writes landed in segments while they were being copied, and waited. */
	CU_ASSERT(g_races_seen[0] > 0);
	CU_ASSERT_EQUAL(g_compared_bytes[0], VOL_SIZE);
	/* Partial rebuild: only the regions written while it was out. */
	CU_ASSERT_EQUAL(g_bits_after_quiet, 0);
	CU_ASSERT(g_part_seen);
	CU_ASSERT(g_part_st.is_partial);
	CU_ASSERT(g_part_st.blocks_total <= PARTIAL_LIMIT / BS);
	CU_ASSERT(g_part_st.blocks_total > 0);
	CU_ASSERT(g_races_seen[1] > 0);
	CU_ASSERT_EQUAL(g_compared_bytes[1], VOL_SIZE);
	for (int i = 0; i < NWRITERS; i++) {
		for (int k = 0; k < WQD; k++) {
			free(g_writers[i].reqs[k].buf);
		}
	}
	free(g_racer.buf);
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"full_and_partial_rebuild_under_load", test_rebuild_mt},
		{NULL, NULL},
	};

	keel_log_set_level(KEEL_LOG_WARN);
	return ut_cunit_run("rebuild_mt", tests);
}
