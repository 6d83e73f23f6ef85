//! Cancellation checks on throughput: a backlog of due records in a
//! 6-partition tier, drained by the router (in process, its defaults) with a
//! cancel topic declared: records without a `delay-id`; records each with its
//! own `delay-id` and no outstanding cancellation; the same with 100k
//! outstanding cancellations of other ids (so every check is a miss in a
//! table of 100k); and, to tell the check from the bytes, records with a
//! `delay-id` through a router without a cancel topic. Each case drains its
//! own freshly loaded copy; the cases rotate order over the rounds. The rate
//! is measured from the first delivery to the last acknowledgement (a router
//! with ids first waits until its view of the cancel topic is fresh: reported
//! separately, as the time from the start to the first delivery).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use kafka_delay_router::cancel::ID_HEADER;
use kafka_delay_router::headers::TARGET;
use kafka_delay_router::kafka::now_ms;
use kafka_delay_router::router::{Router, RouterOptions};
use kafka_delay_router::{DelayProducer, When};
use serde::Serialize;

use crate::common::{load_producer, make_topics_with, produce_all, settings, Load};
use crate::throughput::{PARTITIONS, RECORD_BYTES};

pub const OUTSTANDING: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Case {
    /// No `delay-id`: no check.
    NoIds,
    /// A `delay-id` each, no cancellation outstanding.
    Ids0,
    /// A `delay-id` each, 100k cancellations of other ids outstanding.
    Ids100k,
    /// A `delay-id` each, but no cancel topic declared: the id is not read
    /// (the same bytes on the wire, no check, no cancel-topic reader).
    IdsNoCancelTopic,
}

impl Case {
    pub const ALL: [Case; 4] = [
        Case::NoIds,
        Case::Ids0,
        Case::Ids100k,
        Case::IdsNoCancelTopic,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Case::NoIds => "records without an id",
            Case::Ids0 => "records with an id, 0 outstanding cancellations",
            Case::Ids100k => "records with an id, 100,000 outstanding cancellations",
            Case::IdsNoCancelTopic => "records with an id, no cancel topic declared",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub case: Case,
    pub label: &'static str,
    /// Records/s per round, first delivery to last acknowledgement.
    pub runs: Vec<f64>,
    pub records_per_s: f64,
    /// Router start to first delivery per round, ms.
    pub first_delivery_ms: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CancelThroughput {
    pub records: usize,
    pub record_bytes: usize,
    pub partitions: i32,
    pub cases: Vec<CaseResult>,
}

pub async fn run(dir: &Path, quick: bool) -> Result<CancelThroughput> {
    let n: usize = if quick { 200_000 } else { 500_000 };
    let rounds = if quick { 2 } else { 3 };
    let mut cases: Vec<CaseResult> = Case::ALL
        .iter()
        .map(|&case| CaseResult {
            case,
            label: case.label(),
            runs: Vec::new(),
            records_per_s: 0.0,
            first_delivery_ms: Vec::new(),
        })
        .collect();
    for round in 0..rounds {
        for k in 0..Case::ALL.len() {
            let i = (k + round) % Case::ALL.len();
            let (rate, first) = drain_once(dir, n, Case::ALL[i]).await?;
            eprintln!(
                "cancel-throughput: round {round}: {}: {rate:.0} records/s, first delivery {first:.0} ms after the start",
                Case::ALL[i].label()
            );
            cases[i].runs.push(rate);
            cases[i].first_delivery_ms.push(first);
        }
    }
    for c in &mut cases {
        c.records_per_s = c.runs.iter().sum::<f64>() / c.runs.len() as f64;
    }
    Ok(CancelThroughput {
        records: n,
        record_bytes: RECORD_BYTES,
        partitions: PARTITIONS,
        cases,
    })
}

/// Loads `n` due records of 512 bytes into a fresh 6-partition tier (and, for
/// [`Case::Ids100k`], 100k cancellations into its cancel topic), starts the
/// router and times its drain; returns records/s from the first delivery and
/// the ms from the start to the first delivery.
async fn drain_once(dir: &Path, n: usize, case: Case) -> Result<(f64, f64)> {
    let prefix = format!("bench-cxl-{}", now_ms());
    let out = format!("{prefix}-out");
    let config = make_topics_with(
        dir,
        &prefix,
        &[1_000],
        PARTITIONS,
        &[&out],
        &match case {
            Case::IdsNoCancelTopic => String::new(),
            _ => format!("cancel: {{topic: {prefix}-cancel, partitions: 3}}\n"),
        },
    )
    .await?;
    let tier = config.tiers[0].topic().to_string();
    if case == Case::Ids100k {
        let dp = DelayProducer::new(&settings(), config.clone())?;
        let ids: Vec<String> = (0..OUTSTANDING).map(|i| format!("other-{i:08}")).collect();
        for chunk in ids.chunks(20_000) {
            for r in
                futures::future::join_all(chunk.iter().map(|id| {
                    dp.cancel(id.as_bytes(), Some(When::After(Duration::from_secs(3_600))))
                }))
                .await
            {
                r?;
            }
        }
    }
    let value = vec![b'v'; RECORD_BYTES];
    let old = now_ms() - 600_000;
    let p = load_producer()?;
    produce_all(
        &p,
        (0..n).map(|i| {
            let mut headers = vec![(TARGET, out.clone().into_bytes())];
            if case != Case::NoIds {
                headers.push((ID_HEADER, format!("order-{i:08}").into_bytes()));
            }
            Load {
                topic: &tier,
                key: format!("k{i}").into_bytes(),
                value: &value,
                headers,
                timestamp: old,
            }
        }),
    )
    .await?;
    let mut options = RouterOptions::new(settings());
    options.group_id = format!("{prefix}-router");
    let started = Instant::now();
    let router = Router::start(config.clone(), options).await?;
    let delivered = router.metrics.records_delivered.with_label_values(&[&tier]);
    let deadline = Instant::now() + Duration::from_secs(300);
    while delivered.get() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let first = started.elapsed();
    let (t0, d0) = (Instant::now(), delivered.get());
    while (delivered.get() as usize) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = (delivered.get() - d0) as f64 / t0.elapsed().as_secs_f64();
    let outstanding = router.metrics.cancellations_outstanding.get();
    let done = delivered.get() as usize;
    router.shutdown().await?;
    ensure!(done >= n, "{}: delivered {done} of {n}", case.label());
    let want = if case == Case::Ids100k {
        OUTSTANDING
    } else {
        0
    };
    ensure!(
        outstanding as usize == want,
        "{}: {outstanding} cancellations outstanding, {want} expected",
        case.label()
    );
    Ok((rate, first.as_secs_f64() * 1_000.0))
}
