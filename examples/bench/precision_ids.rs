//! Precision of records with a `delay-id` beside records without one, in the
//! same run, with cancellations flowing: the router (the release binary, the
//! precision scenario's tiers, a 3-partition cancel topic) gets half its load
//! with an id and half without, in the precision mix; one record with an id
//! in ten (with at least 600 ms of delay) is cancelled 300 ms before it is
//! due, and cancellations of ids nobody uses flow beside (a tenth of the
//! rate, at least one a second). A plain produce-to-consume probe runs beside
//! it. Target: p99 of the records with an id within 10 ms of the records
//! without one; nothing early; no record whose cancellation was acknowledged
//! before its due time delivered.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use kafka_delay_router::cancel::ID_HEADER;
use kafka_delay_router::kafka::now_ms;
use kafka_delay_router::DelayProducer;
use rdkafka::message::Header;
use serde::Serialize;

use crate::child::RouterProcess;
use crate::common::{
    load_producer, make_topics_with, router_like_producer, settings, topics_file, Rng,
};
use crate::load::{bench_headers, mix, paced, warm_path, Delivery, Outgoing};
use crate::precision::{RatePlan, PARTITIONS, TIERS};
use crate::reader::{Reader, Seen};

/// Target: the p99 of records with an id at most this much above the p99 of records without.
pub const P99_OVER_NO_ID_MS: i64 = 10;
/// How long before its due time a cancelled record's cancellation is sent.
const CANCEL_AHEAD_MS: i64 = 300;

/// Records with and without an id at one rate.
#[derive(Debug, Clone, Serialize)]
pub struct IdsAtRate {
    /// Records/s in all (half of them with an id).
    pub rate: u32,
    pub seconds: f64,
    pub without_id: Delivery,
    /// Records with an id, less those whose cancellation was acknowledged in time.
    pub with_id: Delivery,
    pub probe: Delivery,
    /// Records with an id whose cancellation was acknowledged before their due time.
    pub cancelled_in_time: usize,
    /// ... and of those, delivered anyway (must be 0).
    pub cancelled_but_delivered: usize,
    /// Cancellations acknowledged after the due time or failed (either outcome allowed; left out).
    pub cancelled_late: usize,
    /// Cancellations of ids no record has, sent beside.
    pub other_cancellations: usize,
    pub p99_over_no_id_ms: i64,
    pub met: bool,
}

/// A cancellation sent for record `n` of the run: acknowledged at (ms), or failed.
type Sent = (String, i64, Option<i64>);

