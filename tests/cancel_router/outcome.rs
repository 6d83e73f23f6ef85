//! Judging what the target's consumer saw against what was sent and
//! cancelled: leaked, lost, early and late records, in time or not.

use std::collections::HashMap;

use crate::common::Received;

/// What the target's consumer saw, against what was sent and cancelled.
#[derive(Debug, Default)]
pub struct Outcome {
    pub sent: usize,
    /// Cancellations acknowledged before the record's due time: must win.
    pub cancelled_in_time: usize,
    /// Acknowledged at or after the due time: either outcome is allowed.
    pub cancelled_late: usize,
    /// Distinct records delivered that were to be delivered.
    pub delivered: usize,
    pub duplicates: usize,
    /// Records not cancelled (in time) that never arrived.
    pub lost: Vec<String>,
    /// Records cancelled in time that arrived anyway.
    pub leaked: Vec<String>,
    /// Arrivals stamped or seen before their due time.
    pub early: Vec<String>,
    /// Lateness (first arrival minus due) of the records to be delivered, sorted.
    pub late_ms: Vec<i64>,
}

impl Outcome {
    pub fn p(&self, q: f64) -> i64 {
        if self.late_ms.is_empty() {
            return 0;
        }
        let i = ((self.late_ms.len() - 1) as f64 * q).round() as usize;
        self.late_ms[i]
    }

    pub fn max_late(&self) -> i64 {
        self.late_ms.last().copied().unwrap_or(0)
    }

    pub fn print(&self, name: &str) {
        println!(
            "{name}: sent {}, cancelled {} in time (+{} acknowledged after due), delivered {} \
             ({} duplicates), lost {}, cancelled but delivered {}, early {}, late p50 {} ms, \
             p99 {} ms, max {} ms",
            self.sent,
            self.cancelled_in_time,
            self.cancelled_late,
            self.delivered,
            self.duplicates,
            self.lost.len(),
            self.leaked.len(),
            self.early.len(),
            self.p(0.5),
            self.p(0.99),
            self.max_late()
        );
    }

    /// Nothing cancelled in time delivered, nothing else lost, nothing early.
    pub fn assert_clean(&self) {
        assert!(
            self.leaked.is_empty(),
            "cancelled before due but delivered: {:?}",
            self.leaked
        );
        assert!(self.lost.is_empty(), "never delivered: {:?}", self.lost);
        assert!(self.early.is_empty(), "delivered early: {:?}", self.early);
    }
}

/// `due`: value -> due time of every record sent; `cancelled`: value ->
/// acknowledgement time of its id's cancellation.
pub fn judge(
    got: &[Received],
    due: &HashMap<String, i64>,
    cancelled: &HashMap<String, i64>,
) -> Outcome {
    let in_time = |v: &str| cancelled.get(v).is_some_and(|acked| *acked < due[v]);
    let late_cancel = |v: &str| cancelled.get(v).is_some_and(|acked| *acked >= due[v]);
    let mut first: HashMap<String, &Received> = HashMap::new();
    let mut o = Outcome {
        sent: due.len(),
        ..Outcome::default()
    };
    for r in got {
        let v = r.value_str();
        let d = *due
            .get(&v)
            .unwrap_or_else(|| panic!("{v:?} arrived, never sent"));
        if r.timestamp < d || r.arrived_ms < d {
            o.early.push(v.clone());
        }
        if first.insert(v.clone(), r).is_some() {
            o.duplicates += 1;
        }
    }
    for (v, d) in due {
        if in_time(v) {
            o.cancelled_in_time += 1;
            if first.contains_key(v) {
                o.leaked.push(v.clone());
            }
        } else if late_cancel(v) {
            o.cancelled_late += 1;
        } else {
            match first.get(v) {
                Some(r) => {
                    o.delivered += 1;
                    o.late_ms.push(r.arrived_ms - d);
                }
                None => o.lost.push(v.clone()),
            }
        }
    }
    o.leaked.sort();
    o.lost.sort();
    o.late_ms.sort_unstable();
    o
}

/// [`judge`] over the records whose value starts with `kind` only.
pub fn judge_kind(
    kind: &str,
    got: &[Received],
    due: &HashMap<String, i64>,
    cancelled: &HashMap<String, i64>,
) -> Outcome {
    let due: HashMap<String, i64> = due
        .iter()
        .filter(|(v, _)| v.starts_with(kind))
        .map(|(v, d)| (v.clone(), *d))
        .collect();
    let got: Vec<Received> = got
        .iter()
        .filter(|r| due.contains_key(&r.value_str()))
        .cloned()
        .collect();
    judge(&got, &due, cancelled)
}
