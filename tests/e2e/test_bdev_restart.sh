#!/usr/bin/env bash
# Plain bdevs and their exports survive a restart of keeld (clean or kill -9), as
# volumes do: an aio bdev over a file, its export, and an NBD client bdev. A deleted
# bdev stays deleted. malloc bdevs are not kept (their contents would not be).
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
expect_ok "malloc m" keelctl bdev create malloc m 1M
[ "$(bdev_names)" = "m p q " ] || fail "bdevs before restart: $(bdev_names)"

names_are() {
	[ "$(bdev_names)" = "$1" ]
}

stop_keeld || fail "keeld exited with an error"
start_keeld
# q's server is this keeld's own export, which starts after the bdevs: q is retried.
wait_until 30 "bdevs p and q after a clean restart (have: $(bdev_names))" names_are "p q "
expect_ok "export list" keelctl export list
case "$OUT" in *p.nbd*) ;; *) fail "export p not restored: $OUT" ;; esac
ok "aio and nbd_client bdevs and the export came back after a clean restart"

kill -KILL "$KEELD_PID"
wait "$KEELD_PID" 2>/dev/null
KEELD_PID=
start_keeld
wait_until 30 "bdevs p and q after kill -9" names_are "p q "
ok "and after kill -9"

expect_ok "delete q" keelctl bdev delete q
stop_keeld || fail "keeld exited with an error"
start_keeld
names_are "p " || fail "a deleted bdev came back: $(bdev_names)"
ok "a deleted bdev stays deleted"

keeld_alive || fail "keeld died"
stop_keeld || fail "keeld exited with an error (sanitizer report?)"
echo "PASS $E2E_NAME"
