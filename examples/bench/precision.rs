//! Precision across rates: the router (the release binary, tiers 1s, 5s, 30s
//! and 1m with 6 partitions each) under the steady mix at each rate, with a
//! plain produce-to-consume probe running beside it on the same broker: the
//! floor no router can beat.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::child::RouterProcess;
use crate::common::{
    load_producer, make_topics, metric_sum, metrics_text, router_like_producer, topics_file, Rng,
};
use crate::load::{bench_headers, cascade_span, mix, paced, warm_path, Delivery, Outgoing};
use crate::reader::Reader;

/// The router's tiers (ms) and partitions per tier.
pub const TIERS: [u64; 4] = [1_000, 5_000, 30_000, 60_000];
pub const PARTITIONS: i32 = 6;

/// Targets: router p99 at most this much above the probe's p99, ...
pub const P99_OVER_PROBE_MS: i64 = 10;
/// ... and no record later than this.
pub const MAX_MS: i64 = 50;
/// The broker is taken to carry a rate when the producer reaches this share of
/// it and the probe's own p99 stays within the router's max target.
pub const KEEPS_UP_SHARE: f64 = 0.95;

/// Rates and durations of the precision scenarios.
pub struct RatePlan {
    pub rates: Vec<u32>,
    pub quick: bool,
    /// BENCH_SECS: load seconds per rate, for every rate.
    pub secs_override: Option<f64>,
    /// Probe records per second beside the router's load.
    pub probe_rate: f64,
}

impl RatePlan {
    /// 1, 10, 100, 1,000 and 5,000 records/s unless BENCH_RATES lists others;
    /// BENCH_SECS and BENCH_PROBE_RATE override the duration and the probe's rate.
    pub fn from_env(quick: bool) -> Result<RatePlan> {
        if std::env::var_os("BENCH_RATE").is_some() {
            bail!("BENCH_RATE is no longer read: set BENCH_RATES (a comma list, e.g. 500 or 1,10,100)");
        }
        let rates = match std::env::var("BENCH_RATES") {
            Ok(v) if !v.trim().is_empty() => v
                .split(',')
                .map(|r| {
                    r.trim()
                        .replace('_', "")
                        .parse::<u32>()
                        .ok()
                        .filter(|r| *r > 0)
                        .with_context(|| format!("BENCH_RATES: {r:?} is not a positive integer"))
                })
                .collect::<Result<Vec<_>>>()?,
            _ => vec![1, 10, 100, 1_000, 5_000],
        };
        let num = |k: &str| -> Result<Option<f64>> {
            match std::env::var(k) {
                Ok(v) => Ok(Some(
                    v.parse::<f64>()
                        .ok()
                        .filter(|x| *x > 0.0)
                        .with_context(|| format!("{k}: {v:?} is not a positive number"))?,
                )),
                Err(_) => Ok(None),
            }
        };
        Ok(RatePlan {
            rates,
            quick,
            secs_override: num("BENCH_SECS")?,
            probe_rate: num("BENCH_PROBE_RATE")?.unwrap_or(20.0),
        })
    }

    /// Load seconds at `rate`: 30 s (5 s quick), longer at low rates so that
    /// each rate gets at least 100 records (10 quick).
    pub fn seconds(&self, rate: u32) -> f64 {
        if let Some(s) = self.secs_override {
            return s;
        }
        let (base, min_records) = if self.quick {
            (5.0, 10.0)
        } else {
            (30.0, 100.0)
        };
        f64::max(base, min_records / f64::from(rate))
    }

    /// How long to wait for the last records after the load: the longest delay plus 30 s.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(cascade_span(self.quick).1) + Duration::from_secs(30)
    }
}

/// Partition pauses and resumes seen by sampling the router's
/// `partitions_paused` gauge every 200 ms (so these are lower bounds).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pauses {
    pub pauses_at_least: u64,
    pub resumes_at_least: u64,
    pub peak_paused: u64,
    pub samples: u64,
    pub samples_with_paused: u64,
}

