#!/usr/bin/env bash
# Build a gzip'd newc initramfs that boots Debian's kernel into a busybox init, loads the
# given modules, runs one payload script and prints a PASS/FAIL marker on the console.
#
# usage: build-initramfs.sh --kernel-dir DIR --out FILE --name NAME --payload SCRIPT
#            [--bin PATH[:DEST]]... [--file SRC:DEST]... [--module REL]... [--no-default-modules]
#
#   --bin      a dynamically (or statically) linked program; copied to DEST (default
#              /usr/local/bin/BASENAME) with every library ldd lists, at the same paths.
#   --file     any other file, copied as is.
#   --module   a module path relative to lib/modules/*/kernel (e.g. drivers/block/loop.ko),
#              optionally followed by parameters ("drivers/block/brd.ko rd_nr=1"); loaded
#              after the defaults in the order given. .ko.xz/.ko.zst are unpacked.
#   defaults:  crypto/crc32c_generic lib/crc16 fs/mbcache fs/jbd2/jbd2 fs/ext4/ext4
#              drivers/block/nbd (insmod order matters: busybox has no modules.dep).
#
# Guest contract (see docs/kernel-nbd.md): the payload runs as root with PATH set, cwd /tmp,
# KEEL_VM_NAME exported; exit 0 = pass, anything else = fail. It may print its own
# "KEEL-VM-FAIL <name>: <reason>" lines; init always prints exactly one final
# "KEEL-VM-PASS <name>" or "KEEL-VM-FAIL <name>: ..." and then powers off.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=vm-lib.sh
. "$here/vm-lib.sh"

kdir='' out='' name='' payload='' default_modules=1
bins=() files=() extra_modules=()
while [ $# -gt 0 ]; do
	case $1 in
	--kernel-dir) kdir=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	--name) name=$2; shift 2 ;;
	--payload) payload=$2; shift 2 ;;
	--bin) bins+=("$2"); shift 2 ;;
	--file) files+=("$2"); shift 2 ;;
	--module) extra_modules+=("$2"); shift 2 ;;
	--no-default-modules) default_modules=0; shift ;;
	*) vm_die "build-initramfs: unknown argument $1" ;;
	esac
done
[ -n "$kdir" ] && [ -n "$out" ] && [ -n "$name" ] && [ -n "$payload" ] ||
	vm_die "build-initramfs: --kernel-dir, --out, --name and --payload are required"
[ -f "$payload" ] || vm_die "payload $payload not found"
case $name in *[!A-Za-z0-9_.-]*) vm_die "name '$name': use [A-Za-z0-9_.-]" ;; esac

modules=()
if [ "$default_modules" -eq 1 ]; then
	modules=(crypto/crc32c_generic.ko lib/crc16.ko fs/mbcache.ko fs/jbd2/jbd2.ko
		fs/ext4/ext4.ko drivers/block/nbd.ko)
fi
modules+=("${extra_modules[@]}")

root=$(mktemp -d "${TMPDIR:-/tmp}/keel-initramfs.XXXXXX")
trap 'rm -rf "$root"' EXIT

# Mirror the host's merged-/usr symlinks so that the paths ldd prints resolve the same way.
for d in bin sbin lib lib64; do
	if [ -L "/$d" ]; then
		ln -s "$(readlink "/$d")" "$root/$d"
	fi
done
mkdir -p "$root"/{usr/bin,usr/sbin,usr/lib,usr/lib64,usr/local/bin,etc,proc,sys,dev,tmp,mnt,run,root,lib/modules/keel}
[ -d "$root/bin" ] || mkdir -p "$root/bin"
[ -d "$root/sbin" ] || mkdir -p "$root/sbin"

# busybox: the applets are symlinks created at build time (no --install at boot).
cp /bin/busybox "$root/bin/busybox"
while read -r applet; do
	[ -n "$applet" ] || continue
	dest=$root/$applet
	mkdir -p "$(dirname "$dest")"
	[ -e "$dest" ] || [ -L "$dest" ] || ln -s /bin/busybox "$dest"
done < <(/bin/busybox --list-full)

# copy_file SRC DEST_IN_GUEST: dereference symlinks; never follow into the host.
copy_file() {
	local src=$1 dest=$root$2
	mkdir -p "$(dirname "$dest")"
	rm -f "$dest"
	cp -L "$src" "$dest"
}

