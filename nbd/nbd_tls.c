/*
 * NBD over TLS with GnuTLS: credentials of an export and the TLS session of one
 * connection (NBD_OPT_STARTTLS, then records instead of plain socket bytes).
 *
 * Why it is shaped like this:
 * - Nothing blocks a reactor. The session is non-blocking on the connection's
 *   non-blocking socket; the handshake is stepped by the connection's poller, and epoll
 *   is told the direction GnuTLS waits for (gnutls_record_get_direction). The existing
 *   handshake deadline (nbd_limits.c) ends a client that stalls mid-handshake, since the
 *   connection stays in its handshake phase until NBD_OPT_GO.
 * - GnuTLS's own PSK key-file support reads the file on every handshake (blocking file
 *   I/O on a reactor); keel reads the psktool file once, at export start on the
 *   blocking pool, and answers from memory. A bad file is found at start, not by the
 *   first client.
 * - Sending: the NBD reply queue counts bytes as sent only when the transport says so
 *   and retries from that point. GnuTLS's cork would take every byte at once and, on
 *   EAGAIN while uncorking, hold them with no way to tell the queue how far it got; so
 *   small pieces (reply headers, 4 KiB reads) are gathered into one record-sized staging
 *   buffer here, large ones are passed straight, and a record GnuTLS could not finish is
 *   completed by the next call (GnuTLS flushes the pending record whatever is passed).
 *   Same effect as cork (one record for many small replies), bounded and retry-safe.
 * - Receiving: gnutls_record_recv returns one record per call, so this loops until the
 *   buffer is full or the socket is drained, and wakes the poller when GnuTLS still
 *   holds decrypted bytes (epoll cannot see those).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gnutls/gnutls.h>

#include "keel/log.h"
#include "keel/reactor.h"
#include "nbd/nbd_conn_internal.h"
#include "nbd/nbd_tls.h"

/* Largest plaintext of one TLS record (RFC 8446 5.1). */
#define NBD_TLS_RECORD 16384u
/* A psktool key file larger than this is not a key file. */
#define NBD_TLS_PSK_FILE_MAX (1u << 20)
#define NBD_TLS_PSK_USER_MAX 255u
#define NBD_TLS_PSK_KEY_MAX 512u
/* PSK key exchanges as nbdkit and qemu offer them, plus certificates. */
#define NBD_TLS_PRIORITY "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK"

struct nbd_tls_psk {
	char *user;
	uint8_t *key;
	size_t key_len;
};

struct nbd_tls_creds {
	gnutls_psk_server_credentials_t psk_cred;
	gnutls_certificate_credentials_t x509_cred;
	gnutls_priority_t priority;
	struct nbd_tls_psk *psk;
	size_t npsk;
	bool has_ca;        /* ca-cert.pem loaded as the trust list */
	bool verify_client; /* certificate handshakes need a client certificate */
};

struct nbd_tls_session {
	gnutls_session_t session;
	bool established;
};

/* Record staging for small pieces; filled and handed to GnuTLS within one call. */
static __thread uint8_t g_tls_stage[NBD_TLS_RECORD];

/* ------------------------------------------------------------------------------ */
/* Credentials                                                                    */
/* ------------------------------------------------------------------------------ */

static int nbd_tls_hex_value(char c)
{
	if (c >= '0' && c <= '9') {
		return c - '0';
	}
	if (c >= 'a' && c <= 'f') {
		return c - 'a' + 10;
	}
	if (c >= 'A' && c <= 'F') {
		return c - 'A' + 10;
	}
	return -1;
}

/* Read a whole small file. \return 0, -ENOENT, -EACCES, -EKEYREJECTED (too big), -errno. */
static int nbd_tls_read_file(const char *path, char **datap, size_t *lenp)
{
	struct stat st;
	char *data;
	size_t got = 0;
	int fd, rc;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		return -errno;
	}
	if (fstat(fd, &st) != 0) {
		rc = -errno;
		goto out_close_fd;
	}
	if (!S_ISREG(st.st_mode) || st.st_size > NBD_TLS_PSK_FILE_MAX) {
		rc = -EKEYREJECTED;
		goto out_close_fd;
	}
	data = malloc((size_t)st.st_size + 1);
	if (data == NULL) {
		rc = -ENOMEM;
		goto out_close_fd;
	}
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, data + got, (size_t)st.st_size - got);

		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n <= 0) {
			break; /* shrank meanwhile: parse what is there */
		}
		got += (size_t)n;
	}
	data[got] = '\0';
	close(fd);
	*datap = data;
	*lenp = got;
	return 0;

