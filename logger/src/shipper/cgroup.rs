//! Moves the shipper into a cgroup of its own (not the agent's), so its CPU and
//! memory are visible and bounded. Works on cgroup v2 (one directory with
//! `memory.max` and `cpu.max`) and on v1 (a directory of the same name in the
//! `memory`, `cpu`, `cpuacct` and `pids` hierarchies, with
//! `memory.limit_in_bytes` and `cpu.cfs_quota_us`/`cpu.cfs_period_us`). The
//! root is passed in, so tests use a temporary directory.

use std::path::{Path, PathBuf};

/// Limits to apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of memory.
    pub memory_max: Option<u64>,
    /// `QUOTA PERIOD` in microseconds, as cgroup v2's `cpu.max` (`50000 100000` = half a core).
    pub cpu_max: Option<String>,
}

fn write(dir: &Path, name: &str, value: &str) -> Result<(), String> {
    std::fs::write(dir.join(name), value)
        .map_err(|e| format!("writing `{value}` to {}: {e}", dir.join(name).display()))
}

/// Creates cgroup `name` under `root`, applies `limits`, moves `pid` into it.
/// Returns the directories joined.
pub fn join(root: &Path, name: &str, pid: u32, limits: &Limits) -> Result<Vec<PathBuf>, String> {
    if name.is_empty()
        || name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        || name.starts_with('/')
    {
        return Err(format!(
            "cgroup name `{name}`: a relative path without `..`"
        ));
    }
    let mkdir =
        |d: &Path| std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()));
    if root.join("cgroup.controllers").exists() {
        let dir = root.join(name);
        mkdir(&dir)?;
        if let Some(m) = limits.memory_max {
            write(&dir, "memory.max", &m.to_string())?;
        }
        if let Some(c) = &limits.cpu_max {
            write(&dir, "cpu.max", c)?;
        }
        write(&dir, "cgroup.procs", &pid.to_string())?;
        return Ok(vec![dir]);
    }
    let mut joined = Vec::new();
    for ctl in ["memory", "cpu", "cpuacct", "pids"] {
        let hier = root.join(ctl);
        if !hier.join("cgroup.procs").exists() {
            continue;
        }
        let dir = hier.join(name);
        mkdir(&dir)?;
        match ctl {
            "memory" => {
                if let Some(m) = limits.memory_max {
                    write(&dir, "memory.limit_in_bytes", &m.to_string())?;
                }
            }
            "cpu" => {
                if let Some(c) = &limits.cpu_max {
                    let mut it = c.split_whitespace();
                    let (quota, period) =
                        (it.next().unwrap_or("max"), it.next().unwrap_or("100000"));
                    write(&dir, "cpu.cfs_period_us", period)?;
                    write(
                        &dir,
                        "cpu.cfs_quota_us",
                        if quota == "max" { "-1" } else { quota },
                    )?;
                }
            }
            _ => {}
        }
        write(&dir, "cgroup.procs", &pid.to_string())?;
        joined.push(dir);
    }
    if joined.is_empty() {
        return Err(format!(
            "{}: no cgroup v2 root and no v1 memory/cpu hierarchy",
            root.display()
        ));
    }
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_writes_limits_then_pid() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.controllers"), "cpu memory").unwrap();
        let l = Limits {
            memory_max: Some(64 << 20),
            cpu_max: Some("50000 100000".into()),
        };
        let dirs = join(d.path(), "rein-log-shipper", 42, &l).unwrap();
        let cg = &dirs[0];
        assert_eq!(
            std::fs::read_to_string(cg.join("memory.max")).unwrap(),
            "67108864"
        );
        assert_eq!(
            std::fs::read_to_string(cg.join("cpu.max")).unwrap(),
            "50000 100000"
        );
        assert_eq!(
            std::fs::read_to_string(cg.join("cgroup.procs")).unwrap(),
            "42"
        );
    }

    #[test]
    fn v1_uses_each_hierarchy() {
        let d = tempfile::tempdir().unwrap();
        for ctl in ["memory", "cpu", "pids"] {
            std::fs::create_dir_all(d.path().join(ctl)).unwrap();
            std::fs::write(d.path().join(ctl).join("cgroup.procs"), "").unwrap();
        }
        let l = Limits {
            memory_max: Some(1 << 20),
            cpu_max: Some("25000 100000".into()),
        };
        let dirs = join(d.path(), "rein", 7, &l).unwrap();
        assert_eq!(dirs.len(), 3);
        let r = |p: &str| std::fs::read_to_string(d.path().join(p)).unwrap();
        assert_eq!(r("memory/rein/memory.limit_in_bytes"), "1048576");
        assert_eq!(r("cpu/rein/cpu.cfs_quota_us"), "25000");
        assert_eq!(r("cpu/rein/cpu.cfs_period_us"), "100000");
        assert_eq!(r("pids/rein/cgroup.procs"), "7");
        assert!(join(d.path(), "../escape", 7, &l).is_err());
        assert!(join(d.path(), "/abs", 7, &l).is_err());
    }
}
