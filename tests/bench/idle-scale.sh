#!/usr/bin/env bash
# Idle cost of keeld as it scales (benchmark, not a test; issue 11's Benchmark).
#
#   tests/bench/idle-scale.sh [COUNTS] [SECONDS]
#     COUNTS   volumes to measure with, space separated (default "0 16 1000"); each is a
#              volume of 64 MiB with 2 replicas on sparse files, exported on its own unix
#              socket, no client connected
#     SECONDS  length of each CPU measurement (default 10)
#   env: KEEL_BIN (default build/bin), KEEL_CPUS (keeld --cpus, default 0-1), MODES
#        (default "default interrupt poll"; "default" is keeld's own, adaptive), SETTLE
#        (seconds between a change and a measurement, default 2), DIR (where the replica
#        files go, default a temp dir under /var/tmp), NBDKIT (0 skips nbdkit),
#        CLIENT_VOLUMES (up to this many volumes also get the "+client" row, default 64)
#
# For each count: the time to create the volumes and their exports (four keelctl at a
# time, as tests/e2e/test_many_volumes.sh does), a check that every export answers
# nbdinfo, then per mode (switched at run time with framework_set_reactor_mode) the
# idle CPU of the whole process (utime+stime from /proc over SECONDS, % of one core)
# and the wake-ups per second of each reactor (keelctl reactor stats over 2 s); the
# RSS and the RSS per volume against the same keeld with none; then a restart (SIGTERM,
# start again on the same state dir) timed until every export is listed again, and
# checked with nbdinfo. Up to CLIENT_VOLUMES volumes, a "+client" row: one qemu-io per
# export that reads 4 KiB and then stays connected, idle; its KiB/vol is the cost of
# an exported volume including its idle client (issue 11: < 256 KiB). With 16 volumes, nbdkit runs side by side the way users run it:
# one process per export (file plugin) on the same 16 replica files, idle, no client.
# Exits 0 unless a tool fails; 77 when keeld is not built.
set -u
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"

SRC=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${KEEL_BIN:-$SRC/build/bin}
COUNTS=${1:-0 16 1000}
SECS=${2:-10}
MODES=${MODES:-default interrupt poll}
SETTLE=${SETTLE:-2}
CPUS=${KEEL_CPUS:-0-1}

case $SECS in '' | *[!0-9]* | 0) echo "usage: $0 [COUNTS] [SECONDS]" >&2; exit 2 ;; esac
[ -x "$BIN/keeld" ] && [ -x "$BIN/keelctl" ] || { echo "idle-scale.sh: no keeld/keelctl in $BIN" >&2; exit 77; }
for tool in jq nbdinfo; do
	command -v $tool >/dev/null || { echo "idle-scale.sh: $tool is needed" >&2; exit 77; }
done

T=$(mktemp -d /tmp/keel-iscale.XXXXXX) || exit 1
QIO_DIR=$T
DIR=${DIR:-$(mktemp -d /var/tmp/keel-iscale.XXXXXX)} || exit 1
KPID=
KITPIDS=()
cleanup() {
	qio_close_all
	[ -n "$KPID" ] && kill -TERM "$KPID" 2>/dev/null && wait "$KPID" 2>/dev/null
	for p in "${KITPIDS[@]}"; do kill "$p" 2>/dev/null; done
	rm -rf "$T" "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
die() { echo "idle-scale.sh: $*" >&2; [ -f "$T/keeld.log" ] && tail -n 20 "$T/keeld.log" >&2; exit 1; }
K() { "$BIN/keelctl" -s "$T/k.sock" --timeout 60 "$@"; }
now() { date +%s.%N; }
secs_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
hz=$(getconf CLK_TCK)
# utime + stime of process $1 in ticks (the name in field 2 may hold spaces).
ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }

start_keeld() {
	"$BIN/keeld" --foreground --rpc-socket "$T/k.sock" --state-dir "$T/state" --cpus "$CPUS" \
		>>"$T/keeld.log" 2>&1 &
	KPID=$!
	for _ in $(seq 1 600); do K rpc keel_get_version >/dev/null 2>&1 && return 0; sleep 0.05; done
	die "keeld did not answer"
}
stop_keeld() { kill -TERM "$KPID"; wait "$KPID"; KPID=; }

# CPU of the pids given, % of one core over SECS: sum of utime+stime deltas.
cpu_pct() {
	local p t0=0 t1=0 w0 w1

	for p in "$@"; do t0=$((t0 + $(ticks "$p"))); done
	w0=$(date +%s%N)
	sleep "$SECS"
	w1=$(date +%s%N)
	for p in "$@"; do t1=$((t1 + $(ticks "$p"))); done
	awk -v d=$((t1 - t0)) -v hz="$hz" -v ns=$((w1 - w0)) 'BEGIN { printf "%.2f", d / hz / (ns / 1e9) * 100 }'
}

exports_listed() { K --json rpc nbd_get_exports | jq 'length'; }

# idle_clients N: one qemu-io per export that reads 4 KiB and stays connected; returns
# once every one has reported its read.
idle_clients() {
	local i
	for ((i = 0; i < $1; i++)); do
		qio_open "$i" "nbd+unix:///s$i?socket=$T/s$i.nbd"
		qio_send "$i" "read 0 4K"
	done
	for ((i = 0; i < $1; i++)); do qio_wait_reads "$i" 1; done
}
check_exports() {
	local n=$1 i out

	for ((i = 0; i < n; i++)); do
		out=$(nbdinfo --size "nbd+unix:///s$i?socket=$T/s$i.nbd" 2>&1) || die "nbdinfo s$i: $out"
	done
}

echo "idle-scale: keeld --cpus $CPUS, volumes of 64 MiB with 2 replicas on sparse files in $DIR"
echo "  (fs $(df -T "$DIR" | awk 'NR == 2 { print $2 }')), each exported on a unix socket, no client;" \
	"CPU over $SECS s, settle $SETTLE s"
echo "  load average at start: $(loadavg); fs.aio-nr $(cat /proc/sys/fs/aio-nr) of $(cat /proc/sys/fs/aio-max-nr)"
printf "%-7s %-9s %9s %9s %9s %12s %10s %9s %9s\n" volumes mode "cpu %" "wake/s r0" "wake/s r1" \
	"rss KiB" "KiB/vol" "create s" "restart s"
