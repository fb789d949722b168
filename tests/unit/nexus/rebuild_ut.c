/*
 * Rebuild engine and write-intent bitmap unit tests.
 *
 * Deterministic harness (the job runs on the owner thread when there are no reactors),
 * malloc replicas, error bdevs where a replica must fail.
 */
#include <errno.h>
#include <malloc.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#ifdef __SANITIZE_ADDRESS__
/* The ASan runtime's (gcc ships no header for it). */
size_t __sanitizer_get_current_allocated_bytes(void);
#endif

#include "keel/bdev.h"
#include "keel/bdev_module.h"
#include "keel/log.h"
#include "keel/nexus.h"
#include "keel/reactor.h"

#include "bdev/nexus/nexus_bitmap_format.h"
#include "bdev/nexus/nexus_internal.h"
#include "bdev/nexus/nexus_label.h"
#include "nexus_ut_common.h"
#include "reactor/reactor_internal.h"
#include "ut_cunit.h"
#include "ut_threads.h"

/* ------------------------------------------------------------------------------ */
/* Rebuild helpers                                                                 */
/* ------------------------------------------------------------------------------ */

#define VOL_BYTES (REPLICA_BLOCKS * BS - DATA_OFF)

/* Let \p ms of mock time pass in 1 ms steps, every thread polled after each. */
static void run_ms(uint32_t ms)
{
	for (uint32_t i = 0; i < ms; i++) {
		ut_time_advance_us(1000);
		ut_poll_threads();
	}
}

static struct keel_rebuild_stats g_st;
static bool g_st_found;

static void st_cb(void *ctx, const struct keel_rebuild_stats *st)
{
	const char *target = ctx;

	if (strcmp(st->target, target) == 0) {
		g_st = *st;
		g_st_found = true;
	}
}

static struct keel_rebuild_stats *stats_of(const char *vol, const char *target)
{
	g_st_found = false;
	ut_set_thread(0);
	keel_rebuild_list(vol, st_cb, (void *)target);
	CU_ASSERT_FATAL(g_st_found);
	return &g_st;
}

static bool job_state_is(const char *vol, const char *target, enum keel_rebuild_state st)
{
	g_st_found = false;
	ut_set_thread(0);
	keel_rebuild_list(vol, st_cb, (void *)target);
	return g_st_found && g_st.state == st;
}

static void poll_until(const char *vol, const char *target, enum keel_rebuild_state st)
{
	for (int i = 0; i < 20000 && !job_state_is(vol, target, st); i++) {
		ut_time_advance_us(100);
		ut_poll_threads();
	}
	CU_ASSERT_FATAL(job_state_is(vol, target, st));
	/* let the completion step (labels) run */
	run_ms(50);
}

/* Compare the data areas of two replicas; \return number of differing 4 KiB blocks. */
static uint64_t diff_replicas(const char *a, const char *b, uint64_t bytes)
{
	uint8_t *ba = abuf(MB), *bb = abuf(MB);
	uint64_t bad = 0;

	for (uint64_t off = 0; off < bytes; off += MB) {
		uint64_t len = bytes - off < MB ? bytes - off : MB;

		CU_ASSERT_FATAL(raw_io(a, false, ba, DATA_OFF + off, len) == 0);
		CU_ASSERT_FATAL(raw_io(b, false, bb, DATA_OFF + off, len) == 0);
		for (uint64_t k = 0; k < len; k += 4096) {
			if (memcmp(ba + k, bb + k, 4096) != 0) {
				bad++;
			}
		}
	}
	free(ba);
	free(bb);
	return bad;
}

static void set_opts(uint32_t seg, uint32_t tasks, bool autob, uint64_t region, uint32_t clear_ms)
{
	struct keel_rebuild_opts o;

	keel_rebuild_get_opts(&o);
	o.segment_size = seg;
	o.tasks = tasks;
	o.auto_rebuild = autob;
	o.bitmap = true;
	o.bitmap_region_size = region;
	o.bitmap_clear_ms = clear_ms;
	o.rate_limit_mib_s = 0;
	o.max_concurrent = 4;
	CU_ASSERT_FATAL(keel_rebuild_set_opts(&o) == 0);
}

/* Write random 4 KiB blocks (seeded) through the volume; several in flight while
 * the harness polls, so they interleave with rebuild segments. */
static void random_writes(struct vol_user *u, uint32_t count, uint32_t seed, uint64_t limit)
{
	enum {
		QD = 8
	};
	uint8_t *bufs = abuf(QD * 4096);
	struct io_res res[QD];
	uint32_t next = 0, done = 0;

	memset(res, 0, sizeof(res));
	srand(seed);
	for (uint32_t i = 0; i < QD && next < count; i++, next++) {
		uint64_t off = ((uint64_t)rand() % (limit / 4096)) * 4096;

		fill(bufs + i * 4096, 4096, seed + next);
		CU_ASSERT_FATAL(submit(u, i % u->nthreads, KEEL_BDEV_IO_WRITE, bufs + i * 4096, off,
				       4096, &res[i]) == 0);
	}
	while (done < count) {
		ut_time_advance_us(50);
		ut_poll_threads();
		for (uint32_t i = 0; i < QD; i++) {
			if (res[i].done) {
				CU_ASSERT(res[i].status == 0);
				res[i].done = 0;
				done++;
				if (next < count) {
					uint64_t off = ((uint64_t)rand() % (limit / 4096)) * 4096;

					fill(bufs + i * 4096, 4096, seed + next);
					CU_ASSERT_FATAL(submit(u, i % u->nthreads,
							       KEEL_BDEV_IO_WRITE, bufs + i * 4096,
							       off, 4096, &res[i]) == 0);
					next++;
				}
			}
		}
	}
	ut_set_thread(0);
	free(bufs);
}

