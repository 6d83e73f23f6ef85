//! What happens when the broker answers a produce: an acknowledgement
//! finishes the record's offset; a failure goes through the failure policy
//! ([`super::on_failure`]) to a retry, a new producer, a smaller dead letter,
//! or a dead letter, the same decision in both modes.
//!
//! Guarantees: a record is finished only when the broker acknowledged what it
//! became; a dead letter is never given up (the router reports not ready
//! while the dead-letter topic refuses it).

use super::*;

impl PartitionTask {
    pub(super) fn complete(&mut self, mut job: Job, outcome: Outcome) {
        let error = match outcome {
            Outcome::Acked => return self.finish(job),
            Outcome::TargetMissing => {
                // The topic may be on its way (created by its owner): retry with
                // backoff for a while, other records going on meanwhile, then dead-letter.
                let missing_for = job.missing_for(now_ms());
                let wait = self.shared.limits.missing_target_wait.as_millis() as i64;
                let existed = self.shared.sink.existed(&job.rec.target);
                let grace = UNKNOWN_TOPIC_GRACE.as_millis() as i64;
                if on_missing_target(missing_for, wait, existed, grace) == OnFailure::Retry {
                    tracing::debug!(target_topic = %job.rec.target, offset = job.rec.msg.offset(), "target missing; waiting for it");
                    return self.retry(job);
                }
                let waited = if missing_for > 0 {
                    format!(" after waiting {missing_for} ms for it")
                } else {
                    String::new()
                };
                let dl = DeadLetter::new(
                    Reason::TargetNotFound,
                    format!(
                        "target topic {:?} does not exist{waited} (the router never creates topics)",
                        job.rec.target
                    ),
                );
                return self.dead_letter(job.rec, dl);
            }
            Outcome::Failed(e) => e,
        };
        self.shared
            .metrics
            .producer_errors
            .with_label_values(&[&error_label(&error)])
            .inc();
        let decision = self.on_failure(&mut job, &error);
        if let Commit::Transactional(_) = self.commit {
            return self.fail_transaction(job, decision, &error);
        }
        match decision {
            OnFailure::Retry => {
                tracing::warn!(
                    offset = job.rec.msg.offset(),
                    attempt = job.attempt + 1,
                    error = %error,
                    "produce failed; retrying"
                );
                self.retry(job);
            }
            OnFailure::ReplaceProducer => {
                // A new producer takes over, and this record (like the others in flight) goes again.
                match self.shared.sink.replace(job.generation) {
                    Ok(true) => self.shared.metrics.producer_replacements.inc(),
                    Ok(false) => {}
                    Err(e) => self.shared.fail(format!(
                        "producer failed ({error}) and could not be replaced: {e}"
                    )),
                }
                tracing::warn!(offset = job.rec.msg.offset(), error = %error, "producer replaced; retrying");
                self.retry(job);
            }
            OnFailure::Strip(strip) => {
                job.strip = strip;
                tracing::warn!(offset = job.rec.msg.offset(), ?strip, "record too large even for the dead-letter topic; dead-lettering it without more of it");
                self.start(job);
            }
            OnFailure::Refused => {
                // Never dropped: retried until the dead-letter topic takes it,
                // with the router not ready meanwhile.
                self.dead_letter_refused(&mut job, &error);
                self.retry(job);
            }
            OnFailure::DeadLetter(reason) => {
                let topic = self.destination(&job).to_string();
                let dl = DeadLetter::new(reason, format!("producing to {topic:?} failed: {error}"));
                self.dead_letter(job.rec, dl);
            }
        }
    }

