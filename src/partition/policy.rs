//! The partition task's decisions about a record, as pure functions of
//! their inputs and `now` (no I/O): whether a record just read can be routed
//! ([`admit`]), whether one about to go is cancelled or must wait for the
//! cancel view ([`gate`]), and what to do when producing it failed
//! ([`on_failure`], [`on_missing_target`]), the same for at-least-once and
//! exactly-once mode.
//!
//! Guarantees: every record is either admitted with a due time or given a
//! dead-letter reason (never dropped); a failure is retried while it can
//! still succeed, dead-lettered when it never can, and a dead letter itself
//! is never given up on.

use std::collections::HashSet;

use rdkafka::message::BorrowedHeaders;

use crate::cancel;
use crate::dead_letter::{DeadLetter, Reason, Strip};
use crate::delay::{self, TierSet};
use crate::headers;
use crate::sink::Failure;
use crate::targets::TargetAllowList;

/// What admission checks a record against: the router's tiers and limits.
pub struct Rules<'a> {
    /// The router's tiers.
    pub tiers: &'a TierSet,
    /// The tier the record was read from.
    pub tier: usize,
    /// Tier and dead-letter topics: never a target.
    pub internal: &'a HashSet<String>,
    /// The topics the router may deliver to.
    pub targets: &'a TargetAllowList,
    /// The longest delay accepted (`max-delay`): a record due further ahead is dead-lettered.
    pub max_delay_ms: u64,
    /// How far ahead of the router's clock a record's timestamp may be before it is dead-lettered.
    pub max_clock_skew_ms: i64,
    /// A cancel topic is declared: `delay-id` is read (and checked).
    pub ids: bool,
}

/// A record that can be routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// Its `delay-target`.
    pub target: String,
    /// Its `delay-deliver-at`, if given (epoch ms).
    pub deliver_at: Option<i64>,
    /// When it must be delivered.
    pub due_at: i64,
    /// When its wait in this tier ends.
    pub ready_at: i64,
    /// Its `delay-id`, when cancellation is on and it has one.
    pub id: Option<Box<[u8]>>,
}

/// Whether a record read from a tier at `now` (with its `timestamp`, in
/// epoch ms) can be routed, or why it must be dead-lettered.
pub fn admit(
    rules: &Rules<'_>,
    record_headers: Option<&BorrowedHeaders>,
    timestamp: i64,
    now: i64,
) -> Result<Admitted, DeadLetter> {
    let route = headers::parse_route(record_headers).map_err(DeadLetter::from)?;
    let id = match rules.ids {
        false => None,
        true => cancel::delay_id(record_headers)
            .map_err(|r| DeadLetter::new(Reason::InvalidId, r.detail))?
            .map(Box::from),
    };
    if rules.internal.contains(&route.target) {
        return Err(DeadLetter::new(
            Reason::TargetIsInternal,
            format!(
                "target {:?} is a tier or the dead-letter topic of this router",
                route.target
            ),
        ));
    }
    if !rules.targets.allows(&route.target) {
        return Err(DeadLetter::new(
            Reason::TargetNotAllowed,
            format!(
                "target {:?} is not in the targets.allow list of topics.yaml ({})",
                route.target, rules.targets
            ),
        ));
    }
    let tiers = rules.tiers;
    let due_at = tiers.due_at(rules.tier, timestamp, route.deliver_at);
    if delay::too_far(now, due_at, rules.max_delay_ms) {
        return Err(DeadLetter::new(
            Reason::DueTooFar,
            format!(
                "due at {due_at}, more than max-delay {} ms after now ({now})",
                rules.max_delay_ms
            ),
        ));
    }
    let ready_at = tiers.ready_at(rules.tier, timestamp, route.deliver_at);
    let longest_wait = tiers.delay(rules.tier) as i64 + rules.max_clock_skew_ms;
    if ready_at.saturating_sub(now) > longest_wait {
        return Err(DeadLetter::new(
            Reason::TimestampInFuture,
            format!("record timestamp {timestamp} is ahead of the router's clock ({now}) by more than the allowed skew"),
        ));
    }
    Ok(Admitted {
        target: route.target,
        deliver_at: route.deliver_at,
        due_at,
        ready_at,
        id,
    })
}

/// Whether a record about to be forwarded or delivered may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Not cancelled, and the cancel view is fresh enough: forward or deliver it.
    Go,
    /// Its id is cancelled: drop it (never produced, its offset finished).
    Cancelled,
    /// A delivery whose due time the cancel view has not reached: a
    /// cancellation acknowledged before it may not be read yet, so it waits.
    WaitForView,
}

