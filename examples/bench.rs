//! Benchmarks a user can rerun: throughput (router vs a bare forwarder),
//! delivery precision under steady load (router vs sleep-and-requeue), memory
//! with a growing backlog, and Kafka writes per delivered record. All scenarios
//! run against the same broker in one run; results go to `--out` as JSON and a
//! markdown table (plots are drawn from the JSON by scripts/plot.py).
//!
//! Run through `scripts/bench.sh [--quick]`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::stream::{FuturesUnordered, StreamExt};
use kafka_delay_router::admin;
use kafka_delay_router::delay::TierSet;
use kafka_delay_router::headers::{self, DELIVER_AT, TARGET};
use kafka_delay_router::kafka::{now_ms, KafkaSettings, TracingContext};
use kafka_delay_router::router::{Router, RouterOptions};
use kafka_delay_router::TopicsConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

/// Tansu 0.6 answers a fetch that starts inside a multi-record batch from the
/// next batch; wherever a consumer may resume mid-batch (pause/resume, forwards
/// into tiers) producers write one record per batch. See README.
const ONE_RECORD_PER_BATCH: &str = "batch.num.messages=1";
const DUE_HEADER: &str = "bench-due";
const KIND_HEADER: &str = "bench-kind";
const REQUEUE_SLEEP: Duration = Duration::from_millis(100);

struct Args {
    quick: bool,
    out: PathBuf,
    router_bin: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        quick: false,
        out: PathBuf::from("results"),
        router_bin: PathBuf::from("target/release/kafka-delay-router"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--out" => args.out = PathBuf::from(it.next().context("--out DIR")?),
            "--router-bin" => {
                args.router_bin = PathBuf::from(it.next().context("--router-bin PATH")?)
            }
            other => bail!(
                "unknown argument {other}; usage: bench [--quick] [--out DIR] [--router-bin PATH]"
            ),
        }
    }
    Ok(args)
}

fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn settings(one_per_batch: bool) -> KafkaSettings {
    let s = KafkaSettings::new(bootstrap());
    if one_per_batch {
        s.with_overrides(&[ONE_RECORD_PER_BATCH.to_string()])
            .expect("valid override")
    } else {
        s
    }
}

/// Creates a topics file with the given tiers under `dir`, the topics on the
/// broker, and plain target topics.
async fn make_topics(
    dir: &Path,
    prefix: &str,
    tiers: &[u64],
    partitions: i32,
    targets: &[String],
) -> Result<TopicsConfig> {
    let mut yaml = String::from("tiers:\n");
    for ms in tiers {
        yaml.push_str(&format!("  - {{topic: {prefix}-t{ms}, delay: {ms}ms, partitions: {partitions}, retention: 1d}}\n"));
    }
    yaml.push_str(&format!(
        "dead-letter: {{topic: {prefix}-dlq, partitions: 1}}\n"
    ));
    let path = dir.join(format!("{prefix}.yaml"));
    std::fs::write(&path, yaml)?;
    let config = TopicsConfig::load(&path)?;
    let kafka = settings(false);
    admin::create_topics(&config, &kafka, false).await?;
    let admin_client: rdkafka::admin::AdminClient<TracingContext> =
        kafka.plain_config().create_with_context(TracingContext)?;
    if targets.is_empty() {
        return Ok(config);
    }
    let new: Vec<_> = targets
        .iter()
        .map(|t| {
            rdkafka::admin::NewTopic::new(t, partitions, rdkafka::admin::TopicReplication::Fixed(1))
        })
        .collect();
    admin_client
        .create_topics(new.iter(), &rdkafka::admin::AdminOptions::new())
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(config)
}

fn producer(one_per_batch: bool) -> Result<FutureProducer<TracingContext>> {
    let mut c = settings(one_per_batch).producer_config();
    c.set("linger.ms", "5");
    Ok(c.create_with_context(TracingContext)?)
}

