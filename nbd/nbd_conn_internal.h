/*
 * What the pieces of one NBD connection share, and nothing else includes: the
 * connection and request structs and the functions one piece calls in another.
 *
 *   nbd_conn.c          lifetime: create, the poller, soft/hard close, deadlines
 *   nbd_handshake.c     fixed-newstyle option haggling and its reply bytes
 *   nbd_transmission.c  requests: parse, check, submit to the bdev, queue the reply
 *   nbd_sock.c          the socket: recv/recvmsg into buffers, send/sendmsg, EPOLLOUT
 *
 * Everything here runs on the connection's own keel thread (the one that created it);
 * nothing takes a lock. Other nbd/ files, the tests and the fuzz harness use
 * nbd_internal.h, never this header.
 */
#ifndef KEEL_NBD_CONN_INTERNAL_H
#define KEEL_NBD_CONN_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/uio.h>

#include "keel/bdev.h"
#include "keel/reactor.h"
#include "nbd/nbd_internal.h"
#include "nbd/nbd_proto.h"

/* Requests a connection keeps in flight; the kernel sends up to 128, nbdcopy 64. */
#define NBD_CONN_MAX_REQS 256u
/*
 * The receive buffer starts small and grows once a recv() fills it (a client with
 * requests queued). keeld locks its memory (mlockall), so every byte here is resident
 * for each connected client, idle or not: at a fixed 256 KiB an idle client cost
 * 311 KiB, more than the 256 KiB an exported volume may cost. 16 KiB holds the largest
 * option (8 KiB) and any header; 64 KiB holds 15 queued 4 KiB writes with their
 * headers (payloads of 16 KiB and more are received straight into their buffers).
 */
#define NBD_CONN_RBUF_MIN (16u * 1024u)
#define NBD_CONN_RBUF_MAX (64u * 1024u)
/* iovecs one sendmsg() of replies carries at most (header and data per reply). */
#define NBD_CONN_IOV_MAX 1024u

enum nbd_phase {
	NBD_PHASE_HANDSHAKE,
	NBD_PHASE_TRANSMISSION,
};

enum nbd_hs_state {
	NBD_HS_CFLAGS,
	NBD_HS_OPT,
	NBD_HS_OPT_SKIP,
};

enum nbd_rx_state {
	NBD_RX_HEADER,
	NBD_RX_PAYLOAD,
	NBD_RX_DISCARD,
};

/* What a request does against the bdev; FUA emulation turns trims into flushes. */
enum nbd_op {
	NBD_OP_NONE,
	NBD_OP_READ,
	NBD_OP_WRITE,
	NBD_OP_FLUSH,
	NBD_OP_UNMAP,
	NBD_OP_WRITE_ZEROES,
	NBD_OP_BLOCK_STATUS,
};

/*
 * The wire bytes in front of a reply's payload: a simple reply, or one structured or
 * extended chunk header with the fixed part of its payload (OFFSET_DATA's offset,
 * ERROR's error and message length, BLOCK_STATUS's context id and, EXT, count). Contiguous, so header and data
 * leave in one sendmsg() as two iovecs. Both headers keep the cookie at bytes 8..15:
 * it is stored there when the request is parsed and never rewritten (256 requests per
 * connection, so 8 bytes less each is 2 KiB less per client).
 */
union nbd_reply_hdr {
	struct nbd_simple_reply simple;
	struct nbd_structured_reply chunk;
	struct nbd_extended_reply ext;
	uint8_t bytes[40]; /* the extended header (32) and the longest fixed part (8) */
};

struct nbd_tls_session;

struct nbd_req {
	struct nbd_conn *conn;
	TAILQ_ENTRY(nbd_req) link;
	union nbd_reply_hdr rhdr; /* wire bytes of the reply header; the cookie from parse on */
	const void *rdata;        /* payload sent after the header: read data, extents, message */
	const char *errmsg;       /* why the request was refused (static string), or NULL */
	uint64_t offset;
	uint32_t rdata_len; /* bytes at rdata */
	uint32_t err;       /* wire errno of a refused write whose payload is discarded */
	uint64_t len;       /* 64 bits only with extended headers (trim, zeroes, status) */
	uint32_t buf_len;   /* bytes of buf counted in the connection's buf_bytes */
	uint32_t got;       /* payload bytes received so far */
	uint16_t type;      /* NBD_CMD_* */
	uint16_t flags;     /* NBD_CMD_FLAG_* */
	enum nbd_op op;
	bool flush_after; /* FUA on trim / write_zeroes: flush the range after it */
	bool in_bdev;
	uint8_t rhdr_len;
	int buf_class;   /* -1: allocated for this request only */
	uint32_t budget; /* bytes of the buffer budget this request holds */
	void *buf;
	struct iovec iov;
};

