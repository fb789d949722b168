/*
 * Nexus data path: per-thread channels and request fan-out.
 *
 * Every request carries its child contexts in the bdev_io's driver_ctx and every
 * channel holds a fixed array of child channels, so the path allocates nothing.
 * A channel only reads its own state; it learns about membership changes from the
 * owner thread's freeze/apply walks (keel_for_each_channel).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "keel/log.h"

#include "nexus_internal.h"

static void channel_rebuild_lists(struct nexus_channel *nch)
{
	nch->n_writers = 0;
	nch->n_readers = 0;
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct nexus_child_ch *cc = &nch->children[s];

		/* A child whose channel could not be had is still a writer: marked
		 * failed, so writes count it as failed and wait for its fault. */
		if (cc->desc == NULL || cc->detaching) {
			continue;
		}
		if (cc->writable) {
			nch->writers[nch->n_writers++] = (uint8_t)s;
		}
		if (cc->readable && !cc->failed && cc->ch != NULL) {
			nch->readers[nch->n_readers++] = (uint8_t)s;
		}
	}
}

static void channel_continue_iter(struct keel_io_channel_iter **piter)
{
	struct keel_io_channel_iter *iter = *piter;

	*piter = NULL;
	keel_for_each_channel_continue(iter, 0);
}

/* A dropped child is put only when nothing is in flight on it, so its completions
 * always find a live channel; the apply walk waits for that before moving on. */
static void child_put_if_drained(struct nexus_channel *nch, unsigned s)
{
	struct nexus_child_ch *cc = &nch->children[s];

	if (!cc->detaching || cc->outstanding > 0) {
		return;
	}
	if (cc->ch != NULL) {
		keel_put_io_channel(cc->ch);
	}
	memset(cc, 0, sizeof(*cc));
	nch->detaching--;
	if (nch->detaching == 0 && nch->detach_iter != NULL) {
		channel_continue_iter(&nch->detach_iter);
	}
}

/* Called on any thread: stop using the child here at once and tell the owner.
 * The message is retried from this thread (not this channel) while the owner's
 * ring is full, so it survives the channel: parked writes wait for it. */
static void report_fault(struct nexus_channel *nch, unsigned s, int status)
{
	struct nexus_child_ch *cc = &nch->children[s];

	if (!cc->failed) {
		cc->failed = true;
		channel_rebuild_lists(nch);
	}
	nexus_request_fault(nch->nexus, s, status);
}

static void lock_waits_check(struct nexus_channel *nch);

void nexus_child_io_end(struct nexus_channel *nch, unsigned s)
{
	nch->children[s].outstanding--;
	child_put_if_drained(nch, s);
}

static bool io_tracked(const struct keel_bdev_io *io)
{
	return io->type != KEEL_BDEV_IO_FLUSH;
}

static void write_finish(struct keel_bdev_io *io)
{
	struct nexus_io *nio = keel_bdev_io_get_ctx(io);
	struct nexus_channel *nch = nio->nch;

	if (io_tracked(io)) {
		TAILQ_REMOVE(&nch->inflight, io, module_link);
		/* A write that failed somewhere keeps its regions "in flight" until it
		 * is acknowledged after the fault reached the labels: the bitmap must
		 * not clear them before the failed replica is out. */
		if (nio->failed_mask == 0 || nio->ok_healthy == 0) {
			nexus_bitmap_write_end(nch, keel_bdev_io_offset_bytes(io),
					       keel_bdev_io_num_bytes(io));
		}
		if (nch->n_lock_waits > 0) {
			lock_waits_check(nch);
		}
	}
	nch->writes_inflight--;
	if (nch->writes_inflight == 0 && nch->drain_iter != NULL) {
		channel_continue_iter(&nch->drain_iter);
	}
	if (nio->failed_mask == 0) {
		keel_bdev_io_complete(io, 0);
	} else if (nio->ok_healthy == 0) {
		/* Never report success without the data on a healthy replica. */
		keel_bdev_io_complete(io, -EIO);
	} else {
		/* Succeeded somewhere healthy, failed elsewhere: acknowledge only once
		 * the failed replicas are out of the labels, or a crash now would let
		 * them be trusted at assembly without this write. */
		TAILQ_INSERT_TAIL(&nch->parked, io, module_link);
	}
}

