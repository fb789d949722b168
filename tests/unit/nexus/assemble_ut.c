/*
 * Assembly decision (bdev/nexus/nexus_assemble.c), table-driven: each row is a set
 * of replica slots, each slot two label copies as they would lie on disk. The copies
 * go through the same pure path as at assembly (encode, tear, decode and pick with
 * nexus_label_read_copies), then nexus_assemble() decides; the row says what each
 * slot must become and whether the volume runs. No I/O, no threads.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bdev/nexus/nexus_assemble.h"
#include "bdev/nexus/nexus_label.h"
#include "ut_cunit.h"

#define MB (1024ull * 1024ull)
#define VSIZE (64 * MB)
#define ROW_SLOTS 4

/* One label copy as it lies on the bdev. */
enum copy {
	OK = 0, /* the label */
	OLDER,  /* the label one generation earlier (the other copy was written last) */
	TORN,   /* the label with a byte changed after its checksum: a torn write */
	BLANK,  /* zeros: never labelled */
};

struct slot_row {
	bool present; /* false: no bdev in this slot (not given, or not opened) */
	enum copy c0, c1;
	char vol; /* 'A' (vol-a), 'B' (vol-b), 'C' (named vol-a, other UUID) */
	uint64_t gen;
	int id;              /* replica UUID number */
	const char *members; /* the label's members: "1+2-" = 1 in sync, 2 out of sync */
	bool dirty;
	uint64_t vsize;     /* volume size in the label; 0: VSIZE */
	uint32_t bdev_bs;   /* 0: 4096 */
	uint64_t bdev_size; /* 0: enough for the volume */
	enum nexus_slot_verdict want;
	const char *want_detail; /* a substring of the slot's detail, or NULL */
};

struct row {
	const char *what;
	const char *name; /* the name the caller gives, or NULL */
	bool force;
	struct slot_row slot[ROW_SLOTS];
	enum nexus_assemble_outcome outcome;
	int status;
	const char *why; /* a substring of the volume's reason, or NULL */
	unsigned healthy;
	unsigned missing;
	unsigned missing_in_sync;
	bool forced;
	bool unclean;
	uint64_t generation;
	int newest;
};

/* Shorthand for a present slot with both copies intact (OK is 0): volume,
 * generation, replica id, members. */
#define SLOT(v, g, i, m) .present = true, .vol = v, .gen = g, .id = i, .members = m
#define HEALTHY NEXUS_SLOT_HEALTHY
#define OOS NEXUS_SLOT_OUT_OF_SYNC

