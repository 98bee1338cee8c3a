//! The disk buffer: a segmented write-ahead log between reading and shipping.
//!
//! Frames are `[len: u32 LE][crc32: u32 LE][payload]`; a payload is never
//! empty (the CRC of nothing is 0, so zeroed blocks, as a file system can
//! leave past its last good write, would read as records). Segments are files
//! `NNNNNNNNNNNNNNNNNNNN.wal` in one directory; `cursor` holds the position up
//! to which the sink has acknowledged (written atomically with a rename).
//! Appends are written with one `pwrite(2)` per batch and `fdatasync`ed at most
//! every `fsync_interval`. On open, the last segment is scanned and a torn or
//! corrupt tail (a crash in the middle of a write) is cut off and counted.
//!
//! A failed write never loses or mis-frames records: the queued records stay
//! queued (not counted as appended) and a partly written batch is cut off
//! again (or, if even that fails, before the next write), so the segment
//! always ends at a frame boundary. Bytes written since the last successful
//! `fdatasync` are kept in memory: after a failed sync the kernel may have
//! dropped them from the page cache, so they are written again before the
//! next sync. While a write or sync fails, [`Wal::is_stalled`] is true (the
//! parser stops feeding this buffer and saves no checkpoint past it), every
//! failed attempt is counted (`write_errors`, `sync_errors`) and each run of
//! failures once (`write_stalls`), logged at most every [`LOG_EVERY`]; the
//! producer tries again after a backoff ([`Wal::retry_due`], 20 ms doubling
//! to 1 s), and everything resumes by itself at the first success.
//!
//! The buffer is bounded: when it holds `max_bytes`, the [`FullPolicy`]
//! applies. `Pause` makes [`Wal::is_full`] true so the shipper stops reading
//! the containers' pipes (they back up into the containers); `DropOldest`
//! deletes the oldest segment and counts every record lost with it.
//!
//! The buffer holds every container's records: its directory is 0700 and its
//! files 0600 whatever the umask (see [`crate::private`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::private;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const HDR: usize = 8;
/// Largest accepted frame payload (a record is far smaller).
pub const MAX_FRAME: usize = 64 << 20;
/// Most bytes written but not yet synced (kept in memory to be re-written
/// after a failed sync): past it, a sync comes before the next write.
const MAX_UNSYNCED: usize = 16 << 20;
/// Smallest piece a queued batch is cut into after failures for want of
/// room (a record larger than it still goes whole). A batch is written at
/// once; each ENOSPC halves the next try's piece down to this, so a file
/// system with less room than a whole batch (full, its acknowledged
/// segments deleted) still takes it piece by piece instead of refusing it
/// forever; a commit written whole lifts the limit again.
const MIN_CHUNK: usize = 64 << 10;
/// Longest interval between two log lines about failing writes or syncs.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// First wait before a stalled buffer is tried again; doubled per failure
/// up to [`RETRY_MAX`], back to this at the next success.
pub const RETRY_FIRST: Duration = Duration::from_millis(20);
/// Longest wait between two tries of a stalled buffer.
pub const RETRY_MAX: Duration = Duration::from_secs(1);

