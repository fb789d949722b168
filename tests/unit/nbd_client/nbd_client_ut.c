/*
 * NBD client bdev tests: the deterministic harness (one keel thread, mock clock, so
 * request deadlines fire exactly when a test advances time) against the scripted server
 * of scripted_server.c (timeouts, lost connections, broken replies, reconnect) and
 * against nbdkit (data round trips, flush/trim/zeroes, FUA, TLS with a PSK and a wrong
 * one). Connecting runs on the real blocking pool, so waits for it poll with a cap in
 * real time.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "keel/bdev.h"
#include "keel/bdev_module.h"
#include "keel/bdev_nbd_client.h"
#include "keel/log.h"
#include "scripted_server.h"
#include "ut_cunit.h"
#include "ut_threads.h"

#define UT_EXPORT_SIZE (8u << 20)
#define UT_TIMEOUT_MS 200u

static char g_dir[64];
static char g_sock[128];

struct ut_wait {
	int done;
	int status;
	struct keel_bdev *bdev;
};

static void ut_create_cb(void *arg, int status, struct keel_bdev *bdev)
{
	struct ut_wait *w = arg;

	w->done++;
	w->status = status;
	w->bdev = bdev;
}

static void ut_done_cb(void *arg, int status)
{
	struct ut_wait *w = arg;

	w->done++;
	w->status = status;
}

static void ut_io_cb(void *arg, int status)
{
	struct ut_wait *w = arg;

	w->done++;
	w->status = status;
}

static uint64_t ut_real_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Poll the keel thread until \p w is done (or 15 s of real time: a failure). */
static bool ut_wait(struct ut_wait *w)
{
	uint64_t end = ut_real_ms() + 15000;

	while (w->done == 0 && ut_real_ms() < end) {
		if (ut_poll_threads() == 0) {
			usleep(500);
		}
	}
	return w->done != 0;
}

static void ut_setup(void)
{
	ut_threads_init(1);
	ut_set_thread(0);
	keel_bdev_module_register(&keel_bdev_nbd_client_module);
	{
		struct ut_wait w = {0};

		CU_ASSERT_EQUAL(keel_bdev_subsystem_init(ut_done_cb, &w), 0);
		ut_poll_threads();
		CU_ASSERT_EQUAL(w.status, 0);
	}
}

static void ut_teardown(void)
{
	struct ut_wait w = {0};

	keel_bdev_subsystem_fini(ut_done_cb, &w);
	CU_ASSERT_TRUE(ut_wait(&w));
	ut_threads_fini();
}

static int ut_create(const char *uri, uint32_t timeout_ms, struct keel_bdev **bdev)
{
	struct keel_bdev_nbd_client_opts o = {.name = "r0", .uri = uri, .timeout_ms = timeout_ms};
	struct ut_wait w = {0};
	int rc = keel_bdev_nbd_client_create(&o, ut_create_cb, &w);

	if (rc != 0) {
		return rc;
	}
	CU_ASSERT_EQUAL(w.done, 0); /* never inside the call */
	if (!ut_wait(&w)) {
		return -ETIMEDOUT;
	}
	*bdev = w.bdev;
	return w.status;
}

static void ut_delete(void)
{
	struct ut_wait w = {0};

	CU_ASSERT_EQUAL(keel_bdev_nbd_client_delete("r0", ut_done_cb, &w), 0);
	CU_ASSERT_TRUE(ut_wait(&w));
}

static void ut_event(enum keel_bdev_event_type type, struct keel_bdev *bdev, void *ctx)
{
}

struct ut_open {
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
};

static void ut_open(struct ut_open *o)
{
	CU_ASSERT_EQUAL_FATAL(keel_bdev_open_ext("r0", true, ut_event, NULL, &o->desc), 0);
	o->ch = keel_bdev_get_io_channel(o->desc);
	CU_ASSERT_PTR_NOT_NULL_FATAL(o->ch);
}

static void ut_close(struct ut_open *o)
{
	keel_put_io_channel(o->ch);
	keel_bdev_close(o->desc);
	ut_poll_threads();
}

static int ut_rw(struct ut_open *o, bool write, void *buf, uint64_t off, uint64_t len)
{
	struct ut_wait w = {0};
	int rc = write ? keel_bdev_write(o->desc, o->ch, buf, off, len, ut_io_cb, &w)
		       : keel_bdev_read(o->desc, o->ch, buf, off, len, ut_io_cb, &w);

	if (rc != 0) {
		return rc;
	}
	return ut_wait(&w) ? w.status : -ETIMEDOUT;
}

