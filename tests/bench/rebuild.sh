#!/usr/bin/env bash
# Rebuild benchmark (not a test): how fast keel rebuilds a replica, and what a rebuild
# costs the foreground, on this machine's disk, compared in one run with:
#   - the raw copy rate of the same file (dd iflag=direct oflag=direct bs=1M);
#   - the foreground IOPS of fio 4k randrw QD8 on the exported volume without a rebuild.
#
#   tests/bench/rebuild.sh [BUILD_BIN_DIR]     (default: build/bin; SIZE_MB=1024)
#
# Replicas are files in a temp dir under the build tree (on the disk, O_DIRECT), not
# in /tmp (tmpfs on some machines refuses O_DIRECT). Targets (docs/rebuild.md):
#   idle rebuild >= 0.9x raw copy; foreground IOPS during rebuild >= 0.7x without;
#   partial rebuild after ~1% of the regions were dirtied < 5% of the full rebuild time.
set -u

SRC=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${1:-${KEEL_BIN:-$SRC/build/bin}}
SIZE_MB=${SIZE_MB:-1024}
FG_SECS=${FG_SECS:-6}
[ -x "$BIN/keeld" ] && [ -x "$BIN/keelctl" ] || { echo "no keeld/keelctl in $BIN"; exit 77; }
command -v fio >/dev/null || { echo "fio is needed"; exit 77; }
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "fio lacks the nbd engine"; exit 77; }

