//! What exactly-once mode costs: the router drains the same backlog of due
//! records in at-least-once and in exactly-once mode, on librdkafka's
//! in-process mock cluster (the only broker here with transactions), and
//! prints records per second for each and their ratio.
//!
//!   cargo run --release --example eos_bench            (600k records, 24 partitions, 4 runs each)
//!   EOS_BENCH_RECORDS=60000 EOS_BENCH_PARTITIONS=6 EOS_BENCH_VALUE_BYTES=512 cargo run ...
//!
//! The mock cluster keeps at most 5 MiB per partition (it deletes older
//! records past that), so records are small (100-byte values) and a run stops
//! with an error rather than wait for records the mock threw away: keep
//! records x (value + ~80 bytes) / partitions under 5 MiB.
//!
//! Each run loads a fresh 24-partition tier with 100-byte records whose due
//! time has passed, starts the router in process and times from the first
//! record read to the last acknowledgement (at-least-once) or the last
//! transaction commit (exactly-once). Rounds alternate which mode goes first.

use std::time::{Duration, Instant};

use kafka_delay_router::exactly_once::ExactlyOnce;
use kafka_delay_router::headers::TARGET;
use kafka_delay_router::kafka::{now_ms, TracingContext};
use kafka_delay_router::{KafkaSettings, Router, RouterOptions, TopicsConfig};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

/// Tier and target partitions, `EOS_BENCH_PARTITIONS` (default 24).
fn partitions() -> i32 {
    std::env::var("EOS_BENCH_PARTITIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24)
}

/// Value size, `EOS_BENCH_VALUE_BYTES` (default 100).
fn value_bytes() -> usize {
    std::env::var("EOS_BENCH_VALUE_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100)
}

type Mock = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

const ROUNDS: usize = 4;

fn topics(dir: &std::path::Path, prefix: &str) -> TopicsConfig {
    let yaml = format!(
        "tiers:\n  - {{topic: {prefix}-t1000, delay: 1s, partitions: {}}}\ndead-letter: {{topic: {prefix}-dlq, partitions: 1}}\ntargets: {{allow: ['{prefix}-*']}}\n",
        partitions()
    );
    let path = dir.join(format!("{prefix}.yaml"));
    std::fs::write(&path, yaml).expect("write topics file");
    TopicsConfig::load(&path).expect("valid topics file")
}

async fn load(kafka: &KafkaSettings, tier: &str, target: &str, n: usize) {
    let p: FutureProducer<TracingContext> = kafka
        .producer_config()
        .set("linger.ms", "5")
        .create_with_context(TracingContext)
        .expect("producer");
    let value = vec![b'v'; value_bytes()];
    let old = now_ms() - 600_000;
    let mut pending = futures::stream::FuturesUnordered::new();
    for i in 0..n {
        let key = format!("k{i}");
        let headers = OwnedHeaders::new().insert(Header {
            key: TARGET,
            value: Some(target),
        });
        let mut rec = FutureRecord::to(tier)
            .key(&key)
            .payload(&value)
            .headers(headers)
            .timestamp(old);
        loop {
            match p.send_result(rec) {
                Ok(delivery) => break pending.push(delivery),
                Err((_, back)) => {
                    rec = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        if pending.len() >= 20_000 {
            use futures::StreamExt;
            while pending.len() > 10_000 {
                pending
                    .next()
                    .await
                    .expect("pending")
                    .expect("delivered")
                    .expect("acked");
            }
        }
    }
    use futures::StreamExt;
    while let Some(r) = pending.next().await {
        r.expect("delivered").expect("acked");
    }
    p.flush(Duration::from_secs(10)).expect("flush");
}

/// Drains `n` due records once; returns records per second from the first
/// record read to the last acknowledgement or commit. Exactly-once figures
/// include each partition's first commit, whose group-coordinator lookup
/// librdkafka retries after 500 ms when the new producer has no connection to
/// it yet (a one-time cost per assignment; large runs keep it small).
async fn drain(mock: &Mock, dir: &std::path::Path, n: usize, exactly_once: bool) -> f64 {
    let prefix = format!("eosb-{}", now_ms());
    let config = topics(dir, &prefix);
    let tier = config.tiers[0].topic().to_string();
    let target = format!("{prefix}-out");
    mock.create_topic(&tier, partitions(), 1).expect("tier");
    mock.create_topic(&config.dead_letter.topic, 1, 1)
        .expect("dlq");
    mock.create_topic(&target, partitions(), 1).expect("target");
    let kafka = KafkaSettings::new(mock.bootstrap_servers());
    load(&kafka, &tier, &target, n).await;

    let mut options = RouterOptions::new(kafka);
    options.group_id = format!("{prefix}-router");
    if exactly_once {
        options.exactly_once = Some(ExactlyOnce {
            id_prefix: options.group_id.clone(),
            interval: Duration::from_millis(100),
        });
    }
    let router = Router::start(config, options).await.expect("router");
    let m = router.metrics.clone();
    let read = m.records_read.with_label_values(&[&tier]);
    let delivered = m.records_delivered.with_label_values(&[&tier]);
    let committed = m.transactions.with_label_values(&[&tier, "committed"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while read.get() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let start = Instant::now();
    while (delivered.get() as usize) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        delivered.get() as usize >= n,
        "only {} of {n} delivered after 120 s: more than the mock keeps per partition?",
        delivered.get()
    );
    let mut end = start.elapsed();
    if exactly_once {
        // Done when the last transaction committed: no commit for 500 ms.
        let (mut last, mut at) = (committed.get(), start.elapsed());
        while start.elapsed() - at < Duration::from_millis(500) {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if committed.get() != last {
                (last, at) = (committed.get(), start.elapsed());
            }
        }
        end = at.max(end);
        eprintln!(
            "    {} transactions committed, {} aborted",
            committed.get(),
            m.transactions.with_label_values(&[&tier, "aborted"]).get()
        );
    }
    router.shutdown().await.expect("shutdown");
    delivered.get() as f64 / end.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n: usize = std::env::var("EOS_BENCH_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600_000);
    let mock = MockCluster::new(3).expect("mock cluster");
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut alo, mut eos) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for exactly_once in order {
            let rate = drain(&mock, dir.path(), n, exactly_once).await;
            let mode = if exactly_once {
                "exactly-once"
            } else {
                "at-least-once"
            };
            eprintln!("  round {round}: {mode} {rate:.0} records/s");
            if exactly_once { &mut eos } else { &mut alo }.push(rate);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "{}",
        serde_json::json!({
            "broker": "librdkafka mock cluster, 3 brokers, in process",
            "records": n,
            "value_bytes": value_bytes(),
            "partitions": partitions(),
            "transaction_interval_ms": 100,
            "at_least_once_runs": alo,
            "exactly_once_runs": eos,
        })
    );
    println!(
        "SUMMARY eos_bench: at-least-once {:.0} rec/s, exactly-once {:.0} rec/s, ratio {:.2} ({n} records of {} bytes on {} partitions, {ROUNDS} runs each, mock cluster)",
        mean(&alo),
        mean(&eos),
        mean(&eos) / mean(&alo),
        value_bytes(),
        partitions(),
    );
}
