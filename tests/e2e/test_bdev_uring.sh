#!/usr/bin/env bash
# The uring bdev through keeld: keelctl bdev create uring, RPC errors, data through an
# NBD export, a volume with one uring and one aio replica verified under fio, delete;
# then keeld under a seccomp filter that refuses io_uring (as a
# container's default profile does): it starts, says why in its log, refuses uring
# bdevs with an error that names aio, and aio bdevs still work.
. "$(dirname "$0")/lib.sh"

command -v jq >/dev/null || skip "jq is needed"

start_keeld
grep -q "io_uring is available" "$KEELD_LOG" ||
	for _ in $(seq 1 100); do
		grep -q "io_uring is available" "$KEELD_LOG" && break
		grep -q "io_uring is unavailable" "$KEELD_LOG" && skip "io_uring refused on this host"
		sleep 0.1
	done
grep -q "io_uring is available" "$KEELD_LOG" || fail "no io_uring line at start"
ok "start says io_uring is available"

# --- create, list, errors -----------------------------------------------------------
truncate -s 16M "$E2E_TMP/u0.img"
expect_ok "create uring" keelctl bdev create uring u0 "$E2E_TMP/u0.img"
truncate -s 8M "$E2E_TMP/u1.img"
(cd "$E2E_TMP" && "$KEEL_BIN/keelctl" -s "$SOCK" bdev create uring u1 u1.img --block-size 4096) \
	>/dev/null || fail "uring with a relative path"
ok "create uring with a relative path"
expect_ok "bdev list" keelctl bdev list
echo "$OUT" | grep -Eq "^u0 *uring *16 MiB *512" || fail "bdev list lacks u0: $OUT"
echo "$OUT" | grep -Eq "^u1 *uring *8 MiB *4096" || fail "bdev list lacks u1: $OUT"
expect_ok "bdev_get_bdevs u0" keelctl rpc bdev_get_bdevs '{"name":"u0"}'
[ "$(jq -r '.[0].product_name' <<<"$OUT")" = "URING disk" ] || fail "product name: $OUT"
[ "$(jq -r '.[0].driver_specific.direct' <<<"$OUT")" = true ] || fail "not O_DIRECT: $OUT"
grep -q "uring bdev u0: .*O_DIRECT" "$KEELD_LOG" || fail "the log does not say O_DIRECT"
ok "u0 is O_DIRECT and the log says so"

expect_fail "missing file" "does not exist" keelctl bdev create uring u2 "$E2E_TMP/nope.img"
expect_fail "a directory" "is a directory" keelctl bdev create uring u2 "$E2E_TMP"
truncate -s 1000 "$E2E_TMP/odd.img"
expect_fail "size not a multiple" "multiple of the block size" \
	keelctl bdev create uring u2 "$E2E_TMP/odd.img"
expect_fail "duplicate" "already exists" keelctl bdev create uring u0 "$E2E_TMP/u1.img"
expect_fail "relative path over RPC" "not an absolute path" \
	keelctl rpc bdev_uring_create '{"name":"u2","filename":"u1.img"}'
expect_fail "bad block size" "block_size" \
	keelctl rpc bdev_uring_create "{\"name\":\"u2\",\"filename\":\"$E2E_TMP/u1.img\",\"block_size\":1000}"
expect_fail "missing filename" "filename" keelctl rpc bdev_uring_create '{"name":"u2"}'
expect_fail "bad name" "not a valid bdev name" \
	keelctl rpc bdev_uring_create "{\"name\":\"a/b\",\"filename\":\"$E2E_TMP/u1.img\"}"
expect_fail "uring delete of unknown" "not found" keelctl rpc bdev_uring_delete '{"name":"nope"}'
expect_ok "malloc m0" keelctl bdev create malloc m0 1M
expect_fail "uring delete of a malloc bdev" "m0" keelctl rpc bdev_uring_delete '{"name":"m0"}'
expect_ok "delete m0" keelctl bdev delete m0

