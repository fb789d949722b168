#!/usr/bin/env bash
# Check (default) or fix the layout of keel's C sources against .clang-format.
#
#   scripts/format.sh          list the files whose layout differs; exit 1 if any
#   scripts/format.sh --fix    rewrite them in place
#   scripts/format.sh --help
#
# Needs clang-format 16 (Debian: clang-format-16; scripts/test.sh installs it): older
# versions have no InsertBraces and would disagree about the layout. Exits 77 when it
# is missing, so the suite shows the check as skipped, not passed.
set -u
cd "$(dirname "$0")/.." || exit 2

case ${1:-} in
--help | -h)
	sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
	exit 0
	;;
--fix | "") ;;
*)
	echo "format.sh: unknown argument '$1' (see --help)" >&2
	exit 2
	;;
esac

CF=${CLANG_FORMAT:-}
if [ -z "$CF" ]; then
	for c in clang-format-16 clang-format; do
		if command -v "$c" >/dev/null && "$c" --version | grep -q 'version 16\.'; then
			CF=$c
			break
		fi
	done
fi
if [ -z "$CF" ]; then
	echo "format.sh: skipped: clang-format 16 is not installed (apt-get install clang-format-16)" >&2
	exit 77
fi

mapfile -t files < <(git ls-files '*.c' '*.h' 2>/dev/null || find . -name '*.[ch]' -not -path './build*')
[ "${#files[@]}" -gt 0 ] || { echo "format.sh: no C sources found" >&2; exit 2; }
if [ "${1:-}" = --fix ]; then
	"$CF" -i "${files[@]}"
	exit $?
fi
bad=0
for f in "${files[@]}"; do
	if ! "$CF" "$f" | cmp -s - "$f"; then
		echo "format.sh: $f differs from .clang-format (scripts/format.sh --fix rewrites it)"
		bad=1
	fi
done
[ "$bad" = 0 ] && echo "format.sh: ${#files[@]} files match .clang-format"
exit "$bad"
