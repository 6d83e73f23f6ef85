#!/usr/bin/env bash
# The test command (README, .ci/run): on a fresh machine it installs what is
# missing, starts a local Nisshi broker unless KAFKA_BOOTSTRAP_SERVERS names a
# cluster, then runs the format and lint checks, the unit tests and the broker
# tests in one cargo invocation.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is required (https://rustup.rs)" >&2
    exit 1
fi
for component in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
        rustup component add "$component"
    fi
done

# Debian packages: OpenSSL headers for librdkafka's TLS/SCRAM support, and
# stunnel for the mutual-TLS test (Nisshi cannot ask for client certificates).
missing=()
for pkg in libssl-dev pkg-config openssl stunnel4; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
    port=${TEST_BROKER_PORT:-19092}
    scripts/broker.sh install
    scripts/broker.sh stop "$port"
    trap 'scripts/broker.sh stop "$port"' EXIT
    scripts/broker.sh start "$port"
    export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$port"
fi
echo "broker: $KAFKA_BOOTSTRAP_SERVERS"

cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets
