#!/usr/bin/env bash
# bench/qrelay.sh: qrelay (connect to a qmqp-sink) against the same load
# straight to qmqp-sink, in one run (issue 7). Run from the repository root:
#
#   bench/qrelay.sh
#
# Measures:
#   1. messages/s with postfix's qmqp-source at 1 and 16 concurrent sessions,
#      through qrelay and straight to qmqp-sink (target: relay >= 0.5x direct
#      at 16);
#   2. the latency of one message at concurrency 1 (p50 and p99 over
#      $LAT_MSGS sequential requests from a small Python client, through
#      qrelay and direct; target: added p50 < 1 ms);
#   3. qrelay's RSS with 1000 idle connections (each has sent the first
#      bytes of a request; measured within qrelay's 5 s idle timeout;
#      target < 64 MiB);
#   4. qrelay's peak RSS (VmHWM) around one 16 MiB message with
#      max_size = 16 MiB (target < 3 x max_size = 48 MiB).
# Each of 1 and 2 runs $ROUNDS times, alternating direct and relay; the table
# shows medians. Every message must be accepted (qmqp-source exits 0, the
# client checks each reply).
#
# Environment: ROUNDS (3), MSGS (4000 per qmqp-source run), LAT_MSGS (2000),
# MSGLEN (1024 bytes), PROFILE (release; dev to try the script quickly),
# KEEP (1: keep the work directory).
# Needs qmqp-sink and qmqp-source (tests/run unpacks them from the postfix
# package) and python3. Everything started here is stopped by PID.
set -euo pipefail

cd "$(dirname "$0")/.."
top=$(pwd)
ROUNDS=${ROUNDS:-3}
MSGS=${MSGS:-4000}
LAT_MSGS=${LAT_MSGS:-2000}
MSGLEN=${MSGLEN:-1024}

log() { printf 'qrelay-bench: %s\n' "$*" >&2; }
for p in qmqp-sink qmqp-source python3; do
    command -v "$p" >/dev/null 2>&1 || { log "fatal: $p is missing (tests/run unpacks qmqp-sink/qmqp-source)"; exit 111; }