static void write_put(struct keel_bdev_io *io)
{
	struct nexus_io *nio = keel_bdev_io_get_ctx(io);

	if (--nio->pending == 0) {
		write_finish(io);
	}
}

static void write_child_result(struct nexus_io *nio, unsigned s, int status)
{
	if (status == 0) {
		if (nio->healthy_mask & nexus_bit(s)) {
			nio->ok_healthy++;
		}
	} else {
		nio->failed_mask |= nexus_bit(s);
		nio->last_err = status;
		report_fault(nio->nch, s, status);
	}
}

static void write_child_done(void *cb_arg, int status)
{
	struct nexus_child_io *cio = cb_arg;
	struct keel_bdev_io *io = cio->parent;
	struct nexus_io *nio = keel_bdev_io_get_ctx(io);
	struct nexus_channel *nch = nio->nch;
	unsigned s = cio->slot;

	nch->children[s].outstanding--;
	write_child_result(nio, s, status);
	child_put_if_drained(nch, s);
	write_put(io);
}

static int submit_child_write(struct nexus_channel *nch, struct keel_bdev_io *io,
			      struct nexus_child_ch *cc, struct nexus_child_io *cio)
{
	struct nexus *n = nch->nexus;
	uint64_t off = keel_bdev_io_offset_bytes(io) + n->data_offset;
	uint64_t len = keel_bdev_io_num_bytes(io);

	switch (io->type) {
	case KEEL_BDEV_IO_WRITE:
		return keel_bdev_writev(cc->desc, cc->ch, io->iovs, io->iovcnt, off, len, io->flags,
					write_child_done, cio);
	case KEEL_BDEV_IO_FLUSH:
		return keel_bdev_flush(cc->desc, cc->ch, off, len, write_child_done, cio);
	case KEEL_BDEV_IO_UNMAP:
		return keel_bdev_unmap(cc->desc, cc->ch, off, len, write_child_done, cio);
	case KEEL_BDEV_IO_WRITE_ZEROES:
		/* UNMAP only: a replica that must emulate still writes (never -ENOTSUP,
		 * which would fault it); the nexus checked NO_EMULATE for itself. */
		return keel_bdev_write_zeroes_ext(cc->desc, cc->ch, off, len,
						  io->flags & KEEL_BDEV_IO_FLAG_UNMAP,
						  write_child_done, cio);
	default:
		return -ENOTSUP;
	}
}

static bool overlaps(uint64_t a0, uint64_t a1, uint64_t b0, uint64_t b1)
{
	return a0 < b1 && b0 < a1;
}

static bool locked(struct nexus_channel *nch, uint64_t off, uint64_t len)
{
	for (uint32_t i = 0; i < nch->n_locks; i++) {
		if (overlaps(off, off + len, nch->locks[i].start, nch->locks[i].end)) {
			return true;
		}
	}
	return false;
}