T=$(mktemp -d "$(dirname "$BIN")/rebuild-bench.XXXXXX") || exit 1
S=$(mktemp -d /tmp/keel-rb.XXXXXX) || exit 1     # sockets: short paths
KPID=
cleanup() {
	[ -n "$KPID" ] && kill -TERM "$KPID" 2>/dev/null && wait "$KPID" 2>/dev/null
	rm -rf "$T" "$S"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cd "$T" || exit 1

K() { "$BIN/keelctl" -s "$S/k.sock" "$@"; }
die() { echo "rebuild.sh: $*" >&2; [ -f "$T/keeld.log" ] && tail -n 20 "$T/keeld.log" >&2; exit 1; }
jq_py() { python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$1" "$2"; }

# job VOL TARGET EXPR
job() {
	python3 -c '
import json, sys
jobs = [j for j in json.loads(sys.argv[1]) if j["target"] == sys.argv[2]]
print(eval(sys.argv[3], {"j": jobs[-1]}) if jobs else "none")' "$(K rebuild status "$1" --json)" "$2" "$3"
}
bdev_of() { jq_py "$(K --json volume show "$1")" "[r['bdev'] for r in j['replicas'] if r['path'] == '$2'][0]"; }
wait_done() { # VOL TARGET
	local s
	for _ in $(seq 1 3000); do
		s=$(job "$1" "$2" "j['state']")
		[ "$s" = completed ] && return 0
		[ "$s" = failed ] && die "rebuild of $2 failed: $(job "$1" "$2" "j['error']")"
		sleep 0.1
	done
	die "rebuild of $2 did not complete in 300 s"
}
fio_iops() { # OUTPUT.json -> read+write IOPS
	python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; print(int(j["read"]["iops"] + j["write"]["iops"]))' "$1"
}
URI="nbd+unix:///rbb?socket=$S/rbb.nbd"
fg_fio() { # OUTPUT SECONDS [extra fio args]
	local out=$1 secs=$2
	shift 2
	fio --name=fg --ioengine=nbd --uri="$URI" --rw=randrw --bs=4k --iodepth=8 --time_based \
		--runtime="$secs" --verify_state_save=0 --output-format=json --output="$out" "$@" \
		>/dev/null 2>&1 || die "fio failed: $(tail -n 5 "$out")"
}
# IOPS from fio's per-200ms log (read+write) within [FROM_MS, TO_MS) of wall clock;
# fio's log times are relative to its start, given as START_MS.
window_iops() { # LOGPREFIX START_MS FROM_MS TO_MS
	python3 - "$@" <<'PY'
import glob, sys
prefix, start, lo, hi = sys.argv[1], *map(float, sys.argv[2:5])
buckets = {}
for f in glob.glob(prefix + "_iops*.log"):
    for line in open(f):
        t, v = line.split(",")[:2]
        t = float(t) + start
        if lo <= t - 200 and t <= hi:
            buckets[t] = buckets.get(t, 0) + int(v)
print(int(sum(buckets.values()) / len(buckets)) if buckets else 0)
PY
}
now_ms() { date +%s%3N; }
wait_bits_clear() { # VOL SECONDS: the lazy clear empties the bitmap on a quiet volume
	local n
	for _ in $(seq 1 $(($2 * 10))); do
		n=$(jq_py "$(K --json volume show "$1")" "(j.get('bitmap') or {}).get('bits_set', 0)")
		[ "$n" = 0 ] && return 0
		sleep 0.1
	done
	echo "warning: bitmap of $1 still has $n bits set after $2 s"
}

"$BIN/keeld" --foreground --rpc-socket "$S/k.sock" --state-dir "$T/state" --cpus "${KEEL_CPUS:-0-1}" \
	>"$T/keeld.log" 2>&1 &
KPID=$!
for _ in $(seq 1 100); do K rpc keel_get_version >/dev/null 2>&1 && break; sleep 0.1; done
# RB_OPTS: rebuild_set_options for tuning runs, e.g. '{"segment_size": 1048576, "tasks": 4}'
[ -n "${RB_OPTS:-}" ] && { K rpc rebuild_set_options "$RB_OPTS" >/dev/null || die "bad RB_OPTS"; }
K volume create rbb --size "${SIZE_MB}M" --replica "$T/a" --replica "$T/b" >/dev/null || die "create"
K export start rbb --socket "$S/rbb.nbd" >/dev/null || die "export"

# Real data everywhere: a sparse source would flatter both the copy and the rebuild.
echo "filling the ${SIZE_MB} MiB volume..."
fio --name=fill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=8 --size="${SIZE_MB}M" \
	--verify_state_save=0 --output="$T/fill.out" >/dev/null 2>&1 || die "fill failed"
sync

# 1. raw copy of the same file
t0=$(date +%s.%N)
dd if="$T/a" of="$T/raw" bs=1M iflag=direct oflag=direct status=none || die "dd"
t1=$(date +%s.%N)
RAW=$(python3 -c "print(($(stat -c %s "$T/a") / 1048576) / ($t1 - $t0))")
rm -f "$T/raw"

# 2. idle full rebuild
K replica add rbb "$T/c" >/dev/null || die "add c"
C=$(bdev_of rbb "$T/c")
wait_done rbb "$C"
FULL_RATE=$(job rbb "$C" "j['rate_mib_s']")
FULL_MS=$(job rbb "$C" "j['duration_ms']")
K replica remove rbb "$T/c" >/dev/null || die "remove c"
rm -f "$T/c"

# 3. foreground without, then with a full rebuild of one of the two replicas. The
# rebuilt replica is b itself, taken out and its label wiped so it counts as new:
# user writes still fan out to two files, already written (a freshly preallocated
# third file would add a replica and ext4's unwritten-extent conversion to the
# write path, which is not what the rebuild costs). fio runs longer than the
# rebuild; its IOPS log gives the rate over the rebuild's window only.
fg_fio "$T/fg0.json" "$FG_SECS"
FG0=$(fio_iops "$T/fg0.json")
K replica fault rbb "$T/b" >/dev/null || die "fault b"
K replica remove rbb "$T/b" >/dev/null || die "remove b"
dd if=/dev/zero of="$T/b" bs=1M count=1 conv=notrunc oflag=direct status=none || die "wipe b"
mv "$T/b" "$T/d"
FIO_T0=$(now_ms)
fg_fio "$T/fg1.json" $((FG_SECS + 6)) --write_iops_log="$T/fg1" --log_avg_msec=200 &
FIOP=$!
sleep 2
K replica add rbb "$T/d" >/dev/null || die "add d"
D=$(bdev_of rbb "$T/d")
wait_done rbb "$D"
wait $FIOP
LOAD_RATE=$(job rbb "$D" "j['rate_mib_s']")
LOAD_MS=$(job rbb "$D" "j['duration_ms']")
RB_T0=$(job rbb "$D" "j['start_time']")
RB_T1=$(job rbb "$D" "j['end_time']")
FG1=$(window_iops "$T/fg1" "$FIO_T0" "$RB_T0" "$RB_T1")
FG1_BEFORE=$(window_iops "$T/fg1" "$FIO_T0" "$FIO_T0" "$RB_T0")
ST_END="window $(( (RB_T1 - RB_T0) ))ms"

# 4. partial rebuild after ~1% of the regions were dirtied
REGION=$(jq_py "$(K rpc rebuild_set_options '{}' 2>/dev/null || echo '{}')" "j.get('bitmap_region_size', 2097152)")
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
wait_done rbb "$D"
PART_MS=$(job rbb "$D" "j['duration_ms']")
PART_PARTIAL=$(job rbb "$D" "j['is_partial']")
PART_MB=$(job rbb "$D" "round(j['blocks_transferred'] * j['block_size'] / 1048576, 1)")

python3 - "$RAW" "$FULL_RATE" "$FULL_MS" "$FG0" "$FG1" "$LOAD_RATE" "$LOAD_MS" "$ST_END" \
	"$PART_MS" "$PART_PARTIAL" "$PART_MB" "$NDIRTY" "$NREG" "$SIZE_MB" "$FG1_BEFORE" <<'EOF'
import sys
fg1b = float(sys.argv[15])
raw, full_rate, full_ms, fg0, fg1, load_rate, load_ms = map(float, sys.argv[1:8])
st_end = sys.argv[8]
part_ms, partial, part_mb = float(sys.argv[9]), sys.argv[10], sys.argv[11]
ndirty, nreg, size = sys.argv[12], sys.argv[13], sys.argv[14]
def row(what, value, ratio, target, ok):
    print(f"| {what:<44} | {value:>22} | {ratio:>7} | {target:>8} | {'ok' if ok else 'MISSED':<6} |")
print(f"\nkeel rebuild benchmark: {size} MiB volume, 2 replicas, one rebuilt in full, files on the build disk\n")
print("| what                                         |                  value |   ratio |   target | result |")
print("|----------------------------------------------|------------------------|---------|----------|--------|")
row("raw copy, dd bs=1M iflag/oflag=direct", f"{raw:.0f} MiB/s", "1.00", "", True)
r = full_rate / raw
row("idle full rebuild", f"{full_rate:.0f} MiB/s ({full_ms/1000:.1f} s)", f"{r:.2f}", ">= 0.90", r >= 0.9)
f = fg1 / fg0 if fg0 else 0
row("fio 4k randrw QD8 IOPS, no rebuild", f"{fg0:.0f}", "1.00", "", True)
row(f"fio IOPS during rebuild ({st_end})", f"{fg1:.0f}", f"{f:.2f}", ">= 0.70", f >= 0.7)
row("fio IOPS same run, before the rebuild", f"{fg1b:.0f}", f"{fg1b/fg0 if fg0 else 0:.2f}", "", True)
row("rebuild rate under that load", f"{load_rate:.0f} MiB/s ({load_ms/1000:.1f} s)", f"{load_rate/raw:.2f}", "", True)
p = part_ms / full_ms if full_ms else 0
row(f"partial rebuild, {ndirty}/{nreg} regions dirty", f"{part_ms/1000:.2f} s ({part_mb} MiB)", f"{p:.3f}", "< 0.05", p < 0.05 and partial == "True")
EOF
