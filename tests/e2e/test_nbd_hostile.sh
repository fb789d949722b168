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

# No byte a client reads is uninitialised, whatever module serves it: on one connection a
# write fills the server's buffers with 0xab, then reads of never-written ranges must
# return zeroes (a null bdev once returned the recycled buffer: daemon heap).
if command -v qemu-io >/dev/null; then
	truncate -s 16M "$E2E_TMP/zero.img"
	expect_ok "null bdev" keelctl bdev create null z_null 16M
	expect_ok "malloc bdev" keelctl bdev create malloc z_malloc 16M
	expect_ok "aio bdev" keelctl bdev create aio z_aio "$E2E_TMP/zero.img"
	for m in null malloc aio; do
		expect_ok "export z_$m" keelctl export start "z_$m" --socket "$E2E_TMP/z_$m.sock"
		qemu_io_ok "$m: never-written ranges read back as zeroes" \
			"nbd+unix:///z_$m?socket=$E2E_TMP/z_$m.sock" \
			"write -P 0xab 0 1M" "read -P 0 1M 1M" "write -P 0xcd 2M 64k" "read -P 0 4M 64k" \
			"write -P 0xef 8M 4k" "read -P 0 12M 4k"
	done
else
	echo "SKIP part: qemu-io is not installed (package qemu-utils): no read-zeroes check"
fi
stop_keeld || fail "keeld did not stop cleanly"
ok "keeld stopped cleanly"
