//! The tier consumer and everything that touches it: the consumer context
//! (librdkafka logs into `tracing`, rebalances into [`GroupEvent`] messages,
//! nothing else), the thread that polls its main queue, and [`TierQueue`], one
//! partition's share of it (read, pause, resume, store an offset, ask the lag).
//!
//! Guarantees: a rebalance callback only sends messages and waits for the
//! coordinator's answer; a paused partition keeps no prefetched records in
//! memory and, when resumed, fetches again from the first record it did not
//! take, so pausing never skips a record; and the queue's wake-up callback
//! fires whenever records arrive, paused-then-resumed or not.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, Notify};

use crate::kafka::log_to_tracing;
use crate::metrics::Metrics;

/// The router's tier consumer.
pub type TierConsumer = BaseConsumer<RouterContext>;

/// What the rebalance callbacks tell the coordinator.
pub enum GroupEvent {
    /// Newly assigned partitions with their already split queues.
    Assigned(Vec<(String, i32, PartitionQueue<RouterContext>)>),
    /// Partitions about to be revoked; the callback waits on `done` before it commits.
    Revoked {
        /// The partitions, (topic, partition).
        partitions: Vec<(String, i32)>,
        /// Signalled when their tasks have drained.
        done: std::sync::mpsc::Sender<()>,
    },
    /// The consumer hit a fatal error and can never fetch or commit again:
    /// the router must stop (and its supervisor start it again).
    Fatal(String),
}

/// The tier consumer's context: librdkafka logs into `tracing`, rebalances into messages.
pub struct RouterContext {
    events: mpsc::UnboundedSender<GroupEvent>,
    consumer: OnceLock<Weak<TierConsumer>>,
    metrics: Arc<Metrics>,
    /// How long a revoke waits for the tasks to drain before committing anyway.
    revoke_timeout: Duration,
    /// Assign partitions without a committed offset at their beginning
    /// explicitly (`auto.offset.reset` is earliest): see [`begin_uncommitted`].
    begin_uncommitted: bool,
}

impl RouterContext {
    /// A context that sends the rebalances to `events`; a revoke waits up to `revoke_timeout` for the tasks to drain.
    pub fn new(
        events: mpsc::UnboundedSender<GroupEvent>,
        metrics: Arc<Metrics>,
        revoke_timeout: Duration,
    ) -> Self {
        RouterContext {
            events,
            consumer: OnceLock::new(),
            metrics,
            revoke_timeout,
            begin_uncommitted: false,
        }
    }

    /// Assigned partitions without a committed offset start at their
    /// beginning without librdkafka's 100 ms wait (`begin_uncommitted`);
    /// only for a consumer whose `auto.offset.reset` is earliest.
    pub fn begin_uncommitted(mut self, yes: bool) -> Self {
        self.begin_uncommitted = yes;
        self
    }

    /// Gives the context the consumer it belongs to, so assignments can split queues.
    pub fn attach(&self, consumer: &Arc<TierConsumer>) {
        let _ = self.consumer.set(Arc::downgrade(consumer));
    }
}

