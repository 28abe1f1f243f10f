#!/usr/bin/env bash
# bench/remusockd.sh: remusockd against socat doing the same path without
# multiplexing, side by side in one run (issue 9). Run from the repository
# root:
#
#   bench/remusockd.sh
#
# The path: client -> front.sock -> TCP over loopback -> svc.sock, where
# svc.sock is one echo service (a Python asyncio server, so that no fork
# per connection hides the tunnel's cost) shared by both paths:
#   remusockd:  remusockd front.sock PORT1  +  remusockd -c -r 127.0.0.1 svc.sock PORT1
#   socat:      socat UNIX-LISTEN:front2.sock,fork TCP:127.0.0.1:PORT2
#               + socat TCP-LISTEN:PORT2,fork,reuseaddr UNIX-CONNECT:svc.sock
# Measures (targets from the issue):
#   1. one channel's throughput: SIZE MiB written and echoed back (>= 1.0x socat);
#   2. connections/s at 16 concurrent clients, each connect + 1 byte echoed +
#      close (>= 1.0x socat);
#   3. 1-byte request/response latency on one connection, p50 and p99 over
#      LAT_ROUNDS round trips (p50 < 100 us);
#   4. the RSS of each remusockd with 1000 idle channels (< 32 MiB each).
# Each of 1-3 runs ROUNDS times alternating the two paths; medians shown.
#   ssh -L:     ssh -L front3.sock:svc.sock to an sshd of the script's own on
#               loopback (its own host key, client key and configuration; cipher
#               SSH_CIPHER, default aes128-gcm@openssh.com), when /usr/sbin/sshd
#               exists (Debian's openssh-server; SSH=0 leaves it out). Encrypted,
#               so a reference, not a target.
#
# Environment: ROUNDS (3), SIZE (256), CONNS (4000 per run), LAT_ROUNDS
# (5000), PROFILE (release; dev to try the script quickly), KEEP (1: keep
# the work directory). Needs socat and python3. Everything started here is
# stopped by PID.
set -euo pipefail

cd "$(dirname "$0")/.."
top=$(pwd)
ROUNDS=${ROUNDS:-3}
SIZE=${SIZE:-256}
CONNS=${CONNS:-4000}
LAT_ROUNDS=${LAT_ROUNDS:-5000}
PY=/usr/bin/python3

log() { printf 'remusockd-bench: %s\n' "$*" >&2; }
for p in socat "$PY"; do
    command -v "$p" >/dev/null 2>&1 || { log "fatal: $p is missing"; exit 111; }
