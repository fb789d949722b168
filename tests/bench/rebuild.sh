#!/usr/bin/env bash
# Rebuild benchmark (not a test): how fast keel rebuilds a replica, and what a rebuild
# costs the foreground, on this machine's disk, each compared in the same run with
# something doing the same work:
#   - the copy ceiling of the disk, measured by fio doing what the rebuild does: an
#     O_DIRECT read of the source replica file and an O_DIRECT write of a new
#     (fallocated, like keeld's new replica files) target file, in segments of the
#     rebuild's segment size with the rebuild's number of segments in flight (half
#     reading, half writing). `dd bs=1M` (one request at a time) is an extra row;
#   - the foreground IOPS (fio nbd engine, 4k randrw QD8) of the same fio run on the
#     same 2-replica volume before a replica is replaced, during its rebuild, and
#     after it, each the mean of fio's 200 ms IOPS log over its window.
#
#   tests/bench/rebuild.sh [BUILD_BIN_DIR]     (default: build/bin)
#   env: SIZE_MB (1024), FG_SECS (6: the windows before and after the rebuild),
#        RATE (24: MiB/s of the rate-limit row; 0 skips it), FLOOR_MB (256: size of
#        the tmpfs volume of the back-off floor row; 0 skips it), KEEL_CPUS (0-1),
#        RB_OPTS (rebuild_set_options JSON for tuning runs), ROUNDS (3: copy ceiling
#        and idle full rebuild alternate this many times; the medians are compared)
#
# Replicas are files in a temp dir under the build tree (on the disk, O_DIRECT), not
# in /tmp. Targets (docs/rebuild.md): idle rebuild >= 0.9x the copy ceiling; foreground
# IOPS during a rebuild >= 0.7x before it; partial rebuild after ~1% of the regions
# were dirtied < 5% of the full rebuild time.
set -u
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"

SRC=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${1:-${KEEL_BIN:-$SRC/build/bin}}
SIZE_MB=${SIZE_MB:-1024}
FG_SECS=${FG_SECS:-6}
RATE=${RATE:-24}
ROUNDS=${ROUNDS:-3}
case $ROUNDS in "" | *[!0-9]* | 0) echo "ROUNDS must be a whole number >= 1" >&2; exit 2 ;; esac
FLOOR_MB=${FLOOR_MB:-256}
[ -x "$BIN/keeld" ] && [ -x "$BIN/keelctl" ] || { echo "no keeld/keelctl in $BIN"; exit 77; }
for tool in fio jq fallocate; do
	command -v $tool >/dev/null || { echo "$tool is needed"; exit 77; }
done
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "fio lacks the nbd engine"; exit 77; }

