#include "fuzz_common.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "keel/log.h"

void fuzz_quiet_logs(void)
{
	static bool done;

	if (!done) {
		keel_log_set_level(KEEL_LOG_ERROR);
		done = true;
	}
}

char *fuzz_strndup(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);

	if (s != NULL) {
		memcpy(s, data, size);
		s[size] = '\0';
	}
	return s;
}
