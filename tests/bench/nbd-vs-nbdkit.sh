#!/usr/bin/env bash
# keeld vs nbdkit as NBD servers over a unix socket, side by side in one run
# (benchmark, not a test: it asserts nothing).
#
# Same 1 GiB file in /dev/shm, written in full, behind both servers (keeld: aio bdev;
# nbdkit: file plugin), fio's nbd engine as the client, one connection. For each keeld
# reactor mode in KEEL_MODES (switched with `keelctl reactor mode`) and each row, ROUNDS
# rounds run keeld, nbdkit, nbdkit, keeld (A B B A: a linear drift of outside load hits
# both alike); a round's figure per server is the mean of its two runs, a row's the
# median over the rounds. fio's nbd engine (libnbd) negotiates structured replies with
# both servers: the read rows measure structured (OFFSET_DATA) reads. Prints a table per mode with keeld/nbdkit per row and what
# both sides ran with, and ends with `min_ratio=X` per mode.
#
# Environment: KEEL_BIN (default build/bin), RUNTIME (seconds per run, default 3),
# ROUNDS (default 3), KEEL_MODES (default "adaptive interrupt"), KEEL_CPUS (keeld
# --cpus, default 0), NBDKIT_CPUS (taskset list for nbdkit, default KEEL_CPUS: both
# servers get the same CPUs), SIZE_MB (default 1024), CLIENT_CPUS (taskset list for
# fio, default none: the client may use any CPU, for both servers alike), TLS_ROWS (1,
# the default: also 4k randread QD32 and 128k read QD8 over TLS, keeld --tls require vs
# nbdkit --tls=require with the same certificates, per mode; 0: skip them), PLAIN_ROWS
# (1, the default; 0: only the TLS rows).
set -u
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"

SRC_DIR=$(cd "$(dirname "$0")/../.." && pwd)
KEEL_BIN=${KEEL_BIN:-$SRC_DIR/build/bin}
RUNTIME=${RUNTIME:-3}
ROUNDS=${ROUNDS:-3}
KEEL_MODES=${KEEL_MODES:-adaptive interrupt}
KEEL_CPUS=${KEEL_CPUS:-0}
SIZE_MB=${SIZE_MB:-1024}
CLIENT_CPUS=${CLIENT_CPUS:-}
NBDKIT_CPUS=${NBDKIT_CPUS-$KEEL_CPUS}
pin() { # pin CPULIST CMD...: run CMD on those CPUs when CPULIST is set
	local cpus=$1
	shift
	if [ -n "$cpus" ]; then taskset -c "$cpus" "$@"; else "$@"; fi
}

for tool in fio nbdkit jq; do
	command -v $tool >/dev/null || { echo "SKIP: $tool is needed"; exit 77; }
done
[ -x "$KEEL_BIN/keeld" ] || { echo "SKIP: no keeld in $KEEL_BIN"; exit 77; }

TMP=$(mktemp -d /tmp/keel-bench.XXXXXX)
IMG=/dev/shm/keel-bench.$$.img
KEELD_PID=
NBDKIT_PID=
NBDKIT_TLS_PID=
cleanup() {
	[ -n "$NBDKIT_TLS_PID" ] && kill -TERM "$NBDKIT_TLS_PID" 2>/dev/null && wait "$NBDKIT_TLS_PID" 2>/dev/null
	[ -n "$KEELD_PID" ] && kill -TERM "$KEELD_PID" 2>/dev/null && wait "$KEELD_PID" 2>/dev/null
	[ -n "$NBDKIT_PID" ] && kill -TERM "$NBDKIT_PID" 2>/dev/null && wait "$NBDKIT_PID" 2>/dev/null
	rm -rf "$TMP" "$IMG"
}
trap cleanup EXIT

# Written data, not a sparse file: both servers then read real pages.
dd if=/dev/urandom of="$IMG" bs=1M count="$SIZE_MB" status=none

"$KEEL_BIN/keeld" --foreground --rpc-socket "$TMP/keeld.sock" --state-dir "$TMP/state" \
	--cpus "$KEEL_CPUS" --log-level warn >"$TMP/keeld.log" 2>&1 &
KEELD_PID=$!
KCTL() { "$KEEL_BIN/keelctl" -s "$TMP/keeld.sock" --timeout 5 "$@"; }
for _ in $(seq 1 100); do
	KCTL rpc keel_get_version >/dev/null 2>&1 && break
	sleep 0.1
