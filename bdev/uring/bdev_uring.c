/*
 * uring bdev: a regular file or block device driven through io_uring (liburing).
 *
 * The structure follows the aio module: the open runs on the blocking-work pool, each
 * request prepares its submission entry inside its own context (no allocation) and a
 * per-thread ring (uring_group.c) batches them into one io_uring_enter and hands the
 * completions back here. What differs is what io_uring allows:
 *  - flush is IORING_OP_FSYNC (datasync), unmap and write_zeroes are
 *    IORING_OP_FALLOCATE: the kernel runs them in its own workers, so nothing here
 *    ever needs the blocking pool on the data path;
 *  - buffered files (no O_DIRECT) are asynchronous too: a page-cache miss goes to a
 *    kernel worker instead of blocking the submitting reactor as io_submit does;
 *  - each bdev file is registered with the ring (fixed files) when the ring has a slot.
 */
#include <errno.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "keel/bdev_module.h"
#include "keel/bdev_uring.h"
#include "keel/log.h"
#include "keel/reactor.h"

#include "bdev_file.h"
#include "bdev_uring_internal.h"
#include "uring_group.h"

#ifndef RWF_DSYNC
#define RWF_DSYNC 0x00000002
#endif

/* Requests larger than this are split by the core: one read or write of the kernel
 * moves at most ~2 GiB (MAX_RW_COUNT), and a short transfer would be an error. */
#define URING_MAX_TRANSFER_BYTES (1u << 30)

#define URING_CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

struct uring_disk {
	struct keel_bdev bdev;
	char *filename;
	int fd;
	bool direct;
	bool is_blockdev;
	bool punch_hole_ok; /* files: probed at create */
	bool inline_issue;  /* the kernel issues requests inline (RWF_NOWAIT works) */
	/* Flipped to false (once, from any thread) when the kernel refuses the feature. */
	bool fua_native;    /* RWF_DSYNC on writes */
	bool zero_range_ok; /* files: FALLOC_FL_ZERO_RANGE */
	bool blk_punch_ok;  /* block devices: PUNCH_HOLE (write-zeroes with unmap) */
	char io_device_name[KEEL_BDEV_NAME_MAX + 8];

	/* create */
	keel_bdev_create_cb create_cb;
	void *create_cb_arg;
	uint32_t requested_block_size;
	bool refuse_direct;
	bool for_aio; /* an aio create handed this buffered file over (bdev_aio.c) */
	int direct_errno;
	uint32_t dio_align;
	int create_status;
	char why[200]; /* why io_uring is unavailable, for the log */

	struct bdev_uring_counters counters; /* relaxed atomics */
};

struct uring_channel {
	struct uring_disk *disk;
	struct uring_queue queue;
};

enum uring_stage {
	URING_STAGE_RW,              /* read, write: complete on the CQE */
	URING_STAGE_WRITE_THEN_SYNC, /* FUA without RWF_DSYNC: write, then fsync */
	URING_STAGE_FSYNC,
	URING_STAGE_UNMAP,
	URING_STAGE_WRITE_ZEROES,
};

struct uring_io_ctx {
	struct uring_req req; /* first: what the ring needs */
	enum uring_stage stage;
	int falloc_mode;
};

static bool g_refuse_direct; /* test knob */

static const struct keel_bdev_fn_table g_uring_fn_table;

static inline bool uring_flag_get(const bool *flag)
{
	return __atomic_load_n(flag, __ATOMIC_RELAXED);
}

/* \return true for the thread that cleared it (it logs the change, once). */
static inline bool uring_flag_clear(bool *flag)
{
	return __atomic_exchange_n(flag, false, __ATOMIC_RELAXED);
}

static struct uring_disk *uring_disk_from_bdev(struct keel_bdev *bdev)
{
	if (bdev == NULL || bdev->fn_table != &g_uring_fn_table) {
		return NULL;
	}
	return URING_CONTAINER_OF(bdev, struct uring_disk, bdev);
}

static struct uring_disk *uring_disk_of_io(struct keel_bdev_io *io)
{
	return URING_CONTAINER_OF(io->bdev, struct uring_disk, bdev);
}

