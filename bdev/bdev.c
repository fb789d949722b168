/*
 * bdev core, control plane: options, modules, the registry and lookups,
 * registration, descriptors, claims and events, unregister (hot remove), subsystem
 * init and fini. The request path is in bdev_io.c, the lanes (splitting,
 * write_zeroes emulation) in bdev_split.c, bounce buffers in bdev_bounce.c and
 * statistics in bdev_stats.c; bdev_internal.h declares what they share.
 */
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "keel/log.h"
#include "bdev_internal.h"

/* ------------------------------------------------------------------------------ */
/* Globals                                                                         */
/* ------------------------------------------------------------------------------ */

static pthread_mutex_t g_bdev_lock = PTHREAD_MUTEX_INITIALIZER; /* registry + modules */
static TAILQ_HEAD(keel_bdev_list_head, keel_bdev) g_bdevs = TAILQ_HEAD_INITIALIZER(g_bdevs);
static TAILQ_HEAD(keel_bdev_module_list_head,
		  keel_bdev_module) g_modules = TAILQ_HEAD_INITIALIZER(g_modules);

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
	[KEEL_BDEV_IO_GET_ALLOCATION] = "get_allocation",
};

const char *keel_bdev_io_type_name(enum keel_bdev_io_type type)
{
	if ((unsigned)type >= KEEL_BDEV_IO_NUM_TYPES) {
		return "unknown";
	}
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
	    (opts->bounce_buf_size & (opts->bounce_buf_size - 1))) {
		return -EINVAL;
	}
	pthread_mutex_lock(&g_bdev_lock);
	g_opts = *opts;
	pthread_mutex_unlock(&g_bdev_lock);
	return 0;
}

/* ------------------------------------------------------------------------------ */
/* Control-plane messages that must not get lost                                   */
/* ------------------------------------------------------------------------------ */

/* fn(arg) runs on \p thread, or drop_fn(arg) here when it never can (the thread
 * is gone): the sender releases what the message held. */
static void bdev_send_ctrl(struct keel_thread *thread, keel_msg_fn fn, keel_msg_fn drop_fn,
			   void *arg)
{
	int rc = keel_thread_send_msg_reliable(thread, fn, arg, drop_fn);

	if (rc != 0) {
		KEEL_ERRLOG("bdev: control message to thread %s lost: %s",
			    keel_thread_get_name(thread), strerror(-rc));
		drop_fn(arg);
	}
}

/* ------------------------------------------------------------------------------ */
/* Modules                                                                         */
/* ------------------------------------------------------------------------------ */

void keel_bdev_module_register(struct keel_bdev_module *module)
{
	struct keel_bdev_module *m;

	pthread_mutex_lock(&g_bdev_lock);
	TAILQ_FOREACH(m, &g_modules, link) {
		if (m == module) {
			break;
		}
	}
	if (!m) {
		TAILQ_INSERT_TAIL(&g_modules, module, link);
	}
	pthread_mutex_unlock(&g_bdev_lock);
}

/* ------------------------------------------------------------------------------ */
/* Lookup and properties                                                           */
/* ------------------------------------------------------------------------------ */

static struct keel_bdev *bdev_find_locked(const char *name)
{
	struct keel_bdev *b;

	TAILQ_FOREACH(b, &g_bdevs, link) {
		if (strcmp(b->internal->name, name) == 0) {
			return b;
		}
	}
	return NULL;
}

struct keel_bdev *keel_bdev_get_by_name(const char *name)
{
	struct keel_bdev *b;

	if (!name) {
		return NULL;
	}
	pthread_mutex_lock(&g_bdev_lock);
	b = bdev_find_locked(name);
	pthread_mutex_unlock(&g_bdev_lock);
	return b;
}

struct keel_bdev *keel_bdev_get_by_uuid(const char *uuid)
{
	struct keel_bdev *b;

