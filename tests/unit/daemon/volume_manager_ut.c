/*
 * The volume manager's state machines (daemon/volume_manager.h) on the deterministic
 * harness, without keeld, sockets or files: a replica backend of this test opens a
 * locator "/ut/NAME" as an error bdev over malloc bdev NAME, can hold or fail an
 * open, and keeps a model of the targets its prepare step "created", so every undo is
 * seen. The nexus and the store are the real ones (the state document is written to a
 * temporary directory on the real blocking pool).
 *
 * What is checked: a create that fails half-way leaves nothing behind (registry,
 * bdevs, claims, created targets, state file); restore with a missing, a stale and a
 * foreign replica; a second change to a busy volume (or one being created) is refused
 * with -EBUSY and a message; refusals and answers never run inside the call; shutdown
 * waits for an operation in flight and refuses new ones; a failed save is reported.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "keel/bdev.h"
#include "keel/bdev_module.h"
#include "keel/log.h"
#include "keel/nexus.h"
#include "keel/reactor.h"
#include "replica_backend.h"
#include "state.h"
#include "store.h"
#include "ut_cunit.h"
#include "ut_threads.h"
#include "volume_json.h"
#include "volume_manager.h"

#define MB (1024ull * 1024ull)
#define BS 512u
#define BASE_BLOCKS ((8 * MB) / BS)
#define VOL_SIZE (4 * MB)
#define PREFIX "/ut/"

static char g_dir[64];

/* ------------------------------------------------------------------------------ */
/* Waiting on the harness                                                          */
/* ------------------------------------------------------------------------------ */

/* Poll (and move the mock clock) until \p flag is set. Blocking-pool jobs run on real
 * threads, so an idle round sleeps a little; the bound only keeps a broken manager
 * from hanging the run. */
static void wait_flag(const int *flag)
{
	for (int i = 0; i < 1000000 && *flag == 0; i++) {
		ut_time_advance_us(1000);
		if (ut_poll_threads() == 0) {
			usleep(100);
		}
	}
	CU_ASSERT_FATAL(*flag != 0);
}

/* Let everything that can run now run (nothing is waited for). */
static void settle(void)
{
	for (int i = 0; i < 200; i++) {
		ut_time_advance_us(1000);
		if (ut_poll_threads() == 0) {
			usleep(200);
		}
	}
}

static void flag_cb(void *arg)
{
	(*(int *)arg)++;
}

static void flag_status_cb(void *arg, int status)
{
	CU_ASSERT_EQUAL(status, 0);
	(*(int *)arg)++;
}

static void nexus_done_cb(void *arg, int status, const char *errmsg, struct keel_nexus *nexus)
{
	(void)errmsg;
	(void)nexus;
	CU_ASSERT_EQUAL(status, 0);
	(*(int *)arg)++;
}

/* ------------------------------------------------------------------------------ */
/* A replica backend over malloc and error bdevs                                   */
/* ------------------------------------------------------------------------------ */

/* Targets that prepare "created" (locators "/ut/new*") and unprepare has not removed.
 * prepare and unprepare run on the blocking pool: a lock. */
static pthread_mutex_t g_fs_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_fs_alive;
static uint64_t g_prep_need; /* bytes the last prepare was asked for */
static char g_prep_fail[64]; /* prepare refuses this locator (-EEXIST) */
static char g_open_fail[64]; /* open of this base fails with g_open_fail_status */
static int g_open_fail_status;
static bool g_hold_opens; /* opens wait for release_opens() */

struct ut_open {
	char name[KEEL_BDEV_NAME_MAX + 1];
	char base[64];
	int status;
	keel_bdev_create_cb cb_fn;
	void *cb_arg;
};

static struct ut_open *g_held[16];
static int g_nheld;

static void ut_unprepare(struct keeld_replica_prep *prep)
{
	pthread_mutex_lock(&g_fs_lock);
	for (size_t i = 0; i < prep->n; i++) {
		if (prep->created[i]) {
			g_fs_alive--;
			prep->created[i] = false;
		}
	}
	pthread_mutex_unlock(&g_fs_lock);
}

static int ut_prepare(struct keeld_replica_prep *prep)
{
	/* No CUnit assert here: this runs on a pool thread. */
	pthread_mutex_lock(&g_fs_lock);
	g_prep_need = prep->need;
	pthread_mutex_unlock(&g_fs_lock);
	for (size_t i = 0; i < prep->n; i++) {
		if (strcmp(prep->locators[i], g_prep_fail) == 0) {
			snprintf(prep->err, sizeof(prep->err), "ut: %s holds data",
				 prep->locators[i]);
			ut_unprepare(prep);
			return -EEXIST;
		}
		if (strncmp(prep->locators[i], PREFIX "new", strlen(PREFIX "new")) == 0 &&
		    !prep->created[i]) {
			pthread_mutex_lock(&g_fs_lock);
			g_fs_alive++;
			pthread_mutex_unlock(&g_fs_lock);
			prep->created[i] = true;
		}
	}
	return 0;
}

static int fs_alive(void)
{
	int n;

	pthread_mutex_lock(&g_fs_lock);
	n = g_fs_alive;
	pthread_mutex_unlock(&g_fs_lock);
	return n;
}

static void ut_open_finish(void *arg)
{
	struct ut_open *o = arg;
	struct keel_bdev *bdev = NULL;

	if (o->status == 0) {
		o->status = keel_bdev_error_create(o->name, o->base, &bdev);
	}
	o->cb_fn(o->cb_arg, o->status, bdev);
	free(o);
}

static int ut_open(const char *bdev_name, const char *locator, keel_bdev_create_cb cb_fn,
		   void *cb_arg)
{
	struct ut_open *o;

	if (strncmp(locator, PREFIX, strlen(PREFIX)) != 0) {
		return -EINVAL;
	}
	o = calloc(1, sizeof(*o));
	CU_ASSERT_FATAL(o != NULL);
	snprintf(o->name, sizeof(o->name), "%s", bdev_name);
	snprintf(o->base, sizeof(o->base), "%s", locator + strlen(PREFIX));
	o->cb_fn = cb_fn;
	o->cb_arg = cb_arg;
	if (strcmp(o->base, g_open_fail) == 0) {
		o->status = g_open_fail_status;
	} else if (keel_bdev_get_by_name(o->base) == NULL) {
		o->status = -ENOENT;
	}
	if (g_hold_opens) {
		CU_ASSERT_FATAL(g_nheld < 16);
		g_held[g_nheld++] = o;
		return 0;
	}
	return keel_thread_send_msg(keel_thread_get_current(), ut_open_finish, o);
}

static void release_opens(void)
{
	g_hold_opens = false;
	for (int i = 0; i < g_nheld; i++) {
		CU_ASSERT(keel_thread_send_msg(keel_thread_get_current(), ut_open_finish,
					       g_held[i]) == 0);
	}
	g_nheld = 0;
}

static int ut_close(const char *bdev_name, keel_bdev_done_cb cb_fn, void *cb_arg)
{
	return keel_bdev_error_delete(bdev_name, cb_fn, cb_arg);
}

static const char *ut_open_error_text(int status)
{
	return status == -ENOENT ? "file does not exist" : strerror(-status);
}

static const struct keeld_replica_backend g_ut_backend = {
	.name = "ut",
	.prepare = ut_prepare,
	.unprepare = ut_unprepare,
	.open = ut_open,
	.close = ut_close,
	.open_error_text = ut_open_error_text,
};

/* The "uring" backend of the test: the same bdevs, its opens counted apart, and
 * io_uring refused while g_uring_refused is set. */
static int g_uring_opens, g_uring_closes;
static bool g_uring_refused;

