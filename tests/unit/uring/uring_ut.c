/*
 * uring bdev unit tests: real files (the build tree on the disk, /dev/shm, a small
 * tmpfs and a loop device when root), the real bdev core, and the deterministic
 * harness: two keel threads polled by this OS thread, each with its own ring. The
 * kernel completes requests on its own time: the test polls the threads until the
 * state it needs is reached (with a generous limit that only a hang reaches), never
 * for a fixed time.
 *
 * The aio module's suite (tests/unit/aio/aio_ut.c) checks the same behaviours on real
 * reactors; the two are meant to share one parametrised body once the aio module's
 * shared-context change has landed (see the uring README).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <liburing.h>

#include "keel/bdev_uring.h"
#include "tests/unit/bdev/bdev_ut_common.h"

#include "bdev/uring/bdev_uring_internal.h"

#ifndef URING_UT_DIR
#define URING_UT_DIR "."
#endif

#define UT_MIB (1024u * 1024u)
#define UT_WAIT_MS 20000

/* ------------------------------------------------------------------------------ */
/* Waiting on state                                                                */
/* ------------------------------------------------------------------------------ */

static uint64_t ut_mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/*
 * Poll the threads until \p cond holds. Between idle rounds the kernel or the blocking
 * pool is working: yield briefly and let the mock clock move so timed pollers (the
 * core's -ENOMEM retry) run. Only a request that never completes reaches the limit.
 */
#define UT_WAIT(cond)                                                                         \
	do {                                                                                  \
		uint64_t __start = ut_mono_ms();                                              \
		while (!(cond)) {                                                             \
			if (ut_poll_threads() == 0) {                                         \
				usleep(20);                                                   \
				ut_time_advance_us(100);                                      \
			}                                                                     \
			if (ut_mono_ms() - __start > UT_WAIT_MS) {                            \
				fprintf(stderr, "uring_ut: gave up waiting for %s\n", #cond); \
				CU_FAIL_FATAL("a request or step never completed");           \
			}                                                                     \
		}                                                                             \
	} while (0)

/* A few more rounds: a second completion of anything would show up now. */
static void ut_settle(void)
{
	for (int i = 0; i < 10; i++) {
		ut_poll_threads();
		usleep(50);
	}
}

/* ------------------------------------------------------------------------------ */
/* Log capture                                                                     */
/* ------------------------------------------------------------------------------ */

static pthread_mutex_t g_log_lock = PTHREAD_MUTEX_INITIALIZER;
static char g_log[32768];
static size_t g_log_len;

static void ut_log_hook(enum keel_log_level level, const char *line, void *ctx)
{
	size_t len = strlen(line);

	if (level > KEEL_LOG_WARN) {
		return;
	}
	pthread_mutex_lock(&g_log_lock);
	if (g_log_len + len + 2 < sizeof(g_log)) {
		memcpy(g_log + g_log_len, line, len);
		g_log_len += len;
		g_log[g_log_len++] = '\n';
		g_log[g_log_len] = '\0';
	}
	pthread_mutex_unlock(&g_log_lock);
}

static void ut_log_clear(void)
{
	pthread_mutex_lock(&g_log_lock);
	g_log_len = 0;
	g_log[0] = '\0';
	pthread_mutex_unlock(&g_log_lock);
}

/* Whether one WARN/ERROR line holds \p a and (when not NULL) \p b. */
static bool ut_log_has(const char *a, const char *b)
{
	const char *p, *end;
	bool found = false;

	pthread_mutex_lock(&g_log_lock);
	for (p = g_log; *p != '\0' && !found; p = *end ? end + 1 : end) {
		char line[4096];
		size_t n;

		end = strchr(p, '\n');
		if (end == NULL) {
			end = p + strlen(p);
		}
		n = (size_t)(end - p) < sizeof(line) - 1 ? (size_t)(end - p) : sizeof(line) - 1;
		memcpy(line, p, n);
		line[n] = '\0';
		found = strstr(line, a) != NULL && (b == NULL || strstr(line, b) != NULL);
	}
	pthread_mutex_unlock(&g_log_lock);
	return found;
}

/* ------------------------------------------------------------------------------ */
/* Set-up                                                                          */
/* ------------------------------------------------------------------------------ */

static void ut_setup(void)
{
	keel_bdev_module_register(&keel_bdev_uring_module);
	/* Before: the start-up probe may report while the set-up polls. */
	ut_log_clear();
	ut_bdev_setup(2);
}

/* The subsystem fini closes files on the blocking pool: wait for it, not one round. */
static void ut_teardown(void)
{
	struct bdev_uring_module_stats st;

	ut_set_thread(0);
	g_ut_sub_done = 0;
	keel_bdev_subsystem_fini(ut_sub_done, NULL);
	UT_WAIT(g_ut_sub_done == 1);
	CU_ASSERT_PTR_NULL(keel_bdev_first());
	ut_threads_fini();
	/* Every ring went with the last channel of its thread. */
	bdev_uring_get_module_stats(&st);
	CU_ASSERT_EQUAL(st.rings, 0);
	CU_ASSERT_EQUAL(st.queues, 0);
	CU_ASSERT_EQUAL(st.registered_files, 0);
}

/* ------------------------------------------------------------------------------ */
/* Files and buffers                                                               */
/* ------------------------------------------------------------------------------ */

static void ut_path(char *buf, size_t len, const char *dir, const char *leaf)
{
	snprintf(buf, len, "%s/uring-ut-%d-%s", dir, (int)getpid(), leaf);
}

static void ut_make_file(const char *path, off_t size)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);

	CU_ASSERT_FATAL(fd >= 0);
	CU_ASSERT_FATAL(ftruncate(fd, size) == 0);
	close(fd);
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

	for (size_t i = 0; i < len; i++) {
		p[i] = (unsigned char)(seed * 29u + i * 13u + (i >> 10));
	}
}

static bool ut_is_zero(const void *buf, size_t len)
{
	const unsigned char *p = buf;

	for (size_t i = 0; i < len; i++) {
		if (p[i] != 0) {
			return false;
		}
	}
	return true;
}

/* What the file itself holds, read past keel. */
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
/* Create, delete, open                                                            */
/* ------------------------------------------------------------------------------ */

struct ut_create_res {
	int done;
	int status;
	struct keel_bdev *bdev;
};

static void ut_create_cb(void *arg, int status, struct keel_bdev *bdev)
{
	struct ut_create_res *r = arg;

	r->done++;
	r->status = status;
	r->bdev = bdev;
}

/* \return the synchronous error, else the callback's status (the callback runs once). */
static int ut_create(const char *name, const char *filename, uint32_t block_size,
		     struct keel_bdev **bdev)
{
	struct ut_create_res r = {0, 0, NULL};
	int rc;

	ut_set_thread(0);
	rc = keel_bdev_uring_create(name, filename, block_size, ut_create_cb, &r);
	CU_ASSERT_EQUAL(r.done, 0); /* never inside the call */
	if (rc != 0) {
		return rc;
	}
	UT_WAIT(r.done > 0);
	ut_settle();
	CU_ASSERT_EQUAL(r.done, 1);
	CU_ASSERT((r.status == 0) == (r.bdev != NULL));
	if (bdev != NULL) {
		*bdev = r.bdev;
	}
	return r.status;
}

static int ut_delete(const char *name)
{
	struct ut_res r = {0, 0};
	int rc;

	ut_set_thread(0);
	rc = keel_bdev_uring_delete(name, ut_io_done, &r);
	CU_ASSERT_EQUAL(r.done, 0);
	if (rc != 0) {
		return rc;
	}
	UT_WAIT(r.done > 0);
	ut_settle();
	CU_ASSERT_EQUAL(r.done, 1);
	return r.status;
}

