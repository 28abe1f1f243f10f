#!/usr/bin/env bash
# bench/server-chain.sh: the STARTTLS server chain against stunnel4, side by
# side in one run (issue A). Run from the repository root:
#
#   bench/server-chain.sh
#
# Measures, for
#   chain:            tcpserver -1 -R -H -l0 -c200 127.0.0.1 0 ucspi-tlsd -- smtpd-starttls-proxy-io test-smtpd
#   stunnel-starttls: stunnel4, protocol = smtp, exec = test-smtpd (per connection)
#   stunnel-smtps:    stunnel4, TLS from the first byte, exec = test-smtpd
# with the same certificate, the same test-smtpd (it discards messages:
# no TEST_SMTPD_* variable is set) and the same client (bench/src/bin/smtp-load.rs):
#   1. full sessions per second with $CONC concurrent clients;
#   2. the latency of one session at concurrency 1 (p50/p99);
#   3. one $BULK message over TLS: MB/s, server CPU s per GiB (against a freshly
#      started stunnel, and again after the session phases: a stunnel daemon that
#      has served thousands of sessions spends about twice the CPU per GiB);
#   4. the PSS of the per-session processes of idle TLS sessions, K=1 and K=16;
#   5. openssl speed -evp aes-128-gcm / aes-256-gcm (16 KiB blocks): the ceiling.
# Each of 1-3 runs $ROUNDS times, the servers in a rotating order; the table
# shows medians and the median of the per-round ratios. Every session must
# end with its 221 (errors are counted), and the chain must print nothing on
# stderr.
#
# Environment: ROUNDS (3), CONC (16), DURATION (6s), LAT_DURATION (4s),
# BULK (256M), KEY (ec: ECDSA P-256; rsa: RSA 2048), KX (default|x25519|p256),
# SUITE (default|aes128|aes256), NODELAY (0; 1: TCP_NODELAY on the client),
# KEEP (1: keep the work directory).
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
SUITE=${SUITE:-default}
NODELAY=${NODELAY:-0}

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
command -v cargo >/dev/null 2>&1 || { log "fatal: cargo is needed"; exit 111; }

log "building: cargo build --release --workspace --bins"
cargo build --release --workspace --bins -q
bin=${CARGO_TARGET_DIR:-$top/target}/release
for b in ucspi-tlsd smtpd-starttls-proxy-io test-smtpd smtp-load bench-util; do
    [ -x "$bin/$b" ] || { log "fatal: $bin/$b was not built"; exit 111; }
done

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
mkfifo "$work/port"
chain_cmd="tcpserver -1 -R -H -l0 -c200 127.0.0.1 0 $bin/ucspi-tlsd -- $bin/smtpd-starttls-proxy-io $bin/test-smtpd"
# tcpserver runs under bench-util reaper, a child subreaper: the TLS engine
# and the proxy outlive their parent (the smtpd), and the reaper collects
# their CPU time (tcpserver's own children, the smtpds, count in its cutime).
CERTFILE=$work/server.pem KEYFILE=$work/server.key "$bin/bench-util" reaper "$work/reaped" -- $chain_cmd \
    >"$work/port" 2>"$work/chain.stderr" &
reaper_pid=$!
read -r chain_port <"$work/port"
chain_pid=$("$bin/bench-util" tree "$reaper_pid" | awk '$3 == "tcpserver" { print $1; exit }')
[ -n "$chain_pid" ] || { log "fatal: tcpserver did not start"; exit 111; }
pids+=("$chain_pid" "$reaper_pid")

