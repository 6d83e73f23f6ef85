//! What every scenario shares: broker settings, topic creation, bulk
//! producing, copying a consumed record, lateness summaries, the router's
//! metrics endpoint, and a small random number generator.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::stream::{FuturesUnordered, StreamExt};
use kafka_delay_router::admin;
use kafka_delay_router::kafka::{now_ms, KafkaSettings, TracingContext};
use kafka_delay_router::TopicsConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::future_producer::DeliveryFuture;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// The client settings of every scenario: the library's defaults, nothing else.
pub fn settings() -> KafkaSettings {
    KafkaSettings::new(bootstrap())
}

/// Writes a topics file with the given tiers under `dir`, creates its topics
/// on the broker, and creates plain topics `targets` with `partitions` each.
pub async fn make_topics(
    dir: &Path,
    prefix: &str,
    tiers: &[u64],
    partitions: i32,
    targets: &[&str],
) -> Result<TopicsConfig> {
    make_topics_with(dir, prefix, tiers, partitions, targets, "").await
}

/// Like [`make_topics`], with `extra_yaml` appended to the topics file (a `cancel:` section, say).
pub async fn make_topics_with(
    dir: &Path,
    prefix: &str,
    tiers: &[u64],
    partitions: i32,
    targets: &[&str],
    extra_yaml: &str,
) -> Result<TopicsConfig> {
    let mut yaml = String::from("tiers:\n");
    for ms in tiers {
        yaml.push_str(&format!("  - {{topic: {prefix}-t{ms}, delay: {ms}ms, partitions: {partitions}, retention: 1d}}\n"));
    }
    yaml.push_str(&format!(
        "dead-letter: {{topic: {prefix}-dlq, partitions: 1}}\n{extra_yaml}"
    ));
    if !extra_yaml.contains("targets:") {
        yaml.push_str(&format!("targets: {{allow: ['{prefix}-*']}}\n"));
    }
    let path = dir.join(format!("{prefix}.yaml"));
    std::fs::write(&path, yaml)?;
    let config = TopicsConfig::load(&path)?;
    let kafka = settings();
    admin::create_topics(&config, &kafka, false).await?;
    if !targets.is_empty() {
        let admin_client: AdminClient<TracingContext> =
            kafka.plain_config().create_with_context(TracingContext)?;
        let new: Vec<_> = targets
            .iter()
            .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
            .collect();
        for result in admin_client
            .create_topics(new.iter(), &AdminOptions::new())
            .await?
        {
            result.map_err(|(topic, e)| anyhow::anyhow!("creating {topic}: {e}"))?;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(config)
}

/// The path of the topics file `make_topics` wrote.
pub fn topics_file(dir: &Path, prefix: &str) -> std::path::PathBuf {
    dir.join(format!("{prefix}.yaml"))
}

/// A producer with the router's own settings (idempotent, acks=all), with
/// the 2 ms linger the probe has always had, so the floor it measures stays
/// comparable with earlier results.
pub fn router_like_producer() -> Result<FutureProducer<TracingContext>> {
    let mut c = settings().producer_config();
    c.set("linger.ms", "2");
    Ok(c.create_with_context(TracingContext)?)
}

/// The load generator's producer: the router's settings with 5 ms linger, as
/// an application batching its sends would run.
pub fn load_producer() -> Result<FutureProducer<TracingContext>> {
    let mut c = settings().producer_config();
    c.set("linger.ms", "5");
    Ok(c.create_with_context(TracingContext)?)
}

/// One record for [`produce_all`].
pub struct Load<'a> {
    pub topic: &'a str,
    pub key: Vec<u8>,
    pub value: &'a [u8],
    pub headers: Vec<(&'a str, Vec<u8>)>,
    pub timestamp: i64,
}

/// Produces records as fast as the producer takes them, keeping up to 50k in
/// flight; returns when all are acknowledged.
pub async fn produce_all<'a>(
    p: &FutureProducer<TracingContext>,
    records: impl Iterator<Item = Load<'a>>,
) -> Result<usize> {
    let mut in_flight = FuturesUnordered::new();
    let mut n = 0;
    for r in records {
        let h = r.headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v),
            })
        });
        let mut rec = FutureRecord::to(r.topic)
            .key(&r.key)
            .payload(r.value)
            .headers(h)
            .timestamp(r.timestamp);
        loop {
            match p.send_result(rec) {
                Ok(f) => {
                    in_flight.push(f);
                    break;
                }
                Err((_, back)) => {
                    rec = back;
                    if let Some(done) = in_flight.next().await {
                        done?.map_err(|(e, _)| e)?;
                    }
                }
            }
        }
        n += 1;
        while in_flight.len() > 50_000 {
            in_flight
                .next()
                .await
                .expect("non-empty")?
                .map_err(|(e, _)| e)?;
        }
    }
    while let Some(done) = in_flight.next().await {
        done?.map_err(|(e, _)| e)?;
    }
    Ok(n)
}

