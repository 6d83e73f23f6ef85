//! The look-ahead window of one tier partition, with no I/O: the records read
//! and waiting for their tier wait to end, which one is ready next, whether to
//! read further, and when the partition may pause or must resume.
//!
//! Guarantees (every time is Unix epoch ms, `now` is an argument):
//! - while [`Window::fetch`] answers [`Fetch::Wait`], no record not yet read
//!   can be ready before the first waiting one, so a record's ready time, not
//!   its position in the partition, decides when it goes;
//! - a paused partition resumes `resume_lead_ms` before anything, read or
//!   not, can be ready, and when the window empties;
//! - memory: the window holds the records appended within the tier's
//!   look-ahead ([`crate::delay::TierSet::lookahead_ms`]) after the first
//!   waiting one, and reads them only shortly before they can be needed (a
//!   burst into the 1h tier stays in Kafka until its hour is nearly over).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A value ordered by (time, offset): the window orders records by ready time,
/// the held records by due time.
pub struct Timed<T> {
    /// The time it is ordered by (epoch ms).
    pub at: i64,
    /// Its offset: orders values with the same time.
    pub offset: i64,
    /// The value.
    pub item: T,
}

impl<T> Timed<T> {
    fn key(&self) -> (i64, i64) {
        (self.at, self.offset)
    }
}
impl<T> PartialEq for Timed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl<T> Eq for Timed<T> {}
impl<T> PartialOrd for Timed<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Timed<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// A min-heap of [`Timed`] values: the earliest first.
pub struct TimedHeap<T>(BinaryHeap<Reverse<Timed<T>>>);

impl<T> Default for TimedHeap<T> {
    fn default() -> Self {
        TimedHeap(BinaryHeap::new())
    }
}

impl<T> TimedHeap<T> {
    /// Adds `item` at time `at` (ties ordered by `offset`).
    pub fn push(&mut self, at: i64, offset: i64, item: T) {
        self.0.push(Reverse(Timed { at, offset, item }));
    }

    /// The earliest time in the heap.
    pub fn first_at(&self) -> Option<i64> {
        self.0.peek().map(|Reverse(t)| t.at)
    }

    /// Takes the earliest value if its time is `<= now`.
    pub fn pop_due(&mut self, now: i64) -> Option<T> {
        if self.first_at()? <= now {
            self.0.pop().map(|Reverse(t)| t.item)
        } else {
            None
        }
    }

    /// How many values it holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Forgets every value.
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// When fetching pauses and resumes (from [`crate::partition::Limits`]).
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// A partition may pause only when its first waiting record is further away than this.
    pub pause_min_wait_ms: i64,
    /// A paused partition resumes this long before anything can be ready (a fetch cycle).
    pub resume_lead_ms: i64,
}

/// What the partition's fetching should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// Read the next record if one is there.
    Read,
    /// Stop fetching (and drop what was prefetched): nothing unread is needed for a while.
    Pause,
    /// Fetch again: the first record is nearly ready, or the window is empty.
    Resume,
    /// Leave fetching as it is and read nothing now.
    Wait,
}

/// The records of one tier partition that were read and wait for their tier wait to end.
pub struct Window<T> {
    waiting: TimedHeap<T>,
    /// The tier's delay.
    delay_ms: i64,
    /// How much earlier than its tier wait's end a record appended later may be ready.
    lookahead_ms: i64,
    /// Timestamp of the last record put into the window.
    last_timestamp: Option<i64>,
}

impl<T> Window<T> {
    /// A window for a tier of `delay_ms` whose records may be ready up to
    /// `lookahead_ms` before the end of their tier wait.
    pub fn new(delay_ms: u64, lookahead_ms: u64) -> Self {
        Window {
            waiting: TimedHeap::default(),
            delay_ms: delay_ms as i64,
            lookahead_ms: lookahead_ms as i64,
            last_timestamp: None,
        }
    }

    /// Adds a record read from the partition: `timestamp` is its timestamp in
    /// the tier (its append time), `ready_at` when its tier wait ends.
    pub fn push(&mut self, timestamp: i64, ready_at: i64, offset: i64, item: T) {
        self.last_timestamp = Some(timestamp);
        self.waiting.push(ready_at, offset, item);
    }

    /// When the first waiting record is ready.
    pub fn first_at(&self) -> Option<i64> {
        self.waiting.first_at()
    }

    /// Takes the first waiting record if it is ready at `now`.
    pub fn pop_ready(&mut self, now: i64) -> Option<T> {
        self.waiting.pop_due(now)
    }

    /// How many records wait.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Forgets every record (a rewind reads them again).
    pub fn clear(&mut self) {
        self.waiting.clear();
        self.last_timestamp = None;
    }

    /// The earliest time a record not yet read can be ready: it was appended
    /// after the last one read and waits at least its tier's delay less the
    /// look-ahead. `None` while nothing was read.
    fn unread_floor(&self) -> Option<i64> {
        self.last_timestamp
            .map(|t| t.saturating_add(self.delay_ms - self.lookahead_ms))
    }

    /// The first time anything is needed: the first waiting record is ready,
    /// or a record not yet read could be. `None` while the window is empty.
    fn needed_at(&self) -> Option<i64> {
        let first = self.first_at()?;
        Some(self.unread_floor().map_or(first, |floor| floor.min(first)))
    }

    /// Whether a record not yet read could be ready before the first waiting one.
    pub fn reads_further(&self) -> bool {
        match (self.first_at(), self.unread_floor()) {
            (Some(first), Some(floor)) => floor <= first,
            _ => true,
        }
    }

    /// What fetching should do at `now`: pause while nothing, read or not,
    /// can be needed for longer than `pause_min_wait_ms`; resume
    /// `resume_lead_ms` before something can be; read while a record not yet
    /// read could come before the first waiting one.
    pub fn fetch(&self, now: i64, paused: bool, pacing: &Pacing) -> Fetch {
        let Some(needed) = self.needed_at() else {
            return if paused { Fetch::Resume } else { Fetch::Read };
        };
        if paused {
            return if needed - pacing.resume_lead_ms <= now {
                Fetch::Resume
            } else {
                Fetch::Wait
            };
        }
        if needed - now > pacing.pause_min_wait_ms {
            Fetch::Pause
        } else if self.reads_further() {
            Fetch::Read
        } else {
            Fetch::Wait
        }
    }

    /// When [`Window::fetch`] may answer differently with nothing read or
    /// acknowledged in between: a paused partition's resume, or the first
    /// record ready.
    pub fn next_change(&self, paused: bool, pacing: &Pacing) -> Option<i64> {
        if paused {
            Some(self.needed_at()? - pacing.resume_lead_ms)
        } else {
            self.first_at()
        }
    }
}

#[cfg(test)]
mod tests;
