//! One task per assigned tier partition (spawned in a tracing span that
//! carries its topic and partition). It owns everything about its
//! partition: the head record, the records held in memory for a sub-tier
//! remainder, the records in flight, and the next offset it may commit.
//!
//! Guarantees: a record is produced only when `now >= due` by the system clock
//! (never early); the partition's stored offset never passes a record that the
//! broker has not acknowledged in its forwarded, delivered or dead-lettered
//! form (at-least-once); a record that cannot be routed goes to the dead-letter
//! topic and never blocks the partition; a record with a cancelled `delay-id`
//! is never forwarded or delivered, and one is delivered only once the cancel
//! view is fresh up to its due time.
//!
//! The loop only moves data: what to do is decided by the pure parts beside
//! it ([`Window`], [`admit`], [`gate`], [`on_failure`], [`Offsets`], the
//! commit mode), and the I/O is in `read.rs` (consumer side), `produce.rs`
//! and `outcome.rs` (producer side) and `txn.rs` (transactions).
//!
//! In exactly-once mode the task also owns a transactional producer: what it
//! produces and its partition's offset commit in one transaction every
//! `--transaction-interval`, and any failure aborts the transaction and
//! rewinds the partition to the last commit (see [`crate::exactly_once`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::future_producer::DeliveryFuture;
use rdkafka::producer::Producer;
use rdkafka::TopicPartitionList;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backlog::{HeadReport, HeadTimes};
use crate::cancel::Cancellations;
use crate::config::TopicsConfig;
use crate::consumer::{RouterContext, Source, TierConsumer, TierQueue};
use crate::dead_letter::{dead_letter_headers, DeadLetter, Dropped, Origin, Reason, Strip};
use crate::delay::{Decision, TierSet};
use crate::exactly_once::{self, txn_failure, ExactlyOnce, Resume, TxnFailure, MAX_OPEN};
use crate::headers;
use crate::kafka::{now_ms, KafkaSettings};
use crate::metrics::{GaugeShare, Metrics};
use crate::sink::{classify, error_label, send, Failure, Output, Sink};

mod budget;
mod commit;
mod offsets;
mod outcome;
mod policy;
mod produce;
mod read;
mod shared;
#[cfg(test)]
mod tests;
mod txn;
mod window;
pub use budget::{record_bytes, BudgetShare, ByteBudget};
pub use offsets::{ConsumeError, Gap, Offsets};
pub use policy::{
    admit, check_view, gate, on_failure, on_missing_target, Admitted, CancelView, Gate, Kind,
    OnFailure, Rules,
};
pub use shared::{Limits, Shared};
pub use window::{Fetch, Pacing, Timed, TimedHeap, Window};

use commit::{Commit, OnRead, Txn};
use produce::InFlight;
use txn::Step;

/// Messages from the coordinator.
#[derive(Debug)]
pub enum Control {
    /// Stop reading, finish what is in flight and what is due by `deadline`, store offsets, end.
    Stop {
        /// When in-flight work must be finished by.
        deadline: Instant,
    },
}

/// A record read from the tier, with its routing already worked out.
struct Record {
    msg: OwnedMessage,
    /// What it counts against the byte budget.
    bytes: usize,
    target: String,
    deliver_at: Option<i64>,
    due_at: i64,
    /// When the router must act on it: its tier wait ends, its held remainder
    /// is due, or (a dead letter) when it was read.
    act_at: i64,
    /// Its `delay-id` (only read when a cancel topic is declared).
    id: Option<Box<[u8]>>,
}

enum Action {
    Deliver,
    Forward(usize),
    DeadLetter(DeadLetter),
}

struct Job {
    rec: Box<Record>,
    action: Action,
    attempt: u32,
    /// What a dead letter leaves out to fit the dead-letter topic.
    strip: Strip,
    /// A dead letter the broker refuses (counted in `dead_letters_blocked` until it is written).
    blocked: bool,
    /// When the target was first found missing (epoch ms).
    missing_since: Option<i64>,
    /// Generation of the shared producer it was last given to (see [`Sink::replace`]).
    generation: u64,
}

enum Outcome {
    Acked,
    Failed(KafkaError),
    TargetMissing,
}

