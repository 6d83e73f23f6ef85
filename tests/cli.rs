//! The binary's behaviour that needs no broker: `--help`, `plan`, and config
//! errors that name the file, the key and the fix, before any connection.

use std::process::Command;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kafka-delay-router"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

#[test]
fn help_lists_the_commands_and_env_vars() {
    let out = run(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "create-topics", "produce", "plan", "watch"] {
        assert!(text.contains(cmd), "{text}");
    }
    let out = run(&["run", "--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for env in [
        "KAFKA_BOOTSTRAP_SERVERS",
        "KDR_CONFIG",
        "KDR_GROUP_ID",
        "KDR_TIERS",
        "KDR_METRICS_ADDR",
        "KDR_KAFKA_SETTINGS",
    ] {
        assert!(text.contains(env), "run --help misses {env}: {text}");
    }
}

#[test]
fn secrets_in_the_environment_stay_out_of_help() {
    let out = Command::new(env!("CARGO_BIN_EXE_kafka-delay-router"))
        .args(["run", "--help"])
        .env("KDR_KAFKA_SETTINGS", "sasl.password=hunter2")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hunter2"));
}

#[test]
fn plan_prints_the_hop_plan() {
    let out = run(&["plan", "--delay", "95m"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("delay-1h") && text.contains("delay-10m x3") && text.contains("delay-1m x5"),
        "{text}"
    );
    let out = run(&["plan", "--delay", "8d"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("longest accepted delay"));
}

#[test]
fn config_errors_name_file_key_and_fix_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "tiers:\n  - {topic: a, delay: 5s}\n  - {topic: b, delay: 1s}\ndead-letter: {topic: d}\n",
    )
    .unwrap();
    // Port 1 is closed: a config error must come before any connection attempt.
    let out = run(&[
        "run",
        "--config",
        path.to_str().unwrap(),
        "--bootstrap-servers",
        "127.0.0.1:1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("bad.yaml") && err.contains("tiers[1].delay") && err.contains("fix:"),
        "{err}"
    );

    std::fs::write(
        &path,
        "tiers:\n  - {topic: a, delay: 5s, retention: 2s}\ndead-letter: {topic: d}\n",
    )
    .unwrap();
    let out = run(&[
        "create-topics",
        "--config",
        path.to_str().unwrap(),
        "--bootstrap-servers",
        "127.0.0.1:1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tiers[0].retention"), "{err}");

    let out = run(&["run", "--config", "/nonexistent/topics.yaml"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/topics.yaml"));
}

#[test]
fn secrets_stay_out_of_help_and_logs() {
    let out = Command::new(env!("CARGO_BIN_EXE_kafka-delay-router"))
        .args(["run", "--help"])
        .env("KAFKA_SASL_PASSWORD", "sasl-secret-1")
        .env("KAFKA_SSL_KEY_PASSWORD", "key-secret-2")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--sasl-password") && help.contains("KAFKA_SASL_PASSWORD"),
        "{help}"
    );
    assert!(!help.contains("sasl-secret-1") && !help.contains("key-secret-2"));

    // A run that cannot connect logs its settings and its errors: no secret in them.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    std::fs::write(
        &path,
        "tiers:\n  - {topic: a, delay: 1s}\ndead-letter: {topic: d}\ntargets: {allow: ['*']}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kafka-delay-router"))
        .args([
            "run",
            "--config",
            path.to_str().unwrap(),
            "--bootstrap-servers",
            "127.0.0.1:1",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .args([
            "--security-protocol",
            "sasl_plaintext",
            "--sasl-mechanism",
            "PLAIN",
            "--sasl-username",
            "u",
        ])
        .args(["-X", "sasl.password=x-secret-3"])
        .env("KAFKA_SASL_PASSWORD", "sasl-secret-1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("sasl.password=***"), "{err}");
    for secret in ["sasl-secret-1", "x-secret-3"] {
        assert!(!err.contains(secret), "{secret} leaked: {err}");
    }
}
