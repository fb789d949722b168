/*
 * Write-intent bitmap (md's idea, kept by the nexus itself).
 *
 * One bit per region of the volume. A bit is set and durable (written and
 * flushed on every attached replica) before a write to its region is issued, and
 * cleared lazily by a timer once the region saw no write for a whole period,
 * nothing is in flight to it and every replica of the volume is healthy. While a
 * replica is out, bits are never cleared, so a replica that comes back needs only
 * the set regions copied. `events_cleared` is the generation at which bits were
 * last cleared: a returning replica whose label generation is older may have
 * missed writes whose bits are gone, so it gets a full copy (md's events rule).
 *
 * On disk (in the 1 MiB label area of each replica, between the label copies):
 *   NEXUS_BITMAP_OFFSET: header block (magic, version, crc32c, events_cleared,
 *   region size, bit count, block size, volume uuid), then the bit blocks, each
 *   with its own checksum (nexus_bitmap_format.h). A bit block that fails its
 *   checksum at assembly counts as all set: its regions are resynced, never
 *   skipped. Writing a bit block costs the crc of that block alone.
 * Clearing writes the header (with the new events_cleared) and flushes it before
 * the cleared bits, so a crash in between only leaves bits set.
 *
 * Write-path cost: a covered write loads the region's shared bit and bumps a
 * counter of its own channel (struct nexus_channel.bm_cnt): no shared atomic
 * write, no cache line bounced between cores, however hot the region. The first
 * write to a cold region waits for one bitmap write, and every write arriving
 * meanwhile joins the next batch (one write + flush per replica for all of
 * them). Bits stay set while the region is hot.
 *
 * Clearing, since the in-flight counts are spread over the channels: the owner
 * marks every set bit CLEARING, then visits each channel on its own thread
 * (keel_for_each_channel). A channel with a write in flight to the region, or
 * one written since the last pass, vetoes it (bit back to SET). A writer that
 * meets CLEARING claims the bit back (CAS CLEARING -> SET) and goes on. After
 * the walk, the owner clears a bit only if its CAS CLEARING -> 0 wins. A write
 * in flight at that moment either started before its channel's visit (vetoed
 * there) or after it, so it saw CLEARING and its CAS beat ours; either way the
 * bit stays. Writers that see 0 take the slow path and wait for a set batch,
 * which the owner runs only after the clear is on disk.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/log.h"

#include "nexus_bitmap_format.h"
#include "nexus_internal.h"

#define NEXUS_BITMAP_MAX_LEN (448u * 1024u) /* up to the second label copy */
#define BM_MAX_BLOCKS 128u                  /* >= NEXUS_BITMAP_MAX_LEN / NEXUS_BM_BLOCK_MIN */
_Static_assert(NEXUS_BITMAP_MAX_LEN / NEXUS_BM_BLOCK_MIN <= BM_MAX_BLOCKS, "unsealed[] size");

/* bits[] values */
#define BIT_CLEAR 0u
#define BIT_SET 1u      /* set and durable everywhere */
#define BIT_CLEARING 2u /* set; a clear pass is asking the channels */

/* nexus_channel.bm_cnt: in flight (low bits) | touched (top bit) */
#define CNT_TOUCHED 0x8000u
#define CNT_MASK 0x7fffu

struct bm_replica_io {
	struct nexus_bitmap *bm;
	unsigned slot;
	uint32_t step;
	uint64_t off; /* replica offset of the run */
	uint32_t len;
	int status;
};

