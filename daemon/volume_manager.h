/*
 * The volume manager of keeld: the policy around the nexus (include/keel/nexus.h).
 *
 * A volume is a name, a size and a list of replicas. Each replica is a locator (a file
 * path today) that a replica backend (daemon/replica_backend.h; files through Linux
 * AIO by default) turns into a bdev named "<volume>.r<N>"; the nexus bdev over those
 * carries the volume's name, so an NBD export of that name serves the volume.
 *
 * The manager keeps the registry of volumes, runs each change as a state machine
 * (create, destroy, add, re-add, remove and fault a replica; restore at startup;
 * shutdown), persists what it cannot learn from the disks (which replicas make a
 * volume, and its exports) in the state document (daemon/state.h, written through
 * daemon/store.h), and answers with (status, message). It knows nothing of JSON-RPC:
 * daemon/rpc_volume.c decodes parameters, calls one function here and encodes the
 * result (daemon/volume_json.h renders a volume).
 *
 * Rules every operation follows:
 * - One change per volume at a time: a second change to the same volume meanwhile is
 *   refused with -EBUSY and a message saying to try again (never interleaved).
 * - A change answers once it is on disk: success means it survives a restart. When the
 *   change was made but could not be saved, the status is the save's errno and the
 *   message says so.
 * - A create or add that fails half-way undoes what it did, in reverse order: the
 *   replica bdevs it opened are closed and the targets it created are removed; nothing
 *   of the volume is left behind.
 * - Anything that can block (probing, creating, sizing, removing replica targets)
 *   runs on the blocking-work pool.
 *
 * Threading: every function runs on the main keel thread (the thread that runs the
 * RPC handlers; keeld's first reactor), except keeld_volumes_load() and
 * keeld_volumes_fini(), which main() calls before the reactors start and after they
 * stopped. Callbacks run on the main keel thread.
 *
 * Conventions: int returns are 0 or a negative errno. An operation that returns 0 runs
 * its callback exactly once, later, never inside the call; a negative return means
 * the callback never runs. Refusals that depend on the registry (no such volume,
 * busy, already a replica, ...) come through the callback with their message.
 *
 * Lifetime: a struct keeld_volume lives until its destroy (or its failed create)
 * completes, or until keeld_volumes_fini; use it inside the callback or right after a
 * lookup, and look it up again by name rather than keep it across a return to the
 * reactor. Strings and lists passed in are copied; nothing given to the manager must
 * outlive the call.
 */
#ifndef KEEL_DAEMON_VOLUME_MANAGER_H
#define KEEL_DAEMON_VOLUME_MANAGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct keeld_volume;
struct keeld_replica_backend;

/** Volume sizes are whole 4 KiB blocks, so any block size up to 4 KiB (and O_DIRECT) fits. */
#define KEELD_VOLUME_SIZE_ALIGN 4096u

/**
 * Which bdev module opens a replica file: Linux AIO or io_uring (docs/volumes.md says
 * when each is the better choice). A volume has one, the default for its replicas; a
 * replica added later may name another, so one volume can mix them.
 */
enum keeld_backend {
	KEELD_BACKEND_DEFAULT = 0, /**< in a request: the volume's, or the daemon's default */
	KEELD_BACKEND_AIO,
	KEELD_BACKEND_URING,
};

/** "aio" or "uring" ("default" for KEELD_BACKEND_DEFAULT, "?" out of range). */
const char *keeld_backend_name(enum keeld_backend backend);

/**
 * \p text as a backend: "aio" or "uring". \return true, or false with \p why (may be
 * NULL) saying which names exist.
 */
bool keeld_backend_parse(const char *text, enum keeld_backend *out, char *why, size_t len);

/**
 * The backend of volumes created without one (keeld --volume-backend). When
 * \p backend is unavailable here (io_uring refused by the kernel, a sysctl or a
 * seccomp filter), aio is used instead and one log line says why: never a failure.
 * main() calls it before the reactors start: it asks whether io_uring works whatever
 * \p backend is, and that first probe may set up a ring, so the later questions (at
 * restore, per RPC) answer from the cache on a reactor. Unit tests call it on the main
 * keel thread. \return the backend now used.
 */
enum keeld_backend keeld_volumes_set_default_backend(enum keeld_backend backend);

/** The backend of volumes created without one. */
enum keeld_backend keeld_volumes_default_backend(void);

/**
 * End of an operation: \p status 0, or a negative errno with \p errmsg, a one-line
 * message for a person (never NULL then; NULL on success). \p vol is the volume the
 * operation changed (NULL after a destroy, and on a failure where it does not exist).
 */
