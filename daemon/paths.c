/*
 * Default paths of keeld and keelctl. keelctl compiles this file directly so that the
 * client and the daemon can never disagree on where the socket is.
 */
#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "paths.h"

static int keel_path_fmt(char *buf, size_t len, const char *a, const char *b)
{
	int n = snprintf(buf, len, "%s%s", a, b);

	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

int keel_path_default_socket(char *buf, size_t len)
{
	const char *env = getenv("KEEL_RPC_SOCKET");
	char tmp[64];

	if (env != NULL && env[0] != '\0') {
		return keel_path_fmt(buf, len, env, "");
	}
	if (geteuid() == 0) {
		return keel_path_fmt(buf, len, "/run/keel/keeld.sock", "");
	}
	env = getenv("XDG_RUNTIME_DIR");
	if (env != NULL && env[0] == '/') {
		return keel_path_fmt(buf, len, env, "/keel/keeld.sock");
	}
	snprintf(tmp, sizeof(tmp), "/tmp/keel-%u", (unsigned)geteuid());
	return keel_path_fmt(buf, len, tmp, "/keeld.sock");
}

int keel_path_default_state_dir(char *buf, size_t len)
{
	const char *env;
	struct passwd *pw;

	if (geteuid() == 0) {
		return keel_path_fmt(buf, len, "/var/lib/keel", "");
	}
	env = getenv("XDG_STATE_HOME");
	if (env != NULL && env[0] == '/') {
		return keel_path_fmt(buf, len, env, "/keel");
	}
	env = getenv("HOME");
	if (env == NULL || env[0] != '/') {
		pw = getpwuid(geteuid());
		env = pw != NULL ? pw->pw_dir : NULL;
	}
	if (env == NULL) {
		return -ENOENT;
	}
	return keel_path_fmt(buf, len, env, "/.local/state/keel");
}

int keel_path_mkdir_p(const char *dir, mode_t mode)
{
	char path[4096];
	struct stat st;
	size_t i, len = strlen(dir);

	if (len == 0 || len >= sizeof(path)) {
		return len == 0 ? -EINVAL : -ENAMETOOLONG;
	}
	memcpy(path, dir, len + 1);
	for (i = 1; i <= len; i++) {
		if (path[i] != '/' && path[i] != '\0') {
			continue;
		}
		path[i] = '\0';
		if (mkdir(path, mode) != 0 && errno != EEXIST) {
			return -errno;
		}
		path[i] = i == len ? '\0' : '/';
	}
	if (stat(dir, &st) != 0) {
		return -errno;
	}
	return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

int keel_path_mkdir_parent(const char *path, mode_t mode)
{
	char dir[4096];
	char *slash;

	if (strlen(path) >= sizeof(dir)) {
		return -ENAMETOOLONG;
	}
	memcpy(dir, path, strlen(path) + 1);
	slash = strrchr(dir, '/');
	if (slash == NULL || slash == dir) {
		return 0; /* relative name in the working directory, or under / */
	}
	*slash = '\0';
	return keel_path_mkdir_p(dir, mode);
}

int keel_path_state_file(const char *state_dir, enum keel_state_file file, char *buf, size_t len)
{
	static const char *const names[] = {
		[KEEL_STATE_FILE_STATE] = "/state.json",
		[KEEL_STATE_FILE_REBUILD_HISTORY] = "/rebuild-history.json",
		[KEEL_STATE_FILE_NBD_DISKS] = "/nbd-disks.json",
		[KEEL_STATE_FILE_LOCK] = "/keeld.lock",
		[KEEL_STATE_FILE_LOG] = "/keeld.log",
		[KEEL_STATE_FILE_UBLK_DISKS] = "/ublk-disks.json",
	};

	if ((size_t)file >= sizeof(names) / sizeof(names[0])) {
		return -EINVAL;
	}
	return keel_path_fmt(buf, len, state_dir, names[file]);
}