struct nexus_bitmap {
	struct nexus *n;
	uint64_t region_size;
	unsigned region_shift; /* region_size is a power of two: no division per write */
	uint32_t nbits;
	uint32_t blk;                          /* I/O unit */
	uint32_t bpb;                          /* bits per bit block (the rest is its trailer) */
	uint32_t image_len;                    /* header block + bit blocks */
	uint64_t unsealed[BM_MAX_BLOCKS / 64]; /* bit blocks changed since sealed */
	_Atomic uint8_t *bits;                 /* BIT_* per region */
	uint8_t *image;                        /* what is (being) written: header + bits */
	uint64_t events_cleared; /* UINT64_MAX: covers nothing (no valid bitmap yet) */
	/* Owner thread only from here. */
	TAILQ_HEAD(, keel_bdev_io) waiting;
	TAILQ_HEAD(, keel_bdev_io) writing;
	bool io_busy;
	bool need_full; /* write the whole image everywhere (new bitmap) */
	uint32_t io_pending;
	void (*io_done)(struct nexus_bitmap *bm);
	struct bm_replica_io rio[NEXUS_MAX];
	struct keel_poller *clear_poller; /* armed only while a bit may be set */
	uint64_t clear_period_us;
	bool clear_armed;
	uint32_t *clear_list;
	uint32_t n_clear;
	/* full write to one slot (rebuild completion) */
	void (*full_done)(struct nexus *n, int status);
	unsigned full_slot;
	bool full_requested;
	/* load: every healthy member's copy, merged */
	void (*load_done)(struct nexus *n);
	unsigned load_slot;
	uint16_t load_mask;   /* slots still to read */
	uint8_t *load_merged; /* per region: set in some copy read so far */
	uint32_t load_valid;  /* copies that were valid */
	uint32_t load_bad;    /* bad bit blocks seen */
	bool load_invalid;    /* a copy was unreadable or invalid */
	uint64_t load_ec;     /* smallest events_cleared of the valid copies */
};

static void encode_header(struct nexus_bitmap *bm)
{
	struct nexus_bm_header h = {
		.version = NEXUS_BM_VERSION,
		.events_cleared = bm->events_cleared,
		.region_size = bm->region_size,
		.nbits = bm->nbits,
		.block_size = bm->blk,
	};

	memcpy(h.volume_uuid, bm->n->uuid, 16);
	nexus_bm_header_encode(&h, bm->image);
}

/* Image offset of the bit block holding region \p r. */
static inline uint32_t block_off(const struct nexus_bitmap *bm, uint32_t r)
{
	return bm->blk * (1 + r / bm->bpb);
}

static void image_set(struct nexus_bitmap *bm, uint32_t r, bool on)
{
	uint8_t *b = bm->image + block_off(bm, r) + (r % bm->bpb) / 8;
	uint32_t k = r / bm->bpb;

	bm->unsealed[k / 64] |= 1ull << (k % 64);
	if (on) {
		*b |= (uint8_t)(1u << (r % 8));
	} else {
		*b &= (uint8_t) ~(1u << (r % 8));
	}
}

static bool image_get(struct nexus_bitmap *bm, uint32_t r)
{
	return (bm->image[block_off(bm, r) + (r % bm->bpb) / 8] >> (r % 8)) & 1u;
}

/* Checksum the bit blocks changed since they were last sealed (all of them with
 * \p all), before they are written: a batch costs the crc of the blocks it
 * changed, not of every block between the first and the last it writes. */
static void seal_blocks(struct nexus_bitmap *bm, bool all)
{
	uint32_t nblocks = bm->image_len / bm->blk - 1;

	for (uint32_t k = 0; k < nblocks; k++) {
		if (all || (bm->unsealed[k / 64] & (1ull << (k % 64)))) {
			nexus_bm_block_seal(bm->image + bm->blk * (1 + k), bm->blk, k, bm->n->uuid);
		}
	}
	memset(bm->unsealed, 0, sizeof(bm->unsealed));
}

static int clear_poll(void *arg);

/*
 * Owner thread: a bit was set, so a clear pass is due one period from now. The
 * poller is disarmed again by the first pass that finds nothing to clear: an idle
 * volume's bitmap costs no wake-ups (1000 volumes each woken every 5 s were 200
 * wake-ups a second).
 */
static void clear_schedule(struct nexus_bitmap *bm)
{
	if (!bm->clear_armed && bm->clear_poller != NULL) {
		bm->clear_armed = keel_poller_arm(bm->clear_poller, bm->clear_period_us) == 0;
	}
}

