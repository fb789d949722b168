/*
 * ublk devices: a bdev as /dev/ublkbN, their life on the main keel thread.
 *
 * start:   open bdev -> [pool] ADD_DEV, SET_PARAMS, open /dev/ublkcN, map and allocate
 *          each queue -> each queue fetches on its reactor -> [pool] START_DEV (returns
 *          once every queue fetched and the disk is added) -> running.
 * recover: open bdev -> [pool] START_USER_RECOVERY (retried while the dead server's
 *          files close and the kernel quiesces), open /dev/ublkcN, queues -> fetch ->
 *          [pool] END_USER_RECOVERY (held requests are reissued) -> running.
 * stop:    [pool] STOP_DEV (in-flight requests drain, waiting commands come back as
 *          ABORT) -> each queue releases itself -> close /dev/ublkcN -> [pool] DEL_DEV
 *          (waits until the char device is closed) -> bdev closed.
 * A start that fails after ADD_DEV takes the stop path, so nothing is left half-made.
 *
 * While a pool job runs (`job_running`) it owns the fields it reads and writes; the main
 * thread touches none of them. Queues are owned by their keel thread between
 * ublk_queue_start() and their "gone" message.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>
#include <unistd.h>

#include "keel/log.h"
#include "ublk_internal.h"

#define UBLK_STATE_VERSION 1
#define UBLK_WAIT_PERIOD_US (1000u * 1000u)
/* How long START_USER_RECOVERY is retried while the kernel still sees the old server. */
#define UBLK_RECOVERY_WAIT_MS 30000
#define UBLK_MAX_WAITERS 8

enum ublk_disk_state {
	UBLK_DISK_STARTING,
	UBLK_DISK_RECOVERING,
	UBLK_DISK_WAITING, /* restored from the records; its bdev does not exist yet */
	UBLK_DISK_RUNNING,
	UBLK_DISK_STOPPING,
};

struct ublk_waiter {
	keel_ublk_done_cb cb_fn;
	void *cb_arg;
};

struct keel_ublk_disk {
	TAILQ_ENTRY(keel_ublk_disk) link;
	enum ublk_disk_state state;
	int64_t id;
	char bdev_name[KEEL_BDEV_NAME_MAX + 1];
	struct keel_bdev_desc *desc;
	uint64_t size;
	uint32_t block_size;
	bool write_cache;
	bool can_unmap;
	uint32_t nqueues;
	uint32_t depth;
	struct ublk_queue *queues;
	int cfd;
	bool recover;     /* attach to an existing device instead of adding one */
	bool owns_device; /* the kernel device must be stopped and deleted at the end */
	bool job_running;
	bool stop_requested;
	bool forget;
	bool stop_sent;
	uint32_t queues_reported;
	uint32_t queues_live;
	int rc;
	char err[512];
	keel_ublk_start_cb start_cb;
	void *start_arg;
	struct ublk_waiter waiters[UBLK_MAX_WAITERS];
	uint32_t nwaiters;
};

static TAILQ_HEAD(, keel_ublk_disk) g_disks = TAILQ_HEAD_INITIALIZER(g_disks);
static struct keel_thread *g_main;
static bool g_target;
/* Made by a start without ublk_create_target: a later create may replace it. */
static bool g_target_implicit;
static uint32_t g_nthreads;
static struct keel_thread *g_threads[KEEL_UBLK_MAX_QUEUES];
static bool g_shutdown;
static keel_ublk_listener_fn g_listener;
static void *g_listener_ctx;
static struct keel_poller *g_wait_poller;
static keel_ublk_done_cb g_stop_all_cb;
static void *g_stop_all_arg;

static void ublk_disk_begin_stop(struct keel_ublk_disk *d);
static void ublk_disk_try_finish(struct keel_ublk_disk *d);
static void ublk_disk_check_stop_all(void);

struct keel_thread *ublk_disk_main(void)
{
	return g_main;
}

struct keel_bdev_desc *ublk_disk_desc(struct keel_ublk_disk *disk)
{
	return disk->desc;
}

int ublk_disk_cfd(struct keel_ublk_disk *disk)
{
	return disk->cfd;
}

uint32_t ublk_disk_id(struct keel_ublk_disk *disk)
{
	return (uint32_t)disk->id;
}

static const char *ublk_disk_state_name(enum ublk_disk_state s)
{
	switch (s) {
	case UBLK_DISK_STARTING:
		return "starting";
	case UBLK_DISK_RECOVERING:
		return "recovering";
	case UBLK_DISK_WAITING:
		return "waiting-for-bdev";
	case UBLK_DISK_RUNNING:
		return "running";
	case UBLK_DISK_STOPPING:
		return "stopping";
	}
	return "?";
}

static void ublk_disk_changed(void)
{
	if (g_listener != NULL) {
		g_listener(g_listener_ctx);
	}
}

static struct keel_ublk_disk *ublk_disk_find(int64_t id)
{
	struct keel_ublk_disk *d;

	TAILQ_FOREACH(d, &g_disks, link) {
		if (id >= 0 && d->id == id) {
			return d;
		}
	}
	return NULL;
}

/* ------------------------------------------------------------------------------ */
/* Target                                                                          */
/* ------------------------------------------------------------------------------ */

static void ublk_main_init(void)
{
	if (g_main == NULL) {
		g_main = keel_thread_get_current();
	}
}

