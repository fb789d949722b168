/*
 * keeld: the keel daemon. Parses options, takes the state-directory lock, optionally
 * detaches, runs the reactors, brings up the bdev layer and the JSON-RPC server, and
 * shuts all of it down on SIGTERM/SIGINT.
 *
 * Startup errors must reach the person who ran keeld even when it detaches, so the
 * child reports "ready" or the error text through a pipe and the parent exits only
 * then, with the matching status.
 *
 * Signals are blocked in every thread (the mask is set before the reactors start) and
 * read from a signalfd by a poller on the main thread, so shutdown runs as ordinary
 * keel code and not inside a signal handler.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "keel/bdev.h"
#include "keel/bdev_module.h"
#include "keel/bdev_nbd_client.h"
#include "keel/bdev_uring.h"
#include "keel/bdev_vcache.h"
#include "keel/log.h"
#include "keel/nexus.h"
#include "keel/reactor.h"
#include "keel/rpc.h"
#include "metrics.h"
#include "options.h"
#include "paths.h"
#include "rebuild_history.h"
#include "rpc_methods.h"
#include "server.h"
#include "state.h"
#include "store.h"
#include "volume_manager.h"
#include "keel/nbd.h"
#include "notify.h"
#include "keel/ublk.h"
#include <sys/mman.h>
#include <sys/prctl.h>

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif

static struct keeld_opts g_opts;
static int g_ready_fd = -1; /* write end of the pipe to the waiting parent */
static int g_signal_fd = -1;
static struct keel_poller *g_signal_poller;
static bool g_bdev_up;
static bool g_bdev_init_pending;
static bool g_fini_deferred; /* shutdown came while the bdev layer was starting */
static bool g_stopping;
static bool g_restoring;         /* volumes from the state file are being brought up */
static bool g_shutdown_deferred; /* shutdown came while restoring */
static int g_exit_code;
/* The kernel devices an earlier keeld left, read in main(); handed over at restore. */
static json_t *g_nbd_disks_doc;
static json_t *g_ublk_disks_doc;

