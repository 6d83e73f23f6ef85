//! `status`: the backlog of every tier partition as the router group sees it:
//! records waiting (end offset minus the group's committed offset), the head
//! record at the committed offset with when the router must act on it and how
//! far overdue that is, and which group member owns the partition.
//!
//! Guarantee: it changes nothing. It reads metadata, the group's committed
//! offsets and description, and one record per partition with a consumer that
//! never joins the group and never commits.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::TopicsConfig;
use crate::error::{Error, Result};
use crate::kafka::{KafkaSettings, TracingContext, ADMIN_TIMEOUT};
use crate::partition::{admit, Rules};

mod describe;
mod group;
#[cfg(test)]
mod tests;

use group::owners;
pub use group::{decode_assignment, owners_of, Member, Owners};

/// One tier partition's backlog.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionStatus {
    /// The tier topic.
    pub tier: String,
    /// The partition.
    pub partition: i32,
    /// The group's committed offset (`None`: nothing committed yet; reading starts at `start`).
    pub committed: Option<i64>,
    /// The first offset still in the partition (log start).
    pub start: i64,
    /// The end offset (high watermark).
    pub end: i64,
    /// Records from the committed offset to the end (control records included).
    pub waiting: i64,
    /// The record at the committed offset, if there is one.
    pub head: Option<Head>,
    /// The member that owns it, `client-id@host`, if the group is active.
    pub owner: Option<String>,
}

/// The record at the committed offset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Head {
    /// Its offset.
    pub offset: i64,
    /// When the router must act on it (epoch ms): deliver, forward, or
    /// dead-letter it (at once: `dead_letter` says why).
    pub act_at: i64,
    /// When it must be delivered (epoch ms), if it can be routed.
    pub due_at: Option<i64>,
    /// The dead-letter reason code, if it cannot be routed.
    pub dead_letter: Option<String>,
}

impl Head {
    /// How long it has been waiting past its act time at `now` (0 if not yet).
    pub fn overdue_ms(&self, now: i64) -> i64 {
        (now - self.act_at).max(0)
    }
}

/// A tier's line in the summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TierSummary {
    /// The tier topic.
    pub tier: String,
    /// How many partitions it has.
    pub partitions: usize,
    /// Records waiting in all its partitions.
    pub waiting: i64,
    /// The earliest act time of its heads (epoch ms).
    pub next_act_at: Option<i64>,
    /// Seconds the most overdue head has waited past its act time.
    pub overdue_seconds: f64,
    /// Partitions no member owns (`None`: the broker did not say who owns what).
    pub unowned: Option<usize>,
}

/// The report as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The routers' consumer group.
    pub group: String,
    /// The group's state as the broker reports it (e.g. `Stable`), if known.
    pub group_state: Option<String>,
    /// The group's members, `client-id@host`.
    pub members: Vec<String>,
    /// The topics the routers may deliver to (`targets.allow`).
    pub targets_allowed: Vec<String>,
    /// When the report was made (epoch ms).
    pub now: i64,
    /// One summary line per tier, in declaration order.
    pub tiers: Vec<TierSummary>,
    /// Every tier partition.
    pub partitions: Vec<PartitionStatus>,
}

/// Sums each tier's partitions, in the order the tiers are declared.
pub fn summarize(config: &TopicsConfig, parts: &[PartitionStatus], now: i64) -> Vec<TierSummary> {
    config
        .tiers
        .iter()
        .map(|t| {
            let mine: Vec<&PartitionStatus> =
                parts.iter().filter(|p| p.tier == t.topic()).collect();
            let heads = mine.iter().filter_map(|p| p.head.as_ref());
            TierSummary {
                tier: t.topic().to_string(),
                partitions: mine.len(),
                waiting: mine.iter().map(|p| p.waiting).sum(),
                next_act_at: heads.clone().map(|h| h.act_at).min(),
                overdue_seconds: heads.map(|h| h.overdue_ms(now)).max().unwrap_or(0) as f64
                    / 1000.0,
                unowned: Some(mine.iter().filter(|p| p.owner.is_none()).count()),
            }
        })
        .collect()
}

