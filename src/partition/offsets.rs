//! The offset tracker of one partition: which records were read and not yet
//! finished, and which offset may be committed. Pure: no I/O.
//!
//! Guarantees: [`Offsets::committable`] never passes a record read and not
//! finished, never moves backwards, and never passes records the consumer
//! skipped after an error (a corrupt or undecompressible batch, an offset
//! reset) unless the user allowed it (`--skip-unreadable`): those records were
//! never routed, and committing past them would lose them without a trace.

use std::collections::BTreeSet;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Offsets a consumer error made the consumer skip: `[from, to)`.
/// `from` is `None` when the error came before the first record read, so
/// where the skipped range starts is not known (at the last commit or later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The first skipped offset (the offset after the last record read), if known.
    pub from: Option<i64>,
    /// The offset of the first record read after the error (exclusive end).
    pub to: i64,
}

impl Gap {
    /// How many offsets it spans, when known (control records count too).
    pub fn span(&self) -> Option<i64> {
        self.from.map(|from| self.to - from)
    }
}

/// What a consumer error means for the records behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeError {
    /// The consumer goes on where it was (a transport or broker error): nothing skipped.
    Transient,
    /// The consumer may move past records it could not read (a corrupt or
    /// undecompressible batch, an offset reset): the next record read shows
    /// whether it did.
    MaySkip,
}

impl ConsumeError {
    /// What librdkafka's consumer error means for the records behind it: a
    /// corrupt message (failed CRC), a batch it cannot decompress, or an
    /// offset reset make it go on past records it did not return.
    pub fn of(error: &KafkaError) -> Self {
        use RDKafkaErrorCode::*;
        match error.rdkafka_error_code() {
            Some(BadMessage | BadCompression | AutoOffsetReset | OffsetOutOfRange) => {
                ConsumeError::MaySkip
            }
            _ => ConsumeError::Transient,
        }
    }
}

/// The offset tracker (see the module documentation).
#[derive(Debug, Default)]
pub struct Offsets {
    /// Offsets read and not finished.
    pending: BTreeSet<i64>,
    /// The offset after the last record read.
    next: Option<i64>,
    /// The last offset handed to the offset store.
    stored: Option<i64>,
    /// A skipping error was seen; the next read tells whether records were skipped.
    suspect: bool,
    /// Records skipped and not committed past (the first such gap holds the commit).
    held: Option<Gap>,
    skip_unreadable: bool,
}

impl Offsets {
    /// A tracker; with `skip_unreadable` a gap is reported but does not hold the commit.
    pub fn new(skip_unreadable: bool) -> Self {
        Offsets {
            skip_unreadable,
            ..Offsets::default()
        }
    }

    /// A record was read. Returns the gap before it when a skipping consumer
    /// error came just before and the record is not the one expected next.
    pub fn read(&mut self, offset: i64) -> Option<Gap> {
        let gap = self.gap_before(offset);
        self.pending.insert(offset);
        self.next = Some(offset + 1);
        gap
    }

    /// A record was read that needs nothing more (exactly-once: finished in a
    /// committed transaction before a rewind or restart).
    pub fn read_finished(&mut self, offset: i64) -> Option<Gap> {
        let gap = self.gap_before(offset);
        self.next = Some(offset + 1);
        gap
    }

    fn gap_before(&mut self, offset: i64) -> Option<Gap> {
        if !std::mem::take(&mut self.suspect) {
            return None;
        }
        let gap = match self.next {
            Some(next) if offset <= next => return None,
            next => Gap {
                from: next,
                to: offset,
            },
        };
        if !self.skip_unreadable && self.held.is_none() {
            self.held = Some(gap);
        }
        Some(gap)
    }

    /// The consumer reported an error for this partition.
    pub fn consume_error(&mut self, error: ConsumeError) {
        if error == ConsumeError::MaySkip {
            self.suspect = true;
        }
    }

    /// The broker acknowledged what the record at `offset` became.
    pub fn finish(&mut self, offset: i64) {
        self.pending.remove(&offset);
    }

    /// The first offset read and not finished, else the one after the last
    /// read: where a successor must start reading. `None` before the first read.
    pub fn first_unfinished(&self) -> Option<i64> {
        self.pending.first().copied().or(self.next)
    }

