//! An XFS filesystem on a loop device for the project-id tests, and the task's
//! steps run as the unprivileged user who owns the sandbox.
//!
//! Project ids live in the inode whether or not the kernel accounts them, so these
//! tests run on the host (whose kernel has no XFS quota support) as well as in the
//! VM lane. They skip visibly where XFS cannot be made or mounted.

#![allow(dead_code)]

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The task's user and group (`nobody`).
pub const TASK_UID: u32 = 65534;

/// A mounted XFS image; unmounted on drop.
pub struct Xfs {
    /// Its mount point.
    pub mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Xfs {
    fn drop(&mut self) {
        for _ in 0..50 {
            if nix::mount::umount(&self.mnt).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
    }
}

impl Xfs {
    /// Makes and mounts it (with `prjquota` where the kernel accounts project
    /// quotas, without elsewhere); `None` after a visible skip.
    pub fn mount(test: &str) -> Option<Self> {
        if !rein_tests::require_root(test) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fs.img");
        File::create(&image).unwrap().set_len(512 << 20).unwrap();
        match Command::new("mkfs.xfs")
            .args(["-q", "-f"])
            .arg(&image)
            .output()
        {
            Ok(out) if out.status.success() => {}
            other => {
                rein_tests::skip(test, &format!("mkfs.xfs unavailable or failed: {other:?}"));
                return None;
            }
        }
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let mounted = ["loop,prjquota", "loop"].iter().any(|opts| {
            Command::new("mount")
                .args(["-o", opts])
                .arg(&image)
                .arg(&mnt)
                .output()
                .is_ok_and(|o| o.status.success())
        });
        if !mounted {
            rein_tests::skip(test, "this kernel cannot mount XFS");
            return None;
        }
        // The sandboxes' parent is the agent's (root's); the sandboxes the task's.
        Some(Self { mnt, _dir: dir })
    }

    /// A sandbox owned by the task's user.
    pub fn sandbox(&self, name: &str) -> PathBuf {
        let p = self.mnt.join("sandboxes").join(name);
        fs::create_dir_all(&p).unwrap();
        nix::unistd::chown(
            &p,
            Some(nix::unistd::Uid::from_raw(TASK_UID)),
            Some(nix::unistd::Gid::from_raw(TASK_UID)),
        )
        .unwrap();
        p
    }
}

// <linux/fs.h>: struct fsxattr and its ioctls, for checks independent of the
// code under test.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct FsXattr {
    pub xflags: u32,
    extsize: u32,
    nextents: u32,
    pub projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

/// PROJINHERIT in `xflags`.
pub const PROJINHERIT: u32 = 0x200;

nix::ioctl_read!(fs_get_xattr, b'X', 31, FsXattr);

/// The project id and flags of a file or directory (opened without following).
pub fn xattr_of(path: &Path) -> FsXattr {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut attr = FsXattr::default();
    // SAFETY: `attr` is a valid `struct fsxattr` for the kernel to fill.
    unsafe { fs_get_xattr(f.as_raw_fd(), &mut attr) }.expect("FS_IOC_FSGETXATTR");
    attr
}

/// The project id of `path`.
pub fn projid(path: &Path) -> u32 {
    xattr_of(path).projid
}

/// Runs a fixed shell script as the task's user (uid, gid and no supplementary
/// groups, no capabilities) in `dir`; returns its exit status and output.
pub fn as_task(dir: &Path, script: &str) -> (bool, String) {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "sh",
            "-c",
            script,
        ])
        .current_dir(dir)
        .output()
        .expect("running setpriv");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every directory and regular file below `root` (not following symlinks).
pub fn entries(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_owned()];
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(listing) = fs::read_dir(&dir) else {
            continue;
        };
        for e in listing.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
                out.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}
