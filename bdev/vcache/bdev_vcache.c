/*
 * vcache bdev: a disk with a volatile write cache, for power-cut tests.
 *
 * Design (write-back rather than an undo log, because it is the simplest to prove):
 * the base only ever receives writes that are durable, in acknowledgement order, so
 * "what survives a power cut" is exactly "the base, plus the cached writes the cut
 * chose to keep, applied in order". A write is copied into an entry of the cache list
 * (sequence number = acknowledgement order) and acknowledged. A flush records the
 * newest sequence number at its submission and waits until a write-back has made
 * everything up to it durable: that covers exactly the writes acknowledged before the
 * flush was submitted (writes still in flight at that moment are not covered unless a
 * later flush covers them). One write-back runs at a time, on the channel of a waiting
 * request (each channel with waiters polls: done? else start a write-back if none
 * runs), writing its entries one by one so overlapping writes land in order.
 *
 * Reads go to the base and are then overlaid with every cached entry in order, so the
 * newest data wins. Entries already written back stay in the list until no read is in
 * flight: a read that started before an entry reached the base still finds it there.
 */
#include <errno.h>
#include <stddef.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "keel/bdev_vcache.h"
#include "keel/log.h"

#include "bdev_stack.h"

struct vc_entry {
	TAILQ_ENTRY(vc_entry) link;
	uint64_t seq;
	uint64_t off; /* bytes */
	uint64_t len;
	uint8_t *data; /* NULL: zeroes (write_zeroes, unmap) */
	bool keep;     /* power cut: survives */
	bool fua;      /* written through: a power cut always keeps it */
};

struct vc_channel;
struct vc_cut;

struct vc_disk {
	struct keel_bdev bdev;
	char name[KEEL_BDEV_NAME_MAX + 1];
	char io_dev_anchor;     /* our io_device; distinct from the bdev's own */
	struct bdev_stack base; /* the base bdev, claimed */
	uint64_t max_dirty;

	pthread_mutex_t lock; /* everything below */
	TAILQ_HEAD(, vc_entry) entries;
	uint64_t last_seq;    /* newest acknowledged write */
	uint64_t written_seq; /* entries up to here reached the base */
	uint64_t durable_seq; /* ... and the base was flushed after */
	uint32_t users; /* reads and FUA write-throughs in flight: entries they may use stay */
	bool dead;
	uint32_t fua_inflight; /* FUA write-throughs on their way to the base */
	/* The one write-back (flush or power cut) that may run. */
	bool wb_active;
	bool wb_cutting;
	struct vc_channel *wb_ch; /* NULL for a power cut */
	struct keel_io_channel *wb_base_ch;
	uint64_t wb_target;
	uint64_t wb_pos;
	void (*wb_done)(struct vc_disk *d, int status);
	struct vc_cut *cut; /* the power cut being applied */
	struct keel_vcache_stats st;
};

struct vc_channel {
	struct vc_disk *disk;
	struct keel_io_channel *base_ch;
	struct keel_poller *poller;
	TAILQ_HEAD(, keel_bdev_io) waiting; /* flushes and FUA/forced writes */
};

struct vc_io {
	uint64_t target;       /* durable_seq this request waits for */
	struct vc_channel *ch; /* FUA write-through: the channel it runs on */
};

static uint32_t vc_get_ctx_size(void)
{
	return sizeof(struct vc_io);
}

struct keel_bdev_module keel_bdev_vcache_module = {
	.name = "vcache",
	.get_ctx_size = vc_get_ctx_size,
};

/* ------------------------------------------------------------------------------ */
/* The cache list                                                                  */

/* Caller holds the lock. Entries a read might still need stay. */
static void vc_free_durable(struct vc_disk *d)
{
	struct vc_entry *e;

	if (d->users) {
		return;
	}
	while ((e = TAILQ_FIRST(&d->entries)) && e->seq <= d->durable_seq) {
		TAILQ_REMOVE(&d->entries, e, link);
		free(e->data);
		free(e);
	}
}

