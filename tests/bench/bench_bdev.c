/*
 * keel-bench bdev: a bdevperf-like load generator.
 *
 *   keel-bench bdev --bdev TYPE[:ARG] --rw randread|randwrite|read|write --bs 4k
 *                   --qd 32 --seconds 5 [--cores N] [--mode poll|adaptive|interrupt]
 *                   [--json]
 *
 * TYPE: null, malloc[:SIZE] (default 1g), aio:PATH, uring:PATH (--buffered: open the
 * file without O_DIRECT, aio and uring alike), error[:N] (an error bdev over a null
 * bdev failing every Nth request, default every one), or nexus:null,
 * nexus:malloc[:SIZE], nexus:aio:PATH1,PATH2 (a 2-way nexus volume over two such
 * bdevs; --bitmap on|off and --bitmap-region SIZE set its write-intent bitmap). One reactor per core, one job
 * thread per reactor, each keeping QD requests in flight on its own descriptor and
 * channel. Average and p99 latency come from sampled requests: every 16th request is
 * timed with the TSC, so the measurement does not dominate a tens-of-nanoseconds
 * path. cpu_pct is process CPU time over wall time (100 per fully busy core): on a
 * shared machine, iops / (cpu_pct / 100) tells the cost per busy core.
 * Each job thread also runs a 1 ms timed poller and reports how late it ran at worst
 * (timer_late_max_us): what a request that blocks the reactor costs everything else,
 * and how often its OS thread went to sleep in the kernel (reactor_sleeps: voluntary
 * context switches; in poll mode each is a syscall that blocked, which a loaded machine
 * does not add to, unlike lateness).
 *
 * A run in which any request failed exits 1 and says how many failed: a figure
 * measured over failing I/O is not a measurement of the path.
 *
 * Adding a bdev type (e.g. the nexus): add an entry to g_bench_types whose create
 * function registers the bdev named g_bdev_name and returns 0, or returns 1 and
 * calls bench_created(status) later.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "bench.h"
#include "keel/bdev.h"
#include "keel/bdev_module.h"
#include "keel/bdev_uring.h"
#include "keel/log.h"
#include "keel/nexus.h"
#include "keel/reactor.h"

#include "bdev/aio/bdev_aio_internal.h"
#include "bdev/uring/bdev_uring_internal.h"

#define BENCH_MAX_CORES 64
#define BENCH_SAMPLE_MASK 15
#define BENCH_HIST_BUCKETS 2048 /* 64 linear sub-buckets per power of two */
#define BENCH_TIMER_US 1000

struct bench_opts {
	char type[32];
	char arg[4096];
	bool rand;
	bool write;
	uint32_t bs;
	uint32_t qd;
	uint32_t seconds;
	uint32_t cores;
	enum keel_reactor_mode mode;
	bool json;
	int bitmap;             /* nexus: -1 default, 0 off, 1 on */
	uint64_t bitmap_region; /* nexus: 0 = default */
	bool buffered;          /* aio, uring: no O_DIRECT */
};

struct bench_task {
	struct bench_job *job;
	void *buf;
	uint64_t start_tsc;
	bool sampled;
};

struct bench_job {
	uint32_t idx;
	struct keel_thread *thread;
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	struct bench_task *tasks;
	void *bufs;
	uint64_t nblocks; /* in units of bs */
	uint64_t seq;
	uint64_t rng;
	uint32_t inflight;
	bool stopping;
	bool failed;
	bool ended;
	uint64_t ios;
	uint64_t errors;
	uint64_t start_ns;
	uint64_t end_ns;
	uint64_t lat_sum_ticks; /* over sampled requests */
	uint64_t hist[BENCH_HIST_BUCKETS];
	struct keel_poller *stop_poller;
	struct keel_poller *timer_poller; /* 1 ms: how late the reactor runs it */
	uint64_t timer_last_ns;
	uint64_t timer_late_max_ns;
	long nvcsw_start; /* voluntary context switches of the reactor thread */
	long nvcsw;
	int status;
};

static struct bench_opts g_opts;
static struct bench_job g_jobs[BENCH_MAX_CORES];
static const char g_bdev_name[] = "bench0";
static uint32_t g_jobs_done;
static int g_result;
static double g_ns_per_tick = 1.0;
static struct rusage g_ru0;
static uint64_t g_wall0;

static void bench_finish(int status);

/* ------------------------------------------------------------------------------ */
/* Options                                                                         */
/* ------------------------------------------------------------------------------ */

