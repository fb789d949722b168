/**
 * \file
 * keel ublk frontend: a bdev served to the local kernel as /dev/ublkbN through the
 * kernel's ublk driver (drivers/block/ublk_drv.c, Linux >= 6.0, module ublk_drv).
 *
 * Each device has one ublk queue per reactor of the target (at most one per reactor);
 * a queue's io_uring (128-byte SQEs) is driven from a keel thread on that reactor, which
 * fetches the kernel's requests (FETCH_REQ / COMMIT_AND_FETCH_REQ) and turns each into a
 * bdev I/O on a buffer preallocated for its tag. Control commands block and run on the
 * blocking-work pool.
 *
 * Devices are created with UBLK_F_USER_RECOVERY: when keeld dies the kernel holds their
 * I/O, and a restarted keeld re-attaches (START_USER_RECOVERY, new queues,
 * END_USER_RECOVERY) from the records of keel_ublk_disk_snapshot().
 *
 * Threading: every function runs on the main keel thread, callbacks there too.
 */
#ifndef KEEL_UBLK_H
#define KEEL_UBLK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_ublk_disk;

/** Queue depth when the caller gives 0. */
#define KEEL_UBLK_DEFAULT_QUEUE_DEPTH 128u
/** Largest queue depth accepted (the kernel allows 4096; each tag holds a buffer). */
#define KEEL_UBLK_MAX_QUEUE_DEPTH 1024u
/** Largest request (and per-tag buffer) in bytes. */
#define KEEL_UBLK_IO_BUF_BYTES (256u * 1024u)
/** Most queues one device may have (bounded further by the target's reactors). */
#define KEEL_UBLK_MAX_QUEUES 64u

/** Completion of an asynchronous call: 0 or a negative errno, and a line for a person. */
typedef void (*keel_ublk_done_cb)(void *cb_arg, int status, const char *err);

/**
 * Create the ublk target: the reactors whose CPUs are in \p cpumask (bit N = CPU N; 0 =
 * every reactor) host the queues. Checks that the driver is loaded (blocking pool).
 * \return 0 (cb_fn runs later), -EEXIST (already created), -EINVAL (no reactor in the
 * mask), -ENOMEM. The callback reports -ENODEV with "modprobe ublk_drv" when the driver
 * is missing (the target is not created then).
 */
int keel_ublk_target_create(uint64_t cpumask, keel_ublk_done_cb cb_fn, void *cb_arg);

/**
 * Stop every device (as keel_ublk_disk_stop) and drop the target.
 * \return 0 (cb_fn runs later), -ENOENT (no target).
 */
int keel_ublk_target_destroy(keel_ublk_done_cb cb_fn, void *cb_arg);

/** Whether the target exists. */
bool keel_ublk_target_exists(void);

struct keel_ublk_disk_opts {
	const char *bdev_name; /**< required */
	int64_t ublk_id;       /**< N of /dev/ublkbN, 0..(1<<20)-1, or -1 (default): any */
	uint32_t num_queues;   /**< 0 (default): one per target reactor; at most that */
	uint32_t queue_depth; /**< 0: KEEL_UBLK_DEFAULT_QUEUE_DEPTH; 1..KEEL_UBLK_MAX_QUEUE_DEPTH */
};

void keel_ublk_disk_opts_init(struct keel_ublk_disk_opts *opts);

/** Result of start and recover: \p id = N of /dev/ublkbN when \p status is 0. */
typedef void (*keel_ublk_start_cb)(void *cb_arg, int status, uint32_t id, const char *err);

/**
 * Serve a bdev as /dev/ublkbN (ADD_DEV, SET_PARAMS, queues fetch, START_DEV). Creates
 * the target with every reactor when none exists. A failure after ADD_DEV deletes the
 * device again: nothing is left half-created.
 * \return 0 (cb_fn runs later), -EINVAL (bad options; \p err says which), -ENODEV (no
 * such bdev), -EBUSY (this keeld serves that id), -EPERM (bdev claimed), -ENOMEM,
 * -ESHUTDOWN. The callback's errors: -ENODEV (driver not loaded), -EEXIST (id in use in
 * the kernel), -EPERM (needs root), or what the kernel said.
 */
int keel_ublk_disk_start(const struct keel_ublk_disk_opts *opts, keel_ublk_start_cb cb_fn,
			 void *cb_arg, char *err, size_t err_len);

/**
 * Re-attach to /dev/ublkb\p id left by a keeld that died (UBLK_F_USER_RECOVERY): waits
 * until the kernel has quiesced it, then START_USER_RECOVERY, new queues,
 * END_USER_RECOVERY; held I/O is reissued. Same returns as keel_ublk_disk_start().
 */
int keel_ublk_disk_recover(const char *bdev_name, uint32_t id, keel_ublk_start_cb cb_fn,
			   void *cb_arg, char *err, size_t err_len);

/**
 * Stop /dev/ublkb\p id: STOP_DEV (the kernel drains in-flight requests, then fails new
 * ones: unmount first), queues released, DEL_DEV, bdev closed, then cb_fn.
 * \return 0 (cb_fn runs later) or -ENOENT (not served by this keeld, or stopping).
 */
int keel_ublk_disk_stop(uint32_t id, keel_ublk_done_cb cb_fn, void *cb_arg);

/** Stop every device for shutdown, then cb_fn. Never fails. */
void keel_ublk_stop_all(keel_ublk_done_cb cb_fn, void *cb_arg);

/** Called on the main thread when the records of keel_ublk_disk_snapshot() changed. */
typedef void (*keel_ublk_listener_fn)(void *ctx);
void keel_ublk_set_listener(keel_ublk_listener_fn fn, void *ctx);

/** Running and recovering devices as a versioned JSON document. New reference or NULL. */
json_t *keel_ublk_disk_snapshot(void);

/**
 * Re-attach each device of \p doc (a snapshot of an earlier keeld; NULL: none) once its
 * bdev exists (checked every second). Malformed entries are skipped with a warning.
 * cb_fn runs once, later (status 0), when the first attempts have been started.
 */
void keel_ublk_disk_restore(const json_t *doc, keel_ublk_done_cb cb_fn, void *cb_arg);

/** Iterate devices (every state). */
struct keel_ublk_disk *keel_ublk_disk_first(void);
struct keel_ublk_disk *keel_ublk_disk_next(struct keel_ublk_disk *prev);
/** N of /dev/ublkbN, -1 while the kernel has not picked one. */
int64_t keel_ublk_disk_get_id(const struct keel_ublk_disk *disk);
const char *keel_ublk_disk_get_bdev_name(const struct keel_ublk_disk *disk);
/** "starting", "running", "waiting-for-bdev", "recovering" or "stopping". */
const char *keel_ublk_disk_get_state(const struct keel_ublk_disk *disk);
uint32_t keel_ublk_disk_get_num_queues(const struct keel_ublk_disk *disk);
uint32_t keel_ublk_disk_get_queue_depth(const struct keel_ublk_disk *disk);

#ifdef __cplusplus
}
#endif

#endif /* KEEL_UBLK_H */
