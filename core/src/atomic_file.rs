//! Whole-file replacement: the data goes to a temporary file beside the target,
//! which is then renamed over it, so a reader (or a process started after a crash)
//! sees the old content or the new, never a torn file.
//!
//! The temporary file is opened without following a symbolic link and without
//! blocking on a FIFO, and is used only if it is a regular file of this process's
//! user: a name planted in a shared directory is refused, never written through.
//! Durability is the caller's choice: the rename alone survives any crash of the
//! process (the page cache outlives it); [`AtomicFile::durable`] adds an `fsync`
//! of the file before the rename and of the directory after it, for what must
//! survive a machine crash. Either way the temporary file's writeback is started
//! before the rename, so that a file system that commits the rename (ext4 with
//! delayed allocation) commits the data with it: after a crash or a journal abort
//! the name holds the old content or the new, never an empty file; except with
//! [`AtomicFile::until_reboot`], for content that means nothing after a restart.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, renameat2, FcntlArg, OFlag, RenameFlags};
use nix::sys::stat::{fchmod, Mode};

/// A failed step of a replacement, with the file it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct AtomicError {
    /// What was being done (`creating`, `writing`, `renaming`, ...).
    pub op: &'static str,
    /// The temporary file, or the target for the rename.
    pub path: PathBuf,
    /// The kernel's answer.
    #[source]
    pub source: io::Error,
}

impl From<AtomicError> for io::Error {
    /// The kernel's error, as callers that match on its kind expect it.
    fn from(e: AtomicError) -> Self {
        e.source
    }
}

/// What a replacement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The target now holds the data.
    Replaced,
    /// The target existed and [`AtomicFile::keep_existing`] was asked: left as it was.
    KeptExisting,
}

/// One replacement of `path`; see the module documentation.
#[derive(Debug, Clone)]
pub struct AtomicFile<'a> {
    path: &'a Path,
    temp: PathBuf,
    mode: Option<u32>,
    durable: bool,
    until_reboot: bool,
    keep_existing: bool,
}

/// `path` with `suffix` appended to its last component.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

impl<'a> AtomicFile<'a> {
    /// Replaces `path` through `path.tmp`, with the mode `File::create` gives
    /// (0666 less the umask), without `fsync`.
    pub fn new(path: &'a Path) -> Self {
        Self {
            path,
            temp: with_suffix(path, ".tmp"),
            mode: None,
            durable: false,
            until_reboot: false,
            keep_existing: false,
        }
    }

    /// Uses `temp` (in the target's directory) as the temporary file.
    pub fn temp(mut self, temp: PathBuf) -> Self {
        self.temp = temp;
        self
    }

    /// Creates the file with `mode` and sets it with `fchmod` (neither the umask
    /// nor an older file changes it).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode);
        self
    }

    /// `fsync`s the file before the rename and its directory after it.
    pub fn durable(mut self) -> Self {
        self.durable = true;
        self
    }

    /// For content that means nothing once the machine restarts (it names the boot
    /// it belongs to): no writeback is started before the rename. A file created,
    /// renamed and removed within one boot then never gets blocks on a file system
    /// with delayed allocation (ext4), which makes both its creation and its
    /// removal several times cheaper (no I/O, no blocks freed and discarded); after
    /// a machine crash its name may hold an empty file, which the reader takes for
    /// one of an earlier boot.
    pub fn until_reboot(mut self) -> Self {
        self.until_reboot = true;
        self
    }

    /// Leaves an existing target as it is (`renameat2(RENAME_NOREPLACE)`): the
    /// first writer wins.
    pub fn keep_existing(mut self) -> Self {
        self.keep_existing = true;
        self
    }

    /// Writes `data`. On failure the temporary file is removed (its blocks go back
    /// to a full file system) and the target is untouched.
    pub fn write(&self, data: &[u8]) -> Result<Written, AtomicError> {
        let res = self.write_temp(data).and_then(|()| self.rename());
        if !matches!(res, Ok(Written::Replaced)) {
            let _ = std::fs::remove_file(&self.temp);
        }
        res
    }

    fn write_temp(&self, data: &[u8]) -> Result<(), AtomicError> {
        let err = |op| {
            move |source| AtomicError {
                op,
                path: self.temp.clone(),
                source,
            }
        };
        let mut f = create_temp(&self.temp, self.mode).map_err(err("creating"))?;
        f.write_all(data).map_err(err("writing"))?;
        if self.durable {
            f.sync_all().map_err(err("syncing"))?;
        } else if !self.until_reboot {
            start_writeback(&f).map_err(err("starting the writeback of"))?;
        }
        Ok(())
    }

    fn rename(&self) -> Result<Written, AtomicError> {
        let err = |op, source| AtomicError {
            op,
            path: self.path.to_owned(),
            source,
        };
        let flags = if self.keep_existing {
            RenameFlags::RENAME_NOREPLACE
        } else {
            RenameFlags::empty()
        };
        match renameat2(None, &self.temp, None, self.path, flags) {
            Ok(()) => {}
            Err(nix::errno::Errno::EEXIST) if self.keep_existing => {
                return Ok(Written::KeptExisting)
            }
            // A file system without renameat2 flags: plain rename(2) where allowed.
            Err(nix::errno::Errno::EINVAL) if !self.keep_existing => {
                std::fs::rename(&self.temp, self.path).map_err(|e| err("renaming onto", e))?;
            }
            Err(e) => return Err(err("renaming onto", e.into())),
        }
        if self.durable {
            let dir = match self.path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| err("syncing the directory of", e))?;
        }
        Ok(Written::Replaced)
    }
}

