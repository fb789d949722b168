/*
 * aio bdev unit tests against real files, real reactors (cpus 0-1) and the real bdev
 * core. CUnit runs on a plain pthread; every step is a message to a keel thread and
 * the test waits for its callback, so the module runs exactly as in keeld.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <jansson.h>

#include "keel/bdev.h"
#include "keel/bdev_module.h"
#include "keel/log.h"
#include "keel/reactor.h"

#include "bdev/aio/bdev_aio_internal.h"
#include "ut_cunit.h"

#ifndef AIO_UT_DIR
#define AIO_UT_DIR "."
#endif

#define UT_WAIT_SECONDS 20
#define UT_MIB (1024u * 1024u)

static struct keel_thread *g_thread[2]; /* one keel thread per reactor */
static int g_cunit_failures;
static int g_init_status;

/* ------------------------------------------------------------------------------ */
/* Log capture                                                                     */
/* ------------------------------------------------------------------------------ */

static pthread_mutex_t g_log_lock = PTHREAD_MUTEX_INITIALIZER;
static char g_log_buf[16384];
static size_t g_log_len;

static void ut_log_hook(enum keel_log_level level, const char *line, void *ctx)
{
	size_t len = strlen(line);

	if (level > KEEL_LOG_WARN) {
		return;
	}
	pthread_mutex_lock(&g_log_lock);
	if (g_log_len + len + 2 < sizeof(g_log_buf)) {
		memcpy(g_log_buf + g_log_len, line, len);
		g_log_len += len;
		g_log_buf[g_log_len++] = '\n';
		g_log_buf[g_log_len] = '\0';
	}
	pthread_mutex_unlock(&g_log_lock);
}

static void ut_log_clear(void)
{
	pthread_mutex_lock(&g_log_lock);
	g_log_len = 0;
	g_log_buf[0] = '\0';
	pthread_mutex_unlock(&g_log_lock);
}

/* A WARN/ERROR line containing every one of \p a and \p b. */
static bool ut_log_has(const char *a, const char *b)
{
	bool found = false;
	char *line, *save = NULL, *copy;

	pthread_mutex_lock(&g_log_lock);
	copy = strdup(g_log_buf);
	pthread_mutex_unlock(&g_log_lock);
	if (copy == NULL) {
		return false;
	}
	for (line = strtok_r(copy, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
		if (strstr(line, a) != NULL && (b == NULL || strstr(line, b) != NULL)) {
			found = true;
		}
	}
	free(copy);
	return found;
}

/* ------------------------------------------------------------------------------ */
/* Running steps on keel threads                                                   */
/* ------------------------------------------------------------------------------ */

struct ut_op {
	sem_t done;
	int sync_rc; /* what the API call returned */
	int status;  /* what its callback said */
	bool cb_ran;
	bool in_call; /* set while inside the API call: a callback here is a bug */
	bool cb_in_call;
	struct keel_bdev *bdev;
	const char *name;
	const char *filename;
	uint32_t block_size;
};

static void ut_op_init(struct ut_op *op)
{
	memset(op, 0, sizeof(*op));
	sem_init(&op->done, 0, 0);
}

static void ut_op_signal(struct ut_op *op, int status)
{
	op->status = status;
	op->cb_ran = true;
	if (op->in_call) {
		op->cb_in_call = true;
	}
	sem_post(&op->done);
}

static void ut_op_wait(struct ut_op *op)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += UT_WAIT_SECONDS;
	while (sem_timedwait(&op->done, &ts) != 0) {
		if (errno == EINTR) {
			continue;
		}
		fprintf(stderr, "aio_ut: a step did not complete within %d s\n", UT_WAIT_SECONDS);
		abort();
	}
	sem_destroy(&op->done);
}

static void ut_send(struct keel_thread *thread, keel_msg_fn fn, void *arg)
{
	int rc;

	while ((rc = keel_thread_send_msg(thread, fn, arg)) == -ENOMEM) {
		usleep(100);
	}
	if (rc != 0) {
		fprintf(stderr, "aio_ut: send_msg: %s\n", strerror(-rc));
		abort();
	}
}

/* create / delete */

static void ut_create_cb(void *cb_arg, int status, struct keel_bdev *bdev)
{
	struct ut_op *op = cb_arg;

	op->bdev = bdev;
	ut_op_signal(op, status);
}

static void ut_create_msg(void *arg)
{
	struct ut_op *op = arg;

	op->in_call = true;
	op->sync_rc = keel_bdev_aio_create(op->name, op->filename, op->block_size, ut_create_cb,
					   op);
	op->in_call = false;
	if (op->sync_rc != 0) {
		sem_post(&op->done);
	}
}

/* \return the synchronous error, else the callback's status. */
static int ut_create(const char *name, const char *filename, uint32_t block_size,
		     struct keel_bdev **bdev)
{
	struct ut_op op;

	ut_op_init(&op);
	op.name = name;
	op.filename = filename;
	op.block_size = block_size;
	ut_send(g_thread[0], ut_create_msg, &op);
	ut_op_wait(&op);
	CU_ASSERT(!op.cb_in_call);
	if (op.sync_rc != 0) {
		CU_ASSERT(!op.cb_ran);
		return op.sync_rc;
	}
	CU_ASSERT(op.cb_ran);
	CU_ASSERT((op.status == 0) == (op.bdev != NULL));
	if (bdev != NULL) {
		*bdev = op.bdev;
	}
	return op.status;
}

static void ut_done_cb(void *cb_arg, int status)
{
	ut_op_signal(cb_arg, status);
}

static void ut_delete_msg(void *arg)
{
	struct ut_op *op = arg;

	op->in_call = true;
	op->sync_rc = keel_bdev_aio_delete(op->name, ut_done_cb, op);
	op->in_call = false;
	if (op->sync_rc != 0) {
		sem_post(&op->done);
	}
}

static int ut_delete(const char *name)
{
	struct ut_op op;

	ut_op_init(&op);
	op.name = name;
	ut_send(g_thread[0], ut_delete_msg, &op);
	ut_op_wait(&op);
	CU_ASSERT(!op.cb_in_call);
	if (op.sync_rc != 0) {
		CU_ASSERT(!op.cb_ran);
		return op.sync_rc;
	}
	return op.status;
}

/* descriptors and I/O; a ut_dev lives on one keel thread */

struct ut_dev {
	struct keel_thread *thread;
	const char *name;
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	struct keel_bdev *bdev;
	uint32_t block_size;
	uint64_t num_blocks;
	uint32_t align;
	bool direct;
};

struct ut_io {
	struct ut_op op;
	struct ut_dev *dev;
	enum keel_bdev_io_type type;
	struct iovec *iov;
	int iovcnt;
	uint64_t offset;
	uint64_t len;
	uint32_t flags;
	/* batches */
	uint32_t count; /* requests in the batch */
	uint32_t qd;
	uint32_t submitted;
	uint32_t completed;
	int first_error;
	char *base; /* batch buffer: count * len bytes */
	uint64_t stride_offset;
};

static void ut_event_cb(enum keel_bdev_event_type type, struct keel_bdev *bdev, void *ctx)
{
}

static void ut_open_msg(void *arg)
{
	struct ut_io *io = arg;
	struct ut_dev *dev = io->dev;
	int rc;

	rc = keel_bdev_open_ext(dev->name, true, ut_event_cb, NULL, &dev->desc);
	if (rc == 0) {
		dev->ch = keel_bdev_get_io_channel(dev->desc);
		if (dev->ch == NULL) {
			keel_bdev_close(dev->desc);
			rc = -ENOMEM;
		} else {
			dev->bdev = keel_bdev_desc_get_bdev(dev->desc);
			dev->block_size = keel_bdev_get_block_size(dev->bdev);
			dev->num_blocks = keel_bdev_get_num_blocks(dev->bdev);
			dev->align = keel_bdev_get_buf_align(dev->bdev);
			dev->direct = bdev_aio_is_direct(dev->bdev);
		}
	}
	ut_op_signal(&io->op, rc);
}

static int ut_open(struct ut_dev *dev, const char *name, int thread_idx)
{
	struct ut_io io;

	memset(dev, 0, sizeof(*dev));
	dev->thread = g_thread[thread_idx];
	dev->name = name;
	memset(&io, 0, sizeof(io));
	ut_op_init(&io.op);
	io.dev = dev;
	ut_send(dev->thread, ut_open_msg, &io);
	ut_op_wait(&io.op);
	return io.op.status;
}

static void ut_close_msg(void *arg)
{
	struct ut_io *io = arg;

	keel_put_io_channel(io->dev->ch);
	keel_bdev_close(io->dev->desc);
	ut_op_signal(&io->op, 0);
}

static void ut_close(struct ut_dev *dev)
{
	struct ut_io io;

	memset(&io, 0, sizeof(io));
	ut_op_init(&io.op);
	io.dev = dev;
	ut_send(dev->thread, ut_close_msg, &io);
	ut_op_wait(&io.op);
}

static void ut_io_cb(void *cb_arg, int status)
{
	ut_op_signal(cb_arg, status);
}

static int ut_io_submit(struct ut_io *io, struct iovec *iov, int iovcnt, uint64_t offset,
			uint64_t len, keel_bdev_io_cb cb, void *cb_arg)
{
	struct ut_dev *dev = io->dev;

	switch (io->type) {
	case KEEL_BDEV_IO_READ:
		return keel_bdev_readv(dev->desc, dev->ch, iov, iovcnt, offset, len, cb, cb_arg);
	case KEEL_BDEV_IO_WRITE:
		return keel_bdev_writev(dev->desc, dev->ch, iov, iovcnt, offset, len, io->flags, cb,
					cb_arg);
	case KEEL_BDEV_IO_FLUSH:
		return keel_bdev_flush(dev->desc, dev->ch, offset, len, cb, cb_arg);
	case KEEL_BDEV_IO_UNMAP:
		return keel_bdev_unmap(dev->desc, dev->ch, offset, len, cb, cb_arg);
	case KEEL_BDEV_IO_WRITE_ZEROES:
		return keel_bdev_write_zeroes_ext(dev->desc, dev->ch, offset, len, io->flags, cb,
						  cb_arg);
	case KEEL_BDEV_IO_RESET:
		return keel_bdev_reset(dev->desc, dev->ch, cb, cb_arg);
	case KEEL_BDEV_IO_GET_ALLOCATION: /* iov[0] is the extents array */
		return keel_bdev_get_allocation(
			dev->desc, dev->ch, offset, len, iov[0].iov_base,
			(uint32_t)(iov[0].iov_len / sizeof(struct keel_bdev_extent)), cb, cb_arg);
	default:
		return -EINVAL;
	}
}

