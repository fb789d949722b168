/*
 * keelctl: command-line client of keeld. A plain blocking program: one connection,
 * one request, one response read until a newline-terminated complete JSON value.
 *
 * Exit status: 0 success, 1 the daemon refused or could not be reached (its message
 * is printed), 2 a usage mistake.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "keelctl_rebuild.h"
#include "paths.h"

#ifndef KEEL_VERSION
#define KEEL_VERSION "0.0.0"
#endif

#define KEELCTL_EXIT_FAIL 1
#define KEELCTL_EXIT_USAGE 2
#define KEELCTL_MAX_RESPONSE (64u << 20)

static char g_socket[108];
static bool g_json;
static int g_timeout_s = 60;

static void die(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));

static void die(int status, const char *fmt, ...)
{
	va_list ap;

	fputs("keelctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(status);
}

/* ------------------------------------------------------------------------------ */
/* Help                                                                            */
/* ------------------------------------------------------------------------------ */

static const char g_help_top[] =
	"Usage: keelctl [-s SOCKET] [--json] [--timeout SEC] NOUN VERB [ARGS...]\n"
	"Control a running keeld.\n"
	"\n"
	"Commands:\n"
	"  bdev create aio NAME FILE [--block-size N]     AIO bdev on a file or block device\n"
	"  bdev create uring NAME FILE [--block-size N]   io_uring bdev on a file or block device\n"
	"  bdev create malloc NAME SIZE [--block-size N]  RAM disk (SIZE like 64M, 1G)\n"
	"  bdev create null NAME SIZE [--block-size N]    null disk (writes vanish, reads zeroes)\n"
	"  bdev delete NAME                               delete any bdev\n"
	"  bdev list                                      list bdevs\n"
	"  volume create NAME --size SIZE --replica PATH [--replica PATH ...] [--force]\n"
	"                                                 replicated volume over replica files\n"
	"  volume destroy NAME [--wipe]                   stop a volume (its files stay)\n"
	"  volume list                                    list volumes\n"
	"  volume show NAME                               state, replicas and exports of a volume\n"
	"  replica add|remove|fault VOLUME PATH           change a volume's replicas\n"
	"  rebuild status [VOLUME] [--watch]              rebuild progress, rate and ETA\n"
	"  rebuild start|stop|pause|resume VOLUME REPLICA steer a rebuild\n"
	"  rebuild history VOLUME                         past rebuilds of a volume\n"
	"  export start BDEV --socket PATH [--name NAME] [--tcp HOST:PORT] [--read-only]\n"
	"  export start BDEV --nbd [/dev/nbdN] [--read-only]  serve BDEV as a kernel device\n"
	"  export stop NAME|/dev/nbdN                     stop an NBD export or kernel device\n"
	"  export list                                    list NBD exports and kernel devices\n"
	"  reactor stats [--interval MS]                  reactors, wake-ups and keel threads\n"
	"  reactor mode MODE [--reactor N]                adaptive, poll or interrupt\n"
	"  rpc METHOD [JSON-PARAMS]                       send any JSON-RPC method\n"
	"\n"
	"Options:\n"
	"  -s, --socket PATH  keeld's RPC socket (default: %s)\n"
	"  --json             print the daemon's JSON result instead of tables\n"
	"  --timeout SEC      give up waiting for keeld after SEC seconds (default 60)\n"
	"  -h, --help         help; also 'keelctl NOUN --help', 'keelctl bdev create --help'\n"
	"\n"
	"'keelctl rpc rpc_get_methods' lists every method keeld knows.\n";

static const char g_help_bdev[] =
	"Usage: keelctl bdev VERB ...\n"
	"  create aio NAME FILE [--block-size N]     AIO bdev on FILE (a file or block device);\n"
	"                                            block size defaults to the device's (512 for files)\n"
	"  create uring NAME FILE [--block-size N]   the same through io_uring (needs a kernel and\n"
	"                                            container that allow io_uring)\n"
	"  create malloc NAME SIZE [--block-size N]  RAM disk of SIZE bytes (K, M, G, T suffixes)\n"
	"  create null NAME SIZE [--block-size N]    null disk of SIZE bytes\n"
	"  delete NAME                               delete a bdev (its I/O drains first)\n"
	"  list                                      table of bdevs (--json: bdev_get_bdevs)\n";

static const char g_help_bdev_create[] =
	"Usage: keelctl bdev create TYPE NAME ARG [--block-size N]\n"
	"  aio NAME FILE      FILE is an existing file or block device; its size must be a\n"
	"                     multiple of the block size\n"
	"  uring NAME FILE    the same, driven through io_uring\n"
	"  malloc NAME SIZE   RAM disk; SIZE is bytes with an optional K, M, G or T suffix\n"
	"                     (powers of 1024), e.g. 64M\n"
	"  null NAME SIZE     null disk of SIZE bytes\n"
	"  --block-size N     512 (default for malloc/null) up to 65536, a power of two\n"
	"NAME: up to 63 characters, no '/' or spaces.\n";

static const char g_help_export[] =
	"Usage: keelctl export VERB ...\n"
	"  start BDEV --socket PATH [--name NAME] [--tcp HOST:PORT] [--read-only]\n"
	"        serve BDEV (a bdev or volume) over NBD on unix socket PATH (and TCP if\n"
	"        given); the export name defaults to the bdev name\n"
	"  start BDEV --nbd [/dev/nbdN] [--read-only] [--io-timeout SEC] [--dead-timeout SEC]\n"
	"        serve BDEV to this machine's kernel as /dev/nbdN (root, nbd module loaded);\n"
	"        without a device the kernel picks a free one. --dead-timeout (default 60):\n"
	"        how long the kernel holds I/O for a restarted keeld to reattach.\n"
	"  stop NAME     stop export NAME (clients are disconnected)\n"
	"  stop /dev/nbdN  disconnect the kernel device (unmount it first)\n"
	"  list          list exports and kernel devices\n";

static const char g_help_volume[] =
	"Usage: keelctl volume VERB ...\n"
	"  create NAME --size SIZE --replica PATH [--replica PATH ...] [--force]\n"
	"        create a volume of SIZE bytes (K, M, G, T suffixes; a multiple of 4K)\n"
	"        mirrored on every replica file; missing files are created with SIZE\n"
	"        plus 1 MiB for the labels. An existing file or device must be empty\n"
	"        (zeros at both ends): --force overwrites data, a filesystem, a partition\n"
	"        table or another volume's label. One file is never two replicas.\n"
	"  destroy NAME [--wipe]   stop the volume's exports and the volume; the replica\n"
	"                          files stay (--wipe erases their labels)\n"
	"  list                    table of volumes\n"
	"  show NAME               state, size, replicas and exports of one volume\n"
	"Export a volume with: keelctl export start NAME --socket PATH\n"
	"NAME: 1 to 63 printable characters, no '/' or spaces.\n";

static const char g_help_replica[] =
	"Usage: keelctl replica VERB VOLUME PATH\n"
	"  add VOLUME PATH [--force]  add replica file PATH (created if missing); it takes\n"
	"                             writes but is not read until rebuilt in sync;\n"
	"                             --force overwrites what PATH holds (see volume --help)\n"
	"  remove VOLUME PATH         take replica PATH out of the volume (not the last\n"
	"                             healthy one); the file stays\n"
	"  fault VOLUME PATH          mark replica PATH faulted: no more I/O to it\n";

