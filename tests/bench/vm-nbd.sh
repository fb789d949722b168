#!/usr/bin/env bash
# Benchmark (not a test) of the kernel NBD path inside the qemu TCG guest: fio (libaio,
# O_DIRECT) on /dev/nbd0 served by keeld (aio bdev, `keelctl export start --nbd`) next to
# /dev/nbd1 configured by nbd-client (netlink, same number of connections) and served by
# nbdkit's file plugin, both on the SAME pre-filled file, in the same boot.
#
# usage: tests/bench/vm-nbd.sh [--build-dir DIR] [--runtime SEC] [--rounds N]
#                              [--layout tmpfs|virtio|both]   (or LAYOUT=... in the environment)
#                              [--count N]
#
# --count N counts instead of timing: each job runs once per server for N requests (N/4
# for 128k) with strace -c attached to every thread of the server, and the table gives
# system calls per request by kind (receive, send, storage submit, wait, futex, all) and,
# for keeld, reactor wake-ups per request (framework_get_reactors). strace slows both
# servers alike; the counts, not the times, are the result. TCG and load do not move them.
#
# Where the file lives (one boot per layout; both: tmpfs, then virtio):
#   tmpfs   the guest's tmpfs, which refuses O_DIRECT on the guest's 6.1 kernel: keeld's
#           aio create hands the file to io_uring (buffered), nbdkit uses the page cache.
#   virtio  an ext4 filesystem (made on the host with mkfs.ext4) on a qemu virtio disk
#           (-drive if=virtio,cache=none: O_DIRECT down to the host's disk), mounted in the
#           guest: keeld's aio bdev is O_DIRECT, nbdkit's file plugin uses the guest's
#           page cache as it does by default.
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
layout=${LAYOUT:-both}
count=0
args=()
while [ $# -gt 0 ]; do
	case $1 in
	--layout) layout=$2; shift 2 ;;
	--count) count=$2; shift 2 ;;
	*) args+=("$1"); shift ;;
	esac
done
vm_bench_args vm-nbd "${args[@]}"
skip() { echo "vm-nbd: SKIP: $*" >&2; exit 77; }
case $layout in tmpfs | virtio) layouts=$layout ;; both) layouts="tmpfs virtio" ;;
*) echo "--layout: tmpfs, virtio or both" >&2; exit 2 ;; esac
case $count in *[!0-9]* | '') echo "--count: a number of requests" >&2; exit 2 ;; esac
[ "$count" -eq 0 ] || rounds=1
started=$(date +%s)

vm_bench_clients vm-nbd

jobs="randread:4k:32 randwrite:4k:32 randread:4k:1 read:128k:8 write:128k:8"
payload=$(mktemp "${TMPDIR:-/tmp}/keel-vm-bench.XXXXXX.sh")
disk_img=$build_dir/vm/vm-nbd-disk.$$.img # per run: parallel runs do not share it
trap 'rm -f "$payload" "$disk_img"' EXIT

