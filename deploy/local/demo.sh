#!/usr/bin/env bash
# Tally's demo: the whole system on this machine, with synthetic events flowing.
#
# Usage: demo.sh [start|stop|status]   (default: start)
#
#   start   stack.sh up; build the release binary; tally migrate; start
#           `tally all` (pipeline + API) and `tally produce` (200 events/s) in
#           the background; print a sample report and where everything is.
#           Processes already started by an earlier `start` are kept.
#   stop    stop `tally produce` and `tally all` (which drains to ClickHouse
#           and saves progress first), then stack.sh down if `start` started
#           the stack (a stack that was already running is left running).
#   status  show the demo's processes and the stack.
#
# Environment: everything stack.sh reads (TALLY_HOME, TALLY_KAFKA_PORT, ...)
# and Tally's own overrides TALLY_<SECTION>__<KEY>; TALLY_API__LISTEN
# (default 127.0.0.1:8080) is also where this script looks for the API.
# The binary is $CARGO_TARGET_DIR/release/tally (default target/ in the repo).
# Logs: $TALLY_HOME/log/{tally,produce}.log; pids: $TALLY_HOME/run/.
# Keys: `tally migrate` writes the first admin key to $TALLY_HOME/admin.key (when no admin key
# exists yet); `start` creates a `read` key for the sample reports in $TALLY_HOME/demo-read.key
# (reused while valid). Both files are mode 0600.
set -euo pipefail

DEPLOY_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_ROOT=$(cd "$DEPLOY_DIR/../.." && pwd)
cd "$REPO_ROOT"

