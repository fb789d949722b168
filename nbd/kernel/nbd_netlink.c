/*
 * Kernel NBD control over generic netlink (libnl-genl-3).
 *
 * Every request opens its own netlink socket: the calls are rare (attach, detach,
 * reattach), they run on the blocking-work pool, and a private socket makes concurrent calls
 * from several pool threads safe without locks. The kernel executes a generic netlink
 * "doit" synchronously inside our sendmsg(), so a slow command (DISCONNECT flushing its
 * workqueue) blocks in the send, not in the receive: a receive timeout would not help and
 * would only leave the outcome unknown, hence none is set.
 *
 * Attribute and command numbers come from the kernel uapi header <linux/nbd-netlink.h>.
 */
#include "nbd_netlink.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/nbd-netlink.h>
#include <netlink/errno.h>
#include <netlink/genl/ctrl.h>
#include <netlink/genl/genl.h>
#include <netlink/netlink.h>
#include <netlink/socket.h>

#define NBD_NETLINK_NO_MODULE_MSG                                                            \
	"nbd netlink family not found: the nbd kernel module is not loaded (modprobe nbd); " \
	"socket exports work without it"

static void __attribute__((format(printf, 3, 4)))
set_err(char *err, size_t err_len, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || err_len == 0) {
		return;
	}
	va_start(ap, fmt);
	vsnprintf(err, err_len, fmt, ap);
	va_end(ap);
}

int nbd_netlink_errno_from_nl(int nlerr)
{
	switch (nlerr < 0 ? -nlerr : nlerr) {
	case NLE_SUCCESS:
		return 0;
	case NLE_INTR:
		return -EINTR;
	case NLE_BAD_SOCK:
		return -EBADF;
	case NLE_AGAIN:
		return -EAGAIN;
	case NLE_NOMEM:
		return -ENOMEM;
	case NLE_EXIST:
		return -EEXIST;
	case NLE_INVAL:
	case NLE_MISSING_ATTR:
	case NLE_ATTRSIZE:
		return -EINVAL;
	case NLE_RANGE:
		return -ERANGE;
	case NLE_MSGSIZE:
	case NLE_MSG_OVERFLOW:
		return -EMSGSIZE;
	case NLE_OPNOTSUPP:
	case NLE_MSGTYPE_NOSUPPORT:
		return -EOPNOTSUPP;
	case NLE_AF_NOSUPPORT:
		return -EAFNOSUPPORT;
	case NLE_OBJ_NOTFOUND:
	case NLE_NODEV:
		return -ENODEV;
	case NLE_BUSY:
		return -EBUSY;
	case NLE_NOACCESS:
		return -EACCES;
	case NLE_PERM:
		return -EPERM;
	case NLE_SEQ_MISMATCH:
	case NLE_MSG_TRUNC:
	case NLE_MSG_TOOSHORT:
	case NLE_PARSE_ERR:
	case NLE_PROTO_MISMATCH:
		return -EPROTO;
	default:
		return -EIO;
	}
}

static bool is_pow2(uint64_t v)
{
	return v != 0 && (v & (v - 1)) == 0;
}

static int check_block_size(uint32_t bs, char *err, size_t err_len)
{
	if (bs != 0 && (!is_pow2(bs) || bs < 512 || bs > 65536)) {
		set_err(err, err_len, "block size %u: must be a power of two from 512 to 65536",
			bs);
		return -EINVAL;
	}
	return 0;
}

static int check_fds(const int *fds, uint32_t n, bool required, char *err, size_t err_len)
{
	uint32_t i;

	if (n == 0) {
		if (required) {
			set_err(err, err_len, "at least one socket is needed");
			return -EINVAL;
		}
		return 0;
	}
	if (fds == NULL || n > KEEL_NBD_KERNEL_MAX_SOCKETS) {
		set_err(err, err_len, "%u sockets: must be 1 to %u", n,
			KEEL_NBD_KERNEL_MAX_SOCKETS);
		return -EINVAL;
	}
	for (i = 0; i < n; i++) {
		if (fds[i] < 0) {
			set_err(err, err_len, "socket %u: invalid fd %d", i, fds[i]);
			return -EINVAL;
		}
	}
	return 0;
}

