//! What exactly-once mode costs, on the broker under test, in one run:
//!
//! - throughput: a backlog of due records (512 B, one 6-partition tier)
//!   drained by the router in process, at-least-once and exactly-once in
//!   alternating order, each on its own freshly loaded copy, after a warm-up
//!   drain that is not counted; at-least-once is timed from the first record
//!   read to the last acknowledgement, exactly-once to the last transaction
//!   commit (when the records become visible to `read_committed` consumers);
//! - lateness: the router binary in each mode, one after the other, under the
//!   precision scenarios' mix (fixed 1 s and 5 s, cascaded, sub-second; tiers
//!   1s/5s/30s/1m with 6 partitions each) at the same rate and for the same
//!   time, measured by the same `read_committed` reader, with the probe
//!   beside each.
//!
//! `BENCH_EOS_RATE` (default 1,000 records/s) and `BENCH_SECS` (default 30,
//! quick 5) set the load of the lateness part.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kafka_delay_router::exactly_once::ExactlyOnce;
use kafka_delay_router::headers::TARGET;
use kafka_delay_router::kafka::now_ms;
use kafka_delay_router::router::{Router, RouterOptions};
use serde::Serialize;

use crate::child::RouterProcess;
use crate::common::{
    load_producer, make_topics, metrics_text, produce_all, router_like_producer, settings,
    topics_file, Load, Rng,
};
use crate::load::{bench_headers, cascade_span, mix, paced, warm_path, Delivery, Outgoing};
use crate::precision::{PARTITIONS as RATE_PARTITIONS, TIERS};
use crate::reader::Reader;
use crate::throughput::{PARTITIONS, RECORD_BYTES};

const MODES: [(&str, bool); 2] = [("at-least-once", false), ("exactly-once", true)];

/// One mode's drains.
#[derive(Debug, Clone, Serialize)]
pub struct Drains {
    pub mode: &'static str,
    /// Records/s per round.
    pub runs: Vec<f64>,
    pub records_per_s: f64,
    /// Transactions committed per round (exactly-once).
    pub transactions: Vec<u64>,
}

/// One mode under the steady mix.
#[derive(Debug, Clone, Serialize)]
pub struct AtRate {
    pub mode: &'static str,
    pub router: Delivery,
    pub probe: Delivery,
    /// The router's transactions at the end (committed, aborted), exactly-once only.
    pub transactions: Option<(f64, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EosCost {
    pub records: usize,
    pub record_bytes: usize,
    pub partitions: i32,
    pub drains: Vec<Drains>,
    /// Exactly-once records/s over at-least-once's.
    pub ratio: f64,
    pub rate: u32,
    pub seconds: f64,
    pub lateness: Vec<AtRate>,
}

pub async fn run(dir: &Path, quick: bool, router_bin: &Path) -> Result<EosCost> {
    let n: usize = if quick { 100_000 } else { 500_000 };
    let rounds = 3;
    let warm = drain_once(dir, n / 2, false).await?;
    eprintln!(
        "eos: warm-up (not counted): at-least-once {:.0} records/s",
        warm.0
    );
    let mut drains: Vec<Drains> = MODES
        .iter()
        .map(|(mode, _)| Drains {
            mode,
            runs: Vec::new(),
            records_per_s: 0.0,
            transactions: Vec::new(),
        })
        .collect();
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for m in order {
            let (rate, txns) = drain_once(dir, n, MODES[m].1).await?;
            eprintln!(
                "eos: round {round}: {} {rate:.0} records/s ({txns} transactions)",
                MODES[m].0
            );
            drains[m].runs.push(rate);
            drains[m].transactions.push(txns);
        }
    }
    for d in &mut drains {
        d.records_per_s = d.runs.iter().sum::<f64>() / d.runs.len() as f64;
    }
    let ratio = drains[1].records_per_s / drains[0].records_per_s;

    let rate: u32 = match std::env::var("BENCH_EOS_RATE") {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|r| *r > 0)
            .with_context(|| format!("BENCH_EOS_RATE: {v:?} is not a positive integer"))?,
        Err(_) => 1_000,
    };
    let seconds: f64 = match std::env::var("BENCH_SECS") {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|s| *s > 0.0)
            .with_context(|| format!("BENCH_SECS: {v:?} is not a positive number"))?,
        Err(_) if quick => 5.0,
        Err(_) => 30.0,
    };
    let mut lateness = Vec::new();
    for (mode, exactly_once) in MODES {
        lateness.push(at_rate(dir, router_bin, mode, exactly_once, rate, seconds, quick).await?);
    }
    Ok(EosCost {
        records: n,
        record_bytes: RECORD_BYTES,
        partitions: PARTITIONS,
        drains,
        ratio,
        rate,
        seconds,
        lateness,
    })
}

