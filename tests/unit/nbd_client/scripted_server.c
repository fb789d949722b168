/*
 * The scripted NBD server (scripted_server.h): fixed newstyle handshake with NBD_OPT_GO
 * (every other option is refused as unsupported, so the client uses simple replies),
 * then one request at a time, handled as the current mode says.
 */
#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "scripted_server.h"

#define NBD_MAGIC 0x4e42444d41474943ull
#define NBD_IHAVEOPT 0x49484156454F5054ull
#define NBD_REP_MAGIC 0x3e889045565a9ull
#define NBD_REQ_MAGIC 0x25609513u
#define NBD_SIMPLE_MAGIC 0x67446698u
#define NBD_OPT_EXPORT_NAME 1u
#define NBD_OPT_ABORT 2u
#define NBD_OPT_GO 7u
#define NBD_REP_ACK 1u
#define NBD_REP_INFO 3u
#define NBD_REP_ERR_UNSUP 0x80000001u
#define NBD_CMD_READ 0
#define NBD_CMD_WRITE 1
#define NBD_CMD_DISC 2
/* HAS_FLAGS | SEND_FLUSH | SEND_FUA | CAN_MULTI_CONN */
#define SS_TX_FLAGS (1u | 4u | 8u | (1u << 8))

static int g_listen = -1;
static pthread_t g_thread;
static atomic_int g_mode;
static atomic_bool g_stop;
static atomic_uint g_conns;
static atomic_bool g_multi_conn = true;
static uint8_t *g_data;
static uint64_t g_size;

void ss_set_mode(enum ss_mode mode)
{
	atomic_store(&g_mode, mode);
}

void ss_set_multi_conn(bool on)
{
	atomic_store(&g_multi_conn, on);
}

unsigned ss_connections(void)
{
	return atomic_load(&g_conns);
}

static bool ss_read(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len > 0) {
		ssize_t n = read(fd, p, len);

		if (n <= 0) {
			if (n < 0 && errno == EINTR) {
				continue;
			}
			return false;
		}
		p += n;
		len -= (size_t)n;
	}
	return true;
}

static bool ss_write(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

		if (n <= 0) {
			if (n < 0 && errno == EINTR) {
				continue;
			}
			return false;
		}
		p += n;
		len -= (size_t)n;
	}
	return true;
}

static bool ss_opt_reply(int fd, uint32_t opt, uint32_t type, const void *data, uint32_t len)
{
	uint8_t hdr[20];
	uint64_t magic = htobe64(NBD_REP_MAGIC);
	uint32_t o = htobe32(opt), t = htobe32(type), l = htobe32(len);

	memcpy(hdr, &magic, 8);
	memcpy(hdr + 8, &o, 4);
	memcpy(hdr + 12, &t, 4);
	memcpy(hdr + 16, &l, 4);
	return ss_write(fd, hdr, sizeof(hdr)) && (len == 0 || ss_write(fd, data, len));
}

static bool ss_handshake(int fd)
{
	uint8_t greet[18];
	uint64_t m1 = htobe64(NBD_MAGIC), m2 = htobe64(NBD_IHAVEOPT);
	uint16_t hflags = htobe16(3); /* FIXED_NEWSTYLE | NO_ZEROES */
	uint32_t cflags;

	memcpy(greet, &m1, 8);
	memcpy(greet + 8, &m2, 8);
	memcpy(greet + 16, &hflags, 2);
	if (!ss_write(fd, greet, sizeof(greet)) || !ss_read(fd, &cflags, 4)) {
		return false;
	}
	for (;;) {
		uint8_t hdr[16];
		uint32_t opt, len;
		uint8_t *data;

		if (!ss_read(fd, hdr, sizeof(hdr))) {
			return false;
		}
		memcpy(&opt, hdr + 8, 4);
		memcpy(&len, hdr + 12, 4);
		opt = be32toh(opt);
		len = be32toh(len);
		if (len > 65536) {
			return false;
		}
		data = malloc(len + 1);
		if (data == NULL || !ss_read(fd, data, len)) {
			free(data);
			return false;
		}
		free(data);
		if (opt == NBD_OPT_GO) {
			uint8_t info[12];
			uint16_t type = 0;
			uint16_t flags = htobe16(atomic_load(&g_multi_conn)
							 ? SS_TX_FLAGS
							 : SS_TX_FLAGS & ~(1u << 8));
			uint64_t size = htobe64(g_size);

			memcpy(info, &type, 2);
			memcpy(info + 2, &size, 8);
			memcpy(info + 10, &flags, 2);
			return ss_opt_reply(fd, opt, NBD_REP_INFO, info, sizeof(info)) &&
			       ss_opt_reply(fd, opt, NBD_REP_ACK, NULL, 0);
		}
		if (opt == NBD_OPT_ABORT || opt == NBD_OPT_EXPORT_NAME) {
			return false;
		}
		if (!ss_opt_reply(fd, opt, NBD_REP_ERR_UNSUP, NULL, 0)) {
			return false;
		}
	}
}

