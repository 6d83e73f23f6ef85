//! Exactly-once mode on Apache Kafka (the broker under test): what
//! librdkafka's mock cluster could not show (tests/exactly_once.rs). A
//! `read_committed` reader of the target sees every record exactly once and
//! none early, through committed transactions, with the router's offsets
//! committed only inside them; across a graceful restart and across kill -9
//! of the router binary (each restarted at once with the same static member
//! id), the new owner resumes where the last committed transaction left off:
//! no record lost, none delivered twice. A `read_uncommitted` reader beside
//! it counts what aborted transactions left in the log, the control that
//! shows the kills really cut transactions.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use kafka_delay_router::router::Router;

async fn start_eos(env: &Env) -> Router {
    Router::start(env.config.clone(), env.exactly_once_options())
        .await
        .unwrap()
}

fn print(name: &str, t: &Tally) {
    println!(
        "kafka | {name:<38} | sent {:>4} | delivered {:>4} | duplicated {:>3} | lost {} | early {} | lateness p50 {} ms, max {} ms",
        t.sent, t.delivered, t.duplicated, t.lost, t.early, t.p50_late_ms, t.max_late_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_record_exactly_once_through_transactions_and_a_graceful_restart() {
    let env = Env::new("eos-kafka", &[1000, 3000], 2, 1).await;
    let router = start_eos(&env).await;
    wait_assigned(&router, 4.0).await;
    let mut collector = Collector::start(&env.targets[0]);
    let mut due: HashMap<String, i64> = produce_spread(&env, 300, "first", 1_200, 3_000).await;

    // Stopped gracefully while records are still waiting, then started again.
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    let committed_before = metric(
        &router,
        "kafka_delay_router_transactions_total",
        &[("outcome", "committed")],
    );
    let aborted_before = metric(
        &router,
        "kafka_delay_router_transactions_total",
        &[("outcome", "aborted")],
    );
    router.shutdown().await.unwrap();
    let router = start_eos(&env).await;
    wait_assigned(&router, 4.0).await;
    due.extend(produce_spread(&env, 100, "second", 1_200, 2_000).await);

    let seen = collector.collect_distinct(due.len(), Duration::from_secs(40));
    let t = tally(&due, &seen);
    print("exactly-once, graceful restart", &t);
    println!(
        "transactions committed before the restart {committed_before}, aborted {aborted_before}"
    );
    assert_eq!(
        (t.lost, t.early, t.duplicated),
        (0, 0, 0),
        "read_committed: every record exactly once, none early"
    );
    assert!(committed_before >= 2.0, "records went out in transactions");
    assert_eq!(aborted_before, 0.0);
    router.shutdown().await.unwrap();
    // Every tier offset was committed, inside the transactions, past the
    // last record.
    for tier in &env.config.tiers {
        assert_nothing_left_after_committed(&env.group, tier.topic(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_record_exactly_once_across_kill_9() {
    let env = Env::new("eos-kill9", &[500, 2000], 2, 1).await;
    let member = ["-X", "group.instance.id=eos-kill9-1"];
    let args = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut a = vec!["--exactly-once", "--transaction-interval", "100ms"];
        a.extend_from_slice(extra);
        a
    };
    let mut committed = Collector::start(&env.targets[0]);
    let mut uncommitted = Collector::start_read_uncommitted(&env.targets[0]);
    let mut router = spawn_router_with(&env, &args(&member));
    let n = 1_200;
    let env_ref = &env;
    let production = produce_over(env_ref, n, Duration::from_secs(8), 300, 3_500, "kill9");
    let kills = async {
        let mut kills = 0;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(2_300)).await;
            router.kill().unwrap();
            router.wait().unwrap();
            kills += 1;
            router = spawn_router_with(&env, &args(&member));
        }
        kills
    };
    let (due, kills) = tokio::join!(production, kills);
    // Under the consumer group protocol a router started again with the
    // killed one's static id may be refused until the broker expires it: it
    // exits, and the supervisor (here the test) starts it again.
    let (seen, restarts) = tokio::task::block_in_place(|| {
        collect_supervised(
            &mut committed,
            &env,
            &args(&member),
            &mut router,
            due.len(),
            Duration::from_secs(60),
        )
    });
    println!(
        "{} group protocol: {restarts} restarts by the supervisor",
        group_protocol()
    );
    let t = tally(&due, &seen);
    print(&format!("exactly-once, router kill -9 x{kills}"), &t);
    let raw = uncommitted.collect_distinct(due.len(), Duration::from_secs(5));
    let control = tally(&due, &raw);
    print("(read_uncommitted control)", &control);
    sigterm(&router);
    assert!(wait_exit(&mut router, Duration::from_secs(30)).success());
    assert_eq!(
        (t.lost, t.early, t.duplicated),
        (0, 0, 0),
        "read_committed after {kills} kill -9: every record exactly once, none early (the \
         read_uncommitted control saw {} duplicates from aborted transactions)",
        control.duplicated
    );
    for tier in &env.config.tiers {
        assert_nothing_left_after_committed(&env.group, tier.topic(), 2);
    }
}
