#!/usr/bin/python3
"""Structured replies, base:allocation and the newer commands against keeld, for
keel's e2e tests (tests/e2e/test_nbd_structured.sh).

usage: structured_client.py SOCKET EXPORT SCENARIO [ARGS]
  options          drive the handshake option by option over a raw socket
                   (meta contexts before and after STRUCTURED_REPLY, duplicate
                   STRUCTURED_REPLY, wrong export, SET replacing the selection),
                   then check the chunks of READ, BLOCK_STATUS and an error.
  libnbd on|off    libnbd with structured replies requested or not: what was
                   negotiated, reads and writes, then with the client's own checks off
                   (strict mode 0) the requests keeld must refuse: unadvertised
                   commands, bad flags, out of range, misaligned, zero length, DF
                   without structured replies, block status without a context;
                   REQ_ONE, fast zero and cache that it must accept.
Exit 0 when the server behaved as the NBD protocol document demands. One
interpreter per scenario, never one per request.
"""
import errno
import struct
import sys

import hostile_client
from hostile_client import connect, recv_exact

IHAVEOPT = 0x49484156454F5054
REP_MAGIC = 0x3E889045565A9
REQ_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
CHUNK_MAGIC = 0x668E33EF
OPT_GO, OPT_SR, OPT_LIST_META, OPT_SET_META = 7, 8, 9, 10
REP_ACK, REP_META = 1, 4
REP_ERR_INVALID, REP_ERR_UNKNOWN = 0x80000003, 0x80000006
CMD_READ, CMD_FLUSH, CMD_BLOCK_STATUS = 0, 3, 7
CHUNK_NONE, CHUNK_DATA, CHUNK_BS, CHUNK_ERROR = 0, 1, 5, 0x8001
FLAG_DONE = 1
ALLOC = b"base:allocation"


def die(msg):
    print("structured_client: FAIL: " + msg)
    sys.exit(1)


hostile_client.die = die  # the shared socket helpers report as this client


def option(s, opt, data=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)
    replies = []
    while True:
        magic, o, rtype, length = struct.unpack(">QIII", recv_exact(s, 20))
        if magic != REP_MAGIC or o != opt:
            die("bad option reply (magic %x option %d)" % (magic, o))
        replies.append((rtype, recv_exact(s, length)))
        if rtype == REP_ACK or rtype & 0x80000000:
            return replies


def meta_data(name, queries):
    n = name.encode()
    out = struct.pack(">I", len(n)) + n + struct.pack(">I", len(queries))
    for q in queries:
        out += struct.pack(">I", len(q)) + q
    return out


def expect(replies, types, what):
    got = [t for t, _ in replies]
    if got != types:
        die("%s: replies %s, wanted %s" % (what, [hex(t) for t in got], [hex(t) for t in types]))


def go(s, name):
    n = name.encode()
    replies = option(s, OPT_GO, struct.pack(">I", len(n)) + n + struct.pack(">H", 0))
    if replies[-1][0] != REP_ACK:
        die("GO refused: %r" % (replies,))
    for rtype, data in replies:
        if rtype == 3 and struct.unpack(">H", data[:2])[0] == 0:
            return struct.unpack(">QH", data[2:12])
    die("GO without NBD_INFO_EXPORT")


def request(s, cmd, offset, length, flags=0, cookie=1):
    s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, flags, cmd, cookie, offset, length))


def chunk(s):
    magic, flags, ctype, cookie, length = struct.unpack(">IHHQI", recv_exact(s, 20))
    if magic != CHUNK_MAGIC:
        die("expected a structured chunk, got magic %x" % magic)
    return flags, ctype, cookie, recv_exact(s, length)


