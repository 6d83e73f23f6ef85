//! The producing side: one idempotent producer shared by all partition tasks
//! (in exactly-once mode each task has its own, see [`crate::exactly_once`]),
//! a cache of which target topics exist (the router never creates topics), and
//! the classification of produce errors into permanent, transient and fatal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::future_producer::DeliveryFuture;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::dead_letter::Reason;
use crate::error::{Error, Result};
use crate::kafka::{KafkaSettings, TracingContext};

/// How long a topic seen to exist is trusted before it is looked up again.
const EXISTS_TTL: Duration = Duration::from_secs(300);
/// How long a topic seen to be missing is trusted before it is looked up again.
const MISSING_TTL: Duration = Duration::from_secs(1);
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The producer and what it knows about target topics.
pub struct Sink {
    settings: KafkaSettings,
    /// The current producer and its generation; replaced when it became unusable.
    current: RwLock<(u64, Output)>,
    topics: Mutex<HashMap<String, (bool, Instant)>>,
    /// Topics a lookup ever found: one that then goes missing is more likely
    /// a metadata blip or a partition move than a deletion.
    existed: Mutex<std::collections::HashSet<String>>,
    /// One lookup at a time: records waiting for the same unknown topic share its answer.
    lookups: tokio::sync::Mutex<()>,
}

/// What a failed produce means for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The record can never be written there: dead-letter it with this reason.
    Permanent(Reason),
    /// Try again later (broker down, timeouts, full queue).
    Transient,
    /// The producer is unusable (fenced, or an idempotence sequence broke):
    /// replace it ([`Sink::replace`]) and produce again.
    Fatal,
}

impl Sink {
    /// Creates the producer from `settings` (the router's producer defaults, then `-X`), with an empty target-topic cache.
    pub fn new(settings: &KafkaSettings) -> Result<Self> {
        let producer = Self::create(settings)?;
        Ok(Sink {
            settings: settings.clone(),
            current: RwLock::new((0, producer)),
            topics: Mutex::new(HashMap::new()),
            existed: Mutex::new(Default::default()),
            lookups: tokio::sync::Mutex::new(()),
        })
    }

    fn create(settings: &KafkaSettings) -> Result<Output> {
        settings
            .producer_config()
            .create_with_context(TracingContext)
            .map_err(|e| Error::kafka("creating the producer", e))
    }

    /// The current producer (a cheap handle).
    pub fn producer(&self) -> Output {
        self.current().1
    }

    /// The current producer with its generation, for [`Sink::replace`].
    pub fn current(&self) -> (u64, Output) {
        self.current.read().expect("producer lock").clone()
    }

    /// Replaces the producer of `generation`, which failed for good (fenced by
    /// the broker, or its idempotence state broke), with a new one; does
    /// nothing if that one was replaced already. Records in flight on the old
    /// producer fail and are produced again (at-least-once: duplicates possible).
    pub fn replace(&self, generation: u64) -> Result<bool> {
        let mut current = self.current.write().expect("producer lock");
        if current.0 != generation {
            return Ok(false);
        }
        let fresh = Self::create(&self.settings)?;
        let old = std::mem::replace(&mut *current, (generation + 1, fresh));
        drop(current);
        // Dropping a producer waits for its queue: not on the caller's thread.
        std::thread::spawn(move || drop(old));
        tracing::warn!(
            generation = generation + 1,
            "replaced the producer after a fatal error"
        );
        Ok(true)
    }

    /// Whether the topic exists, if known and fresh.
    pub fn cached_topic(&self, topic: &str) -> Option<bool> {
        let topics = self.topics.lock().expect("topic cache lock");
        topics.get(topic).and_then(|(exists, at)| {
            let ttl = if *exists { EXISTS_TTL } else { MISSING_TTL };
            (at.elapsed() < ttl).then_some(*exists)
        })
    }

    /// Whether a lookup ever found this topic.
    pub fn existed(&self, topic: &str) -> bool {
        self.existed
            .lock()
            .expect("topic cache lock")
            .contains(topic)
    }

    /// Forgets what is known about a topic, e.g. after the broker said it is unknown.
    pub fn forget_topic(&self, topic: &str) {
        self.topics.lock().expect("topic cache lock").remove(topic);
    }

