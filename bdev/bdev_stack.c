/*
 * The plumbing of a bdev stacked on a claimed base (bdev_stack.h), shared by the
 * error and vcache modules so both go away with their base and close it where it
 * was opened.
 */
#include <errno.h>
#include <string.h>

#include "keel/log.h"

#include "bdev_stack.h"

static void bdev_stack_unregistered(void *cb_arg, int status)
{
}

static void bdev_stack_base_event(enum keel_bdev_event_type type, struct keel_bdev *base, void *ctx)
{
	struct bdev_stack *st = ctx;

	if (type != KEEL_BDEV_EVENT_REMOVE ||
	    __atomic_exchange_n(&st->removing, true, __ATOMIC_ACQ_REL)) {
		return;
	}
	/* Base going away: so do we; destruct then closes the base desc. */
	KEEL_NOTICELOG("%s bdev %s: base %s is being removed", st->self->module->name,
		       st->self->name, keel_bdev_get_name(base));
	keel_bdev_unregister(st->self, bdev_stack_unregistered, NULL);
}

int bdev_stack_open(struct bdev_stack *st, struct keel_bdev *self, const char *base_name,
		    void *io_device, keel_io_device_unregister_cb unregistered)
{
	struct keel_bdev *base;
	int rc;

	st->self = self;
	st->io_device = io_device;
	st->unregistered = unregistered;
	st->base_thread = keel_thread_get_current();
	rc = keel_bdev_open_ext(base_name, true, bdev_stack_base_event, st, &st->base_desc);
	if (rc) {
		KEEL_ERRLOG("%s bdev %s: cannot open base %s: %s", self->module->name, self->name,
			    base_name, strerror(-rc));
		return rc;
	}
	rc = keel_bdev_module_claim_bdev(st->base_desc, self->module);
	if (rc) {
		keel_bdev_close(st->base_desc);
		return rc;
	}
	base = keel_bdev_desc_get_bdev(st->base_desc);
	self->block_size = keel_bdev_get_block_size(base);
	self->num_blocks = keel_bdev_get_num_blocks(base);
	self->required_alignment = keel_bdev_get_buf_align(base);
	self->multi_conn_safe = keel_bdev_is_multi_conn_safe(base);
	return 0;
}

int bdev_stack_register(struct bdev_stack *st, keel_io_channel_create_cb create_cb,
			keel_io_channel_destroy_cb destroy_cb, uint32_t ctx_size,
			keel_io_device_unregister_cb undo)
{
	int rc = keel_io_device_register(st->io_device, create_cb, destroy_cb, ctx_size,
					 st->self->name);

	if (rc) {
		bdev_stack_close(st);
		undo(st->io_device);
		return rc;
	}
	rc = keel_bdev_register(st->self);
	if (rc) {
		bdev_stack_close(st);
		/* The reactor knows the io_device until the unregister completes. */
		keel_io_device_unregister(st->io_device, undo);
	}
	return rc;
}

void bdev_stack_close(struct bdev_stack *st)
{
	keel_bdev_module_release_bdev(keel_bdev_desc_get_bdev(st->base_desc));
	keel_bdev_close(st->base_desc);
}

struct keel_bdev *bdev_stack_base(struct bdev_stack *st)
{
	return keel_bdev_desc_get_bdev(st->base_desc);
}

/* On base_thread: the base desc must be closed where it was opened. */
static void bdev_stack_release(void *arg)
{
	struct bdev_stack *st = arg;

	bdev_stack_close(st);
	keel_io_device_unregister(st->io_device, st->unregistered);
}

int bdev_stack_destruct(struct bdev_stack *st)
{
	int rc = keel_thread_send_msg(st->base_thread, bdev_stack_release, st);

	if (rc) {
		if (keel_thread_get_current() == st->base_thread) {
			bdev_stack_release(st);
			return 1;
		}
		KEEL_ERRLOG("%s bdev %s: cannot reach thread %s to close the base: %s",
			    st->self->module->name, st->self->name,
			    keel_thread_get_name(st->base_thread), strerror(-rc));
		return -EIO;
	}
	return 1;
}

void bdev_stack_delete(struct bdev_stack *st, keel_bdev_done_cb cb_fn, void *cb_arg)
{
	__atomic_store_n(&st->removing, true, __ATOMIC_RELEASE);
	keel_bdev_unregister(st->self, cb_fn, cb_arg);
}

void *bdev_stack_find(const char *name, const struct keel_bdev_module *module)
{
	struct keel_bdev *bdev = name ? keel_bdev_get_by_name(name) : NULL;

	if (!bdev || bdev->module != module) {
		return NULL;
	}
	return bdev->ctxt;
}
