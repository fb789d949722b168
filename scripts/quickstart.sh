#!/usr/bin/env bash
# keel quickstart: build keel, start keeld, create a volume mirrored on two files,
# export it, put ext4 on it, mount it, write and read back files, and show the volume.
#
# Everything lives in a temp directory (keeld's socket, state, the replica files, the
# mount point) and is undone on exit, however the script ends. Safe to run again.
#
# The volume reaches the kernel as /dev/nbdN when the kernel has an NBD driver and
# keeld can attach it; otherwise (this is the case on machines without nbd.ko) over
# a unix socket through nbdfuse (a file backed by NBD) and a loop device.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. scripts/deps.sh

VOLUME=demo
SIZE=256M
# Build directory (relative to the source tree); build/ unless told otherwise.
BUILD=${KEEL_BUILD_DIR:-build}

say() {
	printf '\n\033[1m==> %s\033[0m\n' "$*"
}

die() {
	printf 'quickstart: %s\n' "$*" >&2
	exit 1
}

if [ "$(id -u)" -ne 0 ]; then
	die "run me as root (sudo $0): I install missing packages, attach a loop device, mount a filesystem and use FUSE, all of which need root"
fi

say "Checking packages (build tools, libnbd-bin for nbdfuse, fuse3, e2fsprogs)"
keel_install_packages $KEEL_BUILD_PACKAGES libnbd-bin fuse3 e2fsprogs util-linux ||
	die "could not install the packages above"

say "Building keel into build/"
mkdir -p "$BUILD"
cmake -S . -B "$BUILD" >"$BUILD/quickstart-configure.log" 2>&1 ||
	{ tail -n 30 "$BUILD/quickstart-configure.log"; die "cmake configure failed (log: $BUILD/quickstart-configure.log)"; }
cmake --build "$BUILD" -j"$(nproc)" --target keeld keelctl >"$BUILD/quickstart-build.log" 2>&1 ||
	{ grep -E "error" "$BUILD/quickstart-build.log" | head -n 20; die "build failed (log: $BUILD/quickstart-build.log)"; }
BIN=$ROOT/$BUILD/bin

WORK=$(mktemp -d /tmp/keel-quickstart.XXXXXX)
SOCK=$WORK/keeld.sock
NBD_SOCK=$WORK/$VOLUME.nbd
FUSE_DIR=$WORK/fuse
MNT=$WORK/mnt
KEELD_PID=
NBDFUSE_PID=
LOOP=
NBD_DEV=