out_close_fd:
	close(fd);
	return rc;
}

static void nbd_tls_psk_free(struct nbd_tls_creds *creds)
{
	for (size_t i = 0; i < creds->npsk; i++) {
		free(creds->psk[i].user);
		if (creds->psk[i].key != NULL) {
			gnutls_memset(creds->psk[i].key, 0, creds->psk[i].key_len);
		}
		free(creds->psk[i].key);
	}
	free(creds->psk);
	creds->psk = NULL;
	creds->npsk = 0;
}

/* Parse one "username:hexkey" line into creds->psk. */
static int nbd_tls_psk_add(struct nbd_tls_creds *creds, const char *line, size_t len,
			   const char *path, unsigned lineno, char *err, size_t err_len)
{
	const char *colon = memchr(line, ':', len);
	size_t ulen, hlen;
	struct nbd_tls_psk *grown, *p;

	if (colon == NULL || colon == line) {
		snprintf(err, err_len, "%s line %u: expected username:hexkey (as psktool writes)",
			 path, lineno);
		return -EKEYREJECTED;
	}
	ulen = (size_t)(colon - line);
	hlen = len - ulen - 1;
	if (ulen > NBD_TLS_PSK_USER_MAX || hlen == 0 || hlen % 2 != 0 ||
	    hlen / 2 > NBD_TLS_PSK_KEY_MAX) {
		snprintf(err, err_len,
			 "%s line %u: username of 1-%u bytes and a key of an even number of "
			 "hex digits (at most %u bytes) expected",
			 path, lineno, NBD_TLS_PSK_USER_MAX, NBD_TLS_PSK_KEY_MAX);
		return -EKEYREJECTED;
	}
	grown = realloc(creds->psk, (creds->npsk + 1) * sizeof(*grown));
	if (grown == NULL) {
		return -ENOMEM;
	}
	creds->psk = grown;
	p = &creds->psk[creds->npsk];
	p->user = strndup(line, ulen);
	p->key = malloc(hlen / 2);
	p->key_len = hlen / 2;
	creds->npsk++;
	if (p->user == NULL || p->key == NULL) {
		return -ENOMEM;
	}
	for (size_t i = 0; i < hlen; i += 2) {
		int hi = nbd_tls_hex_value(colon[1 + i]);
		int lo = nbd_tls_hex_value(colon[2 + i]);

		if (hi < 0 || lo < 0) {
			snprintf(err, err_len, "%s line %u: the key is not hexadecimal", path,
				 lineno);
			return -EKEYREJECTED;
		}
		p->key[i / 2] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

static int nbd_tls_psk_load(struct nbd_tls_creds *creds, const char *path, char *err,
			    size_t err_len)
{
	char *data = NULL, *line, *end;
	size_t len = 0;
	unsigned lineno = 0;
	int rc;

	rc = nbd_tls_read_file(path, &data, &len);
	if (rc != 0) {
		snprintf(err, err_len, "cannot read PSK file %s: %s", path,
			 rc == -EKEYREJECTED ? "not a regular file of at most 1 MiB"
					     : strerror(-rc));
		return rc;
	}
	for (line = data; rc == 0 && line < data + len; line = end + 1) {
		size_t llen;

		end = memchr(line, '\n', (size_t)(data + len - line));
		if (end == NULL) {
			end = data + len;
		}
		llen = (size_t)(end - line);
		if (llen > 0 && line[llen - 1] == '\r') {
			llen--;
		}
		lineno++;
		if (llen == 0) {
			continue;
		}
		rc = nbd_tls_psk_add(creds, line, llen, path, lineno, err, err_len);
	}
	gnutls_memset(data, 0, len);
	free(data);
	if (rc == 0 && creds->npsk == 0) {
		snprintf(err, err_len,
			 "PSK file %s holds no key: make one with psktool -u USER -p %s", path,
			 path);
		rc = -EKEYREJECTED;
	}
	if (rc == -ENOMEM) {
		snprintf(err, err_len, "out of memory reading PSK file %s", path);
	}
	return rc;
}

/* GnuTLS asks for the key of \p username during a handshake: answer from memory. */
static int nbd_tls_psk_lookup(gnutls_session_t session, const char *username, gnutls_datum_t *key)
{
	const struct nbd_tls_creds *creds = gnutls_session_get_ptr(session);

	for (size_t i = 0; creds != NULL && i < creds->npsk; i++) {
		if (strcmp(creds->psk[i].user, username) != 0) {
			continue;
		}
		key->data = gnutls_malloc(creds->psk[i].key_len);
		if (key->data == NULL) {
			return -1;
		}
		memcpy(key->data, creds->psk[i].key, creds->psk[i].key_len);
		key->size = (unsigned)creds->psk[i].key_len;
		return 0;
	}
	return -1; /* unknown user: the handshake fails */
}

/* Check a file can be opened for reading, for an error that names it. */
static int nbd_tls_check_file(const char *path, char *err, size_t err_len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		int rc = -errno;

		snprintf(err, err_len, "cannot read %s: %s", path, strerror(-rc));
		return rc;
	}
	close(fd);
	return 0;
}

static int nbd_tls_x509_load(struct nbd_tls_creds *creds, const char *dir, char *err,
			     size_t err_len)
{
	char cert[4096], key[4096], ca[4096];
	struct stat st;
	int rc;

	if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
		rc = stat(dir, &st) != 0 ? -errno : -ENOTDIR;
		snprintf(err, err_len,
			 "certificate directory %s: %s (it holds server-cert.pem, "
			 "server-key.pem and optionally ca-cert.pem)",
			 dir, strerror(-rc));
		return rc == -ENOTDIR ? -ENOENT : rc;
	}
	snprintf(cert, sizeof(cert), "%s/server-cert.pem", dir);
	snprintf(key, sizeof(key), "%s/server-key.pem", dir);
	snprintf(ca, sizeof(ca), "%s/ca-cert.pem", dir);
	rc = nbd_tls_check_file(cert, err, err_len);
	if (rc == 0) {
		rc = nbd_tls_check_file(key, err, err_len);
	}
	if (rc != 0) {
		return rc;
	}
	if (gnutls_certificate_allocate_credentials(&creds->x509_cred) != 0) {
		snprintf(err, err_len, "out of memory for certificates");
		return -ENOMEM;
	}
	rc = gnutls_certificate_set_x509_key_file(creds->x509_cred, cert, key, GNUTLS_X509_FMT_PEM);
	if (rc < 0) {
		snprintf(err, err_len, "%s / %s: %s", cert, key, gnutls_strerror(rc));
		return -EKEYREJECTED;
	}
	if (access(ca, F_OK) == 0) {
		rc = gnutls_certificate_set_x509_trust_file(creds->x509_cred, ca,
							    GNUTLS_X509_FMT_PEM);
		if (rc < 0) {
			snprintf(err, err_len, "%s: %s", ca, gnutls_strerror(rc));
			return -EKEYREJECTED;
		}
		creds->has_ca = true;
	}
	gnutls_certificate_set_known_dh_params(creds->x509_cred, GNUTLS_SEC_PARAM_MEDIUM);
	return 0;
}

