/*
 * bdev core, request path: per-thread channels with their pooled request objects,
 * validation and submission, requests waiting for an object (FIFO), completion
 * (batched when it happens inside a submit), -ENOMEM retry, and reset.
 *
 * Hot path budget: a null-module request must cost tens of nanoseconds, so the
 * common case (in-range, aligned, no split) touches one channel, one cached request
 * object and reads the clock at most twice; inline completions are batched and
 * delivered by one message per batch.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/log.h"
#include "bdev_internal.h"

/* ------------------------------------------------------------------------------ */
/* Channels                                                                        */
/* ------------------------------------------------------------------------------ */

int bdev_channel_create(void *io_dev, void *ctx_buf)
{
	struct keel_bdev *bdev = bdev_from_io_dev(io_dev);
	struct keel_bdev_internal *bi = bdev->internal;
	struct keel_bdev_opts opts;
	struct bdev_channel *ch;
	char name[KEEL_BDEV_NAME_MAX + 16];

	keel_bdev_get_opts(&opts);
	if (posix_memalign((void **)&ch, 64, sizeof(*ch)) != 0) {
		return -ENOMEM;
	}
	memset(ch, 0, sizeof(*ch));
	ch->bdev = bdev;
	ch->thread = keel_thread_get_current();
	ch->submit_fn = bdev->fn_table->submit_request;
	ch->lat_us_mult = bdev_stats_us_mult();
	TAILQ_INIT(&ch->deferred);
	TAILQ_INIT(&ch->waitq);
	TAILQ_INIT(&ch->wait_free);
	TAILQ_INIT(&ch->nomem_q);
	TAILQ_INIT(&ch->reset_waiters);
	bdev_bounce_channel_init(ch, &opts);

	ch->module_ch = bdev->fn_table->get_io_channel(bdev->ctxt);
	if (!ch->module_ch) {
		KEEL_ERRLOG("bdev %s: module %s gave no I/O channel", bi->name,
			    keel_bdev_get_module_name(bdev));
		goto out_free_ch;
	}
	snprintf(name, sizeof(name), "bdev_io_%s", bi->name);
	ch->pool = keel_mempool_create(name, opts.io_pool_size, bi->io_elt_size, -1);
	if (!ch->pool) {
		goto out_put_module_ch;
	}
	ch->cache = keel_mempool_cache_create(ch->pool, opts.io_cache_size);
	if (!ch->cache) {
		goto out_free_pool;
	}

	pthread_mutex_lock(&bi->lock);
	bi->live_channels++;
	pthread_mutex_unlock(&bi->lock);
	*(struct bdev_channel **)ctx_buf = ch;
	return 0;

out_free_pool:
	keel_mempool_free(ch->pool);
out_put_module_ch:
	keel_put_io_channel(ch->module_ch);
out_free_ch:
	free(ch);
	return -ENOMEM;
}

static void bdev_channel_free(struct bdev_channel *ch)
{
	struct keel_bdev *bdev = ch->bdev;
	struct keel_bdev_internal *bi = bdev->internal;
	struct bdev_wait_chunk *c;
	bool destruct;

	keel_poller_unregister(&ch->nomem_poller);
	keel_poller_unregister(&ch->drain_poller);
	keel_mempool_cache_free(ch->cache);
	keel_mempool_free(ch->pool);
	keel_put_io_channel(ch->module_ch);
	bdev_bounce_channel_fini(ch);
	while ((c = ch->wait_chunks)) {
		ch->wait_chunks = c->next;
		free(c);
	}

	pthread_mutex_lock(&bi->lock);
	bdev_stats_add(&bi->closed_stats, &ch->stats);
	bi->live_channels--;
	destruct = bi->live_channels == 0 && bi->io_dev_unregistered && !bi->destructing;
	if (destruct) {
		bi->destructing = true;
	}
	pthread_mutex_unlock(&bi->lock);
	free(ch);
	if (destruct) {
		bdev_destruct(bdev);
	}
}

static inline void bdev_channel_maybe_free(struct bdev_channel *ch)
{
	if (keel_unlikely(ch->destroyed) && ch->outstanding == 0 && !ch->drain_pending &&
	    !ch->draining && TAILQ_EMPTY(&ch->deferred) && TAILQ_EMPTY(&ch->nomem_q)) {
		bdev_channel_free(ch);
	}
}

