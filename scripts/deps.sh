# Sourced by quickstart.sh and test.sh: the Debian packages keel needs, and one
# function that installs whichever are missing (or names them when not root).

KEEL_BUILD_PACKAGES="build-essential cmake pkg-config libaio-dev liburing-dev libnuma-dev libnl-genl-3-dev libjansson-dev libblkid-dev uuid-dev libgnutls28-dev libnbd-dev libmicrohttpd-dev libsystemd-dev"
KEEL_TEST_PACKAGES="libcunit1-dev python3 jq nbdkit libnbd-bin fuse3 qemu-utils fio e2fsprogs util-linux fdisk kmod clang-format-16 gnutls-bin python3-libnbd python3-prometheus-client nbd-client systemd"
KEEL_VM_PACKAGES="qemu-system-x86 busybox-static cpio"
# The fuzz pass (tests/fuzz/): clang with libFuzzer and its sanitizer runtimes.
KEEL_FUZZ_PACKAGES="clang libfuzzer-14-dev libclang-rt-14-dev"

# keel_missing_packages PKG...: print the packages that are not installed.
keel_missing_packages() {
	local p missing=""
	for p in "$@"; do
		if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
			missing="$missing $p"
		fi
	done
	echo "$missing"
}

# keel_install_packages PKG...: install what is missing; as non-root, name the
# packages and return 1 so the caller stops with a clear message.
keel_install_packages() {
	local missing
	missing=$(keel_missing_packages "$@")
	[ -z "${missing// /}" ] && return 0
	if [ "$(id -u)" -ne 0 ]; then
		echo "keel: these Debian packages are missing:$missing" >&2
		echo "keel: install them as root (apt-get install$missing) or run this script as root" >&2
		return 1
	fi
	echo "keel: installing$missing"
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >/tmp/keel-apt.log 2>&1; then
		# A fresh machine has no package lists yet: update once and retry.
		DEBIAN_FRONTEND=noninteractive apt-get update -q >>/tmp/keel-apt.log 2>&1 || true
		if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >>/tmp/keel-apt.log 2>&1; then
			echo "keel: apt-get install failed; see /tmp/keel-apt.log" >&2
			tail -n 20 /tmp/keel-apt.log >&2
			return 1
		fi
	fi
}
