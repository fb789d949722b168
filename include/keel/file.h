/**
 * \file
 * keel small-file durability helpers: replace a file atomically and make a directory
 * entry change durable. keeld's state file, its rebuild history and the NBD frontend's
 * device list are saved through these.
 *
 * Threading: both functions BLOCK (open, write, fsync, rename). Call them from a
 * keel_spawn_blocking() job, or from main() before the reactors start; never on a
 * reactor. They keep no state, so calls for different paths may run concurrently on
 * different OS threads; calls for the same path must be serialized by the caller
 * (they share the temporary file name "<path>.tmp").
 *
 * Errors: every int return is 0 or a negative errno.
 */
#ifndef KEEL_FILE_H
#define KEEL_FILE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Replace \p path with \p len bytes of \p buf so that after a crash the file holds
 * either its old content or the new one, never a mix: write "<path>.tmp" (created
 * with mode 0600, truncated if it exists), fsync and close it, rename it over
 * \p path, then fsync the parent directory so the rename itself is durable.
 *
 * \param path   destination; its directory must exist.
 * \param buf    content; may be NULL when \p len is 0.
 * \param err    when not NULL and \p errlen > 0, a failure writes a one-line
 *               NUL-terminated message naming the file and the failing step, e.g.
 *               "cannot write /var/lib/keel/state.json.tmp: No space left on device"
 *               or "cannot fsync directory /var/lib/keel: Input/output error".
 *               Left untouched on success.
 * \return 0 on success, or a negative errno:
 *  - -ENAMETOOLONG: "<path>.tmp" does not fit in PATH_MAX;
 *  - any errno of open, write, fsync or close of the temporary file (the temporary
 *    file is removed; \p path is unchanged);
 *  - any errno of rename (the temporary file is removed; \p path is unchanged);
 *  - any errno of opening or fsyncing the parent directory: \p path already holds
 *    the new content, but the rename may not survive a power loss.
 */
int keel_file_write_atomic(const char *path, const void *buf, size_t len, char *err, size_t errlen);

/**
 * fsync the directory that contains \p path ("." for a bare name, "/" for a file
 * in the root), so that a create, rename or unlink of \p path is durable. \p path
 * itself need not exist.
 * \return 0, -ENAMETOOLONG when \p path does not fit in PATH_MAX, or the errno of
 * opening or fsyncing the directory.
 */
int keel_fsync_parent_dir(const char *path);

#ifdef __cplusplus
}
#endif

#endif /* KEEL_FILE_H */