/* The keel threads that host queues: one per reactor in \p cpumask (0: all). */
static int ublk_target_threads(uint64_t cpumask)
{
	uint32_t n = 0;

	for (uint32_t r = 0; r < keel_reactor_count() && n < KEEL_UBLK_MAX_QUEUES; r++) {
		uint32_t cpu = keel_reactor_cpu(r);
		char name[32];

		if (cpumask != 0 && (cpu >= 64 || !(cpumask & (1ull << cpu)))) {
			continue;
		}
		snprintf(name, sizeof(name), "ublk_%u", r);
		g_threads[n] = keel_thread_create(name, r);
		if (g_threads[n] == NULL) {
			return -ENOMEM;
		}
		n++;
	}
	if (n == 0) {
		return -EINVAL;
	}
	g_nthreads = n;
	g_target = true;
	return 0;
}

static void ublk_thread_exit(void *arg)
{
	keel_thread_exit(keel_thread_get_current());
}

static void ublk_target_drop(void)
{
	for (uint32_t i = 0; i < g_nthreads; i++) {
		if (keel_thread_send_msg_reliable(g_threads[i], ublk_thread_exit, NULL, NULL) !=
		    0) {
			KEEL_WARNLOG("ublk: thread %u is already gone", i);
		}
		g_threads[i] = NULL;
	}
	g_nthreads = 0;
	g_target = false;
}

struct ublk_probe_ctx {
	keel_ublk_done_cb cb_fn;
	void *cb_arg;
	uint64_t cpumask;
	char err[256];
};

static int ublk_probe_job(void *arg)
{
	struct ublk_probe_ctx *c = arg;

	return ublk_ctrl_probe(c->err, sizeof(c->err));
}

static void ublk_probe_done(void *arg, int rc)
{
	struct ublk_probe_ctx *c = arg;

	if (rc == 0 && g_target && g_target_implicit && TAILQ_EMPTY(&g_disks)) {
		ublk_target_drop();
	}
	if (rc == 0 && g_target) {
		rc = -EEXIST;
		snprintf(c->err, sizeof(c->err), "the ublk target already exists");
	}
	if (rc == 0) {
		rc = ublk_target_threads(c->cpumask);
		if (rc != 0) {
			snprintf(c->err, sizeof(c->err), "%s",
				 rc == -EINVAL ? "no reactor runs on a CPU of the cpumask"
					       : "out of memory");
		} else {
			g_target_implicit = false;
			KEEL_NOTICELOG("ublk: target created (%u queue threads)", g_nthreads);
		}
	}
	c->cb_fn(c->cb_arg, rc, rc == 0 ? "" : c->err);
	free(c);
}

int keel_ublk_target_create(uint64_t cpumask, keel_ublk_done_cb cb_fn, void *cb_arg)
{
	struct ublk_probe_ctx *c;
	int rc;

	ublk_main_init();
	if (g_target && !g_target_implicit) {
		return -EEXIST;
	}
	c = calloc(1, sizeof(*c));
	if (c == NULL) {
		return -ENOMEM;
	}
	c->cb_fn = cb_fn;
	c->cb_arg = cb_arg;
	c->cpumask = cpumask;
	rc = keel_spawn_blocking(ublk_probe_job, c, ublk_probe_done, c);
	if (rc != 0) {
		free(c);
	}
	return rc;
}

bool keel_ublk_target_exists(void)
{
	/* A target a start made on its own exists for others only while it has devices. */
	return g_target && !(g_target_implicit && TAILQ_EMPTY(&g_disks));
}

static void ublk_target_destroyed(void *arg, int status, const char *err)
{
	struct ublk_waiter *w = arg;

	ublk_target_drop();
	g_shutdown = false;
	w->cb_fn(w->cb_arg, 0, "");
	free(w);
}

int keel_ublk_target_destroy(keel_ublk_done_cb cb_fn, void *cb_arg)
{
	struct ublk_waiter *w;

	if (!keel_ublk_target_exists()) {
		return -ENOENT;
	}
	w = calloc(1, sizeof(*w));
	if (w == NULL) {
		return -ENOMEM;
	}
	w->cb_fn = cb_fn;
	w->cb_arg = cb_arg;
	keel_ublk_stop_all(ublk_target_destroyed, w);
	return 0;
}

/* ------------------------------------------------------------------------------ */
/* Jobs on the blocking pool                                                       */
/* ------------------------------------------------------------------------------ */

static uint8_t ublk_shift(uint32_t v)
{
	uint8_t s = 0;

	while ((1u << s) < v) {
		s++;
	}
	return s;
}

static int ublk_open_char(struct keel_ublk_disk *d)
{
	char path[64];
	int fd = -1;

	snprintf(path, sizeof(path), "/dev/ublkc%lld", (long long)d->id);
	/* devtmpfs creates the node inside ADD_DEV; a udev rule may still be renaming. */
	for (int i = 0; i < 50; i++) {
		fd = open(path, O_RDWR | O_CLOEXEC);
		if (fd >= 0 || errno != ENOENT) {
			break;
		}
		usleep(20 * 1000);
	}
	if (fd < 0) {
		int rc = -errno;

		snprintf(d->err, sizeof(d->err), "cannot open %s: %s", path, strerror(-rc));
		return rc;
	}
	d->cfd = fd;
	return 0;
}

static int ublk_setup_queues(struct keel_ublk_disk *d)
{
	int rc;

	d->queues = calloc(d->nqueues, sizeof(*d->queues));
	if (d->queues == NULL) {
		snprintf(d->err, sizeof(d->err), "out of memory");
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < d->nqueues; i++) {
		struct ublk_queue *q = &d->queues[i];

		q->disk = d;
		q->q_id = (uint16_t)i;
		q->depth = (uint16_t)d->depth;
		q->size = d->size;
		q->thread = g_threads[i % g_nthreads];
		rc = ublk_queue_setup(q, d->cfd, d->err, sizeof(d->err));
		if (rc != 0) {
			return rc;
		}
	}
	return 0;
}

