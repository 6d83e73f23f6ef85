//! Throughput: a backlog of due records in a 6-partition tier, drained by the
//! router (in process, its defaults) and, on an identical fresh copy, by a bare
//! forwarder (plain consume then produce, the same librdkafka settings, no
//! delay logic), in alternating order, after a warm-up drain that is not counted.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::stream::{FuturesUnordered, StreamExt};
use kafka_delay_router::headers::TARGET;
use kafka_delay_router::kafka::{now_ms, TracingContext};
use kafka_delay_router::router::{Router, RouterOptions};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, Producer};
use serde::Serialize;

use crate::common::{
    copy_record, load_producer, make_topics, produce_all, send_waiting, settings, Load,
};

pub const RECORD_BYTES: usize = 512;
pub const PARTITIONS: i32 = 6;

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub records: usize,
    pub record_bytes: usize,
    pub partitions: i32,
    pub router_runs: Vec<f64>,
    pub bare_runs: Vec<f64>,
    pub router_records_per_s: f64,
    pub bare_records_per_s: f64,
    pub ratio: f64,
}

pub async fn run(dir: &Path, quick: bool) -> Result<Throughput> {
    // Long enough that a drain takes seconds, not a fraction of one.
    let n: usize = if quick { 200_000 } else { 500_000 };
    // Each run drains its own freshly loaded copy of the same backlog; the
    // router and the bare forwarder alternate, so neither always goes first.
    let rounds = 2;
    // A JVM broker (Apache Kafka) compiles its hot paths during the first
    // heavy load it sees: without a warm-up drain, whichever side went first
    // paid for it (router 0.59 of the bare forwarder first, 0.91 second).
    let warm = drain_once(dir, n / 2, false).await?;
    eprintln!("throughput: warm-up (not counted): bare {warm:.0} records/s");
    let (mut router_runs, mut bare_runs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for router in order {
            let rate = drain_once(dir, n, router).await?;
            let who = if router { "router" } else { "bare" };
            eprintln!("throughput: round {round}: {who} {rate:.0} records/s");
            if router {
                router_runs.push(rate);
            } else {
                bare_runs.push(rate);
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (router_rate, bare_rate) = (mean(&router_runs), mean(&bare_runs));
    Ok(Throughput {
        records: n,
        record_bytes: RECORD_BYTES,
        partitions: PARTITIONS,
        router_runs,
        bare_runs,
        router_records_per_s: router_rate,
        bare_records_per_s: bare_rate,
        ratio: router_rate / bare_rate,
    })
}

/// Loads `n` due records of 512 bytes into a fresh 6-partition tier and times
/// the router (or the bare forwarder) draining them, from the first record read
/// to the last acknowledgement.
async fn drain_once(dir: &Path, n: usize, router: bool) -> Result<f64> {
    let prefix = format!("bench-thr-{}", now_ms());
    let out = format!("{prefix}-out");
    let config = make_topics(dir, &prefix, &[1_000], PARTITIONS, &[&out]).await?;
    let tier = config.tiers[0].topic().to_string();
    let value = vec![b'v'; RECORD_BYTES];
    let old = now_ms() - 600_000;
    let p = load_producer()?;
    produce_all(
        &p,
        (0..n).map(|i| Load {
            topic: &tier,
            key: format!("k{i}").into_bytes(),
            value: &value,
            headers: vec![(TARGET, out.clone().into_bytes())],
            timestamp: old,
        }),
    )
    .await?;
    if !router {
        return bare_forwarder(&tier, &out, &format!("{prefix}-bare"), n).await;
    }
    // The router, in process, with its defaults (batching on: nothing pauses here).
    let mut options = RouterOptions::new(settings());
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
    let kafka = settings();
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
