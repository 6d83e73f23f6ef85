//! Memory against backlog: the router's resident memory while 0, 100k and 1M
//! records of 512 B wait in the 1h tier, a fresh router process per level. The
//! router runs with topics.yaml's tier delays (1s up to 1h), as deployed: the
//! smallest tier is read ahead by design (a sub-second record in it may be due
//! before its head), so a backlog parked in it would be measured as held.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use kafka_delay_router::headers::TARGET;
use kafka_delay_router::kafka::now_ms;
use kafka_delay_router::TopicsConfig;
use serde::Serialize;

use crate::child::RouterProcess;
use crate::common::{load_producer, make_topics, metric_sum, metrics_text, produce_all, rss_kib};
use crate::common::{topics_file, Load};

const PARTITIONS: i32 = 6;

#[derive(Debug, Clone, Serialize)]
pub struct MemoryPoint {
    pub waiting: usize,
    pub rss_mib: f64,
    pub records_held: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub points: Vec<MemoryPoint>,
    pub growth_mib: f64,
    pub growth_mib_per_1m: f64,
    /// `measured` when the run reached 1M waiting records, else `extrapolated`.
    pub per_1m_method: &'static str,
}

pub async fn run(dir: &Path, quick: bool, router_bin: &Path) -> Result<Memory> {
    let levels: &[usize] = if quick {
        &[0, 20_000, 100_000]
    } else {
        &[0, 100_000, 1_000_000]
    };
    let prefix = format!("bench-mem-{}", now_ms());
    let delays = TopicsConfig::load("topics.yaml")?
        .tier_set()
        .delays()
        .to_vec();
    let config = make_topics(dir, &prefix, &delays, PARTITIONS, &[]).await?;
    let Some(hour) = config.tiers.iter().find(|t| t.delay_ms == 3_600_000) else {
        anyhow::bail!("topics.yaml has no 1h tier");
    };
    let tier = hour.topic().to_string();
    let p = load_producer()?;
    let value = vec![b'v'; 512];
    let mut loaded = 0usize;
    let mut points = Vec::new();
    for &level in levels {
        let add = level - loaded;
        produce_all(
            &p,
            (loaded..level).map(|i| Load {
                topic: &tier,
                key: format!("k{i}").into_bytes(),
                value: &value,
                headers: vec![(TARGET, b"bench-never".to_vec())],
                timestamp: now_ms(),
            }),
        )
        .await?;
        loaded = level;
        let router = RouterProcess::start(
            router_bin,
            &topics_file(dir, &prefix),
            &format!("{prefix}-g{level}"),
            None,
        )?;
        // With records waiting every 1h partition pauses on its head; without,
        // every partition of every tier is assigned.
        let (family, want) = if level > 0 {
            ("kafka_delay_router_partitions_paused", PARTITIONS)
        } else {
            (
                "kafka_delay_router_partitions_assigned",
                PARTITIONS * delays.len() as i32,
            )
        };
        if let Err(e) = router
            .wait_metric(family, f64::from(want), Duration::from_secs(60))
            .await
        {
            eprintln!("memory: {e}; measuring anyway");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut rss = 0;
        for _ in 0..5 {
            rss = rss.max(rss_kib(router.pid()).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let held = metrics_text(&router.addr)
            .await
            .map_or(-1.0, |t| metric_sum(&t, "kafka_delay_router_records_held"));
        router.stop().await?;
        let rss_mib = rss as f64 / 1024.0;
        eprintln!(
            "memory: {level} waiting (+{add}): router RSS {rss_mib:.1} MiB, records held {held}"
        );
        points.push(MemoryPoint {
            waiting: level,
            rss_mib,
            records_held: held,
        });
    }
    let rss = |i: usize| points[i].rss_mib;
    let n = points.len();
    let max_level = *levels.last().expect("levels") as f64;
    // Growth per 1M waiting records: measured directly when the run reaches 1M;
    // otherwise the cost of the first backlog (fetch buffers, paid once) plus the
    // slope between the two largest backlogs, extrapolated to 1M.
    let measured = max_level >= 1_000_000.0;
    let per_1m = if measured {
        (rss(n - 1) - rss(0)) * 1_000_000.0 / max_level
    } else {
        let slope = (rss(n - 1) - rss(n - 2)) / (levels[n - 1] - levels[n - 2]) as f64;
        (rss(1) - rss(0)) + slope.max(0.0) * (1_000_000.0 - levels[1] as f64)
    };
    Ok(Memory {
        growth_mib: rss(n - 1) - rss(0),
        growth_mib_per_1m: per_1m,
        per_1m_method: if measured { "measured" } else { "extrapolated" },
        points,
    })
}