static int check_backend_id(const char *id, char *err, size_t err_len)
{
	/* The kernel copies it into a sysfs attribute; keep it a short printable line. */
	if (id != NULL && (id[0] == '\0' || strlen(id) > 255 || strchr(id, '\n') != NULL)) {
		set_err(err, err_len, "backend id: must be 1 to 255 characters without newline");
		return -EINVAL;
	}
	return 0;
}

int nbd_netlink_connect_opts_check(const struct keel_nbd_kernel_connect_opts *opts, char *err,
				   size_t err_len)
{
	int rc;

	if (opts == NULL) {
		set_err(err, err_len, "no options");
		return -EINVAL;
	}
	if (opts->index < -1) {
		set_err(err, err_len, "index %d: must be >= 0, or -1 for any", (int)opts->index);
		return -EINVAL;
	}
	if (opts->size_bytes == 0) {
		set_err(err, err_len, "size must be > 0");
		return -EINVAL;
	}
	rc = check_block_size(opts->block_size, err, err_len);
	if (rc != 0) {
		return rc;
	}
	if (opts->size_bytes %
	    (opts->block_size ? opts->block_size : KEEL_NBD_KERNEL_DEFAULT_BLOCK_SIZE)) {
		set_err(err, err_len, "size %llu is not a multiple of the block size %u",
			(unsigned long long)opts->size_bytes,
			opts->block_size ? opts->block_size : KEEL_NBD_KERNEL_DEFAULT_BLOCK_SIZE);
		return -EINVAL;
	}
	rc = check_fds(opts->sock_fds, opts->num_sock_fds, true, err, err_len);
	if (rc != 0) {
		return rc;
	}
	if (opts->num_sock_fds > 1 && !(opts->server_flags & NBD_NETLINK_FLAG_CAN_MULTI_CONN)) {
		set_err(err, err_len,
			"%u sockets need the CAN_MULTI_CONN server flag (the kernel refuses "
			"otherwise)",
			opts->num_sock_fds);
		return -EINVAL;
	}
	if (opts->client_flags & ~(KEEL_NBD_KERNEL_CFLAG_DESTROY_ON_DISCONNECT |
				   KEEL_NBD_KERNEL_CFLAG_DISCONNECT_ON_CLOSE)) {
		set_err(err, err_len, "unknown client flags 0x%llx",
			(unsigned long long)opts->client_flags);
		return -EINVAL;
	}
	return check_backend_id(opts->backend_id, err, err_len);
}

int nbd_netlink_reconfigure_opts_check(const struct keel_nbd_kernel_reconfigure_opts *opts,
				       char *err, size_t err_len)
{
	int rc;

	if (opts == NULL) {
		set_err(err, err_len, "no options");
		return -EINVAL;
	}
	rc = check_block_size(opts->block_size, err, err_len);
	if (rc != 0) {
		return rc;
	}
	rc = check_fds(opts->sock_fds, opts->num_sock_fds, false, err, err_len);
	if (rc != 0) {
		return rc;
	}
	if (opts->timeout_s < -1 || opts->dead_conn_timeout_s < -1 || opts->client_flags < -1) {
		set_err(err, err_len,
			"timeouts and client flags must be >= 0, or -1 for unchanged");
		return -EINVAL;
	}
	if (opts->client_flags > 0 &&
	    ((uint64_t)opts->client_flags & ~(KEEL_NBD_KERNEL_CFLAG_DESTROY_ON_DISCONNECT |
					      KEEL_NBD_KERNEL_CFLAG_DISCONNECT_ON_CLOSE))) {
		set_err(err, err_len, "unknown client flags 0x%llx",
			(unsigned long long)opts->client_flags);
		return -EINVAL;
	}
	return check_backend_id(opts->backend_id, err, err_len);
}

static int put_header(struct nl_msg *msg, int family, uint8_t cmd)
{
	if (genlmsg_put(msg, NL_AUTO_PORT, NL_AUTO_SEQ, family, 0, 0, cmd, NBD_GENL_VERSION) ==
	    NULL) {
		return -ENOMEM;
	}
	return 0;
}