struct Load<'a> {
    topic: &'a str,
    key: Vec<u8>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    timestamp: i64,
}

/// Produces records, keeping up to 50k in flight; returns when all are acknowledged.
async fn produce_all<'a>(
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
            .payload(&r.value)
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

/// (due, arrived, kind, record id) of one record seen at a target.
type Seen = (i64, i64, String, String);

/// Stamps every record that arrives on `topic` with its arrival time.
struct Arrivals {
    seen: Arc<std::sync::Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl Arrivals {
    /// (due, arrived, kind, value-id) per record, from the bench headers.
    fn start(topic: &str) -> Result<Arrivals> {
        let consumer: BaseConsumer<TracingContext> = settings(false)
            .reader_config()
            .set("group.id", format!("bench-reader-{}", now_ms()))
            .set("fetch.wait.max.ms", "5")
            .set("enable.auto.commit", "false")
            .create_with_context(TracingContext)?;
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let mut tpl = TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) {
                    let arrived = now_ms();
                    let get = |k: &str| {
                        headers::last(m.headers(), k)
                            .flatten()
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .unwrap_or_default()
                    };
                    let due: i64 = get(DUE_HEADER).parse().unwrap_or(0);
                    let id = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                    s2.lock()
                        .unwrap()
                        .push((due, arrived, get(KIND_HEADER), id));
                }
            }
        });
        Ok(Arrivals { seen, stop })
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    async fn wait_for(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        while self.count() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.count()
    }
}

