//! librdkafka client settings shared by every command: the router's producer
//! and consumer defaults (idempotent, acks=all, Java-compatible partitioning,
//! manual offset store), `-X key=value` overrides (refused where they would
//! silently break a guarantee, unless allowed by key), and logging into `tracing`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::ClientConfig;

use crate::error::{Error, Result};

/// Connection settings given on the command line.
#[derive(Clone, Default)]
pub struct KafkaSettings {
    pub bootstrap_servers: String,
    /// `-X key=value` librdkafka settings, applied last so they override every default.
    pub overrides: Vec<(String, String)>,
    /// Keys of `overrides` allowed to weaken a guarantee (`--unsafe-override`);
    /// see [`KafkaSettings::check_guarantees`]. Set with [`KafkaSettings::allow_unsafe`].
    pub unsafe_overrides: BTreeSet<String>,
}

impl std::fmt::Debug for KafkaSettings {
    /// Secrets masked, so the settings can be logged or printed in errors.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("overrides", &self.describe())
            .field("unsafe_overrides", &self.unsafe_overrides)
            .finish()
    }
}

#[derive(Clone, Copy)]
enum Role {
    Producer,
    Consumer,
    Plain,
}

const PRODUCER_ONLY: &[&str] = &[
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "linger.ms",
    "queue.buffering.max.ms",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "batch.num.messages",
    "batch.size",
    "compression.type",
    "compression.codec",
    "compression.level",
    "partitioner",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "retries",
    "message.send.max.retries",
    "retry.backoff.ms",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    "transactional.id",
    "transaction.timeout.ms",
    "sticky.partitioning.linger.ms",
];

const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "partition.assignment.strategy",
    "group.protocol",
    "group.remote.assignor",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "fetch.wait.max.ms",
    "fetch.min.bytes",
    "fetch.max.bytes",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.error.backoff.ms",
    "fetch.queue.backoff.ms",
    "isolation.level",
    "enable.partition.eof",
    "check.crcs",
];

/// Keys whose values must never be printed.
const SECRET_KEYS: &[&str] = &[
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
    "ssl.key.pem",
    "sasl.oauthbearer.client.secret",
];

