//! One stream of one container, in two halves. The reader half splices the
//! pipe into the sandbox file (so the bytes are in the page cache, never only
//! in this process) and rotates it by size; the parser half follows the file
//! (and the rotated files it has not finished) with a checkpointed offset.
//! The sandbox files are the buffer between the two: the container is
//! throttled by the splice rate, not the parse rate, up to a bounded lag.
//!
//! This module holds what both halves share; `open` starts a stream (new
//! files, or the recorded ones on adoption), `splice` and `rotate` are the
//! reader half's data path, `parse` the parser half, `files` the record of
//! the sandbox files the reader created.

mod files;
mod open;
mod parse;
mod rotate;
mod splice;

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use files::{load_record, record_path, FileRecord};
pub use open::open;
pub use parse::{ParseStream, TurnStart};
pub use splice::{stage_pipe, Splice, STAGE_BYTES};

use crate::record::Stream;
use crate::sandbox::{FileId, SandboxDir};
use files::RecordFile;

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

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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

#[cfg(test)]
pub(super) mod test_util {
    use std::fs::File;
    use std::io::Write;
    use std::os::fd::OwnedFd;
    use std::path::Path;
    use std::sync::Arc;

    use super::{open, ParseStream, StreamState};
    use crate::record::Stream;
    use crate::sandbox::SandboxDir;

    /// A stream of `d` (sandbox and state directory at once), nothing parsed.
    pub fn open_in(d: &Path, pipe: OwnedFd) -> (StreamState, ParseStream) {
        let dir = Arc::new(SandboxDir::open(d).unwrap());
        open(Stream::Stdout, dir, d, pipe, None, None, None).unwrap()
    }

    /// Writes all of `data` into the pipe's write end `fd`.
    pub fn write_all(fd: &OwnedFd, data: &[u8]) {
        let mut f = File::from(fd.try_clone().unwrap());
        f.write_all(data).unwrap();
    }
}
