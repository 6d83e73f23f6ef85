//! Resume points in exactly-once mode: which records of a partition a
//! committed transaction finished, written in the committed offset's metadata
//! and read back (whatever another tool left there) without failing.

use std::ffi::CString;

use rdkafka::{Offset, TopicPartitionList};

use super::MAX_OPEN;

/// Where a partition's committed offset says to resume, if it has one.
/// Metadata that is not UTF-8 (another tool's) resumes with nothing to skip,
/// like any metadata [`Resume::decode`] does not recognise.
pub fn committed_resume(tpl: &TopicPartitionList, topic: &str, partition: i32) -> Option<Resume> {
    let Offset::Offset(offset) = tpl.find_partition(topic, partition)?.offset() else {
        return None;
    };
    match std::str::from_utf8(raw_metadata(tpl, topic, partition)) {
        Ok(text) => Some(Resume::decode(offset, text)),
        Err(e) => {
            tracing::warn!(topic, partition, offset, error = %e, "the committed offset's metadata is not UTF-8 (not the router's); resuming with nothing to skip");
            Some(Resume::at(offset))
        }
    }
}

/// The metadata bytes of a partition in `tpl` (rust-rdkafka's
/// `TopicPartitionListElem::metadata` panics when they are not UTF-8).
fn raw_metadata<'a>(tpl: &'a TopicPartitionList, topic: &str, partition: i32) -> &'a [u8] {
    let Ok(topic) = CString::new(topic) else {
        return &[];
    };
    // SAFETY: `find` returns null or a pointer to an element of the list,
    // which lives (unmodified, as it is borrowed) as long as `tpl`; its
    // `metadata` is null or a buffer of `metadata_size` bytes the element owns.
    unsafe {
        let elem = rdkafka::bindings::rd_kafka_topic_partition_list_find(
            tpl.ptr(),
            topic.as_ptr(),
            partition,
        );
        if elem.is_null() || (*elem).metadata.is_null() || (*elem).metadata_size == 0 {
            return &[];
        }
        std::slice::from_raw_parts((*elem).metadata as *const u8, (*elem).metadata_size)
    }
}

/// Where a partition resumes after a rewind or a new owner's start: from
/// `offset`, skipping every offset in `offset..hi` except those in `open`
/// (records that were still unfinished when the transaction committed).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resume {
    /// The offset reading resumes from.
    pub offset: i64,
    /// The end of the range already done (exclusive): offsets below it are skipped unless in `open`.
    pub hi: i64,
    /// Ascending, each in `offset..hi`.
    pub open: Vec<i64>,
}

const TAG: &str = "kdr1";

impl Resume {
    /// A resume point with nothing to skip.
    pub fn at(offset: i64) -> Self {
        Resume {
            offset,
            hi: offset,
            open: Vec::new(),
        }
    }

    /// Whether the record at `offset` was finished in a committed transaction.
    pub fn skips(&self, offset: i64) -> bool {
        offset >= self.offset && offset < self.hi && self.open.binary_search(&offset).is_err()
    }

    /// The committed-offset metadata: `kdr1 <hi> <open>...`, each number in
    /// base 36 as the distance from the previous one (from `offset` first),
    /// so even twice [`MAX_OPEN`] records (a task lists its own unfinished
    /// records plus those of the point it resumed from) fit within 4096 bytes.
    pub fn encode(&self) -> String {
        let mut out = format!("{TAG} {}", base36(self.hi - self.offset));
        let mut prev = self.offset;
        for &o in &self.open {
            out.push(' ');
            out.push_str(&base36(o - prev));
            prev = o;
        }
        out
    }

    /// Reads metadata written by [`Resume::encode`] for a committed `offset`;
    /// anything else (no metadata, another tool's, corrupt) resumes with
    /// nothing to skip, which may duplicate but never loses a record.
    pub fn decode(offset: i64, metadata: &str) -> Self {
        Self::parse(offset, metadata).unwrap_or_else(|| Resume::at(offset))
    }

