//! One stream of one container, in two halves. The reader half splices the
//! pipe into the sandbox file (so the bytes are in the page cache, never only
//! in this process) and rotates it by size; the parser half follows the file
//! (and the rotated files it has not finished) with a checkpointed offset.
//! The sandbox files are the buffer between the two: the container is
//! throttled by the splice rate, not the parse rate, up to a bounded lag.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::record::{Encoded, PipelineMark, Stream, StreamPipeline};
use crate::sandbox::{FileId, SandboxDir};

/// What a checkpoint keeps of a stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamCheckpoint {
    /// Inode of the sandbox file the offset refers to.
    pub inode: u64,
    /// Bytes of that file already turned into buffered records.
    pub offset: u64,
    /// Stream bytes in earlier (rotated) files.
    pub base: u64,
}

/// Capacity asked for each staging pipe (and the most moved per splice).
pub const STAGE_BYTES: u64 = 1 << 20;

/// Creates a staging pipe: (read end, write end).
pub fn stage_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = crate::module::pipe(STAGE_BYTES)?;
    Ok((r, w))
}

/// One `splice(2)` of up to `max` bytes from the pipe `from` into `to` (at
/// `offset` if `to` is a file); the bytes moved.
fn splice_raw(
    from: RawFd,
    to: RawFd,
    offset: Option<u64>,
    max: u64,
    nonblock: bool,
) -> std::io::Result<u64> {
    let mut off = offset.map(|o| libc::loff_t::try_from(o).unwrap_or(libc::loff_t::MAX));
    let off_ptr = off
        .as_mut()
        .map_or(std::ptr::null_mut(), std::ptr::from_mut);
    let len = usize::try_from(max).unwrap_or(usize::MAX);
    let flags = libc::SPLICE_F_MOVE | if nonblock { libc::SPLICE_F_NONBLOCK } else { 0 };
    // SAFETY: the caller keeps both descriptors open for the call; `off_ptr` is null or points
    // to a loff_t on this stack frame that the kernel updates; no memory of ours
    // is read or written otherwise.
    let n = unsafe { libc::splice(from, std::ptr::null_mut(), to, off_ptr, len, flags) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n.unsigned_abs() as u64)
    }
}

/// Result of one splice round.
#[derive(Debug, PartialEq, Eq)]
pub enum Splice {
    /// Moved this many bytes; the pipe may have more.
    Moved(u64),
    /// The pipe is empty for now.
    Empty,
    /// All write ends are closed.
    Eof,
}

/// One sandbox file as the parser sees it.
#[derive(Debug, Clone)]
pub struct Segment {
    /// The open file (shared with the reader while it is the current file:
    /// renames do not affect it).
    pub file: Arc<File>,
    /// Its inode (what checkpoints name).
    pub inode: u64,
    /// Its final length when known apart from the next file's base (a
    /// rotated file taken back on adoption: a file a task removed between
    /// two may leave a gap in stream offsets).
    pub end: Option<u64>,
    /// Stream offset of its first byte.
    pub base: u64,
}

/// Milliseconds since this process started (monotonic).
pub fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// What the reader and the parser of one stream share.
#[derive(Debug)]
pub struct StreamShared {
    /// Which stream.
    pub stream: Stream,
    /// True when records are made of this stream (else nothing is parsed).
    pub parses: bool,
    /// Stream offset up to which bytes are in sandbox files (reader).
    pub written: AtomicU64,
    /// Stream offset up to which the parser has consumed (parser).
    pub parsed: AtomicU64,
    /// Stream offset of the last checkpoint saved after a buffer sync (parser):
    /// rotated files ending after it are kept.
    pub saved: AtomicU64,
    /// [`mono_ms`] of the last bytes spliced (reader).
    pub last_data_ms: AtomicU64,
    /// Bytes were waiting in the pipe at the reader's last look (reader).
    pub pipe_waiting: AtomicBool,
    /// The pipe reached EOF: `written` is final (reader).
    pub eof: AtomicBool,
    /// New files after a rotation (reader sends, parser receives). A channel,
    /// not a shared lock: the parser may run under `SCHED_IDLE`, and the
    /// reader must never wait for a thread that may not get the CPU.
    next: Sender<Segment>,
}

impl StreamShared {
    /// Bytes spliced but not parsed yet.
    pub fn lag(&self) -> u64 {
        if !self.parses {
            return 0;
        }
        self.written
            .load(Ordering::Acquire)
            .saturating_sub(self.parsed.load(Ordering::Acquire))
    }
}

/// Reader half of a stream.
#[derive(Debug)]
pub struct StreamState {
    /// Which stream.
    pub stream: Stream,
    /// Pipe read end; `None` after EOF.
    pub pipe: Option<OwnedFd>,
    /// The staging pipe (read end, write end) between the container's pipe and
    /// the file; `None` if it could not be created (plain splice then).
    pub stage: Option<(OwnedFd, OwnedFd)>,
    /// Bytes in the staging pipe not yet in the file.
    staged: u64,
    /// The current sandbox file (read-write, not append: `splice` needs an offset).
    pub file: Arc<File>,
    /// Its path (for messages: every access goes through `dir`).
    pub path: PathBuf,
    /// The sandbox directory.
    dir: Arc<SandboxDir>,
    /// Where the [`FileRecord`] is kept.
    rec_file: RecordFile,
    /// Its identity.
    pub id: FileId,
    /// Bytes in the file.
    pub file_len: u64,
    /// Stream bytes before this file.
    pub base: u64,
    /// Registered with epoll.
    pub armed: bool,
    /// Writing the sandbox file failed (disk full, quota, I/O error): the
    /// pipe is left unread until then (the container blocks once it is full,
    /// nothing is lost), and the delay before the next try.
    pub stalled: Option<(std::time::Instant, std::time::Duration)>,
    /// The last splice ended the file at a line end and the next line would
    /// pass the rotation size (or the file is past it): rotate now.
    pub rotate_due: bool,
    /// Identity and first byte's stream offset of `<name>.1`, `<name>.2`, ...
    /// (newest first): the only rotated files the reader ever renames or removes.
    rotated: VecDeque<(FileId, u64)>,
    /// Shared with the parser half.
    pub shared: Arc<StreamShared>,
}