static const struct row g_rows[] = {
	{"two healthy replicas, clean",
	 NULL,
	 false,
	 {{SLOT('A', 5, 1, "1+2+"), .want = HEALTHY}, {SLOT('A', 5, 2, "1+2+"), .want = HEALTHY}},
	 NEXUS_ASSEMBLE_RUN,
	 0,
	 NULL,
	 2,
	 0,
	 0,
	 false,
	 false,
	 5,
	 0},
	{"copy 0 torn: copy 1 is used",
	 NULL,
	 false,
	 {{SLOT('A', 5, 1, "1+2+"), .c0 = TORN, .want = HEALTHY},
	  {SLOT('A', 5, 2, "1+2+"), .want = HEALTHY}},
	 NEXUS_ASSEMBLE_RUN,
	 0,
	 NULL,
	 2,
	 0,
	 0,
	 false,
	 false,
	 5,
	 0},
	{"copy 1 torn: copy 0 is used",
	 NULL,
	 false,
	 {{SLOT('A', 5, 1, "1+2+"), .c1 = TORN, .want = HEALTHY},
	  {SLOT('A', 5, 2, "1+2+"), .want = HEALTHY}},
	 NEXUS_ASSEMBLE_RUN,
	 0,
	 NULL,
	 2,
	 0,
	 0,
	 false,
	 false,
	 5,
	 0},
	{"copy 1 one generation behind (crash between the copies): the newer is used",
	 NULL,
	 false,
	 {{SLOT('A', 5, 1, "1+2+"), .c1 = OLDER, .want = HEALTHY},
	  {SLOT('A', 5, 2, "1+2+"), .want = HEALTHY}},
	 NEXUS_ASSEMBLE_RUN,
	 0,
	 NULL,
	 2,
	 0,
	 0,
	 false,
	 false,
	 5,
	 0},
	{"copy 0 one generation behind: the newer is used",
	 NULL,
	 false,
	 {{SLOT('A', 5, 1, "1+2+"), .c0 = OLDER, .want = HEALTHY},
	  {SLOT('A', 5, 2, "1+2+"), .want = HEALTHY}},
	 NEXUS_ASSEMBLE_RUN,
	 0,
	 NULL,
	 2,
	 0,
	 0,
	 false,
	 false,
	 5,
	 0},
	{"both copies torn: no label, its member missing, not forced: faulted",
	 NULL,
	 false,
	 {{SLOT('A', 5, 1, "1+2+"), .c0 = TORN, .c1 = TORN, .want = NEXUS_SLOT_NO_LABEL,
	   .want_detail = "checksum mismatch"},
	  {SLOT('A', 5, 2, "1+2+"), .want = HEALTHY}},
	 NEXUS_ASSEMBLE_FAULTED_MISSING,
	 0,
	 "open with force",
	 1,
	 1,
	 1,
	 false,
	 false,
	 5,
	 1},
	{"both copies torn, forced: runs on the other",
	 NULL,
	 true,
	 {{SLOT('A', 5, 1, "1+2+"), .c0 = TORN, .c1 = TORN, .want = NEXUS_SLOT_NO_LABEL,
	   .want_detail = "checksum mismatch"},
	  {SLOT('A', 5, 2, "1+2+"), .want = HEALTHY}},
	 NEXUS_ASSEMBLE_RUN,
	 0,
	 NULL,
	 1,
	 1,
	 1,
	 true,
	 false,
	 5,
	 1},
	{"one copy blank, the other torn: a damaged label, not a blank bdev",
	 NULL,
	 true,
	 {{SLOT('A', 5, 1, "1+2+"), .c0 = BLANK, .c1 = TORN, .want = NEXUS_SLOT_NO_LABEL,
	   .want_detail = "checksum mismatch"},
	  {SLOT('A', 5, 2, "1+2+"), .want = HEALTHY}},
	 NEXUS_ASSEMBLE_RUN,
	 0,
	 NULL,
	 1,
	 1,
	 1,
	 true,
	 false,
	 5,
	 1},
	{"a blank bdev among the replicas",
	 NULL,
	 true,
	 {{.present = true,
	   .c0 = BLANK,
	   .c1 = BLANK,
	   .want = NEXUS_SLOT_NO_LABEL,
	   .want_detail = "no keel label"},
	  {SLOT('A', 5, 2, "1+2+"), .want = HEALTHY}},
	 NEXUS_ASSEMBLE_RUN,
	 0,
	 NULL,
	 1,
	 1,
	 1,
	 true,
	 false,
	 5,
	 1},
	{"no valid label anywhere",
	 NULL,
	 false,
	 {{.present = true, .c0 = BLANK, .c1 = BLANK, .want = NEXUS_SLOT_NO_LABEL},
	  {.present = true,
	   .c0 = TORN,
	   .c1 = TORN,
	   .vol = 'A',
	   .gen = 3,
	   .id = 2,
	   .members = "2+",
	   .want = NEXUS_SLOT_NO_LABEL}},
	 NEXUS_ASSEMBLE_FAILED,
	 -ENOENT,
	 "no replica carries a valid label",
	 0,
	 0,
	 0,
	 false,
	 false,
	 0,
	 -1},
	{"generation one behind and listed: an interrupted label update, accepted",
	 NULL,
	 false,
	 {{SLOT('A', 6, 1, "1+2+"), .want = HEALTHY}, {SLOT('A', 5, 2, "1+2+"), .want = HEALTHY}},
	 NEXUS_ASSEMBLE_RUN,
	 0,
	 NULL,
	 2,
	 0,
	 0,
	 false,
	 false,
	 6,
	 0},
	{"the newest label is in a later slot",
	 NULL,
	 false,
	 {{SLOT('A', 5, 1, "1+2+"), .want = HEALTHY}, {SLOT('A', 6, 2, "1+2+"), .want = HEALTHY}},
	 NEXUS_ASSEMBLE_RUN,
	 0,
	 NULL,
	 2,
	 0,
	 0,
	 false,
	 false,
	 6,
	 1},
	{"equal generations: the first slot's label is the newest",
	 NULL,
	 false,
	 {{SLOT('A', 7, 1, "1+2-"), .want = HEALTHY}, {SLOT('A', 7, 2, "1+2-"), .want = OOS}},
	 NEXUS_ASSEMBLE_RUN,
	 0,
	 NULL,
	 1,
	 0,
	 0,
	 false,
	 false,
	 7,
	 0},
	{"two generations behind: stale",
	 NULL,
	 false,
	 {{SLOT('A', 7, 1, "1+2+"), .want = HEALTHY},
	  {SLOT('A', 5, 2, "1+2+"), .want = NEXUS_SLOT_STALE,
	   .want_detail = "stale: label generation 5, volume is at 7"}},
	 NEXUS_ASSEMBLE_FAULTED_MISSING,
	 0,
	 "in-sync member(s)",
	 1,
	 1,
	 1,
	 false,
	 false,
	 7,
	 0},
	{"faulted out of the newest label: stale, no longer listed",
	 NULL,
	 false,
	 {{SLOT('A', 7, 1, "1+"), .want = HEALTHY},
	  {SLOT('A', 6, 2, "1+2+"), .want = NEXUS_SLOT_STALE,
	   .want_detail = "and no longer lists it"}},
	 NEXUS_ASSEMBLE_RUN,
	 0,
	 NULL,
	 1,
	 0,
	 0,
	 false,
	 false,
	 7,
	 0},
	{"listed out of sync: rebuilding",
	 NULL,
	 false,
	 {{SLOT('A', 5, 1, "1+2-"), .want = HEALTHY},
	  {SLOT('A', 5, 2, "1+2-"), .want = OOS, .want_detail = "out of sync (label says so)"}},
	 NEXUS_ASSEMBLE_RUN,
	 0,
	 NULL,
	 1,
	 0,
	 0,
	 false,
	 false,
	 5,
	 0},
	{"rebuilding replica one generation behind, listed out of sync",
	 NULL,
	 false,
	 {{SLOT('A', 9, 1, "1+2-"), .want = HEALTHY}, {SLOT('A', 8, 2, "1+2-"), .want = OOS}},
	 NEXUS_ASSEMBLE_RUN,
	 0,
	 NULL,
	 1,
	 0,
	 0,
	 false,
	 false,
	 9,
	 0},
	{"name given: a label of another volume is foreign",
	 "vol-a",
	 false,
	 {{SLOT('A', 5, 1, "1+"), .want = HEALTHY},
	  {SLOT('B', 9, 2, "2+"), .want = NEXUS_SLOT_FOREIGN,
	   .want_detail = "label belongs to another volume: vol-b"}},
	 NEXUS_ASSEMBLE_RUN,
	 0,
	 NULL,
	 1,
	 0,
	 0,
	 false,
	 false,
	 5,
	 0},
	{"no name: labels of two volumes fail the assembly",
	 NULL,
	 false,
	 {{SLOT('A', 5, 1, "1+"), .want = NEXUS_SLOT_UNDECIDED},
	  {SLOT('B', 5, 2, "2+"), .want = NEXUS_SLOT_UNDECIDED}},
	 NEXUS_ASSEMBLE_FAILED,
	 -EINVAL,
	 "name the volume to pick one",
	 0,
	 0,
	 0,
	 false,
	 false,
	 0,
	 -1},
	{"name given, same name but another volume UUID: refused to guess",
	 "vol-a",
	 false,
	 {{SLOT('A', 5, 1, "1+"), .want = NEXUS_SLOT_UNDECIDED},
	  {SLOT('C', 5, 2, "2+"), .want = NEXUS_SLOT_UNDECIDED}},
	 NEXUS_ASSEMBLE_FAILED,
	 -EINVAL,
	 "carry labels of different volumes",
	 0,
	 0,
	 0,
	 false,
	 false,
	 0,
	 -1},
	{"in-sync member missing, not forced: faulted, keel does not guess",
	 NULL,
	 false,
	 {{SLOT('A', 5, 1, "1+2+3+"), .want = HEALTHY},
	  {SLOT('A', 5, 2, "1+2+3+"), .want = HEALTHY}},
	 NEXUS_ASSEMBLE_FAULTED_MISSING,
	 0,
	 "may hold newer data",
	 2,
	 1,
	 1,
	 false,
	 false,
	 5,
	 0},
	{"in-sync member missing, forced: runs",
	 NULL,
	 true,
	 {{SLOT('A', 5, 1, "1+2+3+"), .want = HEALTHY},
	  {SLOT('A', 5, 2, "1+2+3+"), .want = HEALTHY}},
	 NEXUS_ASSEMBLE_RUN,
	 0,
	 NULL,
	 2,
	 1,
	 1,
	 true,
	 false,
	 5,
	 0},
	{"out-of-sync member missing: runs without force",
	 NULL,
	 false,
	 {{SLOT('A', 5, 1, "1+2+3-"), .want = HEALTHY},
	  {SLOT('A', 5, 2, "1+2+3-"), .want = HEALTHY}},
	 NEXUS_ASSEMBLE_RUN,
	 0,
	 NULL,
	 2,
	 1,
	 0,
	 false,
	 false,
	 5,
	 0},
	{"a slot that could not be opened counts as missing",
	 NULL,
	 false,
	 {{SLOT('A', 5, 1, "1+2+"), .want = HEALTHY},
	  {.present = false, .want = NEXUS_SLOT_UNDECIDED}},
	 NEXUS_ASSEMBLE_FAULTED_MISSING,
	 0,
	 NULL,
	 1,
	 1,
	 1,
	 false,
	 false,
	 5,
	 0},
	{"volume size differs from the newest label",
	 NULL,
	 true,
	 {{SLOT('A', 5, 1, "1+2+"), .want = HEALTHY},
	  {SLOT('A', 5, 2, "1+2+"), .vsize = 32 * MB, .want = NEXUS_SLOT_MISMATCH,
	   .want_detail = "label says volume size 33554432"}},
	 NEXUS_ASSEMBLE_RUN,
	 0,
	 NULL,
	 1,
	 1,
	 1,
	 true,
	 false,
	 5,
	 0},
	{"bdev block size differs from the label",
	 NULL,
	 true,
	 {{SLOT('A', 5, 1, "1+2+"), .want = HEALTHY},
	  {SLOT('A', 5, 2, "1+2+"), .bdev_bs = 512, .want = NEXUS_SLOT_MISMATCH,
	   .want_detail = "label says block size 4096, bdev has 512"}},
	 NEXUS_ASSEMBLE_RUN,
	 0,
	 NULL,
	 1,
	 1,
	 1,
	 true,
	 false,
	 5,
	 0},
	{"bdev smaller than the volume",
	 NULL,
	 true,
	 {{SLOT('A', 5, 1, "1+2+"), .want = HEALTHY},
	  {SLOT('A', 5, 2, "1+2+"), .bdev_size = 16 * MB, .want = NEXUS_SLOT_MISMATCH,
	   .want_detail = "bdev has 16777216 bytes"}},
	 NEXUS_ASSEMBLE_RUN,
	 0,
	 NULL,
	 1,
	 1,
	 1,
	 true,
	 false,
	 5,
	 0},
	{"the same replica twice (a copied file)",
	 NULL,
	 false,
	 {{SLOT('A', 5, 1, "1+2+"), .want = HEALTHY},
	  {SLOT('A', 5, 1, "1+2+"), .want = NEXUS_SLOT_DUPLICATE,
	   .want_detail = "same replica UUID as r0"},
	  {SLOT('A', 5, 2, "1+2+"), .want = HEALTHY}},
	 NEXUS_ASSEMBLE_RUN,
	 0,
	 NULL,
	 2,
	 0,
	 0,
	 false,
	 false,
	 5,
	 0},
	{"dirty newest label: unclean shutdown",
	 NULL,
	 false,
	 {{SLOT('A', 5, 1, "1+2+"), .dirty = true, .want = HEALTHY},
	  {SLOT('A', 5, 2, "1+2+"), .dirty = true, .want = HEALTHY}},
	 NEXUS_ASSEMBLE_RUN,
	 0,
	 NULL,
	 2,
	 0,
	 0,
	 false,
	 true,
	 5,
	 0},
	{"only an older label dirty: the newest decides (clean)",
	 NULL,
	 false,
	 {{SLOT('A', 6, 1, "1+2+"), .want = HEALTHY},
	  {SLOT('A', 5, 2, "1+2+"), .dirty = true, .want = HEALTHY}},
	 NEXUS_ASSEMBLE_RUN,
	 0,
	 NULL,
	 2,
	 0,
	 0,
	 false,
	 false,
	 6,
	 0},
	{"no in-sync member present: faulted, even forced",
	 NULL,
	 true,
	 {{SLOT('A', 5, 1, "1-2-"), .want = OOS}, {SLOT('A', 5, 2, "1-2-"), .want = OOS}},
	 NEXUS_ASSEMBLE_FAULTED_NO_INSYNC,
	 0,
	 "no in-sync replica of generation 5",
	 0,
	 0,
	 0,
	 false,
	 false,
	 5,
	 0},
	{"labels in later slots only; earlier slots empty",
	 NULL,
	 false,
	 {{.present = false, .want = NEXUS_SLOT_UNDECIDED},
	  {SLOT('A', 4, 1, "1+2+"), .want = HEALTHY},
	  {SLOT('A', 4, 2, "1+2+"), .want = HEALTHY}},
	 NEXUS_ASSEMBLE_RUN,
	 0,
	 NULL,
	 2,
	 0,
	 0,
	 false,
	 false,
	 4,
	 1},
};

