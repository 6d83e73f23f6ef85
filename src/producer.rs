//! The library's producer API: `DelayProducer::send(target, key, value, when)`
//! picks the tier for the delay, sets `delay-target` and `delay-deliver-at`, and
//! returns once the broker acknowledged the record in its tier.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureProducer;

use crate::config::{validate_topic_name, TopicsConfig};
use crate::delay::TierSet;
use crate::error::{Error, Result};
use crate::headers;
use crate::kafka::{now_ms, KafkaSettings, TracingContext};
use crate::sink::Sink;

/// When a record is to be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// This long after it is sent.
    After(Duration),
    /// At this wall-clock time.
    At(SystemTime),
    /// At this time, in Unix epoch milliseconds.
    AtMs(i64),
}

/// Where a record went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub tier_topic: String,
    pub deliver_at_ms: i64,
    pub partition: i32,
    pub offset: i64,
}

/// Produces delayed records into the right tier.
#[derive(Clone)]
pub struct DelayProducer {
    sink: Arc<Sink>,
    config: Arc<TopicsConfig>,
    tiers: TierSet,
}

impl DelayProducer {
    /// Refuses `-X` settings that break its guarantees (acks other than all,
    /// idempotence off) unless allowed with [`KafkaSettings::allow_unsafe`],
    /// which it then warns about.
    pub fn new(kafka: &KafkaSettings, config: TopicsConfig) -> Result<Self> {
        crate::router::warn_unsafe(&kafka.check_guarantees(crate::kafka::Guarded::Producer)?);
        Ok(DelayProducer {
            sink: Arc::new(Sink::new(kafka)?),
            tiers: config.tier_set(),
            config: Arc::new(config),
        })
    }

    /// The underlying librdkafka producer.
    pub fn producer(&self) -> FutureProducer<TracingContext> {
        self.sink.producer()
    }

    /// The entry tier topic and the absolute due time for a record sent at `now_ms`.
    pub fn route(&self, when: When, now_ms: i64) -> Result<(&str, i64)> {
        let deliver_at = match when {
            When::After(d) => {
                now_ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            }
            When::At(t) => match t.duration_since(UNIX_EPOCH) {
                Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
                Err(_) => 0,
            },
            When::AtMs(ms) => ms.max(0),
        };
        let delay = deliver_at.saturating_sub(now_ms).max(0);
        if delay as u64 > self.config.max_delay_ms {
            return Err(Error::DelayTooLong {
                requested_ms: delay,
                max_ms: self.config.max_delay_ms as i64,
            });
        }
        let tier = self.tiers.entry_tier(delay as u64);
        Ok((self.config.tiers[tier].topic(), deliver_at))
    }

    /// Sends one record to be delivered to `target` at `when`, with extra headers.
    pub async fn send(
        &self,
        target: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        extra_headers: &[(String, Vec<u8>)],
        when: When,
    ) -> Result<Sent> {
        validate_topic_name(target).map_err(|problem| Error::Usage {
            flag: "target".into(),
            problem,
        })?;
        if self.config.internal_topics().contains(target) {
            return Err(Error::Usage {
                flag: "target".into(),
                problem: format!("{target:?} is a tier or the dead-letter topic"),
            });
        }
        let now = now_ms();
        let (tier_topic, deliver_at) = self.route(when, now)?;
        let deliver_at_text = deliver_at.to_string();
        let mut h = OwnedHeaders::new_with_capacity(extra_headers.len() + 2);
        for (k, v) in extra_headers {
            h = h.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        h = h
            .insert(Header {
                key: headers::TARGET,
                value: Some(target),
            })
            .insert(Header {
                key: headers::DELIVER_AT,
                value: Some(&deliver_at_text),
            });
        let fut = crate::sink::send(&self.sink.producer(), tier_topic, key, value, h, now)
            .map_err(|e| Error::kafka(format!("producing to {tier_topic}"), e))?;
        let delivery = fut
            .await
            .map_err(|_| Error::kafka("producing", rdkafka::error::KafkaError::Canceled))?
            .map_err(|(e, _)| Error::kafka(format!("producing to {tier_topic}"), e))?;
        Ok(Sent {
            tier_topic: tier_topic.to_string(),
            deliver_at_ms: deliver_at,
            partition: delivery.partition,
            offset: delivery.offset,
        })
    }

    /// Waits until everything sent was acknowledged or failed.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.sink
            .flush(timeout)
            .map_err(|e| Error::kafka("flushing the producer", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn producer() -> DelayProducer {
        let config =
            TopicsConfig::load(concat!(env!("CARGO_MANIFEST_DIR"), "/topics.yaml")).unwrap();
        // Creating a producer does not connect; nothing is sent in these tests.
        DelayProducer::new(&KafkaSettings::new("127.0.0.1:1"), config).unwrap()
    }

    #[test]
    fn picks_the_largest_tier_that_fits() {
        let p = producer();
        assert_eq!(
            p.route(When::After(Duration::from_secs(95 * 60)), 1_000)
                .unwrap(),
            ("delay-1h", 1_000 + 5_700_000)
        );
        assert_eq!(
            p.route(When::After(Duration::from_secs(7)), 0).unwrap().0,
            "delay-5s"
        );
        assert_eq!(
            p.route(When::After(Duration::from_millis(300)), 0)
                .unwrap()
                .0,
            "delay-1s"
        );
        assert_eq!(p.route(When::AtMs(5), 10).unwrap(), ("delay-1s", 5));
    }

    #[test]
    fn refuses_delays_past_the_maximum() {
        let p = producer();
        let e = p
            .route(When::After(Duration::from_secs(8 * 86_400)), 0)
            .unwrap_err();
        assert!(matches!(e, Error::DelayTooLong { .. }), "{e}");
    }
}
