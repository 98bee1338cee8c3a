//! The plain-Rust view of a Mesos container, as the C++ shim copies it out of
//! `ContainerConfig`. Protobufs never cross the bridge; this is what does.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::field_bytes::{
    escaped, exact_pair, exact_text, lossy_text, shown, utf8_problem, InvalidField,
};
pub use crate::raw_config::{DecodedConfig, RawContainerConfig};

/// A container id with its parent chain, root first (`[root, child, grandchild]`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContainerId(Vec<String>);

/// Why a container id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid container id {id:?}: {reason}")]
pub struct InvalidContainerId {
    /// The offending segment.
    pub id: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl ContainerId {
    /// Builds an id from its chain, root first. Every segment follows Mesos's own ID
    /// rules (non-empty, not `.`/`..`, printable, no slashes), so a segment is always
    /// safe to use as a single path component.
    pub fn new<I, S>(chain: I) -> Result<Self, InvalidContainerId>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let chain: Vec<String> = chain.into_iter().map(Into::into).collect();
        if chain.is_empty() {
            return Err(InvalidContainerId {
                id: String::new(),
                reason: "empty chain",
            });
        }
        for segment in &chain {
            validate_segment(segment)?;
        }
        Ok(Self(chain))
    }

    /// A top-level container id.
    pub fn top(value: &str) -> Result<Self, InvalidContainerId> {
        Self::new([value])
    }

    /// The chain, root first.
    pub fn chain(&self) -> &[String] {
        &self.0
    }

    /// This container's own id (the last segment).
    pub fn value(&self) -> &str {
        self.0.last().map(String::as_str).unwrap_or_default()
    }

    /// The parent container, if this one is nested.
    pub fn parent(&self) -> Option<ContainerId> {
        (self.0.len() > 1).then(|| Self(self.0[..self.0.len() - 1].to_vec()))
    }

    /// The top-level ancestor (itself when not nested).
    pub fn root(&self) -> ContainerId {
        Self(vec![self.0[0].clone()])
    }

    /// Whether the container has a parent.
    pub fn is_nested(&self) -> bool {
        self.0.len() > 1
    }

    /// The container's cgroup path below the cgroups root, in Mesos's layout:
    /// `root/mesos/child/mesos/grandchild`.
    pub fn cgroup_path(&self) -> PathBuf {
        let mut path = PathBuf::from(&self.0[0]);
        for child in &self.0[1..] {
            path.push("mesos");
            path.push(child);
        }
        path
    }

    /// A flat, reversible file name for the id (`root.child`, with `%` escapes for
    /// characters that are not `[A-Za-z0-9_-]`).
    pub fn file_name(&self) -> String {
        let mut out = String::new();
        for (i, segment) in self.0.iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            for b in segment.bytes() {
                if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                    out.push(char::from(b));
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
        }
        out
    }

    /// Inverse of [`ContainerId::file_name`].
    pub fn from_file_name(name: &str) -> Option<Self> {
        let mut chain = Vec::new();
        for part in name.split('.') {
            let mut bytes = Vec::with_capacity(part.len());
            let raw = part.as_bytes();
            let mut i = 0;
            while i < raw.len() {
                if raw[i] == b'%' {
                    let hex = part.get(i + 1..i + 3)?;
                    bytes.push(u8::from_str_radix(hex, 16).ok()?);
                    i += 3;
                } else {
                    bytes.push(raw[i]);
                    i += 1;
                }
            }
            chain.push(String::from_utf8(bytes).ok()?);
        }
        Self::new(chain).ok()
    }
}

fn validate_segment(segment: &str) -> Result<(), InvalidContainerId> {
    let fail = |reason| {
        Err(InvalidContainerId {
            id: segment.to_owned(),
            reason,
        })
    };
    if segment.is_empty() {
        return fail("empty");
    }
    if segment == "." || segment == ".." {
        return fail("'.' and '..' are not ids");
    }
    if segment.contains(['/', '\\']) {
        return fail("contains a slash");
    }
    if segment.chars().any(char::is_control) {
        return fail("contains a control character");
    }
    Ok(())
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

impl fmt::Debug for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContainerId({self})")
    }
}

/// The scalar resources a container holds, as Mesos accounts them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// `cpus`.
    pub cpus: Option<f64>,
    /// `mem`, in MB.
    pub mem_mb: Option<f64>,
    /// Sum of `disk` resources without `DiskInfo` (the sandbox's share), in MB.
    pub disk_mb: Option<f64>,
}

/// One resource entry as copied from the protobuf, before Rust sums it up.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceEntry {
    /// Resource name (`cpus`, `mem`, `disk`, ...).
    pub name: String,
    /// Scalar value (0 for non-scalar resources).
    pub scalar: f64,
    /// Whether the resource carries a `DiskInfo` (a persistent or mounted volume).
    pub has_disk_info: bool,
}