/// Parser half of a stream.
#[derive(Debug)]
pub struct ParseStream {
    /// Shared with the reader half.
    pub shared: Arc<StreamShared>,
    /// Parser (`None` for the `none` sink: nothing is parsed).
    pub pipeline: Option<StreamPipeline>,
    /// The file being parsed.
    pub seg: Segment,
    /// Files after it, oldest first (received from the reader).
    later: VecDeque<Segment>,
    later_rx: Receiver<Segment>,
    /// Bytes of it parsed so far.
    pub off: u64,
    /// Final records emitted after EOF.
    pub done: bool,
}

/// Where a stream's parse turn started: enough to put the stream back there
/// when the turn was cut short by a panic (see [`ParseStream::rewind`]).
#[derive(Clone, Debug)]
pub struct TurnStart {
    seg: Segment,
    later: VecDeque<Segment>,
    off: u64,
    done: bool,
    pipeline: Option<PipelineMark>,
}

/// Stream offset by which a new file's base passes a lost one's: more than a
/// sandbox file can hold between two rotations, so no record made after a
/// task removed the shipper's current file reuses the id of a shipped one.
const LOST_FILE_GAP: u64 = 1 << 40;

/// What the reader records of one stream's sandbox files in the container's
/// private state (`<stream>.files.json`): the identity of every file it
/// created, so that a restarted worker uses those and nothing else a name
/// may hold by then.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The file being written (named `<stream>`).
    pub current: FileId,
    /// Its first byte's stream offset.
    pub base: u64,
    /// Rotated files, newest first (named `<stream>.1`, `<stream>.2`, ...),
    /// with their first byte's stream offset.
    pub rotated: Vec<(FileId, u64)>,
    /// The unique name `current` was created under, where a worker killed
    /// before renaming it to `<stream>` left it.
    #[serde(default)]
    pub created_as: Option<String>,
}

/// Where a stream's [`FileRecord`] is kept in a container's state directory.
pub fn record_path(state: &Path, stream: Stream) -> PathBuf {
    state.join(format!("{}.files.json", stream.name()))
}

/// Reads a stream's [`FileRecord`], if any.
pub fn load_record(state: &Path, stream: Stream) -> Option<FileRecord> {
    let b = std::fs::read(record_path(state, stream)).ok()?;
    serde_json::from_slice(&b).ok()
}

/// A stream's [`FileRecord`] file, kept open: rewritten in place at every
/// rotation (one `pwrite`, padded with blanks to its former length, so a kill
/// never leaves half of it; no create and rename per rotation).
#[derive(Debug)]
struct RecordFile {
    file: File,
    path: PathBuf,
}

impl RecordFile {
    fn open(path: PathBuf) -> std::io::Result<RecordFile> {
        let file = crate::private::open_rw(&path)?;
        Ok(RecordFile { file, path })
    }

    fn save(&self, rec: &FileRecord) {
        let mut body = serde_json::to_vec(rec).unwrap_or_default();
        let old = self.file.metadata().map_or(0, |m| m.len());
        body.resize(body.len().max(usize::try_from(old).unwrap_or(0)), b' ');
        if let Err(e) = self.file.write_all_at(&body, 0) {
            // Only a later adoption suffers: it starts a new file.
            tracing::warn!(path = %self.path.display(), "recording the sandbox files: {e}");
        }
    }
}

/// Name of the `n`th rotated file (`0`: the current one).
fn rotated_name(name: &str, n: usize) -> String {
    if n == 0 {
        name.to_string()
    } else {
        format!("{name}.{n}")
    }
}

fn file_len(f: &File) -> std::io::Result<u64> {
    Ok(f.metadata()?.len())
}

/// Opens the recorded file `id`, the `n`th of the stream, at its name or,
/// after a worker killed in the middle of a rotation, one number later.
fn find_recorded(dir: &SandboxDir, name: &str, n: usize, id: FileId) -> Option<File> {
    [n, n + 1].into_iter().find_map(|k| {
        dir.open_ours(&rotated_name(name, k), id, k == 0)
            .unwrap_or_else(|e| {
                tracing::warn!(path = %dir.path().join(rotated_name(name, k)).display(), "{e}");
                None
            })
    })
}

