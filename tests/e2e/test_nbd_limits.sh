#!/usr/bin/env bash
# NBD limits against a real keeld: keeld options and nbd_set_options set them (with
# range checks), a client over a connection limit is told which limit, a client over the
# buffer budget waits and is served once buffers free, and clients that stop reading
# replies or never finish the handshake are closed. nbd_get_stats counts each.
# (libnbd shows "server policy prevents"; the message naming the limit is checked in
# nbd_ut export_limits and in the log.) Every wait is on a state (stats, connection counts, "ready" from a client).
. "$(dirname "$0")/lib.sh"

command -v nbdinfo >/dev/null || skip "nbdinfo is not installed (package libnbd-bin)"
command -v qemu-io >/dev/null || skip "qemu-io is not installed (package qemu-utils)"
LIMITS=$E2E_DIR/nbd/limits_client.py
MIB=1048576

expect_fail "keeld rejects a budget below 1 MiB" "--nbd-buffer-budget" \
	"$KEEL_BIN/keeld" --nbd-buffer-budget 0 --help
expect_fail "keeld rejects a stall timeout of 0" "--nbd-stall-timeout" \
	"$KEEL_BIN/keeld" --nbd-stall-timeout 0 --help

start_keeld --nbd-max-export-connections 2 --nbd-buffer-budget 64 --nbd-handshake-timeout 5 \
	--nbd-stall-timeout 30
expect_ok "nbd_get_options" keelctl rpc nbd_get_options
[ "$(jget "$OUT" '.buffer_budget')" -eq $((64 * MIB)) ] || fail "budget from --nbd-buffer-budget: $OUT"
[ "$(jget "$OUT" '.max_export_connections')" -eq 2 ] || fail "export limit from the option: $OUT"
[ "$(jget "$OUT" '.handshake_timeout_ms')" -eq 5000 ] || fail "handshake timeout: $OUT"
[ "$(jget "$OUT" '.stall_timeout_ms')" -eq 30000 ] || fail "stall timeout: $OUT"
[ "$(jget "$OUT" '.max_connections')" -eq 1024 ] || fail "default connection limit: $OUT"
ok "keeld options set the NBD limits"

expect_fail "budget below 1 MiB" "buffer_budget must be" \
	keelctl rpc nbd_set_options '{"buffer_budget":4096}'
expect_fail "stall timeout below 10 ms" "stall_timeout_ms must be" \
	keelctl rpc nbd_set_options '{"stall_timeout_ms":1}'
expect_fail "no connections" "max_connections must be" \
	keelctl rpc nbd_set_options '{"max_connections":0}'
expect_fail "unknown option" "bogus" keelctl rpc nbd_set_options '{"bogus":1}'
expect_ok "a failed set changed nothing" keelctl rpc nbd_get_options
[ "$(jget "$OUT" '.stall_timeout_ms')" -eq 30000 ] || fail "stall timeout changed: $OUT"

expect_ok "malloc m0" keelctl bdev create malloc m0 64M
expect_ok "malloc m1" keelctl bdev create malloc m1 64M
expect_ok "export m0" keelctl export start m0 --socket "$E2E_TMP/m0.sock"
expect_ok "export m1" keelctl export start m1 --socket "$E2E_TMP/m1.sock"
URI0="nbd+unix:///m0?socket=$E2E_TMP/m0.sock"
URI1="nbd+unix:///m1?socket=$E2E_TMP/m1.sock"

# The write ends of the clients' fifos: every process started while one is open must
# not inherit it, or closing it in client_end would not reach its client.
CLIENT_FDS=

# no_client_fds CMD...: run CMD with none of the fifo write ends open.
no_client_fds() {
	local f
	for f in $CLIENT_FDS; do eval "exec $f>&-"; done
	exec "$@"
}

# client_start ID SOCKET EXPORT MODE: a limits_client held open by a fifo until
# client_end ID; returns once it printed "ready".
client_start() {
	local id=$1 fd
	shift

	mkfifo "$E2E_TMP/$id.in"
	(no_client_fds "$PY" "$LIMITS" "$@") <"$E2E_TMP/$id.in" >"$E2E_TMP/$id.out" 2>&1 &
	eval "PID_$id=$!"
	E2E_EXTRA_PIDS="${E2E_EXTRA_PIDS:-} $!"
	exec {fd}>"$E2E_TMP/$id.in"
	eval "FD_$id=$fd"
	CLIENT_FDS="$CLIENT_FDS $fd"
	wait_until 60 "client $id ready" grep -qs ready "$E2E_TMP/$id.out"
}

# client_end ID: close its stdin and return its exit status.
client_end() {
	local id=$1 fd pid

	eval "fd=\$FD_$id pid=\$PID_$id"
	exec {fd}>&-
	CLIENT_FDS=$(echo "$CLIENT_FDS" | tr ' ' '\n' | grep -vx "$fd" | tr '\n' ' ')
	wait "$pid"
}