static int add_rep(const char *vol, const char *bdev)
{
	struct op_res r = {0};
	int rc;

	ut_set_thread(0);
	rc = keel_nexus_add_replica(vol, bdev, false, op_cb, &r);
	if (rc != 0) {
		return rc;
	}
	return wait_res(&r);
}

/* ------------------------------------------------------------------------------ */
/* Tests                                                                           */
/* ------------------------------------------------------------------------------ */

static void test_full_rebuild_under_writes(void)
{
	const char *reps[] = {"m0"};
	struct op_res r;
	struct vol_user u;
	struct keel_rebuild_stats *st;
	uint8_t *buf;

	setup(2);
	set_opts(128 * 1024, 16, true, 1 * MB, 100000);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_malloc("m1", REPLICA_BLOCKS, BS);
	CU_ASSERT_FATAL(create_vol("vol", reps, 1, false, &r) == 0);
	user_open(&u, "vol", 2);
	buf = abuf(VOL_BYTES);
	fill(buf, VOL_BYTES, 7);
	CU_ASSERT(do_io(&u, 0, KEEL_BDEV_IO_WRITE, buf, 0, VOL_BYTES) == 0);
	/* m1 holds garbage that differs */
	fill(buf, 4 * MB, 99);
	CU_ASSERT(raw_io("m1", true, buf, DATA_OFF, 4 * MB) == 0);

	CU_ASSERT(add_rep("vol", "m1") == 0);
	(void)stats_of("vol", "m1"); /* a job exists */
	random_writes(&u, 600, 1234, VOL_BYTES);
	poll_until("vol", "m1", KEEL_REBUILD_COMPLETED);
	st = stats_of("vol", "m1");
	CU_ASSERT(st->blocks_done == st->blocks_total);
	CU_ASSERT(st->blocks_transferred == VOL_BYTES / BS);
	CU_ASSERT(!st->is_partial);
	CU_ASSERT(st->progress_pct == 100);
	CU_ASSERT(strcmp(st->source, "m0") == 0);
	CU_ASSERT(rep_info(info_of("vol"), "m1")->state == KEEL_NEXUS_REPLICA_HEALTHY);
	CU_ASSERT(info_of("vol")->state == KEEL_NEXUS_ONLINE);
	CU_ASSERT(diff_replicas("m0", "m1", VOL_BYTES) == 0);
	/* and writes after completion keep them equal */
	random_writes(&u, 100, 555, VOL_BYTES);
	CU_ASSERT(diff_replicas("m0", "m1", VOL_BYTES) == 0);
	free(buf);
	user_close(&u);
	CU_ASSERT(destroy_vol("vol", false) == 0);
	teardown();
}

static void test_control(void)
{
	const char *reps[] = {"m0"};
	struct op_res r;
	uint64_t done;

	setup(2);
	set_opts(64 * 1024, 2, true, 1 * MB, 100000);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_malloc("m1", REPLICA_BLOCKS, BS);
	CU_ASSERT_FATAL(create_vol("vol", reps, 1, false, &r) == 0);
	ut_set_thread(0);
	/* no rebuild engine action on a healthy replica */
	CU_ASSERT(keel_rebuild_start("vol", "m0") == -EINVAL);
	CU_ASSERT(keel_rebuild_pause("vol", "nope") == -ENODEV);
	CU_ASSERT(keel_rebuild_start("nope", "m0") == -ENODEV);

	memset(&r, 0, sizeof(r));
	CU_ASSERT(keel_nexus_add_replica("vol", "m1", false, op_cb, &r) == 0);
	/* pause as soon as the add step is done */
	while (!r.done) {
		ut_poll_thread(0);
	}
	CU_ASSERT(r.status == 0);
	CU_ASSERT(keel_rebuild_pause("vol", "m1") == 0);
	run_ms(100);
	CU_ASSERT(job_state_is("vol", "m1", KEEL_REBUILD_PAUSED));
	done = stats_of("vol", "m1")->blocks_done;
	CU_ASSERT(done < VOL_BYTES / BS);
	CU_ASSERT(stats_of("vol", "m1")->tasks_active == 0);
	run_ms(100);
	CU_ASSERT(stats_of("vol", "m1")->blocks_done == done); /* paused: no progress */
	CU_ASSERT(keel_rebuild_resume("vol", "m1") == 0);
	CU_ASSERT(keel_rebuild_resume("vol", "m1") == -EINVAL);
	ut_poll_thread(0);
	ut_poll_thread(0);
	CU_ASSERT(keel_rebuild_stop("vol", "m1") == 0);
	poll_until("vol", "m1", KEEL_REBUILD_STOPPED);
	CU_ASSERT(rep_info(info_of("vol"), "m1")->state == KEEL_NEXUS_REPLICA_REBUILDING);
	CU_ASSERT(keel_rebuild_stop("vol", "m1") == -EALREADY);
	/* start again: runs to completion */
	CU_ASSERT(keel_rebuild_start("vol", "m1") == 0);
	CU_ASSERT(keel_rebuild_start("vol", "m1") == -EBUSY);
	poll_until("vol", "m1", KEEL_REBUILD_COMPLETED);
	CU_ASSERT(rep_info(info_of("vol"), "m1")->state == KEEL_NEXUS_REPLICA_HEALTHY);
	CU_ASSERT(diff_replicas("m0", "m1", VOL_BYTES) == 0);
	CU_ASSERT(destroy_vol("vol", false) == 0);
	teardown();
}

