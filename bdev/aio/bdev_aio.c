/*
 * aio bdev: a regular file or block device driven through Linux native AIO (libaio).
 *
 * One io_context per (file, thread) channel, so the data path takes no lock. Requests
 * queue their iocb during submit_request and the channel's poller hands the whole
 * batch to the kernel with one io_submit per poll. Completions are read straight
 * from the completion ring the kernel maps into our address space (no syscall);
 * io_getevents with a zero timeout is the fallback when the ring header is not the
 * layout we know. Every iocb also signals an eventfd that is tied to the poller, so
 * a reactor in interrupt mode sleeps until the kernel completes something.
 *
 * Nothing here blocks a reactor: open/stat/ioctl at create, fdatasync when the kernel
 * lacks the aio fdsync command, fallocate/BLKDISCARD/BLKZEROOUT, io_destroy and close
 * all run on the blocking-work pool.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libaio.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <jansson.h>

#include "keel/bdev_module.h"
#include "keel/log.h"
#include "keel/reactor.h"

#include "bdev_aio_internal.h"

/* <linux/fs.h> redefines RWF_* that <sys/uio.h> already has, so take only the ioctls. */
#ifndef BLKSSZGET
#define BLKSSZGET _IO(0x12, 104)
#endif
#ifndef BLKGETSIZE64
#define BLKGETSIZE64 _IOR(0x12, 114, size_t)
#endif
#ifndef BLKDISCARD
#define BLKDISCARD _IO(0x12, 119)
#endif
#ifndef BLKZEROOUT
#define BLKZEROOUT _IO(0x12, 127)
#endif
#ifndef RWF_DSYNC
#define RWF_DSYNC 0x00000002
#endif

#define AIO_RING_MAGIC 0xa10a10a1u
#define AIO_IOCB_FLAG_RESFD (1u << 0) /* linux/aio_abi.h IOCB_FLAG_RESFD, as io_set_eventfd sets it */
#define AIO_MAX_BLOCK_SIZE 65536u
#define AIO_MAX_QUEUE_DEPTH 4096u
/* Events taken per poll; bounds the stack array and the time one poll may take. */
#define AIO_REAP_BATCH 128
#define AIO_SUBMIT_BATCH 256

#define AIO_CONTAINER_OF(ptr, type, member) \
	((type *)((char *)(ptr) - offsetof(type, member)))

/*
 * The header of the completion ring the kernel maps at the address io_setup returns
 * (fs/aio.c, struct aio_ring). Stable since 2.6; the magic and incompat_features tell
 * us whether this is still the layout.
 */
struct aio_user_ring {
	uint32_t id;
	uint32_t nr;
	uint32_t head;
	uint32_t tail;
	uint32_t magic;
	uint32_t compat_features;
	uint32_t incompat_features;
	uint32_t header_length;
	struct io_event events[];
};

enum aio_pool_op {
	AIO_POOL_FDATASYNC,
	AIO_POOL_UNMAP,
	AIO_POOL_WRITE_ZEROES,
};

struct aio_disk {
	struct keel_bdev bdev;
	char *filename;
	int fd;
	bool direct;
	bool is_blockdev;
	bool punch_hole_ok;       /* probed at create */
	/* Flipped to false (once, from any thread) when the kernel refuses the feature. */
	bool fdsync_native;
	bool fua_native;
	bool zero_range_ok;
	uint32_t queue_depth;
	char io_device_name[KEEL_BDEV_NAME_MAX + 8];

	/* create */
	keel_bdev_create_cb create_cb;
	void *create_cb_arg;
	uint32_t requested_block_size;
	int open_errno_direct;   /* why O_DIRECT was refused, for the warning */
	int create_status;

	struct bdev_aio_counters counters; /* relaxed atomics */
};

struct aio_channel {
	struct aio_disk *disk;
	io_context_t ctx;
	struct aio_user_ring *ring; /* NULL: use io_getevents */
	int efd;
	uint32_t depth;
	uint32_t inflight;          /* iocbs the kernel holds */
	uint32_t inflight_silent;   /* of which submitted without the eventfd */
	uint32_t reactor_idx;       /* KEEL_REACTOR_ANY: unplaced thread (harness) */
	bool kernel_full;           /* last io_submit hit the kernel's limit */
	uint64_t reaped;            /* completions taken, for the eventfd drain rule */
	uint64_t drained;           /* eventfd counts read */
	struct keel_poller *poller;
	TAILQ_HEAD(, keel_bdev_io) pending; /* iocbs prepared, not yet submitted */
};

enum aio_io_stage {
	AIO_STAGE_RW,               /* read, write: complete on the event */
	AIO_STAGE_WRITE_THEN_SYNC,  /* FUA without RWF_DSYNC: write, then fdsync */
	AIO_STAGE_FDSYNC,
};

struct aio_io_ctx {
	struct iocb iocb;
	enum aio_io_stage stage;
	bool silent;                /* submitted without IOCB_FLAG_RESFD */
	/* blocking-pool request: copied values so the pool thread reads nothing shared */
	enum aio_pool_op pool_op;
	int fd;
	bool is_blockdev;
	uint64_t offset;
	uint64_t len;
	struct aio_disk *disk;
};

static uint32_t g_queue_depth = BDEV_AIO_DEFAULT_QUEUE_DEPTH;
static bool g_refuse_direct; /* test knobs */
static bool g_overcommit;

static const struct keel_bdev_fn_table g_aio_fn_table;

