//! Unit tests of `topics.yaml` parsing and validation.

use super::*;

const GOOD: &str = r#"
tiers:
  - {topic: delay-1s, delay: 1s, partitions: 3}
  - {topic: delay-5s, delay: 5s}
  - topic: delay-1h
    delay: 1h
    retention: 2d
    configs:
      min.insync.replicas: 2
      compression.type: lz4
dead-letter:
  topic: delay-dlq
  retention: 14d
max-delay: 3d
targets: {allow: ['*']}
"#;

fn err(text: &str) -> String {
    TopicsConfig::parse("t.yaml", text).unwrap_err().to_string()
}

#[test]
fn the_cancel_topic_is_optional_compacted_and_outlives_max_delay() {
    let c = TopicsConfig::parse("t.yaml", GOOD).unwrap();
    assert!(c.cancel.is_none());
    assert_eq!(c.all_specs().count(), 4);
    let base = "tiers: [{topic: a, delay: 1s}]\ndead-letter: {topic: d}\nmax-delay: 2d\ntargets: {allow: ['*']}\n";
    let c = TopicsConfig::parse(
        "t.yaml",
        &format!("{base}cancel: {{topic: delay-cancel, partitions: 3}}\n"),
    )
    .unwrap();
    let spec = c.cancel.as_ref().unwrap();
    assert_eq!(spec.partitions, 3);
    assert_eq!(spec.retention_ms, 3 * 86_400_000);
    assert_eq!(spec.configs["cleanup.policy"], "compact,delete");
    assert_eq!(spec.configs["retention.ms"], "259200000");
    assert!(!spec.configs.contains_key("message.timestamp.type"));
    assert!(c.internal_topics().contains("delay-cancel"));
    assert_eq!(c.all_specs().last().unwrap().topic, "delay-cancel");
    let c = TopicsConfig::parse(
        "t.yaml",
        &format!(
            "{base}cancel: {{topic: c, retention: 2d, configs: {{cleanup.policy: compact}}}}\n"
        ),
    )
    .unwrap();
    assert_eq!(c.cancel.unwrap().configs["cleanup.policy"], "compact");
    for (extra, key) in [
        ("cancel: {topic: c, retention: 1d}", "cancel.retention"),
        ("cancel: {topic: c, delay: 1s}", "cancel.delay"),
        (
            "cancel: {topic: c, configs: {cleanup.policy: delete}}",
            "cancel.configs.cleanup.policy",
        ),
        ("cancel: {topic: d}", "cancel.topic"),
        ("cancel: {topic: a}", "cancel.topic"),
        ("cancel: {topic: c, partitions: 0}", "cancel.partitions"),
    ] {
        let e = err(&format!("{base}{extra}\n"));
        assert!(e.contains(key) && e.contains("fix:"), "{extra}: {e}");
    }
}

#[test]
fn parses_a_full_file_with_defaults() {
    let c = TopicsConfig::parse("t.yaml", GOOD).unwrap();
    assert_eq!(c.tiers.len(), 3);
    assert_eq!(c.tiers[0].delay_ms, 1_000);
    assert_eq!(c.tiers[0].spec.partitions, 3);
    assert_eq!(c.tiers[1].spec.partitions, DEFAULT_PARTITIONS);
    assert_eq!(c.tiers[1].spec.retention_ms, DEFAULT_RETENTION_MS);
    assert_eq!(c.tiers[2].spec.configs["retention.ms"], "172800000");
    assert_eq!(c.tiers[2].spec.configs["min.insync.replicas"], "2");
    assert_eq!(
        c.tiers[2].spec.configs["message.timestamp.type"],
        "CreateTime"
    );
    assert!(!c.dead_letter.configs.contains_key("message.timestamp.type"));
    assert_eq!(c.max_delay_ms, 3 * 86_400_000);
    assert_eq!(c.tier_set().delays(), &[1_000, 5_000, 3_600_000]);
    assert_eq!(c.internal_topics().len(), 4);
}

#[test]
fn the_shipped_topics_file_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/topics.yaml");
    let c = TopicsConfig::load(path).unwrap();
    let names: Vec<_> = c.tiers.iter().map(|t| t.topic().to_string()).collect();
    assert_eq!(
        names,
        [
            "delay-1s",
            "delay-5s",
            "delay-30s",
            "delay-1m",
            "delay-10m",
            "delay-1h"
        ]
    );
    assert_eq!(c.dead_letter.topic, "delay-dlq");
    assert_eq!(c.max_delay_ms, DEFAULT_MAX_DELAY_MS);
}

#[test]
fn unknown_keys_are_rejected_with_their_name() {
    let e = err("tiers: [{topic: a, delay: 1s, partitons: 3}]\ndead-letter: {topic: d}\n");
    assert!(e.contains("partitons"), "{e}");
    assert!(e.contains("t.yaml"), "{e}");
    let e = err("tiers: [{topic: a, delay: 1s}]\ndead-letter: {topic: d}\nmax_delay: 1d\n");
    assert!(e.contains("max_delay"), "{e}");
}