static int parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (!s || *s < '0' || *s > '9') {
		return -EINVAL;
	}
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s) {
		return -EINVAL;
	}
	switch (*end) {
	case 'k':
	case 'K':
		v <<= 10;
		end++;
		break;
	case 'm':
	case 'M':
		v <<= 20;
		end++;
		break;
	case 'g':
	case 'G':
		v <<= 30;
		end++;
		break;
	default:
		break;
	}
	if (*end || v == 0) {
		return -EINVAL;
	}
	*out = v;
	return 0;
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: keel-bench bdev --bdev TYPE[:ARG] --rw randread|randwrite|read|write\n"
		"                  [--bs 4k] [--qd 32] [--seconds 5] [--cores 1]\n"
		"                  [--mode poll|adaptive|interrupt] [--json]\n"
		"                  [--bitmap on|off] [--bitmap-region SIZE] [--buffered]\n"
		"  TYPE: null | malloc[:SIZE] (default 1g) | aio:PATH | uring:PATH |\n"
		"        error[:N] (null behind an error bdev failing every Nth request) |\n"
		"        nexus:null | nexus:malloc[:SIZE] | nexus:aio:PATH1,PATH2 (2 replicas)\n"
		"  --buffered: aio and uring open the file without O_DIRECT\n"
		"  JSON keys: iops, mib_per_s, lat_avg_us, lat_p99_us, cpu_pct, errors,\n"
		"             timer_late_max_us, reactor_sleeps\n"
		"  Exit status: 0 when every request succeeded, 1 when any failed or the\n"
		"  run could not start, 2 for a bad command line.\n");
}

static int parse_args(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"bdev", required_argument, NULL, 'b'},
		{"rw", required_argument, NULL, 'r'},
		{"bs", required_argument, NULL, 's'},
		{"qd", required_argument, NULL, 'q'},
		{"seconds", required_argument, NULL, 't'},
		{"cores", required_argument, NULL, 'c'},
		{"mode", required_argument, NULL, 'm'},
		{"json", no_argument, NULL, 'j'},
		{"bitmap", required_argument, NULL, 'B'},
		{"bitmap-region", required_argument, NULL, 'R'},
		{"buffered", no_argument, NULL, 'D'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	uint64_t v;
	int c;

	memset(&g_opts, 0, sizeof(g_opts));
	g_opts.bs = 4096;
	g_opts.qd = 32;
	g_opts.seconds = 5;
	g_opts.cores = 1;
	g_opts.mode = KEEL_REACTOR_MODE_POLL;
	g_opts.rand = true;
	g_opts.bitmap = -1;
	snprintf(g_opts.type, sizeof(g_opts.type), "null");
	optind = 1;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'b': {
			const char *colon = strchr(optarg, ':');
			size_t tl = colon ? (size_t)(colon - optarg) : strlen(optarg);

			if (tl == 0 || tl >= sizeof(g_opts.type) ||
			    (colon && strlen(colon + 1) >= sizeof(g_opts.arg))) {
				fprintf(stderr, "keel-bench bdev: bad --bdev '%s'\n", optarg);
				return -EINVAL;
			}
			memcpy(g_opts.type, optarg, tl);
			g_opts.type[tl] = 0;
			snprintf(g_opts.arg, sizeof(g_opts.arg), "%s", colon ? colon + 1 : "");
			break;
		}
		case 'r':
			if (strcmp(optarg, "randread") == 0) {
				g_opts.rand = true;
				g_opts.write = false;
			} else if (strcmp(optarg, "randwrite") == 0) {
				g_opts.rand = true;
				g_opts.write = true;
			} else if (strcmp(optarg, "read") == 0) {
				g_opts.rand = false;
				g_opts.write = false;
			} else if (strcmp(optarg, "write") == 0) {
				g_opts.rand = false;
				g_opts.write = true;
			} else {
				fprintf(stderr, "keel-bench bdev: bad --rw '%s'\n", optarg);
				return -EINVAL;
			}
			break;
		case 's':
			if (parse_size(optarg, &v) || v < 512 || v > (64u << 20) || (v & (v - 1))) {
				fprintf(stderr,
					"keel-bench bdev: bad --bs '%s' (power of two, 512..64m)\n",
					optarg);
				return -EINVAL;
			}
			g_opts.bs = (uint32_t)v;
			break;
		case 'q':
			if (parse_size(optarg, &v) || v > 65536) {
				fprintf(stderr, "keel-bench bdev: bad --qd '%s' (1..65536)\n",
					optarg);
				return -EINVAL;
			}
			g_opts.qd = (uint32_t)v;
			break;
		case 't':
			if (parse_size(optarg, &v) || v > 86400) {
				fprintf(stderr, "keel-bench bdev: bad --seconds '%s' (1..86400)\n",
					optarg);
				return -EINVAL;
			}
			g_opts.seconds = (uint32_t)v;
			break;
		case 'c':
			if (parse_size(optarg, &v) || v > BENCH_MAX_CORES) {
				fprintf(stderr, "keel-bench bdev: bad --cores '%s' (1..%d)\n",
					optarg, BENCH_MAX_CORES);
				return -EINVAL;
			}
			g_opts.cores = (uint32_t)v;
			break;
		case 'm':
			if (keel_reactor_mode_parse(optarg, &g_opts.mode)) {
				fprintf(stderr, "keel-bench bdev: bad --mode '%s'\n", optarg);
				return -EINVAL;
			}
			break;
		case 'j':
			g_opts.json = true;
			break;
		case 'B':
			if (strcmp(optarg, "on") != 0 && strcmp(optarg, "off") != 0) {
				fprintf(stderr, "keel-bench bdev: bad --bitmap '%s' (on|off)\n",
					optarg);
				return -EINVAL;
			}
			g_opts.bitmap = strcmp(optarg, "on") == 0;
			break;
		case 'R':
			if (parse_size(optarg, &v) || v < 65536 || (v & (v - 1))) {
				fprintf(stderr,
					"keel-bench bdev: bad --bitmap-region '%s' (power of "
					"two >= 64k)\n",
					optarg);
				return -EINVAL;
			}
			g_opts.bitmap_region = v;
			break;
		case 'D':
			g_opts.buffered = true;
			break;
		case 'h':
			usage(stdout);
			return 1;
		default:
			usage(stderr);
			return -EINVAL;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "keel-bench bdev: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return -EINVAL;
	}
	return 0;
}

