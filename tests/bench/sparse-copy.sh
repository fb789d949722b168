#!/usr/bin/env bash
# nbdcopy of a sparse export: keeld vs nbdkit on the same file (benchmark, not a test:
# it asserts nothing).
#
# A SIZE_MB file in /dev/shm with DATA_PCT percent of it written (1 MiB of random data at
# the start of every 100/DATA_PCT MiB), the rest holes. keeld serves it through an aio
# bdev, nbdkit through its file plugin; nbdcopy copies each export to null: once using
# block status (base:allocation: it reads only the data) and once with --no-extents (it
# reads every byte: the full copy). ROUNDS rounds of keeld, nbdkit, nbdkit, keeld (A B B
# A); medians. Prints the seconds, keeld's speed-up over nbdkit (nbdkit time / keeld
# time: >= 1 means keeld is faster) and the full copy's time over the sparse one.
#
# Environment: KEEL_BIN (default build/bin), SIZE_MB (default 4096), DATA_PCT (default
# 10), ROUNDS (default 3), KEEL_CPUS (keeld --cpus, default 0), NBDKIT_CPUS (taskset
# list for nbdkit, default KEEL_CPUS), KEEL_MODE (keelctl reactor mode, default adaptive,
# keeld's own default).
set -u
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"

SRC_DIR=$(cd "$(dirname "$0")/../.." && pwd)
KEEL_BIN=${KEEL_BIN:-$SRC_DIR/build/bin}
SIZE_MB=${SIZE_MB:-4096}
DATA_PCT=${DATA_PCT:-10}
ROUNDS=${ROUNDS:-3}
KEEL_CPUS=${KEEL_CPUS:-0}
NBDKIT_CPUS=${NBDKIT_CPUS-$KEEL_CPUS}
KEEL_MODE=${KEEL_MODE:-adaptive}

for tool in nbdcopy nbdkit nbdinfo; do
	command -v $tool >/dev/null || { echo "SKIP: $tool is needed"; exit 77; }
done
[ -x "$KEEL_BIN/keeld" ] || { echo "SKIP: no keeld in $KEEL_BIN"; exit 77; }

TMP=$(mktemp -d /tmp/keel-bench.XXXXXX)
IMG=/dev/shm/keel-sparse.$$.img
KEELD_PID=
NBDKIT_PID=
cleanup() {
	[ -n "$KEELD_PID" ] && kill -TERM "$KEELD_PID" 2>/dev/null && wait "$KEELD_PID" 2>/dev/null
	[ -n "$NBDKIT_PID" ] && kill -TERM "$NBDKIT_PID" 2>/dev/null && wait "$NBDKIT_PID" 2>/dev/null
	rm -rf "$TMP" "$IMG"
}
trap cleanup EXIT

truncate -s "${SIZE_MB}M" "$IMG"
STEP=$((100 / DATA_PCT))
/usr/bin/python3 - "$IMG" "$SIZE_MB" "$STEP" <<'EOF'
import os, sys
path, size_mb, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_WRONLY)
for mb in range(0, size_mb, step):
    os.pwrite(fd, os.urandom(1 << 20), mb << 20)
os.close(fd)
EOF
DATA_MB=$(du -m "$IMG" | cut -f1)

"$KEEL_BIN/keeld" --foreground --rpc-socket "$TMP/keeld.sock" --state-dir "$TMP/state" \
	--cpus "$KEEL_CPUS" --log-level warn >"$TMP/keeld.log" 2>&1 &
KEELD_PID=$!
KCTL() { "$KEEL_BIN/keelctl" -s "$TMP/keeld.sock" --timeout 5 "$@"; }
for _ in $(seq 1 100); do
	KCTL rpc keel_get_version >/dev/null 2>&1 && break
	sleep 0.1
