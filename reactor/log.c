/*
 * Process-wide logger: level filter, one write(2) per line so concurrent lines
 * never interleave, and an optional hook that tests use to see what was logged.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "keel/log.h"
#include "reactor_internal.h"

#define LOG_LINE_MAX 1024

static _Atomic int g_log_level = KEEL_LOG_NOTICE;
static _Atomic int g_log_fd = -1;
/* The hook is installed rarely; a mutex keeps fn and ctx consistent with each call. */
static pthread_mutex_t g_log_hook_lock = PTHREAD_MUTEX_INITIALIZER;
static keel_log_hook_fn g_log_hook;
static void *g_log_hook_ctx;
static _Atomic bool g_log_hook_set;
/* Lines go to systemd's journal: a priority prefix instead of a timestamp. */
static _Atomic bool g_log_journal;

static const char *const g_level_names[] = {
	[KEEL_LOG_ERROR] = "ERROR", [KEEL_LOG_WARN] = "WARN",   [KEEL_LOG_NOTICE] = "NOTICE",
	[KEEL_LOG_INFO] = "INFO",   [KEEL_LOG_DEBUG] = "DEBUG",
};

void keel_log_set_level(enum keel_log_level level)
{
	atomic_store_explicit(&g_log_level, (int)level, memory_order_relaxed);
}

enum keel_log_level keel_log_get_level(void)
{
	return (enum keel_log_level)atomic_load_explicit(&g_log_level, memory_order_relaxed);
}

int keel_log_level_parse(const char *name, enum keel_log_level *level)
{
	static const char *const names[] = {"error", "warn", "notice", "info", "debug"};

	if (name == NULL) {
		return -EINVAL;
	}
	for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (strcasecmp(name, names[i]) == 0) {
			*level = (enum keel_log_level)i;
			return 0;
		}
	}
	if (strcasecmp(name, "warning") == 0) {
		*level = KEEL_LOG_WARN;
		return 0;
	}
	return -EINVAL;
}

void keel_log_set_hook(keel_log_hook_fn hook, void *ctx)
{
	pthread_mutex_lock(&g_log_hook_lock);
	g_log_hook = hook;
	g_log_hook_ctx = ctx;
	atomic_store(&g_log_hook_set, hook != NULL);
	pthread_mutex_unlock(&g_log_hook_lock);
}

void keel_log_set_fd(int fd)
{
	atomic_store(&g_log_fd, fd);
}

void keel_log_set_journal(bool on)
{
	atomic_store(&g_log_journal, on);
}

void krt_log_thread_name(char *buf, size_t len)
{
	struct keel_thread *thread = keel_thread_get_current();

	if (thread != NULL) {
		snprintf(buf, len, "%s", keel_thread_get_name(thread));
		return;
	}
	if (pthread_getname_np(pthread_self(), buf, len) != 0 || buf[0] == '\0') {
		snprintf(buf, len, "tid%ld", (long)gettid());
	}
}

static void log_write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n < 0) {
			if (errno == EINTR) {
				continue;
			}
			return;
		}
		buf += n;
		len -= (size_t)n;
	}
}

void keel_vlog(enum keel_log_level level, const char *file, int line, const char *fmt, va_list ap)
{
	char buf[LOG_LINE_MAX];
	char tname[KEEL_NAME_MAX];
	struct timespec ts;
	struct tm tm;
	int saved_errno = errno;
	size_t off;
	int n, fd;

	if ((int)level > atomic_load_explicit(&g_log_level, memory_order_relaxed) ||
	    (int)level < KEEL_LOG_ERROR) {
		return;
	}
	krt_log_thread_name(tname, sizeof(tname));
	if (atomic_load_explicit(&g_log_journal, memory_order_relaxed)) {
		/* sd-daemon(3) prefixes: syslog priorities err..debug; journald stamps the time. */
		static const int prio[] = {3, 4, 5, 6, 7};

		n = snprintf(buf, sizeof(buf), "<%d>keel[%s] %s: ", prio[level],
			     g_level_names[level], tname);
		off = (n > 0) ? (size_t)n : 0;
	} else {
		clock_gettime(CLOCK_REALTIME, &ts);
		localtime_r(&ts.tv_sec, &tm);
		off = strftime(buf, sizeof(buf), "[%Y-%m-%d %H:%M:%S", &tm);
		n = snprintf(buf + off, sizeof(buf) - off,
			     ".%06ld] keel[%s] %s: ", ts.tv_nsec / 1000, g_level_names[level],
			     tname);
		off += (n > 0) ? (size_t)n : 0;
	}
	if (level >= KEEL_LOG_DEBUG && file != NULL) {
		const char *base = strrchr(file, '/');

		n = snprintf(buf + off, sizeof(buf) - off, "%s:%d: ", base ? base + 1 : file, line);
		off += (n > 0) ? (size_t)n : 0;
	}
	if (off < sizeof(buf)) {
		n = vsnprintf(buf + off, sizeof(buf) - off, fmt, ap);
		off += (n > 0) ? (size_t)n : 0;
	}
	if (off > sizeof(buf) - 2) {
		off = sizeof(buf) - 2; /* truncated: keep room for the newline */
	}
	while (off > 0 && buf[off - 1] == '\n') {
		off--;
	}
	buf[off] = '\0';

	if (atomic_load(&g_log_hook_set)) {
		pthread_mutex_lock(&g_log_hook_lock);
		if (g_log_hook != NULL) {
			g_log_hook(level, buf, g_log_hook_ctx);
		}
		pthread_mutex_unlock(&g_log_hook_lock);
	}

	buf[off++] = '\n';
	fd = atomic_load(&g_log_fd);
	log_write_all(fd >= 0 ? fd : STDERR_FILENO, buf, off);
	errno = saved_errno;
}

void keel_log(enum keel_log_level level, const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	keel_vlog(level, file, line, fmt, ap);
	va_end(ap);
}

bool keel_log_ratelimit_pass(struct keel_log_ratelimit *rl, uint32_t *suppressed)
{
	uint64_t now = keel_now_ns();
	uint64_t next = __atomic_load_n(&rl->next_ns, __ATOMIC_RELAXED);

	/* One winner per interval even when several threads hit the site at once. */
	if (now < next || !__atomic_compare_exchange_n(&rl->next_ns, &next, now + rl->interval_ns,
						       false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
		__atomic_fetch_add(&rl->suppressed, 1, __ATOMIC_RELAXED);
		return false;
	}
	*suppressed = __atomic_exchange_n(&rl->suppressed, 0, __ATOMIC_RELAXED);
	return true;
}

void keel_log_ratelimited(struct keel_log_ratelimit *rl, enum keel_log_level level,
			  const char *file, int line, const char *fmt, ...)
{
	char msg[LOG_LINE_MAX];
	uint32_t suppressed;
	va_list ap;

	if ((int)level > atomic_load_explicit(&g_log_level, memory_order_relaxed) ||
	    !keel_log_ratelimit_pass(rl, &suppressed)) {
		return;
	}
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (suppressed == 0) {
		keel_log(level, file, line, "%s", msg);
	} else {
		keel_log(level, file, line, "%s (%u similar lines not shown)", msg, suppressed);
	}
}
