//! The settings of one buffer and its full-buffer policy.

use std::path::PathBuf;
use std::time::Duration;

/// What to do when the buffer is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FullPolicy {
    /// Stop reading container output until the sink catches up (no loss;
    /// containers block once their pipe is full).
    Pause,
    /// Delete the oldest segment; every record in it that was not shipped is
    /// counted in `dropped_records`.
    DropOldest,
}

/// A `buffer_full_policy` value that is not a policy.
pub type UnknownPolicy = crate::choice::UnknownChoice;

impl std::str::FromStr for FullPolicy {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Self, UnknownPolicy> {
        match s {
            "pause" => Ok(FullPolicy::Pause),
            "drop_oldest" => Ok(FullPolicy::DropOldest),
            _ => Err(UnknownPolicy::new(s, "pause, drop_oldest")),
        }
    }
}

/// Settings of one buffer.
#[derive(Clone, Debug)]
pub struct WalConfig {
    /// Directory of the segments (created if missing).
    pub dir: PathBuf,
    /// A segment is closed once it reaches this size.
    pub segment_bytes: u64,
    /// Bound of the buffer on disk.
    pub max_bytes: u64,
    /// Longest time between an append and its `fdatasync`.
    pub fsync_interval: Duration,
    /// Policy when full.
    pub policy: FullPolicy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_parses_and_names_the_bad_value() {
        assert_eq!("pause".parse(), Ok(FullPolicy::Pause));
        assert_eq!("drop_oldest".parse(), Ok(FullPolicy::DropOldest));
        let e = "later".parse::<FullPolicy>().unwrap_err();
        assert_eq!(e.to_string(), "`later` is not one of pause, drop_oldest");
    }
}
