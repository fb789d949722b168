/*
 * Internals shared by the nexus management code (nexus.c) and data path (nexus_io.c).
 *
 * Ownership: struct nexus and its replicas[] belong to the owner (management)
 * thread. Channels never read them, with two exceptions: the per-replica atomic
 * fault flag, and the published configuration `cfg`, which is copied under
 * cfg_lock (off the I/O path: channel creation and reconfiguration only).
 */
#ifndef KEEL_NEXUS_INTERNAL_H
#define KEEL_NEXUS_INTERNAL_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include "keel/bdev.h"
#include "keel/bdev_module.h"
#include "keel/nexus.h"
#include "keel/reactor.h"

#include "nexus_assemble.h"
#include "nexus_label.h"

#define NEXUS_MAX KEEL_NEXUS_MAX_REPLICAS
/* Range locks one channel can hold at once: every task of every rebuild job of
 * the volume holds at most one (nexus_rebuild.c caps tasks accordingly). */
#define NEXUS_MAX_LOCKS (128 + NEXUS_REPAIR_MAX)
/* Read-error repairs (nexus_repair.c) running at once per volume; each holds a lock. */
#define NEXUS_REPAIR_MAX 8

struct nexus;
struct nexus_bitmap;
struct nexus_rebuild_job;

struct nexus_replica {
	struct nexus *nexus;
	bool used;   /* slot in use (listed in info) */
	bool member; /* recorded in the labels we write */
	char bdev_name[KEEL_BDEV_NAME_MAX + 1];
	uint8_t uuid[16];
	struct keel_bdev_desc *desc;      /* NULL once released */
	struct keel_io_channel *label_ch; /* owner thread's channel for label I/O */
	uint8_t *label_buf;               /* aligned, label_buf_len bytes */
	uint32_t label_buf_len;
	enum keel_nexus_replica_state state;
	enum keel_nexus_fault_reason reason;
	char detail[160];
	uint64_t generation;
	/* Set by the first channel that sees an I/O error; it alone sends the
	 * message to the owner, so a burst of errors costs one message. */
	atomic_bool fault_requested;
	atomic_int fault_status;
	/* Read errors fixed by rewriting the range (nexus_repair.c), any thread. */
	_Atomic uint64_t read_errors_repaired;
	bool fault_seen;    /* owner: the request behind fault_requested arrived */
	bool fault_pending; /* owner: a fault message arrived, not yet committed */
	bool foreign;       /* refused: labelled for another volume */
	/* Rejoin (re-add of a former member): what its own label said, for the
	 * bitmap coverage check (nexus_bitmap_covers). */
	bool rejoin;
	bool rejoin_in_sync;
	uint64_t rejoin_generation;
	bool rejoin_tried; /* a stale replica is re-added automatically once */
	bool rb_started;   /* a rebuild job was created for this membership */
	bool removing;     /* free the slot once the change is committed */
	int label_status;  /* owner: result of the last label I/O */
	uint32_t label_step;
	/* Assembly / create: what was read from the two copies. */
	int label_rc;
	struct nexus_label label;
	char label_why[96];
};

/* What channels see of a replica slot. */
struct nexus_cfg_slot {
	struct keel_bdev_desc *desc; /* NULL: slot not attached */
	bool readable;               /* healthy */
	bool writable;               /* healthy or rebuilding */
};

struct nexus_cfg {
	bool frozen;  /* hold new writes (a label update is in flight) */
	bool faulted; /* volume faulted: fail every I/O at once */
	struct nexus_cfg_slot slots[NEXUS_MAX];
};

enum nexus_op_type {
	NEXUS_OP_ADMIN_FAULT,
	NEXUS_OP_REMOVE,
	NEXUS_OP_ADD,
	NEXUS_OP_DESTROY,
	NEXUS_OP_CREATE,
	NEXUS_OP_OPEN,
	NEXUS_OP_REBUILD_DONE, /* a rebuild completed: the target becomes healthy */
};

