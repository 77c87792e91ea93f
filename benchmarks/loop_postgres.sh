#!/usr/bin/env bash
# loop_postgres.sh - the annotation loop (benchmarks/annotation_loop.py) on PostgreSQL with 1..N
# uvicorn worker processes: does the loop scale with cores? (loopback only; throwaway cluster)
#
#   benchmarks/loop_postgres.sh                    # WORKERS="1 2", C=32, 30 s each
#   WORKERS="1 2 4" CONCS="8 32" DURATION=20 benchmarks/loop_postgres.sh
#   WAITS=1 WORKERS=2 DURATION=20 benchmarks/loop_postgres.sh   # + what backends wait for
#   SPAMMERS=8 WORKERS=2 DURATION=30 benchmarks/loop_postgres.sh  # removal for harm on: the first
#     8 annotators answer at random and are removed mid-load (each removal re-runs its page
#     alone, storage/locks.py); the others answer the phantoms' true label 90 % of the time
#   # before/after in one run: a baseline commit's source beside this tree's, rows alternating,
#   # and this tree on SQLite (one worker: SQLite refuses more) on the same job:
#   git archive main src | tar -x -C /tmp/base
#   TREES="main=/tmp/base/src this=$PWD/src" SQLITE=1 ROUNDS=2 WORKERS=2 DURATION=15 \
#     benchmarks/loop_postgres.sh
#
# A throwaway PostgreSQL cluster (initdb/pg_ctl as the `postgres` user when run as root, like
# tests/conftest.py's PostgresCluster) on a free port, listening on 127.0.0.1 only. Durability:
# fsync on, synchronous_commit=off (a crash may lose the last few hundred ms of commits but never
# corrupts; the closest match to SQLite WAL + synchronous=NORMAL that cxrlabel uses by default).
# The job is prepared once into a template database; every run gets a fresh copy of it
# (CREATE DATABASE ... TEMPLATE) and a fresh server. Results: $RES/postgres.jsonl.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
CXR="${CXR:-$ROOT/.venv/bin/cxrlabel}"
WORKERS="${WORKERS:-1 2}"
CONCS="${CONCS:-32}"
DURATION="${DURATION:-30}"
IMAGES="${IMAGES:-20000}"
GOLD="${GOLD:-1500}"
RES="${RES:-/tmp/loop-postgres}"
TREES="${TREES:-this=$ROOT/src}"  # name=source dir: the server runs with PYTHONPATH=that dir
SQLITE="${SQLITE:-0}"              # 1: also a SQLite row (this tree, 1 worker) in each round
ROUNDS="${ROUNDS:-1}"              # each round runs every row once (trees alternate)
SPAMMERS="${SPAMMERS:-0}"          # >0: job keeps removal for harm; that many random answerers
HARM_ARGS=(); LOOP_ARGS=()
if [ "$SPAMMERS" -gt 0 ]; then HARM_ARGS=(--harm); LOOP_ARGS=(--spammers "$SPAMMERS"); fi
mkdir -p "$RES"
PGBIN="${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}"
[ -x "$PGBIN/initdb" ] || { echo "no PostgreSQL server binaries (initdb) found" >&2; exit 1; }

log() { echo "[pg] $(date +%T) $*" >&2; }
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }

PGDIR=$(mktemp -d /tmp/cxrlabel-pgbench.XXXXXX)
PORT=$(free_port)
[ "$(id -u)" = 0 ] && chown postgres "$PGDIR"
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  as_pg "$PGBIN/pg_ctl -D $PGDIR/data -m immediate stop" >/dev/null 2>&1 || true
  rm -rf "$PGDIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

as_pg "$PGBIN/initdb -D $PGDIR/data -A trust -U postgres -E UTF8" >/dev/null
as_pg "$PGBIN/pg_ctl -D $PGDIR/data -l $PGDIR/log -w start -o \"-p $PORT -k $PGDIR \
  -c listen_addresses=127.0.0.1 -c max_connections=300 -c synchronous_commit=off \
  -c shared_buffers=256MB\"" >/dev/null
PGURL="postgresql+psycopg://postgres@127.0.0.1:$PORT"
psql_c() { "$PY" - "$PORT" "$1" <<'EOF'
import sys, psycopg
with psycopg.connect(f"host=127.0.0.1 port={sys.argv[1]} user=postgres dbname=postgres",
                     autocommit=True) as c:
    c.execute(sys.argv[2])
EOF
}
log "PostgreSQL on 127.0.0.1:$PORT ($PGDIR)"

DATA="$RES/data"   # renditions (shared, read-only) + secret key
rm -rf "$DATA"; mkdir -p "$DATA"
psql_c "CREATE DATABASE bench_template"
log "preparing the job ($IMAGES images, $GOLD gold) in the template database (not timed)"
PYTHONPATH="$ROOT/src" "$PY" "$HERE/_loop_setup.py" --data-dir "$DATA" --db "$PGURL/bench_template" \
  --images "$IMAGES" --gold "$GOLD" "${HARM_ARGS[@]}"