static int ublk_add_job(void *arg)
{
	struct keel_ublk_disk *d = arg;
	struct ublksrv_ctrl_dev_info info;
	struct ublk_params params;
	uint32_t max_io;
	int rc;

	rc = ublk_ctrl_probe(d->err, sizeof(d->err));
	if (rc != 0) {
		return rc;
	}
	memset(&info, 0, sizeof(info));
	info.nr_hw_queues = (uint16_t)d->nqueues;
	info.queue_depth = (uint16_t)d->depth;
	info.max_io_buf_bytes = KEEL_UBLK_IO_BUF_BYTES;
	info.dev_id = d->id < 0 ? UBLK_CTRL_ANY_ID : (uint32_t)d->id;
	info.ublksrv_pid = getpid();
	info.flags = UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE;
	rc = ublk_ctrl_add_dev(&info, d->err, sizeof(d->err));
	if (rc == -EEXIST) {
		snprintf(d->err, sizeof(d->err),
			 "ublk id %lld is in use in the kernel (another program, or a device an "
			 "earlier keeld left: ublk_recover_disk re-attaches it)",
			 (long long)d->id);
	}
	if (rc < 0) {
		return rc;
	}
	d->id = info.dev_id;
	d->owns_device = true;
	d->nqueues = info.nr_hw_queues; /* the kernel caps it at the CPU count */
	max_io = info.max_io_buf_bytes < KEEL_UBLK_IO_BUF_BYTES ? info.max_io_buf_bytes
								: KEEL_UBLK_IO_BUF_BYTES;

	memset(&params, 0, sizeof(params));
	params.types = UBLK_PARAM_TYPE_BASIC;
	params.basic.logical_bs_shift = ublk_shift(d->block_size);
	params.basic.physical_bs_shift = ublk_shift(d->block_size < 4096 ? 4096 : d->block_size);
	params.basic.io_min_shift = params.basic.logical_bs_shift;
	params.basic.io_opt_shift = params.basic.physical_bs_shift;
	params.basic.max_sectors = max_io >> 9;
	params.basic.dev_sectors = d->size >> 9;
	if (d->write_cache) {
		params.basic.attrs |= UBLK_ATTR_VOLATILE_CACHE | UBLK_ATTR_FUA;
	}
	/* Write-zeroes always works (emulated when the bdev cannot); discard only when
	 * the bdev unmaps. The driver needs a granularity either way. */
	params.types |= UBLK_PARAM_TYPE_DISCARD;
	params.discard.discard_granularity = d->block_size;
	params.discard.max_write_zeroes_sectors = max_io >> 9;
	if (d->can_unmap) {
		params.discard.max_discard_sectors = UINT32_MAX >> 9;
		params.discard.max_discard_segments = 1;
	}
	rc = ublk_ctrl_set_params((uint32_t)d->id, &params, d->err, sizeof(d->err));
	if (rc < 0) {
		return rc;
	}
	rc = ublk_open_char(d);
	if (rc != 0) {
		return rc;
	}
	return ublk_setup_queues(d);
}

static int ublk_recover_job(void *arg)
{
	struct keel_ublk_disk *d = arg;
	struct ublksrv_ctrl_dev_info info;
	int rc;

	rc = ublk_ctrl_probe(d->err, sizeof(d->err));
	if (rc != 0) {
		return rc;
	}
	rc = ublk_ctrl_get_info((uint32_t)d->id, &info, d->err, sizeof(d->err));
	if (rc == -ENODEV) {
		snprintf(d->err, sizeof(d->err), "the kernel has no ublk device %lld",
			 (long long)d->id);
	}
	if (rc < 0) {
		return rc;
	}
	if (!(info.flags & UBLK_F_USER_RECOVERY)) {
		snprintf(d->err, sizeof(d->err),
			 "ublk device %lld was created without user recovery: it cannot be "
			 "re-attached",
			 (long long)d->id);
		return -EINVAL;
	}
	if (info.queue_depth == 0 || info.queue_depth > KEEL_UBLK_MAX_QUEUE_DEPTH ||
	    info.nr_hw_queues == 0 || info.nr_hw_queues > KEEL_UBLK_MAX_QUEUES ||
	    info.max_io_buf_bytes > KEEL_UBLK_IO_BUF_BYTES) {
		snprintf(d->err, sizeof(d->err),
			 "ublk device %lld has %u queues of depth %u and %u-byte requests: "
			 "more than keel serves",
			 (long long)d->id, info.nr_hw_queues, info.queue_depth,
			 info.max_io_buf_bytes);
		return -EINVAL;
	}
	/* The old server's files close and the kernel quiesces the queues shortly after
	 * it died; until then the kernel answers EBUSY. */
	for (int waited = 0;; waited += 100) {
		rc = ublk_ctrl_cmd(UBLK_CMD_START_USER_RECOVERY, (uint32_t)d->id, NULL, 0, 0,
				   d->err, sizeof(d->err));
		if (rc != -EBUSY || waited >= UBLK_RECOVERY_WAIT_MS) {
			break;
		}
		usleep(100 * 1000);
	}
	if (rc == -EBUSY) {
		snprintf(d->err, sizeof(d->err),
			 "ublk device %lld is still served by another process (the kernel "
			 "says busy)",
			 (long long)d->id);
	}
	if (rc < 0) {
		return rc;
	}
	d->owns_device = true;
	d->nqueues = info.nr_hw_queues;
	d->depth = info.queue_depth;
	rc = ublk_open_char(d);
	if (rc != 0) {
		return rc;
	}
	return ublk_setup_queues(d);
}

