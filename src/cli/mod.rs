//! The command line: every flag also read from an environment variable, and
//! `--help` that says what each does. `main.rs` parses it and calls the library.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::membership::GroupProtocol;

/// Delayed delivery for Apache Kafka with nothing but Kafka.
///
/// Producers write a record to a fixed-delay tier topic with a `delay-target`
/// header (and optionally `delay-deliver-at`, epoch ms); the router delivers it
/// to the target when it is due, forwarding long delays through the tiers.
#[derive(Debug, Parser)]
#[command(name = "kafka-delay-router", version, propagate_version = true)]
pub struct Cli {
    /// Log filter, e.g. `info`, `warn`, `kafka_delay_router=debug`.
    #[arg(long, env = "KDR_LOG", default_value = "info", global = true)]
    pub log: String,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the router: consume the tier topics and deliver or forward each record when it is due.
    Run(RunArgs),
    /// Create the tier and dead-letter topics from the topics file; report drift on existing ones.
    CreateTopics(CreateTopicsArgs),
    /// Produce delayed records: picks the tier and sets the headers.
    Produce(ProduceArgs),
    /// Cancel the delayed records with a `delay-id`: writes a cancellation to the cancel topic.
    Cancel(CancelArgs),
    /// Print the hop plan of a delay: the tiers a record passes through and its Kafka writes.
    Plan(PlanArgs),
    /// Print the records arriving on a topic with their due time and lateness.
    Watch(WatchArgs),
    /// Show the backlog of every tier partition: records waiting, when the head is due,
    /// how far overdue, and which group member owns it. Changes nothing.
    Status(StatusArgs),
}

/// `--config`, on the commands that read the topics file.
#[derive(Debug, Clone, Args)]
pub struct ConfigArg {
    /// The topics file (tiers, dead-letter topic, max delay).
    #[arg(long, short = 'c', env = "KDR_CONFIG", default_value = "topics.yaml")]
    pub config: PathBuf,
}

/// `--unsafe-override`, on the commands that produce or route.
#[derive(Debug, Clone, Args)]
pub struct UnsafeArgs {
    /// Allow a `-X` setting that is refused because it would break a guarantee, by key,
    /// repeatable: `acks` other than all and `enable.idempotence=false` (every command
    /// that produces), `enable.auto.offset.store=true` and `enable.auto.commit=false`
    /// (`run`). A warning at startup names the guarantee given up.
    #[arg(
        long = "unsafe-override",
        value_name = "KEY",
        env = "KDR_UNSAFE_OVERRIDES",
        value_delimiter = ','
    )]
    pub unsafe_overrides: Vec<String>,
}

/// The Kafka client flags (`--bootstrap-servers`, security, `-X`), on every command that connects.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT...].
    #[arg(
        long,
        short = 'b',
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap_servers: String,

    /// Security protocol: plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(long, env = "KAFKA_SECURITY_PROTOCOL", value_parser = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"])]
    pub security_protocol: Option<String>,

    /// CA certificate(s) (PEM file) to verify the brokers with.
    #[arg(long, env = "KAFKA_SSL_CA_LOCATION", value_name = "PEM")]
    pub ssl_ca_location: Option<String>,

    /// Client certificate (PEM file) for TLS client authentication.
    #[arg(long, env = "KAFKA_SSL_CERTIFICATE_LOCATION", value_name = "PEM")]
    pub ssl_certificate_location: Option<String>,

    /// Client private key (PEM file) for TLS client authentication.
    #[arg(long, env = "KAFKA_SSL_KEY_LOCATION", value_name = "PEM")]
    pub ssl_key_location: Option<String>,

    /// Password of the client private key (prefer the environment variable).
    #[arg(long, env = "KAFKA_SSL_KEY_PASSWORD", hide_env_values = true)]
    pub ssl_key_password: Option<String>,

    /// SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    #[arg(long, env = "KAFKA_SASL_MECHANISM", value_parser = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])]
    pub sasl_mechanism: Option<String>,

    /// SASL user name.
    #[arg(long, env = "KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,

    /// SASL password (prefer the environment variable: a flag shows in `ps`).
    #[arg(long, env = "KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub sasl_password: Option<String>,

    /// A librdkafka setting, repeatable (`-X linger.ms=5 -X security.protocol=ssl`); in the
    /// environment separate several with `;`. Applied last, over the router's defaults.
    #[arg(
        short = 'X',
        value_name = "KEY=VALUE",
        env = "KDR_KAFKA_SETTINGS",
        value_delimiter = ';',
        hide_env_values = true
    )]
    pub settings: Vec<String>,
}

