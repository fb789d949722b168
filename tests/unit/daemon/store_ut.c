/*
 * daemon/store.c on the deterministic harness (the writes themselves run on the real
 * blocking-work pool): saves that arrive during a write share the next one, built
 * when it starts; failures reach every waiter with the message; paths come from
 * daemon/paths.c.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "keel/log.h"
#include "paths.h"
#include "store.h"
#include "ut_cunit.h"
#include "ut_threads.h"

static char g_dir[64];
static int g_snapshots;
static bool g_snapshot_fails;

struct save_res {
	int done;
	int status;
};

static void save_cb(void *arg, int status)
{
	struct save_res *r = arg;

	r->done++;
	r->status = status;
}

/* Poll until \p r completed; the bound only keeps a broken store from hanging the run. */
static void wait_save(struct save_res *r)
{
	for (int i = 0; i < 60000 && r->done == 0; i++) {
		if (ut_poll_threads() == 0) {
			usleep(1000);
		}
	}
	CU_ASSERT_FATAL(r->done == 1);
}

static json_t *counting_snapshot(void *ctx)
{
	CU_ASSERT_PTR_EQUAL(ctx, &g_snapshots);
	g_snapshots++;
	if (g_snapshot_fails) {
		return NULL;
	}
	return json_pack("{s:i}", "n", g_snapshots);
}

static void setup(void)
{
	snprintf(g_dir, sizeof(g_dir), "/tmp/keel-store-ut.XXXXXX");
	CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(g_dir));
	CU_ASSERT_FATAL(ut_threads_init(1) == 0);
	CU_ASSERT_FATAL(keeld_store_init(g_dir) == 0);
	g_snapshots = 0;
	g_snapshot_fails = false;
	keeld_store_set_snapshot(KEELD_DOC_STATE, counting_snapshot, &g_snapshots);
}

static void teardown(void)
{
	char cmd[128];

	keeld_store_set_snapshot(KEELD_DOC_STATE, NULL, NULL);
	ut_threads_fini();
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
	CU_ASSERT_EQUAL(system(cmd), 0);
}

static json_t *load(enum keeld_doc doc)
{
	json_error_t err;

	return json_load_file(keeld_store_path(doc), 0, &err);
}

static void test_paths(void)
{
	char buf[PATH_MAX], longdir[PATH_MAX];

	CU_ASSERT_EQUAL(keel_path_state_file("/s", KEEL_STATE_FILE_STATE, buf, sizeof(buf)), 0);
	CU_ASSERT_STRING_EQUAL(buf, "/s/state.json");
	CU_ASSERT_EQUAL(
		keel_path_state_file("/s", KEEL_STATE_FILE_REBUILD_HISTORY, buf, sizeof(buf)), 0);
	CU_ASSERT_STRING_EQUAL(buf, "/s/rebuild-history.json");
	CU_ASSERT_EQUAL(keel_path_state_file("/s", KEEL_STATE_FILE_NBD_DISKS, buf, sizeof(buf)), 0);
	CU_ASSERT_STRING_EQUAL(buf, "/s/nbd-disks.json");
	CU_ASSERT_EQUAL(keel_path_state_file("/s", KEEL_STATE_FILE_LOCK, buf, 8), -ENAMETOOLONG);
	CU_ASSERT_EQUAL(keel_path_state_file("/s", (enum keel_state_file)99, buf, sizeof(buf)),
			-EINVAL);
	/* The store leaves room for the temporary file's ".tmp". */
	memset(longdir, 'd', sizeof(longdir));
	longdir[0] = '/';
	longdir[PATH_MAX - 20] = '\0';
	CU_ASSERT_EQUAL(keeld_store_init(longdir), -ENAMETOOLONG);
}

/* Three saves during one write: one more write covers the last two, with content
 * taken when it starts; every callback runs once, later. */
static void test_debounce(void)
{
	struct save_res a = {0}, b = {0};
	json_t *doc;

	setup();
	CU_ASSERT_FALSE(keeld_store_busy(KEELD_DOC_STATE));
	CU_ASSERT_EQUAL(keeld_store_save(KEELD_DOC_STATE, save_cb, &a), 0);
	CU_ASSERT_EQUAL(g_snapshots, 1); /* the first write starts at once */
	CU_ASSERT_EQUAL(keeld_store_save(KEELD_DOC_STATE, save_cb, &b), 0);
	CU_ASSERT_EQUAL(keeld_store_save(KEELD_DOC_STATE, NULL, NULL), 0);
	CU_ASSERT_EQUAL(g_snapshots, 1); /* folded: nothing built while a write runs */
	CU_ASSERT_EQUAL(a.done + b.done, 0);
	CU_ASSERT_TRUE(keeld_store_busy(KEELD_DOC_STATE));
	wait_save(&a);
	wait_save(&b);
	CU_ASSERT_EQUAL(a.status, 0);
	CU_ASSERT_EQUAL(b.status, 0);
	CU_ASSERT_EQUAL(g_snapshots, 2);
	CU_ASSERT_FALSE(keeld_store_busy(KEELD_DOC_STATE));
	doc = load(KEELD_DOC_STATE);
	CU_ASSERT_PTR_NOT_NULL_FATAL(doc);
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(doc, "n")), 2);
	json_decref(doc);
	CU_ASSERT_STRING_EQUAL(keeld_store_last_error(KEELD_DOC_STATE), "");
	teardown();
}

