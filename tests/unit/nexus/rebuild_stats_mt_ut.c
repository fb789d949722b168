/*
 * Rebuild status read while the jobs run, on real reactors (run it under TSan:
 * KEEL_SANITIZE=thread). The management thread reads every job's status in a loop
 * (keel_rebuild_list, as `rebuild status --watch` does) while each job's thread
 * pauses and resumes its clock and, at the end, records why it failed. Those
 * fields are written by the job thread and read by the owner: a plain field
 * there is a data race TSan reports.
 *
 * Two targets, so two job threads: thread placement is round robin, so at least
 * one of them runs on the other reactor when there are two.
 *
 * Correctness asserted (any build): every pause and resume is seen in the status,
 * the running time never goes backwards, and the failure names its target.
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
#define REP_BLOCKS ((32 * MB + KEEL_NEXUS_DATA_OFFSET) / BS)
#define NTARGETS 2
#define CYCLES 50 /* pause/resume round trips per job */
#define TIMEOUT_NS (120ull * 1000 * 1000 * 1000)

enum phase {
	P_INIT,
	P_ADDING,
	P_CYCLING,
	P_FAILING,
	P_DESTROY,
	P_DONE,
};

struct target {
	const char *err_name;
	const char *base_name;
	bool added;
	uint32_t pauses_seen;
	uint32_t resumes_seen;
	bool pause_asked;
	uint64_t last_duration_ms;
	bool failed;
	char error[160];
};

static struct target g_targets[NTARGETS] = {
	{.err_name = "se1", .base_name = "sb1"},
	{.err_name = "se2", .base_name = "sb2"},
};
static enum phase g_phase;
static uint64_t g_start_ns;
static bool g_op_busy;
static unsigned g_next_add;
static struct keel_poller *g_poller;
static uint64_t g_stats_reads;

static struct target *target_of(const char *name)
{
	for (int i = 0; i < NTARGETS; i++) {
		if (strcmp(g_targets[i].err_name, name) == 0) {
			return &g_targets[i];
		}
	}
	return NULL;
}

static void op_done(void *cb_arg, int status, const char *errmsg, struct keel_nexus *nexus)
{
	if (status != 0) {
		fprintf(stderr, "rebuild_stats_mt_ut: phase %d: %s\n", g_phase,
			errmsg ? errmsg : "?");
		UT_MT_ERR();
	}
	g_op_busy = false;
}

/* Called for every job on each status read: drive its pause/resume cycle. */
static void job_seen(void *ctx, const struct keel_rebuild_stats *st)
{
	struct target *t = target_of(st->target);

	g_stats_reads++;
	if (t == NULL) {
		UT_MT_ERR();
		return;
	}
	if (st->duration_ms < t->last_duration_ms) {
		UT_MT_ERR(); /* the running time went backwards */
	}
	t->last_duration_ms = st->duration_ms;
	switch (st->state) {
	case KEEL_REBUILD_RUNNING:
		if (g_phase == P_CYCLING && t->resumes_seen < CYCLES && !t->pause_asked) {
			if (keel_rebuild_pause("sv", t->err_name) != 0) {
				UT_MT_ERR();
			}
			t->pause_asked = true;
		}
		break;
	case KEEL_REBUILD_PAUSED:
		if (t->pause_asked) {
			t->pause_asked = false;
			t->pauses_seen++;
			if (keel_rebuild_resume("sv", t->err_name) != 0) {
				UT_MT_ERR();
			}
			t->resumes_seen++;
		}
		break;
	case KEEL_REBUILD_FAILED:
		if (!t->failed) {
			t->failed = true;
			snprintf(t->error, sizeof(t->error), "%s", st->error);
		}
		break;
	case KEEL_REBUILD_COMPLETED:
	case KEEL_REBUILD_STOPPED:
		UT_MT_ERR(); /* rate-limited far below finishing; never stopped */
		break;
	default:
		break;
	}
}

static void fini_done(void *arg, int status)
{
	keel_reactors_stop();
}

static void start_failing(void)
{
	struct keel_bdev_error_rule rule = {
		.io_type = KEEL_BDEV_IO_WRITE,
		.count = 0,
		.error = -EIO,
	};

	for (int i = 0; i < NTARGETS; i++) {
		if (keel_bdev_error_inject(g_targets[i].err_name, &rule) != 0 ||
		    keel_rebuild_set_rate("sv", g_targets[i].err_name, 0) != 0) {
			UT_MT_ERR();
		}
	}
}