static struct keel_bdev_nbd_client_stats ut_stats(void)
{
	struct keel_bdev_nbd_client_stats st;

	memset(&st, 0, sizeof(st));
	CU_ASSERT_EQUAL(keel_bdev_nbd_client_get_stats("r0", &st), 0);
	return st;
}

/* Poll (advancing mock time for the back-off) until the channel is connected again. */
static bool ut_wait_up(void)
{
	uint64_t end = ut_real_ms() + 15000;

	while (ut_real_ms() < end) {
		struct keel_bdev_nbd_client_stats st = ut_stats();

		if (st.channels_up == 1) {
			return true;
		}
		ut_time_advance_us(50000);
		if (ut_poll_threads() == 0) {
			usleep(1000);
		}
	}
	return false;
}

static char g_uri[512];

static void ut_scripted_start(void)
{
	snprintf(g_sock, sizeof(g_sock), "%s/ss.sock", g_dir);
	CU_ASSERT_EQUAL_FATAL(ss_start(g_sock, UT_EXPORT_SIZE), 0);
	snprintf(g_uri, sizeof(g_uri), "nbd+unix:///?socket=%s", g_sock);
}

/* Harness, scripted server, bdev r0 over it with a short timeout. */
static struct keel_bdev *ut_scripted_setup(void)
{
	struct keel_bdev *bdev = NULL;

	ut_setup();
	ut_scripted_start();
	CU_ASSERT_EQUAL_FATAL(ut_create(g_uri, UT_TIMEOUT_MS, &bdev), 0);
	return bdev;
}

static void ut_scripted_teardown(struct ut_open *o)
{
	ut_close(o);
	ut_delete();
	ss_stop();
	ut_teardown();
}

static void test_bad_input(void)
{
	struct keel_bdev_nbd_client_opts o = {.name = "r0", .uri = "/tmp/file"};
	struct ut_wait w = {0};

	ut_setup();
	CU_ASSERT_EQUAL(keel_bdev_nbd_client_create(&o, ut_create_cb, &w), -EINVAL);
	o.uri = "nbd+unix:///?socket=/nonexistent/sock";
	o.timeout_ms = 1;
	CU_ASSERT_EQUAL(keel_bdev_nbd_client_create(&o, ut_create_cb, &w), -EINVAL);
	o.timeout_ms = 0;
	CU_ASSERT_EQUAL(keel_bdev_nbd_client_create(&o, ut_create_cb, &w), 0);
	CU_ASSERT_TRUE(ut_wait(&w));
	CU_ASSERT_NOT_EQUAL(w.status, 0);
	CU_ASSERT_PTR_NULL(keel_bdev_get_by_name("r0"));
	CU_ASSERT_PTR_NOT_NULL(strstr(keel_bdev_nbd_client_last_error(), "connect"));
	CU_ASSERT_TRUE(keel_bdev_nbd_client_is_uri("nbds+unix://u@/x?socket=/s"));
	CU_ASSERT_FALSE(keel_bdev_nbd_client_is_uri("nbdx://h/x"));
	CU_ASSERT_EQUAL(keel_bdev_nbd_client_delete("r0", ut_done_cb, &w), -ENODEV);
	ut_teardown();
}

/* A server that stops answering: the request fails with -EIO at its deadline, not before;
 * the channel fails new requests at once, reconnects with back-off, and works again. */
