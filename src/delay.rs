//! The delay arithmetic, with no I/O: which tier a delay enters, when a record
//! in a tier must be acted on, whether it is then delivered, forwarded or held,
//! and the whole hop plan. Guarantee: no decision ever delivers before the due time.
//!
//! All times are Unix epoch milliseconds (`i64`), all delays milliseconds (`u64`).

/// Largest head start a tier may be given over the time that is left (see [`TierSet::slack_ms`]).
pub const MAX_SLACK_MS: u64 = 250;

/// The configured tier delays, strictly increasing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierSet {
    delays: Vec<u64>,
}

/// What to do with a record whose wait in its tier is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Due now: produce it to its target.
    Deliver,
    /// Less than the smallest tier is left: keep it in memory and deliver it at `until_ms`.
    Hold {
        /// Its due time (epoch ms).
        until_ms: i64,
    },
    /// At least one tier is left: produce it to tier `tier` (an index into the tier set).
    Forward {
        /// The tier's index.
        tier: usize,
    },
}

/// The route a record with a given delay takes when nothing is late: the tiers
/// it passes through (entry tier first) and how long it is finally held in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The tiers' indexes, entry tier first (a tier may repeat).
    pub tiers: Vec<usize>,
    /// How long it is held in memory after its last tier (ms).
    pub held_ms: u64,
}

impl Plan {
    /// Kafka writes the record costs: the producer's write into the entry tier,
    /// one per forward, and the delivery.
    pub fn kafka_writes(&self) -> usize {
        self.tiers.len() + 1
    }

    /// The tiers as runs of equal tiers: `[(tier, count)]`, e.g. 10m x3.
    pub fn runs(&self) -> Vec<(usize, usize)> {
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for &t in &self.tiers {
            match runs.last_mut() {
                Some((last, n)) if *last == t => *n += 1,
                _ => runs.push((t, 1)),
            }
        }
        runs
    }
}

impl TierSet {
    /// Builds a tier set; `None` unless the delays are non-empty, positive and strictly increasing.
    pub fn new(delays: Vec<u64>) -> Option<Self> {
        let ok = !delays.is_empty() && delays[0] > 0 && delays.windows(2).all(|w| w[0] < w[1]);
        ok.then_some(TierSet { delays })
    }

    /// The delays (ms), in increasing order; index = tier.
    pub fn delays(&self) -> &[u64] {
        &self.delays
    }

    /// Tier `tier`'s delay (ms); panics if there is no such tier.
    pub fn delay(&self, tier: usize) -> u64 {
        self.delays[tier]
    }

    /// The first (smallest) tier's delay (ms).
    pub fn smallest(&self) -> u64 {
        self.delays[0]
    }

    /// How much longer than the time left a tier may be and still be chosen:
    /// a tenth of its delay, at most [`MAX_SLACK_MS`].
    ///
    /// Every hop costs a few milliseconds (produce, fetch), so after `1h + 10m x3`
    /// a 95-minute record has slightly less than `5 x 1m` left. Without slack the
    /// last minute would be split into `30s + 5s x5 + 1s x4`. With it the record
    /// still takes the 1m tier, and since a record is acted on at
    /// `min(tier end, deliver-at)` ([`TierSet::ready_at`]) it is delivered on its
    /// due millisecond, never before it.
    pub fn slack_ms(delay_ms: u64) -> u64 {
        (delay_ms / 10).min(MAX_SLACK_MS)
    }

    /// How much earlier than the end of its tier wait a record appended to
    /// `tier` may be ready, so how far a partition task must read past its
    /// first waiting record. The smallest tier takes every delay shorter than
    /// itself (with `delay-deliver-at`), so a record appended there may be
    /// ready at once: the whole delay. A larger tier is entered only with at
    /// least its delay less its slack left ([`TierSet::tier_for`]).
    pub fn lookahead_ms(&self, tier: usize) -> u64 {
        if tier == 0 {
            self.delays[0]
        } else {
            Self::slack_ms(self.delays[tier])
        }
    }

    /// The largest tier whose delay fits in `remaining_ms` (with slack), or `None`
    /// when even the smallest tier is too long: then the record is held in memory.
    pub fn tier_for(&self, remaining_ms: u64) -> Option<usize> {
        self.delays
            .iter()
            .rposition(|&d| d <= remaining_ms.saturating_add(Self::slack_ms(d)))
    }

