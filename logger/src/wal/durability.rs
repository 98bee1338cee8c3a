//! Durability of the writer's segment: `fdatasync` at most every
//! `fsync_interval`, and the bytes written since the last successful one
//! kept in memory (at most [`MAX_UNSYNCED`]): after a failed sync the kernel
//! may have dropped them from the page cache, so they are written again
//! before the next sync, and nothing is reported durable until then.
//!
//! Writeback starts early: every [`WRITEBACK_STEP`] written, the kernel is
//! asked to start writing those pages out (`sync_file_range`, which does
//! not wait), so the `fdatasync` that follows finds them mostly on disk and
//! holds a producer (or, past [`MAX_UNSYNCED`], every producer) briefly
//! instead of for a whole interval's bytes at once.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;
use std::time::Instant;

use super::error::{io_err, WalError};
use super::fault::{sync_file, truncate, write_all_at};
use super::writer::Writer;
use super::Wal;

/// Most bytes written but not yet synced (kept in memory to be re-written
/// after a failed sync): past it, a sync comes before the next write.
pub(super) const MAX_UNSYNCED: usize = 16 << 20;

/// Bytes written between two starts of writeback.
pub(super) const WRITEBACK_STEP: u64 = 2 << 20;

impl Writer {
    /// Starts writing back what was written since the last start, once it
    /// is [`WRITEBACK_STEP`] or more. Only a hint: it waits for nothing
    /// and its failure is not one (the next `fdatasync` reports errors).
    pub(super) fn start_writeback(&mut self) {
        let from = self.flushing.max(self.synced);
        if self.len < from + WRITEBACK_STEP {
            return;
        }
        let (Ok(off), Ok(n)) = (i64::try_from(from), i64::try_from(self.len - from)) else {
            return;
        };
        // SAFETY: `sync_file_range` only reads its integer arguments; the
        // descriptor is the open segment, owned by `self.file`.
        let r = unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE)
        };
        if r == 0 {
            self.flushing = self.len;
        }
    }

    fn sync_failed(&mut self) {
        self.stats.sync_errors.fetch_add(1, Ordering::Relaxed);
        self.unsynced = true;
        self.resync = true;
    }

    /// Segment `seq` is durable up to `len`: its memory copy is let go.
    fn synced_to(&mut self, seq: u64, len: u64) {
        if self.seq == seq && len > self.synced {
            let n = usize::try_from(len - self.synced)
                .unwrap_or(usize::MAX)
                .min(self.tail.len());
            self.tail.drain(..n);
            self.synced = len;
        }
    }
}

impl Wal {
    /// Makes everything committed durable now (before a reader checkpoint
    /// is saved). An error means some committed records may not be on disk.
    pub fn sync(&self) -> Result<(), WalError> {
        self.sync_unlocked(self.writer())
    }

    /// Brings the last segment back to exactly its frames, durable or held
    /// in memory: after a failed sync its unsynced bytes are written again
    /// (the kernel may have dropped them), and whatever a failed write left
    /// past the last frame is cut off.
    pub(super) fn repair(&self, w: &mut Writer) -> Result<(), WalError> {
        if !(w.resync || w.tail_dirty) {
            return Ok(());
        }
        if w.resync {
            write_all_at(&w.file, &w.path, &w.tail, w.synced).map_err(|e| {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                io_err(&w.path)(e)
            })?;
            w.resync = false;
            w.unsynced = true;
            w.tail_dirty = true;
        }
        truncate(&w.file, &w.path, w.len).map_err(io_err(&w.path))?;
        w.tail_dirty = false;
        Ok(())
    }

    /// Like `sync_locked`, but the `fdatasync` (which can take long under
    /// writeback) runs after the lock is released, on a duplicate of the
    /// segment's descriptor: whatever was written before is made durable.
    pub(super) fn sync_unlocked(&self, mut w: MutexGuard<'_, Writer>) -> Result<(), WalError> {
        if let Err(e) = self.repair(&mut w) {
            w.failed("rewriting unsynced records", &e);
            return Err(e);
        }
        if !w.unsynced && w.synced >= w.len {
            w.last_sync = Instant::now();
            w.recovered(&self.cfg.dir);
            return Ok(());
        }
        // Not `unsynced` but short of `len`: another producer's sync is in
        // flight. This caller may not report durable before that one is
        // done, so it syncs too (the kernel waits for the pages under way).
        let (seq, target, p) = (w.seq, w.len, w.path.clone());
        let f = w.file.try_clone().map_err(io_err(&p))?;
        w.unsynced = false;
        w.last_sync = Instant::now();
        drop(w);
        let r = sync_file(&f, &p);
        let mut w = self.writer();
        if let Err(e) = r {
            w.sync_failed();
            let e = io_err(&p)(e);
            w.failed("sync", &e);
            return Err(e);
        }
        if w.resync {
            // A concurrent sync failed meanwhile and took the error with it
            // (one error per open file): this success proves nothing.
            return Err(io_err(&p)(std::io::Error::other(
                "a concurrent sync of the segment failed",
            )));
        }
        self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        w.synced_to(seq, target);
        w.recovered(&self.cfg.dir);
        Ok(())
    }

    /// Syncs the writer's segment with the writer's lock held (before a
    /// roll, or when too much is kept in memory).
    pub(super) fn sync_locked(&self, w: &mut Writer) -> Result<(), WalError> {
        self.repair(w)?;
        // Short of `len` without `unsynced`: a sync without the lock is in
        // flight; the segment is durable only once this one returns.
        if w.unsynced || w.synced < w.len {
            if let Err(e) = sync_file(&w.file, &w.path) {
                w.sync_failed();
                return Err(io_err(&w.path)(e));
            }
            self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            w.unsynced = false;
            let (seq, len) = (w.seq, w.len);
            w.synced_to(seq, len);
        }
        w.last_sync = Instant::now();
        Ok(())
    }
}