/// This tier's per-record metric handles, looked up once per task rather than per record.
struct TierCounters {
    read: prometheus::IntCounter,
    wakeups: prometheus::IntCounter,
    delivered: prometheus::IntCounter,
    forwarded: prometheus::IntCounter,
    lateness: prometheus::Histogram,
    cancelled: prometheus::IntCounter,
}

/// The per-partition task; build with [`PartitionTask::new`], run with [`PartitionTask::run`].
pub struct PartitionTask {
    shared: Arc<Shared>,
    /// The partition's consumer I/O.
    queue: Box<dyn Source>,
    /// Notified when records arrive in the queue.
    wake: Arc<Notify>,
    control: mpsc::UnboundedReceiver<Control>,
    tier: usize,
    topic: String,
    partition: i32,
    /// Records read and waiting for their tier wait to end, by ready time (see [`window`]).
    window: Window<Box<Record>>,
    /// Records with less than the smallest tier left, by due time.
    held: TimedHeap<Box<Record>>,
    /// Due deliveries with a `delay-id` waiting for the cancel view to be
    /// fresh up to their due time, by due time (see [`gate`]).
    view_wait: TimedHeap<Box<Record>>,
    /// The cancel view's advances (looked at before `fresh_until` is read, so
    /// none is missed while records wait for the view).
    view_advanced: tokio::sync::watch::Receiver<i64>,
    in_flight: InFlight,
    /// What was read and finished, and what may be committed.
    offsets: Offsets,
    paused: bool,
    stopping: Option<Instant>,
    held_gauge: GaugeShare,
    bytes: BudgetShare,
    /// Dead letters of this task the broker refuses, retried (see [`PartitionTask::dead_letter_refused`]).
    dead_letters_blocked: i64,
    blocked_gauge: GaugeShare,
    /// When a refused dead letter was last logged at error level.
    refusal_logged: Option<Instant>,
    paused_gauge: GaugeShare,
    lag_gauge: GaugeShare,
    /// What this partition tells the backlog gauges ([`crate::backlog`]).
    head: HeadReport,
    /// 1 while records the consumer skipped hold this partition's commit.
    held_gap_gauge: GaugeShare,
    _assigned_gauge: GaugeShare,
    counters: TierCounters,
    lag_query: Option<tokio::task::JoinHandle<Option<i64>>>,
    /// `Some` in exactly-once mode.
    commit: Commit,
}

const LAG_INTERVAL: Duration = Duration::from_secs(10);
/// Consumer errors taken in one pass before the task yields (and wakes itself).
const MAX_ERRORS_PER_PASS: u32 = 64;
/// How long a forward or delivery the broker answers with an unknown topic,
/// or whose target a lookup found before and now misses, is retried before
/// it is dead-lettered (see [`PartitionTask::unknown_for_a_while`]).
const UNKNOWN_TOPIC_GRACE: Duration = Duration::from_secs(30);
/// How often a refused dead letter is logged at error level (per partition).
const DEAD_LETTER_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// How often a task blocked by the byte budget looks again without being told.
const BUDGET_RECHECK: Duration = Duration::from_millis(100);

impl PartitionTask {
    /// A task reading the partition's split queue of the tier consumer.
    pub fn new(
        shared: Arc<Shared>,
        consumer: Arc<TierConsumer>,
        queue: PartitionQueue<RouterContext>,
        tier: usize,
        partition: i32,
        control: mpsc::UnboundedReceiver<Control>,
    ) -> Self {
        let wake = Arc::new(Notify::new());
        let topic = shared.config.tiers[tier].topic().to_string();
        let queue = TierQueue::new(
            consumer.clone(),
            queue,
            topic.clone(),
            partition,
            wake.clone(),
        );
        let commit = Commit::new(shared.exactly_once.as_ref(), consumer, &topic, partition);
        Self::with_source(
            shared,
            Box::new(queue),
            wake,
            tier,
            partition,
            control,
            commit,
        )
    }