pub async fn run(
    dir: &std::path::Path,
    plan: &RatePlan,
    router_bin: &std::path::Path,
) -> Result<Vec<IdsAtRate>> {
    let prefix = format!("bench-ids-{}", now_ms());
    let (target, probe_topic) = (format!("{prefix}-out"), format!("{prefix}-probe"));
    let cancel = format!("cancel: {{topic: {prefix}-cancel, partitions: 3}}\n");
    let config = make_topics_with(
        dir,
        &prefix,
        &TIERS,
        PARTITIONS,
        &[&target, &probe_topic],
        &cancel,
    )
    .await?;
    let tiers = config.tier_set();
    let probe_producer = router_like_producer()?;
    let reader = Reader::start(&[&target, &probe_topic], &probe_producer).await?;
    let log = dir.join(format!("{prefix}-router.log"));
    let router = RouterProcess::start(
        router_bin,
        &topics_file(dir, &prefix),
        &format!("{prefix}-router"),
        Some(&log),
    )?;
    router
        .wait_assigned(
            TIERS.len() as i32 * PARTITIONS,
            Duration::from_secs(60),
            &log,
        )
        .await?;
    let dp = DelayProducer::new(&settings(), config.clone())?;
    let load_producer = load_producer()?;
    let tier_topics: Vec<&str> = config.tiers.iter().map(|t| t.topic()).collect();
    warm_path(&load_producer, &tier_topics, &target, &reader).await?;
    let mut out = Vec::new();
    for &rate in &plan.rates {
        let secs = plan.seconds(rate);
        let half = f64::from(rate) / 2.0;
        let (plain, ided, probe_run) = (
            format!("no-id@{rate}"),
            format!("id@{rate}"),
            format!("probe@{rate}"),
        );
        eprintln!(
            "precision-ids: {rate} records/s (half with an id) for {secs:.0} s, probe at {} records/s ({prefix})",
            plan.probe_rate
        );
        let cancels: Arc<Mutex<Vec<tokio::task::JoinHandle<Sent>>>> = Arc::default();
        let due_of: Arc<Mutex<std::collections::HashMap<String, i64>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let others = tokio::spawn(other_cancellations(
            dp.clone(),
            (f64::from(rate) / 10.0).max(1.0),
            stop.clone(),
        ));
        let (mut rng_a, mut rng_b, mut rng_p) = (Rng::seeded(), Rng::seeded(), Rng::seeded());
        let tier_for = |delay_ms: u64| config.tiers[tiers.entry_tier(delay_ms)].topic().to_string();
        let (without, with, probe) = tokio::join!(
            paced(&load_producer, half, secs, |i, now| {
                let d = mix(i, &mut rng_a, plan.quick);
                let due = now + d.delay_ms as i64;
                Outgoing {
                    topic: tier_for(d.delay_ms),
                    key: rng_a.key(),
                    headers: bench_headers(&plain, i, d.kind, due, Some(&target), d.deliver_at),
                    timestamp: now,
                }
            }),
            paced(&load_producer, half, secs, |i, now| {
                let d = mix(i, &mut rng_b, plan.quick);
                let due = now + d.delay_ms as i64;
                let id = format!("{ided}-{i}");
                if i % 10 == 5 && d.delay_ms >= 600 {
                    due_of.lock().unwrap().insert(i.to_string(), due);
                    cancels.lock().unwrap().push(tokio::spawn(cancel_at(
                        dp.clone(),
                        i,
                        id.clone(),
                        due - CANCEL_AHEAD_MS,
                    )));
                }
                let headers = bench_headers(&ided, i, d.kind, due, Some(&target), d.deliver_at)
                    .insert(Header {
                        key: ID_HEADER,
                        value: Some(id.as_bytes()),
                    });
                Outgoing {
                    topic: tier_for(d.delay_ms),
                    key: rng_b.key(),
                    headers,
                    timestamp: now,
                }
            }),
            paced(&probe_producer, plan.probe_rate, secs, |i, now| Outgoing {
                topic: probe_topic.clone(),
                key: rng_p.key(),
                headers: bench_headers(&probe_run, i, "probe", now, None, false),
                timestamp: now,
            }),
        );
        let (without, mut with, probe) = (without?, with?, probe?);
        let handles = std::mem::take(&mut *cancels.lock().unwrap());
        let due_of = std::mem::take(&mut *due_of.lock().unwrap());
        let (mut in_time, mut late) = (HashSet::new(), HashSet::new());
        for h in handles {
            let (n, _, acked) = h.await?;
            match acked {
                Some(at) if at < due_of[&n] => in_time.insert(n),
                _ => late.insert(n),
            };
        }
        stop.store(true, Ordering::Relaxed);
        let other_cancellations = others.await?;
        reader
            .wait_for(&plain, without.records, plan.drain_timeout())
            .await;
        with.records -= in_time.len() + late.len();
        reader
            .wait_for(&ided, with.records, plan.drain_timeout())
            .await;
        reader
            .wait_for(&probe_run, probe.records, Duration::from_secs(10))
            .await;
        // A little longer, for anything cancelled that should not come.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ided_seen = reader.take(&ided);
        let cancelled_but_delivered = ided_seen.iter().filter(|s| in_time.contains(&s.id)).count();
        let kept: Vec<Seen> = ided_seen
            .into_iter()
            .filter(|s| !in_time.contains(&s.id) && !late.contains(&s.id))
            .collect();
        let without_id = Delivery::summarize(without, &reader.take(&plain), true);
        let with_id = Delivery::summarize(with, &kept, true);
        let probe = Delivery::summarize(probe, &reader.take(&probe_run), false);
        let diff = with_id.lateness.p99_ms - without_id.lateness.p99_ms;
        let met = diff <= P99_OVER_NO_ID_MS
            && cancelled_but_delivered == 0
            && with_id.lateness.early == 0
            && without_id.lateness.early == 0
            && with_id.undelivered == 0;
        eprintln!(
            "  without an id p99 {} ms, with an id p99 {} ms ({diff:+}), probe p99 {} ms; {} cancelled in time, {cancelled_but_delivered} of them delivered",
            without_id.lateness.p99_ms,
            with_id.lateness.p99_ms,
            probe.lateness.p99_ms,
            in_time.len()
        );
        out.push(IdsAtRate {
            rate,
            seconds: secs,
            without_id,
            with_id,
            probe,
            cancelled_in_time: in_time.len(),
            cancelled_but_delivered,
            cancelled_late: late.len(),
            other_cancellations,
            p99_over_no_id_ms: diff,
            met,
        });
    }
    router.stop().await?;
    Ok(out)
}

/// Cancels `id` at `at_ms`; returns record `n`, the time sent and when the broker acknowledged it.
async fn cancel_at(dp: DelayProducer, n: usize, id: String, at_ms: i64) -> Sent {
    let wait = (at_ms - now_ms()).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let sent = now_ms();
    let acked = dp.cancel(id.as_bytes(), None).await.ok().map(|_| now_ms());
    (n.to_string(), sent, acked)
}

/// Cancellations of ids no record carries, `rate` a second until stopped; returns how many.
async fn other_cancellations(dp: DelayProducer, rate: f64, stop: Arc<AtomicBool>) -> usize {
    let every = Duration::from_secs_f64(1.0 / rate);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("nobody-{}-{n}", now_ms());
        if dp.cancel(id.as_bytes(), None).await.is_ok() {
            n += 1;
        }
        tokio::time::sleep(every).await;
    }
    n
}

/// The scenario's table, in markdown.
pub fn markdown(rows: &[IdsAtRate]) -> String {
    let mut s = String::from(
        "| records/s (half with an id) | without an id: p50 / p99 / max (ms) | with an id: p50 / p99 / max (ms) | p99 with minus without (ms) | probe p99 (ms) | cancelled in time | of those delivered | target met |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let l = |d: &Delivery| {
            format!(
                "{} / {} / {}",
                d.lateness.p50_ms, d.lateness.p99_ms, d.lateness.max_ms
            )
        };
        s.push_str(&format!(
            "| {} | {} | {} | {:+} | {} | {} | {} | {} |\n",
            r.rate,
            l(&r.without_id),
            l(&r.with_id),
            r.p99_over_no_id_ms,
            r.probe.lateness.p99_ms,
            r.cancelled_in_time,
            r.cancelled_but_delivered,
            if r.met { "yes" } else { "no" }
        ));
    }
    s
}
