#!/usr/bin/env bash
# keeld under systemd: the unit file passes `systemd-analyze verify`, and keeld speaks
# the notification protocol of a Type=notify unit to a socket that stands in for
# systemd's (notify_listener.py): READY=1 only once the RPC socket serves and the
# saved volumes are assembled, from the process that was started (no fork), STATUS=
# lines, STOPPING=1, and WATCHDOG=1 pings that stop while a reactor is stuck.
. "$(dirname "$0")/lib.sh"

UNIT=$E2E_DIR/../../daemon/keeld.service
[ -f "$UNIT" ] || fail "no unit file at $UNIT"

# --- the unit file ----------------------------------------------------------------
# verify wants ExecStart's binary to exist: a copy of the unit points at the build.
if command -v systemd-analyze >/dev/null; then
	mkdir -p "$E2E_TMP/unit"
	sed "s#/usr/local/bin/keeld#$KEEL_BIN/keeld#" "$UNIT" >"$E2E_TMP/unit/keeld.service"
	grep -q "ExecStart=$KEEL_BIN/keeld " "$E2E_TMP/unit/keeld.service" ||
		fail "the unit's ExecStart is not /usr/local/bin/keeld: the test cannot point it at the build"
	out=$(cd "$E2E_TMP/unit" && systemd-analyze verify ./keeld.service 2>&1) ||
		fail "systemd-analyze verify failed: $out"
	# Warnings about other units (the host's) are not ours; any line naming ours is.
	if grep -q "keeld.service" <<<"$out"; then
		fail "systemd-analyze verify warns about the unit: $out"
	fi
	ok "systemd-analyze verify: no warning about keeld.service"
else
	echo "note: systemd-analyze not installed (package systemd): unit not verified"
	VERIFY_SKIPPED=1
fi

# --- notifications ------------------------------------------------------------------
need_aio_free 4096
NSOCK=$E2E_TMP/notify.sock
NLOG=$E2E_TMP/notify.log
D=$E2E_TMP/disks
mkdir -p "$D"
# Two reactors when the machine has two CPUs: the stalled one is then not the one that
# answers RPCs.
if [ "$(nproc)" -ge 2 ]; then CPUS=0-1; else CPUS=0; fi

"$PY" "$E2E_DIR/notify_listener.py" "$NSOCK" "$NLOG" "$KEEL_BIN/keelctl" "$SOCK" sv &
E2E_EXTRA_PIDS="${E2E_EXTRA_PIDS:-} $!"
wait_until 30 "the notify listener" grep -qs LISTENING "$NLOG"

# notify_count WHAT: lines of the notify log that say WHAT.
notify_count() {
	grep -c -- "$1" "$NLOG"
}
has_line() {
	grep -q -- "$1" "$2"
}
pings_at_least() {
	[ "$(notify_count WATCHDOG=1)" -ge "$1" ]
}

# A volume to restore, made by a keeld outside systemd (no NOTIFY_SOCKET: no messages).
KEEL_E2E_CPUS=$CPUS start_keeld
expect_ok "create sv" keelctl volume create sv --size 32M --replica "$D/a" --replica "$D/b"
expect_fail "the test-only stall method needs KEEL_DEBUG_RPC=1" "not found" \
	keelctl rpc framework_debug_stall_reactor '{"reactor": 0, "ms": 1}'
stop_keeld || fail "keeld exited with an error"
[ "$(notify_count 'pid=')" -eq 0 ] || fail "keeld without NOTIFY_SOCKET sent: $(cat "$NLOG")"
ok "without NOTIFY_SOCKET keeld sends nothing"

# Started as systemd starts the unit: without --foreground, so that a fork would show
# in the sender's pid.
NOTIFY_SOCKET=$NSOCK WATCHDOG_USEC=3000000 KEEL_DEBUG_RPC=1 \
	"$KEEL_BIN/keeld" --rpc-socket "$SOCK" --state-dir "$STATE" --cpus "$CPUS" \
	>>"$KEELD_LOG" 2>&1 &
KEELD_PID=$!
wait_until 120 "READY=1" has_line "READY=1" "$NLOG"
wait_until 120 "the listener's look at the volume at READY=1" has_line AT_READY "$NLOG"
has_line "pid=$KEELD_PID READY=1" "$NLOG" ||
	fail "READY=1 came from another process than the one started ($KEELD_PID): $(cat "$NLOG")"
ok "READY=1 from the process that was started (no fork under NOTIFY_SOCKET)"
has_line "AT_READY state=online" "$NLOG" ||
	fail "at READY=1 the volume was not served online: $(grep AT_READY "$NLOG")"
ok "at READY=1 the RPC socket serves and the restored volume is online"
# A restore asks for more start-up time as it makes progress, before READY=1.
restoring=$(grep -n "STATUS=restoring volumes: 1 of 1 assembled" "$NLOG" | head -n 1 | cut -d: -f1)
extend=$(grep -n "EXTEND_TIMEOUT_USEC=[1-9]" "$NLOG" | head -n 1 | cut -d: -f1)
ready=$(grep -n "READY=1" "$NLOG" | head -n 1 | cut -d: -f1)
[ -n "$restoring" ] && [ -n "$extend" ] && [ "$restoring" -lt "$ready" ] && [ "$extend" -lt "$ready" ] ||
	fail "no restore progress with EXTEND_TIMEOUT_USEC before READY=1: $(cat "$NLOG")"
