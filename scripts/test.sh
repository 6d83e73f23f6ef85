#!/usr/bin/env bash
# The test command (README, .ci/run): on a fresh machine it installs what is
# missing, checks the operations kit (deploy/: the alert rules' unit tests, the
# Kubernetes manifests against the Kubernetes schemas), starts a fresh local
# Apache Kafka (KRaft, scripts/broker.sh) unless KAFKA_BOOTSTRAP_SERVERS names
# a cluster, then runs the format and lint checks, the unit tests and the
# broker tests in one cargo invocation (tests/prometheus.rs scrapes a router
# with a real Prometheus server; tests/java_client.rs builds and runs a Java
# producer and consumer with Maven), and last the systemd units.
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

# Debian packages: OpenSSL headers for librdkafka's TLS/SCRAM support, the
# openssl command for the TLS tests' certificates, PyYAML for scripts/acls.sh
# (tests/acls.rs).
missing=()
for pkg in libssl-dev pkg-config openssl python3-yaml; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

# Debian's Prometheus: promtool for the rules, the server for tests/prometheus.rs.
if ! dpkg -s prometheus >/dev/null 2>&1; then
    echo "installing prometheus"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null
fi
# A Kubernetes manifest validator with the schemas bundled (works offline once
# installed), in a virtualenv of its own.
k8s_venv="${XDG_CACHE_HOME:-$HOME/.cache}/kafka-delay-router/k8s-validate"
if ! "$k8s_venv/bin/kubernetes-validate" --version >/dev/null 2>&1; then
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-venv >/dev/null
    fi
    rm -rf "$k8s_venv"
    python3 -m venv "$k8s_venv"
    "$k8s_venv/bin/pip" install -q --disable-pip-version-check kubernetes-validate==1.37.0
fi

echo "alert rules: check and unit tests"
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml
promtool check config deploy/prometheus/prometheus.yml
echo "Kubernetes manifests against the Kubernetes 1.37 schemas"
# The ServiceMonitor is the Prometheus Operator's kind: no bundled schema, so
# it is only parsed (and named as skipped); anything else must pass strictly.
k8s_out=$("$k8s_venv/bin/kubernetes-validate" --strict deploy/kubernetes/*.yaml 2>&1) || {
    echo "$k8s_out"
    exit 1
}
echo "$k8s_out"
if echo "$k8s_out" | grep -v '^INFO ' | grep -v "schema for kind ServiceMonitor" | grep -q .; then
    echo "unexpected output from the manifest validator" >&2
    exit 1
fi

if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
    port=${TEST_BROKER_PORT:-19092}
    # Java and Maven (if missing) and the broker's jars from Maven Central, once.
    scripts/broker.sh install
    # A fresh broker every run: no topics or groups left from an earlier one.
    scripts/broker.sh stop "$port" --wipe
    trap 'scripts/broker.sh stop "$port"' EXIT
    scripts/broker.sh start "$port"
    export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$port"
fi
echo "broker: $KAFKA_BOOTSTRAP_SERVERS"

cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
# Every test binary runs even after one fails: CI's log shows them all.
status=0
# The library's documentation: a doc warning (a missing doc, a broken link) fails.
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps || status=$?
cargo test --locked --all-targets --no-fail-fast || status=$?
# --all-targets leaves out the doctests (the crate doc's examples): run them too.
cargo test --locked --doc --no-fail-fast || status=$?
# The tests of group membership again under Kafka 4's consumer group protocol
# (KIP-848, `run --group-protocol consumer`): the broker tests, status, the
# partition assigned twice, exactly-once with its fenced and killed routers,
# and the fault suite's crashes, churn and takeover.
echo "again under the consumer group protocol (KIP-848)"
KDR_GROUP_PROTOCOL=consumer FAULTS_ONLY=crash,churn-dynamic,takeover \
    cargo test --locked --no-fail-fast --test broker --test status --test coordinator \
    --test exactly_once --test exactly_once_kafka --test exactly_once_cancel --test acls \
    --test faults ||
    status=$?

# The systemd units, with the binary just built in place of /usr/local/bin
# (systemd-analyze checks that the command exists): unknown keys and bad
# values are only warnings to systemd, so any output fails; then their
# exposure level (0 = fully locked down, 10 = nothing) must stay at most 2.5.
if command -v systemd-analyze >/dev/null 2>&1; then
    echo "systemd units: systemd-analyze verify and security"
    units=$(mktemp -d)
    trap 'rm -rf "$units"; if [ -n "${port:-}" ]; then scripts/broker.sh stop "$port"; fi' EXIT
    for unit in deploy/systemd/*.service; do
        sed "s#/usr/local/bin/kafka-delay-router#$PWD/target/debug/kafka-delay-router#" "$unit" \
            >"$units/$(basename "$unit")"
    done
    verify_out=$(systemd-analyze verify "$units"/*.service 2>&1) || { echo "$verify_out"; exit 1; }
    if [ -n "$verify_out" ]; then
        echo "$verify_out"
        exit 1
    fi
    for unit in deploy/systemd/*.service; do
        systemd-analyze security --offline=yes --threshold=25 "$unit" | tail -1
    done
else
    echo "note: systemd-analyze not found; the systemd units were not verified"
fi
exit "$status"
