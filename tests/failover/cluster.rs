//! The three-node cluster: who leads the tier partitions, coordinates the
//! group and controls the quorum; the topics, created replicated three times;
//! and the wait until every partition is fully replicated again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

fn metadata_client() -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap()
}

/// How many of the tier partitions each node leads.
fn tier_leaders(tiers: &[String]) -> BTreeMap<i32, usize> {
    let c = metadata_client();
    let mut counts = BTreeMap::new();
    for t in tiers {
        let md = c.fetch_metadata(Some(t), Duration::from_secs(10)).unwrap();
        for p in md.topics()[0].partitions() {
            *counts.entry(p.leader()).or_insert(0) += 1;
        }
    }
    counts
}

/// Java's `String.hashCode`, which Kafka uses to place a group on a
/// `__consumer_offsets` partition.
fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32))
}

/// The group coordinator as the metadata says: the leader of the group's
/// `__consumer_offsets` partition (`Utils.abs(hashCode) % 50`).
fn coordinator_from_metadata(group: &str) -> Option<i32> {
    let h = java_hash(group);
    let partition = if h == i32::MIN { 0 } else { h.abs() } % 50;
    let md = metadata_client()
        .fetch_metadata(Some("__consumer_offsets"), Duration::from_secs(10))
        .ok()?;
    let leader = md.topics()[0]
        .partitions()
        .iter()
        .find(|p| p.id() == partition)
        .map(|p| p.leader());
    leader
}

/// The group coordinator as `kafka-consumer-groups --describe --state` names it.
fn coordinator_from_tool(broker: &Broker, group: &str) -> Option<i32> {
    let out = broker.kafka_tool(&[
        "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
        "--bootstrap-server",
        &broker.bootstrap_all(),
        "--describe",
        "--group",
        group,
        "--state",
    ]);
    let line = out.lines().find(|l| l.starts_with(group))?;
    let inside = line.split_once('(')?.1.split_once(')')?.0;
    inside.trim().parse().ok()
}

