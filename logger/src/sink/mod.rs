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
#[cfg(feature = "redis")]
pub mod redis_conn;
pub mod refused;
pub mod route;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::wal::{Batch, Wal};
use crate::walrec::WalRecord;
use deadletter::DeadLetter;

/// Decodes a batch's records. One that cannot be decoded would fail the same
/// way at every resend: it goes to the dead-letter file, counted. Returns every
/// slot (`None` where dead-lettered) and the indices of the decoded ones.
pub fn decode_batch<'a>(
    batch: &'a Batch,
    sink: &str,
    dead: &mut DeadLetter,
    stats: &SinkStats,
) -> (Vec<Option<WalRecord<'a>>>, Vec<usize>) {
    let recs: Vec<Option<WalRecord<'a>>> = batch.iter().map(WalRecord::decode).collect();
    let mut good = Vec::with_capacity(recs.len());
    for (i, r) in recs.iter().enumerate() {
        if r.is_some() {
            good.push(i);
        } else {
            dead.add(
                sink,
                "",
                b"",
                b"",
                0,
                b"undecodable disk-buffer record",
                batch.get(i),
            );
            stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        }
    }
    (recs, good)
}

/// The loop of every sink thread: reads a batch from the disk buffer, lets
/// `ship` deliver it (every record stored or dead-lettered: true; stopped
/// first: false, and the batch is read again after a restart) and
/// acknowledges it, until `stop` is set.
pub fn run_batches(
    name: &str,
    wal: &Wal,
    stop: &AtomicBool,
    max_records: usize,
    max_bytes: usize,
    mut ship: impl FnMut(&Batch, &AtomicBool) -> bool,
) {
    while !stop.load(Ordering::Relaxed) {
        let batch = match wal.read_batch(max_records, max_bytes, Duration::from_millis(200)) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("{name} sink: {e}");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        if !ship(&batch, stop) {
            return;
        }
        crate::fault::point("sink");
        if let Err(e) = wal.ack(batch.end, batch.len() as u64) {
            tracing::error!("{name} sink: {e}");
        }
    }
}

/// Counters of one sink.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Records stored by the destination (including ones it already had).
    pub shipped: AtomicU64,
    /// Records the destination already had (a resend after a crash or a lost response).
    pub duplicates: AtomicU64,
    /// Record sends repeated after 429/5xx or a failed request.
    pub retried: AtomicU64,
    /// Records given to the dead-letter file.
    pub dead_lettered: AtomicU64,
    /// Of those, records not written because the file was full and
    /// `dead_letter_full_policy` is `drop`.
    pub dead_letter_dropped: AtomicU64,
    /// Of those, records not written because their container had used its
    /// share of the file (`max_dead_letter_bytes_per_container`).
    pub dead_letter_over_share: AtomicU64,
    /// 1 while the dead-letter file is full (the sink waits under `pause`).
    pub dead_letter_full: AtomicU64,
    /// Requests sent.
    pub requests: AtomicU64,
    /// Requests that failed as a whole (connection, timeout, 429, 5xx, ...).
    pub failed_requests: AtomicU64,
    /// Per route (index, topic, stream): failure state and counters.
    pub routes: route::RouteTable,
    // Answers of the destination refused (too large, malformed, truncated,
    // slow, unusable): the batch was resent, never acknowledged on them.
    /// Refused answers per reason.
    pub responses_refused: refused::ResponseRefusals,
}
