/*
 * keel-nbd-smoke: proves nbd/kernel/nbd_netlink.c against a real kernel nbd driver.
 *
 * Runs inside the test VM (tests/vm/run-vm.sh, payload tests/vm/payloads/nbd-smoke.sh) as
 * root with nbd.ko and ext4 loaded. It serves /dev/nbdN from a RAM buffer with a tiny
 * threaded NBD transmission loop (one thread per socket, simple replies only). That loop
 * is a test fixture, not keel's server (nbd/ has the real one).
 *
 * Steps: STATUS of an unknown index fails cleanly; CONNECT /dev/nbd0 with two sockets;
 * CONNECT to the busy index gives EBUSY; mkfs.ext4 + mount + write + remount + read back;
 * DISCONNECT; then CONNECT with the kernel choosing the index, kill its socket, wait for
 * LINK_DEAD on the multicast group, RECONFIGURE with a new socket and read through it;
 * DISCONNECT again.
 *
 * Prints "keel-nbd-smoke: ok: <step>" per step; on failure one
 * "KEEL-VM-FAIL <name>: <step>: <reason>" line and exit 1.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "keel/nbd_kernel.h"

/* NBD protocol constants (transmission phase; the kernel uses simple replies only). */
#define SMOKE_REQUEST_MAGIC 0x25609513u
#define SMOKE_REPLY_MAGIC 0x67446698u
#define SMOKE_CMD_READ 0
#define SMOKE_CMD_WRITE 1
#define SMOKE_CMD_DISC 2
#define SMOKE_CMD_FLUSH 3
#define SMOKE_CMD_TRIM 4
#define SMOKE_CMD_WRITE_ZEROES 6
#define SMOKE_FLAG_HAS_FLAGS (1u << 0)
#define SMOKE_FLAG_SEND_FLUSH (1u << 2)
#define SMOKE_FLAG_SEND_FUA (1u << 3)
#define SMOKE_FLAG_SEND_TRIM (1u << 5)
#define SMOKE_FLAG_SEND_WRITE_ZEROES (1u << 6)
#define SMOKE_FLAG_CAN_MULTI_CONN (1u << 8)
#define SMOKE_EINVAL 22
#define SMOKE_MAX_PAYLOAD (32u << 20)

#define SMOKE_DEFAULT_SIZE (64ull << 20)
#define SMOKE_QUEUES 2
#define SMOKE_MNT "/mnt/keel-nbd"
#define SMOKE_FILE_SIZE (4u << 20)

static const char *g_name = "nbd-smoke";
static uint8_t *g_disk;
static uint64_t g_size = SMOKE_DEFAULT_SIZE;
#define SMOKE_SIZE g_size

struct smoke_server {
	pthread_t thread;
	int fd;
	unsigned id;
	uint64_t requests;
	uint64_t reads, writes, flushes, trims, discs;
	int error; /* 0, or a negative errno that ended the loop abnormally */
	bool running;
};

static void __attribute__((format(printf, 2, 3), noreturn))
fail(const char *step, const char *fmt, ...)
{
	va_list ap;

	printf("KEEL-VM-FAIL %s: %s: ", g_name, step);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	exit(1);
}