/// Starts a stream in the sandbox `dir`. At registration (no `record`, no
/// checkpoint) the shipper creates a new file, whatever the name held. On
/// adoption it takes back the files of its `record` (or, from an older
/// version, the checkpoint's inode) only where the names still hold those
/// very files, and resumes parsing at the checkpoint (with none, at the end
/// of the current file). A file a task moved or replaced is not read; a new
/// one is started in place of the current one.
pub fn open(
    stream: Stream,
    dir: Arc<SandboxDir>,
    state: &Path,
    pipe: OwnedFd,
    pipeline: Option<StreamPipeline>,
    cp: Option<StreamCheckpoint>,
    record: Option<FileRecord>,
) -> std::io::Result<(StreamState, ParseStream)> {
    let name = stream.name();
    let path = dir.path().join(name);
    let rec_file = RecordFile::open(record_path(state, stream))?;
    let record = record.or_else(|| {
        cp.map(|c| FileRecord {
            current: FileId {
                dev: dir.dev(),
                ino: c.inode,
            },
            base: c.base,
            ..FileRecord::default()
        })
    });
    let parses = pipeline.is_some();
    let mut rotated: VecDeque<(FileId, u64)> = VecDeque::new();
    let mut current: Option<(File, FileId, u64)> = None;
    let mut next_base = 0;
    if let Some(r) = &record {
        rotated.extend(r.rotated.iter().copied());
        next_base = r.base;
        // Killed between creating the file and naming it: it gets its name now.
        if let Some(tmp) = &r.created_as {
            if dir.holds(tmp, r.current)? {
                dir.rename_ours(tmp, name, r.current)?;
            }
        }
        match find_recorded(&dir, name, 0, r.current) {
            Some(f) if dir.holds(name, r.current)? => current = Some((f, r.current, r.base)),
            Some(f) => {
                // Renamed to `.1` by a rotation the previous worker did not finish.
                rotated.push_front((r.current, r.base));
                next_base = r.base + file_len(&f)?;
            }
            None => {
                // Removed or replaced by the task: its unparsed lines are gone.
                tracing::warn!(path = %path.display(), "the recorded file is gone or replaced; a new file is started");
                next_base = r.base + LOST_FILE_GAP;
            }
        }
    }
    // Older files still to parse, oldest first: (file, inode, base, len).
    let mut older: Vec<(File, u64, u64, u64)> = Vec::new();
    let mut off = None;
    if let (Some(cp), true) = (cp, parses) {
        if current.as_ref().is_some_and(|c| c.1.ino == cp.inode) {
            off = Some(cp.offset);
        } else if let Some(k) = rotated.iter().position(|(id, _)| id.ino == cp.inode) {
            // The checkpoint's file and every newer rotated file, oldest first.
            for i in (0..=k).rev() {
                let (id, base) = rotated[i];
                match find_recorded(&dir, name, i + 1, id) {
                    Some(f) => {
                        let len = file_len(&f)?;
                        older.push((f, id.ino, base, len));
                    }
                    None => tracing::warn!(
                        path = %path.display(),
                        n = i + 1,
                        "a rotated file not parsed yet is gone or replaced; its lines are not shipped"
                    ),
                }
            }
            if older.first().is_some_and(|o| o.1 == cp.inode) {
                off = Some(cp.offset.min(older[0].3));
            }
        }
        if off.is_none() {
            tracing::warn!(path = %path.display(), "checkpoint refers to an unknown file; parsing resumes at its end");
            older.clear();
        }
    }
    let (file, id, base, len) = match current {
        Some((f, id, base)) => {
            let len = file_len(&f)?;
            (f, id, base, len)
        }
        None => {
            let mut rec = FileRecord {
                base: next_base,
                rotated: rotated.iter().copied().collect(),
                ..FileRecord::default()
            };
            let (f, id) = dir.create(name, &mut |id, tmp| {
                rec.current = id;
                rec.created_as = Some(tmp.to_string());
                rec_file.save(&rec);
            })?;
            (f, id, next_base, 0)
        }
    };
    let file = Arc::new(file);
    let mut segs: VecDeque<Segment> = older
        .into_iter()
        .map(|(f, ino, b, len)| Segment {
            file: Arc::new(f),
            inode: ino,
            base: b,
            end: Some(len),
        })
        .collect();
    segs.push_back(Segment {
        file: file.clone(),
        inode: id.ino,
        base,
        end: None,
    });
    let first = segs.pop_front().expect("the current file is queued");
    let off = off.unwrap_or(if first.inode == id.ino { len } else { 0 });
    let (next_tx, later_rx) = std::sync::mpsc::channel();
    let parsed = first.base + off;
    let shared = Arc::new(StreamShared {
        stream,
        parses,
        written: AtomicU64::new(base + len),
        parsed: AtomicU64::new(parsed),
        saved: AtomicU64::new(parsed),
        last_data_ms: AtomicU64::new(mono_ms()),
        pipe_waiting: AtomicBool::new(false),
        eof: AtomicBool::new(false),
        next: next_tx,
    });
    Ok((
        StreamState {
            stream,
            pipe: Some(pipe),
            stage: None,
            staged: 0,
            file,
            path,
            dir,
            rec_file,
            id,
            file_len: len,
            base,
            armed: false,
            stalled: None,
            rotate_due: false,
            rotated,
            shared: shared.clone(),
        },
        ParseStream {
            shared,
            pipeline,
            seg: first,
            later: segs,
            later_rx,
            off,
            done: false,
        },
    ))
}

