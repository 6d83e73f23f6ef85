//! The cancel view and transactions on the cancel topic, on Apache Kafka. A
//! transaction left open on a cancel partition (a stream processor writing
//! cancellations transactionally, or a hung one) holds the partition's last
//! stable offset below everything written after it. The router reads the
//! cancel topic `read_committed`, so it cannot read past that point; it must
//! therefore also not count the view as fresh past it: it samples the high
//! watermark, not the last stable offset. An ordinary cancellation written
//! after the open transaction, acknowledged before its record's due time,
//! still wins: the record waits (late, never wrong) and is dropped once the
//! transaction ends and the reader gets to the cancellation.

mod common;

use std::time::Duration;

use common::*;
use kafka_delay_router::cancel::ID_HEADER;
use kafka_delay_router::kafka::now_ms;
use kafka_delay_router::{DelayProducer, When};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_on_the_cancel_topic_holds_freshness_back() {
    let cancel_topic = unique("txn-cancel-topic");
    let env = Env::with_extra(
        "txn-cancel",
        &[1000],
        1,
        1,
        &format!("cancel: {{topic: {cancel_topic}, partitions: 1, retention: 8d}}\n"),
    )
    .await;
    let router = env.start_router().await;
    wait_assigned(&router, 1.0).await;
    let mut collector = Collector::start(&env.targets[0]);
    let dp = DelayProducer::new(&kafka(), env.config.clone()).unwrap();
    // Warm up: the view is fresh and the producer knows the topics.
    dp.cancel(b"warm-up", None).await.unwrap();
    send_after(&dp, &env.targets[0], "warm-up", Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| collector.wait_for(1, Duration::from_secs(10)));

    // Another application opens a transaction on the cancel topic, writes a
    // cancellation in it and neither commits nor aborts.
    let txn: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("transactional.id", unique("stream-app"))
        .create()
        .unwrap();
    let open = tokio::task::block_in_place(|| {
        txn.init_transactions(Duration::from_secs(30))?;
        txn.begin_transaction()?;
        let until = (now_ms() + 3_600_000).to_string();
        txn.send(
            BaseRecord::to(&cancel_topic)
                .key("some-other-order")
                .payload(&until),
        )
        .map_err(|(e, _)| e)?;
        txn.flush(Duration::from_secs(10))
    });
    open.expect("a transaction left open on the cancel topic");

    // Then an ordinary, acknowledged cancellation of X, 300 ms before X is due.
    let headers = vec![(ID_HEADER.to_string(), b"order-x".to_vec())];
    let sent = dp
        .send(
            &env.targets[0],
            Some(b"order-x"),
            Some(b"reminder for order-x"),
            &headers,
            When::After(Duration::from_millis(1_500)),
        )
        .await
        .unwrap();
    let acked = dp.cancel(b"order-x", None).await.unwrap().acked_ms;
    assert!(
        acked < sent.deliver_at_ms,
        "the cancellation was acknowledged in time"
    );
    // A record without an id is not held up by the cancel view.
    let plain_due = send_after(&dp, &env.targets[0], "plain", Duration::from_millis(1_500)).await;

    // Well past X's due time, with the transaction still open.
    let while_open = tokio::task::block_in_place(|| {
        collector.settle(Duration::from_secs(4));
        collector
            .seen
            .iter()
            .map(|r| (r.value_str(), r.arrived_ms))
            .collect::<Vec<_>>()
    });
    let lag = metric(&router, "kafka_delay_router_cancel_view_lag_seconds", &[]);
    println!(
        "transaction open: arrived {:?}; the view's lag {lag} s",
        while_open.iter().map(|(v, _)| v).collect::<Vec<_>>()
    );
    assert!(
        !while_open.iter().any(|(v, _)| v == "reminder for order-x"),
        "X was delivered although its cancellation was acknowledged before its due time"
    );
    let plain = while_open.iter().find(|(v, _)| v == "plain");
    assert!(plain.is_some(), "the record without an id was held up");
    assert!(plain.unwrap().1 >= plain_due);
    assert!(lag >= 1.0, "the view shows it is behind: lag {lag} s");

    // The transaction ends (aborted): the reader reaches the cancellation and
    // drops X.
    tokio::task::block_in_place(|| txn.abort_transaction(Duration::from_secs(10))).unwrap();
    let after = tokio::task::block_in_place(|| {
        collector
            .settle(Duration::from_secs(4))
            .iter()
            .map(|r| r.value_str())
            .collect::<Vec<_>>()
    });
    let cancelled = settled_metric(
        &router,
        "kafka_delay_router_records_cancelled_total",
        &[],
        1.0,
    )
    .await;
    println!("after the abort: arrived {after:?}; cancelled {cancelled}");
    assert!(
        !after.iter().any(|v| v == "reminder for order-x"),
        "X was delivered after the transaction ended"
    );
    assert_eq!(cancelled, 1.0, "X was dropped as cancelled");
    router.shutdown().await.unwrap();
}