static void submit_write(struct nexus_channel *nch, struct keel_bdev_io *io)
{
	struct nexus_io *nio = keel_bdev_io_get_ctx(io);

	if (io_tracked(io)) {
		uint64_t off = keel_bdev_io_offset_bytes(io);
		uint64_t len = keel_bdev_io_num_bytes(io);

		/* A rebuild segment is being copied here: wait for its unlock. */
		if (nch->n_locks > 0 && locked(nch, off, len)) {
			TAILQ_INSERT_TAIL(&nch->lock_waiting, io, module_link);
			return;
		}
		if (!nexus_bitmap_write_start(nch, off, len)) {
			nexus_bitmap_wait(nch->nexus, io);
			return;
		}
		TAILQ_INSERT_TAIL(&nch->inflight, io, module_link);
	}
	nio->pending = 1; /* held by the loop so nothing completes half-submitted */
	nio->failed_mask = 0;
	nio->ok_healthy = 0;
	nio->last_err = 0;
	nio->healthy_mask = 0;
	for (unsigned i = 0; i < nch->n_readers; i++) {
		nio->healthy_mask |= nexus_bit(nch->readers[i]);
	}
	nch->writes_inflight++;
	for (unsigned i = 0; i < nch->n_writers; i++) {
		unsigned s = nch->writers[i];
		struct nexus_child_ch *cc = &nch->children[s];
		struct nexus_child_io *cio = &nio->child[s];
		int rc;

		if (cc->failed) {
			/* Known bad here: count it as failed so the acknowledgement
			 * waits for its fault to be committed. */
			nio->failed_mask |= nexus_bit(s);
			continue;
		}
		cio->parent = io;
		cio->slot = (uint8_t)s;
		cc->outstanding++;
		nio->pending++;
		rc = submit_child_write(nch, io, cc, cio);
		if (rc != 0) {
			cc->outstanding--;
			write_child_result(nio, s, rc);
			nio->pending--;
		}
	}
	write_put(io);
}

static void submit_read(struct nexus_channel *nch, struct keel_bdev_io *io);

/* The child context of \p io for slot \p s, counted as outstanding on that child. */
static struct nexus_child_io *child_io_start(struct nexus_channel *nch, struct keel_bdev_io *io,
					     unsigned s)
{
	struct nexus_io *nio = keel_bdev_io_get_ctx(io);
	struct nexus_child_io *cio = &nio->child[s];

	cio->parent = io;
	cio->slot = (uint8_t)s;
	nch->children[s].outstanding++;
	return cio;
}

static void read_child_done(void *cb_arg, int status)
{
	struct nexus_child_io *cio = cb_arg;
	struct keel_bdev_io *io = cio->parent;
	struct nexus_io *nio = keel_bdev_io_get_ctx(io);
	struct nexus_channel *nch = nio->nch;
	unsigned s = cio->slot;

	nch->children[s].outstanding--;
	if (status == 0) {
		child_put_if_drained(nch, s);
		/* Replicas that failed this read get the good data written back. */
		for (unsigned b = 0; nio->repair_mask != 0 && b < NEXUS_MAX; b++) {
			if (nio->repair_mask & nexus_bit(b)) {
				nexus_repair_start(nch, b, s, keel_bdev_io_offset_bytes(io),
						   keel_bdev_io_num_bytes(io));
			}
		}
		keel_bdev_io_complete(io, 0);
		return;
	}
	nio->last_err = status;
	if (nexus_read_error_repairable(status)) {
		/* Not faulted yet: retried elsewhere, then repaired (nexus_repair.c). */
		nio->repair_mask |= nexus_bit(s);
	} else {
		report_fault(nch, s, status);
	}
	child_put_if_drained(nch, s);
	submit_read(nch, io);
}

/*
 * Least outstanding I/O on this channel; ties go round robin from nch->rr. Replicas
 * whose bdev reads last (on another host) are chosen only when no other can read:
 * a remote read costs a network round trip that a local one does not.
 */
static int pick_reader(struct nexus_channel *nch, uint16_t exclude)
{
	int best = -1;
	unsigned n = nch->n_readers;

	for (int pass = 0; pass < 2 && best < 0; pass++) {
		uint32_t best_out = UINT32_MAX;

		for (unsigned k = 0; k < n; k++) {
			unsigned s = nch->readers[(nch->rr + k) % n];
			struct nexus_child_ch *cc = &nch->children[s];

			if ((exclude & nexus_bit(s)) || cc->failed ||
			    cc->read_last != (pass == 1)) {
				continue;
			}
			if (cc->outstanding < best_out) {
				best_out = cc->outstanding;
				best = (int)s;
			}
		}
	}
	if (best >= 0) {
		nch->rr++;
	}
	return best;
}

