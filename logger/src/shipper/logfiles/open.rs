//! Reaching a task's files without trusting a name in its sandbox: every
//! step is relative to a directory descriptor, no symlink is followed, no
//! other file system is entered, and nothing but a regular file of the
//! sandbox's owner is ever opened for reading. A name is first opened with
//! `O_PATH` (which opens nothing: a FIFO does not block, a device node's
//! driver is not called), checked with `fstat`, and only then reopened for
//! reading through `/proc/self/fd`, which reaches that very inode.

use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;

use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, SFlag};

use crate::sandbox::{self, plain_name};

/// Identity of a file (device, inode).
pub type Ident = (u64, u64);

/// What a task's file must be to be read.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// The sandbox's device: nothing on another file system is entered.
    pub dev: u64,
    /// The sandbox's owner: only its files are read (a hard link to
    /// someone else's file is not).
    pub owner: u32,
}

/// Why a matched name was not followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not a regular file (symlink, FIFO, socket, device) where a file was
    /// expected, or not a directory where one was.
    Type,
    /// Owned by another user than the sandbox's.
    Owner,
    /// On another file system (a mount point).
    Device,
}

impl Refused {
    /// Name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Refused::Type => "not a regular file or directory",
            Refused::Owner => "owned by another user",
            Refused::Device => "on another file system",
        }
    }
}

/// A task's name opened relative to `dir`: never through a symlink.
fn open_at(dir: BorrowedFd<'_>, name: &CStr, flags: OFlag) -> io::Result<OwnedFd> {
    sandbox::openat(dir.as_raw_fd(), name, flags | OFlag::O_NOFOLLOW, 0)
}

/// `fstatat` without following a symlink; `None` if nothing is there.
pub fn stat_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<FileStat>> {
    sandbox::stat_at(dir.as_raw_fd(), &plain_name(name)?)
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// Why `st` is not a file (or with `dir`, a directory) to enter.
pub fn refusal(st: &FileStat, rules: Rules, dir: bool) -> Option<Refused> {
    let want = if dir { SFlag::S_IFDIR } else { SFlag::S_IFREG };
    if kind(st) != want {
        return Some(Refused::Type);
    }
    if st.st_dev != rules.dev {
        return Some(Refused::Device);
    }
    if st.st_uid != rules.owner {
        return Some(Refused::Owner);
    }
    None
}

/// The result of opening a name.
#[derive(Debug)]
pub enum Opened<T> {
    /// Opened.
    Yes(T),
    /// Nothing there (or gone meanwhile).
    Missing,
    /// Something that is not followed.
    Refused(Refused),
}

/// Opens the subdirectory `name` of `dir`.
pub fn open_dir(dir: BorrowedFd<'_>, name: &[u8], rules: Rules) -> io::Result<Opened<OwnedFd>> {
    let c = plain_name(name)?;
    let fd = match open_at(
        dir,
        &c,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NONBLOCK,
    ) {
        Ok(fd) => fd,
        Err(e) => {
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(Opened::Missing),
                // A symlink (O_NOFOLLOW) or not a directory.
                Some(libc::ELOOP | libc::ENOTDIR) => Ok(Opened::Refused(Refused::Type)),
                _ => Err(e),
            };
        }
    };
    let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
    Ok(match refusal(&st, rules, true) {
        Some(r) => Opened::Refused(r),
        None => Opened::Yes(fd),
    })
}

/// An open task file and what `fstat` said of it when it was opened.
#[derive(Debug)]
pub struct TaskFile {
    /// Open for reading.
    pub file: File,
    /// Its identity.
    pub id: Ident,
    /// Its size then.
    pub size: u64,
}

/// Opens the regular file `name` of `dir` for reading (see the module's doc).
pub fn open_file(dir: BorrowedFd<'_>, name: &[u8], rules: Rules) -> io::Result<Opened<TaskFile>> {
    let c = plain_name(name)?;
    let path_fd = match open_at(dir, &c, OFlag::O_PATH) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Opened::Missing),
        // O_PATH|O_NOFOLLOW opens a symlink itself: refused by its type below.
        Err(e) => return Err(e),
    };
    let st = nix::sys::stat::fstat(path_fd.as_raw_fd())?;
    if let Some(r) = refusal(&st, rules, false) {
        return Ok(Opened::Refused(r));
    }
    let proc_path = format!("/proc/self/fd/{}", path_fd.as_raw_fd());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(OsStr::from_bytes(proc_path.as_bytes()))?;
    let st2 = nix::sys::stat::fstat(file.as_fd().as_raw_fd())?;
    if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino) {
        return Ok(Opened::Missing);
    }
    Ok(Opened::Yes(TaskFile {
        file,
        id: (st.st_dev, st.st_ino),
        size: u64::try_from(st2.st_size).unwrap_or(0),
    }))
}

/// The names in `dir` (without `.` and `..`), at most `max`; true as
/// second value when there were more.
pub fn list(dir: BorrowedFd<'_>, max: usize) -> io::Result<(Vec<Vec<u8>>, bool)> {
    // A descriptor of its own: reading a directory moves its offset.
    let fd = open_at(
        dir,
        c".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NONBLOCK,
    )?;
    // `Dir` owns the descriptor from here (closed when it is dropped).
    let mut d = nix::dir::Dir::from_fd(fd.into_raw_fd())?;
    let mut names = Vec::new();
    for e in d.iter() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        if names.len() == max {
            return Ok((names, true));
        }
        names.push(n.to_vec());
    }
    Ok((names, false))
}

/// Size and modification time of an open file now.
pub fn size_and_mtime(f: &File) -> io::Result<(u64, (i64, i64))> {
    let st = nix::sys::stat::fstat(f.as_fd().as_raw_fd())?;
    Ok((
        u64::try_from(st.st_size).unwrap_or(0),
        (st.st_mtime, st.st_mtime_nsec),
    ))
}