/// Why the router stops after the tier consumer's fatal error, and what to do.
pub fn fatal_reason(code: RDKafkaErrorCode, text: &str) -> String {
    match code {
        RDKafkaErrorCode::UnreleasedInstanceId => format!(
            "the tier consumer cannot join its group: {text}. Another member still holds this \
             group.instance.id: under --group-protocol consumer, an instance that stopped without \
             leaving (kill -9, a crash) keeps it until the broker's \
             group.consumer.session.timeout.ms (45 s by default) expires. Started again after \
             that, the router joins; or run without a group.instance.id"
        ),
        RDKafkaErrorCode::FencedInstanceId => format!(
            "the tier consumer was fenced: {text}. A newer member uses the same group.instance.id: \
             give every router instance its own"
        ),
        _ => format!("the tier consumer hit a fatal error and cannot go on: {text} ({code:?})"),
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ClientContext for RouterContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_to_tracing(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics
            .consumer_errors
            .with_label_values(&[&crate::sink::error_label(&error)])
            .inc();
        tracing::warn!(%error, reason, "kafka consumer error");
        crate::connection::record(reason);
        let fatal = self
            .consumer
            .get()
            .and_then(Weak::upgrade)
            .and_then(|c| c.client().fatal_error());
        if let Some((code, text)) = fatal {
            let _ = self
                .events
                .send(GroupEvent::Fatal(fatal_reason(code, &text)));
        }
    }
}

/// How long an assignment waits for the group's committed offsets before
/// leaving the lookup to librdkafka ([`begin_uncommitted`]).
const COMMITTED_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether an `auto.offset.reset` value means the beginning of the partition.
pub fn resets_to_beginning(auto_offset_reset: Option<&str>) -> bool {
    matches!(
        auto_offset_reset.map(str::to_ascii_lowercase).as_deref(),
        Some("earliest" | "smallest" | "beginning")
    )
}

/// Gives the newly assigned partitions of `tpl` that have no committed offset
/// an explicit start at their beginning, where librdkafka's
/// `auto.offset.reset=earliest` would put them too, but not before 100 ms:
/// librdkafka (2.12, `rd_kafka_offset_reset`) looks up the beginning of a
/// partition without a committed offset only after a fixed 100 ms backoff,
/// and an explicit beginning at once. Without this a record due at once in a
/// never-committed partition was read 70-150 ms after the assignment, against
/// 8-37 ms for a partition with a committed offset (tests/first_record.rs).
/// Partitions with a committed offset, or any the lookup does not answer
/// within [`COMMITTED_LOOKUP_TIMEOUT`], are left to librdkafka, as before.
fn begin_uncommitted(consumer: &BaseConsumer<RouterContext>, tpl: &mut TopicPartitionList) {
    let committed = match consumer.committed_offsets(tpl.clone(), COMMITTED_LOOKUP_TIMEOUT) {
        Ok(committed) => committed,
        Err(e) => {
            tracing::debug!(error = %e, "committed offsets not read at assignment; librdkafka looks them up");
            return;
        }
    };
    for e in committed.elements() {
        let unset = tpl
            .find_partition(e.topic(), e.partition())
            .is_some_and(|p| p.offset() == Offset::Invalid);
        if unset && e.error().is_ok() && e.offset() == Offset::Invalid {
            let _ = tpl.set_partition_offset(e.topic(), e.partition(), Offset::Beginning);
        }
    }
}

impl ConsumerContext for RouterContext {
    /// rust-rdkafka's own rebalance (pre-rebalance, assign or unassign,
    /// post-rebalance), with an assignment's never-committed partitions
    /// started at their beginning at once (`begin_uncommitted`).
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let assign = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
        if assign && self.begin_uncommitted {
            begin_uncommitted(consumer, tpl);
        }
        let rebalance = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(tpl),
            _ => Rebalance::Error(KafkaError::Rebalance(err.into())),
        };
        self.pre_rebalance(consumer, &rebalance);
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let applied = match (assign, cooperative) {
            (true, true) => consumer.incremental_assign(tpl),
            (true, false) => consumer.assign(tpl),
            (false, true) => consumer.incremental_unassign(tpl),
            (false, false) => consumer.unassign(),
        };
        if let Err(e) = applied {
            tracing::warn!(error = %e, assign, "applying the rebalance failed");
        }
        self.post_rebalance(consumer, &rebalance);
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        self.metrics.rebalances.with_label_values(&["revoke"]).inc();
        let partitions = partitions_of(tpl);
        tracing::info!(?partitions, "partitions revoked; draining");
        let (done, wait) = std::sync::mpsc::channel();
        if self
            .events
            .send(GroupEvent::Revoked { partitions, done })
            .is_ok()
            && wait.recv_timeout(self.revoke_timeout).is_err()
        {
            tracing::warn!("partition tasks did not drain within the revoke timeout; committing what is finished");
        }
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(error = %e, "commit on revoke failed"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.metrics.rebalances.with_label_values(&["assign"]).inc();
                let Some(owner) = self.consumer.get().and_then(Weak::upgrade) else {
                    return;
                };
                // A partition paused before an earlier revoke can come back paused: resume all.
                if let Err(e) = consumer.resume(tpl) {
                    tracing::debug!(error = %e, "resume after assignment failed");
                }
                let mut queues = Vec::new();
                for (topic, partition) in partitions_of(tpl) {
                    match owner.split_partition_queue(&topic, partition) {
                        Some(q) => queues.push((topic, partition, q)),
                        None => {
                            tracing::error!(%topic, partition, "could not split the partition queue")
                        }
                    }
                }
                tracing::info!(partitions = ?queues.iter().map(|(t, p, _)| format!("{t}/{p}")).collect::<Vec<_>>(), "partitions assigned");
                let _ = self.events.send(GroupEvent::Assigned(queues));
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => {
                self.metrics.rebalances.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, "rebalance error");
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::trace!(?offsets, "offsets committed"),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(error = %e, "offset commit failed"),
        }
    }
}

