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
mod tests {
    use super::*;
    use crate::config::TopicsConfig;
    use rdkafka::message::{Header, Headers, OwnedHeaders};

    const NOW: i64 = 1_700_000_000_000;

    fn config() -> TopicsConfig {
        TopicsConfig::parse(
            "t.yaml",
            "tiers:\n  - {topic: d1s, delay: 1s, partitions: 1, replication-factor: 1}\n  - {topic: d1m, delay: 1m, partitions: 1, replication-factor: 1}\ndead-letter:\n  topic: dlq\n  partitions: 1\n  replication-factor: 1\nmax-delay: 1d\ntargets: {allow: [o, 'orders*', d1s, dlq]}\n",
        )
        .unwrap()
    }

    fn check(tier: usize, pairs: &[(&str, &str)], timestamp: i64) -> Result<Admitted, DeadLetter> {
        let config = config();
        let tiers = config.tier_set();
        let internal = config.internal_topic_names();
        let rules = Rules {
            tiers: &tiers,
            tier,
            internal: &internal,
            targets: &config.targets,
            max_delay_ms: config.max_delay_ms,
            max_clock_skew_ms: 60_000,
            ids: true,
        };
        let mut h = OwnedHeaders::new();
        for (k, v) in pairs {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let owned = (!pairs.is_empty()).then_some(h);
        let borrowed = owned.as_ref().map(|h| h.as_borrowed());
        assert_eq!(owned.as_ref().map_or(0, |h| h.count()), pairs.len());
        admit(&rules, borrowed, timestamp, NOW)
    }

    fn reason(r: Result<Admitted, DeadLetter>) -> Reason {
        r.expect_err("dead-lettered").reason
    }

    #[test]
    fn a_record_with_a_target_is_due_after_its_tier_delay() {
        let a = check(0, &[(headers::TARGET, "orders")], NOW - 200).unwrap();
        assert_eq!(a.target, "orders");
        assert_eq!(a.deliver_at, None);
        assert_eq!(a.due_at, NOW + 800);
        assert_eq!(a.ready_at, NOW + 800);
    }

    #[test]
    fn deliver_at_sets_the_due_time() {
        let at = NOW + 30_000;
        let a = check(
            1,
            &[
                (headers::TARGET, "orders"),
                (headers::DELIVER_AT, &at.to_string()),
            ],
            NOW,
        )
        .unwrap();
        assert_eq!(a.due_at, at);
        assert_eq!(a.deliver_at, Some(at));
        assert!(a.ready_at <= at);
    }

    #[test]
    fn records_that_cannot_be_routed_get_a_reason() {
        assert_eq!(reason(check(0, &[], NOW)), Reason::MissingTarget);
        assert_eq!(
            reason(check(0, &[(headers::TARGET, "d1m")], NOW)),
            Reason::TargetIsInternal
        );
        assert_eq!(
            reason(check(0, &[(headers::TARGET, "dlq")], NOW)),
            Reason::TargetIsInternal,
            "internal even when the allow-list names it"
        );
        // The confused deputy: a topic outside targets.allow is never a target.
        for outside in ["payments", "order", "o2", "x.orders"] {
            assert_eq!(
                reason(check(0, &[(headers::TARGET, outside)], NOW)),
                Reason::TargetNotAllowed,
                "{outside}"
            );
        }
        assert!(check(0, &[(headers::TARGET, "orders.eu")], NOW).is_ok());
        let far = (NOW + 2 * 86_400_000).to_string();
        assert_eq!(
            reason(check(
                0,
                &[(headers::TARGET, "o"), (headers::DELIVER_AT, &far)],
                NOW
            )),
            Reason::DueTooFar
        );
        assert_eq!(
            reason(check(0, &[(headers::TARGET, "o")], NOW + 120_000)),
            Reason::TimestampInFuture,
            "a producer clock two minutes ahead"
        );
        assert!(
            check(0, &[(headers::TARGET, "o")], NOW + 30_000).is_ok(),
            "skew within the allowance waits instead"
        );
    }

    #[test]
    fn a_delay_id_is_kept_when_valid_and_dead_lettered_when_not() {
        let a = check(
            0,
            &[(headers::TARGET, "o"), (cancel::ID_HEADER, "order-42")],
            NOW,
        )
        .unwrap();
        assert_eq!(a.id.as_deref(), Some(&b"order-42"[..]));
        assert_eq!(check(0, &[(headers::TARGET, "o")], NOW).unwrap().id, None);
        assert_eq!(
            reason(check(
                0,
                &[(headers::TARGET, "o"), (cancel::ID_HEADER, "")],
                NOW
            )),
            Reason::InvalidId
        );
        let long = "x".repeat(256);
        assert_eq!(
            reason(check(
                0,
                &[(headers::TARGET, "o"), (cancel::ID_HEADER, &long)],
                NOW
            )),
            Reason::InvalidId
        );
    }

    /// A view whose reader runs one step (inserts the cancellation of `x`,
    /// then moves freshness past the due time) right after the gate's first
    /// read, whichever that is: the interleaving that let a cancelled record
    /// through when the gate read "cancelled?" before "fresh?".
    struct ReaderBetweenReads {
        reads: std::cell::Cell<u32>,
    }

    impl ReaderBetweenReads {
        /// The reader's step has run once one read was answered.
        fn stepped(&self) -> bool {
            let before = self.reads.get();
            self.reads.set(before + 1);
            before >= 1
        }
    }

    impl CancelView for ReaderBetweenReads {
        fn fresh_until(&self) -> i64 {
            if self.stepped() {
                NOW + 1_000
            } else {
                NOW - 1_000
            }
        }
        fn is_cancelled(&self, id: &[u8], _at_ms: i64) -> bool {
            self.stepped() && id == b"x"
        }
    }

    #[test]
    fn a_cancellation_read_between_the_gates_two_reads_still_wins() {
        let view = ReaderBetweenReads {
            reads: std::cell::Cell::new(0),
        };
        // Due at NOW, cancelled (acknowledged before NOW) while the gate looks.
        let g = check_view(&view, Some(b"x"), true, NOW);
        // Freshness read first (not fresh yet), the cancellation after (in):
        // dropped. The other order saw "not cancelled" and then "fresh": Go.
        assert_eq!(
            g,
            Gate::Cancelled,
            "a record cancelled in time passed the gate"
        );
        // Looked at again, the view is fresh and holds the cancellation.
        assert_eq!(check_view(&view, Some(b"x"), true, NOW), Gate::Cancelled);
        assert_eq!(check_view(&view, None, true, NOW), Gate::Go);
    }

    #[test]
    fn the_gate_drops_cancelled_and_holds_deliveries_until_the_view_is_fresh() {
        let due = NOW;
        // Without an id nothing is asked.
        for (c, d, f) in [(true, true, i64::MIN), (false, true, i64::MIN)] {
            assert_eq!(gate(false, c, d, due, f), Gate::Go);
        }
        // Cancelled: dropped at any hop, whatever the view's freshness.
        for d in [true, false] {
            for f in [i64::MIN, due, i64::MAX] {
                assert_eq!(gate(true, true, d, due, f), Gate::Cancelled);
            }
        }
        // Not cancelled: a delivery waits until the view is fresh up to its due time.
        assert_eq!(gate(true, false, true, due, due - 1), Gate::WaitForView);
        assert_eq!(gate(true, false, true, due, due), Gate::Go);
        assert_eq!(gate(true, false, true, due, due + 500), Gate::Go);
        // A forward goes on: it is checked again when it is delivered.
        assert_eq!(gate(true, false, false, due, i64::MIN), Gate::Go);
    }

    #[test]
    fn transient_failures_retry_and_fatal_ones_replace_the_producer() {
        for kind in [
            Kind::Deliver,
            Kind::Forward,
            Kind::DeadLetter(Strip::Nothing),
        ] {
            for briefly in [false, true] {
                assert_eq!(
                    on_failure(kind, Failure::Transient, briefly),
                    OnFailure::Retry
                );
                assert_eq!(
                    on_failure(kind, Failure::Fatal, briefly),
                    OnFailure::ReplaceProducer
                );
            }
        }
    }

    #[test]
    fn a_record_that_can_never_be_written_is_dead_lettered() {
        for kind in [Kind::Deliver, Kind::Forward] {
            for r in [
                Reason::RecordTooLarge,
                Reason::TargetUnauthorized,
                Reason::InvalidTarget,
                Reason::Rejected,
            ] {
                for briefly in [false, true] {
                    assert_eq!(
                        on_failure(kind, Failure::Permanent(r), briefly),
                        OnFailure::DeadLetter(r)
                    );
                }
            }
            let unknown = Failure::Permanent(Reason::TargetNotFound);
            assert_eq!(on_failure(kind, unknown, true), OnFailure::Retry);
            assert_eq!(
                on_failure(kind, unknown, false),
                OnFailure::DeadLetter(Reason::TargetNotFound)
            );
        }
    }

    #[test]
    fn a_dead_letter_too_large_is_stripped_step_by_step_then_kept_retrying() {
        let too_large = Failure::Permanent(Reason::RecordTooLarge);
        let mut strip = Strip::Nothing;
        let mut steps = Vec::new();
        while let OnFailure::Strip(next) = on_failure(Kind::DeadLetter(strip), too_large, false) {
            steps.push(next);
            strip = next;
        }
        assert_eq!(steps, [Strip::Value, Strip::Headers, Strip::Key]);
        assert_eq!(
            on_failure(Kind::DeadLetter(strip), too_large, false),
            OnFailure::Refused
        );
    }

    #[test]
    fn a_dead_letter_is_never_given_up() {
        for r in [
            Reason::TargetNotFound,
            Reason::TargetUnauthorized,
            Reason::InvalidTarget,
            Reason::Rejected,
        ] {
            for strip in [Strip::Nothing, Strip::Key] {
                for briefly in [false, true] {
                    assert_eq!(
                        on_failure(Kind::DeadLetter(strip), Failure::Permanent(r), briefly),
                        OnFailure::Refused
                    );
                }
            }
        }
    }

    #[test]
    fn a_missing_target_waits_its_wait_and_one_seen_before_its_grace() {
        assert_eq!(
            on_missing_target(0, 0, false, 30_000),
            OnFailure::DeadLetter(Reason::TargetNotFound)
        );
        assert_eq!(on_missing_target(0, 5_000, false, 30_000), OnFailure::Retry);
        assert_eq!(
            on_missing_target(4_999, 5_000, false, 30_000),
            OnFailure::Retry
        );
        assert_eq!(
            on_missing_target(5_000, 5_000, false, 30_000),
            OnFailure::DeadLetter(Reason::TargetNotFound)
        );
        assert_eq!(
            on_missing_target(5_000, 5_000, true, 30_000),
            OnFailure::Retry
        );
        assert_eq!(on_missing_target(29_999, 0, true, 30_000), OnFailure::Retry);
        assert_eq!(
            on_missing_target(30_000, 0, true, 30_000),
            OnFailure::DeadLetter(Reason::TargetNotFound)
        );
        assert_eq!(
            on_missing_target(40_000, 60_000, true, 30_000),
            OnFailure::Retry
        );
    }
}