/// `run`'s flags.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The topics file.
    #[command(flatten)]
    pub config: ConfigArg,
    /// The Kafka client flags.
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Consumer group shared by all router instances.
    #[arg(long, env = "KDR_GROUP_ID", default_value = "kafka-delay-router")]
    pub group_id: String,

    /// Only consume these tiers, by delay or topic (e.g. `1s,5s` or `delay-1h`); default all.
    #[arg(long, env = "KDR_TIERS", value_delimiter = ',')]
    pub tiers: Vec<String>,

    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, env = "KDR_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: String,

    /// On SIGINT/SIGTERM, how long to wait for in-flight records before leaving the group.
    #[arg(long, env = "KDR_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Records produced but not yet acknowledged per partition; past it, due records wait.
    #[arg(long, env = "KDR_MAX_IN_FLIGHT", default_value_t = 10_000)]
    pub max_in_flight: usize,

    /// Records held in memory for a sub-tier remainder per partition before reading pauses.
    #[arg(long, env = "KDR_MAX_HELD", default_value_t = 100_000)]
    pub max_held: usize,

    /// Bytes of records the whole router holds in memory (read, not yet acknowledged),
    /// e.g. 256MiB; past it every partition reads only its head until records are done.
    #[arg(long, env = "KDR_MAX_HELD_BYTES", default_value = "256MiB", value_parser = parse_size)]
    pub max_held_bytes: usize,

    /// How long a record whose target topic does not exist retries (with backoff, without
    /// blocking its partition) before going to the dead-letter topic; 0s dead-letters at once.
    #[arg(long, env = "KDR_MISSING_TARGET_WAIT", default_value = "0s", value_parser = parse_duration)]
    pub missing_target_wait: Duration,

    /// Commit past records the consumer could not read and skipped (a corrupt or
    /// undecompressible batch): they are logged and counted either way, but by default a
    /// partition's commit stays before them so its next owner tries them again.
    #[arg(long, env = "KDR_SKIP_UNREADABLE")]
    pub skip_unreadable: bool,

    /// Exactly-once mode: each forward, delivery or dead letter commits in one Kafka
    /// transaction with its tier offset, so read_committed consumers of a target see each
    /// record once. Needs a broker with transactions; the router refuses to start without.
    #[arg(long, env = "KDR_EXACTLY_ONCE")]
    pub exactly_once: bool,

    /// Exactly-once mode: how long a transaction stays open; read_committed consumers see
    /// a delivered record up to this much later.
    #[arg(long, env = "KDR_TRANSACTION_INTERVAL", default_value = "100ms", value_parser = parse_duration)]
    pub transaction_interval: Duration,

    /// Exactly-once mode: start of the transactional ids (`<prefix>.<tier topic>.<partition>`);
    /// default the group id. Routers of one deployment must share it.
    #[arg(long, env = "KDR_TRANSACTIONAL_ID_PREFIX")]
    pub transactional_id_prefix: Option<String>,

    /// The consumer group protocol: `classic` (every Kafka version; the client's
    /// 10 s session timeout) or `consumer` (KIP-848, Kafka 4.0 or later; the broker
    /// assigns partitions incrementally and sets the session timeout). See docs/operations.md.
    #[arg(long, env = "KDR_GROUP_PROTOCOL", default_value = "classic")]
    pub group_protocol: GroupProtocol,

    /// `--unsafe-override`.
    #[command(flatten)]
    pub allow: UnsafeArgs,

    /// The most cancellations held in memory (about 24-57 bytes each). At the limit the
    /// router stops reading the cancel topic until some expire, and records with a
    /// `delay-id` wait (late, never delivered past a cancellation); an error is logged.
    #[arg(long, env = "KDR_MAX_CANCELLATIONS", default_value_t = crate::cancel::DEFAULT_MAX_CANCELLATIONS)]
    pub max_cancellations: usize,
}

/// `create-topics`' flags.
#[derive(Debug, Args)]
pub struct CreateTopicsArgs {
    /// The topics file.
    #[command(flatten)]
    pub config: ConfigArg,
    /// The Kafka client flags.
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Only report what would be created and what differs.
    #[arg(long, env = "KDR_DRY_RUN")]
    pub dry_run: bool,

    /// Also create this target topic if missing (3 partitions, broker defaults), repeatable.
    /// Handy for demos and tests; the router itself never creates topics.
    #[arg(
        long = "target-topic",
        value_name = "TOPIC",
        env = "KDR_TARGET_TOPICS",
        value_delimiter = ','
    )]
    pub target_topics: Vec<String>,
}

