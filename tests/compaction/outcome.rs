//! A new router's outcome: records sent for the ids, collected until each was
//! delivered or dropped, and judged (nothing cancelled delivered, nothing
//! early, nothing lost).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::*;
use kafka_delay_router::cancel::ID_HEADER;
use kafka_delay_router::{DelayProducer, Router, When};

/// Records for `ids` (value, key and `delay-id` = the id), each due when
/// given; waits until every id not in `dropped` arrived and the router dropped
/// as many records as `dropped` holds, then half a second more. Returns the
/// arrivals and each id's due time.
pub async fn send_and_collect(
    router: &Router,
    dp: &DelayProducer,
    col: &mut Collector,
    target: &str,
    ids: &[(String, When)],
    dropped: &[String],
) -> (Vec<Received>, HashMap<String, i64>) {
    let mut due = HashMap::new();
    for (id, when) in ids {
        let sent = dp
            .send(
                target,
                Some(id.as_bytes()),
                Some(id.as_bytes()),
                &[(ID_HEADER.to_string(), id.as_bytes().to_vec())],
                *when,
            )
            .await
            .unwrap();
        due.insert(id.clone(), sent.deliver_at_ms);
    }
    let to_deliver: Vec<&String> = ids
        .iter()
        .map(|(id, _)| id)
        .filter(|id| !dropped.contains(id))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = tokio::task::block_in_place(|| col.settle(Duration::from_millis(100)).to_vec());
        let arrived = to_deliver
            .iter()
            .filter(|id| got.iter().any(|r| &&r.value_str() == *id))
            .count();
        let cancelled = metric(router, CANCELLED, &[]);
        if arrived == to_deliver.len() && cancelled >= dropped.len() as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 20 s: {arrived} of {} delivered, {cancelled} of {} dropped as cancelled",
            to_deliver.len(),
            dropped.len()
        );
    }
    // Every record was either delivered or dropped: a leak or a duplicate
    // would be here by now.
    let got = tokio::task::block_in_place(|| col.settle(Duration::from_millis(500)).to_vec());
    (got, due)
}

/// Nothing in `dropped` delivered, every other id delivered, none early; and
/// unless the group rebalanced after the first assignment (a rebalance redoes
/// unfinished work: at least once), each record delivered or dropped once.
pub fn assert_outcome(
    router: &Router,
    got: &[Received],
    due: &HashMap<String, i64>,
    dropped: &[String],
) {
    let leaked: Vec<String> = got
        .iter()
        .map(|r| r.value_str())
        .filter(|v| dropped.contains(v))
        .collect();
    let early: Vec<String> = got
        .iter()
        .filter(|r| r.timestamp < due[&r.value_str()] || r.arrived_ms < due[&r.value_str()])
        .map(|r| r.value_str())
        .collect();
    let lost: Vec<&String> = due
        .keys()
        .filter(|id| !dropped.contains(id) && !got.iter().any(|r| &r.value_str() == *id))
        .collect();
    assert!(leaked.is_empty(), "cancelled but delivered: {leaked:?}");
    assert!(early.is_empty(), "delivered early: {early:?}");
    assert!(lost.is_empty(), "never delivered: {lost:?}");
    let cancelled = metric(router, CANCELLED, &[]);
    assert!(cancelled >= dropped.len() as f64, "{cancelled} dropped");
    // The first assignment is one; anything more is a rebalance.
    let rebalances = metric(router, "kafka_delay_router_rebalances_total", &[]);
    if rebalances <= 1.0 {
        assert_eq!(got.len(), due.len() - dropped.len(), "duplicates: {got:?}");
        assert_eq!(cancelled, dropped.len() as f64);
    } else {
        println!("{rebalances} rebalance events: copies allowed");
    }
}

/// The cancel view's outstanding cancellations once it settled at `want` (or after 5 s).
pub async fn outstanding(router: &Router, want: usize) -> f64 {
    settled_metric(
        router,
        "kafka_delay_router_cancellations_outstanding",
        &[],
        want as f64,
    )
    .await
}

pub const CANCELLED: &str = "kafka_delay_router_records_cancelled_total";
