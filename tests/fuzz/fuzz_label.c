/*
 * Fuzz the nexus label decoder: any bytes as one label copy, and (when the input is
 * long enough) as the two copies a replica holds. A label that decodes must survive
 * encode -> decode -> encode unchanged: what keel writes back is what it read.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "nexus_label.h"

static void label_roundtrip(const struct nexus_label *label)
{
	static uint8_t a[NEXUS_LABEL_SIZE], b[NEXUS_LABEL_SIZE];
	struct nexus_label again;

	nexus_label_encode(label, a);
	if (nexus_label_decode(a, sizeof(a), &again, NULL, 0) != 0) {
		abort(); /* keel cannot read a label it wrote */
	}
	nexus_label_encode(&again, b);
	if (memcmp(a, b, sizeof(a)) != 0) {
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nexus_label label;
	struct nexus_label_copies info;
	char why[96];

	fuzz_quiet_logs();
	if (nexus_label_decode(data, size, &label, why, sizeof(why)) == 0) {
		label_roundtrip(&label);
	}
	if (size >= 2 * NEXUS_LABEL_SIZE &&
	    nexus_label_read_copies(data, data + NEXUS_LABEL_SIZE, NEXUS_LABEL_SIZE, &label, why,
				    sizeof(why), &info) == 0) {
		label_roundtrip(&label);
	}
	return 0;
}