static void submit_read(struct nexus_channel *nch, struct keel_bdev_io *io)
{
	struct nexus_io *nio = keel_bdev_io_get_ctx(io);
	struct nexus *n = nch->nexus;

	for (;;) {
		int s = pick_reader(nch, nio->tried_mask);
		struct nexus_child_ch *cc;
		struct nexus_child_io *cio;
		int rc;

		if (s < 0) {
			/* No copy could be read: nothing to repair from. */
			for (unsigned b = 0; nio->repair_mask != 0 && b < NEXUS_MAX; b++) {
				if (nio->repair_mask & nexus_bit(b)) {
					report_fault(nch, b, nio->last_err);
				}
			}
			keel_bdev_io_complete(io, -EIO);
			return;
		}
		cc = &nch->children[s];
		cio = child_io_start(nch, io, (unsigned)s);
		nio->tried_mask |= nexus_bit((unsigned)s);
		rc = keel_bdev_readv(cc->desc, cc->ch, io->iovs, io->iovcnt,
				     keel_bdev_io_offset_bytes(io) + n->data_offset,
				     keel_bdev_io_num_bytes(io), read_child_done, cio);
		if (rc == 0) {
			return;
		}
		cc->outstanding--;
		nio->last_err = rc;
		report_fault(nch, (unsigned)s, rc);
	}
}

static void allocation_child_done(void *cb_arg, int status)
{
	struct nexus_child_io *cio = cb_arg;
	struct keel_bdev_io *io = cio->parent;
	struct nexus_io *nio = keel_bdev_io_get_ctx(io);
	struct nexus_channel *nch = nio->nch;

	nch->children[cio->slot].outstanding--;
	child_put_if_drained(nch, cio->slot);
	keel_bdev_io_complete(io, status);
}

/*
 * Allocation query: any healthy replica answers for the volume, since they hold the
 * same data; its answer is about the same range shifted past the replica's label and
 * metadata area (data_offset), and run lengths need no translation. A replica that
 * cannot tell (-ENOTSUP) or fails the query is not a data fault: the caller gets the
 * status and treats the range as data.
 */
static void submit_get_allocation(struct nexus_channel *nch, struct keel_bdev_io *io)
{
	int s = pick_reader(nch, 0);
	struct nexus_child_ch *cc;
	struct nexus_child_io *cio;
	int rc;

	if (s < 0) {
		keel_bdev_io_complete(io, -EIO);
		return;
	}
	cc = &nch->children[s];
	cio = child_io_start(nch, io, (unsigned)s);
	rc = keel_bdev_get_allocation(
		cc->desc, cc->ch, keel_bdev_io_offset_bytes(io) + nch->nexus->data_offset,
		keel_bdev_io_num_bytes(io), io->iovs[0].iov_base,
		(uint32_t)(io->iovs[0].iov_len / sizeof(struct keel_bdev_extent)),
		allocation_child_done, cio);
	if (rc != 0) {
		cc->outstanding--;
		keel_bdev_io_complete(io, rc);
	}
}

static void nexus_submit_request(struct keel_io_channel *ch, struct keel_bdev_io *io)
{
	struct nexus_channel *nch = keel_io_channel_get_ctx(ch);
	struct nexus_io *nio = keel_bdev_io_get_ctx(io);

	nio->nch = nch;
	atomic_store_explicit(&nch->user_ios,
			      atomic_load_explicit(&nch->user_ios, memory_order_relaxed) + 1,
			      memory_order_relaxed);
	if (nch->faulted || nch->n_readers == 0) {
		/* No healthy replica: fail fast, write nowhere. */
		keel_bdev_io_complete(io, -EIO);
		return;
	}
	switch (io->type) {
	case KEEL_BDEV_IO_READ:
		nio->tried_mask = 0;
		nio->repair_mask = 0;
		nio->last_err = 0;
		submit_read(nch, io);
		break;
	case KEEL_BDEV_IO_WRITE:
	case KEEL_BDEV_IO_FLUSH:
	case KEEL_BDEV_IO_UNMAP:
	case KEEL_BDEV_IO_WRITE_ZEROES:
		if (nch->frozen) {
			TAILQ_INSERT_TAIL(&nch->held, io, module_link);
		} else {
			submit_write(nch, io);
		}
		break;
	case KEEL_BDEV_IO_RESET:
		/* The core drained every earlier request before calling us and the
		 * children have nothing of ours queued: nothing left to reset. */
		keel_bdev_io_complete(io, 0);
		break;
	case KEEL_BDEV_IO_GET_ALLOCATION:
		submit_get_allocation(nch, io);
		break;
	default:
		keel_bdev_io_complete(io, -ENOTSUP);
		break;
	}
}

