/*
 * NBD wire format (NetworkBlockDevice/nbd doc/proto.md): every constant and header
 * keel speaks, in one place. All integers on the wire are big-endian; the packed
 * structs below mirror the byte layout and are filled with htobe*()/be*toh().
 *
 * keel implements the fixed-newstyle handshake, STARTTLS (nbd_tls.c), simple and
 * structured replies, extended headers (nbd_ext.c) and the base:allocation meta context;
 * what it does not speak is refused with NBD_REP_ERR_UNSUP.
 */
#ifndef KEEL_NBD_PROTO_H
#define KEEL_NBD_PROTO_H

#include <stdint.h>

/* ---- handshake magics ---- */
#define NBD_MAGIC 0x4e42444d41474943ULL      /* "NBDMAGIC", first 8 bytes from the server */
#define NBD_OPTS_MAGIC 0x49484156454f5054ULL /* "IHAVEOPT": newstyle greeting and option prefix */
#define NBD_REP_MAGIC 0x0003e889045565a9ULL  /* option reply */

/* ---- handshake flags (server -> client, u16) ---- */
#define NBD_FLAG_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_NO_ZEROES (1u << 1)

/* ---- client flags (client -> server, u32); any other bit: drop the connection ---- */
#define NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_C_NO_ZEROES (1u << 1)
#define NBD_FLAG_C_KNOWN (NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)

/* ---- options ---- */
#define NBD_OPT_EXPORT_NAME 1
#define NBD_OPT_ABORT 2
#define NBD_OPT_LIST 3
#define NBD_OPT_PEEK_EXPORT 4 /* withdrawn */
#define NBD_OPT_STARTTLS 5
#define NBD_OPT_INFO 6
#define NBD_OPT_GO 7
#define NBD_OPT_STRUCTURED_REPLY 8
#define NBD_OPT_LIST_META_CONTEXT 9
#define NBD_OPT_SET_META_CONTEXT 10
#define NBD_OPT_EXTENDED_HEADERS 11

/* ---- option reply types; errors have bit 31 set ---- */
#define NBD_REP_ACK 1u
#define NBD_REP_SERVER 2u
#define NBD_REP_INFO 3u
#define NBD_REP_META_CONTEXT 4u
#define NBD_REP_FLAG_ERROR (1u << 31)
#define NBD_REP_ERR_UNSUP (NBD_REP_FLAG_ERROR | 1u)
#define NBD_REP_ERR_POLICY (NBD_REP_FLAG_ERROR | 2u)
#define NBD_REP_ERR_INVALID (NBD_REP_FLAG_ERROR | 3u)
#define NBD_REP_ERR_PLATFORM (NBD_REP_FLAG_ERROR | 4u)
#define NBD_REP_ERR_TLS_REQD (NBD_REP_FLAG_ERROR | 5u)
#define NBD_REP_ERR_UNKNOWN (NBD_REP_FLAG_ERROR | 6u)
#define NBD_REP_ERR_SHUTDOWN (NBD_REP_FLAG_ERROR | 7u)
#define NBD_REP_ERR_BLOCK_SIZE_REQD (NBD_REP_FLAG_ERROR | 8u)
#define NBD_REP_ERR_TOO_BIG (NBD_REP_FLAG_ERROR | 9u)
#define NBD_REP_ERR_EXT_HEADER_REQD (NBD_REP_FLAG_ERROR | 10u)

/* ---- NBD_REP_INFO payload types (u16 first in the payload) ---- */
#define NBD_INFO_EXPORT 0      /* u64 size, u16 transmission flags */
#define NBD_INFO_NAME 1        /* name */
#define NBD_INFO_DESCRIPTION 2 /* description */
#define NBD_INFO_BLOCK_SIZE 3  /* u32 minimum, u32 preferred, u32 maximum payload */

/* ---- transmission flags (u16, EXPORT_NAME reply and NBD_INFO_EXPORT) ---- */
#define NBD_FLAG_HAS_FLAGS (1u << 0)
#define NBD_FLAG_READ_ONLY (1u << 1)
#define NBD_FLAG_SEND_FLUSH (1u << 2)
#define NBD_FLAG_SEND_FUA (1u << 3)
#define NBD_FLAG_ROTATIONAL (1u << 4)
#define NBD_FLAG_SEND_TRIM (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1u << 6)
#define NBD_FLAG_SEND_DF (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN (1u << 8)
#define NBD_FLAG_SEND_RESIZE (1u << 9)
#define NBD_FLAG_SEND_CACHE (1u << 10)
#define NBD_FLAG_SEND_FAST_ZERO (1u << 11)

