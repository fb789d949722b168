/*
 * NBD client bdev: requests go to an NBD server through libnbd's asynchronous API.
 *
 * One connection per I/O channel, so the data path has no lock and no cross-thread
 * hop: the channel's libnbd handle is touched only by its thread, its socket is an
 * event poller's fd there, and libnbd's completion callbacks run inside that poller.
 * The callbacks only move the request to a done list; the poller completes the list
 * after libnbd returns, because a completion may submit the next request at once and
 * libnbd must not be re-entered from its own callback.
 *
 * Why fail fast instead of waiting for a reconnect: the bdev is meant as a replica
 * below a nexus, which goes on without a replica that errs; holding requests while a
 * server is away would stall the volume's clients instead.
 */
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/queue.h>

#include <jansson.h>
#include <libnbd.h>

#include "keel/bdev_nbd_client.h"
#include "keel/log.h"
#include "nbd_client_internal.h"

/* Reconnect back-off: first retry soon (a restarted server), then less and less often. */
#define NBDC_BACKOFF_MIN_US 100000u
#define NBDC_BACKOFF_MAX_US 5000000u
/* libnbd refuses larger requests; servers usually advertise 32 MiB or less. */
#define NBDC_MAX_REQUEST (32u << 20)

struct nbdc_disk {
	struct keel_bdev bdev;
	char name[KEEL_BDEV_NAME_MAX + 1];
	char *uri;
	uint32_t timeout_ms;
	uint64_t size;
	bool can_flush, can_fua, can_trim, can_zero, can_multi_conn, read_only;
	/* The handle create connected with, kept for the first channel (saves a handshake). */
	_Atomic(struct nbd_handle *) spare;
	atomic_uint_fast64_t connects, connect_errors, timeouts, disconnects;
	atomic_int channels_up, channels_down;
	/* Without multi-conn every request goes through one connection, the channel of
	 * the creating thread (owner_ch, a reference held until destruct): a flush then
	 * covers every write. Other threads forward by message and get the completion
	 * back the same way. */
	bool shared;
	struct keel_thread *owner;
	struct keel_io_channel *owner_kch;
	struct nbdc_channel *owner_ch;
};

enum nbdc_state {
	NBDC_CONNECTING, /* first connect of the channel: requests wait */
	NBDC_UP,
	NBDC_DOWN, /* lost: requests fail; a reconnect is armed or running */
};

TAILQ_HEAD(nbdc_io_list, keel_bdev_io);

struct nbdc_channel {
	struct nbdc_disk *disk;
	struct keel_thread *thread;
	enum nbdc_state state;
	struct nbd_handle *h;
	int fd;                        /* the handle's socket while UP */
	struct keel_poller *io_poller; /* on that fd */
	struct keel_poller *timer;     /* request deadlines, reconnect back-off */
	uint32_t events;
	struct nbdc_conn_job *job; /* connect attempt running */
	uint64_t backoff_us;
	uint64_t retry_at_ns;         /* DOWN without a job: when to try again */
	bool closing;                 /* inside nbdc_drop: callbacks are ignored */
	bool forward;                 /* no connection of its own: requests go to disk->owner_ch */
	struct nbdc_io_list inflight; /* issued, in submission order (deadlines ascending) */
	struct nbdc_io_list done;     /* answered, to complete */
	struct nbdc_io_list waiting;  /* submitted during the first connect */
};

struct nbdc_req {
	struct nbdc_channel *ch;
	uint64_t deadline_ns;
	uint32_t pending; /* commands in flight + 1 while issuing */
	int status;
	bool flush_after;           /* FUA write on a server without FUA: flush once written */
	bool flush_phase;           /* that flush is what is in flight now */
	bool listed;                /* on ch->inflight */
	struct keel_thread *origin; /* forwarded: the submitting thread, which completes */
};

static __thread char g_nbdc_last_error[512];

static uint32_t nbdc_get_ctx_size(void)
{
	return sizeof(struct nbdc_req);
}

struct keel_bdev_module keel_bdev_nbd_client_module = {
	.name = "nbd_client",
	.get_ctx_size = nbdc_get_ctx_size,
};

bool keel_bdev_nbd_client_is_uri(const char *text)
{
	static const char *const schemes[] = {"nbd://", "nbds://", "nbd+unix://", "nbds+unix://"};

	if (text == NULL) {
		return false;
	}
	for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++) {
		if (strncmp(text, schemes[i], strlen(schemes[i])) == 0) {
			return true;
		}
	}
	return false;
}

const char *keel_bdev_nbd_client_last_error(void)
{
	return g_nbdc_last_error;
}

static void nbdc_start_connect(struct nbdc_channel *ch);

/* ---- completion ------------------------------------------------------------- */

