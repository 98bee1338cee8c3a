//! The ledger: which segments exist and how long each is (the writer
//! publishes its committed end here), the acknowledged cursor (saved in
//! `cursor`, written atomically) and how far a sink has read.
//!
//! It sits behind its own small lock, apart from the writer's: a reader
//! takes a snapshot of the segments here and reads them without any lock,
//! and an acknowledgement never waits for a write or sync in progress. The
//! cursor file is written under a third lock, so that neither waits for it.
//! Lock order: the writer's, the cursor file's, the ledger's.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use super::error::{io_err, WalError};
use super::format::seg_path;
use super::stats::WalStats;
use super::Wal;
use crate::private;

/// A position in the log: segment number and byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    /// Segment sequence number.
    pub seg: u64,
    /// Byte offset inside the segment.
    pub off: u64,
}

/// One segment: its number and its committed length (what a reader may read).
#[derive(Clone, Copy, Debug)]
pub(super) struct Segment {
    pub(super) seq: u64,
    pub(super) len: u64,
    /// Its records, when this process wrote all of them (not for a segment
    /// found at start): a segment dropped before a sink read any of it is
    /// counted without reading it back.
    pub(super) records: Option<u64>,
}

impl Segment {
    /// A segment found on disk (its records unknown).
    pub(super) fn found(seq: u64, len: u64) -> Segment {
        Segment {
            seq,
            len,
            records: None,
        }
    }

    /// A segment this process starts.
    pub(super) fn new(seq: u64) -> Segment {
        Segment {
            seq,
            len: 0,
            records: Some(0),
        }
    }
}

/// The oldest segment, taken out of the ledger by the drop-oldest policy.
#[derive(Debug)]
pub(super) struct Dropped {
    pub(super) seq: u64,
    pub(super) len: u64,
    /// Offset of its first unacknowledged record.
    pub(super) from: u64,
    /// Offset up to which a sink holds its records (read, not acknowledged).
    pub(super) held_to: u64,
    /// Its records, if known (see [`Segment::records`]).
    pub(super) records: Option<u64>,
    /// The cursor moved past it (to be saved: only a restart would suffer,
    /// starting at the first segment left).
    pub(super) moved: bool,
}

#[derive(Debug)]
pub(super) struct Ledger {
    dir: PathBuf,
    stats: Arc<WalStats>,
    /// Oldest first; the last one is the writer's.
    pub(super) segs: Vec<Segment>,
    /// Acknowledged up to here.
    pub(super) cursor: Pos,
    /// Read by a sink up to here.
    pub(super) inflight: Pos,
    /// Bytes of all segments.
    pub(super) total: u64,
    /// Segments dropped so far: a reader whose snapshot a drop overtook
    /// reads again (the records it read were counted as dropped).
    pub(super) drops: u64,
}

fn cursor_path(dir: &Path) -> PathBuf {
    dir.join("cursor")
}

/// The cursor a previous run saved (`None`: missing or unreadable).
pub(super) fn load_cursor(dir: &Path) -> Option<Pos> {
    let s = fs::read_to_string(cursor_path(dir)).ok()?;
    let (a, b) = s.trim().split_once(':')?;
    Some(Pos {
        seg: a.parse().ok()?,
        off: b.parse().ok()?,
    })
}

/// Saves `p` as the acknowledged cursor (atomically).
pub(super) fn write_cursor(dir: &Path, p: Pos) -> Result<(), WalError> {
    let path = cursor_path(dir);
    private::write_atomic(&path, format!("{}:{}\n", p.seg, p.off).as_bytes()).map_err(io_err(&path))
}

impl Ledger {
    pub(super) fn new(dir: PathBuf, stats: Arc<WalStats>, segs: Vec<Segment>, cursor: Pos) -> Self {
        let total = segs.iter().map(|s| s.len).sum();
        stats.buffer_bytes.store(total, Ordering::Relaxed);
        Ledger {
            dir,
            stats,
            segs,
            cursor,
            inflight: cursor,
            total,
            drops: 0,
        }
    }

    fn set_total(&mut self, total: u64) {
        self.total = total;
        self.stats.buffer_bytes.store(total, Ordering::Relaxed);
    }

    /// The writer wrote `added` bytes holding `records` records to segment
    /// `seq`, now `len` long.
    pub(super) fn publish(&mut self, seq: u64, len: u64, added: u64, records: u64) {
        if let Some(s) = self.segs.last_mut().filter(|s| s.seq == seq) {
            s.len = len;
            s.records = s.records.map(|n| n + records);
        }
        self.set_total(self.total + added);
    }