# start_stunnel NAME: a stunnel4 daemon with two services, STARTTLS
# (protocol = smtp) and SMTPS; sets stunnel_pid, starttls_port, smtps_port.
start_stunnel() {
    local name=$1
    starttls_port=$("$bin/bench-util" free-port)
    smtps_port=$("$bin/bench-util" free-port)
    while [ "$smtps_port" = "$starttls_port" ]; do smtps_port=$("$bin/bench-util" free-port); done
    cat >"$work/$name.conf" <<EOF
; stunnel4 as the reference: same certificate, same test-smtpd, exec'd per
; connection (as the chain runs one smtpd per connection). debug = 3: errors
; only, as the chain prints nothing for a clean session.
foreground = yes
pid =
syslog = no
debug = 3
[starttls]
accept = 127.0.0.1:$starttls_port
protocol = smtp
cert = $work/server.pem
key = $work/server.key
exec = $bin/test-smtpd
execArgs = test-smtpd
[smtps]
accept = 127.0.0.1:$smtps_port
cert = $work/server.pem
key = $work/server.key
exec = $bin/test-smtpd
execArgs = test-smtpd
EOF
    stunnel4 "$work/$name.conf" >>"$work/stunnel.stdout" 2>>"$work/stunnel.stderr" &
    stunnel_pid=$!
    pids+=("$stunnel_pid")
    "$bin/bench-util" wait-port "$starttls_port" 10
    "$bin/bench-util" wait-port "$smtps_port" 10
}
start_stunnel stunnel
"$bin/bench-util" wait-port "$chain_port" 10

results=$work/results
commands=$work/commands
: >"$results"
: >"$commands"

client_opts=(--ca "$work/ca.pem" --name mx.bench.test --kx "$KX" --suite "$SUITE")
[ "$NODELAY" = 1 ] && client_opts+=(--nodelay)

# addr_of SERVER: the address and the client options of a server.
addr_of() {
    case $1 in
    chain) echo "127.0.0.1:$chain_port" ;;
    stunnel-starttls) echo "127.0.0.1:$starttls_port" ;;
    stunnel-smtps) echo "127.0.0.1:$smtps_port --implicit-tls" ;;
    esac
}
# cpu_of SERVER: how smtp-load finds the server's CPU time.
cpu_of() {
    case $1 in
    chain) echo "--cpu-pid $chain_pid --cpu-file $work/reaped" ;;
    *) echo "--cpu-pid $stunnel_pid" ;;
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
    if [ -s "$work/last.stderr" ]; then sed "s/^/  [$server] /" "$work/last.stderr" >&2; fi
    printf '%s\n' "$out" | grep '^STEPS' | sed "s/^/server=$server round=$round phase=$phase /" >>"$results.steps" || true
    local line
    line=$(printf '%s\n' "$out" | grep '^RESULT' || echo "RESULT failed=1")
    echo "server=$server round=$round phase=$phase rc=$rc $line" >>"$results"
    log "  $server round $round: $(echo "$line" | cut -c8-170)"
}

servers=(chain stunnel-smtps stunnel-starttls)
# rotated SERVERS for round R: each server goes first once in three rounds.
rotated() {
    local r=$1 n=${#servers[@]} i
    for ((i = 0; i < n; i++)); do echo "${servers[$(((i + r - 1) % n))]}"; done
}

start_time=$(date +%s)
log "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
log "certificate: $keydesc; client: --kx $KX --suite $SUITE, TCP_NODELAY $([ "$NODELAY" = 1 ] && echo on || echo 'off (default)')"

log "1/6 openssl speed (the ceiling)"
speed() {
    openssl speed -seconds 2 -bytes 16384 -evp "$1" 2>/dev/null | awk -v c="$1" 'tolower($1)==c {v=$NF; sub(/k$/,"",v); printf "%.0f", v*1000/1e6}'
}
speed128=$(speed aes-128-gcm)
speed256=$(speed aes-256-gcm)
echo "openssl aes128 $speed128" >>"$results"
log "  aes-128-gcm $speed128 MB/s, aes-256-gcm $speed256 MB/s (16 KiB blocks, one core)"

# bulk_phase PHASE: one $BULK message per server and round.
bulk_phase() {
    local r s sel
    for ((r = 1; r <= ROUNDS; r++)); do
        for s in $(rotated "$r"); do
            case $s in
            chain) sel="--server-pid $chain_pid" ;;
            *) sel="--server-pid $stunnel_pid --include-root" ;;
            esac
            measure "$s" "$r" "$1" bulk --size "$BULK" $sel
        done
    done
}
log "2/6 bulk: one $BULK message, $ROUNDS rounds (stunnel freshly started)"
bulk_phase bulk

