#!/usr/bin/env bash
# bench/qrelay-pg.sh: qrelay with a handler that looks the recipient up in
# PostgreSQL (one query per message) against the same handler without the
# lookup, in one run (issue 8). Run from the repository root:
#
#   bench/qrelay-pg.sh
#
# Measures, with postfix's qmqp-source at 16 concurrent sessions into one
# release qrelay with two listeners (same handler, with and without the
# lookup) relaying to postfix's qmqp-sink, alternating, $ROUNDS rounds:
#   1. messages/s (target: with the lookup >= 0.5x without);
#   2. the longest time a message took in qrelay (accept to reply, from
#      qrelay's log) with and without the lookup, against the slowest query
#      the server ran (pg_stat_statements' max_exec_time) (target: no message
#      delayed by more than the slowest query beyond what the plain handler
#      shows).
# PostgreSQL (Debian's postgresql package) runs from a fresh initdb in the
# work directory on a Unix socket only (as nobody when run as root).
#
# Environment: ROUNDS (3), MSGS (4000 per qmqp-source run), MSGLEN (1024),
# ROWS (10000 rows in the looked-up table), PROFILE (release; dev to try the
# script quickly), KEEP (1: keep the work directory).
# Needs qmqp-sink and qmqp-source (tests/run unpacks them from the postfix
# package), postgresql and python3. Everything started here is stopped by PID.
set -euo pipefail

cd "$(dirname "$0")/.."
top=$(pwd)
ROUNDS=${ROUNDS:-3}
MSGS=${MSGS:-4000}
MSGLEN=${MSGLEN:-1024}
ROWS=${ROWS:-10000}

log() { printf 'qrelay-pg-bench: %s\n' "$*" >&2; }
for p in qmqp-sink qmqp-source python3; do
    command -v "$p" >/dev/null 2>&1 || { log "fatal: $p is missing (tests/run unpacks qmqp-sink/qmqp-source)"; exit 111; }