static int put_sockets(struct nl_msg *msg, const int *fds, uint32_t n)
{
	struct nlattr *socks, *item;
	uint32_t i;

	socks = nla_nest_start(msg, NBD_ATTR_SOCKETS);
	if (socks == NULL) {
		return -ENOMEM;
	}
	for (i = 0; i < n; i++) {
		item = nla_nest_start(msg, NBD_SOCK_ITEM);
		if (item == NULL) {
			return -ENOMEM;
		}
		if (nla_put_u32(msg, NBD_SOCK_FD, (uint32_t)fds[i]) < 0) {
			return -ENOMEM;
		}
		nla_nest_end(msg, item);
	}
	nla_nest_end(msg, socks);
	return 0;
}

int nbd_netlink_put_connect(struct nl_msg *msg, int family,
			    const struct keel_nbd_kernel_connect_opts *opts)
{
	uint32_t bs = opts->block_size ? opts->block_size : KEEL_NBD_KERNEL_DEFAULT_BLOCK_SIZE;

	if (put_header(msg, family, NBD_CMD_CONNECT) != 0) {
		return -ENOMEM;
	}
	if (opts->index >= 0 && nla_put_u32(msg, NBD_ATTR_INDEX, (uint32_t)opts->index) < 0) {
		return -ENOMEM;
	}
	if (nla_put_u64(msg, NBD_ATTR_SIZE_BYTES, opts->size_bytes) < 0 ||
	    nla_put_u64(msg, NBD_ATTR_BLOCK_SIZE_BYTES, bs) < 0 ||
	    nla_put_u64(msg, NBD_ATTR_SERVER_FLAGS, opts->server_flags) < 0) {
		return -ENOMEM;
	}
	if (opts->client_flags != 0 &&
	    nla_put_u64(msg, NBD_ATTR_CLIENT_FLAGS, opts->client_flags) < 0) {
		return -ENOMEM;
	}
	if (opts->timeout_s != 0 && nla_put_u64(msg, NBD_ATTR_TIMEOUT, opts->timeout_s) < 0) {
		return -ENOMEM;
	}
	if (opts->dead_conn_timeout_s != 0 &&
	    nla_put_u64(msg, NBD_ATTR_DEAD_CONN_TIMEOUT, opts->dead_conn_timeout_s) < 0) {
		return -ENOMEM;
	}
	if (opts->backend_id != NULL &&
	    nla_put_string(msg, NBD_ATTR_BACKEND_IDENTIFIER, opts->backend_id) < 0) {
		return -ENOMEM;
	}
	return put_sockets(msg, opts->sock_fds, opts->num_sock_fds);
}

int nbd_netlink_put_reconfigure(struct nl_msg *msg, int family, uint32_t index,
				const struct keel_nbd_kernel_reconfigure_opts *opts)
{
	if (put_header(msg, family, NBD_CMD_RECONFIGURE) != 0 ||
	    nla_put_u32(msg, NBD_ATTR_INDEX, index) < 0) {
		return -ENOMEM;
	}
	if (opts->size_bytes != 0 && nla_put_u64(msg, NBD_ATTR_SIZE_BYTES, opts->size_bytes) < 0) {
		return -ENOMEM;
	}
	if (opts->block_size != 0 &&
	    nla_put_u64(msg, NBD_ATTR_BLOCK_SIZE_BYTES, opts->block_size) < 0) {
		return -ENOMEM;
	}
	if (opts->timeout_s >= 0 &&
	    nla_put_u64(msg, NBD_ATTR_TIMEOUT, (uint64_t)opts->timeout_s) < 0) {
		return -ENOMEM;
	}
	if (opts->dead_conn_timeout_s >= 0 &&
	    nla_put_u64(msg, NBD_ATTR_DEAD_CONN_TIMEOUT, (uint64_t)opts->dead_conn_timeout_s) < 0) {
		return -ENOMEM;
	}
	if (opts->client_flags >= 0 &&
	    nla_put_u64(msg, NBD_ATTR_CLIENT_FLAGS, (uint64_t)opts->client_flags) < 0) {
		return -ENOMEM;
	}
	if (opts->backend_id != NULL &&
	    nla_put_string(msg, NBD_ATTR_BACKEND_IDENTIFIER, opts->backend_id) < 0) {
		return -ENOMEM;
	}
	if (opts->num_sock_fds > 0) {
		return put_sockets(msg, opts->sock_fds, opts->num_sock_fds);
	}
	return 0;
}

