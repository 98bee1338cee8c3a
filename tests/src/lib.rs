//! Helpers shared by the kernel-level tests.
//!
//! Root-only tests call [`require_root`] first: without root they print a visible
//! `SKIPPED` line (to stderr and to `target/rein-skipped.txt`, which the test
//! script summarises) and return, so a run never counts them as silently passed.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

/// Whether the process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Records a skipped test with its reason.
pub fn skip(test: &str, reason: &str) {
    // One line per skip: the test script counts lines.
    let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    eprintln!("SKIPPED {test}: {reason}");
    let path = skip_log();
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
        // One write of the whole line: tests skipping at once must not interleave
        // (writeln! on a File writes piece by piece).
        let _ = f.write_all(format!("{test}: {reason}\n").as_bytes());
    }
}

/// Where skipped tests are listed (`$REIN_SKIP_LOG`, or `target/rein-skipped.txt`).
pub fn skip_log() -> PathBuf {
    std::env::var_os("REIN_SKIP_LOG")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/rein-skipped.txt")
        })
}

/// Returns false (after recording the skip) when not root; use as
/// `if !rein_tests::require_root("name") { return; }`.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        true
    } else {
        skip(test, "needs root");
        false
    }
}

/// The files under `dir` whose name `keep` accepts, skipping hidden and `target`
/// directories (for the tests that check every source or manifest).
pub fn files_under(dir: &std::path::Path, keep: &dyn Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let entry = entry.unwrap();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if entry.file_type().unwrap().is_dir() {
                if !name.starts_with('.') && name != "target" {
                    dirs.push(entry.path());
                }
            } else if keep(&name) {
                found.push(entry.path());
            }
        }
    }
    found
}

/// A real `sleep` process, killed and reaped on drop.
pub struct Sleeper(pub std::process::Child);

impl Sleeper {
    /// A `sleep 300` in the test's own namespaces.
    pub fn spawn() -> Self {
        Self::command()
            .spawn()
            .map(Self)
            .unwrap_or_else(|e| panic!("spawning sleep: {e}"))
    }

    /// The command [`Sleeper::spawn`] runs (to start it elsewhere, e.g. in
    /// another network namespace, then wrap the child in `Sleeper`).
    pub fn command() -> std::process::Command {
        let mut c = std::process::Command::new("sleep");
        c.arg("300");
        c
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.0.id()).unwrap()
    }

    pub fn stop(mut self) {
        self.kill();
    }

    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The test's cgroups root, removed on drop (declare it before the sleepers,
/// so they are gone first).
pub struct RootGuard(pub rein_core::cgroupfs::Cgroup);

impl RootGuard {
    /// `name` under `hierarchy`, without the leftover of an earlier crashed
    /// run under the same pid.
    pub fn new(hierarchy: &rein_core::cgroupfs::Hierarchy, name: &str) -> Self {
        let root = hierarchy.cgroup(name);
        let _ = root.remove();
        Self(root)
    }

    /// The names of the cgroups directly under the root.
    pub fn groups(&self) -> Vec<String> {
        std::fs::read_dir(self.0.path())
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for RootGuard {
    fn drop(&mut self) {
        if let Err(e) = self.0.remove() {
            eprintln!("cleanup of {}: {e}", self.0.path().display());
        }
    }
}

/// A container the agent reports at recovery, running as `pid`, no sandbox.
pub fn recovered(id: &rein_core::ContainerId, pid: i32) -> rein_core::RecoveredContainer {
    rein_core::RecoveredContainer {
        id: id.clone(),
        pid: Some(pid),
        sandbox: None,
    }
}
