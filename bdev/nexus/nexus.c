/*
 * Nexus lifecycle: create, assemble (open), destroy, registration as a bdev, the
 * list of volumes. Elsewhere: the operation queue (nexus_op.c), add, remove and
 * fault (nexus_member.c), the membership step every change ends with
 * (nexus_commit.c), the assembly rules (nexus_assemble.c, a pure decision that
 * open applies), replicas and their label I/O (nexus_replica.c), what a volume
 * shows (nexus_info.c).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/log.h"

#include "nexus_internal.h"

static TAILQ_HEAD(, nexus) g_nexuses = TAILQ_HEAD_INITIALIZER(g_nexuses);

static int nexus_module_init(void)
{
	return 0;
}

static uint32_t nexus_get_ctx_size(void)
{
	return sizeof(struct nexus_io);
}

struct keel_bdev_module keel_bdev_nexus_module = {
	.name = "nexus",
	.module_init = nexus_module_init,
	.get_ctx_size = nexus_get_ctx_size,
};

void nexus_free_struct(struct nexus *n)
{
	free(n->bdev.name);
	free(n);
}

static void nexus_free(struct nexus *n)
{
	nexus_rebuild_forget(n);
	nexus_bitmap_free(n);
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		nexus_replica_release(&n->replicas[s]);
	}
	pthread_mutex_destroy(&n->cfg_lock);
	/* A fault message still on its way (retried by a thread whose channel is
	 * gone) points into this struct: the last one frees it (fault_msg). */
	if (atomic_load(&n->fault_msgs) != 0) {
		n->free_deferred = true;
		return;
	}
	nexus_free_struct(n);
}

static void io_device_gone_then_free(void *io_device)
{
	nexus_free(io_device);
}

/* Failure of create/open: nothing registered as a bdev yet. */
void nexus_create_abort(struct nexus *n, struct nexus_op *op)
{
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		nexus_replica_release(&n->replicas[s]);
	}
	nexus_op_complete(op, NULL);
	if (n->io_device_registered) {
		keel_io_device_unregister(n, io_device_gone_then_free);
	} else {
		nexus_free(n);
	}
}

/* ------------------------------------------------------------------------------ */
/* Registration and teardown                                                       */
/* ------------------------------------------------------------------------------ */

int nexus_register_bdev(struct nexus *n)
{
	struct keel_bdev *b = &n->bdev;
	uint32_t align = 1;
	bool mc = true, wc = false, unmap = true;
	int rc;

	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct nexus_replica *r = &n->replicas[s];
		struct keel_bdev *rb;

		if (!r->used || r->desc == NULL) {
			continue;
		}
		rb = keel_bdev_desc_get_bdev(r->desc);
		if (keel_bdev_get_buf_align(rb) > align) {
			align = keel_bdev_get_buf_align(rb);
		}
		mc = mc && keel_bdev_is_multi_conn_safe(rb);
		wc = wc || keel_bdev_has_write_cache(rb);
		unmap = unmap && keel_bdev_io_type_supported(rb, KEEL_BDEV_IO_UNMAP);
	}
	n->supports_unmap = unmap;
	b->name = strdup(n->name);
	if (b->name == NULL) {
		return -ENOMEM;
	}
	b->product_name = "keel nexus";
	b->block_size = n->block_size;
	b->num_blocks = n->volume_size / n->block_size;
	b->required_alignment = align;
	b->write_cache = wc;
	b->multi_conn_safe = mc;
	memcpy(b->uuid, n->uuid, 16);
	b->ctxt = n;
	b->fn_table = &nexus_bdev_fn_table;
	b->module = &keel_bdev_nexus_module;
	rc = keel_bdev_register(b);
	if (rc != 0) {
		free(b->name);
		b->name = NULL;
		return rc;
	}
	n->registered = true;
	TAILQ_INSERT_TAIL(&g_nexuses, n, link);
	KEEL_NOTICELOG("volume %s: %s, %lu bytes, generation %lu", n->name,
		       keel_nexus_state_name(n->state), (unsigned long)n->volume_size,
		       (unsigned long)n->generation);
	return 0;
}