/* Copy \p len bytes of \p src (NULL: zeroes) into \p iov starting \p skip bytes in. */
static void vc_iov_put(struct iovec *iov, int iovcnt, uint64_t skip, const uint8_t *src,
		       uint64_t len)
{
	for (int i = 0; i < iovcnt && len; i++) {
		uint64_t n;

		if (skip >= iov[i].iov_len) {
			skip -= iov[i].iov_len;
			continue;
		}
		n = iov[i].iov_len - skip;
		n = n < len ? n : len;
		if (src) {
			memcpy((uint8_t *)iov[i].iov_base + skip, src, n);
			src += n;
		} else {
			memset((uint8_t *)iov[i].iov_base + skip, 0, n);
		}
		len -= n;
		skip = 0;
	}
}

/* Caller holds the lock: lay every cached write over a read of [off, off+len). */
static void vc_overlay(struct vc_disk *d, struct keel_bdev_io *io)
{
	uint64_t off = keel_bdev_io_offset_bytes(io), end = off + keel_bdev_io_num_bytes(io);
	struct vc_entry *e;

	TAILQ_FOREACH(e, &d->entries, link) {
		uint64_t s = e->off > off ? e->off : off;
		uint64_t t = e->off + e->len < end ? e->off + e->len : end;

		if (s >= t) {
			continue;
		}
		vc_iov_put(io->iovs, io->iovcnt, s - off, e->data ? e->data + (s - e->off) : NULL,
			   t - s);
	}
}

/* ------------------------------------------------------------------------------ */
/* Write-back: entries in (wb_pos, wb_target], one at a time, then a base flush    */

static void vc_wb_step(struct vc_disk *d);

static void vc_wb_end(struct vc_disk *d, int status)
{
	void (*done)(struct vc_disk *, int);

	pthread_mutex_lock(&d->lock);
	if (status == 0 && !d->wb_cutting) {
		struct vc_entry *e;

		TAILQ_FOREACH(e, &d->entries, link) {
			if (e->seq > d->durable_seq && e->seq <= d->wb_target) {
				d->st.dirty_bytes -= e->len;
				d->st.dirty_writes--;
			}
		}
		if (d->wb_target > d->durable_seq) {
			d->durable_seq = d->wb_target;
		}
		d->st.writebacks++;
		vc_free_durable(d);
	} else if (status != 0 && !d->dead) {
		/* The base failed: so does this disk, as a real one would. */
		KEEL_ERRLOG("vcache bdev %s: write-back to the base failed: %s; the disk is dead",
			    d->name, strerror(-status));
		d->dead = true;
	}
	done = d->wb_done;
	d->wb_active = false;
	d->wb_ch = NULL;
	d->wb_done = NULL;
	pthread_mutex_unlock(&d->lock);
	if (done) {
		done(d, status);
	}
}

static void vc_wb_flushed(void *arg, int status)
{
	vc_wb_end(arg, status);
}

static void vc_wb_wrote(void *arg, int status)
{
	struct vc_disk *d = arg;

	if (status) {
		vc_wb_end(d, status);
		return;
	}
	pthread_mutex_lock(&d->lock);
	if (!d->wb_cutting && d->wb_pos > d->written_seq) {
		d->written_seq = d->wb_pos;
	}
	pthread_mutex_unlock(&d->lock);
	vc_wb_step(d);
}

static void vc_wb_step(struct vc_disk *d)
{
	struct vc_entry *e, *next = NULL;
	int rc;

	pthread_mutex_lock(&d->lock);
	if (d->dead && !d->wb_cutting) {
		/* Power cut: stop here; the cut takes over once we are idle. */
		pthread_mutex_unlock(&d->lock);
		vc_wb_end(d, -EIO);
		return;
	}
	TAILQ_FOREACH(e, &d->entries, link) {
		if (e->seq > d->wb_pos && e->seq <= d->wb_target && (!d->wb_cutting || e->keep)) {
			next = e;
			break;
		}
	}
	if (next) {
		d->wb_pos = next->seq;
	}
	pthread_mutex_unlock(&d->lock);

	/* next stays valid: only entries at or below durable_seq are ever freed. */
	if (!next) {
		/* The core completes it at once when the base has no write cache. */
		rc = keel_bdev_flush(d->base.base_desc, d->wb_base_ch, 0,
				     d->bdev.num_blocks * d->bdev.block_size, vc_wb_flushed, d);
	} else if (next->data) {
		rc = keel_bdev_write(d->base.base_desc, d->wb_base_ch, next->data, next->off,
				     next->len, vc_wb_wrote, d);
	} else {
		rc = keel_bdev_write_zeroes(d->base.base_desc, d->wb_base_ch, next->off, next->len,
					    vc_wb_wrote, d);
	}
	if (rc) {
		vc_wb_end(d, rc);
	}
}