typedef void (*keeld_volume_op_cb)(void *cb_arg, int status, const char *errmsg,
				   struct keeld_volume *vol);

/** End of restore or shutdown. */
typedef void (*keeld_volumes_done_cb)(void *cb_arg);

/**
 * Volume name rules: the nexus's (keel_nexus_name_valid), so a name keeld accepts is
 * one the nexus accepts. \return true, or false with \p why (for a message) filled.
 */
bool keeld_volume_name_valid(const char *name, char *why, size_t len);

struct keeld_volume_create_opts {
	/** Volume name (keeld_volume_name_valid); also the name of the volume's bdev. */
	const char *name;
	/** Bytes, a positive multiple of KEELD_VOLUME_SIZE_ALIGN; with replica_bdevs 0
	 * lets the nexus take the largest size the replicas allow. */
	uint64_t size;
	/** Absolute paths of the replica targets (a persistent volume), or NULL. */
	const char *const *replicas;
	/** Test hook instead of replicas: existing bdevs (e.g. error bdevs). Such a volume
	 * is transient: keeld cannot recreate those bdevs, so it is not saved. */
	const char *const *replica_bdevs;
	/** Entries of replicas or replica_bdevs, 1..KEEL_NEXUS_MAX_REPLICAS. */
	uint32_t num_replicas;
	/** Overwrite targets that hold data or another volume's label. */
	bool force;
	/** Backend of the replica files; KEELD_BACKEND_DEFAULT: the daemon's default.
	 * Only with replicas (replica_bdevs are open already). */
	enum keeld_backend backend;
};

/**
 * Whether \p opts is well formed, without looking at the registry: a valid name,
 * exactly one of replicas and replica_bdevs, the replicas as absolute paths (bdev
 * names) given once each, and a usable size. \return true, or false with \p why
 * naming the field ("replicas[1]: ...", "size: ...").
 */
bool keeld_volume_create_opts_valid(const struct keeld_volume_create_opts *opts, char *why,
				    size_t len);

/**
 * Create a volume: prepare each replica target (probe it, refuse one that holds data
 * or is another replica unless force, create and size a missing file), open the
 * replicas, create the nexus (labels), save.
 * Errors through the callback: -EEXIST (the name or a replica is taken; a target holds
 * data or a foreign label), -ENODEV (a replica bdev does not exist), -ENOSPC (a file is
 * too small), -ENOTSUP (the backend asked for is unavailable here: the message says
 * why and to use aio), the errno of a file or open step, the nexus's error, or the
 * save's.
 * \return 0; -EINVAL (keeld_volume_create_opts_valid() refuses \p opts); -ESHUTDOWN
 * (keeld is stopping); -ENOMEM.
 */
int keeld_volume_create(const struct keeld_volume_create_opts *opts, keeld_volume_op_cb cb_fn,
			void *cb_arg);

/**
 * Destroy volume \p name: stop its exports, destroy the nexus (with \p wipe, erase the
 * labels so the replicas read as unused), close the replicas, forget it, save. The
 * replica files stay. Works on a volume that is not assembled.
 * Errors through the callback: -ENOENT, -EBUSY, the save's. \return 0, -EINVAL (NULL
 * name), -ESHUTDOWN, -ENOMEM.
 */
int keeld_volume_destroy(const char *name, bool wipe, keeld_volume_op_cb cb_fn, void *cb_arg);

/**
 * Whether an add-replica request is well formed: exactly one of \p replica (an
 * absolute path) and \p replica_bdev, and, when volume \p name exists, the kind it
 * was made from (files, or bdevs with the test hook); \p backend a known one, and
 * KEELD_BACKEND_DEFAULT with replica_bdev. \return true, or false with \p why.
 */
bool keeld_volume_add_replica_valid(const char *name, const char *replica, const char *replica_bdev,
				    enum keeld_backend backend, char *why, size_t len);

/**
 * Add a replica to assembled volume \p name: prepare the target (as create does;
 * a label of this volume is a former member and welcome), open it, add it to the
 * nexus (which rebuilds it), save. A path this volume still lists as faulted or
 * offline is re-added in place: a fresh bdev over the same path, which the nexus
 * recognises by its label and rejoins (partial rebuild when the bitmap covers it).
 * The replica file is opened through \p backend; KEELD_BACKEND_DEFAULT: the volume's
 * (a re-added replica keeps its own unless one is given).
 * Errors through the callback: -ENOENT, -EBUSY, -ENODEV (not assembled, or no such
 * bdev), -EEXIST (already a replica), -ENOSPC (the most replicas), -ENOTSUP (the
 * backend is unavailable here), as create for the target, the nexus's error, the
 * save's.
 * \return 0, -EINVAL (keeld_volume_add_replica_valid() refuses), -ESHUTDOWN, -ENOMEM.
 */
