//! Exactly-once mode against librdkafka's in-process mock cluster, for the
//! fault paths Apache Kafka cannot be told to take (refused commits, a fenced
//! task, resume metadata); tests/exactly_once_kafka.rs proves the promise
//! itself on Kafka, and tests/transactions_refused.rs the refusal to start.
//!
//! What the mock can prove: the transactional protocol as the router drives it
//! (init, add partitions, add offsets, offset commit in the transaction, end),
//! that records arrive on time, never early, through committed transactions;
//! that a failed transaction is aborted and its records redone, none lost;
//! that a fenced task ends (without fencing the new owner back) until its
//! partition is assigned again; and that a new owner resumes from the
//! committed offset's metadata, skipping exactly the records finished out of
//! order. What it cannot: the mock keeps no offsets committed inside
//! transactions, shows aborted records to read_committed consumers and does not
//! fence an older producer of the same transactional id (see the README), so
//! "each record exactly once under kill -9" needs a real Kafka cluster.
//!
//! All scenarios run in one test on one mock cluster, one after another.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use kafka_delay_router::exactly_once::Resume;
use kafka_delay_router::kafka::now_ms;
use kafka_delay_router::Router;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn declare_on_mock(
    mock: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    env: &Env,
) {
    for t in &env.config.tiers {
        mock.create_topic(t.topic(), t.spec.partitions, 1).unwrap();
    }
    mock.create_topic(env.dlq(), 1, 1).unwrap();
    for t in &env.targets {
        mock.create_topic(t, 3, 1).unwrap();
    }
}

async fn start_eos(env: &Env) -> Router {
    start(env, true).await
}

async fn start(env: &Env, exactly_once: bool) -> Router {
    let o = if exactly_once {
        env.exactly_once_options()
    } else {
        env.options()
    };
    Router::start(env.config.clone(), o).await.unwrap()
}

/// Sends `n` records with deadlines spread over 1.2 s to 4.2 s (fixed and cascaded).
async fn send_spread(env: &Env, n: usize, tag: &str) -> HashMap<String, i64> {
    produce_spread(env, n, tag, 1_200, 3_000).await
}

