/*
 * bdev core internals shared between the bdev sources and the unit tests.
 *
 * Where things live:
 *   bdev.c         control plane: options, modules, registry, registration,
 *                  descriptors, claims, events, unregister, subsystem
 *   bdev_io.c      request path: channels, pooled requests, submission, waiting,
 *                  completion, -ENOMEM retry, reset
 *   bdev_split.c   lanes: splitting, write_zeroes emulation, the zero buffer
 *   bdev_bounce.c  bounce buffers for misaligned data
 *   bdev_stats.c   statistics
 *
 * Layout of one pooled request object (per-channel keel_mempool):
 *
 *     [struct keel_bdev_io_internal][struct keel_bdev_io][driver ctx (get_ctx_size)]
 *
 * The internal part sits in front so the public struct can keep its flexible
 * driver_ctx[] member last.
 */
#ifndef KEEL_BDEV_INTERNAL_H
#define KEEL_BDEV_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/uio.h>

#include "keel/bdev.h"
#include "keel/bdev_module.h"
#include "keel/reactor.h"
#include "keel/util.h"

#define BDEV_IO_NUM_IOV 16 /* iovec slots per request for split slices */
#define BDEV_MAX_LANES 8   /* split chunks one request keeps in flight at most */
#define BDEV_ZERO_BUF_SIZE (1024u * 1024u)
#define BDEV_MAX_ALIGN 65536u /* largest required_alignment; the zero buffer honours it */
#define BDEV_NOMEM_RETRY_US 100

enum bdev_state {
	BDEV_STATE_REGISTERED = 0,
	BDEV_STATE_REMOVING = 1,
};

struct keel_bdev_desc {
	struct keel_bdev *bdev;
	struct keel_thread *thread;
	keel_bdev_event_cb event_cb;
	void *event_ctx;
	bool write;
	bool closed;
	/* References (atomic): one for the open, one per REMOVE/RESIZE message not yet
	 * delivered or dropped. The desc outlives close until the last is put. */
	uint32_t refs;
	TAILQ_ENTRY(keel_bdev_desc) link;
};

struct keel_bdev_internal {
	char name[KEEL_BDEV_NAME_MAX + 1];
	char uuid_str[KEEL_UUID_STR_LEN];
	void *io_dev; /* (char *)bdev + 1: the bdev's own io_device */
	uint32_t block_shift;
	uint64_t block_mask;
	uint32_t align_mask;  /* iov_base alignment: required_alignment - 1 */
	uint32_t len_mask;    /* iov_len granularity: min(alignment, block size) - 1 */
	uint32_t io_elt_size; /* bytes of one pooled request object */
	bool simple;          /* no boundary, no max transfer, no alignment: skip checks */
	bool native[KEEL_BDEV_IO_NUM_TYPES];
	int state; /* enum bdev_state, atomic: read on every submit */

	pthread_mutex_t lock; /* descs, claim, closed_stats, channel count, teardown */
	TAILQ_HEAD(, keel_bdev_desc) descs;
	uint32_t open_count;
	struct keel_bdev_module *claim_module;
	struct keel_bdev_desc *claim_desc;
	struct keel_bdev_io_stats closed_stats;
	uint32_t live_channels; /* bdev_channel structs alive, including orphans */
	bool io_dev_unregistered;
	bool teardown_started;
	bool destructing;

	keel_bdev_done_cb unreg_cb;
	void *unreg_arg;
	struct keel_thread *unreg_thread;
};

/*
 * One request as the caller described it, validated (bdev_submit): what a bdev_io is
 * started from, and all a request parked for want of a pooled object keeps.
 */
struct bdev_request {
	struct keel_bdev_desc *desc;
	enum keel_bdev_io_type type;
	struct iovec *iovs; /* the caller's; NULL: flat buffer \p buf (or no data) */
	int iovcnt;
	void *buf;
	uint64_t iov_bytes; /* bytes the iovecs hold: >= the request's length */
	uint64_t offset_blocks;
	uint64_t num_blocks;
	uint32_t flags;
	keel_bdev_io_cb cb_fn;
	void *cb_arg;
};

/* A request parked until a pooled object frees up (FIFO per channel). */
struct bdev_wait {
	TAILQ_ENTRY(bdev_wait) link;
	struct bdev_request req;
};

struct bdev_wait_chunk {
	struct bdev_wait_chunk *next;
	struct bdev_wait entries[64];
};