done
if ! command -v cargo >/dev/null 2>&1 && [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
    PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
PROFILE=${PROFILE:-release}
log "building remusockd ($PROFILE)"
cargo build --profile "$PROFILE" --locked -q -p remusockd
[ "$PROFILE" = dev ] && dir=debug || dir=$PROFILE
bin=${CARGO_TARGET_DIR:-$top/target}/$dir

work=$(mktemp -d /tmp/remusockd-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    [ "${KEEP:-0}" = 1 ] && log "kept $work" || rm -rf "$work"
}
trap cleanup EXIT INT TERM

cat >"$work/bench.py" <<'PY'
import asyncio, os, socket, statistics, sys, threading, time

def echo_server(path):
    async def handle(r, w):
        try:
            while True:
                b = await r.read(65536)
                if not b:
                    break
                w.write(b)
                await w.drain()
        except ConnectionError:
            pass
        w.close()
    async def main():
        srv = await asyncio.start_unix_server(handle, path, backlog=1024, limit=1 << 20)
        print("ready", flush=True)
        async with srv:
            await srv.serve_forever()
    asyncio.run(main())

def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect(path)
    return s

def throughput(path, mib):
    s = connect(path)
    block = os.urandom(1 << 16)
    total = mib << 20
    def writer():
        sent = 0
        while sent < total:
            s.sendall(block)
            sent += len(block)
        s.shutdown(socket.SHUT_WR)
    t0 = time.perf_counter()
    th = threading.Thread(target=writer)
    th.start()
    got = 0
    while True:
        b = s.recv(1 << 18)
        if not b:
            break
        got += len(b)
    th.join()
    dt = time.perf_counter() - t0
    assert got == total, (got, total)
    print(f"{total / dt / (1 << 20):.1f}")

def conns(path, n, par):
    per = n // par
    errors = []
    def run():
        try:
            for _ in range(per):
                s = connect(path)
                s.sendall(b"x")
                assert s.recv(1) == b"x"
                s.close()
        except Exception as e:
            errors.append(e)
    t0 = time.perf_counter()
    ts = [threading.Thread(target=run) for _ in range(par)]
    for t in ts: t.start()
    for t in ts: t.join()
    dt = time.perf_counter() - t0
    assert not errors, errors[:3]
    print(f"{per * par / dt:.0f}")

def latency(path, n):
    s = connect(path)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    ts = []
    for _ in range(200):
        s.sendall(b"x"); s.recv(1)
    for _ in range(n):
        t0 = time.perf_counter_ns()
        s.sendall(b"x")
        assert s.recv(1) == b"x"
        ts.append(time.perf_counter_ns() - t0)
    ts.sort()
    print(f"{ts[len(ts) // 2] / 1000:.1f} {ts[len(ts) * 99 // 100] / 1000:.1f}")

def idle(path, n, fifo):
    socks = []
    for _ in range(n):
        s = connect(path)
        s.sendall(b"x")
        assert s.recv(1) == b"x"
        socks.append(s)
    print("open", flush=True)
    with open(fifo) as f:
        f.read()

cmd = sys.argv[1]
if cmd == "echo": echo_server(sys.argv[2])
elif cmd == "throughput": throughput(sys.argv[2], int(sys.argv[3]))
elif cmd == "conns": conns(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
elif cmd == "latency": latency(sys.argv[2], int(sys.argv[3]))
elif cmd == "idle": idle(sys.argv[2], int(sys.argv[3]), sys.argv[4])
PY

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

mkfifo "$work/svc-ready"
"$PY" "$work/bench.py" echo "$work/svc.sock" >"$work/svc-ready" &
pids+=($!)
read -r _ <"$work/svc-ready"

p1=$(free_port)
mkfifo "$work/r1" "$work/r2"
"$bin/remusockd" -f -N 3 -b 127.0.0.1 "$work/front.sock" "$p1" 3>"$work/r1" 2>"$work/front.log" &
front_pid=$!
pids+=($front_pid)
read -r _ <"$work/r1"
"$bin/remusockd" -f -N 3 -c -r 127.0.0.1 "$work/svc.sock" "$p1" 3>"$work/r2" 2>"$work/back.log" &
back_pid=$!
pids+=($back_pid)
read -r _ <"$work/r2"

p2=$(free_port)
socat TCP-LISTEN:"$p2",bind=127.0.0.1,fork,reuseaddr UNIX-CONNECT:"$work/svc.sock" 2>/dev/null &
pids+=($!)
socat UNIX-LISTEN:"$work/front2.sock",fork,backlog=1024 TCP:127.0.0.1:"$p2",nodelay 2>/dev/null &
pids+=($!)
for _ in $(seq 100); do [ -S "$work/front2.sock" ] && break; sleep 0.05; done

paths="socat remusockd"
if [ "${SSH:-1}" = 1 ] && [ -x /usr/sbin/sshd ] && command -v ssh >/dev/null 2>&1; then
    # An sshd of our own on loopback, reached with a key of our own; the
    # account is the one running the benchmark.
    mkdir -p "$work/ssh" /run/sshd
    chmod 700 "$work/ssh"
    ssh-keygen -q -t ed25519 -N '' -f "$work/ssh/host_key"
    ssh-keygen -q -t ed25519 -N '' -f "$work/ssh/client_key"
    cp "$work/ssh/client_key.pub" "$work/ssh/authorized_keys"
    p3=$(free_port)
    cat >"$work/ssh/sshd_config" <<SSHD
ListenAddress 127.0.0.1:$p3
HostKey $work/ssh/host_key
AuthorizedKeysFile $work/ssh/authorized_keys
PidFile none
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowStreamLocalForwarding yes
StreamLocalBindUnlink yes
SSHD
    /usr/sbin/sshd -D -e -f "$work/ssh/sshd_config" 2>"$work/sshd.log" &
    pids+=($!)
    for _ in $(seq 100); do
        "$PY" -c "import socket,sys; socket.create_connection(('127.0.0.1',$p3),1)" 2>/dev/null && break
        sleep 0.05
    done
    ssh -N -p "$p3" -i "$work/ssh/client_key" -c "${SSH_CIPHER:-aes128-gcm@openssh.com}" \
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ExitOnForwardFailure=yes \
        -L "$work/front3.sock:$work/svc.sock" "$(id -un)@127.0.0.1" 2>"$work/ssh.log" &
    pids+=($!)
    for _ in $(seq 200); do [ -S "$work/front3.sock" ] && break; sleep 0.05; done
    if [ -S "$work/front3.sock" ]; then
        paths="socat remusockd ssh"
    else
        log "ssh -L did not come up (see below): left out"
        cat "$work/sshd.log" "$work/ssh.log" >&2
    fi
fi

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A res
for round in $(seq "$ROUNDS"); do
    for path in $paths; do
        case $path in
            socat) sock=$work/front2.sock ;;
            ssh) sock=$work/front3.sock ;;
            *) sock=$work/front.sock ;;
        esac
        log "round $round: $path"
        echo "$("$PY" "$work/bench.py" throughput "$sock" "$SIZE")" >>"$work/tp-$path"
        echo "$("$PY" "$work/bench.py" conns "$sock" "$CONNS" 16)" >>"$work/cps-$path"
        read -r p50 p99 < <("$PY" "$work/bench.py" latency "$sock" "$LAT_ROUNDS")
        echo "$p50" >>"$work/p50-$path"
        echo "$p99" >>"$work/p99-$path"
    done
