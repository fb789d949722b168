/*
 * keel logging.
 *
 * One process-wide logger. Every line carries a level and the name of the keel
 * thread that logged it (or the OS thread name outside keel threads). Log lines
 * name the object they talk about: "volume vol1: replica r2 faulted: ...".
 *
 * Threading: every function here may be called from any OS thread. A line is
 * written with a single write(2) so lines from different threads never interleave.
 */
#ifndef KEEL_LOG_H
#define KEEL_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum keel_log_level {
	KEEL_LOG_ERROR = 0,
	KEEL_LOG_WARN = 1,
	KEEL_LOG_NOTICE = 2,
	KEEL_LOG_INFO = 3,
	KEEL_LOG_DEBUG = 4,
};

/**
 * Hook that receives every emitted line (after level filtering), used by tests to
 * assert that a warning was logged. The line has no trailing newline.
 * Called on the logging thread; must be thread-safe and must not log.
 */
typedef void (*keel_log_hook_fn)(enum keel_log_level level, const char *line, void *ctx);

/** Set the lowest level that is printed (default KEEL_LOG_NOTICE). */
void keel_log_set_level(enum keel_log_level level);
enum keel_log_level keel_log_get_level(void);

/**
 * Parse "error", "warn", "notice", "info", "debug" (case-insensitive).
 * \return 0, or -EINVAL for an unknown name (level left untouched).
 */
int keel_log_level_parse(const char *name, enum keel_log_level *level);

/** Install (or with NULL remove) the hook. Not for the hot path. */
void keel_log_set_hook(keel_log_hook_fn hook, void *ctx);

/**
 * Send lines to stderr (default) or, when \p fd >= 0, to that fd instead.
 * The fd is not closed by the logger.
 */
void keel_log_set_fd(int fd);

/**
 * Format lines for systemd's journal (stderr connected to it, $JOURNAL_STREAM): each
 * starts with its syslog priority ("<3>" error ... "<7>" debug, sd-daemon(3)) instead
 * of a timestamp, so `journalctl -p warning` filters them. Any thread; default off.
 */
void keel_log_set_journal(bool on);

void keel_log(enum keel_log_level level, const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
void keel_vlog(enum keel_log_level level, const char *file, int line, const char *fmt, va_list ap);

#define KEEL_ERRLOG(...) keel_log(KEEL_LOG_ERROR, __FILE__, __LINE__, __VA_ARGS__)
#define KEEL_WARNLOG(...) keel_log(KEEL_LOG_WARN, __FILE__, __LINE__, __VA_ARGS__)
#define KEEL_NOTICELOG(...) keel_log(KEEL_LOG_NOTICE, __FILE__, __LINE__, __VA_ARGS__)
#define KEEL_INFOLOG(...) keel_log(KEEL_LOG_INFO, __FILE__, __LINE__, __VA_ARGS__)
#define KEEL_DEBUGLOG(...)                                                         \
	do {                                                                       \
		if (keel_log_get_level() >= KEEL_LOG_DEBUG)                        \
			keel_log(KEEL_LOG_DEBUG, __FILE__, __LINE__, __VA_ARGS__); \
	} while (0)

/* ------------------------------------------------------------------------------ */
/* Rate-limited lines                                                              */
/* ------------------------------------------------------------------------------ */

/**
 * State of one rate-limited log site: at most one line per interval passes; the next
 * line that passes ends with how many were dropped since the last one. Used for
 * errors a hostile client or an exhausted resource can make repeat thousands of times
 * a second (accept failing with EMFILE). Initialise with KEEL_LOG_RATELIMIT_INIT; the
 * fields are private (read and written with atomic builtins).
 * Threading: one state may be shared by any number of threads.
 * Time: keel_now_ns() (so the unit-test mock clock drives it).
 */
struct keel_log_ratelimit {
	uint64_t interval_ns;
	uint64_t next_ns;
	uint32_t suppressed;
};

#define KEEL_LOG_RATELIMIT_INIT(interval_ms)                                                   \
	{                                                                                      \
		.interval_ns = (uint64_t)(interval_ms)*1000000u, .next_ns = 0, .suppressed = 0 \
	}

/**
 * Whether a line may be printed now under \p rl. When it may, \p *suppressed is set to
 * the number of lines refused since the last one that passed.
 */
bool keel_log_ratelimit_pass(struct keel_log_ratelimit *rl, uint32_t *suppressed);

/**
 * keel_log() under \p rl: the line is dropped (and counted) when one passed less than
 * an interval ago; a line that passes after drops ends with
 * " (N similar lines not shown)". Lines filtered out by the level are not counted.
 */
void keel_log_ratelimited(struct keel_log_ratelimit *rl, enum keel_log_level level,
			  const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

/**
 * Log at \p level at most once per \p interval_ms from this call site (one state per
 * site, shared by every thread and every object that reaches it: name the object in
 * the line). For a state per object, embed a struct keel_log_ratelimit and call
 * keel_log_ratelimited().
 */
#define KEEL_LOG_RATELIMITED(level, interval_ms, ...)                                          \
	do {                                                                                   \
		static struct keel_log_ratelimit keel_log_rl_ = KEEL_LOG_RATELIMIT_INIT(       \
			interval_ms);                                                          \
		keel_log_ratelimited(&keel_log_rl_, (level), __FILE__, __LINE__, __VA_ARGS__); \
	} while (0)
#define KEEL_WARNLOG_RATELIMITED(interval_ms, ...) \
	KEEL_LOG_RATELIMITED(KEEL_LOG_WARN, interval_ms, __VA_ARGS__)

#ifdef __cplusplus
}
#endif

#endif /* KEEL_LOG_H */