/// Fault injection at the buffer's exact `pwrite`, `fdatasync` and
/// `ftruncate` calls, for tests: a plan set here is asked before each call
/// (with the file's path, so that a test only hurts its own buffer). Nothing
/// sets a plan outside tests; unarmed, a check is one atomic load.
pub mod fault {
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    /// The call about to be made.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Op {
        /// `pwrite` of frames.
        Write,
        /// `fdatasync` of a segment.
        Sync,
        /// `ftruncate` cutting a failed write off.
        Truncate,
    }

    /// What happens instead.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Fault {
        /// The call fails with this `errno` and does nothing.
        Errno(i32),
        /// A write stores only this many bytes and reports them (a short write).
        Short(usize),
    }

    type Plan = Box<dyn FnMut(Op, &Path) -> Option<Fault> + Send>;
    static ARMED: AtomicBool = AtomicBool::new(false);
    static PLAN: Mutex<Option<Plan>> = Mutex::new(None);

    /// Installs `plan` (replacing any other).
    pub fn set(plan: impl FnMut(Op, &Path) -> Option<Fault> + Send + 'static) {
        *PLAN.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(plan));
        ARMED.store(true, Ordering::Release);
    }

    /// Removes the plan.
    pub fn clear() {
        ARMED.store(false, Ordering::Release);
        *PLAN.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Installs the plan of `$REIN_WAL_FAULTS`, in debug builds only (the
    /// fault tests run the real shipper binary): comma-separated rules
    /// `op:fault:skip:count` (op `write`, `sync` or `truncate`; fault an errno
    /// name `eio`, `enospc`, `erofs` or `shortN`, a write of N bytes) that hit
    /// calls `skip..skip+count` of that op on any buffer (the first rule that
    /// matches wins). A malformed plan is a panic: it is a test's mistake.
    pub(super) fn from_env() {
        #[cfg(debug_assertions)]
        {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                let Ok(spec) = std::env::var("REIN_WAL_FAULTS") else {
                    return;
                };
                let rules: Vec<(Op, Fault, u64, u64)> = spec
                    .split(',')
                    .filter(|r| !r.is_empty())
                    .map(|r| {
                        parse_rule(r).unwrap_or_else(|| panic!("REIN_WAL_FAULTS: bad rule `{r}`"))
                    })
                    .collect();
                tracing::warn!("disk buffer faults injected: {spec}");
                let mut seen = std::collections::HashMap::new();
                set(move |op, _| {
                    let n = seen.entry(op).or_insert(0u64);
                    *n += 1;
                    let k = *n - 1;
                    rules
                        .iter()
                        .find(|r| r.0 == op && (r.2..r.2 + r.3).contains(&k))
                        .map(|r| r.1)
                });
            });
        }
    }

    #[cfg(debug_assertions)]
    fn parse_rule(r: &str) -> Option<(Op, Fault, u64, u64)> {
        let mut it = r.split(':');
        let op = match it.next()? {
            "write" => Op::Write,
            "sync" => Op::Sync,
            "truncate" => Op::Truncate,
            _ => return None,
        };
        let fault = match it.next()? {
            "eio" => Fault::Errno(libc::EIO),
            "enospc" => Fault::Errno(libc::ENOSPC),
            "erofs" => Fault::Errno(libc::EROFS),
            f => Fault::Short(f.strip_prefix("short")?.parse().ok()?),
        };
        let skip = it.next()?.parse().ok()?;
        let count = it.next()?.parse().ok()?;
        it.next().is_none().then_some((op, fault, skip, count))
    }

    pub(super) fn check(op: Op, path: &Path) -> Option<Fault> {
        if !ARMED.load(Ordering::Acquire) {
            return None;
        }
        PLAN.lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .and_then(|p| p(op, path))
    }
}

/// `pwrite` of `data` at `off` (one call: the count may be short).
fn write_at(f: &File, path: &Path, data: &[u8], off: u64) -> io::Result<usize> {
    match fault::check(fault::Op::Write, path) {
        Some(fault::Fault::Errno(e)) => Err(io::Error::from_raw_os_error(e)),
        Some(fault::Fault::Short(n)) => f.write_at(&data[..n.min(data.len())], off),
        None => f.write_at(data, off),
    }
}

/// Writes all of `data` at `off`, resuming after short writes.
fn write_all_at(f: &File, path: &Path, data: &[u8], off: u64) -> io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        match write_at(f, path, &data[done..], off + done as u64) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn sync_file(f: &File, path: &Path) -> io::Result<()> {
    match fault::check(fault::Op::Sync, path) {
        Some(fault::Fault::Errno(e)) => Err(io::Error::from_raw_os_error(e)),
        _ => f.sync_data(),
    }
}

fn truncate(f: &File, path: &Path, len: u64) -> io::Result<()> {
    match fault::check(fault::Op::Truncate, path) {
        Some(fault::Fault::Errno(e)) => Err(io::Error::from_raw_os_error(e)),
        _ => f.set_len(len),
    }
}

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

impl WalError {
    /// The file system is full (or the quota reached).
    pub fn is_no_space(&self) -> bool {
        let WalError::Io { source, .. } = self;
        matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
    }
}