static inline void aio_counter_add(uint64_t *counter, uint64_t n)
{
	if (n != 0)
		__atomic_fetch_add(counter, n, __ATOMIC_RELAXED);
}

static inline bool aio_flag_get(const bool *flag)
{
	return __atomic_load_n(flag, __ATOMIC_RELAXED);
}

static inline void aio_flag_clear(bool *flag)
{
	__atomic_store_n(flag, false, __ATOMIC_RELAXED);
}

static struct aio_disk *aio_disk_from_bdev(struct keel_bdev *bdev)
{
	if (bdev == NULL || bdev->fn_table != &g_aio_fn_table)
		return NULL;
	return AIO_CONTAINER_OF(bdev, struct aio_disk, bdev);
}

static void aio_disk_free(struct aio_disk *disk)
{
	free(disk->bdev.name);
	free(disk->filename);
	free(disk);
}

/* ------------------------------------------------------------------------------ */
/* Blocking-pool helpers                                                           */
/* ------------------------------------------------------------------------------ */

struct aio_close_req {
	int fd;
	int efd;
	io_context_t ctx;
	bool has_ctx;
};

/*
 * io_destroy waits for an RCU grace period and close may flush, so both run on the
 * pool. The job frees its own request: the thread that queued it may be gone by the
 * time it finishes (channel destroyed during thread exit).
 */
static int aio_close_job(void *arg)
{
	struct aio_close_req *req = arg;

	if (req->has_ctx)
		io_destroy(req->ctx);
	if (req->efd >= 0)
		close(req->efd);
	if (req->fd >= 0)
		close(req->fd);
	free(req);
	return 0;
}

static void aio_close_job_done(void *cb_arg, int rc)
{
}

/*
 * Close in the background. Only without a pool (not on a keel thread, pool stopped)
 * or without memory does it happen right here: better a stall than a leaked fd.
 */
static void aio_close_async(int fd, int efd, io_context_t ctx, bool has_ctx)
{
	struct aio_close_req *req = calloc(1, sizeof(*req));

	if (req == NULL) {
		if (has_ctx)
			io_destroy(ctx);
		if (efd >= 0)
			close(efd);
		if (fd >= 0)
			close(fd);
		return;
	}
	req->fd = fd;
	req->efd = efd;
	req->ctx = ctx;
	req->has_ctx = has_ctx;
	if (keel_thread_get_current() == NULL ||
	    keel_spawn_blocking(aio_close_job, req, aio_close_job_done, NULL) != 0)
		aio_close_job(req);
}

/* ------------------------------------------------------------------------------ */
/* Data path                                                                       */
/* ------------------------------------------------------------------------------ */

static void aio_pool_submit(struct keel_bdev_io *io, enum aio_pool_op op);

static void aio_queue_iocb(struct aio_channel *ch, struct keel_bdev_io *io)
{
	struct aio_io_ctx *ctx = keel_bdev_io_get_ctx(io);

	/* The eventfd is chosen at io_submit time (aio_channel_submit). */
	ctx->iocb.data = io;
	TAILQ_INSERT_TAIL(&ch->pending, io, module_link);
}

static void aio_prep_fdsync(struct aio_channel *ch, struct keel_bdev_io *io)
{
	struct aio_io_ctx *ctx = keel_bdev_io_get_ctx(io);

	ctx->stage = AIO_STAGE_FDSYNC;
	if (!aio_flag_get(&ch->disk->fdsync_native)) {
		aio_pool_submit(io, AIO_POOL_FDATASYNC);
		return;
	}
	io_prep_fdsync(&ctx->iocb, ch->disk->fd);
	aio_queue_iocb(ch, io);
}

static void aio_prep_rw(struct aio_channel *ch, struct keel_bdev_io *io)
{
	struct aio_io_ctx *ctx = keel_bdev_io_get_ctx(io);
	struct aio_disk *disk = ch->disk;
	long long offset = (long long)keel_bdev_io_offset_bytes(io);
	bool write = io->type == KEEL_BDEV_IO_WRITE;

	if (io->iovcnt == 1) {
		/* PREAD/PWRITE skip the kernel's iovec import. */
		if (write)
			io_prep_pwrite(&ctx->iocb, disk->fd, io->iovs[0].iov_base,
				       io->iovs[0].iov_len, offset);
		else
			io_prep_pread(&ctx->iocb, disk->fd, io->iovs[0].iov_base,
				      io->iovs[0].iov_len, offset);
	} else {
		if (write)
			io_prep_pwritev(&ctx->iocb, disk->fd, io->iovs, io->iovcnt, offset);
		else
			io_prep_preadv(&ctx->iocb, disk->fd, io->iovs, io->iovcnt, offset);
	}
	ctx->stage = AIO_STAGE_RW;
	if (write && (io->flags & KEEL_BDEV_IO_FLAG_FUA)) {
		if (aio_flag_get(&disk->fua_native))
			ctx->iocb.aio_rw_flags = RWF_DSYNC;
		else
			ctx->stage = AIO_STAGE_WRITE_THEN_SYNC;
	}
	aio_queue_iocb(ch, io);
}

/*
 * The kernel refused the aio fdsync command (at io_submit or in the event): flush
 * with fdatasync on the blocking pool, for this request and from now on.
 */
