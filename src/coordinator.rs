//! The partition tasks' lifecycle. The consumer's rebalance callbacks (in
//! [`crate::consumer`]) only split the new partitions' queues and send messages
//! here; the coordinator starts a task per assigned partition, stops and drains
//! the tasks of revoked partitions before the callback commits, and on shutdown
//! drains every task, commits synchronously and leaves the group.
//!
//! A task that ends on its own (exactly-once: its producer was fenced) leaves
//! its partition idle. If no revoke for it comes within [`FENCED_RECHECK`],
//! nobody else owns it (the broker aborted a transaction that outlived its
//! timeout, which fences the producer too) and the coordinator starts its
//! task again; a real zombie learns at its first heartbeat that it lost the
//! partition, well within that time, and its revoke cancels the restart.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::Offset;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::consumer::{GroupEvent, RouterContext, TierConsumer};
use crate::metrics::Metrics;
use crate::partition::{Control, PartitionTask, Shared};

/// How long after a task ended on its own the coordinator restarts it if
/// the partition was neither revoked nor assigned again meanwhile: longer
/// than the heartbeat interval (1 s under the classic protocol, the broker's
/// `group.consumer.heartbeat.interval.ms`, 5 s by default, under KIP-848) in
/// which a zombie learns it lost the partition.
pub const FENCED_RECHECK: Duration = Duration::from_secs(10);

/// What the coordinator tells itself.
enum Internal {
    /// A task's `run` returned (the partition, the task's number).
    Ended((String, i32), u64),
    /// [`FENCED_RECHECK`] has passed since a task ended on its own.
    Recheck((String, i32)),
}

struct Running {
    /// Tells this task from a later one of the same partition.
    id: u64,
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
    internal: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    /// Partitions whose task ended on its own, awaiting their recheck.
    ended_alone: HashSet<(String, i32)>,
    next_id: u64,
}

impl Coordinator {
    /// A coordinator of `consumer`'s partition tasks, driven by the rebalance `events`; a revoke waits up to `revoke_drain` for its tasks.
    pub fn new(
        shared: Arc<Shared>,
        consumer: Arc<TierConsumer>,
        events: mpsc::UnboundedReceiver<GroupEvent>,
        revoke_drain: Duration,
    ) -> Self {
        let (internal, internal_rx) = mpsc::unbounded_channel();
        Coordinator {
            shared,
            consumer,
            events,
            tasks: HashMap::new(),
            revoke_drain,
            internal,
            internal_rx,
            ended_alone: HashSet::new(),
            next_id: 0,
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
                    Some(GroupEvent::Fatal(reason)) => {
                        self.shared.fail(reason);
                        break;
                    }
                    None => break,
                },
                Some(note) = self.internal_rx.recv() => match note {
                    Internal::Ended(key, id) => self.task_ended(key, id),
                    Internal::Recheck(key) => self.recheck(key).await,
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
            self.ended_alone.remove(&(topic.clone(), partition));
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
            let (ended, key) = (self.internal.clone(), (topic.clone(), partition));
            let id = self.next_id;
            self.next_id += 1;
            let handle = tokio::spawn(
                async move {
                    let resume = task.run().await;
                    let _ = ended.send(Internal::Ended(key, id));
                    resume
                }
                .instrument(span),
            );
            self.tasks.insert(
                (topic, partition),
                Running {
                    id,
                    control,
                    handle,
                },
            );
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

    /// A task's `run` returned. If the coordinator did not stop it (its
    /// partition is still in the task table), it ended on its own: schedule a
    /// recheck.
    fn task_ended(&mut self, key: (String, i32), id: u64) {
        let alone = self.tasks.get(&key).is_some_and(|running| running.id == id);
        if !alone || self.shared.cancel.is_cancelled() {
            return;
        }
        tracing::warn!(
            topic = %key.0,
            partition = key.1,
            recheck = ?FENCED_RECHECK,
            "the partition's task ended on its own; it starts again unless the partition is revoked first"
        );
        self.ended_alone.insert(key.clone());
        let internal = self.internal.clone();
        tokio::spawn(async move {
            tokio::time::sleep(FENCED_RECHECK).await;
            let _ = internal.send(Internal::Recheck(key));
        });
    }

    /// Starts the task of a partition whose task ended on its own, if it was
    /// neither revoked nor assigned again since: the group still gives it to
    /// this router, so the fence came from the broker (a transaction aborted
    /// for its timeout), not from a new owner.
    async fn recheck(&mut self, key: (String, i32)) {
        if !self.ended_alone.remove(&key) || self.shared.cancel.is_cancelled() {
            return;
        }
        let Some(old) = self.tasks.remove(&key) else {
            return;
        };
        let (topic, partition) = key;
        tracing::warn!(%topic, partition, "still assigned here after the recheck: starting the partition's task again");
        // Moves the fetch position back to where the ended task's successor starts.
        self.replace_task(&topic, partition, old).await;
        let Some(queue) = self.consumer.split_partition_queue(&topic, partition) else {
            self.shared.fail(format!(
                "{topic}/{partition}: could not split the partition queue to start its task again"
            ));
            return;
        };
        // The ended task paused the partition.
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition(&topic, partition);
        if let Err(e) = self.consumer.resume(&tpl) {
            tracing::warn!(%topic, partition, error = %e, "resuming the partition failed");
        }
        self.start_tasks(vec![(topic, partition, queue)]).await;
    }

    async fn stop_tasks(&mut self, partitions: &[(String, i32)], deadline: Instant) {
        let mut handles = Vec::new();
        for key in partitions {
            self.ended_alone.remove(key);
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
