/*
 * Real-reactor helpers, see ut_mt.h.
 */
#include <stdbool.h>

#include "ut_cunit.h"
#include "ut_mt.h"

atomic_int ut_mt_errors;
atomic_int ut_mt_first_err_line;

void ut_mt_run_reactors(keel_msg_fn start_fn, void *arg)
{
	struct keel_reactor_opts opts;

	keel_reactor_opts_init(&opts);
	opts.cpus = "0-1";
	opts.no_pin = true;
	opts.watchdog_ms = 0;
	opts.mode = KEEL_REACTOR_MODE_ADAPTIVE;
	/* a one-CPU machine (or cpuset) still runs the test, on one reactor */
	if (keel_reactors_init(&opts) != 0) {
		opts.cpus = "0";
		CU_ASSERT_EQUAL_FATAL(keel_reactors_init(&opts), 0);
	}
	CU_ASSERT_EQUAL(keel_reactors_start(start_fn, arg), 0);
	keel_reactors_fini();
}
