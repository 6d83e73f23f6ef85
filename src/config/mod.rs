//! `topics.yaml`: the tier topics, the dead-letter topic, the optional cancel
//! topic and the longest delay.
//! Parsing rejects unknown keys; validation (`validate`) runs before any
//! connection and each error names the file, the key and the fix.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::delay::TierSet;
use crate::duration;
use crate::error::{Error, Result};
use crate::targets::TargetAllowList;

/// Longest delay accepted when `max-delay` is not given: 7 days.
pub const DEFAULT_MAX_DELAY_MS: u64 = 7 * 86_400_000;
/// Retention of a topic when `retention` is not given: 7 days.
pub const DEFAULT_RETENTION_MS: u64 = 7 * 86_400_000;
const DEFAULT_PARTITIONS: i32 = 6;
const DEFAULT_REPLICATION: i32 = 1;
/// How much longer than `max-delay` the cancel topic keeps records unless `retention` says otherwise.
pub const CANCEL_RETENTION_MARGIN_MS: u64 = 86_400_000;
/// The cancel topic's cleanup policy unless `configs` says otherwise: one record
/// per id (compaction), and none older than the retention (deletion).
pub const CANCEL_CLEANUP_POLICY: &str = "compact,delete";
/// The timestamp type the tier topics are created with unless `configs` says otherwise.
pub const DEFAULT_TIMESTAMP_TYPE: &str = "CreateTime";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFile {
    tiers: Vec<RawTopic>,
    dead_letter: RawTopic,
    cancel: Option<RawTopic>,
    max_delay: Option<String>,
    targets: Option<RawTargets>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawTargets {
    allow: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawTopic {
    topic: String,
    delay: Option<String>,
    partitions: Option<i32>,
    replication_factor: Option<i32>,
    retention: Option<String>,
    #[serde(default)]
    configs: BTreeMap<String, serde_yaml::Value>,
}

/// How one topic is to be created and what the router expects of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// The topic's name.
    pub topic: String,
    /// Its partition count.
    pub partitions: i32,
    /// Its replication factor.
    pub replication_factor: i32,
    /// Its `retention.ms` (also in `configs`).
    pub retention_ms: u64,
    /// Every topic config to set, `retention.ms` and `message.timestamp.type` included.
    pub configs: BTreeMap<String, String>,
}

/// One fixed-delay tier: every record in its topic waits `delay_ms` after its timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    /// How long a record waits in this tier, after its timestamp (ms).
    pub delay_ms: u64,
    /// The tier's topic.
    pub spec: TopicSpec,
}

impl Tier {
    /// The tier's topic, also its label in metrics.
    pub fn topic(&self) -> &str {
        &self.spec.topic
    }
}

/// The validated contents of a topics file.
#[derive(Debug, Clone)]
pub struct TopicsConfig {
    /// The file it was read from (named in errors).
    pub path: PathBuf,
    /// Sorted by strictly increasing delay.
    pub tiers: Vec<Tier>,
    /// The dead-letter topic (`dead-letter:`).
    pub dead_letter: TopicSpec,
    /// The cancel topic (`cancel:`); `None` turns cancellation off.
    pub cancel: Option<TopicSpec>,
    /// The longest delay accepted (`max-delay`, ms): a record due further ahead is dead-lettered.
    pub max_delay_ms: u64,
    /// The topics the router may deliver to (`targets.allow`).
    pub targets: TargetAllowList,
}

impl TopicsConfig {
    /// Reads and validates a topics file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates topics-file text; `path` is only used in messages.
    pub fn parse(path: impl AsRef<Path>, text: &str) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let raw: RawFile = serde_yaml::from_str(text).map_err(|e| Error::ConfigSyntax {
            path: path.clone(),
            message: format!(
                "{e}; fix: the file takes `tiers` (topic, delay, partitions, replication-factor, retention, configs), `dead-letter` (the same without delay), optionally `cancel` (the same without delay), `max-delay` and `targets` (`allow`: the topics the router may deliver to)"
            ),
        })?;
        Validator { path }.validate(raw)
    }

    /// The tiers' delays, for the delay arithmetic.
    pub fn tier_set(&self) -> TierSet {
        TierSet::new(self.tiers.iter().map(|t| t.delay_ms).collect())
            .expect("validated tiers are strictly increasing and non-empty")
    }

    /// Every topic the router reads or writes besides targets: the tiers, the
    /// dead-letter topic and the cancel topic when there is one.
    pub fn internal_topics(&self) -> BTreeSet<&str> {
        self.all_specs().map(|s| s.topic.as_str()).collect()
    }

    /// [`TopicsConfig::internal_topics`], owned: what a record may never target.
    pub fn internal_topic_names(&self) -> std::collections::HashSet<String> {
        self.internal_topics()
            .into_iter()
            .map(String::from)
            .collect()
    }

    /// Every topic spec, tiers first, then the dead-letter topic, then the cancel topic.
    pub fn all_specs(&self) -> impl Iterator<Item = &TopicSpec> {
        self.tiers
            .iter()
            .map(|t| &t.spec)
            .chain(std::iter::once(&self.dead_letter))
            .chain(self.cancel.iter())
    }

    /// The tier with the given topic name.
    pub fn tier_by_topic(&self, topic: &str) -> Option<(usize, &Tier)> {
        self.tiers
            .iter()
            .enumerate()
            .find(|(_, t)| t.topic() == topic)
    }

    /// Selects tiers by delay (`1s`) or topic name (`delay-1s`), for `run --tiers`.
    pub fn select_tiers(&self, wanted: &[String]) -> Result<Vec<usize>> {
        if wanted.is_empty() {
            return Ok((0..self.tiers.len()).collect());
        }
        let mut out = Vec::new();
        for w in wanted {
            let by_delay = duration::parse_ms(w).ok();
            let found = self
                .tiers
                .iter()
                .position(|t| t.topic() == w || Some(t.delay_ms) == by_delay);
            match found {
                Some(i) if !out.contains(&i) => out.push(i),
                Some(_) => {}
                None => {
                    return Err(Error::Usage {
                        flag: "--tiers".into(),
                        problem: format!(
                            "{w:?} is neither a tier delay nor a tier topic in {}; tiers are {}",
                            self.path.display(),
                            self.tiers
                                .iter()
                                .map(|t| format!(
                                    "{} ({})",
                                    t.topic(),
                                    duration::format_ms(t.delay_ms)
                                ))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    })
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }
}

mod validate;
pub use validate::validate_topic_name;
use validate::Validator;

#[cfg(test)]
mod tests;
