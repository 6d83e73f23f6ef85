//! The status report's pure parts: the per-tier summary and the table and JSON it prints.

use super::*;

fn config() -> TopicsConfig {
    TopicsConfig::parse(
        "t.yaml",
        "tiers:\n  - {topic: d1s, delay: 1s, partitions: 2, replication-factor: 1}\n  - {topic: d1m, delay: 1m, partitions: 1, replication-factor: 1}\ndead-letter:\n  topic: dlq\n  partitions: 1\n  replication-factor: 1\nmax-delay: 1d\ntargets: {allow: ['*']}\n",
    )
    .unwrap()
}

fn part(
    tier: &str,
    partition: i32,
    waiting: i64,
    act_at: Option<i64>,
    owner: bool,
) -> PartitionStatus {
    PartitionStatus {
        tier: tier.to_string(),
        partition,
        committed: Some(10),
        start: 0,
        end: 10 + waiting,
        waiting,
        head: act_at.map(|act_at| Head {
            offset: 10,
            act_at,
            due_at: Some(act_at),
            dead_letter: None,
        }),
        owner: owner.then(|| "router@host".to_string()),
    }
}

#[test]
fn the_summary_sums_waiting_and_takes_the_worst_head() {
    let now = 1_000_000;
    let parts = [
        part("d1s", 0, 5, Some(now - 2_500), true),
        part("d1s", 1, 7, Some(now + 300), false),
        part("d1m", 0, 0, None, true),
    ];
    let s = summarize(&config(), &parts, now);
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].tier, "d1s");
    assert_eq!(s[0].waiting, 12);
    assert_eq!(s[0].next_act_at, Some(now - 2_500));
    assert_eq!(s[0].overdue_seconds, 2.5);
    assert_eq!(s[0].unowned, Some(1));
    assert_eq!(s[1].waiting, 0);
    assert_eq!(s[1].next_act_at, None);
    assert_eq!(s[1].overdue_seconds, 0.0);
}

#[test]
fn the_table_shows_overdue_and_upcoming_heads() {
    let now = 1_000_000;
    let parts = vec![
        part("d1s", 0, 5, Some(now - 2_500), true),
        part("d1s", 1, 7, Some(now + 300), false),
    ];
    let report = Report {
        group: "g".into(),
        group_state: Some("Stable".into()),
        members: vec!["router@host".into()],
        targets_allowed: vec!["orders.*".into(), "billing".into()],
        now,
        tiers: summarize(&config(), &parts, now),
        partitions: parts,
    };
    let text = render(&report);
    assert!(
        text.contains("group g (Stable), members: router@host"),
        "{text}"
    );
    assert!(
        text.contains("targets allowed: orders.*, billing"),
        "{text}"
    );
    assert!(text.contains("due 2s500ms ago"), "{text}");
    assert!(text.contains("in 300ms"), "{text}");
    assert!(text.contains("router@host"), "{text}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["tiers"][0]["overdue_seconds"], 2.5);
    assert_eq!(json["partitions"][1]["owner"], serde_json::Value::Null);
}
