/*
 * bdev core tests on the deterministic harness with a stub module that keeps a RAM
 * copy of its data and completes either inline or when the test says so.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "keel/bdev.h"
#include "keel/bdev_module.h"
#include "keel/log.h"
#include "ut_cunit.h"
#include "ut_threads.h"

#define STUB_BS 512
#define STUB_BLOCKS 4096

struct stub_disk {
	struct keel_bdev bdev;
	char name[32];
	uint8_t *data;
	bool inline_complete;
	bool native[KEEL_BDEV_IO_NUM_TYPES];
	int status;     /* completion status for every request */
	int nomem_left; /* complete this many submissions with -ENOMEM first */
	int destructed;
};

struct stub_rec {
	enum keel_bdev_io_type type;
	uint64_t offset;
	uint64_t num;
	int iovcnt;
	uint32_t flags;
	bool aligned;
	bool zero_src; /* a write whose data was all zero */
};

struct stub_io {
	struct keel_thread *thread;
};

static TAILQ_HEAD(, keel_bdev_io) g_pending = TAILQ_HEAD_INITIALIZER(g_pending);
static struct stub_rec g_recs[4096];
static int g_nrecs;
static char g_stub_io_dev;
static struct stub_disk *g_disk;

static uint32_t stub_ctx_size(void)
{
	return sizeof(struct stub_io);
}

static struct keel_bdev_module g_stub_module = {
	.name = "stub",
	.get_ctx_size = stub_ctx_size,
};

static struct keel_bdev_module g_other_module = {
	.name = "othermod",
};

static int stub_ch_create(void *dev, void *ctx)
{
	return 0;
}

static void stub_ch_destroy(void *dev, void *ctx)
{
}

static void stub_submit(struct keel_io_channel *ch, struct keel_bdev_io *io)
{
	struct stub_disk *d = io->bdev->ctxt;
	struct stub_io *sio = keel_bdev_io_get_ctx(io);
	uint8_t *p = d->data + io->offset_blocks * STUB_BS;
	uint64_t total = 0;
	struct stub_rec *r = &g_recs[g_nrecs < 4095 ? g_nrecs++ : 4095];

	r->type = io->type;
	r->offset = io->offset_blocks;
	r->num = io->num_blocks;
	r->iovcnt = io->iovcnt;
	r->flags = io->flags;
	r->aligned = true;
	r->zero_src = true;
	CU_ASSERT(io->offset_blocks + io->num_blocks <= io->bdev->num_blocks);
	if (d->nomem_left > 0) {
		d->nomem_left--;
		keel_bdev_io_complete(io, -ENOMEM);
		return;
	}
	for (int i = 0; i < io->iovcnt; i++) {
		uint32_t a = io->bdev->required_alignment;
		uint32_t l = a < STUB_BS ? a : STUB_BS;

		if (a > 1 && (((uintptr_t)io->iovs[i].iov_base & (a - 1)) ||
			      (io->iovs[i].iov_len & (l - 1)))) {
			r->aligned = false;
		}
		if (io->type == KEEL_BDEV_IO_READ) {
			memcpy(io->iovs[i].iov_base, p, io->iovs[i].iov_len);
		} else if (io->type == KEEL_BDEV_IO_WRITE) {
			for (size_t k = 0; k < io->iovs[i].iov_len; k++) {
				r->zero_src &= ((uint8_t *)io->iovs[i].iov_base)[k] == 0;
			}
			memcpy(p, io->iovs[i].iov_base, io->iovs[i].iov_len);
		}
		p += io->iovs[i].iov_len;
		total += io->iovs[i].iov_len;
	}
	if (io->type == KEEL_BDEV_IO_READ || io->type == KEEL_BDEV_IO_WRITE) {
		CU_ASSERT_EQUAL(total, io->num_blocks * STUB_BS);
	}
	if (io->type == KEEL_BDEV_IO_UNMAP || io->type == KEEL_BDEV_IO_WRITE_ZEROES) {
		memset(d->data + io->offset_blocks * STUB_BS, 0, io->num_blocks * STUB_BS);
	}
	if (io->type == KEEL_BDEV_IO_GET_ALLOCATION) {
		/* Two data blocks (merged into one run), then a hole to the end. */
		keel_bdev_io_add_extent(io, STUB_BS, 0);
		keel_bdev_io_add_extent(io, STUB_BS, 0);
		keel_bdev_io_add_extent(io, io->num_blocks * STUB_BS - 2 * STUB_BS,
					KEEL_BDEV_EXTENT_HOLE | KEEL_BDEV_EXTENT_ZERO);
	}
	sio->thread = keel_thread_get_current();
	if (d->inline_complete) {
		keel_bdev_io_complete(io, d->status);
	} else {
		TAILQ_INSERT_TAIL(&g_pending, io, module_link);
	}
}

static bool stub_supported(void *ctx, enum keel_bdev_io_type type)
{
	struct stub_disk *d = ctx;

	return d->native[type];
}

static struct keel_io_channel *stub_get_ch(void *ctx)
{
	return keel_get_io_channel(&g_stub_io_dev);
}

static int stub_destruct(void *ctx)
{
	struct stub_disk *d = ctx;

	d->destructed++;
	return 0;
}

static const struct keel_bdev_fn_table g_stub_fn = {
	.destruct = stub_destruct,
	.submit_request = stub_submit,
	.io_type_supported = stub_supported,
	.get_io_channel = stub_get_ch,
};

/* Complete up to max pending requests (on their own threads); \return how many. */
static int stub_complete(int status, int max)
{
	struct keel_thread *cur = keel_thread_get_current();
	struct keel_bdev_io *io;
	int n = 0;

	while (n < max && (io = TAILQ_FIRST(&g_pending))) {
		struct stub_io *sio = keel_bdev_io_get_ctx(io);

		TAILQ_REMOVE(&g_pending, io, module_link);
		keel_set_current_thread(sio->thread);
		keel_bdev_io_complete(io, status);
		n++;
	}
	keel_set_current_thread(cur);
	return n;
}

static int stub_pending(void)
{
	struct keel_bdev_io *io;
	int n = 0;

	TAILQ_FOREACH(io, &g_pending, module_link) {
		n++;
	}
	return n;
}

static struct stub_disk *stub_create(const char *name, uint32_t align, uint32_t boundary,
				     uint32_t max_transfer)
{
	struct stub_disk *d = calloc(1, sizeof(*d));

	snprintf(d->name, sizeof(d->name), "%s", name);
	d->data = calloc(STUB_BLOCKS, STUB_BS);
	d->bdev.name = d->name;
	d->bdev.block_size = STUB_BS;
	d->bdev.num_blocks = STUB_BLOCKS;
	d->bdev.required_alignment = align;
	d->bdev.optimal_io_boundary = boundary;
	d->bdev.max_transfer_blocks = max_transfer;
	d->bdev.ctxt = d;
	d->bdev.fn_table = &g_stub_fn;
	d->bdev.module = &g_stub_module;
	for (int t = 0; t < KEEL_BDEV_IO_NUM_TYPES; t++) {
		d->native[t] = true;
	}
	d->native[KEEL_BDEV_IO_FLUSH] = false;
	d->inline_complete = true;
	return d;
}

static void stub_free(struct stub_disk *d)
{
	free(d->data);
	free(d);
}

struct res {
	int done;
	int status;
	int order;
};

static int g_order;

static void io_done(void *arg, int status)
{
	struct res *r = arg;

	r->done++;
	r->status = status;
	r->order = g_order++;
}

static int g_events[2];
static struct keel_bdev_desc *g_auto_close_desc;

static void ev_cb(enum keel_bdev_event_type type, struct keel_bdev *bdev, void *ctx)
{
	g_events[type]++;
	if (ctx == &g_auto_close_desc && g_auto_close_desc) {
		keel_bdev_close(g_auto_close_desc);
		g_auto_close_desc = NULL;
	}
}

static int g_unreg_done;
static int g_unreg_status;

static void unreg_done(void *arg, int status)
{
	g_unreg_done++;
	g_unreg_status = status;
}

static void setup(uint32_t nthreads)
{
	ut_threads_init(nthreads);
	ut_set_thread(0);
	CU_ASSERT_EQUAL(
		keel_io_device_register(&g_stub_io_dev, stub_ch_create, stub_ch_destroy, 8, "stub"),
		0);
	g_nrecs = 0;
	g_order = 0;
	memset(g_events, 0, sizeof(g_events));
	g_unreg_done = 0;
	TAILQ_INIT(&g_pending);
}

