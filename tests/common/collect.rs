//! Reading what the router delivered: a collector that stamps each record with
//! its arrival time, the tally of sent vs delivered, and committed offsets and
//! high watermarks.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kafka_delay_router::headers;
use kafka_delay_router::kafka::{now_ms, TracingContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::{bootstrap, unique};

/// A record as a consumer of the target saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: i64,
    pub arrived_ms: i64,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_ref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    pub fn value_str(&self) -> String {
        self.value
            .as_deref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    }
}

/// Reads a topic from the beginning on a background thread, stamping each
/// record with the time it arrived; collect with [`Collector::wait_for`].
pub struct Collector {
    rx: std::sync::mpsc::Receiver<Received>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub seen: Vec<Received>,
}

impl Collector {
    /// Reads every partition of `topic` from the beginning, `read_committed`
    /// (librdkafka's default, and what a consumer of delivered records uses).
    pub fn start(topic: &str) -> Collector {
        Self::start_isolated(topic, "read_committed")
    }

    /// Like [`Collector::start`], `read_uncommitted`: records of aborted
    /// transactions too (the control in the exactly-once tests).
    pub fn start_read_uncommitted(topic: &str) -> Collector {
        Self::start_isolated(topic, "read_uncommitted")
    }

    fn start_isolated(topic: &str, isolation: &str) -> Collector {
        let consumer: BaseConsumer<TracingContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("group.id", unique("collector"))
            // Kafka answers a waiting fetch as soon as a record arrives
            // (tests/conformance.rs (e)); the short wait is kept anyway, since
            // a run with librdkafka's default saw one 150 ms straggler in the
            // sub-second test that this reader did not explain.
            .set("fetch.wait.max.ms", "5")
            .set("enable.auto.commit", "false")
            .set("isolation.level", isolation)
            .create_with_context(TracingContext)
            .unwrap();
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) {
                    let arrived_ms = now_ms();
                    let hdrs = m
                        .headers()
                        .map(|h| {
                            headers::iter(h)
                                .map(|(k, v)| {
                                    (
                                        String::from_utf8_lossy(k).into_owned(),
                                        v.map(<[u8]>::to_vec),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let r = Received {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec),
                        headers: hdrs,
                        timestamp: m.timestamp().to_millis().unwrap_or(-1),
                        arrived_ms,
                    };
                    if tx.send(r).is_err() {
                        break;
                    }
                }
            }
        });
        Collector {
            rx,
            stop,
            seen: Vec::new(),
        }
    }

    /// Waits until at least `n` records were seen in all, or `timeout` passed.
    pub fn wait_for(&mut self, n: usize, timeout: Duration) -> &[Received] {
        let deadline = Instant::now() + timeout;
        while self.seen.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Ok(r) = self.rx.recv_timeout(left.min(Duration::from_millis(100))) {
                self.seen.push(r);
            }
        }
        &self.seen
    }

    /// Collects whatever else arrives within `quiet`.
    pub fn settle(&mut self, quiet: Duration) -> &[Received] {
        let deadline = Instant::now() + quiet;
        while let Ok(r) = self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(r);
        }
        &self.seen
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Collector {
    /// Collects until `n` distinct values arrived (duplicates do not count
    /// towards `n`) or `timeout` passed, then whatever else comes within two seconds.
    pub fn collect_distinct(&mut self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let distinct = self
                .settle(Duration::from_millis(200))
                .iter()
                .map(|r| r.value_str())
                .collect::<std::collections::HashSet<_>>()
                .len();
            if distinct >= n {
                break;
            }
        }
        self.settle(Duration::from_secs(2)).to_vec()
    }
}

/// What a consumer of the target saw of the records sent (`due`: value ->
/// deadline): lateness is measured on each record's first arrival.
pub struct Tally {
    pub sent: usize,
    pub delivered: usize,
    pub duplicated: usize,
    pub lost: usize,
    /// Arrivals (duplicates included) stamped or seen before their deadline.
    pub early: usize,
    pub max_late_ms: i64,
    pub p50_late_ms: i64,
}