static void nbdc_req_finish(struct nbdc_channel *ch, struct keel_bdev_io *io)
{
	struct nbdc_req *req = keel_bdev_io_get_ctx(io);

	if (req->listed) {
		TAILQ_REMOVE(&ch->inflight, io, module_link);
		req->listed = false;
	}
	TAILQ_INSERT_TAIL(&ch->done, io, module_link);
}

/* One command of \p io ended (or its issuing guard was dropped). */
static void nbdc_req_put(struct keel_bdev_io *io)
{
	struct nbdc_req *req = keel_bdev_io_get_ctx(io);

	if (--req->pending == 0) {
		nbdc_req_finish(req->ch, io);
	}
}

/* libnbd's completion callback: runs inside nbd_aio_notify_* (or while the handle dies). */
static int nbdc_cmd_done(void *user_data, int *error)
{
	struct keel_bdev_io *io = user_data;
	struct nbdc_req *req = keel_bdev_io_get_ctx(io);

	if (req->ch->closing) {
		return 1; /* nbdc_drop fails it */
	}
	if (*error != 0 && req->status == 0) {
		req->status = -EIO;
	}
	nbdc_req_put(io);
	return 1;
}

static void nbdc_issue(struct nbdc_channel *ch, struct keel_bdev_io *io);

static void nbdc_complete_msg(void *arg)
{
	struct keel_bdev_io *io = arg;
	struct nbdc_req *req = keel_bdev_io_get_ctx(io);

	keel_bdev_io_complete(io, req->status);
}

/* Complete \p io with \p status on the thread that submitted it. */
static void nbdc_finish(struct keel_bdev_io *io, int status)
{
	struct nbdc_req *req = keel_bdev_io_get_ctx(io);

	req->status = status;
	if (req->origin != NULL && req->origin != keel_thread_get_current()) {
		/* The origin outlives its requests: its channel is put only when they are
		 * done. */
		(void)keel_thread_send_msg_reliable(req->origin, nbdc_complete_msg, io, NULL);
		return;
	}
	keel_bdev_io_complete(io, status);
}

/* Complete what the server answered; re-issue FUA writes that still need their flush. */
static int nbdc_complete_done(struct nbdc_channel *ch)
{
	struct keel_bdev_io *io;
	int n = 0;

	while ((io = TAILQ_FIRST(&ch->done)) != NULL) {
		struct nbdc_req *req = keel_bdev_io_get_ctx(io);

		TAILQ_REMOVE(&ch->done, io, module_link);
		if (req->flush_after && req->status == 0 && ch->state == NBDC_UP) {
			req->flush_after = false;
			req->flush_phase = true;
			nbdc_issue(ch, io);
			continue;
		}
		n++;
		nbdc_finish(io, req->status);
	}
	return n;
}

/* ---- connection loss -------------------------------------------------------- */

static void nbdc_arm_reconnect(struct nbdc_channel *ch)
{
	ch->backoff_us = ch->backoff_us == 0 ? NBDC_BACKOFF_MIN_US : ch->backoff_us * 2;
	if (ch->backoff_us > NBDC_BACKOFF_MAX_US) {
		ch->backoff_us = NBDC_BACKOFF_MAX_US;
	}
	ch->retry_at_ns = keel_now_ns() + ch->backoff_us * 1000u;
	(void)keel_poller_arm(ch->timer, ch->backoff_us);
}

/*
 * Drop the channel's connection: close the handle (libnbd then never touches a
 * buffer of ours again), fail everything issued or waiting with -EIO, and arm the
 * reconnect. Closing inline: the socket close does not wait, and the callbacks a close
 * may run must see this channel alive.
 */
static void nbdc_drop(struct nbdc_channel *ch, const char *why)
{
	struct nbdc_disk *d = ch->disk;
	struct keel_bdev_io *io;

	if (ch->state == NBDC_UP) {
		KEEL_WARNLOG("nbd_client bdev %s: connection to %s lost: %s; reconnecting", d->name,
			     d->uri, why);
		atomic_fetch_add(&d->disconnects, 1);
		atomic_fetch_sub(&d->channels_up, 1);
		atomic_fetch_add(&d->channels_down, 1);
	}
	keel_poller_unregister(&ch->io_poller);
	ch->events = 0;
	if (ch->h != NULL) {
		ch->closing = true;
		nbd_close(ch->h);
		ch->h = NULL;
		ch->closing = false;
	}
	ch->state = NBDC_DOWN;
	while ((io = TAILQ_FIRST(&ch->inflight)) != NULL) {
		struct nbdc_req *req = keel_bdev_io_get_ctx(io);

		req->status = -EIO;
		req->flush_after = false;
		nbdc_req_finish(ch, io);
	}
	while ((io = TAILQ_FIRST(&ch->waiting)) != NULL) {
		struct nbdc_req *req = keel_bdev_io_get_ctx(io);

		TAILQ_REMOVE(&ch->waiting, io, module_link);
		req->status = -EIO;
		TAILQ_INSERT_TAIL(&ch->done, io, module_link);
	}
	nbdc_arm_reconnect(ch);
	(void)nbdc_complete_done(ch);
}