static void ok(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void ok(const char *fmt, ...)
{
	va_list ap;

	printf("keel-nbd-smoke: ok: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* 0, 1 on EOF before any byte, or a negative errno. */
static int read_full(int fd, void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = read(fd, (char *)buf + done, len - done);

		if (n < 0) {
			if (errno == EINTR) {
				continue;
			}
			return -errno;
		}
		if (n == 0) {
			return done == 0 ? 1 : -EPIPE;
		}
		done += (size_t)n;
	}
	return 0;
}

static int writev_full(int fd, struct iovec *iov, int cnt)
{
	while (cnt > 0) {
		ssize_t n = writev(fd, iov, cnt);

		if (n < 0) {
			if (errno == EINTR) {
				continue;
			}
			return -errno;
		}
		while (cnt > 0 && (size_t)n >= iov->iov_len) {
			n -= (ssize_t)iov->iov_len;
			iov++;
			cnt--;
		}
		if (cnt > 0) {
			iov->iov_base = (char *)iov->iov_base + n;
			iov->iov_len -= (size_t)n;
		}
	}
	return 0;
}

static int discard_bytes(int fd, uint32_t len)
{
	char buf[65536];

	while (len > 0) {
		uint32_t chunk = len < sizeof(buf) ? len : (uint32_t)sizeof(buf);
		int rc = read_full(fd, buf, chunk);

		if (rc != 0) {
			return rc < 0 ? rc : -EPIPE;
		}
		len -= chunk;
	}
	return 0;
}

static void *server_main(void *arg)
{
	struct smoke_server *s = arg;
	uint8_t req[28], rep[16];

	for (;;) {
		uint32_t magic, len, err = 0;
		uint16_t type;
		uint64_t offset;
		struct iovec iov[2];
		int rc, iovcnt = 1;

		rc = read_full(s->fd, req, sizeof(req));
		if (rc == 1 || rc == -ECONNRESET || rc == -EPIPE) {
			break; /* the kernel shut the socket down */
		}
		if (rc < 0) {
			s->error = rc;
			break;
		}
		memcpy(&magic, req, 4);
		memcpy(&type, req + 6, 2);
		memcpy(&offset, req + 16, 8);
		memcpy(&len, req + 24, 4);
		magic = be32toh(magic);
		type = be16toh(type);
		offset = be64toh(offset);
		len = be32toh(len);
		if (magic != SMOKE_REQUEST_MAGIC) {
			s->error = -EPROTO;
			break;
		}
		s->requests++;
		if (type == SMOKE_CMD_DISC) {
			s->discs++;
			break;
		}
		bool in_range = offset <= SMOKE_SIZE && len <= SMOKE_SIZE - offset;

		switch (type) {
		case SMOKE_CMD_READ:
			s->reads++;
			if (!in_range || len > SMOKE_MAX_PAYLOAD) {
				err = SMOKE_EINVAL;
				break;
			}
			iov[1].iov_base = g_disk + offset;
			iov[1].iov_len = len;
			iovcnt = 2;
			break;
		case SMOKE_CMD_WRITE:
			s->writes++;
			if (!in_range || len > SMOKE_MAX_PAYLOAD) {
				rc = discard_bytes(s->fd, len);
				err = SMOKE_EINVAL;
			} else {
				rc = read_full(s->fd, g_disk + offset, len);
			}
			if (rc != 0) {
				s->error = rc < 0 ? rc : -EPIPE;
				goto out;
			}
			break;
		case SMOKE_CMD_FLUSH:
			s->flushes++;
			break;
		case SMOKE_CMD_TRIM:
		case SMOKE_CMD_WRITE_ZEROES:
			s->trims++;
			if (!in_range) {
				err = SMOKE_EINVAL;
			} else {
				memset(g_disk + offset, 0, len);
			}
			break;
		default:
			err = SMOKE_EINVAL;
			break;
		}
		uint32_t m = htobe32(SMOKE_REPLY_MAGIC), e = htobe32(err);

		memcpy(rep, &m, 4);
		memcpy(rep + 4, &e, 4);
		memcpy(rep + 8, req + 8, 8); /* cookie, echoed as is */
		if (err != 0) {
			iovcnt = 1;
		}
		iov[0].iov_base = rep;
		iov[0].iov_len = sizeof(rep);
		rc = writev_full(s->fd, iov, iovcnt);
		if (rc == -EPIPE || rc == -ECONNRESET) {
			break;
		}
		if (rc < 0) {
			s->error = rc;
			break;
		}
	}
out:
	return NULL;
}

/* Start a server on one end of a new socketpair; the other end goes to *kernel_fd. */
static void server_start(struct smoke_server *s, unsigned id, int *kernel_fd)
{
	int sv[2];

	memset(s, 0, sizeof(*s));
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
		fail("setup", "socketpair: %s", strerror(errno));
	}
	s->fd = sv[0];
	s->id = id;
	*kernel_fd = sv[1];
	if (pthread_create(&s->thread, NULL, server_main, s) != 0) {
		fail("setup", "pthread_create failed");
	}
	s->running = true;
}

static void server_join(struct smoke_server *s)
{
	if (!s->running) {
		return;
	}
	pthread_join(s->thread, NULL);
	close(s->fd);
	s->running = false;
}

static void run(const char *step, const char *cmd)
{
	double t = now_s();
	int rc = system(cmd);

	if (rc == -1 || !WIFEXITED(rc) || WEXITSTATUS(rc) != 0) {
		fail(step, "'%s' failed (status 0x%x)", cmd, rc);
	}
	ok("%s (%.2fs)", cmd, now_s() - t);
}

static uint64_t read_sysfs_u64(const char *path)
{
	char buf[64] = {0};
	int fd = open(path, O_RDONLY);
	ssize_t n;

	if (fd < 0) {
		return UINT64_MAX;
	}
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	return n > 0 ? strtoull(buf, NULL, 10) : UINT64_MAX;
}

static void fill_pattern(uint8_t *buf, size_t len, uint32_t seed)
{
	for (size_t i = 0; i < len; i += 4) {
		uint32_t v = seed ^ (uint32_t)(i * 2654435761u);

		memcpy(buf + i, &v, 4);
	}
}

static void test_status_unknown(void)
{
	char err[KEEL_NBD_KERNEL_ERRLEN] = "";
	bool connected;
	int rc;

	rc = keel_nbd_kernel_status(4000, &connected, err, sizeof(err));
	if (rc != -ENODEV) {
		fail("status-unknown", "STATUS 4000 returned %d (%s), wanted -ENODEV", rc, err);
	}
	ok("STATUS of unknown index 4000: %s", err);
}

/* Without CAP_SYS_ADMIN: STATUS works, CONNECT and DISCONNECT say what is missing. */
static void test_unprivileged(void)
{
	pid_t pid;
	int status;

	fflush(stdout);
	pid = fork();
	if (pid < 0) {
		fail("unprivileged", "fork: %s", strerror(errno));
	}
	if (pid == 0) {
		struct keel_nbd_kernel_connect_opts opts;
		char err[KEEL_NBD_KERNEL_ERRLEN] = "";
		bool connected;
		uint32_t idx;
		int sv[2], rc;

		if (setgid(65534) != 0 || setuid(65534) != 0) {
			fail("unprivileged", "setuid: %s", strerror(errno));
		}
		rc = keel_nbd_kernel_status(0, &connected, err, sizeof(err));
		if (rc != 0) {
			fail("unprivileged", "STATUS as nobody: %d (%s)", rc, err);
		}
		if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
			fail("unprivileged", "socketpair: %s", strerror(errno));
		}
		keel_nbd_kernel_connect_opts_init(&opts);
		opts.size_bytes = SMOKE_SIZE;
		opts.sock_fds = &sv[1];
		opts.num_sock_fds = 1;
		rc = keel_nbd_kernel_connect(&opts, &idx, err, sizeof(err));
		if (rc != -EPERM || strstr(err, "CAP_SYS_ADMIN") == NULL) {
			fail("unprivileged", "CONNECT as nobody: %d (%s), wanted -EPERM", rc, err);
		}
		ok("CONNECT as nobody: %s", err);
		rc = keel_nbd_kernel_disconnect(0, err, sizeof(err));
		if (rc != -EPERM) {
			fail("unprivileged", "DISCONNECT as nobody: %d (%s), wanted -EPERM", rc,
			     err);
		}
		ok("DISCONNECT as nobody: %s", err);
		_exit(0);
	}
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		exit(1); /* the child printed the failure */
	}
}