/// What the gate asks of the cancel view (the shared [`crate::cancel::Cancellations`],
/// or a fake in tests).
pub trait CancelView {
    /// Every cancellation acknowledged before this time (epoch ms) is in the view.
    fn fresh_until(&self) -> i64;
    /// Whether `id` is cancelled by a cancellation valid at `at_ms`.
    fn is_cancelled(&self, id: &[u8], at_ms: i64) -> bool;
}

impl CancelView for crate::cancel::Cancellations {
    fn fresh_until(&self) -> i64 {
        crate::cancel::Cancellations::fresh_until(self)
    }
    fn is_cancelled(&self, id: &[u8], at_ms: i64) -> bool {
        crate::cancel::Cancellations::is_cancelled(self, id, at_ms)
    }
}

/// [`gate`] for a record with `id` (or none) due at `due_at`, asking `view`.
/// Freshness is read first, then the cancellation: the reader inserts a
/// cancellation before it moves freshness past it (and freshness is read
/// with acquire ordering), so a view fresh up to the due time read first
/// already holds every cancellation acknowledged before it. Read the other
/// way round, the reader could insert the cancellation and advance freshness
/// between the two reads, and a cancelled record would pass as fresh and not
/// cancelled.
pub fn check_view(view: &impl CancelView, id: Option<&[u8]>, delivery: bool, due_at: i64) -> Gate {
    let Some(id) = id else {
        return Gate::Go;
    };
    let fresh_until = view.fresh_until();
    let cancelled = view.is_cancelled(id, due_at);
    gate(true, cancelled, delivery, due_at, fresh_until)
}

/// The cancellation check before a record with an id goes: `cancelled` is
/// the view's answer for its id, `fresh_until` the time up to which every
/// acknowledged cancellation is in the view. A forward only needs the
/// answer (the record is checked again at its delivery); a delivery also
/// needs the view to be fresh up to its due time, which is what makes a
/// cancellation acknowledged before the due time always win.
pub fn gate(has_id: bool, cancelled: bool, delivery: bool, due_at: i64, fresh_until: i64) -> Gate {
    if !has_id {
        Gate::Go
    } else if cancelled {
        Gate::Cancelled
    } else if delivery && fresh_until < due_at {
        Gate::WaitForView
    } else {
        Gate::Go
    }
}

/// What a failed produce was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A delivery to the target topic.
    Deliver,
    /// A forward to a later tier.
    Forward,
    /// A dead letter, leaving out what `Strip` says.
    DeadLetter(Strip),
}

/// What to do with a job whose produce failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Produce it again after a backoff.
    Retry,
    /// The producer can never write again (fenced, idempotence state lost):
    /// replace it, then produce again.
    ReplaceProducer,
    /// It can never be written there: dead-letter it with this reason.
    DeadLetter(Reason),
    /// A dead letter too large for the dead-letter topic: produce it again
    /// leaving out this much of the record.
    Strip(Strip),
    /// The dead-letter topic refuses it: produce it again after a backoff,
    /// with the router not ready until it is written.
    Refused,
}

/// What to do when producing failed with `failure` ([`crate::sink::classify`]).
/// `briefly_unknown` is true while a topic the broker calls unknown is
/// likely a metadata refresh or a partition move (a tier, or a target that
/// was found before, within its grace): retried rather than dead-lettered.
pub fn on_failure(kind: Kind, failure: Failure, briefly_unknown: bool) -> OnFailure {
    match (failure, kind) {
        (Failure::Transient, _) => OnFailure::Retry,
        (Failure::Fatal, _) => OnFailure::ReplaceProducer,
        (Failure::Permanent(Reason::TargetNotFound), Kind::Deliver | Kind::Forward)
            if briefly_unknown =>
        {
            OnFailure::Retry
        }
        (Failure::Permanent(reason), Kind::Deliver | Kind::Forward) => {
            OnFailure::DeadLetter(reason)
        }
        (Failure::Permanent(Reason::RecordTooLarge), Kind::DeadLetter(strip)) => match strip.next()
        {
            Some(more) => OnFailure::Strip(more),
            None => OnFailure::Refused,
        },
        (Failure::Permanent(_), Kind::DeadLetter(_)) => OnFailure::Refused,
    }
}

/// A delivery whose target topic was not found: wait for it (it may be on its
/// way) for `wait_ms`, then dead-letter it. A target that was seen before is
/// more likely in a metadata blip than deleted: it waits at least `grace_ms`.
pub fn on_missing_target(
    missing_for_ms: i64,
    wait_ms: i64,
    existed: bool,
    grace_ms: i64,
) -> OnFailure {
    let wait = if existed {
        wait_ms.max(grace_ms)
    } else {
        wait_ms
    };
    if missing_for_ms < wait {
        OnFailure::Retry
    } else {
        OnFailure::DeadLetter(Reason::TargetNotFound)
    }
}

#[cfg(test)]
mod tests;
