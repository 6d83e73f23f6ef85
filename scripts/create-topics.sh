#!/usr/bin/env bash
# What operators run to create the tier and dead-letter topics declared in a
# topics file. Idempotent: existing topics are checked, never changed; drift
# (too few partitions, retention, timestamp type, other configs) is reported
# and makes the script exit 2.
#
#   scripts/create-topics.sh [topics.yaml] [extra create-topics flags, e.g. --dry-run, -X security.protocol=ssl]
#
# The cluster is KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092). Uses the
# kafka-delay-router on PATH, or builds it from this repository.
set -euo pipefail
config=${1:-topics.yaml}
[ $# -gt 0 ] && shift
bootstrap=${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}
if command -v kafka-delay-router >/dev/null 2>&1; then
    bin=kafka-delay-router
else
    root="$(cd "$(dirname "$0")/.." && pwd)"
    cargo build --release --quiet --manifest-path "$root/Cargo.toml"
    bin="$root/target/release/kafka-delay-router"
fi
exec "$bin" create-topics --config "$config" --bootstrap-servers "$bootstrap" "$@"
