//! The kernel seam of the disk isolator: filesystem detection (statfs), project ids
//! (`FS_IOC_FSGETXATTR`/`FS_IOC_FSSETXATTR`) and project quotas (`quotactl_fd`).
//!
//! The policy in `mod.rs` only talks to [`DiskKernel`], so it is unit-tested with a
//! recording fake; [`LinuxKernel`] is the real thing. XFS and ext4 both implement the
//! generic quota interface (`Q_GETQUOTA`/`Q_SETQUOTA`, limits in 1 KiB blocks, usage
//! in bytes), so one implementation serves both.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::tree::{self, TreeReport};

/// `statfs.f_type` of XFS.
pub const XFS_SUPER_MAGIC: i64 = 0x5846_5342;
/// `statfs.f_type` of ext2/3/4.
pub const EXT4_SUPER_MAGIC: i64 = 0xEF53;

/// The filesystem families the isolator distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FsKind {
    /// XFS: project quotas stop root too; over the limit, writes fail with ENOSPC.
    Xfs,
    /// ext4: writes fail with EDQUOT, but CAP_SYS_RESOURCE bypasses the quota.
    Ext4,
    /// Anything else (tmpfs, btrfs, overlay, ...), by its magic number.
    Other(i64),
}

impl FsKind {
    /// Classifies a `statfs.f_type`.
    pub fn from_magic(magic: i64) -> Self {
        match magic {
            XFS_SUPER_MAGIC => FsKind::Xfs,
            EXT4_SUPER_MAGIC => FsKind::Ext4,
            other => FsKind::Other(other),
        }
    }
}

/// Project quota state of a filesystem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaState {
    /// Project usage is accounted.
    pub accounting: bool,
    /// Project limits are enforced.
    pub enforcing: bool,
}

/// What the isolator needs to know about the filesystem holding a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsInfo {
    /// Its family.
    pub kind: FsKind,
    /// Its device (`st_dev`), to tell filesystems apart.
    pub dev: u64,
    /// Its project quota state (all false where there are no project quotas).
    pub quota: QuotaState,
}

/// Limits of one project, in bytes; 0 means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Soft limit (the kill threshold in kill mode).
    pub soft: u64,
    /// Hard limit (writes fail above it).
    pub hard: u64,
}

/// One project's quota record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProjectQuota {
    /// Bytes in use.
    pub used: u64,
    /// Inodes in use.
    pub inodes: u64,
    /// Its limits.
    pub limits: Limits,
}

/// The kernel operations of the disk isolator.
pub trait DiskKernel: Send + Sync {
    /// The filesystem holding `path`.
    fn filesystem(&self, path: &Path) -> io::Result<FsInfo>;

    /// The project id of the directory `path` (0 when none was set). The sandbox
    /// belongs to the task, which may have changed it: only ever compared with the
    /// persisted record, never trusted over it.
    fn project_id(&self, path: &Path) -> io::Result<u32>;

    /// Sets `id` on the directory `path` and on every directory and regular file
    /// below it on the same filesystem, with PROJINHERIT on directories so new files
    /// inherit it (id 0 clears both), visiting at most `max_entries` entries; see
    /// [`tree`](super::tree) for how it withstands what the task planted.
    fn set_project_tree(&self, path: &Path, id: u32, max_entries: u64) -> io::Result<TreeReport>;

    /// Sets the limits of project `id` on the filesystem holding `path`.
    fn set_limits(&self, path: &Path, id: u32, limits: Limits) -> io::Result<()>;

    /// Reads the quota record of project `id` on the filesystem holding `path`.
    fn quota(&self, path: &Path, id: u32) -> io::Result<ProjectQuota>;
}

// <linux/quota.h> and <linux/dqblk_xfs.h>.
const PRJQUOTA: u32 = 2;
const Q_GETQUOTA: u32 = 0x80_0007;
const Q_SETQUOTA: u32 = 0x80_0008;
const Q_XGETQSTATV: u32 = (b'X' as u32) << 8 | 8;
const QIF_BLIMITS: u32 = 1;
const QIF_SPACE: u32 = 2;
const QIF_INODES: u32 = 8;
const FS_QUOTA_PDQ_ACCT: u16 = 1 << 4;
const FS_QUOTA_PDQ_ENFD: u16 = 1 << 5;
const FS_QSTATV_VERSION1: i8 = 1;
/// Quota block limits are in units of 1 KiB (QIF_DQBLKSIZE).
const QUOTA_BLOCK: u64 = 1024;

const fn qcmd(cmd: u32, kind: u32) -> u32 {
    (cmd << 8) | (kind & 0xff)
}

// struct fs_qfilestatv.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct QFileStatV {
    ino: u64,
    nblks: u64,
    nextents: u32,
    pad: u32,
}