/* ------------------------------------------------------------------------------ */
/* Jobs                                                                            */
/* ------------------------------------------------------------------------------ */

static inline uint64_t bench_rand(struct bench_job *job)
{
	uint64_t x = job->rng;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	job->rng = x;
	return x;
}

static inline uint32_t hist_bucket(uint64_t ticks)
{
	uint32_t msb, b;

	if (ticks < 64) {
		return (uint32_t)ticks;
	}
	msb = 63 - (uint32_t)__builtin_clzll(ticks);
	b = (msb - 5) * 64 + (uint32_t)((ticks >> (msb - 6)) & 63);
	return b < BENCH_HIST_BUCKETS ? b : BENCH_HIST_BUCKETS - 1;
}

static uint64_t hist_value(uint32_t b)
{
	uint32_t msb;

	if (b < 64) {
		return b;
	}
	msb = b / 64 + 5;
	return (1ull << msb) | ((uint64_t)(b % 64) << (msb - 6));
}

static void bench_io_done(void *arg, int status);
static void bench_job_end(struct bench_job *job);

static inline void bench_submit(struct bench_task *t)
{
	struct bench_job *job = t->job;
	/* Multiply-shift range reduction: a 64-bit division would cost more than the
	 * whole null-bdev request. */
	uint64_t blk = g_opts.rand
			       ? (uint64_t)(((unsigned __int128)bench_rand(job) * job->nblocks) >>
					    64)
			       : job->seq++ % job->nblocks;
	uint64_t off = blk * g_opts.bs;
	int rc;

	t->sampled = (job->ios & BENCH_SAMPLE_MASK) == 0;
	if (t->sampled) {
		t->start_tsc = keel_ticks();
	}
	if (g_opts.write) {
		rc = keel_bdev_write(job->desc, job->ch, t->buf, off, g_opts.bs, bench_io_done, t);
	} else {
		rc = keel_bdev_read(job->desc, job->ch, t->buf, off, g_opts.bs, bench_io_done, t);
	}
	if (rc) {
		KEEL_ERRLOG("bench job %u: submit failed: %s", job->idx, strerror(-rc));
		job->failed = true;
		job->stopping = true;
		return;
	}
	job->inflight++;
}

static void bench_io_done(void *arg, int status)
{
	struct bench_task *t = arg;
	struct bench_job *job = t->job;

	job->inflight--;
	job->ios++;
	if (status) {
		job->errors++;
	}
	if (t->sampled) {
		uint64_t lat = keel_ticks() - t->start_tsc;

		job->lat_sum_ticks += lat;
		job->hist[hist_bucket(lat)]++;
	}
	if (!job->stopping) {
		bench_submit(t);
		return;
	}
	if (job->inflight == 0) {
		bench_job_end(job);
	}
}

