#!/usr/bin/env bash
# Soak (a benchmark, not in CI): everything at once against one keeld for N minutes.
#
#   tests/bench/soak.sh [--minutes N] [--restart-every M] [--rss-growth-mib X]
#                       [--replica-dir DIR] [--save DIR]
#   env: KEEL_BIN (default build/bin; build-asan/bin soaks the sanitized build)
#
# What runs, all at the same time:
#   - fio (nbd engine, crc32c verify while writing and after, 4k-128k random writes,
#     QD8) on two 2-replica volumes v1 and v2, each over its own NBD unix socket, in
#     rounds: a round ends after one pass over 128 MiB or when keeld goes away; the
#     next one connects again once keeld is back;
#   - acknowledged writes (tests/e2e/nbd/acked_io.py) on the last 64 MiB of v1: a writer
#     runs until keeld is killed; after the restart every block must hold its last
#     acknowledged write (or one that was in flight at the kill);
#   - the hostile NBD client (tests/e2e/nbd/hostile_client.py), every scenario in turn
#     on v2's socket, one connection each;
#   - RPC churn: create, export, show, unexport and destroy a scratch volume; fault a
#     replica of v1 or v2 while fio writes, add it back (every third time remove it
#     and add a fresh file instead, a full rebuild), wait until it is healthy;
#   - kill -9 of keeld every M minutes (default 3; 0: only the one at the end), restart
#     with the same state dir: volumes and exports come back by themselves. The run
#     ends with one more kill -9 and restart, so every writer is checked, then a
#     SIGTERM that must stop keeld cleanly.
#
# Figures (stdout): fio verify errors, acknowledged writes lost, fio errors while
# keeld was up, hostile-client and RPC failures while keeld was up, keeld deaths not
# caused by the soak, replicas that differ at the end, clean stop, sanitizer reports:
# each must be 0 (yes for the clean stop). RSS: the maximum of keeld's VmRSS, and per
# keeld lifetime of at least 150 s, the growth after the first minute: the median
# RSS (sampled every 2 s) of its last minute minus the median of its second minute
# (60-120 s). keeld locks its memory (mlockall), so RSS moves with every large
# buffer that comes and goes: medians, not peaks, so that a 32 MiB read in flight
# at one sample is not growth. Flat means growth <= --rss-growth-mib (default
# 4 MiB: without a leak the medians moved -0.9..+2.7 MiB here; a leak of 2 MiB
# per replaced replica, fixed since, showed +3.5..+5.9 MiB per 3-minute lifetime
# and +32 MiB in one 10-minute lifetime: --restart-every 0 is the sharper test).
# Counts: fio I/Os and rounds, hostile connections, RPCs, rebuilds, restarts.
# Exit: 0 when every must-hold figure holds, 1 when one fails, 2 usage, 77 when a
# tool or keeld is missing.
set -u

usage() {
	sed -n '2,/^set -u/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
	exit "${1:-0}"
}

MINUTES=10
RESTART_MIN=3
RSS_GROWTH_MIB=4
REPLICA_DIR=
SAVE=
while [ $# -gt 0 ]; do
	case $1 in
	--minutes) MINUTES=${2:-}; shift 2 ;;
	--restart-every) RESTART_MIN=${2:-}; shift 2 ;;
	--rss-growth-mib) RSS_GROWTH_MIB=${2:-}; shift 2 ;;
	--replica-dir) REPLICA_DIR=${2:-}; shift 2 ;;
	--save) SAVE=${2:-}; shift 2 ;;
	-h | --help) usage 0 ;;
	*) echo "soak.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
	esac
done
for v in "$MINUTES" "$RESTART_MIN" "$RSS_GROWTH_MIB"; do
	case $v in '' | *[!0-9]*) echo "soak.sh: --minutes, --restart-every and --rss-growth-mib take whole numbers" >&2; exit 2 ;; esac
done
[ "$MINUTES" -ge 1 ] || { echo "soak.sh: --minutes must be at least 1" >&2; exit 2; }

# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"
# The e2e helpers: temp dir, keeld start/stop, keelctl, jget, wait_until, sanitizer
# report collection, cleanup trap. They name this run "soak".
# shellcheck source=SCRIPTDIR/../e2e/lib.sh
. "$(dirname "$0")/../e2e/lib.sh"