    /// The failure policy's answer for a job ([`on_failure`]), with what it
    /// needs from the task: a topic the broker calls unknown is retried for
    /// [`UNKNOWN_TOPIC_GRACE`] (or `--missing-target-wait`, if longer) when it
    /// is a tier (checked at start) or a target just looked up, since that is a
    /// metadata refresh or a partition move, not a missing topic (at-least-once
    /// mode only). A target
    /// dead-lettered as missing is looked up again next time.
    pub(super) fn on_failure(&self, job: &mut Job, error: &KafkaError) -> OnFailure {
        let failure = classify(error);
        let kind = match &job.action {
            Action::Deliver => Kind::Deliver,
            Action::Forward(_) => Kind::Forward,
            Action::DeadLetter(_) => Kind::DeadLetter(job.strip),
        };
        // Exactly-once: a retry is an abort and a rewind, which forgets how long
        // the topic has been unknown, so it is not retried there.
        let briefly_unknown = failure == Failure::Permanent(Reason::TargetNotFound)
            && matches!(kind, Kind::Deliver | Kind::Forward)
            && matches!(self.commit, Commit::Store)
            && job.missing_for(now_ms())
                < UNKNOWN_TOPIC_GRACE
                    .max(self.shared.limits.missing_target_wait)
                    .as_millis() as i64;
        let decision = on_failure(kind, failure, briefly_unknown);
        if decision == OnFailure::DeadLetter(Reason::TargetNotFound) {
            self.shared.sink.forget_topic(&job.rec.target);
        }
        decision
    }

    /// Where a job's record was going.
    pub(super) fn destination<'a>(&'a self, job: &'a Job) -> &'a str {
        match job.action {
            Action::Forward(t) => self.shared.config.tiers[t].topic(),
            _ => &job.rec.target,
        }
    }

    /// The dead-letter topic refused a dead letter (missing, unauthorised,
    /// refusing the record): it is retried until it is written, the router is
    /// not ready meanwhile (`/readyz` 503, `dead_letters_blocked`), and an
    /// error is logged at most once a minute per partition.
    pub(super) fn dead_letter_refused(&mut self, job: &mut Job, error: &KafkaError) {
        if !job.blocked {
            job.blocked = true;
            self.dead_letters_blocked += 1;
            self.blocked_gauge.set(self.dead_letters_blocked);
        }
        let quiet = self
            .refusal_logged
            .is_some_and(|t| t.elapsed() < DEAD_LETTER_LOG_INTERVAL);
        if quiet {
            tracing::debug!(offset = job.rec.msg.offset(), %error, "dead letter refused again");
        } else {
            self.refusal_logged = Some(Instant::now());
            tracing::error!(
                offset = job.rec.msg.offset(),
                dead_letter_topic = %self.shared.config.dead_letter.topic,
                blocked = self.dead_letters_blocked,
                %error,
                "the dead-letter topic refuses dead letters; retrying them (the partition's commit waits, /readyz answers 503)"
            );
        }
    }

    /// The broker acknowledged the job's record: the source offset is finished.
    pub(super) fn finish(&mut self, job: Job) {
        let offset = job.rec.msg.offset();
        self.done_with(&job.rec);
        if job.blocked {
            self.dead_letters_blocked -= 1;
            self.blocked_gauge.set(self.dead_letters_blocked);
            tracing::info!(
                offset,
                "the dead-letter topic took a dead letter it had refused"
            );
        }
        match job.action {
            Action::Deliver => {
                self.counters.delivered.inc();
                let late_ms = (now_ms() - job.rec.due_at).max(0);
                self.counters.lateness.observe(late_ms as f64 / 1000.0);
            }
            Action::Forward(_) => self.counters.forwarded.inc(),
            Action::DeadLetter(dl) => self
                .shared
                .metrics
                .records_dead_lettered
                .with_label_values(&[&self.topic, dl.reason.code()])
                .inc(),
        }
    }

    pub(super) fn dead_letter(&mut self, rec: Box<Record>, dl: DeadLetter) {
        tracing::warn!(
            offset = rec.msg.offset(),
            reason = %dl.reason,
            detail = %dl.detail,
            "dead-lettering record"
        );
        self.start(Job::new(rec, Action::DeadLetter(dl)));
    }
}
