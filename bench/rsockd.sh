#!/usr/bin/env bash
# bench/rsockd.sh: rsockd side by side with danted (and socat for bulk), in
# one run, same machine, same targets (issue 10). Run from the repository
# root:
#
#   bench/rsockd.sh
#
# Measures, each $ROUNDS times alternating the contenders (medians shown):
#   1. connections/s with $CLIENTS concurrent SOCKS5 clients (connect,
#      request, read the target's 6 bytes, close), for $SECONDS_PER_RUN s:
#      direct (client -> proxy -> target) and through one upstream hop
#      (client -> proxy -> upstream proxy -> target; rsockd chains to
#      rsockd (tcpserver to tcpserver, listener to listener), danted to
#      danted); target: rsockd >= 1.0x danted;
#   2. bulk throughput of one $BULK_MIB MiB transfer through one hop, for
#      rsockd, danted and a chain of two plain socat relays (the same
#      topology without SOCKS); target: >= 1.0x danted, >= 0.8x socat;
#   1b. the floor of rsockd's model on this machine: connections/s to
#      tcpserver running /bin/echo (a fork and an exec per connection);
#      with each, the proxy's CPU per connection (user + system time of its
#      processes, from /proc: less noisy than the rate on a shared machine);
#   3. time to first byte through one hop (connect, SOCKS5, the target's
#      first byte), p50 and p99 over $TTFB_N sequential connections.
#
# rsockd runs in both of its modes, side by side: under tcpserver (-c 200; a
# process per connection) and as its own listener (-L, -n 200; a thread per
# connection), release profile linked statically as install.sh does; danted
# with its default process pools; socat with fork.
# Environment: ROUNDS (3), CLIENTS (16), SECONDS_PER_RUN (5), BULK_MIB (512),
# TTFB_N (500), PROFILE (release; dev to try the script quickly), KEEP (1:
# keep the work directory). Needs tcpserver, danted, socat, python3, pgrep.
# Everything started here is stopped by PID.
set -euo pipefail

cd "$(dirname "$0")/.."
top=$(pwd)
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-16}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
BULK_MIB=${BULK_MIB:-512}
TTFB_N=${TTFB_N:-500}

log() { printf 'rsockd-bench: %s\n' "$*" >&2; }
for p in tcpserver danted socat python3; do
    command -v "$p" >/dev/null 2>&1 || [ -x "/usr/sbin/$p" ] || { log "fatal: $p is missing"; exit 111; }
