#!/usr/bin/env bash
# NBD over TLS (NBD_OPT_STARTTLS) against real clients: nbdinfo with a psktool key,
# qemu-io with a tls-creds-psk object, nbdcopy round trip, fio with crc32c verify, a
# wrong key and an unknown user refused, the plaintext rules of `require` and `off`
# exports checked option by option with a scripted client, a client that stalls after
# STARTTLS closed by the handshake timeout, X.509 certificates made by certtool (nbdinfo,
# and a second STARTTLS under TLS refused), bad credentials refused at start with
# nothing left behind, TCP on a non-loopback address refused without TLS, and a
# volume's TLS export restored with its settings after a restart.
. "$(dirname "$0")/lib.sh"

for tool in nbdinfo nbdcopy qemu-io psktool certtool cmp; do
	command -v $tool >/dev/null || skip "$tool is not installed"
done
TLS_CLIENT="$E2E_DIR/nbd/tls_client.py"

start_keeld
cd "$E2E_TMP" || fail "cd"
NBD=$E2E_TMP/tls.sock
# qemu's tls-creds-psk object reads DIR/keys.psk: keep that name.
mkdir -p psk wrong
psktool -u keel -p psk/keys.psk >/dev/null 2>&1 || fail "psktool"
psktool -u keel -p wrong/keys.psk >/dev/null 2>&1 || fail "psktool (wrong key)"
# The right key under a name the server does not know.
sed "s/^keel:/other:/" psk/keys.psk >wrong/other.psk || fail "other user"
PSK=$E2E_TMP/psk/keys.psk
URI="nbds+unix://keel@/disk0?socket=$NBD&tls-psk-file=$PSK"

expect_ok "create malloc bdev" keelctl bdev create malloc m0 64M

# ---- credentials are checked at start; nothing is left behind on failure ----
expect_fail "tls require without credentials" "tls_psk_file or tls_certs_dir" \
	keelctl export start m0 --socket "$NBD" --name disk0 --tls require
expect_fail "missing PSK file" "none.psk: No such file" \
	keelctl export start m0 --socket "$NBD" --name disk0 --tls-psk "$E2E_TMP/none.psk"
printf 'keel:zz11\n' >bad.psk
expect_fail "malformed PSK file" "bad.psk line 1: the key is not hexadecimal" \
	keelctl export start m0 --socket "$NBD" --name disk0 --tls-psk bad.psk
grep -q "bad.psk line 1: the key is not hexadecimal" "$KEELD_LOG" ||
	fail "the log does not name the bad line"
expect_fail "certificate directory without certificates" "server-cert.pem" \
	keelctl export start m0 --socket "$NBD" --name disk0 --tls-certs "$E2E_TMP/psk"
expect_fail "credentials with tls off" "tls off takes neither" \
	keelctl export start m0 --socket "$NBD" --name disk0 --tls off --tls-psk "$PSK"
expect_usage "bad --tls mode" "off, on or require" \
	keelctl export start m0 --socket "$NBD" --tls maybe
[ "$(keelctl --json export list | jq length)" = 0 ] || fail "a failed start left an export"
[ ! -e "$NBD" ] || fail "a failed start left its socket file"
ok "bad credentials: clear errors, nothing half-created"

# ---- PSK, tls require ----
expect_ok "export with PSK (require)" keelctl export start m0 --socket "$NBD" --name disk0 \
	--tls require --tls-psk psk/keys.psk
J=$(keelctl --json export list)
[ "$(jget "$J" '.[0].tls')" = require ] || fail "tls mode in list: $J"
[ "$(jget "$J" '.[0].tls_psk_file')" = "$PSK" ] || fail "psk file in list: $J"
OUT=$(nbdinfo "$URI" 2>&1) || fail "nbdinfo over TLS: $OUT"
echo "$OUT" | grep -q "newstyle-fixed with TLS" || fail "nbdinfo does not report TLS: $OUT"
ok "nbdinfo with a PSK: $(echo "$OUT" | head -n 1)"
# Structured replies and block status work under TLS too (records carry the chunks).
OUT=$(nbdinfo --map "$URI" 2>&1) || fail "nbdinfo --map over TLS: $OUT"
ok "nbdinfo --map over TLS: $(echo "$OUT" | head -n 1 | tr -s ' \t' ' ')"

