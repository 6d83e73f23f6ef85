//! The router over SASL/SCRAM against Nisshi with `--authentication`: users are
//! created with `nisshi user create` while the broker still runs without
//! authentication (the command has no credentials of its own to offer), then
//! the broker restarts on the same storage with authentication on. The router
//! binary gets its credentials from the command line's SASL flags and the
//! password from `KAFKA_SASL_PASSWORD`, and the password never shows in its
//! output. Needs `nisshi` on PATH (scripts/test.sh installs it).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{deliver_through_tiers, free_port, wait_exit, Broker, BROKER_BIN};
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

fn create_user(port: u16, name: &str, password: &str, mechanism: &str) {
    let status = Command::new(BROKER_BIN)
        .args([
            "user",
            "create",
            "--broker",
            &format!("tcp://127.0.0.1:{port}"),
            name,
            password,
            "--mechanism",
            mechanism,
        ])
        .stdout(Stdio::null())
        .status()
        .expect("nisshi on PATH");
    assert!(status.success(), "nisshi user create {name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_works_over_sasl_scram() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let mut broker = Broker::start(d, port, port, "sqlite://nisshi.db");
    create_user(port, "router", PASSWORD, "scram256");
    create_user(port, "app", PASSWORD, "scram512");
    broker.stop();
    let _broker = Broker::start_with(d, port, port, "sqlite://nisshi.db", &["--authentication"]);

    let yaml = "tiers:\n  - {topic: sasl-t200, delay: 200ms, partitions: 2}\n  - {topic: sasl-t500, delay: 500ms, partitions: 2}\ndead-letter: {topic: sasl-dlq, partitions: 1}\n";
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
