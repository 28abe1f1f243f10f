#!/bin/sh
# demo.sh: build chainmail and run the whole chain on loopback.
#
# A demo CA and a server certificate are made, then
#   tcpserver 127.0.0.1 PORT ucspi-tlsd -- smtpd-starttls-proxy-io test-smtpd
# listens on a free loopback port. swaks delivers a message over STARTTLS
# (the transcript and the negotiated TLS version and cipher are shown),
# then chainmail's own qmail-remote delivers one with verified TLS
# (tlsstrictness 2), the way qmail-rspawn would run it, and its report is
# shown. The stored messages are shown. Then qmail-qmqpc hands a message
# to qrelay, whose Lua handler adds a header and relays it to postfix's
# qmqp-sink (skipped when qmqp-sink is missing: tests/run unpacks it); then
# curl fetches a page through two chained rsockd (SOCKS5 with per-route
# credentials) from a python3 http.server, two remusockd carry a Unix socket
# over a loopback TCP link (skipped without socat), and everything is
# stopped. Run as root on a fresh Debian machine, missing packages
# (ucspi-tcp, swaks, openssl, socat) are
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
ensure 'command -v socat' socat
# swaks needs the two perl modules for --tls (they are only "recommended").
ensure 'command -v swaks && perl -MIO::Socket::SSL -MNet::SSLeay -e 1' swaks libnet-ssleay-perl libio-socket-ssl-perl
command -v cargo >/dev/null 2>&1 || { echo "demo: fatal: cargo is needed (https://rustup.rs)" >&2; exit 111; }

echo "demo: building (--release, qmail-remote and qmail-remote-io --profile release-small; all four statically linked, as install.sh does)"
cargo build --release --locked -q -p chainmail-tests --bin test-smtpd
for b in ucspi-tlsd smtpd-starttls-proxy-io; do
    cargo rustc --release --locked -q -p "$b" --bin "$b" -- -C target-feature=+crt-static
done
for b in qmail-remote qmail-remote-io; do
    cargo rustc --profile release-small --locked -q -p "$b" --bin "$b" -- -C target-feature=+crt-static
done
bin=${CARGO_TARGET_DIR:-$top/target}/release
qbin=${CARGO_TARGET_DIR:-$top/target}/release-small

cargo build --release --locked -q -p qrelay -p qmail-qmqpc -p rsockd -p remusockd

