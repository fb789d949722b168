#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include "nexus_label.h"
#include "nexus_bitmap_format.h"
static void wr(const char *p, const void *b, size_t n)
{
	FILE *f = fopen(p, "wb");
	fwrite(b, 1, n, f);
	fclose(f);
}
int main(int argc, char **argv)
{
	const char *d = argv[1];
	char p[512];
	struct nexus_label l;
	memset(&l, 0, sizeof l);
	static uint8_t buf[2 * NEXUS_LABEL_SIZE];
	l.version = NEXUS_LABEL_VERSION;
	l.generation = 7;
	nexus_uuid_generate(l.volume_uuid);
	strcpy(l.volume_name, "vol0");
	nexus_uuid_generate(l.replica_uuid);
	l.volume_size = 64ull << 20;
	l.data_offset = KEEL_NEXUS_DATA_OFFSET;
	l.block_size = 4096;
	l.num_members = 2;
	memcpy(l.members[0].uuid, l.replica_uuid, 16);
	l.members[0].state = NEXUS_MEMBER_IN_SYNC;
	nexus_uuid_generate(l.members[1].uuid);
	l.members[1].state = NEXUS_MEMBER_OUT_OF_SYNC;
	l.bitmap_offset = NEXUS_BITMAP_OFFSET;
	l.bitmap_len = 8192;
	l.bitmap_chunk_kib = 64;
	nexus_label_encode(&l, buf);
	struct nexus_label c;
	char why[96];
	if (nexus_label_decode(buf, NEXUS_LABEL_SIZE, &c, why, 96) != 0) {
		fprintf(stderr, "bad %s\n", why);
		return 1;
	}
	snprintf(p, 512, "%s/label/one_copy", d);
	wr(p, buf, NEXUS_LABEL_SIZE);
	l.generation = 8;
	l.flags = NEXUS_LABEL_FLAG_DIRTY;
	nexus_label_encode(&l, buf + NEXUS_LABEL_SIZE);
	snprintf(p, 512, "%s/label/two_copies", d);
	wr(p, buf, 2 * NEXUS_LABEL_SIZE);
	l.version = 1;
	l.bitmap_offset = 0;
	l.bitmap_len = 0;
	l.bitmap_chunk_kib = 0;
	nexus_label_encode(&l, buf);
	snprintf(p, 512, "%s/label/version1", d);
	wr(p, buf, NEXUS_LABEL_SIZE);
	/* bitmap: header block + 2 bit blocks of 4096 */
	static uint8_t bm[3 * 4096];
	struct nexus_bm_header h = {.version = NEXUS_BM_VERSION,
				    .events_cleared = 3,
				    .region_size = 65536,
				    .nbits = 40000,
				    .block_size = 4096};
	memcpy(h.volume_uuid, l.volume_uuid, 16);
	nexus_bm_header_encode(&h, bm);
	memset(bm + 4096, 0, 4096);
	bm[4096] = 0x81;
	bm[4096 + 100] = 0xff;
	nexus_bm_block_seal(bm + 4096, 4096, 0, h.volume_uuid);
	nexus_bm_block_seal(bm + 8192, 4096, 1, h.volume_uuid);
	struct nexus_bm_header hh;
	if (nexus_bm_header_decode(bm, sizeof bm, &hh, why, 96) != 0) {
		fprintf(stderr, "bm %s\n", why);
		return 1;
	}
	snprintf(p, 512, "%s/bitmap/header_two_blocks", d);
	wr(p, bm, sizeof bm);
	snprintf(p, 512, "%s/bitmap/header_only", d);
	wr(p, bm, 4096);
	bm[8192 + 5] ^= 1;
	snprintf(p, 512, "%s/bitmap/bad_block", d);
	wr(p, bm, sizeof bm);
	return 0;
}
