/*
 * bdev on real reactors (cpus 0-1, unpinned): concurrent I/O from several keel
 * threads on both reactors with data verification, then hot remove with I/O in
 * flight where every request must complete exactly once. Worker threads only count
 * failures (CUnit is not thread-safe); the test asserts after the reactors stop.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/bdev.h"
#include "keel/bdev_module.h"
#include "keel/log.h"
#include "keel/reactor.h"
#include "ut_cunit.h"
#include "ut_mt.h"

#define MT_JOBS 4
#define MT_QD 8
#define MT_BS 4096
#define MT_REGION_BLOCKS 256 /* per job, disjoint: overlapping writes race by design */
#define MT_ROUNDS 300

struct mt_req {
	struct mt_job *job;
	uint8_t *buf;
	uint64_t lba;
	uint32_t seq;
	int phase; /* 0 write, 1 read-verify, 2 zeroes, 3 read-zero-verify */
	int done_count;
	bool in_flight;
};

struct mt_job {
	int idx;
	struct keel_thread *thread;
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	struct mt_req reqs[MT_QD];
	uint32_t rounds;
	uint32_t inflight;
	bool stopping;
	bool ended;
	uint64_t submitted;
	uint64_t completed;
	uint64_t ok;
	uint64_t failed;
	const char *bdev_name;
	bool hot_remove_phase;
};

static struct mt_job g_jobs[MT_JOBS];
static atomic_int g_jobs_left;
static atomic_int g_jobs_running; /* opened and holding a channel */
static int g_phase;
static int g_unreg_done;
static const char *g_hot_victim; /* bdev the hot-remove poller deletes */
static uint64_t g_hot_total_submitted, g_hot_total_completed, g_hot_ok, g_hot_failed;

static void mt_phase_next(void *arg);

static void mt_fill(uint8_t *p, int job, uint64_t lba, uint32_t seq)
{
	for (int i = 0; i < MT_BS; i += 8) {
		uint64_t v = ((uint64_t)job << 56) ^ (lba << 20) ^ ((uint64_t)seq << 8) ^
			     (uint64_t)i;

		memcpy(p + i, &v, 8);
	}
}

static void mt_req_submit(struct mt_req *r);
static void mt_job_end(struct mt_job *job);

static void mt_io_done(void *arg, int status)
{
	struct mt_req *r = arg;
	struct mt_job *job = r->job;
	uint8_t expect[MT_BS];

	if (keel_thread_get_current() != job->thread || !r->in_flight) {
		UT_MT_ERR();
	}
	r->in_flight = false;
	r->done_count++;
	job->inflight--;
	job->completed++;
	if (status == 0) {
		job->ok++;
	} else {
		job->failed++;
		if (!job->hot_remove_phase) {
			UT_MT_ERR();
		}
	}
	if (!job->hot_remove_phase && status == 0) {
		if (r->phase == 1) {
			mt_fill(expect, job->idx, r->lba, r->seq);
			if (memcmp(expect, r->buf, MT_BS) != 0) {
				UT_MT_ERR();
			}
		} else if (r->phase == 3) {
			for (int i = 0; i < MT_BS; i++) {
				if (r->buf[i]) {
					UT_MT_ERR();
					break;
				}
			}
		}
		r->phase = (r->phase + 1) % 4;
		if (r->phase == 0) {
			r->seq++;
			job->rounds++;
		}
	}
	if (job->stopping || (!job->hot_remove_phase && job->rounds >= MT_ROUNDS)) {
		job->stopping = true;
		if (job->inflight == 0) {
			mt_job_end(job);
		}
		return;
	}
	mt_req_submit(r);
}

static void mt_req_submit(struct mt_req *r)
{
	struct mt_job *job = r->job;
	uint64_t off = r->lba * MT_BS;
	int rc;

	switch (r->phase) {
	case 0:
		mt_fill(r->buf, job->idx, r->lba, r->seq);
		rc = keel_bdev_write(job->desc, job->ch, r->buf, off, MT_BS, mt_io_done, r);
		break;
	case 2:
		rc = (r->seq & 1) ? keel_bdev_unmap(job->desc, job->ch, off, MT_BS, mt_io_done, r)
				  : keel_bdev_write_zeroes(job->desc, job->ch, off, MT_BS,
							   mt_io_done, r);
		break;
	default:
		memset(r->buf, 0xee, MT_BS);
		rc = keel_bdev_read(job->desc, job->ch, r->buf, off, MT_BS, mt_io_done, r);
		break;
	}
	if (rc) {
		/* Only allowed once the bdev is going away. */
		if (!job->hot_remove_phase || rc != -ENODEV) {
			UT_MT_ERR();
		}
		job->stopping = true;
		if (job->inflight == 0) {
			mt_job_end(job);
		}
		return;
	}
	r->in_flight = true;
	job->inflight++;
	job->submitted++;
	/* Completion never runs inside the submit call. */
	if (r->done_count < 0 || !r->in_flight) {
		UT_MT_ERR();
	}
}

