//! Reading one record of the cancel topic: the wire contract of a cancellation
//! as a pure function. Guarantees: every record decodes to a cancellation, a
//! withdrawal, or a refusal with a reason and a sentence; nothing in a record
//! (missing or long key, bad header, hostile bytes) can panic.

use crate::headers::{self, shorten};

/// Header of a delayed record naming it, and key of its cancellation: 1 to 255 bytes.
pub const ID_HEADER: &str = "delay-id";
/// Header of a cancellation: when it may be forgotten, epoch ms, ASCII decimal.
pub const UNTIL_HEADER: &str = "delay-cancel-until";
/// The longest id, in bytes.
pub const MAX_ID_LEN: usize = 255;
/// How far past the cancel topic's retention an expiry may lie (clock skew
/// between the producer and the router).
pub const CLOCK_SLACK_MS: i64 = 300_000;

/// What a cancel-topic record asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancellation<'a> {
    /// Do not forward or deliver records with this id until `until_ms`.
    Cancel {
        /// The `delay-id` (the record's key).
        id: &'a [u8],
        /// When the cancellation may be forgotten (epoch ms, `delay-cancel-until`).
        until_ms: i64,
    },
    /// A null value: forget an earlier cancellation of this id.
    Withdraw {
        /// The `delay-id` (the record's key).
        id: &'a [u8],
    },
}

/// Why a cancel-topic record was refused; the code is the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No key, or an empty one.
    MissingId,
    /// A key longer than 255 bytes.
    IdTooLong,
    /// `delay-cancel-until` null, empty, or not ASCII decimal epoch ms.
    InvalidUntil,
    /// `delay-cancel-until` lies past the cancel topic's retention: a reader
    /// starting later would no longer find it, so instances would disagree.
    UntilTooFar,
}

impl Refusal {
    /// Every refusal (the metrics create a series for each).
    pub const ALL: [Refusal; 4] = [
        Refusal::MissingId,
        Refusal::IdTooLong,
        Refusal::InvalidUntil,
        Refusal::UntilTooFar,
    ];

    /// Whether the record's key was a valid id (the refusal is about its
    /// `delay-cancel-until`): as the id's latest record it withdraws an
    /// earlier cancellation of the id.
    pub fn has_valid_id(self) -> bool {
        matches!(self, Refusal::InvalidUntil | Refusal::UntilTooFar)
    }

    /// The stable code used as the metrics label (`reason`).
    pub fn code(self) -> &'static str {
        match self {
            Refusal::MissingId => "missing-id",
            Refusal::IdTooLong => "id-too-long",
            Refusal::InvalidUntil => "invalid-until",
            Refusal::UntilTooFar => "until-too-far",
        }
    }
}

/// A refusal with a sentence for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Why.
    pub reason: Refusal,
    /// A sentence for the log.
    pub detail: String,
}

fn refused(reason: Refusal, detail: String) -> Refused {
    Refused { reason, detail }
}

/// Checks an id: 1 to 255 bytes.
pub fn check_id(id: Option<&[u8]>) -> Result<&[u8], Refused> {
    match id {
        None => Err(refused(Refusal::MissingId, "no id (null key)".into())),
        Some([]) => Err(refused(Refusal::MissingId, "empty id".into())),
        Some(id) if id.len() > MAX_ID_LEN => Err(refused(
            Refusal::IdTooLong,
            format!("id of {} bytes, longer than {MAX_ID_LEN}", id.len()),
        )),
        Some(id) => Ok(id),
    }
}

/// The limits a cancellation is checked against, from the topics file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// `max-delay`: the default lifetime of a cancellation.
    pub max_delay_ms: i64,
    /// The cancel topic's retention.
    pub retention_ms: i64,
}

/// Decodes a cancel-topic record. `until` is the last `delay-cancel-until`
/// header (`None` absent, `Some(None)` null); without it a cancellation lasts
/// `max-delay` from the record's timestamp (or from `now_ms` without one).
pub fn decode<'a>(
    key: Option<&'a [u8]>,
    value_is_null: bool,
    until: Option<Option<&[u8]>>,
    timestamp_ms: Option<i64>,
    rules: Rules,
    now_ms: i64,
) -> Result<Cancellation<'a>, Refused> {
    let id = check_id(key)?;
    if value_is_null {
        return Ok(Cancellation::Withdraw { id });
    }
    let until_ms = match until {
        None => timestamp_ms
            .filter(|t| *t >= 0)
            .unwrap_or(now_ms)
            .saturating_add(rules.max_delay_ms),
        Some(None) => {
            return Err(refused(
                Refusal::InvalidUntil,
                format!("{UNTIL_HEADER} header is null"),
            ))
        }
        Some(Some(bytes)) => parse_until(bytes)?,
    };
    // Measured from the record's own timestamp, so that every router decides
    // the same for the same record whenever it reads it.
    let written = timestamp_ms.filter(|t| *t >= 0).unwrap_or(now_ms);
    let latest = written
        .saturating_add(rules.retention_ms)
        .saturating_add(CLOCK_SLACK_MS);
    if until_ms > latest {
        return Err(refused(
            Refusal::UntilTooFar,
            format!(
                "{UNTIL_HEADER} {until_ms} is {} ms after the record's timestamp, past the cancel topic's retention of {} ms",
                until_ms.saturating_sub(written),
                rules.retention_ms
            ),
        ));
    }
    Ok(Cancellation::Cancel { id, until_ms })
}

fn parse_until(bytes: &[u8]) -> Result<i64, Refused> {
    let ok = !bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit);
    ok.then(|| std::str::from_utf8(bytes).ok()?.parse::<i64>().ok())
        .flatten()
        .ok_or_else(|| {
            refused(
                Refusal::InvalidUntil,
                format!(
                    "{UNTIL_HEADER} is not ASCII decimal epoch milliseconds: {:?}",
                    shorten(&String::from_utf8_lossy(bytes))
                ),
            )
        })
}

