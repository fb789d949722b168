/*
 * The membership step every change ends with, on the owner thread:
 *   1. the caller has updated the in-memory model (replica states);
 *   2. if a healthy replica remains: bump the generation, freeze writes on every
 *      channel and wait for in-flight writes, settle the rebuild jobs, write + flush
 *      both label copies on every member, fault the members whose label write
 *      failed (and go again);
 *   3. publish the new configuration and apply it on every channel: dropped
 *      replicas are detached once their in-flight I/O is done, parked writes are
 *      acknowledged, held writes resubmitted;
 *   4. close what was dropped, register a volume being created or opened, report.
 * With no healthy replica left the labels are not touched (the last healthy
 * replica's label keeps saying it is in sync: it holds the newest data) and every
 * channel fails I/O at once.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "keel/log.h"

#include "nexus_internal.h"

uint16_t nexus_attached_mask(const struct nexus *n)
{
	uint16_t mask = 0;

	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		if (nexus_replica_attached(&n->replicas[s])) {
			mask |= nexus_bit(s);
		}
	}
	return mask;
}

unsigned nexus_count_healthy(const struct nexus *n)
{
	unsigned c = 0;

	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		if (nexus_replica_attached(&n->replicas[s]) &&
		    n->replicas[s].state == KEEL_NEXUS_REPLICA_HEALTHY) {
			c++;
		}
	}
	return c;
}

static void update_state(struct nexus *n)
{
	bool all = true;

	if (nexus_count_healthy(n) == 0) {
		n->state = KEEL_NEXUS_FAULTED;
		if (n->state_detail[0] == '\0') {
			snprintf(n->state_detail, sizeof(n->state_detail), "no healthy replica");
		}
		return;
	}
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		const struct nexus_replica *r = &n->replicas[s];

		/* A bdev labelled for another volume was never ours: listed for
		 * the operator, it does not degrade this volume. */
		if (r->used && !r->foreign && r->state != KEEL_NEXUS_REPLICA_HEALTHY) {
			all = false;
		}
	}
	n->state = all ? KEEL_NEXUS_ONLINE : KEEL_NEXUS_DEGRADED;
	if (all) {
		n->state_detail[0] = '\0';
	} else {
		snprintf(n->state_detail, sizeof(n->state_detail), "some replicas are not healthy");
	}
}

void nexus_publish_cfg(struct nexus *n, bool frozen)
{
	pthread_mutex_lock(&n->cfg_lock);
	n->cfg.frozen = frozen;
	n->cfg.faulted = nexus_count_healthy(n) == 0;
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct nexus_replica *r = &n->replicas[s];
		struct nexus_cfg_slot *slot = &n->cfg.slots[s];
		bool att = nexus_replica_attached(r);

		slot->desc = att ? r->desc : NULL;
		slot->writable = att;
		slot->readable = att && r->state == KEEL_NEXUS_REPLICA_HEALTHY &&
				 !(n->unreadable_mask & nexus_bit(s));
	}
	pthread_mutex_unlock(&n->cfg_lock);
}

static void commit_applied(struct keel_io_channel_iter *iter, int status)
{
	struct nexus *n = keel_io_channel_iter_get_io_device(iter);
	struct nexus_op *op = n->cur_op;

	(void)status;
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct nexus_replica *r = &n->replicas[s];

		if (!r->used) {
			continue;
		}
		/* Faulted replicas are released so their bdev can go; replicas held out
		 * of a volume faulted at assembly stay claimed. */
		if (r->desc != NULL && r->state == KEEL_NEXUS_REPLICA_FAULTED) {
			nexus_replica_release(r);
		}
		if (r->removing) {
			/* Its ended rebuild, kept for statistics, describes nothing now. */
			nexus_rebuild_forget_target(n, r->uuid);
			nexus_replica_release(r);
			memset(r, 0, sizeof(*r));
		}
	}
	n->unreadable_mask = 0;
	update_state(n);
	if (op != NULL && (op->type == NEXUS_OP_CREATE || op->type == NEXUS_OP_OPEN)) {
		int rc;

		if (op->type == NEXUS_OP_CREATE && n->state == KEEL_NEXUS_FAULTED) {
			nexus_op_fail(op, -EIO,
				      "volume %s: writing the labels failed on every replica",
				      n->name);
			n->cur_op = NULL;
			n->busy = false;
			nexus_create_abort(n, op);
			return;
		}
		rc = nexus_register_bdev(n);
		if (rc != 0) {
			nexus_op_fail(op, rc, "volume %s: cannot register the bdev: %s", n->name,
				      strerror(-rc));
			n->cur_op = NULL;
			n->busy = false;
			nexus_create_abort(n, op);
			return;
		}
	}
	nexus_op_finish(n);
}