static void test_timeout_and_reconnect(void)
{
	struct keel_bdev *bdev = NULL;
	struct ut_open o;
	static char buf[4096], back[4096];
	struct ut_wait w = {0};

	bdev = ut_scripted_setup();
	CU_ASSERT_EQUAL(keel_bdev_get_num_blocks(bdev) * keel_bdev_get_block_size(bdev),
			UT_EXPORT_SIZE);
	ut_open(&o);
	memset(buf, 0xab, sizeof(buf));
	CU_ASSERT_EQUAL(ut_rw(&o, true, buf, 4096, sizeof(buf)), 0);

	ss_set_mode(SS_SILENT);
	CU_ASSERT_EQUAL(keel_bdev_write(o.desc, o.ch, buf, 0, sizeof(buf), ut_io_cb, &w), 0);
	for (int i = 0; i < 50; i++) { /* real time passes, mock time does not */
		ut_poll_threads();
		usleep(1000);
	}
	CU_ASSERT_EQUAL(w.done, 0);
	ut_time_advance_us((UT_TIMEOUT_MS - 10) * 1000u);
	ut_poll_threads();
	CU_ASSERT_EQUAL(w.done, 0);
	ut_time_advance_us(20 * 1000u);
	ut_poll_threads();
	CU_ASSERT_EQUAL(w.done, 1);
	CU_ASSERT_EQUAL(w.status, -EIO);
	CU_ASSERT_EQUAL(ut_stats().timeouts, 1);
	CU_ASSERT_EQUAL(ut_stats().channels_down, 1);
	/* disconnected: fail at once, no waiting for a deadline */
	CU_ASSERT_EQUAL(ut_rw(&o, false, back, 0, sizeof(back)), -EIO);

	ss_set_mode(SS_ANSWER);
	CU_ASSERT_TRUE(ut_wait_up());
	CU_ASSERT_EQUAL(ut_stats().connects, 2);
	CU_ASSERT_EQUAL(ut_rw(&o, false, back, 4096, sizeof(back)), 0);
	CU_ASSERT_EQUAL(memcmp(buf, back, sizeof(buf)), 0);
	ut_scripted_teardown(&o);
}

/* The server closes the connection: in-flight requests fail at once (no time passes). */
static void test_connection_closed(void)
{
	struct ut_open o;
	static char buf[4096];

	(void)ut_scripted_setup();
	ut_open(&o);
	ss_set_mode(SS_CLOSE);
	CU_ASSERT_EQUAL(ut_rw(&o, false, buf, 0, sizeof(buf)), -EIO);
	CU_ASSERT_EQUAL(ut_stats().timeouts, 0);
	CU_ASSERT_EQUAL(ut_stats().disconnects, 1);
	ss_set_mode(SS_ANSWER);
	CU_ASSERT_TRUE(ut_wait_up());
	CU_ASSERT_EQUAL(ut_rw(&o, true, buf, 0, sizeof(buf)), 0);
	ut_scripted_teardown(&o);
}

/* Replies that break the protocol end the connection and fail the request; nothing
 * crashes, and the next connection works. */
static void test_odd_replies(void)
{
	static const enum ss_mode modes[] = {SS_BAD_MAGIC, SS_BAD_COOKIE};
	struct ut_open o;
	static char buf[4096];

	(void)ut_scripted_setup();
	ut_open(&o);
	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
		struct ut_wait w = {0};

		ss_set_mode(modes[i]);
		CU_ASSERT_EQUAL(keel_bdev_read(o.desc, o.ch, buf, 0, sizeof(buf), ut_io_cb, &w), 0);
		/* an unknown cookie may leave the real answer missing: the deadline ends it */
		for (int n = 0; n < 100 && w.done == 0; n++) {
			ut_poll_threads();
			usleep(1000);
		}
		if (w.done == 0) {
			ut_time_advance_us((UT_TIMEOUT_MS + 10) * 1000u);
			CU_ASSERT_TRUE(ut_wait(&w));
		}
		CU_ASSERT_EQUAL(w.status, -EIO);
		ss_set_mode(SS_ANSWER);
		CU_ASSERT_TRUE(ut_wait_up());
		CU_ASSERT_EQUAL(ut_rw(&o, true, buf, 0, sizeof(buf)), 0);
	}
	ut_scripted_teardown(&o);
}

/* A server without multi-conn: one connection for every thread (requests of other
 * threads go to the creating thread's connection by message and complete back home). */
static void test_no_multi_conn(void)
{
	struct keel_bdev *bdev = NULL;
	struct ut_open o;
	static char buf[4096], back[4096];
	unsigned conns;

	ut_threads_init(2);
	ut_set_thread(0);
	keel_bdev_module_register(&keel_bdev_nbd_client_module);
	{
		struct ut_wait w = {0};

		CU_ASSERT_EQUAL(keel_bdev_subsystem_init(ut_done_cb, &w), 0);
		ut_poll_threads();
	}
	ut_scripted_start();
	ss_set_multi_conn(false);
	CU_ASSERT_EQUAL_FATAL(ut_create(g_uri, UT_TIMEOUT_MS, &bdev), 0);
	conns = ss_connections();
	ut_set_thread(1);
	ut_open(&o);
	memset(buf, 0x3c, sizeof(buf));
	CU_ASSERT_EQUAL(ut_rw(&o, true, buf, 8192, sizeof(buf)), 0);
	CU_ASSERT_EQUAL(ut_rw(&o, false, back, 8192, sizeof(back)), 0);
	CU_ASSERT_EQUAL(memcmp(buf, back, sizeof(buf)), 0);
	CU_ASSERT_EQUAL(ss_connections(), conns); /* no second connection */
	ut_close(&o);
	ut_set_thread(0);
	ut_delete();
	ss_set_multi_conn(true);
	ss_stop();
	ut_teardown();
}