static void uring_disk_free(struct uring_disk *disk)
{
	free(disk->bdev.name);
	free(disk->filename);
	free(disk);
}

/* ------------------------------------------------------------------------------ */
/* Data path                                                                       */
/* ------------------------------------------------------------------------------ */

static void uring_push(struct keel_bdev_io *io)
{
	struct uring_io_ctx *ctx = keel_bdev_io_get_ctx(io);
	struct uring_channel *ch = URING_CONTAINER_OF(ctx->req.queue, struct uring_channel, queue);

	bdev_uring_queue_push(&ch->queue, io);
}

static void uring_prep_fsync(struct keel_bdev_io *io)
{
	struct uring_io_ctx *ctx = keel_bdev_io_get_ctx(io);

	io_uring_prep_fsync(&ctx->req.sqe, uring_disk_of_io(io)->fd, IORING_FSYNC_DATASYNC);
	ctx->stage = URING_STAGE_FSYNC;
}

static void uring_prep_rw(struct keel_bdev_io *io)
{
	struct uring_io_ctx *ctx = keel_bdev_io_get_ctx(io);
	struct uring_disk *disk = uring_disk_of_io(io);
	uint64_t offset = keel_bdev_io_offset_bytes(io);
	bool write = io->type == KEEL_BDEV_IO_WRITE;
	struct io_uring_sqe *sqe = &ctx->req.sqe;

	if (io->iovcnt == 1) {
		/* READ/WRITE skip the kernel's iovec import; the length fits (max transfer). */
		unsigned len = (unsigned)keel_bdev_io_num_bytes(io);

		if (write) {
			io_uring_prep_write(sqe, disk->fd, io->iovs[0].iov_base, len, offset);
		} else {
			io_uring_prep_read(sqe, disk->fd, io->iovs[0].iov_base, len, offset);
		}
	} else {
		if (write) {
			io_uring_prep_writev(sqe, disk->fd, io->iovs, (unsigned)io->iovcnt, offset);
		} else {
			io_uring_prep_readv(sqe, disk->fd, io->iovs, (unsigned)io->iovcnt, offset);
		}
	}
	ctx->stage = URING_STAGE_RW;
	if (write && (io->flags & KEEL_BDEV_IO_FLAG_FUA)) {
		if (uring_flag_get(&disk->fua_native)) {
			sqe->rw_flags = RWF_DSYNC;
		} else {
			ctx->stage = URING_STAGE_WRITE_THEN_SYNC;
		}
	}
}

static void uring_prep_fallocate(struct keel_bdev_io *io, enum uring_stage stage, int mode)
{
	struct uring_io_ctx *ctx = keel_bdev_io_get_ctx(io);

	io_uring_prep_fallocate(&ctx->req.sqe, uring_disk_of_io(io)->fd, mode,
				(off_t)keel_bdev_io_offset_bytes(io),
				(off_t)keel_bdev_io_num_bytes(io));
	ctx->stage = stage;
	ctx->falloc_mode = mode;
}

/*
 * unmap: punch a hole in a file; on a block device PUNCH_HOLE is a write-zeroes that
 * may unmap (the kernel no longer discards through fallocate), and ZERO_RANGE the
 * same with the kernel writing zeroes itself where the device cannot.
 * write_zeroes: ZERO_RANGE, or a punched hole where the filesystem lacks it (tmpfs).
 */
static void uring_prep_unmap(struct keel_bdev_io *io)
{
	struct uring_disk *disk = uring_disk_of_io(io);
	int mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;

	if (disk->is_blockdev && !uring_flag_get(&disk->blk_punch_ok)) {
		mode = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
	}
	uring_prep_fallocate(io, URING_STAGE_UNMAP, mode);
}

static void uring_prep_write_zeroes(struct keel_bdev_io *io)
{
	struct uring_disk *disk = uring_disk_of_io(io);
	int mode = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;

	/* On files write_zeroes is native only where punching works. */
	if (!disk->is_blockdev &&
	    (!uring_flag_get(&disk->zero_range_ok) || (io->flags & KEEL_BDEV_IO_FLAG_UNMAP))) {
		mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
	}
	uring_prep_fallocate(io, URING_STAGE_WRITE_ZEROES, mode);
}