static int ut_uring_open(const char *bdev_name, const char *locator, keel_bdev_create_cb cb_fn,
			 void *cb_arg)
{
	g_uring_opens++;
	return ut_open(bdev_name, locator, cb_fn, cb_arg);
}

static int ut_uring_close(const char *bdev_name, keel_bdev_done_cb cb_fn, void *cb_arg)
{
	g_uring_closes++;
	return ut_close(bdev_name, cb_fn, cb_arg);
}

static bool ut_uring_available(char *why, size_t len)
{
	if (g_uring_refused) {
		snprintf(why, len, "ut: io_uring_setup: EPERM");
	}
	return !g_uring_refused;
}

static const struct keeld_replica_backend g_ut_uring_backend = {
	.name = "ut-uring",
	.prepare = ut_prepare,
	.unprepare = ut_unprepare,
	.open = ut_uring_open,
	.close = ut_uring_close,
	.open_error_text = ut_open_error_text,
	.available = ut_uring_available,
};

/* ------------------------------------------------------------------------------ */
/* Operations                                                                      */
/* ------------------------------------------------------------------------------ */

struct op_res {
	int done;
	int status;
	char msg[1024];
	json_t *vol; /* the volume as the callback saw it */
};

static void op_cb(void *arg, int status, const char *errmsg, struct keeld_volume *vol)
{
	struct op_res *r = arg;

	r->done++;
	r->status = status;
	snprintf(r->msg, sizeof(r->msg), "%s", errmsg != NULL ? errmsg : "");
	if (status == 0) {
		CU_ASSERT_PTR_NULL(errmsg);
	} else {
		CU_ASSERT(errmsg != NULL && errmsg[0] != '\0');
	}
	json_decref(r->vol);
	/* The volume is valid inside the callback: render it there. */
	r->vol = vol != NULL ? keeld_volume_to_json(vol) : NULL;
}

/* The status of an operation once its callback ran, exactly once. */
static int wait_res(struct op_res *r)
{
	wait_flag(&r->done);
	settle();
	CU_ASSERT_EQUAL(r->done, 1);
	return r->status;
}

/*
 * Finish an operation started with return code \p rc: a negative one is returned
 * as is (the callback must never run); else the callback must not have run inside the
 * call, and the operation's status is returned once it ran.
 */
static int finish(int rc, struct op_res *r)
{
	if (rc != 0) {
		settle();
		CU_ASSERT_EQUAL(r->done, 0);
		return rc;
	}
	CU_ASSERT_EQUAL(r->done, 0);
	return wait_res(r);
}

static void res_reset(struct op_res *r)
{
	json_decref(r->vol);
	memset(r, 0, sizeof(*r));
}

static int create_vol_on(const char *name, const char *const *reps, uint32_t n, bool force,
			 enum keeld_backend backend, struct op_res *r)
{
	struct keeld_volume_create_opts o = {
		.name = name,
		.size = VOL_SIZE,
		.replicas = reps,
		.num_replicas = n,
		.force = force,
		.backend = backend,
	};

	res_reset(r);
	return finish(keeld_volume_create(&o, op_cb, r), r);
}

static int create_vol(const char *name, const char *const *reps, uint32_t n, bool force,
		      struct op_res *r)
{
	return create_vol_on(name, reps, n, force, KEELD_BACKEND_DEFAULT, r);
}

static int destroy_vol(const char *name, bool wipe, struct op_res *r)
{
	res_reset(r);
	return finish(keeld_volume_destroy(name, wipe, op_cb, r), r);
}

/* The state of replica \p path in a rendered volume, and its reason. */
static const char *rep_field(json_t *vol, const char *path, const char *field)
{
	json_t *rep;
	size_t i;

	json_array_foreach(json_object_get(vol, "replicas"), i, rep) {
		if (json_is_string(json_object_get(rep, "path")) &&
		    strcmp(json_string_value(json_object_get(rep, "path")), path) == 0) {
			return json_string_value(json_object_get(rep, field));
		}
	}
	return NULL;
}

static json_t *vol_json(const char *name)
{
	struct keeld_volume *v = keeld_volume_find(name, NULL, 0);

	CU_ASSERT_FATAL(v != NULL);
	return keeld_volume_to_json(v);
}

/* How many replicas volume \p name lists. */
static size_t vol_replicas(const char *name)
{
	json_t *v = vol_json(name);
	size_t n = json_array_size(json_object_get(v, "replicas"));

	json_decref(v);
	return n;
}

static const char *vol_state(json_t *vol)
{
	return json_string_value(json_object_get(vol, "state"));
}

/* The volumes the state file lists, by name, as one string "a,b,". */
static void state_file_volumes(char *out, size_t len)
{
	json_error_t err;
	json_t *doc = json_load_file(keeld_store_path(KEELD_DOC_STATE), 0, &err);
	json_t *v;
	size_t i;

	out[0] = '\0';
	CU_ASSERT_FATAL(doc != NULL);
	json_array_foreach(json_object_get(doc, "volumes"), i, v) {
		size_t used = strlen(out);

		snprintf(out + used, len - used, "%s,",
			 json_string_value(json_object_get(v, "name")));
	}
	json_decref(doc);
}

/* Nothing of volume \p name is left: registry, nexus, replica bdevs, claims. */
static void assert_no_trace(const char *name)
{
	char bdev[80];

	CU_ASSERT_PTR_NULL(keeld_volume_find(name, NULL, 0));
	CU_ASSERT_PTR_NULL(keel_nexus_get_by_name(name));
	CU_ASSERT_PTR_NULL(keel_bdev_get_by_name(name));
	for (int i = 0; i < 4; i++) {
		snprintf(bdev, sizeof(bdev), "%s.r%d", name, i);
		CU_ASSERT_PTR_NULL(keel_bdev_get_by_name(bdev));
	}
	for (struct keel_bdev *b = keel_bdev_first(); b != NULL; b = keel_bdev_next(b)) {
		if (strcmp(keel_bdev_get_module_name(b), "malloc") == 0) {
			CU_ASSERT_PTR_NULL(keel_bdev_get_claim_owner(b));
		}
	}
}

/* ------------------------------------------------------------------------------ */
/* Setup, restart                                                                  */
/* ------------------------------------------------------------------------------ */

static bool g_shut;

static void mk_malloc(const char *name)
{
	struct keel_bdev *b;

	CU_ASSERT_FATAL(keel_bdev_malloc_create(name, NULL, BASE_BLOCKS, BS, &b) == 0);
}

static void restore_now(void)
{
	int done = 0;

	keeld_volumes_restore(flag_cb, &done);
	CU_ASSERT_EQUAL(done, 0);
	wait_flag(&done);
	settle();
}

static void setup(void)
{
	static const char *const bases[] = {"m0", "m1", "m2", "m3", "new0", "new1"};
	int done = 0;

	snprintf(g_dir, sizeof(g_dir), "/tmp/keel-vm-ut.XXXXXX");
	CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(g_dir));
	CU_ASSERT_FATAL(ut_threads_init(2) == 0);
	ut_set_thread(0);
	CU_ASSERT_FATAL(keel_bdev_subsystem_init(flag_status_cb, &done) == 0);
	wait_flag(&done);
	CU_ASSERT_FATAL(keeld_store_init(g_dir) == 0);
	keeld_volumes_set_backend(KEELD_BACKEND_AIO, &g_ut_backend);
	keeld_volumes_set_backend(KEELD_BACKEND_URING, &g_ut_uring_backend);
	g_uring_refused = false;
	g_uring_opens = g_uring_closes = 0;
	g_prep_fail[0] = g_open_fail[0] = '\0';
	g_hold_opens = false;
	g_fs_alive = 0;
	g_shut = false;
	for (size_t i = 0; i < sizeof(bases) / sizeof(bases[0]); i++) {
		mk_malloc(bases[i]);
	}
	CU_ASSERT_FATAL(keeld_volumes_load(NULL) == 0);
	restore_now();
}

