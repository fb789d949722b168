#!/usr/bin/env bash
# keeld vs nbdkit as NBD servers over a unix socket, side by side in one run.
#
# Same 1 GiB file in /dev/shm behind both servers (keeld: aio bdev, which falls back
# to buffered I/O on tmpfs; nbdkit: file plugin), fio's nbd engine as the client,
# one connection. Prints a table with keeld/nbdkit per row and ends with
# `min_ratio=X`. A benchmark, not a test: it asserts nothing.
#
# The machine is shared and noisy (the client and both servers compete for 2 CPUs,
# and other work may run): each row alternates keeld and nbdkit ROUNDS times and
# keeps each server's best run, so a burst of outside load does not decide a row.
#
# Environment: KEEL_BIN (default build/bin), RUNTIME (seconds per run, default 3),
# ROUNDS (runs per server and row, default 2),
# KEEL_CPUS (keeld --cpus, default 0), KEEL_MODE (adaptive|poll|interrupt, default
# adaptive), SIZE_MB (default 1024), CLIENT_CPUS (taskset list for fio, default none),
# NBDKIT_CPUS (taskset list for nbdkit, default none).
set -u

SRC_DIR=$(cd "$(dirname "$0")/../.." && pwd)
KEEL_BIN=${KEEL_BIN:-$SRC_DIR/build/bin}
RUNTIME=${RUNTIME:-3}
ROUNDS=${ROUNDS:-2}
KEEL_CPUS=${KEEL_CPUS:-0}
KEEL_MODE=${KEEL_MODE:-adaptive}
SIZE_MB=${SIZE_MB:-1024}
CLIENT_CPUS=${CLIENT_CPUS:-}
NBDKIT_CPUS=${NBDKIT_CPUS:-}
pin() { # pin CPULIST CMD...: run CMD on those CPUs when CPULIST is set
	local cpus=$1
	shift
	if [ -n "$cpus" ]; then taskset -c "$cpus" "$@"; else "$@"; fi
}

for tool in fio nbdkit python3; do
	command -v $tool >/dev/null || { echo "SKIP: $tool is needed"; exit 77; }
done
[ -x "$KEEL_BIN/keeld" ] || { echo "SKIP: no keeld in $KEEL_BIN"; exit 77; }

TMP=$(mktemp -d /tmp/keel-bench.XXXXXX)
IMG=/dev/shm/keel-bench.$$.img
KEELD_PID=
NBDKIT_PID=
cleanup() {
	[ -n "$KEELD_PID" ] && kill -TERM "$KEELD_PID" 2>/dev/null && wait "$KEELD_PID" 2>/dev/null
	[ -n "$NBDKIT_PID" ] && kill -TERM "$NBDKIT_PID" 2>/dev/null && wait "$NBDKIT_PID" 2>/dev/null
	rm -rf "$TMP" "$IMG"
}
trap cleanup EXIT

# Written data, not a sparse file: both servers then read real pages.
dd if=/dev/urandom of="$IMG" bs=1M count="$SIZE_MB" status=none

"$KEEL_BIN/keeld" --foreground --rpc-socket "$TMP/keeld.sock" --state-dir "$TMP/state" \
	--cpus "$KEEL_CPUS" --mode "$KEEL_MODE" --log-level warn >"$TMP/keeld.log" 2>&1 &
KEELD_PID=$!
for _ in $(seq 1 100); do
	"$KEEL_BIN/keelctl" -s "$TMP/keeld.sock" --timeout 2 rpc keel_get_version >/dev/null 2>&1 && break
	sleep 0.1
done
KCTL() { "$KEEL_BIN/keelctl" -s "$TMP/keeld.sock" "$@"; }
KCTL bdev create aio bench "$IMG" >/dev/null || { cat "$TMP/keeld.log"; exit 1; }
KCTL export start bench --socket "$TMP/keel.nbd" >/dev/null || { cat "$TMP/keeld.log"; exit 1; }

pin "$NBDKIT_CPUS" nbdkit --exit-with-parent -f -U "$TMP/nbdkit.nbd" file "$IMG" &
NBDKIT_PID=$!
for _ in $(seq 1 100); do [ -S "$TMP/nbdkit.nbd" ] && break; sleep 0.1; done

# run_fio URI RW BS QD -> prints "iops bw_bytes p50_us"
run_fio() {
	local uri=$1 rw=$2 bs=$3 qd=$4 out=$TMP/fio.json

	pin "$CLIENT_CPUS" fio --name=b --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" --iodepth="$qd" \
		--size="${SIZE_MB}M" --runtime="$RUNTIME" --time_based --ramp_time=1 \
		--output-format=json --output="$out" >/dev/null 2>&1 || { echo "0 0 0"; return; }
	python3 - "$out" "$rw" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
d = j["read"] if "read" in sys.argv[2] else j["write"]
p50 = d.get("clat_ns", {}).get("percentile", {}).get("50.000000", 0) / 1000.0
print("%.0f %.0f %.1f" % (d["iops"], d["bw_bytes"], p50))
PY
}

KEEL_URI="nbd+unix:///bench?socket=$TMP/keel.nbd"
KIT_URI="nbd+unix:///?socket=$TMP/nbdkit.nbd"

printf "%-22s %14s %14s %8s\n" "workload" "keeld" "nbdkit" "ratio"
min_ratio=
for row in "randread 4k 32" "randwrite 4k 32" "randread 4k 1" "read 128k 8" "write 128k 8"; do
	set -- $row
	k_iops=0; n_iops=0
	for _ in $(seq 1 "$ROUNDS"); do
		read -r i b p <<<"$(run_fio "$KEEL_URI" "$1" "$2" "$3")"
		if [ "${i%.*}" -gt "${k_iops%.*}" ]; then k_iops=$i; k_bw=$b; k_p50=$p; fi
		read -r i b p <<<"$(run_fio "$KIT_URI" "$1" "$2" "$3")"
		if [ "${i%.*}" -gt "${n_iops%.*}" ]; then n_iops=$i; n_bw=$b; n_p50=$p; fi
	done
	if [ "$2" = 128k ]; then
		kv=$(python3 -c "print('%.2f GB/s' % ($k_bw/1e9))")
		nv=$(python3 -c "print('%.2f GB/s' % ($n_bw/1e9))")
	elif [ "$3" = 1 ]; then
		kv=$(python3 -c "print('%.1fk (%.0fus)' % ($k_iops/1e3, $k_p50))")
		nv=$(python3 -c "print('%.1fk (%.0fus)' % ($n_iops/1e3, $n_p50))")
	else
		kv=$(python3 -c "print('%.0fk IOPS' % ($k_iops/1e3))")
		nv=$(python3 -c "print('%.0fk IOPS' % ($n_iops/1e3))")
	fi
	ratio=$(python3 -c "print('%.2f' % ($k_iops / $n_iops if $n_iops else 0))")
	printf "%-22s %14s %14s %8s\n" "$1 $2 QD$3" "$kv" "$nv" "$ratio"
	min_ratio=$(python3 -c "a='$min_ratio'; print(min(float(a), $ratio) if a else $ratio)")
done
kill -0 "$KEELD_PID" 2>/dev/null || { echo "keeld died:"; tail -20 "$TMP/keeld.log"; exit 1; }
echo "keeld: --cpus $KEEL_CPUS --mode $KEEL_MODE; fio cpus ${CLIENT_CPUS:-any}, nbdkit cpus ${NBDKIT_CPUS:-any}; best of $ROUNDS runs of ${RUNTIME}s per server and row, one connection each"
echo "min_ratio=$min_ratio"