/// Loads `n` due records of 512 bytes into a fresh tier and times the router
/// draining them; returns records/s and the transactions it committed.
async fn drain_once(dir: &Path, n: usize, exactly_once: bool) -> Result<(f64, u64)> {
    let prefix = format!("bench-eos-thr-{}", now_ms());
    let out = format!("{prefix}-out");
    let config = make_topics(dir, &prefix, &[1_000], PARTITIONS, &[&out]).await?;
    let tier = config.tiers[0].topic().to_string();
    let value = vec![b'v'; RECORD_BYTES];
    let old = now_ms() - 600_000;
    let p = load_producer()?;
    produce_all(
        &p,
        (0..n).map(|i| Load {
            topic: &tier,
            key: format!("k{i}").into_bytes(),
            value: &value,
            headers: vec![(TARGET, out.clone().into_bytes())],
            timestamp: old,
        }),
    )
    .await?;
    let mut options = RouterOptions::new(settings());
    options.group_id = format!("{prefix}-router");
    if exactly_once {
        options.exactly_once = Some(ExactlyOnce {
            id_prefix: options.group_id.clone(),
            interval: Duration::from_millis(100),
        });
    }
    let router = Router::start(config.clone(), options).await?;
    let m = router.metrics.clone();
    let read = m.records_read.with_label_values(&[&tier]);
    let delivered = m.records_delivered.with_label_values(&[&tier]);
    let committed = m.transactions.with_label_values(&[&tier, "committed"]);
    let deadline = Instant::now() + Duration::from_secs(600);
    while read.get() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let start = Instant::now();
    while (delivered.get() as usize) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if (delivered.get() as usize) < n {
        bail!("{} of {n} records delivered in 600 s", delivered.get());
    }
    let mut end = start.elapsed();
    if exactly_once {
        // Done at the last commit: none for 500 ms after it.
        let (mut last, mut at) = (committed.get(), start.elapsed());
        while start.elapsed() - at < Duration::from_millis(500) {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if committed.get() != last {
                (last, at) = (committed.get(), start.elapsed());
            }
        }
        end = end.max(at);
    }
    let txns = committed.get();
    router.shutdown().await?;
    Ok((delivered.get() as f64 / end.as_secs_f64(), txns))
}

