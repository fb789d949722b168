/*
 * Read-error repair: a read that failed on one replica and succeeded on another
 * leaves a replica whose range may be unreadable. Rather than faulting the whole
 * replica for one bad range (a disk remaps a bad sector on the next write), write the
 * good data back and read it again; only a rewrite or read-back that fails, or reads
 * back different data, faults it.
 *
 * The repair runs on the thread of the channel that saw the error and holds a
 * reference to that nexus channel, so the children it uses stay attached (their
 * outstanding count keeps a detaching child until the repair's I/O is done) and the
 * volume cannot finish unregistering under it. It takes the same range lock as a
 * rebuild segment before it reads the good copy again: user data read before the lock
 * may have been overwritten since, and writing it back would undo that newer write on
 * the bad replica. Under the lock no user write overlaps the range.
 *
 * Repairs are rare (error path), so each takes a small allocation; at most
 * NEXUS_REPAIR_MAX run per volume, which keeps range locks within NEXUS_MAX_LOCKS.
 * A repair that cannot start (limit reached) is skipped: the data was served from a
 * good copy and the next read of that range tries again.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/log.h"

#include "nexus_internal.h"

struct nexus_repair {
	struct nexus *n;
	struct keel_io_channel *ch; /* our reference to the nexus channel */
	struct nexus_channel *nch;
	struct nexus_lock_range lock;
	unsigned bad;
	unsigned src;
	/* What this channel had attached in those slots at the start: the slot is
	 * still that replica while our channel's child has the same descriptor (a
	 * release detaches it from every channel first). Names are copied here
	 * because replicas[] belongs to the owner thread. */
	struct keel_bdev_desc *bad_desc;
	char bad_name[KEEL_BDEV_NAME_MAX + 1];
	char src_name[KEEL_BDEV_NAME_MAX + 1];
	uint64_t off; /* volume bytes */
	uint64_t len;
	uint8_t *good;
	uint8_t *check;
};

static void repair_free(struct nexus_repair *rp)
{
	struct nexus *n = rp->n;

	free(rp->good);
	free(rp->check);
	keel_put_io_channel(rp->ch);
	free(rp);
	atomic_fetch_sub(&n->repairs_active, 1);
}

static void repair_unlocked(struct keel_io_channel_iter *iter, int status)
{
	struct nexus_repair *rp = (struct nexus_repair *)((uint8_t *)keel_io_channel_iter_get_ctx(
								  iter) -
							  offsetof(struct nexus_repair, lock));

	(void)status;
	repair_free(rp);
}

/* Report, fault the bad replica if the repair proved it bad (before the unlock, so no
 * write of this range races the fault), then unlock and free. */
static void repair_finish(struct nexus_repair *rp, int status, const char *why)
{
	struct nexus *n = rp->n;
	struct nexus_child_ch *cc = &rp->nch->children[rp->bad];
	bool same = cc->desc == rp->bad_desc && !cc->detaching;

	if (status == 0 && same) {
		atomic_fetch_add(&n->replicas[rp->bad].read_errors_repaired, 1);
		KEEL_NOTICELOG("volume %s: replica %s: read error at %lu+%lu repaired from %s",
			       n->name, rp->bad_name, (unsigned long)rp->off,
			       (unsigned long)rp->len, rp->src_name);
	} else if (why != NULL && same) {
		KEEL_ERRLOG("volume %s: replica %s: read error at %lu+%lu not repaired: %s",
			    n->name, rp->bad_name, (unsigned long)rp->off, (unsigned long)rp->len,
			    why);
		nexus_request_fault(n, rp->bad, status);
	} else {
		/* The good copy could not be read again, or a replica left meanwhile:
		 * nothing is known about the bad one beyond the first error. */
		KEEL_WARNLOG("volume %s: replica %s: read error at %lu+%lu: repair abandoned",
			     n->name, rp->bad_name, (unsigned long)rp->off, (unsigned long)rp->len);
	}
	keel_for_each_channel(n, nexus_channel_unlock, &rp->lock, repair_unlocked);
}

/* Slot \p s is still attached on our channel (I/O may go to it). */
static bool repair_child_usable(struct nexus_repair *rp, unsigned s)
{
	struct nexus_child_ch *cc = &rp->nch->children[s];

	return cc->desc != NULL && cc->ch != NULL && !cc->detaching && cc->writable;
}

static void repair_checked(void *arg, int status)
{
	struct nexus_repair *rp = arg;

	nexus_child_io_end(rp->nch, rp->bad);
	if (status != 0) {
		repair_finish(rp, status, "read-back failed");
	} else if (memcmp(rp->good, rp->check, rp->len) != 0) {
		repair_finish(rp, -EIO, "read-back differs from the data written");
	} else {
		repair_finish(rp, 0, NULL);
	}
}

