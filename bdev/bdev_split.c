/*
 * Lanes: splitting, bouncing and write_zeroes emulation.
 *
 * A request that must be cut into chunks runs its chunks on up to BDEV_MAX_LANES
 * lanes. The request object itself is always the first lane, so a request never
 * needs a second pool object to make progress (a tiny pool cannot deadlock);
 * further lanes are child objects taken only when the pool has spare ones and no
 * one waits. A lane that finishes a chunk takes the next one; the request completes
 * when the last lane finishes. The first error stops handing out chunks.
 *
 * A chunk is cut at the optimal I/O boundary and the maximum transfer, at the
 * BDEV_IO_NUM_IOV iovec slots of a lane, at the size of a bounce buffer when the
 * data is bounced (bdev_bounce.c), and at the zero buffer for an emulated
 * write_zeroes (written as plain writes of zeroes).
 */
#include <stdlib.h>
#include <string.h>

#include "bdev_internal.h"

static pthread_once_t g_zero_once = PTHREAD_ONCE_INIT;
static void *g_zero_buf;

static void bdev_zero_buf_alloc(void)
{
	/* Shared by every thread, never written after this: zero-write source. */
	if (posix_memalign(&g_zero_buf, BDEV_MAX_ALIGN, BDEV_ZERO_BUF_SIZE) == 0) {
		memset(g_zero_buf, 0, BDEV_ZERO_BUF_SIZE);
	} else {
		g_zero_buf = NULL;
	}
}

const void *bdev_zero_buf(void)
{
	pthread_once(&g_zero_once, bdev_zero_buf_alloc);
	return g_zero_buf;
}

/* Move (idx, off) forward by \p bytes through \p iovs. */
static void bdev_iov_advance(const struct iovec *iovs, int iovcnt, int *idx, uint64_t *off,
			     uint64_t bytes)
{
	while (bytes && *idx < iovcnt) {
		uint64_t avail = iovs[*idx].iov_len - *off;

		if (bytes < avail) {
			*off += bytes;
			return;
		}
		bytes -= avail;
		(*idx)++;
		*off = 0;
	}
	while (*idx < iovcnt && iovs[*idx].iov_len == 0) {
		(*idx)++;
	}
}

/* Copy between a flat buffer and iovs starting at (idx, off); to_iovs picks the way. */
static void bdev_iov_copy(const struct iovec *iovs, int iovcnt, int idx, uint64_t off, void *flat,
			  uint64_t bytes, bool to_iovs)
{
	char *p = flat;

	while (bytes && idx < iovcnt) {
		uint64_t n = iovs[idx].iov_len - off;

		if (n > bytes) {
			n = bytes;
		}
		if (to_iovs) {
			memcpy((char *)iovs[idx].iov_base + off, p, n);
		} else {
			memcpy(p, (char *)iovs[idx].iov_base + off, n);
		}
		p += n;
		bytes -= n;
		idx++;
		off = 0;
	}
}

static void bdev_lane_finish(struct bdev_channel *ch, struct keel_bdev_io_internal *lin)
{
	struct keel_bdev_io_internal *p = lin->parent->internal;
	struct keel_bdev_io *pio = p->io;

	if (lin->bounce_buf) {
		bdev_bounce_put(ch, lin);
	}
	p->lanes--;
	if (lin->is_child) {
		bdev_io_free(ch, lin->io);
	}
	if (p->lanes) {
		return;
	}
	/* Last lane: restore what the caller asked for and complete once. */
	pio->type = p->user_type;
	pio->iovs = p->orig_iovs;
	pio->iovcnt = p->orig_iovcnt;
	pio->offset_blocks = p->orig_offset;
	pio->num_blocks = p->orig_num;
	p->is_lane = false;
	p->status = p->split_status;
	bdev_user_complete(ch, p);
}

