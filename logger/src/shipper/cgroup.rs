//! Moves the shipper into a cgroup v2 of its own (not the agent's), so its CPU
//! and memory are visible and bounded. The directory is passed in, so tests
//! use a temporary directory.

use std::path::Path;

/// Creates `dir`, writes the limits and moves process `pid` into it.
pub fn join(
    dir: &Path,
    pid: u32,
    memory_max: Option<u64>,
    cpu_max: Option<&str>,
) -> Result<(), String> {
    let w = |name: &str, value: &str| {
        std::fs::write(dir.join(name), value)
            .map_err(|e| format!("writing `{value}` to {}: {e}", dir.join(name).display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    if let Some(m) = memory_max {
        w("memory.max", &m.to_string())?;
    }
    if let Some(c) = cpu_max {
        w("cpu.max", c)?;
    }
    w("cgroup.procs", &pid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_limits_then_pid() {
        let d = tempfile::tempdir().unwrap();
        let cg = d.path().join("rein-log-shipper");
        join(&cg, 42, Some(64 << 20), Some("50000 100000")).unwrap();
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
        let err = join(&d.path().join("f/x"), 1, None, None);
        assert!(err.is_ok());
        std::fs::write(d.path().join("file"), "").unwrap();
        assert!(join(&d.path().join("file/sub"), 1, None, None)
            .unwrap_err()
            .contains("file/sub"));
    }
}
