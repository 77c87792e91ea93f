#!/usr/bin/env bash
# vs_labelstudio.sh - the annotation loop of cxrlabel and of Label Studio 1.23.2, side by side,
# on this machine, in one go, at C = 1 8 32 concurrent annotators (loopback only).
#
#   benchmarks/vs_labelstudio.sh                       # C = 1 8 32, 30 s each, both servers
#   CONCS="8" DURATION=20 LS_WSGI=1 benchmarks/vs_labelstudio.sh
#
# For every C and system a FRESH server and database:
#   cxrlabel  : `cxrlabel serve --no-access-log` (uvicorn, 1 process, SQLite WAL) on a copy of a
#               prepared data dir
#               (benchmarks/_loop_setup.py: bundled job spec, $IMAGES work images, $GOLD test
#               questions), driven by benchmarks/annotation_loop.py: next page (10 images, 1 a
#               hidden test question) -> GET its 10 renditions (signed URLs) -> submit 10
#               answers.
#   LS        : ../shared/peers/labelstudio/bench.py against Label Studio's default server
#               (`label-studio start` = Django runserver, SQLite, with run_ls.sh's environment;
#               the data dir is initialised once and copied per run, because `label-studio init`
#               takes minutes on a busy 2-core machine): next task -> submit 1 annotation.
#               It does not fetch images (it measures the API loop only); we do.
#   LS (WSGI) : with LS_WSGI=1 also Label Studio under gunicorn with 2 x cores sync workers, as
#               its production image runs it under uWSGI (needs `pip install gunicorn` in the
#               LS virtualenv; still SQLite: the pip package's default).
# A judgment is one answer to one image: LS does one task per loop, cxrlabel a page of 10, so
# the comparison is judgments/s (LS: loops/s; cxrlabel: 10 x loops/s), and latency per call.
#
# Needs: /tmp/lsenv (python3 -m venv /tmp/lsenv && /tmp/lsenv/bin/pip install
# label-studio==1.23.2 httpx). bench.py puts the label in a project title (<= 50 chars): keep
# labels short. Results: $RES/cxrlabel.jsonl, $RES/labelstudio*.jsonl, summary.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PEER="${PEER:-$ROOT/../shared/peers/labelstudio}"
PY="${PY:-$ROOT/.venv/bin/python}"
CXR="${CXR:-$ROOT/.venv/bin/cxrlabel}"
LS_PY="${LS_VENV:-/tmp/lsenv}/bin/python"
CONCS="${CONCS:-1 8 32}"
DURATION="${DURATION:-30}"
IMAGES="${IMAGES:-20000}"
GOLD="${GOLD:-1500}"
TASKS="${TASKS:-2000}"
LS_WSGI="${LS_WSGI:-0}"
SYSTEMS="${SYSTEMS:-cxrlabel labelstudio}"
RES="${RES:-/tmp/vs-labelstudio}"
TEMPLATE="$RES/template"
mkdir -p "$RES"

log() { echo "[vs] $(date +%T) $*" >&2; }
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

CXR_PID=""; LS_PID=""
cleanup() {
  [ -n "$CXR_PID" ] && kill "$CXR_PID" 2>/dev/null || true
  [ -n "$LS_PID" ] && kill "$LS_PID" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ ! -f "$TEMPLATE/cxrlabel.sqlite3" ]; then
  log "preparing cxrlabel data ($IMAGES images, $GOLD gold) in $TEMPLATE (once, not timed)"
  rm -rf "$TEMPLATE"
  "$PY" "$HERE/_loop_setup.py" --data-dir "$TEMPLATE" --images "$IMAGES" --gold "$GOLD"
fi

run_cxrlabel() {  # C
  local c="$1" d="$RES/cxr-c$1" port
  rm -rf "$d"; mkdir -p "$d"
  cp "$TEMPLATE/cxrlabel.sqlite3" "$d/" && cp -al "$TEMPLATE/renditions" "$d/renditions"
  port=$(free_port)
  (cd "$ROOT" && exec timeout 1800 "$CXR" --data-dir "$d" serve --port "$port" --no-access-log \
      >"$d/server.log" 2>&1) &
  CXR_PID=$!
  for _ in $(seq 1 240); do
    curl -s -o /dev/null "http://127.0.0.1:$port/api/openapi.json" && break; sleep 0.5
  done
  local spid; spid=$(pgrep -P "$CXR_PID" | head -1)
  local rss_idle; rss_idle=$(awk '/^VmRSS:/{print $2}' "/proc/$spid/status")
  log "cxrlabel C=$c: server pid $spid, idle RSS $((rss_idle / 1024)) MB, load $(cut -d' ' -f1-3 /proc/loadavg)"
  (cd "$ROOT" && timeout $((${DURATION%.*} + 400)) "$PY" "$HERE/annotation_loop.py" \
      --url "http://127.0.0.1:$port" --data-dir "$d" --annotators "$c" --seconds "$DURATION" \
      --server-pid "$spid" --label "c$c" --json-out "$RES/cxrlabel.jsonl") \
      2>"$d/loop.log" || log "cxrlabel run C=$c exited non-zero (see $d/loop.log)"
  tail -6 "$d/loop.log" >&2
  kill "$CXR_PID" 2>/dev/null || true; wait "$CXR_PID" 2>/dev/null || true; CXR_PID=""
}

