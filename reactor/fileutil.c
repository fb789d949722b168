/*
 * Atomic small-file replacement and parent-directory fsync.
 *
 * These live in keel_reactor, not in keeld, because the NBD frontend saves its
 * device list too and keel_nbd cannot link the daemon; every keel library links
 * the reactor library.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "keel/file.h"

static void file_set_err(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void file_set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0) {
		return;
	}
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* dirname() may modify its argument and may return a static string, so copy. */
static int file_parent_dir(const char *path, char *dir, size_t dirlen)
{
	char copy[PATH_MAX];

	if ((size_t)snprintf(copy, sizeof(copy), "%s", path) >= sizeof(copy)) {
		return -ENAMETOOLONG;
	}
	if ((size_t)snprintf(dir, dirlen, "%s", dirname(copy)) >= dirlen) {
		return -ENAMETOOLONG;
	}
	return 0;
}

static int file_fsync_dir(const char *dir)
{
	int fd, rc = 0;

	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		return -errno;
	}
	if (fsync(fd) != 0) {
		rc = -errno;
	}
	/* Nothing was written through this fd, so close() cannot lose data. */
	close(fd);
	return rc;
}

int keel_fsync_parent_dir(const char *path)
{
	char dir[PATH_MAX];
	int rc;

	rc = file_parent_dir(path, dir, sizeof(dir));
	if (rc != 0) {
		return rc;
	}
	return file_fsync_dir(dir);
}

static int file_write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n < 0) {
			return -errno;
		}
		if (n == 0) {
			/* Not expected from a regular file; never spin on it. */
			return -EIO;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

int keel_file_write_atomic(const char *path, const void *buf, size_t len, char *err, size_t errlen)
{
	char tmp[PATH_MAX], dir[PATH_MAX];
	int fd, rc;

	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp) ||
	    file_parent_dir(path, dir, sizeof(dir)) != 0) {
		file_set_err(err, errlen, "cannot write %s: %s", path, strerror(ENAMETOOLONG));
		return -ENAMETOOLONG;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		rc = -errno;
		file_set_err(err, errlen, "cannot create %s: %s", tmp, strerror(-rc));
		return rc;
	}
	rc = file_write_all(fd, buf, len);
	if (rc == 0 && fsync(fd) != 0) {
		rc = -errno;
	}
	/* NFS and some FUSE file systems report deferred write errors only at close. */
	if (close(fd) != 0 && rc == 0) {
		rc = -errno;
	}
	if (rc != 0) {
		file_set_err(err, errlen, "cannot write %s: %s", tmp, strerror(-rc));
		goto out_unlink_tmp;
	}
	if (rename(tmp, path) != 0) {
		rc = -errno;
		file_set_err(err, errlen, "cannot rename %s to %s: %s", tmp, path, strerror(-rc));
		goto out_unlink_tmp;
	}
	/* The rename is durable only once the directory is. The new content is already
	 * in place, so there is nothing to undo: the caller only learns the risk. */
	rc = file_fsync_dir(dir);
	if (rc != 0) {
		file_set_err(err, errlen, "cannot fsync directory %s: %s", dir, strerror(-rc));
	}
	return rc;

out_unlink_tmp:
	unlink(tmp);
	return rc;
}