static void apply_config(struct nexus *n, bool frozen)
{
	nexus_publish_cfg(n, frozen);
	keel_for_each_channel(n, nexus_channel_apply, n, commit_applied);
}

static void commit_labels_done(struct nexus *n)
{
	bool again = false;

	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct nexus_replica *r = &n->replicas[s];

		if (!nexus_replica_attached(r) || r->label_status == 0) {
			continue;
		}
		KEEL_ERRLOG("volume %s: replica %s faulted: label write failed: %s", n->name,
			    r->bdev_name, strerror(-r->label_status));
		r->state = KEEL_NEXUS_REPLICA_FAULTED;
		r->reason = KEEL_NEXUS_REASON_IO_ERROR;
		snprintf(r->detail, sizeof(r->detail), "label write failed: %s",
			 strerror(-r->label_status));
		n->unreadable_mask |= nexus_bit(s);
		if (n->cur_op != NULL && n->cur_op->type == NEXUS_OP_ADD &&
		    n->cur_op->slot == (int)s) {
			r->removing = true;
			nexus_op_fail(n->cur_op, -EIO,
				      "volume %s: replica %s: label write failed: %s", n->name,
				      r->bdev_name, strerror(-r->label_status));
		}
		again = true;
	}
	if (again) {
		/* The members that failed must leave the labels of the others too. */
		nexus_commit(n);
		return;
	}
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		if (nexus_replica_attached(&n->replicas[s])) {
			n->replicas[s].generation = n->generation;
		}
	}
	apply_config(n, false);
}

static void commit_synced(struct nexus *n)
{
	nexus_labels_write(n, nexus_attached_mask(n), false, false, commit_labels_done);
}

/* Writes are held everywhere now: settle the rebuild jobs against the new states
 * before any write could go out without a replica they read from. */
static void commit_frozen(struct keel_io_channel_iter *iter, int status)
{
	struct nexus *n = keel_io_channel_iter_get_io_device(iter);

	(void)status;
	nexus_rebuild_sync(n, commit_synced);
}

static void commit_faulted_synced(struct nexus *n)
{
	apply_config(n, false);
}

void nexus_commit(struct nexus *n)
{
	struct nexus_op *op = n->cur_op;

	if (nexus_count_healthy(n) == 0) {
		update_state(n);
		KEEL_ERRLOG("volume %s: faulted: %s", n->name, n->state_detail);
		/* A remove or admin fault whose label update failed everywhere (every
		 * member died meanwhile, as in a power cut) never reached the labels: the
		 * durable labels still list that replica in sync. Reporting success would
		 * let the caller forget it (keeld drops a removed replica from its state),
		 * and the next assembly would find an in-sync member missing and refuse
		 * to start without force (powercut_ut cut_every_step, seed 3 step 86). */
		if (op != NULL && op->status == 0 &&
		    (op->type == NEXUS_OP_REMOVE || op->type == NEXUS_OP_ADMIN_FAULT)) {
			nexus_op_fail(op, -EIO,
				      "volume %s faulted before the change reached the labels: "
				      "they still list replica %s",
				      n->name, n->replicas[op->slot].bdev_name);
		}
		nexus_rebuild_sync(n, commit_faulted_synced);
		return;
	}
	n->generation++;
	nexus_publish_cfg(n, true);
	keel_for_each_channel(n, nexus_channel_freeze, n, commit_frozen);
}
