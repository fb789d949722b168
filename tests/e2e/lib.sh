# Shared helpers of the keel e2e tests. Source it first:  . "$(dirname "$0")/lib.sh"
#
# Every test gets its own temp dir with its own keeld socket and state dir, and a trap
# that stops keeld and removes the temp dir however the test ends. Exit 77 = skip.
set -u

KEEL_BIN=${KEEL_BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/build/bin}
E2E_NAME=$(basename "$0" .sh)
E2E_DIR=$(cd "$(dirname "$0")" && pwd) # this test's directory (tests may cd elsewhere)

skip() {
	echo "SKIP $E2E_NAME: $*"
	exit 77
}

fail() {
	echo "FAIL $E2E_NAME: $*" >&2
	if [ -n "${KEELD_LOG:-}" ] && [ -f "$KEELD_LOG" ]; then
		echo "---- keeld log (last 40 lines) ----" >&2
		tail -n 40 "$KEELD_LOG" >&2
		# fs.aio-max-nr is one pool for the whole machine: say so when it ran dry.
		if grep -q "system-wide AIO limit is reached" "$KEELD_LOG"; then
			echo "NOTE: io_setup found fs.aio-max-nr ($(cat /proc/sys/fs/aio-max-nr)) used up" \
				"system-wide (aio-nr now $(cat /proc/sys/fs/aio-nr)); other processes" \
				"on this machine hold AIO contexts too" >&2
		fi
	fi
	exit 1
}

ok() {
	echo "ok - $*"
}

[ -x "$KEEL_BIN/keeld" ] || skip "no keeld in $KEEL_BIN (build first)"
[ -x "$KEEL_BIN/keelctl" ] || skip "no keelctl in $KEEL_BIN (build first)"
command -v python3 >/dev/null || skip "python3 is needed"
command -v jq >/dev/null || skip "jq is needed (package jq)"
# python3 on PATH may be a pyenv shim that takes ~0.5 s to start: use the system one.
if [ -x /usr/bin/python3 ]; then PY=/usr/bin/python3; else PY=python3; fi

# Unix socket paths are limited to 107 bytes: keep the temp dir short.
E2E_TMP=$(mktemp -d /tmp/keel-e2e.XXXXXX) || fail "mktemp"
SOCK=$E2E_TMP/keeld.sock
STATE=$E2E_TMP/state
KEELD_LOG=$E2E_TMP/keeld.log
KEELD_PID=

# Sanitized builds (build-asan): keep leak checking and write every report of every
# keel process (keeld, daemonized keeld, keelctl) to files in SAN_DIR, which the
# cleanup turns into a failure: a report is a bug even when the test passed.
SAN_DIR=$E2E_TMP/sanitizer
mkdir -p "$SAN_DIR"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}:log_path=$SAN_DIR/asan"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}:log_path=$SAN_DIR/ubsan"
export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=0}:log_path=$SAN_DIR/tsan"

