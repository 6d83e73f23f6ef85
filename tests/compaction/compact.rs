//! The compaction half of `compact,delete`: a history of cancellations of
//! every kind, compacted by Kafka's cleaner, then read by a new router.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::configs::assert_compaction_settings;
use crate::outcome::*;
use crate::topic::*;
use crate::PARTITIONS;
use kafka_delay_router::{DelayProducer, When};

/// Ids of each kind.
const PER_KIND: usize = 6;

/// Per-topic settings that let the cleaner compact the cancel topic within
/// seconds: a segment rolls at the first write 100 ms after the segment began,
/// any dirty record makes the partition worth cleaning, a record may be
/// compacted at once, and a tombstone is removed at the cleaning after the one
/// that first kept it.
pub const CANCEL_CONFIGS: [(&str, &str); 4] = [
    ("segment.ms", "100"),
    ("min.cleanable.dirty.ratio", "0.01"),
    ("min.compaction.lag.ms", "0"),
    ("delete.retention.ms", "0"),
];

/// How long the short-lived cancellations last.
const SHORT: Duration = Duration::from_secs(1);

/// What was written on the cancel topic for an id, and what a router must then do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    /// A short cancellation, then one of `max-delay`: still cancelled.
    Cancelled,
    /// Cancelled, withdrawn (null value), cancelled again: still cancelled.
    Recancelled,
    /// Cancelled, then withdrawn: delivered.
    Withdrawn,
    /// A cancellation of one second: delivered once it expired.
    Expired,
    /// A cancellation of `max-delay`, then one of a second: delivered.
    Shortened,
    /// Never cancelled: delivered.
    Free,
}

const KINDS: [Kind; 6] = [
    Kind::Cancelled,
    Kind::Recancelled,
    Kind::Withdrawn,
    Kind::Expired,
    Kind::Shortened,
    Kind::Free,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Cancelled => "cancelled",
            Kind::Recancelled => "recancelled",
            Kind::Withdrawn => "withdrawn",
            Kind::Expired => "expired",
            Kind::Shortened => "shortened",
            Kind::Free => "free",
        }
    }

    fn stays_cancelled(self) -> bool {
        matches!(self, Kind::Cancelled | Kind::Recancelled)
    }
}

