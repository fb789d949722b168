/*
 * Replicas on other hosts come back by themselves. When the nexus faults a replica that
 * is an NBD export (its locator is a URI) on an I/O error, the server is usually away
 * (killed, restarted, link down) rather than its disk broken; so keeld retries the
 * re-add in place (keeld_volume_add_replica with the same URI) with a doubling back-off
 * until it works: the label of this volume is found in the export, the nexus rejoins
 * the member and rebuilds what the write-intent bitmap says it missed (all of it when
 * the bitmap cannot cover the gap). An administrator's fault is left alone.
 *
 * The retry timer is armed only while some replica waits, so an idle daemon never wakes
 * for it. Main keel thread only (the nexus hook and the volume manager run there).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "keel/bdev_nbd_client.h"
#include "keel/log.h"
#include "keel/nexus.h"
#include "keel/reactor.h"
#include "volume_internal.h"

#define REMOTE_RETRY_MIN_US 250000u
#define REMOTE_RETRY_MAX_US 10000000u
/* No more than this many replicas wait at once: each is one record and one try. */
#define REMOTE_MAX_WAITING 64u

struct remote_waiting {
	char volume[KEEL_NEXUS_NAME_MAX + 1];
	char *uri;
	bool trying; /* an add is in flight */
	TAILQ_ENTRY(remote_waiting) link;
};

static TAILQ_HEAD(, remote_waiting) g_waiting = TAILQ_HEAD_INITIALIZER(g_waiting);
static uint32_t g_nwaiting;
static struct keel_poller *g_retry;
static uint64_t g_backoff_us;

static void remote_forget(struct remote_waiting *w)
{
	TAILQ_REMOVE(&g_waiting, w, link);
	g_nwaiting--;
	free(w->uri);
	free(w);
}

static void remote_arm(void)
{
	if (g_retry == NULL) {
		return;
	}
	g_backoff_us = g_backoff_us == 0 ? REMOTE_RETRY_MIN_US : g_backoff_us * 2;
	if (g_backoff_us > REMOTE_RETRY_MAX_US) {
		g_backoff_us = REMOTE_RETRY_MAX_US;
	}
	(void)keel_poller_arm(g_retry, g_backoff_us);
}

static void remote_added(void *cb_arg, int status, const char *errmsg, struct keeld_volume *vol)
{
	struct remote_waiting *w = cb_arg;

	(void)vol;
	w->trying = false;
	if (g_retry == NULL) { /* stopped meanwhile */
		remote_forget(w);
		return;
	}
	if (status == 0) {
		KEEL_NOTICELOG("volume %s: replica %s answers again: re-added, rebuilding what it "
			       "missed",
			       w->volume, w->uri);
		remote_forget(w);
		g_backoff_us = 0;
		return;
	}
	if (status == -ENOENT || status == -EEXIST || status == -ESHUTDOWN) {
		/* The volume or the replica is gone, or someone re-added it already. */
		remote_forget(w);
		return;
	}
	KEEL_DEBUGLOG("volume %s: replica %s not back yet: %s", w->volume, w->uri,
		      errmsg != NULL ? errmsg : strerror(-status));
	remote_arm();
}

static int remote_retry(void *arg)
{
	struct remote_waiting *w, *tmp;

	(void)arg;
	keel_poller_disarm(g_retry);
	for (w = TAILQ_FIRST(&g_waiting); w != NULL; w = tmp) {
		int rc;

		tmp = TAILQ_NEXT(w, link);
		if (w->trying) {
			continue;
		}
		w->trying = true;
		rc = keeld_volume_add_replica(w->volume, w->uri, NULL, KEELD_BACKEND_DEFAULT, false,
					      remote_added, w);
		if (rc != 0) {
			w->trying = false;
			if (rc == -EINVAL || rc == -ESHUTDOWN) {
				remote_forget(w);
			} else {
				remote_arm();
			}
		}
	}
	return KEEL_POLLER_BUSY;
}

static void remote_fault_hook(void *ctx, const char *volume, const char *replica_bdev)
{
	struct keeld_volume *v = keeld_volume_find(volume, NULL, 0);
	struct vol_replica *r;
	struct remote_waiting *w;

	(void)ctx;
	if (v == NULL || g_retry == NULL) {
		return;
	}
	TAILQ_FOREACH(r, &v->replicas, link) {
		if (strcmp(r->bdev, replica_bdev) == 0) {
			break;
		}
	}
	if (r == NULL || r->path == NULL || !keel_bdev_nbd_client_is_uri(r->path)) {
		return;
	}
	TAILQ_FOREACH(w, &g_waiting, link) {
		if (strcmp(w->volume, volume) == 0 && strcmp(w->uri, r->path) == 0) {
			return;
		}
	}
	if (g_nwaiting >= REMOTE_MAX_WAITING || (w = calloc(1, sizeof(*w))) == NULL ||
	    (w->uri = strdup(r->path)) == NULL) {
		free(w);
		KEEL_WARNLOG("volume %s: replica %s will not be re-added by itself (too many "
			     "waiting): re-add it with keelctl replica add",
			     volume, r->path);
		return;
	}
	snprintf(w->volume, sizeof(w->volume), "%s", volume);
	TAILQ_INSERT_TAIL(&g_waiting, w, link);
	g_nwaiting++;
	KEEL_NOTICELOG("volume %s: replica %s on another host faulted: re-adding it once its "
		       "server answers",
		       volume, r->path);
	g_backoff_us = 0;
	remote_arm();
}

void vol_remote_start(void)
{
	if (g_retry != NULL) {
		return;
	}
	g_retry = keel_poller_register(remote_retry, NULL, REMOTE_RETRY_MAX_US, "remote_readd");
	if (g_retry == NULL) {
		KEEL_WARNLOG("keeld: replicas on other hosts will not come back by themselves "
			     "(out of memory)");
		return;
	}
	keel_poller_disarm(g_retry);
	keel_nexus_set_fault_hook(remote_fault_hook, NULL);
}

void vol_remote_stop(void)
{
	struct remote_waiting *w;
	keel_nexus_set_fault_hook(NULL, NULL);
	keel_poller_unregister(&g_retry);
	struct remote_waiting *tmp;

	/* An add in flight keeps its record: remote_added frees it when the add answers. */
	for (w = TAILQ_FIRST(&g_waiting); w != NULL; w = tmp) {
		tmp = TAILQ_NEXT(w, link);
		if (!w->trying) {
			remote_forget(w);
		}
	}
}