/* ------------------------------------------------------------------------------ */
/* Requests                                                                        */

/* Each channel with waiting requests polls: complete what is durable, fail all once
 * dead (after our own write-back stopped), else start a write-back if none runs. */
static int vc_chan_poll(void *arg)
{
	struct vc_channel *ch = arg;
	struct vc_disk *d = ch->disk;
	TAILQ_HEAD(, keel_bdev_io) ok = TAILQ_HEAD_INITIALIZER(ok);
	TAILQ_HEAD(, keel_bdev_io) failed = TAILQ_HEAD_INITIALIZER(failed);
	struct keel_bdev_io *io, *tmp;
	uint64_t target = 0;
	bool start = false, busy = false;

	pthread_mutex_lock(&d->lock);
	for (io = TAILQ_FIRST(&ch->waiting); io; io = tmp) {
		struct vc_io *vio = keel_bdev_io_get_ctx(io);

		tmp = TAILQ_NEXT(io, module_link);
		if (d->durable_seq >= vio->target) {
			TAILQ_REMOVE(&ch->waiting, io, module_link);
			TAILQ_INSERT_TAIL(&ok, io, module_link);
		} else if (d->dead && d->wb_ch != ch) {
			TAILQ_REMOVE(&ch->waiting, io, module_link);
			TAILQ_INSERT_TAIL(&failed, io, module_link);
		} else if (vio->target > target) {
			target = vio->target;
		}
	}
	if (!TAILQ_EMPTY(&ch->waiting) && !d->wb_active && !d->dead) {
		start = true;
		d->wb_active = true;
		d->wb_cutting = false;
		d->wb_ch = ch;
		d->wb_base_ch = ch->base_ch;
		d->wb_target = target;
		d->wb_pos = d->written_seq;
		d->wb_done = NULL;
	}
	pthread_mutex_unlock(&d->lock);

	while ((io = TAILQ_FIRST(&ok))) {
		TAILQ_REMOVE(&ok, io, module_link);
		if (io->type == KEEL_BDEV_IO_FLUSH) {
			pthread_mutex_lock(&d->lock);
			d->st.flushes++;
			pthread_mutex_unlock(&d->lock);
		}
		keel_bdev_io_complete(io, 0);
		busy = true;
	}
	while ((io = TAILQ_FIRST(&failed))) {
		TAILQ_REMOVE(&failed, io, module_link);
		keel_bdev_io_complete(io, -EIO);
		busy = true;
	}
	if (start) {
		vc_wb_step(d);
		busy = true;
	}
	if (TAILQ_EMPTY(&ch->waiting)) {
		keel_poller_unregister(&ch->poller);
	}
	return busy ? KEEL_POLLER_BUSY : KEEL_POLLER_IDLE;
}

static void vc_wait(struct vc_channel *ch, struct keel_bdev_io *io, uint64_t target)
{
	struct vc_io *vio = keel_bdev_io_get_ctx(io);

	vio->target = target;
	TAILQ_INSERT_TAIL(&ch->waiting, io, module_link);
	if (!ch->poller) {
		ch->poller = keel_poller_register(vc_chan_poll, ch, 0, "vcache");
	}
	if (!ch->poller) {
		TAILQ_REMOVE(&ch->waiting, io, module_link);
		keel_bdev_io_complete(io, -ENOMEM); /* the core retries it */
	}
}

static void vc_read_done(void *arg, int status)
{
	struct keel_bdev_io *io = arg;
	struct vc_disk *d = io->bdev->ctxt;

	pthread_mutex_lock(&d->lock);
	if (status == 0 && d->dead) {
		status = -EIO;
	}
	if (status == 0) {
		vc_overlay(d, io);
	}
	d->users--;
	vc_free_durable(d);
	pthread_mutex_unlock(&d->lock);
	keel_bdev_io_complete(io, status);
}

