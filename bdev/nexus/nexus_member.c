/*
 * Membership API: add, remove and fault a replica of a running volume. Each call
 * checks what it can at once (names, sizes, slots) and queues an op; the op runs
 * its step on the owner thread (nexus_op.c). Adding reads the new replica's
 * labels first: a label of another volume, or a damaged one, is kept unless
 * forced; a former member of this volume rejoins with its identity, so the
 * bitmap may spare it a full copy.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "keel/log.h"

#include "nexus_internal.h"

int nexus_find_replica(struct nexus *n, const char *replica)
{
	uint8_t u[16];
	bool is_uuid = keel_uuid_parse(replica, u) == 0;

	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct nexus_replica *r = &n->replicas[s];

		if (!r->used) {
			continue;
		}
		if ((r->bdev_name[0] != '\0' && strcmp(r->bdev_name, replica) == 0) ||
		    (is_uuid && memcmp(r->uuid, u, 16) == 0)) {
			return (int)s;
		}
	}
	return -ENODEV;
}

static int member_op(const char *name, const char *replica, enum nexus_op_type type,
		     keel_nexus_op_cb cb_fn, void *cb_arg)
{
	struct nexus *n = (struct nexus *)keel_nexus_get_by_name(name);
	struct nexus_op *op;
	int s;

	if (n == NULL || replica == NULL) {
		return -ENODEV;
	}
	s = nexus_find_replica(n, replica);
	if (s < 0) {
		return s;
	}
	op = nexus_op_new(type, cb_fn, cb_arg);
	if (op == NULL) {
		return -ENOMEM;
	}
	op->slot = s;
	return nexus_op_queue(n, op);
}

int keel_nexus_remove_replica(const char *name, const char *replica, keel_nexus_op_cb cb_fn,
			      void *cb_arg)
{
	return member_op(name, replica, NEXUS_OP_REMOVE, cb_fn, cb_arg);
}

int keel_nexus_fault_replica(const char *name, const char *replica, keel_nexus_op_cb cb_fn,
			     void *cb_arg)
{
	return member_op(name, replica, NEXUS_OP_ADMIN_FAULT, cb_fn, cb_arg);
}

void nexus_add_label_checked(struct nexus *n)
{
	struct nexus_op *op = n->cur_op;
	struct nexus_replica *r = &n->replicas[op->slot];

	if (!op->force && r->label_rc == 0 && memcmp(r->label.volume_uuid, n->uuid, 16) != 0) {
		char u[KEEL_UUID_STR_LEN];

		keel_uuid_fmt(r->label.volume_uuid, u);
		nexus_op_fail(op, -EEXIST,
			      "volume %s: replica %s carries a label of volume %s (%s); "
			      "use force to overwrite it",
			      n->name, r->bdev_name, r->label.volume_name, u);
		goto out_drop;
	}
	if (!op->force && r->label_rc != 0 && r->label_rc != -ENODATA) {
		nexus_op_fail(op, -EEXIST,
			      "volume %s: replica %s has a damaged keel label (%s); use "
			      "force to overwrite it",
			      n->name, r->bdev_name, r->label_why);
		goto out_drop;
	}
	r->rejoin = false;
	if (r->label_rc == 0 && memcmp(r->label.volume_uuid, n->uuid, 16) == 0 &&
	    !keel_uuid_is_null(r->label.replica_uuid)) {
		const struct nexus_label_member *m = nexus_label_find_member(&r->label,
									     r->label.replica_uuid);

		/* A former member comes back: it keeps its identity, and what it
		 * missed may be covered by the bitmap. Its old entry goes. */
		for (unsigned s = 0; s < NEXUS_MAX; s++) {
			struct nexus_replica *o = &n->replicas[s];

			if ((int)s == op->slot || !o->used ||
			    memcmp(o->uuid, r->label.replica_uuid, 16) != 0) {
				continue;
			}
			if (nexus_replica_attached(o)) {
				nexus_op_fail(op, -EEXIST,
					      "volume %s: replica %s: its UUID is already an "
					      "active replica (%s)",
					      n->name, r->bdev_name, o->bdev_name);
				goto out_drop;
			}
			memset(o, 0, sizeof(*o));
		}
		memcpy(r->uuid, r->label.replica_uuid, 16);
		r->rejoin = true;
		r->rejoin_generation = r->label.generation;
		r->rejoin_in_sync = m != NULL && m->state == NEXUS_MEMBER_IN_SYNC;
	} else {
		keel_uuid_generate(r->uuid);
	}
	r->member = true;
	r->state = KEEL_NEXUS_REPLICA_REBUILDING;
	r->rb_started = false;
	snprintf(r->detail, sizeof(r->detail), "out of sync: %s", r->rejoin ? "rejoined" : "added");
	KEEL_NOTICELOG("volume %s: replica %s %s (out of sync)", n->name, r->bdev_name,
		       r->rejoin ? "rejoined" : "added");
	nexus_commit(n);
	return;

