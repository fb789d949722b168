/*
 * Nexus unit tests: labels, mirrored I/O, faults, assembly, refusals.
 *
 * Most tests run on the deterministic harness (several keel threads on one OS
 * thread) over malloc bdevs, with error bdevs in between where a replica must fail.
 * The last test runs real reactors on CPUs 0-1 and faults a replica under load.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "keel/bdev.h"
#include "keel/bdev_module.h"
#include "keel/log.h"
#include "keel/nexus.h"
#include "keel/reactor.h"

#include "bdev/nexus/nexus_bitmap_format.h"
#include "bdev/nexus/nexus_label.h"
#include "nexus_ut_common.h"
#include "ut_cunit.h"
#include "ut_threads.h"

/* ------------------------------------------------------------------------------ */
/* Labels (pure)                                                                   */
/* ------------------------------------------------------------------------------ */

static void sample_label(struct nexus_label *l)
{
	memset(l, 0, sizeof(*l));
	l->version = NEXUS_LABEL_VERSION;
	l->flags = NEXUS_LABEL_FLAG_DIRTY;
	l->generation = 42;
	keel_uuid_generate(l->volume_uuid);
	snprintf(l->volume_name, sizeof(l->volume_name), "vol-label");
	keel_uuid_generate(l->replica_uuid);
	l->volume_size = 64 * MB;
	l->data_offset = DATA_OFF;
	l->block_size = 4096;
	l->num_members = 2;
	memcpy(l->members[0].uuid, l->replica_uuid, 16);
	l->members[0].state = NEXUS_MEMBER_IN_SYNC;
	keel_uuid_generate(l->members[1].uuid);
	l->members[1].state = NEXUS_MEMBER_OUT_OF_SYNC;
}

static void test_crc32c(void)
{
	static const char check[] = "123456789";

	CU_ASSERT_EQUAL(nexus_crc32c(0, check, 9), 0xe3069283u);
	CU_ASSERT_EQUAL(nexus_crc32c(0, "", 0), 0u);
	/* chaining equals one pass */
	CU_ASSERT_EQUAL(nexus_crc32c(nexus_crc32c(0, check, 4), check + 4, 5), 0xe3069283u);
}

static void test_label_roundtrip(void)
{
	uint8_t *buf = abuf(NEXUS_LABEL_SIZE);
	struct nexus_label l, d;
	char why[96];

	sample_label(&l);
	nexus_label_encode(&l, buf);
	CU_ASSERT_FATAL(nexus_label_decode(buf, NEXUS_LABEL_SIZE, &d, why, sizeof(why)) == 0);
	CU_ASSERT(d.version == l.version && d.flags == l.flags && d.generation == 42);
	CU_ASSERT(memcmp(d.volume_uuid, l.volume_uuid, 16) == 0);
	CU_ASSERT_STRING_EQUAL(d.volume_name, "vol-label");
	CU_ASSERT(memcmp(d.replica_uuid, l.replica_uuid, 16) == 0);
	CU_ASSERT(d.volume_size == l.volume_size && d.data_offset == l.data_offset);
	CU_ASSERT(d.block_size == 4096 && d.num_members == 2);
	CU_ASSERT(memcmp(d.members, l.members, sizeof(l.members)) == 0);
	/* fixed layout: magic at 0, generation little endian at 24 */
	CU_ASSERT(memcmp(buf, "KEELVOL1", 8) == 0);
	CU_ASSERT(buf[24] == 42 && buf[25] == 0);
	free(buf);
}

/* The byte order of every field kind on disk (keel/util.h writes them): a helper
 * that swapped bytes consistently would still round-trip, and still break every
 * label written before it. */
static void test_label_layout(void)
{
	static const uint8_t gen[8] = {0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01};
	uint8_t *buf = abuf(NEXUS_LABEL_SIZE);
	struct nexus_label l, d;
	uint32_t crc;

	sample_label(&l);
	l.generation = 0x0102030405060708ull;
	nexus_label_encode(&l, buf);
	CU_ASSERT(buf[8] == NEXUS_LABEL_VERSION && buf[9] == 0 && buf[10] == 0 && buf[11] == 0);
	CU_ASSERT(buf[12] == 0x00 && buf[13] == 0x10 && buf[14] == 0 && buf[15] == 0);
	CU_ASSERT(memcmp(buf + 24, gen, 8) == 0);
	CU_ASSERT(buf[144] == 0x00 && buf[145] == 0x10 && buf[146] == 0 && buf[147] == 0);
	/* Reading: fields and checksum put there byte by byte. */
	memcpy(buf + 24, (const uint8_t[8]){0x2a, 0x01}, 8);
	memset(buf + 16, 0, 4);
	crc = nexus_crc32c(0, buf, NEXUS_LABEL_SIZE);
	for (int i = 0; i < 4; i++) {
		buf[16 + i] = (uint8_t)(crc >> (8 * i));
	}
	CU_ASSERT_FATAL(nexus_label_decode(buf, NEXUS_LABEL_SIZE, &d, NULL, 0) == 0);
	CU_ASSERT(d.generation == 0x12a && d.block_size == 4096 && d.version == l.version);
	free(buf);
}

static void test_label_corrupt(void)
{
	uint8_t *buf = abuf(NEXUS_LABEL_SIZE);
	struct nexus_label l, d, d2;
	char why[96];
	int which;

	sample_label(&l);
	/* blank */
	memset(buf, 0, NEXUS_LABEL_SIZE);
	CU_ASSERT(nexus_label_decode(buf, NEXUS_LABEL_SIZE, &d, why, sizeof(why)) == -ENODATA);
	/* every single flipped bit past the magic is caught by the checksum */
	nexus_label_encode(&l, buf);
	for (uint32_t i = 8; i < NEXUS_LABEL_SIZE; i += 97) {
		buf[i] ^= 0x10;
		CU_ASSERT(nexus_label_decode(buf, NEXUS_LABEL_SIZE, &d, why, sizeof(why)) ==
			  -EBADMSG);
		CU_ASSERT(strstr(why, "checksum") != NULL);
		buf[i] ^= 0x10;
	}
	CU_ASSERT(nexus_label_decode(buf, NEXUS_LABEL_SIZE, &d, why, sizeof(why)) == 0);
	/* a future version with a valid checksum is refused, not misread */
	l.version = NEXUS_LABEL_VERSION + 1;
	nexus_label_encode(&l, buf);
	CU_ASSERT(nexus_label_decode(buf, NEXUS_LABEL_SIZE, &d, why, sizeof(why)) ==
		  -EPROTONOSUPPORT);
	CU_ASSERT(strstr(why, "version 3") != NULL);
	/* inconsistent fields with a valid checksum */
	sample_label(&l);
	l.num_members = 99;
	nexus_label_encode(&l, buf);
	CU_ASSERT(nexus_label_decode(buf, NEXUS_LABEL_SIZE, &d, why, sizeof(why)) == -EINVAL);
	sample_label(&l);
	l.block_size = 1000;
	nexus_label_encode(&l, buf);
	CU_ASSERT(nexus_label_decode(buf, NEXUS_LABEL_SIZE, &d, why, sizeof(why)) == -EINVAL);
	sample_label(&l);
	l.data_offset = 4096;
	nexus_label_encode(&l, buf);
	CU_ASSERT(nexus_label_decode(buf, NEXUS_LABEL_SIZE, &d, why, sizeof(why)) == -EINVAL);
	sample_label(&l);
	l.volume_name[0] = '\0';
	nexus_label_encode(&l, buf);
	CU_ASSERT(nexus_label_decode(buf, NEXUS_LABEL_SIZE, &d, why, sizeof(why)) == -EINVAL);
	sample_label(&l);
	l.generation = 0;
	nexus_label_encode(&l, buf);
	CU_ASSERT(nexus_label_decode(buf, NEXUS_LABEL_SIZE, &d, why, sizeof(why)) == -EINVAL);
	sample_label(&l);
	l.members[1].state = 7;
	nexus_label_encode(&l, buf);
	CU_ASSERT(nexus_label_decode(buf, NEXUS_LABEL_SIZE, &d, why, sizeof(why)) == -EINVAL);
	sample_label(&l);
	memset(l.members[0].uuid, 0xee, 16); /* no longer lists itself */
	nexus_label_encode(&l, buf);
	CU_ASSERT(nexus_label_decode(buf, NEXUS_LABEL_SIZE, &d, why, sizeof(why)) == -EINVAL);
	sample_label(&l);
	l.volume_size = UINT64_MAX - 511; /* offset + size overflows */
	nexus_label_encode(&l, buf);
	CU_ASSERT(nexus_label_decode(buf, NEXUS_LABEL_SIZE, &d, why, sizeof(why)) == -EINVAL);
	/* A name is logged: one an RPC would refuse (terminal escapes, newlines,
	 * spaces, '/', bytes outside printable ASCII) refuses the label, and the
	 * reason does not repeat it. */
	{
		static const char *const bad[] = {"evil\x1b[2J", "a\nvolume x: fake line",
						  "a b",         "a/b",
						  "del\x7f",     "caf\xc3\xa9",
						  "\t"};

		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			sample_label(&l);
			snprintf(l.volume_name, sizeof(l.volume_name), "%s", bad[i]);
			nexus_label_encode(&l, buf);
			CU_ASSERT(nexus_label_decode(buf, NEXUS_LABEL_SIZE, &d, why, sizeof(why)) ==
				  -EINVAL);
			CU_ASSERT(strstr(why, "volume name") != NULL);
			CU_ASSERT(strstr(why, bad[i]) == NULL);
		}
		sample_label(&l);
		snprintf(l.volume_name, sizeof(l.volume_name), "Vol-1.a_b:c@d+e~");
		nexus_label_encode(&l, buf);
		CU_ASSERT(nexus_label_decode(buf, NEXUS_LABEL_SIZE, &d, why, sizeof(why)) == 0);
		CU_ASSERT_STRING_EQUAL(d.volume_name, "Vol-1.a_b:c@d+e~");
		/* a buffer shorter than a label is never read past its end */
		CU_ASSERT(nexus_label_decode(buf, NEXUS_LABEL_SIZE - 1, &d, why, sizeof(why)) ==
			  -EINVAL);
	}

	/* picking between copies: a torn copy loses to the intact one, newer wins */
	sample_label(&l);
	d = l;
	d2 = l;
	d2.generation = 43;
	CU_ASSERT(nexus_label_pick(-EBADMSG, &d, 0, &d2, &which) == 0 && which == 1);
	CU_ASSERT(nexus_label_pick(0, &d, -EBADMSG, &d2, &which) == 0 && which == 0);
	CU_ASSERT(nexus_label_pick(0, &d, 0, &d2, &which) == 0 && which == 1);
	CU_ASSERT(nexus_label_pick(-EBADMSG, &d, -EBADMSG, &d2, &which) == -EBADMSG);
	CU_ASSERT(nexus_label_pick(-ENODATA, &d, -ENODATA, &d2, &which) == -ENODATA);
	CU_ASSERT(nexus_label_pick(-ENODATA, &d, -EBADMSG, &d2, &which) == -EBADMSG);
	CU_ASSERT(nexus_label_pick(-EPROTONOSUPPORT, &d, -ENODATA, &d2, &which) ==
		  -EPROTONOSUPPORT);
	free(buf);
}

/* keel_nexus_label_inspect: the labels of a replica's first MiB, read as assembly
 * reads them (newer valid copy, a torn copy tolerated), what it refuses and why, and
 * the bitmap a wipe leaves behind. */