ls_env() {  # what run_ls.sh sets: local only, no telemetry, SQLite (the pip package default)
  export LABEL_STUDIO_BASE_DATA_DIR="$1" DJANGO_DB=sqlite DEBUG=false LOG_LEVEL=WARNING
  export SENTRY_DSN= FRONTEND_SENTRY_DSN= COLLECT_ANALYTICS=false LATEST_VERSION_CHECK=false
  export FEATURE_FLAGS_OFFLINE=true LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK=true HOST=
  export SSRF_PROTECTION_ENABLED=true LOCAL_FILES_SERVING_ENABLED=false PYTHONUNBUFFERED=1
  export http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 no_proxy=127.0.0.1,localhost
  export HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY=127.0.0.1,localhost
}
LS_TOKEN=0123456789abcdef0123456789abcdef01234567
LS_TEMPLATE="$RES/ls-template"
ls_template() {  # `label-studio init` once (its migrations take minutes on a busy machine)
  [ -f "$LS_TEMPLATE/.ready" ] && return
  rm -rf "$LS_TEMPLATE"; mkdir -p "$LS_TEMPLATE"; chmod 700 "$LS_TEMPLATE"
  log "Label Studio: init the template data dir (once, not timed)"
  ( ls_env "$LS_TEMPLATE"
    timeout 900 "${LS_VENV:-/tmp/lsenv}/bin/label-studio" init --quiet --no-browser \
      --username bench-admin@bench.local --password 'BenchAdmin-Passw0rd!' \
      --user-token "$LS_TOKEN" --enable-legacy-api-token >"$RES/ls-init.log" 2>&1 )
  touch "$LS_TEMPLATE/.ready"
}

run_ls() {  # C MODE (runserver | gunicorn): fresh copy of the data dir, one server, one run
  local c="$1" mode="$2" data port workers load spid label out
  if [ "$mode" = gunicorn ] && [ ! -x "${LS_VENV:-/tmp/lsenv}/bin/gunicorn" ]; then
    log "no gunicorn in the LS venv: the WSGI row is skipped"; return
  fi
  ls_template
  data=$(mktemp -d /tmp/ls-bench-data.XXXXXX); chmod 700 "$data"; cp -a "$LS_TEMPLATE/." "$data/"
  port=$(free_port); workers=$((2 * $(nproc)))
  if [ "$mode" = gunicorn ]; then
    ( ls_env "$data"
      export DJANGO_SETTINGS_MODULE=label_studio.core.settings.label_studio  # as server.py does
      lsdir=$("$LS_PY" -c 'import label_studio, os; print(os.path.dirname(label_studio.__file__))')
      exec timeout 1800 "${LS_VENV:-/tmp/lsenv}/bin/gunicorn" label_studio.core.wsgi:application \
        --pythonpath "$lsdir" --bind "127.0.0.1:$port" --workers "$workers" --timeout 60 \
        >"$data/server.log" 2>&1 ) &
    label="guni$workers"; out="$RES/labelstudio-wsgi.jsonl"
  else
    ( ls_env "$data"
      exec timeout 1800 "${LS_VENV:-/tmp/lsenv}/bin/label-studio" start --no-browser \
        --internal-host 127.0.0.1 --port "$port" >"$data/server.log" 2>&1 ) &
    label="rs"; out="$RES/labelstudio.jsonl"
  fi
  LS_PID=$!
  for _ in $(seq 1 900); do
    code=$(curl -s --noproxy '*' -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health" || true)
    [ "$code" = 200 ] && break
    sleep 0.5
  done
  spid=$(pgrep -P "$LS_PID" | head -1)   # the child of `timeout`: label-studio / gunicorn master
  {
    echo "BASE_URL=http://127.0.0.1:$port"; echo "TOKEN=$LS_TOKEN"; echo "PID=$LS_PID"
    echo "SERVER_PID=$spid"; echo "DATA_DIR=$data"; echo "LOG=$data/server.log"
  } >"$RES/ls-run-state.env"
  load=$(cut -d' ' -f1 /proc/loadavg)
  log "Label Studio C=$c ($mode): server pid $spid, load $load"
  timeout $((${DURATION%.*} + 600)) "$LS_PY" "$PEER/bench.py" --state "$RES/ls-run-state.env" \
      -c "$c" -d "$DURATION" -n "$TASKS" --label "$label load $load" \
      --json-out "$out" >"$RES/ls-$mode-c$c.log" 2>&1 \
      || log "LS $mode C=$c exited non-zero (see $RES/ls-$mode-c$c.log)"
  grep '^# ' "$RES/ls-$mode-c$c.log" | tail -3 >&2 || true
  kill "$LS_PID" 2>/dev/null || true; wait "$LS_PID" 2>/dev/null || true
  [ -n "$spid" ] && kill "$spid" 2>/dev/null || true
  LS_PID=""
  rm -rf -- "$data"
}

for c in $CONCS; do
  for system in $SYSTEMS; do
    case "$system" in
      cxrlabel) run_cxrlabel "$c" ;;
      labelstudio) run_ls "$c" runserver; if [ "$LS_WSGI" = 1 ]; then run_ls "$c" gunicorn; fi ;;
    esac
  done
done

"$PY" "$HERE/vs_labelstudio_table.py" "$RES"