def scenario_options(path, name):
    s = connect(path)
    expect(option(s, OPT_LIST_META, meta_data(name, [])), [REP_ERR_INVALID], "LIST before SR")
    expect(option(s, OPT_SET_META, meta_data(name, [ALLOC])), [REP_ERR_INVALID],
           "SET before SR")
    expect(option(s, OPT_SR, b"x"), [REP_ERR_INVALID], "SR with data")
    expect(option(s, OPT_SR), [REP_ACK], "SR")
    expect(option(s, OPT_SR), [REP_ERR_INVALID], "duplicate SR")
    r = option(s, OPT_LIST_META, meta_data(name, []))
    expect(r, [REP_META, REP_ACK], "LIST all")
    if r[0][1][4:] != ALLOC:
        die("LIST all: %r" % (r[0][1],))
    expect(option(s, OPT_LIST_META, meta_data(name, [b"base:"])), [REP_META, REP_ACK],
           "LIST base:")
    expect(option(s, OPT_LIST_META, meta_data(name, [b"qemu:dirty-bitmap:x"])), [REP_ACK],
           "LIST unknown namespace")
    expect(option(s, OPT_LIST_META, meta_data("nope", [])), [REP_ERR_UNKNOWN],
           "LIST wrong export")
    expect(option(s, OPT_SET_META, meta_data("nope", [ALLOC])), [REP_ERR_UNKNOWN],
           "SET wrong export")
    expect(option(s, OPT_SET_META, meta_data(name, [b"base:"])), [REP_ACK],
           "SET takes no namespace wildcard")
    r = option(s, OPT_SET_META, meta_data(name, [ALLOC]))
    expect(r, [REP_META, REP_ACK], "SET base:allocation")
    ctx_id = struct.unpack(">I", r[0][1][:4])[0]
    # SET replaces: an empty SET leaves nothing selected for the GO below.
    expect(option(s, OPT_SET_META, meta_data(name, [])), [REP_ACK], "SET nothing")
    size, tflags = go(s, name)
    if not tflags & (1 << 7):
        die("SEND_DF not advertised with structured replies")
    request(s, CMD_BLOCK_STATUS, 0, 4096, cookie=5)
    flags, ctype, cookie, data = chunk(s)
    err, mlen = struct.unpack(">IH", data[:6])
    if ctype != CHUNK_ERROR or cookie != 5 or err != errno.EINVAL or not flags & FLAG_DONE:
        die("block status without a context: type %x err %d" % (ctype, err))
    if mlen == 0 or len(data) != 6 + mlen:
        die("error chunk without a message")
    s.close()

    s = connect(path)
    expect(option(s, OPT_SR), [REP_ACK], "SR")
    r = option(s, OPT_SET_META, meta_data("", [ALLOC, ALLOC]))
    expect(r, [REP_META, REP_ACK], "SET base:allocation twice")
    ctx_id = struct.unpack(">I", r[0][1][:4])[0]
    go(s, name)
    request(s, CMD_BLOCK_STATUS, 0, 1 << 20, cookie=6)
    flags, ctype, cookie, data = chunk(s)
    if ctype != CHUNK_BS or cookie != 6 or not flags & FLAG_DONE:
        die("block status: type %x" % ctype)
    if struct.unpack(">I", data[:4])[0] != ctx_id or (len(data) - 4) % 8 or len(data) < 12:
        die("block status payload: %r" % data[:16])
    total = sum(struct.unpack(">I", data[i:i + 4])[0] for i in range(4, len(data), 8))
    if total > 1 << 20:
        die("extents beyond the request: %d" % total)
    request(s, CMD_READ, 4096, 8192, cookie=7)
    flags, ctype, cookie, data = chunk(s)
    if ctype != CHUNK_DATA or cookie != 7 or len(data) != 8 + 8192 or \
            struct.unpack(">Q", data[:8])[0] != 4096 or not flags & FLAG_DONE:
        die("read chunk: type %x len %d" % (ctype, len(data)))
    request(s, CMD_READ, size, 512, cookie=8)
    flags, ctype, cookie, data = chunk(s)
    if ctype != CHUNK_ERROR or struct.unpack(">I", data[:4])[0] != errno.EINVAL:
        die("read beyond the end: type %x" % ctype)
    request(s, CMD_FLUSH, 0, 0, cookie=9)
    magic, err, cookie = struct.unpack(">IIQ", recv_exact(s, 16))
    if magic != SIMPLE_MAGIC or err != 0 or cookie != 9:
        die("flush reply: magic %x err %d" % (magic, err))
    s.close()

    # Without structured replies: simple replies only; BLOCK_STATUS and DF are
    # unadvertised there and refused with EINVAL, and SEND_DF is not offered.
    s = connect(path)
    expect(option(s, OPT_SET_META, meta_data(name, [ALLOC])), [REP_ERR_INVALID], "SET")
    _, tflags = go(s, name)
    if tflags & (1 << 7):
        die("SEND_DF advertised without structured replies")
    for cmd, flags, cookie in ((CMD_BLOCK_STATUS, 0, 10), (CMD_READ, 1 << 2, 11)):
        request(s, cmd, 0, 4096, flags=flags, cookie=cookie)
        magic, err, got = struct.unpack(">IIQ", recv_exact(s, 16))
        if magic != SIMPLE_MAGIC or err != errno.EINVAL or got != cookie:
            die("command %d flags %x without SR: magic %x err %d" % (cmd, flags, magic, err))
    s.close()


def expect_err(what, want, fn, *args, **kw):
    import nbd
    try:
        fn(*args, **kw)
    except nbd.Error as e:
        if e.errnum != want:
            die("%s: errno %s, wanted %d (%s)" % (what, e.errnum, want, e.string))
        return
    die("%s: accepted, wanted errno %d" % (what, want))