int nbd_tls_creds_load(const char *psk_file, const char *certs_dir, struct nbd_tls_creds **credsp,
		       char *err, size_t err_len)
{
	struct nbd_tls_creds *creds;
	int rc;

	if (psk_file == NULL && certs_dir == NULL) {
		snprintf(err, err_len, "TLS needs a PSK file or a certificate directory");
		return -EINVAL;
	}
	creds = calloc(1, sizeof(*creds));
	if (creds == NULL) {
		snprintf(err, err_len, "out of memory for TLS credentials");
		return -ENOMEM;
	}
	if (psk_file != NULL) {
		rc = nbd_tls_psk_load(creds, psk_file, err, err_len);
		if (rc != 0) {
			goto out_free;
		}
		if (gnutls_psk_allocate_server_credentials(&creds->psk_cred) != 0) {
			snprintf(err, err_len, "out of memory for PSK credentials");
			rc = -ENOMEM;
			goto out_free;
		}
		gnutls_psk_set_server_credentials_function(creds->psk_cred, nbd_tls_psk_lookup);
		gnutls_psk_set_server_known_dh_params(creds->psk_cred, GNUTLS_SEC_PARAM_MEDIUM);
	}
	if (certs_dir != NULL) {
		rc = nbd_tls_x509_load(creds, certs_dir, err, err_len);
		if (rc != 0) {
			goto out_free;
		}
	}
	rc = gnutls_priority_init(&creds->priority, NBD_TLS_PRIORITY, NULL);
	if (rc < 0) {
		snprintf(err, err_len, "GnuTLS priority %s: %s", NBD_TLS_PRIORITY,
			 gnutls_strerror(rc));
		rc = -EKEYREJECTED;
		goto out_free;
	}
	*credsp = creds;
	return 0;

out_free:
	nbd_tls_creds_free(creds);
	return rc;
}

