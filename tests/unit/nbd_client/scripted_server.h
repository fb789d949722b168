/*
 * A tiny NBD server on a unix socket, run on its own pthread, whose behaviour the test
 * switches at any moment: answer correctly (a RAM export), stay silent, close the
 * connection, or answer with a broken reply. It serves one connection at a time, which
 * is all the client under test makes from one keel thread.
 */
#ifndef KEEL_UT_SCRIPTED_SERVER_H
#define KEEL_UT_SCRIPTED_SERVER_H

#include <stdbool.h>
#include <stdint.h>

enum ss_mode {
	SS_ANSWER,    /* a correct simple reply per request */
	SS_SILENT,    /* read requests, never answer */
	SS_CLOSE,     /* close the connection at the next request */
	SS_BAD_MAGIC, /* a reply with a wrong magic number */
	SS_BAD_COOKIE /* a reply to a request that was never made */
};

/** Start serving \p size bytes (zeroed) on unix socket \p path. \return 0 or -errno. */
int ss_start(const char *path, uint64_t size);
/** What the server does with the next request (any connection). */
void ss_set_mode(enum ss_mode mode);
/** Whether the next handshakes advertise CAN_MULTI_CONN (true at start). */
void ss_set_multi_conn(bool on);
/** Connections accepted so far. */
unsigned ss_connections(void);
/** Stop the server and free it. */
void ss_stop(void);

#endif /* KEEL_UT_SCRIPTED_SERVER_H */
