//! The cancel topic, written and read back: cancellations and withdrawals
//! logged as they were written, what compaction must keep of them, each
//! partition's offsets, its records read from the start, and the cleaner's
//! checkpoint.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::PARTITIONS;
use kafka_delay_router::{DelayProducer, When};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// One record on the cancel topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub tombstone: bool,
}

pub fn reader() -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("compaction-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap()
}

/// Each partition's (log start, end) offsets.
pub fn watermarks(consumer: &BaseConsumer, topic: &str) -> Vec<(i64, i64)> {
    (0..PARTITIONS)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .unwrap()
        })
        .collect()
}

/// Every record below each partition's end in `marks` ((log start, end)
/// offsets), read from the start.
pub fn read_from_start(consumer: &BaseConsumer, topic: &str, marks: &[(i64, i64)]) -> Vec<Rec> {
    let ends: Vec<i64> = marks.iter().map(|(_, high)| *high).collect();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut next: Vec<i64> = marks.iter().map(|(low, _)| *low).collect();
    let mut recs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while next.iter().zip(&ends).any(|(n, e)| n < e) {
        assert!(
            Instant::now() < deadline,
            "could not read {topic} to {ends:?} (at {next:?})"
        );
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(m)) => {
                let p = m.partition() as usize;
                next[p] = next[p].max(m.offset() + 1);
                if m.offset() < ends[p] {
                    recs.push(Rec {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                        tombstone: m.payload().is_none(),
                    });
                }
            }
        }
    }
    recs.sort();
    recs
}

/// The cleaner's checkpoint (`cleaner-offset-checkpoint` in the log dir):
/// partition -> the offset up to which the cleaner has cleaned it.
pub fn cleaner_checkpoint(data: &Path, topic: &str) -> HashMap<i32, i64> {
    let text = std::fs::read_to_string(data.join("cleaner-offset-checkpoint")).unwrap_or_default();
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (t, p, o) = (f.next()?, f.next()?, f.next()?);
            (t == topic).then(|| Some((p.parse().ok()?, o.parse().ok()?)))?
        })
        .collect()
}

/// `n` keys the Java partitioner puts in partition `p`.
pub fn keys_in(prefix: &str, p: i32, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|k| java_partition(k.as_bytes(), PARTITIONS) == p)
        .take(n)
        .collect()
}

pub async fn cancel(dp: &DelayProducer, id: &str, until: Option<When>, log: &mut Vec<Rec>) {
    let c = dp.cancel(id.as_bytes(), until).await.unwrap();
    log.push(Rec {
        partition: c.partition,
        offset: c.offset,
        key: id.to_string(),
        tombstone: false,
    });
}

/// A null value for `id`, produced with the Java partitioner as the README says.
pub async fn withdraw(
    p: &rdkafka::producer::FutureProducer,
    topic: &str,
    id: &str,
    log: &mut Vec<Rec>,
) {
    let (partition, offset) = produce(p, topic, None, Some(id.as_bytes()), None, &[], None).await;
    let cancelled_in = log.iter().rev().find(|r| r.key == id).unwrap().partition;
    assert_eq!(
        partition, cancelled_in,
        "{id}: the withdrawal went to another partition than its cancellation"
    );
    log.push(Rec {
        partition,
        offset,
        key: id.to_string(),
        tombstone: true,
    });
}

/// What a compacted topic keeps of `log`: each id's latest record, unless it
/// is a tombstone past its delete retention (0 here).
pub fn survivors(log: &[Rec]) -> Vec<Rec> {
    let mut latest: HashMap<&str, &Rec> = HashMap::new();
    for r in log {
        latest.insert(&r.key, r);
    }
    let mut kept: Vec<Rec> = latest
        .into_values()
        .filter(|r| !r.tombstone)
        .cloned()
        .collect();
    kept.sort();
    kept
}
