//! `create-topics`: creates the tier and dead-letter topics declared in the
//! topics file, idempotently, and reports drift on topics that already exist
//! (too few partitions, a different retention, a timestamp type other than
//! intended, any other declared config that differs). Never deletes or alters.

use std::collections::BTreeMap;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;

use crate::config::{TopicSpec, TopicsConfig};
use crate::duration::format_ms;
use crate::error::{Error, Result};
use crate::kafka::{KafkaSettings, TracingContext, ADMIN_TIMEOUT};

/// What `create-topics` did and found, one line per topic or problem.
#[derive(Debug, Default)]
pub struct TopicReport {
    /// The report, one line per topic or problem.
    pub lines: Vec<String>,
    /// How many topics were created.
    pub created: usize,
    /// How many settings of existing topics differ from the topics file (one per `DRIFT` line).
    pub drift: usize,
}

impl TopicReport {
    fn line(&mut self, text: String) {
        self.lines.push(text);
    }
}

/// Creates missing topics (or, with `dry_run`, says which it would create) and
/// checks the existing ones against the file.
pub async fn create_topics(
    config: &TopicsConfig,
    kafka: &KafkaSettings,
    dry_run: bool,
) -> Result<TopicReport> {
    let admin: AdminClient<TracingContext> = kafka
        .plain_config()
        .create_with_context(TracingContext)
        .map_err(|e| Error::kafka("creating the admin client", e))?;
    let existing = existing_partitions(&admin)?;
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let mut report = TopicReport::default();
    report.line(format!("targets allowed: {}", config.targets));
    let mut to_check: Vec<&TopicSpec> = Vec::new();
    let mut to_create: Vec<&TopicSpec> = Vec::new();
    for spec in config.all_specs() {
        if existing.contains_key(&spec.topic) {
            to_check.push(spec);
        } else {
            to_create.push(spec);
        }
    }
    for spec in &to_create {
        if dry_run {
            report.line(format!(
                "would create {} (partitions {}, replication factor {}, {})",
                spec.topic,
                spec.partitions,
                spec.replication_factor,
                describe_configs(&spec.configs)
            ));
        }
    }
    if !dry_run && !to_create.is_empty() {
        let new_topics: Vec<NewTopic<'_>> = to_create
            .iter()
            .map(|spec| {
                spec.configs.iter().fold(
                    NewTopic::new(
                        &spec.topic,
                        spec.partitions,
                        TopicReplication::Fixed(spec.replication_factor),
                    ),
                    |t, (k, v)| t.set(k, v),
                )
            })
            .collect();
        let results = admin
            .create_topics(new_topics.iter(), &options)
            .await
            .map_err(|e| Error::kafka("creating topics", e))?;
        for result in results {
            match result {
                Ok(name) => {
                    report.created += 1;
                    let spec = to_create
                        .iter()
                        .find(|s| s.topic == name)
                        .expect("created a declared topic");
                    report.line(format!(
                        "created {name} (partitions {}, replication factor {}, {})",
                        spec.partitions,
                        spec.replication_factor,
                        describe_configs(&spec.configs)
                    ));
                }
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    // Created by someone else meanwhile: check it like any existing topic.
                    if let Some(spec) = to_create.iter().find(|s| s.topic == name) {
                        to_check.push(spec);
                    }
                }
                Err((name, code)) => {
                    return Err(Error::kafka(
                        format!("creating topic {name}"),
                        rdkafka::error::KafkaError::AdminOp(code),
                    ));
                }
            }
        }
    }
    let existing = if to_check.len() > existing.len() {
        existing_partitions(&admin)?
    } else {
        existing
    };
    for spec in to_check {
        check_drift(
            &admin,
            &options,
            config,
            spec,
            existing.get(&spec.topic).copied(),
            &mut report,
        )
        .await?;
    }
    Ok(report)
}

