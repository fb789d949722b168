/*
 * Memory pools, NUMA allocation, CPU lists, logging and mode names.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "keel/log.h"
#include "keel/reactor.h"
#include "ut_cunit.h"

static void test_mempool_basic(void)
{
	struct keel_mempool *pool;
	void *objs[16];

	CU_ASSERT_PTR_NULL(keel_mempool_create("bad", 0, 8, -1));
	pool = keel_mempool_create("p", 16, 100, -1);
	CU_ASSERT_PTR_NOT_NULL_FATAL(pool);
	CU_ASSERT_EQUAL(keel_mempool_count(pool), 16);
	for (int i = 0; i < 16; i++) {
		objs[i] = keel_mempool_get(pool);
		CU_ASSERT_PTR_NOT_NULL_FATAL(objs[i]);
		CU_ASSERT_EQUAL((uintptr_t)objs[i] % 64, 0);
		memset(objs[i], 0xab, 100);
		for (int j = 0; j < i; j++) {
			CU_ASSERT_PTR_NOT_EQUAL(objs[i], objs[j]);
		}
	}
	CU_ASSERT_EQUAL(keel_mempool_count(pool), 0);
	CU_ASSERT_PTR_NULL(keel_mempool_get(pool));
	for (int i = 0; i < 16; i++) {
		keel_mempool_put(pool, objs[i]);
	}
	CU_ASSERT_EQUAL(keel_mempool_count(pool), 16);
	keel_mempool_free(pool);
}

static int ptr_cmp(const void *a, const void *b)
{
	uintptr_t x = (uintptr_t) * (void *const *)a, y = (uintptr_t) * (void *const *)b;

	return x < y ? -1 : x > y;
}

/*
 * A pool starts small and grows as it runs dry, up to its count: every object up to
 * the count can be had, distinct, aligned and whole (ASan sees a segment too short).
 */
#define GROW_COUNT 1000
#define GROW_THREADS 4
/* Fresh pools the threads grow at once: the race is in the first growths of each. */
#define GROW_REPEATS 50

static void *grow_worker(void *arg)
{
	struct keel_mempool *pool = arg;
	void **objs = calloc(GROW_COUNT / GROW_THREADS, sizeof(void *));
	uintptr_t bad = 0;

	for (int round = 0; round < 3 && objs != NULL; round++) {
		for (int i = 0; i < GROW_COUNT / GROW_THREADS; i++) {
			objs[i] = keel_mempool_get(pool);
			if (objs[i] == NULL || (uintptr_t)objs[i] % 64 != 0) {
				bad++;
				continue;
			}
			memset(objs[i], round, 200);
		}
		for (int i = 0; i < GROW_COUNT / GROW_THREADS; i++) {
			if (objs[i] != NULL) {
				keel_mempool_put(pool, objs[i]);
			}
		}
	}
	free(objs);
	return (void *)bad;
}

static void test_mempool_grows(void)
{
	struct keel_mempool *pool = keel_mempool_create("g", GROW_COUNT, 200, -1);
	static void *objs[GROW_COUNT];
	pthread_t t[GROW_THREADS];
	void *bad;

	CU_ASSERT_PTR_NOT_NULL_FATAL(pool);
	CU_ASSERT_EQUAL(keel_mempool_count(pool), GROW_COUNT);
	for (int i = 0; i < GROW_COUNT; i++) {
		objs[i] = keel_mempool_get(pool);
		CU_ASSERT_PTR_NOT_NULL_FATAL(objs[i]);
		CU_ASSERT_EQUAL((uintptr_t)objs[i] % 64, 0);
		memset(objs[i], 0xcd, 200);
	}
	CU_ASSERT_EQUAL(keel_mempool_count(pool), 0);
	CU_ASSERT_PTR_NULL(keel_mempool_get(pool));
	/* Distinct: sorted addresses at least one stride apart. */
	qsort(objs, GROW_COUNT, sizeof(void *), ptr_cmp);
	for (int i = 1; i < GROW_COUNT; i++) {
		CU_ASSERT((uintptr_t)objs[i] - (uintptr_t)objs[i - 1] >= 256);
	}
	for (int i = 0; i < GROW_COUNT; i++) {
		keel_mempool_put(pool, objs[i]);
	}
	CU_ASSERT_EQUAL(keel_mempool_count(pool), GROW_COUNT);
	keel_mempool_free(pool);

	/* Threads growing one pool at once (run under TSan too): together they never want
	 * more than the pool's count, so no get may come back empty, even when another
	 * thread took what a growth added before this one could. */
	for (int rep = 0; rep < GROW_REPEATS; rep++) {
		pool = keel_mempool_create("g2", GROW_COUNT, 200, -1);
		CU_ASSERT_PTR_NOT_NULL_FATAL(pool);
		for (int i = 0; i < GROW_THREADS; i++) {
			CU_ASSERT_EQUAL_FATAL(pthread_create(&t[i], NULL, grow_worker, pool), 0);
		}
		for (int i = 0; i < GROW_THREADS; i++) {
			pthread_join(t[i], &bad);
			CU_ASSERT_PTR_NULL(bad);
		}
		CU_ASSERT_EQUAL(keel_mempool_count(pool), GROW_COUNT);
		keel_mempool_free(pool);
	}
}

