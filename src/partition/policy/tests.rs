//! Unit tests of the partition task's pure decisions: admission, the
//! cancellation gate and the failure policy.

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
