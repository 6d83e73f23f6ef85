//! Unit tests of the client settings, the `-X` guard and the redaction of secrets.

use super::*;

#[test]
fn overrides_win_over_defaults() {
    let s = KafkaSettings::new("b:9092")
        .with_overrides(&["linger.ms=20".into(), "sasl.password=hunter2".into()])
        .unwrap();
    let c = s.producer_config();
    assert_eq!(c.get("linger.ms"), Some("20"));
    assert_eq!(c.get("enable.idempotence"), Some("true"));
    assert_eq!(c.get("bootstrap.servers"), Some("b:9092"));
    assert!(!s.describe().contains("hunter2"));
    assert!(!format!("{s:?}").contains("hunter2"));
    assert!(s.describe().contains("sasl.password=***"));
}

#[test]
fn role_specific_overrides_go_to_their_client_only() {
    let s = KafkaSettings::new("b")
        .with_overrides(&[
            "batch.num.messages=1".into(),
            "fetch.wait.max.ms=5".into(),
            "security.protocol=ssl".into(),
        ])
        .unwrap();
    let p = s.producer_config();
    let c = s.consumer_config("g");
    let a = s.plain_config();
    assert_eq!(p.get("batch.num.messages"), Some("1"));
    assert_eq!(p.get("fetch.wait.max.ms"), None);
    assert_eq!(c.get("batch.num.messages"), None);
    assert_eq!(c.get("fetch.wait.max.ms"), Some("5"));
    assert_eq!(a.get("batch.num.messages"), None);
    for cfg in [&p, &c, &a] {
        assert_eq!(cfg.get("security.protocol"), Some("ssl"));
    }
}

#[test]
fn consumer_stores_offsets_manually() {
    let c = KafkaSettings::new("b").consumer_config("g");
    assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
    assert_eq!(c.get("group.id"), Some("g"));
}

fn with(pairs: &[&str]) -> KafkaSettings {
    let pairs: Vec<String> = pairs.iter().map(|p| p.to_string()).collect();
    KafkaSettings::new("b").with_overrides(&pairs).unwrap()
}

#[test]
fn settings_that_break_a_guarantee_are_refused_with_key_value_guarantee_and_fix() {
    for (pair, guarded, guarantee) in [
        ("acks=1", Guarded::Router, "at-least-once delivery"),
        ("acks=0", Guarded::Router, "at-least-once delivery"),
        ("acks=2", Guarded::Producer, "at-least-once delivery"),
        (
            "request.required.acks=1",
            Guarded::RouterExactlyOnce,
            "at-least-once delivery",
        ),
        (
            "enable.idempotence=false",
            Guarded::Router,
            "per-key ordering",
        ),
        (
            "enable.idempotence=0",
            Guarded::Producer,
            "per-key ordering",
        ),
        (
            "enable.auto.offset.store=true",
            Guarded::Router,
            "at-least-once delivery",
        ),
        (
            "enable.auto.offset.store=true",
            Guarded::RouterExactlyOnce,
            "at-least-once delivery",
        ),
        (
            "enable.auto.commit=false",
            Guarded::Router,
            "the bound on duplicates after a crash",
        ),
    ] {
        let e = with(&[pair]).check_guarantees(guarded).unwrap_err();
        let (key, value) = pair.split_once('=').unwrap();
        assert!(
            matches!(&e, Error::UnsafeOverride { key: k, value: v, .. } if k == key && v == value),
            "{pair}: {e:?}"
        );
        let text = e.to_string();
        for part in [
            &format!("-X {pair}"),
            guarantee,
            "fix: remove it",
            &format!("--unsafe-override {key}"),
        ] {
            assert!(text.contains(part), "{pair}: {text:?} lacks {part:?}");
        }
    }
}

#[test]
fn safe_values_and_settings_outside_the_check_pass() {
    for pair in [
        "acks=all",
        "acks=-1",
        "acks=ALL",
        "request.required.acks=all",
        "enable.idempotence=true",
        "enable.auto.offset.store=false",
        "enable.auto.commit=true",
        "linger.ms=50",
    ] {
        for guarded in [
            Guarded::Router,
            Guarded::RouterExactlyOnce,
            Guarded::Producer,
        ] {
            assert_eq!(
                with(&[pair]).check_guarantees(guarded).unwrap(),
                [],
                "{pair} {guarded:?}"
            );
        }
    }
    // Exactly-once turns auto-commit off itself; a producer has no offsets to store.
    assert!(with(&["enable.auto.commit=false"])
        .check_guarantees(Guarded::RouterExactlyOnce)
        .is_ok());
    for pair in ["enable.auto.commit=false", "enable.auto.offset.store=true"] {
        assert!(with(&[pair]).check_guarantees(Guarded::Producer).is_ok());
    }
    // The last `-X` of a key is the one that counts.
    assert!(with(&["acks=1", "acks=all"])
        .check_guarantees(Guarded::Router)
        .is_ok());
    assert!(with(&["acks=all", "acks=1"])
        .check_guarantees(Guarded::Router)
        .is_err());
}

#[test]
fn unsafe_overrides_are_allowed_by_key_and_reported() {
    let s = with(&["acks=1", "enable.idempotence=false", "linger.ms=5"])
        .allow_unsafe(&["acks", "enable.idempotence"])
        .unwrap();
    let allowed = s.check_guarantees(Guarded::Router).unwrap();
    assert_eq!(
        allowed,
        [
            UnsafeOverride {
                key: "acks".into(),
                value: "1".into(),
                guarantee: "at-least-once delivery"
            },
            UnsafeOverride {
                key: "enable.idempotence".into(),
                value: "false".into(),
                guarantee: "per-key ordering and duplicate-free retries"
            },
        ]
    );
    // Allowing one key does not allow another.
    let e = with(&["acks=1", "enable.auto.offset.store=true"])
        .allow_unsafe(&["acks"])
        .unwrap()
        .check_guarantees(Guarded::Router)
        .unwrap_err();
    assert!(e.to_string().contains("enable.auto.offset.store"), "{e}");
    // An alias allows the setting under either name.
    assert!(with(&["request.required.acks=1"])
        .allow_unsafe(&["acks"])
        .unwrap()
        .check_guarantees(Guarded::Router)
        .is_ok());
    // A key the router does not guard is a mistake worth saying.
    let e = KafkaSettings::new("b").allow_unsafe(&["ack"]).unwrap_err();
    assert!(
        e.to_string().contains("--unsafe-override") && e.to_string().contains("acks"),
        "{e}"
    );
}

#[test]
fn bad_pairs_are_rejected_without_echoing_secrets() {
    assert!(KafkaSettings::new("b")
        .with_overrides(&["novalue".into()])
        .is_err());
    assert!(KafkaSettings::new("b")
        .with_overrides(&["=v".into()])
        .is_err());
    let e = KafkaSettings::new("b")
        .with_overrides(&["x".into()])
        .unwrap_err();
    assert!(e.to_string().contains("key=value"));
}
