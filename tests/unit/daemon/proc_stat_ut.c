/*
 * Unit tests of the /proc/stat parsing behind framework_get_reactors' usr, sys and irq
 * (daemon/proc_stat.c): the right core's line, no confusion of cpu1 with cpu10, and
 * the real file of this machine.
 */
#include <errno.h>
#include <stdlib.h>

#include "proc_stat.h"
#include "ut_cunit.h"

static const char g_sample[] = "cpu  900 1 800 5000 7 60 5 0 0 0\n"
			       "cpu0 100 1 200 3000 3 40 2 0 0 0\n"
			       "cpu10 444 0 555 1000 0 666 2 0 0 0\n"
			       "cpu1 11 0 22 1000 0 33 1 0 0 0\n"
			       "intr 12345 0 0\n";

static void test_core_lines(void)
{
	struct proc_cpu_times t = {0, 0, 0};

	CU_ASSERT_EQUAL(keeld_proc_stat_cpu_times(g_sample, 0, &t), 0);
	CU_ASSERT_EQUAL(t.usr, 100);
	CU_ASSERT_EQUAL(t.sys, 200);
	CU_ASSERT_EQUAL(t.irq, 40);
	CU_ASSERT_EQUAL(keeld_proc_stat_cpu_times(g_sample, 1, &t), 0);
	CU_ASSERT_EQUAL(t.usr, 11);
	CU_ASSERT_EQUAL(t.sys, 22);
	CU_ASSERT_EQUAL(t.irq, 33);
	CU_ASSERT_EQUAL(keeld_proc_stat_cpu_times(g_sample, 10, &t), 0);
	CU_ASSERT_EQUAL(t.usr, 444);
	CU_ASSERT_EQUAL(t.irq, 666);
}

static void test_missing_or_short(void)
{
	struct proc_cpu_times t = {0, 0, 0};

	CU_ASSERT_EQUAL(keeld_proc_stat_cpu_times(g_sample, 2, &t), -ENOENT);
	CU_ASSERT_EQUAL(keeld_proc_stat_cpu_times("cpu0 1 2 3\n", 0, &t), -ENOENT);
	CU_ASSERT_EQUAL(keeld_proc_stat_cpu_times("", 0, &t), -ENOENT);
}

static void test_this_machine(void)
{
	size_t size = 1 << 20;
	char *buf = malloc(size);
	struct proc_cpu_times t = {0, 0, 0};

	CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
	CU_ASSERT_EQUAL(keeld_proc_stat_read(buf, size), 0);
	CU_ASSERT_EQUAL(keeld_proc_stat_cpu_times(buf, 0, &t), 0);
	CU_ASSERT_TRUE(t.usr + t.sys > 0);
	/* truncated to what fits, still NUL-terminated */
	CU_ASSERT_EQUAL(keeld_proc_stat_read(buf, 8), 0);
	CU_ASSERT_EQUAL(buf[7], '\0');
	CU_ASSERT_EQUAL(keeld_proc_stat_read(buf, 0), -EINVAL);
	free(buf);
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"core_lines", test_core_lines},
		{"missing_or_short", test_missing_or_short},
		{"this_machine", test_this_machine},
		{NULL, NULL},
	};

	return ut_cunit_run("proc_stat", tests);
}
