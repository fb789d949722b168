/*
 * Fixture shared by the nexus unit tests (nexus_ut, rebuild_ut): the deterministic
 * harness with the bdev subsystem, malloc and error replicas, volume operations that
 * poll to completion, a volume user with one channel per harness thread, raw replica
 * I/O and label reads. One copy, so both binaries exercise volumes the same way.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/log.h"

#include "nexus_ut_common.h"

void nexus_ut_init(void)
{
	keel_bdev_module_register(&keel_bdev_malloc_module);
	keel_bdev_module_register(&keel_bdev_error_module);
	keel_bdev_module_register(&keel_bdev_nexus_module);
	if (getenv("NEXUS_UT_DEBUG") == NULL) {
		keel_log_set_level(KEEL_LOG_ERROR + 0);
	}
}

void op_cb(void *arg, int status, const char *errmsg, struct keel_nexus *nexus)
{
	struct op_res *r = arg;

	CU_ASSERT(!r->done); /* exactly once */
	r->done = true;
	r->status = status;
	r->nexus = nexus;
	snprintf(r->msg, sizeof(r->msg), "%s", errmsg ? errmsg : "");
	if (status == 0) {
		CU_ASSERT(errmsg == NULL);
	} else {
		CU_ASSERT(errmsg != NULL && errmsg[0] != '\0');
	}
}

void done_cb(void *arg, int status)
{
	struct op_res *r = arg;

	r->done = true;
	r->status = status;
}

int wait_res(struct op_res *r)
{
	for (int i = 0; i < 1000 && !r->done; i++) {
		ut_time_advance_us(1000);
		ut_poll_threads();
	}
	CU_ASSERT_FATAL(r->done);
	return r->status;
}

static bool g_setup_ok;

void setup(uint32_t nthreads)
{
	struct op_res r = {0};

	g_setup_ok = false;
	CU_ASSERT_FATAL(ut_threads_init(nthreads) == 0);
	ut_set_thread(0);
	CU_ASSERT_FATAL(keel_bdev_subsystem_init(done_cb, &r) == 0);
	CU_ASSERT_FATAL(wait_res(&r) == 0);
	g_setup_ok = true;
}

void teardown(void)
{
	struct op_res r = {0};

	ut_set_thread(0);
	keel_bdev_subsystem_fini(done_cb, &r);
	wait_res(&r);
	ut_threads_fini();
}

void mk_malloc(const char *name, uint64_t blocks, uint32_t bs)
{
	struct keel_bdev *b;

	CU_ASSERT_FATAL(keel_bdev_malloc_create(name, NULL, blocks, bs, &b) == 0);
}

void mk_err(const char *name, const char *base)
{
	struct keel_bdev *b;

	CU_ASSERT_FATAL(keel_bdev_error_create(name, base, &b) == 0);
}

void ev_cb(enum keel_bdev_event_type type, struct keel_bdev *bdev, void *ctx)
{
}

int create_vol(const char *name, const char *const *reps, uint32_t n, bool force, struct op_res *r)
{
	struct keel_nexus_create_opts o = {
		.name = name,
		.replicas = reps,
		.num_replicas = n,
		.force = force,
	};
	int rc;

	memset(r, 0, sizeof(*r));
	ut_set_thread(0);
	rc = keel_nexus_create(&o, op_cb, r);
	if (rc != 0) {
		return rc;
	}
	CU_ASSERT(!r->done); /* never inside the call */
	return wait_res(r);
}

int open_vol(const char *name, const char *const *reps, uint32_t n, bool force, struct op_res *r)
{
	struct keel_nexus_open_opts o = {
		.name = name,
		.replicas = reps,
		.num_replicas = n,
		.force = force,
	};
	int rc;

	memset(r, 0, sizeof(*r));
	ut_set_thread(0);
	rc = keel_nexus_open(&o, op_cb, r);
	if (rc != 0) {
		return rc;
	}
	CU_ASSERT(!r->done);
	return wait_res(r);
}

int destroy_vol(const char *name, bool wipe)
{
	struct op_res r = {0};
	int rc;

	ut_set_thread(0);
	rc = keel_nexus_destroy(name, wipe, op_cb, &r);
	if (rc != 0) {
		return rc;
	}
	return wait_res(&r);
}

int member_call(int (*fn)(const char *, const char *, keel_nexus_op_cb, void *), const char *vol,
		const char *rep, struct op_res *r)
{
	int rc;

	memset(r, 0, sizeof(*r));
	ut_set_thread(0);
	rc = fn(vol, rep, op_cb, r);
	if (rc != 0) {
		return rc;
	}
	return wait_res(r);
}

static struct keel_nexus_info g_info;

struct keel_nexus_info *info_of(const char *vol)
{
	struct keel_nexus *n;

	ut_set_thread(0);
	n = keel_nexus_get_by_name(vol);
	CU_ASSERT_FATAL(n != NULL);
	keel_nexus_get_info(n, &g_info);
	return &g_info;
}

const struct keel_nexus_replica_info *rep_info(struct keel_nexus_info *info, const char *bdev)
{
	for (uint32_t i = 0; i < info->num_replicas; i++) {
		if (strcmp(info->replicas[i].bdev_name, bdev) == 0) {
			return &info->replicas[i];
		}
	}
	return NULL;
}

