#!/usr/bin/env bash
# keelctl against a live keeld: bdev create/list/delete for malloc, null and aio,
# error paths, --json output, reactor commands, error bdev and passthrough RPCs, and
# the option parser: usage mistakes exit 2 and name the option, --help works everywhere.
. "$(dirname "$0")/lib.sh"

# expect_help "what" SUBSTRING CMD...: CMD must exit 0 and print SUBSTRING on stdout.
expect_help() {
	local what=$1 substr=$2 out rc
	shift 2

	out=$("$@" 2>/dev/null)
	rc=$?
	[ $rc -eq 0 ] || fail "$what: exit $rc: $out"
	case "$out" in
	*"$substr"*) ok "$what" ;;
	*) fail "$what: help lacks '$substr': $out" ;;
	esac
}

start_keeld

# --- create and list ------------------------------------------------------------------
expect_ok "create malloc" keelctl bdev create malloc m0 64M
expect_ok "create null with block size" keelctl bdev create null n0 1G --block-size 4096
truncate -s 16M "$E2E_TMP/disk.img"
expect_ok "create aio" keelctl bdev create aio a0 "$E2E_TMP/disk.img"
truncate -s 8M "$E2E_TMP/disk2.img"
(cd "$E2E_TMP" && "$KEEL_BIN/keelctl" -s "$SOCK" bdev create aio a1 disk2.img --block-size 4096) \
	>/dev/null || fail "aio with a relative path"
ok "create aio with a relative path"

expect_ok "bdev list" keelctl bdev list
echo "$OUT"
for want in "m0 *malloc *64 MiB *512 *131072" "n0 *null *1 GiB *4096 *262144" \
	"a0 *aio *16 MiB *512" "a1 *aio *8 MiB *4096"; do
	echo "$OUT" | grep -Eq "^$want" || fail "bdev list lacks a row like '$want'"
done
echo "$OUT" | head -n 1 | grep -q "^NAME  *MODULE  *SIZE" || fail "bdev list header"
ok "bdev list table rows"

expect_ok "bdev list --json" keelctl --json bdev list
[ "$(jget "$OUT" 'length')" = 4 ] || fail "expected 4 bdevs: $OUT"
[ "$(jget "$OUT" '.[] | select(.name == "m0") | .num_blocks')" = 131072 ] ||
	fail "m0 num_blocks"
[ "$(jget "$OUT" '.[] | select(.name == "n0") | .supported_io_types.read')" = true ] ||
	fail "n0 supported_io_types"
ok "--json output parses and matches"

expect_ok "bdev_get_bdevs by name" keelctl rpc bdev_get_bdevs '{"name":"a0"}'
[ "$(jget "$OUT" '.[0].module')" = aio ] || fail "bdev_get_bdevs name=a0: $OUT"
expect_ok "bdev_get_iostat" keelctl rpc bdev_get_iostat
[ "$(jget "$OUT" '.bdevs | length')" = 4 ] || fail "iostat: $OUT"

# --- errors ---------------------------------------------------------------------------
expect_fail "duplicate name" "bdev 'm0' already exists" keelctl bdev create malloc m0 1M
expect_fail "duplicate name across modules" "already exists" keelctl bdev create null m0 1M
expect_fail "delete unknown bdev" "bdev 'nosuch' not found" keelctl bdev delete nosuch
expect_fail "missing file" "does not exist" keelctl bdev create aio a2 "$E2E_TMP/nope.img"
expect_fail "bad size string" "bad size '12X'" keelctl bdev create malloc m1 12X
expect_fail "zero size" "bad size" keelctl bdev create malloc m1 0
expect_fail "size not a multiple of the block size" "not a multiple" \
	keelctl bdev create malloc m1 1000
expect_fail "bad block size" "block_size" keelctl bdev create malloc m1 1M --block-size 1000
expect_fail "bad name" "not a valid bdev name" keelctl bdev create malloc "a/b" 1M
expect_fail "missing argument" "missing arguments" keelctl bdev create malloc m1
expect_fail "unknown type" "unknown bdev type 'tape'" keelctl bdev create tape t0 1M
expect_fail "unknown option" "unknown option '--colour'" keelctl bdev list --colour
truncate -s 1000 "$E2E_TMP/odd.img"
expect_fail "file size not a multiple" "multiple of the block size" \
	keelctl bdev create aio a3 "$E2E_TMP/odd.img"
expect_fail "wrong-module delete" "is a malloc bdev, not null" \
	keelctl rpc bdev_null_delete '{"name":"m0"}'

# --- option parsing: usage mistakes exit 2 and name the option ----------------------
expect_usage "unknown option, exit 2" "unknown option '--colour'" keelctl bdev list --colour
expect_usage "unknown global option" "unknown option '--bogus'" keelctl --bogus bdev list
expect_usage "global option without its value" "option '--timeout' needs a value" \
	"$KEEL_BIN/keelctl" -s "$SOCK" --timeout
