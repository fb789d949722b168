/*
 * /proc/stat reading and parsing (proc_stat.h). Reading is separate from parsing so
 * that the file is read on the blocking pool and parsed on the thread that answers.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "proc_stat.h"

int keeld_proc_stat_read(char *buf, size_t size)
{
	size_t len = 0;
	ssize_t n;
	int fd, rc = 0;

	if (size == 0) {
		return -EINVAL;
	}
	fd = open("/proc/stat", O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		return -errno;
	}
	while (len < size - 1) {
		n = read(fd, buf + len, size - 1 - len);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n < 0) {
			rc = -errno;
			break;
		}
		if (n == 0) {
			break;
		}
		len += (size_t)n;
	}
	buf[len] = '\0';
	close(fd);
	return rc;
}

int keeld_proc_stat_cpu_times(const char *text, uint32_t cpu, struct proc_cpu_times *out)
{
	uint64_t user, nice, system, idle, iowait, irq;
	char prefix[24];
	const char *line = text;
	size_t plen;

	plen = (size_t)snprintf(prefix, sizeof(prefix), "cpu%" PRIu32 " ", cpu);
	while (line != NULL && *line != '\0') {
		if (strncmp(line, prefix, plen) == 0 &&
		    sscanf(line + plen,
			   "%" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64,
			   &user, &nice, &system, &idle, &iowait, &irq) == 6) {
			out->usr = user;
			out->sys = system;
			out->irq = irq;
			return 0;
		}
		line = strchr(line, '\n');
		if (line != NULL) {
			line++;
		}
	}
	return -ENOENT;
}