static int bench_stop_poll(void *arg)
{
	struct bench_job *job = arg;

	keel_poller_unregister(&job->stop_poller);
	job->end_ns = keel_now_ns();
	job->stopping = true;
	if (job->inflight == 0) {
		bench_job_end(job);
	}
	return KEEL_POLLER_BUSY;
}

/* The reactor runs this every 1 ms unless something holds it: record the worst delay. */
static int bench_timer_poll(void *arg)
{
	struct bench_job *job = arg;
	uint64_t now = keel_now_ns();

	if (job->timer_last_ns != 0 && now - job->timer_last_ns > BENCH_TIMER_US * 1000ull &&
	    now - job->timer_last_ns - BENCH_TIMER_US * 1000ull > job->timer_late_max_ns) {
		job->timer_late_max_ns = now - job->timer_last_ns - BENCH_TIMER_US * 1000ull;
	}
	job->timer_last_ns = now;
	return KEEL_POLLER_IDLE;
}

static void bench_job_done_main(void *arg)
{
	struct bench_job *job = arg;

	if (job->status && !g_result) {
		g_result = job->status;
	}
	if (++g_jobs_done == g_opts.cores) {
		bench_finish(g_result);
	}
}

static void bench_job_end(struct bench_job *job)
{
	if (job->ended) {
		return;
	}
	job->ended = true;
	if (!job->end_ns) {
		job->end_ns = keel_now_ns();
	}
	{
		struct rusage ru;

		if (getrusage(RUSAGE_THREAD, &ru) == 0) {
			job->nvcsw = ru.ru_nvcsw - job->nvcsw_start;
		}
	}
	keel_poller_unregister(&job->stop_poller);
	keel_poller_unregister(&job->timer_poller);
	if (job->ch) {
		keel_put_io_channel(job->ch);
	}
	job->ch = NULL;
	if (job->desc) {
		keel_bdev_close(job->desc);
	}
	job->desc = NULL;
	if (job->failed && !job->status) {
		job->status = -EIO;
	}
	keel_thread_send_msg(keel_thread_get_main(), bench_job_done_main, job);
	keel_thread_exit(keel_thread_get_current());
}

static void bench_event(enum keel_bdev_event_type type, struct keel_bdev *bdev, void *ctx)
{
	struct bench_job *job = ctx;

	if (type == KEEL_BDEV_EVENT_REMOVE && !job->stopping) {
		KEEL_ERRLOG("bench job %u: bdev removed", job->idx);
		job->failed = true;
		job->stopping = true;
		if (job->inflight == 0) {
			bench_job_end(job);
		}
	}
}

static void bench_job_start(void *arg)
{
	struct bench_job *job = arg;
	struct keel_bdev *bdev;
	size_t align;
	int rc;

	rc = keel_bdev_open_ext(g_bdev_name, g_opts.write, bench_event, job, &job->desc);
	if (rc) {
		job->status = rc;
		goto out_end;
	}
	bdev = keel_bdev_desc_get_bdev(job->desc);
	job->nblocks = keel_bdev_get_num_blocks(bdev) * keel_bdev_get_block_size(bdev) / g_opts.bs;
	if (job->nblocks == 0 || g_opts.bs % keel_bdev_get_block_size(bdev)) {
		KEEL_ERRLOG("bench: --bs %u does not fit bdev %s (block size %u)", g_opts.bs,
			    g_bdev_name, keel_bdev_get_block_size(bdev));
		job->status = -EINVAL;
		goto out_end;
	}
	job->ch = keel_bdev_get_io_channel(job->desc);
	if (!job->ch) {
		job->status = -ENOMEM;
		goto out_end;
	}
	align = keel_bdev_get_buf_align(bdev) > 4096 ? keel_bdev_get_buf_align(bdev) : 4096;
	job->tasks = calloc(g_opts.qd, sizeof(*job->tasks));
	if (!job->tasks || posix_memalign(&job->bufs, align, (size_t)g_opts.qd * g_opts.bs)) {
		job->status = -ENOMEM;
		goto out_end;
	}
	memset(job->bufs, 0xa5, (size_t)g_opts.qd * g_opts.bs);
	job->rng = 0x9e3779b97f4a7c15ull * (job->idx + 1);
	job->seq = job->nblocks / g_opts.cores * job->idx;
	job->stop_poller = keel_poller_register(bench_stop_poll, job,
						(uint64_t)g_opts.seconds * 1000000, "bench_stop");
	job->timer_poller = keel_poller_register(bench_timer_poll, job, BENCH_TIMER_US,
						 "bench_timer");
	{
		struct rusage ru;

		if (getrusage(RUSAGE_THREAD, &ru) == 0) {
			job->nvcsw_start = ru.ru_nvcsw;
		}
	}
	job->start_ns = keel_now_ns();
	for (uint32_t i = 0; i < g_opts.qd && !job->stopping; i++) {
		job->tasks[i].job = job;
		job->tasks[i].buf = (char *)job->bufs + (size_t)i * g_opts.bs;
		bench_submit(&job->tasks[i]);
	}
	if (job->inflight == 0) {
		bench_job_end(job);
	}
	return;

out_end:
	job->stopping = true;
	bench_job_end(job);
}

