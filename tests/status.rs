//! Backlog visibility against the real broker: records that come due while
//! no router runs show as waiting and overdue in `status` (table, `--json`
//! and the library report), with no owner; a router started again routes
//! them, and then `status` and the router's overdue gauge go back to 0.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use kafka_delay_router::cli::{ConfigArg, KafkaArgs, StatusArgs};
use kafka_delay_router::kafka::now_ms;
use kafka_delay_router::{commands, status, DelayProducer};

fn report(env: &Env) -> status::Report {
    status::collect(
        &env.config,
        &kafka(),
        &env.group,
        Duration::from_secs(10),
        now_ms(),
    )
    .unwrap()
}

fn status_json(env: &Env) -> serde_json::Value {
    let args = StatusArgs {
        config: ConfigArg {
            config: env.config_path.clone(),
        },
        kafka: KafkaArgs {
            bootstrap_servers: bootstrap(),
            ..kafka_args_default()
        },
        group_id: env.group.clone(),
        json: true,
        timeout: Duration::from_secs(10),
    };
    let mut out = Vec::new();
    commands::status(args, &mut out).unwrap();
    serde_json::from_slice(&out).unwrap()
}

/// The CLI's defaults for every Kafka flag but the bootstrap servers.
fn kafka_args_default() -> KafkaArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Only {
        #[command(flatten)]
        kafka: KafkaArgs,
    }
    Only::parse_from(["status"]).kafka
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_due_while_no_router_runs_show_overdue_then_back_to_zero() {
    let env = Env::new("status", &[1000], 2, 1).await;
    let target = env.targets[0].clone();
    let mut col = Collector::start(&target);
    let dp = DelayProducer::new(&kafka(), env.config.clone()).unwrap();

    // A router routes a first batch, commits, and stops: the group exists.
    let router = env.start_router().await;
    let mut due = HashMap::new();
    for i in 0..4 {
        let v = format!("first-{i}");
        due.insert(
            v.clone(),
            send_after(&dp, &target, &v, Duration::from_millis(1000)).await,
        );
    }
    assert_eq!(col.collect_distinct(4, Duration::from_secs(20)).len(), 4);
    router.shutdown().await.unwrap();
    let idle = report(&env);
    println!("{}", status::render(&idle));
    assert_eq!(
        idle.tiers[0].waiting, 0,
        "all committed after the graceful stop"
    );
    assert_eq!(idle.tiers[0].overdue_seconds, 0.0);

    // Ten records come due while no router runs.
    for i in 0..10 {
        let v = format!("later-{i}");
        due.insert(
            v.clone(),
            send_after(&dp, &target, &v, Duration::from_millis(1000)).await,
        );
    }
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let stopped = report(&env);
    let text = status::render(&stopped);
    println!("{text}");
    let tier = &stopped.tiers[0];
    assert_eq!(tier.waiting, 10);
    assert!(
        tier.overdue_seconds >= 1.5,
        "due about 2 s ago: overdue {} s",
        tier.overdue_seconds
    );
    assert_eq!(tier.unowned, Some(2), "no router: no owner");
    for p in stopped.partitions.iter().filter(|p| p.waiting > 0) {
        let head = p.head.as_ref().expect("a head where records wait");
        assert_eq!(Some(head.offset), p.committed.or(Some(p.start)));
        assert!(head.dead_letter.is_none());
        assert!(head.act_at <= now_ms() - 1_500);
    }
    assert!(text.contains("ago"), "{text}");
    let json = status_json(&env);
    assert_eq!(json["tiers"][0]["waiting"], 10);
    assert!(json["tiers"][0]["overdue_seconds"].as_f64().unwrap() >= 1.5);
    assert_eq!(json["partitions"].as_array().unwrap().len(), 2);

    // Started again, the router routes them; nothing stays overdue.
    let router = env.start_router().await;
    let got = col.collect_distinct(14, Duration::from_secs(30));
    assert_eq!(got.len(), 14);
    for r in &got {
        assert!(
            r.timestamp >= due[&r.value_str()],
            "{} early",
            r.value_str()
        );
    }
    // Offsets commit within a second; the group's description lists the owner.
    let mut last = report(&env);
    for _ in 0..50 {
        if last.tiers[0].waiting == 0 && last.tiers[0].unowned == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        last = report(&env);
    }
    let caught_up = last;
    assert!(
        caught_up.tiers[0].waiting == 0 && caught_up.tiers[0].unowned == Some(0),
        "status shows the backlog routed and owned:\n{}",
        status::render(&caught_up)
    );
    println!("{}", status::render(&caught_up));
    assert_eq!(caught_up.tiers[0].overdue_seconds, 0.0);
    assert!(caught_up.partitions.iter().all(|p| p.owner.is_some()));
    let overdue = metric(&router, "kafka_delay_router_head_overdue_seconds", &[]);
    assert!(overdue < 0.5, "the router's overdue gauge: {overdue} s");

    // A second router joins: the broker's group description lists both
    // members and names the owner of every partition (both routers run in
    // this process, so both are `rdkafka@127.0.0.1`).
    let second = env.start_router().await;
    let owned = |r: &status::Report| {
        r.members.len() == 2
            && r.tiers.iter().all(|t| t.unowned == Some(0))
            && r.partitions.iter().all(|p| p.owner.is_some())
    };
    let mut shared = report(&env);
    for _ in 0..100 {
        if owned(&shared) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        shared = report(&env);
    }
    assert!(
        owned(&shared),
        "two routers: both members listed, every partition's owner named:\n{}",
        status::render(&shared)
    );
    println!("{}", status::render(&shared));
    second.shutdown().await.unwrap();
    router.shutdown().await.unwrap();
}
