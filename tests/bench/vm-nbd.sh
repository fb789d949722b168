#!/usr/bin/env bash
# Benchmark (not a test) of the kernel NBD path inside the qemu TCG guest: fio (libaio,
# O_DIRECT) on /dev/nbd0 served by keeld (aio bdev, `keelctl export start --nbd`) next to
# /dev/nbd1 configured by nbd-client (netlink, same number of connections) and served by
# nbdkit's file plugin, both on the SAME pre-filled file in the guest's tmpfs, in the
# same boot.
#
# usage: tests/bench/vm-nbd.sh [--build-dir DIR] [--runtime SEC] [--rounds N]
#
# Like with like: the file is written in full before either server starts (a sparse
# file would make the first server's writes allocate the pages the second reuses). For
# each reactor mode of keeld (adaptive, its default, then interrupt, switched with
# `keelctl reactor mode`) and each fio job, N rounds run keeld, nbdkit, nbdkit, keeld
# (A B B A: a linear drift hits both alike); a round's figure per server is the mean
# of its two runs, a row's figure the median over the rounds. Prints one row per mode
# and job with both servers' IOPS, the ratio keeld/nbdkit (>1: keeld is faster) and
# what each side ran with, the geometric mean per mode, and the run time. Under TCG
# absolute numbers mean little (every guest instruction is emulated, client and
# servers share 2 vCPUs); compare the ratios of one run.
# nbd-client comes from Debian's package (apt-get download + dpkg -x, not installed on the
# host). Exits 77 when fio, nbdkit, nbd-client or the VM packages cannot be had.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/../.." && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
vm_bench_args vm-nbd "$@"
started=$(date +%s)

vm_bench_clients vm-nbd

jobs="randread:4k:32 randwrite:4k:32 randread:4k:1 read:128k:8 write:128k:8"
payload=$(mktemp "${TMPDIR:-/tmp}/keel-vm-bench.XXXXXX.sh")
trap 'rm -f "$payload"' EXIT
cat >"$payload" <<PAYLOAD
#!/bin/sh
set -u
fail() { echo "KEEL-VM-FAIL \$KEEL_VM_NAME: \$*"; tail -n 20 /tmp/st/keeld.log; exit 1; }
# Written in full first: both servers then read and overwrite the same allocated pages.
dd if=/dev/zero of=/tmp/bench.img bs=1M count=256 2>/dev/null || fail "pre-fill"
keeld --cpus 0-1 --rpc-socket /tmp/k.sock --state-dir /tmp/st || fail keeld
keelctl -s /tmp/k.sock bdev create aio b0 /tmp/bench.img >/dev/null || fail "bdev create"
keelctl -s /tmp/k.sock export start b0 --nbd /dev/nbd0 || fail "keelctl export start --nbd"
q=\$(ls /sys/block/nbd0/mq | wc -l)
nbdkit -U /tmp/nbdkit.sock file /tmp/bench.img || fail nbdkit
nbd-client -unix /tmp/nbdkit.sock /dev/nbd1 -connections \$q -b 512 >/tmp/nbdc.out 2>&1 ||
	{ cat /tmp/nbdc.out; fail nbd-client; }
