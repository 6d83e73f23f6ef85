//! Freshness bookkeeping, as a pure function of sampled end offsets and read
//! positions. Guarantee: [`Freshness::check`] returns a time T only once every
//! partition's read position has reached the end offset sampled after T, so
//! every record acknowledged before T (which lies below that end) has been read.

/// Where the reader is and the last sample it is catching up with.
#[derive(Debug, Clone)]
pub struct Freshness {
    /// Per partition: the next offset to read (everything below it was read or is gone).
    positions: Vec<i64>,
    /// The sample being caught up with: its time and its end offsets.
    sample: Option<(i64, Vec<i64>)>,
    fresh_until: i64,
}

impl Freshness {
    /// Starts at each partition's log start offset: nothing before it can be read.
    pub fn new(starts: Vec<i64>) -> Self {
        Freshness {
            positions: starts,
            sample: None,
            fresh_until: i64::MIN,
        }
    }

    pub fn partitions(&self) -> usize {
        self.positions.len()
    }

    /// Partitions added to the topic since the start, read from their log start.
    pub fn add_partition(&mut self, start: i64) {
        self.positions.push(start);
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
    /// fewer partitions than are read is ignored: it cannot vouch for the others.
    pub fn sampled(&mut self, t_ms: i64, ends: Vec<i64>) {
        if ends.len() >= self.positions.len() {
            self.sample = Some((t_ms, ends));
        }
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

    pub fn fresh_until(&self) -> i64 {
        self.fresh_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_partitions_are_fresh_at_once() {
        let mut f = Freshness::new(vec![0, 5, 0]);
        f.sampled(100, vec![0, 5, 0]);
        assert_eq!(f.check(), Some(100));
        assert_eq!(f.fresh_until(), 100);
        assert!(f.wants_sample());
    }

    #[test]
    fn fresh_only_when_every_partition_reached_its_end() {
        let mut f = Freshness::new(vec![0, 0]);
        assert!(f.wants_sample());
        f.sampled(100, vec![3, 2]);
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
        f.sampled(200, vec![3, 2]);
        assert_eq!(f.check(), Some(200));
    }

    #[test]
    fn a_record_written_after_the_sample_does_not_hold_it() {
        let mut f = Freshness::new(vec![0]);
        f.sampled(100, vec![1]);
        f.read(0, 1);
        // Offset 1 arrived after the sample; reading it or not does not matter for 100.
        assert_eq!(f.check(), Some(100));
        f.sampled(150, vec![2]);
        assert_eq!(f.check(), None);
        assert_eq!(f.fresh_until(), 100);
    }

    #[test]
    fn freshness_never_goes_back() {
        let mut f = Freshness::new(vec![0]);
        f.sampled(300, vec![0]);
        assert_eq!(f.check(), Some(300));
        // A clock step back: the sample is done but fresh-until stays.
        f.sampled(250, vec![0]);
        assert_eq!(f.check(), None);
        assert_eq!(f.fresh_until(), 300);
        assert!(f.wants_sample());
    }

    #[test]
    fn new_partitions_must_be_read_too() {
        let mut f = Freshness::new(vec![0]);
        f.sampled(100, vec![0, 4]);
        assert_eq!(f.check(), None, "a partition not read yet cannot be fresh");
        f.add_partition(0);
        assert_eq!(f.check(), None);
        f.read(1, 4);
        assert_eq!(f.check(), Some(100));
        // A sample missing a partition we read is ignored.
        f.sampled(200, vec![0]);
        assert!(f.wants_sample());
        assert_eq!(f.check(), None);
    }
}