stat_of() {
	keelctl --json rpc nbd_get_stats | jq -r ".$1"
}
conns_of() {
	keelctl --json export list | jq -r --arg n "$1" '.[] | select(.name == $n) | .connections'
}
conns_are() { [ "$(conns_of "$1")" = "$2" ]; }
stat_at_least() { [ "$(stat_of "$1")" -ge "$2" ] 2>/dev/null; }
stat_is() { [ "$(stat_of "$1")" = "$2" ]; }

# --- connection limits ------------------------------------------------------------
client_start a "$E2E_TMP/m0.sock" m0 hold
client_start b "$E2E_TMP/m0.sock" m0 hold
wait_until 60 "two clients on m0" conns_are m0 2
expect_fail "a third client of m0 is told the export limit" \
	"server policy prevents" nbdinfo --size "$URI0"
[ "$(stat_of connections_refused)" -eq 1 ] || fail "refusal not counted"
grep -q "connection refused: export m0 has reached its limit" "$KEELD_LOG" ||
	fail "no log line for the refusal"

expect_ok "daemon-wide limit of 2" keelctl rpc nbd_set_options '{"max_connections":2}'
expect_fail "a client of m1 is told the daemon limit" \
	"server policy prevents" nbdinfo --size "$URI1"
# (the warning is rate-limited to one a second: the counter sees every refusal)
[ "$(stat_of connections_refused)" -eq 2 ] || fail "second refusal not counted"
expect_ok "daemon-wide limit back" keelctl rpc nbd_set_options '{"max_connections":1024}'
out=$(nbdinfo --size "$URI1" 2>&1) || fail "m1 after the limit was raised: $out"

client_end a || fail "client a failed: $(cat "$E2E_TMP/a.out")"
wait_until 60 "client a gone" conns_are m0 1
out=$(nbdinfo --size "$URI0" 2>&1) || fail "m0 once a client left: $out"
[ "$out" = $((64 * MIB)) ] || fail "m0 size: $out"
ok "room again once a client left"
client_end b || fail "client b failed: $(cat "$E2E_TMP/b.out")"
wait_until 60 "client b gone" conns_are m0 0

# --- handshake timeout ---------------------------------------------------------------
expect_ok "handshake timeout 200 ms" keelctl rpc nbd_set_options '{"handshake_timeout_ms":200}'
client_start h "$E2E_TMP/m0.sock" m0 silent
wait_until 60 "the silent client closed by the handshake timeout" stat_is handshake_timeouts 1
client_end h
grep -q "handshake timeout" "$KEELD_LOG" || fail "no log line for the handshake timeout"
ok "a client that chose no export was closed"
# Back to 30 s: the clients below must not race a 200 ms handshake on a loaded machine.
expect_ok "handshake timeout back" keelctl rpc nbd_set_options '{"handshake_timeout_ms":30000}'

# --- stall timeout -------------------------------------------------------------------
expect_ok "stall timeout 300 ms" keelctl rpc nbd_set_options '{"stall_timeout_ms":300}'
client_start s "$E2E_TMP/m0.sock" m0 stall
wait_until 60 "the client that reads no replies closed" stat_is stall_timeouts 1
wait_until 60 "its connection gone" conns_are m0 0
client_end s
grep -q "has not read its replies" "$KEELD_LOG" || fail "no log line for the stall"
ok "a client that stopped reading its replies was closed"
expect_ok "stall timeout back" keelctl rpc nbd_set_options '{"stall_timeout_ms":60000}'

# --- buffer budget -------------------------------------------------------------------
expect_ok "budget 1 MiB" keelctl rpc nbd_set_options "{\"buffer_budget\":$MIB}"
client_start p "$E2E_TMP/m0.sock" m0 pin
wait_until 60 "the pinning client holds the whole budget" stat_is buffer_bytes "$MIB"
waits=$(stat_of buffer_waits)
(no_client_fds qemu-io -f raw -r -c "read -P 0 0 64k" "$URI0") >"$E2E_TMP/qio.out" 2>&1 &
QIO=$!
E2E_EXTRA_PIDS="$E2E_EXTRA_PIDS $QIO"
wait_until 60 "the second client waits for the budget" stat_at_least buffer_waits $((waits + 1))
kill -0 $QIO 2>/dev/null || fail "the waiting client ended: $(cat "$E2E_TMP/qio.out")"
[ "$(stat_of connections)" -eq 2 ] || fail "the waiting client was dropped"
ok "a client over the budget waits, still connected"
client_end p || fail "the pinning client lost its reply: $(cat "$E2E_TMP/p.out")"
wait "$QIO" || fail "the waiting client failed: $(cat "$E2E_TMP/qio.out")"
grep -q "read 65536/65536" "$E2E_TMP/qio.out" || fail "qemu-io: $(cat "$E2E_TMP/qio.out")"
ok "once buffers freed its read ran"
wait_until 60 "buffers released" stat_is buffer_bytes 0
expect_ok "budget back" keelctl rpc nbd_set_options "{\"buffer_budget\":$((512 * MIB))}"

keeld_alive || fail "keeld died"
stop_keeld || fail "keeld did not stop cleanly"
ok "keeld stopped cleanly"
