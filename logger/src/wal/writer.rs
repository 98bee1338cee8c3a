//! The writer: queued records go to the end of the last segment with one
//! `pwrite` per batch at the segment's known end (no `O_APPEND`), and only
//! then are published to the ledger for the sink.
//!
//! Queued records stay queued until written: a failed write leaves them
//! queued (not counted as appended) and cuts the segment back to its last
//! frame (or, if even that fails, before the next write), so a segment
//! always ends at a frame boundary. After failures for want of room a batch
//! goes in pieces ([`MIN_CHUNK`]). Durability (the unsynced tail kept in
//! memory) is in [`super::durability`].

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard, TryLockError};
use std::time::Instant;

use super::config::FullPolicy;
use super::durability::MAX_UNSYNCED;
use super::error::{io_err, no_space, WalError};
use super::fault::{truncate, write_all_at};
use super::format::{seg_path, whole_frames};
use super::meta::WrittenMetas;
use super::policy::Dropping;
use super::queue::{Queued, QUEUE_MAX};
use super::stall::Stall;
use super::stats::WalStats;
use super::Wal;
use crate::private;

/// Smallest piece a queued batch is cut into after failures for want of
/// room (a record larger than it still goes whole). A batch is written at
/// once; each ENOSPC halves the next try's piece down to this, so a file
/// system with less room than a whole batch (full, its acknowledged
/// segments deleted) still takes it piece by piece instead of refusing it
/// forever; a commit written whole lifts the limit again.
const MIN_CHUNK: usize = 64 << 10;

/// The writer's state, behind the writer's lock.
#[derive(Debug)]
pub(super) struct Writer {
    pub(super) stats: Arc<WalStats>,
    /// The last segment, opened read-write (not append: writes go at `len`).
    pub(super) file: File,
    pub(super) seq: u64,
    pub(super) path: PathBuf,
    /// Its length: every byte before is a whole frame, published.
    pub(super) len: u64,
    pub(super) pending: Vec<u8>,
    pub(super) pending_records: u64,
    /// Records written by a commit that failed part-way (its first chunks
    /// went out): reported by the next commit that succeeds.
    written_unreported: u64,
    /// Largest piece written at once now: halved by each ENOSPC, unlimited
    /// again once a commit is written whole (one failed write per try: the
    /// backoff holds).
    chunk: usize,
    pub(super) unsynced: bool,
    pub(super) last_sync: Instant,
    /// Length of the last segment known durable (synced).
    pub(super) synced: u64,
    /// Length of the last segment whose writeback has been started (see
    /// [`super::durability::WRITEBACK_STEP`]).
    pub(super) flushing: u64,
    /// Its bytes from `synced` to its length: written again after a failed sync.
    pub(super) tail: Vec<u8>,
    /// A sync failed: `tail` must be written again before the next one.
    pub(super) resync: bool,
    /// The file may hold bytes past the last frame (a failed write not cut off yet).
    pub(super) tail_dirty: bool,
    pub(super) stall: Stall,
    /// The meta frames the segment holds (and earlier ones queued records may name).
    metas: WrittenMetas,
    /// Segments dropped by this commit, finished once the lock is let go.
    pub(super) dropping: Dropping,
}

impl Writer {
    /// The writer of segment `seq`, `len` bytes long and synced.
    pub(super) fn new(stats: Arc<WalStats>, file: File, seq: u64, path: PathBuf, len: u64) -> Self {
        Writer {
            stats,
            file,
            seq,
            path,
            len,
            pending: Vec::new(),
            pending_records: 0,
            written_unreported: 0,
            chunk: usize::MAX,
            unsynced: false,
            last_sync: Instant::now(),
            synced: len,
            flushing: len,
            tail: Vec::new(),
            resync: false,
            tail_dirty: false,
            stall: Stall::default(),
            metas: WrittenMetas::new(seq),
            dropping: Dropping::default(),
        }
    }

    /// Counts and logs a failure (the buffer stalls).
    pub(super) fn failed(&mut self, what: &str, e: &WalError) {
        self.stall
            .failed(&self.stats, what, e, self.pending_records);
    }