static void teardown(void)
{
	struct keel_bdev_opts opts = {1024, 128, 8, 65536};

	ut_set_thread(0);
	keel_io_device_unregister(&g_stub_io_dev, NULL);
	ut_poll_threads();
	ut_threads_fini();
	keel_bdev_set_opts(&opts);
}

/* Shrink the bdev_io pool so requests wait for one (teardown restores the default). */
static void set_io_pool(uint32_t pool_size, uint32_t cache_size)
{
	struct keel_bdev_opts opts;

	keel_bdev_get_opts(&opts);
	opts.io_pool_size = pool_size;
	opts.io_cache_size = cache_size;
	CU_ASSERT_EQUAL(keel_bdev_set_opts(&opts), 0);
}

/* Register g_disk and open it on thread 0 with a channel. */
static void open_disk(struct stub_disk *d, struct keel_bdev_desc **desc,
		      struct keel_io_channel **ch)
{
	g_disk = d;
	CU_ASSERT_EQUAL_FATAL(keel_bdev_register(&d->bdev), 0);
	CU_ASSERT_EQUAL_FATAL(keel_bdev_open_ext(d->name, true, ev_cb, NULL, desc), 0);
	*ch = keel_bdev_get_io_channel(*desc);
	CU_ASSERT_PTR_NOT_NULL_FATAL(*ch);
}

static void close_disk(struct keel_bdev_desc *desc, struct keel_io_channel *ch)
{
	struct stub_disk *d = g_disk;

	ut_set_thread(0);
	keel_put_io_channel(ch);
	ut_poll_threads();
	keel_bdev_close(desc);
	keel_bdev_unregister(&d->bdev, unreg_done, NULL);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_unreg_done, 1);
	CU_ASSERT_EQUAL(d->destructed, 1);
	stub_free(d);
}

/* ------------------------------------------------------------------------------ */

static void test_register_lookup(void)
{
	struct stub_disk *d, *d2, *bad;
	struct keel_bdev_desc *desc;
	char uuid[KEEL_UUID_STR_LEN];

	setup(1);
	d = stub_create("disk0", 0, 0, 0);
	CU_ASSERT_EQUAL(keel_bdev_register(&d->bdev), 0);
	CU_ASSERT_PTR_EQUAL(keel_bdev_get_by_name("disk0"), &d->bdev);
	CU_ASSERT_PTR_NULL(keel_bdev_get_by_name("nope"));
	CU_ASSERT_PTR_NULL(keel_bdev_get_by_name(NULL));
	CU_ASSERT_EQUAL(strlen(keel_bdev_get_uuid_str(&d->bdev)), 36);
	snprintf(uuid, sizeof(uuid), "%s", keel_bdev_get_uuid_str(&d->bdev));
	for (char *c = uuid; *c; c++) {
		*c = (char)toupper((unsigned char)*c);
	}
	CU_ASSERT_PTR_EQUAL(keel_bdev_get_by_uuid(uuid), &d->bdev);
	CU_ASSERT_PTR_EQUAL(keel_bdev_first(), &d->bdev);
	CU_ASSERT_PTR_NULL(keel_bdev_next(&d->bdev));
	CU_ASSERT_STRING_EQUAL(keel_bdev_get_module_name(&d->bdev), "stub");
	CU_ASSERT_EQUAL(keel_bdev_get_block_size(&d->bdev), STUB_BS);
	CU_ASSERT_EQUAL(keel_bdev_get_num_blocks(&d->bdev), STUB_BLOCKS);
	CU_ASSERT_EQUAL(keel_bdev_get_buf_align(&d->bdev), 1);
	CU_ASSERT_TRUE(keel_bdev_io_type_supported(&d->bdev, KEEL_BDEV_IO_FLUSH));
	CU_ASSERT_STRING_EQUAL(keel_bdev_io_type_name(KEEL_BDEV_IO_WRITE_ZEROES), "write_zeroes");

	/* Duplicate name, duplicate uuid, bad names and geometry. */
	d2 = stub_create("disk0", 0, 0, 0);
	CU_ASSERT_EQUAL(keel_bdev_register(&d2->bdev), -EEXIST);
	snprintf(d2->name, sizeof(d2->name), "disk1");
	memcpy(d2->bdev.uuid, d->bdev.uuid, 16);
	CU_ASSERT_EQUAL(keel_bdev_register(&d2->bdev), -EEXIST);
	stub_free(d2);
	bad = stub_create("has space", 0, 0, 0);
	CU_ASSERT_EQUAL(keel_bdev_register(&bad->bdev), -EINVAL);
	snprintf(bad->name, sizeof(bad->name), "a/b");
	CU_ASSERT_EQUAL(keel_bdev_register(&bad->bdev), -EINVAL);
	snprintf(bad->name, sizeof(bad->name), "%s", "");
	CU_ASSERT_EQUAL(keel_bdev_register(&bad->bdev), -EINVAL);
	snprintf(bad->name, sizeof(bad->name), "ok");
	bad->bdev.block_size = 1000;
	CU_ASSERT_EQUAL(keel_bdev_register(&bad->bdev), -EINVAL);
	bad->bdev.block_size = 512;
	bad->bdev.num_blocks = 0;
	CU_ASSERT_EQUAL(keel_bdev_register(&bad->bdev), -EINVAL);
	bad->bdev.num_blocks = 8;
	bad->bdev.required_alignment = 3;
	CU_ASSERT_EQUAL(keel_bdev_register(&bad->bdev), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_register(NULL), -EINVAL);
	stub_free(bad);

	CU_ASSERT_EQUAL(keel_bdev_open_ext("nope", false, ev_cb, NULL, &desc), -ENODEV);
	CU_ASSERT_EQUAL(keel_bdev_open_ext("disk0", false, NULL, NULL, &desc), -EINVAL);

	keel_bdev_unregister(&d->bdev, unreg_done, NULL);
	CU_ASSERT_PTR_NULL(keel_bdev_get_by_name("disk0"));
	CU_ASSERT_EQUAL(g_unreg_done, 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_unreg_done, 1);
	CU_ASSERT_EQUAL(g_unreg_status, 0);
	CU_ASSERT_EQUAL(d->destructed, 1);
	stub_free(d);
	teardown();
}

static void test_claims(void)
{
	struct stub_disk *d;
	struct keel_bdev_desc *w1, *w2, *r1;

	setup(1);
	d = stub_create("claimed", 0, 0, 0);
	CU_ASSERT_EQUAL(keel_bdev_register(&d->bdev), 0);
	CU_ASSERT_EQUAL(keel_bdev_open_ext("claimed", false, ev_cb, NULL, &w1), 0);
	CU_ASSERT_EQUAL(keel_bdev_module_claim_bdev(w1, &g_stub_module), 0);
	CU_ASSERT_STRING_EQUAL(keel_bdev_get_claim_owner(&d->bdev), "stub");
	/* Second writer: refused, the log names the owner. */
	CU_ASSERT_EQUAL(keel_bdev_open_ext("claimed", true, ev_cb, NULL, &w2), -EPERM);
	CU_ASSERT_EQUAL(keel_bdev_open_ext("claimed", false, ev_cb, NULL, &r1), 0);
	CU_ASSERT_EQUAL(keel_bdev_module_claim_bdev(r1, &g_other_module), -EPERM);
	keel_bdev_module_release_bdev(&d->bdev);
	CU_ASSERT_PTR_NULL(keel_bdev_get_claim_owner(&d->bdev));
	CU_ASSERT_EQUAL(keel_bdev_open_ext("claimed", true, ev_cb, NULL, &w2), 0);
	keel_bdev_close(w2);
	/* Closing the claiming desc releases the claim. */
	CU_ASSERT_EQUAL(keel_bdev_module_claim_bdev(r1, &g_other_module), 0);
	keel_bdev_close(r1);
	CU_ASSERT_PTR_NULL(keel_bdev_get_claim_owner(&d->bdev));
	keel_bdev_close(w1);
	keel_bdev_unregister(&d->bdev, unreg_done, NULL);
	ut_poll_threads();
	CU_ASSERT_EQUAL(d->destructed, 1);
	stub_free(d);
	teardown();
}

