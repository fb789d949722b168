#!/bin/bash
# Long power-cut campaign (outside CI): runs `powercut_ut campaign` (tests/unit/nexus/
# powercut_ut.c) for a bounded time, niced, and prints its figures for
# docs/reliability.md ("Power loss"). Exit 0 when every cut point held the promise,
# 1 on any failed point (its parameters are printed: replay one with
# `powercut_ut point SEED OPS AREA STEP MODE ONE_DISK REST_AFTER KEEP`), 2 on bad usage,
# 77 when the binary is not built.
set -euo pipefail

usage() {
	cat <<USAGE
usage: tests/crash/campaign.sh [--minutes N] [--seed-first N] [--seeds N] [--points N]
                               [--ops N] [--area BLOCKS] [--bin DIR]
  --minutes N     stop after N minutes (default 10)
  --seed-first N  first workload seed (default 1)
  --seeds N       seeds to run (default 1000: the time limit ends the run first)
  --points N      random cut points per seed (default 40)
  --ops N         user requests per workload (default 1500)
  --area BLOCKS   4 KiB blocks the workload writes (default 512, at most 1536)
  --bin DIR       where powercut_ut is (default build/bin/tests)
Each seed runs once uncut to count its steps, then is cut at random steps, with
the cut dropping a random subset, all, none or a prefix of each disk's cached writes;
every third point cuts one disk first and the others a few steps later (or at the
end), so the volume goes on without the first one for a while.
USAGE
}

minutes=10 seed_first=1 seeds=1000 points=40 ops=1500 area=512
bin="$(cd "$(dirname "$0")/../.." && pwd)/build/bin/tests"
while [ $# -gt 0 ]; do
	case "$1" in
	--minutes) minutes=$2 ;;
	--seed-first) seed_first=$2 ;;
	--seeds) seeds=$2 ;;
	--points) points=$2 ;;
	--ops) ops=$2 ;;
	--area) area=$2 ;;
	--bin) bin=$2 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
	shift 2 || { usage >&2; exit 2; }
done
for v in "$minutes" "$seed_first" "$seeds" "$points" "$ops" "$area"; do
	[[ "$v" =~ ^[0-9]+$ ]] || { echo "campaign.sh: '$v' is not a number" >&2; exit 2; }
done
if [ ! -x "$bin/powercut_ut" ]; then
	echo "SKIP: $bin/powercut_ut is not built (cmake -B build && make -C build powercut_ut)"
	exit 77
fi

log=$(mktemp /tmp/powercut-campaign.XXXXXX)
echo "campaign: $minutes min, seeds from $seed_first, $points points per seed, $ops ops, log $log"
rc=0
nice -n 10 "$bin/powercut_ut" campaign --seed-first "$seed_first" --seeds "$seeds" \
	--points "$points" --ops "$ops" --area "$area" --seconds $((minutes * 60)) >"$log" 2>&1 || rc=$?
grep -E '^powercut (campaign|: FAILED)' "$log" | grep -v 'seed .* done' || true
echo "seeds completed: $(grep -c 'powercut campaign: seed .* done' "$log" || true)"
if [ "$rc" -ne 0 ]; then
	echo "campaign: FAILED (exit $rc); full log in $log"
	exit 1
fi
echo "campaign: every cut point held"
