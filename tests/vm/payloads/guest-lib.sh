#!/bin/sh
# Helpers the keeld payloads share (tests/vm/payloads/keeld-*.sh); the initramfs holds
# this file as /guest-lib.sh (run-vm.sh --file). Callers set N (test name), S (RPC
# socket), ST (state directory), K (keelctl command) and DEVWORD (what to grep in dmesg).

step() { echo "KEEL-VM-STEP $*"; }
fail() {
	echo "KEEL-VM-FAIL $N: $*"
	echo "---- keeld.log (tail)"
	tail -n 40 "$ST/keeld.log" 2>/dev/null
	dmesg | grep -i "$DEVWORD" | tail -n 20
	exit 1
}
keeld_pid() { head -n1 "$ST/keeld.lock" 2>/dev/null; }
start_keeld() {
	# Two reactors in interrupt mode: TCG has 2 slow vCPUs, busy polling would starve fio/mkfs.
	keeld --cpus 0-1 --mode interrupt --rpc-socket "$S" --state-dir "$ST" ||
		fail "keeld did not start"
}
# expect_fail WHAT PATTERN CMD...: CMD must exit 1 and print PATTERN on stderr.
expect_fail() {
	what=$1 pat=$2
	shift 2
	"$@" >/tmp/out 2>/tmp/err
	rc=$?
	[ "$rc" -eq 1 ] || fail "$what: exit $rc, expected 1 ($(cat /tmp/out /tmp/err))"
	grep -q "$pat" /tmp/err || fail "$what: message '$(cat /tmp/err)' lacks '$pat'"
	grep -q 'Sanitizer' /tmp/err && fail "$what: sanitizer report from keelctl: $(cat /tmp/err)"
	step "$what -> $(head -n1 /tmp/err)"
}
# PR_SET_IO_FLUSHER on every thread (reactors, blocking pool, watchdog): the kernel shows
# PF_MEMALLOC_NOIO (0x80000) in field 9 of /proc/PID/task/TID/stat.
check_io_flusher() {
	pid=$(keeld_pid)
	nt=0
	for t in /proc/$pid/task/*; do
		set -- $(cat "$t/stat")
		[ $(($9 & 0x80000)) -ne 0 ] || fail "thread $2 of keeld lacks PF_MEMALLOC_NOIO (flags $9)"
		nt=$((nt + 1))
	done
	step "PR_SET_IO_FLUSHER on all $nt keeld threads; $(grep VmLck /proc/$pid/status | tr -s ' \t' ' ')"
}
# fs_make_and_verify DEV: mkfs.ext4, mount on /mnt/a, write files (sums in /tmp/sums),
# umount, drop caches, mount again, verify. Leaves DEV mounted.
fs_make_and_verify() {
	mkdir -p /mnt/a
	mkfs.ext4 -q -F "$1" || fail "mkfs.ext4"
	mount -t ext4 "$1" /mnt/a || fail "mount"
	for i in 1 2 3 4 5 6; do
		dd if=/dev/urandom of=/mnt/a/f$i bs=64k count=$((i * 4)) 2>/dev/null || fail "write f$i"
	done
	(cd /mnt/a && md5sum f* >/tmp/sums) || fail "md5sum"
	sync
	umount /mnt/a || fail "umount"
	echo 3 >/proc/sys/vm/drop_caches
	mount -t ext4 "$1" /mnt/a || fail "mount again"
	(cd /mnt/a && md5sum -c -s /tmp/sums) || fail "checksums after remount"
	step "mkfs, mount, write, umount, mount, verify on $1: ok"
}
# fs_verify_after_restart DEV: after keeld came back, the old files, the file written
# across the restart (/tmp/during.sum), a new write, umount, e2fsck -fn, mount, verify.
# Leaves DEV unmounted.
fs_verify_after_restart() {
	echo 3 >/proc/sys/vm/drop_caches
	(cd /mnt/a && md5sum -c -s /tmp/sums) || fail "old files after the restart"
	md5sum -c -s /tmp/during.sum || fail "file written during the restart"
	dd if=/dev/urandom of=/mnt/a/after bs=64k count=16 2>/dev/null || fail "write after restart"
	md5sum /mnt/a/after >/tmp/after.sum
	sync
	umount /mnt/a || fail "umount after restart"
	echo 3 >/proc/sys/vm/drop_caches
	e2fsck -fn "$1" >/tmp/fsck 2>&1 || { cat /tmp/fsck; fail "e2fsck after the restart"; }
	mount -t ext4 "$1" /mnt/a || fail "mount after fsck"
	md5sum -c -s /tmp/after.sum || fail "file written after the restart"
	(cd /mnt/a && md5sum -c -s /tmp/sums) || fail "old files after remount"
	umount /mnt/a || fail "umount"
	step "after kill -9 + restart: old files, a write held over the restart, new writes, e2fsck: ok"
}
# A sanitizer build reports to stderr, which is keeld.log once it detaches.
check_sanitizer() {
	if grep -qE 'AddressSanitizer|LeakSanitizer|runtime error:' "$ST/keeld.log"; then
		grep -A30 -E 'AddressSanitizer|LeakSanitizer|runtime error:' "$ST/keeld.log" | head -n 60
		fail "sanitizer report in keeld.log"
	fi
}