void bdev_channel_destroy(void *io_dev, void *ctx_buf)
{
	struct bdev_channel *ch = *(struct bdev_channel **)ctx_buf;

	/* Requests still in flight keep the channel (and the module channel) alive as an
	 * orphan until they complete, so a consumer that puts early cannot crash us. */
	if (ch->outstanding) {
		KEEL_WARNLOG("bdev %s: channel released with %u requests outstanding",
			     ch->bdev->internal->name, ch->outstanding);
	}
	ch->destroyed = true;
	bdev_channel_maybe_free(ch);
}

/* ------------------------------------------------------------------------------ */
/* Request objects                                                                 */
/* ------------------------------------------------------------------------------ */

static struct bdev_wait *bdev_wait_get(struct bdev_channel *ch)
{
	struct bdev_wait_chunk *c;
	struct bdev_wait *w = TAILQ_FIRST(&ch->wait_free);

	if (!w) {
		/* Only when the pool is dry; chunks stay with the channel afterwards. */
		c = calloc(1, sizeof(*c));
		if (!c) {
			return NULL;
		}
		c->next = ch->wait_chunks;
		ch->wait_chunks = c;
		for (size_t i = 0; i < sizeof(c->entries) / sizeof(c->entries[0]); i++) {
			TAILQ_INSERT_TAIL(&ch->wait_free, &c->entries[i], link);
		}
		w = TAILQ_FIRST(&ch->wait_free);
	}
	TAILQ_REMOVE(&ch->wait_free, w, link);
	return w;
}

/* ------------------------------------------------------------------------------ */
/* Completion                                                                      */
/* ------------------------------------------------------------------------------ */

static void bdev_reset_check(struct bdev_channel *ch);
static void bdev_nomem_retry(struct bdev_channel *ch);

void bdev_user_complete(struct bdev_channel *ch, struct keel_bdev_io_internal *in)
{
	uint64_t now = ch->now_valid ? ch->now_tsc : keel_ticks();
	uint64_t lat = now > in->submit_tsc ? now - in->submit_tsc : 0;
	keel_bdev_io_cb cb_fn = in->cb_fn;
	void *cb_arg = in->cb_arg;
	int status = in->status;

	bdev_stats_record(ch, in->user_type, in->io->num_blocks << ch->bdev->internal->block_shift,
			  status, lat);

	if (in->counted) {
		ch->inflight[in->epoch]--;
		if (keel_unlikely(!TAILQ_EMPTY(&ch->reset_waiters))) {
			bdev_reset_check(ch);
		}
	}
	ch->outstanding--;
	bdev_io_free(ch, in->io);
	cb_fn(cb_arg, status);
}

static inline void bdev_io_done(struct bdev_channel *ch, struct keel_bdev_io_internal *in)
{
	if (keel_unlikely(in->is_lane)) {
		bdev_lane_done(ch, in);
	} else {
		bdev_user_complete(ch, in);
	}
}

static inline void bdev_after_completion(struct bdev_channel *ch)
{
	if (keel_unlikely(!TAILQ_EMPTY(&ch->nomem_q))) {
		bdev_nomem_retry(ch);
	}
	bdev_channel_maybe_free(ch);
}

static void bdev_drain(void *arg)
{
	struct bdev_channel *ch = arg;
	struct keel_bdev_io_internal *in;
	TAILQ_HEAD(, keel_bdev_io_internal) batch = TAILQ_HEAD_INITIALIZER(batch);

	ch->drain_pending = false;
	TAILQ_CONCAT(&batch, &ch->deferred, link);
	/* One clock read for the whole batch, reused by submits from its callbacks. */
	ch->now_tsc = keel_ticks();
	ch->now_valid = true;
	ch->draining = true;
	while ((in = TAILQ_FIRST(&batch))) {
		TAILQ_REMOVE(&batch, in, link);
		bdev_io_done(ch, in);
	}
	ch->draining = false;
	ch->now_valid = false;
	bdev_after_completion(ch);
}

static int bdev_drain_poll(void *arg)
{
	struct bdev_channel *ch = arg;

	keel_poller_unregister(&ch->drain_poller);
	bdev_drain(ch);
	return KEEL_POLLER_BUSY;
}

