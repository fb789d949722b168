/*
 * bdev core: registry, descriptors, claims, channels, the request path (validation,
 * pooled requests, waiting, -ENOMEM retry, deferred completion), reset and hot
 * remove. Lanes (splitting, write_zeroes emulation): bdev_split.c; bounce buffers:
 * bdev_bounce.c; statistics: bdev_stats.c.
 *
 * Hot path budget: a null-module request must cost tens of nanoseconds, so the
 * common case (in-range, aligned, no split) touches one channel, one cached request
 * object and reads the clock at most twice; inline completions are batched and
 * delivered by one message per batch.
 */
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <jansson.h>

#include "keel/log.h"
#include "bdev_internal.h"

/* ------------------------------------------------------------------------------ */
/* Globals                                                                         */
/* ------------------------------------------------------------------------------ */

static pthread_mutex_t g_bdev_lock = PTHREAD_MUTEX_INITIALIZER; /* registry + modules */
static TAILQ_HEAD(keel_bdev_list_head, keel_bdev) g_bdevs = TAILQ_HEAD_INITIALIZER(g_bdevs);
static TAILQ_HEAD(keel_bdev_module_list_head, keel_bdev_module) g_modules =
	TAILQ_HEAD_INITIALIZER(g_modules);

static struct keel_bdev_opts g_opts = {
	.io_pool_size = 1024,
	.io_cache_size = 128,
	.bounce_buf_count = 8,
	.bounce_buf_size = 65536,
};


static const char *const g_io_type_names[KEEL_BDEV_IO_NUM_TYPES] = {
	[KEEL_BDEV_IO_READ] = "read",
	[KEEL_BDEV_IO_WRITE] = "write",
	[KEEL_BDEV_IO_FLUSH] = "flush",
	[KEEL_BDEV_IO_UNMAP] = "unmap",
	[KEEL_BDEV_IO_WRITE_ZEROES] = "write_zeroes",
	[KEEL_BDEV_IO_RESET] = "reset",
};

const char *keel_bdev_io_type_name(enum keel_bdev_io_type type)
{
	if ((unsigned)type >= KEEL_BDEV_IO_NUM_TYPES)
		return "unknown";
	return g_io_type_names[type];
}

/* ------------------------------------------------------------------------------ */
/* Options                                                                         */
/* ------------------------------------------------------------------------------ */

void keel_bdev_get_opts(struct keel_bdev_opts *opts)
{
	pthread_mutex_lock(&g_bdev_lock);
	*opts = g_opts;
	pthread_mutex_unlock(&g_bdev_lock);
}

int keel_bdev_set_opts(const struct keel_bdev_opts *opts)
{
	if (!opts || opts->io_pool_size < 1 || opts->io_cache_size < 2 ||
	    opts->bounce_buf_count < 1 || opts->bounce_buf_size < 4096 ||
	    opts->bounce_buf_size > 16 * 1024 * 1024 ||
	    (opts->bounce_buf_size & (opts->bounce_buf_size - 1)))
		return -EINVAL;
	pthread_mutex_lock(&g_bdev_lock);
	g_opts = *opts;
	pthread_mutex_unlock(&g_bdev_lock);
	return 0;
}

/* ------------------------------------------------------------------------------ */
/* Control-plane messages that must not get lost                                   */
/* ------------------------------------------------------------------------------ */

struct bdev_ctrl_msg {
	struct keel_thread *thread;
	keel_msg_fn fn;
	keel_msg_fn drop_fn;
	void *arg;
	struct keel_poller *poller;
};

/* The message can never be delivered (its thread is gone): say so, and let the
 * sender release what the message held. */
static void bdev_ctrl_lost(struct keel_thread *thread, keel_msg_fn drop_fn, void *arg, int rc)
{
	KEEL_ERRLOG("bdev: control message to thread %s lost: %s",
		    thread ? keel_thread_get_name(thread) : "(null)", strerror(-rc));
	drop_fn(arg);
}

static int bdev_ctrl_retry(void *arg)
{
	struct bdev_ctrl_msg *m = arg;
	int rc = keel_thread_send_msg(m->thread, m->fn, m->arg);

	if (rc == -ENOMEM)
		return KEEL_POLLER_IDLE;
	if (rc != 0)
		bdev_ctrl_lost(m->thread, m->drop_fn, m->arg, rc);
	keel_poller_unregister(&m->poller);
	free(m);
	return KEEL_POLLER_BUSY;
}

/* A full ring is backpressure: retry from a poller on this thread until it fits.
 * fn(arg) runs on \p thread, or drop_fn(arg) here when it never can. */
static void bdev_send_ctrl(struct keel_thread *thread, keel_msg_fn fn, keel_msg_fn drop_fn,
			   void *arg)
{
	struct bdev_ctrl_msg *m;
	int rc = keel_thread_send_msg(thread, fn, arg);

	if (rc == 0)
		return;
	if (rc == -ENOMEM) {
		m = calloc(1, sizeof(*m));
		if (m) {
			m->thread = thread;
			m->fn = fn;
			m->drop_fn = drop_fn;
			m->arg = arg;
			m->poller = keel_poller_register(bdev_ctrl_retry, m, 100, "bdev_ctrl_retry");
			if (m->poller)
				return;
			free(m);
		}
	}
	bdev_ctrl_lost(thread, drop_fn, arg, rc);
}

/* ------------------------------------------------------------------------------ */
/* Modules                                                                         */
/* ------------------------------------------------------------------------------ */

void keel_bdev_module_register(struct keel_bdev_module *module)
{
	struct keel_bdev_module *m;

	pthread_mutex_lock(&g_bdev_lock);
	TAILQ_FOREACH(m, &g_modules, link) {
		if (m == module)
			break;
	}
	if (!m)
		TAILQ_INSERT_TAIL(&g_modules, module, link);
	pthread_mutex_unlock(&g_bdev_lock);
}

