/*
 * keel nexus: a replicated (mirrored) volume over N replica bdevs.
 *
 * A volume is a bdev named after the volume. Every write, flush, unmap and
 * write_zeroes goes to every writable replica; reads go to one healthy replica.
 * The first KEEL_NEXUS_DATA_OFFSET bytes of each replica hold two copies of an
 * on-disk label (checksummed with crc32c) that records the volume identity, the
 * volume size and a generation counter bumped on every membership change, so a
 * replica that missed writes is never trusted again (see docs/nexus.md).
 *
 * Threading
 * ---------
 * Every management call (create, open, destroy, add/remove/fault replica, info,
 * lookup) must be made on one keel thread, the management thread: keeld's main
 * thread. A volume belongs to the thread that created or opened it; faults detected
 * by I/O on any thread are sent there by message. I/O goes through the ordinary bdev
 * API (keel_bdev_open_ext on the volume's name) on any keel thread.
 *
 * Errors
 * ------
 * Every int return is 0 or a negative errno. Asynchronous calls take cb_fn, cb_arg
 * last: 0 means cb_fn runs exactly once, later, on the calling thread, never inside
 * the call; a negative return means it never runs. A completion gets a status (0 or
 * a negative errno) and, on failure, a human-readable message naming the volume and
 * replica that is valid only during the callback (for RPC error replies).
 */
#ifndef KEEL_NEXUS_H
#define KEEL_NEXUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/bdev.h"
#include "keel/bdev_module.h"

