/*
 * SPDK-compatible parameter decoding (rpc_compat.h): the one place that knows how an
 * SPDK parameter keel does not implement is accepted or refused, so every method
 * answers rpc.py the same way.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "rpc_compat.h"
#include "rpc_internal.h"

/* Whether the value \p v of parameter \p c is one keel can honour. */
static bool rpc_compat_value_ok(const struct rpc_compat_param *c, json_t *params, json_t *v)
{
	json_t *def, *other;
	bool same;

	if (c->rule == RPC_COMPAT_ANY) {
		return true;
	}
	if (c->same_as != NULL) {
		other = json_object_get(params, c->same_as);
		if (other != NULL && json_equal(v, other)) {
			return true;
		}
	}
	if (c->spdk_default == NULL) {
		return false;
	}
	def = json_loads(c->spdk_default, JSON_DECODE_ANY, NULL);
	same = def != NULL && json_equal(v, def);
	json_decref(def);
	return same;
}

static bool rpc_compat_check(struct keel_rpc_request *req, json_t *params,
			     const struct rpc_compat_param *c)
{
	json_t *v = json_object_get(params, c->name);
	const char *expected;
	char accepted[96];

	/* An explicit null reads as "not given", as in keel_rpc_decode_params. */
	if (v == NULL || json_is_null(v)) {
		return true;
	}
	if (!rpc_param_type_ok(c->type, v, &expected)) {
		keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS, "%s: %s", c->name, expected);
		return false;
	}
	if (rpc_compat_value_ok(c, params, v)) {
		return true;
	}
	if (c->spdk_default != NULL && c->same_as != NULL) {
		snprintf(accepted, sizeof(accepted), "only %s or the value of %s is accepted",
			 c->spdk_default, c->same_as);
	} else if (c->spdk_default != NULL) {
		snprintf(accepted, sizeof(accepted), "only %s is accepted", c->spdk_default);
	} else if (c->same_as != NULL) {
		snprintf(accepted, sizeof(accepted), "only the value of %s is accepted",
			 c->same_as);
	} else {
		snprintf(accepted, sizeof(accepted), "leave it out");
	}
	keel_rpc_send_error(req, KEEL_RPC_INVALID_PARAMS, "%s: %s (%s)", c->name, c->why, accepted);
	return false;
}

bool rpc_compat_decode(struct keel_rpc_request *req, json_t *params,
		       const struct keel_rpc_param *table, size_t count, void *out,
		       const struct rpc_compat_param *compat, size_t compat_count)
{
	json_t *rest;
	size_t i;
	bool ok;

	if (params == NULL || !json_is_object(params)) {
		/* Nothing to check; the decoder reports a params that is not an object. */
		return keel_rpc_decode_params(req, params, table, count, out);
	}
	for (i = 0; i < compat_count; i++) {
		if (!rpc_compat_check(req, params, &compat[i])) {
			return false;
		}
	}
	/*
	 * A shallow copy without the checked names: its values are the request's own,
	 * so the strings decoded into \p out live as long as \p params.
	 */
	rest = json_copy(params);
	if (rest == NULL) {
		keel_rpc_send_error(req, -ENOMEM, "out of memory");
		return false;
	}
	for (i = 0; i < compat_count; i++) {
		json_object_del(rest, compat[i].name);
	}
	ok = keel_rpc_decode_params(req, rest, table, count, out);
	json_decref(rest);
	return ok;
}
