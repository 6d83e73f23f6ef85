//! The consumer side of a partition task: reading records from its queue
//! and admitting them ([`super::admit`]), the window's verdict (read on,
//! pause, resume), acting on records whose tier wait is over, consumer
//! errors, and handing the offset store what may be committed.
//!
//! Guarantees: a record read is routed or dead-lettered, never dropped;
//! records behind a consumer error are read at once; records the consumer
//! skipped hold the commit ([`super::Offsets`]); pausing never skips a record.

use super::*;

impl PartitionTask {
    /// Delivers held records whose deadline has come.
    pub(super) fn release_held(&mut self, now: i64) {
        while self.in_flight.len() < self.shared.limits.max_in_flight && self.may_start() {
            let Some(rec) = self.held.pop_due(now) else {
                break;
            };
            self.go(rec, Action::Deliver);
        }
    }

    /// Delivers the records that waited for the cancel view, as far as it is fresh now.
    pub(super) fn release_view_wait(&mut self) {
        // Marked seen first: an advance after this read wakes the task again.
        self.view_advanced.borrow_and_update();
        let fresh = self.shared.cancellations.fresh_until();
        while self.in_flight.len() < self.shared.limits.max_in_flight && self.may_start() {
            let Some(rec) = self.view_wait.pop_due(fresh) else {
                break;
            };
            self.go(rec, Action::Deliver);
        }
    }

    /// Starts a forward or delivery, unless the record's `delay-id` is
    /// cancelled (dropped) or the cancel view is not fresh up to its due time
    /// (a delivery waits): [`check_view`]. A cancellation counts if it had not
    /// expired at the record's due time.
    pub(super) fn go(&mut self, rec: Box<Record>, action: Action) {
        let decision = check_view(
            &*self.shared.cancellations,
            rec.id.as_deref(),
            matches!(action, Action::Deliver),
            rec.due_at,
        );
        match decision {
            Gate::Go => self.start(Job::new(rec, action)),
            Gate::Cancelled => self.drop_cancelled(&rec),
            Gate::WaitForView => {
                let at = rec.due_at;
                // The view samples at the due time instead of at its next tick.
                self.shared.cancellations.want_fresh(at);
                self.view_wait.push(at, rec.msg.offset(), rec);
            }
        }
    }

    /// A record whose id is cancelled: never produced, its offset finished.
    fn drop_cancelled(&mut self, rec: &Record) {
        let offset = rec.msg.offset();
        tracing::debug!(
            offset,
            id = %String::from_utf8_lossy(rec.id.as_deref().unwrap_or_default()),
            "cancelled; dropped"
        );
        self.counters.cancelled.inc();
        self.done_with(rec);
        // Exactly-once: the offset moves on only inside a transaction. Open
        // one (it holds just the offset if nothing else is produced) so it
        // commits within the interval; an idle partition would otherwise keep
        // the record uncommitted, and whoever reads it again after the
        // cancellation expired would deliver it. If none can be opened, the
        // failure is handled like any other: abort, read again, drop again.
        self.txn_ready();
    }

    /// A record needs nothing more (acknowledged in what it became, or
    /// dropped as cancelled): its offset is finished and its bytes freed.
    pub(super) fn done_with(&mut self, rec: &Record) {
        let offset = rec.msg.offset();
        self.offsets.finish(offset);
        self.commit.finished(offset);
        self.bytes.sub(rec.bytes);
    }

    /// Acts on every record whose tier wait is over, then reads, pauses or
    /// resumes as the window says ([`Window::fetch`]): it reads on while a
    /// record not yet read could be ready before the first waiting one (in
    /// the smallest tier, which takes every shorter delay, that is everything
    /// appended until the first is ready), and pauses only when nothing unread
    /// can be needed before it resumes. Memory stays bounded by the tier's
    /// look-ahead of one partition's traffic and by the caps.
    pub(super) fn advance(&mut self, now: i64) {
        let pacing = self.shared.limits.pacing();
        let mut errors = 0;
        loop {
            while self.in_flight.len() < self.shared.limits.max_in_flight && self.may_start() {
                let Some(rec) = self.window.pop_ready(now) else {
                    break;
                };
                self.act(rec, now);
            }
            match self.window.fetch(now, self.paused, &pacing) {
                Fetch::Resume => {
                    self.set_paused(false);
                    if !self.paused {
                        continue;
                    }
                }
                Fetch::Pause => self.set_paused(true),
                Fetch::Read
                    if self.stopping.is_none() && self.may_start() && self.has_capacity() =>
                {
                    match self.queue.poll() {
                        Some(Ok(msg)) => {
                            self.ingest(msg, now);
                            continue;
                        }
                        Some(Err(e)) => {
                            self.consume_error(&e);
                            // Records behind the error are read now, not at the next timer
                            // (a burst of errors yields to the runtime in between).
                            errors += 1;
                            if errors < MAX_ERRORS_PER_PASS {
                                continue;
                            }
                            self.wake.notify_one();
                        }
                        None => {}
                    }
                }
                Fetch::Read | Fetch::Wait => {}
            }
            return;
        }
    }