static void print_device(uint32_t index, bool connected, void *ctx)
{
	int *n = ctx;

	if (connected || index < 2) {
		printf("keel-nbd-smoke:   nbd%u connected=%d\n", index, connected);
	}
	(*n)++;
}

static void connect_dev(struct smoke_server *servers, unsigned nservers, int32_t index,
			uint64_t dead_timeout, const char *backend, uint32_t *out_index)
{
	struct keel_nbd_kernel_connect_opts opts;
	char err[KEEL_NBD_KERNEL_ERRLEN] = "";
	int fds[SMOKE_QUEUES];
	double t;
	int rc;

	for (unsigned i = 0; i < nservers; i++) {
		server_start(&servers[i], i, &fds[i]);
	}
	keel_nbd_kernel_connect_opts_init(&opts);
	opts.index = index;
	opts.size_bytes = SMOKE_SIZE;
	opts.block_size = 4096;
	opts.server_flags = SMOKE_FLAG_HAS_FLAGS | SMOKE_FLAG_SEND_FLUSH | SMOKE_FLAG_SEND_FUA |
			    SMOKE_FLAG_SEND_TRIM | SMOKE_FLAG_SEND_WRITE_ZEROES;
	if (nservers > 1) {
		opts.server_flags |= SMOKE_FLAG_CAN_MULTI_CONN;
	}
	opts.timeout_s = 60;
	opts.dead_conn_timeout_s = dead_timeout;
	opts.sock_fds = fds;
	opts.num_sock_fds = nservers;
	opts.backend_id = backend;
	t = now_s();
	rc = keel_nbd_kernel_connect(&opts, out_index, err, sizeof(err));
	if (rc != 0) {
		fail("connect", "CONNECT index %d: %d (%s)", index, rc, err);
	}
	/* The kernel holds its own references. */
	for (unsigned i = 0; i < nservers; i++) {
		close(fds[i]);
	}
	ok("CONNECT index %d -> /dev/nbd%u with %u sockets (%.3fs)", index, *out_index, nservers,
	   now_s() - t);
}