struct nexus_op {
	enum nexus_op_type type;
	int slot;
	bool wipe;
	bool force;
	keel_nexus_op_cb cb_fn;
	void *cb_arg;
	int status;
	char errmsg[256];
	TAILQ_ENTRY(nexus_op) link;
};

struct nexus {
	struct keel_bdev bdev;
	char name[KEEL_NEXUS_NAME_MAX + 1];
	uint8_t uuid[16];
	struct keel_thread *owner;
	struct nexus_replica replicas[NEXUS_MAX];
	uint64_t generation;
	uint64_t volume_size;
	uint64_t data_offset;
	uint32_t block_size;
	bool unclean_shutdown;
	enum keel_nexus_state state;
	char state_detail[512];
	bool registered;
	bool io_device_registered;
	bool supports_unmap;

	pthread_mutex_t cfg_lock;
	struct nexus_cfg cfg; /* published; guarded by cfg_lock */
	/* Every channel of the volume, guarded by cfg_lock: rebuild jobs sum their
	 * user_ios from their own thread once per ms to see foreground load. */
	TAILQ_HEAD(, nexus_channel) chans;

	/* Membership changes run one at a time on the owner thread. */
	TAILQ_HEAD(, nexus_op) ops;
	struct nexus_op *cur_op;
	bool busy;
	bool faults_queued; /* a fault pass should run */
	uint32_t label_pending;
	uint16_t unreadable_mask; /* slots no channel may read from from now on */
	void (*label_done_fn)(struct nexus *nexus);
	struct nexus_op *destroy_op;
	bool destroying;
	bool destruct_waiting; /* destruct arrived while a change ran */
	bool name_given;       /* assembly: the caller named the volume */
	/* Write-intent bitmap (nexus_bitmap.c); NULL when disabled. */
	struct nexus_bitmap *bm;
	/* Rebuild jobs of this volume (nexus_rebuild.c), owner thread only. */
	TAILQ_HEAD(, nexus_rebuild_job) jobs;
	uint32_t sync_pending;   /* rebuild jobs yet to acknowledge a sync */
	bool rb_shutdown;        /* destroy: jobs are being stopped */
	uint64_t bm_region_hint; /* region size recorded in the labels (assembly) */
	/* Fault messages sent (or waiting to be sent) and not yet handled: the
	 * struct outlives the volume until they are (free_deferred). */
	atomic_uint fault_msgs;
	bool free_deferred;
	void (*sync_cont)(struct nexus *n);
	atomic_uint repairs_active; /* nexus_repair.c, any thread */
	TAILQ_ENTRY(nexus) link;
};

/* Per-request context, inside the bdev_io's driver_ctx: no allocation per I/O. */
struct nexus_child_io {
	struct keel_bdev_io *parent;
	uint8_t slot;
};

struct nexus_channel;

struct nexus_io {
	struct nexus_channel *nch;
	uint32_t pending;      /* children still to answer */
	uint16_t healthy_mask; /* children that were readable at submission */
	uint16_t failed_mask;  /* children that failed (or were known bad) */
	uint16_t ok_healthy;   /* healthy children that succeeded */
	uint16_t tried_mask;   /* reads: children tried so far */
	uint16_t repair_mask;  /* reads: children whose read failed, to repair */
	int last_err;
	struct nexus_child_io child[NEXUS_MAX];
};

struct nexus_lock_range {
	uint64_t start;    /* bytes, volume address space */
	uint64_t end;      /* exclusive */
	const void *owner; /* the rebuild task holding it */
};

struct nexus_lock_wait {
	const void *owner;
	struct keel_io_channel_iter *iter;
};

struct nexus_child_ch {
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	uint32_t outstanding;
	bool readable;
	bool writable;
	bool failed;    /* an error was seen here; fault requested */
	bool detaching; /* dropped by the config; put when outstanding == 0 */
	bool read_last; /* its bdev says reads are costly (a replica on another host) */
};

