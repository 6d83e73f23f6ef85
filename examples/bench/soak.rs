//! The soak: the router binary for `SOAK_MINUTES` (default 60; `--quick` 3)
//! at a steady `SOAK_RATE` (default 500 records/s, paced, not bursts) under a
//! realistic mix, measured minute by minute.
//!
//! The mix: tiers 1s, 5s, 30s, 1m, 10m, 1h (6 partitions each) and a cancel
//! topic; one record in four waits a whole tier (no `delay-deliver-at`), the
//! others carry a `delay-deliver-at` 100 ms to 1 h ahead (log-uniform, so
//! every tier and the cascade carry records); random keys; one record in five
//! has a `delay-id`, and half of those are cancelled with
//! `DelayProducer::cancel` 10-70 % of the way to their due time; one record in
//! 5,000 is hostile (no `delay-target`, a malformed `delay-deliver-at`, or a
//! target not allowed) and must be dead-lettered. Half-way the router is
//! stopped with SIGTERM, waited for, and started again. The readers of the
//! target and of the dead-letter topic are positioned at their ends before the
//! first record is produced.
//!
//! Every minute one line goes to `soak.jsonl` under `--out` (and a human line
//! to stdout); at the end, once everything due within the run has had time to
//! arrive, `soak-summary.json` and one summary line. The run fails if a record
//! was lost, delivered early, or delivered although its cancellation was
//! acknowledged before its due time.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kafka_delay_router::cancel::ID_HEADER;
use kafka_delay_router::headers::DELIVER_AT;
use kafka_delay_router::kafka::now_ms;
use kafka_delay_router::{DelayProducer, When};
use rdkafka::message::Header;
use serde::Serialize;

use crate::child::RouterProcess;
use crate::common::{
    cpu_ticks, load_producer, make_topics_with, metric_by_label, metric_sum, metrics_text,
    router_like_producer, rss_kib, settings, topics_file, Lateness, Rng, CLOCK_TICKS,
};
use crate::load::{bench_headers, paced, warm_path, Outgoing};
use crate::reader::Reader;

/// The default tiers of topics.yaml, in ms.
pub const TIERS: [u64; 6] = [1_000, 5_000, 30_000, 60_000, 600_000, 3_600_000];
pub const PARTITIONS: i32 = 6;
const RUN: &str = "soak";
const HOSTILE_RUN: &str = "soak-hostile";
/// One record in this many is hostile.
const HOSTILE_EVERY: usize = 5_000;
/// One record in this many carries a `delay-id`.
const ID_EVERY: usize = 5;
/// How long after a minute ends its line waits for that minute's arrivals.
const GRACE: Duration = Duration::from_secs(15);
/// How long after the load ends records due within it may take to arrive.
const FINAL_WAIT: Duration = Duration::from_secs(120);
const CANCELLED: &str = "kafka_delay_router_records_cancelled_total";
const DEAD_LETTERED: &str = "kafka_delay_router_records_dead_lettered_total";

/// Length and rate of the soak.
pub struct Plan {
    pub minutes: u32,
    pub rate: f64,
}

