#!/usr/bin/env bash
# A mistyped replica path must never destroy data. volume create and replica add refuse
# a target that holds anything (random data, an ext4 filesystem, a partition table, a
# byte in its last MiB, another volume's keel label) unless --force, and leave it
# unchanged; they refuse a file or block device that is already a replica under
# another name (//, ./, symlink, hard link, a second device node, a loop device over
# the file), within one request and across volumes. A refused create leaves nothing.
# Loop-device checks need root and losetup: without them the rest runs and the test
# exits 77 at the end, saying why.
. "$(dirname "$0")/lib.sh"

command -v jq >/dev/null || skip "jq is needed (package jq)"
command -v mkfs.ext4 >/dev/null || skip "mkfs.ext4 is needed (package e2fsprogs)"

D=$E2E_TMP/disks
mkdir -p "$D"
LOOPS=""
loop_cleanup() {
	local rc=$? l

	for l in $LOOPS; do
		losetup -d "$l" 2>/dev/null
	done
	(exit $rc)
	e2e_cleanup
}
trap loop_cleanup EXIT

sum_of() {
	md5sum "$1" | cut -d' ' -f1
}

# nothing_left NAME [FILE...]: no volume NAME, none of its bdevs, not in the state
# file, and none of the FILEs (which the refused request would have created).
nothing_left() {
	local name=$1 f
	shift

	keelctl --json volume list | jq -e --arg n "$name" 'all(.[]; .name != $n)' >/dev/null ||
		fail "a refused request left volume $name behind"
	keelctl --json bdev list | jq -e --arg n "$name" \
		'all(.[]; .name != $n and (.name | startswith($n + ".") | not))' >/dev/null ||
		fail "a refused request left a bdev of $name behind"
	! grep -q "\"$name\"" "$STATE/state.json" 2>/dev/null ||
		fail "a refused request left $name in the state file"
	for f in "$@"; do
		[ ! -e "$f" ] || fail "a refused request left $f behind"
	done
}

# replica_count VOLUME
replica_count() {
	keelctl --json volume show "$1" | jq '.replicas | length'
}

# refused_both WHAT SUBSTRING FILE: create and add both refuse FILE with a message
# naming it and SUBSTRING; FILE is unchanged, no volume or replica is left.
refused_both() {
	local what=$1 substr=$2 f=$3 before
	before=$(sum_of "$f")

	expect_fail "create on $what" "replica $f $substr; pass --force to overwrite it" \
		keelctl volume create bad --size 2M --replica "$f"
	nothing_left bad
	expect_fail "add of $what" "replica $f $substr; pass --force to overwrite it" \
		keelctl replica add base "$f"
	[ "$(replica_count base)" = 1 ] || fail "a refused add left a replica in base"
	[ "$(sum_of "$f")" = "$before" ] || fail "$what was changed by a refused create or add"
	ok "$what unchanged"
}

start_keeld
expect_ok "create base" keelctl volume create base --size 8M --replica "$D/base.img"

# --- what a target holds ------------------------------------------------------------
head -c 3M /dev/urandom >"$D/random.img"
refused_both "3 MiB of random data" "holds data (a non-zero byte at offset 0)" "$D/random.img"

truncate -s 20M "$D/ext4.img"
mkfs.ext4 -q -F "$D/ext4.img" >/dev/null 2>&1 || fail "mkfs.ext4 on a file"
refused_both "an ext4 filesystem" "holds an ext4 filesystem" "$D/ext4.img"

if command -v sfdisk >/dev/null; then
	truncate -s 20M "$D/dos.img" "$D/gpt.img"
	echo ',10M' | sfdisk -q "$D/dos.img" >/dev/null || fail "sfdisk on a file"
	printf 'label: gpt\n,10M\n' | sfdisk -q "$D/gpt.img" >/dev/null || fail "sfdisk gpt"
	refused_both "a dos partition table" "holds a dos partition table" "$D/dos.img"
	refused_both "a gpt partition table" "holds a gpt partition table" "$D/gpt.img"
else
	echo "note: sfdisk not installed (package fdisk): partition tables not checked"
fi

truncate -s 20M "$D/tail.img"
printf 'x' | dd of="$D/tail.img" bs=1 seek=$((20 * 1048576 - 100)) conv=notrunc 2>/dev/null
refused_both "data only in the last MiB" "holds data (a non-zero byte at offset 20971420)" \
	"$D/tail.img"

