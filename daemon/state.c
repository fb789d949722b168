/*
 * keeld's state file. Forgetting a volume is worse than not starting, so a file that
 * cannot be read or does not match the format stops keeld with a message naming the
 * file and the field; nothing here guesses or repairs.
 *
 * Writing is the store's (daemon/store.c), with the content the volume manager builds.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/bdev_nbd_client.h"
#include "keel/log.h"
#include "keel/nexus.h"
#include "state.h"
#include "store.h"
#include "volume_manager.h"

/* ------------------------------------------------------------------------------ */
/* Format check                                                                    */
/* ------------------------------------------------------------------------------ */

static bool state_opt_string(json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);

	return v == NULL || json_is_null(v) || json_is_string(v);
}

/* An optional "backend" of \p obj (a volume or a replica): absent, or a known name.
 * \p where names the object for the message. */
static bool state_check_backend(json_t *obj, const char *where, char *err, size_t errlen)
{
	json_t *b = json_object_get(obj, "backend");
	enum keeld_backend kind;
	char why[128];

	if (b == NULL) {
		return true;
	}
	if (!json_is_string(b)) {
		snprintf(err, errlen, "%s.backend: expected a string (aio or uring)", where);
		return false;
	}
	if (!keeld_backend_parse(json_string_value(b), &kind, why, sizeof(why))) {
		snprintf(err, errlen,
			 "%s.backend: %s (written by a newer keel, or edited by hand: this "
			 "keeld cannot open such a replica)",
			 where, why);
		return false;
	}
	return true;
}

static bool state_check_volume(json_t *vol, size_t i, json_t *seen_names, json_t *seen_paths,
			       char *err, size_t errlen)
{
	json_t *name = json_object_get(vol, "name");
	json_t *size = json_object_get(vol, "size");
	json_t *replicas = json_object_get(vol, "replicas");
	json_t *rep;
	char why[128], where[64];
	size_t j;

	if (!json_is_object(vol)) {
		snprintf(err, errlen, "volumes[%zu]: expected an object", i);
		return false;
	}
	if (!json_is_string(name)) {
		snprintf(err, errlen, "volumes[%zu].name: expected a string", i);
		return false;
	}
	if (!keeld_volume_name_valid(json_string_value(name), why, sizeof(why))) {
		snprintf(err, errlen, "volumes[%zu].name: %s", i, why);
		return false;
	}
	if (json_object_get(seen_names, json_string_value(name)) != NULL) {
		snprintf(err, errlen, "volumes[%zu].name: volume '%s' is listed twice", i,
			 json_string_value(name));
		return false;
	}
	json_object_set_new(seen_names, json_string_value(name), json_true());
	if (!json_is_integer(size) || json_integer_value(size) <= 0) {
		snprintf(err, errlen, "volumes[%zu].size: expected an integer > 0", i);
		return false;
	}
	if (!state_opt_string(vol, "uuid")) {
		snprintf(err, errlen, "volumes[%zu].uuid: expected a string", i);
		return false;
	}
	snprintf(where, sizeof(where), "volumes[%zu]", i);
	if (!state_check_backend(vol, where, err, errlen)) {
		return false;
	}
	if (!json_is_array(replicas) || json_array_size(replicas) == 0 ||
	    json_array_size(replicas) > KEEL_NEXUS_MAX_REPLICAS) {
		snprintf(err, errlen,
			 "volumes[%zu].replicas: expected an array of 1 to %d "
			 "replicas",
			 i, KEEL_NEXUS_MAX_REPLICAS);
		return false;
	}
	json_array_foreach(replicas, j, rep) {
		json_t *path = json_object_get(rep, "path");

		if (!json_is_object(rep) || !json_is_string(path) ||
		    (json_string_value(path)[0] != '/' &&
		     !keel_bdev_nbd_client_is_uri(json_string_value(path))) ||
		    strlen(json_string_value(path)) >= PATH_MAX) {
			snprintf(err, errlen,
				 "volumes[%zu].replicas[%zu].path: expected an "
				 "absolute path or NBD URI",
				 i, j);
			return false;
		}
		if (!state_opt_string(rep, "uuid")) {
			snprintf(err, errlen, "volumes[%zu].replicas[%zu].uuid: expected a string",
				 i, j);
			return false;
		}
		snprintf(where, sizeof(where), "volumes[%zu].replicas[%zu]", i, j);
		if (!state_check_backend(rep, where, err, errlen)) {
			return false;
		}
		if (json_object_get(seen_paths, json_string_value(path)) != NULL) {
			snprintf(err, errlen,
				 "volumes[%zu].replicas[%zu].path: %s is listed "
				 "twice",
				 i, j, json_string_value(path));
			return false;
		}
		json_object_set_new(seen_paths, json_string_value(path), json_true());
	}
	return true;
}

