#!/usr/bin/env bash
# Installs and runs Apache Kafka (KRaft mode) on loopback: the broker the tests,
# the quickstart, the benchmarks and the fault suite use unless
# KAFKA_BOOTSTRAP_SERVERS names a cluster.
#
#   scripts/broker.sh install              resolve Kafka $KAFKA_VERSION's runtime jars from Maven
#                                          Central into a cache outside the work tree (once)
#   scripts/broker.sh start [PORT] [OPTIONS]
#                                          start a combined broker+controller on 127.0.0.1:PORT
#                                          (default 9092), formatting its storage on first start;
#                                          returns when every node answers a metadata request
#       --nodes N                          N nodes (ids 1..N) on client ports PORT..PORT+N-1,
#                                          controller ports PORT+100.., one KRaft quorum
#       --dir DIR                          state directory (default $KAFKA_STATE_DIR or ./.kafka)
#       --protocol P                       the client listener's security protocol: PLAINTEXT
#                                          (default), SSL, SASL_PLAINTEXT or SASL_SSL; any
#                                          other than PLAINTEXT adds a PLAINTEXT listener on
#                                          PORT+200.. for replication and the readiness check
#       --props FILE                       more server properties, appended (they win)
#       --scram MECH:USER:PASSWORD         a SCRAM user written at format time (repeatable)
#   scripts/broker.sh stop [PORT] [--dir DIR] [--wipe]
#                                          stop what `start` started (SIGTERM, SIGKILL after
#                                          15 s); --wipe also deletes its storage and logs
#   scripts/broker.sh kill NODE [PORT] [--dir DIR]      SIGKILL one node (fault tests)
#   scripts/broker.sh restart NODE [PORT] [--dir DIR]   stop one node (if running) and start it
#                                                       again; returns when the cluster is whole
#   scripts/broker.sh status [PORT] [--dir DIR]         pid and metadata answer of every node
#   scripts/broker.sh tool CLASS ARGS...   run a Kafka command-line tool by class name, e.g.
#                                          org.apache.kafka.tools.AclCommand (kafka-acls)
#   scripts/broker.sh version              the pinned version (Apache Kafka $KAFKA_VERSION)
#
# PORT defaults to the cluster started last. Environment: KAFKA_HEAP (per
# node, default 512m), KAFKA_CACHE (where the jars go, default
# ~/.cache/kafka-delay-router), KAFKA_STATE_DIR. Each node's log is
# DIR/cluster-PORT/node-ID/broker.log.
set -euo pipefail

# The newest 4.x release Maven Central serves with all its runtime
# dependencies (checked 2026-12-02: 4.4.0 resolves completely).
KAFKA_VERSION=4.4.0
here=$(cd "$(dirname "$0")" && pwd)
KAFKA_CACHE=${KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kafka-delay-router}
LIB="$KAFKA_CACHE/kafka-$KAFKA_VERSION/lib"
STATE=${KAFKA_STATE_DIR:-$(pwd)/.kafka}

die() { echo "broker.sh: $*" >&2; exit 1; }

java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1; }

need_java() {
    local major
    major=$(java_major 2>/dev/null || true)
    if [ -z "$major" ] || [ "$major" -lt 17 ] || ! command -v mvn >/dev/null 2>&1 ||
        ! command -v python3 >/dev/null 2>&1; then
        [ "$(id -u)" = 0 ] || die "Kafka 4 needs Java 17 or newer, Maven and python3; install them (Debian: apt-get install openjdk-17-jdk-headless maven python3) or run this as root"
        echo "installing OpenJDK 17, Maven and python3 (Debian packages)"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q openjdk-17-jdk-headless maven python3 >/dev/null
        major=$(java_major)
        [ "${major:-0}" -ge 17 ] || die "java on PATH is version ${major:-unknown}; Kafka 4 needs 17 or newer (update-alternatives --config java)"
    fi
}

