//! Broker conformance: the properties of the broker that the router and its
//! tests rely on, checked with plain librdkafka clients and no router at all.
//! A failure here means the installed broker regressed, not the router.
//!
//! (a) A fetch that starts inside a multi-record batch returns the rest of that
//!     batch (an imitation broker once skipped it: a consumer that paused or
//!     committed mid-batch lost records).
//! (b) The high watermark after 100 batched records is 100.
//! (c) A group member killed with SIGKILL is expired within its session timeout
//!     and a new member then owns every partition (the fault suite's kill -9
//!     scenarios depend on it).
//! (d) An idempotent producer goes on producing across a broker restart: no
//!     ProducerFenced or sequence error, nothing written twice (the fault
//!     suite's broker-restart scenario runs the router with idempotence, as in
//!     production).
//! (e) A consumer's waiting fetch is answered as soon as a record arrives,
//!     not when its `fetch.wait.max.ms` runs out (an imitation broker answered
//!     only then).
//!
//! (a), (b), (c) and (e) run on the broker under test (`KAFKA_BOOTSTRAP_SERVERS`);
//! (d) on an Apache Kafka of the test's own, which it restarts.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use common::{bootstrap, create_topic, unique, Broker};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const BATCH: i64 = 100;
const FROM: i64 = 37;

/// Session timeout of the group members in (c): Kafka's smallest allowed
/// (`group.min.session.timeout.ms`).
const SESSION_TIMEOUT_MS: u64 = 6_000;

/// Records the producer's batch statistics (librdkafka's per-topic `batchcnt`).
#[derive(Default)]
struct BatchStats {
    /// (largest batch, batches) over every statistics report.
    seen: Mutex<(i64, i64)>,
}

impl ClientContext for BatchStats {
    fn stats(&self, statistics: Statistics) {
        let mut seen = self.seen.lock().unwrap();
        for t in statistics.topics.values() {
            seen.0 = seen.0.max(t.batchcnt.max);
            seen.1 += t.batchcnt.cnt;
        }
    }
}

