/*
 * NBD over TLS (NBD_OPT_STARTTLS) with GnuTLS: an export's credentials, and one
 * connection's TLS session (its non-blocking handshake and the record I/O that replaces
 * recv/send in nbd_sock.c once the handshake is done).
 *
 * Credentials are loaded on the blocking-work pool when an export starts, are immutable
 * after, and are shared read-only by every NBD thread (GnuTLS credentials may be used by
 * sessions of several threads at once). A session belongs to its connection's thread.
 */
#ifndef KEEL_NBD_TLS_H
#define KEEL_NBD_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

struct nbd_conn;
struct nbd_tls_creds;

/**
 * Load the credentials of an export: a psktool key file (\p psk_file, lines
 * "username:hexkey", read into memory here so no handshake reads a file on a reactor)
 * and/or X.509 files in \p certs_dir (server-cert.pem and server-key.pem; ca-cert.pem,
 * when present, is sent as the chain's trust anchor list). At least one must be given.
 * Blocking (reads files): call on the blocking-work pool.
 * \return 0 with *\p credsp set, or -ENOENT (a file is missing), -EACCES (unreadable),
 * -EKEYREJECTED (a file is malformed: no key, bad hex, bad PEM), -EINVAL (neither
 * given), -ENOMEM; \p err then holds a one-line explanation naming the file.
 */
int nbd_tls_creds_load(const char *psk_file, const char *certs_dir, struct nbd_tls_creds **credsp,
		       char *err, size_t err_len);

/**
 * Make every certificate handshake demand a client certificate signed by the
 * directory's ca-cert.pem (clients that use the PSK authenticate with the key instead).
 * Before any session uses \p creds. \return 0, or -ENOENT (no certificates or no
 * ca-cert.pem were loaded; \p err says so).
 */
int nbd_tls_creds_require_client_cert(struct nbd_tls_creds *creds, char *err, size_t err_len);

/** Free credentials no session uses any more. NULL is a no-op. Any thread. */
void nbd_tls_creds_free(struct nbd_tls_creds *creds);

/** Short description for logs: "psk", "x509" or "psk+x509". */
const char *nbd_tls_creds_kind(const struct nbd_tls_creds *creds);

/**
 * Begin TLS on \p conn after NBD_OPT_STARTTLS was acknowledged: the handshake runs from
 * nbd_conn_rx (nbd_tls_handshake_poll) once the acknowledgement is sent. Owning thread.
 * \return 0 or -ENOMEM / -EPROTO (the session could not be set up; the caller closes).
 */
int nbd_tls_start(struct nbd_conn *conn, const struct nbd_tls_creds *creds);

/**
 * Drive the TLS handshake one step on socket readiness: never blocks. On success the
 * option phase starts over under TLS; on failure the connection is closed hard. Sets
 * rx_stalled/tx_blocked so epoll waits for the direction GnuTLS needs.
 * \return 1 when it made progress (or closed), 0 when it waits for the socket.
 */
int nbd_tls_handshake_poll(struct nbd_conn *conn);

/**
 * recv() under TLS: decrypted bytes into \p buf, as many records as fit or are ready.
 * \return bytes (> 0), 0 at the end of the stream, or -1 with errno EAGAIN (nothing
 * ready) or EPROTO (TLS failure, logged).
 */
ssize_t nbd_tls_recv(struct nbd_conn *conn, void *buf, size_t len);

/**
 * sendmsg() under TLS: the bytes of \p iov in as few records as GnuTLS allows (small
 * pieces are gathered into one record). Bytes count as sent only once GnuTLS took them
 * into a record that left, so the caller retries from where it was told, as with a
 * socket. \return bytes sent (> 0), or -1 with errno EAGAIN or EPIPE (TLS failure).
 */
ssize_t nbd_tls_sendv(struct nbd_conn *conn, const struct iovec *iov, int iovcnt);

/**
 * Before an option is handled: false when the export requires TLS, the connection has
 * none yet and \p option is neither STARTTLS nor ABORT. It is then answered
 * NBD_REP_ERR_TLS_REQD, or, for NBD_OPT_EXPORT_NAME (no error reply), the connection is
 * closed. Owning thread.
 */
bool nbd_tls_option_allowed(struct nbd_conn *conn, uint32_t option);

/**
 * NBD_OPT_STARTTLS with \p len bytes of data: refused (ERR_UNSUP on an export without
 * TLS, ERR_INVALID with data or when TLS is already on), else acknowledged and the
 * TLS handshake begins once the acknowledgement is sent. Owning thread.
 */
void nbd_tls_opt_starttls(struct nbd_conn *conn, uint32_t len);

/**
 * Free \p conn's session (sending close_notify when the connection ends cleanly and the
 * socket can take it, without waiting). Owning thread.
 */
void nbd_tls_conn_free(struct nbd_conn *conn);

#endif /* KEEL_NBD_TLS_H */
