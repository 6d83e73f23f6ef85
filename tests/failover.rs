//! Broker failover: the router keeps its promise while the brokers of a
//! three-node Apache Kafka cluster are killed one at a time.
//!
//! The test starts its own cluster (scripts/broker.sh, three KRaft nodes, each
//! a broker and a controller), creates the tiers, the dead-letter, cancel and
//! target topics with replication factor 3 and `min.insync.replicas=2`, and
//! starts the router binary once. A steady 500 records/s flows for the whole
//! run (delays from 100 ms over every tier; some records carry a `delay-id`,
//! and half of those are cancelled before they are due), read by a collector
//! started before the first record. Then, one after another, it SIGKILLs the
//! broker that leads most tier partitions, the group's coordinator and the
//! active controller (a node that is more than one of these is named so),
//! restarts each after a while, and waits until every partition is fully
//! replicated again. The router is never restarted.
//!
//! It proves: nothing lost, nothing early, no record delivered whose
//! cancellation the broker acknowledged before it was due. It measures, per
//! failover, the lateness (p99, max) of the records due while the node was
//! down, whether `/readyz` (polled every 100 ms) went not-ready and when it was
//! ready again, and when deliveries were on time again; it scrapes `/metrics`
//! every second and prints which metrics moved, then feeds the scraped series
//! to `promtool test rules` with deploy/prometheus/alerts.yml and prints which
//! alerts' expressions turned true (pending) or fired.
//!
//! A failover's row counts the records that must arrive (acknowledged, and no
//! cancellation acknowledged before their due time) due from the kill until
//! the restarted node answered again; "no failover" is the records due in the second
//! half of the warm-up before the first kill, the machine's lateness without a
//! fault; the last row is the
//! whole run. Lateness is a record's first arrival at the test's reader minus
//! its due time. The group coordinator is found with `kafka-consumer-groups`
//! (and from the metadata: the leader of the group's `__consumer_offsets`
//! partition), the active controller with `kafka-metadata-quorum` (and from
//! the nodes' `quorum-state` files).
//!
//! `FAILOVER_ROUTER_FLAGS` adds flags to the router's command line.
//!
//! `cargo test --test failover -- --nocapture` runs the CI size (three tiers,
//! each node down 10 s); `FAULTS_FULL=1` (scripts/faults.sh) the full one
//! (four tiers, delays up to 40 s, each node down 30 s, longer load).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use kafka_delay_router::kafka::now_ms;
use kafka_delay_router::{DelayProducer, When};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

fn full() -> bool {
    std::env::var("FAULTS_FULL").is_ok_and(|v| v == "1")
}

/// The run's size.
struct Size {
    tiers: Vec<u64>,
    partitions: i32,
    /// Longest delay of a record (ms).
    max_delay_ms: u64,
    /// Load before the first kill.
    warmup: Duration,
    /// How long a killed node stays down.
    down: Duration,
    /// Load after a failover is healed, before the next kill.
    settle: Duration,
}

impl Size {
    fn get() -> Size {
        if full() {
            Size {
                tiers: vec![200, 1_000, 5_000, 20_000],
                partitions: 6,
                max_delay_ms: 40_000,
                warmup: Duration::from_secs(30),
                down: Duration::from_secs(30),
                settle: Duration::from_secs(20),
            }
        } else {
            Size {
                tiers: vec![200, 1_000, 5_000],
                partitions: 3,
                max_delay_ms: 10_000,
                warmup: Duration::from_secs(15),
                down: Duration::from_secs(10),
                settle: Duration::from_secs(3),
            }
        }
    }
}

const RATE_PER_S: u64 = 500;

// --- HTTP: /readyz and /metrics ---------------------------------------------

fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status line"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Prometheus text as series (`name{labels}`) -> value.
fn parse_metrics(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// What the pollers saw: `/readyz` every 100 ms, `/metrics` every second.
#[derive(Default)]
struct Observed {
    /// (time, status; 0 when the request failed)
    ready: Vec<(i64, u16)>,
    /// (time, series) of each successful scrape
    scrapes: Vec<(i64, BTreeMap<String, f64>)>,
    scrape_failures: Vec<i64>,
}

struct Pollers {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Observed>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Pollers {
    fn start(addr: String) -> Pollers {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Observed::default()));
        let mut threads = Vec::new();
        {
            let (stop, seen, addr) = (stop.clone(), seen.clone(), addr.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let t = now_ms();
                    let status = http_get(&addr, "/readyz").map(|r| r.0).unwrap_or(0);
                    seen.lock().unwrap().ready.push((t, status));
                    std::thread::sleep(Duration::from_millis(100));
                }
            }));
        }
        {
            let (stop, seen) = (stop.clone(), seen.clone());
            threads.push(std::thread::spawn(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let t = now_ms();
                    match http_get(&addr, "/metrics") {
                        Ok((200, body)) => {
                            seen.lock().unwrap().scrapes.push((t, parse_metrics(&body)))
                        }
                        _ => seen.lock().unwrap().scrape_failures.push(t),
                    }
                    next += Duration::from_secs(1);
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            }));
        }
        Pollers {
            stop,
            seen,
            threads,
        }
    }

    fn latest(&self) -> Option<BTreeMap<String, f64>> {
        self.seen
            .lock()
            .unwrap()
            .scrapes
            .last()
            .map(|s| s.1.clone())
    }

    fn finish(self) -> Observed {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        Arc::try_unwrap(self.seen)
            .ok()
            .expect("pollers stopped")
            .into_inner()
            .unwrap()
    }
}

