/*
 * Volumes counted by state, for a one-line summary (keeld's STATUS= for systemd).
 * An assembled volume's health is the nexus's; the others are the manager's own.
 */
#include "keel/nexus.h"
#include "volume_internal.h"

#include <string.h>

void keeld_volumes_summarize(struct keeld_volumes_summary *out)
{
	struct keeld_volume *v;

	memset(out, 0, sizeof(*out));
	for (v = keeld_volume_first(); v != NULL; v = keeld_volume_next(v)) {
		struct keel_nexus *nx;

		out->volumes++;
		if (v->status == VOL_UNASSEMBLED) {
			out->unassembled++;
			continue;
		}
		nx = v->status == VOL_READY ? keel_nexus_get_by_name(v->name) : NULL;
		if (nx == NULL) {
			out->other++;
			continue;
		}
		switch (keel_nexus_get_state(nx)) {
		case KEEL_NEXUS_ONLINE:
			out->online++;
			break;
		case KEEL_NEXUS_DEGRADED:
			out->degraded++;
			break;
		default:
			out->faulted++;
			break;
		}
	}
}