/// Reads the backlog of every tier partition for `group` (blocking; several
/// round trips to the broker, bounded by `timeout` for the head records).
pub fn collect(
    config: &TopicsConfig,
    kafka: &KafkaSettings,
    group: &str,
    timeout: Duration,
    now: i64,
) -> Result<Report> {
    // Never joins `group`: committed offsets are read by group id, records by assign().
    let consumer: BaseConsumer<TracingContext> = kafka
        .reader_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create_with_context(TracingContext)
        .map_err(|e| Error::kafka("creating the status consumer", e))?;
    let mut tpl = TopicPartitionList::new();
    for tier in &config.tiers {
        let md = consumer
            .fetch_metadata(Some(tier.topic()), ADMIN_TIMEOUT)
            .map_err(|e| Error::kafka(format!("reading metadata of {}", tier.topic()), e))?;
        for t in md.topics().iter().filter(|t| t.name() == tier.topic()) {
            if let Some(e) = t.error() {
                return Err(Error::Fatal(format!(
                    "tier topic {}: {:?} (create the topics with create-topics)",
                    tier.topic(),
                    rdkafka::types::RDKafkaErrorCode::from(e)
                )));
            }
            for p in t.partitions() {
                tpl.add_partition(tier.topic(), p.id());
            }
        }
    }
    let committed = consumer
        .committed_offsets(tpl.clone(), ADMIN_TIMEOUT)
        .map_err(|e| Error::kafka(format!("reading the committed offsets of group {group}"), e))?;
    let owners = owners(&consumer, group);
    let mut parts = Vec::new();
    let mut read_from = TopicPartitionList::new();
    for e in committed.elements() {
        let (low, high) = consumer
            .fetch_watermarks(e.topic(), e.partition(), ADMIN_TIMEOUT)
            .map_err(|err| {
                Error::kafka(
                    format!("reading offsets of {}/{}", e.topic(), e.partition()),
                    err,
                )
            })?;
        let committed = match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        };
        let from = committed.unwrap_or(low).max(low);
        if from < high {
            read_from
                .add_partition_offset(e.topic(), e.partition(), Offset::Offset(from))
                .map_err(|err| Error::kafka("building the read list", err))?;
        }
        parts.push(PartitionStatus {
            tier: e.topic().to_string(),
            partition: e.partition(),
            committed,
            start: low,
            end: high,
            waiting: (high - from).max(0),
            head: None,
            owner: owners.of(e.topic(), e.partition()),
        });
    }
    let heads = read_heads(&consumer, config, read_from, timeout, now)?;
    for p in &mut parts {
        p.head = heads.get(&(p.tier.clone(), p.partition)).cloned();
    }
    let mut tiers = summarize(config, &parts, now);
    if !owners.known {
        for t in &mut tiers {
            t.unowned = None;
        }
    }
    Ok(Report {
        group: group.to_string(),
        group_state: owners.state,
        members: owners.members,
        targets_allowed: config.targets.patterns().to_vec(),
        now,
        tiers,
        partitions: parts,
    })
}