out_drop:
	nexus_replica_release(r);
	memset(r, 0, sizeof(*r));
	nexus_op_finish(n);
}

int keel_nexus_add_replica(const char *name, const char *bdev_name, bool force,
			   keel_nexus_op_cb cb_fn, void *cb_arg)
{
	struct nexus *n = (struct nexus *)keel_nexus_get_by_name(name);
	struct nexus_op *op;
	struct nexus_replica *r;
	struct keel_bdev *b;
	int slot = -1, rc;

	if (n == NULL || bdev_name == NULL) {
		return -ENODEV;
	}
	op = nexus_op_new(NEXUS_OP_ADD, cb_fn, cb_arg);
	if (op == NULL) {
		return -ENOMEM;
	}
	op->force = force;
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		if (n->replicas[s].used && strcmp(n->replicas[s].bdev_name, bdev_name) == 0 &&
		    n->replicas[s].desc != NULL) {
			nexus_op_fail(op, -EEXIST, "volume %s: %s is already a replica", n->name,
				      bdev_name);
			nexus_op_complete(op, NULL);
			return 0;
		}
		if (!n->replicas[s].used && slot < 0) {
			slot = (int)s;
		}
	}
	if (slot < 0) {
		nexus_op_fail(op, -ENOSPC,
			      "volume %s: already %u replicas listed; remove one first", n->name,
			      NEXUS_MAX);
		nexus_op_complete(op, NULL);
		return 0;
	}
	rc = nexus_replica_attach(n, (unsigned)slot, bdev_name, op->errmsg, sizeof(op->errmsg));
	if (rc != 0) {
		char tmp[256];

		memset(&n->replicas[slot], 0, sizeof(n->replicas[slot]));
		snprintf(tmp, sizeof(tmp), "%s", op->errmsg);
		nexus_op_fail(op, rc, "volume %s: %.180s", n->name, tmp);
		nexus_op_complete(op, NULL);
		return 0;
	}
	r = &n->replicas[slot];
	r->state = KEEL_NEXUS_REPLICA_REBUILDING;
	b = keel_bdev_desc_get_bdev(r->desc);
	op->slot = slot;
	if (keel_bdev_get_block_size(b) != n->block_size) {
		nexus_op_fail(op, -EINVAL, "volume %s: replica %s has block size %u, not %u",
			      n->name, bdev_name, keel_bdev_get_block_size(b), n->block_size);
		goto out_drop;
	}
	if (nexus_replica_size(r) < n->data_offset + n->volume_size) {
		nexus_op_fail(op, -EINVAL,
			      "volume %s: replica %s has %lu bytes, the volume needs %lu", n->name,
			      bdev_name, (unsigned long)nexus_replica_size(r),
			      (unsigned long)(n->data_offset + n->volume_size));
		goto out_drop;
	}
	if (n->supports_unmap && !keel_bdev_io_type_supported(b, KEEL_BDEV_IO_UNMAP)) {
		nexus_op_fail(op, -ENOTSUP, "volume %s: replica %s does not support unmap", n->name,
			      bdev_name);
		goto out_drop;
	}
	/* The label check reads from the replica: run it as a step of the queue so
	 * it does not overlap another change's label I/O. */
	return nexus_op_queue(n, op);

out_drop:
	nexus_replica_release(r);
	memset(r, 0, sizeof(*r));
	nexus_op_complete(op, NULL);
	return 0;
}