int nbd_netlink_put_disconnect(struct nl_msg *msg, int family, uint32_t index)
{
	if (put_header(msg, family, NBD_CMD_DISCONNECT) != 0 ||
	    nla_put_u32(msg, NBD_ATTR_INDEX, index) < 0) {
		return -ENOMEM;
	}
	return 0;
}

int nbd_netlink_put_status(struct nl_msg *msg, int family, int64_t index)
{
	if (put_header(msg, family, NBD_CMD_STATUS) != 0) {
		return -ENOMEM;
	}
	if (index >= 0 && nla_put_u32(msg, NBD_ATTR_INDEX, (uint32_t)index) < 0) {
		return -ENOMEM;
	}
	return 0;
}

/* ------------------------------------------------------------------------------------ */
/* One request/reply exchange                                                           */
/* ------------------------------------------------------------------------------------ */

struct nbd_request {
	const char *what; /* "CONNECT", ... for messages */
	int kernel_errno; /* negative errno from an NLMSG_ERROR, 0 if none */
	bool acked;
	/* Reply parsing; NULL when the command has no reply payload. */
	int (*on_reply)(struct nlattr **tb, void *arg);
	void *reply_arg;
	int reply_rc;
};

static struct nla_policy g_attr_policy[NBD_ATTR_MAX + 1] = {
	[NBD_ATTR_INDEX] = {.type = NLA_U32},
	[NBD_ATTR_DEVICE_LIST] = {.type = NLA_NESTED},
};

static struct nla_policy g_device_policy[NBD_DEVICE_ATTR_MAX + 1] = {
	[NBD_DEVICE_INDEX] = {.type = NLA_U32},
	[NBD_DEVICE_CONNECTED] = {.type = NLA_U8},
};

/* One reply message: parse its attributes and hand them to the command's parser. */
static int request_valid_cb_hdr(struct nlmsghdr *nlh, struct nbd_request *req)
{
	struct nlattr *tb[NBD_ATTR_MAX + 1];
	int rc;

	if (req->on_reply == NULL) {
		return NL_OK;
	}
	rc = genlmsg_parse(nlh, 0, tb, NBD_ATTR_MAX, g_attr_policy);
	if (rc < 0) {
		req->reply_rc = -EPROTO;
		return NL_OK;
	}
	rc = req->on_reply(tb, req->reply_arg);
	if (rc != 0 && req->reply_rc == 0) {
		req->reply_rc = rc;
	}
	return NL_OK;
}

static int request_valid_cb(struct nl_msg *msg, void *arg)
{
	return request_valid_cb_hdr(nlmsg_hdr(msg), arg);
}

static int request_ack_cb(struct nl_msg *msg, void *arg)
{
	struct nbd_request *req = arg;

	req->acked = true;
	return NL_STOP;
}

static int request_err_cb(struct sockaddr_nl *nla, struct nlmsgerr *e, void *arg)
{
	struct nbd_request *req = arg;

	req->kernel_errno = e->error < 0 ? e->error : -e->error;
	return NL_STOP;
}

/* Connect a generic netlink socket and resolve the nbd family. */
static int nbd_open(struct nl_sock **out, int *family, char *err, size_t err_len)
{
	struct nl_sock *sk;
	int rc;

	sk = nl_socket_alloc();
	if (sk == NULL) {
		set_err(err, err_len, "out of memory for a netlink socket");
		return -ENOMEM;
	}
	rc = genl_connect(sk);
	if (rc < 0) {
		set_err(err, err_len, "cannot open a generic netlink socket: %s", nl_geterror(rc));
		rc = nbd_netlink_errno_from_nl(rc);
		goto out_free_sock;
	}
	rc = genl_ctrl_resolve(sk, NBD_GENL_FAMILY_NAME);
	if (rc < 0) {
		if (rc == -NLE_OBJ_NOTFOUND) {
			set_err(err, err_len, NBD_NETLINK_NO_MODULE_MSG);
			rc = -ENODEV;
		} else {
			set_err(err, err_len, "cannot resolve the nbd netlink family: %s",
				nl_geterror(rc));
			rc = nbd_netlink_errno_from_nl(rc);
		}
		goto out_free_sock;
	}
	*family = rc;
	*out = sk;
	return 0;

out_free_sock:
	nl_socket_free(sk);
	return rc;
}

