//! The disk buffer: a segmented write-ahead log between reading and shipping.
//!
//! Split along its jobs, as a disk buffer's writer / reader / ledger:
//! - `format`: frames and segment names on disk;
//! - `recovery`: opening, cutting what a crash left;
//! - `writer` and `durability`: appends with `pwrite` at the known end,
//!   `fdatasync` at most every `fsync_interval`, the unsynced tail kept in
//!   memory and written again after a failed sync;
//! - `stall`: failures counted, logged, retried after a backoff;
//! - `policy`: what a full buffer does (pause, or drop the oldest segment);
//! - `ledger`: the segments and their committed lengths, the acknowledged
//!   cursor (saved in `cursor`) and how far a sink has read;
//! - `reader`: batches for a sink, read without the writer's lock;
//! - [`fault`]: fault injection at the exact write, sync and truncate calls.
//!
//! A failed write never loses or mis-frames records: the queued records stay
//! queued and the segment always ends at a frame boundary. While a write or
//! sync fails, [`Wal::is_stalled`] is true (the parser stops feeding this
//! buffer and saves no checkpoint past it), every failed attempt is counted
//! (`write_errors`, `sync_errors`) and each run of failures once
//! (`write_stalls`), logged at most every [`LOG_EVERY`]; the producer tries
//! again after a backoff ([`Wal::retry_due`], from [`RETRY_FIRST`] doubling to
//! [`RETRY_MAX`]), and everything resumes by itself at the first success.
//!
//! The buffer is bounded: when it holds `max_bytes`, the [`FullPolicy`]
//! applies.
//!
//! The buffer holds every container's records: its directory is 0700 and its
//! files 0600 whatever the umask (see [`crate::private`]).

mod config;
mod durability;
mod error;
pub mod fault;
mod format;
mod ledger;
mod meta;
mod policy;
mod queue;
mod reader;
mod recovery;
mod stall;
mod stats;
mod writer;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub use config::{FullPolicy, UnknownPolicy, WalConfig};
pub use error::WalError;
pub use format::{meta_key, meta_ref, MAX_FRAME, META, META_HDR, META_REF};
pub use ledger::Pos;
pub use reader::Batch;
pub use stall::{LOG_EVERY, RETRY_FIRST, RETRY_MAX};
pub use stats::WalStats;

/// The write-ahead log. Share it between the producer and the sink with `Arc`.
#[derive(Debug)]
pub struct Wal {
    cfg: WalConfig,
    /// The last segment, its durability and the records taken from the
    /// queue but not written yet (lock order: first).
    writer: Mutex<writer::Writer>,
    /// Records queued by producers (lock order: after the writer's; a
    /// producer holds no other lock).
    queue: Mutex<queue::Queued>,
    /// The cursor last saved; held while the cursor file is written (lock
    /// order: after the writer's, before the ledger's).
    saved: Mutex<Pos>,
    /// The segments, the cursor and the read position (lock order: last).
    ledger: Mutex<ledger::Ledger>,
    /// The metas the reader learnt (held while reading, no other lock).
    read_metas: Mutex<meta::ReadMetas>,
    /// Signalled (with the ledger's lock) when records are published.
    more: Condvar,
    /// Counters.
    pub stats: Arc<WalStats>,
}

impl Wal {
    /// Frames one record at the end of `buf` (a caller's batch for
    /// [`Wal::push_framed`]): `encode` appends the payload.
    pub fn frame_into(buf: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>)) {
        format::frame_into(buf, encode);
    }

    /// The payloads of the whole frames at the start of `buf` (framed by
    /// [`Wal::frame_into`]), up to the first bad one.
    pub fn frames(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
        let mut pos = 0;
        std::iter::from_fn(move || {
            let (len, crc) = format::header(buf, pos)?;
            let end = pos + format::HDR + len;
            let payload = buf.get(pos + format::HDR..end)?;
            if format::bad_len(len) || !format::crc_ok(payload, crc) {
                return None;
            }
            pos = end;
            Some(payload)
        })
    }

    /// Queues `records` records framed by [`Wal::frame_into`] (one lock for
    /// the batch); they reach the file at the next [`Wal::commit`].
    pub fn push_framed(&self, framed: &[u8], records: u64) {
        if records > 0 {
            self.queue().push(framed, records);
        }
    }

    /// The same, taking `framed` (left empty): no copy when nothing else is
    /// queued.
    pub fn push_framed_vec(&self, framed: &mut Vec<u8>, records: u64) {
        if !framed.is_empty() {
            self.queue().push_vec(framed, records);
        }
    }

    /// Queues one record; it reaches the file at the next [`Wal::commit`].
    pub fn push(&self, payload: &[u8]) {
        self.queue().push_one(payload);
    }

    /// True while records wait for a failed write or sync to succeed: the
    /// producer should hold back and no checkpoint may pass them.
    pub fn is_stalled(&self) -> bool {
        self.stats
            .stalled
            .load(std::sync::atomic::Ordering::Relaxed)
            != 0
    }

    /// True unless the buffer is stalled and its backoff (from
    /// [`RETRY_FIRST`], doubled per failed try up to [`RETRY_MAX`], with
    /// jitter) has not passed: a producer tries [`Wal::commit`] /
    /// [`Wal::sync`] of a stalled buffer only when this is true.
    pub fn retry_due(&self) -> bool {
        !self.is_stalled() || self.writer().stall.retry_due()
    }

    /// The current wait between two tries while stalled (`None`: not stalled).
    pub fn retry_delay(&self) -> Option<Duration> {
        self.writer().stall.retry_delay()
    }

    /// Unacknowledged bytes (approximate: whole segments are counted).
    pub fn bytes(&self) -> u64 {
        self.buffered()
    }
}
