#!/usr/bin/env bash
# bench/server-chain.sh: the STARTTLS server chain against stunnel4, side by
# side in one run (issue A), and optionally against an older build of the
# chain (BEFORE_BIN). Run from the repository root:
#
#   bench/server-chain.sh
#   BEFORE_BIN=/work/wt-base/target/release bench/server-chain.sh
#   ROUNDS=1 DURATION=3s LAT_DURATION=2s BULK=64M bench/server-chain.sh   # a short run
#
# The servers:
#   chain:   tcpserver -1 -R -H -l0 -c200 127.0.0.1 0 ucspi-tlsd -- smtpd-starttls-proxy-io test-smtpd
#   before:  the same with ucspi-tlsd and smtpd-starttls-proxy-io from $BEFORE_BIN (when set)
#   stunnel: stunnel4, TLS from the first byte (SMTPS), exec = test-smtpd per connection
#            (its STARTTLS mode, protocol = smtp, waits 200 ms before every session:
#            no performance reference; see bench/RESULTS.md)
#   bare:    tcpserver -1 -R -H -l0 -c200 127.0.0.1 0 test-smtpd (the floor of the plaintext chain)
# all with the same certificate, the same test-smtpd (this build's; it discards messages: no
# TEST_SMTPD_* variable is set) and the same client (bench/src/bin/smtp-load.rs). Figures:
#   1. openssl speed -evp aes-256-gcm / chacha20-poly1305 (16 KiB blocks): the ceiling;
#   2. one $BULK message over TLS: MB/s and server CPU s/GiB, for TLS 1.2 and 1.3 each with
#      AES-256-GCM and ChaCha20-Poly1305 (stunnel freshly started: a stunnel daemon that has
#      served thousands of sessions spends about twice the CPU per GiB);
#   3. full sessions per second with $CONC concurrent clients, TLS 1.2 and TLS 1.3;
#   4. the latency of one session at concurrency 1 (p50/p99), TLS 1.2 and TLS 1.3;
#   5. the plaintext chain (a client that never says STARTTLS) against bare test-smtpd under
#      tcpserver: sessions/s, latency, and the overhead per session of our binaries;
#   6. the PSS of the per-session processes of idle TLS sessions, K=1 and K=16.
# Each of 2-5 runs $ROUNDS times, the servers in a rotating order; the table shows
# medians and the median of the per-round ratios. Every session must end with its
# 221 (errors are counted), and the chains must print nothing on stderr.
#
# Environment: ROUNDS (3), CONC (16), DURATION (6s), LAT_DURATION (4s), BULK (256M),
# BEFORE_BIN (unset: no before column), KEY (ec: ECDSA P-256; rsa: RSA 2048),
# KX (default|x25519|p256), NODELAY (0; 1: TCP_NODELAY on the client), STATIC (1: ucspi-tlsd
# and smtpd-starttls-proxy-io linked statically, as install.sh builds them; 0: dynamically, as
# cargo build does), SKIP_BUILD (1: do not run cargo build), KEEP (1: keep the work directory).
#
# As root on Debian, missing packages (ucspi-tcp, stunnel4, openssl) are
# installed with apt-get. Everything started here is stopped by PID.
set -euo pipefail

cd "$(dirname "$0")/.."
top=$(pwd)

ROUNDS=${ROUNDS:-3}
CONC=${CONC:-16}
DURATION=${DURATION:-6s}
LAT_DURATION=${LAT_DURATION:-4s}
BULK=${BULK:-256M}
KEY=${KEY:-ec}
KX=${KX:-default}
NODELAY=${NODELAY:-0}
BEFORE_BIN=${BEFORE_BIN:-}
STATIC=${STATIC:-1}

