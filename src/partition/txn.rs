//! Exactly-once mode of a partition task: its transactional producer, the
//! transaction's commits (records and the tier offset together, with a resume
//! point in the offset metadata), aborts, rewinds and producer replacement.
//! Guarantee: nothing a task produced counts until its transaction commits with
//! the offset; a failure aborts and the records are routed again.

use super::*;

/// What one step of the exactly-once bookkeeping did.
pub(super) enum Step {
    /// Nothing to do now.
    Idle,
    /// Something changed: look again.
    Again,
    /// Told to stop while setting up.
    Stop,
}

/// Exactly-once mode: the task's transaction, its commits, aborts and rewinds.
impl PartitionTask {
    /// The open transaction's state (only called in exactly-once mode).
    fn txn(&self) -> &Txn {
        self.commit.txn().expect("exactly-once mode")
    }

    fn txn_mut(&mut self) -> &mut Txn {
        self.commit.txn_mut().expect("exactly-once mode")
    }

    /// The producer records go out through, with its generation: the
    /// partition's transactional one in exactly-once mode (present whenever a
    /// transaction is open: [`PartitionTask::txn_ready`] checks it), else the
    /// router's shared one.
    pub(super) fn output(&self) -> (u64, Output) {
        match self.commit.txn() {
            Some(txn) => (
                0,
                txn.producer
                    .clone()
                    .expect("a transactional producer while a transaction is open"),
            ),
            None => self.shared.sink.current(),
        }
    }

    /// In exactly-once mode, makes sure a transaction is open for a record about
    /// to be produced; false when none can be (the record is redone after the abort).
    pub(super) fn txn_ready(&mut self) -> bool {
        let Some(txn) = self.commit.txn_mut() else {
            return true;
        };
        if txn.failure.is_some() {
            return false;
        }
        let Some(producer) = &txn.producer else {
            txn.failure = Some(TxnFailure::Replace);
            return false;
        };
        if txn.opened_at.is_none() {
            if let Err(e) = producer.begin_transaction() {
                tracing::warn!(error = %e, "could not begin a transaction");
                txn.failure = Some(txn_failure(&e));
                return false;
            }
            txn.opened_at = Some(Instant::now());
        }
        true
    }

    /// One step of the transaction bookkeeping, before the task looks at its records.
    pub(super) async fn txn_step(&mut self) -> Step {
        let Some(txn) = self.commit.txn() else {
            return Step::Idle;
        };
        if txn.producer.is_none() || !txn.loaded {
            return self.init_transactional().await;
        }
        if let Some(failure) = txn.failure {
            let failure = self.fenced_or(failure);
            self.abort(failure).await;
            match failure {
                // A new producer would fence the partition's new owner back.
                TxnFailure::Fenced => return Step::Stop,
                TxnFailure::Uncertain => {
                    // Whether the last commit went through is unknown: read
                    // the committed position again once the new producer is
                    // initialised (which finishes or aborts it).
                    self.rewind(None);
                    self.txn_mut().loaded = false;
                    return Step::Again;
                }
                TxnFailure::Abort | TxnFailure::Replace => {}
            }
            let to = self.txn().resume.as_ref().map(|r| r.offset);
            tracing::info!(?to, "rewinding to the last commit");
            self.rewind(to);
            return Step::Again;
        }
        if txn.opened_at.is_some()
            && txn.closing(self.stopping.is_some())
            && self.in_flight.is_empty()
        {
            self.commit().await;
            return Step::Again;
        }
        Step::Idle
    }

