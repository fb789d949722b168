#!/usr/bin/env bash
# Extended headers (NBD_OPT_EXTENDED_HEADERS): negotiation, I/O with 32-byte requests
# and extended reply chunks, trim and write-zeroes longer than 4 GiB on a sparse
# export, BLOCK_STATUS_EXT, refusals and broken streams. No Debian 12 client speaks
# extended headers (libnbd 1.14, qemu 7.2): the scripted client
# tests/e2e/nbd/extended_client.py is written from the protocol facts in docs/nbd.md.
# Then a libnbd client that does not ask for them still gets the old format.
. "$(dirname "$0")/lib.sh"

command -v nbdinfo >/dev/null || skip "nbdinfo is not installed"

start_keeld
NBD=$E2E_TMP/nbd.sock
IMG=$E2E_TMP/big.img
SIZE=$((8 << 30))
truncate -s $SIZE "$IMG"
fallocate -p -o 0 -l 4096 "$IMG" 2>/dev/null || skip "$E2E_TMP cannot punch holes"
expect_ok "aio bdev on an 8 GiB sparse file" keelctl bdev create aio a0 "$IMG"
expect_ok "export it" keelctl export start a0 --socket "$NBD" --name big

out=$(/usr/bin/python3 "$E2E_DIR/nbd/extended_client.py" "$NBD" big $SIZE 2>&1) ||
	fail "extended_client: $out"
ok "$out"
[ "$(stat -c %b "$IMG")" -lt 1024 ] || fail "the 5 GiB write-zeroes and 6 GiB trim left blocks"
ok "the sparse file holds only the 4 KiB written at 6 GiB"
keeld_alive || fail "keeld died"

nbdinfo "nbd+unix:///big?socket=$NBD" | grep -q "using structured packets" ||
	fail "nbdinfo (no extended headers): structured replies no longer negotiated"
ok "a client without extended headers still gets structured replies"

stop_keeld || fail "keeld did not stop cleanly"
ok "keeld stopped cleanly"