int nexus_bitmap_create(struct nexus *n)
{
	struct keel_rebuild_opts o;
	struct nexus_bitmap *bm;
	uint64_t rs;
	uint32_t bits_len, align = 4096;

	keel_rebuild_get_opts(&o);
	rs = n->bm_region_hint ? n->bm_region_hint : o.bitmap_region_size;
	if (rs < 64 * 1024 || (rs & (rs - 1)) != 0) {
		rs = o.bitmap_region_size; /* set_opts only takes powers of two */
	}
	bm = calloc(1, sizeof(*bm));
	if (bm == NULL) {
		return -ENOMEM;
	}
	bm->n = n;
	bm->blk = n->block_size > NEXUS_BM_BLOCK_MIN ? n->block_size : NEXUS_BM_BLOCK_MIN;
	bm->bpb = nexus_bm_bits_per_block(bm->blk);
	/* Larger regions when the volume is too big for the space (md: "or larger if
	 * necessary to fit"). */
	for (;;) {
		uint64_t nb = (n->volume_size + rs - 1) / rs;
		uint64_t nblocks = (nb + bm->bpb - 1) / bm->bpb;

		if (nb <= UINT32_MAX && (nblocks + 1) * bm->blk <= NEXUS_BITMAP_MAX_LEN) {
			bm->nbits = (uint32_t)nb;
			bits_len = (uint32_t)(nblocks * bm->blk);
			break;
		}
		rs *= 2;
	}
	bm->region_size = rs;
	bm->region_shift = (unsigned)__builtin_ctzll(rs);
	bm->image_len = bm->blk + bits_len;
	bm->events_cleared = UINT64_MAX;
	TAILQ_INIT(&bm->waiting);
	TAILQ_INIT(&bm->writing);
	bm->bits = calloc(bm->nbits, sizeof(*bm->bits));
	bm->clear_list = calloc(bm->nbits, sizeof(*bm->clear_list));
	if (posix_memalign((void **)&bm->image, align, bm->image_len) != 0) {
		bm->image = NULL;
	}
	if (bm->bits == NULL || bm->clear_list == NULL || bm->image == NULL) {
		n->bm = bm;
		nexus_bitmap_free(n);
		return -ENOMEM;
	}
	memset(bm->image, 0, bm->image_len);
	bm->clear_period_us = (uint64_t)(o.bitmap_clear_ms ? o.bitmap_clear_ms : 5000) * 1000;
	bm->clear_poller = keel_poller_register(clear_poll, bm, bm->clear_period_us,
						"nexus_bitmap_clear");
	if (bm->clear_poller != NULL) {
		keel_poller_disarm(bm->clear_poller); /* nothing set yet */
	}
	n->bm = bm;
	return 0;
}

void nexus_bitmap_init_new(struct nexus *n)
{
	n->bm->events_cleared = 1;
	n->bm->need_full = true;
}

void nexus_bitmap_free(struct nexus *n)
{
	struct nexus_bitmap *bm = n->bm;

	if (bm == NULL) {
		return;
	}
	if (bm->clear_poller != NULL) {
		keel_poller_unregister(&bm->clear_poller);
	}
	free(bm->bits);
	free(bm->clear_list);
	free(bm->image);
	free(bm);
	n->bm = NULL;
}

void nexus_bitmap_fill_label(const struct nexus *n, struct nexus_label *l)
{
	const struct nexus_bitmap *bm = n->bm;

	if (bm == NULL) {
		return;
	}
	l->bitmap_offset = NEXUS_BITMAP_OFFSET;
	l->bitmap_len = bm->image_len;
	l->bitmap_chunk_kib = (uint32_t)(bm->region_size / 1024);
	l->bitmap_events_cleared = bm->events_cleared;
}

/* ------------------------------------------------------------------------------ */
/* Write path (any thread)                                                         */
/* ------------------------------------------------------------------------------ */

int nexus_bitmap_channel_init(struct nexus_channel *nch)
{
	struct nexus_bitmap *bm = nch->nexus->bm;

	/* The bitmap exists before the io_device is registered and lives until it
	 * is gone, so every channel sees the same one. */
	if (bm == NULL) {
		nch->bm_cnt = NULL;
		return 0;
	}
	nch->bm_cnt = calloc(bm->nbits, sizeof(*nch->bm_cnt));
	return nch->bm_cnt == NULL ? -ENOMEM : 0;
}

void nexus_bitmap_channel_fini(struct nexus_channel *nch)
{
	free(nch->bm_cnt);
	nch->bm_cnt = NULL;
}