# report_counts LOG: system calls per request of each server, by kind, from KEEL-SC lines.
report_counts() {
	echo "system calls per request on the server side (strace -c -f on all its threads), fio"
	echo "  libaio --direct=1 on /dev/nbdN, $count requests per 4k job, $((count / 4)) per 128k job"
	echo "  recv: read/recv*; send: write/send*; disk: io_submit/io_uring_enter/io_getevents/"
	echo "  pread/pwrite*/fdatasync; wait: epoll/poll/nanosleep; wake: keeld reactor wake-ups"
	grep -ao 'KEEL-SC .*' "$1" | awk '
	function kind(c) {
		if (c ~ /^(read|readv|recvfrom|recvmsg|recvmmsg)$/) return "recv"
		if (c ~ /^(write|writev|sendto|sendmsg|sendmmsg)$/) return "send"
		if (c ~ /^(io_submit|io_uring_enter|io_getevents|pread64|pwrite64|preadv|pwritev|preadv2|pwritev2|fdatasync|fsync)$/) return "disk"
		if (c ~ /^(epoll_wait|epoll_pwait|epoll_pwait2|poll|ppoll|select|pselect6|nanosleep|clock_nanosleep)$/) return "wait"
		if (c == "futex") return "futex"
		return "other"
	}
	{
		key = $2 " " $3 " " $4; n[key] = $5
		if (!(key in seen)) { seen[key] = 1; order[k++] = key }
		if ($6 == "total") next
		if ($6 == "wakeups") { wk[key] = $7; next }
		v[key, kind($6)] += $7; all[key] += $7
	}
	END {
		printf "%-9s %-16s %-7s %6s %6s %6s %6s %6s %6s %6s %6s\n", "mode", "job", "server",
			"recv", "send", "disk", "wait", "futex", "other", "all", "wake"
		for (i = 0; i < k; i++) {
			key = order[i]; split(key, kk, " "); m = n[key]
			printf "%-9s %-16s %-7s %6.2f %6.2f %6.2f %6.2f %6.2f %6.2f %6.2f %6s\n", kk[1], kk[2],
				kk[3], v[key, "recv"] / m, v[key, "send"] / m, v[key, "disk"] / m,
				v[key, "wait"] / m, v[key, "futex"] / m, v[key, "other"] / m, all[key] / m,
				(key in wk) ? sprintf("%.2f", wk[key] / m) : "-"
		}
	}'
}

# bench_layout LAYOUT: one boot, both servers on the file of LAYOUT, then the table.
bench_layout() {
local lay=$1 dir=/tmp mount_cmd=: vm_args=() qemu_args=${KEEL_VM_QEMU_ARGS:-} count_bins=()
if [ "$count" -gt 0 ]; then
	command -v strace >/dev/null || skip "strace is needed for --count"
	count_bins=(--bin "$(command -v strace)")
fi
if [ "$lay" = virtio ]; then
	command -v mkfs.ext4 >/dev/null || skip "mkfs.ext4 (e2fsprogs) is needed for --layout virtio"
	mkdir -p "$build_dir/vm"
	rm -f "$disk_img"
	truncate -s 512M "$disk_img"
	mkfs.ext4 -q -F "$disk_img" || skip "mkfs.ext4 on $disk_img failed"
	dir=/mnt/disk
	mount_cmd="mkdir -p /mnt/disk && mount -t ext4 /dev/vda /mnt/disk"
	qemu_args="$qemu_args -drive file=$disk_img,if=virtio,cache=none,format=raw"
	for m in virtio/virtio_ring virtio/virtio virtio/virtio_pci_modern_dev \
		virtio/virtio_pci_legacy_dev virtio/virtio_pci block/virtio_blk; do
		vm_args+=(--module "drivers/$m.ko")
	done
fi
cat >"$payload" <<PAYLOAD
#!/bin/sh
set -u
fail() { echo "KEEL-VM-FAIL \$KEEL_VM_NAME: \$*"; tail -n 20 /tmp/st/keeld.log; exit 1; }
$mount_cmd || fail "mount the virtio disk"
# Written in full first: both servers then read and overwrite the same allocated blocks.
dd if=/dev/zero of=$dir/bench.img bs=1M count=256 conv=fsync 2>/dev/null || fail "pre-fill"
keeld --cpus 0-1 --rpc-socket /tmp/k.sock --state-dir /tmp/st || fail keeld
keelctl -s /tmp/k.sock bdev create aio b0 $dir/bench.img >/dev/null || fail "bdev create"
echo "KEEL-BENCH-CONF keeld bdev \$(keelctl -s /tmp/k.sock rpc bdev_get_bdevs '{"name":"b0"}' |
	tr -d ' \n' | grep -oE '"(product_name|direct|io_path)":("[^"]*"|[a-z]*)' | tr '\n' ' ')"