# Print the sanitizer reports of this test's keel processes; false when there are none.
sanitizer_reports() {
	local f found=1

	for f in "$SAN_DIR"/*; do
		[ -s "$f" ] || continue
		echo "---- sanitizer report $(basename "$f") ----"
		head -n 60 "$f"
		found=0
	done
	if [ -n "${KEELD_LOG:-}" ] && grep -qE "ERROR: (Address|Leak|Thread)Sanitizer|WARNING: ThreadSanitizer|runtime error:" "$KEELD_LOG" 2>/dev/null; then
		echo "---- sanitizer report in the keeld log ----"
		grep -E -A 30 "ERROR: (Address|Leak|Thread)Sanitizer|WARNING: ThreadSanitizer|runtime error:" "$KEELD_LOG" | head -n 60
		found=0
	fi
	return $found
}

e2e_cleanup() {
	local rc=$? krc

	for pid in ${E2E_EXTRA_PIDS:-}; do
		kill -KILL "$pid" 2>/dev/null
	done
	if [ -n "$KEELD_PID" ] && kill -0 "$KEELD_PID" 2>/dev/null; then
		kill -TERM "$KEELD_PID" 2>/dev/null
		for _ in $(seq 1 300); do
			kill -0 "$KEELD_PID" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$KEELD_PID" 2>/dev/null; then
			kill -KILL "$KEELD_PID" 2>/dev/null
			echo "FAIL $E2E_NAME: keeld did not exit within 30 s of SIGTERM" >&2
			rc=1
		fi
		# Our child: its exit status says whether it stopped cleanly (a sanitizer
		# report at exit, a leak, makes it non-zero). 127: not our child.
		wait "$KEELD_PID" 2>/dev/null
		krc=$?
		if [ $rc -eq 0 ] && [ $krc -ne 0 ] && [ $krc -ne 127 ]; then
			echo "FAIL $E2E_NAME: keeld exited with status $krc after SIGTERM" >&2
			rc=1
		fi
	fi
	if sanitizer_reports >&2; then
		echo "FAIL $E2E_NAME: sanitizer report (above)" >&2
		rc=1
	fi
	rm -rf "$E2E_TMP"
	exit $rc
}
trap e2e_cleanup EXIT
trap 'exit 130' INT TERM

keelctl() {
	"$KEEL_BIN/keelctl" -s "$SOCK" "$@"
}

# Wait until keeld at $SOCK answers; fail if the process $1 died first.
wait_for_keeld() {
	local pid=$1

	for _ in $(seq 1 600); do
		if "$KEEL_BIN/keelctl" -s "$SOCK" --timeout 5 rpc keel_get_version >/dev/null 2>&1; then
			return 0
		fi
		if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
			fail "keeld exited during startup"
		fi
		sleep 0.1
	done
	fail "keeld did not answer on $SOCK within 60 s"
}

# Start keeld in the foreground (background job) with this test's socket and state dir.
# Extra arguments go to keeld. Sets KEELD_PID.
start_keeld() {
	"$KEEL_BIN/keeld" --foreground --rpc-socket "$SOCK" --state-dir "$STATE" \
		--cpus "${KEEL_E2E_CPUS:-0}" "$@" >>"$KEELD_LOG" 2>&1 &
	KEELD_PID=$!
	wait_for_keeld "$KEELD_PID"
}

# Start keeld as start_keeld does, under a seccomp filter that refuses io_uring as a
# container runtime's default profile does (tests/unit/uring/no_uring_exec.c). Returns
# 1 without starting anything when that helper is not built.
start_keeld_without_uring() {
	local no_uring=$KEEL_BIN/tests/no_uring_exec

	[ -x "$no_uring" ] || return 1
	"$no_uring" "$KEEL_BIN/keeld" --foreground --rpc-socket "$SOCK" --state-dir "$STATE" \
		--cpus "${KEEL_E2E_CPUS:-0}" "$@" >>"$KEELD_LOG" 2>&1 &
	KEELD_PID=$!
	wait_for_keeld "$KEELD_PID"
}

# SIGTERM keeld and wait; returns keeld's exit status.
stop_keeld() {
	local rc

	[ -n "$KEELD_PID" ] || return 0
	kill -TERM "$KEELD_PID"
	wait "$KEELD_PID"
	rc=$?
	KEELD_PID=
	return $rc
}

keeld_alive() {
	[ -n "$KEELD_PID" ] && kill -0 "$KEELD_PID" 2>/dev/null
}

# expect_fail "what" SUBSTRING CMD...: CMD must exit non-zero and print SUBSTRING.
expect_fail() {
	local what=$1 substr=$2 out rc
	shift 2

	out=$("$@" 2>&1)
	rc=$?
	[ $rc -ne 0 ] || fail "$what: succeeded but should fail: $out"
	case "$out" in
	*"$substr"*) ok "$what -> $(echo "$out" | head -n 1)" ;;
	*) fail "$what: output lacks '$substr': $out" ;;
	esac
}

# expect_usage "what" SUBSTRING CMD...: CMD must exit 2 (a usage mistake) and print
# SUBSTRING. Usage mistakes never reach keeld, so running CMD twice costs nothing.
expect_usage() {
	local what=$1 substr=$2 rc
	shift 2

	"$@" >/dev/null 2>&1
	rc=$?
	[ $rc -eq 2 ] || fail "$what: exit $rc, want 2 (a usage mistake)"
	expect_fail "$what" "$substr" "$@"
}

# expect_ok "what" CMD...: CMD must succeed; its stdout is left in $OUT.
expect_ok() {
	local what=$1 rc
	shift

	OUT=$("$@" 2>&1)
	rc=$?
	[ $rc -eq 0 ] || fail "$what: exit $rc: $OUT"
	ok "$what"
}

# json_get JSON PYTHON-EXPR: evaluate EXPR with the parsed JSON as 'j'. One interpreter
# per call: prefer jget in anything that runs often.
json_get() {
	"$PY" -c 'import json,sys; j=json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$1" "$2"
}

# jget JSON [JQ-OPTIONS...] FILTER: FILTER's result (strings raw), one cheap jq process.
#   jget "$OUT" --arg p "$path" '.replicas[] | select(.path == $p) | .state'
jget() {
	local json=$1
	shift
	jq -r "$@" <<<"$json"
}

# wait_until SECONDS WHAT CMD...: poll CMD (cheap: keelctl, jq, test) every 0.1 s until
# it succeeds; fail naming WHAT after SECONDS. The timeout only bounds a hang: size it
# far beyond what the state change needs on a loaded machine.
wait_until() {
	local secs=$1 what=$2 end
	shift 2

	end=$((SECONDS + secs))
	while ! "$@"; do
		[ $SECONDS -lt $end ] || fail "$what: not within $secs s"
		sleep 0.1
	done
}

# fio_nbd_verify OUT URI SIZE IODEPTH SEED [FIO-ARGS...]: fio's nbd engine on URI, random
# 4k writes carrying crc32c verify data (seeded, so a later pass can verify them); JSON
# results in OUT, fio's stderr in OUT.err. Runs in the temp dir: fio leaves its
# verify-state file in the working directory.
fio_nbd_verify() {
	local out=$1 uri=$2 size=$3 depth=$4 seed=$5
	shift 5
	(cd "$E2E_TMP" && fio --name=vol --ioengine=nbd --uri="$uri" --size="$size" --bs=4k \
		--iodepth="$depth" --rw=randwrite --verify=crc32c --randrepeat=1 --randseed="$seed" \
		--output-format=json --output="$out" "$@" >/dev/null 2>"$out.err")
}

# fio_errors OUT: the errors fio counted over every job of its JSON results OUT.
fio_errors() {
	jq '[.jobs[] | .error + (.total_err // 0)] | add' "$1"
}

# volume_replica_state VOLUME PATH: the state volume_get shows for the replica at PATH
# (empty when there is none).
volume_replica_state() {
	keelctl rpc volume_get "{\"name\":\"$1\"}" 2>/dev/null |
		jq -r --arg p "$2" '.replicas[] | select(.path == $p) | .state' | head -n 1
}

# qemu_io_ok WHAT URI [-r] CMD...: run the qemu-io commands on URI (-r: read-only). qemu-io
# must exit 0 and print no failure: it prints "read N/N bytes" even after "Pattern
# verification failed", so that line proves nothing.
qemu_io_ok() {
	local what=$1 uri=$2 out rc c
	local args=(-f raw)
	shift 2

	if [ "${1:-}" = -r ]; then
		args+=(-r)
		shift
	fi
	for c in "$@"; do
		args+=(-c "$c")
	done
	out=$(qemu-io "${args[@]}" "$uri" 2>&1)
	rc=$?
	[ $rc -eq 0 ] || fail "$what: qemu-io exited with $rc: $out"
	case "$out" in
	*"verification failed"* | *[Ee]rror* | *[Ff]ailed*) fail "$what: $out" ;;
	esac
	ok "$what"
}

# need_aio_free EVENTS: skip unless EVENTS of the system-wide fs.aio-max-nr are free
# (keeld takes one context of 1024 events per keel thread doing aio).
need_aio_free() {
	local need=$1 max used

	max=$(cat /proc/sys/fs/aio-max-nr) || skip "no /proc/sys/fs/aio-max-nr"
	used=$(cat /proc/sys/fs/aio-nr)
	[ "$max" -ge "$need" ] || skip "fs.aio-max-nr is $max; keeld needs $need (sysctl fs.aio-max-nr=65536)"
	[ $((max - used)) -ge "$need" ] ||
		skip "other processes hold $used of fs.aio-max-nr=$max; keeld needs $need free"
}

# make_volumes N: volumes v1..vN of 64 MiB, 2 replicas each on sparse files of the full
# replica size in $E2E_TMP/disks (keeld uses them as they are: only labels are written),
# four keelctl at a time to hide the round trips.
make_volumes() {
	local n=$1 d=$E2E_TMP/disks i

	mkdir -p "$d"
	for i in $(seq 1 "$n"); do
		truncate -s 65M "$d/v$i.a" "$d/v$i.b" || fail "truncate $d/v$i.*"
	done
	if ! seq 1 "$n" | xargs -P 4 -I{} "$KEEL_BIN/keelctl" -s "$SOCK" volume create v{} \
		--size 64M --replica "$d/v{}.a" --replica "$d/v{}.b" >"$E2E_TMP/create.out" 2>&1; then
		fail "volume create failed: $(grep -v '^created' "$E2E_TMP/create.out" | head -n 3)"
	fi
}
