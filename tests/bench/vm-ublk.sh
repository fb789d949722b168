#!/usr/bin/env bash
# Benchmark (not a test) of keel's two kernel paths inside the qemu TCG guest on Debian's
# 6.12 kernel: fio (libaio, O_DIRECT) on /dev/ublkb0 and on /dev/nbd0, both served by the
# SAME keeld from the SAME 2-replica volume, plus /dev/nbd1 (nbd-client over netlink,
# nbdkit's file plugin on a file in the guest's tmpfs) as the outside reference, in one
# boot.
#
# usage: tests/bench/vm-ublk.sh [--build-dir DIR] [--runtime SEC] [--rounds N]
#
# Jobs: 4k randread and randwrite at QD1 and QD32, 128k read and write at QD8. Each round
# runs ublk, nbd, nbdkit, nbdkit, nbd, ublk (a linear drift hits all alike); a round's
# figure per device is the mean of its two runs, a row's figure the median over the
# rounds. Prints IOPS per device, the ratio ublk/nbd (>1: ublk is faster) per row and its
# geometric mean. Under TCG absolute numbers mean little (every guest instruction is
# emulated, client and server share 2 vCPUs): compare the ratios of one run.
# Exits 77 when fio, nbdkit, nbd-client or the VM packages cannot be had.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/../.." && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
vm_bench_args vm-ublk "$@"
started=$(date +%s)

vm_bench_clients vm-ublk

jobs="randread:4k:1 randread:4k:32 randwrite:4k:1 randwrite:4k:32 read:128k:8 write:128k:8"
payload=$(mktemp "${TMPDIR:-/tmp}/keel-vm-ublk-bench.XXXXXX.sh")
trap 'rm -f "$payload"' EXIT
cat >"$payload" <<PAYLOAD
#!/bin/sh
set -u
K="keelctl -s /tmp/k.sock --timeout 120"
fail() { echo "KEEL-VM-FAIL \$KEEL_VM_NAME: \$*"; tail -n 20 /tmp/st/keeld.log; exit 1; }
# Every file written in full first, so no run allocates pages another reuses.
for f in r0 r1; do dd if=/dev/zero of=/tmp/\$f bs=1M count=161 2>/dev/null || fail "pre-fill"; done
dd if=/dev/zero of=/tmp/ref.img bs=1M count=160 2>/dev/null || fail "pre-fill"
keeld --cpus 0-1 --rpc-socket /tmp/k.sock --state-dir /tmp/st || fail keeld
\$K volume create v --size 160M --replica /tmp/r0 --replica /tmp/r1 --force >/dev/null ||
	fail "volume create"
\$K export start v --ublk 0 >/dev/null || fail "export start --ublk"
\$K export start v --nbd /dev/nbd0 >/dev/null || fail "export start --nbd"
q=\$(ls /sys/block/nbd0/mq | wc -l)
nbdkit -U /tmp/nbdkit.sock file /tmp/ref.img || fail nbdkit
nbd-client -unix /tmp/nbdkit.sock /dev/nbd1 -connections \$q -b 512 >/tmp/nbdc.out 2>&1 ||
	{ cat /tmp/nbdc.out; fail nbd-client; }
