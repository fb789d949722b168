#!/usr/bin/env bash
# Rebuild through keeld, with real NBD clients writing while it runs:
#  - full rebuild of an added replica under fio load, replicas byte-identical after;
#  - pause / resume / stop / start through keelctl; the rate limit bounds the bytes
#    copied by rate x elapsed time;
#  - fault, write, re-add: a partial rebuild that copies only what was written;
#  - keeld killed with -9 during a rebuild, and during writes with a replica out:
#    after the restart the rebuild completes and the replicas are identical;
#  - the rebuild history survives restarts.
# A job the test must catch mid-way is rate-limited far below anything that could
# finish during the test, and every step waits on job states.
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

# job VOL TARGET_BDEV JQ-FILTER: FILTER over that target's latest job ("none": no job).
job() {
	local out
	out=$(keelctl --json rebuild status "$1" 2>&1) || { echo "ERR $out"; return; }
	jget "$out" --arg t "$2" "[.[] | select(.target == \$t)] | if length == 0 then \"none\" else (last | $3) end"
}

# replica VOL PATH FIELD: a field of the replica with that path in volume show.
replica() {
	local out
	out=$(keelctl --json volume show "$1" 2>&1) || { echo "ERR $out"; return; }
	jget "$out" --arg p "$2" ".replicas[] | select(.path == \$p) | .$3"
}

bdev_of() {
	local b
	b=$(replica "$1" "$2" bdev)
	case "$b" in "" | ERR*) fail "no bdev for $2 in volume $1: $b" ;; esac
	echo "$b"
}

# wait_state VOL TARGET STATE SECONDS
wait_state() {
	local s end=$((SECONDS + $4))
	while :; do
		s=$(job "$1" "$2" .state)
		[ "$s" = "$3" ] && return 0
		[ "$s" = failed ] && fail "rebuild of $2 failed: $(job "$1" "$2" .error)"
		[ $SECONDS -lt $end ] || fail "rebuild of $2 not $3 within $4 s (state $s): $(keelctl rebuild status "$1" 2>&1)"
		sleep 0.1
	done
}

replica_is() { [ "$(replica "$1" "$2" state)" = "$3" ]; }

# wait_healthy VOL PATH SECONDS
wait_healthy() {
	local end=$((SECONDS + $3))
	until replica_is "$1" "$2" healthy; do
		[ $SECONDS -lt $end ] || fail "$2 not healthy within $3 s: $(keelctl volume show "$1" 2>&1)"
		sleep 0.1
	done
}

done_above() { [ "$(job "$1" "$2" .blocks_done)" -gt "$3" ] 2>/dev/null; }
now_ms() { date +%s%3N; }

# rate_bound RATE_KIB_S T0_MS T1_MS SEG RUNS: the most a job limited to RATE may have
# copied between T0 and T1. The limiter starts a segment only while the bytes started
# in this run are below rate x run time + one segment, so each run (start, resume)
# exceeds rate x time by at most two segments.
rate_bound() {
	echo $(($1 * 1024 * ($3 - $2) / 1000 + 2 * $4 * $5))
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
[ "$(job rb "$C" .is_partial)" = false ] || fail "a new replica got a partial rebuild"
[ "$(job rb "$C" '.blocks_transferred == .blocks_total')" = true ] || fail "full rebuild copied less than the volume"
ok "full rebuild of c completed at $(job rb "$C" '.rate_mib_s | floor') MiB/s"
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
# 0.25 MiB/s: the 128 MiB copy of d would take over 8 minutes.
RATE_KIB=256
expect_ok "rate limit 0.25 MiB/s" keelctl rpc rebuild_set_options '{"rate_limit_mib_s": 0.25}'
t0=$(now_ms)
expect_ok "add replica d (rate limited)" keelctl replica add rb "$D/d"
DD=$(bdev_of rb "$D/d")
wait_state rb "$DD" running 30
wait_until 30 "d copy started" done_above rb "$DD" 0
expect_ok "pause" keelctl rebuild pause rb "$DD"
wait_state rb "$DD" paused 30
t1=$(now_ms)
SEG=$(job rb "$DD" .segment_size)
x1=$(job rb "$DD" '.blocks_transferred * .block_size')
bound=$(rate_bound $RATE_KIB "$t0" "$t1" "$SEG" 1)
[ "$x1" -le "$bound" ] || fail "rate limit not honoured: $x1 bytes copied in $((t1 - t0)) ms at 0.25 MiB/s (at most $bound)"
d1=$(job rb "$DD" .blocks_done)
sleep 1 # a paused job must not move, however long we look
d2=$(job rb "$DD" .blocks_done)
[ "$d1" = "$d2" ] || fail "paused rebuild made progress: $d1 -> $d2"
[ "$(job rb "$DD" '.state + " " + (.tasks_active | tostring)')" = "paused 0" ] ||
	fail "paused job: $(keelctl rebuild status rb)"
ok "paused: no segment in flight, no progress ($d1 blocks done)"
expect_ok "resume" keelctl rebuild resume rb "$DD"
wait_state rb "$DD" running 30
wait_until 60 "progress after resume" done_above rb "$DD" "$d2"
ok "resumed: progress again ($(job rb "$DD" .blocks_done) blocks done)"
expect_fail "resume a running job" "cannot resume" keelctl rebuild resume rb "$DD"
expect_ok "stop" keelctl rebuild stop rb "$DD"
wait_state rb "$DD" stopped 30
t2=$(now_ms)
x2=$(job rb "$DD" '.blocks_transferred * .block_size')
bound=$(rate_bound $RATE_KIB "$t0" "$t2" "$SEG" 2)
[ "$x2" -le "$bound" ] || fail "rate limit not honoured: $x2 bytes copied in $((t2 - t0)) ms at 0.25 MiB/s (at most $bound)"
ok "rate limit honoured: $x2 bytes copied in $((t2 - t0)) ms at 0.25 MiB/s (bound $bound)"
[ "$(replica rb "$D/d" state)" = rebuilding ] || fail "stopped rebuild's target is not left rebuilding: $(keelctl volume show rb)"
ok "stopped: d stays rebuilding (written, never read)"
expect_ok "lift the rate limit" keelctl rpc rebuild_set_options '{"rate_limit_mib_s": 0}'
expect_ok "start again" keelctl rebuild start rb "$DD"
wait_state rb "$DD" completed 60
wait_healthy rb "$D/d" 30
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
expect_ok "show pv" keelctl --json volume show pv
[ "$(jget "$OUT" --arg p "$D/f" '[.replicas[] | select(.path == $p)] | length')" = 1 ] ||
	fail "f is not listed once after the re-add: $OUT"
expect_fail "add of a rebuilding/healthy f again" "already a" keelctl replica add pv "$D/f"
F=$(bdev_of pv "$D/f")
wait_state pv "$F" completed 20
wait_healthy pv "$D/f" 10
[ "$(job pv "$F" .is_partial)" = true ] || fail "re-added replica got a full rebuild: $(keelctl rebuild status pv)"
xfer=$(job pv "$F" '.blocks_transferred * .block_size')
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
[ "$(jget "$OUT" '[.[] | select(.state == "completed" and .is_partial)] | length')" -ge 1 ] ||
	fail "history of pv lacks the partial rebuild: $OUT"
ok "history of pv has the partial rebuild"
stop_keeld || fail "keeld exited with an error (sanitizer report?)"
echo "PASS $E2E_NAME"
