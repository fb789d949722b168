#!/usr/bin/env bash
# Plain bdevs and their exports survive a restart of keeld (clean or kill -9), as
# volumes do: an aio bdev over a file, its export, and an NBD client bdev over that
# export with an export of its own (its server, this keeld's export p, starts after the
# bdevs: the client bdev is retried and its export waits for it). A deleted bdev stays
# deleted. malloc bdevs are not kept (their contents would not be).
. "$(dirname "$0")/lib.sh"

D=$E2E_TMP/disks
mkdir -p "$D"
truncate -s 16M "$D/p.img"
RSOCK=$E2E_TMP/p.nbd

bdev_names() {
	keelctl rpc bdev_get_bdevs | jq -r '.[].name' | sort | tr '\n' ' '
}

start_keeld
expect_ok "aio bdev p" keelctl bdev create aio p "$D/p.img"
expect_ok "export p" keelctl export start p --socket "$RSOCK"
expect_ok "nbd client bdev q over export p" keelctl bdev create remote q "nbd+unix:///p?socket=$RSOCK"
expect_ok "export q" keelctl export start q --socket "$E2E_TMP/q.nbd"
expect_ok "malloc m" keelctl bdev create malloc m 1M
[ "$(bdev_names)" = "m p q " ] || fail "bdevs before restart: $(bdev_names)"

names_are() {
	[ "$(bdev_names)" = "$1" ]
}

stop_keeld || fail "keeld exited with an error"
start_keeld
# q's server is this keeld's own export, which starts after the bdevs: q is retried.
wait_until 30 "bdevs p and q after a clean restart (have: $(bdev_names))" names_are "p q "
exports_has() {
	keelctl export list 2>/dev/null | grep -q "$1"
}
wait_until 30 "export p restored" exports_has p.nbd
# q came back after the exports were restored: its export waited for it.
wait_until 30 "export q restored once q is back" exports_has q.nbd
ok "aio and nbd_client bdevs and the export came back after a clean restart"

kill -KILL "$KEELD_PID"
wait "$KEELD_PID" 2>/dev/null
KEELD_PID=
start_keeld
wait_until 30 "bdevs p and q after kill -9" names_are "p q "
ok "and after kill -9"

wait_until 30 "export q restored after kill -9" exports_has q.nbd
expect_ok "stop export q" keelctl export stop q
expect_ok "delete q" keelctl bdev delete q
stop_keeld || fail "keeld exited with an error"
start_keeld
names_are "p " || fail "a deleted bdev came back: $(bdev_names)"
ok "a deleted bdev stays deleted"

keeld_alive || fail "keeld died"
stop_keeld || fail "keeld exited with an error (sanitizer report?)"
echo "PASS $E2E_NAME"