static void test_rate_limit(void)
{
	const char *reps[] = {"m0"};
	struct op_res r;
	struct keel_rebuild_opts o;
	uint64_t bytes;

	setup(1);
	set_opts(64 * 1024, 4, true, 1 * MB, 100000);
	keel_rebuild_get_opts(&o);
	o.rate_limit_mib_s = 1.0; /* 1 MiB per (mock) second */
	CU_ASSERT_FATAL(keel_rebuild_set_opts(&o) == 0);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_malloc("m1", REPLICA_BLOCKS, BS);
	CU_ASSERT_FATAL(create_vol("vol", reps, 1, false, &r) == 0);
	CU_ASSERT(add_rep("vol", "m1") == 0);
	run_ms(2000); /* 2 s of mock time */
	bytes = stats_of("vol", "m1")->blocks_done * BS;
	fprintf(stderr, "rate limit 1 MiB/s: %.2f MiB in 2 s\n", (double)bytes / MB);
	CU_ASSERT(bytes >= MB && bytes <= 3 * MB);
	CU_ASSERT(job_state_is("vol", "m1", KEEL_REBUILD_RUNNING));
	CU_ASSERT(keel_rebuild_set_rate("vol", "m1", 0) == 0);
	poll_until("vol", "m1", KEEL_REBUILD_COMPLETED);
	CU_ASSERT(diff_replicas("m0", "m1", VOL_BYTES) == 0);
	CU_ASSERT(destroy_vol("vol", false) == 0);
	set_opts(128 * 1024, 16, true, 2 * MB, 5000);
	teardown();
}

/* A rate limit becomes an integer byte rate: values that do not fit (or NaN) are
 * refused by both calls, and the options stay as they were. */
static void test_rate_range(void)
{
	static const double bad[] = {-1.0, 1e300,    KEEL_REBUILD_RATE_MAX_MIB_S * 2,
				     NAN,  INFINITY, -INFINITY};
	const char *reps[] = {"m0"};
	struct keel_rebuild_opts o, now;
	struct op_res r;

	setup(1);
	set_opts(64 * 1024, 4, true, 1 * MB, 100000);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		keel_rebuild_get_opts(&o);
		o.rate_limit_mib_s = bad[i];
		CU_ASSERT(keel_rebuild_set_opts(&o) == -EINVAL);
		keel_rebuild_get_opts(&now);
		CU_ASSERT(now.rate_limit_mib_s == 0);
	}
	keel_rebuild_get_opts(&o);
	o.rate_limit_mib_s = KEEL_REBUILD_RATE_MAX_MIB_S;
	CU_ASSERT(keel_rebuild_set_opts(&o) == 0);
	/* A job created at the largest limit converts it without overflow (UBSan's
	 * float-cast-overflow check runs in the sanitizer build). */
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_malloc("m1", REPLICA_BLOCKS, BS);
	CU_ASSERT_FATAL(create_vol("vol", reps, 1, false, &r) == 0);
	CU_ASSERT(add_rep("vol", "m1") == 0);
	CU_ASSERT(stats_of("vol", "m1")->rate_limit_mib_s == KEEL_REBUILD_RATE_MAX_MIB_S);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		CU_ASSERT(keel_rebuild_set_rate("vol", "m1", bad[i]) == -EINVAL);
	}
	CU_ASSERT(stats_of("vol", "m1")->rate_limit_mib_s == KEEL_REBUILD_RATE_MAX_MIB_S);
	CU_ASSERT(keel_rebuild_set_rate("vol", "m1", 0.5) == 0);
	CU_ASSERT(stats_of("vol", "m1")->rate_limit_mib_s == 0.5);
	CU_ASSERT(keel_rebuild_set_rate("vol", "m1", 0) == 0);
	poll_until("vol", "m1", KEEL_REBUILD_COMPLETED);
	CU_ASSERT(destroy_vol("vol", false) == 0);
	set_opts(128 * 1024, 16, true, 2 * MB, 5000);
	teardown();
}

static void test_source_failure(void)
{
	const char *reps2[] = {"e0", "m1"};
	const char *reps1[] = {"e0"};
	struct op_res r;
	struct vol_user u;
	uint8_t *buf;

	/* with another healthy source: switch and complete */
	setup(2);
	set_opts(64 * 1024, 4, true, 1 * MB, 100000);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_err("e0", "m0");
	mk_malloc("m1", REPLICA_BLOCKS, BS);
	mk_malloc("m2", REPLICA_BLOCKS, BS);
	CU_ASSERT_FATAL(create_vol("vol", reps2, 2, false, &r) == 0);
	user_open(&u, "vol", 2);
	buf = abuf(VOL_BYTES);
	fill(buf, VOL_BYTES, 3);
	CU_ASSERT(do_io(&u, 0, KEEL_BDEV_IO_WRITE, buf, 0, VOL_BYTES) == 0);
	inject("e0", KEEL_BDEV_IO_READ, -EIO);
	CU_ASSERT(add_rep("vol", "m2") == 0);
	random_writes(&u, 200, 77, VOL_BYTES);
	poll_until("vol", "m2", KEEL_REBUILD_COMPLETED);
	CU_ASSERT(strcmp(stats_of("vol", "m2")->source, "m1") == 0);
	CU_ASSERT(rep_info(info_of("vol"), "e0")->state == KEEL_NEXUS_REPLICA_FAULTED);
	CU_ASSERT(rep_info(info_of("vol"), "m2")->state == KEEL_NEXUS_REPLICA_HEALTHY);
	CU_ASSERT(diff_replicas("m1", "m2", VOL_BYTES) == 0);
	user_close(&u);
	CU_ASSERT(destroy_vol("vol", false) == 0);
	teardown();

	/* without: the job fails, the volume keeps its last healthy replica */
	setup(2);
	set_opts(64 * 1024, 4, true, 1 * MB, 100000);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_err("e0", "m0");
	mk_malloc("m2", REPLICA_BLOCKS, BS);
	CU_ASSERT_FATAL(create_vol("vol", reps1, 1, false, &r) == 0);
	inject("e0", KEEL_BDEV_IO_READ, -EIO);
	CU_ASSERT(add_rep("vol", "m2") == 0);
	poll_until("vol", "m2", KEEL_REBUILD_FAILED);
	CU_ASSERT(stats_of("vol", "m2")->error[0] != '\0');
	CU_ASSERT(rep_info(info_of("vol"), "m2")->state != KEEL_NEXUS_REPLICA_HEALTHY);
	free(buf);
	CU_ASSERT(destroy_vol("vol", false) == 0);
	teardown();
}

