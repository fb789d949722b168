#!/usr/bin/env python3
"""A deliberately broken NBD client for keel's e2e tests.

usage: hostile_client.py SOCKET EXPORT SCENARIO
Each scenario speaks just enough of the protocol to reach the broken step and checks
what the server answered. Exit 0 when the server behaved as the NBD spec demands.
"""
import socket
import struct
import sys

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REP_MAGIC = 0x3E889045565A9
REQ_MAGIC = 0x25609513
REPLY_MAGIC = 0x67446698
OPT_GO = 7
OPT_LIST = 3
REP_ACK = 1
REP_ERR_UNSUP = 0x80000001
REP_ERR_TOO_BIG = 0x80000009
CMD_READ, CMD_WRITE, CMD_DISC = 0, 1, 2
EINVAL, ENOSPC = 22, 28


def die(msg):
    print("hostile_client: FAIL: " + msg)
    sys.exit(1)


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            die("server closed early (wanted %d more bytes)" % (n - len(buf)))
        buf += chunk
    return buf


def expect_closed(s, what):
    s.settimeout(5)
    try:
        while True:
            if not s.recv(65536):
                return
    except ConnectionResetError:
        return
    except socket.timeout:
        die(what + ": server did not close the connection")


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    magic, opt, flags = struct.unpack(">QQH", recv_exact(s, 18))
    if magic != NBDMAGIC or opt != IHAVEOPT:
        die("bad greeting")
    s.sendall(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
    return s


def option(s, opt, data=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)


def opt_reply(s):
    magic, opt, rtype, length = struct.unpack(">QIII", recv_exact(s, 20))
    if magic != REP_MAGIC:
        die("bad option reply magic")
    return opt, rtype, recv_exact(s, length)


def go(s, name):
    n = name.encode()
    option(s, OPT_GO, struct.pack(">I", len(n)) + n + struct.pack(">H", 0))
    size = None
    while True:
        _, rtype, data = opt_reply(s)
        if rtype == REP_ACK:
            return size
        if rtype & 0x80000000:
            die("GO refused: %x %r" % (rtype, data))
        if struct.unpack(">H", data[:2])[0] == 0:
            size = struct.unpack(">Q", data[2:10])[0]


def request(s, cmd, offset, length, flags=0, cookie=1, magic=REQ_MAGIC):
    return struct.pack(">IHHQQI", magic, flags, cmd, cookie, offset, length)


def reply(s):
    magic, err, cookie = struct.unpack(">IIQ", recv_exact(s, 16))
    if magic != REPLY_MAGIC:
        die("bad reply magic")
    return err, cookie


def read_ok(s, offset=0, length=4096):
    s.sendall(request(s, CMD_READ, offset, length, cookie=99))
    err, cookie = reply(s)
    if err != 0 or cookie != 99:
        die("read after the bad request failed: err %d cookie %d" % (err, cookie))
    recv_exact(s, length)


def main():
    path, name, scenario = sys.argv[1], sys.argv[2], sys.argv[3]
    s = connect(path)
    if scenario == "bad-option-magic":
        s.sendall(struct.pack(">QII", 0x1122334455667788, OPT_GO, 0))
        expect_closed(s, scenario)
    elif scenario == "unknown-options":
        for opt in (12, 5, 0x7654321):
            option(s, opt, b"" if opt != 0x7654321 else b"junk")
            o, rtype, _ = opt_reply(s)
            if o != opt or rtype != REP_ERR_UNSUP:
                die("option %d answered %x" % (opt, rtype))
        option(s, 0x999, b"x" * 100000)
        if opt_reply(s)[1] != REP_ERR_TOO_BIG:
            die("oversized option not refused")
        go(s, name)
        read_ok(s)
    elif scenario == "huge-option":
        s.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, 0xFFFFFFF0))
        expect_closed(s, scenario)
    elif scenario == "truncated-option":
        s.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, 50) + b"abc")
        s.close()
    else:
        size = go(s, name)
        if scenario == "bad-magic":
            s.sendall(request(s, CMD_READ, 0, 4096, magic=0xDEADBEEF))
            expect_closed(s, scenario)
        elif scenario == "truncated-header":
            s.sendall(request(s, CMD_READ, 0, 4096)[:17])
            s.close()
        elif scenario == "unknown-command":
            s.sendall(request(s, 42, 0, 4096))
            if reply(s)[0] != EINVAL:
                die("unknown command not EINVAL")
            s.sendall(request(s, CMD_READ, 0, 4096, flags=0x80))
            if reply(s)[0] != EINVAL:
                die("unknown flag not EINVAL")
            read_ok(s)
        elif scenario == "out-of-range":
            s.sendall(request(s, CMD_READ, size, 4096))
            if reply(s)[0] != EINVAL:
                die("read beyond end not EINVAL")
            s.sendall(request(s, CMD_WRITE, size - 512, 4096) + b"\0" * 4096)
            if reply(s)[0] != ENOSPC:
                die("write beyond end not ENOSPC")
            s.sendall(request(s, CMD_READ, 1, 4096))
            if reply(s)[0] != EINVAL:
                die("misaligned read not EINVAL")
            read_ok(s)
        elif scenario == "oversized-length":
            s.sendall(request(s, CMD_READ, 0, 64 << 20))
            if reply(s)[0] != EINVAL:
                die("64 MiB read not EINVAL")
            s.sendall(request(s, CMD_WRITE, 0, (32 << 20) + 4096) + b"\0" * ((32 << 20) + 4096))
            if reply(s)[0] != EINVAL:
                die("oversized write not EINVAL")
            read_ok(s)
            s.sendall(request(s, CMD_WRITE, 0, 0xFFFFF000))
            expect_closed(s, "absurd write length")
        elif scenario == "disconnect-mid-payload":
            s.sendall(request(s, CMD_WRITE, 0, 1 << 20) + b"\1" * 300000)
            s.close()
        elif scenario == "many-in-flight-then-vanish":
            s.sendall(b"".join(request(s, CMD_READ, i * 65536, 65536, cookie=i) for i in range(200)))
            s.close()
        elif scenario == "disc":
            s.sendall(request(s, CMD_DISC, 0, 0))
            expect_closed(s, scenario)
        else:
            die("unknown scenario " + scenario)
    print("hostile_client: %s ok" % scenario)


if __name__ == "__main__":
    main()