static void test_bad_requests(void)
{
	struct keel_bdev_desc *desc, *ro;
	struct keel_io_channel *ch, *roch;
	struct stub_disk *d = stub_create("bad", 0, 0, 0);
	struct res r = {0};
	char buf[4096];
	struct iovec iov[2] = {{buf, 512}, {NULL, 512}};
	const uint64_t size = (uint64_t)STUB_BLOCKS * STUB_BS;

	setup(1);
	d->native[KEEL_BDEV_IO_UNMAP] = false;
	open_disk(d, &desc, &ch);
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch, buf, 1, 512, io_done, &r), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch, buf, 0, 100, io_done, &r), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch, buf, 0, 0, io_done, &r), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch, buf, size, 512, io_done, &r), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch, buf, size - 512, 1024, io_done, &r), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch, buf, UINT64_MAX - 511, 1024, io_done, &r),
			-EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_write(desc, ch, buf, 512, UINT64_MAX - 511, io_done, &r),
			-EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch, NULL, 0, 512, io_done, &r), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch, buf, 0, 512, NULL, &r), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_read(NULL, ch, buf, 0, 512, io_done, &r), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_readv(desc, ch, iov, 2, 0, 1024, io_done, &r), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_readv(desc, ch, iov, 0, 0, 512, io_done, &r), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_readv(desc, ch, NULL, 1, 0, 512, io_done, &r), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_readv(desc, ch, iov, 1, 0, 1024, io_done, &r), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_writev(desc, ch, iov, 1, 0, 512, 0x80, io_done, &r), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_unmap(desc, ch, 0, 512, io_done, &r), -ENOTSUP);
	CU_ASSERT_EQUAL(keel_bdev_flush(desc, ch, 0, 0, io_done, &r), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_write_zeroes(desc, ch, 7, 512, io_done, &r), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_reset(desc, NULL, io_done, &r), -EINVAL);
	/* Read-only descriptor. */
	CU_ASSERT_EQUAL(keel_bdev_open_ext("bad", false, ev_cb, NULL, &ro), 0);
	roch = keel_bdev_get_io_channel(ro);
	CU_ASSERT_EQUAL(keel_bdev_write(ro, roch, buf, 0, 512, io_done, &r), -EBADF);
	CU_ASSERT_EQUAL(keel_bdev_write_zeroes(ro, roch, 0, 512, io_done, &r), -EBADF);
	CU_ASSERT_EQUAL(keel_bdev_read(ro, roch, buf, 0, 512, io_done, &r), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(r.done, 1);
	keel_put_io_channel(roch);
	keel_bdev_close(ro);
	close_disk(desc, ch);
	teardown();
}

static void test_rw_inline_deferred(void)
{
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	struct stub_disk *d = stub_create("rw", 0, 0, 0);
	struct res r[8] = {{0}};
	uint8_t wbuf[2048], rbuf[2048], a[512], b[1024], c[512];
	struct iovec wiov[3] = {{a, 512}, {b, 1024}, {c, 512}};

	setup(1);
	open_disk(d, &desc, &ch);
	for (size_t i = 0; i < sizeof(wbuf); i++) {
		wbuf[i] = (uint8_t)(i * 7 + 1);
	}
	CU_ASSERT_EQUAL(keel_bdev_write(desc, ch, wbuf, 4096, 2048, io_done, &r[0]), 0);
	/* Completed inline by the stub, yet never inside the call. */
	CU_ASSERT_EQUAL(r[0].done, 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(r[0].done, 1);
	CU_ASSERT_EQUAL(r[0].status, 0);
	/* Scatter read. */
	CU_ASSERT_EQUAL(keel_bdev_readv(desc, ch, wiov, 3, 4096, 2048, io_done, &r[1]), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(r[1].done, 1);
	CU_ASSERT(memcmp(a, wbuf, 512) == 0 && memcmp(b, wbuf + 512, 1024) == 0 &&
		  memcmp(c, wbuf + 1536, 512) == 0);
	/* Unmap and write_zeroes read back zeroes; flush without cache never reaches the module. */
	CU_ASSERT_EQUAL(keel_bdev_unmap(desc, ch, 4096, 512, io_done, &r[2]), 0);
	CU_ASSERT_EQUAL(keel_bdev_write_zeroes(desc, ch, 4608, 512, io_done, &r[3]), 0);
	g_nrecs = 0;
	CU_ASSERT_EQUAL(keel_bdev_flush(desc, ch, 0, 4096, io_done, &r[4]), 0);
	CU_ASSERT_EQUAL(g_nrecs, 0);
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch, rbuf, 4096, 2048, io_done, &r[5]), 0);
	ut_poll_threads();
	for (int i = 2; i <= 5; i++) {
		CU_ASSERT_EQUAL(r[i].done, 1);
		CU_ASSERT_EQUAL(r[i].status, 0);
	}
	for (int i = 0; i < 1024; i++) {
		CU_ASSERT_EQUAL_FATAL(rbuf[i], 0);
	}
	CU_ASSERT(memcmp(rbuf + 1024, wbuf + 1024, 1024) == 0);
	/* Errors from the module reach the caller. */
	d->status = -EIO;
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch, rbuf, 0, 512, io_done, &r[6]), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(r[6].status, -EIO);
	d->status = 0;
	/* Deferred completion by the module (not inline): direct callback. */
	d->inline_complete = false;
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch, rbuf, 0, 512, io_done, &r[7]), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(r[7].done, 0);
	CU_ASSERT_EQUAL(stub_complete(0, 10), 1);
	CU_ASSERT_EQUAL(r[7].done, 1);
	close_disk(desc, ch);
	teardown();
}

static void test_split(void)
{
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	/* boundary 8 blocks, max transfer 3 blocks */
	struct stub_disk *d = stub_create("split", 0, 8, 3);
	struct res r = {0}, r2 = {0}, r3 = {0};
	uint8_t *wbuf = malloc(64 * 512), *rbuf = calloc(64, 512);
	struct iovec iov[40];
	uint64_t covered = 0;

	setup(1);
	open_disk(d, &desc, &ch);
	for (int i = 0; i < 64 * 512; i++) {
		wbuf[i] = (uint8_t)(i / 512 + i);
	}
	/* 20 blocks from block 6, in iovecs of irregular sizes (not block multiples). */
	g_nrecs = 0;
	{
		size_t sizes[] = {100, 924, 1536, 7, 505, 2048, 3000, 1120};
		size_t off = 0;
		int n = 0;

		for (; n < 8; n++) {
			iov[n].iov_base = wbuf + off;
			iov[n].iov_len = sizes[n];
			off += sizes[n];
		}
		iov[n].iov_base = wbuf + off;
		iov[n].iov_len = 20 * 512 - off;
		n++;
		CU_ASSERT_EQUAL(
			keel_bdev_writev(desc, ch, iov, n, 6 * 512, 20 * 512, 0, io_done, &r), 0);
	}
	ut_poll_threads();
	CU_ASSERT_EQUAL(r.done, 1);
	CU_ASSERT_EQUAL(r.status, 0);
	for (int i = 0; i < g_nrecs; i++) {
		CU_ASSERT(g_recs[i].num <= 3);
		CU_ASSERT(g_recs[i].offset / 8 == (g_recs[i].offset + g_recs[i].num - 1) / 8);
		covered += g_recs[i].num;
	}
	CU_ASSERT_EQUAL(covered, 20);
	CU_ASSERT(g_nrecs >= 8);
	CU_ASSERT(memcmp(d->data + 6 * 512, wbuf, 20 * 512) == 0);

	/* Read it back through a flat buffer. */
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch, rbuf, 6 * 512, 20 * 512, io_done, &r2), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(r2.done, 1);
	CU_ASSERT(memcmp(rbuf, wbuf, 20 * 512) == 0);

	/* Many tiny iovecs: more than fit in one chunk's slots. */
	for (int i = 0; i < 40; i++) {
		iov[i].iov_base = rbuf + i * 128;
		iov[i].iov_len = 128;
	}
	memset(rbuf, 0, 64 * 512);
	CU_ASSERT_EQUAL(keel_bdev_readv(desc, ch, iov, 40, 6 * 512, 10 * 512, io_done, &r2), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(r2.done, 2);
	CU_ASSERT(memcmp(rbuf, wbuf, 10 * 512) == 0);

	/* First error wins and the parent completes once. */
	d->inline_complete = false;
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch, rbuf, 0, 30 * 512, io_done, &r3), 0);
	ut_poll_threads();
	CU_ASSERT(stub_pending() >= 2);
	stub_complete(-EIO, 1);
	ut_poll_threads();
	while (stub_pending()) {
		stub_complete(0, 100);
		ut_poll_threads();
	}
	CU_ASSERT_EQUAL(r3.done, 1);
	CU_ASSERT_EQUAL(r3.status, -EIO);

	/* Unmap is split the same way. */
	d->inline_complete = true;
	g_nrecs = 0;
	CU_ASSERT_EQUAL(keel_bdev_unmap(desc, ch, 0, 17 * 512, io_done, &r3), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(r3.done, 2);
	CU_ASSERT_EQUAL(r3.status, 0);
	covered = 0;
	for (int i = 0; i < g_nrecs; i++) {
		CU_ASSERT(g_recs[i].type == KEEL_BDEV_IO_UNMAP && g_recs[i].num <= 3);
		covered += g_recs[i].num;
	}
	CU_ASSERT_EQUAL(covered, 17);
	free(wbuf);
	free(rbuf);
	close_disk(desc, ch);
	teardown();
}

