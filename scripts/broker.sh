#!/usr/bin/env bash
# Installs and runs Tansu, the Kafka-compatible broker the tests and the
# quickstart use (see ../shared/broker.md for why Tansu and these flags).
#
#   scripts/broker.sh install             install tansu 0.6.0 with cargo if missing (~13 min once)
#   scripts/broker.sh start [PORT]        start it in the background on 127.0.0.1:PORT (default 9092)
#                                         and wait until it accepts connections
#   scripts/broker.sh stop [PORT]         stop the broker started by `start`
#
# Environment: TANSU_STORAGE (default memory://tansu/; e.g. sqlite://tansu.db,
# a path relative to TANSU_DIR), TANSU_DIR (state and logs, default .tansu).
set -euo pipefail

TANSU_VERSION=0.6.0
TANSU_DIR=${TANSU_DIR:-$(pwd)/.tansu}
export PATH="$HOME/.cargo/bin:$PATH"

installed() {
    command -v tansu >/dev/null 2>&1 && [ "$(tansu --version 2>/dev/null)" = "tansu $TANSU_VERSION" ]
}

install() {
    if installed; then
        echo "tansu $TANSU_VERSION is installed: $(command -v tansu)"
        return
    fi
    echo "installing tansu $TANSU_VERSION with cargo (takes about 13 minutes on 2 cores, once)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
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
    local storage=${TANSU_STORAGE:-memory://tansu/}
    installed || { echo "tansu is not installed; run: scripts/broker.sh install" >&2; exit 1; }
    mkdir -p "$TANSU_DIR"
    if [ -f "$TANSU_DIR/tansu-$port.pid" ] && kill -0 "$(cat "$TANSU_DIR/tansu-$port.pid")" 2>/dev/null; then
        echo "tansu already running on 127.0.0.1:$port (pid $(cat "$TANSU_DIR/tansu-$port.pid"))"
        return
    fi
    (
        cd "$TANSU_DIR"
        RUST_LOG=${RUST_LOG:-warn} nohup tansu broker \
            --listener-url "tcp://127.0.0.1:$port" \
            --advertised-listener-url "tcp://127.0.0.1:$port" \
            --storage-engine "$storage" >"tansu-$port.log" 2>&1 &
        echo $! >"tansu-$port.pid"
    )
    if ! wait_port "$port" 150; then
        echo "tansu did not open 127.0.0.1:$port; its log:" >&2
        tail -20 "$TANSU_DIR/tansu-$port.log" >&2
        exit 1
    fi
    echo "tansu running on 127.0.0.1:$port (pid $(cat "$TANSU_DIR/tansu-$port.pid"), storage $storage, log $TANSU_DIR/tansu-$port.log)"
}

stop() {
    local port=${1:-9092}
    local pidfile="$TANSU_DIR/tansu-$port.pid"
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
    *) sed -n '2,13p' "$0"; exit 2 ;;
esac
