/* `keelctl rebuild ...` (daemon/keelctl_rebuild.c), dispatched from keelctl.c. */
#ifndef KEEL_DAEMON_KEELCTL_REBUILD_H
#define KEEL_DAEMON_KEELCTL_REBUILD_H

#include <stdbool.h>

#include <jansson.h>

struct keelctl_rebuild_ctx {
	/** Call \p method; returns the result (new reference) or exits with the error. */
	json_t *(*call)(const char *method, json_t *params);
	bool json;   /**< --json given globally */
};

/** \p argv[0] is the verb. \return the process exit status. */
int keelctl_rebuild_main(const struct keelctl_rebuild_ctx *ctx, int argc, char **argv);

#endif /* KEEL_DAEMON_KEELCTL_REBUILD_H */