static void test_bounce(void)
{
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	struct stub_disk *d = stub_create("bounce", 4096, 0, 0);
	struct res r = {0};
	uint8_t *raw = aligned_alloc(4096, 300 * 1024), *rraw = aligned_alloc(4096, 300 * 1024);
	uint8_t *wbuf = raw + 1, *rbuf = rraw + 3;
	struct iovec iov[2];
	struct keel_bdev_opts opts;

	setup(1);
	keel_bdev_get_opts(&opts);
	opts.bounce_buf_count = 2;
	opts.bounce_buf_size = 8192;
	CU_ASSERT_EQUAL(keel_bdev_set_opts(&opts), 0);
	open_disk(d, &desc, &ch);
	for (int i = 0; i < 256 * 1024; i++) {
		wbuf[i] = (uint8_t)(i * 13 + i / 4096);
	}
	g_nrecs = 0;
	CU_ASSERT_EQUAL(keel_bdev_write(desc, ch, wbuf, 8192, 256 * 1024, io_done, &r), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(r.done, 1);
	CU_ASSERT_EQUAL(r.status, 0);
	CU_ASSERT(g_nrecs >= 32);
	for (int i = 0; i < g_nrecs; i++) {
		CU_ASSERT(g_recs[i].aligned);
	}
	CU_ASSERT(memcmp(d->data + 8192, wbuf, 256 * 1024) == 0);
	/* Misaligned scatter read. */
	iov[0].iov_base = rbuf;
	iov[0].iov_len = 1000;
	iov[1].iov_base = rbuf + 1000;
	iov[1].iov_len = 256 * 1024 - 1000;
	g_nrecs = 0;
	CU_ASSERT_EQUAL(keel_bdev_readv(desc, ch, iov, 2, 8192, 256 * 1024, io_done, &r), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(r.done, 2);
	CU_ASSERT_EQUAL(r.status, 0);
	for (int i = 0; i < g_nrecs; i++) {
		CU_ASSERT(g_recs[i].aligned);
	}
	CU_ASSERT(memcmp(rbuf, wbuf, 256 * 1024) == 0);
	/* Aligned buffers pass untouched in one request. */
	g_nrecs = 0;
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch, rraw, 8192, 256 * 1024, io_done, &r), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_nrecs, 1);
	CU_ASSERT(memcmp(rraw, wbuf, 256 * 1024) == 0);
	free(raw);
	free(rraw);
	close_disk(desc, ch);
	teardown();
}

