#!/usr/bin/env bash
# The main job end to end, on a fresh machine: builds the router, starts a
# local Apache Kafka broker (scripts/broker.sh: KRaft, one node, installed from
# Maven Central the first time) unless KAFKA_BOOTSTRAP_SERVERS names a cluster, creates
# the topics from topics.yaml plus a demo target, runs the router, produces a
# few delayed records (fixed delays, a cascade across tiers, an absolute time,
# one bad record) and shows them arriving with their lateness, then stops
# and shows the backlog that builds up while no router runs (`status`).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
target=quickstart-orders
metrics=127.0.0.1:${QUICKSTART_METRICS_PORT:-9464}

echo "== building kafka-delay-router (release)"
cargo build --release --locked --quiet
bin=target/release/kafka-delay-router

cleanup() {
    [ -n "${router_pid:-}" ] && kill "$router_pid" 2>/dev/null && wait "$router_pid" 2>/dev/null || true
    [ -n "${own_broker:-}" ] && scripts/broker.sh stop "$own_broker"
    return 0
}
trap cleanup EXIT

if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
    port=${QUICKSTART_BROKER_PORT:-9092}
    echo "== no KAFKA_BOOTSTRAP_SERVERS: starting a local Apache Kafka broker on 127.0.0.1:$port"
    scripts/broker.sh install
    scripts/broker.sh stop "$port" --wipe
    scripts/broker.sh start "$port"
    own_broker=$port
    export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$port"
fi

echo "== creating topics on $KAFKA_BOOTSTRAP_SERVERS"
"$bin" create-topics --config topics.yaml --target-topic "$target"

echo "== starting the router (metrics on http://$metrics/metrics)"
"$bin" run --config topics.yaml --metrics-addr "$metrics" --log warn &
router_pid=$!
for _ in $(seq 100); do
    curl -fs "http://$metrics/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done

echo "== watching $target"
"$bin" watch --topic "$target" --count 6 --timeout 40s > target/quickstart-watch.txt &
watch_pid=$!
sleep 1

echo "== producing delayed records"
for delay in 1s 5s 2500ms 12s; do
    "$bin" produce --config topics.yaml --target "$target" --delay "$delay" --key "order-$delay" "ship order (delay $delay)"
done
at=$(date -u -d "+8 seconds" +%Y-%m-%dT%H:%M:%SZ)
"$bin" produce --config topics.yaml --target "$target" --at "$at" --key order-at "ship order (at $at)"
"$bin" produce --config topics.yaml --target "$target" --delay 3s --key order-3s "ship order (delay 3s)"
echo "== a record for a topic that does not exist goes to the dead-letter topic (the router never creates topics)"
"$bin" produce --config topics.yaml --target quickstart-no-such-topic --delay 1s "lost order?"
echo "== the hop plan of the 12s record:"
"$bin" plan --config topics.yaml --delay 12s | sed 's/^/   /'

echo "== arrivals (lateness = arrival at a consumer of $target minus due time)"
wait "$watch_pid" || true
cat target/quickstart-watch.txt

echo "== router metrics"
curl -fs "http://$metrics/metrics" | grep -E '^kafka_delay_router_(records_(delivered|forwarded|dead_lettered)_total|delivery_lateness_seconds_(sum|count))' | grep -v ' 0$' || true

echo "== stopping the router (SIGTERM: drain, commit, leave the group)"
kill -TERM "$router_pid"
wait "$router_pid"
router_pid=

echo "== with no router running, three records come due; status shows them waiting and overdue"
for i in 1 2 3; do
    "$bin" produce --config topics.yaml --target "$target" --delay 1s --key "late-$i" "late order $i" >/dev/null
done
sleep 3
"$bin" status --config topics.yaml | grep -E '^(group|TIER|delay-1s )' || true
echo "done (the next router run delivers them)"