static void vol_uuid(char vol, uint8_t *u)
{
	memset(u, vol == 'C' ? 0xc0 : vol == 'B' ? 0xb0 : 0xa0, 16);
}

static void replica_uuid(int id, uint8_t *u)
{
	memset(u, 0x10 + id, 16);
}

static void make_label(const struct slot_row *sr, uint64_t gen, struct nexus_label *l)
{
	memset(l, 0, sizeof(*l));
	l->version = NEXUS_LABEL_VERSION;
	l->flags = sr->dirty ? NEXUS_LABEL_FLAG_DIRTY : 0;
	l->generation = gen;
	vol_uuid(sr->vol, l->volume_uuid);
	snprintf(l->volume_name, sizeof(l->volume_name), "%s", sr->vol == 'B' ? "vol-b" : "vol-a");
	replica_uuid(sr->id, l->replica_uuid);
	l->volume_size = sr->vsize ? sr->vsize : VSIZE;
	l->data_offset = KEEL_NEXUS_DATA_OFFSET;
	l->block_size = 4096;
	for (const char *m = sr->members; m != NULL && m[0] != '\0' && m[1] != '\0'; m += 2) {
		struct nexus_label_member *lm = &l->members[l->num_members++];

		replica_uuid(m[0] - '0', lm->uuid);
		lm->state = m[1] == '+' ? NEXUS_MEMBER_IN_SYNC : NEXUS_MEMBER_OUT_OF_SYNC;
	}
}

