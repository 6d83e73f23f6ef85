//! Dead-lettering: the reasons a record cannot be routed and the headers that
//! say why and where it came from. A record is never dropped: what cannot be
//! routed goes to the dead-letter topic with these headers and its original
//! key, value and headers.

use rdkafka::message::{Header, OwnedHeaders};

use crate::headers;

/// Why a record went to the dead-letter topic; the code is the `delay-dlq-reason` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No `delay-target`, or an empty or null one.
    MissingTarget,
    /// `delay-target` is not UTF-8 or not a legal topic name.
    InvalidTarget,
    /// `delay-deliver-at` is not plain ASCII decimal epoch milliseconds.
    InvalidDeliverAt,
    /// `delay-id` is empty or longer than 255 bytes (only checked when a cancel topic is declared).
    InvalidId,
    /// The due time lies further ahead than `max-delay`.
    DueTooFar,
    /// The record timestamp lies far in the future, so its tier wait would block the partition.
    TimestampInFuture,
    /// The target is a tier topic or the dead-letter topic.
    TargetIsInternal,
    /// The target is not in `topics.yaml`'s `targets.allow` list.
    TargetNotAllowed,
    /// The target topic does not exist (the router never creates topics).
    TargetNotFound,
    /// The router may not write to the target.
    TargetUnauthorized,
    /// The record is larger than the target (or the producer) accepts.
    RecordTooLarge,
    /// The broker refused the record for another permanent reason.
    Rejected,
}

impl Reason {
    /// Every reason, in declaration order (the metrics create a series for each).
    pub const ALL: [Reason; 12] = [
        Reason::MissingTarget,
        Reason::InvalidTarget,
        Reason::InvalidDeliverAt,
        Reason::InvalidId,
        Reason::DueTooFar,
        Reason::TimestampInFuture,
        Reason::TargetIsInternal,
        Reason::TargetNotAllowed,
        Reason::TargetNotFound,
        Reason::TargetUnauthorized,
        Reason::RecordTooLarge,
        Reason::Rejected,
    ];

    /// The stable code written to `delay-dlq-reason` and used as the metrics label.
    pub fn code(self) -> &'static str {
        match self {
            Reason::MissingTarget => "missing-target",
            Reason::InvalidTarget => "invalid-target",
            Reason::InvalidDeliverAt => "invalid-deliver-at",
            Reason::InvalidId => "invalid-id",
            Reason::DueTooFar => "due-too-far",
            Reason::TimestampInFuture => "timestamp-in-future",
            Reason::TargetIsInternal => "target-is-internal",
            Reason::TargetNotAllowed => "target-not-allowed",
            Reason::TargetNotFound => "target-not-found",
            Reason::TargetUnauthorized => "target-unauthorized",
            Reason::RecordTooLarge => "record-too-large",
            Reason::Rejected => "rejected",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// A decision to dead-letter a record: the reason and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Why.
    pub reason: Reason,
    /// A sentence for people, written to `delay-dlq-detail`.
    pub detail: String,
}

impl DeadLetter {
    /// A dead letter for `reason`, with `detail` for people.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        DeadLetter {
            reason,
            detail: detail.into(),
        }
    }
}

impl From<headers::HeaderProblem> for DeadLetter {
    fn from(p: headers::HeaderProblem) -> Self {
        match p {
            headers::HeaderProblem::MissingTarget(d) => DeadLetter::new(Reason::MissingTarget, d),
            headers::HeaderProblem::InvalidTarget(d) => DeadLetter::new(Reason::InvalidTarget, d),
            headers::HeaderProblem::InvalidDeliverAt(d) => {
                DeadLetter::new(Reason::InvalidDeliverAt, d)
            }
        }
    }
}

/// Where a record was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
    /// The record's timestamp (epoch ms), if it had one.
    pub timestamp: Option<i64>,
}

/// How much of a record its dead letter leaves out to fit the dead-letter
/// topic, each step including the ones before: a dead letter the broker finds
/// too large is sent again one step further, and its headers say what is missing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Strip {
    /// Leave nothing out: the whole record.
    #[default]
    Nothing,
    /// Leave out the value.
    Value,
    /// Leave out the value and the original headers.
    Headers,
    /// Leave out the value, the original headers and the key.
    Key,
}

impl Strip {
    /// The next step, or `None` when only the router's own headers are left.
    pub fn next(self) -> Option<Strip> {
        match self {
            Strip::Nothing => Some(Strip::Value),
            Strip::Value => Some(Strip::Headers),
            Strip::Headers => Some(Strip::Key),
            Strip::Key => None,
        }
    }

    /// Whether the value is left out at this step.
    pub fn drops_value(self) -> bool {
        self >= Strip::Value
    }

    /// Whether the original headers are left out at this step.
    pub fn drops_headers(self) -> bool {
        self >= Strip::Headers
    }

    /// Whether the key is left out at this step.
    pub fn drops_key(self) -> bool {
        self >= Strip::Key
    }
}

/// What a dead letter left out: the value's and the key's sizes in bytes, the number of headers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// The original value's size, if it was left out.
    pub value: Option<usize>,
    /// How many original headers there were, if they were left out.
    pub headers: Option<usize>,
    /// The original key's size, if it was left out.
    pub key: Option<usize>,
}