/* ---- structured replies ---- */
#define NBD_REPLY_FLAG_DONE (1u << 0)
#define NBD_REPLY_TYPE_NONE 0
#define NBD_REPLY_TYPE_OFFSET_DATA 1
#define NBD_REPLY_TYPE_OFFSET_HOLE 2
#define NBD_REPLY_TYPE_BLOCK_STATUS 5
#define NBD_REPLY_TYPE_BLOCK_STATUS_EXT 6 /* extended headers: 64-bit descriptors */
#define NBD_REPLY_TYPE_ERROR ((1u << 15) + 1)
#define NBD_REPLY_TYPE_ERROR_OFFSET ((1u << 15) + 2)

/* ---- meta contexts ---- */
#define NBD_META_BASE_ALLOCATION "base:allocation"
/** The id keel gives base:allocation in NBD_REP_META_CONTEXT and block status chunks. */
#define NBD_META_ID_BASE_ALLOCATION 1u
#define NBD_STATE_HOLE (1u << 0)
#define NBD_STATE_ZERO (1u << 1)

/* ---- transmission ---- */
#define NBD_REQUEST_MAGIC 0x25609513u
#define NBD_SIMPLE_REPLY_MAGIC 0x67446698u
#define NBD_STRUCTURED_REPLY_MAGIC 0x668e33efu
/* NBD_OPT_EXTENDED_HEADERS: every request and reply uses these (nbd_ext.c) */
#define NBD_EXTENDED_REQUEST_MAGIC 0x21e41c71u
#define NBD_EXTENDED_REPLY_MAGIC 0x6e8a278cu

#define NBD_CMD_READ 0
#define NBD_CMD_WRITE 1
#define NBD_CMD_DISC 2
#define NBD_CMD_FLUSH 3
#define NBD_CMD_TRIM 4
#define NBD_CMD_CACHE 5
#define NBD_CMD_WRITE_ZEROES 6
#define NBD_CMD_BLOCK_STATUS 7

#define NBD_CMD_FLAG_FUA (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE (1u << 1)
#define NBD_CMD_FLAG_DF (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE (1u << 3)
#define NBD_CMD_FLAG_FAST_ZERO (1u << 4)
#define NBD_CMD_FLAG_PAYLOAD_LEN (1u << 5) /* extended headers: length is a payload's */

/* ---- error values on the wire (a restricted set, not the host's errno) ---- */
#define NBD_EPERM 1
#define NBD_EIO 5
#define NBD_ENOMEM 12
#define NBD_EINVAL 22
#define NBD_ENOSPC 28
#define NBD_EOVERFLOW 75
#define NBD_ENOTSUP 95
#define NBD_ESHUTDOWN 108

/* ---- limits keel applies ---- */
/** Largest READ/WRITE payload (what the kernel, qemu and nbdcopy send at most). */
#define NBD_MAX_PAYLOAD (32u << 20)
/**
 * A rejected WRITE up to this length has its payload read and discarded so the
 * connection stays usable; a longer one can only be a broken client: hard disconnect.
 */
#define NBD_MAX_DISCARD_PAYLOAD (2u * NBD_MAX_PAYLOAD)
/** Longest option payload keel reads; longer ones are skipped with NBD_REP_ERR_TOO_BIG. */
#define NBD_MAX_OPT_LEN 8192u
/** Option payloads beyond this are not even skipped: hard disconnect. */
#define NBD_MAX_OPT_SKIP (1u << 20)
/** Longest export name (the spec says SHOULD <= 256). */
#define NBD_MAX_NAME_LEN 256u
/** Zero padding after the EXPORT_NAME reply unless NBD_FLAG_C_NO_ZEROES. */
#define NBD_EXPORT_NAME_PAD 124u

/** Extents one BLOCK_STATUS reply carries at most (the spec asks for <= 2^20). */
#define NBD_MAX_EXTENTS 2048u

/* ---- packed wire structs ---- */

/** Server greeting: NBD_MAGIC, NBD_OPTS_MAGIC, handshake flags. 18 bytes. */
struct nbd_greeting {
	uint64_t magic;
	uint64_t opts_magic;
	uint16_t flags;
} __attribute__((packed));