static void test_label_inspect(void)
{
	uint8_t *area = abuf(KEEL_NEXUS_DATA_OFFSET);
	struct keel_nexus_label_summary sum;
	struct nexus_label l;
	char uuid[KEEL_UUID_STR_LEN];

	memset(area, 0, KEEL_NEXUS_DATA_OFFSET);
	CU_ASSERT_EQUAL(keel_nexus_label_inspect(area, KEEL_NEXUS_DATA_OFFSET, &sum), -ENODATA);
	CU_ASSERT_FALSE(sum.wiped);
	memcpy(area + NEXUS_BITMAP_OFFSET, NEXUS_BM_MAGIC, 8);
	CU_ASSERT_EQUAL(keel_nexus_label_inspect(area, KEEL_NEXUS_DATA_OFFSET, &sum), -ENODATA);
	CU_ASSERT_TRUE(sum.wiped);

	sample_label(&l);
	nexus_label_encode(&l, area + NEXUS_LABEL_COPY0_OFFSET);
	l.generation = 43;
	nexus_label_encode(&l, area + NEXUS_LABEL_COPY1_OFFSET);
	CU_ASSERT_EQUAL(keel_nexus_label_inspect(area, KEEL_NEXUS_DATA_OFFSET, &sum), 0);
	CU_ASSERT_STRING_EQUAL(sum.volume_name, "vol-label");
	keel_uuid_fmt(l.volume_uuid, uuid);
	CU_ASSERT_STRING_EQUAL(sum.volume_uuid, uuid);
	keel_uuid_fmt(l.replica_uuid, uuid);
	CU_ASSERT_STRING_EQUAL(sum.replica_uuid, uuid);
	CU_ASSERT_EQUAL(sum.generation, 43);
	CU_ASSERT_FALSE(sum.wiped);
	/* A buffer that stops before copy 1 sees copy 0 only. */
	CU_ASSERT_EQUAL(keel_nexus_label_inspect(area, NEXUS_LABEL_COPY1_OFFSET, &sum), 0);
	CU_ASSERT_EQUAL(sum.generation, 42);
	CU_ASSERT_EQUAL(keel_nexus_label_inspect(area, 100, &sum), -ENODATA);

	/* Torn copy 1: copy 0 still counts. Both torn: refused, with the reason. */
	area[NEXUS_LABEL_COPY1_OFFSET + 300] ^= 1;
	CU_ASSERT_EQUAL(keel_nexus_label_inspect(area, KEEL_NEXUS_DATA_OFFSET, &sum), 0);
	CU_ASSERT_EQUAL(sum.generation, 42);
	area[NEXUS_LABEL_COPY0_OFFSET + 300] ^= 1;
	CU_ASSERT_EQUAL(keel_nexus_label_inspect(area, KEEL_NEXUS_DATA_OFFSET, &sum), -EBADMSG);
	CU_ASSERT_STRING_EQUAL(sum.why, "label checksum mismatch (both copies)");
	/* A future version in one copy, nothing in the other. */
	memset(area, 0, KEEL_NEXUS_DATA_OFFSET);
	sample_label(&l);
	l.version = NEXUS_LABEL_VERSION + 1;
	nexus_label_encode(&l, area + NEXUS_LABEL_COPY1_OFFSET);
	CU_ASSERT_EQUAL(keel_nexus_label_inspect(area, KEEL_NEXUS_DATA_OFFSET, &sum),
			-EPROTONOSUPPORT);
	CU_ASSERT_PTR_NOT_NULL(strstr(sum.why, "version 3"));
	free(area);
}

static void test_label_fuzz(void)
{
	uint8_t *buf = abuf(NEXUS_LABEL_SIZE);
	struct nexus_label l, d;
	char why[96];

	srand(1234);
	/* Random garbage after a valid magic, and random bytes inside a valid label
	 * with the checksum recomputed: decode never crashes and never accepts a
	 * label whose fields are out of range. */
	for (int iter = 0; iter < 2000; iter++) {
		int rc;

		sample_label(&l);
		nexus_label_encode(&l, buf);
		for (int k = 0; k < 1 + rand() % 8; k++) {
			buf[8 + rand() % 760] = (uint8_t)rand();
		}
		if (iter % 2) {
			uint32_t crc;

			memset(buf + 16, 0, 4);
			crc = nexus_crc32c(0, buf, NEXUS_LABEL_SIZE);
			for (int i = 0; i < 4; i++) {
				buf[16 + i] = (uint8_t)(crc >> (8 * i));
			}
		}
		rc = nexus_label_decode(buf, NEXUS_LABEL_SIZE, &d, why, sizeof(why));
		if (rc == 0) {
			CU_ASSERT(d.num_members >= 1 && d.num_members <= KEEL_NEXUS_MAX_REPLICAS);
			CU_ASSERT(d.block_size >= 512 && (d.block_size & (d.block_size - 1)) == 0);
			CU_ASSERT(strlen(d.volume_name) > 0 && strlen(d.volume_name) <= 63);
			for (size_t k = 0; d.volume_name[k] != '\0'; k++) {
				unsigned char c = (unsigned char)d.volume_name[k];

				CU_ASSERT(c > ' ' && c < 0x7f && c != '/');
			}
			CU_ASSERT(d.data_offset + d.volume_size > d.data_offset);
		} else {
			CU_ASSERT(why[0] != '\0');
		}
	}
	free(buf);
}

/* The write-intent bitmap's on-disk format (pure functions, as the fuzzer calls
 * them): header round trip and refusals, block checksums, and garbage. */
static void test_bitmap_format(void)
{
	enum {
		BLK = 4096
	};
	struct nexus_bm_header h =
				       {
					       .version = NEXUS_BM_VERSION,
					       .events_cleared = 7,
					       .region_size = 2 * MB,
					       .nbits = 100,
					       .block_size = BLK,
				       },
			       d;
	uint8_t *buf = abuf(BLK), uuid[16], other[16];
	char why[96];
	uint32_t crc;

	memset(uuid, 0x5a, sizeof(uuid));
	memset(other, 0xa5, sizeof(other));
	memcpy(h.volume_uuid, uuid, 16);
	nexus_bm_header_encode(&h, buf);
	CU_ASSERT(nexus_bm_header_decode(buf, NEXUS_BM_HDR_LEN, &d, why, sizeof(why)) == 0);
	CU_ASSERT(d.version == h.version && d.events_cleared == 7 && d.region_size == 2 * MB &&
		  d.nbits == 100 && d.block_size == BLK && memcmp(d.volume_uuid, uuid, 16) == 0);
	CU_ASSERT(nexus_bm_header_decode(buf, NEXUS_BM_HDR_LEN - 1, &d, why, sizeof(why)) ==
		  -EINVAL);
	buf[20] ^= 1; /* events_cleared */
	CU_ASSERT(nexus_bm_header_decode(buf, BLK, &d, why, sizeof(why)) == -EBADMSG);
	memset(buf, 0, BLK);
	CU_ASSERT(nexus_bm_header_decode(buf, BLK, &d, why, sizeof(why)) == -ENODATA);
	/* version 1 (no block checksums), with a valid header checksum */
	h.version = 1;
	nexus_bm_header_encode(&h, buf);
	CU_ASSERT(nexus_bm_header_decode(buf, BLK, &d, why, sizeof(why)) == -EPROTONOSUPPORT);
	CU_ASSERT(d.version == 1 && strstr(why, "version 1") != NULL);
	h.version = NEXUS_BM_VERSION;
	h.block_size = 1000;
	nexus_bm_header_encode(&h, buf);
	CU_ASSERT(nexus_bm_header_decode(buf, BLK, &d, why, sizeof(why)) == -EINVAL);
	h.block_size = BLK;
	h.nbits = 0;
	nexus_bm_header_encode(&h, buf);
	CU_ASSERT(nexus_bm_header_decode(buf, BLK, &d, why, sizeof(why)) == -EINVAL);

	/* bit blocks */
	CU_ASSERT(nexus_bm_bits_per_block(BLK) == (BLK - NEXUS_BM_TRAILER) * 8);
	fill(buf, BLK, 9);
	nexus_bm_block_seal(buf, BLK, 3, uuid);
	CU_ASSERT(nexus_bm_block_check(buf, BLK, 3, uuid) == 0);
	CU_ASSERT(nexus_bm_block_check(buf, BLK, 2, uuid) == -EBADMSG);  /* misplaced */
	CU_ASSERT(nexus_bm_block_check(buf, BLK, 3, other) == -EBADMSG); /* other volume */
	CU_ASSERT(nexus_bm_block_check(buf, NEXUS_BM_TRAILER, 3, uuid) == -EINVAL);
	for (uint32_t bit = 0; bit < BLK * 8; bit += 997) {
		buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		CU_ASSERT(nexus_bm_block_check(buf, BLK, 3, uuid) == -EBADMSG);
		buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
	}
	memset(buf, 0, BLK); /* never written */
	CU_ASSERT(nexus_bm_block_check(buf, BLK, 0, uuid) == -EBADMSG);

	/* garbage after a valid magic, checksum recomputed or not: no crash, and an
	 * accepted header has its fields in range */
	srand(4321);
	for (int iter = 0; iter < 2000; iter++) {
		size_t len = (size_t)(rand() % (NEXUS_BM_HDR_LEN + 8));

		nexus_bm_header_encode(&h, buf);
		for (int k = 0; k < 1 + rand() % 6; k++) {
			buf[8 + rand() % (NEXUS_BM_HDR_LEN - 8)] = (uint8_t)rand();
		}
		if (iter % 2) {
			memset(buf + 12, 0, 4);
			crc = nexus_crc32c(0, buf, NEXUS_BM_HDR_LEN);
			for (int i = 0; i < 4; i++) {
				buf[12 + i] = (uint8_t)(crc >> (8 * i));
			}
		}
		if (nexus_bm_header_decode(buf, len, &d, why, sizeof(why)) == 0) {
			CU_ASSERT(len >= NEXUS_BM_HDR_LEN && d.nbits > 0);
			CU_ASSERT(d.block_size >= 4096 && (d.block_size & (d.block_size - 1)) == 0);
		}
		(void)nexus_bm_block_check(buf, len, (uint32_t)iter, uuid);
	}
	free(buf);
}

/* ------------------------------------------------------------------------------ */
/* Mirrored I/O                                                                    */
/* ------------------------------------------------------------------------------ */

