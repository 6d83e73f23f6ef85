//! The steady load of the precision scenarios: what is sent (the mix of
//! delays), how fast (records at a fixed rate, each on its own schedule), and
//! how what arrived is summarized.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kafka_delay_router::headers::{DELIVER_AT, TARGET};
use kafka_delay_router::kafka::{now_ms, TracingContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

use crate::common::{percentile, Lateness, Rng};
use crate::reader::{Seen, DUE, ID, KIND, RUN};

/// One record of the mix.
#[derive(Debug, Clone, Copy)]
pub struct Delayed {
    pub kind: &'static str,
    pub delay_ms: u64,
    /// Carries `delay-deliver-at` (as `DelayProducer` sends it) rather than
    /// relying on its tier's fixed delay.
    pub deliver_at: bool,
}

/// Shortest and longest cascaded delay (ms): across the 1s and 5s tiers.
pub fn cascade_span(quick: bool) -> (u64, u64) {
    (1_200, if quick { 6_000 } else { 12_000 })
}

/// The mix, in every 20 records: 6 fixed 1 s and 4 fixed 5 s (no
/// deliver-at, due at timestamp + tier delay), 6 cascaded (deliver-at 1.2 to
/// 12 s ahead, entering the largest tier that fits) and 4 sub-second
/// (deliver-at 100 to 900 ms ahead, in the smallest tier).
pub fn mix(i: usize, rng: &mut Rng, quick: bool) -> Delayed {
    let (lo, hi) = cascade_span(quick);
    match i % 20 {
        0 | 3 | 6 | 10 | 13 | 16 => Delayed {
            kind: "fixed-1s",
            delay_ms: 1_000,
            deliver_at: false,
        },
        1 | 8 | 11 | 18 => Delayed {
            kind: "fixed-5s",
            delay_ms: 5_000,
            deliver_at: false,
        },
        4 | 9 | 14 | 19 => Delayed {
            kind: "sub-second",
            delay_ms: rng.between(100, 900),
            deliver_at: true,
        },
        _ => Delayed {
            kind: "cascade",
            delay_ms: rng.between(lo, hi),
            deliver_at: true,
        },
    }
}

/// The kinds of [`mix`], in report order.
pub const KINDS: [&str; 4] = ["fixed-1s", "fixed-5s", "cascade", "sub-second"];

/// A record to send, with the bench headers already on.
pub struct Outgoing {
    pub topic: String,
    pub key: Vec<u8>,
    pub headers: OwnedHeaders,
    pub timestamp: i64,
}

/// Headers of a measured record: the bench's own, then (for delayed records)
/// `delay-target` and `delay-deliver-at` last, in `DelayProducer`'s order.
pub fn bench_headers(
    run: &str,
    id: usize,
    kind: &str,
    due: i64,
    target: Option<&str>,
    deliver_at: bool,
) -> OwnedHeaders {
    let due_text = due.to_string();
    let mut h = OwnedHeaders::new()
        .insert(Header {
            key: RUN,
            value: Some(run),
        })
        .insert(Header {
            key: ID,
            value: Some(&id.to_string()),
        })
        .insert(Header {
            key: KIND,
            value: Some(kind),
        })
        .insert(Header {
            key: DUE,
            value: Some(&due_text),
        });
    if let Some(t) = target {
        h = h.insert(Header {
            key: TARGET,
            value: Some(t),
        });
    }
    if deliver_at {
        h = h.insert(Header {
            key: DELIVER_AT,
            value: Some(&due_text),
        });
    }
    h
}

/// How the producer kept up with a paced stream.
#[derive(Debug, Clone, Serialize)]
pub struct Sent {
    pub records: usize,
    pub requested_rate: f64,
    /// Records over the time from the first send to the last.
    pub achieved_rate: f64,
    /// Send to acknowledgement, ms.
    pub ack_p50_ms: i64,
    pub ack_p99_ms: i64,
    pub ack_max_ms: i64,
    pub failed: usize,
}

const VALUE: [u8; 256] = [b'v'; 256];

/// Sends `rate` records/s for `secs` s, record `i` at `i / rate` s after the
/// start (never before), built by `make(i, now_ms)`; returns once every record
/// is acknowledged or failed.
pub async fn paced(
    producer: &FutureProducer<TracingContext>,
    rate: f64,
    secs: f64,
    mut make: impl FnMut(usize, i64) -> Outgoing,
) -> Result<Sent> {
    let total = ((rate * secs).round() as usize).max(1);
    let start = Instant::now();
    // Acknowledgements already in are collected as the stream goes, so a long
    // stream (the soak) holds only the ones still in flight.
    let mut acks = std::collections::VecDeque::new();
    let mut ack_ms = Vec::with_capacity(total);
    let mut failed = 0;
    let mut last_send = start;
    for i in 0..total {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        if at > Instant::now() {
            tokio::time::sleep_until(at.into()).await;
        }
        let out = make(i, now_ms());
        let mut rec = FutureRecord::to(&out.topic)
            .key(&out.key)
            .payload(&VALUE[..])
            .headers(out.headers)
            .timestamp(out.timestamp);
        let sent_at = Instant::now();
        let delivery = loop {
            match producer.send_result(rec) {
                Ok(f) => break f,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => bail!("producing to {}: {e}", out.topic),
            }
        };
        last_send = Instant::now();
        acks.push_back(tokio::spawn(async move {
            match delivery.await {
                Ok(Ok(_)) => Some(sent_at.elapsed().as_millis() as i64),
                _ => None,
            }
        }));
        while acks.front().is_some_and(|a| a.is_finished()) {
            match acks.pop_front().expect("non-empty").await? {
                Some(ms) => ack_ms.push(ms),
                None => failed += 1,
            }
        }
    }
    let elapsed = last_send.duration_since(start).as_secs_f64();
    for a in acks {
        match a.await? {
            Some(ms) => ack_ms.push(ms),
            None => failed += 1,
        }
    }
    ack_ms.sort_unstable();
    Ok(Sent {
        records: total,
        requested_rate: rate,
        achieved_rate: if total > 1 && elapsed > 0.0 {
            (total - 1) as f64 / elapsed
        } else {
            rate
        },
        ack_p50_ms: percentile(&ack_ms, 50.0),
        ack_p99_ms: percentile(&ack_ms, 99.0),
        ack_max_ms: ack_ms.last().copied().unwrap_or(0),
        failed,
    })
}

/// What arrived of one measured stream.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub sent: Sent,
    /// Distinct records that arrived.
    pub delivered: usize,
    /// Sent but not seen when the wait ended.
    pub undelivered: usize,
    /// Arrivals beyond the first of a record.
    pub duplicates: usize,
    /// Over every record, on its first arrival.
    pub lateness: Lateness,
    /// Per kind of the mix (empty for the probe).
    pub by_kind: BTreeMap<String, Lateness>,
    /// Every record's lateness, for the plots (in results.json under `lateness_ms`).
    #[serde(skip)]
    pub raw_ms: Vec<i64>,
}

