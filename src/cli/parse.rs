//! The command line's value parsers (durations, sizes, times, headers), for
//! clap. Guarantee: a bad value is refused with a message that shows the
//! accepted form.

use std::time::Duration;

use crate::duration;

/// Parses `95m`, `1h30m`, `500ms` for clap.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse_ms(s)
        .map(Duration::from_millis)
        .map_err(|e| e.to_string())
}

/// A size in bytes: a number with an optional unit, `B`, `KiB`, `MiB` or `GiB`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 256MiB, 1GiB, 4096)"))?;
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {s:?}: use B, KiB, MiB or GiB"
            ))
        }
    };
    n.checked_mul(scale)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("{s:?} is not a size greater than zero that fits in memory"))
}

/// Parses an RFC 3339 time (`2026-12-01T10:00:00Z`; the `T` and zone may be loosened, as humantime's weak parser allows), for `--at` and `--until`.
pub fn parse_time(s: &str) -> Result<std::time::SystemTime, String> {
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{e}; expected RFC 3339, e.g. 2026-12-01T10:00:00Z"))
}

/// Splits `key=value`.
pub fn parse_header(pair: &str) -> Result<(String, Vec<u8>), String> {
    match pair.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.as_bytes().to_vec())),
        _ => Err(format!("{pair:?} is not key=value")),
    }
}