static void test_mirror_write_read(void)
{
	const char *reps[] = {"m0", "m1"};
	struct op_res r;
	struct vol_user u;
	struct keel_nexus_info *info;
	struct nexus_label lab;
	uint8_t *w = abuf(64 * 1024), *rd = abuf(64 * 1024), *raw = abuf(64 * 1024);
	struct keel_bdev *vb;
	json_t *j;

	setup(3);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_malloc("m1", REPLICA_BLOCKS, BS);
	CU_ASSERT_FATAL(create_vol("vol0", reps, 2, false, &r) == 0);
	CU_ASSERT(r.nexus != NULL);
	vb = keel_bdev_get_by_name("vol0");
	CU_ASSERT_FATAL(vb != NULL);
	CU_ASSERT_STRING_EQUAL(keel_bdev_get_module_name(vb), "nexus");
	CU_ASSERT_EQUAL(keel_bdev_get_num_blocks(vb) * BS, 8 * MB - DATA_OFF);
	CU_ASSERT(keel_bdev_is_multi_conn_safe(vb));
	CU_ASSERT_STRING_EQUAL(keel_bdev_get_claim_owner(keel_bdev_get_by_name("m0")), "nexus");
	info = info_of("vol0");
	CU_ASSERT(info->state == KEEL_NEXUS_ONLINE);
	CU_ASSERT(info->generation == 1);
	CU_ASSERT(info->num_replicas == 2);
	CU_ASSERT(info->size_bytes == 8 * MB - DATA_OFF);
	j = keel_nexus_info_to_json(info);
	CU_ASSERT_FATAL(j != NULL);
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "state")), "online");
	CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "replicas")), 2);
	json_decref(j);

	user_open(&u, "vol0", 3);
	/* writes from every thread, at several offsets */
	for (uint32_t t = 0; t < 3; t++) {
		fill(w, 64 * 1024, t + 1);
		CU_ASSERT(do_io(&u, t, KEEL_BDEV_IO_WRITE, w, t * 128 * 1024, 64 * 1024) == 0);
	}
	for (uint32_t t = 0; t < 3; t++) {
		fill(w, 64 * 1024, t + 1);
		memset(rd, 0, 64 * 1024);
		CU_ASSERT(do_io(&u, (t + 1) % 3, KEEL_BDEV_IO_READ, rd, t * 128 * 1024,
				64 * 1024) == 0);
		CU_ASSERT(memcmp(w, rd, 64 * 1024) == 0);
		/* identical on each replica, after the data offset */
		CU_ASSERT(raw_io("m0", false, raw, DATA_OFF + t * 128 * 1024, 64 * 1024) == 0);
		CU_ASSERT(memcmp(w, raw, 64 * 1024) == 0);
		CU_ASSERT(raw_io("m1", false, raw, DATA_OFF + t * 128 * 1024, 64 * 1024) == 0);
		CU_ASSERT(memcmp(w, raw, 64 * 1024) == 0);
	}
	/* write_zeroes, unmap and flush fan out too */
	CU_ASSERT(do_io(&u, 1, KEEL_BDEV_IO_WRITE_ZEROES, NULL, 0, 4096) == 0);
	CU_ASSERT(do_io(&u, 2, KEEL_BDEV_IO_FLUSH, NULL, 0, 8 * MB - DATA_OFF) == 0);
	CU_ASSERT(raw_io("m1", false, raw, DATA_OFF, 4096) == 0);
	memset(rd, 0, 4096);
	CU_ASSERT(memcmp(raw, rd, 4096) == 0);
	if (keel_bdev_io_type_supported(vb, KEEL_BDEV_IO_UNMAP)) {
		CU_ASSERT(do_io(&u, 0, KEEL_BDEV_IO_UNMAP, NULL, 0, 4096) == 0);
	}
	/* the labels say: dirty (in use), generation 1, both members in sync */
	CU_ASSERT_FATAL(read_label("m0", &lab) == 0);
	CU_ASSERT(lab.generation == 1);
	CU_ASSERT(lab.flags & NEXUS_LABEL_FLAG_DIRTY);
	CU_ASSERT(lab.num_members == 2);
	CU_ASSERT(lab.members[0].state == NEXUS_MEMBER_IN_SYNC);
	CU_ASSERT(lab.members[1].state == NEXUS_MEMBER_IN_SYNC);
	CU_ASSERT_STRING_EQUAL(lab.volume_name, "vol0");
	CU_ASSERT(lab.volume_size == 8 * MB - DATA_OFF);
	user_close(&u);

	/* a clean stop bumps the generation and clears the dirty flag */
	CU_ASSERT(destroy_vol("vol0", false) == 0);
	CU_ASSERT(keel_bdev_get_by_name("vol0") == NULL);
	CU_ASSERT(keel_bdev_get_claim_owner(keel_bdev_get_by_name("m0")) == NULL);
	CU_ASSERT_FATAL(read_label("m1", &lab) == 0);
	CU_ASSERT(lab.generation == 2);
	CU_ASSERT(!(lab.flags & NEXUS_LABEL_FLAG_DIRTY));
	/* reopen: same data */
	CU_ASSERT_FATAL(open_vol(NULL, reps, 2, false, &r) == 0);
	info = info_of("vol0");
	CU_ASSERT(info->state == KEEL_NEXUS_ONLINE);
	CU_ASSERT(!info->unclean_shutdown);
	CU_ASSERT(info->generation == 3);
	user_open(&u, "vol0", 1);
	fill(w, 64 * 1024, 2);
	CU_ASSERT(do_io(&u, 0, KEEL_BDEV_IO_READ, rd, 128 * 1024, 64 * 1024) == 0);
	CU_ASSERT(memcmp(w, rd, 64 * 1024) == 0);
	user_close(&u);
	/* destroy with wipe: no label left */
	CU_ASSERT(destroy_vol("vol0", true) == 0);
	CU_ASSERT(read_label("m0", &lab) == -ENODATA);
	CU_ASSERT(read_label("m1", &lab) == -ENODATA);
	CU_ASSERT(destroy_vol("vol0", false) == -ENODEV);
	free(w);
	free(rd);
	free(raw);
	teardown();
}

static void reads_of_cb(struct keel_bdev *bdev, const struct keel_bdev_io_stats *st, void *arg,
			int status)
{
	uint64_t *out = arg;

	(void)bdev;
	*out = status == 0 ? st->ops[KEEL_BDEV_IO_READ] : UINT64_MAX;
}

/* Reads that replica \p name served so far (every channel summed). */
static uint64_t reads_of(const char *name)
{
	uint64_t n = UINT64_MAX;

	CU_ASSERT_FATAL(keel_bdev_get_io_stats(keel_bdev_get_by_name(name), reads_of_cb, &n) == 0);
	ut_poll_threads();
	return n;
}

/* A replica whose bdev reads last (on another host) serves no read while another
 * healthy replica can, and serves them all once it is the only one left. */
static void test_read_prefers_local(void)
{
	const char *reps[] = {"e0", "m1"};
	struct op_res r;
	struct vol_user u;
	uint8_t *w = abuf(8192), *rd = abuf(8192);
	uint64_t m1_before, e0_before;

	setup(2);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_malloc("m1", REPLICA_BLOCKS, BS);
	mk_err("e0", "m0");
	keel_bdev_get_by_name("m1")->read_last = true; /* as an NBD client bdev says */
	CU_ASSERT_FATAL(create_vol("vol", reps, 2, false, &r) == 0);
	user_open(&u, "vol", 2);
	fill(w, 8192, 5);
	CU_ASSERT(do_io(&u, 0, KEEL_BDEV_IO_WRITE, w, 0, 8192) == 0);
	m1_before = reads_of("m1"); /* label reads at create */
	e0_before = reads_of("e0");
	for (int i = 0; i < 16; i++) {
		CU_ASSERT(do_io(&u, (uint32_t)i % 2, KEEL_BDEV_IO_READ, rd, 0, 8192) == 0);
	}
	CU_ASSERT_EQUAL(reads_of("m1"), m1_before);
	CU_ASSERT(reads_of("e0") >= e0_before + 16);
	/* the local replica fails: reads fall back to the remote one, no error */
	inject("e0", KEEL_BDEV_IO_READ, -EIO);
	for (int i = 0; i < 4; i++) {
		memset(rd, 0, 8192);
		CU_ASSERT(do_io(&u, (uint32_t)i % 2, KEEL_BDEV_IO_READ, rd, 0, 8192) == 0);
		CU_ASSERT(memcmp(w, rd, 8192) == 0);
	}
	CU_ASSERT(reads_of("m1") >= m1_before + 4);
	user_close(&u);
	free(w);
	free(rd);
	teardown();
}

static void test_read_retry(void)
{
	const char *reps[] = {"e0", "e1"};
	struct op_res r;
	struct vol_user u;
	struct keel_nexus_info *info;
	uint8_t *w = abuf(8192), *rd = abuf(8192);

	setup(2);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_malloc("m1", REPLICA_BLOCKS, BS);
	mk_err("e0", "m0");
	mk_err("e1", "m1");
	CU_ASSERT_FATAL(create_vol("vol", reps, 2, false, &r) == 0);
	user_open(&u, "vol", 2);
	fill(w, 8192, 7);
	CU_ASSERT(do_io(&u, 0, KEEL_BDEV_IO_WRITE, w, 0, 8192) == 0);
	inject("e0", KEEL_BDEV_IO_READ, -EIO);
	/* every read succeeds: those that hit e0 are retried on e1 */
	for (int i = 0; i < 8; i++) {
		memset(rd, 0, 8192);
		CU_ASSERT(do_io(&u, (uint32_t)i % 2, KEEL_BDEV_IO_READ, rd, 0, 8192) == 0);
		CU_ASSERT(memcmp(w, rd, 8192) == 0);
	}
	info = info_of("vol");
	CU_ASSERT(info->state == KEEL_NEXUS_DEGRADED);
	CU_ASSERT(rep_info(info, "e0")->state == KEEL_NEXUS_REPLICA_FAULTED);
	CU_ASSERT(rep_info(info, "e0")->reason == KEEL_NEXUS_REASON_IO_ERROR);
	CU_ASSERT(rep_info(info, "e1")->state == KEEL_NEXUS_REPLICA_HEALTHY);
	CU_ASSERT(info->generation == 2);
	/* the faulted replica is released */
	CU_ASSERT(keel_bdev_get_claim_owner(keel_bdev_get_by_name("e0")) == NULL);
	/* now the last healthy replica fails reads too: the read fails, EIO */
	inject("e1", KEEL_BDEV_IO_READ, -EIO);
	CU_ASSERT(do_io(&u, 1, KEEL_BDEV_IO_READ, rd, 0, 8192) == -EIO);
	info = info_of("vol");
	CU_ASSERT(info->state == KEEL_NEXUS_FAULTED);
	user_close(&u);
	free(w);
	free(rd);
	teardown();
}

/*
 * Allocation query: a healthy replica answers for the volume; a replica that cannot
 * tell or fails the query is not faulted (the query is no data I/O).
 */
static void test_allocation_query(void)
{
	const char *reps[] = {"e0", "e1"};
	struct keel_bdev_extent ext[8];
	struct op_res r;
	struct vol_user u;
	struct keel_nexus_info *info;

	setup(2);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_malloc("m1", REPLICA_BLOCKS, BS);
	mk_err("e0", "m0");
	mk_err("e1", "m1");
	CU_ASSERT_FATAL(create_vol("vol", reps, 2, false, &r) == 0);
	user_open(&u, "vol", 2);
	CU_ASSERT(keel_bdev_io_type_supported(keel_bdev_desc_get_bdev(u.desc),
					      KEEL_BDEV_IO_GET_ALLOCATION));
	for (uint32_t t = 0; t < 2; t++) {
		memset(ext, 0xff, sizeof(ext));
		CU_ASSERT(do_io(&u, t, KEEL_BDEV_IO_GET_ALLOCATION, ext, 4096, MB) == 0);
		CU_ASSERT(ext[0].length == MB && ext[0].flags == 0 && ext[1].length == 0);
	}
	inject("e0", KEEL_BDEV_IO_GET_ALLOCATION, -ENOTSUP);
	inject("e1", KEEL_BDEV_IO_GET_ALLOCATION, -ENOTSUP);
	CU_ASSERT(do_io(&u, 0, KEEL_BDEV_IO_GET_ALLOCATION, ext, 0, MB) == -ENOTSUP);
	inject("e0", KEEL_BDEV_IO_GET_ALLOCATION, -EIO);
	inject("e1", KEEL_BDEV_IO_GET_ALLOCATION, -EIO);
	CU_ASSERT(do_io(&u, 1, KEEL_BDEV_IO_GET_ALLOCATION, ext, 0, MB) == -EIO);
	info = info_of("vol");
	CU_ASSERT(info->state == KEEL_NEXUS_ONLINE);
	CU_ASSERT(rep_info(info, "e0")->state == KEEL_NEXUS_REPLICA_HEALTHY);
	CU_ASSERT(rep_info(info, "e1")->state == KEEL_NEXUS_REPLICA_HEALTHY);
	user_close(&u);
	teardown();
}

