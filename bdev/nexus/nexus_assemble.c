/*
 * Assembly decision: see nexus_assemble.h for the rules.
 */
#include "nexus_assemble.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

size_t nexus_append(char *buf, size_t len, size_t off, const char *fmt, ...)
{
	va_list ap;
	int w;

	if (off >= len) {
		return off;
	}
	va_start(ap, fmt);
	w = vsnprintf(buf + off, len - off, fmt, ap);
	va_end(ap);
	return w < 0 ? off : off + (size_t)w;
}

__attribute__((format(printf, 3, 4))) static void verdict(struct nexus_assemble_slot *slot,
							  enum nexus_slot_verdict v,
							  const char *fmt, ...)
{
	va_list ap;

	slot->verdict = v;
	va_start(ap, fmt);
	vsnprintf(slot->detail, sizeof(slot->detail), fmt, ap);
	va_end(ap);
}

static bool is_member(const struct nexus_assemble_slot *slot)
{
	return slot->verdict == NEXUS_SLOT_HEALTHY || slot->verdict == NEXUS_SLOT_OUT_OF_SYNC;
}

/* Rule 1. \return false when the labels name two volumes (out->status set). */
static bool decide_identity(const struct nexus_assemble_in *in, unsigned count, const char *name,
			    struct nexus_assembly *out)
{
	const struct nexus_label *first = NULL;

	for (unsigned s = 0; s < count; s++) {
		const struct nexus_assemble_in *r = &in[s];
		struct nexus_assemble_slot *slot = &out->slots[s];
		char u1[KEEL_UUID_STR_LEN], u2[KEEL_UUID_STR_LEN];

		if (!r->present) {
			continue;
		}
		if (r->label_rc != 0) {
			verdict(slot, NEXUS_SLOT_NO_LABEL, "%s",
				r->label_why != NULL && r->label_why[0] ? r->label_why
									: "no keel label");
			continue;
		}
		if (name != NULL && strcmp(r->label->volume_name, name) != 0) {
			keel_uuid_fmt(r->label->volume_uuid, u1);
			verdict(slot, NEXUS_SLOT_FOREIGN,
				"label belongs to another volume: %s (%s)", r->label->volume_name,
				u1);
			continue;
		}
		if (first == NULL) {
			first = r->label;
			if (out->name[0] == '\0') {
				snprintf(out->name, sizeof(out->name), "%s", first->volume_name);
			}
		} else if (memcmp(first->volume_uuid, r->label->volume_uuid, 16) != 0) {
			keel_uuid_fmt(first->volume_uuid, u1);
			keel_uuid_fmt(r->label->volume_uuid, u2);
			out->status = -EINVAL;
			snprintf(out->why, sizeof(out->why),
				 "volume %s: replicas carry labels of "
				 "different volumes (%s and %s, replica %s); name the volume to "
				 "pick one",
				 out->name, u1, u2, r->bdev_name);
			return false;
		}
		slot->labelled = true;
	}
	return true;
}

/* Rule 3 for one labelled slot \p s, against the newest label \p nl. */
static void decide_slot(const struct nexus_assemble_in *in, unsigned s,
			const struct nexus_label *nl, struct nexus_assembly *out)
{
	const struct nexus_assemble_in *r = &in[s];
	const struct nexus_label *l = r->label;
	struct nexus_assemble_slot *slot = &out->slots[s];
	const struct nexus_label_member *m;

	if (l->block_size != r->block_size) {
		verdict(slot, NEXUS_SLOT_MISMATCH, "label says block size %u, bdev has %u",
			l->block_size, r->block_size);
		return;
	}
	if (l->volume_size != nl->volume_size || l->data_offset != nl->data_offset) {
		verdict(slot, NEXUS_SLOT_MISMATCH,
			"label says volume size %lu at offset %lu, "
			"newest label says %lu at %lu",
			(unsigned long)l->volume_size, (unsigned long)l->data_offset,
			(unsigned long)nl->volume_size, (unsigned long)nl->data_offset);
		return;
	}
	if (r->size < nl->data_offset + nl->volume_size) {
		verdict(slot, NEXUS_SLOT_MISMATCH, "bdev has %lu bytes, the volume needs %lu",
			(unsigned long)r->size, (unsigned long)(nl->data_offset + nl->volume_size));
		return;
	}
	for (unsigned t = 0; t < s; t++) {
		if (is_member(&out->slots[t]) &&
		    memcmp(in[t].label->replica_uuid, l->replica_uuid, 16) == 0) {
			verdict(slot, NEXUS_SLOT_DUPLICATE, "same replica UUID as %s",
				in[t].bdev_name);
			return;
		}
	}
	m = nexus_label_find_member(nl, l->replica_uuid);
	/* Behind the newest label by exactly one generation but listed in it: the
	 * label update was interrupted (crash). Writes are held while labels are
	 * written and a member whose label write fails is faulted in a further
	 * generation, so this replica missed no acknowledged write. Anything older,
	 * or not listed, missed a whole generation. */
	if (m == NULL || l->generation + 1 < nl->generation) {
		verdict(slot, NEXUS_SLOT_STALE, "stale: label generation %lu, volume is at %lu%s",
			(unsigned long)l->generation, (unsigned long)nl->generation,
			m == NULL ? " and no longer lists it" : "");
		return;
	}
	slot->behind = l->generation < nl->generation;
	if (m->state == NEXUS_MEMBER_IN_SYNC) {
		verdict(slot, NEXUS_SLOT_HEALTHY, "%s", "");
		out->healthy++;
	} else {
		verdict(slot, NEXUS_SLOT_OUT_OF_SYNC, "out of sync (label says so)");
	}
}