static const char g_help_reactor[] =
	"Usage: keelctl reactor VERB ...\n"
	"  stats [--interval MS]     per reactor: busy, idle and asleep time, wake-ups and\n"
	"                            loops per second over MS milliseconds (default 1000;\n"
	"                            0: one sample, averages since start), the pollers\n"
	"                            that woke it most (total counts); then keel threads\n"
	"  mode MODE [--reactor N]   switch all reactors (or reactor N) to adaptive, poll\n"
	"                            or interrupt mode at run time\n";

static const char g_help_rpc[] =
	"Usage: keelctl rpc METHOD [JSON-PARAMS]\n"
	"Send one JSON-RPC request and print the result as JSON, e.g.\n"
	"  keelctl rpc bdev_get_bdevs '{\"name\": \"m0\"}'\n"
	"  keelctl rpc rpc_get_methods '{\"include_help\": true}'\n";

static bool is_help(const char *arg)
{
	return arg != NULL && (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0 ||
			       strcmp(arg, "help") == 0);
}

static void usage(const char *text, bool error)
{
	fputs(text, error ? stderr : stdout);
	exit(error ? KEELCTL_EXIT_USAGE : 0);
}

/* ------------------------------------------------------------------------------ */
/* Transport                                                                       */
/* ------------------------------------------------------------------------------ */

static int keelctl_connect(void)
{
	struct sockaddr_un addr;
	int fd;

	if (strlen(g_socket) >= sizeof(addr.sun_path)) {
		die(KEELCTL_EXIT_USAGE, "socket path too long: %s", g_socket);
	}
	memset(&addr, 0, sizeof(addr));
	addr.sun_family = AF_UNIX;
	memcpy(addr.sun_path, g_socket, strlen(g_socket) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		die(KEELCTL_EXIT_FAIL, "socket: %s", strerror(errno));
	}
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
		die(KEELCTL_EXIT_FAIL, "cannot connect to keeld at %s (%s): is keeld running? "
		    "start it with keeld, or point -s at its --rpc-socket", g_socket,
		    strerror(errno));
	}
	return fd;
}

/*
 * \return 0, or -EPIPE / -ECONNRESET when keeld closed the connection first: then it
 * may have said why (connection limit), and the caller reads that like an answer.
 */
static int keelctl_send_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) {
			return -errno;
		}
		if (n < 0) {
			die(KEELCTL_EXIT_FAIL, "sending to keeld at %s failed: %s", g_socket,
			    strerror(errno));
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Read until a newline ends a complete JSON value. */
static json_t *keelctl_read_response(int fd)
{
	char *buf = NULL;
	size_t len = 0, cap = 0;
	time_t deadline = time(NULL) + g_timeout_s;

	for (;;) {
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		int left = (int)(deadline - time(NULL));
		ssize_t n;
		int rc;

		if (left <= 0) {
			die(KEELCTL_EXIT_FAIL, "keeld at %s did not answer within %d s", g_socket,
			    g_timeout_s);
		}
		rc = poll(&pfd, 1, left * 1000);
		if (rc < 0 && errno == EINTR) {
			continue;
		}
		if (rc == 0) {
			continue;
		}
		if (len + 65536 > cap) {
			cap = cap == 0 ? 131072 : cap * 2;
			if (cap > KEELCTL_MAX_RESPONSE) {
				die(KEELCTL_EXIT_FAIL, "response from keeld is larger than %u bytes",
				    KEELCTL_MAX_RESPONSE);
			}
			buf = realloc(buf, cap);
			if (buf == NULL) {
				die(KEELCTL_EXIT_FAIL, "out of memory");
			}
		}
		n = recv(fd, buf + len, cap - len, 0);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n < 0) {
			die(KEELCTL_EXIT_FAIL, "reading from keeld failed: %s", strerror(errno));
		}
		if (n == 0) {
			die(KEELCTL_EXIT_FAIL, "keeld closed the connection without answering "
			    "(did it exit? see its log)");
		}
		len += (size_t)n;
		if (buf[len - 1] == '\n') {
			json_error_t err;
			json_t *resp = json_loadb(buf, len, 0, &err);

			if (resp != NULL) {
				free(buf);
				return resp;
			}
		}
	}
}

/*
 * Call \p method with \p params (stolen, may be NULL). On an error reply print the
 * daemon's message and exit 1. \return the result (owned by the caller).
 */
static json_t *keelctl_call(const char *method, json_t *params)
{
	json_t *req, *resp, *result, *error;
	char *text;
	int fd;

	req = json_pack("{s:s,s:i,s:s}", "jsonrpc", "2.0", "id", 1, "method", method);
	if (params != NULL) {
		json_object_set_new(req, "params", params);
	}
	text = json_dumps(req, JSON_COMPACT);
	json_decref(req);
	if (text == NULL) {
		die(KEELCTL_EXIT_FAIL, "out of memory");
	}
	fd = keelctl_connect();
	(void)keelctl_send_all(fd, text, strlen(text));
	free(text);
	/* Even when the send failed: a refused connection carries keeld's reason. */
	resp = keelctl_read_response(fd);
	close(fd);

	error = json_object_get(resp, "error");
	if (error != NULL) {
		const char *msg = json_string_value(json_object_get(error, "message"));
		json_int_t code = json_integer_value(json_object_get(error, "code"));
		char text_msg[4096];

		/* Copied so the response is freed before exit (sanitizer builds report leaks). */
		snprintf(text_msg, sizeof(text_msg), "%s", msg != NULL ? msg : "");
		json_decref(resp);
		if (code == -32601 && strncmp(method, "nbd_", 4) == 0) {
			die(KEELCTL_EXIT_FAIL, "%s (this keeld was built without NBD support)",
			    text_msg[0] != '\0' ? text_msg : "method not found");
		}
		die(KEELCTL_EXIT_FAIL, "%s", text_msg[0] != '\0' ? text_msg : "keeld returned an error");
	}
	result = json_object_get(resp, "result");
	if (result == NULL) {
		die(KEELCTL_EXIT_FAIL, "malformed response from keeld (no result)");
	}
	json_incref(result);
	json_decref(resp);
	return result;
}

static void print_json(json_t *value)
{
	char *text = json_dumps(value, JSON_INDENT(2) | JSON_ENCODE_ANY);

	if (text != NULL) {
		puts(text);
		free(text);
	}
}

/* ------------------------------------------------------------------------------ */
/* Argument helpers                                                                */
/* ------------------------------------------------------------------------------ */

struct keelctl_args {
	const char *pos[8];
	int npos;
	const char *block_size;
	const char *socket;
	const char *name;
	const char *tcp;
	const char *reactor;
	const char *interval;
	const char *size;
	const char *io_timeout;
	const char *dead_timeout;
	const char *nbd_device;
	bool nbd;
	const char *replicas[16];
	int nreplicas;
	bool read_only;
	bool force;
	bool wipe;
};

