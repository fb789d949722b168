/*
 * Connecting an NBD client handle: runs on the blocking-work pool, because DNS, the TCP
 * connect, the TLS handshake and the NBD handshake may each take a while (or hang on a
 * server that accepted and went silent). The handshake is driven through libnbd's
 * asynchronous connect with nbd_poll() so that a deadline bounds the whole attempt.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <libnbd.h>

#include "keel/bdev_nbd_client.h"
#include "keel/reactor.h"
#include "nbd_client_internal.h"

static void nbdc_job_err(struct nbdc_conn_job *job, const char *what)
{
	const char *why = nbd_get_error();
	bool tls = why != NULL && strstr(why, "gnutls") != NULL;

	/* GnuTLS says how the handshake broke, not that the key is the likely cause. */
	snprintf(job->err, sizeof(job->err), "%s: %s%s", what,
		 why != NULL && why[0] != '\0' ? why : "connection closed by the server",
		 tls ? " (TLS failed: check the user and key of tls-psk-file against the "
		       "server's)"
		     : "");
}

/* Real time, not nbdc_mono_ns(): the unit tests mock that clock, and this deadline
 * bounds a real wait. */
static uint64_t nbdc_mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int nbdc_errno(int fallback)
{
	int e = nbd_get_errno();

	return e > 0 ? -e : fallback;
}

/* Copy what the server said about the export into the job (create uses it). */
static int nbdc_job_probe(struct nbdc_conn_job *job)
{
	struct nbd_handle *h = job->h;
	int64_t size = nbd_get_size(h);

	if (size < 0) {
		nbdc_job_err(job, "cannot read the export size");
		return -EIO;
	}
	job->size = (uint64_t)size;
	job->min_block = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
	job->pref_block = nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED);
	job->max_block = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
	job->read_only = nbd_is_read_only(h) == 1;
	job->can_flush = nbd_can_flush(h) == 1;
	job->can_fua = nbd_can_fua(h) == 1;
	job->can_trim = nbd_can_trim(h) == 1;
	job->can_zero = nbd_can_zero(h) == 1;
	job->can_multi_conn = nbd_can_multi_conn(h) == 1;
	return 0;
}

int bdev_nbdc_connect_blocking(void *arg)
{
	struct nbdc_conn_job *job = arg;
	uint64_t deadline = nbdc_mono_ns() + (uint64_t)job->timeout_ms * 1000000u;
	int rc;

	job->h = nbd_create();
	if (job->h == NULL) {
		nbdc_job_err(job, "cannot create a libnbd handle");
		return -ENOMEM;
	}
	/* The URI comes from the administrator: its socket and tls-psk-file are wanted. */
	(void)nbd_set_uri_allow_local_file(job->h, true);
	if (nbd_aio_connect_uri(job->h, job->uri) == -1) {
		nbdc_job_err(job, "cannot connect");
		rc = nbdc_errno(-EIO);
		goto out_close;
	}
	while (nbd_aio_is_connecting(job->h)) {
		uint64_t now = nbdc_mono_ns();
		int left_ms;

		if (now >= deadline) {
			snprintf(job->err, sizeof(job->err),
				 "no answer from the server within %u ms while connecting",
				 job->timeout_ms);
			rc = -ETIMEDOUT;
			goto out_close;
		}
		left_ms = (int)((deadline - now) / 1000000u) + 1;
		if (nbd_poll(job->h, left_ms) == -1) {
			nbdc_job_err(job, "handshake failed");
			rc = nbdc_errno(-EIO);
			goto out_close;
		}
	}
	if (!nbd_aio_is_ready(job->h)) {
		nbdc_job_err(job, "handshake failed");
		rc = nbdc_errno(-EIO);
		goto out_close;
	}
	rc = nbdc_job_probe(job);
	if (rc != 0) {
		goto out_close;
	}
	return 0;

out_close:
	nbd_close(job->h);
	job->h = NULL;
	return rc;
}

int keel_bdev_nbd_client_read_head(const char *uri, uint32_t timeout_ms, void *buf, size_t len,
				   size_t *got, uint64_t *size, char *err, size_t errlen)
{
	struct nbdc_conn_job job;
	int rc;

	memset(&job, 0, sizeof(job));
	job.uri = (char *)uri;
	job.timeout_ms = timeout_ms != 0 ? timeout_ms : KEEL_NBD_CLIENT_TIMEOUT_MS_DEFAULT;
	rc = bdev_nbdc_connect_blocking(&job);
	if (rc != 0) {
		snprintf(err, errlen, "cannot connect to %s: %s", uri, job.err);
		return rc;
	}
	*size = job.size;
	*got = len < job.size ? len : (size_t)job.size;
	if (*got > 0 && nbd_pread(job.h, buf, *got, 0, 0) == -1) {
		snprintf(err, errlen, "cannot read %s: %s", uri, nbd_get_error());
		rc = nbdc_errno(-EIO);
	}
	(void)nbd_shutdown(job.h, 0);
	nbd_close(job.h);
	return rc;
}

/* Blocking pool: a polite goodbye (NBD_CMD_DISC) is not worth a reactor's time. */
static int nbdc_close_blocking(void *arg)
{
	nbd_close(arg);
	return 0;
}

static void nbdc_close_done(void *cb_arg, int rc)
{
}

void bdev_nbdc_handle_close(struct nbd_handle *h)
{
	if (h == NULL) {
		return;
	}
	/* nbd_close() of a connected handle closes the socket without waiting: fine inline
	 * when the pool cannot take it. */
	if (keel_spawn_blocking(nbdc_close_blocking, h, nbdc_close_done, NULL) != 0) {
		nbd_close(h);
	}
}
