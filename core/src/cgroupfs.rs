//! The cgroupfs seam: every read and write of a cgroup file goes through here.
//!
//! Hierarchies are located from a mountinfo file given as a path, and every cgroup
//! is addressed from a hierarchy root given as a path, so the isolators' policy is
//! unit-tested on a temporary directory and the same code runs as root against
//! `/sys/fs/cgroup`. Errors carry the path and the data written.

use std::fs;
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

/// A cgroupfs error, with the path and (for writes) the data.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}{}: {source}{}", path.display(), data.as_ref().map(|d| format!(" (data {d:?})")).unwrap_or_default(), detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
pub struct CgroupError {
    /// What was being done.
    pub op: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// What was written, for writes.
    pub data: Option<String>,
    /// The kernel's answer.
    #[source]
    pub source: io::Error,
    /// What was found about the cause (e.g. the processes keeping a cgroup busy).
    pub detail: Option<String>,
}

impl CgroupError {
    fn new(op: &'static str, path: &Path, data: Option<&str>, source: io::Error) -> Self {
        Self {
            op,
            path: path.to_owned(),
            data: data.map(str::to_owned),
            source,
            detail: None,
        }
    }

    fn with_detail(mut self, detail: String) -> Self {
        self.detail = Some(detail);
        self
    }

    /// Whether the cgroup could not be removed because it is in use (a process is
    /// still in it, or in a child the kernel has not freed yet).
    pub fn is_busy(&self) -> bool {
        self.source.raw_os_error() == Some(libc::EBUSY)
    }
}

/// cgroup v1 (one hierarchy per controller) or v2 (unified).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Legacy per-controller hierarchies.
    V1,
    /// The unified hierarchy.
    V2,
}

/// One mounted hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    mount: PathBuf,
    version: Version,
    /// Control files a created cgroup gets (a fake hierarchy on a plain directory).
    layout: Layout,
}

/// The control files the kernel puts in a new cgroup directory. Empty on a real
/// cgroupfs (the kernel makes them); on a plain directory standing in for one
/// ([`Hierarchy::fake`]) `create()` lays them out, so a write to a file the kernel
/// would not offer fails there as it does on the kernel.
pub type Layout = &'static [&'static str];

pub mod fake;
mod mountinfo;
pub mod spares;

pub use mountinfo::{cgroup_mounts, CgroupMount};
pub use spares::{SpareCounts, Spares};

/// Whether the calling thread's mount table (its own mount namespace) shows a v1
/// hierarchy with `controller` mounted at `target`.
fn mounted_at(target: &Path, controller: &str) -> bool {
    let target = fs::canonicalize(target).unwrap_or_else(|_| target.to_owned());
    cgroup_mounts(Path::new("/proc/thread-self/mountinfo"))
        .map(|mounts| {
            mounts.iter().any(|m| {
                m.version == Version::V1
                    && m.mount_point == target
                    && m.controllers.iter().any(|c| c == controller)
            })
        })
        .unwrap_or(false)
}

/// An exclusive `flock` on a mount point's parent directory, held while looking up
/// and mounting. Best effort: without it (a read-only parent, no locking) the
/// `EBUSY` check of [`Hierarchy::mount_v1`] still makes concurrent mounts safe.
struct MountLock {
    _held: Option<nix::fcntl::Flock<fs::File>>,
}

impl MountLock {
    fn take(target: &Path) -> Self {
        let dir = target.parent().unwrap_or(target);
        let lock = fs::File::open(dir)
            .ok()
            .and_then(|f| nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).ok());
        Self { _held: lock }
    }
}

impl Hierarchy {
    /// A hierarchy at a known mount point.
    pub fn new(mount: impl Into<PathBuf>, version: Version) -> Self {
        Self {
            mount: mount.into(),
            version,
            layout: &[],
        }
    }

