//! Exactly-once mode (`run --exactly-once`): each partition task owns a
//! transactional producer, and a record's forward, delivery or dead letter
//! commits in the same Kafka transaction as its tier offset.
//!
//! Guarantees, on a broker that implements transactions: a `read_committed`
//! consumer of a target sees each record once, whatever happens to routers;
//! a partition's transactional id is derived from the partition, so whoever
//! takes it over fences the previous owner (its zombie) when it initialises
//! its producer; records finished out of offset order (a held record behind a
//! delivered one) are written down in the committed offset's metadata, so a
//! rewind or a new owner skips exactly those ([`Resume`]).

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::TopicPartitionList;

use crate::error::{Error, Result};
use crate::kafka::{KafkaSettings, TracingContext};

mod failure;
mod resume;
use failure::retry_until;
pub use failure::{commit_action, is_fenced, txn_failure, TxnAction, TxnError, TxnFailure};
pub use resume::{committed_resume, Resume};

/// How the router runs in exactly-once mode.
#[derive(Debug, Clone)]
pub struct ExactlyOnce {
    /// Start of every transactional id; one router deployment, one prefix.
    pub id_prefix: String,
    /// How long a transaction stays open before it is committed.
    pub interval: Duration,
}

/// Most records a partition task keeps unfinished at once in exactly-once
/// mode, so that their offsets always fit in the committed offset's metadata
/// (Kafka's `offset.metadata.max.bytes` is 4096 by default).
pub const MAX_OPEN: usize = 128;

/// Timeout of transaction calls (init, send offsets, commit, abort).
pub const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// The transactional id of one tier partition: stable across restarts and
/// owners, so the next owner's producer fences the previous one.
pub fn transactional_id(prefix: &str, topic: &str, partition: i32) -> String {
    format!("{prefix}.{topic}.{partition}")
}

/// Creates a transactional producer and initialises it, fencing any earlier
/// producer with the same id and aborting its open transaction. Blocking.
pub fn init_producer(
    settings: &KafkaSettings,
    id: &str,
) -> std::result::Result<FutureProducer<TracingContext>, KafkaError> {
    let producer: FutureProducer<TracingContext> =
        txn_config(settings, id).create_with_context(TracingContext)?;
    producer.init_transactions(TXN_TIMEOUT)?;
    Ok(producer)
}

/// The producer settings with a transactional id; the transaction timeout
/// (which librdkafka wants no shorter than `message.timeout.ms`) defaults to
/// the message timeout.
fn txn_config(settings: &KafkaSettings, id: &str) -> rdkafka::ClientConfig {
    let mut config = settings.producer_config();
    config.set("transactional.id", id);
    if config.get("transaction.timeout.ms").is_none() {
        let timeout = config
            .get("message.timeout.ms")
            .unwrap_or("60000")
            .to_string();
        config.set("transaction.timeout.ms", timeout);
    }
    config
}

/// How long the broker lets a transaction stay open (`transaction.timeout.ms`
/// as the router sets it) before it aborts it.
pub fn transaction_timeout(settings: &KafkaSettings) -> Result<Duration> {
    let config = txn_config(settings, "");
    let value = config.get("transaction.timeout.ms").unwrap_or("60000");
    value
        .trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| Error::Usage {
            flag: "-X transaction.timeout.ms".into(),
            problem: format!("{value:?} is not a whole number of milliseconds"),
        })
}

/// Refuses a `--missing-target-wait` that cannot fit in a transaction: a
/// record waiting for its target keeps its transaction open, so if the wait
/// (plus `--transaction-interval`, how long the transaction may already be
/// open) reaches `transaction.timeout.ms`, the broker aborts the transaction,
/// the record is read again, waits again, and the partition never moves on.
pub fn check_timeouts(
    settings: &KafkaSettings,
    eo: &ExactlyOnce,
    missing_target_wait: Duration,
) -> Result<()> {
    let timeout = transaction_timeout(settings)?;
    let needed = missing_target_wait + eo.interval;
    if needed < timeout {
        return Ok(());
    }
    let ms = |d: Duration| d.as_millis();
    Err(Error::Usage {
        flag: "--missing-target-wait".into(),
        problem: format!(
            "in exactly-once mode a record waiting for its target keeps its transaction open, and \
             --missing-target-wait ({} ms) plus --transaction-interval ({} ms) is not shorter than \
             transaction.timeout.ms ({} ms), so the broker would abort that transaction every time \
             and the partition would never move on; fix: a --missing-target-wait under {} ms, or \
             -X transaction.timeout.ms above {} ms (with -X message.timeout.ms no longer than it; \
             the broker's transaction.max.timeout.ms, 15 minutes by default, caps it)",
            ms(missing_target_wait),
            ms(eo.interval),
            ms(timeout),
            ms(timeout.saturating_sub(eo.interval)),
            ms(needed),
        ),
    })
}

