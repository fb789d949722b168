#!/usr/bin/env bash
# Can this machine build the libFuzzer harnesses? clang must compile and link a
# program with -fsanitize=fuzzer,address,undefined (Debian: clang, libfuzzer-14-dev,
# libclang-rt-14-dev; scripts/deps.sh KEEL_FUZZ_PACKAGES).
# Exit 0 when it can; 77 (the suite's "skipped") with the reason on stderr when not.
set -u
CC=${CC:-clang}
if ! command -v "$CC" >/dev/null 2>&1; then
	echo "fuzz: $CC not found (install: ${KEEL_FUZZ_HINT:-clang libfuzzer-14-dev libclang-rt-14-dev})" >&2
	exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/t.c" <<'C'
#include <stddef.h>
#include <stdint.h>
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	return size > 0 && data[0] == 1 ? 0 : 0;
}
C
if ! "$CC" -fsanitize=fuzzer,address,undefined -o "$tmp/t" "$tmp/t.c" >"$tmp/log" 2>&1; then
	echo "fuzz: $CC cannot link -fsanitize=fuzzer,address,undefined (install: ${KEEL_FUZZ_HINT:-clang libfuzzer-14-dev libclang-rt-14-dev}):" >&2
	head -n 5 "$tmp/log" >&2
	exit 77
fi
exit 0