/// Sum of a family's series.
fn family_sum(scrape: &BTreeMap<String, f64>, family: &str) -> f64 {
    scrape
        .iter()
        .filter(|(k, _)| k.split('{').next() == Some(family))
        .map(|(_, v)| v)
        .sum()
}

// --- the cluster -------------------------------------------------------------

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
fn wait_fully_replicated(topics: &[String], timeout: Duration) -> Vec<String> {
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
async fn create_topics(env: &Env, target: &str) {
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

/// The router binary, killed if the test ends without stopping it.
struct RouterProcess(std::process::Child);

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The address the router binary serves /metrics on, from its log.
fn metrics_addr_from_log(log: &std::path::Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(addr) = text
            .lines()
            .find(|l| l.contains("serving /metrics"))
            .and_then(|l| l.split("addr=").nth(1))
            .and_then(|a| a.split_whitespace().next())
        {
            return addr.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the router did not log its metrics address: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// --- the load ------------------------------------------------------------------

/// One record of the load.
#[derive(Default, Clone)]
struct Rec {
    /// Its due time, once the broker acknowledged it in its tier.
    due: Option<i64>,
    has_id: bool,
    /// When its cancellation was acknowledged, if one was sent and acknowledged.
    cancel_acked: Option<i64>,
    cancel_failed: bool,
    send_failed: bool,
}

#[derive(Default)]
struct Book {
    recs: HashMap<String, Rec>,
    errors: Vec<String>,
}

/// Sends RATE_PER_S records a second until `stop`; every record is its own
/// task, so a send held up by a leader election does not slow the rest.
async fn run_load(
    dp: DelayProducer,
    target: String,
    max_delay_ms: u64,
    stop: Arc<AtomicBool>,
    book: Arc<Mutex<Book>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut rng = Rng(0xfa11_0fe5);
    let mut tasks = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let began = Instant::now();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        // Paced by the clock, not by the ticks: a late tick sends what is owed.
        let owed = began.elapsed().as_millis() as u64 * RATE_PER_S / 1000;
        while i < owed {
            let value = format!("fo-{i}");
            i += 1;
            let delay_ms = match rng.below(100) {
                0..=29 => 100 + rng.below(900),
                30..=69 => 1_000 + rng.below(4_000),
                _ => 5_000 + rng.below(max_delay_ms - 5_000),
            };
            let has_id = rng.below(100) < 40;
            let cancel_after = (has_id && rng.below(2) == 0)
                .then(|| Duration::from_millis(delay_ms * (10 + rng.below(80)) / 100));
            book.lock().unwrap().recs.insert(
                value.clone(),
                Rec {
                    has_id,
                    ..Rec::default()
                },
            );
            let headers: Vec<(String, Vec<u8>)> = if has_id {
                vec![(
                    kafka_delay_router::cancel::ID_HEADER.to_string(),
                    value.as_bytes().to_vec(),
                )]
            } else {
                Vec::new()
            };
            {
                let (dp, target, book, value) =
                    (dp.clone(), target.clone(), book.clone(), value.clone());
                tasks.push(tokio::spawn(async move {
                    let sent = dp
                        .send(
                            &target,
                            Some(value.as_bytes()),
                            Some(value.as_bytes()),
                            &headers,
                            When::After(Duration::from_millis(delay_ms)),
                        )
                        .await;
                    let mut b = book.lock().unwrap();
                    match sent {
                        Ok(s) => b.recs.get_mut(&value).unwrap().due = Some(s.deliver_at_ms),
                        Err(e) => {
                            b.recs.get_mut(&value).unwrap().send_failed = true;
                            b.errors.push(format!("send {value}: {e}"));
                        }
                    }
                }));
            }
            if let Some(after) = cancel_after {
                let (dp, book) = (dp.clone(), book.clone());
                tasks.push(tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let cancelled = dp.cancel(value.as_bytes(), None).await;
                    let mut b = book.lock().unwrap();
                    match cancelled {
                        Ok(c) => b.recs.get_mut(&value).unwrap().cancel_acked = Some(c.acked_ms),
                        Err(e) => {
                            b.recs.get_mut(&value).unwrap().cancel_failed = true;
                            b.errors.push(format!("cancel {value}: {e}"));
                        }
                    }
                }));
            }
        }
    }
    tasks
}

// --- analysis ------------------------------------------------------------------

/// One failover: which node, what it was, and when.
struct Failover {
    scenario: String,
    node: u16,
    kill_at: i64,
    back_at: i64,
    healthy_at: i64,
}

fn p99(sorted: &[i64]) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() * 99).div_ceil(100)).max(1) - 1]
}

