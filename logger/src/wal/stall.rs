//! A stalled buffer: failures counted, logged at most every [`LOG_EVERY`],
//! tried again after a backoff, and the end of the stall logged once.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::error::WalError;
use super::stats::WalStats;
use crate::sink::backoff::Backoff;

/// Longest interval between two log lines about failing writes or syncs.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// First wait before a stalled buffer is tried again; doubled per failure
/// up to [`RETRY_MAX`] (with jitter), back to this at the next success.
pub const RETRY_FIRST: Duration = Duration::from_millis(20);
/// Longest wait between two tries of a stalled buffer.
pub const RETRY_MAX: Duration = Duration::from_secs(1);

/// The writer's failure state.
#[derive(Debug)]
pub(super) struct Stall {
    /// First error of the current run of failures.
    failing_since: Option<Instant>,
    /// Errors since the last log line, and when that was.
    errors_unlogged: u64,
    last_error_log: Option<Instant>,
    backoff: Backoff,
    /// While failing: the wait before the next try, and when that is due.
    retry_delay: Duration,
    retry_at: Option<Instant>,
}

impl Default for Stall {
    fn default() -> Self {
        Stall {
            failing_since: None,
            errors_unlogged: 0,
            last_error_log: None,
            backoff: Backoff::new(RETRY_FIRST, RETRY_MAX),
            retry_delay: Duration::ZERO,
            retry_at: None,
        }
    }
}

impl Stall {
    /// True during a run of failures.
    pub(super) fn failing(&self) -> bool {
        self.failing_since.is_some()
    }

    /// Counts and logs (at most every [`LOG_EVERY`]) a failure; the buffer
    /// is stalled until the next success.
    pub(super) fn failed(&mut self, stats: &WalStats, what: &str, e: &WalError, queued: u64) {
        let now = Instant::now();
        if self.failing_since.is_none() {
            self.failing_since = Some(now);
            self.backoff.reset();
            self.retry_delay = self.backoff.next_delay();
            stats.write_stalls.fetch_add(1, Ordering::Relaxed);
        } else if self.retry_at.is_none_or(|t| now >= t) {
            // Once per try (a try may fail twice: a write's roll, then its sync).
            self.retry_delay = self.backoff.next_delay();
        }
        self.retry_at = Some(now + self.retry_delay);
        stats.stalled.store(1, Ordering::Relaxed);
        self.errors_unlogged += 1;
        if self.last_error_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            tracing::error!(
                failures = self.errors_unlogged,
                queued_records = queued,
                "{what} failed, records are held back and retried (the containers of this \
                 buffer block once their pipes are full): {e}"
            );
            self.errors_unlogged = 0;
            self.last_error_log = Some(Instant::now());
        }
    }

    /// Ends a run of failures (the caller knows nothing is left to retry).
    pub(super) fn recovered(&mut self, stats: &WalStats, dir: &Path) {
        if let Some(t) = self.failing_since.take() {
            stats.stalled.store(0, Ordering::Relaxed);
            self.retry_at = None;
            self.retry_delay = Duration::ZERO;
            self.last_error_log = None;
            self.errors_unlogged = 0;
            tracing::warn!(
                dir = %dir.display(),
                after_ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX),
                "disk buffer writes succeed again"
            );
        }
    }

    /// True unless a try failed and its backoff has not passed.
    pub(super) fn retry_due(&self) -> bool {
        self.retry_at.is_none_or(|t| Instant::now() >= t)
    }

    /// The current wait between two tries (`None`: not failing).
    pub(super) fn retry_delay(&self) -> Option<Duration> {
        self.failing_since.map(|_| self.retry_delay)
    }
}
