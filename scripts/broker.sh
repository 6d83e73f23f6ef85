#!/usr/bin/env bash
# Installs and runs Nisshi (formerly Tansu), the Kafka-compatible broker the
# tests, the quickstart and the benchmarks use (../shared/broker.md has the
# measured comparison that chose it).
#
#   scripts/broker.sh install             install nisshi 0.8.1 with cargo if missing (rustc 1.96
#                                         through rustup; about 17 minutes on 2 cores, once)
#   scripts/broker.sh start [PORT]        start it in the background on 127.0.0.1:PORT (default 9092)
#                                         and wait until it accepts connections
#   scripts/broker.sh stop [PORT]         stop the broker started by `start`
#
# Environment: NISSHI_STORAGE (default memory://nisshi/; e.g. sqlite://nisshi.db,
# a path relative to NISSHI_DIR), NISSHI_DIR (state and logs, default .nisshi),
# NISSHI_REBALANCE_DELAY (how long the first rebalance of a new group waits for
# more members, a duration; default 0s here, Nisshi's own default is 3s).
set -euo pipefail

NISSHI_VERSION=0.8.1
NISSHI_TOOLCHAIN=1.96.0
NISSHI_DIR=${NISSHI_DIR:-$(pwd)/.nisshi}
export PATH="$HOME/.cargo/bin:$PATH"

installed() {
    command -v nisshi >/dev/null 2>&1 && [ "$(nisshi --version 2>/dev/null)" = "nisshi $NISSHI_VERSION" ]
}

install() {
    if installed; then
        echo "nisshi $NISSHI_VERSION is installed: $(command -v nisshi)"
        return
    fi
    echo "installing nisshi $NISSHI_VERSION with cargo +$NISSHI_TOOLCHAIN (about 17 minutes on 2 cores, once)"
    # Nisshi needs rustc 1.96; the project itself builds with the default toolchain.
    rustup toolchain list | grep -q "^$NISSHI_TOOLCHAIN" ||
        rustup toolchain install "$NISSHI_TOOLCHAIN" --profile minimal
    # dynostore gives memory://, libsql gives sqlite://; PostgreSQL is not needed.
    cargo "+$NISSHI_TOOLCHAIN" install nisshi --version "$NISSHI_VERSION" --locked \
        --no-default-features --features dynostore,libsql
}

wait_port() {
    local port=$1 tries=${2:-100}
    for _ in $(seq "$tries"); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

start() {
    local port=${1:-9092}
    local storage=${NISSHI_STORAGE:-memory://nisshi/}
    installed || { echo "nisshi $NISSHI_VERSION is not installed; run: scripts/broker.sh install" >&2; exit 1; }
    mkdir -p "$NISSHI_DIR"
    if [ -f "$NISSHI_DIR/nisshi-$port.pid" ] && kill -0 "$(cat "$NISSHI_DIR/nisshi-$port.pid")" 2>/dev/null; then
        echo "nisshi already running on 127.0.0.1:$port (pid $(cat "$NISSHI_DIR/nisshi-$port.pid"))"
        return
    fi
    (
        cd "$NISSHI_DIR"
        RUST_LOG=${RUST_LOG:-warn} nohup nisshi broker \
            --listener-url "tcp://127.0.0.1:$port" \
            --advertised-listener-url "tcp://127.0.0.1:$port" \
            --group-initial-rebalance-delay "${NISSHI_REBALANCE_DELAY:-0s}" \
            --storage-engine "$storage" >"nisshi-$port.log" 2>&1 &
        echo $! >"nisshi-$port.pid"
    )
    if ! wait_port "$port" 150; then
        echo "nisshi did not open 127.0.0.1:$port; its log:" >&2
        tail -20 "$NISSHI_DIR/nisshi-$port.log" >&2
        exit 1
    fi
    echo "nisshi running on 127.0.0.1:$port (pid $(cat "$NISSHI_DIR/nisshi-$port.pid"), storage $storage, log $NISSHI_DIR/nisshi-$port.log)"
}

stop() {
    local port=${1:-9092}
    local pidfile="$NISSHI_DIR/nisshi-$port.pid"
    [ -f "$pidfile" ] || return 0
    local pid
    pid=$(cat "$pidfile")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

case "${1:-}" in
    install) install ;;
    start) shift; start "$@" ;;
    stop) shift; stop "$@" ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
esac
