/*
 * keel block devices: the API for back-end (module) authors.
 *
 * A module fills a struct keel_bdev, points it at a static const function table and
 * registers it. The bdev core validates every request (range, alignment, read-only),
 * splits requests larger than max_transfer_blocks or crossing optimal_io_boundary,
 * bounces misaligned buffers, emulates write_zeroes with zero writes where the
 * module lacks it, completes flush at once where the module has no write cache, and
 * keeps statistics. So submit_request only sees valid, aligned, in-range requests of
 * supported types.
 *
 * Threading: submit_request runs on the submitting keel thread with that thread's
 * module channel; the module completes the request with keel_bdev_io_complete() on
 * that same thread (never from another OS thread: hop back by message first).
 * Completing inside submit_request is allowed: the core defers the user callback.
 */
#ifndef KEEL_BDEV_MODULE_H
#define KEEL_BDEV_MODULE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/uio.h>

#include "keel/bdev.h"
#include "keel/reactor.h"

#ifdef __cplusplus
extern "C" {
#endif

struct json_t; /* jansson */
struct keel_bdev_io;

/** Function table of a bdev. Unused optional slots are NULL. */
struct keel_bdev_fn_table {
	/**
	 * Release the module's resources for this bdev (after unregister, when every
	 * descriptor is closed). Return 0 when done synchronously, or 1 and call
	 * keel_bdev_destruct_done(bdev) later (on any keel thread).
	 */
	int (*destruct)(void *ctx);
	/** Execute \p io on \p ch (the module channel from get_io_channel). */
	void (*submit_request)(struct keel_io_channel *ch, struct keel_bdev_io *io);
	/** Whether the module handles \p type natively. */
	bool (*io_type_supported)(void *ctx, enum keel_bdev_io_type type);
	/** This thread's channel to the module's io_device for this bdev (a reference). */
	struct keel_io_channel *(*get_io_channel)(void *ctx);
	/** Optional: add module-specific fields to \p obj (a jansson object). */
	void (*dump_info_json)(void *ctx, struct json_t *obj);
};

/**
 * A block device. Modules allocate it (usually embedded in their own struct), fill
 * the fields marked "module", and register it. The core owns the rest.
 */
struct keel_bdev {
	/* module */
	char *name;               /**< unique; the core copies it at register */
	const char *product_name; /**< e.g. "AIO disk" */
	uint32_t block_size;      /**< bytes, power of two, >= 512 unless documented */
	uint64_t num_blocks;
	uint32_t required_alignment;  /**< buffer alignment in bytes, power of two; 0/1 = none */
	uint32_t optimal_io_boundary; /**< blocks; 0 = none. I/O crossing it is split */
	uint32_t max_transfer_blocks; /**< blocks; 0 = unlimited. Larger I/O is split */
	bool write_cache;             /**< volatile cache: flush/FUA reach the module */
	bool multi_conn_safe;         /**< concurrent writers see consistent data after flush */
	/** Reads cost more here than elsewhere (another host's disk): a consumer that has a
	 * choice, such as the nexus, reads from other bdevs first (md's write-mostly). */
	bool read_last;
	uint8_t uuid[16]; /**< all zero: the core generates a random one */
	void *ctxt;       /**< passed to the fn_table callbacks */
	const struct keel_bdev_fn_table *fn_table;
	struct keel_bdev_module *module;

	/* core; modules do not touch */
	struct keel_bdev_internal *internal;
	TAILQ_ENTRY(keel_bdev) link;
};

/** A request as the module sees it. Offsets and lengths in blocks. */
struct keel_bdev_io {
	struct keel_bdev *bdev;
	enum keel_bdev_io_type type;
	uint64_t offset_blocks;
	uint64_t num_blocks;
	/** Data buffers (read, write): aligned to required_alignment, total = num_blocks * block_size. */
	struct iovec *iovs;
	int iovcnt;
	uint32_t flags; /**< KEEL_BDEV_IO_FLAG_* */
	/* core-private state follows, then the module's context (get_ctx_size bytes) */
	struct keel_bdev_io_internal *internal;
	TAILQ_ENTRY(keel_bdev_io) module_link; /**< free for the module's own queues */
	uint8_t driver_ctx[] __attribute__((aligned(16)));
};

/**
 * Complete a request with \p status (0 or a negative errno). -ENOMEM means "out of
 * resources, retry": the core requeues the request and resubmits it once another
 * request of the channel completes (or after a short delay), never failing it.
 * Must be called on the thread that submitted it, exactly once.
 */
void keel_bdev_io_complete(struct keel_bdev_io *io, int status);

/**
 * For KEEL_BDEV_IO_GET_ALLOCATION: append a run of \p length bytes (a multiple of the
 * block size) with KEEL_BDEV_EXTENT_* \p flags to the answer, merged with the previous
 * run when the flags match. The extents array is io->iovs[0]; the core keeps the count
 * and the terminator. \return false once the array is full (the run was not added:
 * complete the request, the caller asks again from there). Submitting thread.
 */
bool keel_bdev_io_add_extent(struct keel_bdev_io *io, uint64_t length, uint32_t flags);

/** The module's per-request context (get_ctx_size bytes, 16-byte aligned). */
static inline void *keel_bdev_io_get_ctx(struct keel_bdev_io *io)
{
	return io->driver_ctx;
}

/** Byte helpers. */
static inline uint64_t keel_bdev_io_offset_bytes(const struct keel_bdev_io *io)
{
	return io->offset_blocks * io->bdev->block_size;
}
static inline uint64_t keel_bdev_io_num_bytes(const struct keel_bdev_io *io)
{
	return io->num_blocks * io->bdev->block_size;
}

/** A module: one static instance per back-end, registered explicitly by the daemon. */
struct keel_bdev_module {
	const char *name;
	/** Called once by keel_bdev_subsystem_init on the main thread. \return 0 or -errno. */
	int (*module_init)(void);
	/** Called once at fini after every bdev of the module is gone. May be NULL. */
	void (*module_fini)(void);
	/** Bytes of per-request context placed in driver_ctx. May be NULL (0). */
	uint32_t (*get_ctx_size)(void);
	TAILQ_ENTRY(keel_bdev_module) link;
};

/** Add \p module to the module list (before keel_bdev_subsystem_init). */
void keel_bdev_module_register(struct keel_bdev_module *module);

/** The built-in modules, registered by the daemon and tests. */
extern struct keel_bdev_module keel_bdev_malloc_module;
extern struct keel_bdev_module keel_bdev_null_module;
extern struct keel_bdev_module keel_bdev_aio_module;
extern struct keel_bdev_module keel_bdev_error_module;

typedef void (*keel_bdev_done_cb)(void *cb_arg, int status);

/**
 * Initialise the bdev layer and every registered module. Must be called on a keel
 * thread (the main thread); \p cb_fn runs there when done.
 * \return 0 (cb_fn will run with the status) or a negative errno.
 */
int keel_bdev_subsystem_init(keel_bdev_done_cb cb_fn, void *cb_arg);

/**
 * Unregister every bdev (newest first, so stacked bdevs go before their bases),
 * then fini every module. cb_fn runs on this thread when done.
 */
void keel_bdev_subsystem_fini(keel_bdev_done_cb cb_fn, void *cb_arg);

/**
 * Register \p bdev. Validates the fields (block size power of two >= 512 unless the
 * module says otherwise, num_blocks > 0, name length <= KEEL_BDEV_NAME_MAX and no '/'
 * or whitespace). \return 0, -EEXIST (name or UUID taken), -EINVAL, -ENOMEM.
 * Keel threads only.
 */
int keel_bdev_register(struct keel_bdev *bdev);

/**
 * Start removing \p bdev: it disappears from lookup at once, open descriptors get
 * KEEL_BDEV_EVENT_REMOVE, queued requests fail with -ENODEV, requests in flight
 * complete normally; when the last descriptor is closed the fn_table's destruct runs
 * and then \p cb_fn(cb_arg, 0) on this thread. Keel threads only.
 */
void keel_bdev_unregister(struct keel_bdev *bdev, keel_bdev_done_cb cb_fn, void *cb_arg);

/**
 * Call \p fn(ctx) on the registering or unregistering thread each time a bdev joins
 * or leaves the registry (after keel_bdev_register succeeded; when
 * keel_bdev_unregister took it out of lookup). For a daemon that saves the list of its
 * bdevs. One listener; NULL removes it. Set it before the first bdev is made.
 */
typedef void (*keel_bdev_registry_fn)(void *ctx);
void keel_bdev_set_registry_listener(keel_bdev_registry_fn fn, void *ctx);

/** For a destruct that returned 1. */
void keel_bdev_destruct_done(struct keel_bdev *bdev);

/** Announce a changed num_blocks (module-updated) to descriptors as RESIZE events. */
void keel_bdev_notify_resize(struct keel_bdev *bdev, uint64_t new_num_blocks);

/**
 * Claim \p desc's bdev for exclusive writing by \p module. While claimed, other
 * opens for writing fail with -EPERM.
 * \return 0, -EPERM (claimed by another module: a KEEL_ERRLOG names the owner).
 */
int keel_bdev_module_claim_bdev(struct keel_bdev_desc *desc, struct keel_bdev_module *module);
void keel_bdev_module_release_bdev(struct keel_bdev *bdev);
/** Owner's module name, or NULL when unclaimed. */
const char *keel_bdev_get_claim_owner(const struct keel_bdev *bdev);

/* ------------------------------------------------------------------------------ */
/* Built-in module constructors (also used by the RPC layer)                       */
/* ------------------------------------------------------------------------------ */

/** RAM disk. \p block_size 512..65536 power of two; \p num_blocks > 0.
 * \p uuid may be NULL. \return 0 and *bdev, -EINVAL, -EEXIST, -ENOMEM. */
int keel_bdev_malloc_create(const char *name, const uint8_t *uuid, uint64_t num_blocks,
			    uint32_t block_size, struct keel_bdev **bdev);
/** Null disk: writes discarded, reads return zeroes (the read buffer is zero-filled). */
int keel_bdev_null_create(const char *name, const uint8_t *uuid, uint64_t num_blocks,
			  uint32_t block_size, struct keel_bdev **bdev);
/**
 * Reads of null bdev \p bdev leave the caller's buffers as they are (no zero fill), as
 * SPDK's null bdev does. Only for a process that never hands read data to anyone, such
 * as keel-bench measuring the bdev stack without a memset per request (the zero fill
 * costs it ~8x at 4 KiB): a buffer may hold whatever it held before. Not reachable from
 * RPC, so no exported bdev can do it. Main keel thread, before I/O is submitted; it
 * stays for the bdev's life.
 * \return 0, or -EINVAL when \p bdev is not a null bdev.
 */
int keel_bdev_null_leave_reads_untouched(struct keel_bdev *bdev);
/**
 * AIO bdev over a regular file or block device. \p block_size 0 = the device's
 * logical block size (BLKSSZGET) or 512 for regular files. The open runs on the
 * blocking-work pool; \p cb_fn(cb_arg, status, bdev) on this thread. Where the
 * filesystem refuses O_DIRECT, \p bdev is a uring bdev when io_uring works, else an
 * aio bdev doing its reads and writes on the blocking pool (keel_bdev_aio_created()):
 * buffered I/O never runs inside io_submit on a reactor.
 * status: 0, -ENOENT, -EACCES, -EINVAL (size not a multiple of block size, bad block
 * size), -EEXIST, -errno from open/ioctl/io_setup.
 * \return 0 (cb runs), or a negative errno (cb never runs).
 */
typedef void (*keel_bdev_create_cb)(void *cb_arg, int status, struct keel_bdev *bdev);
int keel_bdev_aio_create(const char *name, const char *filename, uint32_t block_size,
			 keel_bdev_create_cb cb_fn, void *cb_arg);
/**
 * Whether \p bdev came from keel_bdev_aio_create(): an aio bdev, or, for a file whose
 * filesystem refused O_DIRECT, a uring bdev (Linux performs buffered aio inside
 * io_submit, which would block the reactor; io_uring does not). Without io_uring such a
 * file stays an aio bdev whose reads and writes run on the blocking pool. Any thread.
 */
bool keel_bdev_aio_created(struct keel_bdev *bdev);
/**
 * Delete by name if it is a bdev of that module (for aio: keel_bdev_aio_created()).
 * \return 0 (cb runs) or -ENODEV.
 */
int keel_bdev_aio_delete(const char *name, keel_bdev_done_cb cb_fn, void *cb_arg);
int keel_bdev_malloc_delete(const char *name, keel_bdev_done_cb cb_fn, void *cb_arg);
int keel_bdev_null_delete(const char *name, keel_bdev_done_cb cb_fn, void *cb_arg);

/* Error injection (bdev/error). */
struct keel_bdev_error_rule {
	enum keel_bdev_io_type io_type; /**< KEEL_BDEV_IO_NUM_TYPES = every type */
	/** Fail this many matching requests (0 = unlimited while the rule exists). */
	uint32_t count;
	/** Fail only every Nth matching request (0 or 1 = every one). */
	uint32_t every_nth;
	int error;         /**< negative errno to complete with (0 = only delay) */
	uint32_t delay_us; /**< added latency (0 = none) */
	/** With error 0: complete matching requests as successful without passing them
	 * to the base (a disk that loses writes; a read leaves the buffer untouched). */
	bool drop;
};
/** Create error bdev \p name wrapping \p base_name (claims the base). */
int keel_bdev_error_create(const char *name, const char *base_name, struct keel_bdev **bdev);
int keel_bdev_error_delete(const char *name, keel_bdev_done_cb cb_fn, void *cb_arg);
/** Replace the rule for rule->io_type (or add it). \return 0, -ENODEV, -EINVAL. */
int keel_bdev_error_inject(const char *name, const struct keel_bdev_error_rule *rule);
/** Remove every rule. \return 0 or -ENODEV. */
int keel_bdev_error_clear(const char *name);

/* ------------------------------------------------------------------------------ */
/* Added by the bdev core: options and generic JSON info                           */
/* ------------------------------------------------------------------------------ */

/** Per-channel resources of the bdev core. */
struct keel_bdev_opts {
	/** Request objects (bdev_io) per bdev channel (default 1024, >= 1). */
	uint32_t io_pool_size;
	/** Per-channel cache in front of that pool (default 128, >= 2). */
	uint32_t io_cache_size;
	/** Bounce buffers per channel, allocated on first use (default 8, >= 1). */
	uint32_t bounce_buf_count;
	/** Bytes per bounce buffer, power of two, 4096..16 MiB (default 65536). */
	uint32_t bounce_buf_size;
};

/** Current options. */
void keel_bdev_get_opts(struct keel_bdev_opts *opts);
/**
 * Change the options; they apply to channels created afterwards.
 * \return 0 or -EINVAL (a field out of range; nothing changed). Any thread.
 */
int keel_bdev_set_opts(const struct keel_bdev_opts *opts);

/**
 * Fill \p obj (a jansson object) with the generic description of \p bdev (name,
 * uuid, module, product_name, block_size, num_blocks, alignment, boundary,
 * max_transfer_blocks, write_cache, claimed_by, supported_io_types) and the module's
 * fields under "driver_specific". \return 0 or -ENOMEM. Keel threads only.
 */
int keel_bdev_dump_info_json(struct keel_bdev *bdev, struct json_t *obj);

#ifdef __cplusplus
}
#endif

#endif /* KEEL_BDEV_MODULE_H */