static void shutdown_now(void)
{
	int done = 0;

	keeld_volumes_shutdown(flag_cb, &done);
	CU_ASSERT_EQUAL(done, 0);
	wait_flag(&done);
	g_shut = true;
}

static void teardown(void)
{
	char cmd[128];
	int done = 0;

	ut_set_thread(0);
	if (!g_shut) {
		shutdown_now();
	}
	keel_bdev_subsystem_fini(flag_status_cb, &done);
	wait_flag(&done);
	keeld_volumes_fini();
	keeld_volumes_set_backend(KEELD_BACKEND_AIO, NULL);
	keeld_volumes_set_backend(KEELD_BACKEND_URING, NULL);
	CU_ASSERT_EQUAL(keeld_volumes_set_default_backend(KEELD_BACKEND_AIO), KEELD_BACKEND_AIO);
	ut_threads_fini();
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
	CU_ASSERT_EQUAL(system(cmd), 0);
}

/* While "keeld" is down, the target of replica \p base disappears. */
static const char *g_vanish;

/*
 * keeld stopped and started again: shutdown, the nexuses stopped (clean labels), the
 * replica bdevs closed, the registry forgotten; the malloc bdev g_vanish (if set)
 * deleted; then the state file read back (and checked, as keeld does), changed by
 * \p edit when given, loaded and restored.
 */
static void restart(void (*edit)(json_t *doc))
{
	char names[16][KEEL_BDEV_NAME_MAX + 1], err[512];
	json_t *doc = NULL;
	int n = 0, done;
	struct keeld_volume *v;

	shutdown_now();
	for (v = keeld_volume_first(); v != NULL; v = keeld_volume_next(v)) {
		if (keel_nexus_get_by_name(keeld_volume_get_name(v)) != NULL) {
			done = 0;
			CU_ASSERT_FATAL(keel_nexus_destroy(keeld_volume_get_name(v), false,
							   nexus_done_cb, &done) == 0);
			wait_flag(&done);
		}
	}
	for (struct keel_bdev *b = keel_bdev_first(); b != NULL; b = keel_bdev_next(b)) {
		if (strcmp(keel_bdev_get_module_name(b), "error") == 0 && n < 16) {
			snprintf(names[n++], sizeof(names[0]), "%s", keel_bdev_get_name(b));
		}
	}
	for (int i = 0; i < n; i++) {
		done = 0;
		CU_ASSERT_FATAL(keel_bdev_error_delete(names[i], flag_status_cb, &done) == 0);
		wait_flag(&done);
	}
	if (g_vanish != NULL) {
		done = 0;
		CU_ASSERT_FATAL(keel_bdev_malloc_delete(g_vanish, flag_status_cb, &done) == 0);
		wait_flag(&done);
		g_vanish = NULL;
	}
	keeld_volumes_fini();
	g_shut = false;
	CU_ASSERT_FATAL(keeld_state_read(&doc, err, sizeof(err)) == 0);
	CU_ASSERT_FATAL(doc != NULL);
	if (edit != NULL) {
		edit(doc);
		CU_ASSERT_FATAL(keeld_state_validate(doc, err, sizeof(err)));
	}
	CU_ASSERT_FATAL(keeld_volumes_load(doc) == 0);
	json_decref(doc);
	restore_now();
}

/* ------------------------------------------------------------------------------ */
/* Tests                                                                           */
/* ------------------------------------------------------------------------------ */

static void test_create_destroy(void)
{
	const char *reps[] = {PREFIX "m0", PREFIX "new0"};
	struct op_res r = {0};
	char vols[256];

	setup();
	CU_ASSERT_EQUAL_FATAL(create_vol("v", reps, 2, false, &r), 0);
	CU_ASSERT_STRING_EQUAL(vol_state(r.vol), "online");
	CU_ASSERT_EQUAL(json_array_size(json_object_get(r.vol, "replicas")), 2);
	CU_ASSERT_STRING_EQUAL(rep_field(r.vol, PREFIX "new0", "bdev"), "v.r1");
	CU_ASSERT_PTR_NOT_NULL(keel_nexus_get_by_name("v"));
	CU_ASSERT_EQUAL(fs_alive(), 1);
	/* answered once saved */
	state_file_volumes(vols, sizeof(vols));
	CU_ASSERT_STRING_EQUAL(vols, "v,");

	CU_ASSERT_EQUAL(destroy_vol("v", false, &r), 0);
	CU_ASSERT_PTR_NULL(r.vol);
	assert_no_trace("v");
	state_file_volumes(vols, sizeof(vols));
	CU_ASSERT_STRING_EQUAL(vols, "");
	/* destroy keeps the targets */
	CU_ASSERT_EQUAL(fs_alive(), 1);
	res_reset(&r);
	teardown();
}

/* The second replica cannot be opened: the first one's bdev is closed and the target
 * prepare created is removed; the name is free again. */
static void test_create_fails_halfway_open(void)
{
	const char *reps[] = {PREFIX "new0", PREFIX "m1"};
	struct op_res r = {0};
	char vols[256];

	setup();
	snprintf(g_open_fail, sizeof(g_open_fail), "m1");
	g_open_fail_status = -EACCES;
	CU_ASSERT_EQUAL(create_vol("v", reps, 2, false, &r), -EACCES);
	CU_ASSERT_PTR_NOT_NULL(strstr(r.msg, "cannot open replica " PREFIX "m1"));
	CU_ASSERT_PTR_NULL(r.vol);
	assert_no_trace("v");
	CU_ASSERT_EQUAL(fs_alive(), 0);
	state_file_volumes(vols, sizeof(vols));
	CU_ASSERT_STRING_EQUAL(vols, "");

	g_open_fail[0] = '\0';
	CU_ASSERT_EQUAL(create_vol("v", reps, 2, false, &r), 0);
	res_reset(&r);
	teardown();
}

/* prepare refuses a target: nothing is opened, nothing is left. */
static void test_create_fails_prepare(void)
{
	const char *reps[] = {PREFIX "new0", PREFIX "m1"};
	struct op_res r = {0};

	setup();
	snprintf(g_prep_fail, sizeof(g_prep_fail), PREFIX "m1");
	CU_ASSERT_EQUAL(create_vol("v", reps, 2, false, &r), -EEXIST);
	CU_ASSERT_STRING_EQUAL(r.msg, "ut: " PREFIX "m1 holds data");
	assert_no_trace("v");
	CU_ASSERT_EQUAL(fs_alive(), 0);
	res_reset(&r);
	teardown();
}

/* The nexus refuses a replica that carries another volume's label: the bdevs opened
 * are closed, the created target removed, the foreign label left as it was. */
static void test_create_fails_nexus(void)
{
	const char *other[] = {PREFIX "m2"};
	const char *reps[] = {PREFIX "new0", PREFIX "m2"};
	const char *raw[] = {"m2"};
	struct keel_nexus_open_opts oo = {.name = "other", .replicas = raw, .num_replicas = 1};
	struct op_res r = {0};
	int done = 0;

	setup();
	CU_ASSERT_EQUAL_FATAL(create_vol("other", other, 1, false, &r), 0);
	CU_ASSERT_EQUAL_FATAL(destroy_vol("other", false, &r), 0);

	CU_ASSERT_EQUAL(create_vol("v", reps, 2, false, &r), -EEXIST);
	CU_ASSERT_PTR_NOT_NULL(strstr(r.msg, "other"));
	CU_ASSERT_PTR_NOT_NULL(strstr(r.msg, "force"));
	assert_no_trace("v");
	CU_ASSERT_EQUAL(fs_alive(), 0);
	/* the label of "other" is intact: the volume assembles from it */
	CU_ASSERT_FATAL(keel_nexus_open(&oo, nexus_done_cb, &done) == 0);
	wait_flag(&done);
	CU_ASSERT_PTR_NOT_NULL(keel_nexus_get_by_name("other"));
	done = 0;
	CU_ASSERT_FATAL(keel_nexus_destroy("other", false, nexus_done_cb, &done) == 0);
	wait_flag(&done);
	/* with force it is overwritten */
	CU_ASSERT_EQUAL(create_vol("v", reps, 2, true, &r), 0);
	res_reset(&r);
	teardown();
}