# Planner statistics for the bulk-loaded tables (as after ingest; autovacuum would get there
# later): without them the first claim queries of a run were planned blind. Copied with the
# template into every run's database.
"$PY" - "$PORT" <<'EOF'
import sys, psycopg
with psycopg.connect(f"host=127.0.0.1 port={sys.argv[1]} user=postgres dbname=bench_template",
                     autocommit=True) as c:
    c.execute("ANALYZE")
EOF

pg_row() {  # tree name, source dir, workers, C
  local name=$1 src=$2 w=$3 c=$4 db port spid
  run=$((run + 1)); db="bench_run_$run"
  psql_c "CREATE DATABASE $db TEMPLATE bench_template"
  port=$(free_port)
  (cd "$ROOT" && PYTHONPATH="$src" exec timeout 1800 "$CXR" --data-dir "$DATA" \
      --db "$PGURL/$db" serve --port "$port" --workers "$w" --no-access-log \
      >"$RES/server-$name-w$w-c$c.log" 2>&1) &
  SERVER_PID=$!
  wait_up "$port"
  spid=$(pgrep -P "$SERVER_PID" | head -1 || true)
  log "$name: postgres workers=$w C=$c: server pid $spid, load $(cut -d' ' -f1-3 /proc/loadavg)"
  if [ "${WAITS:-0}" = 1 ]; then  # what the backends wait for, sampled mid-run
    (sleep 8; "$PY" "$HERE/_pg_waits.py" --port "$PORT" --db "$db" \
       --seconds $((${DURATION%.*} / 2)) >"$RES/waits-$name-w$w-c$c.txt" 2>&1) &
  fi
  # --data-dir: the server's secret key, to see the test questions under each annotator's aliases
  loop "postgres workers=$w tree=$name" "$port" "$RES/loop-$name-w$w-c$c.log" --db "$PGURL/$db" \
    --data-dir "$DATA" --server-pid "$spid"
  if [ -f "$RES/waits-$name-w$w-c$c.txt" ]; then cat "$RES/waits-$name-w$w-c$c.txt" >&2; fi
  stop_server
}

sqlite_row() {  # C: this tree on SQLite, a fresh copy of the prepared data dir
  local c=$1 dir="$RES/sqlite-run" port spid
  rm -rf "$dir"; cp -al "$SQLITE_TEMPLATE" "$dir"
  cp --remove-destination "$SQLITE_TEMPLATE/cxrlabel.sqlite3" "$dir/cxrlabel.sqlite3"
  port=$(free_port)
  (cd "$ROOT" && PYTHONPATH="$ROOT/src" exec timeout 1800 "$CXR" --data-dir "$dir" serve \
      --port "$port" --no-access-log >"$RES/server-sqlite-c$c.log" 2>&1) &
  SERVER_PID=$!
  wait_up "$port"
  spid=$(pgrep -P "$SERVER_PID" | head -1 || true)
  log "sqlite C=$c: server pid ${spid:-$SERVER_PID}, load $(cut -d' ' -f1-3 /proc/loadavg)"
  loop "sqlite workers=1 tree=this" "$port" "$RES/loop-sqlite-c$c.log" --data-dir "$dir" \
    --server-pid "${spid:-$SERVER_PID}"
  stop_server
}

wait_up() {
  for _ in $(seq 1 240); do
    curl -s -o /dev/null "http://127.0.0.1:$1/api/openapi.json" && return; sleep 0.5
  done
}
loop() {  # label, port, log file, extra args
  local label=$1 port=$2 out=$3; shift 3
  (cd "$ROOT" && PYTHONPATH="$ROOT/src" timeout $((${DURATION%.*} + 400)) \
      "$PY" "$HERE/annotation_loop.py" \
      --url "http://127.0.0.1:$port" --annotators "$c" --seconds "$DURATION" \
      --label "$label" --json-out "$RES/postgres.jsonl" "${LOOP_ARGS[@]}" "$@") 2>"$out" \
      || log "run exited non-zero (see $out)"
  tail -6 "$out" >&2
}
stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

if [ "$SQLITE" = 1 ]; then
  SQLITE_TEMPLATE="$RES/sqlite-template"
  rm -rf "$SQLITE_TEMPLATE"
  log "preparing the same job on SQLite (not timed)"
  PYTHONPATH="$ROOT/src" "$PY" "$HERE/_loop_setup.py" --data-dir "$SQLITE_TEMPLATE" \
    --images "$IMAGES" --gold "$GOLD" "${HARM_ARGS[@]}"
fi

run=0
for _round in $(seq 1 "$ROUNDS"); do
  for c in $CONCS; do
    for w in $WORKERS; do
      for tree in $TREES; do
        pg_row "${tree%%=*}" "${tree#*=}" "$w" "$c"
      done
    done
    if [ "$SQLITE" = 1 ]; then sqlite_row "$c"; fi
  done
done
