//! Every command over SASL/SCRAM-SHA-512 on TLS (`SASL_SSL`) against Apache
//! Kafka's own listener, as an operator runs them: `create-topics`, `run`,
//! `produce`, `cancel`, `watch` and `status`, each with the command line's
//! TLS and SASL flags and the password from `KAFKA_SASL_PASSWORD`; the
//! password and the TLS key never show in the router's log, its `/metrics`,
//! or its command line. And what goes wrong: a wrong password, a CA that does
//! not sign the broker's certificate, and a broker certificate that has
//! expired each end the command with a non-zero exit and one line naming the
//! setting to fix, within the connection timeout, never a hang. (librdkafka's
//! text for an expired broker certificate is the same as for an untrusted
//! one, so that line names both causes.)

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const PASSWORD: &str = "Tr4nsp0rt-s3cret";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kafka-delay-router"))
}

/// A single-node Kafka with a SASL_SSL client listener (SCRAM-SHA-512,
/// users `router` and `app`) presenting `cert` (`server` or `expired`).
fn sasl_ssl_broker(d: &Path, cert: &str) -> Broker {
    let keystore = pem_keystore(d, cert);
    let login = "org.apache.kafka.common.security.scram.ScramLoginModule required;";
    Broker::start_with(
        d,
        &BrokerSetup {
            protocol: "SASL_SSL".into(),
            props: vec![
                "sasl.enabled.mechanisms=SCRAM-SHA-512".into(),
                format!("listener.name.client.scram-sha-512.sasl.jaas.config={login}"),
                "ssl.keystore.type=PEM".into(),
                format!("ssl.keystore.location={keystore}"),
            ],
            scram: vec![
                format!("SCRAM-SHA-512:router:{PASSWORD}"),
                format!("SCRAM-SHA-512:app:{PASSWORD}"),
            ],
        },
    )
}

/// The connection flags of every command: TLS verified against `ca`, SCRAM
/// as `user`; the password comes from the environment.
fn flags(port: u16, ca: &Path, user: &str) -> Vec<String> {
    [
        "--bootstrap-servers",
        &format!("127.0.0.1:{port}"),
        "--security-protocol",
        "sasl_ssl",
        "--ssl-ca-location",
        &ca.display().to_string(),
        "--sasl-mechanism",
        "SCRAM-SHA-512",
        "--sasl-username",
        user,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run_cmd(args: &[String], password: &str) -> (Output, Duration) {
    let started = Instant::now();
    let out = bin()
        .args(args)
        .env("KAFKA_SASL_PASSWORD", password)
        .output()
        .unwrap();
    (out, started.elapsed())
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

fn topics_yaml(d: &Path) -> std::path::PathBuf {
    let path = d.join("topics.yaml");
    std::fs::write(
        &path,
        "tiers:\n  - {topic: tr-t1, delay: 1s, partitions: 2}\n  - {topic: tr-t3, delay: 3s, partitions: 2}\n\
         dead-letter: {topic: tr-dlq, partitions: 1}\ncancel: {topic: tr-cancel, partitions: 1}\n\
         targets: {allow: [tr-out]}\n",
    )
    .unwrap();
    path
}

/// The TLS flags: the broker verified against the test CA, and with
/// `client_cert` the client's certificate and key.
fn tls_flags(port: u16, d: &Path, client_cert: bool) -> Vec<String> {
    let mut f: Vec<String> = [
        "--bootstrap-servers".to_string(),
        format!("127.0.0.1:{port}"),
        "--security-protocol".into(),
        "ssl".into(),
        "--ssl-ca-location".into(),
        d.join("ca.pem").display().to_string(),
    ]
    .into();
    if client_cert {
        f.extend([
            "--ssl-certificate-location".into(),
            d.join("client.pem").display().to_string(),
            "--ssl-key-location".into(),
            d.join("client.key").display().to_string(),
        ]);
    }
    f
}

#[test]
fn every_command_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certificates(d);
    let broker = tls_broker(d, "none");
    let f = tls_flags(broker.port(), d, false);
    every_command(d, "tls", &f, &f);
}

#[test]
fn every_command_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certificates(d);
    let broker = tls_broker(d, "required");
    let f = tls_flags(broker.port(), d, true);
    // Without a client certificate the broker refuses the connection.
    let (line, took) = refused(
        &[&["status", "--config", &topics_yaml(d).display().to_string()][..]]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .chain(tls_flags(broker.port(), d, false))
            .collect::<Vec<_>>(),
        "",
        &["--ssl-certificate-location"],
    );
    println!("mutual TLS without a client certificate ({took:?}): {line}");
    every_command(d, "mutual tls", &f, &f);
}

#[test]
fn every_command_over_scram_sha_512_on_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certificates(d);
    let broker = sasl_ssl_broker(d, "server");
    let router_flags = flags(broker.port(), &d.join("ca.pem"), "router");
    let app_flags = flags(broker.port(), &d.join("ca.pem"), "app");
    every_command(d, "scram-sha-512 on tls", &router_flags, &app_flags);
}

