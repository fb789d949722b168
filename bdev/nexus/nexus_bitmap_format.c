/*
 * Write-intent bitmap format: see nexus_bitmap_format.h.
 */
#include "nexus_bitmap_format.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "keel/util.h"
#include "nexus_label.h"

#define OFF_MAGIC 0
#define OFF_VERSION 8
#define OFF_CRC 12
#define OFF_EVENTS 16
#define OFF_REGION 24
#define OFF_NBITS 32
#define OFF_BLOCK 36
#define OFF_UUID 40

static bool pow2(uint64_t v)
{
	return v != 0 && (v & (v - 1)) == 0;
}

void nexus_bm_header_encode(const struct nexus_bm_header *h, uint8_t *buf)
{
	memset(buf, 0, NEXUS_BM_HDR_LEN);
	memcpy(buf + OFF_MAGIC, NEXUS_BM_MAGIC, 8);
	keel_put_le32(buf + OFF_VERSION, h->version);
	keel_put_le64(buf + OFF_EVENTS, h->events_cleared);
	keel_put_le64(buf + OFF_REGION, h->region_size);
	keel_put_le32(buf + OFF_NBITS, h->nbits);
	keel_put_le32(buf + OFF_BLOCK, h->block_size);
	memcpy(buf + OFF_UUID, h->volume_uuid, 16);
	keel_put_le32(buf + OFF_CRC, nexus_crc32c(0, buf, NEXUS_BM_HDR_LEN));
}

int nexus_bm_header_decode(const uint8_t *buf, size_t len, struct nexus_bm_header *h, char *why,
			   size_t whylen)
{
	const char *reason;
	int rc = -EINVAL;

	memset(h, 0, sizeof(*h));
	if (len < NEXUS_BM_HDR_LEN) {
		reason = "bitmap header shorter than its fixed size";
		goto out_fail;
	}
	/* The checksum covers the version too: check it before trusting any field. */
	rc = nexus_crc_record_check(buf, NEXUS_BM_HDR_LEN, NEXUS_BM_MAGIC, OFF_CRC);
	if (rc != 0) {
		reason = rc == -ENODATA ? "no bitmap header" : "bitmap header checksum mismatch";
		goto out_fail;
	}
	rc = -EINVAL;
	h->version = keel_get_le32(buf + OFF_VERSION);
	if (h->version != NEXUS_BM_VERSION) {
		reason = h->version == 1 ? "bitmap version 1 (no block checksums)"
					 : "unknown bitmap version";
		rc = -EPROTONOSUPPORT;
		goto out_fail;
	}
	h->events_cleared = keel_get_le64(buf + OFF_EVENTS);
	h->region_size = keel_get_le64(buf + OFF_REGION);
	h->nbits = keel_get_le32(buf + OFF_NBITS);
	h->block_size = keel_get_le32(buf + OFF_BLOCK);
	memcpy(h->volume_uuid, buf + OFF_UUID, 16);
	if (!pow2(h->block_size) || h->block_size < NEXUS_BM_BLOCK_MIN ||
	    h->block_size > NEXUS_BM_BLOCK_MAX || !pow2(h->region_size) || h->region_size < 4096 ||
	    h->nbits == 0) {
		reason = "bitmap header fields out of range";
		goto out_fail;
	}
	return 0;

out_fail:
	if (why != NULL && whylen > 0) {
		snprintf(why, whylen, "%s", reason);
	}
	return rc;
}

/* crc32c over the block up to its crc field, seeded with the volume uuid. */
static uint32_t block_crc(const uint8_t *buf, size_t len, const uint8_t *volume_uuid)
{
	return nexus_crc32c(nexus_crc32c(0, volume_uuid, 16), buf, len - 4);
}

void nexus_bm_block_seal(uint8_t *buf, uint32_t block_size, uint32_t index,
			 const uint8_t *volume_uuid)
{
	keel_put_le32(buf + block_size - NEXUS_BM_TRAILER, index);
	keel_put_le32(buf + block_size - 4, block_crc(buf, block_size, volume_uuid));
}

int nexus_bm_block_check(const uint8_t *buf, size_t len, uint32_t index, const uint8_t *volume_uuid)
{
	if (len <= NEXUS_BM_TRAILER) {
		return -EINVAL;
	}
	if (keel_get_le32(buf + len - NEXUS_BM_TRAILER) != index ||
	    keel_get_le32(buf + len - 4) != block_crc(buf, len, volume_uuid)) {
		return -EBADMSG;
	}
	return 0;
}
