# shellcheck shell=bash
# ClickHouse: the distro's config.xml with every path and port overridden on
# the command line, so nothing under /var/lib or /var/log is touched and the
# distro service (if any) can coexist on other ports.

CH_PIDFILE=$RUN_DIR/clickhouse.pid
CH_LOG=$LOG_DIR/clickhouse.log
CH_ERRLOG=$LOG_DIR/clickhouse.err.log
# Early failures (bad config, bind errors) are printed before the logger
# is set up; they only reach stdout/stderr.
CH_OUT=$LOG_DIR/clickhouse.out.log
CH_CONFIG=${TALLY_CLICKHOUSE_CONFIG:-/etc/clickhouse-server/config.xml}

# --path is unique to our instance, so it identifies our process.
clickhouse_pid() { owned_pid "$CH_PIDFILE" "--path=$CH_DIR/data/"; }

clickhouse_addr() { echo "http://127.0.0.1:$CH_HTTP_PORT (native 127.0.0.1:$CH_TCP_PORT)"; }

clickhouse_ready() {
    [[ $(http_get "$CH_HTTP_PORT" /ping | tail -n1) == Ok.* ]]
}

clickhouse_check_ports() {
    if clickhouse_pid >/dev/null; then return 0; fi
    require_free_port "$CH_HTTP_PORT" clickhouse-http TALLY_CLICKHOUSE_HTTP_PORT
    require_free_port "$CH_TCP_PORT" clickhouse-tcp TALLY_CLICKHOUSE_TCP_PORT
    require_free_port "$CH_INTERSERVER_PORT" clickhouse-interserver TALLY_CLICKHOUSE_INTERSERVER_PORT
}

clickhouse_up() {
    if clickhouse_pid >/dev/null; then return 0; fi
    command -v clickhouse-server >/dev/null || die "clickhouse-server not found (run: stack.sh install)"
    clickhouse_check_ports
    mkdir -p "$CH_DIR"/{data,tmp,user_files,format_schemas}
    rotate_log "$CH_LOG"
    rotate_log "$CH_ERRLOG"
    rotate_log "$CH_OUT"
    # 18.16 runs fine as root (newer servers refuse unless the data dir is
    # owned by root, which it is here). The replication port 9009 is opened
    # even without replication, so it is moved too. listen_host is pinned to
    # IPv4 loopback: the default also binds ::1, which fails where IPv6 is off.
    spawn "$CH_PIDFILE" "$CH_OUT" \
        clickhouse-server --config-file="$CH_CONFIG" -- \
        --path="$CH_DIR/data/" \
        --tmp_path="$CH_DIR/tmp/" \
        --user_files_path="$CH_DIR/user_files/" \
        --format_schema_path="$CH_DIR/format_schemas/" \
        --logger.log="$CH_LOG" \
        --logger.errorlog="$CH_ERRLOG" \
        --listen_host=127.0.0.1 \
        --http_port="$CH_HTTP_PORT" \
        --tcp_port="$CH_TCP_PORT" \
        --interserver_http_port="$CH_INTERSERVER_PORT"
    save_addr clickhouse "$(clickhouse_addr)"
    wait_ready clickhouse "$START_TIMEOUT" "$CH_OUT $CH_ERRLOG" "$(<"$CH_PIDFILE")" clickhouse_ready
}

clickhouse_down() {
    local pid
    if pid=$(clickhouse_pid); then
        stop_pid "$pid" clickhouse
    fi
    rm -f "$CH_PIDFILE" "$RUN_DIR/clickhouse.addr"
}

clickhouse_status() {
    local pid=''
    pid=$(clickhouse_pid) || pid=''
    print_status_line clickhouse "$pid" "$(saved_addr clickhouse "$(clickhouse_addr)")"
    [[ -n $pid ]]
}
