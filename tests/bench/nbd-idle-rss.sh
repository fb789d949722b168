#!/usr/bin/env bash
# Memory that idle NBD clients cost keeld, against nbdkit in the same run (benchmark,
# not a test).
#
#   tests/bench/nbd-idle-rss.sh [CLIENTS]
#     CLIENTS  connections to open (default 8)
#   env: KEEL_BIN (default build/bin)
#
# Each server exports a 1 GiB null device on a unix socket: keeld as a user starts it
# (defaults, a null bdev) and nbdkit's null plugin. Every client is a qemu-io that
# first reads 32 MiB and then once in each buffer size class from 4 KiB to 1 MiB, and
# then stays connected, doing nothing (qemu-io runs its commands one at a time when
# they come from a pipe, so the clients cannot hold several large reads in flight). The
# figure is the server's VmRSS with all clients idle, minus its VmRSS before the first
# client connected. Why this workload: before the per-thread buffer cache each idle
# connection kept up to 36 MiB of cached buffers (8 clients: ~217 MB). Target (issue
# 10): keeld's growth bounded per thread, not per client, and within 2x of nbdkit's.
# Exits 0 unless a server or a tool fails; 77 when keeld, qemu-io or nbdkit is missing.
set -u
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"

SRC=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${KEEL_BIN:-$SRC/build/bin}
CLIENTS=${1:-8}
case $CLIENTS in '' | *[!0-9]* | 0) echo "usage: $0 [CLIENTS]" >&2; exit 2 ;; esac
[ -x "$BIN/keeld" ] && [ -x "$BIN/keelctl" ] || { echo "nbd-idle-rss.sh: no keeld/keelctl in $BIN" >&2; exit 77; }
for tool in qemu-io nbdkit jq; do
	command -v "$tool" >/dev/null || { echo "nbd-idle-rss.sh: $tool is not installed" >&2; exit 77; }
done

T=$(mktemp -d /tmp/keel-idle-rss.XXXXXX) || exit 1
SPID=
QIO_DIR=$T
stop_server() {
	[ -n "$SPID" ] && kill -TERM "$SPID" 2>/dev/null && wait "$SPID" 2>/dev/null
	SPID=
}
cleanup() { qio_close_all; stop_server; rm -rf "$T"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
die() { echo "nbd-idle-rss.sh: $*" >&2; exit 1; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# clients URI: open CLIENTS qemu-io sessions on URI and have each do the reads, one
# command at a time, waiting for each read to be reported.
clients() {
	local uri=$1 i n cmds=("read 0 32M")
	for kib in 4 8 16 32 64 128 256 512 1024; do cmds+=("read 512M ${kib}K"); done
	for ((i = 0; i < CLIENTS; i++)); do qio_open "$i" "$uri"; done
	for ((n = 0; n < ${#cmds[@]}; n++)); do
		for ((i = 0; i < CLIENTS; i++)); do qio_send "$i" "${cmds[$n]}"; done
		for ((i = 0; i < CLIENTS; i++)); do qio_wait_reads "$i" $((n + 1)); done
	done
}

# measure NAME: RSS before, RSS with CLIENTS idle clients; sets GROWTH_KIB.
measure() {
	local name=$1 uri=$2 before after
	before=$(rss_kib "$SPID") || die "$name exited"
	clients "$uri"
	sleep 1 # let the last replies' buffers go back to the caches before reading RSS
	after=$(rss_kib "$SPID") || die "$name exited"
	GROWTH_KIB=$((after - before))
	printf "%-8s RSS before %6d KiB, with %d idle clients %6d KiB: +%d KiB (%.1f MiB per client)\n" \
		"$name" "$before" "$CLIENTS" "$after" "$GROWTH_KIB" \
		"$(awk -v g="$GROWTH_KIB" -v n="$CLIENTS" 'BEGIN { print g / 1024 / n }')"
}

K() { "$BIN/keelctl" -s "$T/k.sock" --timeout 10 "$@"; }
"$BIN/keeld" --foreground --rpc-socket "$T/k.sock" --state-dir "$T/state" >"$T/keeld.log" 2>&1 &
SPID=$!
for _ in $(seq 1 100); do K rpc keel_get_version >/dev/null 2>&1 && break; sleep 0.1; done
K bdev create null n0 1G >/dev/null || die "keeld: bdev create null ($(tail -n 3 "$T/keeld.log"))"
K export start n0 --socket "$T/keel.sock" >/dev/null || die "keeld: export start"
measure keeld "nbd+unix:///n0?socket=$T/keel.sock"
keel_kib=$GROWTH_KIB
stats=$(K --json rpc nbd_get_stats) || die "keeld: nbd_get_stats"
echo "         nbd_get_stats: $(echo "$stats" | jq -c '{connections, buffer_bytes, cached_buffer_bytes}')"
qio_close_all
stop_server

nbdkit -f -U "$T/kit.sock" null 1G >"$T/nbdkit.log" 2>&1 &
SPID=$!
for _ in $(seq 1 100); do [ -S "$T/kit.sock" ] && break; sleep 0.1; done
[ -S "$T/kit.sock" ] || die "nbdkit did not start: $(cat "$T/nbdkit.log")"
measure nbdkit "nbd+unix:///?socket=$T/kit.sock"
kit_kib=$GROWTH_KIB
qio_close_all
stop_server

ratio=$(awk -v k="$keel_kib" -v n="$kit_kib" 'BEGIN { if (n <= 0) n = 1; printf "%.2f", k / n }')
verdict=$(awk -v r="$ratio" 'BEGIN { print (r <= 2.0) ? "met" : "MISSED" }')
echo "keeld/nbdkit RSS growth with $CLIENTS idle clients: ${ratio}x (target <= 2x: $verdict)"
echo "  load average: $(loadavg)"
