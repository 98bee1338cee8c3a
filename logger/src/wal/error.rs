//! The buffer's error type.

use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

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
        no_space(source)
    }

    /// The file does not exist (deleted meanwhile).
    pub(super) fn is_not_found(&self) -> bool {
        let WalError::Io { source, .. } = self;
        source.kind() == io::ErrorKind::NotFound
    }
}

/// True for ENOSPC and EDQUOT.
pub(super) fn no_space(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::ENOSPC | Errno::EDQUOT)
    )
}

/// Wraps an I/O error on `path`.
pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}