pub fn tally(due: &HashMap<String, i64>, got: &[Received]) -> Tally {
    let mut first: HashMap<String, &Received> = HashMap::new();
    for r in got {
        first.entry(r.value_str()).or_insert(r);
    }
    let early = got
        .iter()
        .filter(|r| {
            due.get(&r.value_str())
                .is_some_and(|d| r.timestamp < *d || r.arrived_ms < *d)
        })
        .count();
    let mut lates: Vec<i64> = first
        .iter()
        .filter_map(|(v, r)| due.get(v).map(|d| r.arrived_ms - d))
        .collect();
    lates.sort_unstable();
    Tally {
        sent: due.len(),
        delivered: first.len(),
        duplicated: got.len() - first.len(),
        lost: due.keys().filter(|v| !first.contains_key(*v)).count(),
        early,
        max_late_ms: lates.last().copied().unwrap_or(0),
        p50_late_ms: lates.get(lates.len() / 2).copied().unwrap_or(0),
    }
}

/// The committed offsets of a group for a topic with `partitions` partitions.
pub fn committed(group: &str, topic: &str, partitions: i32) -> HashMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    // A group's coordinator may still be loading (a new broker creates
    // __consumer_offsets on the first group request): Kafka answers
    // NOT_COORDINATOR or COORDINATOR_LOAD_IN_PROGRESS until it is ready.
    let deadline = Instant::now() + Duration::from_secs(20);
    let c = loop {
        match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(c) => break c,
            Err(e)
                if Instant::now() < deadline
                    && matches!(
                        e.rdkafka_error_code(),
                        Some(RDKafkaErrorCode::NotCoordinator)
                            | Some(RDKafkaErrorCode::CoordinatorLoadInProgress)
                            | Some(RDKafkaErrorCode::CoordinatorNotAvailable)
                    ) =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("committed offsets of {group} on {topic}: {e}"),
        }
    };
    c.elements()
        .iter()
        .map(|e| {
            (
                e.partition(),
                match e.offset() {
                    Offset::Offset(o) => o,
                    _ => -1,
                },
            )
        })
        .collect()
}

/// Asserts the group committed every record of the topic: the committed offset
/// is the high watermark of each partition (an empty partition needs no commit).
pub fn assert_committed_to_end(group: &str, topic: &str, partitions: i32) {
    let committed = committed(group, topic, partitions);
    for (p, high) in high_watermarks(topic, partitions) {
        let c = committed[&p];
        assert!(
            c == high || (high == 0 && c < 0),
            "{topic}/{p}: committed {c}, high watermark {high}"
        );
    }
}

/// Asserts the group finished every record of the topic, in exactly-once
/// mode: nothing a `read_committed` reader can read lies at or after the
/// committed offset. (The committed offset may stop short of the high
/// watermark: the last offsets can be transaction markers, which take an
/// offset each and are never read.)
pub fn assert_nothing_left_after_committed(group: &str, topic: &str, partitions: i32) {
    let committed = committed(group, topic, partitions);
    for (p, high) in high_watermarks(topic, partitions) {
        let c = committed[&p].max(0);
        if c >= high {
            continue;
        }
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("group.id", unique("left"))
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(c))
            .unwrap();
        reader.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match reader.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => panic!(
                    "{topic}/{p}: committed {c}, high watermark {high}, and a record at offset {} \
                     is left after the committed offset",
                    m.offset()
                ),
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => panic!("{topic}/{p}: reading after the committed offset: {e}"),
                None => assert!(
                    Instant::now() < deadline,
                    "{topic}/{p}: no end of partition seen after the committed offset {c}"
                ),
            }
        }
    }
}

/// High watermarks of a topic's partitions.
pub fn high_watermarks(topic: &str, partitions: i32) -> HashMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| {
            (
                p,
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(5))
                    .unwrap()
                    .1,
            )
        })
        .collect()
}
