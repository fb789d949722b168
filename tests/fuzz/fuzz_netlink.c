/*
 * Fuzz the decoder of the kernel's netlink replies to NBD STATUS (the device list
 * keeld reads at start and when it checks a device): any bytes as a received
 * datagram of netlink messages.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "nbd_netlink.h"

static void count_device(uint32_t index, bool connected, void *ctx)
{
	(void)index;
	(void)connected;
	(*(int *)ctx)++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* A receive buffer is aligned; an exact-size heap copy keeps that and lets ASan
	 * see any read past the datagram. */
	uint8_t *buf = malloc(size > 0 ? size : 1);
	int seen = 0, rc;

	fuzz_quiet_logs();
	if (buf == NULL) {
		return 0;
	}
	memcpy(buf, data, size);
	rc = nbd_netlink_status_decode(buf, size, count_device, &seen);
	if (rc >= 0 && rc != seen) {
		abort(); /* the count returned is the devices reported */
	}
	free(buf);
	return 0;
}