    /// The offset to hand the offset store now, if it moves the stored one on:
    /// the first unfinished offset, held back at a gap of skipped records.
    pub fn committable(&self) -> Option<i64> {
        let offset = self.commit_point()?;
        (self.stored.is_none_or(|s| offset > s)).then_some(offset)
    }

    /// The first unfinished offset, held back at a gap of skipped records
    /// (`None`: nothing may be committed).
    pub fn commit_point(&self) -> Option<i64> {
        let first = self.first_unfinished()?;
        match self.held {
            None => Some(first),
            Some(Gap { from: None, .. }) => None,
            Some(Gap {
                from: Some(from), ..
            }) => Some(first.min(from)),
        }
    }

    /// The offset store took `offset`.
    pub fn stored(&mut self, offset: i64) {
        self.stored = Some(offset);
    }

    /// The last offset the offset store took, if any.
    pub fn last_stored(&self) -> Option<i64> {
        self.stored
    }

    /// The gap that holds the commit, if any.
    pub fn held(&self) -> Option<Gap> {
        self.held
    }

    /// The offset after the last record read.
    pub fn next(&self) -> Option<i64> {
        self.next
    }

    /// Offsets read and not finished, in order.
    pub fn pending(&self) -> &BTreeSet<i64> {
        &self.pending
    }

    /// How many records are read and not finished.
    pub fn unfinished(&self) -> usize {
        self.pending.len()
    }