static void destruct_labels_done(struct nexus *n)
{
	struct nexus_op *op = n->destroy_op;

	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct nexus_replica *r = &n->replicas[s];

		if (r->used && r->desc != NULL && r->label_status != 0) {
			KEEL_ERRLOG("volume %s: replica %s: final label write failed: %s", n->name,
				    r->bdev_name, strerror(-r->label_status));
		}
		nexus_replica_release(r);
	}
	TAILQ_REMOVE(&g_nexuses, n, link);
	KEEL_NOTICELOG("volume %s: stopped", n->name);
	n->destroy_op = NULL;
	(void)op; /* its callback comes from the unregister completion */
	keel_bdev_destruct_done(&n->bdev);
	/* destruct_done leaves only core-private state behind: n is ours to free. */
	nexus_free(n);
}

static void destruct_io_device_gone(void *io_device)
{
	struct nexus *n = io_device;
	uint16_t mask = 0;
	bool wipe = n->destroy_op != NULL && n->destroy_op->wipe;

	n->io_device_registered = false;
	/* No channel is left, so no I/O: faults reported on the way out still leave
	 * the labels, as any other fault would, also those whose message has not
	 * arrived yet (the flag is set before it is sent). */
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct nexus_replica *r = &n->replicas[s];

		if ((r->fault_pending || atomic_load(&r->fault_requested)) &&
		    nexus_replica_attached(r)) {
			r->state = KEEL_NEXUS_REPLICA_FAULTED;
			r->reason = KEEL_NEXUS_REASON_IO_ERROR;
		}
		r->fault_pending = false;
	}
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct nexus_replica *r = &n->replicas[s];

		if (wipe ? (r->used && r->desc != NULL) : nexus_replica_attached(r)) {
			mask |= nexus_bit(s);
		}
	}
	if (!wipe && nexus_count_healthy(n) == 0) {
		mask = 0; /* never write over the last healthy label */
	}
	if (mask != 0 && !wipe) {
		n->generation++;
	}
	nexus_labels_write(n, mask, wipe, true, destruct_labels_done);
}

static void destruct_jobs_stopped(struct nexus *n)
{
	keel_io_device_unregister(n, destruct_io_device_gone);
}

static void destruct_msg(void *arg)
{
	nexus_destruct(arg);
}

int nexus_destruct(void *ctx)
{
	struct nexus *n = ctx;
	struct nexus_op *op;

	if (keel_thread_get_current() != n->owner) {
		keel_thread_send_msg_reliable(n->owner, destruct_msg, n, NULL);
		return 1;
	}
	/*
	 * Bitmap I/O in flight (the first full write after a create, a clear pass) must
	 * end first: it writes through the replicas' descriptors and completes into the
	 * bitmap, both released below. nexus_kick resumes us when it ends.
	 */
	if (n->busy || nexus_bitmap_busy(n)) {
		n->destruct_waiting = true;
		return 1;
	}
	n->busy = true;
	n->destroying = true;
	while ((op = TAILQ_FIRST(&n->ops)) != NULL) {
		TAILQ_REMOVE(&n->ops, op, link);
		if (op->type == NEXUS_OP_ADD && op->slot >= 0) {
			nexus_replica_release(&n->replicas[op->slot]);
			memset(&n->replicas[op->slot], 0, sizeof(n->replicas[op->slot]));
		}
		nexus_op_fail(op, -ENODEV, "volume %s is being destroyed", n->name);
		nexus_op_complete(op, NULL);
	}
	/* Rebuild jobs take range locks on our channels: they go first. */
	nexus_rebuild_shutdown(n, destruct_jobs_stopped);
	return 1;
}

static void destroy_unregistered(void *cb_arg, int status)
{
	struct nexus_op *op = cb_arg;

	op->status = status;
	if (status != 0) {
		snprintf(op->errmsg, sizeof(op->errmsg), "unregister failed: %s",
			 strerror(-status));
	}
	nexus_op_complete(op, NULL);
}

