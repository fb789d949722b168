/*
 * Internals of the NBD client bdev shared by its files: the connect job (blocking
 * pool) and the disk. See include/keel/bdev_nbd_client.h for the model.
 */
#ifndef KEEL_BDEV_NBD_CLIENT_INTERNAL_H
#define KEEL_BDEV_NBD_CLIENT_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

struct nbd_handle;
struct nbdc_channel;

/** One connect attempt. Filled by its owner, run by bdev_nbdc_connect_blocking. */
struct nbdc_conn_job {
	char *uri;
	uint32_t timeout_ms;
	struct nbd_handle *h; /**< the connected handle on success */
	char err[512];        /**< why it failed, for a person */
	/** The channel waiting for it; NULL once that channel is gone (the job's done
	 * callback then closes the handle and frees the job). */
	struct nbdc_channel *ch;
	/* what the server said (on success) */
	uint64_t size;
	int64_t min_block, pref_block, max_block;
	bool read_only, can_flush, can_fua, can_trim, can_zero, can_multi_conn;
};

/**
 * Connect job->h to job->uri within job->timeout_ms and read the export's properties.
 * Blocking pool. \return 0, or a negative errno with job->err filled and job->h NULL.
 */
int bdev_nbdc_connect_blocking(void *arg);

/** Close an idle handle (no command in flight) on the blocking pool. NULL is a no-op. */
void bdev_nbdc_handle_close(struct nbd_handle *h);

#endif /* KEEL_BDEV_NBD_CLIENT_INTERNAL_H */