/* Tell the parent (or the terminal) that startup failed, then shut down. */
static void keeld_startup_failed(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void keeld_shutdown(void);

static void keeld_report(const char *msg)
{
	if (g_ready_fd >= 0) {
		ssize_t n = write(g_ready_fd, msg, strlen(msg));

		(void)n;
		close(g_ready_fd);
		g_ready_fd = -1;
	}
}

static void keeld_startup_failed(const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	KEEL_ERRLOG("keeld: %s", msg);
	keeld_report(msg);
	g_exit_code = 1;
	keeld_shutdown();
}

/* ------------------------------------------------------------------------------ */
/* Shutdown                                                                        */
/* ------------------------------------------------------------------------------ */

static void keeld_bdev_fini_done(void *cb_arg, int status)
{
	if (status != 0) {
		KEEL_WARNLOG("keeld: bdev layer shut down with %s", strerror(-status));
	}
	KEEL_NOTICELOG("keeld: stopping reactors");
	keel_reactors_stop();
}

static void keeld_nbd_saved(void *cb_arg, int status)
{
	if (g_bdev_init_pending) {
		g_fini_deferred = true;
		return;
	}
	if (g_bdev_up) {
		g_bdev_up = false;
		/* Unregisters every bdev once its I/O has drained, then the modules. */
		keel_bdev_subsystem_fini(keeld_bdev_fini_done, NULL);
	} else {
		keel_reactors_stop();
	}
}

static void keeld_nbd_stopped(void *cb_arg, int status)
{
	if (status != 0) {
		KEEL_WARNLOG("keeld: stopping NBD exports: %s", strerror(-status));
	}
	/* The kernel devices' last change reaches the disk before keeld exits. */
	keel_nbd_disk_set_listener(NULL, NULL);
	json_decref(g_nbd_disks_doc); /* shut down before the restore */
	g_nbd_disks_doc = NULL;
	if (keeld_store_busy(KEELD_DOC_NBD_DISKS) &&
	    keeld_store_save(KEELD_DOC_NBD_DISKS, keeld_nbd_saved, NULL) == 0) {
		return;
	}
	keeld_nbd_saved(NULL, 0);
}

static void keeld_ublk_saved(void *cb_arg, int status)
{
	/* Exports hold bdev descriptors: they go before the bdev layer. */
	keel_nbd_stop_all(keeld_nbd_stopped, NULL);
}

static void keeld_ublk_stopped(void *cb_arg, int status, const char *err)
{
	keel_ublk_set_listener(NULL, NULL);
	json_decref(g_ublk_disks_doc);
	g_ublk_disks_doc = NULL;
	if (keeld_store_busy(KEELD_DOC_UBLK_DISKS) &&
	    keeld_store_save(KEELD_DOC_UBLK_DISKS, keeld_ublk_saved, NULL) == 0) {
		return;
	}
	keeld_ublk_saved(NULL, 0);
}

static void keeld_volumes_stopped(void *arg)
{
	keel_ublk_stop_all(keeld_ublk_stopped, NULL);
}

static void keeld_shutdown(void)
{
	if (g_stopping) {
		return;
	}
	g_stopping = true;
	KEEL_NOTICELOG("keeld: shutting down");
	keeld_notify_stopping();
	keel_rpc_server_stop();
	keeld_metrics_stop(); /* a scrape waiting on us gets 503 now */
	keel_poller_unregister(&g_signal_poller);
	if (g_signal_fd >= 0) {
		close(g_signal_fd);
		g_signal_fd = -1;
	}
	if (g_restoring) {
		/* Half-assembled volumes are not torn down under the restore's feet. */
		g_shutdown_deferred = true;
		return;
	}
	/* The last state write still sees the exports, which stop next. */
	keeld_volumes_shutdown(keeld_volumes_stopped, NULL);
}

static int keeld_signal_poll(void *arg)
{
	struct signalfd_siginfo si;
	ssize_t n;

	n = read(g_signal_fd, &si, sizeof(si));
	if (n != (ssize_t)sizeof(si)) {
		return KEEL_POLLER_IDLE;
	}
	KEEL_NOTICELOG("keeld: got %s", strsignal((int)si.ssi_signo));
	keeld_shutdown();
	return KEEL_POLLER_BUSY;
}

/* ------------------------------------------------------------------------------ */
/* Startup on the main keel thread                                                 */
/* ------------------------------------------------------------------------------ */

static void keeld_rpc_start(void);

static void keeld_ublk_disks_restored(void *cb_arg, int status, const char *err)
{
	keeld_rpc_start();
}

static void keeld_nbd_disks_restored(void *cb_arg, int status)
{
	keel_ublk_disk_restore(g_ublk_disks_doc, keeld_ublk_disks_restored, NULL);
	json_decref(g_ublk_disks_doc);
	g_ublk_disks_doc = NULL;
}

static json_t *keeld_ublk_disks_snapshot(void *ctx)
{
	return keel_ublk_disk_snapshot();
}

static void keeld_ublk_disks_changed(void *ctx)
{
	keeld_store_save(KEELD_DOC_UBLK_DISKS, NULL, NULL);
}

/* The NBD library keeps its device records; keeld stores them. */
static json_t *keeld_nbd_disks_snapshot(void *ctx)
{
	return keel_nbd_disk_snapshot();
}

static void keeld_nbd_disks_changed(void *ctx)
{
	keeld_store_save(KEELD_DOC_NBD_DISKS, NULL, NULL);
}

static void keeld_volumes_restored(void *cb_arg)
{
	/* Kernel devices of a keeld that died come back before clients can talk to us;
	 * their bdevs (volumes) were just restored. */
	keel_nbd_disk_restore(g_nbd_disks_doc, keeld_nbd_disks_restored, NULL);
	json_decref(g_nbd_disks_doc);
	g_nbd_disks_doc = NULL;
}

static void keeld_rpc_start(void)
{
	int rc;

	g_restoring = false;
	if (g_shutdown_deferred) {
		keeld_volumes_shutdown(keeld_volumes_stopped, NULL);
		return;
	}
	rc = keel_rpc_server_start(g_opts.rpc_socket, &g_opts.rpc);
	if (rc != 0) {
		if (rc == -EADDRINUSE) {
			keeld_startup_failed("another keeld is already answering on %s: stop it "
					     "first or choose --rpc-socket",
					     g_opts.rpc_socket);
		} else if (rc == -EEXIST) {
			keeld_startup_failed("%s exists and is not a socket: remove it or choose "
					     "--rpc-socket",
					     g_opts.rpc_socket);
		} else {
			keeld_startup_failed("cannot listen on %s: %s", g_opts.rpc_socket,
					     strerror(-rc));
		}
		return;
	}
	if (g_opts.metrics_listen[0] != '\0') {
		struct keeld_metrics_opts mopts = {.listen = g_opts.metrics_listen};
		char err[256];

		rc = keeld_metrics_start(&mopts, err, sizeof(err));
		if (rc != 0) {
			keeld_startup_failed("%s", err);
			return;
		}
	}
	KEEL_NOTICELOG("keeld: ready (rpc socket %s, %u reactors, pid %d)", g_opts.rpc_socket,
		       keel_reactor_count(), (int)getpid());
	keeld_report("K");
	keeld_notify_ready();
}

static void keeld_bdev_init_done(void *cb_arg, int status)
{
	g_bdev_init_pending = false;
	g_bdev_up = status == 0;
	if (g_fini_deferred) {
		keeld_nbd_saved(NULL, 0);
		return;
	}
	if (status != 0) {
		keeld_startup_failed("cannot initialise the bdev layer: %s", strerror(-status));
		return;
	}
	/* Volumes and their exports come back before clients can talk to keeld. */
	g_restoring = true;
	keeld_volumes_restore(keeld_volumes_restored, NULL);
}

static void keeld_start(void *arg)
{
	sigset_t mask;
	int rc;

	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	g_signal_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	if (g_signal_fd < 0) {
		keeld_startup_failed("signalfd: %s", strerror(errno));
		return;
	}
	/* An event poller: it runs only when a signal is pending, never on a timer. */
	g_signal_poller = keel_poller_register(keeld_signal_poll, NULL, 0, "keeld_signals");
	if (g_signal_poller == NULL ||
	    keel_poller_register_fd(g_signal_poller, g_signal_fd, EPOLLIN) != 0) {
		keeld_startup_failed("cannot watch for signals (out of memory?)");
		return;
	}
	g_bdev_init_pending = true;
	rc = keel_bdev_subsystem_init(keeld_bdev_init_done, NULL);
	if (rc != 0) {
		g_bdev_init_pending = false;
		keeld_startup_failed("cannot initialise the bdev layer: %s", strerror(-rc));
	}
}

/* ------------------------------------------------------------------------------ */
/* Process setup                                                                   */
/* ------------------------------------------------------------------------------ */

static int keeld_lock_state_dir(void)
{
	char path[PATH_MAX], pid[32] = "";
	int fd, rc;
	ssize_t n;

	rc = keel_path_mkdir_p(g_opts.state_dir, 0700);
	if (rc != 0) {
		fprintf(stderr, "keeld: cannot create state directory %s: %s\n", g_opts.state_dir,
			strerror(-rc));
		return -1;
	}
	if (keel_path_state_file(g_opts.state_dir, KEEL_STATE_FILE_LOCK, path, sizeof(path)) != 0) {
		fprintf(stderr, "keeld: state directory path too long: %s\n", g_opts.state_dir);
		return -1;
	}
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		fprintf(stderr, "keeld: cannot open lock file %s: %s\n", path, strerror(errno));
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		n = pread(fd, pid, sizeof(pid) - 1, 0);
		pid[n > 0 ? n : 0] = '\0';
		pid[strcspn(pid, "\n")] = '\0';
		fprintf(stderr,
			"keeld: another keeld%s%s is already running with state directory "
			"%s (%s is locked): stop it first or choose --state-dir\n",
			pid[0] != '\0' ? " with pid " : "", pid, g_opts.state_dir, path);
		close(fd);
		return -1;
	}
	return fd; /* kept open for the life of the process: the lock is the fd */
}