ok "restore progress before READY=1: $(grep -m1 -o 'STATUS=restoring.*' "$NLOG"), $(grep -m1 -o 'EXTEND_TIMEOUT_USEC=.*' "$NLOG")"
has_line "STATUS=1 volume, 0 degraded, 0 exports" "$NLOG" ||
	fail "no STATUS= summary with the volume: $(cat "$NLOG")"
ok "STATUS= says $(grep -m1 'STATUS=1 volume' "$NLOG" | sed 's/.*STATUS=//')"

# STATUS= follows changes: an export appears in it.
expect_ok "export sv" keelctl export start sv --socket "$E2E_TMP/sv.nbd"
wait_until 60 "STATUS= with the export" has_line "STATUS=1 volume, 0 degraded, 1 export$" "$NLOG"
ok "STATUS= follows an export start"
expect_ok "fault replica b" keelctl replica fault sv "$D/b"
wait_until 60 "STATUS= with the degraded volume" has_line "STATUS=1 volume, 1 degraded, 1 export$" "$NLOG"
ok "STATUS= counts the degraded volume"

# Watchdog: WATCHDOG_USEC=3 s, so a ping every second while every reactor loops.
wait_until 60 "three WATCHDOG=1 pings" pings_at_least 3
ok "WATCHDOG=1 pings arrive ($(notify_count WATCHDOG=1) so far)"

# A stuck reactor stops them. The stall (20 s) outlasts the window looked at (5 s after
# it began, at least 5 periods); one ping may still pass, from a check that compared
# against a probe older than the stall.
expect_fail "stall: a reactor that does not exist" "no reactor 99" \
	keelctl rpc framework_debug_stall_reactor '{"reactor": 99, "ms": 1}'
expect_fail "stall: a time out of range" "out of range" \
	keelctl rpc framework_debug_stall_reactor '{"reactor": 0, "ms": 0}'
STALL_REACTOR=$(($(keelctl rpc framework_get_reactors | jq '.reactors | length') - 1))
# In the background: with one reactor (one CPU) the stalled reactor is the one that
# answers, after the stall.
keelctl --timeout 120 rpc framework_debug_stall_reactor \
	"{\"reactor\": $STALL_REACTOR, \"ms\": 20000}" >"$E2E_TMP/stall.out" 2>&1 &
STALL_PID=$!
wait_until 60 "the stall to begin" has_line "reactor $STALL_REACTOR stalls" "$KEELD_LOG"
pings_at_stall=$(notify_count WATCHDOG=1)
sleep 5
pings_after=$(notify_count WATCHDOG=1)
has_line "reactor $STALL_REACTOR resumes" "$KEELD_LOG" &&
	fail "the 20 s stall ended within the 5 s looked at: the machine is too slow for this check"
[ $((pings_after - pings_at_stall)) -le 1 ] ||
	fail "WATCHDOG=1 went on while reactor $STALL_REACTOR was stuck: $pings_at_stall -> $pings_after"
ok "no WATCHDOG=1 while reactor $STALL_REACTOR is stuck ($pings_at_stall -> $pings_after in 5 s)"
has_line "reactor $STALL_REACTOR: stuck for" "$KEELD_LOG" || fail "the reactor watchdog did not report the stall"
ok "the reactor watchdog names the stuck reactor"
wait_until 120 "the stall to end" has_line "reactor $STALL_REACTOR resumes" "$KEELD_LOG"
wait "$STALL_PID" || fail "framework_debug_stall_reactor failed: $(cat "$E2E_TMP/stall.out")"
wait_until 60 "pings to resume" pings_at_least $((pings_after + 2))
ok "WATCHDOG=1 resumes once the reactor loops again"

stop_keeld || fail "keeld exited with an error"
has_line "pid=.* STOPPING=1" "$NLOG" || fail "no STOPPING=1 at shutdown: $(tail -n 5 "$NLOG")"
ok "STOPPING=1 at shutdown"

# Logs into the journal: stderr named by JOURNAL_STREAM gets priority prefixes instead
# of timestamps (journalctl -p filters on them); any other stderr keeps the plain lines.
JLOG=$E2E_TMP/journal.log
: >"$JLOG"
JOURNAL_STREAM=$(stat -c '%d:%i' "$JLOG") "$KEEL_BIN/keeld" --foreground --rpc-socket "$SOCK" \
	--state-dir "$STATE" --cpus "$CPUS" 2>>"$JLOG" &
KEELD_PID=$!
wait_for_keeld "$KEELD_PID"
stop_keeld || fail "keeld exited with an error"
grep -q '^<5>keel\[NOTICE\] main: keeld: ready' "$JLOG" || fail "no journal priorities: $(head -n 3 "$JLOG")"
if grep -qv '^<[3-7]>keel\[' "$JLOG"; then fail "a journal line without its priority: $(grep -v '^<[3-7]>keel\[' "$JLOG" | head -n 3)"; fi
ok "with JOURNAL_STREAM on stderr every line carries its priority ($(head -n 1 "$JLOG" | cut -c1-40)...)"
grep -q '^\[20[0-9-]* [0-9:.]*\] keel\[NOTICE\]' "$KEELD_LOG" || fail "plain log lines lost their timestamp"
JOURNAL_STREAM=1:1 KEEL_E2E_CPUS=$CPUS start_keeld
stop_keeld || fail "keeld exited with an error"
if tail -n 3 "$KEELD_LOG" | grep -q '^<'; then fail "a JOURNAL_STREAM naming another file changed the format"; fi
ok "JOURNAL_STREAM naming another stream leaves the format alone"

[ -z "${VERIFY_SKIPPED:-}" ] || skip "notifications pass; systemd-analyze is missing (package systemd), so the unit was not verified"
