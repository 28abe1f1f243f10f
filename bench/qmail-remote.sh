#!/usr/bin/env bash
# bench/qmail-remote.sh: qmail-remote's deliveries per second, CPU and peak
# memory, and its first connection under slow DNS (issue B). Run from the
# repository root:
#
#   bench/qmail-remote.sh
#
# 1. Deliveries of a 1 KiB message, `qmail-remote example.test a@x b@y`,
#    N one after the other and N with 8 at a time, through
#    control/smtproutes `:127.0.0.1:PORT` to a loopback sink:
#      plain:       smtp-sink -u root 127.0.0.1:PORT 100 (postfix's, in C)
#      tls-chain:   the chainmail chain (tcpserver + ucspi-tlsd +
#                   smtpd-starttls-proxy-io + test-smtpd), control/trustanchors
#                   = the test CA, tlsstrictness 0
#      tls-sink:    bench/src/bin/tls-sink.rs, a one-process rustls STARTTLS
#                   sink (what smtp-sink is to plaintext), same control files
#    Figures: deliveries/s (wall clock: the sink's cost is included), CPU per
#    delivery (qmail-remote + qmail-remote-io only: RUSAGE_CHILDREN of the
#    driver), peak RSS (max ru_maxrss: the largest single process of any
#    run). Every report must be K.
# 2. Slow DNS: tests/peers/dnsserver.py --delay-ms 200 serving example.test
#    MX 10/20/30 mx1/mx2/mx3, each with A 127.0.0.9x and AAAA ::1;
#    DNSCACHEIP pointing at it, no smtproutes, control/ipme 192.0.2.254; a
#    listener on mx1's addresses ([::1]:25 and 127.0.0.92:25) records when the
#    connection arrives: the time from spawning qmail-remote to the accept.
#    The same with a DNS server without delay, for the fixed costs.
#
# Environment: ROUNDS (3), N (300 sequential), NPAR (400 with -j 8), RUNS (7).
# As root on Debian, missing packages are installed (ucspi-tcp, openssl,
# python3-dnslib, and postfix's smtp-sink unpacked as tests/run does).
# Everything started here is stopped by PID.
set -euo pipefail

cd "$(dirname "$0")/.."
top=$(pwd)

ROUNDS=${ROUNDS:-3}
N=${N:-300}
NPAR=${NPAR:-400}
RUNS=${RUNS:-7}
PY=/usr/bin/python3

