//! The fault suite: what happens to records when the router crashes, the
//! broker restarts, the group churns and a target topic is missing for a while.
//! Each scenario prints one row: sent, delivered, duplicated, lost, early and
//! max lateness; each must lose nothing and deliver nothing early.
//!
//! Crashes and group churn run twice: with static membership (each router has
//! a `group.instance.id`, so a restarted one takes its partitions back at once)
//! and with dynamic membership (a killed router's partitions wait for the
//! broker to expire it, the 10 s session timeout).
//!
//! `cargo test --test faults` runs a short version (CI: 5 crashes each way, a
//! missing target, broker restarts and 15 s of group churn each way);
//! `scripts/faults.sh` runs the full one (FAULTS_FULL=1: 20 crashes each way
//! over 50k records with delays of 1 to 40 s, two broker restarts, and a minute
//! of group churn each way). The broker is the one under test
//! (`KAFKA_BOOTSTRAP_SERVERS`, Apache Kafka from scripts/broker.sh); the
//! restart scenario starts a single-node Apache Kafka of its own and restarts it.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Child;
use std::time::{Duration, Instant};

use common::*;
use kafka_delay_router::headers;
use kafka_delay_router::kafka::now_ms;
use kafka_delay_router::membership::GroupProtocol;
use kafka_delay_router::router::Router;

fn full() -> bool {
    std::env::var("FAULTS_FULL").is_ok_and(|v| v == "1")
}

/// One scenario's row of the table.
struct Row {
    scenario: String,
    t: Tally,
}

/// Static membership (`group.instance.id`) or dynamic.
#[derive(Clone, Copy, PartialEq)]
enum Membership {
    Static,
    Dynamic,
}

impl Membership {
    fn name(self) -> &'static str {
        match self {
            Membership::Static => "static membership",
            Membership::Dynamic => "dynamic membership",
        }
    }

    /// The router's flags for instance `id` of a scenario.
    fn flags(self, id: &str) -> Vec<String> {
        match self {
            Membership::Static => vec!["-X".into(), format!("group.instance.id={id}")],
            Membership::Dynamic => Vec::new(),
        }
    }
}

/// ", consumer protocol" when the routers run under KIP-848; nothing for the
/// classic protocol (the rows keep their names).
fn protocol_label() -> &'static str {
    match group_protocol() {
        GroupProtocol::Classic => "",
        GroupProtocol::Consumer => ", consumer protocol",
    }
}

/// Plays the routers' supervisor (systemd's `Restart=on-failure`): a router
/// that exited on its own (under the consumer protocol, one started again
/// with a static id before the broker expired its predecessor stops, saying
/// so) is started again. Returns how many were.
fn supervise(routers: &mut [Option<Child>], spawn: impl Fn(usize) -> Child) -> usize {
    let mut restarted = 0;
    for (i, slot) in routers.iter_mut().enumerate() {
        let exited = match slot {
            Some(r) => r.try_wait().unwrap().is_some(),
            None => false,
        };
        if exited {
            *slot = Some(spawn(i));
            restarted += 1;
        }
    }
    restarted
}

