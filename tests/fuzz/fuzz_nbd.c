/*
 * Fuzz the NBD connection state machine (nbd/nbd_conn.c, nbd_handshake.c,
 * nbd_transmission.c, nbd_sock.c) as a client drives it: the input is what a client
 * sends on its socket (compact or, after NBD_OPT_EXTENDED_HEADERS, extended requests;
 * seed hs_extended_headers). The first byte picks the phase the connection starts in: even,
 * the handshake (greeting, options, then transmission after GO/EXPORT_NAME); odd,
 * transmission only (what the kernel frontend uses). For the handshake, bits 1-2 pick
 * the export's TLS mode: 0 off, 1 on, 2 and 3 require (with a PSK, so STARTTLS is
 * acknowledged and what follows is fed to GnuTLS as a client hello: the fuzzer cannot
 * speak TLS, but it drives the option order and the refusals before it). Then the client's side of the
 * socket is shut for writing (EOF) and the server is polled until it has closed the
 * connection; every reply byte is read and dropped.
 *
 * Speed: the keel thread, the bdev layer and a 4 MiB RAM disk are set up once per
 * process; each input costs one socketpair and one connection. The thread is polled
 * from this OS thread (no reactors), as the NBD unit tests do.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "keel/bdev.h"
#include "keel/bdev_module.h"
#include "keel/log.h"
#include "keel/reactor.h"
#include "nbd/nbd_internal.h"
#include "nbd/nbd_tls.h"

#define DISK_BLOCK_SIZE 512u
#define DISK_BLOCKS 8192u /* 4 MiB */
/* A connection still open this long after its client's EOF is stuck: a finding. */
#define STUCK_NS (10ull * 1000 * 1000 * 1000)

static struct keel_thread *g_thread;
static struct nbd_export_info g_exp;
static struct nbd_export_info g_exp_tls_on;
static struct nbd_export_info g_exp_tls_require;
static int g_init_status = 1;

static void init_done(void *cb_arg, int status)
{
	(void)cb_arg;
	g_init_status = status;
}

static void bdev_event(enum keel_bdev_event_type type, struct keel_bdev *bdev, void *ctx)
{
	(void)type;
	(void)bdev;
	(void)ctx;
}

static void conn_done(void *ctx, struct nbd_conn *conn)
{
	(void)conn;
	*(bool *)ctx = true;
}

static void __attribute__((noreturn)) die(const char *what)
{
	fprintf(stderr, "fuzz_nbd: %s\n", what);
	abort();
}

static void setup_tls(void);

static void setup_once(void)
{
	struct keel_bdev *bdev;
	struct keel_bdev_desc *desc;

	if (g_thread != NULL) {
		return;
	}
	fuzz_quiet_logs();
	if (keel_thread_lib_init(0) != 0) {
		die("keel_thread_lib_init failed");
	}
	g_thread = keel_thread_create("fuzz_nbd", KEEL_REACTOR_ANY);
	if (g_thread == NULL) {
		die("keel_thread_create failed");
	}
	keel_set_current_thread(g_thread);
	keel_bdev_module_register(&keel_bdev_malloc_module);
	if (keel_bdev_subsystem_init(init_done, NULL) != 0) {
		die("keel_bdev_subsystem_init failed");
	}
	while (g_init_status == 1) {
		keel_thread_poll(g_thread);
	}
	if (g_init_status != 0 ||
	    keel_bdev_malloc_create("fz", NULL, DISK_BLOCKS, DISK_BLOCK_SIZE, &bdev) != 0 ||
	    keel_bdev_open_ext("fz", true, bdev_event, NULL, &desc) != 0) {
		die("cannot create the RAM disk");
	}
	snprintf(g_exp.name, sizeof(g_exp.name), "fz");
	g_exp.description = "fuzz disk";
	g_exp.size = (uint64_t)DISK_BLOCKS * DISK_BLOCK_SIZE;
	g_exp.block_size = DISK_BLOCK_SIZE;
	g_exp.tflags = nbd_tflags_for_bdev(bdev, false);
	g_exp.desc = desc;
	g_exp.tls_mode = KEEL_NBD_TLS_OFF;
	setup_tls();
}

/* The TLS exports: the same disk, with a PSK read from a file made here. */
static void setup_tls(void)
{
	static const char key[] = "fz:00112233445566778899aabbccddeeff\n";
	struct nbd_tls_creds *creds;
	char path[] = "/tmp/fuzz_nbd_psk.XXXXXX";
	char err[256];
	int fd = mkstemp(path);

	if (fd < 0 || write(fd, key, sizeof(key) - 1) != (ssize_t)(sizeof(key) - 1)) {
		die("cannot write the PSK file");
	}
	close(fd);
	if (nbd_tls_creds_load(path, NULL, &creds, err, sizeof(err)) != 0) {
		die(err);
	}
	unlink(path);
	g_exp_tls_on = g_exp;
	g_exp_tls_on.tls_mode = KEEL_NBD_TLS_ON;
	g_exp_tls_on.tls_creds = creds;
	g_exp_tls_require = g_exp_tls_on;
	g_exp_tls_require.tls_mode = KEEL_NBD_TLS_REQUIRE;
}

/* Read and drop what the server sent. \return false once it closed its side. */
static bool drain(int cfd)
{
	static uint8_t sink[65536];

	for (;;) {
		ssize_t n = recv(cfd, sink, sizeof(sink), MSG_DONTWAIT);

		if (n > 0) {
			continue;
		}
		return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nbd_conn *conn;
	bool done = false, open = true;
	uint64_t deadline;
	int sv[2], rc;

	setup_once();
	if (size < 1) {
		return 0;
	}
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
		die("socketpair failed");
	}
	if ((data[0] & 1) != 0) {
		rc = nbd_conn_create_transmission(sv[1], g_exp.desc, g_exp.tflags, conn_done, &done,
						  &conn);
	} else {
		static const struct nbd_export_info *exps[] = {
			&g_exp, &g_exp_tls_on, &g_exp_tls_require, &g_exp_tls_require};

		rc = nbd_conn_create_handshake(sv[1], exps[(data[0] >> 1) & 3], conn_done, &done,
					       &conn);
	}
	if (rc != 0) {
		die("cannot create the connection");
	}
	data++;
	size--;
	/* Send it all, serving the connection whenever the socket is full. */
	while (size > 0 && open) {
		ssize_t n = send(sv[0], data, size, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n > 0) {
			data += n;
			size -= (size_t)n;
			continue;
		}
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
			break; /* the server closed: the rest is never read */
		}
		keel_thread_poll(g_thread);
		open = drain(sv[0]);
	}
	shutdown(sv[0], SHUT_WR);
	deadline = keel_now_ns() + STUCK_NS;
	while (!done && open) {
		keel_thread_poll(g_thread);
		open = drain(sv[0]);
		if (keel_now_ns() > deadline) {
			die("connection still open 10 s after the client's EOF");
		}
	}
	/* The server closed its side, or is done: hang up and let it finish. */
	close(sv[0]);
	while (!done) {
		keel_thread_poll(g_thread);
		if (keel_now_ns() > deadline) {
			die("connection not freed 10 s after the client hung up");
		}
	}
	return 0;
}