done
PATH=$PATH:/usr/sbin
if ! command -v cargo >/dev/null 2>&1 && [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
    PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi

PROFILE=${PROFILE:-release}
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
log "building rsockd ($PROFILE) at $commit"
if [ "$PROFILE" = release ]; then
    cargo rustc --release --locked -q -p rsockd --bin rsockd -- -C target-feature=+crt-static
    dir=release
else
    cargo build --profile "$PROFILE" --locked -q -p rsockd
    [ "$PROFILE" = dev ] && dir=debug || dir=$PROFILE
fi
bin=${CARGO_TARGET_DIR:-$top/target}/$dir

work=$(mktemp -d /tmp/rsockd-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    [ "${KEEP:-0}" = 1 ] && log "kept $work" || rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null && return 0; sleep 0.05; done; log "fatal: nothing on port $1"; exit 111; }

# The targets: one that writes 6 bytes and closes, one that writes
# BULK_MIB MiB and closes.
cat >"$work/target.py" <<'PY'
import asyncio, sys
small_port, bulk_port, mib = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
chunk = b"x" * (1 << 20)
async def small(r, w):
    w.write(b"hello\n")
    await w.drain()
    w.close()
async def bulk(r, w):
    for _ in range(mib):
        w.write(chunk)
        await w.drain()
    w.close()
async def main():
    a = await asyncio.start_server(small, "127.0.0.1", small_port, backlog=1024)
    b = await asyncio.start_server(bulk, "127.0.0.1", bulk_port, backlog=64)
    await asyncio.gather(a.serve_forever(), b.serve_forever())
asyncio.run(main())
PY

# The client: SOCKS5 (no auth) CONNECT to 127.0.0.1:PORT through a proxy,
# or a plain connection when the proxy port is 0.
cat >"$work/client.py" <<'PY'
import asyncio, socket, statistics, struct, sys, time
mode, proxy, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def open_conn():
    s = socket.create_connection(("127.0.0.1", proxy if proxy else port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if proxy:
        s.sendall(b"\x05\x01\x00")
        assert s.recv(2) == b"\x05\x00"
        s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", port))
        r = b""
        while len(r) < 10:
            d = s.recv(10 - len(r))
            assert d, "proxy closed"
            r += d
        assert r[1] == 0, "refused: %r" % r
    return s
def drain(s):
    n = 0
    while True:
        d = s.recv(1 << 20)
        if not d:
            return n
        n += len(d)
if mode == "rate":
    clients, secs = int(sys.argv[4]), float(sys.argv[5])
    import threading
    done = [0] * clients
    failed = [0] * clients
    stop = time.monotonic() + secs
    def worker(i):
        while time.monotonic() < stop:
            try:
                s = open_conn()
                ok = drain(s) == 6
                s.close()
            except (OSError, AssertionError):
                ok = False
            if ok:
                done[i] += 1
            else:
                failed[i] += 1
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.monotonic()
    [t.start() for t in ts]
    [t.join() for t in ts]
    print("%.0f %d" % (sum(done) / (time.monotonic() - t0), sum(failed)))
elif mode == "bulk":
    t0 = time.monotonic()
    s = open_conn()
    n = drain(s)
    dt = time.monotonic() - t0
    print("%.1f" % (n / dt / (1 << 20)))
elif mode == "ttfb":
    n = int(sys.argv[4])
    v = []
    failed = 0
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            s = open_conn()
            d = s.recv(1)
            s.close()
        except (OSError, AssertionError):
            d = b""
        if d:
            v.append(time.perf_counter() - t0)
        else:
            failed += 1
    v.sort()
    print("%.1f %.1f %d" % (v[len(v) // 2] * 1e6, v[int(len(v) * 0.99)] * 1e6, failed))
PY

small=$(free_port); bulkp=$(free_port)
python3 "$work/target.py" "$small" "$bulkp" "$BULK_MIB" 2>"$work/target.log" &
pids+=($!)
wait_port "$small"; wait_port "$bulkp"

# rsockd: B direct, A through B.
printf 'permit 127.0.0.0/8\n' >"$work/sockd.conf"
# start_tcpserver PORTFILE ARGS...: sets $port (tcpserver -1 prints it).
start_tcpserver() {
    local pf=$1; shift
    mkfifo "$pf"
    tcpserver -1 -R -H -l0 -c 200 -b 256 127.0.0.1 0 "$@" >"$pf" 2>>"$work/rsockd.log" &
    pids+=($!); last=$!
    read -r port <"$pf"
}
start_tcpserver "$work/b.port" "$bin/rsockd" -f "$work/sockd.conf" -F "$work/none.conf"
rs_b=$port; rs_b_pid=$last
echo "sockd @=socks5://127.0.0.1:$rs_b ALL" >"$work/a-socks.conf"
start_tcpserver "$work/a.port" "$bin/rsockd" -f "$work/sockd.conf" -F "$work/a-socks.conf"
rs_a=$port; rs_a_pid=$last

# rsockd's listener mode: BL direct, AL through BL. start_listener PORTFILE
# ARGS...: sets $port once rsockd said it listens (-N 3, a newline on fd 3).
start_listener() {
    local pf=$1 p; shift
    p=$(free_port)
    mkfifo "$pf"
    "$bin/rsockd" -L "127.0.0.1:$p" -n 200 -N 3 "$@" 3>"$pf" 2>>"$work/rsockd-listen.log" &
    pids+=($!); last=$!
    read -r _ <"$pf"
    port=$p
}
start_listener "$work/bl.ready" -f "$work/sockd.conf" -F "$work/none.conf"
rl_b=$port; rl_b_pid=$last
echo "sockd @=socks5://127.0.0.1:$rl_b ALL" >"$work/al-socks.conf"
start_listener "$work/al.ready" -f "$work/sockd.conf" -F "$work/al-socks.conf"
rl_a=$port; rl_a_pid=$last

# The floor of the per-connection model: tcpserver running /bin/echo
# (its 6 bytes, like the target's), no SOCKS at all.
start_tcpserver "$work/floor.port" /bin/echo hello
floor=$port

# danted: B direct, A through B (route via socks_v5).
dante_conf() { # port [upstream]
    cat <<EOF
logoutput: $work/danted-$1.log
internal: 127.0.0.1 port = $1
external: 127.0.0.1
clientmethod: none
socksmethod: none
user.unprivileged: nobody
client pass {
  from: 127.0.0.0/8 to: 0.0.0.0/0
}
socks pass {
  from: 0.0.0.0/0 to: 0.0.0.0/0
}
EOF
    if [ -n "${2:-}" ]; then
        printf 'route {\n  from: 0.0.0.0/0 to: 0.0.0.0/0 via: 127.0.0.1 port = %s\n  proxyprotocol: socks_v5\n  command: connect\n}\n' "$2"
    fi
}
da_b=$(free_port); da_a=$(free_port)
dante_conf "$da_b" >"$work/danted-b.conf"
dante_conf "$da_a" "$da_b" >"$work/danted-a.conf"
danted -f "$work/danted-b.conf" -p "$work/danted-b.pid" 2>>"$work/danted.log" &
pids+=($!); da_b_pid=$!
danted -f "$work/danted-a.conf" -p "$work/danted-a.pid" 2>>"$work/danted.log" &
pids+=($!); da_a_pid=$!
wait_port "$da_b"; wait_port "$da_a"

# socat: two plain relays in a row to the bulk target.
so_b=$(free_port); so_a=$(free_port)
socat "TCP-LISTEN:$so_b,bind=127.0.0.1,fork,reuseaddr" "TCP:127.0.0.1:$bulkp" 2>>"$work/socat.log" &
pids+=($!)
socat "TCP-LISTEN:$so_a,bind=127.0.0.1,fork,reuseaddr" "TCP:127.0.0.1:$so_b" 2>>"$work/socat.log" &
pids+=($!)
wait_port "$so_b"; wait_port "$so_a"

client() { python3 "$work/client.py" "$@"; }
median() { sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

declare -A res
declare -A fails
# ticks PID...: CPU (user + system clock ticks) of these processes, of
# their children that have ended (cutime, cstime) and of those still running.
ticks() {
    local sum=0 p c t
    for p in "$@"; do
        for c in "$p" $(pgrep -P "$p" || true); do
            t=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$c/stat" 2>/dev/null || true)
            sum=$(( sum + ${t:-0} ))
        done
    done
    echo "$sum"
}
hz=$(getconf CLK_TCK)
rate() { # key proxy pid... (the proxy's processes, for its CPU per connection)
    local key=$1 proxy=$2 v f t0 t1
    shift 2
    t0=$(ticks "$@")
    read -r v f <<<"$(client rate "$proxy" "$small" "$CLIENTS" "$SECONDS_PER_RUN")"
    t1=$(ticks "$@")
    res[$key]+="$v "; fails[$key]=$(( ${fails[$key]:-0} + f ))
    res[cpu_$key]+="$(awk -v t=$((t1 - t0)) -v hz="$hz" -v n="$v" -v s="$SECONDS_PER_RUN" \
        'BEGIN { printf "%.0f", t / hz * 1e6 / (n * s) }') "
}
ttfb() { # key proxy
    local p50 p99 f
    read -r p50 p99 f <<<"$(client ttfb "$2" "$small" "$TTFB_N")"
    res[ttfb50_$1]+="$p50 "; res[ttfb99_$1]+="$p99 "; fails[ttfb_$1]=$(( ${fails[ttfb_$1]:-0} + f ))
}
for r in $(seq "$ROUNDS"); do
    log "round $r/$ROUNDS"
    read -r v _ <<<"$(client rate 0 "$floor" "$CLIENTS" "$SECONDS_PER_RUN")"
    res[rate_floor]+="$v "
    rate rate_rs_direct "$rs_b" "$rs_b_pid"
    rate rate_rl_direct "$rl_b" "$rl_b_pid"
    rate rate_da_direct "$da_b" "$da_b_pid"
    rate rate_rs_hop "$rs_a" "$rs_a_pid" "$rs_b_pid"
    rate rate_rl_hop "$rl_a" "$rl_a_pid" "$rl_b_pid"
    rate rate_da_hop "$da_a" "$da_a_pid" "$da_b_pid"
    res[bulk_rs]+="$(client bulk "$rs_a" "$bulkp") "
    res[bulk_rl]+="$(client bulk "$rl_a" "$bulkp") "
    res[bulk_da]+="$(client bulk "$da_a" "$bulkp") "
    res[bulk_so]+="$(client bulk 0 "$so_a") "
    ttfb rs "$rs_a"
    ttfb rl "$rl_a"
    ttfb da "$da_a"
done
m() { tr ' ' '\n' <<<"${res[$1]}" | grep . | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo
echo "rsockd-bench: $(date -u +%Y-%m-%d) $commit profile $PROFILE, $(nproc) CPUs, rounds $ROUNDS, medians"
echo
echo "| figure | rsockd (tcpserver) | rsockd -L | danted | socat | rsockd / danted | rsockd -L / danted | rsockd -L / socat |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
echo "| connections/s, $CLIENTS clients, direct | $(m rate_rs_direct) | $(m rate_rl_direct) | $(m rate_da_direct) | | $(ratio "$(m rate_rs_direct)" "$(m rate_da_direct)")× | $(ratio "$(m rate_rl_direct)" "$(m rate_da_direct)")× | |"
echo "| connections/s, $CLIENTS clients, one hop | $(m rate_rs_hop) | $(m rate_rl_hop) | $(m rate_da_hop) | | $(ratio "$(m rate_rs_hop)" "$(m rate_da_hop)")× | $(ratio "$(m rate_rl_hop)" "$(m rate_da_hop)")× | |"
echo "| proxy CPU per connection, direct (µs) | $(m cpu_rate_rs_direct) | $(m cpu_rate_rl_direct) | $(m cpu_rate_da_direct) | | | | |"
echo "| proxy CPU per connection, one hop, both proxies (µs) | $(m cpu_rate_rs_hop) | $(m cpu_rate_rl_hop) | $(m cpu_rate_da_hop) | | | | |"
echo "| bulk MiB/s, one hop ($BULK_MIB MiB) | $(m bulk_rs) | $(m bulk_rl) | $(m bulk_da) | $(m bulk_so) | $(ratio "$(m bulk_rs)" "$(m bulk_da)")× | $(ratio "$(m bulk_rl)" "$(m bulk_da)")× | $(ratio "$(m bulk_rl)" "$(m bulk_so)")× |"
echo "| connections/s, $CLIENTS clients, tcpserver + /bin/echo (no SOCKS: the floor of a process per connection) | $(m rate_floor) | | | | | | |"
echo "| time to first byte p50, one hop (µs) | $(m ttfb50_rs) | $(m ttfb50_rl) | $(m ttfb50_da) | | | | |"
echo "| time to first byte p99, one hop (µs) | $(m ttfb99_rs) | $(m ttfb99_rl) | $(m ttfb99_da) | | | | |"
echo
echo "raw: $(for k in "${!res[@]}"; do printf '%s=[%s] ' "$k" "${res[$k]% }"; done)"
echo "failed connections (not counted above): $(for k in "${!fails[@]}"; do printf '%s=%s ' "$k" "${fails[$k]}"; done)"
errors=$(grep -c 'outcome=' "$work/rsockd.log" || true)
bad=$(grep 'outcome=' "$work/rsockd.log" | grep -vc 'outcome=ok' || true)
echo "rsockd log lines: $errors, not ok: $bad"
errors=$(grep -c 'outcome=' "$work/rsockd-listen.log" || true)
bad=$(grep 'outcome=' "$work/rsockd-listen.log" | grep -vc 'outcome=ok' || true)
echo "rsockd -L log lines: $errors, not ok: $bad"
