/* keeld command line parsing: every mistake names the option and what it wants. */
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "options.h"
#include "paths.h"

#ifndef KEEL_VERSION
#define KEEL_VERSION "0.0.0"
#endif

static void keeld_usage(FILE *f)
{
	char sock[108] = "?", state[PATH_MAX] = "?";

	keel_path_default_socket(sock, sizeof(sock));
	keel_path_default_state_dir(state, sizeof(state));
	fprintf(f,
		"Usage: keeld [OPTIONS]\n"
		"The keel block-storage daemon. Control it with keelctl over its RPC socket.\n"
		"\n"
		"Options:\n"
		"  --cpus LIST          CPUs to run reactors on, e.g. 0-3,6 (default: all online)\n"
		"  --mode MODE          reactor mode: adaptive (default), poll or interrupt\n"
		"  --rpc-socket PATH    unix socket for JSON-RPC (default: %s)\n"
		"  --state-dir DIR      lock file and log (default: %s)\n"
		"  --log-level LEVEL    error, warn, notice (default), info or debug\n"
		"  --rpc-max-connections N  RPC connections open at once (default %u); at\n"
		"                       the limit the one idle the longest makes room\n"
		"  --rpc-idle-timeout SEC  close an RPC connection idle this long (default\n"
		"                       %u; 0 never)\n"
		"  --rpc-max-batch N    requests in one JSON-RPC batch (default %u)\n"
		"  --rpc-max-response BYTES  bytes of one RPC response (default %u)\n"
		"  --nbd-buffer-budget MIB  payload MiB all NBD clients may hold together\n"
		"                       (default %llu); over it a client waits, it is not dropped\n"
		"  --nbd-max-connections N  NBD socket connections over all exports (default %u)\n"
		"  --nbd-max-export-connections N  NBD connections per export (default %u)\n"
		"  --nbd-handshake-timeout SEC  close an NBD client that chose no export in\n"
		"                       this time (default %u)\n"
		"  --nbd-stall-timeout SEC  close an NBD client that stops reading its replies\n"
		"                       or sending a write payload for this long (default %u)\n"
		"  --volume-backend aio|uring  what opens the replica files of volumes created\n"
		"                       without --backend (default aio); uring falls back to\n"
		"                       aio with a log line where io_uring is refused\n"
		"  --metrics-listen ADDR  serve Prometheus metrics at http://ADDR/metrics;\n"
		"                       ADDR is PORT (loopback 127.0.0.1), IP:PORT or\n"
		"                       [IPV6]:PORT. Off unless given. A non-loopback address\n"
		"                       is used only when written out here: the page has no\n"
		"                       authentication (docs/monitoring.md)\n"
		"  --foreground         stay in the foreground and log to stderr; without it\n"
		"                       keeld detaches once the socket is ready and logs to\n"
		"                       STATE_DIR/keeld.log\n"
		"  -h, --help           show this help\n"
		"  -V, --version        show the version\n"
		"\n"
		"SIGTERM or SIGINT stop keeld gracefully (exports stop, bdevs drain, the socket\n"
		"is removed). The environment variable KEEL_RPC_SOCKET overrides the default\n"
		"socket for keeld and keelctl.\n",
		sock, state, KEEL_RPC_DEFAULT_MAX_CONNECTIONS,
		KEEL_RPC_DEFAULT_IDLE_TIMEOUT_MS / 1000, KEEL_RPC_DEFAULT_MAX_BATCH,
		KEEL_RPC_DEFAULT_MAX_RESPONSE,
		(unsigned long long)(KEEL_NBD_DEFAULT_BUFFER_BUDGET >> 20),
		KEEL_NBD_DEFAULT_MAX_CONNECTIONS, KEEL_NBD_DEFAULT_MAX_EXPORT_CONNECTIONS,
		KEEL_NBD_DEFAULT_HANDSHAKE_TIMEOUT_MS / 1000,
		KEEL_NBD_DEFAULT_STALL_TIMEOUT_MS / 1000);
}

static int keeld_copy_path(char *dst, size_t len, const char *src, const char *opt, FILE *err)
{
	if (src[0] == '\0') {
		fprintf(err, "keeld: %s: the path is empty\n", opt);
		return -EINVAL;
	}
	if (strlen(src) >= len) {
		fprintf(err, "keeld: %s: path longer than %zu bytes: %s\n", opt, len - 1, src);
		return -ENAMETOOLONG;
	}
	memcpy(dst, src, strlen(src) + 1);
	return 0;
}