static void ut_io_msg(void *arg)
{
	struct ut_io *io = arg;

	io->op.in_call = true;
	io->op.sync_rc = ut_io_submit(io, io->iov, io->iovcnt, io->offset, io->len, ut_io_cb,
				      &io->op);
	io->op.in_call = false;
	if (io->op.sync_rc != 0) {
		sem_post(&io->op.done);
	}
}

/* One request; \return the synchronous error or the completion status. */
static int ut_iov_io(struct ut_dev *dev, enum keel_bdev_io_type type, struct iovec *iov, int iovcnt,
		     uint64_t offset, uint64_t len, uint32_t flags)
{
	struct ut_io io;

	memset(&io, 0, sizeof(io));
	ut_op_init(&io.op);
	io.dev = dev;
	io.type = type;
	io.iov = iov;
	io.iovcnt = iovcnt;
	io.offset = offset;
	io.len = len;
	io.flags = flags;
	ut_send(dev->thread, ut_io_msg, &io);
	ut_op_wait(&io.op);
	CU_ASSERT(!io.op.cb_in_call);
	return io.op.sync_rc != 0 ? io.op.sync_rc : io.op.status;
}

static int ut_buf_io(struct ut_dev *dev, enum keel_bdev_io_type type, void *buf, uint64_t offset,
		     uint64_t len, uint32_t flags)
{
	struct iovec iov = {.iov_base = buf, .iov_len = len};

	return ut_iov_io(dev, type, &iov, 1, offset, len, flags);
}

/* Batches: keep io->qd requests of io->len bytes in flight, io->count in total. */
static void ut_batch_submit(struct ut_io *io);

static void ut_batch_cb(void *cb_arg, int status)
{
	struct ut_io *io = cb_arg;

	io->completed++;
	if (status != 0 && io->first_error == 0) {
		io->first_error = status;
	}
	if (io->completed == io->count) {
		ut_op_signal(&io->op, io->first_error);
		return;
	}
	ut_batch_submit(io);
}

static void ut_batch_submit(struct ut_io *io)
{
	while (io->submitted < io->count && io->submitted - io->completed < io->qd) {
		uint32_t i = io->submitted;
		struct iovec iov = {.iov_base = io->base + (uint64_t)i * io->len,
				    .iov_len = io->len};
		int rc;

		/* the core copies the iovec array into the request before returning */
		rc = ut_io_submit(io, &iov, 1, io->stride_offset + (uint64_t)i * io->len, io->len,
				  ut_batch_cb, io);
		if (rc != 0) {
			fprintf(stderr, "aio_ut: batch submit failed: %s\n", strerror(-rc));
			abort();
		}
		io->submitted++;
	}
}

static void ut_batch_msg(void *arg)
{
	ut_batch_submit(arg);
}

static void ut_batch_start(struct ut_io *io, struct ut_dev *dev, enum keel_bdev_io_type type,
			   char *base, uint64_t offset, uint32_t len, uint32_t count, uint32_t qd)
{
	memset(io, 0, sizeof(*io));
	ut_op_init(&io->op);
	io->dev = dev;
	io->type = type;
	io->base = base;
	io->stride_offset = offset;
	io->len = len;
	io->count = count;
	io->qd = qd;
	ut_send(dev->thread, ut_batch_msg, io);
}

/* ------------------------------------------------------------------------------ */
/* Files                                                                           */
/* ------------------------------------------------------------------------------ */

static void ut_make_file(const char *path, off_t size)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);

	CU_ASSERT_FATAL(fd >= 0);
	CU_ASSERT_FATAL(ftruncate(fd, size) == 0);
	close(fd);
}

static void ut_path(char *buf, size_t len, const char *dir, const char *leaf)
{
	snprintf(buf, len, "%s/aio-ut-%d-%s", dir, (int)getpid(), leaf);
}

static void *ut_alloc(size_t len)
{
	void *buf = aligned_alloc(4096, (len + 4095) & ~(size_t)4095);

	CU_ASSERT_FATAL(buf != NULL);
	return buf;
}

static void ut_fill(void *buf, size_t len, unsigned seed)
{
	unsigned char *p = buf;
	size_t i;

	for (i = 0; i < len; i++) {
		p[i] = (unsigned char)(seed * 31u + i * 7u + (i >> 9));
	}
}

static bool ut_is_zero(const void *buf, size_t len)
{
	const unsigned char *p = buf;
	size_t i;

	for (i = 0; i < len; i++) {
		if (p[i] != 0) {
			return false;
		}
	}
	return true;
}

/* What the file itself holds, bypassing keel. */
static bool ut_file_matches(const char *path, uint64_t offset, const void *expect, size_t len)
{
	void *buf = malloc(len);
	int fd = open(path, O_RDONLY);
	bool ok;

	ok = buf != NULL && fd >= 0 && pread(fd, buf, len, (off_t)offset) == (ssize_t)len &&
	     memcmp(buf, expect, len) == 0;
	if (fd >= 0) {
		close(fd);
	}
	free(buf);
	return ok;
}

/* ------------------------------------------------------------------------------ */
/* dump_info_json, counters                                                        */
/* ------------------------------------------------------------------------------ */

struct ut_dump {
	struct ut_op op;
	struct keel_bdev *bdev;
	char text[512];
};

static void ut_dump_msg(void *arg)
{
	struct ut_dump *d = arg;
	json_t *obj = json_object();
	char *s;

	d->bdev->fn_table->dump_info_json(d->bdev->ctxt, obj);
	s = json_dumps(obj, JSON_COMPACT | JSON_SORT_KEYS);
	snprintf(d->text, sizeof(d->text), "%s", s != NULL ? s : "");
	free(s);
	json_decref(obj);
	ut_op_signal(&d->op, 0);
}

static void ut_dump(struct keel_bdev *bdev, char *out, size_t len)
{
	struct ut_dump d;

	memset(&d, 0, sizeof(d));
	ut_op_init(&d.op);
	d.bdev = bdev;
	ut_send(g_thread[0], ut_dump_msg, &d);
	ut_op_wait(&d.op);
	snprintf(out, len, "%s", d.text);
}

/* Live shared io_contexts of the module (one per keel thread with aio channels). */
static uint32_t ut_aio_contexts(void)
{
	struct bdev_aio_module_stats st;

	bdev_aio_get_module_stats(&st);
	return st.contexts;
}

/* ------------------------------------------------------------------------------ */
/* The read-after-write suite every backing store goes through                     */
/* ------------------------------------------------------------------------------ */

static void ut_rw_suite(struct ut_dev *dev, const char *path)
{
	const uint32_t len = 64 * 1024;
	char *wbuf = ut_alloc(len), *rbuf = ut_alloc(len + 4096);
	struct iovec wiov[3], riov[3];
	uint64_t bs = dev->block_size;
	uint64_t off;
	struct bdev_aio_counters before, after;

	CU_ASSERT_FATAL(dev->num_blocks * bs >= 8 * UT_MIB);

	/* write / read, one iovec */
	ut_fill(wbuf, len, 1);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_WRITE, wbuf, 0, len, 0) == 0);
	memset(rbuf, 0xee, len);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_READ, rbuf, 0, len, 0) == 0);
	CU_ASSERT(memcmp(wbuf, rbuf, len) == 0);
	if (path != NULL) {
		CU_ASSERT(ut_file_matches(path, 0, wbuf, len));
	}

	/* writev / readv with uneven block-multiple segments */
	ut_fill(wbuf, len, 2);
	wiov[0] = (struct iovec){wbuf, bs};
	wiov[1] = (struct iovec){wbuf + bs, len - 4 * bs};
	wiov[2] = (struct iovec){wbuf + len - 3 * bs, 3 * bs};
	off = UT_MIB;
	CU_ASSERT(ut_iov_io(dev, KEEL_BDEV_IO_WRITE, wiov, 3, off, len, 0) == 0);
	memset(rbuf, 0xee, len);
	riov[0] = (struct iovec){rbuf, 3 * bs};
	riov[1] = (struct iovec){rbuf + 3 * bs, len - 5 * bs};
	riov[2] = (struct iovec){rbuf + len - 2 * bs, 2 * bs};
	CU_ASSERT(ut_iov_io(dev, KEEL_BDEV_IO_READ, riov, 3, off, len, 0) == 0);
	CU_ASSERT(memcmp(wbuf, rbuf, len) == 0);
	if (path != NULL) {
		CU_ASSERT(ut_file_matches(path, off, wbuf, len));
	}

	/* FUA write (RWF_DSYNC), flush (aio fdsync) */
	ut_fill(wbuf, len, 3);
	off = 2 * UT_MIB;
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_WRITE, wbuf, off, len, KEEL_BDEV_IO_FLAG_FUA) == 0);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_FLUSH, NULL, 0, dev->num_blocks * bs, 0) == 0);
	memset(rbuf, 0xee, len);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_READ, rbuf, off, len, 0) == 0);
	CU_ASSERT(memcmp(wbuf, rbuf, len) == 0);

	/* The same with the kernel "refusing" both: write+fdatasync on the pool. */
	CU_ASSERT(bdev_aio_get_counters(dev->bdev, &before) == 0);
	CU_ASSERT(bdev_aio_set_native_sync(dev->bdev, false, false) == 0);
	ut_fill(wbuf, len, 4);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_WRITE, wbuf, off, len, KEEL_BDEV_IO_FLAG_FUA) == 0);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_FLUSH, NULL, 0, dev->num_blocks * bs, 0) == 0);
	CU_ASSERT(bdev_aio_get_counters(dev->bdev, &after) == 0);
	CU_ASSERT(after.pool_ops >= before.pool_ops + 2);
	CU_ASSERT(bdev_aio_set_native_sync(dev->bdev, true, true) == 0);
	memset(rbuf, 0xee, len);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_READ, rbuf, off, len, 0) == 0);
	CU_ASSERT(memcmp(wbuf, rbuf, len) == 0);

	/* unmap reads back zeroes, neighbours untouched (where the fs can punch holes) */
	off = 3 * UT_MIB;
	ut_fill(wbuf, len, 5);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_WRITE, wbuf, off, len, 0) == 0);
	if (keel_bdev_io_type_supported(dev->bdev, KEEL_BDEV_IO_UNMAP)) {
		CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_UNMAP, NULL, off + 8192, 16384, 0) == 0);
		memset(rbuf, 0xee, len);
		CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_READ, rbuf, off, len, 0) == 0);
		CU_ASSERT(memcmp(rbuf, wbuf, 8192) == 0);
		CU_ASSERT(ut_is_zero(rbuf + 8192, 16384));
		CU_ASSERT(memcmp(rbuf + 24576, wbuf + 24576, len - 24576) == 0);
	} else {
		printf("\n  (%s: no hole punching, unmap unsupported) ", dev->name);
		CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_UNMAP, NULL, off, 4096, 0) == -ENOTSUP);
	}

	/* write_zeroes reads back zeroes, including a range that is not page aligned */
	off = 4 * UT_MIB;
	ut_fill(wbuf, len, 6);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_WRITE, wbuf, off, len, 0) == 0);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_WRITE_ZEROES, NULL, off + bs, len - 3 * bs, 0) == 0);
	memset(rbuf, 0xee, len);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_READ, rbuf, off, len, 0) == 0);
	CU_ASSERT(memcmp(rbuf, wbuf, bs) == 0);
	CU_ASSERT(ut_is_zero(rbuf + bs, len - 3 * bs));
	CU_ASSERT(memcmp(rbuf + len - 2 * bs, wbuf + len - 2 * bs, 2 * bs) == 0);
	if (path != NULL) {
		CU_ASSERT(ut_file_matches(path, off + bs, rbuf + bs, len - 3 * bs));
	}

	/* misaligned buffers: the core bounces them where O_DIRECT needs alignment */
	off = 5 * UT_MIB;
	ut_fill(rbuf + 8, len, 7);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_WRITE, rbuf + 8, off, len, 0) == 0);
	memcpy(wbuf, rbuf + 8, len);
	memset(rbuf, 0xee, len + 64);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_READ, rbuf + 24, off, len, 0) == 0);
	CU_ASSERT(memcmp(rbuf + 24, wbuf, len) == 0);

	/* reset */
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_RESET, NULL, 0, 0, 0) == 0);

	/* the last block, and a read beyond the end is refused by the core */
	off = (dev->num_blocks - 1) * bs;
	ut_fill(wbuf, bs, 8);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_WRITE, wbuf, off, bs, 0) == 0);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_READ, rbuf, off, bs, 0) == 0);
	CU_ASSERT(memcmp(wbuf, rbuf, bs) == 0);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_READ, rbuf, off, 2 * bs, 0) == -EINVAL);

	/* completions came from the mapped ring, and submission was batched */
	CU_ASSERT(bdev_aio_get_counters(dev->bdev, &after) == 0);
	CU_ASSERT(after.ring_reaps > 0);
	CU_ASSERT(after.getevents_reaps == 0);
	CU_ASSERT(after.io_submit_calls <= after.iocbs_submitted);

	free(wbuf);
	free(rbuf);
}

