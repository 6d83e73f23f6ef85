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

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use kafka_delay_router::cancel::ID_HEADER;
use kafka_delay_router::{DelayProducer, Router, When};
use rdkafka::admin::{AdminClient, AdminOptions, ConfigSource, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Partitions of the cancel topic.
const PARTITIONS: i32 = 3;
/// Ids of each kind.
const PER_KIND: usize = 6;
/// Per-topic settings that let the cleaner compact the cancel topic within
/// seconds: a segment rolls at the first write 100 ms after the segment began,
/// any dirty record makes the partition worth cleaning, a record may be
/// compacted at once, and a tombstone is removed at the cleaning after the one
/// that first kept it.
const CANCEL_CONFIGS: [(&str, &str); 4] = [
    ("segment.ms", "100"),
    ("min.cleanable.dirty.ratio", "0.01"),
    ("min.compaction.lag.ms", "0"),
    ("delete.retention.ms", "0"),
];
/// How long the short-lived cancellations last.
const SHORT: Duration = Duration::from_secs(1);

/// What was written on the cancel topic for an id, and what a router must then do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    /// A short cancellation, then one of `max-delay`: still cancelled.
    Cancelled,
    /// Cancelled, withdrawn (null value), cancelled again: still cancelled.
    Recancelled,
    /// Cancelled, then withdrawn: delivered.
    Withdrawn,
    /// A cancellation of one second: delivered once it expired.
    Expired,
    /// A cancellation of `max-delay`, then one of a second: delivered.
    Shortened,
    /// Never cancelled: delivered.
    Free,
}

const KINDS: [Kind; 6] = [
    Kind::Cancelled,
    Kind::Recancelled,
    Kind::Withdrawn,
    Kind::Expired,
    Kind::Shortened,
    Kind::Free,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Cancelled => "cancelled",
            Kind::Recancelled => "recancelled",
            Kind::Withdrawn => "withdrawn",
            Kind::Expired => "expired",
            Kind::Shortened => "shortened",
            Kind::Free => "free",
        }
    }

    fn stays_cancelled(self) -> bool {
        matches!(self, Kind::Cancelled | Kind::Recancelled)
    }
}

/// One record on the cancel topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Rec {
    partition: i32,
    offset: i64,
    key: String,
    tombstone: bool,
}

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

fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap()
}

/// Kafka's view of a topic's configs: name -> (value, set on the topic).
async fn topic_configs(topic: &str) -> BTreeMap<String, (String, bool)> {
    let described = admin()
        .describe_configs(
            &[ResourceSpecifier::Topic(topic)],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    let resource = described.into_iter().next().unwrap().unwrap();
    resource
        .entries
        .into_iter()
        .filter_map(|e| {
            let on_topic = e.source == ConfigSource::DynamicTopic;
            e.value.map(|v| (e.name, (v, on_topic)))
        })
        .collect()
}

/// Asserts that Kafka holds `value` for `name`, set on the topic itself.
fn assert_set(configs: &BTreeMap<String, (String, bool)>, topic: &str, name: &str, value: &str) {
    let got = configs.get(name);
    assert_eq!(
        got,
        Some(&(value.to_string(), true)),
        "{topic}: {name} should be {value}, set on the topic"
    );
    println!("{topic}: {name}={value} (set on the topic)");
}

/// `create-topics` run as users run it, then its cancel topic as Kafka describes it.
async fn create_topics_sets_the_documented_retention() {
    let cases = [
        // (max-delay, retention key, the retention.ms expected)
        ("2h", "", 2 * 3_600_000 + 86_400_000u64),
        ("7d", "", 8 * 86_400_000),
        ("1h", ", retention: 3d", 3 * 86_400_000),
    ];
    for (max_delay, retention, want_ms) in cases {
        let cancel = unique("ct-cancel");
        // The shared helper's topics file (a tier, the dead-letter topic and
        // whatever else it declares), with this cancel topic; nothing created.
        let env = Env::declare(
            "ct",
            &[1_000],
            1,
            0,
            &format!(
                "max-delay: {max_delay}\ncancel: {{topic: {cancel}, partitions: 2{retention}}}\n"
            ),
        );
        let path = env.config_path.clone();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_kafka-delay-router"))
                .args(["create-topics", "--config"])
                .arg(&path)
                .args(["--bootstrap-servers", &bootstrap()])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "create-topics: {text}");
        assert!(text.contains(&format!("created {cancel}")), "{text}");
        let configs = topic_configs(&cancel).await;
        assert_set(&configs, &cancel, "cleanup.policy", "compact,delete");
        assert_set(&configs, &cancel, "retention.ms", &want_ms.to_string());
    }
}

/// The cancel topic's configs for the compaction test, as Kafka holds them.
async fn assert_compaction_settings(topic: &str) {
    let configs = topic_configs(topic).await;
    assert_set(&configs, topic, "cleanup.policy", "compact,delete");
    assert_set(
        &configs,
        topic,
        "retention.ms",
        &(8 * 86_400_000u64).to_string(),
    );
    for (name, value) in CANCEL_CONFIGS {
        assert_set(&configs, topic, name, value);
    }
}

