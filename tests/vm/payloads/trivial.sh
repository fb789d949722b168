#!/bin/sh
# Smallest proof that the VM harness works: nbd.ko is loaded and ext4 can be made and
# mounted on a RAM-backed loop device.
set -e
[ -d /sys/block/nbd0 ] || { echo "KEEL-VM-FAIL $KEEL_VM_NAME: /sys/block/nbd0 missing"; exit 1; }
[ -d /sys/module/nbd ] || { echo "KEEL-VM-FAIL $KEEL_VM_NAME: nbd module not loaded"; exit 1; }
genl=$(ls /sys/module/nbd/parameters 2>/dev/null | tr '\n' ' ')
echo "nbd loaded, parameters: $genl"
dd if=/dev/zero of=/tmp/disk.img bs=1M count=64 2>/dev/null
mkfs.ext4 -q -F /tmp/disk.img
loop=$(losetup -f)
losetup "$loop" /tmp/disk.img
mkdir -p /mnt/t
mount -t ext4 "$loop" /mnt/t
echo hello-keel >/mnt/t/f
sync
umount /mnt/t
mount -t ext4 -o ro "$loop" /mnt/t
[ "$(cat /mnt/t/f)" = hello-keel ] || { echo "KEEL-VM-FAIL $KEEL_VM_NAME: readback mismatch"; exit 1; }
umount /mnt/t
losetup -d "$loop"
echo "ext4 on loop ($loop) ok"