/* Zero what a read past the end of the file did not fill. */
static void uring_zero_tail(struct keel_bdev_io *io, uint64_t done)
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

/*
 * The kernel refused a fallocate mode with EOPNOTSUPP/EINVAL: retry with the other
 * one, for this request and from now on. \return true when the request went again.
 */
static bool uring_falloc_fallback(struct uring_disk *disk, struct keel_bdev_io *io,
				  struct uring_io_ctx *ctx)
{
	bool zero_range = (ctx->falloc_mode & FALLOC_FL_ZERO_RANGE) != 0;
	const char *what;
	bool *flag;
	int mode;

	if (ctx->stage == URING_STAGE_WRITE_ZEROES && zero_range && !disk->is_blockdev) {
		/* tmpfs and others: a punched hole reads back as zeroes too. */
		flag = &disk->zero_range_ok;
		what = "cannot zero a range, write_zeroes punch holes instead";
		mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
	} else if (ctx->stage == URING_STAGE_UNMAP && !zero_range && disk->is_blockdev) {
		flag = &disk->blk_punch_ok;
		what = "has no write-zeroes command, unmap writes zeroes instead";
		mode = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
	} else {
		return false;
	}
	if (uring_flag_clear(flag)) {
		KEEL_NOTICELOG("uring bdev %s: %s %s", disk->bdev.name, disk->filename, what);
	}
	uring_prep_fallocate(io, ctx->stage, mode);
	uring_push(io);
	return true;
}

static void uring_rw_done(struct uring_disk *disk, struct keel_bdev_io *io,
			  struct uring_io_ctx *ctx, int res)
{
	uint64_t want;

	if (res < 0) {
		if (ctx->req.sqe.rw_flags != 0 && (res == -EINVAL || res == -EOPNOTSUPP)) {
			if (uring_flag_clear(&disk->fua_native)) {
				KEEL_WARNLOG("uring bdev %s: kernel refused RWF_DSYNC on %s, FUA "
					     "writes become write + fsync",
					     disk->bdev.name, disk->filename);
			}
			ctx->req.sqe.rw_flags = 0;
			ctx->stage = URING_STAGE_WRITE_THEN_SYNC;
			uring_push(io);
			return;
		}
		/* -EAGAIN is transient: let the core retry. */
		keel_bdev_io_complete(io, res == -EAGAIN ? -ENOMEM : res);
		return;
	}
	want = keel_bdev_io_num_bytes(io);
	if ((uint64_t)res < want) {
		if (io->type == KEEL_BDEV_IO_READ && !disk->is_blockdev) {
			/* The file shrank under us: past EOF reads as zeroes, like a hole. */
			uring_zero_tail(io, (uint64_t)res);
		} else {
			KEEL_ERRLOG("uring bdev %s: short %s at %" PRIu64 ": %d of %" PRIu64
				    " bytes",
				    disk->bdev.name, keel_bdev_io_type_name(io->type),
				    keel_bdev_io_offset_bytes(io), res, want);
			keel_bdev_io_complete(io, -EIO);
			return;
		}
	}
	if (ctx->stage == URING_STAGE_WRITE_THEN_SYNC) {
		uring_prep_fsync(io);
		uring_push(io);
		return;
	}
	keel_bdev_io_complete(io, 0);
}

void bdev_uring_cqe(struct keel_bdev_io *io, int res)
{
	struct uring_io_ctx *ctx = keel_bdev_io_get_ctx(io);
	struct uring_disk *disk = uring_disk_of_io(io);

	switch (ctx->stage) {
	case URING_STAGE_RW:
	case URING_STAGE_WRITE_THEN_SYNC:
		uring_rw_done(disk, io, ctx, res);
		return;
	case URING_STAGE_UNMAP:
	case URING_STAGE_WRITE_ZEROES:
		if ((res == -EOPNOTSUPP || res == -EINVAL) &&
		    uring_falloc_fallback(disk, io, ctx)) {
			return;
		}
		break;
	case URING_STAGE_FSYNC:
		break;
	}
	keel_bdev_io_complete(io, res < 0 ? res : 0);
}

