//! Measures the cost of cancellation: heap bytes per outstanding cancellation
//! (counted by the allocator, at 1M held), the time of one `is_cancelled`
//! check with 0 and 100k outstanding, and, against the broker in
//! `KAFKA_BOOTSTRAP_SERVERS`, the time a new reader takes to read 1M
//! outstanding cancellations from the beginning of the cancel topic.
//!
//!   cargo run --release --example cancel_bench [-- --count N] [--no-broker]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kafka_delay_router::cancel::{self, CancelLimits, Cancellations};
use kafka_delay_router::kafka::{now_ms, KafkaSettings};
use kafka_delay_router::metrics::Metrics;
use kafka_delay_router::{admin, DelayProducer, TopicsConfig, When};
use tokio_util::sync::CancellationToken;

/// Counts the bytes the process has allocated and not freed.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn ids(n: usize, tag: &str) -> impl Iterator<Item = String> + '_ {
    (0..n).map(move |i| format!("{tag}-{i:012}"))
}

/// Heap bytes per cancellation with `n` held.
fn memory(n: usize) -> (f64, f64) {
    let view = Cancellations::new(CancelLimits {
        max_cancellations: usize::MAX,
    });
    let before = LIVE.load(Ordering::Relaxed);
    let until = now_ms() + 3_600_000;
    for id in ids(n, "order") {
        view.cancel(id.as_bytes(), until, 0);
    }
    let after = LIVE.load(Ordering::Relaxed);
    (
        (after - before) as f64 / n as f64,
        view.table_bytes() as f64 / n as f64,
    )
}

/// Nanoseconds per `is_cancelled` of ids not cancelled, with `held` outstanding.
fn check_cost(held: usize) -> f64 {
    let view = Cancellations::new(CancelLimits::default());
    for id in ids(held, "held") {
        view.cancel(id.as_bytes(), i64::MAX, 0);
    }
    let probes: Vec<String> = ids(200_000, "record").collect();
    let now = now_ms();
    let t = Instant::now();
    let mut hits = 0usize;
    for _ in 0..5 {
        for p in &probes {
            hits += usize::from(view.is_cancelled(p.as_bytes(), now));
        }
    }
    assert_eq!(hits, 0);
    t.elapsed().as_nanos() as f64 / (5 * probes.len()) as f64
}

async fn startup(n: usize) -> Result<()> {
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP_SERVERS")
        .context("set KAFKA_BOOTSTRAP_SERVERS, or pass --no-broker")?;
    let kafka = KafkaSettings::new(bootstrap);
    let prefix = format!("cancel-bench-{}", now_ms());
    let config = TopicsConfig::parse(
        "cancel-bench.yaml",
        &format!(
            "tiers: [{{topic: {prefix}-t1, delay: 1s, partitions: 1}}]\ndead-letter: {{topic: {prefix}-dlq, partitions: 1}}\ncancel: {{topic: {prefix}-cancel, partitions: 3}}\ntargets: {{allow: ['{prefix}-*']}}\n"
        ),
    )?;
    admin::create_topics(&config, &kafka, false).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dp = DelayProducer::new(&kafka, config.clone())?;
    let t = Instant::now();
    let all: Vec<String> = ids(n, "order").collect();
    for chunk in all.chunks(20_000) {
        for r in futures::future::join_all(chunk.iter().map(|id| {
            dp.cancel(
                id.as_bytes(),
                Some(When::After(Duration::from_secs(86_400))),
            )
        }))
        .await
        {
            r?;
        }
    }
    println!(
        "produced {n} cancellations in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let stop = CancellationToken::new();
    let started = now_ms();
    let t = Instant::now();
    let view = cancel::start(
        &config,
        &kafka,
        Arc::new(Metrics::new()),
        CancelLimits::default(),
        stop.clone(),
    )?;
    while view.fresh_until() < started {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = t.elapsed();
    anyhow::ensure!(view.len() == n, "read {} of {n}", view.len());
    println!(
        "a new reader read {n} outstanding cancellations and was fresh in {:.2} s ({:.0} per second)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    stop.cancel();
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut n = 1_000_000usize;
    let mut broker = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--count" => n = args.next().context("--count N")?.parse()?,
            "--no-broker" => broker = false,
            other => anyhow::bail!(
                "unknown argument {other}; usage: cancel_bench [--count N] [--no-broker]"
            ),
        }
    }
    let (heap, table) = memory(n);
    println!("{n} outstanding cancellations: {heap:.1} heap bytes each ({table:.1} of them the table's slots)");
    for held in [0, 100_000] {
        println!(
            "is_cancelled with {held} outstanding: {:.0} ns per check",
            check_cost(held)
        );
    }
    if broker {
        startup(n).await?;
    }
    Ok(())
}
