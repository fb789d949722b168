#!/usr/bin/env bash
# NBD socket exports against real clients: nbdinfo (size, block sizes, flags),
# qemu-io (pattern write/read, zero, discard, flush), nbdcopy (round trip with
# checksums, multi-conn), fio's nbd engine with crc32c verify at QD32, two clients at
# once, read-only exports, TCP, export list/stop and hot remove of the bdev.
. "$(dirname "$0")/lib.sh"

for tool in nbdinfo nbdcopy qemu-io fio sha256sum; do
	command -v $tool >/dev/null || skip "$tool is not installed"
done

start_keeld
NBD=$E2E_TMP/nbd.sock
URI="nbd+unix:///disk0?socket=$NBD"

expect_ok "create malloc bdev" keelctl bdev create malloc m0 64M
expect_ok "export m0 as disk0" keelctl export start m0 --socket "$NBD" --name disk0
expect_fail "second export on the same socket" "in use" \
	keelctl export start m0 --socket "$NBD" --name disk1 --read-only
expect_fail "duplicate export name" "exists" \
	keelctl export start m0 --socket "$E2E_TMP/other.sock" --name disk0
expect_fail "bad export name" "not a valid export name" \
	keelctl export start m0 --socket "$E2E_TMP/x.sock" --name "a/b"
expect_fail "missing bdev" "not found" keelctl export start nope --socket "$E2E_TMP/y.sock"

# ---- nbdinfo: size, block sizes, flags ----
J=$(nbdinfo --json "$URI") || fail "nbdinfo failed"
[ "$(jget "$J" '.exports[0]."export-size"')" = 67108864 ] || fail "size: $J"
[ "$(jget "$J" '.exports[0].block_size_minimum')" = 512 ] || fail "min block: $J"
[ "$(jget "$J" '.exports[0].block_size_preferred')" = 4096 ] || fail "pref block: $J"
[ "$(jget "$J" '.exports[0].block_size_maximum')" = 33554432 ] || fail "max block: $J"
for f in can_flush can_zero can_trim can_multi_conn; do
	[ "$(jget "$J" ".exports[0].$f")" = true ] || fail "$f not advertised: $J"
done
[ "$(jget "$J" '.exports[0].is_read_only')" = false ] || fail "read-only: $J"
[ "$(jget "$J" '.structured')" = true ] || fail "structured replies: $J"
ok "nbdinfo: size, block sizes and flags"
nbdinfo --list "nbd+unix:///?socket=$NBD" | grep -q 'export="disk0"' || fail "nbdinfo --list"
ok "nbdinfo --list"
# The default (empty) export name is this export.
nbdinfo --size "nbd+unix:///?socket=$NBD" | grep -qx 67108864 || fail "default export"
ok "default export name"
expect_fail "unknown export name" "" nbdinfo "nbd+unix:///nope?socket=$NBD"

# ---- qemu-io ----
qemu_io_ok "qemu-io pattern write/read, zero, discard, flush, FUA" "$URI" \
	'write -P 0xab 0 1M' 'read -P 0xab 0 1M' \
	'write -P 0x5c 4095k 3M' 'read -P 0x5c 4095k 3M' 'read -P 0xab 0 1023k' \
	'write -z 2M 1M' 'read -P 0 2M 1M' 'discard 8M 1M' 'flush' \
	'write -P 0x11 -f 63M 1M' 'read -P 0x11 63M 1M'
# qemu refuses a read beyond the end by itself, so keeld would never see it: send the
# requests raw and check keeld's replies (EINVAL / ENOSPC, then a good read works).
out=$("$PY" "$E2E_DIR/nbd/hostile_client.py" "$NBD" disk0 out-of-range 2>&1) ||
	fail "requests beyond the end: $out"
ok "keeld refuses reads and writes beyond the end ($out)"

# ---- nbdcopy round trip ----
head -c 64M /dev/urandom >"$E2E_TMP/src.img"
nbdcopy "$E2E_TMP/src.img" "$URI" || fail "nbdcopy to export"
nbdcopy "$URI" "$E2E_TMP/back.img" || fail "nbdcopy from export"
[ "$(sha256sum <"$E2E_TMP/src.img")" = "$(sha256sum <"$E2E_TMP/back.img")" ] || fail "nbdcopy checksums differ"
ok "nbdcopy round trip, checksums match"
nbdcopy --connections=4 --requests=64 "$URI" "$E2E_TMP/back4.img" || fail "nbdcopy multi-conn"
cmp -s "$E2E_TMP/src.img" "$E2E_TMP/back4.img" || fail "multi-conn copy differs"
ok "nbdcopy with 4 connections"