static void repair_written(void *arg, int status)
{
	struct nexus_repair *rp = arg;
	struct nexus_child_ch *cc = &rp->nch->children[rp->bad];
	int rc;

	nexus_child_io_end(rp->nch, rp->bad);
	if (status != 0) {
		repair_finish(rp, status, "rewrite failed");
		return;
	}
	if (!repair_child_usable(rp, rp->bad)) {
		repair_finish(rp, -EIO, NULL);
		return;
	}
	cc->outstanding++;
	rc = keel_bdev_read(cc->desc, cc->ch, rp->check, rp->off + rp->n->data_offset, rp->len,
			    repair_checked, rp);
	if (rc != 0) {
		repair_checked(rp, rc);
	}
}

static void repair_source_read(void *arg, int status)
{
	struct nexus_repair *rp = arg;
	struct nexus_child_ch *cc = &rp->nch->children[rp->bad];
	int rc;

	nexus_child_io_end(rp->nch, rp->src);
	if (status != 0 || !repair_child_usable(rp, rp->bad)) {
		repair_finish(rp, status != 0 ? status : -EIO, NULL);
		return;
	}
	cc->outstanding++;
	rc = keel_bdev_write(cc->desc, cc->ch, rp->good, rp->off + rp->n->data_offset, rp->len,
			     repair_written, rp);
	if (rc != 0) {
		repair_written(rp, rc);
	}
}

static void repair_locked(struct keel_io_channel_iter *iter, int status)
{
	struct nexus_repair *rp = (struct nexus_repair *)((uint8_t *)keel_io_channel_iter_get_ctx(
								  iter) -
							  offsetof(struct nexus_repair, lock));
	struct nexus_child_ch *cc = &rp->nch->children[rp->src];
	int rc;

	(void)status;
	if (!repair_child_usable(rp, rp->src) || !cc->readable || cc->failed) {
		repair_finish(rp, -EIO, NULL);
		return;
	}
	cc->outstanding++;
	rc = keel_bdev_read(cc->desc, cc->ch, rp->good, rp->off + rp->n->data_offset, rp->len,
			    repair_source_read, rp);
	if (rc != 0) {
		repair_source_read(rp, rc);
	}
}

/* The bdev name of the child in slot \p s of \p nch ("?" when none is attached). */
static const char *child_name(struct nexus_channel *nch, unsigned s)
{
	struct keel_bdev_desc *desc = nch->children[s].desc;

	return desc != NULL ? keel_bdev_get_name(keel_bdev_desc_get_bdev(desc)) : "?";
}

void nexus_repair_start(struct nexus_channel *nch, unsigned bad, unsigned src, uint64_t off,
			uint64_t len)
{
	struct nexus *n = nch->nexus;
	struct nexus_repair *rp;

	if (atomic_fetch_add(&n->repairs_active, 1) >= NEXUS_REPAIR_MAX) {
		atomic_fetch_sub(&n->repairs_active, 1);
		KEEL_WARNLOG_RATELIMITED(1000,
					 "volume %s: replica %s: read error at %lu+%lu: too many "
					 "repairs running, skipped",
					 n->name, child_name(nch, bad), (unsigned long)off,
					 (unsigned long)len);
		return;
	}
	rp = calloc(1, sizeof(*rp));
	if (rp == NULL || posix_memalign((void **)&rp->good, 4096, len) != 0 ||
	    posix_memalign((void **)&rp->check, 4096, len) != 0 ||
	    (rp->ch = keel_get_io_channel(n)) == NULL) {
		/* Cannot repair: fall back to faulting the replica, as without repair. */
		if (rp != NULL) {
			free(rp->good);
			free(rp->check);
			free(rp);
		}
		atomic_fetch_sub(&n->repairs_active, 1);
		nexus_request_fault(n, bad, -EIO);
		return;
	}
	rp->n = n;
	rp->nch = keel_io_channel_get_ctx(rp->ch);
	rp->bad = bad;
	rp->src = src;
	rp->bad_desc = nch->children[bad].desc;
	snprintf(rp->bad_name, sizeof(rp->bad_name), "%s", child_name(nch, bad));
	snprintf(rp->src_name, sizeof(rp->src_name), "%s", child_name(nch, src));
	rp->off = off;
	rp->len = len;
	rp->lock.start = off;
	rp->lock.end = off + len;
	rp->lock.owner = rp;
	keel_for_each_channel(n, nexus_channel_lock, &rp->lock, repair_locked);
}
