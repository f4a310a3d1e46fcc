#!/usr/bin/env bash
# Late-event corrections benchmark (a script, not a test): see docs/benchmarks.md.
#
#   bash deploy/local/bench-corrections.sh [DAY_EVENTS] [LIVE_RATE]   (defaults 500000, 300)
#
# With `tally run` and `tally worker` running and a live load of LIVE_RATE events/s:
# 1. Correction lag: 10 probe events, each 2 hours late and of a new event type, written with
#    kcat; the time until the corrected 1m rollup row of the probe is in ClickHouse.
# 2. A busy day arriving late: DAY_EVENTS events spread over yesterday (UTC), all late; the time
#    from the last write until every window is corrected (nothing pending in the ledger).
# 3. `tally rebuild` of that day: seconds and rollup rows written (each window kind reads the
#    day's raw events twice: rows scanned = 6 × DAY_EVENTS).
# Uses its own topic, ClickHouse database and pipeline name; the local stack must be up.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO_ROOT=$(pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
[[ $TARGET_DIR == /* ]] || TARGET_DIR=$REPO_ROOT/$TARGET_DIR
N=${1:-500000}
RATE=${2:-300}
TAG=benchc_$(date +%s)
CH=${TALLY_CLICKHOUSE__URL:-http://127.0.0.1:8123}
BROKERS=${TALLY_KAFKA__BROKERS:-127.0.0.1:9092}
PG=${TALLY_POSTGRES__URL:-postgres://tally@127.0.0.1:5432/tally}
export TALLY_KAFKA__TOPIC=$TAG TALLY_KAFKA__DLQ_TOPIC=$TAG.dlq TALLY_CLICKHOUSE__DATABASE=$TAG \
  TALLY_PIPELINE__NAME=$TAG TALLY_PIPELINE__IDLE_TIMEOUT_MS=2000 RUST_LOG=${RUST_LOG:-warn}
ch() { curl -sS --data-binary "$1" "$CH/?database=$TAG"; }
pending() { psql -qtAX "$PG" -c "SELECT count(*) FROM late_windows WHERE pipeline = '$TAG' AND pending_since IS NOT NULL"; }
now_ms() { date +%s%3N; }

cargo build --release -q
bin=$TARGET_DIR/release/tally
"$bin" migrate >/dev/null
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
"$bin" run & pids+=($!)
"$bin" worker & pids+=($!)
"$bin" produce --rate "$RATE" --count 0 >/dev/null 2>&1 & pids+=($!)
echo "== live load $RATE events/s into $TAG; waiting 15 s for the watermark"
sleep 15

echo "== correction lag: 10 probes, each 2 h late"
lags=()
for i in $(seq 1 10); do
  probe="late_probe_${i}_$RANDOM"
  ts=$(( $(now_ms) - 7200000 ))
  printf 'bench|{"event_type":"%s","user_id":"bench","timestamp":%s}\n' "$probe" "$ts" \
    | kcat -P -b "$BROKERS" -t "$TAG" -K '|'
  t0=$(now_ms)
  until [ "$(ch "SELECT count() FROM rollups_product_analytics WHERE window_name = '1m' AND dimension = 'event_type' AND value = '$probe'")" -ge 1 ] 2>/dev/null; do sleep 0.1; done
  lags+=($(( $(now_ms) - t0 )))
  sleep 2
done
sorted=$(printf '%s\n' "${lags[@]}" | sort -n | tr '\n' ' ')
echo "correction lag (ms, sorted): $sorted"

day_start=$(date -u -d 'yesterday 00:00' +%s)000
echo "== a busy day arriving late: $N events over $(date -u -d @"${day_start%000}" +%F)"
file=$(mktemp)
python3 - "$N" "$day_start" > "$file" <<'PY'
import json, random, sys
n, start = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(7)
types = ["page_view", "click", "signup", "purchase", "search", "logout"]
for i in range(n):
    u = rng.randrange(5000)
    e = {"event_id": f"day-{i}", "event_type": rng.choice(types), "user_id": f"u{u}",
         "session_id": f"s{u}-{rng.randrange(5)}", "timestamp": start + rng.randrange(86400000)}
    print(f"u{u}|{json.dumps(e)}")
PY
t0=$(now_ms)
kcat -P -b "$BROKERS" -t "$TAG" -K '|' -l "$file"
t1=$(now_ms)
rm -f "$file"
echo "written to kafka in $(( t1 - t0 )) ms"
day_end=$(( ${day_start%000} + 86400 ))
until [ "$(ch "SELECT count() FROM events WHERE timestamp >= toDateTime(${day_start%000}) AND timestamp < toDateTime($day_end)")" -ge "$N" ] 2>/dev/null; do sleep 0.5; done
t2=$(now_ms)
echo "raw events stored: $(( t2 - t1 )) ms after the last write"
sleep 1
until [ "$(pending)" -eq 0 ]; do sleep 0.2; done
t3=$(now_ms)
echo "every window of the day corrected: $(( t3 - t1 )) ms after the last write ($(( t3 - t2 )) ms after the raw rows)"
check=$(ch "SELECT sum(e) FROM (SELECT argMax(events, version) AS e FROM rollups_product_analytics WHERE window_name = '1h' AND dimension = '' AND window_start >= toDateTime(${day_start%000}) AND window_start < toDateTime($day_end) GROUP BY window_start)")
echo "check: 1h rollups of the day sum to $check (written: $N)"

echo "== tally rebuild of that day"
from=$(date -u -d @"${day_start%000}" +%FT%TZ)
to=$(date -u -d @"$day_end" +%FT%TZ)
t4=$(now_ms)
"$bin" rebuild --from "$from" --to "$to" 2>/dev/null
t5=$(now_ms)
echo "rebuild: $(( t5 - t4 )) ms (rows scanned: 6 x $N = $(( 6 * N )))"
"$bin" jobs --limit 5 2>/dev/null | sed -n '1,12p'