/*
 * Allocation query: io_uring has no lseek, so SEEK_DATA/SEEK_HOLE run on the blocking
 * pool (they may wait for the inode lock). The pool thread reads only this request and
 * the file's fd; the reactor does not touch the request until the completion message.
 */
static int uring_allocation_job(void *arg)
{
	struct keel_bdev_io *io = arg;

	return bdev_file_io_get_allocation(uring_disk_of_io(io)->fd, io);
}

static void uring_allocation_done(void *cb_arg, int rc)
{
	keel_bdev_io_complete(cb_arg, rc);
}

static void uring_submit_request(struct keel_io_channel *_ch, struct keel_bdev_io *io)
{
	struct uring_channel *ch = keel_io_channel_get_ctx(_ch);

	switch (io->type) {
	case KEEL_BDEV_IO_READ:
	case KEEL_BDEV_IO_WRITE:
		uring_prep_rw(io);
		break;
	case KEEL_BDEV_IO_FLUSH:
		uring_prep_fsync(io);
		break;
	case KEEL_BDEV_IO_UNMAP:
		uring_prep_unmap(io);
		break;
	case KEEL_BDEV_IO_WRITE_ZEROES:
		uring_prep_write_zeroes(io);
		break;
	case KEEL_BDEV_IO_RESET:
		/* The core already waited for everything submitted before the reset. */
		keel_bdev_io_complete(io, 0);
		return;
	case KEEL_BDEV_IO_GET_ALLOCATION: {
		int rc = keel_spawn_blocking(uring_allocation_job, io, uring_allocation_done, io);

		if (rc != 0) {
			keel_bdev_io_complete(io, rc == -ENOMEM ? -ENOMEM : -EIO);
		}
		return;
	}
	default:
		keel_bdev_io_complete(io, -ENOTSUP);
		return;
	}
	bdev_uring_queue_push(&ch->queue, io);
}