work=$(mktemp -d /tmp/chainmail-demo.XXXXXX)
server_pid=
sink_pid=
qrelay_pid=
http_pid=
socks_a_pid=
socks_b_pid=
remusock_pids=
cleanup() {
    local pid
    # A killed process's status (143) is not the demo's: ignore it.
    for pid in $server_pid $qrelay_pid $sink_pid $http_pid $socks_a_pid $socks_b_pid $remusock_pids; do
        kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

ossl() { openssl "$@" 2>/dev/null || { echo "demo: fatal: openssl $1 failed" >&2; exit 111; }; }
ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=chainmail demo CA" \
    -keyout "$work/ca.key" -out "$work/ca.pem"
ossl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=mx.demo.test \
    -keyout "$work/key.pem" -out "$work/req.pem"
printf 'subjectAltName=DNS:mx.demo.test,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$work/ext"
ossl x509 -req -in "$work/req.pem" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 1 \
    -extfile "$work/ext" -out "$work/cert.pem"
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

# The other side: qmail-remote, as qmail-rspawn runs it (the message on fd
# 0, the report on fd 1), with a QMAILHOME of its own that routes the
# demo's domain to the chain and demands verified TLS.
q=$work/qmail
mkdir -p "$q/control" "$q/queue/lock" "$q/run/qmail-remote"
echo client.demo.test >"$q/control/me"
echo "demo.test:[127.0.0.1]:$port" >"$q/control/smtproutes"
echo "$work/ca.pem" >"$q/control/trustanchors"
echo 2 >"$q/control/tlsstrictness"
head -c 1024 /dev/zero >"$q/queue/lock/tcpto"
printf 'From: carol@demo.test\nTo: dave@demo.test\nSubject: from qmail-remote\n\nDelivered by chainmail qmail-remote.\n.A line that starts with a dot.\n' >"$work/msg"
echo "demo: QMAILHOME=$q qmail-remote demo.test carol@demo.test dave@demo.test < msg"
QMAILHOME=$q timeout 30 "$qbin/qmail-remote" demo.test carol@demo.test dave@demo.test <"$work/msg" >"$work/report"
echo "demo: qmail-remote's report (records separated by NUL, shown one per line):"
tr '\0' '\n' <"$work/report" | sed 's/^/    /'
echo
echo "demo: stored messages:"
for f in "$work"/mail/*; do echo "  --- $(basename "$f")"; sed 's/^/    /' "$f"; done
if [ -s "$work/stderr" ]; then
    echo "demo: the server chain printed on stderr:"; cat "$work/stderr"
else
    echo "demo: nothing on the server chain's stderr"
fi
grep -q '^<~  221' "$work/transcript" && grep -q 'TLS started' "$work/transcript"
tr -d '\0' <"$work/report" | grep -q '^rK127.0.0.1 accepted message'
[ "$(ls "$work/mail" | wc -l)" = 2 ]

# QMQP: qmail-qmqpc -> qrelay (a Lua handler) -> qmqp-sink.
if command -v qmqp-sink >/dev/null 2>&1; then
    echo
    qmqp-sink -c "unix:$work/sink.sock" 64 >"$work/sink.out" 2>&1 &
    sink_pid=$!
    # qmqp-sink gives no readiness signal: wait (bounded) for its socket.
    for _ in $(seq 200); do [ -S "$work/sink.sock" ] && break; sleep 0.05; done
    [ -S "$work/sink.sock" ] || { echo "demo: fatal: qmqp-sink did not start:" >&2; cat "$work/sink.out" >&2; exit 111; }
    cat >"$work/qrelay.lua" <<LUA
sink = qmqp_resolve('$work/sink.sock')
qmqp_listen('$work/qrelay.sock', function(m)
  m.account = 'uid' .. tostring(m.uid)
  m:insert_header('X-Demo', 'routed by Lua')
  return m:connect(sink)
end)
LUA
    # qrelay writes a newline on fd 3 when it listens (s6 readiness).
    mkfifo "$work/ready"
    "$bin/qrelay" --config "$work/qrelay.lua" --notify-fd 3 3>"$work/ready" 2>"$work/qrelay.log" &
    qrelay_pid=$!
    read -r _ <"$work/ready"
    echo "demo: qrelay (pid $qrelay_pid) listening on $work/qrelay.sock"
    mkdir -p "$work/mini/control"
    echo "$work/qrelay.sock" >"$work/mini/control/qmqpservers"
    printf 'Subject: by QMQP\n\nHello through qrelay.\n' >"$work/qmsg"
    printf 'Falice@demo.test\0Tbob@demo.test\0\0' >"$work/qenv"
    echo "demo: QMAILHOME=$work/mini qmail-qmqpc < message 1< envelope"
    QMAILHOME=$work/mini timeout 30 "$bin/qmail-qmqpc" <"$work/qmsg" 1<"$work/qenv"
    echo "demo: qmail-qmqpc exited 0 (accepted); qrelay logged:"
    sed 's/^/    /' "$work/qrelay.log"
    grep -q 'reply=KOk' "$work/qrelay.log"
else
    echo "demo: qmqp-sink is missing (tests/run unpacks it from the postfix package): QMQP part skipped"
fi
# SOCKS: curl -> rsockd A -> rsockd B -> python3 -m http.server, on
# loopback. A routes everything through B by SOCKS5 with the route's own
# credentials; the host name goes through A unresolved and B resolves it.
if command -v curl >/dev/null 2>&1 && command -v python3 >/dev/null 2>&1; then
    echo
    mkdir "$work/www"
    echo "hello through two SOCKS hops" >"$work/www/index.html"
    mkfifo "$work/http.port" "$work/a.port" "$work/b.port"
    python3 -u -m http.server --bind 127.0.0.1 --directory "$work/www" 0 >"$work/http.port" 2>/dev/null &
    http_pid=$!
    read -r line <"$work/http.port"
    set -- $line
    hport=$6
    printf 'permit 127.0.0.0/8\n' >"$work/sockd.conf"
    printf 'route:route-pw\n' >"$work/b.pw"
    chmod 600 "$work/b.pw"
    tcpserver -1 -R -H -l0 127.0.0.1 0 "$bin/rsockd" -f "$work/sockd.conf" -F "$work/b-socks.conf" -a "$work/b.pw" \
        >"$work/b.port" 2>"$work/b.log" &
    socks_b_pid=$!
    read -r bport <"$work/b.port"
    echo "sockd @=socks5://route:route-pw@127.0.0.1:$bport ALL" >"$work/a-socks.conf"
    tcpserver -1 -R -H -l0 127.0.0.1 0 "$bin/rsockd" -f "$work/sockd.conf" -F "$work/a-socks.conf" \
        >"$work/a.port" 2>"$work/a.log" &
    socks_a_pid=$!
    read -r aport <"$work/a.port"
    echo "demo: rsockd A on 127.0.0.1:$aport -> rsockd B on 127.0.0.1:$bport -> http.server on 127.0.0.1:$hport"
    echo "demo: rsockd -T localhost $hport (A's decision):"
    "$bin/rsockd" -f "$work/sockd.conf" -F "$work/a-socks.conf" -T localhost "$hport" | sed 's/^/    /'
    echo "demo: curl --socks5-hostname 127.0.0.1:$aport http://localhost:$hport/"
    timeout 30 curl -sS --socks5-hostname "127.0.0.1:$aport" "http://localhost:$hport/index.html" | tee "$work/socks.out"
    grep -q 'two SOCKS hops' "$work/socks.out"
    # Each rsockd logs its line when its connection ends.
    for log in a b; do
        for _ in $(seq 100); do grep -q '^rsockd: client=' "$work/$log.log" && break; sleep 0.05; done
    done
    echo "demo: rsockd A logged:"
    sed 's/^/    /' "$work/a.log"
    echo "demo: rsockd B logged (the route's user, the name unresolved until B):"
    sed 's/^/    /' "$work/b.log"
    grep -q 'user=route.*dest=localhost:' "$work/b.log"
else
    echo "demo: curl or python3 is missing: SOCKS part skipped"
fi
# remusockd: a Unix socket carried over one TCP link on loopback. An echo
# service (socat ... EXEC:cat) listens on svc.sock; one remusockd connects
# to it for each channel and listens on TCP, the other dials and offers
# front.sock. A client that half-closes still gets its answer.
if command -v socat >/dev/null 2>&1 && command -v python3 >/dev/null 2>&1; then
    echo
    socat UNIX-LISTEN:"$work/svc.sock",fork EXEC:cat 2>/dev/null &
    remusock_pids="$!"
    # A free loopback port (remusockd takes its port as a number).
    rs_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    mkfifo "$work/rs-ready1" "$work/rs-ready2"
    "$bin/remusockd" -f -N 3 -c -b 127.0.0.1 "$work/svc.sock" "$rs_port" 3>"$work/rs-ready1" 2>"$work/remusock-back.log" &
    remusock_pids="$remusock_pids $!"
    read -r _ <"$work/rs-ready1"
    "$bin/remusockd" -f -N 3 -r 127.0.0.1 "$work/front.sock" "$rs_port" 3>"$work/rs-ready2" 2>"$work/remusock-front.log" &
    remusock_pids="$remusock_pids $!"
    read -r _ <"$work/rs-ready2"
    echo "demo: remusockd -c -b 127.0.0.1 svc.sock $rs_port, and remusockd -r 127.0.0.1 front.sock $rs_port (pids $remusock_pids)"
    answer=$(echo 'hello through the tunnel' | timeout 10 socat -t 5 - UNIX-CONNECT:"$work/front.sock")
    echo "demo: echo 'hello through the tunnel' | socat - UNIX-CONNECT:front.sock  ->  $answer"
    [ "$answer" = 'hello through the tunnel' ]
    sed 's/^/    /' "$work/remusock-front.log"
else
    echo "demo: socat is missing: remusockd part skipped"
fi
echo "demo: ok"