static int ublk_go_live_job(void *arg)
{
	struct keel_ublk_disk *d = arg;
	uint32_t op = d->recover ? UBLK_CMD_END_USER_RECOVERY : UBLK_CMD_START_DEV;

	return ublk_ctrl_cmd(op, (uint32_t)d->id, NULL, 0, (uint64_t)getpid(), d->err,
			     sizeof(d->err));
}

static int ublk_stop_job(void *arg)
{
	struct keel_ublk_disk *d = arg;
	char err[256];
	int rc = ublk_ctrl_cmd(UBLK_CMD_STOP_DEV, (uint32_t)d->id, NULL, 0, 0, err, sizeof(err));

	if (rc < 0) {
		KEEL_ERRLOG("ublk%lld: %s", (long long)d->id, err);
	}
	return rc;
}

static int ublk_del_job(void *arg)
{
	struct keel_ublk_disk *d = arg;
	char err[256];
	int rc = ublk_ctrl_cmd(UBLK_CMD_DEL_DEV, (uint32_t)d->id, NULL, 0, 0, err, sizeof(err));

	if (rc < 0) {
		KEEL_ERRLOG("ublk%lld: %s", (long long)d->id, err);
	}
	return rc;
}

/* ------------------------------------------------------------------------------ */
/* The state machine on the main thread                                            */
/* ------------------------------------------------------------------------------ */

static void ublk_disk_fail(struct keel_ublk_disk *d, int rc, const char *what)
{
	if (d->rc == 0) {
		d->rc = rc;
		if (what != NULL) {
			snprintf(d->err, sizeof(d->err), "%s", what);
		} else if (d->err[0] == '\0') {
			snprintf(d->err, sizeof(d->err), "%s", strerror(-rc));
		}
	}
}

static void ublk_disk_free(struct keel_ublk_disk *d)
{
	if (d->queues != NULL) {
		for (uint32_t i = 0; i < d->nqueues; i++) {
			ublk_queue_release(&d->queues[i]);
		}
		free(d->queues);
	}
	if (d->cfd >= 0) {
		close(d->cfd);
	}
	free(d);
}

static void ublk_disk_event(enum keel_bdev_event_type type, struct keel_bdev *bdev, void *ctx)
{
	struct keel_ublk_disk *d = ctx;

	if (type != KEEL_BDEV_EVENT_REMOVE) {
		return;
	}
	KEEL_WARNLOG("ublk%lld: bdev %s is being removed; stopping the device", (long long)d->id,
		     d->bdev_name);
	d->forget = true;
	if (d->state == UBLK_DISK_RUNNING) {
		ublk_disk_begin_stop(d);
	} else {
		d->stop_requested = true;
	}
}

static int ublk_disk_open_bdev(struct keel_ublk_disk *d)
{
	struct keel_bdev *bdev;
	int rc = keel_bdev_open_ext(d->bdev_name, true, ublk_disk_event, d, &d->desc);

	if (rc != 0) {
		return rc;
	}
	bdev = keel_bdev_desc_get_bdev(d->desc);
	d->block_size = keel_bdev_get_block_size(bdev);
	d->size = keel_bdev_get_num_blocks(bdev) * d->block_size;
	d->write_cache = keel_bdev_has_write_cache(bdev);
	d->can_unmap = keel_bdev_io_type_supported(bdev, KEEL_BDEV_IO_UNMAP);
	return 0;
}

static struct keel_ublk_disk *ublk_disk_alloc(const char *bdev_name, int64_t id)
{
	struct keel_ublk_disk *d = calloc(1, sizeof(*d));

	if (d == NULL) {
		return NULL;
	}
	snprintf(d->bdev_name, sizeof(d->bdev_name), "%s", bdev_name);
	d->id = id;
	d->cfd = -1;
	return d;
}

static void ublk_disk_finish(struct keel_ublk_disk *d)
{
	if (d->desc != NULL) {
		keel_bdev_close(d->desc);
		d->desc = NULL;
	}
	TAILQ_REMOVE(&g_disks, d, link);
	if (d->start_cb != NULL) {
		d->start_cb(d->start_arg, d->rc != 0 ? d->rc : -ENODEV, 0,
			    d->err[0] ? d->err : "the device stopped while starting");
	}
	for (uint32_t i = 0; i < d->nwaiters; i++) {
		d->waiters[i].cb_fn(d->waiters[i].cb_arg, 0, "");
	}
	if (d->rc == 0) {
		KEEL_NOTICELOG("ublk%lld (bdev %s): stopped and deleted", (long long)d->id,
			       d->bdev_name);
	}
	ublk_disk_free(d);
	ublk_disk_changed();
	ublk_disk_check_stop_all();
}

static void ublk_disk_del_done(void *arg, int rc)
{
	struct keel_ublk_disk *d = arg;

	d->job_running = false;
	ublk_disk_finish(d);
}