static void keeld_write_pid(int lock_fd)
{
	char pid[32];
	int len = snprintf(pid, sizeof(pid), "%d\n", (int)getpid());

	if (ftruncate(lock_fd, 0) != 0 || pwrite(lock_fd, pid, (size_t)len, 0) != len) {
		KEEL_WARNLOG("keeld: cannot write the pid into the lock file: %s", strerror(errno));
	}
}

/*
 * Fork; the parent waits for the child's verdict and exits with it. \return in the
 * child only.
 */
static void keeld_daemonize(void)
{
	char path[PATH_MAX], buf[1100];
	int pipefd[2], logfd, nullfd;
	size_t len = 0;
	ssize_t n;
	pid_t pid;

	if (keel_path_state_file(g_opts.state_dir, KEEL_STATE_FILE_LOG, path, sizeof(path)) != 0) {
		fprintf(stderr, "keeld: state directory path too long: %s\n", g_opts.state_dir);
		exit(1);
	}
	if (pipe2(pipefd, O_CLOEXEC) != 0) {
		fprintf(stderr, "keeld: pipe: %s\n", strerror(errno));
		exit(1);
	}
	pid = fork();
	if (pid < 0) {
		fprintf(stderr, "keeld: fork: %s\n", strerror(errno));
		exit(1);
	}
	if (pid > 0) {
		close(pipefd[1]);
		while (len < sizeof(buf) - 1) {
			n = read(pipefd[0], buf + len, sizeof(buf) - 1 - len);
			if (n < 0 && errno == EINTR) {
				continue;
			}
			if (n <= 0) {
				break;
			}
			len += (size_t)n;
		}
		buf[len] = '\0';
		if (strcmp(buf, "K") == 0) {
			exit(0);
		}
		if (len == 0) {
			fprintf(stderr, "keeld: the daemon exited during startup; see %s\n", path);
		} else {
			fprintf(stderr, "keeld: %s\n", buf);
		}
		exit(1);
	}

	close(pipefd[0]);
	g_ready_fd = pipefd[1];
	if (setsid() < 0) {
		/* Only fails for a process group leader, which a fresh child is not. */
		fprintf(stderr, "keeld: setsid: %s\n", strerror(errno));
	}
	logfd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	nullfd = open("/dev/null", O_RDWR);
	if (nullfd >= 0) {
		dup2(nullfd, STDIN_FILENO);
		dup2(nullfd, STDOUT_FILENO);
		/* stderr goes to the log so sanitizer reports and crashes are kept. */
		dup2(logfd >= 0 ? logfd : nullfd, STDERR_FILENO);
		if (nullfd > STDERR_FILENO) {
			close(nullfd);
		}
	}
	if (logfd >= 0) {
		close(logfd);
	}
	if (chdir("/") != 0) {
		KEEL_WARNLOG("keeld: chdir /: %s", strerror(errno));
	}
}