/* ------------------------------------------------------------------------------ */
/* Public API                                                                      */
/* ------------------------------------------------------------------------------ */

struct keel_nexus *keel_nexus_get_by_name(const char *name)
{
	struct nexus *n;

	if (name == NULL) {
		return NULL;
	}
	TAILQ_FOREACH(n, &g_nexuses, link) {
		if (strcmp(n->name, name) == 0 && !n->destroying) {
			return (struct keel_nexus *)n;
		}
	}
	return NULL;
}

struct keel_nexus *keel_nexus_first(void)
{
	struct nexus *n;

	TAILQ_FOREACH(n, &g_nexuses, link) {
		if (!n->destroying) {
			return (struct keel_nexus *)n;
		}
	}
	return NULL;
}

struct keel_nexus *keel_nexus_next(struct keel_nexus *prev)
{
	struct nexus *n = (struct nexus *)prev;

	for (n = TAILQ_NEXT(n, link); n != NULL; n = TAILQ_NEXT(n, link)) {
		if (!n->destroying) {
			return (struct keel_nexus *)n;
		}
	}
	return NULL;
}

const char *keel_nexus_get_name(const struct keel_nexus *nexus)
{
	return ((const struct nexus *)nexus)->name;
}

static struct nexus *nexus_alloc(const char *name)
{
	struct nexus *n = calloc(1, sizeof(*n));

	if (n == NULL) {
		return NULL;
	}
	if (name != NULL) {
		snprintf(n->name, sizeof(n->name), "%s", name);
	}
	n->owner = keel_thread_get_current();
	n->data_offset = KEEL_NEXUS_DATA_OFFSET;
	pthread_mutex_init(&n->cfg_lock, NULL);
	TAILQ_INIT(&n->chans);
	TAILQ_INIT(&n->ops);
	TAILQ_INIT(&n->jobs);
	return n;
}

static int nexus_io_device_register(struct nexus *n)
{
	int rc = keel_io_device_register(n, nexus_channel_create, nexus_channel_destroy,
					 sizeof(struct nexus_channel),
					 n->name[0] ? n->name : "nexus");

	if (rc == 0) {
		n->io_device_registered = true;
	}
	return rc;
}

static bool names_unique(const char *const *names, uint32_t count)
{
	for (uint32_t i = 0; i < count; i++) {
		if (names[i] == NULL || names[i][0] == '\0') {
			return false;
		}
		for (uint32_t j = 0; j < i; j++) {
			if (strcmp(names[i], names[j]) == 0) {
				return false;
			}
		}
	}
	return true;
}

static bool bitmap_wanted(void)
{
	struct keel_rebuild_opts o;

	keel_rebuild_get_opts(&o);
	return o.bitmap;
}

static void create_labels_checked(struct nexus *n)
{
	struct nexus_op *op = n->cur_op;
	uint64_t min_avail = UINT64_MAX;

	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct nexus_replica *r = &n->replicas[s];
		char u[KEEL_UUID_STR_LEN];

		if (!r->used) {
			continue;
		}
		if (!op->force && r->label_rc == 0) {
			keel_uuid_fmt(r->label.volume_uuid, u);
			nexus_op_fail(op, -EEXIST,
				      "volume %s: replica %s carries a label of volume %s "
				      "(%s, generation %lu); use force to overwrite it",
				      n->name, r->bdev_name, r->label.volume_name, u,
				      (unsigned long)r->label.generation);
			goto out_abort;
		}
		if (!op->force && r->label_rc != -ENODATA) {
			nexus_op_fail(op, -EEXIST,
				      "volume %s: replica %s has a damaged keel label (%s); "
				      "use force to overwrite it",
				      n->name, r->bdev_name, r->label_why);
			goto out_abort;
		}
		if (nexus_replica_size(r) - n->data_offset < min_avail) {
			min_avail = nexus_replica_size(r) - n->data_offset;
		}
	}
	min_avail -= min_avail % n->block_size;
	if (n->volume_size == 0) {
		n->volume_size = min_avail;
	} else if (n->volume_size > min_avail) {
		nexus_op_fail(op, -ENOSPC,
			      "volume %s: size %lu is larger than the %lu bytes the "
			      "smallest replica offers",
			      n->name, (unsigned long)n->volume_size, (unsigned long)min_avail);
		goto out_abort;
	}
	if (n->volume_size == 0) {
		nexus_op_fail(op, -EINVAL, "volume %s: replicas leave no room for data", n->name);
		goto out_abort;
	}
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct nexus_replica *r = &n->replicas[s];

		if (r->used) {
			r->member = true;
			r->state = KEEL_NEXUS_REPLICA_HEALTHY;
			keel_uuid_generate(r->uuid);
		}
	}
	n->generation = 0; /* the commit makes it 1 */
	if (bitmap_wanted() && nexus_bitmap_create(n) == 0) {
		/* A new volume: nothing to resync, the bitmap covers from here on. */
		nexus_bitmap_init_new(n);
	}
	nexus_op_run(n, op);
	return;

