#!/usr/bin/env bash
# POST /events throughput with authentication and the request log on vs off (a script, not a
# test): see docs/benchmarks.md.
#
#   bash deploy/local/bench-api.sh [SECONDS] [CONNECTIONS]     (default 20 s, 16 connections)
#
# Starts `tally serve` pinned to one core (taskset -c 0; tokio then runs one worker thread)
# writing to its own topic and ClickHouse database, and drives it from the other core with wrk
# (taskset -c 1): each request is a JSON array of 100 valid events. Two runs, same binary:
#   off: api.auth = "ingest_open", no key sent, api.request_log = false
#   on:  api.auth = "required", a key sent as `Authorization: Bearer`, api.request_log = true
# Prints requests/s, events/s, latency percentiles and the on/off ratio. The local stack must be
# up (deploy/local/stack.sh up); wrk comes from Debian (`apt-get install wrk`).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO_ROOT=$(pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
[[ $TARGET_DIR == /* ]] || TARGET_DIR=$REPO_ROOT/$TARGET_DIR
SECONDS_PER_RUN=${1:-20}
CONNECTIONS=${2:-16}
TAG=benchapi_$(date +%s)
CH=${TALLY_CLICKHOUSE__URL:-http://127.0.0.1:8123}
PORT=${TALLY_BENCH_API_PORT:-18480}
export TALLY_KAFKA__TOPIC=$TAG TALLY_KAFKA__DLQ_TOPIC=$TAG.dlq TALLY_CLICKHOUSE__DATABASE=$TAG \
  TALLY_PIPELINE__NAME=$TAG TALLY_API__LISTEN=127.0.0.1:$PORT RUST_LOG=${RUST_LOG:-warn}
command -v wrk >/dev/null || { echo "bench-api.sh: wrk not found (apt-get install wrk)" >&2; exit 1; }

cargo build --release -q
bin=$TARGET_DIR/release/tally
"$bin" migrate >/dev/null
key=$("$bin" keys create --name "$TAG" --role ingest 2>/dev/null | tail -n1)

work=$(mktemp -d)
pid=
cleanup() {
  [[ -n $pid ]] && { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
  "$bin" keys revoke "$TAG" >/dev/null 2>&1 || true
  curl -sS --data-binary "DROP DATABASE IF EXISTS $TAG" "$CH/" >/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# One request body: 100 events of the last hour, as a JSON array.
now=$(date +%s%3N)
awk -v now="$now" 'BEGIN {
  printf "["
  for (i = 0; i < 100; i++) {
    printf "%s{\"event_type\":\"page_view\",\"user_id\":\"u%d\",\"session_id\":\"s%d\",\"timestamp\":%.0f,\"metadata\":{\"path\":\"/p/%d\"}}",
      (i ? "," : ""), i % 37, i % 11, now - 3600000 + i * 1000, i
  }
  printf "]" }' >"$work/body.json"
# wrk's Lua: every request POSTs the body, with the key when one is given.
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
local f = io.open("$work/body.json", "rb"); wrk.body = f:read("*a"); f:close()
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("BENCH_KEY")
if key and key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end
LUA

run() { # label auth request_log key
  local label=$1
  TALLY_API__AUTH=$2 TALLY_API__REQUEST_LOG=$3 taskset -c 0 "$bin" serve &
  pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
  # One request by hand: the run measures accepted batches only.
  local auth=() status
  [[ -n $4 ]] && auth=(-H "Authorization: Bearer $4")
  status=$(curl -s -o "$work/first.json" -w '%{http_code}' "${auth[@]}" -H 'Content-Type: application/json' \
    --data-binary @"$work/body.json" "http://127.0.0.1:$PORT/events")
  [[ $status == 202 ]] || { echo "bench-api.sh: POST /events answered $status: $(cat "$work/first.json")" >&2; exit 1; }
  # Warm up (connections, producer), then measure.
  BENCH_KEY=$4 taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d3s -s "$work/post.lua" "http://127.0.0.1:$PORT/events" >/dev/null
  BENCH_KEY=$4 taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency \
    -s "$work/post.lua" "http://127.0.0.1:$PORT/events" >"$work/$label.txt"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  local rps non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/$label.txt")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$work/$label.txt")
  printf '%-4s %10.0f requests/s %10.0f events/s  p50 %s  p99 %s  non-2xx %s\n' "$label" "$rps" \
    "$(awk -v r="$rps" 'BEGIN {print r * 100}')" \
    "$(awk '/ 50%/ {print $2}' "$work/$label.txt")" "$(awk '/ 99%/ {print $2}' "$work/$label.txt")" \
    "${non2xx:-0}"
  echo "$rps" >"$work/$label.rps"
}

echo "== POST /events, 100 events per request, server on 1 core, ${SECONDS_PER_RUN}s x $CONNECTIONS connections"
run off ingest_open false ""
run on required true "$key"
awk -v on="$(cat "$work/on.rps")" -v off="$(cat "$work/off.rps")" \
  'BEGIN { printf "on/off: %.2f\n", on / off }'