static void test_target_failure(void)
{
	const char *reps[] = {"m0"};
	struct op_res r;

	setup(2);
	set_opts(64 * 1024, 4, true, 1 * MB, 100000);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_malloc("m1", REPLICA_BLOCKS, BS);
	mk_err("e1", "m1");
	CU_ASSERT_FATAL(create_vol("vol", reps, 1, false, &r) == 0);
	memset(&r, 0, sizeof(r));
	CU_ASSERT(keel_nexus_add_replica("vol", "e1", false, op_cb, &r) == 0);
	while (!r.done) {
		ut_poll_thread(0);
	}
	/* the label and bitmap are written; data writes fail from now on */
	inject("e1", KEEL_BDEV_IO_WRITE, -EIO);
	poll_until("vol", "e1", KEEL_REBUILD_FAILED);
	CU_ASSERT(strstr(stats_of("vol", "e1")->error, "e1") != NULL);
	CU_ASSERT(rep_info(info_of("vol"), "e1")->state == KEEL_NEXUS_REPLICA_FAULTED);
	CU_ASSERT(info_of("vol")->state == KEEL_NEXUS_DEGRADED);
	CU_ASSERT(destroy_vol("vol", false) == 0);
	teardown();
}

/*
 * Start of the bitmap tests: 2 harness threads, 1 MiB regions cleared after 10 ms
 * quiet, volume "vol" mirrored on fresh m0 and m1 and opened by \p u on both threads,
 * written in full with pattern \p seed, then quiet until every bit is clear.
 * \return the buffer written (VOL_BYTES bytes; free it).
 */
static uint8_t *clean_mirror_start(struct vol_user *u, uint32_t seed)
{
	const char *reps[] = {"m0", "m1"};
	struct op_res r;
	uint8_t *buf;

	setup(2);
	set_opts(128 * 1024, 8, true, 1 * MB, 10);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_malloc("m1", REPLICA_BLOCKS, BS);
	CU_ASSERT_FATAL(create_vol("vol", reps, 2, false, &r) == 0);
	user_open(u, "vol", 2);
	buf = abuf(VOL_BYTES);
	fill(buf, VOL_BYTES, seed);
	CU_ASSERT(do_io(u, 0, KEEL_BDEV_IO_WRITE, buf, 0, VOL_BYTES) == 0);
	/* lazy clear: quiet for two periods clears every bit */
	run_ms(100);
	return buf;
}

/*
 * A quiet volume's bitmap wakes no one: once a clear pass found nothing set, no thread
 * has a deadline left (1000 volumes each with a 5 s timer were 200 wake-ups a second),
 * and the next write arms the clear again.
 */
static void test_bitmap_clear_disarms(void)
{
	struct vol_user u;
	uint64_t rs, ec;
	uint32_t nbits, set, i;
	uint8_t *buf;

	buf = clean_mirror_start(&u, 3);
	run_ms(100); /* a pass that finds nothing disarms the timer */
	CU_ASSERT(keel_nexus_bitmap_info(keel_nexus_get_by_name("vol"), &rs, &nbits, &set, &ec) ==
		  0);
	CU_ASSERT(set == 0);
	for (i = 0; i < 2; i++) {
		CU_ASSERT_EQUAL(krt_poller_next_deadline(ut_thread(i)), UINT64_MAX);
	}
	/* A write sets a bit and arms the clear again; quiet clears it. */
	CU_ASSERT(do_io(&u, 1, KEEL_BDEV_IO_WRITE, buf, 3 * MB, 4096) == 0);
	CU_ASSERT(keel_nexus_bitmap_info(keel_nexus_get_by_name("vol"), &rs, &nbits, &set, &ec) ==
		  0);
	CU_ASSERT(set == 1);
	CU_ASSERT(krt_poller_next_deadline(ut_thread(0)) != UINT64_MAX ||
		  krt_poller_next_deadline(ut_thread(1)) != UINT64_MAX);
	run_ms(100);
	CU_ASSERT(keel_nexus_bitmap_info(keel_nexus_get_by_name("vol"), &rs, &nbits, &set, &ec) ==
		  0);
	CU_ASSERT(set == 0);
	run_ms(100);
	for (i = 0; i < 2; i++) {
		CU_ASSERT_EQUAL(krt_poller_next_deadline(ut_thread(i)), UINT64_MAX);
	}
	user_close(&u);
	CU_ASSERT(destroy_vol("vol", false) == 0);
	free(buf);
	set_opts(128 * 1024, 16, true, 2 * MB, 5000);
	teardown();
}

