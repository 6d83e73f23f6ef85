//! The fault suite: what happens to records when the router crashes, the
//! broker restarts, the group churns and a target topic is missing for a while.
//! Each scenario prints one row: sent, delivered, duplicated, lost, early and
//! max lateness; each must lose nothing and deliver nothing early.
//!
//! `cargo test --test faults` runs a short version (CI: crashes, a missing
//! target and broker restarts); `scripts/faults.sh` runs the full one (FAULTS_FULL=1: 20 crashes
//! over 50k records with delays of 1 to 40 s, two broker restarts, and a minute
//! of group churn).

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Child;
use std::time::{Duration, Instant};

use common::*;
use kafka_delay_router::router::Router;

fn full() -> bool {
    std::env::var("FAULTS_FULL").is_ok_and(|v| v == "1")
}

/// One scenario's row of the table.
struct Row {
    scenario: String,
    t: Tally,
}

fn row(scenario: &str, due: &HashMap<String, i64>, got: &[Received]) -> Row {
    Row {
        scenario: scenario.to_string(),
        t: tally(due, got),
    }
}

/// Produces `n` records over `over`, in chunks, with deadlines `min_ms..min_ms+span_ms` ahead.
async fn produce_over(
    env: &Env,
    n: usize,
    over: Duration,
    min_ms: u64,
    span_ms: u64,
    tag: &str,
) -> HashMap<String, i64> {
    let chunks = 10.max(n / 500);
    let mut due = HashMap::new();
    for c in 0..chunks {
        let size = n / chunks + usize::from(c < n % chunks);
        due.extend(produce_spread(env, size, &format!("{tag}{c}"), min_ms, span_ms).await);
        tokio::time::sleep(over / chunks as u32).await;
    }
    due
}

async fn router_crashes(rows: &mut Vec<Row>) {
    let (kills, n, min_ms, span_ms) = if full() {
        (20, 50_000, 1_000, 39_000)
    } else {
        (5, 2_000, 300, 5_000)
    };
    let env = Env::new("crash", &[200, 1000, 5000, 10000], 3, 1).await;
    let mut col = Collector::start(&env.targets[0]);
    let id = ["-X", "group.instance.id=crash-router"];
    let mut router = spawn_router_with(&env, &id);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let env_ref = &env;
    let production = produce_over(
        env_ref,
        n,
        Duration::from_secs(kills as u64 * 2),
        min_ms,
        span_ms,
        "crash",
    );
    let crashes = async {
        let mut rng = Rng(0x5eed);
        for _ in 0..kills {
            tokio::time::sleep(Duration::from_millis(500 + rng.below(2_500))).await;
            router.kill().unwrap();
            router.wait().unwrap();
            router = spawn_router_with(env_ref, &id);
        }
        router
    };
    let (due, mut router) = tokio::join!(production, crashes);
    let got = col.collect_distinct(
        n,
        Duration::from_millis(min_ms + span_ms) + Duration::from_secs(60),
    );
    sigterm(&router);
    wait_exit(&mut router, Duration::from_secs(30));
    rows.push(row(&format!("router kill -9 x{kills}"), &due, &got));
}