static void aio_fdsync_refused(struct aio_disk *disk, struct keel_bdev_io *io)
{
	if (aio_flag_get(&disk->fdsync_native))
		KEEL_WARNLOG("aio bdev %s: kernel refused aio fdsync on %s, using fdatasync on "
			     "the blocking pool from now on", disk->bdev.name, disk->filename);
	aio_flag_clear(&disk->fdsync_native);
	aio_pool_submit(io, AIO_POOL_FDATASYNC);
}

/* Zero what a read past the end of the file did not fill. */
static void aio_zero_tail(struct keel_bdev_io *io, uint64_t done)
{
	int i;

	for (i = 0; i < io->iovcnt; i++) {
		uint64_t len = io->iovs[i].iov_len;

		if (done >= len) {
			done -= len;
			continue;
		}
		memset((char *)io->iovs[i].iov_base + done, 0, len - done);
		done = 0;
	}
}

static void aio_event_done(struct aio_channel *ch, struct keel_bdev_io *io, long res)
{
	struct aio_io_ctx *ctx = keel_bdev_io_get_ctx(io);
	struct aio_disk *disk = ch->disk;
	uint64_t want;

	if (ctx->stage == AIO_STAGE_FDSYNC) {
		if (res == -EINVAL) {
			aio_fdsync_refused(disk, io);
			return;
		}
		keel_bdev_io_complete(io, res < 0 ? (int)res : 0);
		return;
	}

	if (res < 0) {
		/* -EAGAIN here is transient (no RWF_NOWAIT is used): let the core retry. */
		keel_bdev_io_complete(io, res == -EAGAIN ? -ENOMEM : (int)res);
		return;
	}
	want = keel_bdev_io_num_bytes(io);
	if ((uint64_t)res < want) {
		if (io->type == KEEL_BDEV_IO_READ && !disk->is_blockdev) {
			/* The file shrank under us: past EOF reads as zeroes, like a hole. */
			aio_zero_tail(io, (uint64_t)res);
		} else {
			KEEL_ERRLOG("aio bdev %s: short %s at %" PRIu64 ": %ld of %" PRIu64 " bytes",
				    disk->bdev.name, keel_bdev_io_type_name(io->type),
				    keel_bdev_io_offset_bytes(io), res, want);
			keel_bdev_io_complete(io, -EIO);
			return;
		}
	}
	if (ctx->stage == AIO_STAGE_WRITE_THEN_SYNC) {
		aio_prep_fdsync(ch, io);
		return;
	}
	keel_bdev_io_complete(io, 0);
}

/* The kernel refused the first iocb of a batch outright (io_submit < 0). */
static void aio_submit_refused(struct aio_channel *ch, struct keel_bdev_io *io, int rc)
{
	struct aio_io_ctx *ctx = keel_bdev_io_get_ctx(io);
	struct aio_disk *disk = ch->disk;

	if (ctx->stage == AIO_STAGE_FDSYNC && rc == -EINVAL) {
		aio_fdsync_refused(disk, io);
		return;
	}
	if (ctx->iocb.aio_rw_flags != 0 && (rc == -EINVAL || rc == -EOPNOTSUPP)) {
		if (aio_flag_get(&disk->fua_native))
			KEEL_WARNLOG("aio bdev %s: kernel refused RWF_DSYNC on %s, FUA writes become "
				     "write + fdsync", disk->bdev.name, disk->filename);
		aio_flag_clear(&disk->fua_native);
		ctx->iocb.aio_rw_flags = 0;
		ctx->stage = AIO_STAGE_WRITE_THEN_SYNC;
		TAILQ_INSERT_HEAD(&ch->pending, io, module_link);
		return;
	}
	keel_bdev_io_complete(io, rc);
}

/* One io_submit for everything queued (up to the free depth). \return iocbs taken. */
static int aio_channel_submit(struct aio_channel *ch)
{
	struct iocb *iocbs[AIO_SUBMIT_BATCH];
	struct keel_bdev_io *io;
	uint32_t room = ch->depth - ch->inflight;
	int n = 0, rc, i;
	bool signal;

	/* After EAGAIN, wait for a completion to free a slot instead of asking again. */
	if (ch->kernel_full && ch->inflight > 0)
		return 0;
	ch->kernel_full = false;
	TAILQ_FOREACH(io, &ch->pending, module_link) {
		if ((uint32_t)n == room || n == AIO_SUBMIT_BATCH)
			break;
		iocbs[n++] = &((struct aio_io_ctx *)keel_bdev_io_get_ctx(io))->iocb;
	}
	if (n == 0)
		return 0;

	/*
	 * Every iocb signals the eventfd so a sleeping reactor wakes, except in pure poll
	 * mode: nothing sleeps there and the signal costs a spinlock per completion.
	 * Unsignalled iocbs keep the poller busy until they complete, so a switch to
	 * interrupt mode never sleeps on them.
	 */
	signal = ch->reactor_idx == KEEL_REACTOR_ANY ||
		 keel_reactor_get_mode(ch->reactor_idx) != KEEL_REACTOR_MODE_POLL;
	for (i = 0; i < n; i++) {
		if (signal)
			io_set_eventfd(iocbs[i], ch->efd);
		else
			iocbs[i]->u.c.flags &= ~AIO_IOCB_FLAG_RESFD;
	}

	rc = io_submit(ch->ctx, n, iocbs);
	aio_counter_add(&ch->disk->counters.io_submit_calls, 1);
	if (rc == -EAGAIN || rc == -EINTR || rc == 0) {
		/* Kernel out of resources: everything stays queued for the next poll. */
		aio_counter_add(&ch->disk->counters.submit_eagain, 1);
		ch->kernel_full = true;
		return 0;
	}
	if (rc < 0) {
		io = TAILQ_FIRST(&ch->pending);
		TAILQ_REMOVE(&ch->pending, io, module_link);
		aio_submit_refused(ch, io, rc);
		return 1;
	}
	if (rc < n) {
		aio_counter_add(&ch->disk->counters.submit_eagain, 1);
		ch->kernel_full = true;
	}
	for (i = 0; i < rc; i++) {
		io = TAILQ_FIRST(&ch->pending);
		TAILQ_REMOVE(&ch->pending, io, module_link);
		((struct aio_io_ctx *)keel_bdev_io_get_ctx(io))->silent = !signal;
	}
	ch->inflight += (uint32_t)rc;
	if (!signal)
		ch->inflight_silent += (uint32_t)rc;
	aio_counter_add(&ch->disk->counters.iocbs_submitted, (uint64_t)rc);
	return rc;
}