static void bdev_defer(struct bdev_channel *ch, struct keel_bdev_io_internal *in)
{
	int rc;

	TAILQ_INSERT_TAIL(&ch->deferred, in, link);
	if (ch->drain_pending) {
		return;
	}
	ch->drain_pending = true;
	rc = keel_thread_send_msg(ch->thread, bdev_drain, ch);
	if (keel_likely(rc == 0)) {
		return;
	}
	/* Own ring full: drain from a poller instead; it runs on the next iteration. */
	if (!ch->drain_poller) {
		ch->drain_poller = keel_poller_register(bdev_drain_poll, ch, 0, "bdev_drain");
	}
	if (!ch->drain_poller) {
		KEEL_ERRLOG("bdev %s: cannot schedule completions: %s", ch->bdev->internal->name,
			    strerror(-rc));
	}
}

static int bdev_nomem_poll(void *arg)
{
	struct bdev_channel *ch = arg;

	if (TAILQ_EMPTY(&ch->nomem_q)) {
		keel_poller_unregister(&ch->nomem_poller);
		bdev_channel_maybe_free(ch);
		return KEEL_POLLER_IDLE;
	}
	bdev_nomem_retry(ch);
	return KEEL_POLLER_BUSY;
}

static void bdev_nomem_retry(struct bdev_channel *ch)
{
	struct keel_bdev_io_internal *in;
	TAILQ_HEAD(, keel_bdev_io_internal) batch = TAILQ_HEAD_INITIALIZER(batch);

	TAILQ_CONCAT(&batch, &ch->nomem_q, link);
	while ((in = TAILQ_FIRST(&batch))) {
		TAILQ_REMOVE(&batch, in, link);
		bdev_submit_module(ch, in->io);
	}
}

void keel_bdev_io_complete(struct keel_bdev_io *io, int status)
{
	struct keel_bdev_io_internal *in = io->internal;
	struct bdev_channel *ch = in->ch;

	assert(keel_thread_get_current() == ch->thread);
	if (keel_unlikely(status == -ENOMEM)) {
		/* Out of module resources: retry later, never fail the request. */
		TAILQ_INSERT_TAIL(&ch->nomem_q, in, link);
		if (!ch->nomem_poller) {
			ch->nomem_poller = keel_poller_register(bdev_nomem_poll, ch,
								BDEV_NOMEM_RETRY_US, "bdev_nomem");
		}
		return;
	}
	in->status = status;
	if (ch->in_submit) {
		bdev_defer(ch, in);
		return;
	}
	bdev_io_done(ch, in);
	bdev_after_completion(ch);
}

/* Hot remove: requests that never reached the module fail; those in flight finish
 * normally. */
void bdev_channel_fail_queued(struct bdev_channel *ch, int status)
{
	struct keel_bdev_io_internal *in;
	struct bdev_wait *w;

	while ((w = TAILQ_FIRST(&ch->waitq))) {
		keel_bdev_io_cb cb_fn = w->req.cb_fn;
		void *cb_arg = w->req.cb_arg;

		TAILQ_REMOVE(&ch->waitq, w, link);
		bdev_wait_put(ch, w);
		cb_fn(cb_arg, status);
	}
	while ((in = TAILQ_FIRST(&ch->nomem_q))) {
		TAILQ_REMOVE(&ch->nomem_q, in, link);
		in->status = status;
		bdev_io_done(ch, in);
	}
}

/* ------------------------------------------------------------------------------ */
/* Reset                                                                           */
/* ------------------------------------------------------------------------------ */
/*
 * A reset waits, channel by channel, until every request that channel accepted
 * before the reset got there has completed. Requests count in one of two epochs;
 * the reset flips the channel's epoch and waits for the old one to drain. Resets
 * queue per channel so each waits for a clean epoch.
 */

static void bdev_reset_check(struct bdev_channel *ch)
{
	struct keel_bdev_io_internal *rin;

	while ((rin = TAILQ_FIRST(&ch->reset_waiters)) && ch->inflight[ch->epoch ^ 1] == 0) {
		TAILQ_REMOVE(&ch->reset_waiters, rin, reset_link);
		if (!TAILQ_EMPTY(&ch->reset_waiters)) {
			ch->epoch ^= 1;
		}
		keel_for_each_channel_continue(rin->reset_iter, 0);
	}
}

