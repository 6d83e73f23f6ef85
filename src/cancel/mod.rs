//! Cancellation: every router instance reads the whole cancel topic into a
//! shared view ([`Cancellations`]) that the partition tasks ask before they
//! forward or deliver a record with a `delay-id`. Guarantees: every
//! cancellation the broker acknowledged before [`Cancellations::fresh_until`]
//! is in the view (see [`fresh`] for why); memory follows the outstanding
//! cancellations (a keyed 128-bit hash and an expiry each, see [`store`]),
//! capped by [`CancelLimits::max_cancellations`]; a malformed cancellation is
//! refused, counted and logged, never a crash (see [`decode`]).

pub mod decode;
pub mod fresh;
mod reader;
pub mod store;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use decode::{
    check_id, delay_id, Cancellation, Refusal, Refused, Rules, ID_HEADER, MAX_ID_LEN, UNTIL_HEADER,
};
pub use store::{IdHasher, Insert, Store};

use crate::config::TopicsConfig;
use crate::error::Result;
use crate::kafka::KafkaSettings;
use crate::metrics::Metrics;

/// Limits of the cancel view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelLimits {
    /// The most outstanding cancellations held (`--max-cancellations`). At the
    /// cap the reader stops reading the cancel topic until expiries make room:
    /// [`Cancellations::fresh_until`] stops, so records with an id wait rather
    /// than risk being delivered past a cancellation the view could not hold.
    pub max_cancellations: usize,
}

/// Default `--max-cancellations`: 10M, about 0.3-0.6 GB of table.
pub const DEFAULT_MAX_CANCELLATIONS: usize = 10_000_000;

impl Default for CancelLimits {
    fn default() -> Self {
        CancelLimits {
            max_cancellations: DEFAULT_MAX_CANCELLATIONS,
        }
    }
}

/// The shared view of the cancel topic, as `Arc<Cancellations>`.
pub struct Cancellations {
    hasher: IdHasher,
    store: RwLock<Store>,
    fresh_until: Arc<AtomicI64>,
    advanced: Notify,
}

impl Cancellations {
    /// An empty view, fresh until nothing, holding at most `limits.max_cancellations`;
    /// [`start`] fills it from the cancel topic. Tests and tools can fill it by hand
    /// with [`Cancellations::cancel`] and [`Cancellations::set_fresh_until`].
    pub fn new(limits: CancelLimits) -> Self {
        Cancellations {
            hasher: IdHasher::new(),
            store: RwLock::new(Store::new(limits.max_cancellations)),
            fresh_until: Arc::new(AtomicI64::new(i64::MIN)),
            advanced: Notify::new(),
        }
    }

    /// A view for a topics file without a cancel topic: nothing is ever
    /// cancelled and it is always fresh, so records with an id pass as today.
    pub fn disabled() -> Self {
        let c = Self::new(CancelLimits {
            max_cancellations: 0,
        });
        c.fresh_until.store(i64::MAX, Ordering::Release);
        c
    }

    /// Whether `id` is cancelled (and not yet expired at now).
    pub fn is_cancelled(&self, id: &[u8], now_ms: i64) -> bool {
        let h = self.hasher.hash(id);
        self.store
            .read()
            .expect("cancel store lock")
            .is_cancelled(h, now_ms)
    }

    /// Every cancellation the broker acknowledged before this time (epoch ms) is in the view.
    pub fn fresh_until(&self) -> i64 {
        self.fresh_until.load(Ordering::Acquire)
    }

    /// Notified (`notify_waiters`) whenever fresh_until advances: create the
    /// `notified()` future, then read `fresh_until`, then await it.
    pub fn advanced(&self) -> &Notify {
        &self.advanced
    }

