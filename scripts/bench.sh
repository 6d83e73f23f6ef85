#!/usr/bin/env bash
# Benchmarks: throughput (router vs a bare forwarder), delivery precision
# (router vs sleep-and-requeue), memory with 0 / 100k / 1M records waiting,
# and Kafka writes per delivered record. Prints a markdown table, writes
# results.json, results.md and PNG plots under results/ (results/quick/ with
# --quick), and ends with one summary line.
#
#   scripts/bench.sh [--quick]
#
# Uses KAFKA_BOOTSTRAP_SERVERS if set, otherwise a fresh local Tansu broker.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
quick=()
out=results
if [ "${1:-}" = "--quick" ]; then
    quick=(--quick)
    out=results/quick
fi

cargo build --release --locked --quiet --example bench --bin kafka-delay-router

if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
    port=${BENCH_BROKER_PORT:-29192}
    scripts/broker.sh install >/dev/null
    scripts/broker.sh stop "$port"
    trap 'scripts/broker.sh stop "$port"' EXIT
    scripts/broker.sh start "$port" >/dev/null
    export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$port"
fi

mkdir -p "$out"
started=$(date +%s)
target/release/examples/bench "${quick[@]}" --out "$out" --router-bin target/release/kafka-delay-router | tee "$out/bench.txt"
summary=$(tail -n 1 "$out/bench.txt")

if ! python3 -c "import matplotlib" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check matplotlib >/dev/null 2>&1 || true
fi
if python3 scripts/plot.py "$out"; then
    echo "plots: $(ls "$out"/*.png | tr '\n' ' ')"
else
    echo "plots not drawn (matplotlib unavailable)" >&2
fi
echo "benchmark took $(( $(date +%s) - started )) s"
echo "$summary"