/// The router's own error counters over one rate.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RouterErrors {
    pub producer: f64,
    pub consumer: f64,
    pub dead_lettered: f64,
}

/// Whether the router met its targets at one rate.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub router_minus_probe_p99_ms: i64,
    /// Why the broker itself could not carry this rate here, when it could not.
    pub beyond_broker: Option<String>,
    /// The targets missed, in words (empty when all were met).
    pub missed: Vec<String>,
    pub met: bool,
}

impl Verdict {
    pub fn judge(router: &Delivery, probe: &Delivery) -> Verdict {
        let r = &router.lateness;
        let diff = r.p99_ms - probe.lateness.p99_ms;
        let mut missed = Vec::new();
        if r.early > 0 {
            missed.push(format!("{} early", r.early));
        }
        if router.undelivered > 0 {
            missed.push(format!("{} not delivered", router.undelivered));
        }
        if diff > P99_OVER_PROBE_MS {
            missed.push(format!("p99 {diff:+} ms over the probe"));
        }
        if r.max_ms > MAX_MS {
            missed.push(format!("max {} ms", r.max_ms));
        }
        let load = &router.sent;
        let beyond_broker = if load.achieved_rate < KEEPS_UP_SHARE * load.requested_rate {
            Some(format!(
                "the producer reached {:.0} of {:.0} records/s",
                load.achieved_rate, load.requested_rate
            ))
        } else if probe.undelivered > 0 {
            Some(format!("{} probe records not delivered", probe.undelivered))
        } else if probe.lateness.p99_ms > MAX_MS {
            Some(format!(
                "the probe's own p99 is {} ms",
                probe.lateness.p99_ms
            ))
        } else {
            None
        };
        Verdict {
            router_minus_probe_p99_ms: diff,
            met: missed.is_empty(),
            beyond_broker,
            missed,
        }
    }

    /// `yes`, `no: ...`, or `n/a: beyond the broker (...)`.
    pub fn describe(&self) -> String {
        let early = self.missed.iter().any(|m| m.ends_with("early"));
        match (&self.beyond_broker, self.met) {
            (_, true) => "yes".into(),
            (Some(why), false) if !early => format!("n/a, beyond the broker: {why}"),
            _ => format!("no: {}", self.missed.join(", ")),
        }
    }
}

/// The router and the probe at one rate.
#[derive(Debug, Clone, Serialize)]
pub struct RouterAtRate {
    pub rate: u32,
    pub seconds: f64,
    pub router: Delivery,
    pub probe: Delivery,
    pub pauses: Pauses,
    pub errors: RouterErrors,
    pub verdict: Verdict,
}

const PAUSED: &str = "kafka_delay_router_partitions_paused";

