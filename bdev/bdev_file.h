/*
 * Opening the file or block device behind a file-backed bdev module (uring today; the
 * aio module has the same rules in its own open job and can move onto this helper).
 * Not a public API.
 *
 * The rules, so every file-backed module behaves the same:
 *  - O_RDWR | O_DIRECT first; a filesystem that refuses O_DIRECT with EINVAL (ramfs,
 *    tmpfs before Linux 6.6, some FUSE filesystems) is opened buffered.
 *  - Block size: BLKSSZGET for block devices (a smaller explicit size is refused),
 *    512 for files unless given; an explicit size is a power of two in 512..65536 and
 *    must divide the size, which must not be 0.
 *  - A file whose O_DIRECT offset alignment (statx STATX_DIOALIGN) is larger than the
 *    block size is reopened buffered rather than failing every request.
 *  - Whether the filesystem can punch holes is probed (beyond EOF, which changes
 *    nothing), and whether it honours RWF_NOWAIT (one read of the first block).
 *
 * Threading: bdev_file_open BLOCKS (open, fstat, ioctl, statx, fallocate): call it on
 * the blocking-work pool only.
 */
#ifndef KEEL_BDEV_FILE_H
#define KEEL_BDEV_FILE_H

#include <stdbool.h>
#include <stdint.h>

#define BDEV_FILE_MAX_BLOCK_SIZE 65536u

/** What bdev_file_open found. */
struct bdev_file {
	int fd;
	bool direct; /**< opened with O_DIRECT */
	bool is_blockdev;
	bool punch_hole_ok; /**< files: FALLOC_FL_PUNCH_HOLE works here */
	/**
	 * The filesystem honours RWF_NOWAIT (a read that would block says so instead).
	 * Without it (tmpfs, ramfs) io_uring cannot issue a request inline and hands
	 * every one to a kernel worker thread.
	 */
	bool nowait;
	uint32_t block_size;
	uint64_t num_blocks;
	/** Why O_DIRECT was not used (an errno, 0 when direct), for the caller's log line. */
	int direct_errno;
	/** The O_DIRECT alignment that forced buffered I/O (0: not the reason). */
	uint32_t dio_align;
};

/** Whether \p block_size is a power of two in 512..BDEV_FILE_MAX_BLOCK_SIZE. */
bool bdev_file_block_size_ok(uint32_t block_size);

/**
 * The checks a file-backed create makes before anything is queued: names and path
 * present, name length, block size (0 or valid), \p have_cb, called on a keel thread,
 * name free. Logs what is wrong with the name or block size.
 * \return 0, -EINVAL or -EEXIST.
 */
int bdev_file_check_create(const char *module, const char *name, const char *filename,
			   uint32_t block_size, bool have_cb);

/**
 * Open \p filename for bdev \p name of module \p module (both name the object in error
 * lines: "uring bdev NAME: ..."). \p block_size 0 picks the default; \p refuse_direct
 * behaves as if the filesystem refused O_DIRECT (tests, and callers that want buffered
 * I/O). Every failure is logged.
 * \return 0 and *out (out->fd is the caller's to close), or -ENOENT, -EACCES, -EISDIR,
 * -ENOTDIR, -ENAMETOOLONG (and other errno of open/fstat/ioctl), -EINVAL (neither file
 * nor block device, bad block size, size 0 or not a multiple of the block size).
 */
int bdev_file_open(const char *module, const char *name, const char *filename, uint32_t block_size,
		   bool refuse_direct, struct bdev_file *out);

struct keel_bdev_extent;

/**
 * Which parts of [\p offset, \p offset + \p len) of the regular file \p fd hold data,
 * from lseek(SEEK_DATA/SEEK_HOLE), written to \p ext (at most \p max runs, terminated
 * by a run of length 0 when fewer): holes as KEEL_BDEV_EXTENT_HOLE | _ZERO, data as 0.
 * Boundaries are rounded to \p block_size so that holes shrink (a partly allocated
 * block is data). Stops early when the array is full.
 * \return 0, or -errno of lseek (-ENOTSUP when the filesystem cannot tell).
 * BLOCKS (lseek may take the inode lock): blocking-work pool only.
 */
int bdev_file_get_allocation(int fd, uint64_t offset, uint64_t len, uint32_t block_size,
			     struct keel_bdev_extent *ext, uint32_t max);

struct keel_bdev_io;

/**
 * bdev_file_get_allocation for a KEEL_BDEV_IO_GET_ALLOCATION request \p io on \p fd:
 * its range, block size and extents array (io->iovs[0]). Same return and BLOCKING
 * rule; \p io is read only (the submitting reactor does not touch it meanwhile).
 */
int bdev_file_io_get_allocation(int fd, struct keel_bdev_io *io);

#endif /* KEEL_BDEV_FILE_H */
