//! The partition task against librdkafka's mock cluster, where a broker can
//! be taken down and a topic made unwritable: work that cannot start must not
//! wake the task (no busy loop while records wait for acknowledgements), and a
//! dead letter the broker refuses is retried, never dropped, with the router
//! not ready meanwhile.

mod common;

use std::time::Duration;

use common::*;
use kafka_delay_router::router::Router;
use kafka_delay_router::DelayProducer;
use rdkafka::mocking::MockCluster;
use rdkafka::types::RDKafkaRespErr;

/// Each test points the helpers at its own mock cluster through
/// `KAFKA_BOOTSTRAP_SERVERS`, so they run one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A mock cluster with a fresh test environment's topics (one partition
/// each); the helpers talk to it while the returned guard is held.
async fn on_mock(
    name: &str,
    tier_ms: &[u64],
) -> (
    tokio::sync::MutexGuard<'static, ()>,
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    Env,
) {
    let one = ONE_AT_A_TIME.lock().await;
    let mock = MockCluster::new(1).unwrap();
    std::env::set_var("KAFKA_BOOTSTRAP_SERVERS", mock.bootstrap_servers());
    let env = Env::declare(name, tier_ms, 1, 1, "");
    for t in env.all_topics() {
        mock.create_topic(&t, 1, 1).unwrap();
    }
    (one, mock, env)
}

