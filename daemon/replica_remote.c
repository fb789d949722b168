/*
 * Replica targets that are NBD exports (a URI instead of a path): what one holds, read
 * through the export itself, so the same rules as for files decide whether keeld may
 * put its label there (replica_probe.h). A URI target is never created or removed by
 * keeld: the export exists on its server, or the operation fails.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/bdev_nbd_client.h"
#include "replica_probe.h"
#include "replica_remote.h"

int keeld_replica_probe_uri(const char *uri, struct keeld_replica_probe *out, char *err,
			    size_t errlen)
{
	uint8_t *buf = malloc(KEELD_REPLICA_PROBE_SPAN);
	size_t got = 0;
	int rc;

	memset(out, 0, sizeof(*out));
	if (buf == NULL) {
		snprintf(err, errlen, "out of memory probing replica %s", uri);
		return -ENOMEM;
	}
	rc = keel_bdev_nbd_client_read_head(uri, 0, buf, KEELD_REPLICA_PROBE_SPAN, &got, &out->size,
					    err, errlen);
	if (rc != 0) {
		goto out_free;
	}
	rc = keel_nexus_label_inspect(buf, got, &out->label);
	if (rc == 0) {
		out->content = KEELD_REPLICA_LABELLED;
	} else if (rc != -ENODATA) {
		out->content = KEELD_REPLICA_DAMAGED;
		snprintf(out->what, sizeof(out->what), "%s", out->label.why);
	} else {
		out->content = KEELD_REPLICA_EMPTY;
		/* A wiped former replica keeps keel's bitmap there: not user data. */
		for (size_t i = 0; i < got && !out->label.wiped; i++) {
			if (buf[i] != 0) {
				out->content = KEELD_REPLICA_DATA;
				snprintf(out->what, sizeof(out->what),
					 "data (a non-zero byte at offset %zu)", i);
				break;
			}
		}
	}
	rc = 0;
out_free:
	free(buf);
	return rc;
}

int keeld_replica_check_uri(const char *uri, uint64_t need, const char *volume_uuid, bool force,
			    char *err, size_t errlen)
{
	struct keeld_replica_probe probe;
	int rc = keeld_replica_probe_uri(uri, &probe, err, errlen);

	if (rc == 0) {
		rc = keeld_replica_probe_check(&probe, uri, volume_uuid, force, err, errlen);
	}
	if (rc == 0 && probe.size < need) {
		snprintf(err, errlen,
			 "replica export %s has %llu bytes, the volume needs %llu (its size "
			 "plus %u bytes of labels): grow the export on its server",
			 uri, (unsigned long long)probe.size, (unsigned long long)need,
			 KEEL_NEXUS_DATA_OFFSET);
		rc = -ENOSPC;
	}
	return rc;
}
