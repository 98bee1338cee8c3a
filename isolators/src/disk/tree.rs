//! Setting a project id over a sandbox, safely against what the task put there.
//!
//! The sandbox belongs to the task's user, who may change the project id of its
//! own files (`FS_IOC_FSSETXATTR` by the owner is allowed in the initial user
//! namespace, on XFS and ext4 alike) and may plant anything: symlinks, FIFOs,
//! sockets, hard links, millions of entries, deep trees. The walk therefore:
//! - opens every entry relative to its parent's descriptor with `O_NOFOLLOW`, so
//!   no name is ever followed out of the sandbox;
//! - opens only directories and regular files (checked with `fstatat` before and
//!   `fstat` after opening, so an entry swapped in between is skipped), with
//!   `O_NONBLOCK` so nothing can make it wait (a FIFO, a lease);
//! - stays on the sandbox's filesystem;
//! - is bounded: at most `max_entries` entries and [`MAX_DEPTH`] levels (one
//!   descriptor per level); past a bound the report says it is incomplete.
//!
//! It sets the id (with PROJINHERIT on directories; id 0 clears both) only where it
//! differs, and reports how many entries it changed and the bytes they occupy.

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode};

/// Levels below the root the walk descends (each holds one descriptor).
pub const MAX_DEPTH: usize = 256;

/// What a walk over a tree did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeReport {
    /// Directories and regular files visited, the root included.
    pub entries: u64,
    /// Entries whose id (or PROJINHERIT) differed and were reset.
    pub changed: u64,
    /// Allocated bytes of the entries visited (each hard-linked inode once).
    pub bytes: u64,
    /// Entries that could not be opened or set (gone, leased, refused).
    pub skipped: u64,
    /// Symlinks, FIFOs, sockets and devices on the tree's filesystem: never opened,
    /// so their project id stays what they were created with (each charges one
    /// inode to it; an inline symlink or a special file, no block). Mesos itself
    /// leaves one in every task group's sandbox (`tasks/<task id>`).
    pub unopenable: u64,
    /// Whether the whole tree was reached (false: a bound was hit).
    pub complete: bool,
}

// <linux/fs.h>: struct fsxattr.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    pub(crate) projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

const FS_XFLAG_PROJINHERIT: u32 = 0x0000_0200;

nix::ioctl_read!(fs_get_xattr, b'X', 31, FsXattr);
nix::ioctl_write_ptr!(fs_set_xattr, b'X', 32, FsXattr);

/// The `fsxattr` of an open file.
pub(crate) fn get_xattr(fd: &OwnedFd) -> io::Result<FsXattr> {
    let mut attr = FsXattr::default();
    // SAFETY: `attr` is a valid `struct fsxattr` for the kernel to fill.
    unsafe { fs_get_xattr(fd.as_raw_fd(), &mut attr) }?;
    Ok(attr)
}

/// Sets `id` (and PROJINHERIT on a directory, cleared for id 0) where it differs;
/// returns whether it changed anything.
fn set_on_fd(fd: &OwnedFd, id: u32, is_dir: bool) -> io::Result<bool> {
    let mut attr = get_xattr(fd)?;
    let inherit = is_dir && id != 0;
    let has_inherit = attr.xflags & FS_XFLAG_PROJINHERIT != 0;
    if attr.projid == id && (!is_dir || inherit == has_inherit) {
        return Ok(false);
    }
    attr.projid = id;
    if inherit {
        attr.xflags |= FS_XFLAG_PROJINHERIT;
    } else {
        attr.xflags &= !FS_XFLAG_PROJINHERIT;
    }
    // SAFETY: `attr` is a valid `struct fsxattr` the kernel only reads.
    unsafe { fs_set_xattr(fd.as_raw_fd(), &attr) }?;
    Ok(true)
}

fn own(raw: i32) -> OwnedFd {
    // SAFETY: the caller passes a descriptor a system call just returned, which
    // nothing else owns.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

fn kind(st: &FileStat) -> libc::mode_t {
    st.st_mode & libc::S_IFMT
}

/// The names in a directory (without `.` and `..`), at most `limit`; the bool says
/// whether there were more.
fn list(dir: &OwnedFd, limit: u64) -> io::Result<(Vec<CString>, bool)> {
    let mut names = Vec::new();
    let mut listing = nix::dir::Dir::from_fd(nix::unistd::dup(dir.as_raw_fd())?)?;
    for entry in listing.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        if names.len() as u64 >= limit {
            return Ok((names, true));
        }
        names.push(name.to_owned());
    }
    Ok((names, false))
}

