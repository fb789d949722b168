/**
 * \file
 * The vcache bdev module: a fault device that behaves like a disk with a volatile
 * write cache, for power-loss tests (docs/reliability.md, "Power loss").
 *
 * A vcache bdev sits on a base bdev (claimed). A write is copied into memory and
 * acknowledged at once; it reaches the base only when a FLUSH covers it (write-back,
 * in acknowledgement order). Reads see the base overlaid with the cached writes. A
 * FLUSH makes every write acknowledged before the flush was submitted durable (written
 * back, then the base flushed); writes acknowledged later are not covered. A FUA
 * write is written through to the base (and the base flushed) before it is
 * acknowledged, and only it: the cached writes before it stay volatile, as on a real
 * disk. A write that takes the cached bytes over max_dirty_bytes waits for a
 * write-back of everything up to it (a cache that must make room).
 * Write-zeroes and unmap are cached writes of zeroes.
 *
 * keel_bdev_vcache_power_cut() keeps a chosen subset of the cached (not yet written
 * back) writes, writes those to the base in acknowledgement order, drops the rest, and
 * from then on fails every request with -EIO like a dead disk. What the base then
 * holds is what a disk would hold after the power came back. Re-arm by deleting the
 * vcache bdev (once the cut's callback ran) and creating a new one over the same base. Deleting a vcache bdev that
 * was not cut drops its cached writes (a power cut that keeps none).
 *
 * Memory: one allocation per cached write (a test device, not a data path). A write
 * that a running write-back does not cover adds to the cache even over the limit and
 * waits for the next one, so the cache holds at most max_dirty_bytes plus the writes
 * in flight.
 *
 * Threading: create, delete, power_cut and get_stats on any keel thread; their
 * callbacks run on that thread. I/O from any keel thread; the cache is shared under a
 * mutex. Errors: every int return is 0 or a negative errno.
 */
#ifndef KEEL_BDEV_VCACHE_H
#define KEEL_BDEV_VCACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "keel/bdev_module.h"

#ifdef __cplusplus
extern "C" {
#endif

/** The module; register it with keel_bdev_module_register() before subsystem init. */
extern struct keel_bdev_module keel_bdev_vcache_module;

#define KEEL_VCACHE_DEFAULT_MAX_DIRTY (64ull << 20)

/** Which cached writes survive a power cut. */
enum keel_vcache_cut_mode {
	KEEL_VCACHE_CUT_NONE = 0, /**< drop none: every cached write survives */
	KEEL_VCACHE_CUT_ALL,      /**< drop all: only what was written back survives */
	KEEL_VCACHE_CUT_RANDOM,   /**< each cached write survives with probability 1/2 (seeded) */
	KEEL_VCACHE_CUT_PREFIX,   /**< the first `keep` cached writes (ack order) survive */
};

struct keel_vcache_stats {
	uint64_t dirty_writes; /**< cached writes not yet durable */
	uint64_t dirty_bytes;  /**< their bytes */
	uint64_t writes;       /**< writes (incl. zeroes/unmap) acknowledged */
	uint64_t fua_writes;   /**< of which FUA */
	uint64_t flushes;      /**< flush requests completed successfully */
	uint64_t writebacks;   /**< write-back passes completed */
	uint64_t forced;       /**< writes that waited for a write-back (over the limit) */
	bool dead;             /**< power was cut */
	uint64_t cut_kept;     /**< writes the power cut kept */
	uint64_t cut_dropped;  /**< writes the power cut dropped */
};

/**
 * vcache bdev \p name over \p base_name (claimed). \p max_dirty_bytes 0 = the default
 * (64 MiB). The new bdev has the base's size and block size and a write cache.
 * \return 0 and *bdev; -EINVAL (bad arguments, not on a keel thread), -ENODEV (no such
 * base), -EPERM (base claimed), -EEXIST, -ENOMEM.
 */
int keel_bdev_vcache_create(const char *name, const char *base_name, uint64_t max_dirty_bytes,
			    struct keel_bdev **bdev);

/** Delete vcache bdev \p name (cached writes are dropped). \return 0 (cb runs) or -ENODEV. */
int keel_bdev_vcache_delete(const char *name, keel_bdev_done_cb cb_fn, void *cb_arg);

/**
 * Cut the power of vcache bdev \p name: at once every new and waiting request fails
 * with -EIO; once a write-back in progress has stopped, the surviving cached writes
 * (by \p mode; \p seed for RANDOM, \p keep for PREFIX) are written to the base in
 * acknowledgement order and the base is flushed; then cb_fn(cb_arg, status) on this
 * thread (status of that base I/O). Writes a write-back already wrote to the base stay
 * there (a flush that was cut half way).
 * \return 0 (cb runs), -ENODEV (no such vcache bdev), -EALREADY (already cut),
 * -EINVAL (bad mode), -ENOMEM.
 */
int keel_bdev_vcache_power_cut(const char *name, enum keel_vcache_cut_mode mode, uint64_t seed,
			       uint64_t keep, keel_bdev_done_cb cb_fn, void *cb_arg);

/** Counters of vcache bdev \p name. \return 0 or -ENODEV. */
int keel_bdev_vcache_get_stats(const char *name, struct keel_vcache_stats *stats);

/** Mode from its name ("none", "all", "random", "prefix"). \return 0 or -EINVAL. */
int keel_vcache_cut_mode_parse(const char *s, enum keel_vcache_cut_mode *mode);

#ifdef __cplusplus
}
#endif

#endif /* KEEL_BDEV_VCACHE_H */
