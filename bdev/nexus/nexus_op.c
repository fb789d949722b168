/*
 * The operation queue of a volume, on its owner thread. Every membership change
 * (create, assembly, add, remove, administrative fault, rebuild done) is an op;
 * ops run one at a time, and a pass over the faults that channels reported goes
 * before the next op (nexus_kick). An op's step ends with nexus_op_finish, which
 * reports it by message (never inside the call that queued it) and starts the next.
 *
 * Faults: the first channel that sees an I/O error on a replica sets its flag and
 * sends one message naming the volume (nexus_request_fault); the owner turns the
 * flags into a fault pass, i.e. one membership change for all of them.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/log.h"

#include "nexus_internal.h"

struct nexus_op *nexus_op_new(enum nexus_op_type type, keel_nexus_op_cb cb_fn, void *cb_arg)
{
	struct nexus_op *op = calloc(1, sizeof(*op));

	if (op != NULL) {
		op->type = type;
		op->cb_fn = cb_fn;
		op->cb_arg = cb_arg;
		op->slot = -1;
	}
	return op;
}

void nexus_op_fail(struct nexus_op *op, int status, const char *fmt, ...)
{
	va_list ap;

	op->status = status;
	va_start(ap, fmt);
	vsnprintf(op->errmsg, sizeof(op->errmsg), fmt, ap);
	va_end(ap);
}

static void fault_msg(void *arg);

void nexus_request_fault(struct nexus *n, unsigned s, int status)
{
	struct nexus_replica *r = &n->replicas[s];

	if (atomic_exchange(&r->fault_requested, true)) {
		return;
	}
	atomic_store(&r->fault_status, status);
	/* Counted before it can be delivered: the owner frees the struct only once
	 * every such message ran (nexus_free). It names the volume, not the slot:
	 * a slot may be emptied and reused before the message runs. */
	atomic_fetch_add(&n->fault_msgs, 1);
	keel_thread_send_msg_reliable(n->owner, fault_msg, n, NULL);
}

struct op_done_msg {
	struct nexus_op *op;
	struct keel_nexus *nexus;
};

static void op_done_msg_fn(void *arg)
{
	struct op_done_msg *m = arg;
	struct nexus_op *op = m->op;

	if (op->status != 0) {
		KEEL_ERRLOG("%s", op->errmsg);
	}
	if (op->cb_fn != NULL) {
		op->cb_fn(op->cb_arg, op->status, op->status ? op->errmsg : NULL,
			  op->status ? NULL : m->nexus);
	}
	free(op);
	free(m);
}

/* Report through a message: keeps "never inside the call" true even when the op
 * fails before any I/O was issued. */
void nexus_op_complete(struct nexus_op *op, struct nexus *n)
{
	struct op_done_msg *m = calloc(1, sizeof(*m));

	if (m == NULL) {
		/* No memory for the message: the op itself carries the result. */
		KEEL_ERRLOG("nexus: out of memory reporting an operation");
		if (op->cb_fn != NULL) {
			op->cb_fn(op->cb_arg, op->status ? op->status : -ENOMEM,
				  op->status ? op->errmsg : "out of memory", NULL);
		}
		free(op);
		return;
	}
	m->op = op;
	m->nexus = (struct keel_nexus *)n;
	keel_thread_send_msg_reliable(keel_thread_get_current(), op_done_msg_fn, m, NULL);
}

void nexus_op_finish(struct nexus *n)
{
	struct nexus_op *op = n->cur_op;

	n->cur_op = NULL;
	n->busy = false;
	if (op != NULL) {
		nexus_op_complete(op, n);
	}
	if (n->destruct_waiting) {
		n->destruct_waiting = false;
		nexus_destruct(n);
		return;
	}
	if (n->registered) {
		nexus_rebuild_auto(n);
	}
	nexus_kick(n);
}

static keel_nexus_fault_fn g_fault_hook;
static void *g_fault_hook_ctx;

