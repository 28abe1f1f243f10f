#!/bin/sh
# Regenerates the test certificates and keys of chainmail-tls with the
# openssl CLI (3.x). Validity is 100 years so that the files can stay in
# the repository; the unit tests only read them.
set -eu
cd "$(dirname "$0")"
days=36500
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

ec ca.key
openssl req -x509 -new -key ca.key -out ca.pem -days $days \
  -subj "/O=Chainmail/CN=chainmail test CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign

sign() { # name key subj san [ext]
  openssl req -new -key "$2" -subj "$3" -out "$1.csr"
  printf 'basicConstraints=CA:FALSE\nsubjectAltName=%s\n%s\n' "$4" "${5:-}" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -set_serial "0x$(openssl rand -hex 8)" \
    -days $days -extfile "$1.ext" -out "$1.pem"
  rm -f "$1.csr" "$1.ext"
}

# EC server key in every encoding: PKCS#8 PEM and DER, SEC1 PEM (with an
# EC PARAMETERS block in front, as `openssl ecparam -genkey` writes) and DER.
ec server-ec.key
sign server-ec server-ec.key "/CN=mail.test" "DNS:mail.test" "extendedKeyUsage=serverAuth"
openssl pkcs8 -topk8 -nocrypt -in server-ec.key -outform DER -out server-ec.pk8.der
{ openssl ecparam -name prime256v1; openssl ec -in server-ec.key -outform PEM 2>/dev/null; } > server-ec.sec1.pem
openssl ec -in server-ec.key -outform DER -out server-ec.sec1.der 2>/dev/null
openssl x509 -in server-ec.pem -outform DER -out server-ec.der
cat server-ec.pem ca.pem > server-ec.chain.pem

# RSA server key, PKCS#1 in PEM and DER.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out server-rsa.key
sign server-rsa server-rsa.key "/CN=rsa.test" "DNS:rsa.test" "extendedKeyUsage=serverAuth"
openssl rsa -in server-rsa.key -traditional -out server-rsa.pkcs1.pem 2>/dev/null
openssl rsa -in server-rsa.key -traditional -outform DER -out server-rsa.pkcs1.der 2>/dev/null

# Client certificate.
ec client.key
sign client client.key "/O=Test/CN=client.test" "DNS:client.test" "extendedKeyUsage=clientAuth"

# A self-signed certificate whose subject exercises the RFC 4514 writer.
ec odd.key
openssl req -x509 -new -key odd.key -out odd.pem -days $days -utf8 -multivalue-rdn \
  -subj "/DC=org/DC=example/C=DE/ST=Berlin/L=Berlin/street=Main St. 1/O=Foo, Inc./OU=R&D+UID=jdoe/CN=#hash \"q\" <x>;y\\\\z /emailAddress=a@b.test/serialNumber=42/CN=Zoë Ünïcode"
openssl x509 -in odd.pem -noout -subject -nameopt RFC2253,-esc_msb | sed 's/^subject=//' > odd.subject
openssl x509 -in client.pem -noout -subject -nameopt RFC2253,-esc_msb | sed 's/^subject=//' > client.subject
rm -f ca.srl