static bool state_check_export(json_t *exp, size_t i, char *err, size_t errlen)
{
	json_t *socket = json_object_get(exp, "socket");
	json_t *tcp = json_object_get(exp, "tcp");
	json_t *ro = json_object_get(exp, "read_only");

	if (!json_is_object(exp)) {
		snprintf(err, errlen, "exports[%zu]: expected an object", i);
		return false;
	}
	if (!json_is_string(json_object_get(exp, "name"))) {
		snprintf(err, errlen, "exports[%zu].name: expected a string", i);
		return false;
	}
	if (!json_is_string(json_object_get(exp, "bdev"))) {
		snprintf(err, errlen, "exports[%zu].bdev: expected a string", i);
		return false;
	}
	if (!state_opt_string(exp, "socket") || !state_opt_string(exp, "tcp")) {
		snprintf(err, errlen, "exports[%zu]: socket and tcp must be strings or null", i);
		return false;
	}
	if (!json_is_string(socket) && !json_is_string(tcp)) {
		snprintf(err, errlen, "exports[%zu]: needs a socket or a tcp address", i);
		return false;
	}
	if (ro != NULL && !json_is_boolean(ro)) {
		snprintf(err, errlen, "exports[%zu].read_only: expected true or false", i);
		return false;
	}
	return true;
}

bool keeld_state_validate(json_t *doc, char *err, size_t errlen)
{
	json_t *version, *volumes, *exports, *v, *names, *paths;
	bool ok = true;
	size_t i;

	if (!json_is_object(doc)) {
		snprintf(err, errlen, "expected a JSON object");
		return false;
	}
	version = json_object_get(doc, "version");
	if (!json_is_integer(version)) {
		snprintf(err, errlen, "version: expected an integer");
		return false;
	}
	if (json_integer_value(version) != KEELD_STATE_VERSION) {
		snprintf(err, errlen, "version %lld is not %d: written by another keel version",
			 (long long)json_integer_value(version), KEELD_STATE_VERSION);
		return false;
	}
	volumes = json_object_get(doc, "volumes");
	exports = json_object_get(doc, "exports");
	if (volumes != NULL && !json_is_array(volumes)) {
		snprintf(err, errlen, "volumes: expected an array");
		return false;
	}
	if (exports != NULL && !json_is_array(exports)) {
		snprintf(err, errlen, "exports: expected an array");
		return false;
	}
	if (json_object_get(doc, "bdevs") != NULL &&
	    !json_is_array(json_object_get(doc, "bdevs"))) {
		snprintf(err, errlen, "bdevs: expected an array");
		return false;
	}
	names = json_object();
	paths = json_object();
	if (names == NULL || paths == NULL) {
		snprintf(err, errlen, "out of memory");
		ok = false;
		goto out_free;
	}
	json_array_foreach(volumes, i, v) {
		if (!state_check_volume(v, i, names, paths, err, errlen)) {
			ok = false;
			goto out_free;
		}
	}
	json_array_foreach(exports, i, v) {
		if (!state_check_export(v, i, err, errlen)) {
			ok = false;
			goto out_free;
		}
	}
out_free:
	json_decref(names);
	json_decref(paths);
	return ok;
}

/* ------------------------------------------------------------------------------ */
/* Reading (main(), before the reactors)                                           */
/* ------------------------------------------------------------------------------ */

int keeld_state_read(json_t **out, char *err, size_t errlen)
{
	static const char hint[] = "keeld will not start without its volumes: fix the file, or "
				   "move it aside to start with no volumes";
	char why[PATH_MAX + 256];
	json_t *doc;
	int rc;

	*out = NULL;
	rc = keeld_store_read(KEELD_DOC_STATE, &doc, why, sizeof(why));
	if (rc != 0) {
		snprintf(err, errlen, "%s; %s", why, hint);
		return rc;
	}
	if (doc != NULL && !keeld_state_validate(doc, why, sizeof(why))) {
		snprintf(err, errlen, "state file %s is invalid: %s; %s",
			 keeld_store_path(KEELD_DOC_STATE), why, hint);
		json_decref(doc);
		return -EINVAL;
	}
	*out = doc;
	return 0;
}
