#!/usr/bin/env bash
# The full fault suite on Apache Kafka: 20 kill -9 of the router over 50k records with
# delays of 1 to 40 s, once with static membership (group.instance.id) and once
# with dynamic; two restarts of a broker of the suite's own; a minute of group
# churn with three routers, static and dynamic; and a target topic missing for
# a while. Prints one table row per scenario (sent, delivered, duplicated, lost,
# early, max lateness) and fails if any row lost a record or delivered one early.
# Uses KAFKA_BOOTSTRAP_SERVERS or starts a local Apache Kafka (scripts/broker.sh).
# The broker-restart scenario always starts its own single node and restarts it.
# Then broker failover (tests/failover/, full size): a three-node Apache Kafka
# cluster of its own, 500 records/s with ids and cancellations, its tier
# leader, group coordinator and active controller killed -9 and restarted one
# after another; one row per failover (lost, early, lateness while the node was
# down, readiness) and what the metrics and the alert rules showed.
# FAULTS_ONLY=crash,crash-dynamic,target,restart,churn,churn-dynamic,takeover,consumer,failover,eos
# runs some scenarios only.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/broker.sh install >/dev/null
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
    port=${FAULTS_BROKER_PORT:-29292}
    scripts/broker.sh stop "$port" --wipe
    trap 'scripts/broker.sh stop "$port" --wipe' EXIT
    scripts/broker.sh start "$port" >/dev/null
    export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$port"
fi
echo "$(date -u +%Y-%m-%dT%H:%MZ) $(scripts/broker.sh version) at $KAFKA_BOOTSTRAP_SERVERS, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores"
start=$(date +%s)
status=0
only=${FAULTS_ONLY:-}
if [ -z "$only" ] || tr ',' '\n' <<<"$only" | grep -qxE 'crash|crash-dynamic|target|restart|churn|churn-dynamic|takeover'; then
    FAULTS_FULL=1 cargo test --release --locked --test faults -- --nocapture 2>&1 |
        grep -E '^\||panicked|test result|lost|early|diagnosis|detail' || status=$?
    echo "took $(($(date +%s) - start)) s"
fi
# The group's scenarios again under Kafka 4's consumer group protocol (KIP-848):
# a minute of churn each way and the takeover; runs when FAULTS_ONLY names consumer.
if [ -z "$only" ] || tr ',' '\n' <<<"$only" | grep -qx consumer; then
    consumer_start=$(date +%s)
    KDR_GROUP_PROTOCOL=consumer FAULTS_ONLY=churn,churn-dynamic,takeover FAULTS_FULL=1 \
        cargo test --release --locked --test faults -- --nocapture 2>&1 |
        grep -E '^\||panicked|test result|lost|early|diagnosis|detail' || status=$?
    echo "consumer group protocol took $(($(date +%s) - consumer_start)) s"
fi
if [ -z "$only" ] || tr ',' '\n' <<<"$only" | grep -qx failover; then
    failover_start=$(date +%s)
    FAULTS_FULL=1 cargo test --release --locked --test failover -- --nocapture 2>&1 |
        grep -E '^\||^(cluster|router|failover|load|alerts|cancelled|detail|diagnosis)|^  |panicked|test result' ||
        status=$?
    echo "broker failover took $(($(date +%s) - failover_start)) s"
fi
# Then exactly-once under faults (tests/exactly_once_faults/, full size): 10
# kill -9 of an --exactly-once router over 20,000 records of mixed tiers with ids
# and cancellations; a zombie router; a transaction past its timeout; runs when
# FAULTS_ONLY names eos.
if [ -z "${FAULTS_ONLY:-}" ] || tr ',' '\n' <<<"$FAULTS_ONLY" | grep -qx eos; then
    eos_start=$(date +%s)
    FAULTS_FULL=1 cargo test --release --locked --test exactly_once_faults -- --nocapture 2>&1 |
        grep -E '^kafka \||^(EOS_FAULTS_SEED|killed|sent|cancelled|last router|zombie|stopped|the broker|transactions)|panicked|test result' ||
        status=$?
    echo "exactly-once under faults took $(($(date +%s) - eos_start)) s"
fi
exit "$status"
