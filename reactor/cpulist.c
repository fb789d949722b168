/*
 * CPU list parsing ("0-3,6"), checked against the online CPUs.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "reactor_internal.h"

#define CPULIST_MAX_CPU 4096

/* Parse into a bitmap; no online check. \return 0 or -EINVAL. */
static int cpulist_to_bitmap(const char *list, uint8_t *bits)
{
	const char *p = list;

	if (list == NULL || *list == '\0') {
		return -EINVAL;
	}
	while (*p != '\0') {
		unsigned long lo, hi;
		char *end;

		while (isspace((unsigned char)*p)) {
			p++;
		}
		if (!isdigit((unsigned char)*p)) {
			return -EINVAL;
		}
		lo = strtoul(p, &end, 10);
		hi = lo;
		p = end;
		if (*p == '-') {
			p++;
			if (!isdigit((unsigned char)*p)) {
				return -EINVAL;
			}
			hi = strtoul(p, &end, 10);
			p = end;
		}
		while (isspace((unsigned char)*p)) {
			p++;
		}
		if (lo > hi || hi >= CPULIST_MAX_CPU) {
			return -EINVAL;
		}
		for (unsigned long c = lo; c <= hi; c++) {
			bits[c / 8] |= (uint8_t)(1u << (c % 8));
		}
		if (*p == ',') {
			p++;
			if (*p == '\0') {
				return -EINVAL;
			}
		} else if (*p != '\0' && *p != '\n') {
			return -EINVAL;
		} else if (*p == '\n') {
			p++;
		}
	}
	return 0;
}

static void cpulist_online_bitmap(uint8_t *bits)
{
	char buf[1024];
	FILE *f = fopen("/sys/devices/system/cpu/online", "re");
	long n;

	if (f != NULL) {
		if (fgets(buf, sizeof(buf), f) != NULL) {
			buf[strcspn(buf, "\n")] = '\0';
			if (cpulist_to_bitmap(buf, bits) == 0) {
				fclose(f);
				return;
			}
		}
		fclose(f);
	}
	/* No sysfs (containers): trust sysconf. */
	memset(bits, 0, CPULIST_MAX_CPU / 8);
	n = sysconf(_SC_NPROCESSORS_ONLN);
	for (long c = 0; c < n && c < CPULIST_MAX_CPU; c++) {
		bits[c / 8] |= (uint8_t)(1u << (c % 8));
	}
}

int keel_cpulist_parse(const char *list, uint32_t *cpus, uint32_t max)
{
	uint8_t want[CPULIST_MAX_CPU / 8] = {0};
	uint8_t online[CPULIST_MAX_CPU / 8] = {0};
	uint32_t n = 0;
	int rc;

	rc = cpulist_to_bitmap(list, want);
	if (rc != 0) {
		return rc;
	}
	cpulist_online_bitmap(online);
	for (uint32_t c = 0; c < CPULIST_MAX_CPU; c++) {
		if (!(want[c / 8] & (1u << (c % 8)))) {
			continue;
		}
		if (!(online[c / 8] & (1u << (c % 8)))) {
			return -EINVAL;
		}
		if (n == max) {
			return -E2BIG;
		}
		cpus[n++] = c;
	}
	return n > 0 ? (int)n : -EINVAL;
}

int krt_cpulist_online(uint32_t *cpus, uint32_t max)
{
	uint8_t online[CPULIST_MAX_CPU / 8] = {0};
	uint32_t n = 0;

	cpulist_online_bitmap(online);
	for (uint32_t c = 0; c < CPULIST_MAX_CPU && n < max; c++) {
		if (online[c / 8] & (1u << (c % 8))) {
			cpus[n++] = c;
		}
	}
	return n > 0 ? (int)n : -ENODEV;
}