    fn parse(offset: i64, metadata: &str) -> Option<Self> {
        let mut parts = metadata.split(' ');
        if parts.next()? != TAG {
            return None;
        }
        let hi = offset.checked_add(unbase36(parts.next()?)?)?;
        let mut open = Vec::new();
        let mut prev = offset;
        for (i, p) in parts.enumerate() {
            let d = unbase36(p)?;
            if i > 0 && d == 0 {
                return None;
            }
            prev = prev.checked_add(d)?;
            if prev >= hi || open.len() >= 2 * MAX_OPEN {
                return None;
            }
            open.push(prev);
        }
        Some(Resume { offset, hi, open })
    }
}

fn base36(mut n: i64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    if n <= 0 {
        return "0".into();
    }
    let mut buf = Vec::new();
    while n > 0 {
        buf.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    buf.reverse();
    String::from_utf8(buf).expect("ascii digits")
}

fn unbase36(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 13 {
        return None;
    }
    i64::from_str_radix(s, 36).ok().filter(|n| *n >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_round_trips_and_skips_only_finished_offsets() {
        let r = Resume {
            offset: 1_000,
            hi: 1_050,
            open: vec![1_000, 1_007, 1_049],
        };
        let text = r.encode();
        assert_eq!(text, "kdr1 1e 0 7 16");
        assert_eq!(Resume::decode(1_000, &text), r);
        assert!(!r.skips(999), "before the committed offset");
        assert!(!r.skips(1_000), "open");
        assert!(r.skips(1_001));
        assert!(!r.skips(1_007), "open");
        assert!(r.skips(1_048));
        assert!(!r.skips(1_049), "open");
        assert!(!r.skips(1_050), "not yet read when committed");
    }

    #[test]
    fn nothing_to_skip_without_our_metadata() {
        for junk in [
            "",
            "kdr1",
            "kdr2 5",
            "kdr1 -5",
            "kdr1 5 9",
            "kdr1 5 1 0",
            "kdr1 zzzzzzzzzzzzzz",
            "hello",
        ] {
            let r = Resume::decode(10, junk);
            assert_eq!(r, Resume::at(10), "{junk:?}");
            assert!(!r.skips(10) && !r.skips(11));
        }
    }

    #[test]
    fn the_largest_resume_fits_kafkas_metadata_limit() {
        let offset = i64::MAX / 4;
        let open: Vec<i64> = (0..2 * MAX_OPEN as i64)
            .map(|i| offset + i * 1_000_000_000_000)
            .collect();
        let r = Resume {
            offset,
            hi: *open.last().unwrap() + 1_000_000_000,
            open,
        };
        let text = r.encode();
        assert!(text.len() < 4096, "{} bytes", text.len());
        assert_eq!(Resume::decode(offset, &text), r);
    }

    #[test]
    fn committed_metadata_that_is_not_utf8_resumes_with_nothing_to_skip() {
        let mut tpl = TopicPartitionList::new();
        let mut elem = tpl.add_partition("delay-1s", 0);
        elem.set_offset(Offset::Offset(42)).unwrap();
        elem.set_metadata("kdr1 5");
        assert_eq!(
            committed_resume(&tpl, "delay-1s", 0).map(|r| r.hi),
            Some(47)
        );
        // Another tool wrote bytes that are not UTF-8.
        let topic = CString::new("delay-1s").unwrap();
        // SAFETY: the element exists and owns a 6-byte metadata buffer.
        unsafe {
            let elem =
                rdkafka::bindings::rd_kafka_topic_partition_list_find(tpl.ptr(), topic.as_ptr(), 0);
            let bytes = std::slice::from_raw_parts_mut((*elem).metadata as *mut u8, 6);
            bytes.copy_from_slice(&[0xff, 0xfe, b'k', b'd', b'r', 0x80]);
        }
        assert_eq!(committed_resume(&tpl, "delay-1s", 0), Some(Resume::at(42)));
        assert_eq!(committed_resume(&tpl, "delay-1s", 1), None);
    }
}