# --- data through an NBD export --------------------------------------------------------
if command -v qemu-io >/dev/null; then
	expect_ok "export u0" keelctl export start u0 --socket "$E2E_TMP/u0.sock"
	uri="nbd+unix:///u0?socket=$E2E_TMP/u0.sock"
	expect_ok "qemu-io write+read" qemu-io -f raw "$uri" -c 'write -P 0xa5 1M 2M' \
		-c 'read -P 0xa5 1M 2M' -c 'write -z 1536k 64k' -c 'read -P 0 1536k 64k' \
		-c 'flush'
	expect_ok "stop export" keelctl export stop u0
	# What the file holds, read past keeld: the pattern, with the zeroed hole.
	[ "$(dd if="$E2E_TMP/u0.img" bs=64k skip=16 count=8 status=none | od -An -tx1 -v |
		tr -s ' \n' '\n\n' | sort -u | tr '\n' ' ')" = " a5 " ] || fail "file content at 1M"
	[ "$(dd if="$E2E_TMP/u0.img" bs=64k skip=24 count=1 status=none | od -An -tx1 -v |
		tr -s ' \n' '\n\n' | sort -u | tr '\n' ' ')" = " 00 " ] || fail "zeroes at 1.5M"
	ok "the file holds what was written through the export"
else
	echo "  (no qemu-io: data path not exercised here)"
fi

# --- a volume with one uring and one aio replica, under fio ----------------------------
if command -v fio >/dev/null && fio --enghelp 2>/dev/null | grep -qw nbd; then
	truncate -s 65M "$E2E_TMP/r0" "$E2E_TMP/r1"
	expect_ok "uring replica" keelctl bdev create uring r0 "$E2E_TMP/r0"
	expect_ok "aio replica" keelctl bdev create aio r1 "$E2E_TMP/r1"
	expect_ok "volume over uring + aio" keelctl rpc volume_create \
		'{"name":"mix","size":67108864,"replica_bdevs":["r0","r1"]}'
	expect_ok "export mix" keelctl export start mix --socket "$E2E_TMP/mix.sock"
	for pass in write verify; do
		args=(--do_verify=0)
		[ $pass = verify ] && args=(--verify_only=1)
		# In the temp dir: fio leaves its verify-state file in the working directory.
		(cd "$E2E_TMP" && fio --name=mix --ioengine=nbd \
			--uri="nbd+unix:///mix?socket=$E2E_TMP/mix.sock" --size=64M --bs=4k \
			--iodepth=32 --rw=randwrite --verify=crc32c --randrepeat=1 --randseed=77 \
			--output-format=json --output="$E2E_TMP/$pass.json" "${args[@]}" \
			>/dev/null 2>"$E2E_TMP/$pass.err") || fail "fio $pass: $(cat "$E2E_TMP/$pass.err")"
		[ "$(jq '[.jobs[] | .error] | add' "$E2E_TMP/$pass.json")" = 0 ] ||
			fail "fio $pass pass saw errors"
	done
	grep -q "verify" "$E2E_TMP/verify.err" && fail "fio verify: $(cat "$E2E_TMP/verify.err")"
	ok "fio wrote and verified 64 MiB (crc32c) through the mixed volume"
	expect_ok "volume_get" keelctl rpc volume_get '{"name":"mix"}'
	[ "$(jq -r '.state' <<<"$OUT")" = online ] || fail "mixed volume not online: $OUT"
	expect_ok "destroy mix" keelctl volume destroy mix
	# Both replicas hold the same data, written past keeld by two different modules.
	cmp -i 1048576:1048576 -n 67108864 "$E2E_TMP/r0" "$E2E_TMP/r1" ||
		fail "the uring and aio replicas differ"
	ok "the uring and the aio replica hold the same data"
	expect_ok "delete r0" keelctl bdev delete r0
	expect_ok "delete r1" keelctl bdev delete r1
else
	echo "  (no fio with the nbd engine: mixed volume not exercised)"
fi

expect_ok "uring delete" keelctl rpc bdev_uring_delete '{"name":"u0"}'
expect_ok "generic delete" keelctl bdev delete u1
stop_keeld || fail "keeld exit status"

# --- keeld where io_uring is refused ---------------------------------------------------
: >"$KEELD_LOG"
start_keeld_without_uring || { echo "  (no no_uring_exec: refusal not tested)"; exit 0; }
for _ in $(seq 1 100); do
	grep -q "io_uring is unavailable" "$KEELD_LOG" && break
	sleep 0.1
done
grep -q "uring: io_uring is unavailable: .*EPERM.*aio bdevs work" "$KEELD_LOG" ||
	fail "no clear refusal line at start"
ok "keeld under a filter starts and says io_uring is unavailable, and why"
truncate -s 8M "$E2E_TMP/u3.img"
expect_fail "uring refused" "create an aio bdev instead" \
	keelctl bdev create uring u3 "$E2E_TMP/u3.img"
expect_ok "aio still works" keelctl bdev create aio a3 "$E2E_TMP/u3.img"
expect_ok "delete a3" keelctl bdev delete a3
stop_keeld || fail "keeld exit status under the filter"
