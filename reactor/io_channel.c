/*
 * I/O devices and per-thread I/O channels.
 *
 * The device registry and each device's list of channels (its "holders") are
 * guarded by one mutex: they change when channels are created or destroyed, never
 * per I/O. A thread's own channel list is owner-only, so getting an existing channel
 * is lock-free. Iterations over holders send each hop while holding the mutex: a
 * holder's thread cannot be destroyed while its channel is still listed, so the
 * target stays valid for the send.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reactor_internal.h"

struct io_device {
	void *io_device;
	keel_io_channel_create_cb create_cb;
	keel_io_channel_destroy_cb destroy_cb;
	uint32_t ctx_size;
	char name[KEEL_NAME_MAX];
	/* Read lock-free by channel owners, written under the lock. */
	_Atomic bool unregistering;
	bool finalizing;
	keel_io_device_unregister_cb unregister_cb;
	struct keel_thread *unregister_thread;
	uint32_t channel_count;
	uint32_t for_each_count;
	struct io_channel_list holders;
	TAILQ_ENTRY(io_device) link;
};

struct keel_io_channel {
	struct keel_thread *thread;
	struct io_device *dev;
	uint32_t ref;
	bool destroy_pending;
	struct thread_retry retry;
	TAILQ_ENTRY(keel_io_channel) tlink; /* thread->channels, owner only */
	TAILQ_ENTRY(keel_io_channel) dlink; /* dev->holders, under g_dev_lock */
	/* Module context follows, 16-byte aligned for SIMD-friendly contexts. */
	uint8_t ctx[] __attribute__((aligned(16)));
};

struct keel_io_channel_iter {
	void *io_device;
	struct io_device *dev;
	keel_channel_msg_fn fn;
	void *ctx;
	keel_channel_for_each_cpl cpl;
	struct keel_thread *orig;
	uint64_t last_id;
	struct keel_io_channel *ch;
	int status;
	struct thread_retry retry;
};

static pthread_mutex_t g_dev_lock = PTHREAD_MUTEX_INITIALIZER;
static TAILQ_HEAD(, io_device) g_devices = TAILQ_HEAD_INITIALIZER(g_devices);

/* Under g_dev_lock. Prefers the live registration of a pointer over one unregistering. */
static struct io_device *io_device_find_locked(void *io_device, bool include_unregistering)
{
	struct io_device *dev, *old = NULL;

	TAILQ_FOREACH(dev, &g_devices, link) {
		if (dev->io_device != io_device) {
			continue;
		}
		if (!atomic_load_explicit(&dev->unregistering, memory_order_relaxed)) {
			return dev;
		}
		old = dev;
	}
	return include_unregistering ? old : NULL;
}

int keel_io_device_register(void *io_device, keel_io_channel_create_cb create_cb,
			    keel_io_channel_destroy_cb destroy_cb, uint32_t ctx_size,
			    const char *name)
{
	struct io_device *dev;

	if (io_device == NULL) {
		return -EINVAL;
	}
	dev = calloc(1, sizeof(*dev));
	if (dev == NULL) {
		return -ENOMEM;
	}
	dev->io_device = io_device;
	dev->create_cb = create_cb;
	dev->destroy_cb = destroy_cb;
	dev->ctx_size = ctx_size;
	snprintf(dev->name, sizeof(dev->name), "%s", name ? name : "io_device");
	TAILQ_INIT(&dev->holders);

	pthread_mutex_lock(&g_dev_lock);
	if (io_device_find_locked(io_device, false) != NULL) {
		pthread_mutex_unlock(&g_dev_lock);
		free(dev);
		return -EEXIST;
	}
	TAILQ_INSERT_TAIL(&g_devices, dev, link);
	pthread_mutex_unlock(&g_dev_lock);
	return 0;
}

static void io_device_unregister_done(void *arg)
{
	struct io_device *dev = arg;
	struct keel_thread *thread = dev->unregister_thread;

	if (dev->unregister_cb != NULL) {
		dev->unregister_cb(dev->io_device);
	}
	thread->pending_unregister--;
	free(dev);
}

