//! The figures: per failover, the lateness percentile, when `/readyz` went
//! not-ready and came back, when deliveries were on time again and which
//! watched metrics moved; the lateness by due time; the table.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::common::{Received, Tally};
use crate::load::{full, RATE_PER_S};
use crate::observe::Observed;

/// One failover: which node, what it was, and when.
pub struct Failover {
    pub scenario: String,
    pub node: u16,
    pub kill_at: i64,
    pub back_at: i64,
    pub healthy_at: i64,
}

pub fn p99(sorted: &[i64]) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() * 99).div_ceil(100)).max(1) - 1]
}

/// The first non-200 `/readyz` answer in `[from, to)` and the first 200 after it.
pub fn not_ready_span(ready: &[(i64, u16)], from: i64, to: i64) -> Option<(i64, Option<i64>)> {
    let mut it = ready.iter().filter(|(t, _)| *t >= from && *t < to);
    let down = it.find(|(_, s)| *s != 200)?.0;
    let up = it.find(|(_, s)| *s == 200).map(|r| r.0);
    Some((down, up))
}

/// Families worth showing when they move (the flow counters always move).
const WATCHED: &[&str] = &[
    "kafka_delay_router_producer_errors_total",
    "kafka_delay_router_consumer_errors_total",
    "kafka_delay_router_rebalances_total",
    "kafka_delay_router_producer_replacements_total",
    "kafka_delay_router_ready",
    "kafka_delay_router_dead_letters_blocked",
    "kafka_delay_router_partitions_assigned",
    "kafka_delay_router_consumer_lag",
    "kafka_delay_router_head_overdue_seconds",
    "kafka_delay_router_cancel_view_lag_seconds",
    "kafka_delay_router_records_held",
    "kafka_delay_router_held_bytes",
];

/// The watched series that moved in `[from, to]`: counters by their increase,
/// gauges from their value before to their extreme during.
pub fn moved_metrics(obs: &Observed, from: i64, to: i64, prefix: &str) -> Vec<String> {
    let before = obs.scrapes.iter().rev().find(|(t, _)| *t < from);
    let during: Vec<&BTreeMap<String, f64>> = obs
        .scrapes
        .iter()
        .filter(|(t, _)| *t >= from && *t <= to)
        .map(|(_, s)| s)
        .collect();
    let (Some((_, before)), Some(last)) = (before, during.last()) else {
        return vec!["no scrapes around this failover".into()];
    };
    let mut out = Vec::new();
    let keys: BTreeSet<&String> = during.iter().flat_map(|s| s.keys()).collect();
    for key in keys {
        let family = key.split('{').next().unwrap();
        if !WATCHED.contains(&family) {
            continue;
        }
        let short = key.replace(&format!("{prefix}-"), "");
        let b = before.get(key).copied().unwrap_or(0.0);
        if family.ends_with("_total") {
            let inc = last.get(key).copied().unwrap_or(b) - b;
            if inc > 0.0 {
                out.push(format!("{short} +{inc}"));
            }
        } else {
            let values: Vec<f64> = during.iter().filter_map(|s| s.get(key).copied()).collect();
            let max = values.iter().copied().fold(f64::MIN, f64::max);
            let min = values.iter().copied().fold(f64::MAX, f64::min);
            let extreme = if (b - min).abs() > (max - b).abs() {
                min
            } else {
                max
            };
            let big = match family {
                "kafka_delay_router_head_overdue_seconds" => (extreme - b).abs() >= 1.0,
                "kafka_delay_router_cancel_view_lag_seconds" => (extreme - b).abs() >= 1.0,
                "kafka_delay_router_records_held" | "kafka_delay_router_held_bytes" => {
                    extreme > 2.0 * b.max(1.0)
                }
                "kafka_delay_router_consumer_lag" => extreme > 2.0 * b.max(10.0),
                _ => extreme != b,
            };
            if big {
                out.push(format!("{short} {b} -> {extreme}"));
            }
        }
    }
    let failures = obs
        .scrape_failures
        .iter()
        .filter(|t| **t >= from && **t <= to)
        .count();
    if failures > 0 {
        out.push(format!("{failures} scrapes failed"));
    }
    out
}

