/*
 * Daemon-wide NBD limits: the options, the buffer budget and the counters.
 *
 * Options are set on the main thread and read by every NBD thread on each decision, so
 * each is an atomic read with relaxed order: a new value takes effect a little later
 * on another thread, which is all a limit needs. The budget is one atomic counter of
 * payload bytes that requests hold; reserving is a compare-and-swap, so two threads
 * can never both pass the last free bytes.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>

#include "keel/nbd.h"
#include "nbd/nbd_internal.h"

static _Atomic uint64_t g_buffer_budget = KEEL_NBD_DEFAULT_BUFFER_BUDGET;
static _Atomic uint32_t g_max_connections = KEEL_NBD_DEFAULT_MAX_CONNECTIONS;
static _Atomic uint32_t g_max_export_connections = KEEL_NBD_DEFAULT_MAX_EXPORT_CONNECTIONS;
static _Atomic uint32_t g_handshake_timeout_ms = KEEL_NBD_DEFAULT_HANDSHAKE_TIMEOUT_MS;
static _Atomic uint32_t g_stall_timeout_ms = KEEL_NBD_DEFAULT_STALL_TIMEOUT_MS;

static _Atomic uint64_t g_budget_used;
static _Atomic uint64_t g_stats[NBD_STAT_COUNT];
static _Atomic uint32_t g_connections;

#define NBD_LOAD(v) atomic_load_explicit(&(v), memory_order_relaxed)
#define NBD_STORE(v, x) atomic_store_explicit(&(v), (x), memory_order_relaxed)

void keel_nbd_options_init(struct keel_nbd_options *opts)
{
	opts->buffer_budget = KEEL_NBD_DEFAULT_BUFFER_BUDGET;
	opts->max_connections = KEEL_NBD_DEFAULT_MAX_CONNECTIONS;
	opts->max_export_connections = KEEL_NBD_DEFAULT_MAX_EXPORT_CONNECTIONS;
	opts->handshake_timeout_ms = KEEL_NBD_DEFAULT_HANDSHAKE_TIMEOUT_MS;
	opts->stall_timeout_ms = KEEL_NBD_DEFAULT_STALL_TIMEOUT_MS;
}

static int nbd_check_range(const char *what, uint64_t v, uint64_t min, uint64_t max,
			   const char *unit, char *err, size_t err_len)
{
	if (v >= min && v <= max) {
		return 0;
	}
	if (err != NULL && err_len > 0) {
		snprintf(err, err_len, "%s must be %llu..%llu%s, not %llu", what,
			 (unsigned long long)min, (unsigned long long)max, unit,
			 (unsigned long long)v);
	}
	return -EINVAL;
}

int keel_nbd_set_options(const struct keel_nbd_options *opts, char *err, size_t err_len)
{
	int rc;

	if (opts == NULL) {
		return -EINVAL;
	}
	rc = nbd_check_range("buffer_budget", opts->buffer_budget, KEEL_NBD_MIN_BUFFER_BUDGET,
			     KEEL_NBD_MAX_BUFFER_BUDGET, " bytes", err, err_len);
	if (rc == 0) {
		rc = nbd_check_range("max_connections", opts->max_connections, 1,
				     KEEL_NBD_MAX_CONNECTIONS_LIMIT, "", err, err_len);
	}
	if (rc == 0) {
		rc = nbd_check_range("max_export_connections", opts->max_export_connections, 1,
				     KEEL_NBD_MAX_CONNECTIONS_LIMIT, "", err, err_len);
	}
	if (rc == 0) {
		rc = nbd_check_range("handshake_timeout_ms", opts->handshake_timeout_ms,
				     KEEL_NBD_MIN_TIMEOUT_MS, KEEL_NBD_MAX_TIMEOUT_MS, " ms", err,
				     err_len);
	}
	if (rc == 0) {
		rc = nbd_check_range("stall_timeout_ms", opts->stall_timeout_ms,
				     KEEL_NBD_MIN_TIMEOUT_MS, KEEL_NBD_MAX_TIMEOUT_MS, " ms", err,
				     err_len);
	}
	if (rc != 0) {
		return rc;
	}
	NBD_STORE(g_buffer_budget, opts->buffer_budget);
	NBD_STORE(g_max_connections, opts->max_connections);
	NBD_STORE(g_max_export_connections, opts->max_export_connections);
	NBD_STORE(g_handshake_timeout_ms, opts->handshake_timeout_ms);
	NBD_STORE(g_stall_timeout_ms, opts->stall_timeout_ms);
	return 0;
}

void keel_nbd_get_options(struct keel_nbd_options *opts)
{
	opts->buffer_budget = NBD_LOAD(g_buffer_budget);
	opts->max_connections = NBD_LOAD(g_max_connections);
	opts->max_export_connections = NBD_LOAD(g_max_export_connections);
	opts->handshake_timeout_ms = NBD_LOAD(g_handshake_timeout_ms);
	opts->stall_timeout_ms = NBD_LOAD(g_stall_timeout_ms);
}

void keel_nbd_get_stats(struct keel_nbd_stats *stats)
{
	stats->connections = NBD_LOAD(g_connections);
	stats->connections_refused = NBD_LOAD(g_stats[NBD_STAT_REFUSED]);
	stats->buffer_bytes = NBD_LOAD(g_budget_used);
	stats->buffer_waits = NBD_LOAD(g_stats[NBD_STAT_BUFFER_WAITS]);
	stats->handshake_timeouts = NBD_LOAD(g_stats[NBD_STAT_HANDSHAKE_TIMEOUTS]);
	stats->stall_timeouts = NBD_LOAD(g_stats[NBD_STAT_STALL_TIMEOUTS]);
	stats->tls_handshakes = NBD_LOAD(g_stats[NBD_STAT_TLS_HANDSHAKES]);
	stats->tls_failures = NBD_LOAD(g_stats[NBD_STAT_TLS_FAILURES]);
	stats->cached_buffer_bytes = nbd_buf_cached_bytes();
}

uint64_t nbd_handshake_timeout_ns(void)
{
	return (uint64_t)NBD_LOAD(g_handshake_timeout_ms) * 1000000ull;
}

uint64_t nbd_stall_timeout_ns(void)
{
	return (uint64_t)NBD_LOAD(g_stall_timeout_ms) * 1000000ull;
}

uint32_t nbd_max_connections(void)
{
	return NBD_LOAD(g_max_connections);
}

uint32_t nbd_max_export_connections(void)
{
	return NBD_LOAD(g_max_export_connections);
}

void nbd_connections_set(uint32_t n)
{
	NBD_STORE(g_connections, n);
}

bool nbd_budget_reserve(uint64_t len)
{
	uint64_t used = NBD_LOAD(g_budget_used);
	uint64_t budget = NBD_LOAD(g_buffer_budget);

	do {
		/* Alone, a request bigger than the budget still runs: nothing to wait for. */
		if (used != 0 && used + len > budget) {
			return false;
		}
	} while (!atomic_compare_exchange_weak_explicit(
		&g_budget_used, &used, used + len, memory_order_relaxed, memory_order_relaxed));
	return true;
}

void nbd_budget_release(uint64_t len)
{
	atomic_fetch_sub_explicit(&g_budget_used, len, memory_order_relaxed);
}

void nbd_stat_inc(enum nbd_stat stat)
{
	atomic_fetch_add_explicit(&g_stats[stat], 1, memory_order_relaxed);
}
