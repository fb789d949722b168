/*
 * Read-error repair (bdev/nexus/nexus_repair.c) on the deterministic harness.
 *
 * Each test builds "vol" over e0 (error bdev on m0) and e1 (error bdev on m1), writes
 * a pattern through the volume, stops it and overwrites the range on e0 with garbage
 * behind the volume's back, then opens it again: a read served by e0 without an error
 * would show the garbage, and a successful repair is visible on m0.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "keel/bdev.h"
#include "keel/bdev_module.h"
#include "keel/nexus.h"

#include "bdev/nexus/nexus_internal.h"
#include "nexus_ut_common.h"
#include "ut_cunit.h"
#include "ut_threads.h"

#define LEN 8192u

static void run_ms(uint32_t ms)
{
	for (uint32_t i = 0; i < ms; i++) {
		ut_time_advance_us(1000);
		ut_poll_threads();
	}
}

static uint8_t *g_w;

/* The volume with the pattern in [0, LEN) on m1 and garbage there on m0. */
static void vol_with_bad_e0_on(struct vol_user *u, uint32_t nthreads)
{
	const char *reps[] = {"e0", "e1"};
	struct op_res r;
	uint8_t *junk = abuf(LEN);

	setup(nthreads);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_malloc("m1", REPLICA_BLOCKS, BS);
	mk_err("e0", "m0");
	mk_err("e1", "m1");
	CU_ASSERT_FATAL(create_vol("vol", reps, 2, false, &r) == 0);
	user_open(u, "vol", 1);
	g_w = abuf(LEN);
	fill(g_w, LEN, 41);
	CU_ASSERT_FATAL(do_io(u, 0, KEEL_BDEV_IO_WRITE, g_w, 0, LEN) == 0);
	user_close(u);
	CU_ASSERT_FATAL(destroy_vol("vol", false) == 0);
	fill(junk, LEN, 99);
	CU_ASSERT_FATAL(raw_io("e0", true, junk, DATA_OFF, LEN) == 0);
	CU_ASSERT_FATAL(open_vol("vol", reps, 2, false, &r) == 0);
	user_open(u, "vol", nthreads);
	free(junk);
}

static void vol_with_bad_e0(struct vol_user *u)
{
	vol_with_bad_e0_on(u, 1);
}

static void vol_done(struct vol_user *u)
{
	user_close(u);
	CU_ASSERT(destroy_vol("vol", false) == 0);
	free(g_w);
	g_w = NULL;
	teardown();
}

static void inject_rule(const char *bdev, enum keel_bdev_io_type type, uint32_t count, int error,
			uint32_t delay_us, bool drop)
{
	struct keel_bdev_error_rule rule = {
		.io_type = type,
		.count = count,
		.error = error,
		.delay_us = delay_us,
		.drop = drop,
	};

	CU_ASSERT_FATAL(keel_bdev_error_inject(bdev, &rule) == 0);
}

/* Read [0, LEN) \p times (the reads alternate between replicas), each must return the
 * pattern; mock time runs between them so repairs finish. */
static void read_ok_times_on(struct vol_user *u, uint32_t t, int times)
{
	uint8_t *rd = abuf(LEN);

	for (int i = 0; i < times; i++) {
		memset(rd, 0, LEN);
		CU_ASSERT(do_io(u, t, KEEL_BDEV_IO_READ, rd, 0, LEN) == 0);
		CU_ASSERT(memcmp(rd, g_w, LEN) == 0);
		run_ms(5);
	}
	free(rd);
}

static void read_ok_times(struct vol_user *u, int times)
{
	read_ok_times_on(u, 0, times);
}

static bool m0_holds_pattern(void)
{
	uint8_t *rd = abuf(LEN);
	bool same;

	CU_ASSERT_FATAL(raw_io("m0", false, rd, DATA_OFF, LEN) == 0);
	same = memcmp(rd, g_w, LEN) == 0;
	free(rd);
	return same;
}

/* One read error on e0: served from e1, rewritten on e0, read back; e0 stays healthy. */
static void test_repair_ok(void)
{
	struct vol_user u;
	struct keel_nexus_info *info;

	vol_with_bad_e0(&u);
	CU_ASSERT(!m0_holds_pattern());
	inject_rule("e0", KEEL_BDEV_IO_READ, 1, -EIO, 0, false);
	read_ok_times(&u, 4);
	info = info_of("vol");
	CU_ASSERT(info->state == KEEL_NEXUS_ONLINE);
	CU_ASSERT(rep_info(info, "e0")->state == KEEL_NEXUS_REPLICA_HEALTHY);
	CU_ASSERT(rep_info(info, "e0")->read_errors_repaired == 1);
	CU_ASSERT(rep_info(info, "e1")->read_errors_repaired == 0);
	CU_ASSERT(m0_holds_pattern());
	vol_done(&u);
}