/* ------------------------------------------------------------------------------ */
/* Setup and report                                                                */
/* ------------------------------------------------------------------------------ */

/* The reactor library's tick clock and its one calibration (keel_ticks). */
static void bench_calibrate(void)
{
	g_ns_per_tick = 1000.0 / keel_ticks_per_us();
}

/* \return the number of failed requests (the report is printed either way). */
static uint64_t bench_report(void)
{
	static uint64_t hist[BENCH_HIST_BUCKETS];
	uint64_t ios = 0, errors = 0, samples = 0, acc = 0, p99_ticks = 0, lat_sum = 0;
	uint64_t timer_late_ns = 0;
	long sleeps = 0;
	double secs = 0, iops = 0, lat_avg_us = 0, cpu_pct, wall, cpu_s;
	struct rusage ru1;

	getrusage(RUSAGE_SELF, &ru1);
	wall = (double)(keel_now_ns() - g_wall0) / 1e9;
	cpu_s = (double)(ru1.ru_utime.tv_sec - g_ru0.ru_utime.tv_sec) +
		(double)(ru1.ru_utime.tv_usec - g_ru0.ru_utime.tv_usec) / 1e6 +
		(double)(ru1.ru_stime.tv_sec - g_ru0.ru_stime.tv_sec) +
		(double)(ru1.ru_stime.tv_usec - g_ru0.ru_stime.tv_usec) / 1e6;
	cpu_pct = wall > 0 ? cpu_s / wall * 100.0 : 0;

	for (uint32_t j = 0; j < g_opts.cores; j++) {
		struct bench_job *job = &g_jobs[j];
		double js = (double)(job->end_ns - job->start_ns) / 1e9;

		ios += job->ios;
		errors += job->errors;
		if (js > 0) {
			iops += (double)job->ios / js;
		}
		if (js > secs) {
			secs = js;
		}
		lat_sum += job->lat_sum_ticks;
		if (job->timer_late_max_ns > timer_late_ns) {
			timer_late_ns = job->timer_late_max_ns;
		}
		sleeps += job->nvcsw;
		for (uint32_t b = 0; b < BENCH_HIST_BUCKETS; b++) {
			hist[b] += job->hist[b];
			samples += job->hist[b];
		}
	}
	if (samples) {
		lat_avg_us = (double)lat_sum / (double)samples * g_ns_per_tick / 1000.0;
	}
	for (uint32_t b = 0; b < BENCH_HIST_BUCKETS && samples; b++) {
		acc += hist[b];
		if (acc * 100 >= samples * 99) {
			p99_ticks = hist_value(b);
			break;
		}
	}
	if (g_opts.json) {
		printf("{\"bdev\": \"%s%s%s\", \"rw\": \"%s%s\", \"bs\": %u, \"qd\": %u, "
		       "\"cores\": %u, \"seconds\": %.3f, \"ios\": %" PRIu64
		       ", \"errors\": %" PRIu64
		       ", \"iops\": %.0f, \"mib_per_s\": %.2f, \"lat_avg_us\": %.3f, "
		       "\"lat_p99_us\": %.3f, \"cpu_pct\": %.1f, \"timer_late_max_us\": %.1f, "
		       "\"reactor_sleeps\": %ld}\n",
		       g_opts.type, g_opts.arg[0] ? ":" : "", g_opts.arg, g_opts.rand ? "rand" : "",
		       g_opts.write ? "write" : "read", g_opts.bs, g_opts.qd, g_opts.cores, secs,
		       ios, errors, iops, iops * g_opts.bs / 1048576.0, lat_avg_us,
		       (double)p99_ticks * g_ns_per_tick / 1000.0, cpu_pct, timer_late_ns / 1000.0,
		       sleeps);
	} else {
		printf("bdev %s%s%s %s%s bs=%u qd=%u cores=%u: %.0f IOPS, %.2f MiB/s, "
		       "lat avg %.3f us, p99 %.3f us, cpu %.1f%%, errors %" PRIu64
		       ", 1 ms timer late by %.1f us at worst, reactor slept %ld times\n",
		       g_opts.type, g_opts.arg[0] ? ":" : "", g_opts.arg, g_opts.rand ? "rand" : "",
		       g_opts.write ? "write" : "read", g_opts.bs, g_opts.qd, g_opts.cores, iops,
		       iops * g_opts.bs / 1048576.0, lat_avg_us,
		       (double)p99_ticks * g_ns_per_tick / 1000.0, cpu_pct, errors,
		       timer_late_ns / 1000.0, sleeps);
	}
	fflush(stdout);
	if (errors != 0) {
		fprintf(stderr,
			"keel-bench bdev: failed: %" PRIu64 " of %" PRIu64 " requests "
			"completed with an error; the figures above do not measure the path\n",
			errors, ios);
	}
	return errors;
}

