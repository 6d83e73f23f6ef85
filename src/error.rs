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
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },

    /// The configuration file is not valid YAML or has unknown or mistyped keys.
    #[error("{path}: {message}")]
    ConfigSyntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the line and column.
        message: String,
    },

    /// A value in the configuration file is wrong; says which key and how to fix it.
    #[error("{path}: `{key}`: {problem}; fix: {fix}")]
    ConfigInvalid {
        /// The file.
        path: PathBuf,
        /// The key, as a path in the file.
        key: String,
        /// What is wrong with its value.
        problem: String,
        /// How to fix it.
        fix: String,
    },

    /// A command-line value is wrong.
    #[error("invalid value for {flag}: {problem}")]
    Usage {
        /// The flag or argument (or the API parameter) with the wrong value.
        flag: String,
        /// What is wrong with it.
        problem: String,
    },

    /// Cancelling was asked for, but the topics file declares no cancel topic.
    #[error("{path} declares no cancel topic, so cancellation is off; fix: add `cancel: {{topic: delay-cancel, partitions: 3}}` to it, run `kafka-delay-router create-topics`, and restart the routers with it")]
    CancelDisabled {
        /// The topics file without a cancel topic.
        path: PathBuf,
    },

    /// A duration could not be parsed.
    #[error("invalid duration {input:?}: {reason} (examples: 500ms, 30s, 5m, 1h30m, 7d)")]
    Duration {
        /// The text that was given.
        input: String,
        /// Why it is not a duration.
        reason: String,
    },

    /// A requested delay or deadline cannot be served by the configured tiers.
    #[error("delay of {requested_ms} ms is longer than the longest accepted delay of {max_ms} ms (`max-delay` in the topics file)")]
    DelayTooLong {
        /// The delay asked for, in milliseconds.
        requested_ms: i64,
        /// The longest accepted delay (`max-delay`), in milliseconds.
        max_ms: i64,
    },

    /// A `-X` setting would silently break one of the router's guarantees;
    /// says which, why, and how to fix it or accept the risk.
    #[error("-X {key}={value} breaks {guarantee}: {why}; fix: {fix}, or accept the risk with `--unsafe-override {key}`")]
    UnsafeOverride {
        /// The librdkafka property.
        key: String,
        /// The value given for it.
        value: String,
        /// The guarantee it breaks.
        guarantee: String,
        /// How it breaks it.
        why: String,
        /// The safe value or setting to use instead.
        fix: String,
    },

    /// A Kafka client operation failed.
    #[error("{context}: {source}")]
    Kafka {
        /// What the router was doing.
        context: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },

    /// Topics the router needs are missing from the cluster.
    #[error("topics missing from the cluster: {}; create them with `kafka-delay-router create-topics` or scripts/create-topics.sh", topics.join(", "))]
    MissingTopics {
        /// The missing topics' names.
        topics: Vec<String>,
    },

    /// Existing topics differ from what the topics file declares.
    #[error("{count} topic setting(s) differ from the topics file (see the report above)")]
    Drift {
        /// How many settings differ.
        count: usize,
    },

    /// The metrics endpoint could not be served.
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        /// The address it was to listen on.
        addr: String,
        /// Why it could not.
        #[source]
        source: std::io::Error,
    },

    /// `--exactly-once` was asked for, but the cluster cannot run transactions.
    #[error("--exactly-once needs a broker with Kafka transactions, and this cluster could not start one ({detail}); run without --exactly-once (at-least-once); on Apache Kafka 2.5 or later with an authorizer, grant the router's principal Write and Describe on the transactional ids that start with its --transactional-id-prefix (kafka-acls --add --allow-principal User:ROUTER --operation Write --operation Describe --transactional-id PREFIX --resource-pattern-type prefixed); a broker without transactions cannot run this mode")]
    TransactionsUnsupported {
        /// The error from the probe transaction the router tried.
        detail: String,
    },

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