/* A write that fails tells its waiters and keeps the reason; the next one clears it. */
static void test_write_error(void)
{
	struct save_res a = {0}, b = {0};

	setup();
	CU_ASSERT_EQUAL(rmdir(g_dir), 0);
	CU_ASSERT_EQUAL(keeld_store_save(KEELD_DOC_STATE, save_cb, &a), 0);
	wait_save(&a);
	CU_ASSERT_EQUAL(a.status, -ENOENT);
	CU_ASSERT_PTR_NOT_NULL(
		strstr(keeld_store_last_error(KEELD_DOC_STATE), keeld_store_path(KEELD_DOC_STATE)));
	CU_ASSERT_EQUAL(mkdir(g_dir, 0700), 0);
	CU_ASSERT_EQUAL(keeld_store_save(KEELD_DOC_STATE, save_cb, &b), 0);
	wait_save(&b);
	CU_ASSERT_EQUAL(b.status, 0);
	CU_ASSERT_STRING_EQUAL(keeld_store_last_error(KEELD_DOC_STATE), "");
	teardown();
}

/* No content: the waiter hears why, never inside the call. */
static void test_no_content(void)
{
	struct save_res a = {0}, b = {0};

	setup();
	g_snapshot_fails = true;
	CU_ASSERT_EQUAL(keeld_store_save(KEELD_DOC_STATE, save_cb, &a), 0);
	CU_ASSERT_EQUAL(a.done, 0);
	wait_save(&a);
	CU_ASSERT_EQUAL(a.status, -ENOMEM);
	CU_ASSERT_PTR_NOT_NULL(strstr(keeld_store_last_error(KEELD_DOC_STATE), "out of memory"));
	CU_ASSERT_EQUAL(access(keeld_store_path(KEELD_DOC_STATE), F_OK), -1);
	/* A document nobody provides. */
	CU_ASSERT_EQUAL(keeld_store_save(KEELD_DOC_REBUILD_HISTORY, save_cb, &b), 0);
	wait_save(&b);
	CU_ASSERT_EQUAL(b.status, -ENODATA);
	teardown();
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	CU_ASSERT(fputs(text, f) >= 0);
	CU_ASSERT_EQUAL(fclose(f), 0);
}

/* Reading back: what a write left, nothing when there is no file, and an error that
 * names the document and its file when it cannot be used. The kernel devices are a
 * document like the others: a write then a read gives the snapshot back. */
static void test_read(void)
{
	const char *path = keeld_store_path(KEELD_DOC_NBD_DISKS);
	struct save_res a = {0};
	char err[PATH_MAX + 256];
	json_t *doc = (json_t *)1;

	setup();
	CU_ASSERT_PTR_NOT_NULL(strstr(path, "/nbd-disks.json"));
	CU_ASSERT_EQUAL(keeld_store_read(KEELD_DOC_NBD_DISKS, &doc, err, sizeof(err)), 0);
	CU_ASSERT_PTR_NULL(doc);

	keeld_store_set_snapshot(KEELD_DOC_NBD_DISKS, counting_snapshot, &g_snapshots);
	CU_ASSERT_EQUAL(keeld_store_save(KEELD_DOC_NBD_DISKS, save_cb, &a), 0);
	wait_save(&a);
	CU_ASSERT_EQUAL(a.status, 0);
	keeld_store_set_snapshot(KEELD_DOC_NBD_DISKS, NULL, NULL);
	CU_ASSERT_EQUAL(keeld_store_read(KEELD_DOC_NBD_DISKS, &doc, err, sizeof(err)), 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(doc);
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(doc, "n")), 1);
	json_decref(doc);

	write_file(path, "{\"n\": 1,");
	CU_ASSERT_EQUAL(keeld_store_read(KEELD_DOC_NBD_DISKS, &doc, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NULL(doc);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "kernel device file "));
	CU_ASSERT_PTR_NOT_NULL(strstr(err, path));
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "is corrupt (not JSON"));

	write_file(path, "{\"n\": 1, \"n\": 2}");
	CU_ASSERT_EQUAL(keeld_store_read(KEELD_DOC_NBD_DISKS, &doc, err, sizeof(err)), -EINVAL);

	CU_ASSERT_EQUAL(unlink(path), 0);
	CU_ASSERT_EQUAL(mkdir(path, 0700), 0);
	CU_ASSERT_EQUAL(keeld_store_read(KEELD_DOC_NBD_DISKS, &doc, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "is not a regular file"));
	CU_ASSERT_EQUAL(rmdir(path), 0);

	/* A state directory that cannot be searched: the reason, not "no file". */
	if (geteuid() != 0) {
		CU_ASSERT_EQUAL(chmod(g_dir, 0), 0);
		CU_ASSERT_EQUAL(keeld_store_read(KEELD_DOC_STATE, &doc, err, sizeof(err)), -EACCES);
		CU_ASSERT_PTR_NOT_NULL(strstr(err, "cannot read state file "));
		CU_ASSERT_EQUAL(chmod(g_dir, 0700), 0);
	}
	teardown();
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"paths", test_paths},
		{"debounce", test_debounce},
		{"write_error", test_write_error},
		{"no_content", test_no_content},
		{"read", test_read},
		{NULL, NULL},
	};

	if (getenv("STORE_UT_DEBUG") == NULL) {
		keel_log_set_level(KEEL_LOG_ERROR + 0);
	}
	return ut_cunit_run("store", tests);
}