out_abort:
	n->cur_op = NULL;
	n->busy = false;
	nexus_create_abort(n, op);
}

int keel_nexus_create(const struct keel_nexus_create_opts *opts, keel_nexus_op_cb cb_fn,
		      void *cb_arg)
{
	struct nexus *n;
	struct nexus_op *op;
	uint16_t mask = 0;
	int rc;

	if (opts == NULL || !keel_nexus_name_valid(opts->name, NULL, 0) || opts->replicas == NULL ||
	    opts->num_replicas == 0 || opts->num_replicas > NEXUS_MAX ||
	    !names_unique(opts->replicas, opts->num_replicas) ||
	    keel_thread_get_current() == NULL) {
		return -EINVAL;
	}
	if (opts->size_bytes % 512 != 0) {
		return -EINVAL;
	}
	n = nexus_alloc(opts->name);
	op = nexus_op_new(NEXUS_OP_CREATE, cb_fn, cb_arg);
	if (n == NULL || op == NULL) {
		free(op);
		if (n != NULL) {
			nexus_free(n);
		}
		return -ENOMEM;
	}
	op->force = opts->force;
	n->cur_op = op;
	n->busy = true;
	if (opts->uuid != NULL) {
		if (keel_uuid_parse(opts->uuid, n->uuid) != 0 || keel_uuid_is_null(n->uuid)) {
			free(op);
			nexus_free(n);
			return -EINVAL;
		}
	} else {
		keel_uuid_generate(n->uuid);
	}
	n->volume_size = opts->size_bytes;
	if (keel_bdev_get_by_name(opts->name) != NULL || keel_nexus_get_by_name(opts->name)) {
		nexus_op_fail(op, -EEXIST, "volume %s: a bdev of that name exists", opts->name);
		goto out_abort;
	}
	for (uint32_t i = 0; i < opts->num_replicas; i++) {
		rc = nexus_replica_attach(n, i, opts->replicas[i], op->errmsg, sizeof(op->errmsg));
		if (rc != 0) {
			char tmp[256];

			snprintf(tmp, sizeof(tmp), "%s", op->errmsg);
			nexus_op_fail(op, rc, "volume %s: %.180s", n->name, tmp);
			goto out_abort;
		}
		mask |= nexus_bit(i);
		if (i == 0) {
			n->block_size = keel_bdev_get_block_size(
				keel_bdev_desc_get_bdev(n->replicas[i].desc));
		} else if (keel_bdev_get_block_size(keel_bdev_desc_get_bdev(n->replicas[i].desc)) !=
			   n->block_size) {
			nexus_op_fail(op, -EINVAL,
				      "volume %s: replica %s has block size %u, not %u", n->name,
				      opts->replicas[i],
				      keel_bdev_get_block_size(
					      keel_bdev_desc_get_bdev(n->replicas[i].desc)),
				      n->block_size);
			goto out_abort;
		}
		if (nexus_replica_size(&n->replicas[i]) <= n->data_offset) {
			nexus_op_fail(op, -EINVAL,
				      "volume %s: replica %s (%lu bytes) is not larger than "
				      "the %u-byte label area",
				      n->name, opts->replicas[i],
				      (unsigned long)nexus_replica_size(&n->replicas[i]),
				      KEEL_NEXUS_DATA_OFFSET);
			goto out_abort;
		}
	}
	if (n->volume_size % n->block_size != 0) {
		nexus_op_fail(op, -EINVAL,
			      "volume %s: size %lu is not a multiple of the block size %u", n->name,
			      (unsigned long)n->volume_size, n->block_size);
		goto out_abort;
	}
	rc = nexus_io_device_register(n);
	if (rc != 0) {
		nexus_op_fail(op, rc, "volume %s: cannot register the I/O device: %s", n->name,
			      strerror(-rc));
		goto out_abort;
	}
	nexus_labels_read(n, mask, create_labels_checked);
	return 0;

out_abort:
	n->cur_op = NULL;
	n->busy = false;
	nexus_create_abort(n, op);
	return 0;
}

