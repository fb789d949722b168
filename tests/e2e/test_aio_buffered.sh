#!/usr/bin/env bash
# An aio bdev on a file whose filesystem refuses O_DIRECT (ramfs, a real refusal on
# this kernel) must never block a reactor: Linux would run its buffered aio inside
# io_submit. Where io_uring works, keeld serves the file with io_uring (the bdev's info
# says uring, buffered, requested as aio) and bdev_aio_delete still deletes it; where
# io_uring is refused, the aio bdev runs its reads and writes on the blocking pool
# (io_path "blocking_pool"). Data written through an NBD export reads back either way.
. "$(dirname "$0")/lib.sh"

command -v jq >/dev/null || skip "jq is needed"
command -v qemu-io >/dev/null || skip "qemu-io is needed (package qemu-utils)"
[ "$(id -u)" = 0 ] || skip "not root: cannot mount ramfs"

mnt=$E2E_TMP/ramfs
mkdir -p "$mnt"
mount -t ramfs none "$mnt" 2>/dev/null || skip "mount -t ramfs failed"
# Lazily: keeld may still hold the file when the trap runs; the status survives.
trap 'rc=$?; umount -l "$mnt" 2>/dev/null; (exit $rc); e2e_cleanup' EXIT
dd if=/dev/zero of="$mnt/f.img" bs=1M count=8 status=none
if dd if=/dev/zero of="$mnt/f.img" bs=4k count=1 oflag=direct conv=notrunc status=none 2>/dev/null; then
	skip "ramfs accepts O_DIRECT on this kernel: no refusal to test"
fi

# check_data NAME: a pattern written through an export of NAME reads back, past keeld too.
check_data() {
	local name=$1 sock=$E2E_TMP/$1.sock

	expect_ok "export $name" keelctl export start "$name" --socket "$sock"
	qemu_io_ok "$name: write, read back, flush" "nbd+unix:///$name?socket=$sock" \
		'write -P 0x5c 1M 2M' 'read -P 0x5c 1M 2M' 'write -P 0x3a 4095k 3k' \
		'read -P 0x3a 4095k 3k' 'flush'
	expect_ok "stop export $name" keelctl export stop "$name"
	[ "$(dd if="$mnt/f.img" bs=64k skip=16 count=32 status=none | od -An -tx1 -v |
		tr -s ' \n' '\n\n' | sort -u | tr '\n' ' ')" = " 5c " ] || fail "$name: file content at 1M"
	ok "$name: the file holds what was written"
}

# --- io_uring available: the aio request is served by io_uring ------------------------
start_keeld
# The module's start-up probe says whether io_uring works here (it runs on the pool).
wait_until 60 "the io_uring probe line" grep -q "uring: io_uring is" "$KEELD_LOG"
expect_ok "create aio on ramfs" keelctl bdev create aio b0 "$mnt/f.img"
expect_ok "bdev_get_bdevs b0" keelctl rpc bdev_get_bdevs '{"name":"b0"}'
if ! grep -q "uring: io_uring is available" "$KEELD_LOG"; then
	echo "  (io_uring refused on this host: only the blocking-pool half runs)"
else
	[ "$(jq -r '.[0].product_name' <<<"$OUT")" = "URING disk" ] || fail "not io_uring: $OUT"
	[ "$(jq -r '.[0].driver_specific.direct' <<<"$OUT")" = false ] || fail "direct? $OUT"
	[ "$(jq -r '.[0].driver_specific.requested_as' <<<"$OUT")" = aio ] || fail "requested_as: $OUT"
	grep -q "aio bdev b0: .*does not support O_DIRECT.*serving it with io_uring" "$KEELD_LOG" ||
		fail "the log does not say io_uring serves b0"
	ok "b0 (asked for as aio, O_DIRECT refused) is served by io_uring, and the log says so"
	check_data b0
	expect_ok "bdev_aio_delete deletes it" keelctl rpc bdev_aio_delete '{"name":"b0"}'
	expect_fail "gone" "" keelctl rpc bdev_get_bdevs '{"name":"b0"}'
fi
stop_keeld || fail "keeld exit status"

# --- io_uring refused: the aio bdev runs buffered I/O on the blocking pool -----------------
: >"$KEELD_LOG"
start_keeld_without_uring || { echo "  (no no_uring_exec: the pool path is not tested)"; exit 0; }
expect_ok "create aio without io_uring" keelctl bdev create aio b1 "$mnt/f.img"
expect_ok "bdev_get_bdevs b1" keelctl rpc bdev_get_bdevs '{"name":"b1"}'
[ "$(jq -r '.[0].product_name' <<<"$OUT")" != "URING disk" ] || fail "io_uring under the filter? $OUT"
[ "$(jq -r '.[0].driver_specific.direct' <<<"$OUT")" = false ] || fail "direct? $OUT"
[ "$(jq -r '.[0].driver_specific.io_path' <<<"$OUT")" = blocking_pool ] || fail "io_path: $OUT"
grep -q "aio bdev b1: .*io_uring is unavailable.*blocking pool" "$KEELD_LOG" ||
	fail "the log does not say the blocking pool serves b1"
ok "b1 runs its buffered reads and writes on the blocking pool, and the log says so"
check_data b1
expect_ok "delete b1" keelctl bdev delete b1
stop_keeld || fail "keeld exit status under the filter"