/* ---- nbdkit ----------------------------------------------------------------- */

static pid_t g_nbdkit = -1;

static bool ut_have_nbdkit(void)
{
	return system("command -v nbdkit >/dev/null 2>&1") == 0;
}

/* Start nbdkit's memory plugin on g_sock; \p psk: serve TLS with that PSK file. */
static bool ut_nbdkit_start(const char *psk)
{
	char tls[300];
	uint64_t end;

	snprintf(g_sock, sizeof(g_sock), "%s/kit.sock", g_dir);
	unlink(g_sock);
	snprintf(tls, sizeof(tls), "--tls-psk=%s", psk != NULL ? psk : "");
	g_nbdkit = fork();
	if (g_nbdkit == 0) {
		if (psk != NULL) {
			execlp("nbdkit", "nbdkit", "-f", "--exit-with-parent", "--tls=require", tls,
			       "-U", g_sock, "memory", "8M", (char *)NULL);
		} else {
			execlp("nbdkit", "nbdkit", "-f", "--exit-with-parent", "-U", g_sock,
			       "memory", "8M", (char *)NULL);
		}
		_exit(127);
	}
	end = ut_real_ms() + 15000;
	while (ut_real_ms() < end) {
		struct stat st;

		if (stat(g_sock, &st) == 0) {
			return true;
		}
		usleep(10000);
	}
	return false;
}

static void ut_nbdkit_stop(void)
{
	if (g_nbdkit > 0) {
		kill(g_nbdkit, SIGKILL);
		waitpid(g_nbdkit, NULL, 0);
		g_nbdkit = -1;
	}
}

static void test_nbdkit_io(void)
{
	struct keel_bdev *bdev = NULL;
	struct ut_open o;
	static char buf[3 * 4096], back[3 * 4096], zero[4096];
	struct iovec iov[3];
	struct ut_wait w = {0};

	if (!ut_have_nbdkit()) {
		ut_skip("nbdkit is not installed");
		return;
	}
	ut_setup();
	CU_ASSERT_FATAL(ut_nbdkit_start(NULL));
	snprintf(g_uri, sizeof(g_uri), "nbd+unix:///?socket=%s", g_sock);
	CU_ASSERT_EQUAL_FATAL(ut_create(g_uri, 0, &bdev), 0);
	CU_ASSERT_TRUE(keel_bdev_io_type_supported(bdev, KEEL_BDEV_IO_FLUSH));
	CU_ASSERT_TRUE(keel_bdev_io_type_supported(bdev, KEEL_BDEV_IO_UNMAP));
	ut_open(&o);
	for (size_t i = 0; i < sizeof(buf); i++) {
		buf[i] = (char)(i * 7 + 3);
	}
	/* three buffers: three NBD commands, one request */
	for (int i = 0; i < 3; i++) {
		iov[i].iov_base = buf + i * 4096;
		iov[i].iov_len = 4096;
	}
	CU_ASSERT_EQUAL(keel_bdev_writev(o.desc, o.ch, iov, 3, 65536, sizeof(buf),
					 KEEL_BDEV_IO_FLAG_FUA, ut_io_cb, &w),
			0);
	CU_ASSERT_TRUE(ut_wait(&w));
	CU_ASSERT_EQUAL(w.status, 0);
	CU_ASSERT_EQUAL(ut_rw(&o, false, back, 65536, sizeof(back)), 0);
	CU_ASSERT_EQUAL(memcmp(buf, back, sizeof(buf)), 0);
	memset(&w, 0, sizeof(w));
	CU_ASSERT_EQUAL(keel_bdev_flush(o.desc, o.ch, 0, UT_EXPORT_SIZE, ut_io_cb, &w), 0);
	CU_ASSERT_TRUE(ut_wait(&w) && w.status == 0);
	memset(&w, 0, sizeof(w));
	CU_ASSERT_EQUAL(keel_bdev_write_zeroes(o.desc, o.ch, 65536, 4096, ut_io_cb, &w), 0);
	CU_ASSERT_TRUE(ut_wait(&w) && w.status == 0);
	CU_ASSERT_EQUAL(ut_rw(&o, false, back, 65536, 4096), 0);
	CU_ASSERT_EQUAL(memcmp(back, zero, 4096), 0);
	memset(&w, 0, sizeof(w));
	CU_ASSERT_EQUAL(keel_bdev_unmap(o.desc, o.ch, 65536 + 4096, 8192, ut_io_cb, &w), 0);
	CU_ASSERT_TRUE(ut_wait(&w) && w.status == 0);

	/* the server goes away: -EIO at once, not after the timeout */
	ut_nbdkit_stop();
	CU_ASSERT_EQUAL(ut_rw(&o, false, back, 0, 4096), -EIO);
	ut_close(&o);
	ut_delete();
	ut_teardown();
}