log() { printf 'server-chain: %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1 && [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
    PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi

# ensure COMMAND PACKAGE: install PACKAGE when COMMAND is missing.
apt_updated=
ensure() {
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing $2"
        if [ -z "$apt_updated" ]; then apt-get update -qq >/dev/null || true; apt_updated=1; fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null
    fi
    command -v "$1" >/dev/null 2>&1 || { log "fatal: $1 is missing; install the Debian package $2"; exit 111; }
}
ensure tcpserver ucspi-tcp
ensure stunnel4 stunnel4
ensure openssl openssl

bin=${CARGO_TARGET_DIR:-$top/target}/release
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    command -v cargo >/dev/null 2>&1 || { log "fatal: cargo is needed"; exit 111; }
    log "building: cargo build --release --workspace --bins"
    cargo build --release --workspace --bins -q
    if [ "$STATIC" = 1 ]; then
        # As install.sh builds them: the server chain's two programs
        # statically linked (static-pie, so still address-randomised). Each
        # session execs both: without the dynamic loader's work (libc and
        # libgcc_s mapped, their relocations and symbols resolved) a session
        # costs about 1 ms of CPU less, and an idle engine 50 KiB less.
        for b in ucspi-tlsd smtpd-starttls-proxy-io; do
            log "building: cargo rustc --release -p $b --bin $b -- -C target-feature=+crt-static"
            cargo rustc --release -q -p "$b" --bin "$b" -- -C target-feature=+crt-static
        done
    fi
fi
for b in ucspi-tlsd smtpd-starttls-proxy-io test-smtpd smtp-load bench-util; do
    [ -x "$bin/$b" ] || { log "fatal: $bin/$b was not built"; exit 111; }
done
if [ -n "$BEFORE_BIN" ]; then
    BEFORE_BIN=$(cd "$BEFORE_BIN" && pwd)
    for b in ucspi-tlsd smtpd-starttls-proxy-io; do
        [ -x "$BEFORE_BIN/$b" ] || { log "fatal: BEFORE_BIN: $BEFORE_BIN/$b is missing"; exit 100; }
    done
fi

work=$(mktemp -d /tmp/chainmail-bench-server.XXXXXX)
pids=()
stop_pid() {
    # The server, then whatever sessions it still has (by PID).
    local pid=$1 kids
    kids=$("$bin/bench-util" tree "$pid" 2>/dev/null | awk '{print $1}') || kids=
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for k in $kids; do kill "$k" 2>/dev/null || true; done
}
cleanup() {
    local p
    for p in "${pids[@]}"; do stop_pid "$p"; done
    if [ "${KEEP:-0}" = 1 ]; then log "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- certificates: a test CA and a server certificate for mx.bench.test
case $KEY in
ec) keyopt=(-newkey ec -pkeyopt ec_paramgen_curve:P-256); keydesc="ECDSA P-256" ;;
rsa) keyopt=(-newkey rsa:2048); keydesc="RSA 2048" ;;
*) log "fatal: KEY must be ec or rsa"; exit 100 ;;
esac
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=chainmail bench CA" \
    -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req "${keyopt[@]}" -nodes -subj "/CN=mx.bench.test" -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:mx.bench.test,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$work/ext.cnf"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 2 \
    -extfile "$work/ext.cnf" -out "$work/server.pem" 2>/dev/null

# --- the servers
# start_tcpserver NAME CMD...: tcpserver under bench-util reaper, a child
# subreaper: the TLS engine and the proxy outlive their parent (the smtpd),
# and the reaper collects their CPU time (tcpserver's own children, the
# smtpds, count in its cutime). Sets port_NAME and pid_NAME.
start_tcpserver() {
    local name=$1 port reaper_pid tcp_pid
    shift
    mkfifo "$work/port.$name"
    CERTFILE=$work/server.pem KEYFILE=$work/server.key "$bin/bench-util" reaper "$work/reaped.$name" -- \
        tcpserver -1 -R -H -l0 -c200 127.0.0.1 0 "$@" >"$work/port.$name" 2>"$work/$name.stderr" &
    reaper_pid=$!
    read -r port <"$work/port.$name"
    tcp_pid=$("$bin/bench-util" tree "$reaper_pid" | awk '$3 == "tcpserver" { print $1; exit }')
    [ -n "$tcp_pid" ] || { log "fatal: tcpserver ($name) did not start"; exit 111; }
    pids+=("$tcp_pid" "$reaper_pid")
    printf -v "port_$name" '%s' "$port"
    printf -v "pid_$name" '%s' "$tcp_pid"
    "$bin/bench-util" wait-port "$port" 10
}
chain_args=("$bin/ucspi-tlsd" -- "$bin/smtpd-starttls-proxy-io" "$bin/test-smtpd")
start_tcpserver chain "${chain_args[@]}"
tls_servers=(chain)
plain_servers=(chain)
before_args=()
if [ -n "$BEFORE_BIN" ]; then
    before_args=("$BEFORE_BIN/ucspi-tlsd" -- "$BEFORE_BIN/smtpd-starttls-proxy-io" "$bin/test-smtpd")
    start_tcpserver before "${before_args[@]}"
    tls_servers+=(before)
    plain_servers+=(before)
