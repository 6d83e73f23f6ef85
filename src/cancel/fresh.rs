//! Freshness bookkeeping, as a pure function of sampled end offsets and read
//! positions. Guarantee: [`Freshness::check`] returns a time T only once every
//! partition's read position has reached the end offset sampled after T, so
//! every record acknowledged before T (which lies below that end) has been read.
//! A partition whose end offset is sampled below its read position twice in
//! a row was reset (the topic deleted and created again, or truncated by an
//! unclean leader election): [`Freshness::sampled`] names it, the reader reads
//! it again from its start ([`Freshness::reset`]), and freshness waits until
//! it has; a single low sample (a new leader's high watermark catching up)
//! only holds freshness for one sample.

/// Where the reader is and the last sample it is catching up with.
#[derive(Debug, Clone)]
pub struct Freshness {
    /// Per partition: the next offset to read (everything below it was read or is gone).
    positions: Vec<i64>,
    /// The sample being caught up with: its time and its end offsets.
    sample: Option<(i64, Vec<i64>)>,
    fresh_until: i64,
    /// Per partition: the last sample put its end below the read position.
    below: Vec<bool>,
}

impl Freshness {
    /// Starts at each partition's log start offset: nothing before it can be read.
    pub fn new(starts: Vec<i64>) -> Self {
        Freshness {
            below: vec![false; starts.len()],
            positions: starts,
            sample: None,
            fresh_until: i64::MIN,
        }
    }

    /// How many partitions of the cancel topic it follows.
    pub fn partitions(&self) -> usize {
        self.positions.len()
    }

    /// Partitions added to the topic since the start, read from their log start.
    pub fn add_partition(&mut self, start: i64) {
        self.positions.push(start);
        self.below.push(false);
    }

    /// The partition was reset: it is read again from `start` (its log start
    /// now), and the sample being caught up with no longer counts.
    pub fn reset(&mut self, partition: usize, start: i64) {
        if let Some(p) = self.positions.get_mut(partition) {
            *p = start;
            self.below[partition] = false;
            self.sample = None;
        }
    }

    /// Everything below `next` in `partition` was read.
    pub fn read(&mut self, partition: usize, next: i64) {
        if let Some(p) = self.positions.get_mut(partition) {
            *p = (*p).max(next);
        }
    }

    /// Whether a new sample is wanted (none is being caught up with).
    pub fn wants_sample(&self) -> bool {
        self.sample.is_none()
    }

    /// The end offsets of every partition, queried after `t_ms`. A sample with
    /// fewer partitions than are read is ignored: it cannot vouch for the
    /// others. So is one with an end below its partition's read position;
    /// returns the partitions whose end was below it in this sample and the
    /// one before: they were reset, and must be read again from their start.
    #[must_use = "reset partitions must be read again from their start"]
    pub fn sampled(&mut self, t_ms: i64, ends: Vec<i64>) -> Vec<usize> {
        let before = self.positions.clone();
        self.sampled_since(t_ms, ends, &before)
    }

    /// The read positions now: taken before the end offsets are asked for
    /// and handed to [`Freshness::sampled_since`] with them.
    pub fn positions(&self) -> Vec<i64> {
        self.positions.clone()
    }

    /// [`Freshness::sampled`] for a reader that goes on reading while the
    /// end offsets are asked for: an end counts as below a partition's read
    /// position only if it is below `before`, the positions taken before the
    /// query. The reader may meanwhile have read records appended after the
    /// broker answered, past the ends: that is no reset.
    #[must_use = "reset partitions must be read again from their start"]
    pub fn sampled_since(&mut self, t_ms: i64, ends: Vec<i64>, before: &[i64]) -> Vec<usize> {
        if ends.len() < self.positions.len() {
            return Vec::new();
        }
        let mut reset = Vec::new();
        let mut held = false;
        for (p, end) in ends.iter().enumerate().take(self.positions.len()) {
            let below = before.get(p).is_some_and(|pos| end < pos);
            if below && self.below[p] {
                reset.push(p);
            }
            held |= below;
            self.below[p] = below;
        }
        if !held {
            self.sample = Some((t_ms, ends));
        }
        reset
    }

    /// When every partition has reached the sample's ends: the new fresh-until
    /// time (the sample's time), and the sample is done. Partitions of the
    /// sample not yet read (added to the topic) must be added first.
    pub fn check(&mut self) -> Option<i64> {
        let (t, ends) = self.sample.as_ref()?;
        if ends.len() > self.positions.len() {
            return None;
        }
        if self.positions.iter().zip(ends).all(|(pos, end)| pos >= end) {
            let t = *t;
            self.sample = None;
            if t > self.fresh_until {
                self.fresh_until = t;
                return Some(t);
            }
        }
        None
    }