/// The dead-letter record's headers: the original ones first (unless they were
/// dropped), then the reason, the detail, the origin, the time, and what was left out.
pub fn dead_letter_headers(
    original: Option<&OwnedHeaders>,
    dl: &DeadLetter,
    origin: &Origin,
    now_ms: i64,
    dropped: Dropped,
) -> OwnedHeaders {
    let mut h = match dropped.headers {
        Some(_) => OwnedHeaders::new(),
        None => original.cloned().unwrap_or_default(),
    };
    let mut add = |key: &str, value: &str| {
        h = std::mem::take(&mut h).insert(Header {
            key,
            value: Some(value),
        });
    };
    add(headers::DLQ_REASON, dl.reason.code());
    add(headers::DLQ_DETAIL, &headers::shorten(&dl.detail));
    add(headers::DLQ_SOURCE_TOPIC, &origin.topic);
    add(headers::DLQ_SOURCE_PARTITION, &origin.partition.to_string());
    add(headers::DLQ_SOURCE_OFFSET, &origin.offset.to_string());
    if let Some(ts) = origin.timestamp {
        add(headers::DLQ_SOURCE_TIMESTAMP, &ts.to_string());
    }
    add(headers::DLQ_TIME, &now_ms.to_string());
    for (key, size) in [
        (headers::DLQ_VALUE_DROPPED, dropped.value),
        (headers::DLQ_HEADERS_DROPPED, dropped.headers),
        (headers::DLQ_KEY_DROPPED, dropped.key),
    ] {
        if let Some(size) = size {
            add(key, &size.to_string());
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_kebab_case() {
        let mut codes: Vec<_> = Reason::ALL.iter().map(|r| r.code()).collect();
        assert!(codes
            .iter()
            .all(|c| c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '-')));
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Reason::ALL.len());
    }

    #[test]
    fn headers_say_why_and_where() {
        let original = OwnedHeaders::new().insert(Header {
            key: "app",
            value: Some("1"),
        });
        let dl = DeadLetter::new(
            Reason::InvalidDeliverAt,
            "delay-deliver-at is not ASCII decimal",
        );
        let origin = Origin {
            topic: "delay-5s".into(),
            partition: 3,
            offset: 77,
            timestamp: Some(1_000),
        };
        let dropped = Dropped {
            value: Some(5),
            ..Dropped::default()
        };
        let h = dead_letter_headers(Some(&original), &dl, &origin, 2_000, dropped);
        let get = |k: &str| {
            headers::last(Some(h.as_borrowed()), k)
                .flatten()
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
        };
        assert_eq!(get("app").as_deref(), Some("1"));
        assert_eq!(
            get(headers::DLQ_REASON).as_deref(),
            Some("invalid-deliver-at")
        );
        assert_eq!(get(headers::DLQ_SOURCE_TOPIC).as_deref(), Some("delay-5s"));
        assert_eq!(get(headers::DLQ_SOURCE_PARTITION).as_deref(), Some("3"));
        assert_eq!(get(headers::DLQ_SOURCE_OFFSET).as_deref(), Some("77"));
        assert_eq!(get(headers::DLQ_SOURCE_TIMESTAMP).as_deref(), Some("1000"));
        assert_eq!(get(headers::DLQ_TIME).as_deref(), Some("2000"));
        assert_eq!(get(headers::DLQ_VALUE_DROPPED).as_deref(), Some("5"));
        assert!(get(headers::DLQ_DETAIL).unwrap().contains("ASCII"));
    }

    #[test]
    fn stripping_goes_value_then_headers_then_key_and_says_so() {
        let steps: Vec<Strip> = std::iter::successors(Some(Strip::Nothing), |s| s.next()).collect();
        assert_eq!(
            steps,
            [Strip::Nothing, Strip::Value, Strip::Headers, Strip::Key]
        );
        assert!(!Strip::Nothing.drops_value());
        assert!(Strip::Value.drops_value() && !Strip::Value.drops_headers());
        assert!(Strip::Headers.drops_value() && Strip::Headers.drops_headers());
        assert!(!Strip::Headers.drops_key() && Strip::Key.drops_key());

        let original = OwnedHeaders::new().insert(Header {
            key: "big",
            value: Some(&[0u8; 64][..]),
        });
        let dl = DeadLetter::new(Reason::RecordTooLarge, "too large");
        let origin = Origin {
            topic: "delay-1s".into(),
            partition: 0,
            offset: 1,
            timestamp: None,
        };
        let dropped = Dropped {
            value: Some(10),
            headers: Some(1),
            key: Some(3),
        };
        let h = dead_letter_headers(Some(&original), &dl, &origin, 5, dropped);
        let get = |k: &str| {
            headers::last(Some(h.as_borrowed()), k)
                .flatten()
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
        };
        assert_eq!(get("big"), None, "the original headers are left out");
        assert_eq!(
            get(headers::DLQ_REASON).as_deref(),
            Some("record-too-large")
        );
        assert_eq!(get(headers::DLQ_VALUE_DROPPED).as_deref(), Some("10"));
        assert_eq!(get(headers::DLQ_HEADERS_DROPPED).as_deref(), Some("1"));
        assert_eq!(get(headers::DLQ_KEY_DROPPED).as_deref(), Some("3"));
    }
}
