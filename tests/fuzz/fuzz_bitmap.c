/*
 * Fuzz the write-intent bitmap format: the header decoder on any bytes, then (when the
 * header decodes) the rest of the input as bit blocks of the header's block size,
 * checked as assembly checks them. A decoded header must round-trip, and a block
 * sealed for its index must pass its own check.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "nexus_bitmap_format.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t hdr[NEXUS_BM_HDR_LEN], block[NEXUS_BM_BLOCK_MAX];
	struct nexus_bm_header h, again;
	char why[96];
	size_t off;

	fuzz_quiet_logs();
	if (nexus_bm_header_decode(data, size, &h, why, sizeof(why)) != 0) {
		/* Still feed the block check: the first 16 bytes are the volume uuid, the
		 * rest one block of any length (it must refuse, never crash). */
		if (size >= 16) {
			(void)nexus_bm_block_check(data + 16, size - 16, data[0], data);
		}
		return 0;
	}
	nexus_bm_header_encode(&h, hdr);
	if (nexus_bm_header_decode(hdr, sizeof(hdr), &again, NULL, 0) != 0 ||
	    again.events_cleared != h.events_cleared || again.region_size != h.region_size ||
	    again.nbits != h.nbits || again.block_size != h.block_size ||
	    memcmp(again.volume_uuid, h.volume_uuid, 16) != 0) {
		abort();
	}
	/* Blocks follow the header block; a short input checks what it has. */
	for (off = h.block_size; off + h.block_size <= size; off += h.block_size) {
		uint32_t k = (uint32_t)(off / h.block_size - 1);

		if (nexus_bm_block_check(data + off, h.block_size, k, h.volume_uuid) == 0) {
			continue;
		}
		memcpy(block, data + off, h.block_size);
		nexus_bm_block_seal(block, h.block_size, k, h.volume_uuid);
		if (nexus_bm_block_check(block, h.block_size, k, h.volume_uuid) != 0) {
			abort(); /* a block keel sealed fails keel's own check */
		}
	}
	return 0;
}