/* ---- the socket ------------------------------------------------------------- */

static void nbdc_update_events(struct nbdc_channel *ch)
{
	unsigned dir = nbd_aio_get_direction(ch->h);
	uint32_t ev = EPOLLIN;

	if (dir & LIBNBD_AIO_DIRECTION_WRITE) {
		ev |= EPOLLOUT;
	}
	if (ev != ch->events && keel_poller_modify_fd(ch->io_poller, ev) == 0) {
		ch->events = ev;
	}
}

static bool nbdc_handle_dead(struct nbd_handle *h)
{
	return nbd_aio_is_dead(h) || nbd_aio_is_closed(h);
}

static int nbdc_io_poll(void *arg)
{
	struct nbdc_channel *ch = arg;
	struct pollfd pfd;
	unsigned dir;
	int n;

	if (ch->h == NULL) {
		return KEEL_POLLER_IDLE;
	}
	/* libnbd must hear of readiness only when it is real: a notify_read on a socket
	 * with nothing to read leaves it waiting for a reply, and commands issued then wait
	 * behind that reply, which an idle server never sends. The poller cannot tell why
	 * it runs (fd, wake, first run), so ask the socket. */
	pfd.fd = ch->fd;
	pfd.events = POLLIN | POLLOUT;
	pfd.revents = 0;
	if (poll(&pfd, 1, 0) < 0) {
		pfd.revents = 0;
	}
	dir = nbd_aio_get_direction(ch->h);
	if ((dir & LIBNBD_AIO_DIRECTION_WRITE) && (pfd.revents & (POLLOUT | POLLERR | POLLHUP)) &&
	    nbd_aio_notify_write(ch->h) == -1) {
		nbdc_drop(ch, nbd_get_error());
		return KEEL_POLLER_BUSY;
	}
	if ((dir & LIBNBD_AIO_DIRECTION_READ) && (pfd.revents & (POLLIN | POLLERR | POLLHUP)) &&
	    nbd_aio_notify_read(ch->h) == -1) {
		nbdc_drop(ch, nbd_get_error());
		return KEEL_POLLER_BUSY;
	}
	if (nbdc_handle_dead(ch->h)) {
		const char *why = nbd_get_error();

		nbdc_drop(ch, why != NULL && why[0] != '\0' ? why : "closed by the server");
		return KEEL_POLLER_BUSY;
	}
	nbdc_update_events(ch);
	n = nbdc_complete_done(ch);
	if (ch->h != NULL && TAILQ_EMPTY(&ch->inflight)) {
		keel_poller_disarm(ch->timer);
	}
	return n > 0 ? KEEL_POLLER_BUSY : KEEL_POLLER_IDLE;
}

/* ---- issuing ---------------------------------------------------------------- */

static int64_t nbdc_issue_one(struct nbdc_channel *ch, struct keel_bdev_io *io, void *buf,
			      uint64_t len, uint64_t off, uint32_t flags)
{
	nbd_completion_callback cb = {.callback = nbdc_cmd_done, .user_data = io};

	switch (io->type) {
	case KEEL_BDEV_IO_READ:
		return nbd_aio_pread(ch->h, buf, len, off, cb, 0);
	case KEEL_BDEV_IO_WRITE:
		return nbd_aio_pwrite(ch->h, buf, len, off, cb, flags);
	case KEEL_BDEV_IO_FLUSH:
		return nbd_aio_flush(ch->h, cb, 0);
	case KEEL_BDEV_IO_UNMAP:
		return nbd_aio_trim(ch->h, len, off, cb, 0);
	case KEEL_BDEV_IO_WRITE_ZEROES:
		return nbd_aio_zero(ch->h, len, off, cb, 0);
	default:
		return -1;
	}
}

/*
 * Issue \p io (or, for a FUA write being finished, its flush) on the connected handle.
 * A request with several buffers becomes one command per buffer: they are contiguous
 * on the device, and NBD has no scatter-gather.
 */
