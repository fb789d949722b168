#!/usr/bin/env python3
"""A scripted NBD client for the STARTTLS rules keel must follow (tests/e2e/test_nbd_tls.sh).

usage: tls_client.py SOCKET EXPORT SCENARIO [CA_FILE]
Scenarios (exit 0 when the server answered as the NBD protocol document demands):
  require-refusals  plaintext on a `require` export: LIST, INFO, GO, STRUCTURED_REPLY and
                    an unknown option get NBD_REP_ERR_TLS_REQD; STARTTLS with data gets
                    ERR_INVALID; ABORT is acknowledged
  require-export-name  NBD_OPT_EXPORT_NAME without TLS: the server closes, sends nothing
  off-refused       STARTTLS on an export without TLS: NBD_REP_ERR_UNSUP, then GO works
  pipelined         bytes sent after STARTTLS before its reply: the server closes
  stall             STARTTLS acknowledged, then silence: prints the seconds until the
                    server closed (the handshake timeout)
  x509-twice        (CA_FILE) TLS with certificates, a second STARTTLS under TLS gets
                    ERR_INVALID, then GO and a read work under TLS
  x509-reset        (CA_FILE, an export with tls on) STRUCTURED_REPLY in plaintext, then
                    STARTTLS: under TLS it is not negotiated any more (a second
                    STRUCTURED_REPLY is acknowledged, not refused as a repeat)
"""
import os
import socket
import ssl
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostile_client import connect, go, opt_reply, option, recv_exact  # noqa: E402

IHAVEOPT = 0x49484156454F5054
REQ_MAGIC = 0x25609513
REPLY_MAGIC = 0x67446698
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS = 1, 2, 3, 5
OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY = 6, 7, 8
REP_ACK, REP_INFO = 1, 3
ERR = 0x80000000
REP_ERR_UNSUP, REP_ERR_INVALID, REP_ERR_TLS_REQD = ERR | 1, ERR | 3, ERR | 5
CMD_READ, CMD_DISC = 0, 2


def die(msg):
    print("tls_client: FAIL: " + msg)
    sys.exit(1)


def expect_closed(s, what, timeout=10):
    """The server must close without sending anything more."""
    s.settimeout(timeout)
    try:
        data = s.recv(65536)
    except ConnectionResetError:
        return
    except socket.timeout:
        die(what + ": server did not close the connection")
    if data:
        die(what + ": server sent %d bytes instead of closing" % len(data))


def expect_reply(s, opt, want, what):
    got_opt, rtype, data = opt_reply(s)
    if got_opt != opt or rtype != want:
        die("%s: option %d answered 0x%x (%r), want 0x%x" % (what, got_opt, rtype, data, want))
    return data


def info_data(name):
    n = name.encode()
    return struct.pack(">I", len(n)) + n + struct.pack(">H", 0)


def require_refusals(path, name):
    s = connect(path)
    for opt, data in ((OPT_LIST, b""), (OPT_INFO, info_data(name)), (OPT_GO, info_data(name)),
                      (OPT_STRUCTURED_REPLY, b""), (99, b"xyz")):
        option(s, opt, data)
        msg = expect_reply(s, opt, REP_ERR_TLS_REQD, "option %d before TLS" % opt)
        if b"TLS" not in msg:
            die("TLS_REQD without a message saying so: %r" % msg)
    option(s, OPT_STARTTLS, b"x")
    expect_reply(s, OPT_STARTTLS, REP_ERR_INVALID, "STARTTLS with data")
    option(s, OPT_ABORT)
    expect_reply(s, OPT_ABORT, REP_ACK, "ABORT")
    expect_closed(s, "after ABORT")
    print("5 options refused with TLS_REQD, STARTTLS with data INVALID, ABORT acked")


def require_export_name(path, name):
    s = connect(path)
    option(s, OPT_EXPORT_NAME, name.encode())
    expect_closed(s, "EXPORT_NAME without TLS")
    print("EXPORT_NAME without TLS: closed")


def off_refused(path, name):
    s = connect(path)
    option(s, OPT_STARTTLS)
    expect_reply(s, OPT_STARTTLS, REP_ERR_UNSUP, "STARTTLS on an export without TLS")
    go(s, name)
    print("STARTTLS UNSUP, GO works in plaintext")


def pipelined(path, name):
    s = connect(path)
    s.sendall(struct.pack(">QII", IHAVEOPT, OPT_STARTTLS, 0) +
              struct.pack(">QII", IHAVEOPT, OPT_LIST, 0))
    expect_closed(s, "data pipelined after STARTTLS")
    print("pipelined data after STARTTLS: closed")


def stall(path, name):
    s = connect(path)
    option(s, OPT_STARTTLS)
    expect_reply(s, OPT_STARTTLS, REP_ACK, "STARTTLS")
    start = time.monotonic()
    expect_closed(s, "stalled TLS handshake", timeout=30)
    print("%.2f" % (time.monotonic() - start))


def x509_twice(path, name, ca_file):
    s = connect(path)
    option(s, OPT_STARTTLS)
    expect_reply(s, OPT_STARTTLS, REP_ACK, "STARTTLS")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca_file)
    ctx.check_hostname = False
    t = ctx.wrap_socket(s, server_hostname="localhost")
    option(t, OPT_STARTTLS)
    expect_reply(t, OPT_STARTTLS, REP_ERR_INVALID, "second STARTTLS")
    go(t, name)
    t.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_READ, 7, 0, 4096))
    magic, err, handle = struct.unpack(">IIQ", recv_exact(t, 16))
    if magic != REPLY_MAGIC or err != 0 or handle != 7:
        die("read under TLS: magic 0x%x error %d handle %d" % (magic, err, handle))
    recv_exact(t, 4096)
    t.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_DISC, 8, 0, 0))
    print("%s; second STARTTLS INVALID; GO and a 4 KiB read under TLS" % t.version())


def tls_wrap(s, ca_file):
    option(s, OPT_STARTTLS)
    expect_reply(s, OPT_STARTTLS, REP_ACK, "STARTTLS")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca_file)
    ctx.check_hostname = False
    return ctx.wrap_socket(s, server_hostname="localhost")


def x509_reset(path, name, ca_file):
    s = connect(path)
    option(s, OPT_STRUCTURED_REPLY)
    expect_reply(s, OPT_STRUCTURED_REPLY, REP_ACK, "STRUCTURED_REPLY in plaintext")
    t = tls_wrap(s, ca_file)
    option(t, OPT_STRUCTURED_REPLY)
    expect_reply(t, OPT_STRUCTURED_REPLY, REP_ACK, "STRUCTURED_REPLY again under TLS")
    go(t, name)
    t.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_DISC, 8, 0, 0))
    print("structured replies negotiated in plaintext were forgotten at STARTTLS")


def main():
    if len(sys.argv) < 4:
        die(__doc__)
    path, name, scenario = sys.argv[1:4]
    scenarios = {
        "require-refusals": require_refusals,
        "require-export-name": require_export_name,
        "off-refused": off_refused,
        "pipelined": pipelined,
        "stall": stall,
    }
    if scenario == "x509-twice":
        x509_twice(path, name, sys.argv[4])
    elif scenario == "x509-reset":
        x509_reset(path, name, sys.argv[4])
    elif scenario in scenarios:
        scenarios[scenario](path, name)
    else:
        die("unknown scenario " + scenario)


if __name__ == "__main__":
    main()
