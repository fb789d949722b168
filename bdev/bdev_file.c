/*
 * Opening the file or block device behind a file-backed bdev (see bdev_file.h).
 * Runs on the blocking-work pool: everything here may sleep in the kernel.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "keel/bdev.h"
#include "keel/bdev_module.h"
#include "keel/log.h"
#include "keel/reactor.h"

#include "bdev_file.h"

/* <linux/fs.h> redefines RWF_* that <sys/uio.h> already has, so take only the ioctls. */
#ifndef BLKSSZGET
#define BLKSSZGET _IO(0x12, 104)
#endif
#ifndef BLKGETSIZE64
#define BLKGETSIZE64 _IOR(0x12, 114, size_t)
#endif

bool bdev_file_block_size_ok(uint32_t block_size)
{
	return block_size >= 512 && block_size <= BDEV_FILE_MAX_BLOCK_SIZE &&
	       (block_size & (block_size - 1)) == 0;
}

int bdev_file_check_create(const char *module, const char *name, const char *filename,
			   uint32_t block_size, bool have_cb)
{
	if (name == NULL || filename == NULL || !have_cb || filename[0] == '\0') {
		return -EINVAL;
	}
	if (name[0] == '\0' || strlen(name) > KEEL_BDEV_NAME_MAX) {
		KEEL_ERRLOG("%s bdev: name '%s' is empty or longer than %d characters", module,
			    name, KEEL_BDEV_NAME_MAX);
		return -EINVAL;
	}
	if (block_size != 0 && !bdev_file_block_size_ok(block_size)) {
		KEEL_ERRLOG("%s bdev %s: block size %u is not a power of two in 512..%u", module,
			    name, block_size, BDEV_FILE_MAX_BLOCK_SIZE);
		return -EINVAL;
	}
	if (keel_thread_get_current() == NULL) {
		return -EINVAL;
	}
	if (keel_bdev_get_by_name(name) != NULL) {
		KEEL_ERRLOG("%s bdev %s: a bdev with this name exists", module, name);
		return -EEXIST;
	}
	return 0;
}

static int bdev_file_open_fd(const char *filename, bool refuse_direct, struct bdev_file *out)
{
	int fd;

	if (refuse_direct) {
		fd = -1;
		errno = EINVAL;
	} else {
		fd = open(filename, O_RDWR | O_DIRECT | O_CLOEXEC);
	}
	if (fd >= 0) {
		out->direct = true;
		return fd;
	}
	/* tmpfs (before 6.6), ramfs and some FUSE filesystems refuse O_DIRECT with EINVAL. */
	if (errno != EINVAL) {
		return -errno;
	}
	out->direct_errno = EINVAL;
	fd = open(filename, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		return -errno;
	}
	out->direct = false;
	return fd;
}

/* The O_DIRECT offset alignment of a regular file, 0 when the kernel does not say. */
static uint32_t bdev_file_dio_align(int fd)
{
#ifdef STATX_DIOALIGN
	struct statx stx;

	if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
	    (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align != 0) {
		return stx.stx_dio_offset_align;
	}
#endif
	return 0;
}

/* One read of the first block with RWF_NOWAIT: only "not supported" says no. */
static bool bdev_file_probe_nowait(int fd, uint32_t block_size)
{
	struct iovec iov;
	void *buf;
	bool nowait;

	if (posix_memalign(&buf, block_size > 4096 ? block_size : 4096, block_size) != 0) {
		return true;
	}
	iov.iov_base = buf;
	iov.iov_len = block_size;
	nowait = preadv2(fd, &iov, 1, 0, RWF_NOWAIT) >= 0 || errno != EOPNOTSUPP;
	free(buf);
	return nowait;
}