    /// A plain directory standing in for a hierarchy (tests): the directory is
    /// created with the root's `layout` files, and every cgroup created below it
    /// gets them as the kernel would give its control files.
    pub fn fake(
        mount: impl Into<PathBuf>,
        version: Version,
        layout: Layout,
    ) -> Result<Self, CgroupError> {
        let h = Self {
            mount: mount.into(),
            version,
            layout,
        };
        h.root().create()?;
        Ok(h)
    }

    /// Finds the v1 hierarchy a controller is bound to.
    pub fn find_v1(mountinfo: &Path, controller: &str) -> Result<Option<Self>, CgroupError> {
        Ok(cgroup_mounts(mountinfo)?
            .into_iter()
            .find(|m| m.version == Version::V1 && m.controllers.iter().any(|c| c == controller))
            .map(|m| Self::new(m.mount_point, Version::V1)))
    }

    /// Finds the unified (v2) hierarchy.
    pub fn find_v2(mountinfo: &Path) -> Result<Option<Self>, CgroupError> {
        Ok(cgroup_mounts(mountinfo)?
            .into_iter()
            .find(|m| m.version == Version::V2)
            .map(|m| Self::new(m.mount_point, Version::V2)))
    }

    /// Finds the v1 hierarchy of `controller`, mounting it at `target` when none is
    /// mounted. Safe when several processes start at once (two agents, two harness
    /// runs): the look-up and the mount are serialised by a lock on the target's
    /// parent directory, and a mount that loses a race anyway (the kernel refuses the
    /// same hierarchy twice on one mount point with `EBUSY`) is accepted once the
    /// mount table shows the controller mounted.
    pub fn find_or_mount_v1(
        mountinfo: &Path,
        controller: &str,
        target: &Path,
    ) -> Result<Self, CgroupError> {
        if let Some(h) = Self::find_v1(mountinfo, controller)? {
            return Ok(h);
        }
        fs::create_dir_all(target).map_err(|e| CgroupError::new("creating", target, None, e))?;
        let _lock = MountLock::take(target);
        if let Some(h) = Self::find_v1(mountinfo, controller)? {
            return Ok(h);
        }
        match Self::mount_v1(controller, target) {
            Ok(h) => Ok(h),
            Err(e) if e.is_busy() => match Self::find_v1(mountinfo, controller)? {
                Some(h) => {
                    tracing::info!(controller, mount = %h.mount_point().display(),
                                   "the hierarchy was mounted by another process at the same time; using it");
                    Ok(h)
                }
                None => Err(e.with_detail(format!(
                    "the {controller} controller is bound to another hierarchy that is not \
                     mounted here; mount that hierarchy with the same controllers"
                ))),
            },
            Err(e) => Err(e),
        }
    }

    /// Mounts a v1 hierarchy for `controller` at `target` (creating the directory).
    /// Idempotent: if the same hierarchy is already mounted at `target` (another
    /// process mounted it a moment ago, and the kernel answers `EBUSY`), that mount
    /// is the result.
    pub fn mount_v1(controller: &str, target: &Path) -> Result<Self, CgroupError> {
        fs::create_dir_all(target).map_err(|e| CgroupError::new("creating", target, None, e))?;
        let mounted = nix::mount::mount(
            Some("cgroup"),
            target,
            Some("cgroup"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            Some(controller),
        );
        match mounted {
            Ok(()) => Ok(Self::new(target, Version::V1)),
            Err(nix::errno::Errno::EBUSY) if mounted_at(target, controller) => {
                Ok(Self::new(target, Version::V1))
            }
            Err(e) => Err(CgroupError::new(
                "mounting cgroup at",
                target,
                Some(controller),
                io::Error::from(e),
            )),
        }
    }

    /// The mount point.
    pub fn mount_point(&self) -> &Path {
        &self.mount
    }

    /// v1 or v2.
    pub fn version(&self) -> Version {
        self.version
    }

    /// A cgroup below the hierarchy root (it may not exist yet).
    pub fn cgroup(&self, relative: impl AsRef<Path>) -> Cgroup {
        Cgroup {
            path: self.mount.join(relative),
            layout: self.layout,
        }
    }

    /// The hierarchy's root cgroup.
    pub fn root(&self) -> Cgroup {
        Cgroup {
            path: self.mount.clone(),
            layout: self.layout,
        }
    }
}

/// One cgroup directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    path: PathBuf,
    layout: Layout,
}