echo "KEEL-BENCH-CONF queues ublk \$(ls /sys/block/ublkb0/mq | wc -l) nbd \$q nbd-client \$(ls /sys/block/nbd1/mq | wc -l)"
# run JOB ROUND DEV:LABEL: one fio run, one KEEL-BENCH line (terse v3: field 8 read IOPS,
# 49 write IOPS).
run() {
	rw=\${1%%:*}; rest=\${1#*:}; bs=\${rest%%:*}; qd=\${rest#*:}; dev=\${3%%:*}
	fio --name=b --filename=/dev/\$dev --direct=1 --ioengine=libaio --rw=\$rw \
		--bs=\$bs --iodepth=\$qd --size=128m --runtime=$runtime --time_based \
		--numjobs=1 --output-format=terse --terse-version=3 >/tmp/out 2>/tmp/err ||
		{ cat /tmp/err; fail "fio \$dev \$1"; }
	awk -F';' -v j=\$1 -v r=\$2 -v l=\${3#*:} '{
		printf "KEEL-BENCH %s %s %s %d\n", j, r, l, \$8 + \$49 }' /tmp/out
}
for spec in $jobs; do
	r=1
	while [ \$r -le $rounds ]; do
		for dev in ublkb0:ublk nbd0:nbd nbd1:nbdkit nbd1:nbdkit nbd0:nbd ublkb0:ublk; do
			run \$spec \$r \$dev
		done
		r=\$((r + 1))
	done
done
nbd-client -d /dev/nbd1 >/dev/null 2>&1
\$K export stop /dev/nbd0 >/dev/null || fail "export stop nbd0"
\$K export stop /dev/ublkb0 >/dev/null || fail "export stop ublkb0"
PAYLOAD

nruns=$((6 * rounds * 6))
"$src/tests/vm/run-vm.sh" --name vm_ublk_bench --payload "$payload" \
	--kernel-pkg 'linux-image-6\.12\..*-cloud-amd64-unsigned' \
	--module drivers/block/ublk_drv.ko --mem 2048 \
	--bin "$build_dir/bin/keeld" --bin "$build_dir/bin/keelctl" --bin fio \
	--bin nbdkit --bin "$plugin:$plugin" --bin "$nbdc:/usr/sbin/nbd-client" \
	--build-dir "$build_dir" --timeout $((nruns * (runtime + 15) + 300)) >/dev/null || exit $?
log=$build_dir/vm/vm_ublk_bench.log
grep -ao 'KEEL-BENCH-CONF.*' "$log" | sed 's/KEEL-BENCH-CONF/devices:/'
echo "all: fio libaio --direct=1 on the block device, ${runtime} s per run, --size=128m;"
echo "  qemu TCG (Debian's 6.12 cloud kernel), 2 vCPUs shared by client and server;"
echo "  ublk nbd nbdkit nbdkit nbd ublk per round, median of $rounds rounds of the per-round mean"
echo "ublk, nbd: one keeld (--cpus 0-1, adaptive mode), one 2-replica volume on files in"
echo "  the guest's tmpfs, keelctl export start --ublk 0 and --nbd /dev/nbd0"
echo "nbdkit: file plugin on a file in the same tmpfs, nbd-client -unix over netlink with"
echo "  as many connections as keeld's NBD queues"
grep -ao 'KEEL-BENCH [a-z].*' "$log" | awk "$AWK_MEDIAN"'
	{
		key = $2; run[key, $3, $4] += $5 / 2
		if (!(key in seen)) { seen[key] = 1; order[n++] = key }
		if (!((key, $3) in rseen)) { rseen[key, $3] = 1; rounds[key] = rounds[key] " " $3 }
	}
	END {
		printf "%-16s %11s %11s %12s %9s\n", "job", "ublk IOPS", "nbd IOPS", "nbdkit IOPS", "ublk/nbd"
		for (i = 0; i < n; i++) {
			key = order[i]; us = ""; ns = ""; ks = ""
			m = split(rounds[key], rr, " ")
			for (r = 1; r <= m; r++) {
				us = us " " run[key, rr[r], "ublk"]; ns = ns " " run[key, rr[r], "nbd"]
				ks = ks " " run[key, rr[r], "nbdkit"]
			}
			u = median(us); b = median(ns); k = median(ks); ratio = b > 0 ? u / b : 0
			printf "%-16s %11.0f %11.0f %12.0f %9.2f\n", key, u, b, k, ratio
			if (ratio > 0) { lg += log(ratio); cnt++ }
		}
		if (cnt) printf "%-16s %46.2f\n", "geomean", exp(lg / cnt)
	}'
echo "vm-ublk: $rounds rounds x ${runtime} s per run, ran $(($(date +%s) - started)) s in all"
