/*
 * keeld under a service manager: systemd's notification protocol (sd_notify(3)) for
 * a Type=notify unit. READY=1 once the RPC socket serves and the saved volumes are
 * assembled, and before it, while the restore makes progress, EXTEND_TIMEOUT_USEC= so
 * that a long restore is not killed by TimeoutStartSec; STATUS= with a one-line
 * summary of volumes and exports; STOPPING=1 when
 * shutdown begins; WATCHDOG=1 from the reactor watchdog's liveness proof
 * (keel_watchdog_set_liveness) when the unit sets WatchdogSec.
 *
 * Without $NOTIFY_SOCKET (keeld not started by systemd, or by a unit of another type)
 * every function is a no-op and nothing is scheduled: no timer, no reactor wake-up.
 *
 * Threading: keeld_notify_init() and keeld_notify_fini() run in main() (init after
 * keel_reactors_init(), fini after keel_reactors_start() returned); the others run on
 * the main keel thread. The watchdog pings are sent from the watchdog thread.
 */
#ifndef KEEL_DAEMON_NOTIFY_H
#define KEEL_DAEMON_NOTIFY_H

#include <stdbool.h>

/**
 * Read $NOTIFY_SOCKET and $WATCHDOG_USEC; when the watchdog is asked for, hook the
 * pings to the reactor watchdog (every third of the interval, systemd's advice being
 * at least every half). Logs what it set up. Never fails keeld: a watchdog that cannot
 * be served is logged as an error (systemd will then restart keeld, which it should
 * know about).
 */
void keeld_notify_init(void);

/**
 * When stderr is systemd's journal ($JOURNAL_STREAM names its device and inode), log
 * lines carry their priority (keel_log_set_journal). main(), before anything is logged.
 */
void keeld_notify_setup_log(void);

/** Whether keeld runs under a service manager that listens ($NOTIFY_SOCKET set). */
bool keeld_notify_enabled(void);

/** keeld serves: send READY=1 with the first STATUS=. Main keel thread. */
void keeld_notify_ready(void);

/**
 * Something the summary counts may have changed (a volume, a replica, an export):
 * the STATUS= line is recomputed about a second later, once for a burst of changes.
 * Main keel thread; cheap and allocation-free when nothing listens.
 */
void keeld_notify_changed(void);

/** Shutdown began: STOPPING=1, and no more status refreshes. Main keel thread. */
void keeld_notify_stopping(void);

/** Unhook the watchdog pings; main() after the reactors stopped. */
void keeld_notify_fini(void);

#endif /* KEEL_DAEMON_NOTIFY_H */