done
for path in socat remusockd ssh; do
    for f in tp cps p50 p99; do
        res[$f-$path]=$( [ -s "$work/$f-$path" ] && median <"$work/$f-$path" || echo n/a)
    done
done

# 1000 idle channels.
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
front_before=$(rss "$front_pid")
back_before=$(rss "$back_pid")
mkfifo "$work/idle-done" "$work/idle-open"
"$PY" "$work/bench.py" idle "$work/front.sock" 1000 "$work/idle-done" >"$work/idle-open" &
idle_pid=$!
pids+=($idle_pid)
read -r _ <"$work/idle-open"
front_idle=$(rss "$front_pid")
back_idle=$(rss "$back_pid")
echo >"$work/idle-done"
wait "$idle_pid" || true

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
cat <<EOF
| figure | socat (TCP + UNIX-CONNECT) | remusockd | ratio | target | ssh -L |
|---|---:|---:|---:|---|---:|
| one channel, MiB/s (${SIZE} MiB echoed) | ${res[tp-socat]} | ${res[tp-remusockd]} | $(ratio "${res[tp-remusockd]}" "${res[tp-socat]}")× | ≥ 1.0× | ${res[tp-ssh]} |
| connections/s, 16 clients | ${res[cps-socat]} | ${res[cps-remusockd]} | $(ratio "${res[cps-remusockd]}" "${res[cps-socat]}")× | ≥ 1.0× | ${res[cps-ssh]} |
| 1-byte round trip p50, µs | ${res[p50-socat]} | ${res[p50-remusockd]} | | < 100 µs | ${res[p50-ssh]} |
| 1-byte round trip p99, µs | ${res[p99-socat]} | ${res[p99-remusockd]} | | | ${res[p99-ssh]} |
| RSS front / back before, MiB | | $(mib "$front_before") / $(mib "$back_before") | | | |
| RSS front / back with 1000 idle channels, MiB | | $(mib "$front_idle") / $(mib "$back_idle") | | < 32 MiB each | |
EOF
