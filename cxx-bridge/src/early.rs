//! What the bridge's calls started ahead of the agent's ([`crate::logger_ahead`],
//! [`crate::isolators_ahead`]) share: a process-wide registry behind a lock, and
//! their counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

/// The registry in `cell`, locked (made on first use; a panic while it was held
/// leaves it usable).
pub(crate) fn registry<T: Default>(cell: &'static OnceLock<Mutex<T>>) -> MutexGuard<'static, T> {
    cell.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Calls started ahead, claimed by the agent's call, and dropped (never asked
/// for, or the agent's call differed).
pub(crate) struct Counts {
    started: AtomicU64,
    claimed: AtomicU64,
    dropped: AtomicU64,
}

impl Counts {
    pub(crate) const fn new() -> Self {
        Self {
            started: AtomicU64::new(0),
            claimed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    pub(crate) fn started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn claimed(&self) {
        self.claimed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Started, claimed, dropped.
    pub(crate) fn get(&self) -> (u64, u64, u64) {
        (
            self.started.load(Ordering::Relaxed),
            self.claimed.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }
}
