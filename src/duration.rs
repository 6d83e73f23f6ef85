//! Human-friendly durations (`500ms`, `30s`, `5m`, `1h30m`, `7d`) parsed to and
//! printed from whole milliseconds, with overflow and empty input rejected.

use crate::error::{Error, Result};

const UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
    ("w", 604_800_000),
];

/// Parses a duration such as `95m`, `1h 35m`, `250ms` or `7d` into milliseconds.
///
/// A bare number is rejected: a unit is always required, so `30` cannot be
/// misread as seconds or milliseconds.
pub fn parse_ms(input: &str) -> Result<u64> {
    let err = |reason: &str| Error::Duration {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total: u64 = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        if i == bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(err("expected a number"));
        }
        let number: u64 = s[start..i].parse().map_err(|_| err("number too large"))?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &s[unit_start..i];
        if unit.is_empty() {
            return Err(err("missing unit"));
        }
        let factor = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, f)| *f)
            .ok_or_else(|| err(&format!("unknown unit {unit:?}")))?;
        total = number
            .checked_mul(factor)
            .and_then(|v| total.checked_add(v))
            .filter(|v| *v <= i64::MAX as u64)
            .ok_or_else(|| err("too large"))?;
    }
    Ok(total)
}

/// Formats milliseconds in the largest units that divide it, e.g. `1h35m`, `1s`, `1500ms`.
pub fn format_ms(ms: u64) -> String {
    if ms == 0 {
        return "0ms".to_string();
    }
    let mut out = String::new();
    let mut rest = ms;
    for (name, factor) in UNITS.iter().rev().filter(|(n, _)| *n != "w") {
        if rest >= *factor {
            out.push_str(&format!("{}{name}", rest / factor));
            rest %= factor;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_units() {
        assert_eq!(parse_ms("250ms").unwrap(), 250);
        assert_eq!(parse_ms("1s").unwrap(), 1_000);
        assert_eq!(parse_ms("5m").unwrap(), 300_000);
        assert_eq!(parse_ms("1h").unwrap(), 3_600_000);
        assert_eq!(parse_ms("7d").unwrap(), 604_800_000);
        assert_eq!(parse_ms("2w").unwrap(), 1_209_600_000);
    }

    #[test]
    fn parses_compound_and_spaced() {
        assert_eq!(parse_ms("1h30m").unwrap(), 5_400_000);
        assert_eq!(parse_ms(" 1h 35m ").unwrap(), 5_700_000);
        assert_eq!(parse_ms("1s500ms").unwrap(), 1_500);
        assert_eq!(parse_ms("0s").unwrap(), 0);
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            " ",
            "30",
            "s",
            "1x",
            "1.5s",
            "-1s",
            "1h-",
            "1 h",
            "ms5",
            "99999999999999999999s",
        ] {
            assert!(parse_ms(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn rejects_overflow_past_i64() {
        assert!(parse_ms("9223372036854775807ms").is_ok());
        assert!(parse_ms("9223372036854775808ms").is_err());
        assert!(parse_ms("106751991167w").is_err());
    }

    #[test]
    fn formats_in_largest_units() {
        assert_eq!(format_ms(0), "0ms");
        assert_eq!(format_ms(1), "1ms");
        assert_eq!(format_ms(1_000), "1s");
        assert_eq!(format_ms(1_500), "1s500ms");
        assert_eq!(format_ms(5_700_000), "1h35m");
        assert_eq!(format_ms(604_800_000), "7d");
    }

    #[test]
    fn format_then_parse_round_trips() {
        for ms in [1, 999, 1_000, 61_001, 3_600_000, 90_061_001, 604_800_000] {
            assert_eq!(parse_ms(&format_ms(ms)).unwrap(), ms);
        }
    }
}