    /// Creates and initialises the partition's transactional producer (which
    /// fences the previous owner's and aborts its open transaction), then, at
    /// the task's start, reads where the last commit left the partition.
    pub(super) async fn init_transactional(&mut self) -> Step {
        let id = self.txn().id.clone();
        let mut attempt = 0u32;
        while self.commit.txn().is_some_and(|t| t.producer.is_none()) {
            let settings = self.shared.kafka.clone();
            let id = id.clone();
            let init =
                tokio::task::spawn_blocking(move || exactly_once::init_producer(&settings, &id));
            tokio::select! {
                _ = self.control.recv() => return Step::Stop,
                result = init => match result {
                    Ok(Ok(producer)) => {
                        tracing::debug!("transactional producer ready");
                        self.txn_mut().producer = Some(producer);
                    }
                    Ok(Err(e)) => {
                        attempt += 1;
                        let backoff = Duration::from_millis(200u64 << attempt.min(6));
                        tracing::warn!(error = %e, ?backoff, "initialising the transactional producer failed; retrying");
                        tokio::select! {
                            _ = self.control.recv() => return Step::Stop,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                    }
                    Err(e) => {
                        self.shared.fail(format!("transactional producer task failed: {e}"));
                        return Step::Stop;
                    }
                },
            }
        }
        if !self.txn().loaded {
            let consumer = self.txn().consumer.clone();
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&self.topic, self.partition);
            let committed = tokio::task::spawn_blocking(move || {
                consumer.committed_offsets(tpl, exactly_once::TXN_TIMEOUT)
            });
            let committed = tokio::select! {
                _ = self.control.recv() => return Step::Stop,
                c = committed => c,
            };
            match committed {
                Ok(Ok(tpl)) => {
                    let found = exactly_once::committed_resume(&tpl, &self.topic, self.partition);
                    let txn = self.txn_mut();
                    txn.loaded = true;
                    if let Some(resume) = found {
                        tracing::debug!(?resume, "resuming from the committed position");
                        let offset = resume.offset;
                        txn.resume = Some(resume);
                        self.rewind(Some(offset));
                    } else if let Some(offset) = txn.resume.as_ref().map(|r| r.offset) {
                        // Read again after an uncertain commit, and nothing is
                        // committed: the last commit this task knows of stands.
                        self.rewind(Some(offset));
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading the committed position failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    self.shared
                        .fail(format!("committed-offset task failed: {e}"));
                    return Step::Stop;
                }
            }
        }
        Step::Again
    }

    /// Forgets every record read and reads again from `to` (where the last
    /// commit left the partition); nothing produced since then was committed.
    pub(super) fn rewind(&mut self, to: Option<i64>) {
        self.window.clear();
        self.held.clear();
        self.view_wait.clear();
        self.in_flight.clear();
        self.offsets.rewind(to);
        self.bytes.clear();
        self.dead_letters_blocked = 0;
        self.blocked_gauge.set(0);
        if let Some(txn) = self.commit.txn_mut() {
            txn.max_finished = i64::MIN;
        }
        if let Some(to) = to {
            match self.queue.restart_at(to) {
                Ok(()) => {
                    self.paused = false;
                    self.paused_gauge.set(0);
                }
                Err(e) => {
                    // Records would be skipped: stop, so the next owner reads from the last commit.
                    self.shared.fail(format!(
                        "{}/{}: could not move back to offset {to} after an abort: {e}",
                        self.topic, self.partition
                    ));
                }
            }
        }
    }

    /// The point a commit now writes: the first unfinished offset, with every
    /// unfinished offset below the last finished one listed as open.
    pub(super) fn resume_point(&self) -> Resume {
        let txn = self.txn();
        let next = self.offsets.next().unwrap_or(i64::MIN);
        let offset = self
            .offsets
            .commit_point()
            .or(txn.resume.as_ref().map(|r| r.offset))
            .unwrap_or(0);
        if self.offsets.held().is_some() {
            // Records the consumer skipped hold the commit: the next owner
            // reads everything from there again (what was finished after them
            // is routed twice: a duplicate, never a loss).
            return Resume {
                offset,
                hi: offset,
                open: Vec::new(),
            };
        }
        let mut hi = txn.max_finished.saturating_add(1).max(offset);
        let mut open: BTreeSet<i64> = self.offsets.pending().range(offset..hi).copied().collect();
        if let Some(prev) = &txn.resume {
            if prev.hi > next {
                // Still reading again what the previous point covers: keep its
                // word on the offsets not read yet.
                hi = hi.max(prev.hi);
                open.extend(prev.open.iter().copied().filter(|o| *o >= next));
            }
        }
        Resume {
            offset,
            hi,
            open: open.into_iter().collect(),
        }
    }

    /// Commits the open transaction with the partition's resume point.
    pub(super) async fn commit(&mut self) {
        let resume = self.resume_point();
        let Some(group) = self.commit.txn().and_then(|t| t.consumer.group_metadata()) else {
            self.txn_mut().failure = Some(TxnFailure::Abort);
            return;
        };
        let (_, producer) = self.output();
        let (topic, partition) = (self.topic.clone(), self.partition);
        let point = resume.clone();
        // The broker aborts the transaction by itself this long after it began.
        let timeout = exactly_once::transaction_timeout(&self.shared.kafka)
            .unwrap_or(exactly_once::TXN_TIMEOUT);
        let opened = self.commit.txn().and_then(|t| t.opened_at);
        let deadline = opened.unwrap_or_else(Instant::now).into_std() + timeout;
        let result = tokio::task::spawn_blocking(move || {
            exactly_once::commit(&producer, &topic, partition, &point, &group, deadline)
        })
        .await;
        let txn = self.txn_mut();
        match result {
            Ok(Ok(())) => {
                txn.opened_at = None;
                txn.poison.retain(|o, _| *o >= resume.offset);
                txn.resume = Some(resume);
                self.shared
                    .metrics
                    .transactions
                    .with_label_values(&[&self.topic, "committed"])
                    .inc();
            }
            Ok(Err((failure, e))) => {
                tracing::warn!(error = %e, ?failure, "transaction commit failed");
                txn.failure = Some(failure);
            }
            Err(e) => {
                tracing::warn!(error = %e, "transaction commit task failed; its outcome is unknown");
                txn.failure = Some(TxnFailure::Uncertain);
            }
        }
    }

    /// Aborts the open transaction (or drops a producer that cannot abort, to
    /// be replaced). Nothing produced since the last commit counts any more:
    /// a task that goes on must [`PartitionTask::rewind`] to it.
    pub(super) async fn abort(&mut self, failure: TxnFailure) {
        let txn = self.txn_mut();
        txn.failure = None;
        let mut replace = failure != TxnFailure::Abort;
        if !replace && txn.opened_at.is_some() {
            if let Some(producer) = txn.producer.clone() {
                let aborted = tokio::task::spawn_blocking(move || {
                    producer.abort_transaction(exactly_once::TXN_TIMEOUT)
                })
                .await;
                if !matches!(aborted, Ok(Ok(()))) {
                    tracing::warn!(result = ?aborted.map(|r| r.map_err(|e| e.to_string())), "abort failed; replacing the producer");
                    replace = true;
                }
            }
        }
        // Borrows only the commit mode, so the metrics can be reached meanwhile.
        let txn = self.commit.txn_mut().expect("exactly-once mode");
        if replace {
            // A new producer with the same id aborts whatever the old one left open.
            if let Some(old) = txn.producer.take() {
                tokio::task::spawn_blocking(move || drop(old));
            }
        }
        txn.opened_at = None;
        let outcome = match failure {
            TxnFailure::Fenced => "fenced",
            _ if replace => "producer_replaced",
            _ => "aborted",
        };
        self.shared
            .metrics
            .transactions
            .with_label_values(&[&self.topic, outcome])
            .inc();
        if failure == TxnFailure::Fenced {
            tracing::error!(
                id = %txn.id,
                "fenced: a newer producer with this partition's transactional id (its new owner) took over; \
                 this task stops producing and ends, and starts again only if the partition is assigned here again"
            );
        } else {
            tracing::info!(outcome, "transaction ended without commit");
        }
    }

    /// `Fenced` when the producer's fatal error says it was fenced (a produce
    /// or a begin that failed for that reason reports only a fatal error),
    /// else `failure`.
    fn fenced_or(&self, failure: TxnFailure) -> TxnFailure {
        let producer = self.commit.txn().and_then(|t| t.producer.as_ref());
        match producer.and_then(|p| p.client().fatal_error()) {
            Some((code, _)) if exactly_once::is_fenced(code) => TxnFailure::Fenced,
            _ => failure,
        }
    }

    /// A produce failed inside the transaction: remember a record that can
    /// never be written there (to dead-letter it, or dead-letter it with less
    /// of it, after the rewind) and abort; a broken producer is replaced.
    pub(super) fn fail_transaction(&mut self, job: Job, decision: OnFailure, error: &KafkaError) {
        let offset = job.rec.msg.offset();
        let txn = self.txn_mut();
        match (decision, &job.action) {
            (OnFailure::Strip(strip), Action::DeadLetter(dl)) => {
                txn.poison.insert(offset, (dl.clone(), strip));
            }
            (OnFailure::DeadLetter(reason), _) => {
                let dl = DeadLetter::new(reason, format!("producing failed: {error}"));
                txn.poison.insert(offset, (dl, Strip::Nothing));
            }
            _ => {}
        }
        let kind = match txn_failure(error) {
            TxnFailure::Fenced => TxnFailure::Fenced,
            _ if decision == OnFailure::ReplaceProducer => TxnFailure::Replace,
            _ => TxnFailure::Abort,
        };
        tracing::warn!(offset, error = %error, ?decision, "produce failed inside the transaction; aborting it");
        if !matches!(txn.failure, Some(TxnFailure::Replace | TxnFailure::Fenced)) {
            txn.failure = Some(kind);
        }
    }

    /// At the end of the task: commits what is finished, or aborts what is not.
    pub(super) async fn end_transaction_at_stop(&mut self) {
        let Some(txn) = self.commit.txn() else { return };
        if txn.opened_at.is_some() && txn.failure.is_none() && self.in_flight.is_empty() {
            self.commit().await;
        }
        let txn = self.txn();
        if txn.opened_at.is_some() || txn.failure.is_some() {
            let failure = txn.failure.unwrap_or(TxnFailure::Abort);
            self.abort(failure).await;
        }
        if let Some(producer) = self.commit.txn_mut().and_then(|t| t.producer.take()) {
            tokio::task::spawn_blocking(move || drop(producer));
        }
    }
}
