/*
 * Test-only RPC methods: faults that no client could cause, for the tests of what
 * keeld does about them. Registered only when keeld starts with KEEL_DEBUG_RPC=1 in
 * its environment (tests/e2e set it; a unit file never does), so a production keeld
 * does not even list them.
 *
 * framework_debug_stall_reactor blocks one reactor for a while, as a poller stuck in a
 * system call would: the reactor watchdog reports it and the systemd watchdog pings
 * stop (tests/e2e/test_systemd.sh).
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "keel/log.h"
#include "keel/reactor.h"
#include "keel/rpc.h"
#include "rpc_methods.h"

#define RPC_DEBUG_STALL_MAX_MS 600000

struct rpc_stall_params {
	int64_t reactor;
	int64_t ms;
};

/* Runs on the reactor to stall: sleeps there (blocks it) for the time asked. */
static void rpc_debug_stall_msg(void *arg)
{
	int64_t ms = (int64_t)(intptr_t)arg;
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};

	KEEL_WARNLOG("debug: reactor %u stalls for %lld ms on request", keel_reactor_current(),
		     (long long)ms);
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
	KEEL_NOTICELOG("debug: reactor %u resumes", keel_reactor_current());
	keel_thread_exit(keel_thread_get_current());
}

static void rpc_framework_debug_stall_reactor(struct keel_rpc_request *req, json_t *params)
{
	static const struct keel_rpc_param table[] = {
		{"reactor", KEEL_RPC_PARAM_INT64, offsetof(struct rpc_stall_params, reactor),
		 false},
		{"ms", KEEL_RPC_PARAM_INT64, offsetof(struct rpc_stall_params, ms), false},
	};
	struct rpc_stall_params p = {0};
	struct keel_thread *thread;
	int rc;

	if (!keel_rpc_decode_params(req, params, table, 2, &p)) {
		return;
	}
	if (p.reactor < 0 || p.reactor >= (int64_t)keel_reactor_count()) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS,
				    "reactor: no reactor %lld: there are %u (0 to %u)",
				    (long long)p.reactor, keel_reactor_count(),
				    keel_reactor_count() - 1);
		return;
	}
	if (p.ms < 1 || p.ms > RPC_DEBUG_STALL_MAX_MS) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS, "ms: %lld is out of range 1..%d",
				    (long long)p.ms, RPC_DEBUG_STALL_MAX_MS);
		return;
	}
	/* A thread of its own on that reactor: the stall blocks the whole reactor, and
	 * the thread leaves when it is over. */
	thread = keel_thread_create("debug_stall", (uint32_t)p.reactor);
	if (thread == NULL) {
		keel_rpc_send_error(req, -ENOMEM, "cannot create a thread on reactor %lld",
				    (long long)p.reactor);
		return;
	}
	rc = keel_thread_send_msg(thread, rpc_debug_stall_msg, (void *)(intptr_t)p.ms);
	if (rc != 0) {
		/* A fresh thread's ring is empty: only a thread that is going away refuses. */
		keel_rpc_send_error(req, rc, "cannot reach reactor %lld: %s", (long long)p.reactor,
				    strerror(-rc));
		return;
	}
	/* Answered now: for reactor 0 the answer leaves once the stall is over. */
	keel_rpc_send_result(req, NULL);
}

void rpc_debug_register(void)
{
	const char *env = getenv("KEEL_DEBUG_RPC");

	if (env == NULL || strcmp(env, "1") != 0) {
		return;
	}
	KEEL_WARNLOG("keeld: KEEL_DEBUG_RPC=1: test-only methods are enabled "
		     "(framework_debug_stall_reactor); never in production");
	keel_rpc_register_method("framework_debug_stall_reactor", rpc_framework_debug_stall_reactor,
				 "Test only: block {reactor, ms} as a stuck poller would");
}
