/* Default locations shared by keeld and keelctl. */
#ifndef KEEL_DAEMON_PATHS_H
#define KEEL_DAEMON_PATHS_H

#include <stddef.h>
#include <sys/types.h>

/**
 * Default RPC socket: $KEEL_RPC_SOCKET if set; as root /run/keel/keeld.sock; else
 * $XDG_RUNTIME_DIR/keel/keeld.sock, or /tmp/keel-UID/keeld.sock without it.
 * \return 0 or -ENAMETOOLONG.
 */
int keel_path_default_socket(char *buf, size_t len);

/**
 * Default state directory: as root /var/lib/keel; else $XDG_STATE_HOME/keel or
 * ~/.local/state/keel. \return 0, -ENAMETOOLONG, -ENOENT (no home directory).
 */
int keel_path_default_state_dir(char *buf, size_t len);

/**
 * Create \p dir and missing parents with \p mode (existing ones are left alone).
 * \return 0 or -errno (the message names nothing; the caller names the path).
 */
int keel_path_mkdir_p(const char *dir, mode_t mode);

/** Create the directory that will hold file \p path. \return 0 or -errno. */
int keel_path_mkdir_parent(const char *path, mode_t mode);

#endif /* KEEL_DAEMON_PATHS_H */