/* A descriptor and channel on one harness thread. */
struct ut_dev {
	uint32_t thread;
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	struct keel_bdev *bdev;
	uint32_t block_size;
	uint64_t num_blocks;
	uint32_t align;
	bool direct;
	int removes;          /* KEEL_BDEV_EVENT_REMOVE seen */
	bool close_on_remove; /* a consumer that lets go at once, I/O still in flight */
};

static void ut_dev_close_now(struct ut_dev *dev)
{
	if (dev->ch != NULL) {
		keel_put_io_channel(dev->ch);
	}
	if (dev->desc != NULL) {
		keel_bdev_close(dev->desc);
	}
	dev->ch = NULL;
	dev->desc = NULL;
}

static void ut_dev_event(enum keel_bdev_event_type type, struct keel_bdev *bdev, void *ctx)
{
	struct ut_dev *dev = ctx;

	if (type != KEEL_BDEV_EVENT_REMOVE) {
		return;
	}
	dev->removes++;
	if (dev->close_on_remove) {
		ut_dev_close_now(dev);
	}
}

static int ut_open(struct ut_dev *dev, const char *name, uint32_t thread)
{
	int rc;

	memset(dev, 0, sizeof(*dev));
	dev->thread = thread;
	ut_set_thread(thread);
	rc = keel_bdev_open_ext(name, true, ut_dev_event, dev, &dev->desc);
	if (rc != 0) {
		return rc;
	}
	dev->ch = keel_bdev_get_io_channel(dev->desc);
	if (dev->ch == NULL) {
		keel_bdev_close(dev->desc);
		dev->desc = NULL;
		return -ENODEV;
	}
	dev->bdev = keel_bdev_desc_get_bdev(dev->desc);
	dev->block_size = keel_bdev_get_block_size(dev->bdev);
	dev->num_blocks = keel_bdev_get_num_blocks(dev->bdev);
	dev->align = keel_bdev_get_buf_align(dev->bdev);
	dev->direct = bdev_uring_is_direct(dev->bdev);
	return 0;
}

static void ut_close(struct ut_dev *dev)
{
	ut_set_thread(dev->thread);
	ut_dev_close_now(dev);
	ut_poll_threads();
}

/* ------------------------------------------------------------------------------ */
/* I/O                                                                             */
/* ------------------------------------------------------------------------------ */

static int ut_submit(struct ut_dev *dev, enum keel_bdev_io_type type, struct iovec *iov, int iovcnt,
		     uint64_t offset, uint64_t len, uint32_t flags, keel_bdev_io_cb cb,
		     void *cb_arg)
{
	ut_set_thread(dev->thread);
	switch (type) {
	case KEEL_BDEV_IO_READ:
		return keel_bdev_readv(dev->desc, dev->ch, iov, iovcnt, offset, len, cb, cb_arg);
	case KEEL_BDEV_IO_WRITE:
		return keel_bdev_writev(dev->desc, dev->ch, iov, iovcnt, offset, len, flags, cb,
					cb_arg);
	case KEEL_BDEV_IO_FLUSH:
		return keel_bdev_flush(dev->desc, dev->ch, offset, len, cb, cb_arg);
	case KEEL_BDEV_IO_UNMAP:
		return keel_bdev_unmap(dev->desc, dev->ch, offset, len, cb, cb_arg);
	case KEEL_BDEV_IO_WRITE_ZEROES:
		return keel_bdev_write_zeroes_ext(dev->desc, dev->ch, offset, len, flags, cb,
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

/* One request, to completion. \return the submit error or the completion status. */
static int ut_iov_io(struct ut_dev *dev, enum keel_bdev_io_type type, struct iovec *iov, int iovcnt,
		     uint64_t offset, uint64_t len, uint32_t flags)
{
	struct ut_res r = {0, 0};
	int rc;

	rc = ut_submit(dev, type, iov, iovcnt, offset, len, flags, ut_io_done, &r);
	CU_ASSERT_EQUAL(r.done, 0);
	if (rc != 0) {
		return rc;
	}
	UT_WAIT(r.done > 0);
	ut_settle();
	CU_ASSERT_EQUAL(r.done, 1); /* exactly once */
	return r.status;
}

static int ut_buf_io(struct ut_dev *dev, enum keel_bdev_io_type type, void *buf, uint64_t offset,
		     uint64_t len, uint32_t flags)
{
	struct iovec iov = {.iov_base = buf, .iov_len = len};

	return ut_iov_io(dev, type, &iov, 1, offset, len, flags);
}

/* Keep qd requests of len bytes in flight, count in total; each completes once. */
struct ut_batch;

struct ut_slot {
	struct ut_batch *b;
	uint32_t idx;
};

struct ut_batch {
	struct ut_dev *dev;
	enum keel_bdev_io_type type;
	char *base;
	uint64_t offset;
	uint32_t len;
	uint32_t count;
	uint32_t qd;
	uint32_t submitted;
	uint32_t completed;
	int first_error;
	uint32_t errors;
	uint8_t *calls;
	struct ut_slot *slots;
};

static void ut_batch_fill(struct ut_batch *b);

static void ut_batch_cb(void *arg, int status)
{
	struct ut_slot *s = arg;
	struct ut_batch *b = s->b;

	b->calls[s->idx]++;
	b->completed++;
	if (status != 0) {
		b->errors++;
		if (b->first_error == 0) {
			b->first_error = status;
		}
	}
	ut_batch_fill(b);
}

static void ut_batch_fill(struct ut_batch *b)
{
	while (b->submitted < b->count && b->submitted - b->completed < b->qd) {
		uint32_t i = b->submitted;
		struct iovec iov = {b->base + (uint64_t)i * b->len, b->len};
		int rc;

		/* The core copies the iovec array before it returns. */
		rc = ut_submit(b->dev, b->type, &iov, 1, b->offset + (uint64_t)i * b->len, b->len,
			       0, ut_batch_cb, &b->slots[i]);
		CU_ASSERT_FATAL(rc == 0);
		b->submitted++;
	}
}

static void ut_batch_start(struct ut_batch *b, struct ut_dev *dev, enum keel_bdev_io_type type,
			   char *base, uint64_t offset, uint32_t len, uint32_t count, uint32_t qd)
{
	memset(b, 0, sizeof(*b));
	b->dev = dev;
	b->type = type;
	b->base = base;
	b->offset = offset;
	b->len = len;
	b->count = count;
	b->qd = qd;
	b->calls = calloc(count, 1);
	b->slots = calloc(count, sizeof(*b->slots));
	CU_ASSERT_FATAL(b->calls != NULL && b->slots != NULL);
	for (uint32_t i = 0; i < count; i++) {
		b->slots[i] = (struct ut_slot){b, i};
	}
	ut_batch_fill(b);
}

/* \return the first error; every request completed exactly once. */
static int ut_batch_wait(struct ut_batch *b)
{
	UT_WAIT(b->completed >= b->count);
	ut_settle();
	CU_ASSERT_EQUAL(b->completed, b->count);
	for (uint32_t i = 0; i < b->count; i++) {
		if (b->calls[i] != 1) {
			CU_FAIL("a request did not complete exactly once");
			break;
		}
	}
	free(b->calls);
	free(b->slots);
	b->calls = NULL;
	b->slots = NULL;
	return b->first_error;
}

/* ------------------------------------------------------------------------------ */
/* dump_info_json                                                                  */
/* ------------------------------------------------------------------------------ */

static void ut_dump(struct keel_bdev *bdev, char *out, size_t len)
{
	json_t *obj = json_object();
	char *s;

	ut_set_thread(0);
	bdev->fn_table->dump_info_json(bdev->ctxt, obj);
	s = json_dumps(obj, JSON_COMPACT | JSON_SORT_KEYS);
	snprintf(out, len, "%s", s != NULL ? s : "");
	free(s);
	json_decref(obj);
}

/* ------------------------------------------------------------------------------ */
/* Every I/O type against one backing store                                        */
/* ------------------------------------------------------------------------------ */

static void ut_rw_suite(struct ut_dev *dev, const char *path)
{
	const uint32_t len = 64 * 1024;
	char *wbuf = ut_alloc(len), *rbuf = ut_alloc(len + 4096);
	struct iovec wiov[3], riov[3];
	struct bdev_uring_counters c;
	uint64_t bs = dev->block_size, off;

	CU_ASSERT_FATAL(dev->num_blocks * bs >= 8 * UT_MIB);

	/* write / read, one iovec (IORING_OP_WRITE / READ) */
	ut_fill(wbuf, len, 1);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_WRITE, wbuf, 0, len, 0) == 0);
	memset(rbuf, 0xee, len);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_READ, rbuf, 0, len, 0) == 0);
	CU_ASSERT(memcmp(wbuf, rbuf, len) == 0);
	if (path != NULL) {
		CU_ASSERT(ut_file_matches(path, 0, wbuf, len));
	}

	/* writev / readv with uneven block-multiple segments (WRITEV / READV) */
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

	/* FUA write (RWF_DSYNC) and flush (IORING_OP_FSYNC) */
	ut_fill(wbuf, len, 3);
	off = 2 * UT_MIB;
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_WRITE, wbuf, off, len, KEEL_BDEV_IO_FLAG_FUA) == 0);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_FLUSH, NULL, 0, dev->num_blocks * bs, 0) == 0);
	memset(rbuf, 0xee, len);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_READ, rbuf, off, len, 0) == 0);
	CU_ASSERT(memcmp(wbuf, rbuf, len) == 0);

	/* The same with the kernel "refusing" RWF_DSYNC: write, then fsync. */
	CU_ASSERT(bdev_uring_set_native_fua(dev->bdev, false) == 0);
	CU_ASSERT(bdev_uring_get_counters(dev->bdev, &c) == 0);
	ut_fill(wbuf, len, 4);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_WRITE, wbuf, off, len, KEEL_BDEV_IO_FLAG_FUA) == 0);
	{
		struct bdev_uring_counters after;

		CU_ASSERT(bdev_uring_get_counters(dev->bdev, &after) == 0);
		CU_ASSERT_EQUAL(after.sqes - c.sqes, 2); /* the write and its fsync */
	}
	CU_ASSERT(bdev_uring_set_native_fua(dev->bdev, true) == 0);
	memset(rbuf, 0xee, len);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_READ, rbuf, off, len, 0) == 0);
	CU_ASSERT(memcmp(wbuf, rbuf, len) == 0);

	/* unmap reads back zeroes, neighbours untouched */
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
		printf("\n  (no hole punching here: unmap unsupported) ");
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

	/* the last block; a read beyond the end is refused by the core */
	off = (dev->num_blocks - 1) * bs;
	ut_fill(wbuf, bs, 8);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_WRITE, wbuf, off, bs, 0) == 0);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_READ, rbuf, off, bs, 0) == 0);
	CU_ASSERT(memcmp(wbuf, rbuf, bs) == 0);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_READ, rbuf, off, 2 * bs, 0) == -EINVAL);

	/* every request went through the ring, with the file registered */
	CU_ASSERT(bdev_uring_get_counters(dev->bdev, &c) == 0);
	CU_ASSERT(c.sqes > 0);
	CU_ASSERT_EQUAL(c.sqes, c.cqes);
	CU_ASSERT_EQUAL(c.fixed_file_sqes, c.sqes);

	free(wbuf);
	free(rbuf);
}

