//! Backlog visibility: each partition task reports when its next waiting
//! record must be acted on and since when its oldest unfinished due record
//! has been due; the per-tier gauges `head_due_in_seconds` (smallest over the
//! router's partitions) and `head_overdue_seconds` (largest) are worked out
//! from those times at each scrape.
//!
//! Guarantee: the gauges are computed from the clock at scrape time, so a
//! task that is stuck (broker down, records waiting for acknowledgements)
//! shows a growing overdue figure although it reports nothing new.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::GaugeVec;

/// What one partition task last reported (epoch ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeadTimes {
    /// When the first record it holds and has not started must be acted on
    /// (its tier wait ends, or a held remainder is due).
    pub next_at: Option<i64>,
    /// The earliest act time of the records it has started and not finished
    /// (in flight or retrying).
    pub started_at: Option<i64>,
}

impl HeadTimes {
    /// Since when something has been due and not finished, at `now`.
    pub fn overdue_since(&self, now: i64) -> Option<i64> {
        let waiting = self.next_at.filter(|at| *at <= now);
        match (waiting, self.started_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The per-tier figures at `now`, from the tasks' reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TierFigures {
    /// Seconds until the next head is due (0 when one is due); `None` when nothing waits.
    pub due_in: Option<f64>,
    /// Seconds the oldest due and unfinished record has been due; 0 when none is.
    pub overdue: f64,
}

/// Aggregates a tier's partition reports.
pub fn figures<'a>(reports: impl IntoIterator<Item = &'a HeadTimes>, now: i64) -> TierFigures {
    let mut next: Option<i64> = None;
    let mut since: Option<i64> = None;
    for r in reports {
        if let Some(at) = r.next_at {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        if let Some(s) = r.overdue_since(now) {
            since = Some(since.map_or(s, |x| x.min(s)));
        }
    }
    TierFigures {
        due_in: next.map(|at| (at - now).max(0) as f64 / 1000.0),
        overdue: since.map_or(0.0, |s| (now - s).max(0) as f64 / 1000.0),
    }
}

/// Every partition task's latest report, by tier and partition.
pub struct Backlog {
    reports: Mutex<HashMap<(String, i32), HeadTimes>>,
    due_in: GaugeVec,
    overdue: GaugeVec,
}

impl Backlog {
    /// An empty backlog that writes the head gauges `due_in` and `overdue`.
    pub fn new(due_in: GaugeVec, overdue: GaugeVec) -> Self {
        Backlog {
            reports: Mutex::new(HashMap::new()),
            due_in,
            overdue,
        }
    }

    /// Sets the gauges from the reports at `now`: every tier in `tiers`
    /// (and any with reports) gets an overdue figure; a tier where nothing
    /// waits has no due-in sample.
    pub fn refresh(&self, tiers: &[String], now: i64) {
        let reports = self.reports.lock().expect("backlog lock");
        let mut by_tier: HashMap<&str, Vec<&HeadTimes>> =
            tiers.iter().map(|t| (t.as_str(), Vec::new())).collect();
        for ((tier, _), r) in reports.iter() {
            by_tier.entry(tier.as_str()).or_default().push(r);
        }
        for (tier, rs) in by_tier {
            let f = figures(rs, now);
            self.overdue.with_label_values(&[tier]).set(f.overdue);
            match f.due_in {
                Some(s) => self.due_in.with_label_values(&[tier]).set(s),
                None => {
                    let _ = self.due_in.remove_label_values(&[tier]);
                }
            }
        }
    }

    fn set(&self, key: &(String, i32), times: HeadTimes) {
        self.reports
            .lock()
            .expect("backlog lock")
            .insert(key.clone(), times);
    }

    fn remove(&self, key: &(String, i32)) {
        self.reports.lock().expect("backlog lock").remove(key);
    }
}

/// One partition task's place in the [`Backlog`]: reports only changes, and
/// takes the partition out when dropped (revoked, or the task ended).
pub struct HeadReport {
    backlog: Arc<Backlog>,
    key: (String, i32),
    last: Option<HeadTimes>,
}

impl HeadReport {
    /// The place of `tier`'s `partition`, reporting nothing yet.
    pub fn new(backlog: Arc<Backlog>, tier: &str, partition: i32) -> Self {
        HeadReport {
            backlog,
            key: (tier.to_string(), partition),
            last: None,
        }
    }

    /// Reports the partition's head times now (passed on only when they changed).
    pub fn report(&mut self, times: HeadTimes) {
        if self.last != Some(times) {
            self.backlog.set(&self.key, times);
            self.last = Some(times);
        }
    }
}

impl Drop for HeadReport {
    fn drop(&mut self) {
        self.backlog.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    const NOW: i64 = 1_000_000;

    fn times(next_at: Option<i64>, started_at: Option<i64>) -> HeadTimes {
        HeadTimes {
            next_at,
            started_at,
        }
    }

    #[test]
    fn nothing_waiting_is_nothing_due_and_nothing_overdue() {
        let f = figures(&[times(None, None)], NOW);
        assert_eq!(f.due_in, None);
        assert_eq!(f.overdue, 0.0);
        assert_eq!(figures([], NOW).due_in, None);
    }

    #[test]
    fn due_in_is_the_soonest_head_of_the_tier() {
        let f = figures(
            &[
                times(Some(NOW + 4_000), None),
                times(Some(NOW + 1_500), None),
            ],
            NOW,
        );
        assert_eq!(f.due_in, Some(1.5));
        assert_eq!(f.overdue, 0.0);
    }

    #[test]
    fn a_head_past_its_time_is_overdue_since_then() {
        let f = figures(
            &[times(Some(NOW - 2_500), None), times(Some(NOW + 100), None)],
            NOW,
        );
        assert_eq!(f.due_in, Some(0.0));
        assert_eq!(f.overdue, 2.5);
    }

    #[test]
    fn started_and_unfinished_records_count_from_their_act_time() {
        // Acknowledgements are not coming (broker down): overdue grows with the clock.
        let r = [times(Some(NOW + 5_000), Some(NOW - 700))];
        assert_eq!(figures(&r, NOW).overdue, 0.7);
        assert_eq!(figures(&r, NOW + 10_000).overdue, 10.7);
        assert_eq!(figures(&r, NOW).due_in, Some(5.0));
    }

    #[test]
    fn the_oldest_of_all_partitions_wins() {
        let r = [
            times(Some(NOW - 1_000), Some(NOW - 3_000)),
            times(Some(NOW - 9_000), None),
        ];
        assert_eq!(figures(&r, NOW).overdue, 9.0);
    }

    #[test]
    fn the_gauges_follow_reports_and_revocations() {
        let due_in = GaugeVec::new(Opts::new("due_in", "h"), &["tier"]).unwrap();
        let overdue = GaugeVec::new(Opts::new("overdue", "h"), &["tier"]).unwrap();
        let backlog = Arc::new(Backlog::new(due_in.clone(), overdue.clone()));
        let tiers = vec!["t1".to_string(), "t2".to_string()];
        let mut p0 = HeadReport::new(backlog.clone(), "t1", 0);
        p0.report(times(Some(NOW - 4_000), None));
        let mut p1 = HeadReport::new(backlog.clone(), "t1", 1);
        p1.report(times(Some(NOW + 2_000), None));
        backlog.refresh(&tiers, NOW);
        assert_eq!(overdue.with_label_values(&["t1"]).get(), 4.0);
        assert_eq!(due_in.with_label_values(&["t1"]).get(), 0.0);
        assert_eq!(
            overdue.with_label_values(&["t2"]).get(),
            0.0,
            "a tier with nothing owned"
        );
        drop(p0);
        backlog.refresh(&tiers, NOW);
        assert_eq!(
            overdue.with_label_values(&["t1"]).get(),
            0.0,
            "revoked: gone"
        );
        assert_eq!(due_in.with_label_values(&["t1"]).get(), 2.0);
        drop(p1);
        backlog.refresh(&tiers, NOW);
        let families = prometheus::core::Collector::collect(&due_in);
        assert!(
            families.iter().all(|f| f.get_metric().is_empty()),
            "nothing waits: no due-in sample"
        );
    }
}