static void nbdc_issue(struct nbdc_channel *ch, struct keel_bdev_io *io)
{
	struct nbdc_req *req = keel_bdev_io_get_ctx(io);
	struct nbdc_disk *d = ch->disk;
	uint64_t off = keel_bdev_io_offset_bytes(io);
	bool was_empty = TAILQ_EMPTY(&ch->inflight);

	req->ch = ch;
	req->pending = 1; /* the guard: no completion finishes it while issuing */
	req->deadline_ns = keel_now_ns() + (uint64_t)d->timeout_ms * 1000000u;
	req->listed = true;
	TAILQ_INSERT_TAIL(&ch->inflight, io, module_link);
	if (req->flush_phase) {
		nbd_completion_callback cb = {.callback = nbdc_cmd_done, .user_data = io};

		req->pending++;
		if (nbd_aio_flush(ch->h, cb, 0) == -1) {
			req->pending--;
			req->status = -EIO;
		}
	} else if (io->type == KEEL_BDEV_IO_READ || io->type == KEEL_BDEV_IO_WRITE) {
		uint32_t flags = 0;

		if (io->type == KEEL_BDEV_IO_WRITE && (io->flags & KEEL_BDEV_IO_FLAG_FUA)) {
			if (d->can_fua) {
				flags = LIBNBD_CMD_FLAG_FUA;
			} else {
				req->flush_after = d->can_flush;
			}
		}
		for (int i = 0; i < io->iovcnt && req->status == 0; i++) {
			req->pending++;
			if (nbdc_issue_one(ch, io, io->iovs[i].iov_base, io->iovs[i].iov_len, off,
					   flags) == -1) {
				req->pending--;
				req->status = -EIO;
			}
			off += io->iovs[i].iov_len;
		}
	} else if (io->type == KEEL_BDEV_IO_RESET) {
		/* Nothing of ours to reset: the commands in flight finish or time out. */
	} else {
		req->pending++;
		if (nbdc_issue_one(ch, io, NULL, keel_bdev_io_num_bytes(io), off, 0) == -1) {
			req->pending--;
			req->status = -EIO;
		}
	}
	if (req->status != 0) {
		req->flush_after = false;
		KEEL_ERRLOG("nbd_client bdev %s: cannot issue a request: %s", d->name,
			    nbd_get_error());
	}
	nbdc_req_put(io);
	if (was_empty && !TAILQ_EMPTY(&ch->inflight)) {
		(void)keel_poller_arm(ch->timer, (uint64_t)d->timeout_ms * 1000u);
	}
	/* The command may sit in libnbd's buffer waiting for the socket, or have failed at
	 * once: let the poller look (it completes the done list outside this call). */
	if (ch->io_poller != NULL) {
		nbdc_update_events(ch);
		if (!TAILQ_EMPTY(&ch->done)) {
			keel_poller_wake(ch->io_poller);
		}
	}
}

static void nbdc_submit_on(struct nbdc_channel *ch, struct keel_bdev_io *io)
{
	struct nbdc_req *req = keel_bdev_io_get_ctx(io);

	req->ch = ch;
	switch (ch->state) {
	case NBDC_UP:
		nbdc_issue(ch, io);
		return;
	case NBDC_CONNECTING:
		req->deadline_ns = keel_now_ns() + (uint64_t)ch->disk->timeout_ms * 1000000u;
		if (TAILQ_EMPTY(&ch->waiting)) {
			(void)keel_poller_arm(ch->timer, (uint64_t)ch->disk->timeout_ms * 1000u);
		}
		TAILQ_INSERT_TAIL(&ch->waiting, io, module_link);
		return;
	case NBDC_DOWN:
		break;
	}
	nbdc_finish(io, -EIO);
}

/* On the owner thread: a request another thread forwarded. */
static void nbdc_forward_msg(void *arg)
{
	struct keel_bdev_io *io = arg;
	struct nbdc_disk *d = io->bdev->ctxt;

	nbdc_submit_on(d->owner_ch, io);
}

/* The owner thread is gone (the bdev is being torn down): fail the request here. */
static void nbdc_forward_drop(void *arg)
{
	keel_bdev_io_complete(arg, -EIO);
}

static void nbdc_submit(struct keel_io_channel *kch, struct keel_bdev_io *io)
{
	struct nbdc_channel *ch = keel_io_channel_get_ctx(kch);
	struct nbdc_req *req = keel_bdev_io_get_ctx(io);

	memset(req, 0, sizeof(*req));
	req->ch = ch;
	if (ch->forward) {
		req->origin = keel_thread_get_current();
		if (keel_thread_send_msg_reliable(ch->disk->owner, nbdc_forward_msg, io,
						  nbdc_forward_drop) != 0) {
			keel_bdev_io_complete(io, -EIO);
		}
		return;
	}
	nbdc_submit_on(ch, io);
}

/* ---- connecting ------------------------------------------------------------- */

