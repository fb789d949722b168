#!/usr/bin/env bash
# A 2-replica volume exported over NBD under fio (random writes, then a verify pass)
# while one replica fails writes: the client sees no error, that replica is faulted,
# and every block reads back correct from the other one.
#
# The failing replica is an error bdev over an aio bdev, so the volume is made with
# volume_create's replica_bdevs test hook instead of replica paths.
. "$(dirname "$0")/lib.sh"

command -v fio >/dev/null || skip "fio is needed (package fio)"
fio --enghelp 2>/dev/null | grep -qw nbd || skip "this fio has no nbd engine"

D=$E2E_TMP/disks
NBD=$E2E_TMP/fv.nbd
URI="nbd+unix:///fv?socket=$NBD"
mkdir -p "$D"
truncate -s 65M "$D/r0" "$D/r1"
start_keeld

expect_ok "aio r0" keelctl bdev create aio r0 "$D/r0"
expect_ok "aio r1" keelctl bdev create aio r1 "$D/r1"
expect_ok "error bdev e0 over r0" keelctl rpc bdev_error_create '{"base_name":"r0","name":"e0"}'
expect_ok "volume over e0 and r1" keelctl rpc volume_create \
	'{"name":"fv","size":67108864,"replica_bdevs":["e0","r1"]}'
[ "$(jget "$OUT" .persistent)" = false ] || fail "a replica_bdevs volume must be transient"
expect_ok "export fv" keelctl export start fv --socket "$NBD"

# Every 200th write to e0 fails, a few times: the first failure faults the replica.
expect_ok "inject write errors into e0" keelctl rpc bdev_error_inject_error \
	'{"name":"e0","io_type":"write","num":5,"every_nth":200}'

fio_run() {
	local out=$1
	shift
	fio_nbd_verify "$out" "$URI" 64M 32 1234 "$@"
}

fio_run "$E2E_TMP/write.json" --do_verify=0 || fail "fio write pass failed: $(cat "$E2E_TMP/write.json.err")"
for f in write; do
	err=$(jq '[.jobs[] | .error + (.total_err // 0)] | add' "$E2E_TMP/$f.json")
	[ "$err" = 0 ] || fail "fio $f pass saw $err errors"
done
ok "fio wrote 64 MiB with no client error"

expect_ok "volume get" keelctl rpc volume_get '{"name":"fv"}'
state=$(jget "$OUT" .state)
r0=$(jget "$OUT" -c '.replicas[] | select(.bdev == "e0") | {state, reason}')
case "$r0" in '{"state":"faulted","reason":"io_error"}') ok "e0 faulted: $r0" ;;
*) fail "e0 not faulted after write errors: $r0" ;; esac
[ "$state" = degraded ] || fail "volume state $state, expected degraded"

fio_run "$E2E_TMP/verify.json" --verify_only=1 || fail "fio verify pass failed: $(cat "$E2E_TMP/verify.json.err")"
err=$(jq '[.jobs[] | .error + (.total_err // 0)] | add' "$E2E_TMP/verify.json")
[ "$err" = 0 ] || fail "fio verify pass saw $err errors"
grep -q "verify" "$E2E_TMP/verify.json.err" && fail "fio reported verify failures: $(cat "$E2E_TMP/verify.json.err")"
ok "every block verifies (crc32c) from the surviving replica"

expect_ok "destroy fv (stops its export)" keelctl volume destroy fv
expect_ok "export list" keelctl export list
case "$OUT" in *fv*) fail "export of a destroyed volume still listed: $OUT" ;; esac
expect_ok "bdev list" keelctl rpc bdev_get_bdevs '{"name":"e0"}'
keeld_alive || fail "keeld died"
stop_keeld || fail "keeld exited with an error (sanitizer report?)"
echo "PASS $E2E_NAME"
