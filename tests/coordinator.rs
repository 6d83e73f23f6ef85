//! The coordinator on librdkafka's in-process mock cluster, driven the way the
//! rebalance callbacks drive it: a partition assigned a second time while its
//! task still runs keeps every record (issue 9).
//!
//! The test builds the router's consumer, shared state and coordinator with
//! the functions `Router::start` uses, assigns the partition itself and sends
//! `GroupEvent::Assigned` with a freshly split queue, as `post_rebalance`
//! does; the second `Assigned` comes without a librdkafka re-assignment, so
//! the partition's fetch position carries on where the first task left it.
//!
//! Also the binary's refusal of `-X` settings that would silently break a
//! guarantee, and `--unsafe-override` (the unit tests in src/kafka.rs check
//! every key and value).

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_delay_router::consumer::{spawn_poll_thread, GroupEvent};
use kafka_delay_router::coordinator::Coordinator;
use kafka_delay_router::kafka::now_ms;
use kafka_delay_router::metrics::Metrics;
use kafka_delay_router::router::{self, RouterOptions};
use kafka_delay_router::sink::Sink;
use kafka_delay_router::{KafkaSettings, TopicsConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const TIER: &str = "co-4s";
const TARGET: &str = "co-target";
const TIER_DELAY_MS: i64 = 4_000;

/// Sends `n` records into the tier's one partition, to be delivered to the
/// target after the tier's delay, or after `deliver_in_ms` (`delay-deliver-at`);
/// returns each value with its due time (epoch ms).
async fn send(
    producer: &FutureProducer,
    tag: &str,
    n: usize,
    deliver_in_ms: Option<i64>,
) -> BTreeMap<String, i64> {
    let mut values = BTreeMap::new();
    for i in 0..n {
        let value = format!("{tag}-{i}");
        let timestamp = now_ms();
        let due = timestamp + deliver_in_ms.unwrap_or(TIER_DELAY_MS);
        let mut headers = OwnedHeaders::new().insert(Header {
            key: "delay-target",
            value: Some(TARGET),
        });
        if deliver_in_ms.is_some() {
            headers = headers.insert(Header {
                key: "delay-deliver-at",
                value: Some(&due.to_string()),
            });
        }
        producer
            .send(
                FutureRecord::<(), _>::to(TIER)
                    .partition(0)
                    .payload(&value)
                    .timestamp(timestamp)
                    .headers(headers),
                Duration::from_secs(5),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("producing {value}: {e}"));
        values.insert(value, due);
    }
    values
}

/// Reads the target from the beginning until every expected value arrived or
/// `timeout` passed; returns each value with the time it was delivered (the
/// router stamps what it produces with its produce time).
fn collect(
    bootstrap: String,
    expected: BTreeMap<String, i64>,
    timeout: Duration,
) -> BTreeMap<String, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "co-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TARGET, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut seen = BTreeMap::new();
    let deadline = Instant::now() + timeout;
    while expected.keys().any(|k| !seen.contains_key(k)) && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            let at = m.timestamp().to_millis().unwrap_or(-1);
            seen.entry(value).or_insert(at);
        }
    }
    seen
}