static void make_copy(const struct slot_row *sr, enum copy c, uint8_t *buf)
{
	struct nexus_label l;

	memset(buf, 0, NEXUS_LABEL_SIZE);
	if (c == BLANK) {
		return;
	}
	make_label(sr, c == OLDER ? sr->gen - 1 : sr->gen, &l);
	nexus_label_encode(&l, buf);
	if (c == TORN) {
		buf[300] ^= 0x5a; /* inside the member list, after the checksum was taken */
	}
}

/* Everything a row's slots hold while nexus_assemble runs. */
struct row_input {
	struct nexus_assemble_in in[ROW_SLOTS];
	struct nexus_label labels[ROW_SLOTS];
	char why[ROW_SLOTS][96];
	char names[ROW_SLOTS][8];
};

static void build_input(const struct row *row, struct row_input *ri)
{
	uint8_t *c0 = calloc(1, NEXUS_LABEL_SIZE), *c1 = calloc(1, NEXUS_LABEL_SIZE);

	CU_ASSERT_FATAL(c0 != NULL && c1 != NULL);
	memset(ri, 0, sizeof(*ri));
	for (unsigned s = 0; s < ROW_SLOTS; s++) {
		const struct slot_row *sr = &row->slot[s];
		struct nexus_assemble_in *in = &ri->in[s];
		uint64_t vsize = sr->vsize ? sr->vsize : VSIZE;

		snprintf(ri->names[s], sizeof(ri->names[s]), "r%u", s);
		in->bdev_name = ri->names[s];
		in->present = sr->present;
		if (!sr->present) {
			continue;
		}
		make_copy(sr, sr->c0, c0);
		make_copy(sr, sr->c1, c1);
		in->label_rc = nexus_label_read_copies(c0, c1, NEXUS_LABEL_SIZE, &ri->labels[s],
						       ri->why[s], sizeof(ri->why[s]), NULL);
		in->label_why = ri->why[s];
		in->label = &ri->labels[s];
		in->block_size = sr->bdev_bs ? sr->bdev_bs : 4096;
		in->size = sr->bdev_size ? sr->bdev_size : KEEL_NEXUS_DATA_OFFSET + vsize;
	}
	free(c0);
	free(c1);
}