static void vc_read(struct vc_channel *ch, struct keel_bdev_io *io)
{
	struct vc_disk *d = ch->disk;
	int rc;

	pthread_mutex_lock(&d->lock);
	d->users++;
	pthread_mutex_unlock(&d->lock);
	rc = keel_bdev_readv(d->base.base_desc, ch->base_ch, io->iovs, io->iovcnt,
			     keel_bdev_io_offset_bytes(io), keel_bdev_io_num_bytes(io),
			     vc_read_done, io);
	if (rc) {
		pthread_mutex_lock(&d->lock);
		d->users--;
		pthread_mutex_unlock(&d->lock);
		keel_bdev_io_complete(io, rc);
	}
}

/* FUA: only this write becomes durable (not the cached ones before it, as on a real
 * disk): it goes to the base out of order, then the base is flushed. Its entry stays
 * in the cache, so the in-order write-back (and a power cut, which always keeps it)
 * writes it again after any older write that overlaps it. */
static void vc_fua_end(struct keel_bdev_io *io, int status)
{
	struct vc_disk *d = io->bdev->ctxt;

	pthread_mutex_lock(&d->lock);
	d->fua_inflight--;
	d->users--;
	if (status == 0 && d->dead) {
		status = -EIO; /* the power went before the acknowledgement */
	}
	vc_free_durable(d);
	pthread_mutex_unlock(&d->lock);
	keel_bdev_io_complete(io, status);
}

static void vc_fua_flushed(void *arg, int status)
{
	vc_fua_end(arg, status);
}

static void vc_fua_written(void *arg, int status)
{
	struct keel_bdev_io *io = arg;
	struct vc_disk *d = io->bdev->ctxt;
	struct vc_io *vio = keel_bdev_io_get_ctx(io);
	int rc;

	if (status) {
		vc_fua_end(io, status);
		return;
	}
	rc = keel_bdev_flush(d->base.base_desc, vio->ch->base_ch, 0,
			     d->bdev.num_blocks * d->bdev.block_size, vc_fua_flushed, io);
	if (rc) {
		vc_fua_end(io, rc);
	}
}

static void vc_fua_start(struct vc_channel *ch, struct keel_bdev_io *io, struct vc_entry *e)
{
	struct vc_io *vio = keel_bdev_io_get_ctx(io);
	int rc;

	vio->ch = ch;
	rc = keel_bdev_write(ch->disk->base.base_desc, ch->base_ch, e->data, e->off, e->len,
			     vc_fua_written, io);
	if (rc) {
		vc_fua_end(io, rc);
	}
}

static void vc_write(struct vc_channel *ch, struct keel_bdev_io *io)
{
	struct vc_disk *d = ch->disk;
	uint64_t len = keel_bdev_io_num_bytes(io), seq;
	struct vc_entry *e = calloc(1, sizeof(*e));
	bool fua = io->type == KEEL_BDEV_IO_WRITE && (io->flags & KEEL_BDEV_IO_FLAG_FUA);
	bool wait;

	if (!e) {
		keel_bdev_io_complete(io, -ENOMEM);
		return;
	}
	e->off = keel_bdev_io_offset_bytes(io);
	e->len = len;
	if (io->type == KEEL_BDEV_IO_WRITE) {
		uint64_t pos = 0;

		e->data = malloc(len);
		if (!e->data) {
			free(e);
			keel_bdev_io_complete(io, -ENOMEM);
			return;
		}
		for (int i = 0; i < io->iovcnt && pos < len; i++) {
			uint64_t n = io->iovs[i].iov_len < len - pos ? io->iovs[i].iov_len
								     : len - pos;

			memcpy(e->data + pos, io->iovs[i].iov_base, n);
			pos += n;
		}
	}
	pthread_mutex_lock(&d->lock);
	if (d->dead) {
		pthread_mutex_unlock(&d->lock);
		free(e->data);
		free(e);
		keel_bdev_io_complete(io, -EIO);
		return;
	}
	seq = e->seq = ++d->last_seq;
	e->fua = fua;
	TAILQ_INSERT_TAIL(&d->entries, e, link);
	d->st.dirty_bytes += len;
	d->st.dirty_writes++;
	d->st.writes++;
	d->st.fua_writes += fua;
	wait = !fua && d->st.dirty_bytes > d->max_dirty;
	d->st.forced += wait;
	if (fua) {
		d->users++;
		d->fua_inflight++;
	}
	pthread_mutex_unlock(&d->lock);
	if (fua) {
		vc_fua_start(ch, io, e);
	} else if (wait) {
		vc_wait(ch, io, seq);
	} else {
		keel_bdev_io_complete(io, 0);
	}
}