bool nexus_bitmap_write_start(struct nexus_channel *nch, uint64_t off, uint64_t len)
{
	struct nexus_bitmap *bm = nch->nexus->bm;
	uint32_t r0, r1;

	if (bm == NULL || len == 0) {
		return true;
	}
	r0 = (uint32_t)(off >> bm->region_shift);
	r1 = (uint32_t)((off + len - 1) >> bm->region_shift);
	/* Look at the bits first, count after: both happen inside this call, and a
	 * clear pass reads the counts only from a message to this thread, so it
	 * sees either both or neither. */
	for (uint32_t r = r0; r <= r1; r++) {
		uint8_t b = atomic_load_explicit(&bm->bits[r], memory_order_acquire);

		if (b == BIT_CLEARING) {
			uint8_t exp = BIT_CLEARING;

			/* Claim it back from the clear pass; losing means it is 0 now. */
			b = atomic_compare_exchange_strong(&bm->bits[r], &exp, BIT_SET) ? BIT_SET
											: exp;
		}
		/* A saturated count (never with the default bdev_io pool of 1024
		 * per channel) waits one trip to the owner and retries. */
		if (b != BIT_SET || (nch->bm_cnt[r] & CNT_MASK) == CNT_MASK) {
			return false;
		}
	}
	for (uint32_t r = r0; r <= r1; r++) {
		nch->bm_cnt[r] = (uint16_t)((nch->bm_cnt[r] + 1u) | CNT_TOUCHED);
	}
	return true;
}

void nexus_bitmap_write_end(struct nexus_channel *nch, uint64_t off, uint64_t len)
{
	struct nexus_bitmap *bm = nch->nexus->bm;

	if (bm == NULL || len == 0) {
		return;
	}
	for (uint32_t r = (uint32_t)(off >> bm->region_shift);
	     r <= (uint32_t)((off + len - 1) >> bm->region_shift); r++) {
		nch->bm_cnt[r]--; /* count > 0: never borrows from CNT_TOUCHED */
	}
}

static void bm_request_msg(void *arg)
{
	struct keel_bdev_io *io = arg;
	struct nexus_io *nio = keel_bdev_io_get_ctx(io);
	struct nexus *n = nio->nch->nexus;

	TAILQ_INSERT_TAIL(&n->bm->waiting, io, module_link);
	nexus_kick(n);
}

void nexus_bitmap_wait(struct nexus *n, struct keel_bdev_io *io)
{
	keel_thread_send_msg_reliable(n->owner, bm_request_msg, io, NULL);
}

/* ------------------------------------------------------------------------------ */
/* Bitmap I/O (owner thread)                                                       */
/* ------------------------------------------------------------------------------ */

static void bm_io_put(struct nexus_bitmap *bm)
{
	if (--bm->io_pending == 0) {
		struct nexus *n = bm->n;

		for (unsigned s = 0; s < NEXUS_MAX; s++) {
			struct bm_replica_io *rio = &bm->rio[s];

			if (rio->status != 0 && nexus_replica_attached(&n->replicas[s])) {
				KEEL_ERRLOG("volume %s: replica %s: bitmap write failed: %s",
					    n->name, n->replicas[s].bdev_name,
					    strerror(-rio->status));
				nexus_request_fault(n, s, rio->status);
			}
		}
		bm->io_busy = false;
		bm->io_done(bm);
		nexus_kick(n);
	}
}

static void bm_rio_step(void *arg, int status);

static void bm_rio_next(struct bm_replica_io *rio)
{
	struct nexus_replica *r = &rio->bm->n->replicas[rio->slot];
	int rc;

	switch (rio->step++) {
	case 0:
		rc = keel_bdev_write(r->desc, r->label_ch,
				     rio->bm->image + (rio->off - NEXUS_BITMAP_OFFSET), rio->off,
				     rio->len, bm_rio_step, rio);
		break;
	case 1:
		rc = keel_bdev_flush(r->desc, r->label_ch, rio->off, rio->len, bm_rio_step, rio);
		break;
	default:
		bm_io_put(rio->bm);
		return;
	}
	if (rc != 0) {
		rio->status = rc;
		bm_io_put(rio->bm);
	}
}

static void bm_rio_step(void *arg, int status)
{
	struct bm_replica_io *rio = arg;

	if (status != 0) {
		rio->status = status;
		bm_io_put(rio->bm);
		return;
	}
	bm_rio_next(rio);
}

/* Write image bytes [lo, hi) to the replicas of \p mask (whole image to those in
 * \p full_mask), each followed by a flush; then done(bm). */