qemu_io_psk() {
	local what=$1 dir=$2 out rc
	shift 2
	local args=(--object "tls-creds-psk,id=tls0,endpoint=client,dir=$dir,username=keel"
		--image-opts "driver=nbd,server.type=unix,server.path=$NBD,export=disk0,tls-creds=tls0")
	for c in "$@"; do
		args+=(-c "$c")
	done
	out=$(qemu-io "${args[@]}" 2>&1)
	rc=$?
	echo "$out"
	return $rc
}
OUT=$(qemu_io_psk "qemu-io" "$E2E_TMP/psk" 'write -P 0xa5 1M 3M' 'read -P 0xa5 1M 3M' \
	'write -P 0x5a 8M 4k' 'read -P 0x5a 8M 4k' 'read -P 0xa5 1M 4k') ||
	fail "qemu-io with tls-creds-psk exited non-zero: $OUT"
case "$OUT" in
*"verification failed"* | *[Ee]rror* | *[Ff]ailed*) fail "qemu-io with tls-creds-psk: $OUT" ;;
esac
echo "$OUT" | grep -q "read 4096/4096 bytes at offset 1048576" || fail "qemu-io: $OUT"
ok "qemu-io with a tls-creds-psk object writes and reads back patterns"
# The check above must catch a mismatch: qemu-io prints "read N/N" after one too.
OUT=$(qemu_io_psk "qemu-io" "$E2E_TMP/psk" 'read -P 0x77 1M 4k')
case "$OUT" in
*"verification failed"*) ok "a wrong pattern is reported (the check can fail)" ;;
*) fail "qemu-io did not report a wrong pattern: $OUT" ;;
esac

head -c 48M /dev/urandom >src.img
nbdcopy src.img "$URI" || fail "nbdcopy to the export over TLS"
nbdcopy "$URI" back.img || fail "nbdcopy from the export over TLS"
cmp -n $((48 << 20)) src.img back.img || fail "nbdcopy over TLS: data differs"
ok "nbdcopy round trip over TLS, data matches"
nbdcopy --connections=4 --requests=64 "$URI" back4.img || fail "nbdcopy 4 connections"
cmp -n $((48 << 20)) src.img back4.img || fail "nbdcopy 4 connections: data differs"
ok "nbdcopy over TLS with 4 connections"

# ---- wrong key, unknown user, plaintext ----
FAILS=$(keelctl rpc nbd_get_stats | jq .tls_failures)
expect_fail "wrong key refused" "" nbdinfo "nbds+unix://keel@/disk0?socket=$NBD&tls-psk-file=$E2E_TMP/wrong/keys.psk"
expect_fail "unknown user refused" "" nbdinfo "nbds+unix://other@/disk0?socket=$NBD&tls-psk-file=$E2E_TMP/wrong/other.psk"
expect_fail "plaintext client refused" "" nbdinfo "nbd+unix:///disk0?socket=$NBD"
grep -q "TLS handshake failed" "$KEELD_LOG" || fail "no log line for the failed handshake"
J=$(keelctl rpc nbd_get_stats)
[ "$(jget "$J" .tls_failures)" -ge $((FAILS + 2)) ] || fail "tls_failures did not count them: $J"
[ "$(jget "$J" .tls_handshakes)" -ge 1 ] || fail "tls_handshakes: $J"
ok "nbd_get_stats counts TLS handshakes ($(jget "$J" .tls_handshakes)) and failures ($(jget "$J" .tls_failures))"
OUT=$("$PY" "$TLS_CLIENT" "$NBD" disk0 require-refusals 2>&1) || fail "$OUT"
ok "require, before TLS: $OUT"
OUT=$("$PY" "$TLS_CLIENT" "$NBD" disk0 require-export-name 2>&1) || fail "$OUT"
ok "require, before TLS: $OUT"
OUT=$("$PY" "$TLS_CLIENT" "$NBD" disk0 pipelined 2>&1) || fail "$OUT"
ok "$OUT"
# The data path still works after all of that.
qemu_io_psk "qemu-io" "$E2E_TMP/psk" 'write -P 0x3c 60M 4k' 'read -P 0x3c 60M 4k' >/dev/null ||
	fail "write and read after the refusals"