/// Reads the first record from each listed partition (control records are
/// skipped by the consumer), and works out when the router acts on it.
fn read_heads(
    consumer: &BaseConsumer<TracingContext>,
    config: &TopicsConfig,
    from: TopicPartitionList,
    timeout: Duration,
    now: i64,
) -> Result<BTreeMap<(String, i32), Head>> {
    let mut wanted: HashSet<(String, i32)> = from
        .elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect();
    let mut heads = BTreeMap::new();
    if wanted.is_empty() {
        return Ok(heads);
    }
    consumer
        .assign(&from)
        .map_err(|e| Error::kafka("assigning the tier partitions to read their heads", e))?;
    let tiers = config.tier_set();
    let internal = config.internal_topic_names();
    let deadline = Instant::now() + timeout;
    while !wanted.is_empty() && Instant::now() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "reading a head record failed");
                continue;
            }
        };
        let key = (msg.topic().to_string(), msg.partition());
        if !wanted.remove(&key) {
            continue;
        }
        let Some((tier, _)) = config.tier_by_topic(msg.topic()) else {
            continue;
        };
        let timestamp = msg
            .timestamp()
            .to_millis()
            .filter(|t| *t >= 0)
            .unwrap_or(now);
        let rules = Rules {
            tiers: &tiers,
            tier,
            internal: &internal,
            targets: &config.targets,
            max_delay_ms: config.max_delay_ms,
            max_clock_skew_ms: i64::MAX / 4,
            ids: config.cancel.is_some(),
        };
        let head = match admit(&rules, msg.headers(), timestamp, now) {
            Ok(a) => Head {
                offset: msg.offset(),
                act_at: a.ready_at,
                due_at: Some(a.due_at),
                dead_letter: None,
            },
            Err(dl) => Head {
                offset: msg.offset(),
                act_at: timestamp,
                due_at: None,
                dead_letter: Some(dl.reason.code().to_string()),
            },
        };
        heads.insert(key, head);
    }
    if !wanted.is_empty() {
        tracing::warn!(
            missing = wanted.len(),
            "some head records were not read in time"
        );
    }
    Ok(heads)
}

/// The report as a table: a summary line per tier, then one line per partition.
pub fn render(report: &Report) -> String {
    use std::fmt::Write;
    let now = report.now;
    let when = |at: Option<i64>| match at {
        None => "-".to_string(),
        Some(at) if at <= now => {
            format!("due {} ago", crate::duration::format_ms((now - at) as u64))
        }
        Some(at) => format!("in {}", crate::duration::format_ms((at - now) as u64)),
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "group {} ({}), members: {}",
        report.group,
        report.group_state.as_deref().unwrap_or("state unknown"),
        if report.members.is_empty() {
            "none".to_string()
        } else {
            report.members.join(", ")
        }
    );
    let _ = writeln!(
        s,
        "targets allowed: {}",
        if report.targets_allowed.is_empty() {
            "none (every record is dead-lettered as target-not-allowed)".to_string()
        } else {
            report.targets_allowed.join(", ")
        }
    );
    let _ = writeln!(
        s,
        "{:<14} {:>5} {:>10} {:>22} {:>10} {:>8}",
        "TIER", "PARTS", "WAITING", "NEXT HEAD", "OVERDUE", "UNOWNED"
    );
    for t in &report.tiers {
        let _ = writeln!(
            s,
            "{:<14} {:>5} {:>10} {:>22} {:>9.1}s {:>8}",
            t.tier,
            t.partitions,
            t.waiting,
            when(t.next_act_at),
            t.overdue_seconds,
            t.unowned.map_or("?".to_string(), |n| n.to_string())
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<14} {:>4} {:>10} {:>10} {:>8} {:>22} {:>9}  OWNER",
        "TIER", "PART", "COMMITTED", "END", "WAITING", "HEAD", "OVERDUE"
    );
    for p in &report.partitions {
        let head = match &p.head {
            Some(h) if h.dead_letter.is_some() => {
                format!("dead letter ({})", h.dead_letter.as_deref().unwrap_or(""))
            }
            Some(h) => when(Some(h.act_at)),
            None if p.waiting > 0 => "not read".to_string(),
            None => "-".to_string(),
        };
        let overdue = p.head.as_ref().map_or(0, |h| h.overdue_ms(now));
        let _ = writeln!(
            s,
            "{:<14} {:>4} {:>10} {:>10} {:>8} {:>22} {:>8.1}s  {}",
            p.tier,
            p.partition,
            p.committed.map_or("-".to_string(), |c| c.to_string()),
            p.end,
            p.waiting,
            head,
            overdue as f64 / 1000.0,
            p.owner.as_deref().unwrap_or(if report.members.len() > 1 {
                "? (not reported)"
            } else {
                "-"
            })
        );
    }
    s
}
