//! The results: what results.json holds, the markdown tables (stdout and
//! results.md), the machine line, and the one-line summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kafka_delay_router::TopicsConfig;
use serde::Serialize;

use crate::cancel::CancelThroughput;
use crate::common::{bootstrap, Lateness};
use crate::load::{Delivery, KINDS};
use crate::memory::Memory;
use crate::precision::RouterAtRate;
use crate::requeue::{RequeueAtRate, SLEEP};
use crate::throughput::Throughput;

/// Everything a run measured; `None` where a scenario was not selected.
#[derive(Serialize)]
pub struct Results {
    pub machine: String,
    pub quick: bool,
    pub throughput: Option<Throughput>,
    pub precision: Precision,
    pub memory: Option<Memory>,
    pub cancel_throughput: Option<CancelThroughput>,
    pub write_amplification: WriteAmplification,
    /// Every record's lateness (ms) per rate, for the plots: written to lateness_ms.json.
    #[serde(skip)]
    pub lateness_ms: RawLateness,
    pub seconds: f64,
}

#[derive(Serialize)]
pub struct Precision {
    pub rates: Vec<u32>,
    pub tiers_ms: Vec<u64>,
    pub partitions: i32,
    pub probe_rate: f64,
    pub mix: &'static str,
    pub target_p99_over_probe_ms: i64,
    pub target_max_ms: i64,
    pub requeue_sleep_ms: u64,
    pub router: Option<Vec<RouterAtRate>>,
    pub requeue: Option<Vec<RequeueAtRate>>,
}

pub const MIX: &str = "per 20 records: 6 fixed 1s, 4 fixed 5s (no deliver-at), 6 cascaded (deliver-at 1.2-12 s ahead, 1.2-6 s quick), 4 sub-second (deliver-at 100-900 ms ahead, smallest tier); random 16-hex-digit keys";

#[derive(Serialize, Default)]
pub struct RawLateness {
    pub router: BTreeMap<u32, Vec<i64>>,
    pub probe: BTreeMap<u32, Vec<i64>>,
    pub requeue: BTreeMap<u32, Vec<i64>>,
}

impl RawLateness {
    pub fn collect(router: &[RouterAtRate], requeue: &[RequeueAtRate]) -> RawLateness {
        RawLateness {
            router: router
                .iter()
                .map(|r| (r.rate, r.router.raw_ms.clone()))
                .collect(),
            probe: router
                .iter()
                .map(|r| (r.rate, r.probe.raw_ms.clone()))
                .collect(),
            requeue: requeue
                .iter()
                .map(|r| (r.rate, r.requeue.raw_ms.clone()))
                .collect(),
        }
    }
}

#[derive(Serialize)]
pub struct WriteRow {
    pub delay: &'static str,
    pub delay_ms: u64,
    pub router_writes: usize,
    /// One check per sleep at best: the initial write, a requeue per sleep, the delivery.
    pub requeue_writes_at_least: u64,
}

#[derive(Serialize)]
pub struct WriteAmplification {
    pub rows: Vec<WriteRow>,
    pub requeue_sleep_ms: u64,
    /// Measured in the baseline, per rate.
    pub requeue_measured_writes_per_delivered: BTreeMap<u32, f64>,
}

/// Kafka writes per delivered record from the hop plan of topics.yaml's tiers.
pub fn write_amplification(requeue: &[RequeueAtRate]) -> WriteAmplification {
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
    let sleep = SLEEP.as_millis() as u64;
    WriteAmplification {
        rows: delays
            .iter()
            .map(|&(delay, ms)| WriteRow {
                delay,
                delay_ms: ms,
                router_writes: tiers.plan(ms).kafka_writes(),
                requeue_writes_at_least: 2 + ms / sleep,
            })
            .collect(),
        requeue_sleep_ms: sleep,
        requeue_measured_writes_per_delivered: requeue
            .iter()
            .map(|r| (r.rate, r.writes_per_delivered))
            .collect(),
    }
}

/// CPU, cores, memory, and the broker it really ran against (BENCH_BROKER, set
/// by scripts/bench.sh when it started the broker itself).
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0)
        / 1024
        / 1024;
    let broker = match std::env::var("BENCH_BROKER") {
        Ok(b) if !b.trim().is_empty() => format!("{b} at {}", bootstrap()),
        _ => format!("the cluster at {}", bootstrap()),
    };
    format!("{cores} cores ({cpu}), {mem_gib} GiB RAM, broker {broker}")
}

fn lat(l: &Lateness) -> String {
    format!("{} | {} | {}", l.p50_ms, l.p99_ms, l.max_ms)
}

fn by_rate<T>(rows: Option<&[T]>, rate: u32, f: impl Fn(&T) -> u32) -> Option<&T> {
    rows?.iter().find(|r| f(r) == rate)
}

