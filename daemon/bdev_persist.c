/*
 * Plain bdevs that survive a restart: aio, uring and NBD client bdevs made by hand
 * (not a volume's replicas, which the volume records bring back). Their description is
 * read from the live registry when the state document is written, so every way of
 * creating or deleting one is covered by a save; at start they are created again
 * before the volumes and the exports, so an export of a plain bdev (a replica host's)
 * comes back by itself. malloc and null bdevs are not kept: their contents would not be.
 *
 * A bdev that cannot be created again at start (a missing file, a server that does
 * not answer) keeps its record, so the next start tries again; the log says why.
 * Main keel thread only (load also in main() before the reactors).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "keel/bdev.h"
#include "keel/bdev_module.h"
#include "keel/bdev_nbd_client.h"
#include "keel/bdev_uring.h"
#include "keel/log.h"
#include "keel/reactor.h"
#include "bdev_persist.h"
#include "volume_internal.h"

static json_t *g_loaded; /* "bdevs" of the state file, until restored */
static json_t *g_failed; /* records that could not be created again: kept */
static json_t *g_frozen; /* the list when shutdown began (the bdevs go next) */
/* Exports of failed records, kept for the state file and started once the bdev is back. */
static json_t *g_held_exports;
static void (*g_back_fn)(json_t *export);
static uint32_t g_pending; /* creates in flight, +1 while issuing */
static void (*g_done_fn)(void *arg);
static void *g_done_arg;

static bool bdevs_module_kept(const char *module)
{
	return strcmp(module, "aio") == 0 || strcmp(module, "uring") == 0 ||
	       strcmp(module, "nbd_client") == 0;
}

bool keeld_bdevs_is_persisted(const char *name)
{
	struct keel_bdev *b = keel_bdev_get_by_name(name);

	return b != NULL && bdevs_module_kept(keel_bdev_get_module_name(b)) &&
	       vol_find_replica_owner(NULL, name, NULL) == NULL;
}

/* One record from the bdev's own description (its driver_specific fields). */
static json_t *bdevs_record(struct keel_bdev *b)
{
	const char *module = keel_bdev_get_module_name(b);
	json_t *info = json_object(), *drv, *rec = NULL;

	if (info == NULL || keel_bdev_dump_info_json(b, info) != 0) {
		goto out;
	}
	drv = json_object_get(info, "driver_specific");
	if (strcmp(module, "nbd_client") == 0) {
		json_t *n = json_object_get(drv, "nbd_client");

		rec = json_pack("{s:s, s:s, s:O, s:O}", "name", keel_bdev_get_name(b), "module",
				module, "uri", json_object_get(n, "uri"), "timeout_ms",
				json_object_get(n, "timeout_ms"));
	} else {
		rec = json_pack("{s:s, s:s, s:O, s:i}", "name", keel_bdev_get_name(b), "module",
				module, "filename", json_object_get(drv, "filename"), "block_size",
				(int)keel_bdev_get_block_size(b));
	}
out:
	json_decref(info);
	return rec;
}

json_t *keeld_bdevs_state(void)
{
	json_t *arr = json_array();
	struct keel_bdev *b;
	json_t *e;
	size_t i;

	if (g_frozen != NULL) {
		json_decref(arr);
		return json_incref(g_frozen);
	}
	if (arr == NULL) {
		return NULL;
	}
	for (b = keel_bdev_first(); b != NULL; b = keel_bdev_next(b)) {
		if (keeld_bdevs_is_persisted(keel_bdev_get_name(b))) {
			json_t *rec = bdevs_record(b);

			if (rec != NULL) {
				json_array_append_new(arr, rec);
			}
		}
	}
	json_array_foreach(g_failed, i, e) {
		const char *name = json_string_value(json_object_get(e, "name"));

		if (name != NULL && keel_bdev_get_by_name(name) == NULL) {
			json_array_append(arr, e);
		}
	}
	return arr;
}

void keeld_bdevs_load(json_t *doc)
{
	json_decref(g_loaded);
	g_loaded = json_incref(json_object_get(doc, "bdevs"));
}

