#!/usr/bin/env bash
# aio bdev against fio on the same file: 4 KiB random reads, QD32, one job, O_DIRECT
# (benchmark, not a test).
#
#   tests/bench/aio-vs-fio.sh [BUILD_DIR]      (default: ./build, or $KEEL_BUILD)
#   env: ROUNDS (3), SECONDS_PER_RUN (5), SIZE_MIB (1024), CPU (0: the CPU both sides
#        are pinned to; keel-bench always puts its first reactor on CPU 0)
#
# Like with like: keel-bench runs one reactor pinned to CPU $CPU and reaps completions
# from the aio ring mapped in user space, so fio gets the same: --cpus_allowed=$CPU,
# --userspace_reap=1 with --iodepth_batch_complete_min=0 (fio then polls that ring
# instead of calling io_getevents; strace shows no io_getevents) and
# --iodepth_batch_complete_max=32 (without a maximum, fio 3.33 reaps nothing per poll
# and falls to a few thousand IOPS), and --gtod_reduce=1 (no clock reads per I/O;
# keel-bench times 1 request in 16). Rows:
#   poll       keel --mode poll          vs fio polling the ring        (target >= 0.95)
#   interrupt  keel --mode interrupt     vs fio blocking in io_getevents (target >= 0.95)
#              (both sleep in the kernel until a completion arrives)
#   old        keel --mode poll vs fio with its defaults (unpinned, io_getevents, full
#              latency accounting): the comparison this script made before; extra row.
# 1. a 1 GiB file on the disk (in the build tree, written once so reads reach the
#    device); rounds alternate the sides (A B B A ...) and each row's figure is the
#    median over ROUNDS;
# 2. the same on tmpfs (/dev/shm), where the CPU cost of the path is all there is:
#    keel-bench in poll and adaptive mode (target >= 860k IOPS) next to fio with the
#    same advantages.
# Both files are removed at the end. Exits 0 unless a tool fails, 77 when fio, jq or
# keel-bench is missing.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"

repo=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-${KEEL_BUILD:-$repo/build}}
bench=$build/bin/keel-bench
seconds=${SECONDS_PER_RUN:-5}
rounds=${ROUNDS:-3}
size_mib=${SIZE_MIB:-1024}
cpu=${CPU:-0}
disk_file=$build/aio-vs-fio.img
shm_file=/dev/shm/keel-aio-vs-fio.$$.img

cleanup() { rm -f "$disk_file" "$shm_file"; }
trap cleanup EXIT

for tool in fio jq; do
	command -v $tool >/dev/null || { echo "aio-vs-fio: $tool not installed" >&2; exit 77; }
done
if [[ ! -x $bench ]] || ! "$bench" bdev --help >/dev/null 2>&1; then
	echo "aio-vs-fio: $bench bdev is not built" >&2
	exit 77
fi
[[ $cpu == 0 ]] || { echo "aio-vs-fio: keel-bench bdev runs on CPU 0; CPU=$cpu cannot match it" >&2; exit 2; }

# Side configurations: what each ran with is printed next to every row.
declare -A what=(
	[keel_poll]="keel-bench aio bdev, reactor pinned to CPU $cpu, --mode poll, reaps the mapped aio ring, times 1 I/O in 16"
	[keel_interrupt]="keel-bench aio bdev, reactor pinned to CPU $cpu, --mode interrupt (epoll on the aio eventfd), reaps the mapped aio ring, times 1 I/O in 16"
	[keel_adaptive]="keel-bench aio bdev, reactor pinned to CPU $cpu, --mode adaptive, reaps the mapped aio ring, times 1 I/O in 16"
	[fio_poll]="fio libaio, --cpus_allowed=$cpu, --userspace_reap=1 --iodepth_batch_complete_min=0 --iodepth_batch_complete_max=32 (polls the mapped ring), --gtod_reduce=1"
	[fio_interrupt]="fio libaio, --cpus_allowed=$cpu, io_getevents (blocks for >= 1 completion), --gtod_reduce=1"
	[fio_default]="fio libaio defaults: unpinned, io_getevents, full latency accounting"
)
declare -A fio_args=(
	[fio_poll]="--cpus_allowed=$cpu --userspace_reap=1 --iodepth_batch_complete_min=0 --iodepth_batch_complete_max=32 --gtod_reduce=1"
	[fio_interrupt]="--cpus_allowed=$cpu --gtod_reduce=1"
	[fio_default]=""
)