copied_libs=
copy_libs_of() {
	local bin=$1 lib
	# "libx.so => /path (addr)" or "/lib64/ld-linux-x86-64.so.2 (addr)"; static: no output.
	while read -r lib; do
		case " $copied_libs " in *" $lib "*) continue ;; esac
		copy_file "$lib" "$lib"
		copied_libs="$copied_libs $lib"
	done < <(ldd "$bin" 2>/dev/null | awk '
		/=> not found/ { print "MISSING:" $1; next }
		$2 == "=>" && $3 ~ /^\// { print $3; next }
		$1 ~ /^\// { print $1 }')
	if ldd "$bin" 2>/dev/null | grep -q 'not found'; then
		vm_die "$bin: ldd reports missing libraries: $(ldd "$bin" | grep 'not found' | tr '\n' ' ')"
	fi
}

for spec in "${bins[@]}"; do
	src=${spec%%:*}
	if [ "$src" = "$spec" ]; then dest=/usr/local/bin/$(basename "$src"); else dest=${spec#*:}; fi
	if [ ! -f "$src" ]; then
		# A bare name is looked up on the host's PATH (and sbin, which non-root PATHs lack).
		p=$(PATH=$PATH:/usr/sbin:/sbin command -v "$src" || true)
		[ -n "$p" ] || vm_die "binary $src not found"
		src=$p
		[ "$spec" = "${spec%%:*}" ] && dest=$src
	fi
	copy_file "$src" "$dest"
	chmod 0755 "$root$dest"
	copy_libs_of "$src"
done
for spec in "${files[@]}"; do
	copy_file "${spec%%:*}" "${spec#*:}"
done
# libc's NSS and locale are not needed by our programs; an empty passwd keeps tools quiet.
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"
: >"$root/etc/fstab"

# Modules, in load order, unpacked to plain .ko (busybox insmod cannot read .zst).
# A module spec may carry parameters after the path: "drivers/block/brd.ko rd_nr=1".
insmod_lines=
i=0
for spec in "${modules[@]}"; do
	rel=${spec%% *}
	params=
	[ "$rel" != "$spec" ] && params=${spec#* }
	case $params in *[!A-Za-z0-9_=,.\ -]*) vm_die "module parameters '$params': unsafe characters" ;; esac
	if ! src=$(vm_kernel_module "$kdir" "$rel"); then
		# Another kernel build may have it built in (Debian's cloud kernel: ext4).
		vm_kernel_builtin "$kdir" "$rel" && continue
		vm_die "module $rel not found in $kdir"
	fi
	base=$(printf '%02d-%s.ko' "$i" "$(basename "${rel%.ko}")")
	case $src in
	*.ko) cp "$src" "$root/lib/modules/keel/$base" ;;
	*.ko.xz) xz -dc "$src" >"$root/lib/modules/keel/$base" ;;
	*.ko.zst) zstd -qdc "$src" >"$root/lib/modules/keel/$base" ;;
	*.ko.gz) gzip -dc "$src" >"$root/lib/modules/keel/$base" ;;
	esac
	insmod_lines="${insmod_lines}insmod /lib/modules/keel/$base $params || fail \"insmod $base $params failed\"
"
	i=$((i + 1))
done

cp "$payload" "$root/payload.sh"
chmod 0755 "$root/payload.sh"

cat >"$root/init" <<INIT
#!/bin/busybox sh
# Generated by tests/vm/build-initramfs.sh for test "$name".
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export KEEL_VM_NAME=$name
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /dev/shm
echo "KEEL-VM-BOOTED $name uptime=\$(cut -d' ' -f1 /proc/uptime)s"
fail() {
	echo "KEEL-VM-FAIL $name: \$*"
	sync
	poweroff -f
	sleep 60
}
$insmod_lines
cd /tmp
/bin/sh /payload.sh
rc=\$?
if [ \$rc -eq 0 ]; then
	echo "KEEL-VM-PASS $name uptime=\$(cut -d' ' -f1 /proc/uptime)s"
else
	echo "KEEL-VM-FAIL $name: payload exited with \$rc uptime=\$(cut -d' ' -f1 /proc/uptime)s"
fi
sync
poweroff -f
sleep 60
INIT
chmod 0755 "$root/init"

mkdir -p "$(dirname "$out")"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) |
	gzip -1 >"$out.tmp"
mv "$out.tmp" "$out"
vm_log "initramfs $out: $(du -h "$out" | cut -f1)"
