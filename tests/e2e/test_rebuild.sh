#!/usr/bin/env bash
# Rebuild through keeld, with real NBD clients writing while it runs:
#  - full rebuild of an added replica under fio load, replicas byte-identical after;
#  - pause / resume / stop / start through keelctl, the rate limit roughly honoured;
#  - fault, write, re-add: a partial rebuild that copies only what was written;
#  - keeld killed with -9 during a rebuild, and during writes with a replica out:
#    after the restart the rebuild completes and the replicas are identical;
#  - the rebuild history survives restarts.
# Small volumes keep it well under 90 s.
. "$(dirname "$0")/lib.sh"

command -v fio >/dev/null || skip "fio is needed"
command -v qemu-io >/dev/null || skip "qemu-io is needed (package qemu-utils)"
fio --enghelp 2>/dev/null | grep -qw nbd || skip "fio lacks the nbd engine"

D=$E2E_TMP/disks
mkdir -p "$D"
cd "$E2E_TMP" || fail "cd"   # fio and qemu-io leave nothing in the caller's cwd
DATA_OFF=1048576             # replica label area: differs per replica by design
export KEEL_E2E_CPUS=${KEEL_E2E_CPUS:-0-1}

# Data regions of replica files $1 and $2 must be identical.
same_data() {
	cmp -s -i $DATA_OFF "$1" "$2" || fail "$3: $(basename "$1") and $(basename "$2") differ: $(cmp -i $DATA_OFF "$1" "$2" 2>&1 | head -n 1)"
}

# job VOL TARGET_BDEV EXPR: a field of that target's job in rebuild status --json.
job() {
	local out
	out=$(keelctl rebuild status "$1" --json 2>&1) || { echo "ERR $out"; return; }
	python3 -c '
import json, sys
jobs = [j for j in json.loads(sys.argv[1]) if j["target"] == sys.argv[2]]
print(eval(sys.argv[3], {"j": jobs[-1]}) if jobs else "none")' "$out" "$2" "$3"
}

# bdev_of VOL PATH: the bdev name keeld gave replica file PATH.
bdev_of() {
	local out
	out=$(keelctl --json volume show "$1") || fail "volume show $1: $out"
	json_get "$out" "[r['bdev'] for r in j['replicas'] if r['path'] == '$2'][0]"
}

# wait_state VOL TARGET STATE SECONDS
wait_state() {
	local s
	for _ in $(seq 1 $(($4 * 10))); do
		s=$(job "$1" "$2" "j['state']")
		[ "$s" = "$3" ] && return 0
		case "$s" in failed) fail "rebuild of $2 failed: $(job "$1" "$2" "j['error']")" ;; esac
		sleep 0.1
	done
	fail "rebuild of $2 not $3 within $4 s (state $s): $(keelctl rebuild status "$1" 2>&1)"
}

# wait_healthy VOL PATH SECONDS
wait_healthy() {
	local out
	for _ in $(seq 1 $(($3 * 10))); do
		out=$(keelctl --json volume show "$1" 2>/dev/null)
		[ "$(json_get "$out" "[r['state'] for r in j['replicas'] if r['path'] == '$2'][0]")" = healthy ] && return 0
		sleep 0.1
	done
	fail "$2 not healthy within $3 s: $(keelctl volume show "$1" 2>&1)"
}

fio_load() { # fio_load URI SECONDS OUTPUT [extra fio args]: 4k random writes, QD8
	local uri=$1 secs=$2 out=$3
	shift 3
	fio --name=load --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=8 \
		--time_based --runtime="$secs" --verify_state_save=0 --output="$out" "$@" \
		>/dev/null 2>&1
}

start_keeld