done
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$pgbin/initdb" ] || { log "fatal: no PostgreSQL server (apt-get install postgresql)"; exit 111; }
if ! command -v cargo >/dev/null 2>&1 && [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
    PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi

PROFILE=${PROFILE:-release}
log "building qrelay ($PROFILE)"
cargo build --profile "$PROFILE" --locked -q -p qrelay
[ "$PROFILE" = dev ] && dir=debug || dir=$PROFILE
bin=${CARGO_TARGET_DIR:-$top/target}/$dir

work=$(mktemp -d /tmp/qrelay-pg-bench.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    # The last started first: PostgreSQL (the first) would wait for qrelay's
    # connection to end, so it goes last, with SIGINT (a fast shutdown).
    local i p
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        p=${pids[i]}
        if [ "$p" = "${pg_pid:-}" ]; then kill -INT "$p" 2>/dev/null || true; else kill "$p" 2>/dev/null || true; fi
        wait "$p" 2>/dev/null || true
    done
    [ "${KEEP:-0}" = 1 ] && log "kept $work" || rm -rf "$work"
}
trap cleanup EXIT INT TERM

# PostgreSQL, as nobody when we are root.
mkdir -m 700 "$work/pgdata"
mkdir -m 755 "$work/pgsock"
as_pg=()
if [ "$(id -u)" = 0 ]; then
    chown nobody: "$work/pgdata" "$work/pgsock"
    as_pg=(setpriv --reuid=nobody --regid="$(id -gn nobody)" --clear-groups)
fi
(cd "$work" && "${as_pg[@]}" "$pgbin/initdb" -D "$work/pgdata" -U postgres --auth=trust --no-sync -E UTF8 --locale=C >"$work/initdb.log" 2>&1)
(cd "$work" && exec "${as_pg[@]}" "$pgbin/postgres" -D "$work/pgdata" -k "$work/pgsock" -c listen_addresses= \
    -c fsync=off -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all \
    >"$work/postgres.log" 2>&1) &
pg_pid=$!
pids+=($pg_pid)
for _ in $(seq 600); do "$pgbin/pg_isready" -q -h "$work/pgsock" && break; sleep 0.05; done
psql() { "$pgbin/psql" -X -A -t -q -v ON_ERROR_STOP=1 -h "$work/pgsock" -U postgres -d postgres "$@"; }
psql -c "CREATE EXTENSION pg_stat_statements;
         CREATE SCHEMA mail;
         CREATE TABLE mail.users (address text PRIMARY KEY, action text NOT NULL);
         INSERT INTO mail.users SELECT 'user' || i || '@example.org', 'relay' FROM generate_series(1, $ROWS) i;
         INSERT INTO mail.users VALUES ('b@example.org', 'relay');
         ANALYZE mail.users;"

qmqp-sink "unix:$work/sink.sock" 256 >/dev/null 2>&1 &
pids+=($!)
cat >"$work/config.lua" <<LUA
sink = qmqp_resolve('$work/sink.sock')
db = pg:new('host=$work/pgsock user=postgres dbname=postgres', 'mail')
qmqp_listen('$work/plain.sock', function(m)
  m.account = 'plain'
  return m:connect(sink)
end)
qmqp_listen('$work/pg.sock', function(m)
  m.account = 'pg'
  local r, err = db:execute('SELECT action FROM users WHERE address = \$1', {m.recipients[1]})
  if not r then return m:reject() end
  local row = r:fetch({}, 'a')
  if not row or row.action ~= 'relay' then return m:reject() end
  return m:connect(sink)
end)
LUA
mkfifo "$work/ready"
"$bin/qrelay" --config "$work/config.lua" --notify-fd 3 3>"$work/ready" 2>"$work/qrelay.log" &
pids+=($!)
read -r _ <"$work/ready"
for _ in $(seq 100); do [ -S "$work/sink.sock" ] && grep -q 'pg: connected' "$work/qrelay.log" && break; sleep 0.05; done

now() { date +%s.%N; }
# rate SOCKET: messages/s of one qmqp-source run at 16 sessions.
rate() {
    local t0 t1
    t0=$(now)
    qmqp-source -s 16 -m "$MSGS" -l "$MSGLEN" -f a@example.org -t b@example.org "unix:$1" >/dev/null
    t1=$(now)
    python3 -c "print(round($MSGS / ($t1 - $t0)))"
}
median() { python3 -c 'import sys, statistics; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

# Warm up both (the statement cache, the sink), then forget the statistics.
qmqp-source -s 16 -m 500 -l "$MSGLEN" -f a@example.org -t b@example.org "unix:$work/plain.sock" >/dev/null
qmqp-source -s 16 -m 500 -l "$MSGLEN" -f a@example.org -t b@example.org "unix:$work/pg.sock" >/dev/null
psql -c "SELECT pg_stat_statements_reset()" >/dev/null
skip=$(wc -l <"$work/qrelay.log")
tail -n +$((skip + 1)) -F "$work/qrelay.log" 2>/dev/null >"$work/measured.log" &
tail_pid=$!
pids+=($tail_pid)

p=(); g=()
for round in $(seq "$ROUNDS"); do
    p+=("$(rate "$work/plain.sock")")
    g+=("$(rate "$work/pg.sock")")
done
log "16 sessions: plain ${p[*]} msg/s, with the lookup ${g[*]} msg/s"
sleep 0.5
kill "$tail_pid"

if grep -v 'reply=K' "$work/measured.log" | grep -v 'no request' | grep -q .; then
    log "qrelay logged failures:"; grep -v 'reply=K' "$work/measured.log" | grep -v 'no request' | head >&2
    exit 1
fi
# The longest and the 99th percentile of qrelay's per-message times (ms).
times() {
    grep "account=$1 " "$work/measured.log" | sed -n 's/.* time=\([0-9.]*\).*/\1/p' |
        python3 -c 'import sys; t = sorted(float(x) * 1000 for x in sys.stdin); print(len(t), round(t[int(len(t) * 0.99)], 1), round(t[-1], 1))'
}
read -r n_plain p99_plain max_plain < <(times plain)
read -r n_pg p99_pg max_pg < <(times pg)
read -r calls slowest mean < <(psql -F ' ' -c "SELECT sum(calls), round(max(max_exec_time)::numeric, 2), round((sum(total_exec_time) / sum(calls))::numeric, 3)
    FROM pg_stat_statements WHERE query LIKE '%FROM users WHERE address%'")

P=$(median "${p[@]}"); G=$(median "${g[@]}")
cat <<TABLE
| figure | without the lookup | with one lookup per message | ratio | target |
|---|---|---|---|---|
| messages/s, 16 sessions | $P | $G | $(python3 -c "print(round($G / $P, 2))")x | >= 0.5x |
| per-message time in qrelay, p99 (ms) | $p99_plain | $p99_pg | | |
| per-message time in qrelay, max (ms) | $max_plain | $max_pg | | max - plain max <= slowest query |
| lookups run / slowest / mean execution on the server (ms) | | $calls / $slowest / $mean | | |
TABLE
echo
echo "(ROUNDS=$ROUNDS MSGS=$MSGS MSGLEN=$MSGLEN ROWS=$ROWS; medians of the rates; $n_plain + $n_pg messages timed; $(nproc) CPUs; commit $(git rev-parse --short HEAD))"
