#!/usr/bin/env bash
# Benchmark (not a test) of the kernel NBD path inside the qemu TCG guest: fio (libaio,
# O_DIRECT) on /dev/nbd0 served by keeld (aio bdev, `keelctl export start --nbd`) next to
# /dev/nbd1 configured by nbd-client (netlink, same number of connections) and served by
# nbdkit's file plugin, both on the SAME file in the guest's tmpfs, in the same boot, the
# two alternating job by job.
#
# usage: tests/bench/vm-nbd.sh [--build-dir DIR] [--runtime SEC]
#
# Prints one line per fio job with the ratio keeld/nbdkit (>1: keeld is faster), and the
# geometric mean. Under TCG absolute numbers mean little (every guest instruction is
# emulated, client and servers share 2 vCPUs); only the ratio of one run is reported.
# nbd-client comes from Debian's package (apt-get download + dpkg -x, not installed on the
# host). Exits 77 when fio, nbdkit, nbd-client or the VM packages cannot be had.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/../.." && pwd)
build_dir=$src/build
runtime=8
while [ $# -gt 0 ]; do
	case $1 in
	--build-dir) build_dir=$2; shift 2 ;;
	--runtime) runtime=$2; shift 2 ;;
	*) echo "usage: $0 [--build-dir DIR] [--runtime SEC]" >&2; exit 2 ;;
	esac
done
case $runtime in *[!0-9]* | '') echo "--runtime: seconds" >&2; exit 2 ;; esac
build_dir=$(cd "$build_dir" && pwd)

skip() { echo "vm-nbd: SKIP: $*" >&2; exit 77; }
for t in keeld keelctl; do
	[ -x "$build_dir/bin/$t" ] || cmake --build "$build_dir" --target "$t"
done
for p in fio:fio nbdkit:nbdkit; do
	command -v "${p%%:*}" >/dev/null 2>&1 && continue
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${p#*:}" \
		>/dev/null 2>&1 || skip "cannot install ${p#*:}"
done
plugin=$(ls /usr/lib/*/nbdkit/plugins/nbdkit-file-plugin.so 2>/dev/null | head -n1)
[ -n "$plugin" ] || skip "nbdkit file plugin not found"
nbdc=$build_dir/vm-cache/nbd-client/sbin/nbd-client
if [ ! -x "$nbdc" ]; then
	dl=$(mktemp -d)
	(cd "$dl" && apt-get download nbd-client >/dev/null 2>&1) || skip "cannot download nbd-client"
	mkdir -p "$build_dir/vm-cache/nbd-client"
	dpkg -x "$dl"/nbd-client_*.deb "$build_dir/vm-cache/nbd-client"
	rm -rf "$dl"
	[ -x "$nbdc" ] || skip "no sbin/nbd-client in the package"
fi

payload=$(mktemp "${TMPDIR:-/tmp}/keel-vm-bench.XXXXXX.sh")
trap 'rm -f "$payload"' EXIT
cat >"$payload" <<PAYLOAD
#!/bin/sh
set -u
fail() { echo "KEEL-VM-FAIL \$KEEL_VM_NAME: \$*"; tail -n 20 /tmp/st/keeld.log; exit 1; }
truncate -s 256M /tmp/bench.img
keeld --cpus 0-1 --mode interrupt --rpc-socket /tmp/k.sock --state-dir /tmp/st || fail keeld
keelctl -s /tmp/k.sock bdev create aio b0 /tmp/bench.img >/dev/null || fail "bdev create"
keelctl -s /tmp/k.sock export start b0 --nbd /dev/nbd0 || fail "keelctl export start --nbd"
q=\$(ls /sys/block/nbd0/mq | wc -l)
nbdkit -U /tmp/nbdkit.sock file /tmp/bench.img || fail nbdkit
nbd-client -unix /tmp/nbdkit.sock /dev/nbd1 -connections \$q -b 512 >/tmp/nbdc.out 2>&1 ||
	{ cat /tmp/nbdc.out; fail nbd-client; }
echo "queues: keeld \$q, nbd-client \$(ls /sys/block/nbd1/mq | wc -l)"
for spec in randread:4k:32 randwrite:4k:32 randread:4k:1 read:128k:8 write:128k:8; do
	rw=\${spec%%:*}; rest=\${spec#*:}; bs=\${rest%%:*}; qd=\${rest#*:}
	for dev in nbd0:keeld nbd1:nbdkit; do
		fio --name=b --filename=/dev/\${dev%%:*} --direct=1 --ioengine=libaio --rw=\$rw \
			--bs=\$bs --iodepth=\$qd --size=192m --runtime=$runtime --time_based \
			--numjobs=1 --output-format=terse --terse-version=3 >/tmp/out 2>/tmp/err ||
			{ cat /tmp/err; fail "fio \$dev \$spec"; }
		# terse v3: field 8 read IOPS, 49 write IOPS.
		awk -F';' -v l=\${dev#*:} -v j=\$rw:\$bs:qd\$qd '{
			printf "KEEL-BENCH %s %s %d\n", j, l, \$8 + \$49 }' /tmp/out
	done
done
nbd-client -d /dev/nbd1 >/dev/null 2>&1
keelctl -s /tmp/k.sock export stop /dev/nbd0 >/dev/null || fail "export stop"
PAYLOAD

"$src/tests/vm/run-vm.sh" --name vm_nbd_bench --payload "$payload" \
	--bin "$build_dir/bin/keeld" --bin "$build_dir/bin/keelctl" --bin fio \
	--bin nbdkit --bin "$plugin:$plugin" --bin "$nbdc:/usr/sbin/nbd-client" \
	--build-dir "$build_dir" --timeout $((runtime * 10 + 150)) >/dev/null || exit $?
# Only the ratios: keeld IOPS / nbdkit IOPS per job, and their geometric mean.
grep -ao 'KEEL-BENCH.*' "$build_dir/vm/vm_nbd_bench.log" | awk '
	{ v[$2, $3] = $4; if (!($2 in seen)) { seen[$2] = 1; order[n++] = $2 } }
	END {
		for (i = 0; i < n; i++) {
			j = order[i]; r = v[j, "nbdkit"] > 0 ? v[j, "keeld"] / v[j, "nbdkit"] : 0
			printf "%-16s keeld/nbdkit %.2f\n", j, r
			if (r > 0) { s += log(r); m++ }
		}
		if (m > 0) printf "%-16s keeld/nbdkit %.2f\n", "geomean", exp(s / m)
	}'