/* One change per volume: the second is refused with -EBUSY, later, and the first
 * completes. A volume being created takes no change either. */
static void test_concurrent_ops(void)
{
	const char *reps[] = {PREFIX "m0", PREFIX "m1"};
	const char *reps_w[] = {PREFIX "m2", PREFIX "m3"};
	struct keeld_volume_create_opts ow = {
		.name = "w",
		.size = VOL_SIZE,
		.replicas = reps_w,
		.num_replicas = 2,
	};
	struct op_res a = {0}, b = {0}, c = {0};
	json_t *v;

	setup();
	CU_ASSERT_EQUAL_FATAL(create_vol("v", reps, 2, false, &a), 0);
	res_reset(&a);
	CU_ASSERT_EQUAL(keeld_volume_fault_replica("v", PREFIX "m1", op_cb, &a), 0);
	CU_ASSERT_EQUAL(keeld_volume_remove_replica("v", PREFIX "m0", op_cb, &b), 0);
	CU_ASSERT_EQUAL(keeld_volume_destroy("v", false, op_cb, &c), 0);
	CU_ASSERT_EQUAL(a.done + b.done + c.done, 0);
	CU_ASSERT_EQUAL(wait_res(&b), -EBUSY);
	CU_ASSERT_STRING_EQUAL(b.msg, "volume 'v' is busy with another change: try again when "
				      "it finished");
	CU_ASSERT_EQUAL(wait_res(&c), -EBUSY);
	CU_ASSERT_EQUAL(wait_res(&a), 0);
	CU_ASSERT_STRING_EQUAL(rep_field(a.vol, PREFIX "m1", "state"), "faulted");
	CU_ASSERT_STRING_EQUAL(rep_field(a.vol, PREFIX "m0", "state"), "healthy");

	/* a create in progress (its second open held) */
	g_hold_opens = true;
	res_reset(&a);
	res_reset(&b);
	res_reset(&c);
	CU_ASSERT_EQUAL(keeld_volume_create(&ow, op_cb, &a), 0);
	wait_flag(&g_nheld); /* past the targets' blocking job, at the first open */
	CU_ASSERT_EQUAL(a.done, 0);
	CU_ASSERT_EQUAL(g_nheld, 1);
	v = vol_json("w");
	CU_ASSERT_STRING_EQUAL(vol_state(v), "creating");
	json_decref(v);
	CU_ASSERT_EQUAL(finish(keeld_volume_destroy("w", false, op_cb, &b), &b), -EBUSY);
	CU_ASSERT_STRING_EQUAL(b.msg, "volume 'w' is being created: try again when that "
				      "finished");
	CU_ASSERT_EQUAL(finish(keeld_volume_add_replica("w", PREFIX "new0", NULL,
							KEELD_BACKEND_DEFAULT, false, op_cb, &c),
			       &c),
			-EBUSY);
	/* its name and paths are taken meanwhile */
	res_reset(&b);
	CU_ASSERT_EQUAL(finish(keeld_volume_create(&ow, op_cb, &b), &b), -EEXIST);
	CU_ASSERT_PTR_NOT_NULL(strstr(b.msg, "already a replica of volume 'w'"));
	while (a.done == 0) {
		release_opens();
		g_hold_opens = true;
		settle();
	}
	g_hold_opens = false;
	CU_ASSERT_EQUAL(a.status, 0);
	CU_ASSERT_EQUAL(destroy_vol("w", false, &b), 0);
	res_reset(&a);
	res_reset(&b);
	res_reset(&c);
	teardown();
}

/* What the manager refuses, and how it says so. */
static void test_refusals(void)
{
	const char *reps[] = {PREFIX "m0", PREFIX "m1"};
	const char *rel[] = {"m0"};
	const char *twice[] = {PREFIX "m2", PREFIX "m2"};
	const char *bdevs[] = {"nosuch"};
	struct keeld_volume_create_opts o = {
		.name = "x",
		.size = VOL_SIZE,
		.replicas = rel,
		.num_replicas = 1,
	};
	struct op_res r = {0};
	char why[512];

	setup();
	/* malformed: -EINVAL at once, the callback never runs; the checker says why */
	CU_ASSERT_EQUAL(finish(keeld_volume_create(&o, op_cb, &r), &r), -EINVAL);
	CU_ASSERT_FALSE(keeld_volume_create_opts_valid(&o, why, sizeof(why)));
	CU_ASSERT_STRING_EQUAL(why, "replicas[0]: 'm0' is neither an absolute path (keeld does not "
				    "share your working directory) nor an NBD URI");
	{
		/* a replica on another host is given as an NBD URI instead of a path */
		const char *uri[] = {"nbd+unix:///x?socket=/tmp/s"};
		const char *const *saved = o.replicas;

		o.replicas = uri;
		CU_ASSERT_TRUE(keeld_volume_create_opts_valid(&o, why, sizeof(why)));
		uri[0] = "nbdx://host/x";
		CU_ASSERT_FALSE(keeld_volume_create_opts_valid(&o, why, sizeof(why)));
		o.replicas = saved;
	}
	o.replicas = twice;
	o.num_replicas = 2;
	CU_ASSERT_FALSE(keeld_volume_create_opts_valid(&o, why, sizeof(why)));
	CU_ASSERT_STRING_EQUAL(why, "replicas: '" PREFIX "m2' is given twice");
	o.num_replicas = 1;
	o.size = 1000;
	CU_ASSERT_FALSE(keeld_volume_create_opts_valid(&o, why, sizeof(why)));
	CU_ASSERT_PTR_NOT_NULL(strstr(why, "size: 1000 is not a usable volume size"));
	o.size = VOL_SIZE;
	o.name = "a/b";
	CU_ASSERT_FALSE(keeld_volume_create_opts_valid(&o, why, sizeof(why)));
	CU_ASSERT_PTR_NOT_NULL(strstr(why, "name: not a valid volume name"));
	o.name = "x";
	o.replica_bdevs = bdevs;
	CU_ASSERT_FALSE(keeld_volume_create_opts_valid(&o, why, sizeof(why)));
	CU_ASSERT_STRING_EQUAL(why, "give replicas (the replica file paths), not also "
				    "replica_bdevs");
	CU_ASSERT_FALSE(keeld_volume_add_replica_valid("x", NULL, NULL, KEELD_BACKEND_DEFAULT, why,
						       sizeof(why)));
	CU_ASSERT_STRING_EQUAL(why, "give replica (the path of the replica file)");

	/* refusals that need the registry come later, through the callback */
	CU_ASSERT_EQUAL_FATAL(create_vol("v", reps, 2, false, &r), 0);
	CU_ASSERT_EQUAL(create_vol("v", (const char *[]){PREFIX "m2"}, 1, false, &r), -EEXIST);
	CU_ASSERT_STRING_EQUAL(r.msg, "volume 'v' already exists: choose another name or "
				      "destroy it first");
	CU_ASSERT_EQUAL(create_vol("y", (const char *[]){PREFIX "m1"}, 1, false, &r), -EEXIST);
	CU_ASSERT_STRING_EQUAL(r.msg, "file '" PREFIX "m1' is already a replica of volume 'v'");
	CU_ASSERT_EQUAL(create_vol("m2", (const char *[]){PREFIX "m3"}, 1, false, &r), -EEXIST);
	CU_ASSERT_PTR_NOT_NULL(strstr(r.msg, "a bdev named 'm2' exists"));
	res_reset(&r);
	CU_ASSERT_EQUAL(finish(keeld_volume_destroy("nope", false, op_cb, &r), &r), -ENOENT);
	CU_ASSERT_STRING_EQUAL(r.msg, "volume 'nope' not found: volume_list shows the volumes");
	res_reset(&r);
	CU_ASSERT_EQUAL(finish(keeld_volume_fault_replica("v", PREFIX "zz", op_cb, &r), &r),
			-ENOENT);
	CU_ASSERT_PTR_NOT_NULL(strstr(r.msg, "has no replica '" PREFIX "zz'"));
	res_reset(&r);
	CU_ASSERT_EQUAL(finish(keeld_volume_add_replica("v", PREFIX "m0", NULL,
							KEELD_BACKEND_DEFAULT, false, op_cb, &r),
			       &r),
			-EEXIST);
	CU_ASSERT_STRING_EQUAL(r.msg, "file '" PREFIX "m0' is already a healthy replica of "
				      "volume 'v'");
	/* a volume made of files takes files */
	CU_ASSERT_FALSE(keeld_volume_add_replica_valid("v", NULL, "m3", KEELD_BACKEND_DEFAULT, why,
						       sizeof(why)));
	CU_ASSERT_STRING_EQUAL(why, "volume 'v' was made from files: add a replica as replica "
				    "(a path)");
	CU_ASSERT_EQUAL(
		keeld_volume_add_replica("v", NULL, "m3", KEELD_BACKEND_DEFAULT, false, op_cb, &r),
		-EINVAL);
	/* the test hook: bdevs that do not exist */
	o.replicas = NULL;
	o.num_replicas = 1;
	res_reset(&r);
	CU_ASSERT_EQUAL(finish(keeld_volume_create(&o, op_cb, &r), &r), -ENODEV);
	CU_ASSERT_PTR_NOT_NULL(strstr(r.msg, "bdev 'nosuch' not found"));
	/* the last healthy replica stays */
	res_reset(&r);
	CU_ASSERT_EQUAL(finish(keeld_volume_fault_replica("v", PREFIX "m1", op_cb, &r), &r), 0);
	res_reset(&r);
	CU_ASSERT_EQUAL(finish(keeld_volume_remove_replica("v", PREFIX "m0", op_cb, &r), &r),
			-EBUSY);
	CU_ASSERT_PTR_NOT_NULL(strstr(r.msg, "destroy the volume instead"));
	res_reset(&r);
	CU_ASSERT_EQUAL(finish(keeld_volume_fault_replica("v", PREFIX "m1", op_cb, &r), &r),
			-EALREADY);
	CU_ASSERT_PTR_NOT_NULL(strstr(r.msg, "nothing to fault"));
	res_reset(&r);
	teardown();
}