impl KafkaSettings {
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaSettings {
            bootstrap_servers: bootstrap_servers.into(),
            overrides: Vec::new(),
            unsafe_overrides: BTreeSet::new(),
        }
    }

    /// Parses `key=value` pairs from `-X`.
    pub fn with_overrides(mut self, pairs: &[String]) -> Result<Self> {
        for pair in pairs {
            let (k, v) = pair.split_once('=').ok_or_else(|| Error::Usage {
                flag: "-X".into(),
                problem: format!("{:?} is not key=value", redact_pair(pair)),
            })?;
            if k.trim().is_empty() {
                return Err(Error::Usage {
                    flag: "-X".into(),
                    problem: "empty key".into(),
                });
            }
            self.overrides.push((k.trim().to_string(), v.to_string()));
        }
        Ok(self)
    }

    fn config(&self, role: Role, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut settings: BTreeMap<String, String> = BTreeMap::new();
        settings.insert("bootstrap.servers".into(), self.bootstrap_servers.clone());
        for (k, v) in defaults {
            settings.insert((*k).into(), (*v).into());
        }
        // One `-X` list serves every client: settings that only one kind of
        // client understands are given to that kind only (librdkafka would warn).
        for (k, v) in &self.overrides {
            let skip = match role {
                Role::Producer => CONSUMER_ONLY.contains(&k.as_str()),
                Role::Consumer => PRODUCER_ONLY.contains(&k.as_str()),
                Role::Plain => {
                    PRODUCER_ONLY.contains(&k.as_str()) || CONSUMER_ONLY.contains(&k.as_str())
                }
            };
            if !skip {
                settings.insert(k.clone(), v.clone());
            }
        }
        // librdkafka's own debug contexts (`-X debug=broker,protocol`) log at
        // debug level, which would otherwise be filtered out here.
        let level = if settings.contains_key("debug") {
            RDKafkaLogLevel::Debug
        } else {
            RDKafkaLogLevel::Warning
        };
        let mut config = ClientConfig::new();
        for (k, v) in settings {
            config.set(k, v);
        }
        config.set_log_level(level);
        config
    }

    /// The router's producer: idempotent with acks=all (so an acknowledgement
    /// means the record is on every in-sync replica), Java-compatible key
    /// partitioning, never creating topics.
    pub fn producer_config(&self) -> ClientConfig {
        self.config(
            Role::Producer,
            &[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("partitioner", "murmur2_random"),
                ("allow.auto.create.topics", "false"),
                // At 1,000 deliveries/s a 2 ms linger sent about 415 produce
                // requests/s of about one record per partition; a broker that
                // serves a connection's requests one at a time queued them
                // and delivered later than with 5 ms (see README, Benchmarks).
                ("linger.ms", "5"),
                ("queue.buffering.max.messages", "1000000"),
                ("queue.buffering.max.kbytes", "1048576"),
                ("message.timeout.ms", "60000"),
                ("socket.keepalive.enable", "true"),
            ],
        )
    }

    /// The router's tier consumer: offsets stored by the router only after the
    /// broker acknowledged what it produced, committed every second and
    /// synchronously on revoke and shutdown.
    pub fn consumer_config(&self, group_id: &str) -> ClientConfig {
        self.config(
            Role::Consumer,
            &[
                ("group.id", group_id),
                ("enable.auto.commit", "true"),
                ("auto.commit.interval.ms", "1000"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("enable.partition.eof", "false"),
                ("fetch.wait.max.ms", "50"),
                // A crashed router's partitions move to the others after this long,
                // so it bounds the extra lateness a crash causes (Kafka's default is 45s).
                ("session.timeout.ms", "10000"),
                ("heartbeat.interval.ms", "1000"),
                // Also the rebalance timeout: how long a join waits for members that
                // do not answer. The main queue is polled every 100 ms on its own
                // thread, so the router itself is never near it.
                ("max.poll.interval.ms", "20000"),
                ("queued.max.messages.kbytes", "4096"),
                // When that prefetch limit is reached, fetch again 10 ms later rather
                // than librdkafka's 1 s, which would stall a draining partition.
                ("fetch.queue.backoff.ms", "10"),
                ("allow.auto.create.topics", "false"),
                ("socket.keepalive.enable", "true"),
            ],
        )
    }

    /// A plain client for admin calls and watching topics.
    pub fn plain_config(&self) -> ClientConfig {
        self.config(Role::Plain, &[])
    }

    /// A consumer for reading topics outside the group (e.g. `watch`).
    pub fn reader_config(&self) -> ClientConfig {
        self.config(Role::Consumer, &[])
    }

    /// The settings as `key=value` lines with secrets masked, for logs.
    pub fn describe(&self) -> String {
        self.overrides
            .iter()
            .map(|(k, v)| format!("{k}={}", if is_secret(k) { "***" } else { v }))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What a guarded check covers: which clients, in which mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarded {
    /// `run` in at-least-once mode: the tier consumer and the router's producer.
    Router,
    /// `run --exactly-once`: the same, except that offsets commit inside the
    /// transactions and the router turns auto-commit off itself.
    RouterExactlyOnce,
    /// A producer writing into the tiers (`produce`, [`crate::DelayProducer`]).
    Producer,
}

/// A librdkafka setting that `-X` must not change silently, because a
/// guarantee of the router rests on it.
struct Guard {
    /// The key, then its aliases.
    keys: &'static [&'static str],
    /// The values that keep the guarantee (lowercase, as librdkafka reads them).
    safe: &'static [&'static str],
    /// Whether it matters for a check.
    applies: fn(Guarded) -> bool,
    guarantee: &'static str,
    why: &'static str,
    fix: &'static str,
}

const TRUE: &[&str] = &["true", "t", "1"];
const FALSE: &[&str] = &["false", "f", "0"];

const GUARDS: &[Guard] = &[
    Guard {
        keys: &["acks", "request.required.acks"],
        safe: &["all", "-1"],
        applies: |_| true,
        guarantee: "at-least-once delivery",
        why: "a record counts as forwarded, delivered or dead-lettered (and its tier offset is committed) once the broker acknowledged it; with fewer acknowledgements than all in-sync replicas, a leader failure loses records whose tier offset is already committed",
        fix: "remove it (the router sets acks=all; -1 means the same)",
    },
    Guard {
        keys: &["enable.idempotence"],
        safe: TRUE,
        applies: |_| true,
        guarantee: "per-key ordering and duplicate-free retries",
        why: "without idempotence a produce the client retries after a lost acknowledgement writes the record twice, and can put it behind later records of the same key; the router's recovery from a fenced or broken producer relies on it too",
        fix: "remove it (the router sets enable.idempotence=true)",
    },
    Guard {
        keys: &["enable.auto.offset.store"],
        safe: FALSE,
        applies: |g| g != Guarded::Producer,
        guarantee: "at-least-once delivery",
        why: "librdkafka would store each tier record's offset as soon as it is read, so the offsets committed every second and on a rebalance pass records still waiting for their due time or for the broker's acknowledgement; a crash or a rebalance loses them",
        fix: "remove it (the router stores each offset itself once the record is finished)",
    },
    Guard {
        keys: &["enable.auto.commit"],
        safe: TRUE,
        applies: |g| g == Guarded::Router,
        guarantee: "the bound on duplicates after a crash (about a second of traffic)",
        why: "the router relies on librdkafka committing the offsets it stores every second; without it offsets are committed only on a rebalance or a clean shutdown, so after a crash everything finished since then is routed again",
        fix: "remove it (--exactly-once turns auto-commit off by itself, and commits offsets in its transactions)",
    },
];