expect_usage "missing value at the end" "option '--block-size' needs a value" \
	keelctl bdev create malloc m1 1M --block-size
expect_usage "missing --size value" "option '--size' needs a value" \
	keelctl volume create v1 --replica "$E2E_TMP/r1" --size
expect_usage "missing --replica value" "option '--replica' needs a value" \
	keelctl volume create v1 --size 1M --replica
expect_usage "missing --interval value" "option '--interval' needs a value" \
	keelctl reactor stats --interval
expect_usage "option of another command" "unknown option '--wipe'" \
	keelctl volume create v1 --size 1M --replica "$E2E_TMP/r1" --wipe
expect_usage "a flag given a value" "option '--force' takes no value" \
	keelctl volume create v1 --size 1M --replica "$E2E_TMP/r1" --force=yes
expect_usage "an abbreviated option" "unknown option '--block' (did you mean '--block-size'?)" \
	keelctl bdev create malloc m1 1M --block 4096
expect_usage "stray argument" "unexpected argument 'extra'" keelctl volume list extra
expect_usage "stray argument to rebuild status" "unexpected argument 'extra'" \
	keelctl rebuild status v1 extra
expect_usage "rebuild history without a volume" "missing arguments" keelctl rebuild history
expect_usage "unknown option to rebuild" "unknown option '--colour'" \
	keelctl rebuild status --colour
expect_usage "unknown rebuild verb" "unknown rebuild command 'spin'" keelctl rebuild spin
expect_usage "rpc with two params" "at most one JSON argument" keelctl rpc m '{}' '{}'
expect_usage "--nbd with a unix socket" "--nbd cannot be combined with --socket" \
	keelctl export start e0 --nbd --socket "$E2E_TMP/x.sock"
expect_usage "--nbd-device without a value" "option '--nbd-device' needs a value" \
	keelctl export start e0 --nbd-device
expect_usage "two devices" "unexpected argument '/dev/nbd2'" \
	keelctl export start e0 --nbd /dev/nbd1 /dev/nbd2
expect_usage "device twice" "the device is given twice" \
	keelctl export start e0 --nbd-device /dev/nbd1 /dev/nbd2
expect_usage "a device without --nbd" "unexpected argument '/dev/nbd1'" \
	keelctl export start e0 --socket "$E2E_TMP/x.sock" /dev/nbd1

# --help on every group and command: exit 0, the command's usage on stdout.
for cmd in "bdev" "bdev create" "bdev list" "bdev delete" "volume" "volume create" \
	"volume destroy" "volume list" "volume show" "replica" "replica add" "export" \
	"export start" "export stop" "export list" "reactor" "reactor stats" "reactor mode" \
	"rebuild" "rebuild status" "rebuild start" "rebuild history" "rpc"; do
	group=${cmd%% *}
	# shellcheck disable=SC2086 # split "GROUP VERB" into words
	expect_help "keelctl $cmd --help" "Usage: keelctl $group" keelctl $cmd --help
done
expect_help "keelctl --help" "Usage: keelctl" keelctl --help
expect_help "keelctl export start --help explains --nbd-device" "--nbd-device" \
	keelctl export start --help

# --- error bdev -----------------------------------------------------------------------
expect_ok "error bdev create" keelctl rpc bdev_error_create '{"base_name":"m0"}'
[ "$OUT" = '"EE_m0"' ] || fail "error bdev name: $OUT"
expect_fail "base is claimed" "claimed by module 'error'" keelctl bdev delete m0
expect_ok "inject" keelctl rpc bdev_error_inject_error \
	'{"name":"EE_m0","io_type":"write","num":3,"errno":5}'
expect_fail "inject bad io_type" "io_type: unknown 'sideways'" keelctl rpc \
	bdev_error_inject_error '{"name":"EE_m0","io_type":"sideways"}'
expect_fail "inject into a non-error bdev" "error bdev 'm0' not found" keelctl rpc \
	bdev_error_inject_error '{"name":"m0","io_type":"read"}'
expect_ok "clear" keelctl rpc bdev_error_inject_error '{"name":"EE_m0","error_type":"clear"}'
expect_ok "error bdev delete" keelctl bdev delete EE_m0

# --- delete ---------------------------------------------------------------------------
for b in m0 n0 a0 a1; do
	expect_ok "delete $b" keelctl bdev delete "$b"
done
expect_ok "empty list" keelctl bdev list
case "$OUT" in *"no bdevs"*) ;; *) fail "empty list: $OUT" ;; esac
expect_ok "empty list --json" keelctl --json bdev list
[ "$(jget "$OUT" 'length')" = 0 ] || fail "list not empty: $OUT"