/* ------------------------------------------------------------------------------ */
/* Tests                                                                           */
/* ------------------------------------------------------------------------------ */

static void test_direct_file(void)
{
	char path[512], json[512], expect[600];
	struct keel_bdev *bdev = NULL;
	struct ut_dev dev;

	ut_path(path, sizeof(path), AIO_UT_DIR, "direct.img");
	ut_make_file(path, 8 * UT_MIB);
	ut_log_clear();
	CU_ASSERT_FATAL(ut_create("aio_direct", path, 0, &bdev) == 0);
	CU_ASSERT(!ut_log_has("O_DIRECT", NULL));
	CU_ASSERT_FATAL(ut_open(&dev, "aio_direct", 0) == 0);
	CU_ASSERT(dev.direct);
	CU_ASSERT(dev.block_size >= 512);
	CU_ASSERT(dev.align == dev.block_size);
	CU_ASSERT(dev.num_blocks * dev.block_size == 8 * UT_MIB);
	CU_ASSERT(strcmp(keel_bdev_get_module_name(dev.bdev), "aio") == 0);
	CU_ASSERT(keel_bdev_has_write_cache(dev.bdev));
	ut_dump(bdev, json, sizeof(json));
	snprintf(expect, sizeof(expect),
		 "{\"block_size\":%u,\"direct\":true,\"filename\":\"%s\",\"io_path\":\"aio\"}",
		 dev.block_size, path);
	CU_ASSERT(strcmp(json, expect) == 0);

	ut_rw_suite(&dev, path);

	ut_close(&dev);
	CU_ASSERT(ut_delete("aio_direct") == 0);
	CU_ASSERT(ut_delete("aio_direct") == -ENODEV);
	unlink(path);
}

static void test_explicit_block_size(void)
{
	char path[512];
	struct ut_dev dev;

	ut_path(path, sizeof(path), AIO_UT_DIR, "bs4k.img");
	ut_make_file(path, 8 * UT_MIB);
	CU_ASSERT_FATAL(ut_create("aio_bs4k", path, 4096, NULL) == 0);
	CU_ASSERT_FATAL(ut_open(&dev, "aio_bs4k", 1) == 0);
	CU_ASSERT(dev.block_size == 4096);
	CU_ASSERT(dev.num_blocks == 2048);
	CU_ASSERT(dev.direct);
	CU_ASSERT(dev.align == 4096);
	ut_rw_suite(&dev, path);
	ut_close(&dev);
	CU_ASSERT(ut_delete("aio_bs4k") == 0);
	unlink(path);
}

/* Whether this kernel lets \p path be opened with O_DIRECT (tmpfs can since 6.6). */
static bool ut_direct_allowed(const char *path)
{
	int fd = open(path, O_RDWR | O_DIRECT);

	if (fd < 0) {
		return false;
	}
	close(fd);
	return true;
}

static void ut_buffered_case(const char *name, const char *path, bool expect_direct)
{
	char json[512];
	struct keel_bdev *bdev = NULL;
	struct ut_dev dev;

	ut_log_clear();
	CU_ASSERT_FATAL(ut_create(name, path, 0, &bdev) == 0);
	/* a fallback is announced, naming the file */
	CU_ASSERT(ut_log_has("O_DIRECT", path) == !expect_direct);
	CU_ASSERT_FATAL(ut_open(&dev, name, 1) == 0);
	CU_ASSERT(dev.direct == expect_direct);
	CU_ASSERT(dev.block_size == 512);
	CU_ASSERT(expect_direct ? dev.align == 512 : dev.align <= 1);
	ut_dump(bdev, json, sizeof(json));
	CU_ASSERT(strstr(json, expect_direct ? "\"direct\":true" : "\"direct\":false") != NULL);
	/* Buffered reads and writes never go through io_submit (synchronous there). */
	CU_ASSERT(strstr(json, expect_direct ? "\"io_path\":\"aio\""
					     : "\"io_path\":\"blocking_pool\"") != NULL);

	if (!expect_direct) {
		struct bdev_aio_counters before, after;
		char *buf = ut_alloc(8192);

		/* One write and one read: both on the pool, neither through io_submit. */
		ut_fill(buf, 8192, 7);
		CU_ASSERT(bdev_aio_get_counters(bdev, &before) == 0);
		CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_WRITE, buf, 4096, 8192, 0) == 0);
		CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_READ, buf, 4096, 8192, 0) == 0);
		CU_ASSERT(bdev_aio_get_counters(bdev, &after) == 0);
		CU_ASSERT(after.pool_ops == before.pool_ops + 2);
		CU_ASSERT(after.iocbs_submitted == before.iocbs_submitted);
		free(buf);
	}
	ut_rw_suite(&dev, path);

	ut_close(&dev);
	CU_ASSERT(ut_delete(name) == 0);
}

/* /dev/shm: buffered where tmpfs refuses O_DIRECT, direct where it accepts it. */
static void test_tmpfs(void)
{
	char path[512];
	struct stat st;

	if (stat("/dev/shm", &st) != 0) {
		ut_skip("no /dev/shm");
		return;
	}
	ut_path(path, sizeof(path), "/dev/shm", "tmpfs.img");
	ut_make_file(path, 8 * UT_MIB);
	ut_buffered_case("aio_tmpfs", path, ut_direct_allowed(path));
	unlink(path);
}

/*
 * The buffered fallback for real on ramfs (which refuses O_DIRECT) when we may mount
 * it, and through the "refuse O_DIRECT" knob in any case.
 */
static void test_buffered_fallback(void)
{
	char dir[512], path[600], cmd[700];
	bool mounted = false;

	snprintf(dir, sizeof(dir), "%s/ramfs-%d", AIO_UT_DIR, (int)getpid());
	if (geteuid() == 0 && mkdir(dir, 0700) == 0) {
		snprintf(cmd, sizeof(cmd), "mount -t ramfs none '%s' 2>/dev/null", dir);
		mounted = system(cmd) == 0;
		if (!mounted) {
			rmdir(dir);
		}
	}
	if (mounted) {
		snprintf(path, sizeof(path), "%s/ramfs.img", dir);
		ut_make_file(path, 8 * UT_MIB);
		if (ut_direct_allowed(path)) {
			ut_skip("ramfs accepts O_DIRECT on this kernel: no real fallback to test "
				"there (the knob case below still runs)");
		} else {
			ut_buffered_case("aio_ramfs", path, false);
		}
		unlink(path);
		snprintf(cmd, sizeof(cmd), "umount '%s'", dir);
		CU_ASSERT(system(cmd) == 0);
		rmdir(dir);
	} else {
		ut_skip("%s: the fallback runs through the knob only",
			geteuid() != 0 ? "not root, cannot mount ramfs" : "mount -t ramfs failed");
	}

	ut_path(path, sizeof(path), AIO_UT_DIR, "knob.img");
	ut_make_file(path, 8 * UT_MIB);
	bdev_aio_set_refuse_direct(true);
	ut_buffered_case("aio_knob", path, false);
	bdev_aio_set_refuse_direct(false);
	unlink(path);
}

