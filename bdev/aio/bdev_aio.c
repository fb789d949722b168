/*
 * aio bdev: a regular file or block device driven through Linux native AIO (libaio).
 *
 * Requests prepare their iocb during submit_request and queue it on the channel; the
 * io_context, eventfd and poller are shared by every aio bdev of the keel thread
 * (aio_group.c), which submits what all of them queued with one io_submit and reaps
 * every completion from one ring. Nothing is shared between threads, so the data
 * path takes no lock. This file is the bdev: open, request preparation, what each
 * kernel answer means (short transfers, refused fdsync or RWF_DSYNC), pool work.
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
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "keel/bdev_module.h"
#include "keel/log.h"
#include "keel/reactor.h"

#include "../uring/bdev_uring_internal.h"
#include "aio_group.h"
#include "bdev_file.h"
#include "bdev_aio_internal.h"
#include "keel/bdev_uring.h"

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

#define AIO_MAX_BLOCK_SIZE 65536u
#define AIO_MAX_QUEUE_DEPTH 4096u

#define AIO_CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

enum aio_pool_op {
	AIO_POOL_FDATASYNC,
	AIO_POOL_UNMAP,
	AIO_POOL_WRITE_ZEROES,
	AIO_POOL_READ, /* buffered files: see aio_prep_rw */
	AIO_POOL_WRITE,
};

struct aio_disk {
	struct keel_bdev bdev;
	char *filename;
	int fd;
	bool direct;
	bool is_blockdev;
	bool punch_hole_ok; /* probed at create */
	/* Flipped to false (once, from any thread) when the kernel refuses the feature. */
	bool fdsync_native;
	bool fua_native;
	bool zero_range_ok;
	uint32_t queue_depth; /* per-channel cap on iocbs in the kernel */
	char io_device_name[KEEL_BDEV_NAME_MAX + 8];

	/* create */
	keel_bdev_create_cb create_cb;
	void *create_cb_arg;
	uint32_t requested_block_size;
	int open_errno_direct; /* why O_DIRECT was refused, for the warning */
	bool uring_ok;         /* io_uring usable here (probed on the pool at create) */
	char uring_why[160];   /* why not, for the log */
	int create_status;

	struct bdev_aio_counters counters; /* relaxed atomics */
};

/*
 * A (file, thread) channel: one per replica per thread, so it stays small. Its
 * queue hangs on the thread's shared context; it has no fd, context or poller.
 */
struct aio_channel {
	struct aio_disk *disk;
	struct aio_queue queue;
};

enum aio_io_stage {
	AIO_STAGE_RW,              /* read, write: complete on the event */
	AIO_STAGE_WRITE_THEN_SYNC, /* FUA without RWF_DSYNC: write, then fdsync */
	AIO_STAGE_FDSYNC,
};

struct aio_io_ctx {
	struct aio_req req; /* first: the iocb and queue the group works with */
	enum aio_io_stage stage;
	/* blocking-pool request: copied values so the pool thread reads nothing shared */
	enum aio_pool_op pool_op;
	int fd;
	bool is_blockdev;
	bool may_unmap; /* write_zeroes with KEEL_BDEV_IO_FLAG_UNMAP */
	uint64_t offset;
	uint64_t len;
	struct aio_disk *disk;
	struct iovec *iovs; /* AIO_POOL_READ/WRITE: the request's own buffers */
	int iovcnt;
	bool fua;
};

/* The group finds its aio_req at the start of every request's context. */
_Static_assert(offsetof(struct aio_io_ctx, req) == 0, "aio_req must come first");

static uint32_t g_queue_depth = BDEV_AIO_DEFAULT_QUEUE_DEPTH;
static bool g_refuse_direct; /* test knobs */

static const struct keel_bdev_fn_table g_aio_fn_table;

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
	if (bdev == NULL || bdev->fn_table != &g_aio_fn_table) {
		return NULL;
	}
	return AIO_CONTAINER_OF(bdev, struct aio_disk, bdev);
}

static void aio_disk_free(struct aio_disk *disk)
{
	free(disk->bdev.name);
	free(disk->filename);
	free(disk);
}

/* ------------------------------------------------------------------------------ */
/* Data path                                                                       */
/* ------------------------------------------------------------------------------ */

static void aio_pool_submit(struct keel_bdev_io *io, enum aio_pool_op op);

static inline struct aio_disk *aio_disk_of(struct keel_bdev_io *io)
{
	return AIO_CONTAINER_OF(io->bdev, struct aio_disk, bdev);
}