/* Under g_dev_lock: finish an unregister once nothing refers to the device. */
static void io_device_maybe_finalize_locked(struct io_device *dev)
{
	if (!atomic_load_explicit(&dev->unregistering, memory_order_relaxed) || dev->finalizing ||
	    dev->channel_count != 0 || dev->for_each_count != 0) {
		return;
	}
	dev->finalizing = true;
	TAILQ_REMOVE(&g_devices, dev, link);
	if (keel_thread_send_msg_reliable(dev->unregister_thread, io_device_unregister_done, dev,
					  NULL) != 0) {
		KEEL_ERRLOG("io_device %s: unregistering thread is gone, no callback", dev->name);
		free(dev);
	}
}

void keel_io_device_unregister(void *io_device, keel_io_device_unregister_cb unregister_cb)
{
	struct keel_thread *thread = krt_thread_tls_current;
	struct io_device *dev;

	assert(thread != NULL);
	if (thread == NULL) {
		KEEL_ERRLOG("io_device %p: unregister outside a keel thread", io_device);
		return;
	}
	pthread_mutex_lock(&g_dev_lock);
	dev = io_device_find_locked(io_device, false);
	if (dev == NULL) {
		pthread_mutex_unlock(&g_dev_lock);
		KEEL_ERRLOG("io_device %p: unregister of an unknown device", io_device);
		return;
	}
	dev->unregister_cb = unregister_cb;
	dev->unregister_thread = thread;
	thread->pending_unregister++;
	atomic_store_explicit(&dev->unregistering, true, memory_order_relaxed);
	io_device_maybe_finalize_locked(dev);
	pthread_mutex_unlock(&g_dev_lock);
}

/* ------------------------------------------------------------------------------ */
/* Channels                                                                        */
/* ------------------------------------------------------------------------------ */

/* Unlink from the holders; the channel memory is the caller's to free. */
static void io_channel_unlink(struct keel_io_channel *ch)
{
	struct io_device *dev = ch->dev;

	pthread_mutex_lock(&g_dev_lock);
	TAILQ_REMOVE(&dev->holders, ch, dlink);
	dev->channel_count--;
	io_device_maybe_finalize_locked(dev);
	pthread_mutex_unlock(&g_dev_lock);
}

struct keel_io_channel *keel_get_io_channel(void *io_device)
{
	struct keel_thread *thread = krt_thread_tls_current;
	struct keel_io_channel *ch;
	struct io_device *dev;
	int rc;

	if (thread == NULL) {
		KEEL_ERRLOG("io_device %p: get_io_channel outside a keel thread", io_device);
		return NULL;
	}
	TAILQ_FOREACH(ch, &thread->channels, tlink) {
		if (ch->dev->io_device == io_device &&
		    !atomic_load_explicit(&ch->dev->unregistering, memory_order_relaxed)) {
			/* Also revives a channel whose deferred destroy has not run yet. */
			ch->ref++;
			return ch;
		}
	}

	pthread_mutex_lock(&g_dev_lock);
	dev = io_device_find_locked(io_device, false);
	if (dev == NULL) {
		pthread_mutex_unlock(&g_dev_lock);
		return NULL;
	}
	ch = calloc(1, sizeof(*ch) + dev->ctx_size);
	if (ch == NULL) {
		pthread_mutex_unlock(&g_dev_lock);
		return NULL;
	}
	ch->thread = thread;
	ch->dev = dev;
	ch->ref = 1;
	TAILQ_INSERT_TAIL(&dev->holders, ch, dlink);
	dev->channel_count++;
	pthread_mutex_unlock(&g_dev_lock);

	TAILQ_INSERT_TAIL(&thread->channels, ch, tlink);
	thread->channel_count++;
	/* Outside the lock: create_cb typically gets channels to other devices. */
	rc = dev->create_cb != NULL ? dev->create_cb(io_device, ch->ctx) : 0;
	if (rc != 0) {
		KEEL_DEBUGLOG("io_device %s: channel create failed: %d", dev->name, rc);
		TAILQ_REMOVE(&thread->channels, ch, tlink);
		thread->channel_count--;
		io_channel_unlink(ch);
		free(ch);
		return NULL;
	}
	return ch;
}

