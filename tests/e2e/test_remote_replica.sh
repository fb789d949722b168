#!/usr/bin/env bash
# A volume mirrored on a local file and on an export of a second keeld (an NBD client
# replica over a unix socket). Under fio writes with verification the second keeld is
# killed: the client sees no error and the remote replica is faulted. The second keeld
# is started again: the replica comes back by itself (re-added in place, rebuilt from
# the write-intent bitmap), every block verifies, and the remote replica file equals the
# local one beyond the label area. A replica behind TLS with the wrong key is refused
# with words that say so (nbdkit serves TLS here).
. "$(dirname "$0")/lib.sh"

command -v fio >/dev/null || skip "fio is needed (package fio)"
fio --enghelp 2>/dev/null | grep -qw nbd || skip "this fio has no nbd engine"

D=$E2E_TMP/disks
mkdir -p "$D"
truncate -s 65M "$D/b.img"
S2=$E2E_TMP/keeld2.sock
ST2=$E2E_TMP/state2
LOG2=$E2E_TMP/keeld2.log
RSOCK=$E2E_TMP/rb.nbd
RURI="nbd+unix:///rb?socket=$RSOCK"
VSOCK=$E2E_TMP/v.nbd
VURI="nbd+unix:///v?socket=$VSOCK"
K2PID=

keelctl2() {
	"$KEEL_BIN/keelctl" -s "$S2" "$@"
}

# The replica host: a second keeld serving an aio bdev over b.img.
start_keeld2() {
	"$KEEL_BIN/keeld" --foreground --rpc-socket "$S2" --state-dir "$ST2" \
		--cpus "${KEEL_E2E_CPUS:-0}" >>"$LOG2" 2>&1 &
	K2PID=$!
	E2E_EXTRA_PIDS="${E2E_EXTRA_PIDS:-} $K2PID"
	SOCK=$S2 wait_for_keeld "$K2PID"
}

serve_rb() {
	expect_ok "host B: aio bdev rb" keelctl2 bdev create aio rb "$D/b.img"
	expect_ok "host B: export rb" keelctl2 export start rb --socket "$RSOCK"
}

replica_state() {
	volume_replica_state v "$RURI"
}

state_is() {
	[ "$(replica_state)" = "$1" ]
}

fio_run() {
	local out=$1
	shift
	fio_nbd_verify "$out" "$VURI" 32M 16 42 "$@"
}

# Host B's rb bdev has seen more than $1 writes.
rb_written() {
	local n

	n=$(keelctl2 rpc bdev_get_iostat '{"name":"rb"}' 2>/dev/null | jq '.bdevs[0].io.write.ops')
	[ -n "$n" ] && [ "$n" -gt "$1" ]
}

start_keeld2
serve_rb
start_keeld
expect_ok "volume over a local file and the remote export" \
	keelctl volume create v --size 64M --replica "$D/a.img" --replica "$RURI"
wait_until 30 "remote replica healthy" state_is healthy
expect_ok "volume_get" keelctl rpc volume_get '{"name":"v"}'
[ "$(jget "$OUT" --arg p "$RURI" '.replicas[] | select(.path == $p) | .backend')" = nbd ] ||
	fail "the remote replica's backend is not shown as nbd: $OUT"
expect_ok "export v" keelctl export start v --socket "$VSOCK"
expect_ok "bdev list shows the nbd_client bdev" keelctl bdev list
case "$OUT" in *nbd_client*) ;; *) fail "no nbd_client bdev listed: $OUT" ;; esac