export TALLY_HOME=${TALLY_HOME:-$REPO_ROOT/.tally}
mkdir -p "$TALLY_HOME"
TALLY_HOME=$(cd "$TALLY_HOME" && pwd)
RUN_DIR=$TALLY_HOME/run
LOG_DIR=$TALLY_HOME/log
STOP_TIMEOUT=150 # `tally all` may spend up to 120 s draining to ClickHouse
# Where `cargo build` puts the binary; a relative CARGO_TARGET_DIR is relative to the repo root
# (where the build runs).
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
[[ $TARGET_DIR == /* ]] || TARGET_DIR=$REPO_ROOT/$TARGET_DIR
BIN=$TARGET_DIR/release/tally
STACK=(bash "$DEPLOY_DIR/stack.sh")
TALLY_PIDFILE=$RUN_DIR/tally.pid
PRODUCE_PIDFILE=$RUN_DIR/produce.pid
# Present while the stack runs because `demo.sh start` started it: only then does `stop` stop it.
STACK_MARKER=$RUN_DIR/demo-started-stack
TALLY_LOG=$LOG_DIR/tally.log
READ_KEY_FILE=$TALLY_HOME/demo-read.key
PRODUCE_LOG=$LOG_DIR/produce.log

# owned_pid, port_open, spawn, stop_pid, rotate_log
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
. "$DEPLOY_DIR/lib/common.sh"

step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'demo.sh: %s\n' "$*" >&2; exit 1; }

# Where to reach the API: the listen address, with a wildcard host replaced.
LISTEN=${TALLY_API__LISTEN:-127.0.0.1:8080}
API_PORT=${LISTEN##*:}
API_HOST=${LISTEN%:*}
case $API_HOST in 0.0.0.0 | '[::]') API_HOST=127.0.0.1 ;; esac
API=http://$API_HOST:$API_PORT

export_stack_addresses

# The pid of our `tally all` / `tally produce`, if it runs. The marker (binary
# path + subcommand) keeps us from ever signalling someone else's process.
tally_pid() { owned_pid "$TALLY_PIDFILE" "$BIN all"; }
produce_pid() { owned_pid "$PRODUCE_PIDFILE" "$BIN produce"; }

healthy() { curl -sf -o /dev/null --max-time 2 "$API/healthz"; }

wait_healthy() { # pid
    local deadline=$((SECONDS + 90))
    until healthy; do
        if ! kill -0 "$1" 2>/dev/null; then
            tail -n 40 "$TALLY_LOG" >&2
            fail "tally all exited during startup (log: $TALLY_LOG)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 40 "$TALLY_LOG" >&2
            fail "the API did not answer $API/healthz within 90 s (log: $TALLY_LOG)"
        fi
        sleep 1
    done
}

# GET a URL and pretty-print the JSON answer (or show the error as is).
show() { # url
    local body code
    body=$(curl -sS --max-time 10 -H @<(printf 'Authorization: Bearer %s\n' "$(<"$READ_KEY_FILE")") \
        -w '\n%{http_code}' "$1") || {
        echo "(request failed)"
        return 0
    }
    code=${body##*$'\n'}
    body=${body%$'\n'*}
    echo "GET $1  -> HTTP $code"
    if command -v python3 >/dev/null && python3 -m json.tool <<<"$body" 2>/dev/null; then
        return 0
    fi
    printf '%s\n' "$body"
}

start_tally() {
    local pid
    if pid=$(tally_pid); then
        echo "tally all already running (pid $pid)"
    else
        if port_open "$API_PORT"; then
            fail "port $API_PORT is in use by another process; stop it or set TALLY_API__LISTEN"
        fi
        rotate_log "$TALLY_LOG"
        # NO_COLOR=1: no ANSI colour codes in the log file.
        spawn "$TALLY_PIDFILE" "$TALLY_LOG" env NO_COLOR=1 "$BIN" all
        pid=$(<"$TALLY_PIDFILE")
        echo "started tally all (pid $pid)"
    fi
    wait_healthy "$pid"
    echo "API healthy at $API"
}

# A `read` key for the sample reports: the one in $READ_KEY_FILE while the API accepts it, else
# a new one (`tally keys create` prints it alone on standard output).
ensure_read_key() {
    local code
    if [[ -s $READ_KEY_FILE ]]; then
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 \
            -H @<(printf 'Authorization: Bearer %s\n' "$(<"$READ_KEY_FILE")") "$API/topologies" || true)
        if [[ $code == 200 ]]; then
            echo "using the read key in $READ_KEY_FILE"
            return 0
        fi
    fi
    (umask 077 && "$BIN" keys create --name "demo-read-$(date +%s)" --role read >"$READ_KEY_FILE")
    echo "created a read key in $READ_KEY_FILE"
}

start_produce() {
    local pid
    if pid=$(produce_pid); then
        echo "tally produce already running (pid $pid)"
        return 0
    fi
    rotate_log "$PRODUCE_LOG"
    spawn "$PRODUCE_PIDFILE" "$PRODUCE_LOG" env NO_COLOR=1 "$BIN" produce --rate 200 --count 0
    pid=$(<"$PRODUCE_PIDFILE")
    sleep 2
    if ! kill -0 "$pid" 2>/dev/null; then
        tail -n 20 "$PRODUCE_LOG" >&2
        fail "tally produce exited (log: $PRODUCE_LOG)"
    fi
    echo "started tally produce --rate 200 --count 0 (pid $pid)"
}

print_sample() {
    local now from10 to1 from60
    now=$(date -u +%s)
    from10=$(date -u -d "@$((now - 600))" +%FT%TZ)
    from60=$(date -u -d "@$((now - 3600))" +%FT%TZ)
    to1=$(date -u -d "@$((now + 60))" +%FT%TZ)
    step "events per minute, last 10 minutes (the newest minutes are provisional)"
    show "$API/reports?metric=events&window=1m&from=$from10&to=$to1"
    step "exact totals over raw events, last hour"
    show "$API/reports/summary?from=$from60&to=$to1"
}

cmd_start() {
    step "local stack (Kafka, ClickHouse, PostgreSQL)"
    mkdir -p "$RUN_DIR" "$LOG_DIR"
    if "${STACK[@]}" status >/dev/null 2>&1; then
        echo "already running: using it; demo.sh stop will leave it running"
    else
        # Written before `up`, so `stop` also stops a half-started stack.
        : >"$STACK_MARKER"
    fi
    "${STACK[@]}" up

    step "cargo build --release (the first build compiles librdkafka: several minutes)"
    cargo build --release

    step "tally migrate"
    "$BIN" migrate

    step "tally all (pipeline + API)"
    start_tally

    step "an API key to read reports with"
    ensure_read_key

    step "tally produce (synthetic events, 200/s, until stopped)"
    start_produce

    step "letting events flow for 15 s"
    sleep 15
    print_sample

    local stops="tally, produce and the stack"
    [[ -e $STACK_MARKER ]] || stops="tally and produce; the stack was already running and stays"
    cat <<EOF

Tally is running.
  API        $API   (every route with a key: docs/api.md; $API/docs browses them)
  dashboard  $API/dashboard   (data: $API/dashboard/data, with a read key)
  keys       read: $READ_KEY_FILE; admin: $TALLY_HOME/admin.key (if this migrate created it)
             curl -H "Authorization: Bearer \$(cat $READ_KEY_FILE)" "$API/reports/summary?from=\$(date -u -d '1 hour ago' +%FT%TZ)&to=\$(date -u +%FT%TZ)"
             more keys: $BIN keys create --name NAME --role ingest|read|admin
  metrics    $API/metrics
  logs       $TALLY_LOG, $PRODUCE_LOG, services in $LOG_DIR/
  stop       bash deploy/local/demo.sh stop    (stops $stops)
EOF
}

cmd_stop() {
    local pid
    if pid=$(produce_pid); then
        echo "stopping tally produce (pid $pid)"
        # On SIGINT produce waits for its in-flight sends; SIGTERM only if it hangs.
        kill -INT "$pid" 2>/dev/null || true
        for _ in {1..20}; do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        stop_pid "$pid" "tally produce"
    fi
    if pid=$(tally_pid); then
        echo "stopping tally all (pid $pid): draining to ClickHouse, saving progress"
        stop_pid "$pid" "tally all"
    fi
    rm -f "$PRODUCE_PIDFILE" "$TALLY_PIDFILE"
    if [[ -e $STACK_MARKER ]]; then
        "${STACK[@]}" down
        rm -f "$STACK_MARKER"
    else
        echo "leaving the stack running: demo.sh did not start it (stop it with: bash deploy/local/stack.sh down)"
    fi
}

cmd_status() {
    local pid rc=0
    if pid=$(tally_pid); then echo "tally all      running  pid $pid  $API"; else echo "tally all      stopped" && rc=3; fi
    if pid=$(produce_pid); then echo "tally produce  running  pid $pid"; else echo "tally produce  stopped" && rc=3; fi
    "${STACK[@]}" status || rc=3
    return "$rc"
}

case ${1:-start} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $(basename "$0") [start|stop|status]" >&2
        exit 2
        ;;
esac