	if (!uuid) {
		return NULL;
	}
	pthread_mutex_lock(&g_bdev_lock);
	TAILQ_FOREACH(b, &g_bdevs, link) {
		if (strcasecmp(b->internal->uuid_str, uuid) == 0) {
			break;
		}
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

	if (!prev) {
		return keel_bdev_first();
	}
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
	case KEEL_BDEV_IO_GET_ALLOCATION:
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

	if (!bdev || !obj) {
		return -EINVAL;
	}
	types = json_array();
	drv = json_object();
	if (!types || !drv) {
		rc = -ENOMEM;
		goto out_put;
	}
	for (int t = 0; t < KEEL_BDEV_IO_NUM_TYPES; t++) {
		if (keel_bdev_io_type_supported(bdev, t)) {
			json_array_append_new(types, json_string(keel_bdev_io_type_name(t)));
		}
	}
	owner = keel_bdev_get_claim_owner(bdev);
	json_object_set_new(obj, "name", json_string(keel_bdev_get_name(bdev)));
	json_object_set_new(obj, "uuid", json_string(keel_bdev_get_uuid_str(bdev)));
	json_object_set_new(obj, "module", json_string(keel_bdev_get_module_name(bdev)));
	json_object_set_new(obj, "product_name",
			    json_string(bdev->product_name ? bdev->product_name : ""));
	json_object_set_new(obj, "block_size", json_integer(bdev->block_size));
	json_object_set_new(obj, "num_blocks",
			    json_integer((json_int_t)keel_bdev_get_num_blocks(bdev)));
	json_object_set_new(obj, "required_alignment", json_integer(keel_bdev_get_buf_align(bdev)));
	json_object_set_new(obj, "optimal_io_boundary", json_integer(bdev->optimal_io_boundary));
	json_object_set_new(obj, "max_transfer_blocks", json_integer(bdev->max_transfer_blocks));
	json_object_set_new(obj, "write_cache", json_boolean(bdev->write_cache));
	json_object_set_new(obj, "multi_conn_safe", json_boolean(bdev->multi_conn_safe));
	json_object_set_new(obj, "claimed_by", owner ? json_string(owner) : json_null());
	json_object_set_new(obj, "supported_io_types", types);
	types = NULL;
	if (bdev->fn_table->dump_info_json) {
		bdev->fn_table->dump_info_json(bdev->ctxt, drv);
	}
	json_object_set_new(obj, "driver_specific", drv);
	return 0;

out_put:
	json_decref(types);
	json_decref(drv);
	return rc;
}

/* ------------------------------------------------------------------------------ */
/* Registration                                                                    */
/* ------------------------------------------------------------------------------ */

static bool bdev_name_valid(const char *name)
{
	size_t len;

	if (!name) {
		return false;
	}
	len = strlen(name);
	if (len == 0 || len > KEEL_BDEV_NAME_MAX) {
		return false;
	}
	for (size_t i = 0; i < len; i++) {
		if (name[i] == '/' || isspace((unsigned char)name[i]) ||
		    !isprint((unsigned char)name[i])) {
			return false;
		}
	}
	return true;
}

static keel_bdev_registry_fn g_registry_fn;
static void *g_registry_ctx;

void keel_bdev_set_registry_listener(keel_bdev_registry_fn fn, void *ctx)
{
	g_registry_fn = fn;
	g_registry_ctx = ctx;
}

static void bdev_registry_changed(void)
{
	if (g_registry_fn != NULL) {
		g_registry_fn(g_registry_ctx);
	}
}

int keel_bdev_register(struct keel_bdev *bdev)
{
	struct keel_bdev_internal *bi;
	struct keel_bdev *b;
	uint32_t ctx_size = 0;
	size_t elt;
	int rc;

	if (!bdev || !bdev->fn_table || !bdev->fn_table->submit_request ||
	    !bdev->fn_table->get_io_channel || !bdev->module) {
		return -EINVAL;
	}
	if (!bdev_name_valid(bdev->name)) {
		KEEL_ERRLOG("bdev register: invalid name '%s' (1..%d printable characters, no '/' "
			    "or whitespace)",
			    bdev->name ? bdev->name : "(null)", KEEL_BDEV_NAME_MAX);
		return -EINVAL;
	}
	if (bdev->block_size < 512 || (bdev->block_size & (bdev->block_size - 1)) ||
	    bdev->num_blocks == 0 || bdev->required_alignment > BDEV_MAX_ALIGN ||
	    (bdev->required_alignment > 1 &&
	     (bdev->required_alignment & (bdev->required_alignment - 1)))) {
		KEEL_ERRLOG(
			"bdev %s: invalid geometry: block_size %u, num_blocks %lu, alignment %u",
			bdev->name, bdev->block_size, (unsigned long)bdev->num_blocks,
			bdev->required_alignment);
		return -EINVAL;
	}
	bdev_stats_init();
	(void)bdev_zero_buf(); /* now, not on a reactor at the first emulated write */

	bi = calloc(1, sizeof(*bi));
	if (!bi) {
		return -ENOMEM;
	}
	snprintf(bi->name, sizeof(bi->name), "%s", bdev->name);
	if (keel_uuid_is_null(bdev->uuid)) {
		keel_uuid_generate(bdev->uuid);
	}
	keel_uuid_fmt(bdev->uuid, bi->uuid_str);
	bi->io_dev = (char *)bdev + 1;
	bi->block_shift = (uint32_t)__builtin_ctz(bdev->block_size);
	bi->block_mask = bdev->block_size - 1;
	bi->align_mask = bdev->required_alignment > 1 ? bdev->required_alignment - 1 : 0;
	bi->len_mask = bi->align_mask < bi->block_mask ? bi->align_mask : (uint32_t)bi->block_mask;
	bi->simple = !bdev->optimal_io_boundary && !bdev->max_transfer_blocks && !bi->align_mask;
	for (int t = 0; t < KEEL_BDEV_IO_NUM_TYPES; t++) {
		if (bdev->fn_table->io_type_supported) {
			bi->native[t] = bdev->fn_table->io_type_supported(bdev->ctxt, t);
		} else {
			bi->native[t] = t == KEEL_BDEV_IO_READ || t == KEEL_BDEV_IO_WRITE;
		}
	}
	if (bdev->module->get_ctx_size) {
		ctx_size = bdev->module->get_ctx_size();
	}
	elt = sizeof(struct keel_bdev_io_internal) + sizeof(struct keel_bdev_io) + ctx_size;
	bi->io_elt_size = (uint32_t)((elt + 63) & ~(size_t)63);
	pthread_mutex_init(&bi->lock, NULL);
	TAILQ_INIT(&bi->descs);
	bi->state = BDEV_STATE_REGISTERED;
	bdev->internal = bi;

	pthread_mutex_lock(&g_bdev_lock);
	TAILQ_FOREACH(b, &g_bdevs, link) {
		if (strcmp(b->internal->name, bi->name) == 0 ||
		    memcmp(b->uuid, bdev->uuid, 16) == 0) {
			break;
		}
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
	if (rc) {
		goto out_unlock;
	}
	TAILQ_INSERT_TAIL(&g_bdevs, bdev, link);
	pthread_mutex_unlock(&g_bdev_lock);
	KEEL_INFOLOG("bdev %s: registered (%s, %lu blocks of %u bytes, uuid %s)", bi->name,
		     keel_bdev_get_module_name(bdev), (unsigned long)bdev->num_blocks,
		     bdev->block_size, bi->uuid_str);
	bdev_registry_changed();
	return 0;

out_unlock:
	pthread_mutex_unlock(&g_bdev_lock);
	pthread_mutex_destroy(&bi->lock);
	bdev->internal = NULL;
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
	if (__atomic_sub_fetch(&desc->refs, 1, __ATOMIC_ACQ_REL) == 0) {
		free(desc);
	}
}

static void bdev_event_deliver(void *arg)
{
	struct bdev_event_msg *m = arg;
	struct keel_bdev_desc *desc = m->desc;

	if (!desc->closed) {
		desc->event_cb(m->type, desc->bdev, desc->event_ctx);
	}
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

	if (!name || !event_cb || !desc_out || !thread) {
		return -EINVAL;
	}
	desc = calloc(1, sizeof(*desc));
	if (!desc) {
		return -ENOMEM;
	}

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

	if (!desc) {
		return;
	}
	bdev = desc->bdev;
	bi = bdev->internal;
	if (desc->thread != keel_thread_get_current()) {
		KEEL_ERRLOG("bdev %s: descriptor closed on thread %s, opened on %s", bi->name,
			    keel_thread_get_current()
				    ? keel_thread_get_name(keel_thread_get_current())
				    : "(none)",
			    keel_thread_get_name(desc->thread));
	}
	pthread_mutex_lock(&bi->lock);
	TAILQ_REMOVE(&bi->descs, desc, link);
	bi->open_count--;
	if (bi->claim_desc == desc) {
		bi->claim_desc = NULL;
		bi->claim_module = NULL;
	}
	last = bi->open_count == 0 && bi->state == BDEV_STATE_REMOVING && !bi->teardown_started;
	if (last) {
		bi->teardown_started = true;
	}
	pthread_mutex_unlock(&bi->lock);

	desc->closed = true;
	bdev_desc_put(desc);
	if (last) {
		bdev_teardown(bdev);
	}
}

struct keel_bdev *keel_bdev_desc_get_bdev(struct keel_bdev_desc *desc)
{
	return desc->bdev;
}

struct keel_io_channel *keel_bdev_get_io_channel(struct keel_bdev_desc *desc)
{
	struct keel_bdev_internal *bi;

	if (!desc) {
		return NULL;
	}
	bi = desc->bdev->internal;
	if (__atomic_load_n(&bi->state, __ATOMIC_RELAXED) != BDEV_STATE_REGISTERED) {
		return NULL;
	}
	return keel_get_io_channel(bi->io_dev);
}

int keel_bdev_module_claim_bdev(struct keel_bdev_desc *desc, struct keel_bdev_module *module)
{
	struct keel_bdev_internal *bi;

	if (!desc || !module) {
		return -EINVAL;
	}
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
	TAILQ_FOREACH(desc, &bi->descs, link) {
		bdev_send_event_locked(desc, KEEL_BDEV_EVENT_RESIZE);
	}
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

	if (!cb_fn) {
		return;
	}
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

void bdev_destruct(struct keel_bdev *bdev)
{
	struct keel_bdev_internal *bi = bdev->internal;
	int rc = 0;

	/* After destruct returns 0 the module may have freed bdev: keep only bi. */
	if (bdev->fn_table->destruct) {
		rc = bdev->fn_table->destruct(bdev->ctxt);
	}
	if (rc == 1) {
		return; /* keel_bdev_destruct_done() follows */
	}
	if (rc < 0) {
		KEEL_ERRLOG("bdev %s: destruct failed: %s", bi->name, strerror(-rc));
	}
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
	if (destruct) {
		bi->destructing = true;
	}
	pthread_mutex_unlock(&bi->lock);
	if (destruct) {
		bdev_destruct(bdev);
	}
}

static void bdev_teardown(struct keel_bdev *bdev)
{
	keel_io_device_unregister(bdev->internal->io_dev, bdev_io_dev_unregistered);
}

static void bdev_remove_visit(struct keel_io_channel_iter *iter)
{
	bdev_channel_fail_queued(bdev_ch(keel_io_channel_iter_get_channel(iter)), -ENODEV);
	keel_for_each_channel_continue(iter, 0);
}

static void bdev_remove_notify(struct keel_io_channel_iter *iter, int status)
{
	struct keel_bdev *bdev = keel_io_channel_iter_get_ctx(iter);
	struct keel_bdev_internal *bi = bdev->internal;
	struct keel_bdev_desc *desc;
	bool teardown;

	pthread_mutex_lock(&bi->lock);
	TAILQ_FOREACH(desc, &bi->descs, link) {
		bdev_send_event_locked(desc, KEEL_BDEV_EVENT_REMOVE);
	}
	teardown = bi->open_count == 0 && !bi->teardown_started;
	if (teardown) {
		bi->teardown_started = true;
	}
	pthread_mutex_unlock(&bi->lock);
	if (teardown) {
		bdev_teardown(bdev);
	}
}

void keel_bdev_unregister(struct keel_bdev *bdev, keel_bdev_done_cb cb_fn, void *cb_arg)
{
	struct keel_thread *thread = keel_thread_get_current();
	struct keel_bdev_internal *bi;

	if (!bdev || !bdev->internal || !thread) {
		KEEL_ERRLOG("bdev unregister: %s",
			    !thread ? "not on a keel thread" : "no such bdev");
		if (thread) {
			bdev_post_done(thread, cb_fn, cb_arg, -ENODEV);
		}
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
	bdev_registry_changed();
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

	if (!thread || !cb_fn) {
		return -EINVAL;
	}
	bdev_stats_init();
	if (!bdev_zero_buf()) {
		return -ENOMEM;
	}
	/* The module list is fixed before init; module_init may register bdevs. */
	TAILQ_FOREACH(m, &g_modules, link) {
		if (m->module_init) {
			rc = m->module_init();
			if (rc) {
				KEEL_ERRLOG("bdev module %s: init failed: %s", m->name,
					    strerror(-rc));
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
		if (m->module_fini) {
			m->module_fini();
		}
	}
	if (ctx->cb_fn) {
		ctx->cb_fn(ctx->cb_arg, 0);
	}
	free(ctx);
}

void keel_bdev_subsystem_fini(keel_bdev_done_cb cb_fn, void *cb_arg)
{
	struct keel_thread *thread = keel_thread_get_current();
	struct bdev_fini_ctx *ctx = calloc(1, sizeof(*ctx));

	if (!ctx || !thread) {
		KEEL_ERRLOG("bdev subsystem fini: %s",
			    !thread ? "not on a keel thread" : "out of memory");
		free(ctx);
		if (thread && cb_fn) {
			bdev_post_done(thread, cb_fn, cb_arg, -ENOMEM);
		}
		return;
	}
	ctx->cb_fn = cb_fn;
	ctx->cb_arg = cb_arg;
	ctx->thread = thread;
	/* Start from a message so cb_fn never runs inside this call. */
	bdev_post_done(thread, bdev_fini_next, ctx, 0);
}
