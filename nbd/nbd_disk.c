/*
 * Kernel NBD devices: a bdev served to the local kernel as /dev/nbdN.
 *
 * Ownership: every keel_nbd_disk belongs to the main keel thread (RPC handlers, the bdev
 * descriptor and its hot-remove event, the state file). Each of its sockets is served by
 * one nbd_conn on one NBD thread; those threads tell the main thread by message when a
 * connection is created or gone, and a disk is freed only when no connection is left and
 * no message about it is in flight (counted in `pending`), so NBD threads may use the
 * disk's socket slots without locks.
 *
 * Netlink calls block (the kernel runs the command inside sendmsg, DISCONNECT flushes a
 * workqueue), so they run on the blocking-work pool, never on a reactor and never on an
 * NBD thread that serves the device. While such a job runs (`job_running`) the job owns
 * the fields it reads; the main thread touches none of them.
 *
 * Restart: the kernel keeps a netlink-configured device bound when keeld dies and, within
 * the dead-connection timeout, holds I/O for a RECONFIGURE with new sockets. keeld
 * remembers its devices in a state file; a restarted keeld checks STATUS and reattaches.
 * The backend identifier given at CONNECT makes the kernel refuse a RECONFIGURE that would
 * attach another bdev's sockets to the device.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>

#include "keel/bdev.h"
#include "keel/log.h"
#include "keel/nbd.h"
#include "keel/nbd_kernel.h"
#include "keel/reactor.h"
#include "nbd/nbd_internal.h"
#include "nbd/nbd_proto.h"

#define NBD_DISK_STATE_VERSION 1
/* How often a device restored from the state file looks for its bdev. */
#define NBD_DISK_WAIT_PERIOD_US (1000u * 1000u)
/* At most one line per this interval for a monitor that keeps failing. */
#define NBD_DISK_MONITOR_LOG_MS 10000

enum nbd_disk_state {
	NBD_DISK_STARTING,    /* connections being created, then CONNECT */
	NBD_DISK_REATTACHING, /* connections being created, then STATUS + RECONFIGURE */
	NBD_DISK_WAITING,     /* restored from the state file; its bdev does not exist yet */
	NBD_DISK_RUNNING,
	NBD_DISK_STOPPING, /* DISCONNECT sent or failed start: waiting for connections */
};

struct nbd_disk_sock {
	struct keel_nbd_disk *disk;
	struct keel_thread *thread;
	int kernel_fd;         /* the end nbd.ko gets; closed once the kernel has its ref */
	int serve_fd;          /* the end nbd_conn serves; owned by the conn once created */
	struct nbd_conn *conn; /* NBD thread only; NULL once the connection is gone */
	int create_rc;
	bool up; /* main thread: the connection exists */
};

struct keel_nbd_disk {
	TAILQ_ENTRY(keel_nbd_disk) link;
	enum nbd_disk_state state;
	int32_t index;
	char bdev_name[KEEL_NBD_EXPORT_NAME_MAX + 1];
	char backend_id[KEEL_NBD_EXPORT_NAME_MAX + 64];
	bool read_only;
	uint32_t io_timeout_s;
	uint32_t dead_conn_timeout_s;
	struct keel_bdev_desc *desc;
	uint64_t size;
	uint32_t block_size;
	uint16_t tflags;
	uint32_t nsocks;
	struct nbd_disk_sock socks[KEEL_NBD_KERNEL_MAX_SOCKETS];
	uint32_t conns;      /* connections up */
	uint32_t pending;    /* messages to/from NBD threads in flight */
	bool job_running;    /* a netlink job owns the kernel fields */
	bool stop_requested; /* stop or hot remove while starting */
	bool disconnect_sent;
	bool forget; /* drop from the state file when gone */
	int rc;      /* first error of a failed start */
	char err[512];
	keel_nbd_disk_start_cb start_cb;
	void *start_arg;
	struct nbd_waiter_list waiters;
};

static TAILQ_HEAD(, keel_nbd_disk) g_disks = TAILQ_HEAD_INITIALIZER(g_disks);
static struct keel_thread *g_disk_main;
static bool g_disk_shutdown;
/* Told when the device records change (keel_nbd_disk_set_listener). */
static keel_nbd_disk_listener_fn g_listener;
static void *g_listener_ctx;
static struct keel_poller *g_wait_poller;
static struct keel_nbd_kernel_monitor *g_monitor;
static struct keel_poller *g_monitor_poller;
/* keel_nbd_stop_all: called once every device is gone. */
static keel_nbd_done_cb g_stop_all_cb;
static void *g_stop_all_arg;

static void nbd_disk_try_finish(struct keel_nbd_disk *disk);
static void nbd_disk_begin_stop(struct keel_nbd_disk *disk);
static void nbd_disk_attach(struct keel_nbd_disk *disk);
static void nbd_disk_changed(void);
static void nbd_disk_check_stop_all(void);
static void nbd_disk_close_kernel_fds(struct keel_nbd_disk *disk);

static const char *nbd_disk_state_name(enum nbd_disk_state state)
{
	switch (state) {
	case NBD_DISK_STARTING:
		return "starting";
	case NBD_DISK_REATTACHING:
		return "reattaching";
	case NBD_DISK_WAITING:
		return "waiting-for-bdev";
	case NBD_DISK_RUNNING:
		return "running";
	case NBD_DISK_STOPPING:
		return "stopping";
	}
	return "?";
}

static struct keel_nbd_disk *nbd_disk_find(int32_t index)
{
	struct keel_nbd_disk *disk;

	TAILQ_FOREACH(disk, &g_disks, link) {
		if (index >= 0 && disk->index == index) {
			return disk;
		}
	}
	return NULL;
}

/*
 * What the kernel is told identifies the backend. A nexus volume's UUID comes from its
 * labels and survives restarts; other modules make up a UUID at every creation, so for
 * them the bdev name stands in (a recreated aio bdev of the same name reattaches).
 */