/* The eventfd is chosen at io_submit time (aio_group.c). */
static void aio_prep_fdsync(struct aio_queue *q, struct keel_bdev_io *io)
{
	struct aio_io_ctx *ctx = keel_bdev_io_get_ctx(io);
	struct aio_disk *disk = aio_disk_of(io);

	ctx->stage = AIO_STAGE_FDSYNC;
	if (!aio_flag_get(&disk->fdsync_native)) {
		aio_pool_submit(io, AIO_POOL_FDATASYNC);
		return;
	}
	io_prep_fdsync(&ctx->req.iocb, disk->fd);
	bdev_aio_queue_push(q, io, false);
}

static void aio_prep_rw(struct aio_channel *ch, struct keel_bdev_io *io)
{
	struct aio_io_ctx *ctx = keel_bdev_io_get_ctx(io);
	struct iocb *iocb = &ctx->req.iocb;
	struct aio_disk *disk = ch->disk;
	long long offset = (long long)keel_bdev_io_offset_bytes(io);
	bool write = io->type == KEEL_BDEV_IO_WRITE;

	if (!disk->direct) {
		/*
		 * Linux performs buffered aio synchronously inside io_submit, which would
		 * stall this reactor for every page-cache miss or writeback wait: run it on
		 * the blocking pool. (Where io_uring works such files are uring bdevs.)
		 */
		aio_pool_submit(io, write ? AIO_POOL_WRITE : AIO_POOL_READ);
		return;
	}
	if (io->iovcnt == 1) {
		/* PREAD/PWRITE skip the kernel's iovec import. */
		if (write) {
			io_prep_pwrite(iocb, disk->fd, io->iovs[0].iov_base, io->iovs[0].iov_len,
				       offset);
		} else {
			io_prep_pread(iocb, disk->fd, io->iovs[0].iov_base, io->iovs[0].iov_len,
				      offset);
		}
	} else {
		if (write) {
			io_prep_pwritev(iocb, disk->fd, io->iovs, io->iovcnt, offset);
		} else {
			io_prep_preadv(iocb, disk->fd, io->iovs, io->iovcnt, offset);
		}
	}
	ctx->stage = AIO_STAGE_RW;
	if (write && (io->flags & KEEL_BDEV_IO_FLAG_FUA)) {
		if (aio_flag_get(&disk->fua_native)) {
			iocb->aio_rw_flags = RWF_DSYNC;
		} else {
			ctx->stage = AIO_STAGE_WRITE_THEN_SYNC;
		}
	}
	bdev_aio_queue_push(&ch->queue, io, false);
}

/*
 * The kernel refused the aio fdsync command (at io_submit or in the event): flush
 * with fdatasync on the blocking pool, for this request and from now on.
 */
static void aio_fdsync_refused(struct aio_disk *disk, struct keel_bdev_io *io)
{
	if (aio_flag_get(&disk->fdsync_native)) {
		KEEL_WARNLOG("aio bdev %s: kernel refused aio fdsync on %s, using fdatasync on "
			     "the blocking pool from now on",
			     disk->bdev.name, disk->filename);
	}
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

void bdev_aio_event(struct keel_bdev_io *io, long res)
{
	struct aio_io_ctx *ctx = keel_bdev_io_get_ctx(io);
	struct aio_disk *disk = aio_disk_of(io);
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
			KEEL_ERRLOG("aio bdev %s: short %s at %" PRIu64 ": %ld of %" PRIu64
				    " bytes",
				    disk->bdev.name, keel_bdev_io_type_name(io->type),
				    keel_bdev_io_offset_bytes(io), res, want);
			keel_bdev_io_complete(io, -EIO);
			return;
		}
	}
	if (ctx->stage == AIO_STAGE_WRITE_THEN_SYNC) {
		aio_prep_fdsync(ctx->req.queue, io);
		return;
	}
	keel_bdev_io_complete(io, 0);
}

/* The kernel refused the first iocb of a batch outright (io_submit < 0). */
void bdev_aio_refused(struct keel_bdev_io *io, int rc)
{
	struct aio_io_ctx *ctx = keel_bdev_io_get_ctx(io);
	struct aio_disk *disk = aio_disk_of(io);

	if (ctx->stage == AIO_STAGE_FDSYNC && rc == -EINVAL) {
		aio_fdsync_refused(disk, io);
		return;
	}
	if (ctx->req.iocb.aio_rw_flags != 0 && (rc == -EINVAL || rc == -EOPNOTSUPP)) {
		if (aio_flag_get(&disk->fua_native)) {
			KEEL_WARNLOG(
				"aio bdev %s: kernel refused RWF_DSYNC on %s, FUA writes become "
				"write + fdsync",
				disk->bdev.name, disk->filename);
		}
		aio_flag_clear(&disk->fua_native);
		ctx->req.iocb.aio_rw_flags = 0;
		ctx->stage = AIO_STAGE_WRITE_THEN_SYNC;
		bdev_aio_queue_push(ctx->req.queue, io, true);
		return;
	}
	keel_bdev_io_complete(io, rc);
}

