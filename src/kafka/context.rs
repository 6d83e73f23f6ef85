//! The client context every librdkafka client of the router uses: its logs
//! and errors go to `tracing` at the matching level, and a refused login or
//! TLS handshake is recorded for the one-line connection error.

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;

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
