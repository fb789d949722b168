/*
 * What ublk_disk.c (main thread, control) and ublk_queue.c (one queue on its reactor)
 * share. Internal to ublk/.
 *
 * Ownership: a queue's ring, buffers, poller and bdev channel belong to its keel thread
 * once ublk_queue_start() ran there; before that (set-up on the blocking pool) and after
 * it reported "gone" to the main thread, the main thread owns them. The queue and the
 * main thread talk only by message.
 */
#ifndef KEEL_UBLK_INTERNAL_H
#define KEEL_UBLK_INTERNAL_H

#include <liburing.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "keel/bdev.h"
#include "keel/reactor.h"
#include "keel/ublk.h"
#include "ublk_ctrl.h"

struct ublk_queue;

/* One tag: the request the kernel handed us in iods[tag], and its buffer. */
struct ublk_tag {
	struct ublk_queue *q;
	uint16_t tag;
	uint8_t op;
	void *buf;
	struct iovec iov;
	uint32_t nbytes;
};

struct ublk_queue {
	struct keel_ublk_disk *disk;
	uint16_t q_id;
	uint16_t depth;
	uint64_t size; /* bytes of the bdev: the range of a flush */
	struct keel_thread *thread;
	/* Set up on the blocking pool. */
	struct io_uring ring;
	bool ring_ready;
	const struct ublksrv_io_desc *iods;
	size_t iods_len;
	uint8_t *bufs;
	size_t bufs_len;
	struct ublk_tag *tags;
	/* The queue's thread. */
	struct keel_poller *poller;
	struct keel_io_channel *ch;
	uint32_t cmds;    /* commands prepared or in the kernel, CQE not yet seen */
	uint32_t in_bdev; /* requests handed to the bdev */
	uint32_t unsent;  /* SQEs prepared, not yet submitted */
	bool started;
	bool finished;
	int start_rc;
	uint64_t ios;
};

/* Blocking pool: map the descriptors of queue \p q from char fd \p cfd, allocate its
 * buffers and ring. 0 or -errno with \p err. Undone by ublk_queue_release(). */
int ublk_queue_setup(struct ublk_queue *q, int cfd, char *err, size_t err_len);
/* Any thread that owns \p q: free what ublk_queue_setup() made (idempotent). */
void ublk_queue_release(struct ublk_queue *q);
/* Message to the queue's thread: poller, channel, FETCH of every tag; then tells the
 * main thread through ublk_disk_queue_started(). */
void ublk_queue_start(void *arg);

/* Main thread, by message from a queue. */
void ublk_disk_queue_started(void *arg);
void ublk_disk_queue_gone(void *arg);
/* The descriptor and char fd of a queue's disk, read by the queue's thread. */
struct keel_bdev_desc *ublk_disk_desc(struct keel_ublk_disk *disk);
int ublk_disk_cfd(struct keel_ublk_disk *disk);
uint32_t ublk_disk_id(struct keel_ublk_disk *disk);
/* One well-formed entry of the device records. */
typedef void (*ublk_record_fn)(uint32_t id, const char *bdev_name, void *ctx);
/*
 * Decode the records of keel_ublk_disk_snapshot() (NULL: none): \p fn (may be NULL) for
 * each well-formed entry; malformed ones are skipped with a warning. \return the number
 * of well-formed entries, or -EINVAL (not a version 1 list). Pure apart from the log:
 * any input, any thread.
 */
int ublk_disk_records_parse(const json_t *doc, ublk_record_fn fn, void *ctx);
/* The main keel thread (where devices live). */
struct keel_thread *ublk_disk_main(void);

#endif /* KEEL_UBLK_INTERNAL_H */
