#!/usr/bin/env bash
# keeld's Prometheus endpoint (--metrics-listen), read by prometheus_client's parser:
#  - off by default: without the option keeld opens no TCP port;
#  - every documented family is on the page with its type;
#  - counters move under load (qemu-io on the export): volume ops and bytes, the
#    latency histogram, the export's bytes; a connected client is counted;
#  - a faulted replica shows in the gauges; a rebuild shows progress, rate and ETA
#    (rate-limited far below anything that could finish while we look);
#  - hostile HTTP (wrong path, POST with a body, a huge header, a flood of idle
#    connections) gets clear answers and keeld keeps serving;
#  - a main thread that does not answer (a test-only stall) gets scrapes a 503 after
#    the timeout, never a hang; scrapes work again once it runs.
# One python process parses every page (tests/e2e/metrics/prom_client.py).
. "$(dirname "$0")/lib.sh"

command -v qemu-io >/dev/null || skip "qemu-io is needed (package qemu-utils)"
command -v ss >/dev/null || skip "ss is needed (package iproute2)"
"$PY" -c "import prometheus_client, nbd" 2>/dev/null ||
	skip "python3-prometheus-client and python3-libnbd are needed"

D=$E2E_TMP/disks
mkdir -p "$D"
cd "$E2E_TMP" || fail "cd"

# TCP ports keeld listens on (LISTEN sockets of its pid).
keeld_tcp_listeners() {
	ss -Hltnp 2>/dev/null | grep -c "pid=$KEELD_PID,"
}

# --- off by default -------------------------------------------------------------------
expect_usage "a host name is refused (no DNS)" "numeric" "$KEEL_BIN/keeld" --metrics-listen example.com:9560
expect_usage "a bad port is refused" "port" "$KEEL_BIN/keeld" --metrics-listen 127.0.0.1:99999
"$KEEL_BIN/keeld" --help | grep -q -- "--metrics-listen" || fail "--help does not mention --metrics-listen"
start_keeld
n=$(keeld_tcp_listeners)
[ "$n" = 0 ] || fail "keeld without --metrics-listen listens on $n TCP ports: $(ss -Hltnp | grep "pid=$KEELD_PID,")"
ok "metrics off by default: keeld listens on no TCP port"
stop_keeld || fail "keeld exited with an error"

# --- on a free loopback port --------------------------------------------------------
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# KEEL_DEBUG_RPC=1: the test-only method that stalls a reactor (the 503 check below).
KEEL_DEBUG_RPC=1 start_keeld --metrics-listen "127.0.0.1:$PORT"
[ "$(keeld_tcp_listeners)" = 1 ] || fail "keeld does not listen on one TCP port with --metrics-listen"
ss -Hltn "sport = :$PORT" | grep -q "127.0.0.1:$PORT" || fail "metrics port $PORT not bound to 127.0.0.1"

# A second keeld on the same port stops at startup and says why.
out=$(timeout 60 "$KEEL_BIN/keeld" --foreground --rpc-socket "$E2E_TMP/second.sock" \
	--state-dir "$E2E_TMP/second" --cpus "${KEEL_E2E_CPUS:-0}" --metrics-listen "127.0.0.1:$PORT" 2>&1)
rc=$?
[ $rc -eq 1 ] || fail "a second keeld on metrics port $PORT exited with $rc, want 1: $out"
case "$out" in *"address is in use"*) ;; *) fail "a second keeld on the same port does not say why: $out" ;; esac
ok "a second keeld on the same metrics port exits 1: the address is in use"

coproc PROM { "$PY" -u "$E2E_DIR/metrics/prom_client.py" "http://127.0.0.1:$PORT/metrics" 2>&1; }
E2E_EXTRA_PIDS=$PROM_PID

# q CMD...: one command to the parser, its one-line answer on stdout.
q() {
	local ans
	echo "$*" >&"${PROM[1]}" || fail "the metrics parser is gone"
	IFS= read -r -t 60 ans <&"${PROM[0]}" || fail "no answer from the metrics parser to: $*"
	echo "$ans"
}

scrape() {
	local ans
	ans=$(q scrape)
	case "$ans" in ok*) ;; *) fail "scrape: $ans" ;; esac
}