static void vc_submit(struct keel_io_channel *ich, struct keel_bdev_io *io)
{
	struct vc_channel *ch = keel_io_channel_get_ctx(ich);
	struct vc_disk *d = ch->disk;
	uint64_t target;
	bool dead;

	pthread_mutex_lock(&d->lock);
	dead = d->dead;
	target = d->last_seq;
	if (!dead && io->type == KEEL_BDEV_IO_FLUSH && d->durable_seq >= target) {
		d->st.flushes++;
	}
	pthread_mutex_unlock(&d->lock);
	if (dead) {
		keel_bdev_io_complete(io, -EIO);
		return;
	}
	switch (io->type) {
	case KEEL_BDEV_IO_READ:
		vc_read(ch, io);
		break;
	case KEEL_BDEV_IO_WRITE:
	case KEEL_BDEV_IO_WRITE_ZEROES:
	case KEEL_BDEV_IO_UNMAP:
		vc_write(ch, io);
		break;
	case KEEL_BDEV_IO_FLUSH:
		/* Covers what was acknowledged before now, nothing later. */
		pthread_mutex_lock(&d->lock);
		dead = d->durable_seq >= target;
		pthread_mutex_unlock(&d->lock);
		if (dead) {
			keel_bdev_io_complete(io, 0);
		} else {
			vc_wait(ch, io, target);
		}
		break;
	default:
		keel_bdev_io_complete(io, -ENOTSUP);
		break;
	}
}

static bool vc_io_type_supported(void *ctx, enum keel_bdev_io_type type)
{
	/* Not get_allocation: the base's answer would miss the cached writes. */
	switch (type) {
	case KEEL_BDEV_IO_READ:
	case KEEL_BDEV_IO_WRITE:
	case KEEL_BDEV_IO_FLUSH:
	case KEEL_BDEV_IO_UNMAP:
	case KEEL_BDEV_IO_WRITE_ZEROES:
		return true;
	default:
		return false;
	}
}

/* ------------------------------------------------------------------------------ */
/* Channels and lifetime (as in the error module)                                  */

static struct vc_disk *vc_from_io_dev(void *io_device)
{
	return (struct vc_disk *)((char *)io_device - offsetof(struct vc_disk, io_dev_anchor));
}

static int vc_channel_create(void *io_device, void *ctx_buf)
{
	struct vc_disk *d = vc_from_io_dev(io_device);
	struct vc_channel *ch = ctx_buf;

	ch->disk = d;
	TAILQ_INIT(&ch->waiting);
	ch->base_ch = keel_bdev_get_io_channel(d->base.base_desc);
	return ch->base_ch ? 0 : -ENODEV;
}

static void vc_channel_destroy(void *io_device, void *ctx_buf)
{
	struct vc_channel *ch = ctx_buf;
	struct keel_bdev_io *io;

	/* The core keeps this channel until its requests finished; be safe anyway. */
	while ((io = TAILQ_FIRST(&ch->waiting))) {
		TAILQ_REMOVE(&ch->waiting, io, module_link);
		keel_bdev_io_complete(io, -ENODEV);
	}
	keel_poller_unregister(&ch->poller);
	keel_put_io_channel(ch->base_ch);
}

static struct keel_io_channel *vc_get_io_channel(void *ctx)
{
	struct vc_disk *d = ctx;

	return keel_get_io_channel(&d->io_dev_anchor);
}

static void vc_free(struct vc_disk *d)
{
	struct vc_entry *e;

	while ((e = TAILQ_FIRST(&d->entries))) {
		TAILQ_REMOVE(&d->entries, e, link);
		free(e->data);
		free(e);
	}
	pthread_mutex_destroy(&d->lock);
	free(d);
}

static void vc_io_dev_unregistered(void *io_device)
{
	struct vc_disk *d = vc_from_io_dev(io_device);

	keel_bdev_destruct_done(&d->bdev);
	vc_free(d);
}

static int vc_destruct(void *ctx)
{
	struct vc_disk *d = ctx;

	return bdev_stack_destruct(&d->base);
}

