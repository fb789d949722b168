/*
 * Assembly as a decision: given what the labels of the bdevs handed to
 * keel_nexus_open say, which ones are members of the volume, in which state, which
 * members are missing, and whether the volume may run. Pure functions with no I/O
 * and no state, so the rules are tested with tables of label combinations
 * (tests/unit/nexus/assemble_ut.c); nexus.c reads the labels, calls
 * nexus_assemble() and applies the result.
 *
 * The rules, in the order they apply:
 *   1. identity: a slot without a usable label is refused; with a volume name
 *      given, a label of another name is foreign; the first valid label fixes the
 *      volume (its UUID, and its name when none was given); a label of another UUID
 *      fails the assembly (the operator names the volume to pick one);
 *   2. the newest label (highest generation, first slot on a tie) is the volume's
 *      truth: its generation, geometry, dirty flag and member list;
 *   3. each slot is checked against it: block size, volume size and offset, bdev
 *      size, a replica UUID seen in an earlier slot; then membership: listed and at
 *      most one generation behind (an interrupted label update loses no
 *      acknowledged write) it is a member, healthy or out of sync as listed;
 *      otherwise it is stale;
 *   4. members of the newest label not present are missing; an in-sync one missing
 *      faults the volume unless forced (it may hold newer data); no in-sync member
 *      present faults it too.
 */
#ifndef KEEL_NEXUS_ASSEMBLE_H
#define KEEL_NEXUS_ASSEMBLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/nexus.h"

#include "nexus_label.h"

/* What assembly knows of one replica slot. */
struct nexus_assemble_in {
	const char *bdev_name;           /* for messages */
	bool present;                    /* its bdev is open and its labels were read */
	int label_rc;                    /* nexus_label_read_copies(): 0, or why no label */
	const char *label_why;           /* the reason when label_rc != 0 (may be empty) */
	const struct nexus_label *label; /* the label used, when label_rc == 0 */
	uint32_t block_size;             /* the bdev's */
	uint64_t size;                   /* the bdev's, bytes */
};

enum nexus_slot_verdict {
	NEXUS_SLOT_UNDECIDED = 0, /* not present, or after a failed identity check: as is */
	NEXUS_SLOT_NO_LABEL,      /* refused: no usable label */
	NEXUS_SLOT_FOREIGN,       /* refused: labelled for another volume */
	NEXUS_SLOT_MISMATCH,      /* refused: geometry differs from the newest label */
	NEXUS_SLOT_DUPLICATE,     /* refused: replica UUID of an earlier slot */
	NEXUS_SLOT_STALE,         /* refused: missed a generation, or no longer listed */
	NEXUS_SLOT_HEALTHY,       /* member, in sync */
	NEXUS_SLOT_OUT_OF_SYNC,   /* member, to be rebuilt */
};

struct nexus_assemble_slot {
	enum nexus_slot_verdict verdict;
	/* Passed the identity check: its label gives its UUID and generation. */
	bool labelled;
	bool behind;      /* a member one generation behind (interrupted label update) */
	char detail[160]; /* why refused, or what the state means */
};

enum nexus_assemble_outcome {
	NEXUS_ASSEMBLE_FAILED,            /* nothing to assemble: status and why */
	NEXUS_ASSEMBLE_RUN,               /* run (degraded when not every member is healthy) */
	NEXUS_ASSEMBLE_FAULTED_MISSING,   /* in-sync members missing, not forced */
	NEXUS_ASSEMBLE_FAULTED_NO_INSYNC, /* no in-sync member present */
};

struct nexus_assemble_missing {
	uint8_t uuid[16];
	bool in_sync;
};

struct nexus_assembly {
	enum nexus_assemble_outcome outcome;
	int status;    /* FAILED: -EINVAL (labels of two volumes), -ENOENT (no label) */
	char why[512]; /* FAILED and FAULTED_*: the reason, for the operator */
	char name[KEEL_NEXUS_NAME_MAX + 1]; /* given, or taken from the first valid label */
	int newest;                         /* slot of the newest label, -1 when none */
	uint64_t generation;
	bool unclean;     /* the newest label is dirty: the volume was not shut down */
	unsigned healthy; /* in-sync members present */
	unsigned missing_in_sync;
	bool forced;            /* RUN although in-sync members are missing */
	char missing_list[256]; /* UUIDs of the in-sync members missing, ", "-separated */
	unsigned num_missing;
	struct nexus_assemble_missing missing[KEEL_NEXUS_MAX_REPLICAS];
	struct nexus_assemble_slot slots[KEEL_NEXUS_MAX_REPLICAS];
};

/**
 * Decide the assembly of \p count slots (at most KEEL_NEXUS_MAX_REPLICAS) of \p in.
 * \p name: the volume name the caller expects, or NULL to take it from the labels.
 * \p force: run without in-sync members that are missing. Fills all of \p out.
 */
void nexus_assemble(const struct nexus_assemble_in *in, unsigned count, const char *name,
		    bool force, struct nexus_assembly *out);

/**
 * md's events rule: the write-intent bitmap covers the absence of a member whose
 * label says \p generation when it has not been cleared since, i.e. every write
 * it missed has its bit set. \p events_cleared: generation of the last clear pass,
 * UINT64_MAX when there is no valid bitmap (covers nothing).
 */
bool nexus_assemble_covers(uint64_t events_cleared, uint64_t generation);

/**
 * After an unclean shutdown, healthy replicas may differ where writes were in
 * flight. The first healthy slot of \p healthy (slot order: the order of
 * assembly) is the truth (*source); the others are resynced from it. Nothing is
 * resynced after a clean shutdown, or when the bitmap covers the volume's
 * generation (\p covered) and has no region marked (\p dirty_regions == 0).
 * \return the slots to resync (partial from the bitmap when \p covered, else full).
 */
uint16_t nexus_assemble_resync(bool unclean, bool covered, uint32_t dirty_regions, uint16_t healthy,
			       int *source);

/** Append formatted text at \p off of \p buf (\p len bytes), truncating; \return the
 * offset after it as snprintf counts (>= len once full: later appends do nothing). */
size_t nexus_append(char *buf, size_t len, size_t off, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

#endif /* KEEL_NEXUS_ASSEMBLE_H */
