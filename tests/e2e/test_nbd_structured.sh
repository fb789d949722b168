#!/usr/bin/env bash
# Structured replies, base:allocation block status, punching write-zeroes/trim, fast
# zero and cache, with real clients: nbdinfo (negotiation, --map, --json), qemu-img map
# and convert, nbdcopy from a sparse export (checksums), qemu-io, and the scripted
# client tests/e2e/nbd/structured_client.py (raw options one by one; libnbd with
# structured replies on and off, requests keeld must refuse with the client's own
# checks off). The same map checks on a volume: its replicas' label area must not show.
. "$(dirname "$0")/lib.sh"

for tool in nbdinfo nbdcopy qemu-img qemu-io sha256sum jq; do
	command -v $tool >/dev/null || skip "$tool is not installed"
done
/usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "python3-libnbd is not installed"
CLIENT="/usr/bin/python3 $E2E_DIR/nbd/structured_client.py"

start_keeld
NBD=$E2E_TMP/nbd.sock
URI="nbd+unix:///sparse?socket=$NBD"
IMG=$E2E_TMP/sparse.img
truncate -s 64M "$IMG"
fallocate -p -o 0 -l 4096 "$IMG" 2>/dev/null || skip "$E2E_TMP cannot punch holes"
expect_ok "aio bdev on a sparse file" keelctl bdev create aio a0 "$IMG"
expect_ok "export it" keelctl export start a0 --socket "$NBD" --name sparse

# ---- negotiation ----
nbdinfo "$URI" | grep -q "using structured packets" || fail "nbdinfo: no structured packets"
J=$(nbdinfo --json "$URI") || fail "nbdinfo --json"
[ "$(jget "$J" '.structured')" = true ] || fail "structured: $J"
[ "$(jget "$J" '.exports[0].contexts | index("base:allocation") != null')" = true ] ||
	fail "base:allocation not listed: $J"
for f in can_df can_cache can_fast_zero can_zero can_trim; do
	[ "$(jget "$J" ".exports[0].$f")" = true ] || fail "$f not advertised: $J"
done
ok "nbdinfo: structured packets, base:allocation, DF, cache, fast zero"

# ---- block status on a sparse aio export ----
# map_is URI EXPECTED: nbdinfo --map as "offset length type" lines.
map_is() {
	local got

	got=$(nbdinfo --map --json "$1" | jq -r '.[] | "\(.offset) \(.length) \(.type)"') ||
		fail "nbdinfo --map $1"
	[ "$got" = "$2" ] || fail "map of $1:
$got
wanted:
$2"
}
map_is "$URI" "0 67108864 3"
qemu_io_ok "write 1 MiB at 8 MiB and 64 KiB at 40 MiB" "$URI" \
	'write -P 0xab 8M 1M' 'write -P 0xcd 40M 64k'
map_is "$URI" "0 8388608 3
8388608 1048576 0
9437184 32505856 3
41943040 65536 0
42008576 25100288 3"
ok "nbdinfo --map: hole,zero and data where they were written"
Q=$(qemu-img map --output=json "$URI") || fail "qemu-img map"
[ "$(jq -c '[.[] | select(.data) | [.start, .length]]' <<<"$Q")" = \
	'[[8388608,1048576],[41943040,65536]]' ] || fail "qemu-img map: $Q"
[ "$(jq '[.[] | select(.data | not) | select(.zero | not)] | length' <<<"$Q")" = 0 ] ||
	fail "qemu-img map: a hole not reported as zero: $Q"
ok "qemu-img map --output=json agrees"

# ---- copies from the sparse export ----
SUM=$(sha256sum <"$IMG")
nbdcopy "$URI" "$E2E_TMP/copy.img" || fail "nbdcopy"
[ "$(sha256sum <"$E2E_TMP/copy.img")" = "$SUM" ] || fail "nbdcopy copy differs"
qemu-img convert -f raw -O raw "$URI" "$E2E_TMP/conv.img" || fail "qemu-img convert"
[ "$(sha256sum <"$E2E_TMP/conv.img")" = "$SUM" ] || fail "qemu-img convert copy differs"
ok "nbdcopy and qemu-img convert copy the sparse export exactly"

# ---- zeroing that may punch, trim ----
BLOCKS=$(stat -c %b "$IMG")
qemu_io_ok "write-zeroes that may unmap" "$URI" 'write -z -u 8M 1M' 'read -P 0 8M 1M'
map_is "$URI" "0 41943040 3
41943040 65536 0
42008576 25100288 3"
[ "$(stat -c %b "$IMG")" -lt "$BLOCKS" ] || fail "write-zeroes without NO_HOLE freed nothing"
qemu_io_ok "trim" "$URI" 'discard 40M 64k'
map_is "$URI" "0 67108864 3"
ok "write-zeroes without NO_HOLE and trim punch holes"

# ---- the scripted client: options one by one, libnbd with SR on and off ----
for s in "options" "libnbd on" "libnbd off"; do
	# shellcheck disable=SC2086
	out=$($CLIENT "$NBD" sparse $s 2>&1) || fail "structured_client $s: $out"
	ok "$out"
done
keeld_alive || fail "keeld died"

# ---- a volume: block status past the replicas' label area ----
need_aio_free 1024
mkdir -p "$E2E_TMP/disks"
truncate -s 65M "$E2E_TMP/disks/r1" "$E2E_TMP/disks/r2"
expect_ok "volume on two sparse replicas" keelctl volume create v1 --size 64M \
	--replica "$E2E_TMP/disks/r1" --replica "$E2E_TMP/disks/r2"
VURI="nbd+unix:///v1?socket=$E2E_TMP/v1.sock"
expect_ok "export the volume" keelctl export start v1 --socket "$E2E_TMP/v1.sock" --name v1
map_is "$VURI" "0 67108864 3"
qemu_io_ok "write 2 MiB at 4 MiB of the volume" "$VURI" 'write -P 0x5a 4M 2M'
map_is "$VURI" "0 4194304 3
4194304 2097152 0
6291456 60817408 3"
nbdcopy "$VURI" "$E2E_TMP/vcopy.img" || fail "nbdcopy from the volume"
qemu-io -f raw "$E2E_TMP/vcopy.img" -c 'read -P 0x5a 4M 2M' -c 'read -P 0 0 4M' \
	-c 'read -P 0 6M 58M' >/dev/null || fail "volume copy differs"
ok "volume: map shows what was written, not the label area; nbdcopy copies it"

stop_keeld || fail "keeld did not stop cleanly"
ok "keeld stopped cleanly"