static void vc_dump_info_json(void *ctx, struct json_t *obj)
{
	struct vc_disk *d = ctx;
	struct keel_vcache_stats st;
	json_t *v;

	pthread_mutex_lock(&d->lock);
	st = d->st;
	st.dead = d->dead;
	pthread_mutex_unlock(&d->lock);
	v = json_pack("{s:s, s:I, s:I, s:I, s:b}", "base_bdev",
		      keel_bdev_get_name(bdev_stack_base(&d->base)), "max_dirty_bytes",
		      (json_int_t)d->max_dirty, "dirty_writes", (json_int_t)st.dirty_writes,
		      "dirty_bytes", (json_int_t)st.dirty_bytes, "dead", st.dead);
	if (v) {
		json_object_set_new(obj, "vcache", v);
	}
}

static const struct keel_bdev_fn_table g_vc_fn_table = {
	.destruct = vc_destruct,
	.submit_request = vc_submit,
	.io_type_supported = vc_io_type_supported,
	.get_io_channel = vc_get_io_channel,
	.dump_info_json = vc_dump_info_json,
};

static void vc_create_undo(void *io_device)
{
	vc_free(vc_from_io_dev(io_device));
}

int keel_bdev_vcache_create(const char *name, const char *base_name, uint64_t max_dirty_bytes,
			    struct keel_bdev **bdev_out)
{
	struct vc_disk *d;
	int rc;

	if (!name || !base_name || !bdev_out || !keel_thread_get_current() ||
	    strlen(name) > KEEL_BDEV_NAME_MAX) {
		return -EINVAL;
	}
	d = calloc(1, sizeof(*d));
	if (!d) {
		return -ENOMEM;
	}
	snprintf(d->name, sizeof(d->name), "%s", name);
	pthread_mutex_init(&d->lock, NULL);
	TAILQ_INIT(&d->entries);
	d->max_dirty = max_dirty_bytes ? max_dirty_bytes : KEEL_VCACHE_DEFAULT_MAX_DIRTY;
	d->bdev.name = d->name;
	d->bdev.module = &keel_bdev_vcache_module;
	rc = bdev_stack_open(&d->base, &d->bdev, base_name, &d->io_dev_anchor,
			     vc_io_dev_unregistered);
	if (rc) {
		goto out_free_disk;
	}
	d->bdev.product_name = "Volatile write cache disk";
	d->bdev.write_cache = true;
	d->bdev.multi_conn_safe = true; /* one cache for every channel */
	d->bdev.ctxt = d;
	d->bdev.fn_table = &g_vc_fn_table;
	rc = bdev_stack_register(&d->base, vc_channel_create, vc_channel_destroy,
				 sizeof(struct vc_channel), vc_create_undo);
	if (rc) {
		return rc; /* d is freed */
	}
	*bdev_out = &d->bdev;
	return 0;

out_free_disk:
	pthread_mutex_destroy(&d->lock);
	free(d);
	return rc;
}

static struct vc_disk *vc_find(const char *name)
{
	return bdev_stack_find(name, &keel_bdev_vcache_module);
}

int keel_bdev_vcache_delete(const char *name, keel_bdev_done_cb cb_fn, void *cb_arg)
{
	struct vc_disk *d = vc_find(name);

	if (!d) {
		return -ENODEV;
	}
	bdev_stack_delete(&d->base, cb_fn, cb_arg);
	return 0;
}

int keel_bdev_vcache_get_stats(const char *name, struct keel_vcache_stats *stats)
{
	struct vc_disk *d = vc_find(name);

	if (!d || !stats) {
		return -ENODEV;
	}
	pthread_mutex_lock(&d->lock);
	*stats = d->st;
	stats->dead = d->dead;
	pthread_mutex_unlock(&d->lock);
	return 0;
}

int keel_vcache_cut_mode_parse(const char *s, enum keel_vcache_cut_mode *mode)
{
	static const char *const names[] = {"none", "all", "random", "prefix"};

	for (unsigned i = 0; s && i < sizeof(names) / sizeof(names[0]); i++) {
		if (strcmp(s, names[i]) == 0) {
			*mode = (enum keel_vcache_cut_mode)i;
			return 0;
		}
	}
	return -EINVAL;
}

/* ------------------------------------------------------------------------------ */
/* Power cut                                                                       */

