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
max=$(cat /proc/sys/fs/aio-max-nr) || skip "no /proc/sys/fs/aio-max-nr"
used=$(cat /proc/sys/fs/aio-nr)
[ "$max" -ge "$NEED" ] || skip "fs.aio-max-nr is $max; keeld on 2 reactors needs $NEED (sysctl fs.aio-max-nr=65536)"
[ $((max - used)) -ge "$NEED" ] ||
	skip "other processes hold $used of fs.aio-max-nr=$max; keeld needs $NEED free"

D=$E2E_TMP/disks
mkdir -p "$D"
# Sparse files of the full replica size (volume + 1 MiB of labels): keeld uses them as
# they are, so only the labels are written (a new file would be fallocated).
for i in $(seq 1 "$N"); do
	truncate -s 65M "$D/v$i.a" "$D/v$i.b" || fail "truncate $D/v$i.*"
done
KEEL_E2E_CPUS=0-1 start_keeld

# Four keelctl at a time hide the round trips; keeld serialises nothing per volume here.
if ! seq 1 "$N" | xargs -P 4 -I{} "$KEEL_BIN/keelctl" -s "$SOCK" volume create v{} --size 64M \
	--replica "$D/v{}.a" --replica "$D/v{}.b" >"$E2E_TMP/create.out" 2>&1; then
	fail "volume create failed: $(grep -v '^created' "$E2E_TMP/create.out" | head -n 3)"
fi
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