done
KCTL bdev create aio bench "$IMG" >/dev/null || { cat "$TMP/keeld.log"; exit 1; }
KCTL export start bench --socket "$TMP/keel.nbd" >/dev/null || { cat "$TMP/keeld.log"; exit 1; }

pin "$NBDKIT_CPUS" nbdkit --exit-with-parent -f -U "$TMP/nbdkit.nbd" file "$IMG" &
NBDKIT_PID=$!
for _ in $(seq 1 100); do [ -S "$TMP/nbdkit.nbd" ] && break; sleep 0.1; done

# run_fio URI RW BS QD -> prints "iops bw_bytes p50_us"
run_fio() {
	local uri=$1 rw=$2 bs=$3 qd=$4 out=$TMP/fio.json

	pin "$CLIENT_CPUS" fio --name=b --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" --iodepth="$qd" \
		--size="${SIZE_MB}M" --runtime="$RUNTIME" --time_based --ramp_time=1 \
		--output-format=json --output="$out" >/dev/null 2>&1 || { echo "0 0 0"; return; }
	jq -r --arg rw "$rw" '.jobs[0] | (if ($rw | test("read")) then .read else .write end) |
		"\(.iops) \(.bw_bytes) \((.clat_ns.percentile["50.000000"] // 0) / 1000)"' "$out"
}
# mean2 A B: their mean, as awk prints numbers.
mean2() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + b) / 2 }'; }

# row KEEL_URI KIT_URI RW BS QD: ROUNDS rounds of A B B A, prints the table row and
# folds its ratio into min_ratio.
row() {
	local kuri=$1 nuri=$2 rw=$3 bs=$4 qd=$5
	local ki=() kb=() kp=() ni=() nb=() np=()
	local i1 b1 p1 i2 b2 p2 i3 b3 p3 i4 b4 p4 k_iops n_iops k_bw n_bw k_p50 n_p50 kv nv ratio

	for _ in $(seq 1 "$ROUNDS"); do
		read -r i1 b1 p1 <<<"$(run_fio "$kuri" "$rw" "$bs" "$qd")"
		read -r i2 b2 p2 <<<"$(run_fio "$nuri" "$rw" "$bs" "$qd")"
		read -r i3 b3 p3 <<<"$(run_fio "$nuri" "$rw" "$bs" "$qd")"
		read -r i4 b4 p4 <<<"$(run_fio "$kuri" "$rw" "$bs" "$qd")"
		ki+=("$(mean2 "$i1" "$i4")") kb+=("$(mean2 "$b1" "$b4")") kp+=("$(mean2 "$p1" "$p4")")
		ni+=("$(mean2 "$i2" "$i3")") nb+=("$(mean2 "$b2" "$b3")") np+=("$(mean2 "$p2" "$p3")")
	done
	k_iops=$(printf '%s\n' "${ki[@]}" | median) n_iops=$(printf '%s\n' "${ni[@]}" | median)
	k_bw=$(printf '%s\n' "${kb[@]}" | median) n_bw=$(printf '%s\n' "${nb[@]}" | median)
	k_p50=$(printf '%s\n' "${kp[@]}" | median) n_p50=$(printf '%s\n' "${np[@]}" | median)
	if [ "$bs" = 128k ]; then
		kv=$(awk -v v="$k_bw" 'BEGIN { printf "%.2f GB/s", v / 1e9 }')
		nv=$(awk -v v="$n_bw" 'BEGIN { printf "%.2f GB/s", v / 1e9 }')
	elif [ "$qd" = 1 ]; then
		kv=$(awk -v v="$k_iops" -v p="$k_p50" 'BEGIN { printf "%.1fk (%.0fus)", v / 1e3, p }')
		nv=$(awk -v v="$n_iops" -v p="$n_p50" 'BEGIN { printf "%.1fk (%.0fus)", v / 1e3, p }')
	else
		kv=$(awk -v v="$k_iops" 'BEGIN { printf "%.0fk IOPS", v / 1e3 }')
		nv=$(awk -v v="$n_iops" 'BEGIN { printf "%.0fk IOPS", v / 1e3 }')
	fi
	ratio=$(awk -v k="$k_iops" -v n="$n_iops" 'BEGIN { printf "%.2f", (n > 0) ? k / n : 0 }')
	printf "%-22s %14s %14s %8s\n" "${ROW_PREFIX:-}$rw $bs QD$qd" "$kv" "$nv" "$ratio"
	min_ratio=$(awk -v a="$min_ratio" -v r="$ratio" 'BEGIN { print (a == "" || r < a) ? r : a }')
}