static bool uring_io_type_supported(void *ctxt, enum keel_bdev_io_type type)
{
	struct uring_disk *disk = ctxt;

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

static int uring_channel_create(void *io_device, void *ctx_buf)
{
	struct uring_disk *disk = io_device;
	struct uring_channel *ch = ctx_buf;

	ch->disk = disk;
	return bdev_uring_queue_init(&ch->queue, disk->fd, &disk->counters, disk->bdev.name);
}

static void uring_channel_destroy(void *io_device, void *ctx_buf)
{
	struct uring_channel *ch = ctx_buf;

	bdev_uring_queue_fini(&ch->queue);
}

static struct keel_io_channel *uring_get_io_channel(void *ctxt)
{
	return keel_get_io_channel(ctxt);
}

/* ------------------------------------------------------------------------------ */
/* Destruct and delete                                                             */
/* ------------------------------------------------------------------------------ */

static int uring_close_job(void *arg)
{
	int fd = (int)(intptr_t)arg;

	return close(fd) == 0 ? 0 : -errno;
}

static void uring_close_job_done(void *cb_arg, int rc)
{
}

/* Close \p fd on the pool (close may flush); right here without a pool. */
static void uring_close_async(int fd)
{
	if (keel_thread_get_current() == NULL ||
	    keel_spawn_blocking(uring_close_job, (void *)(intptr_t)fd, uring_close_job_done,
				NULL) != 0) {
		close(fd);
	}
}

static void uring_disk_closed(void *cb_arg, int rc)
{
	struct uring_disk *disk = cb_arg;

	if (rc != 0) {
		KEEL_WARNLOG("uring bdev %s: close %s: %s", disk->bdev.name, disk->filename,
			     strerror(-rc));
	}
	disk->fd = -1;
	keel_bdev_destruct_done(&disk->bdev);
	uring_disk_free(disk);
}

/*
 * Every channel is gone (and with them the file's ring registrations). Close the file
 * before reporting the delete done, so the caller may unlink, unmount or reopen it as
 * soon as its callback runs.
 */
static void uring_io_device_unregistered(void *io_device)
{
	struct uring_disk *disk = io_device;

	if (keel_spawn_blocking(uring_close_job, (void *)(intptr_t)disk->fd, uring_disk_closed,
				disk) != 0) {
		uring_disk_closed(disk, uring_close_job((void *)(intptr_t)disk->fd));
	}
}

static int uring_destruct(void *ctxt)
{
	struct uring_disk *disk = ctxt;

	keel_io_device_unregister(disk, uring_io_device_unregistered);
	return 1;
}

static void uring_dump_info_json(void *ctxt, struct json_t *obj)
{
	struct uring_disk *disk = ctxt;

	json_object_set_new(obj, "filename", json_string(disk->filename));
	json_object_set_new(obj, "block_size", json_integer(disk->bdev.block_size));
	json_object_set_new(obj, "direct", json_boolean(disk->direct));
	json_object_set_new(obj, "inline_issue", json_boolean(disk->inline_issue));
	if (disk->for_aio) {
		/* Asked for as an aio bdev; O_DIRECT was refused, so io_uring serves it. */
		json_object_set_new(obj, "requested_as", json_string("aio"));
	}
}

static const struct keel_bdev_fn_table g_uring_fn_table = {
	.destruct = uring_destruct,
	.submit_request = uring_submit_request,
	.io_type_supported = uring_io_type_supported,
	.get_io_channel = uring_get_io_channel,
	.dump_info_json = uring_dump_info_json,
};

int keel_bdev_uring_delete(const char *name, keel_bdev_done_cb cb_fn, void *cb_arg)
{
	struct keel_bdev *bdev;

	if (name == NULL) {
		return -ENODEV;
	}
	bdev = keel_bdev_get_by_name(name);
	if (uring_disk_from_bdev(bdev) == NULL) {
		return -ENODEV;
	}
	keel_bdev_unregister(bdev, cb_fn, cb_arg);
	return 0;
}

/* ------------------------------------------------------------------------------ */
/* Create                                                                          */
/* ------------------------------------------------------------------------------ */

/* Runs on the blocking pool: the io_uring probe and everything that may sleep. */
static int uring_open_job(void *arg)
{
	struct uring_disk *disk = arg;
	struct bdev_file f;
	int rc;

	rc = bdev_uring_probe(disk->why, sizeof(disk->why));
	if (rc != 0) {
		KEEL_ERRLOG("uring bdev %s: io_uring is unavailable: %s; use an aio bdev instead",
			    disk->bdev.name, disk->why);
		return -ENOTSUP;
	}
	rc = bdev_file_open("uring", disk->bdev.name, disk->filename, disk->requested_block_size,
			    disk->refuse_direct, &f);
	if (rc != 0) {
		return rc;
	}
	disk->fd = f.fd;
	disk->direct = f.direct;
	disk->is_blockdev = f.is_blockdev;
	disk->punch_hole_ok = f.punch_hole_ok;
	disk->inline_issue = f.nowait;
	disk->direct_errno = f.direct_errno;
	disk->dio_align = f.dio_align;
	disk->bdev.block_size = f.block_size;
	disk->bdev.num_blocks = f.num_blocks;
	disk->bdev.required_alignment = f.direct ? f.block_size : 1;
	disk->bdev.max_transfer_blocks = URING_MAX_TRANSFER_BYTES / f.block_size;
	return 0;
}

static void uring_create_fail(struct uring_disk *disk, int rc)
{
	keel_bdev_create_cb cb_fn = disk->create_cb;
	void *arg = disk->create_cb_arg;

	if (disk->fd >= 0) {
		uring_close_async(disk->fd);
	}
	uring_disk_free(disk);
	cb_fn(arg, rc, NULL);
}

/* keel_bdev_register failed after the io_device existed: finish once it is gone. */
static void uring_create_fail_unregistered(void *io_device)
{
	struct uring_disk *disk = io_device;

	uring_create_fail(disk, disk->create_status);
}

static void uring_open_done(void *cb_arg, int rc)
{
	struct uring_disk *disk = cb_arg;

	if (rc != 0) {
		uring_create_fail(disk, rc);
		return;
	}
	if (disk->dio_align != 0) {
		KEEL_WARNLOG("uring bdev %s: block size %u is below the O_DIRECT alignment %u of "
			     "%s; using buffered I/O through the page cache",
			     disk->bdev.name, disk->bdev.block_size, disk->dio_align,
			     disk->filename);
	} else if (!disk->direct) {
		KEEL_WARNLOG("uring bdev %s: %s does not support O_DIRECT (%s); using buffered "
			     "I/O through the page cache",
			     disk->bdev.name, disk->filename, strerror(disk->direct_errno));
	}

	if (!disk->inline_issue) {
		KEEL_NOTICELOG("uring bdev %s: the filesystem of %s cannot say when a request "
			       "would block (no RWF_NOWAIT, e.g. tmpfs), so io_uring hands every "
			       "request to a kernel worker thread: an aio bdev costs less CPU here",
			       disk->bdev.name, disk->filename);
	}

	rc = keel_io_device_register(disk, uring_channel_create, uring_channel_destroy,
				     sizeof(struct uring_channel), disk->io_device_name);
	if (rc != 0) {
		KEEL_ERRLOG("uring bdev %s: cannot register io_device: %s", disk->bdev.name,
			    strerror(-rc));
		uring_create_fail(disk, rc);
		return;
	}
	rc = keel_bdev_register(&disk->bdev);
	if (rc != 0) {
		KEEL_ERRLOG("uring bdev %s: register failed: %s", disk->bdev.name, strerror(-rc));
		disk->create_status = rc;
		keel_io_device_unregister(disk, uring_create_fail_unregistered);
		return;
	}
	KEEL_NOTICELOG("uring bdev %s: %s, %" PRIu64 " blocks of %u bytes, %s", disk->bdev.name,
		       disk->filename, disk->bdev.num_blocks, disk->bdev.block_size,
		       disk->direct ? "O_DIRECT"
				    : "buffered (page cache; io_uring keeps it off the reactor)");
	disk->create_cb(disk->create_cb_arg, 0, &disk->bdev);
}

static int uring_create(const char *name, const char *filename, uint32_t block_size, bool for_aio,
			keel_bdev_create_cb cb_fn, void *cb_arg)
{
	struct uring_disk *disk;
	int rc;

	rc = bdev_file_check_create("uring", name, filename, block_size, cb_fn != NULL);
	if (rc != 0) {
		return rc;
	}
	if (!bdev_uring_groups_ready()) {
		KEEL_ERRLOG("uring bdev %s: the uring module is not registered", name);
		return -ENODEV;
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
	disk->fua_native = true;
	disk->zero_range_ok = true;
	disk->blk_punch_ok = true;
	disk->refuse_direct = for_aio || __atomic_load_n(&g_refuse_direct, __ATOMIC_RELAXED);
	disk->for_aio = for_aio;
	disk->requested_block_size = block_size;
	disk->create_cb = cb_fn;
	disk->create_cb_arg = cb_arg;
	snprintf(disk->io_device_name, sizeof(disk->io_device_name), "uring:%s", name);
	disk->bdev.product_name = "URING disk";
	disk->bdev.write_cache = true;
	/* Every thread writes the same file; fsync flushes them all. */
	disk->bdev.multi_conn_safe = true;
	disk->bdev.ctxt = disk;
	disk->bdev.fn_table = &g_uring_fn_table;
	disk->bdev.module = &keel_bdev_uring_module;

	rc = keel_spawn_blocking(uring_open_job, disk, uring_open_done, disk);
	if (rc != 0) {
		goto out_free_disk;
	}
	return 0;

out_free_disk:
	uring_disk_free(disk);
	return rc;
}

int keel_bdev_uring_create(const char *name, const char *filename, uint32_t block_size,
			   keel_bdev_create_cb cb_fn, void *cb_arg)
{
	return uring_create(name, filename, block_size, false, cb_fn, cb_arg);
}

int bdev_uring_create_for_aio(const char *name, const char *filename, uint32_t block_size,
			      keel_bdev_create_cb cb_fn, void *cb_arg)
{
	return uring_create(name, filename, block_size, true, cb_fn, cb_arg);
}

bool bdev_uring_is_for_aio(struct keel_bdev *bdev)
{
	struct uring_disk *disk = uring_disk_from_bdev(bdev);

	return disk != NULL && disk->for_aio;
}

bool keel_bdev_uring_available(char *why, size_t len)
{
	return bdev_uring_probe(why, len) == 0;
}

/* ------------------------------------------------------------------------------ */
/* Module                                                                          */
/* ------------------------------------------------------------------------------ */

struct uring_startup_probe {
	int rc;
	char why[200];
};

static int uring_startup_probe_job(void *arg)
{
	struct uring_startup_probe *p = arg;

	p->rc = bdev_uring_probe(p->why, sizeof(p->why));
	return p->rc;
}

static void uring_startup_probe_done(void *cb_arg, int rc)
{
	struct uring_startup_probe *p = cb_arg;

	if (rc == 0) {
		KEEL_NOTICELOG("uring: io_uring is available; uring bdevs share one ring per "
			       "keel thread");
	} else {
		KEEL_WARNLOG("uring: io_uring is unavailable: %s; uring bdevs cannot be created "
			     "(aio bdevs work)",
			     p->why);
	}
	free(p);
}

/*
 * Say at start whether io_uring can be used, without failing the start when it
 * cannot: the probe opens a ring, so it runs on the blocking pool.
 */
static int uring_module_init(void)
{
	struct uring_startup_probe *p;
	int rc;

	rc = bdev_uring_groups_init();
	if (rc != 0) {
		return rc;
	}
	p = calloc(1, sizeof(*p));
	if (p == NULL ||
	    keel_spawn_blocking(uring_startup_probe_job, p, uring_startup_probe_done, p) != 0) {
		free(p);
	}
	return 0;
}

static void uring_module_fini(void)
{
	bdev_uring_groups_fini();
}

static uint32_t uring_get_ctx_size(void)
{
	return sizeof(struct uring_io_ctx);
}

struct keel_bdev_module keel_bdev_uring_module = {
	.name = "uring",
	.module_init = uring_module_init,
	.module_fini = uring_module_fini,
	.get_ctx_size = uring_get_ctx_size,
};

/* ------------------------------------------------------------------------------ */
/* Knobs (bdev_uring_internal.h)                                                   */
/* ------------------------------------------------------------------------------ */

void bdev_uring_set_refuse_direct(bool refuse)
{
	__atomic_store_n(&g_refuse_direct, refuse, __ATOMIC_RELAXED);
}

int bdev_uring_set_native_fua(struct keel_bdev *bdev, bool fua_native)
{
	struct uring_disk *disk = uring_disk_from_bdev(bdev);

	if (disk == NULL) {
		return -EINVAL;
	}
	__atomic_store_n(&disk->fua_native, fua_native, __ATOMIC_RELAXED);
	return 0;
}

int bdev_uring_get_counters(struct keel_bdev *bdev, struct bdev_uring_counters *out)
{
	struct uring_disk *disk = uring_disk_from_bdev(bdev);

	if (disk == NULL || out == NULL) {
		return -EINVAL;
	}
	out->sqes = __atomic_load_n(&disk->counters.sqes, __ATOMIC_RELAXED);
	out->cqes = __atomic_load_n(&disk->counters.cqes, __ATOMIC_RELAXED);
	out->waited = __atomic_load_n(&disk->counters.waited, __ATOMIC_RELAXED);
	out->fixed_file_sqes = __atomic_load_n(&disk->counters.fixed_file_sqes, __ATOMIC_RELAXED);
	return 0;
}

bool bdev_uring_is_direct(struct keel_bdev *bdev)
{
	struct uring_disk *disk = uring_disk_from_bdev(bdev);

	return disk != NULL && disk->direct;
}