static void bench_fini_done(void *arg, int status)
{
	keel_reactors_stop();
}

static void bench_finish(int status)
{
	g_result = status;
	if (status == 0) {
		if (bench_report() != 0) {
			g_result = -EIO;
		}
	} else {
		fprintf(stderr, "keel-bench bdev: failed: %s\n", strerror(-status));
	}
	keel_bdev_subsystem_fini(bench_fini_done, NULL);
}

static void bench_start_jobs(void)
{
	getrusage(RUSAGE_SELF, &g_ru0);
	g_wall0 = keel_now_ns();
	for (uint32_t i = 0; i < g_opts.cores; i++) {
		char name[32];
		struct bench_job *job = &g_jobs[i];

		job->idx = i;
		snprintf(name, sizeof(name), "bench_job_%u", i);
		job->thread = keel_thread_create(name, i);
		if (!job->thread || keel_thread_send_msg(job->thread, bench_job_start, job)) {
			fprintf(stderr, "keel-bench bdev: cannot start job %u\n", i);
			job->status = -ENOMEM;
			bench_job_done_main(job);
		}
	}
}

static void bench_created(int status)
{
	if (status) {
		fprintf(stderr, "keel-bench bdev: cannot create the %s bdev: %s\n", g_opts.type,
			strerror(-status));
		bench_finish(status);
		return;
	}
	bench_start_jobs();
}

/*
 * A null bdev whose reads leave the buffers alone: the benchmark measures the stack,
 * as SPDK's bdevperf does over its null bdev (which never touches buffers). keeld's
 * null bdevs zero every read (no daemon memory may reach a client).
 */
static int bench_null(const char *name, uint64_t size, struct keel_bdev **b)
{
	int rc = keel_bdev_null_create(name, NULL, size / 512, 512, b);

	return rc == 0 ? keel_bdev_null_leave_reads_untouched(*b) : rc;
}

static int bench_create_null(const char *arg)
{
	struct keel_bdev *b;

	/* 1 TiB of nothing: random offsets spread like on a real disk. */
	return bench_null(g_bdev_name, 1ull << 40, &b);
}

static int bench_create_malloc(const char *arg)
{
	struct keel_bdev *b;
	uint64_t size = 1ull << 30;

	if (arg[0] && (parse_size(arg, &size) || size < g_opts.bs)) {
		fprintf(stderr, "keel-bench bdev: bad malloc size '%s'\n", arg);
		return -EINVAL;
	}
	return keel_bdev_malloc_create(g_bdev_name, NULL, size / 512, 512, &b);
}

/*
 * error[:N]: a null base bench0.base behind an error bdev bench0 that fails every Nth
 * request of every type with -EIO (N = 1 by default: all of them). It exists so the
 * benchmark's own failure path can be exercised.
 */