static void nbdc_adopt(struct nbdc_channel *ch, struct nbd_handle *h)
{
	struct nbdc_disk *d = ch->disk;
	struct keel_bdev_io *io;
	int fd = nbd_aio_get_fd(h);

	ch->io_poller = keel_poller_register(nbdc_io_poll, ch, 0, "nbd_client");
	if (fd < 0 || ch->io_poller == NULL ||
	    keel_poller_register_fd(ch->io_poller, fd, EPOLLIN)) {
		KEEL_ERRLOG("nbd_client bdev %s: cannot watch the connection's socket", d->name);
		keel_poller_unregister(&ch->io_poller);
		nbd_close(h);
		if (ch->state == NBDC_CONNECTING) {
			atomic_fetch_add(&d->channels_down, 1);
		}
		ch->state = NBDC_DOWN;
		nbdc_drop(ch, "cannot watch the socket");
		return;
	}
	if (ch->state != NBDC_CONNECTING) {
		KEEL_NOTICELOG("nbd_client bdev %s: reconnected to %s", d->name, d->uri);
		atomic_fetch_sub(&d->channels_down, 1);
	}
	atomic_fetch_add(&d->channels_up, 1);
	atomic_fetch_add(&d->connects, 1);
	ch->events = EPOLLIN;
	ch->fd = fd;
	ch->h = h;
	ch->state = NBDC_UP;
	ch->backoff_us = 0;
	keel_poller_disarm(ch->timer);
	while ((io = TAILQ_FIRST(&ch->waiting)) != NULL) {
		TAILQ_REMOVE(&ch->waiting, io, module_link);
		nbdc_issue(ch, io);
	}
}

static void nbdc_connect_done(void *cb_arg, int rc)
{
	struct nbdc_conn_job *job = cb_arg;
	struct nbdc_channel *ch = job->ch;

	if (ch == NULL) { /* the channel went away meanwhile */
		bdev_nbdc_handle_close(job->h);
		free(job->uri);
		free(job);
		return;
	}
	ch->job = NULL;
	if (rc == 0) {
		nbdc_adopt(ch, job->h);
	} else {
		atomic_fetch_add(&ch->disk->connect_errors, 1);
		if (ch->state == NBDC_CONNECTING) {
			KEEL_WARNLOG("nbd_client bdev %s: cannot connect to %s: %s", ch->disk->name,
				     ch->disk->uri, job->err);
			atomic_fetch_add(&ch->disk->channels_down, 1);
		} else {
			KEEL_DEBUGLOG("nbd_client bdev %s: reconnect failed: %s", ch->disk->name,
				      job->err);
		}
		nbdc_drop(ch, job->err);
	}
	free(job->uri);
	free(job);
}

static void nbdc_start_connect(struct nbdc_channel *ch)
{
	struct nbdc_conn_job *job = calloc(1, sizeof(*job));

	if (job != NULL) {
		job->uri = strdup(ch->disk->uri);
		job->timeout_ms = ch->disk->timeout_ms;
		job->ch = ch;
	}
	if (job == NULL || job->uri == NULL ||
	    keel_spawn_blocking(bdev_nbdc_connect_blocking, job, nbdc_connect_done, job) != 0) {
		if (job != NULL) {
			free(job->uri);
			free(job);
		}
		if (ch->state == NBDC_CONNECTING) {
			atomic_fetch_add(&ch->disk->channels_down, 1);
		}
		nbdc_drop(ch, "cannot start a connect attempt");
		return;
	}
	ch->job = job;
}

/* Deadlines of the requests in flight (or waiting for the first connect), and retries. */
static int nbdc_timer(void *arg)
{
	struct nbdc_channel *ch = arg;
	struct nbdc_disk *d = ch->disk;
	uint64_t now = keel_now_ns();
	struct nbdc_io_list *list = ch->state == NBDC_UP ? &ch->inflight : &ch->waiting;
	struct keel_bdev_io *io = TAILQ_FIRST(list);

	keel_poller_disarm(ch->timer);
	if (ch->state == NBDC_DOWN) {
		if (ch->job == NULL) {
			if (now >= ch->retry_at_ns) {
				nbdc_start_connect(ch);
			} else {
				(void)keel_poller_arm(ch->timer,
						      (ch->retry_at_ns - now) / 1000u + 1);
			}
		}
		return KEEL_POLLER_BUSY;
	}
	if (io == NULL) {
		return KEEL_POLLER_IDLE;
	}
	{
		struct nbdc_req *req = keel_bdev_io_get_ctx(io);

		if (req->deadline_ns > now) {
			(void)keel_poller_arm(ch->timer, (req->deadline_ns - now) / 1000u + 1);
			return KEEL_POLLER_IDLE;
		}
	}
	atomic_fetch_add(&d->timeouts, 1);
	if (ch->state == NBDC_CONNECTING) {
		/* The first connect is still running: fail the requests that waited too long,
		 * keep the attempt (its own deadline ends it). */
		while ((io = TAILQ_FIRST(&ch->waiting)) != NULL) {
			struct nbdc_req *req = keel_bdev_io_get_ctx(io);

			if (req->deadline_ns > now) {
				(void)keel_poller_arm(ch->timer,
						      (req->deadline_ns - now) / 1000u + 1);
				break;
			}
			TAILQ_REMOVE(&ch->waiting, io, module_link);
			nbdc_finish(io, -EIO);
		}
		return KEEL_POLLER_BUSY;
	}
	{
		char why[96];

		snprintf(why, sizeof(why), "a request got no answer within %u ms", d->timeout_ms);
		nbdc_drop(ch, why);
	}
	return KEEL_POLLER_BUSY;
}

