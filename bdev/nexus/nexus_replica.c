/*
 * The replicas of a volume as bdevs: attach (open, claim, a label buffer and a
 * channel for label I/O), release, and the label I/O itself: both copies written
 * one after the other, each followed by a flush, so a crash tears at most one;
 * both read back at assembly and when a replica is added. Owner thread.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/log.h"

#include "nexus_internal.h"

static void replica_event_cb(enum keel_bdev_event_type type, struct keel_bdev *bdev, void *ctx)
{
	struct nexus_replica *r = ctx;
	struct nexus *n = r->nexus;

	if (type != KEEL_BDEV_EVENT_REMOVE) {
		return;
	}
	KEEL_WARNLOG("volume %s: replica %s: bdev is being removed", n->name, r->bdev_name);
	if (r->state == KEEL_NEXUS_REPLICA_HEALTHY || r->state == KEEL_NEXUS_REPLICA_REBUILDING) {
		if (!atomic_exchange(&r->fault_requested, true)) {
			atomic_store(&r->fault_status, -ENODEV);
			nexus_fault_arrived(r);
		}
	}
}

int nexus_replica_attach(struct nexus *n, unsigned s, const char *bdev_name, char *err,
			 size_t errlen)
{
	struct nexus_replica *r = &n->replicas[s];
	struct keel_bdev *bdev;
	uint32_t align, len;
	int rc;

	memset(r, 0, sizeof(*r));
	r->nexus = n;
	r->used = true;
	snprintf(r->bdev_name, sizeof(r->bdev_name), "%s", bdev_name);
	rc = keel_bdev_open_ext(bdev_name, true, replica_event_cb, r, &r->desc);
	if (rc != 0) {
		r->desc = NULL;
		snprintf(err, errlen, "replica %s: %s", bdev_name,
			 rc == -ENODEV  ? "no such bdev"
			 : rc == -EPERM ? "claimed by another module"
					: strerror(-rc));
		return rc;
	}
	rc = keel_bdev_module_claim_bdev(r->desc, &keel_bdev_nexus_module);
	if (rc != 0) {
		const char *owner = keel_bdev_get_claim_owner(keel_bdev_desc_get_bdev(r->desc));

		snprintf(err, errlen, "replica %s: claimed by module %s", bdev_name,
			 owner ? owner : "?");
		goto out_close;
	}
	bdev = keel_bdev_desc_get_bdev(r->desc);
	align = keel_bdev_get_buf_align(bdev);
	if (align < 4096) {
		align = 4096;
	}
	len = keel_bdev_get_block_size(bdev);
	if (len < NEXUS_LABEL_SIZE) {
		len = NEXUS_LABEL_SIZE;
	}
	r->label_buf_len = len;
	/* Two halves: assembly reads both label copies at once. */
	if (posix_memalign((void **)&r->label_buf, align, 2 * (size_t)len) != 0) {
		r->label_buf = NULL;
		rc = -ENOMEM;
		snprintf(err, errlen, "replica %s: out of memory", bdev_name);
		goto out_release;
	}
	r->label_ch = keel_bdev_get_io_channel(r->desc);
	if (r->label_ch == NULL) {
		rc = -ENOMEM;
		snprintf(err, errlen, "replica %s: cannot get an I/O channel", bdev_name);
		goto out_free_buf;
	}
	return 0;

out_free_buf:
	free(r->label_buf);
	r->label_buf = NULL;
out_release:
	keel_bdev_module_release_bdev(keel_bdev_desc_get_bdev(r->desc));
	rc = rc ? rc : -EPERM;
out_close:
	keel_bdev_close(r->desc);
	r->desc = NULL;
	return rc;
}

void nexus_replica_release(struct nexus_replica *r)
{
	if (r->label_ch != NULL) {
		keel_put_io_channel(r->label_ch);
		r->label_ch = NULL;
	}
	if (r->desc != NULL) {
		keel_bdev_module_release_bdev(keel_bdev_desc_get_bdev(r->desc));
		keel_bdev_close(r->desc);
		r->desc = NULL;
	}
	free(r->label_buf);
	r->label_buf = NULL;
}

uint64_t nexus_replica_size(const struct nexus_replica *r)
{
	struct keel_bdev *bdev = keel_bdev_desc_get_bdev(r->desc);

	return keel_bdev_get_num_blocks(bdev) * keel_bdev_get_block_size(bdev);
}

/* ------------------------------------------------------------------------------ */
/* Label I/O                                                                       */
/* ------------------------------------------------------------------------------ */

static void labels_one_done(struct nexus *n)
{
	if (--n->label_pending == 0) {
		n->label_done_fn(n);
	}
}

static void label_write_step(void *arg, int status);

