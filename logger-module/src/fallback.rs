//! Records of containers the module could not hand to the shipper: they
//! write their sandbox `stdout`/`stderr` directly. One root-only file per
//! container (`<key>.json`, 0600, in a 0700 directory next to the shipper's
//! socket: `log-shipper.sock` has `log-shipper.fallback/`), holding what the
//! registration would have said and the identity of the two files the module
//! created: the shipper counts and names them, follows and ships those files
//! (`shipper::fallback`), and removes the record once the container ended and
//! its files are parsed, or once its sandbox is gone.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::proto::Registration;
use crate::sandbox::FileId;

/// Format of a record.
pub const VERSION: u32 = 1;

/// Most records read per scan (a bound on the work; more are counted later).
pub const MAX_SCAN: usize = 100_000;

/// One fallen-back container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackRecord {
    /// Format ([`VERSION`]).
    pub version: u32,
    /// The container's key (flat container id).
    pub key: String,
    /// Its sandbox directory.
    pub sandbox: PathBuf,
    /// Why the shipper did not take it.
    pub reason: String,
    /// When, milliseconds since the epoch.
    pub at_ms: u64,
    /// The `stdout` and `stderr` files the module created there.
    pub files: [FileId; 2],
    /// What the shipper would have been sent (metadata and options), for
    /// whoever takes the files over.
    pub registration: Registration,
}

/// The directory of the records of the shipper listening at `socket`.
pub fn dir_for(socket: &Path) -> PathBuf {
    socket.with_extension("fallback")
}

static WRITTEN: AtomicU64 = AtomicU64::new(0);
static WRITE_FAILED: AtomicU64 = AtomicU64::new(0);

/// Fallbacks recorded by this process, and those whose record could not be
/// written (each is also logged with the container).
pub fn module_counts() -> (u64, u64) {
    (
        WRITTEN.load(Ordering::Relaxed),
        WRITE_FAILED.load(Ordering::Relaxed),
    )
}

/// Writes the record of a fallen-back container; a failure is logged and
/// counted, never fatal (the container has its files either way).
pub fn record(socket: &Path, rec: &FallbackRecord) -> Option<PathBuf> {
    let dir = dir_for(socket);
    let path = dir.join(format!("{}.json", rec.key));
    // The socket's directory is made as the shipper makes it (0755: members
    // of its `socket_group` must reach the socket); the records' own is 0700.
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    let made = parent.map_or(Ok(()), |p| {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(p)
    });
    let written = made
        .and_then(|()| crate::private::create_dir(&dir))
        .and_then(|()| {
            let body = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
            crate::private::write_atomic(&path, &body)
        });
    match written {
        Ok(()) => {
            WRITTEN.fetch_add(1, Ordering::Relaxed);
            Some(path)
        }
        Err(e) => {
            WRITE_FAILED.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                container = rec.key,
                "recording the fallback in {}: {e} (the container's records are not shipped and no record says so)",
                path.display()
            );
            None
        }
    }
}

/// Every readable record in `dir` (at most [`MAX_SCAN`]), with its path.
/// Unreadable ones are skipped with a warning.
pub fn list(dir: &Path) -> Vec<(PathBuf, FallbackRecord)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten().take(MAX_SCAN) {
        let path = e.path();
        if path.extension() != Some(std::ffi::OsStr::new("json")) {
            continue;
        }
        let parsed = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<FallbackRecord>(&b).map_err(|e| e.to_string()));
        match parsed {
            Ok(rec) => out.push((path, rec)),
            Err(e) => tracing::warn!("fallback record {}: {e}", path.display()),
        }
    }
    out
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