static bool check_row(const struct row *row)
{
	struct row_input *ri = calloc(1, sizeof(*ri));
	struct nexus_assembly *a = calloc(1, sizeof(*a));
	bool ok = true;

	CU_ASSERT_FATAL(ri != NULL && a != NULL);
	build_input(row, ri);
	nexus_assemble(ri->in, ROW_SLOTS, row->name, row->force, a);
#define EXPECT(cond)                                                                           \
	do {                                                                                   \
		if (!(cond)) {                                                                 \
			fprintf(stderr, "row \"%s\": %s failed (why: %s)\n", row->what, #cond, \
				a->why);                                                       \
			ok = false;                                                            \
		}                                                                              \
	} while (0)
	EXPECT(a->outcome == row->outcome);
	EXPECT(a->status == row->status);
	EXPECT(row->why == NULL || strstr(a->why, row->why) != NULL);
	EXPECT(a->newest == row->newest);
	if (row->outcome != NEXUS_ASSEMBLE_FAILED) {
		EXPECT(a->healthy == row->healthy);
		EXPECT(a->num_missing == row->missing);
		EXPECT(a->missing_in_sync == row->missing_in_sync);
		EXPECT(a->forced == row->forced);
		EXPECT(a->unclean == row->unclean);
		EXPECT(a->generation == row->generation);
		EXPECT(strcmp(a->name, row->name != NULL ? row->name : "vol-a") == 0);
	}
	for (unsigned s = 0; s < ROW_SLOTS; s++) {
		const struct nexus_assemble_slot *got = &a->slots[s];
		const struct slot_row *sr = &row->slot[s];

		if (got->verdict != sr->want ||
		    (sr->want_detail != NULL && strstr(got->detail, sr->want_detail) == NULL)) {
			fprintf(stderr,
				"row \"%s\": slot %u: verdict %d (\"%s\"), want %d (\"%s\")\n",
				row->what, s, got->verdict, got->detail, sr->want,
				sr->want_detail ? sr->want_detail : "");
			ok = false;
		}
	}
#undef EXPECT
	free(ri);
	free(a);
	return ok;
}

