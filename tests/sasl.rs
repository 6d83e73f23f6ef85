//! The router over SASL/SCRAM against Apache Kafka: the broker's client
//! listener is SASL_PLAINTEXT with SCRAM-SHA-256 and SCRAM-SHA-512, and the
//! users are written into its storage when it is formatted (KRaft's
//! `--add-scram`). The router binary gets its credentials from the command
//! line's SASL flags and the password from `KAFKA_SASL_PASSWORD`, and the
//! password never shows in its output.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{deliver_through_tiers, wait_exit, Broker, BrokerSetup};
use kafka_delay_router::admin;
use kafka_delay_router::kafka::KafkaSettings;
use kafka_delay_router::TopicsConfig;

const PASSWORD: &str = "s3cret-Pa55word";

fn scram(port: u16, mechanism: &str, user: &str, password: &str) -> KafkaSettings {
    KafkaSettings::new(format!("127.0.0.1:{port}"))
        .with_overrides(&[
            "security.protocol=sasl_plaintext".to_string(),
            format!("sasl.mechanisms={mechanism}"),
            format!("sasl.username={user}"),
            format!("sasl.password={password}"),
        ])
        .unwrap()
}

/// A single-node Apache Kafka whose client listener takes SCRAM-SHA-256 and
/// -512, with the users `router` (SHA-256) and `app` (SHA-512).
fn sasl_broker(d: &std::path::Path) -> Broker {
    let login = "org.apache.kafka.common.security.scram.ScramLoginModule required;";
    Broker::start_with(
        d,
        &BrokerSetup {
            protocol: "SASL_PLAINTEXT".into(),
            props: vec![
                "sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512".into(),
                format!("listener.name.client.scram-sha-256.sasl.jaas.config={login}"),
                format!("listener.name.client.scram-sha-512.sasl.jaas.config={login}"),
            ],
            scram: vec![
                format!("SCRAM-SHA-256:router:{PASSWORD}"),
                format!("SCRAM-SHA-512:app:{PASSWORD}"),
            ],
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_works_over_sasl_scram() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = sasl_broker(d);
    let port = broker.port();

    let yaml = "tiers:\n  - {topic: sasl-t200, delay: 200ms, partitions: 2}\n  - {topic: sasl-t500, delay: 500ms, partitions: 2}\ndead-letter: {topic: sasl-dlq, partitions: 1}\ntargets: {allow: ['sasl-*']}\n";
    let config_path = d.join("topics.yaml");
    std::fs::write(&config_path, yaml).unwrap();
    let config = TopicsConfig::load(&config_path).unwrap();

    // Wrong password, and no SASL at all: refused.
    let wrong = scram(port, "SCRAM-SHA-256", "router", "not-the-password");
    assert!(admin::create_topics(&config, &wrong, false).await.is_err());
    let plain = KafkaSettings::new(format!("127.0.0.1:{port}"));
    assert!(admin::create_topics(&config, &plain, false).await.is_err());

    // The binary with the SASL flags, the password from the environment.
    let bin = env!("CARGO_BIN_EXE_kafka-delay-router");
    let sasl_flags = [
        "--bootstrap-servers",
        &format!("127.0.0.1:{port}"),
        "--security-protocol",
        "sasl_plaintext",
        "--sasl-mechanism",
        "SCRAM-SHA-256",
        "--sasl-username",
        "router",
    ]
    .map(String::from);
    let created = Command::new(bin)
        .args(["create-topics", "--config"])
        .arg(&config_path)
        .args(["--target-topic", "sasl-target"])
        .args(&sasl_flags)
        .env("KAFKA_SASL_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&created.stdout).to_string()
        + &String::from_utf8_lossy(&created.stderr);
    assert!(created.status.success(), "create-topics over SASL: {out}");

    let log_path = d.join("router.log");
    let mut router = Command::new(bin)
        .args(["run", "--config"])
        .arg(&config_path)
        .args(&sasl_flags)
        .args(["--group-id", "sasl-router", "--metrics-addr", "127.0.0.1:0"])
        .args(["--log", "debug"])
        .env("KAFKA_SASL_PASSWORD", PASSWORD)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();

    // An application with its own (SCRAM-SHA-512) user sends through the tiers.
    let app = scram(port, "SCRAM-SHA-512", "app", PASSWORD);
    deliver_through_tiers(
        &app,
        config,
        "sasl-target",
        &[1_500, 2_000, 2_500],
        Duration::from_secs(30),
    )
    .await;

    let _ = Command::new("kill")
        .args(["-TERM", &router.id().to_string()])
        .status();
    assert!(wait_exit(&mut router, Duration::from_secs(30)).success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("router starting"), "{log}");
    assert!(!log.contains(PASSWORD), "the password leaked into the log");
    assert!(
        !out.contains(PASSWORD),
        "the password leaked into create-topics' output"
    );
}
