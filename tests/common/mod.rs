//! Shared helpers for the broker tests: unique topic and group names, a short
//! test tier set created on the real broker, raw producing, and a verifying
//! consumer that records when each record arrived.
#![allow(dead_code)]

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kafka_delay_router::admin;
use kafka_delay_router::headers;
use kafka_delay_router::kafka::{now_ms, KafkaSettings, TracingContext};
use kafka_delay_router::router::{Router, RouterOptions};
use kafka_delay_router::{DelayProducer, TopicsConfig, When};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The broker under test; `scripts/test.sh` starts Tansu and sets this.
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").expect(
        "KAFKA_BOOTSTRAP_SERVERS is not set: run the tests with scripts/test.sh, which starts a broker, \
         or start one (scripts/broker.sh start 9092) and export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092",
    )
}

/// Tansu 0.6 serves a fetch from an offset inside a multi-record batch from the
/// *next* batch (the rest of the batch is skipped) and reports the high
/// watermark as the last batch's base offset + 1. Any consumer that commits or
/// pauses mid-batch would lose records on it, so every producer in the tests
/// writes one record per batch. Real Kafka needs none of this.
pub const TANSU_SAFE_BATCHING: &str = "batch.num.messages=1";

/// Extra librdkafka settings for every client the helpers make (a scenario that
/// needs them sets and clears them; the fault suite runs one scenario at a time).
static EXTRA_SETTINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

pub fn set_extra_settings(settings: &[&str]) {
    *EXTRA_SETTINGS.lock().unwrap() = settings.iter().map(|s| s.to_string()).collect();
}

pub fn kafka() -> KafkaSettings {
    KafkaSettings::new(bootstrap())
        .with_overrides(&[TANSU_SAFE_BATCHING.to_string()])
        .unwrap()
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
        let report = admin::create_topics(&env.config, &kafka(), false)
            .await
            .unwrap();
        assert_eq!(report.drift, 0, "{:?}", report.lines);
        if !env.targets.is_empty() {
            admin::create_target_topics(&kafka(), &env.targets, false)
                .await
                .unwrap();
        }
        wait_for_topics(env.all_topics());
        env
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
        let prefix = unique(name);
        let mut yaml = String::from("tiers:\n");
        for ms in tier_ms {
            yaml.push_str(&format!(
                "  - {{topic: {prefix}-t{ms}, delay: {ms}ms, partitions: {partitions}, retention: 1d}}\n"
            ));
        }
        yaml.push_str(&format!(
            "dead-letter: {{topic: {prefix}-dlq, partitions: 1}}\n{extra_yaml}"
        ));
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
        .set("batch.num.messages", "1")
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
        .map_err(|(e, _)| e)
        .unwrap();
    (d.partition, d.offset)
}

/// A record as a consumer of the target saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: i64,
    pub arrived_ms: i64,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_ref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    pub fn value_str(&self) -> String {
        self.value
            .as_deref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    }
}

/// Reads a topic from the beginning on a background thread, stamping each
/// record with the time it arrived; collect with [`Collector::wait_for`].
pub struct Collector {
    rx: std::sync::mpsc::Receiver<Received>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub seen: Vec<Received>,
}

impl Collector {
    pub fn start(topic: &str) -> Collector {
        let consumer: BaseConsumer<TracingContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("group.id", unique("collector"))
            .set("fetch.wait.max.ms", "5")
            .set("enable.auto.commit", "false")
            .create_with_context(TracingContext)
            .unwrap();
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) {
                    let arrived_ms = now_ms();
                    let hdrs = m
                        .headers()
                        .map(|h| {
                            headers::iter(h)
                                .map(|(k, v)| {
                                    (
                                        String::from_utf8_lossy(k).into_owned(),
                                        v.map(<[u8]>::to_vec),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let r = Received {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec),
                        headers: hdrs,
                        timestamp: m.timestamp().to_millis().unwrap_or(-1),
                        arrived_ms,
                    };
                    if tx.send(r).is_err() {
                        break;
                    }
                }
            }
        });
        Collector {
            rx,
            stop,
            seen: Vec::new(),
        }
    }

    /// Waits until at least `n` records were seen in all, or `timeout` passed.
    pub fn wait_for(&mut self, n: usize, timeout: Duration) -> &[Received] {
        let deadline = Instant::now() + timeout;
        while self.seen.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Ok(r) = self.rx.recv_timeout(left.min(Duration::from_millis(100))) {
                self.seen.push(r);
            }
        }
        &self.seen
    }

    /// Collects whatever else arrives within `quiet`.
    pub fn settle(&mut self, quiet: Duration) -> &[Received] {
        let deadline = Instant::now() + quiet;
        while let Ok(r) = self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(r);
        }
        &self.seen
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Collector {
    /// Collects until `n` distinct values arrived (duplicates do not count
    /// towards `n`) or `timeout` passed, then whatever else comes within two seconds.
    pub fn collect_distinct(&mut self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let distinct = self
                .settle(Duration::from_millis(200))
                .iter()
                .map(|r| r.value_str())
                .collect::<std::collections::HashSet<_>>()
                .len();
            if distinct >= n {
                break;
            }
        }
        self.settle(Duration::from_secs(2)).to_vec()
    }
}

/// What a consumer of the target saw of the records sent (`due`: value ->
/// deadline): lateness is measured on each record's first arrival.
pub struct Tally {
    pub sent: usize,
    pub delivered: usize,
    pub duplicated: usize,
    pub lost: usize,
    /// Arrivals (duplicates included) stamped or seen before their deadline.
    pub early: usize,
    pub max_late_ms: i64,
    pub p50_late_ms: i64,
}

