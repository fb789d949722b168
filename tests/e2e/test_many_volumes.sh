#!/usr/bin/env bash
# Many volumes on one keeld with 2 reactors: 256 volumes of 2 replicas on sparse 64 MiB
# files all come online, and exported ones take I/O. Each aio channel used to call
# io_setup for its own context, so the system-wide fs.aio-max-nr (65536) ran out near
# the 128th volume ("replica v128.r0: cannot get an I/O channel"); now the aio bdevs of
# a keel thread share one context (docs/bdev.md, "How many volumes fit").
. "$(dirname "$0")/lib.sh"

N=${KEEL_E2E_MANY_VOLUMES:-256}
# One context of 1024 events per keel thread doing aio: the main thread and one NBD
# worker per reactor, and one spare (a rebuild thread).
NEED=$((4 * 1024))

command -v jq >/dev/null || skip "jq is needed"
command -v qemu-io >/dev/null || skip "qemu-io is needed (package qemu-utils)"
[ "$(nproc)" -ge 2 ] || skip "needs 2 CPUs for keeld --cpus 0-1"
need_aio_free "$NEED"
KEEL_E2E_CPUS=0-1 start_keeld

make_volumes "$N"
ok "created $N volumes"

keelctl --json volume list >"$E2E_TMP/list.json" || fail "volume list"
count=$(jq 'length' "$E2E_TMP/list.json")
online=$(jq '[.[] | select(.state == "online" and
	([.replicas[] | select(.state == "healthy")] | length) == 2)] | length' "$E2E_TMP/list.json")
[ "$count" -eq "$N" ] || fail "volume list has $count volumes, expected $N"
[ "$online" -eq "$N" ] || fail "only $online of $N volumes are online with 2 healthy replicas"
ok "all $N volumes online, 2 healthy replicas each"
grep -q "cannot get an I/O channel" "$KEELD_LOG" && fail "keeld logged an I/O channel failure"

# The first and the last volume take I/O from an NBD worker thread: those threads open
# their own aio channels (and contexts) now.
for v in v1 "v$N"; do
	expect_ok "export $v" keelctl export start "$v" --socket "$E2E_TMP/$v.nbd"
	uri="nbd+unix:///$v?socket=$E2E_TMP/$v.nbd"
	out=$(qemu-io -f raw "$uri" -c "write -P 0x5a 0 1M" -c "read -P 0x5a 0 1M" 2>&1)
	case "$out" in
	*"read 1048576/1048576"*) ok "$v: 1 MiB written and read back" ;;
	*) fail "$v: I/O failed: $out" ;;
	esac
done
keeld_alive || fail "keeld died"
stop_keeld || fail "keeld exited with an error"
ok "keeld stopped cleanly with $N volumes"
