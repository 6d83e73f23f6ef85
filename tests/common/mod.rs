//! Shared helpers for the broker tests: unique topic and group names, a short
//! test tier set created on the real broker, and raw producing (here); a
//! verifying consumer that records when each record arrived and the tally of
//! what arrived ([`collect`]); the router as a child process and its metrics
//! ([`router`]); the set-up most router tests share, topics, collector,
//! router and producers in one builder ([`rig`]); an Apache Kafka broker of
//! a test's own ([`broker`]) and test certificates for it ([`certs`]).
#![allow(dead_code)]

mod broker;
mod certs;
mod collect;
mod rig;
mod router;

// Not every test binary uses every helper.
#[allow(unused_imports)]
pub use broker::*;
#[allow(unused_imports)]
pub use certs::*;
#[allow(unused_imports)]
pub use collect::*;
#[allow(unused_imports)]
pub use rig::*;
#[allow(unused_imports)]
pub use router::*;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kafka_delay_router::admin;
use kafka_delay_router::kafka::{now_ms, KafkaSettings};
use kafka_delay_router::router::{Router, RouterOptions};
use kafka_delay_router::{DelayProducer, TopicsConfig, When};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// The broker under test; `scripts/test.sh` starts Apache Kafka and sets this.
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").expect(
        "KAFKA_BOOTSTRAP_SERVERS is not set: run the tests with scripts/test.sh, which starts a broker, \
         or start one (scripts/broker.sh start 9092) and export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092",
    )
}

/// Extra librdkafka settings for every client the helpers make (a scenario that
/// needs them sets and clears them; the fault suite runs one scenario at a time).
static EXTRA_SETTINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The group protocol of the routers a test starts: `KDR_GROUP_PROTOCOL`
/// (the binary reads the same variable), classic by default, so that
/// `KDR_GROUP_PROTOCOL=consumer cargo test` runs every broker test under KIP-848.
pub fn group_protocol() -> kafka_delay_router::membership::GroupProtocol {
    std::env::var("KDR_GROUP_PROTOCOL")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| v.parse().expect("KDR_GROUP_PROTOCOL: classic or consumer"))
        .unwrap_or_default()
}

pub fn set_extra_settings(settings: &[&str]) {
    *EXTRA_SETTINGS.lock().unwrap() = settings.iter().map(|s| s.to_string()).collect();
}

pub fn kafka() -> KafkaSettings {
    KafkaSettings::new(bootstrap())
        .with_overrides(&EXTRA_SETTINGS.lock().unwrap())
        .unwrap()
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000_000;
    format!("{prefix}-{}-{n}-{nanos}", std::process::id())
}

/// Writes a topics file into a new temporary folder (removed when dropped).
pub fn topics_file(yaml: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topics.yaml");
    std::fs::write(&path, yaml).unwrap();
    (dir, path)
}

/// A test environment: tiers, dead-letter topic and target topics on the broker.
pub struct Env {
    pub prefix: String,
    pub config: TopicsConfig,
    pub config_path: std::path::PathBuf,
    pub targets: Vec<String>,
    pub group: String,
    _dir: tempfile::TempDir,
}

impl Env {
    /// Creates tiers with the given delays (ms), each with `partitions`, the
    /// dead-letter topic, and `targets` target topics.
    pub async fn new(name: &str, tier_ms: &[u64], partitions: i32, targets: usize) -> Env {
        Self::with_extra(name, tier_ms, partitions, targets, "").await
    }

    pub async fn with_extra(
        name: &str,
        tier_ms: &[u64],
        partitions: i32,
        targets: usize,
        extra_yaml: &str,
    ) -> Env {
        let env = Self::declare(name, tier_ms, partitions, targets, extra_yaml);
        env.create().await;
        env
    }

    /// Creates the declared topics on the broker and waits until they show.
    async fn create(&self) {
        let report = admin::create_topics(&self.config, &kafka(), false)
            .await
            .unwrap();
        assert_eq!(report.drift, 0, "{:?}", report.lines);
        if !self.targets.is_empty() {
            admin::create_target_topics(&kafka(), &self.targets, false)
                .await
                .unwrap();
        }
        wait_for_topics(self.all_topics());
    }

    /// The topics file and names only; the caller creates the topics (on a
    /// broker without CreateTopics, such as librdkafka's mock cluster).
    pub fn declare(
        name: &str,
        tier_ms: &[u64],
        partitions: i32,
        targets: usize,
        extra_yaml: &str,
    ) -> Env {
        Self::declare_with_tier_yaml(name, tier_ms, partitions, targets, "", extra_yaml)
    }

    /// Like [`Env::with_extra`], with `tier_yaml` added to every tier's
    /// entry (e.g. `configs: {max.message.bytes: '2000000'}`).
    pub async fn with_tier_yaml(
        name: &str,
        tier_ms: &[u64],
        partitions: i32,
        targets: usize,
        tier_yaml: &str,
        extra_yaml: &str,
    ) -> Env {
        let env =
            Self::declare_with_tier_yaml(name, tier_ms, partitions, targets, tier_yaml, extra_yaml);
        env.create().await;
        env
    }

