//! Broker failover: the router keeps its promise while the brokers of a
//! three-node Apache Kafka cluster are killed one at a time.
//!
//! The test starts its own cluster (scripts/broker.sh, three KRaft nodes, each
//! a broker and a controller), creates the tiers, the dead-letter, cancel and
//! target topics with replication factor 3 and `min.insync.replicas=2`, and
//! starts the router binary once. A steady 500 records/s flows for the whole
//! run (delays from 100 ms over every tier; some records carry a `delay-id`,
//! and half of those are cancelled before they are due), read by a collector
//! started before the first record. Then, one after another, it SIGKILLs the
//! broker that leads most tier partitions, the group's coordinator and the
//! active controller (a node that is more than one of these is named so),
//! restarts each after a while, and waits until every partition is fully
//! replicated again. The router is never restarted.
//!
//! It proves: nothing lost, nothing early, no record delivered whose
//! cancellation the broker acknowledged before it was due. It measures, per
//! failover, the lateness (p99, max) of the records due while the node was
//! down, whether `/readyz` (polled every 100 ms) went not-ready and when it was
//! ready again, and when deliveries were on time again; it scrapes `/metrics`
//! every second and prints which metrics moved, then feeds the scraped series
//! to `promtool test rules` with deploy/prometheus/alerts.yml and prints which
//! alerts' expressions turned true (pending) or fired.
//!
//! A failover's row counts the records that must arrive (acknowledged, and no
//! cancellation acknowledged before their due time) due from the kill until
//! the restarted node answered again; "no failover" is the records due in the second
//! half of the warm-up before the first kill, the machine's lateness without a
//! fault; the last row is the
//! whole run. Lateness is a record's first arrival at the test's reader minus
//! its due time. The group coordinator is found with `kafka-consumer-groups`
//! (and from the metadata: the leader of the group's `__consumer_offsets`
//! partition), the active controller with `kafka-metadata-quorum` (and from
//! the nodes' `quorum-state` files).
//!
//! `FAILOVER_ROUTER_FLAGS` adds flags to the router's command line.
//!
//! `cargo test --test failover -- --nocapture` runs the CI size (three tiers,
//! each node down 10 s); `FAULTS_FULL=1` (scripts/faults.sh) the full one
//! (four tiers, delays up to 40 s, each node down 30 s, longer load).

#[path = "../common/mod.rs"]
mod common;

