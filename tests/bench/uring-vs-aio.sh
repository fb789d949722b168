#!/usr/bin/env bash
# The uring bdev against keel's aio bdev and fio's io_uring engine on the same files,
# one core (benchmark, not a test).
#
#   tests/bench/uring-vs-aio.sh [BUILD_DIR]     (default: ./build, or $KEEL_BUILD)
#   env: SECONDS_PER_RUN (5), SIZE_MIB (1024), CPU (0: the one CPU every side runs on,
#        io_uring's kernel workers included), QDS ("1 32 128")
#
# Rows: 4k randread and randwrite at each QD on
#   disk  a written file in the build tree, O_DIRECT: device-bound, reported only;
#   shm   a written file in /dev/shm, O_DIRECT (tmpfs takes it since Linux 6.6): the CPU
#         cost of the path, target uring >= 1.0x keel aio in IOPS per busy core;
# and a buffered row: the disk file opened without O_DIRECT, its page cache dropped
# before each run, 4k randread QD32: aio blocks inside io_submit on every cache miss,
# io_uring does not (target uring >= 2x aio). With it, what a blocked reactor costs
# everything else on it: the worst lateness of a 1 ms timed poller on the same reactor
# (keel-bench's timer_late_max_us; the null bdev's figure is the machine's own), and how
# often the reactor thread slept in the kernel (reactor_sleeps: voluntary context
# switches; a poll-mode reactor makes none unless a syscall blocks, whatever the load).
#
# Every side is pinned with taskset to CPU $CPU. keel-bench runs --mode poll and times
# 1 request in 16; fio runs io_uring with --fixedbufs --registerfiles --sqthread_poll=0
# --hipri=0, --gtod_reduce=1 (no per-I/O clock reads). Per-core figures are IOPS
# divided by the CPU share the process got (cpu_pct/100): the machine is shared.
# Files are removed at the end. Exits 0 unless a tool fails; 77 when fio, jq or
# keel-bench is missing or io_uring is refused here.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-${KEEL_BUILD:-$repo/build}}
bench=$build/bin/keel-bench
seconds=${SECONDS_PER_RUN:-5}
size_mib=${SIZE_MIB:-1024}
cpu=${CPU:-0}
qds=${QDS:-1 32 128}
disk_file=$build/uring-vs-aio.img
shm_file=/dev/shm/keel-uring-vs-aio.$$.img

cleanup() { rm -f "$disk_file" "$shm_file"; }
trap cleanup EXIT

for tool in fio jq taskset; do
	command -v $tool >/dev/null || { echo "uring-vs-aio: $tool not installed" >&2; exit 77; }
done
if [[ ! -x $bench ]] || ! "$bench" bdev --help 2>/dev/null | grep -q uring; then
	echo "uring-vs-aio: $bench bdev (with uring) is not built" >&2
	exit 77
fi

# keel SIDE FILE RW QD [EXTRA...] -> "iops cpu_pct timer_late_max_us reactor_sleeps"
keel() {
	local side=$1 file=$2 rw=$3 qd=$4 out
	shift 4
	out=$(taskset -c "$cpu" "$bench" bdev --bdev "$side:$file" --rw "$rw" --bs 4k --qd "$qd" \
		--seconds "$seconds" --mode poll --json "$@" 2>/dev/null) ||
		{ echo "uring-vs-aio: keel-bench $side $rw qd$qd failed" >&2; exit 1; }
	jq -r '"\(.iops | floor) \(.cpu_pct) \(.timer_late_max_us) \(.reactor_sleeps)"' <<<"$out"
}