install() {
    if [ -f "$LIB/.complete" ]; then
        echo "Apache Kafka $KAFKA_VERSION is installed: $LIB"
        return
    fi
    need_java
    local started tmp
    started=$(date +%s)
    echo "installing Apache Kafka $KAFKA_VERSION (broker, tools) from Maven Central into $LIB"
    tmp="$LIB.partial"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    mvn -q -B -f "$here/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" ||
        die "Maven could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION (see above)"
    [ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ] || die "kafka_2.13-$KAFKA_VERSION.jar missing after resolving"
    rm -rf "$LIB"
    mv "$tmp" "$LIB"
    touch "$LIB/.complete"
    echo "installed Apache Kafka $KAFKA_VERSION in $(( $(date +%s) - started )) s ($(ls "$LIB" | wc -l) jars, $(du -sh "$LIB" | cut -f1))"
}

installed() {
    [ -f "$LIB/.complete" ] || die "Apache Kafka $KAFKA_VERSION is not installed; run: scripts/broker.sh install"
    command -v java >/dev/null 2>&1 || die "java not found; run: scripts/broker.sh install"
}

# --- cluster state -----------------------------------------------------------
# DIR/cluster-PORT/cluster.env keeps what `start` was given, so that `restart`,
# `kill` and `stop` act on the same cluster; DIR/current names the last one.

port= dir_opt= nodes=1 protocol=PLAINTEXT props= wipe=0 explicit=0
scram=()
parse_opts() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --nodes) nodes=$2; explicit=1; shift 2 ;;
            --dir) dir_opt=$2; shift 2 ;;
            --protocol) protocol=$2; explicit=1; shift 2 ;;
            --props) props=$2; explicit=1; shift 2 ;;
            --scram) scram+=("$2"); shift 2 ;;
            --wipe) wipe=1; shift ;;
            -*) die "unknown option $1" ;;
            *) [ -z "$port" ] || die "unexpected argument $1"; port=$1; shift ;;
        esac
    done
    [ -z "$dir_opt" ] || STATE=$(mkdir -p "$dir_opt" && cd "$dir_opt" && pwd)
    if [ -z "$port" ]; then
        port=$(cat "$STATE/current" 2>/dev/null || echo 9092)
    fi
    cluster="$STATE/cluster-$port"
}

client_port() { echo $((port + $1 - 1)); }
controller_port() { echo $((port + 100 + $1 - 1)); }
internal_port() { echo $((port + 200 + $1 - 1)); }
# The port the readiness check speaks PLAINTEXT to.
probe_port() { if [ "$protocol" = PLAINTEXT ]; then client_port "$1"; else internal_port "$1"; fi; }