int nbd_tls_creds_require_client_cert(struct nbd_tls_creds *creds, char *err, size_t err_len)
{
	if (creds->x509_cred == NULL || !creds->has_ca) {
		snprintf(err, err_len,
			 "verifying client certificates needs a certificate directory with "
			 "ca-cert.pem (the CA that signed the clients' certificates)");
		return -ENOENT;
	}
	creds->verify_client = true;
	return 0;
}

void nbd_tls_creds_free(struct nbd_tls_creds *creds)
{
	if (creds == NULL) {
		return;
	}
	if (creds->priority != NULL) {
		gnutls_priority_deinit(creds->priority);
	}
	if (creds->psk_cred != NULL) {
		gnutls_psk_free_server_credentials(creds->psk_cred);
	}
	if (creds->x509_cred != NULL) {
		gnutls_certificate_free_credentials(creds->x509_cred);
	}
	nbd_tls_psk_free(creds);
	free(creds);
}

const char *nbd_tls_creds_kind(const struct nbd_tls_creds *creds)
{
	if (creds->psk_cred != NULL && creds->x509_cred != NULL) {
		return "psk+x509";
	}
	return creds->psk_cred != NULL ? "psk" : "x509";
}

/* ------------------------------------------------------------------------------ */
/* Session and handshake                                                          */
/* ------------------------------------------------------------------------------ */

static void nbd_tls_session_free(struct nbd_tls_session *t)
{
	if (t != NULL) {
		gnutls_deinit(t->session);
		free(t);
	}
}

int nbd_tls_start(struct nbd_conn *conn, const struct nbd_tls_creds *creds)
{
	struct nbd_tls_session *t;
	int rc;

	t = calloc(1, sizeof(*t));
	if (t == NULL) {
		return -ENOMEM;
	}
	rc = gnutls_init(&t->session, GNUTLS_SERVER | GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL);
	if (rc < 0) {
		free(t);
		return -ENOMEM;
	}
	gnutls_session_set_ptr(t->session, (void *)creds);
	rc = gnutls_priority_set(t->session, creds->priority);
	if (rc == 0 && creds->psk_cred != NULL) {
		rc = gnutls_credentials_set(t->session, GNUTLS_CRD_PSK, creds->psk_cred);
	}
	if (rc == 0 && creds->x509_cred != NULL) {
		rc = gnutls_credentials_set(t->session, GNUTLS_CRD_CERTIFICATE, creds->x509_cred);
	}
	if (rc == 0 && creds->verify_client) {
		/* The handshake fails unless the client's certificate chains to ca-cert.pem
		 * (no host name: a client is not named by an address). */
		gnutls_certificate_server_set_request(t->session, GNUTLS_CERT_REQUIRE);
		gnutls_session_set_verify_cert(t->session, NULL, 0);
	}
	if (rc < 0) {
		KEEL_WARNLOG("%s: cannot set up a TLS session: %s", conn->label,
			     gnutls_strerror(rc));
		nbd_tls_session_free(t);
		return -EPROTO;
	}
	/* The connection's handshake deadline bounds it, not a GnuTLS timer. */
	gnutls_handshake_set_timeout(t->session, 0);
	gnutls_transport_set_int(t->session, conn->fd);
	conn->tls_pending = t;
	conn->rx_stalled = true; /* read nothing more in plaintext */
	return 0;
}

