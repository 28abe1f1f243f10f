#!/bin/sh
# demo.sh: build chainmail and run the STARTTLS server chain on loopback.
#
# A self-signed certificate is made, then
#   tcpserver 127.0.0.1 PORT ucspi-tlsd -- smtpd-starttls-proxy-io test-smtpd
# listens on a free loopback port, swaks delivers a message over STARTTLS,
# the transcript, the negotiated TLS version and cipher and the stored
# message are shown, and everything is stopped. Run as root on a fresh
# Debian machine, missing packages (ucspi-tcp, swaks, openssl) are
# installed first.
set -eu

top=$(cd "$(dirname "$0")" && pwd)
cd "$top"

# ensure CHECK PACKAGE...: install the packages when CHECK fails.
ensure() {
    check=$1; shift
    sh -c "$check" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "demo: installing $*"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    fi
    sh -c "$check" >/dev/null 2>&1 && return 0
    echo "demo: fatal: missing; install the Debian package(s): $*" >&2
    exit 111
}
ensure 'command -v tcpserver' ucspi-tcp
ensure 'command -v openssl' openssl
# swaks needs the two perl modules for --tls (they are only "recommended").
ensure 'command -v swaks && perl -MIO::Socket::SSL -MNet::SSLeay -e 1' swaks libnet-ssleay-perl libio-socket-ssl-perl
command -v cargo >/dev/null 2>&1 || { echo "demo: fatal: cargo is needed (https://rustup.rs)" >&2; exit 111; }

echo "demo: building (cargo build --release)"
cargo build --release --locked -q -p ucspi-tlsd -p smtpd-starttls-proxy-io -p chainmail-tests --bin ucspi-tlsd \
    --bin smtpd-starttls-proxy-io --bin test-smtpd
bin=${CARGO_TARGET_DIR:-$top/target}/release

work=$(mktemp -d /tmp/chainmail-demo.XXXXXX)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=mx.demo.test -addext subjectAltName=DNS:mx.demo.test,IP:127.0.0.1 \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
mkdir "$work/mail"

# tcpserver -1 prints the port it listens on: that line is the signal
# that the server is ready.
mkfifo "$work/port"
CERTFILE=$work/cert.pem KEYFILE=$work/key.pem TEST_SMTPD_MAILDIR=$work/mail TEST_SMTPD_NAME=mx.demo.test \
    tcpserver -1 -R -H -l0 127.0.0.1 0 \
    "$bin/ucspi-tlsd" -K 10000 -- \
    "$bin/smtpd-starttls-proxy-io" \
    "$bin/test-smtpd" >"$work/port" 2>"$work/stderr" &
server_pid=$!
read -r port <"$work/port"
echo "demo: tcpserver (pid $server_pid) listening on 127.0.0.1:$port"
echo

timeout 30 swaks --server "127.0.0.1:$port" --tls --helo client.demo.test \
    --from alice@demo.test --to bob@demo.test \
    --header "Subject: chainmail demo" --body "Hello through STARTTLS." \
    | tee "$work/transcript"
echo
echo "demo: negotiated: $(grep -o 'TLS started with cipher .*' "$work/transcript" || echo '(no TLS?)')"
echo "demo: stored message:"
for f in "$work"/mail/*; do sed 's/^/    /' "$f"; done
if [ -s "$work/stderr" ]; then
    echo "demo: the server chain printed on stderr:"; cat "$work/stderr"
else
    echo "demo: nothing on the server chain's stderr"
fi
grep -q '^<~  221' "$work/transcript" && grep -q 'TLS started' "$work/transcript" && [ -n "$(ls "$work/mail")" ]
echo "demo: ok"
