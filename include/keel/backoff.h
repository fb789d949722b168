/*
 * Back-off for a poller whose work fails for a while (a listener whose accept4()
 * fails with EMFILE): pause it, resume it after a delay that doubles on each failure
 * and resets on success.
 *
 * Why a helper: a listening socket with a connection waiting stays readable, so a
 * poller that retries accept4() every iteration (or every millisecond) spins the
 * reactor as long as the process is out of file descriptors. Pausing the poller takes
 * its fd out of epoll; one timed poller, registered only while the pause lasts,
 * resumes it. Nothing runs while paused.
 *
 * Threading: a back-off belongs to the keel thread that owns its poller; every call
 * is made on that thread (including from inside the poller's own callback).
 */
#ifndef KEEL_BACKOFF_H
#define KEEL_BACKOFF_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_poller;
struct keel_poller_backoff;

/**
 * Whether a failed accept4() with \p err (a positive errno) should pause the
 * listener: true for running out of something (EMFILE, ENFILE, ENOBUFS, ENOMEM) and
 * for any unexpected error, which would only repeat at once; false for EAGAIN (nothing
 * to accept), EINTR, ECONNABORTED and the network errors Linux passes on from one
 * pending TCP connection (EPROTO, ENETDOWN, EHOSTUNREACH, ...: retry at once).
 */
bool keel_accept_should_back_off(int err);

/**
 * Create the back-off of \p poller, a poller of the current keel thread. The first
 * pause lasts \p min_us, each further pause without a reset twice the one before, at
 * most \p max_us. \return NULL when not on a keel thread, \p poller is NULL,
 * \p min_us is 0 or greater than \p max_us, or out of memory.
 * Lifetime: free it (keel_poller_backoff_free) before unregistering \p poller.
 */
struct keel_poller_backoff *keel_poller_backoff_create(struct keel_poller *poller, uint64_t min_us,
						       uint64_t max_us);

/**
 * Pause the poller now and resume it once the current delay has passed; the next
 * delay doubles (up to the maximum). Call it from the poller when retrying cannot
 * succeed soon. A call while already paused changes nothing (and returns the delay
 * of the pause in progress).
 * \return the delay in microseconds, or 0 when the resume timer could not be
 * registered (out of memory): then the poller is left running, as without a back-off.
 */
uint64_t keel_poller_backoff_pause(struct keel_poller_backoff *bo);

/** The work succeeded: the next pause starts again from the minimum delay. */
void keel_poller_backoff_reset(struct keel_poller_backoff *bo);

/** Whether the poller is paused by \p bo right now. */
bool keel_poller_backoff_is_paused(const struct keel_poller_backoff *bo);

/**
 * Free \p *bo and set it to NULL. A pending resume is cancelled; the poller is left
 * as it is (paused or not), ready to be unregistered. NULL is a no-op.
 */
void keel_poller_backoff_free(struct keel_poller_backoff **bo);

#ifdef __cplusplus
}
#endif

#endif /* KEEL_BACKOFF_H */
