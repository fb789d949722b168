#!/usr/bin/env bash
# Volume replicas on uring bdevs: a volume created with --backend uring runs its
# replicas through io_uring, keeps that across a restart with its data; a volume with
# one uring and one aio replica (replica add --backend aio) verifies under fio and
# both replica files hold the same data; keeld --volume-backend picks the backend of
# volumes created without one; bad backend names are refused by keelctl (exit 2), the
# RPC and keeld. Then keeld under a seccomp filter that refuses io_uring: it starts
# with --volume-backend uring (one log line, new volumes on aio), refuses an explicit
# uring volume naming why and what to do, and brings the uring volume back through aio
# with its data.
. "$(dirname "$0")/lib.sh"

command -v qemu-io >/dev/null || skip "qemu-io is needed (package qemu-utils)"
command -v fio >/dev/null && fio --enghelp 2>/dev/null | grep -qw nbd ||
	skip "fio with the nbd engine is needed (package fio)"

D=$E2E_TMP/disks
mkdir -p "$D"

# uring_here: wait for the uring module's start line; skip when io_uring is refused.
uring_here() {
	wait_until 30 "the uring module's start line" \
		grep -q "io_uring is \(available\|unavailable\)" "$KEELD_LOG"
	grep -q "io_uring is unavailable" "$KEELD_LOG" &&
		skip "io_uring is refused on this machine: $(grep -o 'unavailable: [^;]*' "$KEELD_LOG" | head -n 1)"
	ok "io_uring is available"
}

# module_of VOLUME PATH: the bdev module of the replica with that path ("uring", "aio").
module_of() {
	local out bdev

	out=$(keelctl --json volume show "$1" 2>&1) || { echo "ERR $out"; return; }
	bdev=$(jget "$out" --arg p "$2" '.replicas[] | select(.path == $p) | .bdev')
	out=$(keelctl rpc bdev_get_bdevs "{\"name\":\"$bdev\"}" 2>&1) || { echo "ERR $out"; return; }
	jget "$out" '.[0].module'
}

# backend_of VOLUME [PATH]: the backend volume_get shows for the volume, or a replica.
backend_of() {
	local out

	out=$(keelctl --json volume show "$1" 2>&1) || { echo "ERR $out"; return; }
	if [ $# -eq 1 ]; then
		jget "$out" .backend
	else
		jget "$out" --arg p "$2" '.replicas[] | select(.path == $p) | .backend'
	fi
}

replica_healthy() {
	[ "$(keelctl --json volume show "$1" | jq -r --arg p "$2" \
		'.replicas[] | select(.path == $p) | .state')" = healthy ]
}

# fio_pass NAME SOCKET write|verify: 48 MiB of 4k random writes with crc32c, or the
# verification of what the write pass left (fio's verify-state file in $E2E_TMP).
fio_pass() {
	local name=$1 sock=$2 pass=$3 args=(--do_verify=0)

	[ "$pass" = verify ] && args=(--verify_only=1)
	(cd "$E2E_TMP" && fio --name="$name" --ioengine=nbd \
		--uri="nbd+unix:///$name?socket=$sock" --size=48M --bs=4k --iodepth=16 \
		--rw=randwrite --verify=crc32c --randrepeat=1 --randseed=17 \
		--output-format=json --output="$E2E_TMP/$name.$pass.json" "${args[@]}" \
		>/dev/null 2>"$E2E_TMP/$name.$pass.err") ||
		fail "fio $pass on $name: $(cat "$E2E_TMP/$name.$pass.err")"
	[ "$(jq '[.jobs[] | .error] | add' "$E2E_TMP/$name.$pass.json")" = 0 ] ||
		fail "fio $pass on $name saw errors: $(cat "$E2E_TMP/$name.$pass.err")"
	grep -q "verify" "$E2E_TMP/$name.$pass.err" &&
		fail "fio $pass on $name: $(cat "$E2E_TMP/$name.$pass.err")"
	ok "fio $pass pass on $name (crc32c)"
}

restart() {
	stop_keeld || fail "keeld exited with an error"
	start_keeld "$@"
}

start_keeld
uring_here

# --- bad backend names ---------------------------------------------------------------
expect_usage "keelctl volume create --backend zfs" "--backend 'zfs': use aio or uring" \
	keelctl volume create bad --size 16M --replica "$D/bad" --backend zfs
expect_usage "keelctl replica add --backend URING" "--backend 'URING': use aio or uring" \
	keelctl replica add bad "$D/bad" --backend URING
expect_usage "keelctl --backend without a value" "backend" \
	keelctl volume create bad --size 16M --replica "$D/bad" --backend
expect_fail "RPC volume_create backend zfs" "backend: 'zfs' is not a replica backend: use aio or uring" \
	keelctl rpc volume_create "{\"name\":\"bad\",\"size\":16777216,\"replicas\":[\"$D/bad\"],\"backend\":\"zfs\"}"
expect_fail "RPC volume_create backend 1" "backend" \
	keelctl rpc volume_create "{\"name\":\"bad\",\"size\":16777216,\"replicas\":[\"$D/bad\"],\"backend\":1}"
expect_fail "RPC backend with replica_bdevs" "only for replica files" \
	keelctl rpc volume_create '{"name":"bad","replica_bdevs":["x"],"backend":"uring"}'
expect_fail "RPC volume_add_replica backend io_uring" "'io_uring' is not a replica backend" \
	keelctl rpc volume_add_replica "{\"name\":\"bad\",\"replica\":\"$D/bad\",\"backend\":\"io_uring\"}"
[ ! -e "$D/bad" ] || fail "a refused request created $D/bad"
expect_usage "keeld --volume-backend spdk" \
	"--volume-backend: 'spdk' is not a replica backend: use aio or uring" \
	"$KEEL_BIN/keeld" --volume-backend spdk --foreground

# --- a volume on uring, across a restart -----------------------------------------------
expect_ok "create vu on uring" keelctl volume create vu --size 32M --replica "$D/u0" \
	--replica "$D/u1" --backend uring
[ "$(backend_of vu)" = uring ] || fail "vu backend: $(backend_of vu)"
for f in u0 u1; do
	[ "$(backend_of vu "$D/$f")" = uring ] || fail "replica $f backend: $(backend_of vu "$D/$f")"
	[ "$(module_of vu "$D/$f")" = uring ] || fail "replica $f bdev module: $(module_of vu "$D/$f")"
done
ok "vu's replicas are uring bdevs"
expect_ok "volume show" keelctl volume show vu
case "$OUT" in *"backend:     uring"*"$D/u0"*uring*) ;; *) fail "volume show lacks the backend: $OUT" ;; esac
expect_ok "volume list" keelctl volume list
echo "$OUT" | grep -Eq "^vu .* uring *$" || fail "volume list lacks the backend column: $OUT"
[ "$(jq -r '.volumes[] | select(.name == "vu") | .backend' "$STATE/state.json")" = uring ] ||
	fail "the state file lacks vu's backend: $(cat "$STATE/state.json")"