/*
 * Destroy right after create, while the new bitmap's first full write is still on
 * its way to the replicas: the destroy waits for it. It used to release the replicas
 * under it ("channel released with 1 requests outstanding") and free the bitmap the
 * write then completed into (keeld crashed in e2e test_volume, once).
 */
static void test_destroy_waits_for_bitmap_io(void)
{
	const char *reps[] = {"e0", "e1"};
	struct keel_bdev_error_rule slow = {
		.io_type = KEEL_BDEV_IO_WRITE,
		.error = 0,
		.delay_us = 50000,
	};
	struct op_res r;

	setup(2);
	set_opts(128 * 1024, 8, true, 1 * MB, 10);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_malloc("m1", REPLICA_BLOCKS, BS);
	mk_err("e0", "m0");
	mk_err("e1", "m1");
	/* Writes take 50 ms of the mock clock while the volume is created, so the
	 * bitmap's first full write (issued as the create ends) is still in flight when
	 * the create's answer comes; later writes (the destroy's labels) are fast and
	 * would overtake it, as aio completions can. */
	CU_ASSERT_FATAL(keel_bdev_error_inject("e0", &slow) == 0);
	CU_ASSERT_FATAL(keel_bdev_error_inject("e1", &slow) == 0);
	CU_ASSERT_FATAL(create_vol("vol", reps, 2, false, &r) == 0);
	CU_ASSERT(nexus_bitmap_busy((struct nexus *)keel_nexus_get_by_name("vol")));
	CU_ASSERT(keel_bdev_error_clear("e0") == 0);
	CU_ASSERT(keel_bdev_error_clear("e1") == 0);
	CU_ASSERT(destroy_vol("vol", false) == 0);
	CU_ASSERT(keel_nexus_get_by_name("vol") == NULL);
	set_opts(128 * 1024, 16, true, 2 * MB, 5000);
	teardown();
}

/* Write to a few regions while m1 is out, re-add it: only those are copied. */
static void test_partial_rebuild(void)
{
	struct op_res r;
	struct vol_user u;
	struct keel_rebuild_stats *st;
	uint8_t *buf;
	uint64_t rs, ec;
	uint32_t nbits, set;

	buf = clean_mirror_start(&u, 5);
	CU_ASSERT(keel_nexus_bitmap_info(keel_nexus_get_by_name("vol"), &rs, &nbits, &set, &ec) ==
		  0);
	CU_ASSERT(rs == MB && set == 0);
	CU_ASSERT(member_call(keel_nexus_fault_replica, "vol", "m1", &r) == 0);
	/* two regions dirtied while m1 is out */
	fill(buf, 8192, 11);
	CU_ASSERT(do_io(&u, 1, KEEL_BDEV_IO_WRITE, buf, 2 * MB + 4096, 8192) == 0);
	CU_ASSERT(do_io(&u, 0, KEEL_BDEV_IO_WRITE, buf, 5 * MB, 4096) == 0);
	run_ms(100);
	CU_ASSERT(keel_nexus_bitmap_info(keel_nexus_get_by_name("vol"), &rs, &nbits, &set, &ec) ==
		  0);
	CU_ASSERT(set == 2); /* degraded: never cleared */
	CU_ASSERT(diff_replicas("m0", "m1", VOL_BYTES) > 0);
	CU_ASSERT(add_rep("vol", "m1") == 0);
	poll_until("vol", "m1", KEEL_REBUILD_COMPLETED);
	st = stats_of("vol", "m1");
	CU_ASSERT(st->is_partial);
	CU_ASSERT(st->blocks_total == 2 * MB / BS);
	CU_ASSERT(st->blocks_transferred == 2 * MB / BS);
	CU_ASSERT(rep_info(info_of("vol"), "m1")->state == KEEL_NEXUS_REPLICA_HEALTHY);
	CU_ASSERT(info_of("vol")->num_replicas == 2);
	CU_ASSERT(diff_replicas("m0", "m1", VOL_BYTES) == 0);
	user_close(&u);
	CU_ASSERT(destroy_vol("vol", false) == 0);
	free(buf);
	set_opts(128 * 1024, 16, true, 2 * MB, 5000);
	teardown();
}

/* The bitmap survives a stop/assembly: the stale replica found at assembly is
 * re-added and gets a partial rebuild. */