fi
start_tcpserver bare "$bin/test-smtpd"
plain_servers+=(bare)
tls_servers+=(stunnel)

# start_stunnel NAME: a stunnel4 daemon serving SMTPS; sets pid_stunnel and port_stunnel.
start_stunnel() {
    local name=$1
    port_stunnel=$("$bin/bench-util" free-port)
    cat >"$work/$name.conf" <<CONF
; stunnel4 as the reference: same certificate, same test-smtpd, exec'd per
; connection (as the chain runs one smtpd per connection). debug = 3: errors
; only, as the chain prints nothing for a clean session.
foreground = yes
pid =
syslog = no
debug = 3
[smtps]
accept = 127.0.0.1:$port_stunnel
cert = $work/server.pem
key = $work/server.key
exec = $bin/test-smtpd
execArgs = test-smtpd
CONF
    stunnel4 "$work/$name.conf" >>"$work/stunnel.stdout" 2>>"$work/stunnel.stderr" &
    pid_stunnel=$!
    pids+=("$pid_stunnel")
    "$bin/bench-util" wait-port "$port_stunnel" 10
}
start_stunnel stunnel

results=$work/results
commands=$work/commands
: >"$results"
: >"$commands"

client_opts=(--ca "$work/ca.pem" --name mx.bench.test --kx "$KX")
[ "$NODELAY" = 1 ] && client_opts+=(--nodelay)

# addr_of SERVER: the address and the client options of a server.
addr_of() {
    case $1 in
    stunnel) echo "127.0.0.1:$port_stunnel --implicit-tls" ;;
    *)
        local v="port_$1"
        echo "127.0.0.1:${!v}"
        ;;
    esac
}
# pid_of SERVER: the PID under which its per-session processes run.
pid_of() {
    local v="pid_$1"
    echo "${!v}"
}
# cpu_of SERVER: how smtp-load finds the server's CPU time.
cpu_of() {
    case $1 in
    stunnel) echo "--cpu-pid $pid_stunnel" ;;
    *) echo "--cpu-pid $(pid_of "$1") --cpu-file $work/reaped.$1" ;;
    esac
}
# sel_of SERVER: the processes whose CPU a bulk transfer counts.
sel_of() {
    case $1 in
    stunnel) echo "--server-pid $pid_stunnel --include-root" ;;
    *) echo "--server-pid $(pid_of "$1")" ;;
    esac
}
# measure SERVER ROUND PHASE MODE ARGS...: runs smtp-load, keeps its RESULT line.
measure() {
    local server=$1 round=$2 phase=$3
    shift 3
    local cmd out rc
    cmd="$bin/smtp-load $1 $(addr_of "$server") ${client_opts[*]} ${*:2}"
    printf '%s\t%s\t%s\n' "$server" "$phase" "$cmd" >>"$commands"
    rc=0
    out=$($cmd 2>"$work/last.stderr") || rc=$?
    if [ -s "$work/last.stderr" ]; then sed "s/^/  [$server $phase] /" "$work/last.stderr" >&2; fi
    printf '%s\n' "$out" | grep '^STEPS' | sed "s/^/server=$server round=$round phase=$phase /" >>"$results.steps" || true
    local line
    line=$(printf '%s\n' "$out" | grep '^RESULT' || echo "RESULT failed=1")
    echo "server=$server round=$round phase=$phase rc=$rc $line" >>"$results"
    log "  $phase $server round $round: $(echo "$line" | cut -c8-150)"
}