static void io_channel_destroy(struct keel_io_channel *ch)
{
	struct keel_thread *thread = ch->thread;

	TAILQ_REMOVE(&thread->channels, ch, tlink);
	thread->channel_count--;
	if (ch->dev->destroy_cb != NULL) {
		ch->dev->destroy_cb(ch->dev->io_device, ch->ctx);
	}
	io_channel_unlink(ch);
	free(ch);
}

static void io_channel_put_deferred(void *arg)
{
	struct keel_io_channel *ch = arg;

	ch->destroy_pending = false;
	if (ch->ref > 0) {
		return; /* revived by a get since the put */
	}
	io_channel_destroy(ch);
}

static void io_channel_put_retry(void *arg)
{
	struct keel_io_channel *ch = arg;
	int rc = keel_thread_send_msg(ch->thread, io_channel_put_deferred, ch);

	if (rc == -ENOMEM) {
		krt_thread_retry_queue(&ch->retry);
	} else if (rc != 0) {
		io_channel_put_deferred(ch);
	}
}

void keel_put_io_channel(struct keel_io_channel *ch)
{
	assert(ch->thread == krt_thread_tls_current);
	assert(ch->ref > 0);
	if (ch->ref == 0 || --ch->ref > 0 || ch->destroy_pending) {
		return;
	}
	/* Deferred so a get later in this iteration revives it instead of recreating. */
	ch->destroy_pending = true;
	ch->retry.fn = io_channel_put_retry;
	ch->retry.arg = ch;
	io_channel_put_retry(ch);
}

void *keel_io_channel_get_ctx(struct keel_io_channel *ch)
{
	return ch->ctx;
}

struct keel_io_channel *keel_io_channel_from_ctx(void *ctx)
{
	return (struct keel_io_channel *)((uint8_t *)ctx - offsetof(struct keel_io_channel, ctx));
}

struct keel_thread *keel_io_channel_get_thread(struct keel_io_channel *ch)
{
	return ch->thread;
}

void *keel_io_channel_get_io_device(struct keel_io_channel *ch)
{
	return ch->dev->io_device;
}

void krt_io_channel_thread_teardown(struct keel_thread *thread)
{
	struct keel_io_channel *ch;

	/* destroy_cb may put other channels of this thread: always restart at the head. */
	while ((ch = TAILQ_FIRST(&thread->channels)) != NULL) {
		ch->ref = 0;
		io_channel_destroy(ch);
	}
}

void krt_io_channel_thread_describe(struct keel_thread *thread, char *buf, size_t len)
{
	struct keel_io_channel *ch;
	size_t off = 0;

	buf[0] = '\0';
	TAILQ_FOREACH(ch, &thread->channels, tlink) {
		int n = snprintf(buf + off, len - off, "%s%s(ref %u)", off ? ", " : "",
				 ch->dev->name, ch->ref);

		if (n < 0 || (size_t)n >= len - off) {
			break;
		}
		off += (size_t)n;
	}
}

void krt_io_device_lib_fini(void)
{
	struct io_device *dev;

	pthread_mutex_lock(&g_dev_lock);
	while ((dev = TAILQ_FIRST(&g_devices)) != NULL) {
		TAILQ_REMOVE(&g_devices, dev, link);
		if (!atomic_load_explicit(&dev->unregistering, memory_order_relaxed)) {
			KEEL_WARNLOG("io_device %s: still registered at thread library fini",
				     dev->name);
		}
		free(dev);
	}
	pthread_mutex_unlock(&g_dev_lock);
}

/* ------------------------------------------------------------------------------ */
/* for_each_channel                                                                */
/* ------------------------------------------------------------------------------ */

static void channel_iter_done(void *arg)
{
	struct keel_io_channel_iter *it = arg;

	it->cpl(it, it->status);
	if (it->dev != NULL) {
		pthread_mutex_lock(&g_dev_lock);
		it->dev->for_each_count--;
		io_device_maybe_finalize_locked(it->dev);
		pthread_mutex_unlock(&g_dev_lock);
	}
	it->orig->for_each_count--;
	free(it);
}