/* Every started queue is gone and STOP_DEV (if sent) returned: close, then delete. */
static void ublk_disk_try_finish(struct keel_ublk_disk *d)
{
	if (d->state != UBLK_DISK_STOPPING || d->job_running || d->queues_live > 0 ||
	    d->queues_reported < (d->queues != NULL ? d->nqueues : 0)) {
		return;
	}
	if (d->cfd >= 0) {
		close(d->cfd);
		d->cfd = -1;
	}
	if (d->queues != NULL) {
		for (uint32_t i = 0; i < d->nqueues; i++) {
			ublk_queue_release(&d->queues[i]);
		}
	}
	if (d->owns_device) {
		d->owns_device = false;
		d->job_running = true;
		if (keel_spawn_blocking(ublk_del_job, d, ublk_disk_del_done, d) == 0) {
			return;
		}
		d->job_running = false;
		KEEL_ERRLOG("ublk%lld: cannot run DEL_DEV", (long long)d->id);
	}
	ublk_disk_finish(d);
}

static void ublk_disk_stop_done(void *arg, int rc)
{
	struct keel_ublk_disk *d = arg;

	d->job_running = false;
	ublk_disk_try_finish(d);
}

static void ublk_disk_begin_stop(struct keel_ublk_disk *d)
{
	d->state = UBLK_DISK_STOPPING;
	if (d->owns_device && !d->stop_sent) {
		d->stop_sent = true;
		d->job_running = true;
		if (keel_spawn_blocking(ublk_stop_job, d, ublk_disk_stop_done, d) == 0) {
			return;
		}
		d->job_running = false;
		KEEL_ERRLOG("ublk%lld: cannot run STOP_DEV", (long long)d->id);
	}
	ublk_disk_try_finish(d);
}

void ublk_disk_queue_gone(void *arg)
{
	struct ublk_queue *q = arg;
	struct keel_ublk_disk *d = q->disk;

	d->queues_live--;
	if (d->state == UBLK_DISK_RUNNING) {
		/* The kernel aborted the queue without our STOP_DEV (someone else stopped
		 * the device): the device is not ours any more. */
		KEEL_WARNLOG("ublk%lld (bdev %s): queue %u ended without a stop from keeld",
			     (long long)d->id, d->bdev_name, q->q_id);
		d->forget = true;
		ublk_disk_begin_stop(d);
		return;
	}
	ublk_disk_try_finish(d);
}

static void ublk_disk_live_done(void *arg, int rc)
{
	struct keel_ublk_disk *d = arg;
	keel_ublk_start_cb cb = d->start_cb;

	d->job_running = false;
	if (rc < 0 || d->stop_requested || g_shutdown) {
		ublk_disk_fail(d, rc < 0 ? rc : -ESHUTDOWN,
			       rc < 0 ? NULL : "the device was stopped while starting");
		ublk_disk_begin_stop(d);
		return;
	}
	d->state = UBLK_DISK_RUNNING;
	d->start_cb = NULL;
	KEEL_NOTICELOG("ublk%lld (bdev %s): %s as /dev/ublkb%lld (%u queues of depth %u)",
		       (long long)d->id, d->bdev_name, d->recover ? "recovered" : "serving",
		       (long long)d->id, d->nqueues, d->depth);
	ublk_disk_changed();
	if (cb != NULL) {
		cb(d->start_arg, 0, (uint32_t)d->id, "");
	}
}

void ublk_disk_queue_started(void *arg)
{
	struct ublk_queue *q = arg;
	struct keel_ublk_disk *d = q->disk;

	d->queues_reported++;
	if (q->started) {
		d->queues_live++;
	} else if (d->rc == 0) {
		d->rc = q->start_rc;
		snprintf(d->err, sizeof(d->err), "ublk queue %u cannot start: %s", q->q_id,
			 strerror(-q->start_rc));
	}
	if (d->queues_reported < d->nqueues) {
		return;
	}
	if (d->rc != 0 || d->stop_requested || g_shutdown) {
		ublk_disk_fail(d, -ESHUTDOWN, "the device was stopped while starting");
		ublk_disk_begin_stop(d);
		return;
	}
	d->job_running = true;
	if (keel_spawn_blocking(ublk_go_live_job, d, ublk_disk_live_done, d) != 0) {
		d->job_running = false;
		ublk_disk_fail(d, -ESHUTDOWN, "keeld is shutting down");
		ublk_disk_begin_stop(d);
	}
}

static void ublk_disk_setup_done(void *arg, int rc)
{
	struct keel_ublk_disk *d = arg;

	d->job_running = false;
	if (rc == 0 && (d->stop_requested || g_shutdown)) {
		rc = -ESHUTDOWN;
		snprintf(d->err, sizeof(d->err), "the device was stopped while starting");
	}
	if (rc != 0) {
		ublk_disk_fail(d, rc, NULL);
		KEEL_ERRLOG("ublk%lld (bdev %s): %s", (long long)d->id, d->bdev_name, d->err);
		/* Nothing was fetched: the queues are still ours and never reported. */
		d->queues_reported = d->queues != NULL ? d->nqueues : 0;
		if (d->recover) {
			/* A device we could not re-attach holds the data of whoever mounted
			 * it: never delete it here; the person decides (ublk_stop_disk after
			 * ublk_recover_disk, or the ublk tools). */
			d->owns_device = false;
		}
		ublk_disk_begin_stop(d);
		return;
	}
	for (uint32_t i = 0; i < d->nqueues; i++) {
		struct ublk_queue *q = &d->queues[i];

		if (keel_thread_send_msg_reliable(q->thread, ublk_queue_start, q, NULL) != 0) {
			q->start_rc = -ESHUTDOWN;
			ublk_disk_queue_started(q);
		}
	}
}

