//! The reader: batches of unacknowledged records for a sink.
//!
//! It takes a snapshot of the segments and their committed lengths from the
//! ledger, then reads the files with positional reads on its own
//! descriptors, holding no lock: the writer goes on writing meanwhile, and a
//! segment deleted during the read stays readable through the descriptor.
//! If the drop-oldest policy took a segment the read started in, the records
//! read were counted as dropped: the batch is read again from the new cursor.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::error::{io_err, WalError};
use super::format::{bad_len, crc_ok, header, seg_path, HDR, MAX_FRAME};
use super::ledger::{Pos, Segment};
use super::Wal;

/// Reads overtaken by drops in a row before an empty batch is returned
/// (once the wait is over).
const MAX_REREADS: u32 = 3;

/// Records read for shipping; acknowledge with [`Wal::ack`]`(batch.end)`.
#[derive(Debug, Default)]
pub struct Batch {
    data: Vec<u8>,
    spans: Vec<(usize, usize)>,
    /// Position after the last record of the batch.
    pub end: Pos,
}

impl Batch {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.spans.len()
    }
    /// True when there is no record.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
    /// The payload of record `i`.
    pub fn get(&self, i: usize) -> &[u8] {
        let (a, b) = self.spans[i];
        &self.data[a..b]
    }
    /// All payloads.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.spans.iter().map(|&(a, b)| &self.data[a..b])
    }
    fn push(&mut self, payload: &[u8]) {
        let a = self.data.len();
        self.data.extend_from_slice(payload);
        self.spans.push((a, self.data.len()));
    }
}

impl Wal {
    /// Reads up to `max_records` / `max_bytes` unacknowledged records, waiting
    /// up to `wait` for the first one. Records are re-read after a restart
    /// until acknowledged (at-least-once).
    pub fn read_batch(
        &self,
        max_records: usize,
        max_bytes: usize,
        wait: Duration,
    ) -> Result<Batch, WalError> {
        let deadline = Instant::now() + wait;
        let mut l = self.ledger();
        let mut retries = 0;
        loop {
            let (start, drops) = (l.cursor, l.drops);
            let view: Vec<Segment> = l
                .segs
                .iter()
                .filter(|s| s.seq >= start.seg)
                .copied()
                .collect();
            drop(l);
            let read = self.read_segments(&view, start, max_records, max_bytes);
            l = self.ledger();
            // A drop took the segment the read started in (its records were
            // counted as dropped; a file may be gone), or an acknowledgement
            // deleted a file meanwhile: read again.
            let overtaken = l.drops != drops && l.segs.first().is_some_and(|s| s.seq > start.seg);
            let gone = l.cursor > start && read.as_ref().is_err_and(WalError::is_not_found);
            let batch = match read {
                _ if overtaken || gone => {
                    retries += 1;
                    if retries > MAX_REREADS && Instant::now() >= deadline {
                        // Nothing read stays valid this time: the sink asks again.
                        return Ok(Batch {
                            end: l.cursor,
                            ..Default::default()
                        });
                    }
                    continue;
                }
                Ok(b) => b,
                Err(e) => return Err(e),
            };
            if !batch.is_empty() || Instant::now() >= deadline {
                l.read_to(batch.end, batch.len());
                return Ok(batch);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            l = self
                .more
                .wait_timeout(l, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Reads records from `start` in the segments of `view` (no lock held).
    fn read_segments(
        &self,
        view: &[Segment],
        start: Pos,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Batch, WalError> {
        let mut batch = Batch {
            end: start,
            ..Default::default()
        };
        let mut pos = start;
        'segs: for s in view {
            if s.seq > pos.seg {
                pos = Pos { seg: s.seq, off: 0 };
            }
            let rest = Pos {
                seg: s.seq,
                off: s.len,
            };
            if pos.off >= s.len {
                batch.end = rest;
                continue;
            }
            let p = seg_path(&self.cfg.dir, s.seq);
            let f = File::open(&p).map_err(io_err(&p))?;
            let want = usize::try_from(s.len - pos.off)
                .unwrap_or(usize::MAX)
                .min(max_bytes.max(HDR + MAX_FRAME / 16));
            let mut data = read_at(&f, want, pos.off).map_err(io_err(&p))?;
            let mut i = 0;
            while let Some((len, crc)) = header(&data, i) {
                let end = i + HDR + len;
                if bad_len(len) || pos.off + end as u64 > s.len {
                    // Unreadable rest of a closed segment (a length no record
                    // has, or past its end): skip it, counted.
                    self.stats.corrupt_records.fetch_add(1, Ordering::Relaxed);
                    batch.end = rest;
                    continue 'segs;
                }
                if end > data.len() {
                    if batch.is_empty() && i == 0 {
                        // One record larger than the read window: read it whole.
                        data = read_at(&f, HDR + len, pos.off).map_err(io_err(&p))?;
                        continue;
                    }
                    break 'segs;
                }
                let payload = &data[i + HDR..end];
                if crc_ok(payload, crc) {
                    batch.push(payload);
                } else {
                    self.stats.corrupt_records.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        segment = s.seq,
                        offset = pos.off + i as u64,
                        "disk buffer: record with a bad checksum skipped"
                    );
                }
                i = end;
                batch.end = Pos {
                    seg: s.seq,
                    off: pos.off + i as u64,
                };
                if batch.len() >= max_records || batch.data.len() >= max_bytes {
                    break 'segs;
                }
            }
            if pos.off + (i as u64) < s.len {
                break;
            }
        }
        Ok(batch)
    }

    /// Wakes a reader waiting in [`Wal::read_batch`].
    pub fn wake(&self) {
        self.more.notify_all();
    }
}

/// `len` bytes of `f` at `off`.
fn read_at(f: &File, len: usize, off: u64) -> io::Result<Vec<u8>> {
    let mut data = vec![0u8; len];
    f.read_exact_at(&mut data, off)?;
    Ok(data)
}
