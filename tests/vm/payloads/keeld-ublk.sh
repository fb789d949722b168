#!/bin/sh
# Guest payload of ctest vm_keeld_ublk (Debian's 6.12 kernel with ublk_drv): keeld serves
# a 2-replica volume as /dev/ublkb0; ext4 on it; a replica faulted under fio verify; kill -9
# of keeld with the file system mounted and a write in flight, restart, re-attach
# (UBLK_F_USER_RECOVERY), e2fsck; clean errors; stop; shutdown deletes devices.
# Prints "KEEL-VM-STEP ..." progress markers; init prints the final PASS/FAIL marker.
set -u
N=${KEEL_VM_NAME:-vm_keeld_ublk}
S=/tmp/keeld.sock
ST=/tmp/keel-state
K="keelctl -s $S --timeout 120"

step() { echo "KEEL-VM-STEP $*"; }
fail() {
	echo "KEEL-VM-FAIL $N: $*"
	echo "---- keeld.log (tail)"
	tail -n 40 "$ST/keeld.log" 2>/dev/null
	dmesg | grep -i ublk | tail -n 20
	exit 1
}
keeld_pid() { head -n1 "$ST/keeld.lock" 2>/dev/null; }
start_keeld() {
	# Two reactors in interrupt mode: TCG has 2 slow vCPUs, busy polling would starve fio/mkfs.
	keeld --cpus 0-1 --mode interrupt --rpc-socket "$S" --state-dir "$ST" ||
		fail "keeld did not start"
}
expect_fail() { # WHAT PATTERN CMD...: CMD must exit 1 and print PATTERN on stderr
	what=$1 pat=$2
	shift 2
	"$@" >/tmp/out 2>/tmp/err
	rc=$?
	[ "$rc" -eq 1 ] || fail "$what: exit $rc, expected 1 ($(cat /tmp/out /tmp/err))"
	grep -q "$pat" /tmp/err || fail "$what: message '$(cat /tmp/err)' lacks '$pat'"
	step "$what -> $(head -n1 /tmp/err)"
}
wait_state() { # ID STATE SECONDS
	i=0
	while [ $i -lt $(($3 * 5)) ]; do
		$K --json rpc ublk_get_disks "{\"ublk_id\":$1}" 2>/dev/null |
			grep -q "\"state\": \"$2\"" && return 0
		sleep 0.2
		i=$((i + 1))
	done
	return 1
}