    /// Forgets every record read; reading starts again at `to` (exactly-once
    /// rewind to the last commit). A held gap stays held if reading restarts
    /// after its start.
    pub fn rewind(&mut self, to: Option<i64>) {
        self.pending.clear();
        self.suspect = false;
        if let Some(to) = to {
            self.next = Some(to);
            if self.held.is_some_and(|g| g.from.is_some_and(|f| f >= to)) {
                // Reading again from before the gap: it will be seen again (or not).
                self.held = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_that_skip_records_are_told_apart() {
        use RDKafkaErrorCode::*;
        for code in [
            BadMessage,
            BadCompression,
            AutoOffsetReset,
            OffsetOutOfRange,
        ] {
            let e = KafkaError::MessageConsumption(code);
            assert_eq!(ConsumeError::of(&e), ConsumeError::MaySkip, "{code:?}");
        }
        for code in [
            BrokerTransportFailure,
            AllBrokersDown,
            TopicAuthorizationFailed,
        ] {
            let e = KafkaError::MessageConsumption(code);
            assert_eq!(ConsumeError::of(&e), ConsumeError::Transient, "{code:?}");
        }
    }

    fn tracker() -> Offsets {
        Offsets::new(false)
    }

    #[test]
    fn nothing_to_commit_before_the_first_read() {
        let o = tracker();
        assert_eq!(o.committable(), None);
        assert_eq!(o.first_unfinished(), None);
    }

    #[test]
    fn the_commit_stops_at_the_first_unfinished_record() {
        let mut o = tracker();
        for off in 10..15 {
            assert_eq!(o.read(off), None);
        }
        assert_eq!(o.committable(), Some(10));
        o.finish(11);
        o.finish(12);
        assert_eq!(o.committable(), Some(10), "10 is still unfinished");
        o.finish(10);
        assert_eq!(o.committable(), Some(13));
        o.finish(13);
        o.finish(14);
        assert_eq!(
            o.committable(),
            Some(15),
            "all finished: after the last read"
        );
        assert_eq!(o.unfinished(), 0);
    }

    #[test]
    fn the_commit_never_moves_backwards_or_repeats() {
        let mut o = tracker();
        o.read(5);
        o.finish(5);
        assert_eq!(o.committable(), Some(6));
        o.stored(6);
        assert_eq!(o.committable(), None, "already stored");
        o.read(6);
        assert_eq!(o.committable(), None, "6 unfinished: nothing new");
        o.finish(6);
        assert_eq!(o.committable(), Some(7));
    }

    #[test]
    fn offsets_gaps_without_an_error_are_normal() {
        // Transaction markers and compaction leave gaps in every topic.
        let mut o = tracker();
        o.read(1);
        assert_eq!(o.read(3), None);
        o.finish(1);
        o.finish(3);
        assert_eq!(o.committable(), Some(4));
    }

    #[test]
    fn a_transient_error_suspects_nothing() {
        let mut o = tracker();
        o.read(1);
        o.consume_error(ConsumeError::Transient);
        assert_eq!(o.read(7), None);
        o.finish(1);
        o.finish(7);
        assert_eq!(o.committable(), Some(8));
    }

    #[test]
    fn records_skipped_after_an_error_hold_the_commit_at_their_start() {
        let mut o = tracker();
        o.read(1);
        o.finish(1);
        o.consume_error(ConsumeError::MaySkip);
        let gap = o.read(50).expect("a gap");
        assert_eq!(
            gap,
            Gap {
                from: Some(2),
                to: 50
            }
        );
        assert_eq!(gap.span(), Some(48));
        o.finish(50);
        for off in 51..60 {
            o.read(off);
            o.finish(off);
        }
        assert_eq!(o.committable(), Some(2), "held at the first skipped offset");
        assert_eq!(
            o.first_unfinished(),
            Some(60),
            "a successor reads on from 60"
        );
        assert_eq!(o.held(), Some(gap));
    }

    #[test]
    fn an_error_followed_by_the_expected_record_skipped_nothing() {
        let mut o = tracker();
        o.read(1);
        o.consume_error(ConsumeError::MaySkip);
        assert_eq!(o.read(2), None);
        o.finish(1);
        o.finish(2);
        assert_eq!(o.committable(), Some(3));
        // The suspicion is used up by that read: a later gap is normal.
        assert_eq!(o.read(9), None);
    }

    #[test]
    fn an_error_before_the_first_read_holds_every_commit() {
        let mut o = tracker();
        o.consume_error(ConsumeError::MaySkip);
        let gap = o.read(100).expect("a gap of unknown start");
        assert_eq!(gap.from, None);
        assert_eq!(gap.span(), None);
        o.finish(100);
        assert_eq!(o.committable(), None, "the last commit stays where it is");
    }

    #[test]
    fn skip_unreadable_reports_the_gap_and_commits_past_it() {
        let mut o = Offsets::new(true);
        o.read(1);
        o.finish(1);
        o.consume_error(ConsumeError::MaySkip);
        assert!(o.read(10).is_some(), "still reported");
        o.finish(10);
        assert_eq!(o.committable(), Some(11));
        assert_eq!(o.held(), None);
    }

    #[test]
    fn the_first_gap_holds_and_later_ones_are_reported() {
        let mut o = tracker();
        o.read(1);
        o.consume_error(ConsumeError::MaySkip);
        o.read(5);
        o.consume_error(ConsumeError::MaySkip);
        let later = o.read(9).expect("reported");
        assert_eq!(later.from, Some(6));
        assert_eq!(o.held().and_then(|g| g.from), Some(2));
    }

    #[test]
    fn exactly_once_skips_count_as_read_and_finished() {
        let mut o = tracker();
        o.read_finished(3);
        o.read_finished(4);
        assert_eq!(o.committable(), Some(5));
        o.read(5);
        assert_eq!(o.committable(), Some(5));
    }

    #[test]
    fn a_rewind_forgets_what_was_read_and_a_gap_after_it() {
        let mut o = tracker();
        o.read(1);
        o.consume_error(ConsumeError::MaySkip);
        o.read(5);
        assert!(o.held().is_some());
        o.rewind(Some(1));
        assert_eq!(o.unfinished(), 0);
        assert_eq!(o.next(), Some(1));
        assert_eq!(o.held(), None, "read again from before the gap");
        assert_eq!(o.committable(), Some(1));
    }

    #[test]
    fn a_rewind_before_the_gap_clears_it_and_none_keeps_it() {
        let mut o = tracker();
        o.read(1);
        o.consume_error(ConsumeError::MaySkip);
        o.read(5);
        o.rewind(Some(0));
        assert_eq!(o.held(), None);
        let mut o = tracker();
        o.read(1);
        o.finish(1);
        o.consume_error(ConsumeError::MaySkip);
        o.read(5);
        o.finish(5);
        o.rewind(None);
        assert_eq!(o.held().and_then(|g| g.from), Some(2));
    }
}
