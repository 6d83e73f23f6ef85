//! The load: 500 records a second with delays over every tier, some with a
//! `delay-id` and half of those cancelled, each one's fate kept in the book;
//! and the run's size (CI or full).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use kafka_delay_router::{DelayProducer, When};

pub fn full() -> bool {
    std::env::var("FAULTS_FULL").is_ok_and(|v| v == "1")
}

/// The run's size.
pub struct Size {
    pub tiers: Vec<u64>,
    pub partitions: i32,
    /// Longest delay of a record (ms).
    pub max_delay_ms: u64,
    /// Load before the first kill.
    pub warmup: Duration,
    /// How long a killed node stays down.
    pub down: Duration,
    /// Load after a failover is healed, before the next kill.
    pub settle: Duration,
}

impl Size {
    pub fn get() -> Size {
        if full() {
            Size {
                tiers: vec![200, 1_000, 5_000, 20_000],
                partitions: 6,
                max_delay_ms: 40_000,
                warmup: Duration::from_secs(30),
                down: Duration::from_secs(30),
                settle: Duration::from_secs(20),
            }
        } else {
            Size {
                tiers: vec![200, 1_000, 5_000],
                partitions: 3,
                max_delay_ms: 10_000,
                warmup: Duration::from_secs(15),
                down: Duration::from_secs(10),
                settle: Duration::from_secs(3),
            }
        }
    }
}

pub const RATE_PER_S: u64 = 500;

/// One record of the load.
#[derive(Default, Clone)]
pub struct Rec {
    /// Its due time, once the broker acknowledged it in its tier.
    pub due: Option<i64>,
    pub has_id: bool,
    /// When its cancellation was acknowledged, if one was sent and acknowledged.
    pub cancel_acked: Option<i64>,
    pub cancel_failed: bool,
    pub send_failed: bool,
}

#[derive(Default)]
pub struct Book {
    pub recs: HashMap<String, Rec>,
    pub errors: Vec<String>,
}

/// Sends RATE_PER_S records a second until `stop`; every record is its own
/// task, so a send held up by a leader election does not slow the rest.
pub async fn run_load(
    dp: DelayProducer,
    target: String,
    max_delay_ms: u64,
    stop: Arc<AtomicBool>,
    book: Arc<Mutex<Book>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut rng = Rng(0xfa11_0fe5);
    let mut tasks = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let began = Instant::now();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        // Paced by the clock, not by the ticks: a late tick sends what is owed.
        let owed = began.elapsed().as_millis() as u64 * RATE_PER_S / 1000;
        while i < owed {
            let value = format!("fo-{i}");
            i += 1;
            let delay_ms = match rng.below(100) {
                0..=29 => 100 + rng.below(900),
                30..=69 => 1_000 + rng.below(4_000),
                _ => 5_000 + rng.below(max_delay_ms - 5_000),
            };
            let has_id = rng.below(100) < 40;
            let cancel_after = (has_id && rng.below(2) == 0)
                .then(|| Duration::from_millis(delay_ms * (10 + rng.below(80)) / 100));
            book.lock().unwrap().recs.insert(
                value.clone(),
                Rec {
                    has_id,
                    ..Rec::default()
                },
            );
            let headers: Vec<(String, Vec<u8>)> = if has_id {
                vec![(
                    kafka_delay_router::cancel::ID_HEADER.to_string(),
                    value.as_bytes().to_vec(),
                )]
            } else {
                Vec::new()
            };
            {
                let (dp, target, book, value) =
                    (dp.clone(), target.clone(), book.clone(), value.clone());
                tasks.push(tokio::spawn(async move {
                    let sent = dp
                        .send(
                            &target,
                            Some(value.as_bytes()),
                            Some(value.as_bytes()),
                            &headers,
                            When::After(Duration::from_millis(delay_ms)),
                        )
                        .await;
                    let mut b = book.lock().unwrap();
                    match sent {
                        Ok(s) => b.recs.get_mut(&value).unwrap().due = Some(s.deliver_at_ms),
                        Err(e) => {
                            b.recs.get_mut(&value).unwrap().send_failed = true;
                            b.errors.push(format!("send {value}: {e}"));
                        }
                    }
                }));
            }
            if let Some(after) = cancel_after {
                let (dp, book) = (dp.clone(), book.clone());
                tasks.push(tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let cancelled = dp.cancel(value.as_bytes(), None).await;
                    let mut b = book.lock().unwrap();
                    match cancelled {
                        Ok(c) => b.recs.get_mut(&value).unwrap().cancel_acked = Some(c.acked_ms),
                        Err(e) => {
                            b.recs.get_mut(&value).unwrap().cancel_failed = true;
                            b.errors.push(format!("cancel {value}: {e}"));
                        }
                    }
                }));
            }
        }
    }
    tasks
}
