//! The topics the router needs: `create-topics` is idempotent and reports
//! drift, and the router refuses to start without them.

use std::process::Command;

use crate::common::*;

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kafka-delay-router"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_topics_is_idempotent_and_reports_drift() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let prefix = unique("ct");
    let (_dir, path) = topics_file(&format!(
        "tiers:\n  - {{topic: {prefix}-a, delay: 1s, partitions: 3}}\n  - {{topic: {prefix}-b, delay: 2s, partitions: 3}}\n  - {{topic: {prefix}-c, delay: 5s, partitions: 2}}\n  - {{topic: {prefix}-d, delay: 9s, partitions: 2}}\ndead-letter: {{topic: {prefix}-dlq}}\ntargets: {{allow: ['*']}}\n"
    ));
    let bs = bootstrap();
    let config = path.to_str().unwrap();
    // Pre-create b with too few partitions, c with a retention shorter than its delay, d with LogAppendTime.
    let admin: AdminClient<_> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .create()
        .unwrap();
    let (b, c, d) = (
        format!("{prefix}-b"),
        format!("{prefix}-c"),
        format!("{prefix}-d"),
    );
    let pre = [
        NewTopic::new(&b, 1, TopicReplication::Fixed(1))
            .set("retention.ms", "604800000")
            .set("message.timestamp.type", "CreateTime"),
        NewTopic::new(&c, 2, TopicReplication::Fixed(1))
            .set("retention.ms", "3000")
            .set("message.timestamp.type", "CreateTime"),
        NewTopic::new(&d, 2, TopicReplication::Fixed(1))
            .set("retention.ms", "604800000")
            .set("message.timestamp.type", "LogAppendTime"),
    ];
    for r in admin
        .create_topics(pre.iter(), &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
    let dry = cli(&[
        "create-topics",
        "--config",
        config,
        "--bootstrap-servers",
        &bs,
        "--dry-run",
    ]);
    let dry_out = String::from_utf8_lossy(&dry.stdout);
    assert!(
        dry_out.contains(&format!("would create {prefix}-a")),
        "{dry_out}"
    );
    let first = cli(&[
        "create-topics",
        "--config",
        config,
        "--bootstrap-servers",
        &bs,
    ]);
    let out = String::from_utf8_lossy(&first.stdout);
    assert_eq!(first.status.code(), Some(2), "drift exits 2: {out}");
    assert!(out.contains(&format!("created {prefix}-a")), "{out}");
    assert!(out.contains(&format!("created {prefix}-dlq")), "{out}");
    assert!(
        out.contains(&format!(
            "DRIFT {b}: has 1 partitions, fewer than the 3 declared"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("DRIFT {c}: retention.ms is 3000"))
            && out.contains("not longer than the tier's delay"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "DRIFT {d}: message.timestamp.type is LogAppendTime, intended CreateTime"
        )),
        "{out}"
    );
    // Idempotent: a second run creates nothing and reports the same drift.
    let second = cli(&[
        "create-topics",
        "--config",
        config,
        "--bootstrap-servers",
        &bs,
    ]);
    let out2 = String::from_utf8_lossy(&second.stdout);
    assert_eq!(second.status.code(), Some(2));
    assert!(!out2.contains("created"), "{out2}");
    assert!(
        out2.contains(&format!("ok {prefix}-a: exists as declared")),
        "{out2}"
    );
    assert_eq!(out2.matches("DRIFT").count(), 3, "{out2}");
    // Without the drifted tiers the file is clean: exit 0.
    std::fs::write(&path, format!("tiers:\n  - {{topic: {prefix}-a, delay: 1s, partitions: 3}}\ndead-letter: {{topic: {prefix}-dlq}}\ntargets: {{allow: ['*']}}\n")).unwrap();
    let clean = cli(&[
        "create-topics",
        "--config",
        config,
        "--bootstrap-servers",
        &bs,
    ]);
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_refuses_to_start_without_its_topics() {
    let prefix = unique("missing");
    let (_dir, path) = topics_file(&format!(
        "tiers:\n  - {{topic: {prefix}-a, delay: 1s}}\ndead-letter: {{topic: {prefix}-dlq}}\ntargets: {{allow: ['*']}}\n"
    ));
    let out = cli(&[
        "run",
        "--config",
        path.to_str().unwrap(),
        "--bootstrap-servers",
        &bootstrap(),
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("topics missing")
            && err.contains(&format!("{prefix}-a"))
            && err.contains("create-topics"),
        "{err}"
    );
}