for tool in fio qemu-io cmp; do
	command -v $tool >/dev/null || skip "$tool is needed"
done
fio --enghelp 2>/dev/null | grep -qw nbd || skip "fio lacks the nbd engine"
NBDDIR=$(cd "$(dirname "$0")/../e2e/nbd" && pwd)
export KEEL_E2E_CPUS=${KEEL_E2E_CPUS:-0-1}

T=$E2E_TMP
D=${REPLICA_DIR:-$T/disks}
mkdir -p "$D" "$T/fio" "$T/hostile" "$T/acked" || fail "mkdir"
[ -z "$SAVE" ] || mkdir -p "$SAVE" || fail "mkdir $SAVE"
cd "$T" || fail "cd"   # fio leaves files in its working directory

VOL_MB=256
FIO_MB=128                           # fio's range: [0, 128M) of each volume
ACK_OFF=$(((VOL_MB - 64) << 20))     # acknowledged writes: the last 64 MiB of v1
ACK_LEN=$((64 << 20))
DATA_OFF=1048576                     # replica label area: differs per replica
HOSTILE_SCENARIOS="bad-option-magic unknown-options huge-option truncated-option bad-magic
	truncated-header unknown-command out-of-range oversized-length disconnect-mid-payload
	many-in-flight-then-vanish disc"

# Coordination between the main loop and the workers, through files:
#   up     exists while keeld serves (removed before every kill)
#   gen    how many times keeld was started; a worker whose step failed while up
#          existed and gen did not move counts a failure, else the kill cut it
#   stop   the workers finish their step and leave
echo 0 >"$T/gen"

now() { date +%s; }
ts() { date -u +%H:%M:%S; }
log() { echo "[$(ts)] $*"; }
K() { "$KEEL_BIN/keelctl" -s "$SOCK" --timeout 20 "$@"; }
# K_json ARGS...: keelctl --json ARGS, its output, "" on failure.
K_json() { K --json "$@" 2>/dev/null; }
uri() { echo "nbd+unix:///$1?socket=$T/$1.nbd"; }

# was_cut GEN: the step that just failed was cut by a kill of keeld (or the end).
was_cut() { [ ! -e "$T/up" ] || [ "$(cat "$T/gen")" != "$1" ] || [ -e "$T/stop" ]; }
# wait_up: until keeld serves; false when the soak is over.
wait_up() {
	while [ ! -e "$T/up" ]; do
		[ ! -e "$T/stop" ] || return 1
		sleep 0.2
	done
	[ ! -e "$T/stop" ]
}
# note FILE WHAT: a failure a worker saw while keeld was up, for the report.
note() { echo "[$(ts)] $2" >>"$T/$1"; }

# --- volume state helpers ----------------------------------------------------------------
replica_states() { # VOL: "path state" lines
	local out
	out=$(K_json volume show "$1") && jget "$out" '.replicas[] | .path + " " + .state'
}
all_healthy() { # VOL
	local out
	out=$(K_json volume show "$1") || return 1
	[ "$(jget "$out" '[.replicas[] | select(.state != "healthy")] | length')" = 0 ]
}
writes_of() { # VOL: writes the volume completed since keeld started (-1: unknown)
	local out
	out=$(K rpc bdev_get_iostat "{\"name\":\"$1\"}" 2>/dev/null) || { echo -1; return; }
	jget "$out" '.bdevs[0].io.write.ops // -1'
}
# heal VOL SECONDS: add back every faulted replica (keeld may already be doing so
# after a restart: a refused add is fine) until all are healthy; false on timeout or
# when the soak stops.
heal() {
	local end=$(($(now) + $2)) p s
	while ! all_healthy "$1"; do
		[ "$(now)" -lt "$end" ] && [ ! -e "$T/stop" ] || return 1
		while read -r p s; do
			[ "$s" = faulted ] && K replica add "$1" "$p" >/dev/null 2>&1
		done < <(replica_states "$1")
		sleep 0.2
	done
}