/* Split \p argv into positionals and the options this command accepts. */
static void keelctl_parse(int argc, char **argv, const char *accepted, struct keelctl_args *a,
			  const char *help)
{
	int i;

	memset(a, 0, sizeof(*a));
	for (i = 0; i < argc; i++) {
		const char *arg = argv[i];
		const char **slot = NULL;

		if (is_help(arg)) {
			usage(help, false);
		}
		if (strncmp(arg, "--", 2) != 0 || strcmp(arg, "--") == 0) {
			if (a->npos == (int)(sizeof(a->pos) / sizeof(a->pos[0]))) {
				die(KEELCTL_EXIT_USAGE, "too many arguments");
			}
			a->pos[a->npos++] = arg;
			continue;
		}
		if (strstr(accepted, arg) == NULL) {
			fprintf(stderr, "keelctl: unknown option '%s'\n", arg);
			usage(help, true);
		}
		if (strcmp(arg, "--read-only") == 0) {
			a->read_only = true;
			continue;
		}
		if (strcmp(arg, "--force") == 0) {
			a->force = true;
			continue;
		}
		if (strcmp(arg, "--wipe") == 0) {
			a->wipe = true;
			continue;
		}
		if (strcmp(arg, "--nbd") == 0) {
			/* The device is optional: take the next word only if it names one. */
			a->nbd = true;
			if (i + 1 < argc && (strncmp(argv[i + 1], "/dev/", 5) == 0 ||
					     strncmp(argv[i + 1], "nbd", 3) == 0)) {
				a->nbd_device = argv[++i];
			}
			continue;
		}
		if (strcmp(arg, "--replica") == 0) {
			if (i + 1 >= argc) {
				die(KEELCTL_EXIT_USAGE, "option %s needs a value", arg);
			}
			if (a->nreplicas == (int)(sizeof(a->replicas) / sizeof(a->replicas[0]))) {
				die(KEELCTL_EXIT_USAGE, "at most 16 --replica options");
			}
			a->replicas[a->nreplicas++] = argv[++i];
			continue;
		}
		if (strcmp(arg, "--block-size") == 0) {
			slot = &a->block_size;
		} else if (strcmp(arg, "--socket") == 0) {
			slot = &a->socket;
		} else if (strcmp(arg, "--name") == 0) {
			slot = &a->name;
		} else if (strcmp(arg, "--tcp") == 0) {
			slot = &a->tcp;
		} else if (strcmp(arg, "--reactor") == 0) {
			slot = &a->reactor;
		} else if (strcmp(arg, "--interval") == 0) {
			slot = &a->interval;
		} else if (strcmp(arg, "--size") == 0) {
			slot = &a->size;
		} else if (strcmp(arg, "--io-timeout") == 0) {
			slot = &a->io_timeout;
		} else if (strcmp(arg, "--dead-timeout") == 0) {
			slot = &a->dead_timeout;
		} else {
			die(KEELCTL_EXIT_USAGE, "unknown option '%s'", arg);
		}
		if (i + 1 >= argc) {
			die(KEELCTL_EXIT_USAGE, "option %s needs a value", arg);
		}
		*slot = argv[++i];
	}
}

static void keelctl_need_pos(const struct keelctl_args *a, int n, const char *help)
{
	if (a->npos < n) {
		fprintf(stderr, "keelctl: missing arguments\n");
		usage(help, true);
	}
	if (a->npos > n) {
		fprintf(stderr, "keelctl: unexpected argument '%s'\n", a->pos[n]);
		usage(help, true);
	}
}

/* "64M" -> 67108864. Suffixes K, M, G, T (powers of 1024), optional B or iB. */
static int keelctl_parse_size(const char *text, uint64_t *out)
{
	unsigned long long v;
	char *end;
	unsigned shift = 0;

	if (text[0] < '0' || text[0] > '9') {
		return -EINVAL;
	}
	errno = 0;
	v = strtoull(text, &end, 10);
	if (errno != 0) {
		return -EINVAL;
	}
	switch (*end) {
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	case 't': case 'T': shift = 40; end++; break;
	default: break;
	}
	if (shift != 0 && (strcmp(end, "iB") == 0 || strcmp(end, "B") == 0)) {
		end += strlen(end);
	} else if (shift == 0 && strcmp(end, "B") == 0) {
		end++;
	}
	if (*end != '\0' || v == 0 || (shift != 0 && v > (UINT64_MAX >> shift))) {
		return -EINVAL;
	}
	*out = (uint64_t)v << shift;
	return 0;
}

static uint32_t keelctl_parse_u32(const char *text, const char *what)
{
	unsigned long v;
	char *end;

	errno = 0;
	v = strtoul(text, &end, 10);
	if (text[0] < '0' || text[0] > '9' || *end != '\0' || errno != 0 || v > UINT32_MAX) {
		die(KEELCTL_EXIT_USAGE, "%s '%s' is not a number", what, text);
	}
	return (uint32_t)v;
}

static void human_size(uint64_t bytes, char *buf, size_t len)
{
	static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
	double v = (double)bytes;
	int u = 0;

	while (v >= 1024 && u < 5) {
		v /= 1024;
		u++;
	}
	if (u == 0 || v == (double)(uint64_t)v) {
		snprintf(buf, len, "%.0f %s", v, units[u]);
	} else {
		snprintf(buf, len, "%.1f %s", v, units[u]);
	}
}

/* ------------------------------------------------------------------------------ */
/* Tables                                                                          */
/* ------------------------------------------------------------------------------ */

#define TABLE_MAX_COLS 10

struct table {
	int ncols;
	int nrows;
	char **cells; /* nrows * ncols, row 0 is the header */
};

static void table_row(struct table *t, ...)
{
	va_list ap;
	int c;

	t->cells = realloc(t->cells, sizeof(char *) * (size_t)(t->nrows + 1) * (size_t)t->ncols);
	if (t->cells == NULL) {
		die(KEELCTL_EXIT_FAIL, "out of memory");
	}
	va_start(ap, t);
	for (c = 0; c < t->ncols; c++) {
		const char *s = va_arg(ap, const char *);

		t->cells[t->nrows * t->ncols + c] = strdup(s != NULL ? s : "-");
	}
	va_end(ap);
	t->nrows++;
}

static void table_free(struct table *t)
{
	int i;

	for (i = 0; i < t->nrows * t->ncols; i++) {
		free(t->cells[i]);
	}
	free(t->cells);
	t->cells = NULL;
	t->nrows = 0;
}

static void table_print(struct table *t)
{
	int width[TABLE_MAX_COLS] = {0};
	int r, c;

	for (r = 0; r < t->nrows; r++) {
		for (c = 0; c < t->ncols; c++) {
			int w = (int)strlen(t->cells[r * t->ncols + c]);

			width[c] = w > width[c] ? w : width[c];
		}
	}
	for (r = 0; r < t->nrows; r++) {
		for (c = 0; c < t->ncols; c++) {
			const char *s = t->cells[r * t->ncols + c];

			if (c == t->ncols - 1) {
				printf("%s\n", s);
			} else {
				printf("%-*s  ", width[c], s);
			}
			free(t->cells[r * t->ncols + c]);
		}
	}
	free(t->cells);
	t->cells = NULL;
	t->nrows = 0;
}

static const char *fmt_u64(char *buf, size_t len, json_t *v)
{
	snprintf(buf, len, "%lld", (long long)json_integer_value(v));
	return buf;
}

/* ------------------------------------------------------------------------------ */
/* bdev                                                                            */
/* ------------------------------------------------------------------------------ */