# val SAMPLE LABELS: a sample's value from the last scrape; fails when absent.
val() {
	local v
	v=$(q value "$1" "$2")
	case "$v" in none | many | error*) fail "$1{$2}: $v" ;; esac
	echo "$v"
}

# int SAMPLE LABELS: the value as a whole number.
int() {
	local v
	v=$(val "$1" "$2") || exit 1
	printf '%.0f\n' "$v"
}

# fcmp A OP B: compare two floats.
fcmp() {
	"$PY" -c "import sys; a, op, b = float(sys.argv[1]), sys.argv[2], float(sys.argv[3]); sys.exit(0 if {'<': a < b, '>': a > b, '<=': a <= b, '>=': a >= b}[op] else 1)" "$1" "$2" "$3"
}

expect_ok "create v1 (2 replicas)" keelctl volume create v1 --size 64M --replica "$D/a" --replica "$D/b"
expect_ok "export v1" keelctl export start v1 --socket "$E2E_TMP/v1.nbd"
URI="nbd+unix:///v1?socket=$E2E_TMP/v1.nbd"
scrape

# --- families and types ---------------------------------------------------------------
for ft in keel_volume_state:gauge keel_volume_size_bytes:gauge keel_volume_replica_count:gauge \
	keel_volume_replicas:gauge keel_volume_read_ops_total:counter \
	keel_volume_read_bytes_total:counter keel_volume_write_ops_total:counter \
	keel_volume_write_bytes_total:counter keel_volume_flush_ops_total:counter \
	keel_volume_io_errors_total:counter keel_volume_io_latency_seconds:histogram \
	keel_volume_rebuild_state:gauge keel_volume_rebuild_progress_ratio:gauge \
	keel_volume_rebuild_done_bytes:gauge keel_volume_rebuild_rate_bytes_per_second:gauge \
	keel_volume_rebuild_eta_seconds:gauge keel_replica_state:gauge \
	keel_replica_io_errors_total:counter keel_replica_read_errors_repaired_total:counter \
	keel_export_connections:gauge \
	keel_export_received_bytes_total:counter keel_export_sent_bytes_total:counter \
	keel_nbd_connections:gauge keel_nbd_connections_refused_total:counter \
	keel_nbd_buffer_bytes:gauge keel_nbd_stall_timeouts_total:counter \
	keel_metrics_collect_seconds:gauge \
	keel_reactor_busy_seconds_total:counter keel_reactor_idle_seconds_total:counter \
	keel_reactor_wakeups_total:counter keel_reactor_mode:gauge \
	process_resident_memory_bytes:gauge process_open_fds:gauge keel_build_info:gauge; do
	t=$(q type "${ft%%:*}")
	[ "$t" = "${ft##*:}" ] || fail "family ${ft%%:*}: type $t, want ${ft##*:}"
done
ok "every documented family is on the page with its type"
DOC=${KEEL_SOURCE_DIR:-$E2E_DIR/../..}/docs/monitoring.md
for f in $(q families); do
	grep -q "\`$f[{\`]" "$DOC" || fail "family $f is on the page but not in docs/monitoring.md"
done
# The alert rules there are valid YAML and name only metrics keeld serves (or up).
rule_metrics=$("$PY" - "$DOC" <<'PYEOF'
import re, sys, yaml
blocks = re.findall(r"```yaml\n(.*?)```", open(sys.argv[1]).read(), re.S)
names = set()
for block in blocks:
    doc = yaml.safe_load(block)
    for group in doc.get("groups", []):
        for rule in group["rules"]:
            assert rule["alert"] and rule["expr"], rule
            names |= set(re.findall(r"\b(?:keel|process)_[a-z_]+", rule["expr"]))
print(" ".join(sorted(names)))
PYEOF
) || fail "the alert rules in docs/monitoring.md are not valid YAML"
[ -n "$rule_metrics" ] || fail "no alert rules found in docs/monitoring.md"
for m in $rule_metrics; do
	[ "$(q count "$m" -)" -gt 0 ] || [ "$(q type "$m")" != none ] || fail "alert rules use $m, which the page lacks"