static int nbdc_channel_create(void *io_device, void *ctx_buf)
{
	struct nbdc_disk *d = io_device;
	struct nbdc_channel *ch = ctx_buf;
	struct nbd_handle *h;

	memset(ch, 0, sizeof(*ch));
	ch->disk = d;
	ch->thread = keel_thread_get_current();
	TAILQ_INIT(&ch->inflight);
	TAILQ_INIT(&ch->done);
	TAILQ_INIT(&ch->waiting);
	if (d->shared && ch->thread != d->owner) {
		ch->forward = true; /* no connection: requests go to the owner's */
		return 0;
	}
	ch->timer = keel_poller_register(nbdc_timer, ch, NBDC_BACKOFF_MAX_US, "nbd_client_timer");
	if (ch->timer == NULL) {
		return -ENOMEM;
	}
	keel_poller_disarm(ch->timer);
	ch->state = NBDC_CONNECTING;
	h = atomic_exchange(&d->spare, NULL);
	if (h != NULL) {
		nbdc_adopt(ch, h);
		return 0;
	}
	nbdc_start_connect(ch);
	return 0;
}

static void nbdc_channel_destroy(void *io_device, void *ctx_buf)
{
	struct nbdc_channel *ch = ctx_buf;

	if (ch->forward) {
		return;
	}
	/* The core puts a channel only once every request of it completed. */
	if (ch->job != NULL) {
		ch->job->ch = NULL;
		ch->job = NULL;
	}
	keel_poller_unregister(&ch->io_poller);
	keel_poller_unregister(&ch->timer);
	if (ch->state == NBDC_UP) {
		atomic_fetch_sub(&ch->disk->channels_up, 1);
	} else if (ch->state == NBDC_DOWN) {
		atomic_fetch_sub(&ch->disk->channels_down, 1);
	}
	if (ch->h != NULL) {
		bdev_nbdc_handle_close(ch->h);
		ch->h = NULL;
	}
}

/* ---- the bdev --------------------------------------------------------------- */

static void nbdc_disk_free(struct nbdc_disk *d)
{
	bdev_nbdc_handle_close(atomic_exchange(&d->spare, NULL));
	free(d->uri);
	free(d);
}

static void nbdc_io_device_free(void *io_device)
{
	nbdc_disk_free(io_device);
}

static void nbdc_io_device_gone(void *io_device)
{
	struct nbdc_disk *d = io_device;

	keel_bdev_destruct_done(&d->bdev);
	nbdc_disk_free(d);
}

static void nbdc_owner_put_msg(void *arg)
{
	struct nbdc_disk *d = arg;

	keel_put_io_channel(d->owner_kch);
	d->owner_kch = NULL;
	keel_io_device_unregister(d, nbdc_io_device_gone);
}

static int nbdc_destruct(void *ctx)
{
	struct nbdc_disk *d = ctx;

	if (d->owner_kch != NULL) {
		/* The owner's channel is put on its thread, then the device goes. */
		if (keel_thread_send_msg_reliable(d->owner, nbdc_owner_put_msg, d, NULL) == 0) {
			return 1;
		}
		KEEL_ERRLOG("nbd_client bdev %s: its owner thread is gone", d->name);
		d->owner_kch = NULL;
	}
	keel_io_device_unregister(ctx, nbdc_io_device_gone);
	return 1;
}

static bool nbdc_io_type_supported(void *ctx, enum keel_bdev_io_type type)
{
	struct nbdc_disk *d = ctx;

	switch (type) {
	case KEEL_BDEV_IO_READ:
	case KEEL_BDEV_IO_WRITE:
	case KEEL_BDEV_IO_RESET:
		return true;
	case KEEL_BDEV_IO_FLUSH:
		return d->can_flush;
	case KEEL_BDEV_IO_UNMAP:
		return d->can_trim;
	case KEEL_BDEV_IO_WRITE_ZEROES:
		return d->can_zero;
	default:
		return false;
	}
}

static struct keel_io_channel *nbdc_get_io_channel(void *ctx)
{
	return keel_get_io_channel(ctx);
}