/// What arrived of `expected`: the values missing, and each arrival's lateness (ms).
async fn delivered(
    bootstrap: &str,
    phase: &str,
    expected: &BTreeMap<String, i64>,
) -> (Vec<String>, Vec<(String, i64)>) {
    let seen = {
        let (bootstrap, expected) = (bootstrap.to_string(), expected.clone());
        tokio::task::spawn_blocking(move || collect(bootstrap, expected, Duration::from_secs(15)))
            .await
            .unwrap()
    };
    let missing: Vec<String> = expected
        .keys()
        .filter(|k| !seen.contains_key(*k))
        .cloned()
        .collect();
    let lateness: Vec<(String, i64)> = expected
        .iter()
        .filter_map(|(v, due)| seen.get(v).map(|at| (v.clone(), at - due)))
        .collect();
    println!(
        "{phase}: {} of {} delivered, lateness min {:?} ms, max {:?} ms; missing: {missing:?}",
        lateness.len(),
        expected.len(),
        lateness.iter().map(|l| l.1).min(),
        lateness.iter().map(|l| l.1).max(),
    );
    (missing, lateness)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_assigned_twice_routes_every_record() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("KDR_TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let mock = MockCluster::new(1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    for topic in [TIER, "co-dlq", TARGET] {
        mock.create_topic(topic, 1, 1).unwrap();
    }
    let config = TopicsConfig::parse(
        "coordinator-test.yaml",
        &format!(
            "tiers:\n  - {{topic: {TIER}, delay: {TIER_DELAY_MS}ms, partitions: 1}}\ndead-letter: {{topic: co-dlq, partitions: 1}}\ntargets: {{allow: [{TARGET}]}}\n"
        ),
    )
    .unwrap();
    let kafka = KafkaSettings::new(&bootstrap);
    let mut options = RouterOptions::new(kafka.clone());
    options.group_id = "co-router".into();
    // KDR_GROUP_PROTOCOL=consumer builds the consumer for KIP-848, as
    // tests/common does for the broker tests.
    if let Ok(p) = std::env::var("KDR_GROUP_PROTOCOL") {
        options.group_protocol = p.parse().unwrap();
    }

    // The router's own consumer and coordinator; the test plays the rebalance
    // callback's part: it assigns the partition and sends the coordinator
    // `Assigned` with a freshly split queue, as `post_rebalance` does.
    let metrics = Arc::new(Metrics::new());
    metrics.init_tier(TIER);
    let (events, events_rx) = mpsc::unbounded_channel();
    let consumer = router::tier_consumer(&options, events.clone(), metrics.clone()).unwrap();
    {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(TIER, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
    }
    let stop_polling = Arc::new(AtomicBool::new(false));
    let poll_thread = spawn_poll_thread(consumer.clone(), stop_polling.clone());
    let sink = Arc::new(Sink::new(&kafka).unwrap());
    let shared = router::shared(
        config,
        &options,
        sink.clone(),
        metrics.clone(),
        Arc::new(kafka_delay_router::cancel::Cancellations::disabled()),
        CancellationToken::new(),
    );
    let coordinator = Coordinator::new(shared, consumer.clone(), events_rx, Duration::from_secs(5));
    let stop = CancellationToken::new();
    let running =
        tokio::spawn(coordinator.run(stop.clone(), Duration::from_secs(5), metrics.clone()));
    let assign = || {
        let queue = consumer.split_partition_queue(TIER, 0).unwrap();
        events
            .send(GroupEvent::Assigned(vec![(TIER.to_string(), 0, queue)]))
            .unwrap();
    };
    let read = || metrics.records_read.with_label_values(&[TIER]).get();

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    assign();
    // Records the first task reads and holds, waiting for their 4 s.
    let sent_at = Instant::now();
    let mut expected = send(&producer, "before", 20, None).await;
    while read() < 20 && sent_at.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(read(), 20, "the first task read the records within 3 s");
    assert!(
        sent_at.elapsed() < Duration::from_millis(3_500),
        "the second assignment must come while the records still wait"
    );
    // The same partition assigned again while its task holds them.
    assign();
    // And records that only the new task can read.
    expected.extend(send(&producer, "after", 20, None).await);
    let (mut missing, mut lateness) = delivered(&bootstrap, "assigned twice", &expected).await;
    // Records that arrive while the new task is idle (nothing read, nothing
    // waiting) are found only if the queue's callback wakes it: without it
    // the task looks again at its next lag query, up to 10 s later.
    let idle = send(&producer, "idle", 5, Some(500)).await;
    let (m, l) = delivered(&bootstrap, "idle task woken", &idle).await;
    missing.extend(m);
    lateness.extend(l);
    println!("{} records read from the tier", read());

    stop.cancel();
    running.await.unwrap();
    // Everything the tasks finished is committed, up to the last record.
    // (Each list is dropped before the consumer: a list librdkafka filled in
    // can hold a reference to the partition that keeps the consumer from closing.)
    let committed = {
        let consumer = consumer.clone();
        tokio::task::spawn_blocking(move || {
            let list = consumer.committed(Duration::from_secs(5)).unwrap();
            list.find_partition(TIER, 0).map(|e| e.offset())
        })
        .await
        .unwrap()
    };
    stop_polling.store(true, Ordering::Release);
    drop(consumer);
    tokio::task::spawn_blocking(move || poll_thread.join().unwrap())
        .await
        .unwrap();
    drop(sink);

    assert!(missing.is_empty(), "records lost: {missing:?}");
    // Never early, and the new task is woken by its records (not only by a
    // timer: the lag query wakes a task every 10 s).
    for (value, late) in &lateness {
        assert!(*late >= 0, "{value} delivered {late} ms early");
        assert!(*late < 3_000, "{value} delivered {late} ms late");
    }
    assert_eq!(committed, Some(Offset::Offset(45)), "committed offset");
}

/// Runs the binary from the crate folder (so `topics.yaml` is its topics file),
/// without any settings or overrides from the environment except `env`.
fn binary(args: &[&str], env: &[(&str, &str)]) -> (Output, Duration) {
    let started = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kafka-delay-router"));
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("KDR_KAFKA_SETTINGS")
        .env_remove("KDR_UNSAFE_OVERRIDES")
        .env("KDR_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (out, started.elapsed())
}

#[test]
fn run_refuses_settings_that_break_a_guarantee_before_connecting() {
    // Port 1 is closed: reading the cluster's metadata would take 10 s to fail.
    let base = [
        "run",
        "--bootstrap-servers",
        "127.0.0.1:1",
        "--metrics-addr",
        "127.0.0.1:0",
    ];
    for (extra, env, pair, guarantee) in [
        (
            &["-X", "acks=1"][..],
            &[][..],
            "acks=1",
            "at-least-once delivery",
        ),
        (
            &[][..],
            &[(
                "KDR_KAFKA_SETTINGS",
                "linger.ms=5;enable.auto.offset.store=true",
            )][..],
            "enable.auto.offset.store=true",
            "at-least-once delivery",
        ),
        (
            &[
                "-X",
                "enable.idempotence=false",
                "--unsafe-override",
                "acks",
            ][..],
            &[][..],
            "enable.idempotence=false",
            "per-key ordering",
        ),
        (
            &["-X", "enable.auto.commit=false"][..],
            &[][..],
            "enable.auto.commit=false",
            "the bound on duplicates after a crash",
        ),
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let (out, took) = binary(&args, env);
        let err = String::from_utf8_lossy(&out.stderr);
        let key = pair.split_once('=').unwrap().0;
        assert_eq!(out.status.code(), Some(1), "{pair}: {err}");
        assert!(
            err.contains(&format!("-X {pair} breaks {guarantee}"))
                && err.contains("fix: remove it")
                && err.contains(&format!("--unsafe-override {key}")),
            "{pair}: {err}"
        );
        assert!(
            took < Duration::from_secs(5),
            "{pair}: took {took:?}: {err}"
        );
    }
}

#[test]
fn produce_refuses_a_producer_that_is_not_idempotent() {
    let (out, took) = binary(
        &[
            "produce",
            "--bootstrap-servers",
            "127.0.0.1:1",
            "--target",
            "orders",
            "--delay",
            "5s",
            "-X",
            "enable.idempotence=false",
            "a value",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "-X enable.idempotence=false breaks per-key ordering and duplicate-free retries"
        ),
        "{err}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}: {err}");
}

#[test]
fn unsafe_override_lets_a_setting_through_with_a_warning() {
    // A cluster without the router's topics: getting as far as looking for
    // them shows the settings were let through.
    let mock = MockCluster::new(1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let args = [
        "run",
        "--bootstrap-servers",
        &bootstrap,
        "--metrics-addr",
        "127.0.0.1:0",
        "-X",
        "acks=1",
        "-X",
        "enable.idempotence=false",
    ];
    let flags = [
        "--unsafe-override",
        "acks",
        "--unsafe-override",
        "enable.idempotence",
    ];
    let with_flags: Vec<&str> = args.iter().chain(&flags).copied().collect();
    for (args, env) in [
        (&with_flags[..], &[][..]),
        (
            &args[..],
            &[("KDR_UNSAFE_OVERRIDES", "acks,enable.idempotence")][..],
        ),
    ] {
        let (out, _) = binary(args, env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("-X acks=1 allowed by --unsafe-override: the router gives up at-least-once delivery")
                && err.contains(
                    "-X enable.idempotence=false allowed by --unsafe-override: the router gives up per-key ordering"
                ),
            "{env:?}: {err}"
        );
        assert!(
            err.contains("topics missing from the cluster"),
            "{env:?}: {err}"
        );
    }

    // A key the router does not guard is refused as a mistake.
    let (out, _) = binary(
        &[
            "run",
            "--bootstrap-servers",
            "127.0.0.1:1",
            "--unsafe-override",
            "ack",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--unsafe-override")
            && err.contains("\"ack\" is not a setting the router refuses"),
        "{err}"
    );
}
