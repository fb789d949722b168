/*
 * The volume manager's backends by name: which replica backend (replica_backend.h)
 * opens the replicas of "aio" and of "uring", the daemon's default for new volumes,
 * and the refusal when the backend a request names cannot work here. See
 * docs/volumes.md for why aio is the default.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "keel/log.h"
#include "volume_internal.h"

static const struct keeld_replica_backend *const g_real[] = {
	[KEELD_BACKEND_AIO] = &keeld_replica_backend_files,
	[KEELD_BACKEND_URING] = &keeld_replica_backend_uring,
};
static const struct keeld_replica_backend *g_backends[] = {
	[KEELD_BACKEND_AIO] = &keeld_replica_backend_files,
	[KEELD_BACKEND_URING] = &keeld_replica_backend_uring,
};
static enum keeld_backend g_default = KEELD_BACKEND_AIO;

static bool vol_backend_known(enum keeld_backend kind)
{
	return kind == KEELD_BACKEND_AIO || kind == KEELD_BACKEND_URING;
}

const char *keeld_backend_name(enum keeld_backend backend)
{
	switch (backend) {
	case KEELD_BACKEND_DEFAULT:
		return "default";
	case KEELD_BACKEND_AIO:
		return "aio";
	case KEELD_BACKEND_URING:
		return "uring";
	}
	return "?";
}

bool keeld_backend_parse(const char *text, enum keeld_backend *out, char *why, size_t len)
{
	if (text != NULL && strcmp(text, "aio") == 0) {
		*out = KEELD_BACKEND_AIO;
		return true;
	}
	if (text != NULL && strcmp(text, "uring") == 0) {
		*out = KEELD_BACKEND_URING;
		return true;
	}
	if (why != NULL && len > 0) {
		snprintf(why, len, "'%.64s' is not a replica backend: use aio or uring",
			 text != NULL ? text : "");
	}
	return false;
}

void keeld_volumes_set_backend(enum keeld_backend kind, const struct keeld_replica_backend *backend)
{
	if (vol_backend_known(kind)) {
		g_backends[kind] = backend != NULL ? backend : g_real[kind];
	}
}

const struct keeld_replica_backend *vol_backend_of(enum keeld_backend kind)
{
	return g_backends[vol_backend_known(kind) ? kind : KEELD_BACKEND_AIO];
}

enum keeld_backend vol_replica_backend_in_use(const struct vol_replica *r)
{
	/* The recorded one first: unit tests may plug one backend in for both kinds. */
	if (r->opened_by == NULL || r->opened_by == vol_backend_of(r->backend)) {
		return r->backend;
	}
	if (r->opened_by == vol_backend_of(KEELD_BACKEND_AIO)) {
		return KEELD_BACKEND_AIO;
	}
	if (r->opened_by == vol_backend_of(KEELD_BACKEND_URING)) {
		return KEELD_BACKEND_URING;
	}
	return r->backend;
}

enum keeld_backend vol_backend_resolve(enum keeld_backend kind)
{
	return kind == KEELD_BACKEND_DEFAULT ? g_default : kind;
}

bool vol_backend_available(enum keeld_backend kind, char *why, size_t len)
{
	const struct keeld_replica_backend *b = vol_backend_of(kind);

	if (len > 0) {
		why[0] = '\0';
	}
	return b->available == NULL || b->available(why, len);
}

bool vol_backend_refuse_unavailable(struct vol_op *op, enum keeld_backend kind)
{
	char why[256];

	if (vol_backend_available(kind, why, sizeof(why))) {
		return false;
	}
	vol_op_fail(op, -ENOTSUP,
		    "backend %s is unavailable on this machine: %s; use the aio backend "
		    "(keelctl --backend aio, or leave the backend out)",
		    keeld_backend_name(kind), why[0] != '\0' ? why : "not supported");
	return true;
}

enum keeld_backend keeld_volumes_set_default_backend(enum keeld_backend backend)
{
	char why[256];

	backend = vol_backend_known(backend) ? backend : KEELD_BACKEND_AIO;
	/* Ask about uring whatever the default: the first answer may set up a ring, which
	 * belongs here, before the reactors, not in a restore or an RPC on a reactor. */
	(void)vol_backend_available(KEELD_BACKEND_URING, why, sizeof(why));
	if (!vol_backend_available(backend, why, sizeof(why))) {
		KEEL_WARNLOG("keeld: volume backend %s is unavailable (%s): new volumes use aio",
			     keeld_backend_name(backend), why[0] != '\0' ? why : "not supported");
		backend = KEELD_BACKEND_AIO;
	}
	g_default = backend;
	return backend;
}

enum keeld_backend keeld_volumes_default_backend(void)
{
	return g_default;
}
