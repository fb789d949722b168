/*
 * The snapshot as Prometheus text (exposition format 0.0.4): every family once, with
 * HELP and TYPE lines, samples of a family together, base units (seconds, bytes),
 * _total on counters. The names are documented in docs/monitoring.md; a change here is
 * a change for every dashboard and alert built on them.
 *
 * Also the process figures, read from /proc on the HTTP thread (they need open(),
 * which a reactor must not do).
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "keel/bdev.h"
#include "metrics_internal.h"

#ifndef KEEL_VERSION
#define KEEL_VERSION "0.0.0"
#endif

/*
 * Histogram buckets: the bdev layer counts latencies in powers of two of microseconds
 * (bucket i holds [2^i, 2^(i+1)) us). Bucket i ends at le = 2^(i+1) us; the last
 * finite bound shown is 2^27 us (134 s), beyond which only +Inf counts.
 */
#define METRICS_LAT_TOP_BUCKET 26

static const char *const g_volume_states[] = {
	"online", "degraded", "faulted", "creating", "destroying", "unassembled", "stopped",
};
static const char *const g_replica_states[] = {
	"healthy", "rebuilding", "faulted", "offline", "unknown",
};
static const char *const g_rebuild_states[] = {
	"pending", "running", "paused", "stopped", "failed", "completed",
};
static const char *const g_reactor_modes[] = {"adaptive", "poll", "interrupt"};
/* The I/O types shown per volume; the others count in errors only. */
static const char *const g_volume_ops[] = {"read", "write", "flush"};

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* A family whose samples are one numeric field of each object of the snapshot. */
struct field_family {
	const char *name;
	const char *type;
	const char *object; /* the field lives in this member of the object; NULL: itself */
	const char *field;
	const char *help;
};

/* A label set being built: `key="value",...` with values escaped. */
struct labels {
	char buf[768];
	size_t len;
};

static void labels_init(struct labels *l)
{
	l->buf[0] = '\0';
	l->len = 0;
}

/* A label that does not fit is left out rather than cut: names here are short. */
static void labels_add(struct labels *l, const char *key, const char *value)
{
	char tmp[sizeof(l->buf)];
	size_t n = 0;
	int w;

	for (const char *p = value != NULL ? value : ""; *p != '\0' && n + 2 < sizeof(tmp); p++) {
		if (*p == '\\' || *p == '"') {
			tmp[n++] = '\\';
			tmp[n++] = *p;
		} else if (*p == '\n') {
			tmp[n++] = '\\';
			tmp[n++] = 'n';
		} else {
			tmp[n++] = *p;
		}
	}
	tmp[n] = '\0';
	w = snprintf(l->buf + l->len, sizeof(l->buf) - l->len, "%s%s=\"%s\"", l->len ? "," : "",
		     key, tmp);
	if (w < 0 || (size_t)w >= sizeof(l->buf) - l->len) {
		l->buf[l->len] = '\0';
		return;
	}
	l->len += (size_t)w;
}