# rotated R SERVERS...: the servers in the order of round R (each goes first in turn).
rotated() {
    local r=$1 i
    shift
    local list=("$@")
    local n=${#list[@]}
    for ((i = 0; i < n; i++)); do echo "${list[$(((i + r - 1) % n))]}"; done
}
# dotted 12: 1.2
dotted() { echo "${1:0:1}.${1:1}"; }

start_time=$(date +%s)
machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
log "machine: $machine"
log "certificate: $keydesc; client: --kx $KX, TCP_NODELAY $([ "$NODELAY" = 1 ] && echo on || echo 'off (default)')"
log "servers: ${tls_servers[*]} (TLS), ${plain_servers[*]} (plaintext)${BEFORE_BIN:+; before = $BEFORE_BIN}"

log "1/6 openssl speed (the ceiling)"
speed() {
    openssl speed -seconds 2 -bytes 16384 -evp "$1" 2>/dev/null |
        awk -v c="$1" 'tolower($1)==c {v=$NF; sub(/k$/,"",v); printf "%.0f", v*1000/1e6}'
}
speed_aes=$(speed aes-256-gcm)
speed_chacha=$(speed chacha20-poly1305)
log "  aes-256-gcm $speed_aes MB/s, chacha20-poly1305 $speed_chacha MB/s (16 KiB blocks, one core)"

bulk_rows=("12 aes256" "12 chacha20" "13 aes256" "13 chacha20")
log "2/6 bulk: one $BULK message, TLS 1.2/1.3 x AES-256-GCM/ChaCha20, $ROUNDS rounds (stunnel freshly started)"
for ((r = 1; r <= ROUNDS; r++)); do
    for row in "${bulk_rows[@]}"; do
        read -r v suite <<<"$row"
        for s in $(rotated "$r" "${tls_servers[@]}"); do
            # shellcheck disable=SC2046
            measure "$s" "$r" "bulk$v-$suite" bulk --tls "$(dotted "$v")" --suite "$suite" --size "$BULK" $(sel_of "$s")
        done
    done
done

log "3/6 sessions per second, $CONC clients, $DURATION each, TLS 1.2 and 1.3, $ROUNDS rounds"
for ((r = 1; r <= ROUNDS; r++)); do
    for v in 12 13; do
        for s in $(rotated "$r" "${tls_servers[@]}"); do
            # shellcheck disable=SC2046
            measure "$s" "$r" "rate$v" run --tls "$(dotted "$v")" -c "$CONC" --duration "$DURATION" --warmup 1s $(cpu_of "$s")
        done
    done
done

log "4/6 latency, 1 client, $LAT_DURATION each, TLS 1.2 and 1.3, $ROUNDS rounds"
for ((r = 1; r <= ROUNDS; r++)); do
    for v in 12 13; do
        for s in $(rotated "$r" "${tls_servers[@]}"); do
            # shellcheck disable=SC2046
            measure "$s" "$r" "lat$v" run --tls "$(dotted "$v")" -c 1 --duration "$LAT_DURATION" --warmup 0.5s $(cpu_of "$s")
        done
    done
done

log "5/6 plaintext: the chain without STARTTLS against bare test-smtpd, $ROUNDS rounds"
for ((r = 1; r <= ROUNDS; r++)); do
    for s in $(rotated "$r" "${plain_servers[@]}"); do
        # shellcheck disable=SC2046
        measure "$s" "$r" plain-rate run --plaintext -c "$CONC" --duration "$DURATION" --warmup 1s $(cpu_of "$s")
    done
    for s in $(rotated "$r" "${plain_servers[@]}"); do
        # shellcheck disable=SC2046
        measure "$s" "$r" plain-lat run --plaintext -c 1 --duration "$LAT_DURATION" --warmup 0.5s $(cpu_of "$s")
    done
done

log "6/6 memory of idle TLS sessions (K=1, K=16)"
for k in 1 16; do
    for s in "${tls_servers[@]}"; do
        case $s in
        stunnel)
            # A fresh stunnel for each K: its heap keeps what earlier sessions
            # freed, which would hide the cost of new ones.
            stop_pid "$pid_stunnel"
            start_stunnel "stunnel-k$k"
            measure stunnel "k$k" idle idle -k "$k" --server-pid "$pid_stunnel" --include-root --exclude-comm test-smtpd
            ;;
        *) measure "$s" "k$k" idle idle -k "$k" --server-pid "$(pid_of "$s")" --exclude-comm test-smtpd ;;
        esac
    done
done
elapsed=$(($(date +%s) - start_time))

