//! How a partition task makes its progress durable: [`Commit::Store`]
//! (at-least-once: finished offsets go to the consumer's offset store, which
//! librdkafka commits) or [`Commit::Transactional`] (exactly-once: what the
//! task produces and its offset commit in one transaction, [`Txn`]). The
//! at-least-once path asks the commit mode through these methods, never
//! checks for a transaction itself; the transaction's I/O is in `txn.rs`.

use super::*;

/// The task's commit mode.
pub(super) enum Commit {
    Store,
    Transactional(Box<Txn>),
}

/// A partition task's exactly-once state.
pub(super) struct Txn {
    /// The tier consumer: its group metadata goes into each commit.
    pub(super) consumer: Arc<TierConsumer>,
    pub(super) id: String,
    pub(super) interval: Duration,
    /// `None` until initialised, and after it had to be replaced.
    pub(super) producer: Option<Output>,
    /// Whether the committed position was read yet.
    pub(super) loaded: bool,
    /// When the open transaction began; `None` while none is open.
    pub(super) opened_at: Option<Instant>,
    /// Where a rewind goes: the last commit's resume point (or where reading began).
    pub(super) resume: Option<Resume>,
    /// Set when the open transaction cannot commit: abort it and redo its records.
    pub(super) failure: Option<TxnFailure>,
    /// Highest offset finished (or skipped as finished) since the last rewind.
    pub(super) max_finished: i64,
    /// Records whose produce failed for good, by offset: after the abort they
    /// are dead-lettered when read again (with their value dropped if `true`).
    pub(super) poison: HashMap<i64, (DeadLetter, Strip)>,
}

/// What the commit mode says about a record just read.
pub(super) enum OnRead {
    /// Route it.
    Route,
    /// Finished in a committed transaction before a rewind or restart: skip it.
    Finished,
    /// Its produce failed for good before the abort: dead-letter it.
    Poisoned(DeadLetter, Strip),
}

impl Commit {
    /// The mode for a partition: transactional when `exactly_once` is set.
    pub(super) fn new(
        exactly_once: Option<&ExactlyOnce>,
        consumer: Arc<TierConsumer>,
        topic: &str,
        partition: i32,
    ) -> Self {
        match exactly_once {
            None => Commit::Store,
            Some(eo) => Commit::Transactional(Box::new(Txn {
                consumer,
                id: exactly_once::transactional_id(&eo.id_prefix, topic, partition),
                interval: eo.interval,
                producer: None,
                loaded: false,
                opened_at: None,
                resume: None,
                failure: None,
                max_finished: i64::MIN,
                poison: HashMap::new(),
            })),
        }
    }

    pub(super) fn txn(&self) -> Option<&Txn> {
        match self {
            Commit::Store => None,
            Commit::Transactional(txn) => Some(txn),
        }
    }

    pub(super) fn txn_mut(&mut self) -> Option<&mut Txn> {
        match self {
            Commit::Store => None,
            Commit::Transactional(txn) => Some(txn),
        }
    }

    /// Whether new records may start producing: always when storing offsets;
    /// not while the open transaction is closing or failed.
    pub(super) fn may_start(&self, stopping: bool) -> bool {
        match self {
            Commit::Store => true,
            Commit::Transactional(txn) => txn.failure.is_none() && !txn.closing(stopping),
        }
    }

    /// Whether `unfinished` records read may stay unfinished at the next commit:
    /// exactly-once lists them in the commit's metadata, which is bounded.
    pub(super) fn fits_open(&self, unfinished: usize) -> bool {
        match self {
            Commit::Store => true,
            Commit::Transactional(_) => unfinished < MAX_OPEN,
        }
    }

    /// When the open transaction must commit.
    pub(super) fn due_at(&self) -> Option<Instant> {
        let txn = self.txn()?;
        txn.opened_at.map(|o| o + txn.interval)
    }

    /// A record at `offset` was read.
    pub(super) fn on_read(&mut self, offset: i64) -> OnRead {
        let Commit::Transactional(txn) = self else {
            return OnRead::Route;
        };
        let resume = txn.resume.get_or_insert_with(|| Resume::at(offset));
        if resume.skips(offset) {
            txn.max_finished = txn.max_finished.max(offset);
            return OnRead::Finished;
        }
        match txn.poison.get(&offset) {
            Some((dl, strip)) => OnRead::Poisoned(dl.clone(), *strip),
            None => OnRead::Route,
        }
    }

    /// The record at `offset` is finished (acknowledged in what it became).
    pub(super) fn finished(&mut self, offset: i64) {
        if let Commit::Transactional(txn) = self {
            txn.max_finished = txn.max_finished.max(offset);
        }
    }

    /// Where a successor must start reading, when the mode decides it:
    /// exactly-once, the last commit's point.
    pub(super) fn successor_start(&self) -> Option<Option<i64>> {
        self.txn().map(|txn| txn.resume.as_ref().map(|r| r.offset))
    }
}

impl Txn {
    /// Whether the open transaction should commit as soon as its records are acknowledged.
    pub(super) fn closing(&self, stopping: bool) -> bool {
        self.opened_at
            .is_some_and(|t| stopping || t.elapsed() >= self.interval)
    }
}
