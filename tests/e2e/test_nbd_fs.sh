#!/usr/bin/env bash
# A real filesystem over a keel NBD socket export: nbdfuse turns the export into a
# file, a loop device turns that into a block device, mkfs.ext4 + mount + files.
# Then keeld restarts, the same aio bdev is created and exported again, and the files
# must read back with the same checksums.
. "$(dirname "$0")/lib.sh"

[ "$(id -u)" = 0 ] || skip "needs root (loop devices, mount)"
[ -c /dev/fuse ] || skip "no /dev/fuse"
for tool in nbdfuse fusermount3 losetup mkfs.ext4 mount umount sha256sum; do
	command -v $tool >/dev/null || skip "$tool is not installed"
done
losetup -f >/dev/null 2>&1 || skip "no free loop device"

IMG=$E2E_TMP/disk.img
NBD=$E2E_TMP/nbd.sock
FUSEDIR=$E2E_TMP/fuse
MNT=$E2E_TMP/mnt
LOOP=
FUSE_PID=
mkdir -p "$FUSEDIR" "$MNT"
truncate -s 256M "$IMG"

fs_cleanup() {
	local rc=$?

	mountpoint -q "$MNT" && umount "$MNT"
	[ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
	mountpoint -q "$FUSEDIR" && fusermount3 -u "$FUSEDIR"
	[ -n "$FUSE_PID" ] && kill "$FUSE_PID" 2>/dev/null
	(exit $rc) # e2e_cleanup exits with the status it finds in $?
	e2e_cleanup
}
trap fs_cleanup EXIT

attach() {
	nbdfuse "$FUSEDIR/nbd" "nbd+unix:///disk0?socket=$NBD" &
	FUSE_PID=$!
	wait_until 60 "nbdfuse showing the export" test -e "$FUSEDIR/nbd"
	LOOP=$(losetup -f --show "$FUSEDIR/nbd") || fail "losetup"
}

detach() {
	umount "$MNT" || fail "umount"
	losetup -d "$LOOP" || fail "losetup -d"
	LOOP=
	fusermount3 -u "$FUSEDIR" || fail "fusermount3 -u"
	wait "$FUSE_PID" 2>/dev/null
	FUSE_PID=
}

start_keeld
expect_ok "create aio bdev" keelctl bdev create aio d0 "$IMG"
expect_ok "export" keelctl export start d0 --socket "$NBD" --name disk0
attach
mkfs.ext4 -q -F "$LOOP" || fail "mkfs.ext4 on the export"
mount "$LOOP" "$MNT" || fail "mount"
ok "mkfs.ext4 + mount over nbdfuse + loop"
for i in 1 2 3 4; do
	head -c $((i * 3))M /dev/urandom >"$MNT/file$i"
done
mkdir -p "$MNT/dir"
for i in $(seq 1 200); do echo "small $i" >"$MNT/dir/s$i"; done
sync
(cd "$MNT" && find . -type f | sort | xargs sha256sum) >"$E2E_TMP/sums"
detach
ok "files written, unmounted"

stop_keeld || fail "keeld did not stop cleanly"
start_keeld
# Plain bdevs and their exports persist in the state dir: keeld restores both itself.
export_back() { keelctl export list 2>/dev/null | grep -q disk0; }
wait_until 60 "aio bdev and export restored" export_back
ok "keeld restored the aio bdev and its export"
attach
mount "$LOOP" "$MNT" || fail "mount after restart"
(cd "$MNT" && sha256sum -c --quiet "$E2E_TMP/sums") || fail "checksums differ after restart"
[ "$(ls "$MNT/dir" | wc -l)" = 200 ] || fail "small files missing"
ok "after a keeld restart every file reads back with the same checksum"
detach
fsck.ext4 -n -f "$IMG" >/dev/null 2>&1 || fail "fsck found errors in the image"
ok "fsck clean"
stop_keeld || fail "keeld did not stop cleanly"
