#!/usr/bin/env bash
# Read-error repair through keeld: a 2-replica volume whose first replica is an error
# bdev that fails a few reads. The client sees no error, every failed read is rewritten
# on that replica and read back (read_errors_repaired counts them), the replica stays
# healthy, the log names each repaired range, and the replica files stay identical.
# Then a disk that loses the rewrite (error bdev "drop" rule): the read-back differs
# and the replica is faulted.
#
# The failing replica is an error bdev over an aio bdev (volume_create's replica_bdevs
# test hook, as in test_volume_fault.sh).
. "$(dirname "$0")/lib.sh"

command -v fio >/dev/null || skip "fio is needed (package fio)"
fio --enghelp 2>/dev/null | grep -qw nbd || skip "this fio has no nbd engine"
command -v qemu-io >/dev/null || skip "qemu-io is needed (package qemu-utils)"

D=$E2E_TMP/disks
NBD=$E2E_TMP/rr.nbd
URI="nbd+unix:///rr?socket=$NBD"
ERRS=5
mkdir -p "$D"
truncate -s 33M "$D/r0" "$D/r1"
start_keeld

expect_ok "aio r0" keelctl bdev create aio r0 "$D/r0"
expect_ok "aio r1" keelctl bdev create aio r1 "$D/r1"
expect_ok "error bdev e0 over r0" keelctl rpc bdev_error_create '{"base_name":"r0","name":"e0"}'
expect_ok "volume over e0 and r1" keelctl rpc volume_create \
	'{"name":"rr","size":33554432,"replica_bdevs":["e0","r1"]}'
expect_ok "export rr" keelctl export start rr --socket "$NBD"

fio_run() {
	local out=$1
	shift
	fio_nbd_verify "$out" "$URI" 32M 16 99 "$@"
}

fio_run "$E2E_TMP/write.json" --do_verify=0 || fail "fio write failed: $(cat "$E2E_TMP/write.json.err")"
[ "$(fio_errors "$E2E_TMP/write.json")" = 0 ] || fail "fio write pass saw errors"
ok "fio wrote 32 MiB"

# Every 100th read of e0 fails, $ERRS times.
expect_ok "inject read errors into e0" keelctl rpc bdev_error_inject_error \
	"{\"name\":\"e0\",\"io_type\":\"read\",\"num\":$ERRS,\"every_nth\":100}"
fio_run "$E2E_TMP/verify.json" --verify_only=1 || fail "fio verify failed: $(cat "$E2E_TMP/verify.json.err")"
[ "$(fio_errors "$E2E_TMP/verify.json")" = 0 ] || fail "fio verify pass saw errors"
grep -q "verify" "$E2E_TMP/verify.json.err" && fail "fio reported verify failures: $(cat "$E2E_TMP/verify.json.err")"
ok "every block verifies while e0 fails reads"

repaired() {
	keelctl rpc volume_get '{"name":"rr"}' |
		jq -r '.replicas[] | select(.bdev == "e0") | "\(.state) \(.read_errors_repaired)"'
}
repairs_done() { [ "$(repaired)" = "healthy $ERRS" ]; }
wait_until 30 "e0 healthy with $ERRS repairs (now: $(repaired))" repairs_done
ok "e0 healthy, read_errors_repaired=$ERRS"
expect_ok "volume get" keelctl rpc volume_get '{"name":"rr"}'
[ "$(jget "$OUT" .state)" = online ] || fail "volume state $(jget "$OUT" .state), expected online"
n=$(grep -c "volume rr: replica e0: read error at [0-9]*+[0-9]* repaired from r1" "$KEELD_LOG")
[ "$n" = "$ERRS" ] || fail "$n repair log lines, expected $ERRS"
ok "each repair logged with its range"

DOFF=$((1024 * 1024)) # past the label and bitmap area (KEEL_NEXUS_DATA_OFFSET)
cmp -s -i "$DOFF" "$D/r0" "$D/r1" || fail "replica files differ past the label area"
ok "replica files identical past the label area"

# A disk that loses the rewrite: flip one block of r0 behind keeld's back, make e0 fail
# its next read and drop writes. The repair's read-back sees the flipped block, so e0
# is faulted (and never serves that block).
BLK=$((64 * 1024))
head -c 4096 /dev/zero | tr '\0' '\377' >"$E2E_TMP/ff"
dd if="$E2E_TMP/ff" of="$D/r0" bs=4096 seek=$(((DOFF + BLK) / 4096)) conv=notrunc oflag=direct \
	status=none || fail "cannot flip a block of r0"
expect_ok "e0 fails its next read" keelctl rpc bdev_error_inject_error \
	'{"name":"e0","io_type":"read","num":1}'
expect_ok "e0 drops writes" keelctl rpc bdev_error_inject_error \
	'{"name":"e0","io_type":"write","error_type":"drop","num":0}'
qemu_io_ok "read the flipped block twice (one read meets e0)" "$URI" -r \
	"read $BLK 4096" "read $BLK 4096"
e0_state() {
	keelctl rpc volume_get '{"name":"rr"}' |
		jq -r '.replicas[] | select(.bdev == "e0") | "\(.state) \(.reason)"'
}
e0_faulted() { [ "$(e0_state)" = "faulted io_error" ]; }
wait_until 30 "e0 faulted after a lost rewrite (now: $(e0_state))" e0_faulted
grep -q "volume rr: replica e0: read error at $BLK+4096 not repaired: read-back differs" \
	"$KEELD_LOG" || fail "no log line for the failed read-back"
ok "lost rewrite: e0 faulted, logged with its range"

expect_ok "destroy rr" keelctl volume destroy rr
keeld_alive || fail "keeld died"
stop_keeld || fail "keeld exited with an error (sanitizer report?)"
echo "PASS $E2E_NAME"
