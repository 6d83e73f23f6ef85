//! The first record a tier partition receives after the router was assigned
//! it (issue 18, item 2): a 150 ms delay written right after the router owns
//! a never-read partition, after a rebalance moved partitions to a second
//! router, and after a restart that found committed offsets. Each is measured
//! as arrival at a reader of the target (reading before the record is
//! written) minus its due time, beside a later record of the same partition.
//!
//! Like the benchmarks, these tests print the figures (`-- --nocapture`)
//! and assert only a generous bound: the team checks precision targets with
//! benchmarks that print figures, not with tight timed tests, which a busy
//! 2-core machine would fail. The bound, 250 ms, is well above the ~10 ms a
//! later record takes and the 50 ms target, and well below the 369 to 874 ms
//! the first record took in each of six runs when this was reported, so it
//! fails on that bug and not on a noisy machine. Where a test measures
//! several first records (runs, partitions) the bound holds for their
//! median: on this machine under a load average above 20 (other test suites
//! and brokers beside it) one run's first record took 322 ms while the later
//! records of the same run took 22 ms, with and without the fix below.
//!
//! Also printed, not asserted: a record due at once, written beside the
//! 150 ms one, whose lateness is how long after an assignment the router
//! first reads a partition. For a partition without a committed offset that
//! was 70-150 ms until the tier consumer assigned such partitions at their
//! beginning itself (librdkafka waits 100 ms before looking up the
//! beginning otherwise; see `begin_uncommitted` in src/consumer.rs), and is
//! now 13-49 ms on an idle machine, like a partition with a committed offset.
//!
//! Optional: `FIRST_RECORD_RUNS` (fresh-assignment runs, 3 by default);
//! `RUST_LOG` (e.g. `kafka_delay_router=debug`) prints the router's log with
//! timestamps; `FIRST_RECORD_DEBUG` (e.g. `fetch,topic,msg`) turns on
//! librdkafka's debug contexts in the router's clients.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kafka_delay_router::headers::{DELIVER_AT, TARGET};
use kafka_delay_router::kafka::now_ms;
use kafka_delay_router::router::Router;
use rdkafka::producer::FutureProducer;

/// The delay of every measured record.
const DELAY_MS: i64 = 150;
/// Largest lateness accepted (see the module comment).
const MAX_LATE_MS: i64 = 250;

/// One scenario at a time: they measure time, so they must not share the machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn setup() {
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
    if let Ok(contexts) = std::env::var("FIRST_RECORD_DEBUG") {
        set_extra_settings(&[&format!("debug={contexts}")]);
    }
}