void keel_nexus_set_fault_hook(keel_nexus_fault_fn fn, void *ctx)
{
	g_fault_hook = fn;
	g_fault_hook_ctx = ctx;
}

static void run_fault_pass(struct nexus *n)
{
	bool changed = false;

	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct nexus_replica *r = &n->replicas[s];
		int st;

		if (!r->fault_pending) {
			continue;
		}
		r->fault_pending = false;
		if (!r->used || (r->state != KEEL_NEXUS_REPLICA_HEALTHY &&
				 r->state != KEEL_NEXUS_REPLICA_REBUILDING)) {
			continue;
		}
		st = atomic_load(&r->fault_status);
		KEEL_ERRLOG("volume %s: replica %s faulted: %s", n->name, r->bdev_name,
			    strerror(-st));
		r->state = KEEL_NEXUS_REPLICA_FAULTED;
		r->reason = KEEL_NEXUS_REASON_IO_ERROR;
		snprintf(r->detail, sizeof(r->detail), "I/O error: %s", strerror(-st));
		n->unreadable_mask |= nexus_bit(s);
		changed = true;
		if (g_fault_hook != NULL) {
			g_fault_hook(g_fault_hook_ctx, n->name, r->bdev_name);
		}
	}
	if (!changed) {
		n->busy = false;
		nexus_kick(n);
		return;
	}
	if (nexus_count_healthy(n) == 0) {
		snprintf(n->state_detail, sizeof(n->state_detail),
			 "the last healthy replica failed; its label still says in sync: it "
			 "holds the newest data");
	}
	nexus_commit(n);
}

static void rebuild_done_bitmap_written(struct nexus *n, int status)
{
	struct nexus_replica *r = &n->replicas[n->cur_op->slot];

	if (status != 0) {
		/* The bitmap write faulted it (nexus_request_fault); the fault pass
		 * takes it out after this step. */
		nexus_op_fail(n->cur_op, status, "volume %s: replica %s: bitmap write failed",
			      n->name, r->bdev_name);
		nexus_op_finish(n);
		return;
	}
	KEEL_NOTICELOG("volume %s: replica %s rebuilt: healthy", n->name, r->bdev_name);
	r->state = KEEL_NEXUS_REPLICA_HEALTHY;
	r->detail[0] = '\0';
	r->rejoin = false;
	r->rb_started = false;
	nexus_commit(n);
}

void nexus_op_run(struct nexus *n, struct nexus_op *op)
{
	struct nexus_replica *r = op->slot >= 0 ? &n->replicas[op->slot] : NULL;

	switch (op->type) {
	case NEXUS_OP_ADMIN_FAULT:
	case NEXUS_OP_REMOVE:
		if (r->state == KEEL_NEXUS_REPLICA_HEALTHY && nexus_count_healthy(n) <= 1) {
			nexus_op_fail(op, -EBUSY,
				      "volume %s: replica %s is the last healthy replica; "
				      "refusing to %s it",
				      n->name, r->bdev_name,
				      op->type == NEXUS_OP_REMOVE ? "remove" : "fault");
			nexus_op_finish(n);
			return;
		}
		if (op->type == NEXUS_OP_ADMIN_FAULT) {
			if (r->state != KEEL_NEXUS_REPLICA_HEALTHY &&
			    r->state != KEEL_NEXUS_REPLICA_REBUILDING) {
				nexus_op_fail(op, -EALREADY, "volume %s: replica %s is already %s",
					      n->name, r->bdev_name,
					      keel_nexus_replica_state_name(r->state));
				nexus_op_finish(n);
				return;
			}
			r->reason = KEEL_NEXUS_REASON_ADMIN;
			snprintf(r->detail, sizeof(r->detail), "faulted by the administrator");
		} else {
			r->reason = KEEL_NEXUS_REASON_REMOVED;
			r->removing = true;
		}
		KEEL_NOTICELOG("volume %s: replica %s %s", n->name, r->bdev_name,
			       op->type == NEXUS_OP_REMOVE ? "removed"
							   : "faulted by the administrator");
		r->state = KEEL_NEXUS_REPLICA_FAULTED;
		n->unreadable_mask |= nexus_bit((unsigned)op->slot);
		nexus_commit(n);
		return;
	case NEXUS_OP_ADD:
		if (nexus_count_healthy(n) == 0) {
			nexus_op_fail(op, -EIO, "volume %s is faulted: cannot add replica %s",
				      n->name, r->bdev_name);
			nexus_replica_release(r);
			memset(r, 0, sizeof(*r));
			nexus_op_finish(n);
			return;
		}
		nexus_labels_read(n, nexus_bit((unsigned)op->slot), nexus_add_label_checked);
		return;
	case NEXUS_OP_CREATE:
	case NEXUS_OP_OPEN:
		/* Model prepared by the caller; write the first labels. */
		nexus_commit(n);
		return;
	case NEXUS_OP_REBUILD_DONE:
		if (!nexus_replica_attached(r) || r->state != KEEL_NEXUS_REPLICA_REBUILDING) {
			break;
		}
		if (n->bm != NULL) {
			/* Its bitmap area holds only what was set while it rebuilt. */
			nexus_bitmap_write_full(n, (unsigned)op->slot, rebuild_done_bitmap_written);
			return;
		}
		rebuild_done_bitmap_written(n, 0);
		return;
	case NEXUS_OP_DESTROY:
		break;
	}
	nexus_op_finish(n);
}