/* ------------------------------------------------------------------------------ */
/* Tests: availability                                                             */
/* ------------------------------------------------------------------------------ */

static int ut_init_eperm(unsigned entries, struct io_uring *ring, struct io_uring_params *p)
{
	return -EPERM;
}

static int ut_init_enosys(unsigned entries, struct io_uring *ring, struct io_uring_params *p)
{
	return -ENOSYS;
}

static void test_available(void)
{
	char why[256] = "x";

	CU_ASSERT(keel_bdev_uring_available(why, sizeof(why)));
	CU_ASSERT_STRING_EQUAL(why, "");
	CU_ASSERT(keel_bdev_uring_available(NULL, 0));

	/* A kernel, sysctl or seccomp filter that refuses: a reason, never a crash. */
	bdev_uring_set_ring_init(ut_init_eperm);
	CU_ASSERT(!keel_bdev_uring_available(why, sizeof(why)));
	CU_ASSERT(strstr(why, "EPERM") != NULL || strstr(why, "io_uring_disabled") != NULL);
	printf("\n  (EPERM: %s) ", why);
	bdev_uring_set_ring_init(ut_init_enosys);
	CU_ASSERT(!keel_bdev_uring_available(why, sizeof(why)));
	CU_ASSERT(strstr(why, "ENOSYS") != NULL);
	CU_ASSERT(!keel_bdev_uring_available(why, 1)); /* a tiny buffer is fine */
	CU_ASSERT_STRING_EQUAL(why, "");
	bdev_uring_set_ring_init(NULL);
	CU_ASSERT(keel_bdev_uring_available(why, sizeof(why)));
}

/*
 * io_uring refused at start: the module says so and the subsystem starts anyway; a
 * create fails with -ENOTSUP and a line saying why and what to use; aio is untouched.
 */
static void test_refused_at_start(void)
{
	char path[512];
	struct keel_bdev *bdev = NULL;
	struct ut_dev dev;

	ut_path(path, sizeof(path), URING_UT_DIR, "refused.img");
	ut_make_file(path, 8 * UT_MIB);
	bdev_uring_set_ring_init(ut_init_eperm);
	ut_setup(); /* asserts the subsystem init succeeded */
	UT_WAIT(ut_log_has("io_uring is unavailable", "aio bdevs work"));
	CU_ASSERT(ut_create("ur_refused", path, 0, NULL) == -ENOTSUP);
	CU_ASSERT(ut_log_has("ur_refused", "use an aio bdev"));
	CU_ASSERT(keel_bdev_get_by_name("ur_refused") == NULL);
	bdev_uring_set_ring_init(NULL);

	/* Refused later, for a thread's first ring (a filter applied to new threads): the
	 * bdev exists, opening a channel there fails cleanly and says why. */
	CU_ASSERT_FATAL(ut_create("ur_refused", path, 0, &bdev) == 0);
	ut_log_clear();
	bdev_uring_set_ring_init(ut_init_enosys);
	CU_ASSERT(ut_open(&dev, "ur_refused", 1) == -ENODEV);
	CU_ASSERT(ut_log_has("cannot set up its io_uring", "ENOSYS"));
	bdev_uring_set_ring_init(NULL);
	CU_ASSERT_FATAL(ut_open(&dev, "ur_refused", 1) == 0);
	ut_rw_suite(&dev, path);
	ut_close(&dev);
	CU_ASSERT(ut_delete("ur_refused") == 0);
	ut_teardown();
	unlink(path);
}

/* ------------------------------------------------------------------------------ */
/* Tests: create and delete                                                        */
/* ------------------------------------------------------------------------------ */

