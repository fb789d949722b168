/*
 * Unit tests of the NBD parsers that run without devices or a daemon (and are
 * fuzzed, tests/fuzz/): the kernel's netlink STATUS replies, the kernel devices
 * document keeld hands back at restart, and TLS credentials (the psktool key file).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <linux/nbd-netlink.h>
#include <netlink/genl/genl.h>

#include "nbd/kernel/nbd_netlink.h"
#include "nbd/nbd_internal.h"
#include "nbd/nbd_tls.h"
#include "keel/log.h"
#include "ut_cunit.h"

struct seen {
	uint32_t index[8];
	bool connected[8];
	int n;
};

static void seen_cb(uint32_t index, bool connected, void *ctx)
{
	struct seen *s = ctx;

	if (s->n < 8) {
		s->index[s->n] = index;
		s->connected[s->n] = connected;
	}
	s->n++;
}

/* Append one attribute (header, payload, padding) at \p p; \return its aligned size. */
static size_t put_attr(uint8_t *p, uint16_t type, const void *payload, uint16_t len)
{
	struct nlattr *a = (struct nlattr *)p;

	a->nla_len = (uint16_t)(NLA_HDRLEN + len);
	a->nla_type = type;
	memcpy(p + NLA_HDRLEN, payload, len);
	memset(p + NLA_HDRLEN + len, 0, NLA_ALIGN(len) - len);
	return NLA_HDRLEN + NLA_ALIGN(len);
}

static size_t put_device(uint8_t *p, uint32_t index, uint8_t connected)
{
	uint8_t inner[64];
	size_t n = 0;

	n += put_attr(inner + n, NBD_DEVICE_INDEX, &index, sizeof(index));
	n += put_attr(inner + n, NBD_DEVICE_CONNECTED, &connected, sizeof(connected));
	return put_attr(p, NBD_DEVICE_ITEM | NLA_F_NESTED, inner, (uint16_t)n);
}

/* One STATUS reply listing \p count devices (index i*3, connected when i is even). */
static size_t build_reply(uint8_t *buf, int count)
{
	struct nlmsghdr *nlh = (struct nlmsghdr *)buf;
	struct genlmsghdr *gh = (struct genlmsghdr *)(buf + NLMSG_HDRLEN);
	uint8_t list[256];
	size_t n = 0, len;

	for (int i = 0; i < count; i++) {
		n += put_device(list + n, (uint32_t)i * 3, i % 2 == 0);
	}
	memset(gh, 0, GENL_HDRLEN);
	gh->cmd = NBD_CMD_STATUS;
	gh->version = 1;
	len = NLMSG_HDRLEN + GENL_HDRLEN;
	len += put_attr(buf + len, NBD_ATTR_DEVICE_LIST | NLA_F_NESTED, list, (uint16_t)n);
	nlh->nlmsg_len = (uint32_t)len;
	nlh->nlmsg_type = 0x20; /* a generic netlink family id */
	nlh->nlmsg_flags = 0;
	nlh->nlmsg_seq = 1;
	nlh->nlmsg_pid = 0;
	return len;
}

static void test_status_decode(void)
{
	uint8_t buf[1024] __attribute__((aligned(8)));
	struct seen s = {0};
	size_t len = build_reply(buf, 2);

	CU_ASSERT_EQUAL(nbd_netlink_status_decode(buf, len, seen_cb, &s), 2);
	CU_ASSERT_EQUAL(s.n, 2);
	CU_ASSERT_EQUAL(s.index[0], 0);
	CU_ASSERT_TRUE(s.connected[0]);
	CU_ASSERT_EQUAL(s.index[1], 3);
	CU_ASSERT_FALSE(s.connected[1]);

	/* Every truncation is either ignored (an incomplete message) or -EPROTO. */
	for (size_t cut = 0; cut < len; cut++) {
		int rc;

		memset(&s, 0, sizeof(s));
		rc = nbd_netlink_status_decode(buf, cut, seen_cb, &s);
		CU_ASSERT(rc == -EPROTO || (rc >= 0 && rc == s.n));
	}
}

static void test_status_decode_malformed(void)
{
	uint8_t buf[1024] __attribute__((aligned(8)));
	struct seen s = {0};
	size_t len = build_reply(buf, 1);

	/* A device item without its index is a protocol error, not a device 0. */
	buf[NLMSG_HDRLEN + GENL_HDRLEN + 2 * NLA_HDRLEN + 2] = 0x7f; /* index attr type */
	CU_ASSERT_EQUAL(nbd_netlink_status_decode(buf, len, seen_cb, &s), -EPROTO);
	CU_ASSERT_EQUAL(s.n, 0);
	/* No list at all: no devices. */
	len = build_reply(buf, 0);
	CU_ASSERT_EQUAL(nbd_netlink_status_decode(buf, len, seen_cb, &s), 0);
}