# --- workers -----------------------------------------------------------------------------
# What fio prints about a block that does not hold what it wrote.
VERIFY_RE='verify failed|bad magic header|bad header|verify type mismatch|verify: '
# fio_worker VOL: fio rounds until the soak stops; one JSON and one stderr file per round.
fio_worker() {
	local v=$1 n=0 g rc
	while wait_up; do
		g=$(cat "$T/gen")
		n=$((n + 1))
		fio --name="$v" --ioengine=nbd --uri="$(uri "$v")" --rw=randwrite \
			--bssplit=4k/60:16k/20:64k/15:128k/5 --iodepth=8 --size=${FIO_MB}M \
			--randrepeat=0 --verify=crc32c --verify_backlog=1024 --verify_state_save=0 \
			--output-format=json --output="$T/fio/$v.$n.json" \
			>/dev/null 2>"$T/fio/$v.$n.err" &
		echo $! >"$T/fio/$v.pid"
		wait $!
		rc=$?
		if [ $rc -ne 0 ] && grep -qE "$VERIFY_RE" "$T/fio/$v.$n.err"; then
			# a verify failure ends the round; counted from the .err files
			note fio.err "fio round $n on $v: $(grep -E "$VERIFY_RE" "$T/fio/$v.$n.err" | head -n 3)"
		elif [ $rc -ne 0 ] && was_cut "$g"; then
			echo "$n" >>"$T/fio/$v.cut"
		elif [ $rc -ne 0 ]; then
			echo "$n" >>"$T/fio/$v.failed"
			note fio.err "fio round $n on $v: exit $rc: $(grep -v '^fio: connected' "$T/fio/$v.$n.err" | head -n 3)"
			# a connection that cannot be made while up: do not spin
			sleep 1
		fi
	done
}

hostile_worker() {
	local n=0 g s
	while wait_up; do
		for s in $HOSTILE_SCENARIOS; do
			g=$(cat "$T/gen")
			n=$((n + 1))
			if "$PY" "$NBDDIR/hostile_client.py" "$T/v2.nbd" v2 "$s" >"$T/hostile/last.out" 2>&1; then
				:
			elif was_cut "$g"; then
				echo "$s" >>"$T/hostile/cut"
			else
				echo "$s" >>"$T/hostile/failed"
				note hostile.err "hostile $s: $(tail -n 2 "$T/hostile/last.out")"
			fi
			echo "$n" >"$T/hostile/count"
			wait_up || break
		done
	done
}

# Churn counters live in the worker; it rewrites this file after every step.
churn_counts() { echo "rpcs=$RPCS scratch=$SCRATCH faults=$FAULTS partial=$PARTIAL full=$FULL" >"$T/churn.count"; }

# C WHAT ARGS...: one churn RPC; a failure while keeld was up is recorded.
C() {
	local what=$1 g out
	shift
	g=$(cat "$T/gen")
	RPCS=$((RPCS + 1))
	if out=$(K "$@" 2>&1); then
		return 0
	fi
	if ! was_cut "$g"; then
		echo x >>"$T/churn.failed"
		note churn.err "$what: keelctl $*: $out"
	fi
	return 1
}

# churn_step N: one cycle; false when it was cut or failed (the caller waits for keeld).
churn_step() {
	local i=$1 v p w0 end g
	# a scratch volume, all the way through
	rm -f "$D/s.a" "$D/s.b"
	C "scratch create" volume create scratch --size 16M --replica "$D/s.a" --replica "$D/s.b" || return 1
	C "scratch export" export start scratch --socket "$T/scratch.nbd" || return 1
	C "scratch show" volume show scratch || return 1
	C "scratch unexport" export stop scratch || return 1
	C "scratch destroy" volume destroy scratch --wipe || return 1
	SCRATCH=$((SCRATCH + 1))
	churn_counts
	# a replica out and back while fio writes
	v=v$((1 + i % 2))
	g=$(cat "$T/gen")
	if ! heal "$v" 600; then
		was_cut "$g" && return 1
		note churn.err "$v did not become healthy within 600 s: $(replica_states "$v" | tr '\n' ' ')"
		echo x >>"$T/churn.failed"
		return 1
	fi
	p=$(replica_states "$v" | sed -n "$((1 + (i / 2) % 2))p" | cut -d' ' -f1)
	[ -n "$p" ] || return 1
	w0=$(writes_of "$v")
	C "fault $v" replica fault "$v" "$p" || return 1
	FAULTS=$((FAULTS + 1))
	# let fio's writes land while the replica is out: they are what the rebuild copies
	end=$(($(now) + 60))
	while [ "$(writes_of "$v")" -le $((w0 + 200)) ] && [ "$(now)" -lt "$end" ]; do
		[ -e "$T/up" ] && [ "$(cat "$T/gen")" = "$g" ] || return 1
		sleep 0.1
	done
	if [ $((i % 3)) -eq 2 ]; then
		C "remove $v" replica remove "$v" "$p" || return 1
		rm -f "$p"
		C "add fresh $v" replica add "$v" "$p" || return 1
		FULL=$((FULL + 1))
	else
		C "re-add $v" replica add "$v" "$p" || return 1
		PARTIAL=$((PARTIAL + 1))
	fi
	churn_counts
	if ! heal "$v" 600; then
		was_cut "$g" && return 1
		note churn.err "$v: rebuild of $p not done within 600 s: $(replica_states "$v" | tr '\n' ' ')"
		echo x >>"$T/churn.failed"
		return 1
	fi
	churn_counts
}