done
ok "docs/monitoring.md lists every family; its alert rules parse and use served metrics ($rule_metrics)"
[ "$(int keel_volume_state volume=v1,state=online)" = 1 ] || fail "v1 not online in the metrics"
[ "$(int keel_volume_replicas volume=v1,state=healthy)" = 2 ] || fail "v1 has not 2 healthy replicas in the metrics"
[ "$(int keel_volume_replica_count volume=v1)" = 2 ] || fail "v1 replica count is not 2"
[ "$(int keel_reactor_mode reactor=0,mode=adaptive)" = 1 ] || fail "reactor 0 not adaptive in the metrics"
rss=$(int process_resident_memory_bytes -)
[ "$rss" -gt 1048576 ] || fail "process_resident_memory_bytes $rss is not plausible"
fcmp "$(val keel_metrics_collect_seconds -)" "<" 5 || fail "keel_metrics_collect_seconds not below the 5 s timeout"
fds=$(int process_open_fds -)
[ "$fds" -gt 3 ] || fail "process_open_fds $fds is not plausible"
ok "v1 online with 2 healthy replicas; process RSS $rss bytes, $fds fds"

# --- counters under load ----------------------------------------------------------------
w0=$(int keel_volume_write_ops_total volume=v1)
wb0=$(int keel_volume_write_bytes_total volume=v1)
r0=$(int keel_volume_read_ops_total volume=v1)
f0=$(int keel_volume_flush_ops_total volume=v1)
in0=$(int keel_export_received_bytes_total export=v1,bdev=v1)
out0=$(int keel_export_sent_bytes_total export=v1,bdev=v1)
busy0=$(val keel_reactor_busy_seconds_total reactor=0,cpu=0)
qemu_io_ok "write 2 MiB, flush, read 1 MiB on v1" "$URI" "write -P 0x5a 0 1M" \
	"write -P 0x5b 1M 1M" "flush" "read -P 0x5a 0 1M"
scrape
w1=$(int keel_volume_write_ops_total volume=v1)
wb1=$(int keel_volume_write_bytes_total volume=v1)
[ "$w1" -ge $((w0 + 2)) ] || fail "write ops did not move: $w0 -> $w1"
[ "$wb1" -ge $((wb0 + 2097152)) ] || fail "write bytes did not move by 2 MiB: $wb0 -> $wb1"
[ "$(int keel_volume_read_ops_total volume=v1)" -ge $((r0 + 1)) ] || fail "read ops did not move"
[ "$(int keel_volume_flush_ops_total volume=v1)" -ge $((f0 + 1)) ] || fail "flush ops did not move"
hc=$(int keel_volume_io_latency_seconds_count volume=v1,op=write)
[ "$hc" = "$w1" ] || fail "write latency histogram counts $hc, write ops are $w1"
hinf=$(int keel_volume_io_latency_seconds_bucket volume=v1,op=write,le=+Inf)
[ "$hinf" = "$w1" ] || fail "write latency +Inf bucket $hinf, write ops $w1"
fcmp "$(val keel_volume_io_latency_seconds_sum volume=v1,op=write)" ">" 0 || fail "write latency sum is 0"
in1=$(int keel_export_received_bytes_total export=v1,bdev=v1)
out1=$(int keel_export_sent_bytes_total export=v1,bdev=v1)
[ "$in1" -ge $((in0 + 2097152)) ] || fail "export bytes in did not move by 2 MiB: $in0 -> $in1"
[ "$out1" -ge $((out0 + 1048576)) ] || fail "export bytes out did not move by 1 MiB: $out0 -> $out1"
fcmp "$(val keel_reactor_busy_seconds_total reactor=0,cpu=0)" ">" "$busy0" || fail "reactor 0 busy time did not move"
# RPC and the page read the same counters (nothing moved since the scrape).
exports=$(keelctl rpc nbd_get_exports '{"name":"v1"}') || fail "nbd_get_exports: $exports"
[ "$(jget "$exports" '.[0].bytes_in')" = "$in1" ] || fail "nbd_get_exports bytes_in $(jget "$exports" '.[0].bytes_in') != metrics $in1"
[ "$(jget "$exports" '.[0].bytes_out')" = "$out1" ] || fail "nbd_get_exports bytes_out != metrics $out1"
iostat=$(keelctl rpc bdev_get_iostat '{"name":"v1"}') || fail "bdev_get_iostat: $iostat"
[ "$(jget "$iostat" '.bdevs[0].io.write.ops')" = "$w1" ] || fail "bdev_get_iostat write ops != metrics $w1"
ok "counters moved: writes $w0 -> $w1 ($wb0 -> $wb1 bytes), histogram count $hc, export in $in0 -> $in1, out $out0 -> $out1"