void bdev_lane_next(struct bdev_channel *ch, struct keel_bdev_io_internal *lin)
{
	struct keel_bdev_io_internal *p = lin->parent->internal;
	struct keel_bdev *bdev = ch->bdev;
	struct keel_bdev_internal *bi = bdev->internal;
	struct keel_bdev_io *lio = lin->io;
	uint64_t remaining, abs, nb, bytes, got;
	int n, idx;
	uint64_t off;
	bool data = p->lane_type == KEEL_BDEV_IO_READ || p->lane_type == KEEL_BDEV_IO_WRITE;
	bool zeroes = p->user_type == KEEL_BDEV_IO_WRITE_ZEROES &&
		      p->lane_type == KEEL_BDEV_IO_WRITE;

	if (p->split_status != 0 || p->next_block >= p->orig_num) {
		bdev_lane_finish(ch, lin);
		return;
	}
	if (data && !zeroes && p->bounce && !lin->bounce_buf && !bdev_bounce_get(ch, lin)) {
		TAILQ_INSERT_TAIL(&ch->bounce_waitq, lin, link);
		return;
	}

	remaining = p->orig_num - p->next_block;
	abs = p->orig_offset + p->next_block;
	nb = remaining;
	if (bdev->optimal_io_boundary) {
		uint64_t to_boundary = bdev->optimal_io_boundary - abs % bdev->optimal_io_boundary;

		if (nb > to_boundary) {
			nb = to_boundary;
		}
	}
	if (bdev->max_transfer_blocks && nb > bdev->max_transfer_blocks) {
		nb = bdev->max_transfer_blocks;
	}

	lio->type = p->lane_type;
	lio->offset_blocks = abs;
	/* Zero writes that emulate write_zeroes carry no write_zeroes-only flags. */
	lio->flags = p->lane_type == KEEL_BDEV_IO_WRITE ? p->io->flags & KEEL_BDEV_IO_FLAG_FUA
							: p->io->flags;
	lio->iovs = NULL;
	lio->iovcnt = 0;

	if (zeroes) {
		if (nb > (BDEV_ZERO_BUF_SIZE >> bi->block_shift)) {
			nb = BDEV_ZERO_BUF_SIZE >> bi->block_shift;
		}
		lin->lane_iovs[0].iov_base = (void *)bdev_zero_buf();
		lin->lane_iovs[0].iov_len = nb << bi->block_shift;
		lio->iovs = lin->lane_iovs;
		lio->iovcnt = 1;
	} else if (data && lin->bounce_buf) {
		if (nb > (ch->bounce_size >> bi->block_shift)) {
			nb = ch->bounce_size >> bi->block_shift;
		}
		bytes = nb << bi->block_shift;
		lin->copy_iov = p->cur_iov;
		lin->copy_off = p->cur_off;
		if (p->lane_type == KEEL_BDEV_IO_WRITE) {
			bdev_iov_copy(p->orig_iovs, p->orig_iovcnt, p->cur_iov, p->cur_off,
				      lin->bounce_buf, bytes, false);
		}
		lin->lane_iovs[0].iov_base = lin->bounce_buf;
		lin->lane_iovs[0].iov_len = bytes;
		lio->iovs = lin->lane_iovs;
		lio->iovcnt = 1;
		bdev_iov_advance(p->orig_iovs, p->orig_iovcnt, &p->cur_iov, &p->cur_off, bytes);
	} else if (data) {
		bytes = nb << bi->block_shift;
		n = 0;
		got = 0;
		idx = p->cur_iov;
		off = p->cur_off;
		while (got < bytes && n < BDEV_IO_NUM_IOV && idx < p->orig_iovcnt) {
			uint64_t take = p->orig_iovs[idx].iov_len - off;

			if (take > bytes - got) {
				take = bytes - got;
			}
			if (take) {
				lin->lane_iovs[n].iov_base = (char *)p->orig_iovs[idx].iov_base +
							     off;
				lin->lane_iovs[n].iov_len = take;
				n++;
				got += take;
			}
			off += take;
			if (off == p->orig_iovs[idx].iov_len) {
				idx++;
				off = 0;
			}
		}
		if (got < bytes) {
			/* Out of iovec slots: cut back to whole blocks. */
			uint64_t keep = got & ~bi->block_mask, excess = got - keep;

			if (keep == 0) {
				/* One block spans more than BDEV_IO_NUM_IOV pieces: bounce the rest. */
				p->bounce = true;
				bdev_lane_next(ch, lin);
				return;
			}
			while (excess) {
				if (lin->lane_iovs[n - 1].iov_len <= excess) {
					excess -= lin->lane_iovs[n - 1].iov_len;
					n--;
				} else {
					lin->lane_iovs[n - 1].iov_len -= excess;
					excess = 0;
				}
			}
			bytes = keep;
			nb = keep >> bi->block_shift;
		}
		if (bi->align_mask && bdev_iovs_misaligned(bi, lin->lane_iovs, n)) {
			/* A cut inside an aligned iovec can land off the alignment
			 * (alignment larger than a block): bounce from here on. */
			p->bounce = true;
			bdev_lane_next(ch, lin);
			return;
		}
		lio->iovs = lin->lane_iovs;
		lio->iovcnt = n;
		bdev_iov_advance(p->orig_iovs, p->orig_iovcnt, &p->cur_iov, &p->cur_off, bytes);
	}
	lio->num_blocks = nb;
	p->next_block += nb;
	bdev_submit_module(ch, lio);
}