# --- full rebuild under fio load ------------------------------------------------------
URI="nbd+unix:///rb?socket=$E2E_TMP/rb.nbd"
expect_ok "create rb" keelctl volume create rb --size 128M --replica "$D/a" --replica "$D/b"
expect_ok "export rb" keelctl export start rb --socket "$E2E_TMP/rb.nbd"
fio_load "$URI" 6 "$E2E_TMP/fio1.out" &
FIO=$!
sleep 1
expect_ok "add replica c while fio writes" keelctl replica add rb "$D/c"
C=$(bdev_of rb "$D/c")
wait_state rb "$C" completed 30
wait_healthy rb "$D/c" 10
[ "$(job rb "$C" "j['is_partial']")" = False ] || fail "a new replica got a partial rebuild"
[ "$(job rb "$C" "j['blocks_transferred'] == j['blocks_total']")" = True ] || fail "full rebuild copied less than the volume"
ok "full rebuild of c completed at $(job rb "$C" "round(j['rate_mib_s'])") MiB/s"
kill -0 $FIO 2>/dev/null && ok "fio was still writing when the rebuild completed"
wait $FIO || fail "fio failed during the rebuild: $(tail -n 5 "$E2E_TMP/fio1.out")"
grep -q "IOPS=" "$E2E_TMP/fio1.out" || fail "fio reported nothing"
ok "fio during rebuild: $(grep -o 'IOPS=[^,]*' "$E2E_TMP/fio1.out" | head -n 1), no errors"
same_data "$D/a" "$D/b" "after full rebuild"
same_data "$D/a" "$D/c" "after full rebuild"
ok "data regions of a, b, c identical"
expect_ok "volume show lists the rebuild" keelctl volume show rb
case "$OUT" in *"rebuild:"*"$C"*completed*) ok "volume show: $(echo "$OUT" | grep -A1 '^rebuild:' | tail -n 1)" ;;
*) fail "volume show lacks the rebuild: $OUT" ;; esac

# --- pause / resume / stop / start, rate limit ----------------------------------------
expect_ok "rate limit 24 MiB/s" keelctl rpc rebuild_set_options '{"rate_limit_mib_s": 24}'
expect_ok "add replica d (rate limited)" keelctl replica add rb "$D/d"
DD=$(bdev_of rb "$D/d")
wait_state rb "$DD" running 5
sleep 1.5
rate=$(job rb "$DD" "j['rate_mib_s']")
python3 -c "import sys; r=float(sys.argv[1]); sys.exit(0 if 12 <= r <= 36 else 1)" "$rate" ||
	fail "rate limit 24 MiB/s not honoured: $rate MiB/s"
ok "rate limited rebuild runs at $(printf %.1f "$rate") MiB/s (limit 24)"
expect_ok "pause" keelctl rebuild pause rb "$DD"
wait_state rb "$DD" paused 5
d1=$(job rb "$DD" "j['blocks_done']")
sleep 1
d2=$(job rb "$DD" "j['blocks_done']")
[ "$d1" = "$d2" ] || fail "paused rebuild made progress: $d1 -> $d2"
ok "paused: no progress in 1 s ($d1 blocks done)"
expect_ok "resume" keelctl rebuild resume rb "$DD"
wait_state rb "$DD" running 5
sleep 0.5
d3=$(job rb "$DD" "j['blocks_done']")
[ "$d3" -gt "$d2" ] || fail "resumed rebuild makes no progress"
ok "resumed: progress again ($d3 blocks done)"
expect_fail "resume a running job" "cannot resume" keelctl rebuild resume rb "$DD"
expect_ok "stop" keelctl rebuild stop rb "$DD"
wait_state rb "$DD" stopped 5
out=$(keelctl --json volume show rb)
[ "$(json_get "$out" "[r['state'] for r in j['replicas'] if r['bdev'] == '$DD'][0]")" = rebuilding ] ||
	fail "stopped rebuild's target is not left rebuilding: $out"
ok "stopped: d stays rebuilding (written, never read)"
expect_ok "lift the rate limit" keelctl rpc rebuild_set_options '{"rate_limit_mib_s": 0}'
expect_ok "start again" keelctl rebuild start rb "$DD"
wait_state rb "$DD" completed 30
wait_healthy rb "$D/d" 10
same_data "$D/a" "$D/d" "after stop + start"
ok "restarted rebuild completed, d identical"
expect_ok "remove d" keelctl replica remove rb "$D/d"

# --- fault, write, re-add: partial rebuild --------------------------------------------
# A fresh volume: its bitmap starts empty, so what is set is what was written.
URI2="nbd+unix:///pv?socket=$E2E_TMP/pv.nbd"
expect_ok "create pv" keelctl volume create pv --size 64M --replica "$D/e" --replica "$D/f"
expect_ok "export pv" keelctl export start pv --socket "$E2E_TMP/pv.nbd"
out=$(qemu-io -f raw "$URI2" -c "write -P 0x11 0 2M" 2>&1) || fail "write: $out"
expect_ok "fault f" keelctl replica fault pv "$D/f"
out=$(qemu-io -f raw "$URI2" -c "write -P 0x22 8M 1M" -c "write -P 0x33 40M 64k" 2>&1) ||
	fail "write with f out: $out"
