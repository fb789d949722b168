/*
 * malloc bdev: a RAM disk. The data lives in one anonymous mapping, 2 MiB aligned
 * and advised for transparent huge pages (random 4 KiB access over a GiB would
 * otherwise pay a TLB miss, under virtualisation a two-level page walk, per request),
 * and populated soon after creation so reads measure memcpy, not the kernel's zero
 * page. Populating is a page fault per page (a GiB took ~0.3 s here): it runs on the
 * blocking-work pool, never on the creating reactor, while the disk already serves
 * I/O (MADV_POPULATE_WRITE faults pages in without changing their contents).
 * Requests are queued by submit_request and copied in per-channel batches (see
 * struct malloc_channel).
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <jansson.h>

#include "keel/bdev_module.h"
#include "keel/log.h"

/* Population (pop_state): who frees the disk when population and deletion race. */
enum {
	POP_NONE,     /* no population job: destruct frees */
	POP_RUNNING,  /* a job is populating */
	POP_DONE,     /* the job ended: destruct frees */
	POP_ORPHANED, /* destructed while the job ran: the job frees */
};

struct malloc_disk {
	struct keel_bdev bdev;
	char name[KEEL_BDEV_NAME_MAX + 1];
	void *buf;
	size_t size;
	void *map; /* the mapping behind buf (larger, for alignment) */
	size_t map_size;
	atomic_int pop_state;
	atomic_bool pop_stop; /* destructed: stop populating at the next chunk */
};

#define MALLOC_HUGE (2u << 20)
/* Population step: a deletion waits at most this much faulting-in. */
#define MALLOC_POP_CHUNK (64u << 20)

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* \return 0 or -ENOMEM. */
static int malloc_map(struct malloc_disk *d)
{
	uintptr_t p;

	d->map_size = d->size + MALLOC_HUGE;
	d->map = mmap(NULL, d->map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
		      0);
	if (d->map == MAP_FAILED) {
		d->map = NULL;
		return -ENOMEM;
	}
	p = ((uintptr_t)d->map + MALLOC_HUGE - 1) & ~(uintptr_t)(MALLOC_HUGE - 1);
	d->buf = (void *)p;
	/* A hint: without THP the disk still works, on 4 KiB pages. */
	(void)madvise(d->buf, d->size, MADV_HUGEPAGE);
	return 0;
}

static void malloc_free(struct malloc_disk *d)
{
	munmap(d->map, d->map_size);
	free(d);
}

/* Blocking pool. Without POPULATE_WRITE (kernels before 5.14) pages are faulted in
 * by the first write instead: a memset here would race the I/O already running. */
static int malloc_populate(void *arg)
{
	struct malloc_disk *d = arg;
	int expected = POP_RUNNING;

	for (size_t off = 0; off < d->size && !atomic_load(&d->pop_stop); off += MALLOC_POP_CHUNK) {
		size_t len = d->size - off < MALLOC_POP_CHUNK ? d->size - off : MALLOC_POP_CHUNK;

		if (madvise((char *)d->buf + off, len, MADV_POPULATE_WRITE) != 0) {
			break;
		}
	}
	if (!atomic_compare_exchange_strong(&d->pop_state, &expected, POP_DONE)) {
		malloc_free(d); /* POP_ORPHANED: the bdev is gone, nobody else frees */
	}
	return 0;
}

static void malloc_populate_done(void *cb_arg, int rc)
{
	/* Nothing to do on the creating thread: the job settled ownership itself, so
	 * a completion that cannot be delivered (thread gone) loses nothing. */
}

/*
 * Module-wide io_device, one channel per thread. The channel batches requests:
 * submit only queues (and prefetches), one message per batch does the copies. A
 * random 4 KiB read is bound by DRAM latency, not bandwidth; copying a batch lets
 * us prefetch the data of the requests two ahead while copying the current one, so
 * several pages are in flight at once instead of one.
 */
struct malloc_channel {
	TAILQ_HEAD(, keel_bdev_io) queue;
	bool scheduled;
};

static pthread_mutex_t g_malloc_lock = PTHREAD_MUTEX_INITIALIZER;
static bool g_malloc_io_dev_registered;
static char g_malloc_io_dev;

static int malloc_channel_create(void *io_device, void *ctx_buf)
{
	struct malloc_channel *mch = ctx_buf;

	TAILQ_INIT(&mch->queue);
	mch->scheduled = false;
	return 0;
}

static void malloc_channel_destroy(void *io_device, void *ctx_buf)
{
	/* The core puts this channel only after every request of it completed. */
}