impl Plan {
    pub fn from_env(quick: bool) -> Result<Plan> {
        let minutes = match std::env::var("SOAK_MINUTES") {
            Ok(v) => v
                .parse()
                .ok()
                .filter(|m| *m > 0)
                .with_context(|| format!("SOAK_MINUTES: {v:?} is not a positive integer"))?,
            Err(_) if quick => 3,
            Err(_) => 60,
        };
        let rate = match std::env::var("SOAK_RATE") {
            Ok(v) => v
                .parse()
                .ok()
                .filter(|r: &f64| *r > 0.0)
                .with_context(|| format!("SOAK_RATE: {v:?} is not a positive number"))?,
            Err(_) => 500.0,
        };
        Ok(Plan { minutes, rate })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Cancel {
    #[default]
    None,
    /// Scheduled, not acknowledged yet.
    Planned,
    /// Acknowledged by the broker at this time (epoch ms).
    Acked(i64),
    Failed,
}

/// The test's own book of one record sent.
#[derive(Debug, Clone, Copy, Default)]
struct Rec {
    due: i64,
    hostile: bool,
    cancel: Cancel,
    /// First arrival on the target (epoch ms), 0 if none.
    arrived: i64,
}

impl Rec {
    fn cancelled_in_time(&self) -> bool {
        matches!(self.cancel, Cancel::Acked(at) if at < self.due)
    }
}

/// One minute of the soak, as written to soak.jsonl.
#[derive(Debug, Clone, Serialize)]
pub struct Minute {
    pub minute: u32,
    /// Records due in this minute, less those whose cancellation was
    /// acknowledged in time and that did not arrive, and how many arrived.
    pub due: usize,
    pub arrived: usize,
    /// Of the arrived records due in this minute, at the time of the line.
    pub lateness: Lateness,
    /// Distinct records that arrived on the target during this minute.
    pub delivered: usize,
    /// The router's records_cancelled_total over the minute (all its processes).
    pub cancelled: f64,
    /// Cancellations the test had acknowledged during the minute.
    pub cancels_acked: usize,
    /// Records arriving on the dead-letter topic during the minute.
    pub dead_lettered: usize,
    pub router_pid: u32,
    pub router_rss_mib: f64,
    /// Fraction of a core over the minute.
    pub router_cpu: f64,
    pub broker_cpu: Option<f64>,
    pub broker_rss_mib: Option<f64>,
    pub held_records: f64,
    pub held_bytes: f64,
    /// Consumer lag per tier (1s, 5s, ...), as the router last sampled it.
    pub lag: BTreeMap<String, f64>,
    /// Held records per tier.
    pub held_by_tier: BTreeMap<String, f64>,
    /// The router was restarted during this minute.
    pub restart: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub minutes: u32,
    pub rate: f64,
    /// Ordinary records produced (hostile ones apart).
    pub sent: usize,
    /// Every record produced, hostile ones included.
    pub produced: usize,
    pub delivered: usize,
    /// Due within the run, cancellation acknowledged before the due time, not delivered.
    pub cancelled: usize,
    /// The router's records_cancelled_total over the run (all its processes), at its last scrape.
    pub router_cancelled: f64,
    /// The book's count to compare with it: not arrived, cancellation
    /// acknowledged before the due time, due by the router's last scrape.
    pub book_cancelled_by_scrape: usize,
    /// Due within the run, cancellation acknowledged after the due time, not delivered.
    pub cancel_late_won: usize,
    /// Cancellation acknowledged after the due time, delivered.
    pub cancel_late_delivered: usize,
    /// Due after the load ended, not arrived (cancelled or not).
    pub not_yet_due: usize,
    /// Due after the load ended, arrived (on time) during the final wait.
    pub delivered_after_end: usize,
    pub lost: usize,
    pub early: usize,
    pub cancelled_but_delivered: usize,
    pub duplicates: usize,
    pub hostile_sent: usize,
    pub dead_lettered: usize,
    pub dead_letter_reasons: BTreeMap<String, f64>,
    /// Hostile records that arrived on the target (must be 0).
    pub hostile_on_target: usize,
    /// Ordinary records that arrived on the dead-letter topic (must be 0).
    pub dead_lettered_ordinary: usize,
    /// Distinct arrivals as the reader counts them (must equal `delivered`).
    pub reader_distinct: usize,
    pub worst_minute: u32,
    pub worst_minute_p99_ms: i64,
    pub first_minute_p99_ms: i64,
    /// Each minute's lateness after the final wait.
    pub final_lateness: Vec<Lateness>,
    /// The worst minute's p99 apart from the minute of the restart.
    pub worst_steady_minute_p99_ms: i64,
    pub rss_at_5_min_mib: Option<f64>,
    /// RSS five minutes after the longest tier's first records came due
    /// (minute 65 with a 1h tier): from then on every tier carries records,
    /// so the client's prefetch is at its full size.
    pub rss_every_tier_due_mib: Option<f64>,
    pub rss_at_end_mib: f64,
    pub router_cpu_mean: f64,
    pub router_cpu_per_1000_per_s: f64,
    pub restart_at_s: f64,
    pub restart_took_s: f64,
    pub adds_up: bool,
    pub ok: bool,
}

/// Arrivals taken from the readers so far.
#[derive(Default)]
struct Tally {
    delivered_by_minute: BTreeMap<u32, usize>,
    dead_by_minute: BTreeMap<u32, usize>,
    duplicates: usize,
    hostile_on_target: usize,
    dead_lettered_ordinary: usize,
}

fn minute_of(t0_ms: i64, at_ms: i64) -> u32 {
    ((at_ms - t0_ms).max(0) / 60_000) as u32
}

/// Moves what the readers saw into the book and the tally.
fn absorb(target: &Reader, dlq: &Reader, book: &Mutex<Vec<Rec>>, t: &mut Tally, t0_ms: i64) {
    let seen = target.take(RUN);
    {
        let mut book = book.lock().unwrap();
        for s in seen {
            let Some(r) = s.id.parse::<usize>().ok().and_then(|i| book.get_mut(i)) else {
                continue;
            };
            if r.arrived == 0 {
                r.arrived = s.arrived;
                *t.delivered_by_minute
                    .entry(minute_of(t0_ms, s.arrived))
                    .or_default() += 1;
            } else {
                t.duplicates += 1;
            }
        }
    }
    t.hostile_on_target += target.take(HOSTILE_RUN).len();
    for s in dlq.take(HOSTILE_RUN) {
        *t.dead_by_minute
            .entry(minute_of(t0_ms, s.arrived))
            .or_default() += 1;
    }
    t.dead_lettered_ordinary += dlq.take(RUN).len();
}

/// Lateness of the records due in `minute` that arrived, and how many were
/// due there (not counting those whose cancellation was acknowledged in time).
fn minute_lateness(book: &[Rec], t0_ms: i64, minute: u32) -> (usize, Lateness) {
    let (from, to) = (
        t0_ms + i64::from(minute) * 60_000,
        t0_ms + i64::from(minute + 1) * 60_000,
    );
    let mut due = 0;
    let mut late = Vec::new();
    for r in book
        .iter()
        .filter(|r| !r.hostile && r.due >= from && r.due < to)
    {
        if r.arrived == 0 && r.cancelled_in_time() {
            continue;
        }
        due += 1;
        if r.arrived != 0 {
            late.push(r.arrived - r.due);
        }
    }
    (due, Lateness::of(&mut late))
}

/// A tier's short name (1s, 10m, 1h) from its delay in ms.
fn short(ms: u64) -> String {
    match ms {
        m if m % 3_600_000 == 0 => format!("{}h", m / 3_600_000),
        m if m % 60_000 == 0 => format!("{}m", m / 60_000),
        m if m % 1_000 == 0 => format!("{}s", m / 1_000),
        m => format!("{m}ms"),
    }
}

/// A delay from 100 ms to 1 h, uniform in its logarithm.
fn log_uniform_ms(rng: &mut Rng) -> u64 {
    let u = rng.next_u64() as f64 / u64::MAX as f64;
    let (lo, hi) = (100f64.ln(), 3_600_000f64.ln());
    (lo + u * (hi - lo)).exp().round() as u64
}

/// What is sampled at a minute's end.
#[derive(Default, Clone)]
struct Sample {
    router_pid: u32,
    router_rss_mib: f64,
    router_cpu: f64,
    broker_cpu: Option<f64>,
    broker_rss_mib: Option<f64>,
    held_records: f64,
    held_bytes: f64,
    lag: BTreeMap<String, f64>,
    held_by_tier: BTreeMap<String, f64>,
    cancelled_total: f64,
}

/// CPU and counters carried across the router's processes.
struct Meter {
    broker_pid: Option<u32>,
    /// Ticks and counters of router processes that have exited.
    ticks_base: u64,
    cancelled_base: f64,
    reasons_base: BTreeMap<String, f64>,
    last_router_ticks: u64,
    last_broker_ticks: u64,
    last_at: Instant,
    tier_names: BTreeMap<String, String>,
}

impl Meter {
    async fn sample(&mut self, router: &RouterProcess) -> Sample {
        let pid = router.pid();
        let now = Instant::now();
        let secs = now.duration_since(self.last_at).as_secs_f64().max(1e-3);
        let ticks = self.ticks_base + cpu_ticks(pid).unwrap_or(0);
        let router_cpu = ticks.saturating_sub(self.last_router_ticks) as f64 / CLOCK_TICKS / secs;
        self.last_router_ticks = ticks;
        let (broker_cpu, broker_rss_mib) = match self.broker_pid {
            Some(b) => {
                let bt = cpu_ticks(b).unwrap_or(self.last_broker_ticks);
                let cpu = bt.saturating_sub(self.last_broker_ticks) as f64 / CLOCK_TICKS / secs;
                self.last_broker_ticks = bt;
                (Some(cpu), rss_kib(b).map(|k| k as f64 / 1024.0))
            }
            None => (None, None),
        };
        self.last_at = now;
        let text = metrics_text(&router.addr).await.unwrap_or_default();
        let rename = |m: BTreeMap<String, f64>| -> BTreeMap<String, f64> {
            m.into_iter()
                .map(|(k, v)| (self.tier_names.get(&k).cloned().unwrap_or(k), v))
                .collect()
        };
        Sample {
            router_pid: pid,
            router_rss_mib: rss_kib(pid).unwrap_or(0) as f64 / 1024.0,
            router_cpu,
            broker_cpu,
            broker_rss_mib,
            held_records: metric_sum(&text, "kafka_delay_router_records_held"),
            held_bytes: metric_sum(&text, "kafka_delay_router_held_bytes"),
            lag: rename(metric_by_label(
                &text,
                "kafka_delay_router_consumer_lag",
                "tier",
            )),
            held_by_tier: rename(metric_by_label(
                &text,
                "kafka_delay_router_records_held",
                "tier",
            )),
            cancelled_total: self.cancelled_base + metric_sum(&text, CANCELLED),
        }
    }

    /// Takes the counters of a router about to stop into the base.
    async fn retire(&mut self, router: &RouterProcess) {
        let text = metrics_text(&router.addr).await.unwrap_or_default();
        self.cancelled_base += metric_sum(&text, CANCELLED);
        for (k, v) in metric_by_label(&text, DEAD_LETTERED, "reason") {
            *self.reasons_base.entry(k).or_default() += v;
        }
        self.ticks_base += cpu_ticks(router.pid()).unwrap_or(0);
    }
}

/// Starts the router and waits until it owns every tier partition.
async fn start_router(bin: &Path, config: &Path, group: &str, log: &Path) -> Result<RouterProcess> {
    let router = RouterProcess::start(bin, config, group, Some(log))?;
    router
        .wait_assigned(
            TIERS.len() as i32 * PARTITIONS,
            Duration::from_secs(120),
            log,
        )
        .await?;
    Ok(router)
}

pub async fn run(dir: &Path, out: &Path, plan: &Plan, router_bin: &Path) -> Result<Summary> {
    let prefix = format!("soak-{}", now_ms());
    let target = format!("{prefix}-out");
    let forbidden = "soak-not-allowed".to_string();
    let config = make_topics_with(
        dir,
        &prefix,
        &TIERS,
        PARTITIONS,
        &[&target],
        &format!("cancel: {{topic: {prefix}-cancel, partitions: 3}}\n"),
    )
    .await?;
    let tiers = config.tier_set();
    let dlq_topic = config.dead_letter.topic.clone();
    let tier_names: BTreeMap<String, String> = config
        .tiers
        .iter()
        .zip(TIERS)
        .map(|(t, ms)| (t.topic().to_string(), short(ms)))
        .collect();

    // The readers are at the ends of the target and the dead-letter topic
    // before anything is produced.
    let warm = router_like_producer()?;
    let reader = Reader::start_patiently(&[&target], &warm).await?;
    let dlq_reader = Reader::start_patiently(&[&dlq_topic], &warm).await?;

    let group = format!("{prefix}-router");
    let config_path = topics_file(dir, &prefix);
    // An Option so that the restart can stop it (stop takes it) and put the new one in.
    let mut router = Some(
        start_router(
            router_bin,
            &config_path,
            &group,
            &dir.join(format!("{prefix}-router-1.log")),
        )
        .await?,
    );
    let producer = load_producer()?;
    let tier_topics: Vec<&str> = config.tiers.iter().map(|t| t.topic()).collect();
    warm_path(&producer, &tier_topics, &target, &reader).await?;
    let canceller = DelayProducer::new(&settings(), config.clone())?;

    let jsonl_path = out.join("soak.jsonl");
    let mut jsonl = std::fs::File::create(&jsonl_path)
        .with_context(|| format!("creating {}", jsonl_path.display()))?;
    let secs = f64::from(plan.minutes) * 60.0;
    eprintln!(
        "soak: {} min at {} records/s ({prefix}); the router restarts at {:.0} s",
        plan.minutes,
        plan.rate,
        secs / 2.0
    );

    let book: Arc<Mutex<Vec<Rec>>> = Arc::new(Mutex::new(Vec::new()));
    let mut meter = Meter {
        broker_pid: std::env::var("SOAK_BROKER_PID")
            .ok()
            .and_then(|p| p.parse().ok()),
        ticks_base: 0,
        cancelled_base: 0.0,
        reasons_base: BTreeMap::new(),
        last_router_ticks: 0,
        last_broker_ticks: 0,
        last_at: Instant::now(),
        tier_names,
    };
    let mut tally = Tally::default();
    let mut rng = Rng::seeded();
    let t0 = Instant::now();
    let t0_ms = now_ms();
    let end_ms = t0_ms + (secs * 1000.0) as i64;
    meter.sample(router.as_ref().expect("running")).await;

    let load = paced(&producer, plan.rate, secs, |i, now| {
        let mut rec = Rec::default();
        let first_tier = config.tiers[0].topic().to_string();
        let out = if i % HOSTILE_EVERY == HOSTILE_EVERY / 2 {
            rec.hostile = true;
            let id = i.to_string();
            let headers = match (i / HOSTILE_EVERY) % 3 {
                0 => bench_headers(HOSTILE_RUN, i, "missing-target", now, None, false),
                1 => bench_headers(HOSTILE_RUN, i, "bad-deliver-at", now, Some(&target), false)
                    .insert(Header {
                        key: DELIVER_AT,
                        value: Some("12x4"),
                    }),
                _ => bench_headers(
                    HOSTILE_RUN,
                    i,
                    "target-not-allowed",
                    now,
                    Some(&forbidden),
                    false,
                ),
            };
            Outgoing {
                topic: first_tier,
                key: id.into_bytes(),
                headers,
                timestamp: now,
            }
        } else {
            let (kind, delay) = if i % 4 == 1 {
                (
                    "fixed",
                    TIERS[rng.between(0, TIERS.len() as u64 - 1) as usize],
                )
            } else {
                ("deliver-at", log_uniform_ms(&mut rng))
            };
            rec.due = now + delay as i64;
            let mut headers =
                bench_headers(RUN, i, kind, rec.due, Some(&target), kind == "deliver-at");
            if i % ID_EVERY == 0 {
                let id = i.to_string();
                headers = headers.insert(Header {
                    key: ID_HEADER,
                    value: Some(&id),
                });
                if rng.next_u64() % 2 == 0 {
                    rec.cancel = Cancel::Planned;
                    let frac = rng.between(10, 70) as f64 / 100.0;
                    let at = Instant::now() + Duration::from_secs_f64(delay as f64 * frac / 1000.0);
                    let (dp, book) = (canceller.clone(), book.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep_until(at.into()).await;
                        let got = dp
                            .cancel(id.as_bytes(), Some(When::After(Duration::from_secs(7_200))))
                            .await;
                        book.lock().unwrap()[i].cancel = match got {
                            Ok(c) => Cancel::Acked(c.acked_ms),
                            Err(e) => {
                                eprintln!("soak: cancelling {id}: {e}");
                                Cancel::Failed
                            }
                        };
                    });
                }
            }
            Outgoing {
                topic: config.tiers[tiers.entry_tier(delay)].topic().to_string(),
                key: rng.key(),
                headers,
                timestamp: now,
            }
        };
        let mut book = book.lock().unwrap();
        debug_assert_eq!(book.len(), i);
        book.push(rec);
        out
    });

    let restart_at = Duration::from_secs_f64(secs / 2.0);
    let mut restart_took = 0.0;
    let mut restart_minute = None;
    let mut minutes: Vec<Minute> = Vec::new();
    let monitor = async {
        let mut samples: BTreeMap<u32, (Sample, f64)> = BTreeMap::new();
        let mut last_cancelled = 0.0;
        let mut next_sample = 0u32;
        while minutes.len() < plan.minutes as usize {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let el = t0.elapsed();
            absorb(&reader, &dlq_reader, &book, &mut tally, t0_ms);
            if restart_minute.is_none() && el >= restart_at {
                let began = Instant::now();
                let old = router.take().expect("running");
                meter.retire(&old).await;
                old.stop().await?;
                let new = start_router(
                    router_bin,
                    &config_path,
                    &group,
                    &dir.join(format!("{prefix}-router-2.log")),
                )
                .await?;
                eprintln!(
                    "soak: router restarted at {:.1} s (pid {}), {:.1} s from SIGTERM to owning every partition",
                    el.as_secs_f64(),
                    new.pid(),
                    began.elapsed().as_secs_f64()
                );
                router = Some(new);
                restart_took = began.elapsed().as_secs_f64();
                restart_minute = Some((el.as_secs() / 60) as u32);
            }
            if next_sample < plan.minutes
                && el >= Duration::from_secs(60 * u64::from(next_sample + 1))
            {
                let s = meter.sample(router.as_ref().expect("running")).await;
                samples.insert(next_sample, (s, last_cancelled));
                last_cancelled = samples[&next_sample].0.cancelled_total;
                next_sample += 1;
            }
            let m = minutes.len() as u32;
            if el >= Duration::from_secs(60 * u64::from(m + 1)) + GRACE {
                let Some((s, cancelled_before)) = samples.remove(&m) else {
                    continue;
                };
                let (due, lateness) = minute_lateness(&book.lock().unwrap(), t0_ms, m);
                let cancels_acked = book
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|r| matches!(r.cancel, Cancel::Acked(at) if minute_of(t0_ms, at) == m && at >= t0_ms))
                    .count();
                let line = Minute {
                    minute: m,
                    due,
                    arrived: lateness.count,
                    lateness,
                    delivered: tally.delivered_by_minute.get(&m).copied().unwrap_or(0),
                    cancelled: s.cancelled_total - cancelled_before,
                    cancels_acked,
                    dead_lettered: tally.dead_by_minute.get(&m).copied().unwrap_or(0),
                    router_pid: s.router_pid,
                    router_rss_mib: s.router_rss_mib,
                    router_cpu: s.router_cpu,
                    broker_cpu: s.broker_cpu,
                    broker_rss_mib: s.broker_rss_mib,
                    held_records: s.held_records,
                    held_bytes: s.held_bytes,
                    lag: s.lag,
                    held_by_tier: s.held_by_tier,
                    restart: restart_minute == Some(m),
                };
                println!("{}", human(&line));
                writeln!(jsonl, "{}", serde_json::to_string(&line)?)?;
                jsonl.flush()?;
                minutes.push(line);
            }
        }
        anyhow::Ok(())
    };
    let (sent, monitored) = tokio::join!(load, monitor);
    let sent = sent?;
    monitored?;
    if sent.failed > 0 {
        eprintln!("soak: {} sends failed", sent.failed);
    }