    /// The tier a new record with this delay is produced to: the largest that
    /// fits, or the smallest when the delay is shorter than every tier (the
    /// record then carries `delay-deliver-at` and is delivered at that time).
    pub fn entry_tier(&self, delay_ms: u64) -> usize {
        self.tier_for(delay_ms).unwrap_or(0)
    }

    /// When a record that entered `tier` at `timestamp_ms` must be looked at:
    /// the end of its tier wait, or its deadline if that comes first.
    pub fn ready_at(&self, tier: usize, timestamp_ms: i64, deliver_at: Option<i64>) -> i64 {
        let tier_end = timestamp_ms.saturating_add(self.delays[tier] as i64);
        match deliver_at {
            Some(at) => tier_end.min(at),
            None => tier_end,
        }
    }

    /// When the record is due at its target: its deadline, or its tier's end for a fixed delay.
    pub fn due_at(&self, tier: usize, timestamp_ms: i64, deliver_at: Option<i64>) -> i64 {
        deliver_at.unwrap_or_else(|| timestamp_ms.saturating_add(self.delays[tier] as i64))
    }

    /// What to do with a ready record at `now_ms`. Without a deadline a record is
    /// delivered when its tier wait is over.
    pub fn decide(&self, now_ms: i64, deliver_at: Option<i64>) -> Decision {
        let Some(at) = deliver_at else {
            return Decision::Deliver;
        };
        if at <= now_ms {
            return Decision::Deliver;
        }
        let remaining = (at as i128 - now_ms as i128).min(i64::MAX as i128) as u64;
        match self.tier_for(remaining) {
            Some(tier) => Decision::Forward { tier },
            None => Decision::Hold { until_ms: at },
        }
    }

    /// The hop plan of a record produced with `delay_ms`, assuming every hop is instantaneous.
    pub fn plan(&self, delay_ms: u64) -> Plan {
        let entry = self.entry_tier(delay_ms);
        let mut tiers = vec![entry];
        let mut remaining = delay_ms.saturating_sub(self.delays[entry]);
        loop {
            // The record now sits in the last tier; it is ready at `min(tier end, deadline)`,
            // so `remaining` is what is left at that moment.
            match self.decide(0, (remaining > 0).then_some(remaining as i64)) {
                Decision::Deliver => return Plan { tiers, held_ms: 0 },
                Decision::Hold { until_ms } => {
                    return Plan {
                        tiers,
                        held_ms: until_ms as u64,
                    }
                }
                Decision::Forward { tier } => {
                    tiers.push(tier);
                    remaining = remaining.saturating_sub(self.delays[tier]);
                }
            }
        }
    }
}