impl ProducerContext for BatchStats {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// Produces `BATCH` records to partition 0 in one record batch (the producer
/// lingers; its statistics confirm the batch).
fn produce_one_batch(servers: &str, topic: &str) {
    let p: BaseProducer<BatchStats> = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("linger.ms", "500")
        .set("batch.num.messages", "10000")
        .set("statistics.interval.ms", "100")
        .create_with_context(BatchStats::default())
        .unwrap();
    for i in 0..BATCH {
        let v = format!("record-{i}");
        p.send(BaseRecord::<(), _>::to(topic).partition(0).payload(&v))
            .unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
    // Statistics come every 100 ms; wait for the one that covers the batch.
    let deadline = Instant::now() + Duration::from_secs(2);
    while p.context().seen.lock().unwrap().1 == 0 && Instant::now() < deadline {
        p.poll(Duration::from_millis(50));
    }
    let (largest, batches) = *p.context().seen.lock().unwrap();
    assert_eq!(
        (largest, batches),
        (BATCH, 1),
        "test setup: the producer sent the {BATCH} records in {batches} batches of at most \
         {largest}; this check needs them in one batch"
    );
}

/// (a) and (b) on the broker at `servers` (`what` names it in messages).
fn batched_records_are_served_whole(servers: &str, what: &str) {
    let topic = unique("conformance-batch");
    create_topic(servers, &topic, 1);
    produce_one_batch(servers, &topic);

    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", unique("conformance"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let (_, high) = c
        .fetch_watermarks(&topic, 0, Duration::from_secs(5))
        .unwrap();
    assert_eq!(
        high, BATCH,
        "BROKER REGRESSION ({what}), not a router bug: the high watermark after {BATCH} records \
         produced in one batch is {high}, expected {BATCH} (an imitation broker once reported the \
         batch's base offset + 1)"
    );

    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(FROM))
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut offsets = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Until the last record, then a little longer for anything unexpected.
    let mut quiet_until = None;
    while Instant::now() < deadline && quiet_until.is_none_or(|q| Instant::now() < q) {
        if let Some(m) = c.poll(Duration::from_millis(50)) {
            let m = m.unwrap();
            offsets.push(m.offset());
            if m.offset() == BATCH - 1 {
                quiet_until = Some(Instant::now() + Duration::from_millis(300));
            }
        }
    }
    let expected: Vec<i64> = (FROM..BATCH).collect();
    assert_eq!(
        offsets,
        expected,
        "BROKER REGRESSION ({what}), not a router bug: a fetch from offset {FROM}, inside a batch \
         of {BATCH} records (offsets 0..{}), returned {} records {:?}..{:?}; expected exactly \
         offsets {FROM}..={} (an imitation broker once skipped the rest of the batch, losing \
         records of any consumer that resumed mid-batch)",
        BATCH - 1,
        offsets.len(),
        offsets.first(),
        offsets.last(),
        BATCH - 1
    );
}

#[test]
fn a_fetch_inside_a_batch_returns_the_rest_of_it_and_the_high_watermark_is_right() {
    batched_records_are_served_whole(&bootstrap(), "the broker under test");
}

fn member_config(group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .set("session.timeout.ms", SESSION_TIMEOUT_MS.to_string())
        .set("heartbeat.interval.ms", "500")
        .set("max.poll.interval.ms", "10000")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    c
}

fn assigned(c: &BaseConsumer) -> Vec<i32> {
    let mut v: Vec<i32> = c
        .assignment()
        .unwrap()
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect();
    v.sort_unstable();
    v
}

/// The group member of (c), in a process of its own: run by
/// `a_member_killed_with_sigkill_is_replaced` (this test binary, this test
/// only, with the group and topic in the environment). It prints its
/// assignment each time it changes. Without that environment it does nothing.
#[test]
#[ignore = "the group member process of a_member_killed_with_sigkill_is_replaced"]
fn group_member_process() {
    let (Ok(group), Ok(topic)) = (
        std::env::var("CONFORMANCE_GROUP"),
        std::env::var("CONFORMANCE_TOPIC"),
    ) else {
        return;
    };
    let c: BaseConsumer = member_config(&group).create().unwrap();
    c.subscribe(&[&topic]).unwrap();
    let mut last = None;
    loop {
        if let Some(Err(e)) = c.poll(Duration::from_millis(50)) {
            eprintln!("member: {e}");
        }
        let now = assigned(&c);
        if last.as_ref() != Some(&now) {
            let list: Vec<String> = now.iter().map(i32::to_string).collect();
            println!("assigned: {}", list.join(","));
            std::io::stdout().flush().unwrap();
            last = Some(now);
        }
    }
}

/// (c): a member in another process owns all partitions, is killed with
/// SIGKILL (no LeaveGroup), and a new member owns all of them within the
/// session timeout plus a margin.
#[test]
fn a_member_killed_with_sigkill_is_replaced() {
    let partitions = 3;
    let topic = unique("conformance-group");
    let group = unique("conformance-group");
    create_topic(&bootstrap(), &topic, partitions);
    let all: Vec<i32> = (0..partitions).collect();

    let mut member = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "group_member_process",
            "--ignored",
            "--nocapture",
        ])
        .env("CONFORMANCE_GROUP", &group)
        .env("CONFORMANCE_TOPIC", &topic)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = member.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(list) = line.strip_prefix("assigned: ") {
                let parts: Vec<i32> = list.split(',').filter_map(|p| p.parse().ok()).collect();
                if tx.send(parts).is_err() {
                    break;
                }
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut owned = Vec::new();
    while owned != all {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(parts) => owned = parts,
            Err(_) => {
                let _ = member.kill();
                panic!(
                    "BROKER REGRESSION, not a router bug: the only member of a new group \
                     (another process) did not get all {partitions} partitions within 30 s; \
                     last assignment {owned:?}"
                );
            }
        }
    }

    // SIGKILL: the member leaves no LeaveGroup; the broker must expire it.
    member.kill().unwrap();
    member.wait().unwrap();
    let killed = Instant::now();

    let c: BaseConsumer = member_config(&group).create().unwrap();
    c.subscribe(&[&topic]).unwrap();
    let bound = Duration::from_millis(SESSION_TIMEOUT_MS) + Duration::from_secs(10);
    let mut now = Vec::new();
    while now != all {
        assert!(
            killed.elapsed() < bound,
            "BROKER REGRESSION, not a router bug: {:?} after a group member was killed with \
             SIGKILL, a new member owns partitions {now:?} of {all:?}; the broker should have \
             expired the dead member within its session timeout ({SESSION_TIMEOUT_MS} ms) and \
             given the new one every partition",
            killed.elapsed()
        );
        let _ = c.poll(Duration::from_millis(50));
        now = assigned(&c);
    }
    println!(
        "a new member owned all {partitions} partitions {} ms after the old one was killed \
         (session timeout {SESSION_TIMEOUT_MS} ms)",
        killed.elapsed().as_millis()
    );
}