    /// The writer started segment `seq`. True if the cursor moved past a
    /// segment acknowledged to its end (to be saved: it goes now, the sink
    /// may have nothing more to acknowledge for a while).
    pub(super) fn rolled(&mut self, seq: u64) -> bool {
        self.segs.push(Segment::new(seq));
        self.advance_cursor()
    }

    /// A sink read up to `end`.
    pub(super) fn read_to(&mut self, end: Pos, records: usize) {
        self.inflight = self.inflight.max(end);
        if records > 0 {
            self.stats
                .in_flight_records
                .store(records as u64, Ordering::Relaxed);
        }
    }

    /// Moves the cursor to `end`; true if it moved (to be saved).
    pub(super) fn ack(&mut self, end: Pos, records: u64) -> bool {
        if end <= self.cursor {
            return false;
        }
        self.cursor = end;
        self.stats
            .acked_records
            .fetch_add(records, Ordering::Relaxed);
        if end >= self.inflight {
            self.stats.in_flight_records.store(0, Ordering::Relaxed);
        }
        self.advance_cursor();
        true
    }

    /// Moves the acknowledged cursor from the very end of a closed segment
    /// to the start of the next, so that a wholly acknowledged segment is
    /// deleted even when nothing was read past it. True if it moved.
    fn advance_cursor(&mut self) -> bool {
        let before = self.cursor;
        while let Some(i) = self.segs.iter().position(|s| s.seq == self.cursor.seg) {
            match self.segs.get(i + 1) {
                Some(next) if self.cursor.off >= self.segs[i].len => {
                    self.cursor = Pos {
                        seg: next.seq,
                        off: 0,
                    };
                }
                _ => break,
            }
        }
        self.inflight = self.inflight.max(self.cursor);
        self.cursor != before
    }

    /// Deletes the segments before segment `seq` (that of a saved cursor:
    /// a restart does not look for them).
    fn delete_before(&mut self, seq: u64) {
        let mut total = self.total;
        while self.segs.len() > 1 && self.segs[0].seq < seq {
            let old = self.segs.remove(0);
            let _ = fs::remove_file(seg_path(&self.dir, old.seq));
            total -= old.len;
        }
        self.set_total(total);
    }

    /// Takes the oldest segment out for the drop-oldest policy (`None` when
    /// only the writer's is left): the cursor and the read position move to
    /// the next segment. Its file is left for the caller to count and delete.
    pub(super) fn take_oldest(&mut self) -> Option<Dropped> {
        if self.segs.len() < 2 {
            return None;
        }
        let old = self.segs.remove(0);
        // Unacknowledged records from the cursor on; those up to `inflight`
        // are held by the sink (shipped from memory), the rest are lost.
        let within = |p: Pos| match p.seg.cmp(&old.seq) {
            std::cmp::Ordering::Less => 0,
            std::cmp::Ordering::Equal => p.off.min(old.len),
            std::cmp::Ordering::Greater => old.len,
        };
        let from = within(self.cursor);
        let held_to = within(self.inflight).max(from);
        self.drops += 1;
        self.set_total(self.total - old.len);
        let first = Pos {
            seg: self.segs[0].seq,
            off: 0,
        };
        let moved = self.cursor < first;
        self.cursor = self.cursor.max(first);
        self.inflight = self.inflight.max(first);
        Some(Dropped {
            seq: old.seq,
            len: old.len,
            from,
            held_to,
            records: old.records,
            moved,
        })
    }

    /// True while the buffer holds more than `max` bytes in two segments or
    /// more, the oldest of them older than `newest`.
    pub(super) fn over(&self, max: u64, newest: u64) -> bool {
        self.total > max && self.segs.len() >= 2 && self.segs[0].seq < newest
    }
}

impl Wal {
    pub(super) fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Acknowledges everything before `end`: deletes fully shipped segments.
    pub fn ack(&self, end: Pos, records: u64) -> Result<(), WalError> {
        let moved = self.ledger().ack(end, records);
        if moved {
            self.save_cursor()?;
        }
        Ok(())
    }

    /// Saves the ledger's cursor, then deletes the segments before it (the
    /// cursor first: a failed save leaves them for the next one). Saves are
    /// one at a time, and the ledger's lock is not held while the file is
    /// written. Lock order: the writer's, this one, the ledger's.
    pub(super) fn save_cursor(&self) -> Result<(), WalError> {
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let cursor = self.ledger().cursor;
        if cursor > *saved {
            write_cursor(&self.cfg.dir, cursor)?;
            *saved = cursor;
        }
        self.ledger().delete_before(saved.seg);
        Ok(())
    }
}
