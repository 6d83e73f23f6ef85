//! The cancel view against the real broker: a cancellation written with
//! `DelayProducer::cancel` (or the `cancel` subcommand) is in the view once
//! `fresh_until` passes its acknowledgement; a flood of cancellations for
//! unknown ids; malformed cancellations refused without a crash; a new reader
//! reads every outstanding cancellation from the beginning; the cap holds the
//! view back instead of forgetting.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{kafka, produce, producer, try_produce, unique, Env};
use kafka_delay_router::cancel::{self, CancelLimits, Cancellations, ID_HEADER, UNTIL_HEADER};
use kafka_delay_router::kafka::now_ms;
use kafka_delay_router::metrics::Metrics;
use kafka_delay_router::{DelayProducer, When};
use tokio_util::sync::CancellationToken;

/// Tiers of 1 s and 5 s and a cancel topic of `partitions` partitions.
async fn env(name: &str, partitions: i32) -> (Env, String) {
    let topic = unique(&format!("{name}-cancel"));
    let env = Env::with_extra(
        name,
        &[1_000, 5_000],
        2,
        1,
        &format!("cancel: {{topic: {topic}, partitions: {partitions}, retention: 8d}}\n"),
    )
    .await;
    (env, topic)
}

struct View {
    view: Arc<Cancellations>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

impl Drop for View {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn start(env: &Env, max: usize) -> View {
    let metrics = Arc::new(Metrics::new());
    let stop = CancellationToken::new();
    let view = cancel::start(
        &env.config,
        &kafka(),
        metrics.clone(),
        CancelLimits {
            max_cancellations: max,
        },
        stop.clone(),
    )
    .unwrap();
    View {
        view,
        metrics,
        stop,
    }
}

/// Waits until the view is fresh up to `t_ms`; returns how long that took.
async fn fresh_by(view: &Cancellations, t_ms: i64, within: Duration) -> Duration {
    let started = Instant::now();
    let mut advanced = view.subscribe();
    loop {
        advanced.borrow_and_update();
        if view.fresh_until() >= t_ms {
            return started.elapsed();
        }
        let left = within.checked_sub(started.elapsed()).unwrap_or_else(|| {
            panic!(
                "not fresh up to {t_ms} within {within:?}: fresh until {}",
                view.fresh_until()
            )
        });
        let _ = tokio::time::timeout(left, advanced.changed()).await;
    }
}

fn refused(m: &Metrics, reason: &str) -> u64 {
    m.cancellations_refused.with_label_values(&[reason]).get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_wins_once_the_view_is_fresh_past_its_acknowledgement() {
    let (env, topic) = env("cancel-ack", 3).await;
    let v = start(&env, 100_000);
    // An empty topic is fresh at once.
    let started = now_ms();
    fresh_by(&v.view, started, Duration::from_secs(5)).await;
    let dp = DelayProducer::new(&kafka(), env.config.clone()).unwrap();
    let mut waits = Vec::new();
    for i in 0..10 {
        // Each checked cancellation comes with 1,000 others written at the same
        // time, so the reader has something to catch up with.
        let id = format!("order-{i}");
        let others: Vec<String> = (0..1_000).map(|j| format!("other-{i}-{j}")).collect();
        let (c, rest) = tokio::join!(
            dp.cancel(id.as_bytes(), None),
            futures::future::join_all(others.iter().map(|o| dp.cancel(o.as_bytes(), None)))
        );
        let c = c.unwrap();
        assert_eq!(c.topic, topic);
        assert!(c.until_ms >= c.acked_ms + env.config.max_delay_ms as i64 - 60_000);
        let acked = rest
            .into_iter()
            .map(|r| r.unwrap().acked_ms)
            .fold(c.acked_ms, i64::max);
        // The lead's rule: deliver an id'd record due at `due` only when fresh_until >= due.
        // Any record due after an acknowledgement must then see the cancellation.
        waits.push(fresh_by(&v.view, acked, Duration::from_secs(10)).await);
        let now = now_ms();
        assert!(
            v.view.is_cancelled(id.as_bytes(), now)
                && others
                    .iter()
                    .all(|o| v.view.is_cancelled(o.as_bytes(), now)),
            "{id} acknowledged at {} but not in a view fresh until {} ({} held)",
            c.acked_ms,
            v.view.fresh_until(),
            v.view.len()
        );
    }
    assert!(!v.view.is_cancelled(b"order-10", now_ms()));
    assert_eq!(v.view.len(), 10 * 1_001);
    waits.sort();
    println!(
        "acknowledgement to fresh view: median {:?}, max {:?}",
        waits[waits.len() / 2],
        waits[waits.len() - 1]
    );
    // The gauges follow.
    let deadline = Instant::now() + Duration::from_secs(5);
    while v.metrics.cancellations_outstanding.get() != 10 * 1_001 {
        assert!(
            Instant::now() < deadline,
            "outstanding gauge stays at {}",
            v.metrics.cancellations_outstanding.get()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(v.metrics.cancellations_limit.get(), 100_000);
    let text = v.metrics.render();
    let lag: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("kafka_delay_router_cancel_view_lag_seconds "))
        .expect("lag gauge rendered")
        .parse()
        .unwrap();
    assert!((0.0..2.0).contains(&lag), "view lag {lag} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cancel_subcommand_writes_a_cancellation_the_view_sees() {
    let (env, _topic) = env("cancel-cli", 1).await;
    let v = start(&env, 100);
    let out = tokio::task::spawn_blocking({
        let path = env.config_path.clone();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_kafka-delay-router"))
                .args(["cancel", "--id", "cli-7", "--for", "1h", "--config"])
                .arg(&path)
                .env("KAFKA_BOOTSTRAP_SERVERS", common::bootstrap())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let after = now_ms();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("cancelled \"cli-7\""), "{text}");
    fresh_by(&v.view, after, Duration::from_secs(5)).await;
    assert!(v.view.is_cancelled(b"cli-7", now_ms()));
    assert!(!v.view.is_cancelled(b"cli-7", now_ms() + 3_700_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_cancellations_for_unknown_ids_is_held_and_read_fast() {
    let (env, _topic) = env("cancel-flood", 3).await;
    let v = start(&env, 1_000_000);
    let dp = DelayProducer::new(&kafka(), env.config.clone()).unwrap();
    const N: usize = 20_000;
    let ids: Vec<String> = (0..N).map(|i| format!("unknown-{i}")).collect();
    let t = Instant::now();
    let results =
        futures::future::join_all(ids.iter().map(|id| dp.cancel(id.as_bytes(), None))).await;
    let acked = results
        .into_iter()
        .map(|r| r.unwrap().acked_ms)
        .max()
        .unwrap();
    let produced = t.elapsed();
    let waited = fresh_by(&v.view, acked, Duration::from_secs(30)).await;
    println!("{N} cancellations produced in {produced:?}, view fresh {waited:?} after the last acknowledgement");
    assert_eq!(v.view.len(), N);
    let now = now_ms();
    assert!(ids.iter().all(|id| v.view.is_cancelled(id.as_bytes(), now)));
    assert!(!v.view.is_cancelled(b"unknown-20000", now));
    let per = v.view.table_bytes() as f64 / N as f64;
    assert!(per < 64.0, "{per} bytes per cancellation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_cancellations_are_refused_without_a_crash() {
    let (env, topic) = env("cancel-bad", 1).await;
    let v = start(&env, 100);
    let p = producer();
    let long = vec![b'k'; 256];
    let far = (now_ms() + 30 * 86_400_000).to_string();
    // Apache Kafka itself refuses a record without a key on a compacted topic
    // (the cancel topic is compacted): a null-key cancellation never reaches
    // the routers. (Nisshi, the earlier test broker, stored it, and the reader
    // refused it as missing-id, as it still would on such a broker.)
    let keyless = try_produce(&p, &topic, Some(0), None, Some(b"x"), &[], None).await;
    assert!(
        matches!(
            keyless,
            Err(rdkafka::error::KafkaError::MessageProduction(
                rdkafka::types::RDKafkaErrorCode::InvalidRecord
            ))
        ),
        "a null-key record on the compacted cancel topic: {keyless:?}"
    );
    type Bad<'a> = (Option<&'a [u8]>, Vec<(&'a str, Option<&'a [u8]>)>);
    let bad: [Bad; 6] = [
        (Some(b""), vec![]),
        (Some(&long), vec![]),
        (Some(b"k1"), vec![(UNTIL_HEADER, Some(b"soon"))]),
        (Some(b"k2"), vec![(UNTIL_HEADER, None)]),
        (Some(b"k3"), vec![(UNTIL_HEADER, Some(b"-1"))]),
        (Some(b"k4"), vec![(UNTIL_HEADER, Some(far.as_bytes()))]),
    ];
    for (key, headers) in &bad {
        produce(&p, &topic, Some(0), *key, Some(b"x"), headers, None).await;
    }
    // A good one after them, and a delayed record's headers on the cancel topic (also fine: key is the id).
    produce(
        &p,
        &topic,
        Some(0),
        Some(b"good"),
        Some(b"x"),
        &[(ID_HEADER, Some(b"z"))],
        None,
    )
    .await;
    let after = now_ms();
    fresh_by(&v.view, after, Duration::from_secs(5)).await;
    assert!(v.view.is_cancelled(b"good", now_ms()));
    assert_eq!(v.view.len(), 1);
    assert_eq!(refused(&v.metrics, "missing-id"), 1);
    assert_eq!(refused(&v.metrics, "id-too-long"), 1);
    assert_eq!(refused(&v.metrics, "invalid-until"), 3);
    assert_eq!(refused(&v.metrics, "until-too-far"), 1);
    // Still reading.
    let dp = DelayProducer::new(&kafka(), env.config.clone()).unwrap();
    let c = dp.cancel(b"later", None).await.unwrap();
    fresh_by(&v.view, c.acked_ms, Duration::from_secs(5)).await;
    assert!(v.view.is_cancelled(b"later", now_ms()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_reader_reads_every_outstanding_cancellation_from_the_beginning() {
    let (env, topic) = env("cancel-restart", 3).await;
    let dp = DelayProducer::new(&kafka(), env.config.clone()).unwrap();
    const KEPT: usize = 10_000;
    let kept: Vec<String> = (0..KEPT).map(|i| format!("kept-{i}")).collect();
    let hour = Some(When::After(Duration::from_secs(3600)));
    for r in futures::future::join_all(kept.iter().map(|id| dp.cancel(id.as_bytes(), hour))).await {
        r.unwrap();
    }
    let short = dp
        .cancel(b"short", Some(When::After(Duration::from_secs(5))))
        .await
        .unwrap();
    dp.cancel(b"withdrawn", None).await.unwrap();
    // A null value withdraws; the producer's partitioner puts it beside the cancellation.
    let p = producer();
    produce(&p, &topic, None, Some(b"withdrawn"), None, &[], None).await;
    let written = now_ms();
    {
        let first = start(&env, 100_000);
        fresh_by(&first.view, written, Duration::from_secs(10)).await;
        assert_eq!(first.view.len(), KEPT + 1);
        assert!(first
            .view
            .is_cancelled(b"short", now_ms().min(short.until_ms - 1)));
        assert!(!first.view.is_cancelled(b"withdrawn", now_ms()));
    }
    // The first reader is stopped; a new one starts after "short" expired.
    let wait = short.until_ms - now_ms() + 100;
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    let t = Instant::now();
    let second = start(&env, 100_000);
    fresh_by(&second.view, now_ms() - 1, Duration::from_secs(10)).await;
    println!("a new reader was fresh after {:?}", t.elapsed());
    assert_eq!(second.view.len(), KEPT);
    let now = now_ms();
    assert!(kept
        .iter()
        .all(|id| second.view.is_cancelled(id.as_bytes(), now)));
    assert!(!second.view.is_cancelled(b"short", now));
    assert!(!second.view.is_cancelled(b"withdrawn", now));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_the_view_stops_getting_fresher_instead_of_forgetting() {
    let (env, _topic) = env("cancel-cap", 1).await;
    let v = start(&env, 2);
    let dp = DelayProducer::new(&kafka(), env.config.clone()).unwrap();
    dp.cancel(b"a", Some(When::After(Duration::from_secs(2))))
        .await
        .unwrap();
    dp.cancel(b"b", None).await.unwrap();
    let third = dp.cancel(b"c", None).await.unwrap();
    // "c" does not fit until "a" expires: the view must not claim freshness past it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        v.view.fresh_until() < third.acked_ms,
        "fresh until {} though c (acknowledged {}) is not held",
        v.view.fresh_until(),
        third.acked_ms
    );
    assert!(v.view.is_cancelled(b"a", now_ms()) && v.view.is_cancelled(b"b", now_ms()));
    assert!(!v.view.is_cancelled(b"c", now_ms()));
    // Once "a" expires, "c" gets in and the view catches up.
    fresh_by(&v.view, third.acked_ms, Duration::from_secs(10)).await;
    assert!(v.view.is_cancelled(b"c", now_ms()) && v.view.is_cancelled(b"b", now_ms()));
    assert!(!v.view.is_cancelled(b"a", now_ms()));
}

#[tokio::test]
async fn without_a_cancel_topic_the_view_is_off_and_always_fresh() {
    let env = Env::declare("cancel-off", &[1_000], 1, 0, "");
    let v = start(&env, 10);
    assert_eq!(v.view.fresh_until(), i64::MAX);
    let dp = DelayProducer::new(&kafka(), env.config.clone()).unwrap();
    let e = dp.cancel(b"x", None).await.unwrap_err();
    assert!(e.to_string().contains("declares no cancel topic"), "{e}");
}