fn spawn_member(env: &Env, flags: &[String]) -> Child {
    spawn_router_with(env, &flags.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A scenario's row, once its routers stopped; prints when the duplicates
/// arrived and whether the group committed every tier record.
fn row(env: &Env, scenario: &str, due: &HashMap<String, i64>, got: &[Received]) -> Row {
    let t = tally(due, got);
    let mut first: HashMap<String, i64> = HashMap::new();
    let mut gaps = Vec::new();
    for r in got {
        match first.get(&r.value_str()) {
            Some(at) => gaps.push(r.arrived_ms - at),
            None => {
                first.insert(r.value_str(), r.arrived_ms);
            }
        }
    }
    gaps.sort_unstable();
    if !gaps.is_empty() {
        println!(
            "detail: {scenario}: {} duplicates arrived {} ms (median) / {} ms (max) after the first copy",
            gaps.len(),
            gaps[gaps.len() / 2],
            gaps[gaps.len() - 1]
        );
    }
    let mut trailing = Vec::new();
    for tier in &env.config.tiers {
        let partitions = tier.spec.partitions;
        let committed = committed(&env.group, tier.topic(), partitions);
        for (p, high) in high_watermarks(tier.topic(), partitions) {
            let c = committed[&p].max(0);
            if c != high {
                trailing.push(format!("{}/{p}: committed {c}, high {high}", tier.topic()));
            }
        }
    }
    if !trailing.is_empty() {
        println!("detail: {scenario}: the group's committed offsets trail the tiers: {trailing:?}");
    }
    Row {
        scenario: scenario.to_string(),
        t,
    }
}

async fn router_crashes(rows: &mut Vec<Row>, membership: Membership) {
    let (kills, n, min_ms, span_ms) = if full() {
        (20, 50_000, 1_000, 39_000)
    } else {
        (5, 2_000, 300, 5_000)
    };
    let env = Env::new("crash", &[200, 1000, 5000, 10000], 3, 1).await;
    let mut col = Collector::start(&env.targets[0]);
    let flags = membership.flags("crash-router");
    let mut router = spawn_member(&env, &flags);
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
            router = spawn_member(env_ref, &flags);
        }
        router
    };
    let (due, mut router) = tokio::join!(production, crashes);
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (got, restarts) = tokio::task::block_in_place(|| {
        collect_supervised(
            &mut col,
            &env,
            &flag_refs,
            &mut router,
            n,
            Duration::from_millis(min_ms + span_ms) + Duration::from_secs(60),
        )
    });
    if restarts > 0 {
        println!(
            "detail: crash, {}{}: {restarts} restarts by the supervisor after the last kill",
            membership.name(),
            protocol_label()
        );
    }
    sigterm(&router);
    wait_exit(&mut router, Duration::from_secs(30));
    let row = row(
        &env,
        &format!(
            "router kill -9 x{kills}, {}{}",
            membership.name(),
            protocol_label()
        ),
        &due,
        &got,
    );
    if row.t.lost > 0 {
        diagnose(&env, &due, &got);
    }
    rows.push(row);
}

async fn broker_restarts(rows: &mut Vec<Row>) {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    let previous = std::env::var("KAFKA_BOOTSTRAP_SERVERS").ok();
    // This scenario's helpers talk to a broker of its own, which it restarts
    // (one scenario runs at a time).
    std::env::set_var("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap());
    // The router's producers stay idempotent, as in production: the broker
    // keeps idempotent producer state over a restart (tests/conformance.rs checks it).
    // KDR_TEST_RDKAFKA_DEBUG=broker,protocol adds librdkafka's debug contexts
    // (seen with KDR_TEST_LOG=info,librdkafka=debug).
    if let Ok(d) = std::env::var("KDR_TEST_RDKAFKA_DEBUG") {
        set_extra_settings(&[&format!("debug={d}")]);
    }
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
    let row = row(&env, "broker restart x2", &due, &got);
    if row.t.lost > 0 {
        println!(
            "diagnosis: the router owned {assigned} of 9 partitions at the end; {rebalances:?}"
        );
        diagnose(&env, &due, &got);
    }
    rows.push(row);
    set_extra_settings(&[]);
    match previous {
        Some(v) => std::env::set_var("KAFKA_BOOTSTRAP_SERVERS", v),
        None => std::env::remove_var("KAFKA_BOOTSTRAP_SERVERS"),
    }
}

async fn group_churn(rows: &mut Vec<Row>, membership: Membership) {
    let (secs, n) = if full() { (60, 20_000) } else { (15, 2_000) };
    let env = Env::new("churn", &[200, 1000, 5000], 6, 1).await;
    let mut col = Collector::start(&env.targets[0]);
    let flags: Vec<Vec<String>> = (0..3)
        .map(|i| membership.flags(&format!("churn-{i}")))
        .collect();
    let spawn = |i: usize| spawn_member(&env, &flags[i]);
    let mut routers: Vec<Option<Child>> = (0..3).map(|i| Some(spawn(i))).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let env_ref = &env;
    let production = produce_over(env_ref, n, Duration::from_secs(secs), 300, 6_000, "churn");
    let churn = async {
        let mut rng = Rng(0xc4u64 << 20);
        let end = Instant::now() + Duration::from_secs(secs);
        let mut restarted = 0;
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_secs(3)).await;
            restarted += supervise(&mut routers, spawn);
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
        restarted
    };
    let (due, mut restarted) = tokio::join!(production, churn);
    let deadline = Instant::now() + Duration::from_secs(90);
    let got = tokio::task::block_in_place(|| loop {
        col.settle(Duration::from_millis(500));
        let distinct: HashSet<String> = col.seen.iter().map(|r| r.value_str()).collect();
        if distinct.len() >= n || Instant::now() >= deadline {
            break col.seen.clone();
        }
        restarted += supervise(&mut routers, spawn);
    });
    if restarted > 0 {
        println!(
            "detail: churn, {}{}: {restarted} restarts by the supervisor",
            membership.name(),
            protocol_label()
        );
    }
    for mut r in routers.into_iter().flatten() {
        sigterm(&r);
        wait_exit(&mut r, Duration::from_secs(30));
    }
    let row = row(
        &env,
        &format!(
            "group churn, 3 routers, {secs} s, {}{}",
            membership.name(),
            protocol_label()
        ),
        &due,
        &got,
    );
    if row.t.lost > 0 {
        diagnose(&env, &due, &got);
    }
    rows.push(row);
}