/* Bring the channel's children in line with the published configuration. */
static void channel_sync(struct nexus_channel *nch)
{
	struct nexus *n = nch->nexus;
	struct nexus_cfg cfg;

	pthread_mutex_lock(&n->cfg_lock);
	cfg = n->cfg;
	pthread_mutex_unlock(&n->cfg_lock);

	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct nexus_child_ch *cc = &nch->children[s];
		struct nexus_cfg_slot *slot = &cfg.slots[s];

		if (cc->desc != NULL && !cc->detaching && cc->desc != slot->desc) {
			cc->readable = false;
			cc->writable = false;
			cc->detaching = true;
			nch->detaching++;
			child_put_if_drained(nch, s);
		}
		if (slot->desc == NULL || cc->detaching) {
			continue;
		}
		if (cc->desc == NULL) {
			cc->desc = slot->desc;
			cc->outstanding = 0;
			cc->failed = false;
			cc->read_last = keel_bdev_desc_get_bdev(slot->desc)->read_last;
			cc->ch = keel_bdev_get_io_channel(slot->desc);
			if (cc->ch == NULL) {
				KEEL_ERRLOG("volume %s: replica %s: no I/O channel on this thread",
					    n->name, n->replicas[s].bdev_name);
				cc->writable = slot->writable;
				cc->readable = false;
				report_fault(nch, s, -ENOMEM);
				continue;
			}
		}
		if (cc->ch == NULL) {
			continue;
		}
		cc->readable = slot->readable;
		cc->writable = slot->writable;
	}
	nch->frozen = cfg.frozen;
	nch->faulted = cfg.faulted;
	channel_rebuild_lists(nch);
}

int nexus_channel_create(void *io_device, void *ctx_buf)
{
	struct nexus *n = io_device;
	struct nexus_channel *nch = ctx_buf;

	memset(nch, 0, sizeof(*nch));
	nch->nexus = n;
	TAILQ_INIT(&nch->held);
	TAILQ_INIT(&nch->parked);
	TAILQ_INIT(&nch->inflight);
	TAILQ_INIT(&nch->lock_waiting);
	if (nexus_bitmap_channel_init(nch) != 0) {
		return -ENOMEM;
	}
	channel_sync(nch);
	pthread_mutex_lock(&n->cfg_lock);
	TAILQ_INSERT_TAIL(&n->chans, nch, clink);
	pthread_mutex_unlock(&n->cfg_lock);
	return 0;
}

uint64_t nexus_user_ios(struct nexus *n)
{
	struct nexus_channel *nch;
	uint64_t sum = 0;

	pthread_mutex_lock(&n->cfg_lock);
	TAILQ_FOREACH(nch, &n->chans, clink) {
		sum += atomic_load_explicit(&nch->user_ios, memory_order_relaxed);
	}
	pthread_mutex_unlock(&n->cfg_lock);
	return sum;
}

void nexus_channel_destroy(void *io_device, void *ctx_buf)
{
	struct nexus_channel *nch = ctx_buf;

	pthread_mutex_lock(&nch->nexus->cfg_lock);
	TAILQ_REMOVE(&nch->nexus->chans, nch, clink);
	pthread_mutex_unlock(&nch->nexus->cfg_lock);
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		if (nch->children[s].ch != NULL) {
			keel_put_io_channel(nch->children[s].ch);
		}
	}
	nexus_bitmap_channel_fini(nch);
}

