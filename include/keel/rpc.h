/*
 * keel JSON-RPC 2.0 server: method registration and replies.
 *
 * The server listens on a unix socket (mode 0600) from fd pollers on the main keel
 * thread; it never blocks a reactor. Requests are JSON objects sent back to back
 * (no delimiter needed, they may arrive split across reads); batches (arrays) are
 * allowed; each response is compact JSON followed by a newline. Every client is
 * served a few requests at a time, so none holds the main reactor for long, and what
 * a client can make keeld hold is limited (struct keel_rpc_server_opts).
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

/**
 * For a handler that keeps \p req while it waits for an event rather than for an
 * operation that ends by itself (bdev_get_bdevs waiting for a bdev to appear): have
 * \p fn(\p arg) called if the client's connection closes first, also when keeld stops
 * its server at shutdown. \p fn runs on the main thread from inside the close; it must
 * reply to \p req (the reply is dropped) and release what the wait holds. Replying
 * normally removes the hook; a second call replaces it.
 * \return 0, or -ENOTCONN when the connection is already closed (the handler then
 * replies at once instead of waiting).
 */
int keel_rpc_request_on_abandon(struct keel_rpc_request *req, void (*fn)(void *arg), void *arg);

/* ------------------------------------------------------------------------------ */
/* Parameter decoding                                                              */
/* ------------------------------------------------------------------------------ */

enum keel_rpc_param_type {
	KEEL_RPC_PARAM_STRING, /**< out: const char * (valid while params lives) */
	KEEL_RPC_PARAM_UINT64, /**< out: uint64_t; JSON integer >= 0 */
	KEEL_RPC_PARAM_UINT32, /**< out: uint32_t */
	KEEL_RPC_PARAM_BOOL,   /**< out: bool */
	KEEL_RPC_PARAM_INT64,  /**< out: int64_t */
	KEEL_RPC_PARAM_DOUBLE, /**< out: double; integers accepted */
	KEEL_RPC_PARAM_JSON,   /**< out: json_t * (borrowed), any type */
};

struct keel_rpc_param {
	const char *name;
	enum keel_rpc_param_type type;
	size_t offset; /**< offsetof(struct your_params, field) */
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

/** Defaults of struct keel_rpc_server_opts (see there for why). */
#define KEEL_RPC_DEFAULT_MAX_CONNECTIONS 64
#define KEEL_RPC_DEFAULT_IDLE_TIMEOUT_MS 60000
#define KEEL_RPC_DEFAULT_MAX_BATCH 128
#define KEEL_RPC_DEFAULT_MAX_RESPONSE (4u << 20)

/**
 * Limits of the server: what one client can make keeld hold. Each one reached gives
 * the client an error that names it (docs/rpc.md, "Limits").
 */
struct keel_rpc_server_opts {
	/**
	 * Connections open at once. When a new one comes at the limit, the open
	 * connection that has been idle the longest (no request being handled) is told
	 * why and closed to make room, so keelctl gets in even past a crowd of silent
	 * clients; only when every connection is handling a request is the new one
	 * refused with an error.
	 */
	uint32_t max_connections;
	/**
	 * A connection with no request being handled and no byte moved either way for
	 * this long is told why and closed; 0 never closes. Default 60 s: far above any
	 * pause of a script between two calls on one connection, short enough that
	 * clients that hung or forgot a connection give it back within a minute.
	 */
	uint32_t idle_timeout_ms;
	/**
	 * Requests in one batch (a longer batch is refused with -32600 before it is
	 * parsed), and also the most requests of one connection handled at once.
	 */
	uint32_t max_batch;
	/**
	 * Bytes of one response; a larger one is replaced by an error (-EMSGSIZE) for the
	 * same id. A connection may also leave at most this plus 256 KiB of replies
	 * unread: a reply that does not fit is replaced by an error (-ENOBUFS).
	 */
	uint32_t max_response;
};

/** Fill \p opts with the defaults (KEEL_RPC_DEFAULT_*). */
void keel_rpc_server_opts_init(struct keel_rpc_server_opts *opts);

/**
 * Listen on \p path (mode 0600) on the current keel thread (the main thread), with
 * \p opts (NULL: the defaults; a 0 field takes its default, except idle_timeout_ms
 * where 0 means never). Refuses a path where another server answers (-EADDRINUSE);
 * removes a stale socket. \return 0 or a negative errno.
 */
int keel_rpc_server_start(const char *path, const struct keel_rpc_server_opts *opts);
/** Stop accepting, close every connection, remove the socket file. Main thread. */
void keel_rpc_server_stop(void);

#ifdef __cplusplus
}
#endif

#endif /* KEEL_RPC_H */