int bdev_file_open(const char *module, const char *name, const char *filename, uint32_t block_size,
		   bool refuse_direct, struct bdev_file *out)
{
	uint32_t dio_align = 0;
	uint64_t size;
	struct stat st;
	int fd, rc;

	memset(out, 0, sizeof(*out));
	out->fd = -1;
	fd = bdev_file_open_fd(filename, refuse_direct, out);
	if (fd < 0) {
		rc = fd;
		if (rc == -EISDIR) {
			KEEL_ERRLOG("%s bdev %s: %s is a directory, not a file or block device",
				    module, name, filename);
		} else {
			KEEL_ERRLOG("%s bdev %s: cannot open %s: %s", module, name, filename,
				    strerror(-rc));
		}
		return rc;
	}
	if (fstat(fd, &st) != 0) {
		rc = -errno;
		KEEL_ERRLOG("%s bdev %s: fstat %s: %s", module, name, filename, strerror(-rc));
		goto out_close_fd;
	}

	if (S_ISBLK(st.st_mode)) {
		int lbs = 0;

		out->is_blockdev = true;
		if (ioctl(fd, BLKSSZGET, &lbs) != 0 || ioctl(fd, BLKGETSIZE64, &size) != 0) {
			rc = -errno;
			KEEL_ERRLOG("%s bdev %s: cannot query block device %s: %s", module, name,
				    filename, strerror(-rc));
			goto out_close_fd;
		}
		if (block_size == 0) {
			block_size = (uint32_t)lbs;
		} else if (block_size < (uint32_t)lbs) {
			rc = -EINVAL;
			KEEL_ERRLOG("%s bdev %s: block size %u is smaller than the logical block "
				    "size %d of %s",
				    module, name, block_size, lbs, filename);
			goto out_close_fd;
		}
	} else if (S_ISREG(st.st_mode)) {
		size = (uint64_t)st.st_size;
		if (block_size == 0) {
			block_size = 512;
		}
		if (out->direct) {
			dio_align = bdev_file_dio_align(fd);
		}
	} else {
		rc = -EINVAL;
		KEEL_ERRLOG("%s bdev %s: %s is neither a regular file nor a block device", module,
			    name, filename);
		goto out_close_fd;
	}

	if (!bdev_file_block_size_ok(block_size)) {
		rc = -EINVAL;
		KEEL_ERRLOG("%s bdev %s: block size %u of %s is not a power of two in 512..%u",
			    module, name, block_size, filename, BDEV_FILE_MAX_BLOCK_SIZE);
		goto out_close_fd;
	}
	if (size == 0 || size % block_size != 0) {
		rc = -EINVAL;
		KEEL_ERRLOG("%s bdev %s: size %" PRIu64 " of %s is %s the block size %u", module,
			    name, size, filename, size == 0 ? "smaller than" : "not a multiple of",
			    block_size);
		goto out_close_fd;
	}
	if (out->direct && dio_align > block_size) {
		/* O_DIRECT would refuse every request; buffered I/O still works. */
		int buffered = open(filename, O_RDWR | O_CLOEXEC);

		if (buffered < 0) {
			rc = -errno;
			KEEL_ERRLOG("%s bdev %s: cannot reopen %s without O_DIRECT: %s", module,
				    name, filename, strerror(-rc));
			goto out_close_fd;
		}
		close(fd);
		fd = buffered;
		out->direct = false;
		out->direct_errno = EINVAL;
		out->dio_align = dio_align;
	}

	if (!out->is_blockdev) {
		out->punch_hole_ok = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					       (off_t)size, block_size) == 0;
	}
	out->nowait = bdev_file_probe_nowait(fd, block_size);
	out->fd = fd;
	out->block_size = block_size;
	out->num_blocks = size / block_size;
	return 0;

out_close_fd:
	close(fd);
	return rc;
}

/* Append a run to \p ext, merged with the previous one of the same flags. */
static bool bdev_file_add_extent(struct keel_bdev_extent *ext, uint32_t max, uint32_t *n,
				 uint64_t length, uint32_t flags)
{
	if (length == 0) {
		return true;
	}
	if (*n > 0 && ext[*n - 1].flags == flags) {
		ext[*n - 1].length += length;
		return true;
	}
	if (*n == max) {
		return false;
	}
	ext[*n].length = length;
	ext[*n].flags = flags;
	ext[*n].reserved = 0;
	(*n)++;
	if (*n < max) {
		ext[*n].length = 0;
	}
	return true;
}

/* lseek() that treats "nothing of that kind before EOF" (ENXIO) as \p end. */
static int bdev_file_seek(int fd, uint64_t pos, int whence, uint64_t end, uint64_t *out)
{
	off_t r = lseek(fd, (off_t)pos, whence);

	if (r < 0) {
		if (errno != ENXIO) {
			return errno == EOPNOTSUPP ? -ENOTSUP : -errno;
		}
		r = (off_t)end;
	}
	*out = (uint64_t)r < end ? (uint64_t)r : end;
	return 0;
}

int bdev_file_get_allocation(int fd, uint64_t offset, uint64_t len, uint32_t block_size,
			     struct keel_bdev_extent *ext, uint32_t max)
{
	const uint32_t hole = KEEL_BDEV_EXTENT_HOLE | KEEL_BDEV_EXTENT_ZERO;
	uint64_t end = offset + len;
	uint64_t pos = offset;
	uint32_t n = 0;
	int rc;

	ext[0].length = 0;
	while (pos < end) {
		uint64_t data = end, data_start, hole_at = end, data_end;

		rc = bdev_file_seek(fd, pos, SEEK_DATA, end, &data);
		if (rc != 0) {
			return rc;
		}
		/* A block that is only partly allocated counts as data. */
		data_start = data - data % block_size;
		if (data_start > pos) {
			if (!bdev_file_add_extent(ext, max, &n, data_start - pos, hole)) {
				return 0;
			}
			pos = data_start;
		}
		if (pos >= end) {
			break;
		}
		rc = bdev_file_seek(fd, data, SEEK_HOLE, end, &hole_at);
		if (rc != 0) {
			return rc;
		}
		data_end = hole_at + (block_size - hole_at % block_size) % block_size;
		if (data_end > end) {
			data_end = end;
		}
		if (data_end <= pos) {
			data_end = pos + block_size; /* cannot happen; never loop forever */
		}
		if (!bdev_file_add_extent(ext, max, &n, data_end - pos, 0)) {
			return 0;
		}
		pos = data_end;
	}
	return 0;
}

int bdev_file_io_get_allocation(int fd, struct keel_bdev_io *io)
{
	return bdev_file_get_allocation(
		fd, keel_bdev_io_offset_bytes(io), keel_bdev_io_num_bytes(io), io->bdev->block_size,
		io->iovs[0].iov_base,
		(uint32_t)(io->iovs[0].iov_len / sizeof(struct keel_bdev_extent)));
}
