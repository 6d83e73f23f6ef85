//! The in-memory set of outstanding cancellations. Each id is kept only as a
//! 128-bit keyed hash with its expiry (24 bytes in the table), so memory follows
//! the outstanding cancellations, never the backlog or the length of the ids.
//! Guarantees: an id is answered as cancelled from its insertion until its
//! expiry (or a later record for the same id, which replaces it, as compaction
//! would); expired entries are dropped by [`Store::sweep`]; the table never
//! holds more than its cap: an insert of a new id past it is refused with
//! [`Insert::Full`] and nothing already held is forgotten.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

/// A 128-bit keyed hash of an id. Two ids are confused only if both halves
/// collide: about n²/2¹²⁹ for n ids, below 10⁻²⁴ at 10M outstanding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdHash(u64, u64);

impl IdHash {
    /// Bits of the hash for picking a shard (uniform: the hash is keyed).
    pub fn spread(&self) -> u64 {
        self.0 ^ self.1.rotate_left(32)
    }
}

/// Hashes ids with SipHash-1-3 under two random keys drawn at start, so that
/// nobody outside the process can choose ids that collide.
#[derive(Debug, Clone)]
pub struct IdHasher {
    a: RandomState,
    b: RandomState,
}

impl Default for IdHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl IdHasher {
    /// A hasher with two fresh random keys.
    pub fn new() -> Self {
        IdHasher {
            a: RandomState::new(),
            b: RandomState::new(),
        }
    }

    /// The id's 128-bit hash, the table's key.
    pub fn hash(&self, id: &[u8]) -> IdHash {
        IdHash(self.a.hash_one(id), self.b.hash_one(id))
    }
}

/// The table's own hasher: the keys are already uniformly random, so it only
/// mixes the two halves instead of hashing them again.
#[derive(Default)]
pub struct Spread(u64);

impl Hasher for Spread {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(29) ^ n;
    }
}

/// What an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// A new outstanding cancellation.
    Added,
    /// The id was held already; its expiry is now the new record's.
    Replaced,
    /// The expiry has passed: nothing is held for the id any more.
    Expired,
    /// The table is at its cap and the id is new: nothing changed.
    Full,
}

/// Outstanding cancellations by id hash, with their expiry (epoch ms).
pub struct Store {
    map: HashMap<IdHash, i64, BuildHasherDefault<Spread>>,
    cap: usize,
}

impl Store {
    /// A table that holds at most `cap` ids.
    pub fn new(cap: usize) -> Self {
        Store {
            map: HashMap::default(),
            cap,
        }
    }

    /// Records a cancellation of `id` until `until_ms`. The latest record for an
    /// id wins, as it does on the compacted topic a restarted reader reads.
    pub fn insert(&mut self, id: IdHash, until_ms: i64, now_ms: i64) -> Insert {
        if until_ms <= now_ms {
            self.map.remove(&id);
            return Insert::Expired;
        }
        if let Some(held) = self.map.get_mut(&id) {
            *held = until_ms;
            return Insert::Replaced;
        }
        if self.map.len() >= self.cap {
            return Insert::Full;
        }
        self.map.insert(id, until_ms);
        Insert::Added
    }

    /// Whether a cancellation (expired or not) is held for `id`.
    pub fn holds(&self, id: IdHash) -> bool {
        self.map.contains_key(&id)
    }

    /// Forgets a cancellation (a null-valued record); true if one was held.
    pub fn withdraw(&mut self, id: IdHash) -> bool {
        self.map.remove(&id).is_some()
    }

    /// Whether `id` is cancelled and its cancellation not expired at `now_ms`.
    pub fn is_cancelled(&self, id: IdHash, now_ms: i64) -> bool {
        self.map.get(&id).is_some_and(|&until| until > now_ms)
    }

    /// Drops every entry expired at `now_ms`, gives back memory when the table
    /// is mostly empty, and returns how many were dropped.
    pub fn sweep(&mut self, now_ms: i64) -> usize {
        let before = self.map.len();
        self.map.retain(|_, until| *until > now_ms);
        if self.map.capacity() > 1024 && self.map.len() * 4 < self.map.capacity() {
            self.map.shrink_to_fit();
        }
        before - self.map.len()
    }

    /// How many ids are held (expired or not, until swept).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether the table holds `cap` ids, so a new id is refused.
    pub fn is_full(&self) -> bool {
        self.map.len() >= self.cap
    }

