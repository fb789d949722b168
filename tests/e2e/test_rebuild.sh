#!/usr/bin/env bash
# Rebuild through keeld, with real NBD clients writing while it runs:
#  - an added replica is copied while fio writes (copy progress and fio's writes are
#    seen moving together), then rebuilt in full under that load: replicas identical;
#  - pause / resume / stop / start through keelctl; the rate limit bounds the bytes
#    copied by rate x elapsed time;
#  - fault, write, re-add: a partial rebuild that copies exactly the written regions;
#  - keeld killed with -9 in the middle of a copy, and during acknowledged writes with
#    a replica out: after the restart every acknowledged write is there, the rebuild
#    completes and the replicas are identical;
#  - the rebuild history survives restarts.
# No step races the copy: a job the test must catch mid-way is rate-limited far below
# anything that could finish during the test, and every step waits on job states.
. "$(dirname "$0")/lib.sh"

command -v fio >/dev/null || skip "fio is needed"
command -v qemu-io >/dev/null || skip "qemu-io is needed (package qemu-utils)"
fio --enghelp 2>/dev/null | grep -qw nbd || skip "fio lacks the nbd engine"

D=$E2E_TMP/disks
mkdir -p "$D"
cd "$E2E_TMP" || fail "cd"   # fio and qemu-io leave nothing in the caller's cwd
DATA_OFF=1048576             # replica label area: differs per replica by design
ACKED_IO=$E2E_DIR/nbd/acked_io.py
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

# write_ops BDEV: writes the bdev (a volume: the users' writes) has completed.
write_ops() {
	local out
	out=$(keelctl rpc bdev_get_iostat "{\"name\":\"$1\"}" 2>&1) || { echo -1; return; }
	jget "$out" '.bdevs[0].io.write.ops'
}

# Both the copy of TARGET and the volume's writes moved past the given counts.
copy_and_writes_moved() { # VOL TARGET BLOCKS WRITES
	[ "$(job "$1" "$2" .blocks_transferred)" -gt "$3" ] 2>/dev/null &&
		[ "$(write_ops "$1")" -gt "$4" ] 2>/dev/null
}
writes_above() { [ "$(write_ops "$1")" -gt "$2" ] 2>/dev/null; }
done_above() { [ "$(job "$1" "$2" .blocks_done)" -gt "$3" ] 2>/dev/null; }
now_ms() { date +%s%3N; }

# rate_bound RATE_KIB_S T0_MS T1_MS SEG RUNS: the most a job limited to RATE may have
# copied between T0 and T1. The limiter starts a segment only while the bytes started
# in this run are below rate x run time + one segment, so each run (start, resume)
# exceeds rate x time by at most two segments.
rate_bound() {
	echo $(($1 * 1024 * ($3 - $2) / 1000 + 2 * $4 * $5))
}

start_keeld

# --- copy under fio load ----------------------------------------------------------------
URI="nbd+unix:///rb?socket=$E2E_TMP/rb.nbd"
expect_ok "create rb" keelctl volume create rb --size 128M --replica "$D/a" --replica "$D/b"
expect_ok "export rb" keelctl export start rb --socket "$E2E_TMP/rb.nbd"
# fio writes (4k random, QD8) until the test stops it: it cannot run out during the
# rebuild. Started directly so that $! is fio itself, which SIGTERM stops cleanly.
fio --name=load --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=8 \
	--time_based --runtime=600 --verify_state_save=0 --output="$E2E_TMP/fio1.out" >/dev/null 2>&1 &