    /// Ends a stall once nothing is left to retry.
    pub(super) fn recovered(&mut self, dir: &std::path::Path) {
        if self.pending.is_empty() && !self.resync && !self.tail_dirty {
            self.stall.recovered(&self.stats, dir);
        }
    }
}

impl Wal {
    pub(super) fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer's lock if nobody holds it.
    fn try_writer(&self) -> Option<MutexGuard<'_, Writer>> {
        match self.writer.try_lock() {
            Ok(w) => Some(w),
            Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    pub(super) fn queue(&self) -> MutexGuard<'_, Queued> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Like [`Wal::commit`], but returns at once (having written nothing)
    /// while another producer writes: that one takes these records too
    /// before it is done (it looks at the queue again after letting go of
    /// the writer). Waits like [`Wal::commit`] once [`QUEUE_MAX`] bytes are
    /// queued.
    pub fn commit_or_leave(&self) -> Result<u64, WalError> {
        let w = match self.try_writer() {
            Some(w) => w,
            None if self.queue().len() < QUEUE_MAX => return Ok(0),
            None => self.writer(),
        };
        self.commit_from(w)
    }

    /// Writes the queued records (one `pwrite`), applying the full policy,
    /// and `fdatasync`s if the interval has passed; returns how many records
    /// were written. On error nothing queued is lost: the records stay queued
    /// (retried by the next call) and the segment still ends at a frame
    /// boundary. A failing sync after the write is reported by [`Wal::sync`]
    /// and makes [`Wal::is_stalled`] true until it succeeds.
    pub fn commit(&self) -> Result<u64, WalError> {
        self.commit_from(self.writer())
    }

    /// Writes with the writer's lock `w`, then again as long as producers
    /// that found it taken ([`Wal::commit_or_leave`]) queued more.
    fn commit_from(&self, w: MutexGuard<'_, Writer>) -> Result<u64, WalError> {
        let mut n = self.commit_locked(w)?;
        while self.queue().len() > 0 {
            // None: another writer took over, and with it what is queued.
            let Some(w) = self.try_writer() else { break };
            n += self.commit_locked(w)?;
        }
        Ok(n)
    }

    fn commit_locked(&self, mut w: MutexGuard<'_, Writer>) -> Result<u64, WalError> {
        let records = {
            let Writer { pending, .. } = &mut *w;
            self.queue().take_into(pending)
        };
        w.pending_records += records;
        let written = self.write_pending(&mut w);
        let dropped = std::mem::take(&mut w.dropping);
        let n = match written {
            Ok(n) => n,
            Err(e) => {
                w.failed("write", &e);
                drop(w);
                self.finish_drops(dropped);
                return Err(e);
            }
        };
        if n > 0 {
            self.more.notify_all();
        }
        let due = w.unsynced
            && (w.last_sync.elapsed() >= self.cfg.fsync_interval || w.tail.len() >= MAX_UNSYNCED);
        if due || w.resync || w.tail_dirty {
            // The records are written: a failing sync only holds back checkpoints.
            let _ = self.sync_unlocked(w);
        } else {
            if w.stall.failing() {
                w.recovered(&self.cfg.dir);
            }
            drop(w);
        }
        self.finish_drops(dropped);
        Ok(n)
    }

    fn write_pending(&self, w: &mut Writer) -> Result<u64, WalError> {
        if w.pending.is_empty() {
            return Ok(std::mem::take(&mut w.written_unreported));
        }
        self.repair(w)?;
        let (mut done, mut written) = (0, 0);
        let r = loop {
            if done == w.pending.len() {
                break Ok(());
            }
            let (end, records) = whole_frames(&w.pending, done, w.chunk);
            match self.write_chunk(w, done, end, records) {
                Ok(()) => {
                    done = end;
                    written += records;
                }
                Err(e) => {
                    if e.is_no_space() && records > 1 {
                        // A smaller piece may fit at the next try.
                        w.chunk = ((end - done) / 2).max(MIN_CHUNK);
                    }
                    break Err(e);
                }
            }
        };
        // Written frames leave the queue whatever happened to the rest.
        w.pending.drain(..done);
        w.pending_records -= written;
        match r {
            Ok(()) => {
                w.chunk = usize::MAX;
                Ok(written + std::mem::take(&mut w.written_unreported))
            }
            Err(e) => {
                w.written_unreported += written;
                Err(e)
            }
        }
    }

    /// Writes the queued frames `w.pending[from..end]` (`records` of them)
    /// at the end of the last segment; on failure nothing of them counts as
    /// written and the segment is cut back to its last frame.
    fn write_chunk(
        &self,
        w: &mut Writer,
        from: usize,
        end: usize,
        records: u64,
    ) -> Result<(), WalError> {
        if w.len >= self.cfg.segment_bytes {
            // A roll that failed after the last write is retried first.
            self.roll(w)?;
        }
        if w.tail.len() >= MAX_UNSYNCED {
            // Bounds what is kept in memory: no more until it is durable.
            self.sync_locked(w)?;
        }
        let len = (end - from) as u64;
        let drop_oldest = self.cfg.policy == FullPolicy::DropOldest;
        while drop_oldest && self.buffered() + len > self.cfg.max_bytes && self.drop_oldest(w)? {}
        let (seq, prefix) = loop {
            let (seq, at) = (w.seq, w.len);
            // Meta frames this segment lacks go first (after a roll).
            let prefix = w.metas.prefix(&w.pending[from..end]);
            let res = if prefix.bytes.is_empty() {
                write_all_at(&w.file, &w.path, &w.pending[from..end], at)
            } else {
                let mut all = prefix.bytes.clone();
                all.extend_from_slice(&w.pending[from..end]);
                write_all_at(&w.file, &w.path, &all, at)
            };
            let Err(e) = res else {
                break (seq, prefix);
            };
            // Part of the batch may be in the file: cut it off, now or before the next write.
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            if truncate(&w.file, &w.path, at).is_err() {
                w.tail_dirty = true;
                return Err(io_err(&w.path)(e));
            }
            // A full file system is a full buffer to the drop-oldest policy too (it
            // never holds containers back): make room, counted, and write again.
            let full = no_space(&e);
            let room = full && drop_oldest && self.drop_oldest(w)?;
            if room {
                // The next try needs the room now.
                self.finish_drops(std::mem::take(&mut w.dropping));
            } else {
                let p = w.path.clone();
                if full && at > 0 {
                    // The segment ends here: once acknowledged it is deleted
                    // whole, the room the next write needs (acknowledged
                    // records in the segment being written free nothing).
                    if let Err(re) = self.roll(w) {
                        tracing::debug!("closing a segment on a full file system: {re}");
                    }
                }
                return Err(io_err(&p)(e));
            }
        };
        if prefix.unknown > 0 {
            tracing::warn!(
                records = prefix.unknown,
                "disk buffer: records name a meta frame never queued"
            );
        }
        let len = len + prefix.bytes.len() as u64;
        let Writer { pending, tail, .. } = &mut *w;
        tail.extend_from_slice(&prefix.bytes);
        tail.extend_from_slice(&pending[from..end]);
        w.metas.written(prefix);
        w.len += len;
        w.unsynced = true;
        w.start_writeback();
        // Counted before the sink can see them.
        self.stats
            .appended_records
            .fetch_add(records, Ordering::Relaxed);
        self.ledger().publish(seq, w.len, len, records);
        if w.len >= self.cfg.segment_bytes {
            // Written already: a failing roll is retried before the next write.
            if let Err(e) = self.roll(w) {
                w.failed("roll", &e);
            }
        }
        // One large append can overshoot the bound: trim closed segments after it too.
        // (never the segment just written: the newest records stay).
        while drop_oldest && self.over_bound(seq) && self.drop_oldest(w)? {}
        Ok(())
    }

    /// Closes the last segment (synced) and starts the next one.
    pub(super) fn roll(&self, w: &mut Writer) -> Result<(), WalError> {
        self.sync_locked(w)?;
        let next = w.seq + 1;
        let np = seg_path(&self.cfg.dir, next);
        w.file = private::open_rw(&np).map_err(io_err(&np))?;
        w.seq = next;
        w.path = np;
        w.len = 0;
        w.synced = 0;
        w.flushing = 0;
        w.tail.clear();
        w.metas.rolled(next);
        let moved = self.ledger().rolled(next);
        if moved {
            if let Err(e) = self.save_cursor() {
                tracing::warn!("{e}");
            }
        }
        Ok(())
    }
}
