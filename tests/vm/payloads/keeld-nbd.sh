#!/bin/sh
# Guest payload of ctest vm_keeld_nbd: keeld serves an aio bdev (a file in the guest's
# tmpfs) as /dev/nbd0 through keel's own netlink code; ext4 on it survives a kill -9 of
# keeld (the restarted keeld reattaches with RECONFIGURE); stop and error paths are clean.
# Prints "KEEL-VM-STEP ..." progress markers; init prints the final PASS/FAIL marker.
set -u
N=${KEEL_VM_NAME:-vm_keeld_nbd}
S=/tmp/keeld.sock
ST=/tmp/keel-state
K="keelctl -s $S --timeout 60"
IMG=/tmp/disk.img

DEVWORD=nbd
. /guest-lib.sh
wait_state() { # DEV STATE SECONDS
	i=0
	while [ $i -lt $(($3 * 5)) ]; do
		$K --json rpc nbd_get_disks "{\"nbd_device\":\"$1\"}" 2>/dev/null |
			grep -q "\"state\": \"$2\"" && return 0
		sleep 0.2
		i=$((i + 1))
	done
	return 1
}

truncate -s 128M "$IMG" || fail "truncate"
start_keeld
$K bdev create aio disk0 "$IMG" || fail "bdev create"
check_io_flusher
out=$($K export start disk0 --nbd /dev/nbd0 --dead-timeout 120) || fail "export start --nbd: $out"
[ "$out" = "serving disk0 as /dev/nbd0" ] || fail "unexpected answer '$out'"
step "connected: $out; pid $(cat /sys/block/nbd0/pid) backend $(cat /sys/block/nbd0/backend 2>/dev/null)"
[ "$(cat /sys/block/nbd0/size)" = 262144 ] || fail "size $(cat /sys/block/nbd0/size) sectors"
[ "$(cat /sys/block/nbd0/queue/logical_block_size)" = 512 ] || fail "block size"
$K export list
nq=$(ls /sys/block/nbd0/mq | wc -l)
step "hardware queues: $nq"
[ "$nq" = 2 ] || fail "expected 2 queues (one socket per reactor), got $nq"

# WRITE_ZEROES: keel always advertises NBD_FLAG_SEND_WRITE_ZEROES; Linux 6.12+ acts on it
# (write_zeroes_max_bytes > 0, BLKZEROOUT becomes NBD_CMD_WRITE_ZEROES), 6.1 ignores the
# bit and zeroes by writing zero pages. Either way the range must read back as zeroes.
wz=$(cat /sys/block/nbd0/queue/write_zeroes_max_bytes)
step "kernel $(uname -r): write_zeroes_max_bytes $wz"
kmajor=$(uname -r | cut -d. -f1)
kminor=$(uname -r | cut -d. -f2)
if [ "$kmajor" -gt 6 ] || { [ "$kmajor" -eq 6 ] && [ "$kminor" -ge 12 ]; }; then
	[ "$wz" -gt 0 ] || fail "kernel $(uname -r) did not take NBD_FLAG_SEND_WRITE_ZEROES"
fi
zops() {
	$K rpc bdev_get_iostat '{"name":"disk0"}' | tr -d ' \n\t' |
		grep -o '"write_zeroes":{"ops":[0-9]*' | grep -o '[0-9]*$'
}
z0=$(zops) || fail "bdev_get_iostat"
dd if=/dev/urandom of=/tmp/rnd bs=64k count=16 2>/dev/null
dd if=/tmp/rnd of=/dev/nbd0 bs=64k count=16 oflag=direct 2>/dev/null || fail "write 1 MiB"
/usr/local/sbin/blkdiscard -z -o 0 -l 1048576 /dev/nbd0 || fail "blkdiscard -z"
dd if=/dev/nbd0 of=/tmp/back bs=64k count=16 iflag=direct 2>/dev/null || fail "read back"
dd if=/dev/zero of=/tmp/zero bs=64k count=16 2>/dev/null
cmp -s /tmp/back /tmp/zero || fail "blkdiscard -z: the range does not read back as zeroes"
z1=$(zops)
step "blkdiscard -z: zeroes read back; keeld write_zeroes ops $z0 -> $z1"
if [ "$wz" -gt 0 ] && [ "$z1" -le "$z0" ]; then
	fail "the kernel advertises write zeroes but keeld saw no NBD_CMD_WRITE_ZEROES"
