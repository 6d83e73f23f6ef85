//! The guard on `-X` overrides: the settings the router's guarantees rest
//! on (idempotence, acks=all, manual offset store, isolation) and which
//! values would weaken them. Guarantee: a weakening override is refused with
//! the setting and the guarantee it breaks, unless `--unsafe-override` names
//! it, and then it is reported.

use super::*;

/// What a guarded check covers: which clients, in which mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarded {
    /// `run` in at-least-once mode: the tier consumer and the router's producer.
    Router,
    /// `run --exactly-once`: the same, except that offsets commit inside the
    /// transactions and the router turns auto-commit off itself.
    RouterExactlyOnce,
    /// A producer writing into the tiers (`produce`, [`crate::DelayProducer`]).
    Producer,
}

/// A librdkafka setting that `-X` must not change silently, because a
/// guarantee of the router rests on it.
struct Guard {
    /// The key, then its aliases.
    keys: &'static [&'static str],
    /// The values that keep the guarantee (lowercase, as librdkafka reads them).
    safe: &'static [&'static str],
    /// Whether it matters for a check.
    applies: fn(Guarded) -> bool,
    guarantee: &'static str,
    why: &'static str,
    fix: &'static str,
}

const TRUE: &[&str] = &["true", "t", "1"];
const FALSE: &[&str] = &["false", "f", "0"];

const GUARDS: &[Guard] = &[
    Guard {
        keys: &["acks", "request.required.acks"],
        safe: &["all", "-1"],
        applies: |_| true,
        guarantee: "at-least-once delivery",
        why: "a record counts as forwarded, delivered or dead-lettered (and its tier offset is committed) once the broker acknowledged it; with fewer acknowledgements than all in-sync replicas, a leader failure loses records whose tier offset is already committed",
        fix: "remove it (the router sets acks=all; -1 means the same)",
    },
    Guard {
        keys: &["enable.idempotence"],
        safe: TRUE,
        applies: |_| true,
        guarantee: "per-key ordering and duplicate-free retries",
        why: "without idempotence a produce the client retries after a lost acknowledgement writes the record twice, and can put it behind later records of the same key; the router's recovery from a fenced or broken producer relies on it too",
        fix: "remove it (the router sets enable.idempotence=true)",
    },
    Guard {
        keys: &["enable.auto.offset.store"],
        safe: FALSE,
        applies: |g| g != Guarded::Producer,
        guarantee: "at-least-once delivery",
        why: "librdkafka would store each tier record's offset as soon as it is read, so the offsets committed every second and on a rebalance pass records still waiting for their due time or for the broker's acknowledgement; a crash or a rebalance loses them",
        fix: "remove it (the router stores each offset itself once the record is finished)",
    },
    Guard {
        keys: &["enable.auto.commit"],
        safe: TRUE,
        applies: |g| g == Guarded::Router,
        guarantee: "the bound on duplicates after a crash (about a second of traffic)",
        why: "the router relies on librdkafka committing the offsets it stores every second; without it offsets are committed only on a rebalance or a clean shutdown, so after a crash everything finished since then is routed again",
        fix: "remove it (--exactly-once turns auto-commit off by itself, and commits offsets in its transactions)",
    },
];

/// A `-X` setting that weakens a guarantee, allowed by `--unsafe-override`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsafeOverride {
    /// The librdkafka property.
    pub key: String,
    /// The value given for it.
    pub value: String,
    /// The guarantee given up.
    pub guarantee: &'static str,
}

impl KafkaSettings {
    /// Allows the `-X` settings with these keys (or their aliases: `acks` and
    /// `request.required.acks` are one setting) to weaken a guarantee
    /// (`--unsafe-override KEY`); [`KafkaSettings::check_guarantees`] then lets
    /// them through and reports them. A key the router does not guard is refused.
    pub fn allow_unsafe<S: AsRef<str>>(mut self, keys: &[S]) -> Result<Self> {
        for key in keys {
            let key = key.as_ref().trim();
            if !GUARDS.iter().any(|g| g.keys.contains(&key)) {
                let guarded: Vec<&str> = GUARDS.iter().map(|g| g.keys[0]).collect();
                return Err(Error::Usage {
                    flag: "--unsafe-override".into(),
                    problem: format!(
                        "{key:?} is not a setting the router refuses; it refuses only unsafe values of {}",
                        guarded.join(", ")
                    ),
                });
            }
            self.unsafe_overrides.insert(key.to_string());
        }
        Ok(self)
    }

    /// Refuses `-X` settings that would silently break a guarantee of what
    /// `guarded` runs: `acks` other than all/-1, `enable.idempotence` other
    /// than true, `enable.auto.offset.store` other than false, and (at-least-once
    /// `run`) `enable.auto.commit` other than true. Those allowed by
    /// [`KafkaSettings::allow_unsafe`] pass and are returned, for a warning.
    pub fn check_guarantees(&self, guarded: Guarded) -> Result<Vec<UnsafeOverride>> {
        let mut allowed = Vec::new();
        for guard in GUARDS.iter().filter(|g| (g.applies)(guarded)) {
            for key in guard.keys {
                // The last `-X` of a key is the one librdkafka gets.
                let Some((_, value)) = self.overrides.iter().rev().find(|(k, _)| k == key) else {
                    continue;
                };
                if guard
                    .safe
                    .contains(&value.trim().to_ascii_lowercase().as_str())
                {
                    continue;
                }
                if guard
                    .keys
                    .iter()
                    .any(|k| self.unsafe_overrides.contains(*k))
                {
                    allowed.push(UnsafeOverride {
                        key: key.to_string(),
                        value: value.clone(),
                        guarantee: guard.guarantee,
                    });
                    continue;
                }
                return Err(Error::UnsafeOverride {
                    key: key.to_string(),
                    value: value.clone(),
                    guarantee: guard.guarantee.into(),
                    why: guard.why.into(),
                    fix: guard.fix.into(),
                });
            }
        }
        Ok(allowed)
    }
}