static void bdev_reset_visit(struct keel_io_channel_iter *iter)
{
	struct keel_bdev_io_internal *rin = keel_io_channel_iter_get_ctx(iter);
	struct bdev_channel *ch = bdev_ch(keel_io_channel_iter_get_channel(iter));

	rin->reset_iter = iter;
	if (TAILQ_EMPTY(&ch->reset_waiters)) {
		if (ch->inflight[ch->epoch] == 0) {
			keel_for_each_channel_continue(iter, 0);
			return;
		}
		ch->epoch ^= 1;
	}
	TAILQ_INSERT_TAIL(&ch->reset_waiters, rin, reset_link);
}

static void bdev_reset_drained(struct keel_io_channel_iter *iter, int status)
{
	struct keel_bdev_io_internal *rin = keel_io_channel_iter_get_ctx(iter);
	struct bdev_channel *ch = rin->ch;

	if (ch->bdev->internal->native[KEEL_BDEV_IO_RESET]) {
		bdev_submit_module(ch, rin->io);
	} else {
		keel_bdev_io_complete(rin->io, 0);
	}
}

/* ------------------------------------------------------------------------------ */
/* Submission                                                                      */
/* ------------------------------------------------------------------------------ */

void bdev_io_start(struct bdev_channel *ch, void *obj, const struct bdev_request *req)
{
	struct keel_bdev_io_internal *in = obj;
	struct keel_bdev_io *io = (struct keel_bdev_io *)(in + 1);
	struct keel_bdev *bdev = ch->bdev;
	struct keel_bdev_internal *bi = bdev->internal;
	enum keel_bdev_io_type type = req->type;
	uint64_t offset_blocks = req->offset_blocks;
	uint64_t num_blocks = req->num_blocks;
	uint64_t iov_bytes = req->iov_bytes;
	bool split, bounce;

	in->io = io;
	in->ch = ch;
	in->cb_fn = req->cb_fn;
	in->cb_arg = req->cb_arg;
	in->status = 0;
	in->user_type = type;
	in->is_lane = false;
	in->is_child = false;
	in->bounce_buf = NULL;
	in->nextents = 0;
	in->submit_tsc = ch->now_valid ? ch->now_tsc : keel_ticks();
	io->internal = in;
	io->bdev = bdev;
	io->type = type;
	io->offset_blocks = offset_blocks;
	io->num_blocks = num_blocks;
	io->flags = req->flags;
	if (req->buf) {
		in->flat.iov_base = req->buf;
		in->flat.iov_len = num_blocks << bi->block_shift;
		io->iovs = &in->flat;
		io->iovcnt = 1;
	} else {
		io->iovs = req->iovs;
		io->iovcnt = req->iovcnt;
	}
	ch->outstanding++;
	ch->in_submit++;

	if (keel_unlikely(type == KEEL_BDEV_IO_RESET)) {
		in->counted = false;
		keel_for_each_channel(bi->io_dev, bdev_reset_visit, in, bdev_reset_drained);
		goto out;
	}
	in->counted = true;
	in->epoch = ch->epoch;
	ch->inflight[in->epoch]++;

	if (keel_unlikely(__atomic_load_n(&bi->state, __ATOMIC_RELAXED) != BDEV_STATE_REGISTERED)) {
		/* Was waiting for an object while the bdev went away. */
		in->status = -ENODEV;
		bdev_defer(ch, in);
		goto out;
	}

	if (keel_likely(bi->simple && iov_bytes == (num_blocks << bi->block_shift)) &&
	    type != KEEL_BDEV_IO_FLUSH &&
	    (type != KEEL_BDEV_IO_WRITE_ZEROES || bi->native[KEEL_BDEV_IO_WRITE_ZEROES])) {
		ch->submit_fn(ch->module_ch, io);
		goto out;
	}

	switch (type) {
	case KEEL_BDEV_IO_FLUSH:
		if (!bdev->write_cache || !bi->native[KEEL_BDEV_IO_FLUSH]) {
			/* Nothing volatile to write back. */
			bdev_defer(ch, in);
		} else {
			ch->submit_fn(ch->module_ch, io);
		}
		goto out;
	case KEEL_BDEV_IO_WRITE_ZEROES:
		if (!bi->native[KEEL_BDEV_IO_WRITE_ZEROES]) {
			if (io->flags & KEEL_BDEV_IO_FLAG_NO_EMULATE) {
				in->status = -ENOTSUP; /* the caller wants no slow zeroing */
				bdev_defer(ch, in);
				goto out;
			}
			io->iovs = NULL;
			io->iovcnt = 0;
			bdev_split_start(ch, in, KEEL_BDEV_IO_WRITE, false);
			goto out;
		}
		break;
	case KEEL_BDEV_IO_GET_ALLOCATION:
		/* The flat iovec is the extents array, never split: the module answers
		 * for as much of the range as the array holds. */
		in->flat.iov_len = iov_bytes;
		ch->submit_fn(ch->module_ch, io);
		goto out;
	default:
		break;
	}

	split = (bdev->max_transfer_blocks && num_blocks > bdev->max_transfer_blocks) ||
		(bdev->optimal_io_boundary &&
		 offset_blocks % bdev->optimal_io_boundary + num_blocks >
			 bdev->optimal_io_boundary);
	bounce = false;
	if (type == KEEL_BDEV_IO_READ || type == KEEL_BDEV_IO_WRITE) {
		bounce = bi->align_mask && bdev_iovs_misaligned(bi, io->iovs, io->iovcnt);
		/* iovecs longer than the request are trimmed by the slicing path. */
		split = split || bounce || iov_bytes != (num_blocks << bi->block_shift);
	}
	if (split) {
		bdev_split_start(ch, in, type, bounce);
	} else {
		ch->submit_fn(ch->module_ch, io);
	}
out:
	ch->in_submit--;
}

