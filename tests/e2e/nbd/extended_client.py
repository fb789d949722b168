#!/usr/bin/python3
"""Extended headers (NBD_OPT_EXTENDED_HEADERS) against keeld, for keel's e2e tests
(tests/e2e/test_nbd_extended.sh). No Debian 12 client speaks them (libnbd 1.14,
qemu 7.2), so this client is written from the protocol facts (docs/nbd.md).

usage: extended_client.py SOCKET EXPORT SIZE
  negotiation      option with data, duplicate, STRUCTURED_REPLY after it (EXT_HEADER_REQD),
                   EXTENDED_HEADERS after STRUCTURED_REPLY (upgrade), meta contexts;
  io               write/read/flush/trim/write-zeroes with 32-byte requests, every reply
                   an extended chunk echoing cookie and offset; errors as ERROR chunks;
  64-bit lengths   a write-zeroes and a trim longer than 4 GiB on the sparse export,
                   block status of the whole export as BLOCK_STATUS_EXT;
  refusals         READ over the maximum payload, PAYLOAD_LEN on block status (payload
                   read and dropped, connection still usable);
  broken streams   a compact request, and a bad magic, after negotiation: closed.
Exit 0 when the server behaved as the protocol demands. One interpreter per run.
"""
import errno
import struct
import sys

import hostile_client
import structured_client
from hostile_client import connect, expect_closed, recv_exact
from structured_client import expect, go, meta_data, option

REQ_MAGIC = 0x25609513
EXT_REQ_MAGIC = 0x21E41C71
EXT_REPLY_MAGIC = 0x6E8A278C
OPT_GO, OPT_SR, OPT_SET_META, OPT_EXT = 7, 8, 10, 11
REP_ACK, REP_META = 1, 4
REP_ERR_INVALID, REP_ERR_EXT_HEADER_REQD = 0x80000003, 0x8000000A
CMD_READ, CMD_WRITE, CMD_FLUSH, CMD_TRIM, CMD_ZEROES, CMD_BS = 0, 1, 3, 4, 6, 7
FLAG_NO_HOLE, FLAG_DF, FLAG_PAYLOAD_LEN = 1 << 1, 1 << 2, 1 << 5
CHUNK_NONE, CHUNK_DATA, CHUNK_BS, CHUNK_BS_EXT, CHUNK_ERROR = 0, 1, 5, 6, 0x8001
FLAG_DONE = 1
STATE_HOLE, STATE_ZERO = 1, 2
ALLOC = b"base:allocation"
GiB = 1 << 30


def die(msg):
    print("extended_client: FAIL: " + msg)
    sys.exit(1)


hostile_client.die = die  # the shared helpers report as this client
structured_client.die = die


def set_meta(s, name):
    r = option(s, OPT_SET_META, meta_data(name, [ALLOC]))
    expect(r, [REP_META, REP_ACK], "SET base:allocation")
    return struct.unpack(">I", r[0][1][:4])[0]


def request(s, cmd, offset, length, flags=0, cookie=1, payload=b""):
    s.sendall(struct.pack(">IHHQQQ", EXT_REQ_MAGIC, flags, cmd, cookie, offset, length) +
              payload)


def chunk(s, cookie, offset, what):
    """One extended reply chunk for (cookie, offset): (type, payload)."""
    magic, flags, ctype, got_cookie, got_off, length = struct.unpack(
        ">IHHQQQ", recv_exact(s, 32))
    if magic != EXT_REPLY_MAGIC:
        die("%s: expected an extended reply, got magic %x" % (what, magic))
    if got_cookie != cookie or got_off != offset or not flags & FLAG_DONE:
        die("%s: cookie %d offset %d flags %x" % (what, got_cookie, got_off, flags))
    return ctype, recv_exact(s, length)


def ok_none(s, cookie, offset, what):
    ctype, data = chunk(s, cookie, offset, what)
    if ctype != CHUNK_NONE or data:
        die("%s: type %x len %d, wanted NONE" % (what, ctype, len(data)))


def error_chunk(s, cookie, offset, want, what):
    ctype, data = chunk(s, cookie, offset, what)
    if ctype != CHUNK_ERROR:
        die("%s: type %x, wanted ERROR" % (what, ctype))
    err, mlen = struct.unpack(">IH", data[:6])
    if err != want or len(data) != 6 + mlen:
        die("%s: error %d (message %d of %d bytes), wanted %d" %
            (what, err, mlen, len(data) - 6, want))


def block_status(s, ctx_id, offset, length, cookie, what):
    """Ask; the BLOCK_STATUS_EXT extents [(length, status)] for the range."""
    request(s, CMD_BS, offset, length, cookie=cookie)
    ctype, data = chunk(s, cookie, offset, what)
    if ctype != CHUNK_BS_EXT:
        die("%s: type %x, wanted BLOCK_STATUS_EXT" % (what, ctype))
    got_id, count = struct.unpack(">II", data[:8])
    if got_id != ctx_id or len(data) != 8 + 16 * count or count == 0:
        die("%s: context %d, %d descriptors in %d bytes" % (what, got_id, count, len(data)))
    ext = [struct.unpack(">QQ", data[8 + 16 * i:24 + 16 * i]) for i in range(count)]
    if sum(l for l, _ in ext) > length:
        die("%s: extents beyond the request" % what)
    return ext


