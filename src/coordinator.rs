//! The partition tasks' lifecycle. The consumer's rebalance callbacks (in
//! [`crate::consumer`]) only split the new partitions' queues and send messages
//! here; the coordinator starts a task per assigned partition, stops and drains
//! the tasks of revoked partitions before the callback commits, and on shutdown
//! drains every task, commits synchronously and leaves the group.

use std::collections::HashMap;
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
                    Some(GroupEvent::Fatal(reason)) => {
                        self.shared.fail(reason);
                        break;
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