    // Everything due within the run, not cancelled, and the dead letters.
    let hostile_sent = book.lock().unwrap().iter().filter(|r| r.hostile).count();
    let deadline = Instant::now() + FINAL_WAIT;
    loop {
        absorb(&reader, &dlq_reader, &book, &mut tally, t0_ms);
        let waiting = book
            .lock()
            .unwrap()
            .iter()
            .filter(|r| {
                !r.hostile
                    && r.due <= end_ms
                    && r.arrived == 0
                    && matches!(r.cancel, Cancel::None | Cancel::Failed)
            })
            .count();
        let dead = dlq_reader.distinct(HOSTILE_RUN);
        if (waiting == 0 && dead >= hostile_sent) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let router = router.expect("running");
    let scraped_ms = now_ms();
    let final_text = metrics_text(&router.addr).await.unwrap_or_default();
    let router_cancelled = meter.cancelled_base + metric_sum(&final_text, CANCELLED);
    let mut dead_letter_reasons = meter.reasons_base.clone();
    for (k, v) in metric_by_label(&final_text, DEAD_LETTERED, "reason") {
        *dead_letter_reasons.entry(k).or_default() += v;
    }
    let rss_at_end_mib = rss_kib(router.pid()).unwrap_or(0) as f64 / 1024.0;
    // Stopped before the last count, so that nothing arrives while the book
    // and the reader's own count are compared; copies arriving late show here.
    router.stop().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    absorb(&reader, &dlq_reader, &book, &mut tally, t0_ms);

    let book = book.lock().unwrap();
    let mut s = Summary {
        minutes: plan.minutes,
        rate: plan.rate,
        sent: 0,
        produced: sent.records,
        delivered: 0,
        cancelled: 0,
        router_cancelled,
        book_cancelled_by_scrape: book
            .iter()
            .filter(|r| {
                !r.hostile && r.arrived == 0 && r.due <= scraped_ms && r.cancelled_in_time()
            })
            .count(),
        cancel_late_won: 0,
        cancel_late_delivered: 0,
        not_yet_due: 0,
        delivered_after_end: 0,
        lost: 0,
        early: 0,
        cancelled_but_delivered: 0,
        duplicates: tally.duplicates,
        hostile_sent,
        dead_lettered: dlq_reader.distinct(HOSTILE_RUN),
        dead_letter_reasons,
        hostile_on_target: tally.hostile_on_target,
        dead_lettered_ordinary: tally.dead_lettered_ordinary,
        reader_distinct: reader.distinct(RUN),
        worst_minute: 0,
        worst_minute_p99_ms: 0,
        first_minute_p99_ms: 0,
        final_lateness: Vec::new(),
        worst_steady_minute_p99_ms: 0,
        rss_at_5_min_mib: minutes.get(4).map(|m| m.router_rss_mib),
        rss_every_tier_due_mib: minutes
            .get((TIERS[TIERS.len() - 1] / 60_000 + 5) as usize - 1)
            .map(|m| m.router_rss_mib),
        rss_at_end_mib,
        router_cpu_mean: 0.0,
        router_cpu_per_1000_per_s: 0.0,
        restart_at_s: restart_at.as_secs_f64(),
        restart_took_s: restart_took,
        adds_up: false,
        ok: false,
    };
    for r in book.iter().filter(|r| !r.hostile) {
        s.sent += 1;
        if r.arrived != 0 {
            s.delivered += 1;
            if r.arrived < r.due {
                s.early += 1;
            }
            if r.cancelled_in_time() {
                s.cancelled_but_delivered += 1;
            } else if matches!(r.cancel, Cancel::Acked(_)) {
                s.cancel_late_delivered += 1;
            }
            if r.due > end_ms {
                s.delivered_after_end += 1;
            }
        } else if r.due > end_ms {
            s.not_yet_due += 1;
        } else if r.cancelled_in_time() {
            s.cancelled += 1;
        } else if matches!(r.cancel, Cancel::Acked(_)) {
            s.cancel_late_won += 1;
        } else {
            s.lost += 1;
        }
    }
    s.final_lateness = (0..plan.minutes)
        .map(|m| minute_lateness(&book, t0_ms, m).1)
        .collect();
    if let Some((worst, l)) = s
        .final_lateness
        .iter()
        .enumerate()
        .max_by_key(|(_, l)| l.p99_ms)
    {
        s.worst_minute = worst as u32;
        s.worst_minute_p99_ms = l.p99_ms;
    }
    s.first_minute_p99_ms = s.final_lateness.first().map_or(0, |l| l.p99_ms);
    s.worst_steady_minute_p99_ms = s
        .final_lateness
        .iter()
        .enumerate()
        .filter(|(i, _)| !minutes.get(*i).is_some_and(|m| m.restart))
        .map(|(_, l)| l.p99_ms)
        .max()
        .unwrap_or(0);
    s.router_cpu_mean =
        minutes.iter().map(|m| m.router_cpu).sum::<f64>() / minutes.len().max(1) as f64;
    s.router_cpu_per_1000_per_s = s.router_cpu_mean / (plan.rate / 1000.0);
    s.adds_up = s.sent == s.delivered + s.cancelled + s.cancel_late_won + s.not_yet_due + s.lost
        && s.delivered == s.reader_distinct
        && s.sent + s.hostile_sent == s.produced;
    s.ok = s.lost == 0
        && s.early == 0
        && s.cancelled_but_delivered == 0
        && s.adds_up
        && s.hostile_on_target == 0
        && s.dead_lettered_ordinary == 0
        && s.dead_lettered == s.hostile_sent;
    std::fs::write(
        out.join("soak-summary.json"),
        serde_json::to_string_pretty(&s)?,
    )?;
    Ok(s)
}

fn human(m: &Minute) -> String {
    let tiers = |map: &BTreeMap<String, f64>| -> String {
        let mut v: Vec<(u64, String)> = map
            .iter()
            .map(|(k, x)| (tier_ms(k), format!("{k}:{x:.0}")))
            .collect();
        v.sort();
        v.into_iter().map(|(_, s)| s).collect::<Vec<_>>().join(" ")
    };
    format!(
        "minute {:>3}{}: due {} arrived {}, lateness p50 {} / p99 {} / max {} ms; delivered {}, cancelled {:.0} (acked {}), dead-lettered {}; router pid {} RSS {:.1} MiB CPU {:.3}; broker CPU {}; held {:.0} records / {:.1} KiB; lag {}",
        m.minute,
        if m.restart { " (restart)" } else { "" },
        m.due,
        m.arrived,
        m.lateness.p50_ms,
        m.lateness.p99_ms,
        m.lateness.max_ms,
        m.delivered,
        m.cancelled,
        m.cancels_acked,
        m.dead_lettered,
        m.router_pid,
        m.router_rss_mib,
        m.router_cpu,
        m.broker_cpu.map_or("-".into(), |c| format!("{c:.3}")),
        m.held_records,
        m.held_bytes / 1024.0,
        tiers(&m.lag),
    )
}

/// Sort key of a short tier name (1s before 5s before 1m ...).
fn tier_ms(name: &str) -> u64 {
    let (n, unit) = name.split_at(
        name.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(name.len()),
    );
    let n: u64 = n.parse().unwrap_or(0);
    n * match unit {
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1_000,
        _ => 1,
    }
}

/// The summary line.
pub fn summary(s: &Summary) -> String {
    format!(
        "soak {} min at {}/s: sent {}, delivered {}, lost {}, early {}, cancelled-but-delivered {}, cancelled {} (router counted {:.0}, the book {} by then; acknowledged after due: {} not delivered, {} delivered), not yet due {}, duplicates {}, dead-lettered {} of {} hostile (hostile on target {}, ordinary dead-lettered {}), worst minute p99 {} ms (minute {}), without the restart's minute {} ms, first minute p99 {} ms, RSS at 5 min {} / once every tier is due {} / at the end {:.1} MiB, router CPU {:.3} core per 1,000 records/s, restart {:.1} s; check: sent {} = delivered {} + cancelled {} + cancel late won {} + not yet due {} + lost {}, delivered = the reader's distinct {}, sent + hostile = produced {}: {}",
        s.minutes,
        s.rate,
        s.sent,
        s.delivered,
        s.lost,
        s.early,
        s.cancelled_but_delivered,
        s.cancelled,
        s.router_cancelled,
        s.book_cancelled_by_scrape,
        s.cancel_late_won,
        s.cancel_late_delivered,
        s.not_yet_due,
        s.duplicates,
        s.dead_lettered,
        s.hostile_sent,
        s.hostile_on_target,
        s.dead_lettered_ordinary,
        s.worst_minute_p99_ms,
        s.worst_minute,
        s.worst_steady_minute_p99_ms,
        s.first_minute_p99_ms,
        s.rss_at_5_min_mib
            .map_or("n/a".into(), |r| format!("{r:.1}")),
        s.rss_every_tier_due_mib
            .map_or("n/a".into(), |r| format!("{r:.1}")),
        s.rss_at_end_mib,
        s.router_cpu_per_1000_per_s,
        s.restart_took_s,
        s.sent,
        s.delivered,
        s.cancelled,
        s.cancel_late_won,
        s.not_yet_due,
        s.lost,
        s.reader_distinct,
        s.produced,
        if s.adds_up { "ok" } else { "DOES NOT ADD UP" },
    )
}