# Another volume's keel label (destroy keeps labels): refused with its name.
expect_ok "create old" keelctl volume create old --size 8M --replica "$D/old.img"
expect_ok "destroy old" keelctl volume destroy old
before=$(sum_of "$D/old.img")
expect_fail "create on another volume's label" \
	"replica $D/old.img carries the keel label of volume old" \
	keelctl volume create bad --size 8M --replica "$D/old.img"
expect_fail "add of another volume's label" "carries the keel label of volume old" \
	keelctl replica add base "$D/old.img"
[ "$(sum_of "$D/old.img")" = "$before" ] || fail "a labelled file was changed by a refusal"
nothing_left bad

# Zeros are free: a sparse file and a written one.
truncate -s 20M "$D/zero.img"
dd if=/dev/zero of="$D/written0.img" bs=1M count=10 2>/dev/null
expect_ok "create on an all-zero file" keelctl volume create zeros --size 8M \
	--replica "$D/zero.img" --replica "$D/written0.img"
expect_ok "destroy zeros" keelctl volume destroy zeros --wipe

# A former member of the volume comes back without --force (its label is base's).
expect_ok "add member" keelctl replica add base "$D/member.img"
expect_ok "remove member" keelctl replica remove base "$D/member.img"
expect_ok "re-add the former member" keelctl replica add base "$D/member.img"
expect_ok "remove member again" keelctl replica remove base "$D/member.img"

# --force overwrites.
expect_ok "--force on random data" keelctl volume create forced --size 2M \
	--replica "$D/random.img" --force
[ "$(head -c 8 "$D/random.img")" = KEELVOL1 ] || fail "--force did not write a label"
expect_ok "destroy forced" keelctl volume destroy forced
expect_ok "--force on another label (rpc force)" keelctl rpc volume_create \
	"{\"name\":\"forced2\",\"size\":8388608,\"replicas\":[\"$D/old.img\"],\"force\":true}"
expect_ok "destroy forced2" keelctl volume destroy forced2
expect_ok "add --force on ext4" keelctl replica add base "$D/ext4.img" --force
expect_ok "remove it" keelctl replica remove base "$D/ext4.img"

# --- the same file under two names ----------------------------------------------------
# Within one create, for a file the create would make and for existing ones.
expect_fail "create: a and a//" "replica $D//new1.img is the same file as $D/new1.img, given before it" \
	keelctl volume create dup --size 8M --replica "$D/new1.img" --replica "$D//new1.img"
nothing_left dup "$D/new1.img"
expect_fail "create: a and ./a" "replica $D/./new1.img is the same file as $D/new1.img, given before it" \
	keelctl volume create dup --size 8M --replica "$D/new1.img" --replica "$D/./new1.img"
nothing_left dup "$D/new1.img"
truncate -s 20M "$D/z1.img"
ln -s z1.img "$D/z1.sym"
ln "$D/z1.img" "$D/z1.hard"
before=$(sum_of "$D/z1.img")
expect_fail "create: file and its symlink" "replica $D/z1.sym is the same file as $D/z1.img" \
	keelctl volume create dup --size 8M --replica "$D/z1.img" --replica "$D/z1.sym"
expect_fail "create: file and its hard link" "replica $D/z1.hard is the same file as $D/z1.img" \
	keelctl volume create dup --size 8M --replica "$D/new2.img" --replica "$D/z1.img" \
	--replica "$D/z1.hard"
nothing_left dup "$D/new2.img"
[ -f "$D/z1.img" ] && [ "$(sum_of "$D/z1.img")" = "$before" ] ||
	fail "a refused create removed or changed an existing file"

# Across volumes and within one: create, add to the volume itself, add to another.
expect_ok "create two" keelctl volume create two --size 8M --replica "$D/two.img"
ln -s "$D/base.img" "$D/base.sym"
ln "$D/base.img" "$D/base.hard"
for name in "$D//base.img" "$D/./base.img" "$D/base.sym" "$D/base.hard"; do
	expect_fail "create on $name" "replica $name is the same file as $D/base.img of volume base" \
		keelctl volume create dup --size 8M --replica "$name"
	nothing_left dup
	expect_fail "add $name to base itself" "replica $name is the same file as $D/base.img of volume base" \
		keelctl replica add base "$name"
	expect_fail "add $name to two" "replica $name is the same file as $D/base.img of volume base" \
		keelctl replica add two "$name"
