/*
 * On-disk format of the write-intent bitmap (nexus_bitmap.c): pure encode, decode
 * and check functions, no I/O, so they are tested directly and fuzzed.
 *
 * Layout (little endian), at NEXUS_BITMAP_OFFSET of every replica, in blocks of
 * `block_size` bytes (the bitmap's I/O unit, >= 4096):
 *
 *   block 0: header, the first NEXUS_BM_HDR_LEN bytes:
 *     0 magic "KEELBMP1"   8 u32 version    12 u32 crc32c of these 64 bytes
 *    16 u64 events_cleared                  24 u64 region size (bytes per bit)
 *    32 u32 number of bits 36 u32 block size 40 volume uuid[16]   56 reserved
 *   block 1 + k: bits [k * B, (k + 1) * B), B = nexus_bm_bits_per_block(block_size),
 *     bit i of the block in byte i / 8, bit i % 8; the last NEXUS_BM_TRAILER bytes
 *     are le32 k and le32 crc32c, seeded with the crc of the volume uuid, over the
 *     block up to that crc field.
 *
 * Each bit block carries its own checksum so a block can be written alone (one
 * crc per block written) and a corrupt block costs only its own range: read as
 * all set, those regions are resynced instead of skipped. The index and the uuid
 * in the checksum catch a block written to the wrong place or left by another
 * volume.
 *
 * Version 1 had no block checksums; it is not trusted (docs/rebuild.md).
 */
#ifndef KEEL_NEXUS_BITMAP_FORMAT_H
#define KEEL_NEXUS_BITMAP_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#define NEXUS_BM_MAGIC "KEELBMP1"
#define NEXUS_BM_VERSION 2u
#define NEXUS_BM_HDR_LEN 64u
#define NEXUS_BM_TRAILER 8u
#define NEXUS_BM_BLOCK_MIN 4096u
#define NEXUS_BM_BLOCK_MAX 65536u

struct nexus_bm_header {
	uint32_t version;
	uint64_t events_cleared;
	uint64_t region_size;
	uint32_t nbits;
	uint32_t block_size;
	uint8_t volume_uuid[16];
};

/** Bits one block of \p block_size bytes holds. */
static inline uint32_t nexus_bm_bits_per_block(uint32_t block_size)
{
	return (block_size - NEXUS_BM_TRAILER) * 8u;
}

/** Write \p h (version included) into \p buf, NEXUS_BM_HDR_LEN bytes, with its crc. */
void nexus_bm_header_encode(const struct nexus_bm_header *h, uint8_t *buf);

/**
 * Parse the header in \p buf of \p len bytes (any input). \return 0, -EINVAL (short
 * buffer, or fields out of range: block size not a power of two in 4096..65536,
 * region size not a power of two >= 4096, no bits), -ENODATA (no magic),
 * -EBADMSG (checksum), -EPROTONOSUPPORT (another version; h->version says which).
 * \p why (may be NULL) gets a short reason on failure.
 */
int nexus_bm_header_decode(const uint8_t *buf, size_t len, struct nexus_bm_header *h, char *why,
			   size_t whylen);

/** Fill the trailer of bit block \p index (\p block_size bytes at \p buf). */
void nexus_bm_block_seal(uint8_t *buf, uint32_t block_size, uint32_t index,
			 const uint8_t *volume_uuid);

/**
 * Check bit block \p index read into \p buf (\p len bytes, the block size).
 * \return 0, -EINVAL (len too small to hold a trailer), -EBADMSG (checksum or
 * index does not match: its bits cannot be trusted).
 */
int nexus_bm_block_check(const uint8_t *buf, size_t len, uint32_t index,
			 const uint8_t *volume_uuid);

#endif /* KEEL_NEXUS_BITMAP_FORMAT_H */