static int main_poll(void *arg)
{
	bool all;

	if (g_op_busy) {
		return KEEL_POLLER_IDLE;
	}
	if (g_phase < P_DESTROY && keel_now_ns() - g_start_ns > TIMEOUT_NS) {
		fprintf(stderr, "rebuild_stats_mt_ut: phase %d timed out\n", g_phase);
		UT_MT_ERR();
		g_phase = P_DESTROY;
	}
	switch (g_phase) {
	case P_ADDING:
		if (g_next_add == NTARGETS) {
			g_phase = P_CYCLING;
			break;
		}
		g_op_busy = true;
		if (keel_nexus_add_replica("sv", g_targets[g_next_add].err_name, false, op_done,
					   NULL) != 0) {
			UT_MT_ERR();
			g_op_busy = false;
			g_phase = P_DESTROY;
			break;
		}
		g_targets[g_next_add++].added = true;
		break;
	case P_CYCLING:
		keel_rebuild_list("sv", job_seen, NULL);
		all = true;
		for (int i = 0; i < NTARGETS; i++) {
			all = all && g_targets[i].resumes_seen >= CYCLES;
		}
		if (all) {
			start_failing();
			g_phase = P_FAILING;
		}
		break;
	case P_FAILING:
		keel_rebuild_list("sv", job_seen, NULL);
		all = true;
		for (int i = 0; i < NTARGETS; i++) {
			all = all && g_targets[i].failed;
		}
		if (all) {
			g_phase = P_DESTROY;
		}
		break;
	case P_DESTROY:
		g_phase = P_DONE;
		g_op_busy = true;
		if (keel_nexus_destroy("sv", false, op_done, NULL) != 0) {
			UT_MT_ERR();
			g_op_busy = false;
		}
		break;
	case P_DONE:
		keel_poller_unregister(&g_poller);
		keel_bdev_subsystem_fini(fini_done, NULL);
		break;
	default:
		break;
	}
	return KEEL_POLLER_BUSY;
}

static void created(void *cb_arg, int status, const char *errmsg, struct keel_nexus *nexus)
{
	if (status != 0) {
		fprintf(stderr, "rebuild_stats_mt_ut: create: %s\n", errmsg ? errmsg : "?");
		UT_MT_ERR();
		g_phase = P_DONE;
		return;
	}
	g_phase = P_ADDING;
}

static void init_done(void *arg, int status)
{
	static const char *const reps[] = {"sm0"};
	struct keel_nexus_create_opts o = {.name = "sv", .replicas = reps, .num_replicas = 1};
	struct keel_rebuild_opts ro;
	struct keel_bdev *b;

	if (status != 0) {
		UT_MT_ERR();
		keel_reactors_stop();
		return;
	}
	/* Each resume starts one 64 KiB segment, then the limit holds the job for
	 * minutes: it is still running when the test makes it fail. */
	keel_rebuild_get_opts(&ro);
	ro.segment_size = 64 * 1024;
	ro.tasks = 2;
	ro.rate_limit_mib_s = 0.001;
	ro.auto_rebuild = true;
	ro.max_concurrent = 0;
	if (keel_rebuild_set_opts(&ro) != 0 ||
	    keel_bdev_malloc_create("sm0", NULL, REP_BLOCKS, BS, &b) != 0) {
		UT_MT_ERR();
	}
	for (int i = 0; i < NTARGETS; i++) {
		if (keel_bdev_malloc_create(g_targets[i].base_name, NULL, REP_BLOCKS, BS, &b) !=
			    0 ||
		    keel_bdev_error_create(g_targets[i].err_name, g_targets[i].base_name, &b) !=
			    0) {
			UT_MT_ERR();
		}
	}
	g_start_ns = keel_now_ns();
	g_poller = keel_poller_register(main_poll, NULL, 0, "rebuild_stats_main");
	g_phase = P_INIT;
	if (g_poller == NULL || keel_nexus_create(&o, created, NULL) != 0) {
		UT_MT_ERR();
		g_phase = P_DONE;
	}
}

static void mt_start(void *arg)
{
	keel_bdev_module_register(&keel_bdev_malloc_module);
	keel_bdev_module_register(&keel_bdev_error_module);
	keel_bdev_module_register(&keel_bdev_nexus_module);
	if (keel_bdev_subsystem_init(init_done, NULL) != 0) {
		UT_MT_ERR();
		keel_reactors_stop();
	}
}

static void test_stats_while_running(void)
{
	ut_mt_run_reactors(mt_start, NULL);
	if (atomic_load(&ut_mt_errors) != 0) {
		fprintf(stderr, "rebuild_stats_mt_ut: %d violations, first at line %d\n",
			atomic_load(&ut_mt_errors), atomic_load(&ut_mt_first_err_line));
	}
	printf("\nstatus read %lu times over %d pause/resume cycles per job\n",
	       (unsigned long)g_stats_reads, CYCLES);
	CU_ASSERT_EQUAL(atomic_load(&ut_mt_errors), 0);
	CU_ASSERT_EQUAL(g_phase, P_DONE);
	for (int i = 0; i < NTARGETS; i++) {
		struct target *t = &g_targets[i];

		CU_ASSERT(t->added);
		CU_ASSERT_EQUAL(t->pauses_seen, CYCLES);
		CU_ASSERT_EQUAL(t->resumes_seen, CYCLES);
		CU_ASSERT(t->failed);
		/* The failure says which target and why. */
		if (strstr(t->error, t->err_name) == NULL) {
			fprintf(stderr, "rebuild_stats_mt_ut: %s: error '%s'\n", t->err_name,
				t->error);
			CU_FAIL("the error does not name the target");
		}
	}
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"stats_while_running", test_stats_while_running},
		{NULL, NULL},
	};

	keel_log_set_level(KEEL_LOG_ERROR);
	return ut_cunit_run("rebuild_stats_mt", tests);
}
