//! Cancellation: every router instance reads the whole cancel topic into a
//! shared view ([`Cancellations`]) that the partition tasks ask before they
//! forward or deliver a record with a `delay-id`. Guarantees: every
//! cancellation the broker acknowledged before [`Cancellations::fresh_until`]
//! is in the view (see [`fresh`] for why); a record waiting for the view asks
//! for a sample at its due time ([`Cancellations::want_fresh`]), so it waits
//! one end-offset round trip rather than a sampling tick; memory follows the
//! outstanding cancellations (a keyed 128-bit hash and an expiry each, see
//! [`store`]), capped by [`CancelLimits::max_cancellations`], in shards so
//! that no lookup waits for more than a shard's sweep; a malformed
//! cancellation is refused, counted and logged, never a crash (see [`decode`]).

pub mod decode;
pub mod fresh;
mod query;
mod reader;
mod sampler;
pub mod store;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::watch;
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

/// The table is split in this many shards, each behind its own lock: a sweep
/// holds one shard at a time, so a lookup waits for at most 1/64 of it.
const SHARDS: usize = 64;
/// The most due times remembered for [`Cancellations::want_fresh`]; past it,
/// a waiting record is served by the regular sample instead.
const MAX_WANTS: usize = 65_536;
/// How soon the sampler looks again when a record waits but a sample is
/// still being caught up with.
const BUSY_RECHECK: Duration = Duration::from_millis(5);
/// How soon it looks again when only the regular tick waits for a sample
/// being caught up with.
const BUSY_TICK: Duration = Duration::from_millis(50);

/// The shared view of the cancel topic, as `Arc<Cancellations>`.
pub struct Cancellations {
    hasher: IdHasher,
    shards: Box<[RwLock<Store>]>,
    /// Outstanding cancellations across the shards.
    held: AtomicUsize,
    cap: usize,
    fresh_until: Arc<AtomicI64>,
    /// The latest `fresh_until`, for waiters: a receiver never misses an advance.
    advanced: watch::Sender<i64>,
    /// Due times that records wait for the view to be fresh up to.
    wants: Mutex<BTreeSet<i64>>,
    /// Signalled when an earlier due time is wanted, or the view advanced.
    wanted: Condvar,
}

impl Cancellations {
    /// An empty view, fresh until nothing, holding at most `limits.max_cancellations`;
    /// [`start`] fills it from the cancel topic. Tests and tools can fill it by hand
    /// with [`Cancellations::cancel`] and [`Cancellations::set_fresh_until`].
    pub fn new(limits: CancelLimits) -> Self {
        Self::fresh_from(limits, i64::MIN)
    }

    fn fresh_from(limits: CancelLimits, fresh_until: i64) -> Self {
        Cancellations {
            hasher: IdHasher::new(),
            shards: (0..SHARDS)
                .map(|_| RwLock::new(Store::new(usize::MAX)))
                .collect(),
            held: AtomicUsize::new(0),
            cap: limits.max_cancellations,
            fresh_until: Arc::new(AtomicI64::new(fresh_until)),
            advanced: watch::Sender::new(fresh_until),
            wants: Mutex::new(BTreeSet::new()),
            wanted: Condvar::new(),
        }
    }

    /// A view for a topics file without a cancel topic: nothing is ever
    /// cancelled and it is always fresh, so records with an id pass as today.
    pub fn disabled() -> Self {
        Self::fresh_from(
            CancelLimits {
                max_cancellations: 0,
            },
            i64::MAX,
        )
    }

    fn shard(&self, h: store::IdHash) -> &RwLock<Store> {
        &self.shards[h.spread() as usize % SHARDS]
    }

    /// Whether `id` is cancelled by a cancellation not expired at `at_ms`.
    pub fn is_cancelled(&self, id: &[u8], at_ms: i64) -> bool {
        let h = self.hasher.hash(id);
        self.shard(h)
            .read()
            .expect("cancel store lock")
            .is_cancelled(h, at_ms)
    }

    /// Every cancellation the broker acknowledged before this time (epoch ms) is in the view.
    pub fn fresh_until(&self) -> i64 {
        self.fresh_until.load(Ordering::Acquire)
    }

