//! The public wire contract: header names, how `delay-target` and
//! `delay-deliver-at` are read, and the headers the router adds. Reading never
//! panics on hostile input (non-UTF-8 keys or values, duplicates, nulls).

use std::ffi::CStr;

use rdkafka::bindings as rdsys;
use rdkafka::message::{BorrowedHeaders, Header, OwnedHeaders};

use crate::config::validate_topic_name;

/// Required: the destination topic, UTF-8.
pub const TARGET: &str = "delay-target";
/// Optional: absolute due time, Unix epoch milliseconds, ASCII decimal.
pub const DELIVER_AT: &str = "delay-deliver-at";
/// Added by the router on the first forward or delivery: the record's original
/// timestamp (epoch ms), because forwarded and delivered records carry the
/// router's produce time as their timestamp.
pub const ORIGINAL_TIMESTAMP: &str = "delay-original-timestamp";

/// Dead-letter headers: a reason code (see [`crate::dead_letter::Reason`]) ...
pub const DLQ_REASON: &str = "delay-dlq-reason";
/// ... a sentence for people ...
pub const DLQ_DETAIL: &str = "delay-dlq-detail";
/// ... and where the record came from.
pub const DLQ_SOURCE_TOPIC: &str = "delay-dlq-source-topic";
/// The source partition.
pub const DLQ_SOURCE_PARTITION: &str = "delay-dlq-source-partition";
/// The source offset.
pub const DLQ_SOURCE_OFFSET: &str = "delay-dlq-source-offset";
/// The source record's timestamp (epoch ms), when it had one.
pub const DLQ_SOURCE_TIMESTAMP: &str = "delay-dlq-source-timestamp";
/// When the router dead-lettered it (epoch ms).
pub const DLQ_TIME: &str = "delay-dlq-time";
/// Present when the value was too large even for the dead-letter topic and was
/// left out: the original value size in bytes.
pub const DLQ_VALUE_DROPPED: &str = "delay-dlq-value-dropped-bytes";
/// Present when the dead letter was still too large without its value and the
/// original headers were left out too: how many there were.
pub const DLQ_HEADERS_DROPPED: &str = "delay-dlq-headers-dropped-count";
/// Present when even that was too large and the key was left out: its size in bytes.
pub const DLQ_KEY_DROPPED: &str = "delay-dlq-key-dropped-bytes";

/// One header as stored in the record: the key as raw bytes, the value or null.
pub type RawHeader<'a> = (&'a [u8], Option<&'a [u8]>);

/// Iterates headers without assuming their keys are UTF-8 (rdkafka's own
/// accessor panics on such keys, and a producer can send them).
pub fn iter(headers: &BorrowedHeaders) -> impl Iterator<Item = RawHeader<'_>> {
    let ptr = headers as *const BorrowedHeaders as *const rdsys::rd_kafka_headers_t;
    // SAFETY: `BorrowedHeaders` is rdkafka's zero-sized view of an
    // `rd_kafka_headers_t`; its address is the native pointer (rdkafka casts it
    // the same way). The returned slices borrow from `headers`.
    let count = unsafe { rdsys::rd_kafka_header_cnt(ptr) };
    (0..count).filter_map(move |idx| {
        let mut name = std::ptr::null();
        let mut value = std::ptr::null();
        let mut size = 0usize;
        let err =
            unsafe { rdsys::rd_kafka_header_get_all(ptr, idx, &mut name, &mut value, &mut size) };
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            return None;
        }
        // SAFETY: librdkafka returns a NUL-terminated name and a value of `size` bytes (or null).
        let key = unsafe { CStr::from_ptr(name) }.to_bytes();
        let value = (!value.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(value as *const u8, size) });
        Some((key, value))
    })
}

/// The value of the last header named `name` (as Java's `Headers.lastHeader`):
/// `None` when absent, `Some(None)` when present with a null value.
pub fn last<'a>(headers: Option<&'a BorrowedHeaders>, name: &str) -> Option<Option<&'a [u8]>> {
    iter(headers?)
        .filter(|(k, _)| *k == name.as_bytes())
        .map(|(_, v)| v)
        .last()
}

/// Where and when a record is to be delivered, read from its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The topic to deliver to: a legal topic name.
    pub target: String,
    /// The absolute due time (epoch ms) from `delay-deliver-at`, if given.
    pub deliver_at: Option<i64>,
}

