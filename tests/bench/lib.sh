# shellcheck shell=bash
# Shell helpers shared by the benchmark scripts in tests/bench (sourced, not run).

# median: the median of the numbers on stdin, one per line (the mean of the middle two
# for an even count); fails on empty input.
median() {
	sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit 1
		print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# loadavg: the 1, 5 and 15 minute load averages, for the record of a run.
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# Clients that connect, read, and then stay connected doing nothing: qemu-io sessions
# fed from a fifo each. qemu-io reading a pipe takes the next line only when more
# input arrives, so commands go one at a time (qio_send, then qio_wait_reads). The
# caller provides die() and removes nothing: QIO_DIR holds client I's cI.in and cI.out.
QIO_DIR=
QIO_PIDS=()
QIO_FDS=()

# qio_open I URI: start client I on URI.
qio_open() {
	local fd
	rm -f "$QIO_DIR/c$1.in"
	mkfifo "$QIO_DIR/c$1.in" || die "mkfifo $QIO_DIR/c$1.in"
	stdbuf -oL qemu-io -f raw "$2" <"$QIO_DIR/c$1.in" >"$QIO_DIR/c$1.out" 2>&1 &
	QIO_PIDS[$1]=$!
	exec {fd}>"$QIO_DIR/c$1.in"
	QIO_FDS[$1]=$fd
}

# qio_send I COMMAND: give client I its next command.
qio_send() { echo "$2" >&"${QIO_FDS[$1]}"; }

# qio_reads I: reads client I has reported (its prompt comes before each on the line).
qio_reads() { grep -so 'read [0-9]*/[0-9]* bytes' "$QIO_DIR/c$1.out" | grep -c .; }

# qio_wait_reads I N: wait until client I has reported N reads (a state, not a sleep);
# die when it exits or takes over 30 s.
qio_wait_reads() {
	for _ in $(seq 1 600); do
		[ "$(qio_reads "$1")" -ge "$2" ] && return 0
		kill -0 "${QIO_PIDS[$1]}" 2>/dev/null || die "client $1 exited: $(tail -n 3 "$QIO_DIR/c$1.out")"
		sleep 0.05
	done
	die "client $1 did not report $2 reads: $(tail -n 3 "$QIO_DIR/c$1.out")"
}

# qio_close_all: close every client's input and end it.
qio_close_all() {
	local fd p
	for fd in "${QIO_FDS[@]}"; do exec {fd}>&-; done
	for p in "${QIO_PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
	QIO_FDS=()
	QIO_PIDS=()
}

# The VM benchmarks (vm-nbd.sh, vm-ublk.sh): the same options and the same clients.
# vm_bench_args SCRIPT-NAME ARGS...: sets build_dir (absolute), runtime and rounds from
# --build-dir DIR (default: SRC/build; src must be set), --runtime SEC (4), --rounds N (3).
vm_bench_args() {
	local name=$1
	shift
	build_dir=$src/build runtime=4 rounds=3
	while [ $# -gt 0 ]; do
		case $1 in
		--build-dir) build_dir=$2; shift 2 ;;
		--runtime) runtime=$2; shift 2 ;;
		--rounds) rounds=$2; shift 2 ;;
		*) echo "usage: $name [--build-dir DIR] [--runtime SEC] [--rounds N]" >&2; exit 2 ;;
		esac
	done
	case $runtime in *[!0-9]* | '' | 0) echo "--runtime: seconds" >&2; exit 2 ;; esac
	case $rounds in *[!0-9]* | '' | 0) echo "--rounds: a count" >&2; exit 2 ;; esac
	build_dir=$(cd "$build_dir" && pwd)
}

# vm_bench_clients SCRIPT-NAME: keeld and keelctl built; fio and nbdkit installed; sets
# plugin (nbdkit's file plugin) and nbdc (nbd-client from Debian's package, unpacked
# into the VM cache, not installed on the host). Exits 77 when one cannot be had.
vm_bench_clients() {
	local name=$1 p t dl
	for t in keeld keelctl; do
		[ -x "$build_dir/bin/$t" ] || cmake --build "$build_dir" --target "$t"
	done
	for p in fio:fio nbdkit:nbdkit; do
		command -v "${p%%:*}" >/dev/null 2>&1 && continue
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			"${p#*:}" >/dev/null 2>&1 || { echo "$name: SKIP: cannot install ${p#*:}" >&2; exit 77; }
	done
	plugin=$(ls /usr/lib/*/nbdkit/plugins/nbdkit-file-plugin.so 2>/dev/null | head -n1)
	[ -n "$plugin" ] || { echo "$name: SKIP: nbdkit file plugin not found" >&2; exit 77; }
	nbdc=$build_dir/vm-cache/nbd-client/sbin/nbd-client
	if [ ! -x "$nbdc" ]; then
		dl=$(mktemp -d)
		(cd "$dl" && apt-get download nbd-client >/dev/null 2>&1) ||
			{ echo "$name: SKIP: cannot download nbd-client" >&2; exit 77; }
		mkdir -p "$build_dir/vm-cache/nbd-client"
		dpkg -x "$dl"/nbd-client_*.deb "$build_dir/vm-cache/nbd-client"
		rm -rf "$dl"
		[ -x "$nbdc" ] || { echo "$name: SKIP: no sbin/nbd-client in the package" >&2; exit 77; }
	fi
}

# An awk function for the VM benchmarks' tables: median("" " 3 1 2") -> 2 (a string of
# space-separated numbers; the mean of the middle two for an even count).
AWK_MEDIAN='
	function median(s,    a, n, i, j, t) {
		n = split(s, a, " ")
		for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
		return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}'
