//! Values with units, as tasks and operators write them.
//!
//! - bandwidth (network, bits per second): `100mbit`, `1gbit`, `512kbit`, `2mibit`,
//!   or bytes per second `10MB/s`, `10MiB/s`;
//! - byte rate (disk, bytes per second): `10MiB/s`, `500KB/s`, `1GB/s`, `4096B/s`;
//! - bytes: `2GiB`, `512MiB`, `100MB`, `4096B`;
//! - count: `100` (optionally `100iops`);
//! - duration: `500ms`, `2s`, `5m`, `1h`.
//!
//! Decimal prefixes (k, M, G, T) are powers of 1000, binary ones (Ki, Mi, Gi, Ti) of
//! 1024. A bare number is refused where a unit is expected, so `100` never silently
//! means bytes when the author meant megabits.

use std::time::Duration;

/// Why a value did not parse. The caller adds which key it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(pub String);

fn split_number(s: &str) -> Result<(f64, &str), UnitError> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    if num.is_empty() {
        return Err(UnitError(format!("'{s}' does not start with a number")));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| UnitError(format!("'{num}' is not a number")))?;
    Ok((value, unit.trim()))
}

fn prefix_multiplier(prefix: &str) -> Option<f64> {
    Some(match prefix {
        "" => 1.0,
        "k" | "K" => 1e3,
        "m" | "M" => 1e6,
        "g" | "G" => 1e9,
        "t" | "T" => 1e12,
        "ki" | "Ki" | "KI" => 1024.0,
        "mi" | "Mi" | "MI" => 1024.0 * 1024.0,
        "gi" | "Gi" | "GI" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "Ti" | "TI" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    })
}

fn to_u64(value: f64, what: &str) -> Result<u64, UnitError> {
    if !value.is_finite() || value < 0.0 || value >= u64::MAX as f64 {
        return Err(UnitError(format!("{what} out of range")));
    }
    // Rounded, then range-checked above: the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(value.round() as u64)
}

/// Parses a byte count (`2GiB`, `100MB`, `4096B`).
pub fn parse_bytes(s: &str) -> Result<u64, UnitError> {
    let (value, unit) = split_number(s)?;
    let prefix = unit.strip_suffix('B').ok_or_else(|| {
        UnitError(format!(
            "'{s}' needs a byte unit (B, KB, MB, GB, KiB, MiB, GiB)"
        ))
    })?;
    let mult = prefix_multiplier(prefix)
        .ok_or_else(|| UnitError(format!("unknown unit prefix '{prefix}' in '{s}'")))?;
    to_u64(value * mult, "byte count")
}

/// Parses a byte rate in bytes per second (`10MiB/s`).
pub fn parse_byte_rate(s: &str) -> Result<u64, UnitError> {
    let body = s.trim().strip_suffix("/s").ok_or_else(|| {
        UnitError(format!(
            "'{s}' needs a rate unit such as 10MiB/s or 500KB/s"
        ))
    })?;
    parse_bytes(body)
}

/// Parses a network bandwidth and returns bits per second (`100mbit`, `10MiB/s`).
pub fn parse_bandwidth(s: &str) -> Result<u64, UnitError> {
    let trimmed = s.trim();
    if trimmed.ends_with("/s") {
        return parse_byte_rate(trimmed)?
            .checked_mul(8)
            .ok_or_else(|| UnitError("bandwidth out of range".into()));
    }
    let (value, unit) = split_number(trimmed)?;
    let prefix = unit.strip_suffix("bit").ok_or_else(|| {
        UnitError(format!(
            "'{s}' needs a unit such as 100mbit, 1gbit or 10MB/s"
        ))
    })?;
    let mult = prefix_multiplier(prefix)
        .ok_or_else(|| UnitError(format!("unknown unit prefix '{prefix}' in '{s}'")))?;
    to_u64(value * mult, "bandwidth")
}

/// Parses a plain count (`100`, `100iops`).
pub fn parse_count(s: &str) -> Result<u64, UnitError> {
    let t = s.trim();
    let t = t.strip_suffix("iops").unwrap_or(t);
    t.parse::<u64>()
        .map_err(|_| UnitError(format!("'{s}' is not a whole non-negative number")))
}

/// Parses a duration (`500ms`, `2s`, `5m`, `1h`).
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let (value, unit) = split_number(s)?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        "" => return Err(UnitError(format!("'{s}' needs a time unit (ms, s, m, h)"))),
        other => return Err(UnitError(format!("unknown time unit '{other}' in '{s}'"))),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| UnitError(format!("'{s}' out of range")))
}

/// Parses a boolean (`true`/`false`, `yes`/`no`, `1`/`0`, `on`/`off`).
pub fn parse_bool(s: &str) -> Result<bool, UnitError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" => Ok(true),
        "false" | "no" | "0" | "off" => Ok(false),
        _ => Err(UnitError(format!("'{s}' is not a boolean (true or false)"))),
    }
}

/// Formats bits per second the way `tc` does (`10Mbit`).
pub fn format_bandwidth(bits: u64) -> String {
    for (div, unit) in [
        (1_000_000_000, "Gbit"),
        (1_000_000, "Mbit"),
        (1_000, "Kbit"),
    ] {
        if bits >= div && bits.is_multiple_of(div) {
            return format!("{}{unit}", bits / div);
        }
    }
    format!("{bits}bit")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth() {
        assert_eq!(parse_bandwidth("100mbit").unwrap(), 100_000_000);
        assert_eq!(parse_bandwidth("1gbit").unwrap(), 1_000_000_000);
        assert_eq!(parse_bandwidth("1.5Mbit").unwrap(), 1_500_000);
        assert_eq!(parse_bandwidth("2mibit").unwrap(), 2 * 1024 * 1024);
        assert_eq!(parse_bandwidth("10MB/s").unwrap(), 80_000_000);
        assert_eq!(parse_bandwidth("1MiB/s").unwrap(), 8 * 1024 * 1024);
        for bad in [
            "100",
            "fast",
            "mbit",
            "10 furlongs",
            "-5mbit",
            "1e3mbit",
            "10xbit",
        ] {
            assert!(parse_bandwidth(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn bytes_and_rates() {
        assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("100MB").unwrap(), 100_000_000);
        assert_eq!(parse_bytes("4096B").unwrap(), 4096);
        assert_eq!(parse_byte_rate("10MiB/s").unwrap(), 10 << 20);
        assert!(parse_bytes("100").is_err());
        assert!(parse_byte_rate("10MiB").is_err());
        assert!(parse_bytes("99999999999TiB").is_err());
    }

    #[test]
    fn counts_durations_bools() {
        assert_eq!(parse_count("100").unwrap(), 100);
        assert_eq!(parse_count("250iops").unwrap(), 250);
        assert!(parse_count("-1").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("2").is_err());
        assert!(parse_bool("yes").unwrap());
        assert!(!parse_bool("off").unwrap());
        assert!(parse_bool("maybe").is_err());
    }

    #[test]
    fn formats_like_tc() {
        assert_eq!(format_bandwidth(10_000_000), "10Mbit");
        assert_eq!(format_bandwidth(1_500_000), "1500Kbit");
        assert_eq!(format_bandwidth(999), "999bit");
    }
}