/// The compaction half of `compact,delete`: Kafka's cleaner compacts the
/// cancel topic, then a new router reads what is left.
pub async fn compaction(data: &Path) {
    let cancel_topic = unique("compaction-cancel");
    let configs = CANCEL_CONFIGS
        .iter()
        .map(|(k, v)| format!("{k}: '{v}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let env = Env::with_extra(
        "compaction",
        &[1_000, 2_000],
        2,
        1,
        &format!(
            "cancel: {{topic: {cancel_topic}, partitions: {PARTITIONS}, configs: {{{configs}}}}}\n"
        ),
    )
    .await;
    assert_compaction_settings(&cancel_topic).await;
    let target = env.targets[0].clone();
    let dp = DelayProducer::new(&kafka(), env.config.clone()).unwrap();
    let p = producer();

    // The history, written the way users write it.
    let short = Some(When::After(SHORT));
    let mut log: Vec<Rec> = Vec::new();
    let mut kind_of: BTreeMap<String, Kind> = BTreeMap::new();
    for i in 0..PER_KIND {
        for kind in KINDS {
            let id = format!("{}-{i}", kind.name());
            kind_of.insert(id.clone(), kind);
            match kind {
                Kind::Cancelled => {
                    cancel(&dp, &id, short, &mut log).await;
                    cancel(&dp, &id, None, &mut log).await;
                }
                Kind::Recancelled => {
                    cancel(&dp, &id, None, &mut log).await;
                    withdraw(&p, &cancel_topic, &id, &mut log).await;
                    cancel(&dp, &id, None, &mut log).await;
                }
                Kind::Withdrawn => {
                    cancel(&dp, &id, None, &mut log).await;
                    withdraw(&p, &cancel_topic, &id, &mut log).await;
                }
                Kind::Expired => cancel(&dp, &id, short, &mut log).await,
                Kind::Shortened => {
                    cancel(&dp, &id, None, &mut log).await;
                    cancel(&dp, &id, short, &mut log).await;
                }
                Kind::Free => {}
            }
        }
    }
    let history_written = Instant::now();
    let want = survivors(&log);
    let gone: Vec<&Rec> = log.iter().filter(|r| !want.contains(r)).collect();
    let per_partition = |recs: &mut dyn Iterator<Item = &Rec>| {
        let mut n = [0usize; PARTITIONS as usize];
        for r in recs {
            n[r.partition as usize] += 1;
        }
        n
    };
    println!(
        "history: {} records on the cancel topic ({:?} per partition), {} to be removed by \
         compaction ({} of them tombstones), {} to stay",
        log.len(),
        per_partition(&mut log.iter()),
        gone.len(),
        log.iter().filter(|r| r.tombstone).count(),
        want.len()
    );
    let reading = reader();
    let before = watermarks(&reading, &cancel_topic);
    let history_end: Vec<i64> = before.iter().map(|(_, high)| *high).collect();

    // Keep writing (one short-lived cancellation per partition, under the same
    // key each time) so that segments roll behind the history and the cleaner
    // has dirty records to clean; poll Kafka until the history is compacted
    // and the cleaner's checkpoint is past it.
    let fillers: Vec<String> = (0..PARTITIONS)
        .map(|p| keys_in("filler", p, 1).remove(0))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut polls = 0;
    let (kept, after, checkpoint) = loop {
        polls += 1;
        for f in &fillers {
            dp.cancel(f.as_bytes(), Some(When::After(Duration::from_millis(300))))
                .await
                .unwrap();
        }
        let (kept, after, checkpoint) = tokio::task::block_in_place(|| {
            let after = watermarks(&reading, &cancel_topic);
            let all = read_from_start(&reading, &cancel_topic, &after);
            (all, after, cleaner_checkpoint(data, &cancel_topic))
        });
        let history: Vec<Rec> = kept
            .iter()
            .filter(|r| kind_of.contains_key(&r.key))
            .cloned()
            .collect();
        let cleaned_past_history =
            (0..PARTITIONS).all(|p| checkpoint.get(&p) >= Some(&history_end[p as usize]));
        if history == want && cleaned_past_history {
            break (kept, after, checkpoint);
        }
        assert!(
            Instant::now() < deadline,
            "the history was not compacted within 40 s: {} of its records left (want {}), \
             cleaner checkpoint {checkpoint:?} (history ends {history_end:?}); left: {history:?}",
            history.len(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "compacted {:?} after the history was written ({polls} polls)",
        history_written.elapsed()
    );
    let written = per_partition(&mut log.iter());
    let kept_history = per_partition(&mut kept.iter().filter(|r| kind_of.contains_key(&r.key)));
    for p in 0..PARTITIONS as usize {
        let read: Vec<&Rec> = kept.iter().filter(|r| r.partition as usize == p).collect();
        println!(
            "{cancel_topic} [{p}]: offsets 0..{} written, {} left when read from the start \
             ({} gone, the first one left at offset {}); history {} written, {} left; \
             log start offset {} before, {} after; cleaner checkpoint {}",
            after[p].1,
            read.len(),
            after[p].1 - read.len() as i64,
            read[0].offset,
            written[p],
            kept_history[p],
            before[p].0,
            after[p].0,
            checkpoint[&(p as i32)]
        );
    }
    // The cleaner's evidence, offset by offset: every superseded record and
    // every tombstone is gone from where it was written, and the withdrawn
    // ids have nothing left at all.
    for r in &gone {
        assert!(
            !kept
                .iter()
                .any(|k| k.partition == r.partition && k.offset == r.offset),
            "{r:?} is still on the topic"
        );
    }
    assert!(!kept
        .iter()
        .any(|r| kind_of.get(&r.key) == Some(&Kind::Withdrawn)));

    // A new router, started from the compacted topic.
    let mut col = Collector::start(&target);
    let router = env.start_router().await;
    wait_assigned(&router, 4.0).await;
    // Due 1.5 to 2.4 s from now, long after the short cancellations expired.
    let ids: Vec<(String, When)> = kind_of
        .keys()
        .enumerate()
        .map(|(n, id)| {
            let ms = 1_500 + 100 * (n as u64 % 10);
            (id.clone(), When::After(Duration::from_millis(ms)))
        })
        .collect();
    let dropped: Vec<String> = kind_of
        .iter()
        .filter(|(_, k)| k.stays_cancelled())
        .map(|(id, _)| id.clone())
        .collect();
    let (got, due) = send_and_collect(&router, &dp, &mut col, &target, &ids, &dropped).await;
    for kind in KINDS {
        let of_kind: Vec<&Received> = got
            .iter()
            .filter(|r| kind_of[&r.value_str()] == kind)
            .collect();
        let late = of_kind
            .iter()
            .map(|r| r.arrived_ms - due[&r.value_str()])
            .max();
        println!(
            "{}: sent {PER_KIND}, delivered {}, max lateness {} ms",
            kind.name(),
            of_kind.len(),
            late.map_or("-".to_string(), |l| l.to_string())
        );
    }
    // Only the ids still cancelled are held (the fillers and expired ones are swept).
    let held = outstanding(&router, dropped.len()).await;
    let cancelled = metric(&router, CANCELLED, &[]);
    println!("new router: records_cancelled_total {cancelled}, cancellations_outstanding {held}");
    assert_outcome(&router, &got, &due, &dropped);
    assert_eq!(held, dropped.len() as f64);
    router.shutdown().await.unwrap();
}