/* Explain a kernel error of a command; returns \p rc. */
static int explain_kernel_errno(const char *what, int64_t index, int rc, char *err, size_t err_len)
{
	char dev[32];

	if (index >= 0) {
		snprintf(dev, sizeof(dev), "/dev/nbd%lld", (long long)index);
	} else {
		snprintf(dev, sizeof(dev), "nbd");
	}
	switch (rc) {
	case -EPERM:
	case -EACCES:
		set_err(err, err_len, "nbd %s: %s (needs root or CAP_SYS_ADMIN)", what,
			strerror(-rc));
		break;
	case -EBUSY:
		set_err(err, err_len, "nbd %s: %s is already in use", what, dev);
		break;
	default:
		set_err(err, err_len, "nbd %s on %s refused by the kernel: %s", what, dev,
			strerror(-rc));
		break;
	}
	return rc;
}

/* Send \p msg and wait for its ACK; reply payloads go to req->on_reply. */
static int nbd_transact(struct nl_sock *sk, struct nl_msg *msg, struct nbd_request *req,
			int64_t index, char *err, size_t err_len)
{
	struct nl_cb *cb;
	int rc;

	cb = nl_cb_alloc(NL_CB_DEFAULT);
	if (cb == NULL) {
		set_err(err, err_len, "out of memory for netlink callbacks");
		return -ENOMEM;
	}
	nl_cb_set(cb, NL_CB_VALID, NL_CB_CUSTOM, request_valid_cb, req);
	nl_cb_set(cb, NL_CB_ACK, NL_CB_CUSTOM, request_ack_cb, req);
	nl_cb_err(cb, NL_CB_CUSTOM, request_err_cb, req);

	rc = nl_send_auto(sk, msg);
	if (rc < 0) {
		set_err(err, err_len, "nbd %s: sending the netlink request failed: %s", req->what,
			nl_geterror(rc));
		rc = nbd_netlink_errno_from_nl(rc);
		goto out_put_cb;
	}
	rc = 0;
	while (!req->acked && req->kernel_errno == 0) {
		rc = nl_recvmsgs(sk, cb);
		if (rc < 0) {
			break;
		}
		rc = 0;
	}
	if (req->kernel_errno != 0) {
		rc = explain_kernel_errno(req->what, index, req->kernel_errno, err, err_len);
	} else if (rc < 0) {
		set_err(err, err_len, "nbd %s: receiving the netlink reply failed: %s", req->what,
			nl_geterror(rc));
		rc = nbd_netlink_errno_from_nl(rc);
	} else if (req->reply_rc != 0) {
		set_err(err, err_len, "nbd %s: malformed reply from the kernel", req->what);
		rc = req->reply_rc;
	}

out_put_cb:
	nl_cb_put(cb);
	return rc;
}

typedef int (*nbd_build_fn)(struct nl_msg *msg, int family, const void *arg);

/* Open, build, send, wait, close: the whole life of one synchronous command. */
static int nbd_command(struct nbd_request *req, nbd_build_fn build, const void *build_arg,
		       int64_t index, char *err, size_t err_len)
{
	struct nl_sock *sk;
	struct nl_msg *msg;
	int family, rc;

	rc = nbd_open(&sk, &family, err, err_len);
	if (rc != 0) {
		return rc;
	}
	msg = nlmsg_alloc();
	if (msg == NULL) {
		set_err(err, err_len, "out of memory for a netlink message");
		rc = -ENOMEM;
		goto out_free_sock;
	}
	rc = build(msg, family, build_arg);
	if (rc != 0) {
		set_err(err, err_len, "nbd %s: netlink message too large", req->what);
		goto out_free_msg;
	}
	rc = nbd_transact(sk, msg, req, index, err, err_len);

out_free_msg:
	nlmsg_free(msg);
out_free_sock:
	nl_socket_free(sk);
	return rc;
}

/* ------------------------------------------------------------------------------------ */
/* Public API                                                                            */
/* ------------------------------------------------------------------------------------ */

void keel_nbd_kernel_connect_opts_init(struct keel_nbd_kernel_connect_opts *opts)
{
	memset(opts, 0, sizeof(*opts));
	opts->index = -1;
}