done
if ! command -v cargo >/dev/null 2>&1 && [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
    PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi

PROFILE=${PROFILE:-release}
log "building qrelay ($PROFILE)"
cargo build --profile "$PROFILE" --locked -q -p qrelay
[ "$PROFILE" = dev ] && dir=debug || dir=$PROFILE
bin=${CARGO_TARGET_DIR:-$top/target}/$dir

work=$(mktemp -d /tmp/qrelay-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    [ "${KEEP:-0}" = 1 ] && log "kept $work" || rm -rf "$work"
}
trap cleanup EXIT INT TERM

qmqp-sink "unix:$work/sink.sock" 256 >/dev/null 2>&1 &
pids+=($!)
cat >"$work/config.lua" <<LUA
sink = qmqp_resolve('$work/sink.sock')
qmqp_listen('$work/qrelay.sock', function(m)
  m.account = 'bench'
  return m:connect(sink)
end)
LUA
mkfifo "$work/ready"
"$bin/qrelay" --config "$work/config.lua" --notify-fd 3 3>"$work/ready" 2>"$work/qrelay.log" &
qrelay_pid=$!
pids+=($qrelay_pid)
read -r _ <"$work/ready"
for _ in $(seq 100); do [ -S "$work/sink.sock" ] && break; sleep 0.05; done

now() { date +%s.%N; }
# rate SOCKET SESSIONS: messages/s of one qmqp-source run.
rate() {
    local t0 t1
    t0=$(now)
    qmqp-source -s "$2" -m "$MSGS" -l "$MSGLEN" -f a@example.org -t b@example.org "unix:$1" >/dev/null
    t1=$(now)
    python3 -c "print(round($MSGS / ($t1 - $t0)))"
}
median() { python3 -c 'import sys, statistics; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

declare -A R
for conc in 1 16; do
    d=(); r=()
    for round in $(seq "$ROUNDS"); do
        d+=("$(rate "$work/sink.sock" "$conc")")
        r+=("$(rate "$work/qrelay.sock" "$conc")")
    done
    R[direct$conc]=$(median "${d[@]}")
    R[relay$conc]=$(median "${r[@]}")
    log "concurrency $conc: direct ${d[*]} msg/s, relay ${r[*]} msg/s"
done

cat >"$work/client.py" <<'PY'
import socket, sys, time, statistics, os

def netstring(b):
    return str(len(b)).encode() + b":" + b + b","

def request(msglen):
    msg = (b"Subject: bench\n\n" + b"x" * msglen)[:msglen]
    return netstring(netstring(msg) + netstring(b"a@example.org") + netstring(b"b@example.org"))

def once(path, req):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(req)
    got = b""
    while True:
        b = s.recv(512)
        if not b:
            break
        got += b
    s.close()
    if b":K" not in got:
        sys.exit("not accepted: %r" % got)

def rss(pid, field):
    for line in open("/proc/%d/status" % pid):
        if line.startswith(field + ":"):
            return int(line.split()[1])  # KiB

mode = sys.argv[1]
if mode == "latency":
    path, n, msglen = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    req = request(msglen)
    for _ in range(50):
        once(path, req)
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        once(path, req)
        t.append(time.perf_counter() - t0)
    t.sort()
    print("%.1f %.1f" % (t[len(t) // 2] * 1e6, t[int(len(t) * 0.99)] * 1e6))
elif mode == "idle":
    path, pid, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    before = rss(pid, "VmRSS")
    conns = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        s.sendall(b"1")
        conns.append(s)
    time.sleep(1.0)  # let qrelay accept and read them all (well inside its 5 s idle timeout)
    during = rss(pid, "VmRSS")
    print(before, during)
elif mode == "big":
    path, pid, size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    before = rss(pid, "VmHWM")
    once(path, request(size))
    print(before, rss(pid, "VmHWM"), rss(pid, "VmRSS"))
PY

ld=(); lr=(); ld99=(); lr99=()
for round in $(seq "$ROUNDS"); do
    read -r p50 p99 < <(python3 "$work/client.py" latency "$work/sink.sock" "$LAT_MSGS" "$MSGLEN"); ld+=("$p50"); ld99+=("$p99")
    read -r p50 p99 < <(python3 "$work/client.py" latency "$work/qrelay.sock" "$LAT_MSGS" "$MSGLEN"); lr+=("$p50"); lr99+=("$p99")
done
log "latency p50 (us): direct ${ld[*]}, relay ${lr[*]}"

# The big message on a fresh qrelay (VmHWM is the peak since its start),
# then the idle connections on the same one.
kill "$qrelay_pid"; wait "$qrelay_pid" 2>/dev/null || true
"$bin/qrelay" --config "$work/config.lua" --notify-fd 3 3>"$work/ready" 2>>"$work/qrelay.log" &
qrelay_pid=$!
pids+=($qrelay_pid)
read -r _ <"$work/ready"
read -r big_hwm_before big_hwm big_rss_after < <(python3 "$work/client.py" big "$work/qrelay.sock" "$qrelay_pid" $((16 * 1024 * 1024 - 64)))
read -r idle_before idle_during < <(python3 "$work/client.py" idle "$work/qrelay.sock" "$qrelay_pid" 1000)

if grep -v 'reply=K' "$work/qrelay.log" | grep -v 'no request' | grep -q .; then
    log "qrelay logged failures:"; grep -v 'reply=K' "$work/qrelay.log" | grep -v 'no request' | head >&2
    exit 1
fi

mib() { python3 -c "print(round($1 / 1024, 1))"; }
cat <<TABLE
| figure | direct to qmqp-sink | through qrelay | ratio / added | target |
|---|---|---|---|---|
| messages/s, 1 session | ${R[direct1]} | ${R[relay1]} | $(python3 -c "print(round(${R[relay1]} / ${R[direct1]}, 2))")x | |
| messages/s, 16 sessions | ${R[direct16]} | ${R[relay16]} | $(python3 -c "print(round(${R[relay16]} / ${R[direct16]}, 2))")x | >= 0.5x |
| latency p50, 1 client (us) | $(median "${ld[@]}") | $(median "${lr[@]}") | +$(python3 -c "print(round($(median "${lr[@]}") - $(median "${ld[@]}"), 1))") us | < +1000 us |
| latency p99, 1 client (us) | $(median "${ld99[@]}") | $(median "${lr99[@]}") | | |
| qrelay peak RSS before / after one 16 MiB message (MiB) | | $(mib "$big_hwm_before") / $(mib "$big_hwm") | | < 48 |
| qrelay RSS before / with 1000 idle connections (MiB) | | $(mib "$idle_before") / $(mib "$idle_during") | | < 64 |
TABLE
echo
echo "(ROUNDS=$ROUNDS MSGS=$MSGS LAT_MSGS=$LAT_MSGS MSGLEN=$MSGLEN; medians; $(nproc) CPUs; commit $(git rev-parse --short HEAD))"