static void test_bitmap_persisted(void)
{
	const char *reps[] = {"m0", "m1"};
	struct op_res r;
	struct vol_user u;
	struct keel_rebuild_stats *st;
	uint8_t *buf;
	uint64_t rs, ec;
	uint32_t nbits, set;

	buf = clean_mirror_start(&u, 9);
	CU_ASSERT(member_call(keel_nexus_fault_replica, "vol", "m1", &r) == 0);
	fill(buf, 4096, 12);
	CU_ASSERT(do_io(&u, 0, KEEL_BDEV_IO_WRITE, buf, 3 * MB, 4096) == 0);
	user_close(&u);
	CU_ASSERT(destroy_vol("vol", false) == 0);

	/* "restart": assemble from the labels on the same bdevs */
	CU_ASSERT_FATAL(open_vol("vol", reps, 2, false, &r) == 0);
	CU_ASSERT(keel_nexus_bitmap_info(keel_nexus_get_by_name("vol"), &rs, &nbits, &set, &ec) ==
		  0);
	CU_ASSERT(set == 1);
	{
		struct nexus_label l;

		CU_ASSERT(read_label("m0", &l) == 0);
		CU_ASSERT(l.version == NEXUS_LABEL_VERSION && l.bitmap_chunk_kib == 1024);
		CU_ASSERT(l.bitmap_offset == 64 * 1024 && l.bitmap_len > 0);
	}
	poll_until("vol", "m1", KEEL_REBUILD_COMPLETED);
	st = stats_of("vol", "m1");
	CU_ASSERT(st->is_partial);
	CU_ASSERT(st->blocks_transferred == MB / BS);
	CU_ASSERT(rep_info(info_of("vol"), "m1")->state == KEEL_NEXUS_REPLICA_HEALTHY);
	CU_ASSERT(diff_replicas("m0", "m1", VOL_BYTES) == 0);
	CU_ASSERT(destroy_vol("vol", false) == 0);
	free(buf);
	set_opts(128 * 1024, 16, true, 2 * MB, 5000);
	teardown();
}

/* On-disk bitmap of the test volumes: 512-byte blocks, so 4 KiB bitmap blocks. */
#define BM_OFF (64u * 1024u)
#define BM_BLK 4096u

/* m1 is faulted, region 3 written while it is out, the volume stopped: m1 comes
 * back stale at the next assembly and region 3 is the one it misses. */
static void stop_with_m1_stale(uint32_t seed)
{
	struct op_res r;
	struct vol_user u;
	uint8_t *buf;

	buf = clean_mirror_start(&u, seed);
	CU_ASSERT(member_call(keel_nexus_fault_replica, "vol", "m1", &r) == 0);
	fill(buf, 4096, seed + 1);
	CU_ASSERT(do_io(&u, 0, KEEL_BDEV_IO_WRITE, buf, 3 * MB, 4096) == 0);
	user_close(&u);
	CU_ASSERT(destroy_vol("vol", false) == 0);
	free(buf);
}

/* Assemble again and let m1's rebuild finish; \return its stats. */
static struct keel_rebuild_stats *reopen_and_rebuild(void)
{
	const char *reps[] = {"m0", "m1"};
	struct op_res r;

	CU_ASSERT_FATAL(open_vol("vol", reps, 2, false, &r) == 0);
	poll_until("vol", "m1", KEEL_REBUILD_COMPLETED);
	CU_ASSERT(rep_info(info_of("vol"), "m1")->state == KEEL_NEXUS_REPLICA_HEALTHY);
	return stats_of("vol", "m1");
}

/* The bitmap on \p bdev: its header decodes and every bit block checks. */
static bool bitmap_on_disk_valid(const char *bdev)
{
	uint8_t *b = abuf(2 * BM_BLK);
	struct nexus_bm_header h;
	bool ok;

	CU_ASSERT_FATAL(raw_io(bdev, false, b, BM_OFF, 2 * BM_BLK) == 0);
	ok = nexus_bm_header_decode(b, BM_BLK, &h, NULL, 0) == 0 && h.block_size == BM_BLK &&
	     nexus_bm_block_check(b + BM_BLK, BM_BLK, 0, h.volume_uuid) == 0;
	free(b);
	return ok;
}

/* m1's rebuild copied the whole volume, the replicas are identical and both hold a
 * valid bitmap again (rewritten); then stop and tear down. */
static void expect_whole_copy(struct keel_rebuild_stats *st)
{
	CU_ASSERT(st->blocks_transferred == VOL_BYTES / BS);
	CU_ASSERT(diff_replicas("m0", "m1", VOL_BYTES) == 0);
	CU_ASSERT(bitmap_on_disk_valid("m0"));
	CU_ASSERT(bitmap_on_disk_valid("m1"));
	CU_ASSERT(destroy_vol("vol", false) == 0);
	set_opts(128 * 1024, 16, true, 2 * MB, 5000);
	teardown();
}

/*
 * Bit corruption in a bitmap block whose header is intact: region 3's bit, set
 * because m1 missed a write there, reads back clear. A partial rebuild trusting it
 * would skip region 3 and the replicas would silently differ; the block fails its
 * checksum instead, counts as all set, and every region it holds is copied.
 */
static void test_bitmap_block_corrupt(void)
{
	struct keel_rebuild_stats *st;
	uint8_t *b = abuf(BM_BLK);

	stop_with_m1_stale(41);
	CU_ASSERT_FATAL(raw_io("m0", false, b, BM_OFF + BM_BLK, BM_BLK) == 0);
	CU_ASSERT(b[0] == 0x08); /* region 3 */
	b[0] = 0;
	CU_ASSERT_FATAL(raw_io("m0", true, b, BM_OFF + BM_BLK, BM_BLK) == 0);
	free(b);
	st = reopen_and_rebuild();
	CU_ASSERT(st->is_partial); /* the header stays trusted: all 7 regions of the block */
	expect_whole_copy(st);
}

/* A version 1 bitmap (no block checksums) is not trusted: the stale replica gets a
 * full rebuild, and the bitmap is rewritten in the current version. */
