//! The wire contract and the guarantees, proven against a real Kafka-protocol
//! broker (Apache Kafka on loopback, started by scripts/test.sh). Each test makes its
//! own tiers, targets and group, so they run side by side.
//!
//! By concern: delivery on time ([`on_time`]), dead letters
//! ([`dead_letters`]), the router's group across kills, stops and
//! rebalances ([`group`]), and the topics it needs ([`topics`]).

#[path = "../common/mod.rs"]
mod common;

mod dead_letters;
mod group;
mod on_time;
mod topics;

use std::collections::HashMap;

use common::*;

/// Largest lateness accepted for a record seen by a consumer of the target
/// (router timer + produce + broker fetch), on a busy 2-core machine.
const MAX_LATE_MS: i64 = 100;

/// Checks never-early and lateness for records whose due time is known by value.
fn check_on_time(got: &[Received], due_by_value: &HashMap<String, i64>) -> i64 {
    let mut max_late = i64::MIN;
    for r in got {
        let due = due_by_value[&r.value_str()];
        assert!(
            r.timestamp >= due,
            "{} produced at {} before its due time {due}",
            r.value_str(),
            r.timestamp
        );
        assert!(
            r.arrived_ms >= due,
            "{} arrived {} ms early",
            r.value_str(),
            due - r.arrived_ms
        );
        max_late = max_late.max(r.arrived_ms - due);
    }
    max_late
}

#[test]
fn java_partitioner_matches_kafka_test_vectors() {
    // Kafka's UtilsTest.testMurmur2.
    assert_eq!(murmur2(b"21"), -973932308);
    assert_eq!(murmur2(b"foobar"), -790332482);
    assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
    assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
    assert_eq!(
        murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
        -58897971
    );
    assert_eq!(murmur2(b"abc"), 479470107);
}
