/*
 * Internal interface of the kernel NBD netlink client (nbd/kernel/nbd_netlink.c).
 *
 * The public API is include/keel/nbd_kernel.h. What is here exists so that unit tests can
 * check message encoding and error mapping without a kernel that has the nbd module.
 */
#ifndef KEEL_NBD_NETLINK_H
#define KEEL_NBD_NETLINK_H

#include <stddef.h>
#include <stdint.h>

#include <netlink/msg.h>

#include "keel/nbd_kernel.h"

/* NBD_FLAG_CAN_MULTI_CONN of the protocol: the kernel wants it for more than one socket. */
#define NBD_NETLINK_FLAG_CAN_MULTI_CONN (1ull << 8)

/* Map a negative libnl error (-NLE_*) to a negative errno. */
int nbd_netlink_errno_from_nl(int nlerr);

/*
 * Decode the kernel's replies to STATUS in \p buf (\p len bytes of netlink messages, as
 * received) exactly as keel_nbd_kernel_status_all() does: \p fn runs for each device
 * listed. \return the number of devices, or -EPROTO for a malformed reply. Pure: no
 * I/O, any input (fuzz target).
 */
int nbd_netlink_status_decode(const void *buf, size_t len, keel_nbd_kernel_status_fn fn, void *ctx);

/* Check CONNECT options before anything is sent; 0 or -EINVAL with a message. */
int nbd_netlink_connect_opts_check(const struct keel_nbd_kernel_connect_opts *opts, char *err,
				   size_t err_len);

/* Check RECONFIGURE options; 0 or -EINVAL with a message. */
int nbd_netlink_reconfigure_opts_check(const struct keel_nbd_kernel_reconfigure_opts *opts,
				       char *err, size_t err_len);

/*
 * Append the generic netlink header and attributes of one command to \p msg for family
 * \p family. The options must have passed the checks above. 0 or -ENOMEM (message full).
 */
int nbd_netlink_put_connect(struct nl_msg *msg, int family,
			    const struct keel_nbd_kernel_connect_opts *opts);
int nbd_netlink_put_reconfigure(struct nl_msg *msg, int family, uint32_t index,
				const struct keel_nbd_kernel_reconfigure_opts *opts);
int nbd_netlink_put_disconnect(struct nl_msg *msg, int family, uint32_t index);
/* \p index < 0: all devices. */
int nbd_netlink_put_status(struct nl_msg *msg, int family, int64_t index);

/*
 * Decode one datagram of the LINK_DEAD monitor (\p len bytes from port id \p sender_pid)
 * and call \p fn for each NBD_CMD_LINK_DEAD of family \p family. Datagrams from anyone
 * but the kernel (sender_pid != 0) and malformed messages are ignored.
 * \return the number of LINK_DEAD messages handled. Pure: no I/O, any thread.
 */
int nbd_netlink_link_dead_decode(const void *buf, size_t len, uint32_t sender_pid, int family,
				 keel_nbd_kernel_link_dead_fn fn, void *ctx);

#endif /* KEEL_NBD_NETLINK_H */
