//! The deletion half of `compact,delete`: cancellations aged past a retention
//! of 5 s are deleted by Kafka, and a new router on the emptied topic.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::configs::{assert_set, topic_configs};
use crate::outcome::*;
use crate::topic::*;
use crate::PARTITIONS;
use kafka_delay_router::{DelayProducer, When};

/// The deletion half of `compact,delete`, begun: a cancel topic with
/// `max-delay` and retention of 5 s gets two cancellations (of `max-delay`)
/// in each partition.
pub struct Aged {
    env: Env,
    topic: String,
    ids: Vec<String>,
    written: Instant,
    ends: Vec<i64>,
}

/// `max-delay` and the cancel topic's retention in the deletion half.
const RETENTION_MS: i64 = 5_000;

pub async fn begin_retention() -> Aged {
    let topic = unique("retention-cancel");
    let env = Env::with_extra(
        "retention",
        &[1_000],
        2,
        1,
        &format!(
            "max-delay: {RETENTION_MS}ms\ncancel: {{topic: {topic}, partitions: {PARTITIONS}, \
             retention: {RETENTION_MS}ms, configs: {{segment.ms: '100'}}}}\n"
        ),
    )
    .await;
    let configs = topic_configs(&topic).await;
    assert_set(&configs, &topic, "cleanup.policy", "compact,delete");
    assert_set(&configs, &topic, "retention.ms", &RETENTION_MS.to_string());
    let dp = DelayProducer::new(&kafka(), env.config.clone()).unwrap();
    let mut ids = Vec::new();
    let mut ends = vec![0i64; PARTITIONS as usize];
    for p in 0..PARTITIONS {
        for id in keys_in("aged", p, 2) {
            let c = dp.cancel(id.as_bytes(), None).await.unwrap();
            assert_eq!(c.partition, p);
            ends[p as usize] = ends[p as usize].max(c.offset + 1);
            ids.push(id);
        }
    }
    Aged {
        env,
        topic,
        ids,
        written: Instant::now(),
        ends,
    }
}

/// The deletion half, finished: Kafka deletes every partition's records once
/// they are older than the retention (the log start moves to the end), a new
/// router is fresh at once on the emptied partitions, reads cancellations
/// written after the deletion (they win), and the aged ids pass.
pub async fn finish_retention(aged: Aged) {
    let Aged {
        env,
        topic,
        ids,
        written,
        ends,
    } = aged;
    let reading = reader();
    let deadline = Instant::now() + Duration::from_secs(30);
    let marks = loop {
        let marks = tokio::task::block_in_place(|| watermarks(&reading, &topic));
        if marks
            .iter()
            .zip(&ends)
            .all(|((low, high), end)| low == high && low >= end)
        {
            break marks;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: not deleted after 30 s: (log start, end) {marks:?}, written up to {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "{topic}: every record deleted by the {RETENTION_MS} ms retention (seen {:?} after \
         they were written, at the first look); (log start, end) offsets per partition \
         {marks:?}",
        written.elapsed()
    );
    let target = env.targets[0].clone();
    let mut col = Collector::start(&target);
    let router = env.start_router().await;
    wait_assigned(&router, 2.0).await;
    let dp = DelayProducer::new(&kafka(), env.config.clone()).unwrap();
    let mut all: Vec<(String, When)> = ids
        .iter()
        .map(|id| (id.clone(), When::After(Duration::from_millis(1_500))))
        .collect();
    let mut fresh = Vec::new();
    for p in 0..PARTITIONS {
        let id = keys_in("after-deletion", p, 1).remove(0);
        let c = dp.cancel(id.as_bytes(), None).await.unwrap();
        // Due 1.5 s after the acknowledgement, inside the cancellation's
        // `max-delay`: it must win.
        let due = c.acked_ms + 1_500;
        assert!(
            due < c.until_ms,
            "{id}: acknowledged {} ms after it was sent; no time left to check it",
            c.acked_ms - (c.until_ms - RETENTION_MS)
        );
        all.push((id.clone(), When::AtMs(due)));
        fresh.push(id);
    }
    let (got, due) = send_and_collect(&router, &dp, &mut col, &target, &all, &fresh).await;
    let late = got.iter().map(|r| r.arrived_ms - due[&r.value_str()]).max();
    println!(
        "router on the emptied topic: {} aged ids delivered (max lateness {} ms), {} of {} \
         cancelled after the deletion dropped",
        got.len(),
        late.unwrap_or(0),
        metric(&router, CANCELLED, &[]),
        fresh.len()
    );
    assert_outcome(&router, &got, &due, &fresh);
    router.shutdown().await.unwrap();
}