static void test_write_error_faults(void)
{
	const char *reps[] = {"e0", "e1", "e2"};
	struct op_res r;
	struct vol_user u;
	struct keel_nexus_info *info;
	struct nexus_label lab, lab2;
	uint8_t *w = abuf(4096), *rd = abuf(4096);
	struct io_res ios[16];

	setup(3);
	for (int i = 0; i < 3; i++) {
		char m[8], e[8];

		snprintf(m, sizeof(m), "m%d", i);
		snprintf(e, sizeof(e), "e%d", i);
		mk_malloc(m, REPLICA_BLOCKS, BS);
		mk_err(e, m);
	}
	CU_ASSERT_FATAL(create_vol("vol", reps, 3, false, &r) == 0);
	user_open(&u, "vol", 3);
	CU_ASSERT_FATAL(read_label("m2", &lab2) == 0);
	inject("e1", KEEL_BDEV_IO_WRITE, -EIO);
	/* a burst of writes from every thread: all succeed, e1 is faulted once */
	memset(ios, 0, sizeof(ios));
	fill(w, 4096, 3);
	for (int i = 0; i < 16; i++) {
		CU_ASSERT_FATAL(submit(&u, (uint32_t)i % 3, KEEL_BDEV_IO_WRITE, w,
				       (uint64_t)i * 4096, 4096, &ios[i]) == 0);
	}
	ut_poll_threads();
	for (int i = 0; i < 16; i++) {
		CU_ASSERT(ios[i].done == 1);
		CU_ASSERT(ios[i].status == 0);
	}
	info = info_of("vol");
	CU_ASSERT(info->state == KEEL_NEXUS_DEGRADED);
	CU_ASSERT(rep_info(info, "e1")->state == KEEL_NEXUS_REPLICA_FAULTED);
	CU_ASSERT(rep_info(info, "e1")->reason == KEEL_NEXUS_REASON_IO_ERROR);
	CU_ASSERT(rep_info(info, "e0")->state == KEEL_NEXUS_REPLICA_HEALTHY);
	CU_ASSERT(rep_info(info, "e2")->state == KEEL_NEXUS_REPLICA_HEALTHY);
	/* the labels of the survivors moved on without e1; e1's stayed behind */
	CU_ASSERT_FATAL(read_label("m0", &lab) == 0);
	CU_ASSERT(lab.generation == 2);
	CU_ASSERT(lab.num_members == 2);
	CU_ASSERT(nexus_label_find_member(&lab, lab2.replica_uuid) != NULL);
	CU_ASSERT_FATAL(read_label("m1", &lab2) == 0);
	CU_ASSERT(lab2.generation == 1);
	CU_ASSERT(nexus_label_find_member(&lab, lab2.replica_uuid) == NULL);
	/* I/O goes on */
	fill(w, 4096, 9);
	CU_ASSERT(do_io(&u, 1, KEEL_BDEV_IO_WRITE, w, 0, 4096) == 0);
	CU_ASSERT(do_io(&u, 2, KEEL_BDEV_IO_READ, rd, 0, 4096) == 0);
	CU_ASSERT(memcmp(w, rd, 4096) == 0);
	CU_ASSERT(raw_io("m2", false, rd, DATA_OFF, 4096) == 0);
	CU_ASSERT(memcmp(w, rd, 4096) == 0);
	user_close(&u);
	free(w);
	free(rd);
	teardown();
}

/* A flush is not counted in the write-intent bitmap, but it is parked like a write
 * when it fails on a replica that is on its way out. Acknowledging it once the
 * fault is committed must not release bitmap counts it never took: the volume
 * keeps taking writes everywhere afterwards. */
static void test_parked_flush_bitmap(void)
{
	const char *reps[] = {"e0", "e1"};
	struct op_res r;
	struct vol_user u;
	struct io_res wr = {0}, fl = {0};
	uint64_t rs, ec;
	uint32_t nbits, set;
	uint8_t *w = abuf(4096), *rd = abuf(4096);

	setup(2);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_malloc("m1", REPLICA_BLOCKS, BS);
	/* A volatile cache under e0, so flushes reach the nexus. */
	keel_bdev_get_by_name("m0")->write_cache = true;
	mk_err("e0", "m0");
	mk_err("e1", "m1");
	CU_ASSERT_FATAL(create_vol("vol", reps, 2, false, &r) == 0);
	CU_ASSERT_FATAL(
		keel_nexus_bitmap_info(keel_nexus_get_by_name("vol"), &rs, &nbits, &set, &ec) == 0);
	user_open(&u, "vol", 2);
	fill(w, 4096, 1);
	CU_ASSERT_FATAL(do_io(&u, 1, KEEL_BDEV_IO_WRITE, w, 0, 4096) == 0); /* bit set */
	/* The write fails on e1 on thread 1; before the owner (thread 0) commits the
	 * fault, a flush on thread 1 finds e1 known bad there: both are parked. */
	inject("e1", KEEL_BDEV_IO_WRITE, -EIO);
	CU_ASSERT_FATAL(submit(&u, 1, KEEL_BDEV_IO_WRITE, w, 0, 4096, &wr) == 0);
	for (int i = 0; i < 100; i++) {
		ut_poll_thread(1);
	}
	CU_ASSERT_FATAL(submit(&u, 1, KEEL_BDEV_IO_FLUSH, NULL, 0, 8 * MB - DATA_OFF, &fl) == 0);
	for (int i = 0; i < 100; i++) {
		ut_poll_thread(1);
	}
	CU_ASSERT(wr.done == 0);
	CU_ASSERT(fl.done == 0);
	for (int i = 0; i < 1000 && (wr.done == 0 || fl.done == 0); i++) {
		ut_time_advance_us(1000);
		ut_poll_threads();
	}
	CU_ASSERT(wr.done == 1 && wr.status == 0);
	CU_ASSERT(fl.done == 1 && fl.status == 0);
	CU_ASSERT(rep_info(info_of("vol"), "e1")->state == KEEL_NEXUS_REPLICA_FAULTED);
	/* Every region, written before or not, still takes writes on that thread. */
	for (uint64_t off = 0; off < 8 * MB - DATA_OFF; off += rs) {
		fill(w, 4096, (uint32_t)(off / rs) + 2);
		CU_ASSERT_FATAL(do_io(&u, 1, KEEL_BDEV_IO_WRITE, w, off, 4096) == 0);
		CU_ASSERT(do_io(&u, 0, KEEL_BDEV_IO_READ, rd, off, 4096) == 0);
		CU_ASSERT(memcmp(w, rd, 4096) == 0);
	}
	user_close(&u);
	free(w);
	free(rd);
	teardown();
}

static void test_last_healthy_eio(void)
{
	const char *reps[] = {"e0", "e1"};
	struct op_res r;
	struct vol_user u;
	struct keel_nexus_info *info;
	uint8_t *w = abuf(4096), *before0 = abuf(4096), *before1 = abuf(4096), *raw = abuf(4096);
	struct nexus_label lab;

	setup(2);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_malloc("m1", REPLICA_BLOCKS, BS);
	mk_err("e0", "m0");
	mk_err("e1", "m1");
	CU_ASSERT_FATAL(create_vol("vol", reps, 2, false, &r) == 0);
	user_open(&u, "vol", 2);
	/* the administrator may not fault or remove the last healthy replica */
	CU_ASSERT(member_call(keel_nexus_fault_replica, "vol", "e1", &r) == 0);
	CU_ASSERT(member_call(keel_nexus_fault_replica, "vol", "e1", &r) == -EALREADY);
	CU_ASSERT(member_call(keel_nexus_fault_replica, "vol", "e0", &r) == -EBUSY);
	CU_ASSERT(strstr(r.msg, "last healthy") != NULL);
	CU_ASSERT(member_call(keel_nexus_remove_replica, "vol", "e0", &r) == -EBUSY);
	CU_ASSERT(strstr(r.msg, "last healthy") != NULL);
	CU_ASSERT(member_call(keel_nexus_fault_replica, "vol", "nope", &r) == -ENODEV);
	CU_ASSERT(member_call(keel_nexus_fault_replica, "novol", "e0", &r) == -ENODEV);
	info = info_of("vol");
	CU_ASSERT(rep_info(info, "e1")->reason == KEEL_NEXUS_REASON_ADMIN);
	CU_ASSERT(info->generation == 2);

	CU_ASSERT(raw_io("m0", false, before0, DATA_OFF, 4096) == 0);
	CU_ASSERT(raw_io("m1", false, before1, DATA_OFF, 4096) == 0);
	inject("e0", KEEL_BDEV_IO_WRITE, -EIO);
	fill(w, 4096, 5);
	CU_ASSERT(do_io(&u, 1, KEEL_BDEV_IO_WRITE, w, 0, 4096) == -EIO);
	info = info_of("vol");
	CU_ASSERT(info->state == KEEL_NEXUS_FAULTED);
	CU_ASSERT(rep_info(info, "e0")->state == KEEL_NEXUS_REPLICA_FAULTED);
	CU_ASSERT(strlen(info->state_detail) > 0);
	/* faulted: fail fast, nothing written anywhere even once the error is gone */
	CU_ASSERT(keel_bdev_error_clear("e0") == 0);
	CU_ASSERT(do_io(&u, 0, KEEL_BDEV_IO_WRITE, w, 0, 4096) == -EIO);
	CU_ASSERT(do_io(&u, 1, KEEL_BDEV_IO_WRITE_ZEROES, NULL, 0, 4096) == -EIO);
	CU_ASSERT(do_io(&u, 0, KEEL_BDEV_IO_READ, raw, 0, 4096) == -EIO);
	CU_ASSERT(raw_io("m0", false, raw, DATA_OFF, 4096) == 0);
	CU_ASSERT(memcmp(raw, before0, 4096) == 0);
	CU_ASSERT(raw_io("m1", false, raw, DATA_OFF, 4096) == 0);
	CU_ASSERT(memcmp(raw, before1, 4096) == 0);
	/* the last healthy replica's label was not written over: still in sync */
	CU_ASSERT_FATAL(read_label("m0", &lab) == 0);
	CU_ASSERT(lab.generation == 2);
	CU_ASSERT(lab.num_members == 1);
	CU_ASSERT(lab.members[0].state == NEXUS_MEMBER_IN_SYNC);
	/* adding a replica to a faulted volume is refused */
	mk_malloc("m9", REPLICA_BLOCKS, BS);
	memset(&r, 0, sizeof(r));
	CU_ASSERT(keel_nexus_add_replica("vol", "m9", false, op_cb, &r) == 0);
	CU_ASSERT(wait_res(&r) == -EIO);
	CU_ASSERT(keel_bdev_get_claim_owner(keel_bdev_get_by_name("m9")) == NULL);
	user_close(&u);
	free(w);
	free(before0);
	free(before1);
	free(raw);
	teardown();
}

static void test_both_fail_eio(void)
{
	const char *reps[] = {"e0", "e1"};
	struct op_res r;
	struct vol_user u;
	uint8_t *w = abuf(4096);

	setup(1);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_malloc("m1", REPLICA_BLOCKS, BS);
	mk_err("e0", "m0");
	mk_err("e1", "m1");
	CU_ASSERT_FATAL(create_vol("vol", reps, 2, false, &r) == 0);
	user_open(&u, "vol", 1);
	inject("e0", KEEL_BDEV_IO_WRITE, -EIO);
	inject("e1", KEEL_BDEV_IO_WRITE, -EIO);
	fill(w, 4096, 1);
	CU_ASSERT(do_io(&u, 0, KEEL_BDEV_IO_WRITE, w, 0, 4096) == -EIO);
	CU_ASSERT(info_of("vol")->state == KEEL_NEXUS_FAULTED);
	/* the core acknowledges flush itself when no replica has a write cache */
	CU_ASSERT(do_io(&u, 0, KEEL_BDEV_IO_WRITE_ZEROES, NULL, 0, 4096) == -EIO);
	user_close(&u);
	free(w);
	teardown();
}