echo "KEEL-BENCH-CONF queues keeld \$q nbd-client \$(ls /sys/block/nbd1/mq | wc -l)"
# run MODE JOB ROUND DEV:LABEL: one fio run, one KEEL-BENCH line (terse v3: field 8
# read IOPS, 49 write IOPS).
run() {
	rw=\${2%%:*}; rest=\${2#*:}; bs=\${rest%%:*}; qd=\${rest#*:}; dev=\${4%%:*}
	fio --name=b --filename=/dev/\$dev --direct=1 --ioengine=libaio --rw=\$rw \
		--bs=\$bs --iodepth=\$qd --size=192m --runtime=$runtime --time_based \
		--numjobs=1 --output-format=terse --terse-version=3 >/tmp/out 2>/tmp/err ||
		{ cat /tmp/err; fail "fio \$dev \$2"; }
	awk -F';' -v m=\$1 -v j=\$2 -v r=\$3 -v l=\${4#*:} '{
		printf "KEEL-BENCH %s %s %s %s %d\n", m, j, r, l, \$8 + \$49 }' /tmp/out
}
for mode in adaptive interrupt; do
	keelctl -s /tmp/k.sock reactor mode \$mode >/dev/null || fail "reactor mode \$mode"
	for spec in $jobs; do
		r=1
		while [ \$r -le $rounds ]; do
			for dev in nbd0:keeld nbd1:nbdkit nbd1:nbdkit nbd0:keeld; do
				run \$mode \$spec \$r \$dev
			done
			r=\$((r + 1))
		done
	done
done
nbd-client -d /dev/nbd1 >/dev/null 2>&1
keelctl -s /tmp/k.sock export stop /dev/nbd0 >/dev/null || fail "export stop"
PAYLOAD

nruns=$((2 * 5 * rounds * 4))
"$src/tests/vm/run-vm.sh" --name vm_nbd_bench --payload "$payload" \
	--bin "$build_dir/bin/keeld" --bin "$build_dir/bin/keelctl" --bin fio \
	--bin nbdkit --bin "$plugin:$plugin" --bin "$nbdc:/usr/sbin/nbd-client" \
	--build-dir "$build_dir" --timeout $((nruns * (runtime + 15) + 300)) >/dev/null || exit $?
log=$build_dir/vm/vm_nbd_bench.log
grep -ao 'KEEL-BENCH-CONF.*' "$log" | sed 's/KEEL-BENCH-CONF/nbd devices:/'
echo "both: fio libaio --direct=1 on the /dev/nbdN device, ${runtime} s per run, --size=192m of a"
echo "  256 MiB file in the guest's tmpfs written in full first; qemu TCG, 2 vCPUs shared by"
echo "  client and server; A B B A per round, median of $rounds rounds of the per-round mean"
echo "keeld: aio bdev on the file, keelctl export start --nbd (netlink), --cpus 0-1, mode as"
echo "  in the row (keelctl reactor mode); nbdkit: file plugin on the same file, nbd-client"
echo "  -unix over netlink with as many connections as keeld's queues"
grep -ao 'KEEL-BENCH [a-z].*' "$log" | awk "$AWK_MEDIAN"'
	{
		key = $2 " " $3; run[key, $4, $5] += $6 / 2
		if (!(key in seen)) { seen[key] = 1; order[n++] = key }
		if (!($2 in mseen)) { mseen[$2] = 1; morder[nm++] = $2 }
		if (!(($2, $3, $4) in rseen)) { rseen[$2, $3, $4] = 1; rounds[key] = rounds[key] " " $4 }
	}
	END {
		printf "%-9s %-16s %12s %12s %13s\n", "mode", "job", "keeld IOPS", "nbdkit IOPS", "keeld/nbdkit"
		for (i = 0; i < n; i++) {
			key = order[i]; split(key, kk, " "); ks = ""; ns = ""
			m = split(rounds[key], rr, " ")
			for (r = 1; r <= m; r++) { ks = ks " " run[key, rr[r], "keeld"]; ns = ns " " run[key, rr[r], "nbdkit"] }
			k = median(ks); b = median(ns); ratio = b > 0 ? k / b : 0
			printf "%-9s %-16s %12.0f %12.0f %13.2f\n", kk[1], kk[2], k, b, ratio
			if (ratio > 0) { lg[kk[1]] += log(ratio); cnt[kk[1]]++ }
		}
		for (i = 0; i < nm; i++) {
			mo = morder[i]
			if (cnt[mo]) printf "%-9s %-16s %39.2f\n", mo, "geomean", exp(lg[mo] / cnt[mo])
		}
	}'
echo "vm-nbd: $rounds rounds x ${runtime} s per run, ran $(($(date +%s) - started)) s in all"
