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

void keel_log(enum keel_log_level level, const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
void keel_vlog(enum keel_log_level level, const char *file, int line, const char *fmt, va_list ap);

#define KEEL_ERRLOG(...) keel_log(KEEL_LOG_ERROR, __FILE__, __LINE__, __VA_ARGS__)
#define KEEL_WARNLOG(...) keel_log(KEEL_LOG_WARN, __FILE__, __LINE__, __VA_ARGS__)
#define KEEL_NOTICELOG(...) keel_log(KEEL_LOG_NOTICE, __FILE__, __LINE__, __VA_ARGS__)
#define KEEL_INFOLOG(...) keel_log(KEEL_LOG_INFO, __FILE__, __LINE__, __VA_ARGS__)
#define KEEL_DEBUGLOG(...)                                                                 \
	do {                                                                               \
		if (keel_log_get_level() >= KEEL_LOG_DEBUG)                                \
			keel_log(KEEL_LOG_DEBUG, __FILE__, __LINE__, __VA_ARGS__);         \
	} while (0)

#ifdef __cplusplus
}
#endif

#endif /* KEEL_LOG_H */