static int malloc_io_dev_get(void)
{
	int rc = 0;

	pthread_mutex_lock(&g_malloc_lock);
	if (!g_malloc_io_dev_registered) {
		rc = keel_io_device_register(&g_malloc_io_dev, malloc_channel_create,
					     malloc_channel_destroy, sizeof(struct malloc_channel),
					     "bdev_malloc");
		g_malloc_io_dev_registered = rc == 0;
	}
	pthread_mutex_unlock(&g_malloc_lock);
	return rc;
}

static int malloc_module_init(void)
{
	return malloc_io_dev_get();
}

static void malloc_module_fini(void)
{
	pthread_mutex_lock(&g_malloc_lock);
	if (g_malloc_io_dev_registered) {
		keel_io_device_unregister(&g_malloc_io_dev, NULL);
		g_malloc_io_dev_registered = false;
	}
	pthread_mutex_unlock(&g_malloc_lock);
}

struct keel_bdev_module keel_bdev_malloc_module = {
	.name = "malloc",
	.module_init = malloc_module_init,
	.module_fini = malloc_module_fini,
};

static void malloc_copy(struct keel_bdev_io *io, char *disk, bool to_disk)
{
	uint64_t left = keel_bdev_io_num_bytes(io);

	for (int i = 0; i < io->iovcnt && left; i++) {
		size_t n = io->iovs[i].iov_len < left ? io->iovs[i].iov_len : left;

		if (to_disk) {
			memcpy(disk, io->iovs[i].iov_base, n);
		} else {
			memcpy(io->iovs[i].iov_base, disk, n);
		}
		disk += n;
		left -= n;
	}
}

static void malloc_execute(struct keel_bdev_io *io)
{
	struct malloc_disk *d = io->bdev->ctxt;
	char *p = (char *)d->buf + keel_bdev_io_offset_bytes(io);

	switch (io->type) {
	case KEEL_BDEV_IO_READ:
		malloc_copy(io, p, false);
		break;
	case KEEL_BDEV_IO_WRITE:
		malloc_copy(io, p, true);
		break;
	case KEEL_BDEV_IO_UNMAP:
	case KEEL_BDEV_IO_WRITE_ZEROES:
		/* Unmapped blocks read back as zeroes, like a thin-provisioned disk. */
		memset(p, 0, keel_bdev_io_num_bytes(io));
		break;
	case KEEL_BDEV_IO_FLUSH:
	case KEEL_BDEV_IO_RESET:
		break;
	case KEEL_BDEV_IO_GET_ALLOCATION:
		/* RAM is allocated up front: every block is data. */
		keel_bdev_io_add_extent(io, keel_bdev_io_num_bytes(io), 0);
		break;
	default:
		keel_bdev_io_complete(io, -ENOTSUP);
		return;
	}
	keel_bdev_io_complete(io, 0);
}

/* Pull the first 4 KiB of the disk side of a read or write towards the cache. */
static inline void malloc_prefetch(struct keel_bdev_io *io)
{
	struct malloc_disk *d;
	const char *p;
	uint64_t n;

	if (!io || (io->type != KEEL_BDEV_IO_READ && io->type != KEEL_BDEV_IO_WRITE)) {
		return;
	}
	d = io->bdev->ctxt;
	p = (const char *)d->buf + keel_bdev_io_offset_bytes(io);
	n = keel_bdev_io_num_bytes(io);
	if (n > 4096) {
		n = 4096;
	}
	for (uint64_t off = 0; off < n; off += 64) {
		if (io->type == KEEL_BDEV_IO_READ) {
			__builtin_prefetch(p + off, 0);
		} else {
			__builtin_prefetch(p + off, 1);
		}
	}
}

#define MALLOC_PREFETCH_AHEAD 8

static void malloc_drain(void *arg)
{
	struct malloc_channel *mch = arg;
	struct keel_bdev_io *io, *pf;
	TAILQ_HEAD(, keel_bdev_io) batch = TAILQ_HEAD_INITIALIZER(batch);

	mch->scheduled = false;
	TAILQ_CONCAT(&batch, &mch->queue, module_link);
	/* The first request was prefetched at submit; start the window after it. */
	pf = TAILQ_FIRST(&batch);
	for (int i = 0; i < MALLOC_PREFETCH_AHEAD && pf; i++) {
		pf = TAILQ_NEXT(pf, module_link);
		malloc_prefetch(pf);
	}
	while ((io = TAILQ_FIRST(&batch))) {
		/* Advance the window before completing io: its object may be reused at once
		 * (but never one still in this batch). */
		if (pf) {
			pf = TAILQ_NEXT(pf, module_link);
			malloc_prefetch(pf);
		}
		TAILQ_REMOVE(&batch, io, module_link);
		malloc_execute(io);
	}
}

