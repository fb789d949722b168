#!/usr/bin/env bash
# Install what is missing, build keel with warnings as errors, run the whole test
# suite through ctest, then the sanitizer passes: ASan+UBSan over every unit test and
# every e2e test (keeld, keelctl built with ASan: a report or a leak fails the test),
# TSan over the reactor, bdev, nbd and rpc tests. The VM tests run in the main pass
# only. Exits non-zero on any failure.
# Idempotent: re-running reuses the build directories.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

keel_install_packages $KEEL_BUILD_PACKAGES $KEEL_TEST_PACKAGES || exit 1
# The VM test needs these; if they cannot be installed it skips (exit 77) and says why.
keel_install_packages $KEEL_VM_PACKAGES || echo "keel: VM packages unavailable; the kernel NBD test will be skipped"

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

echo "==== summary"
printf "%s" "$summary"
passed=$(cat build.ctest.log build-asan.ctest.log build-tsan.ctest.log 2>/dev/null | grep -cE 'Test +#[0-9]+: .* Passed')
nfail=$(cat build.ctest.log build-asan.ctest.log build-tsan.ctest.log 2>/dev/null | grep -E 'Test +#[0-9]+: ' | grep -vcE ' Passed|Skipped')
skipped=$(cat build.ctest.log build-asan.ctest.log build-tsan.ctest.log 2>/dev/null | grep -cE 'Test +#[0-9]+: .*Skipped')
[ "$failed" -ne 0 ] && [ "$nfail" -eq 0 ] && nfail=1
echo "$passed passed, $nfail failed, $skipped skipped"
exit "$failed"
