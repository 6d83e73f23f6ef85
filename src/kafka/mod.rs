//! librdkafka client settings shared by every command: the router's producer
//! and consumer defaults (idempotent, acks=all, Java-compatible partitioning,
//! manual offset store), `-X key=value` overrides (refused where they would
//! silently break a guarantee, unless allowed by key), and logging into `tracing`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::ClientConfig;

use crate::error::{Error, Result};

/// Connection settings given on the command line.
#[derive(Clone, Default)]
pub struct KafkaSettings {
    /// `bootstrap.servers`: `HOST:PORT[,HOST:PORT...]`.
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
    /// Settings for the cluster at `bootstrap_servers`, with no `-X` overrides.
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
                // librdkafka prefetches for every partition that is not
                // paused until it holds queued.min.messages records (100,000
                // by default) or queued.max.messages.kbytes of payload. A
                // partition of a long tier waits resumed, reading only what
                // comes due, with minutes of backlog behind its head: the
                // client then holds up to the limit per partition, and each
                // record costs its payload plus the client's own bookkeeping
                // and fetch buffer (the soak measured the router's RSS rising
                // to 250+ MiB at 500 records/s). 1,000 records a partition
                // keep a draining partition fed (a fetch brings up to 1 MiB)
                // and bound that memory.
                ("queued.min.messages", "1000"),
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

fn is_secret(key: &str) -> bool {
    SECRET_KEYS.contains(&key) || key.contains("password") || key.contains("secret")
}

fn redact_pair(pair: &str) -> String {
    match pair.split_once('=') {
        Some((k, _)) if is_secret(k) => format!("{k}=***"),
        _ => pair.to_string(),
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

mod context;
mod guard;
pub use context::{log_to_tracing, TracingContext};
pub use guard::{Guarded, UnsafeOverride};

#[cfg(test)]
mod tests;