/// The `delay-id` of a delayed record: `Ok(None)` without one (the record
/// behaves as any other), `Err` when the header is there but null, empty or
/// longer than 255 bytes. A header given more than once counts with its last value.
pub fn delay_id(
    headers: Option<&rdkafka::message::BorrowedHeaders>,
) -> Result<Option<&[u8]>, Refused> {
    match headers::last(headers, ID_HEADER) {
        None => Ok(None),
        Some(value) => check_id(value).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders};

    const RULES: Rules = Rules {
        max_delay_ms: 1_000,
        retention_ms: 2_000,
    };

    fn d<'a>(
        key: Option<&'a [u8]>,
        null: bool,
        until: Option<Option<&[u8]>>,
    ) -> Result<Cancellation<'a>, Refused> {
        decode(key, null, until, Some(500), RULES, 10_000)
    }

    #[test]
    fn a_cancellation_takes_its_until_or_the_default() {
        assert_eq!(
            d(Some(b"o-1"), false, Some(Some(b"12000"))),
            Ok(Cancellation::Cancel {
                id: b"o-1",
                until_ms: 12_000
            })
        );
        // Without the header: the record's timestamp plus max-delay.
        assert_eq!(
            d(Some(b"o-1"), false, None),
            Ok(Cancellation::Cancel {
                id: b"o-1",
                until_ms: 1_500
            })
        );
        // Without a timestamp either: now plus max-delay.
        assert_eq!(
            decode(Some(b"x"), false, None, None, RULES, 10_000),
            Ok(Cancellation::Cancel {
                id: b"x",
                until_ms: 11_000
            })
        );
        // An expiry in the past decodes; the store then holds nothing for it.
        assert!(d(Some(b"x"), false, Some(Some(b"1"))).is_ok());
        let id = [7u8; 255];
        assert!(d(Some(&id), false, None).is_ok());
    }

    #[test]
    fn a_null_value_withdraws() {
        assert_eq!(
            d(Some(b"o-1"), true, Some(Some(b"garbage"))),
            Ok(Cancellation::Withdraw { id: b"o-1" })
        );
        assert_eq!(d(None, true, None).unwrap_err().reason, Refusal::MissingId);
    }

    #[test]
    fn malformed_records_are_refused_with_a_reason() {
        let long = [b'a'; 256];
        type Case<'a> = (Option<&'a [u8]>, Option<Option<&'a [u8]>>, Refusal);
        let cases: [Case; 10] = [
            (None, None, Refusal::MissingId),
            (Some(b""), None, Refusal::MissingId),
            (Some(&long), None, Refusal::IdTooLong),
            (Some(b"k"), Some(None), Refusal::InvalidUntil),
            (Some(b"k"), Some(Some(b"")), Refusal::InvalidUntil),
            (Some(b"k"), Some(Some(b"-5")), Refusal::InvalidUntil),
            (Some(b"k"), Some(Some(b"12 000")), Refusal::InvalidUntil),
            (Some(b"k"), Some(Some(b"\xff\xfe")), Refusal::InvalidUntil),
            (
                Some(b"k"),
                Some(Some(b"99999999999999999999")),
                Refusal::InvalidUntil,
            ),
            // The record's timestamp 500 + retention 2,000 + slack is the latest expiry accepted.
            (Some(b"k"), Some(Some(b"400000")), Refusal::UntilTooFar),
        ];
        for (key, until, reason) in cases {
            let r = d(key, false, until).unwrap_err();
            assert_eq!(r.reason, reason, "{key:?} {until:?}: {}", r.detail);
            assert!(!r.detail.is_empty());
        }
        let edge = (500 + 2_000 + CLOCK_SLACK_MS).to_string();
        assert!(d(Some(b"k"), false, Some(Some(edge.as_bytes()))).is_ok());
        let past = (500 + 2_000 + CLOCK_SLACK_MS + 1).to_string();
        // Whenever a router reads it (at once, or an hour later after a
        // restart), the same record gets the same answer.
        for now in [600, 10_000, 3_600_000] {
            let until = Some(Some(past.as_bytes()));
            let r = decode(Some(b"k"), false, until, Some(500), RULES, now);
            assert_eq!(r.unwrap_err().reason, Refusal::UntilTooFar, "read at {now}");
        }
        assert!(Refusal::InvalidUntil.has_valid_id() && Refusal::UntilTooFar.has_valid_id());
        assert!(!Refusal::MissingId.has_valid_id() && !Refusal::IdTooLong.has_valid_id());
        let codes: std::collections::BTreeSet<_> = Refusal::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), Refusal::ALL.len());
    }

    #[test]
    fn delayed_records_carry_an_optional_id() {
        let with = |v: Option<&[u8]>| {
            OwnedHeaders::new()
                .insert(Header {
                    key: "delay-target",
                    value: Some("t"),
                })
                .insert(Header {
                    key: ID_HEADER,
                    value: v,
                })
        };
        assert_eq!(delay_id(None), Ok(None));
        let none = OwnedHeaders::new().insert(Header {
            key: "x",
            value: Some("y"),
        });
        assert_eq!(delay_id(Some(none.as_borrowed())), Ok(None));
        let h = with(Some(b"order-7"));
        assert_eq!(delay_id(Some(h.as_borrowed())), Ok(Some(&b"order-7"[..])));
        for bad in [None, Some(&b""[..]), Some(&[0u8; 256][..])] {
            let h = with(bad);
            assert!(delay_id(Some(h.as_borrowed())).is_err(), "{bad:?}");
        }
    }
}
