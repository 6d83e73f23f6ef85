//! Unit tests of the command line: flags, environment variables, parsers.

use super::*;

#[test]
fn sizes_take_binary_units() {
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size("512B"), Ok(512));
    assert_eq!(parse_size("64KiB"), Ok(64 << 10));
    assert_eq!(parse_size("256MiB"), Ok(256 << 20));
    assert_eq!(parse_size(" 2 GiB "), Ok(2 << 30));
    for bad in [
        "",
        "MiB",
        "0",
        "-1",
        "1.5GiB",
        "10MB",
        "1TiB",
        "99999999999999999999GiB",
    ] {
        assert!(parse_size(bad).is_err(), "{bad}");
    }
}
use clap::CommandFactory;

#[test]
fn the_command_line_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn run_takes_the_documented_flags() {
    let cli = Cli::try_parse_from([
        "kafka-delay-router",
        "run",
        "--config",
        "t.yaml",
        "--bootstrap-servers",
        "h:1",
        "--tiers",
        "1s,5s",
        "-X",
        "linger.ms=5",
        "-X",
        "acks=all",
    ])
    .unwrap();
    let Command::Run(run) = cli.command else {
        panic!()
    };
    assert_eq!(run.tiers, ["1s", "5s"]);
    assert_eq!(run.kafka.settings, ["linger.ms=5", "acks=all"]);
    assert_eq!(run.drain_timeout, Duration::from_secs(10));
}

#[test]
fn unsafe_overrides_are_repeatable_and_split_on_commas() {
    let cli = Cli::try_parse_from([
        "kafka-delay-router",
        "run",
        "--unsafe-override",
        "acks",
        "--unsafe-override",
        "enable.idempotence,enable.auto.commit",
    ])
    .unwrap();
    let Command::Run(run) = cli.command else {
        panic!()
    };
    assert_eq!(
        run.allow.unsafe_overrides,
        ["acks", "enable.idempotence", "enable.auto.commit"]
    );
    let cli = Cli::try_parse_from([
        "kafka-delay-router",
        "produce",
        "--target",
        "t",
        "--delay",
        "5s",
        "--unsafe-override",
        "enable.idempotence",
        "v",
    ])
    .unwrap();
    let Command::Produce(produce) = cli.command else {
        panic!()
    };
    assert_eq!(produce.allow.unsafe_overrides, ["enable.idempotence"]);
    assert_eq!(produce.value.as_deref(), Some("v"));
}

#[test]
fn produce_needs_exactly_one_of_delay_and_at() {
    let base = ["kafka-delay-router", "produce", "--target", "t"];
    assert!(Cli::try_parse_from(base).is_err());
    assert!(Cli::try_parse_from(base.iter().copied().chain([
        "--delay",
        "5s",
        "--at",
        "2026-01-01T00:00:00Z"
    ]))
    .is_err());
    assert!(Cli::try_parse_from(base.iter().copied().chain(["--delay", "95m"])).is_ok());
    assert!(
        Cli::try_parse_from(base.iter().copied().chain(["--at", "2026-12-01T10:00:00Z"])).is_ok()
    );
    assert!(Cli::try_parse_from(base.iter().copied().chain(["--delay", "95"])).is_err());
}

#[test]
fn security_flags_become_librdkafka_settings_and_x_wins() {
    let cli = Cli::try_parse_from([
        "kafka-delay-router",
        "watch",
        "--topic",
        "t",
        "--security-protocol",
        "sasl_ssl",
        "--sasl-mechanism",
        "SCRAM-SHA-512",
        "--sasl-username",
        "u",
        "--sasl-password",
        "p",
        "--ssl-ca-location",
        "/ca.pem",
    ])
    .unwrap();
    let Command::Watch(w) = cli.command else {
        panic!()
    };
    assert_eq!(
        w.kafka.security_settings(),
        [
            "security.protocol=sasl_ssl",
            "ssl.ca.location=/ca.pem",
            "sasl.mechanisms=SCRAM-SHA-512",
            "sasl.username=u",
            "sasl.password=p"
        ]
    );
    assert!(Cli::try_parse_from([
        "kafka-delay-router",
        "watch",
        "--topic",
        "t",
        "--sasl-mechanism",
        "GSSAPI"
    ])
    .is_err());
}

#[test]
fn cancel_takes_an_id_and_one_expiry() {
    let base = ["kafka-delay-router", "cancel", "--id", "order-7"];
    let cli = Cli::try_parse_from(base).unwrap();
    let Command::Cancel(c) = cli.command else {
        panic!()
    };
    assert_eq!((c.id.as_str(), c.until, c.for_), ("order-7", None, None));
    let cli = Cli::try_parse_from(base.iter().copied().chain(["--for", "2h"])).unwrap();
    let Command::Cancel(c) = cli.command else {
        panic!()
    };
    assert_eq!(c.for_, Some(Duration::from_secs(7200)));
    assert!(Cli::try_parse_from(base.iter().copied().chain([
        "--for",
        "2h",
        "--until",
        "2026-12-01T10:00:00Z"
    ]))
    .is_err());
    assert!(Cli::try_parse_from(["kafka-delay-router", "cancel"]).is_err());
    let cli = Cli::try_parse_from([
        "kafka-delay-router",
        "produce",
        "--target",
        "t",
        "--delay",
        "5s",
        "--id",
        "new",
        "--reschedule",
        "old",
        "v",
    ])
    .unwrap();
    let Command::Produce(p) = cli.command else {
        panic!()
    };
    assert_eq!(
        (p.id.as_deref(), p.reschedule.as_deref()),
        (Some("new"), Some("old"))
    );
    let cli =
        Cli::try_parse_from(["kafka-delay-router", "run", "--max-cancellations", "5"]).unwrap();
    let Command::Run(r) = cli.command else {
        panic!()
    };
    assert_eq!(r.max_cancellations, 5);
}

#[test]
fn headers_split_on_the_first_equals() {
    assert_eq!(
        parse_header("a=b=c").unwrap(),
        ("a".to_string(), b"b=c".to_vec())
    );
    assert!(parse_header("=x").is_err());
    assert!(parse_header("x").is_err());
}
