//! Exactly-once mode together with cancellation, on Apache Kafka: a record
//! dropped because its `delay-id` was cancelled produces nothing, yet its
//! tier offset is committed within the transaction interval, inside a
//! transaction of its own if nothing else is produced. Without that, an idle
//! partition whose only record was cancelled keeps its old committed offset,
//! and a router that reads it again after the cancellation expired (a
//! restart, a rebalance) delivers the record, late and cancelled.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kafka_delay_router::cancel::ID_HEADER;
use kafka_delay_router::kafka::now_ms;
use kafka_delay_router::router::Router;
use kafka_delay_router::{DelayProducer, When};

const CANCELLED: &str = "kafka_delay_router_records_cancelled_total";

async fn start_eos(env: &Env) -> Router {
    Router::start(env.config.clone(), env.exactly_once_options())
        .await
        .unwrap()
}

/// The group's committed offset of a one-partition tier (-1 for none).
fn committed_offset(env: &Env) -> i64 {
    committed(&env.group, env.tier(0), 1)[&0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_records_offset_is_committed_without_a_transaction_after_it() {
    let cancel_topic = unique("eos-cancel-topic");
    let env = Env::with_extra(
        "eos-cancel",
        &[1000],
        1,
        1,
        &format!("cancel: {{topic: {cancel_topic}, partitions: 1, retention: 8d}}\n"),
    )
    .await;
    let router = start_eos(&env).await;
    wait_assigned(&router, 1.0).await;
    let mut collector = Collector::start(&env.targets[0]);
    let dp = DelayProducer::new(&kafka(), env.config.clone()).unwrap();

    // One record with an id, due in 1.5 s, and its cancellation, kept only
    // until 1.5 s after that due time.
    let headers = vec![(ID_HEADER.to_string(), b"order-1".to_vec())];
    let sent = dp
        .send(
            &env.targets[0],
            Some(b"order-1"),
            Some(b"reminder for order-1"),
            &headers,
            When::After(Duration::from_millis(1_500)),
        )
        .await
        .unwrap();
    let due = sent.deliver_at_ms;
    let cancelled = dp
        .cancel(b"order-1", Some(When::AtMs(due + 1_500)))
        .await
        .unwrap();
    assert!(
        cancelled.acked_ms < due,
        "the cancellation was acknowledged in time"
    );

    // The router drops the record at its due time ...
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&router, CANCELLED, &[]) < 1.0 {
        assert!(Instant::now() < deadline, "the record was not dropped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... and commits its offset within the transaction interval (100 ms),
    // though it produced nothing after it. Polled for 3 s, a loaded machine's margin.
    let dropped_at = Instant::now();
    let deadline = dropped_at + Duration::from_secs(3);
    let mut offset = committed_offset(&env);
    while offset < sent.offset + 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        offset = tokio::task::block_in_place(|| committed_offset(&env));
    }
    println!(
        "committed offset {offset} (the cancelled record is at {}), {} ms after the drop",
        sent.offset,
        dropped_at.elapsed().as_millis()
    );
    let committed_in_time = offset > sent.offset;

    // Once the cancellation expired, a router that reads the partition again
    // must not deliver the record.
    let left = due + 1_500 + 300 - now_ms();
    if left > 0 {
        tokio::time::sleep(Duration::from_millis(left as u64)).await;
    }
    router.shutdown().await.unwrap();
    let router = start_eos(&env).await;
    wait_assigned(&router, 1.0).await;
    let seen = tokio::task::block_in_place(|| collector.settle(Duration::from_secs(4)).to_vec());
    router.shutdown().await.unwrap();
    println!(
        "after the restart past the cancellation's expiry: {} record(s) delivered",
        seen.len()
    );
    assert!(
        committed_in_time,
        "the dropped record's offset {} was not committed within 3 s (committed: {offset})",
        sent.offset
    );
    assert!(
        seen.is_empty(),
        "a record cancelled in time was delivered after the restart: {:?}",
        seen.iter().map(|r| r.value_str()).collect::<Vec<_>>()
    );
    assert_nothing_left_after_committed(&env.group, env.tier(0), 1);
}
