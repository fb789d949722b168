/*
 * Replica backends: how the volume manager turns a replica locator (a file path today;
 * an NBD URI or a uring-backed file later) into a bdev the nexus can use, and what it
 * does to the target before and after. The manager owns the policy (which targets,
 * when, undo in reverse order); a backend owns the mechanism.
 *
 * The file backends (daemon/volume_files.c) probe files and block devices
 * (daemon/replica_probe.h), create and size missing files, and open them as aio
 * bdevs (keeld_replica_backend_files) or uring bdevs (keeld_replica_backend_uring);
 * daemon/volume_backend.c maps a volume's backend name to one of them. Unit tests
 * plug in ones over malloc and error bdevs (keeld_volumes_set_backend).
 *
 * Threading: prepare and unprepare BLOCK and run on the blocking-work pool (the
 * manager spawns them, one job per operation, never two for one volume at a time);
 * open, close, open_error_text and available run on the main keel thread (available
 * also in main() before the reactors start).
 */
#ifndef KEEL_DAEMON_REPLICA_BACKEND_H
#define KEEL_DAEMON_REPLICA_BACKEND_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/bdev.h"
#include "keel/bdev_module.h"

struct keeld_replica_set;

/** The targets of one operation, handed to prepare and unprepare. */
struct keeld_replica_prep {
	size_t n;
	char **locators; /**< the targets, in the volume's order */
	/** Per target: this operation created it. prepare sets it for each target it
	 * creates; unprepare removes exactly those and clears the flags. */
	bool *created;
	uint64_t need; /**< bytes each target must hold (volume size + labels) */
	bool force;    /**< overwrite data and foreign labels */
	/** The volume a replica is added to: a label of it is a former member (welcome).
	 * "" for a new volume, where every label is another volume's. */
	char volume_uuid[KEEL_UUID_STR_LEN];
	/** The replicas of every other volume (and the other replicas of this one), by
	 * identity, so a target that is one of them under another name is refused. */
	struct keeld_replica_set *in_use;
	/** Why prepare failed: one line naming the target. */
	char err[2 * PATH_MAX + 256];
};

struct keeld_replica_backend {
	/** Short name for log lines ("files"). */
	const char *name;
	/**
	 * Make every target able to hold a replica of prep->need bytes: refuse one that
	 * holds data, another label or a replica in use (unless force where the rules
	 * allow), create what is missing. On failure remove what this call created
	 * (as unprepare) and fill prep->err. Blocking pool.
	 * \return 0 or a negative errno (-EEXIST, -ENOSPC, -ENOENT, -EINVAL, -EIO, ...).
	 */
	int (*prepare)(struct keeld_replica_prep *prep);
	/** Remove the targets whose created flag is set (an undo). Blocking pool. */
	void (*unprepare)(struct keeld_replica_prep *prep);
	/**
	 * Open \p locator as a bdev named \p bdev_name. \return 0 and \p cb_fn later with
	 * the status (-ENOENT: the target does not exist), or a negative errno (cb never
	 * runs).
	 */
	int (*open)(const char *bdev_name, const char *locator, keel_bdev_create_cb cb_fn,
		    void *cb_arg);
	/** Close the bdev open() made. \return 0 and \p cb_fn later, or -ENODEV when it is
	 * already gone (deleted by hand: nothing to undo). */
	int (*close)(const char *bdev_name, keel_bdev_done_cb cb_fn, void *cb_arg);
	/** Words for a person on why open() failed with \p status ("file does not exist"). */
	const char *(*open_error_text)(int status);
	/** Whether open() can work on this machine; false fills \p why (one line). NULL:
	 * always. Cheap after its first answer (io_uring's probe is made once). */
	bool (*available)(char *why, size_t len);
};

/** Files and block devices through Linux AIO (daemon/volume_files.c). */
extern const struct keeld_replica_backend keeld_replica_backend_files;
/** The same files through io_uring (daemon/volume_files.c). */
extern const struct keeld_replica_backend keeld_replica_backend_uring;

#endif /* KEEL_DAEMON_REPLICA_BACKEND_H */
