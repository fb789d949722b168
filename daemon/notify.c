/*
 * systemd notifications for keeld (notify.h says what is sent when).
 *
 * The watchdog pings ride on the reactor watchdog's liveness proof: the watchdog
 * thread sends WATCHDOG=1 only after every reactor showed it still loops, so a stuck
 * reactor stops the pings and systemd restarts keeld. The STATUS= line is computed on
 * the main keel thread, which owns the volumes and exports: after changes (debounced
 * by a timer that is armed only while a refresh is due) and, when the watchdog runs,
 * once per ping, which is how health changes without an RPC (a replica faulted by an
 * I/O error, a rebuild that ended) reach it. Nothing runs periodically without a
 * watchdog, so an idle keeld stays asleep.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "keel/log.h"
#include "keel/nbd.h"
#include "keel/reactor.h"
#include "notify.h"
#include "volume_manager.h"

/* Changes are folded into one refresh this long after the first. */
#define NOTIFY_STATUS_DELAY_US 1000000u

/* Each volume restored asks systemd for this much more start-up time. */
#define NOTIFY_RESTORE_EXTEND_US (60ull * 1000000ull)

static int g_enabled = -1; /* -1: $NOTIFY_SOCKET not looked at yet */
static bool g_ready;
static uint64_t g_restore_last_ns;
static struct keel_poller *g_status_poller;
static bool g_status_armed;
static char g_status_sent[256];

/* The watchdog thread asks the main keel thread for a refresh only while allowed:
 * after READY and before STOPPING, decided under the lock so that once
 * keeld_notify_stopping() returned no message can be on its way to a thread that is
 * about to exit. */
static pthread_mutex_t g_refresh_lock = PTHREAD_MUTEX_INITIALIZER;
static struct keel_thread *g_refresh_thread;
static atomic_bool g_refresh_queued;
static bool g_watchdog_hooked;

bool keeld_notify_enabled(void)
{
	if (g_enabled < 0) {
		const char *sock = getenv("NOTIFY_SOCKET");

		g_enabled = sock != NULL && sock[0] != '\0';
	}
	return g_enabled == 1;
}