void bdev_lane_done(struct bdev_channel *ch, struct keel_bdev_io_internal *lin)
{
	struct keel_bdev_io_internal *p = lin->parent->internal;
	struct keel_bdev_io *lio = lin->io;

	if (lin->status != 0 && p->split_status == 0) {
		p->split_status = lin->status;
	}
	if (lin->status == 0 && lin->bounce_buf && p->user_type == KEEL_BDEV_IO_READ) {
		bdev_iov_copy(p->orig_iovs, p->orig_iovcnt, lin->copy_iov, lin->copy_off,
			      lin->bounce_buf, lio->num_blocks << ch->bdev->internal->block_shift,
			      true);
	}
	bdev_lane_next(ch, lin);
}

void bdev_split_start(struct bdev_channel *ch, struct keel_bdev_io_internal *p,
		      enum keel_bdev_io_type lane_type, bool bounce)
{
	struct keel_bdev_io *pio = p->io;

	p->orig_iovs = pio->iovs;
	p->orig_iovcnt = pio->iovcnt;
	p->orig_offset = pio->offset_blocks;
	p->orig_num = pio->num_blocks;
	p->next_block = 0;
	p->cur_iov = 0;
	p->cur_off = 0;
	p->split_status = 0;
	p->lane_type = lane_type;
	p->bounce = bounce;
	p->is_lane = true;
	p->parent = pio;
	p->lanes = 1;
	if (pio->iovs) {
		bdev_iov_advance(pio->iovs, pio->iovcnt, &p->cur_iov, &p->cur_off, 0);
	}
	bdev_lane_next(ch, p);

	/* Extra lanes only from spare objects, and never ahead of waiting requests. */
	while (p->lanes < BDEV_MAX_LANES && p->next_block < p->orig_num && p->split_status == 0 &&
	       TAILQ_EMPTY(&ch->waitq) && (!p->bounce || ch->bounce_nfree > 0)) {
		struct keel_bdev_io_internal *c = keel_mempool_cache_get(ch->cache);
		struct keel_bdev_io *cio;

		if (!c) {
			break;
		}
		cio = (struct keel_bdev_io *)(c + 1);
		c->io = cio;
		c->ch = ch;
		c->is_lane = true;
		c->is_child = true;
		c->parent = pio;
		c->bounce_buf = NULL;
		c->status = 0;
		cio->internal = c;
		cio->bdev = pio->bdev;
		p->lanes++;
		bdev_lane_next(ch, c);
	}
}