keelctl -s /tmp/k.sock export start b0 --nbd /dev/nbd0 || fail "keelctl export start --nbd"
q=\$(ls /sys/block/nbd0/mq | wc -l)
nbdkit -U /tmp/nbdkit.sock file $dir/bench.img || fail nbdkit
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
wakeups() {
	keelctl -s /tmp/k.sock rpc framework_get_reactors |
		awk -F: '/"wakeups_[a-z]*"/ { s += \$2 } END { print s + 0 }'
}
# count MODE JOB DEV:LABEL: N requests with strace -c on every thread of the server;
# one KEEL-SC line per system call and one for keeld's reactor wake-ups.
count() {
	rw=\${2%%:*}; rest=\${2#*:}; bs=\${rest%%:*}; qd=\${rest#*:}; dev=\${3%%:*}; l=\${3#*:}
	n=$count; [ \$bs = 4k ] || n=\$(($count / 4))
	if [ \$l = keeld ]; then pid=\$(pidof keeld); else pid=\$(pidof nbdkit); fi
	strace -c -f -q -o /tmp/sc -p "\$(ls /proc/\$pid/task | tr '\\n' ' ')" 2>/tmp/st.err &
	sp=\$!
	sleep 1 # strace attaches in well under a second; it prints nothing when it has
	w0=\$(wakeups)
	fio --name=b --filename=/dev/\$dev --direct=1 --ioengine=libaio --rw=\$rw \
		--bs=\$bs --iodepth=\$qd --size=192m --number_ios=\$n \
		--numjobs=1 --output-format=terse --terse-version=3 >/tmp/out 2>/tmp/err ||
		{ cat /tmp/err; fail "fio \$dev \$2"; }
	w1=\$(wakeups)
	kill -INT \$sp; wait \$sp
	awk -v m=\$1 -v j=\$2 -v l=\$l -v n=\$n '\$NF ~ /^[a-z_0-9]+\$/ && \$4 ~ /^[0-9]+\$/ {
		printf "KEEL-SC %s %s %s %d %s %d\n", m, j, l, n, \$NF, \$4 }' /tmp/sc
	[ \$l = keeld ] && echo "KEEL-SC \$1 \$2 keeld \$n wakeups \$((w1 - w0))"
	return 0
}
for mode in adaptive interrupt; do
	keelctl -s /tmp/k.sock reactor mode \$mode >/dev/null || fail "reactor mode \$mode"
	for spec in $jobs; do
		if [ $count -gt 0 ]; then
			count \$mode \$spec nbd0:keeld
			count \$mode \$spec nbd1:nbdkit
			continue
		fi
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
KEEL_VM_QEMU_ARGS=$qemu_args "$src/tests/vm/run-vm.sh" --name "vm_nbd_bench_$lay" \
	--payload "$payload" "${vm_args[@]}" \
	--bin "$build_dir/bin/keeld" --bin "$build_dir/bin/keelctl" --bin fio "${count_bins[@]}" \
	--bin nbdkit --bin "$plugin:$plugin" --bin "$nbdc:/usr/sbin/nbd-client" \
	--build-dir "$build_dir" --timeout $((nruns * (runtime + 15) + 300)) >/dev/null || exit $?
log=$build_dir/vm/vm_nbd_bench_$lay.log
echo "== layout $lay =="
grep -ao 'KEEL-BENCH-CONF.*' "$log" | sed 's/KEEL-BENCH-CONF/conf:/'
if [ "$count" -gt 0 ]; then
	report_counts "$log"
	return
fi
case $lay in
tmpfs) where="in the guest's tmpfs (no O_DIRECT on 6.1)" ;;
*) where="on ext4 on a virtio disk (qemu cache=none)" ;;
esac
echo "both: fio libaio --direct=1 on the /dev/nbdN device, ${runtime} s per run, --size=192m of a"
echo "  256 MiB file $where, written in full first; qemu TCG, 2 vCPUs shared by"
echo "  client and server; A B B A per round, median of $rounds rounds of the per-round mean"
echo "keeld: keelctl bdev create aio on the file (conf line: what serves it), keelctl export"
echo "  start --nbd (netlink), --cpus 0-1, mode as in the row (keelctl reactor mode); nbdkit:"
echo "  file plugin on the same file, nbd-client -unix over netlink with as many connections"
echo "  as keeld's queues"
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
}

for lay in $layouts; do
	bench_layout "$lay"
done
echo "vm-nbd: $rounds rounds x ${runtime} s per run, ran $(($(date +%s) - started)) s in all"