static int bdevs_retry(void *arg);

struct bdevs_create {
	json_t *rec;
	bool retry; /* a background retry, not part of the restore */
};

/* NBD client bdevs whose server did not answer at start are retried in the background
 * (the server may be starting too, or be this keeld's own export, which starts after
 * the bdevs): a timer armed only while some record waits. */
#define BDEVS_RETRY_MIN_US 200000u
#define BDEVS_RETRY_MAX_US 10000000u
static struct keel_poller *g_retry;
static uint64_t g_retry_us;
static uint32_t g_retrying; /* retries in flight */

static void bdevs_arm_retry(void)
{
	if (g_retry == NULL) {
		g_retry = keel_poller_register(bdevs_retry, NULL, BDEVS_RETRY_MAX_US, "bdev_retry");
		if (g_retry == NULL) {
			return;
		}
		g_retry_us = 0;
	}
	g_retry_us = g_retry_us == 0 ? BDEVS_RETRY_MIN_US : g_retry_us * 2;
	if (g_retry_us > BDEVS_RETRY_MAX_US) {
		g_retry_us = BDEVS_RETRY_MAX_US;
	}
	(void)keel_poller_arm(g_retry, g_retry_us);
}

static bool bdevs_is_remote(json_t *rec)
{
	const char *module = json_string_value(json_object_get(rec, "module"));

	return module != NULL && strcmp(module, "nbd_client") == 0;
}

static void bdevs_one_done(void)
{
	if (--g_pending == 0 && g_done_fn != NULL) {
		void (*fn)(void *) = g_done_fn;

		g_done_fn = NULL;
		fn(g_done_arg);
	}
}

bool keeld_bdevs_hold_export(const char *bdev, json_t *export)
{
	json_t *rec;
	size_t i;

	json_array_foreach(g_failed, i, rec) {
		if (bdev != NULL &&
		    strcmp(json_string_value(json_object_get(rec, "name")), bdev) == 0) {
			if (g_held_exports == NULL) {
				g_held_exports = json_array();
			}
			json_array_append(g_held_exports, export);
			return true;
		}
	}
	return false;
}

json_t *keeld_bdevs_held_exports(void)
{
	return g_held_exports;
}

void keeld_bdevs_set_back_hook(void (*fn)(json_t *export))
{
	g_back_fn = fn;
}

/* Bdev \p name is back: start the exports held for it. */
static void bdevs_release_exports(const char *name)
{
	size_t i = 0;

	while (g_held_exports != NULL && i < json_array_size(g_held_exports)) {
		json_t *e = json_array_get(g_held_exports, i);
		const char *bdev = json_string_value(json_object_get(e, "bdev"));

		if (bdev == NULL || strcmp(bdev, name) != 0) {
			i++;
			continue;
		}
		if (g_back_fn != NULL) {
			g_back_fn(e);
		}
		json_array_remove(g_held_exports, i);
	}
}

static void bdevs_forget_failed(json_t *rec)
{
	size_t i;
	json_t *e;

	json_array_foreach(g_failed, i, e) {
		if (e == rec) {
			json_array_remove(g_failed, i);
			return;
		}
	}
}

static void bdevs_created(void *cb_arg, int status, struct keel_bdev *bdev)
{
	struct bdevs_create *c = cb_arg;
	const char *name = json_string_value(json_object_get(c->rec, "name"));
	bool remote = bdevs_is_remote(c->rec);

	(void)bdev;
	if (status == 0) {
		KEEL_NOTICELOG("keeld: bdev %s restored", name);
		if (c->retry) {
			bdevs_forget_failed(c->rec);
			bdevs_release_exports(name);
		}
	} else if (!c->retry) {
		KEEL_ERRLOG("keeld: bdev %s not restored: %s%s%s (%s)", name, strerror(-status),
			    remote ? ": " : "", remote ? keel_bdev_nbd_client_last_error() : "",
			    remote ? "retrying in the background"
				   : "kept: the next start tries again");
		if (g_failed == NULL) {
			g_failed = json_array();
		}
		json_array_append(g_failed, c->rec);
		if (remote) {
			bdevs_arm_retry();
		}
	} else if (g_retry != NULL) {
		bdevs_arm_retry();
	}
	if (c->retry) {
		g_retrying--;
	}
	json_decref(c->rec);
	if (!c->retry) {
		bdevs_one_done();
	}
	free(c);
}

