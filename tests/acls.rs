//! Least privilege on Apache Kafka: the ACLs `scripts/acls.sh` grants are
//! enough for the router, and the broker enforces them. A broker of the
//! test's own with the `StandardAuthorizer` (no ACL found means denied) and a
//! SASL/SCRAM client listener with the users `admin` (super user), `router`,
//! `app` and `intruder`. The admin creates the topics and grants, through
//! `scripts/acls.sh`, the router's ACLs and the application's producer ACLs,
//! nothing else. Then the router binary, logged in as `router`:
//! - forwards a record sent by `app` from one tier to the next and delivers
//!   it, and delivers to a target its ACL names by prefix;
//! - drops a record whose `delay-id` `app` cancelled (it reads the cancel topic);
//! - dead-letters a record without a target (`missing-target`);
//! - dead-letters a record for a target on `targets.allow` that its ACLs do
//!   not let it write to, writing nothing there: `target-unauthorized` where
//!   it may describe the topic; a target it may not even describe is
//!   dead-lettered too (the reason is printed and checked, see below);
//! - commits its offsets to the end of the tiers, and exits cleanly;
//! - in `--exactly-once` mode, with the script's exactly-once rows added
//!   (run from its `--dry-run` output), routes a record.
//!
//! `intruder`, with no ACL, is refused by the broker when it writes to a tier
//! (`TopicAuthorizationFailed`). The script's `--dry-run` prints exactly the
//! expected grants and refuses a target pattern Kafka ACLs cannot express.
//!
//! Observers (collectors, committed offsets) read through the broker's
//! PLAINTEXT inter-broker listener, whose principal (`User:ANONYMOUS`, the
//! broker itself) is a super user.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kafka_delay_router::cancel::ID_HEADER;
use kafka_delay_router::headers::{DLQ_REASON, TARGET};
use kafka_delay_router::kafka::KafkaSettings;
use kafka_delay_router::{admin, DelayProducer, TopicsConfig, When};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

const PASSWORD: &str = "acl-Pa55word";
const MECHANISM: &str = "SCRAM-SHA-256";
const GROUP: &str = "acl-router";
const TXN_PREFIX: &str = "acl-eos";

const T1: &str = "acl-t1s";
const T3: &str = "acl-t3s";
const DLQ: &str = "acl-dlq";
const CANCEL: &str = "acl-cancel";
const ORDERS: &str = "acl-orders";
const INVOICES: &str = "acl-billing.invoices";
/// On `targets.allow`, no ACL for the router at all.
const NO_ACL: &str = "acl-no-acl";
/// On `targets.allow`, the router may describe it but not write to it.
const DESCRIBE_ONLY: &str = "acl-describe-only";

/// The topics the ACLs are granted from: the deployment's intended targets.
fn topics_yaml(allow: &str) -> String {
    format!(
        "tiers:\n  - {{topic: {T1}, delay: 1s, partitions: 2}}\n  - {{topic: {T3}, delay: 3s, partitions: 2}}\n\
         dead-letter: {{topic: {DLQ}, partitions: 1}}\ncancel: {{topic: {CANCEL}, partitions: 1}}\n\
         targets: {{allow: [{allow}]}}\n"
    )
}

fn sasl_overrides(user: &str) -> Vec<String> {
    vec![
        "security.protocol=sasl_plaintext".to_string(),
        format!("sasl.mechanisms={MECHANISM}"),
        format!("sasl.username={user}"),
        format!("sasl.password={PASSWORD}"),
    ]
}

fn sasl(port: u16, user: &str) -> KafkaSettings {
    KafkaSettings::new(format!("127.0.0.1:{port}"))
        .with_overrides(&sasl_overrides(user))
        .unwrap()
}

/// A plain (not idempotent) producer logged in as `user`.
fn raw_producer(port: u16, user: &str) -> FutureProducer {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", format!("127.0.0.1:{port}"))
        .set("linger.ms", "0")
        .set("message.timeout.ms", "10000");
    for kv in sasl_overrides(user) {
        let (k, v) = kv.split_once('=').unwrap();
        c.set(k, v);
    }
    c.create().unwrap()
}