static void test_bitmap_old_version(void)
{
	struct keel_rebuild_stats *st;
	uint8_t *b = abuf(BM_BLK);
	uint32_t crc;

	stop_with_m1_stale(51);
	CU_ASSERT_FATAL(raw_io("m0", false, b, BM_OFF, BM_BLK) == 0);
	b[8] = 1; /* version */
	memset(b + 12, 0, 4);
	crc = nexus_crc32c(0, b, 64);
	for (int i = 0; i < 4; i++) {
		b[12 + i] = (uint8_t)(crc >> (8 * i));
	}
	CU_ASSERT_FATAL(raw_io("m0", true, b, BM_OFF, BM_BLK) == 0);
	free(b);
	st = reopen_and_rebuild();
	CU_ASSERT(!st->is_partial);
	expect_whole_copy(st);
}

/* Copy a whole replica (labels, bitmap, data) from one bdev to another. */
static void clone_replica(const char *from, const char *to)
{
	uint64_t bytes = (uint64_t)REPLICA_BLOCKS * BS;
	uint8_t *b = abuf(MB);

	for (uint64_t off = 0; off < bytes; off += MB) {
		CU_ASSERT_FATAL(raw_io(from, false, b, off, MB) == 0);
		CU_ASSERT_FATAL(raw_io(to, true, b, off, MB) == 0);
	}
	free(b);
}

/* md's resync after an unclean shutdown: keeld "dies" with the labels dirty and
 * the two healthy replicas differ in a region whose bit is set (a write that
 * reached one replica only). At assembly the first healthy replica is copied to
 * the other over the set regions only, and they end identical. */
static void test_unclean_resync(void)
{
	const char *reps[] = {"m0", "m1"};
	const char *crashed[] = {"c0", "c1"};
	struct op_res r;
	struct vol_user u;
	struct keel_rebuild_stats *st;
	struct keel_nexus_info *info;
	uint8_t *buf;
	uint64_t rs, ec;
	uint32_t nbits, set;

	setup(2);
	set_opts(128 * 1024, 8, true, 1 * MB, 5000); /* no clear during the test */
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_malloc("m1", REPLICA_BLOCKS, BS);
	mk_malloc("c0", REPLICA_BLOCKS, BS);
	mk_malloc("c1", REPLICA_BLOCKS, BS);
	CU_ASSERT_FATAL(create_vol("vol", reps, 2, false, &r) == 0);
	user_open(&u, "vol", 2);
	buf = abuf(VOL_BYTES);
	fill(buf, VOL_BYTES, 21);
	/* Two regions written (bits 1 and 4 set), the rest never. */
	CU_ASSERT(do_io(&u, 0, KEEL_BDEV_IO_WRITE, buf, 1 * MB, 64 * 1024) == 0);
	CU_ASSERT(do_io(&u, 1, KEEL_BDEV_IO_WRITE, buf, 4 * MB + 8192, 8192) == 0);
	CU_ASSERT(keel_nexus_bitmap_info(keel_nexus_get_by_name("vol"), &rs, &nbits, &set, &ec) ==
		  0);
	CU_ASSERT(set == 2);
	/* The "crash": snapshot both replicas while the volume runs (labels dirty),
	 * then let a write in flight reach only the second one. */
	clone_replica("m0", "c0");
	clone_replica("m1", "c1");
	fill(buf, 8192, 22);
	CU_ASSERT(raw_io("c1", true, buf, DATA_OFF + 4 * MB + 8192, 8192) == 0);
	CU_ASSERT(diff_replicas("c0", "c1", VOL_BYTES) == 2);
	user_close(&u);
	CU_ASSERT(destroy_vol("vol", false) == 0);

	/* "restart" on the crashed images */
	CU_ASSERT_FATAL(open_vol("vol", crashed, 2, false, &r) == 0);
	info = info_of("vol");
	CU_ASSERT(info->unclean_shutdown);
	CU_ASSERT(rep_info(info, "c0")->state == KEEL_NEXUS_REPLICA_HEALTHY);
	/* c1 was demoted to rebuilding (the small copy may be over already) */
	CU_ASSERT(stats_of("vol", "c1") != NULL);
	poll_until("vol", "c1", KEEL_REBUILD_COMPLETED);
	st = stats_of("vol", "c1");
	CU_ASSERT(st->is_partial);
	CU_ASSERT(st->blocks_transferred == 2 * MB / BS); /* the two set regions only */
	CU_ASSERT(rep_info(info_of("vol"), "c1")->state == KEEL_NEXUS_REPLICA_HEALTHY);
	CU_ASSERT(diff_replicas("c0", "c1", VOL_BYTES) == 0);
	CU_ASSERT(destroy_vol("vol", false) == 0);

	/* A clean stop resyncs nothing. */
	CU_ASSERT_FATAL(open_vol("vol", crashed, 2, false, &r) == 0);
	info = info_of("vol");
	CU_ASSERT(!info->unclean_shutdown);
	CU_ASSERT(rep_info(info, "c1")->state == KEEL_NEXUS_REPLICA_HEALTHY);
	CU_ASSERT(destroy_vol("vol", false) == 0);
	free(buf);
	set_opts(128 * 1024, 16, true, 2 * MB, 5000);
	teardown();
}

/* Writes racing the lazy clear's walk over the channels keep their region's bit.
 * The clear pass marks the bit CLEARING, asks each channel on its own thread, and
 * clears it only if no writer claimed it back: a write that arrives on thread 1
 * after thread 1's channel was asked must still keep it. */
static uint32_t bits_set_of(const char *vol)
{
	uint64_t rs, ec;
	uint32_t nbits, set = UINT32_MAX;

	ut_set_thread(0);
	CU_ASSERT(keel_nexus_bitmap_info(keel_nexus_get_by_name(vol), &rs, &nbits, &set, &ec) == 0);
	return set;
}