/* Add, remove, and re-add in place a faulted replica. */
static void test_add_remove_readd(void)
{
	const char *reps[] = {PREFIX "m0", PREFIX "m1"};
	struct op_res r = {0};

	setup();
	CU_ASSERT_EQUAL_FATAL(create_vol("v", reps, 2, false, &r), 0);
	res_reset(&r);
	CU_ASSERT_EQUAL(finish(keeld_volume_add_replica("v", PREFIX "new0", NULL,
							KEELD_BACKEND_DEFAULT, false, op_cb, &r),
			       &r),
			0);
	CU_ASSERT_EQUAL(json_array_size(json_object_get(r.vol, "replicas")), 3);
	CU_ASSERT_EQUAL(fs_alive(), 1);
	res_reset(&r);
	CU_ASSERT_EQUAL(finish(keeld_volume_remove_replica("v", PREFIX "new0", op_cb, &r), &r), 0);
	CU_ASSERT_EQUAL(json_array_size(json_object_get(r.vol, "replicas")), 2);
	CU_ASSERT_PTR_NULL(keel_bdev_get_by_name("v.r2"));
	/* a failed add leaves no record and removes what it created */
	snprintf(g_open_fail, sizeof(g_open_fail), "new1");
	g_open_fail_status = -EIO;
	res_reset(&r);
	CU_ASSERT_EQUAL(finish(keeld_volume_add_replica("v", PREFIX "new1", NULL,
							KEELD_BACKEND_DEFAULT, false, op_cb, &r),
			       &r),
			-EIO);
	CU_ASSERT_EQUAL(fs_alive(), 1); /* new0 stays: remove keeps the target */
	CU_ASSERT_EQUAL(vol_replicas("v"), 2);
	g_open_fail[0] = '\0';
	/* re-add in place */
	res_reset(&r);
	CU_ASSERT_EQUAL(finish(keeld_volume_fault_replica("v", PREFIX "m1", op_cb, &r), &r), 0);
	res_reset(&r);
	CU_ASSERT_EQUAL(finish(keeld_volume_add_replica("v", PREFIX "m1", NULL,
							KEELD_BACKEND_DEFAULT, false, op_cb, &r),
			       &r),
			0);
	CU_ASSERT_STRING_NOT_EQUAL(rep_field(r.vol, PREFIX "m1", "state"), "faulted");
	CU_ASSERT_EQUAL(json_array_size(json_object_get(r.vol, "replicas")), 2);
	res_reset(&r);
	teardown();
}

/* A replica whose target is gone: the volume comes up degraded on the others. */
static void test_restore_missing(void)
{
	const char *reps[] = {PREFIX "m0", PREFIX "m1"};
	struct op_res r = {0};
	json_t *v;

	setup();
	CU_ASSERT_EQUAL_FATAL(create_vol("v", reps, 2, false, &r), 0);
	CU_ASSERT_EQUAL(g_prep_need, VOL_SIZE + KEEL_NEXUS_DATA_OFFSET);
	restart(NULL);
	v = vol_json("v");
	CU_ASSERT_STRING_EQUAL(vol_state(v), "online");
	json_decref(v);

	g_vanish = "m1";
	restart(NULL);
	v = vol_json("v");
	CU_ASSERT_STRING_EQUAL(vol_state(v), "degraded");
	CU_ASSERT_STRING_EQUAL(rep_field(v, PREFIX "m1", "state"), "offline");
	CU_ASSERT_STRING_EQUAL(rep_field(v, PREFIX "m1", "reason"), "missing");
	CU_ASSERT_STRING_EQUAL(rep_field(v, PREFIX "m0", "state"), "healthy");
	json_decref(v);

	/* every target gone: listed as unassembled with the reason, keeld goes on */
	g_vanish = "m0";
	restart(NULL);
	v = vol_json("v");
	CU_ASSERT_STRING_EQUAL(vol_state(v), "unassembled");
	CU_ASSERT_PTR_NOT_NULL(strstr(json_string_value(json_object_get(v, "state_detail")),
				      "none of its replica files could be opened"));
	json_decref(v);
	CU_ASSERT_PTR_NULL(keel_nexus_get_by_name("v"));
	/* only destroy works on it */
	res_reset(&r);
	CU_ASSERT_EQUAL(finish(keeld_volume_fault_replica("v", PREFIX "m0", op_cb, &r), &r),
			-ENODEV);
	CU_ASSERT_PTR_NOT_NULL(strstr(r.msg, "only volume_destroy works on it"));
	CU_ASSERT_EQUAL(destroy_vol("v", false, &r), 0);
	res_reset(&r);
	teardown();
}

/* A replica that missed writes (faulted before the restart) is stale at assembly and
 * never read from. */