# --- the table
# field SERVER ROUND PHASE KEY: one value from the results.
field() { { grep "^server=$1 round=$2 phase=$3 " "$results" || true; } | tr ' ' '\n' | sed -n "s/^$4=//p" | head -1; }
# val SERVER PHASE KEY: the median of KEY over the rounds.
val() {
    local r xs=
    for ((r = 1; r <= ROUNDS; r++)); do xs="$xs $(field "$1" "$r" "$2" "$3")"; done
    # shellcheck disable=SC2086
    "$bin/bench-util" median $xs || true
}
# combine OP A B PHASE KEY: the median over the rounds of A's KEY / B's KEY (OP ratio) or A's - B's (OP diff).
combine() {
    local op=$1 r a b xs=
    for ((r = 1; r <= ROUNDS; r++)); do
        a=$(field "$2" "$r" "$4" "$5")
        b=$(field "$3" "$r" "$4" "$5")
        [ -n "$a" ] && [ -n "$b" ] &&
            xs="$xs $(awk -v a="$a" -v b="$b" -v op="$op" 'BEGIN{ if (op=="diff") printf "%.3f", a-b; else if (b>0) printf "%.3f", a/b; else print "nan"}')"
    done
    # shellcheck disable=SC2086
    "$bin/bench-util" median $xs || true
}
idle_val() { field "$1" "k$2" idle "$3"; }
errors_of() { { grep "^server=$1 " "$results" || true; } | tr ' ' '\n' | sed -n 's/^errors=//p' | awk '{s+=$1} END{print s+0}'; }
failed_runs() { grep -c ' rc=[^0]\| failed=1' "$results" || true; }
fmt() { awk -v x="$1" -v p="${2:-1}" 'BEGIN{ if (x=="nan"||x=="") print "n/a"; else printf "%.*f", p, x }'; }
verdict() { awk -v x="$1" -v t="$2" -v op="$3" 'BEGIN{ if (x=="nan"||x=="") print "n/a"; else if ((op==">=" && x>=t) || (op=="<=" && x<=t)) print "yes"; else print "NO" }'; }
has_before() { [ -n "$BEFORE_BIN" ]; }
# row LABEL PHASE KEY DIGITS [TARGET OP T]: chain | before | stunnel | ratios | target | met.
row() {
    local label=$1 phase=$2 key=$3 d=$4 target=${5:-} op=${6:-} t=${7:-}
    local c b=nan s rs rb=nan met=
    c=$(val chain "$phase" "$key")
    s=$(val stunnel "$phase" "$key")
    rs=$(combine ratio chain stunnel "$phase" "$key")
    if has_before; then
        b=$(val before "$phase" "$key")
        rb=$(combine ratio chain before "$phase" "$key")
    fi
    case $op in
    ratio) met=$(verdict "$rs" "$t" ">=") ;;
    "<=") met=$(verdict "$c" "$t" "<=") ;;
    esac
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$label" "$(fmt "$c" "$d")" "$(fmt "$b" "$d")" \
        "$(fmt "$s" "$d")" "$(fmt "$rs" 2)" "$(fmt "$rb" 2)" "$target" "$met"
}
# idle_row K: the idle PSS row.
idle_row() {
    local c b=nan s
    c=$(idle_val chain "$1" pss_kib_per_session)
    s=$(idle_val stunnel "$1" pss_kib_per_session)
    has_before && b=$(idle_val before "$1" pss_kib_per_session)
    printf '| idle TLS session PSS, K=%s (KiB/session) | %s | %s | %s | | | <= 256 KiB | %s |\n' "$1" "$(fmt "$c")" \
        "$(fmt "$b")" "$(fmt "$s")" "$(verdict "$c" 256 "<=")"
}
# plain_row LABEL PHASE KEY DIGITS [nodiff]: chain | before | bare | chain/bare | before/bare | chain-bare | before-bare.
plain_row() {
    local label=$1 phase=$2 key=$3 d=$4 c b=nan x rc rb=nan dc db=nan
    c=$(val chain "$phase" "$key")
    x=$(val bare "$phase" "$key")
    rc=$(combine ratio chain bare "$phase" "$key")
    dc=$(combine diff chain bare "$phase" "$key")
    if has_before; then
        b=$(val before "$phase" "$key")
        rb=$(combine ratio before bare "$phase" "$key")
        db=$(combine diff before bare "$phase" "$key")
    fi
    if [ "${5:-}" = nodiff ]; then dc=nan db=nan; fi
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$label" "$(fmt "$c" "$d")" "$(fmt "$b" "$d")" "$(fmt "$x" "$d")" \
        "$(fmt "$rc" 2)" "$(fmt "$rb" 2)" "$(fmt "$dc" 2)" "$(fmt "$db" 2)"
}
negotiated() { { grep "^server=$1 " "$results" || true; } | grep " phase=$2 " | grep -o 'tls=[^ ]*' | sort -u | cut -d= -f2 | tr '\n' ' '; }
before_or_na() { if has_before; then "$@"; else echo n/a; fi; }
stderr_lines() { wc -l <"$work/$1.stderr"; }

