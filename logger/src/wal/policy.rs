//! The full-buffer policy: with `pause` the buffer reports itself full
//! ([`Wal::is_full`]) so the shipper stops reading the containers' pipes;
//! with `drop_oldest` the writer deletes the oldest segment and counts every
//! record lost with it (and those a sink holds, shipped from memory, apart).

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::Ordering;

use super::config::FullPolicy;
use super::error::{io_err, WalError};
use super::format::{scan, seg_path};
use super::ledger::Dropped;
use super::writer::Writer;
use super::Wal;

impl Wal {
    /// True when the buffer holds `max_bytes` or more (with the pause policy,
    /// the reader must stop reading containers until this turns false).
    /// Lock-free (the reader asks before every splice; the parser may hold
    /// the lock through a large write).
    pub fn is_full(&self) -> bool {
        self.cfg.policy == FullPolicy::Pause
            && self.stats.buffer_bytes.load(Ordering::Relaxed) >= self.cfg.max_bytes
    }

    /// Bytes of all segments.
    pub(super) fn buffered(&self) -> u64 {
        self.ledger().total
    }

    /// True while closed segments older than `newest` keep the buffer over its bound.
    pub(super) fn over_bound(&self, newest: u64) -> bool {
        self.ledger().over(self.cfg.max_bytes, newest)
    }

    /// Takes the oldest segment out of the buffer (counted and deleted by
    /// [`Wal::finish_drops`]). Returns false when only the segment being
    /// written is left (and empty: one with records is closed, to go next
    /// time).
    pub(super) fn drop_oldest(&self, w: &mut Writer) -> Result<bool, WalError> {
        let taken = self.ledger().take_oldest();
        let Some(old) = taken else {
            if w.len > 0 {
                self.roll(w)?;
                return Ok(true);
            }
            return Ok(false);
        };
        w.dropping.cursor_moved |= old.moved;
        w.dropping.segs.push(old);
        Ok(true)
    }

    /// Counts the unshipped records of the segments dropped, deletes them,
    /// then saves the cursor if a drop moved it. Run once the writer's lock
    /// is let go (a producer waits for neither the deletion nor the cursor
    /// file), or under it when a full file system needs the room at once.
    pub(super) fn finish_drops(&self, d: Dropping) {
        for old in d.segs {
            let p = seg_path(&self.cfg.dir, old.seq);
            match count_dropped(&old, &p) {
                Ok((held, lost)) => {
                    self.stats
                        .dropped_records
                        .fetch_add(lost, Ordering::Relaxed);
                    self.stats
                        .dropped_in_flight
                        .fetch_add(held, Ordering::Relaxed);
                    if lost > 0 {
                        tracing::warn!(
                            records = lost,
                            segment = old.seq,
                            "disk buffer full: dropped the oldest segment"
                        );
                    }
                }
                Err(e) => tracing::error!(
                    segment = old.seq,
                    "disk buffer full: dropped the oldest segment, its records uncounted: {}",
                    io_err(&p)(e)
                ),
            }
            if let Err(e) = fs::remove_file(&p) {
                tracing::error!("deleting a dropped segment: {}", io_err(&p)(e));
            }
        }
        if d.cursor_moved {
            if let Err(e) = self.save_cursor() {
                tracing::warn!("{e}");
            }
        }
    }
}

/// Segments the drop-oldest policy took out, to count and delete.
#[derive(Debug, Default)]
pub(super) struct Dropping {
    segs: Vec<Dropped>,
    /// A drop moved the acknowledged cursor (to be saved).
    cursor_moved: bool,
}

/// The records of a dropped segment a sink holds, and those lost: read back
/// only when a sink read or acknowledged part of it (or its count is not
/// known), never for a segment no sink reached yet, which is all lost.
fn count_dropped(old: &Dropped, path: &Path) -> io::Result<(u64, u64)> {
    if let Some(n) = old.records.filter(|_| old.from == 0 && old.held_to == 0) {
        return Ok((0, n));
    }
    let mut data = Vec::new();
    if old.from < old.len {
        let mut f = File::open(path)?;
        f.seek(SeekFrom::Start(old.from))?;
        f.read_to_end(&mut data)?;
    }
    let split = usize::try_from(old.held_to - old.from)
        .unwrap_or(usize::MAX)
        .min(data.len());
    let (_, held, _) = scan(&data[..split]);
    let (_, lost, _) = scan(&data[split..]);
    Ok((held, lost))
}