static void test_restore_stale(void)
{
	const char *reps[] = {PREFIX "m0", PREFIX "m1", PREFIX "m2"};
	struct op_res r = {0};
	json_t *v;

	setup();
	CU_ASSERT_EQUAL_FATAL(create_vol("v", reps, 3, false, &r), 0);
	res_reset(&r);
	CU_ASSERT_EQUAL(finish(keeld_volume_fault_replica("v", PREFIX "m2", op_cb, &r), &r), 0);
	restart(NULL);
	v = vol_json("v");
	CU_ASSERT_STRING_EQUAL(vol_state(v), "degraded");
	CU_ASSERT_STRING_EQUAL(rep_field(v, PREFIX "m2", "state"), "faulted");
	CU_ASSERT_STRING_EQUAL(rep_field(v, PREFIX "m2", "reason"), "stale");
	CU_ASSERT_STRING_EQUAL(rep_field(v, PREFIX "m0", "state"), "healthy");
	CU_ASSERT_STRING_EQUAL(rep_field(v, PREFIX "m1", "state"), "healthy");
	json_decref(v);
	res_reset(&r);
	teardown();
}

/* The state file lists, for v, a target that carries another volume's label (say a
 * replica file was copied over): it is refused, v assembles from its own, and the
 * other volume's label is left as it was. */
static void add_foreign_replica(json_t *doc)
{
	json_t *v, *reps;
	size_t i;

	json_array_foreach(json_object_get(doc, "volumes"), i, v) {
		if (strcmp(json_string_value(json_object_get(v, "name")), "v") == 0) {
			reps = json_object_get(v, "replicas");
			json_array_append_new(reps, json_pack("{s:s}", "path", PREFIX "m3"));
		}
	}
}

static void test_restore_foreign(void)
{
	const char *reps[] = {PREFIX "m0", PREFIX "m1"};
	const char *other[] = {PREFIX "m3"};
	struct keel_nexus_open_opts oo = {.name = "other", .num_replicas = 1};
	struct op_res r = {0};
	const char *bdev;
	char foreign[KEEL_BDEV_NAME_MAX + 1];
	json_t *v;
	int done = 0;

	setup();
	CU_ASSERT_EQUAL_FATAL(create_vol("other", other, 1, false, &r), 0);
	CU_ASSERT_EQUAL_FATAL(destroy_vol("other", false, &r), 0);
	CU_ASSERT_EQUAL_FATAL(create_vol("v", reps, 2, false, &r), 0);
	restart(add_foreign_replica);
	v = vol_json("v");
	CU_ASSERT_STRING_EQUAL(vol_state(v), "online");
	CU_ASSERT_STRING_EQUAL(rep_field(v, PREFIX "m3", "state"), "faulted");
	CU_ASSERT_STRING_EQUAL(rep_field(v, PREFIX "m3", "reason"), "cant_open");
	CU_ASSERT_PTR_NOT_NULL(strstr(rep_field(v, PREFIX "m3", "detail"), "another volume"));
	bdev = rep_field(v, PREFIX "m3", "bdev");
	CU_ASSERT_FATAL(bdev != NULL);
	snprintf(foreign, sizeof(foreign), "%s", bdev);
	json_decref(v);
	/* the nexus did not take it, and its label still says "other" */
	CU_ASSERT_PTR_NULL(keel_bdev_get_claim_owner(keel_bdev_get_by_name(foreign)));
	oo.replicas = (const char *const[]){foreign};
	CU_ASSERT_FATAL(keel_nexus_open(&oo, nexus_done_cb, &done) == 0);
	wait_flag(&done);
	CU_ASSERT_PTR_NOT_NULL(keel_nexus_get_by_name("other"));
	done = 0;
	CU_ASSERT_FATAL(keel_nexus_destroy("other", false, nexus_done_cb, &done) == 0);
	wait_flag(&done);
	res_reset(&r);
	teardown();
}

/* Shutdown waits for the operation in flight, refuses new ones, and the last save
 * has the volume the operation made. */
static void test_shutdown_waits(void)
{
	const char *reps[] = {PREFIX "m0", PREFIX "m1"};
	struct keeld_volume_create_opts o = {
		.name = "v",
		.size = VOL_SIZE,
		.replicas = reps,
		.num_replicas = 2,
	};
	struct op_res r = {0}, late = {0};
	char vols[256];
	int done = 0;

	setup();
	g_hold_opens = true;
	CU_ASSERT_EQUAL(keeld_volume_create(&o, op_cb, &r), 0);
	wait_flag(&g_nheld);
	CU_ASSERT_EQUAL(g_nheld, 1);
	keeld_volumes_shutdown(flag_cb, &done);
	settle();
	CU_ASSERT_EQUAL(done, 0);
	CU_ASSERT_EQUAL(r.done, 0);
	CU_ASSERT_EQUAL(keeld_volume_destroy("v", false, op_cb, &late), -ESHUTDOWN);
	while (r.done == 0) {
		release_opens();
		g_hold_opens = true;
		settle();
	}
	g_hold_opens = false;
	CU_ASSERT_EQUAL(r.status, 0);
	wait_flag(&done);
	g_shut = true;
	CU_ASSERT_EQUAL(late.done, 0);
	state_file_volumes(vols, sizeof(vols));
	CU_ASSERT_STRING_EQUAL(vols, "v,");
	res_reset(&r);
	teardown();
}

/* The change is made but cannot be saved: the answer says so, the volume exists. */
static void test_save_fails(void)
{
	const char *reps[] = {PREFIX "m0"};
	struct op_res r = {0};
	char cmd[128];

	setup();
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
	CU_ASSERT_EQUAL_FATAL(system(cmd), 0);
	CU_ASSERT_EQUAL(create_vol("v", reps, 1, false, &r), -ENOENT);
	CU_ASSERT_PTR_NOT_NULL(strstr(r.msg, "the change was made, but keeld could not save it"));
	CU_ASSERT_PTR_NOT_NULL(strstr(r.msg, "state.json"));
	CU_ASSERT_PTR_NOT_NULL(keeld_volume_find("v", NULL, 0));
	CU_ASSERT_PTR_NOT_NULL(keel_nexus_get_by_name("v"));
	CU_ASSERT_EQUAL(mkdir(g_dir, 0700), 0);
	res_reset(&r);
	teardown();
}

/* ------------------------------------------------------------------------------ */
/* Backends                                                                        */
/* ------------------------------------------------------------------------------ */

static int add_replica_on(const char *name, const char *path, enum keeld_backend backend,
			  struct op_res *r)
{
	res_reset(r);
	return finish(keeld_volume_add_replica(name, path, NULL, backend, false, op_cb, r), r);
}

static const char *json_field(json_t *o, const char *key)
{
	return json_string_value(json_object_get(o, key));
}

/* The state file's entry of volume \p name (a new reference), or NULL. */
static json_t *state_file_volume(const char *name)
{
	json_error_t err;
	json_t *doc = json_load_file(keeld_store_path(KEELD_DOC_STATE), 0, &err);
	json_t *v, *found = NULL;
	size_t i;

	CU_ASSERT_FATAL(doc != NULL);
	json_array_foreach(json_object_get(doc, "volumes"), i, v) {
		if (strcmp(json_field(v, "name"), name) == 0) {
			found = json_incref(v);
		}
	}
	json_decref(doc);
	return found;
}

/* The backend the state file records for replica \p path of volume \p name. */
static void assert_saved_backend(const char *name, const char *path, const char *want)
{
	json_t *v = state_file_volume(name), *rep;
	const char *got = NULL;
	size_t i;

	CU_ASSERT_FATAL(v != NULL);
	json_array_foreach(json_object_get(v, "replicas"), i, rep) {
		if (strcmp(json_field(rep, "path"), path) == 0) {
			got = json_field(rep, "backend");
		}
	}
	CU_ASSERT_PTR_NOT_NULL_FATAL(got);
	CU_ASSERT_STRING_EQUAL(got, want);
	json_decref(v);
}

