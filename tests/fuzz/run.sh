#!/usr/bin/env bash
# Run the libFuzzer harnesses for a bounded time: tests/fuzz/run.sh [SECONDS] [TARGET...]
#
#   SECONDS  per target (default 30, libFuzzer -max_total_time)
#   TARGET   label bitmap state history nbd_disks netlink rpc nbd ublk_disks tls_psk
#            (default: all built)
#
# Builds build-fuzz (CC=clang, -DKEEL_FUZZ=ON) when needed, runs the targets
# KEEL_FUZZ_JOBS at a time (default 2), each on a working copy of its seed corpus
# (tests/fuzz/corpus/TARGET, never modified) and its dictionary (TARGET.dict) if any.
# Prints execs and coverage (cov/ft) per target. Exits 1 on any finding (crash, leak,
# UBSan report, timeout, out of memory: the input is kept in build-fuzz/findings/TARGET),
# 77 when clang cannot build fuzzers (says why), 0 otherwise.
# KEEL_FUZZ_RUNS=N also stops each target after N executions (long runs).
set -uo pipefail
cd "$(dirname "$0")/../.."
SRC=tests/fuzz
BUILD=${KEEL_FUZZ_BUILD:-build-fuzz}
JOBS=${KEEL_FUZZ_JOBS:-2}
ALL="label bitmap state history nbd_disks netlink rpc nbd ublk_disks tls_psk"

secs=30
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then
	secs=$1
	shift
fi

"$SRC/toolchain.sh" || exit $?

if [ ! -f "$BUILD/CMakeCache.txt" ]; then
	if ! CC=clang cmake -S . -B "$BUILD" -DKEEL_FUZZ=ON -DKEEL_WERROR=ON >"$BUILD.configure.log" 2>&1; then
		cat "$BUILD.configure.log"; echo "fuzz: configure failed" >&2; exit 1
	fi
fi
if ! cmake --build "$BUILD" --target keel_fuzzers -j"$JOBS" >"$BUILD.build.log" 2>&1; then
	grep -E "error|Error" "$BUILD.build.log" | head -n 40
	echo "fuzz: build failed (full log: $BUILD.build.log)" >&2
	exit 1
fi

targets="$*"
if [ -z "$targets" ]; then
	for t in $ALL; do
		[ -x "$BUILD/bin/fuzz/fuzz_$t" ] && targets="$targets $t"
	done
fi
for t in $targets; do
	if [ ! -x "$BUILD/bin/fuzz/fuzz_$t" ]; then
		echo "fuzz: no harness '$t' (have: $(ls "$BUILD/bin/fuzz" | sed 's/^fuzz_//' | tr '\n' ' '))" >&2
		exit 2
	fi
done

# run_one TARGET: fuzz it; its log is $BUILD/fuzz-TARGET.log, its exit code in .rc.
run_one() {
	local t=$1 work="$BUILD/corpus/$t" found="$BUILD/findings/$t" args=()
	mkdir -p "$work" "$found"
	cp -n "$SRC/corpus/$t"/* "$work"/ 2>/dev/null
	[ -f "$SRC/$t.dict" ] && args+=("-dict=$SRC/$t.dict")
	[ -n "${KEEL_FUZZ_RUNS:-}" ] && args+=("-runs=$KEEL_FUZZ_RUNS")
	# -timeout: one input taking 10 s is a hang; -rss_limit_mb: two run at once on
	# a small machine. Findings are written to $found, never into the tree.
	"$BUILD/bin/fuzz/fuzz_$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=1536 \
		-print_final_stats=1 -artifact_prefix="$found/" "${args[@]}" "$work" \
		>"$BUILD/fuzz-$t.log" 2>&1
	echo $? >"$BUILD/fuzz-$t.rc"
}

echo "fuzz: $secs s per target, $JOBS at a time:$targets"
running=0
for t in $targets; do
	if [ "$running" -ge "$JOBS" ]; then
		wait -n
		running=$((running - 1))
	fi
	run_one "$t" &
	running=$((running + 1))
done
wait

failed=0
printf "%-10s %12s %8s %8s  %s\n" target execs cov ft result
for t in $targets; do
	log="$BUILD/fuzz-$t.log"
	rc=$(cat "$BUILD/fuzz-$t.rc" 2>/dev/null || echo 1)
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
	cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1)
	result=ok
	if [ "$rc" -ne 0 ] || grep -qE '^==[0-9]+==ERROR|runtime error:|^SUMMARY: ' "$log"; then
		result="FINDING (exit $rc; see $log and $BUILD/findings/$t)"
		failed=1
	fi
	printf "%-10s %12s %8s %8s  %s\n" "$t" "${execs:-?}" "$(echo "$cov" | awk '{print $2}')" \
		"$(echo "$cov" | awk '{print $4}')" "$result"
done
if [ "$failed" -ne 0 ]; then
	for t in $targets; do
		log="$BUILD/fuzz-$t.log"
		if grep -qE '^==[0-9]+==ERROR|runtime error:|^SUMMARY: ' "$log" || [ "$(cat "$BUILD/fuzz-$t.rc")" -ne 0 ]; then
			echo "==== $t"; grep -E -A 15 '^==[0-9]+==ERROR|runtime error:' "$log" | head -n 30
		fi
	done
fi
exit "$failed"