    /// A receiver of `fresh_until`'s advances: `changed()` returns once it
    /// moved since the receiver last looked (`borrow_and_update`), so an
    /// advance between reading [`Cancellations::fresh_until`] and waiting is
    /// never missed.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.advanced.subscribe()
    }

    /// A record waits for the view to be fresh up to `t_ms` (its due time):
    /// the sampler takes the next sample at `t_ms`, or at once if that has
    /// passed, instead of at its next regular tick.
    pub fn want_fresh(&self, t_ms: i64) {
        if t_ms <= self.fresh_until() {
            return;
        }
        let mut wants = self.wants.lock().expect("cancel wants lock");
        if wants.len() >= MAX_WANTS {
            return;
        }
        let earliest = wants.first().copied();
        if wants.insert(t_ms) && earliest.is_none_or(|e| t_ms < e) {
            self.wanted.notify_all();
        }
    }

    /// The earliest due time waited for that the view has not reached.
    #[cfg(test)]
    fn next_want(&self) -> Option<i64> {
        let mut wants = self.wants.lock().expect("cancel wants lock");
        Self::first_unmet(&mut wants, self.fresh_until())
    }

    fn first_unmet(wants: &mut BTreeSet<i64>, fresh: i64) -> Option<i64> {
        while wants.first().is_some_and(|w| *w <= fresh) {
            wants.pop_first();
        }
        wants.first().copied()
    }

    /// For the sampler: true at once when a sample is called for (a wanted
    /// due time has come, or the regular tick, `tick_in` from now, has), the
    /// least gap since the last one (`gap_left`) has passed and `busy()` (a
    /// sample being caught up with) is false; otherwise waits for at most
    /// the time until the next of those, or until an earlier due time is
    /// wanted or the view advanced (a sample caught up with), and returns
    /// false. The wants are looked at and waited on under one lock, so a want
    /// or an advance made meanwhile always wakes it.
    fn await_sample(&self, tick_in: Duration, gap_left: Duration, busy: impl Fn() -> bool) -> bool {
        let mut wants = self.wants.lock().expect("cancel wants lock");
        let now = crate::kafka::now_ms();
        let want = Self::first_unmet(&mut wants, self.fresh_until());
        let want_due = want.is_some_and(|w| w <= now);
        let called = want_due || tick_in.is_zero();
        let mut wait = tick_in;
        if let Some(w) = want.filter(|w| *w > now) {
            wait = wait.min(Duration::from_millis((w - now) as u64));
        }
        if called {
            if !gap_left.is_zero() {
                wait = wait.min(gap_left);
            } else if busy() {
                // An advance wakes it; a catch-up that ends without one does
                // not, so it looks again soon if a record waits.
                wait = if want_due { BUSY_RECHECK } else { BUSY_TICK };
            } else {
                return true;
            }
        }
        let _ = self
            .wanted
            .wait_timeout(wants, wait.max(Duration::from_millis(1)));
        false
    }

    /// Outstanding cancellations held.
    pub fn len(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Whether no cancellation is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records a cancellation of `id` until `until_ms` (the reader's path, also
    /// for tests). A new id past the cap is refused ([`Insert::Full`]).
    pub fn cancel(&self, id: &[u8], until_ms: i64, now_ms: i64) -> Insert {
        let h = self.hasher.hash(id);
        let mut shard = self.shard(h).write().expect("cancel store lock");
        let was_held = shard.holds(h);
        if !was_held && until_ms > now_ms {
            let room = self
                .held
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < self.cap).then_some(n + 1)
                });
            if room.is_err() {
                return Insert::Full;
            }
        }
        let done = shard.insert(h, until_ms, now_ms);
        if was_held && done == Insert::Expired {
            self.held.fetch_sub(1, Ordering::AcqRel);
        }
        done
    }

    /// Forgets a cancellation of `id`; true if one was held.
    pub fn withdraw(&self, id: &[u8]) -> bool {
        let h = self.hasher.hash(id);
        let gone = self
            .shard(h)
            .write()
            .expect("cancel store lock")
            .withdraw(h);
        if gone {
            self.held.fetch_sub(1, Ordering::AcqRel);
        }
        gone
    }

    /// Moves fresh_until forward to `t_ms` (never back) and wakes the waiters.
    pub fn set_fresh_until(&self, t_ms: i64) {
        if self.fresh_until.fetch_max(t_ms, Ordering::AcqRel) < t_ms {
            self.advanced.send_replace(t_ms);
            self.wake_sampler(t_ms);
        }
    }

    /// The wall clock went back: freshness is set back to `t_ms`, which is
    /// all a sample taken now can vouch for.
    fn rewind_fresh_until(&self, t_ms: i64) {
        if self.fresh_until.fetch_min(t_ms, Ordering::AcqRel) > t_ms {
            self.advanced.send_replace(t_ms);
        }
    }

    /// The view advanced to `t_ms`: due times up to it are met, and the
    /// sampler may take the next sample (under the wants lock, so a sampler
    /// about to wait cannot miss it).
    fn wake_sampler(&self, t_ms: i64) {
        let mut wants = self.wants.lock().expect("cancel wants lock");
        Self::first_unmet(&mut wants, t_ms);
        self.wanted.notify_all();
    }

    /// Drops cancellations expired at `now_ms`, one shard at a time; returns
    /// how many are left.
    fn sweep(&self, now_ms: i64) -> usize {
        for shard in self.shards.iter() {
            let dropped = shard.write().expect("cancel store lock").sweep(now_ms);
            self.held.fetch_sub(dropped, Ordering::AcqRel);
        }
        self.len()
    }

    /// The most outstanding cancellations held.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Bytes of the tables that hold the cancellations.
    pub fn table_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().expect("cancel store lock").table_bytes())
            .sum()
    }
}

