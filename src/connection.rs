//! Why the cluster could not be reached, in words that name the setting to
//! fix. librdkafka reports a failed login or TLS handshake only in its log
//! and to the client's error callback, while the operation that needed the
//! connection fails later with a generic "broker transport failure" or a
//! timeout; the log and error callbacks record the last such report here
//! ([`record`]), and the command line adds it, with its fix, to the one-line
//! error it prints ([`explain`]).
//! Guarantee: [`fix_for`] is a pure function of librdkafka's text, unit-tested
//! on the texts librdkafka 2.12 writes; anything it does not recognise is
//! passed on as it is, without a guessed fix.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The last connection problem a client reported, and when.
static LAST: Mutex<Option<(Instant, String)>> = Mutex::new(None);

/// Keeps `reason` (a client's error-callback text) if it names a problem an
/// operator can fix; other reports leave the last one in place.
pub fn record(reason: &str) {
    if fix_for(reason).is_some() {
        if let Ok(mut last) = LAST.lock() {
            *last = Some((Instant::now(), reason.to_string()));
        }
    }
}

/// The last recorded problem, if it was reported within `within`.
pub fn last(within: Duration) -> Option<String> {
    let last = LAST.lock().ok()?;
    let (at, reason) = last.as_ref()?;
    (at.elapsed() <= within).then(|| reason.clone())
}

/// What to fix for a client's error text, or `None` when it is not a
/// problem of the connection settings.
pub fn fix_for(reason: &str) -> Option<&'static str> {
    let r = reason.to_ascii_lowercase();
    if r.contains("sasl authentication error") || r.contains("authentication failed") {
        Some(
            "the broker refused the login: check --sasl-username and --sasl-password \
             (KAFKA_SASL_PASSWORD) and --sasl-mechanism",
        )
    } else if r.contains("certificate has expired") || r.contains("certificate expired") {
        Some(
            "a TLS certificate has expired: renew the broker's certificate (or the \
             client's, --ssl-certificate-location)",
        )
    } else if r.contains("certificate verify failed") || r.contains("could not be verified") {
        // librdkafka's text is the same whether the CA is wrong, the
        // certificate expired or it names another host.
        Some(
            "the broker's TLS certificate could not be verified: check that \
             --ssl-ca-location holds the CA that signed it, that it has not expired \
             (`openssl s_client -connect HOST:PORT` shows its dates) and that it names \
             the host in --bootstrap-servers",
        )
    } else if r.contains("ssl handshake failed") || r.contains("ssl routines") {
        Some(
            "the TLS handshake failed: check --security-protocol, --ssl-ca-location, \
             --ssl-certificate-location and --ssl-key-location",
        )
    } else if r.contains("unsupported sasl mechanism") {
        Some("the broker does not offer this mechanism: check --sasl-mechanism")
    } else if r.contains("disconnected while requesting apiversion")
        || r.contains("disconnected: verify that security.protocol")
    {
        Some(
            "the broker closed the connection at once: its listener probably expects \
             another --security-protocol (TLS or SASL)",
        )
    } else if r.contains("connection refused") {
        Some("nothing listens there: check --bootstrap-servers")
    } else if r.contains("failed to resolve") {
        Some("the host name does not resolve: check --bootstrap-servers")
    } else {
        None
    }
}

/// `error` with the last connection problem of the last two minutes and
/// its fix appended, on one line; `error` unchanged if there was none.
pub fn explain(error: &str) -> String {
    match last(Duration::from_secs(120)) {
        Some(reason) => {
            let fix = fix_for(&reason).unwrap_or("");
            let reason = reason.replace('\n', " ");
            format!("{error}; the client reported: {reason}; fix: {fix}")
        }
        // The cluster was not reached and the client said nothing more
        // specific in time (seen under load): name every setting involved.
        None if unreachable(error) => format!(
            "{error}; fix: the cluster could not be reached: check --bootstrap-servers, \
             --security-protocol, --ssl-ca-location (the CA that signed the broker's \
             certificate, which must not have expired), --ssl-certificate-location and \
             --ssl-key-location (client certificates), and --sasl-mechanism, \
             --sasl-username and --sasl-password (KAFKA_SASL_PASSWORD)"
        ),
        None => error.to_string(),
    }
}

/// Whether an error's text says the cluster could not be reached.
fn unreachable(error: &str) -> bool {
    [
        "BrokerTransportFailure",
        "AllBrokersDown",
        "Local: Timed out",
        "OperationTimedOut",
    ]
    .iter()
    .any(|e| error.contains(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafkas_texts_get_the_setting_to_fix() {
        for (text, names) in [
            (
                "sasl_ssl://127.0.0.1:21450/bootstrap: SASL authentication error: Authentication \
                 failed during authentication due to invalid credentials with SASL mechanism \
                 SCRAM-SHA-512 (after 393ms in state AUTH_REQ)",
                "--sasl-password",
            ),
            (
                "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL \
                 routines::certificate verify failed: broker certificate could not be verified, \
                 verify that ssl.ca.location is correctly configured",
                "--ssl-ca-location",
            ),
            (
                "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: \
                 certificate has expired",
                "expired",
            ),
            (
                "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused \
                 (after 0ms in state CONNECT)",
                "--bootstrap-servers",
            ),
            (
                "127.0.0.1:9093/bootstrap: Disconnected while requesting ApiVersion: might be \
                 caused by incorrect security.protocol configuration",
                "--security-protocol",
            ),
        ] {
            let fix = fix_for(text).unwrap_or_else(|| panic!("no fix for {text}"));
            assert!(fix.contains(names), "{text}: {fix}");
        }
        assert_eq!(fix_for("1/1 brokers are down"), None);
        assert_eq!(fix_for("Local: Timed out"), None);
    }

    #[test]
    fn an_unreachable_cluster_without_a_report_lists_every_setting() {
        // No report recorded in this check: `explain` falls back on the text.
        let text =
            "error: reading metadata: BrokerTransportFailure (Local: Broker transport failure)";
        if last(Duration::from_secs(120)).is_none() {
            let line = explain(text);
            for name in [
                "--bootstrap-servers",
                "--ssl-ca-location",
                "--sasl-password",
            ] {
                assert!(line.contains(name), "{line}");
            }
        }
        assert!(unreachable(text));
        assert!(!unreachable(
            "error: topics.yaml: `tiers[0].delay`: missing"
        ));
    }

    #[test]
    fn the_last_problem_is_kept_and_explained_on_one_line() {
        record("1/1 brokers are down");
        record("SASL authentication error: Authentication failed\nwith SCRAM-SHA-512");
        record("1/1 brokers are down");
        let line = explain("error: reading metadata: BrokerTransportFailure");
        assert!(line.starts_with("error: reading metadata"), "{line}");
        assert!(line.contains("Authentication failed with SCRAM"), "{line}");
        assert!(line.contains("fix: the broker refused the login"), "{line}");
        assert!(!line.contains('\n'));
        assert!(last(Duration::ZERO).is_none() || last(Duration::from_secs(1)).is_some());
    }
}