static void cmd_bdev_create(int argc, char **argv)
{
	struct keelctl_args a;
	uint32_t block_size = 0;
	uint64_t size;
	json_t *params, *result;
	const char *type;

	if (argc == 0 || is_help(argv[0])) {
		usage(g_help_bdev_create, argc == 0);
	}
	type = argv[0];
	keelctl_parse(argc - 1, argv + 1, "--block-size", &a, g_help_bdev_create);
	keelctl_need_pos(&a, 2, g_help_bdev_create);
	if (a.block_size != NULL) {
		block_size = keelctl_parse_u32(a.block_size, "--block-size");
	}

	if (strcmp(type, "aio") == 0 || strcmp(type, "uring") == 0) {
		char abs[PATH_MAX], cwd[PATH_MAX], method[32];
		const char *file = a.pos[1];

		/* keeld runs in / : send an absolute path. */
		if (file[0] != '/') {
			if (realpath(file, abs) == NULL) {
				if (getcwd(cwd, sizeof(cwd)) == NULL ||
				    (size_t)snprintf(abs, sizeof(abs), "%s/%s", cwd, file) >=
					    sizeof(abs)) {
					die(KEELCTL_EXIT_USAGE, "path too long: %s", file);
				}
			}
			file = abs;
		}
		params = json_pack("{s:s,s:s}", "name", a.pos[0], "filename", file);
		if (block_size != 0) {
			json_object_set_new(params, "block_size", json_integer(block_size));
		}
		snprintf(method, sizeof(method), "bdev_%s_create", type);
		result = keelctl_call(method, params);
	} else if (strcmp(type, "malloc") == 0 || strcmp(type, "null") == 0) {
		char method[32];

		if (keelctl_parse_size(a.pos[1], &size) != 0) {
			die(KEELCTL_EXIT_USAGE, "bad size '%s': use a number of bytes with an "
			    "optional K, M, G or T suffix, e.g. 64M", a.pos[1]);
		}
		if (block_size == 0) {
			block_size = 512;
		}
		if (block_size < 512 || block_size > 65536 || (block_size & (block_size - 1)) != 0) {
			die(KEELCTL_EXIT_USAGE, "--block-size %u: block_size must be a power of two "
			    "from 512 to 65536", block_size);
		}
		if (size % block_size != 0) {
			die(KEELCTL_EXIT_USAGE, "size %s is not a multiple of the block size %u",
			    a.pos[1], block_size);
		}
		snprintf(method, sizeof(method), "bdev_%s_create", type);
		params = json_pack("{s:s,s:I,s:i}", "name", a.pos[0], "num_blocks",
				   (json_int_t)(size / block_size), "block_size", (int)block_size);
		result = keelctl_call(method, params);
	} else {
		fprintf(stderr, "keelctl: unknown bdev type '%s'\n", type);
		usage(g_help_bdev_create, true);
	}
	if (g_json) {
		print_json(result);
	} else {
		printf("created %s bdev %s\n", type, json_string_value(result) != NULL ?
		       json_string_value(result) : a.pos[0]);
	}
	json_decref(result);
}

static void cmd_bdev_list(int argc, char **argv)
{
	struct table t = {.ncols = 7};
	struct keelctl_args a;
	json_t *result, *b;
	size_t i;

	keelctl_parse(argc, argv, "", &a, g_help_bdev);
	keelctl_need_pos(&a, 0, g_help_bdev);
	result = keelctl_call("bdev_get_bdevs", NULL);
	if (g_json) {
		print_json(result);
		json_decref(result);
		return;
	}
	table_row(&t, "NAME", "MODULE", "SIZE", "BLOCK", "BLOCKS", "CLAIMED BY", "UUID");
	json_array_foreach(result, i, b) {
		char size[32], bs[24], nb[24];
		uint64_t block = (uint64_t)json_integer_value(json_object_get(b, "block_size"));
		uint64_t blocks = (uint64_t)json_integer_value(json_object_get(b, "num_blocks"));

		human_size(block * blocks, size, sizeof(size));
		table_row(&t, json_string_value(json_object_get(b, "name")),
			  json_string_value(json_object_get(b, "module")), size,
			  fmt_u64(bs, sizeof(bs), json_object_get(b, "block_size")),
			  fmt_u64(nb, sizeof(nb), json_object_get(b, "num_blocks")),
			  json_string_value(json_object_get(b, "claim_owner")),
			  json_string_value(json_object_get(b, "uuid")));
	}
	if (json_array_size(result) == 0) {
		printf("no bdevs (create one with: keelctl bdev create malloc NAME 64M)\n");
		table_free(&t);
	} else {
		table_print(&t);
	}
	json_decref(result);
}

static void cmd_bdev(int argc, char **argv)
{
	struct keelctl_args a;
	json_t *result;

	if (argc == 0 || is_help(argv[0])) {
		usage(g_help_bdev, argc == 0);
	}
	if (strcmp(argv[0], "create") == 0) {
		cmd_bdev_create(argc - 1, argv + 1);
	} else if (strcmp(argv[0], "list") == 0 || strcmp(argv[0], "ls") == 0) {
		cmd_bdev_list(argc - 1, argv + 1);
	} else if (strcmp(argv[0], "delete") == 0 || strcmp(argv[0], "rm") == 0) {
		keelctl_parse(argc - 1, argv + 1, "", &a, g_help_bdev);
		keelctl_need_pos(&a, 1, g_help_bdev);
		result = keelctl_call("bdev_delete", json_pack("{s:s}", "name", a.pos[0]));
		if (g_json) {
			print_json(result);
		} else {
			printf("deleted bdev %s\n", a.pos[0]);
		}
		json_decref(result);
	} else {
		fprintf(stderr, "keelctl: unknown bdev command '%s'\n", argv[0]);
		usage(g_help_bdev, true);
	}
}

/* ------------------------------------------------------------------------------ */
/* export (methods implemented by daemon/rpc_nbd.c)                                */
/* ------------------------------------------------------------------------------ */

static const char *str_or_dash(json_t *v);