static void nbd_disk_backend_id(struct keel_bdev *bdev, char *buf, size_t len)
{
	if (strcmp(keel_bdev_get_module_name(bdev), "nexus") == 0) {
		snprintf(buf, len, "keel:%s", keel_bdev_get_uuid_str(bdev));
	} else {
		snprintf(buf, len, "keel-bdev:%s", keel_bdev_get_name(bdev));
	}
}

/* ------------------------------------------------------------------------------ */
/* Connections on the NBD threads                                                  */
/* ------------------------------------------------------------------------------ */

static void nbd_disk_main_sock_gone(void *arg)
{
	struct nbd_disk_sock *sock = arg;
	struct keel_nbd_disk *disk = sock->disk;

	sock->up = false;
	disk->conns--;
	disk->pending--;
	if (disk->state == NBD_DISK_RUNNING) {
		/* The kernel closed it without our DISCONNECT: a DISCONNECT from another tool
		 * (nbd-client -d) or a dead socket. Without sockets the device is not ours. */
		KEEL_WARNLOG("nbd%d (bdev %s): a connection to the kernel closed (%u left)",
			     disk->index, disk->bdev_name, disk->conns);
		if (disk->conns == 0) {
			KEEL_WARNLOG("nbd%d (bdev %s): every connection closed: the device was "
				     "disconnected outside keeld; forgetting it",
				     disk->index, disk->bdev_name);
			disk->forget = true;
			disk->state = NBD_DISK_STOPPING;
			disk->disconnect_sent = true;
		}
	}
	nbd_disk_try_finish(disk);
}

/* NBD thread: the connection is fully gone. */
static void nbd_disk_conn_done(void *ctx, struct nbd_conn *conn)
{
	struct nbd_disk_sock *sock = ctx;

	sock->conn = NULL;
	if (keel_thread_send_msg_reliable(g_disk_main, nbd_disk_main_sock_gone, sock, NULL) != 0) {
		KEEL_ERRLOG("nbd bdev %s: lost track of a closed kernel connection",
			    sock->disk->bdev_name);
	}
}

static void nbd_disk_main_sock_created(void *arg)
{
	struct nbd_disk_sock *sock = arg;
	struct keel_nbd_disk *disk = sock->disk;

	disk->pending--;
	if (sock->create_rc == 0) {
		sock->up = true;
		disk->conns++;
		disk->pending++; /* the "gone" message that will come */
	} else if (disk->rc == 0) {
		disk->rc = sock->create_rc;
		snprintf(disk->err, sizeof(disk->err), "cannot serve a socket for bdev %.64s: %s",
			 disk->bdev_name, strerror(-sock->create_rc));
	}
	if (disk->pending > disk->conns) {
		return; /* more creations to come */
	}
	if (disk->rc != 0 || disk->stop_requested || g_disk_shutdown) {
		if (disk->rc == 0) {
			disk->rc = g_disk_shutdown ? -ESHUTDOWN : -ENODEV;
			snprintf(disk->err, sizeof(disk->err), "%s",
				 g_disk_shutdown ? "keeld is shutting down"
						 : "the bdev was removed or the device "
						   "stopped while starting");
		}
		nbd_disk_begin_stop(disk);
		return;
	}
	nbd_disk_attach(disk);
}

/*
 * NBD thread: tell the main thread about \p sock; it counts on hearing. A main thread
 * that is gone (-ESHUTDOWN) will never hear: say so.
 */
static void nbd_disk_tell_main(keel_msg_fn fn, struct nbd_disk_sock *sock)
{
	int rc = keel_thread_send_msg_reliable(g_disk_main, fn, sock, NULL);

	if (rc != 0) {
		KEEL_ERRLOG("nbd bdev %s: cannot reach the main thread: %s", sock->disk->bdev_name,
			    strerror(-rc));
	}
}

/* NBD thread: start serving one socket in transmission (the kernel does no handshake). */
static void nbd_disk_sock_create(void *arg)
{
	struct nbd_disk_sock *sock = arg;
	struct keel_nbd_disk *disk = sock->disk;

	sock->create_rc = nbd_conn_create_transmission(sock->serve_fd, disk->desc, disk->tflags,
						       nbd_disk_conn_done, sock, &sock->conn);
	if (sock->create_rc != 0) {
		close(sock->serve_fd);
	}
	sock->serve_fd = -1;
	nbd_disk_tell_main(nbd_disk_main_sock_created, sock);
}

static void nbd_disk_main_close_ack(void *arg)
{
	struct nbd_disk_sock *sock = arg;

	sock->disk->pending--;
	nbd_disk_try_finish(sock->disk);
}

/* NBD thread: hard close (waits for the connection's bdev I/O, then conn_done). */
static void nbd_disk_sock_close(void *arg)
{
	struct nbd_disk_sock *sock = arg;

	if (sock->conn != NULL) {
		nbd_conn_close(sock->conn);
	}
	nbd_disk_tell_main(nbd_disk_main_close_ack, sock);
}

static void nbd_disk_close_conns(struct keel_nbd_disk *disk)
{
	for (uint32_t i = 0; i < disk->nsocks; i++) {
		struct nbd_disk_sock *sock = &disk->socks[i];

		if (!sock->up) {
			continue;
		}
		disk->pending++;
		if (keel_thread_send_msg_reliable(sock->thread, nbd_disk_sock_close, sock, NULL) !=
		    0) {
			disk->pending--;
			KEEL_ERRLOG("nbd%d: cannot reach thread %s to close a connection",
				    disk->index, keel_thread_get_name(sock->thread));
		}
	}
}

