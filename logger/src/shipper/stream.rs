//! One stream of one container: the pipe is spliced into the sandbox file
//! (so the bytes are in the page cache, never only in this process), parsed
//! from the file with an offset that is checkpointed, and rotated by size.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
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

/// State of one stream.
#[derive(Debug)]
pub struct StreamState {
    /// Which stream.
    pub stream: Stream,
    /// Pipe read end; `None` after EOF.
    pub pipe: Option<OwnedFd>,
    /// The sandbox file (read-write, not append: `splice` needs an offset).
    pub file: File,
    /// Its path.
    pub path: PathBuf,
    /// Its inode.
    pub inode: u64,
    /// Bytes in the file.
    pub file_len: u64,
    /// Bytes of the file parsed so far.
    pub parse_off: u64,
    /// Stream bytes before this file.
    pub base: u64,
    /// Parser (`None` for the `none` sink: nothing is parsed).
    pub pipeline: Option<StreamPipeline>,
    /// Last time bytes arrived.
    pub last_data: Instant,
    /// Registered with epoll.
    pub armed: bool,
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

impl StreamState {
    /// Opens (or creates) the sandbox file and positions the parser from the
    /// checkpoint. With no checkpoint, parsing starts at the file's end
    /// (earlier content was not ours). A checkpoint pointing at the file that
    /// was rotated to `<name>.1` first parses that file's tail (`catch_up`).
    pub fn open(
        stream: Stream,
        sandbox: &Path,
        pipe: OwnedFd,
        pipeline: Option<StreamPipeline>,
        cp: Option<StreamCheckpoint>,
        catch_up: &mut dyn FnMut(Encoded<'_>),
    ) -> std::io::Result<StreamState> {
        let path = sandbox.join(stream.name());
        let (file, inode, len) = open_rw(&path)?;
        let mut st = StreamState {
            stream,
            pipe: Some(pipe),
            file,
            path,
            inode,
            file_len: len,
            parse_off: len,
            base: 0,
            pipeline,
            last_data: Instant::now(),
            armed: false,
        };
        if let Some(cp) = cp {
            if cp.inode == inode && cp.offset <= len {
                st.parse_off = cp.offset;
                st.base = cp.base;
            } else {
                let rotated = st.rotated_path(1);
                let old = std::fs::metadata(&rotated)
                    .ok()
                    .filter(|m| m.ino() == cp.inode);
                if let (Some(m), Some(p)) = (old, st.pipeline.as_mut()) {
                    // The file was rotated after the checkpoint: finish its tail first.
                    let f = File::open(&rotated)?;
                    let mut off = cp.offset.min(m.len());
                    let mut buf = vec![0u8; 256 * 1024];
                    while off < m.len() {
                        let want = usize::try_from(m.len() - off)
                            .unwrap_or(usize::MAX)
                            .min(buf.len());
                        f.read_exact_at(&mut buf[..want], off)?;
                        let last = off + want as u64 == m.len();
                        let used = p.feed(
                            &buf[..want],
                            cp.base + off,
                            last,
                            Instant::now(),
                            now_ms(),
                            catch_up,
                        );
                        off += used as u64;
                        if used == 0 {
                            break;
                        }
                    }
                    p.poll(Instant::now(), now_ms(), true, catch_up);
                    st.base = cp.base + m.len();
                    st.parse_off = 0;
                } else {
                    tracing::warn!(path = %st.path.display(), "checkpoint refers to an unknown file; parsing resumes at its end");
                    st.base = cp.base;
                }
            }
        }
        if st.pipeline.is_none() {
            st.parse_off = st.file_len;
        }
        Ok(st)
    }

    /// The checkpoint of what has been turned into buffered records.
    pub fn checkpoint(&self) -> StreamCheckpoint {
        let consumed = self.base + self.parse_off;
        let safe = self
            .pipeline
            .as_ref()
            .map_or(consumed, |p| p.safe_offset(consumed));
        StreamCheckpoint {
            inode: self.inode,
            offset: safe.saturating_sub(self.base),
            base: self.base,
        }
    }

    /// Moves up to `max` bytes from the pipe into the file.
    pub fn splice(&mut self, max: u64) -> std::io::Result<Splice> {
        let Some(pipe) = &self.pipe else {
            return Ok(Splice::Eof);
        };
        let mut off = libc::loff_t::try_from(self.file_len).unwrap_or(libc::loff_t::MAX);
        let len = usize::try_from(max).unwrap_or(usize::MAX);
        // SAFETY: both descriptors are open and owned by this struct; `off` is a valid
        // loff_t the kernel updates; no memory of ours is read or written otherwise.
        let n = unsafe {
            libc::splice(
                pipe.as_raw_fd(),
                std::ptr::null_mut(),
                self.file.as_raw_fd(),
                &mut off,
                len,
                libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
            )
        };
        match n {
            0 => Ok(Splice::Eof),
            n if n > 0 => {
                let n = n.unsigned_abs() as u64;
                self.file_len += n;
                self.last_data = Instant::now();
                Ok(Splice::Moved(n))
            }
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    Ok(Splice::Empty)
                } else if e.raw_os_error() == Some(libc::EINTR) {
                    Ok(Splice::Moved(0))
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Like [`StreamState::splice`], but stops after the first newline found
    /// in the next `max` bytes (peeked with `tee(2)` into `scratch`, a pipe
    /// of the caller's), so that the file ends on a line boundary and can be
    /// rotated there.
    pub fn splice_to_newline(
        &mut self,
        scratch: &(OwnedFd, OwnedFd),
        peek: &mut [u8],
        max: u64,
    ) -> std::io::Result<Splice> {
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
            return self.splice(max);
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
        let take = memchr::memchr(b'\n', &peek[..got]).map_or(got, |i| i + 1);
        self.splice(take.max(1) as u64)
    }

    /// Parses what the file holds past the parse offset; a trailing partial
    /// line is emitted only with `flush`. Returns records emitted.
    pub fn parse(
        &mut self,
        buf: &mut [u8],
        flush: bool,
        out: &mut dyn FnMut(Encoded<'_>),
    ) -> std::io::Result<()> {
        let Some(p) = self.pipeline.as_mut() else {
            self.parse_off = self.file_len;
            return Ok(());
        };
        let now = Instant::now();
        let ms = now_ms();
        while self.parse_off < self.file_len {
            let want = usize::try_from(self.file_len - self.parse_off)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            self.file.read_exact_at(&mut buf[..want], self.parse_off)?;
            let at_end = self.parse_off + want as u64 == self.file_len;
            let used = p.feed(
                &buf[..want],
                self.base + self.parse_off,
                flush && at_end,
                now,
                ms,
                out,
            );
            self.parse_off += used as u64;
            // `used < want` only means the window ended inside a line: read on from
            // there. Nothing used means a partial last line (lines longer than the
            // buffer cannot occur: the framer splits them at max_line_bytes).
            if used == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Emits a multiline record whose timeout passed (or all, with `force`).
    pub fn poll(&mut self, force: bool, out: &mut dyn FnMut(Encoded<'_>)) {
        if let Some(p) = self.pipeline.as_mut() {
            p.poll(Instant::now(), now_ms(), force, out);
        }
    }

    /// True when the file may be rotated now: big enough, fully parsed.
    pub fn wants_rotation(&self, max: u64) -> bool {
        self.file_len >= max
            && self.parse_off == self.file_len
            && self.pipeline.as_ref().is_none_or(|p| !p.in_split())
    }

    fn rotated_path(&self, n: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    /// Renames `name` to `name.1` (shifting older ones, keeping `keep`) and
    /// starts a new file. The caller flushed pending records and saved a
    /// checkpoint at the old file's end first.
    pub fn rotate(&mut self, keep: u32) -> std::io::Result<()> {
        let _ = std::fs::remove_file(self.rotated_path(keep));
        for n in (1..keep).rev() {
            let _ = std::fs::rename(self.rotated_path(n), self.rotated_path(n + 1));
        }
        std::fs::rename(&self.path, self.rotated_path(1))?;
        let (file, inode, len) = open_rw(&self.path)?;
        self.base += self.file_len;
        self.file = file;
        self.inode = inode;
        self.file_len = len;
        self.parse_off = len;
        Ok(())
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
