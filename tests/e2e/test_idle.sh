#!/usr/bin/env bash
# Idle means idle: a keeld on 2 reactors with 16 exported volumes (2 replicas each, on
# sparse files) and no client wakes its reactors a few times a second, not a thousand.
# A poller that wakes a reactor on a timer with nothing to do (the RPC server's pollers
# used to run every millisecond) shows here as a failure. The bound is generous: it
# counts wake-ups, not time, and a loaded machine makes fewer of them, not more.
. "$(dirname "$0")/lib.sh"

N=16
# Wake-ups per second per reactor allowed (issue 11's target for an idle daemon). An
# idle keeld makes a handful (timers with a real deadline, the stats requests of this
# test); a 1 ms timer alone makes about 1000.
BOUND=${KEEL_E2E_IDLE_WAKEUPS:-50}
# One aio context of 1024 events per keel thread doing aio (main, 2 NBD workers) + spare.
NEED=$((4 * 1024))

command -v nbdinfo >/dev/null || skip "nbdinfo is needed (package libnbd-bin)"
[ "$(nproc)" -ge 2 ] || skip "needs 2 CPUs for keeld --cpus 0-1"
need_aio_free "$NEED"

# The default mode (adaptive): what users run, and the one a timer hurts most (each
# wake-up used to start a spin window).
KEEL_E2E_CPUS=0-1 start_keeld

make_volumes "$N"
for i in $(seq 1 "$N"); do
	keelctl export start "v$i" --socket "$E2E_TMP/v$i.nbd" >/dev/null || fail "export start v$i"
done
all_online() {
	keelctl --json volume list >"$E2E_TMP/list.json" &&
		[ "$(jq '[.[] | select(.state == "online" and
			([.replicas[] | select(.state == "healthy")] | length) == 2)] | length' \
			"$E2E_TMP/list.json")" -eq "$N" ]
}
wait_until 120 "all $N volumes online with 2 healthy replicas" all_online
ok "$N volumes online, 2 healthy replicas each"
# Every export answers a real client (and the connections end before the count).
for i in $(seq 1 "$N"); do
	out=$(nbdinfo --size "nbd+unix:///v$i?socket=$E2E_TMP/v$i.nbd" 2>&1) ||
		fail "nbdinfo v$i: $out"
	[ "$out" = $((64 << 20)) ] || fail "nbdinfo v$i: size $out, expected $((64 << 20))"
done
ok "all $N exports answer nbdinfo"

keelctl --json reactor stats --interval 2000 >"$E2E_TMP/stats.json" || fail "reactor stats"
reactors=$(jq '.reactors.reactors | length' "$E2E_TMP/stats.json")
[ "$reactors" -eq 2 ] || fail "expected 2 reactors, stats show $reactors"
over=$(jq --argjson b "$BOUND" '[.reactors.reactors[] | select(.wakeups_per_sec > $b)] | length' \
	"$E2E_TMP/stats.json")
line='"reactor \(.reactor) (\(.mode)): \(.wakeups_per_sec * 10 | round / 10) wake-ups/s"'
line+=' + " over \($iv) ms; woken most since start by: "'
line+=' + ([.wakers[] | "\(.name) \(.wakeups)"] | join(", "))'
summary=$(jq -r ".reactors.interval_ms as \$iv | .reactors.reactors[] | $line" "$E2E_TMP/stats.json")
[ "$over" -eq 0 ] || fail "an idle keeld woke a reactor more than $BOUND times a second:
$summary"
while read -r line; do ok "$line (bound $BOUND/s)"; done <<<"$summary"

keeld_alive || fail "keeld died"
stop_keeld || fail "keeld exited with an error"
ok "keeld stopped cleanly"