/// Whether a deadline lies further ahead than the longest accepted delay.
pub fn too_far(now_ms: i64, deliver_at: i64, max_delay_ms: u64) -> bool {
    (deliver_at as i128 - now_ms as i128) > max_delay_ms as i128
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000;
    const M: u64 = 60 * S;
    const H: u64 = 60 * M;

    fn default_tiers() -> TierSet {
        TierSet::new(vec![S, 5 * S, 30 * S, M, 10 * M, H]).unwrap()
    }

    #[test]
    fn tier_sets_must_be_strictly_increasing_and_positive() {
        assert!(TierSet::new(vec![]).is_none());
        assert!(TierSet::new(vec![0, 1]).is_none());
        assert!(TierSet::new(vec![5, 5]).is_none());
        assert!(TierSet::new(vec![5, 4]).is_none());
        assert!(TierSet::new(vec![1]).is_some());
    }

    #[test]
    fn slack_is_a_tenth_capped() {
        assert_eq!(TierSet::slack_ms(1), 0);
        assert_eq!(TierSet::slack_ms(200), 20);
        assert_eq!(TierSet::slack_ms(S), 100);
        assert_eq!(TierSet::slack_ms(5 * S), MAX_SLACK_MS);
        assert_eq!(TierSet::slack_ms(H), MAX_SLACK_MS);
    }

    #[test]
    fn lookahead_is_the_smallest_delay_in_the_smallest_tier_and_the_slack_above() {
        let t = default_tiers();
        assert_eq!(t.lookahead_ms(0), S);
        assert_eq!(t.lookahead_ms(1), MAX_SLACK_MS);
        assert_eq!(t.lookahead_ms(5), MAX_SLACK_MS);
        let short = TierSet::new(vec![200, 1_000]).unwrap();
        assert_eq!(short.lookahead_ms(0), 200);
        assert_eq!(short.lookahead_ms(1), 100);
        // Every record a producer or a forward puts into a tier above the
        // smallest is ready no earlier than its tier end less the look-ahead.
        for remaining in [900, S, 4_750, 5 * S, 29_750, 95 * M] {
            let tier = t.entry_tier(remaining);
            if tier > 0 {
                assert!(
                    remaining + t.lookahead_ms(tier) >= t.delay(tier),
                    "{remaining}"
                );
            }
        }
    }

    #[test]
    fn tier_for_picks_the_largest_tier_that_fits() {
        let t = default_tiers();
        assert_eq!(t.tier_for(0), None);
        assert_eq!(t.tier_for(899), None);
        assert_eq!(t.tier_for(900), Some(0)); // 1s with 100ms slack
        assert_eq!(t.tier_for(S), Some(0));
        assert_eq!(t.tier_for(5 * S - 251), Some(0));
        assert_eq!(t.tier_for(5 * S - 250), Some(1));
        assert_eq!(t.tier_for(5 * S), Some(1));
        assert_eq!(t.tier_for(29 * S), Some(1));
        assert_eq!(t.tier_for(30 * S), Some(2));
        assert_eq!(t.tier_for(M - 1), Some(3));
        assert_eq!(t.tier_for(10 * M - 1), Some(4));
        assert_eq!(t.tier_for(H), Some(5));
        assert_eq!(t.tier_for(7 * 24 * H), Some(5));
        assert_eq!(t.tier_for(u64::MAX), Some(5));
    }

    #[test]
    fn tier_for_matches_a_brute_force_definition_on_every_boundary() {
        let t = default_tiers();
        for &d in t.delays() {
            for r in [
                d.saturating_sub(300),
                d - 251,
                d - 250,
                d - 101,
                d - 100,
                d - 1,
                d,
                d + 1,
            ] {
                let expected = t
                    .delays()
                    .iter()
                    .enumerate()
                    .filter(|(_, &dd)| dd <= r + TierSet::slack_ms(dd))
                    .map(|(i, _)| i)
                    .max();
                assert_eq!(t.tier_for(r), expected, "remaining {r}");
            }
        }
    }

    #[test]
    fn ready_at_is_the_earlier_of_tier_end_and_deadline() {
        let t = default_tiers();
        assert_eq!(t.ready_at(0, 10_000, None), 11_000);
        assert_eq!(t.ready_at(0, 10_000, Some(10_500)), 10_500);
        assert_eq!(t.ready_at(0, 10_000, Some(99_000)), 11_000);
        assert_eq!(t.ready_at(5, i64::MAX - 5, None), i64::MAX);
        assert_eq!(t.due_at(1, 10_000, None), 15_000);
        assert_eq!(t.due_at(1, 10_000, Some(12_345)), 12_345);
        assert_eq!(t.due_at(5, i64::MAX, None), i64::MAX);
    }

    #[test]
    fn decide_delivers_only_when_due() {
        let t = default_tiers();
        assert_eq!(t.decide(1_000, None), Decision::Deliver);
        assert_eq!(t.decide(1_000, Some(1_000)), Decision::Deliver);
        assert_eq!(t.decide(1_000, Some(0)), Decision::Deliver);
        assert_eq!(t.decide(1_000, Some(i64::MIN)), Decision::Deliver);
        assert_eq!(
            t.decide(1_000, Some(1_001)),
            Decision::Hold { until_ms: 1_001 }
        );
        assert_eq!(
            t.decide(1_000, Some(1_899)),
            Decision::Hold { until_ms: 1_899 }
        );
        assert_eq!(t.decide(1_000, Some(1_900)), Decision::Forward { tier: 0 });
        assert_eq!(
            t.decide(0, Some(35 * M as i64)),
            Decision::Forward { tier: 4 }
        );
        assert_eq!(
            t.decide(i64::MIN, Some(i64::MAX)),
            Decision::Forward { tier: 5 }
        );
    }

    #[test]
    fn decide_never_delivers_early_over_a_sweep() {
        let t = TierSet::new(vec![200, 500, 1_000, 2_000]).unwrap();
        for now in [0i64, 7, 1_000_000] {
            for left in -3_000i64..3_000 {
                let at = now + left;
                match t.decide(now, Some(at)) {
                    Decision::Deliver => assert!(left <= 0),
                    Decision::Hold { until_ms } => {
                        assert_eq!(until_ms, at);
                        assert!(left > 0 && (left as u64) < 200 - TierSet::slack_ms(200));
                    }
                    Decision::Forward { tier } => {
                        let d = t.delay(tier);
                        assert!(d <= left as u64 + TierSet::slack_ms(d));
                        // ...and it is the largest such tier.
                        if tier + 1 < t.delays().len() {
                            let next = t.delay(tier + 1);
                            assert!(next > left as u64 + TierSet::slack_ms(next));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_95_minute_example() {
        let t = default_tiers();
        let p = t.plan(95 * M);
        assert_eq!(p.runs(), vec![(5, 1), (4, 3), (3, 5)]);
        assert_eq!(p.held_ms, 0);
        assert_eq!(p.kafka_writes(), 10);
    }

    #[test]
    fn plans_for_common_delays() {
        let t = default_tiers();
        assert_eq!(t.plan(S).tiers, vec![0]);
        assert_eq!(t.plan(30 * S).tiers, vec![2]);
        assert_eq!(t.plan(H).tiers, vec![5]);
        assert_eq!(t.plan(7 * S).runs(), vec![(1, 1), (0, 2)]);
        assert_eq!(t.plan(1_500).runs(), vec![(0, 1)]);
        assert_eq!(t.plan(1_500).held_ms, 500);
        assert_eq!(
            t.plan(300),
            Plan {
                tiers: vec![0],
                held_ms: 0
            }
        );
        assert_eq!(
            t.plan(0),
            Plan {
                tiers: vec![0],
                held_ms: 0
            }
        );
        assert_eq!(t.plan(24 * H).tiers, vec![5; 24]);
        assert_eq!(t.plan(7 * 24 * H).kafka_writes(), 169);
    }

    #[test]
    fn plans_add_up_to_the_delay_and_never_deliver_early() {
        let t = default_tiers();
        // A deterministic pseudo-random sweep plus every tier boundary.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut delays: Vec<u64> = (0..5_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % (48 * H)
            })
            .collect();
        for &d in t.delays() {
            delays.extend([d - 1, d, d + 1, d.saturating_sub(MAX_SLACK_MS)]);
        }
        for delay in delays {
            let p = t.plan(delay);
            // Time actually spent: each tier's wait, cut short by the deadline, then the hold.
            let mut left = delay;
            for &tier in &p.tiers {
                left -= left.min(t.delay(tier));
            }
            assert_eq!(left, p.held_ms, "delay {delay}: {p:?}");
            assert!(p.held_ms < t.smallest(), "delay {delay}: {p:?}");
            let spent: u64 = p.tiers.iter().map(|&i| t.delay(i)).sum();
            // Without slack the tiers would add up to at most the delay; slack lets the
            // last one run over by at most MAX_SLACK_MS (cut short by the deadline).
            assert!(
                spent <= delay.max(t.smallest()) + MAX_SLACK_MS,
                "delay {delay}: {p:?}"
            );
        }
    }

    #[test]
    fn write_count_grows_with_hops() {
        let t = default_tiers();
        let writes: Vec<usize> = [S, 5 * S, M, 10 * M, H, 24 * H]
            .iter()
            .map(|&d| t.plan(d).kafka_writes())
            .collect();
        assert_eq!(writes, vec![2, 2, 2, 2, 2, 25]);
    }

    #[test]
    fn too_far_handles_extremes() {
        assert!(!too_far(0, 1_000, 1_000));
        assert!(too_far(0, 1_001, 1_000));
        assert!(too_far(i64::MIN, i64::MAX, u64::MAX >> 1));
        assert!(!too_far(i64::MAX, i64::MIN, 0));
    }
}