log "3/6 sessions per second, $CONC clients, $DURATION each, $ROUNDS rounds"
for ((r = 1; r <= ROUNDS; r++)); do
    for s in $(rotated "$r"); do measure "$s" "$r" rate run -c "$CONC" --duration "$DURATION" --warmup 1s $(cpu_of "$s"); done
done

log "4/6 latency, 1 client, $LAT_DURATION each, $ROUNDS rounds"
for ((r = 1; r <= ROUNDS; r++)); do
    for s in $(rotated "$r"); do measure "$s" "$r" latency run -c 1 --duration "$LAT_DURATION" --warmup 0.5s $(cpu_of "$s"); done
done

log "5/6 bulk again, stunnel now aged by the sessions above (its CPU per GiB grows; see RESULTS.md)"
bulk_phase bulk-aged

log "6/6 memory of idle TLS sessions (K=1, K=16)"
for k in 1 16; do
    measure chain "k$k" idle idle -k "$k" --server-pid "$chain_pid" --exclude-comm test-smtpd
    # A fresh stunnel for each K: its heap keeps what earlier sessions
    # freed, which would hide the cost of new ones.
    stop_pid "$stunnel_pid"
    start_stunnel "stunnel-k$k"
    measure stunnel-starttls "k$k" idle idle -k "$k" --server-pid "$stunnel_pid" --include-root --exclude-comm test-smtpd
done
elapsed=$(($(date +%s) - start_time))

# --- the table
# val SERVER PHASE KEY: the median of KEY over the rounds.
val() {
    local xs
    xs=$(grep "^server=$1 " "$results" | grep " phase=$2 " | tr ' ' '\n' | sed -n "s/^$3=//p" | tr '\n' ' ' || true)
    [ -n "$xs" ] || { echo nan; return; }
    # shellcheck disable=SC2086
    "$bin/bench-util" median $xs
}
# ratio A B PHASE KEY: the median over the rounds of A's KEY / B's KEY.
ratio() {
    local r a b xs=
    for ((r = 1; r <= ROUNDS; r++)); do
        a=$(grep "^server=$1 round=$r phase=$3 " "$results" | tr ' ' '\n' | sed -n "s/^$4=//p" || true)
        b=$(grep "^server=$2 round=$r phase=$3 " "$results" | tr ' ' '\n' | sed -n "s/^$4=//p" || true)
        [ -n "$a" ] && [ -n "$b" ] && xs="$xs $(awk -v a="$a" -v b="$b" 'BEGIN{ if (b>0) printf "%.3f", a/b; else print "nan"}')"
    done
    # shellcheck disable=SC2086
    "$bin/bench-util" median $xs
}
idle_val() { grep "^server=$1 round=k$2 " "$results" | tr ' ' '\n' | sed -n "s/^$3=//p" || true; }
errors_of() { { grep "^server=$1 " "$results" || true; } | tr ' ' '\n' | sed -n 's/^errors=//p' | awk '{s+=$1} END{print s+0}'; }
failed_runs() { grep -c ' rc=[^0]\| failed=1' "$results" || true; }
fmt() { awk -v x="$1" -v p="${2:-1}" 'BEGIN{ if (x=="nan"||x=="") print "n/a"; else printf "%.*f", p, x }'; }
verdict() { awk -v x="$1" -v t="$2" -v op="$3" 'BEGIN{ if (x=="nan") print "n/a"; else if ((op==">=" && x>=t) || (op=="<" && x<t)) print "yes"; else print "NO" }'; }