/* ------------------------------------------------------------------------------ */
/* Lookup and properties                                                           */
/* ------------------------------------------------------------------------------ */

static struct keel_bdev *bdev_find_locked(const char *name)
{
	struct keel_bdev *b;

	TAILQ_FOREACH(b, &g_bdevs, link) {
		if (strcmp(b->internal->name, name) == 0)
			return b;
	}
	return NULL;
}

struct keel_bdev *keel_bdev_get_by_name(const char *name)
{
	struct keel_bdev *b;

	if (!name)
		return NULL;
	pthread_mutex_lock(&g_bdev_lock);
	b = bdev_find_locked(name);
	pthread_mutex_unlock(&g_bdev_lock);
	return b;
}

struct keel_bdev *keel_bdev_get_by_uuid(const char *uuid)
{
	struct keel_bdev *b;

	if (!uuid)
		return NULL;
	pthread_mutex_lock(&g_bdev_lock);
	TAILQ_FOREACH(b, &g_bdevs, link) {
		if (strcasecmp(b->internal->uuid_str, uuid) == 0)
			break;
	}
	pthread_mutex_unlock(&g_bdev_lock);
	return b;
}

struct keel_bdev *keel_bdev_first(void)
{
	struct keel_bdev *b;

	pthread_mutex_lock(&g_bdev_lock);
	b = TAILQ_FIRST(&g_bdevs);
	pthread_mutex_unlock(&g_bdev_lock);
	return b;
}

struct keel_bdev *keel_bdev_next(struct keel_bdev *prev)
{
	struct keel_bdev *b;

	if (!prev)
		return keel_bdev_first();
	pthread_mutex_lock(&g_bdev_lock);
	b = TAILQ_NEXT(prev, link);
	pthread_mutex_unlock(&g_bdev_lock);
	return b;
}

const char *keel_bdev_get_name(const struct keel_bdev *bdev)
{
	return bdev->internal->name;
}

const char *keel_bdev_get_module_name(const struct keel_bdev *bdev)
{
	return bdev->module ? bdev->module->name : "unknown";
}

const char *keel_bdev_get_uuid_str(const struct keel_bdev *bdev)
{
	return bdev->internal->uuid_str;
}

const uint8_t *keel_bdev_get_uuid(const struct keel_bdev *bdev)
{
	return bdev->uuid;
}

uint32_t keel_bdev_get_block_size(const struct keel_bdev *bdev)
{
	return bdev->block_size;
}

uint64_t keel_bdev_get_num_blocks(const struct keel_bdev *bdev)
{
	return __atomic_load_n(&bdev->num_blocks, __ATOMIC_RELAXED);
}

uint32_t keel_bdev_get_buf_align(const struct keel_bdev *bdev)
{
	return bdev->required_alignment > 1 ? bdev->required_alignment : 1;
}

uint32_t keel_bdev_get_optimal_io_boundary(const struct keel_bdev *bdev)
{
	return bdev->optimal_io_boundary;
}

uint32_t keel_bdev_get_max_transfer_blocks(const struct keel_bdev *bdev)
{
	return bdev->max_transfer_blocks;
}

bool keel_bdev_io_type_supported(struct keel_bdev *bdev, enum keel_bdev_io_type type)
{
	switch (type) {
	case KEEL_BDEV_IO_WRITE_ZEROES:
	case KEEL_BDEV_IO_FLUSH:
	case KEEL_BDEV_IO_RESET:
		return true;
	case KEEL_BDEV_IO_READ:
	case KEEL_BDEV_IO_WRITE:
	case KEEL_BDEV_IO_UNMAP:
		return bdev->internal->native[type];
	default:
		return false;
	}
}

bool keel_bdev_has_write_cache(const struct keel_bdev *bdev)
{
	return bdev->write_cache;
}

bool keel_bdev_is_multi_conn_safe(const struct keel_bdev *bdev)
{
	return bdev->multi_conn_safe;
}

const char *keel_bdev_get_claim_owner(const struct keel_bdev *bdev)
{
	struct keel_bdev_internal *bi = bdev->internal;
	const char *owner;

	pthread_mutex_lock(&bi->lock);
	owner = bi->claim_module ? bi->claim_module->name : NULL;
	pthread_mutex_unlock(&bi->lock);
	return owner;
}

int keel_bdev_dump_info_json(struct keel_bdev *bdev, struct json_t *obj)
{
	json_t *types, *drv;
	const char *owner;
	int rc = 0;

	if (!bdev || !obj)
		return -EINVAL;
	types = json_array();
	drv = json_object();
	if (!types || !drv) {
		rc = -ENOMEM;
		goto out_put;
	}
	for (int t = 0; t < KEEL_BDEV_IO_NUM_TYPES; t++) {
		if (keel_bdev_io_type_supported(bdev, t))
			json_array_append_new(types, json_string(keel_bdev_io_type_name(t)));
	}
	owner = keel_bdev_get_claim_owner(bdev);
	json_object_set_new(obj, "name", json_string(keel_bdev_get_name(bdev)));
	json_object_set_new(obj, "uuid", json_string(keel_bdev_get_uuid_str(bdev)));
	json_object_set_new(obj, "module", json_string(keel_bdev_get_module_name(bdev)));
	json_object_set_new(obj, "product_name",
			    json_string(bdev->product_name ? bdev->product_name : ""));
	json_object_set_new(obj, "block_size", json_integer(bdev->block_size));
	json_object_set_new(obj, "num_blocks", json_integer((json_int_t)keel_bdev_get_num_blocks(bdev)));
	json_object_set_new(obj, "required_alignment", json_integer(keel_bdev_get_buf_align(bdev)));
	json_object_set_new(obj, "optimal_io_boundary", json_integer(bdev->optimal_io_boundary));
	json_object_set_new(obj, "max_transfer_blocks", json_integer(bdev->max_transfer_blocks));
	json_object_set_new(obj, "write_cache", json_boolean(bdev->write_cache));
	json_object_set_new(obj, "multi_conn_safe", json_boolean(bdev->multi_conn_safe));
	json_object_set_new(obj, "claimed_by", owner ? json_string(owner) : json_null());
	json_object_set_new(obj, "supported_io_types", types);
	types = NULL;
	if (bdev->fn_table->dump_info_json)
		bdev->fn_table->dump_info_json(bdev->ctxt, drv);
	json_object_set_new(obj, "driver_specific", drv);
	return 0;

out_put:
	json_decref(types);
	json_decref(drv);
	return rc;
}

