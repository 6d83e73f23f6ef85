//! Cancellations win wherever the record waits: in each tier and mid-cascade,
//! and while partitions move between two routers; a cancellation after
//! delivery changes nothing.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use kafka_delay_router::cancel::ID_HEADER;
use kafka_delay_router::headers::TARGET;
use kafka_delay_router::kafka::now_ms;

use crate::common::*;
use crate::outcome::judge;
use crate::{
    cancel_at, collect_until, full, send, settle_metric, sleep_until_ms, wait_value, CANCELLED,
    ON_TIME_MS,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_before_due_in_each_tier_and_mid_cascade_is_never_delivered() {
    let tiers = [1_000u64, 2_000, 5_000];
    let Rig {
        env,
        target,
        mut col,
        router,
        p,
        dp,
        ..
    } = Setup::new("cxl-tiers", &tiers, 2)
        .cancel_topic()
        .warm_cancel()
        .start()
        .await;
    let per_tier = if full() { 40 } else { 8 };
    let mut due = HashMap::new();
    // value -> the tier topic that holds it when its cancellation is checked.
    let mut tier_of: HashMap<String, String> = HashMap::new();
    let mut fixed_cancels = Vec::new();
    for (t, &ms) in tiers.iter().enumerate() {
        for i in 0..per_tier {
            let v = format!("t{ms}-{i}");
            let d = if i % 2 == 0 {
                // A fixed delay, as kcat writes it: due at its timestamp plus the tier's delay.
                let ts = now_ms();
                produce(
                    &p,
                    env.tier(t),
                    None,
                    Some(v.as_bytes()),
                    Some(v.as_bytes()),
                    &[hdr(TARGET, target.as_bytes()), hdr(ID_HEADER, v.as_bytes())],
                    Some(ts),
                )
                .await;
                ts + ms as i64
            } else {
                // With delay-deliver-at: the sub-tier remainder is held in memory.
                let extra = 100 * (i as u64 % 7);
                send(
                    &dp,
                    &target,
                    &v,
                    Some(&v),
                    Duration::from_millis(ms + extra),
                )
                .await
            };
            if i % 4 < 2 {
                fixed_cancels.push((v.clone(), cancel_at(&dp, v.clone(), d - 400)));
            }
            tier_of.insert(v.clone(), env.tier(t).to_string());
            due.insert(v, d);
        }
    }
    // Cascades: 7.5 s goes 5s -> 2s (+0.5 s held); 8.5 s goes 5s -> 2s -> 1s
    // (+0.5 s held). Half are cancelled once the 5s tier forwarded them all,
    // so the check that drops them is the 2s tier's (a delivery for 7.5 s, a
    // forward for 8.5 s).
    let cascades = if full() { 20 } else { 4 };
    let mut cascade = Vec::new();
    for i in 0..2 * cascades {
        let v = format!("cascade-{i}");
        let ms = if i % 2 == 0 { 7_500 } else { 8_500 };
        let d = send(&dp, &target, &v, Some(&v), Duration::from_millis(ms)).await;
        due.insert(v.clone(), d);
        cascade.push(v);
    }
    let forwarded = || {
        metric_of(
            &router.metrics,
            "kafka_delay_router_records_forwarded_total",
            &[("tier", env.tier(2))],
        )
    };
    let n_cascade = cascade.len() as f64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while forwarded() < n_cascade {
        assert!(
            Instant::now() < deadline,
            "the 5s tier forwarded {} of {n_cascade} cascades",
            forwarded()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut cancelled = HashMap::new();
    for v in cascade.iter().filter(|v| v.ends_with(['0', '1', '4', '5'])) {
        let acked = dp.cancel(v.as_bytes(), None).await.unwrap().acked_ms;
        println!(
            "{v}: cancelled in the 2s tier, {} ms before due",
            due[v] - acked
        );
        tier_of.insert(v.clone(), env.tier(1).to_string());
        cancelled.insert(v.clone(), acked);
    }
    for (v, h) in fixed_cancels {
        cancelled.insert(v, h.await.unwrap());
    }
    let last_due = *due.values().max().unwrap();
    let got = collect_until(&mut col, last_due + 2_500);
    let o = judge(&got, &due, &cancelled);
    o.print("cancel in each tier and mid-cascade");
    // Per tier: the records dropped there.
    let mut want: HashMap<String, f64> = HashMap::new();
    let delivered: HashSet<String> = got.iter().map(|r| r.value_str()).collect();
    for v in cancelled.keys().filter(|v| !delivered.contains(*v)) {
        *want.entry(tier_of[v].clone()).or_default() += 1.0;
    }
    let total: f64 = want.values().sum();
    let seen = settle_metric(total, || metric_of(&router.metrics, CANCELLED, &[])).await;
    for t in 0..tiers.len() {
        println!(
            "{}: records_cancelled_total {} (dropped there: {})",
            env.tier(t),
            metric_of(&router.metrics, CANCELLED, &[("tier", env.tier(t))]),
            want.get(env.tier(t)).copied().unwrap_or(0.0)
        );
    }
    o.assert_clean();
    assert!(o.cancelled_in_time >= cancelled.len() / 2, "{o:?}");
    assert!(
        o.max_late() <= ON_TIME_MS,
        "late by {} ms (p50 {} ms)",
        o.max_late(),
        o.p(0.5)
    );
    assert_eq!(seen, total, "records_cancelled_total");
    for t in 0..tiers.len() {
        assert_eq!(
            metric_of(&router.metrics, CANCELLED, &[("tier", env.tier(t))]),
            want.get(env.tier(t)).copied().unwrap_or(0.0),
            "records_cancelled_total of {}",
            env.tier(t)
        );
    }
    router.shutdown().await.unwrap();
    // Dropped records were committed like delivered ones.
    for t in 0..tiers.len() {
        assert_committed_to_end(&env.group, env.tier(t), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_after_delivery_changes_nothing() {
    let Rig {
        target,
        mut col,
        router,
        dp,
        ..
    } = Setup::new("cxl-after", &[1_000, 2_000], 1)
        .cancel_topic()
        .warm_cancel()
        .start()
        .await;
    let mut due = HashMap::new();
    // "first" and "second" share an id; "other" has its own and is never cancelled.
    let ms = [("first", 1_500), ("other", 1_500), ("second", 4_000)];
    for (v, ms) in ms {
        let id = if v == "other" { "other" } else { "shared" };
        let d = send(&dp, &target, v, Some(id), Duration::from_millis(ms)).await;
        due.insert(v.to_string(), d);
    }
    let first = wait_value(&mut col, "first", Duration::from_secs(10)).expect("first delivered");
    let c = dp.cancel(b"shared", None).await.unwrap();
    println!(
        "first delivered {} ms after due; cancelled {} ms after its delivery, {} ms before second's due",
        first.arrived_ms - due["first"],
        c.acked_ms - first.arrived_ms,
        due["second"] - c.acked_ms
    );
    let got = collect_until(&mut col, due["second"] + 2_000);
    let cancelled = HashMap::from([("second".to_string(), c.acked_ms)]);
    let o = judge(&got, &due, &cancelled);
    o.print("cancel after delivery");
    // The delivered record stays delivered, once; the later one with the id is cancelled.
    o.assert_clean();
    assert_eq!(o.duplicates, 0);
    assert_eq!(got.iter().filter(|r| r.value_str() == "first").count(), 1);
    assert_eq!(o.cancelled_in_time, 1);
    assert!(o.max_late() <= ON_TIME_MS, "late by {} ms", o.max_late());
    let dropped = settle_metric(1.0, || metric_of(&router.metrics, CANCELLED, &[])).await;
    assert_eq!(dropped, 1.0, "records_cancelled_total");
    router.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellations_written_while_partitions_move_between_two_routers_win() {
    let Rig {
        env,
        target,
        mut col,
        router: a,
        dp,
        ..
    } = Setup::new("cxl-two", &[1_000, 2_000], 4)
        .cancel_topic()
        .warm_cancel()
        .start()
        .await;
    let n = if full() { 1_000 } else { 200 };
    let t0 = now_ms();
    let values: Vec<String> = (0..n).map(|i| format!("moving-{i}")).collect();
    let sends = values.iter().enumerate().map(|(i, v)| {
        let delay = 2_000 + (i as u64 * 7_919) % 7_000;
        send(&dp, &target, v, Some(v), Duration::from_millis(delay))
    });
    let due: HashMap<String, i64> = values
        .iter()
        .cloned()
        .zip(futures::future::join_all(sends).await)
        .collect();
    // Every other record is cancelled at a random time between now and 300 ms
    // before its due time: cancellations go on while the partitions move.
    let mut rng = Rng(0x5eed_cafe);
    let mut pending = Vec::new();
    for v in values.iter().step_by(2) {
        let from = now_ms() + 100;
        let span = (due[v] - 300 - from).max(1) as u64;
        let at = from + rng.below(span) as i64;
        pending.push((v.clone(), cancel_at(&dp, v.clone(), at)));
    }
    // A second router joins at 3 s; the first leaves at 6 s.
    sleep_until_ms(t0 + 3_000).await;
    let b = env.start_router().await;
    let joined = now_ms() - t0;
    sleep_until_ms(t0 + 6_000).await;
    let a_metrics = a.metrics.clone();
    let left = now_ms() - t0;
    a.shutdown().await.unwrap();
    let gone = now_ms() - t0;
    let mut cancelled = HashMap::new();
    for (v, h) in pending {
        cancelled.insert(v, h.await.unwrap());
    }
    let last_due = *due.values().max().unwrap();
    let got = collect_until(&mut col, last_due + 3_000);
    let o = judge(&got, &due, &cancelled);
    let (by_a, by_b) = (
        metric_of(&a_metrics, CANCELLED, &[]),
        metric_of(&b.metrics, CANCELLED, &[]),
    );
    println!(
        "second router started at +{joined} ms, first stopped at +{left} ms (gone at +{gone} ms); \
         dropped by the first {by_a}, by the second {by_b}"
    );
    o.print("two routers, partitions moving");
    o.assert_clean();
    // Every cancelled record was read and dropped by one router or the other
    // (a record read again after a rebalance may be dropped twice).
    assert!(
        by_a + by_b >= o.cancelled_in_time as f64,
        "dropped {by_a} + {by_b} of {} cancelled",
        o.cancelled_in_time
    );
    assert!(by_a > 0.0 && by_b > 0.0, "both routers dropped records");
    b.shutdown().await.unwrap();
}