static void label_write_next(struct nexus_replica *r)
{
	struct nexus *n = r->nexus;
	uint64_t size = nexus_replica_size(r);
	int rc;

	switch (r->label_step++) {
	case 0:
		rc = keel_bdev_write(r->desc, r->label_ch, r->label_buf, NEXUS_LABEL_COPY0_OFFSET,
				     r->label_buf_len, label_write_step, r);
		break;
	case 1:
	case 3:
		rc = keel_bdev_flush(r->desc, r->label_ch, 0, size, label_write_step, r);
		break;
	case 2:
		rc = keel_bdev_write(r->desc, r->label_ch, r->label_buf, NEXUS_LABEL_COPY1_OFFSET,
				     r->label_buf_len, label_write_step, r);
		break;
	default:
		labels_one_done(n);
		return;
	}
	if (rc != 0) {
		r->label_status = rc;
		labels_one_done(n);
	}
}

static void label_write_step(void *arg, int status)
{
	struct nexus_replica *r = arg;

	if (status != 0) {
		r->label_status = status;
		labels_one_done(r->nexus);
		return;
	}
	label_write_next(r);
}

static void fill_label(struct nexus *n, struct nexus_replica *r, struct nexus_label *l, bool clean)
{
	memset(l, 0, sizeof(*l));
	l->version = NEXUS_LABEL_VERSION;
	l->flags = clean ? 0 : NEXUS_LABEL_FLAG_DIRTY;
	l->generation = n->generation;
	memcpy(l->volume_uuid, n->uuid, 16);
	snprintf(l->volume_name, sizeof(l->volume_name), "%s", n->name);
	memcpy(l->replica_uuid, r->uuid, 16);
	l->volume_size = n->volume_size;
	l->data_offset = n->data_offset;
	l->block_size = n->block_size;
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		const struct nexus_replica *m = &n->replicas[s];

		if (!nexus_replica_attached(m)) {
			continue;
		}
		memcpy(l->members[l->num_members].uuid, m->uuid, 16);
		l->members[l->num_members].state = m->state == KEEL_NEXUS_REPLICA_HEALTHY
							   ? NEXUS_MEMBER_IN_SYNC
							   : NEXUS_MEMBER_OUT_OF_SYNC;
		l->num_members++;
	}
	nexus_bitmap_fill_label(n, l);
}

/* Write (or with wipe zero) both label copies on every slot of \p mask. */
void nexus_labels_write(struct nexus *n, uint16_t mask, bool wipe, bool clean,
			void (*done)(struct nexus *n))
{
	struct nexus_label l;

	n->label_done_fn = done;
	n->label_pending = 1;
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct nexus_replica *r = &n->replicas[s];

		if (!(mask & nexus_bit(s)) || r->desc == NULL) {
			continue;
		}
		memset(r->label_buf, 0, r->label_buf_len);
		if (!wipe) {
			fill_label(n, r, &l, clean);
			nexus_label_encode(&l, r->label_buf);
		}
		r->label_status = 0;
		r->label_step = 0;
		n->label_pending++;
		label_write_next(r);
	}
	labels_one_done(n);
}

static void label_read_done(void *arg, int status)
{
	struct nexus_replica *r = arg;
	struct nexus_label_copies c;

	if (status != 0) {
		r->label_status = status;
		r->label_rc = status;
		snprintf(r->label_why, sizeof(r->label_why), "label read failed: %s",
			 strerror(-status));
		labels_one_done(r->nexus);
		return;
	}
	if (r->label_step++ == 0) {
		int rc = keel_bdev_read(r->desc, r->label_ch, r->label_buf + r->label_buf_len,
					NEXUS_LABEL_COPY1_OFFSET, r->label_buf_len, label_read_done,
					r);

		if (rc != 0) {
			label_read_done(r, rc);
		}
		return;
	}
	r->label_rc = nexus_label_read_copies(r->label_buf, r->label_buf + r->label_buf_len,
					      r->label_buf_len, &r->label, r->label_why,
					      sizeof(r->label_why), &c);
	if (r->label_rc == 0 && c.differ) {
		KEEL_WARNLOG("volume %s: replica %s: label copies differ (%s / %s); "
			     "using copy %d (torn label write?)",
			     r->nexus->name, r->bdev_name, c.rc[0] ? c.why[0] : "ok",
			     c.rc[1] ? c.why[1] : "ok", c.which);
	}
	labels_one_done(r->nexus);
}

void nexus_labels_read(struct nexus *n, uint16_t mask, void (*done)(struct nexus *n))
{
	n->label_done_fn = done;
	n->label_pending = 1;
	for (unsigned s = 0; s < NEXUS_MAX; s++) {
		struct nexus_replica *r = &n->replicas[s];
		int rc;

		if (!(mask & nexus_bit(s)) || r->desc == NULL) {
			continue;
		}
		r->label_status = 0;
		r->label_step = 0;
		r->label_rc = -ENODATA;
		n->label_pending++;
		if (nexus_replica_size(r) < (uint64_t)NEXUS_LABEL_COPY1_OFFSET + r->label_buf_len) {
			r->label_rc = -ENODATA;
			snprintf(r->label_why, sizeof(r->label_why), "bdev too small for a label");
			labels_one_done(n);
			continue;
		}
		rc = keel_bdev_read(r->desc, r->label_ch, r->label_buf, NEXUS_LABEL_COPY0_OFFSET,
				    r->label_buf_len, label_read_done, r);
		if (rc != 0) {
			r->label_step = 1;
			label_read_done(r, rc);
		}
	}
	labels_one_done(n);
}