# Kill host B while fio writes: no client error, the remote replica is faulted.
fio_run "$E2E_TMP/w1.json" --do_verify=0 --time_based --runtime=6 &
FIO=$!
wait_until 30 "writes reach host B" rb_written 2000
kill -KILL "$K2PID"
wait "$K2PID" 2>/dev/null
wait_until 30 "remote replica faulted" state_is faulted
wait $FIO || fail "fio write pass failed: $(cat "$E2E_TMP/w1.json.err")"
[ "$(fio_errors "$E2E_TMP/w1.json")" = 0 ] || fail "fio saw errors while host B died"
ok "host B killed during writes: zero client errors, replica faulted"
expect_ok "volume degraded" keelctl rpc volume_get '{"name":"v"}'
[ "$(jget "$OUT" .state)" = degraded ] || fail "volume state $(jget "$OUT" .state), want degraded"

# More writes while B is away: the bitmap records them.
fio_run "$E2E_TMP/w2.json" --do_verify=0 --randseed=43 ||
	fail "fio second pass failed: $(cat "$E2E_TMP/w2.json.err")"
[ "$(fio_errors "$E2E_TMP/w2.json")" = 0 ] || fail "fio saw errors while degraded"

# Host B comes back: the replica rejoins by itself.
start_keeld2
expect_ok "host B restored its bdev and export by itself" keelctl2 export list
case "$OUT" in *rb*) ;; *) fail "host B lost its export rb across the restart: $OUT" ;; esac
wait_until 60 "remote replica healthy again" state_is healthy
expect_ok "volume online" keelctl rpc volume_get '{"name":"v"}'
[ "$(jget "$OUT" .state)" = online ] || fail "volume state $(jget "$OUT" .state), want online"
grep -q "answers again: re-added" "$KEELD_LOG" || fail "no automatic re-add in the log"
grep -q "rebuild of v.r1 from v.r0 started (partial" "$KEELD_LOG" ||
	fail "the re-added replica was not rebuilt from the bitmap (partial)"
grep -q "rebuild of v.r1 completed" "$KEELD_LOG" || fail "no completed rebuild"
ok "host B back: replica re-added by itself and rebuilt"

fio_run "$E2E_TMP/v.json" --randseed=43 --verify_only=1 ||
	fail "fio verify failed: $(cat "$E2E_TMP/v.json.err")"
[ "$(fio_errors "$E2E_TMP/v.json")" = 0 ] || fail "fio verify saw errors"
ok "every block of the last pass verifies"

# Same bytes on both replicas beyond the labels (writes are direct on both hosts).
expect_ok "stop export v" keelctl export stop v
cmp -i 1048576 -n 67108864 "$D/a.img" "$D/b.img" || fail "replica files differ beyond the labels"
ok "local and remote replica files are byte-identical beyond the label area"

# The wrong TLS key is refused, and the answer says why.
if command -v nbdkit >/dev/null; then
	printf 'keel:%s\n' 0123456789abcdef0123456789abcdef >"$E2E_TMP/good.psk"
	printf 'keel:%s\n' fedcba9876543210fedcba9876543210 >"$E2E_TMP/bad.psk"
	truncate -s 65M "$D/t.img"
	nbdkit -f --exit-with-parent --tls=require --tls-psk="$E2E_TMP/good.psk" \
		-U "$E2E_TMP/tls.nbd" file "$D/t.img" >/dev/null 2>&1 &
	E2E_EXTRA_PIDS="${E2E_EXTRA_PIDS:-} $!"
	wait_until 30 "nbdkit TLS socket" test -S "$E2E_TMP/tls.nbd"
	expect_fail "a replica with the wrong PSK" "TLS failed" \
		keelctl replica add v "nbds+unix://keel@/?socket=$E2E_TMP/tls.nbd&tls-psk-file=$E2E_TMP/bad.psk"
	expect_ok "the right PSK" \
		keelctl replica add v "nbds+unix://keel@/?socket=$E2E_TMP/tls.nbd&tls-psk-file=$E2E_TMP/good.psk"
else
	echo "note: nbdkit missing: TLS part not run"
fi

keeld_alive || fail "keeld died"
stop_keeld || fail "keeld exited with an error (sanitizer report?)"
echo "PASS $E2E_NAME"
