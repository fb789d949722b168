/*
 * Fixture shared by the nexus unit tests (nexus_ut, rebuild_ut), compiled into both
 * binaries so they build and drive volumes the same way. Everything runs on the
 * deterministic harness (tests/common/ut_threads.h); the helpers that wait poll until
 * the operation completed and fail the test (CU_ASSERT_FATAL) when it never does.
 */
#ifndef KEEL_NEXUS_UT_COMMON_H
#define KEEL_NEXUS_UT_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/bdev.h"
#include "keel/bdev_module.h"
#include "keel/nexus.h"

#include "bdev/nexus/nexus_label.h"
#include "ut_cunit.h"
#include "ut_threads.h"

#define MB (1024ull * 1024ull)
#define BS 512u
#define REPLICA_BLOCKS ((8 * MB) / BS)
#define DATA_OFF KEEL_NEXUS_DATA_OFFSET

/*
 * Once, from main(): register the modules volumes are built from (malloc, error,
 * nexus) and keep the log to errors unless NEXUS_UT_DEBUG is set.
 */
void nexus_ut_init(void);

/* Result of a volume operation (op_cb) or a plain completion (done_cb). */
struct op_res {
	bool done;
	int status;
	char msg[1024];
	struct keel_nexus *nexus;
};

/* keel_nexus_op_cb: records the result; asserts it runs once and errmsg matches status. */
void op_cb(void *arg, int status, const char *errmsg, struct keel_nexus *nexus);
/* Completion with a status only; \p arg is a struct op_res. */
void done_cb(void *arg, int status);
/* Advance the mock clock and poll until \p r is done. \return its status. */
int wait_res(struct op_res *r);

/* Harness with \p nthreads threads and the bdev subsystem up; teardown() undoes it. */
void setup(uint32_t nthreads);
void teardown(void);

void mk_malloc(const char *name, uint64_t blocks, uint32_t bs);
/* Error bdev \p name on top of \p base. */
void mk_err(const char *name, const char *base);
/* Event callback that ignores every event. */
void ev_cb(enum keel_bdev_event_type type, struct keel_bdev *bdev, void *ctx);

/* \return the call's rc if it failed, else the operation's status (in \p r too). */
int create_vol(const char *name, const char *const *reps, uint32_t n, bool force, struct op_res *r);
int open_vol(const char *name, const char *const *reps, uint32_t n, bool force, struct op_res *r);
int destroy_vol(const char *name, bool wipe);
/* Run a replica operation (keel_nexus_fault_replica, ...) on \p rep of \p vol. */
int member_call(int (*fn)(const char *, const char *, keel_nexus_op_cb, void *), const char *vol,
		const char *rep, struct op_res *r);

/* Info of volume \p vol; the storage is static, overwritten by the next call. */
struct keel_nexus_info *info_of(const char *vol);
/* The replica on bdev \p bdev in \p info, or NULL. */
const struct keel_nexus_replica_info *rep_info(struct keel_nexus_info *info, const char *bdev);

/* A user of the volume: a descriptor and one channel per harness thread. */
struct vol_user {
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch[4];
	uint32_t nthreads;
};

/* Open \p name read-write and get a channel on harness threads 0..nthreads-1. */
void user_open(struct vol_user *u, const char *name, uint32_t nthreads);
void user_close(struct vol_user *u);

/* Completion of one I/O: done counts completions, so a double completion shows. */
struct io_res {
	int done;
	int status;
};

void io_cb(void *arg, int status);
/* Submit one I/O of \p type on harness thread \p t (left current). \return submit rc. */
int submit(struct vol_user *u, uint32_t t, enum keel_bdev_io_type type, void *buf, uint64_t off,
	   uint64_t len, struct io_res *r);
/* submit() that must be accepted, polled to one completion. \return its status. */
int do_io(struct vol_user *u, uint32_t t, enum keel_bdev_io_type type, void *buf, uint64_t off,
	  uint64_t len);
/* Read or write a bdev directly (read-only open works on claimed bdevs). */
int raw_io(const char *bdev, bool write, void *buf, uint64_t off, uint64_t len);

/* 4 KiB-aligned buffer of at least \p len bytes; free() it. */
void *abuf(size_t len);
/* Deterministic pattern from \p seed. */
void fill(void *buf, size_t len, uint32_t seed);
/* Read the label a replica holds (the picked copy). \return decode result. */
int read_label(const char *bdev, struct nexus_label *l);
/* Make every later I/O of \p type on error bdev \p err_bdev fail with \p error. */
void inject(const char *err_bdev, enum keel_bdev_io_type type, int error);

#endif /* KEEL_NEXUS_UT_COMMON_H */