#ifdef __cplusplus
extern "C" {
#endif

struct keel_nexus;
struct json_t; /* jansson */

/** Most replicas one volume can have. */
#define KEEL_NEXUS_MAX_REPLICAS 16
/** Longest volume name (see keel_nexus_name_valid). */
#define KEEL_NEXUS_NAME_MAX KEEL_BDEV_NAME_MAX
/** Where user data starts on every replica; below it live the labels (and, later,
 * the write-intent bitmap). A replica must be larger than this. */
#define KEEL_NEXUS_DATA_OFFSET (1024u * 1024u)

/** The nexus bdev module: register it (keel_bdev_module_register) before
 * keel_bdev_subsystem_init, like the other built-in modules. */
extern struct keel_bdev_module keel_bdev_nexus_module;

enum keel_nexus_state {
	KEEL_NEXUS_ONLINE = 0, /**< every member replica healthy */
	KEEL_NEXUS_DEGRADED,   /**< at least one healthy replica, some not */
	KEEL_NEXUS_FAULTED,    /**< no healthy replica: I/O fails at once with -EIO */
};

enum keel_nexus_replica_state {
	/** In sync: takes reads and writes. */
	KEEL_NEXUS_REPLICA_HEALTHY = 0,
	/** Out of sync: takes writes, never reads, never trusted as a source. The
	 * rebuild engine copies the volume to it, then makes it healthy. */
	KEEL_NEXUS_REPLICA_REBUILDING,
	/** Out of the volume; no I/O. See the fault reason. */
	KEEL_NEXUS_REPLICA_FAULTED,
	/** A member recorded in the label whose bdev was not given at assembly. */
	KEEL_NEXUS_REPLICA_OFFLINE,
};

enum keel_nexus_fault_reason {
	KEEL_NEXUS_REASON_NONE = 0,
	KEEL_NEXUS_REASON_IO_ERROR,  /**< an I/O or a label write failed */
	KEEL_NEXUS_REASON_REMOVED,   /**< removed by the administrator (transient) */
	KEEL_NEXUS_REASON_STALE,     /**< its label generation is behind: it missed writes */
	KEEL_NEXUS_REASON_ADMIN,     /**< faulted by keel_nexus_fault_replica */
	KEEL_NEXUS_REASON_CANT_OPEN, /**< bdev missing, claimed, or its label refused */
};

/**
 * The rule for volume names, wherever one comes from (create, open, a label read
 * from a replica, keeld's RPCs): 1..KEEL_NEXUS_NAME_MAX bytes of printable ASCII
 * (0x21-0x7e), no '/'. Names are logged and become bdev names; nothing else can
 * smuggle terminal escapes or line breaks into a log. On false, \p why (may be
 * NULL) says what is wrong without repeating the name. Any thread.
 */
bool keel_nexus_name_valid(const char *name, char *why, size_t whylen);

const char *keel_nexus_state_name(enum keel_nexus_state state); /**< "online" ... */
const char *keel_nexus_replica_state_name(enum keel_nexus_replica_state state);
const char *keel_nexus_fault_reason_name(
	enum keel_nexus_fault_reason reason); /**< "io_error" ... */

/**
 * Completion of a management call. \p status 0 or a negative errno; \p errmsg NULL on
 * success, else a message for humans valid during the call only. \p nexus is the
 * volume for create/open (NULL on failure), otherwise NULL.
 */
typedef void (*keel_nexus_op_cb)(void *cb_arg, int status, const char *errmsg,
				 struct keel_nexus *nexus);

struct keel_nexus_create_opts {
	const char *name;            /**< volume (and bdev) name, required */
	const char *uuid;            /**< volume UUID string; NULL generates one */
	const char *const *replicas; /**< replica bdev names */
	uint32_t num_replicas;       /**< 1..KEEL_NEXUS_MAX_REPLICAS */
	/** Volume size in bytes; 0 = the smallest replica minus KEEL_NEXUS_DATA_OFFSET. */
	uint64_t size_bytes;
	/** Overwrite replicas that carry a label of another volume (or a corrupt one). */
	bool force;
};

/**
 * Create a new volume: claim every replica, write fresh labels (generation 1) to all,
 * flush, then register the volume bdev.
 *
 * Errors (status): -EINVAL (bad name/uuid/size, too many replicas, the same bdev
 * twice, block sizes differ, replica smaller than the data offset), -EEXIST (a bdev
 * or volume of that name exists; or a replica carries another volume's label and
 * !force), -ENODEV (no such replica bdev), -EPERM (replica claimed by someone else),
 * -ENOSPC (size_bytes larger than the smallest replica allows), -EIO (label write
 * failed), -ENOMEM. Nothing stays claimed or registered on failure.
 * \return 0 (cb runs) or -EINVAL/-ENOMEM (cb never runs).
 */
int keel_nexus_create(const struct keel_nexus_create_opts *opts, keel_nexus_op_cb cb_fn,
		      void *cb_arg);

struct keel_nexus_open_opts {
	/** Expected volume name; NULL accepts the name found in the labels (then every
	 * valid label must name the same volume). */
	const char *name;
	const char *const *replicas; /**< replica bdev names to look at */
	uint32_t num_replicas;
	/**
	 * Assemble from the newest generation seen even when a member of that
	 * generation is missing (it might hold newer data: writes acknowledged after
	 * the others were faulted may be lost). Like mdadm --assemble --force.
	 */
	bool force;
};

/**
 * Assemble an existing volume from the labels on \p opts->replicas.
 *
 * Each bdev is refused (kept out, state faulted/cant_open with a detail saying why)
 * when it cannot be opened or claimed, has no label, both label copies fail their
 * checksum, the label is of another volume, of an unknown version, or its sizes do
 * not fit. Among the rest the newest generation wins: replicas behind it are
 * faulted/stale and never read; members of that generation that were not given are
 * offline. If a healthy member of the newest generation is missing, the volume is
 * registered but FAULTED (no I/O, nothing written) and its info names what it saw,
 * unless force. A successful assembly bumps the generation and marks the labels
 * dirty (in use) before registering the bdev.
 *
 * Errors (status): -EINVAL (bad options, labels of different volumes and no name),
 * -ENOENT (no replica carries a valid label of the volume; errmsg lists each
 * refusal), -EEXIST (a bdev of that name exists), -EIO, -ENOMEM.
 * \return 0 (cb runs) or -EINVAL/-ENOMEM (cb never runs).
 */
int keel_nexus_open(const struct keel_nexus_open_opts *opts, keel_nexus_op_cb cb_fn, void *cb_arg);

/**
 * Stop a volume: unregister its bdev (open descriptors get a remove event; the
 * volume goes when they are closed), then write clean labels to its members with a
 * bumped generation, or with \p wipe_labels zero both label copies of every replica
 * it holds, then release the replicas.
 * Errors: -ENODEV (no such volume, status of a negative return). Label write errors
 * are logged; the volume is gone either way.
 */
int keel_nexus_destroy(const char *name, bool wipe_labels, keel_nexus_op_cb cb_fn, void *cb_arg);

/**
 * Add bdev \p bdev_name as a replica. It joins as REBUILDING (receives every write
 * from now on, never read) and a rebuild job is queued for it: a full copy for a new
 * replica; for a former member of this volume (its label names this volume and a
 * member UUID, e.g. a faulted replica re-added) a partial copy of the regions the
 * write-intent bitmap marks, when the bitmap covers its absence, else a full one.
 * Errors (status): -ENODEV (no such volume or bdev), -EPERM (claimed), -EEXIST (already
 * a replica; or foreign label and !force), -EINVAL (block size differs, too small),
 * -ENOTSUP (lacks an I/O type the volume offers), -ENOSPC (no free slot), -EIO
 * (the volume is faulted, or the label write failed).
 */
int keel_nexus_add_replica(const char *name, const char *bdev_name, bool force,
			   keel_nexus_op_cb cb_fn, void *cb_arg);

/**
 * Remove replica \p replica (bdev name or replica UUID) from the volume: bump the
 * generation, rewrite the labels of the remaining members, detach it from every
 * channel (its in-flight I/O finishes first), close and release it.
 * Errors: -ENODEV (no such volume or replica), -EBUSY (it is the last healthy
 * replica; the message says so).
 */
int keel_nexus_remove_replica(const char *name, const char *replica, keel_nexus_op_cb cb_fn,
			      void *cb_arg);

/**
 * Fault replica \p replica (reason admin); it stays listed as faulted and is
 * released. Errors as keel_nexus_remove_replica; -EALREADY when not healthy or
 * rebuilding.
 */
int keel_nexus_fault_replica(const char *name, const char *replica, keel_nexus_op_cb cb_fn,
			     void *cb_arg);

struct keel_nexus_replica_info {
	char bdev_name[KEEL_BDEV_NAME_MAX + 1]; /**< "" for an offline member */
	char uuid[KEEL_UUID_STR_LEN];           /**< replica UUID from its label */
	enum keel_nexus_replica_state state;
	enum keel_nexus_fault_reason reason;
	uint64_t generation; /**< label generation last read or written */
	char detail[160];    /**< why it is not healthy ("" if it is) */
	/** Read errors repaired by rewriting the range from another replica. */
	uint64_t read_errors_repaired;
};

struct keel_nexus_info {
	char name[KEEL_NEXUS_NAME_MAX + 1];
	char uuid[KEEL_UUID_STR_LEN];
	enum keel_nexus_state state;
	char state_detail[512]; /**< why faulted/degraded; "" when online */
	uint64_t size_bytes;
	uint32_t block_size;
	uint64_t data_offset;
	uint64_t generation;
	/** The labels were dirty at assembly: the last stop was not clean, so replicas
	 * may differ in the writes that were in flight then. */
	bool unclean_shutdown;
	uint32_t num_replicas;
	struct keel_nexus_replica_info replicas[KEEL_NEXUS_MAX_REPLICAS];
};

/** What the label area of a replica says (keel_nexus_label_inspect). */
struct keel_nexus_label_summary {
	char volume_name[KEEL_NEXUS_NAME_MAX + 1]; /**< a valid label: its volume */
	char volume_uuid[KEEL_UUID_STR_LEN];
	char replica_uuid[KEEL_UUID_STR_LEN];
	uint64_t generation;
	/** No label, but the write-intent bitmap is still there: a former replica whose
	 * labels were wiped (keel_nexus_destroy with wipe_labels). */
	bool wiped;
	char why[96]; /**< a label the nexus would refuse: why ("label checksum mismatch") */
};

/**
 * Read the labels of a replica from \p buf, its first \p len bytes (all
 * KEEL_NEXUS_DATA_OFFSET of them to see both copies; what a shorter buffer lacks
 * counts as blank), as the nexus reads them at assembly: for a tool that looks at a
 * file or device before it hands it to the nexus.
 *
 * Threading: any thread; no I/O, no state.
 * \return 0 (a valid label: \p out describes the newer copy), -ENODATA (no label;
 * out->wiped may be set), or the nexus's reason to refuse it: -EBADMSG (checksum),
 * -EPROTONOSUPPORT (unknown version), -EINVAL (inconsistent fields), with out->why.
 */
int keel_nexus_label_inspect(const void *buf, size_t len, struct keel_nexus_label_summary *out);

/** Look up a volume by name. \return NULL if none. Management thread only. */
struct keel_nexus *keel_nexus_get_by_name(const char *name);
/** Iterate volumes: first then next(prev). Management thread only. */
struct keel_nexus *keel_nexus_first(void);
struct keel_nexus *keel_nexus_next(struct keel_nexus *prev);
const char *keel_nexus_get_name(const struct keel_nexus *nexus);

/** Fill \p info. Management thread only. \return 0. */
int keel_nexus_get_info(struct keel_nexus *nexus, struct keel_nexus_info *info);
/** The nexus's state alone (cheaper than keel_nexus_get_info). Management thread only. */
enum keel_nexus_state keel_nexus_get_state(const struct keel_nexus *nexus);

/**
 * \p info as a new jansson object (caller owns the reference):
 * {name, uuid, state, state_detail, size, block_size, data_offset, generation,
 *  unclean_shutdown, replicas: [{bdev, uuid, state, reason, generation, detail}]}.
 * \return NULL on out of memory.
 */
struct json_t *keel_nexus_info_to_json(const struct keel_nexus_info *info);

/* ------------------------------------------------------------------------------ */
/* Rebuild and write-intent bitmap                                                 */
/* ------------------------------------------------------------------------------ */

/**
 * Rebuild job states. pending: queued (daemon-wide cap on running jobs);
 * running; paused (no segment in flight); stopped (by the operator, the target
 * stays rebuilding until started again); failed; completed (target healthy).
 */
enum keel_rebuild_state {
	KEEL_REBUILD_PENDING = 0,
	KEEL_REBUILD_RUNNING,
	KEEL_REBUILD_PAUSED,
	KEEL_REBUILD_STOPPED,
	KEEL_REBUILD_FAILED,
	KEEL_REBUILD_COMPLETED,
};

const char *keel_rebuild_state_name(enum keel_rebuild_state state); /**< "running" ... */

/** A snapshot of one job (also the record handed to the end hook). */
struct keel_rebuild_stats {
	char volume[KEEL_NEXUS_NAME_MAX + 1];
	char source[KEEL_BDEV_NAME_MAX + 1]; /**< current source bdev ("" if none) */
	char target[KEEL_BDEV_NAME_MAX + 1];
	char target_uuid[KEEL_UUID_STR_LEN];
	enum keel_rebuild_state state;
	bool is_partial;
	uint32_t block_size;
	uint64_t blocks_total;       /**< blocks the job must cover (partial: set regions) */
	uint64_t blocks_done;        /**< blocks covered so far */
	uint64_t blocks_transferred; /**< blocks actually copied */
	uint32_t progress_pct;
	double rate_mib_s;      /**< average copy rate since start (excl. paused time) */
	int64_t eta_s;          /**< -1 when unknown */
	uint64_t start_time_ms; /**< wall clock, ms since the epoch; 0 = not started */
	uint64_t end_time_ms;   /**< 0 while not ended */
	uint64_t duration_ms;   /**< running time */
	uint32_t tasks_active;
	uint32_t segment_size;
	double rate_limit_mib_s; /**< 0 = unlimited */
	char error[160];
};

/** Largest rate limit accepted, in MiB/s (1 TiB/s: far above any disk; 0 means no
 * limit). A larger value, a negative one or NaN is refused with -EINVAL. */
#define KEEL_REBUILD_RATE_MAX_MIB_S 1048576.0

struct keel_rebuild_opts {
	uint32_t segment_size;       /**< bytes per copy task, default 128 KiB */
	uint32_t tasks;              /**< segments in flight per job, default 16 (max 32); 1 while
				      *  the volume serves user I/O (adaptive back-off,
				      *  docs/rebuild.md) */
	double rate_limit_mib_s;     /**< default limit of new jobs; 0 = none; at most
				      *  KEEL_REBUILD_RATE_MAX_MIB_S */
	uint32_t max_concurrent;     /**< daemon-wide running jobs, default 4; 0 = no cap */
	bool auto_rebuild;           /**< start jobs on add/rejoin/assembly (default true) */
	bool bitmap;                 /**< keep a write-intent bitmap on new/opened volumes */
	uint64_t bitmap_region_size; /**< bytes per bit, power of two, default 2 MiB */
	uint32_t bitmap_clear_ms;    /**< lazy clear period, default 5000 */
};

/** Current options (defaults until set). Management thread only. */
void keel_rebuild_get_opts(struct keel_rebuild_opts *opts);
/** Replace the options. \return 0 or -EINVAL (segment not a multiple of 4 KiB or
 * > 4 MiB, tasks 0 or > 32, rate limit not in 0..KEEL_REBUILD_RATE_MAX_MIB_S (NaN
 * included), region not a power of two >= 64 KiB). Running jobs keep their segment
 * size and tasks; max_concurrent applies at once. */
int keel_rebuild_set_opts(const struct keel_rebuild_opts *opts);

/**
 * Start (or restart a stopped/failed) rebuild of \p replica (bdev name or UUID) of
 * volume \p volume. The replica must be rebuilding (a healthy one is refused).
 * \return 0, -ENODEV (no such volume/replica), -EINVAL (not rebuilding), -EBUSY
 * (a job is already active), -EIO (no healthy source), -ENOMEM.
 */
int keel_rebuild_start(const char *volume, const char *replica);
/** Stop: in-flight segments finish, the target stays rebuilding. -ENODEV, -EALREADY. */
int keel_rebuild_stop(const char *volume, const char *replica);
/** Pause a pending/running job. -ENODEV, -EINVAL (ended). */
int keel_rebuild_pause(const char *volume, const char *replica);
/** Resume a paused job. -ENODEV, -EINVAL (not paused). */
int keel_rebuild_resume(const char *volume, const char *replica);
/** Rate limit of one job in MiB/s (0 = none). -ENODEV, -EINVAL (not in
 * 0..KEEL_REBUILD_RATE_MAX_MIB_S, NaN included). */
int keel_rebuild_set_rate(const char *volume, const char *replica, double mib_s);

/**
 * Call \p fn for every job (of \p volume, or all if NULL), active or ended but not
 * yet forgotten (the last job per target is kept). Management thread only.
 * \return number of jobs visited.
 */
uint32_t keel_rebuild_list(const char *volume,
			   void (*fn)(void *ctx, const struct keel_rebuild_stats *st), void *ctx);

/** Called on the management thread when a job ends (stopped, failed, completed). */
typedef void (*keel_rebuild_end_fn)(void *ctx, const struct keel_rebuild_stats *st);
void keel_rebuild_set_end_hook(keel_rebuild_end_fn fn, void *ctx);

/**
 * Called on the management thread when replica \p replica_bdev of volume \p volume
 * faults on an I/O error (not when an administrator faults it). The daemon uses it to
 * bring a replica on another host back once its server answers again. One hook; NULL
 * removes it.
 */
typedef void (*keel_nexus_fault_fn)(void *ctx, const char *volume, const char *replica_bdev);
void keel_nexus_set_fault_hook(keel_nexus_fault_fn fn, void *ctx);

/** \p st as a new jansson object (volume, source, target, state, ... error). */
struct json_t *keel_rebuild_stats_to_json(const struct keel_rebuild_stats *st);

/** Write-intent bitmap of a volume: region size, bits, bits set. \return -ENOENT
 * when the volume keeps none. Management thread only. */
int keel_nexus_bitmap_info(struct keel_nexus *nexus, uint64_t *region_size, uint32_t *nbits,
			   uint32_t *bits_set, uint64_t *events_cleared);

#ifdef __cplusplus
}
#endif

#endif /* KEEL_NEXUS_H */
