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

use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, RDKafkaError};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::TopicPartitionList;

use crate::error::{Error, Result};
use crate::kafka::{KafkaSettings, TracingContext};

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

/// Sends the partition's offset (with its [`Resume`] metadata) into the open
/// transaction and commits it. Blocking.
pub fn commit(
    producer: &FutureProducer<TracingContext>,
    topic: &str,
    partition: i32,
    resume: &Resume,
    group: &ConsumerGroupMetadata,
) -> std::result::Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::new();
    let mut elem = tpl.add_partition(topic, partition);
    elem.set_offset(rdkafka::Offset::Offset(resume.offset))?;
    elem.set_metadata(resume.encode());
    producer.send_offsets_to_transaction(&tpl, group, TXN_TIMEOUT)?;
    producer.commit_transaction(TXN_TIMEOUT)
}

/// What a failed transaction call means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnFailure {
    /// Abort the transaction and redo its records.
    Abort,
    /// The producer is unusable (fenced by a newer owner, or broken): replace it and redo.
    Replace,
}

/// Sorts a transaction error by what to do next, as librdkafka's flags say.
pub fn txn_failure(error: &KafkaError) -> TxnFailure {
    let rd: Option<&RDKafkaError> = match error {
        KafkaError::Transaction(e) => Some(e),
        _ => None,
    };
    match rd {
        Some(e) if e.is_fatal() => TxnFailure::Replace,
        // Abortable, retriable or other: aborting and redoing is always safe.
        _ => TxnFailure::Abort,
    }
}

/// Checks that the cluster runs transactions end to end, before the router
/// joins its group: initialises a producer with the deployment's probe id,
/// then begins a transaction that only holds an offset for a probe group on
/// `topic` and aborts it, which leaves nothing behind. (A broker can accept
/// `InitProducerId` and still lack `EndTxn`: Tansu 0.6 does; Nisshi 0.8
/// refuses transactional ids outright.)
pub async fn probe(settings: &KafkaSettings, prefix: &str, topic: &str) -> Result<()> {
    let settings = settings.clone();
    let id = format!("{prefix}.probe");
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

/// Where a partition resumes after a rewind or a new owner's start: from
/// `offset`, skipping every offset in `offset..hi` except those in `open`
/// (records that were still unfinished when the transaction committed).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resume {
    pub offset: i64,
    pub hi: i64,
    /// Ascending, each in `offset..hi`.
    pub open: Vec<i64>,
}

const TAG: &str = "kdr1";

impl Resume {
    /// A resume point with nothing to skip.
    pub fn at(offset: i64) -> Self {
        Resume {
            offset,
            hi: offset,
            open: Vec::new(),
        }
    }

    /// Whether the record at `offset` was finished in a committed transaction.
    pub fn skips(&self, offset: i64) -> bool {
        offset >= self.offset && offset < self.hi && self.open.binary_search(&offset).is_err()
    }

    /// The committed-offset metadata: `kdr1 <hi> <open>...`, each number in
    /// base 36 as the distance from the previous one (from `offset` first),
    /// so even twice [`MAX_OPEN`] records (a task lists its own unfinished
    /// records plus those of the point it resumed from) fit within 4096 bytes.
    pub fn encode(&self) -> String {
        let mut out = format!("{TAG} {}", base36(self.hi - self.offset));
        let mut prev = self.offset;
        for &o in &self.open {
            out.push(' ');
            out.push_str(&base36(o - prev));
            prev = o;
        }
        out
    }

    /// Reads metadata written by [`Resume::encode`] for a committed `offset`;
    /// anything else (no metadata, another tool's, corrupt) resumes with
    /// nothing to skip, which may duplicate but never loses a record.
    pub fn decode(offset: i64, metadata: &str) -> Self {
        Self::parse(offset, metadata).unwrap_or_else(|| Resume::at(offset))
    }

    fn parse(offset: i64, metadata: &str) -> Option<Self> {
        let mut parts = metadata.split(' ');
        if parts.next()? != TAG {
            return None;
        }
        let hi = offset.checked_add(unbase36(parts.next()?)?)?;
        let mut open = Vec::new();
        let mut prev = offset;
        for (i, p) in parts.enumerate() {
            let d = unbase36(p)?;
            if i > 0 && d == 0 {
                return None;
            }
            prev = prev.checked_add(d)?;
            if prev >= hi || open.len() >= 2 * MAX_OPEN {
                return None;
            }
            open.push(prev);
        }
        Some(Resume { offset, hi, open })
    }
}

fn base36(mut n: i64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    if n <= 0 {
        return "0".into();
    }
    let mut buf = Vec::new();
    while n > 0 {
        buf.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    buf.reverse();
    String::from_utf8(buf).expect("ascii digits")
}

fn unbase36(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 13 {
        return None;
    }
    i64::from_str_radix(s, 36).ok().filter(|n| *n >= 0)
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
    fn resume_round_trips_and_skips_only_finished_offsets() {
        let r = Resume {
            offset: 1_000,
            hi: 1_050,
            open: vec![1_000, 1_007, 1_049],
        };
        let text = r.encode();
        assert_eq!(text, "kdr1 1e 0 7 16");
        assert_eq!(Resume::decode(1_000, &text), r);
        assert!(!r.skips(999), "before the committed offset");
        assert!(!r.skips(1_000), "open");
        assert!(r.skips(1_001));
        assert!(!r.skips(1_007), "open");
        assert!(r.skips(1_048));
        assert!(!r.skips(1_049), "open");
        assert!(!r.skips(1_050), "not yet read when committed");
    }

    #[test]
    fn nothing_to_skip_without_our_metadata() {
        for junk in [
            "",
            "kdr1",
            "kdr2 5",
            "kdr1 -5",
            "kdr1 5 9",
            "kdr1 5 1 0",
            "kdr1 zzzzzzzzzzzzzz",
            "hello",
        ] {
            let r = Resume::decode(10, junk);
            assert_eq!(r, Resume::at(10), "{junk:?}");
            assert!(!r.skips(10) && !r.skips(11));
        }
    }

    #[test]
    fn the_largest_resume_fits_kafkas_metadata_limit() {
        let offset = i64::MAX / 4;
        let open: Vec<i64> = (0..2 * MAX_OPEN as i64)
            .map(|i| offset + i * 1_000_000_000_000)
            .collect();
        let r = Resume {
            offset,
            hi: *open.last().unwrap() + 1_000_000_000,
            open,
        };
        let text = r.encode();
        assert!(text.len() < 4096, "{} bytes", text.len());
        assert_eq!(Resume::decode(offset, &text), r);
    }

    #[test]
    fn transaction_errors_are_sorted() {
        assert_eq!(txn_failure(&KafkaError::Canceled), TxnFailure::Abort);
    }
}
