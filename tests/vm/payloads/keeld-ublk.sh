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

DEVWORD=ublk
. /guest-lib.sh
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
start_keeld
check_io_flusher

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

fs_make_and_verify /dev/ublkb0

# An idle device costs nothing: its queues sleep in the kernel, their rings' fds in epoll.
sync
$K --json reactor stats --interval 2000 >/tmp/stats.json || fail "reactor stats"
idle=$(jq -r '[.reactors.reactors[] | "\(.wakeups_per_sec * 10 | round / 10)"] | join(" ")' /tmp/stats.json)
[ "$(jq '[.reactors.reactors[] | select(.wakeups_per_sec > 20)] | length' /tmp/stats.json)" = 0 ] ||
	fail "an idle /dev/ublkb0 wakes reactors: $idle wake-ups/s"
step "idle with /dev/ublkb0 mounted: $idle wake-ups/s per reactor (bound 20)"

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
# re-attaches from its records and the held I/O completes. /dev/ublkb3 is left out of
# the records: the restarted keeld must refuse to start over it and re-attach it on
# request (ublk_recover_disk).
truncate -s 16M /tmp/d1
$K bdev create aio d1 /tmp/d1 >/dev/null || fail "bdev d1"
$K export start d1 --ublk 3 >/dev/null || fail "start ublkb3"
dd if=/dev/urandom of=/tmp/pat3 bs=1M count=4 2>/dev/null
dd if=/tmp/pat3 of=/dev/ublkb3 bs=1M oflag=direct 2>/dev/null || fail "write ublkb3"
pid=$(keeld_pid)
(dd if=/dev/urandom of=/mnt/a/during bs=64k count=64 conv=fsync 2>/dev/null &&
	md5sum /mnt/a/during >/tmp/during.sum && echo ok >/tmp/during.ok) &
writer=$!
kill -9 "$pid" || fail "kill -9 $pid"
while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
step "keeld $pid killed with /dev/ublkb0 mounted"
sleep 1
[ -f /tmp/during.ok ] && step "(the write finished before the kill)"
grep -q '"ublk_id": 3' "$ST/ublk-disks.json" || fail "ublkb3 not recorded: $(cat "$ST/ublk-disks.json")"
echo '{"version": 1, "disks": [{"ublk_id": 0, "bdev_name": "v"}]}' >"$ST/ublk-disks.json"
start_keeld
wait_state 0 running 60 || fail "/dev/ublkb0 was not re-attached"
step "re-attached: $(grep -o 'ublk0 (bdev v): recovered.*' "$ST/keeld.log" | tail -n1)"
wait "$writer"
[ -f /tmp/during.ok ] || fail "the write issued around the kill failed"
fs_verify_after_restart /dev/ublkb0

# A device of a dead keeld that this keeld did not record: busy in the kernel, and
# re-attached on request with its data.
# d1 is a plain aio bdev: plain bdevs persist, so the restarted keeld brings it back.
n=0
until $K --json rpc bdev_get_bdevs '{"name":"d1"}' >/dev/null 2>&1; do
	n=$((n + 1))
	[ $n -le 300 ] || fail "bdev d1 was not restored after the restart"
	sleep 0.1
done
expect_fail "start on an id in use in the kernel" "in use in the kernel" $K export start d1 --ublk 3
[ "$($K --json rpc ublk_recover_disk '{"bdev_name":"d1","ublk_id":3}')" = 3 ] ||
	fail "ublk_recover_disk of ublkb3"
[ "$(md5sum </tmp/pat3)" = "$(dd if=/dev/ublkb3 bs=1M count=4 iflag=direct 2>/dev/null | md5sum)" ] ||
	fail "ublkb3 data after ublk_recover_disk"
# Write-zeroes (util-linux blkdiscard -z: BLKZEROOUT; by path, busybox sh prefers its
# own applet) and discard reach the bdev.
zero=$(dd if=/dev/zero bs=1M count=1 2>/dev/null | md5sum)
/usr/local/sbin/blkdiscard -z -o 0 -l 1048576 /dev/ublkb3 || fail "write-zeroes on ublkb3"
[ "$(dd if=/dev/ublkb3 bs=1M count=1 iflag=direct 2>/dev/null | md5sum)" = "$zero" ] ||
	fail "ublkb3 not zero after write-zeroes"
/usr/local/sbin/blkdiscard -o 1048576 -l 1048576 /dev/ublkb3 || fail "discard on ublkb3"
[ "$(dd if=/dev/ublkb3 bs=1M skip=2 count=2 iflag=direct 2>/dev/null | md5sum)" = \
	"$(dd if=/tmp/pat3 bs=1M skip=2 count=2 2>/dev/null | md5sum)" ] ||
	fail "ublkb3 data beyond the discarded range changed"
$K export stop /dev/ublkb3 >/dev/null || fail "stop ublkb3"
step "ublk_recover_disk re-attached an unrecorded device of the dead keeld; data intact;" \
	"write-zeroes and discard ok"

# Clean errors; nothing half-created.
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

# Hot remove: deleting the bdev under a device stops and deletes the device.
truncate -s 16M /tmp/d2
$K bdev create aio d2 /tmp/d2 >/dev/null || fail "bdev d2"
$K export start d2 --ublk 4 >/dev/null || fail "start ublkb4"
$K bdev delete d2 >/dev/null || fail "bdev delete d2 under /dev/ublkb4"
i=0
while [ -e /sys/block/ublkb4 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
[ -e /sys/block/ublkb4 ] && fail "/dev/ublkb4 still there after its bdev was deleted"
[ "$($K --json rpc ublk_get_disks)" = "[]" ] || fail "disks left: $($K --json rpc ublk_get_disks)"
step "bdev deleted under /dev/ublkb4: device stopped and deleted"

# The target: destroy stops its devices; a target on CPU 0 only gives devices one queue.
$K export start d1 --ublk 2 >/dev/null || fail "start ublkb2"
[ "$($K --json rpc ublk_destroy_target)" = true ] || fail "ublk_destroy_target"
[ -e /sys/block/ublkb2 ] && fail "/dev/ublkb2 still there after ublk_destroy_target"
[ "$($K --json rpc ublk_create_target '{"cpumask":"0x1"}')" = true ] || fail "ublk_create_target 0x1"
expect_fail "a second target" "already exists" $K rpc ublk_create_target
expect_fail "two queues on a one-reactor target" "must be 1..1" $K export start d1 --ublk 2 --queues 2
$K export start d1 --ublk 2 >/dev/null || fail "start ublkb2 on the one-reactor target"
[ "$(ls /sys/block/ublkb2/mq | wc -l)" = 1 ] || fail "ublkb2 has $(ls /sys/block/ublkb2/mq | wc -l) queues"
step "ublk_destroy_target stopped ublkb2; a target on CPU 0 serves it with one queue"

# A clean shutdown (SIGTERM) stops and deletes devices.
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
check_sanitizer
exit 0