/// Why a record's headers cannot be routed; the code goes into `delay-dlq-reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderProblem {
    /// No `delay-target`, or an empty or null one; says which.
    MissingTarget(String),
    /// `delay-target` is not UTF-8 or not a legal topic name; says why.
    InvalidTarget(String),
    /// `delay-deliver-at` is not plain ASCII decimal epoch milliseconds; says why.
    InvalidDeliverAt(String),
}

/// Reads `delay-target` and `delay-deliver-at`. A header given more than once
/// counts with its last value.
pub fn parse_route(headers: Option<&BorrowedHeaders>) -> Result<Route, HeaderProblem> {
    let target = match last(headers, TARGET) {
        None => return Err(HeaderProblem::MissingTarget(format!("no {TARGET} header"))),
        Some(None) => {
            return Err(HeaderProblem::MissingTarget(format!(
                "{TARGET} header is null"
            )))
        }
        Some(Some([])) => {
            return Err(HeaderProblem::MissingTarget(format!(
                "{TARGET} header is empty"
            )))
        }
        Some(Some(bytes)) => match std::str::from_utf8(bytes) {
            Ok(s) => s,
            Err(_) => {
                return Err(HeaderProblem::InvalidTarget(format!(
                    "{TARGET} is not UTF-8 ({} bytes)",
                    bytes.len()
                )))
            }
        },
    };
    if let Err(problem) = validate_topic_name(target) {
        return Err(HeaderProblem::InvalidTarget(format!(
            "{TARGET}: {}",
            shorten(&problem)
        )));
    }
    let deliver_at = match last(headers, DELIVER_AT) {
        None => None,
        Some(value) => Some(parse_epoch_ms(value).map_err(HeaderProblem::InvalidDeliverAt)?),
    };
    Ok(Route {
        target: target.to_string(),
        deliver_at,
    })
}

/// Parses a `delay-deliver-at` value: ASCII decimal digits only (no sign, no
/// spaces), a non-negative epoch-millisecond count that fits in an `i64`.
pub fn parse_epoch_ms(value: Option<&[u8]>) -> Result<i64, String> {
    let bytes = value.ok_or_else(|| format!("{DELIVER_AT} header is null"))?;
    if bytes.is_empty() {
        return Err(format!("{DELIVER_AT} header is empty"));
    }
    if !bytes.iter().all(u8::is_ascii_digit) {
        return Err(format!(
            "{DELIVER_AT} is not ASCII decimal epoch milliseconds: {}",
            shorten(&String::from_utf8_lossy(bytes))
        ));
    }
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| {
            format!(
                "{DELIVER_AT} overflows: {}",
                shorten(&String::from_utf8_lossy(bytes))
            )
        })
}

/// Cuts text from records to a length safe for logs and headers.
pub fn shorten(text: &str) -> String {
    const MAX: usize = 200;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}