static void test_create_errors(void)
{
	char path[512], longname[KEEL_BDEV_NAME_MAX + 8];
	struct keel_bdev *bdev = NULL;

	ut_log_clear();
	/* missing file */
	ut_path(path, sizeof(path), AIO_UT_DIR, "missing.img");
	unlink(path);
	CU_ASSERT(ut_create("aio_e", path, 0, NULL) == -ENOENT);
	CU_ASSERT(ut_log_has("aio_e", path));
	/* a directory */
	CU_ASSERT(ut_create("aio_e", AIO_UT_DIR, 0, NULL) == -EISDIR);
	CU_ASSERT(ut_log_has("directory", NULL));
	/* a path through a regular file, and a path longer than PATH_MAX */
	{
		char bad[5000];

		ut_path(path, sizeof(path), AIO_UT_DIR, "plain.img");
		ut_make_file(path, UT_MIB);
		snprintf(bad, sizeof(bad), "%s/sub", path);
		CU_ASSERT(ut_create("aio_e", bad, 0, NULL) == -ENOTDIR);
		unlink(path);
		memset(bad, 'x', sizeof(bad) - 1);
		bad[0] = '/';
		bad[sizeof(bad) - 1] = '\0';
		CU_ASSERT(ut_create("aio_e", bad, 0, NULL) == -ENAMETOOLONG);
	}
	/* neither a file nor a block device */
	CU_ASSERT(ut_create("aio_e", "/dev/null", 0, NULL) == -EINVAL);
	/* size not a multiple of the block size */
	ut_path(path, sizeof(path), AIO_UT_DIR, "odd.img");
	ut_make_file(path, 1000);
	ut_log_clear();
	CU_ASSERT(ut_create("aio_e", path, 0, NULL) == -EINVAL);
	CU_ASSERT(ut_log_has("not a multiple", path));
	ut_make_file(path, 6144);
	CU_ASSERT(ut_create("aio_e", path, 4096, NULL) == -EINVAL);
	CU_ASSERT(ut_create("aio_e", path, 2048, NULL) == 0);
	CU_ASSERT(ut_delete("aio_e") == 0);
	/* empty file */
	ut_make_file(path, 0);
	CU_ASSERT(ut_create("aio_e", path, 0, NULL) == -EINVAL);
	/* bad block sizes: refused at once */
	ut_make_file(path, UT_MIB);
	ut_log_clear();
	CU_ASSERT(ut_create("aio_e", path, 1000, NULL) == -EINVAL);
	CU_ASSERT(ut_log_has("block size 1000", NULL));
	CU_ASSERT(ut_create("aio_e", path, 256, NULL) == -EINVAL);
	CU_ASSERT(ut_create("aio_e", path, 3 * 512, NULL) == -EINVAL);
	CU_ASSERT(ut_create("aio_e", path, 1u << 20, NULL) == -EINVAL);
	/* bad arguments */
	CU_ASSERT(ut_create(NULL, path, 0, NULL) == -EINVAL);
	CU_ASSERT(ut_create("aio_e", NULL, 0, NULL) == -EINVAL);
	CU_ASSERT(ut_create("aio_e", "", 0, NULL) == -EINVAL);
	CU_ASSERT(ut_create("", path, 0, NULL) == -EINVAL);
	memset(longname, 'n', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	CU_ASSERT(ut_create(longname, path, 0, NULL) == -EINVAL);
	/* the core refuses names with '/' */
	CU_ASSERT(ut_create("aio/e", path, 0, NULL) == -EINVAL);
	/* duplicate name */
	CU_ASSERT_FATAL(ut_create("aio_dup", path, 0, &bdev) == 0);
	CU_ASSERT(ut_create("aio_dup", path, 0, NULL) == -EEXIST);
	CU_ASSERT(keel_bdev_get_num_blocks(bdev) == UT_MIB / 512);
	CU_ASSERT(ut_delete("aio_dup") == 0);
	/* delete of unknown names, and of a bdev of another module */
	CU_ASSERT(ut_delete("aio_nope") == -ENODEV);
	CU_ASSERT(ut_delete(NULL) == -ENODEV);
	CU_ASSERT(ut_delete("aio_dup") == -ENODEV);
	unlink(path);
}

struct ut_malloc_op {
	struct ut_op op;
};

static void ut_malloc_create_msg(void *arg)
{
	struct ut_op *op = arg;
	struct keel_bdev *bdev;

	ut_op_signal(op, keel_bdev_malloc_create("ut_malloc", NULL, 2048, 512, &bdev));
}

static void ut_malloc_delete_msg(void *arg)
{
	struct ut_op *op = arg;

	op->sync_rc = keel_bdev_malloc_delete("ut_malloc", ut_done_cb, op);
	if (op->sync_rc != 0) {
		sem_post(&op->done);
	}
}

static void test_delete_other_module(void)
{
	struct ut_op op;

	ut_op_init(&op);
	ut_send(g_thread[0], ut_malloc_create_msg, &op);
	ut_op_wait(&op);
	CU_ASSERT_FATAL(op.status == 0);
	CU_ASSERT(ut_delete("ut_malloc") == -ENODEV);
	ut_op_init(&op);
	ut_send(g_thread[0], ut_malloc_delete_msg, &op);
	ut_op_wait(&op);
	CU_ASSERT(op.sync_rc == 0 && op.status == 0);
}

static void test_two_threads(void)
{
	const uint32_t len = 4096, count = 512, qd = 32;
	char path[512];
	char *wbuf[2], *rbuf[2];
	struct ut_dev dev[2];
	struct ut_io io[2];
	struct bdev_aio_counters c;
	int t;

	ut_path(path, sizeof(path), AIO_UT_DIR, "mt.img");
	ut_make_file(path, 8 * UT_MIB);
	CU_ASSERT_FATAL(ut_create("aio_mt", path, 4096, NULL) == 0);
	for (t = 0; t < 2; t++) {
		CU_ASSERT_FATAL(ut_open(&dev[t], "aio_mt", t) == 0);
		wbuf[t] = ut_alloc((size_t)len * count);
		rbuf[t] = ut_alloc((size_t)len * count);
		ut_fill(wbuf[t], (size_t)len * count, 10u + (unsigned)t);
		memset(rbuf[t], 0xee, (size_t)len * count);
	}
	/* both threads write their own half at the same time */
	for (t = 0; t < 2; t++) {
		ut_batch_start(&io[t], &dev[t], KEEL_BDEV_IO_WRITE, wbuf[t],
			       (uint64_t)t * 4 * UT_MIB, len, count, qd);
	}
	for (t = 0; t < 2; t++) {
		ut_op_wait(&io[t].op);
		CU_ASSERT(io[t].op.status == 0);
		CU_ASSERT(io[t].completed == count);
	}
	/* and each reads the other's half back */
	for (t = 0; t < 2; t++) {
		ut_batch_start(&io[t], &dev[t], KEEL_BDEV_IO_READ, rbuf[1 - t],
			       (uint64_t)(1 - t) * 4 * UT_MIB, len, count, qd);
	}
	for (t = 0; t < 2; t++) {
		ut_op_wait(&io[t].op);
		CU_ASSERT(io[t].op.status == 0);
	}
	for (t = 0; t < 2; t++) {
		CU_ASSERT(memcmp(wbuf[t], rbuf[t], (size_t)len * count) == 0);
	}
	CU_ASSERT(bdev_aio_get_counters(dev[0].bdev, &c) == 0);
	CU_ASSERT(c.iocbs_submitted == 4 * count);
	/* batched: clearly fewer io_submit calls than iocbs at QD32 */
	CU_ASSERT(c.io_submit_calls < c.iocbs_submitted);
	printf("\n  (%" PRIu64 " iocbs in %" PRIu64 " io_submit calls) ", c.iocbs_submitted,
	       c.io_submit_calls);

	for (t = 0; t < 2; t++) {
		ut_close(&dev[t]);
		free(wbuf[t]);
		free(rbuf[t]);
	}
	CU_ASSERT(ut_delete("aio_mt") == 0);
	unlink(path);
}

static unsigned g_ut_submit_calls; /* atomic: the seam runs on a reactor */

/*
 * io_submit as the kernel answers it when its queue is full: every third call takes
 * nothing (-EAGAIN), the others only the first half of a batch of more than one.
 */
static int ut_io_submit_full(io_context_t ctx, long nr, struct iocb **iocbs)
{
	if (__atomic_fetch_add(&g_ut_submit_calls, 1, __ATOMIC_RELAXED) % 3 == 0) {
		return -EAGAIN;
	}
	return io_submit(ctx, nr > 1 ? nr / 2 : nr, iocbs);
}

/* More requests than the io_context holds: the rest waits in the channel, none is lost. */
static void test_queue_full(void)
{
	const uint32_t len = 4096, count = 1024;
	char path[512];
	char *wbuf = ut_alloc((size_t)len * count), *rbuf = ut_alloc((size_t)len * count);
	struct bdev_aio_counters c;
	struct ut_dev dev;
	struct ut_io io;

	ut_path(path, sizeof(path), AIO_UT_DIR, "qfull.img");
	ut_make_file(path, 8 * UT_MIB);
	CU_ASSERT(bdev_aio_set_queue_depth(0) == -EINVAL);
	CU_ASSERT(bdev_aio_set_queue_depth(4) == 0);
	CU_ASSERT_FATAL(ut_create("aio_qfull", path, 4096, NULL) == 0);
	CU_ASSERT(bdev_aio_set_queue_depth(BDEV_AIO_DEFAULT_QUEUE_DEPTH) == 0);
	CU_ASSERT_FATAL(ut_open(&dev, "aio_qfull", 1) == 0);
	ut_fill(wbuf, (size_t)len * count, 20);
	ut_batch_start(&io, &dev, KEEL_BDEV_IO_WRITE, wbuf, 0, len, count, 64);
	ut_op_wait(&io.op);
	CU_ASSERT(io.op.status == 0);
	CU_ASSERT(io.completed == count);
	ut_batch_start(&io, &dev, KEEL_BDEV_IO_READ, rbuf, 0, len, count, 64);
	ut_op_wait(&io.op);
	CU_ASSERT(io.op.status == 0);
	CU_ASSERT(memcmp(wbuf, rbuf, (size_t)len * count) == 0);
	ut_close(&dev);
	CU_ASSERT(ut_delete("aio_qfull") == 0);

	/*
	 * Now the kernel's own queue is full: io_submit answers EAGAIN or takes part of
	 * each batch (ut_io_submit_full), and keel keeps the rest queued. The thread's
	 * shared context is made with its first channel, which this is (the last channel
	 * of the test before took the context with it).
	 */
	CU_ASSERT(ut_aio_contexts() == 0);
	CU_ASSERT(bdev_aio_set_queue_depth(4) == 0);
	CU_ASSERT(bdev_aio_set_context_depth(4) == 0);
	CU_ASSERT_FATAL(ut_create("aio_qfull", path, 4096, NULL) == 0);
	CU_ASSERT(bdev_aio_set_queue_depth(BDEV_AIO_DEFAULT_QUEUE_DEPTH) == 0);
	CU_ASSERT_FATAL(ut_open(&dev, "aio_qfull", 0) == 0);
	CU_ASSERT(bdev_aio_set_context_depth(BDEV_AIO_DEFAULT_CONTEXT_DEPTH) == 0);
	bdev_aio_set_io_submit(ut_io_submit_full);
	ut_fill(wbuf, (size_t)len * count, 21);
	ut_batch_start(&io, &dev, KEEL_BDEV_IO_WRITE, wbuf, 0, len, count, count);
	ut_op_wait(&io.op);
	CU_ASSERT(io.op.status == 0);
	CU_ASSERT(io.completed == count);
	memset(rbuf, 0xee, (size_t)len * count);
	ut_batch_start(&io, &dev, KEEL_BDEV_IO_READ, rbuf, 0, len, count, count);
	ut_op_wait(&io.op);
	CU_ASSERT(io.op.status == 0);
	CU_ASSERT(memcmp(wbuf, rbuf, (size_t)len * count) == 0);
	bdev_aio_set_io_submit(NULL);
	CU_ASSERT(bdev_aio_get_counters(dev.bdev, &c) == 0);
	CU_ASSERT(c.submit_eagain > 0);
	CU_ASSERT(c.iocbs_submitted == 2 * count);
	printf("\n  (%" PRIu64 " io_submit calls hit the kernel limit) ", c.submit_eagain);
	ut_close(&dev);
	CU_ASSERT(ut_delete("aio_qfull") == 0);
	free(wbuf);
	free(rbuf);
	unlink(path);
}

static void test_interrupt_mode(void)
{
	const uint32_t len = 4096, count = 64;
	char path[512];
	char *wbuf = ut_alloc((size_t)len * count), *rbuf = ut_alloc((size_t)len * count);
	struct keel_reactor_stats before, after;
	struct ut_dev dev;
	struct ut_io io;

	ut_path(path, sizeof(path), AIO_UT_DIR, "intr.img");
	ut_make_file(path, 8 * UT_MIB);
	CU_ASSERT_FATAL(ut_create("aio_intr", path, 0, NULL) == 0);
	CU_ASSERT_FATAL(ut_open(&dev, "aio_intr", 1) == 0);
	CU_ASSERT(keel_reactor_set_mode(KEEL_REACTOR_ANY, KEEL_REACTOR_MODE_INTERRUPT) == 0);
	usleep(20 * 1000);
	CU_ASSERT(keel_reactor_get_stats(1, &before) == 0);

	ut_fill(wbuf, (size_t)len * count, 30);
	ut_batch_start(&io, &dev, KEEL_BDEV_IO_WRITE, wbuf, 0, len, count, 8);
	ut_op_wait(&io.op);
	CU_ASSERT(io.op.status == 0);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_FLUSH, NULL, 0, (size_t)len * count, 0) == 0);
	ut_batch_start(&io, &dev, KEEL_BDEV_IO_READ, rbuf, 0, len, count, 1);
	ut_op_wait(&io.op);
	CU_ASSERT(io.op.status == 0);
	CU_ASSERT(memcmp(wbuf, rbuf, (size_t)len * count) == 0);

	/* the reactor slept and woke up for the completions (the eventfd) */
	CU_ASSERT(keel_reactor_get_stats(1, &after) == 0);
	CU_ASSERT(after.mode == KEEL_REACTOR_MODE_INTERRUPT);
	CU_ASSERT(after.wakeups > before.wakeups);
	printf("\n  (reactor 1: %" PRIu64 " wakeups, %" PRIu64 " loops for %u I/Os) ",
	       after.wakeups - before.wakeups, after.loops - before.loops, 2 * count + 1);
	/* idle now: it must sleep rather than spin on a readable eventfd */
	usleep(50 * 1000);
	CU_ASSERT(keel_reactor_get_stats(1, &before) == 0);
	usleep(100 * 1000);
	CU_ASSERT(keel_reactor_get_stats(1, &after) == 0);
	CU_ASSERT(after.loops - before.loops < 1000);

	/*
	 * Pure poll mode submits without the eventfd; switching to interrupt mode with
	 * such iocbs in flight must not sleep through their completions.
	 */
	CU_ASSERT(keel_reactor_set_mode(KEEL_REACTOR_ANY, KEEL_REACTOR_MODE_POLL) == 0);
	usleep(10 * 1000);
	ut_batch_start(&io, &dev, KEEL_BDEV_IO_READ, rbuf, 0, len, count, count);
	CU_ASSERT(keel_reactor_set_mode(KEEL_REACTOR_ANY, KEEL_REACTOR_MODE_INTERRUPT) == 0);
	ut_op_wait(&io.op);
	CU_ASSERT(io.op.status == 0);
	CU_ASSERT(keel_reactor_set_mode(KEEL_REACTOR_ANY, KEEL_REACTOR_MODE_POLL) == 0);
	ut_batch_start(&io, &dev, KEEL_BDEV_IO_READ, rbuf, 0, len, count, 4);
	ut_op_wait(&io.op);
	CU_ASSERT(io.op.status == 0);
	CU_ASSERT(memcmp(wbuf, rbuf, (size_t)len * count) == 0);

	CU_ASSERT(keel_reactor_set_mode(KEEL_REACTOR_ANY, KEEL_REACTOR_MODE_ADAPTIVE) == 0);
	ut_close(&dev);
	CU_ASSERT(ut_delete("aio_intr") == 0);
	free(wbuf);
	free(rbuf);
	unlink(path);
}

