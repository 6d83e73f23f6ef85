//! `watch`: reads a target topic from a point in time and prints each record
//! with its due time (from `delay-deliver-at`) and how late it arrived. Used by
//! the quickstart and handy for operators checking a delivery path.

use std::time::{Duration, Instant, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{Error, Result};
use crate::headers;
use crate::kafka::{now_ms, KafkaSettings, TracingContext, ADMIN_TIMEOUT};

/// One record seen by `watch`.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// The partition it was read from.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its value.
    pub value: Option<Vec<u8>>,
    /// Its `delay-deliver-at` (epoch ms), if present and valid.
    pub deliver_at: Option<i64>,
    /// When it was read (epoch ms, the watcher's clock).
    pub arrived_ms: i64,
}

impl Arrival {
    /// Arrival minus due time, when the record carries `delay-deliver-at`.
    pub fn lateness_ms(&self) -> Option<i64> {
        self.deliver_at.map(|d| self.arrived_ms - d)
    }

    /// One line for people: partition, offset, key, due time, arrival, lateness and the value (shortened).
    pub fn describe(&self) -> String {
        let text = |b: &Option<Vec<u8>>| {
            b.as_deref()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_else(|| "null".into())
        };
        let due = self
            .deliver_at
            .map(format_time)
            .unwrap_or_else(|| "-".into());
        let late = self
            .lateness_ms()
            .map(|l| format!("{l:+} ms"))
            .unwrap_or_else(|| "-".into());
        format!(
            "p{}@{} key={} due={} arrived={} lateness={} value={}",
            self.partition,
            self.offset,
            text(&self.key),
            due,
            format_time(self.arrived_ms),
            late,
            headers::shorten(&text(&self.value))
        )
    }
}

/// Formats epoch milliseconds as RFC 3339 UTC with milliseconds.
pub fn format_time(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Reads `topic` from records stamped at or after `since_ms`, calling `each`
/// per record, until `count` records were seen or `timeout` passed.
pub fn watch(
    kafka: &KafkaSettings,
    topic: &str,
    since_ms: i64,
    count: Option<usize>,
    timeout: Duration,
    mut each: impl FnMut(&Arrival),
) -> Result<Vec<Arrival>> {
    let consumer: BaseConsumer<TracingContext> = kafka
        .reader_config()
        .set("group.id", "kafka-delay-router-watch")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create_with_context(TracingContext)
        .map_err(|e| Error::kafka("creating the watch consumer", e))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
        .map_err(|e| Error::kafka(format!("reading metadata of {topic}"), e))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(Error::MissingTopics {
            topics: vec![topic.to_string()],
        });
    }
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Offset(since_ms))
            .map_err(|e| Error::kafka("building the assignment", e))?;
    }
    let start = consumer
        .offsets_for_times(tpl, ADMIN_TIMEOUT)
        .map_err(|e| Error::kafka(format!("finding offsets of {topic} at {since_ms}"), e))?;
    let mut assignment = TopicPartitionList::new();
    for e in start.elements() {
        let offset = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::End,
        };
        assignment
            .add_partition_offset(topic, e.partition(), offset)
            .map_err(|e| Error::kafka("building the assignment", e))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| Error::kafka(format!("assigning {topic}"), e))?;
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while count.is_none_or(|c| seen.len() < c) && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(50)) {
            None => {}
            Some(Err(e)) => tracing::warn!(error = %e, "watch consumer error"),
            Some(Ok(m)) => {
                let arrived_ms = now_ms();
                let deliver_at = headers::last(m.headers(), headers::DELIVER_AT)
                    .and_then(|v| headers::parse_epoch_ms(v).ok());
                let a = Arrival {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    deliver_at,
                    arrived_ms,
                };
                each(&a);
                seen.push(a);
            }
        }
    }
    Ok(seen)
}
