#!/usr/bin/python3
"""Stand-in for systemd's notification socket (tests/e2e/test_systemd.sh).

Usage: notify_listener.py SOCKET LOG KEELCTL RPC_SOCKET VOLUME

Binds a unix datagram socket at SOCKET and appends every line of every datagram to LOG
as "pid=PID LINE" (PID from the kernel's credentials: who sent it). When a datagram
says READY=1, it asks keeld at once, before reading the next datagram, for VOLUME and
appends "AT_READY state=STATE" ("AT_READY error=..." when keeld does not answer):
what a client sees at the moment systemd would start the units that need keeld.
"""
import json
import socket
import struct
import subprocess
import sys


def volume_state(keelctl, rpc_socket, volume):
    try:
        r = subprocess.run([keelctl, "-s", rpc_socket, "--timeout", "30", "rpc", "volume_get",
                            json.dumps({"name": volume})], capture_output=True, text=True,
                           timeout=60)
    except subprocess.TimeoutExpired:
        return "error=timeout"
    if r.returncode != 0:
        return "error=" + (r.stdout + r.stderr).replace("\n", " ")
    try:
        return "state=" + str(json.loads(r.stdout).get("state"))
    except ValueError:
        return "error=not JSON: " + r.stdout.replace("\n", " ")


def main():
    path, log, keelctl, rpc_socket, volume = sys.argv[1:6]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    out = open(log, "a", buffering=1)
    out.write("LISTENING\n")
    while True:
        data, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = 0
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
        lines = [l for l in data.decode(errors="replace").split("\n") if l]
        for line in lines:
            out.write("pid=%d %s\n" % (pid, line))
        if "READY=1" in lines:
            out.write("AT_READY %s\n" % volume_state(keelctl, rpc_socket, volume))


if __name__ == "__main__":
    main()
