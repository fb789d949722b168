#!/usr/bin/env bash
# Benchmark (not a test) of the kernel NBD path inside the qemu TCG guest: fio on /dev/nbd0
# served through netlink-configured sockets by keel-nbd-smoke's RAM server, next to the same
# fio job on a brd RAM disk (/dev/ram0) as the in-kernel baseline.
#
# usage: tests/bench/vm-nbd.sh [--build-dir DIR] [--runtime SEC] [--queues 1|2]
#
# Under TCG absolute numbers mean little (every guest instruction is emulated); read the
# nbd/brd ratio of one run. When keeld can run in the VM, swap the server for it.
# Exits 77 when the VM packages cannot be installed (like the VM tests).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/../.." && pwd)
build_dir=$src/build
runtime=10
queues=2
while [ $# -gt 0 ]; do
	case $1 in
	--build-dir) build_dir=$2; shift 2 ;;
	--runtime) runtime=$2; shift 2 ;;
	--queues) queues=$2; shift 2 ;;
	*) echo "usage: $0 [--build-dir DIR] [--runtime SEC] [--queues 1|2]" >&2; exit 2 ;;
	esac
done
case $runtime in *[!0-9]* | '') echo "--runtime: seconds" >&2; exit 2 ;; esac
case $queues in 1 | 2) ;; *) echo "--queues: 1 or 2" >&2; exit 2 ;; esac

smoke=$build_dir/bin/tests/keel-nbd-smoke
[ -x "$smoke" ] || cmake --build "$build_dir" --target keel-nbd-smoke
if ! command -v fio >/dev/null 2>&1; then
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fio >/dev/null 2>&1 ||
		{ echo "vm-nbd: SKIP: cannot install fio" >&2; exit 77; }
fi

payload=$(mktemp "${TMPDIR:-/tmp}/keel-vm-bench.XXXXXX.sh")
trap 'rm -f "$payload"' EXIT
cat >"$payload" <<PAYLOAD
#!/bin/sh
# fio jobs: 4k random read/write QD32, 128k sequential read/write QD8.
jobs() {
	dev=\$1 label=\$2
	for spec in randread:4k:32 randwrite:4k:32 read:128k:8 write:128k:8; do
		rw=\${spec%%:*}; rest=\${spec#*:}; bs=\${rest%%:*}; qd=\${rest#*:}
		fio --name=b --filename=\$dev --direct=1 --ioengine=libaio --rw=\$rw --bs=\$bs \
			--iodepth=\$qd --size=192m --runtime=$runtime --time_based --numjobs=1 \
			--output-format=terse --terse-version=3 >/tmp/out 2>/tmp/err ||
			{ cat /tmp/err; return 1; }
		# terse v3: field 8 read IOPS, 49 write IOPS; 7 read KB/s, 48 write KB/s.
		awk -F';' -v l=\$label -v rw=\$rw -v bs=\$bs -v qd=\$qd '{
			iops = \$8 + \$49; kbs = \$7 + \$48
			printf "KEEL-BENCH %s %s bs=%s qd=%s iops=%d MB/s=%.1f\n", l, rw, bs, qd, iops, kbs / 1024 }' /tmp/out
	done
}
jobs /dev/ram0 brd || exit 1
keel-nbd-smoke serve --queues $queues --size-mib 256 -- sh -c '. /usr/local/share/keel/jobs.sh; jobs /dev/nbd0 nbd' || exit 1
PAYLOAD
# The serve child needs the function too: ship it as a file as well.
sed -n '/^jobs()/,/^}/p' "$payload" >"$payload.jobs"
trap 'rm -f "$payload" "$payload.jobs"' EXIT

log=$build_dir/vm/vm_nbd_bench.log
"$src/tests/vm/run-vm.sh" --name vm_nbd_bench --payload "$payload" \
	--bin "$smoke" --bin fio --file "$payload.jobs:/usr/local/share/keel/jobs.sh" \
	--module "drivers/block/brd.ko rd_nr=1 rd_size=262144" \
	--build-dir "$build_dir" --timeout $((runtime * 8 + 120)) || exit $?
grep -ao 'KEEL-BENCH.*' "$log" | sed 's/^KEEL-BENCH //'