/*
 * Take completed events from the user-mapped ring: the kernel publishes tail after
 * writing the event (so acquire it), and reads head when it checks for room (so
 * release our new head only after the events were copied out).
 */
static int aio_ring_reap(struct aio_user_ring *ring, struct io_event *events, int max)
{
	uint32_t head = __atomic_load_n(&ring->head, __ATOMIC_RELAXED);
	uint32_t tail = __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE);
	uint32_t nr = ring->nr;
	int n = 0;

	while (head != tail && n < max) {
		events[n++] = ring->events[head];
		head = head + 1 == nr ? 0 : head + 1;
	}
	if (n > 0)
		__atomic_store_n(&ring->head, head, __ATOMIC_RELEASE);
	return n;
}

static int aio_channel_reap(struct aio_channel *ch)
{
	struct io_event events[AIO_REAP_BATCH];
	int n, i;

	if (ch->inflight == 0)
		return 0;
	if (ch->ring != NULL) {
		n = aio_ring_reap(ch->ring, events, AIO_REAP_BATCH);
		aio_counter_add(&ch->disk->counters.ring_reaps, (uint64_t)n);
	} else {
		struct timespec zero = { 0, 0 };

		n = io_getevents(ch->ctx, 0, AIO_REAP_BATCH, events, &zero);
		if (n < 0) {
			if (n != -EINTR)
				KEEL_ERRLOG("aio bdev %s: io_getevents: %s", ch->disk->bdev.name,
					    strerror(-n));
			return 0;
		}
		aio_counter_add(&ch->disk->counters.getevents_reaps, (uint64_t)n);
	}
	assert((uint32_t)n <= ch->inflight);
	ch->inflight -= (uint32_t)n;
	if (n > 0)
		ch->kernel_full = false;
	ch->reaped += (uint64_t)n;
	for (i = 0; i < n; i++) {
		struct iocb *iocb = events[i].obj;
		struct keel_bdev_io *io = iocb->data;

		if (((struct aio_io_ctx *)keel_bdev_io_get_ctx(io))->silent)
			ch->inflight_silent--;
		aio_event_done(ch, io, (long)events[i].res);
	}
	return n;
}

/*
 * Drain the eventfd only when it holds counts for completions we already took, and
 * only on an iteration that found nothing: a busy channel makes no read() syscalls,
 * and the reap that follows the drain closes the race with a completion that
 * arrived in between, so a sleeping reactor never misses one.
 */
static int aio_channel_drain_eventfd(struct aio_channel *ch)
{
	uint64_t count;

	if ((int64_t)(ch->reaped - ch->drained) <= 0)
		return 0;
	if (read(ch->efd, &count, sizeof(count)) == (ssize_t)sizeof(count))
		ch->drained += count;
	else
		ch->drained = ch->reaped; /* EAGAIN: already zero */
	return aio_channel_reap(ch);
}

static int aio_channel_poll(void *arg)
{
	struct aio_channel *ch = arg;
	int submitted, reaped;

	submitted = aio_channel_submit(ch);
	reaped = aio_channel_reap(ch);
	if (reaped == 0)
		reaped = aio_channel_drain_eventfd(ch);
	/* Work still queued, or completions no eventfd will announce, keep it awake. */
	return (submitted + reaped > 0 || !TAILQ_EMPTY(&ch->pending) || ch->inflight_silent > 0)
		       ? KEEL_POLLER_BUSY
		       : KEEL_POLLER_IDLE;
}

static int aio_pool_job(void *arg)
{
	struct aio_io_ctx *ctx = arg;
	int rc = 0;

	switch (ctx->pool_op) {
	case AIO_POOL_FDATASYNC:
		rc = fdatasync(ctx->fd);
		break;
	case AIO_POOL_UNMAP:
		if (ctx->is_blockdev) {
			uint64_t range[2] = { ctx->offset, ctx->len };

			rc = ioctl(ctx->fd, BLKDISCARD, range);
		} else {
			rc = fallocate(ctx->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				       (off_t)ctx->offset, (off_t)ctx->len);
		}
		break;
	case AIO_POOL_WRITE_ZEROES:
		if (ctx->is_blockdev) {
			uint64_t range[2] = { ctx->offset, ctx->len };

			rc = ioctl(ctx->fd, BLKZEROOUT, range);
			break;
		}
		if (aio_flag_get(&ctx->disk->zero_range_ok)) {
			rc = fallocate(ctx->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
				       (off_t)ctx->offset, (off_t)ctx->len);
			if (rc == 0 || (errno != EOPNOTSUPP && errno != EINVAL))
				break;
			/* tmpfs and others: a punched hole reads back as zeroes too. */
			aio_flag_clear(&ctx->disk->zero_range_ok);
		}
		rc = fallocate(ctx->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			       (off_t)ctx->offset, (off_t)ctx->len);
		break;
	}
	if (rc < 0)
		return errno == EOPNOTSUPP ? -ENOTSUP : -errno;
	return 0;
}