struct nexus_channel {
	struct nexus *nexus;
	struct nexus_child_ch children[NEXUS_MAX];
	uint8_t writers[NEXUS_MAX];
	uint8_t readers[NEXUS_MAX];
	uint8_t n_writers;
	uint8_t n_readers;
	uint32_t rr;
	bool frozen;
	bool faulted;
	uint32_t writes_inflight;
	uint32_t detaching; /* children waiting to drain before their put */
	struct keel_io_channel_iter *drain_iter;
	struct keel_io_channel_iter *detach_iter;
	TAILQ_HEAD(, keel_bdev_io) held; /* writes waiting for a label update */
	/* Partly failed writes waiting for the fault to reach the labels. */
	TAILQ_HEAD(, keel_bdev_io) parked;
	/* Rebuild range locks (nexus_rebuild.c). Writes in flight are listed so a
	 * lock is granted only once overlapping ones are done; writes that overlap
	 * a held lock wait in lock_waiting. */
	TAILQ_HEAD(, keel_bdev_io) inflight;
	TAILQ_HEAD(, keel_bdev_io) lock_waiting;
	uint32_t n_locks;
	uint32_t n_lock_waits;
	struct nexus_lock_range locks[NEXUS_MAX_LOCKS];
	struct nexus_lock_wait lock_waits[NEXUS_MAX_LOCKS];
	/* Write-intent bitmap, this thread's share (nexus_bitmap.c): per region,
	 * writes in flight from this channel (low 15 bits) and "written since the
	 * last clear pass" (top bit). Only this thread touches it, so a write to a
	 * region whose bit is set costs no shared atomic; the clear pass gathers
	 * the counts with keel_for_each_channel. NULL without a bitmap. */
	uint16_t *bm_cnt;
	/* User I/O submitted on this channel (adaptive rebuild back-off). Written
	 * by this thread only (relaxed load + store: no locked instruction), read
	 * by rebuild jobs, for which a stale value only delays one sample. */
	_Atomic uint64_t user_ios;
	TAILQ_ENTRY(nexus_channel) clink; /* nexus.chans */
};

/* Owner-independent, any thread: total user I/Os submitted on \p n so far. */
uint64_t nexus_user_ios(struct nexus *n);

/* nexus_io.c */
extern const struct keel_bdev_fn_table nexus_bdev_fn_table;
int nexus_channel_create(void *io_device, void *ctx_buf);
void nexus_channel_destroy(void *io_device, void *ctx_buf);
/* for_each_channel steps driven by nexus.c; ctx is the nexus. */
void nexus_channel_freeze(struct keel_io_channel_iter *iter);
void nexus_channel_apply(struct keel_io_channel_iter *iter);

/* Range-lock steps run by keel_for_each_channel from a rebuild job; ctx is a
 * struct nexus_lock_range. */
void nexus_channel_lock(struct keel_io_channel_iter *iter);
void nexus_channel_unlock(struct keel_io_channel_iter *iter);
/* A write whose bitmap bits are now durable, back on its channel's thread. */
void nexus_write_resume(void *arg);

static inline uint16_t nexus_bit(unsigned s)
{
	return (uint16_t)(1u << s);
}

/* In the I/O path: a member, open, and healthy or rebuilding. */
static inline bool nexus_replica_attached(const struct nexus_replica *r)
{
	return r->used && r->member && r->desc != NULL &&
	       (r->state == KEEL_NEXUS_REPLICA_HEALTHY ||
		r->state == KEEL_NEXUS_REPLICA_REBUILDING);
}

/* Channel thread: an I/O the caller submitted on child \p s of \p nch (after
 * outstanding++) is done; puts a detaching child once drained. */
void nexus_child_io_end(struct nexus_channel *nch, unsigned s);

/* nexus_repair.c */
/* A read error that may be a bad range (a media error), worth rewriting: -EIO and the
 * codes a checksum or media check reports. Others (the device is gone, the
 * connection dropped: -ENXIO, -ENODEV, -ENOTCONN, ...) fault the replica at once. */