static void test_create_errors(void)
{
	char path[512], longname[KEEL_BDEV_NAME_MAX + 8], bad[5000];
	struct keel_bdev *bdev = NULL;
	struct keel_bdev *m;

	ut_setup();
	ut_path(path, sizeof(path), URING_UT_DIR, "missing.img");
	unlink(path);
	CU_ASSERT(ut_create("ur_e", path, 0, NULL) == -ENOENT);
	CU_ASSERT(ut_log_has("ur_e", path));
	CU_ASSERT(ut_create("ur_e", URING_UT_DIR, 0, NULL) == -EISDIR);
	CU_ASSERT(ut_log_has("directory", NULL));
	/* a path through a regular file, and one longer than PATH_MAX */
	ut_path(path, sizeof(path), URING_UT_DIR, "plain.img");
	ut_make_file(path, UT_MIB);
	snprintf(bad, sizeof(bad), "%s/sub", path);
	CU_ASSERT(ut_create("ur_e", bad, 0, NULL) == -ENOTDIR);
	unlink(path);
	memset(bad, 'x', sizeof(bad) - 1);
	bad[0] = '/';
	bad[sizeof(bad) - 1] = '\0';
	CU_ASSERT(ut_create("ur_e", bad, 0, NULL) == -ENAMETOOLONG);
	/* neither a file nor a block device */
	CU_ASSERT(ut_create("ur_e", "/dev/null", 0, NULL) == -EINVAL);
	/* size not a multiple of the block size; empty file */
	ut_path(path, sizeof(path), URING_UT_DIR, "odd.img");
	ut_make_file(path, 1000);
	ut_log_clear();
	CU_ASSERT(ut_create("ur_e", path, 0, NULL) == -EINVAL);
	CU_ASSERT(ut_log_has("not a multiple", path));
	ut_make_file(path, 6144);
	CU_ASSERT(ut_create("ur_e", path, 4096, NULL) == -EINVAL);
	CU_ASSERT(ut_create("ur_e", path, 2048, NULL) == 0);
	CU_ASSERT(ut_delete("ur_e") == 0);
	ut_make_file(path, 0);
	CU_ASSERT(ut_create("ur_e", path, 0, NULL) == -EINVAL);
	/* bad block sizes: refused at once */
	ut_make_file(path, UT_MIB);
	ut_log_clear();
	CU_ASSERT(ut_create("ur_e", path, 1000, NULL) == -EINVAL);
	CU_ASSERT(ut_log_has("block size 1000", NULL));
	CU_ASSERT(ut_create("ur_e", path, 256, NULL) == -EINVAL);
	CU_ASSERT(ut_create("ur_e", path, 3 * 512, NULL) == -EINVAL);
	CU_ASSERT(ut_create("ur_e", path, 1u << 20, NULL) == -EINVAL);
	/* bad arguments */
	CU_ASSERT(ut_create(NULL, path, 0, NULL) == -EINVAL);
	CU_ASSERT(ut_create("ur_e", NULL, 0, NULL) == -EINVAL);
	CU_ASSERT(ut_create("ur_e", "", 0, NULL) == -EINVAL);
	CU_ASSERT(ut_create("", path, 0, NULL) == -EINVAL);
	memset(longname, 'n', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	CU_ASSERT(ut_create(longname, path, 0, NULL) == -EINVAL);
	CU_ASSERT(ut_create("ur/e", path, 0, NULL) == -EINVAL); /* the core refuses '/' */
	ut_set_thread(UT_THREAD_NONE);
	CU_ASSERT(keel_bdev_uring_create("ur_e", path, 0, ut_create_cb, NULL) == -EINVAL);
	ut_set_thread(0);
	/* duplicate name, also across modules */
	CU_ASSERT_FATAL(ut_create("ur_dup", path, 0, &bdev) == 0);
	CU_ASSERT(ut_create("ur_dup", path, 0, NULL) == -EEXIST);
	CU_ASSERT(keel_bdev_get_num_blocks(bdev) == UT_MIB / 512);
	CU_ASSERT_STRING_EQUAL(keel_bdev_get_module_name(bdev), "uring");
	CU_ASSERT(keel_bdev_malloc_create("ur_m", NULL, 2048, 512, &m) == 0);
	CU_ASSERT(ut_create("ur_m", path, 0, NULL) == -EEXIST);
	/* delete: unknown, NULL, another module's bdev, twice */
	CU_ASSERT(ut_delete("ur_nope") == -ENODEV);
	CU_ASSERT(ut_delete(NULL) == -ENODEV);
	CU_ASSERT(ut_delete("ur_m") == -ENODEV);
	CU_ASSERT(ut_delete("ur_dup") == 0);
	CU_ASSERT(ut_delete("ur_dup") == -ENODEV);
	{
		struct ut_res r = {0, 0};

		CU_ASSERT(keel_bdev_malloc_delete("ur_m", ut_io_done, &r) == 0);
		UT_WAIT(r.done == 1);
	}
	ut_teardown();
	unlink(path);
}

/* ------------------------------------------------------------------------------ */
/* Tests: backing stores                                                           */
/* ------------------------------------------------------------------------------ */

static void test_direct_file(void)
{
	char path[512], json[600], expect[700];
	struct keel_bdev *bdev = NULL;
	struct ut_dev dev;

	ut_setup();
	ut_path(path, sizeof(path), URING_UT_DIR, "direct.img");
	ut_make_file(path, 8 * UT_MIB);
	CU_ASSERT_FATAL(ut_create("ur_direct", path, 0, &bdev) == 0);
	CU_ASSERT(!ut_log_has("O_DIRECT", NULL));
	CU_ASSERT_FATAL(ut_open(&dev, "ur_direct", 0) == 0);
	CU_ASSERT(dev.direct);
	CU_ASSERT(dev.align == dev.block_size);
	CU_ASSERT(dev.num_blocks * dev.block_size == 8 * UT_MIB);
	CU_ASSERT(keel_bdev_has_write_cache(dev.bdev));
	CU_ASSERT(keel_bdev_get_max_transfer_blocks(dev.bdev) * dev.block_size == 1u << 30);
	ut_dump(bdev, json, sizeof(json));
	snprintf(expect, sizeof(expect),
		 "{\"block_size\":%u,\"direct\":true,\"filename\":\"%s\","
		 "\"inline_issue\":true}",
		 dev.block_size, path);
	CU_ASSERT_STRING_EQUAL(json, expect);
	ut_rw_suite(&dev, path);
	ut_close(&dev);
	CU_ASSERT(ut_delete("ur_direct") == 0);
	ut_teardown();
	unlink(path);
}

static void test_explicit_block_size(void)
{
	char path[512];
	struct ut_dev dev;

	ut_setup();
	ut_path(path, sizeof(path), URING_UT_DIR, "bs4k.img");
	ut_make_file(path, 8 * UT_MIB);
	CU_ASSERT_FATAL(ut_create("ur_bs4k", path, 4096, NULL) == 0);
	CU_ASSERT_FATAL(ut_open(&dev, "ur_bs4k", 1) == 0);
	CU_ASSERT(dev.block_size == 4096);
	CU_ASSERT(dev.num_blocks == 2048);
	CU_ASSERT(dev.direct);
	CU_ASSERT(dev.align == 4096);
	ut_rw_suite(&dev, path);
	ut_close(&dev);
	CU_ASSERT(ut_delete("ur_bs4k") == 0);
	ut_teardown();
	unlink(path);
}

/* Whether \p path may be opened with O_DIRECT here (tmpfs may since Linux 6.6). */
static bool ut_direct_allowed(const char *path)
{
	int fd = open(path, O_RDWR | O_DIRECT);

	if (fd < 0) {
		return false;
	}
	close(fd);
	return true;
}

static void ut_store_case(const char *name, const char *path, bool expect_direct,
			  bool expect_inline)
{
	char json[600];
	struct keel_bdev *bdev = NULL;
	struct ut_dev dev;

	ut_log_clear();
	CU_ASSERT_FATAL(ut_create(name, path, 0, &bdev) == 0);
	/* the buffered fallback is announced, naming the file */
	CU_ASSERT(ut_log_has("O_DIRECT", path) == !expect_direct);
	CU_ASSERT_FATAL(ut_open(&dev, name, 1) == 0);
	CU_ASSERT(dev.direct == expect_direct);
	CU_ASSERT(dev.block_size == 512);
	CU_ASSERT(expect_direct ? dev.align == 512 : dev.align <= 1);
	ut_dump(bdev, json, sizeof(json));
	CU_ASSERT(strstr(json, expect_direct ? "\"direct\":true" : "\"direct\":false") != NULL);
	/* tmpfs has no RWF_NOWAIT: io_uring runs its requests on kernel workers */
	CU_ASSERT(strstr(json, expect_inline ? "\"inline_issue\":true"
					     : "\"inline_issue\":false") != NULL);
	ut_rw_suite(&dev, path);
	ut_close(&dev);
	CU_ASSERT(ut_delete(name) == 0);
}

/* /dev/shm with O_DIRECT (Linux 6.6+), and both tmpfs and the disk forced buffered. */
static void test_tmpfs_and_buffered(void)
{
	char shm[512], disk[512];
	struct stat st;

	ut_setup();
	ut_path(disk, sizeof(disk), URING_UT_DIR, "buffered.img");
	ut_make_file(disk, 8 * UT_MIB);
	if (stat("/dev/shm", &st) == 0) {
		ut_path(shm, sizeof(shm), "/dev/shm", "tmpfs.img");
		ut_make_file(shm, 8 * UT_MIB);
		ut_store_case("ur_tmpfs", shm, ut_direct_allowed(shm), false);
		bdev_uring_set_refuse_direct(true);
		ut_store_case("ur_tmpfs_buf", shm, false, false);
		bdev_uring_set_refuse_direct(false);
		unlink(shm);
	} else {
		printf("\n  (no /dev/shm) ");
	}
	bdev_uring_set_refuse_direct(true);
	ut_store_case("ur_disk_buf", disk, false, true);
	bdev_uring_set_refuse_direct(false);
	ut_teardown();
	unlink(disk);
}

/* ------------------------------------------------------------------------------ */
/* Tests: the shared ring                                                          */
/* ------------------------------------------------------------------------------ */

/* Two threads x three bdevs: two rings; batched submission; one delete leaves the rest. */
static void test_shared_ring(void)
{
	const uint32_t len = 4096, count = 256, qd = 32;
	char path[3][512], name[3][16];
	char *wbuf[3][2], *rbuf[3][2];
	struct ut_dev dev[3][2];
	struct ut_batch b[3][2];
	struct bdev_uring_module_stats st0, st;
	int i, t;

	ut_setup();
	bdev_uring_get_module_stats(&st0);
	CU_ASSERT_EQUAL(st0.rings, 0);
	for (i = 0; i < 3; i++) {
		char leaf[32];

		snprintf(leaf, sizeof(leaf), "shared%d.img", i);
		snprintf(name[i], sizeof(name[i]), "ur_sh%d", i);
		ut_path(path[i], sizeof(path[i]), i == 1 ? "/dev/shm" : URING_UT_DIR, leaf);
		ut_make_file(path[i], 8 * UT_MIB);
		CU_ASSERT_FATAL(ut_create(name[i], path[i], 4096, NULL) == 0);
		for (t = 0; t < 2; t++) {
			CU_ASSERT_FATAL(ut_open(&dev[i][t], name[i], (uint32_t)t) == 0);
			wbuf[i][t] = ut_alloc((size_t)len * count);
			rbuf[i][t] = ut_alloc((size_t)len * count);
			ut_fill(wbuf[i][t], (size_t)len * count, 10u + (unsigned)(i * 2 + t));
		}
	}
	bdev_uring_get_module_stats(&st);
	CU_ASSERT_EQUAL(st.rings, 2); /* one per keel thread, not per bdev */
	CU_ASSERT_EQUAL(st.queues, 6);
	CU_ASSERT_EQUAL(st.registered_files, 6);

	/* every (bdev, thread) writes its own 4 MiB half at the same time */
	for (i = 0; i < 3; i++) {
		for (t = 0; t < 2; t++) {
			ut_batch_start(&b[i][t], &dev[i][t], KEEL_BDEV_IO_WRITE, wbuf[i][t],
				       (uint64_t)t * 4 * UT_MIB, len, count, qd);
		}
	}
	for (i = 0; i < 3; i++) {
		for (t = 0; t < 2; t++) {
			CU_ASSERT(ut_batch_wait(&b[i][t]) == 0);
		}
	}
	bdev_uring_get_module_stats(&st);
	/* batched: far fewer io_uring_enter calls than requests */
	CU_ASSERT(st.sqes - st0.sqes >= 6 * count);
	CU_ASSERT(st.enter_calls - st0.enter_calls < (st.sqes - st0.sqes) / 4);
	printf("\n  (%" PRIu64 " requests in %" PRIu64 " io_uring_enter calls, %" PRIu64
	       " eventfd reads) ",
	       st.sqes - st0.sqes, st.enter_calls - st0.enter_calls,
	       st.eventfd_reads - st0.eventfd_reads);

	/* bdev 0 goes away while 1 and 2 keep reading on the same rings */
	for (i = 1; i < 3; i++) {
		for (t = 0; t < 2; t++) {
			ut_batch_start(&b[i][t], &dev[i][t], KEEL_BDEV_IO_READ, rbuf[i][1 - t],
				       (uint64_t)(1 - t) * 4 * UT_MIB, len, count, qd);
		}
	}
	ut_close(&dev[0][0]);
	ut_close(&dev[0][1]);
	CU_ASSERT(ut_delete(name[0]) == 0);
	for (i = 1; i < 3; i++) {
		for (t = 0; t < 2; t++) {
			CU_ASSERT(ut_batch_wait(&b[i][t]) == 0);
		}
	}
	for (i = 1; i < 3; i++) {
		for (t = 0; t < 2; t++) {
			CU_ASSERT(memcmp(wbuf[i][t], rbuf[i][t], (size_t)len * count) == 0);
		}
	}
	bdev_uring_get_module_stats(&st);
	CU_ASSERT_EQUAL(st.rings, 2);
	CU_ASSERT_EQUAL(st.queues, 4);
	for (i = 1; i < 3; i++) {
		ut_close(&dev[i][0]);
		ut_close(&dev[i][1]);
		CU_ASSERT(ut_delete(name[i]) == 0);
	}
	/* the last channel of a thread takes its ring with it */
	ut_settle();
	bdev_uring_get_module_stats(&st);
	CU_ASSERT_EQUAL(st.rings, 0);
	CU_ASSERT_EQUAL(st.queues, 0);
	for (i = 0; i < 3; i++) {
		for (t = 0; t < 2; t++) {
			free(wbuf[i][t]);
			free(rbuf[i][t]);
		}
		unlink(path[i]);
	}
	ut_teardown();
}

/* A tiny ring: requests wait in the thread's FIFO, across bdevs, and none is lost. */
static void test_ring_full(void)
{
	const uint32_t len = 4096, count = 1024;
	char path[2][512];
	char *wbuf[2], *rbuf[2];
	struct bdev_uring_counters c;
	struct ut_dev dev[2];
	struct ut_batch b[2];
	int i;

	CU_ASSERT(bdev_uring_set_ring_size(0, 8) == -EINVAL);
	CU_ASSERT(bdev_uring_set_ring_size(3, 8) == -EINVAL);
	CU_ASSERT(bdev_uring_set_ring_size(8, 4) == -EINVAL);
	CU_ASSERT(bdev_uring_set_ring_size(8192, 8192) == -EINVAL);
	CU_ASSERT_FATAL(bdev_uring_set_ring_size(4, 8) == 0);
	ut_setup();
	for (i = 0; i < 2; i++) {
		char leaf[32], name[16];

		snprintf(leaf, sizeof(leaf), "full%d.img", i);
		snprintf(name, sizeof(name), "ur_full%d", i);
		ut_path(path[i], sizeof(path[i]), URING_UT_DIR, leaf);
		ut_make_file(path[i], 8 * UT_MIB);
		CU_ASSERT_FATAL(ut_create(name, path[i], 4096, NULL) == 0);
		CU_ASSERT_FATAL(ut_open(&dev[i], name, 0) == 0);
		wbuf[i] = ut_alloc((size_t)len * count);
		rbuf[i] = ut_alloc((size_t)len * count);
		ut_fill(wbuf[i], (size_t)len * count, 20u + (unsigned)i);
		memset(rbuf[i], 0xee, (size_t)len * count);
	}
	CU_ASSERT_FATAL(bdev_uring_set_ring_size(BDEV_URING_DEFAULT_SQ_ENTRIES,
						 BDEV_URING_DEFAULT_CQ_ENTRIES) == 0);
	for (i = 0; i < 2; i++) {
		ut_batch_start(&b[i], &dev[i], KEEL_BDEV_IO_WRITE, wbuf[i], 0, len, count, 256);
	}
	for (i = 0; i < 2; i++) {
		CU_ASSERT(ut_batch_wait(&b[i]) == 0);
	}
	for (i = 0; i < 2; i++) {
		ut_batch_start(&b[i], &dev[i], KEEL_BDEV_IO_READ, rbuf[i], 0, len, count, 256);
	}
	for (i = 0; i < 2; i++) {
		char name[16];

		CU_ASSERT(ut_batch_wait(&b[i]) == 0);
		CU_ASSERT(memcmp(wbuf[i], rbuf[i], (size_t)len * count) == 0);
		CU_ASSERT(bdev_uring_get_counters(dev[i].bdev, &c) == 0);
		CU_ASSERT(c.waited > 0);
		CU_ASSERT_EQUAL(c.sqes, 2 * count);
		printf("\n  (bdev %d: %" PRIu64 " of %u requests waited for room) ", i, c.waited,
		       2 * count);
		ut_close(&dev[i]);
		snprintf(name, sizeof(name), "ur_full%d", i);
		CU_ASSERT(ut_delete(name) == 0);
		free(wbuf[i]);
		free(rbuf[i]);
		unlink(path[i]);
	}
	ut_teardown();
}

/* ------------------------------------------------------------------------------ */
/* Tests: sleeping and waking                                                      */
/* ------------------------------------------------------------------------------ */

static bool ut_fd_readable(int fd, int timeout_ms)
{
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	uint64_t start = ut_mono_ms();
	int rc;

	do {
		rc = poll(&pfd, 1, timeout_ms);
	} while (rc < 0 && errno == EINTR && (int)(ut_mono_ms() - start) < timeout_ms);
	return rc == 1 && (pfd.revents & POLLIN);
}

/*
 * What lets an idle reactor sleep: with nothing to do the ring's eventfd is not
 * readable; a completion makes it readable (it wakes epoll), and once the poller took
 * it and went idle it is drained again.
 */
static void test_eventfd_wakes(void)
{
	char path[2][512];
	char *buf = ut_alloc(4096);
	struct keel_poller *poller;
	struct ut_dev dev;
	struct ut_res r;
	int efd, i;

	ut_setup();
	ut_path(path[0], sizeof(path[0]), URING_UT_DIR, "wake.img");
	ut_path(path[1], sizeof(path[1]), "/dev/shm", "wake.img");
	for (i = 0; i < 2; i++) {
		ut_make_file(path[i], 8 * UT_MIB);
		CU_ASSERT_FATAL(ut_create("ur_wake", path[i], 0, NULL) == 0);
		CU_ASSERT_FATAL(ut_open(&dev, "ur_wake", 0) == 0);
		ut_set_thread(0);
		efd = bdev_uring_thread_eventfd();
		poller = bdev_uring_thread_poller();
		CU_ASSERT_FATAL(efd >= 0 && poller != NULL);
		CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_WRITE, buf, 0, 4096, 0) == 0);
		ut_poll_threads();
		CU_ASSERT(!ut_fd_readable(efd, 0)); /* idle: nothing to wake for */

		/* the poller held back: the request is submitted, its completion wakes */
		ut_set_thread(0);
		keel_poller_pause(poller);
		memset(&r, 0, sizeof(r));
		CU_ASSERT_FATAL(ut_submit(&dev, KEEL_BDEV_IO_READ, &(struct iovec){buf, 4096}, 1, 0,
					  4096, 0, ut_io_done, &r) == 0);
		ut_poll_threads(); /* runs the submitting message */
		CU_ASSERT(ut_fd_readable(efd, UT_WAIT_MS));
		CU_ASSERT_EQUAL(r.done, 0);
		ut_set_thread(0);
		keel_poller_resume(poller);
		UT_WAIT(r.done == 1);
		CU_ASSERT_EQUAL(r.status, 0);
		ut_poll_threads();
		CU_ASSERT(!ut_fd_readable(efd, 0)); /* drained when it went idle */
		ut_close(&dev);
		CU_ASSERT(ut_delete("ur_wake") == 0);
		unlink(path[i]);
	}
	free(buf);
	ut_teardown();
}