/*
 * keeld may be in the writeback path of its own /dev/nbdN: memory it allocates while
 * serving I/O must not wait for reclaim that writes to that device (a deadlock the
 * kernel's PR_SET_IO_FLUSHER exists for, Linux >= 5.6). The flag is per task and
 * inherited by threads created later, so main() sets it before any thread exists (that
 * covers the blocking-work pool and the watchdog), and every reactor sets it again on
 * its own thread so it does not depend on where reactors come from.
 */
static bool g_io_flusher;

static bool keeld_set_io_flusher(const char *who)
{
	if (prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0) {
		KEEL_WARNLOG("%s: prctl(PR_SET_IO_FLUSHER): %s (needs CAP_SYS_RESOURCE, Linux >= "
			     "5.6); under memory pressure a mounted /dev/nbdN served by keeld can "
			     "deadlock",
			     who, strerror(errno));
		return false;
	}
	return true;
}

static void keeld_reactor_thread_init(uint32_t reactor_idx)
{
	if (g_io_flusher) {
		keeld_set_io_flusher("reactor");
	}
}

static void keeld_memory_setup(void)
{
	if (geteuid() != 0) {
		return; /* both need privileges; without root there is no /dev/nbdN either */
	}
	/* One warning is enough: reactors only retry when the main thread succeeded. */
	g_io_flusher = keeld_set_io_flusher("keeld");
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
	/* The sanitizers' shadow memory is terabytes of address space: never lock it. */
	KEEL_INFOLOG("keeld: sanitizer build: not calling mlockall");
#else
	/* Pages keeld needs to serve I/O must not have to be read back from swap. */
	if (mlockall(MCL_CURRENT | MCL_FUTURE) != 0) {
		KEEL_WARNLOG("keeld: mlockall: %s; keeld's memory may be swapped out, which can "
			     "stall a /dev/nbdN it serves under memory pressure",
			     strerror(errno));
	}
#endif
}

