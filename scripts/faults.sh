#!/usr/bin/env bash
# The full fault suite: 20 kill -9 of the router over 50k records with delays of
# 1 to 40 s, two restarts of a persistent (sqlite) broker, a minute of group
# churn with three routers, and a target topic missing for a while. Prints one
# table row per scenario: sent, delivered, duplicated, lost, early, max lateness.
# Needs a local Tansu (scripts/broker.sh install); uses KAFKA_BOOTSTRAP_SERVERS
# or starts one. The broker-restart scenario always starts its own.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/broker.sh install >/dev/null
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
    port=${FAULTS_BROKER_PORT:-29292}
    scripts/broker.sh stop "$port"
    trap 'scripts/broker.sh stop "$port"' EXIT
    scripts/broker.sh start "$port" >/dev/null
    export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$port"
fi
FAULTS_FULL=1 cargo test --release --locked --test faults -- --nocapture 2>&1 | grep -E '^\||panicked|test result|lost|early'
