//! The router over real TLS on Apache Kafka's own listeners, two ways:
//!
//! - server TLS (`ssl.client.auth=none`): the router and the application
//!   verify the broker's certificate against the test CA; plaintext clients
//!   and clients that do not trust the CA are refused;
//! - mutual TLS (`ssl.client.auth=required`): a client without a certificate
//!   signed by the CA is refused; one with it routes.
//!
//! The broker reads its key, certificate and CA as PEM files
//! (`ssl.keystore.type=PEM`). Needs `openssl` on PATH (scripts/test.sh installs it).

use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::{deliver_through_tiers, make_certificates, tls_broker};

use kafka_delay_router::admin;
use kafka_delay_router::kafka::KafkaSettings;
use kafka_delay_router::router::{Router, RouterOptions};
use kafka_delay_router::TopicsConfig;

fn tls_settings(dir: &Path, port: u16, with_client_cert: bool) -> KafkaSettings {
    let p = |f: &str| dir.join(f).display().to_string();
    let mut pairs = vec![
        "security.protocol=ssl".to_string(),
        format!("ssl.ca.location={}", p("ca.pem")),
    ];
    if with_client_cert {
        pairs.push(format!("ssl.certificate.location={}", p("client.pem")));
        pairs.push(format!("ssl.key.location={}", p("client.key")));
    }
    KafkaSettings::new(format!("127.0.0.1:{port}"))
        .with_overrides(&pairs)
        .unwrap()
}

const YAML: &str = "tiers:\n  - {topic: tls-t200, delay: 200ms, partitions: 2}\n  - {topic: tls-t500, delay: 500ms, partitions: 2}\ndead-letter: {topic: tls-dlq, partitions: 1}\ntargets: {allow: ['tls-*']}\n";

/// Creates the topics over `kafka`, runs the router over it, and sends records
/// through the tiers with an application on the same settings.
async fn the_router_delivers_over(kafka: &KafkaSettings) {
    let config = TopicsConfig::parse("tls.yaml", YAML).unwrap();
    admin::create_topics(&config, kafka, false).await.unwrap();
    admin::create_target_topics(kafka, &["tls-target".to_string()], false)
        .await
        .unwrap();
    let mut options = RouterOptions::new(kafka.clone());
    options.group_id = "tls-router".into();
    let router = Router::start(config.clone(), options).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while router
        .metrics
        .partitions_assigned
        .with_label_values(&["tls-t200"])
        .get()
        < 2
    {
        assert!(Instant::now() < deadline, "not assigned over TLS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    deliver_through_tiers(
        kafka,
        config,
        "tls-target",
        &[300, 900, 1_300],
        Duration::from_secs(20),
    )
    .await;
    router.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_works_over_the_brokers_own_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certificates(d);
    let broker = tls_broker(d, "none");
    let port = broker.port();
    let config = TopicsConfig::parse("tls.yaml", YAML).unwrap();

    // Plaintext, and TLS without trusting the test CA: refused.
    let plain = KafkaSettings::new(format!("127.0.0.1:{port}"));
    assert!(
        admin::create_topics(&config, &plain, false).await.is_err(),
        "a plaintext client got through the TLS listener"
    );
    let untrusting = KafkaSettings::new(format!("127.0.0.1:{port}"))
        .with_overrides(&["security.protocol=ssl".to_string()])
        .unwrap();
    assert!(
        admin::create_topics(&config, &untrusting, false)
            .await
            .is_err(),
        "a client that does not trust the broker's CA got through"
    );

    the_router_delivers_over(&tls_settings(d, port, false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_works_over_tls_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certificates(d);
    let broker = tls_broker(d, "required");
    let port = broker.port();

    // Without a client certificate the broker refuses the connection.
    let config = TopicsConfig::parse("tls.yaml", YAML).unwrap();
    let refused = admin::create_topics(&config, &tls_settings(d, port, false), false).await;
    assert!(
        refused.is_err(),
        "a client without a certificate got through"
    );

    the_router_delivers_over(&tls_settings(d, port, true)).await;
}