[ -c /dev/ublk-control ] || fail "/dev/ublk-control missing after insmod ublk_drv"
mkdir -p /mnt/a
start_keeld
pid=$(keeld_pid)
for t in /proc/$pid/task/*; do
	set -- $(cat "$t/stat")
	[ $(($9 & 0x80000)) -ne 0 ] || fail "thread $2 of keeld lacks PF_MEMALLOC_NOIO (flags $9)"
done
step "PR_SET_IO_FLUSHER on every keeld thread; $(grep VmLck /proc/$pid/status | tr -s ' \t' ' ')"

$K volume create v --size 128M --replica /tmp/r0 --replica /tmp/r1 >/dev/null ||
	fail "volume create"
out=$($K export start v --ublk 0) || fail "export start --ublk: $out"
[ "$out" = "serving v as /dev/ublkb0" ] || fail "unexpected answer '$out'"
[ -b /dev/ublkb0 ] || fail "/dev/ublkb0 missing"
[ "$(cat /sys/block/ublkb0/size)" = 262144 ] || fail "size $(cat /sys/block/ublkb0/size) sectors"
nq=$(ls /sys/block/ublkb0/mq | wc -l)
step "/dev/ublkb0 up: $nq queues, $(cat /sys/block/ublkb0/queue/logical_block_size)-byte blocks," \
	"max $(cat /sys/block/ublkb0/queue/max_sectors_kb) KiB, write cache" \
	"'$(cat /sys/block/ublkb0/queue/write_cache)', discard max" \
	"$(cat /sys/block/ublkb0/queue/discard_max_bytes)"
[ "$nq" = 2 ] || fail "expected 2 queues (one per reactor), got $nq"
$K export list

mkfs.ext4 -q -F /dev/ublkb0 || fail "mkfs.ext4"
mount -t ext4 /dev/ublkb0 /mnt/a || fail "mount"
for i in 1 2 3 4 5 6; do
	dd if=/dev/urandom of=/mnt/a/f$i bs=64k count=$((i * 4)) 2>/dev/null || fail "write f$i"
done
(cd /mnt/a && md5sum f* >/tmp/sums) || fail "md5sum"
sync
umount /mnt/a || fail "umount"
echo 3 >/proc/sys/vm/drop_caches
mount -t ext4 /dev/ublkb0 /mnt/a || fail "mount again"
(cd /mnt/a && md5sum -c -s /tmp/sums) || fail "checksums after remount"
step "mkfs, mount, write, umount, mount, verify on /dev/ublkb0: ok"

# A replica that fails writes under fio verify: the volume faults it, fio sees nothing.
truncate -s 33M /tmp/fr0 /tmp/fr1
$K bdev create aio fr0 /tmp/fr0 >/dev/null && $K bdev create aio fr1 /tmp/fr1 >/dev/null ||
	fail "aio bdevs for the fault test"
$K rpc bdev_error_create '{"base_name":"fr0","name":"fe0"}' >/dev/null || fail "error bdev"
$K rpc volume_create '{"name":"fv","size":33554432,"replica_bdevs":["fe0","fr1"]}' >/dev/null ||
	fail "volume fv"
out=$($K export start fv --ublk 1 --queue-depth 32) || fail "export fv: $out"
$K rpc bdev_error_inject_error '{"name":"fe0","io_type":"write","num":3,"every_nth":100}' \
	>/dev/null || fail "inject"
if command -v fio >/dev/null 2>&1; then
	fio --name=fault --filename=/dev/ublkb1 --ioengine=libaio --direct=1 --bs=4k --iodepth=16 \
		--rw=randwrite --size=32M --verify=crc32c --do_verify=1 --randrepeat=1 \
		--output=/tmp/fio.out >/dev/null 2>/tmp/fio.err || fail "fio: $(cat /tmp/fio.err)"
	grep -q 'err= 0' /tmp/fio.out || fail "fio saw errors: $(grep -m3 err= /tmp/fio.out)"
	step "fio randwrite + crc32c verify over a failing replica: $(grep -m1 -o 'IOPS=[^,]*' /tmp/fio.out), err=0"
else
	dd if=/dev/urandom of=/tmp/pat bs=1M count=32 2>/dev/null
	dd if=/tmp/pat of=/dev/ublkb1 bs=64k oflag=direct 2>/dev/null || fail "dd to ublkb1"
	echo 3 >/proc/sys/vm/drop_caches
	[ "$(md5sum </tmp/pat)" = "$(dd if=/dev/ublkb1 bs=64k iflag=direct 2>/dev/null | md5sum)" ] ||
		fail "ublkb1 read back differs"
	step "dd + checksum over a failing replica: ok"
fi
$K --json rpc volume_get '{"name":"fv"}' | grep -q '"faulted"' ||
	fail "replica fe0 not faulted: $($K --json rpc volume_get '{"name":"fv"}')"
$K export stop /dev/ublkb1 >/dev/null || fail "stop ublkb1"
[ -e /sys/block/ublkb1 ] && fail "/sys/block/ublkb1 still there after stop"
[ -e /dev/ublkc1 ] && fail "/dev/ublkc1 still there after stop"
step "replica faulted, device stopped and deleted"

# kill -9 with the file system mounted and a write in flight; the restarted keeld
# re-attaches from its records and the held I/O completes.
pid=$(keeld_pid)
(dd if=/dev/urandom of=/mnt/a/during bs=64k count=64 conv=fsync 2>/dev/null &&
	md5sum /mnt/a/during >/tmp/during.sum && echo ok >/tmp/during.ok) &
writer=$!
kill -9 "$pid" || fail "kill -9 $pid"
while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
step "keeld $pid killed with /dev/ublkb0 mounted"
sleep 1
[ -f /tmp/during.ok ] && step "(the write finished before the kill)"
start_keeld
wait_state 0 running 60 || fail "/dev/ublkb0 was not re-attached"
step "re-attached: $(grep -o 'ublk0 (bdev v): recovered.*' "$ST/keeld.log" | tail -n1)"
wait "$writer"
[ -f /tmp/during.ok ] || fail "the write issued around the kill failed"
echo 3 >/proc/sys/vm/drop_caches
(cd /mnt/a && md5sum -c -s /tmp/sums) || fail "old files after the restart"
md5sum -c -s /tmp/during.sum || fail "file written around the restart"
dd if=/dev/urandom of=/mnt/a/after bs=64k count=16 2>/dev/null || fail "write after restart"
md5sum /mnt/a/after >/tmp/after.sum
sync
umount /mnt/a || fail "umount after restart"
echo 3 >/proc/sys/vm/drop_caches
e2fsck -fn /dev/ublkb0 >/tmp/fsck 2>&1 || { cat /tmp/fsck; fail "e2fsck after the restart"; }
mount -t ext4 /dev/ublkb0 /mnt/a || fail "mount after fsck"
md5sum -c -s /tmp/after.sum || fail "file written after the restart"
(cd /mnt/a && md5sum -c -s /tmp/sums) || fail "old files after remount"
umount /mnt/a || fail "umount"
step "after kill -9 + restart: old files, a write held over the restart, new writes, e2fsck: ok"

# Clean errors; nothing half-created.
truncate -s 16M /tmp/d1
$K bdev create aio d1 /tmp/d1 >/dev/null || fail "bdev d1"
expect_fail "start on an id keeld serves" "already served" $K export start d1 --ublk 0
expect_fail "start on a missing bdev" "not found" $K export start nope --ublk 5
expect_fail "too many queues" "num_queues" $K export start d1 --ublk 5 --queues 9
expect_fail "queue depth out of range" "queue_depth" $K export start d1 --ublk 5 --queue-depth 5000
expect_fail "stop of a device keeld does not serve" "not served" $K export stop /dev/ublkb7
[ -e /dev/ublkc5 ] && fail "/dev/ublkc5 exists after failed starts"
out=$($K export start d1 --ublk) || fail "start without an id: $out"
step "kernel picked ${out##* } for d1"
$K export list
$K export stop "${out##* }" >/dev/null || fail "stop ${out##* }"
$K export stop /dev/ublkb0 >/dev/null || fail "stop /dev/ublkb0"
[ -e /sys/block/ublkb0 ] && fail "/sys/block/ublkb0 still there after stop"
[ "$($K --json rpc ublk_get_disks)" = "[]" ] || fail "disks left: $($K --json rpc ublk_get_disks)"
grep -q '"disks": \[\]' "$ST/ublk-disks.json" || fail "records still list disks: $(cat "$ST/ublk-disks.json")"
step "stop: ok"

# A clean shutdown (SIGTERM) stops and deletes devices.
$K export start d1 --ublk 2 >/dev/null || fail "start ublkb2"
pid=$(keeld_pid)
kill -TERM "$pid"
i=0
while kill -0 "$pid" 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
kill -0 "$pid" 2>/dev/null && fail "keeld did not exit on SIGTERM"
[ -e /sys/block/ublkb2 ] && fail "/dev/ublkb2 still there after keeld shut down"
step "shutdown deletes devices: ok"
# The console runs with "quiet": look for kernel warnings ourselves.
if dmesg | grep -qE 'WARNING:|BUG:|Call Trace'; then
	dmesg | grep -B5 -A30 -E 'WARNING:|BUG:|Call Trace' | head -n 80
	fail "kernel warning during the test"
fi
if grep -qE 'AddressSanitizer|LeakSanitizer|runtime error:' "$ST/keeld.log"; then
	grep -A30 -E 'AddressSanitizer|LeakSanitizer|runtime error:' "$ST/keeld.log" | head -n 60
	fail "sanitizer report in keeld.log"
fi
exit 0
