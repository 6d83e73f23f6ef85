//! The cancel view's end-offset sampler: a thread of its own that notes the
//! time T and then asks for every cancel-topic partition's high watermark,
//! handing the pair to [`Freshness`] (shared with the reader thread, which
//! moves the read positions). It samples when a record waits for the view
//! ([`Cancellations::want_fresh`]: at the record's due time, or at once if
//! that has passed), and every [`SAMPLE_EVERY`] otherwise, one sample at a
//! time, at least [`MIN_GAP`] apart ([`SAMPLE_EVERY`] after a failed query).
//! Every [`LIST_EVERY`] it asks how many partitions the topic has; a sample
//! is not taken while partitions the reader has not started reading exist. Guarantees: a sample's time is noted
//! before its query is sent, so every cancellation acknowledged before it lies
//! below the ends it gets; a wall clock stepped back rewinds freshness to the
//! new time instead of vouching for the future; errors are logged and retried,
//! never a panic.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::fresh::Freshness;
use super::query::{end_offsets_of, partition_count, Reading, Throttle};
use super::Cancellations;
use crate::error::{Error, Result};
use crate::kafka::now_ms;
use crate::metrics::Metrics;

/// How often the end offsets are sampled when no record is waiting.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// The least time between two samples (at most 500 end-offset requests a
/// second while records with an id keep coming due).
pub(super) const MIN_GAP: Duration = Duration::from_millis(2);
/// How often the topic's partition count is asked for.
const LIST_EVERY: Duration = Duration::from_secs(1);

/// What the reader and the sampler share.
pub(super) struct Progress {
    pub(super) fresh: Freshness,
    /// Partitions found reset (their end below what was read, twice): the
    /// reader reads them again from their start.
    pub(super) resets: Vec<usize>,
    /// How many partitions the topic has, as last listed.
    pub(super) listed: usize,
}

impl Progress {
    pub(super) fn new(fresh: Freshness) -> Self {
        Progress {
            listed: fresh.partitions(),
            fresh,
            resets: Vec::new(),
        }
    }

    /// Whether a sample may start: none is being caught up with, and every
    /// partition listed is being read.
    fn may_sample(&self) -> bool {
        self.fresh.wants_sample() && self.listed <= self.fresh.partitions()
    }
}

pub(super) struct Sampler {
    pub(super) client: Reading,
    pub(super) topic: String,
    pub(super) view: Arc<Cancellations>,
    pub(super) progress: Arc<Mutex<Progress>>,
    pub(super) metrics: Arc<Metrics>,
}

impl Sampler {
    pub(super) fn run(self, stop: CancellationToken) {
        let mut errors = Throttle::default();
        let mut last_sample: Option<Instant> = None;
        let mut last_listing = Instant::now();
        let mut last_t = i64::MIN;
        // After a failed query the next waits a whole tick, not the least
        // gap: a cluster failing over answers at once, and records waiting
        // for the view would otherwise ask again every 2 ms.
        let mut gap = MIN_GAP;
        while !stop.is_cancelled() {
            if last_listing.elapsed() >= LIST_EVERY {
                last_listing = Instant::now();
                self.list(&mut errors);
            }
            let tick_in =
                last_sample.map_or(Duration::ZERO, |t| SAMPLE_EVERY.saturating_sub(t.elapsed()));
            let gap_left = last_sample.map_or(Duration::ZERO, |t| gap.saturating_sub(t.elapsed()));
            let go = self.view.await_sample(tick_in, gap_left, || {
                !self
                    .progress
                    .lock()
                    .expect("cancel progress lock")
                    .may_sample()
            });
            if go {
                last_sample = Some(Instant::now());
                let t = now_ms();
                if t < last_t {
                    self.clock_went_back(last_t, t);
                }
                last_t = t;
                gap = if self.sample(t, &mut errors) {
                    MIN_GAP
                } else {
                    SAMPLE_EVERY
                };
            }
        }
        tracing::debug!(topic = %self.topic, "cancel-topic sampler stopped");
    }