struct keel_bdev_io_internal {
	struct bdev_channel *ch;
	struct keel_bdev_io *io;
	keel_bdev_io_cb cb_fn;
	void *cb_arg;
	uint64_t submit_tsc;
	int status;
	uint8_t user_type; /* the type the caller asked for (stats, emulation) */
	uint8_t epoch;     /* reset epoch this request counts in */
	bool counted;      /* counts in ch->inflight[epoch] */
	bool is_lane;      /* a split chunk (the parent itself or a child) */
	bool is_child;
	bool bounce;       /* the request's buffers need bouncing */
	uint32_t nextents; /* get_allocation: runs added so far (keel_bdev_io_add_extent) */
	TAILQ_ENTRY(keel_bdev_io_internal) link; /* deferred / nomem / bounce wait */

	struct iovec flat; /* iovec for the flat-buffer API */

	/* Split state (valid in a parent that is split). */
	struct keel_bdev_io *parent;
	struct iovec *orig_iovs;
	int orig_iovcnt;
	uint64_t orig_offset;
	uint64_t orig_num;
	uint64_t next_block; /* first block not yet handed to a lane */
	int cur_iov;         /* iovec cursor of next_block */
	uint64_t cur_off;
	uint32_t lanes; /* lanes currently holding a chunk */
	int split_status;
	uint8_t lane_type; /* type the lanes submit */

	/* Lane state. */
	void *bounce_buf;
	int copy_iov; /* where this chunk's data sits in the parent's iovs */
	uint64_t copy_off;
	struct keel_io_channel_iter *reset_iter;
	TAILQ_ENTRY(keel_bdev_io_internal) reset_link;
	struct iovec lane_iovs[BDEV_IO_NUM_IOV];
} __attribute__((aligned(64)));

struct bdev_channel {
	struct keel_bdev *bdev;
	struct keel_thread *thread;
	struct keel_io_channel *module_ch;
	void (*submit_fn)(struct keel_io_channel *ch, struct keel_bdev_io *io);
	struct keel_mempool_cache *cache;
	uint32_t in_submit;   /* >0: completions must be deferred */
	uint32_t outstanding; /* user requests accepted and not yet completed */
	bool draining;
	bool drain_pending;
	bool now_valid; /* now_tsc is the batch timestamp */
	bool destroyed; /* io_channel gone; freed when outstanding drops to 0 */
	uint8_t epoch;
	uint32_t inflight[2];
	uint64_t now_tsc;
	TAILQ_HEAD(, keel_bdev_io_internal) deferred;

	TAILQ_HEAD(, bdev_wait) waitq;
	TAILQ_HEAD(, bdev_wait) wait_free;
	struct bdev_wait_chunk *wait_chunks;

	TAILQ_HEAD(, keel_bdev_io_internal) nomem_q;
	struct keel_poller *nomem_poller;
	struct keel_poller *drain_poller;

	char *bounce_region;
	void **bounce_free;
	uint32_t bounce_nfree;
	uint32_t bounce_count;
	uint32_t bounce_size;
	TAILQ_HEAD(, keel_bdev_io_internal) bounce_waitq;

	TAILQ_HEAD(, keel_bdev_io_internal) reset_waiters;

	struct keel_mempool *pool;
	uint64_t lat_us_mult; /* bdev_stats_us_mult(), next to the stats it serves */
	struct keel_bdev_io_stats stats;
};

static inline struct keel_bdev *bdev_from_io_dev(void *io_dev)
{
	return (struct keel_bdev *)((char *)io_dev - 1);
}

static inline struct bdev_channel *bdev_ch(struct keel_io_channel *ioch)
{
	return *(struct bdev_channel **)keel_io_channel_get_ctx(ioch);
}

/* bdev.c: the module's destruct, once the last channel and the io_device are gone. */
void bdev_destruct(struct keel_bdev *bdev);

/* ------------------------------------------------------------------------------ */
/* The request path (bdev_io.c)                                                    */
/* ------------------------------------------------------------------------------ */

/* io_device callbacks of every bdev (keel_bdev_register). */
int bdev_channel_create(void *io_dev, void *ctx_buf);
void bdev_channel_destroy(void *io_dev, void *ctx_buf);
/* Fail with \p status the requests of \p ch that have not reached the module. */
void bdev_channel_fail_queued(struct bdev_channel *ch, int status);
/* Start \p req on pooled object \p obj of \p ch. */
void bdev_io_start(struct bdev_channel *ch, void *obj, const struct bdev_request *req);
/* A user request is done (status in in->status): account, free, call back. */
void bdev_user_complete(struct bdev_channel *ch, struct keel_bdev_io_internal *in);

