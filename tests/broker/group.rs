//! The router's group: kill -9 mid-stream and a restart, a graceful shutdown
//! and what it commits, two routers sharing the partitions through a
//! rebalance; nothing lost, nothing early.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::check_on_time;
use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_and_restart_loses_nothing() {
    // Static membership: the restarted instance takes its predecessor's place at
    // once. (tests/faults.rs runs kill -9 series with dynamic membership too.)
    let Rig {
        env,
        mut col,
        mut router,
        ..
    } = Setup::new("kill9", &[200, 500, 1000, 2000], 3)
        .spawn(&["-X", "group.instance.id=kill9-router-1"])
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut due = produce_mixed(&env, 200, "first").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    router.kill().unwrap(); // SIGKILL: no drain, no commit
    router.wait().unwrap();
    due.extend(produce_mixed(&env, 100, "while-down").await);
    // Under the consumer group protocol (KIP-848) the broker keeps the killed
    // instance's id until its session timeout: the restarted router cannot
    // join, says so and exits, and its supervisor starts it again, as
    // systemd's `Restart=on-failure` would (README: "Group protocol").
    let member = ["-X", "group.instance.id=kill9-router-1"];
    let mut router = spawn_router_with(&env, &member);
    let (got, restarts) = tokio::task::block_in_place(|| {
        collect_supervised(
            &mut col,
            &env,
            &member,
            &mut router,
            300,
            Duration::from_secs(40),
        )
    });
    let distinct: HashSet<String> = got.iter().map(|r| r.value_str()).collect();
    let missing: Vec<_> = due.keys().filter(|v| !distinct.contains(*v)).collect();
    let duplicates = got.len() - distinct.len();
    println!(
        "kill -9 ({} group protocol): sent 300, delivered {} distinct, {duplicates} duplicates, \
         {} lost, {restarts} restarts by the supervisor",
        group_protocol(),
        distinct.len(),
        missing.len()
    );
    if group_protocol() == kafka_delay_router::membership::GroupProtocol::Classic {
        assert_eq!(
            restarts, 0,
            "the restarted router took its partitions back at once"
        );
    }
    if !missing.is_empty() {
        let mut tags: Vec<String> = distinct
            .iter()
            .map(|v| v.split('-').next().unwrap_or("").to_string())
            .collect();
        tags.sort();
        tags.dedup();
        println!(
            "delivered tags {tags:?}; log at {:?}",
            env.config_path.with_file_name("router.log")
        );
        let log = std::fs::read(env.config_path.with_file_name("router.log")).unwrap_or_default();
        println!("{}", String::from_utf8_lossy(&log));
    }
    assert!(missing.is_empty(), "lost records: {missing:?}");
    for r in &got {
        let d = due[&r.value_str()];
        assert!(
            r.timestamp >= d && r.arrived_ms >= d,
            "{} early",
            r.value_str()
        );
    }
    sigterm(&router);
    assert!(wait_exit(&mut router, Duration::from_secs(20)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_commits_finished_work_and_leaves_the_rest() {
    let Rig {
        env,
        target,
        mut col,
        mut router,
        dp,
        ..
    } = Setup::new("graceful", &[200, 500, 1000, 2000], 2)
        .spawn(&[])
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut due = HashMap::new();
    for (tag, count, delay) in [
        ("soon", 20, Duration::from_millis(300)),
        ("later", 5, Duration::from_secs(7)),
    ] {
        for i in 0..count {
            let v = format!("{tag}-{i}");
            due.insert(v.clone(), send_after(&dp, &target, &v, delay).await);
        }
    }
    assert_eq!(col.wait_for(20, Duration::from_secs(10)).len(), 20);
    let started = Instant::now();
    sigterm(&router);
    let status = wait_exit(&mut router, Duration::from_secs(15));
    assert!(status.success(), "exit status {status:?}");
    println!("graceful shutdown took {:?}", started.elapsed());
    // The 200ms tier's records were all due before the stop: finished and committed.
    assert_committed_to_end(&env.group, env.tier(0), 2);
    // The later records are not lost: a new router delivers them on time.
    let mut router = spawn_router(&env);
    let got = col.collect_distinct(25, Duration::from_secs(20));
    let distinct: HashSet<String> = got.iter().map(|r| r.value_str()).collect();
    assert_eq!(distinct.len(), 25);
    check_on_time(&got, &due);
    sigterm(&router);
    assert!(wait_exit(&mut router, Duration::from_secs(15)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_share_the_group_and_survive_a_rebalance() {
    let Rig {
        env,
        mut col,
        router: a,
        ..
    } = Setup::new("pair", &[200, 500, 1000, 2000], 4).start().await;
    let b = env.start_router().await;
    let (na, nb) = wait_split(&a, &b, 16.0).await;
    println!("two routers: {na} + {nb} partitions");
    let mut due = produce_mixed(&env, 150, "both").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    // One leaves while records wait in paused partitions: the other takes over.
    a.shutdown().await.unwrap();
    wait_assigned(&b, 16.0).await;
    due.extend(produce_mixed(&env, 50, "one").await);
    let got = col.collect_distinct(200, Duration::from_secs(30));
    let distinct: HashSet<String> = got.iter().map(|r| r.value_str()).collect();
    println!(
        "two routers: delivered {} distinct, {} duplicates",
        distinct.len(),
        got.len() - distinct.len()
    );
    assert_eq!(distinct.len(), 200, "nothing lost across the rebalance");
    for r in &got {
        let d = due[&r.value_str()];
        assert!(
            r.timestamp >= d && r.arrived_ms >= d,
            "{} early",
            r.value_str()
        );
    }
    b.shutdown().await.unwrap();
    for t in 0..4 {
        assert_committed_to_end(&env.group, env.tier(t), 4);
    }
}
