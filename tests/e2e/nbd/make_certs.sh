#!/usr/bin/env bash
# make_certs.sh DIR: a throwaway CA and a server certificate for localhost/127.0.0.1,
# made with certtool (gnutls-bin), in the layout qemu, nbdkit and keel read:
#   DIR/server/{ca-cert.pem,server-cert.pem,server-key.pem}  (keelctl --tls-certs, nbdkit)
#   DIR/client/{ca-cert.pem,client-cert.pem,client-key.pem}  (libnbd tls-certificates)
#   DIR/client-nocert/ca-cert.pem                            (a client without a certificate)
# Valid for 2 days. Exits non-zero with certtool's messages on failure.
set -eu
dir=$1
mkdir -p "$dir/server" "$dir/client" "$dir/client-nocert"
cd "$dir"
cat >ca.info <<EOF
cn = keel test CA
ca
cert_signing_key
expiration_days = 2
EOF
cat >server.info <<EOF
organization = keel test
cn = localhost
dns_name = localhost
ip_address = 127.0.0.1
tls_www_server
encryption_key
signing_key
expiration_days = 2
EOF
cat >client.info <<EOF
organization = keel test
cn = keel test client
tls_www_client
encryption_key
signing_key
expiration_days = 2
EOF
{
	certtool --generate-privkey --outfile ca-key.pem
	certtool --generate-self-signed --load-privkey ca-key.pem --template ca.info \
		--outfile server/ca-cert.pem
	certtool --generate-privkey --outfile server/server-key.pem
	certtool --generate-certificate --load-privkey server/server-key.pem \
		--load-ca-certificate server/ca-cert.pem --load-ca-privkey ca-key.pem \
		--template server.info --outfile server/server-cert.pem
	certtool --generate-privkey --outfile client/client-key.pem
	certtool --generate-certificate --load-privkey client/client-key.pem \
		--load-ca-certificate server/ca-cert.pem --load-ca-privkey ca-key.pem \
		--template client.info --outfile client/client-cert.pem
} >certtool.log 2>&1 || {
	tail -5 certtool.log >&2
	exit 1
}
cp server/ca-cert.pem client/ca-cert.pem
cp server/ca-cert.pem client-nocert/ca-cert.pem