    /// The time up to which every acknowledged cancellation has been read (epoch ms; `i64::MIN` until the first sample is reached).
    pub fn fresh_until(&self) -> i64 {
        self.fresh_until
    }

    /// The wall clock went back to `t_ms`: freshness past it is dropped (it
    /// vouched for times that are the future again), and so is a sample
    /// taken after it.
    pub fn rewind(&mut self, t_ms: i64) {
        self.fresh_until = self.fresh_until.min(t_ms);
        if self.sample.as_ref().is_some_and(|(t, _)| *t > t_ms) {
            self.sample = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_that_ends_below_its_position_twice_is_read_again() {
        let mut f = Freshness::new(vec![0, 0]);
        let _ = f.sampled(100, vec![10, 4]);
        f.read(0, 10);
        f.read(1, 4);
        assert_eq!(f.check(), Some(100));
        // Partition 0 re-created: its end (2) lies below what was read (10).
        // One low sample holds freshness but is no reset yet (a new leader's
        // high watermark may lag for a moment).
        assert!(f.sampled(200, vec![2, 4]).is_empty());
        assert_eq!(f.check(), None, "held while an end is below its position");
        assert!(f.wants_sample());
        // The next sample agrees: reset. Read again from its start (0).
        assert_eq!(f.sampled(300, vec![3, 4]), vec![0]);
        assert_eq!(f.check(), None);
        f.reset(0, 0);
        assert!(f.sampled(400, vec![3, 4]).is_empty());
        assert_eq!(f.check(), None, "not fresh before the new records are read");
        f.read(0, 3);
        assert_eq!(f.check(), Some(400));
        assert_eq!(f.fresh_until(), 400);
    }

    #[test]
    fn one_low_sample_then_a_normal_one_is_no_reset() {
        let mut f = Freshness::new(vec![5]);
        assert!(f.sampled(100, vec![4]).is_empty());
        assert_eq!(f.check(), None);
        assert!(f.sampled(200, vec![5]).is_empty());
        assert_eq!(f.check(), Some(200));
    }

    #[test]
    fn empty_partitions_are_fresh_at_once() {
        let mut f = Freshness::new(vec![0, 5, 0]);
        let _ = f.sampled(100, vec![0, 5, 0]);
        assert_eq!(f.check(), Some(100));
        assert_eq!(f.fresh_until(), 100);
        assert!(f.wants_sample());
    }

    #[test]
    fn fresh_only_when_every_partition_reached_its_end() {
        let mut f = Freshness::new(vec![0, 0]);
        assert!(f.wants_sample());
        let _ = f.sampled(100, vec![3, 2]);
        assert!(!f.wants_sample());
        assert_eq!(f.check(), None);
        f.read(0, 3);
        assert_eq!(f.check(), None);
        f.read(1, 1);
        assert_eq!(f.check(), None);
        f.read(1, 2);
        assert_eq!(f.check(), Some(100));
        assert_eq!(f.fresh_until(), 100);
        // Positions never go back.
        f.read(0, 1);
        let _ = f.sampled(200, vec![3, 2]);
        assert_eq!(f.check(), Some(200));
    }

    #[test]
    fn a_record_written_after_the_sample_does_not_hold_it() {
        let mut f = Freshness::new(vec![0]);
        let _ = f.sampled(100, vec![1]);
        f.read(0, 1);
        // Offset 1 arrived after the sample; reading it or not does not matter for 100.
        assert_eq!(f.check(), Some(100));
        let _ = f.sampled(150, vec![2]);
        assert_eq!(f.check(), None);
        assert_eq!(f.fresh_until(), 100);
    }

    #[test]
    fn freshness_never_goes_back() {
        let mut f = Freshness::new(vec![0]);
        let _ = f.sampled(300, vec![0]);
        assert_eq!(f.check(), Some(300));
        // A clock step back: the sample is done but fresh-until stays.
        let _ = f.sampled(250, vec![0]);
        assert_eq!(f.check(), None);
        assert_eq!(f.fresh_until(), 300);
        assert!(f.wants_sample());
    }

    #[test]
    fn reading_on_past_the_ends_while_they_are_asked_for_is_no_reset() {
        let mut f = Freshness::new(vec![0]);
        for round in 0..3i64 {
            // Positions taken, then the query: the broker answers end 10 + 10r;
            // meanwhile the reader reads records appended after the answer.
            let before = f.positions();
            let end = 10 + 10 * round;
            f.read(0, end + 5);
            assert!(f.sampled_since(100 + round, vec![end], &before).is_empty());
            assert_eq!(f.check(), Some(100 + round), "not held: nothing went back");
        }
        // The same answers judged against the positions after the reads
        // (the sampler without its snapshot) looked like a reset.
        let mut g = Freshness::new(vec![0]);
        g.read(0, 15);
        assert!(g.sampled(200, vec![10]).is_empty());
        assert_eq!(g.sampled(201, vec![10]), vec![0]);
    }

    #[test]
    fn a_clock_stepped_back_takes_freshness_back_with_it() {
        let mut f = Freshness::new(vec![0]);
        let _ = f.sampled(1_000, vec![0]);
        assert_eq!(f.check(), Some(1_000));
        let _ = f.sampled(1_050, vec![3]);
        f.rewind(400);
        assert_eq!(f.fresh_until(), 400);
        assert!(
            f.wants_sample(),
            "the sample taken at 1,050 no longer counts"
        );
        let _ = f.sampled(420, vec![3]);
        f.read(0, 3);
        assert_eq!(f.check(), Some(420));
    }

    #[test]
    fn new_partitions_must_be_read_too() {
        let mut f = Freshness::new(vec![0]);
        let _ = f.sampled(100, vec![0, 4]);
        assert_eq!(f.check(), None, "a partition not read yet cannot be fresh");
        f.add_partition(0);
        assert_eq!(f.check(), None);
        f.read(1, 4);
        assert_eq!(f.check(), Some(100));
        // A sample missing a partition we read is ignored.
        let _ = f.sampled(200, vec![0]);
        assert!(f.wants_sample());
        assert_eq!(f.check(), None);
    }

    mod property {
        use super::*;
        use crate::partition::{gate, Gate};
        use proptest::prelude::*;
        use std::collections::HashSet;

        /// One step of a run: the clock moves on by `tick` ms, then this happens.
        #[derive(Debug, Clone)]
        enum Step {
            /// A cancellation of `id` is acknowledged on `partition`.
            Cancel { partition: usize, id: u8 },
            /// The sampler notes the time, `lag` ms before the end offsets it
            /// gets (so they may hold records acknowledged after that time),
            /// and the read positions; the answer comes in a later step (the
            /// reader goes on meanwhile).
            Sample { lag: i64 },
            /// The end offsets asked for arrive.
            Answer,
            /// The reader applies up to `n` more records of `partition`.
            Read { partition: usize, n: usize },
            /// A record with `id`, due `ago` ms before now, asks the gate.
            Deliver { id: u8, ago: i64 },
        }

        fn step() -> impl Strategy<Value = (i64, Step)> {
            let step = prop_oneof![
                (0..3usize, 0..6u8).prop_map(|(partition, id)| Step::Cancel { partition, id }),
                (0..20i64).prop_map(|lag| Step::Sample { lag }),
                Just(Step::Answer),
                (0..3usize, 0..4usize).prop_map(|(partition, n)| Step::Read { partition, n }),
                (0..6u8, 0..50i64).prop_map(|(id, ago)| Step::Deliver { id, ago }),
            ];
            (0..15i64, step)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            /// Whatever the order of acknowledgements, samples, reads and
            /// due times: the gate never lets a delivery go whose id has a
            /// cancellation acknowledged before its due time.
            #[test]
            fn no_delivery_passes_a_cancellation_acknowledged_before_its_due_time(
                steps in proptest::collection::vec(step(), 1..200)
            ) {
                let mut now = 1_000i64;
                // Per partition: the log, (id, acknowledged at).
                let mut logs: Vec<Vec<(u8, i64)>> = vec![Vec::new(); 3];
                let mut f = Freshness::new(vec![0; 3]);
                let mut read = [0usize; 3];
                let mut view: HashSet<u8> = HashSet::new();
                let mut asked: Option<(i64, Vec<i64>, Vec<i64>)> = None;
                for (tick, s) in steps {
                    now += tick;
                    match s {
                        Step::Cancel { partition, id } => logs[partition].push((id, now)),
                        Step::Sample { lag } => {
                            let before = f.positions();
                            let ends = logs.iter().map(|l| l.len() as i64).collect();
                            asked.get_or_insert((now - lag, ends, before));
                        }
                        Step::Answer => {
                            if let Some((t, ends, before)) = asked.take() {
                                let reset = f.sampled_since(t, ends, &before);
                                prop_assert!(reset.is_empty(), "a log that only grows was taken for reset");
                            }
                        }
                        Step::Read { partition, n } => {
                            let to = (read[partition] + n).min(logs[partition].len());
                            for (id, _) in &logs[partition][read[partition]..to] {
                                view.insert(*id);
                            }
                            read[partition] = to;
                            f.read(partition, to as i64);
                        }
                        Step::Deliver { id, ago } => {
                            let due = now - ago;
                            let g = gate(true, view.contains(&id), true, due, f.fresh_until());
                            let acked_before = logs
                                .iter()
                                .flatten()
                                .any(|(i, at)| *i == id && *at < due);
                            prop_assert!(
                                !(g == Gate::Go && acked_before),
                                "delivered {id} due {due} past a cancellation acknowledged before it (fresh until {})",
                                f.fresh_until()
                            );
                        }
                    }
                    let _ = f.check();
                }
            }
        }
    }
}