static void disconnect_dev(uint32_t index, struct smoke_server *servers, unsigned nservers)
{
	char err[KEEL_NBD_KERNEL_ERRLEN] = "";
	bool connected = true;
	double t = now_s();
	int rc;

	rc = keel_nbd_kernel_disconnect(index, err, sizeof(err));
	if (rc != 0) {
		fail("disconnect", "DISCONNECT %u: %d (%s)", index, rc, err);
	}
	for (unsigned i = 0; i < nservers; i++) {
		server_join(&servers[i]);
		if (servers[i].error != 0) {
			fail("disconnect", "server %u ended with %s", i,
			     strerror(-servers[i].error));
		}
	}
	ok("DISCONNECT /dev/nbd%u (%.3fs); servers exited", index, now_s() - t);
	rc = keel_nbd_kernel_status(index, &connected, err, sizeof(err));
	if (rc != 0 || connected) {
		fail("disconnect", "STATUS %u after DISCONNECT: rc %d connected %d (%s)", index, rc,
		     connected, err);
	}
	ok("STATUS /dev/nbd%u: disconnected", index);
}

static void test_filesystem(uint32_t index)
{
	char cmd[256], dev[32], path[64];
	uint8_t *wbuf, *rbuf;
	int fd;

	snprintf(dev, sizeof(dev), "/dev/nbd%u", index);
	snprintf(cmd, sizeof(cmd), "mkfs.ext4 -q -F -E nodiscard %s", dev);
	run("mkfs", cmd);
	mkdir(SMOKE_MNT, 0755);
	snprintf(cmd, sizeof(cmd), "mount -t ext4 %s %s", dev, SMOKE_MNT);
	run("mount", cmd);

	wbuf = malloc(SMOKE_FILE_SIZE);
	rbuf = malloc(SMOKE_FILE_SIZE);
	if (wbuf == NULL || rbuf == NULL) {
		fail("write", "out of memory");
	}
	fill_pattern(wbuf, SMOKE_FILE_SIZE, 0x6b65656c);
	snprintf(path, sizeof(path), "%s/data", SMOKE_MNT);
	fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
	if (fd < 0 || write(fd, wbuf, SMOKE_FILE_SIZE) != SMOKE_FILE_SIZE || fsync(fd) != 0) {
		fail("write", "%s: %s", path, strerror(errno));
	}
	close(fd);
	ok("wrote and fsynced %u bytes to %s", SMOKE_FILE_SIZE, path);

	/* Remount so the read-back comes from the device, not the page cache. */
	snprintf(cmd, sizeof(cmd), "umount %s", SMOKE_MNT);
	run("umount", cmd);
	run("drop-caches", "echo 3 > /proc/sys/vm/drop_caches");
	snprintf(cmd, sizeof(cmd), "mount -t ext4 -o ro %s %s", dev, SMOKE_MNT);
	run("remount", cmd);
	fd = open(path, O_RDONLY);
	if (fd < 0 || read(fd, rbuf, SMOKE_FILE_SIZE) != SMOKE_FILE_SIZE) {
		fail("read", "%s: %s", path, strerror(errno));
	}
	close(fd);
	if (memcmp(wbuf, rbuf, SMOKE_FILE_SIZE) != 0) {
		fail("read", "read-back of %s differs from what was written", path);
	}
	ok("read back %u bytes, content matches", SMOKE_FILE_SIZE);
	snprintf(cmd, sizeof(cmd), "umount %s", SMOKE_MNT);
	run("umount", cmd);
	free(wbuf);
	free(rbuf);
}