/// `create-topics`, `run`, `watch`, `produce`, `cancel` and `status` with
/// the given connection flags (the router's and the application's); the
/// password (if any) from the environment; then no secret anywhere.
fn every_command(d: &Path, name: &str, router_flags: &[String], app_flags: &[String]) {
    let config = topics_yaml(d);
    let cfg = config.display().to_string();
    let with = |cmd: &[&str], f: &[String]| -> Vec<String> {
        cmd.iter()
            .map(|s| s.to_string())
            .chain(f.iter().cloned())
            .collect()
    };

    let (out, _) = run_cmd(
        &with(
            &[
                "create-topics",
                "--config",
                &cfg,
                "--target-topic",
                "tr-out",
            ],
            router_flags,
        ),
        PASSWORD,
    );
    assert!(out.status.success(), "create-topics: {}", text(&out));
    assert!(
        text(&out).contains("targets allowed: tr-out"),
        "{}",
        text(&out)
    );

    let log_path = d.join("router.log");
    let mut router = bin()
        .args(with(
            &[
                "run",
                "--config",
                &cfg,
                "--group-id",
                "tr-router",
                "--metrics-addr",
                "127.0.0.1:0",
            ],
            router_flags,
        ))
        .env("KAFKA_SASL_PASSWORD", PASSWORD)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    // The reader is reading before the first record is produced.
    let watch = bin()
        .args(with(
            &[
                "watch",
                "--topic",
                "tr-out",
                "--count",
                "2",
                "--timeout",
                "60s",
            ],
            app_flags,
        ))
        .env("KAFKA_SASL_PASSWORD", PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    for (id, delay, value) in [
        ("keep-1", "2s", "kept-2s"),
        ("drop-1", "4s", "cancelled-4s"),
        ("keep-2", "5s", "kept-5s"),
    ] {
        let (out, _) = run_cmd(
            &with(
                &[
                    "produce", "--config", &cfg, "--target", "tr-out", "--delay", delay, "--id",
                    id, value,
                ],
                app_flags,
            ),
            PASSWORD,
        );
        assert!(out.status.success(), "produce: {}", text(&out));
    }
    let (out, _) = run_cmd(
        &with(&["cancel", "--config", &cfg, "--id", "drop-1"], app_flags),
        PASSWORD,
    );
    assert!(out.status.success(), "cancel: {}", text(&out));

    let watched = watch.wait_with_output().unwrap();
    let seen = String::from_utf8_lossy(&watched.stdout).to_string();
    println!("watch over {name}:\n{seen}");
    assert!(
        seen.contains("kept-2s") && seen.contains("kept-5s"),
        "{}",
        text(&watched)
    );
    assert!(
        !seen.contains("cancelled-4s"),
        "a cancelled record arrived: {seen}"
    );

    let (out, _) = run_cmd(
        &with(
            &["status", "--config", &cfg, "--group-id", "tr-router"],
            router_flags,
        ),
        PASSWORD,
    );
    let status = text(&out);
    println!("{status}");
    assert!(out.status.success(), "status: {status}");
    assert!(status.contains("targets allowed: tr-out"), "{status}");

    // Nothing secret in the router's command line, log or metrics.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", router.id())).unwrap_or_default();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let addr = log
        .lines()
        .find(|l| l.contains("serving /metrics"))
        .and_then(|l| l.split("addr=").nth(1))
        .map(|a| a.trim().to_string())
        .expect("the router logs its metrics address");
    let metrics = http_get(&addr, "/metrics");
    assert!(
        metrics.contains("kafka_delay_router_records_delivered_total"),
        "{metrics}"
    );
    sigterm(&router);
    assert!(wait_exit(&mut router, Duration::from_secs(30)).success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    let key_lines: Vec<String> = ["server.key", "client.key"]
        .iter()
        .map(|k| std::fs::read_to_string(d.join(k)).unwrap())
        .map(|k| k.lines().nth(1).unwrap().to_string())
        .collect();
    for (place, content) in [
        (
            "command line",
            String::from_utf8_lossy(&cmdline).to_string(),
        ),
        ("log", log.clone()),
        ("/metrics", metrics),
        ("status output", status),
    ] {
        assert!(
            !content.contains(PASSWORD),
            "the password is in the router's {place}"
        );
        for key_line in &key_lines {
            assert!(
                !content.contains(key_line.as_str()),
                "a private key is in the router's {place}"
            );
        }
    }
    println!(
        "{name}: the password and the keys appear in none of: command line, log ({} lines), /metrics, status",
        log.lines().count()
    );
}

/// A plain HTTP GET on 127.0.0.1 (the router's metrics endpoint).
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// What an operator sees when a setting is wrong: a non-zero exit, within
/// a minute, and a one-line error that names what to fix.
fn refused(args: &[String], password: &str, must_name: &[&str]) -> (String, Duration) {
    let (out, took) = run_cmd(args, password);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let error_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert!(!out.status.success(), "{args:?} succeeded: {}", text(&out));
    assert!(took < Duration::from_secs(60), "{args:?} took {took:?}");
    assert_eq!(error_lines.len(), 1, "one error line: {err}");
    for name in must_name {
        assert!(
            error_lines[0].contains(name),
            "the error does not name {name}: {err}"
        );
    }
    (error_lines[0].to_string(), took)
}

#[test]
fn wrong_password_untrusted_and_expired_certificates_fail_fast_naming_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certificates(d);
    let config = topics_yaml(d);
    let cfg = config.display().to_string();
    let status = |f: Vec<String>| -> Vec<String> {
        ["status", "--config", &cfg]
            .iter()
            .map(|s| s.to_string())
            .chain(f)
            .collect()
    };
    {
        let broker = sasl_ssl_broker(d, "server");
        let (line, took) = refused(
            &status(flags(broker.port(), &d.join("ca.pem"), "router")),
            "not-the-password",
            &["--sasl-password"],
        );
        println!("wrong password, status ({took:?}): {line}");
        // The same for the router and for producing.
        let f = flags(broker.port(), &d.join("ca.pem"), "router");
        let run: Vec<String> = ["run", "--config", &cfg, "--metrics-addr", "127.0.0.1:0"]
            .iter()
            .map(|s| s.to_string())
            .chain(f.iter().cloned())
            .collect();
        let (line, took) = refused(&run, "not-the-password", &["--sasl-password"]);
        println!("wrong password, run ({took:?}): {line}");
        let produce: Vec<String> = [
            "produce", "--config", &cfg, "--target", "tr-out", "--delay", "1s", "x",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(f.iter().cloned())
        .collect();
        let (line, took) = refused(&produce, "not-the-password", &["--sasl-password"]);
        println!("wrong password, produce ({took:?}): {line}");
        // A CA that did not sign the broker's certificate: the client's own
        // certificate is a valid PEM that is not a CA for it.
        let (line, took) = refused(
            &status(flags(broker.port(), &d.join("client.pem"), "router")),
            PASSWORD,
            &["--ssl-ca-location"],
        );
        println!("untrusted broker certificate ({took:?}): {line}");
    }
    make_expired_server_certificate(d);
    let broker = sasl_ssl_broker(d, "expired");
    let (line, took) = refused(
        &status(flags(broker.port(), &d.join("ca.pem"), "router")),
        PASSWORD,
        // librdkafka reports an expired certificate like an untrusted one.
        &["--ssl-ca-location", "expired"],
    );
    println!("expired broker certificate ({took:?}): {line}");
}
