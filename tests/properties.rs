//! Property tests of everything that parses outside input: durations,
//! `delay-deliver-at`, `delay-target` headers, topics.yaml, and the delay
//! arithmetic the router applies to them. Nothing panics on any input, and the
//! arithmetic never delivers early.
//!
//! More cases: `PROPTEST_CASES=100000 cargo test --release --test properties`.

use kafka_delay_router::delay::{Decision, TierSet, MAX_SLACK_MS};
use kafka_delay_router::duration::{format_ms, parse_ms};
use kafka_delay_router::headers::{parse_epoch_ms, parse_route, DELIVER_AT, TARGET};
use kafka_delay_router::TopicsConfig;
use proptest::prelude::*;
use rdkafka::message::{Header, OwnedHeaders};

fn tier_sets() -> impl Strategy<Value = TierSet> {
    prop::collection::btree_set(1u64..10_000_000, 1..8)
        .prop_map(|s| TierSet::new(s.into_iter().collect()).expect("sorted, distinct, positive"))
}

proptest! {
    #[test]
    fn durations_never_panic(s in ".{0,40}") {
        let _ = parse_ms(&s);
    }

    #[test]
    fn durations_round_trip(ms in 0u64..=(i64::MAX as u64)) {
        prop_assert_eq!(parse_ms(&format_ms(ms)).unwrap(), ms);
    }

    #[test]
    fn deliver_at_accepts_exactly_plain_decimal(bytes in prop::collection::vec(any::<u8>(), 0..24)) {
        let parsed = parse_epoch_ms(Some(&bytes));
        let plain = !bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit);
        let fits = plain && std::str::from_utf8(&bytes).unwrap().parse::<i64>().is_ok();
        prop_assert_eq!(parsed.is_ok(), fits);
        if let Ok(v) = parsed {
            prop_assert!(v >= 0);
            let printed = v.to_string();
            let given = std::str::from_utf8(&bytes).unwrap();
            prop_assert_eq!(printed.trim_start_matches('0'), given.trim_start_matches('0'));
        }
    }

    #[test]
    fn any_headers_route_or_explain(
        pairs in prop::collection::vec(
            (prop_oneof![Just(TARGET.to_string()), Just(DELIVER_AT.to_string()), "[a-z-]{0,12}"],
             prop::option::of(prop::collection::vec(any::<u8>(), 0..300))),
            0..6)
    ) {
        let headers = pairs.iter().fold(OwnedHeaders::new(), |h, (k, v)| h.insert(Header { key: k, value: v.as_deref() }));
        if let Ok(route) = parse_route(Some(headers.as_borrowed())) {
            prop_assert!(!route.target.is_empty() && route.target.len() <= 249);
            prop_assert!(route.deliver_at.is_none_or(|d| d >= 0));
        }
    }

    #[test]
    fn topics_files_never_panic(text in ".{0,300}") {
        let _ = TopicsConfig::parse("fuzz.yaml", &text);
    }

    #[test]
    fn mutated_topics_files_never_panic(cut in 0usize..400, insert in ".{0,12}") {
        let base = include_str!("../topics.yaml");
        let mut cut = cut.min(base.len());
        while !base.is_char_boundary(cut) {
            cut -= 1;
        }
        let text = format!("{}{}{}", &base[..cut], insert, &base[cut..]);
        let _ = TopicsConfig::parse("fuzz.yaml", &text);
    }

    #[test]
    fn decisions_never_deliver_early(tiers in tier_sets(), now in -1_000_000_000_000i64..4_000_000_000_000, left in -10_000_000_000i64..10_000_000_000) {
        let at = now.saturating_add(left);
        match tiers.decide(now, Some(at)) {
            Decision::Deliver => prop_assert!(at <= now),
            Decision::Hold { until_ms } => {
                prop_assert_eq!(until_ms, at);
                prop_assert!(at > now && ((at - now) as u64) < tiers.smallest());
            }
            Decision::Forward { tier } => {
                let d = tiers.delay(tier);
                prop_assert!(at > now);
                prop_assert!(d <= (at - now) as u64 + TierSet::slack_ms(d));
            }
        }
    }

    #[test]
    fn plans_add_up(tiers in tier_sets(), delay in 0u64..200_000_000) {
        let plan = tiers.plan(delay);
        let mut left = delay;
        for &t in &plan.tiers {
            left -= left.min(tiers.delay(t));
        }
        prop_assert_eq!(left, plan.held_ms);
        prop_assert!(plan.held_ms < tiers.smallest());
        let spent: u64 = plan.tiers.iter().map(|&t| tiers.delay(t)).sum();
        prop_assert!(spent <= delay.max(tiers.smallest()) + MAX_SLACK_MS);
    }

    #[test]
    fn ready_time_is_never_after_the_deadline(tiers in tier_sets(), ts in 0i64..4_000_000_000_000, at in prop::option::of(0i64..4_000_000_000_000)) {
        for tier in 0..tiers.delays().len() {
            let ready = tiers.ready_at(tier, ts, at);
            prop_assert!(ready <= ts + tiers.delay(tier) as i64);
            if let Some(at) = at {
                prop_assert!(ready <= at);
            }
        }
    }
}
