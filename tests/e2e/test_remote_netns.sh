#!/usr/bin/env bash
# Two hosts on one machine: network namespace kb (host B) joined to this namespace
# (host A) by a veth pair. B's keeld serves an aio bdev over NBD on TCP; A's volume
# mirrors onto a local file and onto B's export (nbd://). Under fio writes B's link goes
# down for longer than the request timeout: the writes stall but no client request
# fails, and B's replica is faulted by the timeout (the server is silent, not gone).
# Link up: B's replica comes back by itself through a partial rebuild, every block
# verifies, and B's file equals A's beyond the label area. Root only (ip netns).
. "$(dirname "$0")/lib.sh"

[ "$(id -u)" = 0 ] || skip "needs root for ip netns"
command -v ip >/dev/null || skip "needs iproute2"
command -v fio >/dev/null || skip "fio is needed (package fio)"
command -v psktool >/dev/null || skip "psktool is needed (package gnutls-bin)"
fio --enghelp 2>/dev/null | grep -qw nbd || skip "this fio has no nbd engine"

NS=kb$$
VA=kva$$
VB=kvb$$
IPA=10.213.$(($$ % 200)).1
IPB=10.213.$(($$ % 200)).2
D=$E2E_TMP/disks
mkdir -p "$D"
truncate -s 65M "$D/b.img"
S2=$E2E_TMP/keeld2.sock
PSK=$E2E_TMP/keys.psk
RURI="nbds://keel@$IPB:10809/rb?tls-psk-file=$PSK"
VSOCK=$E2E_TMP/v.nbd
VURI="nbd+unix:///v?socket=$VSOCK"

netns_cleanup() {
	ip link del "$VA" 2>/dev/null
	ip netns del "$NS" 2>/dev/null
}
netns_exit() {
	local rc=$?
	netns_cleanup
	(exit $rc) # e2e_cleanup exits with the status it finds in $?
	e2e_cleanup
}
trap netns_exit EXIT

ip netns add "$NS" || skip "cannot create a network namespace here"
ip link add "$VA" type veth peer name "$VB" netns "$NS" || fail "veth pair"
ip addr add "$IPA/24" dev "$VA" && ip link set "$VA" up || fail "address on A"
ip netns exec "$NS" ip addr add "$IPB/24" dev "$VB" || fail "address on B"
ip netns exec "$NS" ip link set "$VB" up && ip netns exec "$NS" ip link set lo up || fail "link up on B"

keelctl2() {
	"$KEEL_BIN/keelctl" -s "$S2" "$@"
}

# Host B: keeld in the namespace (its RPC socket is a file, reachable from here).
ip netns exec "$NS" "$KEEL_BIN/keeld" --foreground --rpc-socket "$S2" \
	--state-dir "$E2E_TMP/state2" --cpus "${KEEL_E2E_CPUS:-0}" >>"$E2E_TMP/keeld2.log" 2>&1 &
K2PID=$!
E2E_EXTRA_PIDS="${E2E_EXTRA_PIDS:-} $K2PID"
SOCK=$S2 wait_for_keeld "$K2PID"
expect_ok "host B: aio bdev rb" keelctl2 bdev create aio rb "$D/b.img"
psktool -u keel -p "$PSK" >/dev/null 2>&1 || fail "psktool could not make a key"
expect_fail "host B: a plaintext TCP export on the veth is refused" "needs TLS" \
	keelctl2 export start rb --socket "$E2E_TMP/rb0.nbd" --tcp "$IPB:10809"
expect_ok "host B: export rb on TCP with TLS" keelctl2 export start rb --socket "$E2E_TMP/rb.nbd" \
	--tcp "$IPB:10809" --tls require --tls-psk "$PSK"

start_keeld
expect_ok "volume on a local file and B's export over TCP" \
	keelctl volume create v --size 64M --replica "$D/a.img" --replica "$RURI"
expect_ok "export v" keelctl export start v --socket "$VSOCK"

replica_state() {
	volume_replica_state v "$RURI"
}
state_is() {
	[ "$(replica_state)" = "$1" ]
}
fio_run() {
	local out=$1
	shift
	fio_nbd_verify "$out" "$VURI" 32M 8 7 "$@"
}

fio_run "$E2E_TMP/w.json" --do_verify=0 --time_based --runtime=14 &
FIO=$!
sleep 2 # let writes flow to B before the cut (fio runs on, whatever the timing)
ip netns exec "$NS" ip link set "$VB" down || fail "link down"
wait_until 30 "B's replica faulted by the request timeout" state_is faulted
ip netns exec "$NS" ip link set "$VB" up || fail "link up"
wait $FIO || fail "fio failed: $(cat "$E2E_TMP/w.json.err")"
[ "$(fio_errors "$E2E_TMP/w.json")" = 0 ] || fail "fio saw errors while B's link was down"
ok "B's link down: zero client errors, replica faulted after the timeout"

wait_until 90 "B's replica healthy again" state_is healthy
grep -q "rebuild of v.r1 from v.r0 started (partial" "$KEELD_LOG" ||
	fail "B's replica was not rebuilt from the bitmap (partial)"
ok "link up: B's replica re-added by itself, partial rebuild"

fio_run "$E2E_TMP/v.json" --verify_only=1 || fail "fio verify failed: $(cat "$E2E_TMP/v.json.err")"
[ "$(fio_errors "$E2E_TMP/v.json")" = 0 ] || fail "fio verify saw errors"
expect_ok "stop export v" keelctl export stop v
cmp -i 1048576 -n 67108864 "$D/a.img" "$D/b.img" || fail "A's and B's replica files differ"
ok "every block verifies; A's and B's replica files are identical beyond the labels"

keeld_alive || fail "keeld died"
stop_keeld || fail "keeld exited with an error (sanitizer report?)"
echo "PASS $E2E_NAME"