/* A fault committed while writes are in flight on several threads: every request
 * completes exactly once, and the replica leaves every channel. */
static void test_fault_while_io_in_flight(void)
{
	const char *reps[] = {"e0", "e1"};
	struct op_res r;
	struct vol_user u;
	struct io_res ios[64];
	uint8_t *w = abuf(4096);
	struct keel_nexus_info *info;

	setup(3);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_malloc("m1", REPLICA_BLOCKS, BS);
	mk_err("e0", "m0");
	mk_err("e1", "m1");
	CU_ASSERT_FATAL(create_vol("vol", reps, 2, false, &r) == 0);
	user_open(&u, "vol", 3);
	/* delay e1 so requests are in flight while the admin fault runs */
	struct keel_bdev_error_rule rule = {.io_type = KEEL_BDEV_IO_NUM_TYPES, .delay_us = 5000};
	CU_ASSERT_FATAL(keel_bdev_error_inject("e1", &rule) == 0);
	memset(ios, 0, sizeof(ios));
	fill(w, 4096, 4);
	for (int i = 0; i < 32; i++) {
		CU_ASSERT_FATAL(submit(&u, (uint32_t)i % 3,
				       i % 2 ? KEEL_BDEV_IO_READ : KEEL_BDEV_IO_WRITE, w,
				       (uint64_t)i * 4096, 4096, &ios[i]) == 0);
	}
	/* run a few iterations only: requests are now in flight */
	for (int i = 0; i < 3; i++) {
		ut_poll_thread(0);
		ut_poll_thread(1);
		ut_poll_thread(2);
	}
	memset(&r, 0, sizeof(r));
	ut_set_thread(0);
	CU_ASSERT_FATAL(keel_nexus_fault_replica("vol", "e1", op_cb, &r) == 0);
	/* more I/O arrives while the change is in progress */
	for (int i = 32; i < 64; i++) {
		CU_ASSERT_FATAL(submit(&u, (uint32_t)i % 3,
				       i % 2 ? KEEL_BDEV_IO_READ : KEEL_BDEV_IO_WRITE, w,
				       (uint64_t)i * 4096, 4096, &ios[i]) == 0);
		if (i % 8 == 0) {
			ut_poll_thread((uint32_t)i % 3);
		}
	}
	CU_ASSERT(wait_res(&r) == 0);
	for (int k = 0; k < 20; k++) {
		ut_time_advance_us(10000);
		ut_poll_threads();
	}
	for (int i = 0; i < 64; i++) {
		CU_ASSERT(ios[i].done == 1);
		CU_ASSERT(ios[i].status == 0);
	}
	info = info_of("vol");
	CU_ASSERT(info->state == KEEL_NEXUS_DEGRADED);
	CU_ASSERT(rep_info(info, "e1")->state == KEEL_NEXUS_REPLICA_FAULTED);
	CU_ASSERT(keel_bdev_get_claim_owner(keel_bdev_get_by_name("e1")) == NULL);
	user_close(&u);
	free(w);
	teardown();
}

/* ------------------------------------------------------------------------------ */
/* Membership                                                                      */
/* ------------------------------------------------------------------------------ */

static void test_add_remove(void)
{
	const char *reps[] = {"m0", "m1"};
	struct op_res r;
	struct vol_user u;
	struct keel_nexus_info *info;
	struct nexus_label lab;
	uint8_t *w = abuf(4096), *rd = abuf(4096);

	setup(2);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_malloc("m1", REPLICA_BLOCKS, BS);
	mk_malloc("m2", REPLICA_BLOCKS, BS);
	mk_malloc("small", (2 * MB) / BS, BS);
	mk_malloc("big4k", REPLICA_BLOCKS / 8, 4096);
	mk_err("e2", "m2");
	CU_ASSERT_FATAL(create_vol("vol", reps, 2, false, &r) == 0);
	user_open(&u, "vol", 2);
	/* refusals */
	memset(&r, 0, sizeof(r));
	CU_ASSERT(keel_nexus_add_replica("vol", "m0", false, op_cb, &r) == 0);
	CU_ASSERT(wait_res(&r) == -EEXIST);
	memset(&r, 0, sizeof(r));
	CU_ASSERT(keel_nexus_add_replica("vol", "small", false, op_cb, &r) == 0);
	CU_ASSERT(wait_res(&r) == -EINVAL);
	memset(&r, 0, sizeof(r));
	CU_ASSERT(keel_nexus_add_replica("vol", "big4k", false, op_cb, &r) == 0);
	CU_ASSERT(wait_res(&r) == -EINVAL);
	memset(&r, 0, sizeof(r));
	CU_ASSERT(keel_nexus_add_replica("vol", "missing", false, op_cb, &r) == 0);
	CU_ASSERT(wait_res(&r) == -ENODEV);
	CU_ASSERT(keel_nexus_add_replica("novol", "m2", false, op_cb, &r) == -ENODEV);
	CU_ASSERT(info_of("vol")->num_replicas == 2);

	/* add e2: it becomes a rebuilding member that takes writes, never reads */
	memset(&r, 0, sizeof(r));
	CU_ASSERT(keel_nexus_add_replica("vol", "e2", false, op_cb, &r) == 0);
	CU_ASSERT(wait_res(&r) == 0);
	info = info_of("vol");
	CU_ASSERT(info->state == KEEL_NEXUS_DEGRADED);
	CU_ASSERT(rep_info(info, "e2")->state == KEEL_NEXUS_REPLICA_REBUILDING);
	CU_ASSERT(info->generation == 2);
	CU_ASSERT_FATAL(read_label("m2", &lab) == 0);
	CU_ASSERT(lab.generation == 2 && lab.num_members == 3);
	CU_ASSERT(nexus_label_find_member(&lab, lab.replica_uuid)->state ==
		  NEXUS_MEMBER_OUT_OF_SYNC);
	inject("e2", KEEL_BDEV_IO_READ, -EIO);
	fill(w, 4096, 11);
	CU_ASSERT(do_io(&u, 1, KEEL_BDEV_IO_WRITE, w, 8192, 4096) == 0);
	for (int i = 0; i < 6; i++) {
		CU_ASSERT(do_io(&u, (uint32_t)i % 2, KEEL_BDEV_IO_READ, rd, 8192, 4096) == 0);
		CU_ASSERT(memcmp(w, rd, 4096) == 0);
	}
	CU_ASSERT(rep_info(info_of("vol"), "e2")->state == KEEL_NEXUS_REPLICA_REBUILDING);
	CU_ASSERT(raw_io("m2", false, rd, DATA_OFF + 8192, 4096) == 0);
	CU_ASSERT(memcmp(w, rd, 4096) == 0);

	/* remove it again, by replica UUID */
	{
		char uuid[KEEL_UUID_STR_LEN];

		snprintf(uuid, sizeof(uuid), "%s", rep_info(info_of("vol"), "e2")->uuid);
		CU_ASSERT(member_call(keel_nexus_remove_replica, "vol", uuid, &r) == 0);
	}
	info = info_of("vol");
	CU_ASSERT(info->num_replicas == 2);
	CU_ASSERT(info->state == KEEL_NEXUS_ONLINE);
	CU_ASSERT(info->generation == 3);
	CU_ASSERT(keel_bdev_get_claim_owner(keel_bdev_get_by_name("e2")) == NULL);
	/* remove a healthy one; then the other is the last */
	CU_ASSERT(member_call(keel_nexus_remove_replica, "vol", "m1", &r) == 0);
	CU_ASSERT(member_call(keel_nexus_remove_replica, "vol", "m0", &r) == -EBUSY);
	info = info_of("vol");
	CU_ASSERT(info->num_replicas == 1 && info->state == KEEL_NEXUS_ONLINE);
	CU_ASSERT(do_io(&u, 1, KEEL_BDEV_IO_READ, rd, 8192, 4096) == 0);
	CU_ASSERT(memcmp(w, rd, 4096) == 0);
	user_close(&u);
	free(w);
	free(rd);
	teardown();
}

/* ------------------------------------------------------------------------------ */
/* Assembly                                                                        */
/* ------------------------------------------------------------------------------ */

static void test_stale_detection(void)
{
	const char *reps[] = {"m0", "m1", "m2"};
	const char *only2[] = {"m2"};
	const char *only0[] = {"m0"};
	struct op_res r;
	struct keel_nexus_info *info;

	setup(1);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_malloc("m1", REPLICA_BLOCKS, BS);
	mk_malloc("m2", REPLICA_BLOCKS, BS);
	CU_ASSERT_FATAL(create_vol("vol", reps, 3, false, &r) == 0);
	CU_ASSERT(member_call(keel_nexus_fault_replica, "vol", "m2", &r) == 0);
	CU_ASSERT(destroy_vol("vol", false) == 0);

	/* m2 missed a generation: stale, never read */
	CU_ASSERT_FATAL(open_vol("vol", reps, 3, false, &r) == 0);
	info = info_of("vol");
	CU_ASSERT(info->state == KEEL_NEXUS_DEGRADED);
	CU_ASSERT(rep_info(info, "m0")->state == KEEL_NEXUS_REPLICA_HEALTHY);
	CU_ASSERT(rep_info(info, "m1")->state == KEEL_NEXUS_REPLICA_HEALTHY);
	CU_ASSERT(rep_info(info, "m2")->state == KEEL_NEXUS_REPLICA_FAULTED);
	CU_ASSERT(rep_info(info, "m2")->reason == KEEL_NEXUS_REASON_STALE);
	CU_ASSERT(strstr(rep_info(info, "m2")->detail, "stale") != NULL);
	CU_ASSERT(keel_bdev_get_claim_owner(keel_bdev_get_by_name("m2")) == NULL);
	CU_ASSERT(!info->unclean_shutdown);
	CU_ASSERT(destroy_vol("vol", false) == 0);

	/* only the stale replica: the newest members are missing, keel does not guess */
	CU_ASSERT_FATAL(open_vol("vol", only2, 1, false, &r) == 0);
	info = info_of("vol");
	CU_ASSERT(info->state == KEEL_NEXUS_FAULTED);
	CU_ASSERT(strstr(info->state_detail, "missing") != NULL);
	CU_ASSERT(strstr(info->state_detail, "m2") != NULL);
	{
		struct vol_user u;
		uint8_t *b = abuf(4096);

		user_open(&u, "vol", 1);
		CU_ASSERT(do_io(&u, 0, KEEL_BDEV_IO_READ, b, 0, 4096) == -EIO);
		CU_ASSERT(do_io(&u, 0, KEEL_BDEV_IO_WRITE, b, 0, 4096) == -EIO);
		user_close(&u);
		free(b);
	}
	CU_ASSERT(destroy_vol("vol", false) == 0);

	/* m0 alone: m1, an in-sync member of the same generation, is missing */
	CU_ASSERT_FATAL(open_vol("vol", only0, 1, false, &r) == 0);
	info = info_of("vol");
	CU_ASSERT(info->state == KEEL_NEXUS_FAULTED);
	CU_ASSERT(strstr(info->state_detail, "force") != NULL);
	CU_ASSERT_STRING_EQUAL(keel_bdev_get_claim_owner(keel_bdev_get_by_name("m0")), "nexus");
	CU_ASSERT(destroy_vol("vol", false) == 0);
	CU_ASSERT(keel_bdev_get_claim_owner(keel_bdev_get_by_name("m0")) == NULL);
	/* the faulted assembly wrote nothing: m0 and m1 still agree */
	{
		struct nexus_label l0, l1;

		CU_ASSERT_FATAL(read_label("m0", &l0) == 0);
		CU_ASSERT_FATAL(read_label("m1", &l1) == 0);
		CU_ASSERT(l0.generation == l1.generation);
	}
	/* with force the newest present replica is trusted; m1 is offline */
	CU_ASSERT_FATAL(open_vol("vol", only0, 1, true, &r) == 0);
	info = info_of("vol");
	CU_ASSERT(info->state == KEEL_NEXUS_DEGRADED);
	CU_ASSERT(rep_info(info, "m0")->state == KEEL_NEXUS_REPLICA_HEALTHY);
	CU_ASSERT(info->num_replicas == 2);
	CU_ASSERT(rep_info(info, "")->state == KEEL_NEXUS_REPLICA_OFFLINE);
	CU_ASSERT(destroy_vol("vol", false) == 0);
	/* and from now on m1 is stale */
	CU_ASSERT_FATAL(open_vol("vol", reps, 3, false, &r) == 0);
	info = info_of("vol");
	CU_ASSERT(rep_info(info, "m1")->reason == KEEL_NEXUS_REASON_STALE);
	CU_ASSERT(rep_info(info, "m2")->reason == KEEL_NEXUS_REASON_STALE);
	CU_ASSERT(info->state == KEEL_NEXUS_DEGRADED);
	teardown();
}

