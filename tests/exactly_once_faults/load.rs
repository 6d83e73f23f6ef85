//! The loads: the mix (fixed delays, cascaded, sub-second, records with a
//! `delay-id`, some cancelled), sent with retries, and a steady load of short
//! delays.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::common::*;
use futures::future::{BoxFuture, FutureExt};
use kafka_delay_router::cancel::ID_HEADER;
use kafka_delay_router::headers::TARGET;
use kafka_delay_router::kafka::now_ms;
use kafka_delay_router::{DelayProducer, When};
use rdkafka::producer::FutureProducer;

/// What the mixed load sent: records that must arrive (value -> due time),
/// cancelled ones that must not (value -> due time), and ones whose
/// cancellation was acknowledged only after their due time (either way).
#[derive(Default)]
pub struct Mixed {
    pub due: HashMap<String, i64>,
    pub cancelled: HashMap<String, i64>,
    pub either: HashSet<String>,
    pub kinds: HashMap<&'static str, usize>,
}

/// One record of the mix and, for an id to cancel, the time its
/// cancellation was acknowledged.
struct Outcome {
    kind: &'static str,
    value: String,
    due: i64,
    cancel_acked: Option<i64>,
}

/// Sends with up to 10 retries, as a user's producer would while the shared
/// broker is busy.
async fn retried<T, E: std::fmt::Debug, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let mut last = None;
    for _ in 0..10 {
        match f().await {
            Ok(v) => return v,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{what}: {last:?}")
}

/// Record `i` of the mix, in every 10: 2 fixed 1 s and 1 fixed 5 s (straight
/// into the tier, no `delay-deliver-at`: due at timestamp + tier delay), 3
/// cascaded (1.2 to 8 s), 2 sub-second (100 to 900 ms), and 2 with a
/// `delay-id` (1.5 to 6 s), the second of which is cancelled once sent.
fn mixed_record<'a>(
    env: &'a Env,
    dp: &'a DelayProducer,
    raw: &'a FutureProducer,
    tag: &str,
    i: usize,
    rng: &mut Rng,
) -> BoxFuture<'a, Outcome> {
    let value = format!("{tag}-{i}");
    let target = env.targets[0].clone();
    let after = |kind: &'static str, ms: u64, id: bool, cancel: bool| {
        let value = value.clone();
        let target = target.clone();
        async move {
            let hdrs = if id {
                vec![(ID_HEADER.to_string(), value.as_bytes().to_vec())]
            } else {
                Vec::new()
            };
            let sent = retried("sending", || {
                dp.send(
                    &target,
                    Some(value.as_bytes()),
                    Some(value.as_bytes()),
                    &hdrs,
                    When::After(Duration::from_millis(ms)),
                )
            })
            .await;
            let cancel_acked = if cancel {
                Some(
                    retried("cancelling", || dp.cancel(value.as_bytes(), None))
                        .await
                        .acked_ms,
                )
            } else {
                None
            };
            Outcome {
                kind,
                value,
                due: sent.deliver_at_ms,
                cancel_acked,
            }
        }
        .boxed()
    };
    match i % 10 {
        0..=2 => {
            let (tier, kind) = if i % 10 == 2 {
                (1, "fixed-5s")
            } else {
                (0, "fixed-1s")
            };
            let topic = env.tier(tier).to_string();
            let delay = env.config.tiers[tier].delay_ms as i64;
            async move {
                let ts = now_ms();
                let h = [hdr(TARGET, target.as_bytes())];
                retried("producing", || {
                    try_produce(
                        raw,
                        &topic,
                        None,
                        Some(value.as_bytes()),
                        Some(value.as_bytes()),
                        &h,
                        Some(ts),
                    )
                })
                .await;
                Outcome {
                    kind,
                    value,
                    due: ts + delay,
                    cancel_acked: None,
                }
            }
            .boxed()
        }
        3..=5 => after("cascaded", 1_200 + rng.below(6_800), false, false),
        6 | 7 => after("sub-second", 100 + rng.below(800), false, false),
        8 => after("with id", 1_500 + rng.below(4_500), true, false),
        _ => after("with id, cancelled", 1_500 + rng.below(4_500), true, true),
    }
}

/// Sends `n` records of the mix over `over`, a chunk every 250 ms.
pub async fn produce_mixed_over(env: &Env, n: usize, over: Duration, rng_seed: u64) -> Mixed {
    let dp = DelayProducer::new(&kafka(), env.config.clone()).unwrap();
    let raw = producer();
    let mut rng = Rng(rng_seed);
    let chunks = (over.as_millis() / 250).max(1) as usize;
    let mut out = Mixed::default();
    let start = Instant::now();
    let mut i = 0;
    for c in 0..chunks {
        let size = n / chunks + usize::from(c < n % chunks);
        let sends: Vec<_> = (i..i + size)
            .map(|j| mixed_record(env, &dp, &raw, "mixed", j, &mut rng))
            .collect();
        i += size;
        for o in futures::future::join_all(sends).await {
            *out.kinds.entry(o.kind).or_default() += 1;
            match o.cancel_acked {
                None => {
                    out.due.insert(o.value, o.due);
                }
                Some(acked) if acked < o.due => {
                    out.cancelled.insert(o.value, o.due);
                }
                Some(_) => {
                    out.either.insert(o.value);
                }
            }
        }
        let next = start + over * (c as u32 + 1) / chunks as u32;
        tokio::time::sleep_until(next.into()).await;
    }
    out
}

/// Sends `n` records with delays of 300 ms to 2.5 s over `over`, in chunks of
/// 10; value -> due time.
pub async fn steady_load(env: &Env, n: usize, over: Duration, tag: &str) -> HashMap<String, i64> {
    let chunks = (n / 10).max(1);
    let mut due = HashMap::new();
    let start = Instant::now();
    for c in 0..chunks {
        due.extend(produce_spread(env, 10, &format!("{tag}{c}"), 300, 2_200).await);
        tokio::time::sleep_until((start + over * (c as u32 + 1) / chunks as u32).into()).await;
    }
    due
}
