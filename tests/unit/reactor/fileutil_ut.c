/*
 * keel_file_write_atomic / keel_fsync_parent_dir: content, mode, temporary-file
 * cleanup, and that every failure names the file and the step that failed.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "keel/file.h"
#include "ut_cunit.h"

static char g_dir[64];

static void make_dir(void)
{
	snprintf(g_dir, sizeof(g_dir), "/tmp/keel-fileutil-ut.XXXXXX");
	CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(g_dir));
}

static void remove_dir(void)
{
	CU_ASSERT_EQUAL(rmdir(g_dir), 0);
}

static void join(char *buf, size_t len, const char *name)
{
	snprintf(buf, len, "%s/%s", g_dir, name);
}

static size_t read_file(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "r");
	size_t n;

	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	n = fread(buf, 1, len, f);
	fclose(f);
	return n;
}

static void test_write_replace(void)
{
	char path[128], tmp[136], buf[64], err[256] = "";
	struct stat st;

	make_dir();
	join(path, sizeof(path), "state.json");
	join(tmp, sizeof(tmp), "state.json.tmp");

	CU_ASSERT_EQUAL(keel_file_write_atomic(path, "first version", 13, err, sizeof(err)), 0);
	CU_ASSERT_STRING_EQUAL(err, "");
	CU_ASSERT_EQUAL(read_file(path, buf, sizeof(buf)), 13);
	CU_ASSERT_EQUAL(memcmp(buf, "first version", 13), 0);
	CU_ASSERT_EQUAL_FATAL(stat(path, &st), 0);
	CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);
	CU_ASSERT_NOT_EQUAL(access(tmp, F_OK), 0);

	/* A shorter document replaces the longer one entirely. */
	CU_ASSERT_EQUAL(keel_file_write_atomic(path, "v2", 2, NULL, 0), 0);
	CU_ASSERT_EQUAL(read_file(path, buf, sizeof(buf)), 2);
	CU_ASSERT_EQUAL(memcmp(buf, "v2", 2), 0);

	/* A stale temporary file from a crash is truncated, not appended to. */
	CU_ASSERT_EQUAL(keel_file_write_atomic(tmp, "leftover garbage", 16, NULL, 0), 0);
	CU_ASSERT_EQUAL(keel_file_write_atomic(path, NULL, 0, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(read_file(path, buf, sizeof(buf)), 0);
	CU_ASSERT_NOT_EQUAL(access(tmp, F_OK), 0);

	CU_ASSERT_EQUAL(unlink(path), 0);
	remove_dir();
}

static void test_write_errors(void)
{
	char path[128], sub[128], file[160], tmp[136], err[512], *long_path;
	size_t long_len = PATH_MAX;

	make_dir();

	/* Missing directory: the create step fails and names the temporary file. */
	join(path, sizeof(path), "missing/state.json");
	CU_ASSERT_EQUAL(keel_file_write_atomic(path, "x", 1, err, sizeof(err)), -ENOENT);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "cannot create "));
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "missing/state.json.tmp"));
	/* A NULL err is allowed. */
	CU_ASSERT_EQUAL(keel_file_write_atomic(path, "x", 1, NULL, 0), -ENOENT);

	/* Destination is a non-empty directory: rename fails, the temp file is removed. */
	join(sub, sizeof(sub), "dest");
	CU_ASSERT_EQUAL_FATAL(mkdir(sub, 0700), 0);
	snprintf(file, sizeof(file), "%s/inside", sub);
	CU_ASSERT_EQUAL_FATAL(keel_file_write_atomic(file, "y", 1, NULL, 0), 0);
	join(tmp, sizeof(tmp), "dest.tmp");
	CU_ASSERT_NOT_EQUAL(keel_file_write_atomic(sub, "x", 1, err, sizeof(err)), 0);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "cannot rename "));
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "dest.tmp to "));
	CU_ASSERT_NOT_EQUAL(access(tmp, F_OK), 0);
	CU_ASSERT_EQUAL(unlink(file), 0);
	CU_ASSERT_EQUAL(rmdir(sub), 0);

	/* "<path>.tmp" must fit in PATH_MAX. */
	long_path = malloc(long_len);
	CU_ASSERT_PTR_NOT_NULL_FATAL(long_path);
	memset(long_path, 'a', long_len - 1);
	long_path[0] = '/';
	long_path[long_len - 1] = '\0';
	CU_ASSERT_EQUAL(keel_file_write_atomic(long_path, "x", 1, err, sizeof(err)), -ENAMETOOLONG);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "cannot write /aaa"));
	free(long_path);

	remove_dir();
}

static void test_fsync_parent_dir(void)
{
	char path[128];

	make_dir();
	join(path, sizeof(path), "not-created-yet");
	CU_ASSERT_EQUAL(keel_fsync_parent_dir(path), 0);
	CU_ASSERT_EQUAL(keel_fsync_parent_dir("bare-name"), 0); /* the working directory */
	CU_ASSERT_EQUAL(keel_fsync_parent_dir("/file-in-root"), 0);
	join(path, sizeof(path), "missing/file");
	CU_ASSERT_EQUAL(keel_fsync_parent_dir(path), -ENOENT);
	remove_dir();
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"write_replace", test_write_replace},
		{"write_errors", test_write_errors},
		{"fsync_parent_dir", test_fsync_parent_dir},
		{NULL, NULL},
	};

	return ut_cunit_run("fileutil", tests);
}