/* ------------------------------------------------------------------------------ */
/* Tests: hot remove, error bdev, hostile sizes, device errors                     */
/* ------------------------------------------------------------------------------ */

/*
 * Delete a bdev with requests in the kernel and waiting in a full ring, its consumer
 * letting go on the REMOVE event: every request completes exactly once, with its
 * data, then the delete finishes; a bdev sharing the ring is not disturbed.
 */
static void test_hot_remove(void)
{
	const uint32_t len = 4096, count = 128;
	char path[2][512];
	char *wbuf = ut_alloc((size_t)len * count), *rbuf = ut_alloc((size_t)len * count);
	struct ut_dev dev, other;
	struct ut_batch b, bo;
	struct ut_res del = {0, 0};
	int round;

	CU_ASSERT_FATAL(bdev_uring_set_ring_size(8, 16) == 0);
	ut_setup();
	ut_path(path[0], sizeof(path[0]), URING_UT_DIR, "remove.img");
	ut_path(path[1], sizeof(path[1]), "/dev/shm", "remove-other.img");
	ut_make_file(path[0], 8 * UT_MIB);
	ut_make_file(path[1], 8 * UT_MIB);
	CU_ASSERT_FATAL(ut_create("ur_other", path[1], 0, NULL) == 0);
	CU_ASSERT_FATAL(ut_open(&other, "ur_other", 0) == 0);
	for (round = 0; round < 2; round++) {
		enum keel_bdev_io_type type = round == 0 ? KEEL_BDEV_IO_WRITE : KEEL_BDEV_IO_READ;

		CU_ASSERT_FATAL(ut_create("ur_rm", path[0], 0, NULL) == 0);
		CU_ASSERT_FATAL(ut_open(&dev, "ur_rm", 0) == 0);
		dev.close_on_remove = true;
		ut_fill(wbuf, (size_t)len * count, 30);
		memset(rbuf, 0xee, (size_t)len * count);
		ut_batch_start(&bo, &other, KEEL_BDEV_IO_WRITE, wbuf, 0, len, count, 16);
		/* all at once: 16 fit the ring, the rest wait in its FIFO */
		ut_batch_start(&b, &dev, type, round == 0 ? wbuf : rbuf, 0, len, count, count);
		CU_ASSERT_EQUAL(b.submitted, count);
		ut_set_thread(0);
		CU_ASSERT(keel_bdev_uring_delete("ur_rm", ut_io_done, &del) == 0);
		CU_ASSERT(keel_bdev_get_by_name("ur_rm") == NULL);
		CU_ASSERT(ut_batch_wait(&b) == 0); /* in flight: completes normally */
		CU_ASSERT(ut_batch_wait(&bo) == 0);
		UT_WAIT(del.done == 1);
		ut_settle();
		CU_ASSERT_EQUAL(del.done, 1);
		CU_ASSERT_EQUAL(dev.removes, 1);
		CU_ASSERT(dev.desc == NULL);
		del.done = 0;
		if (round == 1) {
			CU_ASSERT(memcmp(wbuf, rbuf, (size_t)len * count) == 0);
		}
	}
	CU_ASSERT(ut_file_matches(path[0], 0, wbuf, (size_t)len * count));
	ut_close(&other);
	CU_ASSERT(ut_delete("ur_other") == 0);
	CU_ASSERT_FATAL(bdev_uring_set_ring_size(BDEV_URING_DEFAULT_SQ_ENTRIES,
						 BDEV_URING_DEFAULT_CQ_ENTRIES) == 0);
	ut_teardown();
	free(wbuf);
	free(rbuf);
	unlink(path[0]);
	unlink(path[1]);
}