# ---- fio with verify at QD32, and two clients at once ----
fio_verify() {
	fio --name="$1" --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32 \
		--offset="$2" --size=16M --verify=crc32c --verify_fatal=1 --do_verify=1 --verify_state_save=0 \
		--output-format=json --output="$E2E_TMP/$1.json" >/dev/null 2>&1
}
fio_verify v1 0 || fail "fio verify QD32: $(cat "$E2E_TMP/v1.json" 2>/dev/null | tail -5)"
ok "fio nbd engine, crc32c verify at QD32"
fio_verify c1 0 & P1=$!
fio_verify c2 32M & P2=$!
wait $P1 || fail "concurrent client 1 failed"
wait $P2 || fail "concurrent client 2 failed"
ok "two clients at once (verify)"
J=$(keelctl --json export list)
[ "$(jget "$J" '.[0].connections')" = 0 ] || fail "connections not back to 0: $J"
ok "export list counts connections"

# ---- read-only export and TCP ----
PORT=$((20000 + RANDOM % 20000))
expect_ok "read-only tcp export" keelctl export start m0 --name ro --socket "$E2E_TMP/ro.sock" \
	--tcp "127.0.0.1:$PORT" --read-only
J=$(nbdinfo --json "nbd://127.0.0.1:$PORT/ro") || fail "nbdinfo over tcp"
[ "$(jget "$J" '.exports[0].is_read_only')" = true ] || fail "not read-only: $J"
ok "nbdinfo over TCP sees a read-only export"
# nbdcopy filled the disk with random data: write a pattern the read-only export must show.
qemu_io_ok "write 0x11 through the writable export" "$URI" 'write -P 0x11 63M 1M'
qemu_io_ok "read 0x11 from the read-only export" "nbd+unix:///ro?socket=$E2E_TMP/ro.sock" -r \
	'read -P 0x11 63M 1M'
OUT=$(qemu-io -f raw "nbd+unix:///ro?socket=$E2E_TMP/ro.sock" -c 'write 0 4k' 2>&1)
case "$OUT" in *"wrote"*) fail "write on read-only export succeeded: $OUT" ;; esac
ok "read-only export refuses writes"
J=$(keelctl --json export list)
[ "$(jget "$J" 'length')" = 2 ] || fail "export list: $J"
[ "$(jget "$J" '.[] | select(.name == "ro") | .tcp')" = "127.0.0.1:$PORT" ] || fail "tcp in list: $J"
expect_ok "stop read-only export" keelctl export stop ro
[ ! -e "$E2E_TMP/ro.sock" ] || fail "socket file left behind"
expect_fail "stop it again" "not found" keelctl export stop ro

# ---- hot remove: deleting the bdev closes clients and removes the export ----
fio --name=hold --ioengine=nbd --uri="$URI" --rw=randread --bs=4k --iodepth=8 --size=16M \
	--time_based --runtime=600 --output="$E2E_TMP/hold.out" >/dev/null 2>&1 &
HOLD=$!
E2E_EXTRA_PIDS="$HOLD"
disk0_connected() {
	[ "$(keelctl --json export list | jq -r '.[] | select(.name == "disk0") | .connections')" -ge 1 ] 2>/dev/null
}
wait_until 60 "fio connected to disk0" disk0_connected
kill -0 $HOLD 2>/dev/null || fail "fio ended before the hot remove: $(cat "$E2E_TMP/hold.out")"
expect_ok "delete exported bdev" keelctl bdev delete m0
no_exports() { [ "$(keelctl --json export list | jq length)" = 0 ]; }
wait_until 30 "export gone after the hot remove" no_exports
client_gone() { ! kill -0 $HOLD 2>/dev/null; }
wait_until 30 "client disconnected by the hot remove" client_gone
grep -q "was removed" "$KEELD_LOG" || fail "no log line for the hot remove"
keeld_alive || fail "keeld died"
ok "hot remove closes connections and removes the export"

stop_keeld || fail "keeld did not stop cleanly"
ok "keeld stopped cleanly"
