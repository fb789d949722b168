#!/usr/bin/env python3
"""Writes whose acknowledgements are recorded, and their check after a crash.

usage: acked_io.py SOCKET EXPORT write OFFSET SIZE LOG
       acked_io.py SOCKET EXPORT verify OFFSET SIZE LOG

write: 4 KiB writes, 8 in flight, over [OFFSET, OFFSET+SIZE), block after block and
round after round, every one with contents of its own (its sequence number), until
the server goes away. It never stops by itself. "acked N" lines on stdout tell the
test how far it got; when the connection ends, LOG gets what was sent and what was
still in flight (sent, never acknowledged).
verify: read the range back. Every block must hold the last write acknowledged to it,
or a write that was in flight to it when the server died (either answer is right for
a write nobody acknowledged), or zeroes if no write to it was ever acknowledged or in
flight.
"""
import json
import os
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostile_client import CMD_READ, CMD_WRITE, REPLY_MAGIC, connect, go, request  # noqa: E402

BLOCK = 4096
DEPTH = 8
MAGIC = 0x6B65656C41434B44  # "keelACKD"


def contents(seq):
    return struct.pack("<QQ", MAGIC, seq) * (BLOCK // 16)


def recv_exact(s, n):
    """n bytes, or None when the connection ended first."""
    buf = b""
    while len(buf) < n:
        try:
            chunk = s.recv(n - len(buf))
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return buf


def write(s, offset, size, log):
    nblocks = size // BLOCK
    inflight = set()
    seq = 0
    acked = 0
    s.settimeout(None)
    try:
        while True:
            while len(inflight) < DEPTH:
                off = offset + (seq % nblocks) * BLOCK
                s.sendall(request(s, CMD_WRITE, off, BLOCK, cookie=seq) + contents(seq))
                inflight.add(seq)
                seq += 1
            hdr = recv_exact(s, 16)
            if hdr is None:
                break
            magic, err, cookie = struct.unpack(">IIQ", hdr)
            if magic != REPLY_MAGIC or cookie not in inflight:
                print("acked_io: FAIL: bad reply (magic %x cookie %d)" % (magic, cookie))
                sys.exit(1)
            if err != 0:
                print("acked_io: FAIL: write %d failed with error %d" % (cookie, err))
                sys.exit(1)
            inflight.discard(cookie)
            acked += 1
            if acked % 100 == 0:
                print("acked %d" % acked, flush=True)
    except OSError:
        pass  # the server went away while we sent
    with open(log, "w") as f:
        json.dump({"sent": seq, "inflight": sorted(inflight), "nblocks": nblocks,
                   "acked": acked}, f)
    print("acked_io: connection ended after %d writes acknowledged, %d in flight"
          % (acked, len(inflight)), flush=True)


def verify(s, offset, size, log):
    with open(log) as f:
        st = json.load(f)
    nblocks, sent, inflight = st["nblocks"], st["sent"], set(st["inflight"])
    if nblocks != size // BLOCK:
        print("acked_io: FAIL: the log is for another range")
        sys.exit(1)
    chunk = 64 * BLOCK
    bad = 0
    for base in range(0, nblocks, chunk // BLOCK):
        n = min(chunk // BLOCK, nblocks - base)
        s.sendall(request(s, CMD_READ, offset + base * BLOCK, n * BLOCK, cookie=base))
        hdr = recv_exact(s, 16)
        if hdr is None:
            print("acked_io: FAIL: server closed during the verify")
            sys.exit(1)
        magic, err, cookie = struct.unpack(">IIQ", hdr)
        if magic != REPLY_MAGIC or err != 0 or cookie != base:
            print("acked_io: FAIL: read at block %d: error %d" % (base, err))
            sys.exit(1)
        data = recv_exact(s, n * BLOCK)
        for i in range(n):
            b = base + i
            got = data[i * BLOCK:(i + 1) * BLOCK]
            # writes to block b: b, b + nblocks, ... below sent
            seqs = list(range(b, sent, nblocks))
            acked = [q for q in seqs if q not in inflight]
            last = acked[-1] if acked else None
            ok = [contents(last) if last is not None else bytes(BLOCK)]
            ok += [contents(q) for q in seqs if q in inflight and (last is None or q > last)]
            if got not in ok:
                bad += 1
                if bad <= 5:
                    seen = struct.unpack("<QQ", got[:16])
                    print("acked_io: block %d (offset %d) holds %x/%d; last acknowledged "
                          "write: %s, in flight: %s" % (b, offset + b * BLOCK, seen[0], seen[1],
                                                        last, [q for q in seqs if q in inflight]))
    if bad:
        print("acked_io: FAIL: %d of %d blocks lost an acknowledged write" % (bad, nblocks))
        sys.exit(1)
    print("acked_io: %d blocks hold their last acknowledged write (%d writes acknowledged, "
          "%d in flight at the crash)" % (nblocks, st["acked"], len(inflight)))


def main():
    path, name, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    offset, size, log = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    s = connect(path)
    export_size = go(s, name)
    if size % BLOCK or offset % BLOCK or offset + size > export_size:
        print("acked_io: FAIL: range outside the export")
        sys.exit(1)
    if mode == "write":
        write(s, offset, size, log)
    elif mode == "verify":
        verify(s, offset, size, log)
    else:
        print("acked_io: unknown mode " + mode)
        sys.exit(1)
    s.close()


if __name__ == "__main__":
    main()