    /// A task reading through any [`Source`] (`wake` notified when records arrive).
    fn with_source(
        shared: Arc<Shared>,
        queue: Box<dyn Source>,
        wake: Arc<Notify>,
        tier: usize,
        partition: i32,
        control: mpsc::UnboundedReceiver<Control>,
        commit: Commit,
    ) -> Self {
        let topic = shared.config.tiers[tier].topic().to_string();
        let m = &shared.metrics;
        let mut assigned = GaugeShare::new(m.partitions_assigned.with_label_values(&[&topic]));
        assigned.set(1);
        let counters = TierCounters {
            read: m.records_read.with_label_values(&[&topic]),
            wakeups: m.task_wakeups.with_label_values(&[&topic]),
            delivered: m.records_delivered.with_label_values(&[&topic]),
            forwarded: m.records_forwarded.with_label_values(&[&topic]),
            lateness: m.delivery_lateness.with_label_values(&[&topic]),
            cancelled: m.records_cancelled.with_label_values(&[&topic]),
        };
        let window = Window::new(shared.tiers.delay(tier), shared.tiers.lookahead_ms(tier));
        PartitionTask {
            counters,
            held_gauge: GaugeShare::new(m.records_held.with_label_values(&[&topic])),
            bytes: BudgetShare::new(shared.budget.clone()),
            dead_letters_blocked: 0,
            blocked_gauge: GaugeShare::new(m.dead_letters_blocked.clone()),
            refusal_logged: None,
            paused_gauge: GaugeShare::new(m.partitions_paused.with_label_values(&[&topic])),
            lag_gauge: GaugeShare::new(m.consumer_lag.with_label_values(&[&topic])),
            held_gap_gauge: GaugeShare::new(m.partitions_commit_held.with_label_values(&[&topic])),
            head: HeadReport::new(m.backlog.clone(), &topic, partition),
            _assigned_gauge: assigned,
            view_advanced: shared.cancellations.subscribe(),
            offsets: Offsets::new(shared.limits.skip_unreadable),
            shared,
            queue,
            wake,
            control,
            tier,
            topic,
            partition,
            window,
            held: TimedHeap::default(),
            view_wait: TimedHeap::default(),
            in_flight: InFlight::default(),
            paused: false,
            stopping: None,
            lag_query: None,
            commit,
        }
    }