static void test_mempool_cache(void)
{
	struct keel_mempool *pool = keel_mempool_create("c", 64, 32, 0);
	struct keel_mempool_cache *cache;
	void *objs[64];

	CU_ASSERT_PTR_NOT_NULL_FATAL(pool);
	cache = keel_mempool_cache_create(pool, 16);
	CU_ASSERT_PTR_NOT_NULL_FATAL(cache);
	CU_ASSERT_EQUAL(keel_mempool_count(pool), 64);
	objs[0] = keel_mempool_cache_get(cache);
	/* First get refills half the cache size. */
	CU_ASSERT_EQUAL(keel_mempool_count(pool), 56);
	for (int i = 1; i < 8; i++) {
		objs[i] = keel_mempool_cache_get(cache);
	}
	CU_ASSERT_EQUAL(keel_mempool_count(pool), 56);
	objs[8] = keel_mempool_cache_get(cache);
	CU_ASSERT_EQUAL(keel_mempool_count(pool), 48);
	for (int i = 9; i < 64; i++) {
		objs[i] = keel_mempool_cache_get(cache);
		CU_ASSERT_PTR_NOT_NULL(objs[i]);
	}
	CU_ASSERT_EQUAL(keel_mempool_count(pool), 0);
	CU_ASSERT_PTR_NULL(keel_mempool_cache_get(cache));
	/* Puts fill the cache to 16, the 17th drains 8 back to the pool. */
	for (int i = 0; i < 16; i++) {
		keel_mempool_cache_put(cache, objs[i]);
	}
	CU_ASSERT_EQUAL(keel_mempool_count(pool), 0);
	keel_mempool_cache_put(cache, objs[16]);
	CU_ASSERT_EQUAL(keel_mempool_count(pool), 8);
	for (int i = 17; i < 64; i++) {
		keel_mempool_cache_put(cache, objs[i]);
	}
	keel_mempool_cache_free(cache);
	CU_ASSERT_EQUAL(keel_mempool_count(pool), 64);
	keel_mempool_free(pool);
}

static void test_numa_alloc(void)
{
	uint8_t *p = keel_numa_zalloc(1000, -1);
	uint8_t *q = keel_numa_zalloc(5000, 0);

	CU_ASSERT_PTR_NOT_NULL_FATAL(p);
	CU_ASSERT_PTR_NOT_NULL_FATAL(q);
	CU_ASSERT_EQUAL((uintptr_t)p % 64, 0);
	CU_ASSERT_EQUAL((uintptr_t)q % 64, 0);
	for (int i = 0; i < 1000; i++) {
		CU_ASSERT_EQUAL_FATAL(p[i], 0);
	}
	for (int i = 0; i < 5000; i++) {
		CU_ASSERT_EQUAL_FATAL(q[i], 0);
	}
	keel_numa_free(p, 1000);
	keel_numa_free(q, 5000);
	keel_numa_free(NULL, 0);
	CU_ASSERT_EQUAL(keel_reactor_numa_node(KEEL_REACTOR_ANY), -1);
}

static void test_cpulist(void)
{
	uint32_t cpus[8];
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	CU_ASSERT_EQUAL(keel_cpulist_parse("0", cpus, 8), 1);
	CU_ASSERT_EQUAL(cpus[0], 0);
	CU_ASSERT_EQUAL(keel_cpulist_parse("", cpus, 8), -EINVAL);
	CU_ASSERT_EQUAL(keel_cpulist_parse("a", cpus, 8), -EINVAL);
	CU_ASSERT_EQUAL(keel_cpulist_parse("0,", cpus, 8), -EINVAL);
	CU_ASSERT_EQUAL(keel_cpulist_parse("1-0", cpus, 8), -EINVAL);
	CU_ASSERT_EQUAL(keel_cpulist_parse("4095", cpus, 8), -EINVAL); /* not online */
	if (n >= 2) {
		CU_ASSERT_EQUAL(keel_cpulist_parse("1,0,0-1", cpus, 8), 2);
		CU_ASSERT_EQUAL(cpus[0], 0);
		CU_ASSERT_EQUAL(cpus[1], 1);
		CU_ASSERT_EQUAL(keel_cpulist_parse("0-1", cpus, 1), -E2BIG);
	} else {
		ut_skip("lists of 2 CPUs need 2 online CPUs, this machine has %ld", n);
	}
}