node_pid() {
    local pidfile="$cluster/node-$1/pid" pid cmdline
    [ -f "$pidfile" ] || return 1
    pid=$(cat "$pidfile")
    # Only a live java process started for this node's directory counts (a
    # zombie's command line is empty).
    cmdline=$({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null || true)
    [[ "$cmdline" == *"$cluster/node-$1/server.properties"* ]] || return 1
    echo "$pid"
}

write_config() {
    local id=$1 d="$cluster/node-$1" voters="" i listeners advertised map inter
    local rf=$((nodes < 3 ? nodes : 3)) isr=$((nodes >= 3 ? 2 : 1))
    for i in $(seq "$nodes"); do voters+="${voters:+,}$i@127.0.0.1:$(controller_port "$i")"; done
    listeners="CLIENT://127.0.0.1:$(client_port "$id"),CONTROLLER://127.0.0.1:$(controller_port "$id")"
    advertised="CLIENT://127.0.0.1:$(client_port "$id")"
    map="CLIENT:$protocol,CONTROLLER:PLAINTEXT"
    inter=CLIENT
    if [ "$protocol" != PLAINTEXT ]; then
        listeners+=",INTERNAL://127.0.0.1:$(internal_port "$id")"
        advertised+=",INTERNAL://127.0.0.1:$(internal_port "$id")"
        map+=",INTERNAL:PLAINTEXT"
        inter=INTERNAL
    fi
    mkdir -p "$d/data"
    cat >"$d/server.properties" <<EOF
# Written by scripts/broker.sh; node $id of $nodes.
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
controller.listener.names=CONTROLLER
listeners=$listeners
advertised.listeners=$advertised
listener.security.protocol.map=$map
inter.broker.listener.name=$inter
log.dirs=$d/data
# Internal topics replicated as far as the cluster allows.
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
default.replication.factor=$rf
num.partitions=1
# Topics are created by create-topics, never by a producer naming one: a
# record for a missing target must reach the dead-letter topic.
auto.create.topics.enable=false
# A new group's first rebalance does not wait for more members (tests start one).
group.initial.rebalance.delay.ms=0
# Groups on the consumer protocol (KIP-848): the broker owns their session
# timeout and heartbeat interval. Kafka's defaults are 45 s and 5 s; these
# match the router's classic-protocol settings (10 s, 1 s), so a crash costs
# the same under both protocols in the tests (docs/operations.md: "Group protocol and failover").
group.consumer.min.session.timeout.ms=6000
group.consumer.session.timeout.ms=10000
group.consumer.min.heartbeat.interval.ms=1000
group.consumer.heartbeat.interval.ms=1000
EOF
    if [ -n "$props" ]; then
        printf '\n# From %s:\n' "$props" >>"$d/server.properties"
        cat "$props" >>"$d/server.properties"
    fi
    cat >"$d/log4j2.yaml" <<'EOF'
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: org.apache.kafka.controller
        level: INFO
      - name: kafka.request.logger
        level: WARN
      - name: org.apache.kafka.storage
        level: WARN
EOF
}

format_node() {
    local id=$1 d="$cluster/node-$1" args=() s mech user password
    [ -f "$d/data/meta.properties" ] && return 0
    for s in "${scram[@]+"${scram[@]}"}"; do
        IFS=: read -r mech user password <<<"$s"
        args+=(--add-scram "$mech=[name=$user,password=$password]")
    done
    java -cp "$LIB/*" -Dlog4j2.configurationFile="$d/log4j2.yaml" kafka.tools.StorageTool format \
        -t "$(cat "$cluster/cluster.id")" -c "$d/server.properties" "${args[@]+"${args[@]}"}" \
        >"$d/format.log" 2>&1 || { cat "$d/format.log" >&2; die "formatting node $id failed"; }
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Another process on one of a node's ports would answer the readiness check
# in its place: checked before anything is formatted or launched. A node just
# stopped or killed may hold its ports for a moment more (its last threads
# close them after the main one has exited), so a port gets 10 s to be freed.
check_ports() {
    local id p tries
    for id in "$@"; do
        node_pid "$id" >/dev/null && continue
        for p in $(client_port "$id") $(controller_port "$id") $( [ "$protocol" = PLAINTEXT ] || internal_port "$id"); do
            tries=100
            while port_taken "$p"; do
                tries=$((tries - 1))
                [ "$tries" -gt 0 ] || die "127.0.0.1:$p (node $id) is in use by another process; stop it or choose another PORT"
                sleep 0.1
            done
        done
    done
}

launch_node() {
    local id=$1 d="$cluster/node-$1"
    node_pid "$id" >/dev/null && return 0
    # shellcheck disable=SC2086
    setsid nohup java -Xms"${KAFKA_HEAP:-512m}" -Xmx"${KAFKA_HEAP:-512m}" \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$d/log4j2.yaml" -Dkafka.logs.dir="$d" \
        -cp "$LIB/*" kafka.Kafka "$d/server.properties" >>"$d/broker.log" 2>&1 </dev/null &
    echo $! >"$d/pid"
    launched+=("$id")
    # The background child becomes java by exec (setsid, nohup); until then
    # its command line is this script's.
    local i
    for i in $(seq 50); do node_pid "$id" >/dev/null && return 0; sleep 0.1; done
    die "node $id did not start java (log: $d/broker.log)"
}

# Nodes launched by this invocation: killed again if it fails before they are ready.
launched=()
kill_launched() {
    local id pid
    for id in "${launched[@]+"${launched[@]}"}"; do
        if pid=$(node_pid "$id"); then kill -KILL "$pid" 2>/dev/null || true; fi
        rm -f "$cluster/node-$id/pid"
    done
}

# Waits until every node answers a metadata request listing all N brokers.
wait_ready() {
    local deadline=$(( $(date +%s) + ${KAFKA_START_TIMEOUT:-180} )) i answer
    for i in $(seq "$nodes"); do
        while :; do
            node_pid "$i" >/dev/null || { tail -30 "$cluster/node-$i/broker.log" >&2; die "node $i exited while starting (log: $cluster/node-$i/broker.log)"; }
            answer=$(python3 "$here/kafka/metadata.py" "127.0.0.1:$(probe_port "$i")" 2>/dev/null || true)
            [ "${answer%% *}" = "brokers=$nodes" ] && break
            if [ "$(date +%s)" -ge "$deadline" ]; then
                tail -30 "$cluster/node-$i/broker.log" >&2
                die "node $i did not answer a metadata request listing $nodes brokers in time (log: $cluster/node-$i/broker.log)"
            fi
            sleep 0.2
        done
    done
}

save_cluster() {
    printf 'nodes=%q\nprotocol=%q\nprops=%q\n' "$nodes" "$protocol" "$props" >"$cluster/cluster.env"
    echo "$port" >"$STATE/current"
}

load_cluster() {
    [ -f "$cluster/cluster.env" ] || die "no cluster was started on port $port in $STATE"
    # shellcheck disable=SC1091
    . "$cluster/cluster.env"
}

start() {
    parse_opts "$@"
    installed
    command -v python3 >/dev/null 2>&1 || die "python3 is needed for the readiness check"
    local started i running=1 bootstrap="" want
    started=$(date +%s)
    mkdir -p "$cluster"
    if [ -f "$cluster/cluster.env" ] && [ -f "$cluster/node-1/data/meta.properties" ]; then
        # Formatted storage keeps its shape: a start without options takes
        # the saved ones; other options need a fresh cluster (--wipe).
        want="$nodes $protocol $props"
        load_cluster
        [ "$explicit" = 0 ] || [ "$want" = "$nodes $protocol $props" ] ||
            die "the cluster on port $port was formatted as $nodes node(s), $protocol${props:+, $props}; stop it with --wipe to start it otherwise"
    fi
    for i in $(seq "$nodes"); do node_pid "$i" >/dev/null || running=0; done
    if [ "$running" = 1 ] && [ -f "$cluster/cluster.env" ]; then
        wait_ready
        echo "Apache Kafka $KAFKA_VERSION already running on 127.0.0.1:$port ($nodes node(s))"
        return
    fi
    if [ ! -s "$cluster/cluster.id" ]; then
        java -cp "$LIB/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1 >"$cluster/cluster.id.new" || true
        [ -s "$cluster/cluster.id.new" ] || die "kafka.tools.StorageTool random-uuid printed nothing"
        mv "$cluster/cluster.id.new" "$cluster/cluster.id"
    fi
    check_ports $(seq "$nodes")
    trap kill_launched EXIT
    for i in $(seq "$nodes"); do
        write_config "$i"
        format_node "$i"
    done
    save_cluster
    for i in $(seq "$nodes"); do launch_node "$i"; done
    wait_ready
    trap - EXIT
    for i in $(seq "$nodes"); do bootstrap+="${bootstrap:+,}127.0.0.1:$(client_port "$i")"; done
    echo "Apache Kafka $KAFKA_VERSION (KRaft, $nodes node(s), $protocol) ready on $bootstrap in $(( $(date +%s) - started )) s; logs in $cluster/node-*/broker.log"
}

signal_node() {
    local id=$1 signal=$2 pid
    pid=$(node_pid "$id") || return 0
    kill "-$signal" "$pid" 2>/dev/null || true
}

# Whether this node's process, as its pid file names it, is still there: not
# a zombie, and still this node's java or already without a command line
# (exiting: the kernel drops it first, so node_pid alone cannot tell).
exiting_or_alive() {
    local id=$1 pid=$2 state cmdline
    state=$({ cut -d' ' -f3 <"/proc/$pid/stat"; } 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ] || return 1
    cmdline=$({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null || true)
    [ -z "$cmdline" ] || [[ "$cmdline" == *"$cluster/node-$id/server.properties"* ]]
}

# Waits until the nodes given have exited: SIGKILL after 15 s, and an error
# if even that did not end one within 5 s more.
wait_gone() {
    local id pid deadline=$(( $(date +%s) + 15 )) killed=0
    for id in "$@"; do
        pid=$(cat "$cluster/node-$id/pid" 2>/dev/null || true)
        while [ -n "$pid" ] && exiting_or_alive "$id" "$pid"; do
            if [ "$(date +%s)" -ge "$deadline" ]; then
                if [ "$killed" = 0 ]; then
                    kill -KILL "$pid" 2>/dev/null || true
                    killed=1
                elif [ "$(date +%s)" -ge $((deadline + 5)) ]; then
                    die "node $id (pid $pid) does not exit"
                fi
            fi
            sleep 0.1
        done
        rm -f "$cluster/node-$id/pid"
    done
}

stop() {
    parse_opts "$@"
    [ -d "$cluster" ] || return 0
    local ids=() i d
    # Every node at once: stopped one by one, the last ones wait for a quorum
    # that has already gone.
    for d in "$cluster"/node-*; do
        [ -d "$d" ] || continue
        i=${d##*/node-}
        ids+=("$i")
        signal_node "$i" TERM
    done
    wait_gone "${ids[@]+"${ids[@]}"}"
    if [ "$wipe" = 1 ]; then rm -rf "$cluster"; fi
}

kill_node() {
    local id=${1:?usage: broker.sh kill NODE [PORT]}
    shift
    parse_opts "$@"
    load_cluster
    local pid
    pid=$(node_pid "$id") || die "node $id is not running"
    kill -KILL "$pid"
    wait_gone "$id"
    echo "node $id (pid $pid) killed"
}

restart_node() {
    local id=${1:?usage: broker.sh restart NODE [PORT]}
    shift
    parse_opts "$@"
    load_cluster
    installed
    local started
    started=$(date +%s)
    signal_node "$id" TERM
    wait_gone "$id"
    check_ports "$id"
    trap kill_launched EXIT
    launch_node "$id"
    wait_ready
    trap - EXIT
    echo "node $id restarted; the cluster answered with all $nodes brokers after $(( $(date +%s) - started )) s"
}

status() {
    parse_opts "$@"
    load_cluster
    local i pid answer
    for i in $(seq "$nodes"); do
        pid=$(node_pid "$i" || echo -)
        answer=$(python3 "$here/kafka/metadata.py" "127.0.0.1:$(probe_port "$i")" 2>/dev/null || echo "no answer")
        echo "node $i: 127.0.0.1:$(client_port "$i") pid $pid: $answer"
    done
}

tool() {
    installed
    local class=${1:?usage: broker.sh tool CLASS ARGS...}
    shift
    java -Xmx256m -cp "$LIB/*" -Dlog4j2.level=WARN "$class" "$@"
}

case "${1:-}" in
    install) install ;;
    start) shift; start "$@" ;;
    stop) shift; stop "$@" ;;
    kill) shift; kill_node "$@" ;;
    restart) shift; restart_node "$@" ;;
    status) shift; status "$@" ;;
    tool) shift; tool "$@" ;;
    version) echo "Apache Kafka $KAFKA_VERSION" ;;
    *) sed -n '2,35p' "$0"; exit 2 ;;
esac
