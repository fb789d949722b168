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
