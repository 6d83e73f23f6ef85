//! At-least-once mode when the broker fences the router's producer: the
//! shared producer is replaced in process and every record still arrives,
//! on librdkafka's mock cluster (which can answer produce requests with an
//! injected error; Nisshi cannot be told to).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use kafka_delay_router::DelayProducer;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_producer_is_replaced_and_nothing_is_lost() {
    let mock = MockCluster::new(1).unwrap();
    // Every helper in this test binary talks to the mock cluster.
    std::env::set_var("KAFKA_BOOTSTRAP_SERVERS", mock.bootstrap_servers());
    let env = Env::declare("fenced", &[1000], 2, 1, "");
    for t in env.all_topics() {
        mock.create_topic(&t, 2, 1).unwrap();
    }
    let router = env.start_router().await;
    wait_assigned(&router, 2.0).await;
    let mut collector = Collector::start(&env.targets[0]);
    let dp = DelayProducer::new(&kafka(), env.config.clone()).unwrap();
    let mut due = std::collections::HashMap::new();
    for i in 0..40 {
        let v = format!("fenced-{i}");
        due.insert(
            v.clone(),
            send_after(
                &dp,
                &env.targets[0],
                &v,
                Duration::from_millis(1_100 + i * 20),
            )
            .await,
        );
    }
    // The next produce requests (the router's, once records fall due) are
    // answered as a broker answers a producer whose epoch was taken over.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED],
    );
    let seen = collector.collect_distinct(due.len(), Duration::from_secs(30));
    let values: HashSet<String> = seen.iter().map(|r| r.value_str()).collect();
    let replaced = metric(
        &router,
        "kafka_delay_router_producer_replacements_total",
        &[],
    );
    println!(
        "fenced once: {} of {} delivered ({} arrivals), producer replaced {replaced} time(s)",
        values.len(),
        due.len(),
        seen.len()
    );
    for r in &seen {
        assert!(
            r.timestamp >= due[&r.value_str()],
            "{} early",
            r.value_str()
        );
    }
    assert_eq!(values.len(), due.len(), "every record delivered");
    assert!(replaced >= 1.0, "the fenced producer was replaced");
    router.shutdown().await.expect("the router kept running");
}