void keeld_notify_setup_log(void)
{
	const char *env = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;

	/* The variable is inherited by children whose stderr went elsewhere: compare. */
	if (env == NULL || sscanf(env, "%llu:%llu", &dev, &ino) != 2 ||
	    fstat(STDERR_FILENO, &st) != 0) {
		return;
	}
	if ((unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino) {
		keel_log_set_journal(true);
	}
}

static void notify_send(const char *what)
{
	int rc = sd_notify(0, what);

	if (rc < 0) {
		/* Rare (the manager went away); one line per failure is enough noise. */
		KEEL_WARNLOG("keeld: cannot notify the service manager (%.40s): %s", what,
			     strerror(-rc));
	}
}

static void notify_status_compose(char *buf, size_t len)
{
	struct keeld_volumes_summary s;
	struct keel_nbd_export *exp;
	uint32_t exports = 0;
	int n;

	keeld_volumes_summarize(&s);
	for (exp = keel_nbd_export_first(); exp != NULL; exp = keel_nbd_export_next(exp)) {
		exports++;
	}
	n = snprintf(buf, len, "%u volume%s, %u degraded", s.volumes, s.volumes == 1 ? "" : "s",
		     s.degraded);
	if (s.faulted > 0 && n > 0 && (size_t)n < len) {
		n += snprintf(buf + n, len - (size_t)n, ", %u faulted", s.faulted);
	}
	if (s.unassembled > 0 && n > 0 && (size_t)n < len) {
		n += snprintf(buf + n, len - (size_t)n, ", %u unassembled", s.unassembled);
	}
	if (n > 0 && (size_t)n < len) {
		snprintf(buf + n, len - (size_t)n, ", %u export%s", exports,
			 exports == 1 ? "" : "s");
	}
}

/* Send STATUS= when it says something new. Main keel thread. */
static void notify_status_refresh(const char *prefix)
{
	char line[sizeof(g_status_sent)], msg[sizeof(g_status_sent) + 32];

	notify_status_compose(line, sizeof(line));
	if (prefix == NULL && strcmp(line, g_status_sent) == 0) {
		return;
	}
	snprintf(g_status_sent, sizeof(g_status_sent), "%s", line);
	snprintf(msg, sizeof(msg), "%sSTATUS=%s", prefix != NULL ? prefix : "", line);
	notify_send(msg);
}

static int notify_status_poll(void *arg)
{
	(void)arg;
	keel_poller_disarm(g_status_poller);
	g_status_armed = false;
	notify_status_refresh(NULL);
	return KEEL_POLLER_BUSY;
}

static void notify_refresh_msg(void *arg)
{
	(void)arg;
	atomic_store(&g_refresh_queued, false);
	if (g_status_poller != NULL) { /* not stopping */
		notify_status_refresh(NULL);
	}
}

/* Watchdog thread: every reactor just proved it loops. */
static void notify_watchdog_ping(void *ctx)
{
	(void)ctx;
	notify_send("WATCHDOG=1");
	pthread_mutex_lock(&g_refresh_lock);
	if (g_refresh_thread != NULL && !atomic_exchange(&g_refresh_queued, true) &&
	    keel_thread_send_msg(g_refresh_thread, notify_refresh_msg, NULL) != 0) {
		atomic_store(&g_refresh_queued, false); /* a full ring: next ping tries again */
	}
	pthread_mutex_unlock(&g_refresh_lock);
}

/*
 * Before READY=1: a volume of the restore is done. A restore of many volumes may take
 * longer than TimeoutStartSec; while it makes progress keeld asks systemd for more time
 * (EXTEND_TIMEOUT_USEC), at most once a second and only from progress, never from a
 * timer, so a restore that hangs still times out.
 */
static void notify_restore_progress(void)
{
	struct keeld_volumes_summary s;
	char msg[160];
	uint64_t now = keel_now_ns();

	if (g_restore_last_ns != 0 && now - g_restore_last_ns < 1000000000ull) {
		return;
	}
	g_restore_last_ns = now;
	keeld_volumes_summarize(&s);
	snprintf(msg, sizeof(msg),
		 "EXTEND_TIMEOUT_USEC=%llu\nSTATUS=restoring volumes: %u of %u assembled",
		 (unsigned long long)NOTIFY_RESTORE_EXTEND_US, s.online + s.degraded + s.faulted,
		 s.volumes);
	notify_send(msg);
}

static void notify_volumes_changed(void *ctx)
{
	(void)ctx;
	if (!g_ready) {
		notify_restore_progress();
		return;
	}
	keeld_notify_changed();
}

void keeld_notify_init(void)
{
	uint64_t usec = 0;
	int rc;

	if (!keeld_notify_enabled()) {
		return;
	}
	notify_send("STATUS=starting: restoring volumes");
	keeld_volumes_set_change_listener(notify_volumes_changed, NULL);
	rc = sd_watchdog_enabled(0, &usec);
	if (rc < 0) {
		KEEL_ERRLOG("keeld: the service manager's watchdog settings are unreadable: %s",
			    strerror(-rc));
		return;
	}
	if (rc == 0) {
		KEEL_INFOLOG("keeld: started by a service manager, without a watchdog");
		return;
	}
	/* A third of the interval: a ping that one slow check delays still comes in time. */
	rc = keel_watchdog_set_liveness(usec / 3 < 10000 ? 10000 : usec / 3, notify_watchdog_ping,
					NULL);
	if (rc != 0) {
		KEEL_ERRLOG("keeld: the service manager asks for a watchdog every %llu ms, but the "
			    "reactor watchdog cannot prove liveness: %s; the service will be "
			    "restarted",
			    (unsigned long long)(usec / 1000), strerror(-rc));
		return;
	}
	g_watchdog_hooked = true;
	KEEL_NOTICELOG("keeld: service manager watchdog every %llu ms: pinged while every "
		       "reactor loops",
		       (unsigned long long)(usec / 1000));
}

void keeld_notify_ready(void)
{
	if (!keeld_notify_enabled()) {
		return;
	}
	g_status_poller = keel_poller_register(notify_status_poll, NULL, NOTIFY_STATUS_DELAY_US,
					       "keeld_notify_status");
	if (g_status_poller != NULL) {
		keel_poller_disarm(g_status_poller); /* armed only while a refresh is due */
	}
	g_ready = true;
	pthread_mutex_lock(&g_refresh_lock);
	g_refresh_thread = keel_thread_get_current();
	pthread_mutex_unlock(&g_refresh_lock);
	notify_status_refresh("READY=1\n");
}

void keeld_notify_changed(void)
{
	if (g_status_poller == NULL || g_status_armed) {
		return;
	}
	if (keel_poller_arm(g_status_poller, NOTIFY_STATUS_DELAY_US) == 0) {
		g_status_armed = true;
	}
}

void keeld_notify_stopping(void)
{
	if (!keeld_notify_enabled()) {
		return;
	}
	pthread_mutex_lock(&g_refresh_lock);
	g_refresh_thread = NULL;
	pthread_mutex_unlock(&g_refresh_lock);
	keeld_volumes_set_change_listener(NULL, NULL);
	keel_poller_unregister(&g_status_poller);
	g_status_armed = false;
	notify_send("STOPPING=1\nSTATUS=stopping: saving state, closing exports");
}

void keeld_notify_fini(void)
{
	if (g_watchdog_hooked) {
		keel_watchdog_set_liveness(0, NULL, NULL);
		g_watchdog_hooked = false;
	}
}