/// Sends the partition's offset (with its [`Resume`] metadata) into the open
/// transaction and commits it, calling again while librdkafka answers with a
/// retriable error (a commit that timed out goes on in the background) until
/// `deadline`, when the broker aborts the transaction by itself. Blocking.
pub fn commit(
    producer: &FutureProducer<TracingContext>,
    topic: &str,
    partition: i32,
    resume: &Resume,
    group: &ConsumerGroupMetadata,
    deadline: Instant,
) -> std::result::Result<(), (TxnFailure, KafkaError)> {
    let mut tpl = TopicPartitionList::new();
    let mut elem = tpl.add_partition(topic, partition);
    elem.set_offset(rdkafka::Offset::Offset(resume.offset))
        .map_err(|e| (TxnFailure::Abort, e))?;
    elem.set_metadata(resume.encode());
    let classify = |e: &KafkaError, left: Duration| commit_action(TxnError::of(e), left);
    retry_until(
        deadline,
        |t| producer.send_offsets_to_transaction(&tpl, group, t),
        classify,
    )?;
    retry_until(deadline, |t| producer.commit_transaction(t), classify)
}

/// The transactional id of this process's start-up probe: unique per
/// instance (host, process, a random number), so replicas starting together
/// do not fence each other's probes, and ending in `.probe`, which no
/// partition's id ([`transactional_id`], ending in a partition number) does.
pub fn probe_id(prefix: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect();
    let nonce = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{prefix}.{host}-{}-{nonce:016x}.probe", std::process::id())
}

/// Checks that the cluster runs transactions end to end, before the router
/// joins its group: initialises a producer with the deployment's probe id,
/// then begins a transaction that only holds an offset for a probe group on
/// `topic` and aborts it, which leaves nothing behind. (An authorizer that
/// refuses the transactional id answers `InitProducerId` with an error; a
/// Kafka-protocol imitation may accept `InitProducerId` and still lack `EndTxn`.)
pub async fn probe(settings: &KafkaSettings, prefix: &str, topic: &str) -> Result<()> {
    let settings = settings.clone();
    let id = probe_id(prefix);
    let topic = topic.to_string();
    let outcome = tokio::task::spawn_blocking(move || {
        let producer: FutureProducer<TracingContext> =
            txn_config(&settings, &id).create_with_context(TracingContext)?;
        let probe_group: rdkafka::consumer::BaseConsumer =
            settings.reader_config().set("group.id", &id).create()?;
        let group = probe_group.group_metadata().ok_or(KafkaError::Canceled)?;
        let timeout = Duration::from_secs(15);
        producer.init_transactions(timeout)?;
        producer.begin_transaction()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(0))?;
        producer.send_offsets_to_transaction(&tpl, &group, timeout)?;
        producer.abort_transaction(timeout)
    })
    .await
    .map_err(|e| Error::Fatal(format!("transaction probe task failed: {e}")))?;
    outcome.map_err(|source| Error::TransactionsUnsupported {
        detail: source.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_per_partition_and_stable() {
        assert_eq!(
            transactional_id("kdr", "delay-5s", 3),
            "kdr.delay-5s.3".to_string()
        );
        assert_ne!(
            transactional_id("kdr", "delay-5s", 3),
            transactional_id("kdr", "delay-5s", 4)
        );
    }

    #[test]
    fn probe_ids_are_unique_and_never_a_partitions_id() {
        let (a, b) = (probe_id("kdr"), probe_id("kdr"));
        assert_ne!(a, b, "two instances starting together");
        assert!(a.starts_with("kdr.") && a.ends_with(".probe"), "{a}");
        // A partition's id ends in `.<partition number>`.
        let last = a.rsplit('.').next().unwrap();
        assert!(last.parse::<i32>().is_err(), "{a}");
        assert_ne!(a, transactional_id("kdr", "probe", 0));
    }

    #[test]
    fn a_missing_target_wait_must_fit_in_a_transaction() {
        let eo = ExactlyOnce {
            id_prefix: "kdr".into(),
            interval: Duration::from_millis(100),
        };
        let settings = KafkaSettings::new("localhost:9092");
        // transaction.timeout.ms defaults to message.timeout.ms, 60 s.
        assert_eq!(
            transaction_timeout(&settings).unwrap(),
            Duration::from_secs(60)
        );
        assert!(check_timeouts(&settings, &eo, Duration::from_secs(30)).is_ok());
        let refused = check_timeouts(&settings, &eo, Duration::from_secs(120))
            .unwrap_err()
            .to_string();
        for needed in [
            "--missing-target-wait (120000 ms)",
            "transaction.timeout.ms (60000 ms)",
            "--transaction-interval (100 ms)",
            "under 59900 ms",
            "-X transaction.timeout.ms above 120100 ms",
        ] {
            assert!(refused.contains(needed), "{needed:?} in {refused}");
        }
        assert!(check_timeouts(&settings, &eo, Duration::from_millis(59_900)).is_err());
        let mut longer = settings.clone();
        longer
            .overrides
            .push(("transaction.timeout.ms".into(), "300000".into()));
        assert!(check_timeouts(&longer, &eo, Duration::from_secs(120)).is_ok());
    }
}
