#!/usr/bin/env bash
# Soak: the release router for a chosen time at a steady rate under a
# realistic mix (delays 100 ms to 1 h through tiers 1s/5s/30s/1m/10m/1h, random
# keys, one record in five with a delay-id and half of those cancelled before
# their due time, one in 5,000 hostile and dead-lettered, one router restart
# half-way), measured minute by minute. Writes soak.jsonl (one line a minute),
# soak-summary.json, soak.txt and soak.png under the output directory, prints
# a line a minute and ends with one summary line. Exits non-zero if a record
# was lost, delivered early, or delivered despite a cancellation acknowledged
# before its due time.
#
#   scripts/soak.sh [--minutes N] [--rate R] [--out DIR] [--quick]
#
# Defaults: 60 minutes, 500 records/s, results/soak; --quick is 3 minutes.
# Environment:
#   KAFKA_BOOTSTRAP_SERVERS  a cluster to use (its CPU is then not measured);
#                     otherwise a fresh local Apache Kafka (scripts/broker.sh, one
#                     KRaft node) on 127.0.0.1:$SOAK_BROKER_PORT (default 29292),
#                     stopped at the end
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
minutes=60
rate=500
out=results/soak
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) minutes=${2:?--minutes N}; shift 2 ;;
        --rate) rate=${2:?--rate R}; shift 2 ;;
        --out) out=${2:?--out DIR}; shift 2 ;;
        --quick) minutes=3; shift ;;
        *) echo "usage: scripts/soak.sh [--minutes N] [--rate R] [--out DIR] [--quick]" >&2; exit 2 ;;
    esac
done

cargo build --release --locked --quiet --example bench --bin kafka-delay-router

broker_pid=""
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
    port=${SOAK_BROKER_PORT:-29292}
    scripts/broker.sh install >/dev/null
    scripts/broker.sh stop "$port" --wipe
    trap 'scripts/broker.sh stop "$port" --wipe' EXIT
    scripts/broker.sh start "$port" >/dev/null
    export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$port"
    # The java process scripts/broker.sh started (its pid file; the state dir as a fallback).
    state=${KAFKA_STATE_DIR:-$(pwd)/.kafka}
    broker_pid=$(cat "$state/cluster-$port/node-1/pid" 2>/dev/null ||
        pgrep -f "$state/cluster-$port/node-1/server.properties" | head -1 || true)
fi

mkdir -p "$out"
rm -f "$out"/soak.png "$out"/soak.jsonl "$out"/soak-summary.json
started=$(date +%s)
status=0
BENCH_ONLY=soak SOAK_MINUTES="$minutes" SOAK_RATE="$rate" SOAK_BROKER_PID="$broker_pid" \
    target/release/examples/bench --out "$out" --router-bin target/release/kafka-delay-router \
    | tee "$out/soak.txt" || status=$?
summary=$(grep '^soak ' "$out/soak.txt" | tail -n 1 || true)

if ! python3 -c "import matplotlib" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check matplotlib >/dev/null 2>&1 || true
fi
if [ -s "$out/soak.jsonl" ]; then
    if python3 scripts/plot_soak.py "$out"; then
        echo "plot: $out/soak.png"
    else
        echo "plot not drawn (matplotlib unavailable)" >&2
    fi
fi
echo "soak took $(( $(date +%s) - started )) s"
[ -n "$summary" ] && echo "$summary"
exit "$status"
