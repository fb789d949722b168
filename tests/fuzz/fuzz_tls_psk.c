/*
 * Fuzz the psktool key file an NBD export's TLS reads (an operator's file, so any
 * bytes): loaded through an in-memory file exactly as export start loads it. The only
 * outcomes allowed are credentials or one of the documented errors with a message.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "nbd_tls.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nbd_tls_creds *creds = NULL;
	char path[64];
	char err[256];
	int fd, rc;

	fuzz_quiet_logs();
	fd = memfd_create("fuzz_psk", 0);
	if (fd < 0) {
		return 0;
	}
	if (size > 0 && write(fd, data, size) != (ssize_t)size) {
		close(fd);
		return 0;
	}
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	err[0] = '\0';
	rc = nbd_tls_creds_load(path, NULL, &creds, err, sizeof(err));
	if (rc == 0) {
		if (creds == NULL) {
			abort();
		}
		nbd_tls_creds_free(creds);
	} else if ((rc != -EKEYREJECTED && rc != -ENOMEM && rc != -EINVAL) || err[0] == '\0') {
		abort();
	}
	close(fd);
	return 0;
}