/// The headers of a forwarded or delivered record: all the original ones, plus
/// `delay-original-timestamp` unless an earlier hop already added it.
pub fn outgoing(original: Option<&OwnedHeaders>, original_timestamp: Option<i64>) -> OwnedHeaders {
    let has_original = original
        .map(|h| iter(h.as_borrowed()).any(|(k, _)| k == ORIGINAL_TIMESTAMP.as_bytes()))
        .unwrap_or(false);
    let headers = original.cloned().unwrap_or_default();
    match original_timestamp {
        Some(ts) if !has_original => headers.insert(Header {
            key: ORIGINAL_TIMESTAMP,
            value: Some(&ts.to_string()),
        }),
        _ => headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdrs(pairs: &[(&str, Option<&[u8]>)]) -> OwnedHeaders {
        pairs.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header { key: k, value: *v })
        })
    }

    fn route(pairs: &[(&str, Option<&[u8]>)]) -> Result<Route, HeaderProblem> {
        let h = hdrs(pairs);
        parse_route(Some(h.as_borrowed()))
    }

    #[test]
    fn reads_target_and_deadline() {
        let r = route(&[
            (TARGET, Some(b"orders")),
            (DELIVER_AT, Some(b"1764000000000")),
        ])
        .unwrap();
        assert_eq!(r.target, "orders");
        assert_eq!(r.deliver_at, Some(1_764_000_000_000));
        let r = route(&[(TARGET, Some(b"orders"))]).unwrap();
        assert_eq!(r.deliver_at, None);
    }

    #[test]
    fn the_last_duplicate_wins() {
        let r = route(&[
            (TARGET, Some(b"a")),
            (TARGET, Some(b"b")),
            (DELIVER_AT, Some(b"1")),
            (DELIVER_AT, Some(b"2")),
        ])
        .unwrap();
        assert_eq!(
            r,
            Route {
                target: "b".into(),
                deliver_at: Some(2)
            }
        );
        assert!(matches!(
            route(&[(TARGET, Some(b"a")), (TARGET, None)]),
            Err(HeaderProblem::MissingTarget(_))
        ));
    }

    #[test]
    fn a_missing_or_bad_target_is_a_problem() {
        assert!(matches!(
            parse_route(None),
            Err(HeaderProblem::MissingTarget(_))
        ));
        assert!(matches!(route(&[]), Err(HeaderProblem::MissingTarget(_))));
        assert!(matches!(
            route(&[(TARGET, None)]),
            Err(HeaderProblem::MissingTarget(_))
        ));
        assert!(matches!(
            route(&[(TARGET, Some(b""))]),
            Err(HeaderProblem::MissingTarget(_))
        ));
        assert!(matches!(
            route(&[(TARGET, Some(b"\xff\xfe"))]),
            Err(HeaderProblem::InvalidTarget(_))
        ));
        assert!(matches!(
            route(&[(TARGET, Some(b"a b"))]),
            Err(HeaderProblem::InvalidTarget(_))
        ));
        let long = vec![b'a'; 300];
        assert!(matches!(
            route(&[(TARGET, Some(&long))]),
            Err(HeaderProblem::InvalidTarget(_))
        ));
    }

    #[test]
    fn deadlines_must_be_plain_decimal() {
        for bad in [
            &b""[..],
            b"-5",
            b"+5",
            b" 5",
            b"5 ",
            b"1.5",
            b"0x10",
            b"\xff",
            b"99999999999999999999",
            b"9223372036854775808",
        ] {
            let r = route(&[(TARGET, Some(b"t")), (DELIVER_AT, Some(bad))]);
            assert!(
                matches!(r, Err(HeaderProblem::InvalidDeliverAt(_))),
                "{bad:?}: {r:?}"
            );
        }
        assert!(matches!(
            route(&[(TARGET, Some(b"t")), (DELIVER_AT, None)]),
            Err(HeaderProblem::InvalidDeliverAt(_))
        ));
        assert_eq!(parse_epoch_ms(Some(b"0")), Ok(0));
        assert_eq!(parse_epoch_ms(Some(b"0009")), Ok(9));
        assert_eq!(parse_epoch_ms(Some(b"9223372036854775807")), Ok(i64::MAX));
    }

    #[test]
    fn outgoing_headers_keep_everything_and_add_the_original_timestamp_once() {
        let h = hdrs(&[
            (TARGET, Some(b"t")),
            ("trace", None),
            ("x", Some(b"\x00\x01")),
        ]);
        let out = outgoing(Some(&h), Some(42));
        let all: Vec<_> = iter(out.as_borrowed())
            .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(
            all,
            vec![
                (b"delay-target".to_vec(), Some(b"t".to_vec())),
                (b"trace".to_vec(), None),
                (b"x".to_vec(), Some(vec![0, 1])),
                (ORIGINAL_TIMESTAMP.as_bytes().to_vec(), Some(b"42".to_vec())),
            ]
        );
        let again = outgoing(Some(&out), Some(99));
        assert_eq!(
            last(Some(again.as_borrowed()), ORIGINAL_TIMESTAMP),
            Some(Some(&b"42"[..]))
        );
        assert_eq!(iter(again.as_borrowed()).count(), 4);
        let none = outgoing(None, Some(7));
        assert_eq!(
            last(Some(none.as_borrowed()), ORIGINAL_TIMESTAMP),
            Some(Some(&b"7"[..]))
        );
    }

    #[test]
    fn shorten_respects_char_boundaries() {
        let s = "é".repeat(300);
        let out = shorten(&s);
        assert!(out.ends_with("(600 bytes)"));
        assert_eq!(shorten("abc"), "abc");
    }
}