/* Make the socketpairs and start serving them; nbd_disk_attach runs when all are up. */
static int nbd_disk_open_socks(struct keel_nbd_disk *disk)
{
	struct keel_bdev *bdev = keel_bdev_desc_get_bdev(disk->desc);
	uint32_t workers = nbd_worker_count();

	/* More than one socket needs CAN_MULTI_CONN; the kernel refuses it otherwise. */
	disk->nsocks = keel_bdev_is_multi_conn_safe(bdev) ? workers : 1;
	if (disk->nsocks > KEEL_NBD_KERNEL_MAX_SOCKETS) {
		disk->nsocks = KEEL_NBD_KERNEL_MAX_SOCKETS;
	}
	for (uint32_t i = 0; i < disk->nsocks; i++) {
		struct nbd_disk_sock *sock = &disk->socks[i];
		int sv[2];

		sock->disk = disk;
		sock->thread = nbd_worker_thread(i);
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
			int rc = -errno;

			snprintf(disk->err, sizeof(disk->err), "socketpair: %s", strerror(errno));
			for (uint32_t j = 0; j < i; j++) {
				close(disk->socks[j].serve_fd);
				disk->socks[j].serve_fd = -1;
			}
			nbd_disk_close_kernel_fds(disk);
			return rc;
		}
		sock->kernel_fd = sv[0];
		sock->serve_fd = sv[1];
	}
	for (uint32_t i = 0; i < disk->nsocks; i++) {
		struct nbd_disk_sock *sock = &disk->socks[i];

		disk->pending++;
		if (keel_thread_send_msg_reliable(sock->thread, nbd_disk_sock_create, sock, NULL) !=
		    0) {
			/* Earlier creations are under way: fail through the normal path. */
			disk->pending--;
			close(sock->serve_fd);
			sock->serve_fd = -1;
			if (disk->rc == 0) {
				disk->rc = -ENOMEM;
				snprintf(disk->err, sizeof(disk->err), "out of memory");
			}
			if (i == 0) {
				for (uint32_t j = 1; j < disk->nsocks; j++) {
					close(disk->socks[j].serve_fd);
					disk->socks[j].serve_fd = -1;
				}
				nbd_disk_close_kernel_fds(disk);
				return -ENOMEM;
			}
			/* The last created message then sees rc and stops. */
			for (uint32_t j = i + 1; j < disk->nsocks; j++) {
				close(disk->socks[j].serve_fd);
				disk->socks[j].serve_fd = -1;
			}
			disk->nsocks = i;
			break;
		}
	}
	return 0;
}

static void nbd_disk_close_kernel_fds(struct keel_nbd_disk *disk)
{
	for (uint32_t i = 0; i < KEEL_NBD_KERNEL_MAX_SOCKETS; i++) {
		if (disk->socks[i].kernel_fd >= 0) {
			close(disk->socks[i].kernel_fd);
			disk->socks[i].kernel_fd = -1;
		}
	}
}

/* ------------------------------------------------------------------------------ */
/* Netlink jobs (blocking-work pool)                                               */
/* ------------------------------------------------------------------------------ */