fn print(name: &str, sent: usize, t: &Tally) {
    println!(
        "mock cluster | {name:<33} | sent {sent:>4} | delivered {:>4} | duplicated {:>3} | lost {} | early {} | lateness p50 {} ms, max {} ms",
        t.delivered, t.duplicated, t.lost, t.early, t.p50_late_ms, t.max_late_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_mode_on_the_mock_cluster() {
    let mock = MockCluster::new(3).unwrap();
    // Every helper in this test binary talks to the mock cluster.
    std::env::set_var("KAFKA_BOOTSTRAP_SERVERS", mock.bootstrap_servers());

    at_least_once_baseline(&mock).await;
    delivers_on_time_through_committed_transactions(&mock).await;
    an_aborted_transaction_is_redone(&mock).await;
    a_fenced_task_ends_until_assigned_again(&mock).await;
    a_new_owner_resumes_from_the_committed_metadata(&mock).await;
}

/// The same load in at-least-once mode, for comparison: the mock cluster's
/// own lateness (its max is some hundreds of ms here).
async fn at_least_once_baseline(
    mock: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
) {
    let env = Env::declare("alo-baseline", &[1000, 3000], 2, 1, "");
    declare_on_mock(mock, &env);
    let router = start(&env, false).await;
    wait_assigned(&router, 4.0).await;
    let mut collector = Collector::start(&env.targets[0]);
    let due = send_spread(&env, 200, "baseline").await;
    let seen = collector.collect_distinct(due.len(), Duration::from_secs(30));
    let t = tally(&due, &seen);
    print("(at-least-once, same load)", due.len(), &t);
    assert_eq!((t.lost, t.early), (0, 0));
    router.shutdown().await.unwrap();
}

async fn delivers_on_time_through_committed_transactions(
    mock: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
) {
    let env = Env::declare("eos-ontime", &[1000, 3000], 2, 1, "");
    declare_on_mock(mock, &env);
    let router = start_eos(&env).await;
    wait_assigned(&router, 4.0).await;
    let mut collector = Collector::start(&env.targets[0]);
    let due = send_spread(&env, 200, "ontime").await;
    let seen = collector.collect_distinct(due.len(), Duration::from_secs(30));
    let t = tally(&due, &seen);
    print("exactly-once, no faults", due.len(), &t);
    let committed = metric(
        &router,
        "kafka_delay_router_transactions_total",
        &[("outcome", "committed")],
    );
    let aborted = metric(
        &router,
        "kafka_delay_router_transactions_total",
        &[("outcome", "aborted")],
    );
    println!(
        "transactions committed {}, aborted {}",
        committed as i64, aborted as i64
    );
    assert_eq!((t.lost, t.early, t.duplicated), (0, 0, 0));
    assert!(committed >= 2.0, "records went out in transactions");
    assert_eq!(aborted, 0.0);
    // No offsets were stored outside the transactions.
    assert!(
        committed_plain(&env).is_empty(),
        "{:?}",
        committed_plain(&env)
    );
    router.shutdown().await.unwrap();
}

/// Sends `n` records through an exactly-once router while the mock answers the
/// next offset commits in transactions with `errors`; checks that nothing is
/// lost or early and that transactions ended with `outcome`; prints the row.
async fn with_refused_commits(
    mock: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    name: &str,
    partitions: i32,
    n: usize,
    errors: &[RDKafkaRespErr],
    outcome: &str,
) {
    let env = Env::declare(name, &[1000], partitions, 1, "");
    declare_on_mock(mock, &env);
    let router = start_eos(&env).await;
    wait_assigned(&router, partitions as f64).await;
    let mut collector = Collector::start(&env.targets[0]);
    mock.request_errors(RDKafkaApiKey::TxnOffsetCommit, errors);
    let due = send_spread(&env, n, name).await;
    let seen = collector.collect_distinct(due.len(), Duration::from_secs(30));
    let t = tally(&due, &seen);
    let ended = metric(
        &router,
        "kafka_delay_router_transactions_total",
        &[("outcome", outcome)],
    );
    print(&format!("exactly-once, {name}"), due.len(), &t);
    println!("transactions {outcome}: {} (the mock shows aborted records, so duplicates here are expected)", ended as i64);
    assert_eq!((t.lost, t.early), (0, 0));
    assert!(ended >= 1.0, "no transaction ended {outcome}");
    router.shutdown().await.unwrap();
}

async fn an_aborted_transaction_is_redone(
    mock: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
) {
    // The group coordinator refuses the next transactional offset commits: the
    // transaction becomes abortable, the router aborts it and redoes its records.
    let refused = [RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED; 3];
    with_refused_commits(mock, "3-commits-refused", 2, 100, &refused, "aborted").await;
}

/// The mock answers an offset commit in a transaction as a broker answers a
/// zombie after a newer owner of its transactional id bumped the epoch. The
/// fenced task must end, not initialise the id again (which would fence the
/// new owner back); the partition is routed again once it is assigned again.
async fn a_fenced_task_ends_until_assigned_again(
    mock: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
) {
    let env = Env::declare("producer-fenced", &[1000], 1, 1, "");
    declare_on_mock(mock, &env);
    let router = start_eos(&env).await;
    wait_assigned(&router, 1.0).await;
    let mut collector = Collector::start(&env.targets[0]);
    mock.request_errors(
        RDKafkaApiKey::TxnOffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH],
    );
    let due = send_spread(&env, 50, "producer-fenced").await;
    let outcome = |o: &str| {
        metric(
            &router,
            "kafka_delay_router_transactions_total",
            &[("tier", env.tier(0)), ("outcome", o)],
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while outcome("fenced") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "never fenced; replaced {} times",
            outcome("producer_replaced")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let committed = outcome("committed");
    // The records fall due over the next seconds: nothing may go on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let owned = metric(
        &router,
        "kafka_delay_router_partitions_assigned",
        &[("tier", env.tier(0))],
    );
    assert_eq!(owned, 0.0, "the fenced task ended");
    assert_eq!(
        outcome("producer_replaced"),
        0.0,
        "the transactional id was initialised again"
    );
    assert_eq!(outcome("committed"), committed, "a fenced task committed");
    router.shutdown().await.unwrap();

    // Assigned again (here to the group's next router): every record arrives.
    let router = start_eos(&env).await;
    let seen = collector.collect_distinct(due.len(), Duration::from_secs(30));
    let t = tally(&due, &seen);
    print("exactly-once, fenced, then reassigned", due.len(), &t);
    assert_eq!((t.lost, t.early), (0, 0));
    router.shutdown().await.unwrap();
}

/// A previous owner committed offset 2 of a tier partition holding offsets
/// 0..=9, having finished 3, 4, 6 and 7 out of order (2 and 5 were still
/// waiting). The new owner must route exactly 2, 5, 8 and 9.
async fn a_new_owner_resumes_from_the_committed_metadata(
    mock: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
) {
    let env = Env::declare("eos-resume", &[1000], 1, 1, "");
    declare_on_mock(mock, &env);
    let p = producer();
    let past = (now_ms() - 60_000).to_string();
    for i in 0..10 {
        let v = format!("resume-{i}");
        produce(
            &p,
            env.tier(0),
            Some(0),
            None,
            Some(v.as_bytes()),
            &[
                hdr("delay-target", env.targets[0].as_bytes()),
                hdr("delay-deliver-at", past.as_bytes()),
            ],
            None,
        )
        .await;
    }
    let resume = Resume {
        offset: 2,
        hi: 8,
        open: vec![2, 5],
    };
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", &env.group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut e = tpl.add_partition(env.tier(0), 0);
    e.set_offset(Offset::Offset(resume.offset)).unwrap();
    e.set_metadata(resume.encode());
    group.commit(&tpl, CommitMode::Sync).unwrap();
    drop(group);

    let mut collector = Collector::start(&env.targets[0]);
    let router = start_eos(&env).await;
    collector.wait_for(4, Duration::from_secs(20));
    let seen = collector.settle(Duration::from_secs(2)).to_vec();
    let mut values: Vec<String> = seen.iter().map(|r| r.value_str()).collect();
    values.sort();
    println!("resumed from {:?}: routed {values:?}", resume.encode());
    assert_eq!(values, ["resume-2", "resume-5", "resume-8", "resume-9"]);
    router.shutdown().await.unwrap();
}

/// Offsets the router's group committed outside transactions (the mock keeps
/// only those), for every tier partition.
fn committed_plain(env: &Env) -> Vec<(String, i32, i64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", &env.group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for t in &env.config.tiers {
        for p in 0..t.spec.partitions {
            tpl.add_partition(t.topic(), p);
        }
    }
    c.committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.topic().to_string(), e.partition(), o)),
            _ => None,
        })
        .collect()
}