T=$(mktemp -d "$(dirname "$BIN")/rebuild-bench.XXXXXX") || exit 1
S=$(mktemp -d /tmp/keel-rb.XXXXXX) || exit 1     # sockets: short paths
KPID=
FIOP=
cleanup() {
	[ -n "$FIOP" ] && kill -INT "$FIOP" 2>/dev/null && wait "$FIOP" 2>/dev/null
	[ -n "$KPID" ] && kill -TERM "$KPID" 2>/dev/null && wait "$KPID" 2>/dev/null
	rm -rf "$T" "$S" "${SHM:-}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cd "$T" || exit 1

K() { "$BIN/keelctl" -s "$S/k.sock" "$@"; }
die() { echo "rebuild.sh: $*" >&2; [ -f "$T/keeld.log" ] && tail -n 20 "$T/keeld.log" >&2; exit 1; }
now_ms() { date +%s%3N; }

# job VOL TARGET EXPR: jq EXPR over the last rebuild job of TARGET ("none" if none)
job() {
	K rebuild status "$1" --json | jq -r --arg t "$2" \
		"[.[] | select(.target == \$t)] | if length == 0 then \"none\" else (last | $3) end"
}
bdev_of() { K --json volume show "$1" | jq -r --arg p "$2" '.replicas[] | select(.path == $p) | .bdev'; }
wait_done() { # VOL TARGET
	local s
	for _ in $(seq 1 3000); do
		s=$(job "$1" "$2" .state)
		[ "$s" = completed ] && return 0
		[ "$s" = failed ] && die "rebuild of $2 failed: $(job "$1" "$2" .error)"
		sleep 0.1
	done
	die "rebuild of $2 did not complete in 300 s"
}
# replace VOL PATH NEWPATH: the replica at PATH fails and comes back as a new replica
# (label wiped, so it is rebuilt in full) at NEWPATH; prints the new bdev name.
replace() {
	K replica fault "$1" "$2" >/dev/null || die "fault $2"
	K replica remove "$1" "$2" >/dev/null || die "remove $2"
	dd if=/dev/zero of="$2" bs=1M count=1 conv=notrunc oflag=direct status=none || die "wipe $2"
	[ "$2" = "$3" ] || mv "$2" "$3"
	# Its old data is still there past the label: adding it as new needs --force.
	K replica add "$1" "$3" --force >/dev/null || die "add $3"
	bdev_of "$1" "$3"
}
URI="nbd+unix:///rbb?socket=$S/rbb.nbd"
# Mean IOPS (read + write) of fio's 200 ms buckets lying inside [FROM_MS, TO_MS] of
# wall clock; fio's log times are relative to its start, given as START_MS.
window_iops() { # LOGPREFIX START_MS FROM_MS TO_MS
	cat "$1"_iops*.log 2>/dev/null | awk -F', *' -v s="$2" -v lo="$3" -v hi="$4" '
		{ t = $1 + s; if (lo <= t - 200 && t <= hi) b[t] += $2 }
		END { n = 0; sum = 0; for (t in b) { n++; sum += b[t] } print (n ? int(sum / n) : 0) }'
}
wait_bits_clear() { # VOL SECONDS: the lazy clear empties the bitmap on a quiet volume
	local n
	for _ in $(seq 1 $(($2 * 10))); do
		n=$(K --json volume show "$1" | jq -r '.bitmap.bits_set // 0')
		[ "$n" = 0 ] && return 0
		sleep 0.1
	done
	echo "warning: bitmap of $1 still has $n bits set after $2 s"
}

"$BIN/keeld" --foreground --rpc-socket "$S/k.sock" --state-dir "$T/state" --cpus "${KEEL_CPUS:-0-1}" \
	>"$T/keeld.log" 2>&1 &
KPID=$!
for _ in $(seq 1 100); do K rpc keel_get_version >/dev/null 2>&1 && break; sleep 0.1; done
[ -n "${RB_OPTS:-}" ] && { K rpc rebuild_set_options "$RB_OPTS" >/dev/null || die "bad RB_OPTS"; }
OPTS=$(K rpc rebuild_set_options '{}') || die "rebuild_set_options"
SEG=$(jq -r .segment_size <<<"$OPTS")
TASKS=$(jq -r .tasks <<<"$OPTS")
K volume create rbb --size "${SIZE_MB}M" --replica "$T/a" --replica "$T/b" >/dev/null || die "create"
K export start rbb --socket "$S/rbb.nbd" >/dev/null || die "export"
LOAD0=$(loadavg)

# Real data everywhere: a sparse source would flatter both the copy and the rebuild.
echo "filling the ${SIZE_MB} MiB volume..."
fio --name=fill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=8 --size="${SIZE_MB}M" \
	--verify_state_save=0 --output="$T/fill.out" >/dev/null 2>&1 || die "fill failed"
sync

# 1 and 2, ROUNDS times, alternating (A B A B ...): the copy ceiling of the disk on
# the same source file, and an idle full rebuild onto a new replica file (keeld
# fallocates it, as fio's target was). The verdict compares the medians.
RD_QD=$(( (TASKS + 1) / 2 ))
WR_QD=$(( TASKS / 2 > 0 ? TASKS / 2 : 1 ))
CEILS=() DDS=() RATES=() MSS=()
for ((round = 1; round <= ROUNDS; round++)); do
	echo "round $round of $ROUNDS: copy ceiling (fio, ${TASKS} x $((SEG / 1024)) KiB in flight)..."
	fallocate -l "$(stat -c %s "$T/a")" "$T/raw" || die "fallocate"
	fio --output-format=json --output="$T/copy.json" --ioengine=libaio --direct=1 --bs="$SEG" \
		--size="${SIZE_MB}M" \
		--name=read --filename="$T/a" --rw=read --iodepth="$RD_QD" \
		--name=write --filename="$T/raw" --rw=write --iodepth="$WR_QD" >/dev/null 2>&1 ||
		die "fio copy ceiling failed"
	CEILS+=("$(jq -r --argjson mb "$SIZE_MB" '$mb / ([.jobs[].job_runtime] | max / 1000)' "$T/copy.json")")
	rm -f "$T/raw"
	t0=$(date +%s%N)
	dd if="$T/a" of="$T/raw" bs=1M count="$SIZE_MB" iflag=direct oflag=direct status=none || die "dd"
	t1=$(date +%s%N)
	DDS+=("$(awk -v mb="$SIZE_MB" -v ns=$((t1 - t0)) 'BEGIN { print mb / (ns / 1e9) }')")
	rm -f "$T/raw"

	echo "round $round of $ROUNDS: idle full rebuild..."
	K replica add rbb "$T/c" >/dev/null || die "add c"
	C=$(bdev_of rbb "$T/c")
	wait_done rbb "$C"
	RATES+=("$(job rbb "$C" .rate_mib_s)")
	MSS+=("$(job rbb "$C" .duration_ms)")
	K replica remove rbb "$T/c" >/dev/null || die "remove c"
	rm -f "$T/c"
done
CEIL=$(printf "%s\n" "${CEILS[@]}" | median)
DD=$(printf "%s\n" "${DDS[@]}" | median)
FULL_RATE=$(printf "%s\n" "${RATES[@]}" | median)
FULL_MS=$(printf "%s\n" "${MSS[@]}" | median)

# 3. foreground before, during and after the rebuild of a replaced replica, one fio run.
# The volume has the same two replica files throughout: b fails, comes back as a new
# replica (label wiped, renamed d) and is rebuilt from a, so user writes go to two
# already-written files before, during and after (during the rebuild reads come
# from a only: that is what a rebuild costs).
echo "foreground before / during / after a rebuild..."
FIO_T0=$(now_ms)
fio --name=fg --ioengine=nbd --uri="$URI" --rw=randrw --bs=4k --iodepth=8 --time_based \
	--runtime=3600 --verify_state_save=0 --write_iops_log="$T/fg" --log_avg_msec=200 \
	--output-format=json --output="$T/fg.json" >/dev/null 2>&1 &
FIOP=$!
sleep $((FG_SECS + 1))
kill -0 "$FIOP" 2>/dev/null || die "fio stopped: $(tail -n 5 "$T/fg.json")"
T_FAULT=$(now_ms)
D=$(replace rbb "$T/b" "$T/d")
wait_done rbb "$D"
sleep "$FG_SECS"
T_END=$(now_ms)
kill -0 "$FIOP" 2>/dev/null || die "fio stopped: $(tail -n 5 "$T/fg.json")"
kill -INT "$FIOP"
wait "$FIOP"
FIOP=
LOAD_RATE=$(job rbb "$D" .rate_mib_s)
LOAD_MS=$(job rbb "$D" .duration_ms)
RB_T0=$(job rbb "$D" .start_time)
RB_T1=$(job rbb "$D" .end_time)
FG_BEFORE=$(window_iops "$T/fg" "$FIO_T0" $((FIO_T0 + 1000)) "$T_FAULT")
FG_DURING=$(window_iops "$T/fg" "$FIO_T0" "$RB_T0" "$RB_T1")
FG_AFTER=$(window_iops "$T/fg" "$FIO_T0" "$RB_T1" "$T_END")

# 4. partial rebuild after ~1% of the regions were dirtied
echo "partial rebuild..."
REGION=$(K rpc rebuild_set_options '{}' | jq -r '.bitmap_region_size // 2097152')
NREG=$((SIZE_MB * 1048576 / REGION))
NDIRTY=$(( (NREG + 99) / 100 ))
wait_bits_clear rbb 30
K replica fault rbb "$T/d" >/dev/null || die "fault d"
for i in $(seq 0 $((NDIRTY - 1))); do
	echo "--name=d$i --offset=$(( (i * (NREG / NDIRTY)) * REGION )) --size=64k"
done > "$T/dirty.args"
# shellcheck disable=SC2046
fio --ioengine=nbd --uri="$URI" --rw=write --bs=64k --verify_state_save=0 --output="$T/dirty.out" \
	$(cat "$T/dirty.args") >/dev/null 2>&1 || die "dirtying writes failed"
K replica remove rbb "$T/d" >/dev/null || die "remove d"
K replica add rbb "$T/d" >/dev/null || die "re-add d"
D=$(bdev_of rbb "$T/d")
wait_done rbb "$D"
PART_MS=$(job rbb "$D" .duration_ms)
PART_PARTIAL=$(job rbb "$D" .is_partial)
PART_MB=$(job rbb "$D" ".blocks_transferred * .block_size / 1048576 | . * 10 | round / 10")

# 5. rate limit: a full rebuild asked for RATE MiB/s, progress sampled from 1 s after
# its start over up to 5 s, ending well before the copy could complete.
RATE_MEAS=
if [ "$RATE" != 0 ]; then
	echo "rate-limited rebuild (${RATE} MiB/s)..."
	RATE_SECS=$(awk -v s="$SIZE_MB" -v r="$RATE" 'BEGIN { w = int(s / r / 2); print (w > 5) ? 5 : ((w < 1) ? 1 : w) }')
	K rpc rebuild_set_options "{\"rate_limit_mib_s\": $RATE}" >/dev/null || die "rate limit"
	E=$(replace rbb "$T/d" "$T/e")
	sleep 1
	b0=$(job rbb "$E" .blocks_done); m0=$(now_ms)
	sleep "$RATE_SECS"
	b1=$(job rbb "$E" .blocks_done); m1=$(now_ms)
	[ "$(job rbb "$E" .state)" = running ] || die "the rate-limited rebuild ended inside the sample"
	BS=$(job rbb "$E" .block_size)
	RATE_MEAS=$(awk -v d=$((b1 - b0)) -v bs="$BS" -v ms=$((m1 - m0)) 'BEGIN { printf "%.1f", d * bs / 1048576 / (ms / 1000) }')
	K replica remove rbb "$T/e" >/dev/null || die "remove e"
	K rpc rebuild_set_options '{"rate_limit_mib_s": 0}' >/dev/null
fi
# 6. the back-off floor: on a volume bound by CPU rather than by the disk (replicas on
# tmpfs, 4 fio jobs of 4k randwrite QD64 saturating both cores: every segment waits
# for busy reactors) backing off to one segment crawls (4.5 MiB/s measured with the
# floor compiled out); the job runs all its tasks again whenever it fell below
# 32 MiB/s over 100 ms. The row shows the rate and the tasks in flight seen while fio
# ran (1: backing off; more: the floor).
FLOOR_RATE=
if [ "$FLOOR_MB" != 0 ]; then
	echo "back-off floor: CPU-bound volume on tmpfs..."
	SHM=$(mktemp -d /dev/shm/keel-rb.XXXXXX) || die "mktemp /dev/shm"
	K volume create rbf --size "${FLOOR_MB}M" --replica "$SHM/a" --replica "$SHM/b" >/dev/null ||
		die "create rbf"
	K export start rbf --socket "$S/rbf.nbd" >/dev/null || die "export rbf"
	FURI="nbd+unix:///rbf?socket=$S/rbf.nbd"
	fio --name=fill --ioengine=nbd --uri="$FURI" --rw=write --bs=1M --iodepth=8 \
		--size="${FLOOR_MB}M" --verify_state_save=0 --output="$T/ffill.out" >/dev/null 2>&1 ||
		die "fill rbf failed"
	fio --name=fgf --ioengine=nbd --uri="$FURI" --rw=randwrite --bs=4k --iodepth=64 \
		--numjobs=4 --time_based --runtime=3600 --verify_state_save=0 --output="$T/fgf.out" >/dev/null 2>&1 &
	FIOP=$!
	sleep 2
	F=$(replace rbf "$SHM/b" "$SHM/c")
	tmin=999 tmax=0
	for _ in $(seq 1 3000); do
		read -r st ta <<<"$(job rbf "$F" '"\(.state) \(.tasks_active)"')"
		[ "$st" = running ] || break
		((ta > 0 && ta < tmin)) && tmin=$ta
		((ta > tmax)) && tmax=$ta
		sleep 0.1
	done
	kill -0 "$FIOP" 2>/dev/null || die "fio on rbf stopped during the rebuild"
	kill -INT "$FIOP"
	wait "$FIOP"
	FIOP=
	[ "$st" = completed ] || die "rebuild on rbf: $st $(job rbf "$F" .error)"
	FLOOR_RATE=$(job rbf "$F" .rate_mib_s)
	FLOOR_MS=$(job rbf "$F" .duration_ms)
	((tmin == 999)) && tmin=0
	K volume destroy rbf >/dev/null || die "destroy rbf"
	rm -rf "$SHM"
fi
LOAD1=$(loadavg)

row() { # what value ratio target verdict
	printf "| %-54s | %-24s | %7s | %8s | %-6s |\n" "$@"
}
ok() { awk -v r="$1" -v op="$2" -v t="$3" 'BEGIN { m = (op == ">=") ? (r >= t) : (r < t); print m ? "ok" : "MISSED" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }'; }

echo
echo "keel rebuild benchmark: ${SIZE_MB} MiB volume, 2 replicas, files on the build disk (O_DIRECT),"
echo "keeld --cpus ${KEEL_CPUS:-0-1} (default mode), rebuild ${TASKS} x $((SEG / 1024)) KiB in flight;"
echo "load average $LOAD0 at start, $LOAD1 at the end"
echo
row "what" "value" "ratio" "target" "result"
row "------------------------------------------------------" "------------------------" "-------" "--------" "------"
row "copy ceiling: fio read a + write new file, ${RD_QD}+${WR_QD} x $((SEG / 1024))K" \
	"$(printf '%.0f MiB/s' "$CEIL")" "1.00" "" ""
row "  median of $ROUNDS; each round" "$(printf '%.0f ' "${CEILS[@]}")" "" "" ""
row "  (extra) dd bs=1M iflag/oflag=direct, 1 in flight" "$(printf '%.0f MiB/s' "$DD")" \
	"$(ratio "$DD" "$CEIL")" "" ""
r=$(ratio "$FULL_RATE" "$CEIL")
row "idle full rebuild onto a new file" "$(printf '%.0f MiB/s (%.1f s)' "$FULL_RATE" "$(awk -v m="$FULL_MS" 'BEGIN{print m/1000}')")" \
	"$r" ">= 0.90" "$(ok "$r" ">=" 0.9)"
row "  median of $ROUNDS; each round (MiB/s)" "$(printf '%.0f ' "${RATES[@]}")" "" "" ""
row "fio 4k randrw QD8 IOPS, before (2 replicas)" "$FG_BEFORE" "1.00" "" ""
r=$(ratio "$FG_DURING" "$FG_BEFORE")
row "same fio run, during the rebuild ($((RB_T1 - RB_T0)) ms)" "$FG_DURING" "$r" ">= 0.70" "$(ok "$r" ">=" 0.7)"
row "same fio run, after the rebuild" "$FG_AFTER" "$(ratio "$FG_AFTER" "$FG_BEFORE")" "" ""
row "rebuild rate under that load" "$(printf '%.0f MiB/s (%.1f s)' "$LOAD_RATE" "$(awk -v m="$LOAD_MS" 'BEGIN{print m/1000}')")" \
	"$(ratio "$LOAD_RATE" "$CEIL")" "" ""
r=$(awk -v p="$PART_MS" -v f="$FULL_MS" 'BEGIN { printf "%.3f", (f > 0) ? p / f : 0 }')
v=$(ok "$r" "<" 0.05); [ "$PART_PARTIAL" = true ] || v=MISSED
row "partial rebuild, $NDIRTY of $NREG regions dirty" "$(awk -v m="$PART_MS" 'BEGIN{printf "%.2f s", m/1000}') ($PART_MB MiB)" \
	"$r" "< 0.05" "$v"
if [ -n "$RATE_MEAS" ]; then
	row "rebuild asked for $RATE MiB/s, measured over $RATE_SECS s" "$RATE_MEAS MiB/s" "$(ratio "$RATE_MEAS" "$RATE")" "" ""
fi
if [ -n "$FLOOR_RATE" ]; then
	row "tmpfs ${FLOOR_MB} MiB volume, 4 x fio randwrite QD64: rebuild" \
		"$(printf '%.0f MiB/s (%.1f s)' "$FLOOR_RATE" "$(awk -v m="$FLOOR_MS" 'BEGIN{print m/1000}')")" \
		"" "floor 32" ""
	row "  tasks in flight seen (back-off 1, floor ${TASKS})" "${tmin}..${tmax}" "" "" ""
fi
echo
echo "fio foreground: nbd engine over keeld's unix socket, 4k randrw QD8, one job; windows: before"
echo "= from 1 s after fio started to the fault, during = the rebuild job's start to end, after ="
echo "${FG_SECS} s after it; each the mean of fio's 200 ms IOPS buckets inside the window."