static void test_write_zeroes_emulated(void)
{
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	struct stub_disk *d = stub_create("wz", 0, 0, 0);
	struct res r = {0};
	uint64_t covered = 0;

	setup(1);
	d->native[KEEL_BDEV_IO_WRITE_ZEROES] = false;
	memset(d->data, 0xab, (size_t)STUB_BLOCKS * STUB_BS);
	open_disk(d, &desc, &ch);
	CU_ASSERT_TRUE(keel_bdev_io_type_supported(&d->bdev, KEEL_BDEV_IO_WRITE_ZEROES));
	g_nrecs = 0;
	/* 1.5 MiB: more than one zero-buffer chunk. */
	CU_ASSERT_EQUAL(keel_bdev_write_zeroes(desc, ch, 512, 3072 * 512, io_done, &r), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(r.done, 1);
	CU_ASSERT_EQUAL(r.status, 0);
	CU_ASSERT(g_nrecs >= 2);
	for (int i = 0; i < g_nrecs; i++) {
		CU_ASSERT_EQUAL(g_recs[i].type, KEEL_BDEV_IO_WRITE);
		CU_ASSERT(g_recs[i].zero_src);
		covered += g_recs[i].num;
	}
	CU_ASSERT_EQUAL(covered, 3072);
	CU_ASSERT_EQUAL(d->data[511], 0xab);
	CU_ASSERT_EQUAL(d->data[512], 0);
	CU_ASSERT_EQUAL(d->data[3073 * 512 - 1], 0);
	CU_ASSERT_EQUAL(d->data[3073 * 512], 0xab);
	close_disk(desc, ch);
	teardown();
}

/* write_zeroes flags: UNMAP reaches the module; NO_EMULATE refuses the slow way. */
static void test_write_zeroes_flags(void)
{
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	struct stub_disk *d = stub_create("wzf", 0, 0, 0);
	struct res r = {0};

	setup(1);
	open_disk(d, &desc, &ch);
	CU_ASSERT_EQUAL(keel_bdev_write_zeroes_ext(desc, ch, 0, 4096, 1u << 7, io_done, &r),
			-EINVAL);
	g_nrecs = 0;
	CU_ASSERT_EQUAL(
		keel_bdev_write_zeroes_ext(desc, ch, 0, 4096,
					   KEEL_BDEV_IO_FLAG_UNMAP | KEEL_BDEV_IO_FLAG_NO_EMULATE,
					   io_done, &r),
		0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(r.status, 0);
	CU_ASSERT_EQUAL(g_nrecs, 1);
	CU_ASSERT_EQUAL(g_recs[0].type, KEEL_BDEV_IO_WRITE_ZEROES);
	CU_ASSERT(g_recs[0].flags & KEEL_BDEV_IO_FLAG_UNMAP);
	/* Emulated: NO_EMULATE completes -ENOTSUP and writes nothing; without it the
	 * zero writes do not carry the write_zeroes-only flag. */
	d->native[KEEL_BDEV_IO_WRITE_ZEROES] = false;
	close_disk(desc, ch);
	g_unreg_done = 0;
	d = stub_create("wzf2", 0, 0, 0);
	d->native[KEEL_BDEV_IO_WRITE_ZEROES] = false;
	open_disk(d, &desc, &ch);
	g_nrecs = 0;
	r.done = 0;
	CU_ASSERT_EQUAL(keel_bdev_write_zeroes_ext(desc, ch, 0, 4096, KEEL_BDEV_IO_FLAG_NO_EMULATE,
						   io_done, &r),
			0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(r.done, 1);
	CU_ASSERT_EQUAL(r.status, -ENOTSUP);
	CU_ASSERT_EQUAL(g_nrecs, 0);
	CU_ASSERT_EQUAL(
		keel_bdev_write_zeroes_ext(desc, ch, 0, 4096, KEEL_BDEV_IO_FLAG_UNMAP, io_done, &r),
		0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(r.status, 0);
	CU_ASSERT(g_nrecs >= 1);
	for (int i = 0; i < g_nrecs; i++) {
		CU_ASSERT_EQUAL(g_recs[i].type, KEEL_BDEV_IO_WRITE);
		CU_ASSERT_EQUAL(g_recs[i].flags, 0);
	}
	close_disk(desc, ch);
	teardown();
}

/*
 * get_allocation: runs merged by the helper, the array's capacity honoured with a
 * terminator, never split (boundary and max transfer set), allowed read-only, and
 * refused with -ENOTSUP where the module cannot tell.
 */
static void test_get_allocation(void)
{
	struct keel_bdev_desc *desc, *ro;
	struct keel_io_channel *ch;
	struct stub_disk *d = stub_create("alloc", 0, 8, 16);
	struct keel_bdev_extent ext[4];
	struct res r = {0};

	setup(1);
	open_disk(d, &desc, &ch);
	CU_ASSERT_TRUE(keel_bdev_io_type_supported(&d->bdev, KEEL_BDEV_IO_GET_ALLOCATION));
	CU_ASSERT_EQUAL_FATAL(keel_bdev_open_ext(d->name, false, ev_cb, NULL, &ro), 0);
	g_nrecs = 0;
	memset(ext, 0xff, sizeof(ext));
	CU_ASSERT_EQUAL(keel_bdev_get_allocation(ro, ch, 1024, 64 * STUB_BS, ext, 4, io_done, &r),
			0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(r.status, 0);
	CU_ASSERT_EQUAL(g_nrecs, 1); /* 64 blocks past a boundary of 8: not split */
	CU_ASSERT_EQUAL(g_recs[0].num, 64);
	CU_ASSERT_EQUAL(ext[0].length, 2 * STUB_BS);
	CU_ASSERT_EQUAL(ext[0].flags, 0);
	CU_ASSERT_EQUAL(ext[1].length, 62 * STUB_BS);
	CU_ASSERT_EQUAL(ext[1].flags, KEEL_BDEV_EXTENT_HOLE | KEEL_BDEV_EXTENT_ZERO);
	CU_ASSERT_EQUAL(ext[2].length, 0);
	/* Room for one run: the first, no terminator needed. */
	memset(ext, 0xff, sizeof(ext));
	CU_ASSERT_EQUAL(keel_bdev_get_allocation(desc, ch, 0, 8 * STUB_BS, ext, 1, io_done, &r), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(r.status, 0);
	CU_ASSERT_EQUAL(ext[0].length, 2 * STUB_BS);
	CU_ASSERT_EQUAL(ext[1].length, UINT64_MAX);
	/* Bad arguments. */
	CU_ASSERT_EQUAL(keel_bdev_get_allocation(desc, ch, 0, 0, ext, 4, io_done, &r), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_get_allocation(desc, ch, 1, 512, ext, 4, io_done, &r), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_get_allocation(desc, ch, 0, 512, ext, 0, io_done, &r), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_get_allocation(desc, ch, 0, 512, NULL, 4, io_done, &r), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_get_allocation(desc, ch, (uint64_t)STUB_BLOCKS * STUB_BS, 512,
						 ext, 4, io_done, &r),
			-EINVAL);
	keel_bdev_close(ro);
	close_disk(desc, ch);
	g_unreg_done = 0;
	d = stub_create("noalloc", 0, 0, 0);
	d->native[KEEL_BDEV_IO_GET_ALLOCATION] = false;
	open_disk(d, &desc, &ch);
	CU_ASSERT_FALSE(keel_bdev_io_type_supported(&d->bdev, KEEL_BDEV_IO_GET_ALLOCATION));
	CU_ASSERT_EQUAL(keel_bdev_get_allocation(desc, ch, 0, 512, ext, 4, io_done, &r), -ENOTSUP);
	close_disk(desc, ch);
	teardown();
}

static void test_pool_exhaustion(void)
{
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	struct stub_disk *d = stub_create("pool", 0, 0, 0);
	struct res r[40];
	char buf[512];
	int done = 0;

	setup(1);
	set_io_pool(4, 2);
	d->inline_complete = false;
	open_disk(d, &desc, &ch);
	memset(r, 0, sizeof(r));
	for (int i = 0; i < 40; i++) {
		CU_ASSERT_EQUAL(
			keel_bdev_read(desc, ch, buf, (uint64_t)i * 512, 512, io_done, &r[i]), 0);
	}
	ut_poll_threads();
	CU_ASSERT_EQUAL(stub_pending(), 4);
	while (stub_pending()) {
		stub_complete(0, 1);
		ut_poll_threads();
	}
	for (int i = 0; i < 40; i++) {
		done += r[i].done;
		CU_ASSERT_EQUAL(r[i].done, 1);
		CU_ASSERT_EQUAL(r[i].order, i); /* waiting requests keep FIFO order */
	}
	CU_ASSERT_EQUAL(done, 40);
	close_disk(desc, ch);
	teardown();
}

/* Requests parked for want of a pooled object reach the module as they were asked
 * for: type, range, buffers (flat or iovecs) and flags, each kind. */
static void test_pool_wait_keeps_request(void)
{
	static const struct {
		enum keel_bdev_io_type type;
		uint64_t offset;
		uint64_t num;
		int iovcnt;
		uint32_t flags;
	} want[] = {
		{KEEL_BDEV_IO_WRITE, 100, 2, 1, 0},
		{KEEL_BDEV_IO_WRITE, 200, 2, 2, KEEL_BDEV_IO_FLAG_FUA},
		{KEEL_BDEV_IO_READ, 100, 3, 3, 0},
		{KEEL_BDEV_IO_READ, 200, 2, 1, 0},
		{KEEL_BDEV_IO_UNMAP, 300, 4, 0, 0},
		{KEEL_BDEV_IO_WRITE_ZEROES, 400, 8, 0, 0},
	};
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	struct stub_disk *d = stub_create("waitreq", 0, 0, 0);
	struct res r[4 + 6];
	char fill[4][512], wbuf[1024], rbuf[1024], v0[512], v1[512], rv[3][512];
	struct iovec wiov[2] = {{v0, 512}, {v1, 512}};
	struct iovec riov[3] = {{rv[0], 512}, {rv[1], 512}, {rv[2], 512}};
	uint64_t first;

	setup(1);
	set_io_pool(4, 2);
	d->inline_complete = false;
	open_disk(d, &desc, &ch);
	memset(r, 0, sizeof(r));
	memset(d->data + 102 * STUB_BS, 0x44, STUB_BS);
	memset(wbuf, 0x11, sizeof(wbuf));
	memset(v0, 0x22, sizeof(v0));
	memset(v1, 0x33, sizeof(v1));
	/* Take every object, then queue one request of each kind behind them. */
	for (int i = 0; i < 4; i++) {
		CU_ASSERT_EQUAL(keel_bdev_read(desc, ch, fill[i], (uint64_t)(10 + i) * STUB_BS,
					       STUB_BS, io_done, &r[i]),
				0);
	}
	CU_ASSERT_EQUAL(keel_bdev_write(desc, ch, wbuf, 100 * STUB_BS, 1024, io_done, &r[4]), 0);
	CU_ASSERT_EQUAL(keel_bdev_writev(desc, ch, wiov, 2, 200 * STUB_BS, 1024,
					 KEEL_BDEV_IO_FLAG_FUA, io_done, &r[5]),
			0);
	CU_ASSERT_EQUAL(keel_bdev_readv(desc, ch, riov, 3, 100 * STUB_BS, 1536, io_done, &r[6]), 0);
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch, rbuf, 200 * STUB_BS, 1024, io_done, &r[7]), 0);
	CU_ASSERT_EQUAL(keel_bdev_unmap(desc, ch, 300 * STUB_BS, 4 * STUB_BS, io_done, &r[8]), 0);
	CU_ASSERT_EQUAL(
		keel_bdev_write_zeroes(desc, ch, 400 * STUB_BS, 8 * STUB_BS, io_done, &r[9]), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(stub_pending(), 4);
	first = (uint64_t)g_nrecs;
	while (stub_pending()) {
		stub_complete(0, 1);
		ut_poll_threads();
	}
	CU_ASSERT_EQUAL_FATAL((uint64_t)g_nrecs, first + 6);
	for (int i = 0; i < 6; i++) {
		struct stub_rec *rec = &g_recs[first + (uint64_t)i];

		CU_ASSERT_EQUAL(rec->type, want[i].type);
		CU_ASSERT_EQUAL(rec->offset, want[i].offset);
		CU_ASSERT_EQUAL(rec->num, want[i].num);
		CU_ASSERT_EQUAL(rec->iovcnt, want[i].iovcnt);
		CU_ASSERT_EQUAL(rec->flags, want[i].flags);
	}
	for (int i = 0; i < 10; i++) {
		CU_ASSERT_EQUAL(r[i].done, 1);
		CU_ASSERT_EQUAL(r[i].status, 0);
	}
	/* Data went through the right buffers. */
	CU_ASSERT(rv[0][0] == 0x11 && rv[0][511] == 0x11 && rv[1][0] == 0x11);
	CU_ASSERT(rv[2][0] == 0x44 && rv[2][511] == 0x44);
	CU_ASSERT(rbuf[0] == 0x22 && rbuf[511] == 0x22 && rbuf[512] == 0x33 && rbuf[1023] == 0x33);
	close_disk(desc, ch);
	teardown();
}

static void test_pool_exhaustion_split(void)
{
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	struct stub_disk *d = stub_create("pool2", 0, 0, 2);
	struct res r[6];
	uint8_t *buf = calloc(6, 64 * 512);

	setup(1);
	set_io_pool(2, 2);
	open_disk(d, &desc, &ch);
	memset(r, 0, sizeof(r));
	/* Every request needs many chunks but a pool of 2 never deadlocks. */
	for (int i = 0; i < 6; i++) {
		CU_ASSERT_EQUAL(keel_bdev_write(desc, ch, buf + i * 64 * 512,
						(uint64_t)i * 64 * 512, 64 * 512, io_done, &r[i]),
				0);
	}
	ut_poll_threads();
	for (int i = 0; i < 6; i++) {
		CU_ASSERT_EQUAL(r[i].done, 1);
		CU_ASSERT_EQUAL(r[i].status, 0);
	}
	free(buf);
	close_disk(desc, ch);
	teardown();
}

static void test_nomem_retry(void)
{
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	struct stub_disk *d = stub_create("nomem", 0, 0, 0);
	struct res r = {0}, r2 = {0};
	char buf[512];

	setup(1);
	open_disk(d, &desc, &ch);
	d->nomem_left = 3;
	g_nrecs = 0;
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch, buf, 0, 512, io_done, &r), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(r.done, 0);
	/* The retry poller resubmits until the module takes it. */
	for (int i = 0; i < 10 && !r.done; i++) {
		ut_time_advance_us(200);
		ut_poll_threads();
	}
	CU_ASSERT_EQUAL(r.done, 1);
	CU_ASSERT_EQUAL(r.status, 0);
	CU_ASSERT_EQUAL(g_nrecs, 4);
	/* A completion of another request also triggers the retry. */
	d->inline_complete = false;
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch, buf, 0, 512, io_done, &r2), 0);
	d->nomem_left = 1;
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch, buf, 512, 512, io_done, &r), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(stub_pending(), 1);
	stub_complete(0, 1);
	CU_ASSERT_EQUAL(stub_pending(), 1);
	stub_complete(0, 1);
	ut_poll_threads();
	CU_ASSERT_EQUAL(r.done, 2);
	CU_ASSERT_EQUAL(r2.done, 1);
	ut_time_advance_us(1000);
	ut_poll_threads();
	close_disk(desc, ch);
	teardown();
}

static void test_reset(void)
{
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch0, *ch1;
	struct stub_disk *d = stub_create("reset", 0, 0, 0);
	struct res r[4] = {{0}}, rr = {0}, late = {0};
	char buf[4][512];

	setup(2);
	d->inline_complete = false;
	open_disk(d, &desc, &ch0);
	ut_set_thread(1);
	ch1 = keel_bdev_get_io_channel(desc);
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch1, buf[0], 0, 512, io_done, &r[0]), 0);
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch1, buf[1], 512, 512, io_done, &r[1]), 0);
	ut_set_thread(0);
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch0, buf[2], 1024, 512, io_done, &r[2]), 0);
	CU_ASSERT_EQUAL(keel_bdev_reset(desc, ch0, io_done, &rr), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(rr.done, 0);
	/* Submitted after the reset on another thread: whether the reset waits for it
	 * depends on when the reset reaches that thread; only completion matters. */
	ut_set_thread(1);
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch1, buf[3], 0, 512, io_done, &late), 0);
	ut_set_thread(0);
	stub_complete(0, 2); /* two of the three older reads */
	ut_poll_threads();
	CU_ASSERT_EQUAL(rr.done, 0);
	for (int i = 0; i < 10 && !rr.done; i++) {
		stub_complete(0, 1);
		ut_poll_threads();
	}
	CU_ASSERT_EQUAL(rr.done, 1);
	CU_ASSERT_EQUAL(rr.status, 0);
	for (int i = 0; i < 3; i++) {
		CU_ASSERT_EQUAL(r[i].done, 1);
		CU_ASSERT(r[i].order < rr.order);
	}
	stub_complete(0, 10);
	ut_poll_threads();
	CU_ASSERT_EQUAL(late.done, 1);
	ut_set_thread(1);
	keel_put_io_channel(ch1);
	close_disk(desc, ch0);
	teardown();
}