done
# --force overwrites what a file holds; it never makes one file two replicas.
expect_fail "create --force on base's file" "replica $D/base.hard is the same file as $D/base.img of volume base" \
	keelctl volume create dup --size 8M --replica "$D/base.hard" --force
nothing_left dup
expect_fail "add --force of base's file to two" "is the same file as $D/base.img of volume base" \
	keelctl replica add two "$D//base.img" --force
[ "$(replica_count base)" = 1 ] && [ "$(replica_count two)" = 1 ] ||
	fail "a refused add left a replica behind"

# The volumes made here still come up after a restart, each on its own file.
stop_keeld || fail "keeld exited with an error"
start_keeld
for v in base two; do
	[ "$(keelctl --json volume show "$v" | jq -r '.state')" = online ] ||
		fail "$v not online after restart: $(keelctl volume show "$v")"
done
ok "base and two online after restart"

# --- block devices ----------------------------------------------------------------------
why_no_loop=""
if [ "$(id -u)" -ne 0 ]; then
	why_no_loop="loop devices need root"
elif ! command -v losetup >/dev/null || [ ! -e /dev/loop-control ]; then
	why_no_loop="no losetup or /dev/loop-control"
fi
if [ -z "$why_no_loop" ]; then
	truncate -s 20M "$D/loop.img" "$D/loop4k.img"
	LOOP=$(losetup -f --show "$D/loop.img" 2>&1) || why_no_loop="losetup failed: $LOOP"
fi
if [ -n "$why_no_loop" ]; then
	keeld_alive || fail "keeld died"
	skip "everything but block devices passed; not checked: $why_no_loop"
fi
LOOPS="$LOOP"
majmin=$(cat "/sys/class/block/$(basename "$LOOP")/dev")
mknod "$D/loop.node" b "${majmin%%:*}" "${majmin##*:}"
ln -s "$LOOP" "$D/loop.sym"

expect_fail "create: a loop device and a second node of it" \
	"replica $D/loop.node is the same block device as $LOOP, given before it" \
	keelctl volume create ldup --size 8M --replica "$LOOP" --replica "$D/loop.node"
nothing_left ldup
expect_ok "create on the loop device" keelctl volume create lv --size 8M --replica "$LOOP"
expect_fail "create on a symlink to it" "replica $D/loop.sym is the same block device as $LOOP of volume lv" \
	keelctl volume create ldup --size 8M --replica "$D/loop.sym"
nothing_left ldup
expect_fail "add a second node of it" "replica $D/loop.node is the same block device as $LOOP of volume lv" \
	keelctl replica add base "$D/loop.node"
expect_fail "add a symlink to it to lv itself" "replica $D/loop.sym is the same block device as $LOOP of volume lv" \
	keelctl replica add lv "$D/loop.sym"
if [ -e "/dev/block/$majmin" ]; then
	expect_fail "add /dev/block/$majmin" "is the same block device as $LOOP of volume lv" \
		keelctl replica add lv "/dev/block/$majmin"
else
	echo "note: no /dev/block/$majmin here (no udev): the second node made with mknod stands in"
fi
expect_fail "create on the file behind the loop device" \
	"replica $D/loop.img is the same file (through a loop device) as $LOOP of volume lv" \
	keelctl volume create ldup --size 8M --replica "$D/loop.img"
nothing_left ldup
expect_ok "destroy lv" keelctl volume destroy lv

# A filesystem on a block device is found the same way.
mkfs.ext4 -q -F "$LOOP" >/dev/null 2>&1 || fail "mkfs.ext4 on $LOOP"
before=$(sum_of "$LOOP")
expect_fail "create on an ext4 block device" "replica $LOOP holds an ext4 filesystem; pass --force" \
	keelctl volume create ldup --size 8M --replica "$LOOP"
[ "$(sum_of "$LOOP")" = "$before" ] || fail "a refused create changed $LOOP"

# Refused by the nexus after the new file was made and both aio bdevs were opened
# (block sizes differ): all of it is undone.
LOOP4K=$(losetup -f --show --sector-size 4096 "$D/loop4k.img") || fail "losetup --sector-size"
LOOPS="$LOOPS $LOOP4K"
expect_fail "half-way failure: block sizes differ" "has block size 4096" \
	keelctl volume create bs --size 8M --replica "$D/bs-new.img" --replica "$LOOP4K"
nothing_left bs "$D/bs-new.img"
keeld_alive || fail "keeld died"
echo "PASS $E2E_NAME"