static void nbd_disk_err_append(struct keel_nbd_disk *disk, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void nbd_disk_err_append(struct keel_nbd_disk *disk, const char *fmt, ...)
{
	size_t len = strlen(disk->err);
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(disk->err + len, sizeof(disk->err) - len, fmt, ap);
	va_end(ap);
}

static int nbd_disk_connect_job(void *arg)
{
	struct keel_nbd_disk *disk = arg;
	struct keel_nbd_kernel_connect_opts opts;
	int fds[KEEL_NBD_KERNEL_MAX_SOCKETS];
	uint32_t index = 0;
	int rc;

	for (uint32_t i = 0; i < disk->nsocks; i++) {
		fds[i] = disk->socks[i].kernel_fd;
	}
	keel_nbd_kernel_connect_opts_init(&opts);
	opts.index = disk->index;
	opts.size_bytes = disk->size;
	opts.block_size = disk->block_size;
	opts.server_flags = disk->tflags;
	opts.timeout_s = disk->io_timeout_s;
	opts.dead_conn_timeout_s = disk->dead_conn_timeout_s;
	opts.sock_fds = fds;
	opts.num_sock_fds = disk->nsocks;
	opts.backend_id = disk->backend_id;
	rc = keel_nbd_kernel_connect(&opts, &index, disk->err, sizeof(disk->err));
	/* The kernel holds its own references now; ours would keep a dead device alive. */
	nbd_disk_close_kernel_fds(disk);
	/* Say what a person can do about the two errors a device number causes. */
	if (rc == -EBUSY) {
		nbd_disk_err_append(
			disk, " (configured or held open by another process: choose "
			      "another device, or omit it to let the kernel pick a free one)");
	} else if (rc == -EINVAL && disk->index >= 0) {
		nbd_disk_err_append(disk, " (is /dev/nbd%d beyond the kernel's device range?)",
				    disk->index);
	}
	if (rc == 0) {
		disk->index = (int32_t)index;
	}
	return rc;
}

static int nbd_disk_reattach_job(void *arg)
{
	struct keel_nbd_disk *disk = arg;
	struct keel_nbd_kernel_reconfigure_opts opts;
	int fds[KEEL_NBD_KERNEL_MAX_SOCKETS];
	bool connected = false;
	int rc;

	rc = keel_nbd_kernel_status((uint32_t)disk->index, &connected, disk->err,
				    sizeof(disk->err));
	if (rc == 0 && !connected) {
		rc = -ENOENT;
		snprintf(disk->err, sizeof(disk->err),
			 "/dev/nbd%d is no longer configured in "
			 "the kernel (dead-connection timeout passed, or disconnected)",
			 disk->index);
	}
	if (rc == 0) {
		for (uint32_t i = 0; i < disk->nsocks; i++) {
			fds[i] = disk->socks[i].kernel_fd;
		}
		keel_nbd_kernel_reconfigure_opts_init(&opts);
		opts.sock_fds = fds;
		opts.num_sock_fds = disk->nsocks;
		opts.backend_id = disk->backend_id;
		rc = keel_nbd_kernel_reconfigure((uint32_t)disk->index, &opts, disk->err,
						 sizeof(disk->err));
		if (rc == -EINVAL) {
			snprintf(disk->err, sizeof(disk->err),
				 "the kernel refused to reattach "
				 "/dev/nbd%d to bdev %.64s (another backend is attached, or the "
				 "device is "
				 "not netlink-configured)",
				 disk->index, disk->bdev_name);
		}
	}
	nbd_disk_close_kernel_fds(disk);
	return rc;
}

static int nbd_disk_disconnect_job(void *arg)
{
	struct keel_nbd_disk *disk = arg;

	return keel_nbd_kernel_disconnect((uint32_t)disk->index, disk->err, sizeof(disk->err));
}

static void nbd_disk_disconnect_done(void *cb_arg, int rc)
{
	struct keel_nbd_disk *disk = cb_arg;

	disk->job_running = false;
	if (rc != 0) {
		KEEL_WARNLOG("nbd%d (bdev %s): disconnect failed: %s", disk->index, disk->bdev_name,
			     disk->err);
	} else {
		KEEL_NOTICELOG("nbd%d (bdev %s): disconnected", disk->index, disk->bdev_name);
	}
	/* The kernel shut its ends; the hard close covers a failed DISCONNECT and waits for
	 * our requests still in flight on the bdev. */
	nbd_disk_close_conns(disk);
	nbd_disk_try_finish(disk);
}

static void nbd_disk_attach_done(void *cb_arg, int rc)
{
	struct keel_nbd_disk *disk = cb_arg;
	bool reattach = disk->state == NBD_DISK_REATTACHING;

	disk->job_running = false;
	if (rc != 0) {
		disk->rc = rc;
		if (reattach) {
			KEEL_ERRLOG("nbd%d (bdev %s): cannot reattach: %s", disk->index,
				    disk->bdev_name, disk->err);
			/* Gone from the kernel, or another backend: not ours any more. */
			disk->forget = true;
		} else {
			KEEL_ERRLOG("nbd bdev %s: cannot connect a kernel device (index %d): %s",
				    disk->bdev_name, disk->index, disk->err);
		}
		disk->disconnect_sent = true; /* nothing of ours is bound */
		nbd_disk_begin_stop(disk);
		return;
	}
	disk->state = NBD_DISK_RUNNING;
	KEEL_NOTICELOG("nbd%d: %s bdev %s (%lu bytes, block size %u, %u queue(s), flags 0x%x%s, "
		       "backend %s)",
		       disk->index, reattach ? "reattached to" : "serving", disk->bdev_name,
		       (unsigned long)disk->size, disk->block_size, disk->nsocks, disk->tflags,
		       disk->read_only ? ", read-only" : "", disk->backend_id);
	nbd_disk_changed();
	if (disk->start_cb != NULL) {
		keel_nbd_disk_start_cb cb_fn = disk->start_cb;

		disk->start_cb = NULL;
		cb_fn(disk->start_arg, 0, (uint32_t)disk->index, "");
	}
	if (disk->stop_requested || g_disk_shutdown) {
		nbd_disk_begin_stop(disk);
	}
}

/* All connections are served: now the kernel may use them. */
static void nbd_disk_attach(struct keel_nbd_disk *disk)
{
	bool reattach = disk->state == NBD_DISK_REATTACHING;
	int rc;

	disk->job_running = true;
	rc = keel_spawn_blocking(reattach ? nbd_disk_reattach_job : nbd_disk_connect_job, disk,
				 nbd_disk_attach_done, disk);
	if (rc != 0) {
		disk->job_running = false;
		disk->rc = rc;
		snprintf(disk->err, sizeof(disk->err), "cannot run the netlink call: %s",
			 strerror(-rc));
		disk->disconnect_sent = true;
		nbd_disk_begin_stop(disk);
	}
}

/* ------------------------------------------------------------------------------ */
/* Lifetime                                                                        */
/* ------------------------------------------------------------------------------ */

static void nbd_disk_free(struct keel_nbd_disk *disk)
{
	nbd_disk_close_kernel_fds(disk);
	free(disk);
}

static void nbd_disk_try_finish(struct keel_nbd_disk *disk)
{
	bool was_saved;

	if (disk->state != NBD_DISK_STOPPING || disk->job_running || disk->conns > 0 ||
	    disk->pending > 0) {
		return;
	}
	if (disk->desc != NULL) {
		keel_bdev_close(disk->desc);
		disk->desc = NULL;
	}
	TAILQ_REMOVE(&g_disks, disk, link);
	/* A failed fresh start was never in the state file; everything else was. */
	was_saved = disk->start_cb == NULL || disk->forget;
	if (disk->start_cb != NULL) {
		disk->start_cb(disk->start_arg, disk->rc != 0 ? disk->rc : -ENODEV, 0,
			       disk->err[0] != '\0' ? disk->err : "stopped while starting");
	} else if (disk->rc == 0) {
		KEEL_NOTICELOG("nbd%d (bdev %s): stopped", disk->index, disk->bdev_name);
	}
	nbd_waiters_wake(&disk->waiters);
	nbd_disk_free(disk);
	if (was_saved) {
		nbd_disk_changed();
	}
	nbd_disk_check_stop_all();
}

static void nbd_disk_begin_stop(struct keel_nbd_disk *disk)
{
	int rc;

	disk->state = NBD_DISK_STOPPING;
	if (disk->job_running) {
		return; /* attach_done comes back here */
	}
	if (!disk->disconnect_sent && disk->index >= 0) {
		disk->disconnect_sent = true;
		disk->job_running = true;
		rc = keel_spawn_blocking(nbd_disk_disconnect_job, disk, nbd_disk_disconnect_done,
					 disk);
		if (rc == 0) {
			return;
		}
		disk->job_running = false;
		KEEL_ERRLOG("nbd%d: cannot run DISCONNECT: %s", disk->index, strerror(-rc));
	}
	nbd_disk_close_conns(disk);
	nbd_disk_try_finish(disk);
}

static void nbd_disk_event(enum keel_bdev_event_type type, struct keel_bdev *bdev, void *ctx)
{
	struct keel_nbd_disk *disk = ctx;

	if (type != KEEL_BDEV_EVENT_REMOVE) {
		return;
	}
	switch (disk->state) {
	case NBD_DISK_STARTING:
	case NBD_DISK_REATTACHING:
		disk->stop_requested = true;
		break;
	case NBD_DISK_RUNNING:
		KEEL_WARNLOG("nbd%d: bdev %s was removed; disconnecting the device", disk->index,
			     disk->bdev_name);
		disk->forget = true;
		nbd_disk_begin_stop(disk);
		break;
	case NBD_DISK_WAITING:
	case NBD_DISK_STOPPING:
		break;
	}
}

static int nbd_disk_main_init(void)
{
	int rc;

	if (g_disk_main == NULL) {
		g_disk_main = keel_thread_get_current();
	}
	if (g_disk_main == NULL) {
		return -EINVAL;
	}
	rc = nbd_workers_ensure();
	return rc;
}

/* Open the bdev and fill what the kernel is told. */
static int nbd_disk_open_bdev(struct keel_nbd_disk *disk)
{
	struct keel_bdev *bdev;
	char backend_id[sizeof(disk->backend_id)];
	int rc;

	rc = keel_bdev_open_ext(disk->bdev_name, !disk->read_only, nbd_disk_event, disk,
				&disk->desc);
	if (rc != 0) {
		return rc;
	}
	bdev = keel_bdev_desc_get_bdev(disk->desc);
	disk->block_size = keel_bdev_get_block_size(bdev);
	disk->size = (uint64_t)disk->block_size * keel_bdev_get_num_blocks(bdev);
	disk->tflags = nbd_tflags_for_bdev(bdev, disk->read_only);
	nbd_disk_backend_id(bdev, backend_id, sizeof(backend_id));
	if (disk->backend_id[0] != '\0' && strcmp(backend_id, disk->backend_id) != 0) {
		/* Same name, another volume: the kernel would refuse it anyway. */
		KEEL_ERRLOG("nbd%d: bdev %s is now %s, but the device was attached to %s; not "
			    "reattaching",
			    disk->index, disk->bdev_name, backend_id, disk->backend_id);
		keel_bdev_close(disk->desc);
		disk->desc = NULL;
		return -EINVAL;
	}
	memcpy(disk->backend_id, backend_id, sizeof(backend_id));
	return 0;
}

static struct keel_nbd_disk *nbd_disk_alloc(const char *bdev_name, int32_t index)
{
	struct keel_nbd_disk *disk = calloc(1, sizeof(*disk));

	if (disk == NULL) {
		return NULL;
	}
	snprintf(disk->bdev_name, sizeof(disk->bdev_name), "%s", bdev_name);
	disk->index = index;
	for (uint32_t i = 0; i < KEEL_NBD_KERNEL_MAX_SOCKETS; i++) {
		disk->socks[i].kernel_fd = -1;
		disk->socks[i].serve_fd = -1;
	}
	TAILQ_INIT(&disk->waiters);
	return disk;
}

void keel_nbd_disk_opts_init(struct keel_nbd_disk_opts *opts)
{
	memset(opts, 0, sizeof(*opts));
	opts->index = -1;
	opts->dead_conn_timeout_s = KEEL_NBD_DISK_DEFAULT_DEAD_CONN_TIMEOUT_S;
}

int keel_nbd_disk_start(const struct keel_nbd_disk_opts *opts, keel_nbd_disk_start_cb cb_fn,
			void *cb_arg)
{
	struct keel_nbd_disk *disk;
	int rc;

	if (g_disk_shutdown) {
		return -ESHUTDOWN;
	}
	if (opts == NULL || opts->bdev_name == NULL || opts->bdev_name[0] == '\0' ||
	    strlen(opts->bdev_name) > KEEL_NBD_EXPORT_NAME_MAX || cb_fn == NULL ||
	    opts->index < -1 || opts->io_timeout_s > KEEL_NBD_DISK_MAX_TIMEOUT_S ||
	    opts->dead_conn_timeout_s > KEEL_NBD_DISK_MAX_TIMEOUT_S) {
		return -EINVAL;
	}
	if (nbd_disk_find(opts->index) != NULL) {
		return -EBUSY;
	}
	rc = nbd_disk_main_init();
	if (rc != 0) {
		return rc;
	}
	disk = nbd_disk_alloc(opts->bdev_name, opts->index);
	if (disk == NULL) {
		return -ENOMEM;
	}
	disk->read_only = opts->read_only;
	disk->io_timeout_s = opts->io_timeout_s;
	disk->dead_conn_timeout_s = opts->dead_conn_timeout_s;
	disk->start_cb = cb_fn;
	disk->start_arg = cb_arg;
	disk->state = NBD_DISK_STARTING;
	rc = nbd_disk_open_bdev(disk);
	if (rc != 0) {
		KEEL_ERRLOG("nbd: cannot open bdev %s for a kernel device: %s", opts->bdev_name,
			    strerror(-rc));
		free(disk);
		return rc;
	}
	rc = nbd_disk_open_socks(disk);
	if (rc != 0) {
		keel_bdev_close(disk->desc);
		nbd_disk_free(disk);
		return rc;
	}
	TAILQ_INSERT_TAIL(&g_disks, disk, link);
	return 0;
}

int keel_nbd_disk_stop(uint32_t index, keel_nbd_done_cb cb_fn, void *cb_arg)
{
	struct keel_nbd_disk *disk = index <= INT32_MAX ? nbd_disk_find((int32_t)index) : NULL;

	if (disk == NULL || disk->state == NBD_DISK_STOPPING || disk->stop_requested) {
		return -ENOENT;
	}
	if (nbd_waiter_add(&disk->waiters, cb_fn, cb_arg) != 0) {
		return -ENOMEM;
	}
	disk->forget = true;
	switch (disk->state) {
	case NBD_DISK_STARTING:
	case NBD_DISK_REATTACHING:
		disk->stop_requested = true;
		break;
	case NBD_DISK_WAITING:
	case NBD_DISK_RUNNING:
		KEEL_NOTICELOG("nbd%d (bdev %s): stopping (%u connection(s))", disk->index,
			       disk->bdev_name, disk->conns);
		nbd_disk_begin_stop(disk);
		break;
	case NBD_DISK_STOPPING:
		break;
	}
	return 0;
}

/* ------------------------------------------------------------------------------ */
/* Reattach after a restart                                                        */
/* ------------------------------------------------------------------------------ */

/* Main thread: a WAITING device whose bdev now exists gets sockets and RECONFIGURE. */
static void nbd_disk_try_reattach(struct keel_nbd_disk *disk)
{
	int rc;

	if (keel_bdev_get_by_name(disk->bdev_name) == NULL) {
		return;
	}
	rc = nbd_disk_open_bdev(disk);
	if (rc == 0) {
		disk->state = NBD_DISK_REATTACHING;
		rc = nbd_disk_open_socks(disk);
		if (rc == 0) {
			return;
		}
		disk->state = NBD_DISK_STOPPING;
	}
	KEEL_ERRLOG("nbd%d (bdev %s): cannot reattach: %s", disk->index, disk->bdev_name,
		    strerror(-rc));
	disk->state = NBD_DISK_STOPPING;
	disk->forget = true;
	disk->disconnect_sent = rc != -EINVAL; /* a foreign backend is not ours to tear down */
	nbd_disk_begin_stop(disk);
}

static int nbd_disk_wait_poll(void *arg)
{
	struct keel_nbd_disk *disk, *tmp;
	bool waiting = false;

	for (disk = TAILQ_FIRST(&g_disks); disk != NULL; disk = tmp) {
		tmp = TAILQ_NEXT(disk, link);
		if (disk->state == NBD_DISK_WAITING) {
			nbd_disk_try_reattach(disk);
			waiting |= disk->state == NBD_DISK_WAITING;
		}
	}
	if (!waiting) {
		keel_poller_unregister(&g_wait_poller);
	}
	return KEEL_POLLER_IDLE;
}

static void nbd_disk_link_dead(uint32_t index, void *ctx)
{
	struct keel_nbd_disk *disk = index <= INT32_MAX ? nbd_disk_find((int32_t)index) : NULL;

	if (disk == NULL) {
		KEEL_NOTICELOG("nbd%u: the kernel reports a dead connection (LINK_DEAD); not a "
			       "device of this keeld",
			       index);
	} else {
		KEEL_WARNLOG("nbd%u (bdev %s, %s): the kernel reports a dead connection "
			     "(LINK_DEAD)",
			     index, disk->bdev_name, nbd_disk_state_name(disk->state));
	}
}

static int nbd_disk_monitor_poll(void *arg)
{
	int rc = keel_nbd_kernel_monitor_dispatch(g_monitor, nbd_disk_link_dead, NULL);

	/* An event poller now runs at every readiness, so what can repeat is rate limited. */
	if (rc == -ENOBUFS) {
		KEEL_WARNLOG_RATELIMITED(NBD_DISK_MONITOR_LOG_MS, "nbd: LINK_DEAD notifications "
								  "were lost (socket buffer full)");
	} else if (rc < 0 && rc != -EAGAIN) {
		KEEL_WARNLOG_RATELIMITED(NBD_DISK_MONITOR_LOG_MS,
					 "nbd: reading LINK_DEAD "
					 "notifications: %s",
					 strerror(-rc));
	}
	return rc > 0 ? KEEL_POLLER_BUSY : KEEL_POLLER_IDLE;
}

struct nbd_disk_restore_rec {
	int32_t index;
	char bdev_name[KEEL_NBD_EXPORT_NAME_MAX + 1];
	char backend_id[KEEL_NBD_EXPORT_NAME_MAX + 64];
	bool read_only;
	uint32_t io_timeout_s;
	uint32_t dead_conn_timeout_s;
};

struct nbd_disk_restore_ctx {
	keel_nbd_done_cb cb_fn;
	void *cb_arg;
	struct nbd_disk_restore_rec *recs;
	size_t nrecs;
	int parse_rc;
	char err[512];
	struct keel_nbd_kernel_monitor *monitor;
	char monitor_err[KEEL_NBD_KERNEL_ERRLEN];
	int monitor_rc;
};

/* Blocking pool: open the LINK_DEAD monitor. */
static int nbd_disk_restore_job(void *arg)
{
	struct nbd_disk_restore_ctx *ctx = arg;

	ctx->monitor_rc = keel_nbd_kernel_monitor_open(&ctx->monitor, ctx->monitor_err,
						       sizeof(ctx->monitor_err));
	return 0;
}

/* The records of \p doc (keel_nbd_disk_snapshot's format) into ctx->recs; malformed
 * entries are skipped with a warning. \return 0, -EINVAL (not such a document, said in
 * ctx->err) or -ENOMEM. */
/* A recorded timeout is absent (0: default) or an integer the kernel will be given as
 * is: a negative or huge value in a damaged file must not wrap into a uint32. */
static bool nbd_disk_timeout_ok(const json_t *v)
{
	return v == NULL || (json_is_integer(v) && json_integer_value(v) >= 0 &&
			     json_integer_value(v) <= KEEL_NBD_DISK_MAX_TIMEOUT_S);
}

static int nbd_disk_restore_parse(struct nbd_disk_restore_ctx *ctx, const json_t *doc)
{
	json_t *disks = json_object_get(doc, "disks"), *d;
	size_t i;

	if (doc == NULL) {
		return 0;
	}
	if (json_integer_value(json_object_get(doc, "version")) != NBD_DISK_STATE_VERSION ||
	    !json_is_array(disks)) {
		snprintf(ctx->err, sizeof(ctx->err), "not a version %d list of kernel devices",
			 NBD_DISK_STATE_VERSION);
		return -EINVAL;
	}
	ctx->recs = calloc(json_array_size(disks) + 1, sizeof(*ctx->recs));
	if (ctx->recs == NULL) {
		return -ENOMEM;
	}
	json_array_foreach(disks, i, d) {
		struct nbd_disk_restore_rec *r = &ctx->recs[ctx->nrecs];
		json_t *idx = json_object_get(d, "index");
		const char *bdev = json_string_value(json_object_get(d, "bdev_name"));
		const char *backend = json_string_value(json_object_get(d, "backend_id"));

		if (!json_is_integer(idx) || json_integer_value(idx) < 0 ||
		    json_integer_value(idx) > INT32_MAX || bdev == NULL || backend == NULL ||
		    strlen(bdev) >= sizeof(r->bdev_name) ||
		    strlen(backend) >= sizeof(r->backend_id) ||
		    !nbd_disk_timeout_ok(json_object_get(d, "io_timeout_s")) ||
		    !nbd_disk_timeout_ok(json_object_get(d, "dead_conn_timeout_s"))) {
			KEEL_WARNLOG("nbd: kernel devices: disks[%zu] is malformed; skipped", i);
			continue;
		}
		r->index = (int32_t)json_integer_value(idx);
		snprintf(r->bdev_name, sizeof(r->bdev_name), "%s", bdev);
		snprintf(r->backend_id, sizeof(r->backend_id), "%s", backend);
		r->read_only = json_is_true(json_object_get(d, "read_only"));
		r->io_timeout_s = (uint32_t)json_integer_value(json_object_get(d, "io_timeout_s"));
		r->dead_conn_timeout_s = (uint32_t)json_integer_value(
			json_object_get(d, "dead_conn_timeout_s"));
		ctx->nrecs++;
	}
	return 0;
}

int nbd_disk_records_parse(const json_t *doc)
{
	struct nbd_disk_restore_ctx ctx;
	int rc;

	memset(&ctx, 0, sizeof(ctx));
	rc = nbd_disk_restore_parse(&ctx, doc);
	free(ctx.recs);
	return rc != 0 ? rc : (int)ctx.nrecs;
}

static void nbd_disk_restore_done(void *cb_arg, int rc)
{
	struct nbd_disk_restore_ctx *ctx = cb_arg;
	bool waiting = false;

	if (ctx->monitor_rc == 0) {
		g_monitor = ctx->monitor;
		/* Run by its netlink socket alone: LINK_DEAD is rare, a timer would only
		 * wake an idle reactor to find nothing. */
		g_monitor_poller = keel_poller_register(nbd_disk_monitor_poll, NULL, 0,
							"nbd_link_dead");
		if (g_monitor_poller == NULL ||
		    keel_poller_register_fd(g_monitor_poller, keel_nbd_kernel_monitor_fd(g_monitor),
					    EPOLLIN) != 0) {
			KEEL_WARNLOG("nbd: cannot watch LINK_DEAD notifications (out of memory?)");
		}
	} else {
		KEEL_INFOLOG("nbd: LINK_DEAD notifications not watched: %s", ctx->monitor_err);
	}
	if (ctx->parse_rc != 0) {
		KEEL_ERRLOG("nbd: kernel devices of an earlier keeld are not reattached: %s",
			    ctx->err[0] ? ctx->err : strerror(-ctx->parse_rc));
	}
	for (size_t i = 0; i < ctx->nrecs && !g_disk_shutdown; i++) {
		struct nbd_disk_restore_rec *r = &ctx->recs[i];
		struct keel_nbd_disk *disk;

		if (nbd_disk_find(r->index) != NULL) {
			continue;
		}
		disk = nbd_disk_alloc(r->bdev_name, r->index);
		if (disk == NULL) {
			KEEL_ERRLOG("nbd%d: out of memory; not reattached", r->index);
			continue;
		}
		memcpy(disk->backend_id, r->backend_id, sizeof(disk->backend_id));
		disk->read_only = r->read_only;
		disk->io_timeout_s = r->io_timeout_s;
		disk->dead_conn_timeout_s = r->dead_conn_timeout_s;
		disk->state = NBD_DISK_WAITING;
		TAILQ_INSERT_TAIL(&g_disks, disk, link);
		KEEL_NOTICELOG("nbd%d: served bdev %s before the restart; reattaching%s", r->index,
			       r->bdev_name,
			       keel_bdev_get_by_name(r->bdev_name) ? "" : " once the bdev exists");
		nbd_disk_try_reattach(disk);
		waiting |= disk->state == NBD_DISK_WAITING;
	}
	if (waiting && g_wait_poller == NULL) {
		g_wait_poller = keel_poller_register(nbd_disk_wait_poll, NULL,
						     NBD_DISK_WAIT_PERIOD_US, "nbd_disk_wait");
	}
	free(ctx->recs);
	ctx->cb_fn(ctx->cb_arg, 0);
	free(ctx);
}

static void nbd_disk_restore_now(void *arg)
{
	struct nbd_disk_restore_ctx *ctx = arg;

	nbd_disk_restore_done(ctx, 0);
}

void keel_nbd_disk_restore(const json_t *doc, keel_nbd_done_cb cb_fn, void *cb_arg)
{
	struct nbd_disk_restore_ctx *ctx = calloc(1, sizeof(*ctx));
	int rc = nbd_disk_main_init();

	if (ctx == NULL) {
		/* The one exception to "never inside the call": nothing is left to queue with. */
		KEEL_ERRLOG("nbd: out of memory; kernel devices of an earlier keeld are not "
			    "reattached");
		cb_fn(cb_arg, -ENOMEM);
		return;
	}
	ctx->cb_fn = cb_fn;
	ctx->cb_arg = cb_arg;
	ctx->monitor_rc = -ENODEV;
	snprintf(ctx->monitor_err, sizeof(ctx->monitor_err), "keel could not start the job");
	ctx->parse_rc = nbd_disk_restore_parse(ctx, doc);
	if (rc != 0 ||
	    keel_spawn_blocking(nbd_disk_restore_job, ctx, nbd_disk_restore_done, ctx) != 0) {
		if (rc != 0) {
			KEEL_ERRLOG("nbd: cannot restore kernel devices: %s", strerror(-rc));
		}
		if (keel_thread_send_msg_reliable(keel_thread_get_current(), nbd_disk_restore_now,
						  ctx, NULL) != 0) {
			nbd_disk_restore_now(ctx);
		}
	}
}

/* ------------------------------------------------------------------------------ */
/* Records for a restarted keeld                                                   */
/* ------------------------------------------------------------------------------ */

void keel_nbd_disk_set_listener(keel_nbd_disk_listener_fn fn, void *ctx)
{
	g_listener = fn;
	g_listener_ctx = ctx;
}

static void nbd_disk_changed(void)
{
	if (g_listener != NULL) {
		g_listener(g_listener_ctx);
	}
}

/* What a restarted keeld needs: running devices and those still waiting for a bdev. */
json_t *keel_nbd_disk_snapshot(void)
{
	json_t *doc = json_pack("{s:i, s:[]}", "version", NBD_DISK_STATE_VERSION, "disks");
	json_t *arr = json_object_get(doc, "disks");
	struct keel_nbd_disk *disk;

	if (doc == NULL) {
		return NULL;
	}
	TAILQ_FOREACH(disk, &g_disks, link) {
		char dev[32];

		if (disk->index < 0 || disk->forget ||
		    (disk->state != NBD_DISK_RUNNING && disk->state != NBD_DISK_WAITING &&
		     disk->state != NBD_DISK_REATTACHING)) {
			continue;
		}
		snprintf(dev, sizeof(dev), "/dev/nbd%d", disk->index);
		if (json_array_append_new(
			    arr, json_pack("{s:s, s:i, s:s, s:s, s:b, s:I, s:I}", "nbd_device", dev,
					   "index", (int)disk->index, "bdev_name", disk->bdev_name,
					   "backend_id", disk->backend_id, "read_only",
					   disk->read_only, "io_timeout_s",
					   (json_int_t)disk->io_timeout_s, "dead_conn_timeout_s",
					   (json_int_t)disk->dead_conn_timeout_s)) != 0) {
			json_decref(doc);
			return NULL;
		}
	}
	return doc;
}

/* ------------------------------------------------------------------------------ */
/* Shutdown and listing                                                            */
/* ------------------------------------------------------------------------------ */

static void nbd_disk_check_stop_all(void)
{
	keel_nbd_done_cb cb_fn = g_stop_all_cb;

	if (cb_fn == NULL || !TAILQ_EMPTY(&g_disks)) {
		return;
	}
	g_stop_all_cb = NULL;
	keel_poller_unregister(&g_wait_poller);
	keel_poller_unregister(&g_monitor_poller);
	keel_nbd_kernel_monitor_close(g_monitor);
	g_monitor = NULL;
	cb_fn(g_stop_all_arg, 0);
}

static void nbd_disk_stop_all_kick(void *arg)
{
	nbd_disk_check_stop_all();
}

void nbd_disk_stop_all(void (*cb_fn)(void *cb_arg, int status), void *cb_arg)
{
	struct keel_nbd_disk *disk, *tmp;

	g_disk_shutdown = true;
	g_stop_all_cb = cb_fn;
	g_stop_all_arg = cb_arg;
	for (disk = TAILQ_FIRST(&g_disks); disk != NULL; disk = tmp) {
		tmp = TAILQ_NEXT(disk, link);
		switch (disk->state) {
		case NBD_DISK_STARTING:
		case NBD_DISK_REATTACHING:
			disk->stop_requested = true;
			disk->forget = true;
			break;
		case NBD_DISK_WAITING:
			/* Never attached by this keeld: leave it for the next one to find. */
			TAILQ_REMOVE(&g_disks, disk, link);
			nbd_disk_free(disk);
			break;
		case NBD_DISK_RUNNING:
			KEEL_NOTICELOG("nbd%d (bdev %s): disconnecting for shutdown", disk->index,
				       disk->bdev_name);
			disk->forget = true;
			nbd_disk_begin_stop(disk);
			break;
		case NBD_DISK_STOPPING:
			break;
		}
	}
	/* Later, never inside the call (and after any save the loop started). */
	if (keel_thread_get_current() == NULL ||
	    keel_thread_send_msg_reliable(keel_thread_get_current(), nbd_disk_stop_all_kick, NULL,
					  NULL) != 0) {
		KEEL_ERRLOG("nbd: cannot queue the end of the kernel devices' shutdown");
	}
}

struct keel_nbd_disk *keel_nbd_disk_first(void)
{
	return TAILQ_FIRST(&g_disks);
}

struct keel_nbd_disk *keel_nbd_disk_next(struct keel_nbd_disk *prev)
{
	return prev != NULL ? TAILQ_NEXT(prev, link) : NULL;
}

int32_t keel_nbd_disk_get_index(const struct keel_nbd_disk *disk)
{
	return disk->index;
}

const char *keel_nbd_disk_get_bdev_name(const struct keel_nbd_disk *disk)
{
	return disk->bdev_name;
}

const char *keel_nbd_disk_get_state(const struct keel_nbd_disk *disk)
{
	return nbd_disk_state_name(disk->state);
}

uint32_t keel_nbd_disk_get_connection_count(const struct keel_nbd_disk *disk)
{
	return disk->conns;
}

bool keel_nbd_disk_is_read_only(const struct keel_nbd_disk *disk)
{
	return disk->read_only;
}

const char *keel_nbd_disk_get_backend_id(const struct keel_nbd_disk *disk)
{
	return disk->backend_id;
}