static inline void bdev_submit_module(struct bdev_channel *ch, struct keel_bdev_io *io)
{
	ch->in_submit++;
	ch->submit_fn(ch->module_ch, io);
	ch->in_submit--;
}

static inline void bdev_wait_put(struct bdev_channel *ch, struct bdev_wait *w)
{
	TAILQ_INSERT_HEAD(&ch->wait_free, w, link);
}

/* Return a request object to the cache, or straight to the oldest waiting request. */
static inline void bdev_io_free(struct bdev_channel *ch, struct keel_bdev_io *io)
{
	struct bdev_wait *w = TAILQ_FIRST(&ch->waitq);

	if (keel_likely(!w)) {
		keel_mempool_cache_put(ch->cache, io->internal);
		return;
	}
	/* Hand the object straight to the oldest waiter: no queue jumping. */
	TAILQ_REMOVE(&ch->waitq, w, link);
	bdev_io_start(ch, io->internal, &w->req);
	bdev_wait_put(ch, w);
}

/* bdev_split.c: shared read-only zero buffer (BDEV_ZERO_BUF_SIZE, BDEV_MAX_ALIGN aligned), allocated
 * by the first call; NULL when that allocation failed. */
const void *bdev_zero_buf(void);

/* ------------------------------------------------------------------------------ */
/* Bounce buffers (bdev_bounce.c)                                                  */
/* ------------------------------------------------------------------------------ */

/* Channel create: the buffer count and size from \p opts (nothing allocated yet). */
void bdev_bounce_channel_init(struct bdev_channel *ch, const struct keel_bdev_opts *opts);
void bdev_bounce_channel_fini(struct bdev_channel *ch);
/* true when \p iovs break the module's alignment rule (bi->align_mask, len_mask). */
bool bdev_iovs_misaligned(const struct keel_bdev_internal *bi, const struct iovec *iovs,
			  int iovcnt);
/* Give lane \p lin a bounce buffer: false when none is free (or none could be
 * allocated); the caller then queues it in ch->bounce_waitq. */
bool bdev_bounce_get(struct bdev_channel *ch, struct keel_bdev_io_internal *lin);
/* Return the lane's buffer; the first lane waiting for one resumes with it. */
void bdev_bounce_put(struct bdev_channel *ch, struct keel_bdev_io_internal *lin);

/* ------------------------------------------------------------------------------ */
/* Lanes: splitting, bouncing, write_zeroes emulation (bdev_split.c)              */
/* ------------------------------------------------------------------------------ */

/* Start request \p p as lanes of \p lane_type chunks (\p bounce: through bounce buffers). */
void bdev_split_start(struct bdev_channel *ch, struct keel_bdev_io_internal *p,
		      enum keel_bdev_io_type lane_type, bool bounce);
/* Hand lane \p lin its next chunk of its parent, or finish it. */
void bdev_lane_next(struct bdev_channel *ch, struct keel_bdev_io_internal *lin);
/* A lane's chunk completed (the module answered; status in lin->status). */
void bdev_lane_done(struct bdev_channel *ch, struct keel_bdev_io_internal *lin);

/* ------------------------------------------------------------------------------ */
/* Statistics (bdev_stats.c)                                                       */
/* ------------------------------------------------------------------------------ */

/* Once per process, before the first channel: calibrates keel_ticks(). */
void bdev_stats_init(void);
/* Factor f with (ticks * f) >> 32 == microseconds; channels keep a copy. */
uint64_t bdev_stats_us_mult(void);
/* Add the counters of \p src to \p dst (same units). */
void bdev_stats_add(struct keel_bdev_io_stats *dst, const struct keel_bdev_io_stats *src);

/* Account one completed user request of \p type on \p ch: \p lat in keel_ticks(). */
static inline void bdev_stats_record(struct bdev_channel *ch, unsigned type, uint64_t bytes,
				     int status, uint64_t lat)
{
	struct keel_bdev_io_stats *s = &ch->stats;
	uint64_t us = (lat * ch->lat_us_mult) >> 32;
	uint32_t b = 0;

	if (us >= 2) {
		b = 63 - (uint32_t)__builtin_clzll(us);
		if (b >= KEEL_BDEV_LAT_BUCKETS) {
			b = KEEL_BDEV_LAT_BUCKETS - 1;
		}
	}
	s->ops[type]++;
	s->bytes[type] += bytes;
	s->errors[type] += status != 0;
	s->lat_sum_ns[type] += lat;
	if (lat > s->lat_max_ns[type]) {
		s->lat_max_ns[type] = lat;
	}
	s->lat_hist[type][b]++;
}

#endif /* KEEL_BDEV_INTERNAL_H */