static void cmd_export(int argc, char **argv)
{
	struct keelctl_args a;
	json_t *params, *result, *e, *disks;
	size_t i;

	if (argc == 0 || is_help(argv[0])) {
		usage(g_help_export, argc == 0);
	}
	if (strcmp(argv[0], "start") == 0) {
		keelctl_parse(argc - 1, argv + 1, "--socket --name --tcp --read-only --nbd "
			      "--io-timeout --dead-timeout", &a, g_help_export);
		keelctl_need_pos(&a, 1, g_help_export);
		if (a.nbd) {
			if (a.socket != NULL || a.tcp != NULL || a.name != NULL) {
				die(KEELCTL_EXIT_USAGE, "--nbd cannot be combined with --socket, --tcp "
				    "or --name: a kernel device is named /dev/nbdN");
			}
			params = json_pack("{s:s}", "bdev_name", a.pos[0]);
			if (a.nbd_device != NULL) {
				json_object_set_new(params, "nbd_device", json_string(a.nbd_device));
			}
			if (a.io_timeout != NULL) {
				json_object_set_new(params, "io_timeout_s", json_integer(
					keelctl_parse_u32(a.io_timeout, "--io-timeout")));
			}
			if (a.dead_timeout != NULL) {
				json_object_set_new(params, "dead_conn_timeout_s", json_integer(
					keelctl_parse_u32(a.dead_timeout, "--dead-timeout")));
			}
			if (a.read_only) {
				json_object_set_new(params, "read_only", json_true());
			}
			result = keelctl_call("nbd_start_disk", params);
			if (g_json) {
				print_json(result);
			} else {
				printf("serving %s as %s\n", a.pos[0], json_is_string(result) ?
				       json_string_value(result) : "?");
			}
			json_decref(result);
			return;
		}
		if (a.io_timeout != NULL || a.dead_timeout != NULL) {
			die(KEELCTL_EXIT_USAGE, "--io-timeout and --dead-timeout are for --nbd");
		}
		if (a.socket == NULL && a.tcp == NULL) {
			die(KEELCTL_EXIT_USAGE, "export start needs --socket PATH (or --tcp "
			    "HOST:PORT, or --nbd [/dev/nbdN] for a kernel device)");
		}
		params = json_pack("{s:s}", "bdev_name", a.pos[0]);
		if (a.socket != NULL) {
			char abs[PATH_MAX], cwd[PATH_MAX];
			const char *sock = a.socket;

			if (sock[0] != '/' && getcwd(cwd, sizeof(cwd)) != NULL &&
			    (size_t)snprintf(abs, sizeof(abs), "%s/%s", cwd, sock) < sizeof(abs)) {
				sock = abs;
			}
			json_object_set_new(params, "socket", json_string(sock));
		}
		if (a.name != NULL) {
			json_object_set_new(params, "name", json_string(a.name));
		}
		if (a.tcp != NULL) {
			json_object_set_new(params, "tcp", json_string(a.tcp));
		}
		if (a.read_only) {
			json_object_set_new(params, "read_only", json_true());
		}
		result = keelctl_call("nbd_start_export", params);
		if (g_json) {
			print_json(result);
		} else {
			printf("exporting %s as %s\n", a.pos[0],
			       json_is_string(result) ? json_string_value(result)
						      : (a.name != NULL ? a.name : a.pos[0]));
		}
	} else if (strcmp(argv[0], "stop") == 0) {
		keelctl_parse(argc - 1, argv + 1, "", &a, g_help_export);
		keelctl_need_pos(&a, 1, g_help_export);
		/* Export names cannot contain '/', so a path is always a kernel device. */
		if (strncmp(a.pos[0], "/dev/", 5) == 0) {
			result = keelctl_call("nbd_stop_disk",
					      json_pack("{s:s}", "nbd_device", a.pos[0]));
		} else {
			result = keelctl_call("nbd_stop_export", json_pack("{s:s}", "name", a.pos[0]));
		}
		if (g_json) {
			print_json(result);
		} else {
			printf("stopped %s%s\n", a.pos[0][0] == '/' ? "" : "export ", a.pos[0]);
		}
	} else if (strcmp(argv[0], "list") == 0 || strcmp(argv[0], "ls") == 0) {
		struct table t = {.ncols = 6};

		keelctl_parse(argc - 1, argv + 1, "", &a, g_help_export);
		keelctl_need_pos(&a, 0, g_help_export);
		result = keelctl_call("nbd_get_exports", NULL);
		disks = keelctl_call("nbd_get_disks", NULL);
		if (g_json) {
			/* Kernel devices join the exports' array (so scripts that read exports
			 * keep working), named by their device; "nbd_device" tells them apart. */
			json_array_foreach(disks, i, e) {
				json_t *d = json_deep_copy(e);

				json_object_set(d, "name", json_object_get(e, "nbd_device"));
				json_array_append_new(result, d);
			}
			print_json(result);
			json_decref(disks);
			json_decref(result);
			return;
		}
		if (json_array_size(result) == 0 && json_array_size(disks) == 0) {
			printf("no exports\n");
			table_free(&t);
			json_decref(disks);
			json_decref(result);
			return;
		}
		table_row(&t, "NAME", "BDEV", "SOCKET", "TCP", "READ-ONLY", "CLIENTS");
		json_array_foreach(result, i, e) {
			char conns[16];

			table_row(&t, json_string_value(json_object_get(e, "name")),
				  json_string_value(json_object_get(e, "bdev_name")),
				  str_or_dash(json_object_get(e, "socket")),
				  str_or_dash(json_object_get(e, "tcp")),
				  json_is_true(json_object_get(e, "read_only")) ? "yes" : "no",
				  fmt_u64(conns, sizeof(conns), json_object_get(e, "connections")));
		}
		/* Kernel devices in the same table: the kernel is the client, with one
		 * connection per queue; SOCKET says what state the device is in. */
		json_array_foreach(disks, i, e) {
			char conns[16], where[48];

			snprintf(where, sizeof(where), "kernel (%s)",
				 str_or_dash(json_object_get(e, "state")));
			table_row(&t, str_or_dash(json_object_get(e, "nbd_device")),
				  json_string_value(json_object_get(e, "bdev_name")), where, "-",
				  json_is_true(json_object_get(e, "read_only")) ? "yes" : "no",
				  fmt_u64(conns, sizeof(conns), json_object_get(e, "connections")));
		}
		table_print(&t);
		json_decref(disks);
	} else {
		fprintf(stderr, "keelctl: unknown export command '%s'\n", argv[0]);
		usage(g_help_export, true);
	}
	json_decref(result);
}

/* ------------------------------------------------------------------------------ */
/* volume and replica (daemon/rpc_volume.c)                                        */
/* ------------------------------------------------------------------------------ */

/* keeld runs in / : replica paths are sent absolute. */
static json_t *keelctl_abs_path(const char *path)
{
	char abs[PATH_MAX], cwd[PATH_MAX];

	if (path[0] == '/') {
		return json_string(path);
	}
	if (getcwd(cwd, sizeof(cwd)) == NULL ||
	    (size_t)snprintf(abs, sizeof(abs), "%s/%s", cwd, path) >= sizeof(abs)) {
		die(KEELCTL_EXIT_USAGE, "path too long: %s", path);
	}
	return json_string(abs);
}

static const char *str_or_dash(json_t *v)
{
	const char *s = json_string_value(v);

	return s != NULL && s[0] != '\0' ? s : "-";
}

static void volume_counts(json_t *vol, int *healthy, int *total)
{
	json_t *r;
	size_t i;

	*healthy = 0;
	*total = 0;
	json_array_foreach(json_object_get(vol, "replicas"), i, r) {
		(*total)++;
		if (strcmp(str_or_dash(json_object_get(r, "state")), "healthy") == 0) {
			(*healthy)++;
		}
	}
}

/* One line per rebuild job volume_get reports (active ones, and the last ended one
 * per replica); nothing when there is none. */
static void volume_print_rebuilds(json_t *jobs)
{
	json_t *j;
	size_t i;

	if (json_array_size(jobs) == 0) {
		return;
	}
	printf("rebuild:\n");
	json_array_foreach(jobs, i, j) {
		const char *state = str_or_dash(json_object_get(j, "state"));
		double bs = json_number_value(json_object_get(j, "block_size"));
		double done = json_number_value(json_object_get(j, "blocks_done")) * bs / 1048576.0;
		double total = json_number_value(json_object_get(j, "blocks_total")) * bs / 1048576.0;
		long long eta = (long long)json_integer_value(json_object_get(j, "eta_s"));
		const char *err = str_or_dash(json_object_get(j, "error"));
		char eta_s[32];

		if (eta < 0) {
			snprintf(eta_s, sizeof(eta_s), "-");
		} else {
			snprintf(eta_s, sizeof(eta_s), "%lldm%02llds", eta / 60, eta % 60);
		}
		printf("  %s <- %s: %s%s, %lld%% (%.1f of %.1f MiB), %.1f MiB/s, eta %s%s%s\n",
		       str_or_dash(json_object_get(j, "target")),
		       str_or_dash(json_object_get(j, "source")), state,
		       json_is_true(json_object_get(j, "is_partial")) ? " (partial)" : "",
		       (long long)json_integer_value(json_object_get(j, "progress_pct")), done, total,
		       json_number_value(json_object_get(j, "rate_mib_s")), eta_s,
		       err[0] != '\0' && strcmp(err, "-") != 0 ? ": " : "",
		       err[0] != '\0' && strcmp(err, "-") != 0 ? err : "");
	}
}