static inline bool nexus_read_error_repairable(int status)
{
	return status == -EIO || status == -EILSEQ || status == -EBADMSG || status == -ENODATA;
}
/* Channel thread: a read of volume bytes \p off + \p len failed on slot \p bad and
 * succeeded on \p src. Rewrite the range on \p bad from \p src under a range lock and
 * read it back; fault \p bad only if that fails. Runs on its own (no callback). */
void nexus_repair_start(struct nexus_channel *nch, unsigned bad, unsigned src, uint64_t off,
			uint64_t len);

/* nexus.c: lifecycle */
int nexus_destruct(void *ctx);
/* Free the struct itself (the last fault message of a destroyed volume does). */
void nexus_free_struct(struct nexus *n);
/* Create or open failed before the bdev was registered: release, report \p op, free. */
void nexus_create_abort(struct nexus *n, struct nexus_op *op);
/* Register the volume as a bdev (and list it). \return 0 or -errno. */
int nexus_register_bdev(struct nexus *n);

/* nexus_commit.c: the membership step */
/* Slots of the attached (healthy or rebuilding) replicas. */
uint16_t nexus_attached_mask(const struct nexus *n);
unsigned nexus_count_healthy(const struct nexus *n);
/* Publish the configuration channels apply (under cfg_lock). */
void nexus_publish_cfg(struct nexus *n, bool frozen);
/* One membership step: new generation, labels on every member, new config (or,
 * with no healthy replica left, the volume faulted); ends with nexus_op_finish. */
void nexus_commit(struct nexus *n);

/* nexus_member.c: membership API */
/* Slot of the replica named \p replica (bdev name or replica UUID), or -ENODEV. */
int nexus_find_replica(struct nexus *n, const char *replica);
/* The add op's step once the new replica's labels were read. */
void nexus_add_label_checked(struct nexus *n);

/* nexus_replica.c: replica bdevs and their label I/O (owner thread) */
/* Open and claim \p bdev_name into slot \p s (reset first). \return 0, or -errno with
 * the reason in \p err. */
int nexus_replica_attach(struct nexus *n, unsigned s, const char *bdev_name, char *err,
			 size_t errlen);
/* Close the bdev of \p r and drop its label buffer and channel (slot stays listed). */
void nexus_replica_release(struct nexus_replica *r);
/* Bytes of the replica's bdev (attached). */
uint64_t nexus_replica_size(const struct nexus_replica *r);
/* Read both label copies of the slots in \p mask (into label_rc, label), then done(n). */
void nexus_labels_read(struct nexus *n, uint16_t mask, void (*done)(struct nexus *n));
/* Write (\p wipe: zero) both label copies of the slots in \p mask, \p clean or dirty;
 * per-slot result in label_status; then done(n). */
void nexus_labels_write(struct nexus *n, uint16_t mask, bool wipe, bool clean,
			void (*done)(struct nexus *n));

