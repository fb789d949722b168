/*
 * Label encoding. Fields are written byte by byte in little endian so the format
 * does not depend on struct padding or the host byte order.
 */
#include "nexus_label.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "keel/util.h"
#include "nexus_bitmap_format.h"

static uint32_t g_crc32c_table[256];
static pthread_once_t g_crc32c_once = PTHREAD_ONCE_INIT;

static void crc32c_init_table(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;

		for (int k = 0; k < 8; k++) {
			c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
		}
		g_crc32c_table[i] = c;
	}
}

uint32_t nexus_crc32c(uint32_t crc, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	pthread_once(&g_crc32c_once, crc32c_init_table);
	crc = ~crc;
	while (len--) {
		crc = g_crc32c_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	}
	return ~crc;
}

int nexus_crc_record_check(const uint8_t *buf, size_t len, const char *magic, size_t crc_off)
{
	static const uint8_t zero[4];
	uint32_t crc;

	if (memcmp(buf, magic, 8) != 0) {
		return -ENODATA;
	}
	crc = nexus_crc32c(0, buf, crc_off);
	crc = nexus_crc32c(crc, zero, sizeof(zero));
	crc = nexus_crc32c(crc, buf + crc_off + 4, len - crc_off - 4);
	return crc == keel_get_le32(buf + crc_off) ? 0 : -EBADMSG;
}

#define OFF_MAGIC 0
#define OFF_VERSION 8
#define OFF_SIZE 12
#define OFF_CRC 16
#define OFF_FLAGS 20
#define OFF_GEN 24
#define OFF_VOL_UUID 32
#define OFF_VOL_NAME 48
#define VOL_NAME_LEN 64
#define OFF_REPLICA_UUID 112
#define OFF_VOL_SIZE 128
#define OFF_DATA_OFFSET 136
#define OFF_BLOCK_SIZE 144
#define OFF_NUM_MEMBERS 148
#define OFF_BITMAP_OFFSET 152
#define OFF_BITMAP_LEN 160
#define OFF_BITMAP_CHUNK 168
#define OFF_BITMAP_EVENTS 176
#define OFF_MEMBERS 256
#define MEMBER_SIZE 32

void nexus_label_encode(const struct nexus_label *label, uint8_t *buf)
{
	memset(buf, 0, NEXUS_LABEL_SIZE);
	memcpy(buf + OFF_MAGIC, NEXUS_LABEL_MAGIC, 8);
	keel_put_le32(buf + OFF_VERSION, label->version);
	keel_put_le32(buf + OFF_SIZE, NEXUS_LABEL_SIZE);
	keel_put_le32(buf + OFF_FLAGS, label->flags);
	keel_put_le64(buf + OFF_GEN, label->generation);
	memcpy(buf + OFF_VOL_UUID, label->volume_uuid, 16);
	memcpy(buf + OFF_VOL_NAME, label->volume_name,
	       strnlen(label->volume_name, VOL_NAME_LEN - 1));
	memcpy(buf + OFF_REPLICA_UUID, label->replica_uuid, 16);
	keel_put_le64(buf + OFF_VOL_SIZE, label->volume_size);
	keel_put_le64(buf + OFF_DATA_OFFSET, label->data_offset);
	keel_put_le32(buf + OFF_BLOCK_SIZE, label->block_size);
	keel_put_le32(buf + OFF_NUM_MEMBERS, label->num_members);
	keel_put_le64(buf + OFF_BITMAP_OFFSET, label->bitmap_offset);
	keel_put_le64(buf + OFF_BITMAP_LEN, label->bitmap_len);
	keel_put_le32(buf + OFF_BITMAP_CHUNK, label->bitmap_chunk_kib);
	keel_put_le64(buf + OFF_BITMAP_EVENTS, label->bitmap_events_cleared);
	for (uint32_t i = 0; i < label->num_members && i < KEEL_NEXUS_MAX_REPLICAS; i++) {
		uint8_t *m = buf + OFF_MEMBERS + i * MEMBER_SIZE;

		memcpy(m, label->members[i].uuid, 16);
		keel_put_le32(m + 16, label->members[i].state);
	}
	keel_put_le32(buf + OFF_CRC, nexus_crc32c(0, buf, NEXUS_LABEL_SIZE));
}

static bool is_pow2(uint64_t v)
{
	return v != 0 && (v & (v - 1)) == 0;
}