static void test_bitmap_clear_race(void)
{
	const char *reps[] = {"m0", "m1"};
	struct io_res io[1];
	struct op_res r;
	struct vol_user u;
	uint8_t *buf;

	setup(2);
	set_opts(128 * 1024, 8, true, 1 * MB, 10);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_malloc("m1", REPLICA_BLOCKS, BS);
	CU_ASSERT_FATAL(create_vol("vol", reps, 2, false, &r) == 0);
	user_open(&u, "vol", 2);
	buf = abuf(4096);
	fill(buf, 4096, 31);
	CU_ASSERT(do_io(&u, 1, KEEL_BDEV_IO_WRITE, buf, 2 * MB, 4096) == 0);
	CU_ASSERT(bits_set_of("vol") == 1);
	/* One period: the pass sees the region written (hot) and keeps it. */
	ut_time_advance_us(11000);
	ut_poll_threads();
	CU_ASSERT(bits_set_of("vol") == 1);
	/* Next period: step the walk by hand. The owner (thread 0) starts the pass
	 * and asks its own channel, thread 1 is asked next; the write on thread 1
	 * comes after that and before the walk's end reaches the owner: only the
	 * writer's claim (CAS CLEARING -> SET) keeps the bit. */
	ut_time_advance_us(11000);
	memset(io, 0, sizeof(io));
	ut_poll_thread(0);
	ut_poll_thread(0);
	ut_poll_thread(1);
	CU_ASSERT(submit(&u, 1, KEEL_BDEV_IO_WRITE, buf, 2 * MB, 4096, &io[0]) == 0);
	ut_poll_thread(0); /* the walk ends on the owner: the bit must still be set */
	CU_ASSERT(bits_set_of("vol") == 1);
	for (int k = 0; k < 100; k++) {
		ut_poll_threads();
	}
	CU_ASSERT(io[0].done == 1 && io[0].status == 0);
	CU_ASSERT(bits_set_of("vol") == 1);
	/* Quiet from now on: cleared within two periods. */
	run_ms(100);
	CU_ASSERT(bits_set_of("vol") == 0);
	user_close(&u);
	CU_ASSERT(destroy_vol("vol", false) == 0);
	free(buf);
	set_opts(128 * 1024, 16, true, 2 * MB, 5000);
	teardown();
}

/* Bytes the process holds from malloc, mmapped chunks included. */
/* Heap bytes in use; ASan's allocator replaces glibc's, so ask it there. */
static size_t heap_in_use(void)
{
#ifdef __SANITIZE_ADDRESS__
	return __sanitizer_get_current_allocated_bytes();
#else
	struct mallinfo2 mi = mallinfo2();

	return mi.uordblks + mi.hblkhd;
#endif
}

/*
 * An ended job is kept for its statistics only: its copy buffers (tasks x segment
 * size, 2 MiB by default) go back when it ends. The soak (tests/bench/soak.sh) saw
 * keeld grow by that much for every replica it replaced with a new one: each new
 * target's ended job kept its buffers for good.
 */
static void test_ended_job_frees_buffers(void)
{
	const char *reps[] = {"m0"};
	char name[8];
	struct op_res r;
	size_t before = 0, after;

	setup(2);
	set_opts(128 * 1024, 16, true, 1 * MB, 100000);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	CU_ASSERT_FATAL(create_vol("vol", reps, 1, false, &r) == 0);
	for (int i = 1; i <= 5; i++) {
		snprintf(name, sizeof(name), "m%d", i);
		mk_malloc(name, REPLICA_BLOCKS, BS);
		CU_ASSERT_FATAL(add_rep("vol", name) == 0);
		poll_until("vol", name, KEEL_REBUILD_COMPLETED);
		CU_ASSERT(member_call(keel_nexus_remove_replica, "vol", name, &r) == 0);
		/* Its ended job describes a replica that is gone: dropped with it. */
		CU_ASSERT(!job_state_is("vol", name, KEEL_REBUILD_COMPLETED));
		if (i == 1) {
			before = heap_in_use();
		}
	}
	after = heap_in_use();
	/* Four more ended jobs: kept buffers would be 4 x 16 x 128 KiB = 8 MiB. */
	CU_ASSERT(after < before + 1 * MB);
	if (after >= before + 1 * MB) {
		fprintf(stderr, "heap in use grew from %zu to %zu bytes over 4 rebuilds\n", before,
			after);
	}
	CU_ASSERT(destroy_vol("vol", false) == 0);
	teardown();
}

static const struct ut_test g_tests[] = {
	{"full_rebuild_under_writes", test_full_rebuild_under_writes},
	{"control", test_control},
	{"rate_limit", test_rate_limit},
	{"rate_range", test_rate_range},
	{"source_failure", test_source_failure},
	{"target_failure", test_target_failure},
	{"partial_rebuild", test_partial_rebuild},
	{"bitmap_persisted", test_bitmap_persisted},
	{"bitmap_block_corrupt", test_bitmap_block_corrupt},
	{"bitmap_old_version", test_bitmap_old_version},
	{"unclean_resync", test_unclean_resync},
	{"bitmap_clear_race", test_bitmap_clear_race},
	{"bitmap_clear_disarms", test_bitmap_clear_disarms},
	{"destroy_waits_for_bitmap_io", test_destroy_waits_for_bitmap_io},
	{"ended_job_frees_buffers", test_ended_job_frees_buffers},
	{NULL, NULL},
};

int main(void)
{
	nexus_ut_init();
	return ut_cunit_run("rebuild", g_tests);
}
