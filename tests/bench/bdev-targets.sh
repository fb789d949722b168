#!/usr/bin/env bash
# The bdev-layer targets with keel-bench bdev, each row next to the bdevperf run it is
# compared with (benchmark, not a test).
#
#   tests/bench/bdev-targets.sh [BUILD_DIR]     (default: ./build, or $KEEL_BUILD)
#   env: ROUNDS (3: runs per row, the median is reported), SECONDS_PER_RUN (5)
#
# Both sides: one job on one reactor pinned to CPU 0, poll mode, 4 KiB, the bdev
# core timestamping every request for its statistics (keel once per completion batch;
# keel-bench's own latency figure samples 1 request in 16). Verdicts use IOPS over wall
# time, as bdevperf reports; IOPS per busy core (IOPS / process CPU share) is an extra
# column that discounts CPU time lost to other work on a shared machine. The SPDK figures are constants measured on a machine of
# the same kind, not in this run (printed with each row). The tmpfs row compares two
# keel runs of the same run instead: a 2-way nexus over two tmpfs files with the single
# tmpfs file, rounds alternating the two.
# Exits 0 unless keel-bench fails, 77 when it or jq is missing.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"

repo=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-${KEEL_BUILD:-$repo/build}}
bench=$build/bin/keel-bench
rounds=${ROUNDS:-3}
seconds=${SECONDS_PER_RUN:-5}
shm=$(mktemp -d /dev/shm/keel-bdev-targets.XXXXXX)
trap 'rm -rf "$shm"' EXIT

command -v jq >/dev/null || { echo "bdev-targets: jq not installed" >&2; exit 77; }
[[ -x $bench ]] || { echo "bdev-targets: $bench is not built" >&2; exit 77; }

spdk_origin="SPDK 26.09-pre (DPDK 22.11), 2 vCPU AMD EPYC 2.1 GHz, kernel 6.18, 2026-12"
# kb ARGS...: one keel-bench bdev run on CPU 0 in poll mode, prints "IOPS IOPS_PER_BUSY_CORE"
kb() {
	"$bench" bdev --cores 1 --mode poll --seconds "$seconds" --json "$@" 2>/dev/null |
		jq -r '"\(.iops | floor) \(if .cpu_pct > 0 then .iops * 100 / .cpu_pct | floor else 0 end)"' ||
		{ echo "bdev-targets: keel-bench bdev $* failed" >&2; exit 1; }
}
# col N: field N of each line on stdin
col() { awk -v n="$1" '{ print $n }'; }
# row WHAT TARGET_IOPS SPDK_RESULT SPDK_RUN ARGS...: median of ROUNDS runs of ARGS
row() {
	local what=$1 target=$2 spdk=$3 spdk_run=$4 all=() m c
	shift 4
	for ((r = 0; r < rounds; r++)); do all+=("$(kb "$@")"); done
	m=$(printf '%s\n' "${all[@]}" | col 1 | median)
	c=$(printf '%s\n' "${all[@]}" | col 2 | median)
	awk -v w="$what" -v m="$m" -v c="$c" -v t="$target" -v s="$spdk" \
		-v a="$(printf '%s\n' "${all[@]}" | col 1 | paste -sd' ')" 'BEGIN {
		printf "%-38s %6.2fM IOPS (%.2fM per busy core)  target >= %.1fM: %-6s  SPDK %s  (runs: %s)\n",
		       w, m / 1e6, c / 1e6, t / 1e6, (m >= t) ? "met" : "MISSED", s, a }'
	echo "    keel: keel-bench bdev $* --cores 1 --mode poll --seconds $seconds"
	echo "    SPDK: $spdk_run ($spdk_origin; constant, not this run)"
}

echo "keel-bench bdev against bdevperf, median of $rounds runs of ${seconds} s;" \
	"load average $(loadavg)"
row "null, 4k randread QD128" 25000000 "12.7-12.9M" \
	"bdevperf -m 0x1, null bdev, -q 128 -o 4096 -w randread" \
	--bdev null --rw randread --bs 4k --qd 128
row "malloc 1 GiB, 4k randread QD128" 2400000 "1.02-1.04M" \
	"bdevperf -m 0x1, malloc 1 GiB, -q 128 -o 4096 -w randread" \
	--bdev malloc:1g --rw randread --bs 4k --qd 128
row "2-way nexus over null, randread QD128" 12000000 "5.8M" \
	"bdevperf -m 0x1, raid1 over 2 null bdevs, -q 128 -o 4096 -w randread" \
	--bdev nexus:null --rw randread --bs 4k --qd 128
row "2-way nexus over null, randwrite QD128" 8700000 "4.3M" \
	"bdevperf -m 0x1, raid1 over 2 null bdevs, -q 128 -o 4096 -w randwrite" \
	--bdev nexus:null --rw randwrite --bs 4k --qd 128

# 2-way nexus on tmpfs against one tmpfs replica, same run: written files, O_DIRECT.
for f in single r0 r1; do
	dd if=/dev/zero of="$shm/$f" bs=1M count=1024 status=none
done
one=() two=()
for ((r = 0; r < rounds; r++)); do
	if ((r % 2 == 0)); then
		one+=("$(kb --bdev "aio:$shm/single" --rw randwrite --bs 4k --qd 32 | col 1)")
		two+=("$(kb --bdev "nexus:aio:$shm/r0,$shm/r1" --rw randwrite --bs 4k --qd 32 | col 1)")
	else
		two+=("$(kb --bdev "nexus:aio:$shm/r0,$shm/r1" --rw randwrite --bs 4k --qd 32 | col 1)")
		one+=("$(kb --bdev "aio:$shm/single" --rw randwrite --bs 4k --qd 32 | col 1)")
	fi
done
m1=$(printf '%s\n' "${one[@]}" | median)
m2=$(printf '%s\n' "${two[@]}" | median)
awk -v a="$m2" -v b="$m1" -v ra="${two[*]}" -v rb="${one[*]}" 'BEGIN {
	r = (b > 0) ? a / b : 0
	printf "%-36s %.2fx (%.2fM vs %.2fM IOPS)  target >= 0.85x: %s  (runs: %s / %s)\n",
	       "2-way nexus on tmpfs / one replica", r, a / 1e6, b / 1e6,
	       (r >= 0.85) ? "met" : "MISSED", ra, rb }'
echo "    keel: keel-bench bdev --bdev nexus:aio:R0,R1 against --bdev aio:FILE, 4k randwrite"
echo "          QD32, 1 GiB written files in /dev/shm, --cores 1 --mode poll, rounds alternating"
