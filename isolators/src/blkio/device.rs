//! Naming block devices: a `/dev` path or "the device that holds the sandbox",
//! resolved to the whole-disk `major:minor` the kernel's throttling accepts.
//!
//! Throttling is set per request queue, so a partition is widened to its disk
//! (the kernel refuses partitions). A loop or device-mapper device is a disk of its
//! own: the container's I/O is submitted (and charged) there, so that is the device
//! that gets the limit, not the file or disks underneath it.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A block device number.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct DevNum {
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
}

impl DevNum {
    /// A device number from its parts.
    pub fn new(major: u64, minor: u64) -> Self {
        Self { major, minor }
    }

    fn from_raw(raw: u64) -> Self {
        Self::new(nix::sys::stat::major(raw), nix::sys::stat::minor(raw))
    }

    /// Parses `major:minor`.
    pub fn parse(s: &str) -> Option<Self> {
        let (a, b) = s.trim().split_once(':')?;
        Some(Self::new(a.parse().ok()?, b.parse().ok()?))
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// Why a device name could not be turned into a device number; the text is the
/// reason a task's setting is refused with.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The path could not be looked at.
    #[error("{}: {source}", path.display())]
    Stat {
        /// The path.
        path: PathBuf,
        /// The kernel's answer.
        source: io::Error,
    },
    /// The path is not a block device.
    #[error("{} is not a block device", path.display())]
    NotBlockDevice {
        /// The path.
        path: PathBuf,
    },
    /// A sysfs or mountinfo file could not be read or resolved.
    #[error("{op} {}: {source}", path.display())]
    Read {
        /// `reading` or `resolving`.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The kernel's answer.
        source: io::Error,
    },
    /// A partition whose disk sysfs does not show.
    #[error("{} has no parent disk", path.display())]
    NoParentDisk {
        /// The partition's sysfs directory.
        path: PathBuf,
    },
    /// A `dev` file of sysfs that does not hold `MAJOR:MINOR`.
    #[error("bad device number '{0}'")]
    BadNumber(String),
    /// The sandbox could not be looked at.
    #[error("sandbox {}: {source}", dir.display())]
    Sandbox {
        /// The sandbox.
        dir: PathBuf,
        /// The kernel's answer.
        source: io::Error,
    },
    /// The sandbox's mount source could not be resolved.
    #[error("sandbox {} is on {device}: {error}", dir.display())]
    SandboxDevice {
        /// The sandbox.
        dir: PathBuf,
        /// Its mount source.
        device: String,
        /// Why that did not resolve.
        error: Box<DeviceError>,
    },
    /// The sandbox's filesystem has no block device (tmpfs, overlay, ...).
    #[error("sandbox {} is on a filesystem without a block device ({what})", dir.display())]
    NoBlockDevice {
        /// The sandbox.
        dir: PathBuf,
        /// Its mount source, or its anonymous device number.
        what: String,
    },
}

/// Turns device names into device numbers. A seam: unit tests use a table.
pub trait DeviceResolver: Send {
    /// The whole disk a block device path stands for.
    fn resolve_path(&self, path: &Path) -> Result<DevNum, DeviceError>;
    /// The whole disk holding the filesystem of `dir`.
    fn resolve_sandbox(&self, dir: &Path) -> Result<DevNum, DeviceError>;
}

/// The resolver on the real system, reading the given mountinfo and sysfs.
#[derive(Debug, Clone)]
pub struct SystemResolver {
    mountinfo: PathBuf,
    sysfs: PathBuf,
}

impl SystemResolver {
    /// A resolver reading `mountinfo` (for filesystems without a device number of
    /// their own, e.g. btrfs subvolumes) and `sysfs` (for partition parents).
    pub fn new(mountinfo: impl Into<PathBuf>, sysfs: impl Into<PathBuf>) -> Self {
        Self {
            mountinfo: mountinfo.into(),
            sysfs: sysfs.into(),
        }
    }

    /// Widens a partition to its disk; anything else is returned as it is.
    pub fn whole_disk(&self, dev: DevNum) -> Result<DevNum, DeviceError> {
        let entry = self.sysfs.join(format!("dev/block/{dev}"));
        if !entry.join("partition").exists() {
            return Ok(dev);
        }
        // /sys/dev/block/8:1 -> .../block/sda/sda1; the parent directory is the disk.
        let real = fs::canonicalize(&entry).map_err(|source| DeviceError::Read {
            op: "resolving",
            path: entry.clone(),
            source,
        })?;
        let parent = real
            .parent()
            .ok_or_else(|| DeviceError::NoParentDisk { path: real.clone() })?;
        let dev_file = parent.join("dev");
        let text = fs::read_to_string(&dev_file).map_err(|source| DeviceError::Read {
            op: "reading",
            path: dev_file,
            source,
        })?;
        DevNum::parse(&text).ok_or_else(|| DeviceError::BadNumber(text.trim().to_owned()))
    }