/* The read error on a thread that does not own the volume: the repair's lock walks
 * both channels, the counter is the owner's to show. */
static void test_repair_other_thread(void)
{
	struct vol_user u;
	struct keel_nexus_info *info;

	vol_with_bad_e0_on(&u, 2);
	inject_rule("e0", KEEL_BDEV_IO_READ, 1, -EIO, 0, false);
	read_ok_times_on(&u, 1, 4);
	info = info_of("vol");
	CU_ASSERT(rep_info(info, "e0")->state == KEEL_NEXUS_REPLICA_HEALTHY);
	CU_ASSERT(rep_info(info, "e0")->read_errors_repaired == 1);
	CU_ASSERT(m0_holds_pattern());
	vol_done(&u);
}

/* The rewrite fails: e0 is faulted, the volume goes on degraded. */
static void test_repair_write_fails(void)
{
	struct vol_user u;
	struct keel_nexus_info *info;

	vol_with_bad_e0(&u);
	inject_rule("e0", KEEL_BDEV_IO_READ, 0, -EIO, 0, false);
	inject_rule("e0", KEEL_BDEV_IO_WRITE, 0, -EIO, 0, false);
	read_ok_times(&u, 3);
	info = info_of("vol");
	CU_ASSERT(info->state == KEEL_NEXUS_DEGRADED);
	CU_ASSERT(rep_info(info, "e0")->state == KEEL_NEXUS_REPLICA_FAULTED);
	CU_ASSERT(rep_info(info, "e0")->reason == KEEL_NEXUS_REASON_IO_ERROR);
	CU_ASSERT(rep_info(info, "e0")->read_errors_repaired == 0);
	vol_done(&u);
}

/* The rewrite "succeeds" but the disk lost it: the read-back differs, e0 is faulted. */
static void test_repair_readback_mismatch(void)
{
	struct vol_user u;
	struct keel_nexus_info *info;

	vol_with_bad_e0(&u);
	inject_rule("e0", KEEL_BDEV_IO_READ, 1, -EIO, 0, false);
	inject_rule("e0", KEEL_BDEV_IO_WRITE, 0, 0, 0, true);
	read_ok_times(&u, 3);
	info = info_of("vol");
	CU_ASSERT(info->state == KEEL_NEXUS_DEGRADED);
	CU_ASSERT(rep_info(info, "e0")->state == KEEL_NEXUS_REPLICA_FAULTED);
	CU_ASSERT(rep_info(info, "e0")->read_errors_repaired == 0);
	CU_ASSERT(!m0_holds_pattern());
	vol_done(&u);
}

/* Every replica fails the read: the client gets the error. */
static void test_all_replicas_fail(void)
{
	struct vol_user u;
	uint8_t *rd = abuf(LEN);

	vol_with_bad_e0(&u);
	inject_rule("e0", KEEL_BDEV_IO_READ, 0, -EIO, 0, false);
	inject_rule("e1", KEEL_BDEV_IO_READ, 0, -EIO, 0, false);
	CU_ASSERT(do_io(&u, 0, KEEL_BDEV_IO_READ, rd, 0, LEN) == -EIO);
	run_ms(5);
	CU_ASSERT(rep_info(info_of("vol"), "e0")->read_errors_repaired == 0);
	free(rd);
	vol_done(&u);
}

/*
 * A user write to the range under repair waits for the repair's range lock, so the
 * repair cannot write stale data over it: afterwards both replicas hold the new data.
 * e1's reads are slowed so the repair (reading e1 again under the lock) is caught
 * in the middle.
 */
