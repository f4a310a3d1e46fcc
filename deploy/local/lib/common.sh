# shellcheck shell=bash
# Shared helpers for stack.sh, demo.sh and test.sh. Sourced, not executed; defines functions only.

say() { printf '%s\n' "$*"; }
warn() { printf 'stack: %s\n' "$*" >&2; }
die() { warn "$*"; exit 1; }

# Pid stored in a pidfile, if that pid is still one of *our* processes.
# A pid is only trusted when its command line still contains the marker
# (a path under $TALLY_HOME): after a reboot or a crash the number may
# belong to an unrelated process, which we must never signal.
owned_pid() { # pidfile marker
    local pidfile=$1 marker=$2 pid
    [[ -r $pidfile ]] || return 1
    pid=$(head -n1 "$pidfile" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$marker" || return 1
    printf '%s\n' "$pid"
}

# True if something accepts TCP connections on 127.0.0.1:port. A connect
# test (not ss/netstat) sees wildcard listeners too and needs no extra tools.
port_open() { # port
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

require_free_port() { # port service env-var
    if port_open "$1"; then
        die "port $1 ($2) is already in use by another process; set $3 or stop it"
    fi
}

# Minimal HTTP GET over /dev/tcp, so readiness checks do not need curl.
http_get() { # port path
    # shellcheck disable=SC2016 # $1/$2 are expanded by the inner bash
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "$2" >&3
        cat <&3' _ "$1" "$2" 2>/dev/null
}

# Poll "$@" until it succeeds; on timeout, or as soon as the process (pid,
# if given) has died, show the service's logs so CI output says why
# instead of only that it failed.
wait_ready() { # service timeout-seconds "log1 log2" pid-or-empty cmd...
    local service=$1 timeout=$2 logs=$3 pid=$4 deadline f why
    shift 4
    deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        why=''
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            why="$service exited during startup"
        elif ((SECONDS >= deadline)); then
            why="$service did not become ready within ${timeout}s"
        fi
        if [[ -n $why ]]; then
            warn "$why"
            for f in $logs; do
                [[ -s $f ]] || continue
                warn "---- last lines of $f ----"
                tail -n 40 "$f" >&2
            done
            exit 1
        fi
        sleep 1
    done
}

# SIGTERM, wait, then SIGKILL: services get a chance to flush (Kafka's
# controlled shutdown, ClickHouse parts) but a hung one cannot block `down`.
stop_pid() { # pid service
    local pid=$1 service=$2 deadline
    kill -TERM "$pid" 2>/dev/null || return 0
    deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            warn "$service (pid $pid) still running after ${STOP_TIMEOUT}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 1
            break
        fi
        sleep 0.5
    done
}

# Start a long-running process detached from this shell (own session, so
# Ctrl-C on `up` or the caller's exit does not take it down) and record its
# pid. In a non-interactive shell the background child is not a process
# group leader, so setsid and nohup both exec in place and $! is the
# service's own pid.
spawn() { # pidfile logfile cmd...
    local pidfile=$1 logfile=$2
    shift 2
    setsid nohup "$@" >>"$logfile" 2>&1 </dev/null &
    printf '%s\n' "$!" >"$pidfile"
}

# Where a service was started, so `status` reports the ports it really
# uses even when called with different TALLY_*_PORT variables.
save_addr() { printf '%s\n' "$2" >"$RUN_DIR/$1.addr"; }
saved_addr() { # service default
    if [[ -s $RUN_DIR/$1.addr ]]; then cat "$RUN_DIR/$1.addr"; else printf '%s\n' "$2"; fi
}

print_status_line() { # service pid-or-empty address
    if [[ -n $2 ]]; then
        printf '%-10s running  pid %-7s %s\n' "$1" "$2" "$3"
    else
        printf '%-10s stopped\n' "$1"
    fi
}

# Keep one previous log per service: enough to debug the last crash without
# letting logs of a long-lived dev stack grow forever.
rotate_log() { # file
    if [[ -s $1 ]]; then mv -f "$1" "$1.prev"; fi
}

# When a stack port is moved (TALLY_KAFKA_PORT, ...), point Tally's settings at it, unless the
# Tally setting itself (TALLY_KAFKA__BROKERS, ...) is already given.
export_stack_addresses() {
    if [[ -n ${TALLY_KAFKA_PORT:-} && -z ${TALLY_KAFKA__BROKERS:-} ]]; then
        export TALLY_KAFKA__BROKERS=127.0.0.1:$TALLY_KAFKA_PORT
    fi
    if [[ -n ${TALLY_CLICKHOUSE_HTTP_PORT:-} && -z ${TALLY_CLICKHOUSE__URL:-} ]]; then
        export TALLY_CLICKHOUSE__URL=http://127.0.0.1:$TALLY_CLICKHOUSE_HTTP_PORT
    fi
    if [[ -n ${TALLY_PG_PORT:-} && -z ${TALLY_POSTGRES__URL:-} ]]; then
        export TALLY_POSTGRES__URL=postgres://tally@127.0.0.1:$TALLY_PG_PORT/tally
    fi
}