fn reader() -> BaseConsumer {
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
fn watermarks(consumer: &BaseConsumer, topic: &str) -> Vec<(i64, i64)> {
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
fn read_from_start(consumer: &BaseConsumer, topic: &str, marks: &[(i64, i64)]) -> Vec<Rec> {
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
fn cleaner_checkpoint(data: &Path, topic: &str) -> HashMap<i32, i64> {
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
fn keys_in(prefix: &str, p: i32, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|k| java_partition(k.as_bytes(), PARTITIONS) == p)
        .take(n)
        .collect()
}

async fn cancel(dp: &DelayProducer, id: &str, until: Option<When>, log: &mut Vec<Rec>) {
    let c = dp.cancel(id.as_bytes(), until).await.unwrap();
    log.push(Rec {
        partition: c.partition,
        offset: c.offset,
        key: id.to_string(),
        tombstone: false,
    });
}

/// A null value for `id`, produced with the Java partitioner as the README says.
async fn withdraw(
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
fn survivors(log: &[Rec]) -> Vec<Rec> {
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

/// Records for `ids` (value, key and `delay-id` = the id), each due when
/// given; waits until every id not in `dropped` arrived and the router dropped
/// as many records as `dropped` holds, then half a second more. Returns the
/// arrivals and each id's due time.
async fn send_and_collect(
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
fn assert_outcome(
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
async fn outstanding(router: &Router, want: usize) -> f64 {
    settled_metric(
        router,
        "kafka_delay_router_cancellations_outstanding",
        &[],
        want as f64,
    )
    .await
}

const CANCELLED: &str = "kafka_delay_router_records_cancelled_total";

/// The compaction half of `compact,delete`: Kafka's cleaner compacts the
/// cancel topic, then a new router reads what is left.
async fn compaction(data: &Path) {
    let cancel_topic = unique("compaction-cancel");
    let configs = CANCEL_CONFIGS
        .iter()
        .map(|(k, v)| format!("{k}: '{v}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let env = Env::with_extra(
        "compaction",
        &[1_000, 2_000],
        2,
        1,
        &format!(
            "cancel: {{topic: {cancel_topic}, partitions: {PARTITIONS}, configs: {{{configs}}}}}\n"
        ),
    )
    .await;
    assert_compaction_settings(&cancel_topic).await;
    let target = env.targets[0].clone();
    let dp = DelayProducer::new(&kafka(), env.config.clone()).unwrap();
    let p = producer();

    // The history, written the way users write it.
    let short = Some(When::After(SHORT));
    let mut log: Vec<Rec> = Vec::new();
    let mut kind_of: BTreeMap<String, Kind> = BTreeMap::new();
    for i in 0..PER_KIND {
        for kind in KINDS {
            let id = format!("{}-{i}", kind.name());
            kind_of.insert(id.clone(), kind);
            match kind {
                Kind::Cancelled => {
                    cancel(&dp, &id, short, &mut log).await;
                    cancel(&dp, &id, None, &mut log).await;
                }
                Kind::Recancelled => {
                    cancel(&dp, &id, None, &mut log).await;
                    withdraw(&p, &cancel_topic, &id, &mut log).await;
                    cancel(&dp, &id, None, &mut log).await;
                }
                Kind::Withdrawn => {
                    cancel(&dp, &id, None, &mut log).await;
                    withdraw(&p, &cancel_topic, &id, &mut log).await;
                }
                Kind::Expired => cancel(&dp, &id, short, &mut log).await,
                Kind::Shortened => {
                    cancel(&dp, &id, None, &mut log).await;
                    cancel(&dp, &id, short, &mut log).await;
                }
                Kind::Free => {}
            }
        }
    }
    let history_written = Instant::now();
    let want = survivors(&log);
    let gone: Vec<&Rec> = log.iter().filter(|r| !want.contains(r)).collect();
    let per_partition = |recs: &mut dyn Iterator<Item = &Rec>| {
        let mut n = [0usize; PARTITIONS as usize];
        for r in recs {
            n[r.partition as usize] += 1;
        }
        n
    };
    println!(
        "history: {} records on the cancel topic ({:?} per partition), {} to be removed by \
         compaction ({} of them tombstones), {} to stay",
        log.len(),
        per_partition(&mut log.iter()),
        gone.len(),
        log.iter().filter(|r| r.tombstone).count(),
        want.len()
    );
    let reading = reader();
    let before = watermarks(&reading, &cancel_topic);
    let history_end: Vec<i64> = before.iter().map(|(_, high)| *high).collect();

    // Keep writing (one short-lived cancellation per partition, under the same
    // key each time) so that segments roll behind the history and the cleaner
    // has dirty records to clean; poll Kafka until the history is compacted
    // and the cleaner's checkpoint is past it.
    let fillers: Vec<String> = (0..PARTITIONS)
        .map(|p| keys_in("filler", p, 1).remove(0))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut polls = 0;
    let (kept, after, checkpoint) = loop {
        polls += 1;
        for f in &fillers {
            dp.cancel(f.as_bytes(), Some(When::After(Duration::from_millis(300))))
                .await
                .unwrap();
        }
        let (kept, after, checkpoint) = tokio::task::block_in_place(|| {
            let after = watermarks(&reading, &cancel_topic);
            let all = read_from_start(&reading, &cancel_topic, &after);
            (all, after, cleaner_checkpoint(data, &cancel_topic))
        });
        let history: Vec<Rec> = kept
            .iter()
            .filter(|r| kind_of.contains_key(&r.key))
            .cloned()
            .collect();
        let cleaned_past_history =
            (0..PARTITIONS).all(|p| checkpoint.get(&p) >= Some(&history_end[p as usize]));
        if history == want && cleaned_past_history {
            break (kept, after, checkpoint);
        }
        assert!(
            Instant::now() < deadline,
            "the history was not compacted within 40 s: {} of its records left (want {}), \
             cleaner checkpoint {checkpoint:?} (history ends {history_end:?}); left: {history:?}",
            history.len(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "compacted {:?} after the history was written ({polls} polls)",
        history_written.elapsed()
    );
    let written = per_partition(&mut log.iter());
    let kept_history = per_partition(&mut kept.iter().filter(|r| kind_of.contains_key(&r.key)));
    for p in 0..PARTITIONS as usize {
        let read: Vec<&Rec> = kept.iter().filter(|r| r.partition as usize == p).collect();
        println!(
            "{cancel_topic} [{p}]: offsets 0..{} written, {} left when read from the start \
             ({} gone, the first one left at offset {}); history {} written, {} left; \
             log start offset {} before, {} after; cleaner checkpoint {}",
            after[p].1,
            read.len(),
            after[p].1 - read.len() as i64,
            read[0].offset,
            written[p],
            kept_history[p],
            before[p].0,
            after[p].0,
            checkpoint[&(p as i32)]
        );
    }
    // The cleaner's evidence, offset by offset: every superseded record and
    // every tombstone is gone from where it was written, and the withdrawn
    // ids have nothing left at all.
    for r in &gone {
        assert!(
            !kept
                .iter()
                .any(|k| k.partition == r.partition && k.offset == r.offset),
            "{r:?} is still on the topic"
        );
    }
    assert!(!kept
        .iter()
        .any(|r| kind_of.get(&r.key) == Some(&Kind::Withdrawn)));

    // A new router, started from the compacted topic.
    let mut col = Collector::start(&target);
    let router = env.start_router().await;
    wait_assigned(&router, 4.0).await;
    // Due 1.5 to 2.4 s from now, long after the short cancellations expired.
    let ids: Vec<(String, When)> = kind_of
        .keys()
        .enumerate()
        .map(|(n, id)| {
            let ms = 1_500 + 100 * (n as u64 % 10);
            (id.clone(), When::After(Duration::from_millis(ms)))
        })
        .collect();
    let dropped: Vec<String> = kind_of
        .iter()
        .filter(|(_, k)| k.stays_cancelled())
        .map(|(id, _)| id.clone())
        .collect();
    let (got, due) = send_and_collect(&router, &dp, &mut col, &target, &ids, &dropped).await;
    for kind in KINDS {
        let of_kind: Vec<&Received> = got
            .iter()
            .filter(|r| kind_of[&r.value_str()] == kind)
            .collect();
        let late = of_kind
            .iter()
            .map(|r| r.arrived_ms - due[&r.value_str()])
            .max();
        println!(
            "{}: sent {PER_KIND}, delivered {}, max lateness {} ms",
            kind.name(),
            of_kind.len(),
            late.map_or("-".to_string(), |l| l.to_string())
        );
    }
    // Only the ids still cancelled are held (the fillers and expired ones are swept).
    let held = outstanding(&router, dropped.len()).await;
    let cancelled = metric(&router, CANCELLED, &[]);
    println!("new router: records_cancelled_total {cancelled}, cancellations_outstanding {held}");
    assert_outcome(&router, &got, &due, &dropped);
    assert_eq!(held, dropped.len() as f64);
    router.shutdown().await.unwrap();
}

/// The deletion half of `compact,delete`, begun: a cancel topic with
/// `max-delay` and retention of 5 s gets two cancellations (of `max-delay`)
/// in each partition.
struct Aged {
    env: Env,
    topic: String,
    ids: Vec<String>,
    written: Instant,
    ends: Vec<i64>,
}

/// `max-delay` and the cancel topic's retention in the deletion half.
const RETENTION_MS: i64 = 5_000;

async fn begin_retention() -> Aged {
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
async fn finish_retention(aged: Aged) {
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