fn runs() -> usize {
    std::env::var("FIRST_RECORD_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// A record written to a tier partition, due `DELAY_MS` after it was sent.
struct Sent {
    value: String,
    partition: i32,
    due: i64,
    delay_ms: i64,
    /// How long the write to the tier took (part of the lateness, not the router's).
    write_ms: i64,
}

/// Writes a 150 ms delay (`delay-deliver-at`, smallest tier) to `partition` of the smallest tier.
async fn send_delay(p: &FutureProducer, env: &Env, partition: i32, value: &str) -> Sent {
    send_due(p, env, partition, value, DELAY_MS).await
}

/// Writes a record due `delay_ms` from now to `partition` of the smallest tier.
async fn send_due(
    p: &FutureProducer,
    env: &Env,
    partition: i32,
    value: &str,
    delay_ms: i64,
) -> Sent {
    let target = env.targets[0].clone();
    let due = now_ms() + delay_ms;
    let at = due.to_string();
    let started = Instant::now();
    produce(
        p,
        env.tier(0),
        Some(partition),
        Some(value.as_bytes()),
        Some(value.as_bytes()),
        &[
            hdr(TARGET, target.as_bytes()),
            hdr(DELIVER_AT, at.as_bytes()),
        ],
        None,
    )
    .await;
    Sent {
        value: value.to_string(),
        partition,
        due,
        delay_ms,
        write_ms: started.elapsed().as_millis() as i64,
    }
}

/// A reader of the env's target, proven to be reading: a record written
/// straight to the target (by `p`, which it also warms up) has arrived.
fn reading_collector(env: &Env) -> Collector {
    Collector::start(&env.targets[0])
}

async fn prove_reading(col: &mut Collector, p: &FutureProducer, env: &Env) {
    let h = [hdr("warm-up", b"1")];
    produce(p, &env.targets[0], None, None, Some(b"warm-up"), &h, None).await;
    let seen = tokio::task::block_in_place(|| col.wait_for(1, Duration::from_secs(20)).len());
    assert_eq!(seen, 1, "the reader of the target saw the warm-up record");
}

/// Waits for the records and returns each one's lateness (arrival minus due), in `sent`'s order.
fn lateness(col: &mut Collector, sent: &[Sent]) -> Vec<i64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    for s in sent {
        let arrived = loop {
            if let Some(r) = col.seen.iter().find(|r| r.value_str() == s.value) {
                break r.arrived_ms;
            }
            assert!(
                Instant::now() < deadline,
                "{} (partition {}) never arrived",
                s.value,
                s.partition
            );
            let n = col.seen.len();
            col.wait_for(n + 1, Duration::from_millis(100));
        };
        assert!(arrived >= s.due, "{} arrived early", s.value);
        if std::env::var("RUST_LOG").is_ok() {
            eprintln!(
                "{}: partition {}, sent at {}, due at {}, arrived at {}",
                s.value,
                s.partition,
                s.due - s.delay_ms,
                s.due,
                arrived
            );
        }
        out.push(arrived - s.due);
    }
    out
}

/// Sends one 150 ms record to `partition` and returns its lateness.
async fn measure_one(
    col: &mut Collector,
    p: &FutureProducer,
    env: &Env,
    partition: i32,
    value: &str,
) -> (i64, i64) {
    let s = send_delay(p, env, partition, value).await;
    let late = tokio::task::block_in_place(|| lateness(col, std::slice::from_ref(&s)))[0];
    (late, s.write_ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_record_after_a_fresh_assignment_is_on_time() {
    let _one = SERIAL.lock().await;
    setup();
    let mut firsts = Vec::new();
    for run in 0..runs() {
        let env = Env::new("first", &[1_000, 5_000], 2, 1).await;
        let p = producer();
        let mut col = reading_collector(&env);
        prove_reading(&mut col, &p, &env).await;
        let router = env.start_router().await;
        wait_assigned(&router, 4.0).await;
        // Right after the router owns them: nothing read from these partitions
        // yet. Partition 0 gets the 150 ms record; partition 1, at the same
        // time, a record due at once, whose lateness is how long after the
        // assignment the router first reads a partition (not asserted: a
        // record due sooner than that after an assignment waits for it).
        let at_once = send_due(&p, &env, 1, "at-once", 0).await;
        let (first, write) = measure_one(&mut col, &p, &env, 0, "first").await;
        let (later, _) = measure_one(&mut col, &p, &env, 0, "later").await;
        let at_once_late = tokio::task::block_in_place(|| lateness(&mut col, &[at_once]))[0];
        println!(
            "first record after assignment, run {run}: first {first} ms late (tier write {write} ms), later record {later} ms late; a record due at once, written beside it, {at_once_late} ms late"
        );
        firsts.push(first);
        router.shutdown().await.unwrap();
    }
    firsts.sort_unstable();
    println!(
        "first record after assignment: {} runs, lateness min {} ms, median {} ms, max {} ms",
        firsts.len(),
        firsts[0],
        firsts[firsts.len() / 2],
        firsts[firsts.len() - 1]
    );
    let median = firsts[firsts.len() / 2];
    assert!(
        median < MAX_LATE_MS,
        "first record {median} ms late (median of {firsts:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_record_on_partitions_moved_to_a_second_router_is_on_time() {
    let _one = SERIAL.lock().await;
    setup();
    let partitions = 4;
    let env = Env::new("moved", &[1_000, 5_000], partitions, 1).await;
    let p = producer();
    let mut col = reading_collector(&env);
    prove_reading(&mut col, &p, &env).await;
    let a = env.start_router().await;
    wait_assigned(&a, 8.0).await;
    let b = env.start_router().await;
    let (na, nb) = wait_split(&a, &b, 8.0).await;
    println!("moved: {na} + {nb} partitions");
    // Right after the rebalance, one 150 ms record into every partition of the
    // smallest tier: some are on the second router, never read there.
    let mut sent = Vec::new();
    for partition in 0..partitions {
        sent.push(send_delay(&p, &env, partition, &format!("moved-p{partition}")).await);
    }
    let late = tokio::task::block_in_place(|| lateness(&mut col, &sent));
    // The counters move when the acknowledgement reaches the router, which can trail the reader.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = |r: &Router| {
        metric(
            r,
            "kafka_delay_router_records_delivered_total",
            &[("tier", env.tier(0))],
        )
    };
    println!(
        "first record after a rebalance to a second router: lateness by partition {late:?} ms (tier writes {:?} ms); delivered by the first router {}, by the second {}",
        sent.iter().map(|s| s.write_ms).collect::<Vec<_>>(),
        delivered(&a),
        delivered(&b),
    );
    let mut later = Vec::new();
    for partition in 0..partitions {
        later.push(
            measure_one(
                &mut col,
                &p,
                &env,
                partition,
                &format!("later-p{partition}"),
            )
            .await
            .0,
        );
    }
    println!("later records by partition: {later:?} ms late");
    // The upper median: fails if the half moved to the second router (under
    // the classic protocol's range assignor, 2 of the 4) is late.
    let mut sorted = late.clone();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2];
    assert!(
        median < MAX_LATE_MS,
        "first records after the move {late:?} ms late"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_record_after_a_restart_with_committed_offsets_is_on_time() {
    let _one = SERIAL.lock().await;
    setup();
    let env = Env::new("restart", &[1_000, 5_000], 2, 1).await;
    let p = producer();
    let mut col = reading_collector(&env);
    prove_reading(&mut col, &p, &env).await;
    let router = env.start_router().await;
    wait_assigned(&router, 4.0).await;
    let (before, _) = measure_one(&mut col, &p, &env, 0, "before-restart").await;
    measure_one(&mut col, &p, &env, 1, "before-restart-p1").await;
    router.shutdown().await.unwrap();
    let committed = tokio::task::block_in_place(|| committed(&env.group, env.tier(0), 2));
    assert_eq!(
        (committed[&0], committed[&1]),
        (1, 1),
        "the stop committed the records routed"
    );
    let router = env.start_router().await;
    wait_assigned(&router, 4.0).await;
    // As after a fresh assignment: partition 1 gets a record due at once beside the 150 ms one.
    let at_once = send_due(&p, &env, 1, "at-once-after-restart", 0).await;
    let (first, write) = measure_one(&mut col, &p, &env, 0, "first-after-restart").await;
    let (later, _) = measure_one(&mut col, &p, &env, 0, "later-after-restart").await;
    let at_once_late = tokio::task::block_in_place(|| lateness(&mut col, &[at_once]))[0];
    println!(
        "first record after a restart with committed offsets: {first} ms late (tier write {write} ms), later record {later} ms late; a record due at once, written beside it, {at_once_late} ms late; before the restart, the first record {before} ms late"
    );
    assert!(
        first < MAX_LATE_MS,
        "first record after the restart {first} ms late"
    );
    router.shutdown().await.unwrap();
}