/** Client option header, followed by \p len bytes of data. 16 bytes. */
struct nbd_opt_hdr {
	uint64_t magic;
	uint32_t option;
	uint32_t len;
} __attribute__((packed));

/** Option reply header, followed by \p len bytes. 20 bytes. */
struct nbd_opt_reply {
	uint64_t magic;
	uint32_t option;
	uint32_t type;
	uint32_t len;
} __attribute__((packed));

/** Reply to NBD_OPT_EXPORT_NAME (then 124 zero bytes unless NO_ZEROES). 10 bytes. */
struct nbd_export_name_reply {
	uint64_t size;
	uint16_t flags;
} __attribute__((packed));

/** NBD_INFO_EXPORT payload. 12 bytes. */
struct nbd_info_export {
	uint16_t type;
	uint64_t size;
	uint16_t flags;
} __attribute__((packed));

/** NBD_INFO_BLOCK_SIZE payload. 14 bytes. */
struct nbd_info_block_size {
	uint16_t type;
	uint32_t min;
	uint32_t preferred;
	uint32_t max;
} __attribute__((packed));

/** Request header, followed by \p len bytes for WRITE only. 28 bytes. */
struct nbd_request {
	uint32_t magic;
	uint16_t flags;
	uint16_t type;
	uint64_t cookie;
	uint64_t offset;
	uint32_t len;
} __attribute__((packed));

/** Extended request header (NBD_OPT_EXTENDED_HEADERS): a 64-bit length. 32 bytes. */
struct nbd_extended_request {
	uint32_t magic;
	uint16_t flags;
	uint16_t type;
	uint64_t cookie;
	uint64_t offset;
	uint64_t len;
} __attribute__((packed));

/** Simple reply header, followed by the data of a successful READ. 16 bytes. */
struct nbd_simple_reply {
	uint32_t magic;
	uint32_t error;
	uint64_t cookie;
} __attribute__((packed));

/** Structured reply chunk header, followed by \p length bytes of payload. 20 bytes. */
struct nbd_structured_reply {
	uint32_t magic;
	uint16_t flags;
	uint16_t type;
	uint64_t cookie;
	uint32_t length;
} __attribute__((packed));

/**
 * Extended reply chunk header, the only reply format once extended headers are
 * negotiated: \p offset echoes the request's, \p length is the payload's. 32 bytes.
 */
struct nbd_extended_reply {
	uint32_t magic;
	uint16_t flags;
	uint16_t type;
	uint64_t cookie;
	uint64_t offset;
	uint64_t length;
} __attribute__((packed));

/** One extended block status descriptor (BLOCK_STATUS_EXT). 16 bytes. */
struct nbd_block_descriptor_ext {
	uint64_t length;
	uint64_t flags;
} __attribute__((packed));

/** One block status descriptor. 8 bytes. */
struct nbd_block_descriptor {
	uint32_t length;
	uint32_t flags;
} __attribute__((packed));

_Static_assert(sizeof(struct nbd_greeting) == 18, "greeting is 18 bytes");
_Static_assert(sizeof(struct nbd_opt_hdr) == 16, "option header is 16 bytes");
_Static_assert(sizeof(struct nbd_opt_reply) == 20, "option reply is 20 bytes");
_Static_assert(sizeof(struct nbd_export_name_reply) == 10, "export name reply is 10 bytes");
_Static_assert(sizeof(struct nbd_info_export) == 12, "NBD_INFO_EXPORT is 12 bytes");
_Static_assert(sizeof(struct nbd_info_block_size) == 14, "NBD_INFO_BLOCK_SIZE is 14 bytes");
_Static_assert(sizeof(struct nbd_request) == 28, "request is 28 bytes");
_Static_assert(sizeof(struct nbd_extended_request) == 32, "extended request is 32 bytes");
_Static_assert(sizeof(struct nbd_extended_reply) == 32, "extended reply is 32 bytes");
_Static_assert(sizeof(struct nbd_block_descriptor_ext) == 16, "extended descriptor is 16 bytes");
_Static_assert(sizeof(struct nbd_simple_reply) == 16, "simple reply is 16 bytes");
_Static_assert(sizeof(struct nbd_structured_reply) == 20, "structured reply is 20 bytes");
_Static_assert(sizeof(struct nbd_block_descriptor) == 8, "block descriptor is 8 bytes");

#endif /* KEEL_NBD_PROTO_H */
