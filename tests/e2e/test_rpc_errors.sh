#!/usr/bin/env bash
# Bad input on the RPC socket gets a clear JSON-RPC error and never hurts the daemon
# or the other clients.
. "$(dirname "$0")/lib.sh"

start_keeld

# --- through keelctl -----------------------------------------------------------------
expect_fail "unknown method" "Method not found: 'no_such_method'" keelctl rpc no_such_method
expect_fail "missing parameter" "missing parameter 'num_blocks'" \
	keelctl rpc bdev_malloc_create '{"name":"m"}'
expect_fail "wrong parameter type" "num_blocks: expected an integer" \
	keelctl rpc bdev_malloc_create '{"name":"m","num_blocks":"many"}'
expect_fail "unknown parameter" "unknown parameter 'colour'" \
	keelctl rpc bdev_get_bdevs '{"colour":"red"}'
expect_fail "params not an object" "params must be an object" \
	keelctl rpc bdev_get_bdevs '["m"]'
expect_fail "params not JSON (client side)" "not valid JSON" keelctl rpc bdev_get_bdevs '{oops'

# --- raw bytes on the socket -----------------------------------------------------------
# Files the vanishing clients below create aio bdevs over: valid requests, so what
# happens to them is decided by keeld, not by a path that fails anyway.
mkdir -p "$E2E_TMP/vanish"
for i in $(seq 0 19); do truncate -s 1M "$E2E_TMP/vanish/f$i"; done

"$PY" - "$SOCK" "$E2E_TMP/vanish" <<'PY' || fail "raw socket checks"
import json, socket, sys, time

path = sys.argv[1]

def conn():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(path)
    return s

def read_line(s, buf=b""):
    while b"\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError("connection closed before a reply; got %r" % buf)
        buf += chunk
    line, rest = buf.split(b"\n", 1)
    return json.loads(line), rest

def expect_closed(s):
    s.settimeout(20)
    try:
        data = s.recv(65536)
    except ConnectionResetError:
        return
    assert data == b"", "expected the server to close, got %r" % data

def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok - " + what)

# malformed JSON: -32700 with id null, then the server closes
s = conn()
s.sendall(b'{"jsonrpc":"2.0","method" "x",,}')
r, _ = read_line(s)
check(r["error"]["code"] == -32700 and r["id"] is None, "malformed JSON -> -32700")
check("Parse error" in r["error"]["message"], "parse error message: " + r["error"]["message"])
expect_closed(s)
s.close()

# invalid requests keep the connection usable
s = conn()
for req, code, what in [
        (b'[]', -32600, "empty batch"),
        (b'{"jsonrpc":"1.0","method":"keel_get_version","id":1}', -32600, "wrong version"),
        (b'{"jsonrpc":"2.0","id":2}', -32600, "missing method"),
        (b'{"jsonrpc":"2.0","method":"keel_get_version","id":{"a":1}}', -32600, "bad id type"),
        (b'42\n', -32600, "not an object"),
        (b'{"jsonrpc":"2.0","method":"nope","id":3}', -32601, "unknown method"),
        (b'{"jsonrpc":"2.0","method":"bdev_null_create","id":4,"params":{"name":"n"}}',
         -32602, "invalid params")]:
    s.sendall(req)
    r, _ = read_line(s)
    check(r["error"]["code"] == code, "%s -> %d (%s)" % (what, code, r["error"]["message"]))

# back-to-back requests split at odd places, then a batch, on the same connection
reqs = (b'{"jsonrpc":"2.0","method":"keel_get_version","id":10}'
        b'{"jsonrpc":"2.0","method":"rpc_get_methods","id":11}'
        b'[{"jsonrpc":"2.0","method":"keel_get_version","id":12},'
        b'{"jsonrpc":"2.0","method":"keel_get_version"}]')
for i in range(0, len(reqs), 7):
    s.sendall(reqs[i:i + 7])
    time.sleep(0.002)
