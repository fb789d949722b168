#!/usr/bin/env bash
# Install what is missing, build keel with warnings as errors, run the whole test
# suite through ctest, then the sanitizer passes: ASan+UBSan over every unit test and
# every e2e test (keeld, keelctl built with ASan: a report or a leak fails the test),
# TSan over the reactor, bdev, nbd and rpc tests, then the fuzz pass: every libFuzzer
# harness of tests/fuzz/ for 30 s (a crash, leak or UBSan report fails the suite; no
# clang with libFuzzer: skipped, and the summary says why). The VM tests run in the
# main pass only. Exits non-zero on any failure.
# Idempotent: re-running reuses the build directories.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

keel_install_packages $KEEL_BUILD_PACKAGES $KEEL_TEST_PACKAGES || exit 1
# The VM test needs these; if they cannot be installed it skips (exit 77) and says why.
keel_install_packages $KEEL_VM_PACKAGES || echo "keel: VM packages unavailable; the kernel NBD test will be skipped"
# Without them tests/fuzz/toolchain.sh makes the fuzz pass skip (77) and say why.
keel_install_packages $KEEL_FUZZ_PACKAGES || echo "keel: fuzz packages unavailable; the fuzz pass will be skipped"

JOBS=$(nproc)
failed=0
summary=""

# run_pass NAME BUILD_DIR CMAKE_ARGS CTEST_ARGS
run_pass() {
	local name=$1 dir=$2 cmake_args=$3 ctest_args=$4 log
	echo "==== $name: configure and build ($dir)"
	if ! cmake -S . -B "$dir" -DKEEL_WERROR=ON $cmake_args >"$dir.configure.log" 2>&1; then
		cat "$dir.configure.log"; echo "keel: $name: configure failed"; failed=1; return
	fi
	if ! cmake --build "$dir" -j"$JOBS" >"$dir.build.log" 2>&1; then
		grep -E "error|Error" "$dir.build.log" | head -n 40; echo "keel: $name: build failed (full log: $dir.build.log)"
		failed=1; return
	fi
	echo "==== $name: tests"
	log="$dir.ctest.log"
	ctest --test-dir "$dir" --output-on-failure -j"$JOBS" $ctest_args 2>&1 | tee "$log"
	if [ "${PIPESTATUS[0]}" -ne 0 ]; then failed=1; fi
	summary="$summary$name: $(grep -E 'tests passed|tests failed' "$log" | tail -n 1)"$'\n'
}

mkdir -p build
run_pass "main" build "" "--timeout 600"
run_pass "asan+ubsan" build-asan "-DKEEL_SANITIZE=address" "-L unit|e2e"
run_pass "tsan" build-tsan "-DKEEL_SANITIZE=thread" "-L reactor|bdev|nbd|rpc"

# fuzz_pass: each harness for 30 s (tests/fuzz/run.sh); a finding fails the suite.
fuzz_pass() {
	local rc log=build-fuzz.run.log
	echo "==== fuzz: libFuzzer harnesses, 30 s each (tests/fuzz/run.sh)"
	tests/fuzz/run.sh 30 2>&1 | tee "$log"
	rc=${PIPESTATUS[0]}
	case $rc in
	0) summary="${summary}fuzz: $(grep -cE ' ok$' "$log") targets, no findings"$'\n' ;;
	77) summary="${summary}fuzz: skipped (77): $(grep -E '^fuzz: ' "$log" | tail -n 1 | sed 's/^fuzz: //')"$'\n' ;;
	*) failed=1
	   summary="${summary}fuzz: FAILED: $(grep -cE 'FINDING' "$log") targets with findings (exit $rc; $log)"$'\n' ;;
	esac
}
fuzz_pass

echo "==== summary"
printf "%s" "$summary"
passed=$(cat build.ctest.log build-asan.ctest.log build-tsan.ctest.log 2>/dev/null | grep -cE 'Test +#[0-9]+: .* Passed')
nfail=$(cat build.ctest.log build-asan.ctest.log build-tsan.ctest.log 2>/dev/null | grep -E 'Test +#[0-9]+: ' | grep -vcE ' Passed|Skipped')
skipped=$(cat build.ctest.log build-asan.ctest.log build-tsan.ctest.log 2>/dev/null | grep -cE 'Test +#[0-9]+: .*Skipped')
[ "$failed" -ne 0 ] && [ "$nfail" -eq 0 ] && nfail=1
echo "$passed passed, $nfail failed, $skipped skipped"
exit "$failed"
