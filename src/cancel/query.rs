//! The cancel topic's queries shared by the reader and the sampler (its
//! partition count, its end offsets) and the log throttle both use.
//! Guarantees: an answer is complete or an error, never a partial list.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{Error, Result};
use crate::kafka::TracingContext;

/// How long one metadata or end-offset request may take.
pub(super) const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// The clients that read or query the cancel topic.
pub(super) type Reading = BaseConsumer<TracingContext>;

pub(super) fn partition_count(consumer: &Reading, topic: &str) -> Result<usize> {
    let md = consumer
        .fetch_metadata(Some(topic), QUERY_TIMEOUT)
        .map_err(|e| Error::kafka(format!("reading metadata of {topic}"), e))?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .sum())
}

/// The end offsets of `latest`'s partitions (each at [`Offset::End`]), in
/// partition order, from one ListOffsets request per leader.
pub(super) fn end_offsets_of(
    consumer: &Reading,
    topic: &str,
    latest: TopicPartitionList,
) -> Result<Vec<i64>> {
    let answer = consumer
        .offsets_for_times(latest, QUERY_TIMEOUT)
        .map_err(|e| Error::kafka(format!("reading the end offsets of {topic}"), e))?;
    let mut ends = Vec::with_capacity(answer.count());
    for e in answer.elements() {
        e.error().map_err(|err| {
            Error::kafka(
                format!("reading the end offset of {topic} [{}]", e.partition()),
                err,
            )
        })?;
        match e.offset() {
            Offset::Offset(end) => ends.push(end),
            other => {
                return Err(Error::kafka(
                    format!(
                        "reading the end offset of {topic} [{}]: the answer was {other:?}",
                        e.partition()
                    ),
                    rdkafka::error::KafkaError::OffsetFetch(
                        rdkafka::types::RDKafkaErrorCode::NoOffset,
                    ),
                ))
            }
        }
    }
    Ok(ends)
}

/// At most one log line per period; says how many were left out since.
pub(super) struct Throttle {
    period: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::every(Duration::from_secs(1))
    }
}

impl Throttle {
    pub(super) fn every(period: Duration) -> Self {
        Throttle {
            period,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(left out since the last line)` when a line may be written now.
    pub(super) fn allow(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < self.period) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Runs `query` again while it fails with an error that passes once a
/// partition's leadership has settled, pausing `pause` between tries, for at
/// most `patience`; any other error, or the last one, is returned.
pub(super) fn patiently<T>(
    patience: Duration,
    pause: Duration,
    mut query: impl FnMut() -> rdkafka::error::KafkaResult<T>,
) -> rdkafka::error::KafkaResult<T> {
    use rdkafka::types::RDKafkaErrorCode as Code;
    let deadline = Instant::now() + patience;
    loop {
        let e = match query() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let transient = matches!(
            e.rdkafka_error_code(),
            Some(
                Code::NotLeaderForPartition
                    | Code::LeaderNotAvailable
                    | Code::UnknownTopicOrPartition
                    | Code::FencedLeaderEpoch
                    | Code::UnknownLeaderEpoch
                    | Code::OperationTimedOut
                    | Code::RequestTimedOut
                    | Code::BrokerTransportFailure
                    | Code::BrokerNotAvailable
            )
        );
        if !transient || Instant::now() + pause >= deadline {
            return Err(e);
        }
        tracing::warn!(error = %e, "the cancel topic's offsets: retrying while its leaders settle");
        std::thread::sleep(pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode;

    #[test]
    fn start_up_queries_wait_out_a_leader_change_and_nothing_else() {
        // Kafka answered NotLeaderForPartition for a cancel-topic partition
        // just created on a three-node cluster: the router exited at start.
        let mut calls = 0;
        let answer = patiently(Duration::from_secs(5), Duration::from_millis(1), || {
            calls += 1;
            if calls < 3 {
                Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::NotLeaderForPartition,
                ))
            } else {
                Ok((0i64, 7i64))
            }
        });
        assert_eq!(answer.unwrap(), (0, 7));
        assert_eq!(calls, 3);

        // A refusal is not waited out.
        let mut calls = 0;
        let refused: rdkafka::error::KafkaResult<()> =
            patiently(Duration::from_secs(5), Duration::from_millis(1), || {
                calls += 1;
                Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::TopicAuthorizationFailed,
                ))
            });
        assert!(refused.is_err());
        assert_eq!(calls, 1);

        // A leader that never settles: the error, once the patience is spent.
        let started = Instant::now();
        let gave_up: rdkafka::error::KafkaResult<()> =
            patiently(Duration::from_millis(50), Duration::from_millis(5), || {
                Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::LeaderNotAvailable,
                ))
            });
        assert_eq!(
            gave_up.unwrap_err().rdkafka_error_code(),
            Some(RDKafkaErrorCode::LeaderNotAvailable)
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