static void bm_write(struct nexus_bitmap *bm, uint32_t lo, uint32_t hi, uint16_t mask,
		     uint16_t full_mask, void (*done)(struct nexus_bitmap *bm))
{
	bm->io_busy = true;
	bm->io_done = done;
	bm->io_pending = 1;
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct bm_replica_io *rio = &bm->rio[s];
		bool full = full_mask & (1u << s);

		rio->status = 0;
		if (!(mask & (1u << s)) && !full) {
			continue;
		}
		if (!full && lo >= hi) {
			continue;
		}
		rio->bm = bm;
		rio->slot = s;
		rio->step = 0;
		rio->off = NEXUS_BITMAP_OFFSET + (full ? 0 : lo);
		rio->len = full ? bm->image_len : hi - lo;
		bm->io_pending++;
		bm_rio_next(rio);
	}
	bm_io_put(bm);
}

/* bm_write after sealing what changed (every bit block when some replica gets
 * the whole image: a loaded image may hold blocks read as bad). */
static void bm_write_sealed(struct nexus_bitmap *bm, uint32_t lo, uint32_t hi, uint16_t mask,
			    uint16_t full_mask, void (*done)(struct nexus_bitmap *bm))
{
	seal_blocks(bm, full_mask != 0);
	bm_write(bm, lo, hi, mask, full_mask, done);
}

static void set_batch_done(struct nexus_bitmap *bm)
{
	struct keel_bdev_io *io;

	while ((io = TAILQ_FIRST(&bm->writing)) != NULL) {
		struct nexus_io *nio = keel_bdev_io_get_ctx(io);
		uint64_t off = keel_bdev_io_offset_bytes(io);
		uint64_t len = keel_bdev_io_num_bytes(io);

		TAILQ_REMOVE(&bm->writing, io, module_link);
		for (uint32_t r = (uint32_t)(off / bm->region_size);
		     r <= (uint32_t)((off + len - 1) / bm->region_size); r++) {
			atomic_store(&bm->bits[r], BIT_SET);
		}
		clear_schedule(bm);
		keel_thread_send_msg_reliable(
			keel_io_channel_get_thread(keel_io_channel_from_ctx(nio->nch)),
			nexus_write_resume, io, NULL);
	}
}

static void set_batch(struct nexus_bitmap *bm)
{
	struct keel_bdev_io *io;
	uint32_t lo = UINT32_MAX, hi = 0;

	TAILQ_CONCAT(&bm->writing, &bm->waiting, module_link);
	TAILQ_FOREACH(io, &bm->writing, module_link) {
		uint64_t off = keel_bdev_io_offset_bytes(io);
		uint64_t len = keel_bdev_io_num_bytes(io);

		for (uint32_t r = (uint32_t)(off / bm->region_size);
		     r <= (uint32_t)((off + len - 1) / bm->region_size); r++) {
			if (!image_get(bm, r)) {
				uint32_t b = block_off(bm, r);

				image_set(bm, r, true);
				lo = b < lo ? b : lo;
				hi = b + bm->blk > hi ? b + bm->blk : hi;
			}
		}
	}
	if (lo >= hi) {
		/* Already on disk (a cleared-then-rewritten race): nothing to write. */
		lo = hi = 0;
	}
	bm_write_sealed(bm, lo, hi, nexus_attached_mask(bm->n), 0, set_batch_done);
}

static void full_done_cb(struct nexus_bitmap *bm)
{
	bm->need_full = false;
}

static void full_one_done(struct nexus_bitmap *bm)
{
	void (*done)(struct nexus *n, int status) = bm->full_done;

	bm->full_done = NULL;
	done(bm->n, bm->rio[bm->full_slot].status);
}

/* Clearing: header with the new events_cleared first, then the bits. */
static void clear_bits_done(struct nexus_bitmap *bm)
{
	KEEL_DEBUGLOG("volume %s: bitmap: cleared %u regions", bm->n->name, bm->n_clear);
	bm->n_clear = 0;
}

static void clear_header_done(struct nexus_bitmap *bm)
{
	uint32_t lo = UINT32_MAX, hi = 0;

	for (uint32_t i = 0; i < bm->n_clear; i++) {
		uint32_t r = bm->clear_list[i];
		uint32_t b = block_off(bm, r);

		image_set(bm, r, false);
		lo = b < lo ? b : lo;
		hi = b + bm->blk > hi ? b + bm->blk : hi;
	}
	bm_write_sealed(bm, lo, hi, nexus_attached_mask(bm->n), 0, clear_bits_done);
}

static bool clear_allowed(struct nexus *n)
{
	if (n->state != KEEL_NEXUS_ONLINE || n->busy || n->faults_queued ||
	    !TAILQ_EMPTY(&n->jobs) || n->destroying) {
		return false;
	}
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		if (n->replicas[s].used && atomic_load(&n->replicas[s].fault_requested)) {
			return false;
		}
	}
	return true;
}

