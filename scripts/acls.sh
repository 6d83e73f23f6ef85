#!/usr/bin/env bash
# Grants exactly the Kafka ACLs the router (or an application producing into
# the tiers) needs, read from a topics file, with Kafka's AclCommand
# (kafka-acls). docs/operations.md: "Least privilege: the ACLs the router needs".
#
#   scripts/acls.sh router --config topics.yaml --principal User:router
#                   --bootstrap-server HOST:PORT [--command-config admin.properties]
#                   [--group-id kafka-delay-router]
#                   [--exactly-once [--transactional-id-prefix P]] [--dry-run]
#       the router: Read+Write on the tiers, Write on the dead-letter topic and
#       on every entry of targets.allow (exact names LITERAL, 'name*' PREFIXED,
#       '*' every topic), Read on the cancel topic and on the group; with
#       --exactly-once also Write on the transactional ids and Read on the
#       groups starting with 'P.' (P defaults to the group id, as in `run`),
#       and Read on the dead-letter topic (both for the start-up probe)
#
#   scripts/acls.sh producer --config topics.yaml --principal User:app
#                   --bootstrap-server HOST:PORT [--command-config admin.properties]
#                   [--no-cancel] [--dry-run]
#       an application sending delayed records: Write on the tiers, and on the
#       cancel topic (to cancel) unless --no-cancel
#
# Every operation above implies Describe on the same resource, which is what
# metadata lookups need. --dry-run prints the AclCommand invocations instead
# of running them. --command-config is the admin client's properties (SASL,
# TLS) for the principal allowed to alter ACLs.
#
# AclCommand is taken from $KAFKA_ACLS (a command, e.g. "kafka-acls.sh" or
# "/opt/kafka/bin/kafka-acls.sh"), else kafka-acls.sh or kafka-acls on PATH,
# else the Kafka that scripts/broker.sh installed. The topics file is read
# with python3 and PyYAML (Debian: apt-get install python3-yaml).
#
# A target pattern with a '*' anywhere but at the end ('*.delayed',
# 'team-*-out') has no Kafka ACL equivalent: the script then refuses, naming
# the pattern; list those targets by name in targets.allow, or grant Write on
# each matching topic by hand.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
die() { echo "acls.sh: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed -n 's/^# \{0,1\}//p'; exit 2; }

mode=${1:-}
case "$mode" in
    router | producer) shift ;;
    -h | --help | "") usage ;;
    *) die "the first argument is the mode, router or producer, not '$mode' (--help)" ;;
esac

config='' principal='' bootstrap='' command_config='' group=kafka-delay-router
exactly_once=0 prefix='' dry_run=0 cancel=1
while [ $# -gt 0 ]; do
    case "$1" in
        --config) config=${2:?--config needs a file}; shift 2 ;;
        --principal) principal=${2:?--principal needs a value}; shift 2 ;;
        --bootstrap-server) bootstrap=${2:?--bootstrap-server needs HOST:PORT}; shift 2 ;;
        --command-config) command_config=${2:?--command-config needs a file}; shift 2 ;;
        --group-id) group=${2:?--group-id needs a value}; shift 2 ;;
        --exactly-once) exactly_once=1; shift ;;
        --transactional-id-prefix) prefix=${2:?--transactional-id-prefix needs a value}; shift 2 ;;
        --no-cancel) cancel=0; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h | --help) usage ;;
        *) die "unknown argument '$1' (--help)" ;;
    esac
done
[ -n "$config" ] || die "--config topics.yaml is required"
[ -f "$config" ] || die "$config: no such file"
[ -n "$principal" ] || die "--principal is required (e.g. User:router)"
[[ "$principal" == *:* ]] || die "--principal '$principal' is not TYPE:NAME (e.g. User:router)"
[ -n "$bootstrap" ] || die "--bootstrap-server HOST:PORT is required"
[ -z "$command_config" ] || [ -f "$command_config" ] || die "$command_config: no such file"
if [ "$mode" = producer ]; then
    if [ "$exactly_once" = 1 ] || [ -n "$prefix" ]; then
        die "--exactly-once and --transactional-id-prefix are for the router mode"
    fi
else
    [ "$cancel" = 1 ] || die "--no-cancel is for the producer mode"
    [ -z "$prefix" ] || [ "$exactly_once" = 1 ] || die "--transactional-id-prefix needs --exactly-once"
fi
[ -n "$prefix" ] || prefix=$group

# The topics file, as lines `KIND NAME`: tier, dead-letter, cancel, target.
python3 -c 'import yaml' 2>/dev/null ||
    die "reading $config needs python3 with PyYAML (Debian: apt-get install python3-yaml; or pip install pyyaml)"
topics=$(python3 - "$config" <<'EOF'
import sys, yaml
path = sys.argv[1]
try:
    with open(path) as f:
        doc = yaml.safe_load(f)
except Exception as e:
    sys.exit(f"acls.sh: {path}: not YAML: {e}")
if not isinstance(doc, dict):
    sys.exit(f"acls.sh: {path}: not a topics file")

def name(entry, key):
    if not isinstance(entry, dict) or not isinstance(entry.get("topic"), str) or not entry["topic"]:
        sys.exit(f"acls.sh: {path}: `{key}` needs a `topic`")
    return entry["topic"]

tiers = doc.get("tiers")
if not isinstance(tiers, list) or not tiers:
    sys.exit(f"acls.sh: {path}: `tiers` lists no tier")
for i, t in enumerate(tiers):
    print("tier", name(t, f"tiers[{i}]"))
print("dead-letter", name(doc.get("dead-letter"), "dead-letter"))
if doc.get("cancel") is not None:
    print("cancel", name(doc["cancel"], "cancel"))
targets = doc.get("targets")
allow = targets.get("allow") if isinstance(targets, dict) else None
if not isinstance(allow, list):
    sys.exit(f"acls.sh: {path}: no `targets.allow` list (the router refuses such a file too)")
for a in allow:
    if not isinstance(a, str) or not a:
        sys.exit(f"acls.sh: {path}: `targets.allow` entry {a!r} is not a topic name or pattern")
    print("target", a)
EOF
)

