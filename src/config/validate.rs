//! Validation of a parsed `topics.yaml`: every rule a topics file must meet
//! (names Kafka accepts, delays and retentions that fit, a cancel topic that
//! compacts and outlives `max-delay`, a target allow-list), before anything
//! connects. Guarantee: each error names the file, the key and the fix.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::*;

pub(super) struct Validator {
    pub(super) path: PathBuf,
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

    pub(super) fn validate(&self, raw: RawFile) -> Result<TopicsConfig> {
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