/// The first non-200 `/readyz` answer in `[from, to)` and the first 200 after it.
fn not_ready_span(ready: &[(i64, u16)], from: i64, to: i64) -> Option<(i64, Option<i64>)> {
    let mut it = ready.iter().filter(|(t, _)| *t >= from && *t < to);
    let down = it.find(|(_, s)| *s != 200)?.0;
    let up = it.find(|(_, s)| *s == 200).map(|r| r.0);
    Some((down, up))
}

/// Families worth showing when they move (the flow counters always move).
const WATCHED: &[&str] = &[
    "kafka_delay_router_producer_errors_total",
    "kafka_delay_router_consumer_errors_total",
    "kafka_delay_router_rebalances_total",
    "kafka_delay_router_producer_replacements_total",
    "kafka_delay_router_ready",
    "kafka_delay_router_dead_letters_blocked",
    "kafka_delay_router_partitions_assigned",
    "kafka_delay_router_consumer_lag",
    "kafka_delay_router_head_overdue_seconds",
    "kafka_delay_router_cancel_view_lag_seconds",
    "kafka_delay_router_records_held",
    "kafka_delay_router_held_bytes",
];

/// The watched series that moved in `[from, to]`: counters by their increase,
/// gauges from their value before to their extreme during.
fn moved_metrics(obs: &Observed, from: i64, to: i64, prefix: &str) -> Vec<String> {
    let before = obs.scrapes.iter().rev().find(|(t, _)| *t < from);
    let during: Vec<&BTreeMap<String, f64>> = obs
        .scrapes
        .iter()
        .filter(|(t, _)| *t >= from && *t <= to)
        .map(|(_, s)| s)
        .collect();
    let (Some((_, before)), Some(last)) = (before, during.last()) else {
        return vec!["no scrapes around this failover".into()];
    };
    let mut out = Vec::new();
    let keys: BTreeSet<&String> = during.iter().flat_map(|s| s.keys()).collect();
    for key in keys {
        let family = key.split('{').next().unwrap();
        if !WATCHED.contains(&family) {
            continue;
        }
        let short = key.replace(&format!("{prefix}-"), "");
        let b = before.get(key).copied().unwrap_or(0.0);
        if family.ends_with("_total") {
            let inc = last.get(key).copied().unwrap_or(b) - b;
            if inc > 0.0 {
                out.push(format!("{short} +{inc}"));
            }
        } else {
            let values: Vec<f64> = during.iter().filter_map(|s| s.get(key).copied()).collect();
            let max = values.iter().copied().fold(f64::MIN, f64::max);
            let min = values.iter().copied().fold(f64::MAX, f64::min);
            let extreme = if (b - min).abs() > (max - b).abs() {
                min
            } else {
                max
            };
            let big = match family {
                "kafka_delay_router_head_overdue_seconds" => (extreme - b).abs() >= 1.0,
                "kafka_delay_router_cancel_view_lag_seconds" => (extreme - b).abs() >= 1.0,
                "kafka_delay_router_records_held" | "kafka_delay_router_held_bytes" => {
                    extreme > 2.0 * b.max(1.0)
                }
                "kafka_delay_router_consumer_lag" => extreme > 2.0 * b.max(10.0),
                _ => extreme != b,
            };
            if big {
                out.push(format!("{short} {b} -> {extreme}"));
            }
        }
    }
    let failures = obs
        .scrape_failures
        .iter()
        .filter(|t| **t >= from && **t <= to)
        .count();
    if failures > 0 {
        out.push(format!("{failures} scrapes failed"));
    }
    out
}

// --- alerts: the scraped series through promtool --------------------------------

/// A duration as promtool prints it (`1m4s`, `45s`, `1h2m3s`) in seconds.
fn promtool_secs(text: &str) -> Option<i64> {
    let (mut total, mut number) = (0i64, String::new());
    for c in text.trim().chars() {
        match c {
            '0'..='9' => number.push(c),
            'h' | 'm' | 's' => {
                let n: i64 = number.parse().ok()?;
                number.clear();
                total += n * match c {
                    'h' => 3600,
                    'm' => 60,
                    _ => 1,
                };
            }
            _ => return None,
        }
    }
    number.is_empty().then_some(total)
}

/// `alert name -> for` from deploy/prometheus/alerts.yml.
fn alert_fors(rules: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in rules.lines() {
        let l = line.trim();
        if let Some(name) = l.strip_prefix("- alert:") {
            current = Some(name.trim().to_string());
            out.insert(name.trim().to_string(), "none".to_string());
        } else if let (Some(f), Some(name)) = (l.strip_prefix("for:"), &current) {
            out.insert(name.clone(), f.trim().to_string());
        }
    }
    out
}

