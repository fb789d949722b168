#!/usr/bin/env bash
# One RPC client cannot starve the others or make keeld hold without bound: batch and
# response limits, a batch served a slice at a time, the connection limit (keelctl
# still gets in past a crowd of silent clients), the idle timeout, and the listener's
# back-off when keeld runs out of file descriptors.
. "$(dirname "$0")/lib.sh"

PY=/usr/bin/python3
[ -x "$PY" ] || skip "$PY is needed for the socket-level clients"

# Socket helpers shared by every python snippet below (written once, imported).
cat >"$E2E_TMP/rpcsock.py" <<'PY'
import json, socket, time

def conn(path, timeout=30):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            # The listen backlog is full until keeld accepts: that is what it is for.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)

def req(method, id=1, params=None):
    r = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        r["params"] = params
    return r

def read_line(s, buf=b""):
    while b"\n" not in buf:
        chunk = s.recv(1 << 20)
        if not chunk:
            raise AssertionError("connection closed before a full line; got %r" % buf[:200])
        buf += chunk
    line, rest = buf.split(b"\n", 1)
    return json.loads(line), rest

def call(path, method, params=None):
    s = conn(path)
    s.sendall(json.dumps(req(method, 1, params)).encode())
    r, _ = read_line(s)
    s.close()
    return r

def closed_with(s, code, words):
    """The server's last words on s: an error with id null naming the limit, then EOF."""
    r, rest = read_line(s)
    assert r["id"] is None and r["error"]["code"] == code, r
    assert words in r["error"]["message"], r["error"]["message"]
    try:
        tail = rest + s.recv(65536)
    except ConnectionResetError:
        tail = rest
    assert tail == b"", "expected EOF after the notice, got %r" % tail[:100]
    return r["error"]["message"]

def still_open(s):
    s.setblocking(False)
    try:
        data = s.recv(65536)
    except BlockingIOError:
        return True
    finally:
        s.setblocking(True)
    return False if data == b"" else data

def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok - " + what, flush=True)
PY
export PYTHONPATH=$E2E_TMP

# --- operator input ------------------------------------------------------------------
expect_fail "zero batch limit" "--rpc-max-batch '0': expected a whole number from 1" \
	"$KEEL_BIN/keeld" --rpc-max-batch 0
expect_fail "idle timeout not a number" "--rpc-idle-timeout 'soon'" \
	"$KEEL_BIN/keeld" --rpc-idle-timeout soon
expect_ok "help names the limits" "$KEEL_BIN/keeld" --help
case "$OUT" in *"--rpc-max-connections"*"--rpc-idle-timeout"*"--rpc-max-batch"*"--rpc-max-response"*) ;;
*) fail "keeld --help lacks the RPC limits: $OUT" ;; esac

# --- keelctl shows why a server refused it ----------------------------------------------
# A stand-in server that answers every connection with the refusal keeld sends at its
# connection limit, then closes: keelctl must print that reason, not a broken pipe.
FAKE=$E2E_TMP/fake.sock
"$PY" - "$FAKE" >"$E2E_TMP/fake.out" 2>&1 <<'PY' &
import json, os, socket, sys
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sys.argv[1]); srv.listen(8)
line = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -87, "message":
       "keeld has 64 RPC connections open, its limit (keeld --rpc-max-connections)"}})
open(sys.argv[1] + ".ready", "w").close()
for _ in range(2):
    c, _ = srv.accept()
    c.sendall(line.encode() + b"\n")
    c.close()
PY
FAKE_PID=$!
E2E_EXTRA_PIDS="$FAKE_PID"
for _ in $(seq 1 100); do [ -e "$FAKE.ready" ] && break; sleep 0.1; done
expect_fail "keelctl prints the refusal" "its limit (keeld --rpc-max-connections)" \
	"$KEEL_BIN/keelctl" -s "$FAKE" rpc keel_get_version
# A request larger than the socket buffer: the close reaches keelctl while it is still
# sending (EPIPE), and it must still read and print the reason. Each 1e300 is sent as
# 1.0000000000000001e+300, so 120 KB of argument make about 480 KB on the wire.
BIG=$(printf '1e300,%.0s' $(seq 1 20000))
expect_fail "keelctl prints the refusal while still sending" "its limit" \
	"$KEEL_BIN/keelctl" -s "$FAKE" rpc bdev_get_bdevs "[${BIG}1]"
