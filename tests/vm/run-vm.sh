#!/usr/bin/env bash
# Boot Debian's kernel under qemu TCG with an initramfs that runs one payload script, and
# turn the guest's serial-console markers into an exit code.
#
# usage: run-vm.sh --name NAME --payload SCRIPT [--bin PATH[:DEST]]... [--file SRC:DEST]...
#                  [--module REL]... [--build-dir DIR] [--timeout SEC] [--mem MB] [--smp N]
#                  [--kernel-pkg REGEX] [--keep-log]
#
#   exit 0   the guest printed "KEEL-VM-PASS NAME"
#   exit 1   it printed "KEEL-VM-FAIL NAME: ...", or nothing before the timeout / power-off;
#            the console tail is printed
#   exit 77  ONLY when qemu, busybox-static, cpio or the kernel package cannot be installed
#
# The kernel package is downloaded once into BUILD_DIR/vm-cache and reused; the initramfs
# and the console log go to BUILD_DIR/vm/NAME.{cpio.gz,log}.
# --kernel-pkg boots the newest Debian kernel package whose name matches REGEX instead of
# the default kernel (the ublk tests: 'linux-image-6\.12\..*-cloud-amd64-unsigned').
# Environment: KEEL_VM_KERNEL_PKG pins the kernel package; KEEL_VM_QEMU_ARGS adds qemu flags.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=vm-lib.sh
. "$here/vm-lib.sh"

name='' payload='' timeout=240 mem=1024 smp=2 kernel_pkg=''
build_dir=${KEEL_BUILD_DIR:-$(cd "$here/../.." && pwd)/build}
initramfs_args=()
while [ $# -gt 0 ]; do
	case $1 in
	--name) name=$2; shift 2 ;;
	--payload) payload=$2; shift 2 ;;
	--bin | --file | --module) initramfs_args+=("$1" "$2"); shift 2 ;;
	--no-default-modules) initramfs_args+=("$1"); shift ;;
	--build-dir) build_dir=$2; shift 2 ;;
	--timeout) timeout=$2; shift 2 ;;
	--mem) mem=$2; shift 2 ;;
	--smp) smp=$2; shift 2 ;;
	--kernel-pkg) kernel_pkg=$2; shift 2 ;;
	-h | --help) sed -n '2,20p' "$0"; exit 0 ;;
	*) vm_die "run-vm: unknown argument $1 (see --help)" ;;
	esac
done
[ -n "$name" ] && [ -n "$payload" ] || vm_die "run-vm: --name and --payload are required"

t0=$(date +%s.%N)
vm_ensure_host_tools
# Parallel ctest runs share the cache: one downloads, the others wait for it.
mkdir -p "$build_dir/vm-cache"
kdir=$(flock "$build_dir/vm-cache/.lock" bash -c '. "$1"; vm_ensure_kernel "$2" "$3"' _ \
	"$here/vm-lib.sh" "$build_dir/vm-cache" "$kernel_pkg")
kernel=$(vm_kernel_image "$kdir")

workdir=$build_dir/vm
mkdir -p "$workdir"
initrd=$workdir/$name.cpio.gz
log=$workdir/$name.log
"$here/build-initramfs.sh" --kernel-dir "$kdir" --out "$initrd" --name "$name" \
	--payload "$payload" "${initramfs_args[@]}"
t1=$(date +%s.%N)

# A guest kernel that dies before init starts (seen: the 6.12 kernel under TCG, an int3
# oops in its own text patching during boot, once in a full-suite run) never ran the payload,
# so that boot says nothing about keel: boot again, at most twice, and say so. A guest
# that reached init is never retried: whatever it did is the result.
for attempt in 1 2 3; do
	vm_log "booting $(basename "$kernel") (tcg, ${mem}M, ${smp} cpus, timeout ${timeout}s); console: $log"
	rc=0
	# -nographic puts the serial console on stdio; stdin is closed so qemu never waits on a tty.
	# shellcheck disable=SC2086
	timeout --kill-after=10 "$timeout" qemu-system-x86_64 \
		-accel tcg -cpu max -m "$mem" -smp "$smp" -nographic -no-reboot \
		-net none -kernel "$kernel" -initrd "$initrd" \
		-append "console=ttyS0 quiet panic=-1 oops=panic" \
		${KEEL_VM_QEMU_ARGS:-} </dev/null >"$log" 2>&1 || rc=$?
	t2=$(date +%s.%N)

	# The serial console uses CRLF line ends.
	tr -d '\r' <"$log" >"$log.txt"
	mv "$log.txt" "$log"
	if grep -aq "KEEL-VM-BOOTED $name" "$log" || ! grep -aq "Kernel panic" "$log"; then
		break
	fi
	[ "$attempt" -lt 3 ] || break
	cp "$log" "$log.boot$attempt"
	vm_log "the guest kernel panicked before init ran (console kept in $log.boot$attempt): booting again"
done
times=$(awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN { printf "prepare %.1fs, vm %.1fs", b - a, c - b }')
booted=$(grep -a -m1 "KEEL-VM-BOOTED $name" "$log" | sed 's/.*uptime=//' || true)

if grep -aq "KEEL-VM-PASS $name\b" "$log"; then
	grep -aoE 'KEEL-VM-.*' "$log" >&2 || true
	vm_log "PASS $name ($times, guest booted at ${booted:-?})"
	exit 0
fi
echo "---- console tail ($log) ----" >&2
tail -n 60 "$log" >&2
echo "----" >&2
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
	vm_log "FAIL $name: timeout after ${timeout}s ($times)"
elif grep -aq "KEEL-VM-FAIL $name" "$log"; then
	vm_log "FAIL $name: $(grep -a -m1 -o "KEEL-VM-FAIL $name.*" "$log") ($times)"
else
	vm_log "FAIL $name: the guest stopped without a marker (qemu rc $rc; kernel panic?) ($times)"
fi
exit 1
