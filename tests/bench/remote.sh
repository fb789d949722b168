#!/usr/bin/env bash
# Remote replica benchmark (not a test): what a replica on another host costs the
# writes of a volume. Two volumes in one run, each of two replicas, exported over a
# unix socket and driven by fio's nbd engine:
#   local+local   both replicas are files in /dev/shm, aio bdevs of keeld A;
#   local+remote  one file of keeld A, one export of keeld B (an aio bdev over a file in
#                 /dev/shm) reached by A's NBD client bdev over a unix socket (TCP over
#                 loopback with TCP=1).
# Rows: 4k randwrite QD32 and 128k write QD8, ratio remote/local per row. Both keelds
# and fio share the machine's cores, so the ratio, not the absolute figures, is the
# result. Targets (issue 15): >= 0.7x at 4k, >= 0.8x at 128k.
#
#   tests/bench/remote.sh [BUILD_BIN_DIR]     (default: build/bin)
#   env: SECS (6 per row), SIZE_MB (256), TCP (0), KEEL_CPUS_A (0), KEEL_CPUS_B (1)
set -u
SRC=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${1:-${KEEL_BIN:-$SRC/build/bin}}
SECS=${SECS:-6}
SIZE_MB=${SIZE_MB:-256}
TCP=${TCP:-0}
[ -x "$BIN/keeld" ] && [ -x "$BIN/keelctl" ] || { echo "no keeld/keelctl in $BIN"; exit 77; }
for tool in fio jq; do
	command -v $tool >/dev/null || { echo "$tool is needed"; exit 77; }
done
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "fio lacks the nbd engine"; exit 77; }

T=$(mktemp -d /dev/shm/keel-remote-bench.XXXXXX) || exit 1
S=$(mktemp -d /tmp/keel-rm.XXXXXX) || exit 1
PA= PB=
cleanup() {
	[ -n "$PA" ] && kill -TERM "$PA" 2>/dev/null && wait "$PA" 2>/dev/null
	[ -n "$PB" ] && kill -TERM "$PB" 2>/dev/null && wait "$PB" 2>/dev/null
	rm -rf "$T" "$S"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

KA() { "$BIN/keelctl" -s "$S/a.sock" "$@"; }
KB() { "$BIN/keelctl" -s "$S/b.sock" "$@"; }
die() { echo "remote.sh: $*" >&2; tail -n 20 "$S"/*.log >&2; exit 1; }
wait_sock() {
	for _ in $(seq 1 300); do "$BIN/keelctl" -s "$1" rpc keel_get_version >/dev/null 2>&1 && return 0; sleep 0.1; done
	die "keeld at $1 did not start"
}

"$BIN/keeld" --foreground --rpc-socket "$S/a.sock" --state-dir "$S/sa" --cpus "${KEEL_CPUS_A:-0}" >"$S/a.log" 2>&1 &
PA=$!
"$BIN/keeld" --foreground --rpc-socket "$S/b.sock" --state-dir "$S/sb" --cpus "${KEEL_CPUS_B:-1}" >"$S/b.log" 2>&1 &
PB=$!
wait_sock "$S/a.sock"
wait_sock "$S/b.sock"

MB=$((SIZE_MB + 1))
truncate -s ${MB}M "$T/rb.img" || die "truncate"
KB bdev create aio rb "$T/rb.img" >/dev/null || die "bdev on B"
if [ "$TCP" = 1 ]; then
	KB export start rb --socket "$S/rb.nbd" --tcp 127.0.0.1:10899 >/dev/null || die "export on B"
	RURI="nbd://127.0.0.1:10899/rb"
else
	KB export start rb --socket "$S/rb.nbd" >/dev/null || die "export on B"
	RURI="nbd+unix:///rb?socket=$S/rb.nbd"
fi
KA volume create ll --size ${SIZE_MB}M --replica "$T/l1.img" --replica "$T/l2.img" >/dev/null || die "volume ll"
KA volume create lr --size ${SIZE_MB}M --replica "$T/r1.img" --replica "$RURI" >/dev/null || die "volume lr"
KA export start ll --socket "$S/ll.nbd" >/dev/null || die "export ll"
KA export start lr --socket "$S/lr.nbd" >/dev/null || die "export lr"

# run VOL BS QD RW: IOPS and MB/s of one fio row
run() {
	local out=$S/fio-$1-$2-$3.json
	fio --name=r --ioengine=nbd --uri="nbd+unix:///$1?socket=$S/$1.nbd" --rw="$4" --bs="$2" \
		--iodepth="$3" --size=${SIZE_MB}M --time_based --runtime="$SECS" --ramp_time=1 \
		--output-format=json --output="$out" >/dev/null 2>&1 || die "fio $1 $2 $3"
	jq -r '.jobs[0].write | "\(.iops|floor) \((.bw_bytes/1000000)|floor)"' "$out"
}

echo "remote replica benchmark: $(nproc) CPUs, ${SECS}s per row, ${SIZE_MB} MiB, files in /dev/shm," \
	"remote over $([ "$TCP" = 1 ] && echo "TCP loopback" || echo "a unix socket")"
printf '%-22s %18s %18s %7s\n' "row" "local+local" "local+remote" "ratio"
for row in "4k 32 randwrite" "128k 8 write"; do
	set -- $row
	read -r li lb < <(run ll "$1" "$2" "$3")
	read -r ri rbw < <(run lr "$1" "$2" "$3")
	if [ "$1" = 4k ]; then
		printf '%-22s %12s IOPS %12s IOPS %6.2fx\n' "$1 $3 QD$2" "$li" "$ri" \
			"$(echo "$ri $li" | awk '{printf "%.2f", $2 ? $1/$2 : 0}')"
	else
		printf '%-22s %13s MB/s %13s MB/s %6.2fx\n' "$1 $3 QD$2" "$lb" "$rbw" \
			"$(echo "$rbw $lb" | awk '{printf "%.2f", $2 ? $1/$2 : 0}')"
	fi
done