/* Buffered read or write of a whole request on a pool thread; past EOF reads as zeroes. */
static int aio_pool_rw(struct aio_io_ctx *ctx, bool write)
{
	uint64_t off = ctx->offset;
	int i;

	for (i = 0; i < ctx->iovcnt; i++) {
		char *base = ctx->iovs[i].iov_base;
		size_t left = ctx->iovs[i].iov_len;

		while (left > 0) {
			ssize_t n = write ? pwrite(ctx->fd, base, left, (off_t)off)
					  : pread(ctx->fd, base, left, (off_t)off);

			if (n < 0 && errno == EINTR) {
				continue;
			}
			if (n < 0) {
				return -errno;
			}
			if (n == 0) {
				if (write || ctx->is_blockdev) {
					return -EIO;
				}
				memset(base, 0, left);
				n = (ssize_t)left;
			}
			base += n;
			left -= (size_t)n;
			off += (uint64_t)n;
		}
	}
	if (write && ctx->fua && fdatasync(ctx->fd) != 0) {
		return -errno;
	}
	return 0;
}

static int aio_pool_job(void *arg)
{
	struct aio_io_ctx *ctx = arg;
	int rc = 0;

	switch (ctx->pool_op) {
	case AIO_POOL_READ:
	case AIO_POOL_WRITE:
		return aio_pool_rw(ctx, ctx->pool_op == AIO_POOL_WRITE);
	case AIO_POOL_FDATASYNC:
		rc = fdatasync(ctx->fd);
		break;
	case AIO_POOL_UNMAP:
		if (ctx->is_blockdev) {
			uint64_t range[2] = {ctx->offset, ctx->len};

			rc = ioctl(ctx->fd, BLKDISCARD, range);
		} else {
			rc = fallocate(ctx->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				       (off_t)ctx->offset, (off_t)ctx->len);
		}
		break;
	case AIO_POOL_WRITE_ZEROES:
		if (ctx->is_blockdev) {
			uint64_t range[2] = {ctx->offset, ctx->len};

			rc = ioctl(ctx->fd, BLKZEROOUT, range);
			break;
		}
		/* write_zeroes is native on files only where punching works. */
		if (!ctx->may_unmap && aio_flag_get(&ctx->disk->zero_range_ok)) {
			rc = fallocate(ctx->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
				       (off_t)ctx->offset, (off_t)ctx->len);
			if (rc == 0 || (errno != EOPNOTSUPP && errno != EINVAL)) {
				break;
			}
			/* tmpfs and others: a punched hole reads back as zeroes too. */
			aio_flag_clear(&ctx->disk->zero_range_ok);
		}
		rc = fallocate(ctx->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			       (off_t)ctx->offset, (off_t)ctx->len);
		break;
	}
	if (rc < 0) {
		return errno == EOPNOTSUPP ? -ENOTSUP : -errno;
	}
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
	struct aio_disk *disk = aio_disk_of(io);
	int rc;

	ctx->pool_op = op;
	ctx->fd = disk->fd;
	ctx->is_blockdev = disk->is_blockdev;
	ctx->may_unmap = io->flags & KEEL_BDEV_IO_FLAG_UNMAP;
	ctx->offset = keel_bdev_io_offset_bytes(io);
	ctx->len = keel_bdev_io_num_bytes(io);
	ctx->disk = disk;
	ctx->iovs = io->iovs;
	ctx->iovcnt = io->iovcnt;
	ctx->fua = (io->flags & KEEL_BDEV_IO_FLAG_FUA) != 0;
	__atomic_fetch_add(&disk->counters.pool_ops, 1, __ATOMIC_RELAXED);
	rc = keel_spawn_blocking(aio_pool_job, ctx, aio_pool_job_done, io);
	if (rc != 0) {
		/* -ENOMEM makes the core retry; anything else is final. */
		keel_bdev_io_complete(io, rc == -ENOMEM ? -ENOMEM : -EIO);
	}
}