/* ------------------------------------------------------------------------------ */
/* Channels                                                                        */
/* ------------------------------------------------------------------------------ */

static void bdev_destruct(struct keel_bdev *bdev);

static int bdev_channel_create(void *io_dev, void *ctx_buf)
{
	struct keel_bdev *bdev = bdev_from_io_dev(io_dev);
	struct keel_bdev_internal *bi = bdev->internal;
	struct keel_bdev_opts opts;
	struct bdev_channel *ch;
	char name[KEEL_BDEV_NAME_MAX + 16];

	keel_bdev_get_opts(&opts);
	if (posix_memalign((void **)&ch, 64, sizeof(*ch)) != 0)
		return -ENOMEM;
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
	if (!ch->pool)
		goto out_put_module_ch;
	ch->cache = keel_mempool_cache_create(ch->pool, opts.io_cache_size);
	if (!ch->cache)
		goto out_free_pool;

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
	if (destruct)
		bi->destructing = true;
	pthread_mutex_unlock(&bi->lock);
	free(ch);
	if (destruct)
		bdev_destruct(bdev);
}

static inline void bdev_channel_maybe_free(struct bdev_channel *ch)
{
	if (keel_unlikely(ch->destroyed) && ch->outstanding == 0 && !ch->drain_pending &&
	    !ch->draining && TAILQ_EMPTY(&ch->deferred) && TAILQ_EMPTY(&ch->nomem_q))
		bdev_channel_free(ch);
}

static void bdev_channel_destroy(void *io_dev, void *ctx_buf)
{
	struct bdev_channel *ch = *(struct bdev_channel **)ctx_buf;

	/* Requests still in flight keep the channel (and the module channel) alive as an
	 * orphan until they complete, so a consumer that puts early cannot crash us. */
	if (ch->outstanding)
		KEEL_WARNLOG("bdev %s: channel released with %u requests outstanding",
			     ch->bdev->internal->name, ch->outstanding);
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
		if (!c)
			return NULL;
		c->next = ch->wait_chunks;
		ch->wait_chunks = c;
		for (size_t i = 0; i < sizeof(c->entries) / sizeof(c->entries[0]); i++)
			TAILQ_INSERT_TAIL(&ch->wait_free, &c->entries[i], link);
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
		if (keel_unlikely(!TAILQ_EMPTY(&ch->reset_waiters)))
			bdev_reset_check(ch);
	}
	ch->outstanding--;
	bdev_io_free(ch, in->io);
	cb_fn(cb_arg, status);
}

static inline void bdev_io_done(struct bdev_channel *ch, struct keel_bdev_io_internal *in)
{
	if (keel_unlikely(in->is_lane))
		bdev_lane_done(ch, in);
	else
		bdev_user_complete(ch, in);
}

static inline void bdev_after_completion(struct bdev_channel *ch)
{
	if (keel_unlikely(!TAILQ_EMPTY(&ch->nomem_q)))
		bdev_nomem_retry(ch);
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
	if (ch->drain_pending)
		return;
	ch->drain_pending = true;
	rc = keel_thread_send_msg(ch->thread, bdev_drain, ch);
	if (keel_likely(rc == 0))
		return;
	/* Own ring full: drain from a poller instead; it runs on the next iteration. */
	if (!ch->drain_poller)
		ch->drain_poller = keel_poller_register(bdev_drain_poll, ch, 0, "bdev_drain");
	if (!ch->drain_poller)
		KEEL_ERRLOG("bdev %s: cannot schedule completions: %s", ch->bdev->internal->name,
			    strerror(-rc));
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
		if (!ch->nomem_poller)
			ch->nomem_poller = keel_poller_register(bdev_nomem_poll, ch,
							       BDEV_NOMEM_RETRY_US, "bdev_nomem");
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
		if (!TAILQ_EMPTY(&ch->reset_waiters))
			ch->epoch ^= 1;
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

	if (ch->bdev->internal->native[KEEL_BDEV_IO_RESET])
		bdev_submit_module(ch, rin->io);
	else
		keel_bdev_io_complete(rin->io, 0);
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
	    type != KEEL_BDEV_IO_FLUSH && (type != KEEL_BDEV_IO_WRITE_ZEROES ||
					  bi->native[KEEL_BDEV_IO_WRITE_ZEROES])) {
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
			io->iovs = NULL;
			io->iovcnt = 0;
			bdev_split_start(ch, in, KEEL_BDEV_IO_WRITE, false);
			goto out;
		}
		break;
	default:
		break;
	}

	split = (bdev->max_transfer_blocks && num_blocks > bdev->max_transfer_blocks) ||
		(bdev->optimal_io_boundary &&
		 offset_blocks % bdev->optimal_io_boundary + num_blocks > bdev->optimal_io_boundary);
	bounce = false;
	if (type == KEEL_BDEV_IO_READ || type == KEEL_BDEV_IO_WRITE) {
		bounce = bi->align_mask && bdev_iovs_misaligned(bi, io->iovs, io->iovcnt);
		/* iovecs longer than the request are trimmed by the slicing path. */
		split = split || bounce || iov_bytes != (num_blocks << bi->block_shift);
	}
	if (split)
		bdev_split_start(ch, in, type, bounce);
	else
		ch->submit_fn(ch->module_ch, io);
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
	if (!w)
		return -ENOMEM;
	w->req = *req;
	TAILQ_INSERT_TAIL(&ch->waitq, w, link);
	return 0;
}