/* Errors injected by an error bdev stacked on a uring bdev reach the consumer, and
 * the uring bdev underneath keeps serving correct data. */
static void test_error_bdev(void)
{
	const uint32_t len = 8192;
	char path[512];
	char *wbuf = ut_alloc(len), *rbuf = ut_alloc(len);
	struct keel_bdev_error_rule rule;
	struct keel_bdev *ebdev;
	struct ut_dev dev;
	int i;

	ut_setup();
	ut_path(path, sizeof(path), URING_UT_DIR, "error.img");
	ut_make_file(path, 8 * UT_MIB);
	CU_ASSERT_FATAL(ut_create("ur_base", path, 0, NULL) == 0);
	ut_set_thread(0);
	CU_ASSERT_FATAL(keel_bdev_error_create("EE_ur_base", "ur_base", &ebdev) == 0);
	CU_ASSERT_FATAL(ut_open(&dev, "EE_ur_base", 1) == 0);
	ut_fill(wbuf, len, 40);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_WRITE, wbuf, 0, len, 0) == 0);

	memset(&rule, 0, sizeof(rule));
	rule.io_type = KEEL_BDEV_IO_READ;
	rule.count = 2;
	rule.error = -EIO;
	CU_ASSERT(keel_bdev_error_inject("EE_ur_base", &rule) == 0);
	for (i = 0; i < 2; i++) {
		CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_READ, rbuf, 0, len, 0) == -EIO);
	}
	memset(rbuf, 0xee, len);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_READ, rbuf, 0, len, 0) == 0);
	CU_ASSERT(memcmp(wbuf, rbuf, len) == 0);

	rule.io_type = KEEL_BDEV_IO_WRITE;
	rule.count = 0;
	rule.every_nth = 2;
	rule.error = -ENOSPC;
	CU_ASSERT(keel_bdev_error_inject("EE_ur_base", &rule) == 0);
	{
		char *big = ut_alloc((size_t)len * 64);
		struct ut_batch b;

		ut_fill(big, (size_t)len * 64, 41);
		ut_batch_start(&b, &dev, KEEL_BDEV_IO_WRITE, big, UT_MIB, len, 64, 16);
		CU_ASSERT(ut_batch_wait(&b) == -ENOSPC);
		CU_ASSERT_EQUAL(b.errors, 32);
		free(big);
	}
	rule.io_type = KEEL_BDEV_IO_FLUSH;
	rule.every_nth = 0;
	rule.count = 1;
	rule.error = -EIO;
	CU_ASSERT(keel_bdev_error_inject("EE_ur_base", &rule) == 0);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_FLUSH, NULL, 0, len, 0) == -EIO);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_FLUSH, NULL, 0, len, 0) == 0);
	CU_ASSERT(keel_bdev_error_clear("EE_ur_base") == 0);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_READ, rbuf, 0, len, 0) == 0);
	CU_ASSERT(memcmp(wbuf, rbuf, len) == 0);
	CU_ASSERT(ut_file_matches(path, 0, wbuf, len));
	ut_close(&dev);
	{
		struct ut_res r = {0, 0};

		ut_set_thread(0);
		CU_ASSERT(keel_bdev_error_delete("EE_ur_base", ut_io_done, &r) == 0);
		UT_WAIT(r.done == 1);
	}
	CU_ASSERT(ut_delete("ur_base") == 0);
	ut_teardown();
	free(wbuf);
	free(rbuf);
	unlink(path);
}

