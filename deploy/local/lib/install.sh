# shellcheck shell=bash
# `stack.sh install`: Debian packages and the Kafka jars. Idempotent and
# quiet when everything is already there, because `up` runs it every time.

APT_PACKAGES=(clickhouse-server clickhouse-client postgresql kcat)

pkg_installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

install_packages() {
    local missing=() p
    for p in "${APT_PACKAGES[@]}"; do
        pkg_installed "$p" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    [[ $EUID -eq 0 ]] || die "missing packages (${missing[*]}); run as root to install them"
    say "installing: ${missing[*]}"
    # The packages' postinst would start the distro services (ClickHouse on
    # 8123/9000, a `main` PostgreSQL cluster on 5432) on the very ports we
    # want. Deny service starts for the duration, unless a policy exists.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    if ((added_policy)); then
        rm -f "$policy"
        trap - EXIT
    fi
}

# Kafka is not packaged by Debian; Maven Central is the only reachable
# source, so the broker's jars come from a pom listing kafka_2.13.
install_kafka_jars() {
    local pom=$DEPLOY_DIR/kafka/pom.xml libs=$KAFKA_DIR/libs marker want
    marker=$libs/.tally-kafka
    # Key the cache on the pom's content: bumping the version re-fetches.
    want="kafka $(kafka_pom_version) pom-sha256 $(sha256sum "$pom" | cut -d' ' -f1)"
    if [[ -f $marker && $(<"$marker") == "$want" ]]; then
        return 0
    fi
    command -v mvn >/dev/null || die "mvn (Maven) is required to fetch Kafka"
    command -v java >/dev/null || die "java (17+) is required to run Kafka"
    say "fetching Kafka $(kafka_pom_version) jars with Maven into $libs"
    # Copy into a scratch dir and swap, so an interrupted download never
    # leaves a half-filled libs/ that the marker check would trust.
    rm -rf "$libs.tmp"
    # Output goes to a file: Debian's Maven 3.8 prints stray ANSI resets even
    # in batch/quiet mode, and the full log is only interesting on failure.
    if ! mvn -B -q -f "$pom" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$libs.tmp" >"$KAFKA_DIR/maven.log" 2>&1; then
        tail -n 40 "$KAFKA_DIR/maven.log" >&2
        die "maven could not fetch the Kafka jars (full log: $KAFKA_DIR/maven.log)"
    fi
    printf '%s\n' "$want" >"$libs.tmp/.tally-kafka"
    rm -rf "$libs"
    mv "$libs.tmp" "$libs"
}

kafka_pom_version() {
    sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$DEPLOY_DIR/kafka/pom.xml" | head -n1
}

cmd_install() {
    install_packages
    mkdir -p "$KAFKA_DIR"
    install_kafka_jars
}
