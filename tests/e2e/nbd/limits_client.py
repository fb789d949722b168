#!/usr/bin/env python3
"""NBD clients that hold keeld's resources, for test_nbd_limits.sh.

usage: limits_client.py SOCKET EXPORT MODE
  hold   choose the export, print "ready", then wait until stdin closes
  pin    choose the export, send one 1 MiB read, print "ready", wait until stdin
         closes, then collect the reply (so the server holds the buffer until then)
  stall  choose the export, send four 1 MiB reads and never read the replies;
         wait until stdin closes
  silent connect and send nothing (the handshake never ends); wait until stdin closes
Exit 0 when every step the mode needs worked.
"""
import os
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hostile_client as nbd  # noqa: E402

MIB = 1 << 20


def ready():
    print("ready", flush=True)


def main():
    path, name, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "silent":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        ready()
        sys.stdin.read()
        return
    s = nbd.connect(path)
    nbd.go(s, name)
    if mode == "hold":
        ready()
        sys.stdin.read()
    elif mode == "pin":
        s.sendall(nbd.request(s, nbd.CMD_READ, 0, MIB, cookie=7))
        ready()
        sys.stdin.read()
        s.settimeout(60)
        err, cookie = nbd.reply(s)
        if err != 0 or cookie != 7:
            nbd.die("pinned read failed: err %d cookie %d" % (err, cookie))
        nbd.recv_exact(s, MIB)
    elif mode == "stall":
        for i in range(4):
            s.sendall(nbd.request(s, nbd.CMD_READ, 0, MIB, cookie=i))
        ready()
        sys.stdin.read()
    else:
        nbd.die("unknown mode " + mode)


if __name__ == "__main__":
    main()