/* On each channel's thread: veto the candidates this channel wrote to since the
 * last pass or still has in flight, and start a new period for them. */
static void clear_visit(struct keel_io_channel_iter *iter)
{
	struct nexus_channel *nch = keel_io_channel_get_ctx(keel_io_channel_iter_get_channel(iter));
	struct nexus_bitmap *bm = keel_io_channel_iter_get_ctx(iter);

	if (nch->bm_cnt != NULL) {
		for (uint32_t i = 0; i < bm->n_clear; i++) {
			uint32_t r = bm->clear_list[i];
			uint16_t c = nch->bm_cnt[r];

			if (c != 0) {
				atomic_store(&bm->bits[r], BIT_SET);
				nch->bm_cnt[r] = (uint16_t)(c & CNT_MASK);
			}
		}
	}
	keel_for_each_channel_continue(iter, 0);
}

static void clear_visit_done(struct keel_io_channel_iter *iter, int status)
{
	struct nexus_bitmap *bm = keel_io_channel_iter_get_ctx(iter);
	struct nexus *n = bm->n;
	bool allowed = status == 0 && clear_allowed(n);
	uint32_t k = 0;

	/* Something changed during the walk (a fault, a rebuild, destroy): keep
	 * every bit; the next pass asks again. */
	for (uint32_t i = 0; i < bm->n_clear; i++) {
		uint32_t r = bm->clear_list[i];
		uint8_t exp = BIT_CLEARING;

		if (!allowed) {
			(void)atomic_compare_exchange_strong(&bm->bits[r], &exp, BIT_SET);
		} else if (atomic_compare_exchange_strong(&bm->bits[r], &exp, BIT_CLEAR)) {
			bm->clear_list[k++] = r;
		}
	}
	bm->n_clear = k;
	if (k == 0) {
		bm->io_busy = false;
		nexus_kick(n);
		return;
	}
	bm->events_cleared = n->generation;
	encode_header(bm);
	bm_write(bm, 0, bm->blk, nexus_attached_mask(n), 0, clear_header_done);
}

static void clear_pass(struct nexus_bitmap *bm)
{
	struct nexus *n = bm->n;

	bm->n_clear = 0;
	for (uint32_t r = 0; r < bm->nbits; r++) {
		if (atomic_load_explicit(&bm->bits[r], memory_order_relaxed) == BIT_SET) {
			atomic_store(&bm->bits[r], BIT_CLEARING);
			bm->clear_list[bm->n_clear++] = r;
		}
	}
	if (bm->n_clear == 0) {
		/* Bits are set only on this thread (a batch, a load) and those arm the
		 * poller again; regions claimed back during a pass stay BIT_SET while it
		 * is armed, so nothing set is ever left without a pass to come. */
		keel_poller_disarm(bm->clear_poller);
		bm->clear_armed = false;
		return;
	}
	/* Busy while the channels are asked: membership steps and set batches wait,
	 * and the io_device (so the bitmap) outlives the walk. */
	bm->io_busy = true;
	keel_for_each_channel(n, clear_visit, bm, clear_visit_done);
}

static int clear_poll(void *arg)
{
	struct nexus_bitmap *bm = arg;

	if (bm->io_busy || !clear_allowed(bm->n)) {
		return KEEL_POLLER_IDLE;
	}
	clear_pass(bm);
	return KEEL_POLLER_BUSY;
}

bool nexus_bitmap_busy(struct nexus *n)
{
	return n->bm != NULL && n->bm->io_busy;
}

bool nexus_bitmap_kick(struct nexus *n)
{
	struct nexus_bitmap *bm = n->bm;

	if (bm == NULL || bm->io_busy || n->busy || !n->registered) {
		return false;
	}
	if (bm->need_full) {
		encode_header(bm);
		bm_write_sealed(bm, 0, 0, 0, nexus_attached_mask(n), full_done_cb);
		return true;
	}
	if (!TAILQ_EMPTY(&bm->waiting)) {
		set_batch(bm);
		return true;
	}
	return false;
}

void nexus_bitmap_write_full(struct nexus *n, unsigned s, void (*done)(struct nexus *n, int status))
{
	struct nexus_bitmap *bm = n->bm;

	bm->full_done = done;
	bm->full_slot = s;
	encode_header(bm);
	bm_write_sealed(bm, 0, 0, 0, (uint16_t)(1u << s), full_one_done);
}

