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

step() { echo "KEEL-VM-STEP $*"; }
fail() {
	echo "KEEL-VM-FAIL $N: $*"
	echo "---- keeld.log (tail)"
	tail -n 40 "$ST/keeld.log" 2>/dev/null
	dmesg | grep -i nbd | tail -n 20
	exit 1
}
keeld_pid() { head -n1 "$ST/keeld.lock" 2>/dev/null; }
start_keeld() {
	# Two reactors in interrupt mode: TCG has 2 slow vCPUs, busy polling would starve fio/mkfs.
	keeld --cpus 0-1 --mode interrupt --rpc-socket "$S" --state-dir "$ST" ||
		fail "keeld did not start"
}
# expect_fail WHAT PATTERN CMD...: CMD must exit 1 and print PATTERN on stderr.
expect_fail() {
	what=$1 pat=$2
	shift 2
	"$@" >/tmp/out 2>/tmp/err
	rc=$?
	[ "$rc" -eq 1 ] || fail "$what: exit $rc, expected 1 ($(cat /tmp/out /tmp/err))"
	grep -q "$pat" /tmp/err || fail "$what: message '$(cat /tmp/err)' lacks '$pat'"
	grep -q 'Sanitizer' /tmp/err && fail "$what: sanitizer report from keelctl: $(cat /tmp/err)"
	step "$what -> $(head -n1 /tmp/err)"
}
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

mkdir -p /mnt/a
truncate -s 128M "$IMG" || fail "truncate"
start_keeld
$K bdev create aio disk0 "$IMG" || fail "bdev create"
# PR_SET_IO_FLUSHER on every thread (reactors, blocking pool, watchdog): the kernel shows
# PF_MEMALLOC_NOIO (0x80000) in field 9 of /proc/PID/task/TID/stat.
pid=$(keeld_pid)
nt=0
for t in /proc/$pid/task/*; do
	set -- $(cat "$t/stat")
	[ $(( $9 & 0x80000 )) -ne 0 ] || fail "thread $2 of keeld lacks PF_MEMALLOC_NOIO (flags $9)"
	nt=$((nt + 1))
done
step "PR_SET_IO_FLUSHER on all $nt keeld threads; $(grep VmLck /proc/$pid/status | tr -s ' \t' ' ')"
out=$($K export start disk0 --nbd /dev/nbd0 --dead-timeout 120) || fail "export start --nbd: $out"
[ "$out" = "serving disk0 as /dev/nbd0" ] || fail "unexpected answer '$out'"
step "connected: $out; pid $(cat /sys/block/nbd0/pid) backend $(cat /sys/block/nbd0/backend 2>/dev/null)"
[ "$(cat /sys/block/nbd0/size)" = 262144 ] || fail "size $(cat /sys/block/nbd0/size) sectors"
[ "$(cat /sys/block/nbd0/queue/logical_block_size)" = 512 ] || fail "block size"
$K export list
nq=$(ls /sys/block/nbd0/mq | wc -l)
step "hardware queues: $nq"
[ "$nq" = 2 ] || fail "expected 2 queues (one socket per reactor), got $nq"

mkfs.ext4 -q -F /dev/nbd0 || fail "mkfs.ext4"
mount -t ext4 /dev/nbd0 /mnt/a || fail "mount"
for i in 1 2 3 4 5 6; do
	dd if=/dev/urandom of=/mnt/a/f$i bs=64k count=$((i * 4)) 2>/dev/null || fail "write f$i"
done
(cd /mnt/a && md5sum f* >/tmp/sums) || fail "md5sum"
sync
umount /mnt/a || fail "umount"
echo 3 >/proc/sys/vm/drop_caches
mount -t ext4 /dev/nbd0 /mnt/a || fail "mount again"
(cd /mnt/a && md5sum -c -s /tmp/sums) || fail "checksums after remount"
step "mkfs, mount, write, umount, mount, verify: ok"

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
# The aio bdev is not persisted: until it exists again the device waits for it.
wait_state /dev/nbd0 waiting-for-bdev 10 || fail "restarted keeld does not list /dev/nbd0 as waiting"
$K bdev create aio disk0 "$IMG" || fail "bdev create after restart"
wait_state /dev/nbd0 running 20 || fail "/dev/nbd0 was not reattached"
grep -q 'reattached' "$ST/keeld.log" || fail "no reattach in the log"
step "reattached: $(grep -o 'nbd0: reattached.*' "$ST/keeld.log" | tail -n1)"
grep -q 'LINK_DEAD' "$ST/keeld.log" && step "keeld logged LINK_DEAD"
wait "$writer"
[ -f /tmp/during.ok ] || fail "the write issued while keeld was dead failed"
echo 3 >/proc/sys/vm/drop_caches
(cd /mnt/a && md5sum -c -s /tmp/sums) || fail "old files after the restart"
md5sum -c -s /tmp/during.sum || fail "file written during the restart"
dd if=/dev/urandom of=/mnt/a/after bs=64k count=16 2>/dev/null || fail "write after restart"
md5sum /mnt/a/after >/tmp/after.sum
sync
umount /mnt/a || fail "umount after restart"
echo 3 >/proc/sys/vm/drop_caches
e2fsck -fn /dev/nbd0 >/tmp/fsck 2>&1 || { cat /tmp/fsck; fail "e2fsck after the restart"; }
mount -t ext4 /dev/nbd0 /mnt/a || fail "mount after fsck"
md5sum -c -s /tmp/after.sum || fail "file written after the restart"
(cd /mnt/a && md5sum -c -s /tmp/sums) || fail "old files after remount"
umount /mnt/a || fail "umount"
step "after kill -9 + restart: old files, a write held over the restart, new writes, e2fsck: ok"

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
# A sanitizer build reports to stderr, which is keeld.log once it detaches.
if grep -qE 'AddressSanitizer|LeakSanitizer|runtime error:' "$ST/keeld.log"; then
	grep -A30 -E 'AddressSanitizer|LeakSanitizer|runtime error:' "$ST/keeld.log" | head -n 60
	fail "sanitizer report in keeld.log"
fi
exit 0