static void test_assemble_table(void)
{
	unsigned failed = 0;

	for (size_t i = 0; i < sizeof(g_rows) / sizeof(g_rows[0]); i++) {
		if (!check_row(&g_rows[i])) {
			failed++;
		}
	}
	CU_ASSERT_EQUAL(failed, 0);
}

/* Members that are missing are reported with their state, in label order. */
static void test_assemble_missing_list(void)
{
	const struct row row = {
		"",    NULL, true, {{SLOT('A', 5, 1, "1+3-2+4+")}}, 0, 0, NULL, 0, 0, 0, false,
		false, 0,    0};
	struct row_input *ri = calloc(1, sizeof(*ri));
	struct nexus_assembly a;
	char u2[KEEL_UUID_STR_LEN], u4[KEEL_UUID_STR_LEN], want[2 * KEEL_UUID_STR_LEN + 4];
	uint8_t u[16];

	CU_ASSERT_FATAL(ri != NULL);
	build_input(&row, ri);
	nexus_assemble(ri->in, ROW_SLOTS, NULL, true, &a);
	CU_ASSERT_EQUAL_FATAL(a.num_missing, 3);
	replica_uuid(3, u);
	CU_ASSERT(memcmp(a.missing[0].uuid, u, 16) == 0 && !a.missing[0].in_sync);
	replica_uuid(2, u);
	CU_ASSERT(memcmp(a.missing[1].uuid, u, 16) == 0 && a.missing[1].in_sync);
	keel_uuid_fmt(u, u2);
	replica_uuid(4, u);
	CU_ASSERT(memcmp(a.missing[2].uuid, u, 16) == 0 && a.missing[2].in_sync);
	keel_uuid_fmt(u, u4);
	snprintf(want, sizeof(want), "%s, %s", u2, u4);
	CU_ASSERT_STRING_EQUAL(a.missing_list, want);
	CU_ASSERT(a.outcome == NEXUS_ASSEMBLE_RUN && a.forced);
	free(ri);
}