# fio_uring FILE RW QD DIRECT -> "iops cpu_pct"
fio_uring() {
	local file=$1 rw=$2 qd=$3 direct=$4 out
	out=$(taskset -c "$cpu" fio --name=uring-vs-aio --filename="$file" --ioengine=io_uring \
		--fixedbufs --registerfiles --sqthread_poll=0 --hipri=0 --direct="$direct" \
		--rw="$rw" --bs=4k --iodepth="$qd" --numjobs=1 --runtime="$seconds" --time_based \
		--norandommap --randrepeat=0 --gtod_reduce=1 --output-format=json) ||
		{ echo "uring-vs-aio: fio $rw qd$qd failed" >&2; exit 1; }
	jq -r '.jobs[0] as $j | (if $j.read.iops > 0 then $j.read.iops else $j.write.iops end)
	       as $iops | "\($iops | floor) \(($j.usr_cpu + $j.sys_cpu) * 10 | floor / 10)"' <<<"$out"
}

drop_cache() { dd if="$1" iflag=nocache count=0 status=none; }

# row LABEL URING AIO FIO TARGET: one line with IOPS, IOPS per busy core and the ratio.
row() {
	local label=$1 u=$2 a=$3 f=$4 target=$5
	awk -v l="$label" -v u="$u" -v a="$a" -v f="$f" -v t="$target" 'BEGIN {
		split(u, U, " "); split(a, A, " "); split(f, F, " ")
		upc = (U[2] > 0) ? U[1] / (U[2] / 100) : 0
		apc = (A[2] > 0) ? A[1] / (A[2] / 100) : 0
		r = (apc > 0) ? upc / apc : 0
		v = (t == "") ? "reported, not targeted" : ((r >= t) ? "target >= " t "x: met" : "target >= " t "x: MISSED")
		printf "%-22s uring %8d (%8d/core)  aio %8d (%8d/core)  fio-uring %8d  uring/aio per core %.2f  (%s)\n",
		       l, U[1], upc, A[1], apc, F[1], r, v }'
}

echo "uring-vs-aio: ${seconds} s per run, 4k, one CPU ($cpu) for every side, $(nproc) CPUs here"
echo "  uptime at start: $(uptime)"
echo "  keel: keel-bench bdev --mode poll, uring (ring per thread, registered file, COOP_TASKRUN)"
echo "        and aio (io_submit per poll, mapped completion ring); --bs 4k --qd Q"
echo "  fio:  fio $(fio --version) --ioengine=io_uring --fixedbufs --registerfiles"
echo "        --sqthread_poll=0 --hipri=0 --gtod_reduce=1 --norandommap"

rm -f "$disk_file"
dd if=/dev/zero of="$disk_file" bs=1M count="$size_mib" oflag=direct conv=fsync status=none
dd if=/dev/zero of="$shm_file" bs=1M count="$size_mib" status=none

for store in shm disk; do
	file=$shm_file
	target=1.0
	if [[ $store == disk ]]; then
		file=$disk_file
		target=
	fi
	echo
	echo "== $store: $file (${size_mib} MiB, written), O_DIRECT"
	for rw in randread randwrite; do
		for qd in $qds; do
			u=$(keel uring "$file" "$rw" "$qd")
			a=$(keel aio "$file" "$rw" "$qd")
			f=$(fio_uring "$file" "$rw" "$qd" 1)
			row "$store $rw qd$qd" "$u" "$a" "$f" "$target"
		done
	done
done

echo
echo "== buffered: $disk_file without O_DIRECT, page cache dropped before each run, randread qd32"
drop_cache "$disk_file"
u=$(keel uring "$disk_file" randread 32 --buffered)
drop_cache "$disk_file"
a=$(keel aio "$disk_file" randread 32 --buffered)
drop_cache "$disk_file"
f=$(fio_uring "$disk_file" randread 32 0)
row "buffered randread qd32" "$u" "$a" "$f" 2
n=$(keel null "" randread 32)
echo "  1 ms timer on the reactor, worst lateness: uring $(cut -d' ' -f3 <<<"$u") us," \
	"aio $(cut -d' ' -f3 <<<"$a") us; null bdev (the machine's own) $(cut -d' ' -f3 <<<"$n") us"
echo "  reactor thread slept in the kernel: uring $(cut -d' ' -f4 <<<"$u") times," \
	"aio $(cut -d' ' -f4 <<<"$a") times, null bdev $(cut -d' ' -f4 <<<"$n") times"
echo
echo "  uptime at end: $(uptime)"