    /// Takes a new record from the tier: dead-letters it at once if it cannot be
    /// routed, otherwise puts it in the window to wait for its ready time.
    pub(super) fn ingest(&mut self, msg: OwnedMessage, now: i64) {
        let offset = msg.offset();
        let poisoned = match self.commit.on_read(offset) {
            OnRead::Route => None,
            OnRead::Poisoned(dl, strip) => Some((dl, strip)),
            OnRead::Finished => {
                if let Some(gap) = self.offsets.read_finished(offset) {
                    self.skipped(gap);
                }
                return;
            }
        };
        if let Some(gap) = self.offsets.read(offset) {
            self.skipped(gap);
        }
        self.counters.read.inc();
        let bytes = record_bytes(&msg);
        self.bytes.add(bytes);
        let timestamp = msg
            .timestamp()
            .to_millis()
            .filter(|t| *t >= 0)
            .unwrap_or(now);
        let mut rec = Box::new(Record {
            msg,
            bytes,
            target: String::new(),
            deliver_at: None,
            due_at: now,
            act_at: now,
            id: None,
        });
        if let Some((dl, strip)) = poisoned {
            // Exactly-once: this record's produce failed for good before the abort.
            let mut job = Job::new(rec, Action::DeadLetter(dl));
            job.strip = strip;
            return self.start(job);
        }
        let rules = Rules {
            tiers: &self.shared.tiers,
            tier: self.tier,
            internal: &self.shared.internal,
            targets: &self.shared.config.targets,
            max_delay_ms: self.shared.config.max_delay_ms,
            max_clock_skew_ms: self.shared.limits.max_clock_skew_ms,
            ids: self.shared.config.cancel.is_some(),
        };
        let admitted = admit(
            &rules,
            rec.msg.headers().map(|h| h.as_borrowed()),
            timestamp,
            now,
        );
        let ready_at = match admitted {
            Ok(a) => {
                rec.target = a.target;
                rec.deliver_at = a.deliver_at;
                rec.due_at = a.due_at;
                rec.id = a.id;
                rec.act_at = a.ready_at;
                a.ready_at
            }
            Err(dl) => return self.dead_letter(rec, dl),
        };
        self.window.push(timestamp, ready_at, offset, rec);
    }

    /// The head's tier wait is over: deliver, forward, or hold it.
    pub(super) fn act(&mut self, rec: Box<Record>, now: i64) {
        match self.shared.tiers.decide(now, rec.deliver_at) {
            Decision::Deliver => self.go(rec, Action::Deliver),
            Decision::Forward { tier } => self.go(rec, Action::Forward(tier)),
            Decision::Hold { until_ms } => {
                let mut rec = rec;
                rec.act_at = until_ms;
                self.held.push(until_ms, rec.msg.offset(), rec)
            }
        }
    }

    /// Pauses or resumes fetching for this partition ([`TierQueue::pause`]
    /// drops what was prefetched, so memory stays independent of the backlog,
    /// and resuming fetches again after the last record taken).
    pub(super) fn set_paused(&mut self, pause: bool) {
        let result = if pause {
            self.queue.pause()
        } else {
            self.queue.resume(self.offsets.next())
        };
        match result {
            Ok(()) => {
                self.paused = pause;
                self.paused_gauge.set(pause as i64);
            }
            Err(e) => {
                tracing::warn!(error = %e, pause, "pause/resume failed")
            }
        }
    }

    /// Hands the offset store the first offset not yet finished (at-least-once
    /// mode; in exactly-once mode offsets commit in the transactions).
    pub(super) fn store_offsets(&mut self) {
        if let Commit::Transactional(_) = self.commit {
            return;
        }
        let Some(offset) = self.offsets.committable() else {
            return;
        };
        match self.queue.store(offset) {
            Ok(()) => self.offsets.stored(offset),
            Err(e) => {
                tracing::debug!(error = %e, "offset store failed (partition no longer assigned?)")
            }
        }
    }

    pub(super) fn query_lag(&mut self) {
        self.lag_query = Some(self.queue.lag(self.offsets.first_unfinished()));
    }

    /// The consumer returned an error instead of a record: logged with where
    /// the partition stands and counted; an error that can make the consumer
    /// skip records is remembered, and the next record read shows whether it did.
    pub(super) fn consume_error(&mut self, e: &KafkaError) {
        let kind = ConsumeError::of(e);
        tracing::warn!(error = %e, next_offset = ?self.offsets.next(), ?kind, "consume error");
        self.shared
            .metrics
            .consumer_errors
            .with_label_values(&[&error_label(e)])
            .inc();
        self.offsets.consume_error(kind);
    }

    /// The consumer went on past records it could not read: they were never
    /// routed. Logged with the offsets, counted, and (unless
    /// `--skip-unreadable`) the commit stays before them, so the next owner
    /// of the partition tries them again.
    pub(super) fn skipped(&mut self, gap: Gap) {
        let held = self.offsets.held() == Some(gap);
        if let Some(n) = gap.span() {
            self.shared
                .metrics
                .records_unreadable
                .with_label_values(&[&self.topic])
                .inc_by(n.max(0) as u64);
        }
        let from = gap
            .from
            .map_or_else(|| "the last commit".to_string(), |f| f.to_string());
        if held {
            self.held_gap_gauge.set(1);
            tracing::error!(
                from = ?gap.from,
                to = gap.to,
                "the consumer skipped records it could not read (offsets {from} to {}); they were not routed, and this partition's commit stays at {from} so its next owner reads them again. Inspect them (e.g. kcat -C -t {} -p {} -o {from} -c {}); to commit past them, run with --skip-unreadable",
                gap.to - 1,
                self.topic,
                self.partition,
                gap.span().unwrap_or(1),
            );
        } else {
            tracing::error!(
                from = ?gap.from,
                to = gap.to,
                "the consumer skipped records it could not read (offsets {from} to {}); they were not routed{}",
                gap.to - 1,
                if self.shared.limits.skip_unreadable {
                    " and, as --skip-unreadable asks, the commit moves past them"
                } else {
                    "; an earlier gap already holds the commit"
                },
            );
        }
    }
}
