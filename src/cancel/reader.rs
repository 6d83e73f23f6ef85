//! The cancel-topic reader: a thread of its own that reads every partition of
//! the cancel topic from the beginning (assigned, outside any group, nothing
//! committed), applies each record to the view, sweeps expired entries, and
//! every 50 ms samples the end offsets to move `fresh_until` forward.
//! Guarantees: a record counts as read only once it is in the view (or was
//! refused); at the cap it waits for expiries and the view stops getting
//! fresher instead of dropping anything; errors are logged and retried, never
//! a panic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::decode::{decode, Cancellation, Rules, UNTIL_HEADER};
use super::fresh::Freshness;
use super::store::Insert;
use super::Cancellations;
use crate::error::{Error, Result};
use crate::headers;
use crate::kafka::{now_ms, KafkaSettings, TracingContext};
use crate::metrics::Metrics;

/// How often the end offsets are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// How often expired cancellations are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How long one metadata or end-offset request may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Records handled in one go before the loop samples and checks again.
const BATCH: usize = 2_000;
/// How long the start-up offset queries retry an answer that says a
/// partition's leadership is moving (a broker failing over, a topic just
/// created): the router then starts instead of exiting.
const START_PATIENCE: Duration = Duration::from_secs(30);

type Reading = BaseConsumer<TracingContext>;