static int ublk_disk_launch(struct keel_ublk_disk *d)
{
	d->job_running = true;
	if (keel_spawn_blocking(d->recover ? ublk_recover_job : ublk_add_job, d,
				ublk_disk_setup_done, d) != 0) {
		d->job_running = false;
		return -ESHUTDOWN;
	}
	return 0;
}

void keel_ublk_disk_opts_init(struct keel_ublk_disk_opts *opts)
{
	memset(opts, 0, sizeof(*opts));
	opts->ublk_id = -1;
}

static int ublk_ensure_target(char *err, size_t err_len)
{
	int rc;

	ublk_main_init();
	if (g_target) {
		return 0;
	}
	rc = ublk_target_threads(0);
	g_target_implicit = rc == 0;
	if (rc != 0) {
		snprintf(err, err_len, "cannot create the ublk target: %s", strerror(-rc));
	}
	return rc;
}

int keel_ublk_disk_start(const struct keel_ublk_disk_opts *opts, keel_ublk_start_cb cb_fn,
			 void *cb_arg, char *err, size_t err_len)
{
	struct keel_ublk_disk *d;
	uint32_t depth = opts->queue_depth ? opts->queue_depth : KEEL_UBLK_DEFAULT_QUEUE_DEPTH;
	int rc;

	if (g_shutdown) {
		snprintf(err, err_len, "keeld is shutting down");
		return -ESHUTDOWN;
	}
	if (opts->bdev_name == NULL || opts->bdev_name[0] == '\0' ||
	    strlen(opts->bdev_name) > KEEL_BDEV_NAME_MAX) {
		snprintf(err, err_len, "bdev_name: give the name of a bdev (at most %u bytes)",
			 KEEL_BDEV_NAME_MAX);
		return -EINVAL;
	}
	if (opts->ublk_id < -1 || opts->ublk_id > UBLK_CTRL_MAX_ID) {
		snprintf(err, err_len, "ublk_id %lld: must be 0..%u (or absent: any)",
			 (long long)opts->ublk_id, UBLK_CTRL_MAX_ID);
		return -EINVAL;
	}
	if (depth > KEEL_UBLK_MAX_QUEUE_DEPTH) {
		snprintf(err, err_len, "queue_depth %u: must be 1..%u", depth,
			 KEEL_UBLK_MAX_QUEUE_DEPTH);
		return -EINVAL;
	}
	rc = ublk_ensure_target(err, err_len);
	if (rc != 0) {
		return rc;
	}
	if (opts->num_queues > g_nthreads) {
		snprintf(err, err_len,
			 "num_queues %u: must be 1..%u (one queue per reactor of the ublk "
			 "target)",
			 opts->num_queues, g_nthreads);
		return -EINVAL;
	}
	if (ublk_disk_find(opts->ublk_id) != NULL) {
		snprintf(err, err_len,
			 "/dev/ublkb%lld is already served by this keeld: stop it first "
			 "(ublk_stop_disk) or choose another ublk_id",
			 (long long)opts->ublk_id);
		return -EBUSY;
	}
	d = ublk_disk_alloc(opts->bdev_name, opts->ublk_id);
	if (d == NULL) {
		snprintf(err, err_len, "out of memory");
		return -ENOMEM;
	}
	d->nqueues = opts->num_queues ? opts->num_queues : g_nthreads;
	d->depth = depth;
	d->state = UBLK_DISK_STARTING;
	rc = ublk_disk_open_bdev(d);
	if (rc != 0) {
		if (rc == -ENODEV) {
			snprintf(err, err_len,
				 "bdev '%s' not found: create it first, see bdev list",
				 opts->bdev_name);
		} else if (rc == -EPERM) {
			snprintf(err, err_len, "bdev '%s' is claimed by a module", opts->bdev_name);
		} else {
			snprintf(err, err_len, "cannot open bdev '%s': %s", opts->bdev_name,
				 strerror(-rc));
		}
		free(d);
		return rc;
	}
	if (d->block_size < 512 || d->block_size > 4096 || (d->block_size & (d->block_size - 1))) {
		snprintf(err, err_len, "bdev '%s' has %u-byte blocks: ublk needs 512..4096",
			 opts->bdev_name, d->block_size);
		keel_bdev_close(d->desc);
		free(d);
		return -EINVAL;
	}
	d->start_cb = cb_fn;
	d->start_arg = cb_arg;
	TAILQ_INSERT_TAIL(&g_disks, d, link);
	rc = ublk_disk_launch(d);
	if (rc != 0) {
		TAILQ_REMOVE(&g_disks, d, link);
		keel_bdev_close(d->desc);
		free(d);
		snprintf(err, err_len, "keeld is shutting down");
	}
	return rc;
}

/* Main thread: a device to re-attach whose bdev exists now. */
static int ublk_disk_try_recover(struct keel_ublk_disk *d)
{
	int rc;

	if (keel_bdev_get_by_name(d->bdev_name) == NULL) {
		return -ENODEV;
	}
	rc = ublk_disk_open_bdev(d);
	if (rc == 0) {
		d->state = UBLK_DISK_RECOVERING;
		d->recover = true;
		rc = ublk_disk_launch(d);
		if (rc != 0) {
			keel_bdev_close(d->desc);
			d->desc = NULL;
		}
	}
	return rc;
}

