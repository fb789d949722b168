/*
 * Internals of the keel JSON-RPC server shared by the daemon's files and the unit test.
 *
 * The protocol engine (rpc.c) knows nothing about sockets: bytes go in with
 * rpc_conn_feed(), response bytes come out of the connection's output buffer. The
 * socket layer (server.c) moves bytes between the two, which lets the unit test drive
 * framing and dispatch byte by byte without reactors or sockets.
 */
#ifndef KEEL_DAEMON_RPC_INTERNAL_H
#define KEEL_DAEMON_RPC_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/rpc.h"

struct rpc_conn;

/** \return a connection with an empty buffer, or NULL on allocation failure. */
struct rpc_conn *rpc_conn_create(void);

/**
 * Append \p len bytes from the peer and handle every complete request in the buffer.
 * \return 0; -EPROTO after a parse error or -EMSGSIZE after an oversized request: an
 * error reply was queued, further input is ignored and the caller should close the
 * connection once the output is flushed; -ENOMEM.
 */
int rpc_conn_feed(struct rpc_conn *conn, const char *data, size_t len);

/** Queued response bytes not yet written (\p *len may be 0). */
const char *rpc_conn_output(struct rpc_conn *conn, size_t *len);
/** Drop \p n bytes from the front of the output (they were written). */
void rpc_conn_consume_output(struct rpc_conn *conn, size_t n);
/** Requests handed to handlers that have not replied yet. */
uint32_t rpc_conn_pending(const struct rpc_conn *conn);
/** Whether a protocol error ended the input side. */
bool rpc_conn_is_broken(const struct rpc_conn *conn);

/**
 * The socket is gone. Replies of requests still pending are dropped when they come;
 * the memory is freed once the last one replied.
 */
void rpc_conn_close(struct rpc_conn *conn);

/** Visit every registered method in name order. */
void rpc_method_foreach(void (*fn)(const char *name, const char *help, void *ctx), void *ctx);
/** Forget every method (unit tests). */
void rpc_methods_clear(void);

#endif /* KEEL_DAEMON_RPC_INTERNAL_H */