expect_ok "export vu" keelctl export start vu --socket "$E2E_TMP/vu.sock"
VU="nbd+unix:///vu?socket=$E2E_TMP/vu.sock"
qemu_io_ok "write 0x5a to vu" "$VU" "write -P 0x5a 0 4M" "write -P 0xc3 28M 4M" "flush"
restart
for f in u0 u1; do
	[ "$(module_of vu "$D/$f")" = uring ] || fail "after restart, $f: $(module_of vu "$D/$f")"
done
ok "after a restart vu's replicas are uring bdevs again"
qemu_io_ok "vu's data after the restart" "$VU" -r "read -P 0x5a 0 4M" "read -P 0xc3 28M 4M" \
	"read -P 0x5a 0 4M" "read -P 0xc3 28M 4M"

# --- one uring and one aio replica, under fio --------------------------------------------
expect_ok "create mix on uring" keelctl volume create mix --size 48M --replica "$D/m0" \
	--backend uring
expect_ok "add an aio replica" keelctl replica add mix "$D/m1" --backend aio
wait_until 120 "m1 rebuilt" replica_healthy mix "$D/m1"
[ "$(module_of mix "$D/m0")/$(module_of mix "$D/m1")" = uring/aio ] ||
	fail "mix modules: $(module_of mix "$D/m0")/$(module_of mix "$D/m1")"
[ "$(backend_of mix "$D/m1")" = aio ] || fail "m1 backend: $(backend_of mix "$D/m1")"
ok "mix has a uring and an aio replica"
expect_ok "export mix" keelctl export start mix --socket "$E2E_TMP/mix.sock"
fio_pass mix "$E2E_TMP/mix.sock" write
fio_pass mix "$E2E_TMP/mix.sock" verify
restart
[ "$(module_of mix "$D/m0")/$(module_of mix "$D/m1")" = uring/aio ] ||
	fail "mix modules after restart: $(module_of mix "$D/m0")/$(module_of mix "$D/m1")"
ok "after a restart mix is uring + aio again"
fio_pass mix "$E2E_TMP/mix.sock" verify
# Past keeld: the two files, written by two modules, hold the same data.
expect_ok "stop the mix export" keelctl export stop mix
cmp -i 1048576:1048576 -n $((48 * 1048576)) "$D/m0" "$D/m1" ||
	fail "the uring and the aio replica differ"
ok "the uring and the aio replica hold the same data"