void nexus_channel_freeze(struct keel_io_channel_iter *iter)
{
	struct nexus_channel *nch = keel_io_channel_get_ctx(keel_io_channel_iter_get_channel(iter));
	struct nexus *n = keel_io_channel_iter_get_ctx(iter);

	nch->frozen = true;
	/* Replicas on their way out are not read from again anywhere: a write that
	 * failed on them is acknowledged only after this walk. */
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		if (n->unreadable_mask & nexus_bit(s)) {
			nch->children[s].readable = false;
		}
	}
	channel_rebuild_lists(nch);
	if (nch->writes_inflight > 0) {
		nch->drain_iter = iter;
		return;
	}
	keel_for_each_channel_continue(iter, 0);
}

void nexus_channel_apply(struct keel_io_channel_iter *iter)
{
	struct nexus_channel *nch = keel_io_channel_get_ctx(keel_io_channel_iter_get_channel(iter));
	uint16_t attached = 0;
	struct keel_bdev_io *io, *next;

	channel_sync(nch);
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct nexus_child_ch *cc = &nch->children[s];

		if (cc->desc != NULL && !cc->detaching && cc->writable) {
			attached |= nexus_bit(s);
		}
	}
	for (io = TAILQ_FIRST(&nch->parked); io != NULL; io = next) {
		struct nexus_io *nio = keel_bdev_io_get_ctx(io);
		bool failed = nch->faulted || nch->n_readers == 0;

		next = TAILQ_NEXT(io, module_link);
		if (!failed && (nio->failed_mask & attached) != 0) {
			continue;
		}
		TAILQ_REMOVE(&nch->parked, io, module_link);
		/* The bitmap count write_finish kept for it (tracked I/O only). */
		if (io_tracked(io)) {
			nexus_bitmap_write_end(nch, keel_bdev_io_offset_bytes(io),
					       keel_bdev_io_num_bytes(io));
		}
		keel_bdev_io_complete(io, failed ? -EIO : 0);
	}
	if (!nch->frozen) {
		/* submit_write cannot re-hold (not frozen), so draining in place ends. */
		while ((io = TAILQ_FIRST(&nch->held)) != NULL) {
			TAILQ_REMOVE(&nch->held, io, module_link);
			if (nch->faulted || nch->n_readers == 0) {
				keel_bdev_io_complete(io, -EIO);
			} else {
				submit_write(nch, io);
			}
		}
	}
	if (nch->detaching > 0) {
		nch->detach_iter = iter;
		return;
	}
	keel_for_each_channel_continue(iter, 0);
}

/* Entry of a write that waited (bitmap or range lock): held while frozen. */
static void write_reenter(struct nexus_channel *nch, struct keel_bdev_io *io)
{
	if (nch->faulted || nch->n_readers == 0) {
		keel_bdev_io_complete(io, -EIO);
	} else if (nch->frozen) {
		TAILQ_INSERT_TAIL(&nch->held, io, module_link);
	} else {
		submit_write(nch, io);
	}
}

void nexus_write_resume(void *arg)
{
	struct keel_bdev_io *io = arg;
	struct nexus_io *nio = keel_bdev_io_get_ctx(io);

	write_reenter(nio->nch, io);
}

static void lock_waits_check(struct nexus_channel *nch)
{
	for (uint32_t i = 0; i < nch->n_lock_waits;) {
		struct nexus_lock_wait *w = &nch->lock_waits[i];
		const struct nexus_lock_range *l = w->owner;
		struct keel_bdev_io *io;
		bool busy = false;

		TAILQ_FOREACH(io, &nch->inflight, module_link) {
			uint64_t off = keel_bdev_io_offset_bytes(io);

			if (overlaps(off, off + keel_bdev_io_num_bytes(io), l->start, l->end)) {
				busy = true;
				break;
			}
		}
		if (busy) {
			i++;
			continue;
		}
		{
			struct keel_io_channel_iter *iter = w->iter;

			nch->lock_waits[i] = nch->lock_waits[--nch->n_lock_waits];
			keel_for_each_channel_continue(iter, 0);
		}
	}
}