static void link_dead_cb(uint32_t index, void *ctx)
{
	int64_t *seen = ctx;

	printf("keel-nbd-smoke:   LINK_DEAD nbd%u\n", index);
	*seen = index;
}

static void test_link_dead_reconfigure(struct keel_nbd_kernel_monitor *mon)
{
	struct keel_nbd_kernel_reconfigure_opts ropts;
	char err[KEEL_NBD_KERNEL_ERRLEN] = "";
	struct smoke_server srv, srv2;
	int64_t seen = -1;
	uint32_t index;
	double t;
	int rc, kfd, fd;
	char dev[32];
	void *buf;

	/* Index chosen by the kernel; a dead-connection window lets I/O wait for RECONFIGURE. */
	connect_dev(&srv, 1, -1, 30, "keel-smoke-2", &index);

	/* Kill the link: the kernel's receive worker sees EOF and multicasts LINK_DEAD. */
	shutdown(srv.fd, SHUT_RDWR);
	server_join(&srv);
	t = now_s();
	while (seen < 0 && now_s() - t < 20) {
		struct pollfd pfd = {.fd = keel_nbd_kernel_monitor_fd(mon), .events = POLLIN};

		if (poll(&pfd, 1, 1000) > 0) {
			rc = keel_nbd_kernel_monitor_dispatch(mon, link_dead_cb, &seen);
			if (rc < 0) {
				fail("link-dead", "monitor dispatch: %s", strerror(-rc));
			}
		}
	}
	if (seen != (int64_t)index) {
		fail("link-dead", "no LINK_DEAD for nbd%u within 20s (seen %lld)", index,
		     (long long)seen);
	}
	ok("LINK_DEAD for /dev/nbd%u after %.3fs", index, now_s() - t);

	/* Wrong backend id must be refused, the right one accepted. */
	server_start(&srv2, 0, &kfd);
	keel_nbd_kernel_reconfigure_opts_init(&ropts);
	ropts.sock_fds = &kfd;
	ropts.num_sock_fds = 1;
	ropts.backend_id = "some-other-volume";
	rc = keel_nbd_kernel_reconfigure(index, &ropts, err, sizeof(err));
	if (rc != -EINVAL) {
		fail("reconfigure", "RECONFIGURE with a wrong backend id returned %d (%s)", rc,
		     err);
	}
	ok("RECONFIGURE with wrong backend id refused: %s", err);
	ropts.backend_id = "keel-smoke-2";
	rc = keel_nbd_kernel_reconfigure(index, &ropts, err, sizeof(err));
	if (rc != 0) {
		fail("reconfigure", "RECONFIGURE nbd%u: %d (%s)", index, rc, err);
	}
	close(kfd);
	ok("RECONFIGURE /dev/nbd%u with a new socket", index);

	fill_pattern(g_disk + (1u << 20), 65536, 0x72656366);
	snprintf(dev, sizeof(dev), "/dev/nbd%u", index);
	fd = open(dev, O_RDONLY | O_DIRECT);
	if (fd < 0) {
		fail("reconfigure", "open %s: %s", dev, strerror(errno));
	}
	if (posix_memalign(&buf, 4096, 65536) != 0) {
		fail("reconfigure", "out of memory");
	}
	if (pread(fd, buf, 65536, 1u << 20) != 65536) {
		fail("reconfigure", "O_DIRECT read of %s after RECONFIGURE: %s", dev,
		     strerror(errno));
	}
	if (memcmp(buf, g_disk + (1u << 20), 65536) != 0) {
		fail("reconfigure", "read through the new socket returned wrong data");
	}
	close(fd);
	free(buf);
	if (srv2.reads == 0) {
		fail("reconfigure", "the new socket served no read");
	}
	ok("read through the new socket (%" PRIu64 " reads on it)", srv2.reads);

	disconnect_dev(index, &srv2, 1);
}

