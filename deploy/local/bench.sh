#!/usr/bin/env bash
# End-to-end baseline benchmark (a script, not a test): see docs/benchmarks.md.
#
#   bash deploy/local/bench.sh [EVENTS]          (default 200000)
#   bash deploy/local/bench.sh import [EVENTS]   (default 1000000): `tally import` alone
#
# 1. Backfill EVENTS synthetic events (1 ms of event time apart) into a fresh topic, then start
#    `tally run` and time how long until ClickHouse holds every raw event and the final 1m
#    rollups of the backfill: pipeline throughput in events/s.
# 2. With the pipeline caught up, write single probe events (unique event type) and time until
#    the 1m rollup for the probe is queryable: produce-to-rollup delay (median of 5).
# Uses its own topic, ClickHouse database and pipeline name; the local stack must be up.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO_ROOT=$(pwd)
# Where `cargo build` puts the binary (a relative CARGO_TARGET_DIR is relative to the repo root).
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
[[ $TARGET_DIR == /* ]] || TARGET_DIR=$REPO_ROOT/$TARGET_DIR
N=${1:-200000}
TAG=bench_$(date +%s)
CH=${TALLY_CLICKHOUSE__URL:-http://127.0.0.1:8123}
BROKERS=${TALLY_KAFKA__BROKERS:-127.0.0.1:9092}
export TALLY_KAFKA__TOPIC=$TAG TALLY_KAFKA__DLQ_TOPIC=$TAG.dlq TALLY_CLICKHOUSE__DATABASE=$TAG \
  TALLY_PIPELINE__NAME=$TAG TALLY_PIPELINE__IDLE_TIMEOUT_MS=2000 RUST_LOG=${RUST_LOG:-warn}
ch() { curl -sS --data-binary "$1" "$CH/?database=$TAG"; }
now_ms() { date +%s%3N; }

# N synthetic events spread over the two days before yesterday, as JSON lines (`jsonl`) or as
# CSV with other column names (`csv`); deterministic, without event ids.
generate() {
  awk -v n="$1" -v fmt="$2" -v now="$(now_ms)" 'BEGIN {
    srand(7); split("page_view click signup purchase search", types, " ")
    start = now - now % 86400000 - 3 * 86400000; span = 2 * 86400000
    if (fmt == "csv") print "event,user,session,ts,path"
    for (i = 0; i < n; i++) {
      u = int(rand() * 10000); s = int(rand() * 3); t = types[1 + i % 5]
      ts = start + int(i * span / n)
      if (fmt == "csv") printf "%s,u%d,s%d-%d,%.0f,/p/%d\n", t, u, u, s, ts, i % 100
      else printf "{\"event_type\":\"%s\",\"user_id\":\"u%d\",\"session_id\":\"s%d-%d\",\"timestamp\":%.0f,\"metadata\":{\"path\":\"/p/%d\"}}\n", t, u, u, s, ts, i % 100
    } }'
}

cargo build --release -q
bin=$TARGET_DIR/release/tally
"$bin" migrate >/dev/null

if [[ ${1:-} == import ]]; then
  N=${2:-1000000}
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' EXIT
  generate "$N" jsonl >"$dir/events.jsonl"
  generate "$N" csv | gzip -1 >"$dir/events.csv.gz"
  echo "== tally import of $N events into $TAG (no pipeline)"
  for file in events.jsonl events.csv.gz; do
    args=("$dir/$file" --rejects "$dir/rejects.jsonl")
    [[ $file == *.csv.gz ]] && args+=(--map event_type=event --map user_id=user \
      --map session_id=session --map timestamp=ts)
    t0=$(now_ms)
    "$bin" import "${args[@]}" 2>/dev/null
    t1=$(now_ms)
    echo "$file ($(du -h "$dir/$file" | cut -f1)): $(( t1 - t0 )) ms wall ($(( N * 1000 / (t1 - t0 + 1) )) events/s)"
  done
  ch "DROP DATABASE IF EXISTS $TAG" >/dev/null
  exit 0
fi
start=$(date -u -d '-2 hours' +%Y-%m-%dT%H:00:00Z)
echo "== produce $N events (event time from $start, 1 ms apart) into $TAG"
t0=$(now_ms)
"$bin" produce --count "$N" --rate 0 --start "$start" --seed 7 --disorder-ms 2000 >/dev/null
t1=$(now_ms)
echo "produce: $N events in $(( t1 - t0 )) ms ($(( N * 1000 / (t1 - t0 + 1) )) events/s)"

echo "== pipeline: $bin run (workers=${TALLY_PIPELINE__WORKERS:-2})"
"$bin" run & pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
t2=$(now_ms)
until [ "$(ch 'SELECT count() FROM events')" -ge "$N" ] 2>/dev/null; do sleep 0.2; done
t3=$(now_ms)
echo "raw events in clickhouse: $N in $(( t3 - t2 )) ms ($(( N * 1000 / (t3 - t2 + 1) )) events/s)"
# The hour's last windows close once the watermark passes their end + grace: one event at the
# current time moves it there (the backfill alone ends 5 s of disorder bound short of it).
printf '%s|{"event_type":"bench_marker","user_id":"bench","timestamp":%s}\n' bench "$(now_ms)" \
  | kcat -P -b "$BROKERS" -t "$TAG" -K '|'
end_of_backfill="toDateTime('$(date -u -d "$start + 1 hour" '+%Y-%m-%d %H:%M:%S')', 'UTC')"
minutes=$(ch "SELECT uniqExact(toStartOfMinute(timestamp)) FROM events WHERE timestamp < $end_of_backfill")
until [ "$(ch "SELECT count() FROM rollups_product_analytics WHERE window_name = '1m' AND dimension = '' AND is_final = 1 AND window_start < $end_of_backfill")" -ge "$minutes" ] 2>/dev/null; do sleep 0.2; done
t4=$(now_ms)
echo "final 1m rollups of the backfill ($minutes windows): after $(( t4 - t2 )) ms ($(( N * 1000 / (t4 - t2 + 1) )) events/s end to end)"
sum=$(ch "SELECT sum(e) FROM (SELECT argMax(events, version) AS e FROM rollups_product_analytics WHERE window_name = '1h' AND dimension = '' AND window_start < $end_of_backfill GROUP BY window_start)")
echo "check: 1h rollups of the backfill sum to $sum events (raw: $(ch 'SELECT count() FROM events FINAL') incl. 1 marker, produced: $N)"

echo "== produce-to-rollup delay (5 probes, pipeline caught up)"
delays=()
for i in 1 2 3 4 5; do
  probe="probe_${i}_$RANDOM"
  ts=$(now_ms)
  printf '%s|{"event_type":"%s","user_id":"bench","timestamp":%s}\n' bench "$probe" "$ts" \
    | kcat -P -b "$BROKERS" -t "$TAG" -K '|'
  until [ "$(ch "SELECT count() FROM rollups_product_analytics WHERE window_name = '1m' AND dimension = 'event_type' AND value = '$probe'")" -ge 1 ] 2>/dev/null; do sleep 0.05; done
  delays+=($(( $(now_ms) - ts )))
done
sorted=$(printf '%s\n' "${delays[@]}" | sort -n | tr '\n' ' ')
echo "delays ms: $sorted(median $(printf '%s\n' "${delays[@]}" | sort -n | sed -n 3p))"
kill $pid; wait $pid 2>/dev/null || true
trap - EXIT
ch "DROP DATABASE IF EXISTS $TAG" >/dev/null
