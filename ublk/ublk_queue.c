/*
 * One ublk queue on its keel thread: the ring (128-byte SQEs) whose commands fetch the
 * kernel's requests, one preallocated buffer per tag, and the bdev channel.
 *
 * A tag cycles: FETCH (or COMMIT_AND_FETCH) waits in the kernel -> its CQE says a
 * request is in iods[tag] (for a write, its data already in the tag's buffer) -> a bdev
 * I/O on that buffer -> the completion prepares COMMIT_AND_FETCH with the result (for a
 * read the kernel copies the buffer into the request then) -> ... Nothing is allocated
 * per request.
 *
 * Submission is batched: a completion only prepares its SQE and wakes the poller, which
 * submits every prepared SQE with one io_uring_enter per run. The poller is an event
 * poller on the ring's fd (readable while completions wait), so an idle queue costs a
 * sleeping reactor nothing.
 *
 * The kernel insists that every command of a queue comes from the same task: the ring is
 * only ever entered from this keel thread, whose reactor is one pinned pthread.
 *
 * End: STOP_DEV (or the kernel's cancel at DEL_DEV) completes every waiting command with
 * UBLK_IO_RES_ABORT. Once no command is left in the kernel and no request in the bdev,
 * nothing can arrive any more: the queue releases its resources and tells the main thread.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <unistd.h>

#include "keel/log.h"
#include "ublk_internal.h"

#define UBLK_QUEUE_LOG_MS 5000

static size_t ublk_page_round(size_t n)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);

	return (n + pg - 1) / pg * pg;
}

int ublk_queue_setup(struct ublk_queue *q, int cfd, char *err, size_t err_len)
{
	size_t max_cmd_buf = ublk_page_round(UBLK_MAX_QUEUE_DEPTH * sizeof(struct ublksrv_io_desc));
	off_t off = UBLKSRV_CMD_BUF_OFFSET + (off_t)q->q_id * (off_t)max_cmd_buf;
	void *p;
	int rc;

	q->tags = calloc(q->depth, sizeof(*q->tags));
	if (q->tags == NULL) {
		snprintf(err, err_len, "out of memory");
		return -ENOMEM;
	}
	q->iods_len = ublk_page_round(q->depth * sizeof(struct ublksrv_io_desc));
	p = mmap(NULL, q->iods_len, PROT_READ, MAP_SHARED | MAP_POPULATE, cfd, off);
	if (p == MAP_FAILED) {
		rc = -errno;
		snprintf(err, err_len, "queue %u: mmap of the request descriptors: %s", q->q_id,
			 strerror(-rc));
		return rc;
	}
	q->iods = p;
	q->bufs_len = (size_t)q->depth * KEEL_UBLK_IO_BUF_BYTES;
	p = mmap(NULL, q->bufs_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		rc = -errno;
		snprintf(err, err_len, "queue %u: %zu bytes of request buffers: %s", q->q_id,
			 q->bufs_len, strerror(-rc));
		return rc;
	}
	q->bufs = p;
	for (uint32_t i = 0; i < q->depth; i++) {
		q->tags[i].q = q;
		q->tags[i].tag = (uint16_t)i;
		q->tags[i].buf = q->bufs + (size_t)i * KEEL_UBLK_IO_BUF_BYTES;
	}
	rc = io_uring_queue_init(q->depth, &q->ring, IORING_SETUP_SQE128);
	if (rc < 0) {
		snprintf(err, err_len, "queue %u: io_uring with 128-byte SQEs: %s", q->q_id,
			 strerror(-rc));
		return rc;
	}
	q->ring_ready = true;
	return 0;
}

void ublk_queue_release(struct ublk_queue *q)
{
	if (q->ring_ready) {
		io_uring_queue_exit(&q->ring);
		q->ring_ready = false;
	}
	if (q->bufs != NULL) {
		munmap(q->bufs, q->bufs_len);
		q->bufs = NULL;
	}
	if (q->iods != NULL) {
		munmap((void *)q->iods, q->iods_len);
		q->iods = NULL;
	}
	free(q->tags);
	q->tags = NULL;
}

/* Prepare the command of \p t: FETCH at start, else COMMIT_AND_FETCH with \p result. */
static void ublk_queue_prep(struct ublk_queue *q, struct ublk_tag *t, uint32_t op, int32_t result)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&q->ring);
	struct ublksrv_io_cmd *cmd;

	if (sqe == NULL) {
		/* One command per tag and as many entries as tags: the ring cannot be full
		 * unless prepared SQEs were not submitted; submit and retry once. */
		io_uring_submit(&q->ring);
		q->unsent = 0;
		sqe = io_uring_get_sqe(&q->ring);
		if (sqe == NULL) {
			KEEL_ERRLOG("ublk%u queue %u: submission ring full; tag %u lost",
				    ublk_disk_id(q->disk), q->q_id, t->tag);
			return;
		}
	}
	cmd = ublk_sqe128_init(sqe);
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = ublk_disk_cfd(q->disk);
	sqe->cmd_op = op;
	sqe->user_data = t->tag;
	cmd->q_id = q->q_id;
	cmd->tag = t->tag;
	cmd->result = result;
	cmd->addr = (uint64_t)(uintptr_t)t->buf;
	q->cmds++;
	q->unsent++;
}

