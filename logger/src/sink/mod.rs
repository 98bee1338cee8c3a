//! Sinks: they read batches from a disk buffer and acknowledge them only once
//! every record is either stored by the destination or written to the
//! dead-letter file.

pub mod backoff;
pub mod deadletter;
pub mod es;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod kafka_config;
#[cfg(feature = "redis")]
pub mod redis;
pub mod redis_config;

use std::sync::atomic::AtomicU64;

/// Counters of one sink.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Records stored by the destination (including ones it already had).
    pub shipped: AtomicU64,
    /// Records the destination already had (a resend after a crash or a lost response).
    pub duplicates: AtomicU64,
    /// Record sends repeated after 429/5xx or a failed request.
    pub retried: AtomicU64,
    /// Records written to the dead-letter file.
    pub dead_lettered: AtomicU64,
    /// Requests sent.
    pub requests: AtomicU64,
    /// Requests that failed as a whole (connection, timeout, 429, 5xx, ...).
    pub failed_requests: AtomicU64,
}