# --- the daemon-wide default -------------------------------------------------------------
restart --volume-backend uring
expect_ok "create vd without --backend" keelctl volume create vd --size 16M --replica "$D/d0"
[ "$(backend_of vd)/$(module_of vd "$D/d0")" = uring/uring ] ||
	fail "vd under --volume-backend uring: $(backend_of vd)/$(module_of vd "$D/d0")"
ok "keeld --volume-backend uring: a volume without --backend is on uring"
expect_ok "create va with --backend aio" keelctl volume create va --size 16M \
	--replica "$D/a0" --backend aio
[ "$(module_of va "$D/a0")" = aio ] || fail "va: $(module_of va "$D/a0")"
ok "--backend aio wins over the default"
expect_ok "destroy va" keelctl volume destroy va
stop_keeld || fail "keeld exit status"

# --- keeld where io_uring is refused ------------------------------------------------------
: >"$KEELD_LOG"
start_keeld_without_uring --volume-backend uring ||
	{ echo "  (no no_uring_exec: the refusal is not tested)"; exit 0; }
grep -q "keeld: volume backend uring is unavailable (.*EPERM.*): new volumes use aio" \
	"$KEELD_LOG" || fail "no fallback line for --volume-backend uring"
[ "$(grep -c "volume backend uring is unavailable" "$KEELD_LOG")" = 1 ] ||
	fail "the fallback is not one line"
ok "keeld --volume-backend uring under a filter starts: $(grep -o 'volume backend uring is unavailable.*' "$KEELD_LOG")"
expect_ok "create vn without --backend" keelctl volume create vn --size 16M --replica "$D/n0"
[ "$(backend_of vn)/$(module_of vn "$D/n0")" = aio/aio ] ||
	fail "vn under the filter: $(backend_of vn)/$(module_of vn "$D/n0")"
ok "a volume without --backend is on aio"
out=$(keelctl volume create vx --size 16M --replica "$D/x0" --backend uring 2>&1) &&
	fail "an explicit uring volume was created under the filter: $out"
case "$out" in
*"backend uring is unavailable on this machine: the kernel refused io_uring_setup (EPERM)"*"use the aio backend"*)
	ok "explicit uring refused with why and what to do: $out" ;;
*) fail "explicit uring refusal: $out" ;;
esac
[ ! -e "$D/x0" ] || fail "the refused volume left $D/x0"
expect_fail "replica add to a uring volume refused" "backend uring is unavailable" \
	keelctl replica add vu "$D/u2"
# The uring volume comes back through aio with its data, and stays uring on disk.
grep -q "volume vu: replica $D/u0: backend uring is unavailable (.*): opened through aio instead" \
	"$KEELD_LOG" || fail "no fallback line for vu's replicas"
[ "$(module_of vu "$D/u0")" = aio ] || fail "vu under the filter: $(module_of vu "$D/u0")"
# volume_get says what serves the replicas now, and what was asked for.
expect_ok "vu as JSON under the filter" keelctl --json volume show vu
[ "$(jget "$OUT" '"\(.backend)/\(.backend_requested)"')" = aio/uring ] ||
	fail "vu's backend under the filter: $(jget "$OUT" '{backend, backend_requested}')"
for f in u0 u1; do
	[ "$(jget "$OUT" --arg p "$D/$f" '.replicas[] | select(.path == $p) | "\(.backend)/\(.backend_requested)"')" = aio/uring ] ||
		fail "replica $f under the filter: $(jget "$OUT" --arg p "$D/$f" '.replicas[] | select(.path == $p)')"
done
ok "volume_get: vu and its replicas on aio, uring requested"
expect_ok "volume show vu under the filter" keelctl volume show vu
case "$OUT" in *"backend:     aio (uring requested)"*) ;; *) fail "volume show: $OUT" ;; esac
expect_ok "volume list under the filter" keelctl volume list
echo "$OUT" | grep -Eq "^vu .* aio \(uring requested\) *$" || fail "volume list: $OUT"
ok "keelctl volume show and list say aio (uring requested)"
# Volumes that got what they asked for carry no backend_requested.
expect_ok "vn as JSON" keelctl --json volume show vn
[ "$(jget "$OUT" '[.backend_requested, .replicas[].backend_requested] | map(select(. != null)) | length')" = 0 ] ||
	fail "vn shows a backend_requested: $OUT"
ok "no backend_requested where the backend is the one asked for"
qemu_io_ok "vu's data through aio" "$VU" -r "read -P 0x5a 0 4M" "read -P 0xc3 28M 4M"
stop_keeld || fail "keeld exit status under the filter"
[ "$(jq -r '.volumes[] | select(.name == "vu") | .backend' "$STATE/state.json")" = uring ] ||
	fail "the state file lost vu's backend"
ok "vu stays uring in the state file"
