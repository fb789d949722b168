#!/usr/bin/env bash
# Volumes across keeld restarts: the volume and its NBD export come back by
# themselves; a replica file missing at start gives a degraded volume that still
# takes writes; when the file returns it is stale and never read from, neither while
# the copy that brings it back runs.
. "$(dirname "$0")/lib.sh"

command -v qemu-io >/dev/null || skip "qemu-io is needed (package qemu-utils)"
command -v nbdinfo >/dev/null || skip "nbdinfo is needed (package libnbd-bin)"

D=$E2E_TMP/disks
NBD=$E2E_TMP/rv.nbd
URI="nbd+unix:///rv?socket=$NBD"
mkdir -p "$D"

# Checks the pattern $1 over the first MiB, four times over one connection: reads
# take turns among the readable replicas of a channel, so one read from a replica
# that must not be read (an old pattern there) fails it.
expect_pattern() {
	qemu_io_ok "$2" "$URI" "read -P $1 0 1M" "read -P $1 0 1M" "read -P $1 0 1M" "read -P $1 0 1M"
}

restart() {
	stop_keeld || fail "keeld exited with an error"
	start_keeld
}

# The NBD server tells keeld when an export starts or stops and keeld saves its state
# then: state_lists_export N holds once the state file lists N exports on rv's socket.
state_lists_export() {
	jq -e --arg s "$NBD" --argjson n "$1" '[.exports[] | select(.socket == $s)] | length == $n' \
		"$STATE/state.json" >/dev/null 2>&1
}

start_keeld
expect_ok "create rv" keelctl volume create rv --size 32M --replica "$D/a" --replica "$D/b"
expect_ok "export rv" keelctl export start rv --socket "$NBD"
wait_until 60 "the started export in the state file" state_lists_export 1
ok "the started export is in the state file"
qemu_io_ok "write 0xaa" "$URI" "write -P 0xaa 0 1M"

# --- plain restart: volume and export come back ---------------------------------------
restart
nbdinfo "$URI" >/dev/null 2>&1 || fail "export not back after restart: $(nbdinfo "$URI" 2>&1)"
ok "nbdinfo works after restart without re-creating anything"
expect_pattern 0xaa "data survives the restart"
expect_ok "show after restart" keelctl volume show rv
case "$OUT" in *"state:       online"*) ;; *) fail "rv not online after restart: $OUT" ;; esac

# --- a replica file missing at start -------------------------------------------------
stop_keeld || fail "keeld exited with an error"
mv "$D/b" "$D/b.away"
start_keeld
expect_ok "show with b missing" keelctl volume show rv
case "$OUT" in *"state:       degraded"*) ok "volume degraded" ;; *) fail "not degraded: $OUT" ;; esac
case "$OUT" in *"$D/b"*offline*missing*) ok "b reported missing/offline" ;; *) fail "b not reported missing: $OUT" ;; esac
[ ! -e "$D/b" ] || fail "keeld recreated the missing replica file"
qemu_io_ok "write 0xbb to the degraded volume" "$URI" "write -P 0xbb 0 1M"
expect_pattern 0xbb "degraded volume takes writes"

# --- the file is back: stale, never read from ------------------------------------------
stop_keeld || fail "keeld exited with an error"
mv "$D/b.away" "$D/b"
start_keeld
expect_ok "show with b back" keelctl volume show rv
# Assembly must find it stale. Without a rebuild engine it stays out (faulted/stale);
# with one it is brought back by a rebuild from the good replica. Either way it is
# never read from before it is in sync, which the reads below check.
case "$OUT" in
*"$D/b"*faulted*stale*)
	ok "b is stale"
	case "$OUT" in *"state:       degraded"*) ;; *) fail "volume not degraded with a stale replica: $OUT" ;; esac ;;
*)
	grep -q "r1 refused: stale" "$KEELD_LOG" || fail "b was not found stale at assembly: $OUT"
	ok "b was found stale at assembly and is being rebuilt: $(echo "$OUT" | grep "$D/b")" ;;
esac
expect_pattern 0xbb "reads see the new data (stale replica not read)"

# --- a replica behind its copy is never read ------------------------------------------
# The copy above may be over before the reads: catch one in the middle for sure. b
# misses a write while faulted, then rejoins with a copy limited to 0.01 MiB/s: two
# segments go at once, the rest of the dirty region takes minutes; b still holds 0xbb
# there, which a read that landed on b would return.
rb_job() { # rb_job JQ-FILTER: over the volume's latest rebuild job
	keelctl --json rebuild status rv 2>/dev/null | jq -r "last | $1"
}
b_healthy() {
	[ "$(keelctl --json volume show rv | jq -r --arg p "$D/b" '.replicas[] | select(.path == $p) | .state')" = healthy ]
}
wait_until 60 "b rebuilt after assembly" b_healthy
expect_ok "fault b" keelctl replica fault rv "$D/b"
qemu_io_ok "write 0xcc while b is out" "$URI" "write -P 0xcc 0 1M"
expect_ok "rate limit 0.01 MiB/s" keelctl rpc rebuild_set_options '{"rate_limit_mib_s": 0.01}'
expect_ok "re-add b: a slow copy" keelctl replica add rv "$D/b"
copy_running() { [ "$(rb_job .state)" = running ]; }
wait_until 60 "the copy of b running" copy_running
expect_pattern 0xcc "reads during the copy see the new data (b not read)"
[ "$(rb_job '.state + " " + (.blocks_done < .blocks_total | tostring)')" = "running true" ] ||
	fail "the copy of b ended before the reads: $(keelctl rebuild status rv)"
ok "the copy of b was still running after the reads"
expect_ok "stop the copy of b" keelctl rebuild stop rv "$(rb_job .target)"
expect_ok "lift the rate limit" keelctl rpc rebuild_set_options '{"rate_limit_mib_s": 0}'

# The stale replica can be dropped; keeld keeps the volume with one replica.
expect_ok "remove the stale replica" keelctl replica remove rv "$D/b"
restart
expect_ok "show after removing b" keelctl --json volume show rv
[ "$(jget "$OUT" '.replicas | length')" = 1 ] || fail "removed replica came back: $OUT"
[ "$(jget "$OUT" .state)" = online ] || fail "rv not online: $OUT"
expect_pattern 0xcc "data intact"

# --- state file written even when keeld is killed ----------------------------------
expect_ok "stop export" keelctl export stop rv
wait_until 60 "state file without the stopped export" state_lists_export 0
ok "the stopped export left the state file"
kill -KILL "$KEELD_PID"
wait "$KEELD_PID" 2>/dev/null
KEELD_PID=
start_keeld
expect_ok "export list after kill" keelctl export list
case "$OUT" in *rv.nbd*) fail "stopped export came back: $OUT" ;; esac
expect_ok "volume survives SIGKILL" keelctl volume show rv
stop_keeld || fail "keeld exited with an error (sanitizer report?)"
echo "PASS $E2E_NAME"