churn_worker() {
	local i=0
	RPCS=0 SCRATCH=0 FAULTS=0 PARTIAL=0 FULL=0
	while wait_up; do
		i=$((i + 1))
		churn_step $i
		churn_counts
	done
}

# --- keeld lifetimes, acknowledged writes ------------------------------------------------
INC=0          # keeld lifetimes started
INC_START=0
RESTARTS=0     # kill -9 done by the soak
CRASHES=0      # keeld exits the soak did not cause
ACK_PID=
ACK_LOST=0
ACK_CHECKS=0
ACK_ACKED=0
ACK_ERRORS=0

# Start keeld (lifetime INC), wait until v1 and v2 are exported again.
keeld_up() {
	start_keeld
	INC=$((INC + 1))
	INC_START=$(now)
	exported() {
		local out
		out=$(K_json export list) &&
			[ "$(jget "$out" '[.[] | select(.name == "v1" or .name == "v2")] | length')" = 2 ]
	}
	wait_until 120 "v1 and v2 exported after start $INC" exported
}

ack_start() {
	local n=$ACK_CHECKS
	# zeroes first: the writer's check expects zeroes where it acknowledged nothing
	qemu_io_ok "zero the acknowledged-writes range" "$(uri v1)" "write -z $ACK_OFF $ACK_LEN" >/dev/null
	"$PY" "$NBDDIR/acked_io.py" "$T/v1.nbd" v1 write $ACK_OFF $ACK_LEN "$T/acked/log.$n" \
		>"$T/acked/write.$n" 2>&1 &
	ACK_PID=$!
	E2E_EXTRA_PIDS="$ACK_PID"
}

# After keeld died: the writer must have seen the connection end; after the restart
# the range must hold every acknowledged write.
ack_check() {
	local n=$ACK_CHECKS out bad
	[ -n "$ACK_PID" ] || return 0
	wait "$ACK_PID"
	ACK_PID=
	E2E_EXTRA_PIDS=
	ACK_CHECKS=$((ACK_CHECKS + 1))
	if ! grep -q "connection ended" "$T/acked/write.$n"; then
		ACK_ERRORS=$((ACK_ERRORS + 1))
		note acked.err "writer $n: $(tail -n 3 "$T/acked/write.$n")"
		return
	fi
	ACK_ACKED=$((ACK_ACKED + $(jq -r .acked "$T/acked/log.$n")))
	out=$("$PY" "$NBDDIR/acked_io.py" "$T/v1.nbd" v1 verify $ACK_OFF $ACK_LEN "$T/acked/log.$n" 2>&1)
	if [ $? -eq 0 ]; then
		log "acknowledged writes after restart $RESTARTS: ${out#acked_io: }"
		return
	fi
	bad=$(sed -n 's/.*FAIL: \([0-9]*\) of [0-9]* blocks lost.*/\1/p' <<<"$out")
	if [ -n "$bad" ]; then
		ACK_LOST=$((ACK_LOST + bad))
	else
		ACK_ERRORS=$((ACK_ERRORS + 1))
	fi
	note acked.err "check $n: $out"
	log "acknowledged writes LOST: $(tail -n 1 <<<"$out")"
}

# kill_restart: kill -9 keeld, start it again, check the acknowledged writes.
kill_restart() {
	rm -f "$T/up"
	kill -KILL "$KEELD_PID" 2>/dev/null
	wait "$KEELD_PID" 2>/dev/null
	KEELD_PID=
	RESTARTS=$((RESTARTS + 1))
	log "keeld killed with -9 (restart $RESTARTS)"
	keeld_up
	echo "$INC" >"$T/gen"
	ack_check
}