/// The router's options with metadata refreshed every 200 ms: its producer
/// learns of a topic's state (as the mock is told to report it) from metadata.
fn fast_metadata(env: &Env) -> kafka_delay_router::RouterOptions {
    let mut options = env.options();
    options.kafka = options
        .kafka
        .with_overrides(&["topic.metadata.refresh.interval.ms=200".to_string()])
        .unwrap();
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_records_waiting_for_acknowledgements_do_not_spin() {
    let (_one, mock, env) = on_mock("spin", &[500]).await;
    // One record in flight at most: the others wait for its acknowledgement.
    let mut options = env.options();
    options.limits.max_in_flight = 1;
    let router = Router::start(env.config.clone(), options).await.unwrap();
    wait_assigned(&router, 1.0).await;
    let mut collector = Collector::start(&env.targets[0]);
    let dp = DelayProducer::new(&kafka(), env.config.clone()).unwrap();
    let mut due = std::collections::HashMap::new();
    for i in 0..5 {
        let v = format!("spin-{i}");
        due.insert(
            v.clone(),
            send_after(&dp, &env.targets[0], &v, Duration::from_millis(800)).await,
        );
    }
    // The router reads them, then the broker goes away before they are due:
    // the first one's produce stays unacknowledged, the others are due and wait.
    tokio::time::sleep(Duration::from_millis(400)).await;
    mock.broker_down(1).unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let wakeups = || metric(&router, "kafka_delay_router_task_wakeups_total", &[]);
    let turns0 = wakeups();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let turns = wakeups() - turns0;
    println!(
        "while records waited for acknowledgements (3 s): {turns} task wake-ups; {} records held, {} read",
        metric(&router, "kafka_delay_router_records_held", &[]),
        metric(&router, "kafka_delay_router_records_read_total", &[])
    );
    // The head gauges show it although the task sleeps: they are worked out at the scrape.
    let overdue = || metric(&router, "kafka_delay_router_head_overdue_seconds", &[]);
    let stuck = overdue();
    println!("overdue while the broker was down: {stuck} s");
    assert!(
        stuck >= 3.0,
        "records due 3.5 s ago show as overdue {stuck} s"
    );
    mock.broker_up(1).unwrap();
    let seen = collector.collect_distinct(due.len(), Duration::from_secs(60));
    assert_eq!(
        seen.len(),
        due.len(),
        "every record delivered after the outage"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(overdue(), 0.0, "delivered: nothing overdue");
    for r in &seen {
        assert!(
            r.timestamp >= due[&r.value_str()],
            "{} early",
            r.value_str()
        );
    }
    // A task that wakes for records it cannot start turns about once a
    // millisecond (the timer's resolution) until the acknowledgement comes.
    assert!(
        turns < 100.0,
        "the partition task spun: {turns} wake-ups in 3 s"
    );
    router.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_dead_letter_is_retried_with_the_router_not_ready_and_others_flow() {
    let (_one, mock, env) = on_mock("refused", &[300]).await;
    let options = fast_metadata(&env);
    let router = Router::start(env.config.clone(), options).await.unwrap();
    wait_assigned(&router, 1.0).await;
    let mut delivered = Collector::start(&env.targets[0]);
    let mut dead_letters = Collector::start(env.dlq());
    // The dead-letter topic becomes unwritable for the router.
    mock.topic_error(
        env.dlq(),
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
    )
    .unwrap();
    let p = producer();
    // No delay-target: a dead letter.
    produce(&p, env.tier(0), Some(0), None, Some(b"poison"), &[], None).await;
    let blocked = || router.metrics.dead_letters_blocked.get();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while blocked() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let render = router.metrics.render();
    let errors: Vec<&str> = render
        .lines()
        .filter(|l| l.contains("errors_total") || l.contains("dead_letter"))
        .collect();
    assert_eq!(
        blocked(),
        1,
        "the refused dead letter is counted: {errors:#?}"
    );
    // Good records behind it still go on time, while the router is not ready.
    let dp = DelayProducer::new(&kafka(), env.config.clone()).unwrap();
    let due = send_after(&dp, &env.targets[0], "good", Duration::from_millis(400)).await;
    let got = delivered.collect_distinct(1, Duration::from_secs(10));
    assert_eq!(got.len(), 1);
    assert!(got[0].timestamp >= due);
    assert_eq!(blocked(), 1, "still refused, still retried");
    assert!(dead_letters
        .collect_distinct(1, Duration::from_millis(500))
        .is_empty());
    // Writable again: the dead letter is written, with its reason, and the router is ready.
    mock.topic_error(env.dlq(), RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
        .unwrap();
    let dl = dead_letters.collect_distinct(1, Duration::from_secs(60));
    println!(
        "refused dead letter: written after the topic came back ({} arrivals)",
        dl.len()
    );
    assert_eq!(dl.len(), 1, "the dead letter was never dropped");
    assert_eq!(dl[0].value_str(), "poison");
    assert_eq!(blocked(), 0);
    router.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_or_target_briefly_unknown_is_retried_not_dead_lettered() {
    // librdkafka 2.12 itself holds and retries produces to a topic that
    // metadata or a produce answer calls unknown (the router sees no error):
    // this pins that down, since a router that saw the error would
    // dead-letter the records as target-not-found.
    let (_one, mock, env) = on_mock("unknown", &[300, 1_000]).await;
    let options = fast_metadata(&env);
    let router = Router::start(env.config.clone(), options).await.unwrap();
    wait_assigned(&router, 2.0).await;
    let mut delivered = Collector::start(&env.targets[0]);
    let dp = DelayProducer::new(&kafka(), env.config.clone()).unwrap();
    let mut due = std::collections::HashMap::new();
    // The router has delivered to the target before (a target never seen and
    // reported unknown is dead-lettered at once, as --missing-target-wait 0s says).
    due.insert(
        "warm-up".to_string(),
        send_after(&dp, &env.targets[0], "warm-up", Duration::ZERO).await,
    );
    assert_eq!(
        delivered.collect_distinct(1, Duration::from_secs(10)).len(),
        1
    );
    // 2.5 s: into the 1 s tier, forwarded to it again at +1 s. 0.5 s: delivered from the 300 ms tier.
    for (v, ms) in [("forwarded", 2_500), ("delivered", 500)] {
        due.insert(
            v.to_string(),
            send_after(&dp, &env.targets[0], v, Duration::from_millis(ms)).await,
        );
    }
    // The broker answers UNKNOWN_TOPIC_OR_PART for the 1 s tier and the target for 2 s
    // (as during a metadata refresh or a partition move): the router's
    // forward and delivery fall into it.
    let unknown = RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
    mock.topic_error(env.tier(1), unknown).unwrap();
    mock.topic_error(&env.targets[0], unknown).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let no_error = RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR;
    mock.topic_error(env.tier(1), no_error).unwrap();
    mock.topic_error(&env.targets[0], no_error).unwrap();
    // Then the broker answers the next produce requests with UNKNOWN_TOPIC_OR_PART.
    for (v, ms) in [("forwarded-2", 2_500), ("delivered-2", 500)] {
        due.insert(
            v.to_string(),
            send_after(&dp, &env.targets[0], v, Duration::from_millis(ms)).await,
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    mock.request_errors(rdkafka::types::RDKafkaApiKey::Produce, &[unknown; 20]);
    let got = delivered.collect_distinct(5, Duration::from_secs(60));
    let dead = metric(
        &router,
        "kafka_delay_router_records_dead_lettered_total",
        &[],
    );
    let errors: Vec<String> = router
        .metrics
        .render()
        .lines()
        .filter(|l| {
            l.starts_with("kafka_delay_router_producer_errors_total")
                || (l.starts_with("kafka_delay_router_records_dead_lettered_total")
                    && !l.ends_with(" 0"))
        })
        .map(String::from)
        .collect();
    println!(
        "briefly unknown topics: {} delivered, {dead} dead-lettered; {errors:?}",
        got.len()
    );
    assert_eq!(
        dead, 0.0,
        "nothing dead-lettered for a transient unknown topic"
    );
    // Every record delivered once the topics were back. A produce the mock
    // answered with an injected error may still have been written, and its
    // retry writes it again (at-least-once): copies are allowed, missing
    // records are not.
    let values: std::collections::BTreeSet<String> = got.iter().map(|r| r.value_str()).collect();
    let expected: std::collections::BTreeSet<String> = due.keys().cloned().collect();
    assert_eq!(values, expected, "all delivered once the topics were back");
    println!("copies beyond the first: {}", got.len() - values.len());
    for r in &got {
        assert!(
            r.timestamp >= due[&r.value_str()],
            "{} early",
            r.value_str()
        );
    }
    router.shutdown().await.unwrap();
}