/*
 * A volume on uring with one replica added on aio: volume_get and the state file say
 * so per replica, and after a restart each replica is opened again through its own
 * backend.
 */
static void test_backend_persists(void)
{
	const char *reps[] = {PREFIX "m0", PREFIX "m1"};
	struct op_res r = {0};
	json_t *v;

	setup();
	CU_ASSERT_EQUAL_FATAL(create_vol_on("v", reps, 2, false, KEELD_BACKEND_URING, &r), 0);
	CU_ASSERT_STRING_EQUAL(json_field(r.vol, "backend"), "uring");
	CU_ASSERT_STRING_EQUAL(rep_field(r.vol, PREFIX "m0", "backend"), "uring");
	CU_ASSERT_EQUAL(g_uring_opens, 2);
	CU_ASSERT_EQUAL_FATAL(add_replica_on("v", PREFIX "new0", KEELD_BACKEND_AIO, &r), 0);
	CU_ASSERT_STRING_EQUAL(rep_field(r.vol, PREFIX "new0", "backend"), "aio");
	CU_ASSERT_EQUAL(g_uring_opens, 2); /* the aio replica did not go through uring */
	/* a replica added without a backend takes the volume's */
	CU_ASSERT_EQUAL_FATAL(add_replica_on("v", PREFIX "m2", KEELD_BACKEND_DEFAULT, &r), 0);
	CU_ASSERT_STRING_EQUAL(rep_field(r.vol, PREFIX "m2", "backend"), "uring");
	CU_ASSERT_EQUAL(g_uring_opens, 3);
	v = state_file_volume("v");
	CU_ASSERT_STRING_EQUAL(json_field(v, "backend"), "uring");
	json_decref(v);
	assert_saved_backend("v", PREFIX "m0", "uring");
	assert_saved_backend("v", PREFIX "new0", "aio");
	/* a volume created without one gets the daemon's default (aio here) */
	CU_ASSERT_EQUAL_FATAL(create_vol("w", (const char *[]){PREFIX "m3"}, 1, false, &r), 0);
	CU_ASSERT_STRING_EQUAL(json_field(r.vol, "backend"), "aio");

	g_uring_opens = g_uring_closes = 0;
	restart(NULL);
	CU_ASSERT_EQUAL(g_uring_closes, 0); /* restart() deletes the bdevs itself */
	CU_ASSERT_EQUAL(g_uring_opens, 3);  /* m0, m1, m2; new0 and w's m3 through aio */
	v = vol_json("v");
	/* degraded: the added replicas wait for a rebuild (automatic rebuilds are off) */
	CU_ASSERT_STRING_EQUAL(vol_state(v), "degraded");
	CU_ASSERT_STRING_EQUAL(rep_field(v, PREFIX "m1", "state"), "healthy");
	CU_ASSERT_STRING_EQUAL(rep_field(v, PREFIX "new0", "state"), "rebuilding");
	CU_ASSERT_STRING_EQUAL(json_field(v, "backend"), "uring");
	CU_ASSERT_STRING_EQUAL(rep_field(v, PREFIX "m1", "backend"), "uring");
	CU_ASSERT_STRING_EQUAL(rep_field(v, PREFIX "new0", "backend"), "aio");
	json_decref(v);
	v = vol_json("w");
	CU_ASSERT_STRING_EQUAL(json_field(v, "backend"), "aio");
	json_decref(v);
	/* destroy closes each replica through what opened it */
	CU_ASSERT_EQUAL(destroy_vol("v", false, &r), 0);
	CU_ASSERT_EQUAL(g_uring_closes, 3);
	res_reset(&r);
	teardown();
}

/* Remove the replicas' "backend" from a state document, and with \p volumes the
 * volumes' too. */
static void drop_backend_fields(json_t *doc, bool volumes)
{
	json_t *v, *rep;
	size_t i, j;

	json_array_foreach(json_object_get(doc, "volumes"), i, v) {
		if (volumes) {
			json_object_del(v, "backend");
		}
		json_array_foreach(json_object_get(v, "replicas"), j, rep) {
			json_object_del(rep, "backend");
		}
	}
}

/* A state file written before volumes had a backend. */
static void drop_backends(json_t *doc)
{
	drop_backend_fields(doc, true);
}

/* Older state files mean aio; a replica without one takes its volume's. */
static void test_backend_old_state(void)
{
	const char *reps[] = {PREFIX "m0", PREFIX "m1"};
	struct op_res r = {0};
	json_t *v;

	setup();
	CU_ASSERT_EQUAL_FATAL(create_vol_on("v", reps, 2, false, KEELD_BACKEND_URING, &r), 0);
	g_uring_opens = 0;
	restart(drop_backends);
	CU_ASSERT_EQUAL(g_uring_opens, 0);
	v = vol_json("v");
	CU_ASSERT_STRING_EQUAL(vol_state(v), "online");
	CU_ASSERT_STRING_EQUAL(json_field(v, "backend"), "aio");
	CU_ASSERT_STRING_EQUAL(rep_field(v, PREFIX "m0", "backend"), "aio");
	json_decref(v);
	assert_saved_backend("v", PREFIX "m0", "aio"); /* restore saved it back, explicit */
	res_reset(&r);
	teardown();
}

/* Replicas without a backend of their own, in a volume on uring, are on uring. */
static void drop_replica_backends(json_t *doc)
{
	drop_backend_fields(doc, false);
}

static void test_backend_replica_inherits(void)
{
	const char *reps[] = {PREFIX "m0", PREFIX "m1"};
	struct op_res r = {0};

	setup();
	CU_ASSERT_EQUAL_FATAL(create_vol_on("v", reps, 2, false, KEELD_BACKEND_URING, &r), 0);
	g_uring_opens = 0;
	restart(drop_replica_backends);
	CU_ASSERT_EQUAL(g_uring_opens, 2);
	res_reset(&r);
	teardown();
}

/* What keeld_state_validate says about a backend it does not know. */
static void test_backend_unknown_in_state(void)
{
	char err[512];
	json_t *doc;

	doc = json_pack("{s:i, s:[{s:s, s:i, s:s, s:[{s:s}]}], s:[]}", "version",
			KEELD_STATE_VERSION, "volumes", "name", "v", "size", (int)VOL_SIZE,
			"backend", "aio", "replicas", "path", PREFIX "m0", "exports");
	CU_ASSERT_FATAL(doc != NULL);
	CU_ASSERT(keeld_state_validate(doc, err, sizeof(err)));
	json_object_set_new(json_array_get(json_object_get(doc, "volumes"), 0), "backend",
			    json_string("spdk"));
	CU_ASSERT_FALSE(keeld_state_validate(doc, err, sizeof(err)));
	CU_ASSERT_PTR_NOT_NULL(strstr(
		err, "volumes[0].backend: 'spdk' is not a replica backend: use aio or uring"));
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "this keeld cannot open such a replica"));
	json_object_set_new(json_array_get(json_object_get(doc, "volumes"), 0), "backend",
			    json_integer(1));
	CU_ASSERT_FALSE(keeld_state_validate(doc, err, sizeof(err)));
	CU_ASSERT_STRING_EQUAL(err, "volumes[0].backend: expected a string (aio or uring)");
	json_object_set_new(json_array_get(json_object_get(doc, "volumes"), 0), "backend",
			    json_string("uring"));
	json_object_set_new(
		json_array_get(json_object_get(json_array_get(json_object_get(doc, "volumes"), 0),
					       "replicas"),
			       0),
		"backend", json_string("URING"));
	CU_ASSERT_FALSE(keeld_state_validate(doc, err, sizeof(err)));
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "volumes[0].replicas[0].backend: 'URING' is not"));
	json_decref(doc);
}

