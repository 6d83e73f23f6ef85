//! Group membership and the partition tasks' lifecycle. The consumer's
//! rebalance callbacks only split the new partitions' queues and send messages
//! here; the coordinator starts a task per assigned partition, stops and drains
//! the tasks of revoked partitions before the callback commits, and on shutdown
//! drains every task, commits synchronously and leaves the group.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::kafka::log_to_tracing;
use crate::metrics::Metrics;
use crate::partition::{Control, PartitionTask, Shared, TierConsumer};

/// What the rebalance callbacks tell the coordinator.
pub enum GroupEvent {
    /// Newly assigned partitions with their already split queues.
    Assigned(Vec<(String, i32, PartitionQueue<RouterContext>)>),
    /// Partitions about to be revoked; the callback waits on `done` before it commits.
    Revoked {
        partitions: Vec<(String, i32)>,
        done: std::sync::mpsc::Sender<()>,
    },
}

/// The tier consumer's context: librdkafka logs into `tracing`, rebalances into messages.
pub struct RouterContext {
    events: mpsc::UnboundedSender<GroupEvent>,
    consumer: OnceLock<Weak<TierConsumer>>,
    metrics: Arc<Metrics>,
    /// How long a revoke waits for the tasks to drain before committing anyway.
    revoke_timeout: Duration,
}

impl RouterContext {
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
        }
    }

    /// Gives the context the consumer it belongs to, so assignments can split queues.
    pub fn attach(&self, consumer: &Arc<TierConsumer>) {
        let _ = self.consumer.set(Arc::downgrade(consumer));
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
    }
}

impl ConsumerContext for RouterContext {
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

struct Running {
    control: mpsc::UnboundedSender<Control>,
    /// Ends with where a successor must start reading (see [`PartitionTask::run`]).
    handle: JoinHandle<Option<i64>>,
}

/// Starts and stops partition tasks as the group assigns and revokes partitions.
pub struct Coordinator {
    shared: Arc<Shared>,
    consumer: Arc<TierConsumer>,
    events: mpsc::UnboundedReceiver<GroupEvent>,
    tasks: HashMap<(String, i32), Running>,
    revoke_drain: Duration,
}

impl Coordinator {
    pub fn new(
        shared: Arc<Shared>,
        consumer: Arc<TierConsumer>,
        events: mpsc::UnboundedReceiver<GroupEvent>,
        revoke_drain: Duration,
    ) -> Self {
        Coordinator {
            shared,
            consumer,
            events,
            tasks: HashMap::new(),
            revoke_drain,
        }
    }

    /// Runs until `stop` is cancelled, then drains every task until `drain` has passed and commits.
    pub async fn run(mut self, stop: CancellationToken, drain: Duration, metrics: Arc<Metrics>) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                event = self.events.recv() => match event {
                    Some(GroupEvent::Assigned(queues)) => self.start_tasks(queues).await,
                    Some(GroupEvent::Revoked { partitions, done }) => {
                        self.stop_tasks(&partitions, Instant::now() + self.revoke_drain).await;
                        let _ = done.send(());
                    }
                    None => break,
                },
            }
        }
        metrics.ready.set(0);
        let all: Vec<_> = self.tasks.keys().cloned().collect();
        tracing::info!(partitions = all.len(), drain = ?drain, "draining partition tasks");
        self.stop_tasks(&all, Instant::now() + drain).await;
        let consumer = self.consumer.clone();
        let committed =
            tokio::task::spawn_blocking(move || consumer.commit_consumer_state(CommitMode::Sync))
                .await;
        match committed {
            Ok(Ok(())) | Ok(Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset))) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "final commit failed"),
            Err(e) => tracing::warn!(error = %e, "final commit task failed"),
        }
        // Dropping the receiver lets the closing consumer's revoke callback return at once.
        drop(self.events);
    }

    /// Starts a task per assigned partition. A partition whose task still runs
    /// (assigned again without a revoke in between) first has that task
    /// stopped and awaited: both would wrap the same librdkafka partition
    /// queue, so the old task could take records and end without producing
    /// them, and dropping its queue clears the queue's wake-up callback (see
    /// rust-rdkafka's `PartitionQueue` drop), which must therefore happen
    /// before the new task sets its own. The new task then reads from the
    /// first record the old one did not finish.
    async fn start_tasks(&mut self, queues: Vec<(String, i32, PartitionQueue<RouterContext>)>) {
        for (topic, partition, queue) in queues {
            let Some((tier, _)) = self.shared.config.tier_by_topic(&topic) else {
                tracing::error!(%topic, "assigned a partition of a topic that is not a tier");
                continue;
            };
            if let Some(old) = self.tasks.remove(&(topic.clone(), partition)) {
                self.replace_task(&topic, partition, old).await;
            }
            let (control, rx) = mpsc::unbounded_channel();
            let task = PartitionTask::new(
                self.shared.clone(),
                self.consumer.clone(),
                queue,
                tier,
                partition,
                rx,
            );
            // Every event of the task carries its partition.
            let span = tracing::info_span!("partition", %topic, partition);
            let handle = tokio::spawn(task.run().instrument(span));
            self.tasks
                .insert((topic, partition), Running { control, handle });
        }
    }

    /// Stops the running task of a partition assigned again, waits for it to
    /// end, and moves the partition's fetch position back to the first record
    /// it did not finish (records it read and dropped are read again; ones it
    /// finished after that are routed again, as after any stop).
    async fn replace_task(&mut self, topic: &str, partition: i32, old: Running) {
        tracing::warn!(
            %topic,
            partition,
            "partition assigned again while its task runs; stopping that task before starting a new one"
        );
        let _ = old.control.send(Control::Stop {
            deadline: Instant::now(),
        });
        let resume = match old.handle.await {
            Ok(resume) => resume,
            Err(e) => {
                // What it read and did not finish is unknown: stop, so that the
                // next owner reads from the last commit.
                self.shared.fail(format!(
                    "{topic}/{partition} assigned again: its previous task panicked: {e}"
                ));
                None
            }
        };
        // `None`: the old task read nothing, so it took nothing from the queue
        // and the fetch position is where librdkafka's assignment put it.
        let Some(offset) = resume else { return };
        match self
            .consumer
            .seek(topic, partition, Offset::Offset(offset), Duration::ZERO)
        {
            Ok(()) => tracing::warn!(
                %topic,
                partition,
                offset,
                "the new task reads from the first record the old one did not finish"
            ),
            // The records from there on would be skipped: stop, so that the
            // next owner reads from the last commit instead.
            Err(e) => self.shared.fail(format!(
                "{topic}/{partition} assigned again: could not move it back to offset {offset}, the first record its previous task did not finish: {e}"
            )),
        }
    }

    async fn stop_tasks(&mut self, partitions: &[(String, i32)], deadline: Instant) {
        let mut handles = Vec::new();
        for key in partitions {
            if let Some(running) = self.tasks.remove(key) {
                let _ = running.control.send(Control::Stop { deadline });
                handles.push(running.handle);
            }
        }
        for h in handles {
            if let Err(e) = h.await {
                tracing::error!(error = %e, "partition task panicked");
            }
        }
    }
}