int nbd_tls_handshake_poll(struct nbd_conn *conn)
{
	struct nbd_tls_session *t = conn->tls_pending;
	int rc;

	if (conn->wsent < conn->wlen) {
		/* The STARTTLS acknowledgement is still going out in plaintext. */
		conn->rx_stalled = true;
		return 0;
	}
	rc = gnutls_handshake(t->session);
	if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED) {
		bool want_write = gnutls_record_get_direction(t->session) == 1;

		conn->tx_blocked = want_write;
		conn->rx_stalled = want_write;
		return 0;
	}
	conn->tx_blocked = false;
	conn->rx_stalled = false;
	if (rc < 0) {
		KEEL_WARNLOG("%s: TLS handshake failed: %s", conn->label, gnutls_strerror(rc));
		nbd_stat_inc(NBD_STAT_TLS_FAILURES);
		nbd_conn_abort(conn);
		return 1;
	}
	t->established = true;
	nbd_stat_inc(NBD_STAT_TLS_HANDSHAKES);
	conn->tls = t;
	conn->tls_pending = NULL;
	/* The spec: after STARTTLS the option haggling starts over, now encrypted, and
	 * nothing negotiated in plaintext (structured replies, extended headers, meta
	 * contexts) holds. */
	conn->hs = NBD_HS_OPT;
	conn->structured = false;
	conn->extended = false;
	conn->meta_allocation = false;
	conn->rpos = conn->rlen = 0;
	KEEL_INFOLOG("%s: TLS established (%s)", conn->label,
		     gnutls_protocol_get_name(gnutls_protocol_get_version(t->session)));
	return 1;
}

/* ------------------------------------------------------------------------------ */
/* Options                                                                        */
/* ------------------------------------------------------------------------------ */

bool nbd_tls_option_allowed(struct nbd_conn *conn, uint32_t option)
{
	if (conn->exp->tls_mode != KEEL_NBD_TLS_REQUIRE || conn->tls != NULL ||
	    option == NBD_OPT_STARTTLS || option == NBD_OPT_ABORT) {
		return true;
	}
	if (option == NBD_OPT_EXPORT_NAME) {
		/* No error reply exists for EXPORT_NAME: the spec says disconnect. */
		KEEL_INFOLOG("%s: NBD_OPT_EXPORT_NAME without TLS on an export that requires "
			     "it, closing",
			     conn->label);
		nbd_conn_abort(conn);
		return false;
	}
	if (nbd_send_opt_error(conn, option, NBD_REP_ERR_TLS_REQD,
			       "this export requires TLS: send NBD_OPT_STARTTLS first") != 0) {
		nbd_conn_abort(conn);
	}
	return false;
}

void nbd_tls_opt_starttls(struct nbd_conn *conn, uint32_t len)
{
	const char *why = NULL;
	uint32_t type = NBD_REP_ERR_INVALID;
	int rc;

	if (conn->exp->tls_mode == KEEL_NBD_TLS_OFF || conn->exp->tls_creds == NULL) {
		why = "TLS is not enabled on this export";
		type = NBD_REP_ERR_UNSUP;
	} else if (len != 0) {
		why = "NBD_OPT_STARTTLS takes no data";
	} else if (conn->tls != NULL) {
		why = "TLS is already negotiated on this connection";
	}
	if (why != NULL) {
		if (nbd_send_opt_error(conn, NBD_OPT_STARTTLS, type, why) != 0) {
			nbd_conn_abort(conn);
		}
		return;
	}
	if (conn->rpos < conn->rlen) {
		/* The client must wait for the reply: bytes after STARTTLS are neither an
		 * option (they would be read as plaintext) nor a TLS hello. */
		KEEL_WARNLOG("%s: client sent data after NBD_OPT_STARTTLS before the reply, "
			     "closing",
			     conn->label);
		nbd_conn_abort(conn);
		return;
	}
	rc = nbd_tls_start(conn, conn->exp->tls_creds);
	if (rc != 0) {
		if (nbd_send_opt_error(conn, NBD_OPT_STARTTLS, NBD_REP_ERR_PLATFORM,
				       "the server cannot start TLS now") != 0) {
			nbd_conn_abort(conn);
		}
		return;
	}
	if (nbd_send_opt_reply(conn, NBD_OPT_STARTTLS, NBD_REP_ACK, NULL, 0) != 0) {
		nbd_conn_abort(conn);
	}
}