static void nbdc_dump_info_json(void *ctx, struct json_t *obj)
{
	struct nbdc_disk *d = ctx;
	json_t *m = json_object();

	if (m == NULL) {
		return;
	}
	json_object_set_new(m, "uri", json_string(d->uri));
	json_object_set_new(m, "timeout_ms", json_integer(d->timeout_ms));
	json_object_set_new(m, "multi_conn", json_boolean(d->can_multi_conn));
	json_object_set_new(m, "channels_up", json_integer(atomic_load(&d->channels_up)));
	json_object_set_new(m, "channels_down", json_integer(atomic_load(&d->channels_down)));
	json_object_set_new(m, "connects", json_integer((json_int_t)atomic_load(&d->connects)));
	json_object_set_new(m, "timeouts", json_integer((json_int_t)atomic_load(&d->timeouts)));
	json_object_set_new(m, "disconnects",
			    json_integer((json_int_t)atomic_load(&d->disconnects)));
	json_object_set_new(obj, "nbd_client", m);
}

static const struct keel_bdev_fn_table g_nbdc_fn_table = {
	.destruct = nbdc_destruct,
	.submit_request = nbdc_submit,
	.io_type_supported = nbdc_io_type_supported,
	.get_io_channel = nbdc_get_io_channel,
	.dump_info_json = nbdc_dump_info_json,
};

struct nbdc_create_ctx {
	struct nbdc_conn_job job;
	char name[KEEL_BDEV_NAME_MAX + 1];
	keel_bdev_create_cb cb_fn;
	void *cb_arg;
};

static void nbdc_create_fail(struct nbdc_create_ctx *c, int rc, const char *why)
{
	snprintf(g_nbdc_last_error, sizeof(g_nbdc_last_error), "%s", why);
	KEEL_ERRLOG("nbd_client bdev %s: %s", c->name, why);
	c->cb_fn(c->cb_arg, rc, NULL);
}

/* Block size: the server's minimum (the granularity it requires), at least 512 (NBD's
 * default when the server says nothing), as a power of two keel takes. Not the preferred
 * size: a replica must match the block size of the volume's other replicas, and a keel
 * export of a 512-byte aio bdev prefers 4096. */
static uint32_t nbdc_block_size(const struct nbdc_conn_job *job)
{
	int64_t bs = job->min_block > 512 ? job->min_block : 512;

	if (bs > 65536 || (bs & (bs - 1)) != 0) {
		bs = 4096;
	}
	return (uint32_t)bs;
}

static void nbdc_create_done(void *cb_arg, int rc)
{
	struct nbdc_create_ctx *c = cb_arg;
	struct nbdc_conn_job *job = &c->job;
	struct nbdc_disk *d = NULL;
	uint32_t bs;
	char why[800];

	if (rc != 0) {
		nbdc_create_fail(c, rc, job->err);
		goto out_free;
	}
	bs = nbdc_block_size(job);
	if (job->size < bs || job->size % bs != 0) {
		snprintf(why, sizeof(why),
			 "export size %llu is not a positive multiple of its block size %u",
			 (unsigned long long)job->size, bs);
		nbdc_create_fail(c, -EINVAL, why);
		rc = -EINVAL;
		goto out_close;
	}
	d = calloc(1, sizeof(*d));
	if (d == NULL || (d->uri = strdup(job->uri)) == NULL) {
		nbdc_create_fail(c, -ENOMEM, "out of memory");
		rc = -ENOMEM;
		goto out_close;
	}
	snprintf(d->name, sizeof(d->name), "%s", c->name);
	d->timeout_ms = job->timeout_ms;
	d->size = job->size;
	d->can_flush = job->can_flush;
	d->can_fua = job->can_fua;
	d->can_trim = job->can_trim;
	d->can_zero = job->can_zero;
	d->can_multi_conn = job->can_multi_conn;
	d->read_only = job->read_only;
	/* Without multi-conn a flush on one connection need not cover the writes of
	 * another: one connection, shared by message. */
	d->shared = !d->can_multi_conn;
	d->bdev.name = d->name;
	d->bdev.product_name = "NBD client";
	d->bdev.block_size = bs;
	d->bdev.num_blocks = d->size / bs;
	d->bdev.required_alignment = 1;
	d->bdev.write_cache = d->can_flush;
	d->bdev.multi_conn_safe = d->can_multi_conn;
	d->bdev.read_last = true; /* another host, or at least another process */
	{
		uint64_t max = NBDC_MAX_REQUEST;

		if (job->max_block > 0 && (uint64_t)job->max_block < max) {
			max = (uint64_t)job->max_block;
		}
		d->bdev.max_transfer_blocks = max / bs > 0 ? (uint32_t)(max / bs) : 1;
	}
	d->bdev.ctxt = d;
	d->bdev.fn_table = &g_nbdc_fn_table;
	d->bdev.module = &keel_bdev_nbd_client_module;
	atomic_store(&d->spare, job->h);
	job->h = NULL;
	rc = keel_io_device_register(d, nbdc_channel_create, nbdc_channel_destroy,
				     sizeof(struct nbdc_channel), "bdev_nbd_client");
	if (rc != 0) {
		nbdc_create_fail(c, rc, "cannot register the I/O device");
		nbdc_disk_free(d);
		goto out_free;
	}
	if (d->shared) {
		d->owner = keel_thread_get_current();
		d->owner_kch = keel_get_io_channel(d); /* connects with the spare handle */
		if (d->owner_kch == NULL) {
			nbdc_create_fail(c, -ENOMEM, "cannot make the owner's channel");
			keel_io_device_unregister(d, nbdc_io_device_free);
			goto out_free;
		}
		d->owner_ch = keel_io_channel_get_ctx(d->owner_kch);
	}
	rc = keel_bdev_register(&d->bdev);
	if (rc != 0) {
		snprintf(why, sizeof(why), "cannot register the bdev: %s", strerror(-rc));
		if (d->owner_kch != NULL) {
			keel_put_io_channel(d->owner_kch);
		}
		nbdc_create_fail(c, rc, why);
		keel_io_device_unregister(d, nbdc_io_device_free);
		goto out_free;
	}
	KEEL_NOTICELOG("nbd_client bdev %s: %s, %llu bytes in blocks of %u%s%s%s%s", d->name,
		       d->uri, (unsigned long long)d->size, bs, d->can_flush ? ", flush" : "",
		       d->can_fua ? ", fua" : "", d->can_trim ? ", trim" : "",
		       d->can_multi_conn ? ", multi-conn" : "");
	g_nbdc_last_error[0] = '\0';
	c->cb_fn(c->cb_arg, 0, &d->bdev);
	goto out_free;

out_close:
	free(d);
	bdev_nbdc_handle_close(job->h);
out_free:
	free(job->uri);
	free(c);
}

