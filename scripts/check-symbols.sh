#!/usr/bin/env bash
# Check that every global symbol keel's static libraries define carries a prefix of its
# library: scripts/check-symbols.sh [BUILD_DIR] (default: build).
#
# keel links into one program with libc, libnuma, liburing, libaio, libnl, jansson and,
# one day, an embedder's own code: a global named thread_create or aio_queue_init can
# collide with any of them (aio_ is even reserved by POSIX for <aio.h>). So each library
# exports keel_ (the public API of include/keel) and its own private prefixes, listed in
# PREFIXES below, and nothing else. Lists each offending symbol with the object that
# defines it and exits 1; exits 77 when nm is missing, 2 on usage errors.
set -u

case ${1:-} in
--help | -h)
	sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
	exit 0
	;;
esac
BUILD=${1:-build}

if ! command -v nm >/dev/null; then
	echo "check-symbols: skipped: nm is not installed (apt-get install binutils)" >&2
	exit 77
fi

# Private prefixes of each library, besides keel_. A new library needs a line here: the
# check refuses a library it has no rule for rather than letting it export anything.
declare -A PREFIXES=(
	[libkeel_reactor.a]="krt_"              # reactors, threads, pollers, rings, clock, log
	[libkeel_bdev.a]="bdev_"                # the bdev core and its modules (bdev_aio_, ...)
	[libkeel_nexus.a]="nexus_"              # replicated volumes
	[libkeel_nbd.a]="nbd_"                  # NBD server and kernel frontend
	[libkeel_ublk.a]="ublk_"                # ublk frontend (/dev/ublkbN)
	[libkeel_daemon.a]="keeld_ rpc_ vol_"   # keeld: API, JSON-RPC, volume manager steps
	[libkeel_test_common.a]="ut_"           # the unit-test harness (tests only)
)

shopt -s nullglob
libs=("$BUILD"/lib/libkeel_*.a)
if [ "${#libs[@]}" -eq 0 ]; then
	echo "check-symbols: no libkeel_*.a in $BUILD/lib: build first (cmake -B $BUILD && make -C $BUILD)" >&2
	exit 2
fi

bad=0
for lib in "${libs[@]}"; do
	name=$(basename "$lib")
	if [ -z "${PREFIXES[$name]+set}" ]; then
		echo "check-symbols: $name: no prefix rule; add its prefixes to scripts/check-symbols.sh"
		bad=1
		continue
	fi
	read -ra own <<<"${PREFIXES[$name]}"
	pattern="^(keel_$(printf '|%s' "${own[@]}"))"
	# nm -A: "ARCHIVE:MEMBER:ADDRESS TYPE NAME". Names starting with "__" are the
	# compiler's (ASan's __odr_asan.NAME beside each global NAME): reserved for the
	# implementation, never written in keel.
	if ! syms=$(nm -A -g --defined-only "$lib"); then
		echo "check-symbols: nm failed on $lib" >&2
		exit 2
	fi
	while read -r where _type sym; do
		[ -n "${sym:-}" ] || continue
		case $sym in __*) continue ;; esac
		if ! [[ $sym =~ $pattern ]]; then
			member=${where#*:}
			member=${member%%:*}
			echo "check-symbols: $name($member): global '$sym' has none of the prefixes keel_ ${PREFIXES[$name]}"
			bad=1
		fi
	done <<<"$syms"
done

if [ "$bad" -ne 0 ]; then
	echo "check-symbols: FAILED: rename the symbols above (or make them static); see docs/contributing.md"
	exit 1
fi
echo "check-symbols: ${#libs[@]} libraries export only their prefixes"