static void family(FILE *o, const char *name, const char *type, const char *help)
{
	fprintf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void put_u64(FILE *o, const char *name, const struct labels *l, uint64_t v)
{
	if (l != NULL && l->len > 0) {
		fprintf(o, "%s{%s} %" PRIu64 "\n", name, l->buf, v);
	} else {
		fprintf(o, "%s %" PRIu64 "\n", name, v);
	}
}

static void put_f(FILE *o, const char *name, const struct labels *l, double v)
{
	if (l != NULL && l->len > 0) {
		fprintf(o, "%s{%s} %.15g\n", name, l->buf, v);
	} else {
		fprintf(o, "%s %.15g\n", name, v);
	}
}

/*
 * A state set: one sample per state in \p states, labelled \p key, 1 for \p current
 * and 0 for the others, so a query can match a state without knowing them all.
 */
static void put_stateset(FILE *o, const char *name, const struct labels *base, const char *key,
			 const char *const *states, size_t n, const char *current)
{
	for (size_t k = 0; k < n; k++) {
		struct labels l = *base;

		labels_add(&l, key, states[k]);
		put_u64(o, name, &l, current != NULL && strcmp(current, states[k]) == 0);
	}
}

static const char *jstr(json_t *obj, const char *key)
{
	return json_string_value(json_object_get(obj, key));
}

static uint64_t ju64(json_t *obj, const char *key)
{
	json_int_t v = json_integer_value(json_object_get(obj, key));

	return v > 0 ? (uint64_t)v : 0;
}

/* How a replica is named in labels: its bdev, else its label UUID, else its path. */
static const char *replica_label(json_t *r)
{
	const char *s = jstr(r, "bdev");

	if (s == NULL) {
		s = jstr(r, "uuid");
	}
	if (s == NULL) {
		s = jstr(r, "path");
	}
	return s != NULL ? s : "unknown";
}

static void labels_volume(struct labels *l, json_t *vol)
{
	labels_init(l);
	labels_add(l, "volume", jstr(vol, "name"));
}

/* ------------------------------------------------------------------------------ */
/* Volumes                                                                         */
/* ------------------------------------------------------------------------------ */

static void render_volume_state(FILE *o, json_t *volumes)
{
	struct labels l;
	json_t *v, *r;
	size_t i, j, k;

	family(o, "keel_volume_state", "gauge",
	       "1 for the state the volume is in, 0 for the others: online, degraded, "
	       "faulted, creating, destroying, unassembled, stopped");
	json_array_foreach(volumes, i, v) {
		labels_volume(&l, v);
		put_stateset(o, "keel_volume_state", &l, "state", g_volume_states,
			     ARRAY_LEN(g_volume_states), jstr(v, "state"));
	}
	family(o, "keel_volume_size_bytes", "gauge", "Size of the volume in bytes");
	json_array_foreach(volumes, i, v) {
		labels_volume(&l, v);
		put_u64(o, "keel_volume_size_bytes", &l, ju64(v, "size"));
	}
	family(o, "keel_volume_replica_count", "gauge",
	       "Replicas the volume lists, whatever their state");
	json_array_foreach(volumes, i, v) {
		labels_volume(&l, v);
		put_u64(o, "keel_volume_replica_count", &l,
			json_array_size(json_object_get(v, "replicas")));
	}
	family(o, "keel_volume_replicas", "gauge",
	       "Replicas of the volume by state: healthy, rebuilding, faulted, offline, "
	       "unknown");
	json_array_foreach(volumes, i, v) {
		for (k = 0; k < ARRAY_LEN(g_replica_states); k++) {
			uint64_t n = 0;

			json_array_foreach(json_object_get(v, "replicas"), j, r) {
				const char *s = jstr(r, "state");

				n += s != NULL && strcmp(s, g_replica_states[k]) == 0;
			}
			labels_volume(&l, v);
			labels_add(&l, "state", g_replica_states[k]);
			put_u64(o, "keel_volume_replicas", &l, n);
		}
	}
}

static void render_volume_io(FILE *o, json_t *volumes)
{
	static const struct field_family counters[] = {
		{"keel_volume_read_ops_total", "counter", "read", "ops",
		 "Reads completed on the volume"},
		{"keel_volume_read_bytes_total", "counter", "read", "bytes",
		 "Bytes read from the volume"},
		{"keel_volume_write_ops_total", "counter", "write", "ops",
		 "Writes completed on the volume"},
		{"keel_volume_write_bytes_total", "counter", "write", "bytes",
		 "Bytes written to the volume"},
		{"keel_volume_flush_ops_total", "counter", "flush", "ops",
		 "Flushes completed on the volume"},
	};
	struct labels l;
	json_t *v;
	size_t i, c, k;

	for (c = 0; c < ARRAY_LEN(counters); c++) {
		family(o, counters[c].name, counters[c].type, counters[c].help);
		json_array_foreach(volumes, i, v) {
			json_t *io = json_object_get(v, "io");

			if (io == NULL) {
				continue;
			}
			labels_volume(&l, v);
			put_u64(o, counters[c].name, &l,
				ju64(json_object_get(io, counters[c].object), counters[c].field));
		}
	}
	family(o, "keel_volume_io_errors_total", "counter",
	       "Requests of the volume that completed with an error, by op");
	json_array_foreach(volumes, i, v) {
		json_t *io = json_object_get(v, "io"), *st;
		const char *op;

		json_object_foreach(io, op, st) {
			labels_volume(&l, v);
			labels_add(&l, "op", op);
			put_u64(o, "keel_volume_io_errors_total", &l, ju64(st, "errors"));
		}
	}
	family(o, "keel_volume_io_latency_seconds", "histogram",
	       "Latency of the volume's requests from submission to completion, by op");
	json_array_foreach(volumes, i, v) {
		json_t *io = json_object_get(v, "io");

		for (k = 0; io != NULL && k < ARRAY_LEN(g_volume_ops); k++) {
			json_t *st = json_object_get(io, g_volume_ops[k]);
			json_t *hist = json_object_get(st, "lat_hist");
			uint64_t cum = 0;
			size_t b;
			char le[32];

			if (st == NULL) {
				continue;
			}
			for (b = 0; b < json_array_size(hist); b++) {
				json_int_t n = json_integer_value(json_array_get(hist, b));

				cum += n > 0 ? (uint64_t)n : 0;
				if (b > METRICS_LAT_TOP_BUCKET) {
					continue;
				}
				snprintf(le, sizeof(le), "%.9g", (double)(2ull << b) / 1e6);
				labels_volume(&l, v);
				labels_add(&l, "op", g_volume_ops[k]);
				labels_add(&l, "le", le);
				put_u64(o, "keel_volume_io_latency_seconds_bucket", &l, cum);
			}
			labels_volume(&l, v);
			labels_add(&l, "op", g_volume_ops[k]);
			labels_add(&l, "le", "+Inf");
			put_u64(o, "keel_volume_io_latency_seconds_bucket", &l, cum);
			labels_volume(&l, v);
			labels_add(&l, "op", g_volume_ops[k]);
			put_f(o, "keel_volume_io_latency_seconds_sum", &l,
			      (double)ju64(st, "lat_sum_ns") / 1e9);
			put_u64(o, "keel_volume_io_latency_seconds_count", &l, cum);
		}
	}
}

/* Labels of a rebuild job: the volume and its target replica. */
static void labels_rebuild(struct labels *l, json_t *vol, json_t *job)
{
	labels_volume(l, vol);
	labels_add(l, "replica", jstr(job, "target"));
}

static void render_rebuilds(FILE *o, json_t *volumes)
{
	struct labels l;
	json_t *v, *job;
	size_t i, j;

	family(o, "keel_volume_rebuild_state", "gauge",
	       "1 for the state of the rebuild job of a replica, 0 for the others: pending, "
	       "running, paused, stopped, failed, completed (the last ended job per replica "
	       "stays listed)");
	json_array_foreach(volumes, i, v) {
		json_array_foreach(json_object_get(v, "rebuilds"), j, job) {
			labels_rebuild(&l, v, job);
			put_stateset(o, "keel_volume_rebuild_state", &l, "state", g_rebuild_states,
				     ARRAY_LEN(g_rebuild_states), jstr(job, "state"));
		}
	}
	family(o, "keel_volume_rebuild_progress_ratio", "gauge",
	       "Part of the rebuild job done, from 0 to 1");
	json_array_foreach(volumes, i, v) {
		json_array_foreach(json_object_get(v, "rebuilds"), j, job) {
			uint64_t total = ju64(job, "blocks_total"), done = ju64(job, "blocks_done");
			const char *state = jstr(job, "state");
			double ratio = total > 0 ? (double)done / (double)total : 0.0;

			if (total == 0 && state != NULL && strcmp(state, "completed") == 0) {
				ratio = 1.0; /* nothing was left to copy */
			}
			labels_rebuild(&l, v, job);
			put_f(o, "keel_volume_rebuild_progress_ratio", &l, ratio);
		}
	}
	family(o, "keel_volume_rebuild_done_bytes", "gauge",
	       "Bytes of the volume the rebuild job has covered so far");
	json_array_foreach(volumes, i, v) {
		json_array_foreach(json_object_get(v, "rebuilds"), j, job) {
			labels_rebuild(&l, v, job);
			put_u64(o, "keel_volume_rebuild_done_bytes", &l,
				ju64(job, "blocks_done") * ju64(job, "block_size"));
		}
	}
	family(o, "keel_volume_rebuild_rate_bytes_per_second", "gauge",
	       "Average copy rate of the rebuild job since it started, paused time excluded");
	json_array_foreach(volumes, i, v) {
		json_array_foreach(json_object_get(v, "rebuilds"), j, job) {
			labels_rebuild(&l, v, job);
			put_f(o, "keel_volume_rebuild_rate_bytes_per_second", &l,
			      json_number_value(json_object_get(job, "rate_mib_s")) * 1048576.0);
		}
	}
	family(o, "keel_volume_rebuild_eta_seconds", "gauge",
	       "Estimated seconds until the rebuild job completes (absent when unknown)");
	json_array_foreach(volumes, i, v) {
		json_array_foreach(json_object_get(v, "rebuilds"), j, job) {
			json_int_t eta = json_integer_value(json_object_get(job, "eta_s"));

			if (eta < 0 || json_object_get(job, "eta_s") == NULL) {
				continue;
			}
			labels_rebuild(&l, v, job);
			put_u64(o, "keel_volume_rebuild_eta_seconds", &l, (uint64_t)eta);
		}
	}
}

static void render_replicas(FILE *o, json_t *volumes)
{
	struct labels l;
	json_t *v, *r;
	size_t i, j;

	family(o, "keel_replica_state", "gauge",
	       "1 for the state the replica is in, 0 for the others: healthy, rebuilding, "
	       "faulted, offline, unknown");
	json_array_foreach(volumes, i, v) {
		json_array_foreach(json_object_get(v, "replicas"), j, r) {
			labels_volume(&l, v);
			labels_add(&l, "replica", replica_label(r));
			put_stateset(o, "keel_replica_state", &l, "state", g_replica_states,
				     ARRAY_LEN(g_replica_states), jstr(r, "state"));
		}
	}
	family(o, "keel_replica_io_errors_total", "counter",
	       "Requests to the replica that failed, every op together (while its bdev is "
	       "open)");
	json_array_foreach(volumes, i, v) {
		json_array_foreach(json_object_get(v, "replicas"), j, r) {
			json_t *io = json_object_get(r, "io"), *st;
			const char *op;
			uint64_t errors = 0;

			if (io == NULL) {
				continue;
			}
			json_object_foreach(io, op, st) {
				errors += ju64(st, "errors");
			}
			labels_volume(&l, v);
			labels_add(&l, "replica", replica_label(r));
			put_u64(o, "keel_replica_io_errors_total", &l, errors);
		}
	}
	family(o, "keel_replica_read_errors_repaired_total", "counter",
	       "Read errors repaired by rewriting the range from another replica (since the "
	       "volume was opened)");
	json_array_foreach(volumes, i, v) {
		json_array_foreach(json_object_get(v, "replicas"), j, r) {
			if (json_object_get(r, "read_errors_repaired") == NULL) {
				continue;
			}
			labels_volume(&l, v);
			labels_add(&l, "replica", replica_label(r));
			put_u64(o, "keel_replica_read_errors_repaired_total", &l,
				ju64(r, "read_errors_repaired"));
		}
	}
}

/* ------------------------------------------------------------------------------ */
/* Exports, reactors, the process                                                  */
/* ------------------------------------------------------------------------------ */

/*
 * Families whose samples are a numeric field of each object of \p objects, labelled by
 * \p labels_fn (NULL: no labels).
 */
static void render_fields(FILE *o, const struct field_family *rows, size_t n, json_t *objects,
			  void (*labels_fn)(struct labels *l, json_t *obj))
{
	struct labels l;
	json_t *obj;
	size_t i;

	for (size_t r = 0; r < n; r++) {
		family(o, rows[r].name, rows[r].type, rows[r].help);
		json_array_foreach(objects, i, obj) {
			labels_init(&l);
			if (labels_fn != NULL) {
				labels_fn(&l, obj);
			}
			put_u64(o, rows[r].name, &l, ju64(obj, rows[r].field));
		}
	}
}

static void labels_export(struct labels *l, json_t *e)
{
	labels_add(l, "export", jstr(e, "name"));
	labels_add(l, "bdev", jstr(e, "bdev"));
}

static void render_exports(FILE *o, json_t *exports)
{
	static const struct field_family rows[] = {
		{"keel_export_connections", "gauge", NULL, "connections",
		 "NBD clients connected to the export"},
		{"keel_export_received_bytes_total", "counter", NULL, "bytes_in",
		 "Bytes received from the export's NBD clients (headers and payload)"},
		{"keel_export_sent_bytes_total", "counter", NULL, "bytes_out",
		 "Bytes sent to the export's NBD clients (headers and payload)"},
	};

	render_fields(o, rows, ARRAY_LEN(rows), exports, labels_export);
}

static void render_nbd(FILE *o, json_t *nbd)
{
	static const struct field_family rows[] = {
		{"keel_nbd_connections", "gauge", NULL, "connections",
		 "NBD socket connections open, all exports"},
		{"keel_nbd_connections_refused_total", "counter", NULL, "connections_refused",
		 "NBD connections refused because a connection limit was reached"},
		{"keel_nbd_buffer_bytes", "gauge", NULL, "buffer_bytes",
		 "Payload bytes NBD requests hold now (the buffer budget's use)"},
		{"keel_nbd_buffer_waits_total", "counter", NULL, "buffer_waits",
		 "Times an NBD connection waited for the buffer budget"},
		{"keel_nbd_handshake_timeouts_total", "counter", NULL, "handshake_timeouts",
		 "NBD connections closed for not choosing an export in time"},
		{"keel_nbd_stall_timeouts_total", "counter", NULL, "stall_timeouts",
		 "NBD connections closed because the client stalled"},
	};
	json_t *one = json_pack("[O]", nbd);

	if (nbd != NULL && one != NULL) {
		render_fields(o, rows, ARRAY_LEN(rows), one, NULL);
	}
	json_decref(one);
}

static void labels_reactor(struct labels *l, json_t *r)
{
	char idx[24], cpu[24];

	snprintf(idx, sizeof(idx), "%" PRIu64, ju64(r, "reactor"));
	snprintf(cpu, sizeof(cpu), "%" PRIu64, ju64(r, "cpu"));
	labels_init(l);
	labels_add(l, "reactor", idx);
	labels_add(l, "cpu", cpu);
}

static void render_reactors(FILE *o, json_t *reactors)
{
	struct labels l;
	json_t *r;
	size_t i;

	family(o, "keel_reactor_busy_seconds_total", "counter",
	       "Time the reactor spent in loop iterations that did work");
	json_array_foreach(reactors, i, r) {
		labels_reactor(&l, r);
		put_f(o, "keel_reactor_busy_seconds_total", &l, (double)ju64(r, "busy_ns") / 1e9);
	}
	family(o, "keel_reactor_idle_seconds_total", "counter",
	       "Time the reactor spent idle, polling or asleep");
	json_array_foreach(reactors, i, r) {
		labels_reactor(&l, r);
		put_f(o, "keel_reactor_idle_seconds_total", &l, (double)ju64(r, "idle_ns") / 1e9);
	}
	family(o, "keel_reactor_wakeups_total", "counter",
	       "Times the reactor woke from sleeping in epoll_wait");
	json_array_foreach(reactors, i, r) {
		labels_reactor(&l, r);
		put_u64(o, "keel_reactor_wakeups_total", &l, ju64(r, "wakeups"));
	}
	family(o, "keel_reactor_mode", "gauge",
	       "1 for the reactor's mode, 0 for the others: adaptive, poll, interrupt");
	json_array_foreach(reactors, i, r) {
		labels_reactor(&l, r);
		put_stateset(o, "keel_reactor_mode", &l, "mode", g_reactor_modes,
			     ARRAY_LEN(g_reactor_modes), jstr(r, "mode"));
	}
}

static void render_process(FILE *o, const struct metrics_process *p)
{
	struct labels l;

	if (p->have_rss) {
		family(o, "process_resident_memory_bytes", "gauge",
		       "Resident memory size in bytes");
		put_u64(o, "process_resident_memory_bytes", NULL, p->rss_bytes);
	}
	if (p->have_fds) {
		family(o, "process_open_fds", "gauge", "Number of open file descriptors");
		put_u64(o, "process_open_fds", NULL, p->open_fds);
		family(o, "process_max_fds", "gauge", "Maximum number of open file descriptors");
		put_u64(o, "process_max_fds", NULL, p->max_fds);
	}
	if (p->have_cpu) {
		family(o, "process_cpu_seconds_total", "counter",
		       "Total user and system CPU time spent in seconds");
		put_f(o, "process_cpu_seconds_total", NULL, p->cpu_seconds);
	}
	if (p->start_time_seconds > 0) {
		family(o, "process_start_time_seconds", "gauge",
		       "Start time of the process since the epoch in seconds");
		put_f(o, "process_start_time_seconds", NULL, p->start_time_seconds);
	}
	if (p->collect_seconds > 0) {
		family(o, "keel_metrics_collect_seconds", "gauge",
		       "How long keeld took to gather the snapshot of this scrape");
		put_f(o, "keel_metrics_collect_seconds", NULL, p->collect_seconds);
	}
	family(o, "keel_build_info", "gauge", "Always 1; the version of keeld in a label");
	labels_init(&l);
	labels_add(&l, "version", KEEL_VERSION);
	put_u64(o, "keel_build_info", &l, 1);
}

int keeld_metrics_render(FILE *out, json_t *snapshot, const struct metrics_process *proc)
{
	json_t *volumes = json_object_get(snapshot, "volumes");

	render_volume_state(out, volumes);
	render_volume_io(out, volumes);
	render_rebuilds(out, volumes);
	render_replicas(out, volumes);
	render_exports(out, json_object_get(snapshot, "exports"));
	render_nbd(out, json_object_get(snapshot, "nbd"));
	render_reactors(out, json_object_get(snapshot, "reactors"));
	render_process(out, proc);
	return ferror(out) ? -EIO : 0;
}

/* ------------------------------------------------------------------------------ */
/* /proc/self                                                                      */
/* ------------------------------------------------------------------------------ */

static void metrics_read_stat(struct metrics_process *p)
{
	unsigned long long utime, stime, start, btime = 0;
	char buf[1024], line[256], *rp;
	long hz = sysconf(_SC_CLK_TCK);
	size_t n;
	FILE *f;

	f = fopen("/proc/self/stat", "re");
	if (f == NULL) {
		return;
	}
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* The command name may hold spaces and parentheses: fields start after the last ')'. */
	rp = strrchr(buf, ')');
	if (rp == NULL || hz <= 0 ||
	    sscanf(rp + 2,
		   "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d "
		   "%*d %llu",
		   &utime, &stime, &start) != 3) {
		return;
	}
	p->have_cpu = true;
	p->cpu_seconds = (double)(utime + stime) / (double)hz;
	f = fopen("/proc/stat", "re");
	if (f == NULL) {
		return;
	}
	while (fgets(line, sizeof(line), f) != NULL) {
		if (sscanf(line, "btime %llu", &btime) == 1) {
			break;
		}
	}
	fclose(f);
	if (btime > 0) {
		p->start_time_seconds = (double)btime + (double)start / (double)hz;
	}
}

void keeld_metrics_process_read(struct metrics_process *p)
{
	unsigned long long pages, resident;
	struct rlimit rl;
	struct dirent *de;
	DIR *d;
	FILE *f;

	memset(p, 0, sizeof(*p));
	f = fopen("/proc/self/statm", "re");
	if (f != NULL) {
		if (fscanf(f, "%llu %llu", &pages, &resident) == 2) {
			p->have_rss = true;
			p->rss_bytes = resident * (unsigned long long)sysconf(_SC_PAGESIZE);
		}
		fclose(f);
	}
	d = opendir("/proc/self/fd");
	if (d != NULL) {
		while ((de = readdir(d)) != NULL) {
			p->open_fds += de->d_name[0] != '.';
		}
		closedir(d);
		if (p->open_fds > 0) {
			p->open_fds--; /* the directory's own fd */
		}
		if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
			p->have_fds = true;
			p->max_fds = rl.rlim_cur;
		}
	}
	metrics_read_stat(p);
}
