/*
 * Replica targets given as NBD URIs (nbd://, nbds://, nbd+unix://, nbds+unix://): the
 * probe of replica_probe.h done through the export. See docs/remote-replicas.md.
 *
 * Threading: both functions BLOCK (they connect to the server and read from it): call
 * them from a keel_spawn_blocking() job. Errors: 0 or a negative errno, and \p err gets
 * one line naming the URI.
 */
#ifndef KEEL_DAEMON_REPLICA_REMOTE_H
#define KEEL_DAEMON_REPLICA_REMOTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct keeld_replica_probe;

/**
 * Connect to \p uri and look at what the export holds (size, a keel label, data), as
 * keeld_replica_probe does for a file. The identity fields of \p out stay zero.
 * \return 0, or the connect/read error.
 */
int keeld_replica_probe_uri(const char *uri, struct keeld_replica_probe *out, char *err,
			    size_t errlen);

/**
 * May the export at \p uri hold a replica of \p need bytes of volume \p volume_uuid
 * (NULL: a new volume)? The rules of keeld_replica_probe_check, plus the size.
 * \return 0, -EEXIST (data or another volume's label, without \p force), -ENOSPC (too
 * small), or the probe's error.
 */
int keeld_replica_check_uri(const char *uri, uint64_t need, const char *volume_uuid, bool force,
			    char *err, size_t errlen);

#endif /* KEEL_DAEMON_REPLICA_REMOTE_H */