static void aio_pool_job_done(void *cb_arg, int rc)
{
	struct keel_bdev_io *io = cb_arg;

	keel_bdev_io_complete(io, rc);
}

static void aio_pool_submit(struct keel_bdev_io *io, enum aio_pool_op op)
{
	struct aio_io_ctx *ctx = keel_bdev_io_get_ctx(io);
	struct aio_disk *disk = AIO_CONTAINER_OF(io->bdev, struct aio_disk, bdev);
	int rc;

	ctx->pool_op = op;
	ctx->fd = disk->fd;
	ctx->is_blockdev = disk->is_blockdev;
	ctx->offset = keel_bdev_io_offset_bytes(io);
	ctx->len = keel_bdev_io_num_bytes(io);
	ctx->disk = disk;
	aio_counter_add(&disk->counters.pool_ops, 1);
	rc = keel_spawn_blocking(aio_pool_job, ctx, aio_pool_job_done, io);
	if (rc != 0)
		/* -ENOMEM makes the core retry; anything else is final. */
		keel_bdev_io_complete(io, rc == -ENOMEM ? -ENOMEM : -EIO);
}

static void aio_submit_request(struct keel_io_channel *_ch, struct keel_bdev_io *io)
{
	struct aio_channel *ch = keel_io_channel_get_ctx(_ch);

	switch (io->type) {
	case KEEL_BDEV_IO_READ:
	case KEEL_BDEV_IO_WRITE:
		aio_prep_rw(ch, io);
		break;
	case KEEL_BDEV_IO_FLUSH:
		aio_prep_fdsync(ch, io);
		break;
	case KEEL_BDEV_IO_UNMAP:
		aio_pool_submit(io, AIO_POOL_UNMAP);
		break;
	case KEEL_BDEV_IO_WRITE_ZEROES:
		aio_pool_submit(io, AIO_POOL_WRITE_ZEROES);
		break;
	case KEEL_BDEV_IO_RESET:
		/* The core already waited for everything submitted before the reset. */
		keel_bdev_io_complete(io, 0);
		break;
	default:
		keel_bdev_io_complete(io, -ENOTSUP);
		break;
	}
}

static bool aio_io_type_supported(void *ctxt, enum keel_bdev_io_type type)
{
	struct aio_disk *disk = ctxt;

	switch (type) {
	case KEEL_BDEV_IO_READ:
	case KEEL_BDEV_IO_WRITE:
	case KEEL_BDEV_IO_FLUSH:
	case KEEL_BDEV_IO_RESET:
		return true;
	case KEEL_BDEV_IO_UNMAP:
	case KEEL_BDEV_IO_WRITE_ZEROES:
		/* Without hole punching the core emulates write_zeroes with writes. */
		return disk->is_blockdev || disk->punch_hole_ok;
	default:
		return false;
	}
}

/* ------------------------------------------------------------------------------ */
/* Channels                                                                        */
/* ------------------------------------------------------------------------------ */

static int aio_channel_create(void *io_device, void *ctx_buf)
{
	struct aio_disk *disk = io_device;
	struct aio_channel *ch = ctx_buf;
	struct aio_user_ring *ring;
	int rc;

	memset(ch, 0, sizeof(*ch));
	ch->disk = disk;
	ch->depth = disk->queue_depth;
	ch->reactor_idx = keel_reactor_current();
	TAILQ_INIT(&ch->pending);

	rc = io_setup((int)ch->depth, &ch->ctx);
	if (rc < 0) {
		if (rc == -EAGAIN)
			KEEL_ERRLOG("aio bdev %s: io_setup(%u) failed: the system-wide AIO limit is "
				    "reached; raise it with sysctl fs.aio-max-nr", disk->bdev.name,
				    ch->depth);
		else
			KEEL_ERRLOG("aio bdev %s: io_setup(%u) failed: %s", disk->bdev.name,
				    ch->depth, strerror(-rc));
		return rc;
	}
	if (__atomic_load_n(&g_overcommit, __ATOMIC_RELAXED))
		ch->depth = AIO_MAX_QUEUE_DEPTH;
	ring = (struct aio_user_ring *)ch->ctx;
	if (ring->magic == AIO_RING_MAGIC && ring->incompat_features == 0)
		ch->ring = ring;
	else
		KEEL_NOTICELOG("aio bdev %s: unknown aio ring layout (magic %#x), reaping with "
			       "io_getevents", disk->bdev.name, ring->magic);

	ch->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (ch->efd < 0) {
		rc = -errno;
		KEEL_ERRLOG("aio bdev %s: eventfd: %s", disk->bdev.name, strerror(-rc));
		goto out_destroy_ctx;
	}
	ch->poller = keel_poller_register(aio_channel_poll, ch, 0, disk->io_device_name);
	if (ch->poller == NULL) {
		rc = -ENOMEM;
		goto out_close_efd;
	}
	rc = keel_poller_register_fd(ch->poller, ch->efd, EPOLLIN);
	if (rc != 0) {
		KEEL_ERRLOG("aio bdev %s: cannot watch the completion eventfd: %s",
			    disk->bdev.name, strerror(-rc));
		goto out_unregister_poller;
	}
	return 0;

out_unregister_poller:
	keel_poller_unregister(&ch->poller);
out_close_efd:
	aio_close_async(-1, ch->efd, ch->ctx, true);
	return rc;
out_destroy_ctx:
	aio_close_async(-1, -1, ch->ctx, true);
	return rc;
}