/* ------------------------------------------------------------------------------ */
/* Assembly                                                                        */
/* ------------------------------------------------------------------------------ */

static void refuse(struct nexus *n, struct nexus_replica *r, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* A bdev that is not (or no longer) part of the volume: listed with the reason,
 * released so its owner can use it. */
static void refuse(struct nexus *n, struct nexus_replica *r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(r->detail, sizeof(r->detail), fmt, ap);
	va_end(ap);
	r->state = KEEL_NEXUS_REPLICA_FAULTED;
	if (r->reason == KEEL_NEXUS_REASON_NONE) {
		r->reason = KEEL_NEXUS_REASON_CANT_OPEN;
	}
	r->member = false;
	KEEL_WARNLOG("volume %s: replica %s refused: %s", n->name[0] ? n->name : "?", r->bdev_name,
		     r->detail);
	nexus_replica_release(r);
}

static void describe_seen(struct nexus *n, char *buf, size_t len, size_t off)
{
	off = nexus_append(buf, len, off, "; saw:");
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct nexus_replica *r = &n->replicas[s];

		if (!r->used || r->bdev_name[0] == '\0') {
			continue;
		}
		if (r->generation != 0) {
			off = nexus_append(buf, len, off, " %s (generation %lu, %s%s%s)",
					   r->bdev_name, (unsigned long)r->generation,
					   keel_nexus_replica_state_name(r->state),
					   r->state == KEEL_NEXUS_REPLICA_FAULTED ? " " : "",
					   r->state == KEEL_NEXUS_REPLICA_FAULTED
						   ? keel_nexus_fault_reason_name(r->reason)
						   : "");
		} else {
			off = nexus_append(buf, len, off, " %s (%s)", r->bdev_name, r->detail);
		}
	}
}

/*
 * Unclean shutdown (the labels were dirty): writes may have been in flight, so
 * healthy replicas may differ where they were going, i.e. in the regions whose
 * bits are set (md's resync). The first healthy replica (slot order, the order
 * the volume was assembled with) is taken as the truth; the other healthy ones
 * become rebuilding and get a partial rebuild of the set regions from it. While
 * that runs they take every write and serve no read, so a read never sees two
 * answers for the same block. Without a valid bitmap they get a full copy.
 * Cost: the volume has one readable replica until the (usually tiny) copy is
 * done; docs/rebuild.md says why this rather than per-region read routing.
 */