static bool ss_reply(int fd, uint32_t magic, uint32_t err, const uint8_t *cookie, const void *data,
		     uint32_t len)
{
	uint8_t hdr[16];
	uint32_t m = htobe32(magic), e = htobe32(err);

	memcpy(hdr, &m, 4);
	memcpy(hdr + 4, &e, 4);
	memcpy(hdr + 8, cookie, 8);
	return ss_write(fd, hdr, sizeof(hdr)) && (len == 0 || ss_write(fd, data, len));
}

static void ss_serve(int fd)
{
	static uint8_t buf[1u << 20];

	for (;;) {
		uint8_t req[28];
		uint16_t type;
		uint64_t off;
		uint32_t len, magic;
		uint8_t cookie[8];
		int mode;

		if (!ss_read(fd, req, sizeof(req))) {
			return;
		}
		memcpy(&magic, req, 4);
		memcpy(&type, req + 6, 2);
		memcpy(cookie, req + 8, 8);
		memcpy(&off, req + 16, 8);
		memcpy(&len, req + 24, 4);
		type = be16toh(type);
		off = be64toh(off);
		len = be32toh(len);
		if (be32toh(magic) != NBD_REQ_MAGIC || len > sizeof(buf) || off > g_size ||
		    len > g_size - off) {
			return;
		}
		if (type == NBD_CMD_WRITE && !ss_read(fd, buf, len)) {
			return;
		}
		if (type == NBD_CMD_DISC) {
			return;
		}
		mode = atomic_load(&g_mode);
		if (mode == SS_SILENT) {
			continue;
		}
		if (mode == SS_CLOSE) {
			return;
		}
		if (mode == SS_BAD_COOKIE) {
			cookie[0] ^= 0x5a;
			cookie[7] ^= 0xa5;
		}
		if (type == NBD_CMD_WRITE) {
			memcpy(g_data + off, buf, len);
		}
		if (!ss_reply(fd, mode == SS_BAD_MAGIC ? 0x12345678u : NBD_SIMPLE_MAGIC, 0, cookie,
			      g_data + off, type == NBD_CMD_READ ? len : 0)) {
			return;
		}
	}
}

static void *ss_main(void *arg)
{
	while (!atomic_load(&g_stop)) {
		struct pollfd pfd = {.fd = g_listen, .events = POLLIN};
		int fd;

		if (poll(&pfd, 1, 50) <= 0) {
			continue;
		}
		fd = accept(g_listen, NULL, NULL);
		if (fd < 0) {
			continue;
		}
		atomic_fetch_add(&g_conns, 1);
		if (ss_handshake(fd)) {
			ss_serve(fd);
		}
		close(fd);
	}
	return arg;
}

int ss_start(const char *path, uint64_t size)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};

	g_data = calloc(1, size);
	if (g_data == NULL) {
		return -ENOMEM;
	}
	g_size = size;
	atomic_store(&g_stop, false);
	atomic_store(&g_mode, SS_ANSWER);
	strncpy(sa.sun_path, path, sizeof(sa.sun_path) - 1);
	unlink(path);
	g_listen = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (g_listen < 0 || bind(g_listen, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
	    listen(g_listen, 8) != 0 || pthread_create(&g_thread, NULL, ss_main, NULL) != 0) {
		int e = errno;

		if (g_listen >= 0) {
			close(g_listen);
		}
		free(g_data);
		return -e;
	}
	return 0;
}

void ss_stop(void)
{
	atomic_store(&g_stop, true);
	pthread_join(g_thread, NULL);
	close(g_listen);
	g_listen = -1;
	free(g_data);
	g_data = NULL;
}