    /// Asks for every read partition's end offset, after `t_ms`; false if
    /// the query failed.
    fn sample(&self, t_ms: i64, errors: &mut Throttle) -> bool {
        // The read positions before the query: the reader goes on meanwhile,
        // and may pass the ends the broker answers with.
        let before = self
            .progress
            .lock()
            .expect("cancel progress lock")
            .fresh
            .positions();
        match self.end_offsets(before.len()) {
            Ok(ends) => {
                let advanced = {
                    let mut p = self.progress.lock().expect("cancel progress lock");
                    let reset = p.fresh.sampled_since(t_ms, ends, &before);
                    p.resets.extend(reset);
                    p.fresh.check()
                };
                // The reader's positions may already cover the sample.
                if let Some(t) = advanced {
                    self.view.set_fresh_until(t);
                }
                true
            }
            Err(e) => {
                self.error(&e, errors);
                // A leader moved (a broker failing over): this client fetches
                // nothing, so nothing else refreshes its metadata; asking for
                // the topic's metadata does, and the next sample finds the
                // new leaders.
                self.list(errors);
                false
            }
        }
    }

    fn end_offsets(&self, known: usize) -> Result<Vec<i64>> {
        let mut latest = TopicPartitionList::new();
        for p in 0..known as i32 {
            latest
                .add_partition_offset(&self.topic, p, Offset::End)
                .map_err(|e| Error::kafka("building the end-offset query", e))?;
        }
        end_offsets_of(&self.client, &self.topic, latest)
    }

    /// Asks how many partitions the topic has; more than are read are
    /// started by the reader, and no sample is taken until then.
    fn list(&self, errors: &mut Throttle) {
        match partition_count(&self.client, &self.topic) {
            Ok(count) => {
                let mut p = self.progress.lock().expect("cancel progress lock");
                if count > p.listed {
                    tracing::error!(topic = %self.topic, from = p.listed, to = count, "partitions were added to the cancel topic while the router runs: the new ones are read from their start before records with an id are delivered again; a cancellation written to a new partition before this router saw it may have been missed (keep the cancel topic's partition count fixed, see the README)");
                    p.listed = count;
                }
            }
            Err(e) => self.error(&e, errors),
        }
    }

    /// The wall clock went back from `from` to `to`: freshness vouched up to
    /// `from`, which is now the future; it goes back to `to`.
    fn clock_went_back(&self, from: i64, to: i64) {
        tracing::warn!(
            from,
            to,
            "the wall clock went back: the cancel view's freshness goes back with it, so records with an id due meanwhile wait for a new sample"
        );
        self.progress
            .lock()
            .expect("cancel progress lock")
            .fresh
            .rewind(to);
        self.view.rewind_fresh_until(to);
    }

    fn error(&self, e: &Error, errors: &mut Throttle) {
        self.metrics
            .consumer_errors
            .with_label_values(&["cancel-topic"])
            .inc();
        if let Some(more) = errors.allow() {
            tracing::warn!(topic = %self.topic, error = %e, suppressed = more, "cannot read the cancel topic's end offsets or partitions; the view is not getting fresher");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_with_more_partitions_stops_samples_until_they_are_read() {
        // The sampler lists 2 partitions while the reader reads 1: a partition
        // was added. No sample is taken (one over partition 0 alone would
        // vouch for cancellations written to partition 1) until the reader
        // reads the new partition from its start.
        let mut p = Progress::new(Freshness::new(vec![0]));
        assert!(p.may_sample());
        p.listed = 2;
        assert!(!p.may_sample(), "a partition not read yet");
        p.fresh.add_partition(0);
        assert!(p.may_sample());
        let _ = p.fresh.sampled(100, vec![0, 3]);
        assert!(!p.may_sample(), "one sample at a time");
        assert_eq!(p.fresh.check(), None, "partition 1 is not read to its end");
        p.fresh.read(1, 3);
        assert_eq!(p.fresh.check(), Some(100));
        // A stale listing (the old count) changes nothing: `list` only
        // raises the count, and a sample asks for every partition read.
        assert!(p.may_sample());
    }
}