/*
 * "serve [--queues N] [--size-mib M] -- CMD ARGS...": attach /dev/nbd0 to the RAM server,
 * run CMD (a benchmark, tests/bench/vm-nbd.sh), detach, exit with CMD's status.
 */
static int serve_main(int argc, char **argv)
{
	struct smoke_server servers[SMOKE_QUEUES];
	unsigned queues = SMOKE_QUEUES;
	uint32_t index;
	pid_t pid;
	int i, status;

	for (i = 2; i < argc && strcmp(argv[i], "--") != 0; i++) {
		if (strcmp(argv[i], "--queues") == 0 && i + 1 < argc) {
			queues = (unsigned)atoi(argv[++i]);
		} else if (strcmp(argv[i], "--size-mib") == 0 && i + 1 < argc) {
			g_size = strtoull(argv[++i], NULL, 10) << 20;
		} else {
			fail("serve",
			     "usage: keel-nbd-smoke serve [--queues 1|2] [--size-mib M] -- CMD...");
		}
	}
	if (i + 1 >= argc || queues < 1 || queues > SMOKE_QUEUES || g_size == 0) {
		fail("serve",
		     "usage: keel-nbd-smoke serve [--queues 1|2] [--size-mib M] -- CMD...");
	}
	g_disk = mmap(NULL, SMOKE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (g_disk == MAP_FAILED) {
		fail("serve", "mmap: %s", strerror(errno));
	}
	connect_dev(servers, queues, 0, 0, "keel-smoke-serve", &index);
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		execvp(argv[i + 1], &argv[i + 1]);
		fprintf(stderr, "exec %s: %s\n", argv[i + 1], strerror(errno));
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &status, 0) != pid) {
		fail("serve", "cannot run %s", argv[i + 1]);
	}
	for (unsigned q = 0; q < queues; q++) {
		printf("keel-nbd-smoke:   socket %u: %" PRIu64 " requests\n", q,
		       servers[q].requests);
	}
	disconnect_dev(index, servers, queues);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

