//! Which topics the router may deliver to: the `targets.allow` list of
//! `topics.yaml`. Without it the router would write wherever a producer's
//! `delay-target` points, with the router's own rights (a confused deputy);
//! with it, a record for any other topic is dead-lettered as
//! `target-not-allowed` and never produced there, and `DelayProducer` refuses
//! it before anything is written. Guarantee: matching is a pure function of
//! the pattern and the name, exact except for `*`, which matches any run of
//! characters (Kafka topic names cannot contain `*`, so nothing needs escaping).

use std::fmt;

/// The target allow-list: exact topic names and `*` patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetAllowList {
    patterns: Vec<String>,
}

impl TargetAllowList {
    /// Checks the patterns: each is a legal topic name, except that `*` may
    /// stand for any run of characters. Errors name the entry and the problem.
    pub fn new(patterns: Vec<String>) -> Result<Self, String> {
        for (i, p) in patterns.iter().enumerate() {
            if p.is_empty() {
                return Err(format!("entry {i} is empty"));
            }
            if p.len() > 249 {
                return Err(format!("entry {i} is longer than a topic name can be"));
            }
            if let Some(c) = p
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*')))
            {
                return Err(format!(
                    "entry {i} ({p:?}) has {c:?}, which no topic name can contain; \
                     use letters, digits, '.', '_', '-' and '*' for any run of characters"
                ));
            }
        }
        Ok(TargetAllowList { patterns })
    }

    /// Every topic allowed (`allow: ['*']`).
    pub fn any() -> Self {
        TargetAllowList {
            patterns: vec!["*".into()],
        }
    }

    /// Whether the router may deliver to `topic`.
    pub fn allows(&self, topic: &str) -> bool {
        self.patterns.iter().any(|p| matches(p, topic))
    }

    /// The patterns, as declared.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

impl fmt::Display for TargetAllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.patterns.is_empty() {
            return f.write_str("(none: every record is dead-lettered)");
        }
        f.write_str(&self.patterns.join(", "))
    }
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters
/// (also none) and everything else matches itself. Greedy with backtracking
/// to the last `*`: linear in practice, never worse than the product of the
/// two lengths.
fn matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            // Let the last `*` take one more character and try again.
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn list(p: &[&str]) -> TargetAllowList {
        TargetAllowList::new(p.iter().map(|s| s.to_string()).collect()).unwrap()
    }

    #[test]
    fn exact_names_prefixes_suffixes_and_inner_stars() {
        let l = list(&["orders.reminders", "billing.*", "*.delayed", "team-*-out"]);
        for ok in [
            "orders.reminders",
            "billing.",
            "billing.invoices",
            "x.delayed",
            ".delayed",
            "team-a-out",
            "team--out",
            "team-a-b-out",
        ] {
            assert!(l.allows(ok), "{ok}");
        }
        for no in [
            "orders.reminders2",
            "orders",
            "billing",
            "xbilling.invoices",
            "delayed",
            "x.delayed.y",
            "team-a-outx",
            "team-out",
            "",
        ] {
            assert!(!l.allows(no), "{no}");
        }
        assert!(TargetAllowList::any().allows("anything.at-all"));
        assert!(!list(&[]).allows("orders"));
        assert!(list(&["a**b"]).allows("ab"));
    }

    #[test]
    fn patterns_are_checked_with_what_is_wrong() {
        assert!(TargetAllowList::new(vec!["".into()])
            .unwrap_err()
            .contains("entry 0 is empty"));
        let e = TargetAllowList::new(vec!["ok".into(), "bad/topic".into()]).unwrap_err();
        assert!(e.contains("entry 1") && e.contains("'/'"), "{e}");
        assert!(TargetAllowList::new(vec!["x".repeat(250)]).is_err());
        assert_eq!(list(&["a", "b.*"]).to_string(), "a, b.*");
        assert!(list(&[]).to_string().contains("none"));
    }

    /// A slow, obviously right matcher to check the fast one against.
    fn reference(p: &[u8], n: &[u8]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*', rest)) => (0..=n.len()).any(|k| reference(rest, &n[k..])),
            Some((c, rest)) => n.first() == Some(c) && reference(rest, &n[1..]),
        }
    }

    proptest! {
        #[test]
        fn matching_agrees_with_the_reference(p in "[ab.*]{0,8}", n in "[ab.]{0,10}") {
            prop_assert_eq!(matches(&p, &n), reference(p.as_bytes(), n.as_bytes()));
        }
    }
}
