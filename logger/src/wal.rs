//! The disk buffer: a segmented write-ahead log between reading and shipping.
//!
//! Frames are `[len: u32 LE][crc32: u32 LE][payload]`. Segments are files
//! `NNNNNNNNNNNNNNNNNNNN.wal` in one directory; `cursor` holds the position up
//! to which the sink has acknowledged (written atomically with a rename).
//! Appends are written with one `write(2)` per batch and `fdatasync`ed at most
//! every `fsync_interval`. On open, the last segment is scanned and a torn or
//! corrupt tail (a crash in the middle of a write) is cut off and counted.
//!
//! The buffer is bounded: when it holds `max_bytes`, the [`FullPolicy`]
//! applies. `Pause` makes [`Wal::is_full`] true so the shipper stops reading
//! the containers' pipes (they back up into the containers); `DropOldest`
//! deletes the oldest segment and counts every record lost with it.
//!
//! The buffer holds every container's records: its directory is 0700 and its
//! files 0600 whatever the umask (see [`crate::private`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::private;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const HDR: usize = 8;
/// Largest accepted frame payload (a record is far smaller).
pub const MAX_FRAME: usize = 64 << 20;

/// What to do when the buffer is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FullPolicy {
    /// Stop reading container output until the sink catches up (no loss;
    /// containers block once their pipe is full).
    Pause,
    /// Delete the oldest segment; every record in it that was not shipped is
    /// counted in `dropped_records`.
    DropOldest,
}

impl std::str::FromStr for FullPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pause" => Ok(FullPolicy::Pause),
            "drop_oldest" => Ok(FullPolicy::DropOldest),
            _ => Err(format!("`{s}` is not one of pause, drop_oldest")),
        }
    }
}

/// Settings of one buffer.
#[derive(Clone, Debug)]
pub struct WalConfig {
    /// Directory of the segments (created if missing).
    pub dir: PathBuf,
    /// A segment is closed once it reaches this size.
    pub segment_bytes: u64,
    /// Bound of the buffer on disk.
    pub max_bytes: u64,
    /// Longest time between an append and its `fdatasync`.
    pub fsync_interval: Duration,
    /// Policy when full.
    pub policy: FullPolicy,
}

/// Counters of one buffer (readable at any time).
#[derive(Debug, Default)]
pub struct WalStats {
    /// Records appended.
    pub appended_records: AtomicU64,
    /// Records acknowledged by the sink.
    pub acked_records: AtomicU64,
    /// Records deleted unshipped by the drop-oldest policy.
    pub dropped_records: AtomicU64,
    /// Records found corrupt (bad checksum, torn tail) and skipped.
    pub corrupt_records: AtomicU64,
    /// Bytes currently on disk.
    pub buffer_bytes: AtomicU64,
    /// `fdatasync` calls.
    pub fsyncs: AtomicU64,
}

/// Errors of the buffer; all carry the path.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An I/O error on a file of the buffer.
    #[error("disk buffer {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A position in the log: segment number and byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    /// Segment sequence number.
    pub seg: u64,
    /// Byte offset inside the segment.
    pub off: u64,
}

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
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    len: u64,
}

#[derive(Debug)]
struct Inner {
    segs: Vec<Segment>,
    writer: File,
    cursor: Pos,
    inflight: Pos,
    total: u64,
    pending: Vec<u8>,
    pending_records: u64,
    unsynced: bool,
    last_sync: Instant,
}

/// The write-ahead log. Share it between the reader and the sink with `Arc`.
#[derive(Debug)]
pub struct Wal {
    cfg: WalConfig,
    inner: Mutex<Inner>,
    more: Condvar,
    /// Counters.
    pub stats: Arc<WalStats>,
}

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

fn frame_header(payload: &[u8]) -> [u8; HDR] {
    let mut h = [0u8; HDR];
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4..].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    h
}

/// Scans frames of `data`; returns (valid length, record count, whether a bad frame ended it).
fn scan(data: &[u8]) -> (usize, u64, bool) {
    let mut pos = 0;
    let mut n = 0;
    while pos + HDR <= data.len() {
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap_or([0; 4])) as usize;
        let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().unwrap_or([0; 4]));
        if len > MAX_FRAME || pos + HDR + len > data.len() {
            return (pos, n, true);
        }
        if crc32fast::hash(&data[pos + HDR..pos + HDR + len]) != crc {
            return (pos, n, true);
        }
        pos += HDR + len;
        n += 1;
    }
    (pos, n, pos != data.len())
}