TAILQ_HEAD(nbd_req_list, nbd_req);

struct nbd_conn {
	int fd;
	struct keel_poller *poller;
	uint32_t events;
	const struct nbd_export_info *exp;
	struct keel_bdev_desc *desc;
	struct keel_io_channel *ch;
	uint64_t size;
	uint32_t block_size;
	size_t buf_align;
	uint16_t tflags;
	char label[300];
	nbd_conn_done_fn done_fn;
	void *done_ctx;

	enum nbd_phase phase;
	enum nbd_hs_state hs;
	bool no_zeroes;
	bool structured;      /* NBD_OPT_STRUCTURED_REPLY acknowledged */
	bool meta_allocation; /* base:allocation selected by NBD_OPT_SET_META_CONTEXT */
	bool extended;        /* NBD_OPT_EXTENDED_HEADERS acknowledged (implies structured) */
	uint32_t skip_option;
	uint32_t skip_remaining;

	/* receive side */
	uint8_t *rbuf;
	size_t rbuf_size; /* NBD_CONN_RBUF_MIN, or _MAX once a recv() filled it */
	size_t rpos;
	size_t rlen;
	enum nbd_rx_state rx;
	struct nbd_req *rx_req;
	uint64_t discard_remaining;
	bool rx_stop;    /* no more reading (DISC, EOF, ABORT, error) */
	bool rx_stalled; /* no free request: wait for one */
	bool rx_drained; /* the last recv came back short or empty: epoll reports more */

	/* send side */
	uint8_t *wbuf; /* handshake bytes */
	size_t wlen;
	size_t wsent;
	size_t wcap;
	struct nbd_req_list replies;
	size_t reply_sent; /* bytes of the first reply already sent */
	bool tx_blocked;   /* last send hit EAGAIN */
	bool tx_dead;      /* peer gone or hard close: replies are dropped */
	bool close_after_flush;

	struct nbd_req_list nomem;
	struct nbd_req *reqs;
	struct nbd_req **free_reqs;
	uint32_t nfree;
	uint32_t in_bdev;
	uint64_t buf_bytes; /* payload bytes held by requests */
	uint32_t reserved;  /* budget taken for the request being parsed */
	bool budget_wait;   /* the next request waits for the buffer budget */
	bool cache_ref;     /* holds a reference on this thread's buffer cache */

	bool closing;
	bool shut;
	uint64_t created_ns;
	/* deadlines: when the client started keeping us waiting (0: it does not) */
	uint64_t tx_wait_since_ns; /* replies it does not read */
	uint64_t rx_wait_since_ns; /* a write payload it does not send */
	uint64_t timer_due_ns;     /* when the poller's timer fires (0: not armed) */
	char *refuse;              /* refuse the first option with this message */

	/* TLS (nbd_tls.c): the session while its handshake runs, then once records flow */
	struct nbd_tls_session *tls_pending;
	struct nbd_tls_session *tls;
};

/* Socket bytes of an export's connection (nbd_export_traffic); kernel devices have none. */
static inline void nbd_conn_count_in(struct nbd_conn *conn, ssize_t n)
{
	if (conn->exp != NULL && conn->exp->traffic != NULL) {
		nbd_traffic_add(&conn->exp->traffic->bytes_in, n);
	}
}

static inline void nbd_conn_count_out(struct nbd_conn *conn, ssize_t n)
{
	if (conn->exp != NULL && conn->exp->traffic != NULL) {
		nbd_traffic_add(&conn->exp->traffic->bytes_out, n);
	}
}

/*
 * Lifetime (nbd_conn.c)
 */
/** Soft close: stop reading, deliver the replies of requests in flight, then close. */
void nbd_conn_close_soft(struct nbd_conn *conn);
/** Hard close: nothing more is read or sent; requests in flight still finish. */
void nbd_conn_abort(struct nbd_conn *conn);

/*
 * Handshake (nbd_handshake.c)
 */
/** Append \p len bytes to the handshake send buffer. \return 0 or -ENOMEM. */
int nbd_wbuf_append(struct nbd_conn *conn, const void *data, size_t len);
/** Queue one option reply (header and \p len bytes of \p data). \return 0 or -ENOMEM. */
int nbd_send_opt_reply(struct nbd_conn *conn, uint32_t option, uint32_t type, const void *data,
		       size_t len);
/** Queue an error reply of \p type with \p msg (logged). \return 0 or -ENOMEM. */
int nbd_send_opt_error(struct nbd_conn *conn, uint32_t option, uint32_t type, const char *msg);
/** Whether \p name (\p len bytes, not terminated) names the connection's export. */
bool nbd_name_matches(const struct nbd_conn *conn, const uint8_t *name, uint32_t len);
/** The transmission flags this connection is told (the export's plus negotiated ones). */
uint16_t nbd_conn_tflags(const struct nbd_conn *conn);

