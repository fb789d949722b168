/*
 * Real-reactor helpers, see ut_mt.h.
 */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ut_cunit.h"
#include "ut_mt.h"

atomic_int ut_mt_errors;
atomic_int ut_mt_first_err_line;

bool ut_mt_run_reactors(keel_msg_fn start_fn, void *arg)
{
	struct keel_reactor_opts opts;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	int rc;

	/* Unpinned reactors may share one CPU, but the cpu list names online CPUs. */
	if (ncpu < 2) {
		ut_skip("needs 2 online CPUs for 2 reactors, this machine has %ld", ncpu);
		return false;
	}
	keel_reactor_opts_init(&opts);
	opts.cpus = "0-1";
	opts.no_pin = true;
	opts.watchdog_ms = 0;
	opts.mode = KEEL_REACTOR_MODE_ADAPTIVE;
	rc = keel_reactors_init(&opts);
	if (rc != 0) {
		fprintf(stderr, "ut_mt: 2 reactors on CPUs 0-1: %s\n", strerror(-rc));
		CU_FAIL("cannot set up 2 reactors");
		return false;
	}
	CU_ASSERT_EQUAL(keel_reactor_count(), 2);
	rc = keel_reactors_start(start_fn, arg);
	CU_ASSERT_EQUAL(rc, 0);
	keel_reactors_fini();
	return rc == 0;
}