/// Starts reading the whole cancel topic (all partitions, assign() outside any
/// group, from the beginning) on a thread of its own, and sampling its end
/// offsets on another; returns the shared view; stops on the token. Blocks for
/// a metadata request (at most the admin timeout) and fails if the cancel
/// topic is missing. Without a `cancel:` section in the topics file, returns
/// [`Cancellations::disabled`].
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
        // A held id may still change at the cap; an expired one frees its room.
        assert_eq!(c.cancel(b"a", 200, 0), Insert::Replaced);
        assert!(c.is_cancelled(b"a", 50) && !c.is_cancelled(b"c", 50));
        assert!(!c.is_cancelled(b"a", 200));
        assert!(c.withdraw(b"b"));
        assert!(!c.withdraw(b"b"));
        assert_eq!(c.len(), 1);
        assert_eq!(c.cancel(b"c", 100, 0), Insert::Added);
        assert_eq!(c.cancel(b"c", 5, 10), Insert::Expired);
        assert_eq!(c.len(), 1);
        assert!(!c.is_cancelled(b"b", 0));
        assert_eq!(c.sweep(100), 1);
        assert_eq!(c.sweep(200), 0);
        assert!(c.is_empty());
    }

    #[test]
    fn the_cap_holds_across_shards_and_sweeps_make_room() {
        let c = Cancellations::new(CancelLimits {
            max_cancellations: 1_000,
        });
        let added = (0..5_000u32)
            .filter(|i| c.cancel(&i.to_le_bytes(), 100 + i64::from(*i % 2), 0) == Insert::Added)
            .count();
        assert_eq!(added, 1_000);
        assert_eq!(c.len(), 1_000);
        assert_eq!(c.sweep(100), 500, "the even ones expired at 100");
        assert_eq!(c.cancel(b"new", 500, 100), Insert::Added);
        assert_eq!(c.len(), 501);
    }

    #[tokio::test]
    async fn fresh_until_only_advances_and_no_waiter_misses_an_advance() {
        let c = Arc::new(Cancellations::new(CancelLimits::default()));
        assert_eq!(c.fresh_until(), i64::MIN);
        // The receiver is taken, freshness read, and only then does the view
        // advance: waiting afterwards still sees it (a Notify's
        // notify_waiters would have been lost between the read and the wait).
        let mut rx = c.subscribe();
        assert!(c.fresh_until() < 500);
        c.set_fresh_until(100);
        c.set_fresh_until(600);
        c.set_fresh_until(300);
        assert_eq!(c.fresh_until(), 600);
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.changed())
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(*rx.borrow_and_update(), 600);
    }

    #[test]
    fn wants_are_kept_until_the_view_reaches_them() {
        let c = Cancellations::new(CancelLimits::default());
        c.set_fresh_until(100);
        c.want_fresh(90);
        assert_eq!(c.next_want(), None, "already fresh past it");
        c.want_fresh(300);
        c.want_fresh(200);
        c.want_fresh(200);
        assert_eq!(c.next_want(), Some(200));
        c.set_fresh_until(250);
        assert_eq!(c.next_want(), Some(300));
        c.set_fresh_until(300);
        assert_eq!(c.next_want(), None);
    }

    #[test]
    fn the_metrics_know_every_refusal_reason() {
        let codes: Vec<&str> = Refusal::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes, crate::metrics::CANCEL_REFUSALS);
    }

    #[test]
    fn a_disabled_view_is_always_fresh_and_empty() {
        let c = Cancellations::disabled();
        assert_eq!(c.fresh_until(), i64::MAX);
        assert!(!c.is_cancelled(b"x", 0));
        assert_eq!(c.cancel(b"x", 100, 0), Insert::Full);
        c.want_fresh(i64::MAX - 1);
        assert_eq!(c.next_want(), None);
    }
}