/* nexus_op.c: the operation queue (owner thread unless said otherwise) */
struct nexus_op *nexus_op_new(enum nexus_op_type type, keel_nexus_op_cb cb_fn, void *cb_arg);
/* Record the failure of \p op: status and message for its callback. */
void nexus_op_fail(struct nexus_op *op, int status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Report \p op by message on this thread and free it (\p n: the volume, on success). */
void nexus_op_complete(struct nexus_op *op, struct nexus *n);
/* Append \p op and run the queue. \return 0. */
int nexus_op_queue(struct nexus *n, struct nexus_op *op);
/* Run \p op now (the queue chose it, or create/open prepared it). */
void nexus_op_run(struct nexus *n, struct nexus_op *op);
/* The current op is done: report it, then the next one (or a waiting destruct). */
void nexus_op_finish(struct nexus *n);
/* Start the next piece of work if nothing runs: bitmap writes, faults, ops. */
void nexus_kick(struct nexus *n);
/* A fault request for \p r reached the owner (message or bdev event). */
void nexus_fault_arrived(struct nexus_replica *r);
/* Ask the owner to fault replica slot \p s (from any thread; one message for the
 * first request, retried while the owner's ring is full, never lost). */
void nexus_request_fault(struct nexus *n, unsigned s, int status);
/* Queue a membership step making slot \p s healthy (its rebuild completed). */
int nexus_queue_rebuild_done(struct nexus *n, unsigned s);
/* Queue re-adding the bdev of stale/faulted slot \p s (rejoin). */
int nexus_queue_rejoin(struct nexus *n, unsigned s);

/* nexus_bitmap.c: write-intent bitmap. Offsets are volume bytes. */
int nexus_bitmap_create(struct nexus *n);
void nexus_bitmap_free(struct nexus *n);
/* A new volume: covers from generation 1, whole image written at first chance. */
void nexus_bitmap_init_new(struct nexus *n);
/* Write path, on the channel's thread: true = covered, the write may go (counted
 * in flight on \p nch); false = its bits are not durable yet (or are being
 * cleared): hand the io to nexus_bitmap_wait. */
bool nexus_bitmap_write_start(struct nexus_channel *nch, uint64_t off, uint64_t len);
void nexus_bitmap_write_end(struct nexus_channel *nch, uint64_t off, uint64_t len);
/* Channel create/destroy: this thread's share of the bitmap. */
int nexus_bitmap_channel_init(struct nexus_channel *nch);
void nexus_bitmap_channel_fini(struct nexus_channel *nch);
void nexus_bitmap_wait(struct nexus *n, struct keel_bdev_io *io);
/* Owner: true when a bitmap write is in flight (membership steps wait). */
bool nexus_bitmap_busy(struct nexus *n);
/* Owner: start queued bitmap work if any; true if started. */
bool nexus_bitmap_kick(struct nexus *n);
/* Owner: write the whole image to slot \p s, then call done(n, status). */
void nexus_bitmap_write_full(struct nexus *n, unsigned s,
			     void (*done)(struct nexus *n, int status));
/* Owner: read the bitmaps of the healthy slots in \p mask (assembly) and merge them
 * (a region set in any is set), then done(n). */
void nexus_bitmap_load(struct nexus *n, uint16_t mask, void (*done)(struct nexus *n));
/* Does the bitmap cover the absence of a member whose label said \p generation? */
bool nexus_bitmap_covers(const struct nexus *n, uint64_t generation);
/* Snapshot set regions into \p map (bytes of one bit per region); \return count. */
uint64_t nexus_bitmap_snapshot(struct nexus *n, uint8_t *map, uint64_t *region_size,
			       uint32_t *nbits);
void nexus_bitmap_fill_label(const struct nexus *n, struct nexus_label *l);
void nexus_bitmap_info(const struct nexus *n, uint64_t *region_size, uint32_t *nbits, uint32_t *set,
		       uint64_t *events_cleared);

/* nexus_rebuild.c */
/* Owner: a membership step froze the channels; settle every job against the new
 * replica states (switch source, cancel on a lost target) before going on. */
void nexus_rebuild_sync(struct nexus *n, void (*cont)(struct nexus *n));
/* Owner: stop and forget every job of \p n, then cont(n) (destroy). */
void nexus_rebuild_shutdown(struct nexus *n, void (*cont)(struct nexus *n));
/* Owner: after a step: start the automatic rebuilds (added/rejoined replicas). */
void nexus_rebuild_auto(struct nexus *n);
void nexus_rebuild_forget(struct nexus *n);
/* Owner: drop the ended jobs whose target is replica \p uuid (being removed), so a
 * volume whose replicas are replaced again and again does not grow. */
void nexus_rebuild_forget_target(struct nexus *n, const uint8_t *uuid);

#endif /* KEEL_NEXUS_INTERNAL_H */
