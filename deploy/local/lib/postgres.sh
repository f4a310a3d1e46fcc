# shellcheck shell=bash
# PostgreSQL: a private cluster under $TALLY_HOME/pg, run as the `postgres`
# OS user because postgres refuses to start as root.

PG_DATA=$TALLY_HOME/pg
PG_LOG=$LOG_DIR/postgres.log
# Our own socket dir: /var/run/postgresql may not exist without the distro
# service, and sharing it would clash with a distro cluster on the same port.
PG_SOCK_DIR=$RUN_DIR/pg
PG_USER=postgres

pg_bin() {
    local d
    if [[ -n ${TALLY_PG_BIN:-} ]]; then
        printf '%s\n' "$TALLY_PG_BIN"
        return
    fi
    # Newest installed major version; Debian 12 has only 15.
    d=$(printf '%s\n' /usr/lib/postgresql/*/bin | grep -v '\*' | sort -V | tail -n1)
    [[ -n $d ]] || die "PostgreSQL binaries not found under /usr/lib/postgresql (run: stack.sh install)"
    printf '%s\n' "$d"
}

as_pg() { runuser -u "$PG_USER" -- "$@"; }

# postmaster.pid is written by postgres itself; its first line is the pid.
pg_pid() { owned_pid "$PG_DATA/postmaster.pid" "$PG_DATA"; }

pg_addr() { echo "postgres://tally@127.0.0.1:$PG_PORT/tally"; }

pg_ready() { "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 2; }

# The postgres user must be able to reach $TALLY_HOME. A repo under a
# 0700 home dir (e.g. /root) is not traversable; grant search (x) only,
# never read, and say so.
pg_make_reachable() {
    local d="" part parts
    # Top-down: a dir is only testable once its parents are traversable.
    IFS=/ read -ra parts <<<"${TALLY_HOME#/}"
    for part in "${parts[@]}"; do
        d=$d/$part
        if ! as_pg test -x "$d"; then
            say "note: chmod o+x $d so the postgres user can reach $PG_DATA"
            chmod o+x "$d"
        fi
    done
}

pg_psql() { # sql
    "$(pg_bin)/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres \
        -d postgres -tAc "$1"
}

pg_ensure_tally_db() {
    if [[ $(pg_psql "select 1 from pg_roles where rolname = 'tally'") != 1 ]]; then
        pg_psql "create role tally login"
    fi
    if [[ $(pg_psql "select 1 from pg_database where datname = 'tally'") != 1 ]]; then
        pg_psql "create database tally owner tally"
    fi
}

pg_check_ports() {
    if pg_pid >/dev/null; then return 0; fi
    require_free_port "$PG_PORT" postgres TALLY_PG_PORT
}

pg_up() {
    local bin
    if pg_pid >/dev/null; then return 0; fi
    bin=$(pg_bin)
    id "$PG_USER" >/dev/null 2>&1 || die "OS user $PG_USER missing (is postgresql installed?)"
    # Unix socket paths are limited to 107 bytes; fail clearly, not cryptically.
    ((${#PG_SOCK_DIR} + 20 < 107)) || die "TALLY_HOME path too long for a unix socket: $PG_SOCK_DIR"
    pg_check_ports
    pg_make_reachable
    mkdir -p "$PG_DATA" "$PG_SOCK_DIR"
    chown "$PG_USER:" "$PG_DATA" "$PG_SOCK_DIR"
    chmod 700 "$PG_DATA"
    rotate_log "$PG_LOG"
    install -o "$PG_USER" -m 644 /dev/null "$PG_LOG"
    if [[ ! -s $PG_DATA/PG_VERSION ]]; then
        as_pg "$bin/initdb" -D "$PG_DATA" --auth=trust -U postgres -E UTF8 \
            --locale=C.UTF-8 >>"$PG_LOG" 2>&1 ||
            { tail -n 20 "$PG_LOG" >&2; die "initdb failed"; }
    fi
    # Settings go on the command line, not into postgresql.conf, so the
    # TALLY_PG_PORT of each `up` applies to an existing cluster too.
    # shellcheck disable=SC2094 # pg_ctl appends to the log; we only append too
    as_pg "$bin/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t "$START_TIMEOUT" \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k '$PG_SOCK_DIR'" start >/dev/null 2>>"$PG_LOG" ||
        { tail -n 40 "$PG_LOG" >&2; die "postgres did not start"; }
    save_addr postgres "$(pg_addr)"
    wait_ready postgres "$START_TIMEOUT" "$PG_LOG" '' pg_ready
    pg_ensure_tally_db
}

pg_down() {
    pg_pid >/dev/null || return 0
    as_pg "$(pg_bin)/pg_ctl" -D "$PG_DATA" -m fast -w -t "$STOP_TIMEOUT" stop >/dev/null ||
        warn "pg_ctl stop failed; see $PG_LOG"
    rm -f "$RUN_DIR/postgres.addr"
}

pg_status() {
    local pid=''
    pid=$(pg_pid) || pid=''
    print_status_line postgres "$pid" "$(saved_addr postgres "$(pg_addr)")"
    [[ -n $pid ]]
}