/* A whole number from \p min to \p max; a mistake names the option and the range. */
static int keeld_parse_u32(const char *text, uint32_t min, uint32_t max, uint32_t *out,
			   const char *opt, FILE *err)
{
	unsigned long long v;
	char *end;

	errno = 0;
	v = strtoull(text, &end, 10);
	if (text[0] < '0' || text[0] > '9' || *end != '\0' || errno != 0 || v < min || v > max) {
		fprintf(err, "keeld: %s '%s': expected a whole number from %u to %u\n", opt, text,
			min, max);
		return -EINVAL;
	}
	*out = (uint32_t)v;
	return 0;
}

int keeld_opts_parse(int argc, char **argv, struct keeld_opts *opts, FILE *out, FILE *err)
{
	enum {
		OPT_CPUS = 256,
		OPT_MODE,
		OPT_SOCKET,
		OPT_STATE,
		OPT_LOG,
		OPT_FG,
		OPT_RPC_CONNS,
		OPT_RPC_IDLE,
		OPT_RPC_BATCH,
		OPT_RPC_RESPONSE,
		OPT_NBD_BUDGET,
		OPT_NBD_CONNS,
		OPT_NBD_EXPORT_CONNS,
		OPT_NBD_HANDSHAKE,
		OPT_NBD_STALL,
		OPT_VOLUME_BACKEND,
		OPT_METRICS_LISTEN,
	};
	static const struct option longopts[] = {
		{"cpus", required_argument, NULL, OPT_CPUS},
		{"mode", required_argument, NULL, OPT_MODE},
		{"rpc-socket", required_argument, NULL, OPT_SOCKET},
		{"state-dir", required_argument, NULL, OPT_STATE},
		{"log-level", required_argument, NULL, OPT_LOG},
		{"foreground", no_argument, NULL, OPT_FG},
		{"rpc-max-connections", required_argument, NULL, OPT_RPC_CONNS},
		{"rpc-idle-timeout", required_argument, NULL, OPT_RPC_IDLE},
		{"rpc-max-batch", required_argument, NULL, OPT_RPC_BATCH},
		{"rpc-max-response", required_argument, NULL, OPT_RPC_RESPONSE},
		{"nbd-buffer-budget", required_argument, NULL, OPT_NBD_BUDGET},
		{"nbd-max-connections", required_argument, NULL, OPT_NBD_CONNS},
		{"nbd-max-export-connections", required_argument, NULL, OPT_NBD_EXPORT_CONNS},
		{"nbd-handshake-timeout", required_argument, NULL, OPT_NBD_HANDSHAKE},
		{"nbd-stall-timeout", required_argument, NULL, OPT_NBD_STALL},
		{"volume-backend", required_argument, NULL, OPT_VOLUME_BACKEND},
		{"metrics-listen", required_argument, NULL, OPT_METRICS_LISTEN},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{NULL, 0, NULL, 0},
	};
	uint32_t cpus[1024], idle_s, v;
	char why[128];
	int c, rc;

	memset(opts, 0, sizeof(*opts));
	opts->mode = KEEL_REACTOR_MODE_ADAPTIVE;
	opts->log_level = KEEL_LOG_NOTICE;
	opts->volume_backend = KEELD_BACKEND_AIO; /* why: docs/volumes.md */
	keel_rpc_server_opts_init(&opts->rpc);
	keel_nbd_options_init(&opts->nbd);
	rc = keel_path_default_socket(opts->rpc_socket, sizeof(opts->rpc_socket));
	if (rc == 0) {
		rc = keel_path_default_state_dir(opts->state_dir, sizeof(opts->state_dir));
	}
	if (rc != 0) {
		opts->rpc_socket[0] = opts->state_dir[0] = '\0';
	}

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":hV", longopts, NULL)) != -1) {
		switch (c) {
		case OPT_CPUS:
			rc = keel_cpulist_parse(optarg, cpus, 1024);
			if (rc < 0) {
				fprintf(err, "keeld: --cpus '%s': %s\n", optarg,
					rc == -E2BIG ? "too many CPUs"
						     : "not a list of online CPUs such as 0-3,6");
				return -EINVAL;
			}
			opts->cpus = optarg;
			break;
		case OPT_MODE:
			if (keel_reactor_mode_parse(optarg, &opts->mode) != 0) {
				fprintf(err,
					"keeld: --mode '%s': use adaptive, poll or interrupt\n",
					optarg);
				return -EINVAL;
			}
			break;
		case OPT_SOCKET:
			rc = keeld_copy_path(opts->rpc_socket, sizeof(opts->rpc_socket), optarg,
					     "--rpc-socket", err);
			if (rc != 0) {
				return rc;
			}
			break;
		case OPT_STATE:
			rc = keeld_copy_path(opts->state_dir, sizeof(opts->state_dir), optarg,
					     "--state-dir", err);
			if (rc != 0) {
				return rc;
			}
			break;
		case OPT_LOG:
			if (keel_log_level_parse(optarg, &opts->log_level) != 0) {
				fprintf(err,
					"keeld: --log-level '%s': use error, warn, notice, info "
					"or debug\n",
					optarg);
				return -EINVAL;
			}
			break;
		case OPT_FG:
			opts->foreground = true;
			break;
		case OPT_RPC_CONNS:
			if (keeld_parse_u32(optarg, 1, 65536, &opts->rpc.max_connections,
					    "--rpc-max-connections", err) != 0) {
				return -EINVAL;
			}
			break;
		case OPT_RPC_IDLE:
			if (keeld_parse_u32(optarg, 0, 86400, &idle_s, "--rpc-idle-timeout", err) !=
			    0) {
				return -EINVAL;
			}
			opts->rpc.idle_timeout_ms = idle_s * 1000u;
			break;
		case OPT_RPC_BATCH:
			if (keeld_parse_u32(optarg, 1, 65536, &opts->rpc.max_batch,
					    "--rpc-max-batch", err) != 0) {
				return -EINVAL;
			}
			break;
		case OPT_RPC_RESPONSE:
			if (keeld_parse_u32(optarg, 1024, 1u << 30, &opts->rpc.max_response,
					    "--rpc-max-response", err) != 0) {
				return -EINVAL;
			}
			break;
		case OPT_NBD_BUDGET:
			if (keeld_parse_u32(optarg, KEEL_NBD_MIN_BUFFER_BUDGET >> 20,
					    KEEL_NBD_MAX_BUFFER_BUDGET >> 20, &v,
					    "--nbd-buffer-budget", err) != 0) {
				return -EINVAL;
			}
			opts->nbd.buffer_budget = (uint64_t)v << 20;
			break;
		case OPT_NBD_CONNS:
			if (keeld_parse_u32(optarg, 1, KEEL_NBD_MAX_CONNECTIONS_LIMIT,
					    &opts->nbd.max_connections, "--nbd-max-connections",
					    err) != 0) {
				return -EINVAL;
			}
			break;
		case OPT_NBD_EXPORT_CONNS:
			if (keeld_parse_u32(optarg, 1, KEEL_NBD_MAX_CONNECTIONS_LIMIT,
					    &opts->nbd.max_export_connections,
					    "--nbd-max-export-connections", err) != 0) {
				return -EINVAL;
			}
			break;
		case OPT_NBD_HANDSHAKE:
		case OPT_NBD_STALL:
			if (keeld_parse_u32(optarg, 1, KEEL_NBD_MAX_TIMEOUT_MS / 1000, &v,
					    c == OPT_NBD_STALL ? "--nbd-stall-timeout"
							       : "--nbd-handshake-timeout",
					    err) != 0) {
				return -EINVAL;
			}
			if (c == OPT_NBD_STALL) {
				opts->nbd.stall_timeout_ms = v * 1000u;
			} else {
				opts->nbd.handshake_timeout_ms = v * 1000u;
			}
			break;
		case OPT_VOLUME_BACKEND:
			if (!keeld_backend_parse(optarg, &opts->volume_backend, why, sizeof(why))) {
				fprintf(err, "keeld: --volume-backend: %s\n", why);
				return -EINVAL;
			}
			break;
		case OPT_METRICS_LISTEN: {
			struct sockaddr_storage addr;
			socklen_t alen;

			if (keeld_metrics_addr_parse(optarg, &addr, &alen, why, sizeof(why)) != 0) {
				fprintf(err, "keeld: --metrics-listen '%s': %s\n", optarg, why);
				return -EINVAL;
			}
			snprintf(opts->metrics_listen, sizeof(opts->metrics_listen), "%s", optarg);
			break;
		}
		case 'h':
			keeld_usage(out);
			return 1;
		case 'V':
			fprintf(out, "keeld %s\n", KEEL_VERSION);
			return 1;
		case ':':
			fprintf(err, "keeld: option '%s' needs a value (see keeld --help)\n",
				argv[optind - 1]);
			return -EINVAL;
		default:
			fprintf(err, "keeld: unknown option '%s' (see keeld --help)\n",
				argv[optind - 1]);
			return -EINVAL;
		}
	}
	if (optind < argc) {
		fprintf(err, "keeld: unexpected argument '%s' (see keeld --help)\n", argv[optind]);
		return -EINVAL;
	}
	if (opts->rpc_socket[0] == '\0' || opts->state_dir[0] == '\0') {
		fprintf(err, "keeld: cannot work out the default socket or state directory: "
			     "give --rpc-socket and --state-dir\n");
		return -EINVAL;
	}
	return 0;
}