int keel_ublk_disk_recover(const char *bdev_name, uint32_t id, keel_ublk_start_cb cb_fn,
			   void *cb_arg, char *err, size_t err_len)
{
	struct keel_ublk_disk *d;
	int rc;

	if (g_shutdown) {
		snprintf(err, err_len, "keeld is shutting down");
		return -ESHUTDOWN;
	}
	if (bdev_name == NULL || bdev_name[0] == '\0' || strlen(bdev_name) > KEEL_BDEV_NAME_MAX ||
	    id > UBLK_CTRL_MAX_ID) {
		snprintf(err, err_len, "give bdev_name and a ublk_id 0..%u", UBLK_CTRL_MAX_ID);
		return -EINVAL;
	}
	rc = ublk_ensure_target(err, err_len);
	if (rc != 0) {
		return rc;
	}
	d = ublk_disk_find(id);
	if (d != NULL && d->state != UBLK_DISK_WAITING) {
		snprintf(err, err_len, "/dev/ublkb%u is already served by this keeld (%s)", id,
			 ublk_disk_state_name(d->state));
		return -EBUSY;
	}
	if (d == NULL) {
		d = ublk_disk_alloc(bdev_name, id);
		if (d == NULL) {
			snprintf(err, err_len, "out of memory");
			return -ENOMEM;
		}
		TAILQ_INSERT_TAIL(&g_disks, d, link);
	} else {
		snprintf(d->bdev_name, sizeof(d->bdev_name), "%s", bdev_name);
	}
	d->start_cb = cb_fn;
	d->start_arg = cb_arg;
	rc = ublk_disk_try_recover(d);
	if (rc != 0) {
		snprintf(err, err_len,
			 rc == -ENODEV ? "bdev '%s' not found: create it first"
				       : "cannot open bdev '%s'",
			 bdev_name);
		d->start_cb = NULL;
		if (d->state != UBLK_DISK_WAITING) {
			TAILQ_REMOVE(&g_disks, d, link);
			free(d);
		}
	}
	return rc;
}

int keel_ublk_disk_stop(uint32_t id, keel_ublk_done_cb cb_fn, void *cb_arg)
{
	struct keel_ublk_disk *d = ublk_disk_find(id);

	if (d == NULL || d->state == UBLK_DISK_STOPPING || d->stop_requested ||
	    d->nwaiters >= UBLK_MAX_WAITERS) {
		return -ENOENT;
	}
	d->waiters[d->nwaiters].cb_fn = cb_fn;
	d->waiters[d->nwaiters].cb_arg = cb_arg;
	d->nwaiters++;
	d->forget = true;
	switch (d->state) {
	case UBLK_DISK_STARTING:
	case UBLK_DISK_RECOVERING:
		d->stop_requested = true;
		break;
	case UBLK_DISK_WAITING:
		/* Never attached by us, but the person wants the kernel device gone. */
		d->owns_device = true;
		/* fall through */
	case UBLK_DISK_RUNNING:
		KEEL_NOTICELOG("ublk%u (bdev %s): stopping", id, d->bdev_name);
		ublk_disk_begin_stop(d);
		break;
	case UBLK_DISK_STOPPING:
		break;
	}
	return 0;
}

/* ------------------------------------------------------------------------------ */
/* Records, restore, shutdown                                                      */
/* ------------------------------------------------------------------------------ */

void keel_ublk_set_listener(keel_ublk_listener_fn fn, void *ctx)
{
	g_listener = fn;
	g_listener_ctx = ctx;
}

json_t *keel_ublk_disk_snapshot(void)
{
	json_t *doc = json_pack("{s:i, s:[]}", "version", UBLK_STATE_VERSION, "disks");
	json_t *arr = json_object_get(doc, "disks");
	struct keel_ublk_disk *d;

	if (doc == NULL) {
		return NULL;
	}
	TAILQ_FOREACH(d, &g_disks, link) {
		if (d->id < 0 || d->forget ||
		    (d->state != UBLK_DISK_RUNNING && d->state != UBLK_DISK_WAITING &&
		     d->state != UBLK_DISK_RECOVERING)) {
			continue;
		}
		if (json_array_append_new(arr, json_pack("{s:I, s:s}", "ublk_id", (json_int_t)d->id,
							 "bdev_name", d->bdev_name)) != 0) {
			json_decref(doc);
			return NULL;
		}
	}
	return doc;
}

static void ublk_restore_started(void *arg, int status, uint32_t id, const char *err)
{
	struct keel_ublk_disk *d = arg;

	(void)d;
	if (status != 0) {
		KEEL_ERRLOG("ublk%u: not re-attached: %s (ublk_recover_disk retries)", id, err);
	}
}

static int ublk_wait_poll(void *arg)
{
	struct keel_ublk_disk *d, *tmp;
	bool waiting = false;

	for (d = TAILQ_FIRST(&g_disks); d != NULL; d = tmp) {
		tmp = TAILQ_NEXT(d, link);
		if (d->state == UBLK_DISK_WAITING) {
			d->start_cb = ublk_restore_started;
			d->start_arg = d;
			if (ublk_disk_try_recover(d) != 0) {
				d->start_cb = NULL;
			}
			waiting |= d->state == UBLK_DISK_WAITING;
		}
	}
	if (!waiting) {
		keel_poller_unregister(&g_wait_poller);
	}
	return KEEL_POLLER_IDLE;
}