/*
 * Structured replies and meta contexts (nbd_meta_context.c): the options. Each answers
 * in the send buffer and aborts the connection only when it cannot (no memory).
 */
void nbd_opt_structured_reply(struct nbd_conn *conn, uint32_t len);
void nbd_opt_meta_context(struct nbd_conn *conn, uint32_t option, const uint8_t *data,
			  uint32_t len);
/**
 * Extended headers (nbd_ext.c): the option. Answers in the send buffer; aborts the
 * connection only when it cannot (no memory).
 */
void nbd_opt_extended_headers(struct nbd_conn *conn, uint32_t len);
/**
 * Consume the client flags and options in the receive buffer; answers go to the send
 * buffer. Stops when the buffer holds no complete option, when too many reply bytes
 * wait (rx_stalled), or when an option moved the connection to transmission.
 */
void nbd_parse_handshake(struct nbd_conn *conn);

/*
 * Transmission (nbd_transmission.c)
 */
/** Give back a request's payload buffer and its share of the buffer budget. */
void nbd_req_free_buf(struct nbd_req *req);
/** Return \p req (and its buffer) to the connection's free list. */
void nbd_req_put(struct nbd_req *req);
/** Send \p req to the bdev; its reply is queued when it completes or fails. */
void nbd_req_submit(struct nbd_req *req);
/** Submit again the requests the bdev refused with -ENOMEM. \return 1 if any went. */
int nbd_conn_retry_nomem(struct nbd_conn *conn);
/**
 * Queue the reply of \p req: \p nbd_err 0 (success: read data, extents) or a wire errno,
 * as a simple reply or structured chunks as the connection negotiated (nbd_reply.c).
 */
void nbd_req_reply(struct nbd_req *req, uint32_t nbd_err);
/**
 * Fill the reply header of \p req (nbd_reply.c) for \p nbd_err. Called by
 * nbd_req_reply; nothing else.
 */
void nbd_reply_build(struct nbd_req *req, uint32_t nbd_err);
/**
 * Block status (nbd_block_status.c): take the extent buffer and submit (or answer at
 * once when the bdev cannot tell). \return 0 (submitted or replied) or the wire errno
 * to answer with.
 */
int nbd_block_status_submit(struct nbd_req *req);
/** Extents the buffer of a block status request holds (1 with REQ_ONE). */
uint32_t nbd_block_status_max(const struct nbd_req *req);
/**
 * Turn the bdev's answer in req->buf into wire descriptors (in place) and set the
 * reply length. -ENOTSUP (the bdev cannot tell) becomes one data extent.
 * \return the status to reply with.
 */
int nbd_block_status_encode(struct nbd_req *req, int status);
/** A request header in host order, compact or extended (nbd_ext.c). */
struct nbd_req_hdr {
	uint64_t cookie; /* wire bytes, echoed unchanged */
	uint64_t offset;
	uint64_t len;
	uint16_t flags;
	uint16_t type;
	bool magic_ok; /* the magic of the negotiated header format */
	uint32_t magic;
};
/** Bytes of one request header on this connection: 28, or 32 with extended headers. */
size_t nbd_req_hdr_size(const struct nbd_conn *conn);
/** Decode the nbd_req_hdr_size() bytes at \p wire into \p hdr. */
void nbd_req_hdr_decode(const struct nbd_conn *conn, const uint8_t *wire, struct nbd_req_hdr *hdr);
/**
 * Write the extended chunk header of \p req (DONE, \p type, the request's offset,
 * \p length bytes of payload). Called by nbd_reply_build; nothing else.
 */
void nbd_reply_ext_header(struct nbd_req *req, uint16_t type, uint64_t length);
/** Consume the requests and payloads in the receive buffer. */
void nbd_parse_transmission(struct nbd_conn *conn);
/**
 * Take the bdev's geometry, an I/O channel and the request array, so requests can be
 * served. \return 0, -ENODEV (no channel) or -ENOMEM; on error nothing is held.
 */
int nbd_conn_setup_transmission(struct nbd_conn *conn);
/** Switch to the transmission phase (after nbd_conn_setup_transmission succeeded). */
void nbd_conn_enter_transmission(struct nbd_conn *conn);

/*
 * Socket (nbd_sock.c)
 */
/** Send pending handshake bytes, then every queued reply. \return 1 if it did work. */
int nbd_conn_tx(struct nbd_conn *conn);
/** Read from the socket and feed the phase's parser. \return 1 if it did work. */
int nbd_conn_rx(struct nbd_conn *conn);
/** Ask epoll for EPOLLIN while reading, EPOLLOUT while a send is blocked. */
void nbd_conn_update_events(struct nbd_conn *conn);

#endif /* KEEL_NBD_CONN_INTERNAL_H */