/// The end of the longest run of whole frames of `buf` from `from` that is at
/// most `max` bytes long (at least one frame), and how many frames it holds.
fn whole_frames(buf: &[u8], from: usize, max: usize) -> (usize, u64) {
    let (mut pos, mut n) = (from, 0);
    while let Some(h) = buf.get(pos..pos + HDR) {
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let end = pos + HDR + len;
        if end > buf.len() || (n > 0 && end - from > max) {
            break;
        }
        pos = end;
        n += 1;
    }
    if n == 0 {
        // Not a frame (never queued so): the rest goes out as it is.
        return (buf.len(), 0);
    }
    (pos, n)
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
    /// The last segment, opened read-write (not append: writes go at `len`).
    writer: File,
    cursor: Pos,
    inflight: Pos,
    total: u64,
    pending: Vec<u8>,
    pending_records: u64,
    /// Records written by a commit that failed part-way (its first chunks
    /// went out): reported by the next commit that succeeds.
    written_unreported: u64,
    /// Largest piece written at once now: halved by each ENOSPC, unlimited
    /// again once a commit is written whole (one failed write per try: the
    /// backoff holds).
    chunk: usize,
    unsynced: bool,
    last_sync: Instant,
    /// Length of the last segment known durable (synced).
    synced: u64,
    /// Its bytes from `synced` to its length: written again after a failed sync.
    tail: Vec<u8>,
    /// A sync failed: `tail` must be written again before the next one.
    resync: bool,
    /// The file may hold bytes past the last frame (a failed write not cut off yet).
    tail_dirty: bool,
    /// Errors since the last log line, and when that was.
    errors_unlogged: u64,
    last_error_log: Option<Instant>,
    /// First error of the current run of failures.
    failing_since: Option<Instant>,
    /// While failing: the wait before the next try, and when that is due.
    retry_delay: Duration,
    retry_at: Option<Instant>,
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
        if len == 0 || len > MAX_FRAME || pos + HDR + len > data.len() {
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
        fault::from_env();
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
        let synced = last.len;
        let writer = private::open_rw(&lp).map_err(io_err(&lp))?;
        let cursor = if cursor.seg < segs[0].seq {
            Pos {
                seg: segs[0].seq,
                off: 0,
            }
        } else {
            cursor
        };
        if Self::load_cursor(&dir).is_none() {
            // Made now, while there is room: a full file system takes a new
            // cursor only in place of an existing file.
            let path = dir.join("cursor");
            let body = format!("{}:{}\n", cursor.seg, cursor.off);
            if let Err(e) = private::write_atomic(&path, body.as_bytes()) {
                tracing::warn!(path = %path.display(), "{e}");
            }
        }
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
            written_unreported: 0,
            chunk: usize::MAX,
            unsynced: false,
            last_sync: Instant::now(),
            synced,
            tail: Vec::new(),
            resync: false,
            tail_dirty: false,
            errors_unlogged: 0,
            last_error_log: None,
            failing_since: None,
            retry_delay: Duration::ZERO,
            retry_at: None,
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

    /// Writes the queued records (one `pwrite`), applying the full policy,
    /// and `fdatasync`s if the interval has passed; returns how many records
    /// were written. On error nothing queued is lost: the records stay queued
    /// (retried by the next call) and the segment still ends at a frame
    /// boundary. A failing sync after the write is reported by [`Wal::sync`]
    /// and makes [`Wal::is_stalled`] true until it succeeds.
    pub fn commit(&self) -> Result<u64, WalError> {
        let mut g = self.lock();
        let r = self.write_pending(&mut g);
        let n = match r {
            Ok(n) => n,
            Err(e) => {
                self.failed(&mut g, "write", &e);
                return Err(e);
            }
        };
        if n > 0 {
            self.stats.buffer_bytes.store(g.total, Ordering::Relaxed);
            self.more.notify_all();
        }
        let due = g.unsynced
            && (g.last_sync.elapsed() >= self.cfg.fsync_interval || g.tail.len() >= MAX_UNSYNCED);
        if due || g.resync || g.tail_dirty {
            // The records are written: a failing sync only holds back checkpoints.
            let _ = self.sync_unlocked(g);
        } else if g.failing_since.is_some() {
            self.recovered(&mut g);
        }
        Ok(n)
    }

    fn write_pending(&self, g: &mut Inner) -> Result<u64, WalError> {
        if g.pending.is_empty() {
            return Ok(std::mem::take(&mut g.written_unreported));
        }
        self.repair(g)?;
        let (mut done, mut written) = (0, 0);
        let r = loop {
            if done == g.pending.len() {
                break Ok(());
            }
            let (end, records) = whole_frames(&g.pending, done, g.chunk);
            match self.write_chunk(g, done, end, records) {
                Ok(()) => {
                    done = end;
                    written += records;
                }
                Err(e) => {
                    if e.is_no_space() && records > 1 {
                        // A smaller piece may fit at the next try.
                        g.chunk = ((end - done) / 2).max(MIN_CHUNK);
                    }
                    break Err(e);
                }
            }
        };
        // Written frames leave the queue whatever happened to the rest.
        g.pending.drain(..done);
        g.pending_records -= written;
        match r {
            Ok(()) => {
                g.chunk = usize::MAX;
                Ok(written + std::mem::take(&mut g.written_unreported))
            }
            Err(e) => {
                g.written_unreported += written;
                Err(e)
            }
        }
    }

    /// Writes the queued frames `g.pending[from..end]` (`records` of them)
    /// at the end of the last segment; on failure nothing of them counts as
    /// written and the segment is cut back to its last frame.
    fn write_chunk(
        &self,
        g: &mut Inner,
        from: usize,
        end: usize,
        records: u64,
    ) -> Result<(), WalError> {
        if g.segs
            .last()
            .is_some_and(|s| s.len >= self.cfg.segment_bytes)
        {
            // A roll that failed after the last write is retried first.
            self.roll(g)?;
        }
        if g.tail.len() >= MAX_UNSYNCED {
            // Bounds what is kept in memory: no more until it is durable.
            self.sync_locked(g)?;
        }
        let len = (end - from) as u64;
        if self.cfg.policy == FullPolicy::DropOldest {
            while g.total + len > self.cfg.max_bytes && self.drop_oldest(g)? {}
        }
        let seq = loop {
            let seq = g.segs.last().map(|s| s.seq).unwrap_or(1);
            let p = seg_path(&self.cfg.dir, seq);
            let at = g.segs.last().map_or(0, |s| s.len);
            let Err(e) = write_all_at(&g.writer, &p, &g.pending[from..end], at) else {
                break seq;
            };
            // Part of the batch may be in the file: cut it off, now or before the next write.
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            if truncate(&g.writer, &p, at).is_err() {
                g.tail_dirty = true;
                return Err(io_err(&p)(e));
            }
            // A full file system is a full buffer to the drop-oldest policy too (it
            // never holds containers back): make room, counted, and write again.
            let no_space = matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT));
            if !(no_space && self.cfg.policy == FullPolicy::DropOldest && self.drop_oldest(g)?) {
                if no_space && at > 0 {
                    // The segment ends here: once acknowledged it is deleted
                    // whole, the room the next write needs (acknowledged
                    // records in the segment being written free nothing).
                    if let Err(re) = self.roll(g) {
                        tracing::debug!("closing a segment on a full file system: {re}");
                    }
                }
                return Err(io_err(&p)(e));
            }
        };
        let Inner { pending, tail, .. } = &mut *g;
        tail.extend_from_slice(&pending[from..end]);
        let last = g.segs.last_mut().expect("one segment");
        last.len += len;
        let roll = last.len >= self.cfg.segment_bytes;
        g.total += len;
        g.unsynced = true;
        self.stats
            .appended_records
            .fetch_add(records, Ordering::Relaxed);
        if roll {
            // Written already: a failing roll is retried before the next write.
            if let Err(e) = self.roll(g) {
                self.failed(g, "roll", &e);
            }
        }
        // One large append can overshoot the bound: trim closed segments after it too.
        // (never the segment just written: the newest records stay).
        while self.cfg.policy == FullPolicy::DropOldest
            && g.total > self.cfg.max_bytes
            && g.segs.len() >= 2
            && g.segs[0].seq < seq
            && self.drop_oldest(g)?
        {}
        Ok(())
    }

    /// Brings the last segment back to exactly its frames, durable or held
    /// in memory: after a failed sync its unsynced bytes are written again
    /// (the kernel may have dropped them), and whatever a failed write left
    /// past the last frame is cut off.
    fn repair(&self, g: &mut Inner) -> Result<(), WalError> {
        if !(g.resync || g.tail_dirty) {
            return Ok(());
        }
        let seq = g.segs.last().map(|s| s.seq).unwrap_or(1);
        let p = seg_path(&self.cfg.dir, seq);
        if g.resync {
            write_all_at(&g.writer, &p, &g.tail, g.synced).map_err(|e| {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                io_err(&p)(e)
            })?;
            g.resync = false;
            g.unsynced = true;
            g.tail_dirty = true;
        }
        let len = g.segs.last().map_or(0, |s| s.len);
        truncate(&g.writer, &p, len).map_err(io_err(&p))?;
        g.tail_dirty = false;
        Ok(())
    }

    /// Closes the last segment (synced) and starts the next one.
    fn roll(&self, g: &mut Inner) -> Result<(), WalError> {
        self.sync_locked(g)?;
        let next = g.segs.last().map(|s| s.seq).unwrap_or(0) + 1;
        let np = seg_path(&self.cfg.dir, next);
        g.writer = private::open_rw(&np).map_err(io_err(&np))?;
        g.segs.push(Segment { seq: next, len: 0 });
        g.synced = 0;
        g.tail.clear();
        // Acknowledged to its end already: it goes now (the sink may have
        // nothing more to acknowledge for a while).
        if self.advance_cursor(g) {
            match self.save_cursor(g.cursor) {
                Ok(()) => self.delete_acked(g),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        Ok(())
    }

    /// Moves the acknowledged cursor from the very end of a closed segment
    /// to the start of the next, so that a wholly acknowledged segment is
    /// deleted even when nothing was read past it. True if it moved.
    fn advance_cursor(&self, g: &mut Inner) -> bool {
        let before = g.cursor;
        while let Some(i) = g.segs.iter().position(|s| s.seq == g.cursor.seg) {
            match g.segs.get(i + 1) {
                Some(next) if g.cursor.off >= g.segs[i].len => {
                    g.cursor = Pos {
                        seg: next.seq,
                        off: 0,
                    };
                }
                _ => break,
            }
        }
        g.inflight = g.inflight.max(g.cursor);
        g.cursor != before
    }

    /// Deletes the segments before the acknowledged cursor's (once the
    /// cursor is saved: a restart must not look for them).
    fn delete_acked(&self, g: &mut Inner) {
        while g.segs.len() > 1 && g.segs[0].seq < g.cursor.seg {
            let old = g.segs.remove(0);
            let _ = fs::remove_file(seg_path(&self.cfg.dir, old.seq));
            g.total -= old.len;
        }
        self.stats.buffer_bytes.store(g.total, Ordering::Relaxed);
    }

    /// Counts and logs (at most every [`LOG_EVERY`]) a failure; the buffer
    /// is stalled until the next success.
    fn failed(&self, g: &mut Inner, what: &str, e: &WalError) {
        let now = Instant::now();
        if g.failing_since.is_none() {
            g.failing_since = Some(now);
            g.retry_delay = RETRY_FIRST;
            self.stats.write_stalls.fetch_add(1, Ordering::Relaxed);
        } else if g.retry_at.is_none_or(|t| now >= t) {
            // Once per try (a try may fail twice: a write's roll, then its sync).
            g.retry_delay = (g.retry_delay * 2).min(RETRY_MAX);
        }
        g.retry_at = Some(now + g.retry_delay);
        self.stats.stalled.store(1, Ordering::Relaxed);
        g.errors_unlogged += 1;
        if g.last_error_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            tracing::error!(
                failures = g.errors_unlogged,
                queued_records = g.pending_records,
                "{what} failed, records are held back and retried (the containers of this \
                 buffer block once their pipes are full): {e}"
            );
            g.errors_unlogged = 0;
            g.last_error_log = Some(Instant::now());
        }
    }

    fn recovered(&self, g: &mut Inner) {
        if g.pending.is_empty() && !g.resync && !g.tail_dirty {
            if let Some(t) = g.failing_since.take() {
                self.stats.stalled.store(0, Ordering::Relaxed);
                g.retry_at = None;
                g.retry_delay = Duration::ZERO;
                g.last_error_log = None;
                g.errors_unlogged = 0;
                tracing::warn!(
                    dir = %self.cfg.dir.display(),
                    after_ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "disk buffer writes succeed again"
                );
            }
        }
    }

    /// True while records wait for a failed write or sync to succeed: the
    /// producer should hold back and no checkpoint may pass them.
    pub fn is_stalled(&self) -> bool {
        self.stats.stalled.load(Ordering::Relaxed) != 0
    }

    /// True unless the buffer is stalled and its backoff (from
    /// [`RETRY_FIRST`], doubled per failed try up to [`RETRY_MAX`]) has not
    /// passed: a producer tries [`Wal::commit`] / [`Wal::sync`] of a stalled
    /// buffer only when this is true.
    pub fn retry_due(&self) -> bool {
        !self.is_stalled() || self.lock().retry_at.is_none_or(|t| Instant::now() >= t)
    }

    /// The current wait between two tries while stalled (`None`: not stalled).
    pub fn retry_delay(&self) -> Option<Duration> {
        let g = self.lock();
        g.failing_since.map(|_| g.retry_delay)
    }

    /// Makes everything committed durable now (before a reader checkpoint
    /// is saved). An error means some committed records may not be on disk.
    pub fn sync(&self) -> Result<(), WalError> {
        let g = self.lock();
        self.sync_unlocked(g)
    }

    /// Like `sync_locked`, but the `fdatasync` (which can take long under
    /// writeback) runs after the lock is released, on a duplicate of the
    /// segment's descriptor: whatever was written before is made durable.
    fn sync_unlocked(&self, mut g: MutexGuard<'_, Inner>) -> Result<(), WalError> {
        if let Err(e) = self.repair(&mut g) {
            self.failed(&mut g, "rewriting unsynced records", &e);
            return Err(e);
        }
        if !g.unsynced {
            g.last_sync = Instant::now();
            self.recovered(&mut g);
            return Ok(());
        }
        let seq = g.segs.last().map(|s| s.seq).unwrap_or(1);
        let p = seg_path(&self.cfg.dir, seq);
        let target = g.segs.last().map_or(0, |s| s.len);
        let f = match g.writer.try_clone() {
            Ok(f) => f,
            Err(e) => return Err(io_err(&p)(e)),
        };
        g.unsynced = false;
        g.last_sync = Instant::now();
        drop(g);
        let r = sync_file(&f, &p);
        let mut g = self.lock();
        if let Err(e) = r {
            self.sync_failed(&mut g);
            let e = io_err(&p)(e);
            self.failed(&mut g, "sync", &e);
            return Err(e);
        }
        self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.synced_to(&mut g, seq, target);
        self.recovered(&mut g);
        Ok(())
    }

    fn sync_failed(&self, g: &mut Inner) {
        self.stats.sync_errors.fetch_add(1, Ordering::Relaxed);
        g.unsynced = true;
        g.resync = true;
    }

    /// Segment `seq` is durable up to `len`: its memory copy is let go.
    fn synced_to(&self, g: &mut Inner, seq: u64, len: u64) {
        if g.segs.last().is_some_and(|s| s.seq == seq) && len > g.synced {
            let n = usize::try_from(len - g.synced)
                .unwrap_or(usize::MAX)
                .min(g.tail.len());
            g.tail.drain(..n);
            g.synced = len;
        }
    }

    fn sync_locked(&self, g: &mut Inner) -> Result<(), WalError> {
        self.repair(g)?;
        if g.unsynced {
            let seq = g.segs.last().map(|s| s.seq).unwrap_or(1);
            let p = seg_path(&self.cfg.dir, seq);
            if let Err(e) = sync_file(&g.writer, &p) {
                self.sync_failed(g);
                return Err(io_err(&p)(e));
            }
            self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            g.unsynced = false;
            let len = g.segs.last().map_or(0, |s| s.len);
            self.synced_to(g, seq, len);
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
                self.roll(g)?;
                return Ok(true);
            }
            return Ok(false);
        }
        let old = g.segs.remove(0);
        let p = seg_path(&self.cfg.dir, old.seq);
        // Unacknowledged records from the cursor on; those up to `inflight`
        // are held by the sink (shipped from memory), the rest are lost.
        let within = |p: Pos| match p.seg.cmp(&old.seq) {
            std::cmp::Ordering::Less => 0,
            std::cmp::Ordering::Equal => p.off.min(old.len),
            std::cmp::Ordering::Greater => old.len,
        };
        let from = within(g.cursor);
        let mid = within(g.inflight).max(from);
        let mut data = Vec::new();
        if from < old.len {
            let mut f = File::open(&p).map_err(io_err(&p))?;
            f.seek(SeekFrom::Start(from)).map_err(io_err(&p))?;
            f.read_to_end(&mut data).map_err(io_err(&p))?;
        }
        let split = usize::try_from(mid - from)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let (_, held, _) = scan(&data[..split]);
        let (_, n, _) = scan(&data[split..]);
        self.stats.dropped_records.fetch_add(n, Ordering::Relaxed);
        self.stats
            .dropped_in_flight
            .fetch_add(held, Ordering::Relaxed);
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
            // Only a restart suffers (it starts at the first segment left).
            if let Err(e) = self.save_cursor(first) {
                tracing::warn!("{e}");
            }
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
                    if len == 0 || len > MAX_FRAME {
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
                if !batch.is_empty() {
                    self.stats
                        .in_flight_records
                        .store(batch.len() as u64, Ordering::Relaxed);
                }
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
        if end >= g.inflight {
            self.stats.in_flight_records.store(0, Ordering::Relaxed);
        }
        self.advance_cursor(&mut g);
        // The cursor first: a segment is deleted only once a restart would
        // not look for it (a failed save leaves them for the next ack).
        self.save_cursor(g.cursor)?;
        self.delete_acked(&mut g);
        Ok(())
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
    use std::io::Write;

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

    /// Installs a fault plan for the buffer in `dir` only: `f` gets the
    /// operation and how many times it was asked for before.
    fn faults(
        dir: &Path,
        mut f: impl FnMut(fault::Op, u64) -> Option<fault::Fault> + Send + 'static,
    ) {
        let dir = dir.to_path_buf();
        let mut n = std::collections::HashMap::new();
        fault::set(move |op, p| {
            if !p.starts_with(&dir) {
                return None;
            }
            let k = n.entry(op).or_insert(0u64);
            *k += 1;
            f(op, *k - 1)
        });
    }

    /// Fault plans are process-wide: the tests that set one run one at a time.
    static FAULTS: Mutex<()> = Mutex::new(());

    fn seg_lens(d: &Path) -> u64 {
        fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .map(|p| fs::metadata(p).unwrap().len())
            .sum()
    }

    fn frames(n: u32) -> u64 {
        (0..n).map(|i| (HDR + rec(i).len()) as u64).sum()
    }

    fn segments(d: &Path) -> usize {
        fs::read_dir(d)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "wal")
            })
            .count()
    }

    #[test]
    fn a_full_file_system_closes_the_segment_so_acknowledging_it_makes_room() {
        let _one = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
        for ack_before in [true, false] {
            let d = tempfile::tempdir().unwrap();
            let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
            assert!(d.path().join("cursor").exists(), "made while there is room");
            for i in 0..3 {
                w.push(&rec(i));
            }
            assert_eq!(w.commit().unwrap(), 3);
            let b = w.read_batch(10, 1 << 20, Duration::ZERO).unwrap();
            assert_eq!(b.len(), 3);
            if ack_before {
                w.ack(b.end, 3).unwrap();
            }
            faults(d.path(), |op, _| {
                (op == fault::Op::Write).then_some(fault::Fault::Errno(libc::ENOSPC))
            });
            w.push(&rec(3));
            assert!(w.commit().is_err());
            if !ack_before {
                assert_eq!(segments(d.path()), 2, "closed, not acknowledged yet");
                w.ack(b.end, 3).unwrap();
            }
            // Wholly acknowledged, the closed segment is gone: its room is free.
            assert_eq!(
                segments(d.path()),
                1,
                "ack before the failure: {ack_before}"
            );
            assert_eq!(w.bytes(), 0);
            assert_eq!(w.commit().map_err(|_| ()), Err(()), "still failing");
            assert_eq!(
                segments(d.path()),
                1,
                "an empty segment is not closed again"
            );
            fault::clear();
            assert_eq!(w.commit().unwrap(), 1);
            assert_eq!(drain(&w), vec![rec(3)]);
            assert_eq!(w.stats.acked_records.load(Ordering::Relaxed), 4);
            drop(w);
            let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
            assert!(
                drain(&w).is_empty(),
                "a restart finds nothing unacknowledged"
            );
        }
    }

    #[test]
    fn a_stall_backs_off_and_counts_attempts_and_incidents_apart() {
        let _one = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
        let d = tempfile::tempdir().unwrap();
        let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
        for incident in 1..=2u64 {
            faults(d.path(), |op, _| {
                (op == fault::Op::Write).then_some(fault::Fault::Errno(libc::ENOSPC))
            });
            w.push(&rec(0));
            let mut delays = Vec::new();
            for _ in 0..9 {
                // Each try waits for the backoff, as the parser does.
                while !w.retry_due() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                assert!(w.commit().is_err());
                delays.push(w.retry_delay().unwrap().as_millis());
                assert!(!w.retry_due(), "a failed try is not retried at once");
            }
            assert_eq!(delays, [20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
            assert_eq!(w.stats.write_stalls.load(Ordering::Relaxed), incident);
            assert_eq!(w.stats.write_errors.load(Ordering::Relaxed), 9 * incident);
            fault::clear();
            while !w.retry_due() {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(w.commit().unwrap(), 1);
            assert!(!w.is_stalled() && w.retry_due());
            assert_eq!(
                w.retry_delay(),
                None,
                "the backoff starts over after a success"
            );
            assert_eq!(drain(&w), vec![rec(0)]);
        }
    }

    #[test]
    fn failed_write_keeps_the_records_queued_until_a_retry_succeeds() {
        let _one = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
        let d = tempfile::tempdir().unwrap();
        let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
        for errno in [libc::ENOSPC, libc::EIO, libc::EROFS, libc::EDQUOT] {
            faults(d.path(), move |op, _| {
                (op == fault::Op::Write).then_some(fault::Fault::Errno(errno))
            });
            let before = seg_lens(d.path());
            w.push(&rec(0));
            assert!(w.commit().is_err(), "errno {errno}");
            assert!(w.commit().is_err());
            assert!(w.is_stalled());
            assert_eq!(w.stats.appended_records.load(Ordering::Relaxed), 0);
            // (On ENOSPC/EDQUOT the acknowledged segment is closed and deleted.)
            let full = matches!(errno, libc::ENOSPC | libc::EDQUOT);
            assert_eq!(
                seg_lens(d.path()),
                if full { 0 } else { before },
                "nothing half-written stays (errno {errno})"
            );
            // Nothing to read yet: the record is not in the buffer.
            assert!(w
                .read_batch(10, 1 << 20, Duration::ZERO)
                .unwrap()
                .is_empty());
            fault::clear();
            assert_eq!(w.commit().unwrap(), 1);
            assert!(!w.is_stalled());
            assert_eq!(drain(&w), vec![rec(0)]);
            w.stats.appended_records.store(0, Ordering::Relaxed);
        }
        assert_eq!(w.stats.write_errors.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn short_write_is_cut_back_to_the_last_frame_and_rewritten_whole() {
        let _one = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
        let d = tempfile::tempdir().unwrap();
        let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
        w.push(&rec(0));
        w.commit().unwrap();
        // Half a frame lands, then the disk is full; then the cut itself fails once.
        faults(d.path(), |op, k| match (op, k) {
            (fault::Op::Write, 0) => Some(fault::Fault::Short(HDR + 5)),
            (fault::Op::Write, _) => Some(fault::Fault::Errno(libc::ENOSPC)),
            (fault::Op::Truncate, 0) => Some(fault::Fault::Errno(libc::EIO)),
            _ => None,
        });
        for i in 1..4 {
            w.push(&rec(i));
        }
        assert!(w.commit().is_err());
        assert_eq!(
            seg_lens(d.path()),
            frames(1) + HDR as u64 + 5,
            "the cut failed"
        );
        // The next try cuts first (then fails to write again): a clean end.
        assert!(w.commit().is_err());
        assert_eq!(seg_lens(d.path()), frames(1));
        fault::clear();
        assert_eq!(w.commit().unwrap(), 3);
        assert_eq!(seg_lens(d.path()), frames(4));
        drop(w);
        let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
        assert_eq!(drain(&w), (0..4).map(rec).collect::<Vec<_>>());
        assert_eq!(w.stats.corrupt_records.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn short_writes_that_go_on_are_completed() {
        let _one = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
        let d = tempfile::tempdir().unwrap();
        let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
        faults(d.path(), |op, _| {
            (op == fault::Op::Write).then_some(fault::Fault::Short(7))
        });
        for i in 0..5 {
            w.push(&rec(i));
        }
        assert_eq!(w.commit().unwrap(), 5);
        fault::clear();
        assert_eq!(w.stats.write_errors.load(Ordering::Relaxed), 0);
        assert_eq!(drain(&w), (0..5).map(rec).collect::<Vec<_>>());
    }

    #[test]
    fn failed_sync_writes_the_unsynced_bytes_again_before_reporting_success() {
        let _one = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
        let d = tempfile::tempdir().unwrap();
        let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
        w.push(&rec(0));
        w.commit().unwrap();
        w.sync().unwrap();
        faults(d.path(), |op, _| {
            (op == fault::Op::Sync).then_some(fault::Fault::Errno(libc::EIO))
        });
        for i in 1..4 {
            w.push(&rec(i));
        }
        assert_eq!(w.commit().unwrap(), 3, "written, not yet durable");
        assert!(w.sync().is_err());
        assert!(w.is_stalled());
        // What a failed writeback may leave: the unsynced pages lost.
        let seg = seg_path(d.path(), 1);
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(
            &vec![0u8; usize::try_from(frames(4) - frames(1)).unwrap()],
            frames(1),
        )
        .unwrap();
        assert!(w.sync().is_err(), "still failing");
        fault::clear();
        w.sync().unwrap();
        assert!(!w.is_stalled());
        assert!(w.stats.sync_errors.load(Ordering::Relaxed) >= 2);
        drop(w);
        let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
        assert_eq!(drain(&w), (0..4).map(rec).collect::<Vec<_>>());
        assert_eq!(w.stats.corrupt_records.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn failing_roll_keeps_writing_the_segment_and_rolls_later() {
        let _one = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
        let d = tempfile::tempdir().unwrap();
        let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
        faults(d.path(), |op, k| {
            (op == fault::Op::Sync && k < 3).then_some(fault::Fault::Errno(libc::EIO))
        });
        let mut n = 0;
        let mut errs = 0;
        for i in 0..60 {
            w.push(&rec(i));
            match w.commit() {
                Ok(k) => n += k,
                Err(_) => errs += 1,
            }
        }
        while w.is_stalled() {
            n += w.commit().unwrap_or(0);
            let _ = w.sync();
        }
        fault::clear();
        n += w.commit().unwrap();
        w.sync().unwrap();
        assert_eq!(n, 60, "{errs} failed commits");
        drop(w);
        let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
        assert_eq!(drain(&w), (0..60).map(rec).collect::<Vec<_>>());
        assert_eq!(w.stats.corrupt_records.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn zeroed_tail_is_cut_not_read_as_records() {
        let d = tempfile::tempdir().unwrap();
        let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
        for i in 0..3 {
            w.push(&rec(i));
        }
        w.commit().unwrap();
        drop(w);
        // What a file system can leave of writes it never wrote back: zeros.
        let seg = seg_path(d.path(), 1);
        let f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.set_len(frames(3) + 4096).unwrap();
        let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
        assert_eq!(fs::metadata(&seg).unwrap().len(), frames(3));
        assert_eq!(w.stats.corrupt_records.load(Ordering::Relaxed), 1);
        assert_eq!(drain(&w), (0..3).map(rec).collect::<Vec<_>>());
    }

    #[test]
    fn drop_oldest_makes_room_on_a_full_file_system() {
        let _one = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
        let d = tempfile::tempdir().unwrap();
        let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::DropOldest)).unwrap();
        for i in 0..60 {
            w.push(&rec(i));
            w.commit().unwrap();
        }
        // Far below `max_bytes`, but the file system is full until a segment goes.
        faults(d.path(), |op, k| {
            (op == fault::Op::Write && k < 2).then_some(fault::Fault::Errno(libc::ENOSPC))
        });
        w.push(&rec(60));
        assert_eq!(w.commit().unwrap(), 1);
        fault::clear();
        let dropped = w.stats.dropped_records.load(Ordering::Relaxed);
        assert!(dropped > 0);
        let got = drain(&w);
        assert_eq!(got.len() as u64 + dropped, 61);
        assert_eq!(got.last(), Some(&rec(60)));
        assert!(!w.is_stalled());
    }

    #[test]
    fn failed_cursor_save_deletes_no_segment_and_a_restart_replays() {
        let d = tempfile::tempdir().unwrap();
        let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
        for i in 0..60 {
            w.push(&rec(i));
            w.commit().unwrap();
        }
        let segs = || {
            fs::read_dir(d.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "wal")
                })
                .count()
        };
        let before = segs();
        assert!(before > 2);
        // The cursor cannot be saved (a directory where its temporary file goes).
        fs::create_dir(d.path().join("cursor.tmp")).unwrap();
        let b = w.read_batch(50, 1 << 20, Duration::ZERO).unwrap();
        assert!(w.ack(b.end, b.len() as u64).is_err());
        assert_eq!(
            segs(),
            before,
            "a segment went before the cursor passing it was saved"
        );
        drop(w);
        fs::remove_dir(d.path().join("cursor.tmp")).unwrap();
        // Shipped records come again (at least once), none is missing.
        let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
        assert_eq!(drain(&w), (0..60).map(rec).collect::<Vec<_>>());
    }
}