RSS0=
for N in $COUNTS; do
	rm -rf "$T/state" "$DIR"/*
	start_keeld
	t=$(now)
	for ((i = 0; i < N; i++)); do
		truncate -s 65M "$DIR/s$i.a" "$DIR/s$i.b" || die "truncate"
	done
	if [ "$N" -gt 0 ]; then
		seq 0 $((N - 1)) | xargs -P 4 -I{} "$BIN/keelctl" -s "$T/k.sock" --timeout 60 volume \
			create s{} --size 64M --replica "$DIR/s{}.a" --replica "$DIR/s{}.b" \
			>"$T/create.out" 2>&1 || die "volume create: $(grep -v '^created' "$T/create.out" | head -n 3)"
		seq 0 $((N - 1)) | xargs -P 4 -I{} "$BIN/keelctl" -s "$T/k.sock" --timeout 60 export \
			start s{} --socket "$T/s{}.nbd" >"$T/export.out" 2>&1 ||
			die "export start: $(head -n 3 "$T/export.out")"
	fi
	create=$(secs_since "$t")
	[ "$(exports_listed)" -eq "$N" ] || die "$(exports_listed) exports listed, expected $N"
	check_exports "$N"
	sleep "$SETTLE"
	rss=$(rss_kib "$KPID")
	[ "$N" -eq 0 ] && RSS0=$rss
	per=-
	[ "$N" -gt 0 ] && [ -n "$RSS0" ] && per=$(((rss - RSS0) / N))
	for mode in $MODES; do
		m=$mode
		[ "$m" = default ] && m=adaptive
		K rpc framework_set_reactor_mode "{\"mode\":\"$m\"}" >/dev/null || die "set mode $m"
		sleep "$SETTLE"
		pct=$(cpu_pct "$KPID")
		K --json reactor stats --interval 2000 >"$T/stats.json" || die "reactor stats"
		w0=$(jq -r '.reactors.reactors[0].wakeups_per_sec | . * 10 | round / 10' "$T/stats.json")
		w1=$(jq -r '.reactors.reactors[1].wakeups_per_sec // "-" | if type == "number" then
			(. * 10 | round / 10) else . end' "$T/stats.json")
		printf "%-7s %-9s %9s %9s %9s %12s %10s %9s %9s\n" "$N" "$mode" "$pct" "$w0" "$w1" \
			"$rss" "$per" "$create" "-"
		jq -r '.reactors.reactors[] | "          reactor \(.reactor) woken most since start by: " +
			([.wakers[] | "\(.name) \(.wakeups)"] | join(", "))' "$T/stats.json"
	done
	K rpc framework_set_reactor_mode '{"mode":"adaptive"}' >/dev/null || die "set mode back"
	if [ "$N" -gt 0 ] && [ "$N" -le "${CLIENT_VOLUMES:-64}" ] && [ -n "$RSS0" ] &&
		command -v qemu-io >/dev/null; then
		idle_clients "$N"
		sleep "$SETTLE"
		rss=$(rss_kib "$KPID")
		printf "%-7s %-9s %9s %9s %9s %12s %10s %9s %9s\n" "$N" "+client" - - - "$rss" \
			$(((rss - RSS0) / N)) - -
		qio_close_all
	fi
	stop_keeld
	t=$(now)
	start_keeld
	for _ in $(seq 1 1200); do
		[ "$(exports_listed)" -eq "$N" ] && break
		sleep 0.05
	done
	restart=$(secs_since "$t")
	[ "$(exports_listed)" -eq "$N" ] || die "after restart $(exports_listed) exports, expected $N"
	check_exports "$N"
	printf "%-7s %-9s %9s %9s %9s %12s %10s %9s %9s\n" "$N" restart - - - "$(rss_kib "$KPID")" - - "$restart"
	stop_keeld

	if [ "$N" -eq 16 ] && [ "${NBDKIT:-1}" != 0 ] && command -v nbdkit >/dev/null; then
		KITPIDS=()
		for ((i = 0; i < N; i++)); do
			nbdkit -f -U "$T/kit$i.nbd" file "$DIR/s$i.a" >>"$T/nbdkit.log" 2>&1 &
			KITPIDS+=($!)
		done
		for ((i = 0; i < N; i++)); do
			for _ in $(seq 1 200); do [ -S "$T/kit$i.nbd" ] && break; sleep 0.05; done
			nbdinfo --size "nbd+unix:///?socket=$T/kit$i.nbd" >/dev/null 2>&1 || die "nbdkit $i does not answer"
		done
		sleep "$SETTLE"
		kitrss=0
		for p in "${KITPIDS[@]}"; do kitrss=$((kitrss + $(rss_kib "$p"))); done
		kitpct=$(cpu_pct "${KITPIDS[@]}")
		printf "%-7s %-9s %9s %9s %9s %12s %10s %9s %9s\n" "$N" "nbdkit" "$kitpct" - - "$kitrss" \
			$((kitrss / N)) - -
		echo "          nbdkit $(nbdkit --version | head -n 1): $N processes, file plugin, one per export"
		for p in "${KITPIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
		KITPIDS=()
	fi
done
echo "  load average at end: $(loadavg)"
echo "  KiB/vol: (RSS with N volumes - RSS with none) / N, same run (+client: with one idle" \
	"qemu-io per export that read 4 KiB); cpu %: whole process," \
	"% of one core; wake/s: keelctl reactor stats over 2 s (its own requests included);" \
	"nbdkit row: sum over its processes"