// struct fs_quota_statv.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct QuotaStatV {
    version: i8,
    pad1: u8,
    flags: u16,
    incoredqs: u32,
    uquota: QFileStatV,
    gquota: QFileStatV,
    pquota: QFileStatV,
    btimelimit: i32,
    itimelimit: i32,
    rtbtimelimit: i32,
    bwarnlimit: u16,
    iwarnlimit: u16,
    rtbwarnlimit: u16,
    pad3: u16,
    pad4: u32,
    pad2: [u64; 7],
}

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxKernel;

fn open(path: &Path, flags: OFlag) -> io::Result<OwnedFd> {
    let raw = nix::fcntl::open(path, flags | OFlag::O_CLOEXEC, Mode::empty())?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn quotactl_fd(fd: &OwnedFd, cmd: u32, id: u32, addr: *mut libc::c_void) -> io::Result<()> {
    // SAFETY: `fd` is a live descriptor; `addr` points to the structure `cmd` expects,
    // which the caller owns for the duration of the call.
    let rc = unsafe { libc::syscall(libc::SYS_quotactl_fd, fd.as_raw_fd(), cmd, id, addr) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl LinuxKernel {
    fn quota_state(fd: &OwnedFd) -> QuotaState {
        let mut stat = QuotaStatV {
            version: FS_QSTATV_VERSION1,
            ..QuotaStatV::default()
        };
        let cmd = qcmd(Q_XGETQSTATV, PRJQUOTA);
        match quotactl_fd(fd, cmd, 0, (&raw mut stat).cast()) {
            Ok(()) => QuotaState {
                accounting: stat.flags & FS_QUOTA_PDQ_ACCT != 0,
                enforcing: stat.flags & FS_QUOTA_PDQ_ENFD != 0,
            },
            // No quota support in the kernel or on this filesystem.
            Err(_) => QuotaState::default(),
        }
    }
}

impl DiskKernel for LinuxKernel {
    fn filesystem(&self, path: &Path) -> io::Result<FsInfo> {
        let fd = open(path, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        let fs = nix::sys::statfs::fstatfs(File::from(fd.try_clone()?))?;
        let stat = nix::sys::stat::fstat(fd.as_raw_fd())?;
        let kind = FsKind::from_magic(fs.filesystem_type().0);
        let quota = match kind {
            FsKind::Xfs | FsKind::Ext4 => Self::quota_state(&fd),
            FsKind::Other(_) => QuotaState::default(),
        };
        Ok(FsInfo {
            kind,
            dev: stat.st_dev,
            quota,
        })
    }

    fn project_id(&self, path: &Path) -> io::Result<u32> {
        let fd = open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
        )?;
        Ok(tree::get_xattr(&fd)?.projid)
    }

    fn set_project_tree(&self, path: &Path, id: u32, max_entries: u64) -> io::Result<TreeReport> {
        let fd = open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
        )?;
        tree::set_project_tree(fd, id, max_entries)
    }

    fn set_limits(&self, path: &Path, id: u32, limits: Limits) -> io::Result<()> {
        let fd = open(path, OFlag::O_PATH)?;
        let mut block = libc::dqblk {
            dqb_bhardlimit: limits.hard.div_ceil(QUOTA_BLOCK),
            dqb_bsoftlimit: limits.soft.div_ceil(QUOTA_BLOCK),
            dqb_curspace: 0,
            dqb_ihardlimit: 0,
            dqb_isoftlimit: 0,
            dqb_curinodes: 0,
            dqb_btime: 0,
            dqb_itime: 0,
            dqb_valid: QIF_BLIMITS,
        };
        quotactl_fd(&fd, qcmd(Q_SETQUOTA, PRJQUOTA), id, (&raw mut block).cast())
    }

    fn quota(&self, path: &Path, id: u32) -> io::Result<ProjectQuota> {
        let fd = open(path, OFlag::O_PATH)?;
        // SAFETY: `dqblk` is plain old data; all-zero is a valid value.
        let mut block: libc::dqblk = unsafe { std::mem::zeroed() };
        quotactl_fd(&fd, qcmd(Q_GETQUOTA, PRJQUOTA), id, (&raw mut block).cast())?;
        let valid = block.dqb_valid;
        Ok(ProjectQuota {
            used: if valid & QIF_SPACE != 0 {
                block.dqb_curspace
            } else {
                0
            },
            inodes: if valid & QIF_INODES != 0 {
                block.dqb_curinodes
            } else {
                0
            },
            limits: Limits {
                soft: block.dqb_bsoftlimit * QUOTA_BLOCK,
                hard: block.dqb_bhardlimit * QUOTA_BLOCK,
            },
        })
    }
}
