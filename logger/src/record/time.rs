//! Civil-time helpers: RFC 3339 formatting with a per-second cache and a
//! parser for timestamps found at the start of a log line. No allocation, no
//! time-zone database (offsets are read from the text itself).

// Calendar arithmetic: every narrowing cast in this file is of a value already
// bounded (days 1..=31, months 1..=12, digits 0..=9, clamped years).
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) for days since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn push2(out: &mut [u8], v: u32) {
    out[0] = b'0' + (v / 10) as u8;
    out[1] = b'0' + (v % 10) as u8;
}

/// Formats `ms` (milliseconds since the epoch, UTC) as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
/// Keeps the formatted second and day so consecutive records cost a 3-digit
/// write, and records of the same day a time of day (no calendar arithmetic).
#[derive(Debug, Default)]
pub struct TsFormatter {
    sec: Option<i64>,
    day: Option<i64>,
    buf: [u8; 24],
}

impl TsFormatter {
    /// Appends the formatted timestamp (24 bytes) to `out`.
    pub fn push(&mut self, ms: i64, out: &mut Vec<u8>) {
        let sec = ms.div_euclid(1000);
        let milli = ms.rem_euclid(1000) as u32;
        if self.sec != Some(sec) {
            let days = sec.div_euclid(86_400);
            let sod = sec.rem_euclid(86_400) as u32;
            let b = &mut self.buf;
            if self.day != Some(days) {
                let (y, m, d) = civil_from_days(days);
                let y = y.clamp(0, 9999) as u32;
                push2(&mut b[0..2], y / 100);
                push2(&mut b[2..4], y % 100);
                b[4] = b'-';
                push2(&mut b[5..7], m);
                b[7] = b'-';
                push2(&mut b[8..10], d);
                b[10] = b'T';
                self.day = Some(days);
            }
            push2(&mut b[11..13], sod / 3600);
            b[13] = b':';
            push2(&mut b[14..16], (sod / 60) % 60);
            b[16] = b':';
            push2(&mut b[17..19], sod % 60);
            b[19] = b'.';
            b[23] = b'Z';
            self.sec = Some(sec);
        }
        self.buf[20] = b'0' + (milli / 100) as u8;
        self.buf[21] = b'0' + ((milli / 10) % 10) as u8;
        self.buf[22] = b'0' + (milli % 10) as u8;
        out.extend_from_slice(&self.buf);
    }
}

/// `(year, month, day)` of a UTC millisecond timestamp, for dated index names.
pub fn ymd(ms: i64) -> (i64, u32, u32) {
    civil_from_days(ms.div_euclid(86_400_000))
}

fn digits(b: &[u8], n: usize) -> Option<u32> {
    if b.len() < n {
        return None;
    }
    let mut v = 0u32;
    for &c in &b[..n] {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

/// Parses an RFC 3339 / ISO 8601 timestamp at the start of `s`
/// (`2024-05-01T12:00:00Z`, `2024-05-01 12:00:00.123+02:00`, or without a zone,
/// taken as UTC). Returns milliseconds since the epoch and the bytes consumed.
pub fn parse_leading_timestamp(s: &[u8]) -> Option<(i64, usize)> {
    if s.len() < 19 || s[4] != b'-' || s[7] != b'-' || s[13] != b':' || s[16] != b':' {
        return None;
    }
    if s[10] != b'T' && s[10] != b' ' {
        return None;
    }
    let y = digits(s, 4)?;
    let mo = digits(&s[5..], 2)?;
    let d = digits(&s[8..], 2)?;
    let h = digits(&s[11..], 2)?;
    let mi = digits(&s[14..], 2)?;
    let se = digits(&s[17..], 2)?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    let mut ms = 0u32;
    if i < s.len() && (s[i] == b'.' || s[i] == b',') {
        i += 1;
        let start = i;
        while i < s.len() && s[i].is_ascii_digit() {
            if i - start < 3 {
                ms = ms * 10 + u32::from(s[i] - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..3 {
            ms *= 10;
        }
    }
    let mut offset_s: i64 = 0;
    if i < s.len() {
        match s[i] {
            b'Z' | b'z' => i += 1,
            b'+' | b'-' => {
                let sign = if s[i] == b'+' { 1 } else { -1 };
                let oh = digits(&s[i + 1..], 2);
                let (om, len) = match (s.get(i + 3), digits(s.get(i + 4..).unwrap_or(&[]), 2)) {
                    (Some(b':'), Some(m)) => (Some(m), 6),
                    _ => (digits(s.get(i + 3..).unwrap_or(&[]), 2), 5),
                };
                if let (Some(oh), Some(om)) = (oh, om) {
                    offset_s = sign * (i64::from(oh) * 3600 + i64::from(om) * 60);
                    i += len;
                }
            }
            _ => {}
        }
    }
    let days = days_from_civil(i64::from(y), mo, d);
    let secs = days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(se) - offset_s;
    Some((secs * 1000 + i64::from(ms), i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_days() {
        for z in [-1_000_000i64, -1, 0, 1, 19_000, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn formats() {
        // One formatter: its cached second and day must never leak into the next.
        let mut f = TsFormatter::default();
        let got: Vec<String> = [
            1_714_564_800_123,
            1_714_564_800_999,
            0,
            59_999,
            86_399_999,
            86_400_000,
            -1,
        ]
        .into_iter()
        .map(|ms| {
            let mut out = Vec::new();
            f.push(ms, &mut out);
            String::from_utf8(out).unwrap()
        })
        .collect();
        assert_eq!(
            got,
            [
                "2024-05-01T12:00:00.123Z",
                "2024-05-01T12:00:00.999Z",
                "1970-01-01T00:00:00.000Z",
                "1970-01-01T00:00:59.999Z",
                "1970-01-01T23:59:59.999Z",
                "1970-01-02T00:00:00.000Z",
                "1969-12-31T23:59:59.999Z",
            ]
        );
    }

    #[test]
    fn parses() {
        let p = |s: &str| parse_leading_timestamp(s.as_bytes());
        assert_eq!(p("2024-05-01T12:00:00Z x"), Some((1_714_564_800_000, 20)));
        assert_eq!(
            p("2024-05-01 14:00:00.5+02:00 x"),
            Some((1_714_564_800_500, 27))
        );
        assert_eq!(
            p("2024-05-01T12:00:00.123456 x"),
            Some((1_714_564_800_123, 26))
        );
        assert_eq!(p("2024-05-01T11:00:00-0100"), Some((1_714_564_800_000, 24)));
        assert_eq!(p("2024-13-01T12:00:00Z"), None);
        assert_eq!(p("hello world, not a time"), None);
    }
}