wait "$FAKE_PID" 2>/dev/null

# --- phase 1: default limits -------------------------------------------------------------
start_keeld

"$PY" - "$SOCK" <<'PY' || fail "batch checks"
import json, sys
from rpcsock import *
path = sys.argv[1]

# The issue's reproduction: 48,000 rpc_get_methods{include_help} in one 4 MiB batch.
member = req("rpc_get_methods", 1, {"include_help": True})
huge = "[" + ",".join([json.dumps(member, separators=(",", ":"))] * 48000) + "]"
s = conn(path)
s.sendall(huge.encode())
r, rest = read_line(s)
check(isinstance(r, dict) and r["error"]["code"] == -32600 and
      "a batch of 48000 requests is over the limit of 128" in r["error"]["message"],
      "48,000-request batch refused: " + (r.get("error") or {}).get("message", "?"))
# the connection still works, and a batch at the limit is answered whole
s.sendall(json.dumps([req("keel_get_version", i) for i in range(128)]).encode())
r, rest = read_line(s, rest)
check(isinstance(r, list) and sorted(x["id"] for x in r) == list(range(128)),
      "128-request batch answered as one array")
s.close()

# Give bdev_get_bdevs a big answer (~200 bdevs), then send one client a batch that
# alternates it with bdev creations, and do not read. The batch is served a slice at
# a time: while its client leaves replies unread, another client is answered and
# sees only part of the batch's bdevs made.
s = conn(path)
s.sendall(json.dumps([req("bdev_null_create", i, {"name": "pad%03d" % i, "num_blocks": 8})
                      for i in range(100)]).encode())
r, _ = read_line(s)
s.sendall(json.dumps([req("bdev_null_create", i, {"name": "pad%03d" % (100 + i), "num_blocks": 8})
                      for i in range(100)]).encode())
r2, _ = read_line(s)
check(all("result" in x for x in r + r2), "200 padding bdevs made")
s.close()
batch = []
for i in range(64):
    batch.append(req("bdev_get_bdevs", 2 * i))
    batch.append(req("bdev_null_create", 2 * i + 1, {"name": "b%02d" % i, "num_blocks": 8}))
a = conn(path)
a.sendall(json.dumps(batch).encode())
first = a.recv(1)               # the batch has started answering
check(first == b"[", "the batch's array has begun")
made = [b for b in call(path, "bdev_get_bdevs")["result"] if b["name"].startswith("b")]
check(len(made) < 64, "another client answered mid-batch: %d of 64 batch bdevs made so far"
      % len(made))
rest = first
while not rest.endswith(b"\n"):
    chunk = a.recv(1 << 20)
    assert chunk, "closed before the batch ended"
    rest += chunk
arr = json.loads(rest)
check(len(arr) == 128 and all("result" in x for x in arr), "the whole batch answered (128)")
made = [b for b in call(path, "bdev_get_bdevs")["result"] if b["name"].startswith("b")]
check(len(made) == 64, "every batch bdev made once the client read")
a.close()
PY

# 70 silent connections: the six oldest make room, each told why; keelctl still gets
# in (making room in turn), and the rest stay open.
"$PY" - "$SOCK" "$KEEL_BIN/keelctl" <<'PY' || fail "connection limit checks"
import select, subprocess, sys, time
from rpcsock import *
path, keelctl = sys.argv[1], sys.argv[2]

socks = [conn(path) for _ in range(70)]

def wait_closed(n):
    # Only an evicted socket becomes readable (notice, EOF): wait for n, 60 s at most.
    deadline = time.monotonic() + 60
    while True:
        ready, _, _ = select.select(socks, [], [], 0.2)
        if len(ready) >= n or time.monotonic() > deadline:
            return ready

wait_closed(6)
p = subprocess.run([keelctl, "-s", path, "rpc", "keel_get_version"], capture_output=True, text=True)
check(p.returncode == 0 and "keel v" in p.stdout,
      "keelctl works past 70 silent connections" +
      ("" if p.returncode == 0 else ": " + p.stderr.strip()))
ready = wait_closed(7)
closed = [i for i, s in enumerate(socks) if s in ready]
check(closed == list(range(7)), "the 7 oldest made room: %s" % closed)
for i in closed:
    msg = closed_with(socks[i], -87, "keeld allows 64 RPC connections (keeld --rpc-max-connections)")