void nexus_kick(struct nexus *n)
{
	struct nexus_op *op;

	if (n->busy || nexus_bitmap_busy(n)) {
		return;
	}
	/* Writes waiting for their bits go before membership changes. */
	if (nexus_bitmap_kick(n)) {
		return;
	}
	/* A destroy that waited for bitmap I/O to end (nexus_destruct). */
	if (n->destruct_waiting) {
		n->destruct_waiting = false;
		nexus_destruct(n);
		return;
	}
	if (n->faults_queued) {
		n->faults_queued = false;
		n->busy = true;
		run_fault_pass(n);
		return;
	}
	op = TAILQ_FIRST(&n->ops);
	if (op == NULL) {
		return;
	}
	TAILQ_REMOVE(&n->ops, op, link);
	n->cur_op = op;
	n->busy = true;
	nexus_op_run(n, op);
}

/* Owner: a fault request reached us (by message, or from a bdev event). */
void nexus_fault_arrived(struct nexus_replica *r)
{
	struct nexus *n = r->nexus;

	r->fault_seen = true;
	r->fault_pending = true;
	n->faults_queued = true;
	nexus_kick(n);
}

/* Owner: some slot of \p arg (a struct nexus) asked to be faulted. */
static void fault_msg(void *arg)
{
	struct nexus *n = arg;

	if (atomic_fetch_sub(&n->fault_msgs, 1) == 1 && n->free_deferred) {
		nexus_free_struct(n); /* the volume is gone; it was the last one */
		return;
	}
	if (n->free_deferred) {
		return;
	}
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct nexus_replica *r = &n->replicas[s];

		if (r->used && !r->fault_seen && atomic_load(&r->fault_requested)) {
			nexus_fault_arrived(r);
		}
	}
}

int nexus_op_queue(struct nexus *n, struct nexus_op *op)
{
	TAILQ_INSERT_TAIL(&n->ops, op, link);
	nexus_kick(n);
	return 0;
}

int nexus_queue_rebuild_done(struct nexus *n, unsigned s)
{
	struct nexus_op *op = nexus_op_new(NEXUS_OP_REBUILD_DONE, NULL, NULL);

	if (op == NULL) {
		return -ENOMEM;
	}
	op->slot = (int)s;
	return nexus_op_queue(n, op);
}

int nexus_queue_rejoin(struct nexus *n, unsigned s)
{
	char name[KEEL_BDEV_NAME_MAX + 1];

	snprintf(name, sizeof(name), "%s", n->replicas[s].bdev_name);
	return keel_nexus_add_replica(n->name, name, false, NULL, NULL);
}