FIO=$!
E2E_EXTRA_PIDS=$FIO
wait_until 60 "fio writing to rb" writes_above rb 0
# At 1 MiB/s the 128 MiB copy takes minutes: it is surely running while we look.
expect_ok "rate limit 1 MiB/s" keelctl rpc rebuild_set_options '{"rate_limit_mib_s": 1}'
expect_ok "add replica c while fio writes" keelctl replica add rb "$D/c"
C=$(bdev_of rb "$D/c")
wait_state rb "$C" running 30
b1=$(job rb "$C" .blocks_transferred)
w1=$(write_ops rb)
wait_until 60 "copy of c and fio's writes both moving" copy_and_writes_moved rb "$C" "$b1" "$w1"
[ "$(job rb "$C" .state)" = running ] || fail "copy of c not running: $(keelctl rebuild status rb)"
ok "copy of c and fio's writes moved together (c: $b1 -> $(job rb "$C" .blocks_transferred) blocks, job running)"
expect_ok "stop the limited copy of c" keelctl rebuild stop rb "$C"
wait_state rb "$C" stopped 30
expect_ok "lift the rate limit" keelctl rpc rebuild_set_options '{"rate_limit_mib_s": 0}'
expect_ok "start c again at full speed, fio still writing" keelctl rebuild start rb "$C"
wait_state rb "$C" completed 120
wait_healthy rb "$D/c" 30
[ "$(job rb "$C" .is_partial)" = false ] || fail "a new replica got a partial rebuild"
[ "$(job rb "$C" '.blocks_transferred == .blocks_total')" = true ] || fail "full rebuild copied less than the volume"
ok "full rebuild of c completed at $(job rb "$C" '.rate_mib_s | floor') MiB/s"
kill -0 $FIO 2>/dev/null || fail "fio stopped during the rebuild: $(tail -n 5 "$E2E_TMP/fio1.out")"
kill -TERM $FIO
wait $FIO
rc=$?
E2E_EXTRA_PIDS=
grep -q "IOPS=" "$E2E_TMP/fio1.out" || fail "fio (exit $rc) reported nothing: $(tail -n 5 "$E2E_TMP/fio1.out")"
grep -q "err= 0" "$E2E_TMP/fio1.out" || fail "fio saw errors during the rebuild: $(grep err= "$E2E_TMP/fio1.out")"
ok "fio wrote through both copies: $(grep -o 'IOPS=[^,]*' "$E2E_TMP/fio1.out" | head -n 1), no errors"
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
# A fresh volume and nothing written before the fault: the bits set are exactly the
# regions written while f was out.
URI2="nbd+unix:///pv?socket=$E2E_TMP/pv.nbd"
expect_ok "create pv" keelctl volume create pv --size 64M --replica "$D/e" --replica "$D/f"
expect_ok "export pv" keelctl export start pv --socket "$E2E_TMP/pv.nbd"
expect_ok "show pv" keelctl --json volume show pv
RS=$(jget "$OUT" .bitmap.region_size)
[ "$(jget "$OUT" .bitmap.bits_set)" = 0 ] || fail "fresh volume has bits set: $OUT"
expect_ok "fault f" keelctl replica fault pv "$D/f"
qemu_io_ok "write with f out" "$URI2" "write -P 0x22 8M 1M" "write -P 0x33 40M 64k"
# regions touched: [8M, 9M) and [40M, 40M + 64k)
regions=$(( ((9 << 20) - 1) / RS - (8 << 20) / RS + 1 + ((40 << 20) + 65535) / RS - (40 << 20) / RS + 1 ))
expect_ok "show pv" keelctl --json volume show pv
[ "$(jget "$OUT" .bitmap.bits_set)" = "$regions" ] || fail "bits set after the writes: $(jget "$OUT" .bitmap), expected $regions"
# Re-add in place: the path is still listed (faulted); `replica add` reopens it and
# its label says it is a former member, so only what the bitmap marks is copied.
expect_fail "add of a healthy replica" "already a healthy replica" keelctl replica add pv "$D/e"
expect_ok "re-add faulted f in place" keelctl replica add pv "$D/f"
expect_ok "show pv" keelctl --json volume show pv
[ "$(jget "$OUT" --arg p "$D/f" '[.replicas[] | select(.path == $p)] | length')" = 1 ] ||
	fail "f is not listed once after the re-add: $OUT"
expect_fail "add of a rebuilding/healthy f again" "already a" keelctl replica add pv "$D/f"
F=$(bdev_of pv "$D/f")
wait_state pv "$F" completed 60
wait_healthy pv "$D/f" 30
[ "$(job pv "$F" .is_partial)" = true ] || fail "re-added replica got a full rebuild: $(keelctl rebuild status pv)"
total=$(job pv "$F" '.blocks_total * .block_size')
xfer=$(job pv "$F" '.blocks_transferred * .block_size')
[ "$total" = $((regions * RS)) ] || fail "partial rebuild covers $total bytes, the written regions are $((regions * RS))"
[ "$xfer" = "$total" ] || fail "partial rebuild copied $xfer of the $total bytes it covers"
ok "partial rebuild copied exactly the $regions written regions ($((xfer / 1048576)) MiB of 64 MiB)"
same_data "$D/e" "$D/f" "after partial rebuild"
qemu_io_ok "data written while f was out" "$URI2" "read -P 0x22 8M 1M" "read -P 0x33 40M 64k" \
	"read -P 0 0 8M" "read -P 0 9M 31M"