async fn broker_restarts(rows: &mut Vec<Row>) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = Tansu::start(dir.path(), port, port, "sqlite://tansu.db");
    let previous = std::env::var("KAFKA_BOOTSTRAP_SERVERS").ok();
    // This scenario's helpers talk to the persistent broker (one scenario runs at a time).
    std::env::set_var("KAFKA_BOOTSTRAP_SERVERS", format!("127.0.0.1:{port}"));
    // Tansu 0.6 loses idempotent producer state over a restart and then fences
    // the producer (ProducerFenced); without idempotence, acks=all and retries
    // keep at-least-once, and any duplicates are counted below.
    // KDR_TEST_RDKAFKA_DEBUG=broker,protocol adds librdkafka's debug contexts
    // (seen with KDR_TEST_LOG=info,librdkafka=debug).
    let debug = std::env::var("KDR_TEST_RDKAFKA_DEBUG")
        .map(|d| format!("debug={d}"))
        .unwrap_or_default();
    let mut extra = vec!["enable.idempotence=false"];
    if !debug.is_empty() {
        extra.push(&debug);
    }
    set_extra_settings(&extra);
    let n = if full() { 10_000 } else { 1_500 };
    let env = Env::new("restart", &[200, 1000, 5000], 3, 1).await;
    let mut col = Collector::start(&env.targets[0]);
    let router = env.start_router().await;
    wait_assigned(&router, 9.0).await;
    let env_ref = &env;
    let production = produce_over(env_ref, n, Duration::from_secs(8), 300, 6_000, "restart");
    let restarts = async {
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            tokio::task::block_in_place(|| broker.restart(Duration::from_secs(2)));
        }
    };
    let (due, ()) = tokio::join!(production, restarts);
    let got = col.collect_distinct(n, Duration::from_secs(90));
    let assigned = metric(&router, "kafka_delay_router_partitions_assigned", &[]);
    // What the router itself says at the end, for the diagnosis below.
    let rebalances = router
        .metrics
        .render()
        .lines()
        .filter(|l| {
            [
                "kafka_delay_router_rebalances_total",
                "kafka_delay_router_partitions_paused",
                "kafka_delay_router_records_held",
                "kafka_delay_router_producer_errors_total",
                "kafka_delay_router_consumer_errors_total",
                "kafka_delay_router_records_read_total",
            ]
            .iter()
            .any(|m| l.starts_with(m))
        })
        .map(String::from)
        .collect::<Vec<_>>();
    router.shutdown().await.unwrap();
    let row = row("broker restart x2 (sqlite)", &due, &got);
    if row.t.lost > 0 {
        println!(
            "diagnosis: the router owned {assigned} of 9 partitions at the end; {rebalances:?}"
        );
    }
    if row.t.lost > 0 {
        // Where are the undelivered records: still in a tier (stuck), or gone?
        let delivered: HashSet<String> = got.iter().map(|r| r.value_str()).collect();
        let missing: HashSet<&String> = due.keys().filter(|v| !delivered.contains(*v)).collect();
        for t in 0..env.config.tiers.len() {
            let mut tier = Collector::start(env.tier(t));
            let in_tier = tier
                .settle(Duration::from_secs(3))
                .iter()
                .filter(|r| missing.contains(&r.value_str()))
                .count();
            println!(
                "diagnosis: {} of {} undelivered are in {}; committed {:?}; high watermarks {:?}",
                in_tier,
                missing.len(),
                env.tier(t),
                committed(&env.group, env.tier(t), 3),
                high_watermarks(env.tier(t), 3)
            );
        }
    }
    rows.push(row);
    set_extra_settings(&[]);
    match previous {
        Some(v) => std::env::set_var("KAFKA_BOOTSTRAP_SERVERS", v),
        None => std::env::remove_var("KAFKA_BOOTSTRAP_SERVERS"),
    }
}

async fn group_churn(rows: &mut Vec<Row>) {
    let (secs, n) = if full() { (60, 20_000) } else { (15, 2_000) };
    let env = Env::new("churn", &[200, 1000, 5000], 6, 1).await;
    let mut col = Collector::start(&env.targets[0]);
    let ids: Vec<String> = (0..3)
        .map(|i| format!("group.instance.id=churn-{i}"))
        .collect();
    let spawn = |i: usize| spawn_router_with(&env, &["-X", &ids[i]]);
    let mut routers: Vec<Option<Child>> = (0..3).map(|i| Some(spawn(i))).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let env_ref = &env;
    let production = produce_over(env_ref, n, Duration::from_secs(secs), 300, 6_000, "churn");
    let churn = async {
        let mut rng = Rng(0xc4u64 << 20);
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let i = rng.below(3) as usize;
            let alive = routers.iter().filter(|r| r.is_some()).count();
            match (routers[i].take(), rng.below(3)) {
                (Some(mut r), 0) if alive > 1 => {
                    r.kill().unwrap();
                    r.wait().unwrap();
                }
                (Some(mut r), 1) if alive > 1 => {
                    sigterm(&r);
                    wait_exit(&mut r, Duration::from_secs(30));
                }
                (Some(r), _) => routers[i] = Some(r),
                (None, _) => routers[i] = Some(spawn(i)),
            }
        }
        for (i, slot) in routers.iter_mut().enumerate() {
            if slot.is_none() {
                *slot = Some(spawn(i));
            }
        }
    };
    let (due, ()) = tokio::join!(production, churn);
    let got = col.collect_distinct(n, Duration::from_secs(90));
    for mut r in routers.into_iter().flatten() {
        sigterm(&r);
        wait_exit(&mut r, Duration::from_secs(30));
    }
    rows.push(row(
        &format!("group churn, 3 routers, {secs} s"),
        &due,
        &got,
    ));
}

