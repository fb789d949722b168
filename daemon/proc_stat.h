/*
 * CPU times of the machine's cores from /proc/stat, for SPDK's framework_get_reactors
 * fields usr, sys and irq (per core, in the kernel's USER_HZ clock ticks).
 */
#ifndef KEEL_DAEMON_PROC_STAT_H
#define KEEL_DAEMON_PROC_STAT_H

#include <stdint.h>

struct proc_cpu_times {
	uint64_t usr; /**< user mode */
	uint64_t sys; /**< kernel mode */
	uint64_t irq; /**< serving hardware interrupts */
};

/**
 * Read /proc/stat into \p buf (NUL-terminated, truncated at \p size - 1 bytes).
 * Blocks (open and read): call it on the blocking-work pool, never on a reactor.
 * \return 0 or a negative errno.
 */
int keeld_proc_stat_read(char *buf, size_t size);

/**
 * Find core \p cpu's line ("cpuN user nice system idle iowait irq ...") in \p text
 * (as keeld_proc_stat_read() returns it) and fill \p out. Pure: any thread.
 * \return 0, or -ENOENT when the text has no such line.
 */
int keeld_proc_stat_cpu_times(const char *text, uint32_t cpu, struct proc_cpu_times *out);

#endif /* KEEL_DAEMON_PROC_STAT_H */