ok "e and f identical after the partial rebuild"

# --- keeld killed during a rebuild ----------------------------------------------------
expect_ok "rate limit 0.25 MiB/s" keelctl rpc rebuild_set_options '{"rate_limit_mib_s": 0.25}'
expect_ok "add g to pv" keelctl replica add pv "$D/g"
G=$(bdev_of pv "$D/g")
wait_state pv "$G" running 30
wait_until 30 "g copy started" done_above pv "$G" 0
st=$(job pv "$G" '.state + " " + (.blocks_done < .blocks_total | tostring)')
[ "$st" = "running true" ] || fail "copy of g not in progress before the kill: $(keelctl rebuild status pv)"
kill -KILL "$KEELD_PID"
wait "$KEELD_PID" 2>/dev/null
KEELD_PID=
ok "keeld killed with -9 in the middle of the copy of g"
start_keeld
wait_healthy pv "$D/g" 60
[ "$(job pv "$(bdev_of pv "$D/g")" .state)" = completed ] || fail "no completed rebuild of g after the restart: $(keelctl rebuild status pv)"
same_data "$D/e" "$D/g" "after kill -9 during a rebuild"
ok "after restart the rebuild of g completed, e and g identical"

# --- keeld killed during acknowledged writes with a replica out -----------------------
expect_ok "fault g" keelctl replica fault pv "$D/g"
"$PY" "$ACKED_IO" "$E2E_TMP/pv.nbd" pv write $((16 << 20)) $((16 << 20)) "$E2E_TMP/acked.json" \
	>"$E2E_TMP/acked.out" 2>&1 &
W=$!
E2E_EXTRA_PIDS=$W
acked_at_least() {
	local n
	n=$(grep -o '^acked [0-9]*' "$E2E_TMP/acked.out" | tail -n 1 | cut -d' ' -f2)
	[ "${n:-0}" -ge "$1" ]
}
wait_until 60 "500 writes acknowledged" acked_at_least 500
kill -0 $W 2>/dev/null || fail "the writer stopped before keeld was killed: $(cat "$E2E_TMP/acked.out")"
kill -KILL "$KEELD_PID"
wait "$KEELD_PID" 2>/dev/null
KEELD_PID=
wait $W || fail "writer: $(cat "$E2E_TMP/acked.out")"
E2E_EXTRA_PIDS=
grep -q "connection ended" "$E2E_TMP/acked.out" || fail "writer: $(cat "$E2E_TMP/acked.out")"
ok "keeld killed with -9 during writes with g out: $(tail -n 1 "$E2E_TMP/acked.out")"
start_keeld
# g's label is behind: stale at assembly, re-added and rebuilt by itself.
wait_healthy pv "$D/g" 60
wait_healthy pv "$D/f" 60
same_data "$D/e" "$D/f" "after kill -9 during writes"
same_data "$D/e" "$D/g" "after kill -9 during writes"
ok "after restart g was rebuilt; e, f, g identical"
out=$("$PY" "$ACKED_IO" "$E2E_TMP/pv.nbd" pv verify $((16 << 20)) $((16 << 20)) "$E2E_TMP/acked.json" 2>&1) ||
	fail "acknowledged writes lost: $out"
ok "every acknowledged write survived: $out"
qemu_io_ok "data written before the crashes" "$URI2" "read -P 0x22 8M 1M" "read -P 0x33 40M 64k"

# --- history survives restarts --------------------------------------------------------
stop_keeld || fail "keeld exited with an error"
start_keeld
expect_ok "history rb" keelctl --json rebuild history rb
n=$(jget "$OUT" '[.[] | select(.state == "completed")] | length')
s=$(jget "$OUT" '[.[] | select(.state == "stopped")] | length')
[ "$n" -ge 2 ] && [ "$s" -ge 2 ] || fail "history of rb lacks jobs (completed $n, stopped $s): $OUT"
ok "rebuild history of rb survives restarts ($n completed, $s stopped)"
expect_ok "history pv" keelctl --json rebuild history pv
[ "$(jget "$OUT" '[.[] | select(.state == "completed" and .is_partial)] | length')" -ge 1 ] ||
	fail "history of pv lacks the partial rebuild: $OUT"
ok "history of pv has the partial rebuild"
stop_keeld || fail "keeld exited with an error (sanitizer report?)"
echo "PASS $E2E_NAME"