/// Feeds the scrapes (on a 1 s grid from the first) to `promtool test rules`
/// with the repository's alert rules and asks, for each `(label, eval time,
/// expression)`, what `ALERTS` said; returns label -> alert/state strings, or
/// why it could not run.
fn promtool_alerts(
    obs: &Observed,
    queries: &[(String, i64, String)],
) -> Result<BTreeMap<String, Vec<String>>, String> {
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .ok_or("promtool is not installed (apt-get install prometheus)")?;
    let t0 = obs.scrapes.first().ok_or("no scrapes")?.0;
    let t_end = obs.scrapes.last().unwrap().0;
    let steps = ((t_end - t0) / 1000) as usize;
    let keys: BTreeSet<&String> = obs.scrapes.iter().flat_map(|s| s.1.keys()).collect();
    let mut yaml = String::new();
    let rules =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml");
    yaml.push_str(&format!(
        "rule_files: ['{}']\nevaluation_interval: 1s\ntests:\n  - interval: 1s\n    input_series:\n",
        rules.display()
    ));
    let job = "job=\"kafka-delay-router\",instance=\"router\"";
    yaml.push_str(&format!(
        "      - series: 'up{{{job}}}'\n        values: '1x{steps}'\n"
    ));
    for key in keys {
        let series = match key.split_once('{') {
            Some((name, rest)) if rest.starts_with('}') => format!("{name}{{{job}}}"),
            Some((name, rest)) => format!("{name}{{{job},{rest}"),
            None => format!("{key}{{{job}}}"),
        };
        let mut values = Vec::with_capacity(steps + 1);
        let mut j = 0;
        for k in 0..=steps {
            let at = t0 + k as i64 * 1000;
            while j + 1 < obs.scrapes.len() && obs.scrapes[j + 1].0 <= at {
                j += 1;
            }
            let (t, s) = &obs.scrapes[j];
            match s.get(key) {
                Some(v) if *t <= at && at - *t < 2_000 && v.is_finite() => {
                    values.push(format!("{v}"))
                }
                _ => values.push("_".into()),
            }
        }
        yaml.push_str(&format!(
            "      - series: '{series}'\n        values: '{}'\n",
            values.join(" ")
        ));
    }
    yaml.push_str("    promql_expr_test:\n");
    for (_, at, expr) in queries {
        let secs = ((at - t0) / 1000).clamp(0, steps as i64);
        yaml.push_str(&format!(
            "      - expr: '{expr}'\n        eval_time: {secs}s\n        exp_samples: []\n"
        ));
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = dir.path().join("failover_alerts_test.yml");
    std::fs::write(&file, &yaml).map_err(|e| e.to_string())?;
    let out = std::process::Command::new(promtool)
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .map_err(|e| e.to_string())?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // An expression that returned nothing passed (exp_samples: []); one that
    // returned alerts failed, and promtool printed what it got.
    let mut answers: BTreeMap<String, Vec<String>> =
        queries.iter().map(|q| (q.0.clone(), Vec::new())).collect();
    let mut current: Option<usize> = None;
    for line in text.lines() {
        if let Some(rest) = line.trim().strip_prefix("expr: ") {
            let secs: Option<i64> = rest
                .split("time: ")
                .nth(1)
                .and_then(|t| t.split(',').next())
                .and_then(promtool_secs);
            let expr = rest
                .split("\", time")
                .next()
                .unwrap_or("")
                .trim_matches('"');
            current = queries.iter().position(|(_, at, e)| {
                e == expr && Some(((at - t0) / 1000).clamp(0, steps as i64)) == secs
            });
        } else if let (Some(got), Some(i)) = (line.trim().strip_prefix("got: "), current) {
            for sample in got.split('{').skip(1) {
                let label = |name: &str| {
                    sample
                        .split(&format!("{name}=\""))
                        .nth(1)
                        .and_then(|v| v.split('"').next())
                        .unwrap_or("?")
                        .to_string()
                };
                let tier = label("tier");
                let error = label("error");
                let mut s = format!("{} ({})", label("alertname"), label("alertstate"));
                if error != "?" {
                    s.push_str(&format!(" error={error}"));
                }
                if tier != "?" {
                    s.push_str(&format!(" tier={tier}"));
                }
                answers.get_mut(&queries[i].0).unwrap().push(s);
            }
        }
    }
    if !out.status.success() && answers.values().all(|v| v.is_empty()) {
        return Err(format!("promtool failed: {text}"));
    }
    Ok(answers)
}

// --- the test ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_failover_loses_nothing() {
    let started = Instant::now();
    let size = Size::get();
    let dir = tempfile::tempdir().unwrap();
    let broker = tokio::task::block_in_place(|| {
        Broker::start_cluster(dir.path(), 3, &BrokerSetup::default())
    });
    // Every helper of this test binary talks to this cluster.
    std::env::set_var("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_all());
    println!(
        "cluster: Apache Kafka, 3 nodes at {} ({:.0} s to start); {} cores; {}",
        broker.bootstrap_all(),
        started.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if full() { "full size" } else { "CI size" }
    );

    let cancel_topic = unique("failover-cancel");
    let env = Env::declare_with_tier_yaml(
        "failover",
        &size.tiers,
        size.partitions,
        1,
        "replication-factor: 3, configs: {min.insync.replicas: 2}",
        &format!(
            "cancel: {{topic: {cancel_topic}, partitions: 3, replication-factor: 3, configs: {{min.insync.replicas: 2}}}}\n"
        ),
    );
    let target = env.targets[0].clone();
    create_topics(&env, &target).await;
    let tier_topics: Vec<String> = env
        .config
        .tiers
        .iter()
        .map(|t| t.topic().to_string())
        .collect();
    let all_topics: Vec<String> = env
        .config
        .internal_topics()
        .iter()
        .map(|s| s.to_string())
        .chain([target.clone()])
        .collect();

    let mut col = Collector::start(&target);
    // FAILOVER_ROUTER_FLAGS adds flags to the router's command line, e.g.
    // "-X session.timeout.ms=30000 -X max.poll.interval.ms=30000".
    let flags = std::env::var("FAILOVER_ROUTER_FLAGS").unwrap_or_default();
    let flags: Vec<&str> = flags.split_whitespace().collect();
    if !flags.is_empty() {
        println!("router flags: {}", flags.join(" "));
    }
    let router = RouterProcess(spawn_router_with(&env, &flags));
    let log = env.config_path.with_file_name("router.log");
    let addr = tokio::task::block_in_place(|| metrics_addr_from_log(&log));
    let pollers = Pollers::start(addr.clone());
    let want = (size.tiers.len() as i32 * size.partitions) as f64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let assigned = pollers
            .latest()
            .map(|s| family_sum(&s, "kafka_delay_router_partitions_assigned"))
            .unwrap_or(0.0);
        let ready = http_get(&addr, "/readyz").map(|r| r.0).unwrap_or(0) == 200;
        if ready && assigned == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "router not ready with {want} partitions (assigned {assigned})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "router ready on {addr}, {want} tier partitions; topics replicated 3 times, min.insync.replicas=2"
    );

    let dp = DelayProducer::new(&kafka(), env.config.clone()).unwrap();
    // A fresh cluster creates __transaction_state at the first idempotent
    // producer's request, which takes seconds: a probe record goes through
    // the router first, so the load starts on a router that delivers.
    let probe_deadline = Instant::now() + Duration::from_secs(90);
    for n in 0.. {
        let value = format!("probe-{n}");
        let sent = tokio::time::timeout(
            Duration::from_secs(20),
            dp.send(
                &target,
                None,
                Some(value.as_bytes()),
                &[],
                When::After(Duration::from_millis(100)),
            ),
        )
        .await;
        let arrived = tokio::task::block_in_place(|| {
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                if col
                    .settle(Duration::from_millis(100))
                    .iter()
                    .any(|r| r.value_str() == value)
                {
                    return true;
                }
            }
            false
        });
        if matches!(sent, Ok(Ok(_))) && arrived {
            break;
        }
        assert!(
            Instant::now() < probe_deadline,
            "no probe record came through the router"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let book = Arc::new(Mutex::new(Book::default()));
    let load = tokio::spawn(run_load(
        dp.clone(),
        target.clone(),
        size.max_delay_ms,
        stop.clone(),
        book.clone(),
    ));
    let load_started = now_ms();
    tokio::time::sleep(size.warmup).await;

    let mut failovers: Vec<Failover> = Vec::new();
    for role in ["tier leader", "group coordinator", "active controller"] {
        // Who is what, right now.
        let (leaders, coordinator, coordinator_tool, controller, controller_tool) =
            tokio::task::block_in_place(|| {
                let leaders = tier_leaders(&tier_topics);
                let coordinator = coordinator_from_metadata(&env.group);
                let coordinator_tool = (role == "group coordinator")
                    .then(|| coordinator_from_tool(&broker, &env.group))
                    .flatten();
                let controller_tool = (role == "active controller")
                    .then(|| controller_from_tool(&broker))
                    .flatten();
                let controller = controller_from_quorum_state(&broker);
                (
                    leaders,
                    coordinator,
                    coordinator_tool,
                    controller,
                    controller_tool,
                )
            });
        let top = leaders
            .iter()
            .max_by_key(|(id, n)| (**n, -**id))
            .map(|(id, _)| *id)
            .unwrap();
        let node = match role {
            "tier leader" => top,
            "group coordinator" => coordinator_tool
                .or(coordinator)
                .expect("the group coordinator"),
            _ => controller_tool
                .or(controller)
                .expect("the active controller"),
        } as u16;
        let mut is = Vec::new();
        if top == node as i32 {
            is.push(format!(
                "leads most tier partitions ({} of {})",
                leaders.get(&top).unwrap_or(&0),
                leaders.values().sum::<usize>()
            ));
        }
        if coordinator_tool.or(coordinator) == Some(node as i32) {
            is.push("coordinates the router's group".to_string());
        }
        if controller_tool.or(controller) == Some(node as i32) {
            is.push("is the active controller".to_string());
        }
        println!(
            "failover {}: kill node {node} ({role}); it {}. Tier leaders by node {leaders:?}; \
             coordinator {coordinator:?} by metadata{}; controller {controller:?} by quorum-state{}",
            failovers.len() + 1,
            is.join(", "),
            if role == "group coordinator" {
                format!(", {coordinator_tool:?} by kafka-consumer-groups")
            } else {
                String::new()
            },
            if role == "active controller" {
                format!(", {controller_tool:?} by kafka-metadata-quorum")
            } else {
                String::new()
            }
        );
        let kill_at = now_ms();
        tokio::task::block_in_place(|| broker.kill_node(node));
        tokio::time::sleep(size.down).await;
        let restart_at = now_ms();
        tokio::task::block_in_place(|| broker.restart_node(node));
        let back_at = now_ms();
        let short = tokio::task::block_in_place(|| {
            wait_fully_replicated(&all_topics, Duration::from_secs(60))
        });
        let healthy_at = now_ms();
        println!(
            "failover {}: node {node} killed, restarted after {:.1} s, answering again after {:.1} s, \
             every partition fully replicated after {:.1} s{}",
            failovers.len() + 1,
            (restart_at - kill_at) as f64 / 1e3,
            (back_at - kill_at) as f64 / 1e3,
            (healthy_at - kill_at) as f64 / 1e3,
            if short.is_empty() {
                String::new()
            } else {
                format!(" (NOT fully replicated after 60 s: {short:?})")
            }
        );
        failovers.push(Failover {
            scenario: format!(
                "kill -9 node {node} ({}), down {} s",
                is.join(", "),
                size.down.as_secs()
            ),
            node,
            kill_at,
            back_at,
            healthy_at,
        });
        tokio::time::sleep(size.settle).await;
    }

    // The load stops; everything sent is acknowledged (or failed) and due.
    stop.store(true, Ordering::Relaxed);
    let load_stopped = now_ms();
    let tasks = load.await.unwrap();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(90), t).await;
    }
    let book = std::mem::take(&mut *book.lock().unwrap());
    let last_due = book.recs.values().filter_map(|r| r.due).max().unwrap_or(0);
    // What must arrive: acknowledged records without a cancellation
    // acknowledged before their due time.
    let mut must: HashMap<String, i64> = HashMap::new();
    let mut all_due: HashMap<String, i64> = HashMap::new();
    let mut cancelled_in_time: HashSet<String> = HashSet::new();
    let (mut with_id, mut cancelled_late, mut cancel_failed, mut send_failed) = (0, 0, 0, 0);
    for (v, r) in &book.recs {
        if r.has_id {
            with_id += 1;
        }
        if r.send_failed {
            send_failed += 1;
        }
        if r.cancel_failed {
            cancel_failed += 1;
        }
        let Some(due) = r.due else { continue };
        all_due.insert(v.clone(), due);
        match r.cancel_acked {
            Some(acked) if acked < due => {
                cancelled_in_time.insert(v.clone());
            }
            Some(_) => cancelled_late += 1,
            None if r.cancel_failed => {}
            None => {
                must.insert(v.clone(), due);
            }
        }
    }
    let wait_until = Instant::now()
        + Duration::from_millis((last_due - now_ms()).max(0) as u64)
        + Duration::from_secs(60);
    tokio::task::block_in_place(|| {
        let delivered = |seen: &[Received]| {
            seen.iter()
                .map(|r| r.value_str())
                .filter(|v| must.contains_key(v))
                .collect::<HashSet<_>>()
                .len()
        };
        while Instant::now() < wait_until && delivered(&col.seen) < must.len() {
            col.settle(Duration::from_millis(500));
        }
        // Past the last due time, and a little more, for stragglers and
        // anything cancelled that should not come.
        let quiet = Duration::from_millis((last_due + 3_000 - now_ms()).max(2_000) as u64);
        col.settle(quiet);
    });
    let got = col.seen.clone();
    let obs = pollers.finish();
    let mut router = router;
    sigterm(&router.0);
    let exit = tokio::task::block_in_place(|| wait_exit(&mut router.0, Duration::from_secs(30)));

    // --- the figures ---
    let first_arrival: HashMap<String, &Received> = got.iter().fold(HashMap::new(), |mut m, r| {
        m.entry(r.value_str()).or_insert(r);
        m
    });
    let cancelled_delivered: Vec<&String> = cancelled_in_time
        .iter()
        .filter(|v| first_arrival.contains_key(*v))
        .collect();
    let whole = tally(
        &must,
        &got.iter()
            .filter(|r| must.contains_key(&r.value_str()))
            .cloned()
            .collect::<Vec<_>>(),
    );
    let early_all = tally(&all_due, &got).early;
    println!(
        "\nload: {} records in {:.0} s ({:.0}/s), {} with a delay-id, {} cancelled and acknowledged \
         before due, {} cancellations acknowledged only after due (either outcome allowed), {} \
         sends failed, {} cancellations failed; router exit {exit}",
        book.recs.len(),
        (load_stopped - load_started) as f64 / 1e3,
        book.recs.len() as f64 * 1e3 / (load_stopped - load_started) as f64,
        with_id,
        cancelled_in_time.len(),
        cancelled_late,
        send_failed,
        cancel_failed
    );
    for e in book.errors.iter().take(5) {
        println!("detail: {e}");
    }

    let alert_rules = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml"),
    )
    .unwrap();
    let fors = alert_fors(&alert_rules);
    let mut queries = Vec::new();
    for (i, f) in failovers.iter().enumerate() {
        queries.push((
            format!("before {}", i + 1),
            f.kill_at - 1_000,
            "ALERTS".to_string(),
        ));
        let end = f.healthy_at + 5_000;
        queries.push((
            format!("during {}", i + 1),
            end,
            format!("max_over_time(ALERTS[{}s])", (end - f.kill_at) / 1000 + 1),
        ));
    }
    let run_secs =
        (obs.scrapes.last().map_or(0, |s| s.0) - obs.scrapes.first().map_or(0, |s| s.0)) / 1000 + 1;
    queries.push((
        "whole run, firing".to_string(),
        obs.scrapes.last().map_or(0, |s| s.0),
        format!("max_over_time(ALERTS{{alertstate=\"firing\"}}[{run_secs}s])"),
    ));
    let alerts = promtool_alerts(&obs, &queries);

    // The records of a set, as the collector saw them (copies included).
    let only = |set: &HashMap<String, i64>| -> Vec<Received> {
        got.iter()
            .filter(|r| set.contains_key(&r.value_str()))
            .cloned()
            .collect()
    };
    let mut rows = Vec::new();
    // Before the first kill: the lateness of this machine without a failover
    // (after the first half of the warm-up, in which the brokers' JIT warms
    // up, and until 2 s before the kill, after which a record can be late
    // because of it).
    let baseline: HashMap<String, i64> = must
        .iter()
        .filter(|(_, d)| {
            **d >= load_started + size.warmup.as_millis() as i64 / 2
                && **d < failovers[0].kill_at - 2_000
        })
        .map(|(v, d)| (v.clone(), *d))
        .collect();
    let mut base_lates: Vec<i64> = baseline
        .iter()
        .filter_map(|(v, d)| first_arrival.get(v).map(|r| r.arrived_ms - d))
        .collect();
    base_lates.sort_unstable();
    rows.push((
        "no failover (records due in the warm-up's second half)".to_string(),
        tally(&baseline, &only(&baseline)),
        p99(&base_lates),
        String::new(),
        String::new(),
    ));
    for (i, f) in failovers.iter().enumerate() {
        let next = failovers.get(i + 1).map_or(i64::MAX, |n| n.kill_at);
        let window: HashMap<String, i64> = must
            .iter()
            .filter(|(_, d)| **d >= f.kill_at && **d < f.back_at)
            .map(|(v, d)| (v.clone(), *d))
            .collect();
        let t = tally(&window, &only(&window));
        let mut lates: Vec<i64> = window
            .iter()
            .filter_map(|(v, d)| first_arrival.get(v).map(|r| r.arrived_ms - d))
            .collect();
        lates.sort_unstable();
        // On time again: the first due time after the kill from which every
        // record due in the next 10 s was at most 1 s late.
        let mut late_dues: Vec<i64> = must
            .iter()
            .filter(|(_, d)| **d >= f.kill_at && **d < next)
            .filter_map(|(v, d)| first_arrival.get(v).map(|r| (*d, r.arrived_ms - d)))
            .filter(|(_, late)| *late > 1_000)
            .map(|(due, _)| due)
            .collect();
        late_dues.sort_unstable();
        let mut since = f.kill_at;
        while let Some(last) = late_dues
            .iter()
            .filter(|d| **d >= since && **d < since + 10_000)
            .max()
        {
            since = last + 1;
        }
        let last_late = (since > f.kill_at).then_some(since);
        let span = not_ready_span(&obs.ready, f.kill_at, next);
        let ready_again = match span {
            Some((_, Some(up))) => format!("{:.1}", (up - f.kill_at) as f64 / 1e3),
            Some((_, None)) => "never".to_string(),
            None => "stayed ready".to_string(),
        };
        let on_time = last_late.map_or("at once".to_string(), |at| {
            format!("{:.1}", (at - f.kill_at) as f64 / 1e3)
        });
        println!(
            "\nfailover {} (node {}): {} records due while it was down (kill to restart answered, {:.1} s)",
            i + 1,
            f.node,
            window.len(),
            (f.back_at - f.kill_at) as f64 / 1e3
        );
        match span {
            Some((down, up)) => println!(
                "  /readyz: not ready {:.1} s after the kill, ready again {}",
                (down - f.kill_at) as f64 / 1e3,
                up.map_or("never".into(), |u| format!(
                    "{:.1} s after",
                    (u - f.kill_at) as f64 / 1e3
                ))
            ),
            None => println!("  /readyz: answered 200 throughout"),
        }
        println!(
            "  deliveries on time again {on_time} s after the kill (every record due in the \
             10 s after that at most 1 s late)"
        );
        println!(
            "  metrics moved (kill to fully replicated + 5 s): {}",
            moved_metrics(&obs, f.kill_at, f.healthy_at + 5_000, &env.prefix).join("; ")
        );
        if let Ok(a) = &alerts {
            let before: BTreeSet<&String> = a[&format!("before {}", i + 1)].iter().collect();
            let during: Vec<String> = a[&format!("during {}", i + 1)]
                .iter()
                .map(|s| {
                    let name = s.split(' ').next().unwrap_or("");
                    let new = if before.contains(s) { "" } else { "new, " };
                    format!(
                        "{} [{new}for: {}]",
                        s.replace(&format!("{}-", env.prefix), ""),
                        fors.get(name).map_or("?", |f| f.as_str())
                    )
                })
                .collect();
            println!(
                "  alerts (promtool, ALERTS over the failover): {}",
                if during.is_empty() {
                    "none pending or firing".to_string()
                } else {
                    during.join("; ")
                }
            );
        }
        rows.push((f.scenario.clone(), t, p99(&lates), ready_again, on_time));
    }
    match &alerts {
        Ok(a) => println!(
            "\nalerts firing at any time in the run (promtool): {}",
            if a["whole run, firing"].is_empty() {
                "none".to_string()
            } else {
                a["whole run, firing"]
                    .join("; ")
                    .replace(&format!("{}-", env.prefix), "")
            }
        ),
        Err(e) => println!("\nalerts not evaluated: {e}"),
    }

    // Lateness by due time, with the kills and restarts marked.
    let bucket_ms: i64 = if full() { 10_000 } else { 5_000 };
    let mut buckets: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (v, d) in &must {
        if let Some(r) = first_arrival.get(v) {
            buckets
                .entry((d - load_started) / bucket_ms)
                .or_default()
                .push(r.arrived_ms - d);
        }
    }
    println!("\nlateness by due time (seconds after the load began):");
    for (b, lates) in buckets.iter_mut() {
        lates.sort_unstable();
        let (from, to) = (
            load_started + b * bucket_ms,
            load_started + (b + 1) * bucket_ms,
        );
        let marks: Vec<String> = failovers
            .iter()
            .flat_map(|f| {
                [
                    (f.kill_at, format!("node {} killed", f.node)),
                    (f.back_at, format!("node {} answering again", f.node)),
                ]
            })
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(t, what)| format!("{what} at {:.1} s", (t - load_started) as f64 / 1e3))
            .collect();
        println!(
            "detail: due {:>4}-{:<4} s: {:>5} records, p50 {:>6} ms, p99 {:>6} ms, max {:>6} ms{}",
            b * bucket_ms / 1000,
            (b + 1) * bucket_ms / 1000,
            lates.len(),
            lates[lates.len() / 2],
            p99(lates),
            lates[lates.len() - 1],
            if marks.is_empty() {
                String::new()
            } else {
                format!("   <- {}", marks.join(", "))
            }
        );
    }

    let mut all_lates: Vec<i64> = must
        .iter()
        .filter_map(|(v, d)| first_arrival.get(v).map(|r| r.arrived_ms - d))
        .collect();
    all_lates.sort_unstable();
    println!(
        "\n| scenario | sent | delivered | duplicated | lost | early | p99 late during outage (ms) | max late (ms) | router ready again after (s) | on time again after (s) |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for (scenario, t, p, ready, on_time) in &rows {
        println!(
            "| {scenario} | {} | {} | {} | {} | {} | {p} | {} | {ready} | {on_time} |",
            t.sent, t.delivered, t.duplicated, t.lost, t.early, t.max_late_ms
        );
    }
    println!(
        "| whole run, {:.0} s at {RATE_PER_S}/s | {} | {} | {} | {} | {} | {} (all records) | {} | | |",
        (load_stopped - load_started) as f64 / 1e3,
        whole.sent,
        whole.delivered,
        whole.duplicated,
        whole.lost,
        early_all,
        p99(&all_lates),
        whole.max_late_ms
    );
    println!(
        "cancelled before due and delivered anyway: {} of {}; test took {:.0} s",
        cancelled_delivered.len(),
        cancelled_in_time.len(),
        started.elapsed().as_secs_f64()
    );

    // The router's log outlives the test's folder (what it did at each kill).
    let kept = std::env::temp_dir().join(format!("{}-router.log", env.prefix));
    if std::fs::copy(&log, &kept).is_ok() {
        println!("detail: the router's log is kept in {}", kept.display());
    }
    let failed = whole.lost > 0 || early_all > 0 || !cancelled_delivered.is_empty();
    if failed {
        let missing: Vec<&String> = must
            .keys()
            .filter(|v| !first_arrival.contains_key(*v))
            .take(10)
            .collect();
        println!(
            "diagnosis: some lost: {missing:?}; some cancelled but delivered: {:?}",
            cancelled_delivered.iter().take(10).collect::<Vec<_>>()
        );
    }
    assert_eq!(whole.lost, 0, "records lost");
    assert_eq!(early_all, 0, "records delivered early");
    assert!(
        cancelled_delivered.is_empty(),
        "{} records delivered although their cancellation was acknowledged before they were due",
        cancelled_delivered.len()
    );
    assert!(whole.sent > 0 && failovers.len() == 3);
    drop(broker);
}