static void test_hot_remove(void)
{
	struct keel_bdev_desc *desc0, *desc1;
	struct keel_io_channel *ch0, *ch1;
	struct stub_disk *d = stub_create("hot", 0, 0, 0);
	struct res r[12];
	char buf[12][512];

	setup(2);
	set_io_pool(4, 2);
	d->inline_complete = false;
	memset(r, 0, sizeof(r));
	g_disk = d;
	CU_ASSERT_EQUAL(keel_bdev_register(&d->bdev), 0);
	CU_ASSERT_EQUAL(keel_bdev_open_ext("hot", true, ev_cb, NULL, &desc0), 0);
	ch0 = keel_bdev_get_io_channel(desc0);
	ut_set_thread(1);
	CU_ASSERT_EQUAL(keel_bdev_open_ext("hot", true, ev_cb, NULL, &desc1), 0);
	ch1 = keel_bdev_get_io_channel(desc1);
	/* 6 on each thread: 4 in flight, 2 waiting for a pool object. */
	for (int i = 0; i < 6; i++) {
		CU_ASSERT_EQUAL(keel_bdev_read(desc1, ch1, buf[i], 0, 512, io_done, &r[i]), 0);
	}
	ut_set_thread(0);
	for (int i = 6; i < 12; i++) {
		CU_ASSERT_EQUAL(keel_bdev_read(desc0, ch0, buf[i], 0, 512, io_done, &r[i]), 0);
	}
	ut_poll_threads();
	CU_ASSERT_EQUAL(stub_pending(), 8);

	keel_bdev_unregister(&d->bdev, unreg_done, NULL);
	CU_ASSERT_PTR_NULL(keel_bdev_get_by_name("hot"));
	ut_poll_threads();
	/* A second unregister while the first is pending is reported, not fatal. */
	keel_bdev_unregister(&d->bdev, unreg_done, NULL);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_unreg_done, 1);
	CU_ASSERT_EQUAL(g_unreg_status, -EALREADY);
	g_unreg_done = 0;
	CU_ASSERT_EQUAL(g_events[KEEL_BDEV_EVENT_REMOVE], 2);
	/* Waiting requests failed; new ones are refused. */
	for (int i = 0; i < 12; i++) {
		if (i % 6 >= 4) {
			CU_ASSERT_EQUAL(r[i].done, 1);
			CU_ASSERT_EQUAL(r[i].status, -ENODEV);
		} else {
			CU_ASSERT_EQUAL(r[i].done, 0);
		}
	}
	CU_ASSERT_EQUAL(keel_bdev_read(desc0, ch0, buf[0], 0, 512, io_done, &r[0]), -ENODEV);
	CU_ASSERT_EQUAL(keel_bdev_open_ext("hot", false, ev_cb, NULL, &desc0), -ENODEV);
	/* In-flight ones finish normally; channels and descs go; then destruct. */
	stub_complete(0, 100);
	ut_poll_threads();
	for (int i = 0; i < 12; i++) {
		CU_ASSERT_EQUAL(r[i].done, 1);
	}
	keel_put_io_channel(ch0);
	keel_bdev_close(desc0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(d->destructed, 0);
	ut_set_thread(1);
	keel_put_io_channel(ch1);
	keel_bdev_close(desc1);
	ut_set_thread(0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(d->destructed, 1);
	CU_ASSERT_EQUAL(g_unreg_done, 1);
	stub_free(d);
	teardown();
}

static void test_hot_remove_auto_close_and_orphan(void)
{
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	struct stub_disk *d = stub_create("orphan", 0, 0, 0);
	struct res r[3];
	char buf[512];

	setup(1);
	d->inline_complete = false;
	memset(r, 0, sizeof(r));
	g_disk = d;
	CU_ASSERT_EQUAL(keel_bdev_register(&d->bdev), 0);
	CU_ASSERT_EQUAL(keel_bdev_open_ext("orphan", true, ev_cb, &g_auto_close_desc, &desc), 0);
	g_auto_close_desc = desc;
	ch = keel_bdev_get_io_channel(desc);
	for (int i = 0; i < 3; i++) {
		CU_ASSERT_EQUAL(keel_bdev_read(desc, ch, buf, 0, 512, io_done, &r[i]), 0);
	}
	/* A careless consumer drops its channel with I/O in flight. */
	keel_put_io_channel(ch);
	keel_bdev_unregister(&d->bdev, unreg_done, NULL);
	ut_poll_threads();
	CU_ASSERT_PTR_NULL(g_auto_close_desc); /* closed from the event callback */
	CU_ASSERT_EQUAL(d->destructed, 0);     /* requests still in flight */
	stub_complete(0, 100);
	ut_poll_threads();
	for (int i = 0; i < 3; i++) {
		CU_ASSERT_EQUAL(r[i].done, 1);
	}
	CU_ASSERT_EQUAL(d->destructed, 1);
	CU_ASSERT_EQUAL(g_unreg_done, 1);
	stub_free(d);
	teardown();
}

static void test_hot_remove_split_and_reset_waiting(void)
{
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	struct stub_disk *d = stub_create("hotsplit", 0, 0, 2);
	struct res r[3], rr = {0}, rr2 = {0};
	uint8_t *buf = calloc(3, 16 * STUB_BS);

	setup(1);
	set_io_pool(2, 2);
	d->inline_complete = false;
	memset(r, 0, sizeof(r));
	g_disk = d;
	CU_ASSERT_EQUAL(keel_bdev_register(&d->bdev), 0);
	CU_ASSERT_EQUAL(keel_bdev_open_ext("hotsplit", true, ev_cb, NULL, &desc), 0);
	ch = keel_bdev_get_io_channel(desc);

	/* A reset that has to wait for a pool object, then for the read ahead of it. */
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch, buf, 0, 2 * STUB_BS, io_done, &r[0]), 0);
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch, buf, 0, 2 * STUB_BS, io_done, &r[1]), 0);
	CU_ASSERT_EQUAL(keel_bdev_reset(desc, ch, io_done, &rr), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(stub_pending(), 2);
	stub_complete(0, 1);
	ut_poll_threads();
	CU_ASSERT_EQUAL(rr.done, 0); /* started, waits for r[1] */
	stub_complete(0, 1);
	ut_poll_threads();
	stub_complete(0, 10); /* the module's own reset */
	ut_poll_threads();
	CU_ASSERT_EQUAL(rr.done, 1);
	CU_ASSERT(r[0].order < rr.order && r[1].order < rr.order);

	/* Split request in flight (2 lanes), two more waiting; then hot remove. */
	memset(r, 0, sizeof(r));
	for (int i = 0; i < 3; i++) {
		CU_ASSERT_EQUAL(keel_bdev_read(desc, ch, buf + i * 16 * STUB_BS,
					       (uint64_t)i * 16 * STUB_BS, 16 * STUB_BS, io_done,
					       &r[i]),
				0);
	}
	CU_ASSERT_EQUAL(keel_bdev_reset(desc, ch, io_done, &rr2), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(stub_pending(), 2);
	keel_bdev_unregister(&d->bdev, unreg_done, NULL);
	ut_poll_threads();
	CU_ASSERT_EQUAL(r[1].status, -ENODEV);
	CU_ASSERT_EQUAL(r[2].status, -ENODEV);
	CU_ASSERT_EQUAL(rr2.done, 1);
	CU_ASSERT_EQUAL(rr2.status, -ENODEV);
	CU_ASSERT_EQUAL(r[0].done, 0);
	/* The split request finishes all its chunks and completes once. */
	for (int i = 0; i < 20 && stub_pending(); i++) {
		stub_complete(0, 100);
		ut_poll_threads();
	}
	CU_ASSERT_EQUAL(r[0].done, 1);
	CU_ASSERT_EQUAL(r[0].status, 0);
	CU_ASSERT_EQUAL(r[1].done, 1);
	CU_ASSERT_EQUAL(r[2].done, 1);
	CU_ASSERT_EQUAL(g_events[KEEL_BDEV_EVENT_REMOVE], 1);
	keel_put_io_channel(ch);
	keel_bdev_close(desc);
	ut_poll_threads();
	CU_ASSERT_EQUAL(d->destructed, 1);
	CU_ASSERT_EQUAL(g_unreg_done, 1);
	free(buf);
	stub_free(d);
	teardown();
}

static struct keel_bdev_io_stats g_stats;
static int g_stats_done;

static void stats_cb(struct keel_bdev *bdev, const struct keel_bdev_io_stats *stats, void *arg,
		     int status)
{
	g_stats = *stats;
	g_stats_done++;
}

static void test_stats(void)
{
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch0, *ch1;
	struct stub_disk *d = stub_create("stats", 0, 0, 0);
	struct res r = {0};
	char buf[4096];
	uint64_t hist = 0, write_hist = 0;

	setup(2);
	open_disk(d, &desc, &ch0);
	CU_ASSERT_EQUAL(keel_bdev_write(desc, ch0, buf, 0, 4096, io_done, &r), 0);
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch0, buf, 0, 1024, io_done, &r), 0);
	ut_poll_threads();
	ut_set_thread(1);
	ch1 = keel_bdev_get_io_channel(desc);
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch1, buf, 0, 2048, io_done, &r), 0);
	d->status = -EIO;
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch1, buf, 0, 512, io_done, &r), 0);
	ut_poll_threads();
	d->status = 0;
	/* Thread 1's channel closes: its numbers must survive. */
	keel_put_io_channel(ch1);
	ut_poll_threads();
	ut_set_thread(0);
	CU_ASSERT_EQUAL(keel_bdev_get_io_stats(&d->bdev, stats_cb, NULL), 0);
	CU_ASSERT_EQUAL(g_stats_done, 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_stats_done, 1);
	CU_ASSERT_EQUAL(g_stats.ops[KEEL_BDEV_IO_WRITE], 1);
	CU_ASSERT_EQUAL(g_stats.bytes[KEEL_BDEV_IO_WRITE], 4096);
	CU_ASSERT_EQUAL(g_stats.ops[KEEL_BDEV_IO_READ], 3);
	CU_ASSERT_EQUAL(g_stats.bytes[KEEL_BDEV_IO_READ], 1024 + 2048 + 512);
	CU_ASSERT_EQUAL(g_stats.errors[KEEL_BDEV_IO_READ], 1);
	CU_ASSERT_EQUAL(g_stats.errors[KEEL_BDEV_IO_WRITE], 0);
	CU_ASSERT(g_stats.lat_max_ns[KEEL_BDEV_IO_READ] * 3 >=
		  g_stats.lat_sum_ns[KEEL_BDEV_IO_READ]);
	for (int b = 0; b < KEEL_BDEV_LAT_BUCKETS; b++) {
		hist += g_stats.lat_hist[KEEL_BDEV_IO_READ][b];
		write_hist += g_stats.lat_hist[KEEL_BDEV_IO_WRITE][b];
	}
	CU_ASSERT_EQUAL(hist, 3);
	CU_ASSERT_EQUAL(write_hist, 1);
	close_disk(desc, ch0);
	teardown();
}