/*
 * io_uring refused: a volume or replica that asks for uring is refused with why and
 * what to do, leaving nothing behind; a uring default falls back to aio; a volume
 * saved on uring is restored through aio (and stays uring in the state file).
 */
static void test_backend_unavailable(void)
{
	const char *reps[] = {PREFIX "m0", PREFIX "m1"};
	struct keeld_volume_create_opts bad = {.name = "x", .size = VOL_SIZE};
	struct op_res r = {0};
	char why[512];
	json_t *v;

	setup();
	g_uring_refused = true;
	CU_ASSERT_EQUAL(create_vol_on("v", reps, 2, false, KEELD_BACKEND_URING, &r), -ENOTSUP);
	CU_ASSERT_STRING_EQUAL(r.msg, "backend uring is unavailable on this machine: ut: "
				      "io_uring_setup: EPERM; use the aio backend (keelctl "
				      "--backend aio, or leave the backend out)");
	assert_no_trace("v");
	CU_ASSERT_EQUAL(fs_alive(), 0);
	/* a volume made while io_uring worked */
	g_uring_refused = false;
	CU_ASSERT_EQUAL_FATAL(create_vol_on("u", (const char *[]){PREFIX "m2"}, 1, false,
					    KEELD_BACKEND_URING, &r),
			      0);
	g_uring_refused = true;
	/* the default falls back to aio, so leaving the backend out works */
	CU_ASSERT_EQUAL(keeld_volumes_set_default_backend(KEELD_BACKEND_URING), KEELD_BACKEND_AIO);
	CU_ASSERT_EQUAL(keeld_volumes_default_backend(), KEELD_BACKEND_AIO);
	CU_ASSERT_EQUAL_FATAL(create_vol_on("v", reps, 2, false, KEELD_BACKEND_DEFAULT, &r), 0);
	CU_ASSERT_STRING_EQUAL(json_field(r.vol, "backend"), "aio");
	/* adding a uring replica is refused the same way; the volume keeps its two */
	CU_ASSERT_EQUAL(add_replica_on("v", PREFIX "new0", KEELD_BACKEND_URING, &r), -ENOTSUP);
	CU_ASSERT_PTR_NOT_NULL(strstr(r.msg, "backend uring is unavailable"));
	CU_ASSERT_EQUAL(vol_replicas("v"), 2);
	CU_ASSERT_EQUAL(fs_alive(), 0);
	/* so is one added without a backend to the volume on uring */
	CU_ASSERT_EQUAL(add_replica_on("u", PREFIX "new0", KEELD_BACKEND_DEFAULT, &r), -ENOTSUP);
	/* restore: the uring volume opens through aio, says so, and is still uring on disk */
	g_uring_opens = 0;
	restart(NULL);
	CU_ASSERT_EQUAL(g_uring_opens, 0);
	v = vol_json("u");
	CU_ASSERT_STRING_EQUAL(vol_state(v), "online");
	CU_ASSERT_STRING_EQUAL(json_field(v, "backend"), "aio");
	CU_ASSERT_STRING_EQUAL(json_field(v, "backend_requested"), "uring");
	CU_ASSERT_STRING_EQUAL(
		json_field(json_array_get(json_object_get(v, "replicas"), 0), "backend"), "aio");
	CU_ASSERT_STRING_EQUAL(
		json_field(json_array_get(json_object_get(v, "replicas"), 0), "backend_requested"),
		"uring");
	json_decref(v);
	/* a volume that got its backend has no backend_requested */
	v = vol_json("v");
	CU_ASSERT_PTR_NULL(json_object_get(v, "backend_requested"));
	CU_ASSERT_PTR_NULL(json_object_get(json_array_get(json_object_get(v, "replicas"), 0),
					   "backend_requested"));
	json_decref(v);
	assert_saved_backend("u", PREFIX "m2", "uring");
	/* io_uring back: the default is uring again when asked */
	g_uring_refused = false;
	CU_ASSERT_EQUAL(keeld_volumes_set_default_backend(KEELD_BACKEND_URING),
			KEELD_BACKEND_URING);
	CU_ASSERT_EQUAL_FATAL(create_vol("w", (const char *[]){PREFIX "m3"}, 1, false, &r), 0);
	CU_ASSERT_STRING_EQUAL(json_field(r.vol, "backend"), "uring");
	/* requests that name a backend where it cannot apply */
	bad.replica_bdevs = (const char *const[]){"m0"};
	bad.num_replicas = 1;
	bad.backend = KEELD_BACKEND_URING;
	CU_ASSERT_FALSE(keeld_volume_create_opts_valid(&bad, why, sizeof(why)));
	CU_ASSERT_STRING_EQUAL(why, "backend: only for replica files (a replica bdev is open "
				    "already)");
	bad.replica_bdevs = NULL;
	bad.replicas = (const char *const[]){PREFIX "m0"};
	bad.backend = (enum keeld_backend)7;
	CU_ASSERT_FALSE(keeld_volume_create_opts_valid(&bad, why, sizeof(why)));
	CU_ASSERT_STRING_EQUAL(why, "backend: not a replica backend: use aio or uring");
	CU_ASSERT_EQUAL(keeld_volume_create(&bad, op_cb, &r), -EINVAL);
	CU_ASSERT_FALSE(keeld_volume_add_replica_valid("v", NULL, "m0", KEELD_BACKEND_AIO, why,
						       sizeof(why)));
	CU_ASSERT_PTR_NOT_NULL(strstr(why, "backend: only for replica files"));
	CU_ASSERT(keeld_backend_parse("uring", &bad.backend, why, sizeof(why)));
	CU_ASSERT_FALSE(keeld_backend_parse("io_uring", &bad.backend, why, sizeof(why)));
	CU_ASSERT_STRING_EQUAL(why, "'io_uring' is not a replica backend: use aio or uring");
	res_reset(&r);
	teardown();
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"create_destroy", test_create_destroy},
		{"create_fails_halfway_open", test_create_fails_halfway_open},
		{"create_fails_prepare", test_create_fails_prepare},
		{"create_fails_nexus", test_create_fails_nexus},
		{"concurrent_ops", test_concurrent_ops},
		{"refusals", test_refusals},
		{"add_remove_readd", test_add_remove_readd},
		{"restore_missing", test_restore_missing},
		{"restore_stale", test_restore_stale},
		{"restore_foreign", test_restore_foreign},
		{"shutdown_waits", test_shutdown_waits},
		{"save_fails", test_save_fails},
		{"backend_persists", test_backend_persists},
		{"backend_old_state", test_backend_old_state},
		{"backend_replica_inherits", test_backend_replica_inherits},
		{"backend_unknown_in_state", test_backend_unknown_in_state},
		{"backend_unavailable", test_backend_unavailable},
		{NULL, NULL},
	};
	struct keel_rebuild_opts ro;

	keel_bdev_module_register(&keel_bdev_malloc_module);
	keel_bdev_module_register(&keel_bdev_error_module);
	keel_bdev_module_register(&keel_bdev_nexus_module);
	if (getenv("VOLUME_UT_DEBUG") == NULL) {
		keel_log_set_level(KEEL_LOG_ERROR + 0);
	}
	/* Replicas stay as the test left them: no rebuild starts behind its back. */
	keel_rebuild_get_opts(&ro);
	ro.auto_rebuild = false;
	if (keel_rebuild_set_opts(&ro) != 0) {
		fprintf(stderr, "cannot turn automatic rebuilds off\n");
		return 1;
	}
	return ut_cunit_run("volume_manager", tests);
}