/* The file shrinks underneath: reads past its end give zeroes, not an error. */
static void ut_shrink_case(struct ut_dev *dev, const char *path, char *buf)
{
	ut_fill(buf, 8192, 51);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_WRITE, buf, UT_MIB - 8192, 8192, 0) == 0);
	CU_ASSERT(truncate(path, UT_MIB - 4096) == 0);
	memset(buf, 0xee, 8192);
	CU_ASSERT(ut_buf_io(dev, KEEL_BDEV_IO_READ, buf, UT_MIB - 8192, 8192, 0) == 0);
	CU_ASSERT(ut_is_zero(buf + 4096, 4096));
	ut_fill(buf + 8192, 4096, 51);
	CU_ASSERT(memcmp(buf, buf + 8192, 4096) == 0);
}

/*
 * Allocation query (lseek on the blocking pool) on a sparse file: the hole, the data,
 * the hole after it; write_zeroes that may unmap punches the data out again.
 */
static void test_get_allocation(void)
{
	const uint32_t hole = KEEL_BDEV_EXTENT_HOLE | KEEL_BDEV_EXTENT_ZERO;
	struct keel_bdev_extent ext[8];
	struct iovec eiov = {.iov_base = ext, .iov_len = sizeof(ext)};
	char path[512];
	char *buf = ut_alloc(8192);
	struct ut_dev dev;

	ut_setup();
	ut_path(path, sizeof(path), URING_UT_DIR, "sparse.img");
	ut_make_file(path, UT_MIB);
	CU_ASSERT_FATAL(ut_create("ur_sparse", path, 512, NULL) == 0);
	CU_ASSERT_FATAL(ut_open(&dev, "ur_sparse", 0) == 0);
	ut_fill(buf, 8192, 9);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_WRITE, buf, 512 * 1024, 8192, 0) == 0);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_FLUSH, NULL, 0, UT_MIB, 0) == 0);
	CU_ASSERT(ut_iov_io(&dev, KEEL_BDEV_IO_GET_ALLOCATION, &eiov, 1, 0, UT_MIB, 0) == 0);
	CU_ASSERT(ext[0].length == 512 * 1024 && ext[0].flags == hole);
	CU_ASSERT(ext[1].length == 8192 && ext[1].flags == 0);
	CU_ASSERT(ext[2].length == UT_MIB - 512 * 1024 - 8192 && ext[2].flags == hole);
	CU_ASSERT(ext[3].length == 0);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_WRITE_ZEROES, NULL, 512 * 1024, 8192,
			    KEEL_BDEV_IO_FLAG_UNMAP) == 0);
	{
		struct stat st; /* punched, not zeroed in place: no block left */

		CU_ASSERT(stat(path, &st) == 0 && st.st_blocks == 0);
	}
	CU_ASSERT(ut_iov_io(&dev, KEEL_BDEV_IO_GET_ALLOCATION, &eiov, 1, 0, UT_MIB, 0) == 0);
	CU_ASSERT(ext[0].length == UT_MIB && ext[0].flags == hole);
	ut_close(&dev);
	CU_ASSERT(ut_delete("ur_sparse") == 0);
	ut_teardown();
	free(buf);
	unlink(path);
}

/*
 * Sizes a consumer should not send: refused by the core before the module (zero,
 * unaligned, beyond the end, overflowing), or handled by the module (more segments than
 * the kernel takes, one request over the whole device, a file shrunk underneath).
 */