    pub fn declare_with_tier_yaml(
        name: &str,
        tier_ms: &[u64],
        partitions: i32,
        targets: usize,
        tier_yaml: &str,
        extra_yaml: &str,
    ) -> Env {
        let prefix = unique(name);
        let tier_yaml = if tier_yaml.is_empty() {
            String::new()
        } else {
            format!(", {tier_yaml}")
        };
        let mut yaml = String::from("tiers:\n");
        for ms in tier_ms {
            yaml.push_str(&format!(
                "  - {{topic: {prefix}-t{ms}, delay: {ms}ms, partitions: {partitions}, retention: 1d{tier_yaml}}}\n"
            ));
        }
        yaml.push_str(&format!(
            "dead-letter: {{topic: {prefix}-dlq, partitions: 1}}\n{extra_yaml}"
        ));
        // Tests not about the target allow-list let the router deliver anywhere.
        if !extra_yaml.contains("targets:") {
            yaml.push_str("targets: {allow: ['*']}\n");
        }
        let (dir, config_path) = topics_file(&yaml);
        let config = TopicsConfig::load(&config_path).unwrap();
        let targets: Vec<String> = (0..targets)
            .map(|i| format!("{prefix}-target{i}"))
            .collect();
        Env {
            group: format!("{prefix}-group"),
            prefix,
            config,
            config_path,
            targets,
            _dir: dir,
        }
    }

    /// Tiers, dead-letter topic and targets.
    pub fn all_topics(&self) -> Vec<String> {
        self.config
            .internal_topics()
            .iter()
            .map(|s| s.to_string())
            .chain(self.targets.iter().cloned())
            .collect()
    }

    pub fn tier(&self, i: usize) -> &str {
        self.config.tiers[i].topic()
    }

    pub fn dlq(&self) -> &str {
        &self.config.dead_letter.topic
    }

    pub fn options(&self) -> RouterOptions {
        let mut o = RouterOptions::new(kafka());
        o.group_id = self.group.clone();
        o.drain_timeout = Duration::from_secs(5);
        o.revoke_timeout = Duration::from_secs(5);
        o.group_protocol = group_protocol();
        o
    }

    /// [`Env::options`] in exactly-once mode: transactional ids start with
    /// the group id, a transaction commits every 100 ms.
    pub fn exactly_once_options(&self) -> RouterOptions {
        let mut o = self.options();
        o.exactly_once = Some(kafka_delay_router::exactly_once::ExactlyOnce {
            id_prefix: self.group.clone(),
            interval: Duration::from_millis(100),
        });
        o
    }

    pub async fn start_router(&self) -> Router {
        Router::start(self.config.clone(), self.options())
            .await
            .unwrap()
    }
}

fn wait_for_topics(topics: Vec<String>) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let md = consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .unwrap();
        let present: Vec<&str> = md
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.name())
            .collect();
        if topics.iter().all(|t| present.contains(&t.as_str())) {
            return;
        }
        assert!(Instant::now() < deadline, "topics not visible: {topics:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A plain producer, as a user's application would use.
pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("linger.ms", "0")
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap()
}

/// Produces one record with raw headers and waits for the acknowledgement.
pub async fn produce(
    p: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    hdrs: &[(&str, Option<&[u8]>)],
    timestamp: Option<i64>,
) -> (i32, i64) {
    try_produce(p, topic, partition, key, value, hdrs, timestamp)
        .await
        .unwrap()
}

/// Like [`produce`], returning the broker's refusal instead of panicking.
pub async fn try_produce(
    p: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    hdrs: &[(&str, Option<&[u8]>)],
    timestamp: Option<i64>,
) -> Result<(i32, i64), rdkafka::error::KafkaError> {
    let h = hdrs.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(Header { key: k, value: *v })
    });
    let mut r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(h);
    if let Some(k) = key {
        r = r.key(k);
    }
    if let Some(v) = value {
        r = r.payload(v);
    }
    if let Some(p) = partition {
        r = r.partition(p);
    }
    if let Some(ts) = timestamp {
        r = r.timestamp(ts);
    }
    let d = p
        .send(r, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)?;
    Ok((d.partition, d.offset))
}

/// Kafka's `Utils.murmur2`, as the Java producer hashes record keys.
pub fn murmur2(key: &[u8]) -> i32 {
    let m: u32 = 0x5bd1_e995;
    let len = key.len();
    let mut h: u32 = 0x9747_b28c ^ (len as u32);
    let chunks = len / 4;
    for c in key.chunks_exact(4) {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(m);
        k ^= k >> 24;
        k = k.wrapping_mul(m);
        h = h.wrapping_mul(m);
        h ^= k;
    }
    let tail = &key[chunks * 4..];
    if tail.len() >= 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(m);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(m);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java producer's default partitioner picks for a keyed record.
pub fn java_partition(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) as u32 & 0x7fff_ffff) % partitions as u32) as i32
}

