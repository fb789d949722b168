/*
 * The file replica backends: replica files (and block devices) opened as aio bdevs or
 * as uring bdevs. Both prepare their targets the same way. A replica given as an NBD
 * URI instead of a path is an NBD client bdev under either backend (replica_remote.h):
 * probed through its export, never created or removed here.
 *
 * prepare never writes over data by mistake (daemon/replica_probe.h decides what a
 * target holds), creates a missing file at its full size with the space reserved, and
 * makes each step durable before the volume's labels go on it. unprepare removes only
 * what this operation created.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "keel/bdev_nbd_client.h"
#include "keel/bdev_uring.h"
#include "keel/file.h"
#include "keel/log.h"
#include "keel/nexus.h"
#include "replica_backend.h"
#include "replica_probe.h"
#include "replica_remote.h"

/* An existing target: identity, content and size. */
static int files_check_existing(struct keeld_replica_prep *prep, const char *path,
				const struct keeld_replica_probe *probe)
{
	int rc;

	rc = keeld_replica_set_check(prep->in_use, path, &probe->id, prep->err, sizeof(prep->err));
	if (rc == 0) {
		rc = keeld_replica_probe_check(
			probe, path, prep->volume_uuid[0] != '\0' ? prep->volume_uuid : NULL,
			prep->force, prep->err, sizeof(prep->err));
	}
	if (rc == 0 && !probe->id.blockdev && probe->size < prep->need) {
		/* Files only: the nexus checks that a block device is large enough. */
		snprintf(prep->err, sizeof(prep->err),
			 "replica file %s has %llu bytes, the "
			 "volume needs %llu (its size plus %u bytes of labels): remove the "
			 "file to let keeld create it, or grow it",
			 path, (unsigned long long)probe->size, (unsigned long long)prep->need,
			 KEEL_NEXUS_DATA_OFFSET);
		rc = -ENOSPC;
	}
	return rc != 0 ? rc : keeld_replica_set_add_target(prep->in_use, path, &probe->id);
}

/* A missing target: create it at its full size, durably. */
static int files_create(struct keeld_replica_prep *prep, size_t i)
{
	const char *path = prep->locators[i];
	struct keeld_replica_id id;
	int fd, rc;

	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		rc = -errno;
		snprintf(prep->err, sizeof(prep->err), "cannot create replica file %s: %s%s", path,
			 strerror(-rc), rc == -ENOENT ? " (its directory does not exist)" : "");
		return rc;
	}
	prep->created[i] = true;
	if (ftruncate(fd, (off_t)prep->need) != 0) {
		rc = -errno;
		snprintf(prep->err, sizeof(prep->err),
			 "cannot size replica file %s to %llu "
			 "bytes: %s",
			 path, (unsigned long long)prep->need, strerror(-rc));
		goto out_close;
	}
	/* Reserve the space now so the volume does not run out of it under writes;
	 * filesystems without fallocate (some FUSE ones) keep a sparse file. */
	if (fallocate(fd, 0, 0, (off_t)prep->need) != 0 && errno != EOPNOTSUPP) {
		rc = -errno;
		snprintf(prep->err, sizeof(prep->err),
			 "cannot allocate %llu bytes for replica "
			 "file %s: %s",
			 (unsigned long long)prep->need, path, strerror(-rc));
		goto out_close;
	}
	if (fsync(fd) != 0) {
		rc = -errno;
		snprintf(prep->err, sizeof(prep->err), "cannot fsync replica file %s: %s", path,
			 strerror(-rc));
		goto out_close;
	}
	/* A later target of this request may name the file just made (a//x after a/x). */
	rc = keeld_replica_id_of_fd(fd, &id);
	if (rc == 0) {
		rc = keeld_replica_set_add_target(prep->in_use, path, &id);
	}
	if (rc != 0) {
		snprintf(prep->err, sizeof(prep->err), "cannot note replica file %s: %s", path,
			 strerror(-rc));
		goto out_close;
	}
	close(fd);
	return keel_fsync_parent_dir(path);

out_close:
	close(fd);
	return rc;
}

static void files_unprepare(struct keeld_replica_prep *prep)
{
	for (size_t i = 0; i < prep->n; i++) {
		if (!prep->created[i]) {
			continue;
		}
		if (unlink(prep->locators[i]) != 0 && errno != ENOENT) {
			KEEL_WARNLOG("volume: cannot remove replica file %s: %s", prep->locators[i],
				     strerror(errno));
		}
		(void)keel_fsync_parent_dir(prep->locators[i]);
		prep->created[i] = false;
	}
}