struct vc_cut {
	struct vc_disk *d;
	enum keel_vcache_cut_mode mode;
	uint64_t rng;
	uint64_t keep;
	struct keel_poller *poller;
	keel_bdev_done_cb cb_fn;
	void *cb_arg;
};

static uint64_t vc_splitmix(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Runs where the cut was asked (the write-back ran on that thread's base channel). */
static void vc_cut_finish(struct vc_disk *d, int status)
{
	struct vc_cut *cut = d->cut;
	struct keel_io_channel *base_ch = d->wb_base_ch;

	d->cut = NULL;
	d->wb_base_ch = NULL;
	if (base_ch) {
		keel_put_io_channel(base_ch);
	}
	cut->cb_fn(cut->cb_arg, status);
	free(cut);
}

static int vc_cut_poll(void *arg)
{
	struct vc_cut *cut = arg;
	struct vc_disk *d = cut->d;
	struct keel_io_channel *base_ch;
	struct vc_entry *e;
	uint64_t n = 0;

	pthread_mutex_lock(&d->lock);
	if (d->wb_active || d->fua_inflight) {
		pthread_mutex_unlock(&d->lock);
		return KEEL_POLLER_IDLE; /* a write-back or a FUA write is stopping */
	}
	pthread_mutex_unlock(&d->lock);
	keel_poller_unregister(&cut->poller);
	base_ch = keel_bdev_get_io_channel(d->base.base_desc);

	pthread_mutex_lock(&d->lock);
	TAILQ_FOREACH(e, &d->entries, link) {
		if (e->seq <= d->written_seq) {
			continue;
		}
		switch (cut->mode) {
		case KEEL_VCACHE_CUT_NONE:
			e->keep = true;
			break;
		case KEEL_VCACHE_CUT_ALL:
			e->keep = false;
			break;
		case KEEL_VCACHE_CUT_RANDOM:
			e->keep = vc_splitmix(&cut->rng) & 1;
			break;
		case KEEL_VCACHE_CUT_PREFIX:
			e->keep = n < cut->keep;
			break;
		}
		/* A FUA write is on the media once acknowledged, and the cut writes it
		 * again in order so that older cached writes kept by the cut cannot
		 * cover it. One still in flight may go either way: keeping it is allowed. */
		e->keep = e->keep || e->fua;
		n++;
		d->st.cut_kept += e->keep;
		d->st.cut_dropped += !e->keep;
	}
	d->wb_active = true;
	d->wb_cutting = true;
	d->wb_ch = NULL;
	d->wb_base_ch = base_ch;
	d->wb_target = d->last_seq;
	d->wb_pos = d->written_seq;
	d->wb_done = vc_cut_finish;
	d->cut = cut;
	pthread_mutex_unlock(&d->lock);
	if (!base_ch) {
		vc_wb_end(d, -ENOMEM);
	} else {
		vc_wb_step(d);
	}
	return KEEL_POLLER_BUSY;
}

int keel_bdev_vcache_power_cut(const char *name, enum keel_vcache_cut_mode mode, uint64_t seed,
			       uint64_t keep, keel_bdev_done_cb cb_fn, void *cb_arg)
{
	struct vc_disk *d = vc_find(name);
	struct vc_cut *cut;

	if (!d) {
		return -ENODEV;
	}
	if ((unsigned)mode > KEEL_VCACHE_CUT_PREFIX || !cb_fn) {
		return -EINVAL;
	}
	cut = calloc(1, sizeof(*cut));
	if (!cut) {
		return -ENOMEM;
	}
	cut->d = d;
	cut->mode = mode;
	cut->rng = seed;
	cut->keep = keep;
	cut->cb_fn = cb_fn;
	cut->cb_arg = cb_arg;
	cut->poller = keel_poller_register(vc_cut_poll, cut, 0, "vcache_cut");
	if (!cut->poller) {
		free(cut);
		return -ENOMEM;
	}
	pthread_mutex_lock(&d->lock);
	if (d->dead) {
		pthread_mutex_unlock(&d->lock);
		keel_poller_unregister(&cut->poller);
		free(cut);
		return -EALREADY;
	}
	/* From here every request fails; waiters fail from their channel's poller. */
	d->dead = true;
	pthread_mutex_unlock(&d->lock);
	KEEL_NOTICELOG("vcache bdev %s: power cut", d->name);
	return 0;
}