def scenario_libnbd(path, name, sr):
    import nbd
    h = nbd.NBD()
    h.set_request_structured_replies(sr)
    h.add_meta_context("base:allocation")
    h.connect_uri("nbd+unix:///%s?socket=%s" % (name, path))
    size = h.get_size()
    if h.get_structured_replies_negotiated() != sr:
        die("structured replies negotiated: %s" % h.get_structured_replies_negotiated())
    if h.can_meta_context("base:allocation") != sr:
        die("base:allocation negotiated without structured replies, or not with them")
    if h.can_df() != sr:
        die("can_df %s with structured replies %s" % (h.can_df(), sr))
    if not (h.can_cache() and h.can_fast_zero() and h.can_zero() and h.can_trim()):
        die("cache/fast zero/zero/trim not advertised")
    pattern = bytes((i * 7 + 3) & 0xFF for i in range(65536))
    h.pwrite(pattern, 1 << 20)
    if h.pread(65536, 1 << 20) != pattern:
        die("read back differs")
    if sr:
        chunks = []
        h.pread_structured(65536, 1 << 20,
                           lambda sub, off, status, err: chunks.append((off, len(sub), status)),
                           nbd.CMD_FLAG_DF)
        if chunks != [(1 << 20, 65536, nbd.READ_DATA)]:
            die("DF read: chunks %r" % chunks)
        # Block status: the 64 KiB just written is data; REQ_ONE gives one extent.
        got = []
        h.block_status(1 << 20, 1 << 20, lambda ctx, off, ents, err: got.append(ents))
        if len(got) != 1 or got[0][0] < 65536 or got[0][1] & 1:
            die("block status of written data: %r" % got)
        got = []
        h.block_status(size, 0, lambda ctx, off, ents, err: got.append(ents),
                       nbd.CMD_FLAG_REQ_ONE)
        if len(got) != 1 or len(got[0]) != 2:
            die("REQ_ONE: %r" % got)
    h.zero(65536, 2 << 20, nbd.CMD_FLAG_FAST_ZERO)
    h.zero(65536, 2 << 20, nbd.CMD_FLAG_NO_HOLE)
    if h.pread(65536, 2 << 20) != bytes(65536):
        die("zeroed range does not read back as zeroes")
    h.cache(65536, 0)
    h.trim(65536, 3 << 20)

    # With the client's own checks off, keeld is the one that must refuse.
    h.set_strict_mode(0)
    expect_err("read flag REQ_ONE", errno.EINVAL, h.pread, 512, 0, nbd.CMD_FLAG_REQ_ONE)
    expect_err("write flag NO_HOLE", errno.EINVAL, h.pwrite, bytes(512), 0, nbd.CMD_FLAG_NO_HOLE)
    expect_err("read beyond the end", errno.EINVAL, h.pread, 512, size)
    expect_err("write beyond the end", errno.ENOSPC, h.pwrite, bytes(512), size)
    expect_err("zero beyond the end", errno.ENOSPC, h.zero, 512, size)
    expect_err("misaligned read", errno.EINVAL, h.pread, 512, 1)
    expect_err("misaligned trim", errno.EINVAL, h.trim, 100, 0)
    expect_err("cache beyond the end", errno.EINVAL, h.cache, 512, size)
    if sr:
        expect_err("zero-length block status", errno.EINVAL, h.block_status, 0, 0,
                   lambda *a: 0)
        expect_err("block status beyond the end", errno.EINVAL, h.block_status, 512, size,
                   lambda *a: 0)
        expect_err("misaligned block status", errno.EINVAL, h.block_status, 512, 1,
                   lambda *a: 0)
        expect_err("block status flag FUA|DF", errno.EINVAL, h.block_status, 512, 0,
                   lambda *a: 0, nbd.CMD_FLAG_DF)
    else:
        expect_err("DF without structured replies", errno.EINVAL, h.pread, 512, 0,
                   nbd.CMD_FLAG_DF)
    if h.pread(512, 0) is None:
        die("connection unusable after the refusals")
    h.shutdown()


def main():
    path, name, scenario = sys.argv[1], sys.argv[2], sys.argv[3]
    if scenario == "options":
        scenario_options(path, name)
    elif scenario == "libnbd":
        scenario_libnbd(path, name, sys.argv[4] == "on")
    else:
        die("unknown scenario " + scenario)
    print("structured_client: %s ok" % " ".join(sys.argv[3:]))


if __name__ == "__main__":  # extended_client.py imports the helpers
    main()