static void malloc_submit(struct keel_io_channel *ch, struct keel_bdev_io *io)
{
	struct malloc_channel *mch = keel_io_channel_get_ctx(ch);

	TAILQ_INSERT_TAIL(&mch->queue, io, module_link);
	if (mch->scheduled) {
		return;
	}
	malloc_prefetch(io);
	if (keel_thread_send_msg(keel_thread_get_current(), malloc_drain, mch) == 0) {
		mch->scheduled = true;
		return;
	}
	/* Own queue full: do the work now; the core defers the callbacks. */
	malloc_drain(mch);
}

static bool malloc_io_type_supported(void *ctx, enum keel_bdev_io_type type)
{
	return type != KEEL_BDEV_IO_FLUSH && type < KEEL_BDEV_IO_NUM_TYPES;
}

static struct keel_io_channel *malloc_get_io_channel(void *ctx)
{
	return keel_get_io_channel(&g_malloc_io_dev);
}

static int malloc_destruct(void *ctx)
{
	struct malloc_disk *d = ctx;
	int expected = POP_RUNNING;

	atomic_store(&d->pop_stop, true);
	if (atomic_compare_exchange_strong(&d->pop_state, &expected, POP_ORPHANED)) {
		return 0; /* the population job frees it when it stops */
	}
	malloc_free(d);
	return 0;
}

static void malloc_dump_info_json(void *ctx, struct json_t *obj)
{
	struct malloc_disk *d = ctx;
	json_t *m = json_object();

	if (!m) {
		return;
	}
	json_object_set_new(m, "size_bytes", json_integer((json_int_t)d->size));
	/* false while the blocking pool still faults pages in (reads of pages not yet
	 * written come from the zero page, writes fault them in) */
	json_object_set_new(m, "populated",
			    json_boolean(atomic_load(&d->pop_state) != POP_RUNNING));
	json_object_set_new(obj, "malloc", m);
}

static const struct keel_bdev_fn_table g_malloc_fn_table = {
	.destruct = malloc_destruct,
	.submit_request = malloc_submit,
	.io_type_supported = malloc_io_type_supported,
	.get_io_channel = malloc_get_io_channel,
	.dump_info_json = malloc_dump_info_json,
};

int keel_bdev_malloc_create(const char *name, const uint8_t *uuid, uint64_t num_blocks,
			    uint32_t block_size, struct keel_bdev **bdev_out)
{
	struct malloc_disk *d;
	int rc;

	if (!name || !bdev_out || num_blocks == 0 || block_size < 512 || block_size > 65536 ||
	    (block_size & (block_size - 1)) || num_blocks > (SIZE_MAX / 2) / block_size) {
		KEEL_ERRLOG("malloc bdev %s: invalid size: %lu blocks of %u bytes",
			    name ? name : "(null)", (unsigned long)num_blocks, block_size);
		return -EINVAL;
	}
	rc = malloc_io_dev_get();
	if (rc) {
		return rc;
	}
	d = calloc(1, sizeof(*d));
	if (!d) {
		return -ENOMEM;
	}
	d->size = (size_t)num_blocks * block_size;
	rc = malloc_map(d);
	if (rc) {
		KEEL_ERRLOG("malloc bdev %s: cannot allocate %zu bytes", name, d->size);
		goto out_free_disk;
	}
	snprintf(d->name, sizeof(d->name), "%s", name);
	d->bdev.name = d->name;
	d->bdev.product_name = "Malloc disk";
	d->bdev.block_size = block_size;
	d->bdev.num_blocks = num_blocks;
	d->bdev.required_alignment = 1;
	d->bdev.write_cache = false;
	d->bdev.multi_conn_safe = true;
	if (uuid) {
		memcpy(d->bdev.uuid, uuid, 16);
	}
	d->bdev.ctxt = d;
	d->bdev.fn_table = &g_malloc_fn_table;
	d->bdev.module = &keel_bdev_malloc_module;
	/* Started before register, so that from the moment a delete can destruct it
	 * (any thread) the state says who frees. Not on a keel thread, or no pool:
	 * pages fault in on first write. */
	atomic_store(&d->pop_state, POP_RUNNING);
	if (keel_spawn_blocking(malloc_populate, d, malloc_populate_done, NULL) != 0) {
		atomic_store(&d->pop_state, POP_NONE);
	}
	rc = keel_bdev_register(&d->bdev);
	if (rc) {
		(void)malloc_destruct(d);
		return rc;
	}
	*bdev_out = &d->bdev;
	return 0;

out_free_disk:
	free(d);
	return rc;
}

int keel_bdev_malloc_delete(const char *name, keel_bdev_done_cb cb_fn, void *cb_arg)
{
	struct keel_bdev *bdev = keel_bdev_get_by_name(name);

	if (!bdev || bdev->module != &keel_bdev_malloc_module) {
		return -ENODEV;
	}
	keel_bdev_unregister(bdev, cb_fn, cb_arg);
	return 0;
}