static void ublk_tag_done(void *arg, int status)
{
	struct ublk_tag *t = arg;
	struct ublk_queue *q = t->q;
	int32_t res = status;

	q->in_bdev--;
	if (status == 0) {
		res = (t->op == UBLK_IO_OP_READ || t->op == UBLK_IO_OP_WRITE) ? (int32_t)t->nbytes
									      : 0;
	}
	ublk_queue_prep(q, t, UBLK_IO_COMMIT_AND_FETCH_REQ, res);
	keel_poller_wake(q->poller);
}

static int ublk_tag_submit(struct ublk_queue *q, struct ublk_tag *t)
{
	const struct ublksrv_io_desc *iod = &q->iods[t->tag];
	struct keel_bdev_desc *desc = ublk_disk_desc(q->disk);
	uint64_t off = iod->start_sector << 9;
	uint64_t len = (uint64_t)iod->nr_sectors << 9;
	uint32_t flags = ublksrv_get_flags(iod);

	t->op = ublksrv_get_op(iod);
	t->nbytes = (uint32_t)len;
	switch (t->op) {
	case UBLK_IO_OP_READ:
		if (len == 0 || len > KEEL_UBLK_IO_BUF_BYTES) {
			return -EIO;
		}
		return keel_bdev_read(desc, q->ch, t->buf, off, len, ublk_tag_done, t);
	case UBLK_IO_OP_WRITE:
		if (len == 0 || len > KEEL_UBLK_IO_BUF_BYTES) {
			return -EIO;
		}
		t->iov.iov_base = t->buf;
		t->iov.iov_len = len;
		return keel_bdev_writev(desc, q->ch, &t->iov, 1, off, len,
					(flags & UBLK_IO_F_FUA) ? KEEL_BDEV_IO_FLAG_FUA : 0,
					ublk_tag_done, t);
	case UBLK_IO_OP_FLUSH:
		return keel_bdev_flush(desc, q->ch, 0, q->size, ublk_tag_done, t);
	case UBLK_IO_OP_DISCARD:
		return keel_bdev_unmap(desc, q->ch, off, len, ublk_tag_done, t);
	case UBLK_IO_OP_WRITE_ZEROES:
		return keel_bdev_write_zeroes(desc, q->ch, off, len, ublk_tag_done, t);
	default:
		return -EOPNOTSUPP;
	}
}

static void ublk_queue_cqe(struct ublk_queue *q, const struct io_uring_cqe *cqe)
{
	struct ublk_tag *t;
	int rc;

	q->cmds--;
	if (cqe->user_data >= q->depth) {
		KEEL_ERRLOG("ublk%u queue %u: completion for unknown tag %llu",
			    ublk_disk_id(q->disk), q->q_id, (unsigned long long)cqe->user_data);
		return;
	}
	t = &q->tags[cqe->user_data];
	if (cqe->res == UBLK_IO_RES_OK) {
		q->ios++;
		q->in_bdev++;
		rc = ublk_tag_submit(q, t);
		if (rc != 0) {
			KEEL_WARNLOG_RATELIMITED(UBLK_QUEUE_LOG_MS,
						 "ublk%u queue %u: request op %u at sector %llu "
						 "refused: %s",
						 ublk_disk_id(q->disk), q->q_id, t->op,
						 (unsigned long long)q->iods[t->tag].start_sector,
						 strerror(-rc));
			ublk_tag_done(t, rc);
		}
	} else if (cqe->res != UBLK_IO_RES_ABORT) {
		/* A command the kernel refused: this tag serves no more requests. */
		KEEL_ERRLOG("ublk%u queue %u: command for tag %u failed: %s", ublk_disk_id(q->disk),
			    q->q_id, t->tag, strerror(-cqe->res));
	}
}

