/*
 * Reliable message sends: a message that must not be lost to a full ring.
 *
 * A full ring is back-pressure from a receiver that is busy, often on the same
 * reactor as the sender, so the sender must neither sleep nor spin: that would stall
 * the very reactor that has to drain the ring. The message waits instead on the
 * sending thread's own list, in order, and the thread's poll loop re-sends it (a
 * thread with waiting messages does not go to sleep, see krt_thread_has_pending()).
 */
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "keel/log.h"
#include "reactor_internal.h"

struct reliable_msg {
	struct keel_thread *target;
	keel_msg_fn fn;
	keel_msg_fn drop_fn;
	void *arg;
	TAILQ_ENTRY(reliable_msg) link;
};

static void reliable_msg_lost(struct reliable_msg *m)
{
	/* The log line names the sending thread already. */
	KEEL_ERRLOG("a message to thread %s was dropped: it has exited", m->target->name);
	if (m->drop_fn != NULL) {
		m->drop_fn(m->arg);
	}
}

/* Poll loop of the sending thread: send the waiting messages in order; the first
 * that still finds its ring full keeps its place and the rest behind it. */
static void reliable_msg_drain(void *arg)
{
	struct keel_thread *thread = arg;
	struct reliable_msg *m;
	int rc;

	while ((m = TAILQ_FIRST(&thread->reliable)) != NULL) {
		rc = keel_thread_send_msg(m->target, m->fn, m->arg);
		if (rc == -ENOMEM) {
			krt_thread_retry_queue(&thread->reliable_retry);
			return;
		}
		TAILQ_REMOVE(&thread->reliable, m, link);
		if (rc != 0) {
			reliable_msg_lost(m);
		}
		free(m);
	}
}

void krt_thread_reliable_init(struct keel_thread *thread)
{
	TAILQ_INIT(&thread->reliable);
	thread->reliable_retry.fn = reliable_msg_drain;
	thread->reliable_retry.arg = thread;
}

void krt_thread_reliable_drop_all(struct keel_thread *thread)
{
	struct reliable_msg *m;

	while ((m = TAILQ_FIRST(&thread->reliable)) != NULL) {
		TAILQ_REMOVE(&thread->reliable, m, link);
		reliable_msg_lost(m);
		free(m);
	}
}

int keel_thread_send_msg_reliable(struct keel_thread *target, keel_msg_fn fn, void *arg,
				  keel_msg_fn drop_fn)
{
	struct keel_thread *self = krt_thread_tls_current;
	struct reliable_msg *m;
	int rc;

	if (self == NULL) {
		/* Not a keel thread (a blocking-pool worker, a test's main): no poll loop
		 * to come back from and no reactor to stall, so wait here. */
		while ((rc = keel_thread_send_msg(target, fn, arg)) == -ENOMEM) {
			usleep(20);
		}
		return rc;
	}
	/* Behind messages already waiting, to keep this thread's sends in order. */
	if (TAILQ_EMPTY(&self->reliable)) {
		rc = keel_thread_send_msg(target, fn, arg);
		if (rc != -ENOMEM) {
			return rc;
		}
	} else if (keel_thread_is_exited(target)) {
		return -ESHUTDOWN;
	}
	m = malloc(sizeof(*m));
	if (m == NULL) {
		/* 48 bytes: a keeld that cannot get them is about to be killed anyway, and
		 * losing this message (a fault, a completion) could lose data. */
		KEEL_ERRLOG("thread %s: out of memory keeping a message for thread %s", self->name,
			    target->name);
		abort();
	}
	m->target = target;
	m->fn = fn;
	m->drop_fn = drop_fn;
	m->arg = arg;
	TAILQ_INSERT_TAIL(&self->reliable, m, link);
	krt_thread_retry_queue(&self->reliable_retry);
	return 0;
}