    /// Whether a topic exists: from the cache while fresh, otherwise asked of
    /// the cluster without blocking the async runtime.
    pub async fn lookup_topic(
        self: &Arc<Self>,
        topic: &str,
    ) -> std::result::Result<bool, KafkaError> {
        if let Some(known) = self.cached_topic(topic) {
            return Ok(known);
        }
        let _one_at_a_time = self.lookups.lock().await;
        // Another record may have looked it up while this one waited.
        if let Some(known) = self.cached_topic(topic) {
            return Ok(known);
        }
        let sink = self.clone();
        let name = topic.to_string();
        let exists = tokio::task::spawn_blocking(move || {
            let metadata = sink
                .producer()
                .client()
                .fetch_metadata(Some(&name), LOOKUP_TIMEOUT)?;
            let entry = metadata.topics().iter().find(|t| t.name() == name);
            // A target the router may not even describe: Kafka answers as if
            // it did not exist, with an authorization error. It is refused,
            // not missing (dead-lettered as target-unauthorized, not waited for).
            if let Some(code) = entry.and_then(|t| t.error()) {
                let code = RDKafkaErrorCode::from(code);
                if code == RDKafkaErrorCode::TopicAuthorizationFailed {
                    return Err(KafkaError::MetadataFetch(code));
                }
            }
            Ok::<_, KafkaError>(
                entry.is_some_and(|t| t.error().is_none() && !t.partitions().is_empty()),
            )
        })
        .await
        .map_err(|_| KafkaError::Canceled)??;
        self.topics
            .lock()
            .expect("topic cache lock")
            .insert(topic.to_string(), (exists, Instant::now()));
        if exists {
            self.existed
                .lock()
                .expect("topic cache lock")
                .insert(topic.to_string());
        }
        Ok(exists)
    }

    /// Waits until everything handed to the producer was acknowledged or failed.
    pub fn flush(&self, timeout: Duration) -> std::result::Result<(), KafkaError> {
        self.producer().flush(timeout)
    }
}

/// The producer records go out through: the shared one of [`Sink`], or in
/// exactly-once mode the partition's own transactional one.
pub type Output = FutureProducer<TracingContext>;

/// Hands a record to a producer without waiting; the future resolves with
/// the broker's acknowledgement (acks=all) or the final error.
pub fn send(
    producer: &Output,
    topic: &str,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: OwnedHeaders,
    timestamp_ms: i64,
) -> std::result::Result<DeliveryFuture, KafkaError> {
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
        .headers(headers)
        .timestamp(timestamp_ms);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(v) = value {
        record = record.payload(v);
    }
    producer.send_result(record).map_err(|(e, _)| e)
}

/// Sorts a produce error into what the router does next.
pub fn classify(error: &KafkaError) -> Failure {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(C::MessageSizeTooLarge | C::MessageBatchTooLarge | C::InvalidMessageSize) => {
            Failure::Permanent(Reason::RecordTooLarge)
        }
        Some(C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition) => {
            Failure::Permanent(Reason::TargetNotFound)
        }
        Some(C::TopicAuthorizationFailed) => Failure::Permanent(Reason::TargetUnauthorized),
        Some(C::InvalidTopic) => Failure::Permanent(Reason::InvalidTarget),
        Some(
            C::InvalidRecord
            | C::InvalidMessage
            | C::PolicyViolation
            | C::UnsupportedForMessageFormat,
        ) => Failure::Permanent(Reason::Rejected),
        // The idempotent producer was fenced (a broker rejected its epoch after a
        // bump): it can never write again; a new producer takes over.
        Some(C::Fatal | C::ProducerFenced | C::InvalidProducerEpoch) => Failure::Fatal,
        _ => Failure::Transient,
    }
}

/// A short label for a produce error, for the `producer_errors_total` metric.
pub fn error_label(error: &KafkaError) -> String {
    match error.rdkafka_error_code() {
        Some(code) => format!("{code:?}"),
        None => "other".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_sorted_by_what_helps() {
        let e = |c| KafkaError::MessageProduction(c);
        assert_eq!(
            classify(&e(RDKafkaErrorCode::MessageSizeTooLarge)),
            Failure::Permanent(Reason::RecordTooLarge)
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::UnknownTopicOrPartition)),
            Failure::Permanent(Reason::TargetNotFound)
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::UnknownTopic)),
            Failure::Permanent(Reason::TargetNotFound)
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::TopicAuthorizationFailed)),
            Failure::Permanent(Reason::TargetUnauthorized)
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::MessageTimedOut)),
            Failure::Transient
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::QueueFull)),
            Failure::Transient
        );
        assert_eq!(classify(&e(RDKafkaErrorCode::Fatal)), Failure::Fatal);
        assert_eq!(
            classify(&e(RDKafkaErrorCode::ProducerFenced)),
            Failure::Fatal
        );
        assert_eq!(classify(&KafkaError::Canceled), Failure::Transient);
        assert_eq!(error_label(&e(RDKafkaErrorCode::QueueFull)), "QueueFull");
    }
}