static void ublk_queue_finish(struct ublk_queue *q)
{
	q->finished = true;
	keel_poller_unregister(&q->poller);
	if (q->ch != NULL) {
		keel_put_io_channel(q->ch);
		q->ch = NULL;
	}
	ublk_queue_release(q);
	if (keel_thread_send_msg_reliable(ublk_disk_main(), ublk_disk_queue_gone, q, NULL) != 0) {
		KEEL_ERRLOG("ublk%u queue %u: cannot tell the main thread that the queue ended",
			    ublk_disk_id(q->disk), q->q_id);
	}
}

static int ublk_queue_poll(void *arg)
{
	struct ublk_queue *q = arg;
	struct io_uring_cqe *cqe;
	unsigned head, n = 0;
	int rc;

	io_uring_for_each_cqe(&q->ring, head, cqe)
	{
		ublk_queue_cqe(q, cqe);
		n++;
	}
	io_uring_cq_advance(&q->ring, n);
	if (q->unsent > 0) {
		rc = io_uring_submit(&q->ring);
		if (rc >= 0) {
			q->unsent = 0;
		} else {
			KEEL_WARNLOG_RATELIMITED(UBLK_QUEUE_LOG_MS, "ublk%u queue %u: submit: %s",
						 ublk_disk_id(q->disk), q->q_id, strerror(-rc));
			return KEEL_POLLER_BUSY; /* try again at the next iteration */
		}
	}
	if (q->cmds == 0 && q->in_bdev == 0) {
		ublk_queue_finish(q);
		return KEEL_POLLER_BUSY;
	}
	return n > 0 ? KEEL_POLLER_BUSY : KEEL_POLLER_IDLE;
}

void ublk_queue_start(void *arg)
{
	struct ublk_queue *q = arg;
	char name[48];
	int rc = 0;

	snprintf(name, sizeof(name), "ublk%u_q%u", ublk_disk_id(q->disk), q->q_id);
	q->ch = keel_bdev_get_io_channel(ublk_disk_desc(q->disk));
	q->poller = keel_poller_register(ublk_queue_poll, q, 0, name);
	if (q->ch == NULL || q->poller == NULL) {
		rc = -ENOMEM;
	} else {
		rc = keel_poller_register_fd(q->poller, q->ring.ring_fd, EPOLLIN);
	}
	if (rc == 0) {
		for (uint32_t i = 0; i < q->depth; i++) {
			ublk_queue_prep(q, &q->tags[i], UBLK_IO_FETCH_REQ, 0);
		}
		rc = io_uring_submit(&q->ring);
		rc = rc < 0 ? rc : 0;
		if (rc == 0) {
			q->unsent = 0;
		}
	}
	q->start_rc = rc;
	q->started = rc == 0;
	if (rc != 0) {
		KEEL_ERRLOG("ublk%u queue %u: cannot start: %s", ublk_disk_id(q->disk), q->q_id,
			    strerror(-rc));
		/* Nothing reached the kernel (a refused submit sent nothing): undo here. */
		keel_poller_unregister(&q->poller);
		if (q->ch != NULL) {
			keel_put_io_channel(q->ch);
			q->ch = NULL;
		}
		q->cmds = 0;
		q->finished = true;
	}
	if (keel_thread_send_msg_reliable(ublk_disk_main(), ublk_disk_queue_started, q, NULL) !=
	    0) {
		KEEL_ERRLOG("ublk%u queue %u: cannot report its start", ublk_disk_id(q->disk),
			    q->q_id);
	}
}