#[test]
fn delays_must_strictly_increase() {
    let e = err("tiers: [{topic: a, delay: 5s}, {topic: b, delay: 5s}]\ndead-letter: {topic: d}\n");
    assert!(
        e.contains("tiers[1].delay") && e.contains("strictly increasing"),
        "{e}"
    );
    let e = err("tiers: [{topic: a, delay: 5s}, {topic: b, delay: 1s}]\ndead-letter: {topic: d}\n");
    assert!(e.contains("tiers[1].delay"), "{e}");
}

#[test]
fn retention_must_exceed_the_delay() {
    let e = err("tiers: [{topic: a, delay: 1h, retention: 1h}]\ndead-letter: {topic: d}\n");
    assert!(
        e.contains("tiers[0].retention") && e.contains("before they are due"),
        "{e}"
    );
    let e = err(
        "tiers: [{topic: a, delay: 1h, configs: {retention.ms: 5}}]\ndead-letter: {topic: d}\n",
    );
    assert!(e.contains("tiers[0].configs.retention.ms"), "{e}");
}

#[test]
fn duplicate_topics_are_rejected() {
    let e = err("tiers: [{topic: a, delay: 1s}, {topic: a, delay: 2s}]\ndead-letter: {topic: d}\n");
    assert!(e.contains("tiers[1].topic") && e.contains("twice"), "{e}");
    let e = err("tiers: [{topic: a, delay: 1s}]\ndead-letter: {topic: a}\n");
    assert!(e.contains("dead-letter.topic"), "{e}");
}

#[test]
fn other_mistakes_name_their_key() {
    let cases = [
            ("tiers: []\ndead-letter: {topic: d}\n", "`tiers`"),
            ("tiers: [{topic: a}]\ndead-letter: {topic: d}\n", "tiers[0].delay"),
            ("tiers: [{topic: a, delay: 0s}]\ndead-letter: {topic: d}\n", "tiers[0].delay"),
            ("tiers: [{topic: a, delay: 10}]\ndead-letter: {topic: d}\n", "tiers[0].delay"),
            ("tiers: [{topic: 'a b', delay: 1s}]\ndead-letter: {topic: d}\n", "tiers[0].topic"),
            ("tiers: [{topic: a, delay: 1s, partitions: 0}]\ndead-letter: {topic: d}\n", "tiers[0].partitions"),
            ("tiers: [{topic: a, delay: 1s, replication-factor: 0}]\ndead-letter: {topic: d}\n", "tiers[0].replication-factor"),
            ("tiers: [{topic: a, delay: 1s, configs: {cleanup.policy: compact}}]\ndead-letter: {topic: d}\n", "cleanup.policy"),
            ("tiers: [{topic: a, delay: 1s, configs: {message.timestamp.type: Foo}}]\ndead-letter: {topic: d}\n", "message.timestamp.type"),
            ("tiers: [{topic: a, delay: 1s, configs: {x: [1]}}]\ndead-letter: {topic: d}\n", "configs.x"),
            ("tiers: [{topic: a, delay: 1s}]\ndead-letter: {topic: d, delay: 1s}\n", "dead-letter.delay"),
            ("tiers: [{topic: a, delay: 1m}]\ndead-letter: {topic: d}\nmax-delay: 1s\n", "max-delay"),
            ("tiers: [{topic: a, delay: 1m}]\ndead-letter: {topic: ''}\n", "dead-letter.topic"),
        ];
    for (text, key) in cases {
        let e = err(text);
        assert!(e.contains(key) && e.contains("fix:"), "{text:?} gave {e}");
    }
}

#[test]
fn missing_file_names_the_path() {
    let e = TopicsConfig::load("/nonexistent/topics.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/topics.yaml"), "{e}");
}

#[test]
fn tiers_are_selected_by_delay_or_topic() {
    let c = TopicsConfig::parse("t.yaml", GOOD).unwrap();
    assert_eq!(c.select_tiers(&[]).unwrap(), vec![0, 1, 2]);
    assert_eq!(
        c.select_tiers(&["1h".into(), "delay-1s".into()]).unwrap(),
        vec![0, 2]
    );
    assert!(c
        .select_tiers(&["2s".into()])
        .unwrap_err()
        .to_string()
        .contains("delay-1s (1s)"));
}

#[test]
fn topic_names_follow_kafka_rules() {
    assert!(validate_topic_name("orders.v1_x-y").is_ok());
    assert!(validate_topic_name("").is_err());
    assert!(validate_topic_name("..").is_err());
    assert!(validate_topic_name("a/b").is_err());
    assert!(validate_topic_name("é").is_err());
    assert!(validate_topic_name(&"a".repeat(250)).is_err());
    assert!(validate_topic_name(&"a".repeat(249)).is_ok());
}
