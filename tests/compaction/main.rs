//! The cancel topic's `cleanup.policy=compact,delete`, for real: Apache
//! Kafka's own log cleaner runs during the test (a broker of the test's own
//! whose cleaner thread looks for work every 200 ms instead of 15 s; on a
//! `compact,delete` topic that thread applies both halves of the policy).
//!
//! Compaction: the cancel topic rolls a segment every 100 ms, with a dirty
//! ratio of 0.01, no compaction lag and no delete retention, and Kafka itself
//! shows it was compacted: read from its start, every superseded
//! cancellation is gone from its offset, every tombstone is gone too (and the
//! cancellation it withdrew with it), each id's latest cancellation is still
//! there (an expired one too: compaction keeps an id's latest record, only the
//! retention removes it), and the cleaner's checkpoint
//! (`cleaner-offset-checkpoint`) has moved past every partition's history.
//! Compaction leaves the log start offset where it was (printed, not
//! asserted). Then a new router reads that compacted topic: cancellations
//! still win (one written over an earlier, shorter one; one written again
//! after a withdrawal), withdrawn ids stay withdrawn after their tombstone is
//! itself removed, expired cancellations (and one replaced by a shorter one)
//! hold nothing back, ids never cancelled pass, nothing is early.
//!
//! Deletion: with `max-delay` and a retention of 5 s, Kafka deletes every
//! cancellation once it is older than that and the log start offset moves to
//! the end; a new router on that emptied topic is fresh at once, honours
//! cancellations written afterwards, and delivers the aged ids.
//!
//! It also checks the cancel topic `create-topics` makes against Kafka's own
//! DescribeConfigs view: `cleanup.policy=compact,delete` and `retention.ms`
//! of `max-delay` plus a day (or `retention` when given), set on the topic,
//! not inherited from the broker.
//!
//! Kafka refuses a record without a key on a compacted topic
//! (`INVALID_RECORD`, pinned in tests/cancel.rs): every record here has one.
//! Run with `-- --nocapture` for the figures.

#[path = "../common/mod.rs"]
mod common;

mod compact;
mod configs;
mod outcome;
mod retention;
mod topic;

use std::path::PathBuf;
use std::time::Instant;

use common::*;
use compact::compaction;
use configs::create_topics_sets_the_documented_retention;
use retention::{begin_retention, finish_retention};

/// Partitions of the cancel topic.
pub const PARTITIONS: i32 = 3;

/// Broker properties: the cleaner thread looks for work every 200 ms (default
/// 15 s). It cleans the filthiest compacted partition and deletes what the
/// retention of `compact,delete` topics allows (Kafka's retention task,
/// `log.retention.check.interval.ms`, leaves compacted topics to it).
fn broker_setup() -> BrokerSetup {
    BrokerSetup {
        props: vec!["log.cleaner.backoff.ms=200".into()],
        ..BrokerSetup::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_compacts_and_deletes_the_cancel_topic_and_a_new_router_honours_what_is_left() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_with(dir.path(), &broker_setup());
    // Every helper (Env, producers, readers) talks to this broker; this binary
    // runs this one test.
    std::env::set_var("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap());
    let data: PathBuf = dir
        .path()
        .join(format!("cluster-{}/node-1/data", broker.port()));
    println!("broker ready in {:?}", started.elapsed());
    // The deletion half's records age while the rest runs.
    let aged = begin_retention().await;
    create_topics_sets_the_documented_retention().await;
    compaction(&data).await;
    finish_retention(aged).await;
    println!("done in {:?}", started.elapsed());
}