/* ------------------------------------------------------------------------------ */
/* Many bdevs on one thread share one io_context                                   */
/* ------------------------------------------------------------------------------ */

/*
 * A fan of requests issued from one message: request i goes to devs[i % ndev] at
 * offset (i / ndev) * len, from or into buf + i * len. Every request is counted, so a
 * completion delivered twice or never shows.
 */
struct ut_fan;

struct ut_fan_req {
	struct ut_fan *fan;
	uint32_t idx;
};

struct ut_fan {
	struct ut_op op;
	struct ut_dev *devs;
	uint32_t ndev;
	uint32_t count;
	enum keel_bdev_io_type type;
	uint32_t len;
	char *buf;
	struct ut_fan_req *reqs;
	uint32_t *done; /* completions per request */
	uint32_t completed;
	int first_error;
	/* delete devs[0] right after submitting, with everything still queued */
	bool delete_first;
	struct ut_op del_op;
	uint32_t completed_at_delete;
	/* a request of devs[1] sent after all of devs[0]'s: when did it complete? */
	bool late_single;
	uint32_t dev0_done_at_late;
};

static void ut_fan_cb(void *cb_arg, int status)
{
	struct ut_fan_req *req = cb_arg;
	struct ut_fan *fan = req->fan;

	fan->done[req->idx]++;
	if (status != 0 && fan->first_error == 0) {
		fan->first_error = status;
	}
	if (fan->late_single && req->idx == fan->count - 1) {
		uint32_t i, n = 0;

		for (i = 0; i + 1 < fan->count; i++) {
			n += fan->done[i];
		}
		fan->dev0_done_at_late = n;
	}
	if (++fan->completed == fan->count) {
		ut_op_signal(&fan->op, fan->first_error);
	}
}

static void ut_fan_delete_cb(void *cb_arg, int status)
{
	struct ut_fan *fan = cb_arg;

	fan->completed_at_delete = fan->completed;
	ut_op_signal(&fan->del_op, status);
}

static void ut_fan_msg(void *arg)
{
	struct ut_fan *fan = arg;
	uint32_t i;

	for (i = 0; i < fan->count; i++) {
		/* late_single: all but the last to devs[0], the last to devs[1] at offset 0 */
		uint32_t d = fan->late_single ? i + 1 == fan->count : i % fan->ndev;
		uint32_t slot = fan->late_single ? i % (fan->count - 1) : i / fan->ndev;
		struct ut_dev *dev = &fan->devs[d];
		uint64_t off = (uint64_t)slot * fan->len;
		struct iovec iov = {.iov_base = fan->buf + (uint64_t)i * fan->len,
				    .iov_len = fan->len};
		int rc;

		fan->reqs[i] = (struct ut_fan_req){.fan = fan, .idx = i};
		if (fan->type == KEEL_BDEV_IO_WRITE) {
			rc = keel_bdev_writev(dev->desc, dev->ch, &iov, 1, off, fan->len, 0,
					      ut_fan_cb, &fan->reqs[i]);
		} else {
			rc = keel_bdev_readv(dev->desc, dev->ch, &iov, 1, off, fan->len, ut_fan_cb,
					     &fan->reqs[i]);
		}
		if (rc != 0) {
			fprintf(stderr, "aio_ut: fan submit %u failed: %s\n", i, strerror(-rc));
			abort();
		}
	}
	if (fan->delete_first) {
		/* Hot remove with every request of devs[0] queued or in flight. */
		if (keel_bdev_aio_delete(fan->devs[0].name, ut_fan_delete_cb, fan) != 0) {
			abort();
		}
		keel_put_io_channel(fan->devs[0].ch);
		keel_bdev_close(fan->devs[0].desc);
	}
}

static void ut_fan_start(struct ut_fan *fan, struct ut_dev *devs, uint32_t ndev, uint32_t count,
			 enum keel_bdev_io_type type, char *buf, uint32_t len)
{
	memset(fan, 0, sizeof(*fan));
	ut_op_init(&fan->op);
	ut_op_init(&fan->del_op);
	fan->devs = devs;
	fan->ndev = ndev;
	fan->count = count;
	fan->type = type;
	fan->buf = buf;
	fan->len = len;
	fan->reqs = calloc(count, sizeof(*fan->reqs));
	fan->done = calloc(count, sizeof(*fan->done));
	CU_ASSERT_FATAL(fan->reqs != NULL && fan->done != NULL);
}

static void ut_fan_run(struct ut_fan *fan)
{
	ut_send(fan->devs[0].thread, ut_fan_msg, fan);
}

/* Waits, checks every request completed exactly once, frees. \return the first error. */
static int ut_fan_finish(struct ut_fan *fan)
{
	uint32_t i, once = 0;

	ut_op_wait(&fan->op);
	for (i = 0; i < fan->count; i++) {
		once += fan->done[i] == 1;
	}
	CU_ASSERT(once == fan->count);
	free(fan->reqs);
	free(fan->done);
	if (!fan->delete_first) {
		sem_destroy(&fan->del_op.done);
	}
	return fan->op.status;
}

static long ut_rss_kib(void)
{
	char line[256];
	long kib = -1;
	FILE *f = fopen("/proc/self/status", "r");

	while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
		if (sscanf(line, "VmRSS: %ld kB", &kib) == 1) {
			break;
		}
	}
	if (f != NULL) {
		fclose(f);
	}
	return kib;
}

/* Module channels alone (no bdev core channel), to see what one costs. */
struct ut_modch {
	struct ut_op op;
	struct keel_bdev **bdevs;
	struct keel_io_channel **chs;
	uint32_t n;
	bool put;
};

