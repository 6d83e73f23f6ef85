#!/usr/bin/env bash
# Benchmarks: throughput (router vs a bare forwarder), precision across rates
# (the router and sleep-and-requeue at 1, 10, 100, 1,000 and 5,000 records/s,
# each rate beside a plain produce-to-consume probe on the same broker),
# memory with 0 / 100k / 1M records waiting, and Kafka writes per delivered
# record. Prints markdown tables, writes results.json, lateness_ms.json,
# results.md and PNG plots under results/ (results/quick/ with --quick), and
# ends with one summary line.
#
#   scripts/bench.sh [--quick]
#
# Environment:
#   BENCH_ONLY        comma list of scenarios (default all): throughput, precision
#                     (router, probe and sleep-and-requeue at each rate),
#                     precision-router (router and probe only), precision-ids
#                     (records with a delay-id beside records without one in the
#                     same run, cancellations flowing), baseline
#                     (sleep-and-requeue only), memory, cancel-throughput (the
#                     router's drain rate without ids, with ids and 0 or 100k
#                     outstanding cancellations, and with ids but no cancel topic),
#                     eos (--exactly-once against at-least-once in the same run:
#                     drain throughput, and lateness under the precision mix)
#   BENCH_EOS_RATE    records/s of the eos scenario's lateness part (default 1000)
#   BENCH_RATES       records/s to measure precision at (default 1,10,100,1000,5000)
#   BENCH_SECS        load seconds per rate (default 30, and at least 100 records;
#                     --quick: 5, and at least 10 records)
#   BENCH_PROBE_RATE  probe records/s beside the router's load (default 20)
#   KAFKA_BOOTSTRAP_SERVERS  a cluster to use; otherwise a fresh local Apache Kafka
#                     (scripts/broker.sh, one KRaft node) on 127.0.0.1:$BENCH_BROKER_PORT
#                     (default 29192), stopped at the end
#   BENCH_BROKER      how to name that cluster in the results (with
#                     KAFKA_BOOTSTRAP_SERVERS; set here for the local broker)
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
    scripts/broker.sh stop "$port" --wipe
    trap 'scripts/broker.sh stop "$port" --wipe' EXIT
    scripts/broker.sh start "$port" >/dev/null
    export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$port"
    BENCH_BROKER="$(scripts/broker.sh version) (KRaft, 1 node, heap ${KAFKA_HEAP:-512m}) on this machine"
    export BENCH_BROKER
fi

mkdir -p "$out"
rm -f "$out"/*.png
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