/// Creates plain target topics (3 partitions, the cluster's default
/// replication factor and configs) that do not exist yet.
pub async fn create_target_topics(
    kafka: &KafkaSettings,
    topics: &[String],
    dry_run: bool,
) -> Result<Vec<String>> {
    let admin: AdminClient<TracingContext> = kafka
        .plain_config()
        .create_with_context(TracingContext)
        .map_err(|e| Error::kafka("creating the admin client", e))?;
    let existing = existing_partitions(&admin)?;
    let mut lines = Vec::new();
    let mut missing = Vec::new();
    for t in topics {
        crate::config::validate_topic_name(t).map_err(|problem| Error::Usage {
            flag: "--target-topic".into(),
            problem,
        })?;
        if existing.contains_key(t) {
            lines.push(format!("ok {t}: target exists"));
        } else if dry_run {
            lines.push(format!("would create target {t} (partitions 3)"));
        } else {
            // -1: the cluster's default.replication.factor (Kafka 2.4 and
            // later), not 1: a target is a production topic like any other.
            missing.push(NewTopic::new(t, 3, TopicReplication::Fixed(-1)));
        }
    }
    if !missing.is_empty() {
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        for result in admin
            .create_topics(missing.iter(), &options)
            .await
            .map_err(|e| Error::kafka("creating target topics", e))?
        {
            match result {
                Ok(name) => lines.push(format!("created target {name} (partitions 3)")),
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    lines.push(format!("ok {name}: target exists"))
                }
                Err((name, code)) => {
                    return Err(Error::kafka(
                        format!("creating topic {name}"),
                        rdkafka::error::KafkaError::AdminOp(code),
                    ))
                }
            }
        }
    }
    Ok(lines)
}

fn existing_partitions(admin: &AdminClient<TracingContext>) -> Result<BTreeMap<String, i32>> {
    let metadata = admin
        .inner()
        .fetch_metadata(None, ADMIN_TIMEOUT)
        .map_err(|e| Error::kafka("reading cluster metadata", e))?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
        .collect())
}

async fn check_drift(
    admin: &AdminClient<TracingContext>,
    options: &AdminOptions,
    config: &TopicsConfig,
    spec: &TopicSpec,
    partitions: Option<i32>,
    report: &mut TopicReport,
) -> Result<()> {
    let mut problems = Vec::new();
    let actual_partitions = partitions.unwrap_or(0);
    let is_cancel = config
        .cancel
        .as_ref()
        .is_some_and(|c| c.topic == spec.topic);
    if actual_partitions < spec.partitions {
        problems.push(if is_cancel {
            // A running router finds a new partition within a second, but a
            // cancellation written to it before then can be missed.
            format!(
                "has {actual_partitions} partitions, fewer than the {} declared (the cancel topic's partition count is fixed while routers run: stop every router, add partitions with kafka-topics --alter, then start them)",
                spec.partitions
            )
        } else {
            format!(
                "has {actual_partitions} partitions, fewer than the {} declared (add partitions with kafka-topics --alter)",
                spec.partitions
            )
        });
    }
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(&spec.topic)], options)
        .await
        .map_err(|e| Error::kafka(format!("describing {}", spec.topic), e))?;
    let resource = described
        .into_iter()
        .next()
        .and_then(|r| r.ok())
        .ok_or_else(|| {
            Error::kafka(
                format!("describing {}", spec.topic),
                rdkafka::error::KafkaError::AdminOp(RDKafkaErrorCode::UnknownTopicOrPartition),
            )
        })?;
    let delay_ms = config
        .tiers
        .iter()
        .find(|t| t.spec.topic == spec.topic)
        .map(|t| t.delay_ms);
    for (key, wanted) in &spec.configs {
        let actual = resource.get(key).and_then(|e| e.value.clone());
        if actual.as_deref() == Some(wanted.as_str()) {
            continue;
        }
        let actual_text = actual.clone().unwrap_or_else(|| "unset".into());
        let problem = match key.as_str() {
            "retention.ms" => {
                let actual_ms: Option<i64> = actual.as_deref().and_then(|v| v.parse().ok());
                match (actual_ms, delay_ms) {
                    (Some(a), Some(d)) if a >= 0 && a as u64 <= d => format!(
                        "retention.ms is {a} ({}), not longer than the tier's delay {}: records would be deleted before they are due (declared {wanted})",
                        format_ms(a as u64),
                        format_ms(d)
                    ),
                    _ => format!("retention.ms is {actual_text}, declared {wanted}"),
                }
            }
            "message.timestamp.type" => {
                format!("message.timestamp.type is {actual_text}, intended {wanted}")
            }
            _ => format!("{key} is {actual_text}, declared {wanted}"),
        };
        problems.push(problem);
    }
    if problems.is_empty() {
        let extra = if actual_partitions > spec.partitions {
            format!(
                " ({actual_partitions} partitions, more than the {} declared)",
                spec.partitions
            )
        } else {
            String::new()
        };
        report.line(format!("ok {}: exists as declared{extra}", spec.topic));
    } else {
        for p in problems {
            report.drift += 1;
            report.line(format!("DRIFT {}: {p}", spec.topic));
        }
    }
    Ok(())
}

fn describe_configs(configs: &BTreeMap<String, String>) -> String {
    configs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