pub fn tally(due: &HashMap<String, i64>, got: &[Received]) -> Tally {
    let mut first: HashMap<String, &Received> = HashMap::new();
    for r in got {
        first.entry(r.value_str()).or_insert(r);
    }
    let early = got
        .iter()
        .filter(|r| {
            due.get(&r.value_str())
                .is_some_and(|d| r.timestamp < *d || r.arrived_ms < *d)
        })
        .count();
    let mut lates: Vec<i64> = first
        .iter()
        .filter_map(|(v, r)| due.get(v).map(|d| r.arrived_ms - d))
        .collect();
    lates.sort_unstable();
    Tally {
        sent: due.len(),
        delivered: first.len(),
        duplicated: got.len() - first.len(),
        lost: due.keys().filter(|v| !first.contains_key(*v)).count(),
        early,
        max_late_ms: lates.last().copied().unwrap_or(0),
        p50_late_ms: lates.get(lates.len() / 2).copied().unwrap_or(0),
    }
}

/// The committed offsets of a group for a topic with `partitions` partitions.
pub fn committed(group: &str, topic: &str, partitions: i32) -> HashMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let c = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    c.elements()
        .iter()
        .map(|e| {
            (
                e.partition(),
                match e.offset() {
                    Offset::Offset(o) => o,
                    _ => -1,
                },
            )
        })
        .collect()
}

/// Asserts the group committed every record of the topic: the committed offset
/// is the high watermark of each partition (an empty partition needs no commit).
pub fn assert_committed_to_end(group: &str, topic: &str, partitions: i32) {
    let committed = committed(group, topic, partitions);
    for (p, high) in high_watermarks(topic, partitions) {
        let c = committed[&p];
        assert!(
            c == high || (high == 0 && c < 0),
            "{topic}/{p}: committed {c}, high watermark {high}"
        );
    }
}

/// High watermarks of a topic's partitions.
pub fn high_watermarks(topic: &str, partitions: i32) -> HashMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| {
            (
                p,
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(5))
                    .unwrap()
                    .1,
            )
        })
        .collect()
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

/// A metric sample from the router's registry, summed over label sets that contain `labels`.
pub fn metric(router: &Router, family: &str, labels: &[(&str, &str)]) -> f64 {
    router
        .metrics
        .registry
        .gather()
        .iter()
        .filter(|f| f.name() == family)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}

/// `delay-target` plus an optional `delay-deliver-at`.
pub fn route_headers(target: &str, deliver_at: Option<i64>) -> Vec<(String, Vec<u8>)> {
    let mut v = vec![(headers::TARGET.to_string(), target.as_bytes().to_vec())];
    if let Some(at) = deliver_at {
        v.push((headers::DELIVER_AT.to_string(), at.to_string().into_bytes()));
    }
    v
}

/// Waits until the router owns at least `partitions` partitions.
pub async fn wait_assigned(router: &Router, partitions: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(router, "kafka_delay_router_partitions_assigned", &[]) < partitions {
        assert!(
            Instant::now() < deadline,
            "router was not assigned {partitions} partitions"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn hdr<'a>(k: &'a str, v: &'a [u8]) -> (&'a str, Option<&'a [u8]>) {
    (k, Some(v))
}

pub fn spawn_router(env: &Env) -> Child {
    spawn_router_with(env, &[])
}

pub fn spawn_router_with(env: &Env, extra: &[&str]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env.config_path.with_file_name("router.log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_kafka-delay-router"))
        .args(["run", "--config"])
        .arg(&env.config_path)
        .args([
            "--bootstrap-servers",
            &bootstrap(),
            "--group-id",
            &env.group,
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .args([
            "--drain-timeout",
            "5s",
            "--log",
            "info",
            "-X",
            TANSU_SAFE_BATCHING,
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

pub fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "router did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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

/// A Tansu broker of a test's own (persistent storage, or a listener that
/// advertises another port), killed when dropped.
pub struct Tansu {
    child: Child,
    dir: std::path::PathBuf,
    listen: u16,
    advertise: u16,
    storage: String,
    extra: Vec<String>,
}

impl Tansu {
    /// Starts `tansu broker` in `dir` on 127.0.0.1:`listen`, advertising
    /// 127.0.0.1:`advertise`, and waits until it accepts connections.
    pub fn start(dir: &std::path::Path, listen: u16, advertise: u16, storage: &str) -> Tansu {
        Self::start_with(dir, listen, advertise, storage, &[])
    }

    /// Like [`Tansu::start`], with more `tansu broker` flags (e.g. `--authentication`).
    pub fn start_with(
        dir: &std::path::Path,
        listen: u16,
        advertise: u16,
        storage: &str,
        extra: &[&str],
    ) -> Tansu {
        let child = Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{listen}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{advertise}"),
                "--storage-engine",
                storage,
            ])
            .args(extra)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu on PATH (scripts/broker.sh install)");
        wait_port(listen);
        Tansu {
            child,
            dir: dir.to_path_buf(),
            listen,
            advertise,
            storage: storage.to_string(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Stops the broker with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// Stops the broker with SIGTERM, waits `down`, and starts it again on the same storage.
    pub fn restart(&mut self, down: Duration) {
        self.stop();
        std::thread::sleep(down);
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        *self = Tansu::start_with(
            &self.dir,
            self.listen,
            self.advertise,
            &self.storage,
            &extra,
        );
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on 127.0.0.1:{port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
