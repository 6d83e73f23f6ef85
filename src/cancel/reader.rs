//! The cancel-topic reader: a thread of its own that reads every partition of
//! the cancel topic from the beginning (assigned, outside any group, nothing
//! committed), applies each record to the view, sweeps expired entries, and
//! moves `fresh_until` forward once its positions reach the end offsets the
//! [`super::sampler`] (started here, on a thread of its own) sampled.
//! Guarantees: a record counts as read only once it is in the view (or was
//! refused); at the cap it waits for expiries and the view stops getting
//! fresher instead of dropping anything; a refused record for a valid id
//! removes the id's earlier cancellation, as it does for a router that reads
//! the topic after compaction kept only it; errors are logged and retried,
//! never a panic.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::decode::{decode, Cancellation, Refused, Rules, UNTIL_HEADER};
use super::fresh::Freshness;
use super::query::{partition_count, patiently, Reading, Throttle, QUERY_TIMEOUT};
use super::sampler::{Progress, Sampler};
use super::store::Insert;
use super::Cancellations;
use crate::error::{Error, Result};
use crate::headers;
use crate::kafka::{now_ms, KafkaSettings, TracingContext};
use crate::metrics::Metrics;

/// How often expired cancellations are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Records handled in one go before the loop samples and checks again.
const BATCH: usize = 2_000;
/// How long the start-up offset queries retry an answer that says a
/// partition's leadership is moving (a broker failing over, a topic just
/// created): the router then starts instead of exiting.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// How long the reader waits for records before it looks at the sampler's
/// requests and the sweep again.
const POLL: Duration = Duration::from_millis(20);

