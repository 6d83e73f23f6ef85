//! Security on Apache Kafka: the router is not a confused deputy. Whoever may
//! write to a tier topic chooses `delay-target`, and the router writes there
//! with its own rights; the `targets.allow` list of `topics.yaml` decides
//! where it may write. A record for a topic outside the list (one that exists
//! and the router could write to) goes to the dead-letter topic as
//! `target-not-allowed`, never to that topic, and is counted; records for
//! allowed targets flow on; `DelayProducer` refuses such a target before
//! anything is written.

mod common;

use std::time::Duration;

use common::*;
use kafka_delay_router::headers::{self, DLQ_REASON, TARGET};
use kafka_delay_router::DelayProducer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_outside_the_allow_list_is_dead_lettered_not_written() {
    // Two existing targets; only target0 is allowed (the environment's
    // topics are named `deputy-<unique>-...`).
    let env = Env::with_extra(
        "deputy",
        &[1000],
        1,
        2,
        "targets: {allow: ['deputy-*-target0']}\n",
    )
    .await;
    let (allowed, victim) = (env.targets[0].clone(), env.targets[1].clone());
    let router = env.start_router().await;
    wait_assigned(&router, 1.0).await;
    let mut delivered = Collector::start(&allowed);
    let mut written_to_victim = Collector::start(&victim);
    let mut dead = Collector::start(env.dlq());

    // Any client with write access to the tiers can name any target.
    let p = producer();
    for (value, target) in [("ok-1", &allowed), ("inject", &victim), ("ok-2", &allowed)] {
        produce(
            &p,
            env.tier(0),
            Some(0),
            Some(value.as_bytes()),
            Some(value.as_bytes()),
            &[hdr(TARGET, target.as_bytes())],
            None,
        )
        .await;
    }
    let dl = tokio::task::block_in_place(|| dead.wait_for(1, Duration::from_secs(15)).to_vec());
    let ok = tokio::task::block_in_place(|| delivered.wait_for(2, Duration::from_secs(15)).len());
    // The injected record had its chance to arrive: the allowed ones, due at
    // the same time, are there.
    let injected = tokio::task::block_in_place(|| {
        written_to_victim
            .settle(Duration::from_secs(2))
            .iter()
            .map(|r| r.value_str())
            .collect::<Vec<_>>()
    });
    println!(
        "allowed target: {ok} delivered; outside the list: {} dead-lettered as {:?}, {} written to it",
        dl.len(),
        dl.first().and_then(|r| r.header(DLQ_REASON)),
        injected.len()
    );
    assert!(
        injected.is_empty(),
        "the router wrote to a target outside targets.allow: {injected:?}"
    );
    assert_eq!(ok, 2, "records for the allowed target flow on");
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].value_str(), "inject");
    assert_eq!(
        dl[0].header(DLQ_REASON).as_deref(),
        Some("target-not-allowed")
    );
    assert_eq!(
        dl[0].header(headers::DLQ_SOURCE_TOPIC).as_deref(),
        Some(env.tier(0))
    );
    assert_eq!(
        dl[0].header(TARGET).as_deref(),
        Some(victim.as_str()),
        "the dead letter keeps the target it asked for"
    );
    let counted = settled_metric(
        &router,
        "kafka_delay_router_records_dead_lettered_total",
        &[("reason", "target-not-allowed")],
        1.0,
    )
    .await;
    assert_eq!(counted, 1.0);

    // The library refuses the same target before writing anything.
    let dp = DelayProducer::new(&kafka(), env.config.clone()).unwrap();
    let e = dp
        .send(
            &victim,
            None,
            Some(b"x"),
            &[],
            kafka_delay_router::When::After(Duration::from_secs(1)),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("targets.allow"), "{e}");
    router.shutdown().await.unwrap();
    assert_committed_to_end(&env.group, env.tier(0), 1);
}
