/*
 * A bdev stacked on a base bdev it claims (the error and vcache modules): opening and
 * claiming the base, taking its geometry, going away with it, and closing it on the
 * thread that opened it once the stacked bdev is destructed. Not a public API.
 *
 * Threading: bdev_stack_open and bdev_stack_find on a keel thread (the base descriptor
 * belongs to that thread); bdev_stack_destruct from the fn_table's destruct on any
 * keel thread; the release runs on the base's thread.
 * Lifetime: the module embeds struct bdev_stack in its disk, next to its keel_bdev and
 * its io_device anchor; after bdev_stack_destruct returned 1 the module's
 * io_device_unregistered callback runs last (it calls keel_bdev_destruct_done and
 * frees the disk).
 */
#ifndef KEEL_BDEV_STACK_H
#define KEEL_BDEV_STACK_H

#include <stdbool.h>
#include <stdint.h>

#include "keel/bdev_module.h"

struct bdev_stack {
	struct keel_bdev *self;           /* the stacked bdev (the module's) */
	struct keel_bdev_desc *base_desc; /* open for writing, claimed */
	struct keel_thread *base_thread;  /* where base_desc was opened and must be closed */
	void *io_device;                  /* the module's io_device, unregistered last */
	keel_io_device_unregister_cb unregistered;
	bool removing; /* atomic: delete or the base's REMOVE event began */
};

/**
 * Open base \p base_name for writing and claim it for \p self's module; fill \p self's
 * geometry (block size, blocks, alignment, multi_conn_safe) from it. \p io_device and
 * \p unregistered are kept for bdev_stack_destruct. A REMOVE event of the base
 * unregisters \p self. On failure nothing is held and the log says why.
 * \return 0, -ENODEV (no such base), -EPERM (claimed), -ENOMEM.
 */
int bdev_stack_open(struct bdev_stack *st, struct keel_bdev *self, const char *base_name,
		    void *io_device, keel_io_device_unregister_cb unregistered);
/**
 * After bdev_stack_open and filling the rest of \p st's bdev (name, module, ctxt,
 * fn_table ...): register the io_device (channels of \p ctx_size bytes, named after the
 * bdev) and the bdev. On failure the base is closed and \p undo(io_device) frees the
 * module's disk (at once, or once the io_device is unregistered).
 * \return 0 or the negative errno of the failed registration.
 */
int bdev_stack_register(struct bdev_stack *st, keel_io_channel_create_cb create_cb,
			keel_io_channel_destroy_cb destroy_cb, uint32_t ctx_size,
			keel_io_device_unregister_cb undo);
/** Undo bdev_stack_open on its thread (a create that failed after it). */
void bdev_stack_close(struct bdev_stack *st);
/** The base bdev. */
struct keel_bdev *bdev_stack_base(struct bdev_stack *st);
/** For the fn_table's destruct: close the base on its thread, then unregister the
 * io_device. \return 1 (keel_bdev_destruct_done follows) or -EIO. */
int bdev_stack_destruct(struct bdev_stack *st);
/** Start deleting \p st's bdev: keel_bdev_unregister with \p cb_fn. */
void bdev_stack_delete(struct bdev_stack *st, keel_bdev_done_cb cb_fn, void *cb_arg);
/** The ctxt of bdev \p name if it belongs to \p module, else NULL. */
void *bdev_stack_find(const char *name, const struct keel_bdev_module *module);

#endif /* KEEL_BDEV_STACK_H */
