#!/usr/bin/env bash
# A broken NBD client (bad magic, truncated header, unknown command, out-of-range
# offset, oversized length, disconnect mid-payload, ...) gets clear errors or a closed
# connection, and keeld keeps serving everyone else: nbdinfo after each scenario.
. "$(dirname "$0")/lib.sh"

command -v nbdinfo >/dev/null || skip "nbdinfo is not installed"
HOSTILE=$(dirname "$0")/nbd/hostile_client.py

start_keeld
NBD=$E2E_TMP/nbd.sock
expect_ok "create malloc bdev" keelctl bdev create malloc m0 64M
expect_ok "export" keelctl export start m0 --socket "$NBD" --name disk0

# A well-behaved client stays connected through all of it.
fio --name=bystander --ioengine=nbd --uri="nbd+unix:///disk0?socket=$NBD" --rw=randrw \
	--bs=4k --iodepth=4 --size=8M --offset=32M --time_based --runtime=600 \
	--output="$E2E_TMP/bystander.out" >/dev/null 2>&1 &
BYSTANDER=$!
E2E_EXTRA_PIDS=$BYSTANDER
bystander_connected() {
	[ "$(keelctl --json export list | jq -r '.[] | select(.name == "disk0") | .connections')" -ge 1 ] 2>/dev/null
}
wait_until 60 "the well-behaved client connected" bystander_connected

for scenario in bad-option-magic unknown-options huge-option truncated-option bad-magic \
	truncated-header unknown-command out-of-range oversized-length disconnect-mid-payload \
	many-in-flight-then-vanish disc; do
	"$PY" "$HOSTILE" "$NBD" disk0 "$scenario" || fail "scenario $scenario"
	keeld_alive || fail "keeld died after $scenario"
	nbdinfo --size "nbd+unix:///disk0?socket=$NBD" | grep -qx 67108864 ||
		fail "nbdinfo after $scenario"
	ok "$scenario: handled, keeld still serves"
done
kill -0 $BYSTANDER || fail "the well-behaved client was disconnected"
ok "a well-behaved client kept its connection"
kill $BYSTANDER
wait $BYSTANDER 2>/dev/null
grep -q "bad request magic" "$KEELD_LOG" || fail "no log line for the bad magic"
stop_keeld || fail "keeld did not stop cleanly"
ok "keeld stopped cleanly"