impl Delivery {
    /// Summarizes what the reader saw of a stream; a duplicate counts once, at its first arrival.
    pub fn summarize(sent: Sent, seen: &[Seen], split_by_kind: bool) -> Delivery {
        let mut firsts: HashMap<&str, &Seen> = HashMap::new();
        for s in seen {
            firsts.entry(s.id.as_str()).or_insert(s);
        }
        let mut by_kind: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        let mut all = Vec::with_capacity(firsts.len());
        for s in firsts.values() {
            all.push(s.arrived - s.due);
            if split_by_kind {
                by_kind
                    .entry(s.kind.clone())
                    .or_default()
                    .push(s.arrived - s.due);
            }
        }
        let lateness = Lateness::of(&mut all);
        Delivery {
            delivered: firsts.len(),
            undelivered: sent.records.saturating_sub(firsts.len()),
            duplicates: seen.len() - firsts.len(),
            sent,
            lateness,
            by_kind: by_kind
                .into_iter()
                .map(|(k, mut v)| (k, Lateness::of(&mut v)))
                .collect(),
            raw_ms: all,
        }
    }
}

/// Sends one record, due at once, into each of `topics` for `target`, and
/// waits until the reader saw them all: the load producer then knows every
/// topic's metadata and holds its producer id, and the path through the
/// router (or the requeue loop) has carried a record, before anything is
/// measured.
pub async fn warm_path(
    producer: &FutureProducer<TracingContext>,
    topics: &[&str],
    target: &str,
    reader: &crate::reader::Reader,
) -> Result<()> {
    const RUN_TAG: &str = "path-warm-up";
    for (i, topic) in topics.iter().enumerate() {
        let now = now_ms();
        let rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
            .payload(&VALUE[..])
            .headers(bench_headers(
                RUN_TAG,
                i,
                "warm-up",
                now,
                Some(target),
                true,
            ))
            .timestamp(now);
        producer
            .send_result(rec)
            .map_err(|(e, _)| e)?
            .await?
            .map_err(|(e, _)| e)?;
    }
    let got = reader
        .wait_for(RUN_TAG, topics.len(), Duration::from_secs(30))
        .await;
    if got < topics.len() {
        bail!(
            "{got} of {} warm-up records reached {target} in 30 s",
            topics.len()
        );
    }
    Ok(())
}
