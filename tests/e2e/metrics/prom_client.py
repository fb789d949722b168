#!/usr/bin/python3
"""A scraper for test_metrics.sh, started once and driven line by line on stdin.

It fetches keeld's /metrics page, parses it with prometheus_client's parser (the one
Prometheus users rely on: a page it refuses is a bug), and answers questions about
the last page; it also sends hostile HTTP requests and holds NBD or TCP connections.
One line per answer on stdout.

Commands (arguments separated by spaces; labels as k=v,k=v; '-' for none):
  scrape                      fetch and parse; "ok FAMILIES" or "error WHY"
  type FAMILY                 its TYPE as the parser saw it, or "none"
  value SAMPLE LABELS         the value of the one sample with those labels (others
                              may exist), or "none"; "many" if several match
  count SAMPLE LABELS         how many samples match
  families                    the family names of the last page, space-separated
                              (counters with their _total, as they are written)
  http METHOD PATH [HDRBYTES] a raw request (with a header of HDRBYTES bytes):
                              "status CODE" or "closed"
  flood N                     start N TCP connections that send nothing; "ok"
  unflood                     close them; "ok"
  hold URI / release          keep an NBD connection open (libnbd) / close it
"""
import socket
import sys
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

URL = sys.argv[1]  # http://127.0.0.1:PORT/metrics
HOST, PORT = URL.split("/")[2].rsplit(":", 1)
PORT = int(PORT)

families = {}
flood = []
held = None


def labels_of(text):
    if text in ("-", ""):
        return {}
    return dict(kv.split("=", 1) for kv in text.split(","))


def matching(sample_name, want):
    out = []
    for fam in families.values():
        for s in fam.samples:
            if s.name == sample_name and all(s.labels.get(k) == v for k, v in want.items()):
                out.append(s)
    return out


def scrape():
    global families
    try:
        with urllib.request.urlopen(URL, timeout=20) as r:
            ctype = r.headers.get("Content-Type", "")
            body = r.read().decode()
    except urllib.error.HTTPError as e:
        return "error http %d" % e.code
    except Exception as e:  # a refused connection, a timeout: say which
        return "error %s" % e
    if not ctype.startswith("text/plain; version=0.0.4"):
        return "error content type %r" % ctype
    try:
        fams = list(text_string_to_metric_families(body))
    except Exception as e:
        return "error parse: %s" % e
    families = {f.name: f for f in fams}
    return "ok %d" % len(families)


def http(method, path, hdr_bytes=0):
    s = socket.create_connection((HOST, PORT), timeout=20)
    try:
        req = "%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, path, HOST)
        if hdr_bytes:
            req += "X-Big: " + "a" * hdr_bytes + "\r\n"
        if method in ("POST", "PUT"):
            req += "Content-Length: 1000000\r\n\r\n" + "b" * 4096
        else:
            req += "Connection: close\r\n\r\n"
        try:
            s.sendall(req.encode())
        except OSError:
            pass  # the server may close before it read everything: see the answer
        data = b""
        while b"\r\n" not in data:
            try:
                chunk = s.recv(4096)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        if not data.startswith(b"HTTP/"):
            return "closed"
        return "status %s" % data.split(b" ")[1].decode()
    finally:
        s.close()


def main():
    global held
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        cmd, args = words[0], words[1:]
        try:
            if cmd == "scrape":
                ans = scrape()
            elif cmd == "type":
                name = args[0]
                fam = families.get(name)
                if fam is None and name.endswith("_total"):
                    fam = families.get(name[: -len("_total")])  # the parser drops it
                ans = fam.type if fam is not None else "none"
            elif cmd in ("value", "count"):
                found = matching(args[0], labels_of(args[1] if len(args) > 1 else "-"))
                if cmd == "count":
                    ans = str(len(found))
                elif not found:
                    ans = "none"
                elif len(found) > 1:
                    ans = "many"
                else:
                    ans = repr(float(found[0].value))
            elif cmd == "families":
                names = []
                for fam in families.values():
                    total = fam.type == "counter" and any(
                        x.name.endswith("_total") for x in fam.samples
                    )
                    names.append(fam.name + "_total" if total else fam.name)
                ans = " ".join(sorted(names))
            elif cmd == "http":
                ans = http(args[0], args[1], int(args[2]) if len(args) > 2 else 0)
            elif cmd == "flood":
                # Non-blocking: past the server's limit and backlog a connect waits for
                # SYN retries, and a flood does not wait for anything.
                for _ in range(int(args[0])):
                    s = socket.socket()
                    s.setblocking(False)
                    s.connect_ex((HOST, PORT))
                    flood.append(s)
                ans = "ok"
            elif cmd == "unflood":
                while flood:
                    flood.pop().close()
                ans = "ok"
            elif cmd == "hold":
                import nbd

                held = nbd.NBD()
                held.connect_uri(args[0])
                ans = "ok"
            elif cmd == "release":
                if held is not None:
                    held.shutdown()
                    held = None
                ans = "ok"
            else:
                ans = "error unknown command %s" % cmd
        except Exception as e:
            ans = "error %s: %s" % (type(e).__name__, e)
        print(ans, flush=True)


main()
