//! Benchmarks a user can rerun: throughput (router vs a bare forwarder),
//! precision across rates (the router and sleep-and-requeue at 1 to 5,000
//! records/s, beside a plain produce-to-consume probe on the same broker),
//! memory with a growing backlog, and Kafka writes per delivered record. All
//! scenarios run against the same broker in one run; results go to `--out` as
//! JSON and a markdown table (plots are drawn from the JSON by scripts/plot.py).
//!
//! Run through `scripts/bench.sh [--quick]`. Environment:
//! - `BENCH_ONLY`: comma list of scenarios: `throughput`, `precision` (router,
//!   probe and sleep-and-requeue at each rate), `precision-router` (router and
//!   probe only), `precision-ids` (records with a `delay-id` beside records
//!   without one, cancellations flowing, see [`precision_ids`]), `baseline`
//!   (sleep-and-requeue only), `memory`,
//!   `cancel-throughput` (the router's drain rate without ids, with ids and 0
//!   or 100k outstanding cancellations), `eos` (throughput and lateness of
//!   `--exactly-once` against at-least-once, see [`eos`]); default all.
//!   `soak` (see [`soak`]; `SOAK_MINUTES`, `SOAK_RATE`) runs only when named,
//!   and alone: it is what `scripts/soak.sh` runs.
//! - `BENCH_RATES` (e.g. `1,10`), `BENCH_SECS` (load seconds per rate),
//!   `BENCH_PROBE_RATE` (probe records/s, default 20).
//! - `BENCH_BROKER`: how to name the broker in the machine line.

mod cancel;
mod child;
mod common;
mod eos;
mod load;
mod memory;
mod precision;
mod precision_ids;
mod reader;
mod report;
mod requeue;
mod soak;
mod throughput;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::precision::RatePlan;
use crate::report::{Precision, RawLateness, Results};

struct Args {
    quick: bool,
    out: PathBuf,
    router_bin: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        quick: false,
        out: PathBuf::from("results"),
        router_bin: PathBuf::from("target/release/kafka-delay-router"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--out" => args.out = PathBuf::from(it.next().context("--out DIR")?),
            "--router-bin" => {
                args.router_bin = PathBuf::from(it.next().context("--router-bin PATH")?)
            }
            other => bail!(
                "unknown argument {other}; usage: bench [--quick] [--out DIR] [--router-bin PATH]"
            ),
        }
    }
    Ok(args)
}

const SCENARIOS: [&str; 8] = [
    "throughput",
    "precision",
    "precision-router",
    "precision-ids",
    "baseline",
    "memory",
    "cancel-throughput",
    "eos",
];

/// The scenarios BENCH_ONLY selects (all when unset); unknown names are an error.
fn selected() -> Result<Vec<String>> {
    let Ok(v) = std::env::var("BENCH_ONLY") else {
        return Ok(SCENARIOS.iter().map(|s| s.to_string()).collect());
    };
    let names: Vec<String> = v
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(bad) = names
        .iter()
        .find(|n| !SCENARIOS.contains(&n.as_str()) && n.as_str() != "soak")
    {
        bail!(
            "BENCH_ONLY: unknown scenario {bad:?}; known: {}, soak",
            SCENARIOS.join(", ")
        );
    }
    if names.len() > 1 && names.iter().any(|n| n == "soak") {
        bail!("BENCH_ONLY: soak runs alone");
    }
    Ok(names)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let only = selected()?;
    let on = |name: &str| only.iter().any(|s| s == name);
    std::fs::create_dir_all(&args.out)?;
    let work = args.out.join("topics");
    std::fs::create_dir_all(&work)?;
    let started = Instant::now();
    if on("soak") {
        let plan = soak::Plan::from_env(args.quick)?;
        let s = soak::run(&work, &args.out, &plan, &args.router_bin).await?;
        println!("{}", soak::summary(&s));
        if !s.ok {
            eprintln!("the soak failed: see the summary line above");
            std::process::exit(1);
        }
        return Ok(());
    }
    let plan = RatePlan::from_env(args.quick)?;

    let throughput = if on("throughput") {
        Some(throughput::run(&work, args.quick).await?)
    } else {
        None
    };
    let router = if on("precision") || on("precision-router") {
        Some(precision::run(&work, &plan, &args.router_bin).await?)
    } else {
        None
    };
    let requeue = if on("precision") || on("baseline") {
        Some(requeue::run(&work, &plan).await?)
    } else {
        None
    };
    if on("precision-ids") {
        let rows = precision_ids::run(&work, &plan, &args.router_bin).await?;
        let md = precision_ids::markdown(&rows);
        println!("Records with a delay-id beside records without one (same run):\n\n{md}");
        std::fs::write(args.out.join("precision_ids.md"), &md)?;
        std::fs::write(
            args.out.join("precision_ids.json"),
            serde_json::to_string_pretty(&rows)?,
        )?;
    }
    let memory = if on("memory") {
        Some(memory::run(&work, args.quick, &args.router_bin).await?)
    } else {
        None
    };

    let cancel_throughput = if on("cancel-throughput") {
        Some(cancel::run(&work, args.quick).await?)
    } else {
        None
    };

    let eos = if on("eos") {
        Some(eos::run(&work, args.quick, &args.router_bin).await?)
    } else {
        None
    };

    let results = Results {
        machine: report::machine(),
        quick: args.quick,
        throughput,
        write_amplification: report::write_amplification(requeue.as_deref().unwrap_or(&[])),
        lateness_ms: RawLateness::collect(
            router.as_deref().unwrap_or(&[]),
            requeue.as_deref().unwrap_or(&[]),
        ),
        precision: Precision {
            rates: plan.rates.clone(),
            tiers_ms: precision::TIERS.to_vec(),
            partitions: precision::PARTITIONS,
            probe_rate: plan.probe_rate,
            mix: report::MIX,
            target_p99_over_probe_ms: precision::P99_OVER_PROBE_MS,
            target_max_ms: precision::MAX_MS,
            requeue_sleep_ms: requeue::SLEEP.as_millis() as u64,
            router,
            requeue,
        },
        memory,
        cancel_throughput,
        seconds: started.elapsed().as_secs_f64(),
    };
    let md = report::markdown(&results);
    println!("{md}");
    std::fs::write(args.out.join("results.md"), &md)?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    std::fs::write(
        args.out.join("lateness_ms.json"),
        serde_json::to_string(&results.lateness_ms)?,
    )?;
    let mut summary = report::summary(&results);
    if let Some(e) = &eos {
        let md = eos::markdown(e);
        println!("{md}");
        std::fs::write(args.out.join("eos.md"), &md)?;
        std::fs::write(args.out.join("eos.json"), serde_json::to_string_pretty(e)?)?;
        summary = format!("{summary}; {}", eos::summary(e));
    }
    println!("{summary}");
    Ok(())
}
