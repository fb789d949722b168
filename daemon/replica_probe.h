/*
 * Inspect a replica target before keeld writes a label on it: which file or device it
 * is (so one file given under two names is found, whatever the path strings say) and
 * what it holds (nothing, a keel label, or data: a filesystem, a partition table, any
 * non-zero byte), so a mistyped path never destroys data. See docs/volumes.md.
 *
 * Threading: every function that takes a path or an fd BLOCKS (stat, open, read,
 * ioctl, libblkid): call it from a keel_spawn_blocking() job, never on a reactor.
 * keeld_replica_set_new/_add/_free do no I/O and may run anywhere. Nothing is shared
 * between calls; one set is used by one thread at a time.
 *
 * Errors: every int return is 0 or a negative errno; on failure \p err (required,
 * \p errlen > 0) gets a one-line message that names the path.
 */
#ifndef KEEL_DAEMON_REPLICA_PROBE_H
#define KEEL_DAEMON_REPLICA_PROBE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "keel/nexus.h"

/** What keeld reads from the start and from the end of a target. */
#define KEELD_REPLICA_PROBE_SPAN (1024u * 1024u)

/**
 * Which file a path names. Two ids are the same replica when they are the same
 * inode (st_dev + st_ino), the same block device (st_rdev, whatever node names it),
 * or a loop device and the file behind it.
 */
struct keeld_replica_id {
	bool blockdev;
	dev_t dev; /**< file: st_dev; block device: st_rdev */
	ino_t ino; /**< file: st_ino; block device: 0 */
	bool loop; /**< a bound loop device: backing_* name its file */
	dev_t backing_dev;
	ino_t backing_ino;
};

enum keeld_replica_content {
	KEELD_REPLICA_EMPTY,    /**< zeros where keeld looked, no signature */
	KEELD_REPLICA_LABELLED, /**< a valid keel label (probe.label says whose) */
	KEELD_REPLICA_DAMAGED,  /**< a keel label the nexus would refuse (probe.what) */
	KEELD_REPLICA_DATA,     /**< a signature or non-zero bytes (probe.what) */
};

struct keeld_replica_probe {
	struct keeld_replica_id id;
	uint64_t size; /**< bytes */
	enum keeld_replica_content content;
	/** DATA: "an ext4 filesystem", "a dos partition table", "data (a non-zero byte
	 * at offset 4096)"; DAMAGED: what is wrong with the label. */
	char what[192];
	struct keel_nexus_label_summary label; /**< LABELLED: the label */
};

/**
 * Look at the existing target \p path: stat it (what is neither a regular file nor a
 * block device is refused without being opened: opening a FIFO or a tape has effects),
 * open it read-only and take the identity from fstat of that fd, read the first and
 * the last KEELD_REPLICA_PROBE_SPAN bytes, read a keel label there, and, when there
 * is none, ask libblkid for filesystem, RAID, crypto and partition-table signatures.
 * In a former replica whose labels were wiped, keel's own bitmap in the first span
 * is not counted as data.
 * \return 0 (\p out filled); -ENOENT (no such file: err untouched, the caller may
 * create it); -EINVAL (not a regular file or block device); -ENOMEM; or the errno of
 * stat, open, read, or libblkid (-EIO).
 */
int keeld_replica_probe(const char *path, struct keeld_replica_probe *out, char *err,
			size_t errlen);

/**
 * May keeld write its label over the probed target \p path? Without \p force: only
 * an empty target, or one that carries the label of volume \p volume_uuid (a former
 * member coming back; NULL for a new volume, where every label is another volume's).
 * \return 0, or -EEXIST with err saying what was found and to pass --force.
 */
int keeld_replica_probe_check(const struct keeld_replica_probe *probe, const char *path,
			      const char *volume_uuid, bool force, char *err, size_t errlen);

/** The identity of what \p fd is open on. \return 0 or -errno of fstat. Blocks. */
int keeld_replica_id_of_fd(int fd, struct keeld_replica_id *id);

/** Whether \p a and \p b are the same replica (see struct keeld_replica_id). */
bool keeld_replica_id_same(const struct keeld_replica_id *a, const struct keeld_replica_id *b);

/**
 * Replicas in use, by identity: the main thread lists their paths
 * (keeld_replica_set_add), the blocking job stats them once (keeld_replica_set_stat)
 * and checks each target against them, adding each accepted target so the next
 * one of the same request is checked against it too.
 */
struct keeld_replica_set;

/** \return an empty set, or NULL on out of memory. */
struct keeld_replica_set *keeld_replica_set_new(void);

/** Add \p path of volume \p volume (copied), identity unknown yet. \return 0 or -ENOMEM. */
int keeld_replica_set_add(struct keeld_replica_set *set, const char *path, const char *volume);

/** Stat every path added without an identity. A path that cannot be looked at (a
 * missing file) keeps none: nothing that exists can be the same file. Blocks. */
void keeld_replica_set_stat(struct keeld_replica_set *set);

/** Add a target of the request being checked, whose identity is known.
 * \return 0 or -ENOMEM. */
int keeld_replica_set_add_target(struct keeld_replica_set *set, const char *path,
				 const struct keeld_replica_id *id);

/**
 * \return 0 when \p id is none of the set's, else -EEXIST with err naming both paths:
 * "replica /a//x.img is the same file as /a/x.img of volume v1".
 */
int keeld_replica_set_check(const struct keeld_replica_set *set, const char *path,
			    const struct keeld_replica_id *id, char *err, size_t errlen);

/** Free \p set (NULL is fine). */
void keeld_replica_set_free(struct keeld_replica_set *set);

#endif /* KEEL_DAEMON_REPLICA_PROBE_H */