/// The markdown report.
pub fn markdown(r: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Machine: {}. Mode: {}.\n",
        r.machine,
        if r.quick { "quick" } else { "full" }
    );
    match &r.throughput {
        Some(t) => {
            let _ = writeln!(md, "| throughput ({} B records, {} partitions, one tier, all due) | records/s |\n|---|---|", t.record_bytes, t.partitions);
            let _ = writeln!(md, "| router | {:.0} |\n| bare forwarder (consume + produce, same settings) | {:.0} |\n| ratio router / bare | {:.2} |\n", t.router_records_per_s, t.bare_records_per_s, t.ratio);
        }
        None => md.push_str("Throughput: not run.\n\n"),
    }
    match &r.cancel_throughput {
        Some(c) => {
            let _ = writeln!(md, "| cancellation checks ({} B records, {} partitions, one tier, all due) | records/s (mean) | runs | start to first delivery (ms) |\n|---|---|---|---|", c.record_bytes, c.partitions);
            let base = c.cases.first().map_or(0.0, |b| b.records_per_s);
            for case in &c.cases {
                let runs: Vec<String> = case.runs.iter().map(|r| format!("{r:.0}")).collect();
                let first: Vec<String> = case
                    .first_delivery_ms
                    .iter()
                    .map(|f| format!("{f:.0}"))
                    .collect();
                let _ = writeln!(
                    md,
                    "| {} | {:.0} ({:.2} of without an id) | {} | {} |",
                    case.label,
                    case.records_per_s,
                    case.records_per_s / base,
                    runs.join(", "),
                    first.join(", ")
                );
            }
            md.push('\n');
        }
        None => md.push_str("Cancellation checks: not run.\n\n"),
    }
    precision_tables(&mut md, &r.precision);
    match &r.memory {
        Some(m) => {
            md.push_str("| records waiting in the 1h tier | router RSS (MiB) | records held in memory |\n|---|---|---|\n");
            for p in &m.points {
                let _ = writeln!(
                    md,
                    "| {} | {:.1} | {} |",
                    p.waiting, p.rss_mib, p.records_held
                );
            }
            let _ = writeln!(md, "\nRSS growth {:.1} MiB from the smallest to the largest backlog; {:.1} MiB per 1M waiting records ({}).\n", m.growth_mib, m.growth_mib_per_1m, m.per_1m_method);
        }
        None => md.push_str("Memory: not run.\n\n"),
    }
    md.push_str(
        "| delay | router Kafka writes | sleep-and-requeue writes (at least) |\n|---|---|---|\n",
    );
    for w in &r.write_amplification.rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            w.delay, w.router_writes, w.requeue_writes_at_least
        );
    }
    md
}