impl Resources {
    /// Sums entries the way Mesos does for isolation: cpus and mem as they come, disk
    /// only where it has no `DiskInfo`.
    pub fn from_entries(entries: &[ResourceEntry]) -> Self {
        let mut out = Resources::default();
        for entry in entries {
            let slot = match entry.name.as_str() {
                "cpus" => &mut out.cpus,
                "mem" => &mut out.mem_mb,
                "disk" if !entry.has_disk_info => &mut out.disk_mb,
                _ => continue,
            };
            *slot = Some(slot.unwrap_or(0.0) + entry.scalar);
        }
        out
    }
}

/// Everything the modules may read about a container at `prepare()` time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerSpec {
    /// Id with its parent chain.
    pub id: ContainerId,
    /// Host path of the sandbox directory.
    pub sandbox: PathBuf,
    /// User the container runs as, if any.
    pub user: Option<String>,
    /// `TaskInfo.task_id` (command tasks only).
    pub task_id: Option<String>,
    /// `TaskInfo.name` (command tasks only).
    pub task_name: Option<String>,
    /// `ExecutorInfo.executor_id`.
    pub executor_id: Option<String>,
    /// `ExecutorInfo.framework_id`.
    pub framework_id: Option<String>,
    /// Agent id, where known (Mesos only gives it through the sandbox path).
    pub agent_id: Option<String>,
    /// `TaskInfo.labels`.
    pub task_labels: Vec<(String, String)>,
    /// `ExecutorInfo.labels`.
    pub executor_labels: Vec<(String, String)>,
    /// Variables of `CommandInfo.environment` in our namespace (prefix `REIN_`); the
    /// shim passes no other variable, so secrets never reach the modules.
    pub environment: Vec<(String, String)>,
    /// Resources of the container.
    pub resources: Resources,
    /// A DEBUG-class container (e.g. `mesos task exec`).
    pub debug: bool,
}

impl Default for ContainerId {
    fn default() -> Self {
        Self(vec!["unnamed".to_owned()])
    }
}

/// Extracts `(agent, framework, executor, run)` ids from a Mesos sandbox path
/// (`.../slaves/<agent>/frameworks/<fw>/executors/<ex>/runs/<run>`).
pub fn ids_from_sandbox(sandbox: &std::path::Path) -> Option<(String, String, String, String)> {
    let parts: Vec<&str> = sandbox.iter().filter_map(|p| p.to_str()).collect();
    let at = parts.windows(8).rposition(|w| {
        w[0] == "slaves" && w[2] == "frameworks" && w[4] == "executors" && w[6] == "runs"
    })?;
    let get = |i: usize| parts.get(at + i).map(|s| (*s).to_owned());
    Some((get(1)?, get(3)?, get(5)?, get(7)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_navigation() {
        let id = ContainerId::new(["a", "b", "c"]).unwrap();
        assert_eq!(id.value(), "c");
        assert_eq!(id.parent().unwrap().to_string(), "a.b");
        assert_eq!(id.root().to_string(), "a");
        assert!(id.is_nested());
        assert_eq!(id.cgroup_path(), PathBuf::from("a/mesos/b/mesos/c"));
        assert!(!ContainerId::top("x").unwrap().is_nested());
    }

    #[test]
    fn rejects_unsafe_segments() {
        for bad in ["", ".", "..", "a/b", "a\\b", "a\nb"] {
            assert!(ContainerId::new([bad]).is_err(), "{bad:?} accepted");
        }
        assert!(ContainerId::new(Vec::<String>::new()).is_err());
    }

    #[test]
    fn file_name_round_trips() {
        let id = ContainerId::new(["f0e1-22.x", "child %1"]).unwrap();
        let name = id.file_name();
        assert!(!name.contains('/') && !name.contains(' '));
        assert_eq!(ContainerId::from_file_name(&name).unwrap(), id);
    }

    #[test]
    fn resources_sum_disk_without_disk_info_only() {
        let e = |name: &str, scalar, has_disk_info| ResourceEntry {
            name: name.into(),
            scalar,
            has_disk_info,
        };
        let r = Resources::from_entries(&[
            e("cpus", 0.5, false),
            e("cpus", 0.25, false),
            e("disk", 100.0, false),
            e("disk", 900.0, true),
            e("ports", 0.0, false),
        ]);
        assert_eq!(r.cpus, Some(0.75));
        assert_eq!(r.disk_mb, Some(100.0));
        assert_eq!(r.mem_mb, None);
    }

    #[test]
    fn sandbox_ids() {
        let p = std::path::Path::new("/var/lib/mesos/slaves/S1/frameworks/F1/executors/E1/runs/R1");
        let ids = ids_from_sandbox(p).unwrap();
        assert_eq!(ids, ("S1".into(), "F1".into(), "E1".into(), "R1".into()));
        assert!(ids_from_sandbox(std::path::Path::new("/tmp/x")).is_none());
    }
}
