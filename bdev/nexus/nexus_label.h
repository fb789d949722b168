/*
 * On-disk label of a nexus replica: layout, encode/decode, crc32c, UUID helpers.
 * Pure functions with no I/O so they are tested directly (tests/unit/nexus).
 *
 * Layout of one label copy (little endian, NEXUS_LABEL_SIZE bytes, crc32c over the
 * whole copy with the crc field zeroed):
 *
 *   0  magic "KEELVOL1"       8  u32 version         12 u32 label size
 *  16  u32 crc32c            20  u32 flags (dirty)    24 u64 generation
 *  32  volume uuid[16]       48  volume name[64] NUL-padded
 * 112  replica uuid[16]     128  u64 volume size     136 u64 data offset
 * 144  u32 block size       148  u32 member count
 * 152  u64 bitmap offset    160  u64 bitmap length   168 u32 bitmap chunk KiB
 * 172  u32 reserved         176  u64 bitmap events_cleared   184..255 reserved
 * 256  members[16] x 32: uuid[16], u32 state, u32 reserved, u64 reserved
 *
 * The bitmap fields are reserved for the write-intent bitmap of the rebuild engine;
 * version 1 writes them as zero and ignores them.
 */
#ifndef KEEL_NEXUS_LABEL_H
#define KEEL_NEXUS_LABEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/nexus.h"

#define NEXUS_LABEL_MAGIC "KEELVOL1"
/* Version 2: the bitmap fields are used (write-intent bitmap); version 1 labels
 * are still read (they have no bitmap). */
#define NEXUS_LABEL_VERSION 2u
#define NEXUS_LABEL_VERSION_MIN 1u
#define NEXUS_LABEL_SIZE 4096u
/* Two copies so a write torn by a crash leaves the other one intact; they are
 * written one after the other, each followed by a flush. */
#define NEXUS_LABEL_COPY0_OFFSET 0u
#define NEXUS_LABEL_COPY1_OFFSET (512u * 1024u)
/* The write-intent bitmap (nexus_bitmap.c) lives between the copies and starts with
 * NEXUS_BM_MAGIC (nexus_bitmap_format.h); a wiped replica keeps it, so it alone
 * marks a former replica. */
#define NEXUS_BITMAP_OFFSET (64u * 1024u)

#define NEXUS_LABEL_FLAG_DIRTY (1u << 0)

enum nexus_member_state {
	NEXUS_MEMBER_IN_SYNC = 1,
	NEXUS_MEMBER_OUT_OF_SYNC = 2,
};

struct nexus_label_member {
	uint8_t uuid[16];
	uint32_t state; /* enum nexus_member_state */
};

struct nexus_label {
	uint32_t version;
	uint32_t flags;
	uint64_t generation;
	uint8_t volume_uuid[16];
	char volume_name[KEEL_NEXUS_NAME_MAX + 1];
	uint8_t replica_uuid[16];
	uint64_t volume_size;
	uint64_t data_offset;
	uint32_t block_size;
	uint32_t num_members;
	uint64_t bitmap_offset;
	uint64_t bitmap_len;
	uint32_t bitmap_chunk_kib;
	uint64_t bitmap_events_cleared;
	struct nexus_label_member members[KEEL_NEXUS_MAX_REPLICAS];
};

/** crc32c (Castagnoli), reflected, with the usual ~0 pre/post conditioning:
 * nexus_crc32c(0, "123456789", 9) == 0xe3069283. Chain by passing the last value. */
uint32_t nexus_crc32c(uint32_t crc, const void *buf, size_t len);

/**
 * Check a checksummed record of \p len bytes (a label copy, the bitmap header): it
 * starts with the 8-byte \p magic and holds at \p crc_off the crc32c of the whole
 * record computed with that field zeroed. \return 0, -ENODATA (no magic), -EBADMSG.
 */
int nexus_crc_record_check(const uint8_t *buf, size_t len, const char *magic, size_t crc_off);

/** Serialise \p label into \p buf (NEXUS_LABEL_SIZE bytes) with its checksum. */
void nexus_label_encode(const struct nexus_label *label, uint8_t *buf);

/**
 * Parse and validate one copy of \p len bytes (NEXUS_LABEL_SIZE are read; fewer is
 * -EINVAL). Pure: no I/O, any input (fuzz target). \return 0, -ENODATA (no magic:
 * blank), -EBADMSG (bad checksum), -EPROTONOSUPPORT (unknown version), -EINVAL
 * (fields inconsistent, or a volume name keel_nexus_name_valid refuses).
 * \p why (may be NULL) gets a short reason on failure, never the name itself.
 */
int nexus_label_decode(const uint8_t *buf, size_t len, struct nexus_label *label, char *why,
		       size_t whylen);

/**
 * Pick the label of a replica from its two copies (decode results \p rc0, \p rc1):
 * the valid one with the higher generation. \return 0 and *out = 0 or 1, or the
 * "best" error: -EBADMSG if any copy had a magic but a bad checksum, -ENODATA when
 * both are blank, else the error of copy 0.
 */
int nexus_label_pick(int rc0, const struct nexus_label *l0, int rc1, const struct nexus_label *l1,
		     int *out);

/** Why a replica's label is refused, from nexus_label_pick's \p rc and the decode
 * reasons of both copies (for messages). */
const char *nexus_label_pick_why(int rc, int rc0, const char *why0, const char *why1);

/** What nexus_label_read_copies found in each copy of a replica's label. */
struct nexus_label_copies {
	int rc[2];       /* nexus_label_decode of copy 0 and of copy 1 */
	char why[2][96]; /* their reasons (empty where rc is 0) */
	int which;       /* the copy used, when one was */
	/* One was used, but the copies disagree: a write torn by a crash, or
	 * interrupted between the two copies. */
	bool differ;
};

/**
 * The label of a replica from its two copies (\p len bytes each): decode both and
 * pick (nexus_label_pick). Pure. \p info (may be NULL) gets the details.
 * \return 0 and *label, or nexus_label_pick's error with the reason in \p why.
 */
int nexus_label_read_copies(const uint8_t *copy0, const uint8_t *copy1, size_t len,
			    struct nexus_label *label, char *why, size_t whylen,
			    struct nexus_label_copies *info);

/** The member entry of \p uuid, or NULL. */
const struct nexus_label_member *nexus_label_find_member(const struct nexus_label *label,
							 const uint8_t *uuid);

#endif /* KEEL_NEXUS_LABEL_H */