static int bdevs_create(json_t *rec, struct bdevs_create *c)
{
	const char *name = json_string_value(json_object_get(rec, "name"));
	const char *module = json_string_value(json_object_get(rec, "module"));
	const char *file = json_string_value(json_object_get(rec, "filename"));
	uint32_t bs = (uint32_t)json_integer_value(json_object_get(rec, "block_size"));

	if (name == NULL || module == NULL) {
		return -EINVAL;
	}
	if (strcmp(module, "nbd_client") == 0) {
		struct keel_bdev_nbd_client_opts o = {
			.name = name,
			.uri = json_string_value(json_object_get(rec, "uri")),
			.timeout_ms = (uint32_t)json_integer_value(
				json_object_get(rec, "timeout_ms")),
		};

		return o.uri == NULL ? -EINVAL : keel_bdev_nbd_client_create(&o, bdevs_created, c);
	}
	if (file == NULL) {
		return -EINVAL;
	}
	if (strcmp(module, "aio") == 0) {
		return keel_bdev_aio_create(name, file, bs, bdevs_created, c);
	}
	if (strcmp(module, "uring") == 0) {
		return keel_bdev_uring_create(name, file, bs, bdevs_created, c);
	}
	return -EINVAL;
}

static int bdevs_retry(void *arg)
{
	json_t *rec;
	size_t i;

	(void)arg;
	keel_poller_disarm(g_retry);
	if (g_retrying > 0) {
		return KEEL_POLLER_IDLE; /* the answers re-arm */
	}
	json_array_foreach(g_failed, i, rec) {
		const char *name = json_string_value(json_object_get(rec, "name"));
		struct bdevs_create *c;

		if (!bdevs_is_remote(rec) || name == NULL || keel_bdev_get_by_name(name) != NULL) {
			continue;
		}
		c = calloc(1, sizeof(*c));
		if (c == NULL) {
			bdevs_arm_retry();
			break;
		}
		c->rec = json_incref(rec);
		c->retry = true;
		if (bdevs_create(rec, c) != 0) {
			json_decref(c->rec);
			free(c);
			continue;
		}
		g_retrying++;
	}
	return KEEL_POLLER_BUSY;
}

void keeld_bdevs_restore(void (*done_fn)(void *arg), void *arg)
{
	json_t *rec;
	size_t i;

	g_done_fn = done_fn;
	g_done_arg = arg;
	g_pending = 1;
	json_array_foreach(g_loaded, i, rec) {
		struct bdevs_create *c = calloc(1, sizeof(*c));
		int rc = -ENOMEM;

		if (c != NULL) {
			c->rec = json_incref(rec);
			rc = bdevs_create(rec, c);
		}
		if (rc != 0) {
			KEEL_ERRLOG("keeld: bdev %s not restored: %s",
				    json_string_value(json_object_get(rec, "name")), strerror(-rc));
			if (c != NULL) {
				json_decref(c->rec);
				free(c);
			}
			continue;
		}
		g_pending++;
	}
	json_decref(g_loaded);
	g_loaded = NULL;
	bdevs_one_done();
}

void keeld_bdevs_freeze(void)
{
	keel_poller_unregister(&g_retry);
	if (g_frozen == NULL) {
		g_frozen = keeld_bdevs_state();
	}
}

void keeld_bdevs_fini(void)
{
	json_decref(g_held_exports);
	g_held_exports = NULL;
	keel_poller_unregister(&g_retry);
	json_decref(g_frozen);
	g_frozen = NULL;
	json_decref(g_loaded);
	g_loaded = NULL;
	json_decref(g_failed);
	g_failed = NULL;
}
