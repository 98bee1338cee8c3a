//! The reader: batches of unacknowledged records for a sink.
//!
//! It takes a snapshot of the segments and their committed lengths from the
//! ledger, then reads the files with positional reads on its own
//! descriptors, holding no lock: the writer goes on writing meanwhile, and a
//! segment deleted during the read stays readable through the descriptor.
//! If the drop-oldest policy took a segment the read started in, the records
//! read were counted as dropped: the batch is read again from the new cursor.
//! Meta frames are learnt (see [`super::meta`]), never handed out: a batch
//! holds its records and the metas they name. Records stay in the chunks
//! read from the files (no copy).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use super::error::{io_err, WalError};
use super::format::{bad_len, crc_ok, header, meta_ref, seg_path, HDR, MAX_FRAME};
use super::ledger::{Pos, Segment};
use super::meta::ReadMetas;
use super::Wal;

/// Bytes read at once when learning the metas before a read's start.
const LEARN_WINDOW: usize = 1 << 20;

/// Reads overtaken by drops in a row before an empty batch is returned
/// (once the wait is over).
const MAX_REREADS: u32 = 3;

/// Records read for shipping; acknowledge with [`Wal::ack`]`(batch.end)`.
#[derive(Debug, Default)]
pub struct Batch {
    /// Chunks as read from the files.
    chunks: Vec<Vec<u8>>,
    /// Each record: its chunk and its bytes there.
    spans: Vec<(usize, usize, usize)>,
    /// Bytes of the records, made whole.
    bytes: usize,
    /// The metas the records name, by key.
    metas: HashMap<u64, Arc<[u8]>>,
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
        let (c, a, b) = self.spans[i];
        &self.chunks[c][a..b]
    }
    /// All payloads.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.spans.iter().map(|&(c, a, b)| &self.chunks[c][a..b])
    }
    /// Bytes of the records, made whole (what the batch's byte bound counts).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// The meta named `key` by a record of the batch (`None`: the buffer
    /// holds no such meta before the record).
    pub fn meta(&self, key: u64) -> Option<&[u8]> {
        self.metas.get(&key).map(|m| &m[..])
    }
    /// Records `a..b` of the chunk being read (the last one), whose meta
    /// adds `meta` bytes when it is made whole (the batch's byte bound
    /// counts whole records: what a sink sends).
    fn push(&mut self, a: usize, b: usize, meta: usize) {
        self.spans.push((self.chunks.len() - 1, a, b));
        self.bytes += b - a + meta;
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
        let mut metas = self.read_metas();
        metas.forget_before(start.seg);
        let mut last_ref = None;
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
            self.learn_before(&mut metas, &f, pos).map_err(io_err(&p))?;
            let want = usize::try_from(s.len - pos.off)
                .unwrap_or(usize::MAX)
                .min(max_bytes.max(HDR + MAX_FRAME / 16));
            batch
                .chunks
                .push(read_at(&f, want, pos.off).map_err(io_err(&p))?);
            let mut i = 0;
            loop {
                let data = batch.chunks.last().expect("a chunk");
                let Some((len, crc)) = header(data, i) else {
                    break;
                };
                let end = i + HDR + len;
                if bad_len(len) || pos.off + end as u64 > s.len {
                    // Unreadable rest of a closed segment (a length no record
                    // has, or past its end): skip it, counted.
                    self.stats.corrupt_records.fetch_add(1, Ordering::Relaxed);
                    batch.end = rest;
                    continue 'segs;
                }
                if end > data.len() {
                    if i == 0 {
                        // One record larger than the read window: read it whole.
                        let whole = read_at(&f, HDR + len, pos.off).map_err(io_err(&p))?;
                        *batch.chunks.last_mut().expect("a chunk") = whole;
                        continue;
                    }
                    break 'segs;
                }
                let payload = &data[i + HDR..end];
                let at = Pos {
                    seg: s.seq,
                    off: pos.off + i as u64,
                };
                if !crc_ok(payload, crc) {
                    self.stats.corrupt_records.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        segment = s.seq,
                        offset = pos.off + i as u64,
                        "disk buffer: record with a bad checksum skipped"
                    );
                } else if !metas.learn(s.seq, payload) {
                    // Records come in runs naming one meta: one lookup per run.
                    let mut whole = 0;
                    if let Some(k) = meta_ref(payload) {
                        if last_ref.is_none_or(|(l, _)| l != k) {
                            last_ref = self
                                .attach_meta(&metas, &mut batch.metas, k, at)
                                .map(|len| (k, len));
                        }
                        whole = last_ref.map_or(0, |(_, len)| len);
                    }
                    batch.push(i + HDR, end, whole);
                }
                i = end;
                batch.end = Pos {
                    seg: s.seq,
                    off: pos.off + i as u64,
                };
                if batch.len() >= max_records || batch.bytes >= max_bytes {
                    break 'segs;
                }
            }
            if pos.off + (i as u64) < s.len {
                break;
            }
        }
        metas.learnt = metas.learnt.max(batch.end);
        Ok(batch)
    }

    /// Puts the meta `key` a record at `at` names in `to` (its length), or
    /// counts a missing one once, the first time the record is read (the
    /// sink dead-letters the record).
    fn attach_meta(
        &self,
        metas: &ReadMetas,
        to: &mut HashMap<u64, Arc<[u8]>>,
        key: u64,
        at: Pos,
    ) -> Option<usize> {
        match metas.get(key) {
            Some(m) => {
                to.entry(key).or_insert_with(|| m.clone());
                return Some(m.len());
            }
            None if at >= metas.learnt => {
                self.stats.missing_meta.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    segment = at.seg,
                    offset = at.off,
                    "disk buffer: record without its meta frame"
                );
            }
            None => {}
        }
        None
    }

    fn read_metas(&self) -> MutexGuard<'_, ReadMetas> {
        self.read_metas.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Learns the metas of segment `pos.seg` before `pos.off` not learnt
    /// yet (a read starting in the middle of a segment, after a restart).
    fn learn_before(&self, metas: &mut ReadMetas, f: &File, pos: Pos) -> io::Result<()> {
        let from = match metas.learnt {
            l if l.seg == pos.seg => l.off,
            l if l.seg > pos.seg => return Ok(()),
            _ => 0,
        };
        if from >= pos.off {
            return Ok(());
        }
        // In windows: the memory of a read, not of a segment.
        let mut off = from;
        while off < pos.off {
            let left = usize::try_from(pos.off - off).unwrap_or(usize::MAX);
            let mut data = read_at(f, left.min(LEARN_WINDOW), off)?;
            let mut i = 0;
            while let Some((len, crc)) = header(&data, i) {
                let end = i + HDR + len;
                if bad_len(len) || off + end as u64 > pos.off {
                    // Corrupt: the read skips the rest of the segment anyway.
                    i = left;
                    break;
                }
                if end > data.len() {
                    if i == 0 {
                        data = read_at(f, HDR + len, off)?;
                        continue;
                    }
                    break;
                }
                if crc_ok(&data[i + HDR..end], crc) {
                    metas.learn(pos.seg, &data[i + HDR..end]);
                }
                i = end;
            }
            if i == 0 {
                break;
            }
            off += i as u64;
        }
        metas.learnt = pos;
        Ok(())
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
