//! Cancellations written before a router restarts, gracefully or after
//! kill -9, still win: the restarted router reads them before delivering.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kafka_delay_router::kafka::now_ms;
use kafka_delay_router::DelayProducer;

use crate::common::*;
use crate::outcome::judge;
use crate::{collect_until, full, send, settle_metric, sleep_until_ms, CANCELLED};

/// Writes `n` cancellations for ids no record carries, so that a router
/// starting later has something to read before its view is fresh.
async fn filler(dp: &DelayProducer, n: usize) -> Duration {
    let t = Instant::now();
    let ids: Vec<String> = (0..n).map(|i| format!("filler-{i}")).collect();
    for chunk in ids.chunks(10_000) {
        for r in
            futures::future::join_all(chunk.iter().map(|id| dp.cancel(id.as_bytes(), None))).await
        {
            r.unwrap();
        }
    }
    t.elapsed()
}

/// The restart cases' records: 8 each of "kept" (id, not cancelled), "gone"
/// (cancelled while the first router runs), "down" (cancelled while no router
/// runs) and "plain" (no id), all due 3 s from now.
async fn restart_records(dp: &DelayProducer, target: &str) -> HashMap<String, i64> {
    let mut due = HashMap::new();
    for kind in ["kept", "gone", "down", "plain"] {
        for i in 0..8 {
            let v = format!("{kind}-{i}");
            let id = (kind != "plain").then_some(v.as_str());
            let d = send(dp, target, &v, id, Duration::from_millis(3_000 + 40 * i)).await;
            due.insert(v, d);
        }
    }
    due
}

async fn cancel_kind(
    dp: &DelayProducer,
    due: &HashMap<String, i64>,
    kind: &str,
) -> HashMap<String, i64> {
    let mut acked = HashMap::new();
    for v in due.keys().filter(|v| v.starts_with(kind)) {
        acked.insert(
            v.clone(),
            dp.cancel(v.as_bytes(), None).await.unwrap().acked_ms,
        );
    }
    acked
}

/// Arrival after `since` of the first and last records of `kind`.
fn arrivals(got: &[Received], kind: &str, since: i64) -> String {
    let t: Vec<i64> = got
        .iter()
        .filter(|r| r.value_str().starts_with(kind))
        .map(|r| r.arrived_ms - since)
        .collect();
    match (t.iter().min(), t.iter().max()) {
        (Some(a), Some(b)) => format!("{kind} {a}..{b} ms"),
        _ => format!("{kind} none"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_restarted_gracefully_between_cancel_and_due_does_not_deliver() {
    let topics = Setup::new("cxl-restart", &[1_000, 2_000], 2)
        .cancel_topic()
        .warm_cancel()
        .topics()
        .await;
    let fillers = if full() { 200_000 } else { 20_000 };
    let took = filler(&topics.dp, fillers).await;
    let Rig {
        env,
        target,
        mut col,
        router: first,
        dp,
        ..
    } = topics.start().await;
    let due = restart_records(&dp, &target).await;
    let mut cancelled = cancel_kind(&dp, &due, "gone").await;
    first.shutdown().await.unwrap();
    cancelled.extend(cancel_kind(&dp, &due, "down").await);
    // Everything comes due while no router runs.
    sleep_until_ms(*due.values().max().unwrap() + 300).await;
    let started = now_ms();
    let second = env.start_router().await;
    let got = collect_until(&mut col, started + 5_000);
    let o = judge(&got, &due, &cancelled);
    println!(
        "{fillers} other cancellations outstanding (written in {took:?}); after the restart: {}, {}",
        arrivals(&got, "plain", started),
        arrivals(&got, "kept", started)
    );
    o.print("graceful restart");
    o.assert_clean();
    assert_eq!(o.cancelled_in_time, 16);
    let dropped = settle_metric(16.0, || metric_of(&second.metrics, CANCELLED, &[])).await;
    assert_eq!(
        dropped, 16.0,
        "records_cancelled_total of the second router"
    );
    second.shutdown().await.unwrap();
    for t in 0..2 {
        assert_committed_to_end(&env.group, env.tier(t), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_killed_between_cancel_and_due_does_not_deliver_after_restart() {
    let topics = Setup::new("cxl-kill9", &[1_000, 2_000], 2)
        .cancel_topic()
        .warm_cancel()
        .topics()
        .await;
    let fillers = if full() { 200_000 } else { 20_000 };
    filler(&topics.dp, fillers).await;
    // Static membership: the restarted process takes the killed one's place at once.
    let member = format!("group.instance.id={}", unique("cxl-kill9"));
    let Rig {
        env,
        target,
        mut col,
        mut router,
        dp,
        ..
    } = topics.spawn(&["-X", &member]);
    let due = restart_records(&dp, &target).await;
    let mut cancelled = cancel_kind(&dp, &due, "gone").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    router.kill().unwrap(); // SIGKILL: no drain, no commit
    router.wait().unwrap();
    cancelled.extend(cancel_kind(&dp, &due, "down").await);
    sleep_until_ms(*due.values().max().unwrap() + 300).await;
    let started = now_ms();
    let mut router = spawn_router_with(&env, &["-X", &member]);
    let got = collect_until(&mut col, started + 8_000);
    let o = judge(&got, &due, &cancelled);
    println!(
        "after kill -9 and restart: {}, {}",
        arrivals(&got, "plain", started),
        arrivals(&got, "kept", started)
    );
    o.print("kill -9");
    sigterm(&router);
    let status = wait_exit(&mut router, Duration::from_secs(20));
    if !o.leaked.is_empty() || !o.lost.is_empty() {
        let log = std::fs::read(env.config_path.with_file_name("router.log")).unwrap_or_default();
        println!("{}", String::from_utf8_lossy(&log));
    }
    o.assert_clean();
    assert_eq!(o.cancelled_in_time, 16);
    assert!(status.success(), "{status:?}");
}
