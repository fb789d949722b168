/*
 * Bounce buffers: where a request's buffers break the module's alignment rule, its
 * data goes through buffers of the channel that keep it. Each channel has
 * bounce_buf_count of them (keel_bdev_opts), carved from one region allocated the
 * first time a request needs one; a lane that finds none free waits in
 * bounce_waitq and takes the next one put back. The lanes (bdev_split.c) copy the
 * data in and out.
 */
#include <stdlib.h>

#include "bdev_internal.h"

void bdev_bounce_channel_init(struct bdev_channel *ch, const struct keel_bdev_opts *opts)
{
	struct keel_bdev *bdev = ch->bdev;

	TAILQ_INIT(&ch->bounce_waitq);
	ch->bounce_count = opts->bounce_buf_count;
	/* Each buffer must hold a block and keep the alignment (all are powers of two). */
	ch->bounce_size = opts->bounce_buf_size;
	if (ch->bounce_size < bdev->block_size) {
		ch->bounce_size = bdev->block_size;
	}
	if (ch->bounce_size < bdev->required_alignment) {
		ch->bounce_size = bdev->required_alignment;
	}
}

void bdev_bounce_channel_fini(struct bdev_channel *ch)
{
	free(ch->bounce_region);
	free(ch->bounce_free);
}

/*
 * The module's buffer rule: every iov_base aligned to required_alignment and every
 * iov_len a multiple of min(alignment, block size) (O_DIRECT wants both at the
 * logical block size; a larger alignment cannot be asked of a one-block length).
 */
bool bdev_iovs_misaligned(const struct keel_bdev_internal *bi, const struct iovec *iovs, int iovcnt)
{
	for (int i = 0; i < iovcnt; i++) {
		if (((uintptr_t)iovs[i].iov_base & bi->align_mask) ||
		    (iovs[i].iov_len & bi->len_mask)) {
			return true;
		}
	}
	return false;
}

bool bdev_bounce_get(struct bdev_channel *ch, struct keel_bdev_io_internal *lin)
{
	if (!ch->bounce_region) {
		size_t align = ch->bdev->required_alignment > 4096 ? ch->bdev->required_alignment
								   : 4096;

		if (posix_memalign((void **)&ch->bounce_region, align,
				   (size_t)ch->bounce_count * ch->bounce_size) != 0) {
			ch->bounce_region = NULL;
			return false;
		}
		ch->bounce_free = calloc(ch->bounce_count, sizeof(void *));
		if (!ch->bounce_free) {
			free(ch->bounce_region);
			ch->bounce_region = NULL;
			return false;
		}
		for (uint32_t i = 0; i < ch->bounce_count; i++) {
			ch->bounce_free[i] = ch->bounce_region + (size_t)i * ch->bounce_size;
		}
		ch->bounce_nfree = ch->bounce_count;
	}
	if (ch->bounce_nfree == 0) {
		return false;
	}
	lin->bounce_buf = ch->bounce_free[--ch->bounce_nfree];
	return true;
}

void bdev_bounce_put(struct bdev_channel *ch, struct keel_bdev_io_internal *lin)
{
	struct keel_bdev_io_internal *w;

	ch->bounce_free[ch->bounce_nfree++] = lin->bounce_buf;
	lin->bounce_buf = NULL;
	w = TAILQ_FIRST(&ch->bounce_waitq);
	if (w) {
		TAILQ_REMOVE(&ch->bounce_waitq, w, link);
		bdev_lane_next(ch, w);
	}
}