static void unclean_resync(struct nexus *n)
{
	uint64_t rs = 0, ec = 0;
	uint32_t nbits = 0, set = 0;
	uint16_t healthy = 0, resync;
	bool covered;
	int first;

	if (!n->unclean_shutdown) {
		return;
	}
	covered = n->bm != NULL && nexus_bitmap_covers(n, n->generation);
	if (covered) {
		nexus_bitmap_info(n, &rs, &nbits, &set, &ec);
	}
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		if (nexus_replica_attached(&n->replicas[s]) &&
		    n->replicas[s].state == KEEL_NEXUS_REPLICA_HEALTHY) {
			healthy |= nexus_bit(s);
		}
	}
	resync = nexus_assemble_resync(true, covered, set, healthy, &first);
	if (covered && set == 0) {
		KEEL_NOTICELOG("volume %s: unclean shutdown, no region marked dirty: "
			       "nothing to resync",
			       n->name);
	}
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct nexus_replica *r = &n->replicas[s];

		if (!(resync & nexus_bit(s))) {
			continue;
		}
		r->state = KEEL_NEXUS_REPLICA_REBUILDING;
		r->rejoin = true;
		r->rejoin_in_sync = true;
		r->rejoin_generation = n->generation;
		r->rb_started = false;
		snprintf(r->detail, sizeof(r->detail),
			 "out of sync: resync after unclean shutdown");
		KEEL_WARNLOG("volume %s: unclean shutdown: resyncing replica %s from %s (%s)",
			     n->name, r->bdev_name, n->replicas[first].bdev_name,
			     covered ? "regions marked in the bitmap"
				     : "full copy, no valid bitmap");
	}
}

static void open_bitmap_loaded(struct nexus *n)
{
	unclean_resync(n);
	nexus_op_run(n, n->cur_op);
}

/* Apply the decision for slot \p s: take it as a member, or refuse it. */
static void assemble_apply_slot(struct nexus *n, unsigned s, const struct nexus_assemble_slot *d)
{
	struct nexus_replica *r = &n->replicas[s];

	if (d->labelled) {
		memcpy(r->uuid, r->label.replica_uuid, 16);
		r->generation = r->label.generation;
	}
	switch (d->verdict) {
	case NEXUS_SLOT_UNDECIDED:
		return;
	case NEXUS_SLOT_HEALTHY:
	case NEXUS_SLOT_OUT_OF_SYNC:
		if (d->behind) {
			KEEL_WARNLOG(
				"volume %s: replica %s: label generation %lu, newest %lu lists "
				"it: an interrupted label update, accepted",
				n->name, r->bdev_name, (unsigned long)r->generation,
				(unsigned long)n->generation);
		}
		r->member = true;
		if (d->verdict == NEXUS_SLOT_HEALTHY) {
			r->state = KEEL_NEXUS_REPLICA_HEALTHY;
		} else {
			r->state = KEEL_NEXUS_REPLICA_REBUILDING;
			snprintf(r->detail, sizeof(r->detail), "%s", d->detail);
		}
		return;
	case NEXUS_SLOT_FOREIGN:
		r->foreign = true;
		break;
	case NEXUS_SLOT_STALE:
		r->reason = KEEL_NEXUS_REASON_STALE;
		break;
	case NEXUS_SLOT_NO_LABEL:
	case NEXUS_SLOT_MISMATCH:
	case NEXUS_SLOT_DUPLICATE:
		break;
	}
	refuse(n, r, "%s", d->detail);
}

/* A member of the newest generation that was not handed to us: listed offline in
 * the first free slot (none free: not listed). */
static void assemble_list_missing(struct nexus *n, const struct nexus_assemble_missing *m)
{
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct nexus_replica *r = &n->replicas[s];

		if (r->used) {
			continue;
		}
		memset(r, 0, sizeof(*r));
		r->nexus = n;
		r->used = true;
		memcpy(r->uuid, m->uuid, 16);
		r->state = KEEL_NEXUS_REPLICA_OFFLINE;
		r->generation = n->generation;
		snprintf(r->detail, sizeof(r->detail),
			 "member of generation %lu (%s) not given at assembly",
			 (unsigned long)n->generation, m->in_sync ? "in sync" : "out of sync");
		return;
	}
}