    /// Outstanding cancellations held.
    pub fn len(&self) -> usize {
        self.store.read().expect("cancel store lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records a cancellation of `id` until `until_ms` (the reader's path, also for tests).
    pub fn cancel(&self, id: &[u8], until_ms: i64, now_ms: i64) -> Insert {
        let h = self.hasher.hash(id);
        self.store
            .write()
            .expect("cancel store lock")
            .insert(h, until_ms, now_ms)
    }

    /// Forgets a cancellation of `id`; true if one was held.
    pub fn withdraw(&self, id: &[u8]) -> bool {
        let h = self.hasher.hash(id);
        self.store.write().expect("cancel store lock").withdraw(h)
    }

    /// Moves fresh_until forward to `t_ms` (never back) and wakes the waiters.
    pub fn set_fresh_until(&self, t_ms: i64) {
        if self.fresh_until.fetch_max(t_ms, Ordering::AcqRel) < t_ms {
            self.advanced.notify_waiters();
        }
    }

    /// Drops expired cancellations; returns how many are left.
    fn sweep(&self, now_ms: i64) -> usize {
        let mut store = self.store.write().expect("cancel store lock");
        store.sweep(now_ms);
        store.len()
    }

    /// The most outstanding cancellations held.
    pub fn cap(&self) -> usize {
        self.store.read().expect("cancel store lock").cap()
    }

    /// Bytes of the table that holds the cancellations.
    pub fn table_bytes(&self) -> usize {
        self.store.read().expect("cancel store lock").table_bytes()
    }
}

/// Starts reading the whole cancel topic (all partitions, assign() outside any
/// group, from the beginning) on a thread of its own; returns the shared view;
/// stops on the token. Blocks for a metadata request (at most the admin
/// timeout) and fails if the cancel topic is missing. Without a `cancel:`
/// section in the topics file, returns [`Cancellations::disabled`].
pub fn start(
    config: &TopicsConfig,
    kafka: &KafkaSettings,
    metrics: Arc<Metrics>,
    limits: CancelLimits,
    stop: CancellationToken,
) -> Result<Arc<Cancellations>> {
    let Some(spec) = &config.cancel else {
        return Ok(Arc::new(Cancellations::disabled()));
    };
    let view = Arc::new(Cancellations::new(limits));
    metrics
        .cancellations_limit
        .set(limits.max_cancellations.min(i64::MAX as usize) as i64);
    metrics.watch_cancel_view(crate::kafka::now_ms(), view.fresh_until.clone());
    let rules = Rules {
        max_delay_ms: config.max_delay_ms.min(i64::MAX as u64) as i64,
        retention_ms: spec.retention_ms.min(i64::MAX as u64) as i64,
    };
    reader::spawn(&spec.topic, kafka, rules, view.clone(), metrics, stop)?;
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_answers_by_id_and_expiry() {
        let c = Cancellations::new(CancelLimits {
            max_cancellations: 2,
        });
        assert_eq!(c.cancel(b"a", 100, 0), Insert::Added);
        assert_eq!(c.cancel(b"b", 100, 0), Insert::Added);
        assert_eq!(c.cancel(b"c", 100, 0), Insert::Full);
        assert!(c.is_cancelled(b"a", 50) && !c.is_cancelled(b"c", 50));
        assert!(!c.is_cancelled(b"a", 100));
        assert!(c.withdraw(b"b"));
        assert!(!c.is_cancelled(b"b", 0));
        assert_eq!(c.sweep(100), 0);
    }

    #[tokio::test]
    async fn fresh_until_only_advances_and_wakes_waiters() {
        let c = Arc::new(Cancellations::new(CancelLimits::default()));
        assert_eq!(c.fresh_until(), i64::MIN);
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move {
                loop {
                    let notified = c.advanced().notified();
                    if c.fresh_until() >= 500 {
                        return c.fresh_until();
                    }
                    notified.await;
                }
            })
        };
        tokio::task::yield_now().await;
        c.set_fresh_until(100);
        c.set_fresh_until(600);
        c.set_fresh_until(300);
        assert_eq!(c.fresh_until(), 600);
        let seen = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(seen, 600);
    }

    #[test]
    fn a_disabled_view_is_always_fresh_and_empty() {
        let c = Cancellations::disabled();
        assert_eq!(c.fresh_until(), i64::MAX);
        assert!(!c.is_cancelled(b"x", 0));
        assert_eq!(c.cancel(b"x", 100, 0), Insert::Full);
    }
}