static void test_write_waits_for_repair(void)
{
	struct vol_user u;
	struct nexus *n;
	struct io_res wr = {0};
	uint8_t *w2 = abuf(LEN), *rd = abuf(LEN);
	int tries = 0;

	vol_with_bad_e0(&u);
	n = (struct nexus *)keel_nexus_get_by_name("vol");
	CU_ASSERT_FATAL(n != NULL);
	inject_rule("e0", KEEL_BDEV_IO_READ, 1, -EIO, 0, false);
	inject_rule("e1", KEEL_BDEV_IO_READ, 0, 0, 20000, false);
	/* Read until one read met e0's error: the repair then waits on e1's slow read. */
	while (atomic_load(&n->repairs_active) == 0 && tries++ < 4) {
		struct io_res res = {0};

		CU_ASSERT_FATAL(submit(&u, 0, KEEL_BDEV_IO_READ, rd, 0, LEN, &res) == 0);
		while (res.done == 0) {
			ut_time_advance_us(1000);
			ut_poll_threads();
		}
		CU_ASSERT(res.status == 0 && memcmp(rd, g_w, LEN) == 0);
	}
	CU_ASSERT_FATAL(atomic_load(&n->repairs_active) == 1);
	fill(w2, LEN, 77);
	CU_ASSERT_FATAL(submit(&u, 0, KEEL_BDEV_IO_WRITE, w2, 0, LEN, &wr) == 0);
	ut_poll_threads();
	CU_ASSERT(wr.done == 0); /* held by the repair's lock */
	while (wr.done == 0) {
		ut_time_advance_us(1000);
		ut_poll_threads();
	}
	CU_ASSERT(wr.status == 0);
	CU_ASSERT(atomic_load(&n->repairs_active) == 0);
	CU_ASSERT(rep_info(info_of("vol"), "e0")->read_errors_repaired == 1);
	CU_ASSERT(raw_io("m0", false, rd, DATA_OFF, LEN) == 0);
	CU_ASSERT(memcmp(rd, w2, LEN) == 0);
	CU_ASSERT(raw_io("m1", false, rd, DATA_OFF, LEN) == 0);
	CU_ASSERT(memcmp(rd, w2, LEN) == 0);
	keel_bdev_error_clear("e1");
	free(w2);
	free(rd);
	vol_done(&u);
}

/* The volume is destroyed while a repair waits on a slow read: the destroy waits
 * for the repair's channel and completes; nothing leaks (ASan build). */
static void test_destroy_during_repair(void)
{
	struct vol_user u;
	struct nexus *n;
	uint8_t *rd = abuf(LEN);
	int tries = 0;

	vol_with_bad_e0(&u);
	n = (struct nexus *)keel_nexus_get_by_name("vol");
	CU_ASSERT_FATAL(n != NULL);
	inject_rule("e0", KEEL_BDEV_IO_READ, 1, -EIO, 0, false);
	inject_rule("e1", KEEL_BDEV_IO_READ, 0, 0, 20000, false);
	while (atomic_load(&n->repairs_active) == 0 && tries++ < 4) {
		CU_ASSERT(do_io(&u, 0, KEEL_BDEV_IO_READ, rd, 0, LEN) == 0);
	}
	CU_ASSERT_FATAL(atomic_load(&n->repairs_active) == 1);
	user_close(&u);
	CU_ASSERT(destroy_vol("vol", false) == 0);
	CU_ASSERT(keel_nexus_get_by_name("vol") == NULL);
	keel_bdev_error_clear("e1");
	free(rd);
	free(g_w);
	g_w = NULL;
	teardown();
}

/* A "device gone" error is not a bad range: faulted at once, no repair tried. */
static void test_device_gone_not_repaired(void)
{
	struct vol_user u;
	struct keel_nexus_info *info;

	vol_with_bad_e0(&u);
	inject_rule("e0", KEEL_BDEV_IO_READ, 0, -ENXIO, 0, false);
	read_ok_times(&u, 2);
	info = info_of("vol");
	CU_ASSERT(rep_info(info, "e0")->state == KEEL_NEXUS_REPLICA_FAULTED);
	CU_ASSERT(rep_info(info, "e0")->read_errors_repaired == 0);
	CU_ASSERT(!m0_holds_pattern());
	vol_done(&u);
}

static const struct ut_test g_tests[] = {
	{"repair_ok", test_repair_ok},
	{"repair_other_thread", test_repair_other_thread},
	{"repair_write_fails", test_repair_write_fails},
	{"repair_readback_mismatch", test_repair_readback_mismatch},
	{"all_replicas_fail", test_all_replicas_fail},
	{"write_waits_for_repair", test_write_waits_for_repair},
	{"destroy_during_repair", test_destroy_during_repair},
	{"device_gone_not_repaired", test_device_gone_not_repaired},
	{NULL, NULL},
};

int main(void)
{
	nexus_ut_init();
	return ut_cunit_run("repair", g_tests);
}