static void test_refusals(void)
{
	const char *a[] = {"m0", "m1"};
	const char *b[] = {"m2", "m3"};
	const char *mixed[] = {"m0", "m1", "m2"};
	const char *ab[] = {"m0", "m2"};
	struct op_res r;
	struct keel_nexus_info *info;
	uint8_t *junk = abuf(NEXUS_LABEL_SIZE), *lbl = abuf(MB);

	setup(1);
	for (int i = 0; i < 4; i++) {
		char m[8];

		snprintf(m, sizeof(m), "m%d", i);
		mk_malloc(m, REPLICA_BLOCKS, BS);
	}
	mk_malloc("tiny", KEEL_NEXUS_DATA_OFFSET / BS, BS);
	mk_malloc("four", REPLICA_BLOCKS / 8, 4096);
	mk_malloc("short", (4 * MB) / BS, BS);

	/* bad options never call back */
	CU_ASSERT(create_vol("bad/name", a, 2, false, &r) == -EINVAL);
	CU_ASSERT(create_vol("", a, 2, false, &r) == -EINVAL);
	CU_ASSERT(create_vol("v", a, 0, false, &r) == -EINVAL);
	{
		const char *dup[] = {"m0", "m0"};

		CU_ASSERT(create_vol("v", dup, 2, false, &r) == -EINVAL);
	}
	/* bad replicas call back with a message, leave nothing claimed */
	CU_ASSERT(create_vol("v", (const char *[]){"m0", "nosuch"}, 2, false, &r) == -ENODEV);
	CU_ASSERT(strstr(r.msg, "nosuch") != NULL);
	CU_ASSERT(keel_bdev_get_claim_owner(keel_bdev_get_by_name("m0")) == NULL);
	CU_ASSERT(create_vol("v", (const char *[]){"m0", "tiny"}, 2, false, &r) == -EINVAL);
	CU_ASSERT(create_vol("v", (const char *[]){"m0", "four"}, 2, false, &r) == -EINVAL);
	CU_ASSERT(strstr(r.msg, "block size") != NULL);
	CU_ASSERT(create_vol("m1", (const char *[]){"m0"}, 1, false, &r) == -EEXIST);
	CU_ASSERT(keel_bdev_get_by_name("v") == NULL);

	CU_ASSERT_FATAL(create_vol("A", a, 2, false, &r) == 0);
	CU_ASSERT(destroy_vol("A", false) == 0);
	CU_ASSERT_FATAL(create_vol("B", b, 2, false, &r) == 0);
	CU_ASSERT(destroy_vol("B", false) == 0);

	/* foreign label: refused without force, named in the message */
	CU_ASSERT(create_vol("C", (const char *[]){"m0", "short"}, 2, false, &r) == -EEXIST);
	CU_ASSERT(strstr(r.msg, "volume A") != NULL);
	CU_ASSERT(strstr(r.msg, "force") != NULL);
	/* assembly of A given B's replica: that one is refused, A assembles */
	CU_ASSERT_FATAL(open_vol("A", mixed, 3, false, &r) == 0);
	info = info_of("A");
	CU_ASSERT(info->state == KEEL_NEXUS_ONLINE); /* refused bdevs are not members */
	CU_ASSERT(rep_info(info, "m2")->state == KEEL_NEXUS_REPLICA_FAULTED);
	CU_ASSERT(rep_info(info, "m2")->reason == KEEL_NEXUS_REASON_CANT_OPEN);
	CU_ASSERT(strstr(rep_info(info, "m2")->detail, "another volume") != NULL);
	CU_ASSERT(keel_bdev_get_claim_owner(keel_bdev_get_by_name("m2")) == NULL);
	CU_ASSERT(destroy_vol("A", false) == 0);
	/* no name and labels of two volumes: refused as a whole */
	CU_ASSERT(open_vol(NULL, ab, 2, false, &r) == -EINVAL);
	CU_ASSERT(strstr(r.msg, "different volumes") != NULL);
	CU_ASSERT(keel_bdev_get_claim_owner(keel_bdev_get_by_name("m0")) == NULL);
	/* no label at all */
	CU_ASSERT(open_vol("A", (const char *[]){"short"}, 1, false, &r) == -ENOENT);
	CU_ASSERT(strstr(r.msg, "short") != NULL);

	/* a torn first copy: the second one is used */
	memset(junk, 0xa5, NEXUS_LABEL_SIZE);
	memcpy(junk, "KEELVOL1", 8);
	CU_ASSERT(raw_io("m1", true, junk, NEXUS_LABEL_COPY0_OFFSET, NEXUS_LABEL_SIZE) == 0);
	CU_ASSERT_FATAL(open_vol("A", a, 2, false, &r) == 0);
	CU_ASSERT(info_of("A")->state == KEEL_NEXUS_ONLINE);
	CU_ASSERT(destroy_vol("A", false) == 0);
	/* both copies bad: refused with "checksum" */
	CU_ASSERT(raw_io("m1", true, junk, NEXUS_LABEL_COPY0_OFFSET, NEXUS_LABEL_SIZE) == 0);
	CU_ASSERT(raw_io("m1", true, junk, NEXUS_LABEL_COPY1_OFFSET, NEXUS_LABEL_SIZE) == 0);
	CU_ASSERT_FATAL(open_vol("A", a, 2, true, &r) == 0);
	info = info_of("A");
	CU_ASSERT(rep_info(info, "m1")->state == KEEL_NEXUS_REPLICA_FAULTED);
	CU_ASSERT(strstr(rep_info(info, "m1")->detail, "checksum") != NULL);
	CU_ASSERT(rep_info(info, "m0")->state == KEEL_NEXUS_REPLICA_HEALTHY);
	CU_ASSERT(destroy_vol("A", false) == 0);
	/* a damaged label is not overwritten by create without force */
	CU_ASSERT(create_vol("D", (const char *[]){"m1"}, 1, false, &r) == -EEXIST);
	CU_ASSERT(strstr(r.msg, "damaged") != NULL);

	/* wrong size: B's replica label copied onto a smaller bdev */
	CU_ASSERT(raw_io("m3", false, lbl, 0, MB) == 0);
	CU_ASSERT(raw_io("short", true, lbl, 0, MB) == 0);
	{
		/* B was created on 8 MiB replicas; "short" has 4 MiB */
		CU_ASSERT_FATAL(open_vol("B", (const char *[]){"m2", "short"}, 2, false, &r) == 0);
		info = info_of("B");
		CU_ASSERT(rep_info(info, "short")->state == KEEL_NEXUS_REPLICA_FAULTED);
		CU_ASSERT(strstr(rep_info(info, "short")->detail, "bytes") != NULL);
		/* m3 not given: B is faulted (m3 may be newer) */
		CU_ASSERT(info->state == KEEL_NEXUS_FAULTED);
		CU_ASSERT(destroy_vol("B", false) == 0);
	}
	/* with force, create overwrites foreign labels */
	CU_ASSERT(create_vol("C", (const char *[]){"m0", "m2"}, 2, true, &r) == 0);
	CU_ASSERT(info_of("C")->state == KEEL_NEXUS_ONLINE);
	free(junk);
	free(lbl);
	teardown();
}

/* A crash between two replicas' label writes leaves one a generation behind while
 * the newest label still lists it in sync: it missed no write and is accepted.
 * Two generations behind is stale. */
static void test_interrupted_label_update(void)
{
	const char *reps[] = {"m0", "m1"};
	struct op_res r;
	struct keel_nexus_info *info;
	uint8_t *snap = abuf(MB);

	setup(1);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_malloc("m1", REPLICA_BLOCKS, BS);
	CU_ASSERT_FATAL(create_vol("vol", reps, 2, false, &r) == 0);
	CU_ASSERT(destroy_vol("vol", false) == 0); /* generation 2 on both */
	CU_ASSERT(raw_io("m1", false, snap, 0, MB) == 0);
	CU_ASSERT_FATAL(open_vol("vol", reps, 2, false, &r) == 0); /* 3 */
	CU_ASSERT(destroy_vol("vol", false) == 0);                 /* 4 */
	/* m1 back at 2: two behind although generation 4 lists it in sync. That
	 * cannot happen in normal operation (an old copy of the replica): it is
	 * stale, and the real m1 may have moved past m0, so the volume is faulted. */
	CU_ASSERT(raw_io("m1", true, snap, 0, MB) == 0);
	CU_ASSERT_FATAL(open_vol("vol", reps, 2, false, &r) == 0);
	info = info_of("vol");
	CU_ASSERT(rep_info(info, "m1")->reason == KEEL_NEXUS_REASON_STALE);
	CU_ASSERT(info->state == KEEL_NEXUS_FAULTED);
	CU_ASSERT(destroy_vol("vol", false) == 0);
	free(snap);
	teardown();

	/* One behind: m1's label from generation 3, m0 at 4 listing m1 in sync. */
	setup(1);
	snap = abuf(MB);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_malloc("m1", REPLICA_BLOCKS, BS);
	CU_ASSERT_FATAL(create_vol("vol", reps, 2, false, &r) == 0); /* 1 */
	CU_ASSERT(destroy_vol("vol", false) == 0);                   /* 2 */
	CU_ASSERT_FATAL(open_vol("vol", reps, 2, false, &r) == 0);   /* 3 */
	CU_ASSERT(raw_io("m1", false, snap, 0, MB) == 0);            /* m1 label 3 */
	CU_ASSERT(destroy_vol("vol", false) == 0);                   /* 4 */
	CU_ASSERT(raw_io("m1", true, snap, 0, MB) == 0);
	CU_ASSERT_FATAL(open_vol("vol", reps, 2, false, &r) == 0);
	info = info_of("vol");
	CU_ASSERT(info->state == KEEL_NEXUS_ONLINE);
	CU_ASSERT(rep_info(info, "m1")->state == KEEL_NEXUS_REPLICA_HEALTHY);
	CU_ASSERT(!info->unclean_shutdown); /* the newest label (m0's) was clean */
	free(snap);
	teardown();
}

static void noop_msg(void *arg)
{
	(*(uint32_t *)arg)++;
}