[ "$(q hold "$URI")" = ok ] || fail "cannot hold an NBD connection to v1"
scrape
[ "$(int keel_export_connections export=v1,bdev=v1)" = 1 ] || fail "a connected client is not counted"
[ "$(int keel_nbd_connections -)" = 1 ] || fail "keel_nbd_connections is not 1 with one client"
[ "$(q release)" = ok ] || fail "cannot close the NBD connection"
ok "a connected NBD client shows in keel_export_connections"

# --- a faulted replica ------------------------------------------------------------------
expect_ok "fault replica b" keelctl replica fault v1 "$D/b"
scrape
[ "$(int keel_volume_state volume=v1,state=degraded)" = 1 ] || fail "v1 not degraded in the metrics"
[ "$(int keel_volume_replicas volume=v1,state=faulted)" = 1 ] || fail "no faulted replica counted"
[ "$(int keel_volume_replicas volume=v1,state=healthy)" = 1 ] || fail "healthy replicas not 1"
[ "$(int keel_replica_state volume=v1,replica=v1.r1,state=faulted)" = 1 ] || fail "replica v1.r1 not faulted in the metrics"
ok "faulted replica: v1 degraded, 1 healthy + 1 faulted, v1.r1 faulted"

# --- a rebuild in progress --------------------------------------------------------------
# At 0.25 MiB/s the 64 MiB copy takes over 4 minutes: surely running while we look.
expect_ok "rate limit 0.25 MiB/s" keelctl rpc rebuild_set_options '{"rate_limit_mib_s": 0.25}'
expect_ok "add replica c" keelctl replica add v1 "$D/c"
C=$(jget "$(keelctl --json volume show v1)" --arg p "$D/c" '.replicas[] | select(.path == $p) | .bdev')
rebuild_moving() {
	scrape
	[ "$(q value keel_volume_rebuild_state "volume=v1,replica=$C,state=running")" = 1.0 ] &&
		fcmp "$(val keel_volume_rebuild_progress_ratio "volume=v1,replica=$C")" ">" 0
}
wait_until 60 "rebuild of $C running with progress" rebuild_moving
p1=$(val keel_volume_rebuild_progress_ratio "volume=v1,replica=$C")
d1=$(int keel_volume_rebuild_done_bytes "volume=v1,replica=$C")
[ "$(int keel_volume_replicas volume=v1,state=rebuilding)" = 1 ] || fail "no rebuilding replica counted"
progress_moved() {
	scrape
	[ "$(int keel_volume_rebuild_done_bytes "volume=v1,replica=$C")" -gt "$d1" ]
}
wait_until 60 "rebuild progress moving" progress_moved
p2=$(val keel_volume_rebuild_progress_ratio "volume=v1,replica=$C")
fcmp "$p2" ">" "$p1" || fail "progress ratio did not grow: $p1 -> $p2"
fcmp "$p2" "<" 1 || fail "progress ratio $p2 reached 1 under a 0.25 MiB/s limit"
rate=$(val keel_volume_rebuild_rate_bytes_per_second "volume=v1,replica=$C")
fcmp "$rate" ">" 0 || fail "rebuild rate is $rate"
fcmp "$rate" "<" $((4 << 20)) || fail "rebuild rate $rate far above the 0.25 MiB/s limit"
eta=$(int keel_volume_rebuild_eta_seconds "volume=v1,replica=$C")
[ "$eta" -gt 0 ] || fail "rebuild ETA is $eta"
ok "rebuild of $C: progress $p1 -> $p2, rate $rate B/s, ETA $eta s"
# The limit binds a job from its start: stop it, lift the limit, start it again.
expect_ok "stop the limited rebuild" keelctl rebuild stop v1 "$C"
rebuild_stopped() {
	scrape
	[ "$(q value keel_volume_rebuild_state "volume=v1,replica=$C,state=stopped")" = 1.0 ]
}
wait_until 60 "rebuild of $C stopped in the metrics" rebuild_stopped
expect_ok "lift the rate limit" keelctl rpc rebuild_set_options '{"rate_limit_mib_s": 0}'
expect_ok "start the rebuild again" keelctl rebuild start v1 "$C"
rebuild_done() {
	scrape
	[ "$(q value keel_volume_rebuild_state "volume=v1,replica=$C,state=completed")" = 1.0 ] &&
		[ "$(q value keel_replica_state "volume=v1,replica=$C,state=healthy")" = 1.0 ]
}
wait_until 120 "rebuild of $C completed" rebuild_done
[ "$(val keel_volume_rebuild_progress_ratio "volume=v1,replica=$C")" = 1.0 ] || fail "completed rebuild not at ratio 1"
[ "$(int keel_volume_replicas volume=v1,state=rebuilding)" = 0 ] || fail "a replica still counted rebuilding"
ok "rebuild completed: ratio 1, $C healthy"