/// Polls the consumer's main queue on its own thread: this serves rebalance
/// callbacks (which may block while tasks drain) and keeps the group membership
/// alive however long partitions stay paused. Dropping the last handle of the
/// consumer here closes it and leaves the group.
pub fn spawn_poll_thread(
    consumer: Arc<TierConsumer>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("tier-consumer-poll".into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                match consumer.poll(Duration::from_millis(100)) {
                    None => {}
                    Some(Ok(msg)) => {
                        // All partitions are split into their own queues before fetching
                        // starts, so this should not happen; rewind so the record is not lost.
                        tracing::error!(
                            topic = msg.topic(),
                            partition = msg.partition(),
                            offset = msg.offset(),
                            "record arrived on the main queue; rewinding"
                        );
                        let _ = consumer.seek(
                            msg.topic(),
                            msg.partition(),
                            Offset::Offset(msg.offset()),
                            Duration::from_secs(5),
                        );
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                }
            }
            // Wait until every other holder (the tasks' queues) let go, then close.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while Arc::strong_count(&consumer) > 1 && std::time::Instant::now() < deadline {
                consumer.poll(Duration::from_millis(50));
            }
            drop(consumer);
        })
        .expect("spawning the consumer poll thread")
}

/// One assigned tier partition's own queue, split from the tier consumer:
/// all the consumer I/O a partition task does.
pub struct TierQueue {
    consumer: Arc<TierConsumer>,
    queue: PartitionQueue<RouterContext>,
    topic: String,
    partition: i32,
    /// Records fetched past what was taken were dropped while paused: seek back before resuming.
    rewind_on_resume: bool,
}

impl TierQueue {
    /// Wraps a split partition queue; `wake` is notified whenever records arrive.
    pub fn new(
        consumer: Arc<TierConsumer>,
        mut queue: PartitionQueue<RouterContext>,
        topic: String,
        partition: i32,
        wake: Arc<Notify>,
    ) -> Self {
        queue.set_nonempty_callback(move || wake.notify_one());
        TierQueue {
            consumer,
            queue,
            topic,
            partition,
            rewind_on_resume: false,
        }
    }

    /// The next record or consumer error already fetched, without waiting.
    pub fn poll(&self) -> Option<KafkaResult<OwnedMessage>> {
        self.queue
            .poll(Duration::ZERO)
            .map(|r| r.map(|m| m.detach()))
    }

    /// Stops fetching and drops what was fetched but not taken: records
    /// prefetched before the pause would otherwise stay in memory for as long
    /// as the partition stays paused (an hour in the 1h tier).
    pub fn pause(&mut self) -> KafkaResult<()> {
        self.consumer.pause(&self.partition_list())?;
        let mut dropped = 0usize;
        while let Some(r) = self.queue.poll(Duration::ZERO) {
            dropped += r.is_ok() as usize;
        }
        self.rewind_on_resume |= dropped > 0;
        Ok(())
    }

