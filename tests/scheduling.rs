//! The partition task's scheduling on librdkafka's mock cluster, where a
//! broker can be taken down: work that cannot start must not wake the task
//! (no busy loop while records wait for acknowledgements).

mod common;

use std::time::Duration;

use common::*;
use kafka_delay_router::router::Router;
use kafka_delay_router::DelayProducer;
use rdkafka::mocking::MockCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_records_waiting_for_acknowledgements_do_not_spin() {
    let mock = MockCluster::new(1).unwrap();
    std::env::set_var("KAFKA_BOOTSTRAP_SERVERS", mock.bootstrap_servers());
    let env = Env::declare("spin", &[500], 1, 1, "");
    for t in env.all_topics() {
        mock.create_topic(&t, 1, 1).unwrap();
    }
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
    mock.broker_up(1).unwrap();
    let seen = collector.collect_distinct(due.len(), Duration::from_secs(60));
    assert_eq!(
        seen.len(),
        due.len(),
        "every record delivered after the outage"
    );
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
