//! The cgroup mounts of a mount table (`/proc/self/mountinfo`).

use std::fs;
use std::path::{Path, PathBuf};

use super::{CgroupError, Version};

/// One mount of a cgroup filesystem, as mountinfo lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// Mount point.
    pub mount_point: PathBuf,
    /// v1 or v2.
    pub version: Version,
    /// v1 controllers bound to it (from the super options).
    pub controllers: Vec<String>,
}

/// Reads the cgroup mounts out of a mountinfo file (`/proc/self/mountinfo`).
pub fn cgroup_mounts(mountinfo: &Path) -> Result<Vec<CgroupMount>, CgroupError> {
    let text = fs::read_to_string(mountinfo)
        .map_err(|e| CgroupError::new("reading", mountinfo, None, e))?;
    Ok(parse_mountinfo(&text))
}

/// The controllers a v1 hierarchy can bind (mount options that are not controllers
/// such as `xattr` or `name=systemd` are ignored).
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

pub(super) fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(mount_point), Some(fstype)) = (left.get(4), right.first()) else {
            continue;
        };
        let mount_point = PathBuf::from(unescape_octal(mount_point));
        match *fstype {
            "cgroup" => {
                let options = right.get(2).copied().unwrap_or_default();
                let controllers = options
                    .split(',')
                    .filter(|o| V1_CONTROLLERS.contains(o))
                    .map(str::to_owned)
                    .collect();
                out.push(CgroupMount {
                    mount_point,
                    version: Version::V1,
                    controllers,
                });
            }
            "cgroup2" => out.push(CgroupMount {
                mount_point,
                version: Version::V2,
                controllers: Vec::new(),
            }),
            _ => {}
        }
    }
    out
}

fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