/*
 * Allocation query on the blocking pool: lseek(SEEK_DATA/SEEK_HOLE) may wait for the
 * inode lock behind a writer. The pool thread reads only this request (the reactor
 * does not touch it until the completion message) and the file's fd.
 */
static int aio_allocation_job(void *arg)
{
	struct keel_bdev_io *io = arg;

	return bdev_file_io_get_allocation(aio_disk_of(io)->fd, io);
}

static void aio_get_allocation(struct keel_bdev_io *io)
{
	int rc;

	__atomic_fetch_add(&aio_disk_of(io)->counters.pool_ops, 1, __ATOMIC_RELAXED);
	rc = keel_spawn_blocking(aio_allocation_job, io, aio_pool_job_done, io);
	if (rc != 0) {
		keel_bdev_io_complete(io, rc == -ENOMEM ? -ENOMEM : -EIO);
	}
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
		aio_prep_fdsync(&ch->queue, io);
		break;
	case KEEL_BDEV_IO_UNMAP:
		aio_pool_submit(io, AIO_POOL_UNMAP);
		break;
	case KEEL_BDEV_IO_WRITE_ZEROES:
		aio_pool_submit(io, AIO_POOL_WRITE_ZEROES);
		break;
	case KEEL_BDEV_IO_GET_ALLOCATION:
		aio_get_allocation(io);
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
	case KEEL_BDEV_IO_GET_ALLOCATION:
		return !disk->is_blockdev; /* SEEK_DATA means nothing on a block device */
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

	ch->disk = disk;
	return bdev_aio_queue_init(&ch->queue, disk->queue_depth, &disk->counters, disk->bdev.name);
}

static void aio_channel_destroy(void *io_device, void *ctx_buf)
{
	struct aio_channel *ch = ctx_buf;

	/* The core drains a bdev channel before it puts ours. */
	if (ch->queue.inflight != 0 || !TAILQ_EMPTY(&ch->queue.pending)) {
		KEEL_ERRLOG("aio bdev %s: channel destroyed with %u requests in flight",
			    ch->disk->bdev.name, ch->queue.inflight);
	}
	bdev_aio_queue_fini(&ch->queue);
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

	if (rc != 0) {
		KEEL_WARNLOG("aio bdev %s: close %s: %s", disk->bdev.name, disk->filename,
			     strerror(-rc));
	}
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

	if (keel_spawn_blocking(aio_disk_close_job, disk, aio_disk_closed, disk) != 0) {
		aio_disk_closed(disk, aio_disk_close_job(disk));
	}
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
	/* Where reads and writes run: buffered ones never go through io_submit. */
	json_object_set_new(obj, "io_path", json_string(disk->direct ? "aio" : "blocking_pool"));
}

static const struct keel_bdev_fn_table g_aio_fn_table = {
	.destruct = aio_destruct,
	.submit_request = aio_submit_request,
	.io_type_supported = aio_io_type_supported,
	.get_io_channel = aio_get_io_channel,
	.dump_info_json = aio_dump_info_json,
};

bool keel_bdev_aio_created(struct keel_bdev *bdev)
{
	return bdev != NULL && (aio_disk_from_bdev(bdev) != NULL || bdev_uring_is_for_aio(bdev));
}