# Re-add in place: the path is still listed (faulted); `replica add` reopens it and
# its label says it is a former member, so only what the bitmap marks is copied.
expect_fail "add of a healthy replica" "already a healthy replica" keelctl replica add pv "$D/e"
expect_ok "re-add faulted f in place" keelctl replica add pv "$D/f"
n_f=$(keelctl --json volume show pv | python3 -c '
import json, sys
print(sum(1 for r in json.load(sys.stdin)["replicas"] if r["path"] == sys.argv[1]))' "$D/f")
[ "$n_f" = 1 ] || fail "f is listed $n_f times after the re-add"
expect_fail "add of a rebuilding/healthy f again" "already a" keelctl replica add pv "$D/f"
F=$(bdev_of pv "$D/f")
wait_state pv "$F" completed 20
wait_healthy pv "$D/f" 10
[ "$(job pv "$F" "j['is_partial']")" = True ] || fail "re-added replica got a full rebuild: $(keelctl rebuild status pv)"
xfer=$(job pv "$F" "j['blocks_transferred'] * j['block_size']")
[ "$xfer" -le $((8 * 1048576)) ] || fail "partial rebuild copied $xfer bytes for 1.06 MiB written"
ok "partial rebuild: is_partial, $((xfer / 1048576)) MiB copied of 64 MiB"
same_data "$D/e" "$D/f" "after partial rebuild"
ok "e and f identical after the partial rebuild"

# --- keeld killed during a rebuild ----------------------------------------------------
expect_ok "rate limit 16 MiB/s" keelctl rpc rebuild_set_options '{"rate_limit_mib_s": 16}'
expect_ok "add g to pv" keelctl replica add pv "$D/g"
G=$(bdev_of pv "$D/g")
wait_state pv "$G" running 5
sleep 1
kill -KILL "$KEELD_PID"
wait "$KEELD_PID" 2>/dev/null
KEELD_PID=
ok "keeld killed with -9 during the rebuild of g"
start_keeld
wait_healthy pv "$D/g" 30
same_data "$D/e" "$D/g" "after kill -9 during a rebuild"
ok "after restart the rebuild of g completed, e and g identical"

# --- keeld killed during writes with a replica out ------------------------------------
expect_ok "fault g" keelctl replica fault pv "$D/g"
fio_load "$URI2" 20 "$E2E_TMP/fio2.out" --size=16M &
FIO=$!
sleep 2
kill -KILL "$KEELD_PID"
wait "$KEELD_PID" 2>/dev/null
KEELD_PID=
wait $FIO 2>/dev/null # fio fails: its server died
ok "keeld killed with -9 during writes with g out"
start_keeld
# g's label is behind: stale at assembly, re-added and rebuilt by itself.
wait_healthy pv "$D/g" 30
wait_healthy pv "$D/f" 10
same_data "$D/e" "$D/f" "after kill -9 during writes"
same_data "$D/e" "$D/g" "after kill -9 during writes"
ok "after restart g was rebuilt; e, f, g identical"
out=$(qemu-io -f raw "$URI2" -c "read -P 0x11 0 2M" -c "read -P 0x22 8M 1M" 2>&1)
case "$out" in *"read 1048576/1048576"*) ok "acknowledged data intact" ;; *) fail "data lost: $out" ;; esac

# --- history survives restarts --------------------------------------------------------
stop_keeld || fail "keeld exited with an error"
start_keeld
expect_ok "history rb" keelctl rebuild history rb
n=$(echo "$OUT" | grep -c completed)
[ "$n" -ge 2 ] || fail "history of rb lacks completed jobs: $OUT"
case "$OUT" in *stopped*) ;; *) fail "history of rb lacks the stopped job: $OUT" ;; esac
ok "rebuild history of rb survives restarts ($n completed, 1 stopped)"
expect_ok "history pv" keelctl rebuild history pv --json
[ "$(json_get "$OUT" "sum(1 for x in j if x['state'] == 'completed' and x['is_partial'])")" -ge 1 ] ||
	fail "history of pv lacks the partial rebuild: $OUT"
ok "history of pv has the partial rebuild"
stop_keeld || fail "keeld exited with an error (sanitizer report?)"
echo "PASS $E2E_NAME"