void keel_nbd_kernel_reconfigure_opts_init(struct keel_nbd_kernel_reconfigure_opts *opts)
{
	memset(opts, 0, sizeof(*opts));
	opts->timeout_s = -1;
	opts->dead_conn_timeout_s = -1;
	opts->client_flags = -1;
}

static int build_connect(struct nl_msg *msg, int family, const void *arg)
{
	return nbd_netlink_put_connect(msg, family, arg);
}

struct connect_reply {
	bool have_index;
	uint32_t index;
};

static int connect_on_reply(struct nlattr **tb, void *arg)
{
	struct connect_reply *r = arg;

	if (tb[NBD_ATTR_INDEX] == NULL) {
		return -EPROTO;
	}
	r->index = nla_get_u32(tb[NBD_ATTR_INDEX]);
	r->have_index = true;
	return 0;
}

int keel_nbd_kernel_connect(const struct keel_nbd_kernel_connect_opts *opts, uint32_t *index,
			    char *err, size_t err_len)
{
	struct connect_reply reply = {0};
	struct nbd_request req = {
		.what = "CONNECT", .on_reply = connect_on_reply, .reply_arg = &reply};
	int rc;

	rc = nbd_netlink_connect_opts_check(opts, err, err_len);
	if (rc != 0) {
		return rc;
	}
	rc = nbd_command(&req, build_connect, opts, opts->index, err, err_len);
	if (rc != 0) {
		return rc;
	}
	if (reply.have_index) {
		*index = reply.index;
	} else if (opts->index >= 0) {
		/* Kernels always reply with the index; be lenient if one does not. */
		*index = (uint32_t)opts->index;
	} else {
		set_err(err, err_len, "nbd CONNECT: the kernel did not say which device it used");
		return -EPROTO;
	}
	return 0;
}

struct index_arg {
	uint32_t index;
	const struct keel_nbd_kernel_reconfigure_opts *opts;
};

static int build_disconnect(struct nl_msg *msg, int family, const void *arg)
{
	const struct index_arg *a = arg;

	return nbd_netlink_put_disconnect(msg, family, a->index);
}

int keel_nbd_kernel_disconnect(uint32_t index, char *err, size_t err_len)
{
	struct nbd_request req = {.what = "DISCONNECT"};
	struct index_arg a = {.index = index};

	return nbd_command(&req, build_disconnect, &a, index, err, err_len);
}

static int build_reconfigure(struct nl_msg *msg, int family, const void *arg)
{
	const struct index_arg *a = arg;

	return nbd_netlink_put_reconfigure(msg, family, a->index, a->opts);
}

int keel_nbd_kernel_reconfigure(uint32_t index, const struct keel_nbd_kernel_reconfigure_opts *opts,
				char *err, size_t err_len)
{
	struct nbd_request req = {.what = "RECONFIGURE"};
	struct index_arg a = {.index = index, .opts = opts};
	int rc;

	rc = nbd_netlink_reconfigure_opts_check(opts, err, err_len);
	if (rc != 0) {
		return rc;
	}
	return nbd_command(&req, build_reconfigure, &a, index, err, err_len);
}

struct status_arg {
	int64_t index; /* -1 = all */
	keel_nbd_kernel_status_fn fn;
	void *ctx;
	int count;
};

static int status_on_reply(struct nlattr **tb, void *arg)
{
	struct status_arg *s = arg;
	struct nlattr *item, *dtb[NBD_DEVICE_ATTR_MAX + 1];
	int rem;

	if (tb[NBD_ATTR_DEVICE_LIST] == NULL) {
		return 0;
	}
	nla_for_each_nested(item, tb[NBD_ATTR_DEVICE_LIST], rem)
	{
		if (nla_type(item) != NBD_DEVICE_ITEM) {
			continue;
		}
		if (nla_parse_nested(dtb, NBD_DEVICE_ATTR_MAX, item, g_device_policy) < 0 ||
		    dtb[NBD_DEVICE_INDEX] == NULL || dtb[NBD_DEVICE_CONNECTED] == NULL) {
			return -EPROTO;
		}
		s->fn(nla_get_u32(dtb[NBD_DEVICE_INDEX]),
		      nla_get_u8(dtb[NBD_DEVICE_CONNECTED]) != 0, s->ctx);
		s->count++;
	}
	return 0;
}