static void mt_job_done_main(void *arg)
{
	if (atomic_fetch_sub(&g_jobs_left, 1) == 1) {
		mt_phase_next(NULL);
	}
}

static void mt_job_end(struct mt_job *job)
{
	if (job->ended) {
		return;
	}
	job->ended = true;
	keel_put_io_channel(job->ch);
	job->ch = NULL;
	keel_bdev_close(job->desc);
	job->desc = NULL;
	keel_thread_send_msg(keel_thread_get_main(), mt_job_done_main, job);
}

static void mt_event(enum keel_bdev_event_type type, struct keel_bdev *bdev, void *ctx)
{
	struct mt_job *job = ctx;

	if (type != KEEL_BDEV_EVENT_REMOVE) {
		return;
	}
	job->stopping = true;
	if (job->inflight == 0) {
		mt_job_end(job);
	}
}

static void mt_job_start(void *arg)
{
	struct mt_job *job = arg;
	int rc = keel_bdev_open_ext(job->bdev_name, true, mt_event, job, &job->desc);

	if (rc) {
		UT_MT_ERR();
		job->ended = true;
		keel_thread_send_msg(keel_thread_get_main(), mt_job_done_main, job);
		return;
	}
	job->ch = keel_bdev_get_io_channel(job->desc);
	if (!job->ch) {
		UT_MT_ERR();
	}
	atomic_fetch_add(&g_jobs_running, 1);
	for (int i = 0; i < MT_QD; i++) {
		struct mt_req *r = &job->reqs[i];

		r->job = job;
		r->lba = (uint64_t)job->idx * MT_REGION_BLOCKS +
			 (uint64_t)i * (MT_REGION_BLOCKS / MT_QD);
		r->phase = 0;
		r->seq = 1;
		r->done_count = 0;
		r->in_flight = false;
		mt_req_submit(r);
	}
}

static void mt_start_jobs(const char *bdev_name, bool hot)
{
	atomic_store(&g_jobs_left, MT_JOBS);
	atomic_store(&g_jobs_running, 0);
	for (int i = 0; i < MT_JOBS; i++) {
		struct mt_job *job = &g_jobs[i];
		char name[32];

		for (int k = 0; k < MT_QD; k++) {
			free(job->reqs[k].buf);
		}
		memset(job, 0, sizeof(*job));
		job->idx = i;
		job->bdev_name = bdev_name;
		job->hot_remove_phase = hot;
		for (int k = 0; k < MT_QD; k++) {
			job->reqs[k].buf = aligned_alloc(4096, MT_BS);
		}
		snprintf(name, sizeof(name), "mt_job_%d", i);
		/* Round robin over both reactors. */
		job->thread = keel_thread_create(name, (uint32_t)i % keel_reactor_count());
		if (!job->thread || keel_thread_send_msg(job->thread, mt_job_start, job)) {
			UT_MT_ERR();
		}
	}
}

static void mt_unreg_done(void *arg, int status)
{
	g_unreg_done++;
	if (status) {
		UT_MT_ERR();
	}
	if (g_phase == 3 || g_phase == 5) {
		mt_phase_next(NULL);
	}
}

static int g_hot_poller_runs;
static struct keel_poller *g_hot_poller;

static int mt_hot_remove_poll(void *arg)
{
	/* Once every job runs, let the load go on a little, then pull the bdev. */
	if (atomic_load(&g_jobs_running) < MT_JOBS || ++g_hot_poller_runs < 2) {
		return KEEL_POLLER_IDLE;
	}
	keel_poller_unregister(&g_hot_poller);
	if (keel_bdev_malloc_delete(g_hot_victim, mt_unreg_done, NULL)) {
		UT_MT_ERR();
	}
	return KEEL_POLLER_BUSY;
}

static void mt_fini_done(void *arg, int status)
{
	keel_reactors_stop();
}

static void mt_hot_collect(void)
{
	for (int i = 0; i < MT_JOBS; i++) {
		g_hot_total_submitted += g_jobs[i].submitted;
		g_hot_total_completed += g_jobs[i].completed;
		g_hot_ok += g_jobs[i].ok;
		g_hot_failed += g_jobs[i].failed;
		for (int k = 0; k < MT_QD; k++) {
			if (g_jobs[i].reqs[k].in_flight) {
				UT_MT_ERR();
			}
		}
	}
}