/* Validate \p req (type, buffers, callback filled in by the caller) for \p nbytes at
 * byte \p offset, fill in its block range and iovec size, and start it. Inlined into
 * each entry point, as the parameter lists were before the request struct: the
 * compiler then builds only the fields that entry point sets, and the hot path
 * gains no call. */
__attribute__((always_inline))
static inline int bdev_submit(struct keel_io_channel *ioch, struct bdev_request *req,
			      uint64_t offset, uint64_t nbytes)
{
	struct keel_bdev_desc *desc = req->desc;
	enum keel_bdev_io_type type = req->type;
	struct iovec *iovs = req->iovs;
	struct keel_bdev *bdev;
	struct keel_bdev_internal *bi;
	uint64_t offset_blocks, num_blocks, total, iov_bytes;

	if (keel_unlikely(!desc || !ioch || !req->cb_fn))
		return -EINVAL;
	bdev = desc->bdev;
	bi = bdev->internal;
	if (keel_unlikely(((offset | nbytes) & bi->block_mask) || nbytes == 0))
		return -EINVAL;
	offset_blocks = offset >> bi->block_shift;
	num_blocks = nbytes >> bi->block_shift;
	total = __atomic_load_n(&bdev->num_blocks, __ATOMIC_RELAXED);
	if (keel_unlikely(offset_blocks >= total || num_blocks > total - offset_blocks))
		return -EINVAL;
	if (keel_unlikely(type != KEEL_BDEV_IO_READ && !desc->write))
		return -EBADF;
	if (keel_unlikely((type == KEEL_BDEV_IO_READ || type == KEEL_BDEV_IO_WRITE ||
			   type == KEEL_BDEV_IO_UNMAP) && !bi->native[type]))
		return -ENOTSUP;
	if (keel_unlikely(__atomic_load_n(&bi->state, __ATOMIC_RELAXED) != BDEV_STATE_REGISTERED))
		return -ENODEV;

	iov_bytes = nbytes;
	if (type == KEEL_BDEV_IO_READ || type == KEEL_BDEV_IO_WRITE) {
		if (!iovs) {
			if (keel_unlikely(!req->buf))
				return -EINVAL;
		} else {
			if (keel_unlikely(req->iovcnt <= 0))
				return -EINVAL;
			iov_bytes = 0;
			for (int i = 0; i < req->iovcnt; i++) {
				if (keel_unlikely(!iovs[i].iov_base && iovs[i].iov_len))
					return -EINVAL;
				iov_bytes += iovs[i].iov_len;
			}
			if (keel_unlikely(iov_bytes < nbytes))
				return -EINVAL;
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
		.desc = desc, .type = KEEL_BDEV_IO_READ, .buf = buf, .cb_fn = cb_fn, .cb_arg = cb_arg,
	};

	return bdev_submit(ch, &req, offset, nbytes);
}

int keel_bdev_readv(struct keel_bdev_desc *desc, struct keel_io_channel *ch, struct iovec *iov,
		    int iovcnt, uint64_t offset, uint64_t nbytes, keel_bdev_io_cb cb_fn,
		    void *cb_arg)
{
	struct bdev_request req = {
		.desc = desc, .type = KEEL_BDEV_IO_READ, .iovs = iov, .iovcnt = iovcnt,
		.cb_fn = cb_fn, .cb_arg = cb_arg,
	};

	if (!iov)
		return -EINVAL;
	return bdev_submit(ch, &req, offset, nbytes);
}

int keel_bdev_write(struct keel_bdev_desc *desc, struct keel_io_channel *ch, void *buf,
		    uint64_t offset, uint64_t nbytes, keel_bdev_io_cb cb_fn, void *cb_arg)
{
	struct bdev_request req = {
		.desc = desc, .type = KEEL_BDEV_IO_WRITE, .buf = buf, .cb_fn = cb_fn, .cb_arg = cb_arg,
	};

	return bdev_submit(ch, &req, offset, nbytes);
}

int keel_bdev_writev(struct keel_bdev_desc *desc, struct keel_io_channel *ch, struct iovec *iov,
		     int iovcnt, uint64_t offset, uint64_t nbytes, uint32_t flags,
		     keel_bdev_io_cb cb_fn, void *cb_arg)
{
	struct bdev_request req = {
		.desc = desc, .type = KEEL_BDEV_IO_WRITE, .iovs = iov, .iovcnt = iovcnt,
		.flags = flags, .cb_fn = cb_fn, .cb_arg = cb_arg,
	};

	if (!iov || (flags & ~KEEL_BDEV_IO_FLAG_FUA))
		return -EINVAL;
	return bdev_submit(ch, &req, offset, nbytes);
}

/* The data-less requests: flush, unmap, write_zeroes. */
static int bdev_submit_range(struct keel_bdev_desc *desc, struct keel_io_channel *ch,
			     enum keel_bdev_io_type type, uint64_t offset, uint64_t nbytes,
			     keel_bdev_io_cb cb_fn, void *cb_arg)
{
	struct bdev_request req = {
		.desc = desc, .type = type, .cb_fn = cb_fn, .cb_arg = cb_arg,
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

int keel_bdev_write_zeroes(struct keel_bdev_desc *desc, struct keel_io_channel *ch,
			   uint64_t offset, uint64_t nbytes, keel_bdev_io_cb cb_fn, void *cb_arg)
{
	return bdev_submit_range(desc, ch, KEEL_BDEV_IO_WRITE_ZEROES, offset, nbytes, cb_fn,
				 cb_arg);
}

int keel_bdev_reset(struct keel_bdev_desc *desc, struct keel_io_channel *ioch,
		    keel_bdev_io_cb cb_fn, void *cb_arg)
{
	struct bdev_request req = {
		.desc = desc, .type = KEEL_BDEV_IO_RESET, .cb_fn = cb_fn, .cb_arg = cb_arg,
	};

	if (!desc || !ioch || !cb_fn)
		return -EINVAL;
	if (__atomic_load_n(&desc->bdev->internal->state, __ATOMIC_RELAXED) != BDEV_STATE_REGISTERED)
		return -ENODEV;
	return bdev_start_or_wait(bdev_ch(ioch), &req);
}

/* ------------------------------------------------------------------------------ */
/* Registration                                                                    */
/* ------------------------------------------------------------------------------ */

static bool bdev_name_valid(const char *name)
{
	size_t len;

	if (!name)
		return false;
	len = strlen(name);
	if (len == 0 || len > KEEL_BDEV_NAME_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (name[i] == '/' || isspace((unsigned char)name[i]) || !isprint((unsigned char)name[i]))
			return false;
	}
	return true;
}

static void bdev_uuid_fmt(const uint8_t *u, char *out)
{
	snprintf(out, KEEL_UUID_STR_LEN,
		 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
		 u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14],
		 u[15]);
}

static int bdev_uuid_generate(uint8_t *u)
{
	size_t got = 0;

	while (got < 16) {
		ssize_t n = getrandom(u + got, 16 - got, 0);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		got += (size_t)n;
	}
	u[6] = (u[6] & 0x0f) | 0x40; /* version 4 */
	u[8] = (u[8] & 0x3f) | 0x80; /* RFC 4122 variant */
	return 0;
}

int keel_bdev_register(struct keel_bdev *bdev)
{
	static const uint8_t zero_uuid[16];
	struct keel_bdev_internal *bi;
	struct keel_bdev *b;
	uint32_t ctx_size = 0;
	size_t elt;
	int rc;

	if (!bdev || !bdev->fn_table || !bdev->fn_table->submit_request ||
	    !bdev->fn_table->get_io_channel || !bdev->module)
		return -EINVAL;
	if (!bdev_name_valid(bdev->name)) {
		KEEL_ERRLOG("bdev register: invalid name '%s' (1..%d printable characters, no '/' "
			    "or whitespace)", bdev->name ? bdev->name : "(null)", KEEL_BDEV_NAME_MAX);
		return -EINVAL;
	}
	if (bdev->block_size < 512 || (bdev->block_size & (bdev->block_size - 1)) ||
	    bdev->num_blocks == 0 ||
	    bdev->required_alignment > BDEV_MAX_ALIGN ||
	    (bdev->required_alignment > 1 &&
	     (bdev->required_alignment & (bdev->required_alignment - 1)))) {
		KEEL_ERRLOG("bdev %s: invalid geometry: block_size %u, num_blocks %lu, alignment %u",
			    bdev->name, bdev->block_size, (unsigned long)bdev->num_blocks,
			    bdev->required_alignment);
		return -EINVAL;
	}
	bdev_stats_init();
	(void)bdev_zero_buf(); /* now, not on a reactor at the first emulated write */

	bi = calloc(1, sizeof(*bi));
	if (!bi)
		return -ENOMEM;
	snprintf(bi->name, sizeof(bi->name), "%s", bdev->name);
	if (memcmp(bdev->uuid, zero_uuid, 16) == 0) {
		rc = bdev_uuid_generate(bdev->uuid);
		if (rc)
			goto out_free_internal;
	}
	bdev_uuid_fmt(bdev->uuid, bi->uuid_str);
	bi->io_dev = (char *)bdev + 1;
	bi->block_shift = (uint32_t)__builtin_ctz(bdev->block_size);
	bi->block_mask = bdev->block_size - 1;
	bi->align_mask = bdev->required_alignment > 1 ? bdev->required_alignment - 1 : 0;
	bi->len_mask = bi->align_mask < bi->block_mask ? bi->align_mask : (uint32_t)bi->block_mask;
	bi->simple = !bdev->optimal_io_boundary && !bdev->max_transfer_blocks && !bi->align_mask;
	for (int t = 0; t < KEEL_BDEV_IO_NUM_TYPES; t++) {
		if (bdev->fn_table->io_type_supported)
			bi->native[t] = bdev->fn_table->io_type_supported(bdev->ctxt, t);
		else
			bi->native[t] = t == KEEL_BDEV_IO_READ || t == KEEL_BDEV_IO_WRITE;
	}
	if (bdev->module->get_ctx_size)
		ctx_size = bdev->module->get_ctx_size();
	elt = sizeof(struct keel_bdev_io_internal) + sizeof(struct keel_bdev_io) + ctx_size;
	bi->io_elt_size = (uint32_t)((elt + 63) & ~(size_t)63);
	pthread_mutex_init(&bi->lock, NULL);
	TAILQ_INIT(&bi->descs);
	bi->state = BDEV_STATE_REGISTERED;
	bdev->internal = bi;

	pthread_mutex_lock(&g_bdev_lock);
	TAILQ_FOREACH(b, &g_bdevs, link) {
		if (strcmp(b->internal->name, bi->name) == 0 || memcmp(b->uuid, bdev->uuid, 16) == 0)
			break;
	}
	if (b) {
		KEEL_ERRLOG("bdev %s: %s already taken by bdev %s", bi->name,
			    strcmp(b->internal->name, bi->name) == 0 ? "name" : "uuid",
			    b->internal->name);
		rc = -EEXIST;
		goto out_unlock;
	}
	rc = keel_io_device_register(bi->io_dev, bdev_channel_create, bdev_channel_destroy,
				     sizeof(struct bdev_channel *), bi->name);
	if (rc)
		goto out_unlock;
	TAILQ_INSERT_TAIL(&g_bdevs, bdev, link);
	pthread_mutex_unlock(&g_bdev_lock);
	KEEL_INFOLOG("bdev %s: registered (%s, %lu blocks of %u bytes, uuid %s)", bi->name,
		     keel_bdev_get_module_name(bdev), (unsigned long)bdev->num_blocks,
		     bdev->block_size, bi->uuid_str);
	return 0;

out_unlock:
	pthread_mutex_unlock(&g_bdev_lock);
	pthread_mutex_destroy(&bi->lock);
	bdev->internal = NULL;
out_free_internal:
	free(bi);
	return rc;
}

/* ------------------------------------------------------------------------------ */
/* Descriptors, events, claims                                                     */
/* ------------------------------------------------------------------------------ */

struct bdev_event_msg {
	struct keel_bdev_desc *desc;
	enum keel_bdev_event_type type;
};

/* One count decides who frees: close and every event message, delivered or
 * dropped, each put one reference, possibly on different threads. */
static void bdev_desc_put(struct keel_bdev_desc *desc)
{
	if (__atomic_sub_fetch(&desc->refs, 1, __ATOMIC_ACQ_REL) == 0)
		free(desc);
}

static void bdev_event_deliver(void *arg)
{
	struct bdev_event_msg *m = arg;
	struct keel_bdev_desc *desc = m->desc;

	if (!desc->closed)
		desc->event_cb(m->type, desc->bdev, desc->event_ctx);
	/* The callback may have closed the desc; we still hold our reference. */
	bdev_desc_put(desc);
	free(m);
}

/* The descriptor's thread is gone: the event is not delivered, its reference is. */
static void bdev_event_drop(void *arg)
{
	struct bdev_event_msg *m = arg;

	bdev_desc_put(m->desc);
	free(m);
}

/* Caller holds bi->lock. */
static void bdev_send_event_locked(struct keel_bdev_desc *desc, enum keel_bdev_event_type type)
{
	struct bdev_event_msg *m = calloc(1, sizeof(*m));

	if (!m) {
		KEEL_ERRLOG("bdev %s: out of memory sending %s event", desc->bdev->internal->name,
			    type == KEEL_BDEV_EVENT_REMOVE ? "remove" : "resize");
		return;
	}
	m->desc = desc;
	m->type = type;
	__atomic_add_fetch(&desc->refs, 1, __ATOMIC_ACQ_REL);
	bdev_send_ctrl(desc->thread, bdev_event_deliver, bdev_event_drop, m);
}

int keel_bdev_open_ext(const char *name, bool write, keel_bdev_event_cb event_cb, void *event_ctx,
		       struct keel_bdev_desc **desc_out)
{
	struct keel_thread *thread = keel_thread_get_current();
	struct keel_bdev_internal *bi;
	struct keel_bdev_desc *desc;
	struct keel_bdev *bdev;

	if (!name || !event_cb || !desc_out || !thread)
		return -EINVAL;
	desc = calloc(1, sizeof(*desc));
	if (!desc)
		return -ENOMEM;

	pthread_mutex_lock(&g_bdev_lock);
	bdev = bdev_find_locked(name);
	if (!bdev) {
		pthread_mutex_unlock(&g_bdev_lock);
		free(desc);
		return -ENODEV;
	}
	bi = bdev->internal;
	pthread_mutex_lock(&bi->lock);
	if (bi->state != BDEV_STATE_REGISTERED) {
		pthread_mutex_unlock(&bi->lock);
		pthread_mutex_unlock(&g_bdev_lock);
		free(desc);
		return -ENODEV;
	}
	if (write && bi->claim_module) {
		KEEL_ERRLOG("bdev %s: open for writing refused: claimed by module %s", bi->name,
			    bi->claim_module->name);
		pthread_mutex_unlock(&bi->lock);
		pthread_mutex_unlock(&g_bdev_lock);
		free(desc);
		return -EPERM;
	}
	desc->bdev = bdev;
	desc->thread = thread;
	desc->event_cb = event_cb;
	desc->event_ctx = event_ctx;
	desc->write = write;
	desc->refs = 1; /* the open's; close puts it */
	TAILQ_INSERT_TAIL(&bi->descs, desc, link);
	bi->open_count++;
	pthread_mutex_unlock(&bi->lock);
	pthread_mutex_unlock(&g_bdev_lock);
	*desc_out = desc;
	return 0;
}

static void bdev_teardown(struct keel_bdev *bdev);

void keel_bdev_close(struct keel_bdev_desc *desc)
{
	struct keel_bdev *bdev;
	struct keel_bdev_internal *bi;
	bool last;

	if (!desc)
		return;
	bdev = desc->bdev;
	bi = bdev->internal;
	if (desc->thread != keel_thread_get_current())
		KEEL_ERRLOG("bdev %s: descriptor closed on thread %s, opened on %s", bi->name,
			    keel_thread_get_current() ?
			    keel_thread_get_name(keel_thread_get_current()) : "(none)",
			    keel_thread_get_name(desc->thread));
	pthread_mutex_lock(&bi->lock);
	TAILQ_REMOVE(&bi->descs, desc, link);
	bi->open_count--;
	if (bi->claim_desc == desc) {
		bi->claim_desc = NULL;
		bi->claim_module = NULL;
	}
	last = bi->open_count == 0 && bi->state == BDEV_STATE_REMOVING && !bi->teardown_started;
	if (last)
		bi->teardown_started = true;
	pthread_mutex_unlock(&bi->lock);

	desc->closed = true;
	bdev_desc_put(desc);
	if (last)
		bdev_teardown(bdev);
}

struct keel_bdev *keel_bdev_desc_get_bdev(struct keel_bdev_desc *desc)
{
	return desc->bdev;
}

struct keel_io_channel *keel_bdev_get_io_channel(struct keel_bdev_desc *desc)
{
	struct keel_bdev_internal *bi;

	if (!desc)
		return NULL;
	bi = desc->bdev->internal;
	if (__atomic_load_n(&bi->state, __ATOMIC_RELAXED) != BDEV_STATE_REGISTERED)
		return NULL;
	return keel_get_io_channel(bi->io_dev);
}

int keel_bdev_module_claim_bdev(struct keel_bdev_desc *desc, struct keel_bdev_module *module)
{
	struct keel_bdev_internal *bi;

	if (!desc || !module)
		return -EINVAL;
	bi = desc->bdev->internal;
	pthread_mutex_lock(&bi->lock);
	if (bi->claim_module) {
		KEEL_ERRLOG("bdev %s: claim by module %s refused: already claimed by module %s",
			    bi->name, module->name, bi->claim_module->name);
		pthread_mutex_unlock(&bi->lock);
		return -EPERM;
	}
	bi->claim_module = module;
	bi->claim_desc = desc;
	desc->write = true;
	pthread_mutex_unlock(&bi->lock);
	return 0;
}

void keel_bdev_module_release_bdev(struct keel_bdev *bdev)
{
	struct keel_bdev_internal *bi = bdev->internal;

	pthread_mutex_lock(&bi->lock);
	bi->claim_module = NULL;
	bi->claim_desc = NULL;
	pthread_mutex_unlock(&bi->lock);
}

void keel_bdev_notify_resize(struct keel_bdev *bdev, uint64_t new_num_blocks)
{
	struct keel_bdev_internal *bi = bdev->internal;
	struct keel_bdev_desc *desc;

	__atomic_store_n(&bdev->num_blocks, new_num_blocks, __ATOMIC_RELAXED);
	pthread_mutex_lock(&bi->lock);
	TAILQ_FOREACH(desc, &bi->descs, link)
		bdev_send_event_locked(desc, KEEL_BDEV_EVENT_RESIZE);
	pthread_mutex_unlock(&bi->lock);
}

/* ------------------------------------------------------------------------------ */
/* Unregister (hot remove)                                                         */
/* ------------------------------------------------------------------------------ */

struct bdev_done_msg {
	keel_bdev_done_cb cb_fn;
	void *cb_arg;
	int status;
};

static void bdev_done_deliver(void *arg)
{
	struct bdev_done_msg *m = arg;

	m->cb_fn(m->cb_arg, m->status);
	free(m);
}

static void bdev_post_done(struct keel_thread *thread, keel_bdev_done_cb cb_fn, void *cb_arg,
			   int status)
{
	struct bdev_done_msg *m;

	if (!cb_fn)
		return;
	m = calloc(1, sizeof(*m));
	if (!m) {
		KEEL_ERRLOG("bdev: out of memory delivering a completion");
		return;
	}
	m->cb_fn = cb_fn;
	m->cb_arg = cb_arg;
	m->status = status;
	bdev_send_ctrl(thread, bdev_done_deliver, free, m);
}

static void bdev_unregister_finish(struct keel_bdev_internal *bi)
{
	KEEL_INFOLOG("bdev %s: unregistered", bi->name);
	bdev_post_done(bi->unreg_thread, bi->unreg_cb, bi->unreg_arg, 0);
	pthread_mutex_destroy(&bi->lock);
	free(bi);
}

static void bdev_destruct(struct keel_bdev *bdev)
{
	struct keel_bdev_internal *bi = bdev->internal;
	int rc = 0;

	/* After destruct returns 0 the module may have freed bdev: keep only bi. */
	if (bdev->fn_table->destruct)
		rc = bdev->fn_table->destruct(bdev->ctxt);
	if (rc == 1)
		return; /* keel_bdev_destruct_done() follows */
	if (rc < 0)
		KEEL_ERRLOG("bdev %s: destruct failed: %s", bi->name, strerror(-rc));
	bdev_unregister_finish(bi);
}

void keel_bdev_destruct_done(struct keel_bdev *bdev)
{
	bdev_unregister_finish(bdev->internal);
}

static void bdev_io_dev_unregistered(void *io_dev)
{
	struct keel_bdev *bdev = bdev_from_io_dev(io_dev);
	struct keel_bdev_internal *bi = bdev->internal;
	bool destruct;

	pthread_mutex_lock(&bi->lock);
	bi->io_dev_unregistered = true;
	destruct = bi->live_channels == 0 && !bi->destructing;
	if (destruct)
		bi->destructing = true;
	pthread_mutex_unlock(&bi->lock);
	if (destruct)
		bdev_destruct(bdev);
}

static void bdev_teardown(struct keel_bdev *bdev)
{
	keel_io_device_unregister(bdev->internal->io_dev, bdev_io_dev_unregistered);
}

static void bdev_remove_visit(struct keel_io_channel_iter *iter)
{
	struct bdev_channel *ch = bdev_ch(keel_io_channel_iter_get_channel(iter));
	struct keel_bdev_io_internal *in;
	struct bdev_wait *w;

	/* Requests that never reached the module fail; those in flight finish normally. */
	while ((w = TAILQ_FIRST(&ch->waitq))) {
		keel_bdev_io_cb cb_fn = w->req.cb_fn;
		void *cb_arg = w->req.cb_arg;

		TAILQ_REMOVE(&ch->waitq, w, link);
		bdev_wait_put(ch, w);
		cb_fn(cb_arg, -ENODEV);
	}
	while ((in = TAILQ_FIRST(&ch->nomem_q))) {
		TAILQ_REMOVE(&ch->nomem_q, in, link);
		in->status = -ENODEV;
		bdev_io_done(ch, in);
	}
	keel_for_each_channel_continue(iter, 0);
}

static void bdev_remove_notify(struct keel_io_channel_iter *iter, int status)
{
	struct keel_bdev *bdev = keel_io_channel_iter_get_ctx(iter);
	struct keel_bdev_internal *bi = bdev->internal;
	struct keel_bdev_desc *desc;
	bool teardown;

	pthread_mutex_lock(&bi->lock);
	TAILQ_FOREACH(desc, &bi->descs, link)
		bdev_send_event_locked(desc, KEEL_BDEV_EVENT_REMOVE);
	teardown = bi->open_count == 0 && !bi->teardown_started;
	if (teardown)
		bi->teardown_started = true;
	pthread_mutex_unlock(&bi->lock);
	if (teardown)
		bdev_teardown(bdev);
}

void keel_bdev_unregister(struct keel_bdev *bdev, keel_bdev_done_cb cb_fn, void *cb_arg)
{
	struct keel_thread *thread = keel_thread_get_current();
	struct keel_bdev_internal *bi;

	if (!bdev || !bdev->internal || !thread) {
		KEEL_ERRLOG("bdev unregister: %s", !thread ? "not on a keel thread" : "no such bdev");
		if (thread)
			bdev_post_done(thread, cb_fn, cb_arg, -ENODEV);
		return;
	}
	bi = bdev->internal;
	pthread_mutex_lock(&g_bdev_lock);
	pthread_mutex_lock(&bi->lock);
	if (bi->state != BDEV_STATE_REGISTERED) {
		pthread_mutex_unlock(&bi->lock);
		pthread_mutex_unlock(&g_bdev_lock);
		bdev_post_done(thread, cb_fn, cb_arg, -EALREADY);
		return;
	}
	__atomic_store_n(&bi->state, BDEV_STATE_REMOVING, __ATOMIC_RELAXED);
	bi->unreg_cb = cb_fn;
	bi->unreg_arg = cb_arg;
	bi->unreg_thread = thread;
	TAILQ_REMOVE(&g_bdevs, bdev, link);
	pthread_mutex_unlock(&bi->lock);
	pthread_mutex_unlock(&g_bdev_lock);
	KEEL_INFOLOG("bdev %s: unregistering", bi->name);
	keel_for_each_channel(bi->io_dev, bdev_remove_visit, bdev, bdev_remove_notify);
}

/* ------------------------------------------------------------------------------ */
/* Subsystem                                                                       */
/* ------------------------------------------------------------------------------ */

int keel_bdev_subsystem_init(keel_bdev_done_cb cb_fn, void *cb_arg)
{
	struct keel_thread *thread = keel_thread_get_current();
	struct keel_bdev_module *m;
	int rc = 0;

	if (!thread || !cb_fn)
		return -EINVAL;
	bdev_stats_init();
	if (!bdev_zero_buf())
		return -ENOMEM;
	/* The module list is fixed before init; module_init may register bdevs. */
	TAILQ_FOREACH(m, &g_modules, link) {
		if (m->module_init) {
			rc = m->module_init();
			if (rc) {
				KEEL_ERRLOG("bdev module %s: init failed: %s", m->name, strerror(-rc));
				break;
			}
		}
	}
	bdev_post_done(thread, cb_fn, cb_arg, rc);
	return 0;
}

struct bdev_fini_ctx {
	keel_bdev_done_cb cb_fn;
	void *cb_arg;
	struct keel_thread *thread;
};

static void bdev_fini_next(void *arg, int status)
{
	struct bdev_fini_ctx *ctx = arg;
	struct keel_bdev_module *m;
	struct keel_bdev *last;

	pthread_mutex_lock(&g_bdev_lock);
	last = TAILQ_LAST(&g_bdevs, keel_bdev_list_head);
	pthread_mutex_unlock(&g_bdev_lock);
	if (last) {
		/* Newest first: stacked bdevs release their bases before those go. */
		keel_bdev_unregister(last, bdev_fini_next, ctx);
		return;
	}
	TAILQ_FOREACH_REVERSE(m, &g_modules, keel_bdev_module_list_head, link) {
		if (m->module_fini)
			m->module_fini();
	}
	if (ctx->cb_fn)
		ctx->cb_fn(ctx->cb_arg, 0);
	free(ctx);
}

void keel_bdev_subsystem_fini(keel_bdev_done_cb cb_fn, void *cb_arg)
{
	struct keel_thread *thread = keel_thread_get_current();
	struct bdev_fini_ctx *ctx = calloc(1, sizeof(*ctx));

	if (!ctx || !thread) {
		KEEL_ERRLOG("bdev subsystem fini: %s", !thread ? "not on a keel thread" : "out of memory");
		free(ctx);
		if (thread && cb_fn)
			bdev_post_done(thread, cb_fn, cb_arg, -ENOMEM);
		return;
	}
	ctx->cb_fn = cb_fn;
	ctx->cb_arg = cb_arg;
	ctx->thread = thread;
	/* Start from a message so cb_fn never runs inside this call. */
	bdev_post_done(thread, bdev_fini_next, ctx, 0);
}