# --- reactors -------------------------------------------------------------------------
expect_ok "reactor stats" keelctl reactor stats
echo "$OUT"
echo "$OUT" | grep -q "^REACTOR" || fail "reactor table header"
echo "$OUT" | grep -q "^THREAD" || fail "thread table header"
echo "$OUT" | grep -q "WOKEN BY" || fail "no table of the pollers that woke the reactors"
expect_ok "reactor stats --json" keelctl --json reactor stats --interval 200
[ "$(jget "$OUT" '.reactors.reactors | length')" -ge 1 ] || fail "no reactors"
[ "$(jget "$OUT" 'any(.threads.threads[]; .name == "main")')" = true ] ||
	fail "no main thread in thread_get_stats"
[ "$(jget "$OUT" '.reactors.interval_ms >= 200 and all(.reactors.reactors[];
	.wakeups_per_sec >= 0 and .busy_pct >= 0 and .busy_pct <= 100 and
	all(.wakers[]; .wakeups > 0 and (.name | length) > 0))')" = true ] || fail "reactor rates or wakers: $OUT"
# Dozens of RPCs so far, each one a reason for reactor 0 to wake (its socket, a timer).
[ "$(jget "$OUT" '.reactors.reactors[0].wakeups > 0 and
	(.reactors.reactors[0].wakers | length) > 0')" = true ] ||
	fail "reactor 0 names nothing that woke it: $OUT"
expect_ok "reactor stats --interval 0 (since start)" keelctl reactor stats --interval 0
echo "$OUT" | grep -q "since each reactor started" || fail "interval 0: $OUT"
expect_fail "bad interval" "--interval 'abc' is not a number" keelctl reactor stats --interval abc
expect_fail "huge interval" "more than an hour" keelctl reactor stats --interval 99999999
expect_ok "reactor mode interrupt" keelctl reactor mode interrupt
expect_ok "mode shows" keelctl --json rpc framework_get_reactors
[ "$(jget "$OUT" '.reactors[0].mode')" = interrupt ] || fail "mode not switched"
expect_ok "reactor mode adaptive on reactor 0" keelctl reactor mode adaptive --reactor 0
expect_fail "bad mode" "unknown mode 'turbo'" keelctl reactor mode turbo
expect_fail "bad reactor" "no reactor 99" keelctl reactor mode poll --reactor 99

# --- passthrough ----------------------------------------------------------------------
expect_ok "rpc_get_methods" keelctl rpc rpc_get_methods
[ "$(jget "$OUT" 'index("bdev_get_bdevs") != null and index("framework_get_reactors") != null')" = true ] ||
	fail "rpc_get_methods: $OUT"

# --- exports (methods from the NBD layer, if built in) --------------------------------
if [ "$(jget "$OUT" 'index("nbd_get_exports") != null')" = true ]; then
	expect_ok "export list (empty)" keelctl export list
	expect_fail "export stop unknown" "nosuch" keelctl export stop nosuch
	expect_fail "export start without a listener" "--socket" keelctl export start e0
	expect_ok "bdev for export" keelctl bdev create malloc e0 16M
	expect_ok "export start" keelctl export start e0 --socket "$E2E_TMP/nbd.sock" --name vol
	expect_ok "export list" keelctl export list
	echo "$OUT"
	echo "$OUT" | grep -Eq "^vol +e0 +$E2E_TMP/nbd.sock" || fail "export list row: $OUT"
	expect_ok "export list --json" keelctl --json export list
	[ "$(jget "$OUT" '.[0].bdev_name')" = e0 ] || fail "export json: $OUT"
	if command -v nbdinfo >/dev/null; then
		expect_ok "nbdinfo sees the export" nbdinfo --size "nbd+unix:///vol?socket=$E2E_TMP/nbd.sock"
		[ "$OUT" = 16777216 ] || fail "nbdinfo size: $OUT"
	fi
	# The kernel device of --nbd: a second word, --nbd-device DEV or --nbd=DEV all
	# reach keeld (which refuses a non-nbd path and names it), --nbd alone picks one.
	expect_fail "--nbd DEV" "nbd_device: '/dev/sda1' is not an nbd device" \
		keelctl export start e0 --nbd /dev/sda1
	expect_fail "--nbd-device DEV" "nbd_device: '/dev/sda2' is not an nbd device" \
		keelctl export start e0 --nbd-device /dev/sda2
	expect_fail "--nbd=DEV" "nbd_device: '/dev/sda3' is not an nbd device" \
		keelctl export start e0 --nbd=/dev/sda3
	expect_fail "--nbd before the bdev" "nbd_device: '/dev/sda4' is not an nbd device" \
		keelctl export start --nbd-device /dev/sda4 e0
	expect_fail "--nbd without a device" "bdev 'nosuch' not found" \
		keelctl export start nosuch --nbd
	expect_fail "export of a missing bdev" "nosuch" \
		keelctl export start nosuch --socket "$E2E_TMP/nbd2.sock"
	# leave the export running: SIGTERM below must stop it and the bdev gracefully
else
	expect_fail "export without nbd" "Method not found" keelctl export list
fi

stop_keeld || fail "keeld exited with $? after SIGTERM"
ok "keeld stopped cleanly"