tiers=() dead_letter='' cancel_topic='' literal_targets=() prefixed_targets=() unexpressible=()
while read -r kind value; do
    case "$kind" in
        tier) tiers+=("$value") ;;
        dead-letter) dead_letter=$value ;;
        cancel) cancel_topic=$value ;;
        target)
            stem=${value%%\**}         # up to the first '*'
            rest=${value#"$stem"}      # from the first '*' on
            if [ -z "$rest" ]; then
                literal_targets+=("$value")
            elif [ -n "${rest//\*/}" ]; then
                unexpressible+=("$value") # a '*' followed by more of the name
            elif [ -z "$stem" ]; then
                literal_targets+=("*") # Kafka's LITERAL '*': every topic
                echo "acls.sh: targets.allow has '$value': Write on every topic (LITERAL '*')" >&2
            else
                prefixed_targets+=("$stem")
            fi
            ;;
    esac
done <<<"$topics"

if [ "$mode" = router ] && [ ${#unexpressible[@]} -gt 0 ]; then
    {
        echo "acls.sh: $config: targets.allow has pattern(s) Kafka ACLs cannot express (a '*' before the end of the name):"
        printf '    %s\n' "${unexpressible[@]}"
        echo "Kafka matches a topic ACL by exact name (LITERAL), by its start (PREFIXED) or all topics ('*')."
        echo "Nothing was granted. List the matching topics by name in targets.allow, or grant Write on each by hand:"
        echo "    kafka-acls.sh --bootstrap-server $bootstrap --add --allow-principal $principal --operation Write --topic TOPIC"
    } >&2
    exit 1
fi

# How AclCommand is run.
if [ -n "${KAFKA_ACLS:-}" ]; then
    read -r -a acl_command <<<"$KAFKA_ACLS"
elif command -v kafka-acls.sh >/dev/null 2>&1; then
    acl_command=(kafka-acls.sh)
elif command -v kafka-acls >/dev/null 2>&1; then
    acl_command=(kafka-acls)
else
    acl_command=("$here/broker.sh" tool org.apache.kafka.tools.AclCommand)
fi
common=(--bootstrap-server "$bootstrap")
[ -z "$command_config" ] || common+=(--command-config "$command_config")

# grant PATTERN_TYPE "OPERATIONS" RESOURCE_FLAG NAME [RESOURCE_FLAG NAME ...]
granted=0
grant() {
    local pattern=$1 ops=$2 op
    shift 2
    [ $# -gt 0 ] || return 0
    local args=("${acl_command[@]}" "${common[@]}" --add --allow-principal "$principal"
        --resource-pattern-type "$pattern")
    for op in $ops; do args+=(--operation "$op"); done
    args+=("$@")
    if [ "$dry_run" = 1 ]; then
        printf '%q ' "${args[@]}" | sed 's/ $//'
        echo
    else
        echo "acls.sh: granting $principal $ops on $pattern $*" >&2
        "${args[@]}" >/dev/null
    fi
    granted=$((granted + 1))
}
# --topic NAME for each name given, into the array `topic_args`.
topic_flags() { local t; topic_args=(); for t in "$@"; do topic_args+=(--topic "$t"); done; }

if [ "$mode" = router ]; then
    # Tiers: read (consume, fetch offsets) and write (forwards to the next tier).
    topic_flags "${tiers[@]}"
    grant literal "Read Write" "${topic_args[@]}"
    # The dead-letter topic and the targets named exactly: write.
    topic_flags "$dead_letter" "${literal_targets[@]+"${literal_targets[@]}"}"
    grant literal "Write" "${topic_args[@]}"
    # The group (join, fetch and commit offsets) and the cancel topic: read.
    # Exactly-once: the start-up probe's transaction also commits an offset
    # of the dead-letter topic (then aborts), which needs Read on it.
    reads=(--group "$group")
    [ -z "$cancel_topic" ] || reads+=(--topic "$cancel_topic")
    [ "$exactly_once" = 0 ] || reads+=(--topic "$dead_letter")
    grant literal "Read" "${reads[@]}"
    # Targets by prefix, and in exactly-once mode the transactional ids
    # (<prefix>.<tier>.<partition>, and the probe's <prefix>.<host>-<pid>-<n>.probe).
    topic_flags "${prefixed_targets[@]+"${prefixed_targets[@]}"}"
    writes=("${topic_args[@]+"${topic_args[@]}"}")
    [ "$exactly_once" = 0 ] || writes+=(--transactional-id "$prefix.")
    grant prefixed "Write" "${writes[@]+"${writes[@]}"}"
    # Exactly-once: that offset is committed for a group named as the
    # probe's transactional id, which needs Read on the group.
    [ "$exactly_once" = 0 ] || grant prefixed "Read" --group "$prefix."
else
    # Write on the tiers (Describe, implied, for the metadata), and on the
    # cancel topic to cancel.
    topic_flags "${tiers[@]}"
    writes=("${topic_args[@]}")
    if [ "$cancel" = 1 ] && [ -n "$cancel_topic" ]; then writes+=(--topic "$cancel_topic"); fi
    grant literal "Write" "${writes[@]}"
fi
[ "$dry_run" = 1 ] || echo "acls.sh: $granted AclCommand call(s) for $principal ($mode) done" >&2