KEEL_URI="nbd+unix:///bench?socket=$TMP/keel.nbd"
KIT_URI="nbd+unix:///?socket=$TMP/nbdkit.nbd"

echo "both: fio nbd engine, one connection over a unix socket, ${RUNTIME} s per run after 1 s of"
echo "  ramp, on the same ${SIZE_MB} MiB file in /dev/shm written in full; A B B A per round,"
echo "  median of $ROUNDS rounds of the per-round mean; fio cpus ${CLIENT_CPUS:-any}"
echo "keeld: aio bdev on the file, --cpus $KEEL_CPUS, mode per table (keelctl reactor mode)"
echo "nbdkit: file plugin on the file, cpus ${NBDKIT_CPUS:-any}, its default threads"
# fio's nbd engine connects with libnbd, which asks for structured replies: every row
# runs with them wherever the server offers them (reads are OFFSET_DATA chunks), so the
# "read 128k QD8" row is the structured-reply read row. Say what was negotiated.
for u in "$KEEL_URI" "$KIT_URI"; do
	if command -v nbdinfo >/dev/null; then
		nbdinfo --can structured-reply "$u" 2>/dev/null && s=yes || s=no
		echo "$u: structured replies $s (libnbd asks, as fio does)"
	fi
done
echo "load average at start: $(loadavg)"
for mode in $KEEL_MODES; do
	[ "${PLAIN_ROWS:-1}" = 1 ] || break
	KCTL reactor mode "$mode" >/dev/null || { echo "keelctl reactor mode $mode failed"; exit 1; }
	echo
	echo "keeld --mode $mode"
	printf "%-22s %14s %14s %8s\n" "workload" "keeld" "nbdkit" "ratio"
	min_ratio=
	for r in "randread 4k 32" "randwrite 4k 32" "randread 4k 1" "read 128k 8" "write 128k 8"; do
		# shellcheck disable=SC2086 # the row's three words
		row "$KEEL_URI" "$KIT_URI" $r
	done
	echo "min_ratio=$min_ratio ($mode)"
done

# TLS rows. fio's nbd engine hands its URI to libnbd without allowing local files, so a
# tls-psk-file= URI is refused: both servers get the same X.509 certificates instead
# (libnbd reads the client's CA from $HOME/.pki/libnbd). After the handshake the record
# path is the same for PSK and X.509 (TLS 1.3, AES-GCM by GnuTLS's default priority).
if [ "${TLS_ROWS:-1}" = 1 ] && command -v certtool >/dev/null; then
	bash "$SRC_DIR/tests/e2e/nbd/make_certs.sh" "$TMP/x509" || exit 1
	mkdir -p "$TMP/home/.pki"
	cp -r "$TMP/x509/client" "$TMP/home/.pki/libnbd"
	KCTL export start bench --name tls --socket "$TMP/keel-tls.nbd" --tls require \
		--tls-certs "$TMP/x509/server" >/dev/null || { cat "$TMP/keeld.log"; exit 1; }
	pin "$NBDKIT_CPUS" nbdkit --exit-with-parent -f -U "$TMP/nbdkit-tls.nbd" --tls=require \
		--tls-certificates="$TMP/x509/server" file "$IMG" &
	NBDKIT_TLS_PID=$!
	for _ in $(seq 1 100); do [ -S "$TMP/nbdkit-tls.nbd" ] && break; sleep 0.1; done
	for mode in $KEEL_MODES; do
		KCTL reactor mode "$mode" >/dev/null || exit 1
		echo
		echo "TLS (X.509, same certificates; nbdkit --tls=require; fio via libnbd), keeld --mode $mode"
		printf "%-22s %14s %14s %8s\n" "workload" "keeld" "nbdkit" "ratio"
		min_ratio=
		for r in "randread 4k 32" "read 128k 8"; do
			# shellcheck disable=SC2086 # the row's three words
			HOME=$TMP/home ROW_PREFIX="tls " row \
				"nbds+unix:///tls?socket=$TMP/keel-tls.nbd&tls-verify-peer=false" \
				"nbds+unix:///?socket=$TMP/nbdkit-tls.nbd&tls-verify-peer=false" $r
		done
		echo "min_ratio=$min_ratio (tls, $mode)"
	done
fi
kill -0 "$KEELD_PID" 2>/dev/null || { echo "keeld died:"; tail -20 "$TMP/keeld.log"; exit 1; }
echo "load average at the end: $(loadavg)"