static void test_hostile_sizes(void)
{
	const uint64_t size = 64 * UT_MIB;
	char path[512];
	char *buf = ut_alloc(size);
	struct iovec *iov;
	struct ut_dev dev;
	int i, n = IOV_MAX + 1;

	ut_setup();
	ut_path(path, sizeof(path), URING_UT_DIR, "hostile.img");
	ut_make_file(path, (off_t)size);
	CU_ASSERT_FATAL(ut_create("ur_h", path, 0, NULL) == 0);
	CU_ASSERT_FATAL(ut_open(&dev, "ur_h", 0) == 0);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_READ, buf, 0, 0, 0) == -EINVAL);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_READ, buf, 100, 512, 0) == -EINVAL);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_WRITE, buf, 0, 1000, 0) == -EINVAL);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_READ, buf, size, 512, 0) == -EINVAL);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_READ, buf, size - 512, 1024, 0) == -EINVAL);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_READ, buf, UINT64_MAX - 511, 512, 0) == -EINVAL);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_UNMAP, NULL, 512, UINT64_MAX - 511, 0) == -EINVAL);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_WRITE_ZEROES, NULL, size, 512, 0) == -EINVAL);

	/* one request over the whole device, each way, then zeroes and unmap over it all */
	ut_fill(buf, size, 50);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_WRITE, buf, 0, size, 0) == 0);
	memset(buf, 0xee, size);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_READ, buf, 0, size, 0) == 0);
	{
		char *expect = ut_alloc(size);

		ut_fill(expect, size, 50);
		CU_ASSERT(memcmp(buf, expect, size) == 0);
		free(expect);
	}
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_WRITE_ZEROES, NULL, 0, size, 0) == 0);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_READ, buf, 0, size, 0) == 0);
	CU_ASSERT(ut_is_zero(buf, size));
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_UNMAP, NULL, 0, size, 0) == 0);

	/* more segments than one kernel request takes: a clean -EINVAL, once */
	iov = calloc((size_t)n, sizeof(*iov));
	CU_ASSERT_FATAL(iov != NULL);
	for (i = 0; i < n; i++) {
		iov[i] = (struct iovec){buf + (size_t)i * 512, 512};
	}
	CU_ASSERT(ut_iov_io(&dev, KEEL_BDEV_IO_READ, iov, n, 0, (uint64_t)n * 512, 0) == -EINVAL);
	CU_ASSERT(ut_iov_io(&dev, KEEL_BDEV_IO_WRITE, iov, n, 0, (uint64_t)n * 512, 0) == -EINVAL);
	n = IOV_MAX;
	CU_ASSERT(ut_iov_io(&dev, KEEL_BDEV_IO_READ, iov, n, 0, (uint64_t)n * 512, 0) == 0);
	free(iov);

	ut_shrink_case(&dev, path, buf);
	ut_close(&dev);
	CU_ASSERT(ut_delete("ur_h") == 0);
	unlink(path);

	/* the same shrink on tmpfs, whose short read leaves the tail alone (ext4's O_DIRECT
	 * read zeroes it itself) */
	ut_path(path, sizeof(path), "/dev/shm", "hostile.img");
	ut_make_file(path, 8 * UT_MIB);
	CU_ASSERT_FATAL(ut_create("ur_h", path, 0, NULL) == 0);
	CU_ASSERT_FATAL(ut_open(&dev, "ur_h", 1) == 0);
	ut_shrink_case(&dev, path, buf);
	ut_close(&dev);
	CU_ASSERT(ut_delete("ur_h") == 0);
	unlink(path);
	ut_teardown();
	free(buf);
}

/*
 * A sparse file on a 1 MiB tmpfs: a write past the space the kernel has comes back
 * short (-EIO, never a silent partial write), then -ENOSPC (the kernel's errno).
 */
static void test_write_errors(void)
{
	const uint32_t len = 96 * 1024;
	char dir[512], path[600], cmd[700];
	char *buf = ut_alloc(len), *expect = ut_alloc(len);
	int i, rc, n_eio = 0, n_enospc = 0, n_ok = 0;
	struct ut_dev dev;

	snprintf(dir, sizeof(dir), "%s/small-%d", URING_UT_DIR, (int)getpid());
	if (geteuid() != 0 || mkdir(dir, 0700) != 0) {
		printf("\n  (skipped: not root) ");
		goto out_free;
	}
	snprintf(cmd, sizeof(cmd), "mount -t tmpfs -o size=1m none '%s' 2>/dev/null", dir);
	if (system(cmd) != 0) {
		printf("\n  (skipped: cannot mount tmpfs) ");
		rmdir(dir);
		goto out_free;
	}
	ut_setup();
	snprintf(path, sizeof(path), "%s/sparse.img", dir);
	ut_make_file(path, 8 * UT_MIB);
	CU_ASSERT_FATAL(ut_create("ur_full", path, 0, NULL) == 0);
	CU_ASSERT_FATAL(ut_open(&dev, "ur_full", 0) == 0);
	ut_fill(buf, len, 60);
	memcpy(expect, buf, len);
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
	CU_ASSERT(ut_log_has("ur_full", "short write"));
	memset(buf, 0xee, len);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_READ, buf, 0, len, 0) == 0);
	CU_ASSERT(memcmp(buf, expect, len) == 0);
	CU_ASSERT(ut_buf_io(&dev, KEEL_BDEV_IO_READ, buf, 7 * UT_MIB, len, 0) == 0);
	CU_ASSERT(ut_is_zero(buf, len));
	ut_close(&dev);
	CU_ASSERT(ut_delete("ur_full") == 0);
	ut_teardown();
	unlink(path);
	snprintf(cmd, sizeof(cmd), "umount '%s'", dir);
	CU_ASSERT(system(cmd) == 0);
	rmdir(dir);
out_free:
	free(buf);
	free(expect);
}

/* A loop block device: BLKSSZGET, and unmap/write_zeroes as fallocate on a device. */
static void test_block_device(void)
{
	char path[512], cmd[700], loopdev[64] = "";
	struct ut_dev dev;
	FILE *p;

	ut_path(path, sizeof(path), URING_UT_DIR, "loop.img");
	ut_make_file(path, 16 * UT_MIB);
	snprintf(cmd, sizeof(cmd), "losetup -f --show '%s' 2>/dev/null", path);
	p = geteuid() == 0 ? popen(cmd, "r") : NULL;
	if (p == NULL || fgets(loopdev, sizeof(loopdev), p) == NULL ||
	    strncmp(loopdev, "/dev/loop", 9) != 0) {
		if (p != NULL) {
			pclose(p);
		}
		printf("\n  (skipped: no loop device) ");
		unlink(path);
		return;
	}
	pclose(p);
	loopdev[strcspn(loopdev, "\n")] = '\0';
	ut_setup();
	CU_ASSERT(ut_create("ur_loop", loopdev, 256, NULL) == -EINVAL);
	if (ut_create("ur_loop", loopdev, 0, NULL) == 0) {
		CU_ASSERT_FATAL(ut_open(&dev, "ur_loop", 1) == 0);
		CU_ASSERT(dev.block_size == 512 || dev.block_size == 4096);
		CU_ASSERT(dev.num_blocks * dev.block_size == 16 * UT_MIB);
		CU_ASSERT(dev.direct);
		ut_rw_suite(&dev, NULL);
		ut_close(&dev);
		CU_ASSERT(ut_delete("ur_loop") == 0);
	} else {
		CU_FAIL("uring bdev on a loop device");
	}
	ut_teardown();
	snprintf(cmd, sizeof(cmd), "losetup -d %s", loopdev);
	CU_ASSERT(system(cmd) == 0);
	unlink(path);
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"available", test_available},
		{"refused_at_start", test_refused_at_start},
		{"create_errors", test_create_errors},
		{"direct_file", test_direct_file},
		{"explicit_block_size", test_explicit_block_size},
		{"tmpfs_and_buffered", test_tmpfs_and_buffered},
		{"shared_ring", test_shared_ring},
		{"ring_full", test_ring_full},
		{"eventfd_wakes", test_eventfd_wakes},
		{"hot_remove", test_hot_remove},
		{"get_allocation", test_get_allocation},
		{"error_bdev", test_error_bdev},
		{"hostile_sizes", test_hostile_sizes},
		{"write_errors", test_write_errors},
		{"block_device", test_block_device},
		{NULL, NULL},
	};
	char why[256];
	int rc;

	if (!keel_bdev_uring_available(why, sizeof(why))) {
		printf("uring_ut: io_uring is unavailable here (%s): skipped\n", why);
		return 77;
	}
	keel_log_set_hook(ut_log_hook, NULL);
	if (getenv("URING_UT_VERBOSE") == NULL) {
		keel_log_set_level(KEEL_LOG_WARN);
	}
	rc = ut_cunit_run("uring", tests);
	keel_log_set_hook(NULL, NULL);
	return rc;
}
