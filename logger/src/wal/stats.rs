//! The counters and gauges of one buffer.

use std::sync::atomic::AtomicU64;

/// Counters of one buffer (readable at any time).
#[derive(Debug, Default)]
pub struct WalStats {
    /// Records appended.
    pub appended_records: AtomicU64,
    /// Records acknowledged by the sink.
    pub acked_records: AtomicU64,
    /// Records deleted unshipped by the drop-oldest policy.
    pub dropped_records: AtomicU64,
    /// Records naming a meta frame the buffer does not hold before them
    /// (corruption): counted once, when first read; the sink dead-letters them.
    pub missing_meta: AtomicU64,
    /// Records found corrupt (bad checksum, torn tail) and skipped.
    pub corrupt_records: AtomicU64,
    /// Bytes currently on disk.
    pub buffer_bytes: AtomicU64,
    /// `fdatasync` calls.
    pub fsyncs: AtomicU64,
    /// Failed writes (full or read-only file system, I/O error), one per
    /// attempt; the records stay queued and are written again.
    pub write_errors: AtomicU64,
    /// Times the buffer stalled: runs of failed writes or syncs, each ended
    /// by a success (so `write_errors` / `write_stalls` is the attempts per
    /// incident).
    pub write_stalls: AtomicU64,
    /// Failed `fdatasync`s; the unsynced bytes are written again.
    pub sync_errors: AtomicU64,
    /// 1 while writes or syncs fail and the parser holds back (a gauge).
    pub stalled: AtomicU64,
    /// Records a sink has read and not yet acknowledged (a gauge).
    pub in_flight_records: AtomicU64,
    /// Records the drop-oldest policy deleted from disk while a sink held
    /// them (not lost: they are shipped or dead-lettered from memory).
    pub dropped_in_flight: AtomicU64,
}