int main(int argc, char **argv)
{
	struct smoke_server servers[SMOKE_QUEUES], busy_srv;
	struct keel_nbd_kernel_monitor *mon;
	char err[KEEL_NBD_KERNEL_ERRLEN] = "";
	char sysfs[128];
	uint32_t index;
	bool connected;
	int rc, ndev = 0, busy_fd;
	double t0 = now_s();

	if (getenv("KEEL_VM_NAME") != NULL) {
		g_name = getenv("KEEL_VM_NAME");
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc > 1 && strcmp(argv[1], "serve") == 0) {
		return serve_main(argc, argv);
	}

	rc = keel_nbd_kernel_probe(err, sizeof(err));
	if (rc != 0) {
		fail("probe", "%s", err);
	}
	ok("nbd netlink family present");

	test_status_unknown();

	rc = keel_nbd_kernel_monitor_open(&mon, err, sizeof(err));
	if (rc != 0) {
		fail("monitor", "%s", err);
	}
	ok("joined nbd_mc_group (fd %d)", keel_nbd_kernel_monitor_fd(mon));

	g_disk = mmap(NULL, SMOKE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (g_disk == MAP_FAILED) {
		fail("setup", "mmap %llu bytes: %s", (unsigned long long)SMOKE_SIZE,
		     strerror(errno));
	}

	connect_dev(servers, SMOKE_QUEUES, 0, 0, "keel-smoke-1", &index);
	if (index != 0) {
		fail("connect", "asked for index 0, got %u", index);
	}

	rc = keel_nbd_kernel_status(0, &connected, err, sizeof(err));
	if (rc != 0 || !connected) {
		fail("status", "STATUS 0: rc %d connected %d (%s)", rc, connected, err);
	}
	rc = keel_nbd_kernel_status_all(print_device, &ndev, err, sizeof(err));
	if (rc < 0 || ndev == 0) {
		fail("status", "STATUS all: %d (%s)", rc, err);
	}
	ok("STATUS: nbd0 connected, %d devices listed", ndev);

	snprintf(sysfs, sizeof(sysfs), "/sys/block/nbd%u/size", index);
	if (read_sysfs_u64(sysfs) != SMOKE_SIZE / 512) {
		fail("sysfs", "%s = %" PRIu64 ", wanted %llu", sysfs, read_sysfs_u64(sysfs),
		     (unsigned long long)SMOKE_SIZE / 512);
	}
	snprintf(sysfs, sizeof(sysfs), "/sys/block/nbd%u/queue/logical_block_size", index);
	if (read_sysfs_u64(sysfs) != 4096) {
		fail("sysfs", "%s = %" PRIu64 ", wanted 4096", sysfs, read_sysfs_u64(sysfs));
	}
	ok("sysfs: size %llu sectors, logical block size 4096",
	   (unsigned long long)SMOKE_SIZE / 512);

	/* A second CONNECT to the same index must be refused with EBUSY. */
	server_start(&busy_srv, 9, &busy_fd);
	{
		struct keel_nbd_kernel_connect_opts opts;
		uint32_t idx2;

		keel_nbd_kernel_connect_opts_init(&opts);
		opts.index = 0;
		opts.size_bytes = SMOKE_SIZE;
		opts.sock_fds = &busy_fd;
		opts.num_sock_fds = 1;
		rc = keel_nbd_kernel_connect(&opts, &idx2, err, sizeof(err));
		if (rc != -EBUSY) {
			fail("busy", "CONNECT to busy nbd0 returned %d (%s), wanted -EBUSY", rc,
			     err);
		}
		ok("CONNECT to busy index 0: %s", err);
	}
	close(busy_fd); /* the server sees EOF */
	server_join(&busy_srv);

	test_unprivileged();

	test_filesystem(index);

	for (unsigned i = 0; i < SMOKE_QUEUES; i++) {
		printf("keel-nbd-smoke:   socket %u: %" PRIu64 " requests (%" PRIu64
		       " reads, %" PRIu64 " writes, %" PRIu64 " flushes, %" PRIu64 " trims)\n",
		       i, servers[i].requests, servers[i].reads, servers[i].writes,
		       servers[i].flushes, servers[i].trims);
	}
	if (servers[0].requests + servers[1].requests == 0) {
		fail("serve", "no request reached the server");
	}

	disconnect_dev(index, servers, SMOKE_QUEUES);

	test_link_dead_reconfigure(mon);

	keel_nbd_kernel_monitor_close(mon);
	munmap(g_disk, SMOKE_SIZE);
	ok("all steps passed in %.2fs", now_s() - t0);
	return 0;
}