/// Creates the consumer, assigns every partition from its start and starts the thread.
pub(super) fn spawn(
    topic: &str,
    kafka: &KafkaSettings,
    rules: Rules,
    view: Arc<Cancellations>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> Result<()> {
    let consumer: Reading = kafka
        .reader_config()
        .set("group.id", "kafka-delay-router-cancel-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "20")
        // Only committed cancellations count (a transaction's cancellations
        // count once it commits); set after -X, which cannot change it.
        .set("isolation.level", "read_committed")
        .create_with_context(TracingContext)
        .map_err(|e| Error::kafka("creating the cancel-topic reader", e))?;
    // The end offsets are sampled read_uncommitted: the high watermark, past
    // any open transaction. At read_committed the answer would be the last
    // stable offset, and a transaction left open would hold it below later,
    // ordinary cancellations that the reader then counts as read.
    let sampler: Reading = kafka
        .reader_config()
        .set("group.id", "kafka-delay-router-cancel-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted")
        .create_with_context(TracingContext)
        .map_err(|e| Error::kafka("creating the cancel-topic end-offset sampler", e))?;
    let partitions = partition_count(&consumer, topic)?;
    if partitions == 0 {
        return Err(Error::MissingTopics {
            topics: vec![topic.to_string()],
        });
    }
    let mut starts = Vec::with_capacity(partitions);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        let (low, _) = patiently(START_PATIENCE, Duration::from_millis(200), || {
            consumer.fetch_watermarks(topic, p, QUERY_TIMEOUT)
        })
        .map_err(|e| Error::kafka(format!("reading the offsets of {topic} [{p}]"), e))?;
        starts.push(low.max(0));
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(|e| Error::kafka("building the cancel-topic assignment", e))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| Error::kafka(format!("assigning {topic}"), e))?;
    tracing::info!(topic, partitions, "reading the cancel topic");
    let mut reader = Reader {
        consumer,
        sampler,
        topic: topic.to_string(),
        rules,
        view,
        metrics,
        fresh: Freshness::new(starts),
        pending: None,
        last_sample: None,
        last_sweep: Instant::now(),
        refusals: Throttle::default(),
        errors: Throttle::default(),
        full: Throttle::every(Duration::from_secs(10)),
    };
    std::thread::Builder::new()
        .name("cancel-reader".into())
        .spawn(move || reader.run(stop))
        .map_err(|e| Error::Fatal(format!("cannot start the cancel-topic reader: {e}")))?;
    Ok(())
}

fn partition_count(consumer: &Reading, topic: &str) -> Result<usize> {
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

/// A cancellation read while the view was full, applied once there is room.
struct Pending {
    id: Vec<u8>,
    until_ms: i64,
    partition: usize,
    offset: i64,
}

struct Reader {
    consumer: Reading,
    /// Asks for end offsets at read_uncommitted: the high watermarks.
    sampler: Reading,
    topic: String,
    rules: Rules,
    view: Arc<Cancellations>,
    metrics: Arc<Metrics>,
    fresh: Freshness,
    pending: Option<Pending>,
    last_sample: Option<Instant>,
    last_sweep: Instant,
    refusals: Throttle,
    errors: Throttle,
    full: Throttle,
}

impl Reader {
    fn run(&mut self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            if self.last_sweep.elapsed() >= SWEEP_EVERY || self.pending.is_some() {
                self.sweep();
            }
            if let Some(p) = self.pending.take() {
                if !self.apply_pending(p) {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            let due = self.last_sample.is_none_or(|t| t.elapsed() >= SAMPLE_EVERY);
            if self.fresh.wants_sample() && due {
                self.sample();
            }
            self.sync_positions();
            if let Some(t) = self.fresh.check() {
                self.view.set_fresh_until(t);
            }
            let timeout = match self.last_sample {
                Some(t) if self.fresh.wants_sample() => SAMPLE_EVERY.saturating_sub(t.elapsed()),
                _ => Duration::from_millis(20),
            };
            self.read_batch(timeout.max(Duration::from_millis(1)));
        }
        tracing::debug!(topic = %self.topic, "cancel-topic reader stopped");
    }

    fn read_batch(&mut self, timeout: Duration) {
        let mut wait = timeout;
        for _ in 0..BATCH {
            let consumer = &self.consumer;
            match consumer.poll(wait) {
                None => break,
                Some(Err(e)) => {
                    self.metrics
                        .consumer_errors
                        .with_label_values(&["cancel-topic"])
                        .inc();
                    if let Some(more) = self.errors.allow() {
                        tracing::warn!(topic = %self.topic, error = %e, suppressed = more, "cancel-topic reader error");
                    }
                    break;
                }
                Some(Ok(m)) => {
                    let pending = handle(
                        &m,
                        self.rules,
                        &self.view,
                        &self.metrics,
                        &mut self.fresh,
                        &mut self.refusals,
                    );
                    if pending.is_some() {
                        self.pending = pending;
                        break;
                    }
                }
            }
            wait = Duration::ZERO;
        }
        self.metrics
            .cancellations_outstanding
            .set(self.view.len() as i64);
    }

    fn apply_pending(&mut self, p: Pending) -> bool {
        if self.view.cancel(&p.id, p.until_ms, now_ms()) == Insert::Full {
            if let Some(more) = self.full.allow() {
                tracing::error!(
                    topic = %self.topic,
                    partition = p.partition,
                    offset = p.offset,
                    limit = self.view.cap(),
                    suppressed = more,
                    "the cancel view is full (--max-cancellations): reading the cancel topic waits for cancellations to expire, and records with a delay-id due after now wait with it; raise --max-cancellations"
                );
            }
            self.pending = Some(p);
            return false;
        }
        self.fresh.read(p.partition, p.offset + 1);
        true
    }

    fn sweep(&mut self) {
        let left = self.view.sweep(now_ms());
        self.metrics.cancellations_outstanding.set(left as i64);
        self.last_sweep = Instant::now();
    }

    /// The consumer's own positions also move past offsets it never hands
    /// over (transaction markers); nothing is pending when this runs.
    fn sync_positions(&mut self) {
        if let Ok(tpl) = self.consumer.position() {
            for e in tpl.elements() {
                if let Offset::Offset(next) = e.offset() {
                    self.fresh.read(e.partition() as usize, next);
                }
            }
        }
    }

    /// Notes the time, then asks for every partition's end offset.
    fn sample(&mut self) {
        self.last_sample = Some(Instant::now());
        let t = now_ms();
        match self.end_offsets() {
            Ok(ends) => {
                for p in self.fresh.sampled(t, ends) {
                    self.read_again(p);
                }
            }
            Err(e) => {
                self.metrics
                    .consumer_errors
                    .with_label_values(&["cancel-topic"])
                    .inc();
                if let Some(more) = self.errors.allow() {
                    tracing::warn!(topic = %self.topic, error = %e, suppressed = more, "cannot read the cancel topic's end offsets; the view is not getting fresher");
                }
            }
        }
    }

    fn end_offsets(&mut self) -> Result<Vec<i64>> {
        // The metadata request (which finds partitions added since the last
        // sample) and one ListOffsets request for every known partition's end
        // offset, at once: a sample takes one round trip, and the view gets
        // fresher sooner.
        let known = self.fresh.partitions();
        let (consumer, sampler, topic) = (&self.consumer, &self.sampler, self.topic.as_str());
        let mut latest = TopicPartitionList::new();
        for p in 0..known as i32 {
            latest
                .add_partition_offset(topic, p, Offset::End)
                .map_err(|e| Error::kafka("building the end-offset query", e))?;
        }
        let (count, ends) = std::thread::scope(|scope| {
            let count = scope.spawn(move || partition_count(consumer, topic));
            let ends = end_offsets_of(sampler, topic, latest);
            (
                count.join().expect("the metadata query thread panicked"),
                ends,
            )
        });
        let count = count?;
        // New partitions are read from their start; this sample does not
        // cover them, so it is not used ([`Freshness::sampled`] drops it).
        while self.fresh.partitions() < count {
            self.add_partition(self.fresh.partitions() as i32)?;
        }
        ends
    }

    /// A partition whose end fell below what was read (the topic deleted and
    /// created again, or truncated by an unclean leader election): read it
    /// again from its start; the view is not fresher until that is done.
    fn read_again(&mut self, p: usize) {
        self.metrics
            .consumer_errors
            .with_label_values(&["cancel-topic"])
            .inc();
        let low = self
            .consumer
            .fetch_watermarks(&self.topic, p as i32, QUERY_TIMEOUT)
            .map(|(low, _)| low.max(0));
        let sought = self
            .consumer
            .seek(&self.topic, p as i32, Offset::Beginning, QUERY_TIMEOUT);
        match (low, sought) {
            (Ok(low), Ok(())) => {
                tracing::warn!(topic = %self.topic, partition = p, "the cancel topic's partition ends below what was read (created again or truncated): reading it again from its start; records with an id wait until then");
                self.fresh.reset(p, low);
            }
            (low, sought) => {
                // Not reset: the partition stays held (its end below the read
                // position keeps freshness back), and the next sample tries again.
                tracing::warn!(topic = %self.topic, partition = p, low = ?low.err(), seek = ?sought.err(), "could not move back to the start of a reset cancel-topic partition; retrying at the next sample");
            }
        }
    }

    /// A partition added to the cancel topic: read it from its start too.
    fn add_partition(&mut self, p: i32) -> Result<()> {
        let (low, _) = self
            .consumer
            .fetch_watermarks(&self.topic, p, QUERY_TIMEOUT)
            .map_err(|e| Error::kafka(format!("reading the offsets of {} [{p}]", self.topic), e))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, p, Offset::Beginning)
            .map_err(|e| Error::kafka("building the cancel-topic assignment", e))?;
        self.consumer
            .incremental_assign(&tpl)
            .map_err(|e| Error::kafka(format!("assigning {} [{p}]", self.topic), e))?;
        self.fresh.add_partition(low.max(0));
        tracing::info!(topic = %self.topic, partition = p, "reading a new partition of the cancel topic");
        Ok(())
    }
}

/// Applies one record; returns it when the view is full.
fn handle(
    m: &BorrowedMessage<'_>,
    rules: Rules,
    view: &Cancellations,
    metrics: &Metrics,
    fresh: &mut Freshness,
    refusals: &mut Throttle,
) -> Option<Pending> {
    let partition = m.partition().max(0) as usize;
    let offset = m.offset();
    let now = now_ms();
    let until = headers::last(m.headers(), UNTIL_HEADER);
    match decode(
        m.key(),
        m.payload().is_none(),
        until,
        m.timestamp().to_millis(),
        rules,
        now,
    ) {
        Ok(Cancellation::Cancel { id, until_ms }) => {
            if view.cancel(id, until_ms, now) == Insert::Full {
                return Some(Pending {
                    id: id.to_vec(),
                    until_ms,
                    partition,
                    offset,
                });
            }
        }
        Ok(Cancellation::Withdraw { id }) => {
            view.withdraw(id);
        }
        Err(refused) => {
            metrics
                .cancellations_refused
                .with_label_values(&[refused.reason.code()])
                .inc();
            if let Some(more) = refusals.allow() {
                tracing::warn!(
                    topic = m.topic(),
                    partition,
                    offset,
                    reason = refused.reason.code(),
                    detail = %refused.detail,
                    suppressed = more,
                    "cancellation refused"
                );
            }
        }
    }
    fresh.read(partition, offset + 1);
    None
}

/// At most one log line per period; says how many were left out since.
struct Throttle {
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
    fn every(period: Duration) -> Self {
        Throttle {
            period,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(left out since the last line)` when a line may be written now.
    fn allow(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < self.period) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The end offsets of `latest`'s partitions (each at [`Offset::End`]), in
/// partition order, from one ListOffsets request per leader.
fn end_offsets_of(consumer: &Reading, topic: &str, latest: TopicPartitionList) -> Result<Vec<i64>> {
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

/// Runs `query` again while it fails with an error that passes once a
/// partition's leadership has settled, pausing `pause` between tries, for at
/// most `patience`; any other error, or the last one, is returned.
fn patiently<T>(
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