# ---- a client that stalls mid-handshake is closed by the handshake timeout ----
BEFORE=$(keelctl rpc nbd_get_stats | jq .handshake_timeouts)
keelctl rpc nbd_set_options '{"handshake_timeout_ms": 300}' >/dev/null || fail "set timeout"
OUT=$("$PY" "$TLS_CLIENT" "$NBD" disk0 stall 2>&1) || fail "stalled handshake: $OUT"
AFTER=$(keelctl rpc nbd_get_stats | jq .handshake_timeouts)
[ "$AFTER" -gt "$BEFORE" ] || fail "handshake_timeouts did not count it ($BEFORE -> $AFTER)"
keelctl rpc nbd_set_options '{"handshake_timeout_ms": 30000}' >/dev/null || fail "reset timeout"
ok "client silent after STARTTLS closed by the handshake timeout after ${OUT}s"

# ---- tls on: plaintext and TLS clients both; tls off: STARTTLS unsupported ----
expect_ok "export with tls on" keelctl export start m0 --socket "$E2E_TMP/on.sock" --name on0 \
	--tls on --tls-psk "$PSK" --read-only
nbdinfo "nbd+unix:///on0?socket=$E2E_TMP/on.sock" | grep -q "without TLS" || fail "on: plaintext"
nbdinfo "nbds+unix://keel@/on0?socket=$E2E_TMP/on.sock&tls-psk-file=$PSK" | grep -q "with TLS" ||
	fail "on: TLS"
ok "tls on serves plaintext and TLS clients"
expect_ok "export without tls" keelctl export start m0 --socket "$E2E_TMP/off.sock" --name off0 \
	--read-only
OUT=$("$PY" "$TLS_CLIENT" "$E2E_TMP/off.sock" off0 off-refused 2>&1) || fail "$OUT"
ok "tls off: $OUT"

# ---- X.509 certificates made by certtool ----
OUT=$(bash "$E2E_DIR/nbd/make_certs.sh" "$E2E_TMP/x509" 2>&1) || fail "certtool: $OUT"
expect_ok "export with certificates" keelctl export start m0 --socket "$E2E_TMP/x509.sock" \
	--name x0 --tls-certs x509/server
OUT=$(nbdinfo "nbds+unix:///x0?socket=$E2E_TMP/x509.sock&tls-certificates=$E2E_TMP/x509/client&tls-verify-peer=false" 2>&1) ||
	fail "nbdinfo with X.509: $OUT"
echo "$OUT" | grep -q "with TLS" || fail "X.509: nbdinfo does not report TLS: $OUT"
ok "nbdinfo with X.509 certificates"
# Client certificates: demanded with --tls-verify-client, checked against ca-cert.pem.
expect_fail "--tls-verify-client without certificates" "needs tls_certs_dir" \
	keelctl export start m0 --socket "$E2E_TMP/x1.sock" --name x1 --tls-psk "$PSK" --tls-verify-client
expect_ok "export verifying client certificates" keelctl export start m0 \
	--socket "$E2E_TMP/x1.sock" --name x1 --tls-certs x509/server --tls-verify-client --read-only
[ "$(keelctl --json export list | jq -r '.[] | select(.name == "x1") | .tls_verify_client')" = true ] ||
	fail "tls_verify_client not listed"
OUT=$(nbdinfo "nbds+unix:///x1?socket=$E2E_TMP/x1.sock&tls-certificates=$E2E_TMP/x509/client&tls-verify-peer=false" 2>&1) ||
	fail "nbdinfo with a client certificate: $OUT"
ok "a client with a certificate signed by the CA is served"
expect_fail "a client without a certificate is refused" "" \
	nbdinfo "nbds+unix:///x1?socket=$E2E_TMP/x1.sock&tls-certificates=$E2E_TMP/x509/client-nocert&tls-verify-peer=false"
# The same client is served where certificates are not demanded.
nbdinfo "nbds+unix:///x0?socket=$E2E_TMP/x509.sock&tls-certificates=$E2E_TMP/x509/client-nocert&tls-verify-peer=false" >/dev/null ||
	fail "a client without a certificate on an export that does not ask for one"
