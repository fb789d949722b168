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

/** The files keeld keeps in its state directory (their names live in paths.c only). */
enum keel_state_file {
	KEEL_STATE_FILE_STATE,           /**< state.json: volumes and exports */
	KEEL_STATE_FILE_REBUILD_HISTORY, /**< rebuild-history.json */
	KEEL_STATE_FILE_NBD_DISKS,       /**< nbd-disks.json: kernel devices */
	KEEL_STATE_FILE_LOCK,            /**< keeld.lock: one keeld per directory, its pid */
	KEEL_STATE_FILE_LOG,             /**< keeld.log: stderr of a detached keeld */
	KEEL_STATE_FILE_UBLK_DISKS,      /**< ublk-disks.json: ublk devices to re-attach */
};

/** "STATE_DIR/<name of file>". \return 0, -EINVAL (unknown file) or -ENAMETOOLONG. */
int keel_path_state_file(const char *state_dir, enum keel_state_file file, char *buf, size_t len);

#endif /* KEEL_DAEMON_PATHS_H */
