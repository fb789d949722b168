/*
 * Parameters keel shares with SPDK's JSON-RPC methods but does not act on.
 *
 * SPDK's scripts/rpc.py sends every optional parameter of a method that has a
 * non-null default on its command line (a store_true flag is sent as false), and
 * SPDK's own servers accept them. keel's methods accept the same parameters: each
 * method lists, in one table next to its handler, the SPDK parameters it does not
 * implement, with SPDK's default and the reason another value cannot be honoured.
 * rpc_compat_decode() checks those, then decodes the rest with
 * keel_rpc_decode_params() as before, so unknown parameters stay errors.
 *
 * Threading: the main keel thread, like every RPC handler.
 */
#ifndef KEEL_DAEMON_RPC_COMPAT_H
#define KEEL_DAEMON_RPC_COMPAT_H

#include <stdbool.h>
#include <stddef.h>

#include "keel/rpc.h"

enum rpc_compat_rule {
	/** Accepted at SPDK's default (or equal to \p same_as); other values refused. */
	RPC_COMPAT_DEFAULT_ONLY,
	/** Any value of the type: keel behaves as asked either way (\p why says how). */
	RPC_COMPAT_ANY,
};

struct rpc_compat_param {
	const char *name; /**< SPDK's parameter name */
	enum keel_rpc_param_type type;
	enum rpc_compat_rule rule;
	/** SPDK's default as JSON text ("false", "0", "\"none\""); NULL: only absence. */
	const char *spdk_default;
	/**
	 * Why another value cannot be honoured, or (RPC_COMPAT_ANY) why every value is:
	 * "metadata is not supported by keel".
	 */
	const char *why;
	/** Optional: also accepted when equal to the value of this other parameter. */
	const char *same_as;
};

/** An entry for a parameter accepted only at 0, and why another value is not. */
#define RPC_ZERO_ONLY(name, type, why)                              \
	{                                                           \
		name, type, RPC_COMPAT_DEFAULT_ONLY, "0", why, NULL \
	}
/** An entry for a boolean accepted only at false, and why true is not. */
#define RPC_FALSE_ONLY(name, why)                                                      \
	{                                                                              \
		name, KEEL_RPC_PARAM_BOOL, RPC_COMPAT_DEFAULT_ONLY, "false", why, NULL \
	}

/**
 * Decode \p params like keel_rpc_decode_params(\p table, \p count, \p out), after
 * checking the SPDK-only parameters in \p compat: each one present (not null) must
 * have its type, then RPC_COMPAT_DEFAULT_ONLY ones must equal their SPDK default or
 * their \p same_as parameter. A parameter in neither table is unknown.
 * On failure replies -32602 with a message that names the parameter and says why
 * ("md_size: metadata is not supported by keel (only 0 is accepted)") and returns
 * false; the handler then returns without replying again.
 * Strings decoded into \p out stay valid while \p params lives.
 */
bool rpc_compat_decode(struct keel_rpc_request *req, json_t *params,
		       const struct keel_rpc_param *table, size_t count, void *out,
		       const struct rpc_compat_param *compat, size_t compat_count);

#endif /* KEEL_DAEMON_RPC_COMPAT_H */