int main(int argc, char **argv)
{
	struct keel_reactor_opts ropts;
	sigset_t mask;
	int rc, lock_fd;

	rc = keeld_opts_parse(argc, argv, &g_opts, stdout, stderr);
	if (rc == 1) {
		return 0;
	}
	if (rc != 0) {
		return 2;
	}
	keel_log_set_level(g_opts.log_level);

	lock_fd = keeld_lock_state_dir();
	if (lock_fd < 0) {
		return 1;
	}
	/* Read under the lock and before detaching, so a bad file is reported to the
	 * person starting keeld, and keeld does not run without its volumes. */
	if (keeld_store_init(g_opts.state_dir) != 0) {
		fprintf(stderr, "keeld: state directory path too long: %s\n", g_opts.state_dir);
		return 1;
	}
	{
		char err[PATH_MAX + 512];
		json_t *doc = NULL;

		if (keeld_state_read(&doc, err, sizeof(err)) != 0) {
			fprintf(stderr, "keeld: %s\n", err);
			return 1;
		}
		rc = keeld_volumes_load(doc);
		json_decref(doc);
		if (rc != 0) {
			fprintf(stderr, "keeld: out of memory loading %s\n",
				keeld_store_path(KEELD_DOC_STATE));
			return 1;
		}
	}
	keeld_rebuild_history_init();
	{
		char err[PATH_MAX + 256];

		/* Not fatal: volumes and exports come back without it. */
		if (keeld_store_read(KEELD_DOC_NBD_DISKS, &g_nbd_disks_doc, err, sizeof(err)) !=
		    0) {
			KEEL_ERRLOG("keeld: %s; kernel devices of an earlier keeld are not "
				    "reattached",
				    err);
		}
		keeld_store_set_snapshot(KEELD_DOC_NBD_DISKS, keeld_nbd_disks_snapshot, NULL);
		keel_nbd_disk_set_listener(keeld_nbd_disks_changed, NULL);
		if (keeld_store_read(KEELD_DOC_UBLK_DISKS, &g_ublk_disks_doc, err, sizeof(err)) !=
		    0) {
			KEEL_ERRLOG("keeld: %s; ublk devices of an earlier keeld are not "
				    "re-attached",
				    err);
		}
		keeld_store_set_snapshot(KEELD_DOC_UBLK_DISKS, keeld_ublk_disks_snapshot, NULL);
		keel_ublk_set_listener(keeld_ublk_disks_changed, NULL);
		/* The options parser checked every range: this cannot fail. */
		if (keel_nbd_set_options(&g_opts.nbd, err, sizeof(err)) != 0) {
			fprintf(stderr, "keeld: %s\n", err);
			return 2;
		}
	}
	rc = keel_path_mkdir_parent(g_opts.rpc_socket, 0700);
	if (rc != 0) {
		fprintf(stderr, "keeld: cannot create the directory of %s: %s\n", g_opts.rpc_socket,
			strerror(-rc));
		return 1;
	}
	/* Checked here too so the person sees it before keeld detaches. */
	rc = rpc_socket_probe(g_opts.rpc_socket);
	if (rc == -EADDRINUSE) {
		fprintf(stderr,
			"keeld: another keeld is already answering on %s: stop it first "
			"or choose --rpc-socket\n",
			g_opts.rpc_socket);
		return 1;
	}
	if (rc == -EEXIST) {
		fprintf(stderr,
			"keeld: %s exists and is not a socket: remove it or choose "
			"--rpc-socket\n",
			g_opts.rpc_socket);
		return 1;
	}

	/* Under systemd (Type=notify) the process systemd started is the daemon: a fork
	 * would leave it watching a parent that exits. */
	if (!g_opts.foreground && !keeld_notify_enabled()) {
		keeld_daemonize();
	}
	keeld_notify_setup_log(); /* stderr is final now */
	keeld_write_pid(lock_fd);

	/* Before any thread exists, so every reactor inherits the mask. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	pthread_sigmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);

	keeld_memory_setup();
	/* Before the reactors: the io_uring probe behind it may set up a ring. Logged
	 * after detaching, so the fallback line lands in keeld.log. */
	keeld_volumes_set_default_backend(g_opts.volume_backend);
	keel_reactor_opts_init(&ropts);
	ropts.cpus = g_opts.cpus;
	ropts.mode = g_opts.mode;
	ropts.reactor_thread_init = keeld_reactor_thread_init;
	rc = keel_reactors_init(&ropts);
	if (rc != 0) {
		char msg[256];

		snprintf(msg, sizeof(msg), "cannot start reactors: %s", strerror(-rc));
		fprintf(stderr, "keeld: %s\n", msg);
		keeld_report(msg);
		return 1;
	}

	keel_bdev_module_register(&keel_bdev_malloc_module);
	keel_bdev_module_register(&keel_bdev_null_module);
	keel_bdev_module_register(&keel_bdev_aio_module);
	keel_bdev_module_register(&keel_bdev_uring_module);
	keel_bdev_module_register(&keel_bdev_error_module);
	keel_bdev_module_register(&keel_bdev_vcache_module);
	keel_bdev_module_register(&keel_bdev_nexus_module);
	keel_bdev_module_register(&keel_bdev_nbd_client_module);

	rpc_framework_register();
	rpc_bdev_register();
	rpc_volume_register();
	rpc_rebuild_register();
	rpc_nbd_register();
	rpc_debug_register();
	rpc_vcache_register();
	keeld_notify_init();
	rpc_nbd_client_register();
	rpc_ublk_register();

	rc = keel_reactors_start(keeld_start, NULL);
	if (rc != 0) {
		char msg[256];

		snprintf(msg, sizeof(msg), "reactors failed to start: %s", strerror(-rc));
		KEEL_ERRLOG("keeld: %s", msg);
		keeld_report(msg);
		g_exit_code = 1;
	}
	keeld_notify_fini();
	keel_reactors_fini();
	keeld_volumes_fini();
	keeld_rebuild_history_fini();
	if (g_ready_fd >= 0) {
		keeld_report("stopped before it was ready");
	}
	KEEL_NOTICELOG("keeld: exiting with status %d", g_exit_code);
	close(lock_fd);
	return g_exit_code;
}