/* A request that stayed in the module at least 3 ms counts in the latency bucket of
 * 2048-4095 us or above (the sleep bounds the latency from below only). */
static void test_stats_latency_bucket(void)
{
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	struct stub_disk *d = stub_create("statslat", 0, 0, 0);
	struct res r = {0};
	char buf[512];
	uint64_t slow = 0;

	setup(1);
	d->inline_complete = false;
	open_disk(d, &desc, &ch);
	g_stats_done = 0;
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch, buf, 0, 512, io_done, &r), 0);
	ut_poll_threads();
	usleep(3000);
	CU_ASSERT_EQUAL(stub_complete(0, 1), 1);
	ut_poll_threads();
	CU_ASSERT_EQUAL(r.done, 1);
	CU_ASSERT_EQUAL(keel_bdev_get_io_stats(&d->bdev, stats_cb, NULL), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL_FATAL(g_stats_done, 1);
	for (int b = 11; b < KEEL_BDEV_LAT_BUCKETS; b++) {
		slow += g_stats.lat_hist[KEEL_BDEV_IO_READ][b];
	}
	CU_ASSERT_EQUAL(slow, 1);
	CU_ASSERT(g_stats.lat_max_ns[KEEL_BDEV_IO_READ] >= 3000000);
	close_disk(desc, ch);
	teardown();
}