/* ------------------------------------------------------------------------------ */
/* Load at assembly                                                                */
/* ------------------------------------------------------------------------------ */

/* The header read at assembly describes this volume's bitmap? (why on false) */
static bool load_header_ok(struct nexus_bitmap *bm, char *why, size_t whylen)
{
	struct nexus_bm_header h;

	if (nexus_bm_header_decode(bm->image, bm->image_len, &h, why, whylen) != 0) {
		return false;
	}
	if (h.region_size != bm->region_size || h.nbits != bm->nbits || h.block_size != bm->blk ||
	    memcmp(h.volume_uuid, bm->n->uuid, 16) != 0) {
		snprintf(why, whylen, "bitmap geometry or volume differs from the label's");
		return false;
	}
	bm->events_cleared = h.events_cleared;
	return true;
}

/* A bit block that fails its checksum counts as all set: those regions are
 * resynced rather than trusted to be clean. \return the blocks found bad. */
static uint32_t load_check_blocks(struct nexus_bitmap *bm)
{
	struct nexus *n = bm->n;
	uint32_t nblocks = (bm->nbits + bm->bpb - 1) / bm->bpb, bad = 0;

	for (uint32_t k = 0; k < nblocks; k++) {
		uint8_t *b = bm->image + bm->blk * (1 + k);
		uint32_t r0 = k * bm->bpb;
		uint32_t r1 = bm->nbits - r0 < bm->bpb ? bm->nbits : r0 + bm->bpb;

		if (nexus_bm_block_check(b, bm->blk, k, n->uuid) == 0) {
			continue;
		}
		bad++;
		KEEL_WARNLOG("volume %s: replica %s: write-intent bitmap block %u fails its "
			     "checksum: regions %u-%u (volume bytes %lu-%lu) count as dirty and "
			     "are resynced",
			     n->name, n->replicas[bm->load_slot].bdev_name, k, r0, r1 - 1,
			     (unsigned long)((uint64_t)r0 * bm->region_size),
			     (unsigned long)((uint64_t)r1 * bm->region_size - 1));
		for (uint32_t r = r0; r < r1; r++) {
			image_set(bm, r, true);
		}
	}
	return bad;
}

static void load_next(struct nexus_bitmap *bm);

/* All copies read: the regions set in any of them are set, the coverage is the
 * weakest one's. Any unreadable or invalid copy makes the whole bitmap invalid
 * (full copies), as a single invalid copy did. */
static void load_finish(struct nexus_bitmap *bm)
{
	struct nexus *n = bm->n;
	uint32_t set = 0, merged_in = 0;

	if (!bm->load_invalid && bm->load_valid > 0) {
		/* bm->image holds the last copy read (valid): add the others' bits. */
		for (uint32_t r = 0; r < bm->nbits; r++) {
			if (bm->load_merged[r] && !image_get(bm, r)) {
				image_set(bm, r, true);
				merged_in++;
			}
			if (image_get(bm, r)) {
				atomic_store(&bm->bits[r], BIT_SET);
				set++;
			}
		}
		bm->events_cleared = bm->load_ec;
		if (set > 0) {
			clear_schedule(bm);
		}
		/* Rewrite every replica's copy at first chance: bad blocks are repaired
		 * and all replicas hold the same (merged) bits again. */
		bm->need_full = bm->load_bad > 0 || merged_in > 0;
		KEEL_NOTICELOG("volume %s: write-intent bitmap loaded: %u of %u regions of %lu KiB "
			       "set, events_cleared %lu%s%s",
			       n->name, set, bm->nbits, (unsigned long)(bm->region_size / 1024),
			       (unsigned long)bm->events_cleared,
			       bm->load_bad ? " (bad blocks counted as set, rewriting the bitmap)"
					    : "",
			       merged_in ? " (copies differed: merged, rewriting the bitmap)" : "");
	} else {
		memset(bm->image, 0, bm->image_len);
		bm->events_cleared = UINT64_MAX;
		bm->need_full = true;
	}
	free(bm->load_merged);
	bm->load_merged = NULL;
	bm->load_done(n);
}