static int files_prepare(struct keeld_replica_prep *prep)
{
	struct keeld_replica_probe probe;
	int rc = 0;

	keeld_replica_set_stat(prep->in_use);
	for (size_t i = 0; i < prep->n && rc == 0; i++) {
		if (keel_bdev_nbd_client_is_uri(prep->locators[i])) {
			/* An export on a server: looked at through it, never created here. */
			rc = keeld_replica_check_uri(
				prep->locators[i], prep->need,
				prep->volume_uuid[0] != '\0' ? prep->volume_uuid : NULL,
				prep->force, prep->err, sizeof(prep->err));
			continue;
		}
		/* Never write over data by mistake: see daemon/replica_probe.h. */
		rc = keeld_replica_probe(prep->locators[i], &probe, prep->err, sizeof(prep->err));
		if (rc == 0) {
			rc = files_check_existing(prep, prep->locators[i], &probe);
		} else if (rc == -ENOENT) {
			rc = files_create(prep, i);
		}
	}
	if (rc != 0) {
		files_unprepare(prep);
	}
	return rc;
}

/* A replica given as an NBD URI: an NBD client bdev, whatever the file backend. */
static int remote_open(const char *bdev_name, const char *uri, keel_bdev_create_cb cb_fn,
		       void *cb_arg)
{
	struct keel_bdev_nbd_client_opts opts = {.name = bdev_name, .uri = uri};

	return keel_bdev_nbd_client_create(&opts, cb_fn, cb_arg);
}

static int files_open(const char *bdev_name, const char *path, keel_bdev_create_cb cb_fn,
		      void *cb_arg)
{
	if (keel_bdev_nbd_client_is_uri(path)) {
		return remote_open(bdev_name, path, cb_fn, cb_arg);
	}
	return keel_bdev_aio_create(bdev_name, path, 0, cb_fn, cb_arg);
}

static int files_close(const char *bdev_name, keel_bdev_done_cb cb_fn, void *cb_arg)
{
	int rc = keel_bdev_aio_delete(bdev_name, cb_fn, cb_arg);

	return rc == -ENODEV ? keel_bdev_nbd_client_delete(bdev_name, cb_fn, cb_arg) : rc;
}

static const char *files_open_error_text(int status)
{
	switch (status) {
	case -ENOENT:
		return "file does not exist";
	case -EACCES:
	case -EPERM:
		return "permission denied";
	case -EINVAL:
		return "its size is not a multiple of the block size, or the device refuses it";
	default:
		return strerror(-status);
	}
}

const struct keeld_replica_backend keeld_replica_backend_files = {
	.name = "aio",
	.prepare = files_prepare,
	.unprepare = files_unprepare,
	.open = files_open,
	.close = files_close,
	.open_error_text = files_open_error_text,
};

static int uring_open(const char *bdev_name, const char *path, keel_bdev_create_cb cb_fn,
		      void *cb_arg)
{
	if (keel_bdev_nbd_client_is_uri(path)) {
		return remote_open(bdev_name, path, cb_fn, cb_arg);
	}
	return keel_bdev_uring_create(bdev_name, path, 0, cb_fn, cb_arg);
}

static int uring_close(const char *bdev_name, keel_bdev_done_cb cb_fn, void *cb_arg)
{
	int rc = keel_bdev_uring_delete(bdev_name, cb_fn, cb_arg);

	return rc == -ENODEV ? keel_bdev_nbd_client_delete(bdev_name, cb_fn, cb_arg) : rc;
}

static const char *uring_open_error_text(int status)
{
	/* The probe's reason is in the log line of the create and of keeld's start. */
	if (status == -ENOTSUP) {
		return "io_uring is unavailable on this machine (see the keeld log): use the "
		       "aio backend";
	}
	return files_open_error_text(status);
}

const struct keeld_replica_backend keeld_replica_backend_uring = {
	.name = "uring",
	.prepare = files_prepare,
	.unprepare = files_unprepare,
	.open = uring_open,
	.close = uring_close,
	.open_error_text = uring_open_error_text,
	.available = keel_bdev_uring_available,
};
