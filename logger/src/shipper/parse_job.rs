//! A container as the parser threads see it: its streams, log files and
//! disk buffers ([`ParseJob`]), the tags every record of it carries, and
//! its checkpoint file.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::logfiles::{FileSources, FilesCheckpoint};
use super::stream::{ParseStream, StreamCheckpoint};
use crate::wal::Wal;

/// What `checkpoint.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Of `stdout`.
    pub stdout: StreamCheckpoint,
    /// Of `stderr`.
    pub stderr: StreamCheckpoint,
    /// Of the container's log files (`rein.log.files`), if it names any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesCheckpoint>,
}

/// Saves the checkpoint of a container's two streams (and log files) in
/// `dir`; returns what was saved.
pub fn save_checkpoint(
    dir: &Path,
    streams: &[ParseStream],
    files: Option<&FileSources>,
) -> std::io::Result<Checkpoint> {
    let cp = Checkpoint {
        stdout: streams[0].checkpoint(),
        stderr: streams[1].checkpoint(),
        files: files.map(FileSources::checkpoint),
    };
    crate::private::write_atomic(
        &dir.join("checkpoint.json"),
        &serde_json::to_vec(&cp).unwrap_or_default(),
    )?;
    Ok(cp)
}

/// One container, as the parser sees it.
#[derive(Debug)]
pub struct ParseJob {
    /// Container key (for messages).
    pub key: String,
    /// Its state directory (checkpoint).
    pub dir: PathBuf,
    /// Container id and route of its records.
    pub tags: RecordTags,
    /// Its disk buffer (`None`: nothing is parsed).
    pub wal: Option<Arc<Wal>>,
    /// stdout, stderr.
    pub streams: Vec<ParseStream>,
    /// Set once both streams reached EOF and their records are synced: the
    /// reader may then forget the container.
    pub finished: Arc<AtomicBool>,
    /// Its log files, if it names any (and has a disk buffer).
    pub files: Option<FileSources>,
    /// Disk buffers of log files with a sink of their own.
    pub file_wals: Vec<Arc<Wal>>,
    /// Parsed since its checkpoint was last saved.
    pub(super) dirty: bool,
}

impl ParseJob {
    /// A container to follow; `finished` is shared with the reader.
    pub fn new(
        key: String,
        dir: PathBuf,
        cid: Vec<u8>,
        route: Vec<u8>,
        wal: Option<Arc<Wal>>,
        streams: Vec<ParseStream>,
        finished: Arc<AtomicBool>,
    ) -> ParseJob {
        ParseJob {
            key,
            dir,
            tags: RecordTags { cid, route },
            wal,
            streams,
            finished,
            files: None,
            file_wals: Vec::new(),
            dirty: false,
        }
    }

    /// With the container's log files and the buffers of those with a sink
    /// of their own.
    pub fn with_files(mut self, files: Option<FileSources>, wals: Vec<Arc<Wal>>) -> ParseJob {
        self.files = files;
        self.file_wals = wals;
        self
    }

    /// True once every stream and log file is read to its end.
    pub(super) fn all_done(&self) -> bool {
        self.streams.iter().all(|s| s.done) && self.files.as_ref().is_none_or(|f| f.done)
    }
}

/// What every record of a container carries besides its own fields.
#[derive(Debug)]
pub struct RecordTags {
    /// Container id (`root.child`).
    pub cid: Vec<u8>,
    /// Index or topic of its records.
    pub route: Vec<u8>,
}