/// A router killed and not restarted: how long until the other instance
/// delivers the records due in its partitions (the group's session timeout:
/// the router's `session.timeout.ms` under the classic protocol, the broker's
/// `group.consumer.session.timeout.ms` under the consumer protocol), and how
/// many records the crash duplicated (what was finished since the last
/// offset commit, at most one `auto.commit.interval.ms` of traffic).
async fn takeover(rows: &mut Vec<Row>) {
    let env = Env::new("takeover", &[1000, 5000], 6, 1).await;
    let mut col = Collector::start(&env.targets[0]);
    let mut doomed = spawn_member(&env, &[]);
    let mut survivor = spawn_member(&env, &[]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let dp = kafka_delay_router::DelayProducer::new(&kafka(), env.config.clone()).unwrap();
    // A steady 50 records/s for 30 s, each due 1 to 2 s after it was sent;
    // the kill comes 8 s in.
    let (rate, secs) = (50u64, 30u64);
    let mut due = HashMap::new();
    let mut rng = Rng(0x7a4e);
    let mut tick = tokio::time::interval(Duration::from_millis(1_000 / rate));
    let mut next = |i: u64| {
        let delay = Duration::from_millis(1_000 + rng.below(1_000));
        (format!("takeover-{i}"), delay)
    };
    for i in 0..rate * 8 {
        tick.tick().await;
        let (value, delay) = next(i);
        due.insert(
            value.clone(),
            send_after(&dp, &env.targets[0], &value, delay).await,
        );
    }
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let killed_at = now_ms();
    for i in rate * 8..rate * secs {
        tick.tick().await;
        let (value, delay) = next(i);
        due.insert(
            value.clone(),
            send_after(&dp, &env.targets[0], &value, delay).await,
        );
    }
    let got =
        tokio::task::block_in_place(|| col.collect_distinct(due.len(), Duration::from_secs(60)));
    sigterm(&survivor);
    wait_exit(&mut survivor, Duration::from_secs(30));
    // Records due after the kill: the worst lateness is the takeover time; the
    // last arrival more than a second late says when the takeover was complete.
    let mut first: HashMap<String, i64> = HashMap::new();
    for r in &got {
        first.entry(r.value_str()).or_insert(r.arrived_ms);
    }
    let late_after_kill: Vec<(i64, i64)> = first
        .iter()
        .filter(|(v, _)| due[*v] >= killed_at)
        .map(|(v, at)| (at - due[v], *at))
        .collect();
    let worst = late_after_kill.iter().map(|(l, _)| *l).max().unwrap_or(0);
    let complete = late_after_kill
        .iter()
        .filter(|(l, _)| *l > 1_000)
        .map(|(_, at)| at - killed_at)
        .max()
        .unwrap_or(0);
    let row = row(
        &env,
        &format!(
            "router kill -9, not restarted, {} group protocol, 2 routers",
            group_protocol()
        ),
        &due,
        &got,
    );
    // What the crashed instance finished since its last commit is routed
    // again: one commit interval (1 s) of its traffic, plus the records
    // delivered behind one held for a sub-tier remainder (up to 1 s here).
    let bound = rate as usize * 2;
    println!(
        "detail: takeover ({} group protocol): records due after the kill at most {worst} ms \
         late; the last one more than 1 s late arrived {complete} ms after the kill; \
         {} duplicates from the crash (at {rate} records/s over both routers; bound: \
         {bound}, two seconds of all traffic)",
        group_protocol(),
        row.t.duplicated,
    );
    // A loaded machine may commit a little later: one more second of room.
    assert!(
        row.t.duplicated <= bound + rate as usize,
        "a crash duplicated {} records, more than its commit interval and hold of traffic",
        row.t.duplicated
    );
    rows.push(row);
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
    rows.push(row(&env, "target missing 5 s, then created", &due, &got));
}

/// For a row with lost records: where the undelivered records are (still in a
/// tier, at which partition and offset, or gone), and each tier's committed
/// offsets against its high watermarks.
fn diagnose(env: &Env, due: &HashMap<String, i64>, got: &[Received]) {
    let delivered: HashSet<String> = got.iter().map(|r| r.value_str()).collect();
    let missing: HashSet<&String> = due.keys().filter(|v| !delivered.contains(*v)).collect();
    let mut found = 0;
    for t in 0..env.config.tiers.len() {
        let partitions = env.config.tiers[t].spec.partitions;
        let highs = high_watermarks(env.tier(t), partitions);
        let total: i64 = highs.values().sum();
        let mut tier = Collector::start(env.tier(t));
        let seen = tier.wait_for(total as usize, Duration::from_secs(30));
        let in_tier: Vec<&Received> = seen
            .iter()
            .filter(|r| missing.contains(&r.value_str()))
            .collect();
        found += in_tier.len();
        println!(
            "diagnosis: {} of {} undelivered are in {} (read {} of {total} records); committed {:?}; high watermarks {:?}",
            in_tier.len(),
            missing.len(),
            env.tier(t),
            seen.len(),
            committed(&env.group, env.tier(t), partitions),
            highs
        );
        for r in in_tier.iter().take(10) {
            println!(
                "diagnosis:   {} at {}/{}@{} due {} (timestamp {})",
                r.value_str(),
                env.tier(t),
                r.partition,
                r.offset,
                due[&r.value_str()],
                r.timestamp
            );
        }
    }
    // Written to the target after all, and missed by the collector?
    if let Some(target) = env.targets.first() {
        let mut again = Collector::start(target);
        let mut read = 0;
        while again.settle(Duration::from_secs(2)).len() > read {
            read = again.seen.len();
        }
        for r in again
            .seen
            .iter()
            .filter(|r| missing.contains(&r.value_str()))
        {
            println!(
                "diagnosis:   {} IS in the target at {target}/{}@{} (timestamp {}): the collector missed it",
                r.value_str(),
                r.partition,
                r.offset,
                r.timestamp
            );
        }
    }
    let mut dlq = Collector::start(env.dlq());
    for r in dlq.settle(Duration::from_secs(3)) {
        if missing.contains(&r.value_str()) {
            println!(
                "diagnosis:   {} was dead-lettered from {:?}/{:?}@{:?}: {:?} ({:?})",
                r.value_str(),
                r.header(headers::DLQ_SOURCE_TOPIC),
                r.header(headers::DLQ_SOURCE_PARTITION),
                r.header(headers::DLQ_SOURCE_OFFSET),
                r.header(headers::DLQ_REASON),
                r.header(headers::DLQ_DETAIL)
            );
        }
    }
    let mut gone: Vec<&&String> = missing.iter().collect();
    gone.sort();
    println!(
        "diagnosis: {} undelivered records in no tier (a record forwarded more than once shows once per tier); some: {:?}",
        missing.len().saturating_sub(found),
        gone.iter().take(10).collect::<Vec<_>>()
    );
    // The routers' log (binary routers only) outlives the test's folder.
    let log = env.config_path.with_file_name("router.log");
    if log.exists() {
        let kept = std::env::temp_dir().join(format!("{}-router.log", env.prefix));
        if std::fs::copy(&log, &kept).is_ok() {
            println!("diagnosis: the routers' log is kept in {}", kept.display());
        }
    }
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
    // FAULTS_ONLY=crash,churn-dynamic,... runs those scenarios only, for
    // investigating one: crash, crash-dynamic, target, restart, churn,
    // churn-dynamic, takeover. KDR_GROUP_PROTOCOL=consumer runs them under KIP-848.
    let only = std::env::var("FAULTS_ONLY").unwrap_or_default();
    let runs = |name: &str| only.is_empty() || only.split(',').any(|o| o == name);
    if runs("crash") {
        router_crashes(&mut rows, Membership::Static).await;
    }
    if runs("crash-dynamic") {
        router_crashes(&mut rows, Membership::Dynamic).await;
    }
    if runs("target") {
        target_trouble(&mut rows).await;
    }
    if runs("restart") {
        broker_restarts(&mut rows).await;
    }
    if runs("churn") {
        group_churn(&mut rows, Membership::Static).await;
    }
    if runs("churn-dynamic") {
        group_churn(&mut rows, Membership::Dynamic).await;
    }
    if runs("takeover") {
        takeover(&mut rows).await;
    }
    print_rows(&rows);
    assert!(!rows.is_empty(), "FAULTS_ONLY={only} names no scenario");
    for r in &rows {
        assert_eq!(r.t.lost, 0, "{}: records lost", r.scenario);
        assert_eq!(r.t.early, 0, "{}: records early", r.scenario);
    }
}