cleanup() {
	local rc=$?

	set +e
	[ $rc -eq 0 ] || echo "quickstart: failed; cleaning up (keeld log: $WORK/keeld.log, kept until exit)" >&2
	[ $rc -eq 0 ] || tail -n 20 "$WORK/keeld.log" >&2 2>/dev/null
	say "Cleaning up"
	if mountpoint -q "$MNT" 2>/dev/null; then
		umount "$MNT" && echo "unmounted $MNT"
	fi
	if [ -n "$LOOP" ]; then
		losetup -d "$LOOP" && echo "detached $LOOP"
	fi
	if [ -n "$NBD_DEV" ]; then
		"$BIN/keelctl" -s "$SOCK" rpc nbd_stop_disk "{\"nbd_device\":\"$NBD_DEV\"}" >/dev/null 2>&1
	fi
	if [ -n "$NBDFUSE_PID" ]; then
		fusermount3 -u "$FUSE_DIR" 2>/dev/null || kill "$NBDFUSE_PID" 2>/dev/null
		wait "$NBDFUSE_PID" 2>/dev/null
		echo "stopped nbdfuse"
	fi
	if [ -n "$KEELD_PID" ] && kill -0 "$KEELD_PID" 2>/dev/null; then
		kill -TERM "$KEELD_PID"
		wait "$KEELD_PID" 2>/dev/null
		echo "stopped keeld"
	fi
	rm -rf "$WORK"
	echo "removed $WORK"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

keelctl() {
	"$BIN/keelctl" -s "$SOCK" "$@"
}

say "Starting keeld (socket $SOCK, state $WORK/state)"
"$BIN/keeld" --foreground --rpc-socket "$SOCK" --state-dir "$WORK/state" --cpus 0 \
	>"$WORK/keeld.log" 2>&1 &
KEELD_PID=$!
for _ in $(seq 1 100); do
	keelctl --timeout 5 rpc keel_get_version >/dev/null 2>&1 && break
	kill -0 "$KEELD_PID" 2>/dev/null || die "keeld exited: $(tail -n 5 "$WORK/keeld.log")"
	sleep 0.1
done
keelctl rpc keel_get_version >/dev/null || die "keeld does not answer on $SOCK"

say "Creating volume $VOLUME ($SIZE) mirrored on two files"
mkdir -p "$WORK/disks"
keelctl volume create "$VOLUME" --size "$SIZE" \
	--replica "$WORK/disks/replica0.img" --replica "$WORK/disks/replica1.img"

DEV=
if [ -d /sys/module/nbd ] && [ -e /dev/nbd0 ]; then
	say "The kernel has NBD: attaching $VOLUME to /dev/nbd0"
	if keelctl rpc nbd_start_disk "{\"bdev_name\":\"$VOLUME\",\"nbd_device\":\"/dev/nbd0\"}" >/dev/null 2>"$WORK/nbd.err"; then
		NBD_DEV=/dev/nbd0
		DEV=/dev/nbd0
	else
		echo "keeld could not attach /dev/nbd0 ($(cat "$WORK/nbd.err")); using a socket instead"
	fi
else
	echo "(this kernel has no NBD driver: exporting over a unix socket instead)"
fi

if [ -z "$DEV" ]; then
	say "Exporting $VOLUME over NBD on $NBD_SOCK"
	keelctl export start "$VOLUME" --socket "$NBD_SOCK"
	say "Connecting nbdfuse: the volume appears as the file $FUSE_DIR/nbd"
	mkdir -p "$FUSE_DIR"
	nbdfuse "$FUSE_DIR/nbd" --unix "$NBD_SOCK" &
	NBDFUSE_PID=$!
	for _ in $(seq 1 100); do
		[ -e "$FUSE_DIR/nbd" ] && break
		kill -0 "$NBDFUSE_PID" 2>/dev/null || die "nbdfuse exited"
		sleep 0.1
	done
	[ -e "$FUSE_DIR/nbd" ] || die "nbdfuse did not show $FUSE_DIR/nbd"
	say "Attaching a loop device to it"
	LOOP=$(losetup -f --show "$FUSE_DIR/nbd")
	DEV=$LOOP
	echo "$VOLUME is $DEV"
fi

say "Making an ext4 filesystem on $DEV"
mkfs.ext4 -q -F "$DEV"

say "Mounting it on $MNT"
mkdir -p "$MNT"
mount "$DEV" "$MNT"

say "Writing files"
mkdir -p "$MNT/demo"
for i in 1 2 3 4; do
	head -c $((4 * 1024 * 1024)) /dev/urandom >"$MNT/demo/file$i"
done
cp -r "$ROOT/docs" "$MNT/demo/docs" 2>/dev/null || true
(cd "$MNT/demo" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$WORK/before.sha256"
echo "wrote $(wc -l <"$WORK/before.sha256") files ($(du -sh "$MNT/demo" | cut -f1))"

say "Unmounting, dropping caches, mounting again and reading everything back"
umount "$MNT"
sync
echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
mount "$DEV" "$MNT"
(cd "$MNT/demo" && sha256sum --quiet -c "$WORK/before.sha256") ||
	die "checksums differ after reading back"
echo "all $(wc -l <"$WORK/before.sha256") checksums match"
df -h "$MNT" | tail -n 1

say "The volume"
keelctl volume show "$VOLUME"

say "Rebuild demo: fault replica1, keep writing, add it back"
R1="$WORK/disks/replica1.img"
# mkfs touched every region: give the lazy bitmap clear (5 s of quiet) a moment, so
# the rebuild below copies only what is written while replica1 is out.
for _ in $(seq 1 150); do
	set_bits=$(keelctl --json volume show "$VOLUME" | python3 -c '
import json, sys
print((json.load(sys.stdin).get("bitmap") or {}).get("bits_set", 0))')
	[ "$set_bits" -le 2 ] && break
	sleep 0.1
done
echo "write-intent bitmap: $set_bits regions marked dirty"
keelctl replica fault "$VOLUME" "$R1"
keelctl volume show "$VOLUME" | sed -n '/^replicas:/,/^rebuild:\|^exports:/p' | head -n 4
mkdir -p "$MNT/demo2"
for i in 1 2; do
	head -c $((2 * 1024 * 1024)) /dev/urandom >"$MNT/demo2/file$i"
done
sync
echo "wrote 2 files while replica1 was out (degraded volume, writes go on)"
# The same file comes back in place: its label names this volume, so only the
# regions written meanwhile (the write-intent bitmap) are copied.
keelctl replica add "$VOLUME" "$R1"
for _ in $(seq 1 300); do
	keelctl rebuild status "$VOLUME"
	state=$(keelctl --json volume show "$VOLUME" | python3 -c '
import json, sys
j = json.load(sys.stdin)
print([r["state"] for r in j["replicas"] if r["path"] == sys.argv[1]][0])' "$R1")
	[ "$state" = healthy ] && break
	sleep 0.2
done
[ "$state" = healthy ] || die "replica1 did not come back healthy"
echo "replica1 is healthy again (partial rebuild: see is_partial / done_mib above)"
keelctl volume show "$VOLUME" | sed -n '/^rebuild:/,/^exports:/p' | sed '$d'

say "Done: keel served an ext4 filesystem from a volume mirrored on two files"