static void volume_print(json_t *vol)
{
	struct table t = {.ncols = 6};
	const char *detail = str_or_dash(json_object_get(vol, "state_detail"));
	char size[32], gen[24];
	json_t *r, *e, *g;
	size_t i;

	human_size((uint64_t)json_integer_value(json_object_get(vol, "size")), size,
		   sizeof(size));
	printf("volume %s\n", str_or_dash(json_object_get(vol, "name")));
	printf("  state:       %s%s%s%s\n", str_or_dash(json_object_get(vol, "state")),
	       strcmp(detail, "-") != 0 ? " (" : "", strcmp(detail, "-") != 0 ? detail : "",
	       strcmp(detail, "-") != 0 ? ")" : "");
	printf("  size:        %s (%lld bytes)\n", size,
	       (long long)json_integer_value(json_object_get(vol, "size")));
	printf("  uuid:        %s\n", str_or_dash(json_object_get(vol, "uuid")));
	g = json_object_get(vol, "generation");
	if (json_is_integer(g)) {
		printf("  generation:  %lld%s\n", (long long)json_integer_value(g),
		       json_is_true(json_object_get(vol, "unclean_shutdown")) ?
		       " (last stop was not clean)" : "");
	}
	if (json_is_false(json_object_get(vol, "persistent"))) {
		printf("  persistent:  no (made from bdevs: forgotten when keeld stops)\n");
	}
	printf("replicas:\n");
	table_row(&t, "  PATH", "BDEV", "STATE", "REASON", "GEN", "DETAIL");
	json_array_foreach(json_object_get(vol, "replicas"), i, r) {
		char path[PATH_MAX + 4];

		snprintf(path, sizeof(path), "  %s", str_or_dash(json_object_get(r, "path")));
		g = json_object_get(r, "generation");
		if (json_is_integer(g)) {
			snprintf(gen, sizeof(gen), "%lld", (long long)json_integer_value(g));
		} else {
			snprintf(gen, sizeof(gen), "-");
		}
		table_row(&t, path, str_or_dash(json_object_get(r, "bdev")),
			  str_or_dash(json_object_get(r, "state")),
			  strcmp(str_or_dash(json_object_get(r, "reason")), "none") == 0 ? "-" :
			  str_or_dash(json_object_get(r, "reason")), gen,
			  str_or_dash(json_object_get(r, "detail")));
	}
	table_print(&t);
	volume_print_rebuilds(json_object_get(vol, "rebuilds"));
	printf("exports:\n");
	if (json_array_size(json_object_get(vol, "exports")) == 0) {
		printf("  none (export it with: keelctl export start %s --socket PATH)\n",
		       str_or_dash(json_object_get(vol, "name")));
		return;
	}
	t.ncols = 5;
	table_row(&t, "  NAME", "SOCKET", "TCP", "READ-ONLY", "CLIENTS");
	json_array_foreach(json_object_get(vol, "exports"), i, e) {
		char name[300], conns[16];

		snprintf(name, sizeof(name), "  %s", str_or_dash(json_object_get(e, "name")));
		table_row(&t, name, str_or_dash(json_object_get(e, "socket")),
			  str_or_dash(json_object_get(e, "tcp")),
			  json_is_true(json_object_get(e, "read_only")) ? "yes" : "no",
			  fmt_u64(conns, sizeof(conns), json_object_get(e, "connections")));
	}
	table_print(&t);
}

static void cmd_volume(int argc, char **argv)
{
	struct keelctl_args a;
	json_t *params, *result, *v;
	size_t i;

	if (argc == 0 || is_help(argv[0])) {
		usage(g_help_volume, argc == 0);
	}
	if (strcmp(argv[0], "create") == 0) {
		json_t *reps;
		uint64_t size;
		int r;

		keelctl_parse(argc - 1, argv + 1, "--size --replica --force", &a, g_help_volume);
		keelctl_need_pos(&a, 1, g_help_volume);
		if (a.size == NULL) {
			die(KEELCTL_EXIT_USAGE, "volume create needs --size SIZE (e.g. 1G)");
		}
		if (a.nreplicas == 0) {
			die(KEELCTL_EXIT_USAGE, "volume create needs at least one --replica PATH");
		}
		if (keelctl_parse_size(a.size, &size) != 0) {
			die(KEELCTL_EXIT_USAGE, "bad size '%s': use a number of bytes with an "
			    "optional K, M, G or T suffix, e.g. 1G", a.size);
		}
		reps = json_array();
		for (r = 0; r < a.nreplicas; r++) {
			json_array_append_new(reps, keelctl_abs_path(a.replicas[r]));
		}
		params = json_pack("{s:s,s:I,s:o}", "name", a.pos[0], "size", (json_int_t)size,
				   "replicas", reps);
		if (a.force) {
			json_object_set_new(params, "force", json_true());
		}
		result = keelctl_call("volume_create", params);
		if (g_json) {
			print_json(result);
		} else {
			printf("created volume %s\n", a.pos[0]);
		}
	} else if (strcmp(argv[0], "destroy") == 0) {
		keelctl_parse(argc - 1, argv + 1, "--wipe", &a, g_help_volume);
		keelctl_need_pos(&a, 1, g_help_volume);
		params = json_pack("{s:s}", "name", a.pos[0]);
		if (a.wipe) {
			json_object_set_new(params, "wipe", json_true());
		}
		result = keelctl_call("volume_destroy", params);
		if (g_json) {
			print_json(result);
		} else {
			printf("destroyed volume %s%s\n", a.pos[0], a.wipe ? " (labels wiped)" : "");
		}
	} else if (strcmp(argv[0], "list") == 0 || strcmp(argv[0], "ls") == 0) {
		struct table t = {.ncols = 5};

		keelctl_parse(argc - 1, argv + 1, "", &a, g_help_volume);
		keelctl_need_pos(&a, 0, g_help_volume);
		result = keelctl_call("volume_list", NULL);
		if (g_json) {
			print_json(result);
			json_decref(result);
			return;
		}
		table_row(&t, "NAME", "STATE", "SIZE", "HEALTHY/REPLICAS", "EXPORTS");
		json_array_foreach(result, i, v) {
			char size[32], reps[32], exps[16];
			int healthy, total;

			volume_counts(v, &healthy, &total);
			human_size((uint64_t)json_integer_value(json_object_get(v, "size")), size,
				   sizeof(size));
			snprintf(reps, sizeof(reps), "%d/%d", healthy, total);
			snprintf(exps, sizeof(exps), "%zu",
				 json_array_size(json_object_get(v, "exports")));
			table_row(&t, str_or_dash(json_object_get(v, "name")),
				  str_or_dash(json_object_get(v, "state")), size, reps, exps);
		}
		if (json_array_size(result) == 0) {
			printf("no volumes (create one with: keelctl volume create NAME --size 1G "
			       "--replica FILE1 --replica FILE2)\n");
			table_free(&t);
		} else {
			table_print(&t);
		}
	} else if (strcmp(argv[0], "show") == 0 || strcmp(argv[0], "get") == 0) {
		keelctl_parse(argc - 1, argv + 1, "", &a, g_help_volume);
		keelctl_need_pos(&a, 1, g_help_volume);
		result = keelctl_call("volume_get", json_pack("{s:s}", "name", a.pos[0]));
		if (g_json) {
			print_json(result);
		} else {
			volume_print(result);
		}
	} else {
		fprintf(stderr, "keelctl: unknown volume command '%s'\n", argv[0]);
		usage(g_help_volume, true);
	}
	json_decref(result);
}