impl StreamState {
    /// Moves up to `max` bytes from the pipe into the file.
    ///
    /// `splice(2)` from a pipe into a file holds the pipe's lock while it writes
    /// the file, and a container writing flat out then spins on that lock. So
    /// the bytes first move into a staging pipe (buffer references only: the
    /// container's pipe is locked briefly) and go to the file from there. A
    /// worker killed in between leaves them in the staging pipe, whose read end
    /// the supervisor keeps: the next worker writes them first ([`Self::drain`]).
    pub fn splice(&mut self, max: u64) -> std::io::Result<Splice> {
        if self.staged > 0 {
            self.flush_stage()?;
        }
        let Some(pipe) = self.pipe.as_ref().map(AsRawFd::as_raw_fd) else {
            return Ok(Splice::Eof);
        };
        let file = self.file.as_raw_fd();
        let Some(stage_w) = self.stage.as_ref().map(|s| s.1.as_raw_fd()) else {
            let r = splice_raw(pipe, file, Some(self.file_len), max, true);
            return self.account(r, true);
        };
        let r = splice_raw(pipe, stage_w, None, max.min(STAGE_BYTES), true);
        let r = self.account(r, false)?;
        if let Splice::Moved(n) = r {
            self.staged = n;
            self.flush_stage()?;
        }
        Ok(r)
    }