/// Single node, SASL/SCRAM-SHA-256 on the client listener, the
/// `StandardAuthorizer`, super users `admin` and the broker itself
/// (`User:ANONYMOUS` on its PLAINTEXT controller and inter-broker
/// listeners, which register the broker and replicate).
fn acl_broker(d: &Path) -> Broker {
    let login = "org.apache.kafka.common.security.scram.ScramLoginModule required;";
    Broker::start_with(
        d,
        &BrokerSetup {
            protocol: "SASL_PLAINTEXT".into(),
            props: vec![
                format!("sasl.enabled.mechanisms={MECHANISM}"),
                format!("listener.name.client.scram-sha-256.sasl.jaas.config={login}"),
                "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer"
                    .into(),
                "super.users=User:admin;User:ANONYMOUS".into(),
            ],
            scram: ["admin", "router", "app", "intruder"]
                .iter()
                .map(|u| format!("{MECHANISM}:{u}:{PASSWORD}"))
                .collect(),
        },
    )
}

fn acls_script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/acls.sh")
}

/// Runs `scripts/acls.sh ARGS`; returns its output.
fn acls_sh<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new("bash")
        .arg(acls_script())
        .args(args)
        .output()
        .expect("bash runs scripts/acls.sh")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

/// Runs a command line `--dry-run` printed (bash-quoted), and asserts it succeeded.
fn run_printed(line: &str) {
    let o = Command::new("bash").args(["-c", line]).output().unwrap();
    assert!(o.status.success(), "{line}: {}", text(&o));
}