static void ut_modch_msg(void *arg)
{
	struct ut_modch *m = arg;
	uint32_t i;
	int rc = 0;

	for (i = 0; i < m->n; i++) {
		if (m->put) {
			keel_put_io_channel(m->chs[i]);
			continue;
		}
		m->chs[i] = m->bdevs[i]->fn_table->get_io_channel(m->bdevs[i]->ctxt);
		if (m->chs[i] == NULL) {
			rc = -ENOMEM;
		}
	}
	ut_op_signal(&m->op, rc);
}

static void ut_modch_run(struct ut_modch *m, bool put)
{
	ut_op_init(&m->op);
	m->put = put;
	ut_send(g_thread[1], ut_modch_msg, m);
	ut_op_wait(&m->op);
}

#define UT_MANY 300

/*
 * 300 bdevs with a channel on one thread take one io_context (not 300), their
 * requests share io_submit calls, and each completion reaches its own request: every
 * bdev gets its own pattern at the same offset, all in one batch.
 */
static void test_many_bdevs(void)
{
	const uint32_t len = 4096;
	static struct ut_dev devs[UT_MANY];
	static char names[UT_MANY][16], paths[UT_MANY][512];
	struct bdev_aio_module_stats st;
	struct bdev_aio_counters c;
	struct ut_modch m = {0};
	char *wbuf = ut_alloc((size_t)len * UT_MANY), *rbuf = ut_alloc((size_t)len * UT_MANY);
	struct bdev_aio_module_stats st0;
	uint64_t calls = 0, iocbs = 0;
	long rss_before, rss_after;
	uint32_t i;

	bdev_aio_get_module_stats(&st);
	CU_ASSERT(st.contexts == 0 && st.queues == 0);
	m.bdevs = calloc(UT_MANY, sizeof(*m.bdevs));
	m.chs = calloc(UT_MANY, sizeof(*m.chs));
	m.n = UT_MANY;
	CU_ASSERT_FATAL(m.bdevs != NULL && m.chs != NULL);
	for (i = 0; i < UT_MANY; i++) {
		char leaf[16];

		snprintf(leaf, sizeof(leaf), "aio_m%03u", i % 1000);
		memcpy(names[i], leaf, sizeof(leaf));
		ut_path(paths[i], sizeof(paths[i]), AIO_UT_DIR, leaf);
		ut_make_file(paths[i], UT_MIB); /* sparse */
		CU_ASSERT_FATAL(ut_create(names[i], paths[i], 4096, &m.bdevs[i]) == 0);
	}

	/* What one more aio channel costs in memory, and in io_contexts. */
	rss_before = ut_rss_kib();
	ut_modch_run(&m, false);
	CU_ASSERT_FATAL(m.op.status == 0);
	rss_after = ut_rss_kib();
	bdev_aio_get_module_stats(&st);
	CU_ASSERT(st.contexts == 1);
	CU_ASSERT(st.context_events == BDEV_AIO_DEFAULT_CONTEXT_DEPTH);
	CU_ASSERT(st.queues == UT_MANY);
	printf("\n  (%u aio channels: %u io_context of %" PRIu64 " events, RSS %+ld KiB, "
	       "%ld bytes per channel) ",
	       UT_MANY, st.contexts, st.context_events, rss_after - rss_before,
	       (rss_after - rss_before) * 1024 / UT_MANY);
	ut_modch_run(&m, true);

	/* Now through the bdev core, every bdev on thread 1. */
	for (i = 0; i < UT_MANY; i++) {
		CU_ASSERT_FATAL(ut_open(&devs[i], names[i], 1) == 0);
	}
	bdev_aio_get_module_stats(&st);
	CU_ASSERT(st.contexts == 1);
	CU_ASSERT(st.queues == UT_MANY);

	for (i = 0; i < UT_MANY; i++) {
		ut_fill(wbuf + (size_t)i * len, len, 100 + i);
	}
	bdev_aio_get_module_stats(&st0);
	{
		struct ut_fan fan;

		ut_fan_start(&fan, devs, UT_MANY, UT_MANY, KEEL_BDEV_IO_WRITE, wbuf, len);
		ut_fan_run(&fan);
		CU_ASSERT(ut_fan_finish(&fan) == 0);
		memset(rbuf, 0xee, (size_t)len * UT_MANY);
		ut_fan_start(&fan, devs, UT_MANY, UT_MANY, KEEL_BDEV_IO_READ, rbuf, len);
		ut_fan_run(&fan);
		CU_ASSERT(ut_fan_finish(&fan) == 0);
	}
	/* each read got its own bdev's data, and each write landed in its own file */
	for (i = 0; i < UT_MANY; i++) {
		CU_ASSERT(memcmp(wbuf + (size_t)i * len, rbuf + (size_t)i * len, len) == 0);
		CU_ASSERT(ut_file_matches(paths[i], 0, wbuf + (size_t)i * len, len));
		CU_ASSERT(bdev_aio_get_counters(devs[i].bdev, &c) == 0);
		CU_ASSERT(c.iocbs_submitted == 2);
		calls += c.io_submit_calls;
		iocbs += c.iocbs_submitted;
	}
	/*
	 * One message queued each set of 300 requests: they shared io_submit calls (up to
	 * 256 iocbs each), so the module made a few calls, not one per bdev.
	 */
	bdev_aio_get_module_stats(&st);
	CU_ASSERT(st.contexts == 1);
	CU_ASSERT(st.io_submit_calls - st0.io_submit_calls < 2 * UT_MANY / 10);
	printf("\n  (%" PRIu64 " iocbs of %u bdevs in %" PRIu64 " io_submit calls) ", iocbs,
	       UT_MANY, st.io_submit_calls - st0.io_submit_calls);

	for (i = 0; i < UT_MANY; i++) {
		ut_close(&devs[i]);
		CU_ASSERT(ut_delete(names[i]) == 0);
		unlink(paths[i]);
	}
	bdev_aio_get_module_stats(&st);
	CU_ASSERT(st.contexts == 0 && st.queues == 0 && st.context_events == 0);
	free(m.bdevs);
	free(m.chs);
	free(wbuf);
	free(rbuf);
}

/*
 * A context of 8 slots under four bdevs that each want 64 in flight: the rest waits
 * in the queues, nothing fails, the data is right, and a bdev that queued one request
 * behind another's 512 is served in the next batch, not after them.
 */
static void test_context_full(void)
{
	const uint32_t len = 4096, count = 256, qd = 64, ndev = 4, big = 512;
	char names[4][16], paths[4][512];
	char *wbuf[4], *rbuf[4];
	struct bdev_aio_module_stats before, after;
	struct ut_dev devs[4];
	struct ut_io io[4];
	struct ut_fan fan;
	uint32_t i;

	CU_ASSERT(ut_aio_contexts() == 0);
	CU_ASSERT(bdev_aio_set_context_depth(0) == -EINVAL);
	CU_ASSERT(bdev_aio_set_context_depth(4097) == -EINVAL);
	CU_ASSERT(bdev_aio_set_context_depth(8) == 0);
	for (i = 0; i < ndev; i++) {
		snprintf(names[i], sizeof(names[i]), "aio_cf%u", i);
		ut_path(paths[i], sizeof(paths[i]), AIO_UT_DIR, names[i]);
		ut_make_file(paths[i], 8 * UT_MIB);
		CU_ASSERT_FATAL(ut_create(names[i], paths[i], 4096, NULL) == 0);
		CU_ASSERT_FATAL(ut_open(&devs[i], names[i], 1) == 0);
		wbuf[i] = ut_alloc((size_t)len * big);
		rbuf[i] = ut_alloc((size_t)len * big);
		ut_fill(wbuf[i], (size_t)len * big, 200 + i);
	}
	CU_ASSERT(bdev_aio_set_context_depth(BDEV_AIO_DEFAULT_CONTEXT_DEPTH) == 0);
	bdev_aio_get_module_stats(&before);
	CU_ASSERT(before.contexts == 1 && before.context_events == 8);

	for (i = 0; i < ndev; i++) {
		ut_batch_start(&io[i], &devs[i], KEEL_BDEV_IO_WRITE, wbuf[i], 0, len, count, qd);
	}
	for (i = 0; i < ndev; i++) {
		ut_op_wait(&io[i].op);
		CU_ASSERT(io[i].op.status == 0);
		CU_ASSERT(io[i].completed == count);
	}
	for (i = 0; i < ndev; i++) {
		memset(rbuf[i], 0xee, (size_t)len * count);
		ut_batch_start(&io[i], &devs[i], KEEL_BDEV_IO_READ, rbuf[i], 0, len, count, qd);
	}
	for (i = 0; i < ndev; i++) {
		ut_op_wait(&io[i].op);
		CU_ASSERT(io[i].op.status == 0);
		CU_ASSERT(memcmp(wbuf[i], rbuf[i], (size_t)len * count) == 0);
	}
	bdev_aio_get_module_stats(&after);
	CU_ASSERT(after.context_full > before.context_full);
	printf("\n  (%" PRIu64 " submissions waited for a context slot) ",
	       after.context_full - before.context_full);

	/* Round robin: devs[1]'s one request goes in the second batch at the latest. */
	{
		char *buf = ut_alloc((size_t)len * (big + 1));

		ut_fan_start(&fan, devs, 2, big + 1, KEEL_BDEV_IO_WRITE, buf, len);
		memcpy(buf, wbuf[0], (size_t)len * big);
		memcpy(buf + (size_t)len * big, wbuf[1], len);
		fan.late_single = true;
		ut_fan_run(&fan);
		CU_ASSERT(ut_fan_finish(&fan) == 0);
		CU_ASSERT(fan.dev0_done_at_late <= 2 * 8);
		printf("\n  (the late request completed after %u of the %u before it) ",
		       fan.dev0_done_at_late, big);
		free(buf);
	}

	for (i = 0; i < ndev; i++) {
		ut_close(&devs[i]);
		CU_ASSERT(ut_delete(names[i]) == 0);
		unlink(paths[i]);
		free(wbuf[i]);
		free(rbuf[i]);
	}
	CU_ASSERT(ut_aio_contexts() == 0);
}

static int g_ut_io_setup_calls;

/* io_setup as the kernel answers it when fs.aio-max-nr is used up by others. */
static int ut_io_setup_eagain(int nr_events, io_context_t *ctx)
{
	g_ut_io_setup_calls++;
	return -EAGAIN;
}

/*
 * fs.aio-max-nr used up by others: the thread's first channel fails with an error
 * that names the bdev and the sysctl, nothing is left half made, and once the
 * kernel has room again the same bdev opens and works.
 */