/// A consumed record as a new record for `to`: key, value and headers kept, stamped now.
pub fn copy_record<'a>(
    m: &'a rdkafka::message::BorrowedMessage<'_>,
    to: &'a str,
) -> FutureRecord<'a, [u8], [u8]> {
    let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(to).timestamp(now_ms());
    if let Some(k) = m.key() {
        rec = rec.key(k);
    }
    if let Some(v) = m.payload() {
        rec = rec.payload(v);
    }
    if let Some(h) = m.headers() {
        rec = rec.headers(h.detach());
    }
    rec
}

/// Hands a record to the producer from a plain thread, waiting while its queue is full.
pub fn send_waiting(
    p: &FutureProducer<TracingContext>,
    mut rec: FutureRecord<'_, [u8], [u8]>,
) -> DeliveryFuture {
    loop {
        match p.send_result(rec) {
            Ok(f) => return f,
            Err((_, back)) => {
                rec = back;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Nearest-rank percentile of sorted values (0 when empty).
pub fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Lateness (arrival minus due time) of a set of records, in ms.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Lateness {
    pub count: usize,
    pub p50_ms: i64,
    pub p99_ms: i64,
    pub p999_ms: i64,
    pub max_ms: i64,
    /// Records that arrived before they were due.
    pub early: usize,
}

impl Lateness {
    /// Summarizes `values` (sorting them).
    pub fn of(values: &mut [i64]) -> Lateness {
        values.sort_unstable();
        Lateness {
            count: values.len(),
            p50_ms: percentile(values, 50.0),
            p99_ms: percentile(values, 99.0),
            p999_ms: percentile(values, 99.9),
            max_ms: values.last().copied().unwrap_or(0),
            early: values.iter().filter(|l| **l < 0).count(),
        }
    }
}

/// The text of a router's `/metrics` endpoint.
pub async fn metrics_text(addr: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    Some(body)
}

/// The sum of a metric family's samples over all its labels.
pub fn metric_sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A metric family's samples by the value of one label (summed over the others).
pub fn metric_by_label(text: &str, family: &str, label: &str) -> BTreeMap<String, f64> {
    let key = format!("{label}=\"");
    let mut out = BTreeMap::new();
    for l in text.lines() {
        let Some(rest) = l.strip_prefix(family).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Some(at) = labels.find(&key) else {
            continue;
        };
        let v = &labels[at + key.len()..];
        let (Some(end), Ok(x)) = (v.find('"'), value.trim().parse::<f64>()) else {
            continue;
        };
        *out.entry(v[..end].to_string()).or_insert(0.0) += x;
    }
    out
}

/// A free TCP port on 127.0.0.1 for a router's metrics endpoint.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Clock ticks per second of /proc/PID/stat's CPU times (USER_HZ, 100 on Linux).
pub const CLOCK_TICKS: f64 = 100.0;

/// CPU time a process has used so far (user + system), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (which may hold spaces): field 3 on; utime is 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// SplitMix64: enough randomness for keys and delays, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Rng {
        Rng(now_ms() as u64 ^ u64::from(std::process::id()).rotate_left(32))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// A random 16-hex-digit key, as an application's order or user ids would be.
    pub fn key(&mut self) -> Vec<u8> {
        format!("{:016x}", self.next_u64()).into_bytes()
    }
}