    /// The most ids it holds.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Bytes the table allocates for its slots: one entry and one control byte
    /// per slot (the layout of the standard library's swiss table).
    pub fn table_bytes(&self) -> usize {
        self.map.capacity() * (std::mem::size_of::<(IdHash, i64)>() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_last_until_their_expiry() {
        let h = IdHasher::new();
        let mut s = Store::new(10);
        assert_eq!(s.insert(h.hash(b"a"), 100, 0), Insert::Added);
        assert!(s.is_cancelled(h.hash(b"a"), 99));
        assert!(!s.is_cancelled(h.hash(b"a"), 100));
        assert!(!s.is_cancelled(h.hash(b"b"), 0));
        assert_eq!(s.sweep(99), 0);
        assert_eq!(s.len(), 1);
        assert_eq!(s.sweep(100), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn the_latest_record_for_an_id_wins() {
        let h = IdHasher::new();
        let mut s = Store::new(10);
        s.insert(h.hash(b"a"), 1_000, 0);
        assert_eq!(s.insert(h.hash(b"a"), 50, 0), Insert::Replaced);
        assert!(!s.is_cancelled(h.hash(b"a"), 60));
        // An expired record for a held id removes it, as compaction would keep only it.
        s.insert(h.hash(b"a"), 1_000, 0);
        assert_eq!(s.insert(h.hash(b"a"), 5, 10), Insert::Expired);
        assert!(!s.is_cancelled(h.hash(b"a"), 10));
        assert!(s.is_empty());
        s.insert(h.hash(b"a"), 1_000, 0);
        assert!(s.withdraw(h.hash(b"a")));
        assert!(!s.withdraw(h.hash(b"a")));
        assert!(!s.is_cancelled(h.hash(b"a"), 0));
    }

    #[test]
    fn the_cap_refuses_new_ids_and_keeps_the_held_ones() {
        let h = IdHasher::new();
        let mut s = Store::new(2);
        assert_eq!(s.insert(h.hash(b"a"), 100, 0), Insert::Added);
        assert_eq!(s.insert(h.hash(b"b"), 200, 0), Insert::Added);
        assert!(s.is_full());
        assert_eq!(s.insert(h.hash(b"c"), 100, 0), Insert::Full);
        assert!(!s.is_cancelled(h.hash(b"c"), 0));
        // A held id may still be updated at the cap.
        assert_eq!(s.insert(h.hash(b"a"), 150, 0), Insert::Replaced);
        assert!(s.is_cancelled(h.hash(b"a"), 120) && s.is_cancelled(h.hash(b"b"), 120));
        // Expiry makes room.
        s.sweep(160);
        assert_eq!(s.insert(h.hash(b"c"), 300, 160), Insert::Added);
    }

    #[test]
    fn ids_hash_apart_and_stay_stable() {
        let h = IdHasher::new();
        assert_eq!(h.hash(b"order-1"), h.hash(b"order-1"));
        assert_ne!(h.hash(b"order-1"), h.hash(b"order-2"));
        // The length is part of the hash: a prefix is another id.
        assert_ne!(h.hash(b"ab"), h.hash(b"abc"));
        // Two processes (two hashers) use different keys.
        assert_ne!(IdHasher::new().hash(b"x"), IdHasher::new().hash(b"x"));
        let mut seen = std::collections::HashSet::new();
        for i in 0..100_000u32 {
            assert!(seen.insert(h.hash(&i.to_le_bytes())), "collision at {i}");
        }
    }

    #[test]
    fn the_table_stays_under_64_bytes_per_entry() {
        let h = IdHasher::new();
        let mut s = Store::new(usize::MAX);
        for n in [1_000u32, 10_000, 100_000, 300_000] {
            for i in 0..n {
                s.insert(h.hash(&i.to_le_bytes()), i64::MAX, 0);
            }
            let per = s.table_bytes() as f64 / s.len() as f64;
            assert!(per < 64.0, "{per} bytes per entry at {n}");
        }
    }

    #[test]
    fn sweeping_a_mostly_expired_table_gives_memory_back() {
        let h = IdHasher::new();
        let mut s = Store::new(usize::MAX);
        for i in 0..100_000u32 {
            s.insert(
                h.hash(&i.to_le_bytes()),
                if i < 1_000 { 200 } else { 100 },
                0,
            );
        }
        let full = s.table_bytes();
        assert_eq!(s.sweep(150), 99_000);
        assert!(s.table_bytes() * 10 < full, "{} of {full}", s.table_bytes());
        assert!(s.is_cancelled(h.hash(&5u32.to_le_bytes()), 150));
    }
}