cat <<EOF

## Results ($(date -u +%Y-%m-%dT%H:%MZ), $machine)

Source: commit $(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown), $(git -C "$top" status --porcelain -- crates tests Cargo.toml Cargo.lock 2>/dev/null | wc -l) files changed outside bench/.
Chain binaries: $(file -b "$bin/ucspi-tlsd" | grep -o 'static-pie linked\|dynamically linked'). Before: ${BEFORE_BIN:-(none: BEFORE_BIN not set)}$([ -n "$BEFORE_BIN" ] && echo ", $(file -b "$BEFORE_BIN/ucspi-tlsd" | grep -o 'static-pie linked\|dynamically linked')").
Certificate $keydesc; client --kx $KX, TCP_NODELAY $([ "$NODELAY" = 1 ] && echo on || echo off); medians of
$ROUNDS rounds in rotating order; a ratio is the median of the per-round ratios. stunnel = stunnel4 SMTPS
(TLS from the first byte: a slightly shorter session than the chain's STARTTLS one).

| figure | chain | before | stunnel | chain/stunnel | chain/before | target | met |
|---|---:|---:|---:|---:|---:|---|---|
$(row "sessions/s TLS 1.2, $CONC clients" rate12 rate 1 ">= 1.1x stunnel" ratio 1.1)
$(row "sessions/s TLS 1.3, $CONC clients" rate13 rate 1 ">= 1.1x stunnel" ratio 1.1)
$(row "server CPU ms/session TLS 1.2, $CONC clients" rate12 server_cpu_ms_per_session 2)
$(row "server CPU ms/session TLS 1.3, $CONC clients" rate13 server_cpu_ms_per_session 2)
$(row "p50 latency TLS 1.2, 1 client (ms)" lat12 p50_ms 2 "<= 4 ms" "<=" 4)
$(row "p99 latency TLS 1.2, 1 client (ms)" lat12 p99_ms 2)
$(row "p50 latency TLS 1.3, 1 client (ms)" lat13 p50_ms 2 "<= 4 ms" "<=" 4)
$(row "p99 latency TLS 1.3, 1 client (ms)" lat13 p99_ms 2)
$(row "p50 latency TLS 1.3, $CONC clients (ms)" rate13 p50_ms 1)
$(row "bulk $BULK TLS 1.2 AES-256-GCM (MB/s)" bulk12-aes256 mb_s 0 ">= 1.0x stunnel" ratio 1.0)
$(row "bulk $BULK TLS 1.2 ChaCha20-Poly1305 (MB/s)" bulk12-chacha20 mb_s 0 ">= 1.0x stunnel" ratio 1.0)
$(row "bulk $BULK TLS 1.3 AES-256-GCM (MB/s)" bulk13-aes256 mb_s 0 ">= 1.0x stunnel" ratio 1.0)
$(row "bulk $BULK TLS 1.3 ChaCha20-Poly1305 (MB/s)" bulk13-chacha20 mb_s 0 ">= 1.0x stunnel" ratio 1.0)
$(row "bulk server CPU s/GiB, TLS 1.2 AES-256-GCM" bulk12-aes256 server_cpu_s_per_gib 2)
$(row "bulk server CPU s/GiB, TLS 1.2 ChaCha20" bulk12-chacha20 server_cpu_s_per_gib 2)
$(row "bulk server CPU s/GiB, TLS 1.3 AES-256-GCM" bulk13-aes256 server_cpu_s_per_gib 2)
$(row "bulk server CPU s/GiB, TLS 1.3 ChaCha20" bulk13-chacha20 server_cpu_s_per_gib 2)
$(idle_row 1)
$(idle_row 16)
| sessions without their 221 (errors) | $(errors_of chain) | $(before_or_na errors_of before) | $(errors_of stunnel) | | | 0 | $([ "$(errors_of chain)" = 0 ] && echo yes || echo NO) |
| lines on the chain's stderr | $(stderr_lines chain) | $(before_or_na stderr_lines before) | | | | 0 | $([ -s "$work/chain.stderr" ] && echo NO || echo yes) |

The plaintext chain (a client that never says STARTTLS: tcpserver ucspi-tlsd -- smtpd-starttls-proxy-io
test-smtpd) against bare test-smtpd under the same tcpserver (the floor; s6-networking is not available
here). Overhead = the chain's figure minus bare's (median of the per-round differences): what our two
programs add to a session.

| figure | chain | before | bare | chain/bare | before/bare | chain overhead | before overhead |
|---|---:|---:|---:|---:|---:|---:|---:|
$(plain_row "sessions/s, $CONC clients" plain-rate rate 1 nodiff)
$(plain_row "server CPU ms/session, $CONC clients" plain-rate server_cpu_ms_per_session 2)
$(plain_row "p50 latency, $CONC clients (ms)" plain-rate p50_ms 2)
$(plain_row "p50 latency, 1 client (ms)" plain-lat p50_ms 2)
$(plain_row "p99 latency, 1 client (ms)" plain-lat p99_ms 2)
$(plain_row "server CPU ms/session, 1 client" plain-lat server_cpu_ms_per_session 2)
| sessions without their 221 (errors) | | | $(errors_of bare) | | | | |

openssl speed (one core, 16 KiB blocks): aes-256-gcm $speed_aes MB/s, chacha20-poly1305 $speed_chacha MB/s.
Negotiated, chain / stunnel: sessions $(negotiated chain rate12)/ $(negotiated stunnel rate12)and $(negotiated chain rate13)/ $(negotiated stunnel rate13);
bulk $(for p in bulk12-aes256 bulk12-chacha20 bulk13-aes256 bulk13-chacha20; do printf '%s/ %s; ' "$(negotiated chain $p)" "$(negotiated stunnel $p)"; done)
Idle PSS: the chain's is the sum over its per-session processes (TLS engine, and the proxy while it
lives; not tcpserver, not the smtpd), less their sum before the sessions; stunnel's is the growth of a
freshly started daemon's PSS per session (its per-session state lives in its threads).
Memory detail (K=16): chain $(idle_val chain 16 counted)$(has_before && echo ", before $(idle_val before 16 counted)"), stunnel $(idle_val stunnel 16 pss_kib_total) KiB in total.
Runs that failed: $(failed_runs). Time: ${elapsed}s.