# keeld died by itself: record it, start it again.
crash_restart() {
	local rc
	rm -f "$T/up"
	wait "$KEELD_PID" 2>/dev/null
	rc=$?
	KEELD_PID=
	CRASHES=$((CRASHES + 1))
	note crash.err "keeld exited by itself with status $rc in lifetime $INC"
	log "keeld DIED by itself (status $rc); log tail:"
	tail -n 20 "$KEELD_LOG"
	keeld_up
	echo "$INC" >"$T/gen"
	ack_check
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null; }

# --- setup -------------------------------------------------------------------------------
keeld_up_first() {
	start_keeld
	INC=1
	INC_START=$(now)
	echo 1 >"$T/gen"
	for v in v1 v2; do
		expect_ok "create $v" K volume create $v --size ${VOL_MB}M --replica "$D/$v.a" --replica "$D/$v.b" >/dev/null
		expect_ok "export $v" K export start $v --socket "$T/$v.nbd" >/dev/null
	done
}
keeld_up_first
ack_start
touch "$T/up"
T0=$(now)
END=$((T0 + MINUTES * 60))
log "soak for $MINUTES min, kill -9 every ${RESTART_MIN} min (0: only at the end); keeld $KEEL_BIN/keeld; replicas in $D; load $(loadavg)"

fio_worker v1 &
W1=$!
fio_worker v2 &
W2=$!
hostile_worker &
W3=$!
churn_worker &
W4=$!
WORKERS="$W1 $W2 $W3 $W4"

