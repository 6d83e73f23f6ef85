//! The crate's one error type: every failure a caller can see, with a message
//! that says what went wrong and, for configuration, which file, key and fix.

use std::path::PathBuf;

use rdkafka::error::KafkaError;

/// Everything that can go wrong in the router, its tools and its library API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file could not be read.
    #[error("cannot read {path}: {source}")]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The configuration file is not valid YAML or has unknown or mistyped keys.
    #[error("{path}: {message}")]
    ConfigSyntax { path: PathBuf, message: String },

    /// A value in the configuration file is wrong; says which key and how to fix it.
    #[error("{path}: `{key}`: {problem}; fix: {fix}")]
    ConfigInvalid {
        path: PathBuf,
        key: String,
        problem: String,
        fix: String,
    },

    /// A command-line value is wrong.
    #[error("invalid value for {flag}: {problem}")]
    Usage { flag: String, problem: String },

    /// Cancelling was asked for, but the topics file declares no cancel topic.
    #[error("{path} declares no cancel topic, so cancellation is off; fix: add `cancel: {{topic: delay-cancel, partitions: 3}}` to it, run `kafka-delay-router create-topics`, and restart the routers with it")]
    CancelDisabled { path: PathBuf },

    /// A duration could not be parsed.
    #[error("invalid duration {input:?}: {reason} (examples: 500ms, 30s, 5m, 1h30m, 7d)")]
    Duration { input: String, reason: String },

    /// A requested delay or deadline cannot be served by the configured tiers.
    #[error("delay of {requested_ms} ms is longer than the longest accepted delay of {max_ms} ms (`max-delay` in the topics file)")]
    DelayTooLong { requested_ms: i64, max_ms: i64 },

    /// A `-X` setting would silently break one of the router's guarantees;
    /// says which, why, and how to fix it or accept the risk.
    #[error("-X {key}={value} breaks {guarantee}: {why}; fix: {fix}, or accept the risk with `--unsafe-override {key}`")]
    UnsafeOverride {
        key: String,
        value: String,
        guarantee: String,
        why: String,
        fix: String,
    },

    /// A Kafka client operation failed.
    #[error("{context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: KafkaError,
    },

    /// Topics the router needs are missing from the cluster.
    #[error("topics missing from the cluster: {}; create them with `kafka-delay-router create-topics` or scripts/create-topics.sh", topics.join(", "))]
    MissingTopics { topics: Vec<String> },

    /// Existing topics differ from what the topics file declares.
    #[error("{count} topic setting(s) differ from the topics file (see the report above)")]
    Drift { count: usize },

    /// The metrics endpoint could not be served.
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: String,
        #[source]
        source: std::io::Error,
    },

    /// `--exactly-once` was asked for, but the cluster cannot run transactions.
    #[error("--exactly-once needs a broker with Kafka transactions, and this cluster could not start one ({detail}); run without --exactly-once (at-least-once); on Apache Kafka 2.5 or later with an authorizer, grant the router's principal Write and Describe on the transactional ids that start with its --transactional-id-prefix (kafka-acls --add --allow-principal User:ROUTER --operation Write --operation Describe --transactional-id PREFIX --resource-pattern-type prefixed); a broker without transactions cannot run this mode")]
    TransactionsUnsupported { detail: String },

    /// The partition task or coordinator failed in a way the router cannot continue from.
    #[error("router stopped: {0}")]
    Fatal(String),
}

impl Error {
    /// Wraps a Kafka error with what the router was doing at the time.
    pub fn kafka(context: impl Into<String>, source: KafkaError) -> Self {
        Error::Kafka {
            context: context.into(),
            source,
        }
    }
}

/// Result with the crate's error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