/// One router process serves every rate, one rate after the other, each with
/// its load, its probe and the drain of its last records.
pub async fn run(
    dir: &std::path::Path,
    plan: &RatePlan,
    router_bin: &std::path::Path,
) -> Result<Vec<RouterAtRate>> {
    let prefix = format!("bench-prec-{}", kafka_delay_router::kafka::now_ms());
    let (target, probe_topic) = (format!("{prefix}-out"), format!("{prefix}-probe"));
    let config = make_topics(dir, &prefix, &TIERS, PARTITIONS, &[&target, &probe_topic]).await?;
    let tiers = config.tier_set();
    let probe_producer = router_like_producer()?;
    let reader = Reader::start(&[&target, &probe_topic], &probe_producer).await?;
    let log = dir.join(format!("{prefix}-router.log"));
    let router = RouterProcess::start(
        router_bin,
        &topics_file(dir, &prefix),
        &format!("{prefix}-router"),
        Some(&log),
    )?;
    router
        .wait_assigned(
            TIERS.len() as i32 * PARTITIONS,
            Duration::from_secs(60),
            &log,
        )
        .await?;
    let load_producer = load_producer()?;
    let tier_topics: Vec<&str> = config.tiers.iter().map(|t| t.topic()).collect();
    warm_path(&load_producer, &tier_topics, &target, &reader).await?;
    let mut out = Vec::new();
    for &rate in &plan.rates {
        let secs = plan.seconds(rate);
        let (run, probe_run) = (format!("router@{rate}"), format!("probe@{rate}"));
        eprintln!(
            "precision: router at {rate} records/s for {secs:.0} s, probe at {} records/s ({prefix})",
            plan.probe_rate
        );
        let errors_before = router_errors(&router.addr).await;
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = tokio::spawn(sample_pauses(router.addr.clone(), stop.clone()));
        let (mut load_rng, mut probe_rng) = (Rng::seeded(), Rng::seeded());
        let (load, probe) = tokio::join!(
            paced(&load_producer, f64::from(rate), secs, |i, now| {
                let d = mix(i, &mut load_rng, plan.quick);
                let due = now + d.delay_ms as i64;
                Outgoing {
                    topic: config.tiers[tiers.entry_tier(d.delay_ms)]
                        .topic()
                        .to_string(),
                    key: load_rng.key(),
                    headers: bench_headers(&run, i, d.kind, due, Some(&target), d.deliver_at),
                    timestamp: now,
                }
            }),
            paced(&probe_producer, plan.probe_rate, secs, |i, now| Outgoing {
                topic: probe_topic.clone(),
                key: probe_rng.key(),
                headers: bench_headers(&probe_run, i, "probe", now, None, false),
                timestamp: now,
            }),
        );
        let (load, probe) = (load?, probe?);
        let got = reader
            .wait_for(&run, load.records, plan.drain_timeout())
            .await;
        reader
            .wait_for(&probe_run, probe.records, Duration::from_secs(10))
            .await;
        stop.store(true, Ordering::Relaxed);
        let pauses = sampler.await?;
        let errors_after = router_errors(&router.addr).await;
        let router_delivery = Delivery::summarize(load, &reader.take(&run), true);
        let probe_delivery = Delivery::summarize(probe, &reader.take(&probe_run), false);
        let verdict = Verdict::judge(&router_delivery, &probe_delivery);
        eprintln!(
            "  sent {}, arrived {got}; router p99 {} ms, probe p99 {} ms; paused partitions: peak {}, pauses >= {}",
            router_delivery.sent.records,
            router_delivery.lateness.p99_ms,
            probe_delivery.lateness.p99_ms,
            pauses.peak_paused,
            pauses.pauses_at_least
        );
        out.push(RouterAtRate {
            rate,
            seconds: secs,
            router: router_delivery,
            probe: probe_delivery,
            pauses,
            errors: RouterErrors {
                producer: errors_after.producer - errors_before.producer,
                consumer: errors_after.consumer - errors_before.consumer,
                dead_lettered: errors_after.dead_lettered - errors_before.dead_lettered,
            },
            verdict,
        });
    }
    router.stop().await?;
    Ok(out)
}

async fn router_errors(addr: &str) -> RouterErrors {
    let text = metrics_text(addr).await.unwrap_or_default();
    RouterErrors {
        producer: metric_sum(&text, "kafka_delay_router_producer_errors_total"),
        consumer: metric_sum(&text, "kafka_delay_router_consumer_errors_total"),
        dead_lettered: metric_sum(&text, "kafka_delay_router_records_dead_lettered_total"),
    }
}

async fn sample_pauses(addr: String, stop: Arc<AtomicBool>) -> Pauses {
    let mut p = Pauses::default();
    let mut last: Option<u64> = None;
    while !stop.load(Ordering::Relaxed) {
        if let Some(text) = metrics_text(&addr).await {
            let now = metric_sum(&text, PAUSED) as u64;
            p.samples += 1;
            p.samples_with_paused += u64::from(now > 0);
            p.peak_paused = p.peak_paused.max(now);
            if let Some(l) = last {
                p.pauses_at_least += now.saturating_sub(l);
                p.resumes_at_least += l.saturating_sub(now);
            }
            last = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    p
}