static int bench_create_error(const char *arg)
{
	struct keel_bdev_error_rule rule = {
		.io_type = KEEL_BDEV_IO_NUM_TYPES,
		.error = -EIO,
		.every_nth = 1,
	};
	struct keel_bdev *b;
	uint64_t nth = 1;
	int rc;

	if (arg[0] && (parse_size(arg, &nth) || nth > UINT32_MAX)) {
		fprintf(stderr, "keel-bench bdev: bad error period '%s' (error:N, N >= 1)\n", arg);
		return -EINVAL;
	}
	rule.every_nth = (uint32_t)nth;
	rc = bench_null("bench0.base", 1ull << 30, &b);
	if (rc == 0) {
		rc = keel_bdev_error_create(g_bdev_name, "bench0.base", &b);
	}
	if (rc == 0) {
		rc = keel_bdev_error_inject(g_bdev_name, &rule);
	}
	return rc;
}

static void bench_aio_created(void *cb_arg, int status, struct keel_bdev *bdev)
{
	bench_created(status);
}

/* aio:PATH and uring:PATH. */
static int bench_create_file(const char *arg)
{
	bool uring = strcmp(g_opts.type, "uring") == 0;
	int rc;

	if (!arg[0]) {
		fprintf(stderr, "keel-bench bdev: %s needs a path: --bdev %s:PATH\n", g_opts.type,
			g_opts.type);
		return -EINVAL;
	}
	bdev_aio_set_refuse_direct(g_opts.buffered);
	bdev_uring_set_refuse_direct(g_opts.buffered);
	rc = (uring ? keel_bdev_uring_create : keel_bdev_aio_create)(g_bdev_name, arg, 0,
								     bench_aio_created, NULL);
	return rc ? rc : 1;
}

/*
 * nexus:CHILD: two replica bdevs bench0.r0/bench0.r1 of the child type, and a volume
 * named bench0 over them. The volume is created asynchronously (labels are written
 * first), so this returns 1 and bench_created follows.
 */
static int g_nexus_children_pending;
static int g_nexus_child_status;

static void bench_nexus_created(void *cb_arg, int status, const char *errmsg,
				struct keel_nexus *nexus)
{
	if (status != 0) {
		fprintf(stderr, "keel-bench bdev: nexus: %s\n",
			errmsg ? errmsg : strerror(-status));
	}
	bench_created(status);
}

static void bench_nexus_make_volume(void)
{
	static const char *const reps[] = {"bench0.r0", "bench0.r1"};
	struct keel_nexus_create_opts o = {
		.name = g_bdev_name,
		.replicas = reps,
		.num_replicas = 2,
		.force = true,
	};
	int rc;

	if (g_nexus_child_status != 0) {
		bench_created(g_nexus_child_status);
		return;
	}
	rc = keel_nexus_create(&o, bench_nexus_created, NULL);
	if (rc != 0) {
		bench_created(rc);
	}
}

static void bench_nexus_aio_created(void *cb_arg, int status, struct keel_bdev *bdev)
{
	if (status != 0 && g_nexus_child_status == 0) {
		g_nexus_child_status = status;
	}
	if (--g_nexus_children_pending == 0) {
		bench_nexus_make_volume();
	}
}

static int bench_create_nexus(const char *arg)
{
	struct keel_rebuild_opts ro;
	struct keel_bdev *b;
	uint64_t size = 1ull << 30;
	int rc = 0;

	keel_rebuild_get_opts(&ro);
	if (g_opts.bitmap >= 0) {
		ro.bitmap = g_opts.bitmap == 1;
	}
	if (g_opts.bitmap_region != 0) {
		ro.bitmap_region_size = g_opts.bitmap_region;
	}
	if (keel_rebuild_set_opts(&ro) != 0) {
		fprintf(stderr, "keel-bench bdev: bad nexus bitmap options\n");
		return -EINVAL;
	}
	g_nexus_child_status = 0;
	if (strcmp(arg, "null") == 0) {
		/* 64 GiB: random offsets spread over many bitmap regions. */
		rc = bench_null("bench0.r0", 64ull << 30, &b);
		if (rc == 0) {
			rc = bench_null("bench0.r1", 64ull << 30, &b);
		}
	} else if (strncmp(arg, "malloc", 6) == 0 && (arg[6] == '\0' || arg[6] == ':')) {
		if (arg[6] == ':' &&
		    (parse_size(arg + 7, &size) || size < 4 * KEEL_NEXUS_DATA_OFFSET)) {
			fprintf(stderr, "keel-bench bdev: bad nexus malloc size '%s'\n", arg + 7);
			return -EINVAL;
		}
		size += KEEL_NEXUS_DATA_OFFSET;
		rc = keel_bdev_malloc_create("bench0.r0", NULL, size / 512, 512, &b);
		if (rc == 0) {
			rc = keel_bdev_malloc_create("bench0.r1", NULL, size / 512, 512, &b);
		}
	} else if (strncmp(arg, "aio:", 4) == 0 && strchr(arg + 4, ',') != NULL) {
		char p0[4096], p1[4096];
		const char *comma = strchr(arg + 4, ',');

		snprintf(p0, sizeof(p0), "%.*s", (int)(comma - (arg + 4)), arg + 4);
		snprintf(p1, sizeof(p1), "%s", comma + 1);
		g_nexus_children_pending = 2;
		rc = keel_bdev_aio_create("bench0.r0", p0, 0, bench_nexus_aio_created, NULL);
		if (rc != 0) {
			return rc;
		}
		rc = keel_bdev_aio_create("bench0.r1", p1, 0, bench_nexus_aio_created, NULL);
		if (rc != 0) {
			/* The first completes later and sees the failure. */
			g_nexus_child_status = rc;
			g_nexus_children_pending--;
		}
		return 1;
	} else {
		fprintf(stderr, "keel-bench bdev: nexus needs null, malloc[:SIZE] or "
				"aio:PATH1,PATH2\n");
		return -EINVAL;
	}
	if (rc != 0) {
		return rc;
	}
	bench_nexus_make_volume();
	return 1;
}