    /// Writes the staging pipe's bytes to the file.
    fn flush_stage(&mut self) -> std::io::Result<()> {
        let Some(stage_r) = self.stage.as_ref().map(|s| s.0.as_raw_fd()) else {
            return Ok(());
        };
        let file = self.file.as_raw_fd();
        while self.staged > 0 {
            match splice_raw(stage_r, file, Some(self.file_len), self.staged, false) {
                Ok(0) => break,
                Ok(n) => {
                    self.staged -= n;
                    self.grew(n);
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // The rest stays staged for the next call.
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes everything a previous worker left in its staging pipe `old`
    /// (read end; its writer is gone, so it ends) before anything newer.
    pub fn drain(&mut self, old: &OwnedFd) -> std::io::Result<u64> {
        let mut total = 0;
        loop {
            let (from, to) = (old.as_raw_fd(), self.file.as_raw_fd());
            match splice_raw(from, to, Some(self.file_len), STAGE_BYTES, true) {
                Ok(0) => return Ok(total),
                Ok(n) => {
                    total += n;
                    self.grew(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(total),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Maps a splice from the container's pipe to a [`Splice`], updating the
    /// file's length when it went straight there.
    fn account(&mut self, r: std::io::Result<u64>, to_file: bool) -> std::io::Result<Splice> {
        match r {
            Ok(0) => Ok(Splice::Eof),
            Ok(n) => {
                if to_file {
                    self.grew(n);
                }
                self.shared.last_data_ms.store(mono_ms(), Ordering::Relaxed);
                Ok(Splice::Moved(n))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(Splice::Empty),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(Splice::Moved(0)),
            Err(e) => Err(e),
        }
    }

    /// Records a failed write; the delay doubles up to 30 s. Returns it.
    pub fn stall(&mut self) -> std::time::Duration {
        let d = self
            .stalled
            .map_or(std::time::Duration::from_millis(500), |(_, d)| {
                (d * 2).min(std::time::Duration::from_secs(30))
            });
        self.stalled = Some((std::time::Instant::now() + d, d));
        d
    }

    /// True while a stall's delay runs.
    pub fn stalled_now(&self) -> bool {
        self.stalled
            .is_some_and(|(until, _)| std::time::Instant::now() < until)
    }

    fn grew(&mut self, n: u64) {
        self.file_len += n;
        self.shared
            .written
            .store(self.base + self.file_len, Ordering::Release);
    }

    /// Splices up to `max` bytes, ending the file on a line boundary near the
    /// rotation size `limit` so that it can be rotated there. Far from the
    /// limit this is a plain splice; within one peek window of it, the next
    /// bytes are peeked with `tee(2)` into `scratch` (a pipe of the caller's)
    /// and the splice stops after the last newline that fits (or the first
    /// one, if none does); [`StreamState::rotate_due`] is then set.
    pub fn splice_for_rotation(
        &mut self,
        scratch: &(OwnedFd, OwnedFd),
        peek: &mut [u8],
        max: u64,
        limit: u64,
    ) -> std::io::Result<Splice> {
        let window = peek.len() as u64;
        let room = limit.saturating_sub(self.file_len);
        if room > window {
            return self.splice(max.min(room - window / 2));
        }
        let Some(pipe) = &self.pipe else {
            return Ok(Splice::Eof);
        };
        let want = usize::try_from(max).unwrap_or(usize::MAX).min(peek.len());
        // SAFETY: valid descriptors; tee copies between two pipes without touching our memory.
        let n = unsafe {
            libc::tee(
                pipe.as_raw_fd(),
                scratch.1.as_raw_fd(),
                want,
                libc::SPLICE_F_NONBLOCK,
            )
        };
        if n <= 0 {
            return self.splice(max.min(room.max(1)));
        }
        let n = n.unsigned_abs();
        let mut got = 0;
        while got < n {
            // SAFETY: reading into our buffer within its length.
            let r = unsafe {
                libc::read(
                    scratch.0.as_raw_fd(),
                    peek[got..].as_mut_ptr().cast(),
                    n - got,
                )
            };
            if r <= 0 {
                break;
            }
            got += r.unsigned_abs();
        }
        let fits = usize::try_from(room).unwrap_or(usize::MAX).min(got);
        let (take, at_line_end) = match memchr::memrchr(b'\n', &peek[..fits]) {
            Some(i) => (i + 1, true),
            None => match memchr::memchr(b'\n', &peek[fits..got]) {
                Some(i) => (fits + i + 1, true),
                // No line end in sight: move what was peeked (a long line is split).
                None => (got, false),
            },
        };
        let take = take.max(1) as u64;
        let r = self.splice(take)?;
        if r == Splice::Moved(take) && at_line_end {
            // The next line would pass the limit (or it is passed already).
            self.rotate_due = take < got as u64 || self.file_len >= limit;
        }
        Ok(r)
    }

    /// Renames `name` to `name.1` (shifting older ones) and starts a new file,
    /// which the parser follows after the old one. Rotated files are deleted
    /// beyond `keep`, but never one the saved checkpoint has not passed. Only
    /// the files the reader recorded are renamed or removed, each only where
    /// its name still holds it: no listing, no name taken on trust, and the
    /// work is bounded by the reader's own files, whatever a task planted.
    pub fn rotate(&mut self, keep: u32) -> std::io::Result<()> {
        self.rotate_due = false;
        let new_base = self.base + self.file_len;
        self.rotated.push_front((self.id, self.base));
        // `<name>.i` (1-based) ends where `<name>.(i-1)` begins; `.1` at `new_base`.
        let saved = self.shared.saved.load(Ordering::Acquire);
        let needed = if self.shared.parses {
            let mut end = new_base;
            let mut k = 0;
            for (_, b) in &self.rotated {
                // `>=`: the saved checkpoint may name a file at its very end.
                if end >= saved {
                    k += 1;
                }
                end = *b;
            }
            k
        } else {
            0
        };
        let keep = usize::try_from(keep).unwrap_or(usize::MAX).max(needed);
        let name = self.stream.name();
        // Before the renames the `i`th (0: the file just finished) is `rotated_name(i)`.
        while self.rotated.len() > keep {
            let i = self.rotated.len() - 1;
            if let Some((id, _)) = self.rotated.pop_back() {
                let _ = self.dir.remove_ours(&rotated_name(name, i), id);
            }
        }
        for (i, (id, _)) in self.rotated.iter().enumerate().rev() {
            // False: a task moved the file; it keeps whatever name it has now.
            let _ =
                self.dir
                    .rename_ours(&rotated_name(name, i), &rotated_name(name, i + 1), *id)?;
        }
        let mut rec = FileRecord {
            base: new_base,
            rotated: self.rotated.iter().copied().collect(),
            ..FileRecord::default()
        };
        let rec_file = &self.rec_file;
        let created = self.dir.create(name, &mut |id, tmp| {
            rec.current = id;
            rec.created_as = Some(tmp.to_string());
            rec_file.save(&rec);
        });
        let (file, id) = match created {
            Ok(c) => c,
            Err(e) => {
                // Writing goes on in the current file (under `.1`); retried at the next line end.
                self.rotated.pop_front();
                return Err(e);
            }
        };
        let file = Arc::new(file);
        // Sent before `written` counts any byte of the new file.
        let _ = self.shared.next.send(Segment {
            file: file.clone(),
            inode: id.ino,
            base: new_base,
            end: None,
        });
        self.base = new_base;
        self.file = file;
        self.id = id;
        self.file_len = 0;
        self.shared.written.store(new_base, Ordering::Release);
        Ok(())
    }
}

impl ParseStream {
    /// The checkpoint of what has been turned into buffered records.
    pub fn checkpoint(&self) -> StreamCheckpoint {
        let consumed = self.seg.base + self.off;
        let safe = self
            .pipeline
            .as_ref()
            .map_or(consumed, |p| p.safe_offset(consumed));
        StreamCheckpoint {
            inode: self.seg.inode,
            offset: safe.saturating_sub(self.seg.base),
            base: self.seg.base,
        }
    }

    /// Where a parse turn starts: see [`ParseStream::rewind`].
    pub fn turn_start(&self) -> TurnStart {
        TurnStart {
            seg: self.seg.clone(),
            later: self.later.clone(),
            off: self.off,
            done: self.done,
            pipeline: self.pipeline.as_ref().map(StreamPipeline::mark),
        }
    }

    /// Puts the stream back where its turn started, after a panic cut the
    /// turn short. The records that turn made are the caller's to discard:
    /// the next turn makes them again (same bytes, same ids), so each reaches
    /// the buffer once. Files received during the turn stay queued behind the
    /// turn's own; a pending multiline record is rebuilt from the file (`buf`
    /// is the read window; a record that rebuilding completes, which only a
    /// partial line flushed inside the pending record can cause, goes to
    /// `out`: it was never emitted). If that read fails, the stream resumes
    /// at the pending record instead (its lines are counted twice in
    /// `lines_read`, nothing is lost or buffered twice).
    pub fn rewind(
        &mut self,
        start: TurnStart,
        buf: &mut [u8],
        out: &mut dyn FnMut(Encoded<'_>),
    ) -> std::io::Result<()> {
        let mut files = start.later;
        for s in std::iter::once(&self.seg).chain(self.later.iter()) {
            let known = std::iter::once(&start.seg)
                .chain(files.iter())
                .any(|k| Arc::ptr_eq(&k.file, &s.file));
            if !known {
                files.push_back(s.clone());
            }
        }
        self.seg = start.seg;
        self.later = files;
        self.off = start.off;
        self.done = start.done;
        let mut res = Ok(());
        if let (Some(p), Some(mark)) = (self.pipeline.as_mut(), start.pipeline) {
            let (seg, off) = (&self.seg, self.off);
            res = p.rewind(&mark, |p| {
                // A record never spans two files: the pending one starts in this one.
                let from = mark.pending.unwrap_or(0).saturating_sub(seg.base).min(off);
                replay(p, seg, from, off, buf, out)
            });
            if res.is_err() {
                self.off = mark
                    .pending
                    .map_or(self.off, |o| o.saturating_sub(self.seg.base));
            }
        }
        self.shared
            .parsed
            .store(self.seg.base + self.off, Ordering::Release);
        res
    }

    /// End of the current file as far as the reader wrote it, and whether it
    /// is final (a newer file follows).
    fn end(&mut self) -> (u64, bool) {
        // `written` first: if it counts bytes of a newer file, the reader sent
        // that file before (release/acquire), so the receive below sees it.
        let written = self.shared.written.load(Ordering::Acquire);
        self.later.extend(self.later_rx.try_iter());
        match self.later.front() {
            Some(n) => (
                self.seg.end.unwrap_or(n.base.saturating_sub(self.seg.base)),
                true,
            ),
            None => (written.saturating_sub(self.seg.base), false),
        }
    }

    /// Parses up to about `budget` bytes past the parse offset, following
    /// rotated files; a trailing partial line of the current file is emitted
    /// only with `flush`. Returns the bytes consumed.
    pub fn parse(
        &mut self,
        buf: &mut [u8],
        budget: u64,
        flush: bool,
        out: &mut dyn FnMut(Encoded<'_>),
    ) -> std::io::Result<u64> {
        crate::fault::point("parser");
        let now = Instant::now();
        let ms = now_ms();
        let mut done = 0u64;
        loop {
            let (end, last_of_file) = self.end();
            match self.pipeline.as_mut() {
                None => {
                    done += end.saturating_sub(self.off);
                    self.off = end.max(self.off);
                }
                Some(p) => {
                    while self.off < end && done < budget {
                        let want = usize::try_from(end - self.off)
                            .unwrap_or(usize::MAX)
                            .min(buf.len());
                        self.seg.file.read_exact_at(&mut buf[..want], self.off)?;
                        let at_end = self.off + want as u64 == end;
                        let used = p.feed(
                            &buf[..want],
                            self.seg.base + self.off,
                            (flush || last_of_file) && at_end,
                            now,
                            ms,
                            out,
                        );
                        self.off += used as u64;
                        done += used as u64;
                        // `used < want` only means the window ended inside a line: read
                        // on from there. Nothing used means a partial last line (lines
                        // longer than the buffer cannot occur: the framer splits them).
                        if used == 0 {
                            break;
                        }
                    }
                }
            }
            if last_of_file && self.off >= end {
                // A record never spans two files.
                if let Some(p) = self.pipeline.as_mut() {
                    p.poll(now, ms, true, out);
                }
                if let Some(n) = self.later.pop_front() {
                    self.seg = n;
                    self.off = 0;
                }
                if done < budget {
                    continue;
                }
            }
            break;
        }
        self.shared
            .parsed
            .store(self.seg.base + self.off, Ordering::Release);
        Ok(done)
    }

    /// Bytes written to the current file past the parse offset (a partial
    /// line once the parser has caught up), or 0 while older files remain.
    pub fn unparsed_in_current(&mut self) -> u64 {
        match self.end() {
            (_, true) => 0,
            (end, false) => end.saturating_sub(self.off),
        }
    }

    /// True when every byte written so far, in every file, is parsed.
    pub fn fully_parsed(&mut self) -> bool {
        let (end, later_files) = self.end();
        !later_files && self.off >= end
    }

    /// Emits a multiline record whose timeout passed (or all, with `force`).
    pub fn poll(&mut self, force: bool, out: &mut dyn FnMut(Encoded<'_>)) {
        if let Some(p) = self.pipeline.as_mut() {
            p.poll(Instant::now(), now_ms(), force, out);
        }
    }

    /// True while the framer is in the middle of a split line.
    pub fn in_split(&self) -> bool {
        self.pipeline.as_ref().is_some_and(StreamPipeline::in_split)
    }
}

/// Feeds `p` the bytes `from..to` of `seg` again (see
/// [`StreamPipeline::rewind`]). A trailing partial line is fed as flushed:
/// the parse that consumed it up to `to` had flushed it.
fn replay(
    p: &mut StreamPipeline,
    seg: &Segment,
    from: u64,
    to: u64,
    buf: &mut [u8],
    out: &mut dyn FnMut(Encoded<'_>),
) -> std::io::Result<()> {
    let (now, ms) = (Instant::now(), now_ms());
    let mut pos = from;
    while pos < to {
        let want = usize::try_from(to - pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        seg.file.read_exact_at(&mut buf[..want], pos)?;
        let last = pos + want as u64 == to;
        let used = p.feed(&buf[..want], seg.base + pos, last, now, ms, out);
        pos += used as u64;
        if used == 0 {
            break;
        }
    }
    Ok(())
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn open_in(d: &Path, pipe: OwnedFd) -> (StreamState, ParseStream) {
        let dir = Arc::new(SandboxDir::open(d).unwrap());
        open(Stream::Stdout, dir, d, pipe, None, None, None).unwrap()
    }

    fn write_all(fd: &OwnedFd, data: &[u8]) {
        let mut f = File::from(fd.try_clone().unwrap());
        f.write_all(data).unwrap();
    }

    /// Every record of `text` as (offset, message) and the lines framed,
    /// parsed in turns of at most `budget` bytes; the turns listed in
    /// `cut` panic after their first record and are rewound.
    fn parse_in_turns(text: &[u8], budget: u64, cut: &[usize]) -> (Vec<(u64, String)>, u64) {
        use crate::record::{EncodeOptions, MultilineConfig, SourceMeta, StartRule};
        let d = tempfile::tempdir().unwrap();
        let (r, w) = crate::module::pipe(0).unwrap();
        let dir = Arc::new(SandboxDir::open(d.path()).unwrap());
        let ml = MultilineConfig {
            rule: StartRule::Indented,
            max_lines: 4,
            max_bytes: 200,
            timeout: std::time::Duration::from_secs(60),
        };
        let pipeline = StreamPipeline::new(
            &SourceMeta::default(),
            Stream::Stdout,
            &EncodeOptions::default(),
            32,
            Some(ml),
        );
        let (mut st, mut ps) =
            open(Stream::Stdout, dir, d.path(), r, Some(pipeline), None, None).unwrap();
        write_all(&w, text);
        drop(w);
        while st.splice(1 << 20).unwrap() != Splice::Eof {}
        let mut got = Vec::new();
        let keep = |got: &mut Vec<(u64, String)>, e: Encoded<'_>| {
            let v: serde_json::Value = serde_json::from_slice(e.doc).unwrap();
            got.push((e.offset, v["message"].as_str().unwrap().to_string()));
        };
        let mut buf = vec![0u8; 64];
        let mut turn = 0;
        while !ps.fully_parsed() {
            let start = ps.turn_start();
            if cut.contains(&turn) {
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    ps.parse(&mut buf, budget, true, &mut |_| panic!("cut"))
                }));
                assert!(res.is_err(), "turn {turn} made no record");
                ps.rewind(start, &mut buf, &mut |e| keep(&mut got, e))
                    .unwrap();
            } else {
                ps.parse(&mut buf, budget, true, &mut |e| keep(&mut got, e))
                    .unwrap();
            }
            turn += 1;
        }
        ps.poll(true, &mut |e| keep(&mut got, e));
        (got, ps.pipeline.as_ref().unwrap().lines)
    }

    #[test]
    fn a_turn_cut_by_a_panic_is_rewound_and_makes_each_record_once() {
        let mut text = Vec::new();
        for i in 0..40 {
            text.extend_from_slice(format!("start {i}\n").as_bytes());
            for k in 0..i % 4 {
                text.extend_from_slice(format!("  at frame {k}\n").as_bytes());
            }
            if i % 7 == 3 {
                // Split into pieces by the 32-byte line limit.
                text.extend_from_slice(format!("long {i} {}\n", "y".repeat(90)).as_bytes());
            }
            if i % 5 == 0 {
                text.push(b'\n');
            }
        }
        let (want, lines) = parse_in_turns(&text, 1 << 20, &[]);
        assert!(want.len() > 40);
        for cut in [vec![0], vec![3, 4, 9], (0..60).step_by(2).collect()] {
            let (got, got_lines) = parse_in_turns(&text, 40, &cut);
            assert_eq!(got, want, "turns cut: {cut:?}");
            assert_eq!(got_lines, lines, "lines framed, turns cut: {cut:?}");
        }
    }

    #[test]
    fn staged_bytes_of_a_killed_worker_go_to_the_file_before_newer_ones() {
        let d = tempfile::tempdir().unwrap();
        let (r, w) = crate::module::pipe(0).unwrap();
        let (mut st, _ps) = open_in(d.path(), r);
        // What a killed worker had moved out of the container's pipe but not
        // written yet: only the supervisor's read end of its staging pipe is left.
        let (old_r, old_w) = stage_pipe().unwrap();
        write_all(&old_w, b"old 1\nold 2\n");
        drop(old_w);
        write_all(&w, b"new 3\n");
        assert_eq!(st.drain(&old_r).unwrap(), 12);
        st.stage = Some(stage_pipe().unwrap());
        assert_eq!(st.splice(1 << 20).unwrap(), Splice::Moved(6));
        assert_eq!(st.splice(1 << 20).unwrap(), Splice::Empty);
        let text = std::fs::read(d.path().join("stdout")).unwrap();
        assert_eq!(text, b"old 1\nold 2\nnew 3\n");
        assert_eq!(st.shared.written.load(Ordering::Acquire), 18);
        drop(w);
        assert_eq!(st.splice(1 << 20).unwrap(), Splice::Eof);
    }

    #[test]
    fn splicing_through_the_staging_pipe_keeps_every_byte_in_order() {
        let d = tempfile::tempdir().unwrap();
        let (r, w) = crate::module::pipe(1 << 20).unwrap();
        let (mut st, _ps) = open_in(d.path(), r);
        st.stage = Some(stage_pipe().unwrap());
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let writer = std::thread::spawn(move || write_all(&w, &data));
        let mut moved = 0;
        loop {
            match st.splice(300_000).unwrap() {
                Splice::Moved(n) => moved += n,
                Splice::Empty => std::thread::sleep(std::time::Duration::from_millis(1)),
                Splice::Eof => break,
            }
        }
        writer.join().unwrap();
        assert_eq!(moved, 3_000_000);
        assert_eq!(std::fs::read(d.path().join("stdout")).unwrap(), expected);
    }

    #[test]
    fn rotation_and_adoption_use_only_the_files_the_reader_recorded() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let sb = d.path().join("sb");
        let state = d.path().join("state");
        std::fs::create_dir(&sb).unwrap();
        std::fs::create_dir(&state).unwrap();
        let secret = d.path().join("secret");
        std::fs::write(&secret, b"SECRET").unwrap();
        let (r, w) = crate::module::pipe(0).unwrap();
        let dir = Arc::new(SandboxDir::open(&sb).unwrap());
        let (mut st, _ps) = open(Stream::Stdout, dir.clone(), &state, r, None, None, None).unwrap();
        write_all(&w, b"a\n");
        assert_eq!(st.splice(1 << 20).unwrap(), Splice::Moved(2));
        st.rotate(5).unwrap();
        // The task plants where the next rotation renames to, moves the
        // current file away and plants a symlink at its name.
        symlink(&secret, sb.join("stdout.2")).unwrap();
        std::fs::rename(sb.join("stdout"), sb.join("moved")).unwrap();
        symlink(&secret, sb.join("stdout")).unwrap();
        write_all(&w, b"b\n");
        assert_eq!(st.splice(1 << 20).unwrap(), Splice::Moved(2));
        st.rotate(5).unwrap();
        write_all(&w, b"c\n");
        assert_eq!(st.splice(1 << 20).unwrap(), Splice::Moved(2));
        assert_eq!(std::fs::read(&secret).unwrap(), b"SECRET");
        assert_eq!(std::fs::read(sb.join("stdout.2")).unwrap(), b"a\n");
        assert_eq!(std::fs::read(sb.join("moved")).unwrap(), b"b\n");
        assert_eq!(std::fs::read(sb.join("stdout")).unwrap(), b"c\n");
        assert!(!std::fs::symlink_metadata(sb.join("stdout"))
            .unwrap()
            .is_symlink());
        let rec = load_record(&state, Stream::Stdout).unwrap();
        assert_eq!(rec.current, st.id);
        assert_eq!(rec.base, 4);
        assert_eq!(rec.rotated.len(), 2);
        // Adoption: the task swapped the current file for a symlink again.
        std::fs::rename(sb.join("stdout"), sb.join("moved-2")).unwrap();
        symlink(&secret, sb.join("stdout")).unwrap();
        drop(st);
        let (r2, w2) = crate::module::pipe(0).unwrap();
        let (mut st2, _) = open(
            Stream::Stdout,
            dir,
            &state,
            r2,
            None,
            None,
            Some(rec.clone()),
        )
        .unwrap();
        assert_ne!(st2.id, rec.current);
        assert!(
            st2.base > rec.base,
            "a lost file's offsets are never reused"
        );
        write_all(&w2, b"d\n");
        assert_eq!(st2.splice(1 << 20).unwrap(), Splice::Moved(2));
        assert_eq!(std::fs::read(sb.join("stdout")).unwrap(), b"d\n");
        assert_eq!(std::fs::read(&secret).unwrap(), b"SECRET");
        drop(w);
    }

    #[test]
    fn adoption_after_a_kill_inside_a_rotation_finds_every_recorded_file() {
        let d = tempfile::tempdir().unwrap();
        let sb = d.path().join("sb");
        let state = d.path().join("state");
        std::fs::create_dir(&sb).unwrap();
        std::fs::create_dir(&state).unwrap();
        let dir = Arc::new(SandboxDir::open(&sb).unwrap());
        let (r, w) = crate::module::pipe(0).unwrap();
        let (mut st, _) = open(Stream::Stdout, dir.clone(), &state, r, None, None, None).unwrap();
        write_all(&w, b"a\n");
        st.splice(1 << 20).unwrap();
        let before = load_record(&state, Stream::Stdout).unwrap();
        st.rotate(5).unwrap();
        let after = load_record(&state, Stream::Stdout).unwrap();
        let (x, y) = (before.current, after.current);
        let cp = |id: FileId| StreamCheckpoint {
            inode: id.ino,
            offset: 0,
            base: 0,
        };
        let adopt = |rec: &FileRecord, cp: StreamCheckpoint| {
            let (r, _w) = crate::module::pipe(0).unwrap();
            // A pipeline-less stream ignores checkpoints: look at the files only.
            open(
                Stream::Stdout,
                dir.clone(),
                &state,
                r,
                None,
                Some(cp),
                Some(rec.clone()),
            )
            .unwrap()
        };
        // Killed after the new file was recorded, before it got its name.
        let tmp = after.created_as.clone().unwrap();
        std::fs::rename(sb.join("stdout"), sb.join(&tmp)).unwrap();
        let (st2, _) = adopt(&after, cp(x));
        assert_eq!(st2.id, y, "the recorded file is taken back under its name");
        assert!(dir.holds("stdout", y).unwrap());
        assert_eq!(st2.base, 2);
        assert_eq!(st2.rotated.front().map(|r| r.0), Some(x));
        drop(st2);
        // Killed after the old file became `.1`, before the new one was recorded.
        std::fs::remove_file(sb.join("stdout")).unwrap();
        let (st3, _) = adopt(&before, cp(x));
        assert_ne!(st3.id, x);
        assert_eq!(st3.rotated.front().map(|r| r.0), Some(x), "found at `.1`");
        assert_eq!(st3.base, 2, "the new file starts where `.1` ends");
        assert!(dir.holds("stdout.1", x).unwrap());
        drop(w);
    }
}
