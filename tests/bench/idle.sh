#!/usr/bin/env bash
# Idle CPU of keeld as a user starts it (benchmark, not a test).
#
#   tests/bench/idle.sh [EXPORTS] [MODE] [SECONDS]
#     EXPORTS  NBD exports to create first, each over its own 64 MiB null bdev on its
#              own unix socket, no client connected (default 0: create nothing)
#     MODE     default (no --mode flag: what keeld does out of the box), adaptive,
#              poll or interrupt (default: default)
#     SECONDS  length of the measurement (default 10)
#   env: KEEL_BIN (default build/bin), SETTLE (seconds between setup and measuring,
#        default 2), KEEL_CPUS (keeld --cpus; default: none given, all online CPUs)
#
# keeld runs in the foreground with a temporary socket and state directory and its
# defaults otherwise. The figure is utime + stime of the whole process from
# /proc/PID/stat over SECONDS, as % of one core; the busiest threads follow. Target:
# < 1% of one core (design.md: "an idle daemon costs well under 1% of a core").
# Exits 0 unless keeld or a tool fails; 77 when keeld is not built.
set -u
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"

SRC=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${KEEL_BIN:-$SRC/build/bin}
EXPORTS=${1:-0}
MODE=${2:-default}
SECS=${3:-10}
SETTLE=${SETTLE:-2}

usage() { echo "usage: $0 [EXPORTS] [default|adaptive|poll|interrupt] [SECONDS]" >&2; exit 2; }
case $EXPORTS in '' | *[!0-9]*) usage ;; esac
case $SECS in '' | *[!0-9]* | 0) usage ;; esac
case $MODE in default | adaptive | poll | interrupt) ;; *) usage ;; esac
[ -x "$BIN/keeld" ] && [ -x "$BIN/keelctl" ] || { echo "idle.sh: no keeld/keelctl in $BIN" >&2; exit 77; }

T=$(mktemp -d /tmp/keel-idle.XXXXXX) || exit 1
KPID=
cleanup() {
	[ -n "$KPID" ] && kill -TERM "$KPID" 2>/dev/null && wait "$KPID" 2>/dev/null
	rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
die() { echo "idle.sh: $*" >&2; tail -n 20 "$T/keeld.log" >&2; exit 1; }
K() { "$BIN/keelctl" -s "$T/k.sock" --timeout 10 "$@"; }

args=(--foreground --rpc-socket "$T/k.sock" --state-dir "$T/state")
[ "$MODE" != default ] && args+=(--mode "$MODE")
[ -n "${KEEL_CPUS:-}" ] && args+=(--cpus "$KEEL_CPUS")
"$BIN/keeld" "${args[@]}" >"$T/keeld.log" 2>&1 &
KPID=$!
for _ in $(seq 1 100); do K rpc keel_get_version >/dev/null 2>&1 && break; sleep 0.1; done
K rpc keel_get_version >/dev/null 2>&1 || die "keeld did not answer"

for ((i = 0; i < EXPORTS; i++)); do
	K bdev create null "idle$i" 64M >/dev/null || die "bdev create null idle$i"
	K export start "idle$i" --socket "$T/e$i.sock" >/dev/null || die "export start idle$i"
done
reactors=$(K --json rpc framework_get_reactors 2>/dev/null | jq -r '.reactors | length' 2>/dev/null)
sleep "$SETTLE"

hz=$(getconf CLK_TCK)
# utime + stime (fields 14 and 15; the name in field 2 may hold spaces: cut after ')').
ticks() { sed 's/.*) //' "$1" | awk '{ print $12 + $13 }'; }
declare -A t0=()
for f in /proc/"$KPID"/task/*/stat; do t0[$f]=$(ticks "$f"); done
p0=$(ticks /proc/$KPID/stat)
w0=$(date +%s%N)
sleep "$SECS"
p1=$(ticks /proc/$KPID/stat) || die "keeld exited during the measurement"
w1=$(date +%s%N)
declare -A t1=()
for f in "${!t0[@]}"; do t1[$f]=$(ticks "$f" 2>/dev/null); done
kill -0 "$KPID" 2>/dev/null || die "keeld exited during the measurement"

pct=$(awk -v d=$((p1 - p0)) -v hz="$hz" -v ns=$((w1 - w0)) 'BEGIN { printf "%.2f", d / hz / (ns / 1e9) * 100 }')
verdict=$(awk -v p="$pct" 'BEGIN { print (p < 1.0) ? "met" : "MISSED" }')
echo "keeld idle: ${pct}% of one core over $(awk -v ns=$((w1 - w0)) 'BEGIN { printf "%.1f", ns / 1e9 }') s" \
	"(target < 1%: $verdict)"
echo "  keeld ran with: mode ${MODE}$([ "$MODE" = default ] && echo ' (keeld --help: adaptive)')," \
	"cpus ${KEEL_CPUS:-all online} (${reactors:-?} reactors), $EXPORTS exports" \
	"(null bdev 64 MiB each, unix socket, no client), settled ${SETTLE} s;" \
	"utime+stime of the process from /proc/$KPID/stat, tick $((1000 / hz)) ms"
echo "  load average: $(loadavg)"
echo "  busiest threads (% of one core):"
for f in "${!t1[@]}"; do
	[ -n "${t1[$f]}" ] || continue # the thread exited
	name=$(sed 's/^[0-9]* (\(.*\)) .*/\1/' "$f")
	awk -v d=$((t1[$f] - t0[$f])) -v hz="$hz" -v ns=$((w1 - w0)) -v n="$name" \
		'BEGIN { printf "%8.2f  %s\n", d / hz / (ns / 1e9) * 100, n }'
done | sort -rn | head -n 5