/// (d): an idempotent producer (the router's default) across a broker restart.
#[test]
fn an_idempotent_producer_survives_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    let servers = broker.bootstrap();
    let topic = unique("conformance-idempotence");
    create_topic(&servers, &topic, 1);
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();
    let send = |from: i64, to: i64| {
        for i in from..to {
            let v = format!("record-{i}");
            p.send(BaseRecord::<(), _>::to(&topic).partition(0).payload(&v))
                .unwrap();
        }
        p.flush(Duration::from_secs(30)).unwrap_or_else(|e| {
            panic!(
                "BROKER REGRESSION (the test's own Apache Kafka), not a router bug: an \
                 idempotent producer could not deliver records {from}..{to} after a broker \
                 restart: {e}; fatal error: {:?}",
                p.client().fatal_error()
            )
        });
    };
    send(0, 50);
    broker.restart(Duration::from_secs(1));
    send(50, 100);
    assert_eq!(
        p.client().fatal_error(),
        None,
        "BROKER REGRESSION (the test's own Apache Kafka), not a router bug: the broker fenced \
         an idempotent producer after its restart"
    );
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("group.id", unique("conformance"))
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut values = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while values.len() < 100 && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(50)) {
            let m = m.unwrap();
            values.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    let expected: Vec<String> = (0..100).map(|i| format!("record-{i}")).collect();
    assert_eq!(
        values, expected,
        "BROKER REGRESSION (the test's own Apache Kafka), not a router bug: an idempotent \
         producer's 100 records, 50 before and 50 after a broker restart, read back differently \
         (lost, duplicated or reordered)"
    );
}

/// (e): a fetch waiting up to 2 s is answered when a record arrives: each of
/// 20 records, produced one at a time while the consumer waits, arrives well
/// before the wait would run out.
#[test]
fn a_waiting_fetch_is_answered_when_a_record_arrives() {
    const WAIT_MS: u128 = 2_000;
    let servers = bootstrap();
    let topic = unique("conformance-longpoll");
    create_topic(&servers, &topic, 1);
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("group.id", unique("conformance"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", WAIT_MS.to_string())
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::End).unwrap();
    c.assign(&tpl).unwrap();
    // Let the consumer find its position and start waiting.
    let settle = Instant::now() + Duration::from_secs(3);
    while Instant::now() < settle {
        assert!(c.poll(Duration::from_millis(100)).is_none());
    }
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let mut waits = Vec::new();
    for i in 0..20 {
        // Sent at a random point of the consumer's wait.
        std::thread::sleep(Duration::from_millis(150 + (i * 37) % 300));
        let sent = Instant::now();
        p.send(BaseRecord::<(), _>::to(&topic).partition(0).payload("x"))
            .unwrap();
        loop {
            p.poll(Duration::ZERO);
            match c.poll(Duration::from_millis(1)) {
                Some(Ok(_)) => break,
                Some(Err(e)) => panic!("consuming: {e}"),
                None => assert!(
                    sent.elapsed() < Duration::from_secs(10),
                    "record {i} never arrived"
                ),
            }
        }
        waits.push(sent.elapsed().as_millis());
    }
    waits.sort_unstable();
    println!(
        "produce to consume with fetch.wait.max.ms={WAIT_MS}: median {} ms, max {} ms",
        waits[waits.len() / 2],
        waits[waits.len() - 1]
    );
    assert!(
        waits[waits.len() - 1] < WAIT_MS / 2,
        "BROKER REGRESSION, not a router bug: a consumer waiting up to {WAIT_MS} ms for data \
         got records only after {waits:?} ms; the broker should answer a waiting fetch as soon \
         as a record arrives"
    );
}
