#!/usr/bin/env bash
# aio bdev against fio on the same file: 4 KiB random reads, QD32, one job, O_DIRECT.
#
#   tests/bench/aio-vs-fio.sh [BUILD_DIR]      (default: ./build, or $KEEL_BUILD)
#   env: ROUNDS (3), SECONDS_PER_RUN (5), SIZE_MIB (1024)
#
# 1. a 1 GiB file on the disk (inside the build tree, written once so reads hit the
#    device rather than unwritten extents), fio (libaio) vs keel-bench bdev;
#    alternating rounds, prints both medians and keel/fio (target >= 0.95);
# 2. a file on tmpfs (/dev/shm) through keel-bench, adaptive and poll mode
#    (target >= 0.86M IOPS), with fio for reference.
# Both files are removed at the end. A benchmark, not a test: it exits 0 unless a
# tool fails, and 77 when fio or jq is missing (without keel-bench only fio runs).
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-${KEEL_BUILD:-$repo/build}}
bench=$build/bin/keel-bench
seconds=${SECONDS_PER_RUN:-5}
rounds=${ROUNDS:-3}
# Also measured each round: keel-bench in these reactor modes (its default is poll). On
# a shared machine a pinned, spinning reactor loses CPU to other work while fio sleeps
# in io_getevents, so interrupt mode is the like-for-like comparison there.
extra_modes=${KEEL_EXTRA_MODES-interrupt}
size_mib=${SIZE_MIB:-1024}
disk_file=$build/aio-vs-fio.img
shm_file=/dev/shm/keel-aio-vs-fio.$$.img

cleanup() { rm -f "$disk_file" "$shm_file"; }
trap cleanup EXIT

if ! command -v fio >/dev/null; then
	echo "aio-vs-fio: fio not installed" >&2
	exit 77
fi
for tool in jq; do
	command -v $tool >/dev/null || { echo "aio-vs-fio: $tool not installed" >&2; exit 77; }
done

keel_ready=1
if [[ ! -x $bench ]]; then
	echo "aio-vs-fio: $bench does not exist (keel-bench bdev is not built yet);" \
	     "running only fio" >&2
	keel_ready=0
elif ! "$bench" bdev --help >/dev/null 2>&1; then
	echo "aio-vs-fio: '$bench bdev' is not available yet; running only fio" >&2
	keel_ready=0
fi

# keel-bench --json: take the first "iops" number anywhere in the document.
keel_iops() {
	jq -r '[.. | objects | .iops? // empty | numbers] | first // empty'
}

run_keel() { # file [extra keel-bench options]
	local file=$1
	shift
	"$bench" bdev --bdev "aio:$file" --rw randread --bs 4k --qd 32 --seconds "$seconds" \
		--json "$@" 2>/dev/null
}

echo "== preparing ${size_mib} MiB file $disk_file"
rm -f "$disk_file"
# Written with real data: reads of unwritten extents never reach the device.
dd if=/dev/zero of="$disk_file" bs=1M count="$size_mib" oflag=direct conv=fsync status=none

run_fio() { # file direct
	fio --name=aio-vs-fio --filename="$1" --ioengine=libaio --direct="$2" \
		--rw=randread --bs=4k --iodepth=32 --numjobs=1 --runtime="$seconds" --time_based \
		--norandommap --randrepeat=0 --output-format=json | jq -r '.jobs[0].read.iops | floor'
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

# Rounds alternate fio and keel so drift on a shared machine hits both alike.
fio_all=() keel_all=()
declare -A mode_all=()
for ((round = 1; round <= rounds; round++)); do
	f=$(run_fio "$disk_file" 1)
	fio_all+=("$f")
	line="round $round: fio ${f} IOPS"
	if [[ $keel_ready == 1 ]]; then
		k=$(run_keel "$disk_file" | keel_iops)
		k=${k%.*}
		keel_all+=("$k")
		line+=", keel ${k} IOPS"
		for mode in $extra_modes; do
			k=$(run_keel "$disk_file" --mode "$mode" | keel_iops)
			k=${k%.*}
			mode_all[$mode]+="$k "
			line+=", keel --mode $mode ${k} IOPS"
		done
	fi
	echo "$line"
done
fio_iops=$(printf '%s\n' "${fio_all[@]}" | median)
echo "fio  (libaio, direct=1, randread 4k qd32, ${seconds}s, median of $rounds): ${fio_iops} IOPS"
if [[ $keel_ready == 1 ]]; then
	k_iops=$(printf '%s\n' "${keel_all[@]}" | median)
	echo "keel (aio bdev, keel-bench, same load, median of $rounds): ${k_iops} IOPS"
	awk -v k="$k_iops" -v f="$fio_iops" 'BEGIN {
		r = (f > 0) ? k / f : 0;
		printf "ratio keel/fio: %.3f (target >= 0.95: %s)\n", r, ((r >= 0.95) ? "met" : "NOT met") }'
	for mode in $extra_modes; do
		k_iops=$(printf '%s\n' ${mode_all[$mode]} | median)
		awk -v k="$k_iops" -v f="$fio_iops" -v m="$mode" 'BEGIN {
			printf "keel --mode %s: %d IOPS, ratio keel/fio %.3f\n", m, k, ((f > 0) ? k / f : 0) }'
	done
fi
rm -f "$disk_file"

# tmpfs takes O_DIRECT since Linux 6.6 (still a page-cache copy); before, keel falls
# back to buffered I/O with a warning. Either way this measures the CPU cost of the path.
echo "== tmpfs file $shm_file, randread 4k qd32"
dd if=/dev/zero of="$shm_file" bs=1M count="$size_mib" status=none
echo "fio  (tmpfs): $(run_fio "$shm_file" 1 2>/dev/null || run_fio "$shm_file" 0) IOPS"
if [[ $keel_ready == 1 ]]; then
	for mode in adaptive poll; do
		k_iops=$(run_keel "$shm_file" --mode "$mode" | keel_iops)
		k_iops=${k_iops%.*}
		awk -v k="$k_iops" -v m="$mode" 'BEGIN {
			printf "keel (tmpfs, %s mode): %d IOPS (target >= 860000: %s)\n", m, k,
			       ((k >= 860000) ? "met" : "NOT met") }'
	done
fi