# Abnormal exit: stop the workers and their fio before the e2e cleanup stops keeld.
soak_cleanup() {
	local rc=$? p
	for p in $WORKERS; do kill "$p" 2>/dev/null; done
	for p in "$T"/fio/*.pid; do [ -f "$p" ] && kill -INT "$(cat "$p")" 2>/dev/null; done
	(exit $rc)
	e2e_cleanup
}
trap soak_cleanup EXIT

# --- the run: sample RSS and load, kill -9 on schedule -----------------------------------
next_kill=$((RESTART_MIN > 0 ? T0 + RESTART_MIN * 60 : END + 1))
next_report=$((T0 + 60))
: >"$T/rss.log"
: >"$T/load.log"
while [ "$(now)" -lt "$END" ]; do
	if ! kill -0 "$KEELD_PID" 2>/dev/null; then
		crash_restart
		ack_start
		touch "$T/up"
	fi
	r=$(rss_kb "$KEELD_PID")
	[ -n "$r" ] && echo "$INC $(($(now) - INC_START)) $r" >>"$T/rss.log"
	echo "$(($(now) - T0)) $(loadavg)" >>"$T/load.log"
	if [ "$(now)" -ge "$next_kill" ] && [ $((END - $(now))) -gt 30 ]; then
		kill_restart
		ack_start
		touch "$T/up"
		next_kill=$(($(now) + RESTART_MIN * 60))
	fi
	if [ "$(now)" -ge "$next_report" ]; then
		log "minute $(((next_report - T0) / 60)): keeld RSS $((${r:-0} / 1024)) MiB, load $(loadavg), $(cat "$T/churn.count" 2>/dev/null)"
		[ "$(((next_report - T0) / 60))" = $(((MINUTES + 1) / 2)) ] &&
			ps -eo pcpu,rss,comm --sort=-pcpu | head -n 12 >"$T/ps-midway.txt"
		next_report=$((next_report + 60))
	fi
	sleep 2
done

# --- the end: workers out, the final kill -9, healthy, clean stop ------------------------
log "time is up: stopping the workers"
touch "$T/stop"
wait $W1 $W2 $W3
# churn may be waiting on a rebuild: it leaves on stop
wait $W4
WORKERS=
kill_restart
for v in v1 v2; do
	heal "$v" 600 || echo x >>"$T/heal.failed"
done
K volume destroy scratch --wipe >/dev/null 2>&1
HIST_DONE=0
HIST_PARTIAL=0
for v in v1 v2; do
	h=$(K_json rebuild history $v)
	HIST_DONE=$((HIST_DONE + $(jget "$h" '[.[] | select(.state == "completed")] | length')))
	HIST_PARTIAL=$((HIST_PARTIAL + $(jget "$h" '[.[] | select(.state == "completed" and .is_partial)] | length')))
done
r=$(rss_kb "$KEELD_PID")
[ -n "$r" ] && echo "$INC $(($(now) - INC_START)) $r" >>"$T/rss.log"
stop_keeld
STOP_RC=$?
DIFFER=0
for v in v1 v2; do
	if ! cmp -s -i $DATA_OFF "$D/$v.a" "$D/$v.b"; then
		DIFFER=$((DIFFER + 1))
		note replicas.err "$v: replicas differ: $(cmp -i $DATA_OFF "$D/$v.a" "$D/$v.b" 2>&1 | head -n 1)"
	fi
done

# --- figures -----------------------------------------------------------------------------
count_lines() { cat "$@" 2>/dev/null | wc -l; }
FIO_IOS=0
FIO_ROUNDS=0
VERIFY_ERR=0
VERIFY_ROUNDS=0
for j in "$T"/fio/*.json; do
	[ -s "$j" ] || continue
	FIO_ROUNDS=$((FIO_ROUNDS + 1))
	n=$(jq -r '[.jobs[] | .read.total_ios + .write.total_ios] | add' "$j" 2>/dev/null)
	FIO_IOS=$((FIO_IOS + ${n:-0}))
	# EILSEQ (84): fio's verify found a block that does not hold what was written
	[ "$(jq -r '[.jobs[] | select(.error == 84)] | length' "$j" 2>/dev/null)" = 0 ] ||
		VERIFY_ROUNDS=$((VERIFY_ROUNDS + 1))
done
VERIFY_ERR=$(cat "$T"/fio/*.err 2>/dev/null |
	grep -cE "$VERIFY_RE")
[ "$VERIFY_ERR" -ge "$VERIFY_ROUNDS" ] || VERIFY_ERR=$VERIFY_ROUNDS
FIO_FAILED=$(count_lines "$T"/fio/*.failed)
FIO_CUT=$(count_lines "$T"/fio/*.cut)
HOSTILE_N=$(cat "$T/hostile/count" 2>/dev/null || echo 0)
HOSTILE_FAILED=$(count_lines "$T/hostile/failed")
HOSTILE_CUT=$(count_lines "$T/hostile/cut")
RPC_FAILED=$(count_lines "$T/churn.failed")
HEAL_FAILED=$(count_lines "$T/heal.failed")
read -r RPCS SCRATCH FAULTS PARTIAL FULL < <(sed 's/[a-z]*=//g' "$T/churn.count" 2>/dev/null || echo "0 0 0 0 0")
SAN=0
sanitizer_reports >"$T/sanitizer.txt" && SAN=1
# RSS: max over the run; growth per lifetime of >= 150 s (see the header).
MAX_RSS_KB=$(awk '$3 > m { m = $3 } END { print m + 0 }' "$T/rss.log")
GROWTH=$(awk '
	function med(list,   a, n, i, j, x) {
		n = split(list, a, " ")
		for (i = 2; i <= n; i++) { x = a[i] + 0; for (j = i - 1; j > 0 && a[j] + 0 > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
		return n ? (n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2) : 0 }
	{ t[NR] = $2; l[NR] = $1; v[NR] = $3; if ($2 > age[$1]) age[$1] = $2 }
	END { worst = ""; n = 0
	  for (i = 1; i <= NR; i++) {
		if (t[i] >= 60 && t[i] < 120) base[l[i]] = base[l[i]] " " v[i]
		if (t[i] >= 120 && t[i] >= age[l[i]] - 60) late[l[i]] = late[l[i]] " " v[i] }
	  for (i in base) if (age[i] >= 150 && (i in late)) {
		b = med(base[i]); e = med(late[i]); g = (e - b) / 1024; n++
		printf "lifetime %d (%d s): %.1f -> %.1f MiB (%+.1f)\n", i, age[i], b / 1024, e / 1024, g > "/dev/stderr"
		if (worst == "" || g > worst) worst = g }
	  if (n == 0) print "none"; else printf "%.1f %d\n", worst, n }' "$T/rss.log" 2>"$T/rss-growth.txt")
LOAD_MEAN=$(awk '{ s += $2; n++; if ($2 > m) m = $2 } END { if (n) printf "%.2f (max %.2f)", s / n, m }' "$T/load.log")

FAILS=0
must() { # NAME OK? VALUE
	if [ "$2" = 1 ]; then
		printf '  %-44s %s\n' "$1" "$3"
	else
		printf '  %-44s %s   <-- FAIL\n' "$1" "$3"
		FAILS=$((FAILS + 1))
	fi
}
zero() { [ "$1" = 0 ] && echo 1 || echo 0; }
echo
echo "== soak: $MINUTES min, kill -9 every $RESTART_MIN min, keeld from $KEEL_BIN =="
echo "must hold:"
must "fio verify errors" "$(zero "$VERIFY_ERR")" "$VERIFY_ERR"
must "acknowledged writes lost" "$(zero "$ACK_LOST")" "$ACK_LOST (of $ACK_ACKED acknowledged, $ACK_CHECKS checks after kill -9)"
must "acknowledged-writes checks that did not run" "$(zero "$ACK_ERRORS")" "$ACK_ERRORS"
must "fio rounds failed while keeld was up" "$(zero "$FIO_FAILED")" "$FIO_FAILED"
must "hostile scenarios failed while keeld was up" "$(zero "$HOSTILE_FAILED")" "$HOSTILE_FAILED"
must "churn RPCs/waits failed while keeld was up" "$(zero "$RPC_FAILED")" "$RPC_FAILED"
must "volumes not healthy at the end" "$(zero "$HEAL_FAILED")" "$HEAL_FAILED"
must "keeld deaths the soak did not cause" "$(zero "$CRASHES")" "$CRASHES"
must "volumes whose replicas differ at the end" "$(zero "$DIFFER")" "$DIFFER"
must "keeld stopped cleanly by SIGTERM at the end" "$(zero "$STOP_RC")" "exit status $STOP_RC"
must "sanitizer reports" "$(zero "$SAN")" "$SAN"
if [ "$GROWTH" = none ]; then
	must "RSS growth after the first minute" 1 "not judged: no keeld lifetime reached 150 s"
else
	g=${GROWTH% *}
	ok_g=$(awk -v g="$g" -v t="$RSS_GROWTH_MIB" 'BEGIN { print (g <= t) ? 1 : 0 }')
	must "RSS growth after the first minute (<= $RSS_GROWTH_MIB MiB)" "$ok_g" "worst $g MiB over ${GROWTH#* } lifetimes"
	sed 's/^/      /' "$T/rss-growth.txt"
fi
echo "figures:"
printf '  %-44s %s\n' "keeld max RSS" "$((MAX_RSS_KB / 1024)) MiB"
printf '  %-44s %s\n' "fio I/Os (reads incl. verify + writes)" "$FIO_IOS in $FIO_ROUNDS rounds ($FIO_CUT cut by kill -9)"
printf '  %-44s %s\n' "hostile connections" "$HOSTILE_N ($HOSTILE_CUT cut by kill -9)"
printf '  %-44s %s\n' "churn RPCs (state polls not counted)" "$RPCS; scratch volumes $SCRATCH, faults $FAULTS"
printf '  %-44s %s\n' "rebuilds completed (history)" "$HIST_DONE ($HIST_PARTIAL partial); churn asked $PARTIAL partial + $FULL full"
printf '  %-44s %s\n' "acknowledged writes checked" "$ACK_ACKED"
printf '  %-44s %s\n' "kill -9 + restart" "$RESTARTS"
printf '  %-44s %s\n' "watchdog reports (iteration > 1 s, wall)" "$(grep -c 'stuck for' "$KEELD_LOG")"
printf '  %-44s %s\n' "load average during the run (1 min)" "$LOAD_MEAN, $(nproc) CPUs"
for f in fio.err hostile.err churn.err acked.err crash.err replicas.err; do
	[ -s "$T/$f" ] || continue
	echo "---- $f (first 10) ----"
	head -n 10 "$T/$f"
done
[ "$SAN" = 0 ] || head -n 40 "$T/sanitizer.txt"
if [ -n "$SAVE" ]; then
	cp "$T"/*.log "$T"/*.txt "$T"/*.err "$SAVE"/ 2>/dev/null
	cp -r "$T/fio" "$T/acked" "$T/hostile" "$SAVE"/ 2>/dev/null
fi
[ $FAILS -eq 0 ] || { echo "soak: $FAILS must-hold figure(s) failed"; exit 1; }
echo "soak: all must-hold figures hold"
