/*
 * keel JSON-RPC 2.0 server: method registration and replies.
 *
 * The server listens on a unix socket (mode 0600) from fd pollers on the main keel
 * thread; it never blocks a reactor. Requests are JSON objects sent back to back
 * (no delimiter needed, they may arrive split across reads); batches (arrays) are
 * allowed; each response is compact JSON followed by a newline.
 *
 * Threading: handlers run on the main keel thread. A handler either replies before
 * returning or keeps \p req and replies later, on the main thread, exactly once.
 * Lifetime: \p req is freed by the reply; \p params is valid only until the handler
 * returns (json_incref it to keep it).
 */
#ifndef KEEL_RPC_H
#define KEEL_RPC_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_rpc_request;

/* JSON-RPC 2.0 error codes. */
#define KEEL_RPC_PARSE_ERROR -32700
#define KEEL_RPC_INVALID_REQUEST -32600
#define KEEL_RPC_METHOD_NOT_FOUND -32601
#define KEEL_RPC_INVALID_PARAMS -32602
#define KEEL_RPC_INTERNAL_ERROR -32603

/**
 * A method handler. \p params is the request's "params" (object, array, or NULL when
 * absent).
 */
typedef void (*keel_rpc_handler_fn)(struct keel_rpc_request *req, json_t *params);

/**
 * Register method \p name (static string) with a one-line \p help (static string),
 * shown by rpc_get_methods and keelctl. Call before keel_rpc_server_start().
 * \return 0, -EEXIST, -ENOMEM.
 */
int keel_rpc_register_method(const char *name, keel_rpc_handler_fn fn, const char *help);

/** Reply with \p result (reference stolen; NULL means JSON true). */
void keel_rpc_send_result(struct keel_rpc_request *req, json_t *result);

/**
 * Reply with an error. \p code is a JSON-RPC code, or a negative errno (then the
 * code sent is that negative errno, as SPDK does, and the message should say what
 * to do about it).
 */
void keel_rpc_send_error(struct keel_rpc_request *req, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* ------------------------------------------------------------------------------ */
/* Parameter decoding                                                              */
/* ------------------------------------------------------------------------------ */

enum keel_rpc_param_type {
	KEEL_RPC_PARAM_STRING,  /**< out: const char * (valid while params lives) */
	KEEL_RPC_PARAM_UINT64,  /**< out: uint64_t; JSON integer >= 0 */
	KEEL_RPC_PARAM_UINT32,  /**< out: uint32_t */
	KEEL_RPC_PARAM_BOOL,    /**< out: bool */
	KEEL_RPC_PARAM_INT64,   /**< out: int64_t */
	KEEL_RPC_PARAM_DOUBLE,  /**< out: double; integers accepted */
	KEEL_RPC_PARAM_JSON,    /**< out: json_t * (borrowed), any type */
};

struct keel_rpc_param {
	const char *name;
	enum keel_rpc_param_type type;
	size_t offset;          /**< offsetof(struct your_params, field) */
	bool optional;
};

/**
 * Decode object \p params into \p out per \p table. On failure, replies with
 * -32602 and a message naming the parameter and what was expected ("bdev_name:
 * expected a string", "unknown parameter 'foo'", "missing parameter 'size'") and
 * returns false; the handler must then return without replying again.
 * Optional parameters that are absent leave \p out untouched (preset defaults).
 * A NULL \p params is treated as {}.
 */
bool keel_rpc_decode_params(struct keel_rpc_request *req, json_t *params,
			    const struct keel_rpc_param *table, size_t count, void *out);

/* ------------------------------------------------------------------------------ */
/* Server                                                                          */
/* ------------------------------------------------------------------------------ */

/** Largest request accepted on one connection (bytes); larger ones are refused. */
#define KEEL_RPC_MAX_REQUEST (4u << 20)

/**
 * Listen on \p path (mode 0600) on the current keel thread (the main thread).
 * Refuses a path where another server answers (-EADDRINUSE); removes a stale socket.
 * \return 0 or a negative errno.
 */
int keel_rpc_server_start(const char *path);
/** Stop accepting, close every connection, remove the socket file. Main thread. */
void keel_rpc_server_stop(void);

#ifdef __cplusplus
}
#endif

#endif /* KEEL_RPC_H */
