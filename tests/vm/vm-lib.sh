# shellcheck shell=bash
# Shared helpers for the kernel-NBD VM tests (sourced by run-vm.sh and build-initramfs.sh).
#
# The host kernel of our machines has no nbd driver, so the kernel path is tested in a
# qemu TCG guest that boots Debian's own kernel package from an initramfs. Everything
# the guest needs comes from Debian packages; nothing else is downloaded.
#
# Exit code 77 (skip) is used ONLY when the needed packages cannot be installed.

VM_SKIP=77

vm_log() { printf 'vm: %s\n' "$*" >&2; }
vm_die() { printf 'vm: error: %s\n' "$*" >&2; exit 1; }
vm_skip() { printf 'vm: SKIP: %s\n' "$*" >&2; exit "$VM_SKIP"; }

# Run as root or through sudo when it is there (CI runs as root).
vm_as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo -n "$@"
	else
		return 1
	fi
}

VM_APT_UPDATED=0
vm_apt_install() {
	local pkgs=("$@")
	vm_log "installing ${pkgs[*]}"
	if [ "$VM_APT_UPDATED" -eq 0 ]; then
		vm_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
		VM_APT_UPDATED=1
	fi
	vm_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		"${pkgs[@]}" >/dev/null 2>&1
}

# Host tools: qemu (TCG), a static busybox for the guest shell, cpio for the image.
vm_ensure_host_tools() {
	local missing=()
	command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)
	[ -x /bin/busybox ] && file_is_static /bin/busybox || missing+=(busybox-static)
	command -v cpio >/dev/null 2>&1 || missing+=(cpio)
	command -v gzip >/dev/null 2>&1 || missing+=(gzip)
	[ "${#missing[@]}" -eq 0 ] && return 0
	vm_apt_install "${missing[@]}" || vm_skip "cannot install host packages: ${missing[*]}"
	command -v qemu-system-x86_64 >/dev/null 2>&1 || vm_skip "qemu-system-x86_64 missing after install"
	file_is_static /bin/busybox || vm_skip "/bin/busybox is not the static build (package busybox-static)"
	command -v cpio >/dev/null 2>&1 || vm_skip "cpio missing after install"
}

# A static binary has no PT_INTERP; ldd says "not a dynamic executable".
file_is_static() {
	[ -x "$1" ] || return 1
	! ldd "$1" >/dev/null 2>&1
}

# vm_kernel_pkg_match PATTERN: the newest package whose name matches the extended regular
# expression PATTERN (e.g. 'linux-image-6\.12\..*-cloud-amd64-unsigned'); empty if none.
vm_kernel_pkg_match() {
	apt-cache search --names-only "^$1\$" 2>/dev/null | awk '{ print $1 }' | sort -V | tail -n1
}

# vm_ensure_kernel CACHE_DIR [PATTERN]: prints the folder into which a Debian kernel image
# package is unpacked (CACHE_DIR/kernel-<pkg>), downloading it once. Without PATTERN it is
# the current default kernel: linux-image-amd64 is a metapackage, the real image is the
# package it depends on. With PATTERN (a regular expression for package names, see
# vm_kernel_pkg_match) it is the newest match, e.g. Debian 12's 6.12 kernel for ublk.
vm_ensure_kernel() {
	local cache=$1 pattern=${2:-} pkg dir deb
	mkdir -p "$cache"
	if [ -n "${KEEL_VM_KERNEL_PKG:-}" ]; then
		pkg=$KEEL_VM_KERNEL_PKG
	elif [ -n "$pattern" ]; then
		pkg=$(vm_kernel_pkg_match "$pattern")
		if [ -z "$pkg" ]; then
			vm_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
			VM_APT_UPDATED=1
			pkg=$(vm_kernel_pkg_match "$pattern")
		fi
		if [ -z "$pkg" ]; then
			dir=$(ls -d "$cache"/kernel-* 2>/dev/null | grep -E "/kernel-$pattern\$" | sort -V | tail -n1)
			[ -n "$dir" ] && [ -f "$dir/.complete" ] && { echo "$dir"; return 0; }
			vm_skip "no kernel package matches '$pattern' (apt-get update failed?)"
		fi
	else
		pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
			awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
		if [ -z "$pkg" ]; then
			# An empty package list (fresh machine) also hides the metapackage.
			vm_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
			VM_APT_UPDATED=1
			pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
				awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
		fi
		if [ -z "$pkg" ]; then
			# Offline but cached: reuse the newest unpacked kernel.
			dir=$(ls -d "$cache"/kernel-linux-image-* 2>/dev/null | sort -V | tail -n1)
			[ -n "$dir" ] && [ -f "$dir/.complete" ] && { echo "$dir"; return 0; }
			vm_skip "cannot resolve the package linux-image-amd64 depends on (apt-get update failed?)"
		fi
	fi
	dir=$cache/kernel-$pkg
	if [ -f "$dir/.complete" ]; then
		echo "$dir"
		return 0
	fi
	vm_log "downloading kernel package $pkg (once; cached in $dir)"
	rm -rf "$dir" "$cache/dl"
	mkdir -p "$cache/dl"
	# apt-get download writes into the current folder and needs no root; _apt may be
	# unable to write a root-owned folder, which only produces a warning.
	if ! (cd "$cache/dl" && apt-get download "$pkg" >/dev/null 2>&1); then
		vm_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
		(cd "$cache/dl" && apt-get download "$pkg" >/dev/null 2>&1) ||
			vm_skip "cannot download kernel package $pkg"
	fi
	deb=$(ls "$cache"/dl/*.deb 2>/dev/null | head -n1)
	[ -n "$deb" ] || vm_skip "kernel package $pkg: no .deb after apt-get download"
	mkdir -p "$dir"
	dpkg -x "$deb" "$dir" || vm_die "dpkg -x $deb failed"
	rm -rf "$cache/dl"
	ls "$dir"/boot/vmlinuz-* >/dev/null 2>&1 || vm_die "no boot/vmlinuz-* in $pkg"
	touch "$dir/.complete"
	echo "$dir"
}

# vm_kernel_image KERNEL_DIR
vm_kernel_image() { ls "$1"/boot/vmlinuz-* | sort -V | tail -n1; }

# vm_kernel_builtin KERNEL_DIR REL: whether module REL is built into the kernel image
# (listed in modules.builtin), so there is nothing to load.
vm_kernel_builtin() {
	local kdir=$1 rel=${2%.ko} f
	for f in "$kdir"/lib/modules/*/modules.builtin "$kdir"/usr/lib/modules/*/modules.builtin; do
		[ -f "$f" ] && grep -qx "kernel/$rel.ko" "$f" && return 0
	done
	return 1
}

# vm_kernel_module KERNEL_DIR REL: path of module REL (e.g. drivers/block/nbd.ko) in the
# package, whatever its compression (.ko, .ko.xz, .ko.zst); empty if absent.
vm_kernel_module() {
	local kdir=$1 rel=${2%.ko} base ext
	for base in "$kdir"/lib/modules/*/kernel "$kdir"/usr/lib/modules/*/kernel; do
		for ext in .ko .ko.xz .ko.zst .ko.gz; do
			if [ -f "$base/$rel$ext" ]; then
				echo "$base/$rel$ext"
				return 0
			fi
		done
	done
	return 1
}
