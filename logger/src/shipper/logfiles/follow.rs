//! One followed log file: an open descriptor (renames do not affect it), the
//! bytes consumed, a fingerprint of its first bytes and its record pipeline.
//! A file is known by its identity, not its name: a rotation by rename is
//! nothing but a new identity at the name, and the old one is read on to its
//! end. A truncation (`copytruncate`) makes the same inode a new file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::open::{size_and_mtime, Ident};
use crate::record::{Encoded, StreamPipeline};
use crate::shipper::stream::{mono_ms, now_ms};

/// Bytes of a file's beginning kept as its fingerprint: how a file is told
/// from another that got its inode, and how a truncated file's copy is found.
pub const PREFIX: usize = 128;

/// What a checkpoint keeps of a followed (or retired) file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheckpoint {
    /// Number of the file in the container (record ids carry it).
    pub n: u64,
    /// Tag of the `rein.log.files` entry that found it.
    pub tag: String,
    /// Sandbox-relative path where it was found.
    pub path: Vec<u8>,
    /// Device and inode.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Bytes turned into buffered records.
    pub offset: u64,
    /// Its first bytes (at most [`PREFIX`]).
    pub prefix: Vec<u8>,
}

impl FileCheckpoint {
    /// Its identity.
    pub fn id(&self) -> Ident {
        (self.dev, self.ino)
    }
}

/// True when `a` and `b` begin alike over the shorter of the two, which is
/// not empty.
pub fn same_start(a: &[u8], b: &[u8]) -> bool {
    let k = a.len().min(b.len());
    k > 0 && a[..k] == b[..k]
}

/// Reads the first bytes of `f` (at most [`PREFIX`]).
pub fn read_prefix(f: &File, size: u64) -> io::Result<Vec<u8>> {
    let k = usize::try_from(size.min(PREFIX as u64)).unwrap_or(PREFIX);
    let mut b = vec![0u8; k];
    let got = f.read_at(&mut b, 0)?;
    b.truncate(got);
    Ok(b)
}

/// What a read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Bytes consumed (0: nothing new, or a partial line waiting).
    Read(u64),
    /// The file is shorter than what was consumed: truncated.
    Truncated,
}

/// A followed file.
#[derive(Debug)]
pub struct Followed {
    /// Number in the container.
    pub n: u64,
    /// Index of its `rein.log.files` entry.
    pub spec: usize,
    /// Where it was found (relative to the sandbox).
    pub rel: Vec<u8>,
    /// Identity.
    pub id: Ident,
    /// Open for reading.
    pub file: File,
    /// Bytes fed to the pipeline.
    pub off: u64,
    /// Its first bytes.
    pub prefix: Vec<u8>,
    /// Lines to records.
    pub pipeline: StreamPipeline,
    /// Largest size seen and when it last grew ([`mono_ms`]).
    pub seen_size: u64,
    /// When it last grew.
    pub grew_ms: u64,
    /// Its modification time at the last look (seconds, nanoseconds).
    pub seen_mtime: (i64, i64),
    /// Found at a matching name by the last scan.
    pub present: bool,
}

impl Followed {
    /// Its checkpoint: the offset stops before a record still pending.
    pub fn checkpoint(&self, tag: &str) -> FileCheckpoint {
        FileCheckpoint {
            n: self.n,
            tag: tag.to_string(),
            path: self.rel.clone(),
            dev: self.id.0,
            ino: self.id.1,
            offset: self.pipeline.safe_offset(self.off),
            prefix: self.prefix.clone(),
        }
    }

    /// Reads up to about `budget` new bytes into records; a trailing
    /// partial line is emitted only with `flush`.
    pub fn read(
        &mut self,
        buf: &mut [u8],
        budget: u64,
        flush: bool,
        out: &mut dyn FnMut(Encoded<'_>),
    ) -> io::Result<Step> {
        crate::fault::point("parser_file");
        let (size, mtime) = size_and_mtime(&self.file)?;
        if size < self.off {
            return Ok(Step::Truncated);
        }
        if size != self.seen_size || mtime != self.seen_mtime {
            self.seen_mtime = mtime;
            // Truncated and written past the old offset since the last look:
            // the size alone cannot tell, the first bytes do.
            let start = read_prefix(&self.file, size)?;
            if !self.prefix.is_empty() && !start.starts_with(&self.prefix) {
                return Ok(Step::Truncated);
            }
            self.prefix = start;
            if size > self.seen_size {
                self.grew_ms = mono_ms();
            }
            self.seen_size = size;
        }
        let (now, ms) = (Instant::now(), now_ms());
        let mut done = 0u64;
        while self.off < size && done < budget {
            let want = usize::try_from(size - self.off)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let got = self.file.read_at(&mut buf[..want], self.off)?;
            if got == 0 {
                // Truncated under the read: seen on the next look.
                break;
            }
            let at_end = self.off + got as u64 == size;
            let used = self
                .pipeline
                .feed(&buf[..got], self.off, flush && at_end, now, ms, out);
            self.off += used as u64;
            done += used as u64;
            if used == 0 {
                break;
            }
        }
        Ok(Step::Read(done))
    }

    /// Emits a pending multiline record whose timeout passed (or any, with `force`).
    pub fn poll(&mut self, force: bool, out: &mut dyn FnMut(Encoded<'_>)) {
        self.pipeline.poll(Instant::now(), now_ms(), force, out);
    }

    /// Bytes written past what was consumed (as of the last look).
    pub fn unread(&self) -> u64 {
        self.seen_size.saturating_sub(self.off)
    }
}
