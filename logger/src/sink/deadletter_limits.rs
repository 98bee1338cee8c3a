//! The bound of every dead-letter file of the process (shipper settings
//! `max_dead_letter_bytes`, `max_dead_letter_bytes_per_container`,
//! `dead_letter_full_policy`), set once by the worker before any sink starts.

use std::sync::OnceLock;

/// What happens to refused records once the dead-letter file is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadLetterFullPolicy {
    /// The sink waits (stops acknowledging its buffer) until there is room.
    Pause,
    /// Refused records beyond the bound are counted and logged, not written.
    Drop,
}

/// A `dead_letter_full_policy` that is not one of the policies.
pub type UnknownPolicy = crate::choice::UnknownChoice;

impl std::str::FromStr for DeadLetterFullPolicy {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Self, UnknownPolicy> {
        match s {
            "pause" => Ok(DeadLetterFullPolicy::Pause),
            "drop" => Ok(DeadLetterFullPolicy::Drop),
            _ => Err(UnknownPolicy::new(s, "pause, drop")),
        }
    }
}

/// Bound of every dead-letter file (shipper settings `max_dead_letter_bytes`,
/// `dead_letter_full_policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeadLetterLimits {
    /// Largest size of one dead-letter file.
    pub max_bytes: u64,
    /// What happens beyond it.
    pub policy: DeadLetterFullPolicy,
    /// Largest part of one file a single container's records may take
    /// (`max_bytes` or more: no share, the file's bound alone).
    pub max_bytes_per_container: u64,
}

/// Default `max_dead_letter_bytes_per_container`: 16MiB, a 64th of the
/// default file, so that filling it takes 64 containers.
pub const DEFAULT_MAX_BYTES_PER_CONTAINER: u64 = 16 << 20;

impl Default for DeadLetterLimits {
    fn default() -> Self {
        DeadLetterLimits {
            max_bytes: 1 << 30,
            policy: DeadLetterFullPolicy::Pause,
            max_bytes_per_container: DEFAULT_MAX_BYTES_PER_CONTAINER,
        }
    }
}

static LIMITS: OnceLock<DeadLetterLimits> = OnceLock::new();

/// Sets the bound of every dead-letter file of this process (the worker does
/// it once from its settings, before any sink starts). Later calls are ignored.
pub fn set_limits(l: DeadLetterLimits) {
    let _ = LIMITS.set(l);
}

/// The bound in force ([`DeadLetterLimits::default`] unless set).
pub fn limits() -> DeadLetterLimits {
    LIMITS.get().copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_an_unknown_one_is_named() {
        assert_eq!("pause".parse(), Ok(DeadLetterFullPolicy::Pause));
        assert_eq!("drop".parse(), Ok(DeadLetterFullPolicy::Drop));
        assert_eq!(
            "keep"
                .parse::<DeadLetterFullPolicy>()
                .unwrap_err()
                .to_string(),
            "`keep` is not one of pause, drop"
        );
    }
}