impl Cgroup {
    /// A cgroup at an absolute path.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            layout: &[],
        }
    }

    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A child cgroup.
    pub fn child(&self, name: impl AsRef<Path>) -> Cgroup {
        Cgroup {
            path: self.path.join(name),
            layout: self.layout,
        }
    }

    /// Whether the directory exists.
    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    /// Creates the cgroup and any missing parents (on a fake hierarchy, with the
    /// control files of its layout).
    pub fn create(&self) -> Result<(), CgroupError> {
        // The directories this call makes (the kernel fills each one); the cgroup
        // itself in any case, so a fake one made by hand gets its files too.
        let mut made: Vec<&Path> = vec![&self.path];
        if !self.layout.is_empty() {
            made.extend(self.path.ancestors().skip(1).take_while(|p| !p.exists()));
        }
        fs::create_dir_all(&self.path)
            .map_err(|e| CgroupError::new("creating", &self.path, None, e))?;
        for (dir, file) in made
            .iter()
            .flat_map(|d| self.layout.iter().map(move |f| (d, f)))
        {
            let path = dir.join(file);
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| CgroupError::new("laying out", &path, None, e))?;
        }
        Ok(())
    }

    /// Writes a control file. The file is never created: a name the kernel does
    /// not offer (a misspelt file, a controller not enabled) is an error, as with
    /// `O_WRONLY|O_TRUNC` in other runtimes.
    pub fn write(&self, file: &str, data: &str) -> Result<(), CgroupError> {
        let path = self.path.join(file);
        let err = |e: io::Error| {
            let missing = e.kind() == ErrorKind::NotFound && self.path.is_dir();
            let e = CgroupError::new("writing", &path, Some(data), e);
            if missing {
                e.with_detail("no such control file in the cgroup".into())
            } else {
                e
            }
        };
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(err)?;
        // cgroupfs takes one value per write(2); write_all issues exactly one for short data.
        f.write_all(data.as_bytes()).map_err(err)
    }

    /// Reads a control file.
    pub fn read(&self, file: &str) -> Result<String, CgroupError> {
        let path = self.path.join(file);
        fs::read_to_string(&path).map_err(|e| CgroupError::new("reading", &path, None, e))
    }

    /// Whether a control file exists (the kernel offers it).
    pub fn has(&self, file: &str) -> bool {
        self.path.join(file).exists()
    }

    /// Moves a process into the cgroup.
    pub fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// The processes in the cgroup (not its children).
    pub fn procs(&self) -> Result<Vec<i32>, CgroupError> {
        Ok(self
            .read("cgroup.procs")?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// Removes the cgroup and its child cgroups, deepest first. A missing cgroup is
    /// fine (cleanup is idempotent); a busy one is retried briefly, since the kernel
    /// frees a cgroup a moment after its last process exits.
    pub fn remove(&self) -> Result<(), CgroupError> {
        self.remove_with(8)
    }

    /// Removes like [`Cgroup::remove`] but without waiting: a busy cgroup fails at
    /// once (recovery and retries of earlier failures, which must not stall).
    pub fn remove_now(&self) -> Result<(), CgroupError> {
        self.remove_with(0)
    }

    /// [`Cgroup::remove`] when `patient` (a cleanup right after the last
    /// process exited), else [`Cgroup::remove_now`] (recovery and retries).
    pub fn remove_if(&self, patient: bool) -> Result<(), CgroupError> {
        if patient {
            self.remove()
        } else {
            self.remove_now()
        }
    }

    fn remove_with(&self, busy_retries: u32) -> Result<(), CgroupError> {
        match fs::read_dir(&self.path) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        Cgroup::at(entry.path()).remove_with(busy_retries)?;
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(CgroupError::new("listing", &self.path, None, e)),
        }
        let mut delay = Duration::from_millis(1);
        for _ in 0..busy_retries {
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    thread::sleep(delay);
                    delay *= 2;
                }
                Err(e) => return self.removal_failed(e),
            }
        }
        match fs::remove_dir(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => self.removal_failed(e),
        }
    }

    fn removal_failed(&self, e: io::Error) -> Result<(), CgroupError> {
        match e.raw_os_error() {
            // A plain directory (tests on a tempdir) still holds its control files.
            Some(libc::ENOTEMPTY) => fs::remove_dir_all(&self.path)
                .map_err(|e| CgroupError::new("removing", &self.path, None, e)),
            Some(libc::EBUSY) => {
                let detail = match self.procs() {
                    Ok(pids) if !pids.is_empty() => format!(
                        "processes still in it: {}",
                        pids.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    _ => "no process listed in it; the kernel has not released it yet".into(),
                };
                Err(CgroupError::new("removing", &self.path, None, e).with_detail(detail))
            }
            _ => Err(CgroupError::new("removing", &self.path, None, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 30 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
28 25 0:25 / /sys/fs/cgroup/net_cls,net_prio rw,relatime - cgroup cgroup rw,net_cls,net_prio
29 25 0:26 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
30 25 0:27 / /mnt/with\\040space rw - cgroup cgroup rw,cpu
";

    #[test]
    fn finds_hierarchies_in_mountinfo() {
        let dir = tempfile::tempdir().unwrap();
        let mi = dir.path().join("mountinfo");
        fs::write(&mi, MOUNTINFO).unwrap();
        let h = Hierarchy::find_v1(&mi, "net_cls").unwrap().unwrap();
        assert_eq!(
            h.mount_point(),
            Path::new("/sys/fs/cgroup/net_cls,net_prio")
        );
        assert_eq!(
            Hierarchy::find_v1(&mi, "blkio").unwrap().unwrap().version(),
            Version::V1
        );
        assert_eq!(
            Hierarchy::find_v2(&mi).unwrap().unwrap().mount_point(),
            Path::new("/sys/fs/cgroup/unified")
        );
        assert_eq!(
            Hierarchy::find_v1(&mi, "cpu")
                .unwrap()
                .unwrap()
                .mount_point(),
            Path::new("/mnt/with space")
        );
        assert!(Hierarchy::find_v1(&mi, "xattr").unwrap().is_none());
        assert!(Hierarchy::find_v1(&mi, "memory").unwrap().is_none());
    }

    #[test]
    fn write_errors_carry_path_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let h = Hierarchy::fake(dir.path(), Version::V1, fake::NET_CLS_V1).unwrap();
        let cg = h.cgroup("mesos/c1");
        let err = cg.write("net_cls.classid", "65537").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("mesos/c1/net_cls.classid") && msg.contains("65537"),
            "{msg}"
        );
        cg.create().unwrap();
        cg.write("net_cls.classid", "65537").unwrap();
        assert_eq!(cg.read("net_cls.classid").unwrap(), "65537");
        cg.child("mesos/nested").create().unwrap();
        cg.remove().unwrap();
        assert!(!cg.exists());
        cg.remove().unwrap();
    }

    #[test]
    fn a_misspelt_control_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let h = Hierarchy::fake(dir.path(), Version::V1, fake::NET_CLS_V1).unwrap();
        let cg = h.cgroup("c1");
        cg.create().unwrap();
        let err = cg.write("net_cls.clasid", "65537").unwrap_err();
        assert_eq!(err.source.kind(), ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("no such control file"), "{err}");
        assert!(!cg.has("net_cls.clasid"), "the write created nothing");
        // The real name is there, and a write replaces what it held.
        cg.write("net_cls.classid", "65537").unwrap();
        cg.write("net_cls.classid", "2").unwrap();
        assert_eq!(cg.read("net_cls.classid").unwrap(), "2");
        // The same on a hierarchy without a layout: nothing is made up.
        let plain = Hierarchy::new(dir.path().join("plain"), Version::V1).cgroup("c");
        plain.create().unwrap();
        assert!(plain.write("cgroup.procs", "1").is_err());
    }
}