    /// Fetches again, first seeking back to `next` (the offset after the last
    /// record taken) if records were dropped by [`TierQueue::pause`], so
    /// nothing is skipped whatever librdkafka does with its prefetch queue.
    pub fn resume(&mut self, next: Option<i64>) -> KafkaResult<()> {
        if let Some(next) = next.filter(|_| self.rewind_on_resume) {
            self.seek(next)?;
        }
        self.consumer.resume(&self.partition_list())?;
        self.rewind_on_resume = false;
        Ok(())
    }

    /// Drops whatever was fetched and fetches again from `offset` (records
    /// taken after it are read again); the partition ends up resumed.
    pub fn restart_at(&mut self, offset: i64) -> KafkaResult<()> {
        self.pause()?;
        self.rewind_on_resume = true;
        self.resume(Some(offset))
    }

    fn seek(&self, offset: i64) -> KafkaResult<()> {
        self.consumer.seek(
            &self.topic,
            self.partition,
            Offset::Offset(offset),
            Duration::ZERO,
        )
    }

    /// Hands the consumer's offset store the partition's next committable offset.
    pub fn store(&self, offset: i64) -> KafkaResult<()> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, self.partition, Offset::Offset(offset))?;
        self.consumer.store_offsets(&tpl)
    }

    /// Asks the broker, off the async runtime, how many records lie after `finished`.
    pub fn lag(&self, finished: Option<i64>) -> tokio::task::JoinHandle<Option<i64>> {
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let partition = self.partition;
        tokio::task::spawn_blocking(move || {
            let (low, high) = consumer
                .fetch_watermarks(&topic, partition, Duration::from_secs(5))
                .ok()?;
            Some((high - finished.unwrap_or(low)).max(0))
        })
    }

    fn partition_list(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, self.partition);
        tpl
    }
}

/// What a partition task reads through: its [`TierQueue`], or a fake in tests.
pub trait Source: Send {
    /// The next record or consumer error already fetched, without waiting.
    fn poll(&mut self) -> Option<KafkaResult<OwnedMessage>>;
    /// Stops fetching and drops what was fetched and not taken.
    fn pause(&mut self) -> KafkaResult<()>;
    /// Fetches again from `next` on (the offset after the last record taken).
    fn resume(&mut self, next: Option<i64>) -> KafkaResult<()>;
    /// Drops what was fetched and fetches again from `offset`, resumed.
    fn restart_at(&mut self, offset: i64) -> KafkaResult<()>;
    /// Hands the offset store the partition's next committable offset.
    fn store(&mut self, offset: i64) -> KafkaResult<()>;
    /// Asks, off the async runtime, how many records lie after `finished`.
    fn lag(&self, finished: Option<i64>) -> tokio::task::JoinHandle<Option<i64>>;
}

impl Source for TierQueue {
    fn poll(&mut self) -> Option<KafkaResult<OwnedMessage>> {
        TierQueue::poll(self)
    }
    fn pause(&mut self) -> KafkaResult<()> {
        TierQueue::pause(self)
    }
    fn resume(&mut self, next: Option<i64>) -> KafkaResult<()> {
        TierQueue::resume(self, next)
    }
    fn restart_at(&mut self, offset: i64) -> KafkaResult<()> {
        TierQueue::restart_at(self, offset)
    }
    fn store(&mut self, offset: i64) -> KafkaResult<()> {
        TierQueue::store(self, offset)
    }
    fn lag(&self, finished: Option<i64>) -> tokio::task::JoinHandle<Option<i64>> {
        TierQueue::lag(self, finished)
    }
}

#[cfg(test)]
mod tests {
    use super::resets_to_beginning;

    #[test]
    fn only_an_earliest_reset_starts_uncommitted_partitions_at_the_beginning() {
        for v in ["earliest", "smallest", "beginning", "EARLIEST"] {
            assert!(resets_to_beginning(Some(v)), "{v}");
        }
        for v in ["latest", "largest", "end", "error", ""] {
            assert!(!resets_to_beginning(Some(v)), "{v}");
        }
        assert!(!resets_to_beginning(None));
    }
}
