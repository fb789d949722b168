/*
 * Poller back-off: a paused poller plus a one-shot resume timer. The timer is a timed
 * poller that unregisters itself when it fires, so an idle back-off costs no wake-up.
 */
#include <errno.h>
#include <stdlib.h>

#include "keel/backoff.h"
#include "keel/reactor.h"

struct keel_poller_backoff {
	struct keel_poller *poller;
	struct keel_poller *timer; /* non-NULL exactly while the poller is paused by us */
	uint64_t min_us;
	uint64_t max_us;
	uint64_t next_us;
	uint64_t cur_us; /* delay of the pause in progress */
};

bool keel_accept_should_back_off(int err)
{
	switch (err) {
	case EAGAIN:
#if EWOULDBLOCK != EAGAIN
	case EWOULDBLOCK:
#endif
	case EINTR:
	case ECONNABORTED:
	/* Errors of one pending TCP connection, passed on by accept(2): retry at once. */
	case EPROTO:
	case ENOPROTOOPT:
	case ENETDOWN:
	case ENETUNREACH:
	case EHOSTDOWN:
	case EHOSTUNREACH:
	case ENONET:
	case EOPNOTSUPP:
		return false;
	default:
		return true;
	}
}

struct keel_poller_backoff *keel_poller_backoff_create(struct keel_poller *poller, uint64_t min_us,
						       uint64_t max_us)
{
	struct keel_poller_backoff *bo;

	if (poller == NULL || min_us == 0 || min_us > max_us || keel_thread_get_current() == NULL) {
		return NULL;
	}
	bo = calloc(1, sizeof(*bo));
	if (bo == NULL) {
		return NULL;
	}
	bo->poller = poller;
	bo->min_us = min_us;
	bo->max_us = max_us;
	bo->next_us = min_us;
	return bo;
}

static int backoff_resume(void *arg)
{
	struct keel_poller_backoff *bo = arg;

	keel_poller_unregister(&bo->timer);
	keel_poller_resume(bo->poller);
	return KEEL_POLLER_BUSY;
}

uint64_t keel_poller_backoff_pause(struct keel_poller_backoff *bo)
{
	uint64_t delay = bo->next_us;

	if (bo->timer != NULL) {
		return bo->cur_us;
	}
	bo->timer = keel_poller_register(backoff_resume, bo, delay, "backoff_resume");
	if (bo->timer == NULL) {
		return 0;
	}
	keel_poller_pause(bo->poller);
	bo->cur_us = delay;
	bo->next_us = delay > bo->max_us / 2 ? bo->max_us : delay * 2;
	return delay;
}

void keel_poller_backoff_reset(struct keel_poller_backoff *bo)
{
	bo->next_us = bo->min_us;
}

bool keel_poller_backoff_is_paused(const struct keel_poller_backoff *bo)
{
	return bo->timer != NULL;
}

void keel_poller_backoff_free(struct keel_poller_backoff **pbo)
{
	struct keel_poller_backoff *bo;

	if (pbo == NULL || *pbo == NULL) {
		return;
	}
	bo = *pbo;
	*pbo = NULL;
	keel_poller_unregister(&bo->timer);
	free(bo);
}