impl Wal {
    /// Opens (or creates) the buffer, replaying what a previous run left.
    pub fn open(cfg: WalConfig) -> Result<Wal, WalError> {
        let dir = cfg.dir.clone();
        private::create_dir(&dir).map_err(io_err(&dir))?;
        let stats = Arc::new(WalStats::default());
        let mut seqs: Vec<u64> = fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".wal")?.parse().ok()
            })
            .collect();
        seqs.sort_unstable();
        let cursor = Self::load_cursor(&dir).unwrap_or(Pos {
            seg: seqs.first().copied().unwrap_or(1),
            off: 0,
        });
        // Segments wholly before the cursor were acknowledged: delete them.
        let mut segs = Vec::new();
        for seq in seqs {
            let p = seg_path(&dir, seq);
            if seq < cursor.seg {
                let _ = fs::remove_file(&p);
                continue;
            }
            let len = fs::metadata(&p).map_err(io_err(&p))?.len();
            segs.push(Segment { seq, len });
        }
        if segs.is_empty() {
            let seq = cursor.seg.max(1);
            private::create(&seg_path(&dir, seq)).map_err(io_err(&dir))?;
            segs.push(Segment { seq, len: 0 });
        }
        // Cut a torn or corrupt tail off the last segment.
        let last = segs.last_mut().expect("one segment");
        let lp = seg_path(&dir, last.seq);
        let mut data = Vec::new();
        File::open(&lp)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(io_err(&lp))?;
        let (valid, _, bad) = scan(&data);
        if bad {
            tracing::warn!(path = %lp.display(), cut = data.len() - valid, "disk buffer: cutting a torn tail");
            stats.corrupt_records.fetch_add(1, Ordering::Relaxed);
            let f = OpenOptions::new()
                .write(true)
                .open(&lp)
                .map_err(io_err(&lp))?;
            f.set_len(valid as u64).map_err(io_err(&lp))?;
            f.sync_data().map_err(io_err(&lp))?;
            last.len = valid as u64;
        }
        let mut writer = private::open_append(&lp).map_err(io_err(&lp))?;
        writer.seek(SeekFrom::End(0)).map_err(io_err(&lp))?;
        let cursor = if cursor.seg < segs[0].seq {
            Pos {
                seg: segs[0].seq,
                off: 0,
            }
        } else {
            cursor
        };
        let total = segs.iter().map(|s| s.len).sum();
        stats.buffer_bytes.store(total, Ordering::Relaxed);
        let inner = Inner {
            segs,
            writer,
            cursor,
            inflight: cursor,
            total,
            pending: Vec::new(),
            pending_records: 0,
            unsynced: false,
            last_sync: Instant::now(),
        };
        Ok(Wal {
            cfg,
            inner: Mutex::new(inner),
            more: Condvar::new(),
            stats,
        })
    }

    fn load_cursor(dir: &Path) -> Option<Pos> {
        let s = fs::read_to_string(dir.join("cursor")).ok()?;
        let (a, b) = s.trim().split_once(':')?;
        Some(Pos {
            seg: a.parse().ok()?,
            off: b.parse().ok()?,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Frames one record at the end of `buf` (a caller's batch for
    /// [`Wal::push_framed`]): `encode` appends the payload.
    pub fn frame_into(buf: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>)) {
        let at = buf.len();
        buf.extend_from_slice(&[0u8; HDR]);
        encode(buf);
        let h = frame_header(&buf[at + HDR..]);
        buf[at..at + HDR].copy_from_slice(&h);
    }

    /// Queues `records` records framed by [`Wal::frame_into`] (one lock for
    /// the batch); they reach the file at the next [`Wal::commit`].
    pub fn push_framed(&self, framed: &[u8], records: u64) {
        if records == 0 {
            return;
        }
        let mut g = self.lock();
        g.pending.extend_from_slice(framed);
        g.pending_records += records;
    }

    /// Queues one record; it reaches the file at the next [`Wal::commit`].
    pub fn push(&self, payload: &[u8]) {
        let mut g = self.lock();
        let h = frame_header(payload);
        g.pending.extend_from_slice(&h);
        g.pending.extend_from_slice(payload);
        g.pending_records += 1;
    }

    /// Writes the queued records (one `write`), applying the full policy, and
    /// `fdatasync`s if the interval has passed.
    pub fn commit(&self) -> Result<(), WalError> {
        let mut g = self.lock();
        if !g.pending.is_empty() {
            let data = std::mem::take(&mut g.pending);
            let n = std::mem::take(&mut g.pending_records);
            if self.cfg.policy == FullPolicy::DropOldest {
                while g.total + data.len() as u64 > self.cfg.max_bytes
                    && self.drop_oldest(&mut g)?
                {}
            }
            let seq = g.segs.last().map(|s| s.seq).unwrap_or(1);
            let p = seg_path(&self.cfg.dir, seq);
            g.writer.write_all(&data).map_err(io_err(&p))?;
            let last = g.segs.last_mut().expect("one segment");
            last.len += data.len() as u64;
            let roll = last.len >= self.cfg.segment_bytes;
            g.total += data.len() as u64;
            g.unsynced = true;
            self.stats.appended_records.fetch_add(n, Ordering::Relaxed);
            if roll {
                self.sync_locked(&mut g)?;
                let next = seq + 1;
                let np = seg_path(&self.cfg.dir, next);
                g.writer = private::open_append(&np).map_err(io_err(&np))?;
                g.segs.push(Segment { seq: next, len: 0 });
            }
            // One large append can overshoot the bound: trim closed segments after it too.
            // (never the segment just written: the newest records stay).
            while self.cfg.policy == FullPolicy::DropOldest
                && g.total > self.cfg.max_bytes
                && g.segs.len() >= 2
                && g.segs[0].seq < seq
                && self.drop_oldest(&mut g)?
            {}
            self.stats.buffer_bytes.store(g.total, Ordering::Relaxed);
            self.more.notify_all();
        }
        if g.unsynced && g.last_sync.elapsed() >= self.cfg.fsync_interval {
            return self.sync_unlocked(g);
        }
        Ok(())
    }

    /// `fdatasync`s appended data now (before a reader checkpoint is saved).
    pub fn sync(&self) -> Result<(), WalError> {
        let g = self.lock();
        self.sync_unlocked(g)
    }

    /// Like `sync_locked`, but the `fdatasync` (which can take long under
    /// writeback) runs after the lock is released, on a duplicate of the
    /// segment's descriptor: whatever was written before is made durable.
    fn sync_unlocked(&self, mut g: MutexGuard<'_, Inner>) -> Result<(), WalError> {
        if !g.unsynced {
            g.last_sync = Instant::now();
            return Ok(());
        }
        let seq = g.segs.last().map(|s| s.seq).unwrap_or(1);
        let f = g
            .writer
            .try_clone()
            .map_err(io_err(&seg_path(&self.cfg.dir, seq)))?;
        g.unsynced = false;
        g.last_sync = Instant::now();
        drop(g);
        if let Err(e) = f.sync_data() {
            self.lock().unsynced = true;
            return Err(io_err(&seg_path(&self.cfg.dir, seq))(e));
        }
        self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn sync_locked(&self, g: &mut Inner) -> Result<(), WalError> {
        if g.unsynced {
            let seq = g.segs.last().map(|s| s.seq).unwrap_or(1);
            g.writer
                .sync_data()
                .map_err(io_err(&seg_path(&self.cfg.dir, seq)))?;
            self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            g.unsynced = false;
        }
        g.last_sync = Instant::now();
        Ok(())
    }

    /// Deletes the oldest segment, counting its unshipped records. Returns
    /// false when only the segment being written is left.
    fn drop_oldest(&self, g: &mut Inner) -> Result<bool, WalError> {
        if g.segs.len() < 2 {
            // Close the active segment so that it can go next time.
            if g.segs.last().is_some_and(|s| s.len > 0) {
                self.sync_locked(g)?;
                let next = g.segs.last().map(|s| s.seq).unwrap_or(0) + 1;
                let np = seg_path(&self.cfg.dir, next);
                g.writer = private::open_append(&np).map_err(io_err(&np))?;
                g.segs.push(Segment { seq: next, len: 0 });
                return Ok(true);
            }
            return Ok(false);
        }
        let old = g.segs.remove(0);
        let p = seg_path(&self.cfg.dir, old.seq);
        let from = if g.inflight.seg == old.seq {
            g.inflight.off
        } else if g.inflight.seg > old.seq {
            old.len
        } else {
            0
        };
        let mut data = Vec::new();
        if from < old.len {
            let mut f = File::open(&p).map_err(io_err(&p))?;
            f.seek(SeekFrom::Start(from)).map_err(io_err(&p))?;
            f.read_to_end(&mut data).map_err(io_err(&p))?;
        }
        let (_, n, _) = scan(&data);
        self.stats.dropped_records.fetch_add(n, Ordering::Relaxed);
        if n > 0 {
            tracing::warn!(
                records = n,
                segment = old.seq,
                "disk buffer full: dropped the oldest segment"
            );
        }
        fs::remove_file(&p).map_err(io_err(&p))?;
        g.total -= old.len;
        let first = Pos {
            seg: g.segs[0].seq,
            off: 0,
        };
        if g.cursor < first {
            g.cursor = first;
            self.save_cursor(first)?;
        }
        if g.inflight < first {
            g.inflight = first;
        }
        Ok(true)
    }

    /// True when the buffer holds `max_bytes` or more (with the pause policy,
    /// the reader must stop reading containers until this turns false).
    /// Lock-free (the reader asks before every splice; the parser may hold
    /// the lock through a large write).
    pub fn is_full(&self) -> bool {
        self.cfg.policy == FullPolicy::Pause
            && self.stats.buffer_bytes.load(Ordering::Relaxed) >= self.cfg.max_bytes
    }

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
        let mut g = self.lock();
        loop {
            let mut batch = Batch {
                end: g.cursor,
                ..Default::default()
            };
            let mut pos = g.cursor;
            let start_seg = pos.seg;
            'segs: for s in g.segs.iter().filter(|s| s.seq >= start_seg) {
                if s.seq > pos.seg {
                    pos = Pos { seg: s.seq, off: 0 };
                }
                if pos.off >= s.len {
                    batch.end = Pos {
                        seg: s.seq,
                        off: s.len,
                    };
                    continue;
                }
                let p = seg_path(&self.cfg.dir, s.seq);
                let f = File::open(&p).map_err(io_err(&p))?;
                let want = usize::try_from(s.len - pos.off)
                    .unwrap_or(usize::MAX)
                    .min(max_bytes.max(HDR + MAX_FRAME / 16));
                let mut data = vec![0u8; want];
                f.read_exact_at(&mut data, pos.off).map_err(io_err(&p))?;
                let mut i = 0;
                while i + HDR <= data.len() {
                    let len =
                        u32::from_le_bytes(data[i..i + 4].try_into().unwrap_or([0; 4])) as usize;
                    let crc = u32::from_le_bytes(data[i + 4..i + 8].try_into().unwrap_or([0; 4]));
                    if len > MAX_FRAME {
                        // Unreadable rest of a closed segment: skip it, counted.
                        self.stats.corrupt_records.fetch_add(1, Ordering::Relaxed);
                        batch.end = Pos {
                            seg: s.seq,
                            off: s.len,
                        };
                        continue 'segs;
                    }
                    if i + HDR + len > data.len() {
                        if batch.is_empty() && i == 0 && len + HDR > data.len() {
                            // One record larger than the read window: read it whole.
                            let mut big = vec![0u8; HDR + len];
                            f.read_exact_at(&mut big, pos.off).map_err(io_err(&p))?;
                            data = big;
                            continue;
                        }
                        break 'segs;
                    }
                    let payload = &data[i + HDR..i + HDR + len];
                    if crc32fast::hash(payload) == crc {
                        let a = batch.data.len();
                        batch.data.extend_from_slice(payload);
                        batch.spans.push((a, batch.data.len()));
                    } else {
                        self.stats.corrupt_records.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            segment = s.seq,
                            offset = pos.off + i as u64,
                            "disk buffer: record with a bad checksum skipped"
                        );
                    }
                    i += HDR + len;
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
            if !batch.is_empty() || Instant::now() >= deadline {
                g.inflight = g.inflight.max(batch.end);
                return Ok(batch);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            g = self
                .more
                .wait_timeout(g, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Acknowledges everything before `end`: deletes fully shipped segments.
    pub fn ack(&self, end: Pos, records: u64) -> Result<(), WalError> {
        let mut g = self.lock();
        if end <= g.cursor {
            return Ok(());
        }
        g.cursor = end;
        self.stats
            .acked_records
            .fetch_add(records, Ordering::Relaxed);
        while g.segs.len() > 1 && g.segs[0].seq < end.seg {
            let old = g.segs.remove(0);
            let _ = fs::remove_file(seg_path(&self.cfg.dir, old.seq));
            g.total -= old.len;
        }
        // A fully read, closed-out single segment: recycle it when the writer rolls.
        self.stats.buffer_bytes.store(g.total, Ordering::Relaxed);
        self.save_cursor(end)
    }

    fn save_cursor(&self, p: Pos) -> Result<(), WalError> {
        let path = self.cfg.dir.join("cursor");
        private::write_atomic(&path, format!("{}:{}\n", p.seg, p.off).as_bytes())
            .map_err(io_err(&path))
    }

    /// Unacknowledged bytes (approximate: whole segments are counted).
    pub fn bytes(&self) -> u64 {
        self.lock().total
    }

    /// Wakes a reader waiting in [`Wal::read_batch`].
    pub fn wake(&self) {
        self.more.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path, max: u64, policy: FullPolicy) -> WalConfig {
        WalConfig {
            dir: dir.to_path_buf(),
            segment_bytes: 1024,
            max_bytes: max,
            fsync_interval: Duration::from_millis(10),
            policy,
        }
    }

    fn rec(i: u32) -> Vec<u8> {
        format!("record-{i:06}-{}", "p".repeat(40)).into_bytes()
    }

    fn drain(w: &Wal) -> Vec<Vec<u8>> {
        let mut all = Vec::new();
        loop {
            let b = w.read_batch(7, 1 << 20, Duration::ZERO).unwrap();
            if b.is_empty() {
                return all;
            }
            all.extend(b.iter().map(<[u8]>::to_vec));
            w.ack(b.end, b.len() as u64).unwrap();
        }
    }

    #[test]
    fn append_read_ack_and_replay() {
        let d = tempfile::tempdir().unwrap();
        let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
        for i in 0..100 {
            w.push(&rec(i));
        }
        w.commit().unwrap();
        // Read 10 records, acknowledge them, then "crash" (drop) and reopen.
        let b = w.read_batch(10, 1 << 20, Duration::ZERO).unwrap();
        assert_eq!(b.len(), 10);
        assert_eq!(b.get(0), &rec(0)[..]);
        w.ack(b.end, 10).unwrap();
        let b2 = w.read_batch(5, 1 << 20, Duration::ZERO).unwrap();
        assert_eq!(b2.get(0), &rec(10)[..]);
        drop(w);
        let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
        let got = drain(&w);
        // Unacknowledged records are replayed (10..100), acknowledged ones are not.
        assert_eq!(got.len(), 90);
        assert_eq!(got[0], rec(10));
        assert_eq!(got[89], rec(99));
        // Segments were rolled at 1 KiB and deleted once acknowledged.
        let segs = fs::read_dir(d.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "wal")
            })
            .count();
        assert!(segs <= 2, "{segs} segments left");
    }

    #[test]
    fn framed_batches_read_back_like_single_pushes() {
        let d = tempfile::tempdir().unwrap();
        let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
        let mut batch = Vec::new();
        for i in 0..30 {
            Wal::frame_into(&mut batch, |b| b.extend_from_slice(&rec(i)));
        }
        w.push_framed(&batch, 30);
        w.push(&rec(30));
        w.commit().unwrap();
        assert_eq!(w.stats.appended_records.load(Ordering::Relaxed), 31);
        drop(w);
        // After a reopen the frames' checksums are verified: all 31 come back.
        let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
        let got = drain(&w);
        assert_eq!(got, (0..31).map(rec).collect::<Vec<_>>());
        assert_eq!(w.stats.corrupt_records.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn torn_tail_is_cut_and_counted() {
        let d = tempfile::tempdir().unwrap();
        let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
        for i in 0..5 {
            w.push(&rec(i));
        }
        w.commit().unwrap();
        drop(w);
        // Simulate a crash in the middle of a write: half a frame at the end.
        let seg = seg_path(d.path(), 1);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        let r = rec(5);
        f.write_all(&frame_header(&r)).unwrap();
        f.write_all(&r[..10]).unwrap();
        drop(f);
        let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
        assert_eq!(w.stats.corrupt_records.load(Ordering::Relaxed), 1);
        w.push(&rec(6));
        w.commit().unwrap();
        let got = drain(&w);
        assert_eq!(got, vec![rec(0), rec(1), rec(2), rec(3), rec(4), rec(6)]);
    }

    #[test]
    fn bad_checksum_in_closed_segment_is_skipped_and_counted() {
        let d = tempfile::tempdir().unwrap();
        let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
        for i in 0..40 {
            w.push(&rec(i));
        }
        w.commit().unwrap();
        drop(w);
        // Flip a byte inside the 3rd record of the first segment.
        let seg = seg_path(d.path(), 1);
        let mut data = fs::read(&seg).unwrap();
        let frame = HDR + rec(0).len();
        data[2 * frame + HDR + 3] ^= 0xff;
        fs::write(&seg, &data).unwrap();
        let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
        let got = drain(&w);
        assert_eq!(got.len(), 39);
        assert!(!got.contains(&rec(2)));
        assert_eq!(w.stats.corrupt_records.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn pause_policy_reports_full() {
        let d = tempfile::tempdir().unwrap();
        let w = Wal::open(cfg(d.path(), 2048, FullPolicy::Pause)).unwrap();
        let mut i = 0;
        while !w.is_full() {
            w.push(&rec(i));
            w.commit().unwrap();
            i += 1;
        }
        assert!(i > 10);
        assert!(w.bytes() <= 2048 + 70);
        // Shipping frees space again.
        let got = drain(&w);
        assert_eq!(got.len(), i as usize);
        assert!(!w.is_full());
        assert_eq!(w.stats.dropped_records.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn drop_oldest_counts_every_lost_record() {
        let d = tempfile::tempdir().unwrap();
        let w = Wal::open(cfg(d.path(), 4096, FullPolicy::DropOldest)).unwrap();
        let n = 1000u32;
        for i in 0..n {
            w.push(&rec(i));
            w.commit().unwrap();
        }
        assert!(w.bytes() <= 4096);
        let got = drain(&w);
        let dropped = w.stats.dropped_records.load(Ordering::Relaxed);
        assert!(dropped > 0);
        // Nothing is lost silently: shipped + counted as dropped = appended.
        assert_eq!(got.len() as u64 + dropped, u64::from(n));
        // What is left is the newest, in order.
        assert_eq!(*got.last().unwrap(), rec(n - 1));
        let first = String::from_utf8(got[0].clone()).unwrap();
        assert_eq!(
            first,
            String::from_utf8(rec(u32::try_from(dropped).unwrap())).unwrap()
        );
    }

    #[test]
    fn drop_oldest_while_a_batch_is_in_flight() {
        let d = tempfile::tempdir().unwrap();
        let w = Wal::open(cfg(d.path(), 4096, FullPolicy::DropOldest)).unwrap();
        for i in 0..30 {
            w.push(&rec(i));
        }
        w.commit().unwrap();
        let inflight = w.read_batch(5, 1 << 20, Duration::ZERO).unwrap();
        for i in 30..300 {
            w.push(&rec(i));
            w.commit().unwrap();
        }
        // The in-flight batch is still acknowledged (it was shipped).
        w.ack(inflight.end, 5).unwrap();
        let got = drain(&w);
        let dropped = w.stats.dropped_records.load(Ordering::Relaxed);
        assert_eq!(5 + got.len() as u64 + dropped, 300);
    }
}