mod alerts;
mod cluster;
mod judge;
mod load;
mod observe;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alerts::*;
use cluster::*;
use common::*;
use judge::*;
use kafka_delay_router::kafka::now_ms;
use kafka_delay_router::{DelayProducer, When};
use load::*;
use observe::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_failover_loses_nothing() {
    let started = Instant::now();
    let size = Size::get();
    let dir = tempfile::tempdir().unwrap();
    let broker = tokio::task::block_in_place(|| {
        Broker::start_cluster(dir.path(), 3, &BrokerSetup::default())
    });
    // Every helper of this test binary talks to this cluster.
    std::env::set_var("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_all());
    println!(
        "cluster: Apache Kafka, 3 nodes at {} ({:.0} s to start); {} cores; {}",
        broker.bootstrap_all(),
        started.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if full() { "full size" } else { "CI size" }
    );

    let cancel_topic = unique("failover-cancel");
    let env = Env::declare_with_tier_yaml(
        "failover",
        &size.tiers,
        size.partitions,
        1,
        "replication-factor: 3, configs: {min.insync.replicas: 2}",
        &format!(
            "cancel: {{topic: {cancel_topic}, partitions: 3, replication-factor: 3, configs: {{min.insync.replicas: 2}}}}\n"
        ),
    );
    let target = env.targets[0].clone();
    create_topics(&env, &target).await;
    let tier_topics: Vec<String> = env
        .config
        .tiers
        .iter()
        .map(|t| t.topic().to_string())
        .collect();
    let all_topics: Vec<String> = env
        .config
        .internal_topics()
        .iter()
        .map(|s| s.to_string())
        .chain([target.clone()])
        .collect();

    let mut col = Collector::start(&target);
    // FAILOVER_ROUTER_FLAGS adds flags to the router's command line, e.g.
    // "-X session.timeout.ms=30000 -X max.poll.interval.ms=30000".
    let flags = std::env::var("FAILOVER_ROUTER_FLAGS").unwrap_or_default();
    let flags: Vec<&str> = flags.split_whitespace().collect();
    if !flags.is_empty() {
        println!("router flags: {}", flags.join(" "));
    }
    let router = RouterProcess(spawn_router_with(&env, &flags));
    let log = env.config_path.with_file_name("router.log");
    let addr = tokio::task::block_in_place(|| metrics_addr_from_log(&log));
    let pollers = Pollers::start(addr.clone());
    let want = (size.tiers.len() as i32 * size.partitions) as f64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let assigned = pollers
            .latest()
            .map(|s| family_sum(&s, "kafka_delay_router_partitions_assigned"))
            .unwrap_or(0.0);
        let ready = http_get(&addr, "/readyz").map(|r| r.0).unwrap_or(0) == 200;
        if ready && assigned == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "router not ready with {want} partitions (assigned {assigned})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "router ready on {addr}, {want} tier partitions; topics replicated 3 times, min.insync.replicas=2"
    );

    let dp = DelayProducer::new(&kafka(), env.config.clone()).unwrap();
    // A fresh cluster creates __transaction_state at the first idempotent
    // producer's request, which takes seconds: a probe record goes through
    // the router first, so the load starts on a router that delivers.
    let probe_deadline = Instant::now() + Duration::from_secs(90);
    for n in 0.. {
        let value = format!("probe-{n}");
        let sent = tokio::time::timeout(
            Duration::from_secs(20),
            dp.send(
                &target,
                None,
                Some(value.as_bytes()),
                &[],
                When::After(Duration::from_millis(100)),
            ),
        )
        .await;
        let arrived = tokio::task::block_in_place(|| {
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                if col
                    .settle(Duration::from_millis(100))
                    .iter()
                    .any(|r| r.value_str() == value)
                {
                    return true;
                }
            }
            false
        });
        if matches!(sent, Ok(Ok(_))) && arrived {
            break;
        }
        assert!(
            Instant::now() < probe_deadline,
            "no probe record came through the router"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let book = Arc::new(Mutex::new(Book::default()));
    let load = tokio::spawn(run_load(
        dp.clone(),
        target.clone(),
        size.max_delay_ms,
        stop.clone(),
        book.clone(),
    ));
    let load_started = now_ms();
    tokio::time::sleep(size.warmup).await;

    let mut failovers: Vec<Failover> = Vec::new();
    for role in ["tier leader", "group coordinator", "active controller"] {
        // Who is what, right now.
        let (leaders, coordinator, coordinator_tool, controller, controller_tool) =
            tokio::task::block_in_place(|| who_is_what(&broker, &tier_topics, &env.group, role));
        let top = leaders
            .iter()
            .max_by_key(|(id, n)| (**n, -**id))
            .map(|(id, _)| *id)
            .unwrap();
        let node = match role {
            "tier leader" => top,
            "group coordinator" => coordinator_tool
                .or(coordinator)
                .expect("the group coordinator"),
            _ => controller_tool
                .or(controller)
                .expect("the active controller"),
        } as u16;
        let mut is = Vec::new();
        if top == node as i32 {
            is.push(format!(
                "leads most tier partitions ({} of {})",
                leaders.get(&top).unwrap_or(&0),
                leaders.values().sum::<usize>()
            ));
        }
        if coordinator_tool.or(coordinator) == Some(node as i32) {
            is.push("coordinates the router's group".to_string());
        }
        if controller_tool.or(controller) == Some(node as i32) {
            is.push("is the active controller".to_string());
        }
        println!(
            "failover {}: kill node {node} ({role}); it {}. Tier leaders by node {leaders:?}; \
             coordinator {coordinator:?} by metadata{}; controller {controller:?} by quorum-state{}",
            failovers.len() + 1,
            is.join(", "),
            if role == "group coordinator" {
                format!(", {coordinator_tool:?} by kafka-consumer-groups")
            } else {
                String::new()
            },
            if role == "active controller" {
                format!(", {controller_tool:?} by kafka-metadata-quorum")
            } else {
                String::new()
            }
        );
        let kill_at = now_ms();
        tokio::task::block_in_place(|| broker.kill_node(node));
        tokio::time::sleep(size.down).await;
        let restart_at = now_ms();
        tokio::task::block_in_place(|| broker.restart_node(node));
        let back_at = now_ms();
        let short = tokio::task::block_in_place(|| {
            wait_fully_replicated(&all_topics, Duration::from_secs(60))
        });
        let healthy_at = now_ms();
        println!(
            "failover {}: node {node} killed, restarted after {:.1} s, answering again after {:.1} s, \
             every partition fully replicated after {:.1} s{}",
            failovers.len() + 1,
            (restart_at - kill_at) as f64 / 1e3,
            (back_at - kill_at) as f64 / 1e3,
            (healthy_at - kill_at) as f64 / 1e3,
            if short.is_empty() {
                String::new()
            } else {
                format!(" (NOT fully replicated after 60 s: {short:?})")
            }
        );
        failovers.push(Failover {
            scenario: format!(
                "kill -9 node {node} ({}), down {} s",
                is.join(", "),
                size.down.as_secs()
            ),
            node,
            kill_at,
            back_at,
            healthy_at,
        });
        tokio::time::sleep(size.settle).await;
    }

    // The load stops; everything sent is acknowledged (or failed) and due.
    stop.store(true, Ordering::Relaxed);
    let load_stopped = now_ms();
    let tasks = load.await.unwrap();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(90), t).await;
    }
    let book = std::mem::take(&mut *book.lock().unwrap());
    let last_due = book.recs.values().filter_map(|r| r.due).max().unwrap_or(0);
    // What must arrive: acknowledged records without a cancellation
    // acknowledged before their due time.
    let mut must: HashMap<String, i64> = HashMap::new();
    let mut all_due: HashMap<String, i64> = HashMap::new();
    let mut cancelled_in_time: HashSet<String> = HashSet::new();
    let (mut with_id, mut cancelled_late, mut cancel_failed, mut send_failed) = (0, 0, 0, 0);
    for (v, r) in &book.recs {
        if r.has_id {
            with_id += 1;
        }
        if r.send_failed {
            send_failed += 1;
        }
        if r.cancel_failed {
            cancel_failed += 1;
        }
        let Some(due) = r.due else { continue };
        all_due.insert(v.clone(), due);
        match r.cancel_acked {
            Some(acked) if acked < due => {
                cancelled_in_time.insert(v.clone());
            }
            Some(_) => cancelled_late += 1,
            None if r.cancel_failed => {}
            None => {
                must.insert(v.clone(), due);
            }
        }
    }
    let wait_until = Instant::now()
        + Duration::from_millis((last_due - now_ms()).max(0) as u64)
        + Duration::from_secs(60);
    tokio::task::block_in_place(|| {
        let delivered = |seen: &[Received]| {
            seen.iter()
                .map(|r| r.value_str())
                .filter(|v| must.contains_key(v))
                .collect::<HashSet<_>>()
                .len()
        };
        while Instant::now() < wait_until && delivered(&col.seen) < must.len() {
            col.settle(Duration::from_millis(500));
        }
        // Past the last due time, and a little more, for stragglers and
        // anything cancelled that should not come.
        let quiet = Duration::from_millis((last_due + 3_000 - now_ms()).max(2_000) as u64);
        col.settle(quiet);
    });
    let got = col.seen.clone();
    let obs = pollers.finish();
    let mut router = router;
    sigterm(&router.0);
    let exit = tokio::task::block_in_place(|| wait_exit(&mut router.0, Duration::from_secs(30)));

    // --- the figures ---
    let first_arrival: HashMap<String, &Received> = got.iter().fold(HashMap::new(), |mut m, r| {
        m.entry(r.value_str()).or_insert(r);
        m
    });
    let cancelled_delivered: Vec<&String> = cancelled_in_time
        .iter()
        .filter(|v| first_arrival.contains_key(*v))
        .collect();
    let whole = tally(
        &must,
        &got.iter()
            .filter(|r| must.contains_key(&r.value_str()))
            .cloned()
            .collect::<Vec<_>>(),
    );
    let early_all = tally(&all_due, &got).early;
    println!(
        "\nload: {} records in {:.0} s ({:.0}/s), {} with a delay-id, {} cancelled and acknowledged \
         before due, {} cancellations acknowledged only after due (either outcome allowed), {} \
         sends failed, {} cancellations failed; router exit {exit}",
        book.recs.len(),
        (load_stopped - load_started) as f64 / 1e3,
        book.recs.len() as f64 * 1e3 / (load_stopped - load_started) as f64,
        with_id,
        cancelled_in_time.len(),
        cancelled_late,
        send_failed,
        cancel_failed
    );
    for e in book.errors.iter().take(5) {
        println!("detail: {e}");
    }

    let (fors, alerts) = failover_alerts(&failovers, &obs);

    // The records of a set, as the collector saw them (copies included).
    let only = |set: &HashMap<String, i64>| -> Vec<Received> {
        got.iter()
            .filter(|r| set.contains_key(&r.value_str()))
            .cloned()
            .collect()
    };
    let mut rows = Vec::new();
    // Before the first kill: the lateness of this machine without a failover
    // (after the first half of the warm-up, in which the brokers' JIT warms
    // up, and until 2 s before the kill, after which a record can be late
    // because of it).
    let baseline: HashMap<String, i64> = must
        .iter()
        .filter(|(_, d)| {
            **d >= load_started + size.warmup.as_millis() as i64 / 2
                && **d < failovers[0].kill_at - 2_000
        })
        .map(|(v, d)| (v.clone(), *d))
        .collect();
    let mut base_lates: Vec<i64> = baseline
        .iter()
        .filter_map(|(v, d)| first_arrival.get(v).map(|r| r.arrived_ms - d))
        .collect();
    base_lates.sort_unstable();
    rows.push((
        "no failover (records due in the warm-up's second half)".to_string(),
        tally(&baseline, &only(&baseline)),
        p99(&base_lates),
        String::new(),
        String::new(),
    ));
    for (i, f) in failovers.iter().enumerate() {
        let next = failovers.get(i + 1).map_or(i64::MAX, |n| n.kill_at);
        let window: HashMap<String, i64> = must
            .iter()
            .filter(|(_, d)| **d >= f.kill_at && **d < f.back_at)
            .map(|(v, d)| (v.clone(), *d))
            .collect();
        let t = tally(&window, &only(&window));
        let mut lates: Vec<i64> = window
            .iter()
            .filter_map(|(v, d)| first_arrival.get(v).map(|r| r.arrived_ms - d))
            .collect();
        lates.sort_unstable();
        let last_late = on_time_again(&must, &first_arrival, f.kill_at, next);
        let span = not_ready_span(&obs.ready, f.kill_at, next);
        let ready_again = match span {
            Some((_, Some(up))) => format!("{:.1}", (up - f.kill_at) as f64 / 1e3),
            Some((_, None)) => "never".to_string(),
            None => "stayed ready".to_string(),
        };
        let on_time = last_late.map_or("at once".to_string(), |at| {
            format!("{:.1}", (at - f.kill_at) as f64 / 1e3)
        });
        println!(
            "\nfailover {} (node {}): {} records due while it was down (kill to restart answered, {:.1} s)",
            i + 1,
            f.node,
            window.len(),
            (f.back_at - f.kill_at) as f64 / 1e3
        );
        match span {
            Some((down, up)) => println!(
                "  /readyz: not ready {:.1} s after the kill, ready again {}",
                (down - f.kill_at) as f64 / 1e3,
                up.map_or("never".into(), |u| format!(
                    "{:.1} s after",
                    (u - f.kill_at) as f64 / 1e3
                ))
            ),
            None => println!("  /readyz: answered 200 throughout"),
        }
        println!(
            "  deliveries on time again {on_time} s after the kill (every record due in the \
             10 s after that at most 1 s late)"
        );
        println!(
            "  metrics moved (kill to fully replicated + 5 s): {}",
            moved_metrics(&obs, f.kill_at, f.healthy_at + 5_000, &env.prefix).join("; ")
        );
        if let Ok(a) = &alerts {
            print_failover_alerts(a, i, &fors, &env.prefix);
        }
        rows.push((f.scenario.clone(), t, p99(&lates), ready_again, on_time));
    }
    print_run_alerts(&alerts, &env.prefix);

    print_lateness_by_due_time(&must, &first_arrival, &failovers, load_started);

    let mut all_lates: Vec<i64> = must
        .iter()
        .filter_map(|(v, d)| first_arrival.get(v).map(|r| r.arrived_ms - d))
        .collect();
    all_lates.sort_unstable();
    print_table(
        &rows,
        &whole,
        early_all,
        &all_lates,
        load_started,
        load_stopped,
    );
    println!(
        "cancelled before due and delivered anyway: {} of {}; test took {:.0} s",
        cancelled_delivered.len(),
        cancelled_in_time.len(),
        started.elapsed().as_secs_f64()
    );

    // The router's log outlives the test's folder (what it did at each kill).
    let kept = std::env::temp_dir().join(format!("{}-router.log", env.prefix));
    if std::fs::copy(&log, &kept).is_ok() {
        println!("detail: the router's log is kept in {}", kept.display());
    }
    let failed = whole.lost > 0 || early_all > 0 || !cancelled_delivered.is_empty();
    if failed {
        let missing: Vec<&String> = must
            .keys()
            .filter(|v| !first_arrival.contains_key(*v))
            .take(10)
            .collect();
        println!(
            "diagnosis: some lost: {missing:?}; some cancelled but delivered: {:?}",
            cancelled_delivered.iter().take(10).collect::<Vec<_>>()
        );
    }
    assert_eq!(whole.lost, 0, "records lost");
    assert_eq!(early_all, 0, "records delivered early");
    assert!(
        cancelled_delivered.is_empty(),
        "{} records delivered although their cancellation was acknowledged before they were due",
        cancelled_delivered.len()
    );
    assert!(whole.sent > 0 && failovers.len() == 3);
    drop(broker);
}