/* Start a validated request, or park it FIFO when the pool is dry or others wait. */
static inline int bdev_start_or_wait(struct bdev_channel *ch, const struct bdev_request *req)
{
	struct bdev_wait *w;
	void *obj;

	assert(keel_thread_get_current() == ch->thread);
	if (keel_likely(TAILQ_EMPTY(&ch->waitq))) {
		obj = keel_mempool_cache_get(ch->cache);
		if (keel_likely(obj != NULL)) {
			bdev_io_start(ch, obj, req);
			return 0;
		}
	}
	w = bdev_wait_get(ch);
	if (!w) {
		return -ENOMEM;
	}
	w->req = *req;
	TAILQ_INSERT_TAIL(&ch->waitq, w, link);
	return 0;
}

/* Validate \p req (type, buffers, callback filled in by the caller) for \p nbytes at
 * byte \p offset, fill in its block range and iovec size, and start it. Inlined into
 * each entry point, as the parameter lists were before the request struct: the
 * compiler then builds only the fields that entry point sets, and the hot path
 * gains no call. */
__attribute__((always_inline)) static inline int bdev_submit(struct keel_io_channel *ioch,
							     struct bdev_request *req,
							     uint64_t offset, uint64_t nbytes)
{
	struct keel_bdev_desc *desc = req->desc;
	enum keel_bdev_io_type type = req->type;
	struct iovec *iovs = req->iovs;
	struct keel_bdev *bdev;
	struct keel_bdev_internal *bi;
	uint64_t offset_blocks, num_blocks, total, iov_bytes;

	if (keel_unlikely(!desc || !ioch || !req->cb_fn)) {
		return -EINVAL;
	}
	bdev = desc->bdev;
	bi = bdev->internal;
	if (keel_unlikely(((offset | nbytes) & bi->block_mask) || nbytes == 0)) {
		return -EINVAL;
	}
	offset_blocks = offset >> bi->block_shift;
	num_blocks = nbytes >> bi->block_shift;
	total = __atomic_load_n(&bdev->num_blocks, __ATOMIC_RELAXED);
	if (keel_unlikely(offset_blocks >= total || num_blocks > total - offset_blocks)) {
		return -EINVAL;
	}
	if (keel_unlikely(type != KEEL_BDEV_IO_READ && type != KEEL_BDEV_IO_GET_ALLOCATION &&
			  !desc->write)) {
		return -EBADF;
	}
	if (keel_unlikely((type == KEEL_BDEV_IO_READ || type == KEEL_BDEV_IO_WRITE ||
			   type == KEEL_BDEV_IO_UNMAP || type == KEEL_BDEV_IO_GET_ALLOCATION) &&
			  !bi->native[type])) {
		return -ENOTSUP;
	}
	if (keel_unlikely(__atomic_load_n(&bi->state, __ATOMIC_RELAXED) != BDEV_STATE_REGISTERED)) {
		return -ENODEV;
	}

	iov_bytes = nbytes;
	if (keel_unlikely(type == KEEL_BDEV_IO_GET_ALLOCATION)) {
		iov_bytes = (uint64_t)req->iovcnt * sizeof(struct keel_bdev_extent);
	} else if (type == KEEL_BDEV_IO_READ || type == KEEL_BDEV_IO_WRITE) {
		if (!iovs) {
			if (keel_unlikely(!req->buf)) {
				return -EINVAL;
			}
		} else {
			if (keel_unlikely(req->iovcnt <= 0)) {
				return -EINVAL;
			}
			iov_bytes = 0;
			for (int i = 0; i < req->iovcnt; i++) {
				if (keel_unlikely(!iovs[i].iov_base && iovs[i].iov_len)) {
					return -EINVAL;
				}
				iov_bytes += iovs[i].iov_len;
			}
			if (keel_unlikely(iov_bytes < nbytes)) {
				return -EINVAL;
			}
		}
	}
	req->iov_bytes = iov_bytes;
	req->offset_blocks = offset_blocks;
	req->num_blocks = num_blocks;
	return bdev_start_or_wait(bdev_ch(ioch), req);
}

