/*
 * Internals of the keel JSON-RPC server shared by the daemon's files and the unit test.
 *
 * The protocol engine (rpc.c) knows nothing about sockets: bytes go in with
 * rpc_conn_feed(), response bytes come out of the connection's output buffer. The
 * socket layer (server.c) moves bytes between the two and decides when to read, write,
 * process and close, which lets the unit test drive framing, dispatch and the limits
 * byte by byte without reactors or sockets.
 */
#ifndef KEEL_DAEMON_RPC_INTERNAL_H
#define KEEL_DAEMON_RPC_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/rpc.h"

struct rpc_conn;

/**
 * Limits of the protocol engine for every connection: requests per batch (also the
 * most requests of one connection handled at once) and bytes per response; 0 keeps
 * the default. Set by keel_rpc_server_start(); unit tests set their own.
 */
void rpc_set_limits(uint32_t max_batch, uint32_t max_response);

/** \return a connection with an empty buffer, or NULL on allocation failure. */
struct rpc_conn *rpc_conn_create(void);

/**
 * Append \p len bytes from the peer, then rpc_conn_process().
 * \return 0; -EPROTO after a parse error or -EMSGSIZE after an oversized request: an
 * error reply was queued, further input is ignored and the caller should close the
 * connection once the output is flushed; -ENOMEM.
 */
int rpc_conn_feed(struct rpc_conn *conn, const char *data, size_t len);

/**
 * Handle what the input holds, at most a small budget of requests (or batch members)
 * per call so no client holds the thread for long; call again while
 * rpc_conn_has_work(). \return the number handled, or -EPROTO / -EMSGSIZE as
 * rpc_conn_feed().
 */
int rpc_conn_process(struct rpc_conn *conn);

/**
 * Whether more input is needed to make progress: no complete request waits in the
 * buffer and no batch is being answered. The socket layer reads only then, so one
 * connection buffers at most one request plus one read.
 */
bool rpc_conn_wants_input(struct rpc_conn *conn);

/**
 * Whether rpc_conn_process() would handle something now. False while the client
 * leaves too many reply bytes unread, while too many requests are being handled, and
 * while a batch waits for earlier requests to answer.
 */
bool rpc_conn_has_work(struct rpc_conn *conn);

/**
 * Have \p fn(\p arg) called each time a request of the connection ends (its reply is
 * queued, or it was a notification): there may be output to send, a batch to go on
 * with, or a close that waited for it. This is how the socket layer learns of a
 * handler that answers later, so it needs no timer to look. Also called for requests
 * that end inside rpc_conn_feed()/rpc_conn_process(); never after rpc_conn_close().
 * Main thread, like every reply. \p fn NULL turns it off.
 */
void rpc_conn_set_wake(struct rpc_conn *conn, void (*fn)(void *arg), void *arg);

/** Queued response bytes not yet written (\p *len may be 0). */
const char *rpc_conn_output(struct rpc_conn *conn, size_t *len);
/** Drop \p n bytes from the front of the output (they were written). */
void rpc_conn_consume_output(struct rpc_conn *conn, size_t n);
/** Requests handed to handlers that have not replied yet. */
uint32_t rpc_conn_pending(const struct rpc_conn *conn);
/** Whether a protocol error ended the input side. */
bool rpc_conn_is_broken(const struct rpc_conn *conn);

/**
 * Queue an error response with id null that is not the answer to a request (the
 * connection is about to be closed, and this says why). \return false when it cannot
 * be written without breaking the stream (inside a batch's array) or the socket is
 * gone.
 */
bool rpc_conn_notice(struct rpc_conn *conn, int code, const char *msg);

/**
 * Write the same kind of error response, newline included, into \p buf for a
 * connection that never got an rpc_conn (refused at accept).
 * \return its length, -ENOSPC when \p size is too small, -ENOMEM.
 */
int rpc_error_line(char *buf, size_t size, int code, const char *msg);

/**
 * The socket is gone. Replies of requests still pending are dropped when they come;
 * requests not started yet never run; the memory is freed once the last one replied.
 */
void rpc_conn_close(struct rpc_conn *conn);

/**
 * Whether \p v has the JSON type a parameter of \p type needs (the same rule as
 * keel_rpc_decode_params). \p *expected is set to the phrase that completes an error
 * message ("expected true or false").
 */
bool rpc_param_type_ok(enum keel_rpc_param_type type, json_t *v, const char **expected);

/** Visit every registered method in name order. */
void rpc_method_foreach(void (*fn)(const char *name, const char *help, void *ctx), void *ctx);
/** Forget every method (unit tests). */
void rpc_methods_clear(void);

#endif /* KEEL_DAEMON_RPC_INTERNAL_H */