int keel_bdev_nbd_client_create(const struct keel_bdev_nbd_client_opts *opts,
				keel_bdev_create_cb cb_fn, void *cb_arg)
{
	struct nbdc_create_ctx *c;
	int rc;

	if (opts == NULL || opts->name == NULL || opts->uri == NULL || cb_fn == NULL ||
	    strlen(opts->name) > KEEL_BDEV_NAME_MAX || !keel_bdev_nbd_client_is_uri(opts->uri) ||
	    (opts->timeout_ms != 0 && (opts->timeout_ms < KEEL_NBD_CLIENT_TIMEOUT_MS_MIN ||
				       opts->timeout_ms > KEEL_NBD_CLIENT_TIMEOUT_MS_MAX))) {
		return -EINVAL;
	}
	if (keel_bdev_get_by_name(opts->name) != NULL) {
		return -EEXIST;
	}
	c = calloc(1, sizeof(*c));
	if (c == NULL) {
		return -ENOMEM;
	}
	c->job.uri = strdup(opts->uri);
	if (c->job.uri == NULL) {
		free(c);
		return -ENOMEM;
	}
	c->job.timeout_ms = opts->timeout_ms != 0 ? opts->timeout_ms
						  : KEEL_NBD_CLIENT_TIMEOUT_MS_DEFAULT;
	snprintf(c->name, sizeof(c->name), "%s", opts->name);
	c->cb_fn = cb_fn;
	c->cb_arg = cb_arg;
	rc = keel_spawn_blocking(bdev_nbdc_connect_blocking, &c->job, nbdc_create_done, c);
	if (rc != 0) {
		free(c->job.uri);
		free(c);
	}
	return rc;
}

int keel_bdev_nbd_client_delete(const char *name, keel_bdev_done_cb cb_fn, void *cb_arg)
{
	struct keel_bdev *bdev = keel_bdev_get_by_name(name);

	if (bdev == NULL || bdev->module != &keel_bdev_nbd_client_module) {
		return -ENODEV;
	}
	keel_bdev_unregister(bdev, cb_fn, cb_arg);
	return 0;
}

int keel_bdev_nbd_client_get_stats(const char *name, struct keel_bdev_nbd_client_stats *st)
{
	struct keel_bdev *bdev = keel_bdev_get_by_name(name);
	struct nbdc_disk *d;

	if (bdev == NULL || bdev->module != &keel_bdev_nbd_client_module || st == NULL) {
		return -ENODEV;
	}
	d = bdev->ctxt;
	st->connects = atomic_load(&d->connects);
	st->connect_errors = atomic_load(&d->connect_errors);
	st->timeouts = atomic_load(&d->timeouts);
	st->disconnects = atomic_load(&d->disconnects);
	st->channels_up = (uint32_t)atomic_load(&d->channels_up);
	st->channels_down = (uint32_t)atomic_load(&d->channels_down);
	return 0;
}
