//! The cancel topic's configs as Kafka's DescribeConfigs shows them: what
//! `create-topics` sets (`cleanup.policy=compact,delete`, the retention), and
//! the compaction test's settings.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;
use crate::compact::CANCEL_CONFIGS;
use rdkafka::admin::{AdminClient, AdminOptions, ConfigSource, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap()
}

/// Kafka's view of a topic's configs: name -> (value, set on the topic).
pub async fn topic_configs(topic: &str) -> BTreeMap<String, (String, bool)> {
    let described = admin()
        .describe_configs(
            &[ResourceSpecifier::Topic(topic)],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    let resource = described.into_iter().next().unwrap().unwrap();
    resource
        .entries
        .into_iter()
        .filter_map(|e| {
            let on_topic = e.source == ConfigSource::DynamicTopic;
            e.value.map(|v| (e.name, (v, on_topic)))
        })
        .collect()
}

/// Asserts that Kafka holds `value` for `name`, set on the topic itself.
pub fn assert_set(
    configs: &BTreeMap<String, (String, bool)>,
    topic: &str,
    name: &str,
    value: &str,
) {
    let got = configs.get(name);
    assert_eq!(
        got,
        Some(&(value.to_string(), true)),
        "{topic}: {name} should be {value}, set on the topic"
    );
    println!("{topic}: {name}={value} (set on the topic)");
}

/// `create-topics` run as users run it, then its cancel topic as Kafka describes it.
pub async fn create_topics_sets_the_documented_retention() {
    let cases = [
        // (max-delay, retention key, the retention.ms expected)
        ("2h", "", 2 * 3_600_000 + 86_400_000u64),
        ("7d", "", 8 * 86_400_000),
        ("1h", ", retention: 3d", 3 * 86_400_000),
    ];
    for (max_delay, retention, want_ms) in cases {
        let cancel = unique("ct-cancel");
        // The shared helper's topics file (a tier, the dead-letter topic and
        // whatever else it declares), with this cancel topic; nothing created.
        let env = Env::declare(
            "ct",
            &[1_000],
            1,
            0,
            &format!(
                "max-delay: {max_delay}\ncancel: {{topic: {cancel}, partitions: 2{retention}}}\n"
            ),
        );
        let path = env.config_path.clone();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_kafka-delay-router"))
                .args(["create-topics", "--config"])
                .arg(&path)
                .args(["--bootstrap-servers", &bootstrap()])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "create-topics: {text}");
        assert!(text.contains(&format!("created {cancel}")), "{text}");
        let configs = topic_configs(&cancel).await;
        assert_set(&configs, &cancel, "cleanup.policy", "compact,delete");
        assert_set(&configs, &cancel, "retention.ms", &want_ms.to_string());
    }
}

/// The cancel topic's configs for the compaction test, as Kafka holds them.
pub async fn assert_compaction_settings(topic: &str) {
    let configs = topic_configs(topic).await;
    assert_set(&configs, topic, "cleanup.policy", "compact,delete");
    assert_set(
        &configs,
        topic,
        "retention.ms",
        &(8 * 86_400_000u64).to_string(),
    );
    for (name, value) in CANCEL_CONFIGS {
        assert_set(&configs, topic, name, value);
    }
}