/// The active controller: `kafka-metadata-quorum describe --status`'s LeaderId.
fn controller_from_tool(broker: &Broker) -> Option<i32> {
    let out = broker.kafka_tool(&[
        "org.apache.kafka.tools.MetadataQuorumCommand",
        "--bootstrap-server",
        &broker.bootstrap_all(),
        "describe",
        "--status",
    ]);
    out.lines()
        .find(|l| l.trim_start().starts_with("LeaderId:"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
}

/// The active controller as the nodes' KRaft `quorum-state` files say: the
/// leader of the highest epoch any node has written (no JVM to start).
fn controller_from_quorum_state(broker: &Broker) -> Option<i32> {
    let field = |text: &str, name: &str| -> Option<i64> {
        let rest = text.split(&format!("\"{name}\":")).nth(1)?;
        rest.split([',', '}']).next()?.trim().parse().ok()
    };
    (1..=broker.nodes())
        .filter_map(|id| {
            let file = broker
                .node_dir(id)
                .join("data/__cluster_metadata-0/quorum-state");
            let text = std::fs::read_to_string(file).ok()?;
            Some((field(&text, "leaderEpoch")?, field(&text, "leaderId")?))
        })
        .filter(|(_, leader)| *leader > 0)
        .max()
        .map(|(_, leader)| leader as i32)
}

/// Waits until every partition of `topics` and of `__consumer_offsets` has a
/// leader and all three replicas in sync; returns what is still short after
/// `timeout` (empty when healthy).
pub fn wait_fully_replicated(topics: &[String], timeout: Duration) -> Vec<String> {
    let c = metadata_client();
    let deadline = Instant::now() + timeout;
    loop {
        let mut short = Vec::new();
        match c.fetch_metadata(None, Duration::from_secs(5)) {
            Ok(md) => {
                for t in md.topics() {
                    if !(topics.iter().any(|n| n == t.name()) || t.name() == "__consumer_offsets") {
                        continue;
                    }
                    for p in t.partitions() {
                        if p.leader() < 0 || p.isr().len() < 3 {
                            short.push(format!(
                                "{}/{}: leader {}, isr {:?}",
                                t.name(),
                                p.id(),
                                p.leader(),
                                p.isr()
                            ));
                        }
                    }
                }
            }
            Err(e) => short.push(format!("metadata: {e}")),
        }
        if short.is_empty() || Instant::now() >= deadline {
            return short;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A topic's name, partitions and configs.
type TopicToMake = (String, i32, Vec<(String, String)>);

/// Creates the topics of `env` (tiers, dead-letter, cancel) and `target` with
/// replication factor 3 and `min.insync.replicas=2`.
pub async fn create_topics(env: &Env, target: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let mut specs: Vec<&kafka_delay_router::config::TopicSpec> =
        env.config.tiers.iter().map(|t| &t.spec).collect();
    specs.push(&env.config.dead_letter);
    specs.extend(env.config.cancel.as_ref());
    let mut owned: Vec<TopicToMake> = specs
        .iter()
        .map(|s| {
            let mut configs: Vec<(String, String)> = s
                .configs
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            configs.retain(|(k, _)| k != "min.insync.replicas");
            configs.push(("min.insync.replicas".into(), "2".into()));
            (s.topic.clone(), s.partitions, configs)
        })
        .collect();
    owned.push((
        target.to_string(),
        3,
        vec![("min.insync.replicas".into(), "2".into())],
    ));
    let topics: Vec<NewTopic> = owned
        .iter()
        .map(|(name, partitions, configs)| {
            configs.iter().fold(
                NewTopic::new(name, *partitions, TopicReplication::Fixed(3)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    for r in admin
        .create_topics(
            &topics,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await
        .unwrap()
    {
        r.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
    }
    let names: Vec<String> = owned.iter().map(|o| o.0.clone()).collect();
    let short =
        tokio::task::spawn_blocking(move || wait_fully_replicated(&names, Duration::from_secs(30)))
            .await
            .unwrap();
    assert!(short.is_empty(), "topics not ready: {short:?}");
    // Right after creation a node may not know yet that it leads a partition
    // (it answers NotLeaderForPartition): wait until every partition's
    // offsets can be read, as the router's start-up reads the cancel topic's.
    let names: Vec<String> = owned.iter().map(|o| o.0.clone()).collect();
    tokio::task::spawn_blocking(move || {
        let c = metadata_client();
        let deadline = Instant::now() + Duration::from_secs(30);
        for t in &names {
            let md = c.fetch_metadata(Some(t), Duration::from_secs(10)).unwrap();
            for p in md.topics()[0].partitions() {
                while let Err(e) = c.fetch_watermarks(t, p.id(), Duration::from_secs(5)) {
                    assert!(Instant::now() < deadline, "offsets of {t}/{}: {e}", p.id());
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    })
    .await
    .unwrap();
}

/// The nodes' roles: node -> how many tier partitions it leads; the group
/// coordinator by the metadata and by `kafka-consumer-groups`; the active
/// controller by the `quorum-state` files and by `kafka-metadata-quorum`.
type Roles = (
    BTreeMap<i32, usize>,
    Option<i32>,
    Option<i32>,
    Option<i32>,
    Option<i32>,
);

/// Who is what, right now (the tools asked only for the `role` about to be
/// killed).
pub fn who_is_what(broker: &Broker, tier_topics: &[String], group: &str, role: &str) -> Roles {
    let leaders = tier_leaders(tier_topics);
    let coordinator = coordinator_from_metadata(group);
    let coordinator_tool = (role == "group coordinator")
        .then(|| coordinator_from_tool(broker, group))
        .flatten();
    let controller_tool = (role == "active controller")
        .then(|| controller_from_tool(broker))
        .flatten();
    let controller = controller_from_quorum_state(broker);
    (
        leaders,
        coordinator,
        coordinator_tool,
        controller,
        controller_tool,
    )
}