fi

fs_make_and_verify /dev/nbd0

# kill -9 with the filesystem mounted; writes issued while keeld is dead wait in the
# kernel (dead-connection timeout) and complete after the reattach.
pid=$(keeld_pid)
kill -9 "$pid" || fail "kill -9 $pid"
while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
step "keeld $pid killed with /dev/nbd0 mounted"
(dd if=/dev/urandom of=/mnt/a/during bs=64k count=32 conv=fsync 2>/dev/null &&
	md5sum /mnt/a/during >/tmp/during.sum && echo ok >/tmp/during.ok) &
writer=$!
sleep 1
[ -f /tmp/during.ok ] && fail "a write completed while keeld was dead?"
start_keeld
# Plain bdevs persist in the state dir: the restarted keeld restores the aio bdev itself
# ("bdev disk0 restored") and reattaches the device (RECONFIGURE) without a new create.
wait_state /dev/nbd0 running 20 || fail "/dev/nbd0 was not reattached"
grep -q 'bdev disk0 restored' "$ST/keeld.log" || fail "the aio bdev was not restored"
grep -q 'reattached' "$ST/keeld.log" || fail "no reattach in the log"
step "reattached: $(grep -o 'nbd0: reattached.*' "$ST/keeld.log" | tail -n1)"
grep -q 'LINK_DEAD' "$ST/keeld.log" && step "keeld logged LINK_DEAD"
wait "$writer"
[ -f /tmp/during.ok ] || fail "the write issued while keeld was dead failed"
fs_verify_after_restart /dev/nbd0

# Clean errors: unknown device, device served by us, device busy in the kernel, bad index.
truncate -s 16M /tmp/disk1.img
$K bdev create aio disk1 /tmp/disk1.img || fail "bdev create disk1"
expect_fail "stop of a device keeld does not serve" "not served by this keeld" \
	$K export stop /dev/nbd7
expect_fail "start on a device keeld already serves" "already served" \
	$K export start disk1 --nbd /dev/nbd0
# An open of an unconfigured /dev/nbd1 gives it a config: CONNECT then says EBUSY.
sleep 30 </dev/nbd1 &
holder=$!
sleep 0.3
expect_fail "start on a device in use" "in use" $K export start disk1 --nbd /dev/nbd1
kill "$holder"
expect_fail "start on an impossible index" "nbd" $K export start disk1 --nbd /dev/nbd99999999
expect_fail "start on a missing bdev" "not found" $K export start nope --nbd
expect_fail "stop of a malformed device" "not an nbd device" $K export stop /dev/sda
out=$($K export start disk1 --nbd) || fail "start without a device: $out"
dev=${out##* }
step "kernel picked $dev for disk1"
$K export list
$K export stop "$dev" || fail "stop $dev"
$K export stop /dev/nbd0 || fail "stop /dev/nbd0"
[ -e /sys/block/nbd0/pid ] && fail "/dev/nbd0 still connected after stop"
[ "$($K --json rpc nbd_get_disks)" = "[]" ] || fail "disks left: $($K --json rpc nbd_get_disks)"
grep -q '"disks": \[\]' "$ST/nbd-disks.json" || fail "state file still lists disks: $(cat "$ST/nbd-disks.json")"
step "stop: ok"

# A device started, then a clean shutdown (SIGTERM) disconnects it.
$K export start disk1 --nbd /dev/nbd2 >/dev/null || fail "start nbd2"
pid=$(keeld_pid)
kill -TERM "$pid"
i=0
while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
kill -0 "$pid" 2>/dev/null && fail "keeld did not exit on SIGTERM"
[ -e /sys/block/nbd2/pid ] && fail "/dev/nbd2 still connected after keeld shut down"
grep -q 'nbd2 (bdev disk1): disconnected' "$ST/keeld.log" || fail "no disconnect logged at shutdown"
step "shutdown disconnects: ok"
check_sanitizer
exit 0