static void channel_iter_finish(struct keel_io_channel_iter *it)
{
	if (keel_thread_send_msg_reliable(it->orig, channel_iter_done, it, NULL) != 0) {
		KEEL_ERRLOG("io_device %p: for_each_channel origin thread is gone", it->io_device);
	}
}

static void channel_iter_hop(void *arg);

/* Send the walk to the holder with the next higher thread id, or finish. */
static void channel_iter_next(void *arg)
{
	struct keel_io_channel_iter *it = arg;

	pthread_mutex_lock(&g_dev_lock);
	for (;;) {
		struct keel_io_channel *ch, *next = NULL;
		int rc;

		TAILQ_FOREACH(ch, &it->dev->holders, dlink) {
			if (ch->thread->id > it->last_id &&
			    (next == NULL || ch->thread->id < next->thread->id)) {
				next = ch;
			}
		}
		if (next == NULL) {
			break;
		}
		rc = keel_thread_send_msg(next->thread, channel_iter_hop, it);
		if (rc == 0) {
			it->last_id = next->thread->id;
			pthread_mutex_unlock(&g_dev_lock);
			return;
		}
		if (rc == -ENOMEM) {
			pthread_mutex_unlock(&g_dev_lock);
			krt_thread_retry_queue(&it->retry);
			return;
		}
		/* The holder is being destroyed: skip it. */
		it->last_id = next->thread->id;
	}
	pthread_mutex_unlock(&g_dev_lock);
	channel_iter_finish(it);
}

static void channel_iter_hop(void *arg)
{
	struct keel_io_channel_iter *it = arg;
	struct keel_thread *thread = krt_thread_tls_current;
	struct keel_io_channel *ch;

	TAILQ_FOREACH(ch, &thread->channels, tlink) {
		if (ch->dev == it->dev) {
			it->ch = ch;
			it->fn(it);
			return;
		}
	}
	/* The channel went away before our turn. */
	channel_iter_next(it);
}

void keel_for_each_channel_continue(struct keel_io_channel_iter *it, int status)
{
	assert(it->ch == NULL || it->ch->thread == krt_thread_tls_current);
	it->ch = NULL;
	it->status = status;
	if (status != 0) {
		channel_iter_finish(it);
	} else {
		channel_iter_next(it);
	}
}

void keel_for_each_channel(void *io_device, keel_channel_msg_fn fn, void *ctx,
			   keel_channel_for_each_cpl cpl)
{
	struct keel_thread *orig = krt_thread_tls_current;
	struct keel_io_channel_iter *it;

	assert(orig != NULL);
	if (orig == NULL) {
		KEEL_ERRLOG("io_device %p: for_each_channel outside a keel thread", io_device);
		return;
	}
	it = calloc(1, sizeof(*it));
	if (it == NULL) {
		KEEL_ERRLOG("io_device %p: for_each_channel: out of memory", io_device);
		return;
	}
	it->io_device = io_device;
	it->fn = fn;
	it->ctx = ctx;
	it->cpl = cpl;
	it->orig = orig;
	it->retry.fn = channel_iter_next;
	it->retry.arg = it;
	orig->for_each_count++;

	pthread_mutex_lock(&g_dev_lock);
	it->dev = io_device_find_locked(io_device, true);
	if (it->dev != NULL) {
		it->dev->for_each_count++;
	}
	pthread_mutex_unlock(&g_dev_lock);
	if (it->dev == NULL) {
		KEEL_DEBUGLOG("io_device %p: for_each_channel on an unknown device", io_device);
		channel_iter_finish(it);
		return;
	}
	channel_iter_next(it);
}

void *keel_io_channel_iter_get_ctx(struct keel_io_channel_iter *it)
{
	return it->ctx;
}

struct keel_io_channel *keel_io_channel_iter_get_channel(struct keel_io_channel_iter *it)
{
	return it->ch;
}

void *keel_io_channel_iter_get_io_device(struct keel_io_channel_iter *it)
{
	return it->io_device;
}