/* Fill thread \p to's message ring from thread \p from. \return messages queued. */
static uint32_t fill_ring(uint32_t from, uint32_t to, uint32_t *counter)
{
	uint32_t n = 0;

	ut_set_thread(from);
	while (keel_thread_send_msg(ut_thread(to), noop_msg, counter) == 0) {
		n++;
	}
	return n;
}

/* Poll thread \p t alone (the owner's full ring stays full) until \p r is done. */
static void poll_alone(uint32_t t, struct io_res *r)
{
	for (int i = 0; i < 1000 && (r == NULL || r->done == 0); i++) {
		ut_time_advance_us(10);
		ut_poll_thread(t);
	}
}

/*
 * Volume "vol" of e0 (error bdev) and m1, a user with channels on threads 0 and
 * 1. A read error on thread 1 while the owner's ring is full: the fault message
 * waits. Then thread 1's channel goes away (the client closed): the message must
 * still reach the owner, or the replica stays "healthy" with its fault flag set,
 * and no later error can report it again (writes that fail on it would wait for
 * a fault that never comes).
 */
static void read_error_then_close(struct vol_user *u, uint32_t *noops, uint32_t *queued)
{
	const char *reps[] = {"e0", "m1"};
	struct op_res r;
	uint8_t *rd = abuf(4096);

	setup(2);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_malloc("m1", REPLICA_BLOCKS, BS);
	mk_err("e0", "m0");
	CU_ASSERT_FATAL(create_vol("vol", reps, 2, false, &r) == 0);
	user_open(u, "vol", 2);
	fill(rd, 4096, 3);
	CU_ASSERT(do_io(u, 0, KEEL_BDEV_IO_WRITE, rd, 0, 4096) == 0);
	/* "Device gone": faulted at once (an -EIO would be repaired first). */
	inject("e0", KEEL_BDEV_IO_READ, -ENXIO);
	*queued = fill_ring(1, 0, noops);
	CU_ASSERT(*queued > 0);
	/* Reads alternate between the replicas: two reach e0 at least once. */
	for (int i = 0; i < 2; i++) {
		struct io_res res = {0};

		CU_ASSERT_FATAL(submit(u, 1, KEEL_BDEV_IO_READ, rd, 0, 4096, &res) == 0);
		poll_alone(1, &res);
		CU_ASSERT(res.done == 1 && res.status == 0); /* retried on m1 */
	}
	ut_set_thread(1);
	keel_put_io_channel(u->ch[1]);
	u->ch[1] = NULL;
	u->nthreads = 1;
	poll_alone(1, NULL);
	free(rd);
}

static void test_fault_msg_ring_full(void)
{
	struct vol_user u;
	uint8_t *w = abuf(4096);
	uint32_t noops = 0, queued = 0;

	read_error_then_close(&u, &noops, &queued);
	/* The owner drains its ring; the fault arrives after the no-ops. */
	for (int i = 0; i < 100; i++) {
		ut_time_advance_us(1000);
		ut_poll_threads();
	}
	CU_ASSERT(noops == queued);
	CU_ASSERT(rep_info(info_of("vol"), "e0")->state == KEEL_NEXUS_REPLICA_FAULTED);
	/* and writes go on without it */
	inject("e0", KEEL_BDEV_IO_WRITE, -EIO);
	CU_ASSERT(do_io(&u, 0, KEEL_BDEV_IO_WRITE, w, 0, 4096) == 0);
	user_close(&u);
	CU_ASSERT(destroy_vol("vol", false) == 0);
	free(w);
	teardown();
}

/*
 * The same lost-looking fault, but the volume is destroyed (on the owner alone)
 * before thread 1 runs again: the fault still reaches the labels (e0 is not in
 * sync when the volume is assembled again), and the message delivered after the
 * volume was stopped touches no freed memory (ASan).
 */
static void test_fault_msg_after_destroy(void)
{
	const char *reps[] = {"e0", "m1"};
	struct op_res r;
	struct vol_user u;
	uint32_t noops = 0, queued = 0;
	struct keel_nexus_info *info;

	read_error_then_close(&u, &noops, &queued);
	/* Thread 0 alone: drain the no-ops, close, destroy. */
	ut_set_thread(0);
	keel_put_io_channel(u.ch[0]);
	keel_bdev_close(u.desc);
	memset(&r, 0, sizeof(r));
	CU_ASSERT_FATAL(keel_nexus_destroy("vol", false, op_cb, &r) == 0);
	for (int i = 0; i < 1000 && !r.done; i++) {
		ut_time_advance_us(1000);
		ut_poll_thread(0);
	}
	CU_ASSERT_FATAL(r.done && r.status == 0);
	CU_ASSERT(keel_nexus_get_by_name("vol") == NULL);
	/* Now thread 1 runs again: its retry delivers the fault to a stopped volume. */
	for (int i = 0; i < 100; i++) {
		ut_time_advance_us(1000);
		ut_poll_threads();
	}
	CU_ASSERT(noops == queued);
	keel_bdev_error_clear("e0");
	CU_ASSERT_FATAL(open_vol("vol", reps, 2, false, &r) == 0);
	info = info_of("vol");
	CU_ASSERT(rep_info(info, "m1")->state == KEEL_NEXUS_REPLICA_HEALTHY);
	CU_ASSERT(rep_info(info, "e0")->state != KEEL_NEXUS_REPLICA_HEALTHY);
	CU_ASSERT(destroy_vol("vol", false) == 0);
	teardown();
}

/* Assembly of a replica whose label (checksum valid) names the volume with a
 * terminal escape: refused with a reason that does not repeat the name. */
static void test_label_name_refused(void)
{
	const char *reps[] = {"m0"};
	struct op_res r;
	struct nexus_label l;
	uint8_t *buf = abuf(NEXUS_LABEL_SIZE);

	setup(1);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	/* the same rule for names given to create */
	CU_ASSERT(create_vol("vol\x1b[2J", reps, 1, false, &r) == -EINVAL);
	CU_ASSERT_FATAL(create_vol("vol", reps, 1, false, &r) == 0);
	CU_ASSERT(destroy_vol("vol", false) == 0);
	CU_ASSERT_FATAL(read_label("m0", &l) == 0);
	snprintf(l.volume_name, sizeof(l.volume_name), "vol\x1b]0;owned\x07\n");
	nexus_label_encode(&l, buf);
	CU_ASSERT(raw_io("m0", true, buf, NEXUS_LABEL_COPY0_OFFSET, NEXUS_LABEL_SIZE) == 0);
	CU_ASSERT(raw_io("m0", true, buf, NEXUS_LABEL_COPY1_OFFSET, NEXUS_LABEL_SIZE) == 0);
	CU_ASSERT(open_vol(NULL, reps, 1, false, &r) == -ENOENT);
	CU_ASSERT(strstr(r.msg, "m0") != NULL);
	CU_ASSERT(strstr(r.msg, "volume name") != NULL);
	CU_ASSERT(strchr(r.msg, '\x1b') == NULL && strchr(r.msg, '\n') == NULL);
	CU_ASSERT(keel_bdev_get_claim_owner(keel_bdev_get_by_name("m0")) == NULL);
	free(buf);
	teardown();
}

/* The replica bdev goes away under a live volume: it is faulted, I/O goes on. */
static void test_replica_hot_remove(void)
{
	const char *reps[] = {"m0", "m1"};
	struct op_res r, d = {0};
	struct vol_user u;
	struct keel_nexus_info *info;
	uint8_t *w = abuf(4096), *rd = abuf(4096);

	setup(2);
	mk_malloc("m0", REPLICA_BLOCKS, BS);
	mk_malloc("m1", REPLICA_BLOCKS, BS);
	CU_ASSERT_FATAL(create_vol("vol", reps, 2, false, &r) == 0);
	user_open(&u, "vol", 2);
	fill(w, 4096, 21);
	CU_ASSERT(do_io(&u, 1, KEEL_BDEV_IO_WRITE, w, 0, 4096) == 0);
	ut_set_thread(0);
	CU_ASSERT_FATAL(keel_bdev_malloc_delete("m1", done_cb, &d) == 0);
	CU_ASSERT(wait_res(&d) == 0);
	CU_ASSERT(keel_bdev_get_by_name("m1") == NULL);
	info = info_of("vol");
	CU_ASSERT(info->state == KEEL_NEXUS_DEGRADED);
	CU_ASSERT(rep_info(info, "m1")->state == KEEL_NEXUS_REPLICA_FAULTED);
	CU_ASSERT(do_io(&u, 0, KEEL_BDEV_IO_WRITE, w, 4096, 4096) == 0);
	CU_ASSERT(do_io(&u, 1, KEEL_BDEV_IO_READ, rd, 4096, 4096) == 0);
	CU_ASSERT(memcmp(w, rd, 4096) == 0);
	/* the last one goes too: the volume is faulted and lets go of it */
	memset(&d, 0, sizeof(d));
	CU_ASSERT_FATAL(keel_bdev_malloc_delete("m0", done_cb, &d) == 0);
	CU_ASSERT(wait_res(&d) == 0);
	CU_ASSERT(info_of("vol")->state == KEEL_NEXUS_FAULTED);
	CU_ASSERT(do_io(&u, 0, KEEL_BDEV_IO_READ, rd, 4096, 4096) == -EIO);
	user_close(&u);
	CU_ASSERT(destroy_vol("vol", false) == 0);
	free(w);
	free(rd);
	teardown();
}

/* ------------------------------------------------------------------------------ */
/* Real reactors: fault under concurrent load on two reactors                      */
/* ------------------------------------------------------------------------------ */

#define STRESS_REQS 20000
#define STRESS_QD 32
#define STRESS_IO 4096

struct stress_worker {
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	uint32_t idx;
	uint32_t next; /* next request to submit */
	uint32_t inflight;
	uint8_t *bufs; /* STRESS_QD buffers */
	struct stress_req {
		struct stress_worker *w;
		uint32_t id;
		uint32_t slot;
	} reqs[STRESS_QD];
	uint32_t free_slots[STRESS_QD];
	uint32_t nfree;
	struct keel_poller *poller;
	bool done;
};

static atomic_uint g_stress_count[2][STRESS_REQS];
static atomic_int g_stress_errors;
static atomic_int g_stress_finished;
static atomic_int g_stress_bad_blocks;
static struct stress_worker g_workers[2];
static atomic_bool g_stress_failed;
static int g_stress_status = -1;

static void stress_submit(struct stress_worker *w);

static void stress_done(void *arg, int status)
{
	struct stress_req *rq = arg;
	struct stress_worker *w = rq->w;

	atomic_fetch_add(&g_stress_count[w->idx][rq->id], 1);
	if (status != 0) {
		atomic_fetch_add(&g_stress_errors, 1);
	}
	w->inflight--;
	w->free_slots[w->nfree++] = rq->slot;
	stress_submit(w);
}

static void stress_submit(struct stress_worker *w)
{
	while (w->nfree > 0 && w->next < STRESS_REQS) {
		uint32_t slot = w->free_slots[--w->nfree];
		struct stress_req *rq = &w->reqs[slot];
		uint8_t *buf = w->bufs + (size_t)slot * STRESS_IO;
		/* each worker owns its half of the volume; reads and writes mix */
		uint64_t off = ((uint64_t)w->idx * 512 + (w->next % 512)) * STRESS_IO;
		int rc;

		rq->w = w;
		rq->id = w->next++;
		rq->slot = slot;
		if (rq->id % 3 == 2) {
			rc = keel_bdev_read(w->desc, w->ch, buf, off, STRESS_IO, stress_done, rq);
		} else {
			memset(buf, (int)(rq->id & 0xff), STRESS_IO);
			rc = keel_bdev_write(w->desc, w->ch, buf, off, STRESS_IO, stress_done, rq);
		}
		if (rc != 0) {
			atomic_store(&g_stress_failed, true);
			w->free_slots[w->nfree++] = slot;
			w->next = STRESS_REQS;
			break;
		}
		w->inflight++;
	}
	if (w->next >= STRESS_REQS && w->inflight == 0 && !w->done) {
		w->done = true;
		atomic_fetch_add(&g_stress_finished, 1);
	}
}