int ublk_disk_records_parse(const json_t *doc, ublk_record_fn fn, void *ctx)
{
	json_t *disks = json_object_get(doc, "disks"), *e;
	int n = 0;
	size_t i;

	if (doc == NULL) {
		return 0;
	}
	if (json_integer_value(json_object_get(doc, "version")) != UBLK_STATE_VERSION ||
	    !json_is_array(disks)) {
		return -EINVAL;
	}
	json_array_foreach(disks, i, e) {
		json_t *id = json_object_get(e, "ublk_id");
		const char *bdev = json_string_value(json_object_get(e, "bdev_name"));

		if (!json_is_integer(id) || json_integer_value(id) < 0 ||
		    json_integer_value(id) > UBLK_CTRL_MAX_ID || bdev == NULL || bdev[0] == '\0' ||
		    strlen(bdev) > KEEL_BDEV_NAME_MAX) {
			KEEL_WARNLOG("ublk: device records: disks[%zu] is malformed; skipped", i);
			continue;
		}
		if (fn != NULL) {
			fn((uint32_t)json_integer_value(id), bdev, ctx);
		}
		n++;
	}
	return n;
}

/* One record of an earlier keeld: wait for its bdev, then re-attach. */
static void ublk_restore_record(uint32_t id, const char *bdev, void *ctx)
{
	bool *waiting = ctx;
	struct keel_ublk_disk *d;

	if (ublk_disk_find(id) != NULL) {
		KEEL_WARNLOG("ublk%u: recorded twice; the first record is used", id);
		return;
	}
	d = ublk_disk_alloc(bdev, id);
	if (d == NULL) {
		KEEL_ERRLOG("ublk%u: out of memory; not re-attached", id);
		return;
	}
	d->state = UBLK_DISK_WAITING;
	TAILQ_INSERT_TAIL(&g_disks, d, link);
	KEEL_NOTICELOG("ublk%u: served bdev %s before the restart; re-attaching%s", id, bdev,
		       keel_bdev_get_by_name(bdev) ? "" : " once the bdev exists");
	d->start_cb = ublk_restore_started;
	d->start_arg = d;
	if (ublk_disk_try_recover(d) != 0) {
		d->start_cb = NULL;
	}
	*waiting |= d->state == UBLK_DISK_WAITING;
}

void keel_ublk_disk_restore(const json_t *doc, keel_ublk_done_cb cb_fn, void *cb_arg)
{
	char err[256];
	bool waiting = false;
	int n;

	ublk_main_init();
	n = ublk_disk_records_parse(doc, NULL, NULL);
	if (n < 0) {
		KEEL_ERRLOG("ublk: the device records are not a version %d list; ignored",
			    UBLK_STATE_VERSION);
	} else if (n > 0 && ublk_ensure_target(err, sizeof(err)) != 0) {
		KEEL_ERRLOG("ublk: devices are not re-attached: %s", err);
	} else if (n > 0) {
		ublk_disk_records_parse(doc, ublk_restore_record, &waiting);
	}
	if (waiting && g_wait_poller == NULL) {
		g_wait_poller = keel_poller_register(ublk_wait_poll, NULL, UBLK_WAIT_PERIOD_US,
						     "ublk_wait");
	}
	cb_fn(cb_arg, 0, "");
}

static void ublk_disk_check_stop_all(void)
{
	keel_ublk_done_cb cb = g_stop_all_cb;

	if (cb == NULL || !TAILQ_EMPTY(&g_disks)) {
		return;
	}
	g_stop_all_cb = NULL;
	keel_poller_unregister(&g_wait_poller);
	cb(g_stop_all_arg, 0, "");
}

static void ublk_stop_all_kick(void *arg)
{
	ublk_disk_check_stop_all();
}

void keel_ublk_stop_all(keel_ublk_done_cb cb_fn, void *cb_arg)
{
	struct keel_ublk_disk *d, *tmp;

	ublk_main_init();
	g_shutdown = true;
	g_stop_all_cb = cb_fn;
	g_stop_all_arg = cb_arg;
	for (d = TAILQ_FIRST(&g_disks); d != NULL; d = tmp) {
		tmp = TAILQ_NEXT(d, link);
		switch (d->state) {
		case UBLK_DISK_STARTING:
		case UBLK_DISK_RECOVERING:
			d->stop_requested = true;
			d->forget = true;
			break;
		case UBLK_DISK_WAITING:
			/* Never attached by this keeld: left for the next one. */
			TAILQ_REMOVE(&g_disks, d, link);
			ublk_disk_free(d);
			break;
		case UBLK_DISK_RUNNING:
			KEEL_NOTICELOG("ublk%lld (bdev %s): stopping for shutdown",
				       (long long)d->id, d->bdev_name);
			d->forget = true;
			ublk_disk_begin_stop(d);
			break;
		case UBLK_DISK_STOPPING:
			break;
		}
	}
	if (g_main == NULL ||
	    keel_thread_send_msg_reliable(g_main, ublk_stop_all_kick, NULL, NULL) != 0) {
		KEEL_ERRLOG("ublk: cannot queue the end of the devices' shutdown");
	}
}

struct keel_ublk_disk *keel_ublk_disk_first(void)
{
	return TAILQ_FIRST(&g_disks);
}

struct keel_ublk_disk *keel_ublk_disk_next(struct keel_ublk_disk *prev)
{
	return prev != NULL ? TAILQ_NEXT(prev, link) : NULL;
}

int64_t keel_ublk_disk_get_id(const struct keel_ublk_disk *disk)
{
	return disk->id;
}

const char *keel_ublk_disk_get_bdev_name(const struct keel_ublk_disk *disk)
{
	return disk->bdev_name;
}

const char *keel_ublk_disk_get_state(const struct keel_ublk_disk *disk)
{
	return ublk_disk_state_name(disk->state);
}

uint32_t keel_ublk_disk_get_num_queues(const struct keel_ublk_disk *disk)
{
	return disk->nqueues;
}

uint32_t keel_ublk_disk_get_queue_depth(const struct keel_ublk_disk *disk)
{
	return disk->depth;
}