static void aio_channel_destroy(void *io_device, void *ctx_buf)
{
	struct aio_channel *ch = ctx_buf;

	/* The core drains a bdev channel before it puts ours. */
	if (ch->inflight != 0 || !TAILQ_EMPTY(&ch->pending))
		KEEL_ERRLOG("aio bdev %s: channel destroyed with %u requests in flight",
			    ch->disk->bdev.name, ch->inflight);
	keel_poller_unregister(&ch->poller);
	aio_close_async(-1, ch->efd, ch->ctx, true);
}

static struct keel_io_channel *aio_get_io_channel(void *ctxt)
{
	return keel_get_io_channel(ctxt);
}

/* ------------------------------------------------------------------------------ */
/* Destruct and delete                                                             */
/* ------------------------------------------------------------------------------ */

static int aio_disk_close_job(void *arg)
{
	struct aio_disk *disk = arg;

	return close(disk->fd) == 0 ? 0 : -errno;
}

static void aio_disk_closed(void *cb_arg, int rc)
{
	struct aio_disk *disk = cb_arg;

	if (rc != 0)
		KEEL_WARNLOG("aio bdev %s: close %s: %s", disk->bdev.name, disk->filename,
			     strerror(-rc));
	disk->fd = -1;
	keel_bdev_destruct_done(&disk->bdev);
	aio_disk_free(disk);
}

/*
 * Every channel is gone. Close the file before reporting the delete done, so the
 * caller may unlink, unmount or reopen it as soon as its callback runs.
 */
static void aio_io_device_unregistered(void *io_device)
{
	struct aio_disk *disk = io_device;

	if (keel_spawn_blocking(aio_disk_close_job, disk, aio_disk_closed, disk) != 0)
		aio_disk_closed(disk, aio_disk_close_job(disk));
}

static int aio_destruct(void *ctxt)
{
	struct aio_disk *disk = ctxt;

	keel_io_device_unregister(disk, aio_io_device_unregistered);
	return 1;
}

static void aio_dump_info_json(void *ctxt, struct json_t *obj)
{
	struct aio_disk *disk = ctxt;

	json_object_set_new(obj, "filename", json_string(disk->filename));
	json_object_set_new(obj, "block_size", json_integer(disk->bdev.block_size));
	json_object_set_new(obj, "direct", json_boolean(disk->direct));
}

static const struct keel_bdev_fn_table g_aio_fn_table = {
	.destruct = aio_destruct,
	.submit_request = aio_submit_request,
	.io_type_supported = aio_io_type_supported,
	.get_io_channel = aio_get_io_channel,
	.dump_info_json = aio_dump_info_json,
};

int keel_bdev_aio_delete(const char *name, keel_bdev_done_cb cb_fn, void *cb_arg)
{
	struct keel_bdev *bdev;

	if (name == NULL)
		return -ENODEV;
	bdev = keel_bdev_get_by_name(name);
	if (aio_disk_from_bdev(bdev) == NULL)
		return -ENODEV;
	keel_bdev_unregister(bdev, cb_fn, cb_arg);
	return 0;
}

/* ------------------------------------------------------------------------------ */
/* Create                                                                          */
/* ------------------------------------------------------------------------------ */

static bool aio_is_pow2(uint64_t v)
{
	return v != 0 && (v & (v - 1)) == 0;
}