# --- hostile HTTP -----------------------------------------------------------------------
a=$(q http GET /nope)
[ "$a" = "status 404" ] || fail "GET /nope: $a, want 404"
a=$(q http POST /metrics)
[ "$a" = "status 405" ] || fail "POST /metrics: $a, want 405"
a=$(q http DELETE /metrics)
[ "$a" = "status 405" ] || fail "DELETE /metrics: $a, want 405"
a=$(q http GET /metrics 200000)
case "$a" in "status 431" | "status 413" | "status 414" | closed) ;; *) fail "a 200 kB header: $a, want 431 or a close" ;; esac
ok "wrong path 404, POST/DELETE 405, a 200 kB header -> $a"
# Metrics connections keeld has accepted (sockets its pid holds).
held_http() {
	ss -Htnp state established "sport = :$PORT" 2>/dev/null | grep -c "pid=$KEELD_PID,"
}
held_at_least() { [ "$(held_http)" -ge "$1" ]; }
[ "$(q flood 100)" = ok ] || fail "cannot start 100 connections"
wait_until 60 "keeld accepting the flood" held_at_least 16
keelctl rpc keel_get_version >/dev/null || fail "keeld does not answer RPC while 100 HTTP connections are open"
n=$(held_http)
[ "$n" -le 16 ] || fail "keeld holds $n metrics connections, more than its limit of 16"
[ "$(q unflood)" = ok ] || fail "cannot close the connections"
# Held connections take the connection slots until their idle timeout (10 s); closed
# ones free them at once.
scrape_ok() { case "$(q scrape)" in ok*) return 0 ;; *) return 1 ;; esac; }
wait_until 60 "a scrape after the flood" scrape_ok
keeld_alive || fail "keeld died"
ok "100 idle connections: keeld held $n (limit 16), RPC kept answering, scrapes work again once they close"

# --- a daemon that does not answer -----------------------------------------------------
# Reactor 0 runs the main keel thread, which gathers snapshots: stalled for 30 s, it
# cannot answer, and the scrape gets 503 after keeld's 5 s timeout instead of hanging.
# The second scrape finds the first snapshot still pending and waits for it rather
# than queue another. The stall (30 s) outlasts both (about 10 s after it began).
keelctl --timeout 120 rpc framework_debug_stall_reactor '{"reactor": 0, "ms": 30000}' \
	>"$E2E_TMP/stall.out" 2>&1 &
STALL_PID=$!
stall_began() { grep -q "reactor 0 stalls" "$KEELD_LOG"; }
wait_until 60 "the stall to begin" stall_began
t0=$SECONDS
a=$(q scrape)
[ "$a" = "error http 503" ] || fail "a scrape while the main thread is stuck: $a, want 503"
a=$(q scrape)
[ "$a" = "error http 503" ] || fail "a second scrape while the main thread is stuck: $a, want 503"
t1=$SECONDS
grep -q "reactor 0 resumes" "$KEELD_LOG" &&
	fail "the 30 s stall ended before the two scrapes did: the machine is too slow for this check"
[ $((t1 - t0)) -ge 8 ] || fail "two scrapes answered 503 in $((t1 - t0)) s: they did not wait 5 s each"
ok "main thread stuck: two scrapes got 503 after the timeout ($((t1 - t0)) s for both)"
wait "$STALL_PID" || fail "framework_debug_stall_reactor failed: $(cat "$E2E_TMP/stall.out")"
wait_until 60 "a scrape after the stall" scrape_ok
ok "scrapes answer again once the main thread runs"

q release >/dev/null
exec {PROM[1]}>&-
stop_keeld || fail "keeld exited with an error after the metrics test"
ok "keeld stopped cleanly"