struct Walk {
    id: u32,
    dev: u64,
    max_entries: u64,
    report: TreeReport,
    linked: HashSet<u64>,
}

impl Walk {
    fn visit(&mut self, fd: &OwnedFd, st: &FileStat) {
        self.report.entries += 1;
        let is_dir = kind(st) == libc::S_IFDIR;
        match set_on_fd(fd, self.id, is_dir) {
            Ok(true) => self.report.changed += 1,
            Ok(false) => {}
            Err(_) => self.report.skipped += 1,
        }
        if st.st_nlink > 1 && !is_dir && !self.linked.insert(st.st_ino) {
            return;
        }
        let blocks = u64::try_from(st.st_blocks).unwrap_or_default();
        self.report.bytes = self.report.bytes.saturating_add(blocks * 512);
    }

    /// Opens `name` below `dir` if it is a directory or regular file on our device.
    fn open_child(&mut self, dir: &OwnedFd, name: &CString) -> Option<(OwnedFd, FileStat)> {
        let before = nix::sys::stat::fstatat(
            Some(dir.as_raw_fd()),
            name.as_c_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .ok()?;
        let k = kind(&before);
        if before.st_dev != self.dev {
            // Another mount: never opened.
            return None;
        }
        if k != libc::S_IFDIR && k != libc::S_IFREG {
            // Symlinks, FIFOs, sockets, devices: never opened.
            self.report.unopenable += 1;
            return None;
        }
        let mut flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC
            | OFlag::O_NOCTTY
            | OFlag::O_NOATIME;
        if k == libc::S_IFDIR {
            flags |= OFlag::O_DIRECTORY;
        }
        let Ok(raw) =
            nix::fcntl::openat(Some(dir.as_raw_fd()), name.as_c_str(), flags, Mode::empty())
        else {
            self.report.skipped += 1;
            return None;
        };
        let fd = own(raw);
        let after = nix::sys::stat::fstat(fd.as_raw_fd()).ok()?;
        if after.st_ino != before.st_ino || after.st_dev != self.dev || kind(&after) != k {
            // Swapped between the two looks: skip it this time.
            self.report.skipped += 1;
            return None;
        }
        Some((fd, after))
    }

    fn run(&mut self, root: OwnedFd) -> io::Result<()> {
        let st = nix::sys::stat::fstat(root.as_raw_fd())?;
        if kind(&st) != libc::S_IFDIR {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        // The root must take the id: without it nothing new would inherit it.
        self.report.entries += 1;
        if set_on_fd(&root, self.id, true)? {
            self.report.changed += 1;
        }
        self.report.bytes += u64::try_from(st.st_blocks).unwrap_or_default() * 512;
        let (names, more) = list(&root, self.max_entries)?;
        if more {
            self.report.complete = false;
        }
        let mut stack: Vec<(OwnedFd, Vec<CString>)> = vec![(root, names)];
        while let Some((dir, names)) = stack.last_mut() {
            let Some(name) = names.pop() else {
                stack.pop();
                continue;
            };
            if self.report.entries >= self.max_entries {
                self.report.complete = false;
                break;
            }
            let Some((fd, st)) = self.open_child(dir, &name) else {
                continue;
            };
            self.visit(&fd, &st);
            if kind(&st) != libc::S_IFDIR {
                continue;
            }
            if stack.len() > MAX_DEPTH {
                self.report.complete = false;
                continue;
            }
            let room = self.max_entries.saturating_sub(self.report.entries);
            match list(&fd, room) {
                Ok((names, more)) => {
                    if more {
                        self.report.complete = false;
                    }
                    stack.push((fd, names));
                }
                Err(_) => self.report.skipped += 1,
            }
        }
        Ok(())
    }
}

/// Sets project `id` over the tree below the open directory `root` (see the
/// module's documentation); errors only when the root itself cannot be set.
pub fn set_project_tree(root: OwnedFd, id: u32, max_entries: u64) -> io::Result<TreeReport> {
    let dev = nix::sys::stat::fstat(root.as_raw_fd())?.st_dev;
    let mut walk = Walk {
        id,
        dev,
        max_entries: max_entries.max(1),
        report: TreeReport {
            complete: true,
            ..TreeReport::default()
        },
        linked: HashSet::new(),
    };
    walk.run(root)?;
    Ok(walk.report)
}