static char g_line[512];
static int g_lines;

static void hook(enum keel_log_level level, const char *line, void *ctx)
{
	(void)level;
	(void)ctx;
	g_lines++;
	snprintf(g_line, sizeof(g_line), "%s", line);
}

static void test_log(void)
{
	enum keel_log_level level = KEEL_LOG_ERROR;
	char buf[512] = "";
	int fds[2];
	ssize_t n;

	CU_ASSERT_EQUAL(keel_log_level_parse("DeBuG", &level), 0);
	CU_ASSERT_EQUAL(level, KEEL_LOG_DEBUG);
	CU_ASSERT_EQUAL(keel_log_level_parse("nope", &level), -EINVAL);
	CU_ASSERT_EQUAL(level, KEEL_LOG_DEBUG);
	CU_ASSERT_EQUAL(keel_log_get_level(), KEEL_LOG_NOTICE);

	CU_ASSERT_EQUAL_FATAL(pipe(fds), 0);
	fcntl(fds[0], F_SETFL, O_NONBLOCK);
	keel_log_set_fd(fds[1]);
	keel_log_set_hook(hook, NULL);
	KEEL_INFOLOG("filtered %d", 1);
	CU_ASSERT_EQUAL(g_lines, 0);
	KEEL_WARNLOG("volume %s: hello %d", "v1", 42);
	CU_ASSERT_EQUAL(g_lines, 1);
	CU_ASSERT_PTR_NOT_NULL(strstr(g_line, "keel[WARN] "));
	CU_ASSERT_PTR_NOT_NULL(strstr(g_line, ": volume v1: hello 42"));
	CU_ASSERT_EQUAL(g_line[strlen(g_line) - 1], '2'); /* no newline for the hook */
	n = read(fds[0], buf, sizeof(buf) - 1);
	CU_ASSERT_TRUE(n > 0);
	if (n > 0) {
		buf[n] = '\0';
		CU_ASSERT_EQUAL(buf[n - 1], '\n');
		CU_ASSERT_PTR_NOT_NULL(strstr(buf, "volume v1: hello 42"));
	}
	keel_log_set_level(KEEL_LOG_DEBUG);
	KEEL_DEBUGLOG("dbg");
	CU_ASSERT_EQUAL(g_lines, 2);
	keel_log_set_level(KEEL_LOG_NOTICE);
	keel_log_set_hook(NULL, NULL);
	keel_log_set_fd(-1);
	close(fds[0]);
	close(fds[1]);
}

static void test_mode_names(void)
{
	enum keel_reactor_mode mode;
	struct keel_reactor_opts opts;

	CU_ASSERT_EQUAL(keel_reactor_mode_parse("poll", &mode), 0);
	CU_ASSERT_EQUAL(mode, KEEL_REACTOR_MODE_POLL);
	CU_ASSERT_EQUAL(keel_reactor_mode_parse("interrupt", &mode), 0);
	CU_ASSERT_EQUAL(mode, KEEL_REACTOR_MODE_INTERRUPT);
	CU_ASSERT_EQUAL(keel_reactor_mode_parse("adaptive", &mode), 0);
	CU_ASSERT_EQUAL(mode, KEEL_REACTOR_MODE_ADAPTIVE);
	CU_ASSERT_EQUAL(keel_reactor_mode_parse("fast", &mode), -EINVAL);
	CU_ASSERT_STRING_EQUAL(keel_reactor_mode_name(KEEL_REACTOR_MODE_POLL), "poll");
	keel_reactor_opts_init(&opts);
	CU_ASSERT_EQUAL(opts.mode, KEEL_REACTOR_MODE_ADAPTIVE);
	CU_ASSERT_EQUAL(opts.watchdog_ms, 1000);
	CU_ASSERT_EQUAL(opts.blocking_threads, 2);
	CU_ASSERT_EQUAL(opts.msg_ring_size, 16384);
	CU_ASSERT_EQUAL(opts.adaptive_spin_us, 200);
	CU_ASSERT_EQUAL(keel_reactor_count(), 0);
	CU_ASSERT_EQUAL(keel_reactor_current(), KEEL_REACTOR_ANY);
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"mempool_basic", test_mempool_basic},
		{"mempool_cache", test_mempool_cache},
		{"mempool_grows", test_mempool_grows},
		{"numa_alloc", test_numa_alloc},
		{"cpulist", test_cpulist},
		{"log", test_log},
		{"mode_names", test_mode_names},
		{NULL, NULL},
	};

	return ut_cunit_run("mempool", tests);
}
