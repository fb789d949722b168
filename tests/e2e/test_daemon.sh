#!/usr/bin/env bash
# keeld lifecycle: help and option errors, single instance per socket and state dir,
# socket mode, stale socket, daemonizing, graceful SIGTERM.
. "$(dirname "$0")/lib.sh"

expect_ok "keeld --help" "$KEEL_BIN/keeld" --help
case "$OUT" in *"--rpc-socket"*"--state-dir"*) ;; *) fail "keeld --help lacks options: $OUT" ;; esac
expect_ok "keeld --version" "$KEEL_BIN/keeld" --version
expect_fail "unknown option" "unknown option '--bogus'" "$KEEL_BIN/keeld" --bogus
expect_fail "bad mode" "--mode 'turbo'" "$KEEL_BIN/keeld" --mode turbo
expect_fail "bad cpu list" "--cpus" "$KEEL_BIN/keeld" --cpus 99999
expect_fail "bad log level" "--log-level" "$KEEL_BIN/keeld" --log-level loud
expect_fail "missing value" "needs a value" "$KEEL_BIN/keeld" --rpc-socket

for args in "--help" "bdev --help" "bdev create --help" "export --help" "reactor --help" "rpc --help"; do
	# shellcheck disable=SC2086
	expect_ok "keelctl $args" "$KEEL_BIN/keelctl" $args
	case "$OUT" in *Usage*) ;; *) fail "keelctl $args: no usage text" ;; esac
done
expect_fail "keelctl unknown noun" "unknown command 'frobnicate'" keelctl frobnicate
expect_fail "keelctl without daemon" "is keeld running" keelctl bdev list

# a plain file where the socket should go
touch "$E2E_TMP/notasocket"
expect_fail "socket path is a file" "is not a socket" "$KEEL_BIN/keeld" --foreground \
	--rpc-socket "$E2E_TMP/notasocket" --state-dir "$STATE"

# a stale socket (nobody listens) is removed
"$PY" -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])' "$SOCK"
[ -S "$SOCK" ] || fail "could not make a stale socket"
start_keeld
ok "started over a stale socket"
[ "$(stat -c %a "$SOCK")" = 600 ] || fail "socket mode is $(stat -c %a "$SOCK"), not 600"
ok "socket mode 0600"
[ "$(cat "$STATE/keeld.lock")" = "$KEELD_PID" ] || fail "lock file does not hold the pid"

expect_fail "second keeld, same socket and state dir" "already running" \
	"$KEEL_BIN/keeld" --foreground --rpc-socket "$SOCK" --state-dir "$STATE"
expect_fail "second keeld, same socket" "already answering on $SOCK" \
	"$KEEL_BIN/keeld" --foreground --rpc-socket "$SOCK" --state-dir "$E2E_TMP/state2"
expect_fail "second keeld, same state dir" "already running with state directory" \
	"$KEEL_BIN/keeld" --foreground --rpc-socket "$E2E_TMP/other.sock" --state-dir "$STATE"
keeld_alive || fail "first keeld died"
expect_ok "first keeld still answers" keelctl rpc keel_get_version

# SIGTERM with a bdev present: exit 0 and the socket is gone
expect_ok "create a bdev" keelctl bdev create malloc m0 8M
stop_keeld || fail "keeld exited with $? after SIGTERM"
[ ! -e "$SOCK" ] || fail "socket still exists after SIGTERM"
ok "SIGTERM: exit 0, socket removed"

# SIGINT works the same way
start_keeld
kill -INT "$KEELD_PID"
wait "$KEELD_PID" || fail "keeld exited with $? after SIGINT"
KEELD_PID=
[ ! -e "$SOCK" ] || fail "socket still exists after SIGINT"
ok "SIGINT: exit 0, socket removed"

# daemon mode: keeld returns once the socket answers
expect_ok "keeld detaches" "$KEEL_BIN/keeld" --rpc-socket "$SOCK" --state-dir "$STATE" --cpus 0
KEELD_PID=$(cat "$STATE/keeld.lock")
[ -n "$KEELD_PID" ] && kill -0 "$KEELD_PID" || fail "no daemon running after keeld returned"
expect_ok "daemon answers at once" keelctl rpc keel_get_version
expect_fail "second daemonized keeld refused" "already" \
	"$KEEL_BIN/keeld" --rpc-socket "$SOCK" --state-dir "$STATE" --cpus 0
[ -f "$STATE/keeld.log" ] || fail "daemon has no log file"
kill -TERM "$KEELD_PID"
daemon_gone() { ! kill -0 "$KEELD_PID" 2>/dev/null; }
wait_until 60 "the daemon exiting after SIGTERM" daemon_gone
KEELD_PID=
[ ! -e "$SOCK" ] || fail "socket still exists after the daemon stopped"
grep -q "exiting with status 0" "$STATE/keeld.log" || fail "daemon log lacks a clean exit: $(tail "$STATE/keeld.log")"
ok "daemon stopped cleanly"