static void cmd_replica(int argc, char **argv)
{
	static const struct {
		const char *verb, *method, *done;
	} verbs[] = {
		{"add", "volume_add_replica", "added"},
		{"remove", "volume_remove_replica", "removed"},
		{"rm", "volume_remove_replica", "removed"},
		{"fault", "volume_fault_replica", "faulted"},
	};
	struct keelctl_args a;
	json_t *params, *result;
	size_t i;

	if (argc == 0 || is_help(argv[0])) {
		usage(g_help_replica, argc == 0);
	}
	for (i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
		if (strcmp(argv[0], verbs[i].verb) == 0) {
			break;
		}
	}
	if (i == sizeof(verbs) / sizeof(verbs[0])) {
		fprintf(stderr, "keelctl: unknown replica command '%s'\n", argv[0]);
		usage(g_help_replica, true);
	}
	keelctl_parse(argc - 1, argv + 1, i == 0 ? "--force" : "", &a, g_help_replica);
	keelctl_need_pos(&a, 2, g_help_replica);
	params = json_pack("{s:s,s:o}", "name", a.pos[0], "replica", keelctl_abs_path(a.pos[1]));
	if (a.force) {
		json_object_set_new(params, "force", json_true());
	}
	result = keelctl_call(verbs[i].method, params);
	if (g_json) {
		print_json(result);
	} else {
		printf("%s replica %s of volume %s\n", verbs[i].done, a.pos[1], a.pos[0]);
	}
	json_decref(result);
}

/* ------------------------------------------------------------------------------ */
/* reactor                                                                         */
/* ------------------------------------------------------------------------------ */

static const char *fmt_pct(char *buf, size_t len, json_t *obj)
{
	double busy = (double)json_integer_value(json_object_get(obj, "busy"));
	double idle = (double)json_integer_value(json_object_get(obj, "idle"));

	snprintf(buf, len, "%.1f%%", busy + idle > 0 ? 100.0 * busy / (busy + idle) : 0.0);
	return buf;
}

static uint64_t keelctl_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Counter \p key of \p now minus the same counter of \p before (0 without one). */
static double reactor_delta(json_t *now, json_t *before, const char *key)
{
	json_int_t b = before != NULL ? json_integer_value(json_object_get(before, key)) : 0;

	return (double)(json_integer_value(json_object_get(now, key)) - b);
}

/*
 * Add per-second and percent figures to each reactor of \p now: over the \p elapsed_ns
 * since \p then (two samples), or since the reactor started when \p then is NULL (its
 * busy + idle time is its age). The counters keep their names; the rates are new keys.
 */
static void reactor_rates(json_t *now, json_t *then, uint64_t elapsed_ns)
{
	json_t *r;
	size_t i;

	json_array_foreach(json_object_get(now, "reactors"), i, r) {
		json_t *before = then != NULL ? json_array_get(json_object_get(then, "reactors"), i)
					      : NULL;
		double busy = reactor_delta(r, before, "busy");
		double sleep = reactor_delta(r, before, "sleep");
		double secs = then != NULL ? (double)elapsed_ns / 1e9
					   : (busy + reactor_delta(r, NULL, "idle")) / 1e9;

		if (secs <= 0) {
			secs = 1e-9;
		}
		/* A sleeping reactor publishes its idle time when it wakes: derive idle. */
		busy = busy / 1e9 / secs * 100.0;
		sleep = sleep / 1e9 / secs * 100.0;
		busy = busy > 100.0 ? 100.0 : busy;
		sleep = sleep > 100.0 - busy ? 100.0 - busy : sleep;
		json_object_set_new(r, "busy_pct", json_real(busy));
		json_object_set_new(r, "idle_pct", json_real(100.0 - busy));
		json_object_set_new(r, "sleep_pct", json_real(sleep));
		json_object_set_new(r, "wakeups_per_sec",
				    json_real(reactor_delta(r, before, "wakeups") / secs));
		json_object_set_new(r, "loops_per_sec",
				    json_real(reactor_delta(r, before, "loops") / secs));
	}
	json_object_set_new(now, "interval_ms", json_integer(then != NULL ?
							      (json_int_t)(elapsed_ns / 1000000) : 0));
}

static const char *fmt_real(char *buf, size_t len, json_t *v, const char *suffix)
{
	snprintf(buf, len, "%.1f%s", json_real_value(v), suffix);
	return buf;
}

static void cmd_reactor_stats(int argc, char **argv)
{
	struct keelctl_args a;
	struct table t = {.ncols = 9};
	json_t *reactors, *first = NULL, *threads, *r, *th, *w;
	uint32_t interval_ms = 1000;
	uint64_t start = 0;
	size_t i, j;

	keelctl_parse(argc, argv, "--interval", &a, g_help_reactor);
	keelctl_need_pos(&a, 0, g_help_reactor);
	if (a.interval != NULL) {
		interval_ms = keelctl_parse_u32(a.interval, "--interval");
		if (interval_ms > 3600 * 1000) {
			die(KEELCTL_EXIT_USAGE, "--interval %s is more than an hour: give milliseconds",
			    a.interval);
		}
	}
	if (interval_ms > 0) {
		first = keelctl_call("framework_get_reactors", NULL);
		start = keelctl_now_ns();
		usleep((useconds_t)interval_ms * 1000);
	}
	reactors = keelctl_call("framework_get_reactors", NULL);
	reactor_rates(reactors, first, keelctl_now_ns() - start);
	json_decref(first);
	threads = keelctl_call("thread_get_stats", NULL);
	if (g_json) {
		json_t *both = json_pack("{s:O,s:O}", "reactors", reactors, "threads", threads);

		print_json(both);
		json_decref(both);
		json_decref(reactors);
		json_decref(threads);
		return;
	}
	if (interval_ms > 0) {
		printf("over %u ms:\n", interval_ms);
	} else {
		printf("averages since each reactor started:\n");
	}
	table_row(&t, "REACTOR", "CPU", "MODE", "BUSY", "IDLE", "ASLEEP", "WAKE/S", "LOOPS/S",
		  "THREADS");
	json_array_foreach(json_object_get(reactors, "reactors"), i, r) {
		char idx[16], cpu[16], busy[16], idle[16], sleep[16], wake[24], loops[24], nthr[16];

		snprintf(nthr, sizeof(nthr), "%zu",
			 json_array_size(json_object_get(r, "lw_threads")));
		table_row(&t, fmt_u64(idx, sizeof(idx), json_object_get(r, "reactor")),
			  fmt_u64(cpu, sizeof(cpu), json_object_get(r, "lcore")),
			  json_string_value(json_object_get(r, "mode")),
			  fmt_real(busy, sizeof(busy), json_object_get(r, "busy_pct"), "%"),
			  fmt_real(idle, sizeof(idle), json_object_get(r, "idle_pct"), "%"),
			  fmt_real(sleep, sizeof(sleep), json_object_get(r, "sleep_pct"), "%"),
			  fmt_real(wake, sizeof(wake), json_object_get(r, "wakeups_per_sec"), ""),
			  fmt_real(loops, sizeof(loops), json_object_get(r, "loops_per_sec"), ""),
			  nthr);
	}
	table_print(&t);
	printf("\n");
	t.ncols = 4;
	table_row(&t, "REACTOR", "WOKEN BY", "THREAD", "WAKE-UPS");
	json_array_foreach(json_object_get(reactors, "reactors"), i, r) {
		json_array_foreach(json_object_get(r, "wakers"), j, w) {
			char idx[16], count[24], name[96];
			json_t *thr = json_object_get(w, "thread");
			json_int_t inst = json_integer_value(json_object_get(w, "instances"));

			/* Many pollers of one name (a timer per volume) are one row. */
			if (inst > 1) {
				snprintf(name, sizeof(name), "%s (x%lld)",
					 json_string_value(json_object_get(w, "name")), (long long)inst);
			} else {
				snprintf(name, sizeof(name), "%s",
					 json_string_value(json_object_get(w, "name")));
			}
			table_row(&t, fmt_u64(idx, sizeof(idx), json_object_get(r, "reactor")), name,
				  json_is_string(thr) ? json_string_value(thr) : "-",
				  fmt_u64(count, sizeof(count), json_object_get(w, "wakeups")));
		}
	}
	table_print(&t);
	printf("\n");
	t.ncols = 7;
	table_row(&t, "THREAD", "ID", "REACTOR", "BUSY", "ACTIVE", "TIMED", "PAUSED");
	json_array_foreach(json_object_get(threads, "threads"), i, th) {
		char id[24], re[16], pct[16], ac[16], ti[16], pa[16];

		table_row(&t, json_string_value(json_object_get(th, "name")),
			  fmt_u64(id, sizeof(id), json_object_get(th, "id")),
			  fmt_u64(re, sizeof(re), json_object_get(th, "reactor")),
			  fmt_pct(pct, sizeof(pct), th),
			  fmt_u64(ac, sizeof(ac), json_object_get(th, "active_pollers_count")),
			  fmt_u64(ti, sizeof(ti), json_object_get(th, "timed_pollers_count")),
			  fmt_u64(pa, sizeof(pa), json_object_get(th, "paused_pollers_count")));
	}
	table_print(&t);
	json_decref(reactors);
	json_decref(threads);
}