int keel_bdev_read(struct keel_bdev_desc *desc, struct keel_io_channel *ch, void *buf,
		   uint64_t offset, uint64_t nbytes, keel_bdev_io_cb cb_fn, void *cb_arg)
{
	struct bdev_request req = {
		.desc = desc,
		.type = KEEL_BDEV_IO_READ,
		.buf = buf,
		.cb_fn = cb_fn,
		.cb_arg = cb_arg,
	};

	return bdev_submit(ch, &req, offset, nbytes);
}

int keel_bdev_readv(struct keel_bdev_desc *desc, struct keel_io_channel *ch, struct iovec *iov,
		    int iovcnt, uint64_t offset, uint64_t nbytes, keel_bdev_io_cb cb_fn,
		    void *cb_arg)
{
	struct bdev_request req = {
		.desc = desc,
		.type = KEEL_BDEV_IO_READ,
		.iovs = iov,
		.iovcnt = iovcnt,
		.cb_fn = cb_fn,
		.cb_arg = cb_arg,
	};

	if (!iov) {
		return -EINVAL;
	}
	return bdev_submit(ch, &req, offset, nbytes);
}

int keel_bdev_write(struct keel_bdev_desc *desc, struct keel_io_channel *ch, void *buf,
		    uint64_t offset, uint64_t nbytes, keel_bdev_io_cb cb_fn, void *cb_arg)
{
	struct bdev_request req = {
		.desc = desc,
		.type = KEEL_BDEV_IO_WRITE,
		.buf = buf,
		.cb_fn = cb_fn,
		.cb_arg = cb_arg,
	};

	return bdev_submit(ch, &req, offset, nbytes);
}

int keel_bdev_writev(struct keel_bdev_desc *desc, struct keel_io_channel *ch, struct iovec *iov,
		     int iovcnt, uint64_t offset, uint64_t nbytes, uint32_t flags,
		     keel_bdev_io_cb cb_fn, void *cb_arg)
{
	struct bdev_request req = {
		.desc = desc,
		.type = KEEL_BDEV_IO_WRITE,
		.iovs = iov,
		.iovcnt = iovcnt,
		.flags = flags,
		.cb_fn = cb_fn,
		.cb_arg = cb_arg,
	};

	if (!iov || (flags & ~KEEL_BDEV_IO_FLAG_FUA)) {
		return -EINVAL;
	}
	return bdev_submit(ch, &req, offset, nbytes);
}

/* The data-less requests: flush, unmap, write_zeroes. */
static int bdev_submit_range(struct keel_bdev_desc *desc, struct keel_io_channel *ch,
			     enum keel_bdev_io_type type, uint64_t offset, uint64_t nbytes,
			     keel_bdev_io_cb cb_fn, void *cb_arg)
{
	struct bdev_request req = {
		.desc = desc,
		.type = type,
		.cb_fn = cb_fn,
		.cb_arg = cb_arg,
	};

	return bdev_submit(ch, &req, offset, nbytes);
}