/* The labels of every given bdev are read: decide (nexus_assemble.c), then apply. */
static void open_labels_read(struct nexus *n)
{
	struct nexus_op *op = n->cur_op;
	struct nexus_assemble_in in[NEXUS_MAX];
	struct nexus_assembly a;
	const struct nexus_label *newest;

	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct nexus_replica *r = &n->replicas[s];
		bool present = r->used && r->desc != NULL;

		in[s] = (struct nexus_assemble_in){
			.bdev_name = r->bdev_name,
			.present = present,
			.label_rc = r->label_rc,
			.label_why = r->label_why,
			.label = &r->label,
			.block_size = present ? keel_bdev_get_block_size(
							keel_bdev_desc_get_bdev(r->desc))
					      : 0,
			.size = present ? nexus_replica_size(r) : 0,
		};
	}
	nexus_assemble(in, NEXUS_MAX, n->name_given ? n->name : NULL, op->force, &a);
	snprintf(n->name, sizeof(n->name), "%s", a.name);
	newest = a.newest >= 0 ? &n->replicas[a.newest].label : NULL;
	if (newest != NULL) {
		memcpy(n->uuid, newest->volume_uuid, 16);
		n->volume_size = newest->volume_size;
		n->data_offset = newest->data_offset;
		n->block_size = newest->block_size;
		n->generation = a.generation;
		n->unclean_shutdown = a.unclean;
	}
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		assemble_apply_slot(n, s, &a.slots[s]);
	}
	if (a.outcome == NEXUS_ASSEMBLE_FAILED) {
		nexus_op_fail(op, a.status, "%s", a.why);
		if (a.status == -ENOENT) {
			describe_seen(n, op->errmsg, sizeof(op->errmsg), strlen(op->errmsg));
		}
		goto out_abort;
	}
	for (unsigned i = 0; i < a.num_missing; i++) {
		assemble_list_missing(n, &a.missing[i]);
	}
	if (a.outcome != NEXUS_ASSEMBLE_RUN) {
		snprintf(n->state_detail, sizeof(n->state_detail), "%s", a.why);
		describe_seen(n, n->state_detail, sizeof(n->state_detail), strlen(n->state_detail));
		/* Keep every replica claimed but out of the I/O path. */
		for (unsigned s = 0; s < NEXUS_MAX; s++) {
			if (a.outcome == NEXUS_ASSEMBLE_FAULTED_NO_INSYNC ||
			    n->replicas[s].state == KEEL_NEXUS_REPLICA_HEALTHY ||
			    n->replicas[s].state == KEEL_NEXUS_REPLICA_REBUILDING) {
				n->replicas[s].member = false;
			}
		}
		n->state = KEEL_NEXUS_FAULTED;
		KEEL_ERRLOG("volume %s: faulted at assembly: %s", n->name, n->state_detail);
		goto out_register_faulted;
	}
	if (a.forced) {
		KEEL_WARNLOG("volume %s: forced assembly without in-sync member(s) %s", n->name,
			     a.missing_list);
	}
	if (keel_bdev_get_by_name(n->name) != NULL) {
		nexus_op_fail(op, -EEXIST, "volume %s: a bdev of that name exists", n->name);
		goto out_abort;
	}
	n->bm_region_hint = (uint64_t)newest->bitmap_chunk_kib * 1024;
	if (bitmap_wanted() && nexus_bitmap_create(n) == 0) {
		uint16_t healthy = 0;

		for (unsigned s = 0; s < NEXUS_MAX; s++) {
			if (nexus_replica_attached(&n->replicas[s]) &&
			    n->replicas[s].state == KEEL_NEXUS_REPLICA_HEALTHY) {
				healthy |= nexus_bit(s);
			}
		}
		if (healthy != 0) {
			/* Merged: after a power cut the copies may differ. */
			nexus_bitmap_load(n, healthy, open_bitmap_loaded);
			return;
		}
	}
	unclean_resync(n);
	nexus_op_run(n, op); /* bumps the generation, marks the labels dirty, registers */
	return;

