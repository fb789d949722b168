/*
 * What the pieces of keeld's metrics endpoint share (daemon/metrics.h is the outside):
 *
 *   metrics_http.c     the HTTP server (libmicrohttpd's thread), the wait for a snapshot
 *   metrics_collect.c  the snapshot, gathered on the main keel thread
 *   metrics_render.c   snapshot and process figures -> Prometheus text format 0.0.4
 *
 * The snapshot is a JSON document owned by whoever holds it (never shared):
 *   {"volumes": [volume_get's object, plus "io": iostat (below) for the volume bdev and
 *                for each replica that has a bdev],
 *    "exports": [{"name", "bdev", "connections", "bytes_in", "bytes_out"}],
 *    "nbd": nbd_get_stats' counters,
 *    "reactors": [{"reactor", "cpu", "mode", "busy_ns", "idle_ns", "wakeups"}]}
 * iostat: {"read"|"write"|...: {"ops", "bytes", "errors", "lat_sum_ns",
 *          "lat_hist": [KEEL_BDEV_LAT_BUCKETS counts]}}.
 */
#ifndef KEEL_DAEMON_METRICS_INTERNAL_H
#define KEEL_DAEMON_METRICS_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

/**
 * Hand a finished snapshot (reference stolen; NULL when gathering failed) to the scrape
 * waiting for it; dropped when nobody waits any more. Any thread; takes the endpoint's
 * mutex only to swap a pointer, so a reactor never waits on rendering or HTTP.
 */
void keeld_metrics_snapshot_ready(json_t *snapshot);

/**
 * Gather a snapshot, then keeld_metrics_snapshot_ready(). A keel_msg_fn: runs on the
 * main keel thread (the owner of volumes and exports), which the HTTP thread messages.
 * Bdev statistics are summed over every channel by message, one bdev at a time.
 */
void keeld_metrics_collect(void *arg);

/** Figures of the keeld process, read from /proc on the HTTP thread. */
struct metrics_process {
	bool have_rss;
	uint64_t rss_bytes;
	bool have_fds;
	uint64_t open_fds;
	uint64_t max_fds;
	bool have_cpu;
	double cpu_seconds;
	double start_time_seconds; /**< since the epoch; 0 when unknown */
	double collect_seconds;    /**< how long the daemon took to answer this scrape */
};

/** Fill \p proc from /proc/self (what cannot be read stays unset). Not on a reactor. */
void keeld_metrics_process_read(struct metrics_process *proc);

/**
 * Write \p snapshot (may be NULL: only the process figures) and \p proc as Prometheus
 * text to \p out. Any thread. \return 0 or -EIO when writing failed.
 */
int keeld_metrics_render(FILE *out, json_t *snapshot, const struct metrics_process *proc);

#endif /* KEEL_DAEMON_METRICS_INTERNAL_H */
