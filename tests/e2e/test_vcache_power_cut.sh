#!/usr/bin/env bash
# The vcache fault device (a disk with a volatile write cache) under both replicas of a
# volume, driven over RPC through keeld and NBD (libnbd): a flushed write and a FUA
# write survive a power cut that drops every cached write, an unflushed write does
# not, the cut disk fails I/O, and the RPCs refuse bad input with clear errors.
# The in-process harness with thousands of cut points is tests/unit/nexus/powercut_ut.c.
. "$(dirname "$0")/lib.sh"

/usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "python3-libnbd is needed"

D=$E2E_TMP/disks
NBD=$E2E_TMP/pc.nbd
mkdir -p "$D"
truncate -s 17M "$D/f0" "$D/f1"
start_keeld

for i in 0 1; do
	expect_ok "aio r$i" keelctl bdev create aio "r$i" "$D/f$i"
	expect_ok "vcache v$i over r$i" keelctl rpc bdev_vcache_create \
		"{\"name\":\"v$i\",\"base_bdev_name\":\"r$i\"}"
done
expect_fail "vcache over a claimed base" "already claimed" keelctl rpc bdev_vcache_create \
	'{"name":"v9","base_bdev_name":"r0"}'
expect_fail "vcache over no base" "not found" keelctl rpc bdev_vcache_create \
	'{"name":"v9","base_bdev_name":"nope"}'
expect_ok "volume over v0 and v1" keelctl rpc volume_create \
	'{"name":"pc","size":16777216,"replica_bdevs":["v0","v1"]}'
expect_ok "export pc" keelctl export start pc --socket "$NBD"

# 1 MiB at 0 then FLUSH; 64 KiB at 2 MiB with FUA; 1 MiB at 1 MiB, never flushed.
# Then the power of both disks is cut (every cached write dropped) while connected.
expect_ok "writes, then the cut" /usr/bin/python3 - "$NBD" "$KEEL_BIN/keelctl" "$SOCK" <<'PY'
import subprocess, sys
import nbd
sock, keelctl, rpc = sys.argv[1:4]
h = nbd.NBD()
h.connect_uri("nbd+unix:///pc?socket=" + sock)
assert h.can_fua() and h.can_flush(), "a write-cache volume offers FUA and FLUSH"
h.pwrite(b"\xaa" * (1 << 20), 0)
h.flush()
h.pwrite(b"\xcc" * 65536, 2 << 20, nbd.CMD_FLAG_FUA)
h.pwrite(b"\xbb" * (1 << 20), 1 << 20)
st = subprocess.run([keelctl, "-s", rpc, "rpc", "bdev_vcache_get_stats", '{"name":"v0"}'],
                    check=True, capture_output=True, text=True).stdout
print("v0 before the cut:", st.strip())
assert '"dirty_writes": 0' not in st and '"dirty_writes":0' not in st, st
for v in ("v0", "v1"):
    subprocess.run([keelctl, "-s", rpc, "rpc", "bdev_vcache_power_cut",
                    '{"name":"%s","mode":"all"}' % v], check=True, capture_output=True)
try:
    h.pread(4096, 0)
    sys.exit("a read after the power cut succeeded")
except nbd.Error as e:
    print("read after the cut fails:", e)
PY
echo "$OUT"

expect_fail "a second cut" "cut already" keelctl rpc bdev_vcache_power_cut \
	'{"name":"v0","mode":"none"}'
expect_fail "a bad mode" "not one of none, all, random, prefix" keelctl rpc \
	bdev_vcache_power_cut '{"name":"v1","mode":"some"}'
expect_fail "prefix without keep" "keep" keelctl rpc bdev_vcache_power_cut \
	'{"name":"v1","mode":"prefix"}'
expect_fail "stats of a non-vcache bdev" "not a vcache bdev" keelctl rpc \
	bdev_vcache_get_stats '{"name":"r0"}'
expect_ok "stats after the cut" keelctl rpc bdev_vcache_get_stats '{"name":"v1"}'
[ "$(jget "$OUT" .dead)" = true ] || fail "v1 not dead after the cut: $OUT"
stop_keeld || fail "keeld exited with an error"

# What the disks kept: the data area starts at 1 MiB of each file.
for i in 0 1; do
	cmp -s <(head -c 1048576 /dev/zero | tr '\0' '\252') \
		<(dd if="$D/f$i" bs=1M skip=1 count=1 status=none) ||
		fail "f$i: the flushed MiB is not there"
	cmp -s <(head -c 65536 /dev/zero | tr '\0' '\314') \
		<(dd if="$D/f$i" bs=64K skip=48 count=1 status=none) ||
		fail "f$i: the FUA write is not there"
	cmp -s <(head -c 1048576 /dev/zero) <(dd if="$D/f$i" bs=1M skip=2 count=1 status=none) ||
		fail "f$i: the unflushed MiB survived a cut that drops every cached write"
done
ok "both replicas kept the flushed and the FUA write and lost the unflushed one"