int nbd_netlink_status_decode(const void *buf, size_t len, keel_nbd_kernel_status_fn fn, void *ctx)
{
	struct status_arg s = {.index = -1, .fn = fn, .ctx = ctx};
	struct nbd_request req = {.what = "STATUS", .on_reply = status_on_reply, .reply_arg = &s};
	const struct nlmsghdr *nlh;
	int left = len > INT_MAX ? INT_MAX : (int)len;

	/* What libnl hands request_valid_cb: each whole message of the datagram. */
	for (nlh = buf; nlmsg_ok(nlh, left); nlh = nlmsg_next((struct nlmsghdr *)nlh, &left)) {
		if (nlh->nlmsg_type < NLMSG_MIN_TYPE) {
			continue; /* NOOP, ERROR, DONE: libnl's own callbacks */
		}
		request_valid_cb_hdr((struct nlmsghdr *)nlh, &req);
	}
	return req.reply_rc != 0 ? req.reply_rc : s.count;
}

static int build_status(struct nl_msg *msg, int family, const void *arg)
{
	const struct status_arg *s = arg;

	return nbd_netlink_put_status(msg, family, s->index);
}

static int status_run(struct status_arg *s, char *err, size_t err_len)
{
	struct nbd_request req = {.what = "STATUS", .on_reply = status_on_reply, .reply_arg = s};
	int rc;

	rc = nbd_command(&req, build_status, s, s->index, err, err_len);
	return rc != 0 ? rc : s->count;
}

struct one_status {
	uint32_t index;
	bool found;
	bool connected;
};

static void one_status_cb(uint32_t index, bool connected, void *ctx)
{
	struct one_status *o = ctx;

	if (index == o->index) {
		o->found = true;
		o->connected = connected;
	}
}

int keel_nbd_kernel_status(uint32_t index, bool *connected, char *err, size_t err_len)
{
	struct one_status o = {.index = index};
	struct status_arg s = {.index = index, .fn = one_status_cb, .ctx = &o};
	int rc;

	rc = status_run(&s, err, err_len);
	if (rc < 0) {
		return rc;
	}
	if (!o.found) {
		/* The kernel answers an unknown index with an empty list. */
		set_err(err, err_len, "no such device /dev/nbd%u", index);
		return -ENODEV;
	}
	*connected = o.connected;
	return 0;
}

int keel_nbd_kernel_status_all(keel_nbd_kernel_status_fn fn, void *ctx, char *err, size_t err_len)
{
	struct status_arg s = {.index = -1, .fn = fn, .ctx = ctx};

	if (fn == NULL) {
		set_err(err, err_len, "no callback");
		return -EINVAL;
	}
	return status_run(&s, err, err_len);
}

int keel_nbd_kernel_probe(char *err, size_t err_len)
{
	struct nl_sock *sk;
	int family, rc;

	rc = nbd_open(&sk, &family, err, err_len);
	if (rc != 0) {
		return rc;
	}
	nl_socket_free(sk);
	return 0;
}

/* ------------------------------------------------------------------------------------ */
/* LINK_DEAD monitor                                                                     */
/* ------------------------------------------------------------------------------------ */

struct keel_nbd_kernel_monitor {
	struct nl_sock *sk;
	int family;
};