fn precision_tables(md: &mut String, p: &Precision) {
    if p.router.is_none() && p.requeue.is_none() {
        md.push_str("Precision: not run.\n\n");
        return;
    }
    let router = p.router.as_deref();
    let requeue = p.requeue.as_deref();
    let tiers: Vec<String> = p
        .tiers_ms
        .iter()
        .map(|ms| format!("{}s", ms / 1000))
        .collect();
    let _ = writeln!(
        md,
        "Precision across rates (lateness in ms = arrival at a reader of the target minus the due time). \
         Router: the release binary, tiers {} with {} partitions each; sleep-and-requeue: {} ms sleep, {} partitions; \
         mix {}. Probe: records produced straight to a topic of the same broker at {} records/s beside the router's load, \
         read by the same reader; lateness = arrival minus produce time, the floor for any router. \
         Targets: router p99 at most {} ms above the probe's p99, max at most {} ms, 0 early, all delivered.\n",
        tiers.join(", "), p.partitions, p.requeue_sleep_ms, p.partitions, p.mix, p.probe_rate, p.target_p99_over_probe_ms, p.target_max_ms
    );
    md.push_str("| rate (records/s) | records | router p50 | p99 | p99.9 | max | early | probe p50 | p99 | max | requeue p50 | p99 | max | router p99 - probe p99 | target met? |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let dash3 = "- | - | -";
    for &rate in &p.rates {
        let rr = by_rate(router, rate, |r| r.rate);
        let rq = by_rate(requeue, rate, |r| r.rate);
        let (records, router_cols, probe_cols, diff, verdict) = match rr {
            Some(r) => {
                let l = &r.router.lateness;
                (
                    r.router.sent.records.to_string(),
                    format!(
                        "{} | {} | {} | {} | {}",
                        l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms, l.early
                    ),
                    lat(&r.probe.lateness),
                    format!("{:+}", r.verdict.router_minus_probe_p99_ms),
                    r.verdict.describe(),
                )
            }
            None => (
                "-".into(),
                "- | - | - | - | -".into(),
                dash3.into(),
                "-".into(),
                "-".into(),
            ),
        };
        let requeue_cols = rq.map_or(dash3.into(), |q| lat(&q.requeue.lateness));
        let _ = writeln!(md, "| {rate} | {records} | {router_cols} | {probe_cols} | {requeue_cols} | {diff} | {verdict} |");
    }
    md.push('\n');
    details_table(md, p, router, requeue);
    if let Some(router) = router {
        md.push_str("Router lateness by kind (ms):\n\n| rate | kind | records | p50 | p99 | p99.9 | max | early |\n|---|---|---|---|---|---|---|---|\n");
        for r in router {
            for kind in KINDS {
                if let Some(l) = r.router.by_kind.get(kind) {
                    let _ = writeln!(
                        md,
                        "| {} | {kind} | {} | {} | {} | {} | {} | {} |",
                        r.rate, l.count, l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms, l.early
                    );
                }
            }
        }
        md.push('\n');
    }
}

fn sent_cols(d: &Delivery) -> String {
    format!(
        "{} at {:.0}/s, acks p99 {} ms | {} / {} / {}",
        d.sent.records,
        d.sent.achieved_rate,
        d.sent.ack_p99_ms,
        d.delivered,
        d.undelivered,
        d.duplicates
    )
}

fn details_table(
    md: &mut String,
    p: &Precision,
    router: Option<&[RouterAtRate]>,
    requeue: Option<&[RequeueAtRate]>,
) {
    md.push_str("Per rate (records sent at the achieved rate, acknowledgement p99 of the load producer; delivered / not delivered / duplicates):\n\n");
    md.push_str("| rate | seconds | router load | router delivered | probe | probe delivered | paused partitions: peak, pauses, resumes (at least) | router errors: producer, consumer, dead-lettered | requeue load | requeue delivered | requeue writes per record |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for &rate in &p.rates {
        let rr = by_rate(router, rate, |r| r.rate);
        let rq = by_rate(requeue, rate, |r| r.rate);
        let seconds = rr
            .map(|r| r.seconds)
            .or(rq.map(|q| q.seconds))
            .unwrap_or(0.0);
        let router_cols = rr.map_or("- | - | - | - | - | -".into(), |r| {
            format!(
                "{} | {} | {}, {}, {} | {}, {}, {}",
                sent_cols(&r.router),
                sent_cols(&r.probe),
                r.pauses.peak_paused,
                r.pauses.pauses_at_least,
                r.pauses.resumes_at_least,
                r.errors.producer,
                r.errors.consumer,
                r.errors.dead_lettered
            )
        });
        let requeue_cols = rq.map_or("- | - | -".into(), |q| {
            format!("{} | {:.1}", sent_cols(&q.requeue), q.writes_per_delivered)
        });
        let _ = writeln!(
            md,
            "| {rate} | {seconds:.0} | {router_cols} | {requeue_cols} |"
        );
    }
    md.push('\n');
    if let Some(router) = router {
        for r in router.iter().filter(|r| r.verdict.beyond_broker.is_some()) {
            let _ = writeln!(
                md,
                "At {} records/s the broker itself did not keep up on this machine: {}.",
                r.rate,
                r.verdict.beyond_broker.as_deref().unwrap_or("")
            );
        }
        let thin: Vec<String> = router
            .iter()
            .filter(|r| r.router.delivered < 100)
            .map(|r| format!("{}/s ({} records)", r.rate, r.router.delivered))
            .collect();
        if !thin.is_empty() {
            let _ = writeln!(
                md,
                "Router figures resting on fewer than 100 records (p99 is then about the max): {}.",
                thin.join(", ")
            );
        }
        md.push('\n');
    }
}

/// The last line of the run: the headline figures.
pub fn summary(r: &Results) -> String {
    let throughput = r
        .throughput
        .as_ref()
        .map_or("throughput not run".into(), |t| {
            format!("throughput ratio {:.2}", t.ratio)
        });
    let precision = match &r.precision.router {
        Some(rows) => {
            let per_rate: Vec<String> = rows
                .iter()
                .map(|x| {
                    format!(
                        "{}/s {:+} ms ({})",
                        x.rate,
                        x.verdict.router_minus_probe_p99_ms,
                        if x.verdict.met {
                            "met"
                        } else if x.verdict.beyond_broker.is_some() {
                            "beyond broker"
                        } else {
                            "missed"
                        }
                    )
                })
                .collect();
            let early: usize = rows.iter().map(|x| x.router.lateness.early).sum();
            let max = rows
                .iter()
                .map(|x| x.router.lateness.max_ms)
                .max()
                .unwrap_or(0);
            format!(
                "router p99 over probe p99: {}; router max {max} ms, early {early}",
                per_rate.join(", ")
            )
        }
        None => "router precision not run".into(),
    };
    let memory = r.memory.as_ref().map_or("memory not run".into(), |m| {
        format!("rss growth {:.1} MiB per 1M waiting", m.growth_mib_per_1m)
    });
    format!("{throughput}; {precision}; {memory}")
}