void nexus_channel_lock(struct keel_io_channel_iter *iter)
{
	struct nexus_channel *nch = keel_io_channel_get_ctx(keel_io_channel_iter_get_channel(iter));
	struct nexus_lock_range *l = keel_io_channel_iter_get_ctx(iter);

	/* Callers cap their tasks so this never fills (NEXUS_MAX_LOCKS). */
	if (nch->n_locks >= NEXUS_MAX_LOCKS) {
		KEEL_ERRLOG("volume %s: too many rebuild range locks", nch->nexus->name);
		abort();
	}
	nch->locks[nch->n_locks++] = *l;
	nch->lock_waits[nch->n_lock_waits].owner = l;
	nch->lock_waits[nch->n_lock_waits].iter = iter;
	nch->n_lock_waits++;
	lock_waits_check(nch);
}

void nexus_channel_unlock(struct keel_io_channel_iter *iter)
{
	struct nexus_channel *nch = keel_io_channel_get_ctx(keel_io_channel_iter_get_channel(iter));
	struct nexus_lock_range *l = keel_io_channel_iter_get_ctx(iter);
	struct keel_bdev_io *io, *next;
	TAILQ_HEAD(, keel_bdev_io) retry = TAILQ_HEAD_INITIALIZER(retry);

	for (uint32_t i = 0; i < nch->n_locks; i++) {
		if (nch->locks[i].owner == l->owner) {
			nch->locks[i] = nch->locks[--nch->n_locks];
			break;
		}
	}
	/* Writes that waited re-enter in arrival order; those still covered by
	 * another lock queue up again behind it. */
	TAILQ_CONCAT(&retry, &nch->lock_waiting, module_link);
	for (io = TAILQ_FIRST(&retry); io != NULL; io = next) {
		next = TAILQ_NEXT(io, module_link);
		TAILQ_REMOVE(&retry, io, module_link);
		write_reenter(nch, io);
	}
	keel_for_each_channel_continue(iter, 0);
}

static bool nexus_io_type_supported(void *ctx, enum keel_bdev_io_type type)
{
	struct nexus *n = ctx;

	switch (type) {
	case KEEL_BDEV_IO_READ:
	case KEEL_BDEV_IO_WRITE:
	case KEEL_BDEV_IO_FLUSH:
	case KEEL_BDEV_IO_WRITE_ZEROES:
	case KEEL_BDEV_IO_RESET:
	case KEEL_BDEV_IO_GET_ALLOCATION: /* a replica may still answer -ENOTSUP */
		return true;
	case KEEL_BDEV_IO_UNMAP:
		return n->supports_unmap;
	default:
		return false;
	}
}

static struct keel_io_channel *nexus_get_io_channel(void *ctx)
{
	return keel_get_io_channel(ctx);
}

static void nexus_dump_info_json(void *ctx, struct json_t *obj);

const struct keel_bdev_fn_table nexus_bdev_fn_table = {
	.destruct = nexus_destruct,
	.submit_request = nexus_submit_request,
	.io_type_supported = nexus_io_type_supported,
	.get_io_channel = nexus_get_io_channel,
	.dump_info_json = nexus_dump_info_json,
};

static void nexus_dump_info_json(void *ctx, struct json_t *obj)
{
	struct nexus *n = ctx;
	struct keel_nexus_info *info = calloc(1, sizeof(*info));
	json_t *j;

	/* dump_info_json is a management-path call on the owner thread. */
	if (info == NULL) {
		return;
	}
	keel_nexus_get_info((struct keel_nexus *)n, info);
	j = keel_nexus_info_to_json(info);
	if (j != NULL) {
		json_object_set_new(obj, "nexus", j);
	}
	free(info);
}
