/*
 * bdev statistics: per-channel counters kept by bdev_stats_record() (bdev_internal.h)
 * on the completion path, and keel_bdev_get_io_stats(), which sums them over every
 * channel and the channels already closed.
 *
 * Latencies are counted in keel_ticks() and converted to nanoseconds only when read,
 * so a completion costs no division.
 */
#include <errno.h>
#include <stdlib.h>

#include "bdev_internal.h"

static pthread_once_t g_stats_once = PTHREAD_ONCE_INIT;
static uint64_t g_us_mult; /* (ticks * g_us_mult) >> 32 == microseconds */

static void bdev_stats_once(void)
{
	/* Latency buckets are powers of two of microseconds: (ticks * g_us_mult) >> 32
	 * converts without a division on the completion path. keel_ticks_per_us()
	 * calibrates the tick clock here, at the first registration, not on a request. */
	g_us_mult = (uint64_t)(4294967296.0 / keel_ticks_per_us());
}

void bdev_stats_init(void)
{
	pthread_once(&g_stats_once, bdev_stats_once);
}

uint64_t bdev_stats_us_mult(void)
{
	bdev_stats_init();
	return g_us_mult;
}

void bdev_stats_add(struct keel_bdev_io_stats *dst, const struct keel_bdev_io_stats *src)
{
	for (int t = 0; t < KEEL_BDEV_IO_NUM_TYPES; t++) {
		dst->ops[t] += src->ops[t];
		dst->bytes[t] += src->bytes[t];
		dst->errors[t] += src->errors[t];
		dst->lat_sum_ns[t] += src->lat_sum_ns[t];
		if (src->lat_max_ns[t] > dst->lat_max_ns[t]) {
			dst->lat_max_ns[t] = src->lat_max_ns[t];
		}
		for (int b = 0; b < KEEL_BDEV_LAT_BUCKETS; b++) {
			dst->lat_hist[t][b] += src->lat_hist[t][b];
		}
	}
}

struct bdev_stats_ctx {
	struct keel_bdev *bdev;
	keel_bdev_stats_cb cb_fn;
	void *cb_arg;
	struct keel_bdev_io_stats stats;
};

static void bdev_stats_visit(struct keel_io_channel_iter *iter)
{
	struct bdev_stats_ctx *ctx = keel_io_channel_iter_get_ctx(iter);
	struct bdev_channel *ch = bdev_ch(keel_io_channel_iter_get_channel(iter));

	bdev_stats_add(&ctx->stats, &ch->stats);
	keel_for_each_channel_continue(iter, 0);
}

static void bdev_stats_done(struct keel_io_channel_iter *iter, int status)
{
	struct bdev_stats_ctx *ctx = keel_io_channel_iter_get_ctx(iter);
	struct keel_bdev_internal *bi = ctx->bdev->internal;

	pthread_mutex_lock(&bi->lock);
	bdev_stats_add(&ctx->stats, &bi->closed_stats);
	pthread_mutex_unlock(&bi->lock);
	/* Channels count in keel_ticks(); callers get nanoseconds. */
	for (int t = 0; t < KEEL_BDEV_IO_NUM_TYPES; t++) {
		ctx->stats.lat_sum_ns[t] = keel_ticks_to_ns(ctx->stats.lat_sum_ns[t]);
		ctx->stats.lat_max_ns[t] = keel_ticks_to_ns(ctx->stats.lat_max_ns[t]);
	}
	ctx->cb_fn(ctx->bdev, &ctx->stats, ctx->cb_arg, status);
	free(ctx);
}

int keel_bdev_get_io_stats(struct keel_bdev *bdev, keel_bdev_stats_cb cb_fn, void *cb_arg)
{
	struct bdev_stats_ctx *ctx;

	if (!bdev || !cb_fn || !keel_thread_get_current()) {
		return -EINVAL;
	}
	ctx = calloc(1, sizeof(*ctx));
	if (!ctx) {
		return -ENOMEM;
	}
	ctx->bdev = bdev;
	ctx->cb_fn = cb_fn;
	ctx->cb_arg = cb_arg;
	keel_for_each_channel(bdev->internal->io_dev, bdev_stats_visit, ctx, bdev_stats_done);
	return 0;
}
