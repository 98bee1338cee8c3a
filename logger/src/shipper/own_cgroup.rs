//! Moves the shipper into a cgroup of its own (not the agent's), so its CPU and
//! memory are visible and bounded. The hierarchies are those the mount table
//! lists at `cgroup_root` (v2: the unified tree mounted there, with
//! `memory.max` and `cpu.max`) or below it (v1: each hierarchy binding
//! `memory`, `cpu`, `cpuacct` or `pids`, with `memory.limit_in_bytes` and
//! `cpu.cfs_period_us`/`cpu.cfs_quota_us`). Every write goes through
//! [`rein_core::cgroupfs`]; what to write where is decided by [`plan`], a pure
//! function of the mount table.

use std::path::{Path, PathBuf};

use rein_core::cgroupfs::{cgroup_mounts, CgroupError, CgroupMount, Hierarchy, Version};

/// Limits to apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of memory.
    pub memory_max: Option<u64>,
    /// `QUOTA PERIOD` in microseconds, as cgroup v2's `cpu.max` (`50000 100000` = half a core).
    pub cpu_max: Option<String>,
}

/// Why the shipper could not move into its own cgroup.
#[derive(Debug, thiserror::Error)]
pub enum OwnCgroupError {
    /// The `cgroup` setting is not a plain relative path.
    #[error("cgroup name `{0}`: a relative path without `..`")]
    BadName(String),
    /// The mount table lists no usable hierarchy at `cgroup_root`.
    #[error("{}: no cgroup v2 mount there and no v1 memory/cpu/cpuacct/pids hierarchy below it", .0.display())]
    NoHierarchy(PathBuf),
    /// Reading the mount table, creating the cgroup or writing a control file.
    #[error(transparent)]
    Cgroupfs(#[from] CgroupError),
}

/// The v1 controllers whose hierarchies the shipper joins.
const V1_JOINED: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];

/// One cgroup to create and the control files to write in it, in order
/// (`cgroup.procs` last, after the limits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The hierarchy.
    pub hierarchy: Hierarchy,
    /// Control files and values, written in this order.
    pub writes: Vec<(&'static str, String)>,
}

/// What to create and write for cgroup `name` of process `pid` under
/// `root`, given the cgroup mounts of the mount table.
pub fn plan(
    mounts: &[CgroupMount],
    root: &Path,
    name: &str,
    pid: u32,
    limits: &Limits,
) -> Result<Vec<Step>, OwnCgroupError> {
    if name.is_empty()
        || name.starts_with('/')
        || name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(OwnCgroupError::BadName(name.to_string()));
    }
    let procs = ("cgroup.procs", pid.to_string());
    if mounts
        .iter()
        .any(|m| m.version == Version::V2 && m.mount_point == root)
    {
        let mut writes = Vec::new();
        if let Some(m) = limits.memory_max {
            writes.push(("memory.max", m.to_string()));
        }
        if let Some(c) = &limits.cpu_max {
            writes.push(("cpu.max", c.clone()));
        }
        writes.push(procs);
        return Ok(vec![Step {
            hierarchy: Hierarchy::new(root, Version::V2),
            writes,
        }]);
    }
    let mut steps: Vec<Step> = Vec::new();
    for m in mounts {
        let binds = |c: &str| m.controllers.iter().any(|b| b == c);
        if m.version != Version::V1
            || !m.mount_point.starts_with(root)
            || !V1_JOINED.iter().any(|c| binds(c))
            || steps
                .iter()
                .any(|s| s.hierarchy.mount_point() == m.mount_point)
        {
            continue;
        }
        let mut writes = Vec::new();
        if let (true, Some(mem)) = (binds("memory"), limits.memory_max) {
            writes.push(("memory.limit_in_bytes", mem.to_string()));
        }
        if let (true, Some(c)) = (binds("cpu"), &limits.cpu_max) {
            let mut it = c.split_whitespace();
            let (quota, period) = (it.next().unwrap_or("max"), it.next().unwrap_or("100000"));
            writes.push(("cpu.cfs_period_us", period.to_string()));
            let quota = if quota == "max" { "-1" } else { quota };
            writes.push(("cpu.cfs_quota_us", quota.to_string()));
        }
        writes.push(procs.clone());
        steps.push(Step {
            hierarchy: Hierarchy::new(&m.mount_point, Version::V1),
            writes,
        });
    }
    if steps.is_empty() {
        return Err(OwnCgroupError::NoHierarchy(root.to_path_buf()));
    }
    Ok(steps)
}

/// Creates cgroup `name` under `root` (as `/proc/self/mountinfo` lists the
/// hierarchies), applies `limits`, moves `pid` into it. Returns the
/// directories joined.
pub fn join(
    root: &Path,
    name: &str,
    pid: u32,
    limits: &Limits,
) -> Result<Vec<PathBuf>, OwnCgroupError> {
    join_with(Path::new("/proc/self/mountinfo"), root, name, pid, limits)
}