static void stress_worker_start(void *arg)
{
	struct stress_worker *w = arg;

	w->ch = keel_bdev_get_io_channel(w->desc);
	if (w->ch == NULL) {
		atomic_store(&g_stress_failed, true);
		w->done = true;
		atomic_fetch_add(&g_stress_finished, 1);
		return;
	}
	stress_submit(w);
}

static void stress_worker_stop(void *arg)
{
	struct stress_worker *w = arg;

	keel_put_io_channel(w->ch);
	keel_thread_exit(keel_thread_get_current());
}

enum stress_phase {
	ST_INIT,
	ST_CREATE,
	ST_RUN,
	ST_FAULTED,
	ST_VERIFY,
	ST_FINI,
	ST_DONE
};

struct stress_ctl {
	enum stress_phase phase;
	struct keel_poller *poller;
	struct keel_thread *threads[2];
	struct op_res res;
	struct keel_bdev_desc *desc;
	uint64_t t0;
	bool injected;
	int stopped;
	uint8_t *verify;
	struct keel_io_channel *vch;
	struct op_res vres;
};

static struct stress_ctl g_ctl;
/* Read by the control poller on a reactor, apart from info_of()'s storage. */
static struct keel_nexus_info g_stress_info;

static void stress_stop_cb(void *arg, int status)
{
	keel_reactors_stop();
}

static int stress_ctl_poll(void *arg)
{
	struct stress_ctl *c = arg;
	const char *reps[] = {"e0", "e1"};

	switch (c->phase) {
	case ST_INIT:
		if (!c->res.done) {
			return KEEL_POLLER_IDLE;
		}
		if (c->res.status != 0) {
			goto out_fail;
		}
		{
			struct keel_bdev *b;
			struct keel_nexus_create_opts o = {
				.name = "svol",
				.replicas = reps,
				.num_replicas = 2,
			};

			if (keel_bdev_malloc_create("m0", NULL, REPLICA_BLOCKS, BS, &b) ||
			    keel_bdev_malloc_create("m1", NULL, REPLICA_BLOCKS, BS, &b) ||
			    keel_bdev_error_create("e0", "m0", &b) ||
			    keel_bdev_error_create("e1", "m1", &b)) {
				goto out_fail;
			}
			memset(&c->res, 0, sizeof(c->res));
			if (keel_nexus_create(&o, op_cb, &c->res) != 0) {
				goto out_fail;
			}
		}
		c->phase = ST_CREATE;
		return KEEL_POLLER_BUSY;
	case ST_CREATE:
		if (!c->res.done) {
			return KEEL_POLLER_IDLE;
		}
		if (c->res.status != 0 || keel_bdev_open_ext("svol", true, ev_cb, NULL, &c->desc)) {
			goto out_fail;
		}
		for (uint32_t i = 0; i < 2; i++) {
			struct stress_worker *w = &g_workers[i];

			memset(w, 0, sizeof(*w));
			w->desc = c->desc;
			w->idx = i;
			w->bufs = aligned_alloc(4096, (size_t)STRESS_QD * STRESS_IO);
			for (uint32_t s = 0; s < STRESS_QD; s++) {
				w->free_slots[w->nfree++] = s;
			}
			c->threads[i] = keel_thread_create(i ? "stress1" : "stress0", i);
			if (c->threads[i] == NULL ||
			    keel_thread_send_msg(c->threads[i], stress_worker_start, w) != 0) {
				goto out_fail;
			}
		}
		{
			/* e1 fails its 1500th write (of ~5300 the two workers issue)
			 * and every write after it: the fault lands mid-run. */
			struct keel_bdev_error_rule rule = {
				.io_type = KEEL_BDEV_IO_WRITE,
				.error = -EIO,
				.every_nth = 1500,
			};

			if (keel_bdev_error_inject("e1", &rule) != 0) {
				goto out_fail;
			}
		}
		c->t0 = keel_now_ns();
		c->phase = ST_RUN;
		return KEEL_POLLER_BUSY;
	case ST_RUN:
		if (atomic_load(&g_stress_finished) < 2) {
			if (keel_now_ns() - c->t0 > 60ull * 1000000000ull) {
				goto out_fail;
			}
			return KEEL_POLLER_IDLE;
		}
		for (uint32_t i = 0; i < 2; i++) {
			keel_thread_send_msg(c->threads[i], stress_worker_stop, &g_workers[i]);
		}
		c->phase = ST_FAULTED;
		return KEEL_POLLER_BUSY;
	case ST_FAULTED:
		/* read everything back through the volume (now served by e0 only) */
		c->verify = aligned_alloc(4096, 2 * 512 * STRESS_IO);
		memset(&c->vres, 0, sizeof(c->vres));
		c->vch = keel_bdev_get_io_channel(c->desc);
		if (c->verify == NULL || c->vch == NULL ||
		    keel_bdev_read(c->desc, c->vch, c->verify, 0, 2 * 512 * STRESS_IO, done_cb,
				   &c->vres) != 0) {
			goto out_fail;
		}
		c->phase = ST_VERIFY;
		return KEEL_POLLER_BUSY;
	case ST_VERIFY: {
		struct keel_nexus_info *info = &g_stress_info;
		struct keel_nexus *n = keel_nexus_get_by_name("svol");

		if (!c->vres.done) {
			return KEEL_POLLER_IDLE;
		}
		if (n == NULL || c->vres.status != 0) {
			goto out_fail;
		}
		keel_put_io_channel(c->vch);
		for (uint32_t w = 0; w < 2; w++) {
			for (uint32_t k = 0; k < 512; k++) {
				uint32_t last = UINT32_MAX;
				const uint8_t *blk = c->verify + ((size_t)w * 512 + k) * STRESS_IO;

				for (uint32_t id = k; id < STRESS_REQS; id += 512) {
					if (id % 3 != 2) {
						last = id;
					}
				}
				if (last != UINT32_MAX && (blk[0] != (last & 0xff) ||
							   blk[STRESS_IO - 1] != (last & 0xff))) {
					atomic_fetch_add(&g_stress_bad_blocks, 1);
				}
			}
		}
		free(c->verify);
		keel_nexus_get_info(n, info);
		if (info->state == KEEL_NEXUS_DEGRADED &&
		    info->replicas[1].state == KEEL_NEXUS_REPLICA_FAULTED) {
			g_stress_status = 0;
		} else {
			fprintf(stderr, "stress: volume %s, e1 %s\n",
				keel_nexus_state_name(info->state),
				keel_nexus_replica_state_name(info->replicas[1].state));
			g_stress_status = -EINVAL;
		}
		fprintf(stderr, "stress: %u requests on 2 reactors in %.1f ms\n", 2 * STRESS_REQS,
			(double)(keel_now_ns() - c->t0) / 1e6);
		keel_bdev_close(c->desc);
		c->phase = ST_FINI;
		keel_bdev_subsystem_fini(stress_stop_cb, NULL);
		return KEEL_POLLER_BUSY;
	}
	default:
		return KEEL_POLLER_IDLE;
	}

out_fail:
	atomic_store(&g_stress_failed, true);
	c->phase = ST_DONE;
	keel_reactors_stop();
	return KEEL_POLLER_IDLE;
}

static void stress_start(void *arg)
{
	struct stress_ctl *c = arg;

	c->poller = keel_poller_register(stress_ctl_poll, c, 100, "stress_ctl");
	if (keel_bdev_subsystem_init(done_cb, &c->res) != 0) {
		atomic_store(&g_stress_failed, true);
		keel_reactors_stop();
	}
}

static void test_fault_under_load_two_reactors(void)
{
	struct keel_reactor_opts opts;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	struct timespec t0, t1;
	int rc;

	if (ncpu < 2) {
		ut_skip("needs 2 online CPUs for 2 reactors, this machine has %ld", ncpu);
		return;
	}
	keel_reactor_opts_init(&opts);
	opts.cpus = "0-1";
	opts.no_pin = true;
	opts.watchdog_ms = 0;
	rc = keel_reactors_init(&opts);
	if (rc != 0) {
		fprintf(stderr, "keel_reactors_init: %s\n", strerror(-rc));
	}
	CU_ASSERT_FATAL(rc == 0);
	memset(&g_ctl, 0, sizeof(g_ctl));
	clock_gettime(CLOCK_MONOTONIC, &t0);
	rc = keel_reactors_start(stress_start, &g_ctl);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	fprintf(stderr, "stress: reactors up to down (incl. init, fault, verify, fini): %.1f ms\n",
		(double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
	CU_ASSERT(rc == 0);
	keel_reactors_fini();
	CU_ASSERT(!atomic_load(&g_stress_failed));
	CU_ASSERT(g_stress_status == 0);
	/* every request completed exactly once, and none failed: e0 stayed healthy */
	for (uint32_t w = 0; w < 2; w++) {
		for (uint32_t i = 0; i < STRESS_REQS; i++) {
			if (atomic_load(&g_stress_count[w][i]) != 1) {
				CU_FAIL("request not completed exactly once");
				fprintf(stderr, "worker %u req %u completed %u times\n", w, i,
					atomic_load(&g_stress_count[w][i]));
				return;
			}
		}
	}
	CU_ASSERT(atomic_load(&g_stress_errors) == 0);
	CU_ASSERT(atomic_load(&g_stress_bad_blocks) == 0);
	free(g_workers[0].bufs);
	free(g_workers[1].bufs);
}

static const struct ut_test g_tests[] = {
	{"crc32c", test_crc32c},
	{"allocation_query", test_allocation_query},
	{"label_roundtrip", test_label_roundtrip},
	{"label_layout", test_label_layout},
	{"label_corrupt", test_label_corrupt},
	{"label_inspect", test_label_inspect},
	{"label_fuzz", test_label_fuzz},
	{"bitmap_format", test_bitmap_format},
	{"mirror_write_read", test_mirror_write_read},
	{"read_retry", test_read_retry},
	{"read_prefers_local", test_read_prefers_local},
	{"write_error_faults", test_write_error_faults},
	{"parked_flush_bitmap", test_parked_flush_bitmap},
	{"last_healthy_eio", test_last_healthy_eio},
	{"both_fail_eio", test_both_fail_eio},
	{"fault_while_io_in_flight", test_fault_while_io_in_flight},
	{"add_remove", test_add_remove},
	{"stale_detection", test_stale_detection},
	{"refusals", test_refusals},
	{"interrupted_label_update", test_interrupted_label_update},
	{"fault_msg_ring_full", test_fault_msg_ring_full},
	{"fault_msg_after_destroy", test_fault_msg_after_destroy},
	{"label_name_refused", test_label_name_refused},
	{"replica_hot_remove", test_replica_hot_remove},
	{"fault_under_load_two_reactors", test_fault_under_load_two_reactors},
	{NULL, NULL},
};

int main(void)
{
	nexus_ut_init();
	{
		/* These tests check membership mechanics; rebuild_ut covers the engine. */
		struct keel_rebuild_opts o;

		keel_rebuild_get_opts(&o);
		o.auto_rebuild = false;
		keel_rebuild_set_opts(&o);
	}
	return ut_cunit_run("nexus", g_tests);
}
