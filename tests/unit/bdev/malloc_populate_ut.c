/*
 * A malloc bdev's memory is faulted in on the blocking-work pool, not on the thread
 * that creates it (a reactor, from an RPC): creating a large RAM disk must not stall
 * that reactor's other work. The test holds every pool worker, so the population
 * waits for the test, not for a clock: the disk is registered and serves I/O while
 * none of its memory is resident, then fills in once the pool is released.
 */
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>

#include <jansson.h>

#include "bdev_ut_common.h"

#define BS 4096u
#define DISK_MB 64u
#define NBLK ((DISK_MB << 20) / BS)
/* Workers of the pool the thread library starts by itself (reactor/blocking.c). */
#define POOL_THREADS 2

static sem_t g_hold;
static atomic_int g_held;
static int g_blockers_done;

static int blocker(void *arg)
{
	atomic_fetch_add(&g_held, 1);
	sem_wait(&g_hold);
	return 0;
}

static void blocker_done(void *arg, int rc)
{
	g_blockers_done++;
}

/* Occupy every pool worker until pool_release(). */
static void pool_hold(void)
{
	sem_init(&g_hold, 0, 0);
	atomic_store(&g_held, 0);
	g_blockers_done = 0;
	for (int i = 0; i < POOL_THREADS; i++) {
		CU_ASSERT_FATAL(keel_spawn_blocking(blocker, NULL, blocker_done, NULL) == 0);
	}
	while (atomic_load(&g_held) < POOL_THREADS) {
		usleep(100);
	}
}

static void pool_release(void)
{
	for (int i = 0; i < POOL_THREADS; i++) {
		sem_post(&g_hold);
	}
}

/* Resident memory of this process, in MiB. */
static long resident_mb(void)
{
	long size = 0, resident = 0;
	FILE *f = fopen("/proc/self/statm", "r");

	CU_ASSERT_FATAL(f != NULL);
	CU_ASSERT(fscanf(f, "%ld %ld", &size, &resident) == 2);
	fclose(f);
	return resident * sysconf(_SC_PAGESIZE) / (1024 * 1024);
}

static bool populated(struct keel_bdev *b)
{
	json_t *o = json_object();
	bool p;

	CU_ASSERT_FATAL(keel_bdev_dump_info_json(b, o) == 0);
	p = json_is_true(json_object_get(
		json_object_get(json_object_get(o, "driver_specific"), "malloc"), "populated"));
	json_decref(o);
	return p;
}

/* Poll the creating thread until the population job reported back. */
static void wait_populated(struct keel_bdev *b)
{
	for (int i = 0; i < 100000 && !(populated(b) && g_blockers_done == POOL_THREADS); i++) {
		ut_poll_threads();
		usleep(100);
	}
	CU_ASSERT_FATAL(populated(b));
}

static void test_created_unpopulated(void)
{
	struct keel_bdev *b;
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	uint8_t *w = aligned_alloc(4096, BS), *r = aligned_alloc(4096, BS);
	long before;

	ut_bdev_setup(1);
	pool_hold();
	before = resident_mb();
	CU_ASSERT_EQUAL_FATAL(keel_bdev_malloc_create("pm", NULL, NBLK, BS, &b), 0);
	/* Registered, and none of its memory faulted in by the creating thread. */
	CU_ASSERT(resident_mb() - before < DISK_MB / 4);
	CU_ASSERT(!populated(b));
	/* It serves I/O meanwhile; unwritten blocks read as zeroes. */
	CU_ASSERT_EQUAL_FATAL(keel_bdev_open_ext("pm", true, ut_event_cb, NULL, &desc), 0);
	ch = keel_bdev_get_io_channel(desc);
	memset(w, 0x5c, BS);
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_write(desc, ch, w, 7 * BS, BS, ut_io_done, res)), 0);
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_read(desc, ch, r, 9 * BS, BS, ut_io_done, res)), 0);
	CU_ASSERT(r[0] == 0 && memcmp(r, r + 1, BS - 1) == 0);
	pool_release();
	wait_populated(b);
	CU_ASSERT(resident_mb() - before >= DISK_MB - DISK_MB / 8);
	/* Faulting pages in did not change a byte written before. */
	CU_ASSERT_EQUAL(UT_SYNC(keel_bdev_read(desc, ch, r, 7 * BS, BS, ut_io_done, res)), 0);
	CU_ASSERT(memcmp(r, w, BS) == 0);
	keel_put_io_channel(ch);
	keel_bdev_close(desc);
	ut_bdev_teardown();
	sem_destroy(&g_hold);
	free(w);
	free(r);
}

/* Deleted before its population ran: the bdev goes at once, and the job that runs
 * later frees the memory (ASan: neither a leak nor a use after free). */
static void test_deleted_while_populating(void)
{
	struct keel_bdev *b;

	ut_bdev_setup(1);
	pool_hold();
	CU_ASSERT_EQUAL_FATAL(keel_bdev_malloc_create("pd", NULL, NBLK, BS, &b), 0);
	g_ut_sub_done = 0;
	CU_ASSERT_EQUAL(keel_bdev_malloc_delete("pd", ut_sub_done, NULL), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_ut_sub_done, 1);
	CU_ASSERT_PTR_NULL(keel_bdev_get_by_name("pd"));
	pool_release();
	for (int i = 0; i < 100000 && g_blockers_done < POOL_THREADS; i++) {
		ut_poll_threads();
		usleep(100);
	}
	ut_bdev_teardown(); /* joins the pool: the job ran to its end */
	sem_destroy(&g_hold);
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"created_unpopulated", test_created_unpopulated},
		{"deleted_while_populating", test_deleted_while_populating},
		{NULL, NULL},
	};

	keel_log_set_level(KEEL_LOG_WARN);
	return ut_cunit_run("bdev_malloc_populate", tests);
}