/* Rule 4: members of the newest label that no slot holds. */
static void decide_missing(unsigned count, const struct nexus_assemble_in *in,
			   const struct nexus_label *nl, struct nexus_assembly *out)
{
	size_t off = 0;

	for (uint32_t i = 0; i < nl->num_members && i < KEEL_NEXUS_MAX_REPLICAS; i++) {
		const struct nexus_label_member *m = &nl->members[i];
		struct nexus_assemble_missing *mi;
		bool found = false;
		char u[KEEL_UUID_STR_LEN];

		for (unsigned s = 0; s < count && !found; s++) {
			found = is_member(&out->slots[s]) &&
				memcmp(in[s].label->replica_uuid, m->uuid, 16) == 0;
		}
		if (found) {
			continue;
		}
		mi = &out->missing[out->num_missing++];
		memcpy(mi->uuid, m->uuid, 16);
		mi->in_sync = m->state == NEXUS_MEMBER_IN_SYNC;
		if (mi->in_sync) {
			keel_uuid_fmt(m->uuid, u);
			out->missing_in_sync++;
			off = nexus_append(out->missing_list, sizeof(out->missing_list), off,
					   "%s%s", off ? ", " : "", u);
		}
	}
}

void nexus_assemble(const struct nexus_assemble_in *in, unsigned count, const char *name,
		    bool force, struct nexus_assembly *out)
{
	const struct nexus_label *nl = NULL;

	memset(out, 0, sizeof(*out));
	out->outcome = NEXUS_ASSEMBLE_FAILED;
	out->newest = -1;
	if (count > KEEL_NEXUS_MAX_REPLICAS) {
		count = KEEL_NEXUS_MAX_REPLICAS;
	}
	if (name != NULL) {
		snprintf(out->name, sizeof(out->name), "%s", name);
	}
	if (!decide_identity(in, count, name, out)) {
		return;
	}
	/* Rule 2. */
	for (unsigned s = 0; s < count; s++) {
		if (out->slots[s].labelled &&
		    (nl == NULL || in[s].label->generation > nl->generation)) {
			nl = in[s].label;
			out->newest = (int)s;
		}
	}
	if (nl == NULL) {
		out->status = -ENOENT;
		snprintf(out->why, sizeof(out->why),
			 "volume %s: no replica carries a valid label of it",
			 out->name[0] ? out->name : "?");
		return;
	}
	out->generation = nl->generation;
	out->unclean = (nl->flags & NEXUS_LABEL_FLAG_DIRTY) != 0;
	for (unsigned s = 0; s < count; s++) {
		if (out->slots[s].labelled) {
			decide_slot(in, s, nl, out);
		}
	}
	decide_missing(count, in, nl, out);
	if (out->missing_in_sync > 0 && !force) {
		out->outcome = NEXUS_ASSEMBLE_FAULTED_MISSING;
		snprintf(out->why, sizeof(out->why),
			 "in-sync member(s) %s of generation %lu missing: they may hold newer "
			 "data; keel does not guess (open with force to accept the newest "
			 "replicas present)",
			 out->missing_list, (unsigned long)out->generation);
		return;
	}
	if (out->healthy == 0) {
		out->outcome = NEXUS_ASSEMBLE_FAULTED_NO_INSYNC;
		snprintf(out->why, sizeof(out->why), "no in-sync replica of generation %lu present",
			 (unsigned long)out->generation);
		return;
	}
	out->outcome = NEXUS_ASSEMBLE_RUN;
	out->forced = out->missing_in_sync > 0;
}

bool nexus_assemble_covers(uint64_t events_cleared, uint64_t generation)
{
	return events_cleared != UINT64_MAX && generation >= events_cleared;
}

uint16_t nexus_assemble_resync(bool unclean, bool covered, uint32_t dirty_regions, uint16_t healthy,
			       int *source)
{
	*source = -1;
	if (!unclean || (covered && dirty_regions == 0) || healthy == 0) {
		return 0;
	}
	*source = __builtin_ctz(healthy);
	return (uint16_t)(healthy & ~(1u << *source));
}
