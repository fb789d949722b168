/*
 * null bdev: a benchmark target that measures the bdev path itself. Writes are
 * discarded and reads return zeroes. Reads once left the caller's buffers untouched
 * to keep memset out of benchmarks, but an exported null bdev then sent whatever the
 * buffer held (daemon heap, pointers included) to NBD clients: no byte a client can
 * read may be uninitialised, so the zeroing stays, and it is cheap next to a syscall.
 * Every I/O type is accepted and completed inline; the core defers callbacks.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "keel/bdev_module.h"
#include "keel/log.h"

struct null_disk {
	struct keel_bdev bdev;
	char name[KEEL_BDEV_NAME_MAX + 1];
	bool leave_reads; /* keel_bdev_null_leave_reads_untouched: no memset */
};

static pthread_mutex_t g_null_lock = PTHREAD_MUTEX_INITIALIZER;
static bool g_null_io_dev_registered;
static char g_null_io_dev;

static int null_channel_create(void *io_device, void *ctx_buf)
{
	return 0;
}

static void null_channel_destroy(void *io_device, void *ctx_buf)
{
}

static int null_io_dev_get(void)
{
	int rc = 0;

	pthread_mutex_lock(&g_null_lock);
	if (!g_null_io_dev_registered) {
		rc = keel_io_device_register(&g_null_io_dev, null_channel_create,
					     null_channel_destroy, 8, "bdev_null");
		g_null_io_dev_registered = rc == 0;
	}
	pthread_mutex_unlock(&g_null_lock);
	return rc;
}

static int null_module_init(void)
{
	return null_io_dev_get();
}

static void null_module_fini(void)
{
	pthread_mutex_lock(&g_null_lock);
	if (g_null_io_dev_registered) {
		keel_io_device_unregister(&g_null_io_dev, NULL);
		g_null_io_dev_registered = false;
	}
	pthread_mutex_unlock(&g_null_lock);
}

struct keel_bdev_module keel_bdev_null_module = {
	.name = "null",
	.module_init = null_module_init,
	.module_fini = null_module_fini,
};

static void null_submit(struct keel_io_channel *ch, struct keel_bdev_io *io)
{
	const struct null_disk *d = io->bdev->ctxt;

	if (io->type == KEEL_BDEV_IO_READ && !d->leave_reads) {
		for (int i = 0; i < io->iovcnt; i++) {
			memset(io->iovs[i].iov_base, 0, io->iovs[i].iov_len);
		}
	} else if (io->type == KEEL_BDEV_IO_GET_ALLOCATION) {
		/* Nothing is stored; reads are zeroes unless they leave buffers untouched. */
		keel_bdev_io_add_extent(io, keel_bdev_io_num_bytes(io),
					KEEL_BDEV_EXTENT_HOLE |
						(d->leave_reads ? 0 : KEEL_BDEV_EXTENT_ZERO));
	}
	keel_bdev_io_complete(io, 0);
}

static bool null_io_type_supported(void *ctx, enum keel_bdev_io_type type)
{
	return type != KEEL_BDEV_IO_FLUSH && type < KEEL_BDEV_IO_NUM_TYPES;
}

static struct keel_io_channel *null_get_io_channel(void *ctx)
{
	return keel_get_io_channel(&g_null_io_dev);
}

static int null_destruct(void *ctx)
{
	free(ctx);
	return 0;
}

static void null_dump_info_json(void *ctx, struct json_t *obj)
{
	const struct null_disk *d = ctx;
	json_t *m = json_object();

	if (!m) {
		return;
	}
	json_object_set_new(m, "reads_touch_memory", json_boolean(!d->leave_reads));
	json_object_set_new(obj, "null", m);
}

static const struct keel_bdev_fn_table g_null_fn_table = {
	.destruct = null_destruct,
	.submit_request = null_submit,
	.io_type_supported = null_io_type_supported,
	.get_io_channel = null_get_io_channel,
	.dump_info_json = null_dump_info_json,
};

int keel_bdev_null_create(const char *name, const uint8_t *uuid, uint64_t num_blocks,
			  uint32_t block_size, struct keel_bdev **bdev_out)
{
	struct null_disk *d;
	int rc;

	if (!name || !bdev_out || num_blocks == 0 || block_size < 512 || block_size > 65536 ||
	    (block_size & (block_size - 1)) || num_blocks > UINT64_MAX / block_size) {
		KEEL_ERRLOG("null bdev %s: invalid size: %lu blocks of %u bytes",
			    name ? name : "(null)", (unsigned long)num_blocks, block_size);
		return -EINVAL;
	}
	rc = null_io_dev_get();
	if (rc) {
		return rc;
	}
	d = calloc(1, sizeof(*d));
	if (!d) {
		return -ENOMEM;
	}
	snprintf(d->name, sizeof(d->name), "%s", name);
	d->bdev.name = d->name;
	d->bdev.product_name = "Null disk";
	d->bdev.block_size = block_size;
	d->bdev.num_blocks = num_blocks;
	d->bdev.required_alignment = 1;
	d->bdev.multi_conn_safe = true;
	if (uuid) {
		memcpy(d->bdev.uuid, uuid, 16);
	}
	d->bdev.ctxt = d;
	d->bdev.fn_table = &g_null_fn_table;
	d->bdev.module = &keel_bdev_null_module;
	rc = keel_bdev_register(&d->bdev);
	if (rc) {
		free(d);
		return rc;
	}
	*bdev_out = &d->bdev;
	return 0;
}

int keel_bdev_null_delete(const char *name, keel_bdev_done_cb cb_fn, void *cb_arg)
{
	struct keel_bdev *bdev = keel_bdev_get_by_name(name);

	if (!bdev || bdev->module != &keel_bdev_null_module) {
		return -ENODEV;
	}
	keel_bdev_unregister(bdev, cb_fn, cb_arg);
	return 0;
}

int keel_bdev_null_leave_reads_untouched(struct keel_bdev *bdev)
{
	struct null_disk *d;

	if (bdev == NULL || bdev->module != &keel_bdev_null_module) {
		return -EINVAL;
	}
	d = bdev->ctxt;
	d->leave_reads = true;
	return 0;
}