/// A `-X` setting that weakens a guarantee, allowed by `--unsafe-override`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsafeOverride {
    pub key: String,
    pub value: String,
    /// The guarantee given up.
    pub guarantee: &'static str,
}

impl KafkaSettings {
    /// Allows the `-X` settings with these keys (or their aliases: `acks` and
    /// `request.required.acks` are one setting) to weaken a guarantee
    /// (`--unsafe-override KEY`); [`KafkaSettings::check_guarantees`] then lets
    /// them through and reports them. A key the router does not guard is refused.
    pub fn allow_unsafe<S: AsRef<str>>(mut self, keys: &[S]) -> Result<Self> {
        for key in keys {
            let key = key.as_ref().trim();
            if !GUARDS.iter().any(|g| g.keys.contains(&key)) {
                let guarded: Vec<&str> = GUARDS.iter().map(|g| g.keys[0]).collect();
                return Err(Error::Usage {
                    flag: "--unsafe-override".into(),
                    problem: format!(
                        "{key:?} is not a setting the router refuses; it refuses only unsafe values of {}",
                        guarded.join(", ")
                    ),
                });
            }
            self.unsafe_overrides.insert(key.to_string());
        }
        Ok(self)
    }

    /// Refuses `-X` settings that would silently break a guarantee of what
    /// `guarded` runs: `acks` other than all/-1, `enable.idempotence` other
    /// than true, `enable.auto.offset.store` other than false, and (at-least-once
    /// `run`) `enable.auto.commit` other than true. Those allowed by
    /// [`KafkaSettings::allow_unsafe`] pass and are returned, for a warning.
    pub fn check_guarantees(&self, guarded: Guarded) -> Result<Vec<UnsafeOverride>> {
        let mut allowed = Vec::new();
        for guard in GUARDS.iter().filter(|g| (g.applies)(guarded)) {
            for key in guard.keys {
                // The last `-X` of a key is the one librdkafka gets.
                let Some((_, value)) = self.overrides.iter().rev().find(|(k, _)| k == key) else {
                    continue;
                };
                if guard
                    .safe
                    .contains(&value.trim().to_ascii_lowercase().as_str())
                {
                    continue;
                }
                if guard
                    .keys
                    .iter()
                    .any(|k| self.unsafe_overrides.contains(*k))
                {
                    allowed.push(UnsafeOverride {
                        key: key.to_string(),
                        value: value.clone(),
                        guarantee: guard.guarantee,
                    });
                    continue;
                }
                return Err(Error::UnsafeOverride {
                    key: key.to_string(),
                    value: value.clone(),
                    guarantee: guard.guarantee.into(),
                    why: guard.why.into(),
                    fix: guard.fix.into(),
                });
            }
        }
        Ok(allowed)
    }
}

fn is_secret(key: &str) -> bool {
    SECRET_KEYS.contains(&key) || key.contains("password") || key.contains("secret")
}

fn redact_pair(pair: &str) -> String {
    match pair.split_once('=') {
        Some((k, _)) if is_secret(k) => format!("{k}=***"),
        _ => pair.to_string(),
    }
}

/// A client context that sends librdkafka's logs and errors to `tracing`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingContext;

impl ClientContext for TracingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_to_tracing(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error");
        crate::connection::record(reason);
    }
}

impl rdkafka::consumer::ConsumerContext for TracingContext {}

/// Forwards one librdkafka log line to `tracing` at the matching level.
pub fn log_to_tracing(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            // librdkafka logs a refused login or TLS handshake from its broker
            // thread at once; its error callback waits for the client to be
            // polled, which a blocking metadata request does not do.
            crate::connection::record(message);
            tracing::error!(target: "librdkafka", fac, "{message}")
        }
        RDKafkaLogLevel::Warning => {
            crate::connection::record(message);
            tracing::warn!(target: "librdkafka", fac, "{message}")
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", fac, "{message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
    }
}

/// Milliseconds since the Unix epoch, by the system clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Default timeout for metadata and admin calls.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
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
}