static int aio_open_file(struct aio_disk *disk)
{
	int fd;

	if (__atomic_load_n(&g_refuse_direct, __ATOMIC_RELAXED)) {
		fd = -1;
		errno = EINVAL;
	} else {
		fd = open(disk->filename, O_RDWR | O_DIRECT | O_CLOEXEC);
	}
	if (fd >= 0) {
		disk->direct = true;
		return fd;
	}
	/* tmpfs and some FUSE/network filesystems refuse O_DIRECT with EINVAL. */
	if (errno != EINVAL)
		return -errno;
	disk->open_errno_direct = errno;
	fd = open(disk->filename, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	disk->direct = false;
	return fd;
}

/* Runs on the blocking pool: everything that may sleep in the kernel. */
static int aio_open_job(void *arg)
{
	struct aio_disk *disk = arg;
	const char *name = disk->bdev.name;
	uint32_t block_size = disk->requested_block_size;
	uint32_t dio_align = 0;
	uint64_t size;
	struct stat st;
	int fd, rc;

	fd = aio_open_file(disk);
	if (fd < 0) {
		rc = fd;
		if (rc == -EISDIR)
			KEEL_ERRLOG("aio bdev %s: %s is a directory, not a file or block device",
				    name, disk->filename);
		else
			KEEL_ERRLOG("aio bdev %s: cannot open %s: %s", name, disk->filename,
				    strerror(-rc));
		return rc;
	}
	disk->fd = fd;
	if (fstat(fd, &st) != 0) {
		rc = -errno;
		KEEL_ERRLOG("aio bdev %s: fstat %s: %s", name, disk->filename, strerror(-rc));
		goto out_close_fd;
	}

	if (S_ISBLK(st.st_mode)) {
		int lbs = 0;

		disk->is_blockdev = true;
		if (ioctl(fd, BLKSSZGET, &lbs) != 0 || ioctl(fd, BLKGETSIZE64, &size) != 0) {
			rc = -errno;
			KEEL_ERRLOG("aio bdev %s: cannot query block device %s: %s", name,
				    disk->filename, strerror(-rc));
			goto out_close_fd;
		}
		if (block_size == 0) {
			block_size = (uint32_t)lbs;
		} else if (block_size < (uint32_t)lbs) {
			rc = -EINVAL;
			KEEL_ERRLOG("aio bdev %s: block size %u is smaller than the logical block "
				    "size %d of %s", name, block_size, lbs, disk->filename);
			goto out_close_fd;
		}
		dio_align = (uint32_t)lbs;
	} else if (S_ISREG(st.st_mode)) {
		size = (uint64_t)st.st_size;
		if (block_size == 0)
			block_size = 512;
#ifdef STATX_DIOALIGN
		{
			struct statx stx;

			if (disk->direct && statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
			    (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align != 0)
				dio_align = stx.stx_dio_offset_align;
		}
#endif
	} else {
		rc = -EINVAL;
		KEEL_ERRLOG("aio bdev %s: %s is neither a regular file nor a block device", name,
			    disk->filename);
		goto out_close_fd;
	}

	if (!aio_is_pow2(block_size) || block_size < 512 || block_size > AIO_MAX_BLOCK_SIZE) {
		rc = -EINVAL;
		KEEL_ERRLOG("aio bdev %s: block size %u of %s is not a power of two in 512..%u",
			    name, block_size, disk->filename, AIO_MAX_BLOCK_SIZE);
		goto out_close_fd;
	}
	if (size == 0 || size % block_size != 0) {
		rc = -EINVAL;
		KEEL_ERRLOG("aio bdev %s: size %" PRIu64 " of %s is %s the block size %u", name,
			    size, disk->filename, size == 0 ? "smaller than" : "not a multiple of",
			    block_size);
		goto out_close_fd;
	}
	if (disk->direct && dio_align > block_size && !disk->is_blockdev) {
		/* O_DIRECT would refuse every request; buffered I/O still works. */
		int buffered = open(disk->filename, O_RDWR | O_CLOEXEC);

		if (buffered < 0) {
			rc = -errno;
			goto out_close_fd;
		}
		close(fd);
		disk->fd = fd = buffered;
		disk->direct = false;
		disk->open_errno_direct = EINVAL;
		KEEL_WARNLOG("aio bdev %s: block size %u is below the O_DIRECT alignment %u of %s",
			     name, block_size, dio_align, disk->filename);
	}

	if (!disk->is_blockdev) {
		/* Punching beyond EOF changes nothing and tells whether the fs can. */
		disk->punch_hole_ok = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
						(off_t)size, block_size) == 0;
		disk->zero_range_ok = true;
	}

	disk->bdev.block_size = block_size;
	disk->bdev.num_blocks = size / block_size;
	disk->bdev.required_alignment = disk->direct ? block_size : 1;
	return 0;

out_close_fd:
	close(fd);
	disk->fd = -1;
	return rc;
}

static void aio_create_fail(struct aio_disk *disk, int rc)
{
	keel_bdev_create_cb cb_fn = disk->create_cb;
	void *arg = disk->create_cb_arg;

	if (disk->fd >= 0)
		aio_close_async(disk->fd, -1, NULL, false);
	aio_disk_free(disk);
	cb_fn(arg, rc, NULL);
}

/* keel_bdev_register failed after the io_device existed: finish once it is gone. */
static void aio_create_fail_unregistered(void *io_device)
{
	struct aio_disk *disk = io_device;

	aio_create_fail(disk, disk->create_status);
}

static void aio_open_done(void *cb_arg, int rc)
{
	struct aio_disk *disk = cb_arg;

	if (rc != 0) {
		aio_create_fail(disk, rc);
		return;
	}
	if (!disk->direct)
		KEEL_WARNLOG("aio bdev %s: %s does not support O_DIRECT (%s); using buffered I/O "
			     "through the page cache", disk->bdev.name, disk->filename,
			     strerror(disk->open_errno_direct));

	rc = keel_io_device_register(disk, aio_channel_create, aio_channel_destroy,
				     sizeof(struct aio_channel), disk->io_device_name);
	if (rc != 0) {
		KEEL_ERRLOG("aio bdev %s: cannot register io_device: %s", disk->bdev.name,
			    strerror(-rc));
		aio_create_fail(disk, rc);
		return;
	}
	rc = keel_bdev_register(&disk->bdev);
	if (rc != 0) {
		KEEL_ERRLOG("aio bdev %s: register failed: %s", disk->bdev.name, strerror(-rc));
		disk->create_status = rc;
		keel_io_device_unregister(disk, aio_create_fail_unregistered);
		return;
	}
	KEEL_NOTICELOG("aio bdev %s: %s, %" PRIu64 " blocks of %u bytes, %s", disk->bdev.name,
		       disk->filename, disk->bdev.num_blocks, disk->bdev.block_size,
		       disk->direct ? "O_DIRECT" : "buffered");
	disk->create_cb(disk->create_cb_arg, 0, &disk->bdev);
}

int keel_bdev_aio_create(const char *name, const char *filename, uint32_t block_size,
			 keel_bdev_create_cb cb_fn, void *cb_arg)
{
	struct aio_disk *disk;
	int rc;

	if (name == NULL || filename == NULL || cb_fn == NULL || filename[0] == '\0')
		return -EINVAL;
	if (name[0] == '\0' || strlen(name) > KEEL_BDEV_NAME_MAX) {
		KEEL_ERRLOG("aio bdev: name '%s' is empty or longer than %d characters", name,
			    KEEL_BDEV_NAME_MAX);
		return -EINVAL;
	}
	if (block_size != 0 &&
	    (!aio_is_pow2(block_size) || block_size < 512 || block_size > AIO_MAX_BLOCK_SIZE)) {
		KEEL_ERRLOG("aio bdev %s: block size %u is not a power of two in 512..%u", name,
			    block_size, AIO_MAX_BLOCK_SIZE);
		return -EINVAL;
	}
	if (keel_thread_get_current() == NULL)
		return -EINVAL;
	if (keel_bdev_get_by_name(name) != NULL) {
		KEEL_ERRLOG("aio bdev %s: a bdev with this name exists", name);
		return -EEXIST;
	}

	disk = calloc(1, sizeof(*disk));
	if (disk == NULL)
		return -ENOMEM;
	disk->bdev.name = strdup(name);
	disk->filename = strdup(filename);
	if (disk->bdev.name == NULL || disk->filename == NULL) {
		rc = -ENOMEM;
		goto out_free_disk;
	}
	disk->fd = -1;
	disk->fdsync_native = true;
	disk->fua_native = true;
	disk->queue_depth = __atomic_load_n(&g_queue_depth, __ATOMIC_RELAXED);
	disk->requested_block_size = block_size;
	disk->create_cb = cb_fn;
	disk->create_cb_arg = cb_arg;
	snprintf(disk->io_device_name, sizeof(disk->io_device_name), "aio:%s", name);
	disk->bdev.product_name = "AIO disk";
	disk->bdev.write_cache = true;
	/* Every thread writes the same file; fdsync flushes them all. */
	disk->bdev.multi_conn_safe = true;
	disk->bdev.ctxt = disk;
	disk->bdev.fn_table = &g_aio_fn_table;
	disk->bdev.module = &keel_bdev_aio_module;

	rc = keel_spawn_blocking(aio_open_job, disk, aio_open_done, disk);
	if (rc != 0)
		goto out_free_disk;
	return 0;

out_free_disk:
	aio_disk_free(disk);
	return rc;
}

/* ------------------------------------------------------------------------------ */
/* Module                                                                          */
/* ------------------------------------------------------------------------------ */

static int aio_module_init(void)
{
	return 0;
}

static uint32_t aio_get_ctx_size(void)
{
	return sizeof(struct aio_io_ctx);
}

struct keel_bdev_module keel_bdev_aio_module = {
	.name = "aio",
	.module_init = aio_module_init,
	.module_fini = NULL,
	.get_ctx_size = aio_get_ctx_size,
};

int bdev_aio_set_queue_depth(uint32_t depth)
{
	if (depth == 0 || depth > AIO_MAX_QUEUE_DEPTH)
		return -EINVAL;
	__atomic_store_n(&g_queue_depth, depth, __ATOMIC_RELAXED);
	return 0;
}

void bdev_aio_set_overcommit(bool overcommit)
{
	__atomic_store_n(&g_overcommit, overcommit, __ATOMIC_RELAXED);
}

void bdev_aio_set_refuse_direct(bool refuse)
{
	__atomic_store_n(&g_refuse_direct, refuse, __ATOMIC_RELAXED);
}

int bdev_aio_set_native_sync(struct keel_bdev *bdev, bool fdsync_native, bool fua_native)
{
	struct aio_disk *disk = aio_disk_from_bdev(bdev);

	if (disk == NULL)
		return -EINVAL;
	__atomic_store_n(&disk->fdsync_native, fdsync_native, __ATOMIC_RELAXED);
	__atomic_store_n(&disk->fua_native, fua_native, __ATOMIC_RELAXED);
	return 0;
}

int bdev_aio_get_counters(struct keel_bdev *bdev, struct bdev_aio_counters *out)
{
	struct aio_disk *disk = aio_disk_from_bdev(bdev);

	if (disk == NULL || out == NULL)
		return -EINVAL;
	out->io_submit_calls = __atomic_load_n(&disk->counters.io_submit_calls, __ATOMIC_RELAXED);
	out->iocbs_submitted = __atomic_load_n(&disk->counters.iocbs_submitted, __ATOMIC_RELAXED);
	out->submit_eagain = __atomic_load_n(&disk->counters.submit_eagain, __ATOMIC_RELAXED);
	out->ring_reaps = __atomic_load_n(&disk->counters.ring_reaps, __ATOMIC_RELAXED);
	out->getevents_reaps = __atomic_load_n(&disk->counters.getevents_reaps, __ATOMIC_RELAXED);
	out->pool_ops = __atomic_load_n(&disk->counters.pool_ops, __ATOMIC_RELAXED);
	return 0;
}

bool bdev_aio_is_direct(struct keel_bdev *bdev)
{
	struct aio_disk *disk = aio_disk_from_bdev(bdev);

	return disk != NULL && disk->direct;
}
