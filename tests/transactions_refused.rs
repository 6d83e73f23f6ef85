//! `run --exactly-once` on a cluster that refuses the router's transactional
//! ids: an Apache Kafka of the test's own with the `StandardAuthorizer` and one
//! ACL, a deny of every operation on every transactional id (everything else
//! is allowed: no ACL found means allowed there). The router must refuse to
//! start, with the broker's own answer and the fix in its message, before it
//! joins its group; the binary exits non-zero and commits nothing.

mod common;

use std::time::Duration;

use common::*;
use kafka_delay_router::router::Router;

/// `run --exactly-once` must refuse to start where the cluster will not run
/// its transactions, saying why and what to do, before it joins the group.
#[tokio::test]
async fn exactly_once_refuses_to_start_when_transactional_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_with(
        dir.path(),
        &BrokerSetup {
            props: vec![
                "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer"
                    .into(),
                "allow.everyone.if.no.acl.found=true".into(),
            ],
            ..Default::default()
        },
    );
    broker.kafka_tool(&[
        "org.apache.kafka.tools.AclCommand",
        "--bootstrap-server",
        &broker.bootstrap(),
        "--add",
        "--deny-principal",
        "User:ANONYMOUS",
        "--operation",
        "All",
        "--transactional-id",
        "*",
    ]);
    // This binary's only test: every helper talks to this broker.
    std::env::set_var("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap());
    // The ACL reaches the broker through the metadata log: wait until a
    // transactional producer is refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let p: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .set("transactional.id", unique("acl-check"))
            .create()
            .unwrap();
        use rdkafka::producer::Producer;
        match p.init_transactions(Duration::from_secs(10)) {
            Err(e)
                if e.rdkafka_error_code()
                    == Some(
                        rdkafka::types::RDKafkaErrorCode::TransactionalIdAuthorizationFailed,
                    ) =>
            {
                break
            }
            other => assert!(
                std::time::Instant::now() < deadline,
                "the deny ACL on transactional ids never took effect: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let env = Env::new("eos-refused", &[1000], 1, 1).await;
    let err = match Router::start(env.config.clone(), env.exactly_once_options()).await {
        Ok(_) => panic!("started in exactly-once mode with transactional ids refused"),
        Err(e) => e,
    };
    let message = err.to_string();
    println!("refused: {message}");
    assert!(
        matches!(
            err,
            kafka_delay_router::Error::TransactionsUnsupported { .. }
        ),
        "{err:?}"
    );
    // The broker's own answer is in the message.
    assert!(
        message.contains("Transactional Id authorization failed"),
        "{message}"
    );
    assert!(message.contains("without --exactly-once"), "{message}");

    // The binary exits non-zero with that message.
    let mut child = spawn_router_with(&env, &["--exactly-once"]);
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert!(!status.success());
    let log = std::fs::read_to_string(env.config_path.with_file_name("router.log")).unwrap();
    assert!(
        log.contains("--exactly-once needs a broker with Kafka transactions"),
        "{log}"
    );
    assert_eq!(
        committed(&env.group, env.tier(0), 1)[&0],
        -1,
        "nothing committed"
    );
}