int nexus_label_decode(const uint8_t *buf, size_t len, struct nexus_label *label, char *why,
		       size_t whylen)
{
	const char *reason = NULL;
	int rc = -EINVAL;
	size_t name_len;

	if (why != NULL && whylen > 0) {
		why[0] = '\0';
	}
	if (len < NEXUS_LABEL_SIZE) {
		reason = "label shorter than its fixed size";
		goto out_fail;
	}
	/* Check the checksum before trusting any other field, including the size. */
	rc = nexus_crc_record_check(buf, NEXUS_LABEL_SIZE, NEXUS_LABEL_MAGIC, OFF_CRC);
	if (rc != 0) {
		reason = rc == -ENODATA ? "no keel label" : "label checksum mismatch";
		goto out_fail;
	}
	rc = -EINVAL;
	memset(label, 0, sizeof(*label));
	label->version = keel_get_le32(buf + OFF_VERSION);
	if (label->version < NEXUS_LABEL_VERSION_MIN || label->version > NEXUS_LABEL_VERSION) {
		if (why != NULL) {
			snprintf(why, whylen, "unsupported label version %u", label->version);
		}
		return -EPROTONOSUPPORT;
	}
	if (keel_get_le32(buf + OFF_SIZE) != NEXUS_LABEL_SIZE) {
		reason = "bad label size";
		goto out_fail;
	}
	label->flags = keel_get_le32(buf + OFF_FLAGS);
	label->generation = keel_get_le64(buf + OFF_GEN);
	memcpy(label->volume_uuid, buf + OFF_VOL_UUID, 16);
	name_len = strnlen((const char *)buf + OFF_VOL_NAME, VOL_NAME_LEN);
	if (name_len == 0 || name_len > KEEL_NEXUS_NAME_MAX) {
		reason = "bad volume name in label";
		goto out_fail;
	}
	memcpy(label->volume_name, buf + OFF_VOL_NAME, name_len);
	label->volume_name[name_len] = '\0';
	/* The name is logged and registered: the rule of names given over RPC. */
	if (!keel_nexus_name_valid(label->volume_name, NULL, 0)) {
		label->volume_name[0] = '\0';
		reason = "volume name in label has bytes a name may not have (control, "
			 "space, '/', non-ASCII)";
		goto out_fail;
	}
	memcpy(label->replica_uuid, buf + OFF_REPLICA_UUID, 16);
	label->volume_size = keel_get_le64(buf + OFF_VOL_SIZE);
	label->data_offset = keel_get_le64(buf + OFF_DATA_OFFSET);
	label->block_size = keel_get_le32(buf + OFF_BLOCK_SIZE);
	label->num_members = keel_get_le32(buf + OFF_NUM_MEMBERS);
	label->bitmap_offset = keel_get_le64(buf + OFF_BITMAP_OFFSET);
	label->bitmap_len = keel_get_le64(buf + OFF_BITMAP_LEN);
	label->bitmap_chunk_kib = keel_get_le32(buf + OFF_BITMAP_CHUNK);
	label->bitmap_events_cleared = keel_get_le64(buf + OFF_BITMAP_EVENTS);
	if (!is_pow2(label->block_size) || label->block_size < 512 || label->block_size > 65536) {
		reason = "bad block size in label";
		goto out_fail;
	}
	if (label->volume_size == 0 || label->volume_size % label->block_size != 0) {
		reason = "bad volume size in label";
		goto out_fail;
	}
	if (label->data_offset < KEEL_NEXUS_DATA_OFFSET ||
	    label->data_offset % label->block_size != 0 ||
	    label->data_offset + label->volume_size < label->data_offset) {
		reason = "bad data offset in label";
		goto out_fail;
	}
	if (label->generation == 0) {
		reason = "bad generation in label";
		goto out_fail;
	}
	if (label->num_members == 0 || label->num_members > KEEL_NEXUS_MAX_REPLICAS) {
		reason = "bad member count in label";
		goto out_fail;
	}
	for (uint32_t i = 0; i < label->num_members; i++) {
		const uint8_t *m = buf + OFF_MEMBERS + i * MEMBER_SIZE;

		memcpy(label->members[i].uuid, m, 16);
		label->members[i].state = keel_get_le32(m + 16);
		if (label->members[i].state != NEXUS_MEMBER_IN_SYNC &&
		    label->members[i].state != NEXUS_MEMBER_OUT_OF_SYNC) {
			reason = "bad member state in label";
			goto out_fail;
		}
	}
	if (nexus_label_find_member(label, label->replica_uuid) == NULL) {
		reason = "label does not list its own replica";
		goto out_fail;
	}
	return 0;

out_fail:
	if (why != NULL && whylen > 0) {
		snprintf(why, whylen, "%s", reason);
	}
	return rc;
}