r1, rest = read_line(s)
r2, rest = read_line(s, rest)
r3, rest = read_line(s, rest)
check(r1["id"] == 10 and "keel" in r1["result"]["version"], "split request 1")
check(r2["id"] == 11 and "bdev_get_bdevs" in r2["result"], "split request 2")
check(isinstance(r3, list) and len(r3) == 1 and r3[0]["id"] == 12, "batch answered as array")
s.close()

# oversized request: error, then close
s = conn()
big = b'{"jsonrpc":"2.0","method":"keel_get_version","id":1,"params":{"x":"' + b"a" * (5 << 20)
try:
    s.sendall(big)
except (BrokenPipeError, ConnectionResetError):
    pass
r, _ = read_line(s)
check(r["error"]["code"] == -32600 and "limit" in r["error"]["message"],
      "oversized request -> -32600: " + r["error"]["message"])
s.close()

# several clients: one half-sent request, one garbage sender, one normal client
a, b, c = conn(), conn(), conn()
a.sendall(b'{"jsonrpc":"2.0","method":"keel_get_ver')
b.sendall(b'\x00\xff garbage }}}')
c.sendall(b'{"jsonrpc":"2.0","method":"keel_get_version","id":"c"}')
r, _ = read_line(c)
check(r["id"] == "c" and "result" in r, "normal client unaffected by garbage")
r, _ = read_line(b)
check(r["error"]["code"] == -32700, "garbage client gets -32700")
expect_closed(b)
a.sendall(b'sion","id":"a"}')
r, _ = read_line(a)
check(r["id"] == "a" and "result" in r, "half-sent request completes later")
for x in (a, b, c):
    x.close()

# clients that vanish before their reply (async methods) must not hurt the daemon
for i in range(20):
    s = conn()
    s.sendall(b'{"jsonrpc":"2.0","method":"thread_get_stats","id":1}'
              b'{"jsonrpc":"2.0","method":"bdev_aio_create","id":2,'
              b'"params":{"name":"gone%d","filename":"%s/f%d"}}'
              % (i, sys.argv[2].encode(), i))
    s.close()
# a client that half-closes still gets its reply
s = conn()
s.sendall(b'{"jsonrpc":"2.0","method":"framework_get_reactors","id":5}')
s.shutdown(socket.SHUT_WR)
r, _ = read_line(s)
check(r["id"] == 5 and len(r["result"]["reactors"]) >= 1, "reply after half-close")
s.close()
PY

keeld_alive || fail "keeld died"
expect_ok "keeld still answers" keelctl rpc keel_get_version
# keeld read each vanished client's requests before it saw the close, so each create
# still runs to the end with nobody to tell: every gone<i> must become a complete aio
# bdev over its file (not a half-made one) that deletes like any other.
gone_count() {
	keelctl --json bdev list | jq '[.[] | select(.name | startswith("gone"))] | length'
}
all_gone_created() { [ "$(gone_count)" = 20 ]; }
wait_until 60 "the 20 creates of vanished clients" all_gone_created
expect_ok "bdevs of vanished clients" keelctl --json bdev list
for i in $(seq 0 19); do
	b=$(jget "$OUT" --arg n "gone$i" -c '.[] | select(.name == $n) | [.module, .num_blocks * .block_size]')
	[ "$b" = '["aio",1048576]' ] || fail "gone$i is not a whole aio bdev over its 1 MiB file: $b"
	keelctl bdev delete "gone$i" >/dev/null || fail "gone$i cannot be deleted"
done
expect_ok "bdev list" keelctl --json bdev list
[ "$(jget "$OUT" length)" = 0 ] || fail "bdevs left after deleting the vanished clients' ones: $OUT"
ok "each vanished client's create ran to the end: 20 whole aio bdevs, all deleted"

stop_keeld || fail "keeld exited with $? after SIGTERM"
ok "keeld stopped cleanly"