### Commands (the first of each kind; the servers' ports vary)

    CERTFILE=$work/server.pem KEYFILE=$work/server.key bench-util reaper $work/reaped.chain -- tcpserver -1 -R -H -l0 -c200 127.0.0.1 0 ${chain_args[*]}
$(has_before && echo "    (the same for before) tcpserver -1 -R -H -l0 -c200 127.0.0.1 0 ${before_args[*]}")
    (the same for bare) tcpserver -1 -R -H -l0 -c200 127.0.0.1 0 $bin/test-smtpd
    stunnel4 $work/stunnel.conf      # the configuration below
$(sed 's/^/        /' "$work/stunnel.conf")
    openssl speed -seconds 2 -bytes 16384 -evp aes-256-gcm   (and chacha20-poly1305)
$(awk -F'\t' '!seen[$1 FS $2]++ { print "    " $3 }' "$commands")
EOF
for n in chain before; do
    if [ -s "$work/$n.stderr" ]; then
        echo
        echo "### The $n chain's stderr"
        sed 's/^/    /' "$work/$n.stderr" | head -20
    fi
done
echo
echo "### Raw results"
sed 's/^/    /' "$results"
echo
echo "### Median step times (ms; a step ends when its reply has been read)"
sed 's/^/    /' "$results.steps"
