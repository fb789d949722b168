/*
 * keeld's Prometheus endpoint: GET /metrics over HTTP (libmicrohttpd) on a thread of
 * its own. Off unless keeld is started with --metrics-listen. What it serves and how
 * to scrape it: docs/monitoring.md.
 *
 * Threading: the HTTP server runs on libmicrohttpd's internal thread, never on a
 * reactor. For each scrape it asks the main keel thread for a snapshot by message
 * (metrics_collect.c gathers it with the same calls volume_get, bdev_get_iostat,
 * framework_get_reactors and nbd_get_exports use), waits for it at most a bounded time,
 * and renders the text itself; a daemon that does not answer in time gets the
 * scraper a 503, never a hung connection.
 */
#ifndef KEEL_DAEMON_METRICS_H
#define KEEL_DAEMON_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/** Longest --metrics-listen value accepted (an IPv6 address in brackets and a port). */
#define KEELD_METRICS_ADDR_MAX 64
/** How long a scrape waits for the daemon's snapshot before it answers 503. */
#define KEELD_METRICS_DEFAULT_TIMEOUT_MS 5000u
/** HTTP connections open at once; more wait in the listen backlog. */
#define KEELD_METRICS_DEFAULT_MAX_CONNECTIONS 16u
/** An HTTP connection idle this long is closed (seconds). */
#define KEELD_METRICS_IDLE_TIMEOUT_S 10u
/** Bytes a request's line and headers may take; a larger request gets 431. */
#define KEELD_METRICS_MAX_REQUEST_BYTES (16u * 1024u)

/**
 * Parse a listen address: "PORT" (then 127.0.0.1), "IPV4:PORT", "[IPV6]:PORT" or
 * "localhost:PORT". Hosts are numeric (no DNS lookup). Port 0 takes a free port.
 * Any thread. \return 0, or -EINVAL with \p why (may be NULL) saying what is wrong.
 */
int keeld_metrics_addr_parse(const char *text, struct sockaddr_storage *addr, socklen_t *len,
			     char *why, size_t whylen);

/** Whether \p addr is a loopback address (127.0.0.0/8 or ::1). */
bool keeld_metrics_addr_is_loopback(const struct sockaddr_storage *addr);

struct keeld_metrics_opts {
	const char *listen;       /**< as keeld_metrics_addr_parse() takes it */
	uint32_t timeout_ms;      /**< 0: KEELD_METRICS_DEFAULT_TIMEOUT_MS */
	uint32_t max_connections; /**< 0: KEELD_METRICS_DEFAULT_MAX_CONNECTIONS */
	/**
	 * Test hook: ask for a snapshot instead of messaging the main keel thread; it
	 * must arrange keeld_metrics_snapshot_ready() to be called (or never, to test
	 * the timeout). NULL: the real collection.
	 */
	int (*ask_fn)(void);
};

/**
 * Start serving. Main keel thread (keeld's startup), once. \return 0, or a negative
 * errno with \p err saying why (-EINVAL: bad address; -EADDRINUSE; -ENOMEM; others
 * from libmicrohttpd's bind).
 */
int keeld_metrics_start(const struct keeld_metrics_opts *opts, char *err, size_t errlen);

/**
 * Stop serving: a scrape waiting for a snapshot is answered 503 at once, the HTTP
 * thread is joined. Idempotent; main keel thread (keeld's shutdown) or the thread that
 * started it. A snapshot still being gathered is freed when it completes.
 */
void keeld_metrics_stop(void);

/** The port the server listens on (useful with port 0), or 0 when not running. */
uint16_t keeld_metrics_port(void);

#endif /* KEEL_DAEMON_METRICS_H */
