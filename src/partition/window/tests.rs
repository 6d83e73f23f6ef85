//! The window's decisions, one by one, and a fake tier partition driven the
//! way the partition task drives its queue, under `tokio::time::pause()`.

use super::*;
use std::time::Duration;
use tokio::time::Instant;

const PACING: Pacing = Pacing {
    pause_min_wait_ms: 750,
    resume_lead_ms: 300,
};

#[test]
fn timed_heap_pops_by_time_then_offset() {
    let mut h = TimedHeap::default();
    h.push(20, 1, "b");
    h.push(10, 3, "a2");
    h.push(10, 2, "a1");
    assert_eq!(h.first_at(), Some(10));
    assert_eq!(h.pop_due(9), None);
    assert_eq!(h.pop_due(10), Some("a1"));
    assert_eq!(h.pop_due(10), Some("a2"));
    assert_eq!(h.pop_due(19), None);
    assert_eq!(h.pop_due(25), Some("b"));
    assert!(h.is_empty());
}

#[test]
fn an_empty_window_reads_and_a_paused_empty_one_resumes() {
    let w: Window<()> = Window::new(1_000, 1_000);
    assert!(w.reads_further());
    assert_eq!(w.fetch(0, false, &PACING), Fetch::Read);
    assert_eq!(w.fetch(0, true, &PACING), Fetch::Resume);
    assert_eq!(w.next_change(false, &PACING), None);
    assert_eq!(w.next_change(true, &PACING), None);
}

#[test]
fn the_smallest_tier_reads_everything_appended_until_its_first_is_ready() {
    // 1 s tier, look-ahead 1 s: a record appended at 900 may be ready at 900.
    let mut w = Window::new(1_000, 1_000);
    w.push(0, 1_000, 0, ());
    assert!(w.reads_further());
    w.push(900, 1_900, 1, ());
    assert!(w.reads_further(), "appended before the first is ready");
    w.push(1_000, 2_000, 2, ());
    assert!(w.reads_further(), "appended when the first is ready");
    w.push(1_001, 2_001, 3, ());
    assert!(
        !w.reads_further(),
        "nothing appended after 1000 can be ready before it"
    );
    // Never paused: a record not yet read may be ready at once.
    let w2 = {
        let mut w = Window::new(1_000, 1_000);
        w.push(0, 1_000, 0, ());
        w
    };
    for now in [0, 100, 249, 600, 999] {
        assert_eq!(w2.fetch(now, false, &PACING), Fetch::Read, "{now}");
    }
}

#[test]
fn a_larger_tier_reads_its_slack_past_the_first() {
    // 5 s tier, look-ahead 250 ms.
    let mut w = Window::new(5_000, 250);
    w.push(0, 5_000, 0, ());
    w.push(250, 5_250, 1, ());
    assert!(w.reads_further());
    w.push(251, 5_251, 2, ());
    assert!(!w.reads_further());
    // Past the first, and the first far away: pause; near: wait.
    assert_eq!(w.fetch(300, false, &PACING), Fetch::Pause);
    assert_eq!(w.fetch(4_300, false, &PACING), Fetch::Wait);
    // Paused: resume `resume_lead_ms` before the first is ready.
    assert_eq!(w.fetch(4_699, true, &PACING), Fetch::Wait);
    assert_eq!(w.fetch(4_700, true, &PACING), Fetch::Resume);
    assert_eq!(w.next_change(true, &PACING), Some(4_700));
    assert_eq!(w.next_change(false, &PACING), Some(5_000));
}

#[test]
fn a_partition_pauses_until_a_record_not_yet_read_could_be_needed() {
    // 5 s tier: whatever is appended after 0 is ready at 4,750 at the earliest.
    let mut w = Window::new(5_000, 250);
    w.push(0, 5_000, 0, ());
    assert!(w.reads_further());
    assert_eq!(w.fetch(10, false, &PACING), Fetch::Pause);
    assert_eq!(w.next_change(true, &PACING), Some(4_450));
    assert_eq!(w.fetch(4_449, true, &PACING), Fetch::Wait);
    assert_eq!(w.fetch(4_450, true, &PACING), Fetch::Resume);
    // Resumed and within reach: read what was appended meanwhile.
    assert_eq!(w.fetch(4_450, false, &PACING), Fetch::Read);
    // A 1 h tier with a burst behind its head: nothing is read until the hour
    // is nearly over (the burst stays in Kafka, not in memory).
    let mut h = Window::new(3_600_000, 250);
    h.push(0, 3_600_000, 0, ());
    assert_eq!(h.fetch(5, false, &PACING), Fetch::Pause);
    assert_eq!(h.next_change(true, &PACING), Some(3_600_000 - 250 - 300));
}

#[test]
fn clear_forgets_the_records_and_the_horizon() {
    let mut w = Window::new(5_000, 250);
    w.push(0, 5_000, 0, ());
    w.push(1_000, 6_000, 1, ());
    assert!(!w.reads_further());
    w.clear();
    assert!(w.is_empty());
    assert!(w.reads_further());
}

/// One record of the fake partition: appended (and timestamped) at `ts`,
/// with a deadline (`delay-deliver-at`) or a fixed delay.
#[derive(Clone, Copy)]
struct Rec {
    ts: i64,
    deliver_at: Option<i64>,
}

struct Run {
    /// (due, delivered) per record, in delivery order.
    delivered: Vec<(i64, i64)>,
    max_window: usize,
    pauses: usize,
}