static void test_disk_records_parse(void)
{
	json_t *doc;

	doc = json_loads("{\"version\": 1, \"disks\": [{\"index\": 0, \"bdev_name\": \"v\", "
			 "\"backend_id\": \"keel:v\"}, {\"index\": -1}, {\"index\": 2147483648, "
			 "\"bdev_name\": \"x\", \"backend_id\": \"y\"}]}",
			 0, NULL);
	CU_ASSERT_EQUAL(nbd_disk_records_parse(doc), 1); /* the malformed two skipped */
	json_decref(doc);
	doc = json_loads("{\"version\": 2, \"disks\": []}", 0, NULL);
	CU_ASSERT_EQUAL(nbd_disk_records_parse(doc), -EINVAL);
	json_decref(doc);
	doc = json_loads("[]", 0, NULL);
	CU_ASSERT_EQUAL(nbd_disk_records_parse(doc), -EINVAL);
	json_decref(doc);
	CU_ASSERT_EQUAL(nbd_disk_records_parse(NULL), 0);
}

/* Load a PSK file holding \p text; \return what nbd_tls_creds_load returned. */
static int load_psk(const char *text, char *err, size_t err_len)
{
	char path[] = "/tmp/nbd_parse_ut_psk.XXXXXX";
	struct nbd_tls_creds *creds = NULL;
	int fd = mkstemp(path), rc;

	CU_ASSERT_FATAL(fd >= 0);
	CU_ASSERT_FATAL(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
	close(fd);
	err[0] = '\0';
	rc = nbd_tls_creds_load(path, NULL, &creds, err, err_len);
	unlink(path);
	if (rc == 0) {
		CU_ASSERT_STRING_EQUAL(nbd_tls_creds_kind(creds), "psk");
		nbd_tls_creds_free(creds);
	}
	return rc;
}

static void test_tls_psk_file(void)
{
	struct nbd_tls_creds *creds = NULL;
	char err[512];

	/* psktool's format, CRLF and blank lines tolerated, several users. */
	CU_ASSERT_EQUAL(load_psk("keel:00112233445566778899AABBccddeeff\n", err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(load_psk("a:0011\r\n\nb:ff\n", err, sizeof(err)), 0);
	/* Each malformed file is refused with the line named. */
	CU_ASSERT_EQUAL(load_psk("keel:0g\n", err, sizeof(err)), -EKEYREJECTED);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "line 1: the key is not hexadecimal"));
	CU_ASSERT_EQUAL(load_psk("ok:00\nkeel:001\n", err, sizeof(err)), -EKEYREJECTED);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "line 2"));
	CU_ASSERT_EQUAL(load_psk("no-colon\n", err, sizeof(err)), -EKEYREJECTED);
	CU_ASSERT_EQUAL(load_psk(":00\n", err, sizeof(err)), -EKEYREJECTED);
	CU_ASSERT_EQUAL(load_psk("keel:\n", err, sizeof(err)), -EKEYREJECTED);
	CU_ASSERT_EQUAL(load_psk("\n\n", err, sizeof(err)), -EKEYREJECTED);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "holds no key"));
	/* Missing files and directories say so; nothing is returned. */
	CU_ASSERT_EQUAL(nbd_tls_creds_load("/nonexistent/keys.psk", NULL, &creds, err, sizeof(err)),
			-ENOENT);
	CU_ASSERT_EQUAL(nbd_tls_creds_load(NULL, "/nonexistent", &creds, err, sizeof(err)),
			-ENOENT);
	CU_ASSERT_EQUAL(nbd_tls_creds_load(NULL, "/tmp", &creds, err, sizeof(err)), -ENOENT);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "server-cert.pem"));
	CU_ASSERT_EQUAL(nbd_tls_creds_load(NULL, NULL, &creds, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NULL(creds);
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"status_decode", test_status_decode},
		{"status_decode_malformed", test_status_decode_malformed},
		{"disk_records_parse", test_disk_records_parse},
		{"tls_psk_file", test_tls_psk_file},
		{NULL, NULL},
	};

	keel_log_set_level(KEEL_LOG_ERROR);
	return ut_cunit_run("nbd_parse", tests);
}