impl Drop for Arrivals {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn lateness_summary(lates: &mut [i64]) -> serde_json::Value {
    lates.sort_unstable();
    json!({
        "count": lates.len(),
        "p50_ms": percentile(lates, 50.0),
        "p99_ms": percentile(lates, 99.0),
        "p999_ms": percentile(lates, 99.9),
        "max_ms": lates.last().copied().unwrap_or(0),
        "early": lates.iter().filter(|l| **l < 0).count(),
    })
}

// ---------------------------------------------------------------- throughput

async fn throughput(dir: &Path, quick: bool) -> Result<serde_json::Value> {
    let n: usize = if quick { 60_000 } else { 200_000 };
    // Each run drains its own freshly loaded copy of the same backlog; the
    // router and the bare forwarder alternate, so neither always goes first.
    let rounds = 2;
    let (mut router_runs, mut bare_runs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for who in if round % 2 == 0 {
            ["router", "bare"]
        } else {
            ["bare", "router"]
        } {
            let rate = drain_once(dir, n, who == "router").await?;
            eprintln!("  round {round}: {who} {rate:.0} records/s");
            if who == "router" {
                router_runs.push(rate);
            } else {
                bare_runs.push(rate);
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (router_rate, bare_rate) = (mean(&router_runs), mean(&bare_runs));
    Ok(json!({
        "records": n,
        "record_bytes": 512,
        "partitions": 6,
        "router_runs": router_runs,
        "bare_runs": bare_runs,
        "router_records_per_s": router_rate,
        "bare_records_per_s": bare_rate,
        "ratio": router_rate / bare_rate,
    }))
}

/// Loads `n` due records of 512 bytes into a fresh 6-partition tier and times
/// the router (or the bare forwarder) draining them, from the first record read
/// to the last acknowledgement.
async fn drain_once(dir: &Path, n: usize, router: bool) -> Result<f64> {
    let prefix = format!("bench-thr-{}", now_ms());
    let out = format!("{prefix}-out");
    let config = make_topics(dir, &prefix, &[1_000], 6, std::slice::from_ref(&out)).await?;
    let tier = config.tiers[0].topic().to_string();
    let value = vec![b'v'; 512];
    let old = now_ms() - 600_000;
    let p = producer(false)?;
    produce_all(
        &p,
        (0..n).map(|i| Load {
            topic: &tier,
            key: format!("k{i}").into_bytes(),
            value: value.clone(),
            headers: vec![(TARGET.into(), out.clone().into_bytes())],
            timestamp: old,
        }),
    )
    .await?;
    if !router {
        return bare_forwarder(&tier, &out, &format!("{prefix}-bare"), n).await;
    }
    // The router, in process, with its defaults (batching on: nothing pauses here).
    let mut options = RouterOptions::new(settings(false));
    options.group_id = format!("{prefix}-router");
    let router = Router::start(config.clone(), options).await?;
    let delivered = router.metrics.records_delivered.with_label_values(&[&tier]);
    let read = router.metrics.records_read.with_label_values(&[&tier]);
    let deadline = Instant::now() + Duration::from_secs(300);
    while read.get() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let start = Instant::now();
    while (delivered.get() as usize) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = delivered.get() as f64 / start.elapsed().as_secs_f64();
    router.shutdown().await?;
    Ok(rate)
}

async fn bare_forwarder(from: &str, to: &str, group: &str, n: usize) -> Result<f64> {
    let kafka = settings(false);
    let consumer: Arc<BaseConsumer<TracingContext>> = Arc::new(
        kafka
            .consumer_config(group)
            .create_with_context(TracingContext)?,
    );
    consumer.subscribe(&[from])?;
    let producer: FutureProducer<TracingContext> = kafka
        .producer_config()
        .create_with_context(TracingContext)?;
    let acked = Arc::new(AtomicU64::new(0));
    let read = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<rdkafka::producer::future_producer::DeliveryFuture>(100_000);
    let stop = Arc::new(AtomicBool::new(false));
    let (c2, stop2, to2, read2) = (consumer.clone(), stop.clone(), to.to_string(), read.clone());
    let p2 = producer.clone();
    let poller = std::thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            if let Some(Ok(m)) = c2.poll(Duration::from_millis(20)) {
                read2.fetch_add(1, Ordering::Relaxed);
                let f = send_waiting(&p2, copy_record(&m, &to2));
                if tx.blocking_send(f).is_err() {
                    return;
                }
            }
        }
    });
    let acked2 = acked.clone();
    let counter = tokio::spawn(async move {
        let mut pending = FuturesUnordered::new();
        loop {
            tokio::select! {
                f = rx.recv() => match f {
                    Some(f) => pending.push(f),
                    None => break,
                },
                Some(r) = pending.next(), if !pending.is_empty() => {
                    if matches!(r, Ok(Ok(_))) {
                        acked2.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        while let Some(r) = pending.next().await {
            if matches!(r, Ok(Ok(_))) {
                acked2.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    while read.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let start = Instant::now();
    while (acked.load(Ordering::Relaxed) as usize) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = acked.load(Ordering::Relaxed) as f64 / secs;
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || poller.join()).await;
    counter.abort();
    producer.flush(Duration::from_secs(5))?;
    Ok(rate)
}

/// A consumed record as a new record for `to`: key, value and headers kept, stamped now.
fn copy_record<'a>(
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
fn send_waiting(
    p: &FutureProducer<TracingContext>,
    mut rec: FutureRecord<'_, [u8], [u8]>,
) -> rdkafka::producer::future_producer::DeliveryFuture {
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

// ---------------------------------------------------------------- precision

/// The steady load: (kind, delay in ms, uses delay-deliver-at).
fn load_mix(i: usize, quick: bool) -> (&'static str, u64, bool) {
    let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33;
    match i % 10 {
        0..=3 => ("fixed-1s", 1_000, false),
        4..=6 => ("fixed-5s", 5_000, false),
        _ => {
            let span = if quick { 4_800 } else { 10_800 };
            ("cascade", 1_200 + x % span, true)
        }
    }
}

struct LoadPlan {
    rate: usize,
    secs: u64,
}

/// 2,000 records/s for 60 s (8 s with --quick); BENCH_RATE and BENCH_SECS override.
fn load_plan(quick: bool) -> LoadPlan {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse().ok());
    LoadPlan {
        rate: env("BENCH_RATE").unwrap_or(2_000) as usize,
        secs: env("BENCH_SECS").unwrap_or(if quick { 8 } else { 60 }),
    }
}

fn scenario_enabled(name: &str) -> bool {
    std::env::var("BENCH_ONLY")
        .map(|v| v.split(',').any(|s| s == name))
        .unwrap_or(true)
}

/// Sends the steady load: every 10 ms, rate/100 records to `route(i)`'s topic.
async fn steady_load(
    p: &FutureProducer<TracingContext>,
    plan: &LoadPlan,
    quick: bool,
    topic_for: impl Fn(&'static str, u64) -> String,
    target: &str,
) -> Result<usize> {
    let per_tick = plan.rate / 100;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let end = Instant::now() + Duration::from_secs(plan.secs);
    let mut in_flight = FuturesUnordered::new();
    let mut i = 0usize;
    let value = vec![b'v'; 256];
    while Instant::now() < end {
        tick.tick().await;
        for _ in 0..per_tick {
            let (kind, delay, deadline) = load_mix(i, quick);
            let ts = now_ms();
            let due = ts + delay as i64;
            let topic = topic_for(kind, delay);
            let mut h = OwnedHeaders::new()
                .insert(Header {
                    key: TARGET,
                    value: Some(target),
                })
                .insert(Header {
                    key: DUE_HEADER,
                    value: Some(&due.to_string()),
                })
                .insert(Header {
                    key: KIND_HEADER,
                    value: Some(kind),
                });
            if deadline {
                h = h.insert(Header {
                    key: DELIVER_AT,
                    value: Some(&due.to_string()),
                });
            }
            let key = format!("r{i}");
            let rec = FutureRecord::to(&topic)
                .key(&key)
                .payload(&value)
                .headers(h)
                .timestamp(ts);
            match p.send_result(rec) {
                Ok(f) => in_flight.push(f),
                Err((e, _)) => bail!("load producer queue: {e}"),
            }
            i += 1;
        }
        while let Some(Some(r)) = in_flight.next().now_or_never_opt() {
            r?.map_err(|(e, _)| e)?;
        }
    }
    while let Some(r) = in_flight.next().await {
        r?.map_err(|(e, _)| e)?;
    }
    Ok(i)
}

trait NowOrNever: futures::Future + Sized {
    fn now_or_never_opt(self) -> Option<Self::Output> {
        futures::FutureExt::now_or_never(self)
    }
}
impl<F: futures::Future> NowOrNever for F {}

fn summarize_by_kind(
    seen: &[(i64, i64, String, String)],
) -> (serde_json::Value, Vec<(String, Vec<i64>)>) {
    let mut by_kind: HashMap<String, Vec<i64>> = HashMap::new();
    let mut firsts: HashMap<&str, (i64, i64, &str)> = HashMap::new();
    for (due, arrived, kind, id) in seen {
        // A duplicate counts once, at its first arrival.
        firsts
            .entry(id.as_str())
            .or_insert((*due, *arrived, kind.as_str()));
    }
    for (due, arrived, kind) in firsts.values() {
        by_kind
            .entry(kind.to_string())
            .or_default()
            .push(arrived - due);
        by_kind.entry("all".into()).or_default().push(arrived - due);
    }
    let mut out = serde_json::Map::new();
    let mut raw = Vec::new();
    let mut kinds: Vec<_> = by_kind.into_iter().collect();
    kinds.sort_by(|a, b| a.0.cmp(&b.0));
    for (kind, mut lates) in kinds {
        out.insert(kind.clone(), lateness_summary(&mut lates));
        raw.push((kind, lates));
    }
    out.insert("duplicates".into(), json!(seen.len() - firsts.len()));
    (serde_json::Value::Object(out), raw)
}

async fn precision(
    dir: &Path,
    quick: bool,
) -> Result<(serde_json::Value, Vec<(String, Vec<i64>)>)> {
    let plan = load_plan(quick);
    let prefix = format!("bench-prec-{}", now_ms());
    let target = format!("{prefix}-out");
    let tiers = [1_000u64, 5_000, 30_000, 60_000];
    let config = make_topics(dir, &prefix, &tiers, 6, std::slice::from_ref(&target)).await?;
    let tier_set: TierSet = config.tier_set();
    let arrivals = Arrivals::start(&target)?;
    let mut options = RouterOptions::new(settings(true));
    options.group_id = format!("{prefix}-router");
    let router = Router::start(config.clone(), options).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while router
        .metrics
        .partitions_assigned
        .with_label_values(&[config.tiers[0].topic()])
        .get()
        < 6
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "precision: {} records/s for {} s into {} (fixed 1s, fixed 5s, cascades)",
        plan.rate, plan.secs, prefix
    );
    let p = producer(true)?;
    let cfg = config.clone();
    let sent = steady_load(
        &p,
        &plan,
        quick,
        |_, delay| cfg.tiers[tier_set.entry_tier(delay)].topic().to_string(),
        &target,
    )
    .await?;
    let got = arrivals.wait_for(sent, Duration::from_secs(30)).await;
    eprintln!("  sent {sent}, arrived {got}");
    eprintln!(
        "  router consumer errors: {:?}",
        router
            .metrics
            .render()
            .lines()
            .filter(
                |l| l.starts_with("kafka_delay_router_consumer_errors_total")
                    || l.starts_with("kafka_delay_router_producer_errors_total")
            )
            .collect::<Vec<_>>()
    );
    router.shutdown().await?;
    let seen = arrivals.seen.lock().unwrap().clone();
    let (mut summary, raw) = summarize_by_kind(&seen);
    let distinct = seen
        .iter()
        .map(|s| s.3.as_str())
        .collect::<std::collections::HashSet<_>>()
        .len();
    summary["sent"] = json!(sent);
    summary["delivered"] = json!(distinct);
    // Not delivered when the run ended: still in their tiers, uncommitted (not lost).
    summary["undelivered"] = json!(sent.saturating_sub(distinct));
    summary["rate"] = json!(plan.rate);
    summary["seconds"] = json!(plan.secs);
    Ok((summary, raw))
}

// ---------------------------------------------------------------- baseline

/// Sleep-and-requeue as many teams run it: consume; a record that is due goes
/// to its target; one that is not goes back to the end of the same topic; a
/// polled batch that had a record not yet due is followed by a fixed sleep.
async fn baseline(dir: &Path, quick: bool) -> Result<(serde_json::Value, Vec<(String, Vec<i64>)>)> {
    let plan = load_plan(quick);
    let prefix = format!("bench-requeue-{}", now_ms());
    let (queue, target) = (format!("{prefix}-queue"), format!("{prefix}-out"));
    make_topics(dir, &prefix, &[1_000], 1, &[queue.clone(), target.clone()]).await?;
    let arrivals = Arrivals::start(&target)?;
    let kafka = settings(false);
    let consumer: BaseConsumer<TracingContext> = kafka
        .consumer_config(&format!("{prefix}-group"))
        .create_with_context(TracingContext)?;
    consumer.subscribe(&[&queue])?;
    let producer: FutureProducer<TracingContext> = kafka
        .producer_config()
        .create_with_context(TracingContext)?;
    let writes = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (w2, s2, p2, q2, t2) = (
        writes.clone(),
        stop.clone(),
        producer.clone(),
        queue.clone(),
        target.clone(),
    );
    let worker = std::thread::spawn(move || {
        let mut batch_had_waiting = false;
        let mut in_batch = 0;
        while !s2.load(Ordering::Relaxed) {
            match consumer.poll(Duration::from_millis(5)) {
                Some(Ok(m)) => {
                    in_batch += 1;
                    let due: i64 = headers::last(m.headers(), DUE_HEADER)
                        .flatten()
                        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                        .unwrap_or(0);
                    let to = if now_ms() >= due { &t2 } else { &q2 };
                    batch_had_waiting |= to == &q2;
                    // Fire and forget, as such loops usually do.
                    drop(send_waiting(&p2, copy_record(&m, to)));
                    w2.fetch_add(1, Ordering::Relaxed);
                    if in_batch >= 500 {
                        in_batch = 0;
                        if std::mem::take(&mut batch_had_waiting) {
                            std::thread::sleep(REQUEUE_SLEEP);
                        }
                    }
                }
                _ => {
                    in_batch = 0;
                    if std::mem::take(&mut batch_had_waiting) {
                        std::thread::sleep(REQUEUE_SLEEP);
                    }
                }
            }
        }
    });
    eprintln!(
        "baseline: sleep-and-requeue ({} ms sleep), {} records/s for {} s",
        REQUEUE_SLEEP.as_millis(),
        plan.rate,
        plan.secs
    );
    let p = self::producer(false)?;
    let q = queue.clone();
    let sent = steady_load(&p, &plan, quick, |_, _| q.clone(), &target).await?;
    let got = arrivals.wait_for(sent, Duration::from_secs(30)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    producer.flush(Duration::from_secs(5))?;
    eprintln!("  sent {sent}, arrived {got}");
    let seen = arrivals.seen.lock().unwrap().clone();
    let (mut summary, raw) = summarize_by_kind(&seen);
    // Writes: the producer's initial write plus every write of the worker (requeues and deliveries).
    let total_writes = sent as u64 + writes.load(Ordering::Relaxed);
    summary["sent"] = json!(sent);
    summary["delivered"] = json!(got);
    summary["sleep_ms"] = json!(REQUEUE_SLEEP.as_millis() as u64);
    summary["writes_per_delivered"] = json!(total_writes as f64 / got.max(1) as f64);
    Ok((summary, raw))
}

// ---------------------------------------------------------------- memory

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn metrics_value(addr: &str, family: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: b\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    Some(
        body.lines()
            .filter(|l| l.starts_with(family))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

async fn memory(dir: &Path, quick: bool, router_bin: &Path) -> Result<serde_json::Value> {
    let levels: &[usize] = if quick {
        &[0, 20_000, 100_000]
    } else {
        &[0, 100_000, 1_000_000]
    };
    let prefix = format!("bench-mem-{}", now_ms());
    let config = make_topics(dir, &prefix, &[3_600_000], 6, &[]).await?;
    let tier = config.tiers[0].topic().to_string();
    let config_path = dir.join(format!("{prefix}.yaml"));
    let p = producer(false)?;
    let value = vec![b'v'; 512];
    let mut loaded = 0usize;
    let mut points = Vec::new();
    for &level in levels {
        let add = level - loaded;
        produce_all(
            &p,
            (loaded..level).map(|i| Load {
                topic: &tier,
                key: format!("k{i}").into_bytes(),
                value: value.clone(),
                headers: vec![(TARGET.into(), b"bench-never".to_vec())],
                timestamp: now_ms(),
            }),
        )
        .await?;
        loaded = level;
        let port = 19_500 + points.len() as u16;
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new(router_bin)
            .args(["run", "--config"])
            .arg(&config_path)
            .args([
                "--bootstrap-servers",
                &bootstrap(),
                "--group-id",
                &format!("{prefix}-g{level}"),
                "--metrics-addr",
                &addr,
                "--log",
                "error",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", router_bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let want_family = if level > 0 {
            "kafka_delay_router_partitions_paused"
        } else {
            "kafka_delay_router_partitions_assigned"
        };
        while metrics_value(&addr, want_family).await.unwrap_or(0.0) < 6.0
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut rss = 0;
        for _ in 0..5 {
            rss = rss.max(rss_kib(child.id()).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let held = metrics_value(&addr, "kafka_delay_router_records_held")
            .await
            .unwrap_or(-1.0);
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        eprintln!(
            "memory: {level} waiting (+{add}): router RSS {:.1} MiB, records held {held}",
            rss as f64 / 1024.0
        );
        points
            .push(json!({"waiting": level, "rss_mib": rss as f64 / 1024.0, "records_held": held}));
    }
    let rss = |i: usize| points[i]["rss_mib"].as_f64().unwrap_or(0.0);
    let n = points.len();
    let max_level = *levels.last().expect("levels") as f64;
    // Growth per 1M waiting records: measured directly when the run reaches 1M;
    // otherwise the cost of the first backlog (fetch buffers, paid once) plus the
    // slope between the two largest backlogs, extrapolated to 1M.
    let per_1m = if max_level >= 1_000_000.0 {
        (rss(n - 1) - rss(0)) * 1_000_000.0 / max_level
    } else {
        let slope = (rss(n - 1) - rss(n - 2)) / (levels[n - 1] - levels[n - 2]) as f64;
        (rss(1) - rss(0)) + slope.max(0.0) * (1_000_000.0 - levels[1] as f64)
    };
    Ok(json!({
        "points": points,
        "growth_mib": rss(n - 1) - rss(0),
        "growth_mib_per_1m": per_1m,
        "per_1m_method": if max_level >= 1_000_000.0 { "measured" } else { "extrapolated" },
    }))
}

// ---------------------------------------------------------------- writes

fn write_amplification(measured_requeue: Option<f64>) -> serde_json::Value {
    let config = TopicsConfig::load("topics.yaml").expect("topics.yaml");
    let tiers = config.tier_set();
    let delays: &[(&str, u64)] = &[
        ("1s", 1_000),
        ("5s", 5_000),
        ("30s", 30_000),
        ("1m", 60_000),
        ("5m", 300_000),
        ("10m", 600_000),
        ("30m", 1_800_000),
        ("1h", 3_600_000),
        ("95m", 5_700_000),
        ("6h", 21_600_000),
        ("24h", 86_400_000),
    ];
    let rows: Vec<_> = delays
        .iter()
        .map(|(name, ms)| {
            json!({
                "delay": name,
                "delay_ms": ms,
                "router_writes": tiers.plan(*ms).kafka_writes(),
                // One check per sleep at best: the initial write, a requeue per sleep, the delivery.
                "requeue_writes_at_least": 2 + ms / REQUEUE_SLEEP.as_millis() as u64,
            })
        })
        .collect();
    json!({"rows": rows, "requeue_sleep_ms": REQUEUE_SLEEP.as_millis() as u64, "requeue_measured_writes_per_delivered": measured_requeue})
}

// ---------------------------------------------------------------- report

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
                    / 1024
                    / 1024
            })
        })
        .unwrap_or(0);
    format!("{cores} cores ({cpu}), {mem} GiB RAM, broker Tansu 0.6 in memory on loopback, same machine")
}

fn lat_row(name: &str, v: &serde_json::Value) -> String {
    format!(
        "| {name} | {} | {} | {} | {} | {} | {} |",
        v["count"], v["p50_ms"], v["p99_ms"], v["p999_ms"], v["max_ms"], v["early"]
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.out)?;
    let work = args.out.join("topics");
    std::fs::create_dir_all(&work)?;
    let started = Instant::now();
    let skipped = || json!({"skipped": true});
    let thr = if scenario_enabled("throughput") {
        throughput(&work, args.quick).await?
    } else {
        skipped()
    };
    let (prec, prec_raw) = if scenario_enabled("precision") {
        precision(&work, args.quick).await?
    } else {
        (skipped(), Vec::new())
    };
    let (base, base_raw) = if scenario_enabled("baseline") {
        baseline(&work, args.quick).await?
    } else {
        (skipped(), Vec::new())
    };
    let mem = if scenario_enabled("memory") {
        memory(&work, args.quick, &args.router_bin).await?
    } else {
        skipped()
    };
    let wa = write_amplification(base["writes_per_delivered"].as_f64());

    let mut md = String::new();
    md.push_str(&format!(
        "Machine: {}. Mode: {}.\n\n",
        machine(),
        if args.quick { "quick" } else { "full" }
    ));
    md.push_str(
        "| throughput (512 B records, 6 partitions, one tier, all due) | records/s |\n|---|---|\n",
    );
    md.push_str(&format!("| router | {:.0} |\n| bare forwarder (consume + produce, same settings) | {:.0} |\n| ratio router / bare | {:.2} |\n\n",
        thr["router_records_per_s"].as_f64().unwrap_or(0.0), thr["bare_records_per_s"].as_f64().unwrap_or(0.0), thr["ratio"].as_f64().unwrap_or(0.0)));
    md.push_str(&format!(
        "Lateness at a consumer of the target, {} records/s for {} s (ms):\n\n",
        prec["rate"], prec["seconds"]
    ));
    md.push_str(
        "| scenario | records | p50 | p99 | p99.9 | max | early |\n|---|---|---|---|---|---|---|\n",
    );
    for kind in ["fixed-1s", "fixed-5s", "cascade", "all"] {
        if prec.get(kind).is_some() {
            md.push_str(&lat_row(&format!("router {kind}"), &prec[kind]));
            md.push('\n');
        }
    }
    for kind in ["fixed-1s", "fixed-5s", "cascade", "all"] {
        if base.get(kind).is_some() {
            md.push_str(&lat_row(&format!("sleep-and-requeue {kind}"), &base[kind]));
            md.push('\n');
        }
    }
    md.push_str(&format!(
        "\nRouter: sent {}, delivered {}, not delivered when the run ended {}, duplicates {}. Sleep-and-requeue ({} ms sleep): {:.1} Kafka writes per delivered record.\n\n",
        prec["sent"], prec["delivered"], prec["undelivered"], prec["duplicates"], base["sleep_ms"], base["writes_per_delivered"].as_f64().unwrap_or(0.0)
    ));
    md.push_str("| records waiting in the 1h tier | router RSS (MiB) |\n|---|---|\n");
    for p in mem["points"].as_array().cloned().unwrap_or_default() {
        md.push_str(&format!(
            "| {} | {:.1} |\n",
            p["waiting"],
            p["rss_mib"].as_f64().unwrap_or(0.0)
        ));
    }
    md.push_str(&format!(
        "\nRSS growth {:.1} MiB from the smallest to the largest backlog; {:.1} MiB per 1M waiting records ({}).\n\n",
        mem["growth_mib"].as_f64().unwrap_or(0.0),
        mem["growth_mib_per_1m"].as_f64().unwrap_or(0.0),
        mem["per_1m_method"].as_str().unwrap_or("")
    ));
    md.push_str(
        "| delay | router Kafka writes | sleep-and-requeue writes (at least) |\n|---|---|---|\n",
    );
    for r in wa["rows"].as_array().cloned().unwrap_or_default() {
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            r["delay"].as_str().unwrap_or(""),
            r["router_writes"],
            r["requeue_writes_at_least"]
        ));
    }
    println!("{md}");
    std::fs::write(args.out.join("results.md"), &md)?;

    let raw = json!({
        "router": prec_raw.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "requeue": base_raw.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
    });
    let all = json!({"machine": machine(), "quick": args.quick, "throughput": thr, "precision": prec, "baseline": base, "memory": mem, "write_amplification": wa, "lateness_ms": raw, "seconds": started.elapsed().as_secs_f64()});
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&all)?,
    )?;
    println!(
        "throughput ratio {:.2}, p99 lateness {} ms, early {}, rss growth {:.1} MiB per 1M waiting",
        thr["ratio"].as_f64().unwrap_or(0.0),
        prec["all"]["p99_ms"],
        prec["all"]["early"],
        mem["growth_mib_per_1m"].as_f64().unwrap_or(0.0)
    );
    Ok(())
}
