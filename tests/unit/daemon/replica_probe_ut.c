/*
 * daemon/replica_probe.c without a daemon: what a target holds (nothing, a keel
 * label, a damaged one, data, signatures libblkid knows), the verdict with and
 * without force, and identities (hard links, symlinks, path spellings) in a set.
 * Loop devices need root and live in tests/e2e/test_replica_safety.sh.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bdev/nexus/nexus_bitmap_format.h"
#include "bdev/nexus/nexus_label.h"
#include "replica_probe.h"
#include "ut_cunit.h"

#define MIB (1024u * 1024u)

static char g_dir[64];

static void make_dir(void)
{
	snprintf(g_dir, sizeof(g_dir), "/tmp/keel-probe-ut.XXXXXX");
	CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(g_dir));
}

static void remove_dir(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
	CU_ASSERT_EQUAL(system(cmd), 0);
}

static void join(char *buf, size_t len, const char *name)
{
	snprintf(buf, len, "%s/%s", g_dir, name);
}

/* A sparse file of \p size bytes. */
static void make_file(const char *path, uint64_t size)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);

	CU_ASSERT_FATAL(fd >= 0);
	CU_ASSERT_EQUAL(ftruncate(fd, (off_t)size), 0);
	close(fd);
}

static void put_bytes(const char *path, uint64_t off, const void *buf, size_t len)
{
	int fd = open(path, O_RDWR);

	CU_ASSERT_FATAL(fd >= 0);
	CU_ASSERT_EQUAL(pwrite(fd, buf, len, (off_t)off), (ssize_t)len);
	close(fd);
}

static int probe(const char *path, struct keeld_replica_probe *p, char *err, size_t len)
{
	err[0] = '\0';
	return keeld_replica_probe(path, p, err, len);
}

static bool have_tool(const char *name)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "command -v %s >/dev/null 2>&1", name);
	return system(cmd) == 0;
}

static void test_not_there_or_not_a_file(void)
{
	struct keeld_replica_probe p;
	char path[128], err[512];

	make_dir();
	join(path, sizeof(path), "missing");
	CU_ASSERT_EQUAL(probe(path, &p, err, sizeof(err)), -ENOENT);
	CU_ASSERT_STRING_EQUAL(err, ""); /* the caller creates it: nothing to say */

	CU_ASSERT_EQUAL(probe(g_dir, &p, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "neither a regular file nor a block device"));

	/* Refused without being opened: opening a FIFO for reading would wait. */
	join(path, sizeof(path), "fifo");
	CU_ASSERT_EQUAL_FATAL(mkfifo(path, 0600), 0);
	CU_ASSERT_EQUAL(probe(path, &p, err, sizeof(err)), -EINVAL);
	CU_ASSERT_EQUAL(probe("/dev/null", &p, err, sizeof(err)), -EINVAL);
	remove_dir();
}

