//! The router honours cancellations, end to end against the real broker: a
//! record with a `delay-id` cancelled before its due time is never delivered,
//! in any tier and at any hop of a cascade, across a rebalance between two
//! routers and across a restart (graceful or kill -9); a cancellation after
//! delivery changes nothing; records without an id are not held up; malformed
//! ids are dead-lettered; a flood of cancellations for unknown ids does not
//! hold up delivery. Every test prints what it saw (`-- --nocapture`).
//!
//! A target collector reads before the first record is produced, so arrival
//! times are real. A cancellation counts as "in time" when the broker
//! acknowledged it before the record's due time (the README's guarantee);
//! the tests schedule them hundreds of milliseconds before, and report (and
//! leave out of the checks) any that a slow machine acknowledged too late.
//!
//! `CANCEL_FULL=1` runs the longer versions (more records, a larger flood).
//!
//! By concern: judging what arrived ([`outcome`]); cancellations in each
//! tier, after delivery and across a rebalance ([`cancelling`]); across a
//! restart ([`restart`]); and what they cost the records that flow
//! ([`flow`]). The helpers every case uses are here.

#[path = "../common/mod.rs"]
mod common;

mod cancelling;
mod flow;
mod outcome;
mod restart;

use std::time::{Duration, Instant};

use common::*;
use kafka_delay_router::cancel::ID_HEADER;
use kafka_delay_router::kafka::now_ms;
use kafka_delay_router::{DelayProducer, When};

const CANCELLED: &str = "kafka_delay_router_records_cancelled_total";

/// How late a record that should be on time may be, in ms: well above what
/// the README reports (the view is fresh 80-190 ms after an acknowledgement),
/// to leave room for a loaded CI machine; the tests print what they saw.
const ON_TIME_MS: i64 = 1_500;

fn full() -> bool {
    std::env::var("CANCEL_FULL").is_ok_and(|v| v == "1")
}

fn id_header(id: &str) -> Vec<(String, Vec<u8>)> {
    vec![(ID_HEADER.to_string(), id.as_bytes().to_vec())]
}

/// Sends `value` (also its key) to `target` through the tiers, with header
/// `delay-id` = `id` if given, due `delay` from now; returns its due time.
async fn send(
    dp: &DelayProducer,
    target: &str,
    value: &str,
    id: Option<&str>,
    delay: Duration,
) -> i64 {
    dp.send(
        target,
        Some(value.as_bytes()),
        Some(value.as_bytes()),
        &id.map(id_header).unwrap_or_default(),
        When::After(delay),
    )
    .await
    .unwrap()
    .deliver_at_ms
}

async fn sleep_until_ms(at_ms: i64) {
    let left = at_ms - now_ms();
    if left > 0 {
        tokio::time::sleep(Duration::from_millis(left as u64)).await;
    }
}

/// Cancels `id` at `at_ms` (epoch ms); yields the acknowledgement time.
fn cancel_at(dp: &DelayProducer, id: String, at_ms: i64) -> tokio::task::JoinHandle<i64> {
    let dp = dp.clone();
    tokio::spawn(async move {
        sleep_until_ms(at_ms).await;
        dp.cancel(id.as_bytes(), None).await.unwrap().acked_ms
    })
}

/// Collects arrivals until epoch ms `until_ms`, without holding up the
/// runtime's other work (in-process routers run on it).
fn collect_until(col: &mut Collector, until_ms: i64) -> Vec<Received> {
    let left = (until_ms - now_ms()).max(0) as u64;
    tokio::task::block_in_place(|| col.settle(Duration::from_millis(left)).to_vec())
}

/// Waits (up to `within`) until `value` arrived; returns it.
fn wait_value(col: &mut Collector, value: &str, within: Duration) -> Option<Received> {
    let deadline = Instant::now() + within;
    tokio::task::block_in_place(|| loop {
        if let Some(r) = col.seen.iter().find(|r| r.value_str() == value) {
            return Some(r.clone());
        }
        if Instant::now() >= deadline {
            return None;
        }
        col.settle(Duration::from_millis(50));
    })
}

/// Waits (up to 5 s) until `f` returns `want`; returns the last value.
async fn settle_metric(want: f64, f: impl Fn() -> f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = f();
        if v == want || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
