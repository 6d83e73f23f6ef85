//! The library's producer API: `DelayProducer::send(target, key, value, when)`
//! picks the tier for the delay, sets `delay-target` and `delay-deliver-at`, and
//! returns once the broker acknowledged the record in its tier;
//! `cancel(id, until)` writes a cancellation to the cancel topic and
//! `reschedule` cancels an id and sends its replacement, in that order.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, Producer};

use crate::cancel;
use crate::config::{validate_topic_name, TopicSpec, TopicsConfig};
use crate::delay::TierSet;
use crate::error::{Error, Result};
use crate::headers;
use crate::kafka::{now_ms, KafkaSettings, TracingContext};
use crate::sink::Sink;

/// The value of the cancellations this producer writes: any value but null
/// (a null value withdraws a cancellation).
pub const CANCEL_VALUE: &[u8] = b"cancel";

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
    /// The tier topic it was written to.
    pub tier_topic: String,
    /// When it is due (epoch ms), as written to `delay-deliver-at`.
    pub deliver_at_ms: i64,
    /// The partition of the tier topic.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
}

/// Where a cancellation went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    /// The cancel topic.
    pub topic: String,
    /// When the routers may forget it (epoch ms).
    pub until_ms: i64,
    /// The partition of the cancel topic.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// When the broker's acknowledgement arrived (epoch ms): a record with the
    /// id due after this is never forwarded or delivered.
    pub acked_ms: i64,
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

    /// Asks the cluster for the tier topics' metadata, waiting up to
    /// `timeout`: an unreachable cluster, a refused login or TLS handshake
    /// fail here at once rather than after the message timeout (60 s) of a
    /// first send. The command line calls it before producing or cancelling.
    pub async fn check_connection(&self, timeout: Duration) -> Result<()> {
        let producer = self.sink.producer();
        let topic = self.config.tiers[0].topic().to_string();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map(|_| ())
                .map_err(|e| Error::kafka(format!("reaching the cluster (metadata of {topic})"), e))
        })
        .await
        .map_err(|e| Error::Usage {
            flag: "produce".into(),
            problem: format!("the metadata task failed: {e}"),
        })?
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
        let now = now_ms();
        let (tier_topic, deliver_at) = self.check_send(target, extra_headers, when, now)?;
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

    /// What `send` refuses before producing anything: a bad target, a bad
    /// `delay-id` header, a delay past `max-delay`.
    fn check_send(
        &self,
        target: &str,
        extra_headers: &[(String, Vec<u8>)],
        when: When,
        now: i64,
    ) -> Result<(&str, i64)> {
        validate_topic_name(target).map_err(|problem| Error::Usage {
            flag: "target".into(),
            problem,
        })?;
        if self.config.internal_topics().contains(target) {
            return Err(Error::Usage {
                flag: "target".into(),
                problem: format!("{target:?} is a tier, the dead-letter or the cancel topic"),
            });
        }
        if !self.config.targets.allows(target) {
            return Err(Error::Usage {
                flag: "target".into(),
                problem: format!(
                    "{target:?} is not in the targets.allow list of {} ({}): the router would \
                     dead-letter it as target-not-allowed; add it there (and to every router's \
                     topics.yaml) if the router may deliver to it",
                    self.config.path.display(),
                    self.config.targets
                ),
            });
        }
        for (k, v) in extra_headers {
            if k == cancel::ID_HEADER {
                cancel::check_id(Some(v)).map_err(|r| Error::Usage {
                    flag: cancel::ID_HEADER.into(),
                    problem: r.detail,
                })?;
            }
        }
        self.route(when, now)
    }

    /// The cancel topic, or why there is none.
    fn cancel_spec(&self) -> Result<&TopicSpec> {
        self.config
            .cancel
            .as_ref()
            .ok_or_else(|| Error::CancelDisabled {
                path: self.config.path.clone(),
            })
    }

    /// Checks a cancellation and works out its expiry: `until`, or `max-delay` from now.
    pub fn cancel_until(&self, id: &[u8], until: Option<When>, now_ms: i64) -> Result<i64> {
        let spec = self.cancel_spec()?;
        cancel::check_id(Some(id)).map_err(|r| Error::Usage {
            flag: "id".into(),
            problem: r.detail,
        })?;
        let until_ms = match until {
            None => now_ms.saturating_add(self.config.max_delay_ms as i64),
            Some(When::After(d)) => {
                now_ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            }
            Some(When::At(t)) => t
                .duration_since(UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0),
            Some(When::AtMs(ms)) => ms.max(0),
        };
        if until_ms <= now_ms {
            return Err(Error::Usage {
                flag: "until".into(),
                problem:
                    "the time is not in the future, so the cancellation would be forgotten at once"
                        .into(),
            });
        }
        let latest = now_ms.saturating_add(spec.retention_ms as i64);
        if until_ms > latest {
            return Err(Error::Usage {
                flag: "until".into(),
                problem: format!(
                    "{} ms from now, past the retention of {} ({} ms): routers refuse it",
                    until_ms - now_ms,
                    spec.topic,
                    spec.retention_ms
                ),
            });
        }
        Ok(until_ms)
    }

    /// Cancels every record with header `delay-id` = `id` not yet forwarded or
    /// delivered, until `until` (default `max-delay` from now); returns once the
    /// broker acknowledged the cancellation. Needs a cancel topic in the topics file.
    pub async fn cancel(&self, id: &[u8], until: Option<When>) -> Result<Cancelled> {
        let now = now_ms();
        let until_ms = self.cancel_until(id, until, now)?;
        let topic = self.cancel_spec()?.topic.clone();
        let until_text = until_ms.to_string();
        let h = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: cancel::UNTIL_HEADER,
            value: Some(&until_text),
        });
        let fut = crate::sink::send(
            &self.sink.producer(),
            &topic,
            Some(id),
            Some(CANCEL_VALUE),
            h,
            now,
        )
        .map_err(|e| Error::kafka(format!("producing to {topic}"), e))?;
        let delivery = fut
            .await
            .map_err(|_| Error::kafka("producing", rdkafka::error::KafkaError::Canceled))?
            .map_err(|(e, _)| Error::kafka(format!("producing to {topic}"), e))?;
        Ok(Cancelled {
            topic,
            until_ms,
            partition: delivery.partition,
            offset: delivery.offset,
            acked_ms: now_ms(),
        })
    }

    /// Reschedules: cancels `old_id`, then (once that is acknowledged) sends the
    /// new record as [`DelayProducer::send`] does. Everything is checked before
    /// the cancellation is written; the new record may carry its own `delay-id`
    /// but not `old_id`, which it would cancel. If the send fails after the
    /// cancellation, the old record stays cancelled: send the new one again.
    pub async fn reschedule(
        &self,
        old_id: &[u8],
        target: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        extra_headers: &[(String, Vec<u8>)],
        when: When,
    ) -> Result<(Cancelled, Sent)> {
        let now = now_ms();
        self.cancel_until(old_id, None, now)?;
        self.check_send(target, extra_headers, when, now)?;
        let reused = extra_headers
            .iter()
            .rev()
            .find(|(k, _)| k == cancel::ID_HEADER)
            .is_some_and(|(_, v)| v.as_slice() == old_id);
        if reused {
            return Err(Error::Usage {
                flag: cancel::ID_HEADER.into(),
                problem: "the new record carries the id being cancelled, so the cancellation would drop it too; give it a new id".into(),
            });
        }
        let cancelled = self.cancel(old_id, None).await?;
        let sent = self.send(target, key, value, extra_headers, when).await?;
        Ok((cancelled, sent))
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

    fn cancelling_producer() -> DelayProducer {
        let config = TopicsConfig::parse(
            "c.yaml",
            "tiers: [{topic: t1, delay: 1s}]\ndead-letter: {topic: dlq}\nmax-delay: 1h\ncancel: {topic: cx, retention: 2h}\ntargets: {allow: ['orders*']}\n",
        )
        .unwrap();
        DelayProducer::new(&KafkaSettings::new("127.0.0.1:1"), config).unwrap()
    }

    #[test]
    fn cancellations_get_a_checked_expiry() {
        let p = cancelling_producer();
        assert_eq!(p.cancel_until(b"o-1", None, 1_000).unwrap(), 3_601_000);
        assert_eq!(
            p.cancel_until(b"o-1", Some(When::After(Duration::from_secs(5))), 1_000)
                .unwrap(),
            6_000
        );
        assert_eq!(
            p.cancel_until(b"o-1", Some(When::AtMs(9_000)), 1_000)
                .unwrap(),
            9_000
        );
        for (id, until) in [
            (&b""[..], None),
            (&[b'x'; 256][..], None),
            (b"o", Some(When::AtMs(1_000))),
            (b"o", Some(When::After(Duration::from_secs(3 * 3600)))),
        ] {
            let e = p.cancel_until(id, until, 1_000).unwrap_err();
            assert!(matches!(e, Error::Usage { .. }), "{e}");
        }
        let e = producer().cancel_until(b"o", None, 0).unwrap_err();
        assert!(matches!(e, Error::CancelDisabled { .. }), "{e}");
        assert!(
            e.to_string().contains("cancel: {topic: delay-cancel"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_reschedule_is_checked_before_anything_is_written() {
        let p = cancelling_producer();
        let reuse = [(cancel::ID_HEADER.to_string(), b"old".to_vec())];
        let e = p
            .reschedule(b"old", "orders", None, None, &reuse, When::AtMs(0))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("new id"), "{e}");
        let e = p
            .reschedule(b"old", "cx", None, None, &[], When::AtMs(0))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("cancel topic"), "{e}");
        let long = [(cancel::ID_HEADER.to_string(), vec![b'n'; 256])];
        let e = p
            .send("orders", None, None, &long, When::AtMs(0))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("longer than 255"), "{e}");
        // A target outside targets.allow: refused before anything is written,
        // naming the file and the list.
        for target in ["payments", "order"] {
            let e = p
                .send(target, None, None, &[], When::AtMs(0))
                .await
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("targets.allow") && e.contains("c.yaml") && e.contains("orders*"),
                "{e}"
            );
        }
        let e = p
            .reschedule(b"old", "payments", None, None, &[], When::AtMs(0))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("targets.allow"), "{e}");
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