def negotiation(path, name):
    s = connect(path)
    expect(option(s, OPT_EXT, b"x"), [REP_ERR_INVALID], "EXTENDED_HEADERS with data")
    expect(option(s, OPT_EXT), [REP_ACK], "EXTENDED_HEADERS")
    expect(option(s, OPT_EXT), [REP_ERR_INVALID], "duplicate EXTENDED_HEADERS")
    expect(option(s, OPT_SR), [REP_ERR_EXT_HEADER_REQD], "STRUCTURED_REPLY after it")
    set_meta(s, name)  # meta contexts need no STRUCTURED_REPLY now
    s.close()
    s = connect(path)
    expect(option(s, OPT_SR), [REP_ACK], "STRUCTURED_REPLY")
    expect(option(s, OPT_EXT), [REP_ACK], "EXTENDED_HEADERS after STRUCTURED_REPLY")
    _, tflags = go(s, name)
    if not tflags & (1 << 7):
        die("SEND_DF not advertised with extended headers")
    request(s, CMD_FLUSH, 0, 0, cookie=3)
    ok_none(s, 3, 0, "flush after the upgrade")
    s.close()


def io(path, name, size):
    s = connect(path)
    expect(option(s, OPT_EXT), [REP_ACK], "EXTENDED_HEADERS")
    ctx_id = set_meta(s, name)
    go(s, name)
    data = bytes(range(256)) * 32  # 8 KiB
    base = 3 * GiB
    request(s, CMD_WRITE, base, len(data), cookie=10, payload=data)
    ok_none(s, 10, base, "write")
    request(s, CMD_WRITE, base + 8192, 4096, flags=FLAG_PAYLOAD_LEN, cookie=11,
            payload=b"\x5a" * 4096)
    ok_none(s, 11, base + 8192, "write with PAYLOAD_LEN")
    request(s, CMD_READ, base, 12288, flags=FLAG_DF, cookie=12)
    ctype, got = chunk(s, 12, base, "read")
    if ctype != CHUNK_DATA or struct.unpack(">Q", got[:8])[0] != base or \
            got[8:] != data + b"\x5a" * 4096:
        die("read: type %x, %d bytes, data differs" % (ctype, len(got)))
    request(s, CMD_FLUSH, 0, 0, cookie=13)
    ok_none(s, 13, 0, "flush")
    ext = block_status(s, ctx_id, base, 1 << 20, 14, "block status of written data")
    if ext[0][0] != 12288 or ext[0][1] != 0:
        die("block status after writes: %r" % ext[:3])
    request(s, CMD_ZEROES, base, 4096, flags=FLAG_NO_HOLE, cookie=15)
    ok_none(s, 15, base, "write zeroes (no hole)")
    request(s, CMD_TRIM, base + 4096, 8192, cookie=16)
    ok_none(s, 16, base + 4096, "trim")
    request(s, CMD_READ, base, 4096, cookie=17)
    ctype, got = chunk(s, 17, base, "read zeroes")
    if ctype != CHUNK_DATA or got[8:] != bytes(4096):
        die("zeroed range does not read back as zeroes")

    # 64-bit lengths: zero and trim 5 GiB, then block status of the whole export.
    big = 5 * GiB
    if size <= big + 2 * GiB:
        die("the export must be larger than 7 GiB")
    request(s, CMD_WRITE, big + GiB, 4096, cookie=19, payload=b"\x77" * 4096)
    ok_none(s, 19, big + GiB, "write at 6 GiB")
    request(s, CMD_ZEROES, 0, big, cookie=20)
    ok_none(s, 20, 0, "write zeroes of 5 GiB")
    request(s, CMD_TRIM, 0, big + GiB, cookie=21)
    ok_none(s, 21, 0, "trim of 6 GiB")
    ext = block_status(s, ctx_id, 0, size, 22, "block status after the big trim")
    if ext[0][0] != big + GiB or not ext[0][1] & STATE_ZERO:
        die("first extent after trimming 6 GiB: %r" % ext[:3])
    if ext[0][0] <= 1 << 32:
        die("no extent longer than 32 bits")
    if len(ext) < 2 or ext[1][1] & STATE_ZERO:
        die("the data written at 6 GiB is not reported: %r" % ext[:3])

    # Refusals that keep the connection: errors are ERROR chunks.
    request(s, CMD_READ, 0, 64 << 20, cookie=30)
    error_chunk(s, 30, 0, errno.EINVAL, "read over the maximum payload")
    request(s, CMD_READ, size, 4096, cookie=31)
    error_chunk(s, 31, size, errno.EINVAL, "read beyond the end")
    # with PAYLOAD_LEN the length is the payload's: effective length, context ids
    bs_payload = struct.pack(">QI", 4096, ctx_id)
    request(s, CMD_BS, 0, len(bs_payload), flags=FLAG_PAYLOAD_LEN, cookie=32,
            payload=bs_payload)
    error_chunk(s, 32, 0, errno.EINVAL, "block status with PAYLOAD_LEN")
    request(s, CMD_FLUSH, 0, 0, cookie=33)
    ok_none(s, 33, 0, "flush after the refused payload")
    request(s, CMD_ZEROES, size - 4096, 8192, cookie=34)
    error_chunk(s, 34, size - 4096, errno.ENOSPC, "write zeroes beyond the end")

    # A compact request now is a broken stream.
    s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_FLUSH, 40, 0, 0) + b"\0" * 4)
    expect_closed(s, "compact request after extended headers")

    s = connect(path)
    expect(option(s, OPT_EXT), [REP_ACK], "EXTENDED_HEADERS")
    go(s, name)
    s.sendall(struct.pack(">IHHQQQ", 0x12345678, 0, CMD_FLUSH, 41, 0, 0))
    expect_closed(s, "bad magic after extended headers")


def main():
    path, name, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    negotiation(path, name)
    io(path, name, size)
    print("extended_client: negotiation, I/O, 64-bit lengths, BLOCK_STATUS_EXT, refusals "
          "and broken streams as the protocol demands")


if __name__ == "__main__":
    main()
