//! Every timestamp on the wire is UTC `YYYY-MM-DDTHH:MM:SS.sssZ` (`protocol::EventFrame`).
//!
//! Postgres' `to_json` writes a `timestamp` as `2026-11-23T13:40:21.18585` and a
//! `timestamptz` in the writer's `TimeZone` (`2026-11-23T22:40:21.18585+09:00`).
//! The capture trigger keeps the row as Postgres wrote it (the log is the
//! writer's truth); rows are normalized here, on their way out: a naive
//! timestamp is UTC (PEARL's convention), an offset is applied. Dates and
//! every other value pass unchanged.
//!
//! Only a string of exactly that shape is touched. A text column holding such
//! a string is indistinguishable from a timestamp in JSON and goes out
//! normalized too; the value it names is the same instant.

use serde_json::Value;

/// Normalizes the timestamps among the top-level fields of a row.
pub fn normalize_row(row: &mut Value) {
    if let Value::Object(fields) = row {
        for value in fields.values_mut() {
            if let Value::String(text) = value {
                if let Some(utc) = to_utc_millis(text) {
                    *text = utc;
                }
            }
        }
    }
}

/// `text` as UTC with milliseconds, if it is a timestamp as Postgres writes it in JSON.
pub fn to_utc_millis(text: &str) -> Option<String> {
    let b = text.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut at = 19;
    let mut millis = 0;
    if b.get(at) == Some(&b'.') {
        let start = at + 1;
        at = start;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return None;
        }
        // Truncated to milliseconds, as `to_char(.., 'MS')` does for event timestamps.
        millis = (start..start + 3).fold(0, |n, i| {
            n * 10
                + b.get(i)
                    .filter(|d| d.is_ascii_digit())
                    .map_or(0, |d| i64::from(d - b'0'))
        });
    }
    let offset_seconds = match b.get(at) {
        None => 0,
        Some(b'Z') if at + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) => {
            // `hh`, `hh:mm` or `hh:mm:ss`.
            let parts = (b.len() - at) / 3;
            if !(b.len() - at).is_multiple_of(3) || parts > 3 {
                return None;
            }
            let mut value = 0;
            for (k, unit) in [3600, 60, 1].into_iter().take(parts).enumerate() {
                let start = at + 1 + 3 * k;
                if k > 0 && b[start - 1] != b':' {
                    return None;
                }
                value += num(start..start + 2)? * unit;
            }
            if *sign == b'+' {
                value
            } else {
                -value
            }
        }
        Some(_) => return None,
    };
    let local = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    let utc = local - offset_seconds;
    let (y, _, _) = civil_from_days(utc.div_euclid(86_400));
    if !(0..=9999).contains(&y) {
        return None;
    }
    Some(from_unix_millis(utc * 1000 + millis))
}

/// Milliseconds since 1970 as UTC `YYYY-MM-DDTHH:MM:SS.sssZ` (years 0 to 9999).
pub fn from_unix_millis(ms: i64) -> String {
    let (secs, millis) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, secs) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    // Every event carries one or two of these: digits by hand, not `format!`.
    let mut text = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut n: i64| {
        for i in (at..at + width).rev() {
            text[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, y.clamp(0, 9999));
    put(5, 2, m);
    put(8, 2, d);
    put(11, 2, secs / 3600);
    put(14, 2, secs % 3600 / 60);
    put(17, 2, secs % 60);
    put(20, 3, millis);
    String::from_utf8(text.to_vec()).expect("ASCII digits")
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naive_timestamps_are_utc() {
        assert_eq!(
            to_utc_millis("2026-11-23T13:40:21.18585").as_deref(),
            Some("2026-11-23T13:40:21.185Z")
        );
        assert_eq!(
            to_utc_millis("2026-11-23T13:40:21").as_deref(),
            Some("2026-11-23T13:40:21.000Z")
        );
        assert_eq!(
            to_utc_millis("2026-11-23T13:40:21.1").as_deref(),
            Some("2026-11-23T13:40:21.100Z")
        );
    }

    #[test]
    fn offsets_are_applied_across_days_months_and_years() {
        assert_eq!(
            to_utc_millis("2026-11-24T06:40:21.18585+09:00").as_deref(),
            Some("2026-11-23T21:40:21.185Z")
        );
        assert_eq!(
            to_utc_millis("2026-01-01T02:00:00+05").as_deref(),
            Some("2025-12-31T21:00:00.000Z")
        );
        assert_eq!(
            to_utc_millis("2024-02-28T23:30:00-01:00").as_deref(),
            Some("2024-02-29T00:30:00.000Z")
        );
        assert_eq!(
            to_utc_millis("1900-01-01T00:00:00+00:19:32").as_deref(),
            Some("1899-12-31T23:40:28.000Z")
        );
        assert_eq!(
            to_utc_millis("2026-11-23T13:40:21.185Z").as_deref(),
            Some("2026-11-23T13:40:21.185Z")
        );
    }

    #[test]
    fn unix_millis_are_written_in_full() {
        assert_eq!(from_unix_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(from_unix_millis(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(from_unix_millis(1_795_786_821_185), "2026-11-27T13:40:21.185Z");
        assert_eq!(from_unix_millis(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn everything_else_passes_unchanged() {
        for text in [
            "2026-11-23",
            "ONC-001",
            "2026-11-23 13:40:21",
            "2026-11-23T13:40",
            "2026-13-23T13:40:21",
            "2026-11-23T13:40:21 BC",
            "2026-11-23T13:40:21.",
            "2026-11-23T13:40:21+9",
            "2026-11-23T13:40:21+0900",
            "2026-11-23T13:40:21+09:0",
            "2026-11-23T13:40:21+09-00",
            "infinity",
            "",
        ] {
            assert_eq!(to_utc_millis(text), None, "{text}");
        }
        let mut row = serde_json::json!({"id": 1, "d": "2026-01-31", "t": "2026-01-31T10:00:00", "n": null});
        normalize_row(&mut row);
        assert_eq!(
            row,
            serde_json::json!({"id": 1, "d": "2026-01-31", "t": "2026-01-31T10:00:00.000Z", "n": null})
        );
    }
}