/// Creates the consumer, assigns every partition from its start and starts
/// the reader's and the sampler's threads.
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
    let progress = Arc::new(Mutex::new(Progress::new(Freshness::new(starts))));
    let mut reader = Reader {
        consumer,
        topic: topic.to_string(),
        rules,
        view: view.clone(),
        metrics: metrics.clone(),
        progress: progress.clone(),
        read_to: vec![None; partitions],
        pending: None,
        last_sweep: Instant::now(),
        refusals: Throttle::default(),
        errors: Throttle::default(),
        full: Throttle::every(Duration::from_secs(10)),
    };
    let sampler = Sampler {
        client: sampler,
        topic: topic.to_string(),
        view,
        progress,
        metrics,
    };
    let sampler_stop = stop.clone();
    std::thread::Builder::new()
        .name("cancel-sampler".into())
        .spawn(move || sampler.run(sampler_stop))
        .map_err(|e| Error::Fatal(format!("cannot start the cancel-topic sampler: {e}")))?;
    std::thread::Builder::new()
        .name("cancel-reader".into())
        .spawn(move || reader.run(stop))
        .map_err(|e| Error::Fatal(format!("cannot start the cancel-topic reader: {e}")))?;
    Ok(())
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
    topic: String,
    rules: Rules,
    view: Arc<Cancellations>,
    metrics: Arc<Metrics>,
    progress: Arc<Mutex<Progress>>,
    /// Per partition: the next offset after the records applied since the
    /// positions were last handed to [`Progress`].
    read_to: Vec<Option<i64>>,
    pending: Option<Pending>,
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
                    self.publish();
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            self.follow_sampler();
            self.read_batch(POLL);
            self.publish();
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
                    let partition = m.partition().max(0) as usize;
                    let offset = m.offset();
                    let pending = handle(
                        &m,
                        self.rules,
                        &self.view,
                        &self.metrics,
                        &mut self.refusals,
                    );
                    if pending.is_some() {
                        self.pending = pending;
                        break;
                    }
                    self.applied(partition, offset + 1);
                }
            }
            wait = Duration::ZERO;
        }
        self.metrics
            .cancellations_outstanding
            .set(self.view.len() as i64);
    }

    fn applied(&mut self, partition: usize, next: i64) {
        if partition >= self.read_to.len() {
            self.read_to.resize(partition + 1, None);
        }
        let to = &mut self.read_to[partition];
        *to = Some(to.map_or(next, |t| t.max(next)));
    }

    /// Hands what was applied to [`Progress`] (and, with nothing pending,
    /// the consumer's own positions, which also move past offsets it never
    /// hands over: transaction markers), then moves `fresh_until` if the
    /// sample being caught up with is reached.
    fn publish(&mut self) {
        let positions = if self.pending.is_none() {
            self.consumer.position().ok()
        } else {
            None
        };
        let advanced = {
            let mut p = self.progress.lock().expect("cancel progress lock");
            for (partition, to) in self.read_to.iter_mut().enumerate() {
                if let Some(next) = to.take() {
                    p.fresh.read(partition, next);
                }
            }
            for e in positions.iter().flat_map(|tpl| tpl.elements()) {
                if let Offset::Offset(next) = e.offset() {
                    p.fresh.read(e.partition() as usize, next);
                }
            }
            p.fresh.check()
        };
        if let Some(t) = advanced {
            self.view.set_fresh_until(t);
        }
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
        self.applied(p.partition, p.offset + 1);
        true
    }

    fn sweep(&mut self) {
        let left = self.view.sweep(now_ms());
        self.metrics.cancellations_outstanding.set(left as i64);
        self.last_sweep = Instant::now();
    }

    /// Acts on what the sampler found: partitions reset (read again from
    /// their start) and partitions added to the topic (read from their start).
    fn follow_sampler(&mut self) {
        let (resets, listed, known) = {
            let mut p = self.progress.lock().expect("cancel progress lock");
            (
                std::mem::take(&mut p.resets),
                p.listed,
                p.fresh.partitions(),
            )
        };
        for partition in resets {
            self.read_again(partition);
        }
        for partition in known..listed {
            if let Err(e) = self.add_partition(partition as i32) {
                tracing::warn!(topic = %self.topic, partition, error = %e, "cannot start reading a new partition of the cancel topic; retrying");
                break;
            }
        }
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
                if let Some(to) = self.read_to.get_mut(p) {
                    *to = None;
                }
                self.progress
                    .lock()
                    .expect("cancel progress lock")
                    .fresh
                    .reset(p, low);
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
        self.progress
            .lock()
            .expect("cancel progress lock")
            .fresh
            .add_partition(low.max(0));
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
    refusals: &mut Throttle,
) -> Option<Pending> {
    let partition = m.partition().max(0) as usize;
    let offset = m.offset();
    let now = now_ms();
    let until = headers::last(m.headers(), UNTIL_HEADER);
    let decoded = decode(
        m.key(),
        m.payload().is_none(),
        until,
        m.timestamp().to_millis(),
        rules,
        now,
    );
    match apply(view, m.key(), decoded, now) {
        Applied::Done => None,
        Applied::Full { id, until_ms } => Some(Pending {
            id,
            until_ms,
            partition,
            offset,
        }),
        Applied::Refused { refused, withdrew } => {
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
                    withdrew,
                    suppressed = more,
                    "cancellation refused{}",
                    if withdrew { "; it is the id's latest record, so the id's earlier cancellation is withdrawn (as for a router that reads the topic after compaction)" } else { "" }
                );
            }
            None
        }
    }
}

/// What applying one cancel-topic record did.
#[derive(Debug, PartialEq, Eq)]
enum Applied {
    Done,
    /// The view is full: apply it again once there is room.
    Full {
        id: Vec<u8>,
        until_ms: i64,
    },
    /// Refused; `withdrew`: its id was valid and an earlier cancellation of
    /// it was held, and is gone.
    Refused {
        refused: Refused,
        withdrew: bool,
    },
}

/// Applies a decoded record to the view. For each id the latest record
/// counts, as after compaction, refused ones too: a refused record whose key
/// is a valid id removes the id's earlier cancellation, so a router that
/// still holds that cancellation and one that starts after compaction removed
/// it agree.
fn apply(
    view: &Cancellations,
    key: Option<&[u8]>,
    decoded: std::result::Result<Cancellation<'_>, Refused>,
    now: i64,
) -> Applied {
    match decoded {
        Ok(Cancellation::Cancel { id, until_ms }) => {
            if view.cancel(id, until_ms, now) == Insert::Full {
                return Applied::Full {
                    id: id.to_vec(),
                    until_ms,
                };
            }
            Applied::Done
        }
        Ok(Cancellation::Withdraw { id }) => {
            view.withdraw(id);
            Applied::Done
        }
        Err(refused) => {
            let withdrew = refused.reason.has_valid_id() && key.is_some_and(|id| view.withdraw(id));
            Applied::Refused { refused, withdrew }
        }
    }
}

#[cfg(test)]
mod tests;