static void test_resize_event(void)
{
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	struct stub_disk *d = stub_create("resize", 0, 0, 0);
	struct res r = {0};
	char buf[512];

	setup(1);
	open_disk(d, &desc, &ch);
	keel_bdev_notify_resize(&d->bdev, STUB_BLOCKS / 2);
	CU_ASSERT_EQUAL(g_events[KEEL_BDEV_EVENT_RESIZE], 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_events[KEEL_BDEV_EVENT_RESIZE], 1);
	CU_ASSERT_EQUAL(keel_bdev_get_num_blocks(&d->bdev), STUB_BLOCKS / 2);
	CU_ASSERT_EQUAL(keel_bdev_read(desc, ch, buf, (STUB_BLOCKS / 2) * 512ull, 512, io_done, &r),
			-EINVAL);
	close_disk(desc, ch);
	teardown();
}

static uint64_t g_rng = 0x2545f4914f6cdd1dull;

static uint32_t rnd(uint32_t n)
{
	g_rng ^= g_rng << 13;
	g_rng ^= g_rng >> 7;
	g_rng ^= g_rng << 17;
	return (uint32_t)(g_rng % n);
}

/* Complete pending requests in random order, some inline-deferred, some not. */
static void stub_complete_random(void)
{
	struct keel_thread *cur = keel_thread_get_current();
	struct keel_bdev_io *io;
	int n = stub_pending();

	while (n > 0) {
		int k = (int)rnd((uint32_t)n);

		io = TAILQ_FIRST(&g_pending);
		while (k--) {
			io = TAILQ_NEXT(io, module_link);
		}
		TAILQ_REMOVE(&g_pending, io, module_link);
		keel_set_current_thread(((struct stub_io *)keel_bdev_io_get_ctx(io))->thread);
		keel_bdev_io_complete(io, 0);
		n--;
		if (rnd(4) == 0) {
			ut_poll_threads();
		}
	}
	keel_set_current_thread(cur);
}

/*
 * Random geometry (alignment, boundary, max transfer), tiny pools and bounce
 * buffers, random iovec layouts and misalignment, random completion order: every
 * byte must match a shadow copy and every request complete exactly once.
 */
static void test_random_split_bounce(void)
{
	static const uint32_t aligns[] = {0, 512, 4096};
	const size_t disk = (size_t)STUB_BLOCKS * STUB_BS;
	uint8_t *shadow = calloc(1, disk);
	uint8_t *arena = aligned_alloc(4096, 1 << 20);
	struct keel_bdev_opts opts;

	for (int round = 0; round < 12; round++) {
		struct stub_disk *d = stub_create("rnd", aligns[round % 3], rnd(3) ? rnd(20) : 0,
						  rnd(2) ? 1 + rnd(9) : 0);
		struct keel_bdev_desc *desc;
		struct keel_io_channel *ch;
		struct res r[16];
		struct iovec iovs[16][24];
		uint64_t offs[16], lens[16];
		bool writes[16];
		uint8_t *bufs[16];

		setup(1);
		keel_bdev_get_opts(&opts);
		opts.io_pool_size = 1 + rnd(6);
		opts.io_cache_size = 2;
		opts.bounce_buf_count = 1 + rnd(3);
		opts.bounce_buf_size = 4096 << rnd(3);
		CU_ASSERT_EQUAL(keel_bdev_set_opts(&opts), 0);
		d->inline_complete = rnd(2);
		d->native[KEEL_BDEV_IO_WRITE_ZEROES] = rnd(2);
		memset(shadow, 0, disk);
		open_disk(d, &desc, &ch);
		for (int it = 0; it < 40; it++) {
			int nreq = 1 + (int)rnd(16);
			uint64_t used = 0;

			memset(r, 0, sizeof(r));
			for (int q = 0; q < nreq; q++) {
				uint64_t nb = 1 + rnd(64);
				uint64_t lba = rnd(STUB_BLOCKS - (uint32_t)nb);
				uint64_t len = nb * STUB_BS, left = len;
				uint64_t skew = rnd(3) == 0 ? rnd(64) : 0;
				int n = 0;

				/* Disjoint ranges per batch so the shadow order is unambiguous. */
				lba = (uint64_t)q * (STUB_BLOCKS / 16) +
				      lba % (STUB_BLOCKS / 16 - 64);
				offs[q] = lba * STUB_BS;
				lens[q] = len;
				writes[q] = rnd(2);
				if (rnd(8) == 0) {
					/* write_zeroes (emulated on half the rounds) */
					writes[q] = true;
					memset(shadow + offs[q], 0, len);
					CU_ASSERT_EQUAL(keel_bdev_write_zeroes(desc, ch, offs[q],
									       len, io_done, &r[q]),
							0);
					bufs[q] = NULL;
					continue;
				}
				bufs[q] = arena + used + skew;
				used += len + skew + 64;
				while (left) {
					uint64_t piece =
						n == 23 ? left
							: 1 + rnd((uint32_t)(left < 3000 ? left
											 : 3000));

					iovs[q][n].iov_base = bufs[q] + (len - left);
					iovs[q][n].iov_len = piece;
					left -= piece;
					n++;
				}
				if (writes[q]) {
					for (uint64_t i = 0; i < len; i++) {
						bufs[q][i] = (uint8_t)rnd(256);
					}
					memcpy(shadow + offs[q], bufs[q], len);
					CU_ASSERT_EQUAL(keel_bdev_writev(desc, ch, iovs[q], n,
									 offs[q], len, 0, io_done,
									 &r[q]),
							0);
				} else {
					memset(bufs[q], 0xcc, len);
					CU_ASSERT_EQUAL(keel_bdev_readv(desc, ch, iovs[q], n,
									offs[q], len, io_done,
									&r[q]),
							0);
				}
			}
			for (int spin = 0; spin < 10000; spin++) {
				int done = 0;

				ut_poll_threads();
				stub_complete_random();
				ut_poll_threads();
				for (int q = 0; q < nreq; q++) {
					done += r[q].done;
				}
				if (done == nreq && !stub_pending()) {
					break;
				}
			}
			for (int q = 0; q < nreq; q++) {
				CU_ASSERT_EQUAL(r[q].done, 1);
				CU_ASSERT_EQUAL(r[q].status, 0);
				if (!writes[q]) {
					CU_ASSERT(memcmp(bufs[q], shadow + offs[q], lens[q]) == 0);
				}
			}
			for (int i = 0; i < g_nrecs; i++) {
				CU_ASSERT(g_recs[i].aligned);
			}
			g_nrecs = 0;
		}
		CU_ASSERT(memcmp(d->data, shadow, disk) == 0);
		close_disk(desc, ch);
		teardown();
	}
	free(shadow);
	free(arena);
}

static void test_opts(void)
{
	struct keel_bdev_opts o;

	keel_bdev_get_opts(&o);
	CU_ASSERT_EQUAL(o.io_pool_size, 1024);
	o.bounce_buf_size = 5000;
	CU_ASSERT_EQUAL(keel_bdev_set_opts(&o), -EINVAL);
	o.bounce_buf_size = 4096;
	o.io_pool_size = 0;
	CU_ASSERT_EQUAL(keel_bdev_set_opts(&o), -EINVAL);
	CU_ASSERT_EQUAL(keel_bdev_set_opts(NULL), -EINVAL);
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"register_lookup", test_register_lookup},
		{"claims", test_claims},
		{"bad_requests", test_bad_requests},
		{"rw_inline_deferred", test_rw_inline_deferred},
		{"split", test_split},
		{"bounce", test_bounce},
		{"write_zeroes_emulated", test_write_zeroes_emulated},
		{"pool_exhaustion", test_pool_exhaustion},
		{"pool_exhaustion_split", test_pool_exhaustion_split},
		{"pool_wait_keeps_request", test_pool_wait_keeps_request},
		{"nomem_retry", test_nomem_retry},
		{"reset", test_reset},
		{"write_zeroes_flags", test_write_zeroes_flags},
		{"get_allocation", test_get_allocation},
		{"hot_remove", test_hot_remove},
		{"hot_remove_auto_close_and_orphan", test_hot_remove_auto_close_and_orphan},
		{"hot_remove_split_and_reset_waiting", test_hot_remove_split_and_reset_waiting},
		{"stats", test_stats},
		{"stats_latency_bucket", test_stats_latency_bucket},
		{"resize_event", test_resize_event},
		{"random_split_bounce", test_random_split_bounce},
		{"opts", test_opts},
		{NULL, NULL},
	};

	keel_log_set_level(KEEL_LOG_WARN);
	return ut_cunit_run("bdev", tests);
}
