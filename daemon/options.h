/* keeld command line. */
#ifndef KEEL_DAEMON_OPTIONS_H
#define KEEL_DAEMON_OPTIONS_H

#include <limits.h>
#include <stdbool.h>
#include <stdio.h>

#include "keel/log.h"
#include "keel/nbd.h"
#include "keel/reactor.h"
#include "keel/rpc.h"
#include "metrics.h"
#include "volume_manager.h"

struct keeld_opts {
	const char *cpus; /* NULL: every online CPU */
	enum keel_reactor_mode mode;
	char rpc_socket[108]; /* sun_path */
	char state_dir[PATH_MAX];
	enum keel_log_level log_level;
	bool foreground;
	struct keel_rpc_server_opts rpc;   /* --rpc-max-connections, --rpc-idle-timeout, ... */
	struct keel_nbd_options nbd;       /* --nbd-buffer-budget, --nbd-max-connections, ... */
	enum keeld_backend volume_backend; /* --volume-backend: of volumes created without one */
	char metrics_listen[KEELD_METRICS_ADDR_MAX + 1]; /* --metrics-listen; "": off */
};

/**
 * Parse argv into \p opts (defaults filled first). Messages go to \p out (help,
 * version) and \p err (mistakes).
 * \return 0 to run, 1 when --help/--version was printed (exit 0), -EINVAL after a
 * usage error was printed (exit 2), -ENAMETOOLONG for an over-long path.
 */
int keeld_opts_parse(int argc, char **argv, struct keeld_opts *opts, FILE *out, FILE *err);

#endif /* KEEL_DAEMON_OPTIONS_H */