/* A member one generation behind is flagged, so the caller can say why it is kept. */
static void test_assemble_behind(void)
{
	const struct row row = {
		"", NULL, false, {{SLOT('A', 6, 1, "1+2+")}, {SLOT('A', 5, 2, "1+2+")}},
		0,  0,    NULL,  0,
		0,  0,    false, false,
		0,  0};
	struct row_input *ri = calloc(1, sizeof(*ri));
	struct nexus_assembly a;

	CU_ASSERT_FATAL(ri != NULL);
	build_input(&row, ri);
	nexus_assemble(ri->in, ROW_SLOTS, NULL, false, &a);
	CU_ASSERT(!a.slots[0].behind && a.slots[0].labelled);
	CU_ASSERT(a.slots[1].behind && a.slots[1].labelled);
	CU_ASSERT(!a.slots[2].labelled);
	free(ri);
}

/* md's events rule for the write-intent bitmap. */
static void test_assemble_covers(void)
{
	static const struct {
		uint64_t events_cleared;
		uint64_t generation;
		bool covers;
	} rows[] = {
		{UINT64_MAX, 5, false}, /* no valid bitmap */
		{UINT64_MAX, UINT64_MAX - 1, false},
		{5, 5, true},  /* left at the generation of the last clear */
		{5, 9, true},  /* left after it */
		{5, 4, false}, /* left before it: bits it needs may be cleared */
		{1, 1, true},  /* a new volume's bitmap covers from generation 1 */
	};

	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		CU_ASSERT(nexus_assemble_covers(rows[i].events_cleared, rows[i].generation) ==
			  rows[i].covers);
	}
}

/* Unclean shutdown: who is resynced from whom. */
static void test_assemble_resync(void)
{
	static const struct {
		bool unclean;
		bool covered;
		uint32_t dirty;
		uint16_t healthy;
		uint16_t resync;
		int source;
	} rows[] = {
		{false, false, 0, 0x3, 0, -1}, /* clean shutdown: nothing */
		{false, true, 7, 0x3, 0, -1},
		{true, true, 0, 0x3, 0, -1},     /* bitmap valid, nothing marked: nothing */
		{true, true, 3, 0x3, 0x2, 0},    /* marked regions: partial from the first */
		{true, false, 0, 0x3, 0x2, 0},   /* no valid bitmap: full copy */
		{true, false, 0, 0x16, 0x14, 1}, /* the first healthy slot is the source */
		{true, false, 0, 0x8, 0, 3},     /* one healthy replica: nothing to copy */
		{true, true, 2, 0, 0, -1},       /* none healthy */
	};

	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		int source = 99;
		uint16_t got = nexus_assemble_resync(rows[i].unclean, rows[i].covered,
						     rows[i].dirty, rows[i].healthy, &source);

		if (got != rows[i].resync || source != rows[i].source) {
			fprintf(stderr, "resync row %zu: got 0x%x from %d, want 0x%x from %d\n", i,
				got, source, rows[i].resync, rows[i].source);
			CU_FAIL("resync decision");
		}
	}
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"assemble_table", test_assemble_table},
		{"assemble_missing_list", test_assemble_missing_list},
		{"assemble_behind", test_assemble_behind},
		{"assemble_covers", test_assemble_covers},
		{"assemble_resync", test_assemble_resync},
		{NULL, NULL},
	};

	return ut_cunit_run("assemble", tests);
}