OUT=$("$PY" "$TLS_CLIENT" "$E2E_TMP/x509.sock" x0 x509-twice "$E2E_TMP/x509/client/ca-cert.pem" 2>&1) ||
	fail "$OUT"
ok "X.509: $OUT"
expect_ok "export with certificates, tls on" keelctl export start m0 --socket "$E2E_TMP/x2.sock" \
	--name x2 --tls on --tls-certs x509/server --read-only
OUT=$("$PY" "$TLS_CLIENT" "$E2E_TMP/x2.sock" x2 x509-reset "$E2E_TMP/x509/client/ca-cert.pem" 2>&1) ||
	fail "$OUT"
ok "STARTTLS starts the haggling over: $OUT"

# ---- fio's nbd engine over TLS (libnbd lets URIs name local files only when the
# program allows it, which fio does not: certificates from $HOME/.pki/libnbd work) ----
if command -v fio >/dev/null; then
	mkdir -p home/.pki
	cp -r x509/client home/.pki/libnbd
	HOME=$E2E_TMP/home fio --name=v --ioengine=nbd \
		--uri="nbds+unix:///x0?socket=$E2E_TMP/x509.sock&tls-verify-peer=false" \
		--rw=randwrite --bs=4k --iodepth=32 --size=16M --verify=crc32c --verify_fatal=1 \
		--do_verify=1 --verify_state_save=0 --output-format=json --output=fio.json \
		>/dev/null 2>&1 || fail "fio verify over TLS: $(tail -5 fio.json)"
	ok "fio nbd engine over TLS, crc32c verify at QD32"
fi

# ---- TCP beyond loopback needs TLS (or --tls off, explicitly) ----
PORT=$((20000 + RANDOM % 20000))
expect_fail "non-loopback TCP without TLS" "needs TLS" \
	keelctl export start m0 --name net0 --tcp "0.0.0.0:$PORT" --read-only
expect_ok "non-loopback TCP with TLS" keelctl export start m0 --name net0 \
	--tcp "0.0.0.0:$PORT" --read-only --tls-psk "$PSK"
nbdinfo "nbds://keel@127.0.0.1:$PORT/net0?tls-psk-file=$PSK" | grep -q "with TLS" ||
	fail "TLS over TCP"
expect_ok "stop it" keelctl export stop net0
expect_ok "non-loopback TCP with --tls off" keelctl export start m0 --name net1 \
	--tcp "0.0.0.0:$PORT" --read-only --tls off
expect_ok "stop it" keelctl export stop net1
expect_ok "loopback TCP without TLS" keelctl export start m0 --name lo0 \
	--tcp "127.0.0.1:$PORT" --read-only
expect_ok "stop it" keelctl export stop lo0

# ---- a volume's export keeps its TLS settings across a restart ----
need_aio_free 2048
make_volumes 1
expect_ok "export volume v1 with TLS" keelctl export start v1 --socket "$E2E_TMP/v1.sock" \
	--tls require --tls-psk "$PSK"
qemu_io_psk_v1() {
	qemu-io --object "tls-creds-psk,id=tls0,endpoint=client,dir=$E2E_TMP/psk,username=keel" \
		--image-opts "driver=nbd,server.type=unix,server.path=$E2E_TMP/v1.sock,export=v1,tls-creds=tls0" \
		"$@" 2>&1
}
OUT=$(qemu_io_psk_v1 -c 'write -P 0x6b 0 1M') || fail "write to v1 over TLS: $OUT"
keeld_alive || fail "keeld died"
stop_keeld || fail "keeld did not stop cleanly"
ok "keeld stopped cleanly"
start_keeld
v1_exported() { [ "$(keelctl --json export list | jq -r '.[] | select(.name == "v1") | .tls')" = require ]; }
wait_until 60 "v1 exported again with tls require" v1_exported
OUT=$(qemu_io_psk_v1 -c 'read -P 0x6b 0 1M') || fail "read from v1 after the restart: $OUT"
case "$OUT" in *"verification failed"* | *[Ee]rror*) fail "v1 after the restart: $OUT" ;; esac
expect_fail "plaintext still refused after the restart" "" nbdinfo "nbd+unix:///v1?socket=$E2E_TMP/v1.sock"
ok "the export of a volume comes back with tls require and its key after a restart"
stop_keeld || fail "keeld did not stop cleanly after the restart"
