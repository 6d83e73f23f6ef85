//! `topics.yaml`: the tier topics, the dead-letter topic, the optional cancel
//! topic and the longest delay.
//! Parsing rejects unknown keys; validation runs before any connection and each
//! error names the file, the key and the fix.

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
    pub topic: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub retention_ms: u64,
    /// Every topic config to set, `retention.ms` and `message.timestamp.type` included.
    pub configs: BTreeMap<String, String>,
}

/// One fixed-delay tier: every record in its topic waits `delay_ms` after its timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub delay_ms: u64,
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
    pub path: PathBuf,
    /// Sorted by strictly increasing delay.
    pub tiers: Vec<Tier>,
    pub dead_letter: TopicSpec,
    /// The cancel topic (`cancel:`); `None` turns cancellation off.
    pub cancel: Option<TopicSpec>,
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

struct Validator {
    path: PathBuf,
}

impl Validator {
    fn invalid(
        &self,
        key: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Error {
        Error::ConfigInvalid {
            path: self.path.clone(),
            key: key.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    fn duration(&self, key: &str, value: &str) -> Result<u64> {
        duration::parse_ms(value).map_err(|e| {
            self.invalid(
                key,
                e.to_string(),
                "write a duration with a unit, such as 30s, 10m, 1h or 7d",
            )
        })
    }

    fn validate(&self, raw: RawFile) -> Result<TopicsConfig> {
        if raw.tiers.is_empty() {
            return Err(self.invalid(
                "tiers",
                "no tiers are declared",
                "declare at least one tier, e.g. `- {topic: delay-1s, delay: 1s}`",
            ));
        }
        let mut tiers = Vec::with_capacity(raw.tiers.len());
        let mut previous: Option<(String, u64)> = None;
        for (i, rt) in raw.tiers.into_iter().enumerate() {
            let key = format!("tiers[{i}]");
            let delay_text = rt.delay.clone().ok_or_else(|| {
                self.invalid(
                    format!("{key}.delay"),
                    "missing",
                    "give each tier its delay, e.g. `delay: 30s`",
                )
            })?;
            let delay_ms = self.duration(&format!("{key}.delay"), &delay_text)?;
            if delay_ms == 0 {
                return Err(self.invalid(
                    format!("{key}.delay"),
                    "a tier delay must be longer than zero",
                    "use a delay of at least 1ms",
                ));
            }
            if let Some((prev_topic, prev_ms)) = &previous {
                if delay_ms <= *prev_ms {
                    return Err(self.invalid(
                        format!("{key}.delay"),
                        format!(
                            "{} is not longer than the previous tier's {} ({prev_topic}); delays must be strictly increasing",
                            duration::format_ms(delay_ms),
                            duration::format_ms(*prev_ms)
                        ),
                        "list the tiers from the shortest delay to the longest, each delay once",
                    ));
                }
            }
            let spec = self.topic_spec(&key, rt, Some(delay_ms))?;
            previous = Some((spec.topic.clone(), delay_ms));
            tiers.push(Tier { delay_ms, spec });
        }
        if raw.dead_letter.delay.is_some() {
            return Err(self.invalid(
                "dead-letter.delay",
                "the dead-letter topic has no delay",
                "remove `delay` from `dead-letter`",
            ));
        }
        let dead_letter = self.topic_spec("dead-letter", raw.dead_letter, None)?;
        let max_delay_ms = match &raw.max_delay {
            Some(text) => self.duration("max-delay", text)?,
            None => DEFAULT_MAX_DELAY_MS,
        };
        let cancel = match raw.cancel {
            Some(rc) => Some(self.cancel_spec(rc, max_delay_ms)?),
            None => None,
        };

        let mut seen = BTreeSet::new();
        for (key, topic) in tiers
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("tiers[{i}].topic"), t.spec.topic.as_str()))
            .chain(std::iter::once((
                "dead-letter.topic".to_string(),
                dead_letter.topic.as_str(),
            )))
            .chain(
                cancel
                    .iter()
                    .map(|c| ("cancel.topic".to_string(), c.topic.as_str())),
            )
        {
            if !seen.insert(topic) {
                return Err(self.invalid(
                    key,
                    format!("topic {topic:?} is declared twice"),
                    "give every tier, the dead-letter topic and the cancel topic its own topic",
                ));
            }
        }

        let smallest = tiers[0].delay_ms;
        if max_delay_ms < smallest {
            return Err(self.invalid(
                "max-delay",
                format!(
                    "{} is shorter than the smallest tier ({})",
                    duration::format_ms(max_delay_ms),
                    duration::format_ms(smallest)
                ),
                "raise max-delay or remove it (default 7d)",
            ));
        }
        let targets = self.targets(raw.targets)?;
        Ok(TopicsConfig {
            path: self.path.clone(),
            tiers,
            dead_letter,
            cancel,
            max_delay_ms,
            targets,
        })
    }

    /// The target allow-list, required: without one the router would write
    /// to any topic a producer names, with its own rights.
    fn targets(&self, raw: Option<RawTargets>) -> Result<TargetAllowList> {
        let Some(raw) = raw else {
            return Err(self.invalid(
                "targets",
                "missing: without it the router would deliver to any topic a producer names in \
                 delay-target, with the router's own write rights (a confused deputy)",
                "list the topics the router may deliver to, exact names or `*` patterns, e.g. \
                 `targets: {allow: [orders.reminders, 'billing.*']}`; `allow: ['*']` keeps \
                 delivering anywhere, knowingly",
            ));
        };
        TargetAllowList::new(raw.allow).map_err(|problem| {
            self.invalid(
                "targets.allow",
                problem,
                "list topic names, with `*` for any run of characters, e.g. `'billing.*'`",
            )
        })
    }

    /// The cancel topic: compacted (one record per id) and deleted after its
    /// retention, which must cover `max-delay` (default `max-delay` plus a day),
    /// so that a reader starting from the beginning sees every cancellation
    /// that can still matter.
    fn cancel_spec(&self, mut rc: RawTopic, max_delay_ms: u64) -> Result<TopicSpec> {
        if rc.delay.is_some() {
            return Err(self.invalid(
                "cancel.delay",
                "the cancel topic has no delay",
                "remove `delay` from `cancel`",
            ));
        }
        let default_retention = rc.retention.is_none();
        if default_retention {
            rc.retention = Some(duration::format_ms(
                max_delay_ms + CANCEL_RETENTION_MARGIN_MS,
            ));
        }
        let mut spec = self.topic_spec("cancel", rc, None)?;
        if spec.retention_ms < max_delay_ms {
            return Err(self.invalid(
                "cancel.retention",
                format!(
                    "retention {} is shorter than max-delay {}: a cancellation could be deleted before the record it cancels is due",
                    duration::format_ms(spec.retention_ms),
                    duration::format_ms(max_delay_ms)
                ),
                "raise the retention to at least max-delay, or remove it (default max-delay plus 1d)",
            ));
        }
        match spec.configs.get("cleanup.policy").map(String::as_str) {
            None => {
                spec.configs
                    .insert("cleanup.policy".into(), CANCEL_CLEANUP_POLICY.into());
            }
            Some(p) if p.split(',').any(|x| x.trim() == "compact") => {}
            Some(p) => {
                return Err(self.invalid(
                    "cancel.configs.cleanup.policy",
                    format!("{p:?} does not compact: the topic would keep every cancellation ever written until its retention"),
                    format!("remove cleanup.policy (default {CANCEL_CLEANUP_POLICY})"),
                ))
            }
        }
        Ok(spec)
    }

    fn topic_spec(&self, key: &str, rt: RawTopic, delay_ms: Option<u64>) -> Result<TopicSpec> {
        if let Err(problem) = validate_topic_name(&rt.topic) {
            return Err(self.invalid(
                format!("{key}.topic"),
                problem,
                "use 1 to 249 characters from a-z A-Z 0-9 . _ -",
            ));
        }
        let partitions = rt.partitions.unwrap_or(DEFAULT_PARTITIONS);
        if partitions < 1 {
            return Err(self.invalid(
                format!("{key}.partitions"),
                format!("{partitions} partitions"),
                "use at least 1",
            ));
        }
        let replication_factor = rt.replication_factor.unwrap_or(DEFAULT_REPLICATION);
        if replication_factor < 1 {
            return Err(self.invalid(
                format!("{key}.replication-factor"),
                format!("replication factor {replication_factor}"),
                "use at least 1 (3 on a production cluster)",
            ));
        }
        let retention_ms = match &rt.retention {
            Some(text) => self.duration(&format!("{key}.retention"), text)?,
            None => DEFAULT_RETENTION_MS,
        };
        if let Some(delay_ms) = delay_ms {
            if retention_ms <= delay_ms {
                return Err(self.invalid(
                    format!("{key}.retention"),
                    format!(
                        "retention {} is not longer than the tier's delay {}: records would be deleted before they are due",
                        duration::format_ms(retention_ms),
                        duration::format_ms(delay_ms)
                    ),
                    "set a retention well above the delay, long enough to cover a router outage (default 7d)",
                ));
            }
        }
        let mut configs = BTreeMap::new();
        for (name, value) in rt.configs {
            let ckey = format!("{key}.configs.{name}");
            let text = match value {
                serde_yaml::Value::String(s) => s,
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::Bool(b) => b.to_string(),
                _ => {
                    return Err(self.invalid(
                        ckey,
                        "a topic config must be a string, number or boolean",
                        "write the value as Kafka expects it, e.g. `min.insync.replicas: 2`",
                    ))
                }
            };
            match name.as_str() {
                "retention.ms" => {
                    return Err(self.invalid(
                        ckey,
                        "retention is set with the `retention` key",
                        format!(
                            "remove it and write `retention: {}` beside `topic`",
                            duration::format_ms(text.parse().unwrap_or(DEFAULT_RETENTION_MS))
                        ),
                    ))
                }
                "cleanup.policy" if delay_ms.is_some() && text.contains("compact") => {
                    return Err(self.invalid(
                        ckey,
                        "a compacted tier would drop waiting records that share a key",
                        "remove cleanup.policy or set it to delete",
                    ))
                }
                "message.timestamp.type" if text != "CreateTime" && text != "LogAppendTime" => {
                    return Err(self.invalid(
                        ckey,
                        format!("unknown timestamp type {text:?}"),
                        "use CreateTime or LogAppendTime",
                    ))
                }
                _ => {}
            }
            configs.insert(name, text);
        }
        configs.insert("retention.ms".to_string(), retention_ms.to_string());
        if delay_ms.is_some() {
            configs
                .entry("message.timestamp.type".to_string())
                .or_insert_with(|| DEFAULT_TIMESTAMP_TYPE.to_string());
        }
        Ok(TopicSpec {
            topic: rt.topic,
            partitions,
            replication_factor,
            retention_ms,
            configs,
        })
    }
}

/// Checks a topic name the way Kafka does: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("the topic name is empty".into());
    }
    if name.len() > 249 {
        return Err(format!(
            "the topic name is {} characters long (Kafka allows 249)",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a legal topic name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("the topic name {name:?} contains {c:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
tiers:
  - {topic: delay-1s, delay: 1s, partitions: 3}
  - {topic: delay-5s, delay: 5s}
  - topic: delay-1h
    delay: 1h
    retention: 2d
    configs:
      min.insync.replicas: 2
      compression.type: lz4
dead-letter:
  topic: delay-dlq
  retention: 14d
max-delay: 3d
targets: {allow: ['*']}
"#;

    fn err(text: &str) -> String {
        TopicsConfig::parse("t.yaml", text).unwrap_err().to_string()
    }

    #[test]
    fn the_cancel_topic_is_optional_compacted_and_outlives_max_delay() {
        let c = TopicsConfig::parse("t.yaml", GOOD).unwrap();
        assert!(c.cancel.is_none());
        assert_eq!(c.all_specs().count(), 4);
        let base = "tiers: [{topic: a, delay: 1s}]\ndead-letter: {topic: d}\nmax-delay: 2d\ntargets: {allow: ['*']}\n";
        let c = TopicsConfig::parse(
            "t.yaml",
            &format!("{base}cancel: {{topic: delay-cancel, partitions: 3}}\n"),
        )
        .unwrap();
        let spec = c.cancel.as_ref().unwrap();
        assert_eq!(spec.partitions, 3);
        assert_eq!(spec.retention_ms, 3 * 86_400_000);
        assert_eq!(spec.configs["cleanup.policy"], "compact,delete");
        assert_eq!(spec.configs["retention.ms"], "259200000");
        assert!(!spec.configs.contains_key("message.timestamp.type"));
        assert!(c.internal_topics().contains("delay-cancel"));
        assert_eq!(c.all_specs().last().unwrap().topic, "delay-cancel");
        let c = TopicsConfig::parse(
            "t.yaml",
            &format!(
                "{base}cancel: {{topic: c, retention: 2d, configs: {{cleanup.policy: compact}}}}\n"
            ),
        )
        .unwrap();
        assert_eq!(c.cancel.unwrap().configs["cleanup.policy"], "compact");
        for (extra, key) in [
            ("cancel: {topic: c, retention: 1d}", "cancel.retention"),
            ("cancel: {topic: c, delay: 1s}", "cancel.delay"),
            (
                "cancel: {topic: c, configs: {cleanup.policy: delete}}",
                "cancel.configs.cleanup.policy",
            ),
            ("cancel: {topic: d}", "cancel.topic"),
            ("cancel: {topic: a}", "cancel.topic"),
            ("cancel: {topic: c, partitions: 0}", "cancel.partitions"),
        ] {
            let e = err(&format!("{base}{extra}\n"));
            assert!(e.contains(key) && e.contains("fix:"), "{extra}: {e}");
        }
    }

    #[test]
    fn parses_a_full_file_with_defaults() {
        let c = TopicsConfig::parse("t.yaml", GOOD).unwrap();
        assert_eq!(c.tiers.len(), 3);
        assert_eq!(c.tiers[0].delay_ms, 1_000);
        assert_eq!(c.tiers[0].spec.partitions, 3);
        assert_eq!(c.tiers[1].spec.partitions, DEFAULT_PARTITIONS);
        assert_eq!(c.tiers[1].spec.retention_ms, DEFAULT_RETENTION_MS);
        assert_eq!(c.tiers[2].spec.configs["retention.ms"], "172800000");
        assert_eq!(c.tiers[2].spec.configs["min.insync.replicas"], "2");
        assert_eq!(
            c.tiers[2].spec.configs["message.timestamp.type"],
            "CreateTime"
        );
        assert!(!c.dead_letter.configs.contains_key("message.timestamp.type"));
        assert_eq!(c.max_delay_ms, 3 * 86_400_000);
        assert_eq!(c.tier_set().delays(), &[1_000, 5_000, 3_600_000]);
        assert_eq!(c.internal_topics().len(), 4);
    }

    #[test]
    fn the_shipped_topics_file_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/topics.yaml");
        let c = TopicsConfig::load(path).unwrap();
        let names: Vec<_> = c.tiers.iter().map(|t| t.topic().to_string()).collect();
        assert_eq!(
            names,
            [
                "delay-1s",
                "delay-5s",
                "delay-30s",
                "delay-1m",
                "delay-10m",
                "delay-1h"
            ]
        );
        assert_eq!(c.dead_letter.topic, "delay-dlq");
        assert_eq!(c.max_delay_ms, DEFAULT_MAX_DELAY_MS);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let e = err("tiers: [{topic: a, delay: 1s, partitons: 3}]\ndead-letter: {topic: d}\n");
        assert!(e.contains("partitons"), "{e}");
        assert!(e.contains("t.yaml"), "{e}");
        let e = err("tiers: [{topic: a, delay: 1s}]\ndead-letter: {topic: d}\nmax_delay: 1d\n");
        assert!(e.contains("max_delay"), "{e}");
    }

    #[test]
    fn delays_must_strictly_increase() {
        let e =
            err("tiers: [{topic: a, delay: 5s}, {topic: b, delay: 5s}]\ndead-letter: {topic: d}\n");
        assert!(
            e.contains("tiers[1].delay") && e.contains("strictly increasing"),
            "{e}"
        );
        let e =
            err("tiers: [{topic: a, delay: 5s}, {topic: b, delay: 1s}]\ndead-letter: {topic: d}\n");
        assert!(e.contains("tiers[1].delay"), "{e}");
    }

    #[test]
    fn retention_must_exceed_the_delay() {
        let e = err("tiers: [{topic: a, delay: 1h, retention: 1h}]\ndead-letter: {topic: d}\n");
        assert!(
            e.contains("tiers[0].retention") && e.contains("before they are due"),
            "{e}"
        );
        let e = err(
            "tiers: [{topic: a, delay: 1h, configs: {retention.ms: 5}}]\ndead-letter: {topic: d}\n",
        );
        assert!(e.contains("tiers[0].configs.retention.ms"), "{e}");
    }

    #[test]
    fn duplicate_topics_are_rejected() {
        let e =
            err("tiers: [{topic: a, delay: 1s}, {topic: a, delay: 2s}]\ndead-letter: {topic: d}\n");
        assert!(e.contains("tiers[1].topic") && e.contains("twice"), "{e}");
        let e = err("tiers: [{topic: a, delay: 1s}]\ndead-letter: {topic: a}\n");
        assert!(e.contains("dead-letter.topic"), "{e}");
    }

    #[test]
    fn other_mistakes_name_their_key() {
        let cases = [
            ("tiers: []\ndead-letter: {topic: d}\n", "`tiers`"),
            ("tiers: [{topic: a}]\ndead-letter: {topic: d}\n", "tiers[0].delay"),
            ("tiers: [{topic: a, delay: 0s}]\ndead-letter: {topic: d}\n", "tiers[0].delay"),
            ("tiers: [{topic: a, delay: 10}]\ndead-letter: {topic: d}\n", "tiers[0].delay"),
            ("tiers: [{topic: 'a b', delay: 1s}]\ndead-letter: {topic: d}\n", "tiers[0].topic"),
            ("tiers: [{topic: a, delay: 1s, partitions: 0}]\ndead-letter: {topic: d}\n", "tiers[0].partitions"),
            ("tiers: [{topic: a, delay: 1s, replication-factor: 0}]\ndead-letter: {topic: d}\n", "tiers[0].replication-factor"),
            ("tiers: [{topic: a, delay: 1s, configs: {cleanup.policy: compact}}]\ndead-letter: {topic: d}\n", "cleanup.policy"),
            ("tiers: [{topic: a, delay: 1s, configs: {message.timestamp.type: Foo}}]\ndead-letter: {topic: d}\n", "message.timestamp.type"),
            ("tiers: [{topic: a, delay: 1s, configs: {x: [1]}}]\ndead-letter: {topic: d}\n", "configs.x"),
            ("tiers: [{topic: a, delay: 1s}]\ndead-letter: {topic: d, delay: 1s}\n", "dead-letter.delay"),
            ("tiers: [{topic: a, delay: 1m}]\ndead-letter: {topic: d}\nmax-delay: 1s\n", "max-delay"),
            ("tiers: [{topic: a, delay: 1m}]\ndead-letter: {topic: ''}\n", "dead-letter.topic"),
        ];
        for (text, key) in cases {
            let e = err(text);
            assert!(e.contains(key) && e.contains("fix:"), "{text:?} gave {e}");
        }
    }

    #[test]
    fn missing_file_names_the_path() {
        let e = TopicsConfig::load("/nonexistent/topics.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/topics.yaml"), "{e}");
    }

    #[test]
    fn tiers_are_selected_by_delay_or_topic() {
        let c = TopicsConfig::parse("t.yaml", GOOD).unwrap();
        assert_eq!(c.select_tiers(&[]).unwrap(), vec![0, 1, 2]);
        assert_eq!(
            c.select_tiers(&["1h".into(), "delay-1s".into()]).unwrap(),
            vec![0, 2]
        );
        assert!(c
            .select_tiers(&["2s".into()])
            .unwrap_err()
            .to_string()
            .contains("delay-1s (1s)"));
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_x-y").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("a/b").is_err());
        assert!(validate_topic_name("é").is_err());
        assert!(validate_topic_name(&"a".repeat(250)).is_err());
        assert!(validate_topic_name(&"a".repeat(249)).is_ok());
    }
}