/// Replaces `path` with `data` (defaults of [`AtomicFile::new`]).
pub fn write(path: &Path, data: &[u8]) -> Result<Written, AtomicError> {
    AtomicFile::new(path).write(data)
}

/// Starts writing `f`'s dirty pages back without waiting for them (what ext4's
/// `auto_da_alloc` does for a file truncated or renamed over another, but not for a
/// file created anew): their blocks are allocated now, so the journal transaction
/// of the rename that follows orders the data before itself.
fn start_writeback(f: &File) -> io::Result<()> {
    // SAFETY: sync_file_range(2) on a descriptor `f` owns; no memory is passed.
    let rc = unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // A file system without it (some FUSE ones): the rename is still atomic.
        Some(libc::ENOSYS | libc::EINVAL | libc::ESPIPE) => Ok(()),
        _ => Err(e),
    }
}

/// Creates `path` anew (`O_EXCL`: a name already there, link or FIFO, is never
/// opened), with `mode` set by `fchmod` when given. A regular file of this
/// process's user left there (a write cut short by a crash) is removed first; any
/// other object is refused. An exclusively created file is known to be empty,
/// regular and ours, so no `fstat`, `fcntl` or truncation follows (each a syscall,
/// the truncation a journal transaction on ext4).
fn create_temp(path: &Path, mode: Option<u32>) -> io::Result<File> {
    let create = || {
        OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(mode.unwrap_or(0o666))
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
    };
    let f = match create() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let m = std::fs::symlink_metadata(path)?;
            if !m.is_file() || m.uid() != nix::unistd::geteuid().as_raw() {
                return Err(io::Error::other(format!(
                    "{} is there already and is not a leftover of this process's user",
                    path.display()
                )));
            }
            std::fs::remove_file(path)?;
            create()?
        }
        other => other?,
    };
    if let Some(mode) = mode {
        fchmod(f.as_raw_fd(), Mode::from_bits_truncate(mode)).map_err(io::Error::from)?;
    }
    Ok(f)
}

/// Opens (creating it with `mode`, or 0666 less the umask, if missing; never
/// emptying it) a regular file of this process's user for writing; see
/// [`claim_regular`].
pub fn open_regular(path: &Path, mode: Option<u32>) -> io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .mode(mode.unwrap_or(0o666))
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    claim_regular(f, path, mode)
}

/// Accepts an opened file only if it is a regular file of this process's user
/// (a link was refused at the open by `O_NOFOLLOW`; a FIFO, device or socket, or a
/// file someone else made and may hold open already, is refused here), sets its
/// mode when given, and clears `O_NONBLOCK` (it was only for the open, so that a
/// FIFO could not block it).
pub fn claim_regular(f: File, path: &Path, mode: Option<u32>) -> io::Result<File> {
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let me = nix::unistd::geteuid().as_raw();
    if m.uid() != me {
        return Err(io::Error::other(format!(
            "{} belongs to uid {}, not to this process",
            path.display(),
            m.uid()
        )));
    }
    if let Some(mode) = mode {
        fchmod(f.as_raw_fd(), Mode::from_bits_truncate(mode)).map_err(io::Error::from)?;
    }
    let flags = OFlag::from_bits_truncate(fcntl(f.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(f.as_raw_fd(), FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_whole_files_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.json");
        assert_eq!(write(&p, b"first, and longer").unwrap(), Written::Replaced);
        AtomicFile::new(&p).durable().write(b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        assert!(!d.path().join("f.json.tmp").exists());
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_leftover_temporary_is_replaced_not_appended_to() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(d.path().join("f.tmp"), b"a longer leftover of a crash").unwrap();
        AtomicFile::new(&p).mode(0o600).write(b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!d.path().join("f.tmp").exists());
    }

    #[test]
    fn keep_existing_leaves_the_first_writers_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("once");
        let w = |data: &[u8]| AtomicFile::new(&p).keep_existing().write(data).unwrap();
        assert_eq!(w(b"1"), Written::Replaced);
        assert_eq!(w(b"2"), Written::KeptExisting);
        assert_eq!(std::fs::read(&p).unwrap(), b"1");
        assert!(!d.path().join("once.tmp").exists());
    }

    #[test]
    fn a_planted_link_or_fifo_at_the_temporary_name_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("elsewhere");
        std::fs::write(&target, "untouched").unwrap();
        let p = d.path().join("f");
        std::os::unix::fs::symlink(&target, d.path().join("f.tmp")).unwrap();
        let err = write(&p, b"x").unwrap_err();
        assert_eq!(err.op, "creating", "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"untouched");
        assert!(!p.exists());
        let fifo = d.path().join("g.tmp");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        assert!(write(&d.path().join("g"), b"x").is_err(), "not waited on");
    }

    #[test]
    fn mode_is_set_whatever_the_umask_and_a_custom_temporary_is_used() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("private");
        let temp = d.path().join(".private.tmp");
        std::fs::write(&temp, "left by a crash, longer than the data").unwrap();
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o644)).unwrap();
        AtomicFile::new(&p)
            .temp(temp.clone())
            .mode(0o600)
            .write(b"y")
            .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"y");
        let mode = std::fs::metadata(&p).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert!(!temp.exists());
    }

    #[test]
    fn errors_name_the_step_and_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("missing-dir/f");
        let err = write(&p, b"x").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("creating ") && msg.contains("missing-dir/f.tmp"),
            "{msg}"
        );
        assert_eq!(io::Error::from(err).kind(), io::ErrorKind::NotFound);
    }
}