# run SIDE FILE -> IOPS (integer). Both sides: 4k randread, QD32, one job, O_DIRECT,
# $seconds s, the whole file as the range.
run() {
	local side=$1 file=$2 out
	case $side in
	keel_*)
		out=$("$bench" bdev --bdev "aio:$file" --rw randread --bs 4k --qd 32 \
			--seconds "$seconds" --mode "${side#keel_}" --json 2>/dev/null) ||
			{ echo "aio-vs-fio: keel-bench failed ($side)" >&2; exit 1; }
		jq -r '.iops | floor' <<<"$out"
		;;
	fio_*)
		# shellcheck disable=SC2086
		fio --name=aio-vs-fio --filename="$file" --ioengine=libaio --direct=1 \
			--rw=randread --bs=4k --iodepth=32 --numjobs=1 --runtime="$seconds" \
			--time_based --norandommap --randrepeat=0 ${fio_args[$side]} \
			--output-format=json | jq -r '.jobs[0].read.iops | floor'
		;;
	esac
}


# measure FILE SIDE... : ROUNDS rounds, the order reversed every other round (A B ..
# then .. B A) so drift on a shared machine hits every side alike; sets med[SIDE].
declare -A med=()
measure() {
	local file=$1 r side order line
	shift
	declare -A all=()
	for ((r = 1; r <= rounds; r++)); do
		order=("$@")
		if ((r % 2 == 0)); then
			order=()
			for side in "$@"; do order=("$side" "${order[@]}"); done
		fi
		line="round $r:"
		for side in "${order[@]}"; do
			v=$(run "$side" "$file")
			all[$side]+="$v "
			line+=" $side $v"
		done
		echo "$line"
	done
	for side in "$@"; do
		# shellcheck disable=SC2086
		med[$side]=$(printf '%s\n' ${all[$side]} | median)
	done
}

# row NAME KEEL FIO [TARGET]: one comparison row and what both sides ran with.
row() {
	local name=$1 k=$2 f=$3 target=${4:-}
	awk -v n="$name" -v k="${med[$k]}" -v f="${med[$f]}" -v t="$target" 'BEGIN {
		r = (f > 0) ? k / f : 0
		v = (t == "") ? "extra row" : ((r >= t) ? "target >= " t ": met" : "target >= " t ": MISSED")
		printf "%-10s keel %8d IOPS  fio %8d IOPS  keel/fio %.3f  (%s)\n", n, k, f, r, v }'
	echo "    keel: ${what[$k]}"
	echo "    fio:  ${what[$f]}"
}

echo "== disk: ${size_mib} MiB file $disk_file, 4k randread QD32, O_DIRECT, ${seconds} s per run, median of $rounds rounds"
echo "   load average at start: $(loadavg)"
rm -f "$disk_file"
# Written with real data: reads of unwritten extents never reach the device.
dd if=/dev/zero of="$disk_file" bs=1M count="$size_mib" oflag=direct conv=fsync status=none
measure "$disk_file" fio_poll keel_poll fio_interrupt keel_interrupt fio_default
row poll keel_poll fio_poll 0.95
row interrupt keel_interrupt fio_interrupt 0.95
row old keel_poll fio_default
rm -f "$disk_file"

# tmpfs takes O_DIRECT since Linux 6.6 (still a page-cache copy); before, keel falls
# back to buffered I/O with a warning. Either way this measures the CPU cost of the path.
echo
echo "== tmpfs: ${size_mib} MiB file $shm_file, 4k randread QD32, ${seconds} s per run, median of $rounds rounds"
echo "   load average at start: $(loadavg)"
dd if=/dev/zero of="$shm_file" bs=1M count="$size_mib" status=none
measure "$shm_file" fio_poll keel_poll keel_adaptive
for mode in poll adaptive; do
	awk -v k="${med[keel_$mode]}" -v m="$mode" 'BEGIN {
		printf "keel %-9s %8d IOPS  (target >= 860000: %s)\n", m, k,
		       ((k >= 860000) ? "met" : "MISSED") }'
	echo "    keel: ${what[keel_$mode]}"
done
row "fio, same" keel_poll fio_poll
echo "    SPDK (constant, not this run): bdevperf aio, written 1 GiB file in /dev/shm" \
	"(O_DIRECT), 4k randread QD32, 1 core: 197-203k IOPS (SPDK 26.09-pre, 2 vCPU AMD" \
	"EPYC 2.1 GHz, kernel 6.18, 2026-12; docs/performance.md)"