/* Bdev types: create returns 0 (created now), 1 (bench_created follows) or -errno. */
static const struct {
	const char *type;
	int (*create)(const char *arg);
} g_bench_types[] = {
	{"null", bench_create_null},   {"malloc", bench_create_malloc},
	{"aio", bench_create_file},    {"uring", bench_create_file},
	{"error", bench_create_error}, {"nexus", bench_create_nexus},
};

static void bench_subsystem_ready(void *arg, int status)
{
	int rc = status;
	bool known = false;

	if (rc == 0) {
		for (size_t i = 0; i < sizeof(g_bench_types) / sizeof(g_bench_types[0]); i++) {
			if (strcmp(g_bench_types[i].type, g_opts.type) == 0) {
				known = true;
				rc = g_bench_types[i].create(g_opts.arg);
				break;
			}
		}
		if (!known) {
			fprintf(stderr, "keel-bench bdev: unknown bdev type '%s'\n", g_opts.type);
			rc = -EINVAL;
		}
	}
	if (rc == 1) {
		return;
	}
	bench_created(rc);
}

static void bench_main_start(void *arg)
{
	int rc;

	keel_bdev_module_register(&keel_bdev_malloc_module);
	keel_bdev_module_register(&keel_bdev_null_module);
	keel_bdev_module_register(&keel_bdev_aio_module);
	keel_bdev_module_register(&keel_bdev_uring_module);
	keel_bdev_module_register(&keel_bdev_error_module);
	keel_bdev_module_register(&keel_bdev_nexus_module);
	rc = keel_bdev_subsystem_init(bench_subsystem_ready, NULL);
	if (rc) {
		fprintf(stderr, "keel-bench bdev: bdev init failed: %s\n", strerror(-rc));
		g_result = rc;
		keel_reactors_stop();
	}
}

int bench_bdev_main(int argc, char **argv)
{
	struct keel_reactor_opts ropts;
	char cpus[32];
	int rc;

	rc = parse_args(argc, argv);
	if (rc) {
		return rc > 0 ? 0 : 2;
	}
	if (g_opts.cores == 0 || g_opts.qd == 0 || g_opts.seconds == 0) {
		fprintf(stderr, "keel-bench bdev: --cores, --qd and --seconds must be > 0\n");
		return 2;
	}
	bench_calibrate();
	keel_reactor_opts_init(&ropts);
	snprintf(cpus, sizeof(cpus), "0-%u", g_opts.cores - 1);
	ropts.cpus = cpus;
	ropts.mode = g_opts.mode;
	ropts.watchdog_ms = 0;
	rc = keel_reactors_init(&ropts);
	if (rc) {
		fprintf(stderr, "keel-bench bdev: reactors on cpus %s: %s\n", cpus, strerror(-rc));
		return 1;
	}
	memset(g_jobs, 0, sizeof(g_jobs));
	g_jobs_done = 0;
	g_result = 0;
	rc = keel_reactors_start(bench_main_start, NULL);
	keel_reactors_fini();
	if (rc) {
		fprintf(stderr, "keel-bench bdev: reactors failed: %s\n", strerror(-rc));
		return 1;
	}
	return g_result ? 1 : 0;
}