int keel_bdev_aio_delete(const char *name, keel_bdev_done_cb cb_fn, void *cb_arg)
{
	struct keel_bdev *bdev;

	if (name == NULL) {
		return -ENODEV;
	}
	bdev = keel_bdev_get_by_name(name);
	if (bdev != NULL && bdev_uring_is_for_aio(bdev)) {
		/* Created as aio, served by io_uring (aio_hand_to_uring): delete it there. */
		return keel_bdev_uring_delete(name, cb_fn, cb_arg);
	}
	if (aio_disk_from_bdev(bdev) == NULL) {
		return -ENODEV;
	}
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
	if (errno != EINVAL) {
		return -errno;
	}
	disk->open_errno_direct = errno;
	fd = open(disk->filename, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		return -errno;
	}
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
		if (rc == -EISDIR) {
			KEEL_ERRLOG("aio bdev %s: %s is a directory, not a file or block device",
				    name, disk->filename);
		} else {
			KEEL_ERRLOG("aio bdev %s: cannot open %s: %s", name, disk->filename,
				    strerror(-rc));
		}
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
				    "size %d of %s",
				    name, block_size, lbs, disk->filename);
			goto out_close_fd;
		}
		dio_align = (uint32_t)lbs;
	} else if (S_ISREG(st.st_mode)) {
		size = (uint64_t)st.st_size;
		if (block_size == 0) {
			block_size = 512;
		}
#ifdef STATX_DIOALIGN
		{
			struct statx stx;

			if (disk->direct &&
			    statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
			    (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align != 0) {
				dio_align = stx.stx_dio_offset_align;
			}
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
	if (!disk->direct) {
		/* Here, not on the reactor: the first probe sets up a ring. */
		disk->uring_ok = keel_bdev_uring_available(disk->uring_why,
							   sizeof(disk->uring_why));
	}
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

	if (disk->fd >= 0) {
		bdev_aio_close_async(disk->fd, -1, NULL, false);
	}
	aio_disk_free(disk);
	cb_fn(arg, rc, NULL);
}

/* keel_bdev_register failed after the io_device existed: finish once it is gone. */
static void aio_create_fail_unregistered(void *io_device)
{
	struct aio_disk *disk = io_device;

	aio_create_fail(disk, disk->create_status);
}

/*
 * A file whose filesystem refused O_DIRECT: Linux would perform its buffered aio inside
 * io_submit, on the reactor. Where io_uring works (which makes buffered I/O
 * asynchronous) the file becomes a uring bdev of the same name, and this disk goes.
 * \return true when the uring create took over the caller's callback.
 */
static bool aio_hand_to_uring(struct aio_disk *disk)
{
	int rc;

	if (!disk->uring_ok) {
		return false;
	}
	rc = bdev_uring_create_for_aio(disk->bdev.name, disk->filename, disk->requested_block_size,
				       disk->create_cb, disk->create_cb_arg);
	if (rc != 0) {
		snprintf(disk->uring_why, sizeof(disk->uring_why), "uring create: %s",
			 strerror(-rc));
		return false;
	}
	KEEL_NOTICELOG("aio bdev %s: %s does not support O_DIRECT (%s); serving it with "
		       "io_uring, which keeps buffered I/O off the reactor",
		       disk->bdev.name, disk->filename, strerror(disk->open_errno_direct));
	bdev_aio_close_async(disk->fd, -1, NULL, false);
	aio_disk_free(disk);
	return true;
}

static void aio_open_done(void *cb_arg, int rc)
{
	struct aio_disk *disk = cb_arg;

	if (rc != 0) {
		aio_create_fail(disk, rc);
		return;
	}
	if (!disk->direct) {
		if (aio_hand_to_uring(disk)) {
			return;
		}
		KEEL_WARNLOG("aio bdev %s: %s does not support O_DIRECT (%s) and io_uring is "
			     "unavailable (%s); buffered reads and writes run on the blocking pool",
			     disk->bdev.name, disk->filename, strerror(disk->open_errno_direct),
			     disk->uring_why[0] != '\0' ? disk->uring_why : "?");
	}

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

	if (name == NULL || filename == NULL || cb_fn == NULL || filename[0] == '\0') {
		return -EINVAL;
	}
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
	if (keel_thread_get_current() == NULL) {
		return -EINVAL;
	}
	if (keel_bdev_get_by_name(name) != NULL) {
		KEEL_ERRLOG("aio bdev %s: a bdev with this name exists", name);
		return -EEXIST;
	}

	disk = calloc(1, sizeof(*disk));
	if (disk == NULL) {
		return -ENOMEM;
	}
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
	if (rc != 0) {
		goto out_free_disk;
	}
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
	if (depth == 0 || depth > AIO_MAX_QUEUE_DEPTH) {
		return -EINVAL;
	}
	__atomic_store_n(&g_queue_depth, depth, __ATOMIC_RELAXED);
	return 0;
}

void bdev_aio_set_refuse_direct(bool refuse)
{
	__atomic_store_n(&g_refuse_direct, refuse, __ATOMIC_RELAXED);
}

int bdev_aio_set_native_sync(struct keel_bdev *bdev, bool fdsync_native, bool fua_native)
{
	struct aio_disk *disk = aio_disk_from_bdev(bdev);

	if (disk == NULL) {
		return -EINVAL;
	}
	__atomic_store_n(&disk->fdsync_native, fdsync_native, __ATOMIC_RELAXED);
	__atomic_store_n(&disk->fua_native, fua_native, __ATOMIC_RELAXED);
	return 0;
}

int bdev_aio_get_counters(struct keel_bdev *bdev, struct bdev_aio_counters *out)
{
	struct aio_disk *disk = aio_disk_from_bdev(bdev);

	if (disk == NULL || out == NULL) {
		return -EINVAL;
	}
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