static bool ut_write_psk(const char *path, const char *key)
{
	FILE *f = fopen(path, "w");

	if (f == NULL) {
		return false;
	}
	fprintf(f, "keel:%s\n", key);
	return fclose(f) == 0;
}

static void test_nbdkit_tls(void)
{
	char psk[128], bad[128];
	struct keel_bdev *bdev = NULL;
	struct ut_open o;
	static char buf[4096], back[4096];

	if (!ut_have_nbdkit()) {
		ut_skip("nbdkit is not installed");
		return;
	}
	snprintf(psk, sizeof(psk), "%s/good.psk", g_dir);
	snprintf(bad, sizeof(bad), "%s/bad.psk", g_dir);
	CU_ASSERT_FATAL(ut_write_psk(psk, "0123456789abcdef0123456789abcdef"));
	CU_ASSERT_FATAL(ut_write_psk(bad, "fedcba9876543210fedcba9876543210"));
	ut_setup();
	CU_ASSERT_FATAL(ut_nbdkit_start(psk));
	/* plain NBD against a TLS-only server: refused */
	snprintf(g_uri, sizeof(g_uri), "nbd+unix:///?socket=%s", g_sock);
	CU_ASSERT_NOT_EQUAL(ut_create(g_uri, 2000, &bdev), 0);
	/* the wrong key: refused, with words saying so */
	snprintf(g_uri, sizeof(g_uri), "nbds+unix://keel@/?socket=%s&tls-psk-file=%s", g_sock, bad);
	CU_ASSERT_NOT_EQUAL(ut_create(g_uri, 2000, &bdev), 0);
	CU_ASSERT_PTR_NULL(keel_bdev_get_by_name("r0"));
	CU_ASSERT_PTR_NOT_NULL(strstr(keel_bdev_nbd_client_last_error(), "TLS failed"));
	/* the right key */
	snprintf(g_uri, sizeof(g_uri), "nbds+unix://keel@/?socket=%s&tls-psk-file=%s", g_sock, psk);
	CU_ASSERT_EQUAL_FATAL(ut_create(g_uri, 2000, &bdev), 0);
	ut_open(&o);
	memset(buf, 0x5c, sizeof(buf));
	CU_ASSERT_EQUAL(ut_rw(&o, true, buf, 8192, sizeof(buf)), 0);
	CU_ASSERT_EQUAL(ut_rw(&o, false, back, 8192, sizeof(back)), 0);
	CU_ASSERT_EQUAL(memcmp(buf, back, sizeof(buf)), 0);
	ut_close(&o);
	ut_delete();
	ut_nbdkit_stop();
	ut_teardown();
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"bad_input", test_bad_input},
		{"timeout_and_reconnect", test_timeout_and_reconnect},
		{"connection_closed", test_connection_closed},
		{"odd_replies", test_odd_replies},
		{"no_multi_conn", test_no_multi_conn},
		{"nbdkit_io", test_nbdkit_io},
		{"nbdkit_tls", test_nbdkit_tls},
		{NULL, NULL},
	};
	char cmd[128];
	int rc;

	signal(SIGPIPE, SIG_IGN);
	snprintf(g_dir, sizeof(g_dir), "/tmp/nbd_client_ut.XXXXXX");
	if (mkdtemp(g_dir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	rc = ut_cunit_run("nbd_client", tests);
	ut_nbdkit_stop();
	snprintf(cmd, sizeof(cmd), "rm -rf %s", g_dir);
	(void)system(cmd);
	return rc;
}