static void load_done_cb(void *arg, int status)
{
	struct nexus_bitmap *bm = arg;
	struct nexus *n = bm->n;
	char why[96] = "read failed";

	if (status == 0 && load_header_ok(bm, why, sizeof(why))) {
		bm->load_bad += load_check_blocks(bm);
		for (uint32_t r = 0; r < bm->nbits; r++) {
			bm->load_merged[r] |= image_get(bm, r);
		}
		if (bm->events_cleared < bm->load_ec) {
			bm->load_ec = bm->events_cleared;
		}
		bm->load_valid++;
	} else {
		KEEL_WARNLOG("volume %s: replica %s: no valid write-intent bitmap (%s): returning "
			     "replicas get full rebuilds; a new bitmap is written",
			     n->name, n->replicas[bm->load_slot].bdev_name, why);
		bm->load_invalid = true;
	}
	load_next(bm);
}

static void load_next(struct nexus_bitmap *bm)
{
	struct nexus_replica *r;
	int rc;

	if (bm->load_mask == 0 || bm->load_invalid) {
		load_finish(bm);
		return;
	}
	bm->load_slot = (unsigned)__builtin_ctz(bm->load_mask);
	bm->load_mask &= (uint16_t)~nexus_bit(bm->load_slot);
	r = &bm->n->replicas[bm->load_slot];
	rc = keel_bdev_read(r->desc, r->label_ch, bm->image, NEXUS_BITMAP_OFFSET, bm->image_len,
			    load_done_cb, bm);
	if (rc != 0) {
		load_done_cb(bm, rc);
	}
}

/*
 * Assembly reads the copy of every healthy member and merges them. The copies are
 * the same while members stay up, but not after a power cut: a member whose disk
 * died first, whose fault then never reached the labels (every other disk died
 * before), comes back healthy with a copy that misses the regions written after it
 * died; the others' copies hold them. Reading only the first member's copy let the
 * unclean-shutdown resync skip such a region, and the replicas stayed different
 * (powercut_ut one_disk_bitmap_merge).
 */
void nexus_bitmap_load(struct nexus *n, uint16_t mask, void (*done)(struct nexus *n))
{
	struct nexus_bitmap *bm = n->bm;

	bm->load_done = done;
	bm->load_mask = mask;
	bm->load_valid = 0;
	bm->load_bad = 0;
	bm->load_invalid = false;
	bm->load_ec = UINT64_MAX;
	bm->load_merged = calloc(bm->nbits, 1);
	if (bm->load_merged == NULL) {
		/* Cannot merge: trust no copy (full copies), as for an invalid one. */
		bm->load_invalid = true;
		load_finish(bm);
		return;
	}
	/* Finishes inline on a failed submit: the only caller (assembly) returns right
	 * after. */
	load_next(bm);
}

bool nexus_bitmap_covers(const struct nexus *n, uint64_t generation)
{
	return n->bm != NULL && nexus_assemble_covers(n->bm->events_cleared, generation);
}

uint64_t nexus_bitmap_snapshot(struct nexus *n, uint8_t *map, uint64_t *region_size,
			       uint32_t *nbits)
{
	struct nexus_bitmap *bm = n->bm;
	uint64_t c = 0;

	*region_size = bm->region_size;
	*nbits = bm->nbits;
	for (uint32_t r = 0; r < bm->nbits; r++) {
		/* Waiting writes have their bit in the image only once batched; a bit
		 * set in either place may hold a write the target missed. */
		map[r] = atomic_load(&bm->bits[r]) != BIT_CLEAR || image_get(bm, r);
		c += map[r];
	}
	return c;
}

void nexus_bitmap_info(const struct nexus *n, uint64_t *region_size, uint32_t *nbits, uint32_t *set,
		       uint64_t *events_cleared)
{
	struct nexus_bitmap *bm = n->bm;
	uint32_t c = 0;

	for (uint32_t r = 0; r < bm->nbits; r++) {
		c += atomic_load(&bm->bits[r]) != BIT_CLEAR ? 1 : 0;
	}
	*region_size = bm->region_size;
	*nbits = bm->nbits;
	*set = c;
	*events_cleared = bm->events_cleared;
}

int keel_nexus_bitmap_info(struct keel_nexus *nexus, uint64_t *region_size, uint32_t *nbits,
			   uint32_t *bits_set, uint64_t *events_cleared)
{
	struct nexus *n = (struct nexus *)nexus;

	if (n->bm == NULL) {
		return -ENOENT;
	}
	nexus_bitmap_info(n, region_size, nbits, bits_set, events_cleared);
	return 0;
}
