#!/bin/sh
# keel-bench bdev: bad command lines get a clear error and a non-zero exit (never a
# crash); runs whose requests fail exit non-zero; short valid runs exit 0 and print
# the JSON keys. $1 = path to keel-bench.
BENCH="$1"
[ -x "$BENCH" ] || { echo "keel-bench not built: skip"; exit 77; }
fail=0

# expect_err EXPECTED_TEXT ARGS...: exit 1 or 2 and EXPECTED_TEXT on stderr.
expect_err() {
	want="$1"; shift
	out=$("$BENCH" bdev "$@" 2>&1 >/dev/null); rc=$?
	if [ $rc -ne 1 ] && [ $rc -ne 2 ]; then
		echo "FAIL: bdev $*: exit $rc (want 1 or 2)"; fail=1
	elif ! printf '%s' "$out" | grep -q -- "$want"; then
		echo "FAIL: bdev $*: stderr lacks '$want': $out"; fail=1
	else
		echo "ok: bdev $* -> $rc"
	fi
}

expect_err "unknown bdev type" --bdev bogus --seconds 1
expect_err "bad --rw" --rw sideways
expect_err "bad --bs" --bs 3000
expect_err "bad --bs" --bs abc
expect_err "bad --bs" --bs 4x
expect_err "bad --qd" --qd 0
expect_err "bad --qd" --qd -5
expect_err "bad --cores" --cores 999
expect_err "bad --seconds" --seconds 1e9
expect_err "bad --mode" --mode turbo
expect_err "bad --bdev" --bdev :x
expect_err "aio needs a path" --bdev aio --seconds 1
expect_err "cannot create" --bdev aio:/nonexistent/keel-bench-file --seconds 1
expect_err "uring needs a path" --bdev uring --buffered --seconds 1
expect_err "cannot create" --bdev uring:/nonexistent/keel-bench-file --seconds 1
expect_err "bad malloc size" --bdev malloc:lots --seconds 1
expect_err "unexpected argument" --seconds 1 stray
expect_err "bad malloc size" --bdev malloc:4k --bs 8k --seconds 1
expect_err "bad error period" --bdev error:0 --seconds 1

# Failed I/O makes the run fail: every request failing, and one in 64 failing (the
# figures of such a run are not a measurement). The report is still printed, and
# stderr says how many requests failed.
expect_err "completed with an error" --bdev error --qd 4 --seconds 1
expect_err "completed with an error" --bdev error:64 --rw randwrite --qd 4 --seconds 1
out=$("$BENCH" bdev --bdev error --qd 4 --seconds 1 --json 2>/dev/null)
if ! printf '%s' "$out" | grep -q '"errors": [1-9]'; then
	echo "FAIL: bdev --bdev error: no failed requests counted in: $out"; fail=1
fi

for args in "--bdev null --qd 4" "--bdev malloc:64m --rw randwrite --qd 8" \
	    "--bdev malloc:64m --rw read --bs 64k --qd 2 --cores 2"; do
	# shellcheck disable=SC2086
	out=$("$BENCH" bdev $args --seconds 1 --json 2>/dev/null); rc=$?
	for key in iops mib_per_s lat_avg_us lat_p99_us cpu_pct; do
		if ! printf '%s' "$out" | grep -q "\"$key\""; then
			echo "FAIL: bdev $args: rc $rc, no $key in: $out"; fail=1
		fi
	done
	[ $rc -eq 0 ] || { echo "FAIL: bdev $args: exit $rc"; fail=1; }
	echo "ok: bdev $args: $out"
done
exit $fail