void user_open(struct vol_user *u, const char *name, uint32_t nthreads)
{
	memset(u, 0, sizeof(*u));
	ut_set_thread(0);
	CU_ASSERT_FATAL(keel_bdev_open_ext(name, true, ev_cb, NULL, &u->desc) == 0);
	u->nthreads = nthreads;
	for (uint32_t i = 0; i < nthreads; i++) {
		ut_set_thread(i);
		u->ch[i] = keel_bdev_get_io_channel(u->desc);
		CU_ASSERT_FATAL(u->ch[i] != NULL);
	}
	ut_set_thread(0);
}

void user_close(struct vol_user *u)
{
	for (uint32_t i = 0; i < u->nthreads; i++) {
		ut_set_thread(i);
		keel_put_io_channel(u->ch[i]);
	}
	ut_poll_threads();
	ut_set_thread(0);
	keel_bdev_close(u->desc);
	ut_poll_threads();
}

void io_cb(void *arg, int status)
{
	struct io_res *r = arg;

	r->done++;
	r->status = status;
}

int submit(struct vol_user *u, uint32_t t, enum keel_bdev_io_type type, void *buf, uint64_t off,
	   uint64_t len, struct io_res *r)
{
	ut_set_thread(t);
	switch (type) {
	case KEEL_BDEV_IO_READ:
		return keel_bdev_read(u->desc, u->ch[t], buf, off, len, io_cb, r);
	case KEEL_BDEV_IO_WRITE:
		return keel_bdev_write(u->desc, u->ch[t], buf, off, len, io_cb, r);
	case KEEL_BDEV_IO_FLUSH:
		return keel_bdev_flush(u->desc, u->ch[t], off, len, io_cb, r);
	case KEEL_BDEV_IO_UNMAP:
		return keel_bdev_unmap(u->desc, u->ch[t], off, len, io_cb, r);
	case KEEL_BDEV_IO_WRITE_ZEROES:
		return keel_bdev_write_zeroes(u->desc, u->ch[t], off, len, io_cb, r);
	case KEEL_BDEV_IO_GET_ALLOCATION: /* buf: room for 8 extents */
		return keel_bdev_get_allocation(u->desc, u->ch[t], off, len, buf, 8, io_cb, r);
	default:
		return -EINVAL;
	}
}

int do_io(struct vol_user *u, uint32_t t, enum keel_bdev_io_type type, void *buf, uint64_t off,
	  uint64_t len)
{
	struct io_res r = {0};
	int rc = submit(u, t, type, buf, off, len, &r);

	CU_ASSERT_FATAL(rc == 0);
	for (int i = 0; i < 1000 && !r.done; i++) {
		ut_time_advance_us(1000);
		ut_poll_threads();
	}
	CU_ASSERT_FATAL(r.done == 1);
	ut_set_thread(0);
	return r.status;
}

/* Read or write a bdev directly (read-only open works on claimed bdevs). */
int raw_io(const char *bdev, bool write, void *buf, uint64_t off, uint64_t len)
{
	struct keel_bdev_desc *d;
	struct keel_io_channel *ch;
	struct io_res r = {0};
	int rc;

	ut_set_thread(0);
	rc = keel_bdev_open_ext(bdev, write, ev_cb, NULL, &d);
	if (rc != 0) {
		return rc;
	}
	ch = keel_bdev_get_io_channel(d);
	CU_ASSERT_FATAL(ch != NULL);
	rc = write ? keel_bdev_write(d, ch, buf, off, len, io_cb, &r)
		   : keel_bdev_read(d, ch, buf, off, len, io_cb, &r);
	CU_ASSERT_FATAL(rc == 0);
	while (!r.done) {
		ut_poll_threads();
	}
	ut_set_thread(0);
	keel_put_io_channel(ch);
	ut_poll_threads();
	keel_bdev_close(d);
	ut_poll_threads();
	return r.status;
}

void *abuf(size_t len)
{
	void *p = aligned_alloc(4096, (len + 4095) / 4096 * 4096);

	CU_ASSERT_FATAL(p != NULL);
	return p;
}

void fill(void *buf, size_t len, uint32_t seed)
{
	uint32_t *p = buf;

	for (size_t i = 0; i < len / 4; i++) {
		p[i] = seed * 2654435761u + (uint32_t)i;
	}
}

/* Read the label a replica holds (the picked copy). \return decode result. */
int read_label(const char *bdev, struct nexus_label *l)
{
	uint8_t *b0 = abuf(NEXUS_LABEL_SIZE), *b1 = abuf(NEXUS_LABEL_SIZE);
	struct nexus_label l0, l1;
	int rc0, rc1, which, rc;

	CU_ASSERT_FATAL(raw_io(bdev, false, b0, NEXUS_LABEL_COPY0_OFFSET, NEXUS_LABEL_SIZE) == 0);
	CU_ASSERT_FATAL(raw_io(bdev, false, b1, NEXUS_LABEL_COPY1_OFFSET, NEXUS_LABEL_SIZE) == 0);
	rc0 = nexus_label_decode(b0, NEXUS_LABEL_SIZE, &l0, NULL, 0);
	rc1 = nexus_label_decode(b1, NEXUS_LABEL_SIZE, &l1, NULL, 0);
	rc = nexus_label_pick(rc0, &l0, rc1, &l1, &which);
	if (rc == 0) {
		*l = which ? l1 : l0;
	}
	free(b0);
	free(b1);
	return rc;
}

void inject(const char *err_bdev, enum keel_bdev_io_type type, int error)
{
	struct keel_bdev_error_rule rule = {.io_type = type, .count = 0, .error = error};

	CU_ASSERT_FATAL(keel_bdev_error_inject(err_bdev, &rule) == 0);
}