    /// Runs until stopped by the coordinator (or its channel closes). Returns
    /// where a successor must start reading: the first offset this task did
    /// not finish (in exactly-once mode, the last commit's), `None` if it read nothing.
    pub async fn run(mut self) -> Option<i64> {
        tracing::debug!("partition task started");
        let mut lag_tick = tokio::time::interval(LAG_INTERVAL);
        lag_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.counters.wakeups.inc();
            if let Commit::Transactional(_) = self.commit {
                match self.txn_step().await {
                    Step::Idle => {}
                    Step::Again => continue,
                    Step::Stop => break,
                }
            }
            let now = now_ms();
            self.release_held(now);
            self.release_view_wait();
            self.advance(now);
            self.store_offsets();
            self.held_gauge
                .set((self.waiting() + self.in_flight.len()) as i64);
            self.head.report(HeadTimes {
                next_at: earliest(
                    earliest(self.window.first_at(), self.held.first_at()),
                    self.view_wait.first_at(),
                ),
                started_at: self.in_flight.oldest(),
            });
            if let Some(deadline) = self.stopping {
                if self.drained(deadline) {
                    break;
                }
            }
            let wake_at = self.next_wake();
            let want_records = self.stopping.is_none()
                && self.may_start()
                && !self.paused
                && self.has_capacity()
                && self.window.reads_further();
            // Blocked by the byte budget only: the router's other tasks free it
            // (they notify; a recheck covers a notification between check and wait).
            let waits_for_budget = self.stopping.is_none()
                && self.may_start()
                && !self.paused
                && self.window.reads_further()
                && self.bytes.exhausted();
            let stop_at = self.stopping;
            tokio::select! {
                biased;
                ctl = self.control.recv(), if self.stopping.is_none() => {
                    let deadline = match ctl {
                        Some(Control::Stop { deadline }) => deadline,
                        None => Instant::now(),
                    };
                    self.stopping = Some(deadline);
                }
                (job, outcome) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.complete(job, outcome);
                    // Take every other acknowledgement that is already in, so offsets
                    // are stored once per batch rather than once per record.
                    for _ in 0..4096 {
                        match self.in_flight.ready() {
                            Some((job, outcome)) => self.complete(job, outcome),
                            None => break,
                        }
                    }
                }
                _ = self.wake.notified(), if want_records => {}
                _ = self.shared.budget.room().notified(), if waits_for_budget => {}
                _ = self.view_advanced.changed(), if !self.view_wait.is_empty() => {}
                _ = tokio::time::sleep(BUDGET_RECHECK), if waits_for_budget => {}
                _ = sleep_until_opt(wake_at), if wake_at.is_some() => {}
                _ = sleep_until_opt(stop_at), if stop_at.is_some() => {}
                lag = poll_opt(&mut self.lag_query), if self.lag_query.is_some() => {
                    self.lag_query = None;
                    if let Some(lag) = lag {
                        self.lag_gauge.set(lag);
                    }
                }
                _ = lag_tick.tick(), if self.lag_query.is_none() => self.query_lag(),
            }
        }
        self.store_offsets();
        if let Commit::Transactional(_) = self.commit {
            self.end_transaction_at_stop().await;
        }
        if self.stopping.is_none() {
            // Ending on its own (fenced): nothing reads the queue until the
            // partition is assigned again, so fetching stops meanwhile.
            if !self.paused {
                self.set_paused(true);
            }
        } else if self.paused {
            self.set_paused(false);
        }
        tracing::debug!(
            stored = ?self.offsets.last_stored(),
            unfinished = self.offsets.unfinished(),
            "partition task stopped"
        );
        // Held back at records the consumer skipped, so a successor tries them again.
        self.commit.successor_start().unwrap_or_else(|| {
            self.offsets
                .commit_point()
                .or(self.offsets.first_unfinished())
        })
    }

    /// Records read and not started: in the window, held for a remainder, or
    /// waiting for the cancel view.
    fn waiting(&self) -> usize {
        self.window.len() + self.held.len() + self.view_wait.len()
    }

    fn has_capacity(&self) -> bool {
        self.in_flight.len() < self.shared.limits.max_in_flight
            && self.waiting() < self.shared.limits.max_held
            && self.bytes.may_read()
            // Exactly-once: the records that can still be unfinished when the
            // transaction commits (in flight ones are acknowledged by then) must
            // fit in the commit's metadata.
            && self.commit.fits_open(self.waiting())
    }

    /// Whether new records may start producing: always in at-least-once mode;
    /// in exactly-once mode not while the open transaction is closing or failed.
    fn may_start(&self) -> bool {
        self.commit.may_start(self.stopping.is_some())
    }

    /// True when stopping may end now: nothing in flight and nothing due before the deadline.
    fn drained(&self, deadline: Instant) -> bool {
        if Instant::now() >= deadline {
            if !self.in_flight.is_empty() {
                tracing::warn!(
                    in_flight = self.in_flight.len(),
                    "drain deadline reached with records in flight; they will be routed again by the next owner"
                );
            }
            return true;
        }
        let deadline_ms = now_ms()
            + deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as i64;
        self.in_flight.is_empty()
            && self.held.first_at().is_none_or(|at| at > deadline_ms)
            && self.view_wait.first_at().is_none_or(|at| at > deadline_ms)
            && self.window.first_at().is_none_or(|at| at > deadline_ms)
    }

    /// When the loop must next look at the clock.
    ///
    /// Only work that can start sets a timer: while the in-flight cap is
    /// reached or an exactly-once transaction is closing, due records wait
    /// for an acknowledgement, which wakes the task by itself (a timer already
    /// past would wake it every millisecond until then).
    fn next_wake(&self) -> Option<Instant> {
        let can_start = self.in_flight.len() < self.shared.limits.max_in_flight && self.may_start();
        let at = if can_start {
            let pacing = self.shared.limits.pacing();
            let window = self.window.next_change(self.paused, &pacing);
            match (self.held.first_at(), window) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        } else {
            None
        };
        let wake = at.map(|ms| {
            let wait = (ms as i128 - now_ms() as i128).clamp(0, 86_400_000) as u64;
            Instant::now() + Duration::from_millis(wait)
        });
        let commit_at = self.commit.due_at();
        match (wake, commit_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Job {
    fn new(rec: Box<Record>, action: Action) -> Self {
        Job {
            rec,
            action,
            attempt: 0,
            strip: Strip::Nothing,
            blocked: false,
            missing_since: None,
            generation: 0,
        }
    }

    /// How long its topic has been found missing (in ms), the clock starting now if it had not.
    fn missing_for(&mut self, now: i64) -> i64 {
        now - *self.missing_since.get_or_insert(now)
    }
}

fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn poll_opt(handle: &mut Option<tokio::task::JoinHandle<Option<i64>>>) -> Option<i64> {
    match handle {
        Some(h) => h.await.ok().flatten(),
        None => std::future::pending().await,
    }
}