c_rate=$(val chain rate rate); s_rate=$(val stunnel-smtps rate rate); t_rate=$(val stunnel-starttls rate rate)
r_rate=$(ratio chain stunnel-smtps rate rate); r_rate_t=$(ratio chain stunnel-starttls rate rate)
c_p50=$(val chain latency p50_ms); s_p50=$(val stunnel-smtps latency p50_ms); t_p50=$(val stunnel-starttls latency p50_ms)
c_p99=$(val chain latency p99_ms); s_p99=$(val stunnel-smtps latency p99_ms); t_p99=$(val stunnel-starttls latency p99_ms)
c_c16=$(val chain rate p50_ms); s_c16=$(val stunnel-smtps rate p50_ms); t_c16=$(val stunnel-starttls rate p50_ms)
c_scpu=$(val chain rate server_cpu_ms_per_session); s_scpu=$(val stunnel-smtps rate server_cpu_ms_per_session); t_scpu=$(val stunnel-starttls rate server_cpu_ms_per_session)
c_ccpu=$(val chain rate client_cpu_ms_per_session); s_ccpu=$(val stunnel-smtps rate client_cpu_ms_per_session); t_ccpu=$(val stunnel-starttls rate client_cpu_ms_per_session)
c_mb=$(val chain bulk mb_s); s_mb=$(val stunnel-smtps bulk mb_s); t_mb=$(val stunnel-starttls bulk mb_s)
r_mb=$(ratio chain stunnel-smtps bulk mb_s); r_mb_t=$(ratio chain stunnel-starttls bulk mb_s)
c_cpu=$(val chain bulk server_cpu_s_per_gib); s_cpu=$(val stunnel-smtps bulk server_cpu_s_per_gib); t_cpu=$(val stunnel-starttls bulk server_cpu_s_per_gib)
c_mba=$(val chain bulk-aged mb_s); s_mba=$(val stunnel-smtps bulk-aged mb_s); t_mba=$(val stunnel-starttls bulk-aged mb_s)
r_mba=$(ratio chain stunnel-smtps bulk-aged mb_s); r_mba_t=$(ratio chain stunnel-starttls bulk-aged mb_s)
c_cpua=$(val chain bulk-aged server_cpu_s_per_gib); s_cpua=$(val stunnel-smtps bulk-aged server_cpu_s_per_gib); t_cpua=$(val stunnel-starttls bulk-aged server_cpu_s_per_gib)
c_k1=$(idle_val chain 1 pss_kib_per_session); c_k16=$(idle_val chain 16 pss_kib_per_session)
s_k1=$(idle_val stunnel-starttls 1 pss_kib_per_session); s_k16=$(idle_val stunnel-starttls 16 pss_kib_per_session)
c_err=$(errors_of chain); s_err=$(errors_of stunnel-smtps); t_err=$(errors_of stunnel-starttls)
chain_stderr=$(wc -l <"$work/chain.stderr")
tls=$(grep '^server=chain ' "$results" | grep -o 'tls=[^ ]*' | head -1 | cut -d= -f2)

cat <<EOF

## Results ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r))

Source: commit $(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown), $(git -C "$top" status --porcelain -- crates tests Cargo.toml Cargo.lock 2>/dev/null | wc -l) files changed outside bench/.
Certificate $keydesc; negotiated $tls; client TCP_NODELAY $([ "$NODELAY" = 1 ] && echo on || echo off);
medians of $ROUNDS rounds; ratio = median of the per-round ratios chain / stunnel-smtps
(in brackets: chain / stunnel-starttls).

