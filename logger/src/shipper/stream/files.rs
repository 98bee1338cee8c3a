//! The identity of every sandbox file the reader created, kept in the
//! container's private state, and the lookup of those files by name that
//! trusts a name only where it still holds the recorded file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::record::Stream;
use crate::sandbox::{FileId, SandboxDir};

/// Stream offset by which a new file's base passes a lost one's: more than a
/// sandbox file can hold between two rotations, so no record made after a
/// task removed the shipper's current file reuses the id of a shipped one.
pub(super) const LOST_FILE_GAP: u64 = 1 << 40;

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
pub(super) struct RecordFile {
    file: File,
    path: PathBuf,
}

impl RecordFile {
    pub(super) fn open(path: PathBuf) -> std::io::Result<RecordFile> {
        let file = crate::private::open_rw(&path)?;
        Ok(RecordFile { file, path })
    }

    /// Creates the stream's new current file `name` in `dir`, its first
    /// byte at stream offset `base`, after the `rotated` files; the record
    /// names it (and the unique name it is created under) before it gets
    /// its name, so a kill in between leaves it findable.
    pub(super) fn create_current(
        &self,
        dir: &SandboxDir,
        name: &str,
        base: u64,
        rotated: Vec<(FileId, u64)>,
    ) -> std::io::Result<(File, FileId)> {
        let mut rec = FileRecord {
            base,
            rotated,
            ..FileRecord::default()
        };
        dir.create(name, &mut |id, tmp| {
            rec.current = id;
            rec.created_as = Some(tmp.to_string());
            self.save(&rec);
        })
    }

    pub(super) fn save(&self, rec: &FileRecord) {
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
pub(super) fn rotated_name(name: &str, n: usize) -> String {
    if n == 0 {
        name.to_string()
    } else {
        format!("{name}.{n}")
    }
}

pub(super) fn file_len(f: &File) -> std::io::Result<u64> {
    Ok(f.metadata()?.len())
}

/// Opens the recorded file `id`, the `n`th of the stream, at its name or,
/// after a worker killed in the middle of a rotation, one number later.
pub(super) fn find_recorded(dir: &SandboxDir, name: &str, n: usize, id: FileId) -> Option<File> {
    [n, n + 1].into_iter().find_map(|k| {
        dir.open_ours(&rotated_name(name, k), id, k == 0)
            .unwrap_or_else(|e| {
                tracing::warn!(path = %dir.path().join(rotated_name(name, k)).display(), "{e}");
                None
            })
    })
}