/// On time again: the first due time after the kill from which every
/// record due in the next 10 s was at most 1 s late (`None`: no record due
/// from `kill_at` until `next` was more than 1 s late).
pub fn on_time_again(
    must: &HashMap<String, i64>,
    first_arrival: &HashMap<String, &Received>,
    kill_at: i64,
    next: i64,
) -> Option<i64> {
    let mut late_dues: Vec<i64> = must
        .iter()
        .filter(|(_, d)| **d >= kill_at && **d < next)
        .filter_map(|(v, d)| first_arrival.get(v).map(|r| (*d, r.arrived_ms - d)))
        .filter(|(_, late)| *late > 1_000)
        .map(|(due, _)| due)
        .collect();
    late_dues.sort_unstable();
    let mut since = kill_at;
    while let Some(last) = late_dues
        .iter()
        .filter(|d| **d >= since && **d < since + 10_000)
        .max()
    {
        since = last + 1;
    }
    (since > kill_at).then_some(since)
}

/// Lateness by due time, with the kills and restarts marked.
pub fn print_lateness_by_due_time(
    must: &HashMap<String, i64>,
    first_arrival: &HashMap<String, &Received>,
    failovers: &[Failover],
    load_started: i64,
) {
    let bucket_ms: i64 = if full() { 10_000 } else { 5_000 };
    let mut buckets: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (v, d) in must {
        if let Some(r) = first_arrival.get(v) {
            buckets
                .entry((d - load_started) / bucket_ms)
                .or_default()
                .push(r.arrived_ms - d);
        }
    }
    println!("\nlateness by due time (seconds after the load began):");
    for (b, lates) in buckets.iter_mut() {
        lates.sort_unstable();
        let (from, to) = (
            load_started + b * bucket_ms,
            load_started + (b + 1) * bucket_ms,
        );
        let marks: Vec<String> = failovers
            .iter()
            .flat_map(|f| {
                [
                    (f.kill_at, format!("node {} killed", f.node)),
                    (f.back_at, format!("node {} answering again", f.node)),
                ]
            })
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(t, what)| format!("{what} at {:.1} s", (t - load_started) as f64 / 1e3))
            .collect();
        println!(
            "detail: due {:>4}-{:<4} s: {:>5} records, p50 {:>6} ms, p99 {:>6} ms, max {:>6} ms{}",
            b * bucket_ms / 1000,
            (b + 1) * bucket_ms / 1000,
            lates.len(),
            lates[lates.len() / 2],
            p99(lates),
            lates[lates.len() - 1],
            if marks.is_empty() {
                String::new()
            } else {
                format!("   <- {}", marks.join(", "))
            }
        );
    }
}

/// A row: scenario, its tally, p99 lateness, ready again after, on time again after.
pub type Row = (String, Tally, i64, String, String);

/// The table: one row per scenario, then the whole run.
pub fn print_table(
    rows: &[Row],
    whole: &Tally,
    early_all: usize,
    all_lates: &[i64],
    load_started: i64,
    load_stopped: i64,
) {
    println!(
        "\n| scenario | sent | delivered | duplicated | lost | early | p99 late during outage (ms) | max late (ms) | router ready again after (s) | on time again after (s) |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for (scenario, t, p, ready, on_time) in rows {
        println!(
            "| {scenario} | {} | {} | {} | {} | {} | {p} | {} | {ready} | {on_time} |",
            t.sent, t.delivered, t.duplicated, t.lost, t.early, t.max_late_ms
        );
    }
    println!(
        "| whole run, {:.0} s at {RATE_PER_S}/s | {} | {} | {} | {} | {} | {} (all records) | {} | | |",
        (load_stopped - load_started) as f64 / 1e3,
        whole.sent,
        whole.delivered,
        whole.duplicated,
        whole.lost,
        early_all,
        p99(all_lates),
        whole.max_late_ms
    );
}
