/*
 * A volume as JSON, as volume_get and volume_list return it (see docs/rpc.md): name,
 * uuid, state, size, replicas with their nexus state, exports, rebuilds, bitmap.
 * Shared by daemon/rpc_volume.c; part of the volume manager (daemon/volume_json.c).
 *
 * Threading: main keel thread.
 */
#ifndef KEEL_DAEMON_VOLUME_JSON_H
#define KEEL_DAEMON_VOLUME_JSON_H

#include <jansson.h>

struct keeld_volume;

/** \return a new object describing \p vol, or NULL on out of memory. */
json_t *keeld_volume_to_json(struct keeld_volume *vol);

#endif /* KEEL_DAEMON_VOLUME_JSON_H */