done
KCTL bdev create aio sparse "$IMG" >/dev/null || { cat "$TMP/keeld.log"; exit 1; }
KCTL export start sparse --socket "$TMP/keel.nbd" >/dev/null || { cat "$TMP/keeld.log"; exit 1; }
KCTL reactor mode "$KEEL_MODE" >/dev/null || { echo "keelctl reactor mode $KEEL_MODE failed"; exit 1; }
if [ -n "$NBDKIT_CPUS" ]; then
	taskset -c "$NBDKIT_CPUS" nbdkit --exit-with-parent -f -U "$TMP/nbdkit.nbd" file "$IMG" &
else
	nbdkit --exit-with-parent -f -U "$TMP/nbdkit.nbd" file "$IMG" &
fi
NBDKIT_PID=$!
for _ in $(seq 1 100); do [ -S "$TMP/nbdkit.nbd" ] && break; sleep 0.1; done

KEEL_URI="nbd+unix:///sparse?socket=$TMP/keel.nbd"
KIT_URI="nbd+unix:///?socket=$TMP/nbdkit.nbd"

# copy_s URI [nbdcopy options]: seconds one copy to null: takes
copy_s() {
	local uri=$1 t0 t1
	shift
	t0=$(date +%s.%N)
	nbdcopy "$@" "$uri" null: || { echo 0; return; }
	t1=$(date +%s.%N)
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}

# row OPTIONS...: A B B A rounds; prints "keeld_median nbdkit_median"
row() {
	local k=() n=() a b c d
	for _ in $(seq 1 "$ROUNDS"); do
		a=$(copy_s "$KEEL_URI" "$@") b=$(copy_s "$KIT_URI" "$@")
		c=$(copy_s "$KIT_URI" "$@") d=$(copy_s "$KEEL_URI" "$@")
		k+=("$a" "$d") n+=("$b" "$c")
	done
	echo "$(printf '%s\n' "${k[@]}" | median) $(printf '%s\n' "${n[@]}" | median)"
}

echo "nbdcopy to null: of a ${SIZE_MB} MiB export with ${DATA_PCT}% written (${DATA_MB} MiB"
echo "  allocated) in /dev/shm; keeld aio bdev --cpus $KEEL_CPUS, $KEEL_MODE mode, vs nbdkit file plugin"
echo "  (cpus ${NBDKIT_CPUS:-any}); A B B A x $ROUNDS, medians; load at start: $(loadavg)"
for u in "$KEEL_URI" "$KIT_URI"; do
	nbdinfo --can structured-reply "$u" 2>/dev/null && s=yes || s=no
	echo "  $u: structured replies $s, $(nbdinfo --map --totals "$u" | tr -s ' ' | paste -sd ';')"
done
read -r k_sparse n_sparse <<<"$(row)"
read -r k_full n_full <<<"$(row --no-extents)"
printf "%-34s %10s %10s %8s\n" "copy" "keeld s" "nbdkit s" "speed-up"
printf "%-34s %10s %10s %8s\n" "sparse (block status)" "$k_sparse" "$n_sparse" \
	"$(awk -v k="$k_sparse" -v n="$n_sparse" 'BEGIN { printf "%.2f", (k > 0 ? n / k : 0) }')"
printf "%-34s %10s %10s %8s\n" "full (--no-extents)" "$k_full" "$n_full" \
	"$(awk -v k="$k_full" -v n="$n_full" 'BEGIN { printf "%.2f", (k > 0 ? n / k : 0) }')"
echo "full/sparse: keeld $(awk -v f="$k_full" -v s="$k_sparse" 'BEGIN { printf "%.1fx", (s > 0 ? f / s : 0) }')," \
	"nbdkit $(awk -v f="$n_full" -v s="$n_sparse" 'BEGIN { printf "%.1fx", (s > 0 ? f / s : 0) }')"
kill -0 "$KEELD_PID" 2>/dev/null || { echo "keeld died:"; tail -20 "$TMP/keeld.log"; exit 1; }
echo "load average at the end: $(loadavg)"