print("ok - their last words: " + msg)
check(all(still_open(s) is True for s in socks[7:]), "the other 63 stay open")
for s in socks:
    s.close()
PY
keeld_alive || fail "keeld died"
stop_keeld || fail "keeld exited with $? after SIGTERM"
ok "keeld stopped cleanly"

# --- phase 2: a short idle timeout and a small response limit ------------------------------
: >"$KEELD_LOG"
start_keeld --rpc-idle-timeout 1 --rpc-max-response 2048
expect_fail "response over the limit" "larger than the limit of 2048 bytes (keeld --rpc-max-response)" \
	keelctl rpc rpc_get_methods '{"include_help":true}'
expect_ok "small responses still go out" keelctl rpc keel_get_version
"$PY" - "$SOCK" <<'PY' || fail "idle timeout checks"
import sys
from rpcsock import *
s = conn(sys.argv[1], timeout=60)       # generous: the server closes it after 1 s
msg = closed_with(s, -110, "without a request (keeld --rpc-idle-timeout)")
check(True, "silent connection closed: " + msg)
s.close()
PY
stop_keeld || fail "keeld exited with $? after SIGTERM"

# --- phase 3: out of file descriptors ------------------------------------------------------
# Interrupt mode: a reactor that sleeps whenever it can, so a spinning listener would
# show. The listener's own run count (thread_get_stats, read over a connection opened
# before the fds ran out) says whether it retries every millisecond or backs off.
: >"$KEELD_LOG"
start_keeld --mode interrupt
"$PY" - "$SOCK" "$KEELD_PID" "$KEELD_LOG" "$KEEL_BIN/keelctl" <<'PY' || fail "EMFILE checks"
import json, os, resource, subprocess, sys, time
from rpcsock import *
path, pid, log, keelctl = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

def lines(word):
    with open(log, errors="replace") as f:
        return sum(1 for l in f if word in l)

def cpu_ticks():
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])      # utime + stime

ctl = conn(path)
def listener_runs():
    ctl.sendall(json.dumps(req("thread_get_stats")).encode())
    r, _ = read_line(ctl)
    for t in r["result"]["threads"]:
        for p in t["pollers"]:
            if p["name"] == "rpc_listen":
                return p["run_count"]
    raise AssertionError("no rpc_listen poller in %r" % r)
listener_runs()                                   # ctl is accepted and works

# A limit that leaves exactly 4 free fd numbers below it (fds may have holes).
used = set(int(x) for x in os.listdir("/proc/%d/fd" % pid))
limit, free = 0, 0
while free < 4:
    free += limit not in used
    limit += 1
soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))
socks = [conn(path) for _ in range(30)]   # 4 get an fd, the rest wait in the backlog
deadline = time.monotonic() + 60
while lines("cannot accept a connection") == 0 and time.monotonic() < deadline:
    time.sleep(0.1)
check(lines("cannot accept a connection") == 1, "keeld says it is out of fds")
t0, c0, r0 = time.monotonic(), cpu_ticks(), listener_runs()
time.sleep(3)
t1, c1, r1 = time.monotonic(), cpu_ticks(), listener_runs()
# Retrying every millisecond is ~1000 runs a second; a back-off from 10 ms doubling
# to 1 s is a handful, plus about one a second.
check(r1 - r0 <= 8 + 2 * (t1 - t0), "listener backs off: %d accept attempts in %.1f s "
      "(%.0f%% of a core)" % (r1 - r0, t1 - t0,
                              100.0 * (c1 - c0) / os.sysconf("SC_CLK_TCK") / (t1 - t0)))
check(lines("cannot accept a connection") <= 2, "warning rate limited: %d line(s)"
      % lines("cannot accept a connection"))
resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
for s in socks:
    s.close()
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    p = subprocess.run([keelctl, "-s", path, "--timeout", "5", "rpc", "keel_get_version"],
                       capture_output=True, text=True)
    if p.returncode == 0:
        break
    time.sleep(0.2)
check(p.returncode == 0, "listener recovers once fds are back")
check(lines("accepting connections on") >= 1, "keeld says it accepts again")
ctl.close()
PY
keeld_alive || fail "keeld died"
stop_keeld || fail "keeld exited with $? after SIGTERM"
ok "keeld stopped cleanly"