/// [`join`] with the mount table read from `mountinfo`.
pub fn join_with(
    mountinfo: &Path,
    root: &Path,
    name: &str,
    pid: u32,
    limits: &Limits,
) -> Result<Vec<PathBuf>, OwnCgroupError> {
    let steps = plan(&cgroup_mounts(mountinfo)?, root, name, pid, limits)?;
    let mut joined = Vec::with_capacity(steps.len());
    for step in steps {
        let cg = step.hierarchy.cgroup(name);
        cg.create()?;
        for (file, value) in &step.writes {
            cg.write(file, value)?;
        }
        joined.push(cg.path().to_path_buf());
    }
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(at: &str, version: Version, controllers: &[&str]) -> CgroupMount {
        CgroupMount {
            mount_point: at.into(),
            version,
            controllers: controllers.iter().map(|c| (*c).to_string()).collect(),
        }
    }

    fn writes(steps: &[Step]) -> Vec<(PathBuf, Vec<(&'static str, String)>)> {
        steps
            .iter()
            .map(|s| (s.hierarchy.mount_point().to_path_buf(), s.writes.clone()))
            .collect()
    }

    fn limits() -> Limits {
        Limits {
            memory_max: Some(64 << 20),
            cpu_max: Some("50000 100000".into()),
        }
    }

    #[test]
    fn v2_at_the_root_writes_limits_then_pid() {
        let mounts = [mount("/sys/fs/cgroup", Version::V2, &[])];
        let steps = plan(
            &mounts,
            Path::new("/sys/fs/cgroup"),
            "shipper",
            42,
            &limits(),
        )
        .unwrap();
        assert_eq!(
            writes(&steps),
            vec![(
                PathBuf::from("/sys/fs/cgroup"),
                vec![
                    ("memory.max", "67108864".to_string()),
                    ("cpu.max", "50000 100000".to_string()),
                    ("cgroup.procs", "42".to_string()),
                ]
            )]
        );
    }

    #[test]
    fn v1_joins_each_listed_hierarchy_once_with_its_own_limits() {
        // Hybrid layout: a v2 tree below the root does not make it v2; cpu and
        // cpuacct share one hierarchy; hierarchies outside the root are not joined.
        let mounts = [
            mount("/sys/fs/cgroup/unified", Version::V2, &[]),
            mount("/sys/fs/cgroup/systemd", Version::V1, &[]),
            mount("/sys/fs/cgroup/memory", Version::V1, &["memory"]),
            mount(
                "/sys/fs/cgroup/cpu,cpuacct",
                Version::V1,
                &["cpu", "cpuacct"],
            ),
            mount("/sys/fs/cgroup/pids", Version::V1, &["pids"]),
            mount("/sys/fs/cgroup/net_cls", Version::V1, &["net_cls"]),
            mount("/elsewhere/memory", Version::V1, &["memory"]),
        ];
        let l = Limits {
            memory_max: Some(1 << 20),
            cpu_max: Some("max".into()),
        };
        let steps = plan(&mounts, Path::new("/sys/fs/cgroup"), "rein", 7, &l).unwrap();
        let procs = ("cgroup.procs", "7".to_string());
        assert_eq!(
            writes(&steps),
            vec![
                (
                    PathBuf::from("/sys/fs/cgroup/memory"),
                    vec![("memory.limit_in_bytes", "1048576".into()), procs.clone()]
                ),
                (
                    PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"),
                    vec![
                        ("cpu.cfs_period_us", "100000".into()),
                        ("cpu.cfs_quota_us", "-1".into()),
                        procs.clone()
                    ]
                ),
                (PathBuf::from("/sys/fs/cgroup/pids"), vec![procs]),
            ]
        );
    }

    #[test]
    fn bad_names_and_missing_hierarchies_are_refused() {
        let mounts = [mount("/sys/fs/cgroup/memory", Version::V1, &["memory"])];
        let root = Path::new("/sys/fs/cgroup");
        for bad in ["../escape", "/abs", "", "a//b", "a/./b"] {
            let e = plan(&mounts, root, bad, 1, &limits()).unwrap_err();
            assert!(matches!(e, OwnCgroupError::BadName(_)), "{bad}: {e}");
        }
        let e = plan(&mounts, Path::new("/other"), "rein", 1, &limits()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/other: no cgroup v2 mount there and no v1 memory/cpu/cpuacct/pids hierarchy below it"
        );
    }

    #[test]
    fn join_writes_through_the_cgroupfs_seam() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("cg");
        let mi = d.path().join("mountinfo");
        std::fs::write(
            &mi,
            format!(
                "30 25 0:27 / {}/memory rw - cgroup cgroup rw,memory\n",
                root.display()
            ),
        )
        .unwrap();
        // The kernel offers the control files in a new cgroup: so does the test.
        let cg = root.join("memory/rein");
        std::fs::create_dir_all(&cg).unwrap();
        for f in ["memory.limit_in_bytes", "cgroup.procs"] {
            std::fs::write(cg.join(f), "").unwrap();
        }
        let dirs = join_with(&mi, &root, "rein", 9, &limits()).unwrap();
        assert_eq!(dirs, vec![cg.clone()]);
        let r = |f: &str| std::fs::read_to_string(cg.join(f)).unwrap();
        assert_eq!(r("memory.limit_in_bytes"), "67108864");
        assert_eq!(r("cgroup.procs"), "9");
    }
}