log() { printf 'qmail-remote-bench: %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1 && [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
    PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
is_root() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }
apt_updated=
apt_install() {
    is_root || return 1
    if [ -z "$apt_updated" ]; then apt-get update -qq >/dev/null || true; apt_updated=1; fi
    log "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
command -v tcpserver >/dev/null 2>&1 || apt_install ucspi-tcp || true
command -v openssl >/dev/null 2>&1 || apt_install openssl || true
"$PY" -c 'import dnslib' 2>/dev/null || apt_install python3-dnslib || true
# postfix's smtp-sink without the postfix package (it conflicts with exim4,
# which the tests need): unpacked into the place tests/run uses.
if ! command -v smtp-sink >/dev/null 2>&1 && is_root; then
    pf=/usr/local/lib/chainmail-tests/postfix
    tmp=$(mktemp -d)
    chmod 755 "$tmp"
    if [ -z "$apt_updated" ]; then apt-get update -qq >/dev/null || true; apt_updated=1; fi
    log "unpacking smtp-sink from the postfix package into $pf"
    if (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root postfix >/dev/null 2>&1); then
        deb=$(ls "$tmp"/postfix_*.deb)
        libs=$(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/[|(].*//; s/[[:space:]]//g' | grep '^lib' || true)
        # shellcheck disable=SC2086
        [ -n "$libs" ] && apt_install $libs || true
        dpkg-deb -x "$deb" "$tmp/root"
        mkdir -p "$pf/lib" "$pf/etc"
        cp -a "$tmp"/root/usr/lib/postfix/*.so "$pf/lib/"
        [ -f "$pf/etc/main.cf" ] || printf 'mail_owner = daemon\nsetgid_group = mail\n' >"$pf/etc/main.cf"
        install -m 755 "$tmp/root/usr/sbin/smtp-sink" "$pf/smtp-sink"
        printf '#!/bin/sh\n# postfix smtp-sink, unpacked from the postfix package\nMAIL_CONFIG=${MAIL_CONFIG:-%s/etc} LD_LIBRARY_PATH=%s/lib exec %s/smtp-sink "$@"\n' \
            "$pf" "$pf" "$pf" >/usr/local/bin/smtp-sink
        chmod 755 /usr/local/bin/smtp-sink
    fi
    rm -rf "$tmp"
fi
for c in tcpserver openssl smtp-sink cargo; do
    command -v "$c" >/dev/null 2>&1 || { log "fatal: $c is missing"; exit 111; }
done
"$PY" -c 'import dnslib' 2>/dev/null || { log "fatal: $PY lacks dnslib (Debian: python3-dnslib)"; exit 111; }

log "building: cargo build --release --workspace --bins, and qmail-remote(-io) with --profile release-small, statically linked as install.sh does"
cargo build --release --workspace --bins -q
for b in qmail-remote qmail-remote-io; do
    cargo rustc --profile release-small -q -p "$b" --bin "$b" -- -C target-feature=+crt-static
done
bin=${CARGO_TARGET_DIR:-$top/target}/release
# qmail-remote and qmail-remote-io as installed: built with release-small
# (Cargo.toml), the two side by side.
qbin=${CARGO_TARGET_DIR:-$top/target}/release-small
for b in ucspi-tlsd smtpd-starttls-proxy-io test-smtpd qmail-remote-bench tls-sink bench-util; do
    [ -x "$bin/$b" ] || { log "fatal: $bin/$b was not built"; exit 111; }
done
for b in qmail-remote qmail-remote-io; do
    [ -x "$qbin/$b" ] || { log "fatal: $qbin/$b was not built"; exit 111; }
done

work=$(mktemp -d /tmp/chainmail-bench-qr.XXXXXX)
pids=()
dns_fds=()
cleanup() {
    local p k kids
    for fd in "${dns_fds[@]}"; do eval "exec $fd>&-" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        kids=$("$bin/bench-util" tree "$p" 2>/dev/null | awk '{print $1}') || kids=
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
        for k in $kids; do kill "$k" 2>/dev/null || true; done
    done
    if [ "${KEEP:-0}" = 1 ]; then log "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- certificates, the message
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=chainmail bench CA" \
    -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=mx.bench.test" \
    -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:mx.bench.test,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$work/ext.cnf"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 2 \
    -extfile "$work/ext.cnf" -out "$work/server.pem" 2>/dev/null
# 1024 bytes, LF line ends (the queue's format), last line complete.
{
    printf 'Received: (qmail 4242 invoked by uid 1000); 22 Nov 2026 00:00:00 -0000\n'
    printf 'From: a@x\nTo: b@y\nSubject: chainmail qmail-remote bench\n\n'
    for i in $(seq 20); do printf 'line %02d of the body: the quick brown fox jumps over the lazy dog\n' "$i"; done
} >"$work/msg.long"
head -c 1023 "$work/msg.long" >"$work/msg"
printf '\n' >>"$work/msg"
[ "$(wc -c <"$work/msg")" = 1024 ] || { log "fatal: the message is not 1024 bytes"; exit 111; }

# --- the sinks
sink_port=$("$bin/bench-util" free-port)
smtp-sink -u root "127.0.0.1:$sink_port" 100 2>"$work/smtp-sink.stderr" &
pids+=($!)
mkfifo "$work/chain.port" "$work/tls-sink.port"
chain_cmd="tcpserver -1 -R -H -l0 -c200 127.0.0.1 0 $bin/ucspi-tlsd -- $bin/smtpd-starttls-proxy-io $bin/test-smtpd"
CERTFILE=$work/server.pem KEYFILE=$work/server.key $chain_cmd >"$work/chain.port" 2>"$work/chain.stderr" &
pids+=($!)
read -r chain_port <"$work/chain.port"
"$bin/tls-sink" 127.0.0.1:0 "$work/server.pem" "$work/server.key" >"$work/tls-sink.port" 2>"$work/tls-sink.stderr" &
pids+=($!)
read -r tls_sink_port <"$work/tls-sink.port"
"$bin/bench-util" wait-port "$sink_port" 10

# home NAME: a fresh qmail home; further control files are written by the caller.
home() {
    local h=$work/home-$1
    mkdir -p "$h/control" "$h/queue/lock" "$h/run/qmail-remote"
    echo bench.test >"$h/control/me"
    head -c 1024 /dev/zero >"$h/queue/lock/tcpto"
    echo "$h"
}
h_plain=$(home plain)
echo ":127.0.0.1:$sink_port" >"$h_plain/control/smtproutes"
h_chain=$(home tls-chain)
echo ":127.0.0.1:$chain_port" >"$h_chain/control/smtproutes"
h_sink=$(home tls-sink)
echo ":127.0.0.1:$tls_sink_port" >"$h_sink/control/smtproutes"
for h in "$h_chain" "$h_sink"; do
    echo "$work/ca.pem" >"$h/control/trustanchors"
    echo 0 >"$h/control/tlsstrictness"
done

results=$work/results
: >"$results"
: >"$work/commands"
home_of() { case $1 in plain) echo "$h_plain" ;; tls-chain) echo "$h_chain" ;; tls-sink) echo "$h_sink" ;; esac; }
# deliver CONFIG ROUND J COUNT
deliver() {
    local cfg=$1 round=$2 j=$3 n=$4 out rc=0 cmd
    cmd="$bin/qmail-remote-bench deliver $qbin/qmail-remote --message $work/msg -n $n -j $j"
    printf '%s\t%s\tQMAILHOME=%s %s\n' "$cfg" "$j" "$(home_of "$cfg")" "$cmd" >>"$work/commands"
    out=$(QMAILHOME=$(home_of "$cfg") $cmd 2>"$work/last.stderr") || rc=$?
    if [ -s "$work/last.stderr" ]; then sed "s/^/  [$cfg] /" "$work/last.stderr" >&2; fi
    local line
    line=$(printf '%s\n' "$out" | grep '^RESULT' || echo "RESULT failed=1")
    echo "cfg=$cfg round=$round j=$j rc=$rc $line" >>"$results"
    log "  $cfg -j $j round $round: $(echo "$line" | cut -c8-150)"
}

configs=(plain tls-chain tls-sink)
rotated() {
    local r=$1 n=${#configs[@]} i
    for ((i = 0; i < n; i++)); do echo "${configs[$(((i + r - 1) % n))]}"; done
}
start_time=$(date +%s)
log "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
log "1/2 deliveries: $N sequential, $NPAR with 8 at a time, $ROUNDS rounds"
for ((r = 1; r <= ROUNDS; r++)); do
    for c in $(rotated "$r"); do
        deliver "$c" "$r" 1 "$N"
        deliver "$c" "$r" 8 "$NPAR"
    done
done

log "2/2 slow DNS: MX x3, every answer after 200 ms; $RUNS runs (and $RUNS without the delay)"
h_dns=$(home dns)
echo 192.0.2.254 >"$h_dns/control/ipme"
cat >"$work/zone" <<'EOF'
example.test MX 10 mx1.example.test
example.test MX 20 mx2.example.test
example.test MX 30 mx3.example.test
mx1.example.test A 127.0.0.92
mx1.example.test AAAA ::1
mx2.example.test A 127.0.0.93
mx2.example.test AAAA ::1
mx3.example.test A 127.0.0.94
mx3.example.test AAAA ::1
EOF
# start_dns NAME DELAY: a dnsserver.py on loopback; sets dns_port. It runs
# until its stdin (a fifo held open here) closes.
fdn=7
start_dns() {
    local name=$1 delay=$2
    mkfifo "$work/$name.in" "$work/$name.port"
    "$PY" tests/peers/dnsserver.py --delay-ms "$delay" "$work/zone" <"$work/$name.in" >"$work/$name.port" 2>"$work/$name.log" &
    pids+=($!)
    eval "exec $fdn>\"$work/$name.in\""
    dns_fds+=("$fdn")
    fdn=$((fdn + 1))
    read -r dns_port <"$work/$name.port"
}
slowdns() {
    local name=$1 delay=$2 out rc=0 cmd
    start_dns "$name" "$delay"
    cmd="$bin/qmail-remote-bench slowdns $qbin/qmail-remote --message $work/msg --listen [::1]:25 --listen 127.0.0.92:25 --runs $RUNS"
    printf 'dns-%s\t1\tQMAILHOME=%s DNSCACHEIP=127.0.0.1:%s %s\n' "$delay" "$h_dns" "$dns_port" "$cmd" >>"$work/commands"
    out=$(QMAILHOME=$h_dns DNSCACHEIP=127.0.0.1:$dns_port $cmd 2>"$work/last.stderr") || rc=$?
    if [ -s "$work/last.stderr" ]; then sed "s/^/  [dns $delay ms] /" "$work/last.stderr" >&2; fi
    local line
    line=$(printf '%s\n' "$out" | grep '^RESULT' || echo "RESULT failed=1")
    echo "cfg=dns-$delay round=1 j=1 rc=$rc $line" >>"$results"
    log "  DNS delay $delay ms: $(echo "$line" | cut -c8-200)"
}
slowdns slow 200
slowdns fast 0
elapsed=$(($(date +%s) - start_time))

# --- the table
val() { # CFG J KEY: median over the rounds
    local xs
    xs=$(grep "^cfg=$1 " "$results" | grep " j=$2 " | tr ' ' '\n' | sed -n "s/^$3=//p" | tr '\n' ' ' || true)
    [ -n "$xs" ] || { echo nan; return; }
    # shellcheck disable=SC2086
    "$bin/bench-util" median $xs
}
maxv() { { grep "^cfg=$1 " "$results" || true; } | grep " j=$2 " | tr ' ' '\n' | sed -n "s/^$3=//p" | sort -n | tail -1 || true; }
sumv() { { grep "^cfg=$1 " "$results" || true; } | tr ' ' '\n' | sed -n "s/^$2=//p" | awk '{s+=$1} END{print s+0}'; }
fmt() { awk -v x="$1" -v p="${2:-1}" 'BEGIN{ if (x=="nan"||x=="") print "n/a"; else printf "%.*f", p, x }'; }
verdict() { awk -v x="$1" -v t="$2" -v op="$3" 'BEGIN{ if (x=="nan"||x=="") print "n/a"; else if ((op==">=" && x>=t) || (op=="<" && x<t)) print "yes"; else print "NO" }'; }
dnsv() { grep "^cfg=dns-$1 " "$results" | tr ' ' '\n' | sed -n "s/^$2=//p" || true; }

p1=$(val plain 1 rate); p8=$(val plain 8 rate)
c1=$(val tls-chain 1 rate); c8=$(val tls-chain 8 rate)
s1=$(val tls-sink 1 rate); s8=$(val tls-sink 8 rate)
pc1=$(val plain 1 cpu_ms_per_delivery); pc8=$(val plain 8 cpu_ms_per_delivery)
cc1=$(val tls-chain 1 cpu_ms_per_delivery); cc8=$(val tls-chain 8 cpu_ms_per_delivery)
sc1=$(val tls-sink 1 cpu_ms_per_delivery); sc8=$(val tls-sink 8 cpu_ms_per_delivery)
pm=$(maxv plain 1 maxrss_kib); pm8=$(maxv plain 8 maxrss_kib)
cm=$(maxv tls-chain 1 maxrss_kib); cm8=$(maxv tls-chain 8 maxrss_kib)
sm=$(maxv tls-sink 1 maxrss_kib); sm8=$(maxv tls-sink 8 maxrss_kib)
tlsmax=$(printf '%s\n%s\n%s\n%s\n' "$cm" "$cm8" "$sm" "$sm8" | sort -n | tail -1)
plainmax=$(printf '%s\n%s\n' "$pm" "$pm8" | sort -n | tail -1)
notk=$(($(sumv plain not_k) + $(sumv tls-chain not_k) + $(sumv tls-sink not_k)))
tls=$(grep -o 'tls=TLS[^ ]*' "$results" | head -1 | cut -d= -f2)

cat <<EOF

## Results ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r))

Source: commit $(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown), $(git -C "$top" status --porcelain -- crates tests Cargo.toml Cargo.lock 2>/dev/null | wc -l) files changed outside bench/.
1 KiB message; medians of $ROUNDS rounds ($N sequential deliveries, $NPAR with 8 at a time);
CPU = qmail-remote + qmail-remote-io per delivery; peak RSS = the largest ru_maxrss of all
the rounds (KiB). TLS: $tls.

| sink | deliveries/s, sequential | deliveries/s, 8 parallel | CPU ms/delivery (seq / par) | peak RSS KiB (seq / par) |
|---|---:|---:|---:|---:|
| plain: smtp-sink | $(fmt "$p1") | $(fmt "$p8") | $(fmt "$pc1" 2) / $(fmt "$pc8" 2) | $pm / $pm8 |
| STARTTLS: chainmail chain | $(fmt "$c1") | $(fmt "$c8") | $(fmt "$cc1" 2) / $(fmt "$cc8" 2) | $cm / $cm8 |
| STARTTLS: tls-sink (one process) | $(fmt "$s1") | $(fmt "$s8") | $(fmt "$sc1" 2) / $(fmt "$sc8" 2) | $sm / $sm8 |

Slow DNS (every answer after 200 ms; MX x3, each A + AAAA): time from spawning qmail-remote to
the connection at mx1, over $RUNS runs: min $(fmt "$(dnsv 200 min_ms)") ms, median $(fmt "$(dnsv 200 median_ms)") ms,
max $(fmt "$(dnsv 200 max_ms)") ms ($(dnsv 200 each)). Without the delay: min $(fmt "$(dnsv 0 min_ms)"),
median $(fmt "$(dnsv 0 median_ms)"), max $(fmt "$(dnsv 0 max_ms)") ms.

| target | figure | met |
|---|---|---|
| plaintext >= 230/s sequentially | $(fmt "$p1")/s | $(verdict "$p1" 230 ">=") |
| STARTTLS >= 80/s (sink: the chain) | $(fmt "$c1")/s | $(verdict "$c1" 80 ">=") |
| STARTTLS >= 80/s (sink: tls-sink) | $(fmt "$s1")/s | $(verdict "$s1" 80 ">=") |
| peak RSS < 4 MiB, plaintext | $plainmax KiB | $(verdict "$plainmax" 4096 "<") |
| peak RSS < 4 MiB, STARTTLS | $tlsmax KiB | $(verdict "$tlsmax" 4096 "<") |
| slow DNS: first connection < 450 ms (median) | $(fmt "$(dnsv 200 median_ms)") ms | $(verdict "$(dnsv 200 median_ms)" 450 "<") |
| every report K | $notk not K | $([ "$notk" = 0 ] && echo yes || echo NO) |

Time: ${elapsed}s. Lines on the chain sink's stderr: $(wc -l <"$work/chain.stderr").

### Commands (the first of each kind; ports vary)

    smtp-sink -u root 127.0.0.1:$sink_port 100
    CERTFILE=$work/server.pem KEYFILE=$work/server.key $chain_cmd
    $bin/tls-sink 127.0.0.1:0 $work/server.pem $work/server.key
    $PY tests/peers/dnsserver.py --delay-ms 200 $work/zone     (and --delay-ms 0)
$(awk -F'\t' '!seen[$1 FS $2]++ { print "    " $3 }' "$work/commands")

Control files: control/me = bench.test; control/smtproutes = :127.0.0.1:PORT; queue/lock/tcpto =
1024 zero bytes; run/qmail-remote/; for STARTTLS control/trustanchors = the CA file and
control/tlsstrictness = 0; for slow DNS no smtproutes and control/ipme = 192.0.2.254.
Zone:
$(sed 's/^/    /' "$work/zone")

### Raw results
$(sed 's/^/    /' "$results")
EOF