async fn target_trouble(rows: &mut Vec<Row>) {
    let n = if full() { 2_000 } else { 300 };
    let env = Env::new("trouble", &[200, 1000], 2, 0).await;
    let target = format!("{}-late-target", env.prefix);
    let mut options = env.options();
    options.limits.missing_target_wait = Duration::from_secs(60);
    let router = Router::start(env.config.clone(), options).await.unwrap();
    wait_assigned(&router, 4.0).await;
    let dp = kafka_delay_router::DelayProducer::new(&kafka(), env.config.clone()).unwrap();
    let mut due = HashMap::new();
    for i in 0..n {
        let v = format!("trouble-{i}");
        let delay = Duration::from_millis(300 + (i as u64 * 37) % 2_000);
        due.insert(v.clone(), send_after(&dp, &target, &v, delay).await);
    }
    // The target appears 5 s later: records wait with backoff, then arrive.
    tokio::time::sleep(Duration::from_secs(5)).await;
    kafka_delay_router::admin::create_target_topics(&kafka(), std::slice::from_ref(&target), false)
        .await
        .unwrap();
    let mut col = Collector::start(&target);
    let got = col.collect_distinct(n, Duration::from_secs(60));
    let dead = metric(
        &router,
        "kafka_delay_router_records_dead_lettered_total",
        &[],
    );
    router.shutdown().await.unwrap();
    assert_eq!(
        dead, 0.0,
        "nothing dead-lettered while the target was on its way"
    );
    rows.push(row("target missing 5 s, then created", &due, &got));
}

fn print_rows(rows: &[Row]) {
    println!("\n| scenario | sent | delivered | duplicated | lost | early | max lateness (ms) |\n|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.t.sent,
            r.t.delivered,
            r.t.duplicated,
            r.t.lost,
            r.t.early,
            r.t.max_late_ms
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_suite() {
    // KDR_TEST_LOG=info (an EnvFilter) shows the in-process routers' logs.
    if let Ok(filter) = std::env::var("KDR_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .try_init();
    }
    let mut rows = Vec::new();
    if let Ok(only) = std::env::var("FAULTS_ONLY") {
        // One scenario, for investigating it: FAULTS_ONLY=restart|churn|crash|target.
        match only.as_str() {
            "restart" => broker_restarts(&mut rows).await,
            "churn" => group_churn(&mut rows).await,
            "crash" => router_crashes(&mut rows).await,
            _ => target_trouble(&mut rows).await,
        }
        print_rows(&rows);
        return;
    }
    router_crashes(&mut rows).await;
    target_trouble(&mut rows).await;
    broker_restarts(&mut rows).await;
    // Not in CI, for a reason of the broker (see README, "Failure modes,
    // measured"): group churn leaves partitions stuck in Tansu 0.6's group
    // coordinator. scripts/faults.sh runs it.
    if full() {
        group_churn(&mut rows).await;
    }
    print_rows(&rows);
    for r in &rows {
        assert_eq!(r.t.lost, 0, "{}: records lost", r.scenario);
        assert_eq!(r.t.early, 0, "{}: records early", r.scenario);
    }
}