/* ------------------------------------------------------------------------------ */
/* Records                                                                        */
/* ------------------------------------------------------------------------------ */

ssize_t nbd_tls_recv(struct nbd_conn *conn, void *buf, size_t len)
{
	gnutls_session_t s = conn->tls->session;
	size_t got = 0;

	while (got < len) {
		ssize_t n = gnutls_record_recv(s, (uint8_t *)buf + got, len - got);

		if (n > 0) {
			got += (size_t)n;
			continue;
		}
		if (n == 0 || n == GNUTLS_E_PREMATURE_TERMINATION) {
			/* close_notify, or a client that just closed its socket: EOF either way */
			return (ssize_t)got;
		}
		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
			if (got > 0) {
				return (ssize_t)got;
			}
			errno = EAGAIN;
			return -1;
		}
		KEEL_INFOLOG("%s: TLS receive failed: %s", conn->label, gnutls_strerror((int)n));
		if (got > 0) {
			return (ssize_t)got; /* the next call reports the error */
		}
		errno = EPROTO;
		return -1;
	}
	/* Decrypted bytes GnuTLS still holds do not make the socket readable. */
	if (gnutls_record_check_pending(s) > 0) {
		keel_poller_wake(conn->poller);
	}
	return (ssize_t)got;
}

ssize_t nbd_tls_sendv(struct nbd_conn *conn, const struct iovec *iov, int iovcnt)
{
	gnutls_session_t s = conn->tls->session;
	size_t total = 0, off = 0;
	int i = 0;

	while (i < iovcnt) {
		const uint8_t *p;
		size_t len;
		ssize_t n;

		if (iov[i].iov_len - off >= NBD_TLS_RECORD) {
			/* A large piece goes straight: GnuTLS takes one record of it. */
			p = (const uint8_t *)iov[i].iov_base + off;
			len = iov[i].iov_len - off;
		} else {
			/* Gather small pieces into one record. */
			size_t ii = (size_t)i, ioff = off;

			len = 0;
			while (ii < (size_t)iovcnt && len < NBD_TLS_RECORD) {
				size_t take = iov[ii].iov_len - ioff;

				if (take > NBD_TLS_RECORD - len) {
					take = NBD_TLS_RECORD - len;
				}
				memcpy(g_tls_stage + len, (const uint8_t *)iov[ii].iov_base + ioff,
				       take);
				len += take;
				ioff += take;
				if (ioff == iov[ii].iov_len) {
					ii++;
					ioff = 0;
				}
			}
			p = g_tls_stage;
		}
		if (len == 0) {
			i++;
			off = 0;
			continue;
		}
		n = gnutls_record_send(s, p, len);
		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
			/* GnuTLS keeps the record; the next call (from this same point) ends it. */
			if (total > 0) {
				return (ssize_t)total;
			}
			errno = EAGAIN;
			return -1;
		}
		if (n < 0) {
			KEEL_INFOLOG("%s: TLS send failed: %s", conn->label,
				     gnutls_strerror((int)n));
			errno = EPIPE;
			return -1;
		}
		total += (size_t)n;
		/* Advance over the n bytes the record carried. */
		while (n > 0 && i < iovcnt) {
			size_t left = iov[i].iov_len - off;

			if ((size_t)n < left) {
				off += (size_t)n;
				n = 0;
			} else {
				n -= (ssize_t)left;
				i++;
				off = 0;
			}
		}
	}
	return (ssize_t)total;
}

void nbd_tls_conn_free(struct nbd_conn *conn)
{
	if (conn->tls != NULL && !conn->tx_dead && !conn->shut) {
		/* One try at close_notify; a full socket just does not get it. */
		gnutls_bye(conn->tls->session, GNUTLS_SHUT_WR);
	}
	nbd_tls_session_free(conn->tls);
	nbd_tls_session_free(conn->tls_pending);
	conn->tls = NULL;
	conn->tls_pending = NULL;
}