int keel_bdev_flush(struct keel_bdev_desc *desc, struct keel_io_channel *ch, uint64_t offset,
		    uint64_t nbytes, keel_bdev_io_cb cb_fn, void *cb_arg)
{
	return bdev_submit_range(desc, ch, KEEL_BDEV_IO_FLUSH, offset, nbytes, cb_fn, cb_arg);
}

int keel_bdev_unmap(struct keel_bdev_desc *desc, struct keel_io_channel *ch, uint64_t offset,
		    uint64_t nbytes, keel_bdev_io_cb cb_fn, void *cb_arg)
{
	return bdev_submit_range(desc, ch, KEEL_BDEV_IO_UNMAP, offset, nbytes, cb_fn, cb_arg);
}

int keel_bdev_write_zeroes_ext(struct keel_bdev_desc *desc, struct keel_io_channel *ch,
			       uint64_t offset, uint64_t nbytes, uint32_t flags,
			       keel_bdev_io_cb cb_fn, void *cb_arg)
{
	struct bdev_request req = {
		.desc = desc,
		.type = KEEL_BDEV_IO_WRITE_ZEROES,
		.flags = flags,
		.cb_fn = cb_fn,
		.cb_arg = cb_arg,
	};

	if (flags & ~(KEEL_BDEV_IO_FLAG_UNMAP | KEEL_BDEV_IO_FLAG_NO_EMULATE)) {
		return -EINVAL;
	}
	return bdev_submit(ch, &req, offset, nbytes);
}

int keel_bdev_write_zeroes(struct keel_bdev_desc *desc, struct keel_io_channel *ch, uint64_t offset,
			   uint64_t nbytes, keel_bdev_io_cb cb_fn, void *cb_arg)
{
	return bdev_submit_range(desc, ch, KEEL_BDEV_IO_WRITE_ZEROES, offset, nbytes, cb_fn,
				 cb_arg);
}

int keel_bdev_get_allocation(struct keel_bdev_desc *desc, struct keel_io_channel *ch,
			     uint64_t offset, uint64_t nbytes, struct keel_bdev_extent *extents,
			     uint32_t max_extents, keel_bdev_io_cb cb_fn, void *cb_arg)
{
	/* iovcnt carries the array's capacity; buf the array (see bdev_io_start). */
	struct bdev_request req = {
		.desc = desc,
		.type = KEEL_BDEV_IO_GET_ALLOCATION,
		.buf = extents,
		.iovcnt = (int)max_extents,
		.cb_fn = cb_fn,
		.cb_arg = cb_arg,
	};

	if (!extents || max_extents == 0 || max_extents > (1u << 24)) {
		return -EINVAL;
	}
	extents[0].length = 0;
	return bdev_submit(ch, &req, offset, nbytes);
}

bool keel_bdev_io_add_extent(struct keel_bdev_io *io, uint64_t length, uint32_t flags)
{
	struct keel_bdev_io_internal *in = io->internal;
	struct keel_bdev_extent *ext = io->iovs[0].iov_base;
	uint32_t max = (uint32_t)(io->iovs[0].iov_len / sizeof(*ext));

	assert(io->type == KEEL_BDEV_IO_GET_ALLOCATION);
	if (length == 0) {
		return true;
	}
	if (in->nextents > 0 && ext[in->nextents - 1].flags == flags) {
		ext[in->nextents - 1].length += length;
		return true;
	}
	if (in->nextents == max) {
		return false;
	}
	ext[in->nextents].length = length;
	ext[in->nextents].flags = flags;
	ext[in->nextents].reserved = 0;
	in->nextents++;
	if (in->nextents < max) {
		ext[in->nextents].length = 0;
	}
	return true;
}

int keel_bdev_reset(struct keel_bdev_desc *desc, struct keel_io_channel *ioch,
		    keel_bdev_io_cb cb_fn, void *cb_arg)
{
	struct bdev_request req = {
		.desc = desc,
		.type = KEEL_BDEV_IO_RESET,
		.cb_fn = cb_fn,
		.cb_arg = cb_arg,
	};

	if (!desc || !ioch || !cb_fn) {
		return -EINVAL;
	}
	if (__atomic_load_n(&desc->bdev->internal->state, __ATOMIC_RELAXED) !=
	    BDEV_STATE_REGISTERED) {
		return -ENODEV;
	}
	return bdev_start_or_wait(bdev_ch(ioch), &req);
}
