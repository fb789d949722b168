/*
 * keelctl's transport to keeld. Errors end the program: keelctl runs one command, so
 * there is nothing to recover, and the daemon's own message is the most useful thing
 * to print.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "keelctl_args.h"
#include "keelctl_transport.h"

#define KEELCTL_MAX_RESPONSE (64u << 20)
/* JSON-RPC "method not found" */
#define KEELCTL_RPC_METHOD_NOT_FOUND -32601

static char g_socket[sizeof(((struct sockaddr_un *)NULL)->sun_path)];
static int g_timeout_s = 60;

void keelctl_transport_configure(const char *socket, int timeout_s)
{
	if (strlen(socket) >= sizeof(g_socket)) {
		keelctl_die(KEELCTL_EXIT_USAGE, "socket path too long: %s", socket);
	}
	snprintf(g_socket, sizeof(g_socket), "%s", socket);
	g_timeout_s = timeout_s;
}

static int keelctl_connect(void)
{
	struct sockaddr_un addr;
	int fd;

	memset(&addr, 0, sizeof(addr));
	addr.sun_family = AF_UNIX;
	memcpy(addr.sun_path, g_socket, strlen(g_socket) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		keelctl_die(KEELCTL_EXIT_FAIL, "socket: %s", strerror(errno));
	}
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
		keelctl_die(KEELCTL_EXIT_FAIL,
			    "cannot connect to keeld at %s (%s): is keeld "
			    "running? start it with keeld, or point -s at its --rpc-socket",
			    g_socket, strerror(errno));
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
			keelctl_die(KEELCTL_EXIT_FAIL, "sending to keeld at %s failed: %s",
				    g_socket, strerror(errno));
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
			keelctl_die(KEELCTL_EXIT_FAIL, "keeld at %s did not answer within %d s",
				    g_socket, g_timeout_s);
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
				keelctl_die(KEELCTL_EXIT_FAIL,
					    "response from keeld is larger than "
					    "%u bytes",
					    KEELCTL_MAX_RESPONSE);
			}
			buf = realloc(buf, cap);
			if (buf == NULL) {
				keelctl_die(KEELCTL_EXIT_FAIL, "out of memory");
			}
		}
		n = recv(fd, buf + len, cap - len, 0);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n < 0) {
			keelctl_die(KEELCTL_EXIT_FAIL, "reading from keeld failed: %s",
				    strerror(errno));
		}
		if (n == 0) {
			keelctl_die(KEELCTL_EXIT_FAIL, "keeld closed the connection without "
						       "answering (did it exit? see its log)");
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

/* An error reply of \p method becomes keelctl's message and exit status 1. */
static void keelctl_die_rpc_error(const char *method, json_t *resp, json_t *error)
{
	const char *msg = json_string_value(json_object_get(error, "message"));
	json_int_t code = json_integer_value(json_object_get(error, "code"));
	char text[4096];

	/* Copied so the response is freed before exit (sanitizer builds report leaks). */
	snprintf(text, sizeof(text), "%s", msg != NULL ? msg : "");
	json_decref(resp);
	if (code == KEELCTL_RPC_METHOD_NOT_FOUND && strncmp(method, "nbd_", 4) == 0) {
		keelctl_die(KEELCTL_EXIT_FAIL, "%s (this keeld was built without NBD support)",
			    text[0] != '\0' ? text : "method not found");
	}
	keelctl_die(KEELCTL_EXIT_FAIL, "%s", text[0] != '\0' ? text : "keeld returned an error");
}

json_t *keelctl_call(const char *method, json_t *params)
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
		keelctl_die(KEELCTL_EXIT_FAIL, "out of memory");
	}
	fd = keelctl_connect();
	(void)keelctl_send_all(fd, text, strlen(text));
	free(text);
	/* Even when the send failed: a refused connection carries keeld's reason. */
	resp = keelctl_read_response(fd);
	close(fd);

	error = json_object_get(resp, "error");
	if (error != NULL) {
		keelctl_die_rpc_error(method, resp, error);
	}
	result = json_object_get(resp, "result");
	if (result == NULL) {
		keelctl_die(KEELCTL_EXIT_FAIL, "malformed response from keeld (no result)");
	}
	json_incref(result);
	json_decref(resp);
	return result;
}