int nexus_label_pick(int rc0, const struct nexus_label *l0, int rc1, const struct nexus_label *l1,
		     int *out)
{
	if (rc0 == 0 && rc1 == 0) {
		*out = l1->generation > l0->generation ? 1 : 0;
		return 0;
	}
	if (rc0 == 0) {
		*out = 0;
		return 0;
	}
	if (rc1 == 0) {
		*out = 1;
		return 0;
	}
	if (rc0 == -EBADMSG || rc1 == -EBADMSG) {
		return -EBADMSG;
	}
	if (rc0 == -ENODATA && rc1 == -ENODATA) {
		return -ENODATA;
	}
	return rc0 != -ENODATA ? rc0 : rc1;
}

const char *nexus_label_pick_why(int rc, int rc0, const char *why0, const char *why1)
{
	if (rc == -EBADMSG) {
		return "label checksum mismatch (both copies)";
	}
	return rc0 != -ENODATA ? why0 : why1;
}

int nexus_label_read_copies(const uint8_t *copy0, const uint8_t *copy1, size_t len,
			    struct nexus_label *label, char *why, size_t whylen,
			    struct nexus_label_copies *info)
{
	struct nexus_label_copies local;
	struct nexus_label l[2];
	int rc;

	if (info == NULL) {
		info = &local;
	}
	memset(info, 0, sizeof(*info));
	info->rc[0] = nexus_label_decode(copy0, len, &l[0], info->why[0], sizeof(info->why[0]));
	info->rc[1] = nexus_label_decode(copy1, len, &l[1], info->why[1], sizeof(info->why[1]));
	rc = nexus_label_pick(info->rc[0], &l[0], info->rc[1], &l[1], &info->which);
	if (rc == 0) {
		*label = l[info->which];
		info->differ = info->rc[0] != info->rc[1] ||
			       (info->rc[0] == 0 && l[0].generation != l[1].generation);
	} else if (why != NULL && whylen > 0) {
		snprintf(why, whylen, "%s",
			 nexus_label_pick_why(rc, info->rc[0], info->why[0], info->why[1]));
	}
	return rc;
}

int keel_nexus_label_inspect(const void *buf, size_t len, struct keel_nexus_label_summary *out)
{
	static const uint8_t blank[NEXUS_LABEL_SIZE];
	const uint8_t *area = buf;
	const uint8_t *copy0 = len >= NEXUS_LABEL_COPY0_OFFSET + NEXUS_LABEL_SIZE
				       ? area + NEXUS_LABEL_COPY0_OFFSET
				       : blank;
	const uint8_t *copy1 = len >= NEXUS_LABEL_COPY1_OFFSET + NEXUS_LABEL_SIZE
				       ? area + NEXUS_LABEL_COPY1_OFFSET
				       : blank;
	struct nexus_label l;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = nexus_label_read_copies(copy0, copy1, NEXUS_LABEL_SIZE, &l, out->why, sizeof(out->why),
				     NULL);
	if (rc == 0) {
		snprintf(out->volume_name, sizeof(out->volume_name), "%s", l.volume_name);
		keel_uuid_fmt(l.volume_uuid, out->volume_uuid);
		keel_uuid_fmt(l.replica_uuid, out->replica_uuid);
		out->generation = l.generation;
		return 0;
	}
	if (rc == -ENODATA) {
		out->why[0] = '\0';
		out->wiped = len >= NEXUS_BITMAP_OFFSET + 8 &&
			     memcmp(area + NEXUS_BITMAP_OFFSET, NEXUS_BM_MAGIC, 8) == 0;
	}
	return rc;
}

const struct nexus_label_member *nexus_label_find_member(const struct nexus_label *label,
							 const uint8_t *uuid)
{
	for (uint32_t i = 0; i < label->num_members && i < KEEL_NEXUS_MAX_REPLICAS; i++) {
		if (memcmp(label->members[i].uuid, uuid, 16) == 0) {
			return &label->members[i];
		}
	}
	return NULL;
}