| figure | chain | stunnel SMTPS | stunnel STARTTLS | ratio | target | met |
|---|---:|---:|---:|---:|---|---|
| sessions/s, $CONC clients | $(fmt "$c_rate") | $(fmt "$s_rate") | $(fmt "$t_rate") | $(fmt "$r_rate" 2) ($(fmt "$r_rate_t" 2)) | >= 0.8x stunnel | $(verdict "$r_rate" 0.8 ">=") |
| server CPU per session, $CONC clients (ms) | $(fmt "$c_scpu" 2) | $(fmt "$s_scpu" 2) | $(fmt "$t_scpu" 2) | | | |
| client CPU per session (ms) | $(fmt "$c_ccpu" 2) | $(fmt "$s_ccpu" 2) | $(fmt "$t_ccpu" 2) | | | |
| session latency p50, 1 client (ms) | $(fmt "$c_p50" 2) | $(fmt "$s_p50" 2) | $(fmt "$t_p50" 2) | | < 10 ms | $(verdict "$c_p50" 10 "<") |
| session latency p99, 1 client (ms) | $(fmt "$c_p99" 2) | $(fmt "$s_p99" 2) | $(fmt "$t_p99" 2) | | | |
| session latency p50, $CONC clients (ms) | $(fmt "$c_c16" 1) | $(fmt "$s_c16" 1) | $(fmt "$t_c16" 1) | | | |
| bulk $BULK (fresh stunnel), MB/s | $(fmt "$c_mb") | $(fmt "$s_mb") | $(fmt "$t_mb") | $(fmt "$r_mb" 2) ($(fmt "$r_mb_t" 2)) | >= 1.0x stunnel | $(verdict "$r_mb" 1.0 ">=") |
| bulk, server CPU s/GiB | $(fmt "$c_cpu" 2) | $(fmt "$s_cpu" 2) | $(fmt "$t_cpu" 2) | | | |
| bulk $BULK after the session phases, MB/s | $(fmt "$c_mba") | $(fmt "$s_mba") | $(fmt "$t_mba") | $(fmt "$r_mba" 2) ($(fmt "$r_mba_t" 2)) | | |
| bulk after the session phases, server CPU s/GiB | $(fmt "$c_cpua" 2) | $(fmt "$s_cpua" 2) | $(fmt "$t_cpua" 2) | | | |
| idle session PSS, K=1 (KiB/session) | $(fmt "$c_k1") | | $(fmt "$s_k1") | | < 1024 KiB | $(verdict "$c_k1" 1024 "<") |
| idle session PSS, K=16 (KiB/session) | $(fmt "$c_k16") | | $(fmt "$s_k16") | | < 1024 KiB | $(verdict "$c_k16" 1024 "<") |
| sessions without their 221 (errors) | $c_err | $s_err | $t_err | | 0 | $([ "$c_err" = 0 ] && echo yes || echo NO) |
| lines on the chain's stderr | $chain_stderr | | | | 0 | $([ "$chain_stderr" = 0 ] && echo yes || echo NO) |

openssl speed (one core, 16 KiB blocks): aes-128-gcm $speed128 MB/s, aes-256-gcm $speed256 MB/s.
Stunnel's PSS is the growth of the stunnel daemon's PSS per session (a fresh daemon for each K;
its per-session state lives in its threads); the chain's is the sum over its per-session processes
(TLS engine and proxy; not tcpserver, not the smtpd).
Memory detail: chain $(grep '^server=chain round=k16 ' "$results" | grep -o 'counted=[^ ]*'), stunnel $(grep '^server=stunnel-starttls round=k16 ' "$results" | grep -o 'pss_kib_total=[^ ]*').
Runs that failed: $(failed_runs). Time: ${elapsed}s.

### Commands (the first of each kind; the servers' ports vary)

    CERTFILE=$work/server.pem KEYFILE=$work/server.key $chain_cmd
    stunnel4 $work/stunnel.conf      # the configuration below
$(sed 's/^/    /' "$work/stunnel.conf")
    openssl speed -seconds 2 -bytes 16384 -evp aes-128-gcm   (and aes-256-gcm)
$(awk -F'\t' '!seen[$1 FS $2]++ { print "    " $3 }' "$commands")
EOF
if [ -s "$work/chain.stderr" ]; then
    echo
    echo "### The chain's stderr"
    sed 's/^/    /' "$work/chain.stderr" | head -20
fi
echo
echo "### Raw results"
sed 's/^/    /' "$results"
echo
echo "### Median step times (ms; a step ends when its reply has been read)"
sed 's/^/    /' "$results.steps"