/// Produces `n` records with deadlines spread over 0.3 to 3.3 s through the
/// DelayProducer; returns value -> deadline.
pub async fn produce_mixed(env: &Env, n: usize, tag: &str) -> HashMap<String, i64> {
    produce_spread(env, n, tag, 300, 3_000).await
}

/// Produces `n` records with deadlines spread over `min_ms` to `min_ms + span_ms`
/// through the DelayProducer; returns value -> deadline.
pub async fn produce_spread(
    env: &Env,
    n: usize,
    tag: &str,
    min_ms: u64,
    span_ms: u64,
) -> HashMap<String, i64> {
    let dp = DelayProducer::new(&kafka(), env.config.clone()).unwrap();
    let target = env.targets[0].clone();
    let mut due = HashMap::new();
    let values: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    let delay_of = |i: usize| Duration::from_millis(min_ms + (i as u64 * 7919) % span_ms.max(1));
    let sends = values.iter().enumerate().map(|(i, value)| {
        dp.send(
            &target,
            Some(value.as_bytes()),
            Some(value.as_bytes()),
            &[],
            When::After(delay_of(i)),
        )
    });
    let results = futures::future::join_all(sends).await;
    for (i, (value, sent)) in values.iter().zip(results).enumerate() {
        // As a user's producer would: a send that failed (the broker restarting,
        // say) is sent again, a few times, before the test gives up.
        let mut sent = sent;
        for _ in 0..10 {
            if sent.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            sent = dp
                .send(
                    &target,
                    Some(value.as_bytes()),
                    Some(value.as_bytes()),
                    &[],
                    When::After(delay_of(i)),
                )
                .await;
        }
        due.insert(value.clone(), sent.unwrap().deliver_at_ms);
    }
    due
}

/// A small deterministic generator (xorshift), so a failing run can be repeated.
pub struct Rng(pub u64);

impl Rng {
    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Sends one record through the DelayProducer; returns its deadline.
pub async fn send_after(dp: &DelayProducer, target: &str, value: &str, delay: Duration) -> i64 {
    dp.send(
        target,
        None,
        Some(value.as_bytes()),
        &[],
        When::After(delay),
    )
    .await
    .unwrap()
    .deliver_at_ms
}

/// Sends one record per delay (ms) to `target` through the tiers with a
/// DelayProducer on `kafka`, then watches `target` until all arrived (or
/// `timeout`) and asserts none was delivered before its deadline.
pub async fn deliver_through_tiers(
    kafka: &KafkaSettings,
    config: TopicsConfig,
    target: &str,
    delays_ms: &[u64],
    timeout: Duration,
) {
    let since = now_ms();
    let producer = DelayProducer::new(kafka, config).unwrap();
    for (i, ms) in delays_ms.iter().enumerate() {
        let v = format!("{target}-{i}");
        producer
            .send(
                target,
                None,
                Some(v.as_bytes()),
                &[],
                When::After(Duration::from_millis(*ms)),
            )
            .await
            .unwrap();
    }
    let n = delays_ms.len();
    let (kafka, name) = (kafka.clone(), target.to_string());
    let seen = tokio::task::spawn_blocking(move || {
        kafka_delay_router::watch::watch(&kafka, &name, since - 1_000, Some(n), timeout, |_| {})
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(seen.len(), n, "records delivered to {target}");
    for a in &seen {
        let late = a.lateness_ms().expect("deliver-at header");
        assert!(late >= 0, "early by {} ms", -late);
    }
}

/// Produces `n` records over `over`, in chunks, with deadlines `min_ms..min_ms+span_ms` ahead.
pub async fn produce_over(
    env: &Env,
    n: usize,
    over: Duration,
    min_ms: u64,
    span_ms: u64,
    tag: &str,
) -> HashMap<String, i64> {
    let chunks = 10.max(n / 500);
    let mut due = HashMap::new();
    for c in 0..chunks {
        let size = n / chunks + usize::from(c < n % chunks);
        due.extend(produce_spread(env, size, &format!("{tag}{c}"), min_ms, span_ms).await);
        tokio::time::sleep(over / chunks as u32).await;
    }
    due
}

/// Creates `topic` with `partitions` partitions (replication factor 1) on the
/// cluster at `servers` and waits until its partitions show in metadata.
/// Blocking: from async code, call it through `spawn_blocking`.
pub fn create_topic(servers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .unwrap();
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
    }
    // Wait until the topic's partitions show in metadata.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .unwrap();
        if md.topics()[0].error().is_none()
            && md.topics()[0].partitions().len() == partitions as usize
        {
            return;
        }
        assert!(Instant::now() < deadline, "{topic} not visible in metadata");
        std::thread::sleep(Duration::from_millis(100));
    }
}
