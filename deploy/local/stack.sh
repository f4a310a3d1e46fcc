#!/usr/bin/env bash
# Local Tally stack without Docker: Kafka (KRaft, jars from Maven Central),
# ClickHouse and PostgreSQL (Debian packages), each run as a plain process
# whose data, logs and pidfiles live under $TALLY_HOME.
#
# Usage: stack.sh up|down|status|install|reset
#
# Environment (defaults in brackets):
#   TALLY_HOME                        [<repo>/.tally]
#   TALLY_KAFKA_PORT                  [9092]
#   TALLY_KAFKA_CONTROLLER_PORT       [9093]
#   TALLY_KAFKA_HEAP                  [512m]
#   TALLY_CLICKHOUSE_HTTP_PORT        [8123]
#   TALLY_CLICKHOUSE_TCP_PORT         [9000]
#   TALLY_CLICKHOUSE_INTERSERVER_PORT [9009]
#   TALLY_CLICKHOUSE_CONFIG           [/etc/clickhouse-server/config.xml]
#   TALLY_PG_PORT                     [5432]
#   TALLY_PG_BIN                      [newest /usr/lib/postgresql/*/bin]
#   TALLY_START_TIMEOUT               [90]  seconds per service
#   TALLY_STOP_TIMEOUT                [30]  seconds before SIGKILL
#
# Exit codes: 0 ok; 1 error; 2 usage; 3 `status` with a service stopped.
set -euo pipefail

DEPLOY_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_ROOT=$(cd "$(dirname "$0")/../.." && pwd)

TALLY_HOME=${TALLY_HOME:-$REPO_ROOT/.tally}
mkdir -p "$TALLY_HOME"
TALLY_HOME=$(cd "$TALLY_HOME" && pwd)
RUN_DIR=$TALLY_HOME/run
LOG_DIR=$TALLY_HOME/log
KAFKA_DIR=$TALLY_HOME/kafka
CH_DIR=$TALLY_HOME/clickhouse

KAFKA_PORT=${TALLY_KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${TALLY_KAFKA_CONTROLLER_PORT:-9093}
KAFKA_HEAP=${TALLY_KAFKA_HEAP:-512m}
CH_HTTP_PORT=${TALLY_CLICKHOUSE_HTTP_PORT:-8123}
CH_TCP_PORT=${TALLY_CLICKHOUSE_TCP_PORT:-9000}
CH_INTERSERVER_PORT=${TALLY_CLICKHOUSE_INTERSERVER_PORT:-9009}
PG_PORT=${TALLY_PG_PORT:-5432}
START_TIMEOUT=${TALLY_START_TIMEOUT:-90}
STOP_TIMEOUT=${TALLY_STOP_TIMEOUT:-30}

# shellcheck source=lib/common.sh
. "$DEPLOY_DIR/lib/common.sh"
# shellcheck source=lib/install.sh
. "$DEPLOY_DIR/lib/install.sh"
# shellcheck source=lib/kafka.sh
. "$DEPLOY_DIR/lib/kafka.sh"
# shellcheck source=lib/clickhouse.sh
. "$DEPLOY_DIR/lib/clickhouse.sh"
# shellcheck source=lib/postgres.sh
. "$DEPLOY_DIR/lib/postgres.sh"

cmd_status() {
    local rc=0
    kafka_status || rc=3
    clickhouse_status || rc=3
    pg_status || rc=3
    return "$rc"
}

cmd_up() {
    cmd_install
    # postgres (its own OS user) needs to reach run/ and log/ even if the
    # caller's umask is strict.
    mkdir -p "$RUN_DIR" "$LOG_DIR"
    chmod 755 "$TALLY_HOME" "$RUN_DIR" "$LOG_DIR"
    # Check every port before starting anything, so a conflict does not
    # leave a half-started stack behind.
    kafka_check_ports
    clickhouse_check_ports
    pg_check_ports
    kafka_up
    clickhouse_up
    pg_up
    cmd_status
}

# Reverse order of `up`; each service only acts on its own verified pid.
cmd_down() {
    pg_down
    clickhouse_down
    kafka_down
    cmd_status || true
}

# Wipes data but keeps the downloaded Kafka jars (slow to re-fetch).
cmd_reset() {
    cmd_down
    [[ $TALLY_HOME != / && -d $TALLY_HOME ]] || die "refusing to reset TALLY_HOME=$TALLY_HOME"
    rm -rf "$KAFKA_DIR/data" "$KAFKA_DIR/cluster.id" "$CH_DIR" "$PG_DATA" "$RUN_DIR" "$LOG_DIR"
    say "reset: removed data and logs under $TALLY_HOME"
}

case ${1:-} in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    install) cmd_install ;;
    reset) cmd_reset ;;
    *)
        echo "usage: $(basename "$0") up|down|status|install|reset" >&2
        exit 2
        ;;
esac