out_register_faulted : {
	int rc;

	if (keel_bdev_get_by_name(n->name) != NULL) {
		nexus_op_fail(op, -EEXIST, "volume %s: a bdev of that name exists", n->name);
		goto out_abort;
	}
	nexus_publish_cfg(n, false);
	rc = nexus_register_bdev(n);
	if (rc != 0) {
		nexus_op_fail(op, rc, "volume %s: cannot register the bdev: %s", n->name,
			      strerror(-rc));
		goto out_abort;
	}
	n->state = KEEL_NEXUS_FAULTED;
	nexus_op_finish(n);
	return;
}

out_abort:
	n->cur_op = NULL;
	n->busy = false;
	nexus_create_abort(n, op);
}

int keel_nexus_open(const struct keel_nexus_open_opts *opts, keel_nexus_op_cb cb_fn, void *cb_arg)
{
	struct nexus *n;
	struct nexus_op *op;
	uint16_t mask = 0;
	int rc;

	if (opts == NULL || (opts->name != NULL && !keel_nexus_name_valid(opts->name, NULL, 0)) ||
	    opts->replicas == NULL || opts->num_replicas == 0 || opts->num_replicas > NEXUS_MAX ||
	    !names_unique(opts->replicas, opts->num_replicas) ||
	    keel_thread_get_current() == NULL) {
		return -EINVAL;
	}
	n = nexus_alloc(opts->name);
	op = nexus_op_new(NEXUS_OP_OPEN, cb_fn, cb_arg);
	if (n != NULL) {
		n->name_given = opts->name != NULL;
	}
	if (n == NULL || op == NULL) {
		free(op);
		if (n != NULL) {
			nexus_free(n);
		}
		return -ENOMEM;
	}
	op->force = opts->force;
	n->cur_op = op;
	n->busy = true;
	if (opts->name != NULL &&
	    (keel_bdev_get_by_name(opts->name) != NULL || keel_nexus_get_by_name(opts->name))) {
		nexus_op_fail(op, -EEXIST, "volume %s: a bdev of that name exists", opts->name);
		goto out_abort;
	}
	for (uint32_t i = 0; i < opts->num_replicas; i++) {
		char err[200];

		rc = nexus_replica_attach(n, i, opts->replicas[i], err, sizeof(err));
		if (rc != 0) {
			struct nexus_replica *r = &n->replicas[i];

			r->state = KEEL_NEXUS_REPLICA_FAULTED;
			r->reason = KEEL_NEXUS_REASON_CANT_OPEN;
			snprintf(r->detail, sizeof(r->detail), "%.150s", err);
			KEEL_WARNLOG("volume %s: %s", opts->name ? opts->name : "?", err);
			continue;
		}
		mask |= nexus_bit(i);
	}
	rc = nexus_io_device_register(n);
	if (rc != 0) {
		nexus_op_fail(op, rc, "volume: cannot register the I/O device: %s", strerror(-rc));
		goto out_abort;
	}
	nexus_labels_read(n, mask, open_labels_read);
	return 0;

out_abort:
	n->cur_op = NULL;
	n->busy = false;
	nexus_create_abort(n, op);
	return 0;
}

/* ------------------------------------------------------------------------------ */
/* Destroy                                                                         */
/* ------------------------------------------------------------------------------ */

int keel_nexus_destroy(const char *name, bool wipe_labels, keel_nexus_op_cb cb_fn, void *cb_arg)
{
	struct nexus *n = (struct nexus *)keel_nexus_get_by_name(name);
	struct nexus_op *op;

	if (n == NULL) {
		return -ENODEV;
	}
	op = nexus_op_new(NEXUS_OP_DESTROY, cb_fn, cb_arg);
	if (op == NULL) {
		return -ENOMEM;
	}
	op->wipe = wipe_labels;
	n->destroy_op = op;
	n->destroying = true;
	KEEL_NOTICELOG("volume %s: stopping%s", n->name, wipe_labels ? " and wiping labels" : "");
	keel_bdev_unregister(&n->bdev, destroy_unregistered, op);
	return 0;
}
