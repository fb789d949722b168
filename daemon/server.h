/* Unix socket helpers shared by the RPC server, keeld and keelctl. */
#ifndef KEEL_DAEMON_SERVER_H
#define KEEL_DAEMON_SERVER_H

#include <sys/un.h>

/** Fill \p addr for \p path. \return 0, -EINVAL (empty), -ENAMETOOLONG. */
int rpc_socket_address(const char *path, struct sockaddr_un *addr);

/**
 * Look at \p path before listening on it.
 * \return 0: nothing there; 1: a stale socket nobody answers on (safe to remove);
 * -EADDRINUSE: a server answers there; -EEXIST: a file that is not a socket;
 * -ENAMETOOLONG, -EINVAL, or another -errno from lstat/connect.
 */
int rpc_socket_probe(const char *path);

#endif /* KEEL_DAEMON_SERVER_H */