static void test_zeros_are_empty(void)
{
	struct keeld_replica_probe p;
	char path[128], err[512];

	make_dir();
	join(path, sizeof(path), "zero");
	make_file(path, 5 * MIB);
	CU_ASSERT_EQUAL(probe(path, &p, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(p.content, KEELD_REPLICA_EMPTY);
	CU_ASSERT_EQUAL(p.size, 5 * MIB);
	CU_ASSERT_FALSE(p.id.blockdev);
	CU_ASSERT_EQUAL(keeld_replica_probe_check(&p, path, NULL, false, err, sizeof(err)), 0);

	/* Only both ends are read: a byte in the middle is not seen (documented). */
	put_bytes(path, 2 * MIB, "x", 1);
	CU_ASSERT_EQUAL(probe(path, &p, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(p.content, KEELD_REPLICA_EMPTY);

	join(path, sizeof(path), "empty");
	make_file(path, 0);
	CU_ASSERT_EQUAL(probe(path, &p, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(p.content, KEELD_REPLICA_EMPTY);
	CU_ASSERT_EQUAL(p.size, 0);
	remove_dir();
}

static void test_data_is_refused(void)
{
	struct keeld_replica_probe p;
	char path[128], err[512];

	make_dir();
	join(path, sizeof(path), "head");
	make_file(path, 3 * MIB);
	put_bytes(path, 4096, "\x01", 1);
	CU_ASSERT_EQUAL(probe(path, &p, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(p.content, KEELD_REPLICA_DATA);
	CU_ASSERT_STRING_EQUAL(p.what, "data (a non-zero byte at offset 4096)");
	CU_ASSERT_EQUAL(keeld_replica_probe_check(&p, path, NULL, false, err, sizeof(err)),
			-EEXIST);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "holds data (a non-zero byte at offset 4096); "
					   "pass --force to overwrite it"));
	CU_ASSERT_PTR_NOT_NULL(strstr(err, path));
	CU_ASSERT_EQUAL(keeld_replica_probe_check(&p, path, NULL, true, err, sizeof(err)), 0);

	/* Only the last byte of a large file. */
	join(path, sizeof(path), "tail");
	make_file(path, 7 * MIB);
	put_bytes(path, 7 * MIB - 1, "z", 1);
	CU_ASSERT_EQUAL(probe(path, &p, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(p.content, KEELD_REPLICA_DATA);
	CU_ASSERT_PTR_NOT_NULL(strstr(p.what, "at offset 7340031"));

	/* Between 1 and 2 MiB the head and tail spans meet: every byte is read. */
	join(path, sizeof(path), "short");
	make_file(path, MIB + 5000);
	put_bytes(path, MIB + 4999, "z", 1);
	CU_ASSERT_EQUAL(probe(path, &p, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(p.content, KEELD_REPLICA_DATA);
	CU_ASSERT_PTR_NOT_NULL(strstr(p.what, "at offset 1053575"));

	/* Smaller than one span. */
	join(path, sizeof(path), "tiny");
	make_file(path, 100);
	put_bytes(path, 99, "z", 1);
	CU_ASSERT_EQUAL(probe(path, &p, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(p.content, KEELD_REPLICA_DATA);
	remove_dir();
}

static void write_label(const char *path, const char *volume, const uint8_t *vol_uuid,
			uint64_t generation)
{
	struct nexus_label l;
	uint8_t buf[NEXUS_LABEL_SIZE];

	memset(&l, 0, sizeof(l));
	l.version = NEXUS_LABEL_VERSION;
	l.generation = generation;
	memcpy(l.volume_uuid, vol_uuid, 16);
	snprintf(l.volume_name, sizeof(l.volume_name), "%s", volume);
	keel_uuid_generate(l.replica_uuid);
	l.volume_size = 4 * MIB;
	l.data_offset = KEEL_NEXUS_DATA_OFFSET;
	l.block_size = 512;
	l.num_members = 1;
	memcpy(l.members[0].uuid, l.replica_uuid, 16);
	l.members[0].state = NEXUS_MEMBER_IN_SYNC;
	nexus_label_encode(&l, buf);
	put_bytes(path, NEXUS_LABEL_COPY0_OFFSET, buf, sizeof(buf));
	put_bytes(path, NEXUS_LABEL_COPY1_OFFSET, buf, sizeof(buf));
}

static void test_keel_labels(void)
{
	struct keeld_replica_probe p;
	char path[128], err[512], uuid[KEEL_UUID_STR_LEN], other[KEEL_UUID_STR_LEN];
	uint8_t vol_uuid[16], other_uuid[16];

	make_dir();
	keel_uuid_generate(vol_uuid);
	keel_uuid_fmt(vol_uuid, uuid);
	keel_uuid_generate(other_uuid);
	keel_uuid_fmt(other_uuid, other);
	join(path, sizeof(path), "labelled");
	make_file(path, 5 * MIB);
	write_label(path, "vol7", vol_uuid, 9);
	/* Volume data at both ends is the volume's business, not a reason to refuse. */
	put_bytes(path, 5 * MIB - 1, "d", 1);
	CU_ASSERT_EQUAL(probe(path, &p, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(p.content, KEELD_REPLICA_LABELLED);
	CU_ASSERT_STRING_EQUAL(p.label.volume_name, "vol7");
	CU_ASSERT_STRING_EQUAL(p.label.volume_uuid, uuid);
	CU_ASSERT_EQUAL(p.label.generation, 9);

	/* A new volume: every label is another volume's. */
	CU_ASSERT_EQUAL(keeld_replica_probe_check(&p, path, NULL, false, err, sizeof(err)),
			-EEXIST);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "carries the keel label of volume vol7"));
	CU_ASSERT_PTR_NOT_NULL(strstr(err, uuid));
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "pass --force"));
	/* Added to vol7 again: a former member. To another volume: refused. */
	CU_ASSERT_EQUAL(keeld_replica_probe_check(&p, path, uuid, false, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(keeld_replica_probe_check(&p, path, other, false, err, sizeof(err)),
			-EEXIST);
	CU_ASSERT_EQUAL(keeld_replica_probe_check(&p, path, other, true, err, sizeof(err)), 0);

	/* One torn copy: the other still names the volume. */
	put_bytes(path, NEXUS_LABEL_COPY0_OFFSET + 200, "\xff", 1);
	CU_ASSERT_EQUAL(probe(path, &p, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(p.content, KEELD_REPLICA_LABELLED);
	/* Both: damaged, refused even for its own volume. */
	put_bytes(path, NEXUS_LABEL_COPY1_OFFSET + 200, "\xff", 1);
	CU_ASSERT_EQUAL(probe(path, &p, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(p.content, KEELD_REPLICA_DAMAGED);
	CU_ASSERT_PTR_NOT_NULL(strstr(p.what, "checksum"));
	CU_ASSERT_EQUAL(keeld_replica_probe_check(&p, path, uuid, false, err, sizeof(err)),
			-EEXIST);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "has a damaged keel label"));
	CU_ASSERT_EQUAL(keeld_replica_probe_check(&p, path, uuid, true, err, sizeof(err)), 0);
	remove_dir();
}

static void test_wiped_replica(void)
{
	struct keeld_replica_probe p;
	char path[128], err[512];

	make_dir();
	join(path, sizeof(path), "wiped");
	make_file(path, 5 * MIB);
	/* What destroy --wipe leaves: zeroed labels, keel's bitmap still there. */
	put_bytes(path, NEXUS_BITMAP_OFFSET, NEXUS_BM_MAGIC, 8);
	put_bytes(path, NEXUS_BITMAP_OFFSET + 4096, "\x03", 1);
	CU_ASSERT_EQUAL(probe(path, &p, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(p.content, KEELD_REPLICA_EMPTY);
	CU_ASSERT_TRUE(p.label.wiped);
	/* The volume's data at the end still counts. */
	put_bytes(path, 5 * MIB - 10, "d", 1);
	CU_ASSERT_EQUAL(probe(path, &p, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(p.content, KEELD_REPLICA_DATA);
	remove_dir();
}

static void test_signatures(void)
{
	struct keeld_replica_probe p;
	char path[128], cmd[256], err[512];
	static const char swap_magic[] = "SWAPSPACE2";
	uint32_t version = 1, last_page = 1023;

	make_dir();
	/* A swap header, by hand: version 1 and a last page at 1028, magic at 4086. */
	join(path, sizeof(path), "swap");
	make_file(path, 4 * MIB);
	put_bytes(path, 1024, &version, sizeof(version));
	put_bytes(path, 1028, &last_page, sizeof(last_page));
	put_bytes(path, 4096 - 10, swap_magic, 10);
	CU_ASSERT_EQUAL(probe(path, &p, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(p.content, KEELD_REPLICA_DATA);
	CU_ASSERT_STRING_EQUAL(p.what, "a swap signature");

	if (have_tool("mkfs.ext4")) {
		join(path, sizeof(path), "ext4");
		make_file(path, 8 * MIB);
		snprintf(cmd, sizeof(cmd), "mkfs.ext4 -q -F '%s' >/dev/null 2>&1", path);
		CU_ASSERT_EQUAL_FATAL(system(cmd), 0);
		CU_ASSERT_EQUAL(probe(path, &p, err, sizeof(err)), 0);
		CU_ASSERT_EQUAL(p.content, KEELD_REPLICA_DATA);
		CU_ASSERT_STRING_EQUAL(p.what, "an ext4 filesystem");
		CU_ASSERT_EQUAL(keeld_replica_probe_check(&p, path, NULL, false, err, sizeof(err)),
				-EEXIST);
		CU_ASSERT_PTR_NOT_NULL(strstr(err, "holds an ext4 filesystem; pass --force"));
	} else {
		printf("(mkfs.ext4 not installed: ext4 case not run) ");
	}
	if (have_tool("sfdisk")) {
		join(path, sizeof(path), "gpt");
		make_file(path, 8 * MIB);
		snprintf(cmd, sizeof(cmd),
			 "printf 'label: gpt\\n,2M\\n' | sfdisk -q '%s' "
			 ">/dev/null 2>&1",
			 path);
		CU_ASSERT_EQUAL_FATAL(system(cmd), 0);
		CU_ASSERT_EQUAL(probe(path, &p, err, sizeof(err)), 0);
		CU_ASSERT_EQUAL(p.content, KEELD_REPLICA_DATA);
		CU_ASSERT_STRING_EQUAL(p.what, "a gpt partition table");
	} else {
		printf("(sfdisk not installed: partition table case not run) ");
	}
	remove_dir();
}

static void test_identity_set(void)
{
	struct keeld_replica_set *set;
	struct keeld_replica_probe p;
	struct keeld_replica_id id;
	char a[128], a2[160], ln[128], sym[128], b[128], missing[128], err[512];
	int fd;

	make_dir();
	join(a, sizeof(a), "a");
	snprintf(a2, sizeof(a2), "%s//./a", g_dir);
	join(ln, sizeof(ln), "hardlink");
	join(sym, sizeof(sym), "symlink");
	join(b, sizeof(b), "b");
	join(missing, sizeof(missing), "missing");
	make_file(a, MIB);
	make_file(b, MIB);
	CU_ASSERT_EQUAL_FATAL(link(a, ln), 0);
	CU_ASSERT_EQUAL_FATAL(symlink(a, sym), 0);

	set = keeld_replica_set_new();
	CU_ASSERT_PTR_NOT_NULL_FATAL(set);
	CU_ASSERT_EQUAL(keeld_replica_set_add(set, a, "v1"), 0);
	CU_ASSERT_EQUAL(keeld_replica_set_add(set, missing, "v2"), 0);
	keeld_replica_set_stat(set);

	CU_ASSERT_EQUAL(probe(a2, &p, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(keeld_replica_set_check(set, a2, &p.id, err, sizeof(err)), -EEXIST);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "is the same file as"));
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "of volume v1"));
	CU_ASSERT_EQUAL(probe(ln, &p, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(keeld_replica_set_check(set, ln, &p.id, err, sizeof(err)), -EEXIST);
	CU_ASSERT_EQUAL(probe(sym, &p, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(keeld_replica_set_check(set, sym, &p.id, err, sizeof(err)), -EEXIST);

	/* Another file is free; once it is a target, a second name of it is not. */
	CU_ASSERT_EQUAL(probe(b, &p, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(keeld_replica_set_check(set, b, &p.id, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(keeld_replica_set_add_target(set, b, &p.id), 0);
	fd = open(b, O_RDONLY);
	CU_ASSERT_FATAL(fd >= 0);
	CU_ASSERT_EQUAL(keeld_replica_id_of_fd(fd, &id), 0);
	close(fd);
	CU_ASSERT_TRUE(keeld_replica_id_same(&id, &p.id));
	CU_ASSERT_EQUAL(keeld_replica_set_check(set, "/x/b", &id, err, sizeof(err)), -EEXIST);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "replica /x/b is the same file as"));
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "given before it"));

	/* The missing file of v2 appears later: the set knew no identity for it. */
	make_file(missing, MIB);
	CU_ASSERT_EQUAL(probe(missing, &p, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(keeld_replica_set_check(set, missing, &p.id, err, sizeof(err)), 0);
	keeld_replica_set_free(set);
	keeld_replica_set_free(NULL);
	remove_dir();
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"not_there_or_not_a_file", test_not_there_or_not_a_file},
		{"zeros_are_empty", test_zeros_are_empty},
		{"data_is_refused", test_data_is_refused},
		{"keel_labels", test_keel_labels},
		{"wiped_replica", test_wiped_replica},
		{"signatures", test_signatures},
		{"identity_set", test_identity_set},
		{NULL, NULL},
	};

	return ut_cunit_run("replica_probe", tests);
}