static void test_context_setup_fails(void)
{
	char path[512], *buf = ut_alloc(4096);
	struct bdev_aio_module_stats st;
	struct ut_dev dev;

	CU_ASSERT(ut_aio_contexts() == 0);
	ut_path(path, sizeof(path), AIO_UT_DIR, "nosetup.img");
	ut_make_file(path, UT_MIB);
	CU_ASSERT_FATAL(ut_create("aio_nosetup", path, 4096, NULL) == 0);
	ut_log_clear();
	g_ut_io_setup_calls = 0;
	bdev_aio_set_io_setup(ut_io_setup_eagain);
	CU_ASSERT(ut_open(&dev, "aio_nosetup", 1) != 0);
	bdev_aio_set_io_setup(NULL);
	CU_ASSERT(g_ut_io_setup_calls == 1);
	CU_ASSERT(ut_log_has("aio_nosetup", "sysctl fs.aio-max-nr"));
	bdev_aio_get_module_stats(&st);
	CU_ASSERT(st.contexts == 0 && st.queues == 0 && st.context_events == 0);

	CU_ASSERT_FATAL(ut_open(&dev, "aio_nosetup", 1) == 0);
	ut_fill(buf, 4096, 500);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_WRITE, buf, 0, 4096, 0) == 0);
	CU_ASSERT(ut_file_matches(path, 0, buf, 4096));
	CU_ASSERT(ut_aio_contexts() == 1);
	ut_close(&dev);
	CU_ASSERT(ut_delete("aio_nosetup") == 0);
	CU_ASSERT(ut_aio_contexts() == 0);
	unlink(path);
	free(buf);
}

/* Two 8 MiB files as bdevs aio_<tag>_a and aio_<tag>_b, open on keel thread \p t. */
static void ut_two_devs(const char *tag, int t, char paths[2][512], char names[2][32],
			struct ut_dev devs[2])
{
	int d;

	for (d = 0; d < 2; d++) {
		snprintf(names[d], sizeof(names[d]), "aio_%s_%c", tag, 'a' + d);
		ut_path(paths[d], sizeof(paths[d]), AIO_UT_DIR, names[d]);
		ut_make_file(paths[d], 8 * UT_MIB);
		CU_ASSERT_FATAL(ut_create(names[d], paths[d], 4096, NULL) == 0);
		CU_ASSERT_FATAL(ut_open(&devs[d], names[d], t) == 0);
	}
}

/*
 * Hot remove of a bdev whose requests are queued in the thread's shared context,
 * while another bdev on that thread keeps the context busy: every request of the
 * deleted bdev completes exactly once, before the delete does; the other bdev's
 * requests all succeed with the right data; the context stays for it.
 */
static void test_delete_in_flight(void)
{
	const uint32_t len = 4096, n_del = 256, count = 2048, qd = 32;
	char paths[2][512], names[2][32];
	char *dbuf = ut_alloc((size_t)len * n_del);
	char *wbuf = ut_alloc((size_t)len * count), *rbuf = ut_alloc((size_t)len * count);
	struct bdev_aio_module_stats st;
	struct ut_dev devs[2];
	struct ut_io io;
	struct ut_fan fan;

	CU_ASSERT(ut_aio_contexts() == 0);
	ut_two_devs("del", 0, paths, names, devs);
	ut_fill(dbuf, (size_t)len * n_del, 300);
	ut_fill(wbuf, (size_t)len * count, 301);

	/* b keeps 32 writes in flight on the same context all along */
	ut_batch_start(&io, &devs[1], KEEL_BDEV_IO_WRITE, wbuf, 0, len, count, qd);
	ut_fan_start(&fan, devs, 1, n_del, KEEL_BDEV_IO_WRITE, dbuf, len);
	fan.delete_first = true;
	ut_fan_run(&fan);
	CU_ASSERT(ut_fan_finish(&fan) == 0);
	ut_op_wait(&fan.del_op);
	CU_ASSERT(fan.del_op.status == 0);
	CU_ASSERT(fan.completed_at_delete == n_del);
	ut_op_wait(&io.op);
	CU_ASSERT(io.op.status == 0);
	CU_ASSERT(io.completed == count);
	bdev_aio_get_module_stats(&st);
	CU_ASSERT(st.contexts == 1 && st.queues == 1);
	CU_ASSERT(ut_delete(names[0]) == -ENODEV);
	/* what a wrote before it went is in its file */
	CU_ASSERT(ut_file_matches(paths[0], 0, dbuf, (size_t)len * n_del));

	/* b still works on the context, and has all its data */
	memset(rbuf, 0xee, (size_t)len * count);
	ut_batch_start(&io, &devs[1], KEEL_BDEV_IO_READ, rbuf, 0, len, count, qd);
	ut_op_wait(&io.op);
	CU_ASSERT(io.op.status == 0);
	CU_ASSERT(memcmp(wbuf, rbuf, (size_t)len * count) == 0);
	ut_close(&devs[1]);
	CU_ASSERT(ut_delete(names[1]) == 0);
	CU_ASSERT(ut_aio_contexts() == 0);
	unlink(paths[0]);
	unlink(paths[1]);
	free(dbuf);
	free(wbuf);
	free(rbuf);
}

/*
 * Two bdevs on one context, their requests interleaved in the same batches (a0 b0 a1
 * b1 ...) at the same offsets with different data: every completion belongs to its
 * own request and every byte to its own file.
 */
static void test_interleaved(void)
{
	const uint32_t len = 4096, per_dev = 512, n = 2 * per_dev;
	char paths[2][512], names[2][32];
	char *wbuf = ut_alloc((size_t)len * n), *rbuf = ut_alloc((size_t)len * n);
	char *expect = ut_alloc((size_t)len * per_dev);
	struct ut_dev devs[2];
	struct ut_fan fan;
	uint32_t i, d;

	ut_two_devs("il", 1, paths, names, devs);
	for (i = 0; i < n; i++) {
		ut_fill(wbuf + (size_t)i * len, len, 400 + i);
	}
	ut_fan_start(&fan, devs, 2, n, KEEL_BDEV_IO_WRITE, wbuf, len);
	ut_fan_run(&fan);
	CU_ASSERT(ut_fan_finish(&fan) == 0);
	memset(rbuf, 0xee, (size_t)len * n);
	ut_fan_start(&fan, devs, 2, n, KEEL_BDEV_IO_READ, rbuf, len);
	ut_fan_run(&fan);
	CU_ASSERT(ut_fan_finish(&fan) == 0);
	CU_ASSERT(memcmp(wbuf, rbuf, (size_t)len * n) == 0);
	for (d = 0; d < 2; d++) {
		for (i = 0; i < per_dev; i++) {
			memcpy(expect + (size_t)i * len, wbuf + (size_t)(2 * i + d) * len, len);
		}
		CU_ASSERT(ut_file_matches(paths[d], 0, expect, (size_t)len * per_dev));
	}
	CU_ASSERT(ut_aio_contexts() == 1);
	for (d = 0; d < 2; d++) {
		ut_close(&devs[d]);
		CU_ASSERT(ut_delete(names[d]) == 0);
		unlink(paths[d]);
	}
	free(wbuf);
	free(rbuf);
	free(expect);
}

/* A file shrunk under the bdev: reads past EOF give zeroes, not an error. */
static void test_read_past_eof(void)
{
	char path[512];
	char *buf = ut_alloc(8192);
	struct ut_dev dev;

	ut_path(path, sizeof(path), AIO_UT_DIR, "shrink.img");
	ut_make_file(path, UT_MIB);
	CU_ASSERT_FATAL(ut_create("aio_shrink", path, 4096, NULL) == 0);
	CU_ASSERT_FATAL(ut_open(&dev, "aio_shrink", 0) == 0);
	ut_fill(buf, 8192, 40);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_WRITE, buf, UT_MIB - 8192, 8192, 0) == 0);
	CU_ASSERT(truncate(path, UT_MIB - 4096) == 0);
	memset(buf, 0xee, 8192);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_READ, buf, UT_MIB - 8192, 8192, 0) == 0);
	CU_ASSERT(ut_is_zero(buf + 4096, 4096));
	ut_close(&dev);
	CU_ASSERT(ut_delete("aio_shrink") == 0);
	free(buf);
	unlink(path);
}

static int ut_get_allocation(struct ut_dev *dev, uint64_t offset, uint64_t len,
			     struct keel_bdev_extent *ext, uint32_t max)
{
	struct iovec iov = {.iov_base = ext, .iov_len = max * sizeof(*ext)};

	return ut_iov_io(dev, KEEL_BDEV_IO_GET_ALLOCATION, &iov, 1, offset, len, 0);
}

/*
 * Allocation query on a sparse file (lseek SEEK_DATA/SEEK_HOLE on the blocking pool):
 * holes and data where they are, a bounded array, a range inside a hole, and
 * write_zeroes that may unmap turning data back into a hole.
 */
static void test_get_allocation(void)
{
	const uint32_t hole = KEEL_BDEV_EXTENT_HOLE | KEEL_BDEV_EXTENT_ZERO;
	struct keel_bdev_extent ext[8];
	char path[512];
	char *buf = ut_alloc(8192);
	struct ut_dev dev;

	ut_path(path, sizeof(path), AIO_UT_DIR, "sparse.img");
	ut_make_file(path, UT_MIB);
	CU_ASSERT_FATAL(ut_create("aio_sparse", path, 512, NULL) == 0);
	CU_ASSERT_FATAL(ut_open(&dev, "aio_sparse", 0) == 0);
	CU_ASSERT(keel_bdev_io_type_supported(dev.bdev, KEEL_BDEV_IO_GET_ALLOCATION));
	ut_fill(buf, 8192, 3);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_WRITE, buf, 256 * 1024, 8192, 0) == 0);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_FLUSH, NULL, 0, UT_MIB, 0) == 0);
	CU_ASSERT(ut_get_allocation(&dev, 0, UT_MIB, ext, 8) == 0);
	CU_ASSERT(ext[0].length == 256 * 1024 && ext[0].flags == hole);
	CU_ASSERT(ext[1].length == 8192 && ext[1].flags == 0);
	CU_ASSERT(ext[2].length == UT_MIB - 256 * 1024 - 8192 && ext[2].flags == hole);
	CU_ASSERT(ext[3].length == 0);
	/* Room for two runs: the answer stops after them, short of the range. */
	CU_ASSERT(ut_get_allocation(&dev, 0, UT_MIB, ext, 2) == 0);
	CU_ASSERT(ext[0].length == 256 * 1024 && ext[1].length == 8192);
	/* From the middle of the data, and entirely inside a hole. */
	CU_ASSERT(ut_get_allocation(&dev, 256 * 1024 + 4096, 8192, ext, 8) == 0);
	CU_ASSERT(ext[0].length == 4096 && ext[0].flags == 0);
	CU_ASSERT(ext[1].length == 4096 && ext[1].flags == hole);
	CU_ASSERT(ut_get_allocation(&dev, 4096, 4096, ext, 8) == 0);
	CU_ASSERT(ext[0].length == 4096 && ext[0].flags == hole && ext[1].length == 0);
	/* write_zeroes that may unmap punches: the data becomes a hole again. */
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_WRITE_ZEROES, NULL, 256 * 1024, 8192,
			    KEEL_BDEV_IO_FLAG_UNMAP) == 0);
	{
		struct stat st; /* punched, not zeroed in place: no block left */

		CU_ASSERT(stat(path, &st) == 0 && st.st_blocks == 0);
	}
	CU_ASSERT(ut_get_allocation(&dev, 0, UT_MIB, ext, 8) == 0);
	CU_ASSERT(ext[0].length == UT_MIB && ext[0].flags == hole);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_READ, buf, 256 * 1024, 8192, 0) == 0);
	CU_ASSERT(ut_is_zero(buf, 8192));
	ut_close(&dev);
	CU_ASSERT(ut_delete("aio_sparse") == 0);
	free(buf);
	unlink(path);
}