/// Waits until `user` may describe `topic` (an ACL reaches the broker's
/// authorizer through the metadata log, a moment after AclCommand returns).
fn wait_describable(port: u16, user: &str, topic: &str) {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", format!("127.0.0.1:{port}"));
    for kv in sasl_overrides(user) {
        let (k, v) = kv.split_once('=').unwrap();
        c.set(k, v);
    }
    let consumer: BaseConsumer = c.create().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5));
        let error = match &md {
            Ok(md) => md
                .topics()
                .first()
                .and_then(|t| t.error())
                .map(|e| format!("{e:?}")),
            Err(e) => Some(e.to_string()),
        };
        match error {
            None => return,
            Some(e) => assert!(
                Instant::now() < deadline,
                "{user} still may not describe {topic}: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A free loopback port for the router's metrics endpoint.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until the router serving metrics on `metrics_port` owns `n`
/// partitions (the records sent after this are routed on time); the
/// partitions it owns if it did not within 60 s.
fn wait_assigned_http(metrics_port: u16, n: f64) -> Result<(), f64> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let assigned = std::net::TcpStream::connect(("127.0.0.1", metrics_port))
            .ok()
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
                s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                    .ok()?;
                let mut body = String::new();
                s.read_to_string(&mut body).ok()?;
                // Summed over label sets, if it has any.
                let family = "kafka_delay_router_partitions_assigned";
                Some(
                    body.lines()
                        .filter(|l| {
                            l.strip_prefix(family)
                                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
                        })
                        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                        .sum::<f64>(),
                )
            })
            .unwrap_or(0.0);
        if assigned >= n {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(assigned);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The router binary logged in as `router`, its log appended to `log`,
/// serving metrics on `metrics_port`; returns once it owns the tiers' 4 partitions.
fn spawn_router(config: &Path, port: u16, log_path: &Path, extra: &[&str]) -> Child {
    let metrics_port = free_port();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kafka-delay-router"))
        .args(["run", "--config"])
        .arg(config)
        .args(["--bootstrap-servers", &format!("127.0.0.1:{port}")])
        .args(["--security-protocol", "sasl_plaintext"])
        .args(["--sasl-mechanism", MECHANISM, "--sasl-username", "router"])
        .args(["--group-id", GROUP])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(["--drain-timeout", "5s", "--log", &router_log_level()])
        .args(extra)
        .env("KAFKA_SASL_PASSWORD", PASSWORD)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let started = Instant::now();
    if let Err(assigned) = wait_assigned_http(metrics_port, 4.0) {
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "the router owned {assigned} partitions, not 4, after 60 s; its log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    println!(
        "router {extra:?} owned its 4 partitions after {:?}",
        started.elapsed()
    );
    child
}

fn stop_router(mut router: Child) {
    sigterm(&router);
    assert!(
        wait_exit(&mut router, Duration::from_secs(30)).success(),
        "the router exited with an error"
    );
}

fn values(rs: &[Received]) -> Vec<String> {
    let mut v: Vec<String> = rs.iter().map(|r| r.value_str()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_works_with_exactly_the_acls_the_script_grants() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // The script's --dry-run, before any broker: the grants, and a pattern
    // Kafka cannot express refused.
    let grant_yaml = d.join("grant.yaml");
    std::fs::write(
        &grant_yaml,
        topics_yaml(&format!("{ORDERS}, 'acl-billing.*'")),
    )
    .unwrap();
    let g = grant_yaml.to_str().unwrap();
    let dry = acls_sh(&[
        "router",
        "--config",
        g,
        "--principal",
        "User:router",
        "--group-id",
        GROUP,
        "--exactly-once",
        "--transactional-id-prefix",
        TXN_PREFIX,
        "--bootstrap-server",
        "127.0.0.1:1",
        "--dry-run",
    ]);
    assert!(dry.status.success(), "{}", text(&dry));
    let printed = String::from_utf8_lossy(&dry.stdout).to_string();
    println!("acls.sh router --exactly-once --dry-run:\n{printed}");
    let grants: Vec<String> = printed
        .lines()
        .map(|l| {
            let i = l.find("--resource-pattern-type").expect(l);
            l[i..].to_string()
        })
        .collect();
    assert_eq!(
        grants,
        [
            format!("--resource-pattern-type literal --operation Read --operation Write --topic {T1} --topic {T3}"),
            format!("--resource-pattern-type literal --operation Write --topic {DLQ} --topic {ORDERS}"),
            format!("--resource-pattern-type literal --operation Read --group {GROUP} --topic {CANCEL} --topic {DLQ}"),
            format!("--resource-pattern-type prefixed --operation Write --topic acl-billing. --transactional-id {TXN_PREFIX}."),
            format!("--resource-pattern-type prefixed --operation Read --group {TXN_PREFIX}."),
        ]
    );
    let bad_yaml = d.join("bad.yaml");
    std::fs::write(&bad_yaml, topics_yaml(&format!("{ORDERS}, '*.delayed'"))).unwrap();
    let refused = acls_sh(&[
        "router",
        "--config",
        bad_yaml.to_str().unwrap(),
        "--principal",
        "User:router",
        "--bootstrap-server",
        "127.0.0.1:1",
        "--dry-run",
    ]);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(refused.stdout.is_empty(), "{}", text(&refused));
    assert!(text(&refused).contains("*.delayed"), "{}", text(&refused));

    let broker = acl_broker(d);
    let port = broker.port();
    println!("broker ready after {:?}", started.elapsed());
    // This binary's only test: the helpers' observers read through the
    // broker's PLAINTEXT listener (a super user).
    std::env::set_var(
        "KAFKA_BOOTSTRAP_SERVERS",
        format!("127.0.0.1:{}", port + 200),
    );
    let admin_props = d.join("admin.properties");
    std::fs::write(
        &admin_props,
        format!(
            "security.protocol=SASL_PLAINTEXT\nsasl.mechanism={MECHANISM}\n\
             sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \
             username=\"admin\" password=\"{PASSWORD}\";\n"
        ),
    )
    .unwrap();

    // The router's file lists two targets more than the ACLs were granted
    // for (a wrong list): the broker's ACLs still keep it out of them.
    let router_yaml = d.join("topics.yaml");
    std::fs::write(
        &router_yaml,
        topics_yaml(&format!(
            "{ORDERS}, 'acl-billing.*', {NO_ACL}, {DESCRIBE_ONLY}"
        )),
    )
    .unwrap();
    let config = TopicsConfig::load(&router_yaml).unwrap();

    // Topics, created by the admin.
    let admin_settings = sasl(port, "admin");
    let report = admin::create_topics(&config, &admin_settings, false)
        .await
        .unwrap();
    assert_eq!(report.drift, 0, "{:?}", report.lines);
    let targets: Vec<String> = [ORDERS, INVOICES, NO_ACL, DESCRIBE_ONLY]
        .map(String::from)
        .to_vec();
    admin::create_target_topics(&admin_settings, &targets, false)
        .await
        .unwrap();

    // The grants, in parallel (each AclCommand is a JVM): the router's
    // (at-least-once rows) and the application's through the script, and
    // Describe alone on one target by hand.
    let bootstrap = format!("127.0.0.1:{port}");
    let common_args = |mode: &'static str, principal: &'static str| {
        vec![
            mode.to_string(),
            "--config".into(),
            g.to_string(),
            "--principal".into(),
            principal.into(),
            "--bootstrap-server".into(),
            bootstrap.clone(),
            "--command-config".into(),
            admin_props.display().to_string(),
        ]
    };
    let mut router_args = common_args("router", "User:router");
    router_args.extend(["--group-id".into(), GROUP.into()]);
    let app_args = common_args("producer", "User:app");
    let granting = std::time::Instant::now();
    let describe_args = [
        "org.apache.kafka.tools.AclCommand",
        "--bootstrap-server",
        &bootstrap,
        "--command-config",
        admin_props.to_str().unwrap(),
        "--add",
        "--allow-principal",
        "User:router",
        "--operation",
        "Describe",
        "--topic",
        DESCRIBE_ONLY,
    ];
    let (router_grant, app_grant) = std::thread::scope(|s| {
        let r = s.spawn(|| acls_sh(&router_args));
        let a = s.spawn(|| acls_sh(&app_args));
        broker.kafka_tool(&describe_args);
        (r.join().unwrap(), a.join().unwrap())
    });
    assert!(router_grant.status.success(), "{}", text(&router_grant));
    assert!(app_grant.status.success(), "{}", text(&app_grant));
    println!(
        "ACLs granted in {:?}:\n{}{}",
        granting.elapsed(),
        text(&router_grant),
        text(&app_grant)
    );
    wait_describable(port, "router", T1);
    wait_describable(port, "router", ORDERS);
    wait_describable(port, "router", DESCRIBE_ONLY);
    wait_describable(port, "app", T1);

    // The intruder, with no ACL, is refused by the broker.
    let intruder = raw_producer(port, "intruder");
    let refused = try_produce(
        &intruder,
        T1,
        Some(0),
        None,
        Some(b"intrusion"),
        &[hdr(TARGET, ORDERS.as_bytes())],
        None,
    )
    .await;
    println!("intruder writing to {T1}: {refused:?}");
    assert_eq!(
        refused.unwrap_err().rdkafka_error_code(),
        Some(RDKafkaErrorCode::TopicAuthorizationFailed)
    );

    // Observers, then the router.
    let mut orders = Collector::start(ORDERS);
    let mut invoices = Collector::start(INVOICES);
    let mut forwarded = Collector::start(T1);
    let mut dead = Collector::start(DLQ);
    let mut no_acl = Collector::start(NO_ACL);
    let mut describe_only = Collector::start(DESCRIBE_ONLY);
    let log = d.join("router.log");
    let router = spawn_router(&router_yaml, port, &log, &[]);

    // The exactly-once rows the script adds, from its --dry-run output,
    // granted while the at-least-once router runs.
    let mut eos_args = router_args.clone();
    eos_args.extend([
        "--exactly-once".into(),
        "--transactional-id-prefix".into(),
        TXN_PREFIX.into(),
        "--dry-run".into(),
    ]);
    let mut alo_dry = router_args.clone();
    alo_dry.push("--dry-run".into());
    let eos_lines = acls_sh(&eos_args);
    let alo_lines = acls_sh(&alo_dry);
    let alo_lines = String::from_utf8(alo_lines.stdout).unwrap();
    let added: Vec<String> = String::from_utf8(eos_lines.stdout)
        .unwrap()
        .lines()
        .filter(|l| !alo_lines.lines().any(|a| a == *l))
        .map(String::from)
        .collect();
    assert_eq!(added.len(), 3, "{added:?}");
    let eos_grant = std::thread::spawn(move || {
        for line in &added {
            run_printed(line);
        }
    });

    // `app` sends: one forwarded from the 3 s tier to the 1 s tier, one to
    // a target allowed by prefix, one it cancels, one for each target the
    // router may not write to, and one without a target.
    let app = DelayProducer::new(&sasl(port, "app"), config.clone()).unwrap();
    let sent = Instant::now();
    for (target, value, ms, id) in [
        (ORDERS, "forwarded", 4_500, None),
        (INVOICES, "by-prefix", 1_500, None),
        (ORDERS, "cancelled", 3_500, Some("order-77")),
        (NO_ACL, "to-no-acl", 1_200, None),
        (DESCRIBE_ONLY, "to-describe-only", 1_200, None),
    ] {
        let headers: Vec<(String, Vec<u8>)> = id
            .map(|id| vec![(ID_HEADER.to_string(), id.as_bytes().to_vec())])
            .unwrap_or_default();
        app.send(
            target,
            None,
            Some(value.as_bytes()),
            &headers,
            When::After(Duration::from_millis(ms)),
        )
        .await
        .unwrap();
    }
    app.cancel(b"order-77", None).await.unwrap();
    let app_raw = raw_producer(port, "app");
    produce(&app_raw, T1, Some(0), None, Some(b"no-target"), &[], None).await;
    println!("app sent everything in {:?}", sent.elapsed());

    let (got_orders, got_invoices, dead_letters, hops) = tokio::task::block_in_place(|| {
        orders.wait_for(1, Duration::from_secs(60));
        let i = values(invoices.wait_for(1, Duration::from_secs(10)));
        let dl = dead.wait_for(3, Duration::from_secs(10)).to_vec();
        // The cancelled record was due a second before the forwarded one:
        // it had its chance to arrive.
        let o = values(orders.settle(Duration::from_secs(2)));
        let f = values(forwarded.settle(Duration::from_millis(100)));
        (o, i, dl, f)
    });
    let reasons: Vec<(String, String)> = {
        let mut r: Vec<(String, String)> = dead_letters
            .iter()
            .map(|r| (r.value_str(), r.header(DLQ_REASON).unwrap_or_default()))
            .collect();
        r.sort();
        r
    };
    println!(
        "after {:?}: {ORDERS} {got_orders:?}, {INVOICES} {got_invoices:?}, {T1} {hops:?}, dead letters {reasons:?}",
        sent.elapsed()
    );
    assert_eq!(got_orders, ["forwarded"], "the cancelled record is dropped");
    assert_eq!(got_invoices, ["by-prefix"]);
    assert!(
        hops.contains(&"forwarded".to_string()),
        "the router forwarded the 4.5 s record from {T3} into {T1}: {hops:?}"
    );
    assert_eq!(
        reasons,
        [
            ("no-target".to_string(), "missing-target".to_string()),
            ("to-describe-only".into(), "target-unauthorized".into()),
            // A target the router may not even describe: Kafka answers its
            // metadata request with TOPIC_AUTHORIZATION_FAILED, refused, not
            // missing.
            ("to-no-acl".into(), "target-unauthorized".into()),
        ]
    );
    let written = tokio::task::block_in_place(|| {
        values(no_acl.settle(Duration::from_millis(100)))
            .into_iter()
            .chain(values(describe_only.settle(Duration::from_millis(100))))
            .collect::<Vec<_>>()
    });
    assert!(written.is_empty(), "written without an ACL: {written:?}");

    stop_router(router);
    for (topic, partitions) in [(T1, 2), (T3, 2)] {
        assert_committed_to_end(GROUP, topic, partitions);
    }

    // Exactly-once, with the script's exactly-once rows added.
    eos_grant.join().unwrap();
    let router = spawn_router(
        &router_yaml,
        port,
        &log,
        &["--exactly-once", "--transactional-id-prefix", TXN_PREFIX],
    );
    let eos_sent = Instant::now();
    app.send(
        ORDERS,
        None,
        Some(b"exactly-once"),
        &[],
        When::After(Duration::from_millis(1_500)),
    )
    .await
    .unwrap();
    let got = tokio::task::block_in_place(|| values(orders.wait_for(2, Duration::from_secs(60))));
    println!(
        "exactly-once: {ORDERS} {got:?} after {:?}",
        eos_sent.elapsed()
    );
    assert_eq!(got, ["exactly-once", "forwarded"]);
    stop_router(router);
    for (topic, partitions) in [(T1, 2), (T3, 2)] {
        assert_nothing_left_after_committed(GROUP, topic, partitions);
    }

    let log = std::fs::read_to_string(&log).unwrap();
    let denied: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("uthoriz"))
        .take(20)
        .collect();
    println!(
        "router log lines about authorization:\n{}",
        denied.join("\n")
    );
    assert!(!log.contains(PASSWORD), "the password leaked into the log");
    println!("test took {:?}", started.elapsed());
}