/// A tier partition whose records become visible `FETCH_MS` after they are
/// appended, read the way the partition task reads its queue: through
/// [`Window::fetch`], pausing and resuming as it says, sleeping until
/// [`Window::next_change`] or the next record's arrival, on tokio's paused clock.
/// Every record is acted on at its ready time (tier end or deadline).
async fn drive(delay_ms: u64, lookahead_ms: u64, log: &[Rec]) -> Run {
    const FETCH_MS: i64 = 5;
    let start = Instant::now();
    let now = || start.elapsed().as_millis() as i64;
    let mut w: Window<Rec> = Window::new(delay_ms, lookahead_ms);
    let mut next = 0usize;
    let mut paused = false;
    let mut resumed_at = 0i64;
    let mut run = Run {
        delivered: Vec::new(),
        max_window: 0,
        pauses: 0,
    };
    let due = |r: &Rec| r.deliver_at.unwrap_or(r.ts + delay_ms as i64);
    loop {
        let t = now();
        while let Some(r) = w.pop_ready(t) {
            run.delivered.push((due(&r), t));
        }
        if run.delivered.len() == log.len() {
            return run;
        }
        // What the broker has by now, as a fetch sees it.
        let visible = |t: i64| log.partition_point(|r| r.ts + FETCH_MS <= t);
        let readable = !paused && resumed_at + FETCH_MS <= t && next < visible(t);
        match w.fetch(t, paused, &PACING) {
            Fetch::Resume => {
                paused = false;
                resumed_at = t;
                continue;
            }
            Fetch::Pause => {
                paused = true;
                run.pauses += 1;
                continue;
            }
            Fetch::Read if readable => {
                let r = log[next];
                next += 1;
                let ready = r
                    .deliver_at
                    .map_or(r.ts + delay_ms as i64, |d| d.min(r.ts + delay_ms as i64));
                w.push(r.ts, ready, next as i64, r);
                run.max_window = run.max_window.max(w.len());
                continue;
            }
            Fetch::Read | Fetch::Wait => {}
        }
        let arrival = (!paused && next < log.len())
            .then(|| (log[next].ts + FETCH_MS).max(resumed_at + FETCH_MS));
        let wake = [w.next_change(paused, &PACING), arrival]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| {
                panic!(
                    "nothing to wait for: t={t} paused={paused} next={next} window={} delivered={}",
                    w.len(),
                    run.delivered.len()
                )
            });
        tokio::time::sleep_until(start + Duration::from_millis(wake.max(t + 1) as u64)).await;
    }
}

fn lateness(run: &Run) -> (i64, i64) {
    let early = run.delivered.iter().filter(|(due, at)| at < due).count() as i64;
    let max_late = run
        .delivered
        .iter()
        .map(|(due, at)| at - due)
        .max()
        .unwrap_or(0);
    (early, max_late)
}

/// Fixed 1 s records at 110 records/s in the 1 s tier, every tenth one a
/// 150 ms delay (`delay-deliver-at`, as `DelayProducer` sends it).
fn sub_second_mix(secs: i64) -> Vec<Rec> {
    (0..secs * 110)
        .map(|i| {
            let ts = 1_000 + i * 1_000 / 110;
            let deliver_at = (i % 10 == 9).then_some(ts + 150);
            Rec { ts, deliver_at }
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn sub_second_delays_behind_fixed_records_go_on_their_own_time() {
    let log = sub_second_mix(20);
    let run = drive(1_000, 1_000, &log).await;
    let (early, max_late) = lateness(&run);
    assert_eq!(early, 0);
    // Only the fake fetch latency (5 ms) and the millisecond clock.
    assert!(max_late <= 6, "max lateness {max_late} ms");
    // Memory: one tier delay of this partition's traffic (110 records) and a little.
    assert!(run.max_window <= 115, "window held {}", run.max_window);
}

#[tokio::test(start_paused = true)]
async fn with_only_the_slack_as_look_ahead_the_sub_second_records_were_late() {
    // The look-ahead the task had before (the slack, not the whole smallest
    // delay): this is the ~600 ms lateness measured on the broker.
    let log = sub_second_mix(5);
    let run = drive(1_000, 100, &log).await;
    let (early, max_late) = lateness(&run);
    assert_eq!(early, 0);
    assert!(max_late > 500, "max lateness {max_late} ms");
}

#[tokio::test(start_paused = true)]
async fn sparse_records_in_a_long_tier_pause_resume_and_go_on_time() {
    // One record every 7 s in a 60 s tier, some forwarded with the slack
    // (ready 250 ms before their tier end): an hour-long pattern in miniature.
    let log: Vec<Rec> = (0..40)
        .map(|i| {
            let ts = 1_000 + i * 7_000;
            Rec {
                ts,
                deliver_at: (i % 3 == 0).then_some(ts + 59_750),
            }
        })
        .collect();
    let run = drive(60_000, 250, &log).await;
    let (early, max_late) = lateness(&run);
    assert_eq!(early, 0);
    assert!(max_late <= 6, "max lateness {max_late} ms");
    assert!(run.pauses >= 30, "paused {} times", run.pauses);
    assert!(run.max_window <= 10, "window held {}", run.max_window);
}

#[tokio::test(start_paused = true)]
async fn a_burst_into_a_long_tier_is_read_only_a_look_ahead_past_its_head() {
    // 20,000 records within 2 s into a 60 s tier: the window holds the ones
    // appended within 250 ms (+ a fetch cycle) of the first waiting record.
    let log: Vec<Rec> = (0..20_000)
        .map(|i| Rec {
            ts: 1_000 + i / 10,
            deliver_at: None,
        })
        .collect();
    let run = drive(60_000, 250, &log).await;
    let (early, max_late) = lateness(&run);
    assert_eq!(early, 0);
    assert!(max_late <= 6, "max lateness {max_late} ms");
    assert!(run.max_window <= 2_600, "window held {}", run.max_window);
}
