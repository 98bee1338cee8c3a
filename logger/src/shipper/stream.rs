//! One stream of one container, in two halves. The reader half splices the
//! pipe into the sandbox file (so the bytes are in the page cache, never only
//! in this process) and rotates it by size; the parser half follows the file
//! (and the rotated files it has not finished) with a checkpointed offset.
//! The sandbox files are the buffer between the two: the container is
//! throttled by the splice rate, not the parse rate, up to a bounded lag.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::record::{Encoded, Stream, StreamPipeline};

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
    /// Its path.
    pub path: PathBuf,
    /// Its inode.
    pub inode: u64,
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
    /// Stream offsets of the first bytes of `<name>.1`, `<name>.2`, ... as far
    /// as known (newest first).
    rotated_bases: VecDeque<u64>,
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

fn open_rw(path: &Path) -> std::io::Result<(File, u64, u64)> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    let m = f.metadata()?;
    Ok((f, m.ino(), m.len()))
}

fn rotated_path(path: &Path, n: usize) -> PathBuf {
    let mut s = path.to_path_buf().into_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Opens (or creates) the sandbox file of `stream` and positions the parser
/// from the checkpoint. With no checkpoint, parsing starts at the file's end
/// (earlier content was not ours). A checkpoint naming a file rotated since
/// (`<name>.N`) makes the parser start there and follow the newer files.
pub fn open(
    stream: Stream,
    sandbox: &Path,
    pipe: OwnedFd,
    pipeline: Option<StreamPipeline>,
    cp: Option<StreamCheckpoint>,
) -> std::io::Result<(StreamState, ParseStream)> {
    let path = sandbox.join(stream.name());
    let (file, inode, len) = open_rw(&path)?;
    let file = Arc::new(file);
    let parses = pipeline.is_some();
    let mut base = 0;
    let mut off = len;
    // Older files still to parse, oldest first: (file, inode, len).
    let mut older: Vec<(File, u64, u64)> = Vec::new();
    if let (Some(cp), true) = (cp, parses) {
        base = cp.base;
        if cp.inode == inode && cp.offset <= len {
            off = cp.offset;
        } else {
            // Every `<name>.N`, newest first. A kill -9 in the middle of a rotation's
            // renames can leave a gap in the numbers, never a change of order.
            let mut numbered: Vec<(usize, PathBuf)> = std::fs::read_dir(sandbox)?
                .filter_map(|e| {
                    let e = e.ok()?;
                    let name = e.file_name();
                    let n = name
                        .to_str()?
                        .strip_prefix(stream.name())?
                        .strip_prefix('.')?
                        .parse()
                        .ok()?;
                    Some((n, e.path()))
                })
                .collect();
            numbered.sort_unstable();
            let mut found = false;
            for (_, p) in numbered {
                let f = File::open(&p)?;
                let m = f.metadata()?;
                older.push((f, m.ino(), m.len()));
                if m.ino() == cp.inode {
                    found = true;
                    break;
                }
            }
            if found {
                older.reverse();
                off = cp.offset.min(older[0].2);
            } else {
                tracing::warn!(path = %path.display(), "checkpoint refers to an unknown file; parsing resumes at its end");
                older.clear();
            }
        }
    }
    let mut segs: VecDeque<Segment> = VecDeque::new();
    let mut rotated_bases = VecDeque::new();
    let mut b = base;
    for (f, ino, l) in older {
        segs.push_back(Segment {
            file: Arc::new(f),
            inode: ino,
            base: b,
        });
        rotated_bases.push_front(b);
        b += l;
    }
    let cur_base = b;
    segs.push_back(Segment {
        file: file.clone(),
        inode,
        base: cur_base,
    });
    let first = segs.pop_front().expect("the current file is queued");
    let (next_tx, later_rx) = std::sync::mpsc::channel();
    let parsed = first.base + off;
    let shared = Arc::new(StreamShared {
        stream,
        parses,
        written: AtomicU64::new(cur_base + len),
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
            inode,
            file_len: len,
            base: cur_base,
            armed: false,
            stalled: None,
            rotate_due: false,
            rotated_bases,
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
    /// beyond `keep`, but never one the saved checkpoint has not passed.
    pub fn rotate(&mut self, keep: u32) -> std::io::Result<()> {
        self.rotate_due = false;
        let new_base = self.base + self.file_len;
        self.rotated_bases.push_front(self.base);
        // `<name>.i` (1-based) ends where `<name>.(i-1)` begins; `.1` at `new_base`.
        let saved = self.shared.saved.load(Ordering::Acquire);
        let needed = if self.shared.parses {
            let mut end = new_base;
            let mut k = 0;
            for b in &self.rotated_bases {
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
        let _ = std::fs::remove_file(rotated_path(&self.path, keep));
        for n in (1..keep).rev() {
            let _ = std::fs::rename(rotated_path(&self.path, n), rotated_path(&self.path, n + 1));
        }
        std::fs::rename(&self.path, rotated_path(&self.path, 1))?;
        let (file, inode, len) = open_rw(&self.path)?;
        let file = Arc::new(file);
        // Sent before `written` counts any byte of the new file.
        let _ = self.shared.next.send(Segment {
            file: file.clone(),
            inode,
            base: new_base,
        });
        self.base = new_base;
        self.file = file;
        self.inode = inode;
        self.file_len = len;
        self.shared.written.store(new_base + len, Ordering::Release);
        // Files kept longer while the parser lagged go once it has passed them.
        let mut n = keep + 1;
        while std::fs::remove_file(rotated_path(&self.path, n)).is_ok() {
            n += 1;
        }
        self.rotated_bases.truncate(keep);
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

    /// End of the current file as far as the reader wrote it, and whether it
    /// is final (a newer file follows).
    fn end(&mut self) -> (u64, bool) {
        // `written` first: if it counts bytes of a newer file, the reader sent
        // that file before (release/acquire), so the receive below sees it.
        let written = self.shared.written.load(Ordering::Acquire);
        self.later.extend(self.later_rx.try_iter());
        match self.later.front() {
            Some(n) => (n.base - self.seg.base, true),
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

    fn write_all(fd: &OwnedFd, data: &[u8]) {
        let mut f = File::from(fd.try_clone().unwrap());
        f.write_all(data).unwrap();
    }

    #[test]
    fn staged_bytes_of_a_killed_worker_go_to_the_file_before_newer_ones() {
        let d = tempfile::tempdir().unwrap();
        let (r, w) = crate::module::pipe(0).unwrap();
        let (mut st, _ps) = open(Stream::Stdout, d.path(), r, None, None).unwrap();
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
        let (mut st, _ps) = open(Stream::Stdout, d.path(), r, None, None).unwrap();
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
}