static void mt_phase_next(void *arg)
{
	struct keel_bdev_error_rule rule = {0};
	struct keel_bdev *b;

	g_phase++;
	switch (g_phase) {
	case 1:
		/* Concurrent verified I/O on a malloc bdev. */
		if (keel_bdev_malloc_create("mt_mal", NULL, MT_JOBS * MT_REGION_BLOCKS, MT_BS,
					    &b)) {
			UT_MT_ERR();
		}
		mt_start_jobs("mt_mal", false);
		break;
	case 2:
		/* Hot remove under load (malloc, 4 jobs x QD 8 on two reactors). */
		if (keel_bdev_malloc_create("mt_hot", NULL, MT_JOBS * MT_REGION_BLOCKS, MT_BS,
					    &b)) {
			UT_MT_ERR();
		}
		g_hot_victim = "mt_hot";
		g_hot_poller_runs = 0;
		mt_start_jobs("mt_hot", true);
		g_hot_poller = keel_poller_register(mt_hot_remove_poll, NULL, 5000,
						    "mt_hot_remove");
		break;
	case 3:
	case 5:
		/* Every job closed; the unregister callback moves us on. */
		mt_hot_collect();
		if (g_unreg_done == (g_phase == 3 ? 1 : 2)) {
			mt_phase_next(NULL);
		}
		break;
	case 4:
		/* Remove the base under an error bdev whose requests sit in a delay queue:
		 * requests really are in flight inside a module when the bdevs go. */
		if (keel_bdev_malloc_create("mt_base", NULL, MT_JOBS * MT_REGION_BLOCKS, MT_BS,
					    &b) ||
		    keel_bdev_error_create("mt_err", "mt_base", &b)) {
			UT_MT_ERR();
		}
		rule.io_type = KEEL_BDEV_IO_NUM_TYPES;
		rule.delay_us = 200;
		if (keel_bdev_error_inject("mt_err", &rule)) {
			UT_MT_ERR();
		}
		g_hot_victim = "mt_base";
		g_hot_poller_runs = 0;
		mt_start_jobs("mt_err", true);
		g_hot_poller = keel_poller_register(mt_hot_remove_poll, NULL, 5000,
						    "mt_hot_remove");
		break;
	default:
		keel_bdev_subsystem_fini(mt_fini_done, NULL);
		break;
	}
}

static void mt_init_done(void *arg, int status)
{
	if (status) {
		UT_MT_ERR();
	}
	mt_phase_next(NULL);
}

static void mt_start(void *arg)
{
	keel_bdev_module_register(&keel_bdev_malloc_module);
	keel_bdev_module_register(&keel_bdev_null_module);
	keel_bdev_module_register(&keel_bdev_error_module);
	if (keel_bdev_subsystem_init(mt_init_done, NULL)) {
		UT_MT_ERR();
		keel_reactors_stop();
	}
}

static void test_mt(void)
{
	uint64_t total_ok = 0;

	if (!ut_mt_run_reactors(mt_start, NULL)) {
		return;
	}
	if (atomic_load(&ut_mt_errors)) {
		fprintf(stderr, "bdev_mt_ut: %d violations, first at line %d\n",
			atomic_load(&ut_mt_errors), atomic_load(&ut_mt_first_err_line));
	}
	CU_ASSERT_EQUAL(atomic_load(&ut_mt_errors), 0);
	printf("hot remove: %lu submitted, %lu ok, %lu failed\n",
	       (unsigned long)g_hot_total_submitted, (unsigned long)g_hot_ok,
	       (unsigned long)g_hot_failed);
	CU_ASSERT_EQUAL(g_phase, 6);
	CU_ASSERT_EQUAL(g_unreg_done, 2);
	/* Hot remove: every request submitted completed exactly once. */
	CU_ASSERT_EQUAL(g_hot_total_submitted, g_hot_total_completed);
	CU_ASSERT_EQUAL(g_hot_ok + g_hot_failed, g_hot_total_completed);
	CU_ASSERT(g_hot_total_submitted > 0);
	for (int i = 0; i < MT_JOBS; i++) {
		for (int k = 0; k < MT_QD; k++) {
			free(g_jobs[i].reqs[k].buf);
		}
		total_ok += g_jobs[i].ok;
	}
	CU_ASSERT(total_ok > 0);
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"concurrent_io_and_hot_remove", test_mt},
		{NULL, NULL},
	};

	keel_log_set_level(KEEL_LOG_WARN);
	return ut_cunit_run("bdev_mt", tests);
}