/*
 * A sparse file on a 1 MiB tmpfs: writing past the space the kernel has gives a short
 * write (-EIO: never a silent partial write) and then -ENOSPC (the kernel's errno).
 */
static void test_write_errors(void)
{
	const uint32_t len = 96 * 1024; /* 1 MiB is not a multiple: one write comes up short */
	char dir[512], path[600], cmd[700];
	char *buf = ut_alloc(len);
	struct ut_dev dev;
	int i, rc, n_eio = 0, n_enospc = 0, n_ok = 0;

	snprintf(dir, sizeof(dir), "%s/small-%d", AIO_UT_DIR, (int)getpid());
	if (geteuid() != 0 || mkdir(dir, 0700) != 0) {
		ut_skip("%s", geteuid() != 0 ? "not root: cannot mount a small tmpfs"
					     : "cannot make the mount point");
		free(buf);
		return;
	}
	snprintf(cmd, sizeof(cmd), "mount -t tmpfs -o size=1m none '%s' 2>/dev/null", dir);
	if (system(cmd) != 0) {
		ut_skip("mount -t tmpfs failed");
		rmdir(dir);
		free(buf);
		return;
	}
	snprintf(path, sizeof(path), "%s/sparse.img", dir);
	ut_make_file(path, 8 * UT_MIB);
	CU_ASSERT_FATAL(ut_create("aio_full", path, 0, NULL) == 0);
	CU_ASSERT_FATAL(ut_open(&dev, "aio_full", 0) == 0);
	ut_fill(buf, len, 50);
	for (i = 0; i < 16; i++) {
		rc = ut_buf_io(&dev, KEEL_BDEV_IO_WRITE, buf, (uint64_t)i * len, len, 0);
		if (rc == 0) {
			CU_ASSERT(n_eio + n_enospc == 0); /* no success after a failure */
			n_ok++;
		} else if (rc == -EIO) {
			n_eio++;
		} else if (rc == -ENOSPC) {
			n_enospc++;
		} else {
			CU_FAIL("unexpected write status");
		}
	}
	CU_ASSERT(n_ok >= 8 && n_ok <= 10);
	CU_ASSERT(n_eio == 1);
	CU_ASSERT(n_enospc >= 5);
	/* what was written is still right, and reads of never-written ranges are zero */
	memset(buf, 0xee, len);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_READ, buf, 0, len, 0) == 0);
	{
		char *expect = ut_alloc(len);

		ut_fill(expect, len, 50);
		CU_ASSERT(memcmp(buf, expect, len) == 0);
		free(expect);
	}
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_READ, buf, 7 * UT_MIB, len, 0) == 0);
	CU_ASSERT(ut_is_zero(buf, len));
	ut_close(&dev);
	CU_ASSERT(ut_delete("aio_full") == 0);
	unlink(path);
	snprintf(cmd, sizeof(cmd), "umount '%s'", dir);
	CU_ASSERT(system(cmd) == 0);
	rmdir(dir);
	free(buf);
}

/* A loop block device: BLKSSZGET, BLKDISCARD, BLKZEROOUT. Skips without losetup. */
static void test_block_device(void)
{
	char path[512], cmd[700], loopdev[64] = "";
	struct ut_dev dev;
	FILE *p;

	ut_path(path, sizeof(path), AIO_UT_DIR, "loop.img");
	ut_make_file(path, 16 * UT_MIB);
	snprintf(cmd, sizeof(cmd), "losetup -f --show '%s' 2>/dev/null", path);
	p = geteuid() == 0 ? popen(cmd, "r") : NULL;
	if (p == NULL || fgets(loopdev, sizeof(loopdev), p) == NULL ||
	    strncmp(loopdev, "/dev/loop", 9) != 0) {
		if (p != NULL) {
			pclose(p);
		}
		ut_skip("%s", geteuid() != 0 ? "not root: no loop device"
					     : "losetup could not attach a loop device");
		unlink(path);
		return;
	}
	pclose(p);
	loopdev[strcspn(loopdev, "\n")] = '\0';

	CU_ASSERT(ut_create("aio_loop", loopdev, 256, NULL) == -EINVAL);
	if (ut_create("aio_loop", loopdev, 0, NULL) == 0) {
		CU_ASSERT_FATAL(ut_open(&dev, "aio_loop", 1) == 0);
		CU_ASSERT(dev.block_size == 512 || dev.block_size == 4096);
		CU_ASSERT(dev.num_blocks * dev.block_size == 16 * UT_MIB);
		CU_ASSERT(dev.direct);
		ut_rw_suite(&dev, NULL);
		ut_close(&dev);
		CU_ASSERT(ut_delete("aio_loop") == 0);
	} else {
		CU_FAIL("aio bdev on a loop device");
	}
	snprintf(cmd, sizeof(cmd), "losetup -d %s", loopdev);
	CU_ASSERT(system(cmd) == 0);
	unlink(path);
}

/* ------------------------------------------------------------------------------ */
/* main: reactors on CPUs 0-1, CUnit on its own pthread                            */
/* ------------------------------------------------------------------------------ */

static void ut_fini_done(void *cb_arg, int status)
{
	keel_reactors_stop();
}

static void ut_fini_msg(void *arg)
{
	keel_bdev_subsystem_fini(ut_fini_done, NULL);
}

static void *ut_cunit_main(void *arg)
{
	CU_basic_set_mode(CU_BRM_VERBOSE);
	CU_basic_run_tests();
	g_cunit_failures = (int)CU_get_number_of_failures();
	if (getenv("AIO_UT_SETTLE")) {
		sleep(3);
	}
	ut_send(g_thread[0], ut_fini_msg, NULL);
	return NULL;
}

static pthread_t g_cunit_thread;

static void ut_init_done(void *cb_arg, int status)
{
	g_init_status = status;
	if (status != 0) {
		fprintf(stderr, "aio_ut: bdev subsystem init: %s\n", strerror(-status));
		keel_reactors_stop();
		return;
	}
	g_thread[1] = keel_thread_create("aio_ut_1", 1);
	if (g_thread[1] == NULL ||
	    pthread_create(&g_cunit_thread, NULL, ut_cunit_main, NULL) != 0) {
		g_init_status = -ENOMEM;
		keel_reactors_stop();
	}
}

static void ut_start(void *arg)
{
	int rc;

	g_thread[0] = keel_thread_get_current();
	rc = keel_bdev_subsystem_init(ut_init_done, NULL);
	if (rc != 0) {
		g_init_status = rc;
		keel_reactors_stop();
	}
}

static const struct {
	const char *name;
	CU_TestFunc fn;
} g_tests[] = {
	{"create_errors", test_create_errors},
	{"delete_other_module", test_delete_other_module},
	{"direct_file", test_direct_file},
	{"explicit_block_size", test_explicit_block_size},
	{"tmpfs", test_tmpfs},
	{"buffered_fallback", test_buffered_fallback},
	{"two_threads", test_two_threads},
	{"queue_full", test_queue_full},
	{"interrupt_mode", test_interrupt_mode},
	{"many_bdevs", test_many_bdevs},
	{"context_full", test_context_full},
	{"delete_in_flight", test_delete_in_flight},
	{"interleaved", test_interleaved},
	{"context_setup_fails", test_context_setup_fails},
	{"read_past_eof", test_read_past_eof},
	{"get_allocation", test_get_allocation},
	{"write_errors", test_write_errors},
	{"block_device", test_block_device},
};

int main(int argc, char **argv)
{
	size_t i;
	struct keel_reactor_opts opts;
	CU_pSuite suite;
	int rc;

	if (CU_initialize_registry() != CUE_SUCCESS) {
		return 1;
	}
	suite = CU_add_suite("aio", NULL, NULL);
	for (i = 0; i < sizeof(g_tests) / sizeof(g_tests[0]); i++) {
		/* AIO_UT_ONLY=name runs one test (debugging) */
		if (getenv("AIO_UT_ONLY") == NULL ||
		    strcmp(getenv("AIO_UT_ONLY"), g_tests[i].name) == 0) {
			CU_add_test(suite, g_tests[i].name, g_tests[i].fn);
		}
	}

	keel_log_set_hook(ut_log_hook, NULL);
	if (getenv("AIO_UT_VERBOSE") == NULL) {
		keel_log_set_level(KEEL_LOG_WARN);
	}
	keel_reactor_opts_init(&opts);
	opts.cpus = "0-1";
	opts.no_pin = true;
	rc = keel_reactors_init(&opts);
	if (rc != 0) {
		fprintf(stderr, "aio_ut: keel_reactors_init: %s\n", strerror(-rc));
		CU_cleanup_registry();
		return 1;
	}
	keel_bdev_module_register(&keel_bdev_aio_module);
	keel_bdev_module_register(&keel_bdev_malloc_module);
	rc = keel_reactors_start(ut_start, NULL);
	if (g_cunit_thread) {
		pthread_join(g_cunit_thread, NULL);
	}
	keel_reactors_fini();
	keel_log_set_hook(NULL, NULL);
	CU_cleanup_registry();
	if (rc != 0 || g_init_status != 0) {
		return 1;
	}
	return ut_cunit_exit_code((unsigned)g_cunit_failures);
}