static void cmd_reactor(int argc, char **argv)
{
	struct keelctl_args a;
	json_t *params, *result;

	if (argc == 0 || is_help(argv[0])) {
		usage(g_help_reactor, argc == 0);
	}
	if (strcmp(argv[0], "stats") == 0) {
		cmd_reactor_stats(argc - 1, argv + 1);
	} else if (strcmp(argv[0], "mode") == 0) {
		keelctl_parse(argc - 1, argv + 1, "--reactor", &a, g_help_reactor);
		keelctl_need_pos(&a, 1, g_help_reactor);
		params = json_pack("{s:s}", "mode", a.pos[0]);
		if (a.reactor != NULL) {
			json_object_set_new(params, "reactor",
					    json_integer(keelctl_parse_u32(a.reactor, "--reactor")));
		}
		result = keelctl_call("framework_set_reactor_mode", params);
		if (g_json) {
			print_json(result);
		} else {
			printf("reactor %s now in %s mode\n", a.reactor != NULL ? a.reactor : "(all)",
			       a.pos[0]);
		}
		json_decref(result);
	} else {
		fprintf(stderr, "keelctl: unknown reactor command '%s'\n", argv[0]);
		usage(g_help_reactor, true);
	}
}

/* ------------------------------------------------------------------------------ */

static void cmd_rpc(int argc, char **argv)
{
	json_t *params = NULL, *result;
	json_error_t err;

	if (argc == 0 || is_help(argv[0])) {
		usage(g_help_rpc, argc == 0);
	}
	if (argc > 2) {
		fprintf(stderr, "keelctl: rpc takes METHOD and at most one JSON argument (quote "
			"it)\n");
		usage(g_help_rpc, true);
	}
	if (argc == 2) {
		params = json_loads(argv[1], JSON_DECODE_ANY, &err);
		if (params == NULL) {
			die(KEELCTL_EXIT_USAGE, "params are not valid JSON: %s (at character %d)",
			    err.text, err.position);
		}
	}
	result = keelctl_call(argv[0], params);
	print_json(result);
	json_decref(result);
}

int main(int argc, char **argv)
{
	int i;

	if (keel_path_default_socket(g_socket, sizeof(g_socket)) != 0) {
		g_socket[0] = '\0';
	}
	for (i = 1; i < argc; i++) {
		const char *arg = argv[i];

		if (strcmp(arg, "-s") == 0 || strcmp(arg, "--socket") == 0) {
			if (i + 1 >= argc) {
				die(KEELCTL_EXIT_USAGE, "%s needs a socket path", arg);
			}
			if (strlen(argv[i + 1]) >= sizeof(g_socket)) {
				die(KEELCTL_EXIT_USAGE, "socket path too long: %s", argv[i + 1]);
			}
			snprintf(g_socket, sizeof(g_socket), "%s", argv[++i]);
		} else if (strcmp(arg, "--json") == 0) {
			g_json = true;
		} else if (strcmp(arg, "--timeout") == 0) {
			if (i + 1 >= argc) {
				die(KEELCTL_EXIT_USAGE, "--timeout needs seconds");
			}
			g_timeout_s = (int)keelctl_parse_u32(argv[++i], "--timeout");
			if (g_timeout_s == 0 || g_timeout_s > 86400) {
				die(KEELCTL_EXIT_USAGE, "--timeout must be 1 to 86400 seconds");
			}
		} else if (is_help(arg)) {
			printf(g_help_top, g_socket);
			return 0;
		} else if (strcmp(arg, "--version") == 0) {
			printf("keelctl %s\n", KEEL_VERSION);
			return 0;
		} else if (arg[0] == '-') {
			fprintf(stderr, "keelctl: unknown option '%s'\n", arg);
			fprintf(stderr, g_help_top, g_socket);
			return KEELCTL_EXIT_USAGE;
		} else {
			break;
		}
	}
	if (i >= argc) {
		fprintf(stderr, g_help_top, g_socket);
		return KEELCTL_EXIT_USAGE;
	}
	if (g_socket[0] == '\0') {
		die(KEELCTL_EXIT_USAGE, "no default socket could be worked out: give -s PATH");
	}
	if (strcmp(argv[i], "bdev") == 0) {
		cmd_bdev(argc - i - 1, argv + i + 1);
	} else if (strcmp(argv[i], "export") == 0) {
		cmd_export(argc - i - 1, argv + i + 1);
	} else if (strcmp(argv[i], "volume") == 0) {
		cmd_volume(argc - i - 1, argv + i + 1);
	} else if (strcmp(argv[i], "replica") == 0) {
		cmd_replica(argc - i - 1, argv + i + 1);
	} else if (strcmp(argv[i], "reactor") == 0) {
		cmd_reactor(argc - i - 1, argv + i + 1);
	} else if (strcmp(argv[i], "rpc") == 0) {
		cmd_rpc(argc - i - 1, argv + i + 1);
	} else if (strcmp(argv[i], "rebuild") == 0) {
		struct keelctl_rebuild_ctx rctx = {.call = keelctl_call, .json = g_json};

		return keelctl_rebuild_main(&rctx, argc - i - 1, argv + i + 1);
	} else {
		fprintf(stderr, "keelctl: unknown command '%s'\n\n", argv[i]);
		fprintf(stderr, g_help_top, g_socket);
		return KEELCTL_EXIT_USAGE;
	}
	return 0;
}