    fn mount_source(&self, dev: DevNum) -> Result<Option<String>, DeviceError> {
        let text = fs::read_to_string(&self.mountinfo).map_err(|source| DeviceError::Read {
            op: "reading",
            path: self.mountinfo.clone(),
            source,
        })?;
        Ok(mount_source_of(&text, dev))
    }
}

/// The mount source (`/dev/sda2`) of the mount whose device is `dev`, from mountinfo.
fn mount_source_of(mountinfo: &str, dev: DevNum) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let number = DevNum::parse(left.split(' ').nth(2)?)?;
        (number == dev).then(|| right.split(' ').nth(1).map(str::to_owned))?
    })
}

impl DeviceResolver for SystemResolver {
    fn resolve_path(&self, path: &Path) -> Result<DevNum, DeviceError> {
        let meta = fs::metadata(path).map_err(|source| DeviceError::Stat {
            path: path.to_owned(),
            source,
        })?;
        if !meta.file_type().is_block_device() {
            return Err(DeviceError::NotBlockDevice {
                path: path.to_owned(),
            });
        }
        self.whole_disk(DevNum::from_raw(meta.rdev()))
    }

    fn resolve_sandbox(&self, dir: &Path) -> Result<DevNum, DeviceError> {
        let meta = fs::metadata(dir).map_err(|source| DeviceError::Sandbox {
            dir: dir.to_owned(),
            source,
        })?;
        let dev = DevNum::from_raw(meta.dev());
        if dev.major != 0 {
            return self.whole_disk(dev);
        }
        // Anonymous device numbers (btrfs, overlay, tmpfs): the mount source may name
        // the real device.
        match self.mount_source(dev)? {
            Some(source) if source.starts_with("/dev/") => self
                .resolve_path(Path::new(&source))
                .map_err(|e| DeviceError::SandboxDevice {
                    dir: dir.to_owned(),
                    device: source,
                    error: Box::new(e),
                }),
            source => Err(DeviceError::NoBlockDevice {
                dir: dir.to_owned(),
                what: source.unwrap_or_else(|| format!("device {dev}")),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        assert_eq!(DevNum::parse("8:16\n"), Some(DevNum::new(8, 16)));
        assert_eq!(DevNum::new(253, 0).to_string(), "253:0");
        assert_eq!(DevNum::parse("8"), None);
    }

    #[test]
    fn partition_widens_to_its_disk() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path();
        let disk = sys.join("devices/virtual/block/sda");
        fs::create_dir_all(disk.join("sda1")).unwrap();
        fs::write(disk.join("dev"), "8:0\n").unwrap();
        fs::write(disk.join("sda1/dev"), "8:1\n").unwrap();
        fs::write(disk.join("sda1/partition"), "1\n").unwrap();
        fs::create_dir_all(sys.join("dev/block")).unwrap();
        std::os::unix::fs::symlink(disk.join("sda1"), sys.join("dev/block/8:1")).unwrap();
        std::os::unix::fs::symlink(&disk, sys.join("dev/block/8:0")).unwrap();
        let r = SystemResolver::new("/nonexistent", sys);
        assert_eq!(r.whole_disk(DevNum::new(8, 1)).unwrap(), DevNum::new(8, 0));
        assert_eq!(r.whole_disk(DevNum::new(8, 0)).unwrap(), DevNum::new(8, 0));
        assert_eq!(r.whole_disk(DevNum::new(7, 3)).unwrap(), DevNum::new(7, 3));
    }

    #[test]
    fn anonymous_devices_use_the_mount_source() {
        let mi = "\
36 25 0:45 / /var/lib/mesos rw,relatime shared:1 - btrfs /dev/sdb rw,subvol=/x
37 25 0:46 / /tmp rw - tmpfs tmpfs rw
";
        assert_eq!(
            mount_source_of(mi, DevNum::new(0, 45)).as_deref(),
            Some("/dev/sdb")
        );
        assert_eq!(
            mount_source_of(mi, DevNum::new(0, 46)).as_deref(),
            Some("tmpfs")
        );
        assert_eq!(mount_source_of(mi, DevNum::new(0, 47)), None);
    }

    #[test]
    fn refuses_what_is_not_a_block_device() {
        let r = SystemResolver::new("/proc/self/mountinfo", "/sys");
        let err = r.resolve_path(Path::new("/dev/null")).unwrap_err();
        assert!(matches!(err, DeviceError::NotBlockDevice { .. }), "{err}");
        assert_eq!(err.to_string(), "/dev/null is not a block device");
        let err = r.resolve_path(Path::new("/dev/no-such-disk")).unwrap_err();
        assert!(err.to_string().contains("No such file"), "{err}");
        let err = r
            .resolve_sandbox(Path::new("/no/such/sandbox"))
            .unwrap_err();
        assert!(
            err.to_string().starts_with("sandbox /no/such/sandbox: "),
            "{err}"
        );
    }
}
