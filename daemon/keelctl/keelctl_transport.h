/*
 * keelctl's connection to keeld: one unix-socket connection per call, one JSON-RPC
 * request, the reply read until a newline ends a complete JSON value. A blocking,
 * single-threaded client: nothing here is thread-safe.
 */
#ifndef KEEL_KEELCTL_TRANSPORT_H
#define KEEL_KEELCTL_TRANSPORT_H

#include <jansson.h>

/**
 * Where keeld listens and how long to wait for an answer. Called once, before the
 * first keelctl_call. \p socket is copied; a path too long for a unix socket exits
 * with a usage error.
 */
void keelctl_transport_configure(const char *socket, int timeout_s);

/**
 * Call \p method with \p params (stolen; NULL for none). Exits with status 1 and keeld's
 * message when keeld answers with an error, cannot be reached, does not answer in
 * time or answers with something that is not a JSON-RPC response.
 * \return the result, a new reference owned by the caller.
 */
json_t *keelctl_call(const char *method, json_t *params);

#endif /* KEEL_KEELCTL_TRANSPORT_H */