/// `produce`'s flags.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// The topics file.
    #[command(flatten)]
    pub config: ConfigArg,
    /// The Kafka client flags.
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Topic to deliver the records to.
    #[arg(long, env = "KDR_TARGET")]
    pub target: String,

    /// Deliver this long from now, e.g. `30s`, `95m`, `1h30m`.
    #[arg(long, env = "KDR_DELAY", value_parser = parse_duration, conflicts_with = "at", required_unless_present = "at")]
    pub delay: Option<Duration>,

    /// Deliver at this time, RFC 3339 (e.g. `2026-12-01T10:00:00Z`).
    #[arg(long, env = "KDR_AT", value_parser = parse_time)]
    pub at: Option<std::time::SystemTime>,

    /// Record key.
    #[arg(long, env = "KDR_KEY")]
    pub key: Option<String>,

    /// Extra header, repeatable: `--header trace-id=abc`.
    #[arg(
        long = "header",
        value_name = "KEY=VALUE",
        env = "KDR_HEADERS",
        value_delimiter = ';'
    )]
    pub headers: Vec<String>,

    /// `--unsafe-override`.
    #[command(flatten)]
    pub allow: UnsafeArgs,

    /// Give the records this `delay-id` (1 to 255 bytes), so that `cancel --id` can cancel them.
    #[arg(long, env = "KDR_ID")]
    pub id: Option<String>,

    /// Reschedule: first cancel the records with this `delay-id` (as `cancel --id`), then
    /// produce. Give the new records a different `--id`, or none.
    #[arg(long, value_name = "OLD_ID")]
    pub reschedule: Option<String>,

    /// Record value; without it, each line of standard input is one record.
    pub value: Option<String>,
}

/// `cancel`'s flags.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The topics file.
    #[command(flatten)]
    pub config: ConfigArg,
    /// The Kafka client flags.
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// The `delay-id` to cancel (1 to 255 bytes).
    #[arg(long, env = "KDR_ID")]
    pub id: String,

    /// When the routers may forget the cancellation, RFC 3339 (e.g. `2026-12-01T10:00:00Z`);
    /// default `max-delay` from now. Records with the id due after it are delivered again.
    #[arg(long, value_parser = parse_time, conflicts_with = "for_")]
    pub until: Option<std::time::SystemTime>,

    /// The same as a duration from now, e.g. `2h`.
    #[arg(long = "for", id = "for_", value_parser = parse_duration)]
    pub for_: Option<Duration>,

    /// `--unsafe-override`.
    #[command(flatten)]
    pub allow: UnsafeArgs,
}

/// `plan`'s flags.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The topics file.
    #[command(flatten)]
    pub config: ConfigArg,

    /// The delay to plan, e.g. `95m`.
    #[arg(long, env = "KDR_DELAY", value_parser = parse_duration)]
    pub delay: Duration,
}

/// `watch`'s flags.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The Kafka client flags.
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Topic to watch.
    #[arg(long, env = "KDR_WATCH_TOPIC")]
    pub topic: String,

    /// Stop after this many records.
    #[arg(long)]
    pub count: Option<usize>,

    /// Stop after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Start with records stamped this long ago (default: from now on).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub since: Duration,
}

/// `status`' flags.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The topics file.
    #[command(flatten)]
    pub config: ConfigArg,
    /// The Kafka client flags.
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// The routers' consumer group.
    #[arg(long, env = "KDR_GROUP_ID", default_value = "kafka-delay-router")]
    pub group_id: String,

    /// Print JSON (one object: group, per-tier summary, per-partition lines) for scripts.
    #[arg(long)]
    pub json: bool,

    /// How long to wait for the head records.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl KafkaArgs {
    /// The security flags as librdkafka settings, before any `-X` (which win).
    pub fn security_settings(&self) -> Vec<String> {
        [
            ("security.protocol", &self.security_protocol),
            ("ssl.ca.location", &self.ssl_ca_location),
            ("ssl.certificate.location", &self.ssl_certificate_location),
            ("ssl.key.location", &self.ssl_key_location),
            ("ssl.key.password", &self.ssl_key_password),
            ("sasl.mechanisms", &self.sasl_mechanism),
            ("sasl.username", &self.sasl_username),
            ("sasl.password", &self.sasl_password),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect()
    }
}

mod parse;
pub use parse::{parse_duration, parse_header, parse_size, parse_time};

#[cfg(test)]
mod tests;