int keel_nbd_kernel_monitor_open(struct keel_nbd_kernel_monitor **monitor, char *err,
				 size_t err_len)
{
	struct keel_nbd_kernel_monitor *mon;
	int grp, rc;

	mon = calloc(1, sizeof(*mon));
	if (mon == NULL) {
		set_err(err, err_len, "out of memory for the nbd monitor");
		return -ENOMEM;
	}
	rc = nbd_open(&mon->sk, &mon->family, err, err_len);
	if (rc != 0) {
		goto out_free_mon;
	}
	grp = genl_ctrl_resolve_grp(mon->sk, NBD_GENL_FAMILY_NAME, NBD_GENL_MCAST_GROUP_NAME);
	if (grp < 0) {
		set_err(err, err_len, "nbd multicast group %s not found: %s",
			NBD_GENL_MCAST_GROUP_NAME, nl_geterror(grp));
		rc = nbd_netlink_errno_from_nl(grp);
		goto out_free_sock;
	}
	/* Notifications carry sequence number 0; nobody waits for ACKs on this socket. */
	nl_socket_disable_seq_check(mon->sk);
	rc = nl_socket_add_membership(mon->sk, grp);
	if (rc < 0) {
		set_err(err, err_len, "cannot join nbd multicast group: %s", nl_geterror(rc));
		rc = nbd_netlink_errno_from_nl(rc);
		goto out_free_sock;
	}
	rc = nl_socket_set_nonblocking(mon->sk);
	if (rc < 0) {
		set_err(err, err_len, "cannot make the nbd monitor non-blocking: %s",
			nl_geterror(rc));
		rc = nbd_netlink_errno_from_nl(rc);
		goto out_free_sock;
	}
	*monitor = mon;
	return 0;

out_free_sock:
	nl_socket_free(mon->sk);
out_free_mon:
	free(mon);
	return rc;
}

int keel_nbd_kernel_monitor_fd(const struct keel_nbd_kernel_monitor *monitor)
{
	return nl_socket_get_fd(monitor->sk);
}

int nbd_netlink_link_dead_decode(const void *buf, size_t len, uint32_t sender_pid, int family,
				 keel_nbd_kernel_link_dead_fn fn, void *ctx)
{
	const struct nlmsghdr *nlh;
	int left = len > INT_MAX ? INT_MAX : (int)len;
	int handled = 0;

	/*
	 * Only the kernel (port id 0) announces a dead link. Any local process may send
	 * to our port: a forged LINK_DEAD must not make keeld act on a device.
	 */
	if (sender_pid != 0) {
		return 0;
	}
	for (nlh = buf; nlmsg_ok(nlh, left); nlh = nlmsg_next((struct nlmsghdr *)nlh, &left)) {
		struct nlattr *tb[NBD_ATTR_MAX + 1];
		struct genlmsghdr *gh;

		if (nlh->nlmsg_type != family) {
			continue;
		}
		if (nlh->nlmsg_len < NLMSG_HDRLEN + GENL_HDRLEN) {
			continue;
		}
		gh = nlmsg_data(nlh);
		if (gh->cmd != NBD_CMD_LINK_DEAD) {
			continue;
		}
		if (genlmsg_parse((struct nlmsghdr *)nlh, 0, tb, NBD_ATTR_MAX, g_attr_policy) < 0 ||
		    tb[NBD_ATTR_INDEX] == NULL) {
			continue;
		}
		handled++;
		if (fn != NULL) {
			fn(nla_get_u32(tb[NBD_ATTR_INDEX]), ctx);
		}
	}
	return handled;
}

/*
 * Plain recvfrom() instead of nl_recvmsgs(): libnl folds ENOBUFS (notifications lost)
 * into NLE_NOMEM, and the caller must be able to tell "lost events, resync" from other
 * errors. The source address says who sent each datagram.
 */
int keel_nbd_kernel_monitor_dispatch(struct keel_nbd_kernel_monitor *monitor,
				     keel_nbd_kernel_link_dead_fn fn, void *ctx)
{
	char buf[8192] __attribute__((aligned(NLMSG_ALIGNTO)));
	int fd = nl_socket_get_fd(monitor->sk);
	int handled = 0;

	for (;;) {
		struct sockaddr_nl from;
		socklen_t from_len = sizeof(from);
		ssize_t n;

		memset(&from, 0, sizeof(from));
		n = recvfrom(fd, buf, sizeof(buf), MSG_DONTWAIT, (struct sockaddr *)&from,
			     &from_len);
		if (n < 0) {
			if (errno == EINTR) {
				continue;
			}
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				return handled;
			}
			return -errno;
		}
		if (n == 0) {
			return handled;
		}
		if (from_len < sizeof(from) || from.nl_family != AF_NETLINK) {
			continue;
		}
		handled += nbd_netlink_link_dead_decode(buf, (size_t)n, from.nl_pid,
							monitor->family, fn, ctx);
	}
}

void keel_nbd_kernel_monitor_close(struct keel_nbd_kernel_monitor *monitor)
{
	if (monitor == NULL) {
		return;
	}
	nl_socket_free(monitor->sk);
	free(monitor);
}
