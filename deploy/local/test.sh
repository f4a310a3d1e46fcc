#!/usr/bin/env bash
# Tally's test command: everything CI runs, in order.
#
#   1. build prerequisites (Debian packages, the pinned Rust toolchain's
#      rustfmt and clippy, PyPI chdb-core for the current-ClickHouse check),
#      installed only when missing
#   2. cargo fmt --check
#   3. the local stack (deploy/local/stack.sh up): Kafka, ClickHouse, PostgreSQL
#   4. cargo clippy -D warnings, cargo build
#   5. tally migrate (a smoke test of the CLI against the stack)
#   6. cargo test with TALLY_E2E=1, so the end-to-end tests run against the stack
#
# The stack is stopped at exit only if this script started it: a developer's
# running stack is left alone. Runs unattended (CI=true, no stdin, as root).
#
# Environment: everything stack.sh reads (TALLY_HOME, TALLY_KAFKA_PORT,
# TALLY_CLICKHOUSE_HTTP_PORT, TALLY_PG_PORT, ...). When a port is moved, the
# matching Tally setting (TALLY_KAFKA__BROKERS, TALLY_CLICKHOUSE__URL,
# TALLY_POSTGRES__URL) follows it unless it is set explicitly.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO_ROOT"
STACK=(bash "$REPO_ROOT/deploy/local/stack.sh")

# Packages the build needs: a C toolchain and make for the bundled librdkafka,
# pkg-config and zlib for its libz feature; curl and python3 for the scripts.
BUILD_PACKAGES=(build-essential pkg-config zlib1g-dev curl python3)

step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'test.sh: %s\n' "$*" >&2; exit 1; }

pkg_installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

install_build_packages() {
    local missing=() p
    command -v dpkg-query >/dev/null || return 0 # not Debian: assume a prepared machine
    for p in "${BUILD_PACKAGES[@]}"; do
        pkg_installed "$p" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    [[ $EUID -eq 0 ]] || fail "missing packages (${missing[*]}); run as root or install them"
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# rust-toolchain.toml pins the compiler; rustup may not auto-install it (or
# its components), e.g. with RUSTUP_AUTO_INSTALL=0.
ensure_toolchain() {
    local channel
    command -v cargo >/dev/null || fail "cargo not found: install rustup (https://rustup.rs)"
    if cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1; then
        return 0
    fi
    command -v rustup >/dev/null || fail "cargo fmt/clippy missing and no rustup to install them"
    channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
    [[ -n $channel ]] || fail "no channel in rust-toolchain.toml"
    echo "installing Rust $channel with rustfmt and clippy"
    rustup toolchain install "$channel" --profile minimal --component rustfmt,clippy
}

# export_stack_addresses: the e2e tests read the same TALLY_<SECTION>__<KEY> variables.
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
. "$REPO_ROOT/deploy/local/lib/common.sh"

# tests/tests/current_clickhouse.rs runs Tally's SQL on a current ClickHouse in-process.
ensure_chdb() {
    python3 -c 'import chdb' 2>/dev/null && return 0
    echo "installing chdb-core (a current ClickHouse engine, in-process) from PyPI"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore chdb-core
}

STARTED_STACK=0
stop_stack() {
    local rc=$?
    if ((STARTED_STACK)); then
        step "stopping the stack this script started"
        "${STACK[@]}" down || rc=1
    fi
    exit "$rc"
}

step "build prerequisites"
install_build_packages
ensure_toolchain
ensure_chdb
cargo --version

step "cargo fmt --check"
cargo fmt --all -- --check

step "local stack (Kafka, ClickHouse, PostgreSQL)"
if "${STACK[@]}" status >/dev/null 2>&1; then
    echo "already running: using it and leaving it running"
else
    # Set before `up`, so a half-started stack is stopped too.
    STARTED_STACK=1
fi
trap stop_stack EXIT
# Ctrl-C or a CI timeout still runs the EXIT trap.
trap 'exit 130' INT
trap 'exit 143' TERM
"${STACK[@]}" up
export_stack_addresses

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build"
cargo build --workspace --all-targets

step "tally migrate"
cargo run -q -- migrate

step "cargo test (unit, property and end-to-end tests)"
TALLY_E2E=1 cargo test --workspace -- --test-threads=2

step "all checks passed"