int keeld_volume_add_replica(const char *name, const char *replica, const char *replica_bdev,
			     enum keeld_backend backend, bool force, keeld_volume_op_cb cb_fn,
			     void *cb_arg);

/**
 * Remove replica \p replica (its path, or its bdev name) from assembled volume \p name:
 * out of the nexus, close its bdev, forget it, save. The file stays.
 * Errors through the callback: -ENOENT (no such volume or replica), -EBUSY (also: the
 * last healthy replica), -ENODEV, the nexus's, the save's.
 * \return 0, -EINVAL (NULL argument), -ESHUTDOWN, -ENOMEM.
 */
int keeld_volume_remove_replica(const char *name, const char *replica, keeld_volume_op_cb cb_fn,
				void *cb_arg);

/**
 * Take replica \p replica of assembled volume \p name out of service (the nexus
 * records the fault in the labels; nothing to save).
 * Errors through the callback: -ENOENT, -EBUSY (also: the last healthy replica),
 * -ENODEV (not in the assembled volume), -EALREADY (not healthy or rebuilding).
 * \return 0, -EINVAL (NULL argument), -ESHUTDOWN, -ENOMEM.
 */
int keeld_volume_fault_replica(const char *name, const char *replica, keeld_volume_op_cb cb_fn,
			       void *cb_arg);

/** Volumes in creation order (NULL at the end). */
struct keeld_volume *keeld_volume_first(void);
struct keeld_volume *keeld_volume_next(struct keeld_volume *vol);

/**
 * Volume \p name, or NULL with \p err (may be NULL) saying it was not found and where
 * to look.
 */
struct keeld_volume *keeld_volume_find(const char *name, char *err, size_t errlen);

/** The volume's name. */
const char *keeld_volume_get_name(const struct keeld_volume *vol);

/** How many volumes are in which state (keeld_volumes_summarize). */
struct keeld_volumes_summary {
	uint32_t volumes;     /**< every listed volume */
	uint32_t online;      /**< assembled, every replica healthy */
	uint32_t degraded;    /**< assembled, serving with some replicas not healthy */
	uint32_t faulted;     /**< assembled, no healthy replica: I/O fails */
	uint32_t unassembled; /**< from the state file, could not be assembled */
	uint32_t other;       /**< being created or destroyed */
};

/** Count the volumes by state into \p out. O(volumes); no allocation. */
void keeld_volumes_summarize(struct keeld_volumes_summary *out);

/**
 * Called after every change the manager saves (a volume or replica created, destroyed,
 * faulted by an RPC, an export started or stopped) and, during the restore, after each
 * volume was assembled or given up on, on the main keel thread. One listener; NULL
 * removes it. For a summary that must follow changes (keeld's status line for
 * systemd). May be set in main() before the reactors start.
 */
void keeld_volumes_set_change_listener(void (*fn)(void *ctx), void *ctx);

/**
 * Take the volumes and exports of a checked state document (keeld_state_read) into
 * the registry, not yet assembled. \p doc may be NULL (no state file). main(), before
 * the reactors start. \return 0 or -ENOMEM.
 */
int keeld_volumes_load(json_t *doc);

/**
 * Bring the loaded volumes up: open each replica, assemble each volume from its labels
 * (keel_nexus_open), start its saved exports, save; from then on every export that
 * starts or stops is saved (keel_nbd_set_export_listener). A volume that cannot be
 * assembled stays listed as unassembled with the reason (see docs/volumes.md for what
 * a missing, stale or foreign replica does); nothing here stops keeld.
 * \p cb_fn runs once, later.
 */
void keeld_volumes_restore(keeld_volumes_done_cb cb_fn, void *cb_arg);

/**
 * Shutdown, before the exports are stopped: refuse new operations (-ESHUTDOWN), wait
 * for those in flight to finish, stop following the exports and write the state one
 * last time with the exports as they are now (so the exports stopped next are kept),
 * then \p cb_fn, later.
 */
void keeld_volumes_shutdown(keeld_volumes_done_cb cb_fn, void *cb_arg);

/** Free the registry (after the reactors stopped, or in a unit test's teardown). */
void keeld_volumes_fini(void);

/**
 * Test hook: what opens the replicas of backend \p kind (daemon/replica_backend.h);
 * NULL restores the real one (files through Linux AIO, or through io_uring). Unit
 * tests set ones over malloc and error bdevs. Only while no operation is in flight.
 */
void keeld_volumes_set_backend(enum keeld_backend kind,
			       const struct keeld_replica_backend *backend);

#endif /* KEEL_DAEMON_VOLUME_MANAGER_H */