/// The router binary in one mode under the mix at `rate` for `secs`, on topics of its own.
async fn at_rate(
    dir: &Path,
    router_bin: &Path,
    mode: &'static str,
    exactly_once: bool,
    rate: u32,
    secs: f64,
    quick: bool,
) -> Result<AtRate> {
    let prefix = format!(
        "bench-eos-{}-{}",
        if exactly_once { "eo" } else { "alo" },
        now_ms()
    );
    let (target, probe_topic) = (format!("{prefix}-out"), format!("{prefix}-probe"));
    let config = make_topics(
        dir,
        &prefix,
        &TIERS,
        RATE_PARTITIONS,
        &[&target, &probe_topic],
    )
    .await?;
    let tiers = config.tier_set();
    let probe_producer = router_like_producer()?;
    // librdkafka's default isolation: read_committed. A busy broker may not
    // have elected the new topics' leaders yet: tried again for a while.
    let mut attempt = 0;
    let reader = loop {
        match Reader::start(&[&target, &probe_topic], &probe_producer).await {
            Ok(r) => break r,
            Err(e) if attempt < 10 => {
                attempt += 1;
                eprintln!("eos: the reader could not start yet ({e}); again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let log = dir.join(format!("{prefix}-router.log"));
    // The router reads every flag from the environment too: the child inherits this one.
    if exactly_once {
        std::env::set_var("KDR_EXACTLY_ONCE", "true");
    }
    let router = RouterProcess::start(
        router_bin,
        &topics_file(dir, &prefix),
        &format!("{prefix}-router"),
        Some(&log),
    );
    std::env::remove_var("KDR_EXACTLY_ONCE");
    let router = router?;
    router
        .wait_assigned(
            TIERS.len() as i32 * RATE_PARTITIONS,
            Duration::from_secs(120),
            &log,
        )
        .await?;
    let load_producer = load_producer()?;
    let tier_topics: Vec<&str> = config.tiers.iter().map(|t| t.topic()).collect();
    warm_path(&load_producer, &tier_topics, &target, &reader).await?;
    let (run, probe_run) = (format!("{mode}@{rate}"), format!("probe-{mode}@{rate}"));
    eprintln!("eos: {mode} router at {rate} records/s for {secs:.0} s ({prefix})");
    let (mut load_rng, mut probe_rng) = (Rng::seeded(), Rng::seeded());
    let (load, probe) = tokio::join!(
        paced(&load_producer, f64::from(rate), secs, |i, now| {
            let d = mix(i, &mut load_rng, quick);
            let due = now + d.delay_ms as i64;
            Outgoing {
                topic: config.tiers[tiers.entry_tier(d.delay_ms)]
                    .topic()
                    .to_string(),
                key: load_rng.key(),
                headers: bench_headers(&run, i, d.kind, due, Some(&target), d.deliver_at),
                timestamp: now,
            }
        }),
        paced(&probe_producer, 20.0, secs, |i, now| Outgoing {
            topic: probe_topic.clone(),
            key: probe_rng.key(),
            headers: bench_headers(&probe_run, i, "probe", now, None, false),
            timestamp: now,
        }),
    );
    let (load, probe) = (load?, probe?);
    let timeout = Duration::from_millis(cascade_span(quick).1) + Duration::from_secs(30);
    reader.wait_for(&run, load.records, timeout).await;
    reader
        .wait_for(&probe_run, probe.records, Duration::from_secs(10))
        .await;
    // Copies arriving late (none expected in either mode) would show here.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let transactions = if exactly_once {
        let text = metrics_text(&router.addr).await.unwrap_or_default();
        let outcome = |o: &str| -> f64 {
            text.lines()
                .filter(|l| {
                    l.starts_with("kafka_delay_router_transactions_total{")
                        && l.contains(&format!("outcome=\"{o}\""))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
                + 0.0
        };
        Some((outcome("committed"), outcome("aborted")))
    } else {
        None
    };
    let router_delivery = Delivery::summarize(load, &reader.take(&run), true);
    let probe_delivery = Delivery::summarize(probe, &reader.take(&probe_run), false);
    eprintln!(
        "  {mode}: sent {}, delivered {}, p50 {} ms, p99 {} ms, max {} ms; probe p99 {} ms",
        router_delivery.sent.records,
        router_delivery.delivered,
        router_delivery.lateness.p50_ms,
        router_delivery.lateness.p99_ms,
        router_delivery.lateness.max_ms,
        probe_delivery.lateness.p99_ms
    );
    router.stop().await?;
    Ok(AtRate {
        mode,
        router: router_delivery,
        probe: probe_delivery,
        transactions,
    })
}

/// The markdown section of the report.
pub fn markdown(e: &EosCost) -> String {
    let mut md = format!(
        "## Exactly-once against at-least-once\n\nThroughput: {} due records of {} B in a {}-partition tier, drained by the router in process (rounds alternate which mode goes first; exactly-once timed to its last commit):\n\n| mode | records/s (mean) | runs | transactions committed |\n|---|---|---|---|\n",
        e.records, e.record_bytes, e.partitions
    );
    for d in &e.drains {
        let runs: Vec<String> = d.runs.iter().map(|r| format!("{r:.0}")).collect();
        let txns: Vec<String> = d.transactions.iter().map(|t| t.to_string()).collect();
        md.push_str(&format!(
            "| {} | {:.0} | {} | {} |\n",
            d.mode,
            d.records_per_s,
            runs.join(", "),
            if d.mode == "exactly-once" {
                txns.join(", ")
            } else {
                "-".into()
            }
        ));
    }
    md.push_str(&format!(
        "\nRatio exactly-once / at-least-once: **{:.2}**\n\nLateness at {} records/s for {:.0} s (the precision mix; tiers 1s/5s/30s/1m x 6 partitions; the router binary; a read_committed reader; ms):\n\n| mode | records | delivered | duplicates | early | p50 | p99 | p99.9 | max | probe p50 | probe p99 | probe max | transactions committed / aborted |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        e.ratio, e.rate, e.seconds
    ));
    for a in &e.lateness {
        let (r, p) = (&a.router.lateness, &a.probe.lateness);
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            a.mode,
            a.router.sent.records,
            a.router.delivered,
            a.router.duplicates,
            r.early,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.max_ms,
            p.p50_ms,
            p.p99_ms,
            p.max_ms,
            a.transactions
                .map_or("-".into(), |(c, ab)| format!("{c:.0} / {ab:.0}"))
        ));
    }
    md.push_str("\nBy kind (p50 / p99 / max, ms):\n\n| mode | fixed-1s | fixed-5s | cascade | sub-second |\n|---|---|---|---|---|\n");
    for a in &e.lateness {
        let cell = |k: &str| {
            a.router.by_kind.get(k).map_or("-".into(), |l| {
                format!("{} / {} / {}", l.p50_ms, l.p99_ms, l.max_ms)
            })
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            a.mode,
            cell("fixed-1s"),
            cell("fixed-5s"),
            cell("cascade"),
            cell("sub-second")
        ));
    }
    md
}

/// One line for the run's summary.
pub fn summary(e: &EosCost) -> String {
    let p = |m: &str| {
        e.lateness
            .iter()
            .find(|a| a.mode == m)
            .map_or(0, |a| a.router.lateness.p99_ms)
    };
    format!(
        "exactly-once throughput ratio {:.2}, p99 at {}/s {} ms against {} ms",
        e.ratio,
        e.rate,
        p("exactly-once"),
        p("at-least-once")
    )
}
